/* The SQLite backend of the storage interface (store.h): the durable log in
 * WAL mode, in data_dir/gateway.db.
 *
 * Three connections. The writer thread owns one and commits submitted
 * batches: it takes every batch waiting when it wakes and applies them in
 * one transaction (group commit across loop iterations when the disk is
 * the bottleneck), so the loop never waits for a commit or an fsync. The
 * checkpointer thread owns the second and copies the WAL into the database
 * while the writer goes on committing (see checkpointer_main). The loop
 * thread owns the third and only reads; in WAL mode a reader never blocks
 * the writer nor waits for it.
 *
 * Each event is one row of `events`, its idempotency key (sender, msg_id)
 * in the same row and found through a partial unique index. A
 * conversation's last seq is not stored: it is max(seq) of its events. A
 * bot's watermark is written with its commit; customers' and agents' are
 * written lazily (WM_FLUSH_MS_DEFAULT).
 *
 * The file is opened through store/sqlite_vfs.c: the process holds it
 * alone (no file locks per transaction) and each commit's WAL frames go
 * out in one write. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include <sqlite3.h>

#include <parley/error.h>

#include "map.h"
#include "store/sqlite_vfs.h"
#include "store/store.h"
#include "util/clock.h"

/* The file name in the data directory (SQLite adds -wal, -shm). */
#define DB_FILE "gateway.db"

/* ------------------------------------------------------------ statements */

enum {
  R_CONV_GET, R_CONV_BY_CUSTOMER, R_CONV_BY_ASSIGNEE, R_CONV_QUEUED, R_CONV_QUEUED_ALL,
  R_CONV_BOT_QUEUED, R_EV_RANGE, R_SENT_GET, R_SENT_ALL, R_WM_GET, R_STATE_ALL, R_COUNT
};

static const char *const read_sql[R_COUNT] = {
    [R_CONV_GET] = "SELECT id,customer,assignee,bot,locale,queue,note,tags,status,epoch,"
                   "state_version,queued_ms,"
                   "(SELECT max(seq) FROM events WHERE conv=?1) FROM conversations WHERE id=?1",
    [R_CONV_BY_CUSTOMER] = "SELECT id FROM conversations WHERE customer=?1 ORDER BY id",
    [R_CONV_BY_ASSIGNEE] = "SELECT id FROM conversations WHERE assignee=?1 ORDER BY id",
    [R_CONV_QUEUED] = "SELECT id FROM conversations WHERE status=1 AND queue=?1 "
                      "ORDER BY queued_ms, id",
    [R_CONV_QUEUED_ALL] = "SELECT id FROM conversations WHERE status=1 ORDER BY queued_ms, id",
    [R_CONV_BOT_QUEUED] = "SELECT id FROM conversations WHERE status=1 AND bot=?1 ORDER BY id",
    [R_EV_RANGE] = "SELECT seq,blob FROM events WHERE conv=?1 AND seq>=?2 AND seq<=?3 "
                   "ORDER BY seq LIMIT ?4",
    [R_SENT_GET] = "SELECT conv,seq FROM events WHERE sender=?1 AND msg_id=?2",
    [R_SENT_ALL] = "SELECT sender,msg_id FROM events WHERE msg_id IS NOT NULL",
    [R_WM_GET] = "SELECT acked FROM watermarks WHERE principal=?1 AND device=?2 AND conv=?3",
    [R_STATE_ALL] = "SELECT key,value FROM state WHERE conv=?1 ORDER BY key",
};

enum {
  W_EV_PUT, W_CONV_INS, W_CONV_UPD, W_CONV_UPD_LITE, W_WM_SET, W_STATE_SET, W_STATE_DEL,
  W_BEGIN, W_COMMIT, W_ROLLBACK, W_COUNT
};

