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

#include "ops/metrics.h"
#include "rt_metrics.h"
#include "proactive.h"

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

/* Loads a bot with this bot.yaml; returns the runner's status and report. */
static int run_yaml(const char *yaml, char **out) {
  const char *const files[] = {
      "bot.yaml", yaml,
      "templates/en.yaml", "x: \"x\"\n",
      "bot.lua",
      "local bot = parley.bot()\n"
      "bot:on_message(function(ctx)\n"
      "  local s = parley.config.settings\n"
      "  local out = {}\n"
      "  for _, k in ipairs({'url', 'port', 'ratio', 'debug', 'mode', 'tags'}) do\n"
      "    local v = s[k]\n"
      "    out[#out + 1] = k .. '=' .. (type(v) == 'table' and #v or tostring(v)) .. ':' ..\n"
      "      (math.type(v) or type(v))\n"
      "  end\n"
      "  ctx:reply(table.concat(out, ' '))\n"
      "end)\n",
      "spec/a.yaml",
      "- name: typed\n  steps:\n    - send: hi\n      expect:\n        - reply: "
      "\"url=http://a:string port=8080:integer ratio=0.5:float debug=true:boolean "
      "mode=fast:string tags=2:table\"\n",
      NULL};
  return run_files(files, out);
}

#define SCHEMA                                                                            \
  "name: typed\n"                                                                        \
  "settings_schema:\n"                                                                   \
  "  url: {type: string, required: true, pattern: \"^https?://\"}\n"                     \
  "  port: {type: integer, default: 8080, min: 1, max: 65535}\n"                         \
  "  ratio: {type: number, default: 0.5}\n"                                              \
  "  debug: {type: boolean, default: false}\n"                                           \
  "  mode: {type: string, enum: [fast, careful], default: careful}\n"                    \
  "  tags: {type: list, default: []}\n"                                                  \
  "settings:\n"

static void expect_settings_error(const char *yaml, const char *want) {
  char *out = NULL;
  int rc = run_yaml(yaml, &out);
  if (!strstr(out, want)) print_message("report: %s\nwanted: %s\n", out, want);
  assert_int_equal(rc, PARLEY_ECONFIG);
  assert_non_null(strstr(out, want));
  free(out);
}

/* Defaults and declared types reach Lua; the environment's text values
 * are converted like bot.yaml's. */
static void test_settings_typed(void **state) {
  (void)state;
  char *out = NULL;
  setenv("PARLEY_BOT_SETTINGS__DEBUG", "true", 1);
  int rc = run_yaml(SCHEMA "  url: http://a\n  mode: fast\n  tags: [a, b]\n", &out);
  unsetenv("PARLEY_BOT_SETTINGS__DEBUG");
  if (rc) print_message("%s\n", out);
  assert_int_equal(rc, 0);
  free(out);
}

/* Every error names the file and the line of the value at fault. */
static void test_settings_errors(void **state) {
  (void)state;
  expect_settings_error(SCHEMA "  mode: fast\n",
                        "bot.yaml:3: settings.url: required by settings_schema but not set (in "
                        "bot.yaml or PARLEY_BOT_SETTINGS__URL)");
  expect_settings_error(SCHEMA "  url: ftp://a\n",
                        "bot.yaml:10: settings.url: 'ftp://a' does not match the pattern "
                        "'^https?://' (settings_schema line 3)");
  expect_settings_error(SCHEMA "  url: http://a\n  port: 80x\n",
                        "bot.yaml:11: settings.port: '80x' is not an integer");
  expect_settings_error(SCHEMA "  url: http://a\n  port: 70000\n",
                        "bot.yaml:11: settings.port: must be at most 65535");
  expect_settings_error(SCHEMA "  url: http://a\n  mode: slow\n",
                        "bot.yaml:11: settings.mode: 'slow' is not one of fast, careful");
  expect_settings_error(SCHEMA "  url: http://a\n  debug: maybe\n",
                        "bot.yaml:11: settings.debug: 'maybe' is not true or false");
  expect_settings_error(SCHEMA "  url: http://a\n  tags: x\n",
                        "bot.yaml:11: settings.tags: must be a list");
  expect_settings_error(SCHEMA "  url: http://a\n  prot: 1\n",
                        "bot.yaml:11: settings.prot: unknown key 'prot' (settings_schema does not declare it)");
  expect_settings_error("name: t\nsettings_schema:\n  a: {type: strng}\n",
                        "bot.yaml:3: settings_schema.a.type: unknown type 'strng'");
  expect_settings_error("name: t\nsettings_schema:\n  a: {type: integer, default: x}\n",
                        "bot.yaml:3: settings_schema.a.default: 'x' is not an integer");
  expect_settings_error("name: t\nsettings_schema:\n  a: {type: string, pattern: \"(\"}\n",
                        "bot.yaml:3: settings_schema.a.pattern: invalid regular expression");
  expect_settings_error("name: t\nsettings_schema:\n  a: {type: string, requird: true}\n",
                        "unknown key 'requird' (did you mean 'required'?)");
  setenv("PARLEY_BOT_SETTINGS__PORT", "http", 1);
  expect_settings_error(SCHEMA "  url: http://a\n",
                        "settings.port: 'http' is not an integer");
  unsetenv("PARLEY_BOT_SETTINGS__PORT");
}

