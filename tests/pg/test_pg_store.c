/* The PostgreSQL backend of the gateway's store (gateway/src/store/pg.c)
 * against a real server (pgserver.h), through the storage interface
 * (store.h) exactly as the gateway drives it:
 *
 *   - schema: created at first open, left alone at the next, a newer
 *     schema refused, a password in the URL refused;
 *   - send / dup / commit / resume: events with their ids, the lookup of a
 *     resent id (on the same node or another one), a commit's conversation
 *     row + state + watermark applied atomically, ranges read back intact;
 *   - a failed batch leaves no trace and poisons the batches after it
 *     until pg_store_reset;
 *   - two nodes writing one conversation at once: seqs gap-free and
 *     strictly increasing, every message stored once, conflicts detected
 *     and retried;
 *   - the database restarted with pg_ctl stop -m immediate while a batch
 *     waits: the batch commits once the server is back, nothing ACKed is
 *     lost.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>
#include <uv.h>

#include <parley/error.h>

#include "pgserver.h"
#include "store/pg_schema.h"
#include "store/store.h"

static pgs server;
static int db_counter;

/* A fresh database of the shared test server for each test. */
static void fresh_db(char *url, size_t size) {
  char name[32];
  snprintf(name, sizeof name, "store_%d", ++db_counter);
  assert_int_equal(pgs_create_db(&server, name), 0);
  snprintf(url, size, "host=127.0.0.1 port=%d dbname=%s user=%s connect_timeout=5", server.port,
           name, server.role);
}

typedef struct node {
  uv_loop_t loop;
  pg_store *st;
  int last_status;
  char last_why[200];
  int done_calls;
} node;

static int node_open(node *n, const char *url, char *err, size_t errlen) {
  memset(n, 0, sizeof *n);
  uv_loop_init(&n->loop);
  pg_store_options o = PG_STORE_OPTIONS_INIT;
  o.backend = "postgres";
  o.url = url;
  o.durability = PG_DUR_NORMAL;
  o.loop = &n->loop;
  int rc = pg_store_open(&o, &n->st, err, errlen);
  if (rc) uv_loop_close(&n->loop);
  return rc;
}

static void node_close(node *n) {
  pg_store_close(n->st, NULL, NULL);
  uv_run(&n->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&n->loop), 0);
}

static void on_done(void *ud, int status, const char *why) {
  node *n = ud;
  n->last_status = status;
  snprintf(n->last_why, sizeof n->last_why, "%s", why ? why : "");
  n->done_calls++;
}

/* Submits b and waits for its completion; returns its status. */
static int submit_wait(node *n, pg_store_batch *b) {
  int calls = n->done_calls;
  assert_int_equal(pg_store_submit(n->st, b, on_done, n), 0);
  pg_store_drain(n->st);
  assert_int_equal(n->done_calls, calls + 1);
  return n->last_status;
}

static void msgid(uint8_t id[16], uint32_t node_no, uint32_t k) {
  memset(id, 0, 16);
  memcpy(id, &node_no, 4);
  memcpy(id + 4, &k, 4);
  id[15] = 0xAB;
}

typedef struct keys {
  int n, carol, id1;
} keys;

static int count_keys(void *ud, const char *sender, const uint8_t msg_id[16]) {
  keys *k = ud;
  uint8_t want[16];
  msgid(want, 1, 1);
  k->n++;
  k->carol += !strcmp(sender, "carol");
  k->id1 += !memcmp(msg_id, want, 16);
  return 0;
}

typedef struct node3 {
  int status[3];
  char why[3][200];
  int n;
} node3;

static void on_done3(void *ud, int status, const char *why) {
  node3 *t = ud;
  if (t->n < 3) {
    t->status[t->n] = status;
    snprintf(t->why[t->n], sizeof t->why[t->n], "%s", why ? why : "");
  }
  t->n++;
}

static void add_event(pg_store_batch *b, const char *conv, uint64_t seq, const char *sender,
                      const uint8_t *id, const uint8_t *blob, size_t len) {
  pg_store_event e = {.conv = conv, .seq = seq, .blob = blob, .len = len, .sender = sender};
  if (id) {
    memcpy(e.msg_id, id, 16);
    e.has_msg_id = true;
  }
  assert_int_equal(pg_store_batch_event(b, &e), 0);
}

