/* The event handling of the runtime, driven through the recording fake
 * driver: derived reply ids, commits after replies, state diffs, failures,
 * own events, ordering, HTTP suspension, timers, quoting and reload. */
#include "fake_driver.h"
#include "vm.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <lua.h>

#define BOT_LUA                                                                       \
  "local bot = parley.bot()\n"                                                        \
  "bot:on_open(function(ctx, ev) ctx:reply(ctx:t('hello')) end)\n"                    \
  "bot:command('/count', function(ctx)\n"                                             \
  "  ctx.state.count = (ctx.state.count or 0) + 1\n"                                  \
  "  ctx:reply('count ' .. ctx.state.count)\n"                                        \
  "end)\n"                                                                            \
  "bot:command('/two', function(ctx)\n"                                               \
  "  ctx:reply('one')\n"                                                              \
  "  ctx:reply({card = {title = 'T', text = 'body', buttons = {\n"                    \
  "    {label = 'Go', postback = 'go:1'}, {label = 'Site', url = 'https://example.com'}}}})\n" \
  "end)\n"                                                                            \
  "bot:command('/qr', function(ctx)\n"                                                \
  "  ctx:reply({quick_replies = {text = 'Pick', options = {{label = 'A', payload = 'a'}, {label = 'B', payload = 'b'}}}})\n" \
  "  ctx:reply({image = {url = 'https://example.com/i.png', alt = 'a cat'}})\n"      \
  "end)\n"                                                                            \
  "bot:command('/quote', function(ctx, msg) ctx:reply('quoted', {quote = msg}) end)\n" \
  "bot:command('/qseq', function(ctx, msg, args)\n"                                  \
  "  if not pcall(ctx.reply, ctx, 'q', {quote = tonumber(args[1])}) then ctx:reply('noquote') end\n" \
  "end)\n"                                                                            \
  "bot:command('/fail', function(ctx) ctx.state.count = 999; ctx:tag('x'); error('boom') end)\n" \
  "bot:command('/tag', function(ctx, msg, args) ctx:tag(args[1]); ctx:untag('old') end)\n" \
  "bot:command('/profile', function(ctx)\n"                                           \
  "  ctx.state.profile = {name = 'Jos\xc3\xa9', tags = {'a', 'b'}, n = 1.5}\n"        \
  "end)\n"                                                                            \
  "bot:command('/who', function(ctx) ctx:reply(ctx.state.profile.name .. ' ' .. #ctx.state.profile.tags) end)\n" \
  "bot:command('/remind', function(ctx, msg, args)\n"                                 \
  "  ctx:after(tonumber(args[1]), 'remind', {text = args[2]})\n"                     \
  "end)\n"                                                                            \
  "bot:on_timer('remind', function(ctx, data) ctx:reply('reminder ' .. data.text) end)\n" \
  "bot:command('/fetch', function(ctx, msg, args)\n"                                  \
  "  local r, err = http.get('http://orders.test/o/' .. args[1], {headers = {Accept = 'application/json'}})\n" \
  "  if not r then ctx:reply('err ' .. err) return end\n"                            \
  "  local d = json.decode(r.body)\n"                                                 \
  "  ctx:reply('status ' .. r.status .. ' ' .. d.state .. ' ' .. r.headers['content-type'])\n" \
  "end)\n"                                                                            \
  "bot:command('/deny', function(ctx) http.get('http://evil.test/') end)\n"          \
  "bot:command('/slow', function(ctx)\n"                                              \
  "  ctx.state.step = 'date'\n"                                                       \
  "  ctx:tag('booking')\n"                                                            \
  "  local r = http.get('http://orders.test/o/1')\n"                                  \
  "  ctx.state.got = r and r.status or 0\n"                                           \
  "  ctx:reply('slow done')\n"                                                        \
  "end)\n"                                                                            \
  "bot:command('/log', function(ctx) ctx:log('warn', 'hello \"x\" = y') end)\n"              \
  "bot:command('/idem', function(ctx) ctx:reply(ctx.idempotency_key) end)\n"         \
  "bot:command('/handoff', function(ctx) ctx:handoff('humans', 'asked') end)\n"      \
  "bot:match('reset.*password', function(ctx, msg) ctx:reply('reset answer') end)\n" \
  "bot:on_postback('go:(%d+)', function(ctx, pb, caps) ctx:reply('go ' .. caps[1]) end)\n" \
  "bot:fallback(function(ctx, msg) ctx:reply(rawget(_G, 'VERSION_TEXT') or 'fallback') end)\n"     \
  "return bot\n"

static const char *const BOT[] = {
    "bot.yaml",
    "name: rtbot\ndefault_locale: en\nfallback_reply: sorry\n"
    "http:\n  allow: [orders.test]\n",
    "templates/en.yaml", "hello: \"Hello!\"\nsorry: \"Sorry, something went wrong.\"\n",
    "templates/es.yaml", "hello: \"\xc2\xa1Hola!\"\n",
    "bot.lua", BOT_LUA,
    NULL};

typedef struct rtc {
  fd f;
  char dir[256];
} rtc;

