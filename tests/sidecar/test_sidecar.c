/* `parley run <bot> --config sidecar.yaml` as a sidecar, with real
 * processes: a `parley gateway` child, a `parley run` child with its ops
 * port on an ephemeral port (found through the "ops listening on" line),
 * a customer client (libparley) in this process and libcurl against the
 * ops port.
 *
 * - config: an unknown key and a bad value from the environment are
 *   refused with exit 2 and "file:line: key: message".
 * - no gateway to reach: /healthz 200, /readyz 503 with the reason,
 *   parley_connected 0, and SIGTERM still exits 0.
 * - health and metrics: /healthz, /readyz, and /metrics after a few
 *   customer messages (events in, sends, commits, handler and ACK latency
 *   counts); the flag --url overrides gateway.url; the log lines are JSON.
 * - sidecar API: the same POST twice with one Idempotency-Key gets the same
 *   seq, duplicate true the second time, and the customer sees the message
 *   once; a conversation not assigned to the bot is 404. A message posted
 *   while a handler runs comes after that handler's reply.
 * - drain: SIGTERM while a handler waits on a slow HTTP service: /readyz
 *   turns 503 at once, the reply still reaches the customer, the process
 *   exits 0, and a restarted bot does not handle the message again (the
 *   commit landed: the slow service saw one request). When the drain time
 *   runs out instead, the exit code is 1 and the next process handles the
 *   message again.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>
#include <libwebsockets.h>
#include <uv.h>

#include <parley/client.h>

#include "harness.h"
#include "proc.h"

#define MAX_SEEN 128

/* The value of an unlabelled sample ("name value"), -1 when absent. */
static double metric(const char *text, const char *name) {
  size_t n = strlen(name);
  for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
    if (strncmp(p, name, n) == 0 && p[n] == ' ') return strtod(p + n + 1, NULL);
  }
  return -1;
}

static int gateway_for(tproc *gw, const char *dir, const char *bot, const char *token) {
  char yaml[1024];
  snprintf(yaml, sizeof yaml,
           "listen: 127.0.0.1\n"
           "durability: normal\n"
           "bot: %s\n"
           "principals:\n"
           "  - name: %s\n"
           "    role: bot\n"
           "    token: %s\n"
           "  - name: alice\n"
           "    role: customer\n"
           "    token: alice-secret\n",
           bot, bot, token);
  memset(gw, 0, sizeof *gw);
  int port = tproc_start_gateway(gw, dir, yaml);
  track(gw);
  return port;
}

static int exit_status(tproc *p) {
  return p->reaped && WIFEXITED(p->status) ? WEXITSTATUS(p->status) : -1;
}

static char *read_all(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  static char buf[65536];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = 0;
  fclose(f);
  return buf;
}

/* The customer. ---------------------------------------------------------- */

typedef struct seen_msg {
  uint64_t seq;
  char sender[64];
  char text[256];
} seen_msg;

typedef struct customer {
  uv_loop_t loop;
  uv_timer_t tick;
  parley_client *client;
  char conv[64];
  bool ready;
  uint64_t last_ack;
  int acks;
  seen_msg seen[MAX_SEEN];
  int n_seen;
} customer;

static void c_state(parley_client *c, parley_conn_state st, int status, void *ud) {
  (void)c;
  (void)status;
  customer *s = ud;
  if (st == PARLEY_CONN_READY) s->ready = true;
}

static void c_result(parley_client *c, const parley_send_result *r, void *sud, void *ud) {
  (void)c;
  (void)sud;
  customer *s = ud;
  if (r->status == 0) {
    s->last_ack = r->seq;
    s->acks++;
  }
}

static void c_event(parley_client *c, const parley_event *ev, void *ud) {
  (void)c;
  customer *s = ud;
  if (strcmp(ev->conversation, s->conv) || ev->kind != PARLEY_EVENT_MESSAGE) return;
  if (s->n_seen >= MAX_SEEN) return;
  seen_msg *m = &s->seen[s->n_seen++];
  m->seq = ev->seq;
  snprintf(m->sender, sizeof m->sender, "%s", ev->sender ? ev->sender : "");
  const char *t = ev->content.text ? ev->content.text : ev->content.fallback;
  snprintf(m->text, sizeof m->text, "%s", t ? t : "");
}

