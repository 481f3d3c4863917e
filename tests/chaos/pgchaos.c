/* The chaos suite on PostgreSQL: several `parley gateway` processes over
 * one real database (pgserver.h starts it in a temporary directory),
 * faults injected by signals, by pg_ctl and by the loopback fault proxy.
 * One ctest entry per scenario (tests/chaos/CMakeLists.txt), short form
 * by default, full size with PARLEY_CHAOS_FULL=1 (label "long"):
 *
 *   pg_node_kill9      three nodes; customers start on different nodes and
 *                      the echo bot on another, so delivery and bot
 *                      placement go between nodes; node k % 3 dies with
 *                      SIGKILL (3 times short, 20 full) and comes back
 *                      before the next kill; customers and the bot move to
 *                      the next URL. 0 lost, duplicated, reordered, gapped,
 *                      replies missing (tests/failover's checker).
 *   pg_ack_lost        a Send to node 1 whose SendAck is held by the fault
 *                      proxy and lost with the connection, resent with the
 *                      same id to node 2: the same seq, flagged duplicate,
 *                      one row in the database (5 ids short, 50 full).
 *   pg_restart         PostgreSQL stopped with pg_ctl stop -m immediate
 *                      during traffic on two nodes and started again (once
 *                      short, 10 times full): the gateways wait, reconnect
 *                      and write, nothing ACKed is lost.
 *   pg_two_writers     two devices of one customer on two nodes sending
 *                      into one conversation at once (30 each short, 300
 *                      full): every send ACKed, seqs 1..N gap-free in the
 *                      database, and both devices handed the same events in
 *                      the same order.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <libpq-fe.h>

#include <parley/error.h>

#include "wire/wire.h"
#include "failover.h"
#include "faultproxy.h"
#include "pgserver.h"
#include "proc.h"
#include "wsclient.h"

static bool full_size(void) {
  const char *f = getenv("PARLEY_CHAOS_FULL");
  return f && f[0] && strcmp(f, "0") != 0;
}

static void sleep_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static long long scalar(const char *url, const char *sql) {
  PGconn *c = PQconnectdb(url);
  long long v = -1;
  if (PQstatus(c) == CONNECTION_OK) {
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
      v = atoll(PQgetvalue(r, 0, 0));
    else if (PQresultStatus(r) == PGRES_TUPLES_OK)
      v = 0;
    PQclear(r);
  }
  PQfinish(c);
  return v;
}

/* --------------------------------------------- fo_run scenarios (1, 3) */

static char yaml_buf[1024];

static const char *node_yaml(int node, void *ud) {
  (void)node;
  snprintf(yaml_buf, sizeof yaml_buf,
           "listen: 127.0.0.1\n"
           "durability: normal\n"
           "bot: echo\n"
           "storage:\n"
           "  kind: postgres\n"
           "  url: \"%s\"\n"
           "limits:\n"
           "  ack_timeout: 1s\n"
           "  heartbeat: 1s\n"
           "  max_connections_per_principal: 64\n",
           (const char *)ud);
  return yaml_buf;
}

static void expect_zeros(const fo_counts *k, uint64_t acked) {
  assert_int_equal(k->acked, acked);
  assert_int_equal(k->lost, 0);
  assert_int_equal(k->duplicated, 0);
  assert_int_equal(k->reordered, 0);
  assert_int_equal(k->gapped, 0);
  assert_int_equal(k->replies_missing, 0);
}