/* /metrics gains handler runs and durations by handler, HTTP calls by host
 * and status, template misses by locale and dialog outcomes by step. */
static void test_metrics(void **state) {
  (void)state;
  static const char *const files[] = {
      "bot.yaml", "name: metricsbot\ndefault_locale: en\nfallback_reply: oops\n"
                  "http:\n  allow: [orders.test]\n",
      "templates/en.yaml", "hi: \"Hi\"\nonly_en: \"English\"\nask: \"Name?\"\n"
                           "oops: \"Oops\"\n",
      "templates/es.yaml", "hi: \"Hola\"\n",
      "bot.lua",
      "local bot = parley.bot()\n"
      "bot:dialog('signup', { { save = 'name', ask = 'ask' }, start = '^signup$',\n"
      "  done = function(ctx, d) ctx:reply('ok ' .. d.name) end })\n"
      "bot:command('/es', function(ctx) ctx:set_locale('es') ctx:reply(ctx:t('only_en')) end)\n"
      "bot:command('/fetch', function(ctx) local r = http.get('http://orders.test/1')\n"
      "  ctx:reply('got ' .. r.status) end)\n"
      "bot:command('/boom', function(ctx) error('boom') end)\n"
      "bot:match('^hello', function(ctx) ctx:reply(ctx:t('hi')) end)\n",
      NULL};
  char dir[256], err[512];
  snprintf(dir, sizeof dir, "%s", fd_bot_dir(files));
  fd f;
  assert_int_equal(fd_open(&f, dir, err, sizeof err), 0);
  pmet_registry *reg = pmet_registry_new();
  plr_runtime_set_metrics(f.r, reg);
  fd_assign(&f, "c1", "en");
  fd_message(&f, "c1", 1, "hello there");
  fd_pump(&f);
  fd_message(&f, "c1", 2, "hello again");
  fd_pump(&f);
  fd_message(&f, "c1", 3, "/boom");
  fd_pump(&f);
  fd_message(&f, "c1", 4, "/fetch");
  fd_pump(&f);
  assert_int_equal(f.nhttp, 1);
  fd_http_complete(&f, 0, 404, "{}");
  fd_pump(&f);
  fd_message(&f, "c1", 5, "signup");
  fd_pump(&f);
  fd_message(&f, "c1", 6, "Ana");
  fd_pump(&f);
  fd_message(&f, "c1", 7, "/es");
  fd_pump(&f);
  char *text = NULL;
  size_t len = 0;
  assert_int_equal(pmet_render(reg, &text, &len), 0);
  print_message("%s", text);
  static const char *const want[] = {
      "# TYPE parley_handler_runs_total counter",
      "parley_handler_runs_total{handler=\"match ^hello\",outcome=\"ok\"} 2\n",
      "parley_handler_runs_total{handler=\"command /boom\",outcome=\"error\"} 1\n",
      "parley_handler_runs_total{handler=\"command /fetch\",outcome=\"ok\"} 1\n",
      "parley_handler_runs_total{handler=\"dialog signup\",outcome=\"ok\"} 2\n",
      "# TYPE parley_handler_duration_seconds histogram",
      "parley_handler_duration_seconds_count{handler=\"match ^hello\"} 2\n",
      "parley_handler_duration_seconds_bucket{handler=\"command /fetch\",le=\"+Inf\"} 1\n",
      "parley_http_requests_total{host=\"orders.test\",status=\"404\"} 1\n",
      "parley_dialog_steps_total{dialog=\"signup\",step=\"name\",outcome=\"started\"} 1\n",
      "parley_dialog_steps_total{dialog=\"signup\",step=\"name\",outcome=\"completed\"} 1\n",
      "parley_template_misses_total{locale=\"es\"} 1\n",
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    if (!strstr(text, want[i])) print_message("missing: %s\n", want[i]);
    assert_non_null(strstr(text, want[i]));
  }
  free(text);
  fd_close(&f);
  pmet_registry_free(reg);
  fd_rm_rf(dir);
}

static void on_done(void *ud, int status, uint64_t seq, bool dup) {
  (void)seq;
  (void)dup;
  int *calls = ud;
  *calls += status == 0 ? 1 : 100;
}

/* The sidecar API's message by template: rendered in the conversation's
 * locale with vars, as text, quick replies or a card, with the Lua reply's
 * checks and limits, and the caller's message id. */