static const char *const write_sql[W_COUNT] = {
    [W_EV_PUT] = "INSERT INTO events(conv,seq,blob,sender,msg_id) VALUES(?1,?2,?3,?4,?5)",
    [W_CONV_INS] = "INSERT INTO conversations(id,customer,assignee,bot,locale,queue,note,tags,"
                   "status,epoch,state_version,queued_ms) "
                   "VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)",
    [W_CONV_UPD] = "UPDATE conversations SET customer=?2,assignee=?3,bot=?4,locale=?5,queue=?6,"
                   "note=?7,tags=?8,status=?9,epoch=?10,state_version=?11,queued_ms=?12 "
                   "WHERE id=?1",
    /* Without the indexed columns: SQLite then leaves the four indexes
     * alone. Bound like W_CONV_UPD; the numbers it skips are still valid
     * parameters, just unused. */
    [W_CONV_UPD_LITE] = "UPDATE conversations SET locale=?5,note=?7,tags=?8,epoch=?10,"
                        "state_version=?11,queued_ms=?12 WHERE id=?1",
    [W_WM_SET] = "INSERT INTO watermarks(principal,device,conv,acked) VALUES(?1,?2,?3,?4) "
                 "ON CONFLICT(principal,device,conv) DO UPDATE SET acked=excluded.acked "
                 "WHERE excluded.acked>acked",
    [W_STATE_SET] = "INSERT INTO state(conv,key,value) VALUES(?1,?2,?3) "
                    "ON CONFLICT(conv,key) DO UPDATE SET value=excluded.value",
    [W_STATE_DEL] = "DELETE FROM state WHERE conv=?1 AND key=?2",
    [W_BEGIN] = "BEGIN IMMEDIATE",
    [W_COMMIT] = "COMMIT",
    [W_ROLLBACK] = "ROLLBACK",
};

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS conversations("
    " id TEXT PRIMARY KEY, customer TEXT NOT NULL, assignee TEXT NOT NULL,"
    " bot TEXT NOT NULL, locale TEXT NOT NULL, queue TEXT NOT NULL, note TEXT NOT NULL,"
    " tags TEXT NOT NULL, status INTEGER NOT NULL, epoch INTEGER NOT NULL,"
    " state_version INTEGER NOT NULL, queued_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS conversations_customer ON conversations(customer);"
    "CREATE INDEX IF NOT EXISTS conversations_assignee ON conversations(assignee);"
    "CREATE INDEX IF NOT EXISTS conversations_queue ON conversations(status, queue);"
    "CREATE INDEX IF NOT EXISTS conversations_bot ON conversations(bot, status);"
    "CREATE TABLE IF NOT EXISTS events(conv TEXT NOT NULL, seq INTEGER NOT NULL,"
    " blob BLOB NOT NULL, sender TEXT, msg_id BLOB, PRIMARY KEY(conv, seq)) WITHOUT ROWID;"
    "CREATE UNIQUE INDEX IF NOT EXISTS events_sent ON events(sender, msg_id)"
    " WHERE msg_id IS NOT NULL;"
    "CREATE TABLE IF NOT EXISTS watermarks(principal TEXT NOT NULL, device TEXT NOT NULL,"
    " conv TEXT NOT NULL, acked INTEGER NOT NULL, PRIMARY KEY(principal, device, conv))"
    " WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS state(conv TEXT NOT NULL, key TEXT NOT NULL,"
    " value BLOB NOT NULL, PRIMARY KEY(conv, key)) WITHOUT ROWID;";

/* A log written by the first schema (a `sent` table beside `events`, and a
 * stored last_seq) moves to this one in a single transaction. */
static const char migrate_v1[] =
    "BEGIN IMMEDIATE;"
    "ALTER TABLE events RENAME TO events_v1;"
    "CREATE TABLE events(conv TEXT NOT NULL, seq INTEGER NOT NULL,"
    " blob BLOB NOT NULL, sender TEXT, msg_id BLOB, PRIMARY KEY(conv, seq)) WITHOUT ROWID;"
    "CREATE INDEX sent_by_seq ON sent(conv, seq);"
    "INSERT INTO events(conv,seq,blob,sender,msg_id)"
    " SELECT e.conv, e.seq, e.blob, s.sender, s.msg_id FROM events_v1 e"
    " LEFT JOIN sent s ON s.conv = e.conv AND s.seq = e.seq;"
    "DROP TABLE events_v1;"
    "DROP TABLE sent;"
    "ALTER TABLE conversations DROP COLUMN last_seq;"
    "COMMIT;";

/* ------------------------------------------------------------------ impl */

typedef struct sq {
  sqlite3 *rd, *wr, *ck;
  sqlite3_stmt *r[R_COUNT];
  sqlite3_stmt *w[W_COUNT];
  pthread_t thread;
  bool thread_started;
  pthread_mutex_t mu;
  pthread_cond_t wake, idle;
  /* Under mu: batches waiting for the writer, and whether it is busy. */
  struct qitem *head, *tail;
  size_t queued;
  bool busy, stop;
  bool merge;     /* commit the batches waiting together in one transaction */
  /* Small batches committed on the loop thread, see sq_submit. inline_bytes
   * 0 turns it off (durability full, the test hold, or the environment). */
  size_t inline_bytes;
  bool on_loop;       /* a commit runs on the loop thread (it holds busy) */
  bool ckpt_due;      /* under mu: the writer owes the end of a checkpoint */
  bool ckpt_hard;     /* under mu: ... of all of the WAL (CKPT_HARD_MULT) */
  /* The checkpointer thread and what it is asked, under ck_mu. */
  pthread_t ck_thread;
  bool ck_started;
  pthread_mutex_t ck_mu;
  pthread_cond_t ck_wake;
  bool ck_asked, ck_running, ck_stop;
  /* Held around every checkpoint call: SQLite answers SQLITE_BUSY at once,
   * without waiting, to a checkpoint while another connection's runs. */
  pthread_mutex_t ck_lock;
  bool ck_sync;       /* the checkpointer syncs the database after its passes */
  int ckpt_pages;     /* WAL pages that start a checkpoint */
  /* Device watermarks (customers' and agents') written lazily, see
   * WM_FLUSH_MS_DEFAULT. wm_lazy holds the ones committed since the last
   * flush, keyed (principal, device, conv), each a lazy_wm; only the thread
   * running write_group (it holds busy) changes it, under wm_mu, and the
   * loop's reads look into it under wm_mu. wm_staged are the current
   * transaction's, moved into wm_lazy once it has committed. */
  uint32_t wm_flush_ms;      /* 0: every watermark in its own batch's transaction */
  uint64_t wm_next_flush_us; /* when the writer next writes wm_lazy (busy holder only) */
  pthread_mutex_t wm_mu;
  gw_map wm_lazy;
  const pg_store_wm_rec **wm_staged;
  size_t n_staged, cap_staged;
  bool wm_kick; /* a loop-thread commit started wm_lazy: the writer must time it */
  uint32_t hold_ms;          /* test switch, see pg_store_options */
  char hold_path[4096];      /* data_dir/writer-hold */
  char werr[256]; /* the writer's last error (writer thread only) */
} sq;

/* A device's watermark committed as acknowledged but not yet written. */
typedef struct lazy_wm {
  const char *principal, *device, *conv; /* in the same allocation */
  uint64_t acked;
} lazy_wm;

typedef struct qitem {
  struct qitem *next;
  pg_store *st;
  pg_store_batch *b;
} qitem;

static uint64_t now_us(void) { return pu_clock_ns() / 1000u; }

/* WAL pages after which a checkpoint starts: 8,192 (32 MiB of WAL)
 * instead of SQLite's 1,000, so that a page written many times between two
 * checkpoints (a busy conversation's leaf, an index page) is copied into
 * the database once. PARLEY_SQLITE_CKPT_PAGES changes it (tests). */
#define CKPT_PAGES_DEFAULT 8192

/* The checkpointer hands the end of a checkpoint to the writer once at
 * most 1/32 of ckpt_pages is left to copy (256 pages, 1 MiB: two small
 * fsyncs, a few milliseconds), or after at most CKPT_PASSES passes that
 * could not get there. */
#define CKPT_FINISH_DIV 32
#define CKPT_PASSES 8

/* The WAL's hard limit, in checkpoints: when the checkpointer falls this
 * far behind (starved of CPU, its fsyncs slow), the writer checkpoints
 * everything itself before its next transaction, waiting for the
 * checkpointer's pass if one runs, as all checkpoints used to. */
#define CKPT_HARD_MULT 4

/* Default for inline_bytes. Only a batch of one event is committed on the
 * loop: under load a batch holds several, and committing those one loop
 * iteration at a time, instead of merged on the writer, cost more CPU per
 * turn (bench_turns --only c: 99-117 -> 109-124 us with a 4 KiB limit alone). */
#define INLINE_BYTES_DEFAULT 4096

/* A customer's or an agent's watermark (a device's: a bot's has none) is
 * not written in its batch's transaction but kept in memory (wm_lazy) and
 * written at most this often, by the writer thread, in the transaction of
 * a later batch or in one of its own when the gateway is quiet, and when
 * the store closes. Losing one to a crash is harmless: the device's
 * client resumes from its own cursor (Hello.resume) or drops the events
 * pushed again as duplicates (seq below its next), and a client with no
 * memory of them gets them flagged redelivered, as it would had its Ack
 * been lost on the wire (docs/gateway.md, "Durability"). A bot's watermark
 * is its commit, atomic with its state: it stays in its transaction.
 * PARLEY_SQLITE_WM_FLUSH_MS overrides it; 0 writes every watermark with its
 * batch. */
#define WM_FLUSH_MS_DEFAULT 1000
/* Past this many waiting, the next transaction of the writer writes them. */
#define WM_LAZY_MAX 65536

/* Replaces SQLite's automatic checkpoint on the writer's connection: a
 * commit, on the writer thread or the loop's, never checkpoints itself; it
 * asks the checkpointer thread. */
static int on_wal(void *arg, sqlite3 *db, const char *name, int pages) {
  (void)db;
  (void)name;
  sq *q = arg;
  if (pages < q->ckpt_pages) return SQLITE_OK;
  if (pages >= q->ckpt_pages * CKPT_HARD_MULT) {
    pthread_mutex_lock(&q->mu);
    q->ckpt_due = q->ckpt_hard = true;
    pthread_mutex_unlock(&q->mu);
  }
  pthread_mutex_lock(&q->ck_mu);
  if (!q->ck_running && !q->ck_asked) {
    q->ck_asked = true;
    pthread_cond_signal(&q->ck_wake);
  }
  pthread_mutex_unlock(&q->ck_mu);
  return SQLITE_OK;
}

/* The gateway's process holds the database file alone: SQLite's
 * "unix-excl" VFS takes an exclusive lock on it once, for the life of the
 * connection, and keeps the WAL index in the heap instead of the -shm file,
 * so that the two connections of this process (writer and reader) lock it
 * with a mutex instead of six fcntl() calls on the -shm file per
 * transaction (strace -c of bench_ack_rtt: 68,301 -> 415 fcntl for 11,000
 * commits). Then another process cannot open the file while the gateway
 * runs (a second gateway on the same data_dir fails at start, and so does
 * the sqlite3 shell's online backup), so it is asked for with the
 * environment variable PARLEY_SQLITE_EXCLUSIVE=1; by default the gateway
 * uses SQLite's usual locking and can be backed up while it serves. */
static bool sqlite_exclusive(void) {
  const char *excl = getenv("PARLEY_SQLITE_EXCLUSIVE");
  return excl && *excl && strcmp(excl, "0") != 0;
}

/* Over that, store/sqlite_vfs.c writes each commit's WAL frames with one
 * pwrite() instead of two per frame. */
static const char *sqlite_vfs(void) { return pg_sqlite_vfs(sqlite_exclusive()); }

static int open_conn(const char *path, int durability, sqlite3 **out, char *err, size_t errlen) {
  sqlite3 *h = NULL;
  if (sqlite3_open_v2(path, &h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      sqlite_vfs()) != SQLITE_OK) {
    snprintf(err, errlen, "%s: %s", path, h ? sqlite3_errmsg(h) : "cannot open");
    sqlite3_close(h);
    return PARLEY_EDB;
  }
  /* WAL for every durability level: readers never block the writer, and a
   * crash of the process never loses a committed transaction. The sync
   * level decides what survives losing power (docs/gateway.md). */
  const char *sync = durability == PG_DUR_FULL     ? "FULL"
                     : durability == PG_DUR_NORMAL ? "NORMAL"
                                                   : "OFF";
  char pragmas[256];
  snprintf(pragmas, sizeof pragmas,
           "PRAGMA journal_mode=WAL; PRAGMA synchronous=%s; PRAGMA foreign_keys=OFF;"
           "PRAGMA busy_timeout=5000;",
           sync);
  char *msg = NULL;
  int rc = sqlite3_exec(h, pragmas, NULL, NULL, &msg);
  if (rc != SQLITE_OK) {
    if ((rc & 0xff) == SQLITE_BUSY && sqlite_exclusive())
      snprintf(err, errlen, "%s: in use by another process (another gateway on this data_dir?)",
               path);
    else snprintf(err, errlen, "%s: %s", path, msg ? msg : sqlite3_errmsg(h));
    sqlite3_free(msg);
    sqlite3_close(h);
    return PARLEY_EDB;
  }
  *out = h;
  return 0;
}

static int table_exists(sqlite3 *h, const char *name) {
  sqlite3_stmt *s;
  if (sqlite3_prepare_v2(h, "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?1", -1, &s,
                         NULL) != SQLITE_OK)
    return 0;
  sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
  int found = sqlite3_step(s) == SQLITE_ROW;
  sqlite3_finalize(s);
  return found;
}

static int setup_schema(sqlite3 *h, const char *path, char *err, size_t errlen) {
  char *msg = NULL;
  int rc = SQLITE_OK;
  if (table_exists(h, "sent")) {
    rc = sqlite3_exec(h, migrate_v1, NULL, NULL, &msg);
    if (rc != SQLITE_OK) sqlite3_exec(h, "ROLLBACK", NULL, NULL, NULL);
  }
  if (rc == SQLITE_OK) rc = sqlite3_exec(h, schema, NULL, NULL, &msg);
  if (rc == SQLITE_OK)
    rc = sqlite3_exec(h, "PRAGMA user_version=2", NULL, NULL, &msg);
  if (rc != SQLITE_OK) {
    snprintf(err, errlen, "%s: schema: %s", path, msg ? msg : sqlite3_errmsg(h));
    sqlite3_free(msg);
    return PARLEY_EDB;
  }
  return 0;
}

static void *writer_main(void *arg);
static void *checkpointer_main(void *arg);
static void sq_close(void *impl);
static void write_group(sq *q, struct qitem *list, bool force_flush);
static void lazy_clear(sq *q);

static int sq_open(const pg_store_options *o, void **out, char *err, size_t errlen) {
  *out = NULL;
  const char *dir = o->data_dir ? o->data_dir : ".";
  if (mkdir(dir, 0700) != 0) {
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
      snprintf(err, errlen, "data_dir %s: cannot create directory", dir);
      return PARLEY_EIO;
    }
  }
  char path[4096];
  if ((size_t)snprintf(path, sizeof path, "%s/" DB_FILE, dir) >= sizeof path) {
    snprintf(err, errlen, "data_dir: path too long");
    return PARLEY_EINVAL;
  }
  sq *q = calloc(1, sizeof *q);
  if (!q) return PARLEY_ENOMEM;
  pthread_mutex_init(&q->mu, NULL);
  pthread_cond_init(&q->wake, NULL);
  pthread_cond_init(&q->idle, NULL);
  pthread_mutex_init(&q->ck_mu, NULL);
  pthread_mutex_init(&q->ck_lock, NULL);
  pthread_cond_init(&q->ck_wake, NULL);
  q->ckpt_pages = CKPT_PAGES_DEFAULT;
  const char *cp = getenv("PARLEY_SQLITE_CKPT_PAGES");
  if (cp && atoi(cp) > 0) q->ckpt_pages = atoi(cp);
  pthread_mutex_init(&q->wm_mu, NULL);
  q->merge = o->merge_batches;
  q->hold_ms = o->test_hold_ms;
  q->wm_flush_ms = WM_FLUSH_MS_DEFAULT;
  const char *wf = getenv("PARLEY_SQLITE_WM_FLUSH_MS");
  if (wf && *wf) q->wm_flush_ms = (uint32_t)strtoul(wf, NULL, 10);
  q->wm_next_flush_us = now_us() + (uint64_t)q->wm_flush_ms * 1000u;
  snprintf(q->hold_path, sizeof q->hold_path, "%.4000s/writer-hold", dir);
  int rc = open_conn(path, o->durability, &q->wr, err, errlen);
  if (!rc) rc = setup_schema(q->wr, path, err, errlen);
  /* A checkpoint starts every ckpt_pages pages (on_wal), off the loop.
   * The writer's page cache holds the pages a batch touches. */
  if (!rc && sqlite3_exec(q->wr, "PRAGMA cache_size=-16384;", NULL, NULL, NULL) != SQLITE_OK) {
    snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(q->wr));
    rc = PARLEY_EDB;
  }
  if (!rc) sqlite3_wal_hook(q->wr, on_wal, q);
  /* Only durability normal and off commit without waiting for the disk
   * (WAL with synchronous=NORMAL or OFF does not fsync at commit), so only
   * they may commit on the loop thread. */
  q->inline_bytes = INLINE_BYTES_DEFAULT;
  const char *ib = getenv("PARLEY_SQLITE_INLINE_BYTES");
  if (ib && *ib) q->inline_bytes = (size_t)strtoull(ib, NULL, 10);
  if (o->durability == PG_DUR_FULL || q->hold_ms) q->inline_bytes = 0;
  if (!rc) rc = open_conn(path, o->durability, &q->rd, err, errlen);
  if (!rc) rc = open_conn(path, o->durability, &q->ck, err, errlen);
  q->ck_sync = o->durability != PG_DUR_OFF;
  for (int i = 0; !rc && i < W_COUNT; i++)
    if (sqlite3_prepare_v3(q->wr, write_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &q->w[i], NULL)) {
      snprintf(err, errlen, "%s: prepare: %s", path, sqlite3_errmsg(q->wr));
      rc = PARLEY_EDB;
    }
  for (int i = 0; !rc && i < R_COUNT; i++)
    if (sqlite3_prepare_v3(q->rd, read_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &q->r[i], NULL)) {
      snprintf(err, errlen, "%s: prepare: %s", path, sqlite3_errmsg(q->rd));
      rc = PARLEY_EDB;
    }
  if (!rc) {
    /* Checkpoints are the checkpointer's and the writer's: a reader never
     * runs one (the checkpointer's connection never writes). */
    sqlite3_wal_autocheckpoint(q->rd, 0);
    sqlite3_wal_autocheckpoint(q->ck, 0);
    if (pthread_create(&q->ck_thread, NULL, checkpointer_main, q) != 0) {
      snprintf(err, errlen, "%s: cannot start the checkpointer thread", path);
      rc = PARLEY_EINTERNAL;
    } else {
      q->ck_started = true;
    }
  }
  if (!rc) {
    if (pthread_create(&q->thread, NULL, writer_main, q) != 0) {
      snprintf(err, errlen, "%s: cannot start the writer thread", path);
      rc = PARLEY_EINTERNAL;
    } else {
      q->thread_started = true;
    }
  }
  if (rc) {
    sq_close(q);
    return rc;
  }
  *out = q;
  return 0;
}

