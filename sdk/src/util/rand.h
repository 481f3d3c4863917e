/* The one pseudo-random generator of the SDK, the Lua runtime and the CLI.
 *
 * splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
 * generators", 2014): one 64-bit word of state, every seed valid, good
 * enough statistically for jitter, fault injection and test shuffles. It
 * is not a cryptographic source: message ids and tokens come from
 * libsodium (parley_msg_id_random).
 *
 * A generator is a plain value the caller owns and seeds, so code that
 * takes one (the protocol engine, the spec runner) is reproducible from a
 * seed; pu_rng_seed_fresh gives a seed that differs between generators and
 * processes for the places that want no fixed sequence.
 */
#ifndef PARLEY_UTIL_RAND_H
#define PARLEY_UTIL_RAND_H

#include <stdint.h>

typedef struct pu_rng {
  uint64_t state;
} pu_rng;

/* Every seed, 0 included, gives a full-period sequence. */
static inline void pu_rng_seed(pu_rng *r, uint64_t seed) { r->state = seed; }

static inline uint64_t pu_rng_next(pu_rng *r) {
  uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Uniform enough in [0, n) for n far below 2^64 (the modulo bias is at
 * most n / 2^64); 0 when n is 0. */
static inline uint64_t pu_rng_below(pu_rng *r, uint64_t n) {
  return n ? pu_rng_next(r) % n : 0;
}

/* A seed from the operating system's random source, so that generators
 * seeded this way (a fleet of clients reconnecting after one outage) do
 * not move in lockstep. */
uint64_t pu_rng_seed_fresh(void);

#endif /* PARLEY_UTIL_RAND_H */
