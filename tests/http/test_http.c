/* Tests for the non-blocking HTTP client against a real local server
 * (tests/http/server.py on 127.0.0.1, ephemeral port). Addresses that must
 * be refused (cloud metadata, link-local) are refused before connect(), so
 * no packet is ever sent to them. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>
#include <uv.h>

#include "http/http.h"
#include <parley/error.h>

#define SERVER_PY PARLEY_SOURCE_DIR "/tests/http/server.py"
#ifndef PARLEY_PYTHON
#define PARLEY_PYTHON "python3"
#endif

static pid_t g_server_pid = -1;
static int g_server_stdin = -1;
static int g_port;
static const char *const k_local[] = {"127.0.0.1"};

/* ---- server process ---------------------------------------------------- */

static int server_start(void **state) {
  (void)state;
  int in[2], out[2];
  if (pipe(in) != 0 || pipe(out) != 0)
    return -1;
  pid_t pid = fork();
  if (pid < 0)
    return -1;
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    close(in[0]);
    close(in[1]);
    close(out[0]);
    close(out[1]);
    execlp(PARLEY_PYTHON, PARLEY_PYTHON, SERVER_PY, (char *)NULL);
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  g_server_pid = pid;
  g_server_stdin = in[1];
  fcntl(g_server_stdin, F_SETFD, FD_CLOEXEC);
  /* Wait (bounded) for the "PORT n" line. */
  char line[64];
  size_t n = 0;
  while (n < sizeof line - 1) {
    struct pollfd p = {.fd = out[0], .events = POLLIN};
    if (poll(&p, 1, 15000) <= 0)
      break;
    ssize_t r = read(out[0], line + n, 1);
    if (r <= 0)
      break;
    if (line[n] == '\n')
      break;
    n++;
  }
  line[n] = '\0';
  close(out[0]);
  if (sscanf(line, "PORT %d", &g_port) != 1) {
    fprintf(stderr, "test server did not start (got '%s')\n", line);
    return -1;
  }
  return 0;
}

static int server_stop(void **state) {
  (void)state;
  if (g_server_stdin >= 0)
    close(g_server_stdin);
  if (g_server_pid > 0) {
    for (int i = 0; i < 100; i++) {
      if (waitpid(g_server_pid, NULL, WNOHANG) == g_server_pid)
        return 0;
      usleep(50000);
    }
    kill(g_server_pid, SIGKILL);
    waitpid(g_server_pid, NULL, 0);
  }
  return 0;
}

/* ---- loop helpers ------------------------------------------------------ */

typedef struct result {
  int calls;
  int status;
  long http;
  char body[4096];
  size_t body_len;
  char error[256];
  char x_test[64];
  char location[256];
  size_t n_headers;
  double total_ms;
  uint64_t done_at; /* uv_now when the callback ran */
  uv_loop_t *loop;
} result;

static void on_done(const ph_response *r, void *ud) {
  result *res = ud;
  res->calls++;
  res->status = r->status;
  res->http = r->http_status;
  res->body_len = r->body_len;
  assert_non_null(r->body);
  snprintf(res->body, sizeof res->body, "%s", r->body);
  snprintf(res->error, sizeof res->error, "%s", r->error ? r->error : "");
  res->n_headers = r->n_headers;
  for (size_t i = 0; i < r->n_headers; i++) {
    if (!strcasecmp(r->headers[i].name, "X-Test"))
      snprintf(res->x_test, sizeof res->x_test, "%s", r->headers[i].value);
    if (!strcasecmp(r->headers[i].name, "Location"))
      snprintf(res->location, sizeof res->location, "%s", r->headers[i].value);
  }
  res->total_ms = r->total_ms;
  if (res->loop)
    res->done_at = uv_now(res->loop);
}

static void guard_tick(uv_timer_t *t) { (void)t; }

/* Runs the loop until *calls reaches want or ms pass; a guard timer makes
 * sure uv_run returns regularly so the deadline is checked. */