static void c_tick(uv_timer_t *t) { (void)t; }

static void customer_start(customer *s, int gw_port, const char *conv) {
  memset(s, 0, sizeof *s);
  snprintf(s->conv, sizeof s->conv, "%s-%d", conv, (int)getpid());
  uv_loop_init(&s->loop);
  uv_timer_init(&s->loop, &s->tick);
  uv_timer_start(&s->tick, c_tick, 20, 20);
  char url[128];
  snprintf(url, sizeof url, "ws://127.0.0.1:%d/", gw_port);
  parley_client_options o = PARLEY_CLIENT_OPTIONS_INIT;
  o.url = url;
  o.principal = "alice";
  o.token = "alice-secret";
  o.role = PARLEY_ROLE_CUSTOMER;
  o.locale = "en";
  o.loop = &s->loop;
  o.cb.on_event = c_event;
  o.cb.on_send_result = c_result;
  o.cb.on_state = c_state;
  o.user_data = s;
  assert_int_equal(parley_client_new(&o, &s->client), 0);
  assert_int_equal(parley_client_start(s->client), 0);
}

/* Runs the loop until pred(s, arg) or timeout_ms; returns pred's last
 * answer. */
static bool customer_run(customer *s, int timeout_ms, bool (*pred)(customer *, const void *),
                         const void *arg) {
  uint64_t end = uv_now(&s->loop) + (uint64_t)timeout_ms;
  while (!(pred && pred(s, arg)) && uv_now(&s->loop) < end) uv_run(&s->loop, UV_RUN_ONCE);
  return pred && pred(s, arg);
}

static bool is_ready(customer *s, const void *arg) {
  (void)arg;
  return s->ready;
}

static bool acked(customer *s, const void *arg) { return s->acks >= *(const int *)arg; }

/* Messages from sender (NULL: anyone but alice) containing text. */
static int count_from(const customer *s, const char *sender, const char *text) {
  int n = 0;
  for (int i = 0; i < s->n_seen; i++) {
    const seen_msg *m = &s->seen[i];
    bool who = sender ? strcmp(m->sender, sender) == 0 : strcmp(m->sender, "alice") != 0;
    if (who && (!text || strstr(m->text, text))) n++;
  }
  return n;
}

typedef struct want {
  const char *sender, *text;
  int n;
} want;

static bool has(customer *s, const void *arg) {
  const want *w = arg;
  return count_from(s, w->sender, w->text) >= w->n;
}

static uint64_t customer_say(customer *s, const char *text) {
  parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = text};
  int before = s->acks + 1;
  assert_int_equal(parley_client_send(s->client, s->conv, &ct, NULL, NULL, 0, NULL), 0);
  assert_true(customer_run(s, 10000, acked, &before));
  return s->last_ack;
}

static void customer_free(customer *s) {
  parley_client_stop(s->client, 1000);
  for (int i = 0; i < 100 && parley_client_state(s->client) != PARLEY_CONN_CLOSED; i++)
    uv_run(&s->loop, UV_RUN_ONCE);
  parley_client_free(s->client);
  uv_close((uv_handle_t *)&s->tick, NULL);
  uv_run(&s->loop, UV_RUN_DEFAULT);
  uv_loop_close(&s->loop);
}

/* Tests. ----------------------------------------------------------------- */

static void test_config_errors(void **unused) {
  (void)unused;
  char dir[256], cfg[512], log[512];
  assert_int_equal(tmpdir_make(dir, sizeof dir, "sidecar-cfg"), 0);
  snprintf(cfg, sizeof cfg, "%s/bad.yaml", dir);
  snprintf(log, sizeof log, "%s/bad.log", dir);
  assert_int_equal(write_file(cfg, "gateway:\n  url: ws://127.0.0.1:1/\n  tokn: x\n"), 0);
  char botdir[512];
  snprintf(botdir, sizeof botdir, "%s/bots/faq", PARLEY_SOURCE_DIR);
  char *argv[] = {(char *)PARLEY_BIN, "run", botdir, "--config", cfg, NULL};
  tproc p;
  memset(&p, 0, sizeof p);
  assert_int_equal(tproc_start(&p, argv, log), 0);
  track(&p);
  assert_int_equal(tproc_wait(&p, 15000), 0);
  assert_int_equal(exit_status(&p), 2);
  char expect[600];
  snprintf(expect, sizeof expect, "%s:3: gateway.tokn:", cfg);
  const char *text = read_all(log);
  assert_non_null(text);
  if (!strstr(text, expect)) fail_msg("expected '%s' in: %s", expect, text);

  /* A bad value from the environment names its key too. */
  assert_int_equal(write_file(cfg, "ops:\n  port: 0\n"), 0);
  setenv("PARLEY_SIDECAR_LOG__FORMAT", "xml", 1);
  assert_int_equal(tproc_start(&p, argv, log), 0);
  track(&p);
  unsetenv("PARLEY_SIDECAR_LOG__FORMAT");
  assert_int_equal(tproc_wait(&p, 15000), 0);
  assert_int_equal(exit_status(&p), 2);
  text = read_all(log);
  assert_non_null(text);
  if (!strstr(text, "log.format: must be text, json or logfmt"))
    fail_msg("expected the log.format error in: %s", text);
  tmpdir_remove(dir);
}

