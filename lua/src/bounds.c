/* Bounded versions of the library functions whose loops no Lua instruction
 * interrupts: table.move, table.insert, table.remove, table.concat,
 * table.sort, string.rep, string.upper, string.lower and string.reverse.
 *
 * The instruction hook sees a call to a C function as one instruction, so
 * table.move({}, 1, 1e12, 1) would run for hours inside one instruction,
 * and a table.sort of a few million numbers for a second. These versions
 * keep the standard semantics (they are lstrlib.c's and ltablib.c's loops,
 * Lua 5.4, MIT licence, Copyright (C) 1994-2022 Lua.org, PUC-Rio) and call
 * plr_vm_tick every PLR_BOUND_TICK iterations: that charges the work to the
 * running code's instruction budget and checks its deadline, so a handler
 * overruns its cpu_time by at most one tick's work (well under 10 ms).
 */
#include "vm.h"

#include <lauxlib.h>
#include <lualib.h>

#include <ctype.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

/* Iterations (or bytes / 64) between two checks of the deadline. */
#define PLR_BOUND_TICK 4096
/* Bytes a string function handles between two checks. */
#define PLR_BOUND_CHUNK (256 * 1024)

static void tick(lua_State *L, int64_t *n) {
  if (++*n % PLR_BOUND_TICK == 0) plr_vm_tick(L, PLR_BOUND_TICK / 16);
}

/* What a call did below one tick is charged when it returns. */
static void tick_end(lua_State *L, int64_t n) {
  plr_vm_tick(L, (n % PLR_BOUND_TICK) / 16 + 1);
}

/* Bytes are charged as a sixty-fourth of an instruction each. */
static void chunk_tick(lua_State *L, size_t bytes) {
  plr_vm_tick(L, (int64_t)(bytes / 64) + 1);
}

/* ---- table ---- */

#define TAB_R 1
#define TAB_W 2
#define TAB_L 4
#define TAB_RW (TAB_R | TAB_W)

static int checkfield(lua_State *L, const char *key, int n) {
  lua_pushstring(L, key);
  return (lua_rawget(L, -n) != LUA_TNIL);
}

static void checktab(lua_State *L, int arg, int what) {
  if (lua_type(L, arg) != LUA_TTABLE) {
    int n = 1;
    if (lua_getmetatable(L, arg) && (!(what & TAB_R) || checkfield(L, "__index", ++n)) &&
        (!(what & TAB_W) || checkfield(L, "__newindex", ++n)) &&
        (!(what & TAB_L) || checkfield(L, "__len", ++n))) {
      lua_pop(L, n);
    } else
      luaL_checktype(L, arg, LUA_TTABLE);
  }
}

#define aux_getn(L, n, w) (checktab(L, n, (w) | TAB_L), luaL_len(L, n))

static int tinsert(lua_State *L) {
  lua_Integer pos;
  lua_Integer e = aux_getn(L, 1, TAB_RW);
  e = luaL_intop(+, e, 1);
  int64_t n = 0;
  switch (lua_gettop(L)) {
    case 2: pos = e; break;
    case 3: {
      lua_Integer i;
      pos = luaL_checkinteger(L, 2);
      luaL_argcheck(L, (lua_Unsigned)pos - 1u < (lua_Unsigned)e, 2, "position out of bounds");
      for (i = e; i > pos; i--) {
        tick(L, &n);
        lua_geti(L, 1, i - 1);
        lua_seti(L, 1, i);
      }
      break;
    }
    default: return luaL_error(L, "wrong number of arguments to 'insert'");
  }
  lua_seti(L, 1, pos);
  tick_end(L, n);
  return 0;
}

static int tremove(lua_State *L) {
  lua_Integer size = aux_getn(L, 1, TAB_RW);
  lua_Integer pos = luaL_optinteger(L, 2, size);
  int64_t n = 0;
  if (pos != size)
    luaL_argcheck(L, (lua_Unsigned)pos - 1u <= (lua_Unsigned)size, 2, "position out of bounds");
  lua_geti(L, 1, pos);
  for (; pos < size; pos++) {
    tick(L, &n);
    lua_geti(L, 1, pos + 1);
    lua_seti(L, 1, pos);
  }
  lua_pushnil(L);
  lua_seti(L, 1, pos);
  tick_end(L, n);
  return 1;
}

