/* The authoring conveniences of the runtime, in process (the runtime on the
 * recording driver, through the spec runner): dialogs (bots/appointments
 * and the edge cases of tests/lua/framework/dialog), middleware
 * (tests/lua/framework/middleware), and the errors a bad declaration gets
 * at load time, with the bot's file and line. */
#include "fake_driver.h"
#include "spec.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <parley/error.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Runs every spec of a bot folder of the source tree; all must pass. */
static void run_source_bot(const char *rel, int min_cases) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s/%s", PARLEY_SOURCE_DIR, rel);
  plr_spec_result res = {0};
  int rc = plr_spec_run_dir(dir, stdout, &res);
  assert_int_equal(res.failed, 0);
  assert_int_equal(rc, 0);
  assert_true(res.cases >= min_cases);
}

/* Runs the specs of a bot written to a temporary folder; returns the
 * runner's status and its report (the caller frees it). */
static int run_files(const char *const *files, char **report) {
  char d[256];
  snprintf(d, sizeof d, "%s", fd_bot_dir(files));
  size_t len = 0;
  FILE *f = open_memstream(report, &len);
  int rc = plr_spec_run_dir(d, f, NULL);
  fclose(f);
  fd_rm_rf(d);
  return rc;
}

static void test_appointments_dialog(void **state) {
  (void)state;
  run_source_bot("bots/appointments", 3);
}

static void test_dialog_edges(void **state) {
  (void)state;
  run_source_bot("tests/lua/framework/dialog", 5);
}

/* A dialog's declaration is checked when bot.lua loads (so by lint too),
 * and the error names the bot's line, not the runtime's. */
static void expect_load_error(const char *lua, const char *want) {
  const char *const files[] = {
      "bot.yaml", "name: bad\n",
      "templates/en.yaml", "ask: \"Ask?\"\n",
      "bot.lua", lua,
      "spec/a.yaml", "- name: any\n  steps:\n    - send: hi\n",
      NULL};
  char *out = NULL;
  int rc = run_files(files, &out);
  if (!strstr(out, want)) print_message("report: %s\nwanted: %s\n", out, want);
  assert_int_not_equal(rc, 0);
  assert_non_null(strstr(out, want));
  free(out);
}

static void test_dialog_declaration_errors(void **state) {
  (void)state;
  expect_load_error("local bot = parley.bot()\n"
                    "bot:dialog('d', { steps = { { save = 'x', ask = 'nope' } },\n"
                    "  done = function() end })\n",
                    "bot.lua:2: dialog 'd' step 1 ask: no template key 'nope'");
  expect_load_error("local bot = parley.bot()\n"
                    "bot:dialog('d', { steps = {} , done = function() end })\n",
                    "bot.lua:2: dialog 'd' needs a non-empty list of steps");
  expect_load_error("local bot = parley.bot()\n"
                    "bot:dialog('d', { steps = { { save = 'x', ask = 'ask', check = '[' } },\n"
                    "  done = function() end })\n",
                    "bot.lua:2: dialog 'd' step 1 check: bad pattern '['");
  expect_load_error("local bot = parley.bot()\n"
                    "bot:dialog('d', { steps = { { save = 'x', ask = 'ask' } } })\n",
                    "bot.lua:2: dialog 'd' needs a done function");
  expect_load_error("local bot = parley.bot()\n"
                    "local s = { steps = { { save = 'x', ask = 'ask' } }, done = print }\n"
                    "bot:dialog('d', s)\nbot:dialog('d', s)\n",
                    "bot.lua:4: dialog 'd' is defined twice");
  expect_load_error("local bot = parley.bot()\n"
                    "bot:dialog('d', { steps = { { save = 'x', ask = 'ask', nudge = { after = -1 } } },\n"
                    "  done = print })\n",
                    "bot.lua:2: dialog 'd' step 1 nudge.after must be a delay");
}

static void test_middleware(void **state) {
  (void)state;
  run_source_bot("tests/lua/framework/middleware", 6);
  expect_load_error("local bot = parley.bot()\nbot:use('log')\n",
                    "bot.lua:2: bot:use needs a function(ctx, ev, next)");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_appointments_dialog),
      cmocka_unit_test(test_dialog_edges),
      cmocka_unit_test(test_dialog_declaration_errors),
      cmocka_unit_test(test_middleware),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
