/* Templates: the locale fallback chain, ICU plural categories, and the
 * load-time checks with file, line and key. */
#include "fake_driver.h"
#include "vm.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <lauxlib.h>
#include <unicode/uclean.h>
#include <stdio.h>
#include <string.h>

static const char *const BOT[] = {
    "bot.yaml", "name: tpl\ndefault_locale: en\n",
    "bot.lua", "return parley.bot()\n",
    "templates/en.yaml",
    "greeting: \"Hello {name}!\"\n"
    "only_en: \"English only\"\n"
    "order:\n"
    "  items:\n"
    "    one: \"{count} item\"\n"
    "    other: \"{count} items\"\n",
    "templates/zh.yaml", "greeting: \"\xe4\xbd\xa0\xe5\xa5\xbd {name}\"\n",
    "templates/zh-Hant.yaml", "greeting: \"\xe6\x82\xa8\xe5\xa5\xbd {name}\"\n",
    "templates/ru.yaml",
    "order:\n  items:\n    one: \"{count} \xd1\x82\xd0\xbe\xd0\xb2\xd0\xb0\xd1\x80\"\n"
    "    few: \"{count} \xd1\x82\xd0\xbe\xd0\xb2\xd0\xb0\xd1\x80\xd0\xb0\"\n"
    "    many: \"{count} \xd1\x82\xd0\xbe\xd0\xb2\xd0\xb0\xd1\x80\xd0\xbe\xd0\xb2\"\n"
    "    other: \"{count} \xd1\x82\xd0\xbe\xd0\xb2\xd0\xb0\xd1\x80\xd0\xb0\"\n",
    "templates/ar.yaml",
    "order:\n  items:\n    zero: \"zero {count}\"\n    one: \"one {count}\"\n    two: \"two {count}\"\n"
    "    few: \"few {count}\"\n    many: \"many {count}\"\n    other: \"other {count}\"\n",
    "templates/zh-Hans.yaml", "order:\n  items:\n    other: \"{count} \xe4\xbb\xb6\"\n",
    NULL};

typedef struct tctx {
  plr_vm *vm;
  char dir[256];
} tctx;

static int setup(void **state) {
  static tctx t;
  const char *dir = fd_bot_dir(BOT);
  assert_non_null(dir);
  snprintf(t.dir, sizeof t.dir, "%s", dir);
  char err[1024] = "";
  int rc = plr_vm_load(NULL, t.dir, &t.vm, err, sizeof err);
  if (rc) fprintf(stderr, "%s\n", err);
  assert_int_equal(rc, 0);
  *state = &t;
  return 0;
}

static int teardown(void **state) {
  tctx *t = *state;
  plr_vm_free(t->vm);
  fd_rm_rf(t->dir);
  return 0;
}

/* rt.render(locale, key, {name=..., count=...}); returns a static copy or
 * "ERR: message". */
static const char *render(tctx *t, const char *locale, const char *key, const char *name,
                          double count) {
  static char out[512];
  lua_State *L = plr_vm_state(t->vm);
  plr_vm_rt_get(t->vm, "render");
  lua_pushstring(L, locale);
  lua_pushstring(L, key);
  lua_createtable(L, 0, 2);
  if (name) {
    lua_pushstring(L, name);
    lua_setfield(L, -2, "name");
  }
  if (count >= 0) {
    if (count == (double)(long long)count) lua_pushinteger(L, (lua_Integer)count);
    else lua_pushnumber(L, count);
    lua_setfield(L, -2, "count");
  }
  char err[400];
  if (plr_vm_pcall(t->vm, 3, 1, err, sizeof err)) {
    snprintf(out, sizeof out, "ERR: %s", err);
    return out;
  }
  snprintf(out, sizeof out, "%s", lua_tostring(L, -1));
  lua_pop(L, 1);
  return out;
}

