/* The sidecar API over real HTTP on 127.0.0.1. The send hook here is a
 * fake gateway (a stand-in for parley_client_send and its ACK): it assigns
 * seqs, remembers message ids to report duplicates the way the gateway
 * does, and answers after a short timer, synchronously, never, or with an
 * error, depending on the conversation. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>
#include <sodium.h>
#include <uv.h>

#include <parley/client.h>
#include <parley/error.h>

#include "ops/sidecar.h"
#include "opsh.h"

#define MAX_SENDS 32

typedef struct sent {
  char conversation[130];
  char text[64];
  char fallback[64];
  char title[32];
  parley_content_kind kind;
  size_t n_buttons;
  uint8_t id[PARLEY_MSG_ID_LEN];
} sent;

typedef struct ctx {
  psc_server *srv;
  bool closed;
  atomic_int ready;
  uv_async_t close_now;
  /* Fake gateway state. */
  sent sends[MAX_SENDS];
  int n_sends;
  uint8_t ids[MAX_SENDS][PARLEY_MSG_ID_LEN];
  uint64_t seqs[MAX_SENDS];
  int n_ids;
  uint64_t next_seq;
  /* Sends answered by a timer, one at a time per slot. */
  uv_timer_t ack_timer[MAX_SENDS];
  psc_request *ack_req[MAX_SENDS];
  int ack_status[MAX_SENDS];
  uint8_t ack_id[MAX_SENDS][PARLEY_MSG_ID_LEN];
  int n_acks;
  psc_request *held[4]; /* never answered by the gateway */
  int n_held;
  pmet_registry *reg;
  pmet_metric *connected;
  FILE *logf; /* the sidecar's log, in memory */
  char *logbuf;
  size_t loglen;
  plog_logger *log;
} ctx;

static void gateway_store(ctx *x, const uint8_t id[16], uint64_t *seq, bool *dup) {
  for (int i = 0; i < x->n_ids; i++)
    if (memcmp(x->ids[i], id, 16) == 0) {
      *seq = x->seqs[i];
      *dup = true;
      return;
    }
  memcpy(x->ids[x->n_ids], id, 16);
  *seq = x->seqs[x->n_ids++] = ++x->next_seq;
  *dup = false;
}

static void on_ack_timer(uv_timer_t *t) {
  ctx *x = t->data;
  int i = (int)(t - x->ack_timer);
  uint64_t seq = 0;
  bool dup = false;
  if (x->ack_status[i] == 0) gateway_store(x, x->ack_id[i], &seq, &dup);
  psc_send_done(x->ack_req[i], x->ack_status[i], seq, dup);
  x->ack_req[i] = NULL;
}

static void copy(char *dst, size_t n, const char *src) { snprintf(dst, n, "%s", src ? src : ""); }

static int fake_send(void *ud, const char *conversation, const parley_content *c,
                     const uint8_t msg_id[PARLEY_MSG_ID_LEN], psc_request *req) {
  ctx *x = ud;
  if (x->n_sends < MAX_SENDS) {
    sent *s = &x->sends[x->n_sends++];
    copy(s->conversation, sizeof s->conversation, conversation);
    copy(s->text, sizeof s->text, c->text);
    copy(s->fallback, sizeof s->fallback, c->fallback);
    copy(s->title, sizeof s->title, c->title);
    s->kind = c->kind;
    s->n_buttons = c->n_buttons;
    memcpy(s->id, msg_id, 16);
  }
  if (strcmp(conversation, "busy") == 0) return PARLEY_EBACKPRESSURE;
  if (strcmp(conversation, "sync") == 0) {
    uint64_t seq;
    bool dup;
    gateway_store(x, msg_id, &seq, &dup);
    psc_send_done(req, 0, seq, dup);
    return 0;
  }
  if (strcmp(conversation, "hold") == 0 || strcmp(conversation, "slow") == 0) {
    x->held[x->n_held++] = req;
    return 0;
  }
  if (x->n_acks >= MAX_SENDS) return PARLEY_EINTERNAL;
  int i = x->n_acks++;
  x->ack_req[i] = req;
  x->ack_status[i] = strcmp(conversation, "gone") == 0 ? PARLEY_ENOTFOUND : 0;
  memcpy(x->ack_id[i], msg_id, 16);
  uint64_t delay = strcmp(conversation, "slowack") == 0 ? 300 : 20;
  uv_timer_start(&x->ack_timer[i], on_ack_timer, delay, 0);
  return 0;
}