/* No gateway to reach: alive, not ready, with the reason; SIGTERM still
 * ends it cleanly. */
static void test_not_ready_without_gateway(void **unused) {
  (void)unused;
  char dir[256], botdir[512];
  assert_int_equal(tmpdir_make(dir, sizeof dir, "sidecar-unready"), 0);
  snprintf(botdir, sizeof botdir, "%s/bots/faq", PARLEY_SOURCE_DIR);
  tproc bot;
  int ops = start_bot(&bot, dir, "faq", botdir,
                      "gateway:\n  url: ws://127.0.0.1:1/\n  token: x\nops:\n  port: 0\n", NULL,
                      NULL);
  assert_true(ops > 0);
  hbuf b;
  assert_int_equal(http_call(ops, "/healthz", NULL, NULL, &b), 200);
  usleep(500 * 1000);
  assert_int_equal(http_call(ops, "/readyz", NULL, NULL, &b), 503);
  print_message("readyz without a gateway: %s", b.data);
  assert_true(strstr(b.data, "connecting") || strstr(b.data, "reconnecting"));
  assert_int_equal(http_call(ops, "/metrics", NULL, NULL, &b), 200);
  assert_true(metric(b.data, "parley_connected") == 0);
  assert_int_equal(tproc_kill(&bot, SIGTERM), 0);
  assert_int_equal(tproc_wait(&bot, 15000), 0);
  assert_int_equal(exit_status(&bot), 0);
  tmpdir_remove(dir);
}