static pg_store_conv conv_row(const char *id, uint64_t epoch, uint64_t sv) {
  pg_store_conv c = {.id = (char *)id, .customer = "carol", .assignee = "faqbot",
                     .bot = "faqbot", .locale = "en", .queue = "", .note = "", .tags = "",
                     .status = PG_CONV_OPEN, .epoch = epoch, .state_version = sv,
                     .queued_ms = 0};
  return c;
}

static PGconn *admin(const char *url) {
  PGconn *c = PQconnectdb(url);
  assert_int_equal(PQstatus(c), CONNECTION_OK);
  return c;
}

static long long scalar(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) fprintf(stderr, "%s: %s", sql, PQerrorMessage(c));
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  long long v = atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return v;
}

/* ------------------------------------------------------------ schema */

static void test_schema_versions(void **unused) {
  (void)unused;
  char url[256], err[512] = "";
  fresh_db(url, sizeof url);
  node n;
  assert_int_equal(node_open(&n, url, err, sizeof err), 0);
  node_close(&n);
  /* A second open finds the schema and applies nothing. */
  assert_int_equal(node_open(&n, url, err, sizeof err), 0);
  node_close(&n);
  PGconn *a = admin(url);
  assert_int_equal(scalar(a, "SELECT count(*) FROM parley_schema"), PGB_SCHEMA_VERSION);
  assert_int_equal(scalar(a, "SELECT max(version) FROM parley_schema"), PGB_SCHEMA_VERSION);
  /* A schema a newer gateway migrated is refused with a clear message. */
  PQclear(PQexec(a, "INSERT INTO parley_schema(version) VALUES (99)"));
  err[0] = 0;
  assert_int_equal(node_open(&n, url, err, sizeof err), PARLEY_EDB);
  char want[96];
  snprintf(want, sizeof want, "version 99, newer than this gateway knows (%d)", PGB_SCHEMA_VERSION);
  assert_non_null(strstr(err, want));
  PQfinish(a);

  /* A database at version 1 is migrated to the current version. */
  fresh_db(url, sizeof url);
  a = admin(url);
  PQclear(PQexec(a, "CREATE TABLE parley_schema (version integer PRIMARY KEY, "
                    "applied_at timestamptz NOT NULL DEFAULT now())"));
  PGresult *r = PQexec(a, pgb_migrations[1]);
  assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
  PQclear(r);
  PQclear(PQexec(a, "INSERT INTO parley_schema(version) VALUES (1)"));
  assert_int_equal(node_open(&n, url, err, sizeof err), 0);
  node_close(&n);
  assert_int_equal(scalar(a, "SELECT max(version) FROM parley_schema"), PGB_SCHEMA_VERSION);
  assert_int_equal(scalar(a, "SELECT count(*) FROM pg_proc WHERE proname = 'parley_conv_put'"), 1);
  assert_int_equal(scalar(a, "SELECT count(*) FROM pg_proc WHERE proname = 'parley_conv_place'"), 1);
  assert_int_equal(scalar(a, "SELECT count(*) FROM information_schema.columns "
                             "WHERE table_name = 'parley_conversations' AND column_name = 'node'"),
                   1);
  PQfinish(a);

  /* Unparsable connection strings and missing URLs are configuration errors. */
  assert_int_equal(node_open(&n, "host=127.0.0.1 port", err, sizeof err), PARLEY_ECONFIG);
  assert_non_null(strstr(err, "storage.url"));
  assert_int_equal(node_open(&n, "", err, sizeof err), PARLEY_ECONFIG);
}

/* ------------------------------------------------- send, dup, commit, resume */

typedef struct collected {
  uint64_t seqs[16];
  size_t lens[16];
  uint8_t first_byte[16];
  int n;
} collected;

static int collect(void *ud, uint64_t seq, const void *blob, size_t len) {
  collected *c = ud;
  c->seqs[c->n] = seq;
  c->lens[c->n] = len;
  c->first_byte[c->n] = len ? ((const uint8_t *)blob)[0] : 0;
  c->n++;
  return 0;
}

typedef struct kv {
  char keys[4][32];
  char vals[4][32];
  int n;
} kv;

static int collect_state(void *ud, const char *key, const void *val, size_t len) {
  kv *s = ud;
  snprintf(s->keys[s->n], 32, "%s", key);
  snprintf(s->vals[s->n], 32, "%.*s", (int)len, (const char *)val);
  s->n++;
  return 0;
}

typedef struct ids {
  char v[4][16];
  int n;
} ids;

