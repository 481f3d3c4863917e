/* The C primitives runtime.lua calls for a running handler: replies and
 * actions with derived ids, the idempotency key, and HTTP, which suspends
 * the handler's coroutine until the response. */
#include "proactive.h"
#include "rt_int.h"

#include <lauxlib.h>

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Sends. ---------------------------------------------------------------- */

static plr_job *current_job(lua_State *L, parley_runtime *r, const char *conv) {
  plr_job *j = r->current;
  if (!j) plr_vm_raise(L, "replies and actions are only possible inside a handler");
  if (strcmp(j->conv->id, conv) != 0)
    plr_vm_raise(L, "this ctx belongs to conversation %s, not to the running handler", conv);
  if (j->ordinal >= PLR_REPLIES_MAX)
    plr_vm_raise(L, "a handler may send at most %d replies and actions", PLR_REPLIES_MAX);
  return j;
}

static void job_msg_id(parley_runtime *r, plr_job *j, uint8_t id[PARLEY_MSG_ID_LEN]) {
  if (j->kind == JOB_TIMER)
    plr_rt_derive(r, j->conv->id, 0,
           PLR_TIMER_ORDINAL + (uint32_t)(j->timer_id % 0x3FFFFF) * 256u + j->ordinal, id);
  else
    plr_rt_derive(r, j->conv->id, j->seq, j->ordinal, id);
  j->ordinal++;
}

/* Raw reads only: the tables come from runtime.lua, and nothing of a
 * metatable may run here. */
static const char *opt_field(lua_State *L, int t, const char *k) {
  lua_pushstring(L, k);
  lua_rawget(L, t);
  const char *s = lua_tostring(L, -1);
  lua_pop(L, 1); /* the table keeps the string alive */
  return s;
}

static parley_content_kind content_kind(const char *k) {
  if (!k) return PARLEY_CONTENT_NONE;
  if (strcmp(k, "text") == 0) return PARLEY_CONTENT_TEXT;
  if (strcmp(k, "card") == 0) return PARLEY_CONTENT_CARD;
  if (strcmp(k, "quick_replies") == 0) return PARLEY_CONTENT_QUICK_REPLIES;
  if (strcmp(k, "image") == 0) return PARLEY_CONTENT_IMAGE;
  return PARLEY_CONTENT_NONE;
}

static int push_send_status(lua_State *L, parley_runtime *r, plr_job *j, int rc) {
  if (rc) {
    r->stats.send_failures++;
    lua_pushnil(L);
    lua_pushstring(L, parley_strerror(rc));
    return 2;
  }
  r->stats.sends++;
  j->pending_sends++;
  lua_pushboolean(L, 1);
  return 1;
}

/* C.send(conv, content, quote): content is runtime.lua's normalised table. */
static int l_send(lua_State *L) {
  parley_runtime *r = lua_touserdata(L, lua_upvalueindex(1));
  const char *conv = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  plr_job *j = current_job(L, r, conv);
  parley_content ct;
  memset(&ct, 0, sizeof ct);
  ct.kind = content_kind(opt_field(L, 2, "kind"));
  if (ct.kind == PARLEY_CONTENT_NONE) return luaL_error(L, "unknown content kind");
  ct.text = opt_field(L, 2, "text");
  ct.title = opt_field(L, 2, "title");
  ct.image_url = opt_field(L, 2, "image_url");
  ct.fallback = opt_field(L, 2, "fallback");
  parley_button buttons[PLR_BUTTONS_MAX];
  lua_pushliteral(L, "buttons");
  if (lua_rawget(L, 2) == LUA_TTABLE) {
    int bt = lua_gettop(L);
    size_t n = (size_t)lua_rawlen(L, bt);
    if (n > PLR_BUTTONS_MAX) return luaL_error(L, "at most %d buttons", PLR_BUTTONS_MAX);
    for (size_t i = 0; i < n; i++) {
      if (lua_rawgeti(L, bt, (lua_Integer)i + 1) != LUA_TTABLE)
        return luaL_error(L, "button %d is not a table", (int)i + 1);
      int b = lua_gettop(L);
      buttons[i].label = opt_field(L, b, "label");
      buttons[i].payload = opt_field(L, b, "payload");
      buttons[i].url = opt_field(L, b, "url");
      lua_pop(L, 1); /* the buttons table keeps it alive */
    }
    ct.buttons = buttons;
    ct.n_buttons = n;
  }
  parley_quote q;
  memset(&q, 0, sizeof q);
  if (lua_type(L, 3) == LUA_TTABLE) {
    lua_pushliteral(L, "seq");
    lua_rawget(L, 3);
    q.seq = (uint64_t)lua_tointeger(L, -1);
    lua_pop(L, 1);
    q.excerpt = opt_field(L, 3, "excerpt");
    q.sender = opt_field(L, 3, "sender");
  }
  uint8_t id[PARLEY_MSG_ID_LEN];
  job_msg_id(r, j, id);
  int rc = r->drv.send(r->drv.ud, conv, &ct, q.seq ? &q : NULL, id, j->conv->epoch, j);
  return push_send_status(L, r, j, rc);
}

