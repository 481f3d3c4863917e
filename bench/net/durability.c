/* bench_durability: acknowledged sends per second through the gateway when
 * each commit waits for fsync (durability full) and when it does not
 * (durability normal), with 1, 16 and 256 concurrent senders, against
 * SQLite committing one row per transaction with synchronous=FULL.
 *
 *   bench_durability [--tiny] [--only parley-fsync|parley-nofsync|sqlite]
 *                    [--senders 1|16|256]
 *
 * --only and --senders run a part, for looking at it by hand (strace, perf);
 * the report runs everything. *
 * Parley: a real `parley gateway` process on 127.0.0.1, group commit on
 * (the default), its data in a temporary directory under /tmp. The senders
 * are customers, each in its own conversation keeping one send in flight
 * (the protocol's rule per conversation), all driven through libparley's
 * public client API on one libuv loop in this process. Every send must be
 * acknowledged without error at the first attempt with seqs increasing in
 * its conversation; anything else fails the run.
 *
 * SQLite: the same kind of row as the gateway's event log (conv, seq,
 * blob; WITHOUT ROWID), journal_mode=WAL, synchronous=FULL, one INSERT per
 * transaction, in a database in the same /tmp file system. N threads insert
 * through one connection, one at a time under a mutex: SQLite lets one
 * writer commit at a time anyway, and the mutex spares it the busy-handler
 * sleeps that separate connections would add, so this is the best one-row-
 * per-transaction rate it offers. The comparison therefore shows what group
 * commit buys: many sends share one fsync.
 *
 * Each point runs for a fixed time after a warm-up; sends_per_s counts the
 * acknowledgements (or commits) inside the measured window.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libwebsockets.h>
#include <sqlite3.h>

#include <parley/client.h>

#include "bench.h"
#include "netcommon.h"

#define BENCH "durability"

static const int senders_list[] = {1, 16, 256};
#define N_POINTS (sizeof senders_list / sizeof senders_list[0])
#define MAX_SENDERS 256

typedef struct cfg {
  uint64_t warmup_ns, measure_ns;
  const char *only;
  int senders; /* 0: every point */
} cfg;

static bool wanted(const cfg *k, const char *subject) {
  return !k->only || !strcmp(k->only, subject);
}

static bool point_wanted(const cfg *k, int senders) {
  return k->senders == 0 || k->senders == senders;
}

static void report(const char *subject, int senders, double rate, size_t n) {
  char param[32];
  snprintf(param, sizeof param, "senders=%d", senders);
  printf("%-16s %8d %10zu %12.0f\n", subject, senders, n, rate);
  fflush(stdout);
  bench_figure(BENCH, "sends_per_s", subject, param, rate, "1/s");
}

