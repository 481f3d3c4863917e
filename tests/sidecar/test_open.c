/* Proactive conversations with real processes: a `parley gateway` child
 * with a `proactive:` policy, `parley run` with a bot made here (English
 * and French templates, a timer that opens a conversation from Lua) and
 * its sidecar API, customers from libparley in this process.
 *
 * - POST /v1/conversations for a customer the policy allows, online with
 *   locale fr: 200 with a new conversation id; the customer's connection
 *   receives OPENED (the customer, the bot as sender) and the first
 *   message, rendered in French with its quick replies.
 * - The same idempotency key again: the same conversation and seq,
 *   duplicate: true, and the customer sees the message once.
 * - A customer outside the policy: 403 PARLEY_EFORBIDDEN naming the
 *   policy, and the gateway stored nothing for it.
 * - An offline customer whose earlier conversation is in French: the
 *   message is in French and arrives when the customer connects again.
 * - A limit (13 quick replies) and an unknown template key: 422 before
 *   anything is opened; no key: 400.
 * - From Lua: a handler sets a timer whose handler calls
 *   ctx:open_conversation; the customer gets the new conversation.
 * - From C (parley_client_open, a second bot principal): the OPENED seq,
 *   the Assign with the customer's locale and epoch 1, a first message
 *   with that epoch; the same id again is a duplicate; another id for an
 *   existing conversation, a customer outside the policy and an overlong
 *   locale are refused; a customer client cannot open.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>
#include <libwebsockets.h>
#include <uv.h>

#include <parley/client.h>

#include "harness.h"
#include "proc.h"

static int exit_status(tproc *p) {
  return p->reaped && WIFEXITED(p->status) ? WEXITSTATUS(p->status) : -1;
}

/* A customer that records every conversation's messages and openings. */

#define MAX_SEEN 64

typedef struct seen_ev {
  char conv[132];
  uint64_t seq;
  int kind;
  char sender[64], customer[64], text[512];
  size_t n_buttons;
} seen_ev;

typedef struct customer {
  uv_loop_t loop;
  uv_timer_t tick;
  parley_client *client;
  bool ready;
  int acks;
  seen_ev seen[MAX_SEEN];
  int n_seen;
} customer;

static void c_state(parley_client *c, parley_conn_state st, int status, void *ud) {
  (void)c, (void)status;
  customer *s = ud;
  if (st == PARLEY_CONN_READY) s->ready = true;
}

static void c_result(parley_client *c, const parley_send_result *r, void *sud, void *ud) {
  (void)c, (void)sud;
  customer *s = ud;
  if (r->status == 0) s->acks++;
}

static void c_event(parley_client *c, const parley_event *ev, void *ud) {
  (void)c;
  customer *s = ud;
  if (s->n_seen >= MAX_SEEN) return;
  seen_ev *m = &s->seen[s->n_seen++];
  snprintf(m->conv, sizeof m->conv, "%s", ev->conversation);
  m->seq = ev->seq;
  m->kind = ev->kind;
  snprintf(m->sender, sizeof m->sender, "%s", ev->sender ? ev->sender : "");
  snprintf(m->customer, sizeof m->customer, "%s", ev->customer ? ev->customer : "");
  const char *t = ev->content.text ? ev->content.text : ev->content.fallback;
  snprintf(m->text, sizeof m->text, "%s", t ? t : "");
  m->n_buttons = ev->content.n_buttons;
}

static void c_tick(uv_timer_t *t) { (void)t; }

static void customer_start(customer *s, int gw_port, const char *name, const char *locale) {
  memset(s, 0, sizeof *s);
  uv_loop_init(&s->loop);
  uv_timer_init(&s->loop, &s->tick);
  uv_timer_start(&s->tick, c_tick, 20, 20);
  char url[128], token[128];
  snprintf(url, sizeof url, "ws://127.0.0.1:%d/", gw_port);
  snprintf(token, sizeof token, "%s-secret", name);
  parley_client_options o = PARLEY_CLIENT_OPTIONS_INIT;
  o.url = url;
  o.principal = name;
  o.token = token;
  o.role = PARLEY_ROLE_CUSTOMER;
  o.locale = locale;
  o.loop = &s->loop;
  o.cb.on_event = c_event;
  o.cb.on_send_result = c_result;
  o.cb.on_state = c_state;
  o.user_data = s;
  assert_int_equal(parley_client_new(&o, &s->client), 0);
  assert_int_equal(parley_client_start(s->client), 0);
  uint64_t end = uv_now(&s->loop) + 10000;
  while (!s->ready && uv_now(&s->loop) < end) uv_run(&s->loop, UV_RUN_ONCE);
  assert_true(s->ready);
}

