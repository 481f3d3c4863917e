/* bench_ack_rtt: the round trip of one acknowledged message with one
 * message in flight, per message, as p50/p90/p99 in microseconds.
 *
 *   bench_ack_rtt [--tiny]
 *
 * Parley: a real `parley gateway` process on 127.0.0.1 and one customer
 * client through libparley's public API (parley/client.h) on a libuv loop:
 * parley_client_send -> the gateway stores the message in its SQLite log
 * and commits -> SendAck -> on_send_result. The gateway runs twice, with
 * durability "normal" (WAL, synchronous=NORMAL: committed before the ACK,
 * no fsync) and "full" (fsync of the WAL before the ACK), group commit on.
 *
 * Peers, in the same run with the same 200-byte text:
 *   tcp        loopback TCP ping-pong, blocking sockets, TCP_NODELAY, an
 *              echo thread: the floor of any request/answer over TCP.
 *   mosquitto  a mosquitto broker (persistence false) and libmosquitto
 *              publishing at QoS 1, timed from publish to PUBACK.
 *   nats       nats-server and libnats: natsConnection_Request to a
 *              responder subscription on a second connection.
 * Every side sends, waits for its acknowledgement, then sends the next; the
 * same number of messages is timed after the same warm-up. Each answer is
 * checked (status, message id or content, order), so a lost or wrong
 * acknowledgement fails the run instead of being timed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libwebsockets.h>
#include <mosquitto.h>
#include <nats/nats.h>

#include <parley/client.h>

#include "bench.h"
#include "netcommon.h"

#define BENCH "ack_rtt"

typedef struct cfg {
  size_t warmup, count;
} cfg;

/* The subjects run in rounds, one after the other within each round, and
 * their samples are pooled: on a shared machine a slow spell then spreads
 * over every subject instead of landing on whichever ran at that moment. */
#define MAX_SUBJECTS 8
static struct pool {
  char subject[32], param[32];
  double *v;
  size_t n, cap;
} pools[MAX_SUBJECTS];
static size_t n_pools;

static void report(const char *subject, const char *param, double *v, size_t n) {
  struct pool *p = NULL;
  for (size_t i = 0; i < n_pools && !p; i++)
    if (!strcmp(pools[i].subject, subject) && !strcmp(pools[i].param, param)) p = &pools[i];
  if (!p) {
    if (n_pools == MAX_SUBJECTS) bn_fail("too many subjects");
    p = &pools[n_pools++];
    snprintf(p->subject, sizeof p->subject, "%s", subject);
    snprintf(p->param, sizeof p->param, "%s", param);
  }
  if (p->n + n > p->cap) {
    size_t cap = (p->n + n) * 2;
    double *nv = realloc(p->v, cap * sizeof *nv);
    if (!nv) bn_fail("out of memory");
    p->v = nv;
    p->cap = cap;
  }
  memcpy(p->v + p->n, v, n * sizeof *v);
  p->n += n;
}

static void report_all(void) {
  for (size_t i = 0; i < n_pools; i++) {
    struct pool *p = &pools[i];
    double p50 = bench_percentile(p->v, p->n, 50), p90 = bench_percentile(p->v, p->n, 90),
           p99 = bench_percentile(p->v, p->n, 99);
    char name[80];
    snprintf(name, sizeof name, "%s%s%s", p->subject, *p->param ? " " : "", p->param);
    printf("%-28s %8zu %10.1f %10.1f %10.1f\n", name, p->n, p50, p90, p99);
    bench_figure(BENCH, "p50_us", p->subject, p->param, p50, "us");
    bench_figure(BENCH, "p90_us", p->subject, p->param, p90, "us");
    bench_figure(BENCH, "p99_us", p->subject, p->param, p99, "us");
    free(p->v);
  }
  fflush(stdout);
}

/* --------------------------------------------------------------- parley */