static int tmove(lua_State *L) {
  lua_Integer f = luaL_checkinteger(L, 2);
  lua_Integer e = luaL_checkinteger(L, 3);
  lua_Integer t = luaL_checkinteger(L, 4);
  int tt = !lua_isnoneornil(L, 5) ? 5 : 1;
  int64_t n = 0;
  checktab(L, 1, TAB_R);
  checktab(L, tt, TAB_W);
  if (e >= f) {
    lua_Integer i;
    luaL_argcheck(L, f > 0 || e < LUA_MAXINTEGER + f, 3, "too many elements to move");
    /* As Lua 5.4's ltablib.c: n = e - f + 1 >= 1, so MAXINTEGER - n + 1
     * cannot overflow (MAXINTEGER - (e - f) + 1 does when e == f). */
    lua_Integer count = e - f + 1;
    luaL_argcheck(L, t <= LUA_MAXINTEGER - count + 1, 4, "destination wrap around");
    if (t > e || t <= f || (tt != 1 && !lua_compare(L, 1, tt, LUA_OPEQ))) {
      for (i = 0; i <= e - f; i++) {
        tick(L, &n);
        lua_geti(L, 1, f + i);
        lua_seti(L, tt, t + i);
      }
    } else {
      for (i = e - f; i >= 0; i--) {
        tick(L, &n);
        lua_geti(L, 1, f + i);
        lua_seti(L, tt, t + i);
      }
    }
  }
  lua_pushvalue(L, tt);
  tick_end(L, n);
  return 1;
}

static void addfield(lua_State *L, luaL_Buffer *b, lua_Integer i) {
  lua_geti(L, 1, i);
  if ((!lua_isstring(L, -1)))
    luaL_error(L, "invalid value (at index %I) in table for 'concat'", (LUAI_UACINT)i);
  luaL_addvalue(b);
}

static int tconcat(lua_State *L) {
  luaL_Buffer b;
  lua_Integer last = aux_getn(L, 1, TAB_R);
  size_t lsep;
  const char *sep = luaL_optlstring(L, 2, "", &lsep);
  lua_Integer i = luaL_optinteger(L, 3, 1);
  last = luaL_optinteger(L, 4, last);
  int64_t n = 0;
  luaL_buffinit(L, &b);
  for (; i < last; i++) {
    tick(L, &n);
    addfield(L, &b, i);
    luaL_addlstring(&b, sep, lsep);
  }
  if (i == last) addfield(L, &b, i);
  luaL_pushresult(&b);
  tick_end(L, n);
  chunk_tick(L, lua_rawlen(L, -1));
  return 1;
}

/* table.sort: ltablib.c's quicksort, with a tick per element compared. */

typedef unsigned int IdxT;

static void set2(lua_State *L, IdxT i, IdxT j) {
  lua_seti(L, 1, i);
  lua_seti(L, 1, j);
}

static int sort_comp(lua_State *L, int a, int b) {
  if (lua_isnil(L, 2))
    return lua_compare(L, a, b, LUA_OPLT);
  else {
    int res;
    lua_pushvalue(L, 2);
    lua_pushvalue(L, a - 1);
    lua_pushvalue(L, b - 2);
    lua_call(L, 2, 1);
    res = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return res;
  }
}

static IdxT partition(lua_State *L, IdxT lo, IdxT up, int64_t *n) {
  IdxT i = lo;
  IdxT j = up - 1;
  for (;;) {
    while ((void)lua_geti(L, 1, ++i), sort_comp(L, -1, -2)) {
      tick(L, n);
      if (i == up - 1) luaL_error(L, "invalid order function for sorting");
      lua_pop(L, 1);
    }
    while ((void)lua_geti(L, 1, --j), sort_comp(L, -3, -1)) {
      tick(L, n);
      if (j < i) luaL_error(L, "invalid order function for sorting");
      lua_pop(L, 1);
    }
    if (j < i) {
      lua_pop(L, 1);
      set2(L, up - 1, i);
      return i;
    }
    set2(L, i, j);
  }
}

static IdxT choosePivot(IdxT lo, IdxT up, unsigned int rnd) {
  IdxT r4 = (up - lo) / 4;
  IdxT p = rnd % (r4 * 2) + (lo + r4);
  return p;
}

static void auxsort(lua_State *L, IdxT lo, IdxT up, unsigned int rnd, int64_t *n) {
  while (lo < up) {
    IdxT p;
    IdxT sz;
    tick(L, n);
    lua_geti(L, 1, lo);
    lua_geti(L, 1, up);
    if (sort_comp(L, -1, -2))
      set2(L, lo, up);
    else
      lua_pop(L, 2);
    if (up - lo == 1) break;
    if (up - lo < 100u || rnd == 0)
      p = (lo + up) / 2;
    else
      p = choosePivot(lo, up, rnd);
    lua_geti(L, 1, p);
    lua_geti(L, 1, lo);
    if (sort_comp(L, -2, -1))
      set2(L, p, lo);
    else {
      lua_pop(L, 1);
      lua_geti(L, 1, up);
      if (sort_comp(L, -1, -2))
        set2(L, p, up);
      else
        lua_pop(L, 2);
    }
    if (up - lo == 2) break;
    lua_geti(L, 1, p);
    lua_pushvalue(L, -1);
    lua_geti(L, 1, up - 1);
    set2(L, p, up - 1);
    p = partition(L, lo, up, n);
    if (p - lo < up - p) {
      auxsort(L, lo, p - 1, rnd, n);
      sz = p - lo;
      lo = p + 1;
    } else {
      auxsort(L, p + 1, up, rnd, n);
      sz = up - p;
      up = p - 1;
    }
    if ((up - lo) / 128 > sz) rnd = (unsigned int)(uintptr_t)&sz ^ (unsigned int)*n;
  }
}

