/* A bounded string-keyed hash map (map.c), shared by the gateway's layers. */
#ifndef PARLEY_GW_MAP_H
#define PARLEY_GW_MAP_H

#include <stdbool.h>
#include <stddef.h>

/* Open addressing, string keys copied in, values borrowed. Growth stops at
 * GW_MAP_MAX entries: gw_map_put then fails with PARLEY_ETOOBIG. */
#define GW_MAP_MAX (1u << 22)
typedef struct gw_map {
  char **keys;
  void **vals;
  size_t cap, len, tombs;
} gw_map;

void *gw_map_get(const gw_map *m, const char *key);
int gw_map_put(gw_map *m, const char *key, void *val);
void *gw_map_del(gw_map *m, const char *key);
void gw_map_clear(gw_map *m);
/* Iteration: for (size_t i = 0; gw_map_next(m, &i, &k, &v);) */
bool gw_map_next(const gw_map *m, size_t *i, const char **key, void **val);

#endif
