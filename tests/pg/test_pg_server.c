/* The test PostgreSQL helper itself: a real server starts in a temporary
 * directory as an unprivileged user, answers on 127.0.0.1, keeps a
 * committed row across an immediate (crash) restart, and is gone with its
 * directory after pgs_stop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "pgserver.h"

static PGconn *connect_db(const pgs *s) {
  char ci[256];
  PGconn *c = PQconnectdb(pgs_conninfo(s, ci, sizeof ci));
  if (PQstatus(c) != CONNECTION_OK) fprintf(stderr, "connect: %s", PQerrorMessage(c));
  return c;
}

static void exec_ok(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
    fprintf(stderr, "%s: %s", sql, PQerrorMessage(c));
  assert_true(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK);
  PQclear(r);
}

static void test_start_query_restart_stop(void **state) {
  (void)state;
  pgs s;
  assert_int_equal(pgs_start(&s, "helper_db"), 0);
  assert_true(s.port > 0);
  /* The server does not run as root. */
  if (geteuid() == 0) assert_string_not_equal(s.user, "root");

  PGconn *c = connect_db(&s);
  assert_int_equal(PQstatus(c), CONNECTION_OK);
  PGresult *r = PQexec(c, "SELECT current_database(), inet_server_addr()::text");
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  assert_string_equal(PQgetvalue(r, 0, 0), "helper_db");
  assert_string_equal(PQgetvalue(r, 0, 1), "127.0.0.1/32");
  PQclear(r);
  exec_ok(c, "CREATE TABLE t (k int PRIMARY KEY, v text)");
  exec_ok(c, "INSERT INTO t VALUES (1, 'kept')");
  PQfinish(c);

  /* A crash of the server (no shutdown checkpoint) loses no commit. */
  assert_int_equal(pgs_restart(&s, "immediate"), 0);
  c = connect_db(&s);
  assert_int_equal(PQstatus(c), CONNECTION_OK);
  r = PQexec(c, "SELECT v FROM t WHERE k = 1");
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  assert_int_equal(PQntuples(r), 1);
  assert_string_equal(PQgetvalue(r, 0, 0), "kept");
  PQclear(r);
  PQfinish(c);

  assert_int_equal(pgs_create_db(&s, "second"), 0);

  char dir[256];
  snprintf(dir, sizeof dir, "%s", s.dir);
  pgs_stop(&s);
  struct stat st;
  assert_int_not_equal(stat(dir, &st), 0);
  c = connect_db(&s);
  assert_int_not_equal(PQstatus(c), CONNECTION_OK);
  PQfinish(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_start_query_restart_stop),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