static bool is_ready(void *ud, char *reason, size_t n) {
  ctx *x = ud;
  if (atomic_load(&x->ready)) return true;
  snprintf(reason, n, "gateway down");
  return false;
}

static void before_metrics(void *ud) {
  ctx *x = ud;
  pmet_set(x->connected, atomic_load(&x->ready) ? 1 : 0);
}

static void on_closed(void *ud) { ((ctx *)ud)->closed = true; }

static void on_close_now(uv_async_t *a) {
  ctx *x = a->data;
  psc_server_close(x->srv, on_closed, x);
  x->srv = NULL;
}

static void start(oh_env *e, ctx *x) {
  oh_init(e);
  memset(x, 0, sizeof *x);
  e->user = x;
  atomic_store(&x->ready, 1);
  for (int i = 0; i < MAX_SENDS; i++) {
    uv_timer_init(&e->loop, &x->ack_timer[i]);
    x->ack_timer[i].data = x;
  }
  uv_async_init(&e->loop, &x->close_now, on_close_now);
  x->close_now.data = x;
  x->reg = pmet_registry_new();
  x->connected = pmet_gauge(x->reg, "parley_connected", "Connected.", NULL, 0);
  x->logf = open_memstream(&x->logbuf, &x->loglen);
  x->log = plog_new(x->logf, PLOG_LOGFMT, PLOG_INFO);
  psc_hooks h = {.send = fake_send, .ready = is_ready, .before_metrics = before_metrics,
                 .metrics = x->reg, .log = x->log, .ud = x, .send_timeout_ms = 300};
  assert_int_equal(psc_server_start(&e->loop, "127.0.0.1", 0, &h, &x->srv), 0);
  e->port = psc_server_port(x->srv);
  assert_true(e->port > 0);
}

static void finish(oh_env *e, ctx *x) {
  if (e->fail[0]) fail_msg("%s", e->fail);
  assert_false(e->timed_out);
  if (x->srv) psc_server_close(x->srv, on_closed, x);
  uv_close((uv_handle_t *)&x->close_now, NULL);
  uv_run(&e->loop, UV_RUN_DEFAULT);
  /* Outcomes that arrive after the server is gone only free. */
  for (int i = 0; i < x->n_held; i++) psc_send_done(x->held[i], 0, 99, false);
  for (int i = 0; i < MAX_SENDS; i++) uv_close((uv_handle_t *)&x->ack_timer[i], NULL);
  assert_int_equal(oh_finish(e), 0);
  assert_true(x->closed);
  pmet_registry_free(x->reg);
  plog_free(x->log);
  fclose(x->logf);
  free(x->logbuf);
}

/* The documented derivation, computed here independently of sidecar.c. */
static void expected_id_hex(const char *conv, const char *key, char hex[33]) {
  const char *parts[3] = {"parley.sidecar.idempotency.v1", conv, key};
  crypto_generichash_state st;
  crypto_generichash_init(&st, NULL, 0, 16);
  for (int i = 0; i < 3; i++) {
    uint64_t n = strlen(parts[i]);
    uint8_t le[8];
    for (int k = 0; k < 8; k++) le[k] = (uint8_t)(n >> (8 * k));
    crypto_generichash_update(&st, le, 8);
    crypto_generichash_update(&st, (const unsigned char *)parts[i], n);
  }
  uint8_t id[16];
  crypto_generichash_final(&st, id, 16);
  parley_msg_id_hex(id, hex);
}

