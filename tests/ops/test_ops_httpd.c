/* The ops HTTP server against real TCP clients on 127.0.0.1: routing,
 * error answers, limits, keep-alive and pipelining, asynchronous answers,
 * clients that leave before their answer, connection limits, idle timeout
 * and closing with a request still pending. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include <parley/error.h>

#include "ops/httpd.h"
#include "opsh.h"

#define MAX_SLOW 4

typedef struct ctx {
  phd_server *srv;
  bool closed;
  uv_async_t close_now; /* the script asks the loop thread to close */
  /* Asynchronous route: answered by a timer after slow_ms. */
  uint32_t slow_ms;
  uv_timer_t slow_timer[MAX_SLOW];
  phd_request *slow_req[MAX_SLOW];
  int n_slow;
  int slow_done;
  bool slow_alive[MAX_SLOW];
  int slow_rc[MAX_SLOW];
} ctx;

static void h_text(phd_request *r, void *ud) {
  const char *text = ud;
  phd_respond(r, 200, "text/plain", text, strlen(text));
}

static void h_echo(phd_request *r, void *ud) {
  (void)ud;
  size_t n;
  const uint8_t *body = phd_req_body(r, &n);
  char *out = malloc(n + 256);
  int k = snprintf(out, 256, "%s %s %s ", phd_req_method(r), phd_req_path(r),
                   phd_req_query(r) ? phd_req_query(r) : "-");
  memcpy(out + k, body, n);
  phd_respond(r, 200, "application/octet-stream", out, (size_t)k + n);
  free(out);
}

static void on_slow_timer(uv_timer_t *t) {
  ctx *x = t->data;
  int i = (int)(t - x->slow_timer);
  phd_request *r = x->slow_req[i];
  x->slow_alive[i] = phd_req_alive(r);
  x->slow_rc[i] = phd_respond(r, 200, "text/plain", "slow", 4);
  x->slow_req[i] = NULL;
  x->slow_done++;
}

static void h_slow(phd_request *r, void *ud) {
  ctx *x = ud;
  if (x->n_slow >= MAX_SLOW) {
    phd_respond(r, 500, NULL, NULL, 0);
    return;
  }
  int i = x->n_slow++;
  x->slow_req[i] = r;
  uv_timer_start(&x->slow_timer[i], on_slow_timer, x->slow_ms, 0);
}

static void on_closed(void *ud) { ((ctx *)ud)->closed = true; }

static void on_close_now(uv_async_t *a) {
  ctx *x = a->data;
  phd_server_close(x->srv, on_closed, x);
  x->srv = NULL;
}

static void start(oh_env *e, ctx *x, const phd_options *o) {
  oh_init(e);
  memset(x, 0, sizeof *x);
  e->user = x;
  x->slow_ms = 300;
  for (int i = 0; i < MAX_SLOW; i++) {
    uv_timer_init(&e->loop, &x->slow_timer[i]);
    x->slow_timer[i].data = x;
  }
  uv_async_init(&e->loop, &x->close_now, on_close_now);
  x->close_now.data = x;
  phd_options def = {0};
  assert_int_equal(phd_server_start(&e->loop, o ? o : &def, &x->srv), 0);
  e->port = phd_server_port(x->srv);
  assert_true(e->port > 0);
  assert_int_equal(phd_route(x->srv, "GET", "/hello", h_text, "hello"), 0);
  assert_int_equal(phd_route(x->srv, "GET", "/api/", h_text, "api"), 0);
  assert_int_equal(phd_route(x->srv, "GET", "/api/v2/", h_text, "v2"), 0);
  assert_int_equal(phd_route(x->srv, "POST", "/echo", h_echo, NULL), 0);
  assert_int_equal(phd_route(x->srv, "GET", "/slow", h_slow, x), 0);
  assert_int_equal(phd_route(x->srv, "bad method", "/x", h_echo, NULL), PARLEY_EINVAL);
  assert_int_equal(phd_route(x->srv, "GET", "nopath", h_echo, NULL), PARLEY_EINVAL);
}

