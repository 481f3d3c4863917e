/* The durable log: SQLite in WAL mode. One connection, used only from the
 * gateway's loop thread; statements are prepared once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <parley/error.h>

#include "gw.h"

enum {
  S_CONV_GET, S_CONV_INS, S_CONV_UPD, S_CONV_UPD_LITE, S_CONV_BY_CUSTOMER, S_CONV_BY_ASSIGNEE, S_CONV_QUEUED,
  S_CONV_QUEUED_ALL, S_CONV_BOT_QUEUED, S_EV_PUT, S_EV_RANGE, S_SENT_GET, S_SENT_PUT, S_WM_GET, S_WM_SET,
  S_STATE_ALL, S_STATE_SET, S_STATE_DEL, S_BEGIN, S_COMMIT, S_ROLLBACK, S_SAVE, S_RELEASE,
  S_ROLLBACK_TO, S_COUNT
};

static const char *const sql_text[S_COUNT] = {
    [S_CONV_GET] = "SELECT id,customer,assignee,bot,locale,queue,note,tags,status,epoch,"
                   "last_seq,state_version,queued_ms FROM conversations WHERE id=?1",
    [S_CONV_INS] = "INSERT INTO conversations(id,customer,assignee,bot,locale,queue,note,tags,"
                   "status,epoch,last_seq,state_version,queued_ms) "
                   "VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)",
    [S_CONV_UPD] = "UPDATE conversations SET customer=?2,assignee=?3,bot=?4,locale=?5,queue=?6,"
                   "note=?7,tags=?8,status=?9,epoch=?10,last_seq=?11,state_version=?12,"
                   "queued_ms=?13 WHERE id=?1",
    /* The same without the indexed columns: SQLite then leaves the four
     * indexes alone, and most updates (a new last_seq) change nothing
     * else. Bound like S_CONV_UPD: the numbers it skips are still valid
     * parameters (up to ?13), just unused. */
    [S_CONV_UPD_LITE] = "UPDATE conversations SET locale=?5,note=?7,tags=?8,epoch=?10,"
                        "last_seq=?11,state_version=?12,queued_ms=?13 WHERE id=?1",
    [S_CONV_BY_CUSTOMER] = "SELECT id FROM conversations WHERE customer=?1 ORDER BY id",
    [S_CONV_BY_ASSIGNEE] = "SELECT id FROM conversations WHERE assignee=?1 ORDER BY id",
    [S_CONV_QUEUED] = "SELECT id FROM conversations WHERE status=1 AND queue=?1 "
                      "ORDER BY queued_ms, id",
    [S_CONV_QUEUED_ALL] = "SELECT id FROM conversations WHERE status=1 ORDER BY queued_ms, id",
    [S_CONV_BOT_QUEUED] = "SELECT id FROM conversations WHERE status=1 AND bot=?1 ORDER BY id",
    [S_EV_PUT] = "INSERT INTO events(conv,seq,blob) VALUES(?1,?2,?3)",
    [S_EV_RANGE] = "SELECT seq,blob FROM events WHERE conv=?1 AND seq>=?2 AND seq<=?3 "
                   "ORDER BY seq LIMIT ?4",
    [S_SENT_GET] = "SELECT conv,seq FROM sent WHERE sender=?1 AND msg_id=?2",
    [S_SENT_PUT] = "INSERT INTO sent(sender,msg_id,conv,seq) VALUES(?1,?2,?3,?4)",
    [S_WM_GET] = "SELECT acked FROM watermarks WHERE principal=?1 AND device=?2 AND conv=?3",
    [S_WM_SET] = "INSERT INTO watermarks(principal,device,conv,acked) VALUES(?1,?2,?3,?4) "
                 "ON CONFLICT(principal,device,conv) DO UPDATE SET acked=excluded.acked "
                 "WHERE excluded.acked>acked",
    [S_STATE_ALL] = "SELECT key,value FROM state WHERE conv=?1 ORDER BY key",
    [S_STATE_SET] = "INSERT INTO state(conv,key,value) VALUES(?1,?2,?3) "
                    "ON CONFLICT(conv,key) DO UPDATE SET value=excluded.value",
    [S_STATE_DEL] = "DELETE FROM state WHERE conv=?1 AND key=?2",
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_SAVE] = "SAVEPOINT op",
    [S_RELEASE] = "RELEASE op",
    [S_ROLLBACK_TO] = "ROLLBACK TO op",
};

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS conversations("
    " id TEXT PRIMARY KEY, customer TEXT NOT NULL, assignee TEXT NOT NULL,"
    " bot TEXT NOT NULL, locale TEXT NOT NULL, queue TEXT NOT NULL, note TEXT NOT NULL,"
    " tags TEXT NOT NULL, status INTEGER NOT NULL, epoch INTEGER NOT NULL,"
    " last_seq INTEGER NOT NULL, state_version INTEGER NOT NULL, queued_ms INTEGER NOT NULL)"
    " WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS conversations_customer ON conversations(customer);"
    "CREATE INDEX IF NOT EXISTS conversations_assignee ON conversations(assignee);"
    "CREATE INDEX IF NOT EXISTS conversations_queue ON conversations(status, queue);"
    "CREATE INDEX IF NOT EXISTS conversations_bot ON conversations(bot, status);"
    "CREATE TABLE IF NOT EXISTS events(conv TEXT NOT NULL, seq INTEGER NOT NULL,"
    " blob BLOB NOT NULL, PRIMARY KEY(conv, seq)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS sent(sender TEXT NOT NULL, msg_id BLOB NOT NULL,"
    " conv TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY(sender, msg_id)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS watermarks(principal TEXT NOT NULL, device TEXT NOT NULL,"
    " conv TEXT NOT NULL, acked INTEGER NOT NULL, PRIMARY KEY(principal, device, conv))"
    " WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS state(conv TEXT NOT NULL, key TEXT NOT NULL,"
    " value BLOB NOT NULL, PRIMARY KEY(conv, key)) WITHOUT ROWID;";

struct pg_db {
  sqlite3 *h;
  sqlite3_stmt *st[S_COUNT];
};

static int fail(pg_db *db, int rc) {
  (void)rc;
  return PARLEY_EDB;
}

int pg_db_open(pg_db **out, const char *dir, int durability, char *err, size_t errlen) {
  *out = NULL;
  if (mkdir(dir, 0700) != 0) {
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
      snprintf(err, errlen, "data_dir %s: cannot create directory", dir);
      return PARLEY_EIO;
    }
  }
  char path[4096];
  if ((size_t)snprintf(path, sizeof path, "%s/" PG_DB_FILE, dir) >= sizeof path) {
    snprintf(err, errlen, "data_dir: path too long");
    return PARLEY_EINVAL;
  }
  pg_db *db = calloc(1, sizeof *db);
  if (!db) return PARLEY_ENOMEM;
  if (sqlite3_open_v2(path, &db->h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                         SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
    snprintf(err, errlen, "%s: %s", path, db->h ? sqlite3_errmsg(db->h) : "cannot open");
    pg_db_close(db);
    return PARLEY_EDB;
  }
  /* WAL for every durability level: readers never block the writer, and
   * a crash of the process never loses a committed transaction. The sync
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
  if (sqlite3_exec(db->h, pragmas, NULL, NULL, &msg) != SQLITE_OK ||
      sqlite3_exec(db->h, schema, NULL, NULL, &msg) != SQLITE_OK) {
    snprintf(err, errlen, "%s: %s", path, msg ? msg : sqlite3_errmsg(db->h));
    sqlite3_free(msg);
    pg_db_close(db);
    return PARLEY_EDB;
  }
  for (int i = 0; i < S_COUNT; i++) {
    if (sqlite3_prepare_v3(db->h, sql_text[i], -1, SQLITE_PREPARE_PERSISTENT, &db->st[i],
                           NULL) != SQLITE_OK) {
      snprintf(err, errlen, "%s: prepare: %s", path, sqlite3_errmsg(db->h));
      pg_db_close(db);
      return PARLEY_EDB;
    }
  }
  *out = db;
  return 0;
}

void pg_db_close(pg_db *db) {
  if (!db) return;
  for (int i = 0; i < S_COUNT; i++) sqlite3_finalize(db->st[i]);
  if (db->h) sqlite3_close(db->h);
  free(db);
}

const char *pg_db_errmsg(pg_db *db) { return sqlite3_errmsg(db->h); }

static int run(pg_db *db, int which) {
  sqlite3_stmt *s = db->st[which];
  int rc = sqlite3_step(s);
  sqlite3_reset(s);
  return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : fail(db, rc);
}

int pg_db_begin(pg_db *db) { return run(db, S_BEGIN); }
int pg_db_commit(pg_db *db) { return run(db, S_COMMIT); }
void pg_db_rollback(pg_db *db) {
  if (!sqlite3_get_autocommit(db->h)) run(db, S_ROLLBACK);
}
int pg_db_savepoint(pg_db *db) { return run(db, S_SAVE); }
int pg_db_release(pg_db *db) { return run(db, S_RELEASE); }
void pg_db_rollback_to(pg_db *db) {
  run(db, S_ROLLBACK_TO);
  run(db, S_RELEASE);
}

static char *col_str(sqlite3_stmt *s, int i) {
  const unsigned char *t = sqlite3_column_text(s, i);
  return strdup(t ? (const char *)t : "");
}

/* Packs the indexed columns of r into buf (NUL-separated, then the
 * status); 0 when they do not fit. */
static size_t conv_keys(const pg_convrow *r, char *buf, size_t cap) {
  int n = snprintf(buf, cap, "%s%c%s%c%s%c%s%c%d", r->customer ? r->customer : "", 0,
                   r->assignee ? r->assignee : "", 0, r->bot ? r->bot : "", 0,
                   r->queue ? r->queue : "", 0, r->status);
  return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

void pg_convrow_clear(pg_convrow *r) {
  free(r->orig_keys);
  free(r->id);
  free(r->customer);
  free(r->assignee);
  free(r->bot);
  free(r->locale);
  free(r->queue);
  free(r->note);
  free(r->tags);
  memset(r, 0, sizeof *r);
}

int pg_db_conv_get(pg_db *db, const char *id, pg_convrow *out) {
  sqlite3_stmt *s = db->st[S_CONV_GET];
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
    out->last_seq = (uint64_t)sqlite3_column_int64(s, 10);
    out->state_version = (uint64_t)sqlite3_column_int64(s, 11);
    out->queued_ms = sqlite3_column_int64(s, 12);
  }
  sqlite3_reset(s);
  if (rc == SQLITE_DONE) return PARLEY_ENOTFOUND;
  if (rc != SQLITE_ROW) return fail(db, rc);
  if (!out->id || !out->customer || !out->assignee || !out->bot || !out->locale ||
      !out->queue || !out->note || !out->tags) {
    pg_convrow_clear(out);
    return PARLEY_ENOMEM;
  }
  char keys[2048];
  size_t n = conv_keys(out, keys, sizeof keys);
  if (n && (out->orig_keys = malloc(n))) {
    memcpy(out->orig_keys, keys, n);
    out->orig_len = n;
  }
  return 0;
}

static int conv_write(pg_db *db, int which, const pg_convrow *r) {
  sqlite3_stmt *s = db->st[which];
  sqlite3_bind_text(s, 1, r->id, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, r->customer, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 3, r->assignee, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 4, r->bot, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 5, r->locale ? r->locale : "", -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 6, r->queue ? r->queue : "", -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 7, r->note ? r->note : "", -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 8, r->tags ? r->tags : "", -1, SQLITE_STATIC);
  sqlite3_bind_int(s, 9, r->status);
  sqlite3_bind_int64(s, 10, (sqlite3_int64)r->epoch);
  sqlite3_bind_int64(s, 11, (sqlite3_int64)r->last_seq);
  sqlite3_bind_int64(s, 12, (sqlite3_int64)r->state_version);
  sqlite3_bind_int64(s, 13, r->queued_ms);
  int rc = sqlite3_step(s);
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return rc == SQLITE_DONE ? 0 : fail(db, rc);
}

int pg_db_conv_insert(pg_db *db, const pg_convrow *r) { return conv_write(db, S_CONV_INS, r); }
int pg_db_conv_update(pg_db *db, const pg_convrow *r) {
  char keys[2048];
  size_t n = r->orig_keys ? conv_keys(r, keys, sizeof keys) : 0;
  bool same = n && n == r->orig_len && memcmp(keys, r->orig_keys, n) == 0;
  return conv_write(db, same ? S_CONV_UPD_LITE : S_CONV_UPD, r);
}

int pg_db_conv_each(pg_db *db, const char *where, const char *key,
                    int (*fn)(void *ud, const pg_convrow *r), void *ud) {
  int which = !strcmp(where, "customer")     ? S_CONV_BY_CUSTOMER
              : !strcmp(where, "assignee")   ? S_CONV_BY_ASSIGNEE
              : !strcmp(where, "bot_queued") ? S_CONV_BOT_QUEUED
              : key && key[0]                ? S_CONV_QUEUED
                                             : S_CONV_QUEUED_ALL;
  sqlite3_stmt *s = db->st[which];
  if (which != S_CONV_QUEUED_ALL) sqlite3_bind_text(s, 1, key, -1, SQLITE_TRANSIENT);
  /* Collect the ids first: the callback may run other statements. */
  size_t n = 0, cap = 0;
  char **ids = NULL;
  int rc;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    if (n == cap) {
      size_t nc = cap ? cap * 2 : 16;
      if (nc > GW_MAP_MAX) break;
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
  int out = 0;
  for (size_t i = 0; i < n; i++) {
    pg_convrow r;
    if (!out && pg_db_conv_get(db, ids[i], &r) == 0) {
      out = fn(ud, &r);
      pg_convrow_clear(&r);
    }
    free(ids[i]);
  }
  free(ids);
  return out;
}

int pg_db_event_put(pg_db *db, const char *conv, uint64_t seq, const uint8_t *blob,
                    size_t len) {
  sqlite3_stmt *s = db->st[S_EV_PUT];
  sqlite3_bind_text(s, 1, conv, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, (sqlite3_int64)seq);
  sqlite3_bind_blob(s, 3, blob, (int)len, SQLITE_STATIC);
  int rc = sqlite3_step(s);
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return rc == SQLITE_DONE ? 0 : fail(db, rc);
}

int pg_db_events(pg_db *db, const char *conv, uint64_t from, uint64_t to, uint32_t limit,
                 int (*fn)(void *ud, uint64_t seq, const void *blob, size_t len), void *ud) {
  sqlite3_stmt *s = db->st[S_EV_RANGE];
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
  if (!out && rc != SQLITE_DONE && rc != SQLITE_ROW) out = fail(db, rc);
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return out;
}

int pg_db_sent_get(pg_db *db, const char *sender, const uint8_t id[16], char conv[129],
                   uint64_t *seq) {
  sqlite3_stmt *s = db->st[S_SENT_GET];
  sqlite3_bind_text(s, 1, sender, -1, SQLITE_STATIC);
  sqlite3_bind_blob(s, 2, id, 16, SQLITE_STATIC);
  int rc = sqlite3_step(s), out;
  if (rc == SQLITE_ROW) {
    const unsigned char *t = sqlite3_column_text(s, 0);
    snprintf(conv, 129, "%s", t ? (const char *)t : "");
    *seq = (uint64_t)sqlite3_column_int64(s, 1);
    out = 0;
  } else {
    out = rc == SQLITE_DONE ? PARLEY_ENOTFOUND : fail(db, rc);
  }
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return out;
}

int pg_db_sent_put(pg_db *db, const char *sender, const uint8_t id[16], const char *conv,
                   uint64_t seq) {
  sqlite3_stmt *s = db->st[S_SENT_PUT];
  sqlite3_bind_text(s, 1, sender, -1, SQLITE_STATIC);
  sqlite3_bind_blob(s, 2, id, 16, SQLITE_STATIC);
  sqlite3_bind_text(s, 3, conv, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 4, (sqlite3_int64)seq);
  int rc = sqlite3_step(s);
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return rc == SQLITE_DONE ? 0 : fail(db, rc);
}

uint64_t pg_db_watermark(pg_db *db, const char *principal, const char *device,
                         const char *conv) {
  sqlite3_stmt *s = db->st[S_WM_GET];
  sqlite3_bind_text(s, 1, principal, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, device, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 3, conv, -1, SQLITE_STATIC);
  uint64_t v = 0;
  if (sqlite3_step(s) == SQLITE_ROW) v = (uint64_t)sqlite3_column_int64(s, 0);
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return v;
}

int pg_db_watermark_set(pg_db *db, const char *principal, const char *device, const char *conv,
                        uint64_t acked) {
  sqlite3_stmt *s = db->st[S_WM_SET];
  sqlite3_bind_text(s, 1, principal, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, device, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 3, conv, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 4, (sqlite3_int64)acked);
  int rc = sqlite3_step(s);
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return rc == SQLITE_DONE ? 0 : fail(db, rc);
}

int pg_db_state_each(pg_db *db, const char *conv,
                     int (*fn)(void *ud, const char *key, const void *val, size_t len),
                     void *ud) {
  sqlite3_stmt *s = db->st[S_STATE_ALL];
  sqlite3_bind_text(s, 1, conv, -1, SQLITE_TRANSIENT);
  int rc, out = 0;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    out = fn(ud, (const char *)sqlite3_column_text(s, 0), sqlite3_column_blob(s, 1),
             (size_t)sqlite3_column_bytes(s, 1));
    if (out) break;
  }
  if (!out && rc != SQLITE_DONE && rc != SQLITE_ROW) out = fail(db, rc);
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return out;
}

int pg_db_state_set(pg_db *db, const char *conv, const char *key, const void *val,
                    size_t len) {
  sqlite3_stmt *s = db->st[S_STATE_SET];
  sqlite3_bind_text(s, 1, conv, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, key, -1, SQLITE_STATIC);
  sqlite3_bind_blob(s, 3, len ? val : "", (int)len, SQLITE_STATIC);
  int rc = sqlite3_step(s);
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return rc == SQLITE_DONE ? 0 : fail(db, rc);
}

int pg_db_state_del(pg_db *db, const char *conv, const char *key) {
  sqlite3_stmt *s = db->st[S_STATE_DEL];
  sqlite3_bind_text(s, 1, conv, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, key, -1, SQLITE_STATIC);
  int rc = sqlite3_step(s);
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return rc == SQLITE_DONE ? 0 : fail(db, rc);
}

