/* The bounded pattern functions (strmatch.c) against the standard library:
 * the same results on a table of cases, a quick error on pathological
 * patterns, and the meter charged and obeyed. Both sets run in one plain
 * lua_State: luaL_openlibs gives the originals in `string`, the bounded ones
 * are in the global table B. */
#include "strmatch.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <lauxlib.h>
#include <lualib.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

/* Lua: runs every case with the originals (O) and the bounded functions
 * (B), compares the serialized results (or the error messages, without the
 * function name luaL_argerror adds, which differs by how the function is
 * found), and returns the number of cases and of equal ones. */
static const char HARNESS[] =
    "local O, B = string, B\n"
    "local function ser(...)\n"
    "  local t = {}\n"
    "  for i = 1, select('#', ...) do\n"
    "    local v = select(i, ...)\n"
    "    t[#t + 1] = (math.type(v) or type(v)) .. ':' .. tostring(v)\n"
    "  end\n"
    "  return table.concat(t, '|')\n"
    "end\n"
    "local function norm(m) return (O.gsub(tostring(m), \"to '[^']*'\", 'to F')) end\n"
    "local function run(lib, c)\n"
    "  local fn = c[1]\n"
    "  local ok, r = pcall(function()\n"
    "    if fn == 'gmatch' then\n"
    "      local out, it = {}, lib.gmatch(table.unpack(c, 2, c.n))\n"
    "      for _ = 1, 1000 do\n"
    "        local p = table.pack(it())\n"
    "        if p[1] == nil then break end\n"
    "        out[#out + 1] = ser(table.unpack(p, 1, p.n))\n"
    "      end\n"
    "      return table.concat(out, ';')\n"
    "    end\n"
    "    return ser(lib[fn](table.unpack(c, 2, c.n)))\n"
    "  end)\n"
    "  if ok then return 'ok ' .. r end\n"
    "  return 'error ' .. norm(r)\n"
    "end\n"
    "local same = 0\n"
    "for i, c in ipairs(CASES) do\n"
    "  local a, b = run(O, c), run(B, c)\n"
    "  if a == b then same = same + 1\n"
    "  else print(('case %d (%s): lstrlib %q, bounded %q'):format(i, c[1], a, b)) end\n"
    "end\n"
    "return #CASES, same\n";

/* Lua: the cases, as {function name, arguments...}. Replacement functions
 * serialize what they get, so gsub's arguments are compared too. */