static void run_until(uv_loop_t *loop, const int *calls, int want, uint64_t ms) {
  uv_timer_t guard;
  uv_timer_init(loop, &guard);
  uv_timer_start(&guard, guard_tick, 10, 10);
  uint64_t end = uv_now(loop) + ms;
  while ((!calls || *calls < want) && uv_now(loop) < end)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&guard, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

static void url_for(char *buf, size_t n, const char *path) {
  snprintf(buf, n, "http://127.0.0.1:%d%s", g_port, path);
}

static ph_request local_req(const char *url) {
  return (ph_request){.url = url, .allow_hosts = k_local, .n_allow_hosts = 1,
                      .allow_private = true};
}

/* Fetches the server's connection count through the client itself. */
static long server_count(uv_loop_t *loop, ph_client *c) {
  char url[128];
  url_for(url, sizeof url, "/count");
  ph_request rq = local_req(url);
  result res = {0};
  assert_int_equal(ph_request_start(c, &rq, on_done, &res, NULL), 0);
  run_until(loop, &res.calls, 1, 10000);
  assert_int_equal(res.calls, 1);
  assert_int_equal(res.status, 0);
  return strtol(res.body, NULL, 10);
}

typedef struct fixture {
  uv_loop_t loop;
  ph_client *client;
} fixture;

static int fx_setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  if (!f || uv_loop_init(&f->loop) != 0 || ph_client_new(&f->loop, &f->client) != 0)
    return -1;
  *state = f;
  return 0;
}

static int fx_teardown(void **state) {
  fixture *f = *state;
  ph_client_free(f->client);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  /* Every handle the client opened must be closed by now. */
  int rc = uv_loop_close(&f->loop);
  free(f);
  return rc == 0 ? 0 : -1;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- tests ------------------------------------------------------------- */

static void test_get_ok(void **state) {
  fixture *f = *state;
  char url[128];
  url_for(url, sizeof url, "/ok");
  ph_request rq = local_req(url);
  result res = {0};
  uint64_t id = 0;
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, &id), 0);
  assert_true(id != 0);
  assert_int_equal(res.calls, 0); /* never called from inside start */
  assert_int_equal(ph_client_pending(f->client), 1);
  run_until(&f->loop, &res.calls, 1, 10000);
  assert_int_equal(res.calls, 1);
  assert_int_equal(res.status, 0);
  assert_int_equal(res.http, 200);
  assert_string_equal(res.body, "{\"ok\": true}");
  assert_int_equal(res.body_len, 12);
  assert_string_equal(res.x_test, "yes");
  assert_true(res.n_headers >= 3);
  assert_true(res.total_ms > 0);
  assert_string_equal(res.error, "");
  assert_int_equal(ph_client_pending(f->client), 0);
  /* A finished request can no longer be cancelled. */
  assert_int_equal(ph_request_cancel(f->client, id), PARLEY_ENOTFOUND);

  url_for(url, sizeof url, "/status?code=404");
  rq = local_req(url);
  memset(&res, 0, sizeof res);
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), 0);
  run_until(&f->loop, &res.calls, 1, 10000);
  assert_int_equal(res.status, 0); /* an HTTP error code is still a response */
  assert_int_equal(res.http, 404);
  assert_int_equal(res.body_len, 0);
  assert_string_equal(res.body, "");
}

