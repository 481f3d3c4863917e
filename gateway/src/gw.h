/* Internal structures shared by the gateway modules:
 *   config.c  YAML -> pg_config, token checks
 *   map.c     a bounded string-keyed hash map
 *   db.c      SQLite schema and statements
 *   session.c per-connection protocol (Hello, Ack, Fetch, QueueRequest, ...)
 *   apply.c   group commit: Send, Commit and Ack applied in one transaction
 *   router.c  conversations: participants, bot assignment, fleets, pushing
 *   server.c  libwebsockets glue, timers, group commit, lifecycle
 *   main.c    pg_gateway_main
 */
#ifndef PARLEY_GW_H
#define PARLEY_GW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>
#include <uv.h>

#include "core/wire.h"
#include "gateway.h"

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
  int durability;
  bool group_commit;
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

/* ------------------------------------------------------------------- db */

typedef struct pg_db pg_db;

/* The log's file name in the data directory (SQLite adds -wal, -shm). */
#define PG_DB_FILE "gateway.db"

/* A conversation row. Strings are owned by the struct. */
typedef struct pg_convrow {
  char *id, *customer, *assignee, *bot, *locale, *queue, *note, *tags;
  int status;              /* PG_CONV_* */
  uint64_t epoch, last_seq, state_version;
  int64_t queued_ms;
  /* The indexed columns as read (customer, assignee, bot, queue, status),
   * packed by pg_db_conv_get: an update that leaves them as they were
   * skips the indexes. NULL for a row not read from the database. */
  char *orig_keys;
  size_t orig_len;
} pg_convrow;


int pg_db_open(pg_db **out, const char *dir, int durability, char *err, size_t errlen);
void pg_db_close(pg_db *db);
int pg_db_begin(pg_db *db);
int pg_db_commit(pg_db *db);
void pg_db_rollback(pg_db *db);
int pg_db_savepoint(pg_db *db);
int pg_db_release(pg_db *db);
void pg_db_rollback_to(pg_db *db);
const char *pg_db_errmsg(pg_db *db);

void pg_convrow_clear(pg_convrow *r);
/* 0 found, PARLEY_ENOTFOUND, PARLEY_EDB. */
int pg_db_conv_get(pg_db *db, const char *id, pg_convrow *out);
int pg_db_conv_insert(pg_db *db, const pg_convrow *r);
int pg_db_conv_update(pg_db *db, const pg_convrow *r);
/* Calls fn for each conversation matching: where = "customer", "assignee"
 * (any status but queued), "bot_queued" (status queued, key = its bot),
 * "queued" (status queued, key = queue). */
int pg_db_conv_each(pg_db *db, const char *where, const char *key,
                    int (*fn)(void *ud, const pg_convrow *r), void *ud);

int pg_db_event_put(pg_db *db, const char *conv, uint64_t seq, const uint8_t *blob, size_t len);
/* Calls fn for events seq in [from, to] (to 0 = no bound), at most limit. */
int pg_db_events(pg_db *db, const char *conv, uint64_t from, uint64_t to, uint32_t limit,
                 int (*fn)(void *ud, uint64_t seq, const void *blob, size_t len), void *ud);

/* (sender, msg id) -> (conv, seq). 0 found, PARLEY_ENOTFOUND. */
int pg_db_sent_get(pg_db *db, const char *sender, const uint8_t id[16], char conv[129],
                   uint64_t *seq);
int pg_db_sent_put(pg_db *db, const char *sender, const uint8_t id[16], const char *conv,
                   uint64_t seq);

uint64_t pg_db_watermark(pg_db *db, const char *principal, const char *device, const char *conv);
/* Raises the watermark (never lowers it). */
int pg_db_watermark_set(pg_db *db, const char *principal, const char *device, const char *conv,
                        uint64_t acked);

int pg_db_state_each(pg_db *db, const char *conv,
                     int (*fn)(void *ud, const char *key, const void *val, size_t len), void *ud);
int pg_db_state_set(pg_db *db, const char *conv, const char *key, const void *val, size_t len);
int pg_db_state_del(pg_db *db, const char *conv, const char *key);

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

typedef struct pg_outbuf {
  struct pg_outbuf *next;
  uint8_t *buf;          /* LWS_PRE headroom in front */
  size_t len;
} pg_outbuf;

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
  uint8_t *rx;             /* reassembly of a fragmented message */
  size_t rx_len, rx_cap;
  bool rx_discard;
  pg_outbuf *out_head, *out_tail;
  size_t out_bytes;
  pg_outbuf *fault_held;   /* test switches: a Deliver held back */
  uint64_t last_rx_ms, last_tx_ms;
  double tokens;
  uint64_t tokens_ms;
  int close_code;          /* nonzero: close after the queue drains */
  char close_msg[64];
  bool close_sent;
  char session[40];
};

