/* The gateway's storage interface: the durable log of every conversation.
 *
 * The gateway's sessions and routing keep the hot state in memory (each
 * conversation's last seq, assignment, epoch, recent events and recent
 * client message ids) and talk to the durable store only through this
 * header. Nothing else in the gateway issues SQL. Two shapes of backend are
 * meant to fit behind it:
 *
 *   - SQLite (store/sqlite.c, the embedded default): a writer thread with its
 *     own connection commits batches; the loop thread reads on another one.
 *   - A network database (PostgreSQL): batches go out as one transaction per
 *     round trip, and reads are round trips on a connection of their own.
 *
 * Writes are batched and asynchronous. The loop builds a pg_store_batch with
 * everything one loop iteration changed (new events, conversation rows,
 * conversation state, watermarks), hands it over with pg_store_submit, and
 * goes on serving. The backend makes the batch durable as ONE atomic
 * transaction and reports it through the completion callback, on the loop
 * thread, in submission order. The gateway answers SendAck and CommitResult,
 * and pushes the new events, only from that callback: nothing is promised
 * before it is durable.
 *
 * Reads are synchronous. The loop calls them only for what its hot state
 * does not hold (a conversation not touched since start-up, events that left
 * the in-memory tail, a client message id older than the recent window, the
 * lists behind Hello and QueueRequest), so a backend whose reads are network
 * round trips makes only those cold paths wait.
 *
 * Threads: every function here is called on the loop thread that opened the
 * store. A backend may use threads of its own; completions are delivered
 * back on the loop (through the uv_loop given at open).
 *
 * Ownership: everything passed in is copied or only borrowed for the call;
 * everything handed to a callback is borrowed until the callback returns.
 * Strings are NUL-terminated UTF-8; conversation ids and principals are at
 * most 128 bytes, devices at most 128 bytes, state keys at most 128 bytes.
 *
 * Errors are PARLEY_E* codes from <parley/error.h>: PARLEY_ENOTFOUND for a
 * missing row, PARLEY_EDB for a backend failure (a message is then available
 * from pg_store_errmsg), PARLEY_ENOMEM, PARLEY_EINVAL for misuse.
 */
#ifndef PARLEY_GW_STORE_H
#define PARLEY_GW_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct uv_loop_s;

/* ------------------------------------------------------------- values */

/* When a completion may report a batch as done (config key `durability`). */
enum {
  PG_DUR_OFF = 0,    /* committed in the backend; no flush to stable storage */
  PG_DUR_NORMAL = 1, /* survives a crash of the gateway process (kill -9) */
  PG_DUR_FULL = 2    /* survives an OS crash or power loss (fsync'd) */
};

/* A conversation's status. */
enum { PG_CONV_OPEN = 0, PG_CONV_QUEUED = 1, PG_CONV_CLOSED = 2 };

/* A conversation's durable metadata. As read by pg_store_conv_get the
 * strings are owned by the struct (pg_store_conv_clear frees them); given
 * to pg_store_batch_conv they are borrowed and copied. NULL strings are
 * stored as "". */
typedef struct pg_store_conv {
  char *id;        /* 1-128 bytes of [A-Za-z0-9._:@-] */
  char *customer;  /* the customer principal who opened it */
  char *assignee;  /* who holds it: the bot, an agent, or "queue:<name>" */
  char *bot;       /* the bot principal that serves it */
  char *locale;
  char *queue;     /* the queue it waits in while status is PG_CONV_QUEUED */
  char *note;      /* the handoff note */
  char *tags;      /* the tag set, sorted, joined by '\n' ("" for none) */
  int status;      /* PG_CONV_* */
  uint64_t epoch;  /* assignment epoch: bumped whenever a bot connection is
                    * given the conversation after another may have held it */
  uint64_t state_version; /* bumped by every commit that changes state */
  int64_t queued_ms;      /* wall time it entered its queue */
  /* The highest seq stored. Derived by the backend from the events on
   * read (the store never writes it separately); ignored on write. */
  uint64_t last_seq;
  /* Set by pg_store_conv_pack: the eight strings share one allocation
   * starting at id, and pg_store_conv_clear frees that block alone. A zeroed
   * or separately filled row has it false. */
  bool packed;
} pg_store_conv;

void pg_store_conv_clear(pg_store_conv *c);
/* Deep copy of src into dst (dst's old contents are not freed). */
int pg_store_conv_copy(pg_store_conv *dst, const pg_store_conv *src);
/* The same copy with the strings in one allocation, for rows that are only
 * read and then dropped whole (snapshots, a batch's rows): one malloc
 * instead of eight. Such a row's strings must not be replaced one by one;
 * it is marked `packed`, and pg_store_conv_clear frees the block. */