static void test_methods_and_echo(void **state) {
  fixture *f = *state;
  char url[128];
  url_for(url, sizeof url, "/echo?x=1");
  const ph_header hdrs[] = {{"X-Custom", "abc"}, {"Content-Type", "text/plain"},
                            {"X-Empty", ""}};
  ph_request rq = local_req(url);
  rq.method = "POST";
  rq.body = "hello world";
  rq.body_len = 11;
  rq.headers = hdrs;
  rq.n_headers = 3;
  result res = {0};
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), 0);
  run_until(&f->loop, &res.calls, 1, 10000);
  assert_int_equal(res.status, 0);
  assert_int_equal(res.http, 200);
  assert_non_null(strstr(res.body, "\"method\": \"POST\""));
  assert_non_null(strstr(res.body, "\"path\": \"/echo?x=1\""));
  assert_non_null(strstr(res.body, "\"x-custom\": \"abc\""));
  assert_non_null(strstr(res.body, "\"x-empty\": \"\""));
  assert_non_null(strstr(res.body, "\"content-type\": \"text/plain\""));
  assert_non_null(strstr(res.body, "\"body\": \"hello world\""));
  assert_null(strstr(res.body, "\"expect\""));

  /* A 200 KB body arrives whole (and without a 100-continue stall). */
  size_t big = 200000;
  char *body = malloc(big);
  assert_non_null(body);
  for (size_t i = 0; i < big; i++)
    body[i] = (char)('a' + i % 26);
  rq.method = "PUT";
  rq.body = body;
  rq.body_len = big;
  rq.n_headers = 0;
  memset(&res, 0, sizeof res);
  double t0 = now_ms();
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), 0);
  run_until(&f->loop, &res.calls, 1, 10000);
  double took = now_ms() - t0;
  free(body);
  assert_int_equal(res.status, 0);
  assert_non_null(strstr(res.body, "\"method\": \"PUT\""));
  assert_non_null(strstr(res.body, "\"body_len\": 200000"));
  print_message("PUT 200 KB echo took %.1f ms\n", took);
  assert_true(took < 900);

  rq.method = "DELETE";
  rq.body = NULL;
  rq.body_len = 0;
  memset(&res, 0, sizeof res);
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), 0);
  run_until(&f->loop, &res.calls, 1, 10000);
  assert_non_null(strstr(res.body, "\"method\": \"DELETE\""));
  assert_non_null(strstr(res.body, "\"body_len\": 0"));

  url_for(url, sizeof url, "/ok");
  rq = local_req(url);
  rq.method = "HEAD";
  memset(&res, 0, sizeof res);
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), 0);
  run_until(&f->loop, &res.calls, 1, 10000);
  assert_int_equal(res.status, 0);
  assert_int_equal(res.http, 200);
  assert_int_equal(res.body_len, 0);
  assert_string_equal(res.x_test, "yes");
}

typedef struct ticker {
  int ticks;
} ticker;

static void on_tick(uv_timer_t *t) { ((ticker *)t->data)->ticks++; }

static void test_concurrent_nonblocking(void **state) {
  fixture *f = *state;
  enum { N = 8, SLOW_MS = 400 };
  char url[128];
  url_for(url, sizeof url, "/slow?ms=400");
  result res[N];
  memset(res, 0, sizeof res);
  int total = 0;
  ticker tk = {0};
  uv_timer_t timer;
  uv_timer_init(&f->loop, &timer);
  timer.data = &tk;
  uv_timer_start(&timer, on_tick, 10, 10);
  uv_update_time(&f->loop);
  uint64_t t0 = uv_now(&f->loop);
  for (int i = 0; i < N; i++) {
    ph_request rq = local_req(url);
    res[i].loop = &f->loop;
    assert_int_equal(ph_request_start(f->client, &rq, on_done, &res[i], NULL), 0);
  }
  uint64_t deadline = t0 + 10000;
  for (;;) {
    total = 0;
    for (int i = 0; i < N; i++)
      total += res[i].calls;
    if (total == N || uv_now(&f->loop) > deadline)
      break;
    uv_run(&f->loop, UV_RUN_ONCE);
  }
  uint64_t elapsed = uv_now(&f->loop) - t0;
  int ticks = tk.ticks;
  uv_close((uv_handle_t *)&timer, NULL);
  uv_run(&f->loop, UV_RUN_NOWAIT);
  assert_int_equal(total, N);
  uint64_t first = UINT64_MAX;
  for (int i = 0; i < N; i++) {
    assert_int_equal(res[i].status, 0);
    assert_string_equal(res[i].body, "slow");
    if (res[i].done_at < first)
      first = res[i].done_at;
  }
  print_message("%d x /slow?ms=%d: all done in %llu ms, %d timer ticks meanwhile\n",
                N, SLOW_MS, (unsigned long long)elapsed, ticks);
  /* Sequential would take N * 400 ms; concurrent takes about 400. */
  assert_true(elapsed < (uint64_t)N * SLOW_MS / 2);
  /* The 10 ms timer kept running while the requests were in flight: at
   * least 10 ticks happened before the first response arrived. */
  assert_true(first - t0 >= SLOW_MS - 50);
  assert_true(ticks >= 10);
}

