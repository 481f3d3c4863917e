/* The PostgreSQL backend of the storage interface (store.h), on libpq.
 *
 * Several gateway nodes may share one database: a conversation's seq is
 * decided by the node that writes it, and the database checks it. Each
 * batch runs in one transaction on the writer thread's connection; for
 * every conversation it adds events to, it calls parley_advance(conv,
 * first, last) (pg_schema.h), an UPDATE of the conversation row that
 * takes the row lock and succeeds only when the stored last seq is still
 * first - 1. Two nodes writing one conversation at once therefore
 * serialise on that row: the second waits for the first's commit, then
 * finds last_seq moved and fails its batch with a conflict, which the
 * store reports like any failed batch (status PARLEY_EDB, why "conflict:
 * ..."): the node drops the hot state built on it, reloads the
 * conversation and the sender's retry gets the next free seq. Seqs stay
 * gap-free and strictly increasing, and the cost is paid only by the
 * conversations two nodes really write at the same moment. (The other
 * choice, a lease per conversation with a fencing token, would make every
 * write of a node that lost its lease wait for the lease's expiry, and
 * needs a clock; the row lock needs neither and is what PostgreSQL does
 * best.)
 *
 * Idempotency is the unique index on (sender, msg_id): a Send written on
 * one node whose ACK was lost and resent to another is found there by
 * pg_store_sent_get (same seq, flagged duplicate); if both nodes race to
 * write it, the second batch fails on the index and the retry finds it.
 *
 * Conversation rows are fenced too: a row update from a node whose epoch
 * or state version is behind the stored one fails the batch, so a stale
 * node cannot move an assignment back.
 *
 * Durability maps onto synchronous_commit on the writer's connection:
 * off -> off (a PostgreSQL crash may lose the last commits), normal ->
 * local (the commit record is flushed on the primary before the ACK),
 * full -> on (also waits for the synchronous standbys when
 * synchronous_standby_names names any).
 *
 * When the database goes away (restart, failover of the database itself)
 * the writer keeps the batch, reconnects with backoff for up to
 * PGB_OUTAGE_MS and applies it again. A batch whose COMMIT was in flight
 * when the connection broke may have committed: its second run then fails
 * on the constraints, is reported failed, and the node reloads what is
 * really stored; nothing is written twice.
 *
 * Every group's transaction also announces the conversations it added
 * events to (pg_notify on PGB_CHANNEL): the other nodes hear of them when
 * the commit happens and never of a rollback, and refresh what they hold
 * in memory (store.h, pg_store_on_remote).
 *
 * Three connections per node: the writer thread's (statements sent on
 * libpq's pipeline as prepared statements), the loop's, which only reads
 * (store.h: reads are the cold path), and the loop's listening one.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>
#include <uv.h>

#include <parley/error.h>

#include "map.h"
#include "store/pg_schema.h"
#include "store/store.h"

/* How long the writer keeps retrying one batch while the database is
 * unreachable before it reports the batch failed. */
#define PGB_OUTAGE_MS 60000
#define PGB_RETRY_MIN_MS 50
#define PGB_RETRY_MAX_MS 2000
/* The channel on which a node announces the conversations it wrote, and
 * the most bytes of one announcement (PostgreSQL's limit is 8000). */
#define PGB_CHANNEL "parley_conv"
#define PGB_NOTIFY_MAX 7800
#define PGB_LISTEN_RETRY_MS 1000
#define PGB_LISTEN_RETRY_MAX_MS 30000

typedef struct qitem {
  struct qitem *next;
  pg_store *st;
  pg_store_batch *b;
} qitem;

typedef struct pend {
  int batch; /* index in the group; -1 for the COMMIT */
  int stmt;
} pend;

typedef struct pgb {
  char *conninfo;
  int durability;
  PGconn *rd; /* loop thread */
  PGconn *wr; /* writer thread */
  char rerr[512], werr[512];

  pthread_t th;
  bool th_started;
  pthread_mutex_t mu;
  pthread_cond_t wake, idle;
  qitem *head, *tail;
  bool busy, stop;
  bool merge;  /* several waiting batches may share one transaction */

  /* Writer thread: the statements on the pipeline whose answers are not
   * read yet, and the first batch whose statement failed (-1: none). */
  pend *pend;
  size_t n_pend, cap_pend;
  int cur_batch;
  int first_fail;
  bool commit_pending; /* the last pending statement is the COMMIT */

  /* This node's tag in its announcements, so that it skips its own. */
  char tag[24];
  /* Loop thread: the listening connection and what it calls. */
  uv_loop_t *loop;
  PGconn *ls;
  uv_poll_t *poll;
  uv_timer_t *retry;
  pg_store_remote_fn remote;
  void *remote_ud;
  bool missed; /* the listener was down: announcements may be lost */
  unsigned retry_ms; /* the next wait before reconnecting it */

  /* Bot placement across nodes (see "placement" below), loop thread. */
  pg_store_place_fn place;
  void *place_ud;
  gw_map holders;   /* conv -> the node holding its placement (strdup'd) */
  gw_map local;     /* bot -> this node's live connections (uintptr_t) */
  struct peer *peers; /* live nodes with bot connections, by node */
  size_t n_peers;
  bool peers_dirty; /* a node announced a change of its connections */
  bool presence_lost; /* a write of this node's connections failed */
  uint64_t peers_at_us, swept_us;
  uv_timer_t *tick;
  /* Writer thread -> loop: conversations whose placement rows this node
   * committed, so the loop forgets what it had cached of their holder. */
  char **moved;
  size_t n_moved, cap_moved;
} pgb;

typedef struct peer {
  char node[24];
  char *bot;
  unsigned conns;
} peer;

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void sleep_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* libpq's messages end with a newline; logs want one line. */
static void copy_msg(char *dst, size_t size, const char *what, const char *msg) {
  snprintf(dst, size, "%s%s", what, msg ? msg : "");
  size_t n = strlen(dst);
  while (n && (dst[n - 1] == '\n' || dst[n - 1] == ' ')) dst[--n] = 0;
}

/* ------------------------------------------------------------ connections */

static const char *sync_commit(int durability) {
  return durability == PG_DUR_OFF ? "off" : durability == PG_DUR_NORMAL ? "local" : "on";
}

static bool exec_ok(PGconn *c, const char *sql, char *err, size_t errlen) {
  PGresult *r = PQexec(c, sql);
  ExecStatusType s = PQresultStatus(r);
  bool ok = s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
  if (!ok) copy_msg(err, errlen, "", PQerrorMessage(c));
  PQclear(r);
  return ok;
}

/* A new session: quiet notices, the durability level, a name in
 * pg_stat_activity. */
static bool session_setup(pgb *p, PGconn *c, char *err, size_t errlen) {
  char sql[160];
  snprintf(sql, sizeof sql,
           "SET synchronous_commit = %s; SET application_name = 'parley-gateway'; "
           "SET client_min_messages = warning",
           sync_commit(p->durability));
  return exec_ok(c, sql, err, errlen);
}

static PGconn *connect_db(pgb *p, char *err, size_t errlen) {
  PGconn *c = PQconnectdb(p->conninfo);
  if (!c) {
    snprintf(err, errlen, "postgres: out of memory");
    return NULL;
  }
  if (PQstatus(c) != CONNECTION_OK) {
    copy_msg(err, errlen, "postgres: connect: ", PQerrorMessage(c));
    PQfinish(c);
    return NULL;
  }
  if (!session_setup(p, c, err, errlen)) {
    PQfinish(c);
    return NULL;
  }
  return c;
}

/* A search_path naming a schema that does not exist yet (options=
 * '-csearch_path=tenant_a' in the URL: several deployments, or test runs,
 * in one database) gets it created, so the tables have a home. */
static int ensure_schema(PGconn *c, char *err, size_t errlen) {
  char e[400];
  if (!exec_ok(c,
               "DO $$ BEGIN IF current_schema() IS NULL THEN "
               "EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', "
               "btrim(split_part(current_setting('search_path'), ',', 1), ' \"')); "
               "END IF; END $$",
               e, sizeof e)) {
    snprintf(err, errlen, "postgres: schema: %s", e);
    return PARLEY_EDB;
  }
  return 0;
}