static void sleep_ns(uint64_t ns) {
  struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

/* --------------------------------------------------------------- parley */

static long long file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static void run_parley(const cfg *k, const char *durability, const char *subject) {
  char dir[256], url[128];
  bn_tmpdir(dir, sizeof dir, "bench-dura");
  tproc gw;
  int port = bn_gateway_start(&gw, dir, durability, MAX_SENDERS);
  snprintf(url, sizeof url, "ws://127.0.0.1:%d/v1/ws", port);
  size_t all = 0;
  for (size_t i = 0; i < N_POINTS; i++) {
    if (!point_wanted(k, senders_list[i])) continue;
    char tag[32];
    snprintf(tag, sizeof tag, "dura-s%d", senders_list[i]);
    bn_drive d = {.url = url, .clients = senders_list[i], .tag = tag,
                  .warmup_ns = k->warmup_ns, .measure_ns = k->measure_ns};
    bn_drive_run(&d);
    if (d.measured == 0) bn_fail("%s: no send acknowledged with %d senders", subject,
                                 senders_list[i]);
    report(subject, senders_list[i], (double)d.measured * 1e9 / (double)d.elapsed_ns,
           d.measured);
    all += d.total;
  }
  /* The log is really in this directory: the database and its WAL. */
  char db[512], wal[512];
  snprintf(db, sizeof db, "%s/data/gateway.db", dir);
  snprintf(wal, sizeof wal, "%s/data/gateway.db-wal", dir);
  long long dbs = file_size(db), wals = file_size(wal);
  if (dbs <= 0 || wals < 0) bn_fail("%s: no database in %s/data", subject, dir);
  printf("%-16s %zu sends acknowledged in all (warm-up included); gateway.db %lld bytes, "
         "WAL %lld bytes\n", subject, all, dbs, wals);
  int rc = bn_proc_stop(&gw, 15000);
  if (rc != 0) {
    bn_print_log(strcat(dir, "/gateway.log"));
    bn_fail("the gateway (durability %s) did not stop cleanly (%d)", durability, rc);
  }
  bn_tmpdir_remove(dir);
}

/* --------------------------------------------------------------- sqlite */

typedef struct sq_shared {
  sqlite3 *db;
  pthread_mutex_t mu;
  atomic_bool stop;
  atomic_ullong count;
  atomic_int failed;
} sq_shared;

typedef struct sq_worker {
  sq_shared *sh;
  pthread_t th;
  int idx, senders;
} sq_worker;

static void *sq_run(void *arg) {
  sq_worker *w = arg;
  sq_shared *sh = w->sh;
  char conv[64];
  snprintf(conv, sizeof conv, "sq-s%d-%d", w->senders, w->idx);
  sqlite3_stmt *st = NULL;
  pthread_mutex_lock(&sh->mu);
  int rc = sqlite3_prepare_v2(sh->db, "INSERT INTO events(conv, seq, blob) VALUES(?1, ?2, ?3)", -1,
                              &st, NULL);
  pthread_mutex_unlock(&sh->mu);
  if (rc != SQLITE_OK) {
    atomic_store(&sh->failed, rc);
    return NULL;
  }
  for (sqlite3_int64 seq = 1; !atomic_load(&sh->stop); seq++) {
    pthread_mutex_lock(&sh->mu);
    sqlite3_bind_text(st, 1, conv, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, seq);
    sqlite3_bind_blob(st, 3, bn_payload, BN_PAYLOAD_LEN, SQLITE_STATIC);
    /* Autocommit: the INSERT is its own transaction, fsynced on commit. */
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    pthread_mutex_unlock(&sh->mu);
    if (rc != SQLITE_DONE) {
      atomic_store(&sh->failed, rc);
      break;
    }
    atomic_fetch_add(&sh->count, 1);
  }
  pthread_mutex_lock(&sh->mu);
  sqlite3_finalize(st);
  pthread_mutex_unlock(&sh->mu);
  return NULL;
}

static void sq_exec(sqlite3 *db, const char *sql) {
  char *err = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
    bn_fail("sqlite: %s: %s", sql, err ? err : "error");
}

static void run_sqlite(const cfg *k) {
  char dir[256], path[512];
  bn_tmpdir(dir, sizeof dir, "bench-sqlite");
  snprintf(path, sizeof path, "%s/peer.db", dir);
  sq_shared sh = {0};
  pthread_mutex_init(&sh.mu, NULL);
  if (sqlite3_open_v2(path, &sh.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                        SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK)
    bn_fail("sqlite: cannot open %s", path);
  sq_exec(sh.db, "PRAGMA journal_mode=WAL");
  sq_exec(sh.db, "PRAGMA synchronous=FULL");
  sq_exec(sh.db, "CREATE TABLE events(conv TEXT NOT NULL, seq INTEGER NOT NULL,"
                 " blob BLOB NOT NULL, PRIMARY KEY(conv, seq)) WITHOUT ROWID");
  unsigned long long total = 0;
  sq_worker *w = calloc(MAX_SENDERS, sizeof *w);
  if (!w) bn_fail("out of memory");
  for (size_t p = 0; p < N_POINTS; p++) {
    int n = senders_list[p];
    if (!point_wanted(k, n)) continue;
    atomic_store(&sh.stop, false);
    atomic_store(&sh.count, 0);
    for (int i = 0; i < n; i++) {
      w[i] = (sq_worker){.sh = &sh, .idx = i, .senders = n};
      if (pthread_create(&w[i].th, NULL, sq_run, &w[i]) != 0) bn_fail("sqlite: no thread");
    }
    sleep_ns(k->warmup_ns);
    unsigned long long c0 = atomic_load(&sh.count);
    uint64_t t0 = bench_now_ns();
    sleep_ns(k->measure_ns);
    unsigned long long c1 = atomic_load(&sh.count);
    uint64_t t1 = bench_now_ns();
    atomic_store(&sh.stop, true);
    for (int i = 0; i < n; i++) pthread_join(w[i].th, NULL);
    if (atomic_load(&sh.failed))
      bn_fail("sqlite: insert failed: %s", sqlite3_errstr(atomic_load(&sh.failed)));
    total += atomic_load(&sh.count);
    double rate = (double)(c1 - c0) * 1e9 / (double)(t1 - t0);
    report("sqlite", n, rate, (size_t)(c1 - c0));
    if (n == 1 && rate > 0)
      bench_note(BENCH,
                 "sqlite, one writer: %.0f commits/s, about %.0f us per fsynced one-row commit "
                 "on this file system; that is what sharing an fsync can save",
                 rate, 1e6 / rate);
  }
  free(w);
  /* Every committed insert is in the table. */
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(sh.db, "SELECT count(*) FROM events", -1, &st, NULL) != SQLITE_OK ||
      sqlite3_step(st) != SQLITE_ROW)
    bn_fail("sqlite: cannot count rows");
  unsigned long long rows = (unsigned long long)sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  if (rows != total) bn_fail("sqlite: %llu rows, %llu inserts committed", rows, total);
  sqlite3_close(sh.db);
  pthread_mutex_destroy(&sh.mu);
  bn_tmpdir_remove(dir);
}

int main(int argc, char **argv) {
  bn_init("bench_durability");
  lws_set_log_level(LLL_ERR, NULL);
  bool tiny = bench_tiny(argc, argv);
  cfg k = {.warmup_ns = tiny ? 200000000ull : 1000000000ull,
           .measure_ns = tiny ? 500000000ull : 5000000000ull};
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--only") && i + 1 < argc)
      k.only = argv[++i];
    else if (!strcmp(argv[i], "--senders") && i + 1 < argc)
      k.senders = atoi(argv[++i]);
    else if (strcmp(argv[i], "--tiny") != 0) {
      fprintf(stderr, "usage: bench_durability [--tiny] [--only parley-fsync|parley-nofsync|sqlite] "
                      "[--senders 1|16|256]\n");
      return 2;
    }
  }
  printf("durability: sends acknowledged per second, %d-byte text, %.1f s after %.1f s warm-up%s\n",
         BN_PAYLOAD_LEN, (double)k.measure_ns / 1e9, (double)k.warmup_ns / 1e9,
         tiny ? " (tiny: values meaningless)" : "");
  printf("%-16s %8s %10s %12s\n", "subject", "senders", "sends", "sends/s");
  if (wanted(&k, "parley-fsync")) run_parley(&k, "full", "parley-fsync");
  if (wanted(&k, "parley-nofsync")) run_parley(&k, "normal", "parley-nofsync");
  if (wanted(&k, "sqlite")) run_sqlite(&k);
  bench_note(BENCH,
             "parley %s: `parley gateway` process, group commit on; parley-fsync = durability "
             "full (WAL fsynced before each ACK), parley-nofsync = durability normal (committed, "
             "not fsynced, before each ACK). Senders are customers driven by libparley on one "
             "libuv loop in one process, one send in flight each, own conversation each",
             parley_version());
  bench_note(BENCH,
             "sqlite %s: journal_mode=WAL, synchronous=FULL, one INSERT per transaction into a "
             "(conv, seq, blob) WITHOUT ROWID table in /tmp; N threads share one connection "
             "under a mutex (SQLite commits one writer at a time)",
             sqlite3_libversion());
  return 0;
}
