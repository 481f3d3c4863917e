/* bench_turns: conversation throughput and turn latency, Parley against
 * mosquitto.
 *
 *   bench_turns [--tiny] [--no-full] [--only c|lua|full|mosquitto]
 *
 * --no-full leaves out the durability-full run; --only runs one side and
 * prints its table without emitting figures (for profiling). Environment:
 * BENCH_TURNS_CONVS overrides the number of conversations,
 * BENCH_TURNS_BOTDIR replaces the Lua bot's folder (a wrong bot must fail
 * the run), BENCH_TURNS_KEEP keeps the temporary directory and its logs,
 * BENCH_TURNS_TRACE prints every open-loop turn slower than 20 ms,
 * PARLEY_BENCH_BUSY_POLL_US sets the gateway's busy_poll_us.
 *
 * A turn: a customer sends a message, the gateway ACKs it, the bot receives
 * it, replies, the gateway ACKs the reply and the bot commits, and the
 * customer receives the reply. 1,000 conversations (20 with --tiny), one
 * customer each, all driven from this process on one loop.
 *
 * Measured, for each side:
 * - closed loop: every conversation keeps exactly one turn outstanding (the
 *   reply triggers the next message); after a warm-up (every conversation
 *   answered at least once) the completed turns of a fixed window give the
 *   maximum turns per second;
 * - open loop at 50% and 90% of that maximum: messages are sent on a fixed
 *   schedule at the target aggregate rate, round-robin over the
 *   conversations, whether or not earlier turns were answered; the latency
 *   of a turn runs from its scheduled send time (so a stalled sender cannot
 *   hide a delay) to the customer receiving the reply; p50/p90/p99 over the
 *   turns scheduled after the phase's warm-up.
 *
 * Parley: a real `parley gateway` process (durability normal, group commit
 * on), the Lua echo bot (bench/turns/echo-bot) as a real `parley run`
 * process, customers through libparley's client API (one client per
 * customer principal, all on this process's loop, tokens minted from the
 * gateway's customer secret). The same closed loop with bench_turns_cbot,
 * the same bot in C on the client API, gives the Lua runtime's share
 * (bench "lua_hook"). Unless --no-full, the closed loop with the Lua bot is
 * also run on a gateway with durability full (an extra param).
 *
 * mosquitto: a broker started here (persistence false, no in-flight or
 * queue cap), a "customers" client in this process publishing QoS 1 to
 * conv/<i>/in and subscribed QoS 1 to conv/+/out, and a "bot" client in a
 * child process subscribed QoS 1 to conv/+/in that republishes each message
 * QoS 1 to conv/<i>/out with the same "echo: " prefix. Both sides carry the
 * same text, acknowledge every hop, and run the bot in its own process; the
 * broker keeps nothing on disk, which favours mosquitto against Parley's
 * durable log.
 *
 * Besides the rate, the CPU time each process spent per turn in the
 * closed-loop window is printed and emitted (server, bot, customers): on a
 * shared machine the rate follows what else runs, the CPU per turn much
 * less.
 *
 * Figures: turns/turns_per_s (parley, mosquitto; parley also with
 * param durability=full), turns/p50_ms, p90_ms, p99_ms (load=50%,
 * load=90%), turns/server_cpu_us_per_turn and bot_cpu_us_per_turn,
 * lua_hook/turns_per_s and bot_cpu_us_per_turn (parley-lua, parley-c).
 *
 * Verification: every reply must be "echo: c<i>-<k>" for the conversation
 * i and its next expected turn k, so a lost, doubled or reordered reply
 * fails the run; every send must be ACKed; after each phase every
 * conversation must have as many replies as messages.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <sodium.h>
#include <uv.h>

#include <parley/client.h>

#include "bench.h"
#include "proc.h"

#define BOT_NAME "echo"
#define BOT_TOKEN "bench-turns-bot-token"
#define CUSTOMER_SECRET "bench-turns-customer-secret-0123456789"
#define RING 256                  /* outstanding turns per conversation, hard max */
#define LAT_MAX (4u * 1000 * 1000) /* latency samples per phase, hard max */
#define DRAIN_TIMEOUT_NS (30ull * 1000000000ull)
#define CONNECT_TIMEOUT_NS (60ull * 1000000000ull)

/* ------------------------------------------------------------ settings */

typedef struct settings {
  int convs;
  double warm_s;      /* closed loop before the window */
  double closed_s;    /* closed-loop window */
  double open_s;      /* each open-loop phase */
  double open_warm_s; /* open-loop turns scheduled before this are not counted */
} settings;

static settings S;
static bool g_trace; /* BENCH_TURNS_TRACE: print slow turns */
/* Several gateway nodes: a bot on every node instead of one on node 1. */
static bool g_bot_per_node;

/* ------------------------------------------------- cleanup of children */

static tproc *g_procs[8];
static pid_t g_child_pids[4];
static char g_dir[256];

static void track_proc(tproc *p) {
  for (size_t i = 0; i < sizeof g_procs / sizeof *g_procs; i++)
    if (!g_procs[i]) {
      g_procs[i] = p;
      return;
    }
}

static void untrack_proc(tproc *p) {
  for (size_t i = 0; i < sizeof g_procs / sizeof *g_procs; i++)
    if (g_procs[i] == p) g_procs[i] = NULL;
}

static void kill_children(void) {
  for (size_t i = 0; i < sizeof g_procs / sizeof *g_procs; i++)
    if (g_procs[i]) {
      tproc_stop(g_procs[i]);
      g_procs[i] = NULL;
    }
  for (size_t i = 0; i < sizeof g_child_pids / sizeof *g_child_pids; i++)
    if (g_child_pids[i] > 0) {
      kill(g_child_pids[i], SIGKILL);
      waitpid(g_child_pids[i], NULL, 0);
      g_child_pids[i] = 0;
    }
  if (g_dir[0] && !getenv("BENCH_TURNS_KEEP")) tmpdir_remove(g_dir);
  g_dir[0] = 0;
}

static void on_fatal_signal(int sig) {
  kill_children();
  signal(sig, SIG_DFL);
  raise(sig);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "bench_turns: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1); /* atexit kills the children and removes the directory */
}

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  int port = 0;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

/* Children's stdout is read and dropped so that they never block. */
static void drain_out(tproc *p) {
  if (!p || p->pid <= 0 || p->reaped || p->out_fd < 0) return;
  char tmp[4096];
  while (read(p->out_fd, tmp, sizeof tmp) > 0) {
  }
}

/* The end of a child's log on stderr, to explain a failure. */
static void print_tail(const char *what, const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return;
  char buf[2048];
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, size > (long)sizeof buf - 1 ? size - (long)sizeof buf + 1 : 0, SEEK_SET);
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  fprintf(stderr, "--- end of the %s (%s):\n%s\n---\n", what, path, buf);
}

/* ------------------------------------------------------- the turn core */

/* What one conversation has sent and received. Replies must come in turn
 * order, once each; t[] holds the send (or scheduled) times of the turns
 * not answered yet, oldest first. */
typedef struct turn_conv {
  uint64_t sent, recv;
  uint64_t t[RING];
} turn_conv;

typedef enum phase {
  PH_CONNECT, PH_WARM, PH_CLOSED, PH_OPEN, PH_DRAIN, PH_DONE
} phase;

static double proc_cpu_s(pid_t pid);
static double pg_tree_cpu_s(pid_t postmaster);

