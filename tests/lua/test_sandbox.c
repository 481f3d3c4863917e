/* The sandbox: every forbidden capability is tried from a handler and
 * refused, runaway handlers are stopped without taking the others down. */
#include "fake_driver.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

static const char *const PROBE[] = {
    "bot.yaml",
    "name: probe\ndefault_locale: en\nfallback_reply: sorry\n"
    "limits:\n  memory: 8MiB\n  instructions: 20000000\n  cpu_time: 1s\n",
    "templates/en.yaml", "sorry: \"Sorry, something went wrong.\"\n",
    "bot.lua",
    "local bot = parley.bot()\n"
    "bot:on_message(function(ctx, msg)\n"
    "  local f, err = load(msg.text, '=probe')\n"
    "  if not f then ctx:reply('load error: ' .. err) return end\n"
    "  local ok, v = pcall(f, ctx, msg)\n"
    "  ctx:reply((ok and 'ok: ' or 'error: ') .. tostring(v))\n"
    "end)\n"
    "return bot\n",
    NULL};

typedef struct probe {
  fd f;
  char dir[256];
  uint64_t seq;
} probe;

static int setup(void **state) {
  static probe p;
  memset(&p, 0, sizeof p);
  const char *dir = fd_bot_dir(PROBE);
  assert_non_null(dir);
  snprintf(p.dir, sizeof p.dir, "%s", dir);
  char err[1024] = "";
  int rc = fd_open(&p.f, p.dir, err, sizeof err);
  if (rc) fprintf(stderr, "load: %s\n", err);
  assert_int_equal(rc, 0);
  fd_assign(&p.f, "c1", "en");
  *state = &p;
  return 0;
}

static int teardown(void **state) {
  probe *p = *state;
  fd_close(&p->f);
  fd_rm_rf(p->dir);
  return 0;
}

/* Runs code in the probe's handler and returns its reply text. */
static const char *run(probe *p, const char *code) {
  size_t before = p->f.nsends;
  fd_message(&p->f, "c1", ++p->seq, code);
  fd_pump(&p->f);
  if (p->f.nsends == before) return "(no reply)";
  return p->f.sends[p->f.nsends - 1].text;
}

#define REFUSED(p, code, needle)                                                   \
  do {                                                                             \
    const char *out_ = run(p, code);                                               \
    if (!strstr(out_, needle)) fail_msg("%s\n  -> %s\n  (wanted %s)", code, out_, needle); \
  } while (0)

static void test_globals_absent(void **state) {
  probe *p = *state;
  REFUSED(p, "return io", "undefined global 'io'");
  REFUSED(p, "return os.time()", "undefined global 'os'");
  REFUSED(p, "return package.loadlib", "undefined global 'package'");
  REFUSED(p, "return require('os')", "undefined global 'require'");
  REFUSED(p, "return debug.getinfo(1)", "undefined global 'debug'");
  REFUSED(p, "return dofile('/etc/passwd')", "undefined global 'dofile'");
  REFUSED(p, "return loadfile('/etc/passwd')", "undefined global 'loadfile'");
  REFUSED(p, "return collectgarbage('count')", "undefined global 'collectgarbage'");
  REFUSED(p, "return undefined_name", "undefined global 'undefined_name'");
  /* And the allowed ones are there. */
  REFUSED(p, "return string.upper('a') .. math.max(1, 2) .. utf8.char(228) .. #table.pack(1, 2)", "ok: A2\xc3\xa4" "2");
}

static void test_string_dump_and_binary_chunks(void **state) {
  probe *p = *state;
  REFUSED(p, "return string.dump", "ok: nil");
  REFUSED(p, "return ('').dump", "ok: nil");
  REFUSED(p, "return load(string.char(27) .. 'LuaT', 'x', 'b')", "only text chunks");
  REFUSED(p, "local f, e = load(string.char(27) .. 'LuaT\\0') return e", "binary chunk");
  REFUSED(p, "local f, e = load(string.char(27) .. 'LuaT\\0', 'x', 't', {}) return e", "binary chunk");
}

