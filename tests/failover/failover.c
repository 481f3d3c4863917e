/* See failover.h. */
#define _GNU_SOURCE
#include "failover.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include <parley/client.h>

#include "proc.h"

#define BOT_NAME "echo"
#define BOT_TOKEN "echo-token"
#define SEND_WINDOW 4
#define SETTLE_MS 800

typedef struct fo_state fo_state;

typedef struct cust {
  fo_state *run;
  int idx;
  parley_client *c;
  char principal[32], token[32], conv[32];
  int next, inflight, results;
  int *status;        /* per message: -1 no result yet, else the status */
  uint64_t *ack_seq;  /* per message */
  uint64_t *own_seq;  /* per message: seq at which it was delivered back */
  int *own_count, *echo_count;
  uint64_t *echo_seq;
  int echo_distinct;
  uint64_t last_seq;  /* last delivered seq */
  uint64_t n_events;
  bool closed;
} cust;

struct fo_state {
  const fo_scenario *sc;
  char dir[256], data[FO_MAX_NODES][300];
  char urls[FO_MAX_NODES][64];
  int port[FO_MAX_NODES];
  tproc gw[FO_MAX_NODES];
  bool up[FO_MAX_NODES];
  int current;        /* alternating shape: the node that is up */
  int down;           /* shared shape: the node killed last, -1 none */
  tproc bot;
  bool bot_up;
  uv_loop_t loop;
  uv_timer_t tick;
  cust *cs;
  int total;
  fo_counts k;
  uint64_t deadline, done_at;
  bool stopping, timed_out;
  int open_clients;
};

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* A port nobody listens on now, for a node started later. */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = 0;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

/* ------------------------------------------------------------ processes */

static int write_node_config(fo_state *r, int i, char *cfg, size_t size) {
  snprintf(cfg, size, "%s/node-%d.yaml", r->dir, i);
  size_t cap = 8192 + (size_t)r->sc->customers * 80;
  char *y = malloc(cap);
  if (!y) return -1;
  int n = snprintf(y, cap,
                   "%s"
                   "principals:\n"
                   "  - {name: " BOT_NAME ", role: bot, token: " BOT_TOKEN "}\n",
                   r->sc->yaml(i, r->sc->ud));
  for (int c = 0; c < r->sc->customers; c++)
    n += snprintf(y + n, cap - (size_t)n, "  - {name: cust%d, role: customer, token: tok-cust%d}\n",
                  c, c);
  int rc = write_file(cfg, y);
  free(y);
  return rc;
}

