/* Client message ids: derived (BLAKE2b) for replies that must be stable
 * across handler re-runs, random for everything else. */
#include <parley/types.h>

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "util/idhash.h"

/* The domain string keeps these hashes apart from any other use of
 * BLAKE2b over similar fields. */
static const char msgid_domain[] = "parley.msgid.v1";

static void put_u64le(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Every variable-length field is prefixed with its length so that
 * ("ab", "c") and ("a", "bc") never hash alike. */
static void absorb_field(crypto_generichash_state *st, const char *s) {
  uint8_t len[8];
  size_t n = s ? strlen(s) : 0;
  put_u64le(len, (uint64_t)n);
  crypto_generichash_update(st, len, sizeof len);
  if (n) crypto_generichash_update(st, (const unsigned char *)s, n);
}

void pu_hash_fields(const char *const *fields, size_t n, uint8_t *out, size_t outlen) {
  crypto_generichash_state st;
  crypto_generichash_init(&st, NULL, 0, outlen);
  for (size_t i = 0; i < n; i++) absorb_field(&st, fields[i]);
  crypto_generichash_final(&st, out, outlen);
}

void parley_msg_id_derive(const char *principal, const char *conversation,
                          uint64_t inbound_seq, uint32_t ordinal,
                          uint8_t out[PARLEY_MSG_ID_LEN]) {
  crypto_generichash_state st;
  uint8_t num[12];
  crypto_generichash_init(&st, NULL, 0, PARLEY_MSG_ID_LEN);
  absorb_field(&st, msgid_domain);
  absorb_field(&st, principal);
  absorb_field(&st, conversation);
  put_u64le(num, inbound_seq);
  for (int i = 0; i < 4; i++) num[8 + i] = (uint8_t)(ordinal >> (8 * i));
  crypto_generichash_update(&st, num, sizeof num);
  crypto_generichash_final(&st, out, PARLEY_MSG_ID_LEN);
}

void parley_msg_id_random(uint8_t out[PARLEY_MSG_ID_LEN]) {
  /* sodium_init is idempotent and thread safe; calling it here means no
   * caller has to remember to initialise the library first. */
  static int ready;
  if (!ready) {
    if (sodium_init() < 0) {
      /* Without a working RNG a random id cannot be drawn safely; an
       * all-zero id would collide, so fail loudly instead. */
      abort();
    }
    ready = 1;
  }
  randombytes_buf(out, PARLEY_MSG_ID_LEN);
}

void parley_msg_id_hex(const uint8_t id[PARLEY_MSG_ID_LEN], char out[33]) {
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < PARLEY_MSG_ID_LEN; i++) {
    out[2 * i] = hex[id[i] >> 4];
    out[2 * i + 1] = hex[id[i] & 15];
  }
  out[32] = '\0';
}
