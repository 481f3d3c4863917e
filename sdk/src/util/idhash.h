/* Stable ids from strings: BLAKE2b over length-prefixed fields, the one
 * derivation behind message ids (msgid.c), the sidecar's idempotency keys
 * and proactive conversations' ids. */
#ifndef PARLEY_UTIL_IDHASH_H
#define PARLEY_UTIL_IDHASH_H

#include <stddef.h>
#include <stdint.h>

/* out (outlen bytes, 16 to 64) = BLAKE2b of each field as its length (8
 * bytes, little-endian) then its bytes, so ("ab", "c") and ("a", "bc")
 * never hash alike. A NULL field is the empty string. The first field is
 * by convention a domain string that keeps one use apart from the others.
 * Ids derived this way are stored and compared across versions: the
 * layout must never change. */
void pu_hash_fields(const char *const *fields, size_t n, uint8_t *out, size_t outlen);

#endif