/* Processes whose CPU time is read at the start and end of the closed-loop
 * window: the server (gateway or broker; the sum over every gateway node
 * when there are several), the bot, this process (the customers), and the
 * database server (PostgreSQL's postmaster and its children, bench_pg). */
enum { CPU_SERVER, CPU_BOT, CPU_SELF, CPU_DB, CPU_N };
#define MAX_NODES 3

typedef struct driver driver;
/* The CPU time of one accounted role so far, in seconds. */
static double role_cpu_s(const driver *d, int k);
struct driver {
  const char *name;
  int n;
  turn_conv *tc;
  /* Sends turn k of conversation i; 0 or -1 (then why is set). */
  int (*send)(driver *d, int i, uint64_t k);
  /* True once every customer (and the bot) is ready. */
  bool (*ready)(driver *d);
  void *impl;

  phase ph;
  uint64_t ph_t0, ph_end, drain_deadline;
  /* The plan: a closed-loop window, then each open rate (fractions of the
   * measured maximum). */
  double open_loads[4];
  int n_open, open_i;
  /* Closed loop. */
  uint64_t completed;
  double max_tps;
  pid_t cpu_pid[CPU_N];
  pid_t node_pid[MAX_NODES]; /* several gateway nodes: CPU_SERVER sums them */
  int n_nodes;
  pid_t bot_pid[MAX_NODES]; /* a bot per node: CPU_BOT sums them */
  int n_bots;
  double cpu0[CPU_N], cpu_per_turn_us[CPU_N];
  /* Open loop. */
  double rate;
  uint64_t issued, lat_from, lat_until;
  double *lat;
  size_t n_lat;
  double p50[4], p90[4], p99[4], achieved[4];
  size_t lat_n[4];
  /* CPU per turn over each open-loop phase's schedule: small batches cost
   * more per turn than the closed loop's, and how much more says whether
   * the phase's rate was within what the processes could do. */
  double open_cpu_us[4][CPU_N];
  uint64_t total_turns;
  bool failed;
  char why[512];
};

static void fail(driver *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(driver *d, const char *fmt, ...) {
  if (d->failed) return;
  d->failed = true;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(d->why, sizeof d->why, fmt, ap);
  va_end(ap);
  d->ph = PH_DONE;
}

static void turn_send(driver *d, int i, uint64_t when) {
  turn_conv *c = &d->tc[i];
  if (c->sent - c->recv >= RING) {
    fail(d, "%s: conversation %d has %d turns outstanding; the side does not keep up", d->name,
         i, RING);
    return;
  }
  uint64_t k = c->sent;
  c->t[k % RING] = when;
  c->sent++;
  d->total_turns++;
  if (d->send(d, i, k) != 0) fail(d, "%s: sending turn %" PRIu64 " of conversation %d failed: %s",
                                  d->name, k, i, d->why[0] ? d->why : "refused");
}

/* A reply text for conversation i arrived. */
static void turn_reply(driver *d, int i, const char *text, size_t len) {
  if (d->failed) return;
  if (i < 0 || i >= d->n) {
    fail(d, "%s: reply for an unknown conversation %d", d->name, i);
    return;
  }
  turn_conv *c = &d->tc[i];
  char buf[96];
  if (len >= sizeof buf) len = sizeof buf - 1;
  memcpy(buf, text, len);
  buf[len] = 0;
  int ci = -1, used = 0;
  unsigned long long k = 0;
  if (sscanf(buf, "echo: c%d-%llu%n", &ci, &k, &used) != 2 || buf[used] != 0 || ci != i) {
    fail(d, "%s: conversation %d: unexpected reply \"%s\"", d->name, i, buf);
    return;
  }
  if (k != c->recv || c->recv >= c->sent) {
    fail(d, "%s: conversation %d: reply to turn %llu, expected turn %" PRIu64
         " (%" PRIu64 " sent): lost, doubled or out of order", d->name, i, k, c->recv, c->sent);
    return;
  }
  uint64_t now = bench_now_ns();
  uint64_t t = c->t[c->recv % RING];
  c->recv++;
  if (d->ph == PH_CLOSED) d->completed++;
  if (t >= d->lat_from && t < d->lat_until && d->n_lat < LAT_MAX) {
    double ms = (double)(now - t) / 1e6;
    d->lat[d->n_lat++] = ms;
    /* BENCH_TURNS_TRACE: slow turns with their time in the phase, to tell
     * periodic stalls from queueing. */
    if (g_trace && ms > 20)
      fprintf(stderr, "trace: %s conv %d turn %" PRIu64 " sent at +%.3f s: %.1f ms\n", d->name,
              i, c->recv - 1, (double)(t - d->ph_t0) / 1e9, ms);
  }
  if (d->ph == PH_WARM || d->ph == PH_CLOSED) turn_send(d, i, now);
}

static bool all_answered(driver *d, uint64_t at_least) {
  for (int i = 0; i < d->n; i++)
    if (d->tc[i].recv != d->tc[i].sent || d->tc[i].recv < at_least) return false;
  return true;
}

static bool some_missing_first(driver *d) {
  for (int i = 0; i < d->n; i++)
    if (d->tc[i].recv < 1) return true;
  return false;
}

static void start_open(driver *d, uint64_t now) {
  d->ph = PH_OPEN;
  d->rate = d->max_tps * d->open_loads[d->open_i];
  if (d->rate < 1) d->rate = 1;
  d->ph_t0 = now;
  d->ph_end = now + (uint64_t)(S.open_s * 1e9);
  d->issued = 0;
  for (int k = 0; k < CPU_N; k++) d->cpu0[k] = role_cpu_s(d, k);
  d->n_lat = 0;
  d->lat_from = now + (uint64_t)(S.open_warm_s * 1e9);
  d->lat_until = d->ph_end;
}

/* Called at least every millisecond by the side's loop; returns true when
 * the plan is done (or failed). */
static bool driver_tick(driver *d) {
  uint64_t now = bench_now_ns();
  switch (d->ph) {
  case PH_CONNECT:
    if (d->ready(d)) {
      d->ph = PH_WARM;
      d->ph_t0 = now;
      d->ph_end = now + (uint64_t)(S.warm_s * 1e9);
      for (int i = 0; i < d->n && !d->failed; i++) turn_send(d, i, now);
    } else if (now - d->ph_t0 > CONNECT_TIMEOUT_NS) {
      fail(d, "%s: customers or bot not ready after %llu s", d->name,
           (unsigned long long)(CONNECT_TIMEOUT_NS / 1000000000ull));
    }
    break;
  case PH_WARM:
    if (now >= d->ph_end && !some_missing_first(d)) {
      d->ph = PH_CLOSED;
      d->ph_t0 = now;
      d->ph_end = now + (uint64_t)(S.closed_s * 1e9);
      d->completed = 0;
      for (int k = 0; k < CPU_N; k++) d->cpu0[k] = role_cpu_s(d, k);
    } else if (now - d->ph_t0 > CONNECT_TIMEOUT_NS) {
      fail(d, "%s: some conversations never answered during the warm-up", d->name);
    }
    break;
  case PH_CLOSED:
    if (now >= d->ph_end) {
      d->max_tps = (double)d->completed / ((double)(now - d->ph_t0) / 1e9);
      for (int k = 0; k < CPU_N; k++)
        d->cpu_per_turn_us[k] = d->completed ? (role_cpu_s(d, k) - d->cpu0[k]) * 1e6 /
                                                   (double)d->completed
                                             : 0;
      d->ph = PH_DRAIN;
      d->drain_deadline = now + DRAIN_TIMEOUT_NS;
      d->open_i = -1;
    }
    break;
  case PH_OPEN: {
    double el = (double)(now - d->ph_t0) / 1e9;
    uint64_t due = (uint64_t)(el * d->rate);
    while (d->issued < due && !d->failed) {
      uint64_t sched = d->ph_t0 + (uint64_t)((double)d->issued * 1e9 / d->rate);
      if (sched >= d->ph_end) break;
      turn_send(d, (int)(d->issued % (uint64_t)d->n), sched);
      d->issued++;
    }
    if (now >= d->ph_end) {
      for (int k = 0; k < CPU_N; k++)
        d->open_cpu_us[d->open_i][k] =
            d->issued ? (role_cpu_s(d, k) - d->cpu0[k]) * 1e6 / (double)d->issued : 0;
      d->ph = PH_DRAIN;
      d->drain_deadline = now + DRAIN_TIMEOUT_NS;
    }
    break;
  }
  case PH_DRAIN:
    if (all_answered(d, 1)) {
      if (d->open_i >= 0) {
        int j = d->open_i;
        d->lat_n[j] = d->n_lat;
        double span = (double)(d->lat_until - d->lat_from) / 1e9;
        d->achieved[j] = span > 0 ? (double)d->n_lat / span : 0;
        d->p50[j] = bench_percentile(d->lat, d->n_lat, 50);
        d->p90[j] = bench_percentile(d->lat, d->n_lat, 90);
        d->p99[j] = bench_percentile(d->lat, d->n_lat, 99);
        d->lat_from = d->lat_until = 0;
        d->n_lat = 0;
      }
      if (d->open_i + 1 < d->n_open) {
        d->open_i++;
        start_open(d, now);
      } else {
        d->ph = PH_DONE;
      }
    } else if (now > d->drain_deadline) {
      uint64_t missing = 0;
      int first = -1;
      for (int i = 0; i < d->n; i++) {
        missing += d->tc[i].sent - d->tc[i].recv;
        if (first < 0 && d->tc[i].sent != d->tc[i].recv) first = i;
      }
      fail(d, "%s: %" PRIu64 " replies missing 30 s after the last send (first in "
           "conversation %d)", d->name, missing, first);
    }
    break;
  case PH_DONE: break;
  }
  return d->ph == PH_DONE;
}

static int driver_init(driver *d, const char *name, int n, int n_open) {
  memset(d, 0, sizeof *d);
  d->name = name;
  d->n = n;
  d->tc = calloc((size_t)n, sizeof *d->tc);
  d->lat = malloc(LAT_MAX * sizeof *d->lat);
  d->n_open = n_open;
  d->open_loads[0] = 0.5;
  d->open_loads[1] = 0.9;
  d->ph = PH_CONNECT;
  d->ph_t0 = bench_now_ns();
  return d->tc && d->lat ? 0 : -1;
}

static void driver_free(driver *d) {
  free(d->tc);
  free(d->lat);
}

/* -------------------------------------------------------------- Parley */

typedef struct pcust {
  int idx;
  char principal[32], token[72], conv[32];
  parley_client *c;
  bool ready, closed;
  struct psides *ps;
  /* Send times of the messages not ACKed yet, oldest first: one
   * conversation per client, so its ACKs come in send order. */
  uint64_t n_sent, n_acked;
  uint64_t ack_t[RING];
} pcust;

typedef struct psides {
  uv_loop_t loop;
  uv_timer_t tick;
  pcust *cs;
  int n_ready, n_open_clients;
  driver *d;
  tproc *gw[MAX_NODES], *bot[MAX_NODES];
  int n_nodes, n_bots;
  uint64_t acked, send_failures;
  bool stopping;
  /* ACK round trips (send call to ACK received, microseconds) of the sends
   * in the first open-loop phase's measured span. */
  double *ack_lat;
  size_t n_ack_lat;
} psides;

static int p_send(driver *d, int i, uint64_t k) {
  psides *ps = d->impl;
  pcust *c = &ps->cs[i];
  char text[64];
  snprintf(text, sizeof text, "c%d-%" PRIu64, i, k);
  parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = text};
  c->ack_t[c->n_sent++ % RING] = bench_now_ns();
  int rc = parley_client_send(c->c, c->conv, &ct, NULL, NULL, 0, NULL);
  if (rc) snprintf(d->why, sizeof d->why, "%s", parley_strerror(rc));
  return rc ? -1 : 0;
}

