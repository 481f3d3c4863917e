/* The gateway's hot state against a real gateway: its memory stays within
 * the configured bounds however long a conversation gets, and what left a
 * conversation's in-memory tail still comes back, from the store, in
 * order and unchanged. Prints the bytes per active conversation (the
 * figure docs/gateway.md quotes). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <parley/error.h>

#include "gateway.h"
#include "gwharness.h"

#define CONVS 20
#define MSGS 60

static pw_frame *fetch(wsc *c, const char *conv, uint64_t from, uint32_t limit, uint64_t req) {
  Parley__V1__Fetch fe = PARLEY__V1__FETCH__INIT;
  fe.request_id = req;
  fe.conversation = (char *)conv;
  fe.from_seq = from;
  fe.limit = limit;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_FETCH;
  f.fetch = &fe;
  if (wsc_send_frame(c, &f) != 0) return NULL;
  for (int i = 0; i < 200; i++) {
    pw_frame *r = gwh_wait(c, PARLEY__V1__FRAME__BODY_FETCH_RESULT, 5000);
    if (!r || r->fetch_result->request_id == req) return r;
    pw_frame_free(r);
  }
  return NULL;
}

/* Fills CONVS conversations with MSGS messages of ~200 bytes each; returns
 * the hot state's bytes per conversation. */
static size_t fill(gwh *h, wsc **cs) {
  char text[201];
  memset(text, 'x', 200);
  text[200] = '\0';
  for (int i = 0; i < CONVS; i++) {
    char name[32], tok[65];
    snprintf(name, sizeof name, "hot%d", i);
    assert_int_equal(gwh_customer_token(name, tok), 0);
    cs[i] = gwh_login(h, name, R_CUSTOMER, tok, "d", NULL, NULL);
    assert_non_null(cs[i]);
  }
  for (uint32_t m = 1; m <= MSGS; m++) {
    for (int i = 0; i < CONVS; i++) {
      char conv[32];
      snprintf(conv, sizeof conv, "hot-%d", i);
      assert_int_equal(gwh_send_text(cs[i], conv, m, text, 0), 0);
    }
    for (int i = 0; i < CONVS; i++) {
      pw_frame *a = gwh_wait_ack(cs[i], m, 10000);
      assert_non_null(a);
      assert_int_equal(a->send_ack->error, 0);
      /* opened, assigned, then the messages: seq m + 2 */
      assert_int_equal(a->send_ack->seq, m + 2);
      pw_frame_free(a);
    }
  }
  size_t n = 0, bytes = pg_gateway_hot_bytes(gwh_gateway(h), &n);
  assert_int_equal(n, CONVS);
  return bytes / n;
}

/* Every event of conversation 0 in pages of 7, each seq once and in
 * order, each message with its text. */
static void check_history(wsc *c) {
  uint64_t next = 1, req = 1;
  while (next <= MSGS + 2) {
    pw_frame *r = fetch(c, "hot-0", next, 7, req++);
    assert_non_null(r);
    Parley__V1__FetchResult *fr = r->fetch_result;
    assert_int_equal(fr->error, 0);
    assert_true(fr->n_events > 0);
    for (size_t i = 0; i < fr->n_events; i++) {
      assert_int_equal(fr->events[i]->seq, next);
      if (next > 2) {
        assert_non_null(fr->events[i]->content);
        assert_non_null(fr->events[i]->content->text);
        assert_int_equal(strlen(fr->events[i]->content->text->body), 200);
      }
      next++;
    }
    pw_frame_free(r);
  }
}

static void run(const char *cache, size_t *per_conv) {
  char *dir = gwh_tmpdir();
  gwh *h = gwh_start(dir, "  ack_timeout: 60s\n  window: 4096", cache);
  assert_non_null(h);
  wsc *cs[CONVS];
  *per_conv = fill(h, cs);
  check_history(cs[0]);
  for (int i = 0; i < CONVS; i++) wsc_abort(cs[i]);
  gwh_stop(h);
  gwh_rmdir(dir);
}

/* A small tail: each conversation's events mostly come from the store,
 * and the memory per conversation stays near the tail's bound. */
static void test_small_tail(void **state) {
  (void)state;
  size_t per = 0;
  run("cache:\n  tail_bytes: 2KiB\n", &per);
  printf("hot state, tail_bytes 2 KiB, %d conversations x %d events of ~250 bytes: "
         "%zu bytes per conversation\n", CONVS, MSGS + 2, per);
  /* The tail (2 KiB) plus the rows, the ring and the shares of the maps,
   * of the recent ids (MSGS per conversation) and of the 128 KiB filter. */
  assert_true(per < 2048 + 4096 + MSGS * 160 + 131072 / CONVS + 1024);
}

/* The default tail holds the whole (short) conversation: no store reads. */
static void test_default_tail(void **state) {
  (void)state;
  size_t per = 0;
  run(NULL, &per);
  printf("hot state, default cache, %d conversations x %d events of ~250 bytes: "
         "%zu bytes per conversation\n", CONVS, MSGS + 2, per);
  assert_true(per > (size_t)MSGS * 200);
  assert_true(per < 64 * 1024 + 4096 + MSGS * 160 + 131072 / CONVS + 1024);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_small_tail),
                                     cmocka_unit_test(test_default_tail)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
