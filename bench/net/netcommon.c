/* See netcommon.h. */
#define _GNU_SOURCE
#include "netcommon.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include <parley/client.h>

#include "bench.h"

/* 200 bytes of ordinary text, the same on every side of a comparison. */
const char bn_payload[BN_PAYLOAD_LEN + 1] =
    "Hello, I ordered a pair of boots last Tuesday and the tracking page ha"
    "s not changed since Thursday. Could you check where the parcel is and "
    "tell me when it should arrive? Order number 48213, thanks!!!";

_Static_assert(sizeof bn_payload == BN_PAYLOAD_LEN + 1, "payload is 200 bytes");

#define BN_MAX_PROCS 16
#define BN_MAX_DIRS 16

static const char *bn_prog = "bench";
static tproc *bn_procs[BN_MAX_PROCS];
static char bn_dirs[BN_MAX_DIRS][256];

static void bn_cleanup(void) {
  for (int i = 0; i < BN_MAX_PROCS; i++)
    if (bn_procs[i]) {
      tproc_stop(bn_procs[i]);
      bn_procs[i] = NULL;
    }
  for (int i = 0; i < BN_MAX_DIRS; i++)
    if (bn_dirs[i][0]) {
      tmpdir_remove(bn_dirs[i]);
      bn_dirs[i][0] = 0;
    }
}

/* On SIGINT or SIGTERM the children are killed with the async-signal-safe
 * kill(); the temporary directories may then stay behind under /tmp. */
static void bn_on_signal(int sig) {
  for (int i = 0; i < BN_MAX_PROCS; i++)
    if (bn_procs[i] && bn_procs[i]->pid > 0 && !bn_procs[i]->reaped)
      kill(bn_procs[i]->pid, SIGKILL);
  signal(sig, SIG_DFL);
  raise(sig);
}

void bn_init(const char *prog) {
  bn_prog = prog;
  atexit(bn_cleanup);
  signal(SIGINT, bn_on_signal);
  signal(SIGTERM, bn_on_signal);
  /* A peer that closes its socket must not kill the benchmark. */
  signal(SIGPIPE, SIG_IGN);
}

void bn_fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", bn_prog);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

void bn_print_log(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return;
  char buf[2048];
  if (fseek(f, 0, SEEK_END) == 0) {
    long size = ftell(f);
    fseek(f, size > (long)sizeof buf ? size - (long)sizeof buf : 0, SEEK_SET);
  }
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  fprintf(stderr, "--- %s\n%.*s\n---\n", path, (int)n, buf);
}

const char *bn_find_exe(const char *const *paths) {
  for (; *paths; paths++)
    if (access(*paths, X_OK) == 0) return *paths;
  return NULL;
}

void bn_tmpdir(char *out, size_t size, const char *tag) {
  if (tmpdir_make(out, size, tag) != 0) bn_fail("cannot create a temporary directory: %s",
                                                strerror(errno));
  for (int i = 0; i < BN_MAX_DIRS; i++)
    if (!bn_dirs[i][0]) {
      snprintf(bn_dirs[i], sizeof bn_dirs[i], "%s", out);
      return;
    }
  bn_fail("too many temporary directories");
}

void bn_tmpdir_remove(const char *dir) {
  for (int i = 0; i < BN_MAX_DIRS; i++)
    if (bn_dirs[i][0] && !strcmp(bn_dirs[i], dir)) bn_dirs[i][0] = 0;
  tmpdir_remove(dir);
}

int bn_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) bn_fail("socket: %s", strerror(errno));
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0)
    bn_fail("cannot find a free port: %s", strerror(errno));
  close(fd);
  return ntohs(a.sin_port);
}

void bn_proc_start(tproc *p, char *const argv[], const char *log_path) {
  int slot = -1;
  for (int i = 0; i < BN_MAX_PROCS && slot < 0; i++)
    if (!bn_procs[i]) slot = i;
  if (slot < 0) bn_fail("too many child processes");
  if (tproc_start(p, argv, log_path) != 0) bn_fail("cannot start %s: %s", argv[0], strerror(errno));
  bn_procs[slot] = p;
}

static void bn_untrack(tproc *p) {
  for (int i = 0; i < BN_MAX_PROCS; i++)
    if (bn_procs[i] == p) bn_procs[i] = NULL;
}

