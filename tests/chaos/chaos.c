#define _GNU_SOURCE
/* The chaos suite: the real gateway (a `parley gateway` child process with
 * its SQLite log in a temp dir), echo bot replicas (`parley run` child
 * processes) and many customers (libparley clients on one uv loop in this
 * process), the bots and customers connected through a fault proxy
 * (faultproxy.h). While customers send numbered messages, faults are
 * injected: connections cut (also in the middle of a WebSocket frame),
 * directions stalled, writes sliced, the bot or the gateway killed with
 * SIGKILL and restarted, a replica paused with SIGSTOP, the bot's wall clock
 * jumped.
 *
 * Afterwards the checker compares three records: what each customer sent
 * and what the gateway answered (send results), what each customer's
 * application was handed (on_event), and the gateway's durable log (read
 * with sqlite3 after the gateway stopped). It counts:
 *
 *   lost        an ACKed send missing from the log, or at another seq
 *   duplicated  a customer message or a bot reply stored twice, or handed
 *               to the application twice
 *   reordered   a customer's messages not in send order in the log, a reply
 *               before its message, a delivery not in seq order
 *   gapped      a log stream or a delivered stream that is not 1..N, or a
 *               customer that did not get its whole stream
 *   replies_missing  a stored customer message without its "echo:" reply
 *   mismatched  a delivered event that differs from the log at its seq
 *   state_wrong a conversation whose stored state and tags are not what the
 *               echo bot's last committed handler produced (count of the
 *               stored customer messages, the last one, the count's tens)
 *
 * and prints one line per scenario; every one of these must be 0.
 *
 * Sizes: the short form runs by default (CI); PARLEY_CHAOS_FULL=1 selects
 * the full-size form. PARLEY_CHAOS_SEED changes the fault plan's seed.
 * One scenario can be chosen by passing its test name as argv[1].
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>
#include <uv.h>

#include <libwebsockets.h>
#include <parley/client.h>

#include "wire/wire.h"
#include "faultproxy.h"
#include "proc.h"
#include "wsclient.h"

#define BOT_NAME "echo"
#define BOT_TOKEN "echo-token"
#define MAX_REPLICAS 2
#define SEND_WINDOW 4
/* After the last expected reply, the events a conversation's bot adds
 * after it (tags, state) still have to reach its customer, who may be
 * reconnecting after the run's last cut, with backoff: under ASan 1.5 s
 * was too short for that in 1 run of 6 (the last 3 events of one
 * conversation arrived later); 8 s was enough in 8 of 8. */
#define SETTLE_MS 8000
#define STUCK_MS 5000
#define STOP_MS 15000
#define PAUSE_GAP_MS 3000
#define PAUSE_AFTER_BURST_MS 15
#define FAKETIME_LIB "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"

/* ------------------------------------------------------------ scenario */

typedef enum fault_kind {
  F_PROXY,    /* connection cuts, stalls and slices through the proxy */
  F_BOT_KILL, /* SIGKILL of the bot, restarted */
  F_GW_KILL,  /* SIGKILL of the gateway, restarted on the same port and dir */
  F_PAUSE,    /* SIGSTOP of one of two replicas, SIGCONT later */
  F_CLOCK,    /* jumps of the bot's wall clock (libfaketime) with proxy faults */
} fault_kind;

typedef struct scenario {
  const char *name;
  fault_kind kind;
  int convs;
  int msgs;         /* per conversation */
  int faults;
  int replicas;
  const char *heartbeat;
  uint32_t pause_ms;
  int deadline_s;
  bool check_redelivered;
  bool bot_direct; /* the bot connects to the gateway itself, not through the proxy */
  uint32_t fault_every_ms; /* faults by time instead of by progress */
  uint32_t pace_ms;        /* each customer sends at most one message this often */
  bool gw_switches;        /* the gateway's test switches drop, double, reorder */
  /* F_GW_KILL: the gateway's writer holds each batch this long (test
   * switch faults.writer_hold_ms) and each kill waits until it does, half
   * of them before the batch's commit and half between its commit and its
   * answers. */
  uint32_t writer_hold_ms;
} scenario;

typedef struct counts {
  uint64_t sent, acked, failed, delivered, stored;
  uint64_t lost, duplicated, reordered, gapped, replies_missing, mismatched;
  uint64_t state_wrong;
  uint64_t reruns, unflagged_reruns, faults, reconnects, incomplete;
  uint64_t replies_refused; /* bot log: "reply failed" lines */
  uint64_t bot_conn_lost;   /* bot log: "connection:" lines (lost connections) */
  uint64_t bot_clocks;      /* distinct wall-clock hours in the bot log */
  uint64_t writer_kills;    /* kills that landed while a batch was with the writer */
} counts;

/* --------------------------------------------------------- recording */

typedef struct rec {
  uint64_t seq;
  int kind;
  bool from_bot, from_self;
  uint8_t msg_id[16];
  bool has_msg_id;
  char *text;
} rec;

struct run;

typedef struct cust {
  struct run *run;
  int idx;
  parley_client *c;
  char principal[32], token[32], conv[32];
  int next;           /* next message number to hand to the client */
  int inflight;       /* handed over, no result yet */
  uint64_t next_send_ms; /* pacing (scenario.pace_ms) */
  int burst;             /* messages that may go now without pacing */
  int results, acked, failed;
  uint64_t *ack_seq;  /* per message, 0 until ACKed */
  uint8_t (*ack_id)[16];
  int *echo_count;    /* per message: echo replies handed to the app */
  int echo_distinct;
  rec *recs;
  size_t n_recs, cap_recs;
  bool overflow;
  bool closed;
} cust;

typedef struct run {
  const scenario *sc;
  uint64_t seed, rng;
  char dir[256], data[300], cfg[300];
  int gw_port;
  tproc gw;
  bool gw_up;
  fp_proxy *proxy;
  tproc bots[MAX_REPLICAS];
  bool bot_up[MAX_REPLICAS];
  bool bot_paused[MAX_REPLICAS];
  uint64_t cont_at[MAX_REPLICAS];
  char clock_file[300];
  uv_loop_t loop;
  uv_timer_t tick;
  cust *cs;
  int total_msgs;
  int faults_done;
  uint64_t slice_until;
  uint64_t started_ms, done_at, deadline_ms;
  uint64_t progress_at, last_progress; /* when the event count last moved */
  uint64_t stop_at;
  uint64_t last_cont_ms; /* last SIGCONT of a paused replica */
  bool pause_pending;     /* a SIGSTOP is due at pause_at */
  bool writer_kill_pending; /* a SIGKILL is due once the writer holds a batch */
  const char *writer_phase; /* ... in this phase ("commit" or "complete") */
  uint64_t writer_kill_since;
  uint64_t pause_at;
  bool stopping;
  int open_clients;
  counts k;
  char why[512];
} run;