int pg_store_conv_pack(pg_store_conv *dst, const pg_store_conv *src);

/* One event of a conversation's log. */
typedef struct pg_store_event {
  const char *conv;
  uint64_t seq;          /* the conversation's previous last seq + 1: no gaps */
  const uint8_t *blob;   /* the packed parley.v1.Event, as pushed */
  size_t len;
  /* The idempotency key of the Send that produced the event: (sender,
   * msg_id) is unique over the whole store, and pg_store_sent_get finds the
   * event by it. has_msg_id false for events no Send names (a commit's
   * state change, the opening events). */
  const char *sender;
  uint8_t msg_id[16];
  bool has_msg_id;
} pg_store_event;

/* --------------------------------------------------------------- open */

#define PG_STORE_OPTIONS_VERSION 1

typedef struct pg_store_options {
  int version;                /* PG_STORE_OPTIONS_VERSION */
  const char *backend;        /* "sqlite" (NULL means "sqlite") */
  const char *data_dir;       /* sqlite: directory of gateway.db (created, 0700) */
  const char *url;            /* network backends: connection string; NULL for sqlite */
  int durability;             /* PG_DUR_* */
  struct uv_loop_s *loop;     /* completions are delivered on this loop */
  /* true: the backend may commit batches that are waiting together in one
   * transaction (each still all or nothing, since a failure fails every
   * batch after it anyway); false: one transaction per batch (the
   * gateway's `group_commit: false`). */
  bool merge_batches;
  /* Test switch (0 in production): a backend that supports it holds every
   * batch this many milliseconds, half before its commit and half after it
   * (before the completion), and says so in data_dir/writer-hold ("commit"
   * or "complete") meanwhile, so a test can kill the process while a batch
   * is with the writer. */
  uint32_t test_hold_ms;
} pg_store_options;

#define PG_STORE_OPTIONS_INIT \
  {PG_STORE_OPTIONS_VERSION, "sqlite", NULL, NULL, PG_DUR_FULL, NULL, true, 0}

typedef struct pg_store pg_store;

/* Opens the store and recovers it: once this returns, reads reflect every
 * batch that was ever reported complete (and possibly batches that became
 * durable but whose completion was lost to a crash; never part of a batch).
 * Creates the schema when missing. On failure writes "what: why" into err.
 * The gateway derives everything else at start-up from what it reads
 * (lazily, per conversation). */
int pg_store_open(const pg_store_options *o, pg_store **out, char *err, size_t errlen);

/* Waits for every submitted batch (pg_store_drain, so their completions
 * run first), then closes. The store's loop handles close asynchronously:
 * closed(ud) runs on the loop once the store's memory is gone (closed may
 * be NULL); the loop must run for that to happen. NULL st calls closed at
 * once. */
void pg_store_close(pg_store *st, void (*closed)(void *ud), void *ud);

/* The last backend error message, for logs ("" when none). */
const char *pg_store_errmsg(pg_store *st);

/* -------------------------------------------------------------- reads */

/* Reads see every batch whose completion has run. They may or may not see a
 * batch submitted but not yet complete: the caller keeps what it has in
 * flight in memory and does not read it back. */

/* 0 and *out filled (owned), PARLEY_ENOTFOUND, PARLEY_EDB. */
int pg_store_conv_get(pg_store *st, const char *id, pg_store_conv *out);

/* The conversation lists behind Hello, QueueRequest and a bot's arrival. */
typedef enum pg_store_index {
  PG_STORE_BY_CUSTOMER = 1, /* customer = key, any status, by id */
  PG_STORE_BY_ASSIGNEE = 2, /* assignee = key, any status, by id */
  PG_STORE_BOT_QUEUED = 3,  /* status queued and bot = key, by id */
  PG_STORE_QUEUED = 4       /* status queued and queue = key (NULL or "": any
                             * queue), oldest queued_ms first, then by id */
} pg_store_index;

/* Calls fn for each matching conversation; fn returning nonzero stops the
 * walk and is returned. fn may call other read functions. */
int pg_store_conv_each(pg_store *st, pg_store_index which, const char *key,
                       int (*fn)(void *ud, const pg_store_conv *c), void *ud);

