/* Internal state of the client protocol engine, shared by its modules:
 *   engine.c  connection life cycle, frame dispatch, the timer heap, output
 *             frames, the conversation table, create/free and stats;
 *   outbox.c  sends and commits: per-conversation order, retry with
 *             backoff, answers, results;
 *   inbox.c   inbound events: order, the reorder buffer, gaps and fetches,
 *             batched ACKs, bot assignments.
 * Nothing here is public: the contract is engine.h.
 */
#ifndef PARLEY_CORE_ENGINE_INT_H
#define PARLEY_CORE_ENGINE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/engine.h"
#include "util/assert.h"
#include "util/rand.h"
#include "wire/wire.h"

/* ----------------------------------------------------------- constants */

/* Defaults of parley_tuning (a zero field takes these). */
#define D_ACK_TIMEOUT 2000u
#define D_RETRY_MAX 30000u
#define D_MAX_ATTEMPTS 10u
#define D_SEND_DEADLINE 120000u
#define D_OUTBOX_MAX 10000u
#define D_ACK_BATCH_N 32u
#define D_ACK_BATCH_MS 50u
#define D_HEARTBEAT 10000u
#define D_REORDER_MAX 256u
#define D_REORDER_BYTES (8u * 1024u * 1024u)
#define D_GAP_TIMEOUT 200u
#define D_FETCH_PAGE 200u
#define D_RECONNECT_MIN 100u
#define D_RECONNECT_MAX 30000u
#define D_OUTBOX_BYTES ((size_t)64 * 1024 * 1024)

/* Conversations are never forgotten (their next seq is what makes
 * delivery exactly-once), so their number has a hard ceiling. */
#define PE_MAX_CONVERSATIONS (1u << 20)
/* Recently completed send ids, to tell a late duplicate SendAck from a
 * SendAck for an id this client never sent. */
#define PE_DONE_RING 256
/* Entries per Ack frame, so one stays far below any sane frame limit. */
#define PE_ACK_ENTRIES_MAX 1024
/* Close codes the engine asks for: a dead peer or a failed handshake,
 * and a clean close. */
#define PE_CLOSE_DEAD_PEER 4009
#define PE_CLOSE_NORMAL 1000

/* ------------------------------------------------------------- types */

enum { T_SEND = 1, T_CONV = 2, T_COMMIT = 3 };
enum { ST_DOWN = 0, ST_HANDSHAKE = 1, ST_READY = 2 };
/* A send or commit is queued (not on the wire of this connection), on the
 * wire waiting for its answer, or refused with a retryable error and
 * waiting for its retry time. */
enum { Q_QUEUED = 0, Q_WIRE = 1, Q_RETRY = 2 };

typedef struct pe_timer {
  uint64_t at;
  size_t idx; /* position in the heap; SIZE_MAX when not armed */
  int kind;
} pe_timer;

typedef struct pe_conv pe_conv;

typedef struct pe_send {
  struct pe_send *cnext;         /* conversation FIFO */
  struct pe_send *gprev, *gnext; /* global creation order */
  pe_conv *conv;
  uint64_t serial;
  uint8_t id[PARLEY_MSG_ID_LEN];
  uint8_t *frame; /* the encoded Send frame, written as is on every attempt */
  size_t len;
  void *ud;
  uint32_t attempts;
  /* Writes on this connection: the backoff grows with these, not with
   * every write since the send was made, so that a send written again
   * after a few reconnects is not left waiting up to retry_max_ms when
   * one answer of a live connection goes missing. */
  uint32_t wire_attempts;
  /* Writes on this connection not answered yet. */
  uint32_t unanswered;
  /* Of those, writes made under an epoch the conversation has since left
   * (see pe_outbox_restamp): their STALE_EPOCH answers are not final. */
  uint32_t stale_owed;
  /* Written under an older epoch before this one (restamped): a STALE_EPOCH
   * answer cannot be told from a copy of an earlier write's refusal, so it
   * is tried again, at most PE_STALE_RETRIES times, unless revoked. */
  bool restamped;
  uint8_t stale_retries;
  int state;
  uint64_t deadline_at;
  pe_timer timer;
} pe_send;

#define PE_STALE_RETRIES 3