/* The run in progress, so that the teardown can stop its processes when
 * an assertion ends a scenario early. */
static run *current;

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t rnd(run *r) {
  uint64_t x = r->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  r->rng = x;
  return x * 0x2545F4914F6CDD1DULL;
}

static bool full_size(void) {
  const char *f = getenv("PARLEY_CHAOS_FULL");
  return f && *f && strcmp(f, "0") != 0;
}

/* The children's stdout is read and dropped so that they never block on a
 * full pipe. */
static void drain_out(tproc *p) {
  if (p->pid <= 0 || p->reaped || p->out_fd < 0) return;
  char tmp[4096];
  while (read(p->out_fd, tmp, sizeof tmp) > 0) {
  }
}

/* ------------------------------------------------------------ processes */

static int gw_start(run *r) {
  char port[16];
  snprintf(port, sizeof port, "%d", r->gw_port);
  char errlog[320];
  snprintf(errlog, sizeof errlog, "%s/gateway.log", r->dir);
  char *argv[] = {(char *)PARLEY_BIN, "gateway", "--config", r->cfg, "--data-dir", r->data,
                  "--port", port, NULL};
  /* A restarted gateway may find its port still held for a moment. */
  for (int attempt = 0; attempt < 20; attempt++) {
    if (tproc_start(&r->gw, argv, errlog) != 0) return -1;
    char line[512];
    if (tproc_wait_for(&r->gw, "listening on", line, sizeof line, 15000)) {
      const char *colon = strrchr(line, ':');
      r->gw_port = colon ? atoi(colon + 1) : 0;
      r->gw_up = r->gw_port > 0;
      return r->gw_up ? 0 : -1;
    }
    tproc_stop(&r->gw);
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  return -1;
}

static void gw_kill9(run *r) {
  tproc_kill(&r->gw, SIGKILL);
  tproc_wait(&r->gw, 5000);
  tproc_stop(&r->gw);
  r->gw_up = false;
}

static int bot_start(run *r, int i) {
  char url[64], botdir[512], log[320];
  snprintf(url, sizeof url, "ws://127.0.0.1:%d/",
           r->sc->bot_direct ? r->gw_port : fp_port(r->proxy));
  snprintf(botdir, sizeof botdir, "%s/tests/chaos/echobot", PARLEY_SOURCE_DIR);
  snprintf(log, sizeof log, "%s/bot-%d.log", r->dir, i);
  char *argv[] = {(char *)PARLEY_BIN, "run", botdir, "--url", url, "--token", BOT_TOKEN, NULL};
  if (r->sc->kind == F_CLOCK) {
    /* libfaketime moves only the wall clock (the monotonic clock is left
     * alone), re-reading the offset from clock_file once a second. */
    setenv("LD_PRELOAD", FAKETIME_LIB, 1);
    setenv("FAKETIME_TIMESTAMP_FILE", r->clock_file, 1);
    setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1", 1);
    setenv("FAKETIME_CACHE_DURATION", "1", 1);
    /* A sanitizer build of the binary would refuse a preloaded library
     * that comes before its runtime. */
    setenv("ASAN_OPTIONS", "verify_asan_link_order=0:detect_leaks=0", 1);
  }
  int rc = tproc_start(&r->bots[i], argv, log);
  if (r->sc->kind == F_CLOCK) {
    unsetenv("LD_PRELOAD");
    unsetenv("FAKETIME_TIMESTAMP_FILE");
    unsetenv("FAKETIME_DONT_FAKE_MONOTONIC");
    unsetenv("FAKETIME_CACHE_DURATION");
  }
  r->bot_up[i] = rc == 0;
  return rc;
}

static void bot_kill9(run *r, int i) {
  tproc_kill(&r->bots[i], SIGKILL);
  tproc_wait(&r->bots[i], 5000);
  tproc_stop(&r->bots[i]);
  r->bot_up[i] = false;
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
  if (res->status == 0) {
    c->acked++;
    c->ack_seq[i] = res->seq;
    memcpy(c->ack_id[i], res->msg_id, 16);
  } else {
    c->failed++;
    fprintf(stderr, "chaos: %s message %d failed: %s\n", c->conv, i, parley_strerror(res->status));
  }
  if (!c->run->stopping) pump(c);
}

static int parse_num(const char *text, const char *prefix, int idx) {
  /* "c<idx>-m<i>" after the prefix; -1 when it is not that. */
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
  if (c->n_recs == c->cap_recs) {
    c->overflow = true;
    return;
  }
  rec *x = &c->recs[c->n_recs++];
  x->seq = ev->seq;
  x->kind = (int)ev->kind;
  x->from_bot = ev->sender && strcmp(ev->sender, BOT_NAME) == 0;
  x->from_self = ev->sender && strcmp(ev->sender, c->principal) == 0;
  x->has_msg_id = ev->has_msg_id;
  memcpy(x->msg_id, ev->msg_id, 16);
  const char *t = NULL;
  if (ev->kind == PARLEY_EVENT_MESSAGE)
    t = ev->content.kind == PARLEY_CONTENT_TEXT ? ev->content.text : ev->content.fallback;
  x->text = t ? strdup(t) : NULL;
  if (x->from_bot && t) {
    int m = parse_num(t, "echo: ", c->idx);
    if (m >= 0 && m < c->run->sc->msgs) {
      if (c->echo_count[m]++ == 0) c->echo_distinct++;
    }
  }
}

static void on_state(parley_client *pc, parley_conn_state st, int status, void *ud) {
  cust *c = ud;
  (void)pc;
  (void)status;
  if (st == PARLEY_CONN_CLOSED && !c->closed) {
    c->closed = true;
    c->run->open_clients--;
  }
}

static void pump(cust *c) {
  const scenario *sc = c->run->sc;
  while (c->next < sc->msgs && c->inflight < SEND_WINDOW) {
    if (sc->pace_ms && c->burst > 0) {
      c->burst--;
    } else if (sc->pace_ms) {
      uint64_t now = mono_ms();
      if (now < c->next_send_ms) return;
      c->next_send_ms = now + sc->pace_ms;
    }
    char text[64];
    snprintf(text, sizeof text, "c%d-m%d", c->idx, c->next);
    parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = text};
    int rc = parley_client_send(c->c, c->conv, &ct, NULL, NULL, 0, (void *)(intptr_t)c->next);
    if (rc != 0) return; /* back-pressure: the tick tries again */
    c->next++;
    c->inflight++;
    c->run->k.sent++;
  }
}