int bn_proc_stop(tproc *p, int timeout_ms) {
  int rc = -1;
  if (tproc_kill(p, SIGTERM) == 0 && tproc_wait(p, timeout_ms) == 0)
    rc = WIFEXITED(p->status) ? WEXITSTATUS(p->status) : 128 + WTERMSIG(p->status);
  tproc_stop(p);
  bn_untrack(p);
  return rc;
}

bool bn_wait_port(tproc *p, int port, int timeout_ms) {
  uint64_t deadline = bench_now_ns() + (uint64_t)timeout_ms * 1000000u;
  while (bench_now_ns() < deadline) {
    if (waitpid(p->pid, &p->status, WNOHANG) == p->pid) {
      p->reaped = true;
      return false;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0) close(fd);
    if (ok) return true;
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  return false;
}

/* PARLEY_BENCH_BUSY_POLL_US sets the gateway's busy_poll_us, to measure
 * that trade (docs/gateway.md, "Busy polling"); unset, the key is left
 * out (a gateway older than the key runs the same configuration). */
static void bn_busy_poll(char *out, size_t n) {
  const char *v = getenv("PARLEY_BENCH_BUSY_POLL_US");
  snprintf(out, n, "%s%.16s%s", v && *v ? "busy_poll_us: " : "", v && *v ? v : "",
           v && *v ? "\n" : "");
}

int bn_gateway_start(tproc *p, const char *dir, const char *durability, int customers) {
  size_t cap = 2048 + (size_t)customers * 80;
  char *y = malloc(cap);
  if (!y) bn_fail("out of memory");
  char bp[64];
  bn_busy_poll(bp, sizeof bp);
  /* ack_timeout only governs redelivery to the customers (their clients
   * acknowledge every event); it is long so that no redelivery adds load. */
  int n = snprintf(y, cap,
                   "listen: 127.0.0.1\n"
                   "port: 0\n"
                   "durability: %s\n"
                   "group_commit: true\n"
                   "%s"
                   "bot: benchbot\n"
                   "limits:\n"
                   "  ack_timeout: 30s\n"
                   "  heartbeat: 30s\n"
                   "principals:\n"
                   "  - {name: benchbot, role: bot, token: bot-token}\n",
                   durability, bp);
  for (int i = 0; i < customers; i++)
    n += snprintf(y + n, cap - (size_t)n,
                  "  - {name: cust%d, role: customer, token: tok-cust%d}\n", i, i);
  char cfg[512], data[512], log[512];
  snprintf(cfg, sizeof cfg, "%s/gateway.yaml", dir);
  snprintf(data, sizeof data, "%s/data", dir);
  snprintf(log, sizeof log, "%s/gateway.log", dir);
  mkdir(data, 0700);
  if (write_file(cfg, y) != 0) bn_fail("cannot write %s", cfg);
  free(y);
  char *argv[] = {(char *)PARLEY_BIN, "gateway", "--config", cfg, "--data-dir", data,
                  "--port", "0", NULL};
  bn_proc_start(p, argv, log);
  char line[512];
  if (!tproc_wait_for(p, "listening on", line, sizeof line, 15000)) {
    bn_print_log(log);
    bn_fail("the gateway (%s) did not start", PARLEY_BIN);
  }
  const char *colon = strrchr(line, ':');
  int port = colon ? atoi(colon + 1) : 0;
  if (port <= 0) bn_fail("cannot read the gateway's port from \"%s\"", line);
  return port;
}

/* ------------------------------------------------------------- driver */

enum { PH_CONNECT, PH_WARMUP, PH_MEASURE, PH_DRAIN, PH_STOPPING };

typedef struct bn_drv bn_drv;

typedef struct bn_cli {
  bn_drv *drv;
  parley_client *c;
  char principal[32], token[32], conv[64];
  uint64_t last_seq;
  uint64_t t_send;
  bool inflight, ready, closed;
} bn_cli;

struct bn_drv {
  bn_drive *d;
  uv_loop_t loop;
  uv_timer_t phase_timer, watchdog;
  bn_cli *cl;
  int n_ready, n_closed, inflight, phase;
  size_t warm_done;
  uint64_t t0, t_measure, t_end, last_progress;
  bool count_mode;
};

static void drv_send(bn_cli *c) {
  parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = bn_payload};
  c->t_send = bench_now_ns();
  int rc = parley_client_send(c->c, c->conv, &ct, NULL, NULL, 0, NULL);
  if (rc != 0) bn_fail("parley_client_send (%s): %s", c->principal, parley_strerror(rc));
  c->inflight = true;
  c->drv->inflight++;
}

