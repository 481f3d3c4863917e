/* Conversations against a real gateway: fetch paging, bot commits (state,
 * tags, idempotence), handoff to an agent queue and back, bot fleets with
 * failover and epoch fencing, and authorization refusals. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <parley/error.h>

#include "gwharness.h"

#define E(x) PARLEY__V1__ERROR_CODE__ERROR_##x

/* The shared fixture (gwharness.h): a gateway in a fresh directory. */
typedef gwh_fx fx;

static pw_frame *fetch(wsc *c, const char *conv, uint64_t from, uint64_t to, uint32_t limit,
                       uint64_t req) {
  Parley__V1__Fetch fe = PARLEY__V1__FETCH__INIT;
  fe.request_id = req;
  fe.conversation = (char *)conv;
  fe.from_seq = from;
  fe.to_seq = to;
  fe.limit = limit;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_FETCH;
  f.fetch = &fe;
  if (wsc_send_frame(c, &f) != 0) return NULL;
  for (int i = 0; i < 100; i++) {
    pw_frame *r = gwh_wait(c, PARLEY__V1__FRAME__BODY_FETCH_RESULT, 2000);
    if (!r || r->fetch_result->request_id == req) return r;
    pw_frame_free(r);
  }
  return NULL;
}

static uint64_t send_ok(wsc *c, const char *conv, uint32_t id, const char *text,
                        uint64_t epoch) {
  assert_int_equal(gwh_send_text(c, conv, id, text, epoch), 0);
  pw_frame *a = gwh_wait_ack(c, id, 2000);
  assert_non_null(a);
  assert_int_equal(a->send_ack->error, 0);
  uint64_t seq = a->send_ack->seq;
  pw_frame_free(a);
  return seq;
}

static int send_code(wsc *c, const char *conv, uint32_t id, const char *text, uint64_t epoch) {
  assert_int_equal(gwh_send_text(c, conv, id, text, epoch), 0);
  pw_frame *a = gwh_wait_ack(c, id, 2000);
  assert_non_null(a);
  int code = (int)a->send_ack->error;
  if (code) assert_int_equal(a->send_ack->seq, 0);
  pw_frame_free(a);
  return code;
}

static int action_code(wsc *c, const char *conv, uint32_t id, Parley__V1__Action *act,
                       uint64_t epoch, uint64_t *seq) {
  assert_int_equal(gwh_send_action(c, conv, id, act, epoch), 0);
  pw_frame *a = gwh_wait_ack(c, id, 2000);
  assert_non_null(a);
  int code = (int)a->send_ack->error;
  if (seq) *seq = a->send_ack->seq;
  pw_frame_free(a);
  return code;
}

static void test_fetch_paging(void **state) {
  fx *f = *state;
  wsc *cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  assert_non_null(cu);
  for (uint32_t i = 1; i <= 10; i++) send_ok(cu, "c-fetch", i, "m", 0);
  /* 12 events: OPENED, ASSIGNED and 10 messages. Pages of 5 from seq 1. */
  uint64_t next = 1, got = 0;
  int pages = 0;
  for (;;) {
    pw_frame *r = fetch(cu, "c-fetch", next, 0, 5, 100 + (uint64_t)pages);
    assert_non_null(r);
    Parley__V1__FetchResult *fr = r->fetch_result;
    assert_int_equal(fr->error, 0);
    assert_int_equal(fr->last_seq, 12);
    for (size_t i = 0; i < fr->n_events; i++) assert_int_equal(fr->events[i]->seq, next + i);
    got += fr->n_events;
    next += fr->n_events;
    pages++;
    bool end = fr->end;
    assert_true(fr->n_events <= 5);
    pw_frame_free(r);
    if (end) break;
    assert_true(pages < 10);
  }
  assert_int_equal(got, 12);
  assert_int_equal(pages, 3);
  /* A bounded range ends at to_seq. */
  pw_frame *r = fetch(cu, "c-fetch", 4, 6, 0, 200);
  assert_non_null(r);
  assert_int_equal(r->fetch_result->n_events, 3);
  assert_true(r->fetch_result->end);
  assert_int_equal(r->fetch_result->events[0]->kind, PARLEY__V1__EVENT_KIND__EVENT_MESSAGE);
  pw_frame_free(r);
  /* Past the end: empty and end. */
  r = fetch(cu, "c-fetch", 13, 0, 0, 201);
  assert_non_null(r);
  assert_int_equal(r->fetch_result->n_events, 0);
  assert_true(r->fetch_result->end);
  pw_frame_free(r);
  /* Unknown conversation. */
  r = fetch(cu, "c-nothing", 1, 0, 0, 202);
  assert_non_null(r);
  assert_int_equal(r->fetch_result->error, E(NOT_FOUND));
  pw_frame_free(r);
  wsc_close(cu, 1000);
}

