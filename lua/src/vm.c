/* One bot's Lua state: the counting allocator, the instruction budget, the
 * allow-listed libraries, bot.yaml, the templates and bot.lua.
 */
#include "vm.h"
#include "event.h"
#include "settings.h"
#include "rt_metrics.h"

#include "strmatch.h"

#include "config/config.h"
#include "http/http.h"
#include "util/assert.h"
#include "util/clock.h"

#include <curl/curl.h>

#include <lauxlib.h>
#include <lua-cjson.h>
#include <lualib.h>

#include <errno.h>
#include <stdio.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define PLR_BOT_SOURCE_MAX (1024 * 1024)

/* The allocator counts every byte of the state and refuses what would go
 * over the cap: Lua then raises "not enough memory" in the code that asked,
 * after an emergency collection. */
static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  plr_vm *vm = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    vm->mem_used -= old;
    return NULL;
  }
  if (!vm->unlimited && nsize > old && vm->mem_used - old + nsize > vm->mem_limit) return NULL;
  void *p = realloc(ptr, nsize);
  if (!p) return NULL;
  vm->mem_used = vm->mem_used - old + nsize;
  if (vm->mem_used > vm->mem_peak) vm->mem_peak = vm->mem_used;
  return p;
}

plr_vm *plr_vm_of(lua_State *L) {
  plr_vm *vm;
  memcpy(&vm, lua_getextraspace(L), sizeof vm);
  return vm;
}

/* The count hook charges the running code. Once the budget is spent it
 * fires on every instruction and raises every time, so a pcall in the bot
 * catches one error and fails again at its next instruction: only
 * abandoning the coroutine ends it. */
int64_t plr_vm_now_ns(void) { return (int64_t)pu_clock_ns(); }

/* Threads the budget stopped, in a weak-keyed registry table: the error
 * was raised inside this hook, and Lua leaves hooks off in a thread that
 * dies that way. Closing such a thread would run its __close handlers
 * without any budget, so the sandbox's coroutine.close and coroutine.wrap
 * never close them (C.doomed). */
static const char doomed_key = 'd';

static void vm_mark_doomed(lua_State *L, plr_vm *vm) {
  bool was = vm->unlimited;
  vm->unlimited = true; /* a slot in a table: the cap must not fail it */
  if (lua_checkstack(L, 3) && lua_rawgetp(L, LUA_REGISTRYINDEX, &doomed_key) == LUA_TTABLE) {
    lua_pushthread(L);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
  }
  lua_pop(L, 1);
  vm->unlimited = was;
}

static void vm_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  plr_vm *vm = plr_vm_of(L);
  vm->budget -= lua_gethookcount(L);
  /* Instructions do not count the time C functions take (string.rep,
   * table.concat, gsub): a time limit per handler covers those. */
  if (vm->deadline_ns && plr_vm_now_ns() > vm->deadline_ns) vm->budget = -1;
  if (vm->exhausted || vm->budget < 0) {
    vm->exhausted = true;
    lua_sethook(L, vm_hook, LUA_MASKCOUNT, 1);
    /* The error may be raised in a coroutine the handler created; the
     * handler's own coroutine must fail at its next instruction too. */
    if (vm->budget_co && vm->budget_co != L)
      lua_sethook(vm->budget_co, vm_hook, LUA_MASKCOUNT, 1);
    vm_mark_doomed(L, vm);
    luaL_error(L, "handler exceeded its instruction budget");
    return;
  }
  if (lua_gethookcount(L) != PLR_HOOK_STEP)
    lua_sethook(L, vm_hook, LUA_MASKCOUNT, PLR_HOOK_STEP);
}

