/* Child processes for integration tests: the real `parley` binary started
 * with arguments, its stdout read line by line with a timeout, killed and
 * reaped. Every wait is bounded. */
#ifndef PARLEY_TEST_PROC_H
#define PARLEY_TEST_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct tproc {
  pid_t pid;
  int out_fd;      /* child's stdout, non-blocking */
  char buf[8192];
  size_t len;
  int status;      /* wait status once reaped */
  bool reaped;
} tproc;

/* Starts argv[0] with argv; stdout is captured, stderr inherited (or sent
 * to stderr_path when not NULL). Returns 0 or -1. */
int tproc_start(tproc *p, char *const argv[], const char *stderr_path);

/* Reads one line (without newline) within timeout_ms. Returns 1 with a
 * line, 0 on timeout, -1 at end of output. */
int tproc_read_line(tproc *p, char *line, size_t size, int timeout_ms);

/* Waits for a line containing `needle`; copies it to line. 1 found, 0 not. */
int tproc_wait_for(tproc *p, const char *needle, char *line, size_t size, int timeout_ms);

/* Sends a signal; tproc_wait reaps within timeout_ms (-1: still running). */
int tproc_kill(tproc *p, int sig);
int tproc_wait(tproc *p, int timeout_ms);
/* SIGKILL if still running, then reap. */
void tproc_stop(tproc *p);

/* A new empty temp directory (mkdtemp) in out; rm -rf of such a dir. */
int tmpdir_make(char *out, size_t size, const char *tag);
void tmpdir_remove(const char *dir);

/* Writes text to path. */
int write_file(const char *path, const char *text);

/* Starts `parley gateway --config <dir>/gateway.yaml --data-dir <dir>/data
 * --port 0` with the given YAML and returns its port (0 on failure). */
int tproc_start_gateway(tproc *p, const char *dir, const char *yaml);

#endif
