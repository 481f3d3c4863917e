/* bench_lua_hook: per-event cost of handing an inbound message to a Lua
 * handler, versus calling a C callback.
 *
 * The event is the message of sample.h as a parley_event (what the engine
 * gives the application). Every variant does the same trivial work per
 * event: read the text's length and count the event.
 *   - c: a C function pointer (called through a volatile pointer so it is
 *     a real call) with the event struct.
 *   - lua-table: what the Lua runtime does today (lua/src/runtime.c). The
 *     runtime cannot be driven without its VM, driver and commit
 *     machinery, so this file calls its conversion function,
 *     plr_event_push_fn's closure, and mirrors the rest: it runs under
 *     lua_pcall and fills a fresh table with every field (kind, conversation, seq,
 *     time, sender, sender_role, redelivered, hex id, content, text,
 *     tags...), the table is kept in the registry (plr_rt_on_event), then
 *     like job_start/plr_job_resume a coroutine is taken from the pool
 *     (the runtime keeps the coroutines of handlers that returned normally),
 *     the instruction-budget count hook is set on it, the handler and the
 *     message are moved over, the CPU clock is read around lua_resume, the
 *     message's reference is dropped and the coroutine goes back to the
 *     pool. Not included: runtime.lua's
 *     run/finish wrappers (handler dispatch, state diff, commit), which are
 *     bookkeeping around the call, not the call. The state allocates
 *     through a copy of the runtime's capped, counting allocator. The
 *     handler reads msg.text.
 *   - lua-table-nocoroutine: the same table, the handler called with
 *     lua_pcall on the main state, no coroutine.
 *   - lua-userdata: the same coroutine path, but the message is a userdata
 *     holding its own copy of the event (one allocation; a handler may
 *     yield and run after the engine's callback returned, so borrowed
 *     pointers would not do) whose __index metamethod makes a field on
 *     first access and caches it in the userdata's user value. The handler
 *     reads msg.text only.
 *   - lua-userdata-nocoroutine: that userdata with lua_pcall.
 * Each variant checks that the handler saw every event and the right text
 * length. Figures: median over repetitions of the mean ns per event.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <parley/client.h>

#include "bench.h"
#include <parley/runtime.h>
#include "event.h"
#include "sample.h"

/* Timed loops read this thread's CPU clock rather than the wall clock: the
 * work is single-threaded and never waits, and on a machine shared with
 * other jobs the CPU clock does not count the time the thread spends
 * descheduled, which the wall clock would charge to whatever ran then. */
static uint64_t cpu_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The runtime's count hook step (lua/src/vm.h PLR_HOOK_STEP). */
#define HOOK_STEP 1000

/* -------------------------------------------------- the runtime's path */

/* The budget hook as lua/src/vm.c has it, minus the error path: a handler
 * this short never reaches it. */
static int64_t g_budget;
static void budget_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  g_budget -= lua_gethookcount(L);
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The runtime's allocator (lua/src/vm.c vm_alloc): realloc with a memory
 * cap and accounting. */
typedef struct mem_acct {
  size_t used, peak, limit;
} mem_acct;

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  mem_acct *m = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    m->used -= old;
    return NULL;
  }
  if (nsize > old && m->used - old + nsize > m->limit) return NULL;
  void *p = realloc(ptr, nsize);
  if (!p) return NULL;
  m->used = m->used - old + nsize;
  if (m->used > m->peak) m->peak = m->used;
  return p;
}

/* ------------------------------------------------ the lazy userdata */

typedef struct lazy_msg {
  parley_event ev; /* pointers into the bytes after the struct */
  const char *tags[2];
} lazy_msg;

static char *copy_into(char **p, const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *d = *p;
  memcpy(d, s, n);
  *p += n;
  return d;
}

static size_t str_size(const char *s) { return s ? strlen(s) + 1 : 0; }

