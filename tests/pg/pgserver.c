/* See pgserver.h. */
#include "pgserver.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#ifndef PARLEY_PG_BINDIR
#define PARLEY_PG_BINDIR "/usr/lib/postgresql/15/bin"
#endif

/* initdb plus the first start take about two seconds here; a loaded
 * machine gets ten times that before a step counts as failed. */
#define PGS_STEP_TIMEOUT_MS 60000

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* The user the server runs as: ourselves unless we are root, since
 * PostgreSQL refuses to start as root. */
static int pick_user(pgs *s, uid_t *uid, gid_t *gid) {
  if (geteuid() != 0) {
    struct passwd *pw = getpwuid(geteuid());
    snprintf(s->user, sizeof s->user, "%s", pw ? pw->pw_name : "self");
    *uid = geteuid();
    *gid = getegid();
    return 0;
  }
  const char *env = getenv("PARLEY_PG_USER");
  const char *candidates[] = {env && *env ? env : "parleypg", "postgres", NULL};
  for (int i = 0; candidates[i]; i++) {
    struct passwd *pw = getpwnam(candidates[i]);
    if (pw && pw->pw_uid != 0) {
      snprintf(s->user, sizeof s->user, "%s", candidates[i]);
      *uid = pw->pw_uid;
      *gid = pw->pw_gid;
      return 0;
    }
  }
  fprintf(stderr, "pgserver: running as root and no unprivileged user for PostgreSQL "
                  "(set PARLEY_PG_USER, or run scripts/bootstrap.sh to create parleypg)\n");
  return -1;
}

/* Runs argv as the server's user, output appended to dir/commands.log,
 * and waits for it within PGS_STEP_TIMEOUT_MS. 0 when it exits with 0. */
static int run_as(const pgs *s, char *const argv[]) {
  uid_t uid = 0;
  gid_t gid = 0;
  bool drop = geteuid() == 0;
  if (drop) {
    struct passwd *pw = getpwnam(s->user);
    if (!pw) return -1;
    uid = pw->pw_uid;
    gid = pw->pw_gid;
  }
  char log[320];
  snprintf(log, sizeof log, "%s/commands.log", s->dir);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) {
      dup2(devnull, STDIN_FILENO);
      close(devnull);
    }
    if (drop && (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0)) _exit(126);
    if (chdir(s->dir) != 0) _exit(126);
    execv(argv[0], argv);
    _exit(127);
  }
  long long deadline = now_ms() + PGS_STEP_TIMEOUT_MS;
  int status = 0;
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) return -1;
    if (now_ms() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      fprintf(stderr, "pgserver: %s timed out\n", argv[0]);
      return -1;
    }
    sleep_ms(10);
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "pgserver: %s failed (status %d); see %s\n", argv[0], status, log);
    return -1;
  }
  return 0;
}

/* A port nobody listens on now; the server binds it a moment later. */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = 0;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

static void bin(const pgs *s, const char *name, char *out, size_t size) {
  snprintf(out, size, "%s/%s", s->bindir, name);
}

static int ctl_start(pgs *s) {
  char ctl[320], data[320], logf[320], opts[512];
  bin(s, "pg_ctl", ctl, sizeof ctl);
  snprintf(data, sizeof data, "%s/data", s->dir);
  snprintf(logf, sizeof logf, "%s/server.log", s->dir);
  /* fsync=off: the tests kill the server, never the machine, and the
   * operating system keeps what PostgreSQL wrote; syncing would only make
   * a shared test machine slower. Everything else is the stock config. */
  snprintf(opts, sizeof opts,
           "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
           s->port, s->dir);
  char *argv[] = {ctl, "-D", data, "-l", logf, "-w", "-t", "60", "-o", opts, "start", NULL};
  if (run_as(s, argv) != 0) return -1;
  s->running = true;
  return 0;
}

const char *pgs_conninfo(const pgs *s, char *buf, size_t size) {
  snprintf(buf, size, "host=127.0.0.1 port=%d dbname=%s user=%s connect_timeout=10", s->port,
           s->dbname, s->role);
  return buf;
}