static int cust_init(run *r, cust *c, int idx, const char *url) {
  const scenario *sc = r->sc;
  c->run = r;
  c->idx = idx;
  snprintf(c->principal, sizeof c->principal, "cust%d", idx);
  snprintf(c->token, sizeof c->token, "tok-cust%d", idx);
  snprintf(c->conv, sizeof c->conv, "conv-%d", idx);
  c->ack_seq = calloc((size_t)sc->msgs, sizeof *c->ack_seq);
  c->ack_id = calloc((size_t)sc->msgs, sizeof *c->ack_id);
  c->echo_count = calloc((size_t)sc->msgs, sizeof *c->echo_count);
  /* Two events per message (the message and its reply), the opening ones,
   * and room for what a faulty run might add. */
  /* Per message: the message, its reply, and a STATE_CHANGED or TAGGED
   * event of the bot's commit at most (as the log check's bound). */
  c->cap_recs = (size_t)sc->msgs * 4 + 64;
  c->recs = calloc(c->cap_recs, sizeof *c->recs);
  if (!c->ack_seq || !c->ack_id || !c->echo_count || !c->recs) return -1;
  parley_client_options o = PARLEY_CLIENT_OPTIONS_INIT;
  o.url = url;
  o.principal = c->principal;
  o.token = c->token;
  o.role = PARLEY_ROLE_CUSTOMER;
  o.locale = "en";
  o.loop = &r->loop;
  o.cb.on_event = on_event;
  o.cb.on_send_result = on_send_result;
  o.cb.on_state = on_state;
  o.user_data = c;
  /* Sends must outlive a gateway restart: many attempts, a long deadline,
   * and a short reconnect backoff so that the run does not idle. */
  o.tuning.ack_timeout_ms = 1000;
  o.tuning.retry_max_ms = 2000;
  o.tuning.max_attempts = 100000;
  o.tuning.send_deadline_ms = 3600000;
  o.tuning.reconnect_min_ms = 50;
  o.tuning.reconnect_max_ms = 1000;
  o.tuning.seed = r->seed * 1000 + (uint64_t)idx + 1;
  if (parley_client_new(&o, &c->c) != 0) return -1;
  r->open_clients++;
  return parley_client_start(c->c);
}

static void cust_free(cust *c) {
  parley_client_free(c->c);
  for (size_t i = 0; i < c->n_recs; i++) free(c->recs[i].text);
  free(c->recs);
  free(c->ack_seq);
  free(c->ack_id);
  free(c->echo_count);
}

/* -------------------------------------------------------------- faults */

static void proxy_fault(run *r) {
  /* Disconnects, each either every connection at once or one connection
   * cut inside a server->client frame; now and then a stall of one
   * direction or a period of sliced writes on top. Odd faults, the first
   * and the last of a short run among them, are mid-frame cuts: chosen at
   * random, all five faults of a short run were sometimes whole cuts
   * (1 in 32), and the run then failed for not testing a mid-frame cut. */
  if (r->faults_done % 2 == 0) {
    fp_cut_all(r->proxy);
  } else if (fp_cut_mid(r->proxy, 1 + (size_t)(rnd(r) % 40)) != 0) {
    fp_cut_all(r->proxy);
  }
  uint64_t y = rnd(r) % 6;
  if (y == 0) fp_stall(r->proxy, FP_S2C, 200 + (uint32_t)(rnd(r) % 400));
  if (y == 1) fp_stall(r->proxy, FP_C2S, 200 + (uint32_t)(rnd(r) % 400));
  if (y == 2) {
    fp_slice(r->proxy, 1 + (size_t)(rnd(r) % 7));
    r->slice_until = mono_ms() + 300;
  }
}

static void write_clock(run *r, const char *spec) {
  char tmp[320];
  snprintf(tmp, sizeof tmp, "%s.tmp", r->clock_file);
  write_file(tmp, spec);
  rename(tmp, r->clock_file);
}

static void inject(run *r) {
  const scenario *sc = r->sc;
  r->faults_done++;
  r->k.faults++;
  switch (sc->kind) {
  case F_PROXY: proxy_fault(r); break;
  case F_CLOCK: {
    static const char *const jumps[] = {"+1d", "-3h", "+30d", "-1d", "+2h"};
    write_clock(r, jumps[(r->faults_done - 1) % 5]);
    proxy_fault(r);
    break;
  }
  case F_BOT_KILL:
    bot_kill9(r, 0);
    if (bot_start(r, 0) != 0) snprintf(r->why, sizeof r->why, "bot restart failed");
    break;
  case F_GW_KILL:
    if (sc->writer_hold_ms) {
      r->writer_kill_pending = true;
      r->writer_phase = r->faults_done % 2 ? "commit" : "complete";
      r->writer_kill_since = mono_ms();
      break;
    }
    gw_kill9(r);
    if (gw_start(r) != 0) snprintf(r->why, sizeof r->why, "gateway restart failed");
    break;
  case F_PAUSE: {
    /* A burst from every customer first, and the stop a tick later, so
     * that the replica is stopped with handlers running and replies and
     * commits unanswered. */
    for (int c = 0; c < sc->convs; c++) {
      r->cs[c].next_send_ms = 0;
      r->cs[c].burst = SEND_WINDOW;
      pump(&r->cs[c]);
    }
    r->pause_pending = true;
    r->pause_at = mono_ms() + PAUSE_AFTER_BURST_MS;
    break;
  }
  }
}

/* ------------------------------------------------------------- driving */

/* The kill of a writer_hold scenario: when data_dir/writer-hold names the
 * phase wanted, a batch is with the gateway's writer thread right now
 * (not yet committed, or committed and not yet answered). */
static void writer_kill_check(run *r, uint64_t now) {
  char path[340], phase[32] = "";
  snprintf(path, sizeof path, "%s/writer-hold", r->data);
  FILE *f = fopen(path, "r");
  if (f) {
    if (!fgets(phase, sizeof phase, f)) phase[0] = '\0';
    fclose(f);
  }
  if (!strcmp(phase, r->writer_phase)) {
    gw_kill9(r);
    r->k.writer_kills++;
    r->writer_kill_pending = false;
    /* The killed writer's mark stays behind; the next kill must see a
     * live one. */
    unlink(path);
    if (gw_start(r) != 0) snprintf(r->why, sizeof r->why, "gateway restart failed");
  } else if (now - r->writer_kill_since > 10000) {
    r->writer_kill_pending = false;
    snprintf(r->why, sizeof r->why, "no batch was with the writer (%s) for 10 s",
             r->writer_phase);
  }
}

static bool all_done(run *r) {
  for (int i = 0; i < r->sc->convs; i++) {
    cust *c = &r->cs[i];
    if (c->results < r->sc->msgs || c->echo_distinct < c->acked) return false;
  }
  return true;
}