static void drv_stop_all(bn_drv *v) {
  v->phase = PH_STOPPING;
  uv_timer_stop(&v->phase_timer);
  for (int i = 0; i < v->d->clients; i++) parley_client_stop(v->cl[i].c, 1000);
}

static void drv_enter_measure(bn_drv *v) {
  v->phase = PH_MEASURE;
  v->t_measure = bench_now_ns();
}

static void drv_enter_drain(bn_drv *v) {
  v->phase = PH_DRAIN;
  v->t_end = bench_now_ns();
  if (v->inflight == 0) drv_stop_all(v);
}

static void on_phase_timer(uv_timer_t *t) {
  bn_drv *v = t->data;
  if (v->phase == PH_WARMUP) {
    drv_enter_measure(v);
    uv_timer_start(&v->phase_timer, on_phase_timer, v->d->measure_ns / 1000000u, 0);
  } else if (v->phase == PH_MEASURE) {
    drv_enter_drain(v);
  }
}

static void on_watchdog(uv_timer_t *t) {
  bn_drv *v = t->data;
  uint64_t idle = bench_now_ns() - v->last_progress;
  if (idle > 30ull * 1000000000u) {
    if (v->phase == PH_CONNECT)
      bn_fail("only %d of %d clients connected within 30 s", v->n_ready, v->d->clients);
    bn_fail("no progress for 30 s (phase %d, %d sends in flight)", v->phase, v->inflight);
  }
}

static void on_state(parley_client *pc, parley_conn_state st, int status, void *ud) {
  (void)pc;
  bn_cli *c = ud;
  bn_drv *v = c->drv;
  if (st == PARLEY_CONN_READY) {
    if (c->ready) bn_fail("%s reconnected during the run", c->principal);
    c->ready = true;
    v->last_progress = bench_now_ns();
    if (++v->n_ready == v->d->clients) {
      v->d->connect_ns = bench_now_ns() - v->t0;
      v->phase = PH_WARMUP;
      if (v->count_mode) {
        if (v->d->warmup_count == 0) drv_enter_measure(v);
      } else {
        uv_timer_start(&v->phase_timer, on_phase_timer, v->d->warmup_ns / 1000000u, 0);
      }
      for (int i = 0; i < v->d->clients; i++) drv_send(&v->cl[i]);
    }
  } else if (st == PARLEY_CONN_BACKOFF) {
    bn_fail("%s lost its connection: %s", c->principal,
            status ? parley_strerror(status) : "closed");
  } else if (st == PARLEY_CONN_CLOSED) {
    if (v->phase != PH_STOPPING)
      bn_fail("%s closed during the run: %s", c->principal,
              status ? parley_strerror(status) : "closed");
    if (!c->closed) {
      c->closed = true;
      if (++v->n_closed == v->d->clients) {
        uv_close((uv_handle_t *)&v->phase_timer, NULL);
        uv_close((uv_handle_t *)&v->watchdog, NULL);
      }
    }
  }
}

static void on_send_result(parley_client *pc, const parley_send_result *r, void *send_ud,
                           void *ud) {
  (void)pc;
  (void)send_ud;
  bn_cli *c = ud;
  bn_drv *v = c->drv;
  bn_drive *d = v->d;
  uint64_t now = bench_now_ns();
  if (!c->inflight) bn_fail("%s: a send result without a send in flight", c->principal);
  if (r->status != 0)
    bn_fail("%s: send failed: %s%s%s", c->principal, parley_strerror(r->status),
            r->message ? ": " : "", r->message ? r->message : "");
  if (r->duplicate || r->attempts != 1)
    bn_fail("%s: send needed %u attempts (duplicate %d); the run is not clean", c->principal,
            r->attempts, (int)r->duplicate);
  if (r->seq <= c->last_seq)
    bn_fail("%s: seq %llu after %llu, not increasing", c->principal,
            (unsigned long long)r->seq, (unsigned long long)c->last_seq);
  c->last_seq = r->seq;
  c->inflight = false;
  v->inflight--;
  v->last_progress = now;
  d->total++;
  if (v->phase == PH_WARMUP && v->count_mode) {
    if (++v->warm_done >= d->warmup_count) drv_enter_measure(v);
  } else if (v->phase == PH_MEASURE) {
    d->measured++;
    if (d->samples && d->n_samples < d->max_samples)
      d->samples[d->n_samples++] = (double)(now - c->t_send) / 1000.0;
    if (v->count_mode && d->measured >= d->measure_count) drv_enter_drain(v);
  }
  if (v->phase == PH_WARMUP || v->phase == PH_MEASURE)
    drv_send(c);
  else if (v->phase == PH_DRAIN && v->inflight == 0)
    drv_stop_all(v);
}

