/* Two gateway nodes over one PostgreSQL database, in this process (the
 * gateway test harness, each node on its own thread and port, the same
 * schema): what one node stored, the other one knows.
 *
 *   - a Send whose ACK was lost on node 1, resent to node 2: the same seq,
 *     flagged duplicate, and the next message continues the numbering;
 *   - node 1 writes again into the conversation node 2 moved on: its batch
 *     conflicts, it re-reads the conversation, and the resend gets the next
 *     free seq (no gap, no doubled seq);
 *   - two devices on two nodes writing one conversation at once: every
 *     send ACKed once, seqs gap-free, and every device is handed the whole
 *     log in seq order, the other node's events included (LISTEN/NOTIFY);
 *   - an agent on node 2 lists, takes and answers a conversation the bot
 *     on node 1 handed off; the bot is revoked, the customer on node 1
 *     gets the answer.
 *
 * Run through with_pg, which starts the server and sets PARLEY_TEST_PG_URL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <uv.h>

#include <parley/client.h>

#include "gwharness.h"

typedef struct two {
  char *dir;
  gwh *h1, *h2;
} two;

static int setup(void **state) {
  if (!getenv("PARLEY_TEST_PG_URL")) {
    fprintf(stderr, "test_pg_nodes: run it through with_pg (PARLEY_TEST_PG_URL is not set)\n");
    return -1;
  }
  two *t = calloc(1, sizeof *t);
  t->dir = gwh_tmpdir();
  /* The same data_dir: the harness derives the PostgreSQL schema from it,
   * so both nodes share one log. */
  t->h1 = gwh_start(t->dir, NULL, NULL);
  t->h2 = gwh_start(t->dir, NULL, NULL);
  if (!t->h1 || !t->h2) return -1;
  *state = t;
  return 0;
}

static int teardown(void **state) {
  two *t = *state;
  gwh_stop(t->h1);
  gwh_stop(t->h2);
  gwh_rmdir(t->dir);
  free(t);
  return 0;
}

static uint64_t send_acked(wsc *c, const char *conv, uint32_t id, const char *text,
                           bool *dup, int timeout_ms) {
  /* Resend after each ack_timeout-like pause, as a client does. */
  for (int waited = 0; waited < timeout_ms; waited += 500) {
    assert_int_equal(gwh_send_text(c, conv, id, text, 0), 0);
    pw_frame *a = gwh_wait_ack(c, id, 500);
    if (!a) continue;
    uint64_t seq = a->send_ack->error ? 0 : a->send_ack->seq;
    if (dup) *dup = a->send_ack->duplicate;
    int err = a->send_ack->error;
    pw_frame_free(a);
    if (!err) return seq;
  }
  return 0;
}

static void test_resend_to_other_node(void **state) {
  two *t = *state;
  wsc *a = gwh_login(t->h1, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  wsc *b = gwh_login(t->h2, "carol", R_CUSTOMER, "carol-token", "tablet", NULL, NULL);
  assert_non_null(a);
  assert_non_null(b);
  bool dup = true;
  uint64_t s1 = send_acked(a, "c-x", 7, "hello", &dup, 5000);
  assert_int_not_equal(s1, 0);
  assert_false(dup);
  /* The ACK "was lost": the same id goes to node 2. */
  uint64_t s2 = send_acked(b, "c-x", 7, "hello", &dup, 5000);
  assert_int_equal(s2, s1);
  assert_true(dup);
  /* Node 2 continues the numbering. */
  uint64_t s3 = send_acked(b, "c-x", 8, "next", &dup, 5000);
  assert_int_equal(s3, s1 + 1);
  assert_false(dup);
  /* Node 1 still believes the conversation ends at s1: its write
   * conflicts, it re-reads, and the resend lands at s3 + 1. */
  uint64_t s4 = send_acked(a, "c-x", 9, "again", &dup, 10000);
  assert_int_equal(s4, s3 + 1);
  assert_false(dup);
  wsc_close(a, 1000);
  wsc_close(b, 1000);
}

/* ---------------------------------------- two devices, two nodes, at once */

#define BOTH_MSGS 40

#define MAX_SEQ 256

/* When each seq was ACKed to its sender and handed to each device, for
 * the delay of delivery from one node to the other. */
static uint64_t acked_at[MAX_SEQ], handed_at[2][MAX_SEQ];
static int acked_by[MAX_SEQ];

static uint64_t now_us(void) { return uv_hrtime() / 1000u; }

typedef struct dev {
  int idx;
  parley_client *c;
  int next, results, acked;
  uint64_t seqs[BOTH_MSGS];
  uint64_t last_delivered;
  int out_of_order;
  bool closed;
} dev;

static int open_devs;

static void d_send(dev *d) {
  while (d->next < BOTH_MSGS && d->next - d->results < 4) {
    char text[32];
    snprintf(text, sizeof text, "m%d", d->next);
    parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = text};
    if (parley_client_send(d->c, "c-both", &ct, NULL, NULL, 0, (void *)(intptr_t)d->next))
      return;
    d->next++;
  }
}

