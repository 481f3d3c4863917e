/* The inside of a bot's Lua state, shared by vm.c and runtime.c. */
#ifndef PARLEY_LUA_VM_H
#define PARLEY_LUA_VM_H

#include "rt.h"

#include <lua.h>

#define PLR_VERSION "0.1.0"
/* Instructions between two runs of the count hook. */
#define PLR_HOOK_STEP 1000
/* Budget of the runtime's own calls into Lua (diffs, assignments): they do
 * bounded work, but a bound keeps a bug there from hanging the loop. */
#define PLR_INTERNAL_BUDGET 50000000
/* Instructions of work C functions charge (plr_vm_tick) between two reads
 * of the clock: about 64 KiB of bytes handled, well under a millisecond. */
#define PLR_TICK_CHECK 1024

struct pc_doc;

struct plr_vm {
  lua_State *L;
  parley_runtime *rt;      /* NULL when only checking */
  size_t mem_used, mem_limit, mem_peak;
  int64_t budget;       /* instructions left for the code running now */
  bool exhausted;       /* the budget ran out: every hook raises */
  lua_State *budget_co; /* the thread the budget was given to */
  bool unlimited;       /* the C side is pushing: the cap is for bot code */
  int64_t deadline_ns;  /* monotonic time the running handler must end by; 0 none */
  int64_t since_check;  /* work charged by C functions since the clock was read */
  int rt_ref;           /* registry ref of runtime.lua's table */
  char *name, *default_locale, *dir;
  plr_limits lim;
  struct pc_doc *cfg;
  char **allow;         /* bot.yaml http.allow */
  size_t n_allow;
  bool allow_private;
};

plr_vm *plr_vm_of(lua_State *L);
/* Lifts the memory cap while the C side pushes values outside a protected
 * call, where an allocation failure would be a panic. The cap holds only
 * while bot code runs: every resume of a handler or of bot.lua puts it on
 * and lifts it again when it returns. */
static inline void plr_vm_uncapped(plr_vm *vm) { vm->unlimited = true; }
int64_t plr_vm_now_ns(void);
/* Sets the budget of the code about to run on thread L (and clears the
 * deadline; set vm->deadline_ns after it for handlers). */
void plr_vm_budget(plr_vm *vm, lua_State *L, int64_t budget, bool exhausted);
/* Protected call on the main thread with a traceback, the internal budget
 * and no memory cap (the runtime's own Lua code); on error fills err and
 * returns PARLEY_ELUA or PARLEY_ENOMEM. */
int plr_vm_pcall(plr_vm *vm, int nargs, int nres, char *err, size_t errlen);
int plr_msgh(lua_State *L);
/* Charges instructions of work done inside a C function to the running
 * code and checks its deadline; raises the budget error when either is
 * spent. The bounded library functions (bounds.c) call it as they loop. */
void plr_vm_tick(lua_State *L, int64_t instructions);
/* Raises fmt (lua_pushfstring's) with the position of the innermost bot
 * frame, not of the runtime's own chunk: a C primitive's refusal names the
 * bot's line. */
int plr_vm_raise(lua_State *L, const char *fmt, ...);
/* Replaces table.move/insert/remove/concat/sort and string.rep/upper/
 * lower/reverse in the state's library tables with bounded versions. */
void plr_vm_bound_install(lua_State *L);
/* Pushes runtime.lua's function fn; returns its Lua type. */
int plr_vm_rt_get(plr_vm *vm, const char *fn);

/* runtime.c: adds send, action, http, sync_timers, idem to the C table on
 * top of the stack (stubs that raise when rt is NULL). */
void plr_rt_bind(lua_State *L, parley_runtime *rt);
int64_t plr_rt_now(parley_runtime *rt);

#endif
