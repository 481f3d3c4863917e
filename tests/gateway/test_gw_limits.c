/* Limits of a real gateway: heartbeat silence moves a bot's conversations,
 * the delivery window, the send rate limit and connections per principal. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <parley/error.h>

#include "gwharness.h"

#define E(x) PARLEY__V1__ERROR_CODE__ERROR_##x

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void ping(wsc *c, uint64_t nonce) {
  Parley__V1__Ping p = PARLEY__V1__PING__INIT;
  p.nonce = nonce;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_PING;
  f.ping = &p;
  wsc_send_frame(c, &f);
}

static void test_silent_bot_loses_conversations(void **state) {
  (void)state;
  char *dir = gwh_tmpdir();
  gwh *h = gwh_start(dir, "  heartbeat: 200ms\n  ack_timeout: 5s", NULL);
  assert_non_null(h);
  wsc *b1 = gwh_login(h, "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  wsc *cu = gwh_login(h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  gwh_send_text(cu, "c-silent", 1, "hello", 0);
  pw_frame *a = gwh_wait(b1, PARLEY__V1__FRAME__BODY_ASSIGN, 2000);
  assert_non_null(a);
  uint64_t epoch = a->assign->epoch;
  pw_frame_free(a);
  /* The gateway pings a connection it has not written to for a heartbeat. */
  pw_frame *pg = gwh_wait(b1, PARLEY__V1__FRAME__BODY_PING, 1000);
  assert_non_null(pg);
  assert_true(pg->ping->nonce != 0);
  pw_frame_free(pg);
  wsc *b2 = gwh_login(h, "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  assert_non_null(b2);
  /* b2 stays alive, b1 says nothing: after two heartbeats (400 ms) b1 is
   * dead and its conversation moves to b2 with a new epoch. */
  uint64_t deadline = now_ms() + 3000, n = 0;
  pw_frame *moved = NULL;
  while (!moved && now_ms() < deadline) {
    ping(b2, ++n);
    pw_frame *f = NULL;
    if (wsc_recv_frame(b2, 100, &f) == 0) {
      if (f->body_case == PARLEY__V1__FRAME__BODY_ASSIGN) moved = f;
      else pw_frame_free(f);
    }
  }
  assert_non_null(moved);
  assert_string_equal(moved->assign->conversation, "c-silent");
  assert_true(moved->assign->epoch > epoch);
  pw_frame_free(moved);
  assert_int_equal(wsc_recv_close(b1, 2000), 4009);
  wsc_abort(b1);
  wsc_abort(b2);
  wsc_abort(cu);
  gwh_stop(h);
  gwh_rmdir(dir);
}