static int setup(void **state) {
  static rtc t;
  memset(&t, 0, sizeof t);
  const char *dir = fd_bot_dir(BOT);
  assert_non_null(dir);
  snprintf(t.dir, sizeof t.dir, "%s", dir);
  char err[1024] = "";
  int rc = fd_open(&t.f, t.dir, err, sizeof err);
  if (rc) fprintf(stderr, "%s\n", err);
  assert_int_equal(rc, 0);
  fd_assign(&t.f, "c1", "en");
  *state = &t;
  return 0;
}

static int teardown(void **state) {
  rtc *t = *state;
  fd_close(&t->f);
  fd_rm_rf(t->dir);
  return 0;
}

static void test_reply_ids_and_commit_after_acks(void **state) {
  rtc *t = *state;
  fd_message(&t->f, "c1", 3, "/two");
  assert_int_equal(t->f.nsends, 2);
  uint8_t id[PARLEY_MSG_ID_LEN];
  parley_msg_id_derive("rtbot", "c1", 3, 0, id);
  assert_memory_equal(t->f.sends[0].msg_id, id, PARLEY_MSG_ID_LEN);
  parley_msg_id_derive("rtbot", "c1", 3, 1, id);
  assert_memory_equal(t->f.sends[1].msg_id, id, PARLEY_MSG_ID_LEN);
  assert_int_equal(t->f.sends[0].epoch, 1);
  assert_string_equal(t->f.sends[0].text, "one");
  assert_int_equal(t->f.sends[1].kind, PARLEY_CONTENT_CARD);
  assert_string_equal(t->f.sends[1].title, "T");
  assert_string_equal(t->f.sends[1].buttons, "Go|go:1|;Site||https://example.com;");
  assert_string_equal(t->f.sends[1].fallback, "T\nbody\n- Go\n- Site: https://example.com");
  /* No commit while the replies are unanswered, however long we wait. */
  uv_run(&t->f.loop, UV_RUN_NOWAIT);
  assert_int_equal(t->f.ncommits, 0);
  assert_true(parley_runtime_busy(t->f.r));
  fd_pump(&t->f);
  assert_int_equal(t->f.ncommits, 1);
  assert_int_equal(t->f.commits[0].ack_seq, 3);
  assert_int_equal(t->f.commits[0].epoch, 1);
  assert_int_equal(parley_runtime_committed(t->f.r, "c1"), 3);
  assert_false(parley_runtime_busy(t->f.r));
}

static void test_rich_fallbacks(void **state) {
  rtc *t = *state;
  fd_message(&t->f, "c1", 1, "/qr");
  fd_pump(&t->f);
  assert_int_equal(t->f.nsends, 2);
  assert_int_equal(t->f.sends[0].kind, PARLEY_CONTENT_QUICK_REPLIES);
  assert_string_equal(t->f.sends[0].fallback, "Pick\n1. A\n2. B");
  assert_string_equal(t->f.sends[0].buttons, "A|a|;B|b|;");
  assert_int_equal(t->f.sends[1].kind, PARLEY_CONTENT_IMAGE);
  assert_string_equal(t->f.sends[1].fallback, "[a cat] https://example.com/i.png");
}

static void test_state_diff_and_tags(void **state) {
  rtc *t = *state;
  fd_message(&t->f, "c1", 1, "/count");
  fd_pump(&t->f);
  assert_string_equal(fd_last_commit(&t->f, "c1")->state, "count=1;");
  fd_message(&t->f, "c1", 2, "/count");
  fd_pump(&t->f);
  assert_string_equal(fd_last_send(&t->f, "c1")->text, "count 2");
  assert_string_equal(fd_last_commit(&t->f, "c1")->state, "count=2;");
  /* Only changed keys travel; tags go with the commit. */
  fd_message(&t->f, "c1", 3, "/tag vip");
  fd_pump(&t->f);
  const fd_commit *c = fd_last_commit(&t->f, "c1");
  assert_int_equal(c->ack_seq, 3);
  assert_string_equal(c->state, "");
  assert_string_equal(c->tags, "+vip -old ");
  /* JSON round trip through the canonical encoder. */
  fd_message(&t->f, "c1", 4, "/profile");
  fd_pump(&t->f);
  assert_string_equal(fd_last_commit(&t->f, "c1")->state,
                      "profile={\"n\":1.5,\"name\":\"Jos\xc3\xa9\",\"tags\":[\"a\",\"b\"]};");
}

static void test_failure_rolls_back(void **state) {
  rtc *t = *state;
  fd_message(&t->f, "c1", 1, "/count");
  fd_message(&t->f, "c1", 2, "/fail");
  fd_pump(&t->f);
  assert_string_equal(fd_last_send(&t->f, "c1")->text, "Sorry, something went wrong.");
  const fd_commit *c = fd_last_commit(&t->f, "c1");
  assert_int_equal(c->ack_seq, 2);
  assert_string_equal(c->tags, "");
  fd_message(&t->f, "c1", 3, "/count");
  fd_pump(&t->f);
  assert_string_equal(fd_last_send(&t->f, "c1")->text, "count 2");
  assert_non_null(strstr(t->f.log, "boom"));
  plr_stats st;
  plr_runtime_stats(t->f.r, &st);
  assert_int_equal(st.failures, 1);
  /* A host outside http.allow is misuse: the handler fails. */
  fd_message(&t->f, "c1", 4, "/deny");
  fd_pump(&t->f);
  assert_string_equal(fd_last_send(&t->f, "c1")->text, "Sorry, something went wrong.");
  assert_non_null(strstr(t->f.log, "not in bot.yaml http.allow"));
}