void plr_vm_tick(lua_State *L, int64_t instructions) {
  plr_vm *vm = plr_vm_of(L);
  if (!vm->budget_co) return; /* the state is being set up */
  vm->budget -= instructions;
  /* The work is summed across calls: a thousand calls of a few hundred
   * KiB each between two runs of the hook must not go unchecked either.
   * The clock is read once per PLR_TICK_CHECK instructions of work (or at
   * once when asked with 0). */
  vm->since_check += instructions;
  if (instructions == 0 || vm->since_check >= PLR_TICK_CHECK) {
    vm->since_check = 0;
    if (vm->deadline_ns && plr_vm_now_ns() > vm->deadline_ns) vm->budget = -1;
  }
  if (vm->exhausted || vm->budget < 0) {
    vm->exhausted = true;
    lua_sethook(L, vm_hook, LUA_MASKCOUNT, 1);
    if (vm->budget_co != L) lua_sethook(vm->budget_co, vm_hook, LUA_MASKCOUNT, 1);
    luaL_error(L, "handler exceeded its instruction budget");
  }
}

void plr_vm_budget(plr_vm *vm, lua_State *L, int64_t budget, bool exhausted) {
  vm->deadline_ns = 0;
  vm->budget = budget;
  vm->exhausted = exhausted;
  vm->budget_co = L;
  lua_sethook(L, vm_hook, LUA_MASKCOUNT, exhausted ? 1 : PLR_HOOK_STEP);
}

static void seterr(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || !errlen) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* Only reached for an error outside every protected call, which the
 * runtime avoids (the cap is lifted there); say what happened before Lua
 * aborts. */
static int vm_panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "parley: unprotected Lua error: %s\n", msg ? msg : "(not a string)");
  return 0;
}

/* The traceback message handler of every protected call into Lua. */
int plr_msgh(lua_State *L) {
  /* No __tostring: an error object is the bot's value, and no bot code may
   * run inside the runtime's own calls. */
  const char *msg = lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER
                        ? lua_tostring(L, 1)
                        : NULL;
  if (!msg) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int plr_vm_pcall(plr_vm *vm, int nargs, int nres, char *err, size_t errlen) {
  lua_State *L = vm->L;
  plr_vm_budget(vm, L, PLR_INTERNAL_BUDGET, false);
  /* The runtime's own calls (diffs, commits, rollback) run without the cap:
   * their allocations are bounded by the state limits, and they must work
   * when the bot has filled its heap. */
  vm->unlimited = true;
  /* Stack on entry: ... function args; on return: ... results (nres of
   * them), or ... alone after an error. Every caller counts on that. */
  PARLEY_ASSERT(nargs >= 0 && lua_gettop(L) > nargs && lua_isfunction(L, -nargs - 1));
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, plr_msgh);
  lua_insert(L, base);
  int rc = lua_pcall(L, nargs, nres, base);
  lua_remove(L, base);
  if (rc != LUA_OK) {
    seterr(err, errlen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
    lua_pop(L, 1);
    PARLEY_ASSERT(lua_gettop(L) == base - 1);
    return rc == LUA_ERRMEM ? PARLEY_ENOMEM : PARLEY_ELUA;
  }
  PARLEY_ASSERT(nres == LUA_MULTRET || lua_gettop(L) == base - 1 + nres);
  return 0;
}

/* C primitives that need no runtime. ------------------------------------ */

static int l_log(lua_State *L) {
  plr_vm *vm = plr_vm_of(L);
  int level = (int)luaL_checkinteger(L, 1);
  const char *msg = luaL_checkstring(L, 2);
  const char *conv = luaL_optstring(L, 3, NULL);
  lua_Integer seq = luaL_optinteger(L, 4, 0);
  plr_log(vm->rt, level, conv, (uint64_t)seq, "%s", msg);
  return 0;
}

static int l_now(lua_State *L) {
  plr_vm *vm = plr_vm_of(L);
  lua_pushinteger(L, plr_rt_now(vm->rt));
  return 1;
}

/* C.where(): "chunk:line: " of the innermost function that is not the
 * runtime's own chunk (bot code), or "" when there is none: runtime.lua
 * raises its argument and limit errors there, so they name the bot's line
 * however deep inside the runtime they are found. */
static void push_where(lua_State *L) {
  lua_Debug ar;
  for (int level = 1; lua_getstack(L, level, &ar); level++) {
    if (!lua_getinfo(L, "Sl", &ar)) break;
    /* "=runtime" and its modules ("=runtime/dialog") are the runtime's. */
    if (ar.currentline <= 0 || strncmp(ar.source, "=runtime", 8) == 0) continue;
    lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
    return;
  }
  lua_pushliteral(L, "");
}

static int l_where(lua_State *L) {
  push_where(L);
  return 1;
}

int plr_vm_raise(lua_State *L, const char *fmt, ...) {
  push_where(L);
  va_list ap;
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 2);
  return lua_error(L);
}