static void customer_run(customer *s, int ms) {
  uint64_t end = uv_now(&s->loop) + (uint64_t)ms;
  while (uv_now(&s->loop) < end) uv_run(&s->loop, UV_RUN_ONCE);
}

/* Messages in conv (NULL: any) containing text. */
static int count(const customer *s, const char *conv, const char *text) {
  int n = 0;
  for (int i = 0; i < s->n_seen; i++)
    if (s->seen[i].kind == PARLEY_EVENT_MESSAGE && (!conv || !strcmp(s->seen[i].conv, conv)) &&
        strstr(s->seen[i].text, text))
      n++;
  return n;
}

static bool wait_count(customer *s, const char *conv, const char *text, int n, int ms) {
  uint64_t end = uv_now(&s->loop) + (uint64_t)ms;
  while (count(s, conv, text) < n && uv_now(&s->loop) < end) uv_run(&s->loop, UV_RUN_ONCE);
  return count(s, conv, text) >= n;
}

static const seen_ev *find(const customer *s, const char *conv, int kind) {
  for (int i = 0; i < s->n_seen; i++)
    if (s->seen[i].kind == kind && !strcmp(s->seen[i].conv, conv)) return &s->seen[i];
  return NULL;
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

/* A string member of a flat JSON answer (no escapes in the values here). */
static bool json_str(const char *json, const char *key, char *out, size_t n) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":\"", key);
  const char *p = strstr(json, pat);
  if (!p) return false;
  p += strlen(pat);
  const char *q = strchr(p, '"');
  if (!q || (size_t)(q - p) >= n) return false;
  memcpy(out, p, (size_t)(q - p));
  out[q - p] = 0;
  return true;
}

static uint64_t json_seq(const char *json) {
  const char *p = strstr(json, "\"seq\":");
  return p ? strtoull(p + 6, NULL, 10) : 0;
}

/* The fixture. ------------------------------------------------------------ */

static const char GATEWAY[] =
    "listen: 127.0.0.1\n"
    "durability: normal\n"
    "bot: clinic\n"
    "principals:\n"
    "  - {name: clinic, role: bot, token: clinic-secret}\n"
    "  - {name: alice, role: customer, token: alice-secret}\n"
    "  - {name: carol, role: customer, token: carol-secret}\n"
    "  - {name: pat-1, role: customer, token: pat-1-secret}\n"
    "  - {name: reminders, role: bot, token: reminders-secret}\n"
    "proactive:\n"
    "  - bot: clinic\n"
    "    customers: [alice, \"pat-*\"]\n"
    "  - {bot: reminders, customers: [alice]}\n";

static const char BOT_YAML[] = "name: clinic\ndefault_locale: en\n";
static const char EN[] =
    "reminder: \"Reminder: your appointment is at {time}.\"\n"
    "welcome: \"Hello\"\n";
static const char FR[] =
    "reminder: \"Rappel : votre rendez-vous est à {time}.\"\n"
    "welcome: \"Bonjour\"\n";
static const char BOT_LUA[] =
    "local bot = parley.bot()\n"
    "bot:command('/remind', function(ctx) ctx:after(0, 'remind', { who = ctx.customer }) end)\n"
    "bot:on_timer('remind', function(ctx, data)\n"
    "  local id = ctx:open_conversation{ customer = data.who, template = 'reminder',\n"
    "    vars = { time = '09:30' }, quick_replies = { 'OK' }, key = 'lua-reminder' }\n"
    "  ctx:reply('opened ' .. id)\n"
    "end)\n"
    "bot:fallback(function(ctx) ctx:reply(ctx:t('welcome')) end)\n";

