/* The bots of bots/: each loads cleanly (config, templates, bot.lua) and
 * passes its own spec; and the spec runner itself fails when it should. */
#include "fake_driver.h"
#include "spec.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void run_bot(const char *name) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s/bots/%s", PARLEY_SOURCE_DIR, name);
  char err[2048] = "";
  int rc = parley_runtime_check(dir, err, sizeof err);
  if (rc) fail_msg("%s: %s", name, err);
  plr_spec_result res = {0};
  rc = plr_spec_run_dir(dir, stdout, &res);
  printf("%s: %d files, %d cases, %d passed, %d failed\n", name, res.files, res.cases,
         res.passed, res.failed);
  assert_int_equal(rc, 0);
  assert_true(res.cases >= 4);
  assert_int_equal(res.failed, 0);
}

static void test_faq(void **state) { (void)state; run_bot("faq"); }
static void test_order_status(void **state) { (void)state; run_bot("order-status"); }
static void test_triage(void **state) { (void)state; run_bot("triage"); }
static void test_handoff(void **state) { (void)state; run_bot("handoff"); }

/* A spec that does not hold must fail, with the step and what was sent. */
static void test_runner_fails(void **state) {
  (void)state;
  static const char *const files[] = {
      "bot.yaml", "name: echo\n",
      "templates/en.yaml", "x: \"x\"\n",
      "bot.lua", "local bot = parley.bot()\n"
                 "bot:on_message(function(ctx, msg) ctx:reply('echo ' .. msg.text) end)\n"
                 "return bot\n",
      "spec/a.yaml",
      "- name: right\n  steps:\n    - send: hi\n      expect:\n        - reply: \"echo hi\"\n"
      "- name: wrong\n  steps:\n    - send: hi\n      expect:\n        - reply: \"hello\"\n"
      "- name: stub missing\n  steps:\n    - send: hi\n      expect:\n        - handoff: {queue: q}\n",
      NULL};
  const char *dir = fd_bot_dir(files);
  char d[256];
  snprintf(d, sizeof d, "%s", dir);
  char *out = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&out, &len);
  plr_spec_result res = {0};
  int rc = plr_spec_run_dir(d, f, &res);
  fclose(f);
  fd_rm_rf(d);
  assert_int_not_equal(rc, 0);
  assert_int_equal(res.cases, 3);
  assert_int_equal(res.passed, 1);
  assert_int_equal(res.failed, 2);
  assert_non_null(strstr(out, "PASS"));
  assert_non_null(strstr(out, "wrong: step 1 (line 8): no reply equal to \"hello\"; the bot sent \"echo hi\""));
  assert_non_null(strstr(out, "no handoff like {queue: q}"));
  free(out);
}

/* After a hand back the bot gets what the agent wrote while holding the
 * conversation. Its message handlers hear the customer only: the agent's
 * "do you want to talk to a human again?" neither gets the "your message is
 * waiting" notice nor hands the conversation off again; on_agent_message
 * sees it. */
static void agent_msg(fd *f, uint64_t seq, const char *text) {
  parley_event ev = {.kind = PARLEY_EVENT_MESSAGE, .conversation = "c1", .seq = seq,
                     .sender = "agent-7", .sender_role = PARLEY_ROLE_AGENT,
                     .content = {.kind = PARLEY_CONTENT_TEXT, .text = text}};
  plr_rt_on_event(f->r, &ev);
  fd_pump(f);
}

static void test_handoff_agent_messages(void **state) {
  (void)state;
  char dir[512];
  snprintf(dir, sizeof dir, "%s/bots/handoff", PARLEY_SOURCE_DIR);
  fd f;
  char err[1024] = "";
  assert_int_equal(fd_open(&f, dir, err, sizeof err), 0);
  fd_assign(&f, "c1", "en");
  fd_message(&f, "c1", 1, "can I talk to a human please");
  fd_pump(&f);
  size_t handoffs = 0;
  for (size_t i = 0; i < f.nsends; i++) handoffs += f.sends[i].kind == 100 + PARLEY_ACTION_HANDOFF;
  assert_int_equal(handoffs, 1);
  parley_event taken = {.kind = PARLEY_EVENT_ASSIGNED, .conversation = "c1", .seq = 3,
                        .sender = "", .sender_role = PARLEY_ROLE_SYSTEM, .assignee = "agent-7"};
  plr_rt_on_event(f.r, &taken);
  fd_pump(&f);
  size_t before = f.nsends;
  /* The hand back: the agent's words first (in seq order), then the event. */
  agent_msg(&f, 4, "Hello, I can help. Do you still want to talk to a human?");
  agent_msg(&f, 5, "Please wait while I check, a person will answer shortly.");
  assert_int_equal(f.nsends, before); /* nothing answered the agent */
  parley_event back = {.kind = PARLEY_EVENT_HANDED_BACK, .conversation = "c1", .seq = 6,
                       .sender = "agent-7", .sender_role = PARLEY_ROLE_AGENT};
  plr_rt_on_event(f.r, &back);
  fd_pump(&f);
  handoffs = 0;
  for (size_t i = 0; i < f.nsends; i++) {
    handoffs += f.sends[i].kind == 100 + PARLEY_ACTION_HANDOFF;
    assert_null(strstr(f.sends[i].text, "your message is waiting"));
  }
  assert_int_equal(handoffs, 1);
  assert_string_equal(fd_last_send(&f, "c1")->text, "I'm back. Is there anything else I can help with?");
  const fd_commit *c = fd_last_commit(&f, "c1");
  assert_non_null(c);
  assert_int_equal(c->ack_seq, 6);
  /* on_agent_message ran for the agent's words (bots/handoff notes that a
   * person answered); the commit of the first one carried it. */
  bool noted = false;
  for (size_t i = 0; i < f.ncommits; i++)
    noted |= f.commits[i].ack_seq == 4 && strstr(f.commits[i].state, "told_waiting=true") != NULL;
  assert_true(noted);
  fd_close(&f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_faq),
      cmocka_unit_test(test_order_status),
      cmocka_unit_test(test_triage),
      cmocka_unit_test(test_handoff),
      cmocka_unit_test(test_handoff_agent_messages),
      cmocka_unit_test(test_runner_fails),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
