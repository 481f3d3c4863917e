/* The SQLite backend's VFS (gateway/src/store/sqlite_vfs.c), which gathers
 * a commit's WAL frames into one pwrite(), against real SQLite files:
 *
 *   - visible: after each COMMIT through it, a connection that reads the
 *     file through SQLite's plain unix VFS (its own descriptors, so only
 *     what is in the file) sees every committed row;
 *   - crash: a child process commits rows one transaction at a time through
 *     it and ends with _exit() without closing anything (what SIGKILL
 *     leaves: nothing flushed at close); every committed row is there
 *     afterwards, and the database is intact;
 *   - full: with synchronous=FULL the same holds, and a transaction larger
 *     than the buffer (written in pieces) is intact too;
 *   - exclusive: through the unix-excl variant a second process cannot open
 *     the file while the first holds it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sqlite3.h>

#include "proc.h"
#include "store/sqlite_vfs.h"

static char dir[256];

static sqlite3 *open_db(const char *path, const char *vfs, const char *sync) {
  sqlite3 *h = NULL;
  int rc = sqlite3_open_v2(path, &h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, vfs);
  assert_int_equal(rc, SQLITE_OK);
  char sql[200];
  snprintf(sql, sizeof sql,
           "PRAGMA journal_mode=WAL; PRAGMA synchronous=%s; PRAGMA busy_timeout=2000;", sync);
  assert_int_equal(sqlite3_exec(h, sql, NULL, NULL, NULL), SQLITE_OK);
  return h;
}

static void make_schema(sqlite3 *h) {
  assert_int_equal(sqlite3_exec(h,
                                "CREATE TABLE IF NOT EXISTS ev(conv TEXT NOT NULL, seq INTEGER "
                                "NOT NULL, blob BLOB NOT NULL, PRIMARY KEY(conv, seq)) "
                                "WITHOUT ROWID;",
                                NULL, NULL, NULL),
                   SQLITE_OK);
}

/* One transaction of n rows of `bytes` bytes each, seqs from first. */
static void commit_rows(sqlite3 *h, int first, int n, int bytes) {
  sqlite3_stmt *s;
  assert_int_equal(sqlite3_exec(h, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_prepare_v2(h, "INSERT INTO ev VALUES(?1, ?2, ?3)", -1, &s, NULL),
                   SQLITE_OK);
  char *blob = malloc((size_t)bytes);
  assert_non_null(blob);
  for (int i = 0; i < n; i++) {
    memset(blob, 'a' + (first + i) % 26, (size_t)bytes);
    char conv[16];
    snprintf(conv, sizeof conv, "c%d", (first + i) % 7);
    sqlite3_bind_text(s, 1, conv, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 2, first + i);
    sqlite3_bind_blob(s, 3, blob, bytes, SQLITE_TRANSIENT);
    assert_int_equal(sqlite3_step(s), SQLITE_DONE);
    sqlite3_reset(s);
  }
  free(blob);
  sqlite3_finalize(s);
  int rc = sqlite3_exec(h, "COMMIT", NULL, NULL, NULL);
  if (rc != SQLITE_OK) print_error("commit: %s\n", sqlite3_errmsg(h));
  assert_int_equal(rc, SQLITE_OK);
}

static int count_rows(sqlite3 *h) {
  sqlite3_stmt *s;
  assert_int_equal(sqlite3_prepare_v2(h, "SELECT count(*) FROM ev", -1, &s, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(s), SQLITE_ROW);
  int n = sqlite3_column_int(s, 0);
  sqlite3_finalize(s);
  return n;
}

/* Every row's blob has the letter of its seq: a frame written in the wrong
 * place or not at all shows here or in the integrity check. */
static void check_intact(sqlite3 *h, int rows) {
  assert_int_equal(count_rows(h), rows);
  sqlite3_stmt *s;
  assert_int_equal(sqlite3_prepare_v2(h, "SELECT seq, blob FROM ev", -1, &s, NULL), SQLITE_OK);
  while (sqlite3_step(s) == SQLITE_ROW) {
    int seq = sqlite3_column_int(s, 0);
    const unsigned char *b = sqlite3_column_blob(s, 1);
    int len = sqlite3_column_bytes(s, 1);
    for (int i = 0; i < len; i++)
      if (b[i] != 'a' + seq % 26) fail_msg("seq %d: byte %d is %c", seq, i, b[i]);
  }
  sqlite3_finalize(s);
  assert_int_equal(sqlite3_prepare_v2(h, "PRAGMA integrity_check", -1, &s, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(s), SQLITE_ROW);
  assert_string_equal((const char *)sqlite3_column_text(s, 0), "ok");
  sqlite3_finalize(s);
}

static void path_in_dir(char *out, size_t n, const char *name) {
  if (!dir[0]) assert_int_equal(tmpdir_make(dir, sizeof dir, "sqlite-vfs"), 0);
  snprintf(out, n, "%s/%s", dir, name);
}

static void test_visible_after_each_commit(void **unused) {
  (void)unused;
  char path[400];
  path_in_dir(path, sizeof path, "visible.db");
  sqlite3 *w = open_db(path, pg_sqlite_vfs(false), "NORMAL");
  make_schema(w);
  sqlite3 *r = open_db(path, "unix", "NORMAL");
  for (int i = 1; i <= 200; i++) {
    commit_rows(w, i, 1, 300);
    assert_int_equal(count_rows(r), i);
  }
  check_intact(r, 200);
  sqlite3_close(r);
  sqlite3_close(w);
}

/* Child: commits `txns` transactions through the VFS and ends without
 * closing, telling the parent how many committed through the pipe. */
static void crash_child(const char *path, const char *sync, int txns, int rows, int bytes,
                        int fd) {
  sqlite3 *w = open_db(path, pg_sqlite_vfs(true), sync);
  make_schema(w);
  int seq = 1;
  for (int t = 0; t < txns; t++) {
    commit_rows(w, seq, rows, bytes);
    seq += rows;
    int done = seq - 1;
    if (write(fd, &done, sizeof done) != sizeof done) _exit(3);
  }
  _exit(0);
}

static int run_crash(const char *name, const char *sync, int txns, int rows, int bytes) {
  char path[400];
  path_in_dir(path, sizeof path, name);
  int p[2];
  assert_int_equal(pipe(p), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(p[0]);
    crash_child(path, sync, txns, rows, bytes, p[1]);
  }
  close(p[1]);
  int done = 0, v;
  while (read(p[0], &v, sizeof v) == sizeof v) done = v;
  close(p[0]);
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  /* The WAL the child left is recovered by a plain connection. */
  sqlite3 *h = open_db(path, "unix", "NORMAL");
  check_intact(h, done);
  sqlite3_close(h);
  return done;
}

static void test_crash_normal(void **unused) {
  (void)unused;
  assert_int_equal(run_crash("crash-normal.db", "NORMAL", 300, 1, 250), 300);
  assert_int_equal(run_crash("crash-batches.db", "NORMAL", 40, 25, 250), 1000);
}

static void test_crash_full_and_large(void **unused) {
  (void)unused;
  assert_int_equal(run_crash("crash-full.db", "FULL", 50, 3, 250), 150);
  /* 600 rows of 3 KiB in one transaction: many times the 126 KiB buffer. */
  assert_int_equal(run_crash("crash-large.db", "NORMAL", 2, 600, 3000), 1200);
}

static void test_exclusive(void **unused) {
  (void)unused;
  char path[400];
  path_in_dir(path, sizeof path, "excl.db");
  /* The other process is forked before this one opens anything of the file
   * (a child must not inherit SQLite's memory of open files and locks);
   * it waits for a byte on the pipe, then tries to read. */
  int p[2];
  assert_int_equal(pipe(p), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(p[1]);
    char go;
    if (read(p[0], &go, 1) != 1) _exit(100);
    sqlite3 *h = NULL;
    sqlite3_open_v2(path, &h, SQLITE_OPEN_READONLY, NULL);
    sqlite3_busy_timeout(h, 200);
    int rc = sqlite3_exec(h, "SELECT count(*) FROM ev", NULL, NULL, NULL);
    _exit(rc & 0xff);
  }
  close(p[0]);
  sqlite3 *w = open_db(path, pg_sqlite_vfs(true), "NORMAL");
  make_schema(w);
  commit_rows(w, 1, 1, 10);
  /* A second connection of this process shares the lock. */
  sqlite3 *r = open_db(path, pg_sqlite_vfs(true), "NORMAL");
  assert_int_equal(count_rows(r), 1);
  assert_int_equal(write(p[1], "g", 1), 1);
  close(p[1]);
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  /* Refused: the file is locked (SQLITE_BUSY); never read. */
  assert_int_equal(WEXITSTATUS(status), SQLITE_BUSY);
  sqlite3_close(r);
  sqlite3_close(w);
}

static int teardown(void **unused) {
  (void)unused;
  if (dir[0]) tmpdir_remove(dir);
  dir[0] = 0;
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_visible_after_each_commit),
      cmocka_unit_test(test_crash_normal),
      cmocka_unit_test(test_crash_full_and_large),
      cmocka_unit_test(test_exclusive),
  };
  return cmocka_run_group_tests(tests, NULL, teardown);
}
