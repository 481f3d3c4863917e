/* Bounded Lua pattern matching: string.find, string.match, string.gmatch
 * and string.gsub with the exact semantics of Lua 5.4's lstrlib.c, plus a
 * step counter. A pattern with nested quantifiers backtracks exponentially
 * inside one C call, where the instruction hook never runs; the counter
 * stops such a call with the Lua error PLR_STRMATCH_ERROR instead.
 */
#ifndef PARLEY_LUA_STRMATCH_H
#define PARLEY_LUA_STRMATCH_H

#include <lua.h>

#include <stdbool.h>
#include <stdint.h>

/* Matcher steps one call may take whatever the running code's budget: a
 * step is one entry into the matcher or one repetition tried by a
 * quantifier, a few nanoseconds each, so the cap bounds a call to well
 * under a second while a linear scan of several MiB still fits. */
#define PLR_STRMATCH_STEP_CAP INT64_C(10000000)
/* Steps between two calls of the meter's charge while a call runs, so a
 * deadline is noticed in the middle of a long match. */
#define PLR_STRMATCH_TICK 65536
#define PLR_STRMATCH_ERROR "pattern too complex (step budget exceeded)"

/* How the state's owner charges matcher steps to the running code. Both
 * functions are optional (NULL). */
typedef struct plr_strmatch_meter {
  /* Steps the call starting now may take at most (its share of the running
   * code's remaining budget); the smaller of this and the cap applies. */
  int64_t (*allowance)(lua_State *L);
  /* Charges steps taken since the last charge, every PLR_STRMATCH_TICK
   * steps and once when the call ends; returns false when the running code
   * must stop now (its deadline passed), which raises PLR_STRMATCH_ERROR. */
  bool (*charge)(lua_State *L, int64_t steps);
} plr_strmatch_meter;

/* Replaces find, match, gmatch and gsub in the table at idx (the string
 * library table, which the string metatable's __index also points to) with
 * the bounded versions. meter may be NULL (the fixed cap only); it is
 * borrowed and must outlive the state. */
void plr_strmatch_install(lua_State *L, int idx, const plr_strmatch_meter *meter);

/* Each bounded function alone, for tests: they read the meter from their
 * first upvalue, so push them with lua_pushcclosure and one light userdata
 * (or nil) upvalue. */
int plr_strmatch_find(lua_State *L);
int plr_strmatch_match(lua_State *L);
int plr_strmatch_gmatch(lua_State *L);
int plr_strmatch_gsub(lua_State *L);

#endif
