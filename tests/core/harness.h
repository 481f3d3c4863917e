/* Test harness for the protocol engine: a simulated clock, recorded
 * callbacks, and helpers to build gateway frames and read client frames.
 *
 * The "peer" in these tests is a scripted fake gateway: each test writes
 * the exact frames a gateway would send and checks the exact frames the
 * engine writes back. It exists only for frame-sequence tests; the
 * property test has a gateway model with real semantics.
 */
#ifndef PARLEY_TESTS_CORE_HARNESS_H
#define PARLEY_TESTS_CORE_HARNESS_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <parley/client.h>

#include "core/engine.h"
#include "wire/wire.h"

/* Assertions that print both values and are never compiled out. */
#define H_FAIL(...)                                                   \
  do {                                                                \
    fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                   \
    fprintf(stderr, __VA_ARGS__);                                     \
    fprintf(stderr, "\n");                                            \
    abort();                                                          \
  } while (0)
#define H_EQ(a, b)                                                              \
  do {                                                                          \
    unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b); \
    if (a_ != b_) H_FAIL("%s == %s failed: %llu != %llu", #a, #b, a_, b_);     \
  } while (0)
#define H_TRUE(x)                                        \
  do {                                                   \
    if (!(x)) H_FAIL("%s is false", #x);                 \
  } while (0)
#define H_STREQ(a, b)                                                       \
  do {                                                                      \
    const char *a_ = (a), *b_ = (b);                                        \
    if (!a_ || !b_ || strcmp(a_, b_) != 0)                                  \
      H_FAIL("%s == %s failed: '%s' != '%s'", #a, #b, a_ ? a_ : "(null)",   \
             b_ ? b_ : "(null)");                                           \
  } while (0)

#define H_MAX_REC 4096

typedef struct h_event {
  char conv[PARLEY_MAX_CONVERSATION_ID + 1];
  uint64_t seq;
  uint8_t id[PARLEY_MSG_ID_LEN];
  bool has_id, redelivered;
  int kind;
  char text[128];
} h_event;

typedef struct h_result {
  char conv[PARLEY_MAX_CONVERSATION_ID + 1];
  uint8_t id[PARLEY_MSG_ID_LEN];
  int status;
  uint64_t seq;
  bool duplicate;
  uint32_t attempts;
  void *ud;
  uint64_t at;
} h_result;

typedef struct h_commit_res {
  char conv[PARLEY_MAX_CONVERSATION_ID + 1];
  uint64_t ack_seq;
  int status;
  bool duplicate;
} h_commit_res;

typedef struct harness {
  pe_engine *e;
  uint64_t now;
  h_event *events;
  size_t n_events;
  h_result *results;
  size_t n_results;
  h_commit_res commits[64];
  size_t n_commits;
  int errors[H_MAX_REC];
  char last_error[512];
  size_t n_errors;
  size_t n_ready, n_assign, n_revoke, n_queue;
  /* Optional hook run inside the event callback. */
  void (*on_event)(struct harness *h, const parley_event *ev);
  bool quiet; /* do not print peer errors */
} harness;

pe_config h_config(parley_role role);
void h_init(harness *h, const pe_config *cfg);
void h_fini(harness *h);

/* Feeds a frame to the engine (encoded through the real codec). */
int h_feed(harness *h, const pw_frame *f);
int h_feed_bytes(harness *h, const uint8_t *data, size_t len);

/* Decoded next output frame, NULL when there is none; free with
 * pw_frame_free. */
pw_frame *h_take(harness *h);
/* Takes the next output frame and checks its type; aborts otherwise. */
pw_frame *h_expect(harness *h, Parley__V1__Frame__BodyCase type);
void h_expect_none(harness *h);
size_t h_drain(harness *h); /* drops all output, returns how many */

/* Moves the simulated clock to `to`, calling on_tick at every deadline on
 * the way (and at `to`). */
void h_run_until(harness *h, uint64_t to);
void h_advance(harness *h, uint64_t ms);

/* Connects and completes the handshake with a default Welcome. */
void h_connect(harness *h, uint32_t heartbeat_ms);

/* Frame builders: the returned frame owns its memory; free with
 * h_frame_free. */
pw_frame *mk_welcome(uint32_t heartbeat_ms, uint32_t window);
void mk_welcome_cursor(pw_frame *f, const char *conv, uint64_t after);
pw_frame *mk_deliver(void);
Parley__V1__Event *mk_deliver_add(pw_frame *f, const char *conv, uint64_t seq,
                                  const char *text, const uint8_t *id);
pw_frame *mk_send_ack(const uint8_t *id, const char *conv, uint64_t seq,
                      bool dup, Parley__V1__ErrorCode err);
pw_frame *mk_fetch_result(uint64_t req, const char *conv, bool end,
                          uint64_t last_seq);
Parley__V1__Event *mk_fetch_add(pw_frame *f, const char *conv, uint64_t seq,
                                const char *text, const uint8_t *id);
pw_frame *mk_ping(uint64_t nonce);
pw_frame *mk_error(Parley__V1__ErrorCode code, uint32_t retry_after, bool fatal);
pw_frame *mk_assign(const char *conv, uint64_t epoch, uint64_t acked);
pw_frame *mk_revoke(const char *conv, uint64_t epoch);
pw_frame *mk_commit_result(uint64_t req);
void mk_commit_outcome(pw_frame *f, const char *conv, uint64_t ack_seq,
                       Parley__V1__ErrorCode err, bool dup);
void h_frame_free(pw_frame *f);

/* A deterministic message id derived from a small number. */
void h_id(uint8_t out[PARLEY_MSG_ID_LEN], uint32_t n);

/* Sends a text message with id h_id(n). */
int h_send_text(harness *h, const char *conv, const char *text, uint32_t n);

#endif