static int node_start(fo_state *r, int i, const char *data) {
  char cfg[320], port[16], errlog[320];
  if (write_node_config(r, i, cfg, sizeof cfg) != 0) return -1;
  snprintf(port, sizeof port, "%d", r->port[i]);
  snprintf(errlog, sizeof errlog, "%s/node-%d.log", r->dir, i);
  char *argv[] = {(char *)PARLEY_BIN, "gateway", "--config", cfg, "--data-dir", (char *)data,
                  "--port", port, NULL};
  /* A restarted node may find its port held for a moment. */
  for (int attempt = 0; attempt < 20; attempt++) {
    if (tproc_start(&r->gw[i], argv, errlog) != 0) return -1;
    char line[512];
    if (tproc_wait_for(&r->gw[i], "listening on", line, sizeof line, 15000)) {
      r->up[i] = true;
      return 0;
    }
    tproc_stop(&r->gw[i]);
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  fprintf(stderr, "failover: node %d did not start; see %s\n", i, errlog);
  return -1;
}

static void node_kill9(fo_state *r, int i) {
  tproc_kill(&r->gw[i], SIGKILL);
  tproc_wait(&r->gw[i], 5000);
  tproc_stop(&r->gw[i]);
  r->up[i] = false;
}

static void drain_out(tproc *p) {
  if (p->pid <= 0 || p->reaped || p->out_fd < 0) return;
  char tmp[4096];
  while (read(p->out_fd, tmp, sizeof tmp) > 0) {
  }
}

static int bot_start(fo_state *r) {
  char botdir[512], log[320];
  snprintf(botdir, sizeof botdir, "%s/tests/chaos/echobot", PARLEY_SOURCE_DIR);
  snprintf(log, sizeof log, "%s/bot.log", r->dir);
  /* The nodes as repeated --url options: the first two, then a third
   * joined with a comma, so that both spellings are used. */
  char joined[160] = "";
  char *argv[16];
  int a = 0;
  argv[a++] = (char *)PARLEY_BIN;
  argv[a++] = "run";
  argv[a++] = botdir;
  /* Spread: the bot starts on the last node, the customers elsewhere. */
  int rot = r->sc->spread ? r->sc->nodes - 1 : 0;
  for (int i = 0; i < r->sc->nodes && i < 2; i++) {
    argv[a++] = "--url";
    argv[a++] = r->urls[(i + rot) % r->sc->nodes];
  }
  if (r->sc->nodes > 2) {
    snprintf(joined, sizeof joined, "%s", r->urls[(2 + rot) % r->sc->nodes]);
    argv[a++] = "--url";
    argv[a++] = joined;
  }
  argv[a++] = "--token";
  argv[a++] = BOT_TOKEN;
  argv[a] = NULL;
  r->bot_up = tproc_start(&r->bot, argv, log) == 0;
  return r->bot_up ? 0 : -1;
}

/* ------------------------------------------------------------ customers */

static void pump(cust *c);

static void on_send_result(parley_client *pc, const parley_send_result *res, void *sud,
                           void *ud) {
  cust *c = ud;
  (void)pc;
  int i = (int)(intptr_t)sud;
  c->inflight--;
  c->results++;
  c->status[i] = res->status;
  if (res->status == 0) {
    c->ack_seq[i] = res->seq;
    c->run->k.acked++;
  } else {
    c->run->k.failed++;
    fprintf(stderr, "failover: %s message %d failed: %s\n", c->conv, i,
            parley_strerror(res->status));
  }
  if (!c->run->stopping) pump(c);
}

static int parse_num(const char *text, const char *prefix, int idx) {
  size_t pl = strlen(prefix);
  if (strncmp(text, prefix, pl) != 0) return -1;
  int cidx = -1, m = -1, used = 0;
  if (sscanf(text + pl, "c%d-m%d%n", &cidx, &m, &used) != 2 || text[pl + (size_t)used] != 0)
    return -1;
  return cidx == idx ? m : -1;
}

static void on_event(parley_client *pc, const parley_event *ev, void *ud) {
  cust *c = ud;
  (void)pc;
  if (strcmp(ev->conversation, c->conv) != 0) return;
  fo_counts *k = &c->run->k;
  k->delivered++;
  c->n_events++;
  /* The application sees its conversation as 1, 2, 3, ...: anything else
   * is a gap, a duplicate or a reordering the client let through. */
  if (ev->seq <= c->last_seq)
    k->duplicated++;
  else if (ev->seq != c->last_seq + 1)
    k->gapped++;
  if (ev->seq > c->last_seq) c->last_seq = ev->seq;
  if (ev->kind != PARLEY_EVENT_MESSAGE || ev->content.kind != PARLEY_CONTENT_TEXT ||
      !ev->content.text)
    return;
  const char *t = ev->content.text;
  bool from_bot = ev->sender && strcmp(ev->sender, BOT_NAME) == 0;
  int m = from_bot ? parse_num(t, "echo: ", c->idx) : parse_num(t, "", c->idx);
  if (m < 0 || m >= c->run->sc->msgs) return;
  if (from_bot) {
    if (c->echo_count[m]++ == 0) {
      c->echo_distinct++;
      c->echo_seq[m] = ev->seq;
    }
  } else if (c->own_count[m]++ == 0) {
    c->own_seq[m] = ev->seq;
  }
}

static void on_state(parley_client *pc, parley_conn_state st, int status, void *ud) {
  cust *c = ud;
  (void)status;
  fo_state *r = c->run;
  if (st == PARLEY_CONN_READY) {
    const char *u = parley_client_url(pc);
    for (int i = 0; i < r->sc->nodes; i++)
      if (u && strcmp(u, r->urls[i]) == 0) r->k.ready_on[i]++;
  }
  if (st == PARLEY_CONN_CLOSED && !c->closed) {
    c->closed = true;
    r->open_clients--;
  }
}

/* The run is cut into kills + 1 phases of each customer's messages. A
 * customer sends no further than the end of the current phase, and the
 * next kill falls once every customer has half of the phase ACKed, so
 * that sends are in flight when the node dies and traffic cannot outrun
 * the kills. */
static int phase_end(const fo_state *r, uint64_t phase) {
  return (int)((uint64_t)r->sc->msgs * (phase + 1) / (uint64_t)(r->sc->kills + 1));
}

static bool kill_due(fo_state *r) {
  int start = r->k.kills ? phase_end(r, r->k.kills - 1) : 0;
  int half = start + (phase_end(r, r->k.kills) - start) / 2;
  for (int i = 0; i < r->sc->customers; i++) {
    const cust *c = &r->cs[i];
    int acked = 0;
    for (int m = 0; m < c->next; m++) acked += c->status[m] == 0;
    if (acked < half) return false;
  }
  return true;
}

static void pump(cust *c) {
  int end = phase_end(c->run, c->run->k.kills);
  while (c->next < c->run->sc->msgs && c->next < end && c->inflight < SEND_WINDOW) {
    char text[64];
    snprintf(text, sizeof text, "c%d-m%d", c->idx, c->next);
    parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = text};
    if (parley_client_send(c->c, c->conv, &ct, NULL, NULL, 0, (void *)(intptr_t)c->next) != 0)
      return; /* back-pressure: the tick tries again */
    c->next++;
    c->inflight++;
    c->run->k.sent++;
  }
}

