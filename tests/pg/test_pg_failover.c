/* Several `parley gateway` processes over one real PostgreSQL database,
 * killed with SIGKILL under live traffic (tests/failover/failover.h,
 * shared shape): three nodes up, each with its own data directory and
 * the same `storage: {kind: postgres}`; three libparley customers and the
 * echo bot under `parley run --url A --url B --url C`. The node everyone
 * is on dies, the clients move to the next URL and resume there from
 * their cursors, served from what the dead node committed to PostgreSQL;
 * the killed node comes back before the next kill. The checker counts
 * lost, duplicated, reordered and gapped events and missing replies: all
 * must be 0, and every node must have served.
 *
 * A second run restarts the database itself with pg_ctl stop -m immediate
 * during traffic (PG_DB_RESTARTS times): the gateways keep their batches,
 * reconnect and write them, and nothing ACKed is lost.
 *
 * PG_FAILOVER_KILLS, PG_DB_RESTARTS and PG_FAILOVER_MSGS size the runs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "failover.h"
#include "pgserver.h"

#ifndef PG_FAILOVER_KILLS
#define PG_FAILOVER_KILLS 4
#endif
#ifndef PG_DB_RESTARTS
#define PG_DB_RESTARTS 2
#endif
#ifndef PG_FAILOVER_MSGS
#define PG_FAILOVER_MSGS 60
#endif

static char yaml_buf[1024];

static const char *pg_yaml(int node, void *ud) {
  (void)node;
  snprintf(yaml_buf, sizeof yaml_buf,
           "listen: 127.0.0.1\n"
           "durability: normal\n"
           "bot: echo\n"
           "storage:\n"
           "  kind: postgres\n"
           "  url: \"%s\"\n"
           "limits:\n"
           "  ack_timeout: 1s\n"
           "  heartbeat: 1s\n"
           "  max_connections_per_principal: 64\n",
           (const char *)ud);
  return yaml_buf;
}

/* The customers' events in the database: messages, echoes, openings. */
static long long stored_events(const char *url) {
  PGconn *c = PQconnectdb(url);
  long long stored = -1;
  if (PQstatus(c) == CONNECTION_OK) {
    PGresult *r = PQexec(c, "SELECT count(*) FROM parley_events WHERE conv LIKE 'fo-%'");
    if (PQresultStatus(r) == PGRES_TUPLES_OK) stored = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
  }
  PQfinish(c);
  return stored;
}

static void test_three_nodes_kill9(void **unused) {
  (void)unused;
  pgs s;
  assert_int_equal(pgs_start(&s, "parley"), 0);
  char url[256];
  pgs_conninfo(&s, url, sizeof url);
  fo_scenario sc = {
      .name = "postgres_three_nodes",
      .nodes = 3,
      .shared_store = true,
      .yaml = pg_yaml,
      .ud = url,
      .customers = 3,
      .msgs = PG_FAILOVER_MSGS,
      .kills = PG_FAILOVER_KILLS,
      .deadline_s = 150,
  };
  fo_counts k;
  int rc = fo_run(&sc, &k);
  fo_print(&sc, &k);
  /* The log is in PostgreSQL: every customer's message and its echo. */
  long long stored = stored_events(url);
  pgs_stop(&s);
  printf("events stored in PostgreSQL: %lld\n", stored);
  assert_int_equal(rc, 0);
  assert_int_equal(k.kills, PG_FAILOVER_KILLS);
  assert_int_equal(k.acked, (uint64_t)sc.customers * PG_FAILOVER_MSGS);
  assert_int_equal(k.lost, 0);
  assert_int_equal(k.duplicated, 0);
  assert_int_equal(k.reordered, 0);
  assert_int_equal(k.gapped, 0);
  assert_int_equal(k.replies_missing, 0);
  for (int i = 0; i < sc.nodes; i++) assert_true(k.ready_on[i] >= (uint64_t)sc.customers);
  assert_true(stored >= 2LL * sc.customers * PG_FAILOVER_MSGS);
}

typedef struct db_fault {
  pgs *server;
  char url[256];
  int restarts_ok;
} db_fault;

static const char *pg_yaml_db(int node, void *ud) { return pg_yaml(node, ((db_fault *)ud)->url); }

/* The database crashes (no shutdown checkpoint) and is back a moment
 * later; the gateways keep their batches and write them again. */
static void restart_db(void *ud) {
  db_fault *f = ud;
  if (pgs_stop_mode(f->server, "immediate") != 0) return;
  struct timespec ts = {0, 700 * 1000 * 1000};
  nanosleep(&ts, NULL);
  if (pgs_resume(f->server) == 0) f->restarts_ok++;
}

static void test_database_restart(void **unused) {
  (void)unused;
  pgs s;
  assert_int_equal(pgs_start(&s, "parley"), 0);
  db_fault f = {.server = &s};
  pgs_conninfo(&s, f.url, sizeof f.url);
  fo_scenario sc = {
      .name = "postgres_restart_immediate",
      .nodes = 2,
      .shared_store = true,
      .yaml = pg_yaml_db,
      .ud = &f,
      .customers = 3,
      .msgs = PG_FAILOVER_MSGS,
      .kills = PG_DB_RESTARTS,
      .fault = restart_db,
      .deadline_s = 150,
  };
  fo_counts k;
  int rc = fo_run(&sc, &k);
  fo_print(&sc, &k);
  long long stored = stored_events(f.url);
  pgs_stop(&s);
  printf("events stored in PostgreSQL: %lld\n", stored);
  assert_int_equal(rc, 0);
  assert_int_equal(f.restarts_ok, PG_DB_RESTARTS);
  /* Everything ACKed is in the database after its crashes. */
  assert_true(stored >= 2LL * sc.customers * PG_FAILOVER_MSGS);
  assert_int_equal(k.acked, (uint64_t)sc.customers * PG_FAILOVER_MSGS);
  assert_int_equal(k.lost, 0);
  assert_int_equal(k.duplicated, 0);
  assert_int_equal(k.reordered, 0);
  assert_int_equal(k.gapped, 0);
  assert_int_equal(k.replies_missing, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_three_nodes_kill9),
      cmocka_unit_test(test_database_restart),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