static uint64_t total_acked(run *r) {
  uint64_t n = 0;
  for (int i = 0; i < r->sc->convs; i++) n += (uint64_t)r->cs[i].acked;
  return n;
}

static void on_tick(uv_timer_t *t) {
  run *r = t->data;
  uint64_t now = mono_ms();
  drain_out(&r->gw);
  for (int i = 0; i < r->sc->replicas; i++) {
    drain_out(&r->bots[i]);
    if (r->bot_paused[i] && now >= r->cont_at[i]) {
      tproc_kill(&r->bots[i], SIGCONT);
      r->bot_paused[i] = false;
      r->last_cont_ms = now;
    }
  }
  if (r->pause_pending && now >= r->pause_at) {
    int i = r->faults_done % r->sc->replicas;
    r->pause_pending = false;
    if (!r->bot_paused[i] && r->bot_up[i]) {
      tproc_kill(&r->bots[i], SIGSTOP);
      r->bot_paused[i] = true;
      r->cont_at[i] = now + r->sc->pause_ms;
    }
  }
  if (r->writer_kill_pending) writer_kill_check(r, now);
  if (r->slice_until && now >= r->slice_until) {
    fp_slice(r->proxy, 0);
    r->slice_until = 0;
  }
  if (r->stopping) {
    bool stuck = now - r->stop_at > STOP_MS;
    if (r->open_clients <= 0 || stuck) {
      uv_timer_stop(t);
      uv_close((uv_handle_t *)t, NULL);
    }
    if (stuck && r->open_clients > 0) {
      /* A client that never reports CLOSED must not hang the suite. */
      r->k.incomplete++;
      snprintf(r->why, sizeof r->why, "%d clients did not close", r->open_clients);
      uv_stop(&r->loop);
    }
    return;
  }
  for (int i = 0; i < r->sc->convs; i++) pump(&r->cs[i]);
  /* The j-th fault goes when (j+1)/(faults+1) of all messages are ACKed,
   * so faults are spread over the whole stream. */
  uint64_t acked = total_acked(r);
  bool due;
  if (r->sc->fault_every_ms) /* by time: jumps also while the stream is idle */
    due = now - r->started_ms >= (uint64_t)r->sc->fault_every_ms * (uint64_t)(r->faults_done + 1);
  else
    due = acked * (uint64_t)(r->sc->faults + 1) >=
          (uint64_t)r->total_msgs * (uint64_t)(r->faults_done + 1);
  if (r->sc->kind == F_PAUSE) {
    /* One replica down at a time: the next pause waits until the last
     * paused one is running again and has had time to reconnect, so the
     * other replica is always there to take the conversations over. */
    for (int i = 0; i < r->sc->replicas; i++) due = due && !r->bot_paused[i];
    due = due && !r->pause_pending;
    due = due && (!r->last_cont_ms || now - r->last_cont_ms >= PAUSE_GAP_MS);
  }
  due = due && !r->writer_kill_pending;
  if (r->faults_done < r->sc->faults && due) inject(r);
  /* Progress: events handed to the customers. When everything is ACKed and
   * nothing has moved for STUCK_MS, replies are not coming: the run ends
   * and the checker counts what is missing. */
  uint64_t events = 0;
  bool all_results = true;
  for (int i = 0; i < r->sc->convs; i++) {
    events += r->cs[i].n_recs;
    all_results = all_results && r->cs[i].results >= r->sc->msgs;
  }
  if (events != r->last_progress) {
    r->last_progress = events;
    r->progress_at = now;
  }
  bool stuck = all_results && r->faults_done >= r->sc->faults && now - r->progress_at >= STUCK_MS;
  bool finished = r->faults_done >= r->sc->faults && !r->writer_kill_pending &&
                  (all_done(r) || stuck);
  for (int i = 0; i < r->sc->replicas; i++) finished = finished && !r->bot_paused[i];
  if (finished && !r->done_at) r->done_at = now;
  /* A short quiet time after the last expected reply catches late copies. */
  bool settle = r->done_at && now - r->done_at >= SETTLE_MS;
  bool late = now >= r->deadline_ms;
  if (settle || late) {
    if (late) {
      r->k.incomplete = 1;
      snprintf(r->why, sizeof r->why, "deadline reached: acked %" PRIu64 " of %d, faults %d",
               acked, r->total_msgs, r->faults_done);
    }
    r->stopping = true;
    r->stop_at = now;
    for (int i = 0; i < r->sc->convs; i++) parley_client_stop(r->cs[i].c, 2000);
  }
}

/* -------------------------------------------------------------- checker */

typedef struct logev {
  uint64_t seq;
  int kind;
  char sender[64];
  uint8_t msg_id[16];
  bool has_msg_id;
  char *text;
} logev;

static void check_state(run *r, sqlite3 *db, cust *c, uint64_t n_msgs, const char *last);