static bool p_ready(driver *d) {
  psides *ps = d->impl;
  return ps->n_ready == d->n;
}

static void p_on_event(parley_client *pc, const parley_event *ev, void *ud) {
  (void)pc;
  pcust *c = ud;
  if (ev->kind != PARLEY_EVENT_MESSAGE || !ev->sender || strcmp(ev->sender, c->principal) == 0)
    return;
  driver *d = c->ps->d;
  if (strcmp(ev->sender, BOT_NAME) != 0) {
    fail(d, "parley: conversation %d: message from unexpected sender %s", c->idx, ev->sender);
    return;
  }
  const char *t = ev->content.kind == PARLEY_CONTENT_TEXT ? ev->content.text : ev->content.fallback;
  if (!t) t = "";
  turn_reply(d, c->idx, t, strlen(t));
}

static void p_on_send_result(parley_client *pc, const parley_send_result *r, void *sud,
                             void *ud) {
  (void)pc;
  (void)sud;
  pcust *c = ud;
  if (r->status == 0) {
    c->ps->acked++;
    driver *d = c->ps->d;
    if (c->n_acked < c->n_sent) {
      uint64_t t = c->ack_t[c->n_acked++ % RING];
      if (d->open_i == 0 && (d->ph == PH_OPEN || d->ph == PH_DRAIN) && t >= d->lat_from &&
          t < d->lat_until && c->ps->n_ack_lat < LAT_MAX)
        c->ps->ack_lat[c->ps->n_ack_lat++] = (double)(bench_now_ns() - t) / 1e3;
    }
  } else {
    c->ps->send_failures++;
    fail(c->ps->d, "parley: conversation %d: a send failed: %s%s%s", c->idx,
         parley_strerror(r->status), r->message ? ": " : "", r->message ? r->message : "");
  }
}

static void p_on_state(parley_client *pc, parley_conn_state st, int status, void *ud) {
  (void)pc;
  pcust *c = ud;
  if (st == PARLEY_CONN_READY && !c->ready) {
    c->ready = true;
    c->ps->n_ready++;
  }
  if (st == PARLEY_CONN_BACKOFF && !c->ps->stopping)
    fail(c->ps->d, "parley: customer %d lost its connection: %s", c->idx,
         parley_strerror(status));
  if (st == PARLEY_CONN_CLOSED && !c->closed) {
    c->closed = true;
    c->ps->n_open_clients--;
  }
}

static void p_on_error(parley_client *pc, int status, const char *msg, void *ud) {
  (void)pc;
  pcust *c = ud;
  fail(c->ps->d, "parley: customer %d: gateway error %s%s%s", c->idx, parley_strerror(status),
       msg ? ": " : "", msg ? msg : "");
}

