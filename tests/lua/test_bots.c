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
  int rc = plr_load_check(dir, err, sizeof err);
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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_faq),
      cmocka_unit_test(test_order_status),
      cmocka_unit_test(test_triage),
      cmocka_unit_test(test_handoff),
      cmocka_unit_test(test_runner_fails),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