static void test_health_and_metrics(void **unused) {
  (void)unused;
  char dir[256];
  assert_int_equal(tmpdir_make(dir, sizeof dir, "sidecar-metrics"), 0);
  tproc gw, bot;
  int gport = gateway_for(&gw, dir, "faq", "faq-secret");
  assert_true(gport > 0);
  char url[128], botdir[512];
  snprintf(url, sizeof url, "ws://127.0.0.1:%d/", gport);
  snprintf(botdir, sizeof botdir, "%s/bots/faq", PARLEY_SOURCE_DIR);
  setenv("SIDECAR_TEST_TOKEN", "faq-secret", 1);
  /* gateway.url is wrong on purpose: the --url flag overrides it. */
  int ops = start_bot(&bot, dir, "faq", botdir,
                      "gateway:\n"
                      "  url: ws://127.0.0.1:1/\n"
                      "  token_env: SIDECAR_TEST_TOKEN\n"
                      "ops:\n"
                      "  listen: 127.0.0.1\n"
                      "  port: 0\n"
                      "log:\n"
                      "  format: json\n"
                      "  level: info\n"
                      "shutdown:\n"
                      "  drain: 5s\n",
                      "--url", url);
  assert_true(ops > 0);

  hbuf b;
  assert_int_equal(http_call(ops, "/healthz", NULL, NULL, &b), 200);
  assert_string_equal(b.data, "ok\n");
  assert_true(wait_ready(ops, 15000));

  customer s;
  customer_start(&s, gport, "metrics");
  assert_true(customer_run(&s, 10000, is_ready, NULL));
  customer_say(&s, "how do I reset my password");
  want w1 = {"faq", NULL, 2};
  assert_true(customer_run(&s, 15000, has, &w1));
  customer_say(&s, "what are your opening hours?");
  want w2 = {"faq", NULL, 3};
  assert_true(customer_run(&s, 15000, has, &w2));

  /* Commits follow the replies shortly: poll until they are counted. */
  double commits = 0;
  for (int i = 0; i < 100; i++) {
    assert_int_equal(http_call(ops, "/metrics", NULL, NULL, &b), 200);
    commits = metric(b.data, "parley_commits_total");
    if (commits >= 1 && metric(b.data, "parley_handler_latency_seconds_count") >= 2) break;
    usleep(100 * 1000);
  }
  print_message("metrics:\n%s\n", b.data);
  assert_true(metric(b.data, "parley_events_in_total") >= 2);
  assert_true(metric(b.data, "parley_sends_total") >= 2);
  assert_true(commits >= 1);
  assert_true(metric(b.data, "parley_handler_latency_seconds_count") >= 2);
  assert_true(metric(b.data, "parley_handler_latency_seconds_sum") > 0);
  assert_true(metric(b.data, "parley_ack_latency_seconds_count") >= 2);
  assert_true(metric(b.data, "parley_connected") == 1);
  assert_true(metric(b.data, "parley_handler_errors_total") == 0);
  assert_true(metric(b.data, "parley_handler_budget_kills_total") == 0);
  assert_true(metric(b.data, "parley_outbox_size") >= 0);
  /* Per-handler series: the faq bot answers through its patterns. */
  assert_non_null(strstr(b.data, "parley_handler_runs_total{handler=\"match "));
  assert_non_null(strstr(b.data, "parley_handler_duration_seconds_count{handler=\"match "));

  customer_free(&s);
  assert_int_equal(tproc_kill(&bot, SIGTERM), 0);
  assert_int_equal(tproc_wait(&bot, 15000), 0);
  assert_int_equal(exit_status(&bot), 0);

  /* log.format json: every line of the bot's stderr is a JSON object. */
  char logp[512];
  snprintf(logp, sizeof logp, "%s/faq.log", dir);
  const char *text = read_all(logp);
  assert_non_null(text);
  assert_non_null(strstr(text, "\"msg\":\"ops listening\""));
  assert_non_null(strstr(text, "\"msg\":\"drained\""));
  for (const char *p = text; *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : p + strlen(p))
    if (*p != '\n' && *p != '{') fail_msg("a log line is not JSON: %.120s", p);

  tproc_kill(&gw, SIGTERM);
  tproc_wait(&gw, 10000);
  tproc_stop(&gw);
  unsetenv("SIDECAR_TEST_TOKEN");
  tmpdir_remove(dir);
}