/* Pushes the userdata message: one block with the event and its strings. */
static int push_lazy(lua_State *L) {
  const parley_event *ev = lua_touserdata(L, 1);
  size_t n_tags = ev->n_tags < 2 ? ev->n_tags : 2;
  size_t need = sizeof(lazy_msg) + str_size(ev->conversation) + str_size(ev->sender) +
                str_size(ev->content.text);
  for (size_t i = 0; i < n_tags; i++) need += str_size(ev->tags[i]);
  lazy_msg *m = lua_newuserdatauv(L, need, 1);
  memset(&m->ev, 0, sizeof m->ev);
  char *p = (char *)(m + 1);
  m->ev.kind = ev->kind;
  m->ev.seq = ev->seq;
  m->ev.server_time_ms = ev->server_time_ms;
  m->ev.sender_role = ev->sender_role;
  m->ev.has_msg_id = ev->has_msg_id;
  m->ev.redelivered = ev->redelivered;
  memcpy(m->ev.msg_id, ev->msg_id, sizeof m->ev.msg_id);
  m->ev.content.kind = ev->content.kind;
  m->ev.conversation = copy_into(&p, ev->conversation);
  m->ev.sender = copy_into(&p, ev->sender);
  m->ev.content.text = copy_into(&p, ev->content.text);
  for (size_t i = 0; i < n_tags; i++) m->tags[i] = copy_into(&p, ev->tags[i]);
  m->ev.tags = m->tags;
  m->ev.n_tags = n_tags;
  luaL_setmetatable(L, "bench.msg");
  return 1;
}

/* __index: makes the field on first access and caches it. */
static int lazy_index(lua_State *L) {
  lazy_msg *m = luaL_checkudata(L, 1, "bench.msg");
  const char *k = luaL_checkstring(L, 2);
  if (lua_getiuservalue(L, 1, 1) == LUA_TTABLE) {
    lua_pushvalue(L, 2);
    if (lua_rawget(L, -2) != LUA_TNIL) return 1;
    lua_pop(L, 1);
  } else {
    lua_pop(L, 1);
    lua_createtable(L, 0, 4);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, 1, 1);
  }
  /* The cache table is on top. */
  const parley_event *ev = &m->ev;
  if (strcmp(k, "text") == 0) lua_pushstring(L, ev->content.text ? ev->content.text : "");
  else if (strcmp(k, "seq") == 0) lua_pushinteger(L, (lua_Integer)ev->seq);
  else if (strcmp(k, "conversation") == 0) lua_pushstring(L, ev->conversation);
  else if (strcmp(k, "sender") == 0) lua_pushstring(L, ev->sender ? ev->sender : "");
  else if (strcmp(k, "sender_role") == 0) lua_pushstring(L, plr_role_name(ev->sender_role));
  else if (strcmp(k, "kind") == 0) lua_pushstring(L, plr_event_kind_name(ev->kind));
  else if (strcmp(k, "time") == 0) lua_pushinteger(L, (lua_Integer)ev->server_time_ms);
  else if (strcmp(k, "content") == 0) lua_pushstring(L, plr_content_name(ev->content.kind));
  else if (strcmp(k, "redelivered") == 0) lua_pushboolean(L, ev->redelivered);
  else if (strcmp(k, "id") == 0 && ev->has_msg_id) {
    char hex[33];
    parley_msg_id_hex(ev->msg_id, hex);
    lua_pushstring(L, hex);
  } else if (strcmp(k, "tags") == 0) {
    lua_createtable(L, (int)ev->n_tags, 0);
    for (size_t i = 0; i < ev->n_tags; i++) {
      lua_pushstring(L, ev->tags[i]);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
  } else {
    return 0; /* nil: absent fields are not cached */
  }
  lua_pushvalue(L, 2);
  lua_pushvalue(L, -2);
  lua_rawset(L, -4);
  return 1;
}

/* ----------------------------------------------------------- variants */

typedef struct bench_ctx {
  lua_State *L;
  int handler_ref;
  const parley_event *ev;
  int64_t cpu_ns;
  lua_State *pooled; /* the runtime's coroutine pool, one deep here */
  int pooled_ref;
} bench_ctx;

/* Pushes a conversion: the runtime's (conv NULL), the closure it keeps
 * per state, or conv. */
static void push_conv(lua_State *L, lua_CFunction conv) {
  if (conv) lua_pushcfunction(L, conv);
  else if (!plr_event_push_fn(L)) abort();
}

/* One event through the runtime's path: conversion under pcall, registry
 * reference, a pooled coroutine, hook, resume, the coroutine back to the
 * pool. */