static int collect_ids(void *ud, const pg_store_conv *c) {
  ids *x = ud;
  if (x->n < 4) snprintf(x->v[x->n], 16, "%s", c->id);
  x->n++;
  return 0;
}

static void test_send_dup_commit_resume(void **unused) {
  (void)unused;
  char url[256], err[512];
  fresh_db(url, sizeof url);
  node n;
  assert_int_equal(node_open(&n, url, err, sizeof err), 0);

  /* Send: a new conversation with three messages and a watermark. */
  uint8_t blob[3][40];
  for (int i = 0; i < 3; i++) {
    memset(blob[i], 0, sizeof blob[i]); /* NUL bytes inside the blob survive */
    blob[i][0] = (uint8_t)(0x10 + i);
  }
  uint8_t id[3][16];
  pg_store_batch *b = pg_store_batch_new();
  pg_store_conv c = conv_row("c1", 1, 0);
  assert_int_equal(pg_store_batch_conv(b, &c, PG_STORE_CONV_NEW), 0);
  for (int i = 0; i < 3; i++) {
    msgid(id[i], 1, (uint32_t)i);
    add_event(b, "c1", (uint64_t)i + 1, "carol", id[i], blob[i], sizeof blob[i]);
  }
  assert_int_equal(pg_store_batch_watermark(b, "carol", "phone", "c1", 2), 0);
  assert_int_equal(submit_wait(&n, b), 0);

  pg_store_conv got;
  assert_int_equal(pg_store_conv_get(n.st, "c1", &got), 0);
  assert_int_equal(got.last_seq, 3);
  assert_string_equal(got.assignee, "faqbot");
  assert_int_equal(got.epoch, 1);
  pg_store_conv_clear(&got);
  assert_int_equal(pg_store_conv_get(n.st, "nope", &got), PARLEY_ENOTFOUND);

  /* Dup: the id of seq 2 is found with its seq, and a second write of it
   * fails without a trace. */
  char conv[129];
  uint64_t seq = 0;
  assert_int_equal(pg_store_sent_get(n.st, "carol", id[1], conv, &seq), 0);
  assert_string_equal(conv, "c1");
  assert_int_equal(seq, 2);
  /* Every stored key, for the gateway's filter of known ids. */
  keys k = {0};
  assert_int_equal(pg_store_sent_each(n.st, count_keys, &k), 0);
  assert_int_equal(k.n, 3);
  assert_int_equal(k.carol, 3);
  assert_int_equal(k.id1, 1);
  uint8_t other[16];
  msgid(other, 9, 9);
  assert_int_equal(pg_store_sent_get(n.st, "carol", other, conv, &seq), PARLEY_ENOTFOUND);
  b = pg_store_batch_new();
  add_event(b, "c1", 4, "carol", id[1], blob[0], 4);
  assert_int_equal(submit_wait(&n, b), PARLEY_EDB);
  assert_non_null(strstr(n.last_why, "conflict"));
  /* Poisoned until reset: a valid batch fails unapplied. */
  b = pg_store_batch_new();
  add_event(b, "c1", 4, "carol", other, blob[0], 4);
  assert_int_equal(submit_wait(&n, b), PARLEY_EDB);
  assert_string_equal(n.last_why, "an earlier batch failed");
  pg_store_reset(n.st);
  assert_int_equal(pg_store_conv_get(n.st, "c1", &got), 0);
  assert_int_equal(got.last_seq, 3);
  pg_store_conv_clear(&got);

  /* Three batches in a row, the middle one conflicting: whether the
   * writer takes them together or one by one, the first commits, the
   * second fails alone and the third fails as built on it. */
  node3 three = {0};
  b = pg_store_batch_new();
  add_event(b, "c1", 4, "carol", other, blob[0], 4);
  assert_int_equal(pg_store_submit(n.st, b, on_done3, &three), 0);
  b = pg_store_batch_new();
  add_event(b, "c1", 5, "carol", id[0], blob[0], 4); /* id[0] is stored at seq 1 */
  assert_int_equal(pg_store_submit(n.st, b, on_done3, &three), 0);
  b = pg_store_batch_new();
  uint8_t id6[16];
  msgid(id6, 1, 6);
  add_event(b, "c1", 6, "carol", id6, blob[0], 4);
  assert_int_equal(pg_store_submit(n.st, b, on_done3, &three), 0);
  pg_store_drain(n.st);
  assert_int_equal(three.n, 3);
  assert_int_equal(three.status[0], 0);
  assert_int_equal(three.status[1], PARLEY_EDB);
  assert_non_null(strstr(three.why[1], "conflict"));
  assert_int_equal(three.status[2], PARLEY_EDB);
  assert_string_equal(three.why[2], "an earlier batch failed");
  pg_store_reset(n.st);
  assert_int_equal(pg_store_conv_get(n.st, "c1", &got), 0);
  assert_int_equal(got.last_seq, 4);
  pg_store_conv_clear(&got);

  /* Commit: the conversation row, state and the bot's watermark at once,
   * with the reply. */
  b = pg_store_batch_new();
  uint8_t reply[16];
  msgid(reply, 2, 1);
  add_event(b, "c1", 5, "faqbot", reply, blob[0], 4);
  c = conv_row("c1", 1, 1);
  c.tags = "billing\nvip";
  assert_int_equal(pg_store_batch_conv(b, &c, 0), 0);
  assert_int_equal(pg_store_batch_state(b, "c1", "step", "\"ask\"", 5, false), 0);
  assert_int_equal(pg_store_batch_state(b, "c1", "lang", "\"en\"", 4, false), 0);
  assert_int_equal(pg_store_batch_watermark(b, "faqbot", "", "c1", 3), 0);
  assert_int_equal(submit_wait(&n, b), 0);
  assert_int_equal(pg_store_conv_get(n.st, "c1", &got), 0);
  assert_int_equal(got.state_version, 1);
  assert_string_equal(got.tags, "billing\nvip");
  assert_int_equal(got.last_seq, 5);
  pg_store_conv_clear(&got);
  kv s = {0};
  assert_int_equal(pg_store_state_each(n.st, "c1", collect_state, &s), 0);
  assert_int_equal(s.n, 2);
  assert_string_equal(s.keys[0], "lang");
  assert_string_equal(s.vals[1], "\"ask\"");
  uint64_t wm = 0;
  assert_int_equal(pg_store_watermark_get(n.st, "faqbot", "", "c1", &wm), 0);
  assert_int_equal(wm, 3);

  /* A commit that conflicts (a stale epoch) applies none of its parts. */
  b = pg_store_batch_new();
  c = conv_row("c1", 0, 2);
  assert_int_equal(pg_store_batch_conv(b, &c, 0), 0);
  assert_int_equal(pg_store_batch_state(b, "c1", "step", "\"done\"", 6, false), 0);
  assert_int_equal(pg_store_batch_watermark(b, "faqbot", "", "c1", 4), 0);
  assert_int_equal(submit_wait(&n, b), PARLEY_EDB);
  pg_store_reset(n.st);
  memset(&s, 0, sizeof s);
  assert_int_equal(pg_store_state_each(n.st, "c1", collect_state, &s), 0);
  assert_string_equal(s.vals[1], "\"ask\"");
  assert_int_equal(pg_store_watermark_get(n.st, "faqbot", "", "c1", &wm), 0);
  assert_int_equal(wm, 3);

  /* Watermarks only rise; a state key can be deleted. */
  b = pg_store_batch_new();
  assert_int_equal(pg_store_batch_watermark(b, "carol", "phone", "c1", 1), 0);
  assert_int_equal(pg_store_batch_state(b, "c1", "lang", NULL, 0, true), 0);
  assert_int_equal(submit_wait(&n, b), 0);
  assert_int_equal(pg_store_watermark_get(n.st, "carol", "phone", "c1", &wm), 0);
  assert_int_equal(wm, 2);
  memset(&s, 0, sizeof s);
  assert_int_equal(pg_store_state_each(n.st, "c1", collect_state, &s), 0);
  assert_int_equal(s.n, 1);

  /* Resume: the range above a watermark, in order, blobs intact. */
  collected col = {0};
  assert_int_equal(pg_store_events(n.st, "c1", 3, 0, 10, collect, &col), 0);
  assert_int_equal(col.n, 3);
  assert_int_equal(col.seqs[0], 3);
  assert_int_equal(col.seqs[2], 5);
  assert_int_equal(col.lens[0], 40);
  assert_int_equal(col.first_byte[0], 0x12);
  memset(&col, 0, sizeof col);
  assert_int_equal(pg_store_events(n.st, "c1", 1, 2, 10, collect, &col), 0);
  assert_int_equal(col.n, 2);
  memset(&col, 0, sizeof col);
  assert_int_equal(pg_store_events(n.st, "c1", 1, 0, 1, collect, &col), 0);
  assert_int_equal(col.n, 1);

  /* The lists behind Hello and the queues. */
  b = pg_store_batch_new();
  c = conv_row("c2", 1, 0);
  c.status = PG_CONV_QUEUED;
  c.queue = "billing";
  c.assignee = "queue:billing";
  c.queued_ms = 5;
  assert_int_equal(pg_store_batch_conv(b, &c, PG_STORE_CONV_NEW), 0);
  assert_int_equal(submit_wait(&n, b), 0);
  ids got_ids = {0};
  assert_int_equal(pg_store_conv_each(n.st, PG_STORE_BY_CUSTOMER, "carol", collect_ids, &got_ids), 0);
  assert_int_equal(got_ids.n, 2);
  assert_string_equal(got_ids.v[0], "c1");
  memset(&got_ids, 0, sizeof got_ids);
  assert_int_equal(pg_store_conv_each(n.st, PG_STORE_QUEUED, "billing", collect_ids, &got_ids), 0);
  assert_int_equal(got_ids.n, 1);
  assert_string_equal(got_ids.v[0], "c2");
  memset(&got_ids, 0, sizeof got_ids);
  assert_int_equal(pg_store_conv_each(n.st, PG_STORE_QUEUED, NULL, collect_ids, &got_ids), 0);
  assert_int_equal(got_ids.n, 1);
  memset(&got_ids, 0, sizeof got_ids);
  assert_int_equal(pg_store_conv_each(n.st, PG_STORE_BOT_QUEUED, "faqbot", collect_ids, &got_ids), 0);
  assert_int_equal(got_ids.n, 1);
  memset(&got_ids, 0, sizeof got_ids);
  assert_int_equal(pg_store_conv_each(n.st, PG_STORE_BY_ASSIGNEE, "faqbot", collect_ids, &got_ids), 0);
  assert_int_equal(got_ids.n, 1);
  assert_string_equal(got_ids.v[0], "c1");
  node_close(&n);
}

