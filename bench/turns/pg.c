/* bench_pg: the gateway's log on PostgreSQL, one, two and three gateway
 * nodes over one database, against the same turns on SQLite.
 *
 *   bench_pg [--tiny] [--nodes N] [--one-bot]
 *
 * --nodes N runs only the PostgreSQL configuration with N nodes (1 to 3)
 * and prints its table without emitting figures (for profiling).
 * --one-bot puts a single bot on node 1 instead of one on every node (see
 * below).
 * BENCH_TURNS_KEEP keeps the gateways' directory, PARLEY_PG_KEEP the
 * cluster's.
 *
 * It is bench_turns' machinery (this file includes bench/turns/turns.c):
 * the same customers on libparley's client API, the same checks (every
 * reply once, in order, per conversation), the same closed loop and open
 * loop and the same CPU accounting from /proc, with the C echo bot
 * (bench_turns_cbot) so that the gateways and the database get as much of
 * the machine as possible. For each configuration:
 *
 * - sqlite: one `parley gateway` with its SQLite log (durability normal);
 * - postgres, nodes=1..3: a PostgreSQL cluster made here (initdb in a
 *   temporary directory, as the unprivileged user tests/pg/pgserver.c
 *   picks, listening on 127.0.0.1 only, fsync on as docs/gateway.md
 *   requires), a fresh database per configuration, N gateway processes with
 *   `storage: {kind: postgres}` and durability normal (synchronous_commit
 *   local: the WAL is flushed before each ACK), customer i on node
 *   i % N, and a fleet of the echo bot, one process on every node.
 *
 * Why a bot on every node: with one bot on node 1, a conversation whose
 * customer is on node 2 is written by two nodes in turn (the customer's
 * message by node 2, the reply by node 1), and with this gateway some of
 * those events are never handed to the connection on the other node: the
 * customer's message stays in the database without reaching the bot, or
 * the bot's reply without reaching the customer (`bench_pg --tiny --nodes 2
 * --one-bot` stalls about ten of twenty conversations within the 30 s
 * drain), which fails the run as it must. With a bot on every node each
 * conversation is written by one node, the deployment docs/scaling.md
 * recommends.
 *
 * Figures (bench "pg", subject sqlite or postgres, param nodes=N):
 * turns_per_s (closed loop), ack_p50_us and ack_p99_us (send to ACK, at 50%
 * of that rate), p50_ms and p99_ms (turn latency at 50% load),
 * gateway_cpu_us_per_turn (all nodes together), db_cpu_us_per_turn (the
 * postmaster and its children), bot_cpu_us_per_turn,
 * customers_cpu_us_per_turn (this process).
 *
 * Without PostgreSQL's server binaries it prints one line saying so and
 * exits 0 with a note in the report. The cluster and the gateways are
 * removed on exit, on SIGINT and on SIGTERM.
 */
#define BENCH_PG 1
#pragma GCC diagnostic ignored "-Wunused-function"
#include "turns.c"
#pragma GCC diagnostic warning "-Wunused-function"

#include <grp.h>
#include <pwd.h>

#include <libpq-fe.h>

#include "pgserver.h"

static pgs g_pg;

static void stop_cluster(void) {
  /* The gateways first (kill_children), so that the server is not waiting
   * on their connections; then the cluster and its directory. */
  kill_children();
  if (g_pg.running) pgs_stop_mode(&g_pg, "immediate");
  pgs_stop(&g_pg);
}

static void on_signal(int sig) {
  stop_cluster();
  signal(sig, SIG_DFL);
  raise(sig);
}

/* pgserver starts its clusters with fsync=off (a test machine's shortcut);
 * the benchmark measures what production runs, so the server is restarted
 * here with fsync on, on the same port and data. 0 or -1. */
static int restart_with_fsync(pgs *s) {
  if (pgs_stop_mode(s, "fast") != 0) return -1;
  char ctl[320], data[320], logf[320], opts[512];
  snprintf(ctl, sizeof ctl, "%s/pg_ctl", s->bindir);
  snprintf(data, sizeof data, "%s/data", s->dir);
  snprintf(logf, sizeof logf, "%s/server.log", s->dir);
  snprintf(opts, sizeof opts,
           "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=100",
           s->port, s->dir);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
      dup2(devnull, STDIN_FILENO);
      dup2(devnull, STDOUT_FILENO);
      close(devnull);
    }
    if (geteuid() == 0) {
      struct passwd *pw = getpwnam(s->user);
      if (!pw || setgroups(0, NULL) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0)
        _exit(126);
    }
    if (chdir(s->dir) != 0) _exit(126);
    execl(ctl, ctl, "-D", data, "-l", logf, "-w", "-t", "60", "-o", opts, "start", (char *)NULL);
    _exit(127);
  }
  int st = 0;
  if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fprintf(stderr, "bench_pg: pg_ctl start failed (status %d); see %s\n", st, logf);
    return -1;
  }
  s->running = true;
  return 0;
}