/* C.proxy(mt): a userdata without memory or user values, with metatable
 * mt: a handle that has no field a bot can read or write (ctx). */
static int l_proxy(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_newuserdatauv(L, 0, 0);
  lua_pushvalue(L, 1);
  lua_setmetatable(L, -2);
  return 1;
}

/* C.doomed(co): whether the budget stopped that coroutine. */
static int l_doomed(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTHREAD);
  bool doomed = false;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &doomed_key) == LUA_TTABLE) {
    lua_pushvalue(L, 1);
    doomed = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_pushboolean(L, doomed);
  return 1;
}

/* C.url_host(url): the host of an http(s) URL that bot.yaml's http.allow
 * lets the bot call, or nil and the reason. The URL is parsed by libcurl,
 * which performs the request, and the host matched by the HTTP client's
 * own ph_host_allowed against the entries as written in bot.yaml (the
 * client checks the same again when it connects). User info
 * (user:password@) is refused: a host before an '@' is a classic way to
 * make a URL look like it goes somewhere else. */
static int l_url_host(lua_State *L) {
  plr_vm *vm = plr_vm_of(L);
  size_t len = 0;
  const char *url = luaL_checklstring(L, 1, &len);
  char why[384];
  why[0] = '\0';
  if (len > 8192 || strlen(url) != len) {
    snprintf(why, sizeof why, "url is longer than 8192 bytes or contains a NUL byte");
  }
  CURLU *u = why[0] ? NULL : curl_url();
  char *scheme = NULL, *host = NULL, *user = NULL, *pass = NULL;
  if (!why[0] && !u) snprintf(why, sizeof why, "out of memory");
  if (u && curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
    snprintf(why, sizeof why, "url must be an absolute http:// or https:// URL: %.200s", url);
  else if (u && (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
                 (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)))
    snprintf(why, sizeof why, "url must start with http:// or https://: %.200s", url);
  else if (u && (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK ||
                 curl_url_get(u, CURLUPART_PASSWORD, &pass, 0) == CURLUE_OK))
    snprintf(why, sizeof why, "url must not carry user info (user@host): %.200s", url);
  else if (u && curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
    snprintf(why, sizeof why, "url without a host: %.200s", url);
  else if (u) {
    /* libcurl gives IPv6 literals in brackets; the allow-list is written
     * without them ("::1"). */
    char bare[256];
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']' && hl - 2 < sizeof bare) {
      memcpy(bare, host + 1, hl - 2);
      bare[hl - 2] = '\0';
    } else {
      snprintf(bare, sizeof bare, "%s", host);
    }
    char *pct = strchr(bare, '%'); /* a zone id is not part of the address */
    if (pct) *pct = '\0';
    if (!ph_host_allowed(bare, (const char *const *)vm->allow, vm->n_allow))
      snprintf(why, sizeof why, "host '%.200s' is not in bot.yaml http.allow", bare);
    else
      lua_pushstring(L, bare);
  }
  curl_free(scheme);
  curl_free(host);
  curl_free(user);
  curl_free(pass);
  if (u) curl_url_cleanup(u);
  if (why[0]) {
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
  }
  return 1;
}

/* C.json_str(s): s as a JSON string literal, escaped the way the state's
 * canonical encoding always has ('"', '\\', \b \f \n \r \t, other control
 * bytes and DEL as \u00XX; everything else, UTF-8 included, as is). The
 * runtime encodes the whole state before every reply to check its limits:
 * a byte loop here costs a nanosecond a byte where a gsub charged the
 * handler two matcher steps. Charged to the budget like the other bounded
 * functions. */
static int l_json_str(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addchar(&b, '"');
  size_t since = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    switch (c) {
    case '"': luaL_addstring(&b, "\\\""); break;
    case '\\': luaL_addstring(&b, "\\\\"); break;
    case '\b': luaL_addstring(&b, "\\b"); break;
    case '\f': luaL_addstring(&b, "\\f"); break;
    case '\n': luaL_addstring(&b, "\\n"); break;
    case '\r': luaL_addstring(&b, "\\r"); break;
    case '\t': luaL_addstring(&b, "\\t"); break;
    default:
      if (c < 0x20 || c == 0x7f) {
        char u[8];
        snprintf(u, sizeof u, "\\u%04x", c);
        luaL_addstring(&b, u);
      } else {
        luaL_addchar(&b, (char)c);
      }
    }
    if (++since == 256 * 1024) {
      plr_vm_tick(L, (int64_t)since / 64);
      since = 0;
    }
  }
  luaL_addchar(&b, '"');
  luaL_pushresult(&b);
  plr_vm_tick(L, (int64_t)since / 64);
  return 1;
}