static void sq_close(void *impl) {
  sq *q = impl;
  if (!q) return;
  if (q->thread_started) {
    pthread_mutex_lock(&q->mu);
    q->stop = true;
    pthread_cond_signal(&q->wake);
    pthread_mutex_unlock(&q->mu);
    pthread_join(q->thread, NULL);
    /* The device watermarks still waiting are written before the end. */
    if (q->wm_lazy.len) write_group(q, NULL, true);
  }
  /* After the writer: nothing asks the checkpointer any more. */
  if (q->ck_started) {
    pthread_mutex_lock(&q->ck_mu);
    q->ck_stop = true;
    pthread_cond_signal(&q->ck_wake);
    pthread_mutex_unlock(&q->ck_mu);
    pthread_join(q->ck_thread, NULL);
  }
  lazy_clear(q);
  free(q->wm_staged);
  for (int i = 0; i < R_COUNT; i++) sqlite3_finalize(q->r[i]);
  for (int i = 0; i < W_COUNT; i++) sqlite3_finalize(q->w[i]);
  /* The writer's connection last: SQLite's close of the last connection
   * checkpoints the whole WAL and removes it. */
  sqlite3_close(q->ck);
  sqlite3_close(q->rd);
  sqlite3_close(q->wr);
  pthread_cond_destroy(&q->ck_wake);
  pthread_mutex_destroy(&q->ck_mu);
  pthread_mutex_destroy(&q->ck_lock);
  pthread_cond_destroy(&q->wake);
  pthread_cond_destroy(&q->idle);
  pthread_mutex_destroy(&q->mu);
  pthread_mutex_destroy(&q->wm_mu);
  free(q);
}

