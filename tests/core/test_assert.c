/* PARLEY_ASSERT (sdk/src/util/assert.h): in a build with PARLEY_ASSERTS
 * (Debug, sanitizers, fuzzing) a failed invariant aborts the process with
 * its expression and place on stderr; a holding one does nothing. In a
 * release build the condition is compiled out and never evaluated. Each
 * case runs in a child process so that the abort can be observed. */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util/assert.h"

#define CHECK(x)                                                       \
  do {                                                                 \
    if (!(x)) {                                                        \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #x); \
      exit(1);                                                         \
    }                                                                  \
  } while (0)

static int evaluated;

static bool counted(bool v) {
  evaluated++;
  return v;
}

/* Runs f in a child with stderr captured; returns its wait status. */
static int run_child(void (*f)(void), char *out, size_t outlen) {
  int fds[2];
  CHECK(pipe(fds) == 0);
  fflush(NULL);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], 2);
    f();
    _exit(0);
  }
  close(fds[1]);
  size_t n = 0;
  ssize_t r;
  while (n + 1 < outlen && (r = read(fds[0], out + n, outlen - 1 - n)) > 0) n += (size_t)r;
  out[n] = '\0';
  close(fds[0]);
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid);
  return status;
}

static void child_fails(void) {
  volatile int held = 3;
  PARLEY_ASSERT(held == 2);
  _exit(7); /* not reached when asserts are on */
}

static void child_holds(void) {
  volatile int held = 2;
  PARLEY_ASSERT(held == 2);
  PARLEY_ASSERT(counted(true));
  /* The exit code reports how often the condition ran. */
  _exit(evaluated);
}

int main(void) {
  char out[1024];
  int st = run_child(child_fails, out, sizeof out);
#if defined(PARLEY_ASSERTS) && PARLEY_ASSERTS
  CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
  CHECK(strstr(out, "test_assert.c:") != NULL);
  CHECK(strstr(out, "child_fails") != NULL);
  CHECK(strstr(out, "invariant failed: held == 2") != NULL);
  st = run_child(child_holds, out, sizeof out);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1);
  CHECK(out[0] == '\0');
  printf("test_assert: a failed PARLEY_ASSERT aborts with its expression; a holding one passes\n");
#else
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 7);
  CHECK(out[0] == '\0');
  st = run_child(child_holds, out, sizeof out);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  printf("test_assert: release build, PARLEY_ASSERT compiled out and its condition not evaluated\n");
#endif
  return 0;
}