enum { PG_CS_HELLO = 0, PG_CS_OPEN = 1, PG_CS_CLOSING = 2 };

/* Cached conversation plus the bot connection it is assigned to. */
typedef struct pg_conv {
  pg_convrow row;
  pg_conn *owner;
  uint64_t placed_epoch;   /* the epoch last given to a connection */
} pg_conv;

/* A state-changing request waiting for the next group commit. */
typedef struct pg_op {
  struct pg_op *next;
  pg_conn *conn;           /* NULL once the connection is gone */
  pw_frame *frame;         /* Send, Commit or Ack; owned */
  char *principal, *device, *locale;
  int role;
  /* Results, turned into SendAck / CommitResult after COMMIT. */
  int error;               /* wire ErrorCode */
  char msg[160];
  char conv[132];
  uint64_t seq, time_ms;
  bool duplicate;
  Parley__V1__CommitOutcome *outcomes;
} pg_op;

struct pg_gateway {
  uv_loop_t *loop;
  /* Wall time this process started: an event stored before it may have
   * been pushed by an earlier run, whose memory of what it pushed is gone. */
  uint64_t boot_ms;
  uint64_t fault_rng;      /* test switches' generator (xorshift64*) */
  uint64_t fault_counts[3]; /* frames dropped, doubled, held back */
  pg_config *cfg;
  pg_db *db;
  struct lws_context *ctx;
  struct lws_vhost *vh;
  /* The TLS vhost's client SSL_CTX, made by pg_gateway_new rather than by
   * lws, and freed once the lws context is gone (see server.c). */
  struct ssl_ctx_st *vh_client_ssl;
  void *foreign[1];        /* the loop, as lws wants it */
  int port;
  uv_timer_t tick;
  uv_check_t check;
  uv_timer_t stop_timer;
  int handles_open;
  pg_conn *conns;
  size_t n_conns;
  uint64_t next_conn_id;
  gw_map convs;            /* conv id -> pg_conv */
  gw_map by_principal;     /* principal -> first pg_conn (pnext list) */
  gw_map seen;             /* "principal\x1f device\x1f conv" -> (uintptr) seq */
  pg_op *ops_head, *ops_tail;
  size_t n_ops;
  gw_map touched;          /* conv ids changed by the running batch */
  bool stopping;
  void (*done)(void *);
  void *done_ud;
  struct lws_context *ctx_alive; /* lws writes NULL here when destroyed */
  uint64_t stop_started_ms;
  int destroy_calls, destroy_wait;
};

uint64_t pg_now_ms(void);  /* wall clock, for server_time_ms */
uint64_t pg_mono_ms(void); /* monotonic, for timeouts */

/* server.c */
int pg_conn_send_frame(pg_conn *c, const pw_frame *f);
/* Wipes and frees the connection's Authorization token. */
void pg_conn_drop_token(pg_conn *c);
void pg_conn_error(pg_conn *c, Parley__V1__ErrorCode code, bool fatal, const char *msg,
                   const char *conv, const ProtobufCBinaryData *msg_id, uint64_t request_id,
                   uint32_t retry_after_ms);
void pg_conn_close(pg_conn *c, int code, const char *msg);
void pg_gateway_enqueue(pg_gateway *g, pg_conn *c, pw_frame *f);

/* session.c */
void pg_session_frame(pg_conn *c, const uint8_t *data, size_t len);
void pg_session_batch(pg_gateway *g);
void pg_session_closed(pg_conn *c);

/* router.c */
pg_conv *pg_router_conv(pg_gateway *g, const char *id);  /* cached, loads; NULL if none */
void pg_router_touch(pg_gateway *g, const char *id, bool opened);
void pg_router_after_commit(pg_gateway *g);              /* applies touched */
void pg_router_discard(pg_gateway *g);                   /* rollback: reload */
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
void pg_router_redeliver(pg_gateway *g, uint64_t now);
bool pg_router_participant(const pg_conn *c, const pg_conv *cv);
void pg_router_queue_update(pg_gateway *g, const pg_convrow *r, const char *queue, bool removed);
int pg_queue_item(const pg_convrow *r, Parley__V1__QueueItem *it);

#endif