/* -------------------------------------------- two nodes, one conversation */

#define TWO_NODE_MSGS 150

typedef struct writer_arg {
  const char *url;
  uint32_t node_no;
  int conflicts;
  int stored;
  int failures;
  char err[512];
} writer_arg;

/* One gateway node's writes, reduced to what matters here: read the last
 * seq (the hot state after a reload), write the next message there, and
 * on a conflict reset and try again, first asking whether the message is
 * already stored (idempotency). */
static void *writer_thread(void *p) {
  writer_arg *w = p;
  node n;
  char err[512];
  if (node_open(&n, w->url, err, sizeof err) != 0) {
    snprintf(w->err, sizeof w->err, "%s", err);
    return NULL;
  }
  for (uint32_t k = 0; k < TWO_NODE_MSGS && w->failures < 1000; k++) {
    uint8_t id[16];
    msgid(id, w->node_no, k);
    for (;;) {
      char conv[129];
      uint64_t seq;
      if (pg_store_sent_get(n.st, "carol", id, conv, &seq) == 0) break; /* stored */
      pg_store_conv c;
      if (pg_store_conv_get(n.st, "shared", &c) != 0) {
        w->failures++;
        continue;
      }
      uint64_t next = c.last_seq + 1;
      pg_store_conv_clear(&c);
      uint8_t blob[8];
      memcpy(blob, &k, 4);
      memcpy(blob + 4, &w->node_no, 4);
      pg_store_batch *b = pg_store_batch_new();
      add_event(b, "shared", next, "carol", id, blob, sizeof blob);
      int calls = n.done_calls;
      pg_store_submit(n.st, b, on_done, &n);
      pg_store_drain(n.st);
      if (n.done_calls != calls + 1) w->failures++;
      if (n.last_status == 0) {
        w->stored++;
        break;
      }
      if (strstr(n.last_why, "conflict")) w->conflicts++;
      else w->failures++;
      pg_store_reset(n.st);
    }
  }
  node_close(&n);
  return NULL;
}