static void finish(oh_env *e, ctx *x) {
  if (e->fail[0]) fail_msg("%s", e->fail);
  assert_false(e->timed_out);
  if (x->srv) phd_server_close(x->srv, on_closed, x);
  /* An async handle keeps the loop alive until closed. */
  uv_close((uv_handle_t *)&x->close_now, NULL);
  /* Pending slow answers fire here, then every handle closes. */
  uv_run(&e->loop, UV_RUN_DEFAULT);
  for (int i = 0; i < MAX_SLOW; i++) uv_close((uv_handle_t *)&x->slow_timer[i], NULL);
  assert_int_equal(oh_finish(e), 0);
  assert_true(x->closed);
  assert_int_equal(x->slow_done, x->n_slow);
}

#define GET(path) "GET " path " HTTP/1.1\r\nHost: t\r\n\r\n"

/* ---- routing ------------------------------------------------------------ */

static void s_routing(oh_env *e) {
  oh_resp r;
  char v[128];
  OK_INT(e, oh_request(e->port, GET("/hello"), &r), 0);
  OK_INT(e, r.status, 200);
  OK_STR(e, r.body, "hello");
  OK_STR(e, oh_header(&r, "Content-Type", v, sizeof v), "text/plain");
  oh_resp_free(&r);

  OK_INT(e, oh_request(e->port, GET("/hello/sub?x=1"), &r), 0);
  OK_STR(e, r.body, "hello");
  oh_resp_free(&r);

  OK_INT(e, oh_request(e->port, GET("/hellox"), &r), 0);
  OK_INT(e, r.status, 404);
  OK_HAS(e, r.body, "/hellox");
  oh_resp_free(&r);

  OK_INT(e, oh_request(e->port, GET("/api/thing"), &r), 0);
  OK_STR(e, r.body, "api");
  oh_resp_free(&r);
  OK_INT(e, oh_request(e->port, GET("/api/v2/thing"), &r), 0);
  OK_STR(e, r.body, "v2");
  oh_resp_free(&r);

  OK_INT(e, oh_request(e->port, "POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", &r), 0);
  OK_INT(e, r.status, 405);
  OK_STR(e, oh_header(&r, "Allow", v, sizeof v), "GET, HEAD");
  OK_HAS(e, r.body, "POST");
  oh_resp_free(&r);

  OK_INT(e, oh_request(e->port, "POST /echo?q=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc", &r), 0);
  OK_INT(e, r.status, 200);
  OK_STR(e, r.body, "POST /echo q=1 abc");
  oh_resp_free(&r);

  /* HEAD: headers of the GET answer, no body; the next answer on the same
   * connection must start cleanly, which proves no body bytes were sent. */
  oh_conn *c = malloc(sizeof *c);
  OK_INT(e, oh_connect(c, e->port), 0);
  OK_INT(e, oh_sends(c, "HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n"), 0);
  int rc = oh_read_ex(c, &r, true);
  if (rc == 0) {
    OK_INT(e, r.status, 200);
    OK_STR(e, oh_header(&r, "Content-Length", v, sizeof v), "5");
    oh_resp_free(&r);
    rc = oh_sends(c, GET("/api/x"));
  }
  if (rc == 0) rc = oh_read(c, &r);
  oh_close(c);
  free(c);
  OK_INT(e, rc, 0);
  OK_INT(e, r.status, 200);
  OK_STR(e, r.body, "api");
  oh_resp_free(&r);
}

static void test_routing(void **state) {
  (void)state;
  oh_env e;
  ctx x;
  start(&e, &x, NULL);
  oh_run(&e, s_routing, 20000);
  finish(&e, &x);
}

/* ---- malformed requests -------------------------------------------------- */

static void expect_error(oh_env *e, const char *raw, int status, const char *needle) {
  oh_conn *c = malloc(sizeof *c);
  oh_resp r = {0};
  int rc = oh_connect(c, e->port);
  if (rc == 0) rc = oh_sends(c, raw);
  if (rc == 0) rc = oh_read(c, &r);
  bool eof = rc == 0 && oh_wait_eof(c, 3000);
  oh_close(c);
  free(c);
  OK_INT(e, rc, 0);
  char v[64];
  OK_INT(e, r.status, status);
  OK_HAS(e, r.body, needle);
  OK_STR(e, oh_header(&r, "Connection", v, sizeof v), "close");
  OK_TRUE(e, eof);
  oh_resp_free(&r);
}

