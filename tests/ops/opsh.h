/* Test harness for the ops HTTP server: the server runs on a libuv loop in
 * the test's main thread; a client script runs in a second thread and talks
 * to it over real TCP sockets on 127.0.0.1 (raw HTTP/1.1, so the tests
 * control every byte, including malformed ones).
 *
 * cmocka's assertions must not run in the client thread, so scripts record
 * their first failed check with OK_* macros and return; the main thread
 * asserts that nothing was recorded once the loop has stopped. */
#ifndef PARLEY_TEST_OPSH_H
#define PARLEY_TEST_OPSH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

typedef struct oh_env oh_env;
typedef void (*oh_script)(oh_env *e);

struct oh_env {
  uv_loop_t loop;
  uint16_t port;
  uv_async_t stop;
  uv_timer_t guard;
  bool timed_out;
  char fail[1024]; /* first failed check of the script, or "" */
  void *user;
};

/* Initialises the loop; call before starting the server on e->loop. */
void oh_init(oh_env *e);
/* Runs script in a thread while the loop turns; returns when the script
 * has finished (or after guard_ms, with timed_out set). */
void oh_run(oh_env *e, oh_script script, int guard_ms);
/* Runs the loop until every handle is closed, then closes it. Returns the
 * result of uv_loop_close (0 when nothing leaked a handle). */
int oh_finish(oh_env *e);

/* Records a failure (first one wins). */
void oh_failf(oh_env *e, const char *file, int line, const char *fmt, ...);

#define OK_TRUE(e, c)                                                      \
  do {                                                                     \
    if (!(c)) {                                                            \
      oh_failf((e), __FILE__, __LINE__, "expected %s", #c);                \
      return;                                                              \
    }                                                                      \
  } while (0)
#define OK_INT(e, a, b)                                                    \
  do {                                                                     \
    long long a_ = (long long)(a), b_ = (long long)(b);                    \
    if (a_ != b_) {                                                        \
      oh_failf((e), __FILE__, __LINE__, "%s == %lld, expected %s == %lld", \
               #a, a_, #b, b_);                                            \
      return;                                                              \
    }                                                                      \
  } while (0)
#define OK_STR(e, a, b)                                                    \
  do {                                                                     \
    const char *a_ = (a), *b_ = (b);                                       \
    if (!a_ || !b_ || strcmp(a_, b_) != 0) {                               \
      oh_failf((e), __FILE__, __LINE__, "%s == \"%s\", expected \"%s\"",   \
               #a, a_ ? a_ : "(null)", b_ ? b_ : "(null)");                \
      return;                                                              \
    }                                                                      \
  } while (0)
#define OK_HAS(e, hay, needle)                                             \
  do {                                                                     \
    const char *h_ = (hay), *n_ = (needle);                                \
    if (!h_ || !strstr(h_, n_)) {                                          \
      oh_failf((e), __FILE__, __LINE__, "%s == \"%s\" lacks \"%s\"", #hay, \
               h_ ? h_ : "(null)", n_);                                    \
      return;                                                              \
    }                                                                      \
  } while (0)

/* A client connection with its own read buffer. */
typedef struct oh_conn {
  int fd;
  char buf[1 << 16];
  size_t len;
} oh_conn;

typedef struct oh_resp {
  int status;
  char head[8192];   /* status line and headers, NUL-terminated */
  char *body;        /* malloc'd, NUL-terminated */
  size_t body_len;
} oh_resp;

/* Connects to 127.0.0.1:port with a 5 s receive timeout. -1 on failure. */
int oh_connect(oh_conn *c, uint16_t port);
int oh_send(oh_conn *c, const char *data, size_t len);
int oh_sends(oh_conn *c, const char *s);
/* Reads one response (Content-Length framed). 0, or -1 on timeout/EOF. */
int oh_read(oh_conn *c, oh_resp *r);
/* The same for an answer without a body whatever its Content-Length says
 * (HEAD, 100 Continue). */
int oh_read_ex(oh_conn *c, oh_resp *r, bool no_body);
/* True when the peer closes the connection within timeout_ms. */
bool oh_wait_eof(oh_conn *c, int timeout_ms);
void oh_close(oh_conn *c);
void oh_resp_free(oh_resp *r);
/* A response header's value (copied into out), or NULL. */
const char *oh_header(const oh_resp *r, const char *name, char *out, size_t size);
/* One request on a new connection: send, read one response, close. */
int oh_request(uint16_t port, const char *raw, oh_resp *r);
/* Milliseconds on a monotonic clock. */
uint64_t oh_now_ms(void);
void oh_sleep_ms(int ms);

#endif /* PARLEY_TEST_OPSH_H */
