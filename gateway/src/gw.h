/* Internal structures shared by the gateway modules:
 *   config.c  YAML -> pg_config, token checks
 *   map.c     a bounded string-keyed hash map
 *   store/    the storage interface (store.h) and its SQLite backend
 *   hot.c     hot state: conversations, event tails, recent client ids
 *   out.c     a connection's outgoing side: frames, errors, close, faults
 *   apply.c   group commit: Send, Commit and Ack applied to the hot state
 *             and handed to the store as one batch per loop iteration
 *   router.c  conversations: participants, bot assignment, fleets, pushing
 *   session.c per-connection protocol (Hello, Ack, Fetch, QueueRequest, ...)
 *   server.c  libwebsockets glue, timers, lifecycle
 *   main.c    pg_gateway_main
 * Each layer calls only the ones listed above it (the store first); the
 * batch apply tells routing what became durable through pg_route_hooks.
 */
#ifndef PARLEY_GW_H
#define PARLEY_GW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "wire/wire.h"
#include "transport/reasm.h"
#include "gateway.h"

struct lws;

#include "map.h"
#include "store/store.h"

/* --------------------------------------------------------------- config */

enum { PG_ROLE_CUSTOMER = 1, PG_ROLE_AGENT = 2, PG_ROLE_BOT = 3 };
enum { PG_HASH_NONE = 0, PG_HASH_SHA256, PG_HASH_BLAKE2B, PG_HASH_ANY };

typedef struct pg_principal {
  char *name;
  int role;
  char *token;          /* plain token (token: or token_env:) or NULL */
  uint8_t hash[32];     /* token_hash */
  int hash_kind;
  char **queues;        /* agents */
  size_t n_queues;
} pg_principal;

struct pg_config {
  char *name;            /* file name, for messages */
  char *listen;
  int port;
  char *data_dir;
  /* `storage:` (store/storage_cfg.h): "sqlite" or "postgres" (static), and
   * the PostgreSQL connection string with its password (NULL for SQLite). */
  const char *storage_kind;
  char *storage_url;
  int durability;
  bool group_commit;
  uint32_t busy_poll_us; /* 0: the loop sleeps in epoll_wait when idle */
  char *bot;
  pg_principal *principals;
  size_t n_principals;
  uint8_t *customer_secret; /* NULL: customers must be listed */
  size_t secret_len;
  uint32_t max_frame_bytes, window, ack_timeout_ms, heartbeat_ms;
  uint32_t fetch_limit;
  double rate;           /* Sends per second per connection; 0 = unlimited */
  uint32_t burst;
  uint32_t max_conns;    /* per principal */
  uint32_t max_connections; /* whole gateway */
  char *tls_cert, *tls_key;
  bool plain_tokens;     /* some principal has a plain token: warn */
  /* Test switches (`faults:`), off unless set: percent of Deliver and
   * SendAck frames the gateway drops, writes twice, or (Deliver) holds back
   * and writes after the next frame to the same connection. */
  uint32_t fault_drop_push, fault_dup_push, fault_reorder_push;
  uint32_t fault_drop_ack, fault_dup_ack;
  uint64_t fault_seed;
  struct pg_web *web;    /* web pages (web.c) */
  /* Test switch: the store's writer holds each batch this long (store.h,
   * test_hold_ms), so a test can kill the gateway while it does. */
  uint32_t fault_writer_hold_ms;
  /* Hot state bounds (`cache:`). */
  size_t cache_tail_bytes;  /* per conversation */
  size_t cache_max_bytes;   /* all tails together */
  size_t cache_recent_ids;  /* recent (sender, msg id) kept in memory */
  /* `proactive:` (open.c): which bots may open conversations with whom. */
  struct pg_open_rule *open_rules;
  size_t n_open_rules;
};

pg_config *pg_config_dup(const pg_config *c);
/* Authenticates (principal, role, token). Returns 0 or PARLEY_EUNAUTH. On
 * success *p is the configured principal or NULL for a customer minted
 * with the customer secret. */