static void run_parley(const cfg *k, const char *durability, double *v) {
  char dir[256], url[128];
  bn_tmpdir(dir, sizeof dir, "bench-ackrtt");
  tproc gw;
  int port = bn_gateway_start(&gw, dir, durability, 1);
  snprintf(url, sizeof url, "ws://127.0.0.1:%d/v1/ws", port);
  bn_drive d = {.url = url, .clients = 1, .tag = "rtt", .warmup_count = k->warmup,
                .measure_count = k->count, .samples = v, .max_samples = k->count};
  bn_drive_run(&d);
  int rc = bn_proc_stop(&gw, 10000);
  if (rc != 0) bn_fail("the gateway (durability %s) did not stop cleanly (%d); see %s/gateway.log",
                       durability, rc, dir);
  if (d.n_samples != k->count) bn_fail("parley: %zu samples, expected %zu", d.n_samples, k->count);
  bn_tmpdir_remove(dir);
  char param[64];
  snprintf(param, sizeof param, "durability=%s", durability);
  report("parley", param, v, d.n_samples);
}

/* ------------------------------------------------------------------ tcp */

static int read_full(int fd, char *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r == 0) return -1;
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    got += (size_t)r;
  }
  return 0;
}

static int write_full(int fd, const char *buf, size_t n) {
  size_t put = 0;
  while (put < n) {
    ssize_t r = write(fd, buf + put, n - put);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    put += (size_t)r;
  }
  return 0;
}

static void *tcp_echo(void *arg) {
  int lfd = (int)(intptr_t)arg;
  int fd = accept(lfd, NULL, NULL);
  if (fd < 0) return NULL;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  char buf[BN_PAYLOAD_LEN];
  while (read_full(fd, buf, sizeof buf) == 0)
    if (write_full(fd, buf, sizeof buf) != 0) break;
  close(fd);
  return NULL;
}

static void run_tcp(const cfg *k, double *v) {
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 1) != 0 ||
      getsockname(lfd, (struct sockaddr *)&a, &len) != 0)
    bn_fail("tcp: cannot listen: %s", strerror(errno));
  pthread_t th;
  if (pthread_create(&th, NULL, tcp_echo, (void *)(intptr_t)lfd) != 0) bn_fail("tcp: no thread");
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
    bn_fail("tcp: cannot connect: %s", strerror(errno));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  char buf[BN_PAYLOAD_LEN];
  for (size_t i = 0; i < k->warmup + k->count; i++) {
    uint64_t t0 = bench_now_ns();
    if (write_full(fd, bn_payload, BN_PAYLOAD_LEN) != 0 || read_full(fd, buf, sizeof buf) != 0)
      bn_fail("tcp: ping-pong %zu failed: %s", i, strerror(errno));
    uint64_t t1 = bench_now_ns();
    if (memcmp(buf, bn_payload, BN_PAYLOAD_LEN) != 0) bn_fail("tcp: wrong echo at %zu", i);
    if (i >= k->warmup) v[i - k->warmup] = (double)(t1 - t0) / 1000.0;
  }
  close(fd);
  pthread_join(th, NULL);
  close(lfd);
  report("tcp", "", v, k->count);
}

/* ------------------------------------------------------------ mosquitto */

typedef struct mq_state {
  int connected; /* 0 waiting, 1 accepted, -1 refused */
  int acked_mid;
  int acks;
} mq_state;

static void mq_on_connect(struct mosquitto *m, void *ud, int rc) {
  (void)m;
  ((mq_state *)ud)->connected = rc == 0 ? 1 : -1;
}

static void mq_on_publish(struct mosquitto *m, void *ud, int mid) {
  (void)m;
  mq_state *s = ud;
  s->acked_mid = mid;
  s->acks++;
}

static void mq_loop_until(struct mosquitto *m, const int *flag, int until, const char *what) {
  uint64_t deadline = bench_now_ns() + 10ull * 1000000000u;
  while (*flag != until) {
    int rc = mosquitto_loop(m, 1000, 1);
    if (rc != MOSQ_ERR_SUCCESS) bn_fail("mosquitto: %s: %s", what, mosquitto_strerror(rc));
    if (bench_now_ns() > deadline) bn_fail("mosquitto: no %s within 10 s", what);
  }
}