static const char CASES[] =
    "local function C(...) return table.pack(...) end\n"
    "local function rf(...) return '<' .. select('#', ...) .. ':' .. table.concat({...}, ',') .. '>' end\n"
    "local function keep(s) if s == 'b' then return nil end return s:upper() end\n"
    "local function never() return false end\n"
    "local function num(s) return #s end\n"
    "local function bad() return {} end\n"
    "local tab = { hello = 'HI', world = 42, x = false }\n"
    "local utf = 'h\\u{e9}llo w\\u{f6}rld \\u{1F600} \\xff\\x00end'\n"
    "CASES = {\n"
    /* find: plain, special, init, anchors */
    "  C('find', 'hello world', 'o w'), C('find', 'hello world', 'o', 6),\n"
    "  C('find', 'hello world', 'l+'), C('find', 'hello', 'xyz'),\n"
    "  C('find', 'hello', ''), C('find', 'hello', '', 10), C('find', 'hello', '', 6),\n"
    "  C('find', 'hello', 'l', -2), C('find', 'hello', 'h', -100), C('find', 'hello', 'h', 0),\n"
    "  C('find', 'a.b', '.', 1, true), C('find', 'a+b', '+', 1, true), C('find', 'a.b', '%.'),\n"
    "  C('find', 'hello', '^h'), C('find', 'hello', '^e'), C('find', 'hello', 'o$'),\n"
    "  C('find', 'hello', 'l$'), C('find', 'a$b', '$b'), C('find', 'a^b', 'a^'),\n"
    "  C('find', 'hello', '^hello$'), C('find', 'abc', '^b', 2), C('find', 'x = 10', '(%w+)%s*=%s*(%w+)'),\n"
    "  C('find', 'hello', '()ll()'), C('find', 'a\\0b', '%z'), C('find', 'a\\0b', '\\0'),\n"
    "  C('find', 'a\\0b', 'b\\0', 1, true), C('find', 'aaa', 'a-b'), C('find', 'aaab', 'a-b'),\n"
    /* match: captures, classes, quantifiers */
    "  C('match', 'hello world', '(h)(e)(l)(l)(o)'), C('match', 'key=val', '(%w+)=(%w+)'),\n"
    "  C('match', '  trim  ', '^%s*(.-)%s*$'), C('match', 'abc123def', '%d+'),\n"
    "  C('match', 'abc123def', '%a*'), C('match', 'ABCdef', '%u+'), C('match', 'ABCdef', '%l+'),\n"
    "  C('match', 'a,b;c', '%p'), C('match', 'tab\\there', '%c'), C('match', '0x1F', '0x(%x+)'),\n"
    "  C('match', 'hi there', '%S+$'), C('match', 'hi there', '%W'), C('match', 'x', '%g'),\n"
    "  C('match', 'abc', '[a-b]+'), C('match', 'abc', '[^a]+'), C('match', 'a]b', '[]]'),\n"
    "  C('match', 'a-b', '[a%-]+'), C('match', 'a-b', '[%a-]+'), C('match', 'z-', '[a-]+'),\n"
    "  C('match', 'a^b', '[%^b]+'), C('match', 'hello', '(l*)'), C('match', 'hello', 'l?l?o'),\n"
    "  C('match', 'color colour', 'colou?r', 3), C('match', 'aaa', '(a-)(a+)'),\n"
    "  C('match', 'hello hello', '(%w+) %1'), C('match', 'abab', '(ab)%1'), C('match', 'abac', '(ab)%1'),\n"
    "  C('match', 'hello', '()'), C('match', 'hello', '()', 4), C('match', 'hello', '(h)()(e)'),\n"
    "  C('match', 'x', '((x))'), C('match', 'date 2024-01-05', '(%d+)-(%d+)-(%d+)'),\n"
    "  C('match', 'hello', '.-'), C('match', 'hello', '.-$'), C('match', '', '.*'),\n"
    "  C('match', '', 'a*'), C('match', 'abc', 'b', -1), C('match', 'abc', 'c', -1),\n"
    /* %b and %f */
    "  C('match', 'f(a(b)c) d', '%b()'), C('match', 'f(a(b c) d', '%b()'), C('find', '[[x]] y', '%b[]'),\n"
    "  C('match', 'THE (quick) fox', '%f[%a]%a+'), C('match', 'THE (quick) fox', '%f[%l]%a+'),\n"
    "  C('find', 'hello world', '%f[%w]%w+', 2), C('match', 'abc', '%f[%z]'), C('find', 'abc', '%f[%Z]'),\n"
    "  C('match', 'the cat', '%f[%w]cat%f[%W]'), C('match', 'concat', '%f[%w]cat%f[%W]'),\n"
    /* gmatch, init and anchors */
    "  C('gmatch', 'one two  three', '%a+'), C('gmatch', 'k1=v1, k2=v2', '(%w+)=(%w+)'),\n"
    "  C('gmatch', 'abc', ''), C('gmatch', 'abc', '.-'), C('gmatch', 'aaa', 'a*'),\n"
    "  C('gmatch', 'hello', '()l'), C('gmatch', 'one two three', '%a+', 5),\n"
    "  C('gmatch', 'one two three', '%a+', -5), C('gmatch', 'abc', '.', 10),\n"
    "  C('gmatch', 'abc', '^a'), C('gmatch', 'aaa', '^a'), C('gmatch', 'a,b,,c', '([^,]*)'),\n"
    "  C('gmatch', 'THE (quick) fox', '%f[%a]%a+'), C('gmatch', 'x(1)(2)(3)', '%b()'),\n"
    /* gsub: string, table, function replacement, max, anchors, empty */
    "  C('gsub', 'hello world', 'o', '0'), C('gsub', 'hello world', 'o', '0', 1),\n"
    "  C('gsub', 'hello world', '(%w+)', '<%1>'), C('gsub', 'hello world', '%w+', '%0 %0'),\n"
    "  C('gsub', 'hello', '', '-'), C('gsub', 'abc', '.-', '-'), C('gsub', 'abc', 'x*', '-'),\n"
    "  C('gsub', 'hello world', '(o)', '%%'), C('gsub', 'hello', 'l', '%2'),\n"
    "  C('gsub', 'hello', 'l', '%x'), C('gsub', 'abc', '()', '%1'), C('gsub', 'abc', '%w', '%1'),\n"
    "  C('gsub', 'hello world', '^h', 'H'), C('gsub', 'hello', '^', '>'), C('gsub', 'hello', '$', '<'),\n"
    "  C('gsub', 'hello', 'l', 5), C('gsub', 'hello', 'l', 1.5), C('gsub', 'hello world', '%w+', tab),\n"
    "  C('gsub', 'x hello x', '%w+', tab), C('gsub', 'hello world', '(%w+) (%w+)', rf),\n"
    "  C('gsub', 'abc', '%w', keep), C('gsub', 'abc', '%w', never), C('gsub', 'abc', '()', rf),\n"
    "  C('gsub', 'abc', '%w+', num), C('gsub', 'abc', '%w', bad), C('gsub', 'abc', 'b', true),\n"
    "  C('gsub', 'abc', 'b'), C('gsub', 'abc', 'b', 'x', 0), C('gsub', 'abc', 'b', 'x', -1),\n"
    "  C('gsub', 'aaa', 'a', 'b', 2), C('gsub', 'f(a) g(b(c))', '%b()', '[]'),\n"
    "  C('gsub', 'THE (quick) fox', '%f[%a]%a', '_'), C('gsub', '', '', 'x'),\n"
    "  C('gsub', 'abc', '(a)(b)(c)', '%3%2%1%0'), C('gsub', 'hello', '(l)(l)', rf),\n"
    /* unicode bytes */
    "  C('find', utf, '\\u{e9}'), C('match', utf, '[\\x80-\\xff]+'), C('gsub', utf, '[\\x80-\\xbf]', '?'),\n"
    "  C('gmatch', utf, '[%z\\x01-\\x7F\\xC2-\\xFD][\\x80-\\xBF]*'), C('match', utf, '\\xff(%z)end$'),\n"
    "  C('find', utf, '%f[\\x80-\\xff]'), C('gsub', utf, '%W', ''),\n"
    /* errors: malformed patterns and bad arguments */
    "  C('find', 'a', '%'), C('find', 'a', '[a'), C('find', 'a', '(a'), C('find', 'a', 'a)'),\n"
    "  C('match', 'a', '%b'), C('match', 'a', '%fa'), C('match', 'aa', '(a)%2'),\n"
    "  C('gsub', 'a', 'a', {}, 'x'), C('gsub', 'a', 'a'), C('find', 'a'), C('gsub', 'a', '(a', 'x'),\n"
    "  C('match', ('x'):rep(40), ('(x)'):rep(33)), C('find', 'abc', '[%'), C('find', 'abc', '[a-'),\n"
    "  C('match', ('a'):rep(300), ('a?'):rep(300) .. ('a'):rep(300)),\n"
    "}\n";