/* Applies the migrations the database lacks; refuses a newer schema. */
static int migrate(PGconn *c, char *err, size_t errlen) {
  char e[400] = "";
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT pg_advisory_lock(%lld)", PGB_MIGRATION_LOCK);
  if (!exec_ok(c, sql, e, sizeof e)) {
    snprintf(err, errlen, "postgres: schema lock: %s", e);
    return PARLEY_EDB;
  }
  int rc = 0;
  if (!exec_ok(c,
               "CREATE TABLE IF NOT EXISTS parley_schema ("
               "  version integer PRIMARY KEY,"
               "  applied_at timestamptz NOT NULL DEFAULT now())",
               e, sizeof e)) {
    snprintf(err, errlen, "postgres: schema table: %s", e);
    rc = PARLEY_EDB;
  }
  int have = 0;
  if (!rc) {
    PGresult *r = PQexec(c, "SELECT coalesce(max(version), 0) FROM parley_schema");
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
      have = atoi(PQgetvalue(r, 0, 0));
    } else {
      copy_msg(e, sizeof e, "", PQerrorMessage(c));
      snprintf(err, errlen, "postgres: schema version: %s", e);
      rc = PARLEY_EDB;
    }
    PQclear(r);
  }
  if (!rc && have > PGB_SCHEMA_VERSION) {
    snprintf(err, errlen,
             "postgres: the database's schema is version %d, newer than this gateway knows "
             "(%d): run the gateway version that migrated it, or a newer one",
             have, PGB_SCHEMA_VERSION);
    rc = PARLEY_EDB;
  }
  for (int v = have + 1; !rc && v <= PGB_SCHEMA_VERSION; v++) {
    char ins[96];
    snprintf(ins, sizeof ins, "INSERT INTO parley_schema(version) VALUES (%d)", v);
    if (!exec_ok(c, "BEGIN", e, sizeof e) || !exec_ok(c, pgb_migrations[v], e, sizeof e) ||
        !exec_ok(c, ins, e, sizeof e) || !exec_ok(c, "COMMIT", e, sizeof e)) {
      char e2[64];
      exec_ok(c, "ROLLBACK", e2, sizeof e2);
      snprintf(err, errlen, "postgres: migration %d: %s", v, e);
      rc = PARLEY_EDB;
    }
  }
  snprintf(sql, sizeof sql, "SELECT pg_advisory_unlock(%lld)", PGB_MIGRATION_LOCK);
  exec_ok(c, sql, e, sizeof e);
  return rc;
}

/* ------------------------------------------------------------ parameters */

/* Up to 16 parameters of one statement, text or binary. */
typedef struct params {
  const char *v[16];
  int len[16];
  int fmt[16];
  char num[16][24];
  int n;
} params;

static void p_text(params *p, const char *s) {
  p->v[p->n] = s ? s : "";
  p->len[p->n] = 0;
  p->fmt[p->n] = 0;
  p->n++;
}

static void p_null(params *p) {
  p->v[p->n] = NULL;
  p->len[p->n] = 0;
  p->fmt[p->n] = 0;
  p->n++;
}

static void p_u64(params *p, uint64_t x) {
  snprintf(p->num[p->n], sizeof p->num[p->n], "%llu", (unsigned long long)x);
  p_text(p, p->num[p->n]);
}

static void p_i64(params *p, int64_t x) {
  snprintf(p->num[p->n], sizeof p->num[p->n], "%lld", (long long)x);
  p_text(p, p->num[p->n]);
}

static void p_bin(params *p, const void *data, size_t len) {
  /* A zero-length binary value must still be non-NULL. */
  p->v[p->n] = len ? (const char *)data : "";
  p->len[p->n] = (int)len;
  p->fmt[p->n] = 1;
  p->n++;
}

static PGresult *run(PGconn *c, const char *sql, const params *p, int result_fmt) {
  return PQexecParams(c, sql, p ? p->n : 0, NULL, p ? p->v : NULL, p ? p->len : NULL,
                      p ? p->fmt : NULL, result_fmt);
}

/* ------------------------------------------------------------ writes */

/* The writer's statements, prepared once per connection. */
enum {
  S_CONV_INS, S_CONV_PUT, S_ADVANCE, S_EV_PUT, S_STATE_SET, S_STATE_DEL, S_WM_SET, S_NOTIFY,
  S_COUNT
};

static const struct {
  const char *name, *what, *sql;
} stmts[S_COUNT] = {
    [S_CONV_INS] = {"parley_conv_ins", "new conversation",
                    "INSERT INTO parley_conversations(id,customer,assignee,bot,locale,queue,note,"
                    "tags,status,epoch,state_version,queued_ms,node) "
                    "VALUES($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)"},
    /* parley_conv_place fails unless the row exists with an epoch and
     * state version not above the new ones (a node never moves them
     * back), and, for a placement, with the epoch just below the new one;
     * a raised epoch records this node as the holder (pg_schema.h, 3). */
    [S_CONV_PUT] = {"parley_conv_place", "conversation",
                    "SELECT parley_conv_place($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)"},
    [S_ADVANCE] = {"parley_advance", "seq", "SELECT parley_advance($1,$2,$3)"},
    [S_EV_PUT] = {"parley_ev_put", "event",
                  "INSERT INTO parley_events(conv,seq,blob,sender,msg_id) VALUES($1,$2,$3,$4,$5)"},
    [S_STATE_SET] = {"parley_state_set", "state",
                     "INSERT INTO parley_state(conv,key,val) VALUES($1,$2,$3) "
                     "ON CONFLICT(conv,key) DO UPDATE SET val=excluded.val"},
    [S_STATE_DEL] = {"parley_state_del", "state",
                     "DELETE FROM parley_state WHERE conv=$1 AND key=$2"},
    /* Delivered to the other nodes' listeners when the transaction
     * commits, and not at all when it does not. */
    [S_NOTIFY] = {"parley_notify", "notify", "SELECT pg_notify('" PGB_CHANNEL "', $1)"},
    [S_WM_SET] = {"parley_wm_set", "watermark",
                  "INSERT INTO parley_watermarks(principal,device,conv,acked) VALUES($1,$2,$3,$4) "
                  "ON CONFLICT(principal,device,conv) DO UPDATE SET acked=excluded.acked "
                  "WHERE parley_watermarks.acked<excluded.acked"},
};

/* Statements sent in one pipeline chunk before their answers are read:
 * bounds what waits in the socket buffers both ways. */
#define PGB_CHUNK 256

static bool prepare_writer(PGconn *c, char *err, size_t errlen) {
  for (int i = 0; i < S_COUNT; i++) {
    PGresult *r = PQprepare(c, stmts[i].name, stmts[i].sql, 0, NULL);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) copy_msg(err, errlen, "postgres: prepare: ", PQerrorMessage(c));
    PQclear(r);
    if (!ok) return false;
  }
  return true;
}

/* Outcome of one statement of a batch. */
enum { PGW_OK = 0, PGW_CONFLICT = 1, PGW_FAIL = 2, PGW_LOST = 3 };

/* Classifies a failed statement: a lost connection is retried, a
 * constraint, serialisation or deadlock failure is a conflict with
 * another node, anything else fails the batch. */
static int classify(pgb *p, PGresult *r, const char *what) {
  if (PQstatus(p->wr) != CONNECTION_OK) {
    copy_msg(p->werr, sizeof p->werr, "postgres: connection lost: ", PQerrorMessage(p->wr));
    return PGW_LOST;
  }
  const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
  char head[96];
  bool conflict = state && (!strcmp(state, "40001") || !strcmp(state, "40P01") ||
                            !strcmp(state, "23505"));
  snprintf(head, sizeof head, "%s%s: ", conflict ? "conflict: " : "postgres: ", what);
  /* The primary message alone: one line, without "ERROR:" and context. */
  const char *primary = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
  copy_msg(p->werr, sizeof p->werr, head, primary ? primary : PQerrorMessage(p->wr));
  return conflict ? PGW_CONFLICT : PGW_FAIL;
}

static int flush_chunk(pgb *p);

/* Room for one more pending statement. */
static bool pend_room(pgb *p) {
  if (p->n_pend < p->cap_pend) return true;
  size_t nc = p->cap_pend ? p->cap_pend * 2 : 64;
  pend *t = realloc(p->pend, nc * sizeof *t);
  if (!t) {
    snprintf(p->werr, sizeof p->werr, "postgres: out of memory");
    return false;
  }
  p->pend = t;
  p->cap_pend = nc;
  return true;
}

/* Queues one statement of the batch p->cur_batch on the pipeline. */
static int step(pgb *p, int stmt, const params *ps) {
  if (!pend_room(p)) return PGW_FAIL;
  if (!PQsendQueryPrepared(p->wr, stmts[stmt].name, ps->n, ps->v, ps->len, ps->fmt, 0))
    return classify(p, NULL, stmts[stmt].what);
  p->pend[p->n_pend].batch = p->cur_batch;
  p->pend[p->n_pend].stmt = stmt;
  p->n_pend++;
  if (p->n_pend >= PGB_CHUNK) return flush_chunk(p);
  return PGW_OK;
}

static void conv_params(params *ps, const pg_store_conv *c) {
  p_text(ps, c->id);
  p_text(ps, c->customer);
  p_text(ps, c->assignee);
  p_text(ps, c->bot);
  p_text(ps, c->locale);
  p_text(ps, c->queue);
  p_text(ps, c->note);
  p_text(ps, c->tags);
  p_i64(ps, c->status);
  p_u64(ps, c->epoch);
  p_u64(ps, c->state_version);
  p_i64(ps, c->queued_ms);
}