static void test_pg_node_kill9(void **unused) {
  (void)unused;
  bool full = full_size();
  pgs s;
  assert_int_equal(pgs_start(&s, "parley"), 0);
  char url[256];
  pgs_conninfo(&s, url, sizeof url);
  fo_scenario sc = {
      .name = "pg_node_kill9",
      .nodes = 3,
      .shared_store = true,
      .spread = true,
      .yaml = node_yaml,
      .ud = url,
      .customers = 3,
      .msgs = full ? 600 : 45,
      .kills = full ? 20 : 3,
      .deadline_s = full ? 900 : 100,
  };
  fo_counts k;
  int rc = fo_run(&sc, &k);
  fo_print(&sc, &k);
  long long stored = scalar(url, "SELECT count(*) FROM parley_events WHERE conv LIKE 'fo-%'");
  long long epochs = scalar(url, "SELECT sum(epoch) FROM parley_conversations");
  pgs_stop(&s);
  printf("pg_node_kill9: %lld events stored, epochs summed over the conversations %lld\n",
         stored, epochs);
  assert_int_equal(rc, 0);
  assert_int_equal(k.kills, (uint64_t)sc.kills);
  expect_zeros(&k, (uint64_t)sc.customers * (uint64_t)sc.msgs);
  assert_true(stored >= 2LL * sc.customers * sc.msgs);
  /* Customers were served by every node. */
  for (int i = 0; i < sc.nodes; i++) assert_true(k.ready_on[i] >= 1);
}

typedef struct db_fault {
  pgs *server;
  char url[256];
  int restarts_ok;
} db_fault;

static const char *restart_yaml(int node, void *ud) {
  return node_yaml(node, ((db_fault *)ud)->url);
}

static void restart_db(void *ud) {
  db_fault *f = ud;
  if (pgs_stop_mode(f->server, "immediate") != 0) return;
  sleep_ms(700);
  if (pgs_resume(f->server) == 0) f->restarts_ok++;
}

static void test_pg_restart(void **unused) {
  (void)unused;
  bool full = full_size();
  pgs s;
  assert_int_equal(pgs_start(&s, "parley"), 0);
  db_fault f = {.server = &s};
  pgs_conninfo(&s, f.url, sizeof f.url);
  fo_scenario sc = {
      .name = "pg_restart",
      .nodes = 2,
      .shared_store = true,
      .spread = true,
      .yaml = restart_yaml,
      .ud = &f,
      .customers = 2,
      .msgs = full ? 600 : 30,
      .kills = full ? 10 : 1,
      .fault = restart_db,
      .deadline_s = full ? 900 : 100,
  };
  fo_counts k;
  int rc = fo_run(&sc, &k);
  fo_print(&sc, &k);
  long long stored = scalar(f.url, "SELECT count(*) FROM parley_events WHERE conv LIKE 'fo-%'");
  pgs_stop(&s);
  printf("pg_restart: %d restarts, %lld events stored\n", f.restarts_ok, stored);
  assert_int_equal(rc, 0);
  assert_int_equal(f.restarts_ok, sc.kills);
  expect_zeros(&k, (uint64_t)sc.customers * (uint64_t)sc.msgs);
  /* Everything ACKed is in the database after its crashes. */
  assert_true(stored >= 2LL * sc.customers * sc.msgs);
}

/* ------------------------------------- raw-client scenarios (2, 4) */

#define RECV_MS 5000

static const char *raw_yaml(const char *url, char *buf, size_t size) {
  snprintf(buf, size,
           "listen: 127.0.0.1\n"
           "durability: normal\n"
           "bot: echo\n"
           "storage:\n"
           "  kind: postgres\n"
           "  url: \"%s\"\n"
           "limits:\n"
           "  ack_timeout: 1s\n"
           "  heartbeat: 60s\n"
           "  window: 256\n"
           "principals:\n"
           "  - {name: echo, role: bot, token: echo-token}\n"
           "  - {name: cust0, role: customer, token: tok-cust0}\n",
           url);
  return buf;
}

typedef struct nodes {
  char dir[256];
  tproc gw[2];
  int port[2];
} nodes;

static nodes *cur_nodes;
static pgs *cur_pg;

static int nodes_start(nodes *n, const char *url) {
  memset(n, 0, sizeof *n);
  if (tmpdir_make(n->dir, sizeof n->dir, "pgchaos") != 0) return -1;
  cur_nodes = n;
  char y[1024];
  raw_yaml(url, y, sizeof y);
  for (int i = 0; i < 2; i++) {
    char d[300];
    snprintf(d, sizeof d, "%s/node-%d", n->dir, i);
    if (mkdir(d, 0700) != 0) return -1;
    n->port[i] = tproc_start_gateway(&n->gw[i], d, y);
    if (!n->port[i]) return -1;
  }
  return 0;
}

