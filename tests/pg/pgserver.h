/* A real PostgreSQL server for tests: initdb and pg_ctl in a fresh
 * temporary directory, listening on a free TCP port of 127.0.0.1 and on a
 * unix socket inside that directory, with one database created for the
 * test, stopped and removed at the end. No part of it is a mock.
 *
 * The server refuses to run as root, and CI runs as root: then initdb, pg_ctl
 * and the server run as an unprivileged user (PARLEY_PG_USER, else
 * "parleypg" as scripts/bootstrap.sh creates it, else Debian's "postgres"),
 * and the directory is handed to that user. The binaries come from
 * PARLEY_PG_BINDIR, else the bindir pg_config reported at configure time.
 *
 * Every wait is bounded; a failure says what failed on stderr.
 */
#ifndef PARLEY_TEST_PGSERVER_H
#define PARLEY_TEST_PGSERVER_H

#include <stdbool.h>
#include <stddef.h>

typedef struct pgs {
  char dir[256];       /* the temporary directory (data in dir/data) */
  char bindir[256];
  char user[64];       /* the OS user the server runs as */
  char dbname[64];
  char role[64];       /* the database superuser (initdb -U) */
  int port;
  bool running;
} pgs;

/* Creates the cluster, starts it and creates the database dbname (NULL:
 * "parley"). 0, or -1 with the reason on stderr. */
int pgs_start(pgs *s, const char *dbname);

/* A libpq connection string for the test database over TCP (password-less:
 * the cluster trusts loopback). */
const char *pgs_conninfo(const pgs *s, char *buf, size_t size);
/* The same as a postgresql:// URL. */
const char *pgs_url(const pgs *s, char *buf, size_t size);

/* Creates one more database in the running cluster. 0 or -1. */
int pgs_create_db(pgs *s, const char *dbname);

/* Stops with the given pg_ctl shutdown mode ("fast", "immediate") and
 * starts again on the same port and data. 0 or -1. */
int pgs_stop_mode(pgs *s, const char *mode);
int pgs_restart(pgs *s, const char *mode);
/* Starts a server stopped with pgs_stop_mode again, on the same port. */
int pgs_resume(pgs *s);

/* Stops the server (fast) if it runs and removes the directory. */
void pgs_stop(pgs *s);

#endif
