/* parley_runtime_send_proactive, the runtime side of the sidecar API, on the
 * Lua tests' recording fake driver (no network; the process-level tests
 * are in test_sidecar.c): refused for a conversation the runtime does not
 * hold and while stopping, sent with the conversation's epoch and the
 * caller's id, queued behind a running handler's reply, the outcome
 * (status, seq) handed back once, content copied, and a queued send that
 * loses its conversation answered PARLEY_ENOTFOUND.
 */
#include "fake_driver.h"
#include "proactive.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

static const char *const BOT[] = {
    "bot.yaml",
    "name: pbot\ndefault_locale: en\nhttp:\n  allow: [svc.test]\n",
    "templates/en.yaml", "hi: \"Hi\"\n",
    "templates/fr.yaml", "hi: \"Salut\"\n",
    "bot.lua",
    "local bot = parley.bot()\n"
    "bot:command('/slow', function(ctx)\n"
    "  local r = http.get('http://svc.test/x')\n"
    "  ctx:reply('handler reply')\n"
    "end)\n"
    "bot:fallback(function(ctx, msg) ctx:reply('echo ' .. msg.text) end)\n",
    NULL};

typedef struct outcome {
  int calls, status;
  uint64_t seq;
  bool dup;
} outcome;

static void done_cb(void *ud, int status, uint64_t seq, bool dup) {
  outcome *o = ud;
  o->calls++;
  o->status = status;
  o->seq = seq;
  o->dup = dup;
}

typedef struct ptc {
  fd f;
  char dir[256];
} ptc;

static int setup(void **state) {
  static ptc t;
  memset(&t, 0, sizeof t);
  const char *dir = fd_bot_dir(BOT);
  assert_non_null(dir);
  snprintf(t.dir, sizeof t.dir, "%s", dir);
  char err[1024] = "";
  int rc = fd_open(&t.f, t.dir, err, sizeof err);
  if (rc) fprintf(stderr, "%s\n", err);
  assert_int_equal(rc, 0);
  *state = &t;
  return 0;
}

static int teardown(void **state) {
  ptc *t = *state;
  fd_close(&t->f);
  fd_rm_rf(t->dir);
  return 0;
}

static const uint8_t ID[PARLEY_MSG_ID_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

static void test_not_assigned(void **state) {
  ptc *t = *state;
  outcome o = {0};
  parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = "hello"};
  assert_int_equal(parley_runtime_send_proactive(t->f.r, "nobody", &ct, ID, done_cb, &o),
                   PARLEY_ENOTFOUND);
  /* Revoked: no longer this runtime's. */
  fd_assign(&t->f, "c1", "en");
  plr_rt_on_revoke(t->f.r, "c1", 1, "taken");
  assert_int_equal(parley_runtime_send_proactive(t->f.r, "c1", &ct, ID, done_cb, &o),
                   PARLEY_ENOTFOUND);
  assert_int_equal(parley_runtime_send_proactive(t->f.r, "c1", NULL, ID, done_cb, &o),
                   PARLEY_EINVAL);
  assert_int_equal(o.calls, 0);
  assert_int_equal(t->f.nsends, 0);
}