static void nodes_stop(nodes *n) {
  for (int i = 0; i < 2; i++)
    if (n->gw[i].pid > 0 && !n->gw[i].reaped) tproc_stop(&n->gw[i]);
  if (n->dir[0]) tmpdir_remove(n->dir);
  n->dir[0] = 0;
  cur_nodes = NULL;
}

static wsc *login(int port, const char *device) {
  wsc *c = wsc_connect("127.0.0.1", port, "Bearer tok-cust0", RECV_MS);
  if (!c) return NULL;
  Parley__V1__Hello he = PARLEY__V1__HELLO__INIT;
  he.min_version = 1;
  he.max_version = 1;
  he.principal = "cust0";
  he.role = PARLEY__V1__ROLE__ROLE_CUSTOMER;
  he.device = (char *)device;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_HELLO;
  f.hello = &he;
  pw_frame *w = NULL;
  if (wsc_send_frame(c, &f) != 0 ||
      wsc_recv_kind(c, RECV_MS, PARLEY__V1__FRAME__BODY_WELCOME, &w) != 0) {
    wsc_abort(c);
    return NULL;
  }
  pw_frame_free(w);
  return c;
}

static void msgid(uint8_t id[16], uint32_t dev, uint32_t n) {
  memset(id, 0x3C, 16);
  id[10] = (uint8_t)dev;
  id[12] = (uint8_t)(n >> 24);
  id[13] = (uint8_t)(n >> 16);
  id[14] = (uint8_t)(n >> 8);
  id[15] = (uint8_t)n;
}

static int send_text(wsc *c, const char *conv, uint32_t dev, uint32_t n, const char *text) {
  uint8_t id[16];
  msgid(id, dev, n);
  Parley__V1__Text t = PARLEY__V1__TEXT__INIT;
  t.body = (char *)text;
  Parley__V1__Content ct = PARLEY__V1__CONTENT__INIT;
  ct.body_case = PARLEY__V1__CONTENT__BODY_TEXT;
  ct.text = &t;
  Parley__V1__Send s = PARLEY__V1__SEND__INIT;
  s.client_msg_id.data = id;
  s.client_msg_id.len = 16;
  s.conversation = (char *)conv;
  s.body_case = PARLEY__V1__SEND__BODY_CONTENT;
  s.content = &ct;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_SEND;
  f.send = &s;
  return wsc_send_frame(c, &f);
}

static int ack_up_to(wsc *c, const char *conv, uint64_t up) {
  Parley__V1__AckEntry e = PARLEY__V1__ACK_ENTRY__INIT;
  e.conversation = (char *)conv;
  e.up_to_seq = up;
  Parley__V1__AckEntry *ep = &e;
  Parley__V1__Ack a = PARLEY__V1__ACK__INIT;
  a.entries = &ep;
  a.n_entries = 1;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_ACK;
  f.ack = &a;
  return wsc_send_frame(c, &f);
}

/* The SendAck for the message numbered n (other frames dropped). */
static pw_frame *wait_ack(wsc *c, uint32_t dev, uint32_t n, int timeout_ms) {
  uint8_t id[16];
  msgid(id, dev, n);
  for (int frames = 0; frames < 1000; frames++) {
    pw_frame *f = NULL;
    if (wsc_recv_frame(c, timeout_ms, &f) != 0) return NULL;
    if (f->body_case == PARLEY__V1__FRAME__BODY_SEND_ACK &&
        f->send_ack->client_msg_id.len == 16 && !memcmp(f->send_ack->client_msg_id.data, id, 16))
      return f;
    pw_frame_free(f);
  }
  return NULL;
}