/* A conversation a batch touches: its row and its run of events. */
typedef struct touch {
  const char *id;
  const pg_store_conv_rec *rec;
  uint64_t first, last; /* seqs of its events; 0 when none */
} touch;

static int touch_cmp(const void *a, const void *b) {
  return strcmp(((const touch *)a)->id, ((const touch *)b)->id);
}

static int wm_cmp(const void *a, const void *b) {
  const pg_store_wm_rec *x = *(const pg_store_wm_rec *const *)a;
  const pg_store_wm_rec *y = *(const pg_store_wm_rec *const *)b;
  int c = strcmp(x->principal, y->principal);
  if (!c) c = strcmp(x->device, y->device);
  if (!c) c = strcmp(x->conv, y->conv);
  return c;
}

static touch *find_touch(touch *t, size_t n, const char *id) {
  for (size_t i = 0; i < n; i++)
    if (!strcmp(t[i].id, id)) return &t[i];
  return NULL;
}

/* Queues the statements of one batch on the pipeline, inside the
 * caller's transaction. A failure found here (a bad batch, a chunk whose
 * answers showed an error, a lost connection) stops the queueing.
 * Conversation rows are locked in id order and watermarks written in key
 * order, so that two nodes' transactions cannot deadlock on each other. */
static int apply_batch(pgb *p, const pg_store_batch *b) {
  pg_store_batch_view v;
  pg_store_batch_view_get(b, &v);
  size_t cap = v.n_convs + v.n_events;
  touch *t = cap ? calloc(cap, sizeof *t) : NULL;
  if (cap && !t) {
    snprintf(p->werr, sizeof p->werr, "postgres: out of memory");
    return PGW_FAIL;
  }
  size_t nt = 0;
  int rc = PGW_OK;
  for (size_t i = 0; i < v.n_events; i++) {
    const pg_store_event *e = &v.events[i];
    touch *x = find_touch(t, nt, e->conv);
    if (!x) {
      x = &t[nt++];
      x->id = e->conv;
      x->first = e->seq;
    } else if (e->seq != x->last + 1) {
      snprintf(p->werr, sizeof p->werr, "postgres: batch events of %s are not consecutive",
               e->conv);
      rc = PGW_FAIL;
    }
    x->last = e->seq;
  }
  for (size_t i = 0; i < v.n_convs; i++) {
    touch *x = find_touch(t, nt, v.convs[i].c.id);
    if (!x) {
      x = &t[nt++];
      x->id = v.convs[i].c.id;
    }
    x->rec = &v.convs[i];
  }
  if (nt) qsort(t, nt, sizeof *t, touch_cmp);

  for (size_t i = 0; !rc && i < nt; i++) {
    params ps = {0};
    if (t[i].rec) {
      conv_params(&ps, &t[i].rec->c);
      p_text(&ps, p->tag);
      bool ins = t[i].rec->flags & PG_STORE_CONV_NEW;
      if (!ins) p_text(&ps, (t[i].rec->flags & PG_STORE_CONV_EPOCH) ? "t" : "f");
      rc = step(p, ins ? S_CONV_INS : S_CONV_PUT, &ps);
    }
    if (!rc && t[i].first) {
      params pa = {0};
      p_text(&pa, t[i].id);
      p_u64(&pa, t[i].first);
      p_u64(&pa, t[i].last);
      rc = step(p, S_ADVANCE, &pa);
    }
  }
  for (size_t i = 0; !rc && i < v.n_events; i++) {
    const pg_store_event *e = &v.events[i];
    params ps = {0};
    p_text(&ps, e->conv);
    p_u64(&ps, e->seq);
    p_bin(&ps, e->blob, e->len);
    if (e->has_msg_id) {
      p_text(&ps, e->sender);
      p_bin(&ps, e->msg_id, 16);
    } else {
      p_null(&ps);
      p_null(&ps);
    }
    rc = step(p, S_EV_PUT, &ps);
  }
  for (size_t i = 0; !rc && i < v.n_state; i++) {
    const pg_store_state_rec *s = &v.state[i];
    params ps = {0};
    p_text(&ps, s->conv);
    p_text(&ps, s->key);
    if (s->deleted) {
      rc = step(p, S_STATE_DEL, &ps);
    } else {
      p_bin(&ps, s->val, s->len);
      rc = step(p, S_STATE_SET, &ps);
    }
  }
  const pg_store_wm_rec **wm = NULL;
  if (!rc && v.n_wms) {
    wm = malloc(v.n_wms * sizeof *wm);
    if (!wm) {
      snprintf(p->werr, sizeof p->werr, "postgres: out of memory");
      rc = PGW_FAIL;
    } else {
      for (size_t i = 0; i < v.n_wms; i++) wm[i] = &v.wms[i];
      qsort(wm, v.n_wms, sizeof *wm, wm_cmp);
    }
  }
  for (size_t i = 0; !rc && i < v.n_wms; i++) {
    params ps = {0};
    p_text(&ps, wm[i]->principal);
    p_text(&ps, wm[i]->device);
    p_text(&ps, wm[i]->conv);
    p_u64(&ps, wm[i]->acked);
    rc = step(p, S_WM_SET, &ps);
  }
  free(wm);
  free(t);
  return rc;
}

/* Reconnects the writer, with backoff, until the database answers or the
 * outage budget is spent. True when connected. */
static bool writer_reconnect(pgb *p, uint64_t deadline_us) {
  unsigned wait = PGB_RETRY_MIN_MS;
  for (;;) {
    if (p->wr) PQfinish(p->wr);
    char e[400];
    p->wr = connect_db(p, e, sizeof e);
    if (p->wr && prepare_writer(p->wr, e, sizeof e)) return true;
    snprintf(p->werr, sizeof p->werr, "%s", e);
    pthread_mutex_lock(&p->mu);
    bool stop = p->stop;
    pthread_mutex_unlock(&p->mu);
    if (stop || now_us() + (uint64_t)wait * 1000u > deadline_us) return false;
    sleep_ms(wait);
    wait = wait * 2 > PGB_RETRY_MAX_MS ? PGB_RETRY_MAX_MS : wait * 2;
  }
}

/* The group's transaction: its id (txid_current) and how it ended. */
typedef struct group {
  int n_ok;          /* batches committed, from the head of the list */
  bool poisoned;     /* batch n_ok failed because an earlier one did */
  char xid[32];      /* the transaction id, "" before BEGIN answered */
  bool commit_sent;  /* the connection broke after COMMIT went out */
} group;

static bool conn_lost(pgb *p) { return PQstatus(p->wr) != CONNECTION_OK; }

/* Sends a Sync and reads the answers of every pending statement. The
 * first error names the batch that failed (p->first_fail, the error in
 * p->werr); the statements after it in the chunk come back aborted. */
static int flush_chunk(pgb *p) {
  if (!PQpipelineSync(p->wr)) return classify(p, NULL, "sync");
  size_t q = 0;
  int rc = PGW_OK;
  for (;;) {
    PGresult *r = PQgetResult(p->wr);
    if (!r) {
      /* The end of one statement's answers. */
      if (conn_lost(p)) return classify(p, NULL, "pipeline");
      if (++q > p->n_pend + 1) {
        snprintf(p->werr, sizeof p->werr, "postgres: pipeline out of step");
        return PGW_LOST; /* a fresh connection sorts it out */
      }
      continue;
    }
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      break;
    }
    if (st == PGRES_FATAL_ERROR && p->first_fail < 0 && q < p->n_pend) {
      const pend *e = &p->pend[q];
      int c = classify(p, r, e->batch < 0 ? "commit" : stmts[e->stmt].what);
      if (c == PGW_LOST) rc = PGW_LOST;
      /* A failed COMMIT fails the whole group. */
      p->first_fail = e->batch < 0 ? 0 : e->batch;
    }
    PQclear(r);
  }
  p->n_pend = 0;
  return rc;
}

/* Queues the group's announcement: "tag" then one "conv last_seq" line
 * per conversation the batches add events to, in notifications of at
 * most PGB_NOTIFY_MAX bytes. A failure of it fails the group. */
