/* Protobuf base-128 varints, for the frames the SDK and the gateway
 * assemble by hand from parts already encoded (a Commit of stored items, a
 * SendAck), where a generic pack would encode everything again. */
#ifndef PARLEY_UTIL_VARINT_H
#define PARLEY_UTIL_VARINT_H

#include <stddef.h>
#include <stdint.h>

/* Bytes v takes as a varint (1 to 10). */
static inline size_t pu_varint_len(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

/* Writes v at p; returns the byte after it. */
static inline uint8_t *pu_varint_put(uint8_t *p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  *p++ = (uint8_t)v;
  return p;
}

#endif