/* POSTs body to /v1/conversations/<conv>/messages; parses the JSON answer. */
static int post(oh_env *e, const char *conv, const char *extra_headers, const char *body,
                oh_resp *r, json_t **j) {
  static char raw[64 * 1024]; /* room for a body at the text limit */
  snprintf(raw, sizeof raw,
           "POST /v1/conversations/%s/messages HTTP/1.1\r\nHost: t\r\n"
           "Content-Type: application/json\r\n%sContent-Length: %zu\r\n\r\n%s",
           conv, extra_headers ? extra_headers : "", strlen(body), body);
  int rc = oh_request(e->port, raw, r);
  *j = NULL;
  if (rc == 0) *j = json_loads(r->body, 0, NULL);
  return rc == 0 && *j ? 0 : -1;
}

static const char *jstr(json_t *j, const char *k) { return json_string_value(json_object_get(j, k)); }
static long long jint(json_t *j, const char *k) { return json_integer_value(json_object_get(j, k)); }
static bool jtrue(json_t *j, const char *k) { return json_is_true(json_object_get(j, k)); }

#define POST_OK(e, conv_, hdr_, body_, want)                                         \
  oh_resp r;                                                                       \
  json_t *j;                                                                       \
  OK_INT(e, post(e, conv_, hdr_, body_, &r, &j), 0);                              \
  if (r.status != (want)) {                                                        \
    oh_failf(e, __FILE__, __LINE__, "status %d, expected %d: %s", r.status, (want), \
             r.body);                                                              \
    json_decref(j);                                                                \
    oh_resp_free(&r);                                                              \
    return;                                                                        \
  }

#define DONE() \
  do {         \
    json_decref(j); \
    oh_resp_free(&r); \
  } while (0)

static void s_idempotency(oh_env *e) {
  char want1[33], want2[33];
  expected_id_hex("c1", "k1", want1);
  expected_id_hex("c1", "k2", want2);
  {
    POST_OK(e, "c1", "Idempotency-Key: k1\r\n", "{\"text\":\"hello\"}", 200);
    OK_STR(e, jstr(j, "conversation"), "c1");
    OK_INT(e, jint(j, "seq"), 1);
    OK_TRUE(e, !jtrue(j, "duplicate"));
    OK_STR(e, jstr(j, "msg_id"), want1);
    DONE();
  }
  {
    /* A retry with the same key, given in the body this time. */
    POST_OK(e, "c1", NULL, "{\"text\":\"hello\",\"idempotency_key\":\"k1\"}", 200);
    OK_INT(e, jint(j, "seq"), 1);
    OK_TRUE(e, jtrue(j, "duplicate"));
    OK_STR(e, jstr(j, "msg_id"), want1);
    DONE();
  }
  {
    POST_OK(e, "c1", "Idempotency-Key: k2\r\n", "{\"text\":\"again\"}", 200);
    OK_INT(e, jint(j, "seq"), 2);
    OK_TRUE(e, !jtrue(j, "duplicate"));
    OK_STR(e, jstr(j, "msg_id"), want2);
    DONE();
  }
  {
    /* Without a key: a random id, a new message. */
    POST_OK(e, "c1", NULL, "{\"text\":\"nokey\"}", 200);
    OK_INT(e, jint(j, "seq"), 3);
    OK_TRUE(e, strcmp(jstr(j, "msg_id"), want1) != 0);
    DONE();
  }
  {
    /* The send completes inside the hook. */
    POST_OK(e, "sync", "Idempotency-Key: s\r\n", "{\"text\":\"now\"}", 200);
    OK_INT(e, jint(j, "seq"), 4);
    DONE();
  }
  {
    POST_OK(e, "c1", NULL,
            "{\"text\":\"fallback\",\"card\":{\"title\":\"T\",\"buttons\":"
            "[{\"label\":\"Yes\",\"payload\":\"y\"},{\"label\":\"Docs\",\"url\":\"https://x.test\"}]}}",
            200);
    DONE();
  }
}