static void d_result(parley_client *c, const parley_send_result *r, void *sud, void *ud) {
  (void)c;
  dev *d = ud;
  d->results++;
  if (r->status == 0) {
    d->seqs[(intptr_t)sud] = r->seq;
    d->acked++;
    if (r->seq < MAX_SEQ) {
      acked_at[r->seq] = now_us();
      acked_by[r->seq] = d->idx;
    }
  }
  d_send(d);
}

/* Both devices stop once both sent everything and both were handed the
 * whole log (delivery between the nodes), or at the deadline. */
typedef struct watch {
  dev *d;
  uint64_t deadline;
  uint64_t both_at; /* when the second device reached the end */
  uint64_t done_sending_at;
} watch;

static void on_watch(uv_timer_t *t) {
  watch *w = t->data;
  uint64_t now = uv_now(t->loop);
  bool sent = w->d[0].results == BOTH_MSGS && w->d[1].results == BOTH_MSGS;
  if (sent && !w->done_sending_at) w->done_sending_at = now;
  bool same = w->d[0].last_delivered == w->d[1].last_delivered &&
              w->d[0].last_delivered >= 2 * BOTH_MSGS + 1;
  if (sent && same && !w->both_at) w->both_at = now;
  if ((sent && same) || now > w->deadline) {
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, NULL);
    for (int i = 0; i < 2; i++) parley_client_stop(w->d[i].c, 500);
  }
}

static void d_event(parley_client *c, const parley_event *ev, void *ud) {
  (void)c;
  dev *d = ud;
  if (strcmp(ev->conversation, "c-both")) return;
  if (ev->seq != d->last_delivered + 1) d->out_of_order++;
  if (ev->seq < MAX_SEQ) handed_at[d->idx][ev->seq] = now_us();
  d->last_delivered = ev->seq;
}

static void d_state(parley_client *c, parley_conn_state st, int status, void *ud) {
  (void)c;
  (void)status;
  dev *d = ud;
  if (st == PARLEY_CONN_READY) d_send(d);
  if (st == PARLEY_CONN_CLOSED && !d->closed) {
    d->closed = true;
    open_devs--;
  }
}

static long long pg_count(const char *dir, const char *sql) {
  unsigned long hsh = 5381;
  for (const char *p = dir; *p; p++) hsh = hsh * 33 + (unsigned char)*p;
  char ci[512];
  snprintf(ci, sizeof ci, "%s options='-csearch_path=gwh_%lx'", getenv("PARLEY_TEST_PG_URL"),
           hsh);
  PGconn *c = PQconnectdb(ci);
  long long v = -1;
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) == PGRES_TUPLES_OK) v = atoll(PQgetvalue(r, 0, 0));
  else fprintf(stderr, "%s: %s", sql, PQerrorMessage(c));
  PQclear(r);
  PQfinish(c);
  return v;
}