static void test_two_nodes_one_conversation(void **unused) {
  (void)unused;
  char url[256], err[512];
  fresh_db(url, sizeof url);
  node n;
  assert_int_equal(node_open(&n, url, err, sizeof err), 0);
  pg_store_batch *b = pg_store_batch_new();
  pg_store_conv c = conv_row("shared", 1, 0);
  assert_int_equal(pg_store_batch_conv(b, &c, PG_STORE_CONV_NEW), 0);
  assert_int_equal(submit_wait(&n, b), 0);
  node_close(&n);

  writer_arg w[2] = {{.url = url, .node_no = 1}, {.url = url, .node_no = 2}};
  pthread_t th[2];
  for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&th[i], NULL, writer_thread, &w[i]), 0);
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < 2; i++) {
    if (w[i].err[0]) fprintf(stderr, "node %d: %s\n", i + 1, w[i].err);
    assert_string_equal(w[i].err, "");
    assert_int_equal(w[i].failures, 0);
    assert_int_equal(w[i].stored, TWO_NODE_MSGS);
  }
  printf("two nodes, one conversation: %d + %d messages, %d + %d conflicts retried\n",
         w[0].stored, w[1].stored, w[0].conflicts, w[1].conflicts);
  PGconn *a = admin(url);
  /* Gap-free and strictly increasing: 1..2N, each message once, and the
   * sequencer agrees. */
  assert_int_equal(scalar(a, "SELECT count(*) FROM parley_events WHERE conv='shared'"),
                   2 * TWO_NODE_MSGS);
  assert_int_equal(scalar(a, "SELECT max(seq) FROM parley_events WHERE conv='shared'"),
                   2 * TWO_NODE_MSGS);
  assert_int_equal(scalar(a, "SELECT min(seq) FROM parley_events WHERE conv='shared'"), 1);
  assert_int_equal(scalar(a, "SELECT count(DISTINCT msg_id) FROM parley_events"),
                   2 * TWO_NODE_MSGS);
  assert_int_equal(scalar(a, "SELECT last_seq FROM parley_conversations WHERE id='shared'"),
                   2 * TWO_NODE_MSGS);
  /* Each node's own messages are in the order it sent them. */
  assert_int_equal(scalar(a, "SELECT count(*) FROM ("
                             " SELECT seq, get_byte(blob,4) AS node,"
                             "  get_byte(blob,0) + 256*get_byte(blob,1) AS k,"
                             "  lag(get_byte(blob,0) + 256*get_byte(blob,1)) OVER"
                             "   (PARTITION BY get_byte(blob,4) ORDER BY seq) AS prev"
                             " FROM parley_events WHERE conv='shared') x"
                             " WHERE prev IS NOT NULL AND k <> prev + 1"),
                   0);
  PQfinish(a);
}