static void test_idempotency(void **state) {
  (void)state;
  oh_env e;
  ctx x;
  start(&e, &x);
  oh_run(&e, s_idempotency, 20000);
  if (e.fail[0]) fail_msg("%s", e.fail);
  assert_int_equal(x.n_sends, 6);
  /* The hook saw the derived ids: the same key twice, the same id. */
  assert_memory_equal(x.sends[0].id, x.sends[1].id, 16);
  assert_memory_not_equal(x.sends[0].id, x.sends[2].id, 16);
  uint8_t id[16];
  psc_msg_id_from_key("c1", "k1", id);
  assert_memory_equal(x.sends[0].id, id, 16);
  psc_msg_id_from_key("c2", "k1", id);
  assert_memory_not_equal(x.sends[0].id, id, 16);
  assert_string_equal(x.sends[0].conversation, "c1");
  assert_string_equal(x.sends[0].text, "hello");
  assert_int_equal(x.sends[0].kind, PARLEY_CONTENT_TEXT);
  assert_int_equal(x.sends[5].kind, PARLEY_CONTENT_CARD);
  assert_int_equal(x.sends[5].n_buttons, 2);
  assert_string_equal(x.sends[5].title, "T");
  assert_string_equal(x.sends[5].fallback, "fallback");
  assert_string_equal(x.sends[5].text, "fallback");
  /* Each outcome is logged with what a caller needs to find its message. */
  char hex[33], line[200];
  expected_id_hex("c1", "k1", hex);
  fflush(x.logf);
  snprintf(line, sizeof line,
           "level=info msg=\"sidecar send done\" conversation=c1 seq=1 msg_id=%s "
           "status=PARLEY_EOK duplicate=false\n", hex);
  if (!strstr(x.logbuf, line)) fail_msg("log lacks %s:\n%s", line, x.logbuf);
  snprintf(line, sizeof line, "conversation=c1 seq=1 msg_id=%s status=PARLEY_EOK duplicate=true\n", hex);
  if (!strstr(x.logbuf, line)) fail_msg("log lacks %s:\n%s", line, x.logbuf);
  finish(&e, &x);
}

static void expect_400(oh_env *e, const char *conv, const char *hdr, const char *body,
                       const char *field, const char *needle) {
  POST_OK(e, conv, hdr, body, 400);
  OK_STR(e, jstr(j, "error"), "PARLEY_EINVAL");
  if (field) OK_STR(e, jstr(j, "field"), field);
  else OK_TRUE(e, json_object_get(j, "field") == NULL);
  OK_HAS(e, jstr(j, "message"), needle);
  DONE();
}