static void test_fallback_chain(void **state) {
  tctx *t = *state;
  assert_string_equal(render(t, "en", "greeting", "Ann", -1), "Hello Ann!");
  assert_string_equal(render(t, "zh-Hant-TW", "greeting", "Ann", -1), "\xe6\x82\xa8\xe5\xa5\xbd Ann");
  assert_string_equal(render(t, "zh_Hant", "greeting", "Ann", -1), "\xe6\x82\xa8\xe5\xa5\xbd Ann");
  /* zh-TW has no file: likely subtags make it zh-Hant-TW. */
  assert_string_equal(render(t, "zh-TW", "greeting", "Ann", -1), "\xe6\x82\xa8\xe5\xa5\xbd Ann");
  /* zh-Hans has no greeting: on to zh. */
  assert_string_equal(render(t, "zh-Hans-CN", "greeting", "Ann", -1), "\xe4\xbd\xa0\xe5\xa5\xbd Ann");
  assert_string_equal(render(t, "zh-CN", "greeting", "Ann", -1), "\xe4\xbd\xa0\xe5\xa5\xbd Ann");
  /* Nothing for fr or for the key in zh: the bot's default. */
  assert_string_equal(render(t, "fr-CA", "greeting", "Ann", -1), "Hello Ann!");
  assert_string_equal(render(t, "zh-Hant-TW", "only_en", NULL, -1), "English only");
  assert_non_null(strstr(render(t, "en", "no_such_key", NULL, -1), "unknown template key 'no_such_key'"));
  assert_non_null(strstr(render(t, "en", "greeting", NULL, -1), "needs var 'name'"));
}

static void test_plurals(void **state) {
  tctx *t = *state;
  assert_string_equal(render(t, "en", "order.items", NULL, 1), "1 item");
  assert_string_equal(render(t, "en", "order.items", NULL, 0), "0 items");
  assert_string_equal(render(t, "en", "order.items", NULL, 2), "2 items");
  /* Russian: one, few, many, other (fractions). */
  assert_string_equal(render(t, "ru", "order.items", NULL, 1), "1 \xd1\x82\xd0\xbe\xd0\xb2\xd0\xb0\xd1\x80");
  assert_string_equal(render(t, "ru", "order.items", NULL, 21), "21 \xd1\x82\xd0\xbe\xd0\xb2\xd0\xb0\xd1\x80");
  assert_string_equal(render(t, "ru", "order.items", NULL, 3), "3 \xd1\x82\xd0\xbe\xd0\xb2\xd0\xb0\xd1\x80\xd0\xb0");
  assert_string_equal(render(t, "ru", "order.items", NULL, 5), "5 \xd1\x82\xd0\xbe\xd0\xb2\xd0\xb0\xd1\x80\xd0\xbe\xd0\xb2");
  assert_string_equal(render(t, "ru", "order.items", NULL, 11), "11 \xd1\x82\xd0\xbe\xd0\xb2\xd0\xb0\xd1\x80\xd0\xbe\xd0\xb2");
  /* Arabic has all six categories. */
  assert_string_equal(render(t, "ar", "order.items", NULL, 0), "zero 0");
  assert_string_equal(render(t, "ar", "order.items", NULL, 1), "one 1");
  assert_string_equal(render(t, "ar", "order.items", NULL, 2), "two 2");
  assert_string_equal(render(t, "ar", "order.items", NULL, 3), "few 3");
  assert_string_equal(render(t, "ar", "order.items", NULL, 11), "many 11");
  assert_string_equal(render(t, "ar", "order.items", NULL, 100), "other 100");
  /* Chinese has only "other". */
  assert_string_equal(render(t, "zh-Hans", "order.items", NULL, 1), "1 \xe4\xbb\xb6");
  /* A plural template without count is misuse. */
  assert_non_null(strstr(render(t, "en", "order.items", NULL, -1), "needs a numeric 'count'"));
}

#define EXPECT_ERR(text, ...)                                          \
  do {                                                                 \
    const char *e_ = (text);                                           \
    const char *needles_[] = {__VA_ARGS__, NULL};                      \
    for (int i_ = 0; needles_[i_]; i_++)                               \
      if (!strstr(e_, needles_[i_])) fail_msg("'%s' not in '%s'", needles_[i_], e_); \
  } while (0)

/* Runs code as bot code (the bot's environment, chunk name "botcode")
 * with the template helpers below; returns a static copy of the string it
 * returns or "ERR: message". */
static const char *bot_eval(tctx *t, const char *code) {
  static char out[512];
  lua_State *L = plr_vm_state(t->vm);
  char src[2048];
  snprintf(src, sizeof src,
           "local function show(s) return setmetatable({}, {__tostring = function() return s end}) end\n"
           "%s",
           code);
  assert_int_equal(luaL_loadbufferx(L, src, strlen(src), "=botcode", "t"), LUA_OK);
  plr_vm_rt_get(t->vm, "make_env");
  assert_int_equal(lua_pcall(L, 0, 1, 0), LUA_OK);
  assert_non_null(lua_setupvalue(L, -2, 1));
  if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
    snprintf(out, sizeof out, "ERR: %s", lua_tostring(L, -1));
  } else {
    size_t n;
    const char *r = lua_tolstring(L, -1, &n);
    snprintf(out, sizeof out, "%s", r ? r : "(not a string)");
  }
  lua_pop(L, 1);
  return out;
}