static void test_sent_with_epoch_and_id(void **state) {
  ptc *t = *state;
  fd_assign_state(&t->f, "c1", "en", 7, 0, NULL, 0);
  outcome o = {0};
  char text[32];
  snprintf(text, sizeof text, "proactive");
  parley_button b[2] = {{.label = "Yes", .payload = "y"}, {.label = "Site", .url = "https://e.x/"}};
  parley_content ct = {.kind = PARLEY_CONTENT_CARD, .title = "T", .text = text, .buttons = b,
                       .n_buttons = 2};
  assert_int_equal(parley_runtime_send_proactive(t->f.r, "c1", &ct, ID, done_cb, &o), 0);
  /* The content was copied: the caller's buffers may change now. */
  memset(text, 'x', sizeof text - 1);
  b[0].label = "changed";
  assert_int_equal(t->f.nsends, 1);
  const fd_send *s = &t->f.sends[0];
  assert_string_equal(s->text, "proactive");
  assert_string_equal(s->title, "T");
  assert_string_equal(s->buttons, "Yes|y|;Site||https://e.x/;");
  assert_int_equal(s->epoch, 7);
  assert_memory_equal(s->msg_id, ID, PARLEY_MSG_ID_LEN);
  assert_int_equal(o.calls, 0);
  assert_true(parley_runtime_busy(t->f.r));
  fd_pump(&t->f);
  assert_int_equal(o.calls, 1);
  assert_int_equal(o.status, 0);
  assert_int_equal(o.seq, 1000); /* the fake answers seq 1000 + index */
  assert_false(parley_runtime_busy(t->f.r));
  /* It acknowledges no event: nothing to commit. */
  assert_null(fd_last_commit(&t->f, "c1"));
}

static void test_failure_reported(void **state) {
  ptc *t = *state;
  fd_assign(&t->f, "c1", "en");
  t->f.send_status = PARLEY_ECLOSED;
  outcome o = {0};
  parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = "late"};
  assert_int_equal(parley_runtime_send_proactive(t->f.r, "c1", &ct, ID, done_cb, &o), 0);
  fd_pump(&t->f);
  assert_int_equal(o.calls, 1);
  assert_int_equal(o.status, PARLEY_ECLOSED);
}

static void test_after_running_handler(void **state) {
  ptc *t = *state;
  fd_assign(&t->f, "c1", "en");
  fd_message(&t->f, "c1", 1, "/slow");
  fd_pump(&t->f);
  assert_int_equal(t->f.nhttp, 1); /* the handler waits on HTTP */
  outcome o = {0};
  parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = "proactive"};
  assert_int_equal(parley_runtime_send_proactive(t->f.r, "c1", &ct, ID, done_cb, &o), 0);
  assert_int_equal(t->f.nsends, 0); /* waits behind the handler */
  fd_http_complete(&t->f, 0, 200, "ok");
  fd_pump(&t->f);
  assert_int_equal(t->f.nsends, 2);
  assert_string_equal(t->f.sends[0].text, "handler reply");
  assert_string_equal(t->f.sends[1].text, "proactive");
  assert_int_equal(o.calls, 1);
  assert_int_equal(o.seq, 1001);
  /* The handler's event was committed. */
  assert_int_equal(fd_last_commit(&t->f, "c1")->ack_seq, 1);
  /* A later event is handled after the proactive send. */
  fd_message(&t->f, "c1", 2, "again");
  fd_pump(&t->f);
  assert_string_equal(fd_last_send(&t->f, "c1")->text, "echo again");
}

static void test_queued_then_revoked(void **state) {
  ptc *t = *state;
  fd_assign(&t->f, "c1", "en");
  fd_message(&t->f, "c1", 1, "/slow");
  fd_pump(&t->f);
  outcome o = {0};
  parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = "proactive"};
  assert_int_equal(parley_runtime_send_proactive(t->f.r, "c1", &ct, ID, done_cb, &o), 0);
  plr_rt_on_revoke(t->f.r, "c1", 1, "taken");
  assert_int_equal(o.calls, 1);
  assert_int_equal(o.status, PARLEY_ENOTFOUND);
  fd_http_complete(&t->f, 0, 200, "ok");
  fd_pump(&t->f);
  assert_int_equal(o.calls, 1);
  for (size_t i = 0; i < t->f.nsends; i++) assert_string_not_equal(t->f.sends[i].text, "proactive");
}

static void stopped(void *ud) { *(bool *)ud = true; }

