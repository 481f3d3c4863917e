/* The store's completions on the loop thread (store.h: pg_store_poll,
 * pg_store_set_loop_polls) with the real SQLite backend in a temp dir:
 *
 *   - with loop polls on, a one-event batch that SQLite commits inline on
 *     the loop thread is finished when pg_store_submit returns, and its
 *     callback runs in the pg_store_poll right after, once;
 *   - with loop polls off (the default), the same batch is answered
 *     through the loop's async handle, as before;
 *   - with loop polls on, a batch the writer thread commits (two events,
 *     too large for the inline path) still wakes the loop by itself.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <uv.h>

#include <parley/error.h>

#include "proc.h"
#include "store/store.h"

typedef struct done_rec {
  int calls, status;
} done_rec;

static void on_done(void *ud, int status, const char *why) {
  (void)why;
  done_rec *d = ud;
  d->calls++;
  d->status = status;
}

static pg_store *open_store(uv_loop_t *loop, const char *dir) {
  pg_store_options o = PG_STORE_OPTIONS_INIT;
  o.data_dir = dir;
  o.durability = PG_DUR_NORMAL;
  o.loop = loop;
  char err[512] = "";
  pg_store *st = NULL;
  int rc = pg_store_open(&o, &st, err, sizeof err);
  if (rc) fprintf(stderr, "open: %s\n", err);
  assert_int_equal(rc, 0);
  return st;
}

static void close_store(uv_loop_t *loop, pg_store *st) {
  pg_store_close(st, NULL, NULL);
  for (int i = 0; i < 8; i++) uv_run(loop, UV_RUN_NOWAIT);
}

/* A batch opening conversation conv with n events (seq 1..n). */
static pg_store_batch *batch(const char *conv, int n, int id0) {
  static const uint8_t blob[] = {0x08, 0x01};
  pg_store_batch *b = pg_store_batch_new();
  assert_non_null(b);
  pg_store_conv c = {.id = (char *)conv, .customer = "carol", .assignee = "faqbot",
                     .bot = "faqbot", .locale = "en", .queue = "", .note = "", .tags = "",
                     .status = PG_CONV_OPEN, .epoch = 1};
  assert_int_equal(pg_store_batch_conv(b, &c, PG_STORE_CONV_NEW), 0);
  for (int i = 0; i < n; i++) {
    pg_store_event e = {.conv = conv, .seq = (uint64_t)i + 1, .blob = blob,
                        .len = sizeof blob, .sender = "carol", .has_msg_id = true};
    memset(e.msg_id, id0 + i, sizeof e.msg_id);
    assert_int_equal(pg_store_batch_event(b, &e), 0);
  }
  return b;
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void on_tick(uv_timer_t *t) { (void)t; }

/* Runs the loop until d has a call or 5 s passed. The store's async
 * handle does not keep a loop alive (the gateway's handles do), so a
 * timer stands in for them. */
static void run_until(uv_loop_t *loop, done_rec *d) {
  uv_timer_t tick;
  uv_timer_init(loop, &tick);
  uv_timer_start(&tick, on_tick, 1, 1);
  uint64_t end = now_ms() + 5000;
  while (!d->calls && now_ms() < end) uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&tick, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

static void test_inline_answered_by_poll(void **state) {
  (void)state;
  char dir[256];
  assert_int_equal(tmpdir_make(dir, sizeof dir, "store-poll"), 0);
  uv_loop_t loop;
  uv_loop_init(&loop);
  pg_store *st = open_store(&loop, dir);
  pg_store_set_loop_polls(st, true);

  done_rec d = {0};
  assert_int_equal(pg_store_submit(st, batch("c-1", 1, 1), on_done, &d), 0);
  /* Committed inline: finished, but its callback waits for the poll. */
  assert_int_equal(d.calls, 0);
  assert_int_equal(pg_store_pending(st), 1);
  assert_int_equal(pg_store_poll(st), 1);
  assert_int_equal(d.calls, 1);
  assert_int_equal(d.status, 0);
  assert_int_equal(pg_store_pending(st), 0);
  assert_int_equal(pg_store_poll(st), 0);
  /* Loop passes afterwards do not run it again (a timer keeps the loop
   * polling). */
  uv_timer_t tick;
  uv_timer_init(&loop, &tick);
  uv_timer_start(&tick, on_tick, 1, 1);
  for (int i = 0; i < 5; i++) uv_run(&loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&tick, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
  assert_int_equal(d.calls, 1);

  /* A batch the writer thread commits still wakes the loop itself. */
  done_rec w = {0};
  assert_int_equal(pg_store_submit(st, batch("c-2", 2, 10), on_done, &w), 0);
  run_until(&loop, &w);
  assert_int_equal(w.calls, 1);
  assert_int_equal(w.status, 0);

  close_store(&loop, st);
  assert_int_equal(uv_loop_close(&loop), 0);
  tmpdir_remove(dir);
}

static void test_default_answers_through_loop(void **state) {
  (void)state;
  char dir[256];
  assert_int_equal(tmpdir_make(dir, sizeof dir, "store-poll"), 0);
  uv_loop_t loop;
  uv_loop_init(&loop);
  pg_store *st = open_store(&loop, dir);

  done_rec d = {0};
  assert_int_equal(pg_store_submit(st, batch("c-1", 1, 1), on_done, &d), 0);
  assert_int_equal(d.calls, 0);
  /* Without loop polls the async handle delivers it. */
  run_until(&loop, &d);
  assert_int_equal(d.calls, 1);
  assert_int_equal(d.status, 0);
  assert_int_equal(pg_store_poll(st), 0);

  close_store(&loop, st);
  assert_int_equal(uv_loop_close(&loop), 0);
  tmpdir_remove(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_inline_answered_by_poll),
                                     cmocka_unit_test(test_default_answers_through_loop)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