static void s_validation(oh_env *e) {
  expect_400(e, "c1", NULL, "{}", "text", "missing field \"text\"");
  expect_400(e, "c1", NULL, "{\"text\":\"\"}", "text", "empty");
  expect_400(e, "c1", NULL, "{\"text\":5}", "text", "must be a string");
  expect_400(e, "c1", NULL, "{\"txt\":\"x\"}", "txt", "unknown field");
  expect_400(e, "c1", NULL, "not json", NULL, "invalid JSON at line 1");
  expect_400(e, "c1", NULL, "[1]", NULL, "JSON object");
  expect_400(e, "c1", NULL, "{\"text\":\"a\",\"text\":\"b\"}", NULL, "duplicate");
  expect_400(e, "c1", NULL, "{\"text\":\"a\\u0000b\"}", NULL, "invalid JSON");
  expect_400(e, "c1", NULL, "{\"text\":\"t\",\"card\":{\"buttons\":[{\"label\":\"a\",\"payload\":\"p\",\"url\":\"u\"}]}}",
             "card.buttons[0]", "exactly one");
  expect_400(e, "c1", NULL, "{\"text\":\"t\",\"card\":{\"buttons\":[{\"payload\":\"p\"}]}}",
             "card.buttons[0].label", "missing");
  expect_400(e, "c1", NULL, "{\"text\":\"t\",\"card\":{\"colour\":\"red\"}}", "card.colour",
             "unknown field");
  /* The limits of a Lua reply (ops/limits.h): 16 KiB of text, 12 buttons. */
  {
    static char body[PARLEY_REPLY_TEXT_MAX + 64];
    int n = snprintf(body, sizeof body, "{\"text\":\"");
    memset(body + n, 'a', PARLEY_REPLY_TEXT_MAX + 1);
    snprintf(body + n + PARLEY_REPLY_TEXT_MAX + 1, sizeof body - (size_t)n - PARLEY_REPLY_TEXT_MAX - 1,
             "\"}");
    expect_400(e, "c1", NULL, body, "text", "longer than 16384 bytes");
    char cardb[2048];
    n = snprintf(cardb, sizeof cardb, "{\"text\":\"t\",\"card\":{\"buttons\":[");
    for (unsigned i = 0; i <= PARLEY_REPLY_BUTTONS_MAX; i++)
      n += snprintf(cardb + n, sizeof cardb - (size_t)n, "%s{\"label\":\"b%u\",\"payload\":\"p\"}",
                    i ? "," : "", i);
    snprintf(cardb + n, sizeof cardb - (size_t)n, "]}}");
    expect_400(e, "c1", NULL, cardb, "card.buttons", "at most 12 buttons");
  }
  expect_400(e, "c1", "Idempotency-Key: a\r\n", "{\"text\":\"t\",\"idempotency_key\":\"b\"}",
             "idempotency_key", "differ");
  expect_400(e, "c1", NULL, "{\"text\":\"t\",\"idempotency_key\":\"has space\"}",
             "idempotency_key", "visible ASCII");
  expect_400(e, "bad%20id", NULL, "{\"text\":\"t\"}", "conversation", "conversation id");
  if (e->fail[0]) return;
  oh_resp r;
  char v[64];
  OK_INT(e, oh_request(e->port, "POST /v1/conversations/c1/other HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", &r), 0);
  OK_INT(e, r.status, 404);
  OK_HAS(e, r.body, "PARLEY_ENOTFOUND");
  oh_resp_free(&r);
  OK_INT(e, oh_request(e->port, "GET /v1/conversations/c1/messages HTTP/1.1\r\nHost: t\r\n\r\n", &r), 0);
  OK_INT(e, r.status, 405);
  OK_STR(e, oh_header(&r, "Allow", v, sizeof v), "POST");
  oh_resp_free(&r);
  OK_INT(e, oh_request(e->port, "POST /v1/conversations/c1/messages HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi", &r), 0);
  OK_INT(e, r.status, 415);
  oh_resp_free(&r);
}

/* runtime.lua keeps its own copies of the reply limits (Lua code cannot
 * include a C header): they must state the same numbers as ops/limits.h. */
static void test_limits_match_lua(void **state) {
  (void)state;
  FILE *f = fopen(PARLEY_SOURCE_DIR "/lua/lib/runtime.lua", "r");
  assert_non_null(f);
  char line[512];
  long text = -1, buttons = -1;
  while (fgets(line, sizeof line, f)) {
    long a, b;
    if (sscanf(line, "local TEXT_MAX = %ld * %ld", &a, &b) == 2) text = a * b;
    else if (sscanf(line, "local TEXT_MAX = %ld", &a) == 1) text = a;
    if (sscanf(line, "local BUTTONS_MAX = %ld", &a) == 1) buttons = a;
  }
  fclose(f);
  assert_int_equal(text, PARLEY_REPLY_TEXT_MAX);
  assert_int_equal(buttons, PARLEY_REPLY_BUTTONS_MAX);
}

static void test_validation(void **state) {
  (void)state;
  oh_env e;
  ctx x;
  start(&e, &x);
  oh_run(&e, s_validation, 30000);
  if (e.fail[0]) fail_msg("%s", e.fail);
  /* Nothing invalid reached the gateway. */
  assert_int_equal(x.n_sends, 0);
  finish(&e, &x);
}