static void test_api_idempotent(void **unused) {
  (void)unused;
  char dir[256];
  assert_int_equal(tmpdir_make(dir, sizeof dir, "sidecar-api"), 0);
  tproc gw, bot;
  int gport = gateway_for(&gw, dir, "faq", "faq-secret");
  assert_true(gport > 0);
  char botdir[512], cfg[512];
  snprintf(botdir, sizeof botdir, "%s/bots/faq", PARLEY_SOURCE_DIR);
  snprintf(cfg, sizeof cfg,
           "gateway:\n"
           "  url: ws://127.0.0.1:%d/\n"
           "  token: faq-secret\n"
           "  principal: faq\n"
           "ops:\n"
           "  port: 0\n"
           "log:\n"
           "  format: logfmt\n",
           gport);
  int ops = start_bot(&bot, dir, "faq", botdir, cfg, NULL, NULL);
  assert_true(ops > 0);
  assert_true(wait_ready(ops, 15000));

  customer s;
  customer_start(&s, gport, "api");
  assert_true(customer_run(&s, 10000, is_ready, NULL));
  customer_say(&s, "hello there");
  want w1 = {"faq", NULL, 1};
  assert_true(customer_run(&s, 15000, has, &w1));

  char path[256];
  snprintf(path, sizeof path, "/v1/conversations/%s/messages", s.conv);
  const char *body = "{\"text\": \"your parcel left the warehouse\"}";
  hbuf b1, b2;
  assert_int_equal(http_call(ops, path, body, "parcel-42", &b1), 200);
  assert_int_equal(http_call(ops, path, body, "parcel-42", &b2), 200);
  print_message("first: %s\nsecond: %s\n", b1.data, b2.data);
  assert_non_null(strstr(b1.data, "\"duplicate\":false"));
  assert_non_null(strstr(b2.data, "\"duplicate\":true"));
  const char *q1 = strstr(b1.data, "\"seq\":"), *q2 = strstr(b2.data, "\"seq\":");
  assert_non_null(q1);
  assert_non_null(q2);
  uint64_t seq1 = strtoull(q1 + 6, NULL, 10), seq2 = strtoull(q2 + 6, NULL, 10);
  assert_true(seq1 > 0);
  assert_true(seq1 == seq2);

  /* By template, rendered by the bot's runtime in the conversation's
   * locale, as quick replies; the same key twice is one message. */
  const char *tbody = "{\"template\": \"help\", \"quick_replies\": [\"Orders\", \"Returns\"]}";
  hbuf t1, t2, t3;
  assert_int_equal(http_call(ops, path, tbody, "menu-1", &t1), 200);
  assert_int_equal(http_call(ops, path, tbody, "menu-1", &t2), 200);
  print_message("template: %s\nagain: %s\n", t1.data, t2.data);
  assert_non_null(strstr(t1.data, "\"duplicate\":false"));
  assert_non_null(strstr(t2.data, "\"duplicate\":true"));
  /* A template the bot does not have is a 422 that says so. */
  assert_int_equal(http_call(ops, path, "{\"template\": \"no_such_key\"}", "k2", &t3), 422);
  assert_non_null(strstr(t3.data, "unknown template key 'no_such_key'"));
  want wt = {"faq", "I can answer questions about these topics", 1};
  assert_true(customer_run(&s, 10000, has, &wt));

  /* Not this bot's conversation. */
  hbuf b3;
  assert_int_equal(http_call(ops, "/v1/conversations/nobody-here/messages", body, "k", &b3), 404);
  assert_non_null(strstr(b3.data, "PARLEY_ENOTFOUND"));

  /* The customer gets the message once, at that seq. */
  want w2 = {"faq", "parcel left", 1};
  assert_true(customer_run(&s, 10000, has, &w2));
  customer_run(&s, 1000, NULL, NULL);
  assert_int_equal(count_from(&s, "faq", "parcel left"), 1);
  assert_int_equal(count_from(&s, "faq", "I can answer questions about these topics"), 1);
  for (int i = 0; i < s.n_seen; i++)
    if (strstr(s.seen[i].text, "parcel left")) assert_true(s.seen[i].seq == seq1);

  customer_free(&s);
  assert_int_equal(tproc_kill(&bot, SIGTERM), 0);
  assert_int_equal(tproc_wait(&bot, 15000), 0);
  assert_int_equal(exit_status(&bot), 0);
  tproc_kill(&gw, SIGTERM);
  tproc_wait(&gw, 10000);
  tproc_stop(&gw);
  tmpdir_remove(dir);
}

/* A slow HTTP service in a thread: counts requests and answers each after
 * SLOW_MS. */
#define SLOW_MS 2000

typedef struct slow_server {
  int fd;
  int port;
  pthread_t th;
  atomic_int requests;
  atomic_bool stop;
} slow_server;

static void *slow_main(void *arg) {
  slow_server *s = arg;
  while (!atomic_load(&s->stop)) {
    struct pollfd pfd = {.fd = s->fd, .events = POLLIN};
    if (poll(&pfd, 1, 100) <= 0) continue;
    int c = accept(s->fd, NULL, NULL);
    if (c < 0) continue;
    char req[4096];
    size_t got = 0;
    /* Read until the end of the head (bounded by the buffer and 5 s). */
    for (int i = 0; i < 50 && got < sizeof req - 1; i++) {
      struct pollfd cp = {.fd = c, .events = POLLIN};
      if (poll(&cp, 1, 100) <= 0) continue;
      ssize_t n = read(c, req + got, sizeof req - 1 - got);
      if (n <= 0) break;
      got += (size_t)n;
      req[got] = 0;
      if (strstr(req, "\r\n\r\n")) break;
    }
    atomic_fetch_add(&s->requests, 1);
    usleep(SLOW_MS * 1000);
    const char *resp = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                       "Connection: close\r\n\r\nhello";
    ssize_t w = write(c, resp, strlen(resp));
    (void)w;
    close(c);
  }
  return NULL;
}

