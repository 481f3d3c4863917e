/* Unit tests of the pure transport helpers: message reassembly under a hard
 * limit (fed with random fragmentations) and gateway URL parsing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <parley/error.h>

#include "transport/reasm.h"
#include "transport/url.h"

/* A small deterministic generator so a failure can be replayed from the
 * printed seed. */
static uint64_t rng_state;
static uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}
static size_t rnd_below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

static void fill(uint8_t *p, size_t n, uint32_t tag) {
  for (size_t i = 0; i < n; i++)
    p[i] = (uint8_t)((i * 131u + tag * 7u) ^ (i >> 8));
}

static void test_single_piece_is_zero_copy(void **state) {
  (void)state;
  pt_reasm r;
  pt_reasm_init(&r, 1024);
  uint8_t msg[100];
  fill(msg, sizeof msg, 1);
  const uint8_t *out = NULL;
  size_t n = 0;
  assert_int_equal(pt_reasm_feed(&r, msg, sizeof msg, true, true, &out, &n), 1);
  assert_ptr_equal(out, msg);
  assert_int_equal(n, sizeof msg);
  assert_null(r.buf); /* nothing was buffered */
  pt_reasm_free(&r);
}

/* Many messages of random sizes, each cut into random pieces (empty pieces
 * included), fed back to back through one reassembler: every message must
 * come out whole, once, at its last piece, and the buffer must never grow
 * past the limit. */
static void test_random_fragmentation(void **state) {
  (void)state;
  const size_t max = 200000;
  rng_state = 0x9E3779B97F4A7C15ull;
  printf("seed 0x%llx\n", (unsigned long long)rng_state);
  pt_reasm r;
  pt_reasm_init(&r, max);
  uint8_t *msg = malloc(max);
  assert_non_null(msg);
  size_t delivered = 0;
  for (uint32_t m = 0; m < 300; m++) {
    size_t len;
    switch (rnd_below(4)) {
    case 0: len = rnd_below(16); break;
    case 1: len = rnd_below(5000); break;
    case 2: len = rnd_below(max + 1); break;
    default: len = max; break; /* exactly at the limit is accepted */
    }
    fill(msg, len, m);
    size_t pieces = 1 + rnd_below(12);
    size_t off = 0;
    for (size_t p = 0; p < pieces; p++) {
      bool last = p + 1 == pieces;
      size_t take = last ? len - off : rnd_below(len - off + 1);
      const uint8_t *out = NULL;
      size_t n = 0;
      int rc = pt_reasm_feed(&r, msg + off, take, p == 0, last, &out, &n);
      off += take;
      assert_true(r.cap <= max);
      if (!last) {
        assert_int_equal(rc, 0);
        continue;
      }
      assert_int_equal(rc, 1);
      assert_int_equal(n, len);
      if (len)
        assert_memory_equal(out, msg, len);
      delivered++;
    }
  }
  assert_int_equal(delivered, 300);
  free(msg);
  pt_reasm_free(&r);
}

static void test_oversize_is_refused(void **state) {
  (void)state;
  pt_reasm r;
  pt_reasm_init(&r, 1000);
  uint8_t buf[1200];
  fill(buf, sizeof buf, 3);
  const uint8_t *out;
  size_t n;

  /* One piece over the limit. */
  assert_int_equal(pt_reasm_feed(&r, buf, 1001, true, true, &out, &n),
                   PARLEY_ETOOBIG);
  /* Pieces crossing the limit: refused at the piece that crosses it,
   * with nothing buffered past the limit. */
  assert_int_equal(pt_reasm_feed(&r, buf, 600, true, false, &out, &n), 0);
  assert_int_equal(pt_reasm_feed(&r, buf, 400, false, false, &out, &n), 0);
  assert_true(r.cap <= 1000);
  assert_int_equal(pt_reasm_feed(&r, buf, 1, false, true, &out, &n),
                   PARLEY_ETOOBIG);
  assert_false(r.active);
  /* The reassembler is usable again afterwards. */
  assert_int_equal(pt_reasm_feed(&r, buf, 500, true, false, &out, &n), 0);
  assert_int_equal(pt_reasm_feed(&r, buf + 500, 500, false, true, &out, &n), 1);
  assert_int_equal(n, 1000);
  assert_memory_equal(out, buf, 1000);
  pt_reasm_free(&r);
}

static void test_would_exceed(void **state) {
  (void)state;
  pt_reasm r;
  pt_reasm_init(&r, 100);
  uint8_t buf[100] = {0};
  const uint8_t *out;
  size_t n;
  assert_false(pt_reasm_would_exceed(&r, 100));
  assert_true(pt_reasm_would_exceed(&r, 101));
  assert_true(pt_reasm_would_exceed(&r, SIZE_MAX));
  assert_int_equal(pt_reasm_feed(&r, buf, 60, true, false, &out, &n), 0);
  assert_false(pt_reasm_would_exceed(&r, 40));
  assert_true(pt_reasm_would_exceed(&r, 41));
  assert_true(pt_reasm_would_exceed(&r, SIZE_MAX));
  pt_reasm_reset(&r);
  assert_false(pt_reasm_would_exceed(&r, 100));
  pt_reasm_free(&r);
}

