#define _GNU_SOURCE /* strcasestr */
/* A three-turn conversation between a customer (libparley client in this
 * process) and the FAQ bot (a `parley run` process) through the reference
 * gateway (a `parley gateway` process), over real WebSockets on loopback.
 *
 * Checks: every customer message is ACKed with a seq, the seqs are distinct
 * and increasing, the bot answers each turn (the password question with the
 * FAQ's password answer), and the customer's stream is 1..N without gaps or
 * repeats. A turn's replies are the bot messages after its seq until the
 * bot has been quiet for QUIET_MS (the greeting of the opened conversation
 * may come with the first turn's answer). Then SIGTERM stops the bot and the gateway cleanly (exit 0).
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
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uv.h>

#include <parley/client.h>

#include "proc.h"

#define TURNS 3
#define MAX_EVENTS 64
#define QUIET_MS 400

static const char *const turns[TURNS] = {
    "how do I reset my password",
    "what are your opening hours?",
    "thanks, bye",
};

typedef struct state {
  parley_client *client;
  uv_loop_t *loop;
  char conversation[64];
  int turn;               /* index of the turn in flight */
  bool waiting_ack;
  uint64_t sent_seq[TURNS];
  int acked;
  char replies[TURNS][1024];
  int n_replies[TURNS];
  uint64_t last_bot_ms;
  uint64_t seen[MAX_EVENTS];
  int n_seen;
  bool ready;
  bool done;
  bool failed;
  char why[256];
} state;

static void send_turn(state *s) {
  parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = turns[s->turn]};
  int rc = parley_client_send(s->client, s->conversation, &ct, NULL, NULL, 0, NULL);
  if (rc) {
    s->failed = true;
    snprintf(s->why, sizeof s->why, "send: %s", parley_strerror(rc));
    return;
  }
  s->waiting_ack = true;
}

static void on_state(parley_client *c, parley_conn_state st, int status, void *ud) {
  state *s = ud;
  (void)c;
  (void)status;
  if (st == PARLEY_CONN_READY && !s->ready) {
    s->ready = true;
    send_turn(s);
  }
}

static void on_send_result(parley_client *c, const parley_send_result *r, void *sud, void *ud) {
  state *s = ud;
  (void)c;
  (void)sud;
  if (r->status != 0) {
    s->failed = true;
    snprintf(s->why, sizeof s->why, "turn %d not stored: %s", s->turn, parley_strerror(r->status));
    return;
  }
  s->sent_seq[s->turn] = r->seq;
  s->acked++;
  s->waiting_ack = false;
}

static void on_event(parley_client *c, const parley_event *ev, void *ud) {
  state *s = ud;
  (void)c;
  if (strcmp(ev->conversation, s->conversation)) return;
  if (s->n_seen < MAX_EVENTS) s->seen[s->n_seen++] = ev->seq;
  if (ev->kind != PARLEY_EVENT_MESSAGE || !ev->sender || strcmp(ev->sender, "faq")) return;
  /* A bot message after the turn's own seq answers that turn. */
  if (s->turn < TURNS && !s->waiting_ack && s->sent_seq[s->turn] &&
      ev->seq > s->sent_seq[s->turn]) {
    const char *text = ev->content.kind == PARLEY_CONTENT_TEXT ? ev->content.text
                                                                : ev->content.fallback;
    size_t used = strlen(s->replies[s->turn]);
    snprintf(s->replies[s->turn] + used, sizeof s->replies[s->turn] - used, "%s%s",
             used ? " | " : "", text ? text : "(rich)");
    s->n_replies[s->turn]++;
    s->last_bot_ms = uv_now(s->loop);
  }
}

static void on_tick(uv_timer_t *t) {
  state *s = t->data;
  if (!s->done && !s->failed && s->turn < TURNS && s->n_replies[s->turn] > 0 &&
      uv_now(s->loop) - s->last_bot_ms >= QUIET_MS) {
    s->turn++;
    if (s->turn < TURNS)
      send_turn(s);
    else
      s->done = true;
  }
  if (s->done || s->failed) {
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, NULL);
    parley_client_stop(s->client, 2000);
  }
}

