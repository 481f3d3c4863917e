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

/* Keys are hashed a word at a time (pu_hash_mem): the gateway looks up
 * about forty keys of 20 to 60 bytes per turn, and FNV's byte loop was
 * most of each lookup. */
static uint64_t hash_key(const char *s, size_t n) { return pu_hash_mem(s, n); }

static size_t find_slot(const gw_map *m, const char *key, uint64_t h, bool *found) {
  size_t mask = m->cap - 1, i = (size_t)h & mask, first_tomb = SIZE_MAX;
  for (;;) {
    const gw_slot *sl = &m->slots[i];
    if (!sl->key) {
      *found = false;
      return first_tomb != SIZE_MAX ? first_tomb : i;
    }
    if (sl->key == TOMB) {
      if (first_tomb == SIZE_MAX) first_tomb = i;
    } else if (sl->hash == h && !strcmp(sl->key, key)) {
      *found = true;
      return i;
    }
    i = (i + 1) & mask;
  }
}

void *gw_map_get(const gw_map *m, const char *key) {
  if (!m->cap) return NULL;
  bool found;
  size_t i = find_slot(m, key, hash_key(key, strlen(key)), &found);
  return found ? m->slots[i].val : NULL;
}

static int grow(gw_map *m) {
  size_t ncap = m->cap ? m->cap * 2 : 16;
  /* Rehashing at the same size is enough when tombstones fill the table. */
  if (m->len * 2 < m->cap) ncap = m->cap;
  gw_slot *os = m->slots;
  size_t ocap = m->cap;
  gw_slot *ns = calloc(ncap, sizeof *ns);
  if (!ns) return PARLEY_ENOMEM;
  m->slots = ns;
  m->cap = ncap;
  m->len = 0;
  m->tombs = 0;
  size_t mask = ncap - 1;
  for (size_t i = 0; i < ocap; i++) {
    if (!os[i].key || os[i].key == TOMB) continue;
    /* The keys are distinct: the first empty slot of the probe is its place. */
    size_t j = (size_t)os[i].hash & mask;
    while (ns[j].key) j = (j + 1) & mask;
    ns[j] = os[i];
    m->len++;
  }
  free(os);
  return 0;
}

int gw_map_put(gw_map *m, const char *key, void *val) {
  if ((m->len + m->tombs + 1) * 4 >= m->cap * 3) {
    if (m->len >= GW_MAP_MAX) return PARLEY_ETOOBIG;
    int rc = grow(m);
    if (rc) return rc;
  }
  size_t n = strlen(key);
  uint64_t h = hash_key(key, n);
  bool found;
  size_t i = find_slot(m, key, h, &found);
  gw_slot *sl = &m->slots[i];
  if (found) {
    sl->val = val;
    return 0;
  }
  char *k = malloc(n + 1);
  if (!k) return PARLEY_ENOMEM;
  memcpy(k, key, n + 1);
  if (sl->key == TOMB) m->tombs--;
  sl->key = k;
  sl->val = val;
  sl->hash = h;
  m->len++;
  return 0;
}

void *gw_map_del(gw_map *m, const char *key) {
  if (!m->cap) return NULL;
  bool found;
  size_t i = find_slot(m, key, hash_key(key, strlen(key)), &found);
  if (!found) return NULL;
  gw_slot *sl = &m->slots[i];
  void *v = sl->val;
  free(sl->key);
  sl->key = TOMB;
  sl->val = NULL;
  m->len--;
  m->tombs++;
  return v;
}

void gw_map_clear(gw_map *m) {
  for (size_t i = 0; i < m->cap; i++)
    if (m->slots[i].key && m->slots[i].key != TOMB) free(m->slots[i].key);
  free(m->slots);
  memset(m, 0, sizeof *m);
}

bool gw_map_next(const gw_map *m, size_t *i, const char **key, void **val) {
  for (; *i < m->cap; (*i)++) {
    const gw_slot *sl = &m->slots[*i];
    if (sl->key && sl->key != TOMB) {
      if (key) *key = sl->key;
      if (val) *val = sl->val;
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