static void run_mosquitto(const cfg *k, double *v) {
  char dir[256], conf[512], log[512], text[256];
  bn_tmpdir(dir, sizeof dir, "bench-mosq");
  int port = bn_free_port();
  snprintf(conf, sizeof conf, "%s/mosquitto.conf", dir);
  snprintf(log, sizeof log, "%s/mosquitto.log", dir);
  snprintf(text, sizeof text,
           "listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n", port);
  if (write_file(conf, text) != 0) bn_fail("mosquitto: cannot write %s", conf);
  static const char *const exes[] = {"/usr/sbin/mosquitto", "/usr/bin/mosquitto", NULL};
  const char *exe = bn_find_exe(exes);
  if (!exe) bn_fail("mosquitto is not installed (scripts/bootstrap.sh installs it)");
  tproc broker;
  char *argv[] = {(char *)exe, "-c", conf, NULL};
  bn_proc_start(&broker, argv, log);
  if (!bn_wait_port(&broker, port, 10000)) {
    bn_print_log(log);
    bn_fail("mosquitto did not start");
  }

  mosquitto_lib_init();
  mq_state s = {0};
  struct mosquitto *m = mosquitto_new("parley-bench-ackrtt", true, &s);
  if (!m) bn_fail("mosquitto_new failed");
  mosquitto_connect_callback_set(m, mq_on_connect);
  mosquitto_publish_callback_set(m, mq_on_publish);
  int rc = mosquitto_connect(m, "127.0.0.1", port, 60);
  if (rc != MOSQ_ERR_SUCCESS) bn_fail("mosquitto_connect: %s", mosquitto_strerror(rc));
  mq_loop_until(m, &s.connected, 1, "CONNACK");
  for (size_t i = 0; i < k->warmup + k->count; i++) {
    int mid = 0, before = s.acks;
    uint64_t t0 = bench_now_ns();
    rc = mosquitto_publish(m, &mid, "parley/bench/ack", BN_PAYLOAD_LEN, bn_payload, 1, false);
    if (rc != MOSQ_ERR_SUCCESS) bn_fail("mosquitto_publish: %s", mosquitto_strerror(rc));
    int want = before + 1;
    mq_loop_until(m, &s.acks, want, "PUBACK");
    uint64_t t1 = bench_now_ns();
    if (s.acked_mid != mid) bn_fail("mosquitto: PUBACK for mid %d, expected %d", s.acked_mid, mid);
    if (i >= k->warmup) v[i - k->warmup] = (double)(t1 - t0) / 1000.0;
  }
  mosquitto_disconnect(m);
  mosquitto_destroy(m);
  int maj, min, rev;
  mosquitto_lib_version(&maj, &min, &rev);
  mosquitto_lib_cleanup();
  bn_proc_stop(&broker, 5000);
  bn_tmpdir_remove(dir);
  static int noted_mq; /* once, not every round */
  if (!noted_mq++)
    bench_note(BENCH,
             "mosquitto: broker /usr/sbin/mosquitto with persistence false, libmosquitto %d.%d.%d, "
             "QoS 1 publish timed until PUBACK, no subscriber; the broker keeps nothing on disk",
             maj, min, rev);
  report("mosquitto", "", v, k->count);
}

/* ----------------------------------------------------------------- nats */

static void nats_respond(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *ud) {
  (void)sub;
  (void)ud;
  natsConnection_Publish(nc, natsMsg_GetReply(msg), natsMsg_GetData(msg),
                         natsMsg_GetDataLength(msg));
  natsMsg_Destroy(msg);
}