typedef struct fx {
  char dir[256], botdir[512];
  tproc gw, bot;
  int gport, ops;
} fx;

static void fx_start(fx *f) {
  memset(f, 0, sizeof *f);
  assert_int_equal(tmpdir_make(f->dir, sizeof f->dir, "open"), 0);
  f->gport = tproc_start_gateway(&f->gw, f->dir, GATEWAY);
  track(&f->gw);
  assert_true(f->gport > 0);
  char p[700];
  snprintf(f->botdir, sizeof f->botdir, "%s/bot", f->dir);
  snprintf(p, sizeof p, "%s/templates", f->botdir);
  char cmd[800];
  snprintf(cmd, sizeof cmd, "mkdir -p '%s'", p);
  assert_int_equal(system(cmd), 0);
  snprintf(p, sizeof p, "%s/bot.yaml", f->botdir);
  assert_int_equal(write_file(p, BOT_YAML), 0);
  snprintf(p, sizeof p, "%s/bot.lua", f->botdir);
  assert_int_equal(write_file(p, BOT_LUA), 0);
  snprintf(p, sizeof p, "%s/templates/en.yaml", f->botdir);
  assert_int_equal(write_file(p, EN), 0);
  snprintf(p, sizeof p, "%s/templates/fr.yaml", f->botdir);
  assert_int_equal(write_file(p, FR), 0);
  char cfg[512];
  snprintf(cfg, sizeof cfg,
           "gateway:\n  url: ws://127.0.0.1:%d/\n  token: clinic-secret\n  principal: clinic\n"
           "ops:\n  port: 0\nlog:\n  format: logfmt\n",
           f->gport);
  f->ops = start_bot(&f->bot, f->dir, "clinic", f->botdir, cfg, NULL, NULL);
  assert_true(f->ops > 0);
  assert_true(wait_ready(f->ops, 15000));
}

static void fx_stop(fx *f) {
  assert_int_equal(tproc_kill(&f->bot, SIGTERM), 0);
  assert_int_equal(tproc_wait(&f->bot, 15000), 0);
  assert_int_equal(exit_status(&f->bot), 0);
  tproc_kill(&f->gw, SIGTERM);
  tproc_wait(&f->gw, 10000);
  tproc_stop(&f->gw);
  tmpdir_remove(f->dir);
}

/* Tests. ------------------------------------------------------------------ */

static void test_open_online_idempotent(void **unused) {
  (void)unused;
  fx f;
  fx_start(&f);
  customer alice;
  customer_start(&alice, f.gport, "alice", "fr");
  const char *body =
      "{\"customer\": \"alice\", \"template\": \"reminder\", \"vars\": {\"time\": \"10:00\"},"
      " \"quick_replies\": [\"Confirm\", \"Cancel\"]}";
  hbuf a1, a2;
  assert_int_equal(http_call(f.ops, "/v1/conversations", body, "appt-7", &a1), 200);
  print_message("open: %s", a1.data);
  char conv[140];
  assert_true(json_str(a1.data, "conversation", conv, sizeof conv));
  assert_non_null(strstr(a1.data, "\"duplicate\":false"));
  uint64_t seq = json_seq(a1.data);
  assert_true(seq > 2); /* after OPENED and ASSIGNED */
  /* Online: the customer's connection gets the new conversation's events,
   * the message in the customer's locale with its quick replies. */
  assert_true(wait_count(&alice, conv, "Rappel : votre rendez-vous est à 10:00.", 1, 10000));
  const seen_ev *op = find(&alice, conv, PARLEY_EVENT_OPENED);
  assert_non_null(op);
  assert_int_equal(op->seq, 1);
  assert_string_equal(op->customer, "alice");
  assert_string_equal(op->sender, "clinic");
  const seen_ev *msg = find(&alice, conv, PARLEY_EVENT_MESSAGE);
  assert_int_equal(msg->seq, seq);
  assert_int_equal(msg->n_buttons, 2);

  /* The same key again: the same conversation and seq, flagged. */
  assert_int_equal(http_call(f.ops, "/v1/conversations", body, "appt-7", &a2), 200);
  print_message("again: %s", a2.data);
  char conv2[140];
  assert_true(json_str(a2.data, "conversation", conv2, sizeof conv2));
  assert_string_equal(conv, conv2);
  assert_non_null(strstr(a2.data, "\"duplicate\":true"));
  assert_int_equal(json_seq(a2.data), seq);
  customer_run(&alice, 500);
  assert_int_equal(count(&alice, conv, "Rappel"), 1);

  /* Another key is another conversation. */
  hbuf a3;
  assert_int_equal(http_call(f.ops, "/v1/conversations", body, "appt-8", &a3), 200);
  char conv3[140];
  assert_true(json_str(a3.data, "conversation", conv3, sizeof conv3));
  assert_string_not_equal(conv, conv3);
  assert_true(wait_count(&alice, conv3, "Rappel", 1, 10000));

  /* The customer answers in the new conversation, and the bot (which holds
   * it) handles the answer in French. */
  parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = "merci"};
  assert_int_equal(parley_client_send(alice.client, conv, &ct, NULL, NULL, 0, NULL), 0);
  assert_true(wait_count(&alice, conv, "Bonjour", 1, 10000));
  customer_free(&alice);
  fx_stop(&f);
}

