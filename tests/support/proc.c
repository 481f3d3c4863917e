/* See proc.h. */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int tproc_start(tproc *p, char *const argv[], const char *stderr_path) {
  memset(p, 0, sizeof *p);
  int fds[2];
  if (pipe(fds) != 0) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    if (stderr_path) {
      int fd = open(stderr_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, STDERR_FILENO);
        close(fd);
      }
    }
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) {
      dup2(devnull, STDIN_FILENO);
      close(devnull);
    }
    execv(argv[0], argv);
    _exit(127);
  }
  close(fds[1]);
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  p->pid = pid;
  p->out_fd = fds[0];
  return 0;
}

int tproc_read_line(tproc *p, char *line, size_t size, int timeout_ms) {
  long long deadline = now_ms() + timeout_ms;
  for (;;) {
    char *nl = memchr(p->buf, '\n', p->len);
    if (nl) {
      size_t n = (size_t)(nl - p->buf);
      size_t c = n < size - 1 ? n : size - 1;
      memcpy(line, p->buf, c);
      line[c] = 0;
      memmove(p->buf, nl + 1, p->len - n - 1);
      p->len -= n + 1;
      return 1;
    }
    if (p->len == sizeof p->buf) p->len = 0; /* an overlong line is dropped */
    long long left = deadline - now_ms();
    if (left <= 0) return 0;
    struct pollfd pfd = {.fd = p->out_fd, .events = POLLIN};
    int r = poll(&pfd, 1, (int)left);
    if (r <= 0) continue;
    ssize_t got = read(p->out_fd, p->buf + p->len, sizeof p->buf - p->len);
    if (got == 0) return -1;
    if (got < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return -1;
    }
    p->len += (size_t)got;
  }
}

int tproc_wait_for(tproc *p, const char *needle, char *line, size_t size, int timeout_ms) {
  long long deadline = now_ms() + timeout_ms;
  char tmp[1024];
  for (;;) {
    long long left = deadline - now_ms();
    if (left <= 0) return 0;
    int r = tproc_read_line(p, tmp, sizeof tmp, (int)left);
    if (r < 0) return 0;
    if (r == 1 && strstr(tmp, needle)) {
      if (line) snprintf(line, size, "%s", tmp);
      return 1;
    }
  }
}

int tproc_kill(tproc *p, int sig) {
  if (p->pid <= 0 || p->reaped) return -1;
  return kill(p->pid, sig);
}

int tproc_wait(tproc *p, int timeout_ms) {
  if (p->pid <= 0) return -1;
  if (p->reaped) return 0;
  long long deadline = now_ms() + timeout_ms;
  for (;;) {
    pid_t r = waitpid(p->pid, &p->status, WNOHANG);
    if (r == p->pid) {
      p->reaped = true;
      return 0;
    }
    if (now_ms() >= deadline) return -1;
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
}

void tproc_stop(tproc *p) {
  if (p->pid > 0 && !p->reaped) {
    kill(p->pid, SIGKILL);
    tproc_wait(p, 5000);
  }
  if (p->out_fd > 0) close(p->out_fd);
  p->out_fd = -1;
}

int tmpdir_make(char *out, size_t size, const char *tag) {
  const char *tmp = getenv("TMPDIR");
  snprintf(out, size, "%s/parley-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", tag);
  return mkdtemp(out) ? 0 : -1;
}

void tmpdir_remove(const char *dir) {
  if (!dir || !*dir || strncmp(dir, "/tmp/", 5) != 0) return; /* never outside /tmp */
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

int write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (!f) return -1;
  fputs(text, f);
  return fclose(f);
}

int tproc_start_gateway(tproc *p, const char *dir, const char *yaml) {
  char cfg[512], data[512], errlog[512];
  snprintf(cfg, sizeof cfg, "%s/gateway.yaml", dir);
  snprintf(data, sizeof data, "%s/data", dir);
  snprintf(errlog, sizeof errlog, "%s/gateway.log", dir);
  mkdir(data, 0755);
  if (write_file(cfg, yaml) != 0) return 0;
  char *argv[] = {(char *)PARLEY_BIN, "gateway", "--config", cfg, "--data-dir", data,
                  "--port", "0", NULL};
  if (tproc_start(p, argv, errlog) != 0) return 0;
  char line[512];
  if (!tproc_wait_for(p, "listening on", line, sizeof line, 15000)) return 0;
  const char *colon = strrchr(line, ':');
  return colon ? atoi(colon + 1) : 0;
}