static void p_tick(uv_timer_t *t) {
  psides *ps = t->data;
  if (driver_tick(ps->d) && !ps->stopping) {
    ps->stopping = true;
    uv_timer_stop(&ps->tick);
    uv_close((uv_handle_t *)&ps->tick, NULL);
    for (int i = 0; i < ps->d->n; i++) parley_client_stop(ps->cs[i].c, 500);
  }
  static unsigned every;
  if (++every % 256 == 0 && !ps->stopping) {
    for (int k = 0; k < ps->n_nodes; k++) drain_out(ps->gw[k]);
    for (int k = 0; k < ps->n_bots; k++) drain_out(ps->bot[k]);
    /* A child that died fails the run now rather than at the drain timeout. */
    for (int k = 0; k < ps->n_nodes; k++)
      if (tproc_wait(ps->gw[k], 0) == 0)
        fail(ps->d, "parley: gateway node %d exited during the run", k + 1);
    for (int k = 0; k < ps->n_bots; k++)
      if (tproc_wait(ps->bot[k], 0) == 0) fail(ps->d, "parley: the bot exited during the run");
  }
}

static void mint_token(const char *principal, char out[65]) {
  uint8_t h[32];
  crypto_generichash(h, sizeof h, (const uint8_t *)principal, strlen(principal),
                     (const uint8_t *)CUSTOMER_SECRET, strlen(CUSTOMER_SECRET));
  sodium_bin2hex(out, 65, h, sizeof h);
}

typedef enum bot_kind { BOT_LUA, BOT_C } bot_kind;

typedef struct presult {
  double max_tps;
  double p50[2], p90[2], p99[2], achieved[2];
  size_t lat_n[2];
  uint64_t turns;
  double cpu_us[CPU_N]; /* CPU per turn in the closed-loop window */
  double open_cpu_us[2][CPU_N]; /* ... in each open-loop phase */
  double ack_p50_us, ack_p99_us; /* ACK round trip in the first open-loop phase */
  size_t ack_n;
} presult;

/* utime + stime of a child, in seconds, from /proc/<pid>/stat. */
static double proc_cpu_s(pid_t pid) {
  char path[64], buf[1024];
  if (pid) snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  else snprintf(path, sizeof path, "/proc/self/stat");
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  if (!p) return 0;
  unsigned long ut = 0, st = 0;
  /* Fields after the name: state(3) ... utime(14) stime(15). */
  if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
    return 0;
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* The CPU time of a PostgreSQL server in seconds: the postmaster's own and
 * that of its children it has reaped (cutime, cstime), plus the live
 * children's (backends, WAL writer, checkpointer...), found by their parent
 * pid in /proc. The gateways' connections are long-lived backends, so a
 * window sees the same children at its start and its end. */
static double pg_tree_cpu_s(pid_t postmaster) {
  double hz = (double)sysconf(_SC_CLK_TCK), total = 0;
  char path[300], buf[1024];
  DIR *dir = opendir("/proc");
  if (!dir) return 0;
  struct dirent *e;
  while ((e = readdir(dir)) != NULL) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue; /* exited meanwhile */
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) continue;
    int ppid = 0;
    unsigned long ut = 0, st = 0;
    long cut = 0, cst = 0;
    /* state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17). */
    if (sscanf(p + 2, "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %ld %ld", &ppid, &ut,
               &st, &cut, &cst) != 5)
      continue;
    pid_t pid = (pid_t)atoi(e->d_name);
    if (pid == postmaster) total += (double)(ut + st) + (double)(cut + cst);
    else if (ppid == postmaster) total += (double)(ut + st);
  }
  closedir(dir);
  return total / hz;
}

static double role_cpu_s(const driver *d, int k) {
  if (k == CPU_SERVER && d->n_nodes > 0) {
    double t = 0;
    for (int i = 0; i < d->n_nodes; i++) t += proc_cpu_s(d->node_pid[i]);
    return t;
  }
  if (k == CPU_BOT && d->n_bots > 0) {
    double t = 0;
    for (int i = 0; i < d->n_bots; i++) t += proc_cpu_s(d->bot_pid[i]);
    return t;
  }
  if (k == CPU_DB) return d->cpu_pid[CPU_DB] > 0 ? pg_tree_cpu_s(d->cpu_pid[CPU_DB]) : 0;
  return proc_cpu_s(d->cpu_pid[k]);
}

/* PARLEY_BENCH_BUSY_POLL_US sets the gateway's busy_poll_us, to measure
 * that trade (docs/gateway.md, "Busy polling"); unset, the key is left
 * out (a gateway older than the key runs the same configuration). */
static void busy_poll(char *out, size_t n) {
  const char *v = getenv("PARLEY_BENCH_BUSY_POLL_US");
  snprintf(out, n, "%s%.16s%s", v && *v ? "busy_poll_us: " : "", v && *v ? v : "",
           v && *v ? "\n" : "");
}

/* BENCH_TURNS_WRAP_GW and BENCH_TURNS_WRAP_BOT put a command in front of
 * the gateway or the bot, words split at spaces, for profiling one process
 * in the real benchmark (the first word a full path), for example
 * BENCH_TURNS_WRAP_BOT="/usr/bin/valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.bot"
 * (CPU per turn then counts the profiler). The result is never freed: the
 * process runs once. */
static char **wrap_argv(const char *env, char **argv) {
  const char *w = getenv(env);
  if (!w || !*w) return argv;
  size_t n = 0, words = 0;
  while (argv[n]) n++;
  char *copy = strdup(w);
  if (!copy) die("out of memory");
  for (char *p = copy; *p; p++)
    if (*p != ' ' && (p == copy || p[-1] == ' ')) words++;
  char **out = calloc(words + n + 1, sizeof *out);
  if (!out) die("out of memory");
  size_t k = 0;
  for (char *save = NULL, *t = strtok_r(copy, " ", &save); t; t = strtok_r(NULL, " ", &save))
    out[k++] = t;
  for (size_t i = 0; i < n; i++) out[k++] = argv[i];
  return out;
}

/* One gateway (nodes 1, storage from PARLEY_TEST_PG_URL or SQLite) or
 * several nodes over the PostgreSQL database pg_url, customer i on node
 * i % nodes, the bot on node 1. db_pid: the postmaster, whose tree's CPU
 * is accounted (0: none). */