/* The postmaster's pid: the first line of data/postmaster.pid. */
static pid_t postmaster_pid(const pgs *s) {
  char path[320], line[32] = "";
  snprintf(path, sizeof path, "%s/data/postmaster.pid", s->dir);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  if (!fgets(line, sizeof line, f)) line[0] = 0;
  fclose(f);
  return (pid_t)atoi(line);
}

static void row(const char *name, const presult *r) {
  printf("  %-20s %9.0f %9.0f %9.0f %8.2f %8.2f %10.1f %10.1f %8.1f\n", name, r->max_tps,
         r->ack_p50_us, r->ack_p99_us, r->p50[0], r->p99[0], r->cpu_us[CPU_SERVER],
         r->cpu_us[CPU_DB], r->cpu_us[CPU_BOT]);
}

static void figures(const char *subject, const char *param, const presult *r, bool db) {
  bench_figure("pg", "turns_per_s", subject, param, r->max_tps, "turns/s");
  bench_figure("pg", "ack_p50_us", subject, param, r->ack_p50_us, "us");
  bench_figure("pg", "ack_p99_us", subject, param, r->ack_p99_us, "us");
  bench_figure("pg", "p50_ms", subject, param, r->p50[0], "ms");
  bench_figure("pg", "p99_ms", subject, param, r->p99[0], "ms");
  bench_figure("pg", "gateway_cpu_us_per_turn", subject, param, r->cpu_us[CPU_SERVER], "us");
  if (db) bench_figure("pg", "db_cpu_us_per_turn", subject, param, r->cpu_us[CPU_DB], "us");
  bench_figure("pg", "bot_cpu_us_per_turn", subject, param, r->cpu_us[CPU_BOT], "us");
  bench_figure("pg", "customers_cpu_us_per_turn", subject, param, r->cpu_us[CPU_SELF], "us");
}