static int announce(pgb *p, qitem *list, int limit) {
  char buf[PGB_NOTIFY_MAX + 200];
  size_t len = (size_t)snprintf(buf, sizeof buf, "%s", p->tag);
  size_t head = len;
  int rc = PGW_OK, i = 0;
  p->cur_batch = 0;
  for (qitem *it = list; it && i < limit && !rc; it = it->next, i++) {
    pg_store_batch_view v;
    pg_store_batch_view_get(it->b, &v);
    for (size_t e = 0; e < v.n_events && !rc; e++) {
      /* One line per run of a conversation's events: its last seq. */
      if (e + 1 < v.n_events && !strcmp(v.events[e + 1].conv, v.events[e].conv)) continue;
      char line[180];
      int n = snprintf(line, sizeof line, "\n%s %llu", v.events[e].conv,
                       (unsigned long long)v.events[e].seq);
      if (n <= 0 || (size_t)n >= sizeof line) continue;
      if (len + (size_t)n > PGB_NOTIFY_MAX) {
        params ps = {0};
        p_text(&ps, buf);
        rc = step(p, S_NOTIFY, &ps);
        len = head;
        buf[len] = 0;
      }
      memcpy(buf + len, line, (size_t)n + 1);
      len += (size_t)n;
    }
    /* "@conv": a row whose assignment may have moved (its holder, its
     * epoch): the other nodes forget the holder they cached and re-read
     * the row if they hold it. */
    for (size_t c = 0; c < v.n_convs && !rc; c++) {
      if (!(v.convs[c].flags & (PG_STORE_CONV_KEYS | PG_STORE_CONV_EPOCH))) continue;
      char line[180];
      int n = snprintf(line, sizeof line, "\n@%s", v.convs[c].c.id);
      if (n <= 0 || (size_t)n >= sizeof line) continue;
      if (len + (size_t)n > PGB_NOTIFY_MAX) {
        params ps = {0};
        p_text(&ps, buf);
        rc = step(p, S_NOTIFY, &ps);
        len = head;
        buf[len] = 0;
      }
      memcpy(buf + len, line, (size_t)n + 1);
      len += (size_t)n;
    }
  }
  if (!rc && len > head) {
    params ps = {0};
    p_text(&ps, buf);
    rc = step(p, S_NOTIFY, &ps);
  }
  return rc;
}

/* One attempt at the first `limit` batches of list in one transaction:
 * BEGIN and the transaction id in one round trip, then every statement
 * and the COMMIT on libpq's pipeline (a round trip per chunk instead of
 * one per statement). Returns limit when they committed, the index of the
 * batch that failed (everything rolled back), or -1 when the connection
 * broke. */
static int run_pipeline(pgb *p, qitem *list, int limit, group *g) {
  g->xid[0] = 0;
  g->commit_sent = false;
  p->n_pend = 0;
  p->first_fail = -1;
  PGresult *r = PQexec(p->wr, "BEGIN; SELECT txid_current()");
  bool began = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
  if (began) snprintf(g->xid, sizeof g->xid, "%s", PQgetvalue(r, 0, 0));
  else if (classify(p, r, "begin") == PGW_LOST) began = false;
  PQclear(r);
  if (!began) {
    char e[64];
    if (conn_lost(p)) return -1;
    exec_ok(p->wr, "ROLLBACK", e, sizeof e);
    return 0;
  }
  if (!PQenterPipelineMode(p->wr)) {
    copy_msg(p->werr, sizeof p->werr, "postgres: pipeline: ", PQerrorMessage(p->wr));
    return conn_lost(p) ? -1 : 0;
  }
  int rc = PGW_OK, i = 0;
  for (qitem *it = list; i < limit && !rc && p->first_fail < 0; it = it->next, i++) {
    p->cur_batch = i;
    rc = apply_batch(p, it->b);
    if (rc && rc != PGW_LOST && p->first_fail < 0) p->first_fail = i;
  }
  if (rc != PGW_LOST && p->first_fail < 0) rc = announce(p, list, limit);
  if (rc != PGW_LOST && p->first_fail < 0) {
    if (!pend_room(p)) {
      p->first_fail = 0;
    } else if (PQsendQueryParams(p->wr, "COMMIT", 0, NULL, NULL, NULL, NULL, 0)) {
      p->pend[p->n_pend].batch = -1;
      p->pend[p->n_pend].stmt = 0;
      p->n_pend++;
      g->commit_sent = true;
    } else {
      rc = classify(p, NULL, "commit");
    }
  }
  if (rc != PGW_LOST) rc = flush_chunk(p);
  if (rc == PGW_LOST || conn_lost(p)) return -1;
  PQexitPipelineMode(p->wr);
  if (p->first_fail >= 0) {
    char e[64];
    /* The transaction is left aborted (or, after a failed COMMIT, gone). */
    exec_ok(p->wr, "ROLLBACK", e, sizeof e);
    if (conn_lost(p)) return -1;
    return p->first_fail;
  }
  return limit;
}

/* Commits the batches of one wake-up in one transaction. When one fails
 * (a conflict with another node, say), the batches before it are written
 * again without it, so that it fails alone; the ones after it fail as
 * poisoned (store.h). Returns PGW_LOST when the connection broke: the caller
 * reconnects and, unless the transaction is known committed, runs the
 * group again. */
static int write_group(pgb *p, qitem *list, group *g) {
  memset(g, 0, sizeof *g);
  int limit = 0;
  for (qitem *it = list; it; it = it->next, limit++) {
    if (pg_store__poisoned(it->st, it->b)) {
      g->poisoned = true;
      break;
    }
  }
  while (limit > 0) {
    int f = run_pipeline(p, list, limit, g);
    if (f < 0) return PGW_LOST;
    if (f == limit) break;
    /* Batch f failed for a reason of its own. */
    g->poisoned = false;
    limit = f;
  }
  g->n_ok = limit;
  return PGW_OK;
}

/* After a lost connection: did the group's transaction commit? 1 yes,
 * 0 no, -1 unknown (asked again after the next reconnect). */
static int committed(pgb *p, const group *g) {
  if (!g->commit_sent || !g->xid[0]) return 0;
  params ps = {0};
  p_text(&ps, g->xid);
  PGresult *r = run(p->wr, "SELECT txid_status($1::bigint)", &ps, 0);
  int out = -1;
  const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0)) {
    const char *v = PQgetvalue(r, 0, 0);
    /* "in progress": the old session is still finishing; ask again. */
    out = !strcmp(v, "committed") ? 1 : !strcmp(v, "aborted") ? 0 : -1;
  } else if (state && !strcmp(state, "22023")) {
    /* "transaction ID is in the future": the server crashed before
     * anything of it reached the WAL, so it cannot have committed. */
    out = 0;
  }
  PQclear(r);
  return out;
}

/* Reports the group: the first n_ok batches durable, the next one failed
 * with the writer's error (or as poisoned), the rest poisoned. */
static void complete_group(pgb *p, qitem *list, const group *g, uint64_t took) {
  int idx = 0;
  while (list) {
    qitem *n = list->next;
    if (idx < g->n_ok) {
      pg_store__complete(list->st, list->b, 0, NULL, took);
    } else {
      const char *why = idx == g->n_ok && !g->poisoned ? p->werr : "an earlier batch failed";
      pg_store__complete(list->st, list->b, PARLEY_EDB, why, 0);
    }
    free(list);
    list = n;
    idx++;
  }
}

/* Hands the loop the ids of the placement rows the first n batches
 * committed (before their completions run, so that a placement decided in
 * a completion reads the new holder). */
static void note_moved(pgb *p, qitem *list, int n) {
  pthread_mutex_lock(&p->mu);
  for (int i = 0; list && i < n; list = list->next, i++) {
    pg_store_batch_view v;
    pg_store_batch_view_get(list->b, &v);
    for (size_t c = 0; c < v.n_convs; c++) {
      if (!(v.convs[c].flags & (PG_STORE_CONV_KEYS | PG_STORE_CONV_EPOCH))) continue;
      if (p->n_moved == p->cap_moved) {
        size_t nc = p->cap_moved ? p->cap_moved * 2 : 16;
        char **t = realloc(p->moved, nc * sizeof *t);
        if (!t) break;
        p->moved = t;
        p->cap_moved = nc;
      }
      char *id = strdup(v.convs[c].c.id);
      if (id) p->moved[p->n_moved++] = id;
    }
  }
  pthread_mutex_unlock(&p->mu);
}

static void run_group(pgb *p, qitem *list) {
  uint64_t t0 = now_us();
  uint64_t deadline = t0 + (uint64_t)PGB_OUTAGE_MS * 1000u;
  group g;
  memset(&g, 0, sizeof g);
  bool connected = !conn_lost(p) || writer_reconnect(p, deadline);
  while (connected) {
    if (write_group(p, list, &g) != PGW_LOST) break;
    /* The connection broke. The same group runs again on a new one,
     * unless its COMMIT was out and the database says it committed. */
    group lost = g;
    int c = -1;
    while (c < 0 && (connected = writer_reconnect(p, deadline))) {
      c = committed(p, &lost);
      if (c >= 0) break;
      /* Still in progress on the old session, or not answered. */
      if (now_us() > deadline) connected = false;
      else sleep_ms(PGB_RETRY_MIN_MS);
    }
    if (c == 1) {
      g = lost;
      break;
    }
  }
  if (!connected) {
    /* The database stayed away: the whole group fails, unapplied. */
    memset(&g, 0, sizeof g);
  }
  note_moved(p, list, g.n_ok);
  complete_group(p, list, &g, now_us() - t0);
}