/* Calls fn for the events seq in [from, to] (to 0: no upper bound) in seq
 * order, at most limit of them. fn returning nonzero stops the walk; a
 * positive value is then returned as 0, a negative one as it is. */
int pg_store_events(pg_store *st, const char *conv, uint64_t from, uint64_t to, uint32_t limit,
                    int (*fn)(void *ud, uint64_t seq, const void *blob, size_t len), void *ud);

/* The event a sender's Send produced: (sender, msg_id) -> (conv, seq).
 * 0 found, PARLEY_ENOTFOUND, PARLEY_EDB. conv has room for 129 bytes. */
int pg_store_sent_get(pg_store *st, const char *sender, const uint8_t msg_id[16],
                      char conv[129], uint64_t *seq);

/* Calls fn for every stored idempotency key (sender, msg_id), in no
 * particular order; fn returning nonzero stops the walk and is returned.
 * The gateway reads them once at start-up into a filter of known ids, so
 * that a Send with a new id (nearly every one) is known to be new without
 * a read; pg_store_sent_get then runs only for the few the filter cannot
 * rule out. */
int pg_store_sent_each(pg_store *st,
                       int (*fn)(void *ud, const char *sender, const uint8_t msg_id[16]),
                       void *ud);

/* The stored cumulative watermark of (principal, device, conv); 0 when none.
 * Bots use device "". 0 or PARLEY_EDB. */
int pg_store_watermark_get(pg_store *st, const char *principal, const char *device,
                           const char *conv, uint64_t *acked);

/* Calls fn for each key of a conversation's state (ctx.state), by key. */
int pg_store_state_each(pg_store *st, const char *conv,
                        int (*fn)(void *ud, const char *key, const void *val, size_t len),
                        void *ud);

/* ------------------------------------------------------------- batches */

/* Everything one loop iteration changed, applied by the backend in ONE
 * transaction. The builder coalesces as it goes, so a backend writes each
 * row at most once per batch however often the loop touched it:
 *   - a conversation row: the last one given for an id wins;
 *   - a state key: the last set or delete for (conv, key) wins;
 *   - a watermark: the highest acked for (principal, device, conv) wins.
 * Events are kept in the order given. A batch is built on the loop thread;
 * pg_store_submit takes it over. */
typedef struct pg_store_batch pg_store_batch;

pg_store_batch *pg_store_batch_new(void);
void pg_store_batch_free(pg_store_batch *b);

/* Each returns 0 or PARLEY_ENOMEM (the batch is then unchanged). */
int pg_store_batch_event(pg_store_batch *b, const pg_store_event *ev);
/* flags: PG_STORE_CONV_NEW for a conversation not yet stored; otherwise
 * PG_STORE_CONV_KEYS when customer, assignee, bot, queue or status changed
 * (the columns a backend indexes), so a backend may skip its indexes when
 * only the rest changed. */
enum { PG_STORE_CONV_NEW = 1, PG_STORE_CONV_KEYS = 2, PG_STORE_CONV_EPOCH = 4 };
/* PG_STORE_CONV_EPOCH marks a row whose epoch is the stored one + 1 because
 * this node is placing the conversation on a bot connection: a backend
 * shared by several nodes fails the batch unless the stored epoch is still
 * the one before, so two nodes placing one conversation at once cannot
 * both hand out the same epoch. */
int pg_store_batch_conv(pg_store_batch *b, const pg_store_conv *c, unsigned flags);
int pg_store_batch_state(pg_store_batch *b, const char *conv, const char *key, const void *val,
                         size_t len, bool deleted);
/* Raises, never lowers: the backend keeps max(stored, acked). */
int pg_store_batch_watermark(pg_store_batch *b, const char *principal, const char *device,
                             const char *conv, uint64_t acked);
/* True when nothing was added. */
bool pg_store_batch_empty(const pg_store_batch *b);

/* Called on the loop thread when the batch is durable at the store's
 * durability level (status 0), or did not happen at all (status < 0, why
 * says what went wrong). Completions run in submission order. */
typedef void (*pg_store_done_fn)(void *ud, int status, const char *why);

/* Hands b over (the store owns it from here, also on error) and returns at
 * once; done runs later, never inside this call. An empty batch is a
 * barrier: it completes after every batch submitted before it.
 *
 * A failed batch leaves no trace. Because the loop builds each batch on the
 * memory state the batches before it left (the next seq, a new row), every
 * batch submitted after a failed one fails too (status PARLEY_EDB, "an
 * earlier batch failed") without being applied, until pg_store_reset: the
 * caller first drops the hot state those batches were built on, then calls
 * pg_store_reset, then reads the store again.
 *
 * Returns 0, or PARLEY_ESHUTDOWN after pg_store_close began (done is then
 * not called). */
