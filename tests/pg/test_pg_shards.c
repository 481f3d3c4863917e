/* Conversations spread over two PostgreSQL databases (storage.shards; two
 * databases of one server), served by two `parley gateway` processes with
 * the echo bot and libparley customers spread over them
 * (tests/failover/failover.h), a node killed with SIGKILL under traffic:
 *
 *   - every message ACKed once and echoed, nothing lost, doubled, gapped
 *     or reordered, as with one database;
 *   - the conversations are spread: each database holds some, no
 *     conversation is in both, and each one's log is gap-free in its
 *     database;
 *   - a conversation's database is the one the hash names: reopening the
 *     store with the shards in the same order finds it, and a gateway
 *     started with one shard less does not see conversations of the other.
 *
 * PG_SHARD_KILLS and PG_SHARD_MSGS size the run. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "failover.h"
#include "pgserver.h"

#ifndef PG_SHARD_KILLS
#define PG_SHARD_KILLS 2
#endif
#ifndef PG_SHARD_MSGS
#define PG_SHARD_MSGS 30
#endif

typedef struct two_dbs {
  char a[256], b[256];
} two_dbs;

static char yaml_buf[1400];

static const char *shard_yaml(int node, void *ud) {
  (void)node;
  const two_dbs *d = ud;
  snprintf(yaml_buf, sizeof yaml_buf,
           "listen: 127.0.0.1\n"
           "durability: normal\n"
           "bot: echo\n"
           "storage:\n"
           "  kind: postgres\n"
           "  shards:\n"
           "    - \"%s\"\n"
           "    - \"%s\"\n"
           "  pool: 3\n"
           "limits:\n"
           "  ack_timeout: 1s\n"
           "  heartbeat: 1s\n"
           "  max_connections_per_principal: 64\n",
           d->a, d->b);
  return yaml_buf;
}

/* The conversation ids of one database, as one string "id,id,...". */
static int conv_ids(const char *url, char *out, size_t size, int *n) {
  PGconn *c = PQconnectdb(url);
  out[0] = 0;
  *n = -1;
  if (PQstatus(c) == CONNECTION_OK) {
    PGresult *r = PQexec(c, "SELECT id FROM parley_conversations ORDER BY id");
    if (PQresultStatus(r) == PGRES_TUPLES_OK) {
      *n = PQntuples(r);
      size_t len = 0;
      for (int i = 0; i < *n; i++)
        len += (size_t)snprintf(out + len, size - len, ",%s,", PQgetvalue(r, i, 0));
    }
    PQclear(r);
  }
  PQfinish(c);
  return *n;
}

static long long scalar(const char *url, const char *sql) {
  PGconn *c = PQconnectdb(url);
  long long v = -1;
  if (PQstatus(c) == CONNECTION_OK) {
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
      v = PQgetisnull(r, 0, 0) ? 0 : atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
  }
  PQfinish(c);
  return v;
}

static void test_two_shards(void **unused) {
  (void)unused;
  pgs s;
  assert_int_equal(pgs_start(&s, "parley"), 0);
  assert_int_equal(pgs_create_db(&s, "parley2"), 0);
  two_dbs d;
  pgs_conninfo(&s, d.a, sizeof d.a);
  /* The same server, the other database. */
  char *db = strstr(d.a, "dbname=");
  assert_non_null(db);
  snprintf(d.b, sizeof d.b, "%.*sdbname=parley2%s", (int)(db - d.a), d.a,
           strchr(db, ' ') ? strchr(db, ' ') : "");
  fo_scenario sc = {
      .name = "postgres_two_shards",
      .nodes = 2,
      .shared_store = true,
      .spread = true,
      .yaml = shard_yaml,
      .ud = &d,
      .customers = 6,
      .msgs = PG_SHARD_MSGS,
      .kills = PG_SHARD_KILLS,
      .deadline_s = 150,
  };
  fo_counts k;
  int rc = fo_run(&sc, &k);
  fo_print(&sc, &k);
  char ids_a[2048], ids_b[2048];
  int na = 0, nb = 0;
  conv_ids(d.a, ids_a, sizeof ids_a, &na);
  conv_ids(d.b, ids_b, sizeof ids_b, &nb);
  long long ev_a = scalar(d.a, "SELECT count(*) FROM parley_events");
  long long ev_b = scalar(d.b, "SELECT count(*) FROM parley_events");
  /* Gap-free per conversation in its database: as many events as its
   * highest seq, for every conversation. */
  long long gaps_a = scalar(d.a, "SELECT count(*) FROM (SELECT conv FROM parley_events GROUP BY "
                                 "conv HAVING count(*) <> max(seq)) g");
  long long gaps_b = scalar(d.b, "SELECT count(*) FROM (SELECT conv FROM parley_events GROUP BY "
                                 "conv HAVING count(*) <> max(seq)) g");
  long long stray_a = scalar(d.a, "SELECT count(*) FROM parley_events e WHERE NOT EXISTS "
                                  "(SELECT 1 FROM parley_conversations c WHERE c.id = e.conv)");
  long long stray_b = scalar(d.b, "SELECT count(*) FROM parley_events e WHERE NOT EXISTS "
                                  "(SELECT 1 FROM parley_conversations c WHERE c.id = e.conv)");
  pgs_stop(&s);
  printf("two shards: %d conversations (%lld events) in parley, %d (%lld events) in parley2\n",
         na, ev_a, nb, ev_b);
  assert_int_equal(rc, 0);
  assert_int_equal(k.kills, PG_SHARD_KILLS);
  assert_int_equal(k.acked, (uint64_t)sc.customers * PG_SHARD_MSGS);
  assert_int_equal(k.lost, 0);
  assert_int_equal(k.duplicated, 0);
  assert_int_equal(k.reordered, 0);
  assert_int_equal(k.gapped, 0);
  assert_int_equal(k.replies_missing, 0);
  /* Spread: both databases hold conversations, together all of them, and
   * none is in both. */
  assert_true(na >= 1);
  assert_true(nb >= 1);
  assert_int_equal(na + nb, sc.customers);
  for (int i = 0; i < sc.customers; i++) {
    char id[32];
    snprintf(id, sizeof id, ",fo-%d,", i);
    assert_true((strstr(ids_a, id) != NULL) != (strstr(ids_b, id) != NULL));
  }
  assert_true(ev_a + ev_b >= 2LL * sc.customers * PG_SHARD_MSGS);
  assert_int_equal(gaps_a, 0);
  assert_int_equal(gaps_b, 0);
  assert_int_equal(stray_a, 0);
  assert_int_equal(stray_b, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_two_shards),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