static int one_coroutine(bench_ctx *b, lua_CFunction conv) {
  lua_State *L = b->L;
  lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_STEP);
  push_conv(L, conv);
  lua_pushlightuserdata(L, (void *)b->ev);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) return 1;
  int ev_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  /* job_start: a coroutine from the runtime's pool when one is free (a
   * handler that returned normally gives its coroutine back), else a new
   * one. In this steady loop it is always the pooled one. */
  lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_STEP);
  lua_State *co = b->pooled;
  int co_ref = b->pooled_ref;
  if (!co) {
    co = lua_newthread(L);
    co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  b->pooled = NULL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, b->handler_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ev_ref);
  lua_xmove(L, co, 2);
  /* plr_job_resume */
  g_budget = 1000000;
  lua_sethook(co, budget_hook, LUA_MASKCOUNT, HOOK_STEP);
  int64_t start = now_ns();
  int nres = 0;
  int rc = lua_resume(co, L, 1, &nres);
  b->cpu_ns += now_ns() - start;
  bool ok = rc == LUA_OK && nres > 0 && lua_toboolean(co, -nres);
  if (rc == LUA_OK) lua_pop(co, nres);
  /* job_free: a normally finished coroutine goes back to the pool. */
  if (rc == LUA_OK && lua_gettop(co) == 0) {
    b->pooled = co;
    b->pooled_ref = co_ref;
  } else {
    luaL_unref(L, LUA_REGISTRYINDEX, co_ref);
  }
  luaL_unref(L, LUA_REGISTRYINDEX, ev_ref);
  return ok ? 0 : 1;
}

static int one_pcall(bench_ctx *b, lua_CFunction conv) {
  lua_State *L = b->L;
  push_conv(L, conv);
  lua_pushlightuserdata(L, (void *)b->ev);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) return 1;
  lua_rawgeti(L, LUA_REGISTRYINDEX, b->handler_ref);
  lua_insert(L, -2);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) return 1;
  bool ok = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return ok ? 0 : 1;
}

static int v_table_co(bench_ctx *b) { return one_coroutine(b, NULL); }
static int v_table(bench_ctx *b) { return one_pcall(b, NULL); }
static int v_ud_co(bench_ctx *b) { return one_coroutine(b, push_lazy); }
static int v_ud(bench_ctx *b) { return one_pcall(b, push_lazy); }

/* The C handler: the same trivial work as the Lua one. */
typedef struct c_totals {
  uint64_t count, bytes;
} c_totals;

static int c_handler(void *ud, const parley_event *ev) {
  c_totals *t = ud;
  t->count++;
  t->bytes += strlen(ev->content.text);
  return 1;
}

static int (*volatile c_hook)(void *ud, const parley_event *ev) = c_handler;
static c_totals g_ctot;

static int v_c(bench_ctx *b) { return c_hook(&g_ctot, b->ev) ? 0 : 1; }

static const char *HANDLER_SRC =
    "local count, bytes = 0, 0\n"
    "function on_message(msg)\n"
    "  local t = msg.text\n"
    "  count = count + 1\n"
    "  bytes = bytes + #t\n"
    "  return true\n"
    "end\n"
    "function totals() return count, bytes end\n";

/* The Lua handler's totals, to check it saw every event. */
static void lua_totals(lua_State *L, uint64_t *count, uint64_t *bytes) {
  lua_getglobal(L, "totals");
  lua_call(L, 0, 2);
  *count = (uint64_t)lua_tointeger(L, -2);
  *bytes = (uint64_t)lua_tointeger(L, -1);
  lua_pop(L, 2);
}