static void test_timeout(void **state) {
  fixture *f = *state;
  char url[128];
  url_for(url, sizeof url, "/slow?ms=3000");
  ph_request rq = local_req(url);
  rq.timeout_ms = 300;
  result res = {0};
  double t0 = now_ms();
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), 0);
  run_until(&f->loop, &res.calls, 1, 10000);
  double took = now_ms() - t0;
  assert_int_equal(res.calls, 1);
  assert_int_equal(res.status, PARLEY_ETIMEOUT);
  assert_true(strlen(res.error) > 0);
  print_message("timeout after %.1f ms: %s\n", took, res.error);
  assert_true(took >= 280 && took < 2500);
}

static void test_host_not_allowed(void **state) {
  fixture *f = *state;
  long before = server_count(&f->loop, f->client);
  char url[128];
  url_for(url, sizeof url, "/ok");
  static const char *const other[] = {"example.com", "*.example.org"};
  ph_request rq = local_req(url);
  rq.allow_hosts = other;
  rq.n_allow_hosts = 2;
  result res = {0};
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), PARLEY_EDENIED);
  assert_non_null(strstr(ph_client_last_error(f->client), "127.0.0.1"));
  rq.allow_hosts = NULL;
  rq.n_allow_hosts = 0;
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), PARLEY_EDENIED);
  /* Only http and https. */
  char ftp[128];
  snprintf(ftp, sizeof ftp, "ftp://127.0.0.1:%d/x", g_port);
  rq = local_req(ftp);
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), PARLEY_EDENIED);
  assert_non_null(strstr(ph_client_last_error(f->client), "scheme"));
  rq = local_req("file:///etc/passwd");
  assert_int_not_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), 0);
  run_until(&f->loop, NULL, 0, 100);
  assert_int_equal(res.calls, 0);
  assert_int_equal(ph_client_pending(f->client), 0);
  /* No connection reached the server. */
  assert_int_equal(server_count(&f->loop, f->client), before + 1);
}

static void expect_denied(fixture *f, const char *url, const char *host,
                          bool allow_private, const char *needle) {
  /* Check the policy offline first: if it wrongly allowed the address, the
   * live request below would send a packet to it. Names (localhost) only
   * resolve to loopback, which is safe either way. */
  struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};
  struct sockaddr_in sin = {.sin_family = AF_INET};
  if (inet_pton(AF_INET, host, &sin.sin_addr) == 1)
    assert_int_equal(ph_addr_check((struct sockaddr *)&sin, allow_private, NULL, 0),
                     PARLEY_EDENIED);
  else if (inet_pton(AF_INET6, host, &sin6.sin6_addr) == 1)
    assert_int_equal(ph_addr_check((struct sockaddr *)&sin6, allow_private, NULL, 0),
                     PARLEY_EDENIED);
  else
    assert_string_equal(host, "localhost");
  const char *const allow[] = {host};
  ph_request rq = {.url = url, .allow_hosts = allow, .n_allow_hosts = 1,
                   .allow_private = allow_private, .connect_timeout_ms = 2000};
  result res = {0};
  double t0 = now_ms();
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), 0);
  run_until(&f->loop, &res.calls, 1, 10000);
  double took = now_ms() - t0;
  assert_int_equal(res.calls, 1);
  print_message("%s -> %s (%s) in %.1f ms\n", url, parley_errname(res.status),
                res.error, took);
  assert_int_equal(res.status, PARLEY_EDENIED);
  assert_non_null(strstr(res.error, needle));
  assert_int_equal(res.http, 0);
  assert_true(took < 1000); /* refused, not timed out */
}