/* Values filled into placeholders: text of a reply, so valid UTF-8 without
 * NUL bytes, at most 16 KiB in all, and never a table's or function's
 * address. Misuse is reported at the bot's line (not a tail call here, which
 * would leave no line to report). */
static void test_render_values(void **state) {
  tctx *t = *state;
  assert_string_equal(bot_eval(t, "local r = parley.t('en', 'greeting', {name = 42}) return r"), "Hello 42!");
  assert_string_equal(bot_eval(t, "local r = parley.t('en', 'greeting', {name = false}) return r"),
                      "Hello false!");
  assert_string_equal(bot_eval(t, "local r = parley.t('en', 'greeting', {name = show('Bo')}) return r"),
                      "Hello Bo!");
  EXPECT_ERR(bot_eval(t, "local r = parley.t('en', 'greeting', {name = {}}) return r"),
             "botcode:2:", "var 'name' must be a string, number or boolean, not a table");
  EXPECT_ERR(bot_eval(t, "local r = parley.t('en', 'greeting', {name = print}) return r"),
             "botcode:2:", "not a function");
  EXPECT_ERR(bot_eval(t, "local r = parley.t('en', 'greeting', {name = '\\255'}) return r"),
             "botcode:2:", "var 'name' is not valid UTF-8");
  EXPECT_ERR(bot_eval(t, "local r = parley.t('en', 'greeting', {name = 'a\\0b'}) return r"),
             "botcode:2:", "var 'name' contains a NUL byte");
  /* At the limit, and one byte over it. */
  assert_string_equal(bot_eval(t, "return #parley.t('en', 'greeting', {name = ('x'):rep(16384 - 7)})"),
                      "16384");
  EXPECT_ERR(bot_eval(t, "local r = parley.t('en', 'greeting', {name = ('x'):rep(16384 - 6)}) return r"),
             "botcode:2:", "longer than 16384 bytes");
  /* A huge value is refused before it is copied. */
  EXPECT_ERR(bot_eval(t, "local r = parley.t('en', 'greeting', {name = ('x'):rep(1 << 24)}) return r"),
             "botcode:2:", "longer than 16384 bytes");
  EXPECT_ERR(bot_eval(t, "local r = parley.t('en', 'greeting', {}) return r"), "botcode:2:",
             "needs var 'name'");
  EXPECT_ERR(bot_eval(t, "local r = parley.t('en', 'nope') return r"), "botcode:2:",
             "unknown template key 'nope'");
  EXPECT_ERR(bot_eval(t, "local r = parley.t({}, 'greeting', {name = 'x'}) return r"), "botcode:2:",
             "template locale must be a string");
  EXPECT_ERR(bot_eval(t, "local r = parley.t('en', 'greeting', 'x') return r"), "botcode:2:",
             "template vars must be a table");
}

/* The locale chain cache takes any string from bot code: it stays bounded. */
static void test_chain_cache_bounded(void **state) {
  tctx *t = *state;
  lua_State *L = plr_vm_state(t->vm);
  const char *loop = "for i = 1, %d do parley.t('x' .. i, 'only_en') end return 'ok'";
  char code[200];
  snprintf(code, sizeof code, loop, 2000);
  assert_string_equal(bot_eval(t, code), "ok");
  lua_gc(L, LUA_GCCOLLECT);
  size_t before = plr_vm_memory(t->vm);
  snprintf(code, sizeof code, loop, 20000);
  assert_string_equal(bot_eval(t, code), "ok");
  lua_gc(L, LUA_GCCOLLECT);
  size_t after = plr_vm_memory(t->vm);
  /* 18,000 more locales: unbounded, the cache would grow by megabytes. */
  if (after > before + 256 * 1024)
    fail_msg("memory grew from %zu to %zu bytes", before, after);
}

/* Loads a bot with the given English and Spanish templates; returns the
 * check's error text ("" when it loaded). */
static const char *check(const char *en, const char *es) {
  static char err[2048];
  const char *files[] = {"bot.yaml", "name: chk\ndefault_locale: en\n",
                         "bot.lua", "return parley.bot()\n",
                         "templates/en.yaml", en,
                         es ? "templates/es.yaml" : NULL, es, NULL};
  const char *dir = fd_bot_dir(files);
  char d[256];
  snprintf(d, sizeof d, "%s", dir);
  err[0] = '\0';
  int rc = parley_runtime_check(d, err, sizeof err);
  fd_rm_rf(d);
  if (rc == 0) return "";
  return err;
}