const char *pgs_url(const pgs *s, char *buf, size_t size) {
  snprintf(buf, size, "postgresql://%s@127.0.0.1:%d/%s", s->role, s->port, s->dbname);
  return buf;
}

int pgs_create_db(pgs *s, const char *dbname) {
  char ci[256];
  snprintf(ci, sizeof ci, "host=127.0.0.1 port=%d dbname=postgres user=%s connect_timeout=10",
           s->port, s->role);
  PGconn *c = PQconnectdb(ci);
  if (PQstatus(c) != CONNECTION_OK) {
    fprintf(stderr, "pgserver: connect: %s", PQerrorMessage(c));
    PQfinish(c);
    return -1;
  }
  char *ident = PQescapeIdentifier(c, dbname, strlen(dbname));
  char sql[256];
  snprintf(sql, sizeof sql, "CREATE DATABASE %s", ident ? ident : "\"?\"");
  PQfreemem(ident);
  PGresult *r = PQexec(c, sql);
  int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : -1;
  if (rc) fprintf(stderr, "pgserver: %s: %s", sql, PQerrorMessage(c));
  PQclear(r);
  PQfinish(c);
  return rc;
}

int pgs_start(pgs *s, const char *dbname) {
  memset(s, 0, sizeof *s);
  const char *bd = getenv("PARLEY_PG_BINDIR");
  snprintf(s->bindir, sizeof s->bindir, "%s", bd && *bd ? bd : PARLEY_PG_BINDIR);
  snprintf(s->dbname, sizeof s->dbname, "%s", dbname ? dbname : "parley");
  snprintf(s->role, sizeof s->role, "parley");
  uid_t uid;
  gid_t gid;
  if (pick_user(s, &uid, &gid) != 0) return -1;
  snprintf(s->dir, sizeof s->dir, "/tmp/parley-pg-XXXXXX");
  if (!mkdtemp(s->dir)) {
    perror("pgserver: mkdtemp");
    s->dir[0] = 0;
    return -1;
  }
  if (chown(s->dir, uid, gid) != 0 || chmod(s->dir, 0700) != 0) {
    perror("pgserver: chown");
    pgs_stop(s);
    return -1;
  }
  char initdb[320], data[320];
  bin(s, "initdb", initdb, sizeof initdb);
  snprintf(data, sizeof data, "%s/data", s->dir);
  char *argv[] = {initdb, "-D", data, "-U", s->role, "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync", NULL};
  if (run_as(s, argv) != 0) {
    pgs_stop(s);
    return -1;
  }
  /* Another process may take the free port before the server binds it:
   * a second port is tried once. */
  for (int attempt = 0; attempt < 2 && !s->running; attempt++) {
    s->port = free_port();
    if (s->port) ctl_start(s);
  }
  if (!s->running || pgs_create_db(s, s->dbname) != 0) {
    pgs_stop(s);
    return -1;
  }
  return 0;
}

int pgs_stop_mode(pgs *s, const char *mode) {
  if (!s->running) return 0;
  char ctl[320], data[320];
  bin(s, "pg_ctl", ctl, sizeof ctl);
  snprintf(data, sizeof data, "%s/data", s->dir);
  char *argv[] = {ctl, "-D", data, "-m", (char *)mode, "-w", "-t", "60", "stop", NULL};
  int rc = run_as(s, argv);
  if (rc == 0) s->running = false;
  return rc;
}

int pgs_restart(pgs *s, const char *mode) {
  if (pgs_stop_mode(s, mode) != 0) return -1;
  return ctl_start(s);
}

int pgs_resume(pgs *s) { return s->running ? 0 : ctl_start(s); }

void pgs_stop(pgs *s) {
  if (s->running) pgs_stop_mode(s, "fast");
  if (s->dir[0]) {
    if (!getenv("PARLEY_PG_KEEP")) {
      char cmd[300];
      snprintf(cmd, sizeof cmd, "rm -rf '%s'", s->dir);
      if (system(cmd) != 0) fprintf(stderr, "pgserver: could not remove %s\n", s->dir);
    } else {
      fprintf(stderr, "pgserver: kept %s\n", s->dir);
    }
    s->dir[0] = 0;
  }
}
