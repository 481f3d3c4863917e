/* Sends per second through a real gateway with durability "full", with
 * and without group commit. Many customers each keep one send on the wire
 * (the protocol's rule per conversation), so concurrent sends arrive in
 * the same loop iteration and group commit can share one fsync among them.
 * The test checks every answer; the rates are printed for the record. */
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

#define CLIENTS 16
#define PER_CLIENT 40

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double run(bool group) {
  char *dir = gwh_tmpdir();
  gwh_durability = "full";
  gwh *h = gwh_start(dir, "  ack_timeout: 60s\n  window: 4096",
                     group ? "group_commit: true\n" : "group_commit: false\n");
  gwh_durability = "normal";
  assert_non_null(h);
  wsc *c[CLIENTS];
  char conv[CLIENTS][32];
  for (int i = 0; i < CLIENTS; i++) {
    char name[32], tok[65];
    snprintf(name, sizeof name, "cust%d", i);
    snprintf(conv[i], sizeof conv[i], "tp-%d", i);
    assert_int_equal(gwh_customer_token(name, tok), 0);
    c[i] = gwh_login(h, name, R_CUSTOMER, tok, "d", NULL, NULL);
    assert_non_null(c[i]);
  }
  double t0 = now_s();
  for (uint32_t m = 1; m <= PER_CLIENT; m++) {
    for (int i = 0; i < CLIENTS; i++) assert_int_equal(gwh_send_text(c[i], conv[i], m, "x", 0), 0);
    for (int i = 0; i < CLIENTS; i++) {
      pw_frame *a = gwh_wait_ack(c[i], m, 10000);
      assert_non_null(a);
      assert_int_equal(a->send_ack->error, 0);
      assert_int_equal(a->send_ack->seq, m + 2);
      pw_frame_free(a);
    }
  }
  double rate = CLIENTS * PER_CLIENT / (now_s() - t0);
  for (int i = 0; i < CLIENTS; i++) wsc_abort(c[i]);
  gwh_stop(h);
  gwh_rmdir(dir);
  return rate;
}

static void test_throughput(void **state) {
  (void)state;
  double without = run(false);
  double with = run(true);
  printf("throughput (durability full, %d clients x %d sends): group commit %.0f sends/s, "
         "one transaction per send %.0f sends/s\n",
         CLIENTS, PER_CLIENT, with, without);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_throughput)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