static void test_pg_ack_lost(void **unused) {
  (void)unused;
  int rounds = full_size() ? 50 : 5;
  pgs s;
  cur_pg = &s;
  assert_int_equal(pgs_start(&s, "parley"), 0);
  char url[256];
  pgs_conninfo(&s, url, sizeof url);
  nodes n;
  assert_int_equal(nodes_start(&n, url), 0);
  fp_options po = {.target_port = n.port[0], .seed = 13};
  fp_proxy *px = NULL;
  assert_int_equal(fp_start(&po, &px), 0);
  int dups = 0;
  uint64_t last = 0;
  for (int r = 0; r < rounds; r++) {
    char conv[32], text[32];
    snprintf(conv, sizeof conv, "al-%d", r % 3);
    snprintf(text, sizeof text, "lost ack %d", r);
    /* Node 1, through the proxy: the SendAck is held, then the
     * connection is reset, so the client never sees it. */
    wsc *a = login(fp_port(px), "phone");
    assert_non_null(a);
    fp_stall(px, FP_S2C, 5000);
    assert_int_equal(send_text(a, conv, 1, (uint32_t)r, text), 0);
    /* Wait until node 1 has committed it (the row is in the database). */
    char q[200];
    uint8_t id[16];
    msgid(id, 1, (uint32_t)r);
    char hex[33];
    for (int i = 0; i < 16; i++) snprintf(hex + 2 * i, 3, "%02x", id[i]);
    snprintf(q, sizeof q,
             "SELECT count(*) FROM parley_events WHERE sender = 'cust0' AND "
             "msg_id = decode('%s', 'hex')",
             hex);
    long long stored = 0;
    for (int w = 0; w < 100 && stored != 1; w++) {
      sleep_ms(50);
      stored = scalar(url, q);
    }
    assert_int_equal(stored, 1);
    fp_cut_all(px);
    fp_stall(px, FP_S2C, 0);
    wsc_abort(a);
    /* The same id to node 2, directly. */
    wsc *b = login(n.port[1], "phone");
    assert_non_null(b);
    /* Node 2 may not know the id yet: its write then fails on the unique
     * index and the resend (the client's retry) finds the stored one. */
    pw_frame *ack = NULL;
    for (int attempt = 0; attempt < 10; attempt++) {
      assert_int_equal(send_text(b, conv, 1, (uint32_t)r, text), 0);
      ack = wait_ack(b, 1, (uint32_t)r, RECV_MS);
      assert_non_null(ack);
      if (!ack->send_ack->error) break;
      pw_frame_free(ack);
      ack = NULL;
      sleep_ms(200);
    }
    assert_non_null(ack);
    snprintf(q, sizeof q,
             "SELECT seq FROM parley_events WHERE sender = 'cust0' AND "
             "msg_id = decode('%s', 'hex')",
             hex);
    long long seq = scalar(url, q);
    assert_int_equal((long long)ack->send_ack->seq, seq);
    assert_true(ack->send_ack->duplicate);
    dups += ack->send_ack->duplicate;
    last = ack->send_ack->seq;
    pw_frame_free(ack);
    /* Still one row for that id. */
    snprintf(q, sizeof q,
             "SELECT count(*) FROM parley_events WHERE sender = 'cust0' AND "
             "msg_id = decode('%s', 'hex')",
             hex);
    assert_int_equal(scalar(url, q), 1);
    wsc_close(b, 1000);
  }
  fp_stop(px);
  nodes_stop(&n);
  pgs_stop(&s);
  cur_pg = NULL;
  printf("pg_ack_lost: %d sends whose ACK was lost on node 1, resent to node 2: %d flagged "
         "duplicate with the stored seq (last %llu)\n",
         rounds, dups, (unsigned long long)last);
  assert_int_equal(dups, rounds);
}

/* Two devices of one customer, one per node, both sending into one
 * conversation without waiting for each other's ACKs. */
typedef struct writer {
  wsc *c;
  uint64_t *acked;      /* per message: its seq */
  int n_acked;
  uint64_t *seen;       /* seq -> 1 when handed */
  char **text;          /* seq -> the text handed at that seq */
  uint64_t high;        /* highest seq handed */
  int out_of_order, doubled;
  int errors, last_error; /* SendAcks with an error (retried), the last code */
  bool gone;              /* the connection closed */
} writer;