static int l_version(lua_State *L) {
  lua_pushstring(L, PLR_VERSION);
  return 1;
}

/* Loading. -------------------------------------------------------------- */

static char *read_file(const char *path, size_t max, size_t *len, char *err,
                       size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    seterr(err, errlen, "%s: %s", path, strerror(errno));
    return NULL;
  }
  char *buf = malloc(max + 1);
  size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
  fclose(f);
  if (!buf) {
    seterr(err, errlen, "%s: out of memory", path);
    return NULL;
  }
  if (n > max) {
    free(buf);
    seterr(err, errlen, "%s: larger than %zu bytes", path, max);
    return NULL;
  }
  buf[n] = '\0';
  *len = n;
  return buf;
}

static int cfg_err(const pc_error *pe, char *err, size_t errlen) {
  char buf[768];
  seterr(err, errlen, "%s", pc_error_format(pe, buf, sizeof buf));
  return PARLEY_ECONFIG;
}

static const char *const BOT_KEYS[] = {"name",   "default_locale", "fallback_reply",
                                       "limits", "http",           "description",
                                       "settings", "settings_schema", NULL};
static const char *const LIMIT_KEYS[] = {
    "memory", "instructions", "load_instructions", "cpu_time", "http_timeout",
    "http_max_body", "queue_max", "conversations_max", NULL};

/* Reads bot.yaml: identity, locale, limits. Unknown top-level keys are
 * errors so that typos show; a bot keeps its own keys under settings:.
 * PARLEY_BOT_SETTINGS__BASE_URL=... overrides settings.base_url. */