/* Whether s[0..len) is what Lua 5.4's utf8.len accepts (strict: no
 * surrogates, nothing above U+10FFFF, no overlong forms): lutf8lib.c's
 * utf8_decode, byte for byte, so that a text checked here passes exactly
 * when runtime.lua's check_text would pass it. s is a Lua string, NUL
 * terminated, so reading one byte past a cut sequence finds the NUL. */
static bool lua_utf8_valid(const char *s, size_t len) {
  static const uint32_t limits[] = {~(uint32_t)0, 0x80, 0x800, 0x10000u, 0x200000u, 0x4000000u};
  const unsigned char *p = (const unsigned char *)s, *end = p + len;
  while (p < end) {
    unsigned int c = p[0];
    uint32_t res = 0;
    int count = 0;
    if (c < 0x80) {
      res = c;
    } else {
      for (; c & 0x40; c <<= 1) {
        unsigned int cc = p[++count];
        if ((cc & 0xC0) != 0x80) return false;
        res = (res << 6) | (cc & 0x3F);
      }
      /* More than five continuation bytes is invalid (as in Lua), and
       * checked before the shift, which would pass 31 bits. */
      if (count > 5) return false;
      res |= ((uint32_t)(c & 0x7F) << (count * 5));
      if (res > 0x7FFFFFFFu || res < limits[count]) return false;
      p += count;
    }
    if (res > 0x10FFFFu || (res >= 0xD800u && res <= 0xDFFFu)) return false;
    p++;
  }
  return true;
}

/* C.send_text(conv, text): ctx:reply(text) without options, the usual
 * reply, with runtime.lua's check_text done here (its messages, in its
 * order: length, UTF-8, NUL) instead of a content table built in Lua and
 * read back field by field. runtime.lua calls it only once the state's
 * limits are checked. */
static int l_send_text(lua_State *L) {
  parley_runtime *r = lua_touserdata(L, lua_upvalueindex(1));
  const char *conv = luaL_checkstring(L, 1);
  size_t len;
  const char *text = luaL_checklstring(L, 2, &len);
  if (len > PLR_TEXT_MAX) return plr_vm_raise(L, "reply text is longer than %d bytes", PLR_TEXT_MAX);
  /* The handler is charged for the bytes checked, as the bounded utf8.len
   * that check_text calls charges them. */
  plr_vm_tick(L, (int64_t)(len / 64) + 1);
  if (!lua_utf8_valid(text, len)) return plr_vm_raise(L, "reply text is not valid UTF-8");
  /* The C side reads texts as C strings: a NUL would cut the text. */
  if (memchr(text, 0, len)) return plr_vm_raise(L, "reply text contains a NUL byte");
  plr_job *j = current_job(L, r, conv);
  parley_content ct;
  memset(&ct, 0, sizeof ct);
  ct.kind = PARLEY_CONTENT_TEXT;
  ct.text = text;
  uint8_t id[PARLEY_MSG_ID_LEN];
  job_msg_id(r, j, id);
  int rc = r->drv.send(r->drv.ud, conv, &ct, NULL, id, j->conv->epoch, j);
  return push_send_status(L, r, j, rc);
}