static void s_status(oh_env *e) {
  ctx *x = e->user;
  oh_resp g;
  char v[128];
  OK_INT(e, oh_request(e->port, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", &g), 0);
  OK_INT(e, g.status, 200);
  OK_STR(e, g.body, "ok\n");
  oh_resp_free(&g);
  OK_INT(e, oh_request(e->port, "GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n", &g), 0);
  OK_INT(e, g.status, 200);
  OK_STR(e, g.body, "ready\n");
  oh_resp_free(&g);
  OK_INT(e, oh_request(e->port, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", &g), 0);
  OK_INT(e, g.status, 200);
  OK_STR(e, oh_header(&g, "Content-Type", v, sizeof v), "text/plain; version=0.0.4; charset=utf-8");
  OK_STR(e, g.body, "# HELP parley_connected Connected.\n# TYPE parley_connected gauge\nparley_connected 1\n");
  oh_resp_free(&g);

  atomic_store(&x->ready, 0);
  OK_INT(e, oh_request(e->port, "GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n", &g), 0);
  OK_INT(e, g.status, 503);
  OK_STR(e, g.body, "not ready: gateway down\n");
  oh_resp_free(&g);
  OK_INT(e, oh_request(e->port, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", &g), 0);
  OK_HAS(e, g.body, "\nparley_connected 0\n");
  oh_resp_free(&g);
  {
    POST_OK(e, "c1", "Idempotency-Key: nr\r\n", "{\"text\":\"x\"}", 503);
    OK_STR(e, jstr(j, "error"), "PARLEY_EDISCONNECTED");
    OK_HAS(e, jstr(j, "message"), "gateway down");
    OK_STR(e, oh_header(&r, "Retry-After", v, sizeof v), "1");
    DONE();
  }
  atomic_store(&x->ready, 1);
  {
    POST_OK(e, "busy", NULL, "{\"text\":\"x\"}", 503);
    OK_STR(e, jstr(j, "error"), "PARLEY_EBACKPRESSURE");
    DONE();
  }
  {
    POST_OK(e, "gone", NULL, "{\"text\":\"x\"}", 404);
    OK_STR(e, jstr(j, "error"), "PARLEY_ENOTFOUND");
    DONE();
  }
  {
    uint64_t t0 = oh_now_ms();
    POST_OK(e, "slow", "Idempotency-Key: sl\r\n", "{\"text\":\"x\"}", 504);
    OK_STR(e, jstr(j, "error"), "PARLEY_ETIMEOUT");
    OK_HAS(e, jstr(j, "message"), "same idempotency key");
    OK_TRUE(e, oh_now_ms() - t0 >= 280);
    DONE();
  }
  /* A client that leaves before the ACK: the outcome arrives later and is
   * dropped without harm. */
  oh_conn *c = malloc(sizeof *c);
  int rc = oh_connect(c, e->port);
  if (rc == 0)
    rc = oh_sends(c, "POST /v1/conversations/slowack/messages HTTP/1.1\r\nHost: t\r\n"
                     "Content-Length: 12\r\n\r\n{\"text\":\"x\"}");
  oh_sleep_ms(50);
  oh_close(c);
  free(c);
  oh_sleep_ms(500);
  OK_INT(e, rc, 0);
  /* Still serving. */
  OK_INT(e, oh_request(e->port, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", &g), 0);
  OK_INT(e, g.status, 200);
  oh_resp_free(&g);
}

static void test_status_and_errors(void **state) {
  (void)state;
  oh_env e;
  ctx x;
  start(&e, &x);
  oh_run(&e, s_status, 30000);
  if (e.fail[0]) fail_msg("%s", e.fail);
  /* The slow send is still held and is released in finish(); the slowack
   * one's outcome arrives for a request whose client left. */
  assert_int_equal(x.n_held, 1);
  finish(&e, &x);
  assert_string_equal(x.sends[x.n_sends - 1].conversation, "slowack");
  assert_null(x.ack_req[x.n_acks - 1]);
}

static void s_close(oh_env *e) {
  ctx *x = e->user;
  oh_conn *c = malloc(sizeof *c);
  oh_resp r = {0};
  int rc = oh_connect(c, e->port);
  if (rc == 0)
    rc = oh_sends(c, "POST /v1/conversations/hold/messages HTTP/1.1\r\nHost: t\r\n"
                     "Content-Length: 12\r\n\r\n{\"text\":\"x\"}");
  oh_sleep_ms(100);
  uv_async_send(&x->close_now);
  if (rc == 0) rc = oh_read(c, &r);
  oh_close(c);
  free(c);
  OK_INT(e, rc, 0);
  OK_INT(e, r.status, 503);
  OK_HAS(e, r.body, "PARLEY_ESHUTDOWN");
  oh_resp_free(&r);
}

static void test_close_with_pending(void **state) {
  (void)state;
  oh_env e;
  ctx x;
  start(&e, &x);
  oh_run(&e, s_close, 20000);
  assert_int_equal(x.n_held, 1);
  finish(&e, &x);
}

/* ---- a real HTTP client ------------------------------------------------ */

typedef struct cbuf {
  char data[8192];
  size_t len;
} cbuf;

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  cbuf *b = ud;
  size_t k = size * n;
  if (k > sizeof b->data - 1 - b->len) k = sizeof b->data - 1 - b->len;
  memcpy(b->data + b->len, p, k);
  b->len += k;
  b->data[b->len] = '\0';
  return size * n;
}

/* The card example of docs/operations.md, sent twice with libcurl on one
 * handle: the second request reuses the connection and is a duplicate. */
static void s_curl(oh_env *e) {
  static const char body[] =
      "{\"text\": \"Rate your delivery: good or bad?\",\n"
      " \"idempotency_key\": \"order-4711-rating\",\n"
      " \"card\": {\"title\": \"How did we do?\",\n"
      "          \"buttons\": [{\"label\": \"Good\", \"payload\": \"rate:good\"},\n"
      "                      {\"label\": \"Bad\", \"payload\": \"rate:bad\"}]}}";
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%u/v1/conversations/c-123/messages", e->port);
  CURL *h = curl_easy_init();
  OK_TRUE(e, h != NULL);
  struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 5000L);
  curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
  long code[2] = {0, 0}, connects[2] = {0, 0};
  cbuf out[2];
  CURLcode rc = CURLE_OK;
  for (int i = 0; i < 2 && rc == CURLE_OK; i++) {
    out[i].len = 0;
    out[i].data[0] = '\0';
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &out[i]);
    rc = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code[i]);
    curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &connects[i]);
  }
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(h);
  OK_INT(e, rc, CURLE_OK);
  OK_INT(e, code[0], 200);
  OK_INT(e, code[1], 200);
  OK_INT(e, connects[1], 0); /* kept alive */
  OK_HAS(e, out[0].data, "\"seq\":1,\"duplicate\":false");
  OK_HAS(e, out[1].data, "\"seq\":1,\"duplicate\":true");
}

static void test_curl_client(void **state) {
  (void)state;
  oh_env e;
  ctx x;
  start(&e, &x);
  oh_run(&e, s_curl, 20000);
  if (e.fail[0]) fail_msg("%s", e.fail);
  assert_int_equal(x.n_sends, 2);
  assert_int_equal(x.sends[0].kind, PARLEY_CONTENT_CARD);
  assert_int_equal(x.sends[0].n_buttons, 2);
  assert_string_equal(x.sends[0].title, "How did we do?");
  finish(&e, &x);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_idempotency),
      cmocka_unit_test(test_limits_match_lua), cmocka_unit_test(test_validation),
      cmocka_unit_test(test_status_and_errors),
      cmocka_unit_test(test_close_with_pending),
      cmocka_unit_test(test_curl_client),
  };
  curl_global_init(CURL_GLOBAL_DEFAULT);
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  curl_global_cleanup();
  return failed;
}