static int slow_start(slow_server *s) {
  memset(s, 0, sizeof *s);
  s->fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  if (s->fd < 0 || bind(s->fd, (struct sockaddr *)&a, sizeof a) || listen(s->fd, 8) ||
      getsockname(s->fd, (struct sockaddr *)&a, &len))
    return -1;
  s->port = ntohs(a.sin_port);
  return pthread_create(&s->th, NULL, slow_main, s) ? -1 : 0;
}

static void slow_stop(slow_server *s) {
  atomic_store(&s->stop, true);
  pthread_join(s->th, NULL);
  close(s->fd);
}

static bool slow_called(customer *s, const void *arg) {
  (void)s;
  return atomic_load(&((slow_server *)arg)->requests) >= 1;
}

/* The three drain tests share this: a slow HTTP service that the slowbot
 * calls from its handler, a gateway for the bot, and the slowbot running as
 * a sidecar whose configuration ends with `extra`. Each test stops the bot
 * itself (what its exit must be differs); slow_fx_stop does the rest. */
typedef struct slow_fx {
  char dir[256], botdir[512], cfg[512];
  slow_server slow;
  tproc gw, bot;
  int gport, ops;
} slow_fx;

static void slow_fx_start(slow_fx *f, const char *tag, const char *extra) {
  assert_int_equal(tmpdir_make(f->dir, sizeof f->dir, tag), 0);
  assert_int_equal(slow_start(&f->slow), 0);
  char base[64];
  snprintf(base, sizeof base, "http://127.0.0.1:%d", f->slow.port);
  setenv("PARLEY_BOT_SETTINGS__BASE_URL", base, 1);
  f->gport = gateway_for(&f->gw, f->dir, "slowbot", "slow-secret");
  assert_true(f->gport > 0);
  snprintf(f->botdir, sizeof f->botdir, "%s/tests/sidecar/slowbot", PARLEY_SOURCE_DIR);
  snprintf(f->cfg, sizeof f->cfg,
           "gateway:\n  url: ws://127.0.0.1:%d/\n  token: slow-secret\nops:\n  port: 0\n%s",
           f->gport, extra);
  f->ops = start_bot(&f->bot, f->dir, "slow", f->botdir, f->cfg, NULL, NULL);
  assert_true(f->ops > 0);
  assert_true(wait_ready(f->ops, 15000));
}

static void slow_fx_stop(slow_fx *f) {
  tproc_kill(&f->gw, SIGTERM);
  tproc_wait(&f->gw, 10000);
  tproc_stop(&f->gw);
  slow_stop(&f->slow);
  unsetenv("PARLEY_BOT_SETTINGS__BASE_URL");
  tmpdir_remove(f->dir);
}

static void test_sigterm_drains(void **unused) {
  (void)unused;
  slow_fx f;
  slow_fx_start(&f, "sidecar-drain", "shutdown:\n  drain: 15s\n");

  customer s;
  customer_start(&s, f.gport, "drain");
  assert_true(customer_run(&s, 10000, is_ready, NULL));
  customer_say(&s, "where is my order");
  /* The handler now waits on the slow service: stop the bot. */
  assert_true(customer_run(&s, 15000, slow_called, &f.slow));
  assert_int_equal(tproc_kill(&f.bot, SIGTERM), 0);
  usleep(200 * 1000);
  hbuf b;
  long st = http_call(f.ops, "/readyz", NULL, NULL, &b);
  print_message("readyz while draining: %ld %s\n", st, b.data);
  assert_int_equal(st, 503);
  assert_non_null(strstr(b.data, "draining"));
  assert_int_equal(tproc_wait(&f.bot, 0), -1); /* still draining */

  want w = {"slowbot", "slow says hello", 1};
  assert_true(customer_run(&s, 20000, has, &w));
  assert_int_equal(tproc_wait(&f.bot, 20000), 0);
  assert_int_equal(exit_status(&f.bot), 0);

  /* The commit landed: a new bot process is not given the message again. */
  int ops2 = start_bot(&f.bot, f.dir, "slow2", f.botdir, f.cfg, NULL, NULL);
  assert_true(ops2 > 0);
  assert_true(wait_ready(ops2, 15000));
  customer_run(&s, 2500, NULL, NULL);
  assert_int_equal(atomic_load(&f.slow.requests), 1);
  assert_int_equal(count_from(&s, "slowbot", "slow says"), 1);

  customer_free(&s);
  assert_int_equal(tproc_kill(&f.bot, SIGTERM), 0);
  assert_int_equal(tproc_wait(&f.bot, 15000), 0);
  assert_int_equal(exit_status(&f.bot), 0);
  slow_fx_stop(&f);
}