static void test_two_devices_two_nodes(void **state) {
  two *t = *state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  dev d[2];
  memset(d, 0, sizeof d);
  d[0].idx = 0;
  d[1].idx = 1;
  /* The customer opens the conversation on node 1 first. */
  wsc *a = gwh_login(t->h1, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  bool dup;
  assert_int_not_equal(send_acked(a, "c-both", 1, "start", &dup, 5000), 0);
  wsc_close(a, 1000);
  for (int i = 0; i < 2; i++) {
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d/", gwh_port(i ? t->h2 : t->h1));
    parley_client_options o = PARLEY_CLIENT_OPTIONS_INIT;
    o.url = url;
    o.principal = "carol";
    o.token = "carol-token";
    o.device = i ? "tablet" : "laptop";
    o.role = PARLEY_ROLE_CUSTOMER;
    o.loop = &loop;
    o.cb.on_send_result = d_result;
    o.cb.on_event = d_event;
    o.cb.on_state = d_state;
    o.user_data = &d[i];
    o.tuning.ack_timeout_ms = 400;
    o.tuning.retry_max_ms = 800;
    o.tuning.max_attempts = 1000;
    o.tuning.gap_timeout_ms = 50;
    assert_int_equal(parley_client_new(&o, &d[i].c), 0);
    assert_int_equal(parley_client_start(d[i].c), 0);
    open_devs++;
  }
  uv_timer_t wt;
  watch w = {.d = d, .deadline = uv_now(&loop) + 20000};
  uv_timer_init(&loop, &wt);
  wt.data = &w;
  uv_timer_start(&wt, on_watch, 5, 5);
  uv_run(&loop, UV_RUN_DEFAULT);
  for (int i = 0; i < 2; i++) parley_client_free(d[i].c);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  assert_int_equal(open_devs, 0);

  /* Every send ACKed once, at a seq no other send got. */
  uint64_t all[2 * BOTH_MSGS];
  int n = 0;
  for (int i = 0; i < 2; i++) {
    assert_int_equal(d[i].acked, BOTH_MSGS);
    for (int m = 0; m < BOTH_MSGS; m++) {
      if (m) assert_true(d[i].seqs[m] > d[i].seqs[m - 1]); /* in send order */
      all[n++] = d[i].seqs[m];
    }
    /* What each device was handed is the log's order: 1, 2, 3, ... */
    assert_int_equal(d[i].out_of_order, 0);
  }
  for (int x = 0; x < n; x++)
    for (int y = x + 1; y < n; y++) assert_true(all[x] != all[y]);
  /* The log: gap-free, each message once. */
  long long cnt = pg_count(t->dir, "SELECT count(*) FROM parley_events WHERE conv='c-both'");
  long long mx = pg_count(t->dir, "SELECT max(seq) FROM parley_events WHERE conv='c-both'");
  assert_int_equal(cnt, mx);
  assert_true(cnt >= 2 * BOTH_MSGS + 1);
  assert_int_equal(pg_count(t->dir, "SELECT count(*) FROM parley_events WHERE conv='c-both' "
                                    "AND msg_id IS NOT NULL"),
                   2 * BOTH_MSGS + 1);
  printf("two devices on two nodes: %d sends, log 1..%lld gap-free; devices were handed "
         "%llu and %llu events in order, %llu ms after the last ACK\n",
         n, mx, (unsigned long long)d[0].last_delivered, (unsigned long long)d[1].last_delivered,
         (unsigned long long)(w.both_at >= w.done_sending_at ? w.both_at - w.done_sending_at : 0));
  /* The delay from an ACK on one node to the other node's device. */
  uint64_t delays[2 * BOTH_MSGS];
  int nd = 0;
  for (uint64_t q = 1; q < MAX_SEQ && q <= (uint64_t)mx; q++) {
    int other = 1 - acked_by[q];
    if (acked_at[q] && handed_at[other][q] && nd < 2 * BOTH_MSGS)
      delays[nd++] = handed_at[other][q] > acked_at[q] ? handed_at[other][q] - acked_at[q] : 0;
  }
  for (int x = 1; x < nd; x++)
    for (int y = x; y > 0 && delays[y - 1] > delays[y]; y--) {
      uint64_t tmp = delays[y];
      delays[y] = delays[y - 1];
      delays[y - 1] = tmp;
    }
  if (nd)
    printf("delivery to the other node's device after the sender's ACK: p50 %.2f ms, "
           "max %.2f ms (%d events)\n",
           delays[nd / 2] / 1000.0, delays[nd - 1] / 1000.0, nd);
  /* Delivery between nodes: each device was handed the whole log, its
   * own events and the other node's. */
  assert_int_equal(d[0].last_delivered, mx);
  assert_int_equal(d[1].last_delivered, mx);
}

/* ------------------------------------------- an agent on the other node */

static int action_code(wsc *c, const char *conv, uint32_t id, Parley__V1__Action *act,
                       uint64_t epoch, uint64_t *seq) {
  assert_int_equal(gwh_send_action(c, conv, id, act, epoch), 0);
  pw_frame *a = gwh_wait_ack(c, id, 3000);
  assert_non_null(a);
  int code = (int)a->send_ack->error;
  if (seq) *seq = a->send_ack->seq;
  pw_frame_free(a);
  return code;
}

/* The bot and the customer on node 1, the agent on node 2: the handoff
 * is listed to the agent, the agent's take on node 2 revokes the bot on
 * node 1, and the agent's reply reaches the customer on node 1. */
/* Runs on a fresh pair of nodes (its own schema): conversations of the
 * tests before it would be assigned to this bot, which never commits,
 * and their backlog would hold its window. */
static void test_agent_takes_on_other_node(void **state) {
  two *t = *state;
  wsc *bot = gwh_login(t->h1, "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  wsc *cu = gwh_login(t->h1, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  wsc *alice = gwh_login(t->h2, "alice", R_AGENT, "alice-token", "desk", NULL, NULL);
  assert_non_null(bot);
  assert_non_null(cu);
  assert_non_null(alice);
  bool dup;
  assert_int_not_equal(send_acked(cu, "c-agent", 1, "I want a human", &dup, 5000), 0);
  pw_frame *as = gwh_wait(bot, PARLEY__V1__FRAME__BODY_ASSIGN, 3000);
  assert_non_null(as);
  assert_string_equal(as->assign->conversation, "c-agent");
  uint64_t epoch = as->assign->epoch;
  pw_frame_free(as);
  Parley__V1__Handoff ho = PARLEY__V1__HANDOFF__INIT;
  ho.queue = "billing";
  ho.note = "refund";
  Parley__V1__Action act = PARLEY__V1__ACTION__INIT;
  act.body_case = PARLEY__V1__ACTION__BODY_HANDOFF;
  act.handoff = &ho;
  uint64_t hseq = 0;
  assert_int_equal(action_code(bot, "c-agent", 50, &act, epoch, &hseq), 0);
  /* Node 2 lists it from the database. */
  Parley__V1__QueueRequest qr = PARLEY__V1__QUEUE_REQUEST__INIT;
  qr.request_id = 5;
  pw_frame qf = PARLEY__V1__FRAME__INIT;
  qf.body_case = PARLEY__V1__FRAME__BODY_QUEUE_REQUEST;
  qf.queue_request = &qr;
  wsc_send_frame(alice, &qf);
  pw_frame *qres = gwh_wait(alice, PARLEY__V1__FRAME__BODY_QUEUE_RESULT, 3000);
  assert_non_null(qres);
  assert_int_equal(qres->queue_result->n_items, 1);
  assert_string_equal(qres->queue_result->items[0]->conversation, "c-agent");
  assert_string_equal(qres->queue_result->items[0]->note, "refund");
  pw_frame_free(qres);
  /* The take on node 2. */
  Parley__V1__Take tk = PARLEY__V1__TAKE__INIT;
  Parley__V1__Action take = PARLEY__V1__ACTION__INIT;
  take.body_case = PARLEY__V1__ACTION__BODY_TAKE;
  take.take = &tk;
  uint64_t tseq = 0;
  assert_int_equal(action_code(alice, "c-agent", 70, &take, 0, &tseq), 0);
  assert_int_equal(tseq, hseq + 1);
  /* The bot on node 1 sees the take and is revoked. */
  pw_frame *rv = gwh_wait(bot, PARLEY__V1__FRAME__BODY_REVOKE, 3000);
  assert_non_null(rv);
  assert_string_equal(rv->revoke->reason, "taken");
  pw_frame_free(rv);
  /* The agent has the history; its reply reaches the customer on node 1. */
  uint64_t seqs[16];
  int n = gwh_collect(alice, "c-agent", tseq, 3000, seqs, NULL, 16);
  assert_int_equal(n, (int)tseq);
  assert_int_not_equal(send_acked(alice, "c-agent", 71, "Hi, I am Alice", &dup, 5000), 0);
  n = gwh_collect(cu, "c-agent", tseq + 1, 3000, seqs, NULL, 16);
  assert_true(n >= 1);
  assert_int_equal(seqs[n - 1], tseq + 1);
  wsc_close(bot, 1000);
  wsc_close(cu, 1000);
  wsc_close(alice, 1000);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_resend_to_other_node),
      cmocka_unit_test(test_two_devices_two_nodes),
      cmocka_unit_test_setup_teardown(test_agent_takes_on_other_node, setup, teardown),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