static void s_bad(oh_env *e) {
  expect_error(e, "GARBAGE\r\n\r\n", 400, "malformed request line");
  expect_error(e, "GET /x HTTP/1.1\r\n\r\n", 400, "missing Host");
  expect_error(e, "GET x HTTP/1.1\r\nHost: t\r\n\r\n", 400, "absolute path");
  expect_error(e, "GET /x HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\n", 400, "colon");
  expect_error(e, "GET /x HTTP/1.1\r\nHost: t\r\n folded\r\n\r\n", 400, "folding");
  expect_error(e, "GET /x HTTP/2.0\r\nHost: t\r\n\r\n", 505, "HTTP/1.1");
  expect_error(e, "GET /x FTP/1.0\r\nHost: t\r\n\r\n", 400, "version");
  expect_error(e, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n", 400,
               "Content-Length");
  expect_error(e, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
               400, "conflicting");
  expect_error(e, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
               411, "Content-Length");
  expect_error(e, "GET /x HTTP/1.1\r\nHost: t\r\nX-Ctl: a\x01z\r\n\r\n", 400, "header value");
  expect_error(e, "GET /x HTTP/1.1\r\nHost: t\r\nExpect: magic\r\n\r\n", 417, "expectation");
}

static void test_bad_requests(void **state) {
  (void)state;
  oh_env e;
  ctx x;
  start(&e, &x, NULL);
  oh_run(&e, s_bad, 40000);
  finish(&e, &x);
}

/* ---- limits -------------------------------------------------------------- */