static void check_conversation(run *r, sqlite3 *db, cust *c) {
  const scenario *sc = r->sc;
  counts *k = &r->k;
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(db, "SELECT seq, blob FROM events WHERE conv=?1 ORDER BY seq", -1, &st,
                         NULL) != SQLITE_OK) {
    snprintf(r->why, sizeof r->why, "sqlite: %s", sqlite3_errmsg(db));
    k->incomplete++;
    return;
  }
  sqlite3_bind_text(st, 1, c->conv, -1, SQLITE_STATIC);
  /* Per message: the message, its reply, and a STATE_CHANGED or TAGGED
   * event from the bot's commit at most. */
  size_t cap = (size_t)sc->msgs * 4 + 64, n = 0;
  logev *ev = calloc(cap, sizeof *ev);
  uint64_t *pos = calloc((size_t)sc->msgs, sizeof *pos); /* seq of message i in the log */
  int *replies = calloc((size_t)sc->msgs, sizeof *replies);
  uint64_t *reply_seq = calloc((size_t)sc->msgs, sizeof *reply_seq);
  while (sqlite3_step(st) == SQLITE_ROW) {
    if (n == cap) {
      k->duplicated++; /* more events than any correct run stores */
      break;
    }
    Parley__V1__Event *e = parley__v1__event__unpack(NULL, (size_t)sqlite3_column_bytes(st, 1),
                                                     sqlite3_column_blob(st, 1));
    logev *x = &ev[n++];
    x->seq = (uint64_t)sqlite3_column_int64(st, 0);
    if (!e) {
      k->mismatched++;
      continue;
    }
    x->kind = (int)e->kind;
    snprintf(x->sender, sizeof x->sender, "%s", e->sender ? e->sender : "");
    x->has_msg_id = e->client_msg_id.len == 16;
    if (x->has_msg_id) memcpy(x->msg_id, e->client_msg_id.data, 16);
    if (e->content && e->content->body_case == PARLEY__V1__CONTENT__BODY_TEXT && e->content->text)
      x->text = strdup(e->content->text->body);
    else if (e->content && e->content->fallback && e->content->fallback[0])
      x->text = strdup(e->content->fallback);
    parley__v1__event__free_unpacked(e, NULL);
  }
  sqlite3_finalize(st);
  k->stored += n;

  /* The log itself: seq 1..N, each customer message once and in send
   * order, one reply per message, after it. */
  int last_m = -1;
  for (size_t j = 0; j < n; j++) {
    logev *x = &ev[j];
    if (x->seq != j + 1) k->gapped++;
    if (x->kind != PARLEY__V1__EVENT_KIND__EVENT_MESSAGE || !x->text) continue;
    if (strcmp(x->sender, c->principal) == 0) {
      int m = parse_num(x->text, "", c->idx);
      if (m < 0 || m >= sc->msgs) {
        k->mismatched++;
        continue;
      }
      if (pos[m]) k->duplicated++;
      else pos[m] = x->seq;
      if (m < last_m) k->reordered++;
      if (m > last_m) last_m = m;
    } else if (strcmp(x->sender, BOT_NAME) == 0) {
      int m = parse_num(x->text, "echo: ", c->idx);
      if (m < 0 || m >= sc->msgs) {
        k->mismatched++;
        continue;
      }
      if (replies[m]++ > 0) k->duplicated++;
      reply_seq[m] = x->seq;
    }
  }
  /* The stored state: one handler per stored customer message. */
  uint64_t n_msgs = 0;
  const char *last_text = NULL;
  for (size_t j = 0; j < n; j++) {
    logev *x = &ev[j];
    if (x->kind == PARLEY__V1__EVENT_KIND__EVENT_MESSAGE && x->text &&
        strcmp(x->sender, c->principal) == 0) {
      n_msgs++;
      last_text = x->text;
    }
  }
  check_state(r, db, c, n_msgs, last_text);
  for (int m = 0; m < sc->msgs; m++) {
    if (c->ack_seq[m]) {
      if (!pos[m]) {
        k->lost++;
      } else if (pos[m] != c->ack_seq[m]) {
        k->lost++; /* ACKed at one seq, stored at another */
      } else {
        logev *x = &ev[pos[m] - 1];
        if (!x->has_msg_id || memcmp(x->msg_id, c->ack_id[m], 16) != 0) k->mismatched++;
      }
    }
    if (pos[m] && !replies[m]) k->replies_missing++;
    if (pos[m] && replies[m] && reply_seq[m] < pos[m]) k->reordered++;
  }

  /* What the application was handed: 1..N in order, once each, equal to
   * the log, the whole stream, each reply once. */
  uint64_t expect = 1;
  bool *seen = calloc(n + 2, sizeof *seen);
  for (size_t j = 0; j < c->n_recs; j++) {
    rec *x = &c->recs[j];
    k->delivered++;
    if (x->seq < expect) {
      /* Handed over before: a copy; never handed over: out of order. */
      if (x->seq <= n && seen && seen[x->seq]) k->duplicated++;
      else k->reordered++;
      continue;
    }
    if (seen && x->seq <= n) seen[x->seq] = true;
    if (x->seq > expect) k->gapped++;
    expect = x->seq + 1;
    if (x->seq > n) {
      k->mismatched++;
      continue;
    }
    logev *l = &ev[x->seq - 1];
    if (l->kind != x->kind || l->has_msg_id != x->has_msg_id ||
        (x->has_msg_id && memcmp(l->msg_id, x->msg_id, 16) != 0) ||
        ((l->text == NULL) != (x->text == NULL)) || (l->text && strcmp(l->text, x->text) != 0))
      k->mismatched++;
  }
  free(seen);
  if (c->overflow) k->duplicated++;
  if (expect != n + 1) k->gapped++; /* the stream was not delivered to its end */
  for (int m = 0; m < sc->msgs; m++)
    if (c->echo_count[m] > 1) k->duplicated += (uint64_t)(c->echo_count[m] - 1);

  for (size_t j = 0; j < n; j++) free(ev[j].text);
  free(ev);
  free(pos);
  free(replies);
  free(reply_seq);
}

/* The conversation's stored state and tags against the echo bot's rule: a
 * handler per customer message, each adding one to the count the one before
 * it committed. The stored document must be the last handler's. */
static void check_state(run *r, sqlite3 *db, cust *c, uint64_t n_msgs, const char *last) {
  counts *k = &r->k;
  if (!n_msgs) return;
  char want_count[32], want_last[160];
  snprintf(want_count, sizeof want_count, "%" PRIu64, n_msgs);
  snprintf(want_last, sizeof want_last, "\"%s\"", last ? last : "");
  bool count_ok = false, last_ok = false, tags_ok = false;
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(db, "SELECT key, value FROM state WHERE conv=?1", -1, &st, NULL) !=
      SQLITE_OK) {
    snprintf(r->why, sizeof r->why, "sqlite: %s", sqlite3_errmsg(db));
    k->incomplete++;
    return;
  }
  sqlite3_bind_text(st, 1, c->conv, -1, SQLITE_STATIC);
  while (sqlite3_step(st) == SQLITE_ROW) {
    const char *key = (const char *)sqlite3_column_text(st, 0);
    int len = sqlite3_column_bytes(st, 1);
    const char *v = sqlite3_column_blob(st, 1);
    if (!key || !v) continue;
    if (!strcmp(key, "count"))
      count_ok = (size_t)len == strlen(want_count) && !memcmp(v, want_count, (size_t)len);
    if (!strcmp(key, "last"))
      last_ok = (size_t)len == strlen(want_last) && !memcmp(v, want_last, (size_t)len);
  }
  sqlite3_finalize(st);
  if (sqlite3_prepare_v2(db, "SELECT tags FROM conversations WHERE id=?1", -1, &st, NULL) ==
      SQLITE_OK) {
    sqlite3_bind_text(st, 1, c->conv, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
      const char *tags = (const char *)sqlite3_column_text(st, 0);
      /* Exactly one "tens:" tag, the count's. */
      char want[40];
      snprintf(want, sizeof want, "tens:%" PRIu64, n_msgs / 10);
      int n_tens = 0;
      bool has = false;
      for (const char *p = tags; p && (p = strstr(p, "tens:")) != NULL; p += 5) {
        n_tens++;
        size_t wl = strlen(want);
        if (!strncmp(p, want, wl) && (p[wl] == '\0' || p[wl] == '\n' || p[wl] == ',')) has = true;
      }
      tags_ok = has && n_tens == 1;
    }
    sqlite3_finalize(st);
  }
  if (!count_ok || !last_ok || !tags_ok) {
    k->state_wrong++;
    fprintf(stderr, "chaos: %s: stored state or tags are not the last handler's (%" PRIu64
            " messages, last %s; count %s, last %s, tags %s)\n",
            c->conv, n_msgs, want_last, count_ok ? "ok" : "wrong", last_ok ? "ok" : "wrong",
            tags_ok ? "ok" : "wrong");
  }
}