static int vm_config(plr_vm *vm, char *err, size_t errlen) {
  pc_error pe;
  memset(&pe, 0, sizeof pe);
  char path[1024];
  snprintf(path, sizeof path, "%s/bot.yaml", vm->dir);
  int rc = pc_load_file(path, &vm->cfg, &pe);
  if (rc) return cfg_err(&pe, err, errlen);
  if (pc_apply_env(vm->cfg, "PARLEY_BOT", &pe)) return cfg_err(&pe, err, errlen);
  const pc_node *root = pc_root(vm->cfg);
  if (pc_node_kind(root) != PC_MAP) {
    seterr(err, errlen, "%s:1: bot.yaml must be a map", path);
    return PARLEY_ECONFIG;
  }
  if (pc_check_keys(root, BOT_KEYS, &pe)) return cfg_err(&pe, err, errlen);
  int src = plr_settings_check(root, err, errlen);
  if (src) return src;
  const char *s = NULL;
  if (pc_get_str(root, "name", NULL, &s, &pe)) return cfg_err(&pe, err, errlen);
  if (!s || !*s) {
    seterr(err, errlen, "%s:1: name: missing bot name", path);
    return PARLEY_ECONFIG;
  }
  vm->name = strdup(s);
  if (pc_get_str(root, "default_locale", "en", &s, &pe))
    return cfg_err(&pe, err, errlen);
  vm->default_locale = strdup(s);
  if (!vm->name || !vm->default_locale) return PARLEY_ENOMEM;

  const pc_node *lim = pc_get(root, "limits");
  uint64_t v;
  if (lim) {
    if (pc_check_keys(lim, LIMIT_KEYS, &pe)) return cfg_err(&pe, err, errlen);
  }
  if (pc_get_size(lim, "memory", vm->lim.memory, &v, &pe)) return cfg_err(&pe, err, errlen);
  if (v < 1024 * 1024 || v > (uint64_t)4 << 30) {
    seterr(err, errlen, "%s:%d: limits.memory: must be between 1MiB and 4GiB", path,
           pc_node_line(pc_get(lim, "memory")));
    return PARLEY_ECONFIG;
  }
  vm->lim.memory = v;
  if (pc_get_u64(lim, "instructions", vm->lim.instructions, 10000,
                 UINT64_C(100000000000), &vm->lim.instructions, &pe))
    return cfg_err(&pe, err, errlen);
  if (pc_get_u64(lim, "load_instructions", vm->lim.load_instructions, 10000,
                 UINT64_C(100000000000), &vm->lim.load_instructions, &pe))
    return cfg_err(&pe, err, errlen);
  if (pc_get_ms(lim, "cpu_time", vm->lim.cpu_time_ms, &v, &pe)) return cfg_err(&pe, err, errlen);
  if (v < 10 || v > 600000) {
    seterr(err, errlen, "%s:%d: limits.cpu_time: must be between 10ms and 10m", path,
           pc_node_line(pc_get(lim, "cpu_time")));
    return PARLEY_ECONFIG;
  }
  vm->lim.cpu_time_ms = (uint32_t)v;
  vm->lim.load_time_ms = vm->lim.cpu_time_ms * 4;
  if (pc_get_ms(lim, "http_timeout", vm->lim.http_timeout_ms, &v, &pe))
    return cfg_err(&pe, err, errlen);
  vm->lim.http_timeout_ms = (uint32_t)(v > 120000 ? 120000 : v);
  if (pc_get_size(lim, "http_max_body", vm->lim.http_max_body, &v, &pe))
    return cfg_err(&pe, err, errlen);
  vm->lim.http_max_body = (uint32_t)(v > (64u << 20) ? (64u << 20) : v);
  if (pc_get_u64(lim, "queue_max", vm->lim.queue_max, 1, 1000000, &v, &pe))
    return cfg_err(&pe, err, errlen);
  vm->lim.queue_max = (uint32_t)v;
  if (pc_get_u64(lim, "conversations_max", vm->lim.conversations_max, 1, 10000000,
                 &v, &pe))
    return cfg_err(&pe, err, errlen);
  vm->lim.conversations_max = (uint32_t)v;

  const pc_node *http = pc_get(root, "http");
  if (http) {
    static const char *const HTTP_KEYS[] = {"allow", "allow_private", NULL};
    if (pc_check_keys(http, HTTP_KEYS, &pe)) return cfg_err(&pe, err, errlen);
    if (pc_get_bool(http, "allow_private", false, &vm->allow_private, &pe))
      return cfg_err(&pe, err, errlen);
    const pc_node *allow = pc_get(http, "allow");
    if (allow && pc_node_kind(allow) != PC_SEQ) {
      seterr(err, errlen, "%s:%d: http.allow: must be a list of host names", path,
             pc_node_line(allow));
      return PARLEY_ECONFIG;
    }
    size_t n = pc_len(allow);
    if (n > 256) {
      seterr(err, errlen, "%s:%d: http.allow: more than 256 hosts", path, pc_node_line(allow));
      return PARLEY_ECONFIG;
    }
    vm->allow = calloc(n ? n : 1, sizeof *vm->allow);
    if (!vm->allow) return PARLEY_ENOMEM;
    for (size_t i = 0; i < n; i++) {
      const char *h = pc_scalar(pc_at(allow, i));
      if (!h || !*h) {
        seterr(err, errlen, "%s:%d: http.allow: every entry must be a host name", path,
               pc_node_line(pc_at(allow, i)));
        return PARLEY_ECONFIG;
      }
      if (!(vm->allow[vm->n_allow++] = strdup(h))) return PARLEY_ENOMEM;
    }
  }
  return 0;
}