static void test_own_events_and_no_handler(void **state) {
  rtc *t = *state;
  parley_event own = {.kind = PARLEY_EVENT_MESSAGE, .conversation = "c1", .seq = 1,
                      .sender = "rtbot", .sender_role = PARLEY_ROLE_BOT,
                      .content = {.kind = PARLEY_CONTENT_TEXT, .text = "/count"}};
  fd_event(&t->f, &own);
  parley_event st = {.kind = PARLEY_EVENT_STATE_CHANGED, .conversation = "c1", .seq = 2,
                     .sender = "", .sender_role = PARLEY_ROLE_SYSTEM};
  fd_event(&t->f, &st);
  fd_pump(&t->f);
  assert_int_equal(t->f.nsends, 0);
  assert_int_equal(fd_last_commit(&t->f, "c1")->ack_seq, 2);
  /* Duplicates are dropped. */
  fd_message(&t->f, "c1", 2, "/count");
  fd_pump(&t->f);
  assert_int_equal(t->f.nsends, 0);
}

static void test_redelivered_state_and_open(void **state) {
  rtc *t = *state;
  parley_state_entry st[] = {{.key = "count", .value = "5", .value_len = 1}};
  fd_assign_state(&t->f, "c2", "es", 7, 10, st, 1);
  fd_message(&t->f, "c2", 11, "/count");
  fd_pump(&t->f);
  const fd_send *s = fd_last_send(&t->f, "c2");
  assert_string_equal(s->text, "count 6");
  assert_int_equal(s->epoch, 7);
  parley_event open = {.kind = PARLEY_EVENT_OPENED, .conversation = "c2", .seq = 12,
                       .sender = "", .locale = "es-MX", .customer = "cust"};
  fd_event(&t->f, &open);
  fd_pump(&t->f);
  assert_string_equal(fd_last_send(&t->f, "c2")->text, "\xc2\xa1Hola!");
  assert_int_equal(fd_last_commit(&t->f, "c2")->ack_seq, 12);
}

static void test_order_and_concurrency(void **state) {
  rtc *t = *state;
  fd_assign(&t->f, "c2", "en");
  fd_message(&t->f, "c1", 1, "/fetch 42");
  /* c1 waits on HTTP; its later events wait behind it, c2 goes on. */
  fd_message(&t->f, "c1", 2, "/count");
  fd_message(&t->f, "c2", 1, "/count");
  fd_pump(&t->f);
  assert_int_equal(t->f.nhttp, 1);
  assert_string_equal(t->f.http[0].url, "http://orders.test/o/42");
  assert_string_equal(t->f.http[0].headers, "Accept: application/json\n");
  assert_int_equal(fd_count_sends(&t->f, "c1"), 0);
  assert_string_equal(fd_last_send(&t->f, "c2")->text, "count 1");
  assert_null(fd_last_commit(&t->f, "c1"));
  assert_true(parley_runtime_busy(t->f.r));
  fd_http_complete(&t->f, 0, 200, "{\"state\":\"shipped\"}");
  fd_pump(&t->f);
  assert_int_equal(fd_count_sends(&t->f, "c1"), 2);
  assert_string_equal(t->f.sends[1].text, "status 200 shipped application/json");
  assert_string_equal(fd_last_send(&t->f, "c1")->text, "count 1");
  assert_int_equal(fd_last_commit(&t->f, "c1")->ack_seq, 2);
  /* A failed request is an expected failure: nil, err. */
  fd_message(&t->f, "c1", 3, "/fetch 7");
  fd_pump(&t->f);
  fd_http_complete(&t->f, 1, 0, NULL);
  fd_pump(&t->f);
  assert_string_equal(fd_last_send(&t->f, "c1")->text, "err connection refused");
}