static void test_shared_tables_read_only(void **state) {
  probe *p = *state;
  REFUSED(p, "string.upper = nil", "read-only table 'string'");
  REFUSED(p, "table.insert = print", "read-only table 'table'");
  REFUSED(p, "math.pi = 3", "read-only table 'math'");
  REFUSED(p, "utf8.char = nil", "read-only table 'utf8'");
  REFUSED(p, "parley.bot = nil", "read-only table 'parley'");
  REFUSED(p, "json.encode = nil", "read-only table 'json'");
  REFUSED(p, "http.get = nil", "read-only table 'http'");
  REFUSED(p, "setmetatable(string, {})", "protected metatable");
  REFUSED(p, "rawset(string, 'upper', 1)", "read-only");
  REFUSED(p, "parley.config.name = 'x'", "read-only");
  /* The string metatable is hidden, so nothing can be poisoned through it. */
  REFUSED(p, "return getmetatable('')", "ok: false");
  REFUSED(p, "getmetatable('').__index = {}", "attempt to index");
  REFUSED(p, "return ('abc'):upper()", "ok: ABC");
  REFUSED(p, "setmetatable(_G, nil)", "protected metatable");
  REFUSED(p, "setmetatable({}, {__gc = function() while true do end end})", "__gc metamethods are not allowed");
}

static void test_memory_bombs(void **state) {
  probe *p = *state;
  REFUSED(p, "local s = string.rep('x', 64 * 1024 * 1024) return #s", "not enough memory");
  REFUSED(p, "local t = {} for i = 1, 1e8 do t[i] = i end return #t", "not enough memory");
  /* Many live strings: 4 KiB each, so that the collections near the cap
   * scan a few thousand objects, not a hundred thousand, and the cap, not
   * the 1 s deadline, stops it on a loaded machine too. */
  REFUSED(p, "local t = {} for i = 1, 1e8 do t[#t + 1] = ('x'):rep(4096) .. i end", "not enough memory");
  /* The state is usable afterwards. */
  REFUSED(p, "return 40 + 2", "ok: 42");
  assert_true(plr_vm_memory(plr_runtime_vm(p->f.r)) < 8u * 1024 * 1024);
}

static void test_endless_loops(void **state) {
  probe *p = *state;
  plr_stats st;
  /* The probe's own pcall catches the first budget error; the next
   * instruction fails again, so the handler is abandoned and the
   * conversation gets the fallback reply. */
  REFUSED(p, "while true do end", "Sorry, something went wrong.");
  REFUSED(p, "while true do pcall(function() while true do end end) end",
          "Sorry, something went wrong.");
  REFUSED(p, "local function f() return pcall(f) end while true do f() end",
          "Sorry, something went wrong.");
  REFUSED(p, "while true do xpcall(function() while true do end end, function() while true do end end) end",
          "Sorry, something went wrong.");
  REFUSED(p, "coroutine.wrap(function() while true do end end)()", "Sorry, something went wrong.");
  REFUSED(p, "local x <close> = setmetatable({}, {__close = function() while true do end end}) while true do end",
          "Sorry, something went wrong.");
  REFUSED(p, "string.rep('x', 1000):gsub('.', function() while true do end end)",
          "Sorry, something went wrong.");
  /* Few instructions, much work in C: the time limit stops it. */
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  REFUSED(p, "for i = 1, 1e9 do local s = string.rep('x', 1e6) end", "Sorry, something went wrong.");
  clock_gettime(CLOCK_MONOTONIC, &b);
  double secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
  printf("    C-heavy loop stopped after %.2f s (cpu_time 1s)\n", secs);
  assert_true(secs < 10.0);
  plr_runtime_stats(p->f.r, &st);
  assert_int_equal(st.budget_exceeded, 8);
  assert_int_equal(st.failures, 8);
  /* Every other handler goes on. */
  REFUSED(p, "return 'still here'", "ok: still here");
  /* Every one of these events was committed. */
  const fd_commit *c = fd_last_commit(&p->f, "c1");
  assert_non_null(c);
  assert_int_equal(c->ack_seq, p->seq);
}