/* Matcher steps per instruction of budget: a step (one entry into the
 * matcher or one repetition tried) costs about what a few VM instructions
 * do, so a handler's budget bounds the pattern matching it does too. */
#define VM_STRMATCH_STEPS_PER_INSTRUCTION 4

/* A pattern-matching call may take the steps the running code's remaining
 * instruction budget buys; an exhausted budget buys none. Before any budget
 * was given (C code calling in while the state is set up) only the fixed
 * cap applies. */
static int64_t vm_strmatch_allowance(lua_State *L) {
  plr_vm *vm = plr_vm_of(L);
  if (!vm->budget_co) return INT64_MAX;
  if (vm->exhausted || vm->budget <= 0) return 0;
  if (vm->budget > INT64_MAX / VM_STRMATCH_STEPS_PER_INSTRUCTION) return INT64_MAX;
  return vm->budget * VM_STRMATCH_STEPS_PER_INSTRUCTION;
}

/* Steps taken are charged to the budget (rounded up), and the handler's
 * deadline is checked as the hook would: a long match must not outlive
 * cpu_time either. */
static bool vm_strmatch_charge(lua_State *L, int64_t steps) {
  plr_vm *vm = plr_vm_of(L);
  vm->budget -= (steps + VM_STRMATCH_STEPS_PER_INSTRUCTION - 1) / VM_STRMATCH_STEPS_PER_INSTRUCTION;
  /* A passed deadline is the handler's budget error, not the pattern's
   * fault: plr_vm_tick raises it (and marks the budget spent). */
  if (vm->deadline_ns && plr_vm_now_ns() > vm->deadline_ns) plr_vm_tick(L, 0);
  return true;
}

static const plr_strmatch_meter vm_strmatch_meter = {
    .allowance = vm_strmatch_allowance,
    .charge = vm_strmatch_charge,
};

static void vm_open_libs(lua_State *L) {
  static const luaL_Reg libs[] = {
      {LUA_GNAME, luaopen_base},         {LUA_STRLIBNAME, luaopen_string},
      {LUA_TABLIBNAME, luaopen_table},   {LUA_MATHLIBNAME, luaopen_math},
      {LUA_UTF8LIBNAME, luaopen_utf8},   {LUA_COLIBNAME, luaopen_coroutine},
      {NULL, NULL}};
  for (const luaL_Reg *l = libs; l->name; l++) {
    luaL_requiref(L, l->name, l->func, 1);
    lua_pop(L, 1);
  }
  /* The pattern functions of the string table are replaced by bounded ones
   * before anything else sees the table: the sandbox's string proxy and the
   * string metatable's __index (("x"):find) both read this same table. */
  lua_getglobal(L, LUA_STRLIBNAME);
  plr_strmatch_install(L, -1, &vm_strmatch_meter);
  lua_pop(L, 1);
  plr_vm_bound_install(L);
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &doomed_key);
  /* Not in the allow-list even for the runtime's own chunk: nothing of the
   * runtime needs them, and bot code must never reach them. */
  static const char *const drop[] = {"dofile", "loadfile", "collectgarbage",
                                     "require", NULL};
  for (const char *const *d = drop; *d; d++) {
    lua_pushnil(L);
    lua_setglobal(L, *d);
  }
}