static const char *sq_errmsg(void *impl) {
  sq *q = impl;
  return sqlite3_errmsg(q->rd);
}

/* --------------------------------------------------------------- writer */

static int step_done(sqlite3_stmt *s) {
  int rc = sqlite3_step(s);
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : PARLEY_EDB;
}

static int put_event(sq *q, const pg_store_event *e) {
  sqlite3_stmt *s = q->w[W_EV_PUT];
  sqlite3_bind_text(s, 1, e->conv, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, (sqlite3_int64)e->seq);
  sqlite3_bind_blob(s, 3, e->len ? (const void *)e->blob : "", (int)e->len, SQLITE_STATIC);
  if (e->has_msg_id) {
    sqlite3_bind_text(s, 4, e->sender, -1, SQLITE_STATIC);
    sqlite3_bind_blob(s, 5, e->msg_id, 16, SQLITE_STATIC);
  }
  return step_done(s);
}

static int put_conv(sq *q, const pg_store_conv_rec *r) {
  int which = r->flags & PG_STORE_CONV_NEW    ? W_CONV_INS
              : r->flags & PG_STORE_CONV_KEYS ? W_CONV_UPD
                                              : W_CONV_UPD_LITE;
  const pg_store_conv *c = &r->c;
  sqlite3_stmt *s = q->w[which];
  sqlite3_bind_text(s, 1, c->id, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, c->customer, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 3, c->assignee, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 4, c->bot, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 5, c->locale, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 6, c->queue, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 7, c->note, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 8, c->tags, -1, SQLITE_STATIC);
  sqlite3_bind_int(s, 9, c->status);
  sqlite3_bind_int64(s, 10, (sqlite3_int64)c->epoch);
  sqlite3_bind_int64(s, 11, (sqlite3_int64)c->state_version);
  sqlite3_bind_int64(s, 12, c->queued_ms);
  return step_done(s);
}