static void test_yield_outside_coroutine(void **state) {
  probe *p = *state;
  REFUSED(p, "coroutine.yield(1)", "Sorry, something went wrong.");
  REFUSED(p, "local co = coroutine.wrap(function() coroutine.yield(5) end) return co()", "ok: 5");
  REFUSED(p, "return coroutine.running()", "ok: nil");
  REFUSED(p, "return coroutine.wrap(function() return type(coroutine.running()) end)()", "ok: thread");
  REFUSED(p, "return coroutine.wrap(function() return http.get('http://x.example/') end)()",
          "not in bot.yaml http.allow");
}

/* A plain text reply is checked in C (C.send_text), the other replies in
 * runtime.lua: both must accept exactly the texts utf8.len accepts without
 * a NUL byte. Edge sequences (overlong forms, surrogates, past U+10FFFF,
 * cut sequences, five- and six-byte forms) and pseudo-random strings over
 * the bytes where UTF-8 rules change, each sent both ways. */
#define UTF8_PROBE(cases)                                                          \
  "local ctx = ... local bad, n = {}, 0\n"                                         \
  "local function try(s)\n"                                                        \
  "  n = n + 1\n"                                                                  \
  "  local want = utf8.len(s) ~= nil and not s:find('\\0', 1, true)\n"            \
  "  local ok1 = pcall(ctx.reply, ctx, s)\n"                                       \
  "  local ok2 = pcall(ctx.reply, ctx, {text = s})\n"                             \
  "  if ok1 ~= want or ok2 ~= want then bad[#bad + 1] = s:gsub('.', function(c)\n" \
  "    return string.format('%02x', c:byte()) end) end\n"                          \
  "end\n" cases                                                                    \
  "return #bad .. ' of ' .. n .. ' ' .. table.concat(bad, ',')"

static void test_reply_utf8_checks(void **state) {
  probe *p = *state;
  REFUSED(p, UTF8_PROBE(
      "for _, s in ipairs({'', 'a', '\\0', 'a\\0b', '\\x7f', '\\x80', '\\xbf', '\\xc0\\x80',\n"
      "  '\\xc1\\xbf', '\\xc2\\x80', '\\xdf\\xbf', '\\xc2', '\\xc2a', '\\xe0\\x80\\x80',\n"
      "  '\\xe0\\x9f\\xbf', '\\xe0\\xa0\\x80', '\\xed\\x9f\\xbf', '\\xed\\xa0\\x80',\n"
      "  '\\xed\\xbf\\xbf', '\\xee\\x80\\x80', '\\xef\\xbf\\xbf', '\\xe2\\x82',\n"
      "  '\\xf0\\x8f\\xbf\\xbf', '\\xf0\\x90\\x80\\x80', '\\xf4\\x8f\\xbf\\xbf',\n"
      "  '\\xf4\\x90\\x80\\x80', '\\xf5\\x80\\x80\\x80', '\\xf0\\x90\\x80',\n"
      "  '\\xf8\\x88\\x80\\x80\\x80', '\\xfc\\x84\\x80\\x80\\x80\\x80', '\\xfe', '\\xff',\n"
      "  'caf\\xc3\\xa9', '\\xe2\\x82\\xac1', 'x\\xf0\\x9f\\x98\\x80y'}) do try(s) end\n"),
      "ok: 0 of 35 ");
  /* Mostly invalid by construction: the valid ones are sent twice each. */
  const char *fuzz = UTF8_PROBE(
      "local B = {0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1,\n"
      "  0xc2, 0xdf, 0xe0, 0xe1, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xf8, 0xfc, 0xfe, 0xff}\n"
      "local x = SEED\n"
      "for i = 1, 80 do\n"
      "  local t = {}\n"
      "  for k = 1, 1 + i % 4 do x = (x * 1103515245 + 12345) % 2147483648\n"
      "    t[k] = string.char(B[1 + (x >> 16) % #B]) end\n"
      "  try(table.concat(t))\n"
      "end\n");
  for (int seed = 1; seed <= 2; seed++) {
    char code[4096];
    const char *at = strstr(fuzz, "SEED");
    snprintf(code, sizeof code, "%.*s%d%s", (int)(at - fuzz), fuzz, seed, at + 4);
    REFUSED(p, code, "ok: 0 of 80 ");
  }
}