static int run_parley_on(bot_kind kind, const char *durability, int n_open, const char *pg_url,
                         int nodes, pid_t db_pid, presult *out) {
  char dir[256], data[320], cfg[320], log[320];
  if (nodes < 1 || nodes > MAX_NODES) die("nodes must be 1 to %d", MAX_NODES);
  if (tmpdir_make(dir, sizeof dir, "bench-turns") != 0) die("cannot make a temporary directory");
  snprintf(g_dir, sizeof g_dir, "%s", dir);
  snprintf(log, sizeof log, "%s/gateway1.log", dir);
  /* The bot holds up to two unacknowledged events per conversation (the
   * customer's message and its own reply) until its commit, so its window
   * must cover all conversations; mosquitto gets no in-flight cap either. */
  /* PARLEY_TEST_PG_URL (tests/pg/with_pg) puts the gateway's log on
   * PostgreSQL: `with_pg bench_turns --only c` measures that backend. */
  char storage[512] = "";
  if (!pg_url) pg_url = getenv("PARLEY_TEST_PG_URL");
  if (pg_url && *pg_url)
    snprintf(storage, sizeof storage, "storage:\n  kind: postgres\n  url: \"%s\"\n", pg_url);
  static tproc gw[MAX_NODES], bots[MAX_NODES];
  tproc *bot = &bots[0];
  int n_bots = g_bot_per_node ? nodes : 1;
  char urls[MAX_NODES][64];
  for (int k = 0; k < nodes; k++) {
    /* Each node has its own data directory (its SQLite log, or nothing
     * when the log is on PostgreSQL) and its own port. */
    snprintf(data, sizeof data, "%s/data%d", dir, k + 1);
    snprintf(cfg, sizeof cfg, "%s/gateway%d.yaml", dir, k + 1);
    mkdir(data, 0700);
    char yaml[1536], bp[64];
    busy_poll(bp, sizeof bp);
    snprintf(yaml, sizeof yaml,
             "%s"
             "listen: 127.0.0.1\n"
             "port: 0\n"
             "data_dir: %s\n"
             "durability: %s\n"
             "group_commit: true\n"
             "%s"
             "bot: " BOT_NAME "\n"
             "customers:\n"
             "  secret: \"" CUSTOMER_SECRET "\"\n"
             "limits:\n"
             "  window: %d\n"
             "principals:\n"
             "  - {name: " BOT_NAME ", role: bot, token: " BOT_TOKEN "}\n",
             storage, data, durability, bp, S.convs * 4 < 256 ? 256 : S.convs * 4);
    if (write_file(cfg, yaml) != 0) die("cannot write %s", cfg);
    char nlog[320];
    snprintf(nlog, sizeof nlog, "%s/gateway%d.log", dir, k + 1);
    char *gargv0[] = {(char *)PARLEY_BIN, "gateway", "--config", cfg, NULL};
    char **gargv = wrap_argv("BENCH_TURNS_WRAP_GW", gargv0);
    if (tproc_start(&gw[k], gargv, nlog) != 0) die("cannot start %s", PARLEY_BIN);
    track_proc(&gw[k]);
    char line[512];
    if (!tproc_wait_for(&gw[k], "listening on", line, sizeof line, 30000)) {
      print_tail("gateway log", nlog);
      die("gateway node %d did not start", k + 1);
    }
    const char *colon = strrchr(line, ':');
    int port = colon ? atoi(colon + 1) : 0;
    if (port <= 0) die("cannot read the gateway's port from \"%s\"", line);
    snprintf(urls[k], sizeof urls[k], "ws://127.0.0.1:%d/", port);
  }
  char botlog[320], botdir[512];
  snprintf(botlog, sizeof botlog, "%s/bot.log", dir);
  /* BENCH_TURNS_BOTDIR replaces the Lua bot (to check that a wrong bot
   * fails the run). */
  const char *bd = getenv("BENCH_TURNS_BOTDIR");
  if (bd && *bd) snprintf(botdir, sizeof botdir, "%s", bd);
  else snprintf(botdir, sizeof botdir, "%s/bench/turns/echo-bot", PARLEY_SOURCE_DIR);
  for (int b = 0; b < n_bots; b++) {
    /* One bot on node 1, or (g_bot_per_node) one on every node, a fleet
     * of the same bot principal. */
    char *burl = urls[b], blog[320];
    if (b == 0) snprintf(blog, sizeof blog, "%s", botlog);
    else snprintf(blog, sizeof blog, "%s/bot%d.log", dir, b + 1);
    char *largv[] = {(char *)PARLEY_BIN, "run", botdir, "--url", burl, "--token", BOT_TOKEN,
                     "--log-level", "warn", "--drain", "1s", NULL};
    char *cargv[] = {(char *)BENCH_CBOT, "--url", burl, "--token", BOT_TOKEN, "--principal",
                     BOT_NAME, NULL};
    char **bargv = wrap_argv("BENCH_TURNS_WRAP_BOT", kind == BOT_LUA ? largv : cargv);
    if (tproc_start(&bots[b], bargv, blog) != 0) die("cannot start the bot");
    track_proc(&bots[b]);
  }

  static driver d;
  static psides ps;
  memset(&ps, 0, sizeof ps);
  if (driver_init(&d, kind == BOT_LUA ? "parley-lua" : "parley-c", S.convs, n_open) != 0)
    die("out of memory");
  d.send = p_send;
  d.ready = p_ready;
  d.cpu_pid[CPU_SERVER] = gw[0].pid;
  d.cpu_pid[CPU_BOT] = bot->pid;
  d.n_bots = n_bots;
  for (int b = 0; b < n_bots; b++) {
    d.bot_pid[b] = bots[b].pid;
    ps.bot[b] = &bots[b];
  }
  ps.n_bots = n_bots;
  d.cpu_pid[CPU_DB] = db_pid;
  d.n_nodes = nodes;
  for (int k = 0; k < nodes; k++) {
    d.node_pid[k] = gw[k].pid;
    ps.gw[k] = &gw[k];
  }
  ps.n_nodes = nodes;
  d.impl = &ps;
  ps.d = &d;
  ps.ack_lat = malloc(LAT_MAX * sizeof *ps.ack_lat);
  if (!ps.ack_lat) die("out of memory");
  if (uv_loop_init(&ps.loop) != 0) die("uv_loop_init failed");
  ps.cs = calloc((size_t)S.convs, sizeof *ps.cs);
  if (!ps.cs) die("out of memory");
  for (int i = 0; i < S.convs; i++) {
    pcust *c = &ps.cs[i];
    c->idx = i;
    c->ps = &ps;
    snprintf(c->principal, sizeof c->principal, "cust%d", i);
    snprintf(c->conv, sizeof c->conv, "conv-%d", i);
    mint_token(c->principal, c->token);
    parley_client_options o = PARLEY_CLIENT_OPTIONS_INIT;
    o.url = urls[i % nodes];
    o.principal = c->principal;
    o.token = c->token;
    o.role = PARLEY_ROLE_CUSTOMER;
    o.locale = "en";
    o.loop = &ps.loop;
    o.cb.on_event = p_on_event;
    o.cb.on_send_result = p_on_send_result;
    o.cb.on_state = p_on_state;
    o.cb.on_error = p_on_error;
    o.user_data = c;
    /* A lost turn must fail the run, not be hidden by a resend. */
    o.tuning.ack_timeout_ms = 10000;
    o.tuning.reconnect_max_ms = 1000;
    int rc = parley_client_new(&o, &c->c);
    if (rc == 0) rc = parley_client_start(c->c);
    if (rc) die("customer %d: cannot start a client: %s", i, parley_strerror(rc));
    ps.n_open_clients++;
  }
  uv_timer_init(&ps.loop, &ps.tick);
  ps.tick.data = &ps;
  uv_timer_start(&ps.tick, p_tick, 1, 1);
  uint64_t t0 = bench_now_ns();
  uv_run(&ps.loop, UV_RUN_DEFAULT);
  double wall = (double)(bench_now_ns() - t0) / 1e9;

  for (int i = 0; i < S.convs; i++) parley_client_free(ps.cs[i].c);
  uv_run(&ps.loop, UV_RUN_NOWAIT);
  if (uv_loop_close(&ps.loop) != 0) uv_run(&ps.loop, UV_RUN_DEFAULT);
  uv_loop_close(&ps.loop);
  free(ps.cs);

  /* Stop the bot and the gateway cleanly; a bot that exits with an error
   * (a failed reply or commit, for the C bot) fails the run. */
  for (int b = 0; b < n_bots; b++) tproc_kill(&bots[b], SIGTERM);
  for (int b = 0; b < n_bots; b++) {
    tproc *bp = &bots[b];
    if (tproc_wait(bp, 10000) != 0 && !d.failed) fail(&d, "the bot did not stop on SIGTERM");
    if (kind == BOT_C && bp->reaped && (!WIFEXITED(bp->status) || WEXITSTATUS(bp->status) != 0) &&
        !d.failed) {
      if (!WIFEXITED(bp->status))
        fail(&d, "C bot %d died of signal %d", b + 1, WTERMSIG(bp->status));
      else
        fail(&d, "C bot %d reported failures", b + 1);
    }
    tproc_stop(bp);
    untrack_proc(bp);
  }
  for (int k = 0; k < nodes; k++) tproc_kill(&gw[k], SIGTERM);
  for (int k = 0; k < nodes; k++) {
    if (tproc_wait(&gw[k], 15000) != 0 && !d.failed)
      fail(&d, "gateway node %d did not stop on SIGTERM", k + 1);
    tproc_stop(&gw[k]);
    untrack_proc(&gw[k]);
  }

  int rc = 0;
  if (d.failed) {
    fprintf(stderr, "bench_turns: %s\n", d.why);
    for (int k = 0; k < nodes; k++) {
      snprintf(log, sizeof log, "%s/gateway%d.log", dir, k + 1);
      print_tail("gateway log", log);
    }
    for (int b = 0; b < n_bots; b++) {
      if (b == 0) snprintf(log, sizeof log, "%s", botlog);
      else snprintf(log, sizeof log, "%s/bot%d.log", dir, b + 1);
      print_tail("bot log", log);
    }
    rc = -1;
  } else {
    out->max_tps = d.max_tps;
    for (int j = 0; j < n_open && j < 2; j++) {
      out->p50[j] = d.p50[j];
      out->p90[j] = d.p90[j];
      out->p99[j] = d.p99[j];
      out->achieved[j] = d.achieved[j];
      out->lat_n[j] = d.lat_n[j];
      memcpy(out->open_cpu_us[j], d.open_cpu_us[j], sizeof out->open_cpu_us[j]);
    }
    out->turns = d.total_turns;
    memcpy(out->cpu_us, d.cpu_per_turn_us, sizeof out->cpu_us);
    out->ack_n = ps.n_ack_lat;
    out->ack_p50_us = bench_percentile(ps.ack_lat, ps.n_ack_lat, 50);
    out->ack_p99_us = bench_percentile(ps.ack_lat, ps.n_ack_lat, 99);
    printf("  %-28s %8.0f turns/s max, %" PRIu64 " turns verified in %.1f s\n", d.name,
           d.max_tps, d.total_turns, wall);
  }
  free(ps.ack_lat);
  if (!getenv("BENCH_TURNS_KEEP")) tmpdir_remove(dir);
  else fprintf(stderr, "bench_turns: kept %s\n", dir);
  g_dir[0] = 0;
  driver_free(&d);
  return rc;
}