static void on_deadline(uv_timer_t *t) {
  state *s = t->data;
  if (!s->done) {
    s->failed = true;
    snprintf(s->why, sizeof s->why, "timed out at turn %d (acked %d)", s->turn, s->acked);
  }
  uv_close((uv_handle_t *)t, NULL);
}

static void test_three_turns(void **unused) {
  (void)unused;
  char dir[256];
  assert_int_equal(tmpdir_make(dir, sizeof dir, "e2e"), 0);
  const char *yaml =
      "listen: 127.0.0.1\n"
      "durability: normal\n"
      "bot: faq\n"
      "principals:\n"
      "  - name: faq\n"
      "    role: bot\n"
      "    token: faq-secret\n"
      "  - name: alice\n"
      "    role: customer\n"
      "    token: alice-secret\n";
  tproc gw, bot;
  int port = tproc_start_gateway(&gw, dir, yaml);
  assert_true(port > 0);

  char url[128], botdir[512], botlog[512];
  snprintf(url, sizeof url, "ws://127.0.0.1:%d/", port);
  snprintf(botdir, sizeof botdir, "%s/bots/faq", PARLEY_SOURCE_DIR);
  snprintf(botlog, sizeof botlog, "%s/bot.log", dir);
  char *bot_argv[] = {(char *)PARLEY_BIN, "run", botdir, "--url", url, "--token", "faq-secret",
                      NULL};
  assert_int_equal(tproc_start(&bot, bot_argv, botlog), 0);

  state s = {0};
  snprintf(s.conversation, sizeof s.conversation, "e2e-%d", (int)getpid());
  uv_loop_t loop;
  uv_loop_init(&loop);
  s.loop = &loop;
  parley_client_options o = PARLEY_CLIENT_OPTIONS_INIT;
  o.url = url;
  o.principal = "alice";
  o.token = "alice-secret";
  o.role = PARLEY_ROLE_CUSTOMER;
  o.locale = "en";
  o.loop = &loop;
  o.cb.on_event = on_event;
  o.cb.on_send_result = on_send_result;
  o.cb.on_state = on_state;
  o.user_data = &s;
  assert_int_equal(parley_client_new(&o, &s.client), 0);
  assert_int_equal(parley_client_start(s.client), 0);

  uv_timer_t tick, deadline;
  uv_timer_init(&loop, &tick);
  uv_timer_init(&loop, &deadline);
  tick.data = deadline.data = &s;
  uv_timer_start(&tick, on_tick, 20, 20);
  uv_timer_start(&deadline, on_deadline, 60000, 0);
  uv_unref((uv_handle_t *)&deadline);
  uv_run(&loop, UV_RUN_DEFAULT);
  if (!uv_is_closing((uv_handle_t *)&deadline)) uv_close((uv_handle_t *)&deadline, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  parley_client_free(s.client);
  uv_run(&loop, UV_RUN_NOWAIT);
  uv_loop_close(&loop);

  if (s.failed) print_error("conversation failed: %s\n", s.why);
  assert_false(s.failed);
  assert_int_equal(s.acked, TURNS);
  for (int i = 0; i < TURNS; i++) {
    print_message("turn %d: seq %llu -> %s\n", i, (unsigned long long)s.sent_seq[i], s.replies[i]);
    assert_true(s.sent_seq[i] > 0);
    if (i) assert_true(s.sent_seq[i] > s.sent_seq[i - 1]);
    assert_true(s.replies[i][0] != 0);
  }
  assert_non_null(strcasestr(s.replies[0], "password"));
  /* The stream as the customer saw it: 1, 2, 3, ... once each. */
  for (int i = 0; i < s.n_seen; i++) assert_int_equal(s.seen[i], (uint64_t)(i + 1));

  assert_int_equal(tproc_kill(&bot, SIGTERM), 0);
  assert_int_equal(tproc_wait(&bot, 15000), 0);
  assert_true(WIFEXITED(bot.status));
  assert_int_equal(WEXITSTATUS(bot.status), 0);
  assert_int_equal(tproc_kill(&gw, SIGTERM), 0);
  assert_int_equal(tproc_wait(&gw, 15000), 0);
  assert_true(WIFEXITED(gw.status));
  assert_int_equal(WEXITSTATUS(gw.status), 0);
  tproc_stop(&bot);
  tproc_stop(&gw);
  tmpdir_remove(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_three_turns)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