static void test_commit_state_tags(void **state) {
  fx *f = *state;
  wsc *bot = gwh_login(f->h, "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  wsc *cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  assert_non_null(bot);
  send_ok(cu, "c-commit", 1, "where is my order", 0);
  pw_frame *as = gwh_wait(bot, PARLEY__V1__FRAME__BODY_ASSIGN, 2000);
  assert_non_null(as);
  uint64_t epoch = as->assign->epoch;
  pw_frame_free(as);
  uint64_t seqs[8];
  assert_int_equal(gwh_collect(bot, "c-commit", 3, 2000, seqs, NULL, 8), 3);
  /* Above what was delivered: refused, nothing applied. */
  pw_frame *r = gwh_commit(bot, "c-commit", epoch, 9, NULL, NULL, NULL, 1);
  assert_non_null(r);
  assert_int_equal(r->commit_result->outcomes[0]->error, E(ACK_OUT_OF_RANGE));
  pw_frame_free(r);
  r = gwh_commit(bot, "c-commit", epoch, 3, "step", "\"asked\"", "order", 2);
  assert_non_null(r);
  assert_int_equal(r->commit_result->n_outcomes, 1);
  assert_int_equal(r->commit_result->outcomes[0]->error, 0);
  assert_false(r->commit_result->outcomes[0]->duplicate);
  assert_int_equal(r->commit_result->outcomes[0]->state_version, 1);
  pw_frame_free(r);
  /* STATE_CHANGED (4) and TAGGED (5) follow in the stream. */
  assert_int_equal(gwh_collect(cu, "c-commit", 5, 2000, seqs, NULL, 8), 5);
  pw_frame *fr = fetch(cu, "c-commit", 4, 5, 0, 3);
  assert_non_null(fr);
  assert_int_equal(fr->fetch_result->n_events, 2);
  assert_int_equal(fr->fetch_result->events[0]->kind, PARLEY__V1__EVENT_KIND__EVENT_STATE_CHANGED);
  assert_string_equal(fr->fetch_result->events[0]->state_keys[0], "step");
  assert_int_equal(fr->fetch_result->events[1]->kind, PARLEY__V1__EVENT_KIND__EVENT_TAGGED);
  assert_int_equal(fr->fetch_result->events[1]->n_tags, 1);
  assert_string_equal(fr->fetch_result->events[1]->tags[0], "order");
  pw_frame_free(fr);
  /* The same commit again: duplicate, nothing applied. */
  r = gwh_commit(bot, "c-commit", epoch, 3, "step", "\"again\"", "other", 4);
  assert_non_null(r);
  assert_true(r->commit_result->outcomes[0]->duplicate);
  assert_int_equal(r->commit_result->outcomes[0]->state_version, 1);
  pw_frame_free(r);
  /* A stale epoch is refused. */
  r = gwh_commit(bot, "c-commit", epoch + 1, 5, NULL, NULL, NULL, 5);
  assert_non_null(r);
  assert_int_equal(r->commit_result->outcomes[0]->error, E(STALE_EPOCH));
  pw_frame_free(r);
  /* A reconnecting bot gets the state, watermark and tags in Assign. */
  wsc_abort(bot);
  bot = gwh_login(f->h, "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  as = gwh_wait(bot, PARLEY__V1__FRAME__BODY_ASSIGN, 2000);
  assert_non_null(as);
  assert_true(as->assign->epoch > epoch);
  assert_int_equal(as->assign->acked_seq, 3);
  assert_int_equal(as->assign->n_state, 1);
  assert_string_equal(as->assign->state[0]->key, "step");
  assert_memory_equal(as->assign->state[0]->value.data, "\"asked\"", 7);
  assert_int_equal(as->assign->n_tags, 1);
  assert_int_equal(as->assign->state_version, 1);
  pw_frame_free(as);
  /* Its own STATE_CHANGED and TAGGED events (4, 5) come after acked_seq,
   * never pushed to this bot before. */
  bool red[8];
  int n = gwh_collect(bot, "c-commit", 5, 2000, seqs, red, 8);
  assert_int_equal(n, 2);
  assert_int_equal(seqs[0], 4);
  wsc_close(bot, 1000);
  wsc_close(cu, 1000);
}

static void test_handoff_and_back(void **state) {
  fx *f = *state;
  wsc *bot = gwh_login(f->h, "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  wsc *cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  /* Agent alice watches billing and sales; bob only sales. */
  wsc *alice = gwh_login(f->h, "alice", R_AGENT, "alice-token", "desk", NULL, NULL);
  wsc *bob = gwh_login(f->h, "bob", R_AGENT, "bob-token", "desk", NULL, NULL);
  assert_non_null(alice);
  assert_non_null(bob);
  send_ok(cu, "c-hand", 1, "I want a human", 0);
  pw_frame *as = gwh_wait(bot, PARLEY__V1__FRAME__BODY_ASSIGN, 2000);
  assert_non_null(as);
  uint64_t epoch = as->assign->epoch;
  pw_frame_free(as);
  /* The bot hands off to billing. */
  Parley__V1__Handoff ho = PARLEY__V1__HANDOFF__INIT;
  ho.queue = "billing";
  ho.note = "refund";
  Parley__V1__Action act = PARLEY__V1__ACTION__INIT;
  act.body_case = PARLEY__V1__ACTION__BODY_HANDOFF;
  act.handoff = &ho;
  uint64_t seq = 0;
  assert_int_equal(action_code(bot, "c-hand", 50, &act, epoch, &seq), 0);
  assert_int_equal(seq, 4);
  /* Waiting in the queue, the conversation stays with the bot: it may
   * still talk to the customer until an agent takes it. */
  assert_int_equal(send_code(bot, "c-hand", 51, "an agent is on the way", epoch), 0);
  pw_frame *up = gwh_wait(alice, PARLEY__V1__FRAME__BODY_QUEUE_UPDATE, 2000);
  assert_non_null(up);
  assert_string_equal(up->queue_update->item->conversation, "c-hand");
  assert_string_equal(up->queue_update->item->queue, "billing");
  assert_string_equal(up->queue_update->item->note, "refund");
  assert_false(up->queue_update->removed);
  pw_frame_free(up);
  /* QueueRequest lists it for alice. */
  Parley__V1__QueueRequest qr = PARLEY__V1__QUEUE_REQUEST__INIT;
  qr.request_id = 5;
  pw_frame qf = PARLEY__V1__FRAME__INIT;
  qf.body_case = PARLEY__V1__FRAME__BODY_QUEUE_REQUEST;
  qf.queue_request = &qr;
  wsc_send_frame(alice, &qf);
  pw_frame *qres = gwh_wait(alice, PARLEY__V1__FRAME__BODY_QUEUE_RESULT, 2000);
  assert_non_null(qres);
  assert_int_equal(qres->queue_result->n_items, 1);
  assert_string_equal(qres->queue_result->items[0]->customer, "carol");
  pw_frame_free(qres);
  /* Bob does not serve billing: taking it is forbidden. */
  Parley__V1__Take tk = PARLEY__V1__TAKE__INIT;
  Parley__V1__Action take = PARLEY__V1__ACTION__INIT;
  take.body_case = PARLEY__V1__ACTION__BODY_TAKE;
  take.take = &tk;
  assert_int_equal(action_code(bob, "c-hand", 60, &take, 0, NULL), E(FORBIDDEN));
  /* Alice takes it and gets the history from seq 1. */
  assert_int_equal(action_code(alice, "c-hand", 70, &take, 0, &seq), 0);
  assert_int_equal(seq, 6);
  /* The bot sees the take (seq 6), then the Revoke, and can no longer
   * send; it may still commit what it handled. */
  uint64_t seqs[16];
  int n = gwh_collect(bot, "c-hand", 6, 2000, seqs, NULL, 16);
  assert_true(n >= 1);
  assert_int_equal(seqs[n - 1], 6);
  pw_frame *rv = gwh_wait(bot, PARLEY__V1__FRAME__BODY_REVOKE, 2000);
  assert_non_null(rv);
  assert_string_equal(rv->revoke->reason, "taken");
  pw_frame_free(rv);
  assert_int_equal(send_code(bot, "c-hand", 52, "still here?", epoch), E(FORBIDDEN));
  /* The answer comes first, then the queue update, then the stream. */
  up = gwh_wait(alice, PARLEY__V1__FRAME__BODY_QUEUE_UPDATE, 2000);
  assert_non_null(up);
  assert_true(up->queue_update->removed);
  pw_frame_free(up);
  n = gwh_collect(alice, "c-hand", 6, 2000, seqs, NULL, 16);
  assert_int_equal(n, 6);
  assert_int_equal(seqs[0], 1);
  /* Alice replies; the customer sees it, the bot does not. */
  uint64_t s7 = send_ok(alice, "c-hand", 71, "Hi, I am Alice", 0);
  assert_int_equal(s7, 7);
  assert_int_equal(gwh_collect(cu, "c-hand", 7, 2000, seqs, NULL, 16), 7);
  /* The bot commits what it handled before the take. */
  pw_frame *r = gwh_commit(bot, "c-hand", epoch, 6, NULL, NULL, NULL, 9);
  assert_non_null(r);
  assert_int_equal(r->commit_result->outcomes[0]->error, 0);
  pw_frame_free(r);
  /* Hand back: the bot gets Assign with a new epoch. */
  Parley__V1__HandBack hb = PARLEY__V1__HAND_BACK__INIT;
  Parley__V1__Action back = PARLEY__V1__ACTION__INIT;
  back.body_case = PARLEY__V1__ACTION__BODY_HAND_BACK;
  back.hand_back = &hb;
  assert_int_equal(action_code(alice, "c-hand", 72, &back, 0, &seq), 0);
  assert_int_equal(seq, 8);
  as = gwh_wait(bot, PARLEY__V1__FRAME__BODY_ASSIGN, 2000);
  assert_non_null(as);
  assert_string_equal(as->assign->conversation, "c-hand");
  assert_int_equal(as->assign->epoch, epoch + 1);
  assert_int_equal(as->assign->acked_seq, 6);
  pw_frame_free(as);
  n = gwh_collect(bot, "c-hand", 8, 2000, seqs, NULL, 16);
  assert_true(n >= 1);
  /* The old epoch is now stale; the new one works. Alice is out. */
  assert_int_equal(send_code(bot, "c-hand", 53, "old epoch", epoch), E(STALE_EPOCH));
  assert_int_equal(send_code(bot, "c-hand", 54, "welcome back", epoch + 1), 0);
  assert_int_equal(send_code(alice, "c-hand", 73, "me again", 0), E(FORBIDDEN));
  /* Alice's ACK flushed after she handed it back is still accepted: the
   * next frame she gets is the Pong, not an error. */
  gwh_ack(alice, "c-hand", 7);
  Parley__V1__Ping pg = PARLEY__V1__PING__INIT;
  pg.nonce = 5;
  pw_frame pf = PARLEY__V1__FRAME__INIT;
  pf.body_case = PARLEY__V1__FRAME__BODY_PING;
  pf.ping = &pg;
  wsc_send_frame(alice, &pf);
  for (;;) {
    pw_frame *x = NULL;
    assert_int_equal(wsc_recv_frame(alice, 2000, &x), 0);
    assert_int_not_equal(x->body_case, PARLEY__V1__FRAME__BODY_ERROR);
    bool pong = x->body_case == PARLEY__V1__FRAME__BODY_PONG;
    pw_frame_free(x);
    if (pong) break;
  }
  /* Close: further sends are refused with CLOSED. */
  Parley__V1__Close cl = PARLEY__V1__CLOSE__INIT;
  cl.reason = "solved";
  Parley__V1__Action close = PARLEY__V1__ACTION__INIT;
  close.body_case = PARLEY__V1__ACTION__BODY_CLOSE;
  close.close = &cl;
  assert_int_equal(action_code(bot, "c-hand", 55, &close, epoch + 1, NULL), 0);
  assert_int_equal(send_code(cu, "c-hand", 2, "one more thing", 0), E(CLOSED));
  wsc_close(bob, 1000);
  wsc_close(alice, 1000);
  wsc_close(cu, 1000);
  wsc_close(bot, 1000);
}

static void test_fleet_failover(void **state) {
  fx *f = *state;
  wsc *b1 = gwh_login(f->h, "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  wsc *b2 = gwh_login(f->h, "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  wsc *cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  assert_non_null(b1);
  assert_non_null(b2);
  /* Four conversations are balanced over the two replicas. */
  const char *convs[4] = {"c-f1", "c-f2", "c-f3", "c-f4"};
  for (uint32_t i = 0; i < 4; i++) send_ok(cu, convs[i], 10 + i, "hi", 0);
  int on1 = 0, on2 = 0;
  char held1[4][16];
  uint64_t ep1[4];
  for (int i = 0; i < 4; i++) {
    pw_frame *a = gwh_wait(b1, PARLEY__V1__FRAME__BODY_ASSIGN, 300);
    if (!a) break;
    snprintf(held1[on1], sizeof held1[on1], "%s", a->assign->conversation);
    ep1[on1++] = a->assign->epoch;
    pw_frame_free(a);
  }
  for (int i = 0; i < 4; i++) {
    pw_frame *a = gwh_wait(b2, PARLEY__V1__FRAME__BODY_ASSIGN, 300);
    if (!a) break;
    on2++;
    pw_frame_free(a);
  }
  assert_int_equal(on1 + on2, 4);
  assert_int_equal(on1, 2);
  assert_int_equal(on2, 2);
  /* Replica 1 dies: its conversations move to replica 2 with a new epoch. */
  wsc_abort(b1);
  int moved = 0;
  uint64_t new_epoch = 0;
  for (int i = 0; i < 2; i++) {
    pw_frame *a = gwh_wait(b2, PARLEY__V1__FRAME__BODY_ASSIGN, 3000);
    assert_non_null(a);
    for (int k = 0; k < on1; k++)
      if (!strcmp(a->assign->conversation, held1[k])) {
        assert_true(a->assign->epoch > ep1[k]);
        if (k == 0) new_epoch = a->assign->epoch;
        moved++;
      }
    pw_frame_free(a);
  }
  assert_int_equal(moved, 2);
  /* Frames with the old epoch are refused; the new epoch works. */
  assert_int_equal(send_code(b2, held1[0], 900, "old", ep1[0]), E(STALE_EPOCH));
  pw_frame *r = gwh_commit(b2, held1[0], ep1[0], 1, NULL, NULL, NULL, 77);
  assert_non_null(r);
  assert_int_equal(r->commit_result->outcomes[0]->error, E(STALE_EPOCH));
  pw_frame_free(r);
  assert_int_equal(send_code(b2, held1[0], 901, "new", new_epoch), 0);
  wsc_close(b2, 1000);
  wsc_close(cu, 1000);
}

static void test_forbidden(void **state) {
  fx *f = *state;
  wsc *cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  send_ok(cu, "c-mine", 1, "private", 0);
  /* dave authenticates with a token minted from the customer secret. */
  char tok[65];
  assert_int_equal(gwh_customer_token("dave", tok), 0);
  wsc *dave = gwh_login(f->h, "dave", R_CUSTOMER, tok, "x", NULL, NULL);
  assert_non_null(dave);
  pw_frame *r = fetch(dave, "c-mine", 1, 0, 0, 1);
  assert_non_null(r);
  assert_int_equal(r->fetch_result->error, E(FORBIDDEN));
  assert_int_equal(r->fetch_result->n_events, 0);
  pw_frame_free(r);
  assert_int_equal(send_code(dave, "c-mine", 1, "let me in", 0), E(FORBIDDEN));
  /* An agent who has not taken it may not tag or read it. */
  wsc *alice = gwh_login(f->h, "alice", R_AGENT, "alice-token", "desk", NULL, NULL);
  char *add[1] = {"vip"};
  Parley__V1__Tag tg = PARLEY__V1__TAG__INIT;
  tg.add = add;
  tg.n_add = 1;
  Parley__V1__Action act = PARLEY__V1__ACTION__INIT;
  act.body_case = PARLEY__V1__ACTION__BODY_TAG;
  act.tag = &tg;
  assert_int_equal(action_code(alice, "c-mine", 5, &act, 0, NULL), E(FORBIDDEN));
  r = fetch(alice, "c-mine", 1, 0, 0, 2);
  assert_non_null(r);
  assert_int_equal(r->fetch_result->error, E(FORBIDDEN));
  pw_frame_free(r);
  /* Another bot principal may not commit on it. */
  wsc *other = gwh_login(f->h, "otherbot", R_BOT, "other-token", NULL, NULL, NULL);
  r = gwh_commit(other, "c-mine", 1, 1, NULL, NULL, NULL, 3);
  assert_non_null(r);
  assert_int_equal(r->commit_result->outcomes[0]->error, E(FORBIDDEN));
  pw_frame_free(r);
  /* A customer may not tag; a bot may not Ack. */
  assert_int_equal(action_code(cu, "c-mine", 2, &act, 0, NULL), E(FORBIDDEN));
  gwh_ack(other, "c-mine", 1);
  pw_frame *e = gwh_wait(other, PARLEY__V1__FRAME__BODY_ERROR, 2000);
  assert_non_null(e);
  assert_int_equal(e->error->code, E(PROTOCOL));
  pw_frame_free(e);
  /* Nothing was stored by any refusal: carol's conversation has 3 events. */
  r = fetch(cu, "c-mine", 1, 0, 0, 4);
  assert_non_null(r);
  assert_int_equal(r->fetch_result->last_seq, 3);
  pw_frame_free(r);
  wsc_close(other, 1000);
  wsc_close(alice, 1000);
  wsc_close(dave, 1000);
  wsc_close(cu, 1000);
}

static void test_bot_crash_and_actions(void **state) {
  fx *f = *state;
  wsc *bot = gwh_login(f->h, "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  wsc *cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  send_ok(cu, "c-crash", 1, "hello", 0);
  pw_frame *as = gwh_wait(bot, PARLEY__V1__FRAME__BODY_ASSIGN, 2000);
  assert_non_null(as);
  pw_frame_free(as);
  uint64_t seqs[8];
  bool red[8];
  assert_int_equal(gwh_collect(bot, "c-crash", 3, 2000, seqs, red, 8), 3);
  assert_false(red[2]);
  /* The bot dies before committing: the reconnected bot gets the events
   * again, flagged, with acked_seq 0 and no state. */
  wsc_abort(bot);
  bot = gwh_login(f->h, "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  as = gwh_wait(bot, PARLEY__V1__FRAME__BODY_ASSIGN, 2000);
  assert_non_null(as);
  assert_int_equal(as->assign->acked_seq, 0);
  assert_int_equal(as->assign->n_state, 0);
  uint64_t epoch = as->assign->epoch;
  assert_int_equal(epoch, 2);
  pw_frame_free(as);
  assert_int_equal(gwh_collect(bot, "c-crash", 3, 2000, seqs, red, 8), 3);
  assert_int_equal(seqs[0], 1);
  assert_true(red[0] && red[1] && red[2]);
  /* Tag and locale actions become events carrying the result. */
  char *add[2] = {"vip", "billing"};
  Parley__V1__Tag tg = PARLEY__V1__TAG__INIT;
  tg.add = add;
  tg.n_add = 2;
  Parley__V1__Action act = PARLEY__V1__ACTION__INIT;
  act.body_case = PARLEY__V1__ACTION__BODY_TAG;
  act.tag = &tg;
  uint64_t seq = 0;
  assert_int_equal(action_code(bot, "c-crash", 200, &act, epoch, &seq), 0);
  assert_int_equal(seq, 4);
  Parley__V1__SetLocale sl = PARLEY__V1__SET_LOCALE__INIT;
  sl.locale = "de-CH";
  Parley__V1__Action loc = PARLEY__V1__ACTION__INIT;
  loc.body_case = PARLEY__V1__ACTION__BODY_SET_LOCALE;
  loc.set_locale = &sl;
  assert_int_equal(action_code(cu, "c-crash", 2, &loc, 0, &seq), 0);
  assert_int_equal(seq, 5);
  sl.locale = "not a locale!";
  assert_int_equal(action_code(cu, "c-crash", 3, &loc, 0, NULL), E(INVALID));
  pw_frame *r = fetch(cu, "c-crash", 4, 5, 0, 1);
  assert_non_null(r);
  assert_int_equal(r->fetch_result->n_events, 2);
  Parley__V1__Event *t = r->fetch_result->events[0];
  assert_int_equal(t->kind, PARLEY__V1__EVENT_KIND__EVENT_TAGGED);
  assert_int_equal(t->n_tags, 2);
  assert_string_equal(t->tags[0], "billing");
  assert_string_equal(t->tags[1], "vip");
  assert_string_equal(t->sender, "faqbot");
  Parley__V1__Event *l = r->fetch_result->events[1];
  assert_int_equal(l->kind, PARLEY__V1__EVENT_KIND__EVENT_LOCALE_CHANGED);
  assert_string_equal(l->locale, "de-CH");
  pw_frame_free(r);
  wsc_close(bot, 1000);
  wsc_close(cu, 1000);
}

static void test_stop_closes_1001(void **state) {
  fx *f = *state;
  wsc *cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  assert_non_null(cu);
  send_ok(cu, "c-stop", 1, "bye", 0);
  gwh_stop(f->h);
  f->h = NULL;
  assert_int_equal(wsc_recv_close(cu, 3000), 1001);
  wsc_abort(cu);
  f->h = gwh_start(f->dir, NULL, NULL);
  assert_non_null(f->h);
}

static void test_epoch_fenced_across_restart(void **state) {
  fx *f = *state;
  wsc *bot = gwh_login(f->h, "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  wsc *cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  send_ok(cu, "c-restart", 1, "hi", 0);
  pw_frame *as = gwh_wait(bot, PARLEY__V1__FRAME__BODY_ASSIGN, 2000);
  assert_non_null(as);
  uint64_t epoch = as->assign->epoch;
  pw_frame_free(as);
  wsc_abort(bot);
  wsc_abort(cu);
  gwh_stop(f->h);
  f->h = gwh_start(f->dir, NULL, NULL);
  assert_non_null(f->h);
  /* Whichever replica connects first after the restart gets a new epoch,
   * so a replica still holding the old one is fenced. */
  bot = gwh_login(f->h, "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  as = gwh_wait(bot, PARLEY__V1__FRAME__BODY_ASSIGN, 2000);
  assert_non_null(as);
  assert_string_equal(as->assign->conversation, "c-restart");
  assert_true(as->assign->epoch > epoch);
  uint64_t now_epoch = as->assign->epoch;
  pw_frame_free(as);
  assert_int_equal(send_code(bot, "c-restart", 300, "old", epoch), E(STALE_EPOCH));
  assert_int_equal(send_code(bot, "c-restart", 301, "new", now_epoch), 0);
  wsc_close(bot, 1000);
}

static void test_agent_devices_resume(void **state) {
  fx *f = *state;
  wsc *bot = gwh_login(f->h, "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  wsc *cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  wsc *desk = gwh_login(f->h, "alice", R_AGENT, "alice-token", "desk", NULL, NULL);
  wsc *mobile = gwh_login(f->h, "alice", R_AGENT, "alice-token", "mobile", NULL, NULL);
  send_ok(cu, "c-agent", 1, "help", 0);
  pw_frame *as = gwh_wait(bot, PARLEY__V1__FRAME__BODY_ASSIGN, 2000);
  assert_non_null(as);
  uint64_t epoch = as->assign->epoch;
  pw_frame_free(as);
  Parley__V1__Handoff ho = PARLEY__V1__HANDOFF__INIT;
  ho.queue = "sales";
  Parley__V1__Action act = PARLEY__V1__ACTION__INIT;
  act.body_case = PARLEY__V1__ACTION__BODY_HANDOFF;
  act.handoff = &ho;
  assert_int_equal(action_code(bot, "c-agent", 1, &act, epoch, NULL), 0);
  Parley__V1__Take tk = PARLEY__V1__TAKE__INIT;
  Parley__V1__Action take = PARLEY__V1__ACTION__INIT;
  take.body_case = PARLEY__V1__ACTION__BODY_TAKE;
  take.take = &tk;
  uint64_t seq = 0;
  assert_int_equal(action_code(desk, "c-agent", 1, &take, 0, &seq), 0);
  assert_int_equal(seq, 5);
  /* Both of alice's devices get the history. */
  uint64_t seqs[8];
  assert_int_equal(gwh_collect(desk, "c-agent", 5, 2000, seqs, NULL, 8), 5);
  assert_int_equal(gwh_collect(mobile, "c-agent", 5, 2000, seqs, NULL, 8), 5);
  assert_int_equal(seqs[0], 1);
  /* The desk acknowledges everything, the phone nothing; after
   * reconnecting each resumes from its own watermark. */
  gwh_ack(desk, "c-agent", 5);
  send_ok(desk, "c-agent", 2, "hello from alice", 0);
  wsc_close(desk, 1000);
  wsc_abort(mobile);
  pw_frame *w = NULL;
  desk = gwh_login(f->h, "alice", R_AGENT, "alice-token", "desk", &w, NULL);
  assert_non_null(desk);
  assert_int_equal(w->welcome->n_cursors, 1);
  assert_string_equal(w->welcome->cursors[0]->conversation, "c-agent");
  assert_int_equal(w->welcome->cursors[0]->after_seq, 5);
  pw_frame_free(w);
  assert_int_equal(gwh_collect(desk, "c-agent", 6, 2000, seqs, NULL, 8), 1);
  assert_int_equal(seqs[0], 6);
  mobile = gwh_login(f->h, "alice", R_AGENT, "alice-token", "mobile", &w, NULL);
  assert_non_null(mobile);
  assert_int_equal(w->welcome->cursors[0]->after_seq, 0);
  pw_frame_free(w);
  bool red[8];
  assert_int_equal(gwh_collect(mobile, "c-agent", 6, 2000, seqs, red, 8), 6);
  assert_true(red[0]);  /* pushed to this device before */
  assert_true(red[4]);
  wsc_close(mobile, 1000);
  wsc_close(desk, 1000);
  wsc_close(cu, 1000);
  wsc_close(bot, 1000);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_fetch_paging, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_commit_state_tags, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_handoff_and_back, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_fleet_failover, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_forbidden, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_bot_crash_and_actions, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_stop_closes_1001, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_epoch_fenced_across_restart, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_agent_devices_resume, gwh_fx_setup, gwh_fx_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