static void *writer_main(void *arg) {
  pgb *p = arg;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->head && !p->stop) pthread_cond_wait(&p->wake, &p->mu);
    if (!p->head) break;
    qitem *list = p->head;
    if (p->merge) {
      p->head = p->tail = NULL;
    } else {
      /* group_commit: false: one transaction per batch. */
      p->head = list->next;
      if (!p->head) p->tail = NULL;
      list->next = NULL;
    }
    p->busy = true;
    pthread_mutex_unlock(&p->mu);
    run_group(p, list);
    pthread_mutex_lock(&p->mu);
    p->busy = false;
    if (!p->head) pthread_cond_broadcast(&p->idle);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

static void pgb_submit(void *impl, pg_store *st, pg_store_batch *b) {
  pgb *p = impl;
  qitem *it = malloc(sizeof *it);
  if (!it) {
    pg_store__complete(st, b, PARLEY_ENOMEM, "out of memory", 0);
    return;
  }
  it->next = NULL;
  it->st = st;
  it->b = b;
  pthread_mutex_lock(&p->mu);
  if (p->tail) p->tail->next = it;
  else p->head = it;
  p->tail = it;
  pthread_cond_signal(&p->wake);
  pthread_mutex_unlock(&p->mu);
}

static void pgb_drain(void *impl) {
  pgb *p = impl;
  pthread_mutex_lock(&p->mu);
  while (p->head || p->busy) pthread_cond_wait(&p->idle, &p->mu);
  pthread_mutex_unlock(&p->mu);
}

/* ------------------------------------------------------------ open/close */

static void listen_drop(pgb *p);
static void free_handle(uv_handle_t *h);
static void placement_free(pgb *p);

static void pgb_close(void *impl) {
  pgb *p = impl;
  if (!p) return;
  if (p->th_started) {
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->th, NULL);
  }
  if (p->wr) PQfinish(p->wr);
  p->wr = NULL;
  placement_free(p);
  if (p->rd) PQfinish(p->rd);
  p->remote = NULL;
  p->place = NULL;
  listen_drop(p);
  if (p->retry) {
    uv_timer_stop(p->retry);
    p->retry->data = NULL;
    uv_close((uv_handle_t *)p->retry, free_handle);
  }
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->wake);
  pthread_cond_destroy(&p->idle);
  free(p->conninfo);
  free(p->pend);
  free(p);
}

/* A password written into the YAML's URL is refused: it belongs in the
 * environment (PGPASSWORD, or storage.password_env) or a file
 * (storage.password_file, or libpq's passfile). */
static int check_conninfo(const char *url, char *err, size_t errlen) {
  char *msg = NULL;
  PQconninfoOption *opts = PQconninfoParse(url, &msg);
  if (!opts) {
    copy_msg(err, errlen, "postgres: storage.url: ", msg ? msg : "cannot parse");
    PQfreemem(msg);
    return PARLEY_ECONFIG;
  }
  PQconninfoFree(opts);
  return 0;
}

static int pgb_open(const pg_store_options *o, void **out, char *err, size_t errlen) {
  *out = NULL;
  if (!o->url || !o->url[0]) {
    snprintf(err, errlen, "postgres: storage.url is required");
    return PARLEY_ECONFIG;
  }
  int rc = check_conninfo(o->url, err, errlen);
  if (rc) return rc;
  pgb *p = calloc(1, sizeof *p);
  if (!p) return PARLEY_ENOMEM;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->wake, NULL);
  pthread_cond_init(&p->idle, NULL);
  p->durability = o->durability;
  p->loop = o->loop;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  /* Unique enough among the nodes of one database: the time and where
   * this process put its state. */
  snprintf(p->tag, sizeof p->tag, "n%lx%lx", (unsigned long)ts.tv_sec & 0xffffff,
           (unsigned long)ts.tv_nsec ^ (unsigned long)(uintptr_t)p);
  p->merge = o->merge_batches;
  p->conninfo = strdup(o->url);
  if (!p->conninfo) {
    pgb_close(p);
    return PARLEY_ENOMEM;
  }
  p->rd = connect_db(p, err, errlen);
  if (!p->rd) {
    pgb_close(p);
    return PARLEY_EDB;
  }
  if ((rc = ensure_schema(p->rd, err, errlen)) != 0 || (rc = migrate(p->rd, err, errlen)) != 0) {
    pgb_close(p);
    return rc;
  }
  p->wr = connect_db(p, err, errlen);
  if (!p->wr || !prepare_writer(p->wr, err, errlen)) {
    pgb_close(p);
    return PARLEY_EDB;
  }
  if (pthread_create(&p->th, NULL, writer_main, p) != 0) {
    snprintf(err, errlen, "postgres: cannot start the writer thread");
    pgb_close(p);
    return PARLEY_EINTERNAL;
  }
  p->th_started = true;
  *out = p;
  return 0;
}

/* ------------------------------------------------------------ listening */

static void listen_start(pgb *p);

static void free_handle(uv_handle_t *h) { free(h); }

/* Drops the listening connection; news may be missed from here on. */
static void listen_drop(pgb *p) {
  if (p->poll) {
    uv_poll_stop(p->poll);
    p->poll->data = NULL;
    uv_close((uv_handle_t *)p->poll, free_handle);
    p->poll = NULL;
  }
  if (p->ls) {
    PQfinish(p->ls);
    p->ls = NULL;
  }
  p->missed = true;
}

static void on_retry(uv_timer_t *t) {
  pgb *p = t->data;
  if (p && !p->ls && p->remote) listen_start(p);
}

static void schedule_retry(pgb *p) {
  if (!p->retry) {
    p->retry = malloc(sizeof *p->retry);
    if (!p->retry) return;
    uv_timer_init(p->loop, p->retry);
    uv_unref((uv_handle_t *)p->retry);
    p->retry->data = p;
  }
  /* Connecting blocks the loop (up to connect_timeout when the host does
   * not answer), so the attempts thin out while the database stays away. */
  if (!p->retry_ms) p->retry_ms = PGB_LISTEN_RETRY_MS;
  uv_timer_start(p->retry, on_retry, p->retry_ms, 0);
  p->retry_ms = p->retry_ms * 2 > PGB_LISTEN_RETRY_MAX_MS ? PGB_LISTEN_RETRY_MAX_MS
                                                          : p->retry_ms * 2;
}

static void placement_line(pgb *p, const char *line, size_t n);

/* One announcement of another node: "tag\nconv seq\nconv seq...", with
 * the placement lines "@conv", "!" and "#node conv" among them. */
static void dispatch(pgb *p, const char *payload) {
  size_t tl = strlen(p->tag);
  if (!strncmp(payload, p->tag, tl) && (payload[tl] == '\n' || !payload[tl])) return;
  const char *line = strchr(payload, '\n');
  while (line && p->remote) {
    line++;
    const char *end = strchr(line, '\n');
    size_t n = end ? (size_t)(end - line) : strlen(line);
    if (n && (line[0] == '@' || line[0] == '!' || line[0] == '#')) {
      placement_line(p, line, n);
      line = end;
      continue;
    }
    char conv[160];
    unsigned long long seq = 0;
    const char *sp = memchr(line, ' ', n);
    if (sp && (size_t)(sp - line) < sizeof conv) {
      memcpy(conv, line, (size_t)(sp - line));
      conv[sp - line] = 0;
      seq = strtoull(sp + 1, NULL, 10);
      if (conv[0] && seq) p->remote(p->remote_ud, conv, seq);
    }
    line = end;
  }
}

static void on_listen(uv_poll_t *h, int status, int events) {
  (void)events;
  pgb *p = h->data;
  if (!p) return;
  if (status < 0 || !PQconsumeInput(p->ls) || PQstatus(p->ls) != CONNECTION_OK) {
    listen_drop(p);
    schedule_retry(p);
    return;
  }
  PGnotify *n;
  while (p->ls && (n = PQnotifies(p->ls))) {
    dispatch(p, n->extra);
    PQfreemem(n);
  }
}

static void listen_start(pgb *p) {
  char err[300];
  /* The listening session is the node's sign of life for the others
   * (pg_schema.h, 3): it carries the node's name. */
  char name[96];
  snprintf(name, sizeof name, "SET application_name = 'parley-node:%s'", p->tag);
  p->ls = connect_db(p, err, sizeof err);
  if (!p->ls || !exec_ok(p->ls, name, err, sizeof err) ||
      !exec_ok(p->ls, "LISTEN " PGB_CHANNEL, err, sizeof err) ||
      PQsetnonblocking(p->ls, 1) != 0) {
    if (p->ls) PQfinish(p->ls);
    p->ls = NULL;
    p->missed = true;
    schedule_retry(p);
    return;
  }
  p->poll = malloc(sizeof *p->poll);
  if (!p->poll || uv_poll_init(p->loop, p->poll, PQsocket(p->ls)) != 0) {
    free(p->poll);
    p->poll = NULL;
    PQfinish(p->ls);
    p->ls = NULL;
    schedule_retry(p);
    return;
  }
  p->poll->data = p;
  p->retry_ms = 0;
  uv_unref((uv_handle_t *)p->poll);
  uv_poll_start(p->poll, UV_READABLE, on_listen);
  /* Back: the other nodes and what they hold are read again. */
  p->peers_dirty = true;
  p->swept_us = 0;
  if (p->missed && p->remote) {
    /* Back after an outage: whatever was announced meanwhile is lost. */
    p->missed = false;
    p->remote(p->remote_ud, NULL, 0);
  }
}