int pg_auth(const pg_config *c, const char *principal, int role, const char *token,
            const pg_principal **p);
/* hex(BLAKE2b-256 keyed with secret, message principal) into out[65]. */
int pg_customer_token(const uint8_t *secret, size_t secret_len, const char *principal,
                      char out[65]);
const pg_principal *pg_config_principal(const pg_config *c, const char *name);

/* --------------------------------------------------------------- server */

typedef struct pg_conn pg_conn;

/* What a connection has been pushed of one conversation. */
typedef struct pg_stream {
  char conv[132];
  uint64_t acked;        /* cumulative ACK (or commit) watermark */
  uint64_t pushed;       /* pushed up to here (rewound for redelivery) */
  uint64_t high;         /* highest seq ever pushed on this connection */
  uint64_t seen;         /* highest seq pushed to this device before */
  uint64_t last_push_ms; /* when the oldest unacknowledged push went out */
  uint64_t epoch;        /* bots: the assignment epoch */
  bool active;           /* false: no longer streamed here (kept for late ACKs) */
  bool waiting;          /* on its connection's list of streams held back */
  struct pg_stream *wnext;
} pg_stream;

/* A queued frame is one allocation: this node at its start, then LWS_PRE
 * bytes of room, then the frame (encoders give PG_OUT_NODE + LWS_PRE bytes
 * of headroom, and pg_conn_send_encoded takes the block over). */
typedef struct pg_outbuf {
  struct pg_outbuf *next;
  uint8_t *buf;          /* PG_OUT_NODE bytes into the block: LWS_PRE, then the frame */
  size_t len;
} pg_outbuf;
#define PG_OUT_NODE ((sizeof(pg_outbuf) + 15) & ~(size_t)15)

#define PG_TOKEN_MAX 512
#define PG_OUTQ_MAX_BYTES (64u * 1024u * 1024u)
#define PG_MAX_OPS 100000u   /* writes queued for one group commit */

struct pg_conn {
  pg_gateway *g;
  struct lws *wsi;
  pg_conn *next, *prev;
  pg_conn *pnext;          /* next connection of the same principal */
  bool indexed;            /* linked into pg_gateway.by_principal */
  uint64_t id;
  int state;               /* PG_CS_* */
  /* The Authorization header's token, from the upgrade until Hello is
   * checked; allocated only then, so an idle connection does not carry
   * PG_TOKEN_MAX bytes for it. */
  char *header_token;
  char *principal, *device;
  char *locale;            /* Hello.locale: for conversations this customer opens */
  int role;
  char **queues;           /* agents: watched queues */
  size_t n_queues;
  uint32_t window, inflight;
  gw_map streams;          /* conv -> pg_stream */
  /* Streams with events to push that the window or their share held
   * back, oldest first: a pump visits these, not every stream. */
  pg_stream *wait_head, *wait_tail;
  size_t n_owned;          /* bots: conversations assigned here */
  pt_reasm rx;             /* reassembly of a fragmented message */
  pg_outbuf *out_head, *out_tail;
  size_t out_bytes;
  pg_outbuf *fault_held;   /* test switches: a Deliver held back */
  bool dirty;              /* has frames queued this loop iteration */
  bool corked;             /* output held back (pg_apply_uncork_after) */
  pg_conn *dnext;          /* on pg_gateway.dirty_head */
  uint64_t last_rx_ms, last_tx_ms;
  double tokens;
  uint64_t tokens_ms;
  int close_code;          /* nonzero: close after the queue drains */
  char close_msg[64];
  bool close_sent;
  char session[40];
};

enum { PG_CS_HELLO = 0, PG_CS_OPEN = 1, PG_CS_CLOSING = 2 };

/* ------------------------------------------------------------ hot state */

/* One event kept in memory: the packed parley.v1.Event as stored. */
typedef struct pg_tailev {
  uint64_t seq;
  uint8_t *blob;
  size_t len;
} pg_tailev;