static const plr_embedded *find_embedded(const char *name) {
  for (size_t i = 0; i < plr_embedded_lib_count; i++)
    if (strcmp(plr_embedded_lib[i].name, name) == 0) return &plr_embedded_lib[i];
  return NULL;
}

/* C.lib(name): the source of the embedded lua/lib/NAME.lua, for the
 * runtime's own modules. */
static int l_lib(lua_State *L) {
  const plr_embedded *lib = find_embedded(luaL_checkstring(L, 1));
  if (!lib) return luaL_error(L, "no embedded module '%s'", lua_tostring(L, 1));
  lua_pushlstring(L, (const char *)lib->data, lib->len);
  return 1;
}

/* Runs the embedded runtime.lua with (C, templates, config, cjson) and
 * keeps the table it returns. Stack: templates on top on entry; popped. */
static int vm_boot(plr_vm *vm, char *err, size_t errlen) {
  lua_State *L = vm->L;
  const plr_embedded *lib = find_embedded("runtime");
  if (!lib) {
    lua_pop(L, 1);
    seterr(err, errlen, "runtime.lua is not embedded");
    return PARLEY_EINTERNAL;
  }
  int tpl = lua_gettop(L);
  if (luaL_loadbufferx(L, (const char *)lib->data, lib->len, "=runtime", "t") != LUA_OK) {
    seterr(err, errlen, "%s", lua_tostring(L, -1));
    lua_settop(L, tpl - 1);
    return PARLEY_EINTERNAL;
  }
  /* Stack: templates, chunk. Arguments: C, templates, config, cjson. */
  vm->unlimited = true;
  lua_createtable(L, 0, 16);
  static const luaL_Reg prims[] = {{"log", l_log},
                                   {"now", l_now},
                                   {"plural", plr_l_plural},
                                   {"locale_chain", plr_l_locale_chain},
                                   {"where", l_where},
                                   {"proxy", l_proxy},
                                   {"doomed", l_doomed},
                                   {"url_host", l_url_host},
                                   {"json_str", l_json_str},
                                   {"lib", l_lib},
                                   {NULL, NULL}};
  luaL_setfuncs(L, prims, 0);
  l_version(L);
  lua_setfield(L, -2, "version");
  plr_rt_bind(L, vm->rt);
  plr_metrics_bind(L, vm->rt);
  /* The event converter's closure, made while the cap is lifted. */
  if (vm->rt && plr_event_push_fn(L)) lua_pop(L, 1);
  lua_pushvalue(L, tpl);
  plr_push_yaml(L, pc_root(vm->cfg), true);
  luaopen_cjson(L);
  int rc = plr_vm_pcall(vm, 4, 1, err, errlen);
  if (rc) {
    lua_settop(L, tpl - 1);
    return rc;
  }
  vm->rt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, tpl - 1);
  return 0;
}

int plr_vm_rt_get(plr_vm *vm, const char *fn) {
  lua_rawgeti(vm->L, LUA_REGISTRYINDEX, vm->rt_ref);
  int t = lua_getfield(vm->L, -1, fn);
  lua_remove(vm->L, -2);
  return t;
}

/* bot.lua runs in a coroutine with the load budget, like a handler would,
 * so that a runaway top level is stopped the same way. */