static void test_reply_by_template(void **state) {
  (void)state;
  static const char *const files[] = {
      "bot.yaml", "name: pbot\ndefault_locale: en\n",
      "templates/en.yaml", "ready: \"Order {id} is ready\"\npick: \"Pick a slot\"\n",
      "templates/es.yaml", "ready: \"El pedido {id} est\xc3\xa1 listo\"\n",
      "bot.lua", "local bot = parley.bot()\n",
      NULL};
  char dir[256], err[512];
  snprintf(dir, sizeof dir, "%s", fd_bot_dir(files));
  fd f;
  assert_int_equal(fd_open(&f, dir, err, sizeof err), 0);
  fd_assign(&f, "c-es", "es");
  fd_pump(&f);
  uint8_t id[PARLEY_MSG_ID_LEN] = {1, 2, 3};
  int calls = 0;
  char why[512] = "";
  assert_int_equal(plr_runtime_send_reply_json(f.r, "c-es",
                   "{\"template\":\"ready\",\"vars\":{\"id\":\"A-7\"}}", id, on_done, &calls,
                   why, sizeof why), 0);
  fd_pump(&f);
  const fd_send *sent = fd_last_send(&f, "c-es");
  assert_non_null(sent);
  assert_string_equal(sent->text, "El pedido A-7 est\xc3\xa1 listo");
  assert_memory_equal(sent->msg_id, id, PARLEY_MSG_ID_LEN);
  assert_int_equal(calls, 1);
  /* Quick replies: the locale's fallback chain answers "pick" in English. */
  id[0] = 2;
  assert_int_equal(plr_runtime_send_reply_json(f.r, "c-es",
                   "{\"template\":\"pick\",\"quick_replies\":[\"9:00\",{\"label\":\"10:00\","
                   "\"payload\":\"slot:10\"}]}", id, on_done, &calls, why, sizeof why), 0);
  fd_pump(&f);
  sent = fd_last_send(&f, "c-es");
  assert_int_equal(sent->kind, PARLEY_CONTENT_QUICK_REPLIES);
  assert_string_equal(sent->text, "Pick a slot");
  assert_non_null(strstr(sent->buttons, "9:00|9:00"));
  assert_non_null(strstr(sent->buttons, "10:00|slot:10"));
  /* A card whose buttons carry payloads and links. */
  id[0] = 3;
  assert_int_equal(plr_runtime_send_reply_json(f.r, "c-es",
                   "{\"template\":\"ready\",\"vars\":{\"id\":\"B\"},\"card\":{\"title\":\"T\","
                   "\"buttons\":[{\"label\":\"Track\",\"url\":\"https://t.example/B\"}]}}",
                   id, on_done, &calls, why, sizeof why), 0);
  fd_pump(&f);
  sent = fd_last_send(&f, "c-es");
  assert_int_equal(sent->kind, PARLEY_CONTENT_CARD);
  assert_string_equal(sent->title, "T");
  assert_non_null(strstr(sent->buttons, "https://t.example/B"));
  assert_int_equal(calls, 3);
  size_t before = fd_count_sends(&f, "c-es");
  /* Refusals: what a ctx:reply would refuse, with the reason. */
  static const struct { const char *json, *why; } bad[] = {
      {"{\"template\":\"nope\"}", "unknown template key 'nope'"},
      {"{\"template\":\"ready\"}", "needs var 'id'"},
      {"{\"template\":\"pick\",\"quick_replies\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\","
       "\"7\",\"8\",\"9\",\"10\",\"11\",\"12\",\"13\"]}", "at most 12 quick replies"},
      {"{\"template\":\"pick\",\"quick_replies\":[],\"card\":{}}", "not both"},
      {"{\"template\":\"pick\",\"card\":{\"buttons\":[{\"label\":\"x\"}]}}",
       "needs exactly one of postback or url"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    why[0] = '\0';
    assert_int_equal(plr_runtime_send_reply_json(f.r, "c-es", bad[i].json, id, on_done, &calls,
                                                 why, sizeof why), PARLEY_EINVAL);
    if (!strstr(why, bad[i].why)) print_message("got: %s\nwanted: %s\n", why, bad[i].why);
    assert_non_null(strstr(why, bad[i].why));
  }
  assert_int_equal(plr_runtime_send_reply_json(f.r, "c-other", "{\"template\":\"pick\"}", id,
                                               on_done, &calls, why, sizeof why),
                   PARLEY_ENOTFOUND);
  fd_pump(&f);
  assert_int_equal(fd_count_sends(&f, "c-es"), before);
  assert_int_equal(calls, 3);
  fd_close(&f);
  fd_rm_rf(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_appointments_dialog),
      cmocka_unit_test(test_dialog_edges),
      cmocka_unit_test(test_dialog_declaration_errors),
      cmocka_unit_test(test_middleware),
      cmocka_unit_test(test_settings_typed),
      cmocka_unit_test(test_settings_errors),
      cmocka_unit_test(test_metrics),
      cmocka_unit_test(test_reply_by_template),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