static int put_state(sq *q, const pg_store_state_rec *r) {
  sqlite3_stmt *s = q->w[r->deleted ? W_STATE_DEL : W_STATE_SET];
  sqlite3_bind_text(s, 1, r->conv, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, r->key, -1, SQLITE_STATIC);
  if (!r->deleted) sqlite3_bind_blob(s, 3, r->len ? (const void *)r->val : "", (int)r->len,
                                     SQLITE_STATIC);
  return step_done(s);
}

static int put_wm(sq *q, const pg_store_wm_rec *r) {
  sqlite3_stmt *s = q->w[W_WM_SET];
  sqlite3_bind_text(s, 1, r->principal, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, r->device, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 3, r->conv, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 4, (sqlite3_int64)r->acked);
  return step_done(s);
}

/* Keeps a device watermark of the open transaction for wm_lazy. */
static int stage_wm(sq *q, const pg_store_wm_rec *r) {
  if (q->n_staged == q->cap_staged) {
    size_t nc = q->cap_staged ? q->cap_staged * 2 : 64;
    const pg_store_wm_rec **t = realloc(q->wm_staged, nc * sizeof *t);
    if (!t) return PARLEY_ENOMEM;
    q->wm_staged = t;
    q->cap_staged = nc;
  }
  q->wm_staged[q->n_staged++] = r;
  return 0;
}

/* lazy: device watermarks are staged for wm_lazy instead of written. */
static int apply_batch(sq *q, const pg_store_batch *b, bool lazy) {
  pg_store_batch_view v;
  pg_store_batch_view_get(b, &v);
  int rc = 0;
  /* Conversations first: a new one's row exists before its events (no
   * foreign keys, but the order reads as the protocol happens). */
  for (size_t i = 0; !rc && i < v.n_convs; i++) rc = put_conv(q, &v.convs[i]);
  for (size_t i = 0; !rc && i < v.n_events; i++) rc = put_event(q, &v.events[i]);
  for (size_t i = 0; !rc && i < v.n_state; i++) rc = put_state(q, &v.state[i]);
  for (size_t i = 0; !rc && i < v.n_wms; i++)
    rc = lazy && v.wms[i].device[0] ? stage_wm(q, &v.wms[i]) : put_wm(q, &v.wms[i]);
  return rc;
}

/* Writes every waiting device watermark into the open transaction. */
static int put_lazy(sq *q) {
  size_t i = 0;
  const char *k;
  void *v;
  int rc = 0;
  while (!rc && gw_map_next(&q->wm_lazy, &i, &k, &v)) {
    const lazy_wm *w = v;
    pg_store_wm_rec r = {(char *)w->principal, (char *)w->device, (char *)w->conv, w->acked};
    rc = put_wm(q, &r);
  }
  return rc;
}

static void lazy_clear(sq *q) {
  size_t i = 0;
  const char *k;
  void *v;
  while (gw_map_next(&q->wm_lazy, &i, &k, &v)) free(v);
  gw_map_clear(&q->wm_lazy);
}

/* After a commit: the staged watermarks join wm_lazy (the higher one wins).
 * One that cannot be kept (no memory, the map full) is written by the next
 * transaction instead: wm_next_flush_us is set to now. */
static void lazy_merge(sq *q) {
  if (!q->n_staged) return;
  bool lost = false;
  pthread_mutex_lock(&q->wm_mu);
  if (!q->wm_lazy.len) q->wm_kick = true;
  for (size_t i = 0; i < q->n_staged; i++) {
    const pg_store_wm_rec *r = q->wm_staged[i];
    char mk[420];
    gw_join(mk, sizeof mk, r->principal, r->device, r->conv);
    lazy_wm *w = gw_map_get(&q->wm_lazy, mk);
    if (w) {
      if (r->acked > w->acked) w->acked = r->acked;
      continue;
    }
    size_t lp = strlen(r->principal) + 1, ld = strlen(r->device) + 1, lc = strlen(r->conv) + 1;
    w = malloc(sizeof *w + lp + ld + lc);
    if (!w || gw_map_put(&q->wm_lazy, mk, w)) {
      free(w);
      lost = true;
      continue;
    }
    char *m = (char *)(w + 1);
    memcpy(m, r->principal, lp);
    memcpy(m + lp, r->device, ld);
    memcpy(m + lp + ld, r->conv, lc);
    w->principal = m;
    w->device = m + lp;
    w->conv = m + lp + ld;
    w->acked = r->acked;
  }
  if (lost || q->wm_lazy.len >= WM_LAZY_MAX) q->wm_next_flush_us = 0;
  pthread_mutex_unlock(&q->wm_mu);
  q->n_staged = 0;
}

/* Test switch: marks the phase in data_dir/writer-hold (written aside and
 * renamed, so a reader never sees half of it) and sleeps; phase NULL
 * removes the mark. */