static int cust_init(fo_state *r, cust *c, int idx) {
  int m = r->sc->msgs;
  c->run = r;
  c->idx = idx;
  snprintf(c->principal, sizeof c->principal, "cust%d", idx);
  snprintf(c->token, sizeof c->token, "tok-cust%d", idx);
  snprintf(c->conv, sizeof c->conv, "fo-%d", idx);
  c->status = malloc((size_t)m * sizeof *c->status);
  c->ack_seq = calloc((size_t)m, sizeof *c->ack_seq);
  c->own_seq = calloc((size_t)m, sizeof *c->own_seq);
  c->echo_seq = calloc((size_t)m, sizeof *c->echo_seq);
  c->own_count = calloc((size_t)m, sizeof *c->own_count);
  c->echo_count = calloc((size_t)m, sizeof *c->echo_count);
  if (!c->status || !c->ack_seq || !c->own_seq || !c->echo_seq || !c->own_count ||
      !c->echo_count)
    return -1;
  for (int i = 0; i < m; i++) c->status[i] = -1;

  parley_client_options o = PARLEY_CLIENT_OPTIONS_INIT;
  /* Customer 0 passes the list as one comma-separated url, the others as
   * the urls array: both spellings of the option are exercised. */
  char joined[FO_MAX_NODES * 64 + 8] = "";
  const char *list[FO_MAX_NODES];
  int rot = r->sc->spread ? idx % r->sc->nodes : 0;
  for (int i = 0; i < r->sc->nodes; i++) {
    list[i] = r->urls[(i + rot) % r->sc->nodes];
    size_t n = strlen(joined);
    snprintf(joined + n, sizeof joined - n, "%s%s", i ? "," : "", list[i]);
  }
  if (idx == 0) {
    o.url = joined;
  } else {
    o.urls = list;
    o.n_urls = (size_t)r->sc->nodes;
  }
  o.principal = c->principal;
  o.token = c->token;
  o.role = PARLEY_ROLE_CUSTOMER;
  o.locale = "en";
  o.loop = &r->loop;
  o.cb.on_event = on_event;
  o.cb.on_send_result = on_send_result;
  o.cb.on_state = on_state;
  o.user_data = c;
  /* Sends must outlive a node's death: many attempts, a long deadline,
   * and a short reconnect backoff so that the run does not idle. */
  o.tuning.ack_timeout_ms = 1000;
  o.tuning.retry_max_ms = 2000;
  o.tuning.max_attempts = 100000;
  o.tuning.send_deadline_ms = 3600000;
  o.tuning.reconnect_min_ms = 50;
  o.tuning.reconnect_max_ms = 1000;
  o.tuning.heartbeat_ms = 1000;
  o.tuning.seed = 1000 + (uint64_t)idx;
  if (parley_client_new(&o, &c->c) != 0) return -1;
  r->open_clients++;
  return parley_client_start(c->c);
}