static void pgb_on_remote(void *impl, pg_store_remote_fn fn, void *ud) {
  pgb *p = impl;
  p->remote = fn;
  p->remote_ud = ud;
  if (fn && !p->ls && p->loop) {
    p->missed = false;
    listen_start(p);
  }
}

/* ------------------------------------------------------------ placement */

/* Bots across nodes. Each conversation's row names the node holding its
 * placement (the one that last raised its epoch). A node places a
 * conversation on its own bot connections only when it holds it, or when
 * its holder is gone (no listening session) or has no connection of the
 * bot any more; otherwise the holder's bot keeps it, so a bot joining one
 * node does not take conversations a bot on another node is serving. A
 * node with no connection of the bot asks one that has (the "#node conv"
 * line, the node chosen by a hash of the conversation among the live
 * nodes with that bot). Every PGB_TICK_MS a node with bot connections
 * re-reads the live nodes, and when one went away (or every
 * PGB_SWEEP_MS) looks for conversations of its bots whose holder is gone:
 * the one live node the hash names takes each over. Epochs fence every
 * move (parley_conv_place): of two nodes placing one conversation at once
 * one fails and re-reads. */
#define PGB_TICK_MS 1000
#define PGB_SWEEP_MS 5000

static PGresult *read_q(pgb *p, const char *sql, const params *ps, int fmt);
static char *col_dup(PGresult *r, int row, int col);

static void holder_forget(pgb *p, const char *conv) { free(gw_map_del(&p->holders, conv)); }

static void holder_set(pgb *p, const char *conv, const char *node) {
  char *v = strdup(node);
  if (!v) return;
  char *old = gw_map_del(&p->holders, conv);
  free(old);
  if (gw_map_put(&p->holders, conv, v) != 0) free(v);
}

/* Forgets the holders of the rows this node committed since last time. */
static void moved_drain(pgb *p) {
  pthread_mutex_lock(&p->mu);
  char **m = p->moved;
  size_t n = p->n_moved;
  p->moved = NULL;
  p->n_moved = p->cap_moved = 0;
  pthread_mutex_unlock(&p->mu);
  for (size_t i = 0; i < n; i++) {
    holder_forget(p, m[i]);
    free(m[i]);
  }
  free(m);
}

static void peers_free(peer *v, size_t n) {
  for (size_t i = 0; i < n; i++) free(v[i].bot);
  free(v);
}

static const peer *peer_find(const peer *v, size_t n, const char *node, const char *bot) {
  for (size_t i = 0; i < n; i++)
    if (!strcmp(v[i].node, node) && !strcmp(v[i].bot, bot)) return &v[i];
  return NULL;
}

/* Re-reads the live nodes with bot connections (by bot, then node, so
 * that every node sees the same order). *lost: a node or a bot
 * connection count that was there before is gone. */
static int peers_load(pgb *p, bool *lost) {
  PGresult *r = read_q(p,
                       "SELECT b.node, b.bot, b.conns FROM parley_bot_nodes b "
                       "WHERE b.conns > 0 AND EXISTS (SELECT 1 FROM pg_stat_activity a "
                       "  WHERE a.application_name = 'parley-node:' || b.node) "
                       "ORDER BY b.bot, b.node",
                       NULL, 0);
  if (!r) return PARLEY_EDB;
  size_t n = (size_t)PQntuples(r);
  peer *v = n ? calloc(n, sizeof *v) : NULL;
  if (n && !v) {
    PQclear(r);
    return PARLEY_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    snprintf(v[i].node, sizeof v[i].node, "%s", PQgetvalue(r, (int)i, 0));
    v[i].bot = col_dup(r, (int)i, 1);
    v[i].conns = (unsigned)strtoul(PQgetvalue(r, (int)i, 2), NULL, 10);
    if (!v[i].bot) {
      PQclear(r);
      peers_free(v, n);
      return PARLEY_ENOMEM;
    }
  }
  PQclear(r);
  bool gone = false;
  for (size_t i = 0; i < p->n_peers && !gone; i++)
    gone = !peer_find(v, n, p->peers[i].node, p->peers[i].bot);
  if (lost) *lost = gone;
  peers_free(p->peers, p->n_peers);
  p->peers = v;
  p->n_peers = n;
  p->peers_dirty = false;
  p->peers_at_us = now_us();
  return 0;
}

static void peers_fresh(pgb *p) {
  if (p->peers_dirty || now_us() - p->peers_at_us > (uint64_t)PGB_TICK_MS * 1000u)
    peers_load(p, NULL);
}

static uint32_t fnv1a(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
  return h;
}

/* The live node with a connection of bot that conv goes to, by a hash of
 * conv among them (others: this node left out); NULL when none. */
static const char *pick_node(pgb *p, const char *bot, const char *conv, bool others) {
  size_t n = 0;
  for (size_t i = 0; i < p->n_peers; i++)
    if (!strcmp(p->peers[i].bot, bot) && !(others && !strcmp(p->peers[i].node, p->tag))) n++;
  if (!n) return NULL;
  size_t k = fnv1a(conv) % n;
  for (size_t i = 0; i < p->n_peers; i++)
    if (!strcmp(p->peers[i].bot, bot) && !(others && !strcmp(p->peers[i].node, p->tag)) &&
        !k--)
      return p->peers[i].node;
  return NULL;
}

static int pgb_placement(void *impl, const char *conv, const char *bot) {
  pgb *p = impl;
  moved_drain(p);
  const char *h = gw_map_get(&p->holders, conv);
  if (!h) {
    params ps = {0};
    p_text(&ps, conv);
    PGresult *r = read_q(p, "SELECT node FROM parley_conversations WHERE id=$1", &ps, 0);
    /* Unreadable: placing here is still fenced by the epoch. */
    if (!r) return PG_STORE_PLACE_HERE;
    if (PQntuples(r) == 1) holder_set(p, conv, PQgetvalue(r, 0, 0));
    PQclear(r);
    h = gw_map_get(&p->holders, conv);
    if (!h) return PG_STORE_PLACE_HERE;
  }
  if (!h[0] || !strcmp(h, p->tag)) return PG_STORE_PLACE_HERE;
  peers_fresh(p);
  return peer_find(p->peers, p->n_peers, h, bot) ? PG_STORE_PLACE_ELSEWHERE
                                                 : PG_STORE_PLACE_HERE;
}

/* Sends one announcement on the loop's connection (autocommit: delivered
 * at once). */
static int notify_now(pgb *p, const char *payload) {
  params ps = {0};
  p_text(&ps, payload);
  PGresult *r = read_q(p, "SELECT pg_notify('" PGB_CHANNEL "', $1)", &ps, 0);
  if (!r) return PARLEY_EDB;
  PQclear(r);
  return 0;
}

/* Writes this node's count of one bot's connections. */
static int presence_write(pgb *p, const char *bot, unsigned conns) {
  params ps = {0};
  p_text(&ps, p->tag);
  p_text(&ps, bot);
  p_u64(&ps, conns);
  PGresult *r = read_q(p,
                       "INSERT INTO parley_bot_nodes(node,bot,conns) VALUES($1,$2,$3) "
                       "ON CONFLICT(node,bot) DO UPDATE SET conns=excluded.conns",
                       &ps, 0);
  if (!r) return PARLEY_EDB;
  PQclear(r);
  char msg[40];
  snprintf(msg, sizeof msg, "%s\n!", p->tag);
  p->peers_dirty = true;
  return notify_now(p, msg);
}

static int pgb_bot_presence(void *impl, const char *bot, unsigned conns) {
  pgb *p = impl;
  uintptr_t was = (uintptr_t)gw_map_get(&p->local, bot);
  if (conns) gw_map_put(&p->local, bot, (void *)(uintptr_t)conns);
  else gw_map_del(&p->local, bot);
  if (was == conns && conns && !p->presence_lost) return 0;
  int rc = presence_write(p, bot, conns);
  /* The database is away (a restart): the tick writes it again. */
  if (rc) p->presence_lost = true;
  /* A bot that just arrived looks for conversations whose holder is gone
   * at the next tick. */
  if (!was && conns) p->swept_us = 0;
  return rc;
}

static int pgb_place_elsewhere(void *impl, const char *bot, const char *const *convs, size_t n) {
  pgb *p = impl;
  peers_fresh(p);
  char buf[PGB_NOTIFY_MAX + 200];
  size_t head = (size_t)snprintf(buf, sizeof buf, "%s", p->tag), len = head;
  size_t sent = 0;
  int rc = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    const char *to = pick_node(p, bot, convs[i], true);
    if (!to) continue;
    char line[200];
    int k = snprintf(line, sizeof line, "\n#%s %s", to, convs[i]);
    if (k <= 0 || (size_t)k >= sizeof line) continue;
    if (len + (size_t)k > PGB_NOTIFY_MAX) {
      rc = notify_now(p, buf);
      len = head;
      buf[len] = 0;
    }
    memcpy(buf + len, line, (size_t)k + 1);
    len += (size_t)k;
    sent++;
  }
  if (!rc && len > head) rc = notify_now(p, buf);
  if (rc) return rc;
  return sent ? 0 : PARLEY_ENOTFOUND;
}