static void test_open_refused_and_limits(void **unused) {
  (void)unused;
  fx f;
  fx_start(&f);
  hbuf r;
  /* Outside the policy: refused by the gateway with a code that says so. */
  assert_int_equal(http_call(f.ops, "/v1/conversations",
                             "{\"customer\": \"carol\", \"template\": \"reminder\","
                             " \"vars\": {\"time\": \"1\"}}",
                             "c-1", &r),
                   403);
  print_message("refused: %s", r.data);
  assert_non_null(strstr(r.data, "PARLEY_EFORBIDDEN"));
  assert_non_null(strstr(r.data, "proactive policy"));
  customer carol;
  customer_start(&carol, f.gport, "carol", "en");
  customer_run(&carol, 500);
  assert_int_equal(carol.n_seen, 0);
  customer_free(&carol);
  /* A limit of a Lua reply (12 quick replies at most): 422, nothing opened. */
  assert_int_equal(
      http_call(f.ops, "/v1/conversations",
                "{\"customer\": \"alice\", \"template\": \"reminder\", \"vars\": {\"time\": \"1\"},"
                " \"quick_replies\": [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\","
                "\"11\",\"12\",\"13\"]}",
                "l-1", &r),
      422);
  print_message("limit: %s", r.data);
  assert_non_null(strstr(r.data, "PARLEY_EINVAL"));
  assert_int_equal(http_call(f.ops, "/v1/conversations",
                             "{\"customer\": \"alice\", \"template\": \"nope\"}", "l-2", &r),
                   422);
  assert_non_null(strstr(r.data, "unknown template key 'nope'"));
  /* Without an idempotency key a retry would open a second conversation. */
  assert_int_equal(http_call(f.ops, "/v1/conversations",
                             "{\"customer\": \"alice\", \"template\": \"welcome\"}", NULL, &r),
                   400);
  assert_non_null(strstr(r.data, "idempotency_key"));
  customer alice;
  customer_start(&alice, f.gport, "alice", "en");
  customer_run(&alice, 500);
  assert_int_equal(alice.n_seen, 0);
  customer_free(&alice);
  fx_stop(&f);
}