static void test_match_postback_quote_idem(void **state) {
  rtc *t = *state;
  fd_message(&t->f, "c1", 1, "How do I RESET my Password?");
  fd_pump(&t->f);
  assert_string_equal(fd_last_send(&t->f, "c1")->text, "reset answer");
  parley_event pb = {.kind = PARLEY_EVENT_MESSAGE, .conversation = "c1", .seq = 2,
                     .sender = "cust", .content = {.kind = PARLEY_CONTENT_POSTBACK,
                                                   .payload = "go:7", .label = "Go"}};
  fd_event(&t->f, &pb);
  fd_pump(&t->f);
  assert_string_equal(fd_last_send(&t->f, "c1")->text, "go 7");
  char text[600] = "/quote ";
  for (int i = 0; i < 200; i++) strcat(text, "\xc3\xa9");
  fd_message(&t->f, "c1", 3, text);
  fd_pump(&t->f);
  const fd_send *s = fd_last_send(&t->f, "c1");
  assert_int_equal(s->quote_seq, 3);
  assert_string_equal(s->quote_sender, "cust");
  /* 280 bytes at most, cut on a character boundary: "/quote " is 7 bytes,
   * then 136 two-byte characters fit. */
  assert_int_equal(strlen(s->quote_excerpt), 7 + 136 * 2);
  fd_message(&t->f, "c1", 4, "/idem");
  fd_pump(&t->f);
  uint8_t id[PARLEY_MSG_ID_LEN];
  char hex[33];
  parley_msg_id_derive("rtbot", "c1", 4, 0xFFFFFFFFu, id);
  parley_msg_id_hex(id, hex);
  assert_string_equal(fd_last_send(&t->f, "c1")->text, hex);
  fd_message(&t->f, "c1", 5, "/handoff");
  fd_pump(&t->f);
  s = fd_last_send(&t->f, "c1");
  assert_int_equal(s->kind, 100 + PARLEY_ACTION_HANDOFF);
  assert_string_equal(s->queue, "humans");
  assert_string_equal(s->note, "asked");
  /* Waiting in the queue the conversation is still the bot's: a message
   * runs its handler (here the fallback) until an agent takes it. */
  size_t before = t->f.nsends;
  fd_message(&t->f, "c1", 6, "anything else");
  fd_pump(&t->f);
  assert_int_equal(t->f.nsends, before + 1);
  assert_string_equal(fd_last_send(&t->f, "c1")->text, "fallback");
  assert_int_equal(fd_last_commit(&t->f, "c1")->ack_seq, 6);
  /* An agent takes it: the gateway revokes the bot's assignment. */
  plr_rt_on_revoke(t->f.r, "c1", 1, "taken");
  fd_pump(&t->f);
  /* Back with the bot (a new assignment): handlers run again. */
  fd_assign_state(&t->f, "c1", "en", 2, 6, NULL, 0);
  fd_message(&t->f, "c1", 7, "anything else");
  fd_pump(&t->f);
  assert_string_equal(fd_last_send(&t->f, "c1")->text, "fallback");
  assert_int_equal(fd_last_send(&t->f, "c1")->epoch, 2);
}

/* Runs the loop until the conversation has n sends, for at most ~4 s. */
static void wait_sends(rtc *t, const char *conv, size_t n) {
  for (int i = 0; i < 400 && fd_count_sends(&t->f, conv) < n; i++) {
    uv_sleep(10);
    fd_pump(&t->f);
  }
}

static void test_timers_in_state(void **state) {
  rtc *t = *state;
  fd_message(&t->f, "c1", 1, "/remind 0.05 hello");
  fd_pump(&t->f);
  const fd_commit *c = fd_last_commit(&t->f, "c1");
  assert_non_null(strstr(c->state, "_timers={\"list\":[{\"data\":{\"text\":\"hello\"},\"due\":"));
  char saved[1024];
  snprintf(saved, sizeof saved, "%s", strchr(c->state, '=') + 1);
  saved[strlen(saved) - 1] = '\0'; /* the trailing ';' */
  wait_sends(t, "c1", 1);
  const fd_send *s = fd_last_send(&t->f, "c1");
  assert_non_null(s);
  assert_string_equal(s->text, "reminder hello");
  uint8_t id[PARLEY_MSG_ID_LEN];
  parley_msg_id_derive("rtbot", "c1", 0, 0x40000000u + 1 * 256, id);
  assert_memory_equal(s->msg_id, id, PARLEY_MSG_ID_LEN);
  /* The timer's removal is committed with the next acknowledged event
   * (here the reply itself coming back). */
  parley_event own = {.kind = PARLEY_EVENT_MESSAGE, .conversation = "c1", .seq = 2,
                      .sender = "rtbot", .content = {.kind = PARLEY_CONTENT_TEXT, .text = "x"}};
  fd_event(&t->f, &own);
  fd_pump(&t->f);
  c = fd_last_commit(&t->f, "c1");
  assert_int_equal(c->ack_seq, 2);
  assert_string_equal(c->state, "_timers=<deleted>;");
  /* A timer kept in the state survives a restart: a fresh runtime re-arms
   * it on Assign and, being overdue, it fires after the assignment grace. */
  fd_close(&t->f);
  char err[512];
  assert_int_equal(fd_open(&t->f, t->dir, err, sizeof err), 0);
  t->f.now += 60000;
  parley_state_entry st[] = {{.key = "_timers", .value = saved, .value_len = strlen(saved)}};
  fd_assign_state(&t->f, "c1", "en", 2, 1, st, 1);
  wait_sends(t, "c1", 1);
  assert_string_equal(fd_last_send(&t->f, "c1")->text, "reminder hello");
  /* Same timer, same reply id: the gateway would drop it as a duplicate. */
  assert_memory_equal(fd_last_send(&t->f, "c1")->msg_id, id, PARLEY_MSG_ID_LEN);
}