/* A placement line of another node's announcement. */
static void placement_line(pgb *p, const char *line, size_t n) {
  char a[200], b[200];
  if (line[0] == '!') {
    p->peers_dirty = true;
    return;
  }
  if (line[0] == '@') {
    if (n - 1 >= sizeof a) return;
    memcpy(a, line + 1, n - 1);
    a[n - 1] = 0;
    holder_forget(p, a);
    /* Its epoch may have moved: a node holding it re-reads it. */
    if (p->remote && a[0]) p->remote(p->remote_ud, a, 0);
    return;
  }
  /* "#node conv": node is asked to place conv. */
  const char *sp = memchr(line, ' ', n);
  if (!sp || (size_t)(sp - line - 1) >= sizeof a || n - (size_t)(sp - line) - 1 >= sizeof b)
    return;
  memcpy(a, line + 1, (size_t)(sp - line - 1));
  a[sp - line - 1] = 0;
  size_t bl = n - (size_t)(sp - line) - 1;
  memcpy(b, sp + 1, bl);
  b[bl] = 0;
  if (strcmp(a, p->tag) || !b[0]) return;
  /* The node that asked holds it and gives it up to this one. */
  holder_set(p, b, "");
  if (p->place) p->place(p->place_ud, b);
}

/* Conversations of this node's bots whose holder is gone: the ones the
 * hash gives to this node are placed here. */
static void sweep(pgb *p) {
  char arr[4096];
  size_t len = 0;
  arr[len++] = '{';
  size_t i = 0;
  const char *k;
  void *v;
  while (gw_map_next(&p->local, &i, &k, &v) && len + strlen(k) + 4 < sizeof arr)
    len += (size_t)snprintf(arr + len, sizeof arr - len, "%s\"%s\"", len > 1 ? "," : "", k);
  if (len == 1) return;
  arr[len++] = '}';
  arr[len] = 0;
  params ps = {0};
  p_text(&ps, arr);
  p_text(&ps, p->tag);
  PGresult *r = read_q(p,
                       "SELECT c.id, c.bot FROM parley_conversations c "
                       "WHERE c.bot = ANY($1::text[]) AND c.status <> 2 "
                       "  AND (c.status = 1 OR c.assignee = c.bot) AND c.node <> $2 "
                       "  AND NOT EXISTS (SELECT 1 FROM parley_bot_nodes b "
                       "    WHERE b.node = c.node AND b.bot = c.bot AND b.conns > 0 "
                       "      AND EXISTS (SELECT 1 FROM pg_stat_activity a "
                       "        WHERE a.application_name = 'parley-node:' || b.node)) "
                       "ORDER BY c.id LIMIT 100000",
                       &ps, 0);
  if (!r) return;
  p->swept_us = now_us();
  int n = PQntuples(r);
  char **mine = n ? calloc((size_t)n, sizeof *mine) : NULL;
  size_t m = 0;
  for (int j = 0; mine && j < n; j++) {
    const char *to = pick_node(p, PQgetvalue(r, j, 1), PQgetvalue(r, j, 0), false);
    if (to && !strcmp(to, p->tag)) mine[m++] = col_dup(r, j, 0);
  }
  PQclear(r);
  /* The callback may read on this connection: the result is gone first. */
  for (size_t j = 0; j < m; j++) {
    if (mine[j]) {
      holder_set(p, mine[j], "");
      if (p->place) p->place(p->place_ud, mine[j]);
    }
    free(mine[j]);
  }
  free(mine);
}

static void on_tick(uv_timer_t *t) {
  pgb *p = t->data;
  if (!p || !p->place) return;
  moved_drain(p);
  if (p->presence_lost) {
    /* This node's rows are set to 0 first, so that a count whose
     * lowering was lost does not linger, then its current counts are
     * written again. */
    params ps = {0};
    p_text(&ps, p->tag);
    PGresult *r = read_q(p, "UPDATE parley_bot_nodes SET conns=0 WHERE node=$1", &ps, 0);
    bool ok = r != NULL;
    PQclear(r);
    size_t i = 0;
    const char *k;
    void *v;
    while (ok && gw_map_next(&p->local, &i, &k, &v))
      ok = presence_write(p, k, (unsigned)(uintptr_t)v) == 0;
    if (ok) {
      p->presence_lost = false;
      p->swept_us = 0;
    }
  }
  if (!p->local.len || !p->ls) return;
  bool lost = false;
  if (peers_load(p, &lost) != 0) return;
  if (lost || !p->swept_us || now_us() - p->swept_us > (uint64_t)PGB_SWEEP_MS * 1000u)
    sweep(p);
}

static void pgb_on_place(void *impl, pg_store_place_fn fn, void *ud) {
  pgb *p = impl;
  p->place = fn;
  p->place_ud = ud;
  if (fn && !p->tick && p->loop) {
    p->tick = malloc(sizeof *p->tick);
    if (!p->tick) return;
    uv_timer_init(p->loop, p->tick);
    uv_unref((uv_handle_t *)p->tick);
    p->tick->data = p;
    uv_timer_start(p->tick, on_tick, PGB_TICK_MS, PGB_TICK_MS);
  }
}

static void placement_free(pgb *p) {
  if (p->tick) {
    uv_timer_stop(p->tick);
    p->tick->data = NULL;
    uv_close((uv_handle_t *)p->tick, free_handle);
    p->tick = NULL;
  }
  /* The others stop counting on this node's bots at once. */
  if (p->rd && p->local.len && PQstatus(p->rd) == CONNECTION_OK) {
    params ps = {0};
    p_text(&ps, p->tag);
    PGresult *r = run(p->rd, "DELETE FROM parley_bot_nodes WHERE node=$1", &ps, 0);
    PQclear(r);
  }
  size_t i = 0;
  const char *k;
  void *v;
  while (gw_map_next(&p->holders, &i, &k, &v)) free(v);
  gw_map_clear(&p->holders);
  gw_map_clear(&p->local);
  peers_free(p->peers, p->n_peers);
  p->peers = NULL;
  p->n_peers = 0;
  for (size_t j = 0; j < p->n_moved; j++) free(p->moved[j]);
  free(p->moved);
  p->moved = NULL;
}

static const char *pgb_errmsg(void *impl) {
  pgb *p = impl;
  return p->rerr;
}

/* ----------------------------------------------------------------- reads */

/* Runs a read on the loop's connection; a connection the database dropped
 * (a restart) is reset once and the read tried again. */
static PGresult *read_q(pgb *p, const char *sql, const params *ps, int fmt) {
  for (int attempt = 0; attempt < 2; attempt++) {
    PGresult *r = run(p->rd, sql, ps, fmt);
    ExecStatusType s = PQresultStatus(r);
    if (s == PGRES_TUPLES_OK || s == PGRES_COMMAND_OK) return r;
    copy_msg(p->rerr, sizeof p->rerr, "postgres: read: ", PQerrorMessage(p->rd));
    PQclear(r);
    if (PQstatus(p->rd) == CONNECTION_OK) return NULL;
    PQreset(p->rd);
    if (PQstatus(p->rd) != CONNECTION_OK) return NULL;
    char e[200];
    if (!session_setup(p, p->rd, e, sizeof e)) return NULL;
  }
  return NULL;
}

static uint64_t col_u64(PGresult *r, int row, int col) {
  return PQgetisnull(r, row, col) ? 0 : strtoull(PQgetvalue(r, row, col), NULL, 10);
}

static char *col_dup(PGresult *r, int row, int col) { return strdup(PQgetvalue(r, row, col)); }

static int pgb_conv_get(void *impl, const char *id, pg_store_conv *out) {
  pgb *p = impl;
  memset(out, 0, sizeof *out);
  params ps = {0};
  p_text(&ps, id);
  PGresult *r = read_q(p,
                       "SELECT id,customer,assignee,bot,locale,queue,note,tags,status,epoch,"
                       "state_version,queued_ms,last_seq FROM parley_conversations WHERE id=$1",
                       &ps, 0);
  if (!r) return PARLEY_EDB;
  int rc = 0;
  if (PQntuples(r) == 0) {
    rc = PARLEY_ENOTFOUND;
  } else {
    out->id = col_dup(r, 0, 0);
    out->customer = col_dup(r, 0, 1);
    out->assignee = col_dup(r, 0, 2);
    out->bot = col_dup(r, 0, 3);
    out->locale = col_dup(r, 0, 4);
    out->queue = col_dup(r, 0, 5);
    out->note = col_dup(r, 0, 6);
    out->tags = col_dup(r, 0, 7);
    out->status = atoi(PQgetvalue(r, 0, 8));
    out->epoch = col_u64(r, 0, 9);
    out->state_version = col_u64(r, 0, 10);
    out->queued_ms = strtoll(PQgetvalue(r, 0, 11), NULL, 10);
    out->last_seq = col_u64(r, 0, 12);
    if (!out->id || !out->customer || !out->assignee || !out->bot || !out->locale ||
        !out->queue || !out->note || !out->tags) {
      pg_store_conv_clear(out);
      rc = PARLEY_ENOMEM;
    }
  }
  PQclear(r);
  return rc;
}