static int vm_run_bot(plr_vm *vm, char *err, size_t errlen) {
  lua_State *L = vm->L;
  char path[1024];
  snprintf(path, sizeof path, "%s/bot.lua", vm->dir);
  size_t len = 0;
  char *src = read_file(path, PLR_BOT_SOURCE_MAX, &len, err, errlen);
  if (!src) return PARLEY_ECONFIG;
  plr_vm_budget(vm, L, PLR_INTERNAL_BUDGET, false);
  lua_State *co = lua_newthread(L);
  int top = lua_gettop(L);
  plr_vm_rt_get(vm, "load_bot");
  lua_xmove(L, co, 1);
  lua_pushlstring(co, src, len);
  free(src);
  lua_pushfstring(co, "@%s", path);
  plr_vm_budget(vm, co, (int64_t)vm->lim.load_instructions, false);
  vm->deadline_ns = plr_vm_now_ns() + (int64_t)vm->lim.load_time_ms * 1000000;
  vm->unlimited = false;
  int nres = 0;
  int rc = lua_resume(co, L, 2, &nres);
  vm->unlimited = true;
  vm->deadline_ns = 0;
  int status = 0;
  if (rc == LUA_YIELD) {
    seterr(err, errlen, "%s: bot.lua may not yield or call http while loading", path);
    status = PARLEY_ELUA;
  } else if (rc != LUA_OK) {
    const char *m = lua_tostring(co, -1);
    seterr(err, errlen, "%s", m ? m : "error while loading bot.lua");
    status = rc == LUA_ERRMEM ? PARLEY_ENOMEM : PARLEY_ELUA;
  }
  lua_settop(L, top - 1);
  PARLEY_ASSERT(lua_gettop(L) == top - 1 && lua_gettop(co) >= 0);
  return status;
}

int plr_vm_load(parley_runtime *rt, const char *bot_dir, plr_vm **out, char *err,
                size_t errlen) {
  *out = NULL;
  plr_vm *vm = calloc(1, sizeof *vm);
  if (!vm) return PARLEY_ENOMEM;
  vm->rt = rt;
  vm->rt_ref = LUA_NOREF;
  vm->dir = strdup(bot_dir ? bot_dir : ".");
  vm->lim = (plr_limits){.memory = 64u << 20,
                         .instructions = 10000000,
                         .load_instructions = 50000000,
                         .cpu_time_ms = 5000,
                         .load_time_ms = 20000,
                         .http_timeout_ms = 10000,
                         .http_max_body = 1u << 20,
                         .queue_max = 1024,
                         .conversations_max = 100000};
  int rc = vm->dir ? vm_config(vm, err, errlen) : PARLEY_ENOMEM;
  if (rc) goto fail;
  vm->mem_limit = (size_t)vm->lim.memory;
  vm->L = lua_newstate(vm_alloc, vm);
  if (!vm->L) {
    rc = PARLEY_ENOMEM;
    seterr(err, errlen, "cannot create a Lua state");
    goto fail;
  }
  memcpy(lua_getextraspace(vm->L), &vm, sizeof vm);
  lua_atpanic(vm->L, vm_panic);
  lua_State *L = vm->L;
  /* Library opening runs unprotected: only an out-of-memory could fail it,
   * and the cap is at least 1 MiB, far above what the libraries take. */
  vm_open_libs(L);
  rc = plr_templates_load(L, vm->dir, vm->default_locale, err, errlen);
  if (rc) goto fail;
  rc = vm_boot(vm, err, errlen);
  if (rc) goto fail;
  rc = vm_run_bot(vm, err, errlen);
  if (rc) goto fail;
  *out = vm;
  return 0;
fail:
  plr_vm_free(vm);
  return rc;
}

void plr_vm_free(plr_vm *vm) {
  if (!vm) return;
  if (vm->L) lua_close(vm->L);
  if (vm->cfg) pc_doc_free(vm->cfg);
  free(vm->name);
  free(vm->default_locale);
  free(vm->dir);
  for (size_t i = 0; i < vm->n_allow; i++) free(vm->allow[i]);
  free(vm->allow);
  free(vm);
}

lua_State *plr_vm_state(plr_vm *vm) { return vm->L; }
const char *plr_vm_name(const plr_vm *vm) { return vm->name; }
const char *plr_vm_default_locale(const plr_vm *vm) { return vm->default_locale; }
const plr_limits *plr_vm_limits(const plr_vm *vm) { return &vm->lim; }
size_t plr_vm_memory(const plr_vm *vm) { return vm->mem_used; }

int parley_runtime_check(const char *bot_dir, char *err, size_t errlen) {
  plr_vm *vm = NULL;
  int rc = plr_vm_load(NULL, bot_dir, &vm, err, errlen);
  plr_vm_free(vm);
  return rc;
}