static void test_window(void **state) {
  (void)state;
  char *dir = gwh_tmpdir();
  gwh *h = gwh_start(dir, "  window: 4\n  ack_timeout: 10s", NULL);
  assert_non_null(h);
  wsc *a = gwh_login(h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  wsc *b = gwh_login(h, "carol", R_CUSTOMER, "carol-token", "laptop", NULL, NULL);
  for (uint32_t i = 1; i <= 8; i++) {
    gwh_send_text(a, "c-window", i, "m", 0);
    pw_frame *ack = gwh_wait_ack(a, i, 2000);
    assert_non_null(ack);
    pw_frame_free(ack);
  }
  /* 10 events exist; the laptop gets only the first 4 until it acks. */
  uint64_t seqs[16];
  int n = gwh_collect(b, "c-window", 10, 500, seqs, NULL, 16);
  assert_int_equal(n, 4);
  assert_int_equal(seqs[3], 4);
  gwh_ack(b, "c-window", 3);
  n = gwh_collect(b, "c-window", 10, 500, seqs, NULL, 16);
  assert_int_equal(n, 3);
  assert_int_equal(seqs[0], 5);
  assert_int_equal(seqs[2], 7);
  gwh_ack(b, "c-window", 7);
  n = gwh_collect(b, "c-window", 10, 1000, seqs, NULL, 16);
  assert_int_equal(n, 3);
  assert_int_equal(seqs[2], 10);
  wsc_close(a, 1000);
  wsc_close(b, 1000);
  gwh_stop(h);
  gwh_rmdir(dir);
}

static void test_rate_limit(void **state) {
  (void)state;
  char *dir = gwh_tmpdir();
  gwh *h = gwh_start(dir, "  rate: 5\n  burst: 3", NULL);
  assert_non_null(h);
  wsc *c = gwh_login(h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  /* Ten sends of different conversations at once: the burst passes, the
   * rest are refused with a retry hint. */
  char conv[32];
  for (uint32_t i = 0; i < 10; i++) {
    snprintf(conv, sizeof conv, "c-rate-%u", i);
    gwh_send_text(c, conv, i + 1, "m", 0);
  }
  int ok = 0, limited = 0;
  uint32_t retry = 0;
  uint32_t limited_id = 0;
  for (int k = 0; k < 20 && ok + limited < 10; k++) {
    pw_frame *f = NULL;
    if (wsc_recv_frame(c, 2000, &f) != 0) break;
    if (f->body_case == PARLEY__V1__FRAME__BODY_ERROR) {
      assert_int_equal(f->error->code, E(RATE_LIMITED));
      assert_false(f->error->fatal);
      assert_true(f->error->retry_after_ms > 0);
      retry = f->error->retry_after_ms;
    } else if (f->body_case == PARLEY__V1__FRAME__BODY_SEND_ACK) {
      if (f->send_ack->error == E(RATE_LIMITED)) {
        limited++;
        limited_id = f->send_ack->client_msg_id.data[15];
        assert_int_equal(f->send_ack->seq, 0);
      } else {
        assert_int_equal(f->send_ack->error, 0);
        ok++;
      }
    }
    pw_frame_free(f);
  }
  assert_int_equal(ok + limited, 10);
  assert_true(ok >= 3 && ok <= 4);
  assert_true(limited >= 6);
  /* After the hinted wait the same send goes through. */
  struct timespec ts = {0, (long)(retry + 50) * 1000000L};
  nanosleep(&ts, NULL);
  snprintf(conv, sizeof conv, "c-rate-%u", limited_id - 1);
  gwh_send_text(c, conv, limited_id, "m", 0);
  pw_frame *a = gwh_wait_ack(c, limited_id, 2000);
  assert_non_null(a);
  assert_int_equal(a->send_ack->error, 0);
  assert_int_equal(a->send_ack->seq, 3);
  pw_frame_free(a);
  wsc_close(c, 1000);
  gwh_stop(h);
  gwh_rmdir(dir);
}

static void test_connections_per_principal(void **state) {
  (void)state;
  char *dir = gwh_tmpdir();
  gwh *h = gwh_start(dir, "  max_connections_per_principal: 2", NULL);
  assert_non_null(h);
  wsc *a = gwh_login(h, "carol", R_CUSTOMER, "carol-token", "1", NULL, NULL);
  wsc *b = gwh_login(h, "carol", R_CUSTOMER, "carol-token", "2", NULL, NULL);
  assert_non_null(a);
  assert_non_null(b);
  int code = 0;
  assert_null(gwh_login(h, "carol", R_CUSTOMER, "carol-token", "3", NULL, &code));
  assert_int_equal(code, E(TOO_MANY_CONNECTIONS));
  /* Another principal is not affected; a freed slot can be used again. */
  wsc *o = gwh_login(h, "alice", R_AGENT, "alice-token", "1", NULL, NULL);
  assert_non_null(o);
  wsc_close(a, 1000);
  wsc *c = NULL;
  for (int i = 0; i < 50 && !c; i++) {
    c = gwh_login(h, "carol", R_CUSTOMER, "carol-token", "3", NULL, NULL);
    if (!c) {
      struct timespec ts = {0, 20 * 1000000L};
      nanosleep(&ts, NULL);
    }
  }
  assert_non_null(c);
  wsc_close(b, 1000);
  wsc_close(c, 1000);
  wsc_close(o, 1000);
  gwh_stop(h);
  gwh_rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_silent_bot_loses_conversations),
      cmocka_unit_test(test_window),
      cmocka_unit_test(test_rate_limit),
      cmocka_unit_test(test_connections_per_principal),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