static void hold(sq *q, const char *phase) {
  if (!q->hold_ms) return;
  if (!phase) {
    unlink(q->hold_path);
    return;
  }
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", q->hold_path);
  FILE *f = fopen(tmp, "w");
  if (f) {
    fputs(phase, f);
    fclose(f);
    rename(tmp, q->hold_path);
  }
  struct timespec ts = {(time_t)(q->hold_ms / 2 / 1000), (long)(q->hold_ms / 2 % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Whether a batch has rows to write besides device watermarks. */
static bool has_rows(const pg_store_batch *b) {
  pg_store_batch_view v;
  pg_store_batch_view_get(b, &v);
  if (v.n_events || v.n_convs || v.n_state) return true;
  for (size_t i = 0; i < v.n_wms; i++)
    if (!v.wms[i].device[0]) return true;
  return false;
}

/* Whether the next transaction writes wm_lazy: on the writer thread (a
 * loop-thread commit stays one event long), when the interval is over or
 * flush is forced (close). */
static bool flush_due(const sq *q, bool force, uint64_t now) {
  if (!q->wm_flush_ms) return false;
  if (force) return true;
  return !q->on_loop && q->wm_lazy.len && now >= q->wm_next_flush_us;
}

/* Commits the batches of one wake-up in one transaction. A batch that must
 * fail (one before it failed) fails alone, unapplied. list NULL: a
 * transaction of the waiting watermarks alone (flush true). */
static void write_group(sq *q, qitem *list, bool force_flush) {
  uint64_t t0 = now_us();
  bool flush = flush_due(q, force_flush, t0);
  /* Nothing of this transaction is lazy when it writes wm_lazy anyway. */
  bool lazy = q->wm_flush_ms && !flush;
  /* Batches of customers' Acks alone (lazy watermarks, nothing else) need
   * no transaction at all: their watermarks only join wm_lazy. */
  bool need_tx = !lazy;
  for (qitem *it = list; !need_tx && it; it = it->next) need_tx = has_rows(it->b);
  bool open = need_tx && step_done(q->w[W_BEGIN]) == 0;
  int rc = open || !need_tx ? 0 : PARLEY_EDB;
  if (rc) snprintf(q->werr, sizeof q->werr, "begin: %s", sqlite3_errmsg(q->wr));
  q->n_staged = 0;
  q->wm_kick = false;
  if (!rc && flush && put_lazy(q) != 0) {
    rc = PARLEY_EDB;
    snprintf(q->werr, sizeof q->werr, "write: %s", sqlite3_errmsg(q->wr));
  }
  qitem *applied = NULL, **tail = &applied;
  while (list) {
    qitem *it = list;
    list = it->next;
    it->next = NULL;
    if (!rc && !pg_store__poisoned(it->st, it->b)) {
      rc = apply_batch(q, it->b, lazy);
      if (rc) snprintf(q->werr, sizeof q->werr, "write: %s", sqlite3_errmsg(q->wr));
      *tail = it;
      tail = &it->next;
      continue;
    }
    pg_store__complete(it->st, it->b, PARLEY_EDB,
                       rc ? q->werr : "an earlier batch failed", 0);
    free(it);
  }
  /* The test hold marks batches; a transaction of watermarks alone is none. */
  bool marked = applied != NULL;
  if (open && !rc && marked) hold(q, "commit");
  if (open && !rc && step_done(q->w[W_COMMIT]) != 0) {
    rc = PARLEY_EDB;
    snprintf(q->werr, sizeof q->werr, "commit: %s", sqlite3_errmsg(q->wr));
  }
  if (open && rc && !sqlite3_get_autocommit(q->wr)) step_done(q->w[W_ROLLBACK]);
  if (!rc && flush) {
    /* Written: nothing waits any more. */
    pthread_mutex_lock(&q->wm_mu);
    lazy_clear(q);
    pthread_mutex_unlock(&q->wm_mu);
    q->wm_next_flush_us = now_us() + (uint64_t)q->wm_flush_ms * 1000u;
  }
  /* Committed watermarks become readable (sq_watermark_get) before the
   * batches' completions run. */
  if (!rc) lazy_merge(q);
  q->n_staged = 0;
  if (open && !rc && marked) hold(q, "complete");
  if (marked) hold(q, NULL);
  uint64_t took = now_us() - t0;
  for (qitem *it = applied; it;) {
    qitem *n = it->next;
    pg_store__complete(it->st, it->b, rc, rc ? q->werr : NULL, took);
    free(it);
    it = n;
  }
}

/* The checkpointer: copies the WAL into the database on its own
 * connection while the writer goes on committing. A checkpoint run by the
 * writer stopped every commit for its whole length (three fdatasyncs and
 * the copy: 100-160 ms under bench_turns, the p99 of a turn at 50% load).
 * A PASSIVE checkpoint on another connection takes no lock a writer
 * needs, but it copies only the frames committed before it started, and
 * SQLite starts the WAL over only when a write transaction begins with
 * every frame copied. So passes run until at most CKPT_FINISH_PAGES are
 * left, and then the writer copies that remainder between two of its
 * transactions (ckpt_due): no commit lands in between, the WAL is fully
 * copied and the next commit starts it over. */
/* fdatasync of the database file, through the connection's own file (a
 * descriptor of our own would drop the process's POSIX locks on the file
 * when closed). */
static void sync_db(sqlite3 *db) {
  sqlite3_file *f = NULL;
  if (sqlite3_file_control(db, "main", SQLITE_FCNTL_FILE_POINTER, &f) == SQLITE_OK && f &&
      f->pMethods)
    (void)f->pMethods->xSync(f, SQLITE_SYNC_NORMAL | SQLITE_SYNC_DATAONLY);
}

static void *checkpointer_main(void *arg) {
  sq *q = arg;
  pthread_mutex_lock(&q->ck_mu);
  for (;;) {
    while (!q->ck_asked && !q->ck_stop) pthread_cond_wait(&q->ck_wake, &q->ck_mu);
    if (q->ck_stop) break;
    q->ck_asked = false;
    q->ck_running = true;
    pthread_mutex_unlock(&q->ck_mu);
    /* A pass copies the frames there were when it started (its log), so
     * what the next pass, or the writer's end, has to copy is what came
     * during it. Passes go on until one copied little (little came
     * during it), or copied no less than the one before (the writer
     * commits faster than a pass copies: the writer then copies the
     * rest, as long as that takes). */
    int log = 0, done = 0, prev = -1, copied = -1, rc = SQLITE_OK;
    for (int pass = 0; pass < CKPT_PASSES; pass++) {
      pthread_mutex_lock(&q->ck_lock);
      rc = sqlite3_wal_checkpoint_v2(q->ck, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
      pthread_mutex_unlock(&q->ck_lock);
      if (rc != SQLITE_OK) break;
      int now = prev < 0 || log < prev ? log : log - prev; /* log < prev: started over */
      if (prev >= 0 && (now <= q->ckpt_pages / CKPT_FINISH_DIV || now >= copied)) break;
      prev = log;
      copied = now;
    }
    /* A pass that does not reach the end of the WAL leaves the pages it
     * copied unsynced (SQLite syncs the database only when a checkpoint
     * copies the last frame); the writer's end of the checkpoint would
     * then flush all of them while no commit can run. Flushed here, it
     * only flushes its own remainder. */
    if (rc == SQLITE_OK && q->ck_sync) sync_db(q->ck);
    /* An error (a busy lock, a full disk) leaves the WAL as it is; the
     * writer's end of the checkpoint tries again, as its own checkpoint
     * used to, and the next commit asks again. */
    pthread_mutex_lock(&q->mu);
    q->ckpt_due = true;
    if (!q->busy) pthread_cond_signal(&q->wake);
    pthread_mutex_unlock(&q->mu);
    pthread_mutex_lock(&q->ck_mu);
    q->ck_running = false;
  }
  pthread_mutex_unlock(&q->ck_mu);
  return NULL;
}

/* Under mu, writer thread: whether device watermarks wait (wm_mu is taken
 * inside mu, never the other way round). */
static bool lazy_waiting(sq *q) {
  if (!q->wm_flush_ms) return false;
  pthread_mutex_lock(&q->wm_mu);
  bool any = q->wm_lazy.len > 0;
  pthread_mutex_unlock(&q->wm_mu);
  return any;
}

static void *writer_main(void *arg) {
  sq *q = arg;
  pthread_mutex_lock(&q->mu);
  for (;;) {
    bool flush_now = false;
    while (((!q->head && !q->ckpt_due) || q->busy) && !q->stop) {
      /* Quiet, with watermarks waiting: wake up when they are due and
       * write them in a transaction of their own. */
      if (!q->busy && lazy_waiting(q)) {
        uint64_t due = q->wm_next_flush_us, now = now_us();
        if (now >= due) {
          flush_now = true;
          break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t ns = (uint64_t)ts.tv_nsec + (due - now) * 1000u;
        ts.tv_sec += (time_t)(ns / 1000000000u);
        ts.tv_nsec = (long)(ns % 1000000000u);
        pthread_cond_timedwait(&q->wake, &q->mu, &ts);
      } else {
        pthread_cond_wait(&q->wake, &q->mu);
      }
    }
    if (flush_now && !q->head && !q->stop) {
      q->busy = true;
      pthread_mutex_unlock(&q->mu);
      write_group(q, NULL, true);
      pthread_mutex_lock(&q->mu);
      q->busy = false;
      if (!q->head) pthread_cond_broadcast(&q->idle);
      continue;
    }
    if (!q->head && (q->stop || !q->ckpt_due)) break;
    if (q->ckpt_due) {
      /* The end of a checkpoint (checkpointer_main), before the next
       * transaction. At the hard limit it waits for a pass of the
       * checkpointer's that runs; otherwise such a pass asks again when
       * it ends. */
      bool hard = q->ckpt_hard;
      q->ckpt_due = q->ckpt_hard = false;
      q->busy = true;
      pthread_mutex_unlock(&q->mu);
      if (hard ? pthread_mutex_lock(&q->ck_lock) == 0 : pthread_mutex_trylock(&q->ck_lock) == 0) {
        sqlite3_wal_checkpoint_v2(q->wr, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        pthread_mutex_unlock(&q->ck_lock);
      }
      pthread_mutex_lock(&q->mu);
      q->busy = false;
      if (!q->head) pthread_cond_broadcast(&q->idle);
      continue;
    }
    qitem *list = q->head;
    if (q->merge) {
      q->head = q->tail = NULL;
      q->queued = 0;
    } else {
      q->head = list->next;
      if (!q->head) q->tail = NULL;
      list->next = NULL;
      q->queued--;
    }
    q->busy = true;
    pthread_mutex_unlock(&q->mu);
    write_group(q, list, false);
    pthread_mutex_lock(&q->mu);
    q->busy = false;
    if (!q->head) pthread_cond_broadcast(&q->idle);
  }
  pthread_mutex_unlock(&q->mu);
  return NULL;
}

static void sq_submit(void *impl, pg_store *st, pg_store_batch *b) {
  sq *q = impl;
  qitem *it = malloc(sizeof *it);
  if (!it) {
    pg_store__complete(st, b, PARLEY_ENOMEM, "out of memory", 0);
    return;
  }
  it->next = NULL;
  it->st = st;
  it->b = b;
  bool small = false;
  if (q->inline_bytes) {
    pg_store_batch_view v;
    pg_store_batch_view_get(b, &v);
    small = v.n_events <= 1 && v.bytes <= q->inline_bytes;
  }
  pthread_mutex_lock(&q->mu);
  /* With nothing queued and the writer idle, a small batch is committed
   * here, on the loop thread: without the two thread hand-overs (a futex
   * wake-up of the writer, then the writer's wake-up of the loop) a quiet
   * moment's send is answered sooner. The answer still waits for the commit:
   * done runs from the completion queue, as for the writer's batches. Under
   * load the writer is busy or batches are large, and they go to the writer
   * as before; the end of a checkpoint waits for the writer (ckpt_due). */
  if (q->inline_bytes && !q->head && !q->busy && !q->ckpt_due && small) {
    q->busy = true;
    pthread_mutex_unlock(&q->mu);
    q->on_loop = true;
    write_group(q, it, false);
    q->on_loop = false;
    pthread_mutex_lock(&q->mu);
    q->busy = false;
    /* The writer may be asleep without a timer while watermarks wait now. */
    if (q->ckpt_due || q->wm_kick) pthread_cond_signal(&q->wake);
    q->wm_kick = false;
    if (!q->ckpt_due) pthread_cond_broadcast(&q->idle);
    pthread_mutex_unlock(&q->mu);
    return;
  }
  if (q->tail) q->tail->next = it;
  else q->head = it;
  q->tail = it;
  q->queued++;
  pthread_cond_signal(&q->wake);
  pthread_mutex_unlock(&q->mu);
}

static void sq_drain(void *impl) {
  sq *q = impl;
  pthread_mutex_lock(&q->mu);
  while (q->head || q->busy) pthread_cond_wait(&q->idle, &q->mu);
  pthread_mutex_unlock(&q->mu);
}

/* ----------------------------------------------------------------- reads */

static char *col_str(sqlite3_stmt *s, int i) {
  const unsigned char *t = sqlite3_column_text(s, i);
  return strdup(t ? (const char *)t : "");
}

static int sq_conv_get(void *impl, const char *id, pg_store_conv *out) {
  sq *q = impl;
  sqlite3_stmt *s = q->r[R_CONV_GET];
  memset(out, 0, sizeof *out);
  sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
  int rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    out->id = col_str(s, 0);
    out->customer = col_str(s, 1);
    out->assignee = col_str(s, 2);
    out->bot = col_str(s, 3);
    out->locale = col_str(s, 4);
    out->queue = col_str(s, 5);
    out->note = col_str(s, 6);
    out->tags = col_str(s, 7);
    out->status = sqlite3_column_int(s, 8);
    out->epoch = (uint64_t)sqlite3_column_int64(s, 9);
    out->state_version = (uint64_t)sqlite3_column_int64(s, 10);
    out->queued_ms = sqlite3_column_int64(s, 11);
    out->last_seq = (uint64_t)sqlite3_column_int64(s, 12);
  }
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  if (rc == SQLITE_DONE) return PARLEY_ENOTFOUND;
  if (rc != SQLITE_ROW) return PARLEY_EDB;
  if (!out->id || !out->customer || !out->assignee || !out->bot || !out->locale ||
      !out->queue || !out->note || !out->tags) {
    pg_store_conv_clear(out);
    return PARLEY_ENOMEM;
  }
  return 0;
}

static int sq_conv_each(void *impl, pg_store_index which, const char *key,
                        int (*fn)(void *ud, const pg_store_conv *c), void *ud) {
  sq *q = impl;
  int st = which == PG_STORE_BY_CUSTOMER   ? R_CONV_BY_CUSTOMER
           : which == PG_STORE_BY_ASSIGNEE ? R_CONV_BY_ASSIGNEE
           : which == PG_STORE_BOT_QUEUED  ? R_CONV_BOT_QUEUED
           : key && key[0]                 ? R_CONV_QUEUED
                                           : R_CONV_QUEUED_ALL;
  sqlite3_stmt *s = q->r[st];
  if (st != R_CONV_QUEUED_ALL) sqlite3_bind_text(s, 1, key ? key : "", -1, SQLITE_TRANSIENT);
  /* Collect the ids first: the callback may run other statements. */
  size_t n = 0, cap = 0;
  char **ids = NULL;
  int rc;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    if (n == cap) {
      size_t nc = cap ? cap * 2 : 16;
      char **t = realloc(ids, nc * sizeof *t);
      if (!t) break;
      ids = t;
      cap = nc;
    }
    ids[n] = col_str(s, 0);
    if (ids[n]) n++;
  }
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  int out = rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : PARLEY_EDB;
  for (size_t i = 0; i < n; i++) {
    pg_store_conv c;
    if (!out && sq_conv_get(q, ids[i], &c) == 0) {
      out = fn(ud, &c);
      pg_store_conv_clear(&c);
    }
    free(ids[i]);
  }
  free(ids);
  return out;
}

static int sq_events(void *impl, const char *conv, uint64_t from, uint64_t to, uint32_t limit,
                     int (*fn)(void *ud, uint64_t seq, const void *blob, size_t len), void *ud) {
  sq *q = impl;
  sqlite3_stmt *s = q->r[R_EV_RANGE];
  sqlite3_bind_text(s, 1, conv, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(s, 2, (sqlite3_int64)from);
  sqlite3_bind_int64(s, 3, to ? (sqlite3_int64)to : INT64_MAX);
  sqlite3_bind_int64(s, 4, limit);
  int rc, out = 0;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    out = fn(ud, (uint64_t)sqlite3_column_int64(s, 0), sqlite3_column_blob(s, 1),
             (size_t)sqlite3_column_bytes(s, 1));
    if (out) break;
  }
  if (!out && rc != SQLITE_DONE && rc != SQLITE_ROW) out = PARLEY_EDB;
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return out > 0 ? 0 : out;
}

static int sq_sent_get(void *impl, const char *sender, const uint8_t id[16], char conv[129],
                       uint64_t *seq) {
  sq *q = impl;
  sqlite3_stmt *s = q->r[R_SENT_GET];
  sqlite3_bind_text(s, 1, sender, -1, SQLITE_STATIC);
  sqlite3_bind_blob(s, 2, id, 16, SQLITE_STATIC);
  int rc = sqlite3_step(s), out;
  if (rc == SQLITE_ROW) {
    const unsigned char *t = sqlite3_column_text(s, 0);
    snprintf(conv, 129, "%s", t ? (const char *)t : "");
    *seq = (uint64_t)sqlite3_column_int64(s, 1);
    out = 0;
  } else {
    out = rc == SQLITE_DONE ? PARLEY_ENOTFOUND : PARLEY_EDB;
  }
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return out;
}

static int sq_watermark_get(void *impl, const char *principal, const char *device,
                            const char *conv, uint64_t *acked) {
  sq *q = impl;
  sqlite3_stmt *s = q->r[R_WM_GET];
  sqlite3_bind_text(s, 1, principal, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, device, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 3, conv, -1, SQLITE_STATIC);
  int rc = sqlite3_step(s);
  *acked = rc == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(s, 0) : 0;
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return PARLEY_EDB;
  if (device[0] && q->wm_flush_ms) {
    /* Committed but not yet written: the higher one is the watermark. */
    char mk[420];
    gw_join(mk, sizeof mk, principal, device, conv);
    pthread_mutex_lock(&q->wm_mu);
    const lazy_wm *w = gw_map_get(&q->wm_lazy, mk);
    if (w && w->acked > *acked) *acked = w->acked;
    pthread_mutex_unlock(&q->wm_mu);
  }
  return 0;
}

static int sq_state_each(void *impl, const char *conv,
                         int (*fn)(void *ud, const char *key, const void *val, size_t len),
                         void *ud) {
  sq *q = impl;
  sqlite3_stmt *s = q->r[R_STATE_ALL];
  sqlite3_bind_text(s, 1, conv, -1, SQLITE_TRANSIENT);
  int rc, out = 0;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    out = fn(ud, (const char *)sqlite3_column_text(s, 0), sqlite3_column_blob(s, 1),
             (size_t)sqlite3_column_bytes(s, 1));
    if (out) break;
  }
  if (!out && rc != SQLITE_DONE && rc != SQLITE_ROW) out = PARLEY_EDB;
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return out;
}

static int sq_sent_each(void *impl,
                        int (*fn)(void *ud, const char *sender, const uint8_t msg_id[16]),
                        void *ud) {
  sq *q = impl;
  sqlite3_stmt *s = q->r[R_SENT_ALL];
  int rc, out = 0;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    const unsigned char *sender = sqlite3_column_text(s, 0);
    if (sqlite3_column_bytes(s, 1) != 16 || !sender) continue;
    out = fn(ud, (const char *)sender, sqlite3_column_blob(s, 1));
    if (out) break;
  }
  if (!out && rc != SQLITE_DONE && rc != SQLITE_ROW) out = PARLEY_EDB;
  sqlite3_reset(s);
  return out;
}

const pg_store_backend pg_store_sqlite = {
    .name = "sqlite",
    .open = sq_open,
    .submit = sq_submit,
    .drain = sq_drain,
    .close = sq_close,
    .errmsg = sq_errmsg,
    .conv_get = sq_conv_get,
    .conv_each = sq_conv_each,
    .events = sq_events,
    .sent_get = sq_sent_get,
    .watermark_get = sq_watermark_get,
    .state_each = sq_state_each,
    .sent_each = sq_sent_each,
};

/* Removes the files a gateway keeps in data_dir (gateway.h). */
void pg_data_dir_remove(const char *data_dir) {
  static const char *const suffixes[] = {"", "-wal", "-shm", NULL};
  char path[4096];
  for (int i = 0; suffixes[i]; i++) {
    snprintf(path, sizeof path, "%.4000s/" DB_FILE "%s", data_dir, suffixes[i]);
    unlink(path);
  }
  rmdir(data_dir);
}