/* A conversation's hot state (hot.c). Two copies of its row: `row` has
 * every operation applied so far, durable or not, and is what the next
 * operation is checked against; `pub` is the row as of the last batch the
 * store reported durable, and is all that routing, pushes and reads look
 * at, so nothing is shown before it is durable. */
typedef struct pg_conv {
  pg_store_conv row;
  pg_store_conv pub;
  bool exists;             /* pub is stored (false: opened by a batch in flight) */
  pg_conn *owner;          /* the bot connection it is assigned to */
  uint64_t placed_epoch;   /* the epoch last given to a connection */
  bool placing;            /* an epoch bump for a placement is in flight */
  uint64_t bot_wm;         /* the bot's commit watermark, applied (durable or not) */
  /* The last seq an earlier run of the gateway stored (when this process
   * first loaded the conversation): that run may have pushed those events
   * to a bot, which may commit them before this process pushes them. */
  uint64_t boot_last_seq;
  bool bot_wm_loaded;
  /* A batch failed since the row was read: re-read it from the store
   * before its next use, since another gateway node sharing the store
   * (PostgreSQL) may have moved it on (the failure was its conflict). */
  bool reload;
  /* The tail: the most recent events, seq-contiguous and ending at
   * row.last_seq, in a ring of tail_cap slots. */
  pg_tailev *tail;
  size_t tail_cap, tail_start, tail_n, tail_bytes;
  struct pg_conv *lru_prev, *lru_next; /* conversations with a tail, newest first */
  /* Customers' and agents' watermarks, (principal, device) -> acked, as
   * applied (durable or not): a reconnect resumes after the last Ack even
   * when its batch is still with the store. Filled on first use. */
  struct pg_wm *wms;
  size_t n_wms, cap_wms;
  /* Opened by a bot (Action.open): the id of the connection that opened
   * it, which its first placement prefers (open.c); 0 otherwise. */
  uint64_t opener;
  /* Another node announced news while this node's own writes to the
   * conversation were in flight (or a placement was): re-reading then
   * would forget them, so the news is looked at again once they are
   * durable (pg_hot_remote_again). A write that does not conflict with the
   * other node's (a bot's commit beside a customer's message) would
   * otherwise leave its event unseen here until the next announcement. */
  bool remote_missed;
} pg_conv;

/* The conversation, from memory or loaded from the store; NULL when it
 * does not exist (also when only an in-flight batch has opened it, unless
 * pending is true) or on a storage error. */
pg_conv *pg_hot_conv(pg_gateway *g, const char *id, bool pending);
/* A conversation opened by an operation: in memory only, not yet stored. */
pg_conv *pg_hot_conv_new(pg_gateway *g, const pg_store_conv *row);
/* Appends an event to the tail (copied), trimming it to its bounds. */
void pg_hot_tail_add(pg_gateway *g, pg_conv *cv, uint64_t seq, const uint8_t *blob, size_t len);
/* Calls fn for the published events seq in [from, to] (to is capped at
 * pub.last_seq), at most limit, from the tail or else from the store. fn
 * returning nonzero stops the walk (a negative value is returned). */
int pg_hot_events(pg_gateway *g, pg_conv *cv, uint64_t from, uint64_t to, uint32_t limit,
                  int (*fn)(void *ud, uint64_t seq, const void *blob, size_t len), void *ud);
/* (sender, msg_id) -> (conv, seq): recent ids in memory (also those of
 * batches in flight), else the store. 0, PARLEY_ENOTFOUND, PARLEY_EDB. */
int pg_hot_sent_get(pg_gateway *g, const char *sender, const uint8_t id[16], char conv[129],
                    uint64_t *seq);
int pg_hot_sent_put(pg_gateway *g, const char *sender, const uint8_t id[16], const char *conv,
                    uint64_t seq, uint64_t turn);