static void test_metadata_and_link_local_refused(void **state) {
  fixture *f = *state;
  /* Even with allow_private and the host explicitly allowed. */
  expect_denied(f, "http://169.254.169.254/latest/meta-data/", "169.254.169.254",
                true, "169.254.169.254 refused: cloud metadata");
  expect_denied(f, "http://169.254.10.1/", "169.254.10.1", true, "link-local");
  expect_denied(f, "http://[fd00:ec2::254]/", "fd00:ec2::254", true,
                "cloud metadata");
  expect_denied(f, "http://[::ffff:169.254.169.254]/", "::ffff:169.254.169.254",
                true, "cloud metadata");
  expect_denied(f, "http://0.0.0.0:1/", "0.0.0.0", true, "unspecified");
}

static void test_loopback_needs_allow_private(void **state) {
  fixture *f = *state;
  long before = server_count(&f->loop, f->client);
  char url[128];
  url_for(url, sizeof url, "/ok");
  expect_denied(f, url, "127.0.0.1", false, "loopback");
  /* A name that resolves to loopback is refused the same way. */
  char named[128];
  snprintf(named, sizeof named, "http://localhost:%d/ok", g_port);
  expect_denied(f, named, "localhost", false, "loopback");
  assert_int_equal(server_count(&f->loop, f->client), before + 1);
  ph_request rq = local_req(url);
  result res = {0};
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), 0);
  run_until(&f->loop, &res.calls, 1, 10000);
  assert_int_equal(res.status, 0);
  assert_int_equal(res.http, 200);
  /* The server keeps connections alive, but one opened under
   * allow_private is not reused by a request without it. */
  expect_denied(f, url, "127.0.0.1", false, "loopback");
}

static void test_redirect_not_followed(void **state) {
  fixture *f = *state;
  long before = server_count(&f->loop, f->client);
  char url[128];
  url_for(url, sizeof url, "/redirect");
  ph_request rq = local_req(url);
  result res = {0};
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), 0);
  run_until(&f->loop, &res.calls, 1, 10000);
  assert_int_equal(res.status, 0);
  assert_int_equal(res.http, 302);
  assert_string_equal(res.location, "http://elsewhere.invalid/target");
  /* Exactly one connection: the redirect request itself. */
  assert_int_equal(server_count(&f->loop, f->client), before + 2);
}

static void test_response_limits(void **state) {
  fixture *f = *state;
  char url[128];
  result res = {0};
  ph_request rq;

  /* Announced length over the default 1 MiB cap. */
  url_for(url, sizeof url, "/big?n=2000000");
  rq = local_req(url);
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), 0);
  run_until(&f->loop, &res.calls, 1, 10000);
  assert_int_equal(res.status, PARLEY_ETOOBIG);
  assert_int_equal(res.body_len, 0);

  /* No announced length: the cap is enforced while the body streams. */
  url_for(url, sizeof url, "/stream?n=2000000");
  rq = local_req(url);
  rq.max_response_bytes = 100000;
  memset(&res, 0, sizeof res);
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), 0);
  run_until(&f->loop, &res.calls, 1, 10000);
  assert_int_equal(res.status, PARLEY_ETOOBIG);
  assert_non_null(strstr(res.error, "max_response_bytes"));

  /* Exactly at the cap is fine, and the bytes are intact. */
  url_for(url, sizeof url, "/stream?n=100000");
  rq = local_req(url);
  rq.max_response_bytes = 100000;
  memset(&res, 0, sizeof res);
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), 0);
  run_until(&f->loop, &res.calls, 1, 10000);
  assert_int_equal(res.status, 0);
  assert_int_equal(res.body_len, 100000);
  assert_memory_equal(res.body, "0123456789abcdefghijklmnopqrstuvwxyz0123", 40);

  /* Too many response headers. */
  url_for(url, sizeof url, "/headers?n=150");
  rq = local_req(url);
  memset(&res, 0, sizeof res);
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), 0);
  run_until(&f->loop, &res.calls, 1, 10000);
  assert_int_equal(res.status, PARLEY_ETOOBIG);
  assert_non_null(strstr(res.error, "headers"));
  url_for(url, sizeof url, "/headers?n=50");
  rq = local_req(url);
  memset(&res, 0, sizeof res);
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), 0);
  run_until(&f->loop, &res.calls, 1, 10000);
  assert_int_equal(res.status, 0);
  assert_true(res.n_headers >= 50);
}