int main(int argc, char **argv) {
  bool tiny = bench_tiny(argc, argv);
  int only_nodes = 0;
  bool one_bot = false;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--nodes") == 0 && i + 1 < argc) only_nodes = atoi(argv[++i]);
    else if (strcmp(argv[i], "--one-bot") == 0) one_bot = true;
    else if (strcmp(argv[i], "--tiny") != 0) {
      fprintf(stderr, "usage: bench_pg [--tiny] [--nodes 1|2|3] [--one-bot]\n");
      return 2;
    }
  }
  /* A bot on every node, each conversation's writes on one node: see the
   * head of this file for why not one bot on node 1 by default. */
  g_bot_per_node = !one_bot;
  if (only_nodes < 0 || only_nodes > MAX_NODES) {
    fprintf(stderr, "bench_pg: --nodes takes 1 to %d\n", MAX_NODES);
    return 2;
  }
  /* A few seconds per configuration: the closed loop's rate settles within
   * a second on this machine, the CPU per turn within two. */
  if (tiny) S = (settings){.convs = 20, .warm_s = 0.3, .closed_s = 1.0, .open_s = 0.8,
                           .open_warm_s = 0.2};
  else S = (settings){.convs = 300, .warm_s = 1, .closed_s = 4, .open_s = 3,
                      .open_warm_s = 0.5};
  const char *nc = getenv("BENCH_TURNS_CONVS");
  if (nc && atoi(nc) > 0 && atoi(nc) <= 100000) S.convs = atoi(nc);

  /* Skipped, with one clear line, where PostgreSQL is not installed. */
  const char *bd = getenv("PARLEY_PG_BINDIR");
  char initdb[320];
  snprintf(initdb, sizeof initdb, "%s/initdb", bd && *bd ? bd : PARLEY_PG_BINDIR);
  if (access(initdb, X_OK) != 0) {
    printf("bench_pg: skipped: PostgreSQL is not installed (no %s; scripts/bootstrap.sh "
           "installs it; PARLEY_PG_BINDIR names another bin directory)\n", initdb);
    bench_note("pg", "Skipped: PostgreSQL is not installed on this machine (no %s).", initdb);
    return 0;
  }
  if (sodium_init() < 0) die("libsodium did not initialise");
  atexit(stop_cluster);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGHUP, on_signal);
  signal(SIGPIPE, SIG_IGN);

  char loadavg[64] = "";
  FILE *lf = fopen("/proc/loadavg", "r");
  if (lf) {
    if (!fgets(loadavg, sizeof loadavg, lf)) loadavg[0] = 0;
    fclose(lf);
    loadavg[strcspn(loadavg, "\n")] = 0;
  }
  printf("bench_pg: %d conversations, closed loop %.0f s after warm-up, open loop %.0f s at "
         "50%%%s\n", S.convs, S.closed_s, S.open_s, tiny ? " (tiny)" : "");

  presult sq = {0}, pg[MAX_NODES + 1] = {{0}};
  /* Line by line, so that an interrupted run's log shows how far it got. */
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (!only_nodes) printf("sqlite, one node:\n");
  if (!only_nodes && run_parley_on(BOT_C, "normal", 1, "", 1, 0, &sq) != 0) return 1;

  if (pgs_start(&g_pg, "parley") != 0) die("cannot start PostgreSQL (see the lines above)");
  if (restart_with_fsync(&g_pg) != 0) die("cannot restart PostgreSQL with fsync on");
  pid_t pm = postmaster_pid(&g_pg);
  if (pm <= 0) die("cannot read the postmaster's pid in %s/data", g_pg.dir);
  for (int n = 1; n <= MAX_NODES; n++) {
    if (only_nodes && n != only_nodes) continue;
    /* A fresh database per configuration: every run starts from empty
     * tables, as the SQLite run does. */
    char db[32], url[256];
    snprintf(db, sizeof db, "bench_nodes%d", n);
    if (pgs_create_db(&g_pg, db) != 0) die("cannot create the database %s", db);
    snprintf(url, sizeof url, "host=127.0.0.1 port=%d dbname=%s user=%s", g_pg.port, db,
             g_pg.role);
    printf("postgres, %d node%s over one database:\n", n, n > 1 ? "s" : "");
    if (run_parley_on(BOT_C, "normal", 1, url, n, pm, &pg[n]) != 0) return 1;
  }

  printf("\nclosed loop (one turn outstanding per conversation), CPU time per turn in its "
         "window;\nACK round trip and turn latency in the open loop at 50%% of that rate:\n");
  printf("  %-20s %9s %9s %9s %8s %8s %10s %10s %8s\n", "subject", "turns/s", "ack p50us",
         "ack p99us", "p50 ms", "p99 ms", "gateway us", "db us", "bot us");
  if (!only_nodes) row("sqlite", &sq);
  for (int n = 1; n <= MAX_NODES; n++) {
    if (only_nodes && n != only_nodes) continue;
    char name[32];
    snprintf(name, sizeof name, "postgres nodes=%d", n);
    row(name, &pg[n]);
  }
  if (only_nodes) return 0; /* partial: no figures */

  figures("sqlite", "nodes=1", &sq, false);
  for (int n = 1; n <= MAX_NODES; n++) {
    char param[16];
    snprintf(param, sizeof param, "nodes=%d", n);
    figures("postgres", param, &pg[n], true);
  }
  int ver = PQlibVersion();
  bench_note("pg",
             "%d conversations, one customer client each (libparley %s) on one loop of the "
             "benchmark process, customer i on node i %% N; the C echo bot (bench_turns_cbot), "
             "one process of the same bot principal on every node. Closed loop: one turn outstanding per conversation, %.0f s "
             "window after warm-up; open loop: %.0f s at 50%% of the closed-loop maximum. "
             "Every reply checked: once, in order, per conversation.",
             S.convs, parley_version(), S.closed_s, S.open_s);
  bench_note("pg",
             "sqlite: one `parley gateway`, SQLite log, durability normal, group commit. "
             "postgres: a cluster made in a temporary directory (initdb, libpq %d.%d, fsync on, "
             "127.0.0.1 only), a fresh database per row, N `parley gateway` nodes with "
             "`storage: {kind: postgres}`, durability normal (synchronous_commit local: the "
             "WAL is flushed before each ACK), group commit. gateway us sums every node; db us "
             "is the postmaster and all its children (backends, WAL writer, checkpointer).",
             ver / 10000, ver % 100);
  bench_note("pg",
             "All of it (customers, bot, %s, PostgreSQL) on %ld shared CPUs; /proc/loadavg at "
             "the start: %s. Past two busy processes the rates measure the machine, the CPU "
             "per turn does not.",
             "nodes", sysconf(_SC_NPROCESSORS_ONLN), loadavg[0] ? loadavg : "unknown");
  printf("\nverified: %" PRIu64 " sqlite + %" PRIu64 " + %" PRIu64 " + %" PRIu64
         " postgres turns, each answered once and in order\n",
         sq.turns, pg[1].turns, pg[2].turns, pg[3].turns);
  return 0;
}
