/* The gateway's string-keyed map (gateway/src/map.c) against a plain
 * array model: random puts, gets, deletes and clears (seeded, so a failure
 * repeats), keys that share long prefixes and differ only in their last
 * byte, every length from 0 to 80 bytes (the hash reads eight bytes at a
 * time, then the tail), tombstones filling the table, and iteration that
 * visits every live entry once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <parley/error.h>

#include "gw.h"
#include "util/hash.h"

#define NKEYS 600

typedef struct model {
  char key[96];
  int val; /* 0: absent */
} model;

static uint64_t rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Key i: a shared prefix of (i % 81) bytes, then a suffix unique to i, so
 * that keys of every length collide on their first words. */
static void make_key(char *out, size_t i) {
  size_t plen = i % 81;
  for (size_t k = 0; k < plen; k++) out[k] = (char)('a' + (k % 26));
  snprintf(out + plen, 16, "%zu", i);
}

static void check_all(const gw_map *m, const model *md, size_t n) {
  size_t live = 0;
  for (size_t i = 0; i < n; i++) {
    void *v = gw_map_get(m, md[i].key);
    if (md[i].val) {
      live++;
      assert_non_null(v);
      assert_int_equal((int)(intptr_t)v, md[i].val);
    } else {
      assert_null(v);
    }
  }
  assert_int_equal(m->len, live);
  /* Iteration: each live key once, with its value. */
  size_t seen = 0, it = 0;
  const char *k;
  void *v;
  while (gw_map_next(m, &it, &k, &v)) {
    seen++;
    size_t idx = SIZE_MAX;
    for (size_t i = 0; i < n; i++)
      if (!strcmp(md[i].key, k)) idx = i;
    assert_true(idx != SIZE_MAX);
    assert_int_equal((int)(intptr_t)v, md[idx].val);
  }
  assert_int_equal(seen, live);
}

static void test_random_against_model(void **state) {
  (void)state;
  static model md[NKEYS];
  for (size_t i = 0; i < NKEYS; i++) {
    make_key(md[i].key, i);
    md[i].val = 0;
  }
  gw_map m = {0};
  assert_null(gw_map_get(&m, "nothing"));
  assert_null(gw_map_del(&m, "nothing"));
  uint64_t seed = 12;
  for (int step = 0; step < 40000; step++) {
    uint64_t r = rng_next(&seed);
    size_t i = (size_t)(r >> 8) % NKEYS;
    switch (r % 8) {
    case 0: case 1: case 2: case 3: {
      int val = (int)(step + 1);
      assert_int_equal(gw_map_put(&m, md[i].key, (void *)(intptr_t)val), 0);
      md[i].val = val;
      break;
    }
    case 4: case 5: case 6: {
      void *v = gw_map_del(&m, md[i].key);
      assert_int_equal((int)(intptr_t)v, md[i].val);
      md[i].val = 0;
      break;
    }
    default: {
      void *v = gw_map_get(&m, md[i].key);
      assert_int_equal((int)(intptr_t)v, md[i].val);
      break;
    }
    }
    if (step % 5000 == 4999) check_all(&m, md, NKEYS);
  }
  check_all(&m, md, NKEYS);
  gw_map_clear(&m);
  assert_int_equal(m.len, 0);
  assert_null(gw_map_get(&m, md[0].key));
}

/* A window of keys slides through the map (each put deletes the oldest),
 * as the recent-ids map does: tombstones accumulate and the table is
 * rehashed in place, and nothing is lost. */
static void test_sliding_window(void **state) {
  (void)state;
  gw_map m = {0};
  char key[64];
  const int win = 50;
  for (int i = 0; i < 20000; i++) {
    snprintf(key, sizeof key, "sender\x1f%032x", i);
    assert_int_equal(gw_map_put(&m, key, (void *)(intptr_t)(i + 1)), 0);
    if (i >= win) {
      snprintf(key, sizeof key, "sender\x1f%032x", i - win);
      assert_int_equal((int)(intptr_t)gw_map_del(&m, key), i - win + 1);
    }
    assert_true(m.len <= (size_t)win + 1);
    assert_true(m.cap <= 256);
  }
  for (int i = 20000 - win; i < 20000; i++) {
    snprintf(key, sizeof key, "sender\x1f%032x", i);
    assert_int_equal((int)(intptr_t)gw_map_get(&m, key), i + 1);
  }
  gw_map_clear(&m);
}

/* pu_hash_mem: the same bytes give the same value wherever they sit in
 * memory, every byte counts, and the length counts. */
static void test_hash_mem(void **state) {
  (void)state;
  char a[100], b[108];
  for (size_t i = 0; i < sizeof a; i++) a[i] = (char)(i * 7 + 1);
  for (size_t n = 0; n <= sizeof a; n++) {
    memcpy(b + (n % 8), a, n);
    assert_true(pu_hash_mem(a, n) == pu_hash_mem(b + (n % 8), n));
    for (size_t k = 0; k < n; k++) {
      a[k] ^= 1;
      assert_true(pu_hash_mem(a, n) != pu_hash_mem(b + (n % 8), n));
      a[k] ^= 1;
    }
    if (n) assert_true(pu_hash_mem(a, n) != pu_hash_mem(a, n - 1));
  }
  /* Zero bytes at the end still count through the length. */
  char z[16] = {0};
  assert_true(pu_hash_mem(z, 3) != pu_hash_mem(z, 4));
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_random_against_model),
                                     cmocka_unit_test(test_sliding_window),
                                     cmocka_unit_test(test_hash_mem)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
