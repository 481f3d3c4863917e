/* A loopback TCP fault proxy for chaos tests.
 *
 * It listens on 127.0.0.1 (an ephemeral port), and forwards every accepted
 * connection to a target port on 127.0.0.1. On command it injects faults:
 *
 *   - fp_cut_all: every live connection is reset (both sides);
 *   - fp_cut_mid: the next server->client burst of one connection is
 *     forwarded only in part (k bytes, always less than the burst) and the
 *     connection is then reset, so the client sees a WebSocket frame cut in
 *     its middle;
 *   - fp_stall: one direction of every connection (and of the connections
 *     accepted meanwhile) forwards nothing for t ms; what arrives is held
 *     (bounded) and forwarded afterwards;
 *   - fp_slice: every write is split into pieces of 1..n bytes, one piece
 *     per loop turn, so the peers see frames arrive in fragments.
 *
 * The proxy runs on its own thread (poll loop); every function below may be
 * called from any other thread. Random choices (which connection, piece
 * sizes) come from a generator seeded by fp_options.seed, so a fault plan is
 * the same for the same seed. Everything is bounded: connections
 * (max_conns), bytes held per direction (buf_bytes), and every wait.
 */
#ifndef PARLEY_TEST_FAULTPROXY_H
#define PARLEY_TEST_FAULTPROXY_H

#include <stddef.h>
#include <stdint.h>

typedef struct fp_proxy fp_proxy;

typedef enum fp_dir {
  FP_C2S = 0, /* client to server */
  FP_S2C = 1, /* server to client */
} fp_dir;

typedef struct fp_options {
  int target_port;   /* on 127.0.0.1 */
  uint64_t seed;     /* 0 takes 1 */
  size_t max_conns;  /* [256] more are refused (closed at once) */
  size_t buf_bytes;  /* [1 MiB] held per direction of a connection */
} fp_options;

typedef struct fp_stats {
  uint64_t accepted;     /* connections accepted */
  uint64_t refused;      /* closed because of max_conns or a dead target */
  uint64_t cut;          /* connections reset by a command */
  uint64_t cut_mid;      /* of which in the middle of a burst */
  uint64_t bytes_c2s, bytes_s2c;
  uint64_t live;         /* connections open now (gauge) */
} fp_stats;

/* Starts the proxy thread. Returns 0 and *out, or -1. */
int fp_start(const fp_options *o, fp_proxy **out);
/* The port it listens on. */
int fp_port(const fp_proxy *p);
/* Resets every live connection; returns how many. */
int fp_cut_all(fp_proxy *p);
/* Arms a cut in the middle of the next server->client burst of one live
 * connection chosen by the generator (k: bytes forwarded first; 0 lets the
 * generator choose). Returns 0, or -1 when no connection is live. */
int fp_cut_mid(fp_proxy *p, size_t k);
/* Holds one direction for ms milliseconds (0 ends a stall now). */
void fp_stall(fp_proxy *p, fp_dir dir, uint32_t ms);
/* Splits writes into pieces of 1..n bytes; 0 turns it off. */
void fp_slice(fp_proxy *p, size_t n);
void fp_get_stats(fp_proxy *p, fp_stats *out);
/* Stops the thread, closes everything, frees. NULL is a no-op. */
void fp_stop(fp_proxy *p);

#endif
