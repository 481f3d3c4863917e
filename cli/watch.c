/* `parley test --watch`: runs the specs, then watches the bot's folder
 * and runs them again whenever a file in it changes. Each run is a child
 * process (fork, then the ordinary `parley test` code), so every run
 * starts from a fresh gateway, database and Lua state, exactly as a
 * single `parley test` would; a crash in one run does not end the watch.
 *
 * Changes are found by polling: every 250 ms the folder's fingerprint
 * (path, size and modification time of every file, three levels deep) is
 * compared with the last run's. Polling works the same on every file
 * system (including bind mounts and network shares where inotify stays
 * silent), and a bot folder is a few dozen files. */
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WATCH_POLL_MS 250
#define WATCH_DEPTH 3
#define WATCH_FILES_MAX 4096

static volatile sig_atomic_t stop_watch;

static void on_sigint(int sig) {
  (void)sig;
  stop_watch = 1;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
  return h;
}

/* Folds every file under dir into h; hidden files (editor swap files
 * included) are skipped. */
static uint64_t fingerprint(const char *dir, int depth, uint64_t h, size_t *nfiles) {
  DIR *d = opendir(dir);
  if (!d) return fnv(h, "?", 1);
  struct dirent *de;
  while ((de = readdir(d)) && *nfiles < WATCH_FILES_MAX) {
    if (de->d_name[0] == '.') continue;
    char p[2048];
    snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
    struct stat st;
    if (stat(p, &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      if (depth > 0) h = fingerprint(p, depth - 1, h, nfiles);
      continue;
    }
    (*nfiles)++;
    /* readdir's order is not stable across changes: combine per-file
     * hashes with addition so that the order does not matter. */
    uint64_t f = fnv(0xcbf29ce484222325ULL, p, strlen(p));
    f = fnv(f, &st.st_size, sizeof st.st_size);
    f = fnv(f, &st.st_mtim.tv_sec, sizeof st.st_mtim.tv_sec);
    f = fnv(f, &st.st_mtim.tv_nsec, sizeof st.st_mtim.tv_nsec);
    h += f;
  }
  closedir(d);
  return h;
}

static uint64_t bot_fingerprint(const char *dir) {
  size_t n = 0;
  return fingerprint(dir, WATCH_DEPTH, 0, &n);
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !stop_watch) {
  }
}

/* One run of `parley test` with argv, in a child. Returns its exit code. */
static int run_once(int argc, char **argv) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) {
    fprintf(stderr, "parley test --watch: cannot fork: %s\n", strerror(errno));
    return 1;
  }
  if (pid == 0) {
    signal(SIGINT, SIG_DFL);
    int rc = cli_test(argc, argv);
    fflush(stdout);
    fflush(stderr);
    _exit(rc);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  fprintf(stderr, "parley test --watch: the run ended by signal %d\n", WTERMSIG(status));
  return 1;
}

int cli_test_watch(int argc, char **argv, const char *bot_dir, long max_runs) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  int rc = 0;
  for (long runs = 0; !stop_watch;) {
    uint64_t before = bot_fingerprint(bot_dir);
    rc = run_once(argc, argv);
    runs++;
    if (max_runs > 0 && runs >= max_runs) break;
    printf("watching %s for changes (Ctrl-C to stop)\n", bot_dir);
    fflush(stdout);
    /* A change made while the run went on counts too: compare with the
     * fingerprint taken before it started. */
    uint64_t now = before;
    while (!stop_watch && (now = bot_fingerprint(bot_dir)) == before) sleep_ms(WATCH_POLL_MS);
    if (stop_watch) break;
    /* Let an editor finish writing (several files, or write-then-rename). */
    for (int settle = 0; settle < 8 && !stop_watch; settle++) {
      sleep_ms(WATCH_POLL_MS);
      uint64_t again = bot_fingerprint(bot_dir);
      if (again == now) break;
      now = again;
    }
    printf("change in %s: running the specs again\n", bot_dir);
    fflush(stdout);
  }
  return rc;
}
