/* A small string-keyed hash map with linear probing. Keys are copied,
 * values are borrowed; the table never grows past GW_MAP_MAX entries. */
#include <stdlib.h>
#include <string.h>

#include <parley/error.h>

#include "gw.h"
#include "util/hash.h"

/* Marks a deleted slot so that probing continues past it. */
static char tomb_key;
#define TOMB (&tomb_key)

static size_t hash_str(const char *s) {
  uint64_t h = pu_hash_str(s);
  return (size_t)(h ^ (h >> 29));
}

static size_t find_slot(const gw_map *m, const char *key, bool *found) {
  size_t mask = m->cap - 1, i = hash_str(key) & mask, first_tomb = SIZE_MAX;
  for (;;) {
    char *k = m->keys[i];
    if (!k) {
      *found = false;
      return first_tomb != SIZE_MAX ? first_tomb : i;
    }
    if (k == TOMB) {
      if (first_tomb == SIZE_MAX) first_tomb = i;
    } else if (!strcmp(k, key)) {
      *found = true;
      return i;
    }
    i = (i + 1) & mask;
  }
}

void *gw_map_get(const gw_map *m, const char *key) {
  if (!m->cap) return NULL;
  bool found;
  size_t i = find_slot(m, key, &found);
  return found ? m->vals[i] : NULL;
}

static int grow(gw_map *m) {
  size_t ncap = m->cap ? m->cap * 2 : 16;
  /* Rehashing at the same size is enough when tombstones fill the table. */
  if (m->len * 2 < m->cap) ncap = m->cap;
  char **ok = m->keys;
  void **ov = m->vals;
  size_t ocap = m->cap;
  m->keys = calloc(ncap, sizeof *m->keys);
  m->vals = calloc(ncap, sizeof *m->vals);
  if (!m->keys || !m->vals) {
    free(m->keys);
    free(m->vals);
    m->keys = ok;
    m->vals = ov;
    return PARLEY_ENOMEM;
  }
  m->cap = ncap;
  m->len = 0;
  m->tombs = 0;
  for (size_t i = 0; i < ocap; i++) {
    if (!ok[i] || ok[i] == TOMB) continue;
    bool found;
    size_t j = find_slot(m, ok[i], &found);
    m->keys[j] = ok[i];
    m->vals[j] = ov[i];
    m->len++;
  }
  free(ok);
  free(ov);
  return 0;
}

int gw_map_put(gw_map *m, const char *key, void *val) {
  if ((m->len + m->tombs + 1) * 4 >= m->cap * 3) {
    if (m->len >= GW_MAP_MAX) return PARLEY_ETOOBIG;
    int rc = grow(m);
    if (rc) return rc;
  }
  bool found;
  size_t i = find_slot(m, key, &found);
  if (found) {
    m->vals[i] = val;
    return 0;
  }
  char *k = strdup(key);
  if (!k) return PARLEY_ENOMEM;
  if (m->keys[i] == TOMB) m->tombs--;
  m->keys[i] = k;
  m->vals[i] = val;
  m->len++;
  return 0;
}

void *gw_map_del(gw_map *m, const char *key) {
  if (!m->cap) return NULL;
  bool found;
  size_t i = find_slot(m, key, &found);
  if (!found) return NULL;
  void *v = m->vals[i];
  free(m->keys[i]);
  m->keys[i] = TOMB;
  m->vals[i] = NULL;
  m->len--;
  m->tombs++;
  return v;
}

void gw_map_clear(gw_map *m) {
  for (size_t i = 0; i < m->cap; i++)
    if (m->keys[i] && m->keys[i] != TOMB) free(m->keys[i]);
  free(m->keys);
  free(m->vals);
  memset(m, 0, sizeof *m);
}

bool gw_map_next(const gw_map *m, size_t *i, const char **key, void **val) {
  for (; *i < m->cap; (*i)++) {
    if (m->keys[*i] && m->keys[*i] != TOMB) {
      if (key) *key = m->keys[*i];
      if (val) *val = m->vals[*i];
      (*i)++;
      return true;
    }
  }
  return false;
}

/* Appends s at *at, keeping room for the terminator. */
static void put(char *buf, size_t n, size_t *at, const char *s) {
  size_t len = strlen(s), room = n - 1 - *at;
  if (len > room) len = room;
  memcpy(buf + *at, s, len);
  *at += len;
}

char *gw_copy(char *buf, size_t n, const char *s) {
  if (!n) return buf;
  size_t at = 0;
  put(buf, n, &at, s);
  buf[at] = 0;
  return buf;
}

char *gw_join(char *buf, size_t n, const char *a, const char *b, const char *c) {
  if (!n) return buf;
  size_t at = 0;
  put(buf, n, &at, a);
  put(buf, n, &at, "\x1f");
  put(buf, n, &at, b);
  if (c) {
    put(buf, n, &at, "\x1f");
    put(buf, n, &at, c);
  }
  buf[at] = 0;
  return buf;
}
