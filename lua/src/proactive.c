/* Replies by template from the sidecar API: the service next to the bot
 * names a template key, vars and optionally quick replies or a card, and
 * the runtime renders it in the conversation's locale and checks it with
 * the Lua reply's own code (runtime.lua: render_reply, normalize_content),
 * so a proactive message follows the same reply model and the same limits
 * as ctx:reply. The send itself is parley_runtime_send_proactive's: the
 * conversation's current epoch, its queue, the caller's message id. */
#include "proactive.h"
#include "rt_int.h"
#include "util/idhash.h"

#include <parley/error.h>

#include <lauxlib.h>
#include <sodium.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A string field of the table on top, or NULL (borrowed from the table). */
static const char *field(lua_State *L, const char *k) {
  lua_getfield(L, -1, k);
  const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  lua_pop(L, 1);
  return s;
}

/* Renders json as a reply in conversation's locale (runtime.lua's
 * render_reply), with the internal budget, as the commit bookkeeping does:
 * no bot code runs here. On 0 the normalized content is on top of the
 * stack; otherwise err says why and the stack is as before. */
static int render_reply(parley_runtime *r, const char *conversation, const char *json,
                        char *err, size_t errlen) {
  plr_vm *vm = r->vm;
  lua_State *L = plr_vm_state(vm);
  plr_vm_budget(vm, L, PLR_INTERNAL_BUDGET, false);
  plr_vm_uncapped(vm);
  plr_vm_rt_get(vm, "render_reply");
  lua_pushstring(L, conversation);
  lua_pushstring(L, json);
  return plr_vm_pcall(vm, 2, 1, err, errlen);
}