static void test_cancel(void **state) {
  fixture *f = *state;
  char slow[128], ok[128];
  url_for(slow, sizeof slow, "/slow?ms=600");
  url_for(ok, sizeof ok, "/ok");
  ph_request a = local_req(slow), b = local_req(ok);
  result ra = {0}, rb = {0};
  uint64_t ida = 0, idb = 0;
  assert_int_equal(ph_request_start(f->client, &a, on_done, &ra, &ida), 0);
  assert_int_equal(ph_request_start(f->client, &b, on_done, &rb, &idb), 0);
  assert_true(ida != idb);
  run_until(&f->loop, NULL, 0, 100); /* let the slow one connect */
  assert_int_equal(ph_request_cancel(f->client, ida), 0);
  assert_int_equal(ph_request_cancel(f->client, ida), PARLEY_ENOTFOUND);
  assert_int_equal(ph_request_cancel(f->client, 987654), PARLEY_ENOTFOUND);
  run_until(&f->loop, &rb.calls, 1, 10000);
  assert_int_equal(rb.status, 0);
  /* Wait past the time the slow response would have arrived. */
  run_until(&f->loop, NULL, 0, 900);
  assert_int_equal(ra.calls, 0);
  assert_int_equal(ph_client_pending(f->client), 0);
  /* Cancelling right after start also works. */
  assert_int_equal(ph_request_start(f->client, &a, on_done, &ra, &ida), 0);
  assert_int_equal(ph_request_cancel(f->client, ida), 0);
  run_until(&f->loop, NULL, 0, 50);
  assert_int_equal(ra.calls, 0);
}

/* A callback that starts a follow-up request from inside the callback. */
typedef struct chain {
  ph_client *client;
  char url[128];
  result first, second;
} chain;

static void on_chain(const ph_response *r, void *ud) {
  chain *ch = ud;
  on_done(r, &ch->first);
  ph_request rq = local_req(ch->url);
  assert_int_equal(ph_request_start(ch->client, &rq, on_done, &ch->second, NULL), 0);
}

static void test_callback_reentry(void **state) {
  fixture *f = *state;
  chain ch = {.client = f->client};
  url_for(ch.url, sizeof ch.url, "/ok");
  ph_request rq = local_req(ch.url);
  assert_int_equal(ph_request_start(f->client, &rq, on_chain, &ch, NULL), 0);
  run_until(&f->loop, &ch.second.calls, 1, 10000);
  assert_int_equal(ch.first.calls, 1);
  assert_int_equal(ch.second.calls, 1);
  assert_int_equal(ch.second.http, 200);
}