/* Each handler run logs "handled text=<t> redelivered=<b>". A message
 * handled more than once must have been flagged redelivered every time
 * after the first. */
static void check_bot_logs(run *r) {
  typedef struct hrun {
    int runs, unflagged;
  } hrun;
  hrun *h = calloc((size_t)r->total_msgs, sizeof *h);
  if (!h) return;
  for (int i = 0; i < r->sc->replicas; i++) {
    char path[320];
    snprintf(path, sizeof path, "%s/bot-%d.log", r->dir, i);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    char line[2048];
    char hours[16][14];
    size_t n_hours = 0;
    while (fgets(line, sizeof line, f)) {
      /* The text log starts with the wall-clock time, to the hour in 13
       * characters: distinct hours show that the clock jumps took. */
      bool known = false;
      for (size_t q = 0; q < n_hours; q++) known = known || strncmp(hours[q], line, 13) == 0;
      if (!known && n_hours < 16 && strlen(line) > 13) {
        memcpy(hours[n_hours], line, 13);
        hours[n_hours++][13] = 0;
      }
      if (strstr(line, "reply failed")) r->k.replies_refused++;
      if (strstr(line, " connection: ")) r->k.bot_conn_lost++;
      char *p = strstr(line, "handled text=");
      if (!p) continue;
      int ci = -1, m = -1;
      if (sscanf(p, "handled text=c%d-m%d", &ci, &m) != 2) continue;
      if (ci < 0 || ci >= r->sc->convs || m < 0 || m >= r->sc->msgs) continue;
      hrun *x = &h[(size_t)ci * (size_t)r->sc->msgs + (size_t)m];
      x->runs++;
      if (strstr(p, "redelivered=false")) x->unflagged++;
    }
    fclose(f);
    if (n_hours > r->k.bot_clocks) r->k.bot_clocks = n_hours;
  }
  for (int j = 0; j < r->total_msgs; j++) {
    if (h[j].runs > 1) r->k.reruns += (uint64_t)(h[j].runs - 1);
    if (h[j].unflagged > 1) r->k.unflagged_reruns += (uint64_t)(h[j].unflagged - 1);
  }
  free(h);
}

/* ------------------------------------------------------------- scenario */

