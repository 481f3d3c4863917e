/* Replies by template from the sidecar API: the service next to the bot
 * names a template key, vars and optionally quick replies or a card, and
 * the runtime renders it in the conversation's locale and checks it with
 * the Lua reply's own code (runtime.lua: render_reply, normalize_content),
 * so a proactive message follows the same reply model and the same limits
 * as ctx:reply. The send itself is parley_runtime_send_proactive's: the
 * conversation's current epoch, its queue, the caller's message id. */
#include "proactive.h"
#include "rt_int.h"

#include <parley/error.h>

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

/* A string field of the table on top, or NULL (borrowed from the table). */
static const char *field(lua_State *L, const char *k) {
  lua_getfield(L, -1, k);
  const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  lua_pop(L, 1);
  return s;
}

int plr_runtime_send_reply_json(parley_runtime *r, const char *conversation, const char *json,
                                const uint8_t msg_id[PARLEY_MSG_ID_LEN],
                                void (*done)(void *ud, int status, uint64_t seq, bool duplicate),
                                void *ud, char *err, size_t errlen) {
  if (!r || !conversation || !json || !msg_id) return PARLEY_EINVAL;
  if (r->stopping || r->freeing) return PARLEY_ESHUTDOWN;
  plr_vm *vm = r->vm;
  lua_State *L = plr_vm_state(vm);
  int top = lua_gettop(L);
  /* Rendering runs the runtime's Lua with the internal budget, as the
   * commit bookkeeping does: no bot code runs here. */
  plr_vm_budget(vm, L, PLR_INTERNAL_BUDGET, false);
  plr_vm_uncapped(vm);
  plr_vm_rt_get(vm, "render_reply");
  lua_pushstring(L, conversation);
  lua_pushstring(L, json);
  if (plr_vm_pcall(vm, 2, 1, err, errlen) != 0) {
    lua_settop(L, top);
    return PARLEY_EINVAL;
  }
  /* Stack: the normalized content {kind, text, title, image_url, fallback,
   * buttons = {{label, payload, url}...}}. Its strings stay on the stack
   * until the send has copied them. */
  parley_content c;
  memset(&c, 0, sizeof c);
  parley_button buttons[PLR_BUTTONS_MAX];
  const char *kind = field(L, "kind");
  if (!kind) kind = "text";
  c.kind = !strcmp(kind, "card")            ? PARLEY_CONTENT_CARD
           : !strcmp(kind, "quick_replies") ? PARLEY_CONTENT_QUICK_REPLIES
           : !strcmp(kind, "image")         ? PARLEY_CONTENT_IMAGE
                                            : PARLEY_CONTENT_TEXT;
  c.text = field(L, "text");
  c.title = field(L, "title");
  c.image_url = field(L, "image_url");
  c.fallback = field(L, "fallback");
  lua_getfield(L, -1, "buttons");
  if (lua_istable(L, -1)) {
    size_t n = (size_t)lua_rawlen(L, -1);
    if (n > PLR_BUTTONS_MAX) n = PLR_BUTTONS_MAX;
    for (size_t i = 0; i < n; i++) {
      lua_rawgeti(L, -1, (lua_Integer)i + 1);
      buttons[i].label = field(L, "label");
      buttons[i].payload = field(L, "payload");
      buttons[i].url = field(L, "url");
      lua_pop(L, 1);
    }
    c.buttons = buttons;
    c.n_buttons = n;
  }
  int rc = parley_runtime_send_proactive(r, conversation, &c, msg_id, done, ud);
  if (rc == PARLEY_ENOTFOUND)
    snprintf(err, errlen, "conversation %s is not assigned to this bot", conversation);
  lua_settop(L, top);
  return rc;
}