static void test_reload(void **state) {
  rtc *t = *state;
  fd_message(&t->f, "c1", 1, "/count");
  fd_pump(&t->f);
  char path[512];
  snprintf(path, sizeof path, "%s/bot.lua", t->dir);
  FILE *fp = fopen(path, "w");
  fputs("VERSION_TEXT = 'v2'\n" BOT_LUA, fp);
  fclose(fp);
  /* Reload while c1 waits on HTTP: the swap waits for the handler. */
  fd_message(&t->f, "c1", 2, "/fetch 1");
  fd_pump(&t->f);
  char err[1024] = "";
  assert_int_equal(parley_runtime_reload(t->f.r, err, sizeof err), 0);
  fd_message(&t->f, "c1", 3, "hello?");
  fd_http_complete(&t->f, 0, 200, "{\"state\":\"new\"}");
  fd_pump(&t->f);
  assert_string_equal(fd_last_send(&t->f, "c1")->text, "v2");
  fd_message(&t->f, "c1", 4, "/count");
  fd_pump(&t->f);
  assert_string_equal(fd_last_send(&t->f, "c1")->text, "count 2");
  assert_int_equal(fd_last_commit(&t->f, "c1")->ack_seq, 4);
  /* A broken bot.lua is refused and the running one stays. */
  fp = fopen(path, "w");
  fputs("local bot = parley.bot(\n", fp);
  fclose(fp);
  assert_int_not_equal(parley_runtime_reload(t->f.r, err, sizeof err), 0);
  assert_non_null(strstr(err, "bot.lua"));
  fd_message(&t->f, "c1", 5, "/count");
  fd_pump(&t->f);
  assert_string_equal(fd_last_send(&t->f, "c1")->text, "count 3");
  /* The messages remembered for quoting came along: seq 1 arrived before
   * the reload. */
  fd_message(&t->f, "c1", 6, "/qseq 1");
  fd_pump(&t->f);
  assert_string_equal(fd_last_send(&t->f, "c1")->text, "q");
  assert_int_equal(fd_last_send(&t->f, "c1")->quote_seq, 1);
  assert_string_equal(fd_last_send(&t->f, "c1")->quote_excerpt, "/count");
  plr_stats st;
  plr_runtime_stats(t->f.r, &st);
  assert_int_equal(st.reloads, 1);
  assert_int_equal(st.reload_failures, 1);
  fp = fopen(path, "w");
  fputs(BOT_LUA, fp);
  fclose(fp);
}

static void test_commits_batched(void **state) {
  rtc *t = *state;
  fd_assign(&t->f, "c2", "en");
  fd_assign(&t->f, "c3", "en");
  fd_message(&t->f, "c1", 1, "/count");
  fd_message(&t->f, "c2", 1, "/count");
  fd_message(&t->f, "c3", 1, "/count");
  fd_pump(&t->f);
  assert_int_equal(t->f.ncommit_calls, 1);
  assert_int_equal(t->f.ncommits, 3);
  plr_stats st;
  plr_runtime_stats(t->f.r, &st);
  assert_int_equal(st.commits, 1);
  assert_int_equal(st.commit_items, 3);
}

/* Text, JSON and logfmt lines carry the bot, the conversation and seq. */
static void test_log_formats(void **state) {
  rtc *t = *state;
  fd_message(&t->f, "c1", 1, "/log");
  fd_pump(&t->f);
  fflush(t->f.logf);
  /* One logger for the whole program (sdk/src/ops/log.h): the same level
   * names, fields and escaping as the sidecar's records. */
  assert_non_null(strstr(t->f.log, " WARN  hello \"x\" = y conversation=c1 seq=1 bot=rtbot\n"));
  for (int format = 1; format <= 2; format++) {
    fd_close(&t->f);
    fd_set_log_format(format);
    char err[512];
    assert_int_equal(fd_open(&t->f, t->dir, err, sizeof err), 0);
    fd_set_log_format(0);
    fd_assign(&t->f, "c1", "en");
    fd_message(&t->f, "c1", 7, "/log");
    fd_pump(&t->f);
    fflush(t->f.logf);
    if (format == 1)
      assert_non_null(strstr(t->f.log, "\"level\":\"warn\",\"msg\":\"hello \\\"x\\\" = y\","
                                       "\"conversation\":\"c1\",\"seq\":7,\"bot\":\"rtbot\"}\n"));
    else
      assert_non_null(strstr(t->f.log, " level=warn msg=\"hello \\\"x\\\" = y\" conversation=c1 seq=7 bot=rtbot\n"));
  }
}

/* Many events over many conversations: all handled, in order, committed;
 * prints the rate (the fake driver answers at once, so this is the
 * runtime's own cost per event). */
