/* Room for one more element in a growable array: the one growth rule of
 * the SDK's, the gateway's and the Lua runtime's appended lists. */
#ifndef PARLEY_UTIL_ARRAY_H
#define PARLEY_UTIL_ARRAY_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <parley/error.h>

/* Ensures the array whose pointer is at items (the address of a T *: n
 * elements in use, *cap allocated, each elem bytes) can take one more:
 * doubles the capacity, starting at first. Returns 0, or PARLEY_ENOMEM
 * with the array and *cap unchanged (the caller's list stays valid, so a
 * failed append loses nothing already there). The pointer is read and
 * written with memcpy, not through a void ** that would alias a T **. */
static inline int pu_reserve(void *items, size_t *cap, size_t n, size_t elem, size_t first) {
  if (n < *cap) return 0;
  size_t ncap = *cap ? *cap * 2 : first;
  if (ncap < *cap || ncap > SIZE_MAX / elem) return PARLEY_ENOMEM;
  void *old;
  memcpy(&old, items, sizeof old);
  void *t = realloc(old, ncap * elem);
  if (!t) return PARLEY_ENOMEM;
  memcpy(items, &t, sizeof t);
  *cap = ncap;
  return 0;
}

#endif
