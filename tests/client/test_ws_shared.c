/* The WebSocket transport's shared lws context: freeing one transport while
 * another lives on the same loop must not close any descriptor that was
 * opened on the loop in the meantime. Each transport holds a connection to
 * a plain TCP listener on 127.0.0.1 (accepted and left silent: no fake
 * peer protocol is needed, the upgrade is never answered), so the freed
 * transport has a real socket to tear down. With one lws context per
 * transport, lws 4.1.6 closed some of the freed context's descriptors a
 * second time a few loop turns later, which here closed a sentinel. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <fcntl.h>
#include <unistd.h>
#include <uv.h>

#include <parley/error.h>

#include "transport/ws.h"

#define N_SENTINELS 64

typedef struct fixture {
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_tcp_t accepted[4];
  int n_accepted;
  uv_check_t check;
  uv_timer_t watchdog;
  pt_ws *ws[2];
  int destroyed;
  bool freed_first;
  int sentinels[N_SENTINELS];
  int n_sentinels;
  int turns_after_free;
  bool timed_out;
  uint64_t start;
} fixture;

static void on_accept(uv_stream_t *l, int status) {
  fixture *f = l->data;
  assert_int_equal(status, 0);
  assert_true(f->n_accepted < 4);
  uv_tcp_t *c = &f->accepted[f->n_accepted++];
  uv_tcp_init(&f->loop, c);
  assert_int_equal(uv_accept(l, (uv_stream_t *)c), 0);
}

static void on_destroyed(void *ud) {
  fixture *f = ud;
  f->destroyed++;
}

/* Opens a descriptor on every loop turn after the first transport is freed,
 * as another connection opening on the same loop would, then ends the run
 * after enough turns for any deferred close inside lws to have happened. */
static void check_cb(uv_check_t *h) {
  fixture *f = h->data;
  if (f->n_accepted < 2)
    return;
  if (!f->freed_first) {
    f->freed_first = true;
    pt_ws_destroy(f->ws[0]);
    return;
  }
  if (f->n_sentinels < N_SENTINELS) {
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    f->sentinels[f->n_sentinels++] = fd;
  }
  if (++f->turns_after_free == 200) {
    uv_check_stop(h);
    pt_ws_destroy(f->ws[1]);
    for (int i = 0; i < f->n_accepted; i++)
      uv_close((uv_handle_t *)&f->accepted[i], NULL);
    uv_close((uv_handle_t *)&f->listener, NULL);
    uv_close((uv_handle_t *)&f->check, NULL);
  }
}

/* Keeps the loop turning every millisecond while the check handle counts
 * turns, and stops a run that hangs. Unreferenced, so it never keeps the
 * loop alive by itself. */
static void watchdog_tick(uv_timer_t *h) {
  fixture *f = h->data;
  if (!f->timed_out && uv_now(&f->loop) - f->start > 20000) {
    fprintf(stderr, "timeout: accepted %d, freed %d, turns %d, destroyed %d\n",
            f->n_accepted, f->freed_first, f->turns_after_free, f->destroyed);
    f->timed_out = true;
    uv_stop(&f->loop);
  }
}

static void test_free_one_of_two_keeps_other_fds(void **state) {
  (void)state;
  fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  assert_int_equal(uv_loop_init(&f->loop), 0);
  uv_tcp_init(&f->loop, &f->listener);
  f->listener.data = f;
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", 0, &sa);
  assert_int_equal(uv_tcp_bind(&f->listener, (const struct sockaddr *)&sa, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&f->listener, 8, on_accept), 0);
  struct sockaddr_storage ss;
  int len = sizeof ss;
  uv_tcp_getsockname(&f->listener, (struct sockaddr *)&ss, &len);
  char url[96];
  snprintf(url, sizeof url, "ws://127.0.0.1:%d/v1/ws",
           ntohs(((struct sockaddr_in *)&ss)->sin_port));

  pt_ws_config cfg = {.url = url};
  pt_ws_hooks hooks = {.ud = f, .destroyed = on_destroyed};
  for (int i = 0; i < 2; i++) {
    const char *why = NULL;
    assert_int_equal(pt_ws_new(&f->loop, &cfg, &hooks, &f->ws[i], &why), 0);
    assert_int_equal(pt_ws_connect(f->ws[i]), 0);
  }
  uv_check_init(&f->loop, &f->check);
  f->check.data = f;
  uv_check_start(&f->check, check_cb);
  f->start = uv_now(&f->loop);
  uv_timer_init(&f->loop, &f->watchdog);
  f->watchdog.data = f;
  uv_timer_start(&f->watchdog, watchdog_tick, 1, 1);
  uv_unref((uv_handle_t *)&f->watchdog);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&f->watchdog, NULL);
  uv_run(&f->loop, UV_RUN_DEFAULT);

  assert_false(f->timed_out);
  assert_int_equal(f->destroyed, 2);
  assert_int_equal(f->n_sentinels, N_SENTINELS);
  int bad = 0;
  for (int i = 0; i < f->n_sentinels; i++) {
    if (fcntl(f->sentinels[i], F_GETFD) == -1)
      bad++; /* closed by someone else: the bug */
    else
      close(f->sentinels[i]);
  }
  assert_int_equal(bad, 0);
  assert_int_equal(uv_loop_close(&f->loop), 0);
  free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_free_one_of_two_keeps_other_fds),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
