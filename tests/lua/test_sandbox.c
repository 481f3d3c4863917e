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
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