static int tsort(lua_State *L) {
  lua_Integer len = aux_getn(L, 1, TAB_RW);
  int64_t n = 0;
  if (len > 1) {
    luaL_argcheck(L, len < INT_MAX, 1, "array too big");
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    auxsort(L, 1, (IdxT)len, 0, &n);
  }
  tick_end(L, n);
  return 0;
}

/* ---- string ---- */

static int srep(lua_State *L) {
  size_t l, lsep;
  const char *s = luaL_checklstring(L, 1, &l);
  lua_Integer n = luaL_checkinteger(L, 2);
  const char *sep = luaL_optlstring(L, 3, "", &lsep);
  if (n <= 0)
    lua_pushliteral(L, "");
  else if (l + lsep < l || l + lsep > INT_MAX / (size_t)n)
    return luaL_error(L, "resulting string too large");
  else {
    size_t totallen = (size_t)n * l + (size_t)(n - 1) * lsep;
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, totallen);
    size_t since = 0;
    while (n-- > 1) {
      memcpy(p, s, l);
      p += l;
      if (lsep > 0) {
        memcpy(p, sep, lsep);
        p += lsep;
      }
      since += l + lsep + 1;
      if (since >= PLR_BOUND_CHUNK) {
        chunk_tick(L, since);
        since = 0;
      }
    }
    memcpy(p, s, l);
    luaL_pushresultsize(&b, totallen);
    chunk_tick(L, since);
  }
  return 1;
}

static int map_chars(lua_State *L, int mode) {
  size_t l, i;
  const char *s = luaL_checklstring(L, 1, &l);
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, l);
  for (i = 0; i < l; i++) {
    unsigned char c = (unsigned char)(mode == 2 ? s[l - i - 1] : s[i]);
    p[i] = (char)(mode == 0 ? toupper(c) : mode == 1 ? tolower(c) : c);
    if ((i & (PLR_BOUND_CHUNK - 1)) == PLR_BOUND_CHUNK - 1) chunk_tick(L, PLR_BOUND_CHUNK);
  }
  luaL_pushresultsize(&b, l);
  chunk_tick(L, l & (PLR_BOUND_CHUNK - 1));
  return 1;
}

static int supper(lua_State *L) { return map_chars(L, 0); }
static int slower(lua_State *L) { return map_chars(L, 1); }
static int sreverse(lua_State *L) { return map_chars(L, 2); }

/* A library function whose work grows with the size of its string
 * arguments (string.sub, byte, format, pack, unpack; utf8.len, codepoint,
 * offset) or with the values it returns (table.unpack), called through this
 * wrapper: the work is charged when it returns, so many such calls between
 * two runs of the hook still reach the deadline check. The original is the
 * closure's upvalue. */
static int charged_call(lua_State *L) {
  int n = lua_gettop(L);
  size_t bytes = 0;
  for (int i = 1; i <= n; i++)
    if (lua_type(L, i) == LUA_TSTRING) bytes += lua_rawlen(L, i);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  int nres = lua_gettop(L);
  for (int i = 1; i <= nres; i++)
    if (lua_type(L, i) == LUA_TSTRING) bytes += lua_rawlen(L, i);
  plr_vm_tick(L, (int64_t)(bytes / 64) + nres / 16 + 1);
  return nres;
}

static void wrap_charged(lua_State *L, const char *lib, const char *const *names) {
  lua_getglobal(L, lib);
  for (const char *const *k = names; *k; k++) {
    if (lua_getfield(L, -1, *k) != LUA_TFUNCTION) {
      lua_pop(L, 1);
      continue;
    }
    lua_pushcclosure(L, charged_call, 1);
    lua_setfield(L, -2, *k);
  }
  lua_pop(L, 1);
}

void plr_vm_bound_install(lua_State *L) {
  static const luaL_Reg tab[] = {{"insert", tinsert}, {"remove", tremove}, {"move", tmove},
                                 {"concat", tconcat}, {"sort", tsort},     {NULL, NULL}};
  static const luaL_Reg str[] = {{"rep", srep},
                                 {"upper", supper},
                                 {"lower", slower},
                                 {"reverse", sreverse},
                                 {NULL, NULL}};
  lua_getglobal(L, LUA_TABLIBNAME);
  luaL_setfuncs(L, tab, 0);
  lua_pop(L, 1);
  lua_getglobal(L, LUA_STRLIBNAME);
  luaL_setfuncs(L, str, 0);
  lua_pop(L, 1);
  static const char *const str_charged[] = {"sub", "byte", "format", "pack", "unpack", NULL};
  static const char *const utf8_charged[] = {"len", "codepoint", "offset", "char", NULL};
  static const char *const tab_charged[] = {"unpack", NULL};
  wrap_charged(L, LUA_STRLIBNAME, str_charged);
  wrap_charged(L, LUA_UTF8LIBNAME, utf8_charged);
  wrap_charged(L, LUA_TABLIBNAME, tab_charged);
}
