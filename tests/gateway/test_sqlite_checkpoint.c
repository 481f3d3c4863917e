/* The SQLite store's checkpoints (gateway/src/store/sqlite.c) through the
 * storage interface, with a small checkpoint size
 * (PARLEY_SQLITE_CKPT_PAGES=64) so that a test writes many checkpoints'
 * worth of WAL:
 *
 *   - the writer never stops committing for a checkpoint, so the WAL is
 *     only started over because the writer copies the checkpoint's last
 *     pages between two of its transactions: under a stream of
 *     transactions with no pause, SQLite starts the WAL over again and
 *     again (the checkpoint sequence number in its header counts that),
 *     and the file stays far smaller than everything written;
 *   - every event committed is there after the store is closed and opened
 *     again, in order and intact;
 *   - another program (Python's sqlite3 module) backs up the file of an
 *     open store, by default; with PARLEY_SQLITE_EXCLUSIVE=1 it is kept
 *     out.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <uv.h>

#include <parley/error.h>

#include "store/store.h"
#include "proc.h"

#define CKPT_PAGES 64
#define EVENTS 10000
#define BLOB 200

typedef struct node {
  uv_loop_t loop;
  pg_store *st;
  int done, failed;
} node;

static void node_open(node *n, const char *dir, bool merge) {
  memset(n, 0, sizeof *n);
  assert_int_equal(uv_loop_init(&n->loop), 0);
  pg_store_options o = PG_STORE_OPTIONS_INIT;
  o.data_dir = dir;
  o.durability = PG_DUR_NORMAL;
  o.loop = &n->loop;
  o.merge_batches = merge;
  char err[256] = "";
  int rc = pg_store_open(&o, &n->st, err, sizeof err);
  if (rc) fprintf(stderr, "open: %s\n", err);
  assert_int_equal(rc, 0);
}

static void node_close(node *n) {
  pg_store_close(n->st, NULL, NULL);
  uv_run(&n->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&n->loop), 0);
}

static void on_done(void *ud, int status, const char *why) {
  node *n = ud;
  n->done++;
  if (status) {
    n->failed++;
    fprintf(stderr, "batch failed: %s\n", why ? why : "");
  }
}

static void fill(uint8_t *blob, uint64_t seq) {
  for (size_t i = 0; i < BLOB; i++) blob[i] = (uint8_t)(seq * 31u + i);
}

typedef struct seen {
  uint64_t next;
  int bad;
} seen;

static int check_event(void *ud, uint64_t seq, const void *blob, size_t len) {
  seen *s = ud;
  uint8_t want[BLOB];
  fill(want, seq);
  if (seq != s->next || len != BLOB || memcmp(blob, want, BLOB) != 0) s->bad++;
  s->next = seq + 1;
  return 0;
}

static long long wal_bytes(const char *dir) {
  char path[4200];
  snprintf(path, sizeof path, "%s/gateway.db-wal", dir);
  struct stat st;
  return stat(path, &st) == 0 ? (long long)st.st_size : 0;
}

/* The WAL header's checkpoint sequence number (big-endian, bytes 12-15):
 * SQLite adds one each time it starts the WAL over. */
static uint32_t wal_restarts(const char *dir) {
  char path[4200];
  snprintf(path, sizeof path, "%s/gateway.db-wal", dir);
  FILE *f = fopen(path, "rb");
  uint8_t h[16] = {0};
  if (f) {
    if (fread(h, 1, sizeof h, f) != sizeof h) memset(h, 0, sizeof h);
    fclose(f);
  }
  return (uint32_t)h[12] << 24 | (uint32_t)h[13] << 16 | (uint32_t)h[14] << 8 | h[15];
}