static void test_load_errors(void **state) {
  (void)state;
  assert_string_equal(check("a: \"x {n}\"\n", "a: \"y {n}\"\n"), "");
  EXPECT_ERR(check("a: \"x\"\nb: [unclosed\n", NULL), "templates/en.yaml:", "line 2");
  EXPECT_ERR(check("a: \"Hi {name}\"\n", "a: \"Hola {nombre}\"\n"),
             "templates/es.yaml:1: a: unknown placeholder {nombre}");
  EXPECT_ERR(check("a: \"x\"\n", "a: \"y\"\nb: \"z\"\n"),
             "templates/es.yaml:2: b: missing in the default locale (en)");
  EXPECT_ERR(check("n:\n  one: \"1\"\n  few: \"2\"\n", NULL),
             "templates/en.yaml:", "n: plural template has no 'other' form");
  EXPECT_ERR(check("n:\n  one: \"1\"\n  lots: \"2\"\n  other: \"3\"\n", NULL),
             "templates/en.yaml:3: n: unknown plural category 'lots'");
  EXPECT_ERR(check("grp:\n  x:\n    other: \"{count} {who}\"\n",
                   "grp:\n  x:\n    other: \"{count} {quien}\"\n"),
             "templates/es.yaml:", "grp.x: unknown placeholder {quien}");
  /* Several errors are all reported. */
  EXPECT_ERR(check("a: \"x\"\n", "b: \"y\"\nc: \"{z}\"\n"), "es.yaml:1: b:", "es.yaml:2: c:");
}

static void test_default_locale_file_required(void **state) {
  (void)state;
  static const char *const files[] = {"bot.yaml", "name: chk\ndefault_locale: de\n",
                                      "bot.lua", "return parley.bot()\n",
                                      "templates/en.yaml", "a: \"x\"\n", NULL};
  const char *dir = fd_bot_dir(files);
  char d[256];
  snprintf(d, sizeof d, "%s", dir);
  char err[512] = "";
  assert_int_not_equal(parley_runtime_check(d, err, sizeof err), 0);
  fd_rm_rf(d);
  EXPECT_ERR(err, "default_locale: no template file templates/de.yaml for the default locale de");
}

static void test_bot_lua_errors(void **state) {
  (void)state;
  static const char *const files[] = {"bot.yaml", "name: chk\nfallback_reply: nope\n",
                                      "bot.lua", "local bot = parley.bot()\nreturn bot\n",
                                      "templates/en.yaml", "a: \"x\"\n", NULL};
  const char *dir = fd_bot_dir(files);
  char d[256];
  snprintf(d, sizeof d, "%s", dir);
  char err[512] = "";
  assert_int_not_equal(parley_runtime_check(d, err, sizeof err), 0);
  EXPECT_ERR(err, "fallback_reply: no template key 'nope'");
  /* A syntax error names bot.lua and the line. */
  FILE *fp;
  char path[300];
  snprintf(path, sizeof path, "%s/bot.lua", d);
  fp = fopen(path, "w");
  fputs("local bot = parley.bot()\n\nbot:on_open(function( end)\nreturn bot\n", fp);
  fclose(fp);
  snprintf(path, sizeof path, "%s/bot.yaml", d);
  fp = fopen(path, "w");
  fputs("name: chk\nsurprise: 1\n", fp);
  fclose(fp);
  assert_int_not_equal(parley_runtime_check(d, err, sizeof err), 0);
  EXPECT_ERR(err, "bot.yaml:2", "surprise");
  fp = fopen(path, "w");
  fputs("name: chk\n", fp);
  fclose(fp);
  assert_int_not_equal(parley_runtime_check(d, err, sizeof err), 0);
  EXPECT_ERR(err, "bot.lua:3:");
  /* A runaway top level is stopped by the load budget. */
  snprintf(path, sizeof path, "%s/bot.lua", d);
  fp = fopen(path, "w");
  fputs("while true do end\n", fp);
  fclose(fp);
  assert_int_not_equal(parley_runtime_check(d, err, sizeof err), 0);
  EXPECT_ERR(err, "instruction budget");
  fd_rm_rf(d);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_fallback_chain, setup, teardown),
      cmocka_unit_test_setup_teardown(test_plurals, setup, teardown),
      cmocka_unit_test_setup_teardown(test_render_values, setup, teardown),
      cmocka_unit_test_setup_teardown(test_chain_cache_bounded, setup, teardown),
      cmocka_unit_test(test_load_errors),
      cmocka_unit_test(test_default_locale_file_required),
      cmocka_unit_test(test_bot_lua_errors),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  /* ICU keeps process-wide caches (plural data, likely subtags); freeing
   * them keeps the leak checker's report about this program's own memory. */
  u_cleanup();
  return failed;
}