int plr_runtime_send_reply_json(parley_runtime *r, const char *conversation, const char *json,
                                const uint8_t msg_id[PARLEY_MSG_ID_LEN],
                                void (*done)(void *ud, int status, uint64_t seq, bool duplicate),
                                void *ud, char *err, size_t errlen) {
  if (!r || !conversation || !json || !msg_id) return PARLEY_EINVAL;
  if (r->stopping || r->freeing) return PARLEY_ESHUTDOWN;
  lua_State *L = plr_vm_state(r->vm);
  int top = lua_gettop(L);
  if (render_reply(r, conversation, json, err, errlen) != 0) {
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

/* Proactive conversations. ---------------------------------------------- *
 *
 * plr_runtime_open_json opens a new conversation with a customer and sends
 * a first message by template, in three steps that each keep Parley's
 * guarantees: the open (Action.open with an id derived from the key, so a
 * retry is the gateway's duplicate), the Assign that gives the new
 * conversation to this connection with its epoch and the customer's locale,
 * and the first message, rendered in that locale and sent as
 * plr_runtime_send_reply_json sends (an id derived from the key again).
 * The reply is checked before anything is opened, so a bad template key or
 * a limit never leaves an empty conversation behind. */

typedef struct plr_open plr_open;

static const char open_domain[] = "parley.open.v1";

/* BLAKE2b over length-prefixed fields under the domain string. */
static void hash_fields(const char *a, const char *b, const char *c, const char *d, uint8_t *out,
                        size_t outlen) {
  const char *const f[] = {open_domain, a, b, c, d};
  pu_hash_fields(f, 5, out, outlen);
}

void plr_open_ids(const char *principal, const char *customer, const char *key,
                  char conv[PLR_OPEN_CONV_LEN + 1], uint8_t open_id[PARLEY_MSG_ID_LEN],
                  uint8_t msg_id[PARLEY_MSG_ID_LEN]) {
  /* The bot principal is part of it: two bots using one key for one
   * customer open two conversations, not each other's. */
  uint8_t h[16];
  hash_fields("conversation", principal, customer, key, h, sizeof h);
  memcpy(conv, "px-", 3);
  sodium_bin2hex(conv + 3, 33, h, sizeof h);
  hash_fields("open", principal, conv, key, open_id, PARLEY_MSG_ID_LEN);
  hash_fields("first message", principal, conv, key, msg_id, PARLEY_MSG_ID_LEN);
}

struct plr_open {
  plr_job job; /* kind JOB_OPEN: the open's send_ud (first member) */
  plr_open *next;
  parley_runtime *r;
  char conv[PLR_OPEN_CONV_LEN + 1];
  char *reply_json;
  uint8_t open_id[PARLEY_MSG_ID_LEN], msg_id[PARLEY_MSG_ID_LEN];
  bool acked, open_dup, sending, finished;
  uv_timer_t timer; /* bounds the wait for the Assign */
  plr_open_done done;
  void *ud;
};

static void open_closed(uv_handle_t *h) {
  plr_open *o = h->data;
  free(o->reply_json);
  free(o);
}

static void open_unlink(plr_open *o) {
  for (plr_open **p = &o->r->opens; *p; p = &(*p)->next)
    if (*p == o) {
      *p = o->next;
      break;
    }
  o->next = NULL;
}

/* The caller hears the outcome once; the record goes with its timer. */
static void open_finish(plr_open *o, int status, uint64_t seq, const char *why) {
  if (o->finished) return;
  o->finished = true;
  open_unlink(o);
  parley_runtime *r = o->r;
  if (status)
    plr_log(r, 2, o->conv, 0, "proactive conversation failed: %s%s%s", parley_strerror(status),
            why && why[0] ? ": " : "", why ? why : "");
  else
    plr_log(r, 1, o->conv, seq, "proactive conversation opened%s",
            o->open_dup ? " (duplicate)" : "");
  if (o->done) o->done(o->ud, status, o->conv, seq, o->open_dup, why && why[0] ? why : NULL);
  uv_timer_stop(&o->timer);
  uv_close((uv_handle_t *)&o->timer, open_closed);
}

static void first_sent(void *ud, int status, uint64_t seq, bool duplicate) {
  (void)duplicate;
  open_finish(ud, status, seq, NULL);
}

/* Sends the first message once the open is stored and the conversation is
 * assigned here; until then it waits (for the Assign, under the timer). */
static void open_try_send(plr_open *o) {
  if (o->finished || !o->acked || o->sending) return;
  plr_conv *c = plr_conv_find(o->r, o->conv);
  if (!c || c->revoked || c->epoch == 0) return;
  o->sending = true;
  uv_timer_stop(&o->timer);
  char err[512] = "";
  int rc = plr_runtime_send_reply_json(o->r, o->conv, o->reply_json, o->msg_id, first_sent, o,
                                       err, sizeof err);
  if (rc) open_finish(o, rc, 0, err);
}

static void open_timeout(uv_timer_t *t) {
  plr_open *o = t->data;
  open_finish(o, PARLEY_ETIMEOUT, 0,
              o->open_dup ? "the conversation was opened before and is held by another "
                            "connection of this bot (or closed); its first message goes out "
                            "there"
                          : "the gateway stored the open but did not assign the conversation "
                            "to this connection in time");
}

void plr_open_on_result(parley_runtime *r, plr_job *j, const parley_send_result *res) {
  (void)r;
  plr_open *o = (plr_open *)j;
  if (o->finished) return;
  if (res->status) {
    open_finish(o, res->status, 0, res->message);
    return;
  }
  o->acked = true;
  o->open_dup = res->duplicate;
  uv_timer_start(&o->timer, open_timeout, PLR_OPEN_ASSIGN_MS, 0);
  open_try_send(o);
}

void plr_open_on_assign(parley_runtime *r, const char *conversation) {
  for (plr_open *o = r->opens, *n; o; o = n) {
    n = o->next;
    if (!strcmp(o->conv, conversation)) open_try_send(o);
  }
}

void plr_open_drop_all(parley_runtime *r) {
  while (r->opens) open_finish(r->opens, PARLEY_ESHUTDOWN, 0, "the runtime is stopping");
}

static bool valid_name(const char *s) {
  size_t n = s ? strlen(s) : 0;
  if (n == 0 || n > PARLEY_MAX_CONVERSATION_ID) return false;
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)s[i]) && !strchr("._:@-", s[i])) return false;
  return true;
}

/* checked: the reply was checked already (ctx:open_conversation does it in
 * the handler's own coroutine, where the runtime's state must not be
 * entered again). */