static void test_free_with_pending(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  ph_client *c = NULL;
  assert_int_equal(ph_client_new(&loop, &c), 0);
  char url[128];
  url_for(url, sizeof url, "/slow?ms=2000");
  ph_request rq = local_req(url);
  result r1 = {0}, r2 = {0};
  assert_int_equal(ph_request_start(c, &rq, on_done, &r1, NULL), 0);
  assert_int_equal(ph_request_start(c, &rq, on_done, &r2, NULL), 0);
  run_until(&loop, NULL, 0, 150);
  ph_client_free(c);
  assert_int_equal(r1.calls, 1);
  assert_int_equal(r1.status, PARLEY_ESHUTDOWN);
  assert_int_equal(r2.calls, 1);
  assert_int_equal(r2.status, PARLEY_ESHUTDOWN);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* Freeing the client from inside a completion callback is allowed: the
 * other pending request is failed with PARLEY_ESHUTDOWN. */
typedef struct freer {
  ph_client *client;
  result first, other;
} freer;

static void on_free_in_cb(const ph_response *r, void *ud) {
  freer *fr = ud;
  on_done(r, &fr->first);
  ph_client_free(fr->client);
  assert_int_equal(fr->other.calls, 1);
  assert_int_equal(fr->other.status, PARLEY_ESHUTDOWN);
  /* Starting a request on a client being freed fails cleanly. */
  char url[128];
  url_for(url, sizeof url, "/ok");
  ph_request rq = local_req(url);
  assert_int_equal(ph_request_start(fr->client, &rq, on_done, &fr->other, NULL),
                   PARLEY_ESHUTDOWN);
}

static void test_free_inside_callback(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  freer fr = {0};
  assert_int_equal(ph_client_new(&loop, &fr.client), 0);
  char ok[128], slow[128];
  url_for(ok, sizeof ok, "/ok");
  url_for(slow, sizeof slow, "/slow?ms=2000");
  ph_request a = local_req(ok), b = local_req(slow);
  assert_int_equal(ph_request_start(fr.client, &a, on_free_in_cb, &fr, NULL), 0);
  assert_int_equal(ph_request_start(fr.client, &b, on_done, &fr.other, NULL), 0);
  run_until(&loop, &fr.first.calls, 1, 10000);
  assert_int_equal(fr.first.calls, 1);
  assert_int_equal(fr.first.status, 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_invalid_requests(void **state) {
  fixture *f = *state;
  char url[128];
  url_for(url, sizeof url, "/ok");
  result res = {0};
  ph_request rq = local_req(url);
  rq.method = "get";
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), PARLEY_EINVAL);
  rq.method = "GET";
  const ph_header inject[] = {{"X-A", "1\r\nX-Injected: 1"}};
  rq.headers = inject;
  rq.n_headers = 1;
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), PARLEY_EINVAL);
  const ph_header badname[] = {{"X A", "1"}};
  rq.headers = badname;
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), PARLEY_EINVAL);
  rq.n_headers = PH_MAX_REQUEST_HEADERS + 1;
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), PARLEY_ETOOBIG);
  rq = local_req("not a url");
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), PARLEY_EINVAL);
  rq = local_req(NULL);
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), PARLEY_EINVAL);
  rq = local_req(url);
  assert_int_equal(ph_request_start(f->client, &rq, NULL, &res, NULL), PARLEY_EINVAL);
  rq.body_len = 5;
  assert_int_equal(ph_request_start(f->client, &rq, on_done, &res, NULL), PARLEY_EINVAL);
  assert_int_equal(ph_client_pending(f->client), 0);
  assert_int_equal(res.calls, 0);
}

static int v4(const char *s, bool allow_private, char *why, size_t n) {
  struct sockaddr_in sin = {.sin_family = AF_INET};
  assert_int_equal(inet_pton(AF_INET, s, &sin.sin_addr), 1);
  return ph_addr_check((struct sockaddr *)&sin, allow_private, why, n);
}

static int v6(const char *s, bool allow_private) {
  struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};
  assert_int_equal(inet_pton(AF_INET6, s, &sin6.sin6_addr), 1);
  return ph_addr_check((struct sockaddr *)&sin6, allow_private, NULL, 0);
}