int pg_store_submit(pg_store *st, pg_store_batch *b, pg_store_done_fn done, void *ud);

/* Accept batches again after a failure (see pg_store_submit). */
void pg_store_reset(pg_store *st);

/* Batches submitted whose completion has not run yet: the loop stops
 * taking new writes when this grows past what it is willing to hold. */
size_t pg_store_pending(const pg_store *st);

/* Blocks the loop thread until every submitted batch is finished and runs
 * their completions, in order, before returning. For stop and tests. */
void pg_store_drain(pg_store *st);

/* Runs now, on the loop thread, the completions of the batches that are
 * finished (in order); returns how many ran. Does not wait. */
size_t pg_store_poll(pg_store *st);

/* With on set, the caller promises to call pg_store_poll after each
 * pg_store_submit and once per loop iteration: a batch a backend
 * finishes on the loop thread itself (SQLite's inline commit) then wakes
 * no one through the loop's async handle (an eventfd write, then a loop
 * iteration to read it) before its answer can go out. Batches finished on
 * other threads still wake the loop. Off by default. */
void pg_store_set_loop_polls(pg_store *st, bool on);

/* Wakes the loop through the store's async handle, whose callback runs
 * the finished batches' completions: for a caller that leaves work queued
 * after its last pg_store_poll of an iteration. */
void pg_store_wake(pg_store *st);

/* Counters since open, for logs and the benchmarks. */
typedef struct pg_store_stats {
  uint64_t batches;      /* transactions committed */
  uint64_t events;       /* event rows written */
  uint64_t rows;         /* all rows written (events, conversations, state, watermarks) */
  uint64_t failed;       /* batches that failed */
  uint64_t commit_us;    /* time spent committing, summed */
  uint64_t max_commit_us;
} pg_store_stats;

void pg_store_stats_get(const pg_store *st, pg_store_stats *out);

/* ------------------------------------------------------- other nodes */

/* Several gateway nodes may share one store (PostgreSQL). fn(ud, conv,
 * last_seq) runs on the loop thread when another node committed events of
 * conv up to last_seq, shortly after its commit; fn(ud, NULL, 0) when
 * such news may have been missed (the backend lost and regained its
 * listening connection): everything held in memory may be behind. A
 * backend of one node (SQLite) never calls it. NULL fn turns it off. */
typedef void (*pg_store_remote_fn)(void *ud, const char *conv, uint64_t last_seq);
void pg_store_on_remote(pg_store *st, pg_store_remote_fn fn, void *ud);

/* ------------------------------------------------ bots across nodes */

/* Where a shared store keeps each conversation's bot placement: the node
 * that last moved its epoch holds it. A backend of one node (SQLite) has
 * no other nodes: every conversation is placed here, nothing is ever sent
 * elsewhere, and these calls do nothing.
 *
 * pg_store_bot_presence: this node now has `conns` live connections of
 * bot principal `bot` (0 when the last one left), so that other nodes can
 * send it conversations and stop counting on it when it has none.
 *
 * pg_store_placement: PG_STORE_PLACE_HERE when this node may place conv
 * on one of its bot connections (it holds it, or its holder is gone or
 * has no connection of `bot` any more), PG_STORE_PLACE_ELSEWHERE when a
 * live node with a connection of `bot` holds it. Answered from memory.
 *
 * pg_store_place_elsewhere: asks nodes that have connections of `bot` to
 * place the n conversations (each goes to one node, chosen by a hash of
 * its id); PARLEY_ENOTFOUND when no other node has one.
 *
 * pg_store_on_place: fn(ud, conv) runs on the loop when another node asks
 * this one to place conv, or when conv's holder went away and this node is
 * the one that takes it over; the gateway then places it if it is still
 * waiting for a bot connection. */
enum { PG_STORE_PLACE_HERE = 0, PG_STORE_PLACE_ELSEWHERE = 1 };
typedef void (*pg_store_place_fn)(void *ud, const char *conv);
int pg_store_bot_presence(pg_store *st, const char *bot, unsigned conns);
int pg_store_placement(pg_store *st, const char *conv, const char *bot);
int pg_store_place_elsewhere(pg_store *st, const char *bot, const char *const *convs, size_t n);
void pg_store_on_place(pg_store *st, pg_store_place_fn fn, void *ud);

/* ------------------------------------------------------ for backends */