static void test_open_offline_and_lua(void **unused) {
  (void)unused;
  fx f;
  fx_start(&f);
  /* pat-1 wrote once in French, then went away. */
  customer pat;
  customer_start(&pat, f.gport, "pat-1", "fr");
  parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = "bonjour"};
  assert_int_equal(parley_client_send(pat.client, "pat-first", &ct, NULL, NULL, 0, NULL), 0);
  assert_true(wait_count(&pat, "pat-first", "Bonjour", 1, 10000));
  customer_free(&pat);

  hbuf r;
  assert_int_equal(http_call(f.ops, "/v1/conversations",
                             "{\"customer\": \"pat-1\", \"template\": \"reminder\","
                             " \"vars\": {\"time\": \"08:15\"}}",
                             "pat-reminder", &r),
                   200);
  print_message("offline: %s", r.data);
  char conv[140];
  assert_true(json_str(r.data, "conversation", conv, sizeof conv));
  /* Back online: the conversation is there, in the customer's locale. */
  customer_start(&pat, f.gport, "pat-1", "");
  assert_true(wait_count(&pat, conv, "Rappel : votre rendez-vous est à 08:15.", 1, 10000));
  assert_non_null(find(&pat, conv, PARLEY_EVENT_OPENED));
  customer_free(&pat);

  /* From Lua, in a timer: alice asks, and a new conversation opens. */
  customer alice;
  customer_start(&alice, f.gport, "alice", "en");
  ct.text = "/remind";
  assert_int_equal(parley_client_send(alice.client, "alice-ask", &ct, NULL, NULL, 0, NULL), 0);
  assert_true(wait_count(&alice, "alice-ask", "opened px-", 1, 10000));
  char lconv[140] = "";
  for (int i = 0; i < alice.n_seen; i++)
    if (strstr(alice.seen[i].text, "opened px-"))
      snprintf(lconv, sizeof lconv, "%s", alice.seen[i].text + 7);
  assert_true(wait_count(&alice, lconv, "Reminder: your appointment is at 09:30.", 1, 10000));
  customer_free(&alice);
  fx_stop(&f);
}

/* A bot written in C with libparley: parley_client_open against the real
 * gateway, then the first message with the Assign's epoch. */
typedef struct cbot {
  uv_loop_t loop;
  parley_client *client;
  bool ready;
  int results;
  parley_send_result last;
  char assigned[140], locale[40];
  uint64_t epoch;
} cbot;

static void b_state(parley_client *c, parley_conn_state st, int status, void *ud) {
  (void)c, (void)status;
  if (st == PARLEY_CONN_READY) ((cbot *)ud)->ready = true;
}

static void b_result(parley_client *c, const parley_send_result *r, void *sud, void *ud) {
  (void)c, (void)sud;
  cbot *b = ud;
  b->results++;
  b->last = *r;
  b->last.conversation = NULL;
  b->last.message = NULL;
}

static void b_assign(parley_client *c, const parley_assignment *a, void *ud) {
  (void)c;
  cbot *b = ud;
  snprintf(b->assigned, sizeof b->assigned, "%s", a->conversation);
  snprintf(b->locale, sizeof b->locale, "%s", a->locale ? a->locale : "");
  b->epoch = a->epoch;
}

static void b_event(parley_client *c, const parley_event *ev, void *ud) { (void)c, (void)ev, (void)ud; }

static void bot_run_until(cbot *b, int *counter, int want, int ms) {
  uint64_t end = uv_now(&b->loop) + (uint64_t)ms;
  while (*counter < want && uv_now(&b->loop) < end) uv_run(&b->loop, UV_RUN_ONCE);
}

static int open_and_wait(cbot *b, const char *conv, const char *who, const char *locale,
                         uint32_t idn) {
  uint8_t id[PARLEY_MSG_ID_LEN] = {0};
  id[0] = 0xA5;
  id[1] = (uint8_t)idn;
  int before = b->results;
  int rc = parley_client_open(b->client, conv, who, locale, id, NULL);
  if (rc) return rc;
  bot_run_until(b, &b->results, before + 1, 10000);
  return b->results == before + 1 ? 0 : PARLEY_ETIMEOUT;
}