static uint64_t seed_for(const scenario *sc) {
  const char *s = getenv("PARLEY_CHAOS_SEED");
  uint64_t base = s && *s ? strtoull(s, NULL, 10) : 20261128;
  uint64_t h = base;
  for (const char *p = sc->name; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ULL;
  return h ? h : 1;
}

static void write_config(run *r) {
  size_t cap = 4096 + (size_t)r->sc->convs * 80;
  char *y = malloc(cap);
  assert_non_null(y);
  int n = snprintf(y, cap,
                   "listen: 127.0.0.1\n"
                   "durability: normal\n"
                   "bot: " BOT_NAME "\n"
                   "limits:\n"
                   "  ack_timeout: 1s\n"
                   "  heartbeat: %s\n"
                   "  max_connections_per_principal: 64\n"
                   "principals:\n"
                   "  - {name: " BOT_NAME ", role: bot, token: " BOT_TOKEN "}\n",
                   r->sc->heartbeat);
  for (int i = 0; i < r->sc->convs; i++)
    n += snprintf(y + n, cap - (size_t)n, "  - {name: cust%d, role: customer, token: tok-cust%d}\n",
                  i, i);
  /* docs/gateway.md, "Test switches": pushes and send ACKs to every client,
   * the bot included, are dropped, doubled and held back. */
  if (r->sc->gw_switches)
    n += snprintf(y + n, cap - (size_t)n,
                  "faults:\n  drop_push: 5\n  duplicate_push: 5\n  reorder_push: 10\n"
                  "  drop_ack: 5\n  duplicate_ack: 5\n  seed: %llu\n",
                  (unsigned long long)(r->seed % 1000000 + 1));
  if (r->sc->writer_hold_ms)
    n += snprintf(y + n, cap - (size_t)n, "faults:\n  writer_hold_ms: %u\n",
                  (unsigned)r->sc->writer_hold_ms);
  assert_int_equal(write_file(r->cfg, y), 0);
  free(y);
}

static void run_scenario(const scenario *sc) {
  run *r = calloc(1, sizeof *r);
  assert_non_null(r);
  current = r;
  r->sc = sc;
  r->seed = seed_for(sc);
  r->rng = r->seed;
  r->total_msgs = sc->convs * sc->msgs;
  assert_int_equal(tmpdir_make(r->dir, sizeof r->dir, "chaos"), 0);
  snprintf(r->data, sizeof r->data, "%s/data", r->dir);
  snprintf(r->cfg, sizeof r->cfg, "%s/gateway.yaml", r->dir);
  snprintf(r->clock_file, sizeof r->clock_file, "%s/clock", r->dir);
  mkdir(r->data, 0755);
  write_config(r);
  if (sc->kind == F_CLOCK) write_clock(r, "+0");

  uint64_t t0 = mono_ms();
  r->gw_port = 0;
  assert_int_equal(gw_start(r), 0);
  fp_options po = {.target_port = r->gw_port, .seed = r->seed};
  assert_int_equal(fp_start(&po, &r->proxy), 0);
  for (int i = 0; i < sc->replicas; i++) assert_int_equal(bot_start(r, i), 0);

  char url[64];
  snprintf(url, sizeof url, "ws://127.0.0.1:%d/", fp_port(r->proxy));
  assert_int_equal(uv_loop_init(&r->loop), 0);
  r->cs = calloc((size_t)sc->convs, sizeof *r->cs);
  assert_non_null(r->cs);
  for (int i = 0; i < sc->convs; i++) assert_int_equal(cust_init(r, &r->cs[i], i, url), 0);
  r->started_ms = mono_ms();
  r->deadline_ms = r->started_ms + (uint64_t)sc->deadline_s * 1000;
  uv_timer_init(&r->loop, &r->tick);
  r->tick.data = r;
  uv_timer_start(&r->tick, on_tick, 20, 20);
  uv_run(&r->loop, UV_RUN_DEFAULT);
  uint64_t elapsed = mono_ms() - r->started_ms;

  for (int i = 0; i < sc->convs; i++) {
    parley_client_stats s;
    parley_client_stats_get(r->cs[i].c, &s);
    r->k.reconnects += s.reconnects;
    r->k.acked += (uint64_t)r->cs[i].acked;
    r->k.failed += (uint64_t)r->cs[i].failed;
  }

  /* Stop everything cleanly, then read the log. */
  for (int i = 0; i < sc->replicas; i++) {
    if (r->bot_paused[i]) tproc_kill(&r->bots[i], SIGCONT);
    tproc_kill(&r->bots[i], SIGTERM);
    if (tproc_wait(&r->bots[i], 15000) != 0) tproc_kill(&r->bots[i], SIGKILL);
    tproc_stop(&r->bots[i]);
  }
  fp_stats ps;
  fp_get_stats(r->proxy, &ps);
  fp_stop(r->proxy);
  tproc_kill(&r->gw, SIGTERM);
  if (tproc_wait(&r->gw, 15000) != 0) {
    snprintf(r->why, sizeof r->why, "gateway did not stop on SIGTERM");
    r->k.incomplete++;
  }
  tproc_stop(&r->gw);

  char dbpath[400];
  snprintf(dbpath, sizeof dbpath, "%s/gateway.db", r->data);
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
  for (int i = 0; i < sc->convs; i++) check_conversation(r, db, &r->cs[i]);
  sqlite3_close(db);
  check_bot_logs(r);

  counts *k = &r->k;
  printf("scenario %s: seed=%" PRIu64 " convs=%d sent=%" PRIu64 " acked=%" PRIu64
         " failed=%" PRIu64 " stored=%" PRIu64 " delivered=%" PRIu64 " lost=%" PRIu64
         " duplicated=%" PRIu64 " reordered=%" PRIu64 " gapped=%" PRIu64
         " replies_missing=%" PRIu64 " mismatched=%" PRIu64 " state_wrong=%" PRIu64
         " faults=%" PRIu64
         " reruns=%" PRIu64 " unflagged_reruns=%" PRIu64 " replies_refused=%" PRIu64
         " bot_conn_lost=%" PRIu64 " bot_clocks=%" PRIu64 " reconnects=%" PRIu64
         " proxy_cuts=%" PRIu64 "/%" PRIu64 " elapsed=%.1fs total=%.1fs\n",
         sc->name, r->seed, sc->convs, k->sent, k->acked, k->failed, k->stored, k->delivered,
         k->lost, k->duplicated, k->reordered, k->gapped, k->replies_missing, k->mismatched,
         k->state_wrong, k->faults, k->reruns, k->unflagged_reruns, k->replies_refused,
         k->bot_conn_lost, k->bot_clocks, k->reconnects, ps.cut_mid, ps.cut,
         (double)elapsed / 1000.0, (double)(mono_ms() - t0) / 1000.0);
  if (sc->writer_hold_ms)
    printf("scenario %s: kills while a batch was with the writer: %" PRIu64 " of %" PRIu64 "\n",
           sc->name, k->writer_kills, k->faults);
  fflush(stdout);
  if (r->why[0]) fprintf(stderr, "scenario %s: %s\n", sc->name, r->why);

  for (int i = 0; i < sc->convs; i++) cust_free(&r->cs[i]);
  /* Freed clients close their handles over a few loop turns. */
  for (int i = 0; i < 200 && uv_loop_alive(&r->loop); i++) uv_run(&r->loop, UV_RUN_NOWAIT);
  uv_loop_close(&r->loop);
  free(r->cs);

  bool keep = getenv("PARLEY_CHAOS_KEEP") != NULL;
  counts kk = *k;
  /* The proxy faults must have happened, or nothing was tested. */
  bool proxy_ok = sc->kind != F_PROXY || (ps.cut > 0 && ps.cut_mid > 0);
  if (keep) fprintf(stderr, "scenario %s: kept %s\n", sc->name, r->dir);
  else tmpdir_remove(r->dir);
  free(r);
  current = NULL;

  assert_int_equal(kk.incomplete, 0);
  assert_int_equal(kk.sent, (uint64_t)sc->convs * (uint64_t)sc->msgs);
  assert_int_equal(kk.acked, kk.sent);
  assert_int_equal(kk.failed, 0);
  assert_int_equal(kk.lost, 0);
  assert_int_equal(kk.duplicated, 0);
  assert_int_equal(kk.reordered, 0);
  assert_int_equal(kk.gapped, 0);
  assert_int_equal(kk.replies_missing, 0);
  assert_int_equal(kk.mismatched, 0);
  assert_int_equal(kk.state_wrong, 0);
  assert_int_equal(kk.faults, (uint64_t)sc->faults);
  assert_true(proxy_ok);
  if (sc->check_redelivered) assert_int_equal(kk.unflagged_reruns, 0);
  /* A bot connected directly and never faulted keeps its one connection:
   * a jump of its wall clock must not make it time out. */
  if (sc->bot_direct) assert_int_equal(kk.bot_conn_lost, 0);
  /* The jumps must have reached the bot, or nothing was tested. */
  if (sc->kind == F_CLOCK) assert_true(kk.bot_clocks >= 3);
  /* Every kill must have found a batch with the writer. */
  if (sc->writer_hold_ms) assert_int_equal(kk.writer_kills, (uint64_t)sc->faults);
}

/* (1) Many conversations, forced disconnects through the proxy. */
static void test_disconnects(void **unused) {
  (void)unused;
  bool full = full_size();
  scenario sc = {.name = "disconnects",
                 .kind = F_PROXY,
                 .convs = full ? 100 : 20,
                 .msgs = full ? 1000 : 100,
                 .faults = full ? 200 : 20,
                 .replicas = 1,
                 .heartbeat = "2s",
                 .deadline_s = full ? 3000 : 50,
                 .check_redelivered = true};
  run_scenario(&sc);
}

/* (1b) The same with the bot connected to the gateway directly, so that
 * only customer connections are cut: the customer side of (1). */
static void test_disconnects_customers(void **unused) {
  (void)unused;
  bool full = full_size();
  scenario sc = {.name = "disconnects_customers",
                 .kind = F_PROXY,
                 .convs = full ? 100 : 20,
                 .msgs = full ? 1000 : 100,
                 .faults = full ? 200 : 20,
                 .replicas = 1,
                 .heartbeat = "2s",
                 .deadline_s = full ? 3000 : 50,
                 .check_redelivered = true,
                 .bot_direct = true};
  run_scenario(&sc);
}

/* (1c) Disconnects through the proxy while the gateway's test switches
 * drop, double and reorder its pushes and send ACKs (to customers and the
 * bot alike): retries, dedup, reorder buffers, gap fetches and redelivery
 * all run at once. */
static void test_gateway_switches(void **unused) {
  (void)unused;
  bool full = full_size();
  scenario sc = {.name = "gateway_switches",
                 .kind = F_PROXY,
                 .convs = full ? 100 : 20,
                 .msgs = full ? 500 : 50,
                 .faults = full ? 50 : 5,
                 .replicas = 1,
                 .heartbeat = "2s",
                 .deadline_s = full ? 3000 : 60,
                 .check_redelivered = true,
                 .gw_switches = true};
  run_scenario(&sc);
}

/* (2) The bot killed with SIGKILL during the stream and restarted. */
static void test_bot_kill9(void **unused) {
  (void)unused;
  bool full = full_size();
  scenario sc = {.name = "bot_kill9",
                 .kind = F_BOT_KILL,
                 .convs = full ? 50 : 20,
                 .msgs = full ? 200 : 100,
                 .faults = full ? 20 : 5,
                 .replicas = 1,
                 .heartbeat = "2s",
                 .deadline_s = full ? 1200 : 50,
                 .check_redelivered = true};
  run_scenario(&sc);
}

/* (3) The gateway killed with SIGKILL and restarted on the same data dir
 * and port. The restarted gateway flags an unacknowledged event stored by
 * an earlier run as redelivered (that run may have pushed it), so handler
 * re-runs are flagged here too (docs/gateway.md, "Delivery"). */
static void test_gateway_kill9(void **unused) {
  (void)unused;
  bool full = full_size();
  scenario sc = {.name = "gateway_kill9",
                 .kind = F_GW_KILL,
                 .convs = full ? 50 : 20,
                 .msgs = full ? 400 : 100,
                 .faults = full ? 20 : 5,
                 .replicas = 1,
                 .heartbeat = "2s",
                 .deadline_s = full ? 1800 : 50,
                 .check_redelivered = true};
  run_scenario(&sc);
}

/* (3b) The gateway killed while a batch is with its writer thread: the
 * loop has applied the batch to its memory and handed it over, and the
 * kill lands either before the batch's commit (nothing of it may be
 * visible after the restart, and the resent messages are stored once) or
 * after the commit and before its answers went out (the resends must be
 * answered as duplicates, from the store). */
static void test_gateway_kill9_writer(void **unused) {
  (void)unused;
  bool full = full_size();
  scenario sc = {.name = "gateway_kill9_writer",
                 .kind = F_GW_KILL,
                 .convs = full ? 50 : 20,
                 .msgs = full ? 200 : 60,
                 .faults = full ? 20 : 6,
                 .replicas = 1,
                 .heartbeat = "2s",
                 .deadline_s = full ? 1800 : 60,
                 .check_redelivered = true,
                 .writer_hold_ms = 30};
  run_scenario(&sc);
}

/* (4) One of two replicas paused with SIGSTOP for longer than two
 * heartbeats, so its conversations move to the other one, then resumed;
 * one replica at a time. With both down at once, the conversations can come
 * back to a replica with handlers in flight, which finds the known failure
 * of docs/reliability.md: the disconnects scenario covers that. */
static void test_replica_pause(void **unused) {
  (void)unused;
  bool full = full_size();
  /* Paced, so that the stream is still flowing at every pause. */
  scenario sc = {.name = "replica_pause",
                 .kind = F_PAUSE,
                 .convs = full ? 40 : 10,
                 .msgs = full ? 200 : 100,
                 .faults = full ? 20 : 3,
                 .replicas = 2,
                 .heartbeat = "1s",
                 .pause_ms = 3000,
                 .deadline_s = full ? 1200 : 55,
                 .check_redelivered = true,
                 .pace_ms = full ? 600 : 150};
  run_scenario(&sc);
}

/* (6) The bot's wall clock jumps forward and back (libfaketime) while
 * connections are cut. Skipped when libfaketime is not installed. */
static void test_clock_jump(void **unused) {
  (void)unused;
  if (access(FAKETIME_LIB, R_OK) != 0) {
    print_message("libfaketime not installed (%s): skipped\n", FAKETIME_LIB);
    skip();
  }
  bool full = full_size();
  scenario sc = {.name = "clock_jump",
                 .kind = F_CLOCK,
                 .convs = full ? 50 : 10,
                 .msgs = full ? 200 : 60,
                 .faults = full ? 40 : 8,
                 .replicas = 1,
                 .heartbeat = "2s",
                 .deadline_s = full ? 1200 : 50,
                 .check_redelivered = true,
                 .bot_direct = true,
                 .fault_every_ms = 1200,
                 .pace_ms = 150};
  run_scenario(&sc);
}

/* (5) ACK edge cases against the gateway with the raw client: ackedge.c. */
void test_ack_edges(void **unused);
int test_ack_edges_teardown(void **unused);

/* (7) Customer Acks whose watermark was not yet written, then SIGKILL:
 * lazywm.c. */
void test_lazy_watermark(void **unused);
void test_lazy_watermark_timer(void **unused);
int test_lazy_watermark_teardown(void **unused);

/* After a scenario that an assertion ended early: its child processes
 * are killed and its directory removed (the rest is left to the exit). */
static int scenario_teardown(void **unused) {
  (void)unused;
  run *r = current;
  if (!r) return 0;
  current = NULL;
  for (int i = 0; i < MAX_REPLICAS; i++)
    if (r->bots[i].pid > 0 && !r->bots[i].reaped) tproc_stop(&r->bots[i]);
  if (r->gw.pid > 0 && !r->gw.reaped) tproc_stop(&r->gw);
  if (r->proxy) fp_stop(r->proxy);
  r->proxy = NULL;
  if (r->dir[0] && !getenv("PARLEY_CHAOS_KEEP")) tmpdir_remove(r->dir);
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0);
  lws_set_log_level(LLL_ERR | LLL_WARN, NULL);
  if (argc > 1) cmocka_set_test_filter(argv[1]);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_disconnects, scenario_teardown),
      cmocka_unit_test_teardown(test_disconnects_customers, scenario_teardown),
      cmocka_unit_test_teardown(test_gateway_switches, scenario_teardown),
      cmocka_unit_test_teardown(test_bot_kill9, scenario_teardown),
      cmocka_unit_test_teardown(test_gateway_kill9, scenario_teardown),
      cmocka_unit_test_teardown(test_gateway_kill9_writer, scenario_teardown),
      cmocka_unit_test_teardown(test_replica_pause, scenario_teardown),
      cmocka_unit_test_teardown(test_ack_edges, test_ack_edges_teardown),
      cmocka_unit_test_teardown(test_clock_jump, scenario_teardown),
      cmocka_unit_test_teardown(test_lazy_watermark, test_lazy_watermark_teardown),
      cmocka_unit_test_teardown(test_lazy_watermark_timer, test_lazy_watermark_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