/* The bindings: misuse raises, expected failures return nil, err. */
static void test_bindings_misuse(void **state) {
  probe *p = *state;
  REFUSED(p, "local ctx = ... ctx:reply(42)", "reply must be a string or a table");
  REFUSED(p, "local ctx = ... ctx:reply({card = {title = 't', buttons = {{label = 'x', postback = 'a', url = 'b'}}}})",
          "needs exactly one of postback or url");
  REFUSED(p, "local ctx = ... ctx:reply({card = {}})", "a card needs a title, a text or an image");
  REFUSED(p, "local ctx = ... ctx:reply({quick_replies = {text = 'x', options = {}}})", "non-empty list");
  REFUSED(p, "local ctx = ... ctx:reply('bad \\255 utf8')", "not valid UTF-8");
  REFUSED(p, "local ctx = ... ctx:reply(string.rep('x', 20000))", "longer than 16384 bytes");
  REFUSED(p, "local ctx = ... return ctx:t('nope')", "unknown template key 'nope'");
  REFUSED(p, "local ctx = ... ctx:after(-1, 'x')", "between 0 and one year");
  REFUSED(p, "local ctx = ... ctx:after(5, 'x')", "no on_timer handler for 'x'");
  REFUSED(p, "local ctx = ... ctx:tag('')", "a tag is a string of 1 to 64 bytes");
  REFUSED(p, "local ctx = ... ctx:handoff()", "handoff needs a queue name");
  REFUSED(p, "local ctx = ... ctx.log(1, 2)", "ctx methods are called with ':'");
  REFUSED(p, "local ctx = ... ctx:log('loud', 'x')", "log level must be debug, info, warn or error");
  REFUSED(p, "return parley.bot()", "may be called only once");
  REFUSED(p, "return http.get('ftp://example.com/')", "url must start with http:// or https://");
  REFUSED(p, "return json.encode(print)", "cannot encode a function");
  REFUSED(p, "return json.encode({[true] = 1})", "non-string key");
  /* Expected failures are values, not errors. */
  REFUSED(p, "local v, err = json.decode('{bad') return tostring(v) .. ' ' .. err", "ok: nil Expected");
  REFUSED(p, "return json.encode({b = 1, a = {1, 2, 'x'}, c = json.null})", "ok: {\"a\":[1,2,\"x\"],\"b\":1,\"c\":null}");
  REFUSED(p, "return json.decode('{\"n\": 5}').n", "ok: 5");
  /* A ctx kept past its handler is refused. */
  REFUSED(p, "KEPT = ... return 'kept'", "ok: kept");
  REFUSED(p, "KEPT:reply('late')", "ctx used after its handler finished");
}

/* With the heap full of the bot's own data, events still get through the
 * runtime: handlers fail for lack of memory, nothing crashes, and the
 * events are acknowledged. */
static void test_heap_full_between_events(void **state) {
  probe *p = *state;
  run(p, "BIG = false for i = 1, 1e9 do BIG = {BIG, i} end");
  for (int i = 0; i < 3; i++) run(p, "return 1");
  plr_stats st;
  plr_runtime_stats(p->f.r, &st);
  assert_true(st.failures >= 1);
  const fd_commit *c = fd_last_commit(&p->f, "c1");
  assert_non_null(c);
  assert_int_equal(c->ack_seq, p->seq);
  assert_true(plr_vm_memory(plr_runtime_vm(p->f.r)) <= 8u * 1024 * 1024 + 64 * 1024);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_globals_absent, setup, teardown),
      cmocka_unit_test_setup_teardown(test_string_dump_and_binary_chunks, setup, teardown),
      cmocka_unit_test_setup_teardown(test_shared_tables_read_only, setup, teardown),
      cmocka_unit_test_setup_teardown(test_memory_bombs, setup, teardown),
      cmocka_unit_test_setup_teardown(test_endless_loops, setup, teardown),
      cmocka_unit_test_setup_teardown(test_yield_outside_coroutine, setup, teardown),
      cmocka_unit_test_setup_teardown(test_heap_full_between_events, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bindings_misuse, setup, teardown),
      cmocka_unit_test_setup_teardown(test_reply_utf8_checks, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