static void pump_writer(writer *w, int dev, const char *conv, int msgs, uint64_t max_seq) {
  pw_frame *f = NULL;
  int rc = wsc_recv_frame(w->c, 50, &f);
  if (rc == PARLEY_EDISCONNECTED) w->gone = true;
  if (rc != 0) return;
  if (f->body_case == PARLEY__V1__FRAME__BODY_SEND_ACK && f->send_ack->error) {
    w->errors++;
    w->last_error = (int)f->send_ack->error;
  }
  if (f->body_case == PARLEY__V1__FRAME__BODY_SEND_ACK && !f->send_ack->error &&
      f->send_ack->client_msg_id.len == 16) {
    const uint8_t *id = f->send_ack->client_msg_id.data;
    uint32_t m = ((uint32_t)id[12] << 24) | ((uint32_t)id[13] << 16) | ((uint32_t)id[14] << 8) |
                 id[15];
    if (id[10] == dev && m < (uint32_t)msgs && !w->acked[m]) {
      w->acked[m] = f->send_ack->seq;
      w->n_acked++;
    }
  } else if (f->body_case == PARLEY__V1__FRAME__BODY_DELIVER) {
    uint64_t up = 0;
    for (size_t i = 0; i < f->deliver->n_events; i++) {
      Parley__V1__Event *e = f->deliver->events[i];
      if (strcmp(e->conversation, conv) || e->seq > max_seq) continue;
      if (w->seen[e->seq]) {
        if (!e->redelivered) w->doubled++;
      } else {
        if (e->seq != w->high + 1) w->out_of_order++;
        w->seen[e->seq] = 1;
        /* The event's identity: its kind and client message id. */
        char t[48];
        int k = snprintf(t, sizeof t, "%d:", (int)e->kind);
        for (size_t b = 0; b < e->client_msg_id.len && b < 16; b++)
          k += snprintf(t + k, sizeof t - (size_t)k, "%02x", e->client_msg_id.data[b]);
        w->text[e->seq] = strdup(t);
      }
      if (e->seq > w->high) w->high = e->seq;
      up = e->seq;
    }
    if (up) ack_up_to(w->c, conv, up);
  }
  pw_frame_free(f);
}