typedef struct pe_commit {
  struct pe_commit *cnext;         /* conversation FIFO */
  struct pe_commit *gprev, *gnext; /* global order */
  pe_conv *conv;
  uint64_t barrier; /* sends of the conversation up to this serial go first */
  uint64_t ack_seq;
  uint8_t *item; /* the encoded ConversationCommit */
  size_t len;
  uint32_t attempts;
  uint32_t wire_attempts; /* writes on this connection (as for sends) */
  int state;
  uint64_t first_req; /* request id of the first write: older answers are not ours */
  uint64_t request_id;
  uint64_t deadline_at;
  pe_timer timer;
} pe_commit;

typedef struct pe_held {
  uint64_t seq;
  uint8_t *data; /* the encoded Event */
  size_t len;
  uint8_t id[PARLEY_MSG_ID_LEN];
  bool has_id;
} pe_held;

/* The reorder buffer is a list of sorted blocks: inserting an early event
 * moves at most one block's entries (a flat sorted array moves half the
 * buffer on average), and delivering from the front is as cheap. A block
 * grows up to PE_HELD_BLOCK entries and then splits in two. */
#define PE_HELD_BLOCK 64u
typedef struct pe_hblock {
  uint32_t n, cap;
  pe_held e[];
} pe_hblock;

struct pe_conv {
  char *id;
  uint64_t next;      /* next seq to apply */
  uint64_t known_max; /* highest seq known to exist */
  uint8_t last_id[PARLEY_MSG_ID_LEN]; /* msg id of seq next-1 */
  bool last_has_id;
  bool last_known; /* seq next-1 was applied here, so last_id means something */
  /* Acknowledgement (customers and agents). */
  uint64_t ack_target, ack_sent;
  uint64_t ack_conn; /* connection on which ack_sent was last written */
  bool ack_dirty, reack;
  pe_conv *dirty_next;
  /* Bots. */
  uint64_t committed;
  uint64_t epoch;
  bool assigned, revoked;
  /* Reorder buffer, sorted by seq. */
  pe_hblock **hb;  /* blocks in seq order, each sorted, none empty */
  size_t n_hb, cap_hb;
  size_t n_held;   /* entries in all blocks */
  /* Gap repair. */
  bool fetching;
  uint8_t strikes; /* fetches in a row that said the held events do not exist */
  uint64_t fetch_req, fetch_from, fetch_to;
  pe_timer timer; /* gap timer, or fetch timeout while fetching */
  /* Outbound. */
  pe_send *sq_head, *sq_tail;
  pe_commit *cq_head, *cq_tail;
  /* On the engine's list of conversations whose head commit may have
   * become writable (pe_commit_wake). */
  bool commit_woken;
  pe_conv *wake_next;
};

typedef struct pe_out {
  struct pe_out *next;
  uint8_t *buf; /* headroom + frame */
  size_t len;
} pe_out;

struct pe_engine {
  /* Configuration, copied. */
  char *principal, *token, *device, *locale;
  char **queues;
  size_t n_queues;
  parley_role role;
  bool manual_ack, bot;
  pe_hooks hooks;
  size_t headroom;
  uint64_t ack_timeout, retry_max, send_deadline, ack_batch_ms, heartbeat,
      gap_timeout, reconnect_min, reconnect_max;
  uint32_t max_attempts, outbox_max, ack_batch_n, reorder_max, fetch_page;
  size_t reorder_max_bytes, max_frame_in, outbox_max_bytes;

  /* Connection. */
  int state;
  uint64_t now;
  bool should_close;
  int close_code;
  bool closing;
  uint64_t close_deadline;
  uint64_t connected_at, last_rx, last_tx;
  uint64_t hb; /* effective heartbeat interval */
  size_t max_frame_out;
  uint32_t window;
  uint32_t reconnect_n;
  uint64_t retry_after; /* floor under the next reconnect wait */
  uint64_t reconnect_at;
  bool ever_connected;
  uint64_t conn_no;  /* connections opened so far */
  uint64_t ready_conn; /* the last connection that got a Welcome */
  uint64_t ping_nonce;
  uint64_t next_request_id;

  /* Conversations. */
  pe_conv **tab;
  size_t tab_cap, n_conv;

  /* Timers. */
  pe_timer **heap;
  size_t heap_n, heap_cap;

