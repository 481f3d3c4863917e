/* How a connection's delivery window is shared and given back, against a
 * real gateway over real WebSockets:
 *
 * - one conversation's backlog does not take a bot connection's whole
 *   window: every conversation gets its share, so one slow conversation
 *   cannot hold the others back;
 * - a bot that reconnects may commit events it was given on its earlier
 *   connection, even before they are pushed again, and the stream then
 *   resumes after the committed seq;
 * - a seq a customer fetched (read ahead of the push window) counts as
 *   given: its ACK is in range.
 */
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

/* The shared fixture (gwharness.h): a gateway in a fresh directory, with
 * a small window (8 events in flight per connection) so that shares are
 * visible, and a redelivery timeout long enough not to interfere. */
typedef gwh_fx fx;
#define WINDOW_LIMITS "  ack_timeout: 5s\n  heartbeat: 2s\n  window: 8"

static void send_ok(wsc *c, const char *conv, uint32_t id) {
  char text[32];
  snprintf(text, sizeof text, "m%u", id);
  assert_int_equal(gwh_send_text(c, conv, id, text, 0), 0);
  pw_frame *a = gwh_wait_ack(c, id, 3000);
  assert_non_null(a);
  assert_int_equal(a->send_ack->error, 0);
  pw_frame_free(a);
}

/* Counts, per conversation, the events pushed until nothing more comes
 * for quiet_ms; keeps each conversation's epoch from its Assign. */
#define NCONV 4
static const char *const CONVS[NCONV] = {"win-a", "win-b", "win-c", "win-d"};

static int conv_index(const char *id) {
  for (int i = 0; i < NCONV; i++)
    if (!strcmp(CONVS[i], id)) return i;
  return -1;
}

static void drain(wsc *bot, int quiet_ms, int got[NCONV], uint64_t high[NCONV],
                  uint64_t epoch[NCONV]) {
  for (;;) {
    pw_frame *f = NULL;
    if (wsc_recv_frame(bot, quiet_ms, &f) != 0 || !f) return;
    if (f->body_case == PARLEY__V1__FRAME__BODY_ASSIGN) {
      int i = conv_index(f->assign->conversation);
      if (i >= 0) epoch[i] = f->assign->epoch;
    } else if (f->body_case == PARLEY__V1__FRAME__BODY_DELIVER) {
      for (size_t k = 0; k < f->deliver->n_events; k++) {
        int i = conv_index(f->deliver->events[k]->conversation);
        if (i < 0) continue;
        got[i]++;
        if (f->deliver->events[k]->seq > high[i]) high[i] = f->deliver->events[k]->seq;
      }
    }
    pw_frame_free(f);
  }
}