/* A backend is a table of functions. pg_store_open picks it by name from
 * the backends compiled in (store/store.c); the functions above forward to
 * it, except the batch builder, which is shared. A backend reads a
 * submitted batch through the pg_store_batch_view below. */

typedef struct pg_store_conv_rec {
  pg_store_conv c;  /* owned copy */
  unsigned flags;   /* PG_STORE_CONV_* (NEW sticks once set in the batch) */
} pg_store_conv_rec;

typedef struct pg_store_state_rec {
  char *conv, *key;
  uint8_t *val;     /* NULL when deleted */
  size_t len;
  bool deleted;
} pg_store_state_rec;

typedef struct pg_store_wm_rec {
  char *principal, *device, *conv;
  uint64_t acked;
} pg_store_wm_rec;

typedef struct pg_store_batch_view {
  const pg_store_event *events;   /* all strings and blobs owned by the batch */
  size_t n_events;
  const pg_store_conv_rec *convs; /* one per id */
  size_t n_convs;
  const pg_store_state_rec *state;/* one per (conv, key) */
  size_t n_state;
  const pg_store_wm_rec *wms;     /* one per (principal, device, conv) */
  size_t n_wms;
  size_t bytes;                   /* event bytes, for the backend's own limits */
} pg_store_batch_view;

void pg_store_batch_view_get(const pg_store_batch *b, pg_store_batch_view *out);

typedef struct pg_store_backend {
  const char *name;
  /* Opens and recovers (see pg_store_open). *impl is the backend's own. */
  int (*open)(const pg_store_options *o, void **impl, char *err, size_t errlen);
  /* Makes b durable as one transaction and calls
   * pg_store__complete(st, b, status, why) on ANY thread when done, in
   * submission order. The store owns b; the backend only reads it. */
  void (*submit)(void *impl, pg_store *st, pg_store_batch *b);
  /* Blocks until every batch given to submit has been passed to
   * pg_store__complete. */
  void (*drain)(void *impl);
  void (*close)(void *impl);
  const char *(*errmsg)(void *impl);
  int (*conv_get)(void *impl, const char *id, pg_store_conv *out);
  int (*conv_each)(void *impl, pg_store_index which, const char *key,
                   int (*fn)(void *ud, const pg_store_conv *c), void *ud);
  int (*events)(void *impl, const char *conv, uint64_t from, uint64_t to, uint32_t limit,
                int (*fn)(void *ud, uint64_t seq, const void *blob, size_t len), void *ud);
  int (*sent_get)(void *impl, const char *sender, const uint8_t msg_id[16], char conv[129],
                  uint64_t *seq);
  int (*watermark_get)(void *impl, const char *principal, const char *device, const char *conv,
                       uint64_t *acked);
  int (*state_each)(void *impl, const char *conv,
                    int (*fn)(void *ud, const char *key, const void *val, size_t len), void *ud);
  int (*sent_each)(void *impl,
                   int (*fn)(void *ud, const char *sender, const uint8_t msg_id[16]), void *ud);
  /* May be NULL (a backend of one node). See pg_store_on_remote. */
  void (*on_remote)(void *impl, pg_store_remote_fn fn, void *ud);
  /* May all be NULL (a backend of one node). See "bots across nodes". */
  int (*bot_presence)(void *impl, const char *bot, unsigned conns);
  int (*placement)(void *impl, const char *conv, const char *bot);
  int (*place_elsewhere)(void *impl, const char *bot, const char *const *convs, size_t n);
  void (*on_place)(void *impl, pg_store_place_fn fn, void *ud);
} pg_store_backend;

/* Reports a submitted batch finished (thread-safe). commit_us is the time
 * the transaction took, for the counters. */
void pg_store__complete(pg_store *st, pg_store_batch *b, int status, const char *why,
                        uint64_t commit_us);

/* True when b must fail without being applied: a batch submitted before it,
 * since the last pg_store_reset, failed. Backends check it (thread-safe)
 * right before applying b, and then report b with pg_store__complete and a
 * negative status. */
bool pg_store__poisoned(pg_store *st, const pg_store_batch *b);

extern const pg_store_backend pg_store_sqlite;
/* store/pg.c, when built with PostgreSQL (PARLEY_HAVE_POSTGRES). */
extern const pg_store_backend pg_store_postgres;
/* store/shard.c: several PostgreSQL databases, conversations spread by a
 * hash of their id (storage.shards). */
extern const pg_store_backend pg_store_postgres_shards;

#endif