static int open_start(parley_runtime *r, const char *customer, const char *key, const char *json,
                      bool checked, plr_open_done done, void *ud,
                      char conv_out[PLR_OPEN_CONV_LEN + 1], uint8_t *msg_id_out, char *err,
                      size_t errlen) {
  if (err && errlen) err[0] = '\0';
  if (!r || !json) return PARLEY_EINVAL;
  if (!valid_name(customer)) {
    snprintf(err, errlen, "customer must be 1 to 128 bytes of [A-Za-z0-9._:@-]");
    return PARLEY_EINVAL;
  }
  size_t kl = key ? strlen(key) : 0;
  if (kl == 0 || kl > 255) {
    snprintf(err, errlen, "the idempotency key must be 1 to 255 bytes");
    return PARLEY_EINVAL;
  }
  if (r->stopping || r->freeing) return PARLEY_ESHUTDOWN;
  plr_open *o = calloc(1, sizeof *o);
  if (!o || !(o->reply_json = strdup(json))) {
    free(o);
    return PARLEY_ENOMEM;
  }
  plr_open_ids(r->principal, customer, key, o->conv, o->open_id, o->msg_id);
  if (conv_out) memcpy(conv_out, o->conv, sizeof o->conv);
  if (msg_id_out) memcpy(msg_id_out, o->msg_id, PARLEY_MSG_ID_LEN);
  /* The reply is checked now, in the bot's default locale (the customer's
   * is known once the gateway assigns the conversation), so that a wrong
   * key, a missing var or a limit is the caller's error at once. */
  int bad = 0;
  if (!checked) {
    lua_State *L = plr_vm_state(r->vm);
    int top = lua_gettop(L);
    bad = render_reply(r, o->conv, json, err, errlen);
    lua_settop(L, top);
    /* The caller is an HTTP client: the reason, not the runtime's stack. */
    char *tb = bad && err ? strstr(err, "\nstack traceback:") : NULL;
    if (tb) *tb = '\0';
  }
  if (bad) {
    free(o->reply_json);
    free(o);
    return PARLEY_EINVAL;
  }
  o->r = r;
  o->done = done;
  o->ud = ud;
  o->job.kind = JOB_OPEN;
  parley_action a = {.kind = PARLEY_ACTION_OPEN, .customer = customer};
  int rc = r->drv.action(r->drv.ud, o->conv, &a, o->open_id, 0, &o->job);
  if (rc) {
    snprintf(err, errlen, "the open could not be sent: %s", parley_strerror(rc));
    free(o->reply_json);
    free(o);
    return rc;
  }
  uv_timer_init(r->loop, &o->timer);
  o->timer.data = o;
  o->next = r->opens;
  r->opens = o;
  r->stats.sends++;
  return 0;
}

int plr_runtime_open_json(parley_runtime *r, const char *customer, const char *key, const char *json,
                          plr_open_done done, void *ud, char conv_out[PLR_OPEN_CONV_LEN + 1],
                          uint8_t msg_id_out[PARLEY_MSG_ID_LEN], char *err, size_t errlen) {
  return open_start(r, customer, key, json, false, done, ud, conv_out, msg_id_out, err, errlen);
}

/* The outcome of an open made by a handler: nobody waits for it, so the
 * log (open_finish) is where it shows. */
static void lua_open_done(void *ud, int status, const char *conversation, uint64_t seq,
                          bool duplicate, const char *why) {
  (void)ud, (void)status, (void)conversation, (void)seq, (void)duplicate, (void)why;
}

int plr_l_open(lua_State *L) {
  parley_runtime *r = lua_touserdata(L, lua_upvalueindex(1));
  const char *conv = luaL_checkstring(L, 1);
  const char *customer = luaL_checkstring(L, 2);
  const char *key = luaL_optstring(L, 3, NULL);
  const char *json = luaL_checkstring(L, 4);
  plr_job *j = r->current;
  if (!j || strcmp(j->conv->id, conv) != 0)
    return luaL_error(L, "open_conversation is only possible inside a handler of this ctx");
  if (j->ordinal >= PLR_REPLIES_MAX)
    return luaL_error(L, "a handler may send at most %d replies and actions", PLR_REPLIES_MAX);
  char hex[33];
  if (!key) {
    /* The same scheme as a reply's id (bindings.c), so the key is stable
     * across runs of the handler and differs between its sends. */
    uint8_t id[PARLEY_MSG_ID_LEN];
    if (j->kind == JOB_TIMER)
      plr_rt_derive(r, conv, 0,
                    PLR_TIMER_ORDINAL + (uint32_t)(j->timer_id % 0x3FFFFF) * 256u + j->ordinal,
                    id);
    else
      plr_rt_derive(r, conv, j->seq, j->ordinal, id);
    parley_msg_id_hex(id, hex);
    key = hex;
  }
  j->ordinal++;
  char out[PLR_OPEN_CONV_LEN + 1], err[512] = "";
  int rc = open_start(r, customer, key, json, true, lua_open_done, NULL, out, NULL, err,
                      sizeof err);
  if (rc) {
    lua_pushnil(L);
    lua_pushstring(L, err[0] ? err : parley_strerror(rc));
    return 2;
  }
  lua_pushstring(L, out);
  return 1;
}