static void run_nats(const cfg *k, double *v) {
  char dir[256], log[512], portstr[16], url[64];
  bn_tmpdir(dir, sizeof dir, "bench-nats");
  int port = bn_free_port();
  snprintf(portstr, sizeof portstr, "%d", port);
  snprintf(log, sizeof log, "%s/nats.log", dir);
  snprintf(url, sizeof url, "nats://127.0.0.1:%d", port);
  static const char *const exes[] = {"/usr/sbin/nats-server", "/usr/bin/nats-server", NULL};
  const char *exe = bn_find_exe(exes);
  if (!exe) bn_fail("nats-server is not installed (scripts/bootstrap.sh installs it)");
  tproc server;
  char *argv[] = {(char *)exe, "-a", "127.0.0.1", "-p", portstr, NULL};
  bn_proc_start(&server, argv, log);
  if (!bn_wait_port(&server, port, 10000)) {
    bn_print_log(log);
    bn_fail("nats-server did not start");
  }

  natsConnection *rnc = NULL, *nc = NULL;
  natsSubscription *sub = NULL;
  natsOptions *opts = NULL;
  /* libnats buffers publishes for a flusher thread by default; SendAsap
   * writes each one at once, the fastest request/reply it offers. */
  natsStatus s = natsOptions_Create(&opts);
  if (s == NATS_OK) s = natsOptions_SetURL(opts, url);
  if (s == NATS_OK) s = natsOptions_SetSendAsap(opts, true);
  if (s == NATS_OK) s = natsConnection_Connect(&rnc, opts);
  if (s == NATS_OK) s = natsConnection_Subscribe(&sub, rnc, "parley.bench.ack", nats_respond, NULL);
  if (s == NATS_OK) s = natsConnection_Flush(rnc);
  if (s == NATS_OK) s = natsConnection_Connect(&nc, opts);
  if (s != NATS_OK) bn_fail("nats: %s", natsStatus_GetText(s));
  for (size_t i = 0; i < k->warmup + k->count; i++) {
    natsMsg *reply = NULL;
    uint64_t t0 = bench_now_ns();
    s = natsConnection_Request(&reply, nc, "parley.bench.ack", bn_payload, BN_PAYLOAD_LEN, 5000);
    uint64_t t1 = bench_now_ns();
    if (s != NATS_OK) bn_fail("nats: request %zu: %s", i, natsStatus_GetText(s));
    if (natsMsg_GetDataLength(reply) != BN_PAYLOAD_LEN ||
        memcmp(natsMsg_GetData(reply), bn_payload, BN_PAYLOAD_LEN) != 0)
      bn_fail("nats: wrong reply at %zu", i);
    natsMsg_Destroy(reply);
    if (i >= k->warmup) v[i - k->warmup] = (double)(t1 - t0) / 1000.0;
  }
  natsSubscription_Destroy(sub);
  natsConnection_Destroy(nc);
  natsConnection_Destroy(rnc);
  natsOptions_Destroy(opts);
  nats_Close();
  bn_proc_stop(&server, 5000);
  bn_tmpdir_remove(dir);
  static int noted_nats; /* once, not every round */
  if (!noted_nats++)
    bench_note(BENCH,
             "nats: nats-server (core NATS, no JetStream) and libnats %s; request/reply to a "
             "responder on a second connection that echoes the payload, both connections with SendAsap; nothing is stored",
             nats_GetVersion());
  report("nats", "", v, k->count);
}

int main(int argc, char **argv) {
  bn_init("bench_ack_rtt");
  lws_set_log_level(LLL_ERR, NULL);
  bool tiny = bench_tiny(argc, argv);
  int rounds = tiny ? 2 : 5;
  cfg k = {.warmup = tiny ? 10 : 100, .count = tiny ? 100 : 1000};
  double *v = calloc(k.count, sizeof *v);
  if (!v) bn_fail("out of memory");
  printf("ack_rtt: one message in flight, %d-byte text; %d rounds of every subject, each %zu "
         "timed after %zu warm-up%s\n",
         BN_PAYLOAD_LEN, rounds, k.count, k.warmup, tiny ? " (tiny: values meaningless)" : "");
  for (int r = 0; r < rounds; r++) {
    run_tcp(&k, v);
    run_parley(&k, "normal", v);
    run_parley(&k, "full", v);
    run_mosquitto(&k, v);
    run_nats(&k, v);
  }
  printf("%-28s %8s %10s %10s %10s\n", "subject", "n", "p50 us", "p90 us", "p99 us");
  report_all();
  bench_note(BENCH,
             "parley %s: `parley gateway` process, one customer through libparley's client API on "
             "a libuv loop, SendAck timed from parley_client_send to on_send_result; group commit "
             "on. durability=normal: SQLite WAL synchronous=NORMAL, committed before the ACK, "
             "survives a process crash; durability=full: the WAL is fsynced before the ACK, "
             "survives power loss",
             parley_version());
  bench_note(BENCH, "tcp: blocking loopback sockets with TCP_NODELAY, echo thread, the floor");
  free(v);
  return 0;
}