static void test_wal_bounded_under_a_stream_of_commits(void **unused) {
  (void)unused;
  char dir[512];
  assert_int_equal(tmpdir_make(dir, sizeof dir, "ckpt"), 0);
  node n;
  /* One transaction per batch, all submitted before the first commits:
   * the writer commits back to back, EVENTS transactions with no pause in
   * which a checkpoint running beside it could catch up by chance. */
  node_open(&n, dir, false);
  pg_store_batch *b = pg_store_batch_new();
  assert_non_null(b);
  pg_store_conv c = {.id = "c1", .customer = "carol", .assignee = "bot", .bot = "bot",
                     .locale = "en", .queue = "", .note = "", .tags = "",
                     .status = PG_CONV_OPEN, .epoch = 1};
  assert_int_equal(pg_store_batch_conv(b, &c, PG_STORE_CONV_NEW), 0);
  assert_int_equal(pg_store_submit(n.st, b, on_done, &n), 0);
  static uint8_t blob[BLOB];
  for (uint64_t seq = 1; seq <= EVENTS; seq++) {
    b = pg_store_batch_new();
    assert_non_null(b);
    fill(blob, seq);
    pg_store_event e = {.conv = "c1", .seq = seq, .blob = blob, .len = BLOB, .sender = "carol"};
    memcpy(e.msg_id, &seq, sizeof seq);
    e.has_msg_id = true;
    assert_int_equal(pg_store_batch_event(b, &e), 0);
    assert_int_equal(pg_store_submit(n.st, b, on_done, &n), 0);
  }
  pg_store_drain(n.st);
  assert_int_equal(n.done, EVENTS + 1);
  assert_int_equal(n.failed, 0);
  /* The WAL file keeps its largest size when SQLite starts it over, so
   * its size now is the most it ever held. Each commit wrote three pages
   * (the events table's leaf and the leaves of its two indexes, 4 KiB
   * each plus a 24-byte frame header): without restarts the file holds
   * 3 * EVENTS frames (123 MB, measured). The store's hard limit is four
   * checkpoints' worth of pages; the bound leaves room for the commits
   * that land while the writer waits for a checkpointer's pass. */
  long long wal = wal_bytes(dir);
  long long bound = 16LL * CKPT_PAGES * 4120;
  uint32_t restarts = wal_restarts(dir);
  fprintf(stderr, "WAL after %d commits: %lld bytes (bound %lld), started over %u times\n",
          EVENTS, wal, bound, restarts);
  assert_true(wal > 0);
  assert_true(wal <= bound);
  assert_true(restarts >= 3);
  node_close(&n);

  node_open(&n, dir, true);
  seen s = {.next = 1};
  assert_int_equal(pg_store_events(n.st, "c1", 1, EVENTS, EVENTS, check_event, &s), 0);
  assert_int_equal(s.bad, 0);
  assert_int_equal(s.next, EVENTS + 1);
  node_close(&n);
  tmpdir_remove(dir);
}

/* Python's sqlite3 backs up dir/gateway.db into dir/copy.db and prints the
 * copy's event count; returns its exit status (0 on success). It reads the
 * file first: its backup() retries a locked file for ever, a read gives up
 * after the connection's timeout. */
static int backup_by_another_program(const char *dir, long *events) {
  char cmd[2048];
  snprintf(cmd, sizeof cmd,
           "python3 -c \"import sqlite3,sys; s=sqlite3.connect(sys.argv[1], timeout=0.5); "
           "s.execute('select count(*) from events').fetchone(); "
           "d=sqlite3.connect(sys.argv[2]); s.backup(d); "
           "print(d.execute('select count(*) from events').fetchone()[0])\" "
           "'%s/gateway.db' '%s/copy.db' 2>/dev/null",
           dir, dir);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  if (fscanf(p, "%ld", events) != 1) *events = -1;
  return pclose(p);
}

static void put_events(node *n, uint64_t count) {
  pg_store_batch *b = pg_store_batch_new();
  assert_non_null(b);
  pg_store_conv c = {.id = "c1", .customer = "carol", .assignee = "bot", .bot = "bot",
                     .locale = "en", .queue = "", .note = "", .tags = "",
                     .status = PG_CONV_OPEN, .epoch = 1};
  assert_int_equal(pg_store_batch_conv(b, &c, PG_STORE_CONV_NEW), 0);
  static uint8_t blob[BLOB];
  for (uint64_t seq = 1; seq <= count; seq++) {
    fill(blob, seq);
    pg_store_event e = {.conv = "c1", .seq = seq, .blob = blob, .len = BLOB};
    assert_int_equal(pg_store_batch_event(b, &e), 0);
  }
  assert_int_equal(pg_store_submit(n->st, b, on_done, n), 0);
  pg_store_drain(n->st);
  assert_int_equal(n->failed, 0);
}

static void test_online_backup(void **unused) {
  (void)unused;
  char dir[512];
  assert_int_equal(tmpdir_make(dir, sizeof dir, "backup"), 0);
  node n;
  node_open(&n, dir, true);
  put_events(&n, 10);
  long events = 0;
  assert_int_equal(backup_by_another_program(dir, &events), 0);
  assert_int_equal(events, 10);
  node_close(&n);

  /* Held alone: the same backup is refused while the store is open. */
  char dir2[512];
  assert_int_equal(tmpdir_make(dir2, sizeof dir2, "backup-excl"), 0);
  setenv("PARLEY_SQLITE_EXCLUSIVE", "1", 1);
  node_open(&n, dir2, true);
  put_events(&n, 10);
  assert_int_not_equal(backup_by_another_program(dir2, &events), 0);
  node_close(&n);
  unsetenv("PARLEY_SQLITE_EXCLUSIVE");
  tmpdir_remove(dir);
  tmpdir_remove(dir2);
}

int main(void) {
  char pages[16];
  snprintf(pages, sizeof pages, "%d", CKPT_PAGES);
  setenv("PARLEY_SQLITE_CKPT_PAGES", pages, 1);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_wal_bounded_under_a_stream_of_commits),
      cmocka_unit_test(test_online_backup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