static void test_policy_helpers(void **state) {
  (void)state;
  const char *const allow[] = {"api.example.com", "*.example.org", "127.0.0.1",
                               "::1", "Trail.Example.NET."};
  assert_true(ph_host_allowed("api.example.com", allow, 5));
  assert_true(ph_host_allowed("API.Example.COM", allow, 5));
  assert_true(ph_host_allowed("api.example.com.", allow, 5));
  assert_false(ph_host_allowed("www.example.com", allow, 5));
  assert_false(ph_host_allowed("api.example.com.evil.net", allow, 5));
  assert_false(ph_host_allowed("xapi.example.com", allow, 5));
  assert_true(ph_host_allowed("a.example.org", allow, 5));
  assert_true(ph_host_allowed("b.a.example.org", allow, 5));
  assert_false(ph_host_allowed("example.org", allow, 5));
  assert_false(ph_host_allowed("evilexample.org", allow, 5));
  assert_true(ph_host_allowed("127.0.0.1", allow, 5));
  assert_true(ph_host_allowed("[::1]", allow, 5));
  assert_true(ph_host_allowed("[0:0::1]", allow, 5));
  assert_false(ph_host_allowed("127.0.0.2", allow, 5));
  assert_true(ph_host_allowed("trail.example.net", allow, 5));
  assert_false(ph_host_allowed("", allow, 5));
  assert_false(ph_host_allowed("api.example.com", NULL, 0));
  const char *const wild_ip[] = {"*.0.0.1"};
  assert_false(ph_host_allowed("127.0.0.1", wild_ip, 1));

  char why[128];
  assert_int_equal(v4("169.254.169.254", true, why, sizeof why), PARLEY_EDENIED);
  assert_string_equal(why, "address 169.254.169.254 refused: cloud metadata address");
  assert_int_equal(v4("169.254.0.1", true, NULL, 0), PARLEY_EDENIED);
  assert_int_equal(v4("0.0.0.0", true, NULL, 0), PARLEY_EDENIED);
  assert_int_equal(v4("224.0.0.1", true, NULL, 0), PARLEY_EDENIED);
  assert_int_equal(v4("255.255.255.255", true, NULL, 0), PARLEY_EDENIED);
  static const char *const priv[] = {"127.0.0.1", "127.255.0.9", "10.1.2.3",
                                     "172.16.0.1", "172.31.255.255", "192.168.1.1",
                                     "100.64.0.1", "198.18.0.1", "192.0.0.8"};
  for (size_t i = 0; i < sizeof priv / sizeof priv[0]; i++) {
    assert_int_equal(v4(priv[i], false, NULL, 0), PARLEY_EDENIED);
    assert_int_equal(v4(priv[i], true, NULL, 0), 0);
  }
  static const char *const pub[] = {"8.8.8.8", "172.32.0.1", "172.15.255.255",
                                    "100.128.0.1", "198.20.0.1", "1.1.1.1"};
  for (size_t i = 0; i < sizeof pub / sizeof pub[0]; i++)
    assert_int_equal(v4(pub[i], false, NULL, 0), 0);
  assert_int_equal(v4("127.0.0.1", false, why, sizeof why), PARLEY_EDENIED);
  assert_non_null(strstr(why, "loopback"));

  assert_int_equal(v6("fd00:ec2::254", true), PARLEY_EDENIED);
  assert_int_equal(v6("fe80::1", true), PARLEY_EDENIED);
  assert_int_equal(v6("febf::1", true), PARLEY_EDENIED);
  assert_int_equal(v6("::", true), PARLEY_EDENIED);
  assert_int_equal(v6("ff02::1", true), PARLEY_EDENIED);
  assert_int_equal(v6("::ffff:169.254.169.254", true), PARLEY_EDENIED);
  assert_int_equal(v6("64:ff9b::a9fe:a9fe", true), PARLEY_EDENIED);
  assert_int_equal(v6("2002:a9fe:a9fe::1", true), PARLEY_EDENIED);
  assert_int_equal(v6("::1", false), PARLEY_EDENIED);
  assert_int_equal(v6("::1", true), 0);
  assert_int_equal(v6("fc00::1", false), PARLEY_EDENIED);
  assert_int_equal(v6("fd12:3456::1", true), 0);
  assert_int_equal(v6("::ffff:127.0.0.1", false), PARLEY_EDENIED);
  assert_int_equal(v6("::ffff:127.0.0.1", true), 0);
  assert_int_equal(v6("::ffff:8.8.8.8", false), 0);
  assert_int_equal(v6("2001:4860:4860::8888", false), 0);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_policy_helpers),
      cmocka_unit_test_setup_teardown(test_get_ok, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_methods_and_echo, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_concurrent_nonblocking, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_timeout, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_host_not_allowed, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_metadata_and_link_local_refused, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_loopback_needs_allow_private, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_redirect_not_followed, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_response_limits, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_cancel, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_callback_reentry, fx_setup, fx_teardown),
      cmocka_unit_test(test_free_with_pending),
      cmocka_unit_test(test_free_inside_callback),
      cmocka_unit_test_setup_teardown(test_invalid_requests, fx_setup, fx_teardown),
  };
  return cmocka_run_group_tests(tests, server_start, server_stop);
}