/* ------------------------------------------------ database restart */

typedef struct restart_arg {
  int delay_ms;
} restart_arg;

static void *restart_later(void *p) {
  restart_arg *r = p;
  struct timespec ts = {r->delay_ms / 1000, (long)(r->delay_ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
  pgs_resume(&server);
  return NULL;
}

static void test_database_restart(void **unused) {
  (void)unused;
  char url[256], err[512];
  fresh_db(url, sizeof url);
  node n;
  assert_int_equal(node_open(&n, url, err, sizeof err), 0);
  pg_store_batch *b = pg_store_batch_new();
  pg_store_conv c = conv_row("r1", 1, 0);
  assert_int_equal(pg_store_batch_conv(b, &c, PG_STORE_CONV_NEW), 0);
  uint8_t id[16], blob[4] = {1, 2, 3, 4};
  msgid(id, 7, 1);
  add_event(b, "r1", 1, "carol", id, blob, 4);
  assert_int_equal(submit_wait(&n, b), 0);

  /* A crash of the database (no shutdown checkpoint); the next batch is
   * submitted while it is down and commits once it is back. */
  assert_int_equal(pgs_stop_mode(&server, "immediate"), 0);
  restart_arg ra = {.delay_ms = 1500};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, restart_later, &ra), 0);
  b = pg_store_batch_new();
  msgid(id, 7, 2);
  add_event(b, "r1", 2, "carol", id, blob, 4);
  assert_int_equal(submit_wait(&n, b), 0);
  pthread_join(th, NULL);

  /* Reads reconnect too, and both ACKed events are there. */
  pg_store_conv got;
  assert_int_equal(pg_store_conv_get(n.st, "r1", &got), 0);
  assert_int_equal(got.last_seq, 2);
  pg_store_conv_clear(&got);
  node_close(&n);
}

static int group_setup(void **unused) {
  (void)unused;
  return pgs_start(&server, "parley") == 0 ? 0 : -1;
}

static int group_teardown(void **unused) {
  (void)unused;
  pgs_stop(&server);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_schema_versions),
      cmocka_unit_test(test_send_dup_commit_resume),
      cmocka_unit_test(test_two_nodes_one_conversation),
      cmocka_unit_test(test_database_restart),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