/* The watermark of (principal, device) in cv, as applied (loaded once). */
int pg_hot_wm_get(pg_gateway *g, pg_conv *cv, const char *principal, const char *device,
                  uint64_t *acked);
/* Raises it (an Ack applied to the batch being built). */
int pg_hot_wm_raise(pg_gateway *g, pg_conv *cv, const char *principal, const char *device,
                    uint64_t acked);
/* The bot's commit watermark of a conversation (loaded once). */
int pg_hot_bot_wm(pg_gateway *g, pg_conv *cv, uint64_t *wm);
/* A batch failed: every conversation goes back to its published row, and
 * what the failed batches added (new conversations, tail events, recent
 * ids of turns >= from_turn) is forgotten. */
void pg_hot_rollback(pg_gateway *g, uint64_t from_turn);
void pg_hot_free(pg_gateway *g);
/* Reads what the hot state needs from the store at start-up (the filter
 * of known client message ids). */
int pg_hot_init(pg_gateway *g);
/* For pg_store_on_remote (ud is the gateway): another node sharing the
 * store wrote conv up to last_seq (conv NULL: anything may have moved). */
void pg_hot_remote(void *ud, const char *conv, uint64_t last_seq);
/* A turn that touched cv is durable: news announced meanwhile is read now. */
void pg_hot_remote_again(pg_gateway *g, pg_conv *cv);
/* Bytes the hot state holds (tails and recent ids), for the benchmarks. */
size_t pg_hot_bytes(const pg_gateway *g);

/* The stored tag list "a\nb" split in place into out (at most max). */
size_t pg_tags_split(char *joined, char **out, size_t max);

/* ---------------------------------------------------------------- apply */

/* A state-changing request waiting for the next batch. */
typedef struct pg_op {
  struct pg_op *next;
  pg_conn *conn;           /* NULL once the connection is gone */
  pw_frame *frame;         /* Send, Commit or Ack; owned */
  char *principal, *device, *locale;
  int role;
  /* Results, turned into SendAck / CommitResult once the batch is durable. */
  int error;               /* wire ErrorCode */
  char msg[160];
  char conv[132];
  uint64_t seq, time_ms;
  bool duplicate;
  Parley__V1__CommitOutcome *outcomes;
} pg_op;

/* What the batch apply tells the routing layer above it, once a batch is
 * durable (set by pg_router_init). */
typedef struct pg_route_hooks {
  /* A conversation's published row changed from old (NULL: it is new). */
  void (*published)(pg_gateway *g, pg_conv *cv, pg_store_conv *old, bool opened);
  /* A placement's epoch bump is durable: give cv to `to` (NULL: it left). */
  void (*placed)(pg_gateway *g, pg_conv *cv, pg_conn *to);
  /* A commit item of a bot connection went through. */
  void (*committed)(pg_conn *c, const char *conv, uint64_t ack_seq);
  /* The commit frames of a batch are answered: their windows moved. */
  void (*pump)(pg_conn *c);
  /* An open bot connection started closing (out.c). */
  void (*closing)(pg_conn *c);
} pg_route_hooks;

void pg_apply_enqueue(pg_gateway *g, pg_conn *c, pw_frame *f);
/* Applies what is queued to the hot state and submits it as one batch. */
void pg_apply_flush(pg_gateway *g);
/* Flushes and waits until the store has answered everything (stop). */
void pg_apply_drain(pg_gateway *g);
/* Adds a placement's epoch bump to the next batch. */
int pg_apply_bump_epoch(pg_gateway *g, pg_conv *cv, pg_conn *to);
/* Holds c's output (c->corked, set by the caller) until the batch being
 * built is durable: a bot's Welcome waits for the epoch bumps of the
 * conversations placed on it, so that its Assigns follow right behind
 * and the bot resends nothing under the old epochs in between. */
int pg_apply_uncork_after(pg_gateway *g, pg_conn *c);
/* Forgets a closing connection in every queued and in-flight operation. */
void pg_apply_conn_gone(pg_gateway *g, pg_conn *c);
void pg_apply_free(pg_gateway *g);

