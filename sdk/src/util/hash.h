/* The string hash of the SDK's, the gateway's and the Lua runtime's
 * tables: 64-bit FNV-1a, fast on short ids and well spread. Not for
 * anything an attacker could exploit by choosing keys: each table bounds
 * its size and probes linearly. */
#ifndef PARLEY_UTIL_HASH_H
#define PARLEY_UTIL_HASH_H

#include <stdint.h>

static inline uint64_t pu_hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

#endif