int main(int argc, char **argv) {
  bool tiny = bench_tiny(argc, argv);
  size_t iters = tiny ? 2000 : 50000;
  int reps = tiny ? 3 : 15;

  const char *tags[2] = {SAMPLE_TAG0, SAMPLE_TAG1};
  parley_event ev;
  memset(&ev, 0, sizeof ev);
  ev.kind = PARLEY_EVENT_MESSAGE;
  ev.conversation = SAMPLE_CONV;
  ev.seq = SAMPLE_SEQ;
  ev.server_time_ms = SAMPLE_TIME_MS;
  ev.sender = SAMPLE_SENDER;
  ev.sender_role = PARLEY_ROLE_CUSTOMER;
  memcpy(ev.msg_id, sample_msg_id, 16);
  ev.has_msg_id = true;
  ev.content.kind = PARLEY_CONTENT_TEXT;
  ev.content.text = SAMPLE_TEXT;
  ev.tags = tags;
  ev.n_tags = 2;
  const size_t text_len = strlen(SAMPLE_TEXT);

  struct {
    const char *subject;
    int (*one)(bench_ctx *);
    bool lua;
  } variants[] = {
      {"c", v_c, false},
      {"lua-table", v_table_co, true},
      {"lua-table-nocoroutine", v_table, true},
      {"lua-userdata", v_ud_co, true},
      {"lua-userdata-nocoroutine", v_ud, true},
  };
  const size_t nv = sizeof variants / sizeof variants[0];

  printf("bench_lua_hook: %s, one message event per call, %zu events x %d repetitions, "
         "median of repetitions\n",
         LUA_RELEASE, iters, reps);
  printf("%-26s %10s\n", "subject", "call_ns");
  /* One Lua state per variant, so one's garbage does not tax another. */
  bench_ctx ctx[8];
  mem_acct acct[8];
  size_t done[8] = {0};
  double v[8][32];
  for (size_t k = 0; k < nv; k++) {
    acct[k] = (mem_acct){.limit = (size_t)64 << 20};
    lua_State *L = lua_newstate(capped_alloc, &acct[k]);
    if (!L) {
      fprintf(stderr, "bench_lua_hook: cannot create a Lua state\n");
      return 1;
    }
    luaL_openlibs(L);
    luaL_newmetatable(L, "bench.msg");
    lua_pushcfunction(L, lazy_index);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    if (luaL_dostring(L, HANDLER_SRC) != LUA_OK) {
      fprintf(stderr, "bench_lua_hook: handler does not load: %s\n", lua_tostring(L, -1));
      return 1;
    }
    lua_getglobal(L, "on_message");
    ctx[k] = (bench_ctx){.L = L, .handler_ref = luaL_ref(L, LUA_REGISTRYINDEX), .ev = &ev};
  }
  memset(&g_ctot, 0, sizeof g_ctot);
  /* The repetitions alternate between the variants, so a burst of load
   * from elsewhere on the machine falls on all of them. r == -1 is the
   * warm-up. */
  for (int r = -1; r < reps; r++) {
    for (size_t k = 0; k < nv; k++) {
      bench_ctx *b = &ctx[k];
      size_t n = r < 0 ? iters / 4 + 1 : iters;
      lua_gc(b->L, LUA_GCCOLLECT);
      uint64_t t0 = cpu_now_ns();
      for (size_t i = 0; i < n; i++)
        if (variants[k].one(b) != 0) {
          fprintf(stderr, "bench_lua_hook: %s: handler failed: %s\n", variants[k].subject,
                  lua_isstring(b->L, -1) ? lua_tostring(b->L, -1) : "?");
          return 1;
        }
      uint64_t t1 = cpu_now_ns();
      done[k] += n;
      if (r >= 0) v[k][r] = (double)(t1 - t0) / (double)n;
    }
  }
  for (size_t k = 0; k < nv; k++) {
    lua_State *L = ctx[k].L;
    uint64_t count, bytes;
    if (variants[k].lua) lua_totals(L, &count, &bytes);
    else count = g_ctot.count, bytes = g_ctot.bytes;
    if (count != done[k] || bytes != done[k] * text_len || lua_gettop(L) != 0) {
      fprintf(stderr,
              "bench_lua_hook: %s: handler saw %llu events, %llu bytes; expected %zu, %zu "
              "(stack %d)\n",
              variants[k].subject, (unsigned long long)count, (unsigned long long)bytes, done[k],
              done[k] * text_len, lua_gettop(L));
      return 1;
    }
    double med = bench_percentile(v[k], (size_t)reps, 50);
    printf("%-26s %10.1f\n", variants[k].subject, med);
    bench_figure("lua_hook", "call_ns", variants[k].subject, "", med, "ns");
    lua_close(L);
  }
  bench_note("lua_hook",
             "%s in-process. lua-table is lua/src/runtime.c's event conversion (plr_event_push_fn) under pcall as the runtime runs it ("
             "registry ref, a pooled coroutine with the budget count hook, CPU clock around "
             "lua_resume), without runtime.lua's dispatch and commit wrappers. lua-userdata: "
             "the event copied into one userdata, fields made on first access by __index. "
             "The handler reads msg.text and counts. Thread CPU time per event, median of repetitions.",
             LUA_RELEASE);
  return 0;
}