static int run_parley(bot_kind kind, const char *durability, int n_open, presult *out) {
  return run_parley_on(kind, durability, n_open, NULL, 1, 0, out);
}

/* ----------------------------------------------------------- mosquitto */

typedef struct mside {
  struct mosquitto *m;
  driver *d;
  bool connected, subscribed, bot_ready;
  int bot_fd; /* the bot child's readiness pipe */
  uint64_t acked;
} mside;

static int m_send(driver *d, int i, uint64_t k) {
  mside *ms = d->impl;
  char topic[48], text[64];
  snprintf(topic, sizeof topic, "conv/%d/in", i);
  int n = snprintf(text, sizeof text, "c%d-%" PRIu64, i, k);
  int rc = mosquitto_publish(ms->m, NULL, topic, n, text, 1, false);
  if (rc != MOSQ_ERR_SUCCESS) snprintf(d->why, sizeof d->why, "%s", mosquitto_strerror(rc));
  return rc == MOSQ_ERR_SUCCESS ? 0 : -1;
}

static bool m_ready(driver *d) {
  mside *ms = d->impl;
  if (!ms->bot_ready && ms->bot_fd >= 0) {
    char b[16];
    ssize_t r = read(ms->bot_fd, b, sizeof b);
    if (r > 0) ms->bot_ready = true;
  }
  return ms->subscribed && ms->bot_ready;
}

static void m_on_connect(struct mosquitto *m, void *ud, int rc) {
  mside *ms = ud;
  if (rc != 0) {
    fail(ms->d, "mosquitto: customers' connection refused: %s", mosquitto_connack_string(rc));
    return;
  }
  ms->connected = true;
  mosquitto_subscribe(m, NULL, "conv/+/out", 1);
}

static void m_on_subscribe(struct mosquitto *m, void *ud, int mid, int n, const int *qos) {
  (void)m;
  (void)mid;
  mside *ms = ud;
  if (n != 1 || qos[0] != 1) {
    fail(ms->d, "mosquitto: subscription not granted at QoS 1");
    return;
  }
  ms->subscribed = true;
}

static void m_on_publish(struct mosquitto *m, void *ud, int mid) {
  (void)m;
  (void)mid;
  mside *ms = ud;
  ms->acked++;
}

static void m_on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg) {
  (void)m;
  mside *ms = ud;
  int i = -1, used = 0;
  if (sscanf(msg->topic, "conv/%d/out%n", &i, &used) != 1 || msg->topic[used] != 0) {
    fail(ms->d, "mosquitto: message on an unexpected topic %s", msg->topic);
    return;
  }
  if (msg->qos != 1) {
    fail(ms->d, "mosquitto: reply delivered at QoS %d", msg->qos);
    return;
  }
  turn_reply(ms->d, i, msg->payload, (size_t)msg->payloadlen);
}

/* The bot: a child process with its own client, republishing each message
 * of conv/<i>/in to conv/<i>/out with the prefix "echo: ". */
static void mbot_on_connect(struct mosquitto *m, void *ud, int rc) {
  (void)ud;
  if (rc != 0) _exit(3);
  mosquitto_subscribe(m, NULL, "conv/+/in", 1);
}

static void mbot_on_subscribe(struct mosquitto *m, void *ud, int mid, int n, const int *qos) {
  (void)m;
  (void)mid;
  int fd = *(int *)ud;
  if (n != 1 || qos[0] != 1) _exit(4);
  if (write(fd, "r", 1) != 1) _exit(5);
}

static void mbot_on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg) {
  (void)ud;
  int i = -1;
  if (sscanf(msg->topic, "conv/%d/in", &i) != 1) return;
  char topic[48], text[128];
  snprintf(topic, sizeof topic, "conv/%d/out", i);
  int n = snprintf(text, sizeof text, "echo: %.*s", msg->payloadlen > 100 ? 100 : msg->payloadlen,
                   (const char *)msg->payload);
  if (mosquitto_publish(m, NULL, topic, n, text, 1, false) != MOSQ_ERR_SUCCESS) _exit(6);
}