typedef struct pg_turn pg_turn;

struct pg_gateway {
  uv_loop_t *loop;
  /* Wall time this process started: an event stored before it may have
   * been pushed by an earlier run, whose memory of what it pushed is gone. */
  uint64_t boot_ms;
  uint64_t fault_rng;      /* test switches' generator (xorshift64*) */
  uint64_t fault_counts[3]; /* frames dropped, doubled, held back */
  pg_config *cfg;
  pg_store *store;
  struct lws_context *ctx;
  struct lws_vhost *vh;
  /* The TLS vhost's client SSL_CTX, made by pg_gateway_new rather than by
   * lws, and freed once the lws context is gone (see server.c). */
  struct ssl_ctx_st *vh_client_ssl;
  void *foreign[1];        /* the loop, as lws wants it */
  int port;
  uv_timer_t tick;
  uv_check_t check;
  /* busy_poll_us: while active (until spin_until_ns, after a write), the
   * loop polls without blocking instead of sleeping in epoll_wait. */
  uv_idle_t spin;
  bool spin_on;
  uint64_t spin_until_ns;
  uv_timer_t stop_timer;
  int handles_open;
  pg_conn *conns;
  size_t n_conns;
  uint64_t next_conn_id;
  gw_map convs;            /* conv id -> pg_conv */
  gw_map by_principal;     /* principal -> first pg_conn (pnext list) */
  gw_map seen;             /* "principal\x1f device\x1f conv" -> (uintptr) seq */
  /* Hot state (hot.c). */
  pg_conv *lru_head, *lru_tail; /* conversations with a tail, newest first */
  size_t tail_total;       /* bytes in every tail */
  gw_map recent;           /* "sender\x1f<hex id>" -> pg_recent */
  struct pg_recent **recent_ring; /* insertion order, for eviction */
  size_t recent_start, recent_n, recent_cap;
  size_t recent_bytes;
  struct pg_bloom *bloom;  /* every known (sender, msg id), see hot.c */
  size_t bloom_bytes;
  /* Batch apply (apply.c). */
  pg_op *ops_head, *ops_tail;
  size_t n_ops;
  pg_turn *cur;            /* the batch being built (placements) */
  pg_turn *turns_head, *turns_tail; /* submitted, waiting for the store */
  uint64_t next_turn;      /* numbers turns, from 1 */
  uint64_t done_turn;      /* the highest turn reported durable */
  bool halted;             /* a batch could not be built: wait for rollback */
  uint64_t rollback_mark;  /* turns up to here are rolled back (failed) */
  pg_route_hooks route;
  pg_conn *dirty_head;     /* connections with frames queued this iteration */
  uint8_t *wbuf;           /* scratch for frames written together (out.c) */
  size_t wbuf_cap;
  bool stopping;
  void (*done)(void *);
  void *done_ud;
  struct lws_context *ctx_alive; /* lws writes NULL here when destroyed */
  uint64_t stop_started_ms;
  int destroy_calls, destroy_wait;
};

uint64_t pg_now_ms(void);  /* wall clock, for server_time_ms */
uint64_t pg_mono_ms(void); /* monotonic, for timeouts */

/* out.c: a connection's outgoing side */
int pg_conn_send_frame(pg_conn *c, const pw_frame *f);
/* Queues a frame already encoded: buf (a malloc'd block) holds
 * PG_OUT_NODE + LWS_PRE bytes of headroom and then the len bytes of the
 * Frame; it is taken over (freed on error too). */
int pg_conn_send_encoded(pg_conn *c, Parley__V1__Frame__BodyCase kind, uint8_t *buf,
                         size_t len);
/* The one answer to a Send refused before it reached a batch. */
void pg_conn_refuse_send(pg_conn *c, const Parley__V1__Send *s, Parley__V1__ErrorCode code,
                         const char *msg);