static void test_bad_sequences(void **state) {
  (void)state;
  pt_reasm r;
  pt_reasm_init(&r, 100);
  uint8_t buf[10] = {1, 2, 3};
  const uint8_t *out;
  size_t n;
  /* A continuation with nothing started. */
  assert_int_equal(pt_reasm_feed(&r, buf, 3, false, true, &out, &n),
                   PARLEY_EMALFORMED);
  /* A new message while one is unfinished. */
  assert_int_equal(pt_reasm_feed(&r, buf, 3, true, false, &out, &n), 0);
  assert_int_equal(pt_reasm_feed(&r, buf, 3, true, false, &out, &n),
                   PARLEY_EMALFORMED);
  assert_false(r.active);
  /* An empty message in one piece and in two. */
  assert_int_equal(pt_reasm_feed(&r, NULL, 0, true, true, &out, &n), 1);
  assert_int_equal(n, 0);
  assert_int_equal(pt_reasm_feed(&r, NULL, 0, true, false, &out, &n), 0);
  assert_int_equal(pt_reasm_feed(&r, NULL, 0, false, true, &out, &n), 1);
  assert_int_equal(n, 0);
  pt_reasm_free(&r);
}

/* A big message's buffer is not kept for the rest of the connection. */
static void test_large_buffer_released(void **state) {
  (void)state;
  const size_t big = 4 * PT_REASM_KEEP_BYTES;
  pt_reasm r;
  pt_reasm_init(&r, big);
  uint8_t *buf = calloc(1, big);
  assert_non_null(buf);
  const uint8_t *out;
  size_t n;
  assert_int_equal(pt_reasm_feed(&r, buf, big / 2, true, false, &out, &n), 0);
  assert_int_equal(pt_reasm_feed(&r, buf, big / 2, false, true, &out, &n), 1);
  assert_true(r.cap > PT_REASM_KEEP_BYTES);
  assert_int_equal(pt_reasm_feed(&r, buf, 10, true, false, &out, &n), 0);
  assert_true(r.cap <= PT_REASM_KEEP_BYTES);
  assert_int_equal(pt_reasm_feed(&r, buf, 10, false, true, &out, &n), 1);
  assert_int_equal(n, 20);
  free(buf);
  pt_reasm_free(&r);
}

static void test_url_valid(void **state) {
  (void)state;
  pt_url u;
  const char *why = NULL;
  assert_int_equal(pt_url_parse("ws://127.0.0.1:8080/v1/ws?x=1", &u, &why), 0);
  assert_false(u.tls);
  assert_string_equal(u.host, "127.0.0.1");
  assert_int_equal(u.port, 8080);
  assert_string_equal(u.path, "/v1/ws?x=1");

  assert_int_equal(pt_url_parse("wss://gw.example.com", &u, &why), 0);
  assert_true(u.tls);
  assert_int_equal(u.port, 443);
  assert_string_equal(u.path, "/");

  assert_int_equal(pt_url_parse("WS://h?q", &u, &why), 0);
  assert_int_equal(u.port, 80);
  assert_string_equal(u.path, "/?q");

  assert_int_equal(pt_url_parse("ws://[::1]:9000/p", &u, &why), 0);
  assert_string_equal(u.host, "::1");
  assert_int_equal(u.port, 9000);
  assert_string_equal(u.path, "/p");
}

static void test_url_invalid(void **state) {
  (void)state;
  static const char *bad[] = {
      NULL, "", "http://h/", "ws://", "ws://:80/", "ws://h:0/", "ws://h:65536/",
      "ws://h:12a/", "ws://h:/", "ws://user@h/", "ws://h/p#frag", "ws://[::1/",
      "ws://[::1]x/", "ws://h/a b", "wss//h",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    pt_url u;
    const char *why = NULL;
    int rc = pt_url_parse(bad[i], &u, &why);
    if (rc != PARLEY_EINVAL)
      fail_msg("accepted bad URL %s", bad[i] ? bad[i] : "(null)");
    assert_non_null(why);
  }
  /* Too long a host or path is refused, not truncated. */
  char longurl[PT_URL_PATH_MAX + 64];
  strcpy(longurl, "ws://h/");
  memset(longurl + 7, 'a', PT_URL_PATH_MAX);
  longurl[7 + PT_URL_PATH_MAX] = '\0';
  pt_url u;
  assert_int_equal(pt_url_parse(longurl, &u, NULL), PARLEY_EINVAL);
  strcpy(longurl, "ws://");
  memset(longurl + 5, 'h', PT_URL_HOST_MAX);
  longurl[5 + PT_URL_HOST_MAX] = '\0';
  assert_int_equal(pt_url_parse(longurl, &u, NULL), PARLEY_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_single_piece_is_zero_copy),
      cmocka_unit_test(test_random_fragmentation),
      cmocka_unit_test(test_oversize_is_refused),
      cmocka_unit_test(test_would_exceed),
      cmocka_unit_test(test_bad_sequences),
      cmocka_unit_test(test_large_buffer_released),
      cmocka_unit_test(test_url_valid),
      cmocka_unit_test(test_url_invalid),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