static struct mosquitto *m_client(const char *id, void *ud, int port) {
  struct mosquitto *m = mosquitto_new(id, true, ud);
  if (!m) return NULL;
  /* No in-flight cap (libmosquitto's default is 20), as the broker. */
  mosquitto_max_inflight_messages_set(m, 0);
  mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
  for (int attempt = 0; attempt < 100; attempt++) {
    if (mosquitto_connect(m, "127.0.0.1", port, 60) == MOSQ_ERR_SUCCESS) return m;
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  mosquitto_destroy(m);
  return NULL;
}

static pid_t start_mbot(int port, int *ready_fd) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    close(fds[0]);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    mosquitto_lib_init();
    int fd = fds[1];
    struct mosquitto *m = m_client("bench-turns-bot", &fd, port);
    if (!m) _exit(2);
    mosquitto_connect_callback_set(m, mbot_on_connect);
    mosquitto_subscribe_callback_set(m, mbot_on_subscribe);
    mosquitto_message_callback_set(m, mbot_on_message);
    mosquitto_loop_forever(m, 1000, 1);
    _exit(0);
  }
  close(fds[1]);
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  *ready_fd = fds[0];
  return pid;
}

static int run_mosquitto(presult *out) {
  char dir[256], conf[320], log[320], text[512];
  if (tmpdir_make(dir, sizeof dir, "bench-turns-mq") != 0) die("cannot make a temporary directory");
  snprintf(g_dir, sizeof g_dir, "%s", dir);
  int port = free_port();
  if (!port) die("no free port");
  snprintf(conf, sizeof conf, "%s/mosquitto.conf", dir);
  snprintf(text, sizeof text,
           "listener %d 127.0.0.1\n"
           "allow_anonymous true\n"
           "persistence false\n"
           "max_inflight_messages 0\n"
           "max_queued_messages 1000000\n"
           "set_tcp_nodelay true\n"
           "log_dest stderr\n"
           "log_type error\n"
           "log_type warning\n",
           port);
  if (write_file(conf, text) != 0) die("cannot write %s", conf);
  snprintf(log, sizeof log, "%s/mosquitto.log", dir);
  static tproc broker;
  char *argv[] = {"/usr/sbin/mosquitto", "-c", conf, NULL};
  if (tproc_start(&broker, argv, log) != 0) die("cannot start mosquitto");
  track_proc(&broker);

  static driver d;
  static mside ms;
  memset(&ms, 0, sizeof ms);
  ms.bot_fd = -1;
  if (driver_init(&d, "mosquitto", S.convs, 2) != 0) die("out of memory");
  d.send = m_send;
  d.ready = m_ready;
  d.cpu_pid[CPU_SERVER] = broker.pid;
  d.impl = &ms;
  ms.d = &d;
  mosquitto_lib_init();
  ms.m = m_client("bench-turns-customers", &ms, port);
  if (!ms.m) die("cannot connect to mosquitto on port %d (log: %s)", port, log);
  pid_t bot = start_mbot(port, &ms.bot_fd);
  if (bot < 0) die("cannot start the mosquitto bot");
  g_child_pids[0] = bot;
  d.cpu_pid[CPU_BOT] = bot;
  mosquitto_connect_callback_set(ms.m, m_on_connect);
  mosquitto_subscribe_callback_set(ms.m, m_on_subscribe);
  mosquitto_message_callback_set(ms.m, m_on_message);
  mosquitto_publish_callback_set(ms.m, m_on_publish);
  d.ph_t0 = bench_now_ns();
  uint64_t t0 = bench_now_ns();
  while (!driver_tick(&d)) {
    int rc = mosquitto_loop(ms.m, 1, 1);
    if (rc != MOSQ_ERR_SUCCESS) fail(&d, "mosquitto: customers' loop: %s", mosquitto_strerror(rc));
    int st;
    if (waitpid(bot, &st, WNOHANG) == bot) {
      g_child_pids[0] = 0;
      fail(&d, "mosquitto: the bot process exited (status %d)", st);
    }
  }
  double wall = (double)(bench_now_ns() - t0) / 1e9;
  mosquitto_disconnect(ms.m);
  mosquitto_destroy(ms.m);
  mosquitto_lib_cleanup();
  if (g_child_pids[0] > 0) {
    kill(bot, SIGTERM);
    waitpid(bot, NULL, 0);
    g_child_pids[0] = 0;
  }
  close(ms.bot_fd);
  tproc_kill(&broker, SIGTERM);
  if (tproc_wait(&broker, 10000) != 0) tproc_stop(&broker);
  tproc_stop(&broker);
  untrack_proc(&broker);

  int rc = 0;
  if (d.failed) {
    fprintf(stderr, "bench_turns: %s\n", d.why);
    print_tail("mosquitto log", log);
    rc = -1;
  } else {
    out->max_tps = d.max_tps;
    for (int j = 0; j < 2; j++) {
      out->p50[j] = d.p50[j];
      out->p90[j] = d.p90[j];
      out->p99[j] = d.p99[j];
      out->achieved[j] = d.achieved[j];
      out->lat_n[j] = d.lat_n[j];
      memcpy(out->open_cpu_us[j], d.open_cpu_us[j], sizeof out->open_cpu_us[j]);
    }
    out->turns = d.total_turns;
    memcpy(out->cpu_us, d.cpu_per_turn_us, sizeof out->cpu_us);
    printf("  %-28s %8.0f turns/s max, %" PRIu64 " turns verified in %.1f s\n", "mosquitto",
           d.max_tps, d.total_turns, wall);
  }
  tmpdir_remove(dir);
  g_dir[0] = 0;
  driver_free(&d);
  return rc;
}

/* ---------------------------------------------------------------- main */

static void print_latency(const char *subject, const presult *r) {
  static const char *const loads[] = {"50%", "90%"};
  for (int j = 0; j < 2; j++)
    printf("  %-12s load=%-4s %8.0f turns/s offered  %7zu turns  p50 %7.2f ms  p90 %7.2f ms  "
           "p99 %7.2f ms  CPU us/turn: server %.1f bot %.1f customers %.1f\n",
           subject, loads[j], r->achieved[j], r->lat_n[j], r->p50[j], r->p90[j], r->p99[j],
           r->open_cpu_us[j][CPU_SERVER], r->open_cpu_us[j][CPU_BOT],
           r->open_cpu_us[j][CPU_SELF]);
}

/* bench/turns/pg.c includes this file for bench_pg, with its own main. */
#ifndef BENCH_PG
int main(int argc, char **argv) {
  bool tiny = bench_tiny(argc, argv), with_full = true;
  const char *only = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--no-full") == 0) with_full = false;
    else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) only = argv[++i];
    else if (strcmp(argv[i], "--tiny") != 0) {
      fprintf(stderr, "usage: bench_turns [--tiny] [--no-full] [--only c|lua|full|mosquitto]\n");
      return 2;
    }
  }
  if (tiny) S = (settings){.convs = 20, .warm_s = 0.3, .closed_s = 1.0, .open_s = 0.8,
                           .open_warm_s = 0.2};
  else S = (settings){.convs = 1000, .warm_s = 3, .closed_s = 10, .open_s = 8,
                      .open_warm_s = 1};
  /* BENCH_TURNS_CONVS overrides the number of conversations (profiling). */
  g_trace = getenv("BENCH_TURNS_TRACE") != NULL;
  const char *nc = getenv("BENCH_TURNS_CONVS");
  if (nc && atoi(nc) > 0 && atoi(nc) <= 100000) S.convs = atoi(nc);
  if (sodium_init() < 0) die("libsodium did not initialise");
  atexit(kill_children);
  signal(SIGINT, on_fatal_signal);
  signal(SIGTERM, on_fatal_signal);
  signal(SIGPIPE, SIG_IGN);

  /* The machine's load when the run started: the rates depend on it. */
  char loadavg[64] = "";
  FILE *lf = fopen("/proc/loadavg", "r");
  if (lf) {
    if (!fgets(loadavg, sizeof loadavg, lf)) loadavg[0] = 0;
    fclose(lf);
    loadavg[strcspn(loadavg, "\n")] = 0;
  }
  printf("bench_turns: %d conversations, closed loop %.0f s after warm-up, open loop %.0f s "
         "per load%s\n", S.convs, S.closed_s, S.open_s, tiny ? " (tiny)" : "");
  presult pc = {0}, pl = {0}, pf = {0}, mq = {0};
  /* --only runs one side (for profiling); the figures are then partial. */