/* A message posted while a handler runs is sent after that handler's
 * reply: it waits in the conversation's queue. */
static void test_api_ordered_after_handler(void **unused) {
  (void)unused;
  slow_fx f;
  slow_fx_start(&f, "sidecar-order", "");

  customer s;
  customer_start(&s, f.gport, "order");
  assert_true(customer_run(&s, 10000, is_ready, NULL));
  customer_say(&s, "first question");
  assert_true(customer_run(&s, 15000, slow_called, &f.slow));
  /* The handler waits on the slow service now; this answer comes only
   * after the handler's reply and this message were both stored. */
  char path[256];
  snprintf(path, sizeof path, "/v1/conversations/%s/messages", s.conv);
  hbuf b;
  assert_int_equal(http_call(f.ops, path, "{\"text\": \"an update from the shop\"}", "upd-1", &b), 200);
  const char *q = strstr(b.data, "\"seq\":");
  assert_non_null(q);
  uint64_t api_seq = strtoull(q + 6, NULL, 10);
  want w = {"slowbot", "an update from the shop", 1};
  assert_true(customer_run(&s, 10000, has, &w));
  uint64_t reply_seq = 0;
  for (int i = 0; i < s.n_seen; i++)
    if (strstr(s.seen[i].text, "slow says")) reply_seq = s.seen[i].seq;
  print_message("handler reply #%llu, API message #%llu\n", (unsigned long long)reply_seq,
                (unsigned long long)api_seq);
  assert_true(reply_seq > 0);
  assert_true(reply_seq < api_seq);

  customer_free(&s);
  assert_int_equal(tproc_kill(&f.bot, SIGTERM), 0);
  assert_int_equal(tproc_wait(&f.bot, 15000), 0);
  assert_int_equal(exit_status(&f.bot), 0);
  slow_fx_stop(&f);
}

/* The drain time runs out while the handler still waits: the process
 * exits 1, and nothing is lost: the next bot process gets the event again
 * (the slow service sees a second request) and the customer gets the
 * reply. */
static void test_drain_timeout_redelivers(void **unused) {
  (void)unused;
  slow_fx f;
  slow_fx_start(&f, "sidecar-timeout", "shutdown:\n  drain: 300ms\n");

  customer s;
  customer_start(&s, f.gport, "timeout");
  assert_true(customer_run(&s, 10000, is_ready, NULL));
  customer_say(&s, "question");
  assert_true(customer_run(&s, 15000, slow_called, &f.slow));
  assert_int_equal(tproc_kill(&f.bot, SIGTERM), 0);
  assert_int_equal(tproc_wait(&f.bot, 10000), 0);
  assert_int_equal(exit_status(&f.bot), 1);
  assert_int_equal(count_from(&s, "slowbot", "slow says"), 0);

  int ops2 = start_bot(&f.bot, f.dir, "slow2", f.botdir, f.cfg, NULL, NULL);
  assert_true(ops2 > 0);
  want w = {"slowbot", "slow says hello to question", 1};
  assert_true(customer_run(&s, 20000, has, &w));
  assert_int_equal(atomic_load(&f.slow.requests), 2);

  customer_free(&s);
  assert_int_equal(tproc_kill(&f.bot, SIGTERM), 0);
  assert_int_equal(tproc_wait(&f.bot, 15000), 0);
  slow_fx_stop(&f);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  lws_set_log_level(LLL_ERR | LLL_WARN, NULL);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_config_errors, kill_children),
      cmocka_unit_test_teardown(test_not_ready_without_gateway, kill_children),
      cmocka_unit_test_teardown(test_health_and_metrics, kill_children),
      cmocka_unit_test_teardown(test_api_idempotent, kill_children),
      cmocka_unit_test_teardown(test_api_ordered_after_handler, kill_children),
      cmocka_unit_test_teardown(test_sigterm_drains, kill_children),
      cmocka_unit_test_teardown(test_drain_timeout_redelivers, kill_children),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  curl_global_cleanup();
  return rc;
}