static void s_limits(oh_env *e) {
  /* A head over 8 KiB. */
  size_t big = 9000;
  char *raw = malloc(big + 128);
  int n = sprintf(raw, "GET /hello HTTP/1.1\r\nHost: t\r\nX-Big: ");
  memset(raw + n, 'a', big);
  strcpy(raw + n + big, "\r\n\r\n");
  expect_error(e, raw, 431, "head too large");
  /* 101 header fields, in well under 8 KiB. */
  n = sprintf(raw, "GET /hello HTTP/1.1\r\nHost: t\r\n");
  for (int i = 0; i < 100; i++) n += sprintf(raw + n, "X-%d: 1\r\n", i);
  strcpy(raw + n, "\r\n");
  expect_error(e, raw, 431, "too many header fields");
  free(raw);
  if (e->fail[0]) return;
  /* A body over the configured 1024 bytes is refused from its head. */
  expect_error(e, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\n\r\n", 413,
               "too large");
  if (e->fail[0]) return;
  /* Exactly at the limit is fine. */
  char *req = malloc(2048);
  n = sprintf(req, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n");
  memset(req + n, 'b', 1024);
  req[n + 1024] = '\0';
  oh_resp r;
  int rc = oh_request(e->port, req, &r);
  free(req);
  OK_INT(e, rc, 0);
  OK_INT(e, r.status, 200);
  OK_INT(e, r.body_len, strlen("POST /echo - ") + 1024);
  oh_resp_free(&r);
  /* Expect: 100-continue gets the interim answer before the body is sent. */
  oh_conn *c = malloc(sizeof *c);
  rc = oh_connect(c, e->port);
  if (rc == 0)
    rc = oh_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
  oh_resp cont = {0};
  if (rc == 0) rc = oh_read_ex(c, &cont, true);
  if (rc == 0) rc = oh_sends(c, "ok");
  if (rc == 0) rc = oh_read(c, &r);
  oh_close(c);
  free(c);
  OK_INT(e, rc, 0);
  OK_INT(e, cont.status, 100);
  oh_resp_free(&cont);
  OK_INT(e, r.status, 200);
  OK_STR(e, r.body, "POST /echo - ok");
  oh_resp_free(&r);
}

static void test_limits(void **state) {
  (void)state;
  oh_env e;
  ctx x;
  phd_options o = {.max_body_bytes = 1024};
  start(&e, &x, &o);
  oh_run(&e, s_limits, 30000);
  finish(&e, &x);
}

static void test_bad_options(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  phd_server *s = NULL;
  phd_options o = {.host = "not-an-address"};
  assert_int_equal(phd_server_start(&loop, &o, &s), PARLEY_EINVAL);
  o = (phd_options){.max_head_bytes = PHD_MAX_HEAD_BYTES + 1};
  assert_int_equal(phd_server_start(&loop, &o, &s), PARLEY_EINVAL);
  /* A taken port is an I/O error, not a crash, and leaks nothing. */
  phd_server *a = NULL;
  assert_int_equal(phd_server_start(&loop, NULL, &a), 0);
  o = (phd_options){.port = phd_server_port(a)};
  assert_int_equal(phd_server_start(&loop, &o, &s), PARLEY_EIO);
  assert_null(s);
  phd_server_close(a, NULL, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- keep-alive and pipelining ----------------------------------------- */

static void s_keepalive(oh_env *e) {
  oh_conn *c = malloc(sizeof *c);
  oh_resp r1 = {0}, r2 = {0};
  char v[64];
  int rc = oh_connect(c, e->port);
  /* Two requests, one after the other, on one connection. */
  if (rc == 0) rc = oh_sends(c, GET("/hello"));
  if (rc == 0) rc = oh_read(c, &r1);
  if (rc == 0) rc = oh_sends(c, GET("/api/a"));
  if (rc == 0) rc = oh_read(c, &r2);
  if (rc) free(c);
  OK_INT(e, rc, 0);
  OK_STR(e, r1.body, "hello");
  OK_STR(e, oh_header(&r1, "Connection", v, sizeof v), "keep-alive");
  OK_STR(e, r2.body, "api");
  oh_resp_free(&r1);
  oh_resp_free(&r2);
  /* Two pipelined in one write, answered in order. */
  rc = oh_sends(c, GET("/api/b") GET("/hello"));
  if (rc == 0) rc = oh_read(c, &r1);
  if (rc == 0) rc = oh_read(c, &r2);
  /* Connection: close is honoured. */
  oh_resp r3 = {0};
  if (rc == 0) rc = oh_sends(c, "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
  if (rc == 0) rc = oh_read(c, &r3);
  bool eof = rc == 0 && oh_wait_eof(c, 3000);
  oh_close(c);
  OK_INT(e, rc, 0);
  OK_STR(e, r1.body, "api");
  OK_STR(e, r2.body, "hello");
  OK_STR(e, oh_header(&r3, "Connection", v, sizeof v), "close");
  OK_TRUE(e, eof);
  oh_resp_free(&r1);
  oh_resp_free(&r2);
  oh_resp_free(&r3);
  /* HTTP/1.0 closes unless asked to keep alive. */
  rc = oh_connect(c, e->port);
  if (rc == 0) rc = oh_sends(c, "GET /hello HTTP/1.0\r\n\r\n");
  if (rc == 0) rc = oh_read(c, &r1);
  eof = rc == 0 && oh_wait_eof(c, 3000);
  oh_close(c);
  free(c);
  OK_INT(e, rc, 0);
  OK_STR(e, r1.body, "hello");
  OK_TRUE(e, eof);
  oh_resp_free(&r1);
}

static void test_keepalive(void **state) {
  (void)state;
  oh_env e;
  ctx x;
  start(&e, &x, NULL);
  oh_run(&e, s_keepalive, 20000);
  finish(&e, &x);
}

/* ---- asynchronous answers ---------------------------------------------- */

static void s_async(oh_env *e) {
  oh_conn *c1 = malloc(sizeof *c1), *c2 = malloc(sizeof *c2);
  oh_resp a = {0}, b = {0}, p = {0};
  uint64_t t0 = oh_now_ms(), t_hello = 0, t_slow = 0;
  /* c1 waits for the slow route and has a request pipelined behind it. */
  int rc = oh_connect(c1, e->port);
  if (rc == 0) rc = oh_sends(c1, GET("/slow") GET("/hello"));
  if (rc == 0) rc = oh_connect(c2, e->port);
  /* Meanwhile c2 is served at once. */
  if (rc == 0) rc = oh_sends(c2, GET("/hello"));
  if (rc == 0) rc = oh_read(c2, &b);
  t_hello = oh_now_ms() - t0;
  if (rc == 0) rc = oh_read(c1, &a);
  t_slow = oh_now_ms() - t0;
  if (rc == 0) rc = oh_read(c1, &p);
  oh_close(c1);
  oh_close(c2);
  free(c1);
  free(c2);
  OK_INT(e, rc, 0);
  OK_STR(e, b.body, "hello");
  OK_STR(e, a.body, "slow");
  OK_STR(e, p.body, "hello");
  /* The slow answer waits 800 ms; the other connection is not held up
   * meanwhile, and the slow one's answer does not come early. */
  OK_TRUE(e, t_hello < t_slow);
  OK_TRUE(e, t_slow >= 780);
  oh_resp_free(&a);
  oh_resp_free(&b);
  oh_resp_free(&p);
}

static void test_async(void **state) {
  (void)state;
  oh_env e;
  ctx x;
  start(&e, &x, NULL);
  x.slow_ms = 800;
  oh_run(&e, s_async, 20000);
  assert_int_equal(x.slow_done, 1);
  assert_true(x.slow_alive[0]);
  assert_int_equal(x.slow_rc[0], 0);
  finish(&e, &x);
}

static void s_disconnect(oh_env *e) {
  oh_conn *c = malloc(sizeof *c);
  int rc = oh_connect(c, e->port);
  if (rc == 0) rc = oh_sends(c, GET("/slow"));
  oh_sleep_ms(50);
  oh_close(c);
  /* The answer is due 600 ms after the request; the server must go on
   * serving others meanwhile and after. */
  oh_sleep_ms(100);
  oh_resp r = {0};
  if (rc == 0) rc = oh_request(e->port, GET("/hello"), &r);
  free(c);
  OK_INT(e, rc, 0);
  OK_STR(e, r.body, "hello");
  oh_resp_free(&r);
}

static void test_disconnect_before_answer(void **state) {
  (void)state;
  oh_env e;
  ctx x;
  start(&e, &x, NULL);
  x.slow_ms = 600;
  oh_run(&e, s_disconnect, 20000);
  /* finish() runs the loop until the slow answer is due: the handler then
   * answers a dead request, a no-op that frees it. */
  finish(&e, &x);
  assert_int_equal(x.slow_done, 1);
  assert_false(x.slow_alive[0]);
  assert_int_equal(x.slow_rc[0], PARLEY_EDISCONNECTED);
}

static void s_close_pending(oh_env *e) {
  ctx *x = e->user;
  oh_conn *c = malloc(sizeof *c);
  int rc = oh_connect(c, e->port);
  if (rc == 0) rc = oh_sends(c, GET("/slow"));
  oh_sleep_ms(100);
  uv_async_send(&x->close_now);
  bool eof = rc == 0 && oh_wait_eof(c, 3000);
  oh_close(c);
  free(c);
  OK_INT(e, rc, 0);
  OK_TRUE(e, eof);
}

static void test_close_with_pending(void **state) {
  (void)state;
  oh_env e;
  ctx x;
  start(&e, &x, NULL);
  x.slow_ms = 1000;
  oh_run(&e, s_close_pending, 20000);
  /* The server is closing or closed; the slow answer is still to come and
   * must find a dead request, not freed memory. */
  finish(&e, &x);
  assert_int_equal(x.slow_done, 1);
  assert_false(x.slow_alive[0]);
  assert_int_equal(x.slow_rc[0], PARLEY_EDISCONNECTED);
}

/* ---- connection limit and idle timeout --------------------------------- */

static void s_maxconn(oh_env *e) {
  oh_conn *c = malloc(4 * sizeof *c);
  oh_resp r[4];
  memset(r, 0, sizeof r);
  int rc = 0;
  for (int i = 0; rc == 0 && i < 2; i++) {
    rc = oh_connect(&c[i], e->port);
    if (rc == 0) rc = oh_sends(&c[i], GET("/hello"));
    if (rc == 0) rc = oh_read(&c[i], &r[i]);
  }
  if (rc == 0) rc = oh_connect(&c[2], e->port);
  if (rc == 0) rc = oh_read(&c[2], &r[2]);
  bool eof = rc == 0 && oh_wait_eof(&c[2], 3000);
  oh_close(&c[2]);
  oh_close(&c[0]);
  oh_sleep_ms(200);
  if (rc == 0) rc = oh_connect(&c[3], e->port);
  if (rc == 0) rc = oh_sends(&c[3], GET("/hello"));
  if (rc == 0) rc = oh_read(&c[3], &r[3]);
  oh_close(&c[1]);
  oh_close(&c[3]);
  free(c);
  OK_INT(e, rc, 0);
  OK_INT(e, r[0].status, 200);
  OK_INT(e, r[1].status, 200);
  OK_INT(e, r[2].status, 503);
  OK_HAS(e, r[2].body, "too many connections");
  OK_TRUE(e, eof);
  OK_INT(e, r[3].status, 200);
  for (int i = 0; i < 4; i++) oh_resp_free(&r[i]);
}

static void test_max_connections(void **state) {
  (void)state;
  oh_env e;
  ctx x;
  phd_options o = {.max_connections = 2};
  start(&e, &x, &o);
  oh_run(&e, s_maxconn, 20000);
  finish(&e, &x);
}

static void s_idle(oh_env *e) {
  oh_conn *c = malloc(sizeof *c);
  uint64_t t0 = oh_now_ms();
  int rc = oh_connect(c, e->port);
  bool eof = rc == 0 && oh_wait_eof(c, 3000);
  uint64_t idle = oh_now_ms() - t0;
  oh_close(c);
  /* A request that never completes is cut off the same way. */
  if (rc == 0) rc = oh_connect(c, e->port);
  if (rc == 0) rc = oh_sends(c, "GET /hello HTTP/1.1\r\n");
  bool eof2 = rc == 0 && oh_wait_eof(c, 3000);
  oh_close(c);
  free(c);
  OK_INT(e, rc, 0);
  OK_TRUE(e, eof);
  OK_TRUE(e, idle >= 250);
  OK_TRUE(e, eof2);
}

static void test_idle_timeout(void **state) {
  (void)state;
  oh_env e;
  ctx x;
  phd_options o = {.idle_timeout_ms = 300};
  start(&e, &x, &o);
  oh_run(&e, s_idle, 20000);
  finish(&e, &x);
}

/* ---- input in pieces, and garbage ---------------------------------------- */

/* A small deterministic generator, so a failure can be replayed. */
static uint32_t rnd(uint32_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

static void s_fragments(oh_env *e) {
  const char *reqs = "POST /echo?a=b HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
                     GET("/hello")
                     "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n";
  uint32_t seed = 12345;
  for (int round = 0; round < 20; round++) {
    oh_conn *c = malloc(sizeof *c);
    int rc = oh_connect(c, e->port);
    /* Every request split into pieces of 1 to 7 bytes, each sent alone. */
    for (size_t off = 0, n = strlen(reqs); rc == 0 && off < n;) {
      size_t k = 1 + rnd(&seed) % 7;
      if (k > n - off) k = n - off;
      rc = oh_send(c, reqs + off, k);
      off += k;
      if (rnd(&seed) % 4 == 0) oh_sleep_ms(1);
    }
    oh_resp a = {0}, b = {0}, d = {0};
    if (rc == 0) rc = oh_read(c, &a);
    if (rc == 0) rc = oh_read(c, &b);
    if (rc == 0) rc = oh_read(c, &d);
    oh_close(c);
    free(c);
    OK_INT(e, rc, 0);
    OK_STR(e, a.body, "POST /echo a=b hello");
    OK_STR(e, b.body, "hello");
    OK_STR(e, d.body, "POST /echo - ");
    oh_resp_free(&a);
    oh_resp_free(&b);
    oh_resp_free(&d);
  }
}

static void test_fragments(void **state) {
  (void)state;
  oh_env e;
  ctx x;
  start(&e, &x, NULL);
  oh_run(&e, s_fragments, 30000);
  finish(&e, &x);
}

static void s_garbage(oh_env *e) {
  static const char alphabet[] = "GET /:\r\n \t\x01\x7f\xff" "0123456789HTTP/1.1Host:Content-Length";
  uint32_t seed = 777;
  char buf[600];
  int answered = 0;
  for (int round = 0; round < 60; round++) {
    size_t n = 1 + rnd(&seed) % (sizeof buf - 1);
    for (size_t i = 0; i < n; i++) buf[i] = alphabet[rnd(&seed) % (sizeof alphabet - 1)];
    /* Half the rounds end the head, so the parser sees a complete one. */
    if (round % 2 && n > 4) memcpy(buf + n - 4, "\r\n\r\n", 4);
    oh_conn *c = malloc(sizeof *c);
    int rc = oh_connect(c, e->port);
    if (rc == 0) rc = oh_send(c, buf, n);
    if (round % 2) {
      oh_resp r = {0};
      /* A complete head must get a 4xx/5xx answer (or, by chance, a
       * valid request's answer); the connection is then closed. */
      if (rc == 0 && oh_read(c, &r) == 0) {
        answered++;
        if (r.status < 200 || r.status > 599) {
          oh_failf(e, __FILE__, __LINE__, "round %d: status %d", round, r.status);
        }
      }
      oh_resp_free(&r);
    }
    oh_close(c);
    free(c);
    OK_INT(e, rc, 0);
    if (e->fail[0]) return;
  }
  OK_TRUE(e, answered >= 25);
  oh_resp r;
  OK_INT(e, oh_request(e->port, GET("/hello"), &r), 0);
  OK_STR(e, r.body, "hello");
  oh_resp_free(&r);
}

static void test_garbage(void **state) {
  (void)state;
  oh_env e;
  ctx x;
  phd_options o = {.idle_timeout_ms = 500};
  start(&e, &x, &o);
  oh_run(&e, s_garbage, 40000);
  finish(&e, &x);
}

/* ---- several clients at once ------------------------------------------- */

#define CLIENTS 4
#define ROUNDS 100

typedef struct client_arg {
  uint16_t port;
  int ok;
} client_arg;

static void *client_main(void *p) {
  client_arg *a = p;
  oh_conn *c = malloc(sizeof *c);
  char req[256], want[64];
  if (oh_connect(c, a->port) == 0) {
    for (int i = 0; i < ROUNDS; i++) {
      oh_resp r;
      int n = snprintf(want, sizeof want, "n=%d", i);
      snprintf(req, sizeof req, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s",
               n, want);
      if (oh_sends(c, req) != 0 || oh_read(c, &r) != 0) break;
      if (r.status == 200 && strstr(r.body, want)) a->ok++;
      oh_resp_free(&r);
    }
    oh_close(c);
  }
  /* And a burst of short connections. */
  for (int i = 0; i < 20; i++) {
    oh_resp r;
    if (oh_request(a->port, GET("/hello"), &r) == 0 && r.status == 200) a->ok++;
    oh_resp_free(&r);
  }
  free(c);
  return NULL;
}

static void s_many(oh_env *e) {
  pthread_t th[CLIENTS];
  client_arg args[CLIENTS];
  for (int i = 0; i < CLIENTS; i++) {
    args[i] = (client_arg){e->port, 0};
    pthread_create(&th[i], NULL, client_main, &args[i]);
  }
  for (int i = 0; i < CLIENTS; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < CLIENTS; i++) OK_INT(e, args[i].ok, ROUNDS + 20);
}

static void test_many_clients(void **state) {
  (void)state;
  oh_env e;
  ctx x;
  start(&e, &x, NULL);
  uint64_t t0 = oh_now_ms();
  oh_run(&e, s_many, 60000);
  print_message("%d requests from %d clients in %llu ms\n", CLIENTS * (ROUNDS + 20), CLIENTS,
                (unsigned long long)(oh_now_ms() - t0));
  finish(&e, &x);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_routing),
      cmocka_unit_test(test_bad_requests),
      cmocka_unit_test(test_limits),
      cmocka_unit_test(test_bad_options),
      cmocka_unit_test(test_keepalive),
      cmocka_unit_test(test_async),
      cmocka_unit_test(test_disconnect_before_answer),
      cmocka_unit_test(test_close_with_pending),
      cmocka_unit_test(test_max_connections),
      cmocka_unit_test(test_idle_timeout),
      cmocka_unit_test(test_fragments),
      cmocka_unit_test(test_garbage),
      cmocka_unit_test(test_many_clients),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