static void on_event(parley_client *pc, const parley_event *ev, void *ud) {
  /* The customer's own conversation: acknowledged when this returns. */
  (void)pc;
  (void)ev;
  (void)ud;
}

static void on_error(parley_client *pc, int status, const char *message, void *ud) {
  (void)pc;
  bn_cli *c = ud;
  bn_fail("%s: gateway error %s%s%s", c->principal, parley_strerror(status),
          message ? ": " : "", message ? message : "");
}

void bn_drive_run(bn_drive *d) {
  bn_drv *v = calloc(1, sizeof *v);
  if (!v) bn_fail("out of memory");
  v->d = d;
  v->cl = calloc((size_t)d->clients, sizeof *v->cl);
  if (!v->cl) bn_fail("out of memory");
  v->count_mode = d->warmup_count > 0 || d->measure_count > 0;
  d->measured = d->total = d->n_samples = 0;
  uv_loop_init(&v->loop);
  uv_timer_init(&v->loop, &v->phase_timer);
  uv_timer_init(&v->loop, &v->watchdog);
  v->phase_timer.data = v->watchdog.data = v;
  v->t0 = v->last_progress = bench_now_ns();
  uv_timer_start(&v->watchdog, on_watchdog, 1000, 1000);
  for (int i = 0; i < d->clients; i++) {
    bn_cli *c = &v->cl[i];
    c->drv = v;
    snprintf(c->principal, sizeof c->principal, "cust%d", i);
    snprintf(c->token, sizeof c->token, "tok-cust%d", i);
    snprintf(c->conv, sizeof c->conv, "%s-%d", d->tag, i);
    parley_client_options o = PARLEY_CLIENT_OPTIONS_INIT;
    o.url = d->url;
    o.principal = c->principal;
    o.token = c->token;
    o.role = PARLEY_ROLE_CUSTOMER;
    o.locale = "en";
    o.loop = &v->loop;
    o.cb.on_state = on_state;
    o.cb.on_send_result = on_send_result;
    o.cb.on_event = on_event;
    o.cb.on_error = on_error;
    o.user_data = c;
    /* A resend would be a second write of the same message and make the
     * figure meaningless: the timeout is far above any latency seen, and a
     * send that needed two attempts fails the run. Heartbeats are rare so
     * that they do not add frames to the measured path. */
    o.tuning.ack_timeout_ms = 30000;
    o.tuning.send_deadline_ms = 600000;
    o.tuning.heartbeat_ms = 60000;
    int rc = parley_client_new(&o, &c->c);
    if (rc == 0) rc = parley_client_start(c->c);
    if (rc != 0) bn_fail("client %d: %s", i, parley_strerror(rc));
  }
  uv_run(&v->loop, UV_RUN_DEFAULT);
  d->elapsed_ns = v->t_end - v->t_measure;
  for (int i = 0; i < d->clients; i++) {
    parley_client_stats st;
    parley_client_stats_get(v->cl[i].c, &st);
    if (st.reconnects || st.retries || st.send_failures)
      bn_fail("%s: %llu reconnects, %llu retries, %llu failures", v->cl[i].principal,
              (unsigned long long)st.reconnects, (unsigned long long)st.retries,
              (unsigned long long)st.send_failures);
    parley_client_free(v->cl[i].c);
  }
  /* Freeing the clients closes the shared WebSocket context's handles;
   * the loop runs until they are gone. */
  for (int i = 0; i < 1000 && uv_run(&v->loop, UV_RUN_NOWAIT) != 0; i++) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  free(v->cl);
  /* A loop that still has handles must stay allocated: they point at it. */
  if (uv_loop_close(&v->loop) != 0)
    fprintf(stderr, "%s: the client loop still has handles\n", bn_prog);
  else
    free(v);
}
