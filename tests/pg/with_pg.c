/* with_pg TEST [ARGS...]: runs a test program against a real PostgreSQL
 * server started for it (pgserver.h), whose connection string (without a
 * database-specific schema) is in PARLEY_TEST_PG_URL; the gateway test
 * harness then keeps the gateway's log there. The server is stopped and
 * removed afterwards; the exit status is the test's. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "pgserver.h"

/* How many gateway schemas the run created: proof that the log really
 * was on this server and not on a SQLite file. */
static long gateway_schemas(const pgs *s) {
  char ci[256];
  PGconn *c = PQconnectdb(pgs_conninfo(s, ci, sizeof ci));
  long n = -1;
  if (PQstatus(c) == CONNECTION_OK) {
    PGresult *r = PQexec(c, "SELECT count(*) FROM information_schema.tables "
                            "WHERE table_name = 'parley_events'");
    if (PQresultStatus(r) == PGRES_TUPLES_OK) n = atol(PQgetvalue(r, 0, 0));
    PQclear(r);
  }
  PQfinish(c);
  return n;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: with_pg TEST [ARGS...]\n");
    return 2;
  }
  pgs s;
  if (pgs_start(&s, "parley") != 0) return 1;
  char url[256];
  setenv("PARLEY_TEST_PG_URL", pgs_conninfo(&s, url, sizeof url), 1);
  pid_t pid = fork();
  if (pid == 0) {
    execv(argv[1], argv + 1);
    perror("with_pg: exec");
    _exit(127);
  }
  int status = 1;
  if (pid < 0 || waitpid(pid, &status, 0) < 0) status = 1 << 8;
  long schemas = gateway_schemas(&s);
  pgs_stop(&s);
  fprintf(stderr, "with_pg: the run used %ld gateway schemas on PostgreSQL\n", schemas);
  if (schemas < 1) {
    fprintf(stderr, "with_pg: no gateway wrote to PostgreSQL\n");
    return 1;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  fprintf(stderr, "with_pg: %s ended by signal %d\n", argv[1], WTERMSIG(status));
  return 1;
}