static void test_throughput(void **state) {
  rtc *t = *state;
  enum { CONVS = 50, PER = 40 };
  char ids[CONVS][16];
  for (int c = 0; c < CONVS; c++) {
    snprintf(ids[c], sizeof ids[c], "t%d", c);
    fd_assign(&t->f, ids[c], "en");
  }
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  size_t replies = 0;
  for (int k = 1; k <= PER; k++) {
    for (int c = 0; c < CONVS; c++) fd_message(&t->f, ids[c], (uint64_t)k, "/count");
    fd_pump(&t->f);
    replies += t->f.nsends;
    t->f.nsends = 0; /* the recording buffers are small; everything is answered */
    t->f.ncommits = 0;
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  double secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
  assert_int_equal(replies, CONVS * PER);
  for (int c = 0; c < CONVS; c++) assert_int_equal(parley_runtime_committed(t->f.r, ids[c]), PER);
  printf("    %d events in %.3f s: %.0f events/s; Lua heap %zu KiB for %d conversations\n",
         CONVS * PER, secs, CONVS * PER / secs, plr_vm_memory(plr_runtime_vm(t->f.r)) / 1024,
         CONVS + 1);
}

/* A commit the client cannot take is tried again with its changes; a
 * redelivered event whose commit was lost is committed again. */
static void test_commit_retry(void **state) {
  rtc *t = *state;
  t->f.commit_fail = 1;
  t->f.hold_commits = true;
  fd_message(&t->f, "c1", 1, "/count");
  fd_pump(&t->f);
  assert_int_equal(t->f.ncommits, 0);
  for (int i = 0; i < 300 && t->f.ncommits == 0; i++) {
    uv_sleep(10);
    fd_pump(&t->f);
  }
  assert_int_equal(t->f.ncommits, 1);
  assert_int_equal(t->f.commits[0].ack_seq, 1);
  assert_string_equal(t->f.commits[0].state, "count=1;");
  /* The gateway refuses it and delivers the event again. */
  t->f.commits[0].answered = true;
  parley_commit_result res = {.conversation = "c1", .ack_seq = 1, .status = PARLEY_EINTERNAL};
  plr_rt_on_commit_result(t->f.r, &res);
  parley_event again = {.kind = PARLEY_EVENT_MESSAGE, .conversation = "c1", .seq = 1,
                        .sender = "cust", .redelivered = true,
                        .content = {.kind = PARLEY_CONTENT_TEXT, .text = "/count"}};
  fd_event(&t->f, &again);
  fd_pump(&t->f);
  assert_int_equal(t->f.ncommits, 2);
  assert_int_equal(t->f.commits[1].ack_seq, 1);
  /* The refused commit's state change goes again with it: the record had
   * already counted it as the gateway's. */
  assert_string_equal(t->f.commits[1].state, "count=1;");
  assert_int_equal(fd_count_sends(&t->f, "c1"), 1); /* not handled twice */
  t->f.hold_commits = false;
  fd_pump(&t->f);
  assert_int_equal(parley_runtime_committed(t->f.r, "c1"), 1);
}

/* Commits that carry no changes (a plain reply's watermark) and commits
 * that do are answered in the order they went; runtime.lua keeps an entry
 * only for the latter. A refused watermark gives nothing back and must not
 * settle the entry of the commit after it (accepted, that one leaves
 * nothing pending); a refused commit with changes gives them to the next
 * commit. */
static void answer_commit(rtc *t, size_t i, int status) {
  t->f.commits[i].answered = true;
  parley_commit_result res = {.conversation = t->f.commits[i].conv,
                              .ack_seq = t->f.commits[i].ack_seq,
                              .status = status};
  plr_rt_on_commit_result(t->f.r, &res);
}

static void test_refused_watermark_then_changes(void **state) {
  rtc *t = *state;
  t->f.hold_commits = true;
  fd_message(&t->f, "c1", 1, "hello"); /* the fallback: a reply, no change */
  fd_pump(&t->f);
  fd_message(&t->f, "c1", 2, "/count");
  fd_pump(&t->f);
  assert_int_equal(t->f.ncommits, 2);
  assert_string_equal(t->f.commits[0].state, "");
  assert_string_equal(t->f.commits[1].state, "count=1;");
  answer_commit(t, 0, PARLEY_EINTERNAL);
  answer_commit(t, 1, 0);
  fd_message(&t->f, "c1", 3, "hello again");
  fd_pump(&t->f);
  assert_int_equal(t->f.ncommits, 3);
  assert_int_equal(t->f.commits[2].ack_seq, 3);
  assert_string_equal(t->f.commits[2].state, "");
  answer_commit(t, 2, 0);
  /* Tag changes only, in a conversation without state: the handler after
   * them changes nothing itself, and its commit carries them again. */
  fd_assign(&t->f, "c2", "en");
  fd_message(&t->f, "c2", 1, "/tag vip");
  fd_pump(&t->f);
  assert_int_equal(t->f.ncommits, 4);
  assert_string_equal(t->f.commits[3].tags, "+vip -old ");
  answer_commit(t, 3, PARLEY_EINTERNAL);
  fd_message(&t->f, "c2", 2, "hello");
  fd_pump(&t->f);
  assert_int_equal(t->f.ncommits, 5);
  assert_int_equal(t->f.commits[4].ack_seq, 2);
  assert_string_equal(t->f.commits[4].tags, "+vip -old ");
  t->f.hold_commits = false;
  fd_pump(&t->f);
  assert_int_equal(parley_runtime_committed(t->f.r, "c1"), 3);
  assert_int_equal(parley_runtime_committed(t->f.r, "c2"), 2);
}

/* The connection is cut while a handler waits on HTTP and the gateway
 * assigns the conversation again (new epoch, its own older document): the
 * handler's state and tags go with its commit, not the document's. */
static void test_assign_during_handler_keeps_its_state(void **state) {
  rtc *t = *state;
  fd_message(&t->f, "c1", 1, "/slow");
  fd_pump(&t->f);
  assert_int_equal(t->f.nhttp, 1);
  assert_int_equal(t->f.ncommits, 0);
  fd_assign_state(&t->f, "c1", "en", 2, 0, NULL, 0);
  fd_http_complete(&t->f, 0, 200, "{}");
  fd_pump(&t->f);
  const fd_commit *c = fd_last_commit(&t->f, "c1");
  assert_non_null(c);
  assert_int_equal(c->ack_seq, 1);
  assert_int_equal(c->epoch, 2);
  assert_string_equal(c->state, "got=200;step=\"date\";");
  assert_string_equal(c->tags, "+booking ");
}

/* Handled events whose commit the gateway never applied (refused as stale
 * after the reassignment) are part of the commit that follows the running
 * handler: one commit takes the conversation from the gateway's document
 * to everything the bot did. */
static void test_assign_after_unapplied_commit(void **state) {
  rtc *t = *state;
  t->f.hold_commits = true;
  fd_message(&t->f, "c1", 1, "/count");
  fd_pump(&t->f);
  assert_int_equal(t->f.ncommits, 1);
  assert_string_equal(t->f.commits[0].state, "count=1;");
  fd_message(&t->f, "c1", 2, "/slow");
  fd_pump(&t->f);
  assert_int_equal(t->f.nhttp, 1);
  /* Reassigned from the gateway's document: nothing applied yet. */
  fd_assign_state(&t->f, "c1", "en", 2, 0, NULL, 0);
  /* The old commit is refused as stale: its answer must not put its
   * changes back a second time, nor lose them. */
  t->f.commits[0].answered = true;
  parley_commit_result stale = {.conversation = "c1", .ack_seq = 1, .status = PARLEY_EINTERNAL};
  plr_rt_on_commit_result(t->f.r, &stale);
  t->f.hold_commits = false;
  fd_http_complete(&t->f, 0, 200, "{}");
  fd_pump(&t->f);
  const fd_commit *c = fd_last_commit(&t->f, "c1");
  assert_non_null(c);
  assert_int_equal(c->ack_seq, 2);
  assert_int_equal(c->epoch, 2);
  assert_string_equal(c->state, "count=1;got=200;step=\"date\";");
  assert_int_equal(parley_runtime_committed(t->f.r, "c1"), 2);
}

static bool has_lua_record(rtc *t, const char *conv) {
  plr_vm *vm = plr_runtime_vm(t->f.r);
  lua_State *L = plr_vm_state(vm);
  plr_vm_rt_get(vm, "conv");
  lua_pushstring(L, conv);
  lua_call(L, 1, 1);
  bool has = !lua_isnil(L, -1);
  lua_pop(L, 1);
  return has;
}

/* Conversations that left drop their Lua record once nothing is owed; the
 * committed watermark stays known. */
static void test_forget_after_leaving(void **state) {
  rtc *t = *state;
  fd_message(&t->f, "c1", 1, "/count");
  fd_pump(&t->f);
  assert_true(has_lua_record(t, "c1"));
  plr_rt_on_revoke(t->f.r, "c1", 1, "handed_off");
  fd_pump(&t->f);
  assert_false(has_lua_record(t, "c1"));
  assert_int_equal(parley_runtime_committed(t->f.r, "c1"), 1);
  /* Back again: the state comes from the assignment. */
  parley_state_entry st[] = {{.key = "count", .value = "1", .value_len = 1}};
  fd_assign_state(&t->f, "c1", "en", 2, 1, st, 1);
  fd_message(&t->f, "c1", 2, "/count");
  fd_pump(&t->f);
  assert_string_equal(fd_last_send(&t->f, "c1")->text, "count 2");
  parley_event closed = {.kind = PARLEY_EVENT_CLOSED, .conversation = "c1", .seq = 3,
                         .sender = "agent-1", .sender_role = PARLEY_ROLE_AGENT};
  fd_event(&t->f, &closed);
  fd_pump(&t->f);
  assert_int_equal(fd_last_commit(&t->f, "c1")->ack_seq, 3);
  assert_false(has_lua_record(t, "c1"));
}

static void stop_done(void *ud) { *(int *)ud += 1; }

static void test_stop_drains(void **state) {
  rtc *t = *state;
  fd_message(&t->f, "c1", 1, "/fetch 9");
  fd_pump(&t->f);
  int done = 0;
  parley_runtime_stop(t->f.r, 5000, stop_done, &done);
  fd_pump(&t->f);
  assert_int_equal(done, 0);
  /* New events are not taken while stopping. */
  fd_message(&t->f, "c1", 2, "/count");
  fd_http_complete(&t->f, 0, 200, "{\"state\":\"x\"}");
  fd_pump(&t->f);
  assert_int_equal(done, 1);
  assert_int_equal(fd_last_commit(&t->f, "c1")->ack_seq, 1);
  assert_int_equal(fd_count_sends(&t->f, "c1"), 1);
}

/* parley_runtime_new (parley/runtime.h) refuses options it cannot read: a
 * struct_version newer than the library's, a log format or level outside
 * its enum. A zeroed struct (version 0) and the initializer are version 1.
 * Nothing connects: the runtime is freed before the loop runs. */
static void test_public_options_checked(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  char dir[1024], err[512];
  snprintf(dir, sizeof dir, "%s/bots/faq", PARLEY_SOURCE_DIR);
  FILE *quiet = fopen("/dev/null", "w");
  assert_non_null(quiet);
  parley_runtime_options o = PARLEY_RUNTIME_OPTIONS_INIT;
  o.loop = &loop;
  o.bot_dir = dir;
  o.url = "ws://127.0.0.1:9/v1";
  o.token = "t";
  o.log_out = quiet;
  o.log_level = PARLEY_LOG_ERROR;
  parley_runtime *r = NULL;

  o.struct_version = PARLEY_RUNTIME_OPTIONS_VERSION + 1;
  err[0] = '\0';
  assert_int_equal(parley_runtime_new(&o, &r, err, sizeof err), PARLEY_EINVAL);
  assert_null(r);
  assert_non_null(strstr(err, "version 2 is newer"));

  o.struct_version = PARLEY_RUNTIME_OPTIONS_VERSION;
  o.log_level = (parley_log_level)7;
  assert_int_equal(parley_runtime_new(&o, &r, err, sizeof err), PARLEY_EINVAL);
  assert_null(r);
  assert_non_null(strstr(err, "log_format or log_level"));
  o.log_level = PARLEY_LOG_ERROR;
  o.log_format = (parley_log_format)3;
  assert_int_equal(parley_runtime_new(&o, &r, err, sizeof err), PARLEY_EINVAL);
  assert_null(r);

  o.log_format = PARLEY_LOG_JSON;
  o.struct_version = 0;
  assert_int_equal(parley_runtime_new(&o, &r, err, sizeof err), 0);
  assert_non_null(r);
  assert_non_null(parley_runtime_client(r));
  assert_false(parley_runtime_busy(r));
  parley_runtime_free(r);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  fclose(quiet);
}

/* A reply quotes one of the conversation's last 32 inbound messages and no
 * older one, however many came before (the list is cut back in steps). */
static void test_quote_window(void **state) {
  rtc *t = *state;
  for (uint64_t s = 1; s <= 140; s++) {
    bool in_window = s % 2;
    uint64_t target = in_window ? s - 31 : s - 32;
    char text[32];
    snprintf(text, sizeof text, "/qseq %llu", (unsigned long long)target);
    fd_message(&t->f, "c9", s, text);
    fd_pump(&t->f);
    if (s < 33) continue; /* target 0 or below: not a seq */
    const fd_send *r = fd_last_send(&t->f, "c9");
    assert_non_null(r);
    if (in_window) {
      assert_string_equal(r->text, "q");
      assert_int_equal(r->quote_seq, target);
      char want[32];
      uint64_t its = target % 2 ? target - 31 : target - 32; /* what message target asked */
      snprintf(want, sizeof want, "/qseq %llu", (unsigned long long)its);
      assert_string_equal(r->quote_excerpt, want);
    } else {
      assert_string_equal(r->text, "noquote");
    }
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_public_options_checked),
      cmocka_unit_test_setup_teardown(test_reply_ids_and_commit_after_acks, setup, teardown),
      cmocka_unit_test_setup_teardown(test_rich_fallbacks, setup, teardown),
      cmocka_unit_test_setup_teardown(test_state_diff_and_tags, setup, teardown),
      cmocka_unit_test_setup_teardown(test_failure_rolls_back, setup, teardown),
      cmocka_unit_test_setup_teardown(test_own_events_and_no_handler, setup, teardown),
      cmocka_unit_test_setup_teardown(test_redelivered_state_and_open, setup, teardown),
      cmocka_unit_test_setup_teardown(test_order_and_concurrency, setup, teardown),
      cmocka_unit_test_setup_teardown(test_match_postback_quote_idem, setup, teardown),
      cmocka_unit_test_setup_teardown(test_quote_window, setup, teardown),
      cmocka_unit_test_setup_teardown(test_timers_in_state, setup, teardown),
      cmocka_unit_test_setup_teardown(test_reload, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refused_watermark_then_changes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stop_drains, setup, teardown),
      cmocka_unit_test_setup_teardown(test_commits_batched, setup, teardown),
      cmocka_unit_test_setup_teardown(test_log_formats, setup, teardown),
      cmocka_unit_test_setup_teardown(test_throughput, setup, teardown),
      cmocka_unit_test_setup_teardown(test_commit_retry, setup, teardown),
      cmocka_unit_test_setup_teardown(test_assign_during_handler_keeps_its_state, setup, teardown),
      cmocka_unit_test_setup_teardown(test_assign_after_unapplied_commit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_forget_after_leaving, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