static void test_refused_while_stopping(void **state) {
  ptc *t = *state;
  fd_assign(&t->f, "c1", "en");
  bool done = false;
  parley_runtime_stop(t->f.r, 1000, stopped, &done);
  outcome o = {0};
  parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = "too late"};
  assert_int_equal(parley_runtime_send_proactive(t->f.r, "c1", &ct, ID, done_cb, &o),
                   PARLEY_ESHUTDOWN);
  fd_pump(&t->f);
  assert_true(done);
  assert_int_equal(o.calls, 0);
}

/* A proactive send still queued when the runtime is freed answers once. */
static void test_freed_with_queued_send(void **state) {
  ptc *t = *state;
  fd_assign(&t->f, "c1", "en");
  fd_message(&t->f, "c1", 1, "/slow");
  fd_pump(&t->f);
  static outcome o;
  memset(&o, 0, sizeof o);
  parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = "never"};
  assert_int_equal(parley_runtime_send_proactive(t->f.r, "c1", &ct, ID, done_cb, &o), 0);
  fd_close(&t->f);
  assert_int_equal(o.calls, 1);
  assert_int_equal(o.status, PARLEY_ENOTFOUND);
  /* teardown closes again: make that a no-op on a fresh runtime. */
  char err[256];
  assert_int_equal(fd_open(&t->f, t->dir, err, sizeof err), 0);
}

/* Proactive conversations (plr_runtime_open_json): the open goes first
 * (Action.open, epoch 0, ids derived from the key), the first message only
 * once the open is answered and the conversation assigned, rendered in the
 * Assign's locale, with the Assign's epoch; the caller hears once. */
typedef struct open_outcome {
  int calls, status;
  uint64_t seq;
  bool dup;
  char conv[64];
} open_outcome;

static void open_cb(void *ud, int status, const char *conv, uint64_t seq, bool dup,
                    const char *why) {
  (void)why;
  open_outcome *o = ud;
  o->calls++;
  o->status = status;
  o->seq = seq;
  o->dup = dup;
  snprintf(o->conv, sizeof o->conv, "%s", conv);
}

static void test_open_flow(void **state) {
  ptc *t = *state;
  open_outcome o = {0};
  char conv[PLR_OPEN_CONV_LEN + 1], err[256] = "";
  uint8_t mid[PARLEY_MSG_ID_LEN];
  const char *json = "{\"template\": \"hi\", \"quick_replies\": [\"OK\"]}";
  assert_int_equal(plr_runtime_open_json(t->f.r, "alice", "k1", json, open_cb, &o, conv, mid,
                                         err, sizeof err),
                   0);
  char want[PLR_OPEN_CONV_LEN + 1];
  uint8_t oid[PARLEY_MSG_ID_LEN], mid2[PARLEY_MSG_ID_LEN];
  plr_open_ids("pbot", "alice", "k1", want, oid, mid2);
  assert_string_equal(conv, want);
  assert_memory_equal(mid, mid2, PARLEY_MSG_ID_LEN);
  assert_int_equal(t->f.nsends, 1);
  const fd_send *s = &t->f.sends[0];
  assert_string_equal(s->conv, conv);
  assert_int_equal(s->kind, 100 + PARLEY_ACTION_OPEN);
  assert_int_equal(s->epoch, 0);
  assert_memory_equal(s->msg_id, oid, PARLEY_MSG_ID_LEN);
  /* Answered, but not assigned yet: nothing more goes out. */
  fd_pump(&t->f);
  assert_int_equal(t->f.nsends, 1);
  assert_int_equal(o.calls, 0);
  /* The Assign brings the customer's locale and the epoch. */
  fd_assign_state(&t->f, conv, "fr", 1, 2, NULL, 0);
  assert_int_equal(t->f.nsends, 2);
  s = &t->f.sends[1];
  assert_string_equal(s->text, "Salut");
  assert_int_equal(s->kind, PARLEY_CONTENT_QUICK_REPLIES);
  assert_int_equal(s->epoch, 1);
  assert_memory_equal(s->msg_id, mid, PARLEY_MSG_ID_LEN);
  fd_pump(&t->f);
  assert_int_equal(o.calls, 1);
  assert_int_equal(o.status, 0);
  assert_int_equal(o.seq, 1001);
  assert_string_equal(o.conv, conv);
  /* Another key, another conversation; another customer too. */
  char c2[PLR_OPEN_CONV_LEN + 1], c3[PLR_OPEN_CONV_LEN + 1];
  uint8_t x[PARLEY_MSG_ID_LEN];
  plr_open_ids("pbot", "alice", "k2", c2, x, x);
  plr_open_ids("pbot", "bob", "k1", c3, x, x);
  assert_string_not_equal(conv, c2);
  assert_string_not_equal(conv, c3);
}