static int pgb_conv_each(void *impl, pg_store_index which, const char *key,
                         int (*fn)(void *ud, const pg_store_conv *c), void *ud) {
  pgb *p = impl;
  const char *sql;
  params ps = {0};
  switch (which) {
  case PG_STORE_BY_CUSTOMER:
    sql = "SELECT id FROM parley_conversations WHERE customer=$1 ORDER BY id";
    break;
  case PG_STORE_BY_ASSIGNEE:
    sql = "SELECT id FROM parley_conversations WHERE assignee=$1 ORDER BY id";
    break;
  case PG_STORE_BOT_QUEUED:
    sql = "SELECT id FROM parley_conversations WHERE status=1 AND bot=$1 ORDER BY id";
    break;
  default:
    sql = key && key[0] ? "SELECT id FROM parley_conversations WHERE status=1 AND queue=$1 "
                          "ORDER BY queued_ms, id"
                        : "SELECT id FROM parley_conversations WHERE status=1 "
                          "ORDER BY queued_ms, id";
    break;
  }
  if (which != PG_STORE_QUEUED || (key && key[0])) p_text(&ps, key);
  PGresult *r = read_q(p, sql, &ps, 0);
  if (!r) return PARLEY_EDB;
  /* The ids first: the callback may run other reads on this connection. */
  int n = PQntuples(r), out = 0;
  char **ids = n ? calloc((size_t)n, sizeof *ids) : NULL;
  if (n && !ids) out = PARLEY_ENOMEM;
  for (int i = 0; !out && i < n; i++)
    if (!(ids[i] = col_dup(r, i, 0))) out = PARLEY_ENOMEM;
  PQclear(r);
  for (int i = 0; i < n && ids; i++) {
    pg_store_conv c;
    if (!out && ids[i]) {
      int g = pgb_conv_get(p, ids[i], &c);
      if (g == 0) {
        out = fn(ud, &c);
        pg_store_conv_clear(&c);
      } else if (g != PARLEY_ENOTFOUND) {
        out = g;
      }
    }
    free(ids[i]);
  }
  free(ids);
  return out;
}

static uint64_t be64(const char *b) {
  uint64_t x = 0;
  for (int i = 0; i < 8; i++) x = (x << 8) | (uint8_t)b[i];
  return x;
}

static int pgb_events(void *impl, const char *conv, uint64_t from, uint64_t to, uint32_t limit,
                      int (*fn)(void *ud, uint64_t seq, const void *blob, size_t len),
                      void *ud) {
  pgb *p = impl;
  params ps = {0};
  p_text(&ps, conv);
  p_u64(&ps, from);
  p_u64(&ps, to ? to : (uint64_t)INT64_MAX);
  p_u64(&ps, limit);
  /* Binary results: the blobs come as they are, without hex decoding. */
  PGresult *r = read_q(p,
                       "SELECT seq,blob FROM parley_events WHERE conv=$1 AND seq>=$2 AND seq<=$3 "
                       "ORDER BY seq LIMIT $4",
                       &ps, 1);
  if (!r) return PARLEY_EDB;
  int out = 0;
  for (int i = 0; i < PQntuples(r) && !out; i++) {
    if (PQgetlength(r, i, 0) != 8) {
      out = PARLEY_EDB;
      break;
    }
    out = fn(ud, be64(PQgetvalue(r, i, 0)), PQgetvalue(r, i, 1), (size_t)PQgetlength(r, i, 1));
  }
  PQclear(r);
  return out > 0 ? 0 : out;
}

static int pgb_sent_get(void *impl, const char *sender, const uint8_t id[16], char conv[129],
                        uint64_t *seq) {
  pgb *p = impl;
  params ps = {0};
  p_text(&ps, sender);
  p_bin(&ps, id, 16);
  PGresult *r = read_q(p, "SELECT conv,seq FROM parley_events WHERE sender=$1 AND msg_id=$2",
                       &ps, 0);
  if (!r) return PARLEY_EDB;
  int rc = PARLEY_ENOTFOUND;
  if (PQntuples(r) > 0) {
    snprintf(conv, 129, "%s", PQgetvalue(r, 0, 0));
    *seq = col_u64(r, 0, 1);
    rc = 0;
  }
  PQclear(r);
  return rc;
}

/* Every idempotency key, streamed row by row (single-row mode), so that
 * a log of millions of messages is never held in memory at once. */
static int pgb_sent_each(void *impl,
                         int (*fn)(void *ud, const char *sender, const uint8_t msg_id[16]),
                         void *ud) {
  pgb *p = impl;
  if (!PQsendQueryParams(p->rd,
                         "SELECT sender, msg_id FROM parley_events WHERE msg_id IS NOT NULL",
                         0, NULL, NULL, NULL, NULL, 1) ||
      !PQsetSingleRowMode(p->rd)) {
    copy_msg(p->rerr, sizeof p->rerr, "postgres: read: ", PQerrorMessage(p->rd));
    return PARLEY_EDB;
  }
  int out = 0;
  PGresult *r;
  /* Every result is consumed, also after fn stopped the walk, so that the
   * connection is ready for the next read. */
  while ((r = PQgetResult(p->rd))) {
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_SINGLE_TUPLE && !out) {
      int sl = PQgetlength(r, 0, 0);
      char sender[129];
      if (PQgetlength(r, 0, 1) == 16 && sl >= 0 && sl < (int)sizeof sender) {
        memcpy(sender, PQgetvalue(r, 0, 0), (size_t)sl);
        sender[sl] = 0;
        out = fn(ud, sender, (const uint8_t *)PQgetvalue(r, 0, 1));
      }
    } else if (st != PGRES_SINGLE_TUPLE && st != PGRES_TUPLES_OK && !out) {
      copy_msg(p->rerr, sizeof p->rerr, "postgres: read: ", PQerrorMessage(p->rd));
      out = PARLEY_EDB;
    }
    PQclear(r);
  }
  return out;
}

static int pgb_watermark_get(void *impl, const char *principal, const char *device,
                             const char *conv, uint64_t *acked) {
  pgb *p = impl;
  params ps = {0};
  p_text(&ps, principal);
  p_text(&ps, device);
  p_text(&ps, conv);
  *acked = 0;
  PGresult *r = read_q(p,
                       "SELECT acked FROM parley_watermarks WHERE principal=$1 AND device=$2 "
                       "AND conv=$3",
                       &ps, 0);
  if (!r) return PARLEY_EDB;
  if (PQntuples(r) > 0) *acked = col_u64(r, 0, 0);
  PQclear(r);
  return 0;
}

static int pgb_state_each(void *impl, const char *conv,
                          int (*fn)(void *ud, const char *key, const void *val, size_t len),
                          void *ud) {
  pgb *p = impl;
  params ps = {0};
  p_text(&ps, conv);
  PGresult *r = read_q(p, "SELECT key,val FROM parley_state WHERE conv=$1 ORDER BY key", &ps, 1);
  if (!r) return PARLEY_EDB;
  int out = 0;
  for (int i = 0; i < PQntuples(r) && !out; i++) {
    /* A binary text value is its bytes, without a terminator. */
    int kl = PQgetlength(r, i, 0);
    char key[129];
    if (kl < 0 || kl >= (int)sizeof key) {
      out = PARLEY_EDB;
      break;
    }
    memcpy(key, PQgetvalue(r, i, 0), (size_t)kl);
    key[kl] = 0;
    out = fn(ud, key, PQgetvalue(r, i, 1), (size_t)PQgetlength(r, i, 1));
  }
  PQclear(r);
  return out;
}

const pg_store_backend pg_store_postgres = {
    .name = "postgres",
    .open = pgb_open,
    .submit = pgb_submit,
    .drain = pgb_drain,
    .close = pgb_close,
    .errmsg = pgb_errmsg,
    .conv_get = pgb_conv_get,
    .conv_each = pgb_conv_each,
    .events = pgb_events,
    .sent_get = pgb_sent_get,
    .sent_each = pgb_sent_each,
    .on_remote = pgb_on_remote,
    .bot_presence = pgb_bot_presence,
    .placement = pgb_placement,
    .place_elsewhere = pgb_place_elsewhere,
    .on_place = pgb_on_place,
    .watermark_get = pgb_watermark_get,
    .state_each = pgb_state_each,
};