#define WANT(x) (!only || strcmp(only, x) == 0)
  if (WANT("c") && run_parley(BOT_C, "normal", 0, &pc) != 0) return 1;
  if (WANT("lua") && run_parley(BOT_LUA, "normal", 2, &pl) != 0) return 1;
  if (with_full && WANT("full") && run_parley(BOT_LUA, "full", 0, &pf) != 0) return 1;
  if (WANT("mosquitto") && run_mosquitto(&mq) != 0) return 1;

  printf("\nclosed loop (one turn outstanding per conversation); CPU time per turn in the "
         "window:\n");
  printf("  %-30s %9s %12s %10s %12s\n", "subject", "turns/s", "server us", "bot us",
         "customers us");
  struct {
    const char *name;
    const presult *r;
    bool on;
  } rows[] = {{"parley (Lua bot)", &pl, true}, {"parley (C bot)", &pc, true},
              {"parley (Lua, durability full)", &pf, with_full}, {"mosquitto", &mq, true}};
  rows[0].on = WANT("lua");
  rows[1].on = WANT("c");
  rows[2].on = with_full && WANT("full");
  rows[3].on = WANT("mosquitto");
  for (size_t i = 0; i < sizeof rows / sizeof *rows; i++)
    if (rows[i].on)
      printf("  %-30s %9.0f %12.1f %10.1f %12.1f\n", rows[i].name, rows[i].r->max_tps,
             rows[i].r->cpu_us[CPU_SERVER], rows[i].r->cpu_us[CPU_BOT],
             rows[i].r->cpu_us[CPU_SELF]);
  printf("  Lua bot / C bot: %.2f   parley / mosquitto: %.2f\n",
         pc.max_tps > 0 ? pl.max_tps / pc.max_tps : 0, mq.max_tps > 0 ? pl.max_tps / mq.max_tps : 0);
  printf("\nopen loop, latency from the scheduled send to the reply received:\n");
  if (WANT("lua")) print_latency("parley", &pl);
  if (WANT("mosquitto")) print_latency("mosquitto", &mq);

  if (only) return 0; /* partial: no figures */
  bench_figure("turns", "turns_per_s", "parley", "", pl.max_tps, "turns/s");
  bench_figure("turns", "turns_per_s", "mosquitto", "", mq.max_tps, "turns/s");
  if (with_full)
    bench_figure("turns", "turns_per_s", "parley", "durability=full", pf.max_tps, "turns/s");
  static const char *const params[] = {"load=50%", "load=90%"};
  for (int j = 0; j < 2; j++) {
    bench_figure("turns", "p50_ms", "parley", params[j], pl.p50[j], "ms");
    bench_figure("turns", "p90_ms", "parley", params[j], pl.p90[j], "ms");
    bench_figure("turns", "p99_ms", "parley", params[j], pl.p99[j], "ms");
    bench_figure("turns", "p50_ms", "mosquitto", params[j], mq.p50[j], "ms");
    bench_figure("turns", "p90_ms", "mosquitto", params[j], mq.p90[j], "ms");
    bench_figure("turns", "p99_ms", "mosquitto", params[j], mq.p99[j], "ms");
  }
  bench_figure("lua_hook", "turns_per_s", "parley-lua", "", pl.max_tps, "turns/s");
  bench_figure("lua_hook", "turns_per_s", "parley-c", "", pc.max_tps, "turns/s");
  /* CPU per turn: on a shared machine the rate depends on what else runs,
   * the CPU each turn costs much less. */
  bench_figure("turns", "server_cpu_us_per_turn", "parley", "", pl.cpu_us[CPU_SERVER], "us");
  bench_figure("turns", "server_cpu_us_per_turn", "mosquitto", "", mq.cpu_us[CPU_SERVER], "us");
  bench_figure("turns", "bot_cpu_us_per_turn", "parley", "", pl.cpu_us[CPU_BOT], "us");
  bench_figure("turns", "bot_cpu_us_per_turn", "mosquitto", "", mq.cpu_us[CPU_BOT], "us");
  bench_figure("lua_hook", "bot_cpu_us_per_turn", "parley-lua", "", pl.cpu_us[CPU_BOT], "us");
  bench_figure("lua_hook", "bot_cpu_us_per_turn", "parley-c", "", pc.cpu_us[CPU_BOT], "us");

  int maj = 0, min = 0, rev = 0;
  mosquitto_lib_version(&maj, &min, &rev);
  bench_note("turns",
             "%d conversations, one customer client each (libparley %s) on one loop of the "
             "benchmark process; closed loop: one turn outstanding per conversation, %.0f s "
             "window after warm-up; open loop: %.0f s at 50%% and 90%% of the closed-loop "
             "maximum, round-robin over conversations, latency from the scheduled send to the "
             "reply received. Every reply checked: once, in order, per conversation.",
             S.convs, parley_version(), S.closed_s, S.open_s);
  bench_note("turns",
             "parley: `parley gateway` process, durability normal, group commit on, window %d; "
             "bot: the Lua echo bot under `parley run` (its own process): reply with a derived "
             "id, wait for its ACK, commit. durability=full: the same closed loop with "
             "synchronous=FULL.",
             S.convs * 4 < 256 ? 256 : S.convs * 4);
  bench_note("turns",
             "mosquitto %d.%d.%d broker (persistence false, no in-flight or queue cap, "
             "TCP_NODELAY), QoS 1 both ways; customers: one client publishing to conv/<i>/in, "
             "subscribed to conv/+/out; bot: one client in a child process subscribed to "
             "conv/+/in republishing to conv/<i>/out. Nothing is written to disk.",
             maj, min, rev);
  bench_note("turns",
             "%ld CPUs shared with other work; /proc/loadavg at the start: %s. Both sides "
             "run in the same invocation, one after the other. The CPU time per turn "
             "(server_cpu_us_per_turn, bot_cpu_us_per_turn) depends much less on that load "
             "than the rates do.",
             sysconf(_SC_NPROCESSORS_ONLN), loadavg[0] ? loadavg : "unknown");
  bench_note("lua_hook",
             "Closed-loop turns per second with the Lua echo bot (`parley run`) and with the "
             "same bot in C on the client API (bench_turns_cbot: derived reply id, wait for the "
             "ACK, batched commit, as the runtime), each against a fresh gateway (durability "
             "normal).");
  printf("\nverified: %" PRIu64 " parley (Lua) + %" PRIu64 " parley (C) + %" PRIu64
         " mosquitto turns, each answered once and in order\n",
         pl.turns, pc.turns, mq.turns);
  return 0;
}
#endif /* BENCH_PG */