  /* Outbound. */
  pe_send *g_head, *g_tail;
  size_t n_sends, outbox_bytes;
  uint64_t send_serial;
  pe_commit *c_head, *c_tail;
  size_t n_commits, commit_bytes;
  /* Conversations to look at on the next commit flush, in the order they
   * were woken: a flush visits these instead of every queued commit. */
  pe_conv *wake_head, *wake_tail;
  /* Recently completed sends, and how many of their writes were still
   * unanswered: a handler that runs again sends the same id, and since a
   * SendAck names only the id, a refusal may be the late answer to that
   * earlier send and must not fail the new one. */
  struct pe_done {
    uint8_t id[PARLEY_MSG_ID_LEN];
    uint32_t owed;
  } done_ring[PE_DONE_RING];
  size_t done_pos, done_n;
  /* Completed sends that still owe answers when the ring moves past them
   * (more than PE_DONE_RING sends completed while resends of theirs were
   * unanswered: many conversations under a slow gateway). Each leaves when
   * its last answer comes or the connection ends, so this holds at most
   * one entry per write in flight. */
  struct pe_done *done_spill;
  size_t done_spill_n, done_spill_cap;

  /* Acknowledgements waiting to be flushed. */
  pe_conv *dirty_head;
  uint32_t ack_pending;
  uint64_t ack_due; /* 0: nothing pending */

  /* Reorder totals. */
  size_t reorder_bytes, reorder_events;

  /* Output. */
  pe_out *out_head, *out_tail;
  size_t out_bytes;
  pe_out *lent;

  pu_rng rng;    /* jitter, seeded from tuning.seed */
  pu_rng id_rng; /* message ids when hooks.random_id is NULL */
  parley_client_stats stats;
};

/* engine.c: utilities, timers, output, conversations. pe_peer_error
 * reports a bad frame or a local failure through the peer_error hook. */
uint64_t pe_rng_below(pe_engine *e, uint64_t n);
/* A message id for a send given none: hooks.random_id, or id_rng. */
void pe_random_id(pe_engine *e, uint8_t out[PARLEY_MSG_ID_LEN]);
uint64_t pe_add_sat(uint64_t a, uint64_t b);
uint64_t pe_exp_window(uint64_t base, uint32_t n, uint64_t cap);
void pe_peer_error(pe_engine *e, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void pe_timer_cancel(pe_engine *e, pe_timer *t);
int pe_timer_set(pe_engine *e, pe_timer *t, uint64_t at);
void pe_out_write(pe_engine *e, const uint8_t *data, size_t len);
void pe_emit(pe_engine *e, const pw_frame *f);
pe_conv *pe_conv_find(const pe_engine *e, const char *id);
pe_conv *pe_conv_get(pe_engine *e, const char *id);

/* outbox.c: sends and commits. */
uint64_t pe_retry_delay(pe_engine *e, uint32_t attempts);
void pe_send_finish(pe_engine *e, pe_send *s, int status, uint64_t seq,
                    int64_t server_time, bool dup, const char *msg);
void pe_flush_commits(pe_engine *e);
/* Marks c for the next commit flush: its head commit may be writable now
 * (a commit was queued, finished or is due again, or a send it waits
 * behind finished). */
void pe_commit_wake(pe_engine *e, pe_conv *c);
void pe_send_timer(pe_engine *e, pe_send *s);
bool pe_code_retryable(Parley__V1__ErrorCode code);
pe_send *pe_send_lookup(pe_engine *e, const char *conversation,
                        const uint8_t *id);
void pe_on_send_ack(pe_engine *e, const Parley__V1__SendAck *a);
void pe_outbox_restamp(pe_engine *e, pe_conv *c, uint64_t epoch);
void pe_commit_finish(pe_engine *e, pe_commit *k, int status, bool dup,
                      uint64_t state_version);
void pe_commit_timer(pe_engine *e, pe_commit *k);
void pe_on_commit_result(pe_engine *e, const Parley__V1__CommitResult *r);
void pe_conv_pump(pe_engine *e, pe_conv *c);
void pe_done_forget_owed(pe_engine *e);

/* inbox.c: inbound events and ACKs. */
void pe_held_trim(pe_engine *e, pe_conv *c);
void pe_held_clear(pe_engine *e, pe_conv *c);
bool pe_may_ack(const pe_engine *e);
void pe_ack_mark(pe_engine *e, pe_conv *c);
void pe_ack_flush(pe_engine *e);
void pe_conv_gap_check(pe_engine *e, pe_conv *c);
void pe_conv_timer(pe_engine *e, pe_conv *c);
void pe_conv_drain(pe_engine *e, pe_conv *c);
int pe_on_deliver(pe_engine *e, const Parley__V1__Deliver *d);
int pe_on_fetch_result(pe_engine *e, const Parley__V1__FetchResult *r);
void pe_on_assign(pe_engine *e, const Parley__V1__Assign *a);
void pe_on_revoke(pe_engine *e, const Parley__V1__Revoke *r);

#endif