static void test_open_from_c(void **unused) {
  (void)unused;
  fx f;
  fx_start(&f);
  customer alice;
  customer_start(&alice, f.gport, "alice", "fr");
  cbot b;
  memset(&b, 0, sizeof b);
  uv_loop_init(&b.loop);
  char url[128];
  snprintf(url, sizeof url, "ws://127.0.0.1:%d/", f.gport);
  parley_client_options o = PARLEY_CLIENT_OPTIONS_INIT;
  o.url = url;
  o.principal = "reminders";
  o.token = "reminders-secret";
  o.role = PARLEY_ROLE_BOT;
  o.loop = &b.loop;
  o.cb.on_state = b_state;
  o.cb.on_send_result = b_result;
  o.cb.on_assign = b_assign;
  o.cb.on_event = b_event;
  o.user_data = &b;
  assert_int_equal(parley_client_new(&o, &b.client), 0);
  assert_int_equal(parley_client_start(b.client), 0);
  uint64_t end = uv_now(&b.loop) + 10000;
  while (!b.ready && uv_now(&b.loop) < end) uv_run(&b.loop, UV_RUN_ONCE);
  assert_true(b.ready);

  /* Opened: the OPENED seq; the Assign follows with alice's locale. */
  assert_int_equal(open_and_wait(&b, "rem-1", "alice", NULL, 1), 0);
  assert_int_equal(b.last.status, 0);
  assert_int_equal(b.last.seq, 1);
  assert_false(b.last.duplicate);
  end = uv_now(&b.loop) + 10000;
  while (strcmp(b.assigned, "rem-1") && uv_now(&b.loop) < end) uv_run(&b.loop, UV_RUN_ONCE);
  assert_string_equal(b.assigned, "rem-1");
  assert_string_equal(b.locale, "fr");
  assert_int_equal(b.epoch, 1);
  parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = "N'oubliez pas demain"};
  int before = b.results;
  assert_int_equal(parley_client_send(b.client, "rem-1", &ct, NULL, NULL, b.epoch, NULL), 0);
  bot_run_until(&b, &b.results, before + 1, 10000);
  assert_int_equal(b.last.status, 0);
  assert_true(wait_count(&alice, "rem-1", "N'oubliez pas demain", 1, 10000));

  /* The same id again: the original seq, flagged. */
  assert_int_equal(open_and_wait(&b, "rem-1", "alice", NULL, 1), 0);
  assert_int_equal(b.last.status, 0);
  assert_int_equal(b.last.seq, 1);
  assert_true(b.last.duplicate);
  /* Another id for a conversation that exists: refused, not reopened. */
  assert_int_equal(open_and_wait(&b, "rem-1", "alice", NULL, 2), 0);
  assert_int_equal(b.last.status, PARLEY_EINVAL);
  /* Outside the policy, and a locale that is not one. */
  assert_int_equal(open_and_wait(&b, "rem-2", "carol", NULL, 3), 0);
  assert_int_equal(b.last.status, PARLEY_EFORBIDDEN);
  assert_int_equal(open_and_wait(&b, "rem-3", "alice",
                                 "a-locale-name-that-is-far-too-long-to-be-one", 4),
                   0);
  assert_int_equal(b.last.status, PARLEY_EINVAL);
  /* A customer cannot open one this way. */
  assert_int_equal(parley_client_open(alice.client, "rem-4", "alice", NULL, NULL, NULL),
                   PARLEY_EINVAL);
  customer_run(&alice, 300);
  assert_null(find(&alice, "rem-2", PARLEY_EVENT_OPENED));
  assert_null(find(&alice, "rem-3", PARLEY_EVENT_OPENED));
  assert_int_equal(count(&alice, "rem-1", "N'oubliez"), 1);

  parley_client_stop(b.client, 1000);
  for (int i = 0; i < 100 && parley_client_state(b.client) != PARLEY_CONN_CLOSED; i++)
    uv_run(&b.loop, UV_RUN_ONCE);
  parley_client_free(b.client);
  uv_run(&b.loop, UV_RUN_DEFAULT);
  uv_loop_close(&b.loop);
  customer_free(&alice);
  fx_stop(&f);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  lws_set_log_level(LLL_ERR | LLL_WARN, NULL);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_open_online_idempotent, kill_children),
      cmocka_unit_test_teardown(test_open_refused_and_limits, kill_children),
      cmocka_unit_test_teardown(test_open_offline_and_lua, kill_children),
      cmocka_unit_test_teardown(test_open_from_c, kill_children),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  curl_global_cleanup();
  return rc;
}
