/* Seeds from libsodium's randombytes (getrandom(2) on Linux): unlike a
 * clock reading, two clients started in the same tick get different ones. */
#include "util/rand.h"

#include <sodium.h>

uint64_t pu_rng_seed_fresh(void) {
  uint64_t s;
  randombytes_buf(&s, sizeof s);
  return s;
}