static void cust_free(cust *c) {
  parley_client_free(c->c);
  free(c->status);
  free(c->ack_seq);
  free(c->own_seq);
  free(c->echo_seq);
  free(c->own_count);
  free(c->echo_count);
}

/* ------------------------------------------------------------ the run */

static bool all_done(fo_state *r) {
  if (r->k.kills < (uint64_t)r->sc->kills) return false;
  for (int i = 0; i < r->sc->customers; i++) {
    cust *c = &r->cs[i];
    if (c->results < r->sc->msgs || c->echo_distinct < r->sc->msgs) return false;
  }
  return true;
}

/* Each kill waits until every customer is back in session (and, with one
 * node up at a time, on that node), so that every kill moves every
 * customer. */
static bool all_ready(fo_state *r) {
  for (int i = 0; i < r->sc->customers; i++) {
    parley_client *c = r->cs[i].c;
    if (parley_client_state(c) != PARLEY_CONN_READY) return false;
    /* Everyone on the node about to die (alternating shape: the one up;
     * shared shape: the next victim), so that the kill moves them all. */
    int on = r->sc->shared_store ? (int)(r->k.kills % (uint64_t)r->sc->nodes) : r->current;
    if (!r->sc->fault && !r->sc->spread && strcmp(parley_client_url(c), r->urls[on]) != 0)
      return false;
  }
  return true;
}

/* One kill: in the alternating shape the node that is up dies and its
 * data comes back as the next node; in the shared shape the node killed
 * before comes back and the next one dies. */
static void kill_one(fo_state *r) {
  int n = r->sc->nodes;
  if (r->sc->fault) {
    r->sc->fault(r->sc->ud);
    r->k.kills++;
    return;
  }
  if (!r->sc->shared_store) {
    int next = (r->current + 1) % n;
    node_kill9(r, r->current);
    r->current = next;
    if (node_start(r, next, r->data[0]) != 0) r->timed_out = true;
  } else {
    int victim = (int)(r->k.kills % (uint64_t)n);
    if (r->down >= 0 && node_start(r, r->down, r->data[r->down]) != 0) r->timed_out = true;
    node_kill9(r, victim);
    r->down = victim;
  }
  r->k.kills++;
}

static void on_tick(uv_timer_t *t) {
  fo_state *r = t->data;
  uint64_t now = mono_ms();
  drain_out(&r->bot);
  for (int i = 0; i < r->sc->nodes; i++) drain_out(&r->gw[i]);
  if (r->stopping) {
    if (r->open_clients == 0) uv_timer_stop(&r->tick);
    return;
  }
  for (int i = 0; i < r->sc->customers; i++) pump(&r->cs[i]);
    if (r->k.kills < (uint64_t)r->sc->kills && kill_due(r) && all_ready(r)) kill_one(r);
  if (!r->done_at && all_done(r)) r->done_at = now;
  bool settled = r->done_at && now >= r->done_at + SETTLE_MS;
  if (settled || now >= r->deadline || r->timed_out) {
    if (!settled) r->timed_out = true;
    r->stopping = true;
    for (int i = 0; i < r->sc->customers; i++) parley_client_stop(r->cs[i].c, 500);
  }
}

static void check(fo_state *r) {
  fo_counts *k = &r->k;
  for (int ci = 0; ci < r->sc->customers; ci++) {
    cust *c = &r->cs[ci];
    uint64_t prev = 0;
    for (int m = 0; m < r->sc->msgs; m++) {
      if (c->status[m] != 0) {
        k->lost++;
        continue;
      }
      if (c->ack_seq[m] <= prev) k->reordered++;
      prev = c->ack_seq[m];
      /* The ACKed seq is where the message was delivered back. */
      if (c->own_count[m] == 0 || c->own_seq[m] != c->ack_seq[m]) k->lost++;
      if (c->own_count[m] > 1) k->duplicated++;
      if (c->echo_count[m] == 0) k->replies_missing++;
      if (c->echo_count[m] > 1) k->duplicated++;
      if (c->echo_count[m] && c->echo_seq[m] < c->ack_seq[m]) k->reordered++;
    }
    parley_client_stats st;
    parley_client_stats_get(c->c, &st);
    k->reconnects += st.reconnects;
  }
}