/* C.action(conv, kind, fields). */
static int l_action(lua_State *L) {
  parley_runtime *r = lua_touserdata(L, lua_upvalueindex(1));
  const char *conv = luaL_checkstring(L, 1);
  const char *kind = luaL_checkstring(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  plr_job *j = current_job(L, r, conv);
  parley_action a;
  memset(&a, 0, sizeof a);
  if (strcmp(kind, "handoff") == 0) a.kind = PARLEY_ACTION_HANDOFF;
  else if (strcmp(kind, "close") == 0) a.kind = PARLEY_ACTION_CLOSE;
  else if (strcmp(kind, "set_locale") == 0) a.kind = PARLEY_ACTION_SET_LOCALE;
  else return luaL_error(L, "unknown action '%s'", kind);
  a.queue = opt_field(L, 3, "queue");
  a.note = opt_field(L, 3, "note");
  a.locale = opt_field(L, 3, "locale");
  uint8_t id[PARLEY_MSG_ID_LEN];
  job_msg_id(r, j, id);
  int rc = r->drv.action(r->drv.ud, conv, &a, id, j->conv->epoch, j);
  /* After a close, the events already queued get no handler: replies would
   * be refused. A handoff keeps the conversation with the bot until an
   * agent takes it, so handlers go on running. */
  if (rc == 0 && a.kind == PARLEY_ACTION_CLOSE) j->conv->leaving = true;
  return push_send_status(L, r, j, rc);
}

static int l_idem(lua_State *L) {
  parley_runtime *r = lua_touserdata(L, lua_upvalueindex(1));
  const char *conv = luaL_checkstring(L, 1);
  uint64_t seq = (uint64_t)luaL_checkinteger(L, 2);
  bool timer = lua_toboolean(L, 3);
  uint8_t id[PARLEY_MSG_ID_LEN];
  uint32_t ord = PLR_IDEM_ORDINAL;
  if (timer && r->current) ord = PLR_TIMER_ORDINAL - 1 - (uint32_t)(r->current->timer_id % 0xFFFF);
  plr_rt_derive(r, conv, seq, ord, id);
  char hex[33];
  parley_msg_id_hex(id, hex);
  lua_pushstring(L, hex);
  return 1;
}

/* HTTP. ----------------------------------------------------------------- */

static void http_done(void *cb_ud, const plr_http_resp *resp) {
  plr_job *j = cb_ud;
  plr_conv *c = j->conv;
  parley_runtime *r = NULL;
  /* The job knows its conversation, the conversation not its runtime: the
   * runtime rides in the job's Lua state. */
  plr_vm *vm = plr_vm_of(j->co);
  r = vm->rt;
  j->waiting_http = false;
  j->http_handle = NULL;
  lua_State *co = j->co;
  plr_vm_uncapped(vm);
  if (!lua_checkstack(co, 8)) {
    plr_job_fail(r, j, "out of stack for the HTTP response");
    plr_job_maybe_complete(r, j);
    return;
  }
  if (resp->status == 0 && resp->error) {
    lua_pushnil(co);
    lua_pushstring(co, resp->error);
    plr_log(r, 1, c->id, j->seq, "http request failed: %s", resp->error);
    plr_job_resume(r, j, 2);
    return;
  }
  size_t max = plr_vm_limits(vm)->http_max_body;
  if (resp->body_len > max) {
    lua_pushnil(co);
    lua_pushfstring(co, "response body larger than %d bytes", (int)max);
    plr_job_resume(r, j, 2);
    return;
  }
  lua_createtable(co, 0, 3);
  lua_pushinteger(co, resp->status);
  lua_setfield(co, -2, "status");
  lua_pushlstring(co, resp->body ? resp->body : "", resp->body ? resp->body_len : 0);
  lua_setfield(co, -2, "body");
  lua_createtable(co, 0, (int)resp->n_headers);
  for (size_t i = 0; i < resp->n_headers; i++) {
    const char *h = resp->headers[i];
    const char *colon = strchr(h, ':');
    if (!colon) continue;
    luaL_Buffer b;
    luaL_buffinit(co, &b);
    for (const char *p = h; p < colon; p++) luaL_addchar(&b, (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p));
    luaL_pushresult(&b);
    const char *v = colon + 1;
    while (*v == ' ' || *v == '\t') v++;
    lua_pushstring(co, v);
    lua_settable(co, -3);
  }
  lua_setfield(co, -2, "headers");
  plr_job_resume(r, j, 1);
}

/* C.http(method, url, headers, body, timeout_ms): yields the handler's
 * coroutine until the response; returns resp or nil, err. */
static int l_http(lua_State *L) {
  parley_runtime *r = lua_touserdata(L, lua_upvalueindex(1));
  plr_job *j = r->current;
  if (!j || L != j->co)
    return plr_vm_raise(L, "http calls are only possible in a handler's own coroutine "
                         "(not while loading, not inside coroutines it created)");
  /* The handler's own coroutine, but perhaps inside a C call (a table.sort
   * comparator, a gsub callback, a metamethod): the yield would fail after
   * the request left and its response would later resume a finished job.
   * Refuse before anything is sent. */
  if (!lua_isyieldable(L))
    return plr_vm_raise(L, "http calls are not possible inside a C call (table.sort comparators, "
                         "string.gsub callbacks, metamethods)");
  plr_vm *vm = r->vm;
  plr_http_req req;
  memset(&req, 0, sizeof req);
  req.method = luaL_checkstring(L, 1);
  req.url = luaL_checkstring(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  const char *hdrs[PLR_HTTP_HEADERS_MAX];
  size_t nh = (size_t)lua_rawlen(L, 3);
  if (nh > PLR_HTTP_HEADERS_MAX) return plr_vm_raise(L, "at most %d request headers", PLR_HTTP_HEADERS_MAX);
  for (size_t i = 0; i < nh; i++) {
    lua_rawgeti(L, 3, (lua_Integer)i + 1);
    hdrs[i] = lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  req.headers = hdrs;
  req.n_headers = nh;
  req.body = lua_tolstring(L, 4, &req.body_len);
  lua_Integer t = luaL_optinteger(L, 5, 0);
  req.timeout_ms = t > 0 ? (uint32_t)t : plr_vm_limits(vm)->http_timeout_ms;
  req.allow_hosts = (const char *const *)vm->allow;
  req.n_allow_hosts = vm->n_allow;
  req.allow_private = vm->allow_private;
  req.max_response_bytes = plr_vm_limits(vm)->http_max_body;
  if (!r->drv.http) {
    lua_pushnil(L);
    lua_pushstring(L, "HTTP is not available");
    return 2;
  }
  j->waiting_http = true;
  int rc = r->drv.http(r->drv.ud, &req, http_done, j, &j->http_handle);
  if (rc) {
    j->waiting_http = false;
    lua_pushnil(L);
    lua_pushstring(L, parley_strerror(rc));
    return 2;
  }
  r->stats.http_requests++;
  return lua_yield(L, 0);
}

static int l_unavailable(lua_State *L) {
  return luaL_error(L, "not available while the bot is loading or being checked");
}

void plr_rt_bind(lua_State *L, parley_runtime *rt) {
  static const luaL_Reg fns[] = {{"send", l_send},       {"send_text", l_send_text},
                                 {"action", l_action},
                                 {"http", l_http},       {"sync_timers", plr_l_sync_timers},
                                 {"idem", l_idem},       {"open", plr_l_open},
                                 {NULL, NULL}};
  for (const luaL_Reg *f = fns; f->name; f++) {
    if (rt) {
      lua_pushlightuserdata(L, rt);
      lua_pushcclosure(L, f->func, 1);
    } else {
      lua_pushcfunction(L, l_unavailable);
    }
    lua_setfield(L, -2, f->name);
  }
}

