/* The client-side protocol engine: sans-I/O.
 *
 * Bytes (whole WebSocket messages) and the current monotonic time go in;
 * encoded frames, application callbacks and the next deadline come out.
 * The engine never reads a clock, opens a socket or sleeps: the transport
 * (sdk/src/transport) and the tests (simulated clock, scripted fake peer)
 * drive it the same way. That is what makes retry timing, ordering and
 * resume testable and fuzzable.
 *
 * Driving it:
 *   - the transport connected:      pe_engine_on_connect(now)    (queues Hello)
 *   - a whole message arrived:       pe_engine_on_input(bytes, now)
 *   - the connection was lost:       pe_engine_on_disconnect(now)
 *   - pe_engine_deadline() passed:   pe_engine_on_tick(now)
 *   - after each call: write every pe_engine_take_output() frame, close the
 *     connection if pe_engine_should_close(), and when disconnected
 *     reconnect at pe_engine_reconnect_at().
 *   - the deadline matters while disconnected too: sends and commits fail
 *     at their deadlines whether or not a connection exists.
 *
 * All times are milliseconds on a monotonic clock with an arbitrary origin.
 */
#ifndef PARLEY_CORE_ENGINE_H
#define PARLEY_CORE_ENGINE_H

#include <parley/error.h>
#include <parley/types.h>

typedef struct pe_engine pe_engine;

/* Callbacks into the layer above (the client). Pointers are borrowed until
 * the callback returns. Callbacks may call back into the engine (send,
 * ack, commit) but must not free it. */
typedef struct pe_hooks {
  void *ud;
  void (*event)(void *ud, const parley_event *ev);
  void (*send_result)(void *ud, const parley_send_result *r, void *send_ud);
  void (*commit_result)(void *ud, const parley_commit_result *r);
  void (*assign)(void *ud, const parley_assignment *a);
  void (*revoke)(void *ud, const char *conversation, uint64_t epoch,
                 const char *reason);
  void (*queue)(void *ud, const parley_queue_item *items, size_t n,
                bool update, bool removed);
  void (*ready)(void *ud);                        /* Welcome received */
  void (*peer_error)(void *ud, int status, const char *message);
  /* Draws the id of a send given none. The engine has no random source of
   * its own that could serve as one: the client passes
   * parley_msg_id_random. NULL: ids come from a generator seeded with
   * tuning.seed, which makes a test's frames reproducible. */
  void (*random_id)(void *ud, uint8_t out[PARLEY_MSG_ID_LEN]);
} pe_hooks;

typedef struct pe_config {
  const char *principal;
  const char *token;        /* also put in Hello, for transports without headers */
  parley_role role;
  const char *device;
  const char *locale;
  const char *const *queues;
  size_t n_queues;
  bool manual_ack;          /* bots always behave as manual_ack (commit only) */
  parley_tuning tuning;     /* zero fields take the defaults */
  /* Additions (zero keeps the default): */
  size_t outbox_max_bytes;  /* [64 MiB] bytes of pending sends and commits */
  size_t out_headroom;      /* spare bytes before every output frame, e.g.
                             * LWS_PRE: the caller may write into
                             * data[-out_headroom .. -1] of a taken frame */
} pe_config;

pe_engine *pe_engine_new(const pe_config *cfg, const pe_hooks *hooks);
void pe_engine_free(pe_engine *e);

/* Transport events. */
int pe_engine_on_connect(pe_engine *e, uint64_t now);
int pe_engine_on_input(pe_engine *e, const uint8_t *data, size_t len,
                       uint64_t now);
void pe_engine_on_disconnect(pe_engine *e, uint64_t now);
/* An attempt failed before the connection opened (refused, DNS, TLS, an
 * HTTP answer to the upgrade), so the engine never saw it: the next
 * attempt's time is drawn as for a lost session, from the same backoff.
 * next_node: the caller moves on to another gateway node that has not
 * failed yet this round, so only a short jitter (below reconnect_min) is
 * drawn and the backoff does not grow. */
void pe_engine_on_connect_failed(pe_engine *e, uint64_t now, bool next_node);
int pe_engine_on_tick(pe_engine *e, uint64_t now);

/* The earliest time at which pe_engine_on_tick must be called; UINT64_MAX
 * when nothing is scheduled. */
uint64_t pe_engine_deadline(const pe_engine *e);

/* Next encoded frame to write, in order. *data stays valid until the next
 * call into the engine. Returns false when there is none. */
bool pe_engine_take_output(pe_engine *e, const uint8_t **data, size_t *len);

/* The engine wants the connection closed (peer silent, protocol error,
 * graceful close finished). *code is the WebSocket close code to use. */
bool pe_engine_should_close(const pe_engine *e, int *code);

/* When disconnected: the time at which to reconnect (backoff with full
 * jitter, at least any retry-after the gateway sent). */
uint64_t pe_engine_reconnect_at(const pe_engine *e);

/* Application calls; same meaning as the parley_client_* functions. */
int pe_engine_send(pe_engine *e, const char *conversation,
                   const parley_content *content, const parley_quote *quote,
                   const uint8_t *msg_id, uint64_t epoch, void *send_ud,
                   uint64_t now);
int pe_engine_action(pe_engine *e, const char *conversation,
                     const parley_action *action, const uint8_t *msg_id,
                     uint64_t epoch, void *send_ud, uint64_t now);
/* Bots: opens conversation (a new id) with customer, through the outbox
 * like an action (Action.open, epoch 0): same retry, same idempotency by
 * msg_id, one send_result. locale may be NULL (the gateway picks the
 * customer's). PARLEY_EINVAL for another role or a bad customer name. */
int pe_engine_open(pe_engine *e, const char *conversation, const char *customer,
                   const char *locale, const uint8_t *msg_id, void *send_ud,
                   uint64_t now);
int pe_engine_ack(pe_engine *e, const char *conversation, uint64_t seq,
                  uint64_t now);
int pe_engine_commit(pe_engine *e, const parley_commit *commits, size_t n,
                     uint64_t now);
int pe_engine_queue(pe_engine *e, const char *queue, uint64_t now);

/* Graceful close: flush ACKs, wait for pending sends/commits up to
 * deadline, then should_close() turns true. */
int pe_engine_close(pe_engine *e, uint64_t now, uint64_t deadline);

bool pe_engine_ready(const pe_engine *e);
void pe_engine_stats(const pe_engine *e, parley_client_stats *out);

#endif /* PARLEY_CORE_ENGINE_H */