int fo_run(const fo_scenario *sc, fo_counts *out) {
  fo_state *r = calloc(1, sizeof *r);
  if (!r) return -1;
  r->sc = sc;
  r->down = -1;
  r->total = sc->customers * sc->msgs;
  int rc = -1;
  if (tmpdir_make(r->dir, sizeof r->dir, "failover") != 0) goto out;
  for (int i = 0; i < sc->nodes; i++) {
    r->port[i] = free_port();
    snprintf(r->urls[i], sizeof r->urls[i], "ws://127.0.0.1:%d/", r->port[i]);
    snprintf(r->data[i], sizeof r->data[i], "%s/data-%d", r->dir, sc->shared_store ? i : 0);
    mkdir(r->data[i], 0755);
  }
  /* Alternating shape: node 0 only; shared shape: every node. */
  for (int i = 0; i < (sc->shared_store ? sc->nodes : 1); i++)
    if (node_start(r, i, r->data[i]) != 0) goto out;
  if (bot_start(r) != 0) goto out;
  if (uv_loop_init(&r->loop) != 0) goto out;
  r->cs = calloc((size_t)sc->customers, sizeof *r->cs);
  if (!r->cs) goto out_loop;
  for (int i = 0; i < sc->customers; i++)
    if (cust_init(r, &r->cs[i], i) != 0) goto out_clients;
  uv_timer_init(&r->loop, &r->tick);
  r->tick.data = r;
  r->deadline = mono_ms() + (uint64_t)sc->deadline_s * 1000u;
  uv_timer_start(&r->tick, on_tick, 10, 10);
  uv_run(&r->loop, UV_RUN_DEFAULT);
  check(r);
  rc = r->timed_out ? -1 : 0;
out_clients:
  for (int i = 0; i < sc->customers; i++)
    cust_free(&r->cs[i]);
  free(r->cs);
  if (!uv_is_closing((uv_handle_t *)&r->tick) && r->tick.data)
    uv_close((uv_handle_t *)&r->tick, NULL);
  uv_run(&r->loop, UV_RUN_DEFAULT);
out_loop:
  uv_loop_close(&r->loop);
out:
  if (r->bot_up) {
    tproc_kill(&r->bot, SIGTERM);
    if (tproc_wait(&r->bot, 5000) != 0) tproc_stop(&r->bot);
    tproc_stop(&r->bot);
  }
  for (int i = 0; i < sc->nodes; i++)
    if (r->up[i]) node_kill9(r, i);
  *out = r->k;
  if (rc == 0 && !getenv("PARLEY_FAILOVER_KEEP"))
    tmpdir_remove(r->dir);
  else
    fprintf(stderr, "failover: logs kept in %s\n", r->dir);
  free(r);
  return rc;
}

void fo_print(const fo_scenario *sc, const fo_counts *k) {
  printf("failover %s: nodes=%d kills=%llu sent=%llu acked=%llu failed=%llu delivered=%llu "
         "lost=%llu duplicated=%llu reordered=%llu gapped=%llu replies_missing=%llu "
         "reconnects=%llu ready_on=",
         sc->name, sc->nodes, (unsigned long long)k->kills, (unsigned long long)k->sent,
         (unsigned long long)k->acked, (unsigned long long)k->failed,
         (unsigned long long)k->delivered, (unsigned long long)k->lost,
         (unsigned long long)k->duplicated, (unsigned long long)k->reordered,
         (unsigned long long)k->gapped, (unsigned long long)k->replies_missing,
         (unsigned long long)k->reconnects);
  for (int i = 0; i < sc->nodes; i++)
    printf("%s%llu", i ? "/" : "", (unsigned long long)k->ready_on[i]);
  printf("\n");
  fflush(stdout);
}
