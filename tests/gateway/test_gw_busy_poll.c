/* busy_poll_us (docs/gateway.md): a gateway that busy-polls after each
 * write answers as before, stops polling once the window has passed
 * without traffic (an idle gateway must not burn a CPU), and stops
 * cleanly. The gateway runs in-process on the harness's thread; its CPU
 * time is the process's. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <cmocka.h>

#include <parley/error.h>

#include "gateway.h"
#include "gwharness.h"

static double cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

static void test_busy_poll_answers_then_sleeps(void **state) {
  (void)state;
  char *dir = gwh_tmpdir();
  /* 1 ms of polling after each write: long enough to span this test's
   * sends, short against the idle window measured below. */
  gwh *h = gwh_start(dir, NULL, "busy_poll_us: 1000\n");
  assert_non_null(h);
  wsc *cu = gwh_login(h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  assert_non_null(cu);
  for (uint32_t i = 1; i <= 50; i++) {
    assert_int_equal(gwh_send_text(cu, "c-busy", i, "hello", 0), 0);
    pw_frame *a = gwh_wait_ack(cu, i, 2000);
    assert_non_null(a);
    assert_int_equal(a->send_ack->error, 0);
    assert_int_equal(a->send_ack->seq, i + 2); /* after OPENED and ASSIGNED */
    pw_frame_free(a);
  }
  /* Idle: the polling ends 1 ms after the last write, and the loop sleeps
   * in epoll_wait again. A loop that kept polling would use about as much
   * CPU as the window's length. */
  sleep_ms(50);
  double c0 = cpu_s();
  sleep_ms(500);
  double used = cpu_s() - c0;
  fprintf(stderr, "CPU over 500 ms idle with busy_poll_us 1000: %.1f ms\n", used * 1000);
  assert_true(used < 0.15);
  wsc_close(cu, 1000);
  gwh_stop(h);
  gwh_rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_busy_poll_answers_then_sleeps)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
