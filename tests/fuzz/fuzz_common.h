/* Shared helpers of the fuzz targets: a check that aborts with a message
 * (libFuzzer turns the abort into a saved crash input) and a little reader
 * that takes bytes off the front of the fuzz input. */
#ifndef PARLEY_TESTS_FUZZ_COMMON_H
#define PARLEY_TESTS_FUZZ_COMMON_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Never compiled out: a fuzz target that stops checking finds nothing. */
#define FZ_CHECK(cond, ...)                                             \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__,  \
              #cond);                                                   \
      fprintf(stderr, __VA_ARGS__);                                     \
      fprintf(stderr, "\n");                                            \
      abort();                                                          \
    }                                                                   \
  } while (0)

typedef struct fz_reader {
  const uint8_t *p;
  size_t left;
} fz_reader;

static inline int fz_empty(const fz_reader *r) { return r->left == 0; }

/* Reading past the end yields zeros, so every input is a valid program. */
static inline uint8_t fz_u8(fz_reader *r) {
  if (!r->left) return 0;
  r->left--;
  return *r->p++;
}

static inline uint16_t fz_u16(fz_reader *r) {
  uint16_t lo = fz_u8(r);
  return (uint16_t)(lo | (uint16_t)fz_u8(r) << 8);
}

/* Takes up to n bytes; *got says how many there were. */
static inline const uint8_t *fz_bytes(fz_reader *r, size_t n, size_t *got) {
  const uint8_t *p = r->p;
  if (n > r->left) n = r->left;
  r->p += n;
  r->left -= n;
  *got = n;
  return p;
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF). */
static inline bool fz_utf8_ok(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0;
  while (i < n) {
    unsigned c = p[i];
    size_t k;
    unsigned min;
    if (c < 0x80) {
      i++;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      k = 1, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
      k = 2, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
      k = 3, min = 0x10000;
    } else {
      return false;
    }
    if (n - i < k + 1) return false;
    unsigned cp = c & (0x3Fu >> k);
    for (size_t j = 1; j <= k; j++) {
      if ((p[i + j] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i + j] & 0x3Fu);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += k + 1;
  }
  return true;
}

#endif