static lua_State *new_state(void) {
  lua_State *L = luaL_newstate();
  assert_non_null(L);
  luaL_openlibs(L);
  lua_newtable(L);
  plr_strmatch_install(L, -1, NULL);
  lua_setglobal(L, "B");
  return L;
}

static void dostring(lua_State *L, const char *code, int nres) {
  if (luaL_loadstring(L, code) != LUA_OK || lua_pcall(L, 0, nres, 0) != LUA_OK) {
    fprintf(stderr, "lua: %s\n", lua_tostring(L, -1));
    fail();
  }
}

static void test_equivalence(void **state) {
  (void)state;
  lua_State *L = new_state();
  dostring(L, CASES, 0);
  dostring(L, HARNESS, 2);
  lua_Integer total = lua_tointeger(L, -2), same = lua_tointeger(L, -1);
  printf("    %lld of %lld cases equal to lstrlib\n", (long long)same, (long long)total);
  assert_true(total >= 100);
  assert_int_equal(same, total);
  lua_close(L);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs code expected to raise the step error; returns the seconds taken. */
static double expect_budget_error(lua_State *L, const char *code) {
  double t0 = now_s();
  assert_int_equal(luaL_loadstring(L, code), LUA_OK);
  int rc = lua_pcall(L, 0, 0, 0);
  double secs = now_s() - t0;
  assert_int_equal(rc, LUA_ERRRUN);
  const char *msg = lua_tostring(L, -1);
  printf("    %.3f s: %s\n", secs, msg);
  assert_non_null(strstr(msg, PLR_STRMATCH_ERROR));
  lua_pop(L, 1);
  return secs;
}

static void test_pathological(void **state) {
  (void)state;
  lua_State *L = new_state();
  assert_true(expect_budget_error(L, "B.find(('a'):rep(5000), ('a*'):rep(12) .. 'b')") < 10);
  assert_true(expect_budget_error(L, "B.match(('a'):rep(1e5), ('(.-)'):rep(10) .. 'b')") < 10);
  assert_true(expect_budget_error(L, "B.gsub(('a'):rep(3000), ('a-'):rep(8) .. 'c', '')") < 10);
  assert_true(
      expect_budget_error(L, "for x in B.gmatch(('a'):rep(3000), ('a*'):rep(8) .. 'c') do end") < 10);
  /* Linear work of the same size stays within the cap. */
  dostring(L, "assert(select(2, B.gsub(('ab'):rep(2 * 1024 * 1024), 'a', '')) == 2 * 1024 * 1024)", 0);
  lua_close(L);
}

/* A meter whose allowance is small: the call stops at the allowance, and
 * every step taken is charged. */
static int64_t g_allow, g_charged;
static bool g_stop;
static int64_t meter_allowance(lua_State *L) {
  (void)L;
  return g_allow;
}
static bool meter_charge(lua_State *L, int64_t steps) {
  (void)L;
  g_charged += steps;
  return !g_stop;
}
static const plr_strmatch_meter METER = {.allowance = meter_allowance, .charge = meter_charge};

static void test_meter(void **state) {
  (void)state;
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lua_newtable(L);
  plr_strmatch_install(L, -1, &METER);
  lua_setglobal(L, "B");
  g_allow = 1000;
  g_charged = 0;
  expect_budget_error(L, "B.find(('a'):rep(100), ('a*'):rep(6) .. 'b')");
  assert_int_equal(g_charged, 1001);
  /* Under the allowance: a linear match is charged and succeeds. */
  g_charged = 0;
  dostring(L, "assert(B.find(('a'):rep(100) .. 'b', 'a*b') == 1)", 0);
  assert_true(g_charged > 100 && g_charged < 1000);
  /* A charge refused (a deadline passed) stops the call at the next tick. */
  g_allow = INT64_MAX;
  g_stop = true;
  g_charged = 0;
  expect_budget_error(L, "B.find(('a'):rep(5000), ('a*'):rep(12) .. 'b')");
  assert_int_equal(g_charged, PLR_STRMATCH_TICK);
  g_stop = false;
  lua_close(L);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_equivalence),
      cmocka_unit_test(test_pathological),
      cmocka_unit_test(test_meter),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