static void test_pg_two_writers(void **unused) {
  (void)unused;
  int msgs = full_size() ? 300 : 30;
  const char *conv = "tw-1";
  pgs s;
  cur_pg = &s;
  assert_int_equal(pgs_start(&s, "parley"), 0);
  char url[256];
  pgs_conninfo(&s, url, sizeof url);
  nodes n;
  assert_int_equal(nodes_start(&n, url), 0);
  uint64_t max_seq = (uint64_t)msgs * 2 + 16;
  writer w[2];
  memset(w, 0, sizeof w);
  for (int d = 0; d < 2; d++) {
    w[d].c = login(n.port[d], d ? "tablet" : "phone");
    assert_non_null(w[d].c);
    w[d].acked = calloc((size_t)msgs, sizeof *w[d].acked);
    w[d].seen = calloc(max_seq + 1, sizeof *w[d].seen);
    w[d].text = calloc(max_seq + 1, sizeof *w[d].text);
  }
  /* The conversation exists before the race (opened by device 0). */
  assert_int_equal(send_text(w[0].c, conv, 9, 0, "open"), 0);
  pw_frame *a0 = wait_ack(w[0].c, 9, 0, RECV_MS);
  assert_non_null(a0);
  pw_frame_free(a0);
  /* Both devices send everything in small bursts, interleaved, and resend
   * what is not ACKed after a pause (a conflict between the nodes fails a
   * batch; the resend with the same id gets the next free seq). */
  int next[2] = {0, 0};
  for (int round = 0; round < 400 && (w[0].n_acked < msgs || w[1].n_acked < msgs); round++) {
    for (int d = 0; d < 2; d++) {
      for (int b = 0; b < 4 && next[d] < msgs; b++, next[d]++) {
        char t[32];
        snprintf(t, sizeof t, "d%d-m%d", d, next[d]);
        send_text(w[d].c, conv, (uint32_t)d, (uint32_t)next[d], t);
      }
    }
    for (int k = 0; k < 6; k++)
      for (int d = 0; d < 2; d++) pump_writer(&w[d], d, conv, msgs, max_seq);
    if (next[0] >= msgs && next[1] >= msgs && round % 20 == 19)
      for (int d = 0; d < 2; d++)
        for (int m = 0; m < msgs; m++)
          if (!w[d].acked[m]) {
            char t[32];
            snprintf(t, sizeof t, "d%d-m%d", d, m);
            send_text(w[d].c, conv, (uint32_t)d, (uint32_t)m, t);
          }
  }
  long long count = scalar(url, "SELECT count(*) FROM parley_events WHERE conv = 'tw-1'");
  long long mx = scalar(url, "SELECT max(seq) FROM parley_events WHERE conv = 'tw-1'");
  long long sends = scalar(url, "SELECT count(*) FROM parley_events WHERE conv = 'tw-1' "
                                "AND msg_id IS NOT NULL");
  /* Both devices are handed the whole log. */
  for (int k = 0; k < 2000 && (w[0].high < (uint64_t)mx || w[1].high < (uint64_t)mx); k++)
    for (int d = 0; d < 2; d++) pump_writer(&w[d], d, conv, msgs, max_seq);
  int differ = 0, missing = 0;
  for (uint64_t q = 1; q <= (uint64_t)mx && q <= max_seq; q++) {
    if (!w[0].text[q] || !w[1].text[q]) {
      missing++;
      continue;
    }
    if (strcmp(w[0].text[q], w[1].text[q])) differ++;
  }
  printf("pg_two_writers: %d + %d sends ACKed, log 1..%lld (%lld rows, %lld sends), "
         "handed %llu and %llu, out of order %d/%d, doubled %d/%d, missing %d, differing %d; "
         "%d + %d error ACKs retried (last codes %d, %d)%s%s\n",
         w[0].n_acked, w[1].n_acked, mx, count, sends, (unsigned long long)w[0].high,
         (unsigned long long)w[1].high, w[0].out_of_order, w[1].out_of_order, w[0].doubled,
         w[1].doubled, missing, differ, w[0].errors, w[1].errors, w[0].last_error,
         w[1].last_error, w[0].gone ? "; device 0 disconnected" : "",
         w[1].gone ? "; device 1 disconnected" : "");
  for (int d = 0; d < 2; d++) {
    wsc_close(w[d].c, 1000);
    for (uint64_t q = 0; q <= max_seq; q++) free(w[d].text[q]);
    free(w[d].text);
    free(w[d].seen);
  }
  nodes_stop(&n);
  pgs_stop(&s);
  cur_pg = NULL;
  assert_int_equal(w[0].n_acked, msgs);
  assert_int_equal(w[1].n_acked, msgs);
  /* Gap-free: as many rows as the highest seq; every send stored once. */
  assert_int_equal(count, mx);
  assert_int_equal(sends, 2 * msgs + 1);
  /* One order on every device: the same event at every seq, in order. */
  assert_int_equal(missing, 0);
  assert_int_equal(differ, 0);
  assert_int_equal(w[0].out_of_order, 0);
  assert_int_equal(w[1].out_of_order, 0);
  assert_int_equal(w[0].doubled, 0);
  assert_int_equal(w[1].doubled, 0);
  for (int d = 0; d < 2; d++) free(w[d].acked);
}

static int teardown(void **unused) {
  (void)unused;
  if (cur_nodes) nodes_stop(cur_nodes);
  if (cur_pg) pgs_stop(cur_pg);
  cur_pg = NULL;
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc > 1) cmocka_set_test_filter(argv[1]);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_pg_node_kill9, teardown),
      cmocka_unit_test_teardown(test_pg_ack_lost, teardown),
      cmocka_unit_test_teardown(test_pg_restart, teardown),
      cmocka_unit_test_teardown(test_pg_two_writers, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