static void test_open_refused_before_sending(void **state) {
  ptc *t = *state;
  open_outcome o = {0};
  char conv[PLR_OPEN_CONV_LEN + 1], err[256] = "";
  assert_int_equal(plr_runtime_open_json(t->f.r, "alice", "k", "{\"template\": \"nope\"}",
                                         open_cb, &o, conv, NULL, err, sizeof err),
                   PARLEY_EINVAL);
  assert_non_null(strstr(err, "unknown template key 'nope'"));
  assert_null(strstr(err, "traceback"));
  assert_int_equal(plr_runtime_open_json(t->f.r, "bad name", "k", "{\"template\": \"hi\"}",
                                         open_cb, &o, conv, NULL, err, sizeof err),
                   PARLEY_EINVAL);
  assert_int_equal(plr_runtime_open_json(t->f.r, "alice", "", "{\"template\": \"hi\"}",
                                         open_cb, &o, conv, NULL, err, sizeof err),
                   PARLEY_EINVAL);
  assert_int_equal(t->f.nsends, 0);
  /* The gateway's refusal (the policy) is the caller's outcome. */
  t->f.send_status = PARLEY_EFORBIDDEN;
  assert_int_equal(plr_runtime_open_json(t->f.r, "alice", "k", "{\"template\": \"hi\"}",
                                         open_cb, &o, conv, NULL, err, sizeof err),
                   0);
  fd_pump(&t->f);
  assert_int_equal(o.calls, 1);
  assert_int_equal(o.status, PARLEY_EFORBIDDEN);
  assert_int_equal(t->f.nsends, 1);
}

/* An open still under way when the runtime is freed answers once. */
static void test_open_freed_pending(void **state) {
  ptc *t = *state;
  static open_outcome o;
  memset(&o, 0, sizeof o);
  char conv[PLR_OPEN_CONV_LEN + 1], err[256] = "";
  assert_int_equal(plr_runtime_open_json(t->f.r, "alice", "k", "{\"template\": \"hi\"}",
                                         open_cb, &o, conv, NULL, err, sizeof err),
                   0);
  fd_pump(&t->f); /* answered; waits for the Assign */
  assert_int_equal(o.calls, 0);
  fd_close(&t->f);
  assert_int_equal(o.calls, 1);
  assert_int_equal(o.status, PARLEY_ESHUTDOWN);
  char e[256];
  assert_int_equal(fd_open(&t->f, t->dir, e, sizeof e), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_not_assigned, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sent_with_epoch_and_id, setup, teardown),
      cmocka_unit_test_setup_teardown(test_failure_reported, setup, teardown),
      cmocka_unit_test_setup_teardown(test_after_running_handler, setup, teardown),
      cmocka_unit_test_setup_teardown(test_queued_then_revoked, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refused_while_stopping, setup, teardown),
      cmocka_unit_test_setup_teardown(test_freed_with_queued_send, setup, teardown),
      cmocka_unit_test_setup_teardown(test_open_flow, setup, teardown),
      cmocka_unit_test_setup_teardown(test_open_refused_before_sending, setup, teardown),
      cmocka_unit_test_setup_teardown(test_open_freed_pending, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
