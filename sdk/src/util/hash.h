/* The string hash of the SDK's, the gateway's and the Lua runtime's
 * tables: 64-bit FNV-1a, fast on short ids and well spread. Not for
 * anything an attacker could exploit by choosing keys: each table bounds
 * its size and probes linearly. */
#ifndef PARLEY_UTIL_HASH_H
#define PARLEY_UTIL_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t pu_hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

/* The same job for keys whose length is known (or taken once with strlen,
 * which reads a word at a time): eight bytes per multiply instead of one,
 * so a 40-byte key costs about a third of pu_hash_str and a 5-byte one
 * about as much. The values differ
 * from pu_hash_str's; a table must use one of the two throughout. */
static inline uint64_t pu_hash_mem(const void *p, size_t n) {
  const unsigned char *s = p;
  uint64_t h = 0x9e3779b97f4a7c15ull ^ ((uint64_t)n * 0xff51afd7ed558ccdull);
  while (n > 8) {
    uint64_t w;
    memcpy(&w, s, 8);
    h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
    h ^= h >> 31;
    s += 8;
    n -= 8;
  }
  /* The last 1 to 8 bytes without a byte loop: two reads that may overlap
   * (as wyhash does); the length, mixed in above, tells the cases apart. */
  uint64_t w = 0;
  if (n >= 4) {
    uint32_t a, b;
    memcpy(&a, s, 4);
    memcpy(&b, s + n - 4, 4);
    w = ((uint64_t)a << 32) | b;
  } else if (n) {
    w = ((uint64_t)s[0] << 16) | ((uint64_t)s[n >> 1] << 8) | s[n - 1];
  }
  /* splitmix64's finaliser: every input bit reaches the low bits that a
   * power-of-two table indexes with. */
  h = (h ^ w) * 0x94d049bb133111ebull;
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 32;
  return h;
}

#endif