static void test_backlog_does_not_take_the_window(void **state) {
  fx *f = *state;
  /* Four conversations wait for the bot, each with a backlog larger than
   * the whole window. */
  wsc *cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  assert_non_null(cu);
  uint32_t id = 1;
  for (int i = 0; i < NCONV; i++)
    for (int m = 0; m < 10; m++) send_ok(cu, CONVS[i], id++);
  wsc *bot = gwh_login(f->h, "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  assert_non_null(bot);
  int got[NCONV] = {0};
  uint64_t high[NCONV] = {0}, epoch[NCONV] = {0};
  drain(bot, 600, got, high, epoch);
  /* Nothing is committed yet: the window (8) is all there is, and each of
   * the four conversations has its share of it (8 / 4 = 2). */
  int total = 0;
  for (int i = 0; i < NCONV; i++) {
    assert_true(epoch[i] > 0);
    assert_int_equal(got[i], 2);
    total += got[i];
  }
  assert_int_equal(total, 8);
  /* Committing one conversation frees its share for that conversation,
   * not for the first stream the gateway happens to visit. */
  pw_frame *r = gwh_commit(bot, CONVS[2], epoch[2], high[2], NULL, NULL, NULL, 1);
  assert_non_null(r);
  assert_int_equal(r->commit_result->outcomes[0]->error, 0);
  pw_frame_free(r);
  int more[NCONV] = {0};
  drain(bot, 600, more, high, epoch);
  assert_int_equal(more[2], 2);
  assert_int_equal(more[0] + more[1] + more[3], 0);
  wsc_close(bot, 1000);
  wsc_close(cu, 1000);
}

static void test_commit_what_an_earlier_connection_got(void **state) {
  fx *f = *state;
  wsc *cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  assert_non_null(cu);
  for (uint32_t m = 1; m <= 4; m++) send_ok(cu, "win-a", m);
  wsc *bot = gwh_login(f->h, "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  assert_non_null(bot);
  int got[NCONV] = {0};
  uint64_t high[NCONV] = {0}, epoch[NCONV] = {0};
  drain(bot, 600, got, high, epoch);
  /* The only conversation has the whole window: all six events (opened,
   * assigned and four messages). */
  assert_int_equal(high[0], 6);
  uint64_t given = high[0];
  /* The connection is cut before the bot commits; three more conversations
   * now share the window of the next connection, so it gets only part of
   * win-a again before the bot commits. */
  wsc_abort(bot);
  for (int i = 1; i < NCONV; i++) send_ok(cu, CONVS[i], 100 + (uint32_t)i);
  bot = gwh_login(f->h, "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  assert_non_null(bot);
  memset(got, 0, sizeof got);
  memset(high, 0, sizeof high);
  uint64_t old_epoch = epoch[0];
  drain(bot, 600, got, high, epoch);
  assert_true(epoch[0] > old_epoch);
  assert_int_equal(got[0], 2);
  assert_true(high[0] < given);
  /* What it handled before the cut it may commit under the new epoch. */
  pw_frame *r = gwh_commit(bot, "win-a", epoch[0], given, NULL, NULL, NULL, 1);
  assert_non_null(r);
  assert_int_equal(r->commit_result->outcomes[0]->error, 0);
  assert_false(r->commit_result->outcomes[0]->duplicate);
  pw_frame_free(r);
  /* The stream resumes after the committed seq: the next events are new
   * ones, not the ones committed. */
  send_ok(cu, "win-a", 50);
  memset(got, 0, sizeof got);
  memset(high, 0, sizeof high);
  uint64_t seqs[8];
  int n = gwh_collect(bot, "win-a", given + 1, 3000, seqs, NULL, 8);
  assert_int_equal(n, 1);
  assert_int_equal(seqs[0], given + 1);
  /* Beyond anything the bot was ever given is still refused. */
  r = gwh_commit(bot, "win-a", epoch[0], given + 5, NULL, NULL, NULL, 2);
  assert_non_null(r);
  assert_int_equal(r->commit_result->outcomes[0]->error, E(ACK_OUT_OF_RANGE));
  pw_frame_free(r);
  wsc_close(bot, 1000);
  wsc_close(cu, 1000);
}

static void test_fetched_seq_may_be_acked(void **state) {
  fx *f = *state;
  /* A second device of carol reads a conversation with more events than
   * its window: the rest it fetches, and then acknowledges all of it. */
  wsc *cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  assert_non_null(cu);
  for (uint32_t m = 1; m <= 12; m++) send_ok(cu, "win-f", m);
  wsc *tab = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "tablet", NULL, NULL);
  assert_non_null(tab);
  uint64_t seqs[16];
  int n = gwh_collect(tab, "win-f", 8, 2000, seqs, NULL, 16);
  assert_int_equal(n, 8); /* the window */
  Parley__V1__Fetch fe = PARLEY__V1__FETCH__INIT;
  fe.request_id = 7;
  fe.conversation = "win-f";
  fe.from_seq = 9;
  fe.to_seq = 14;
  pw_frame fr = PARLEY__V1__FRAME__INIT;
  fr.body_case = PARLEY__V1__FRAME__BODY_FETCH;
  fr.fetch = &fe;
  assert_int_equal(wsc_send_frame(tab, &fr), 0);
  pw_frame *res = gwh_wait(tab, PARLEY__V1__FRAME__BODY_FETCH_RESULT, 2000);
  assert_non_null(res);
  assert_int_equal(res->fetch_result->error, 0);
  assert_int_equal(res->fetch_result->n_events, 6);
  assert_int_equal(res->fetch_result->events[5]->seq, 14);
  pw_frame_free(res);
  /* The fetched seqs count as given: acknowledging 14 is in range. */
  assert_int_equal(gwh_ack(tab, "win-f", 14), 0);
  assert_null(gwh_wait(tab, PARLEY__V1__FRAME__BODY_ERROR, 500));
  wsc_close(tab, 1000);
  /* The watermark moved: the next session resumes after 14. */
  pw_frame *w = NULL;
  tab = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "tablet", &w, NULL);
  assert_non_null(tab);
  bool found = false;
  for (size_t i = 0; i < w->welcome->n_cursors; i++)
    if (!strcmp(w->welcome->cursors[i]->conversation, "win-f")) {
      assert_int_equal(w->welcome->cursors[i]->after_seq, 14);
      found = true;
    }
  assert_true(found);
  pw_frame_free(w);
  /* One seq past anything given is out of range. */
  assert_int_equal(gwh_ack(tab, "win-f", 15), 0);
  pw_frame *er = gwh_wait(tab, PARLEY__V1__FRAME__BODY_ERROR, 2000);
  assert_non_null(er);
  assert_int_equal(er->error->code, E(ACK_OUT_OF_RANGE));
  pw_frame_free(er);
  wsc_abort(tab);
  wsc_close(cu, 1000);
}

int main(void) {
  gwh_fx_limits = WINDOW_LIMITS;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_backlog_does_not_take_the_window, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_commit_what_an_earlier_connection_got, gwh_fx_setup,
                                      gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_fetched_seq_may_be_acked, gwh_fx_setup, gwh_fx_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
