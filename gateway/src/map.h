/* A bounded string-keyed hash map (map.c), shared by the gateway's layers. */
#ifndef PARLEY_GW_MAP_H
#define PARLEY_GW_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Open addressing, string keys copied in, values borrowed. Growth stops at
 * GW_MAP_MAX entries: gw_map_put then fails with PARLEY_ETOOBIG. */
#define GW_MAP_MAX (1u << 22)
/* A slot keeps its key's hash: a probe compares hashes before strings, and
 * growing rehashes nothing. */
typedef struct gw_slot {
  char *key; /* NULL: empty; the map's tombstone: deleted */
  void *val;
  uint64_t hash;
} gw_slot;
typedef struct gw_map {
  gw_slot *slots;
  size_t cap, len, tombs;
} gw_map;

void *gw_map_get(const gw_map *m, const char *key);
int gw_map_put(gw_map *m, const char *key, void *val);
void *gw_map_del(gw_map *m, const char *key);
void gw_map_clear(gw_map *m);
/* Iteration: for (size_t i = 0; gw_map_next(m, &i, &k, &v);) */
bool gw_map_next(const gw_map *m, size_t *i, const char **key, void **val);

/* Map keys and names are built on every frame, where snprintf's format
 * parsing cost more than the map lookup. Both write what snprintf(buf, n,
 * ...) would, cut at n - 1 bytes, and return buf.
 * gw_copy: "%s" of s. gw_join: a, b and c (c may be NULL for two parts)
 * joined with the unit separator 0x1f. */
char *gw_copy(char *buf, size_t n, const char *s);
char *gw_join(char *buf, size_t n, const char *a, const char *b, const char *c);

#endif