/* Writes what is queued for c (the writable callback). -1: drop it. */
int pg_conn_write(pg_conn *c, struct lws *wsi);
void pg_conn_free_out(pg_conn *c);
/* Writes what each connection got during this loop iteration (on_check). */
void pg_out_flush(pg_gateway *g);
/* Puts c on the list pg_out_flush walks (after its output was held). */
void pg_out_kick(pg_conn *c);
/* Takes a closing connection off the list pg_out_flush walks. */
void pg_out_forget(pg_conn *c);
bool pg_faults_configured(const pg_config *fc);
/* Wipes and frees the connection's Authorization token. */
void pg_conn_drop_token(pg_conn *c);
void pg_conn_error(pg_conn *c, Parley__V1__ErrorCode code, bool fatal, const char *msg,
                   const char *conv, const ProtobufCBinaryData *msg_id, uint64_t request_id,
                   uint32_t retry_after_ms);
void pg_conn_close(pg_conn *c, int code, const char *msg);

/* session.c */
void pg_session_frame(pg_conn *c, const uint8_t *data, size_t len);
void pg_session_closed(pg_conn *c);

/* router.c */
/* Sets g->route: the batch apply's way to tell routing what is durable. */
void pg_router_init(pg_gateway *g);
/* The published conversation (from memory or the store); NULL if none. */
pg_conv *pg_router_conv(pg_gateway *g, const char *id);
void pg_router_pump(pg_conn *c);
/* Pushes a conversation's new events to its participants and stops its
 * stream on connections of old_assignee (NULL: none) that left it. */
void pg_router_pump_conv(pg_gateway *g, pg_conv *cv, const char *old_assignee);
/* The by-principal index of open connections. */
int pg_router_index(pg_conn *c);
void pg_router_unindex(pg_conn *c);
pg_conn *pg_router_conns_of(pg_gateway *g, const char *principal);
pg_stream *pg_router_stream(pg_conn *c, const char *conv, bool create);
void pg_router_drop_stream(pg_conn *c, const char *conv);
/* Raises a stream's watermark to up (<= high), keeping inflight right. */
void pg_router_stream_acked(pg_conn *c, pg_stream *s, uint64_t up);
void pg_router_bot_joined(pg_conn *c);
void pg_router_conn_gone(pg_conn *c);
/* Places cv again if its bot connection is gone (after a failed batch). */
void pg_router_replace(pg_gateway *g, pg_conv *cv);
void pg_router_redeliver(pg_gateway *g, uint64_t now);
bool pg_router_participant(const pg_conn *c, const pg_conv *cv);
void pg_router_queue_update(pg_gateway *g, const pg_store_conv *r, const char *queue,
                            bool removed);
int pg_queue_item(const pg_store_conv *r, Parley__V1__QueueItem *it);

/* ------------------------------------------- proactive conversations */

/* open.c: the `proactive:` policy and the check of Action.open. */
typedef struct pg_open_rule pg_open_rule;
struct pc_node;
struct pc_error;
int pg_open_policy_load(pg_config *c, const struct pc_node *n, struct pc_error *err);
int pg_open_policy_dup(pg_config *dst, const pg_config *src);
/* Adds the rule {bot, customers: ["*"]}: 0 or PARLEY_ENOMEM. */
int pg_open_policy_allow_all(pg_config *c, const char *bot);
void pg_open_policy_free(pg_config *c);
bool pg_open_allowed(const pg_config *c, const char *bot, const char *customer);
/* Checks an Action.open Send (existing: the row when the id is taken).
 * Returns 0 with the conversation's locale in locale (possibly empty), or
 * 1 with op->error and op->msg set. */
int pg_open_check(pg_gateway *g, pg_op *op, const Parley__V1__Open *o,
                  const pg_store_conv *existing, char *locale, size_t locale_size);
/* The connection cv should be placed on first (the one that opened it,
 * when still open), or NULL; forgets the hint. */
pg_conn *pg_open_placement(pg_gateway *g, pg_conv *cv);

#endif
