/* The spec interpreter; see spec.h. What a spec means is decided here and
 * nowhere else: the keys it may use, what each step is, and whether an
 * expectation holds. The runners (spec_local.c in process, cli/spec/ over
 * the gateway) only make steps happen and report what they caused. */
#include "spec.h"

#include <lauxlib.h>
#include <lua-cjson.h>
#include <lua.h>

#include <parley/error.h>

#include <regex.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ the keys */

static const char *const CASE_KEYS[] = {"name", "locale", "http", "steps", NULL};
static const char *const STEP_KEYS[] = {"send",  "postback", "label",  "open",          "wait",
                                        "event", "agent",    "expect", "handler_fails", NULL};
static const char *const STEP_ACTIONS[] = {"send",  "postback", "open", "wait",
                                           "event", "agent",    NULL};
static const char *const EVENT_KEYS[] = {"kind", "assignee", "queue", "note", "locale", NULL};
static const char *const AGENT_KEYS[] = {"text", "as", "quote", "tags", NULL};
static const char *const OPEN_KEYS[] = {"text", NULL};
static const char *const STUB_KEYS[] = {"request", "status", "body", "error", NULL};
static const char *const EXPECT_KEYS[] = {
    "reply", "reply_contains", "reply_matches", "no_reply", "replies", "reply_count",
    "card",  "quick_replies",  "quote",         "handoff",  "close",   "state",
    "tags",  "untags",         "timer",         "no_timer", NULL};
static const char *const CARD_KEYS[] = {"title", "text", "buttons", NULL};
static const char *const QR_KEYS[] = {"text", "options", NULL};
static const char *const QUOTE_KEYS[] = {"text", NULL};
static const char *const HANDOFF_KEYS[] = {"queue", "note", NULL};
static const char *const CLOSE_KEYS[] = {"reason", NULL};
/* An item of `replies:` is a string (the exact text) or one of these. */
static const char *const REPLY_ITEM_KEYS[] = {"reply", "reply_contains", "reply_matches", "card",
                                              "quick_replies", "quote", NULL};

static const char *const EVENT_NAMES[] = {"",         "message",       "opened",
                                          "assigned", "handed_off",    "handed_back",
                                          "closed",   "tagged",        "state_changed",
                                          "locale_changed"};

static parley_event_kind event_kind(const char *k) {
  for (int i = 1; k && i < 10; i++)
    if (strcmp(EVENT_NAMES[i], k) == 0) return (parley_event_kind)i;
  return PARLEY_EVENT_UNSPECIFIED;
}

static int keys(const pc_node *map, const char *const *allowed, char *err, size_t errlen) {
  pc_error pe;
  memset(&pe, 0, sizeof pe);
  if (pc_check_keys(map, allowed, &pe) == 0) return 0;
  char buf[768];
  snprintf(err, errlen, "%s", pc_error_format(&pe, buf, sizeof buf));
  return PARLEY_ECONFIG;
}

int plr_spec_duration_ms(const char *s, uint64_t *ms) {
  if (!s || !*s) return PARLEY_EINVAL;
  /* A bare number is seconds, as specs always had it. */
  char *end = NULL;
  double secs = strtod(s, &end);
  if (end && !*end) {
    if (!(secs >= 0) || secs > 366.0 * 86400) return PARLEY_EINVAL;
    *ms = (uint64_t)(secs * 1000 + 0.5);
    return 0;
  }
  /* Otherwise the config's durations ("500ms", "90s", "5m", "1h"), read by
   * the config's own reader so that both accept the same. */
  char yaml[160];
  if (strlen(s) > 64 || strpbrk(s, "\n:#{}[],&*!|>'\"%@`")) return PARLEY_EINVAL;
  snprintf(yaml, sizeof yaml, "d: %s\n", s);
  pc_doc *doc = NULL;
  pc_error pe;
  int rc = pc_load_string("duration", yaml, strlen(yaml), &doc, &pe);
  if (rc == 0) rc = pc_get_ms(pc_root(doc), "d", 0, ms, &pe);
  pc_doc_free(doc);
  return rc ? PARLEY_EINVAL : 0;
}

static int validate_expect(const pc_node *ex, char *err, size_t errlen) {
  if (!ex || pc_node_kind(ex) == PC_NULL) return 0;
  if (pc_node_kind(ex) != PC_SEQ)
    return pc_fail_text(err, errlen, ex, NULL, "expect: is a list of expectations (- reply: ...)");
  for (size_t i = 0; i < pc_len(ex); i++) {
    const pc_node *e = pc_at(ex, i);
    if (pc_node_kind(e) != PC_MAP)
      return pc_fail_text(err, errlen, e, NULL,
                          "an expectation is a mapping such as `reply: \"text\"`");
    if (keys(e, EXPECT_KEYS, err, errlen)) return PARLEY_ECONFIG;
    for (size_t k = 0; k < pc_len(e); k++) {
      const char *key = pc_key_at(e, k);
      const pc_node *v = pc_at(e, k);
      const char *const *sub = !strcmp(key, "card")            ? CARD_KEYS
                               : !strcmp(key, "quick_replies") ? QR_KEYS
                               : !strcmp(key, "quote")         ? QUOTE_KEYS
                               : !strcmp(key, "handoff")       ? HANDOFF_KEYS
                               : !strcmp(key, "close")         ? CLOSE_KEYS
                                                               : NULL;
      if (sub && pc_node_kind(v) == PC_MAP && keys(v, sub, err, errlen)) return PARLEY_ECONFIG;
      if (!strcmp(key, "reply_count")) {
        const char *s = pc_scalar(v);
        char *end = NULL;
        if (!s || strtol(s, &end, 10) < 0 || *end)
          return pc_fail_text(err, errlen, v, NULL, "reply_count: a number of replies");
      }
      if (!strcmp(key, "replies")) {
        if (pc_node_kind(v) != PC_SEQ)
          return pc_fail_text(err, errlen, v, NULL, "replies: a list of the replies, in order");
        for (size_t j = 0; j < pc_len(v); j++) {
          const pc_node *r = pc_at(v, j);
          if (pc_node_kind(r) == PC_MAP && keys(r, REPLY_ITEM_KEYS, err, errlen))
            return PARLEY_ECONFIG;
          if (pc_node_kind(r) != PC_MAP && pc_node_kind(r) != PC_SCALAR)
            return pc_fail_text(err, errlen, r, NULL,
                                "a reply is a text or a mapping such as `card: {...}`");
        }
      }
      if (!strcmp(key, "reply_matches")) {
        regex_t re;
        if (!pc_scalar(v) || regcomp(&re, pc_scalar(v), REG_EXTENDED | REG_NOSUB) != 0)
          return pc_fail_text(err, errlen, v, NULL, "not a valid regular expression");
        regfree(&re);
      }
    }
  }
  return 0;
}

static int validate_step(const pc_node *st, char *err, size_t errlen) {
  if (pc_node_kind(st) != PC_MAP)
    return pc_fail_text(err, errlen, st, NULL, "a step is a mapping such as `send: \"hello\"`");
  if (keys(st, STEP_KEYS, err, errlen)) return PARLEY_ECONFIG;
  int actions = 0;
  for (int i = 0; STEP_ACTIONS[i]; i++) actions += pc_get(st, STEP_ACTIONS[i]) != NULL;
  if (actions != 1)
    return pc_fail_text(err, errlen, st, NULL,
                        "a step has exactly one of send, postback, open, wait, event, agent");
  const pc_node *n;
  if ((n = pc_get(st, "event"))) {
    if (keys(n, EVENT_KEYS, err, errlen)) return PARLEY_ECONFIG;
    const char *k = pc_scalar(pc_get(n, "kind"));
    if (event_kind(k) == PARLEY_EVENT_UNSPECIFIED)
      return pc_fail_text(err, errlen, pc_get(n, "kind") ? pc_get(n, "kind") : n, NULL,
                    "unknown event kind '%s' (one of assigned, handed_off, handed_back, "
                    "closed, tagged, locale_changed, ...)",
                    k ? k : "");
  }
  if ((n = pc_get(st, "agent"))) {
    if (pc_node_kind(n) == PC_MAP) {
      if (keys(n, AGENT_KEYS, err, errlen)) return PARLEY_ECONFIG;
      if (!pc_scalar(pc_get(n, "text")))
        return pc_fail_text(err, errlen, n, NULL, "agent: needs the text the agent writes");
      const pc_node *t = pc_get(n, "tags");
      if (t && pc_node_kind(t) != PC_SEQ)
        return pc_fail_text(err, errlen, t, NULL, "tags: a list of tags");
    } else if (!pc_scalar(n)) {
      return pc_fail_text(err, errlen, n, NULL,
                          "agent: the text the agent writes, or {text, as, quote, tags}");
    }
  }
  if ((n = pc_get(st, "open")) && pc_node_kind(n) == PC_MAP && keys(n, OPEN_KEYS, err, errlen))
    return PARLEY_ECONFIG;
  if ((n = pc_get(st, "wait"))) {
    uint64_t ms;
    if (plr_spec_duration_ms(pc_scalar(n), &ms))
      return pc_fail_text(err, errlen, n, NULL,
                          "a duration such as 121 (seconds), 90s, 5m or 500ms");
  }
  if ((n = pc_get(st, "send")) && !pc_scalar(n))
    return pc_fail_text(err, errlen, n, NULL, "send: needs the text the customer sends");
  if ((n = pc_get(st, "postback")) && !pc_scalar(n))
    return pc_fail_text(err, errlen, n, NULL, "postback: needs the button's payload");
  if ((n = pc_get(st, "handler_fails"))) {
    const char *b = pc_scalar(n);
    if (!b || (strcmp(b, "true") && strcmp(b, "false")))
      return pc_fail_text(err, errlen, n, NULL, "handler_fails: true or false");
  }
  return validate_expect(pc_get(st, "expect"), err, errlen);
}

int plr_spec_validate(const pc_node *root, char *err, size_t errlen) {
  if (pc_node_kind(root) != PC_SEQ)
    return pc_fail_text(err, errlen, root, NULL, "a spec file is a list of cases");
  for (size_t c = 0; c < pc_len(root); c++) {
    const pc_node *cs = pc_at(root, c);
    if (pc_node_kind(cs) != PC_MAP)
      return pc_fail_text(err, errlen, cs, NULL,
                          "a case is a mapping with name, locale, http and steps");
    if (keys(cs, CASE_KEYS, err, errlen)) return PARLEY_ECONFIG;
    const pc_node *stubs = pc_get(cs, "http");
    for (size_t i = 0; i < pc_len(stubs); i++) {
      const pc_node *s = pc_at(stubs, i);
      if (keys(s, STUB_KEYS, err, errlen)) return PARLEY_ECONFIG;
      if (!pc_scalar(pc_get(s, "request")))
        return pc_fail_text(err, errlen, s, NULL, "an http stub needs request: \"METHOD URL\"");
    }
    const pc_node *steps = pc_get(cs, "steps");
    if (pc_node_kind(steps) != PC_SEQ)
      return pc_fail_text(err, errlen, steps ? steps : cs, NULL, "a case needs a list of steps");
    for (size_t i = 0; i < pc_len(steps); i++)
      if (validate_step(pc_at(steps, i), err, errlen)) return PARLEY_ECONFIG;
  }
  return 0;
}

/* ------------------------------------------------------------ the steps */

bool plr_spec_step_parse(const pc_node *st, plr_spec_step *o, char *why, size_t whylen) {
  memset(o, 0, sizeof *o);
  o->line = pc_node_line(st);
  o->expect = pc_get(st, "expect");
  pc_get_bool(st, "handler_fails", false, &o->handler_fails, &(pc_error){0});
  const pc_node *n;
  if ((n = pc_get(st, "send"))) {
    o->kind = PLR_STEP_SEND;
    o->text = pc_scalar(n);
    if (!o->text) return snprintf(why, whylen, "send: needs a string"), false;
  } else if ((n = pc_get(st, "postback"))) {
    o->kind = PLR_STEP_POSTBACK;
    o->payload = pc_scalar(n);
    o->label = pc_scalar(pc_get(st, "label"));
    if (!o->payload) return snprintf(why, whylen, "postback: needs a payload"), false;
    if (!o->label) o->label = o->payload;
  } else if ((n = pc_get(st, "open"))) {
    o->kind = PLR_STEP_OPEN;
    o->text = pc_scalar(pc_get(n, "text"));
    if (!o->text) o->text = "hi";
  } else if ((n = pc_get(st, "wait"))) {
    o->kind = PLR_STEP_WAIT;
    if (plr_spec_duration_ms(pc_scalar(n), &o->wait_ms))
      return snprintf(why, whylen, "wait: a duration such as 121 (seconds), 90s, 5m or 500ms"),
             false;
  } else if ((n = pc_get(st, "event"))) {
    o->kind = PLR_STEP_EVENT;
    o->event_name = pc_scalar(pc_get(n, "kind"));
    o->event = event_kind(o->event_name);
    o->assignee = pc_scalar(pc_get(n, "assignee"));
    o->queue = pc_scalar(pc_get(n, "queue"));
    o->note = pc_scalar(pc_get(n, "note"));
    o->locale = pc_scalar(pc_get(n, "locale"));
    if (o->event == PARLEY_EVENT_UNSPECIFIED)
      return snprintf(why, whylen, "unknown event kind '%s'", o->event_name ? o->event_name : ""),
             false;
  } else if ((n = pc_get(st, "agent"))) {
    o->kind = PLR_STEP_AGENT;
    if (pc_node_kind(n) == PC_MAP) {
      o->text = pc_scalar(pc_get(n, "text"));
      o->agent = pc_scalar(pc_get(n, "as"));
      o->quote = pc_scalar(pc_get(n, "quote"));
      o->tags = pc_get(n, "tags");
    } else {
      o->text = pc_scalar(n);
    }
    if (!o->text) return snprintf(why, whylen, "agent: needs a text"), false;
  } else {
    return snprintf(why, whylen, "a step needs send, postback, open, wait, event or agent"), false;
  }
  return true;
}

const plr_spec_item *plr_spec_find_quote(const plr_spec_item *const *items, size_t n,
                                         const char *quote) {
  if (!quote) return NULL;
  for (size_t i = n; i-- > 0;)
    if (items[i]->kind == PARLEY_EVENT_MESSAGE && !strcmp(items[i]->text, quote)) return items[i];
  for (size_t i = n; i-- > 0;)
    if (items[i]->kind == PARLEY_EVENT_MESSAGE && strstr(items[i]->text, quote)) return items[i];
  return NULL;
}

/* ------------------------------------------------------------ reporting */

void plr_spec_flow(const pc_node *n, char *out, size_t size) {
  size_t len = strlen(out);
  if (len + 1 >= size) return;
  switch (pc_node_kind(n)) {
  case PC_SCALAR:
    if (pc_scalar_quoted(n)) snprintf(out + len, size - len, "\"%s\"", pc_scalar(n));
    else snprintf(out + len, size - len, "%s", pc_scalar(n));
    break;
  case PC_SEQ:
    snprintf(out + len, size - len, "[");
    for (size_t i = 0; i < pc_len(n); i++) {
      if (i) strncat(out, ", ", size - strlen(out) - 1);
      plr_spec_flow(pc_at(n, i), out, size);
    }
    strncat(out, "]", size - strlen(out) - 1);
    break;
  case PC_MAP:
    snprintf(out + len, size - len, "{");
    for (size_t i = 0; i < pc_len(n); i++) {
      len = strlen(out);
      snprintf(out + len, size - len, "%s%s: ", i ? ", " : "", pc_key_at(n, i));
      plr_spec_flow(pc_at(n, i), out, size);
    }
    strncat(out, "}", size - strlen(out) - 1);
    break;
  default: strncat(out, "null", size - strlen(out) - 1); break;
  }
}

/* ------------------------------------------------------ structural values */

/* Compares the Lua value at idx (decoded by cjson) with want. path names
 * the place for the message ("state.booking.step"). */
static bool value_match(lua_State *L, int idx, const pc_node *want, char *path, size_t pathsz,
                        char *why, size_t whylen);

static void show_actual(lua_State *L, int idx, char *out, size_t size) {
  idx = lua_absindex(L, idx);
  if (lua_isnil(L, idx)) {
    snprintf(out, size, "absent");
    return;
  }
  /* cjson.encode is upvalue 1 of nothing here: it sits in the registry. */
  lua_getfield(L, LUA_REGISTRYINDEX, "plr_spec_encode");
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_isstring(L, -1))
    snprintf(out, size, "%s", lua_tostring(L, -1));
  else
    snprintf(out, size, "(a %s)", luaL_typename(L, idx));
  lua_pop(L, 1);
}

static bool mismatch(lua_State *L, int idx, const pc_node *want, const char *path, char *why,
                     size_t whylen) {
  char have[400], exp[400] = "";
  show_actual(L, idx, have, sizeof have);
  plr_spec_flow(want, exp, sizeof exp);
  snprintf(why, whylen, "%s is %s, expected %s", path, have, exp);
  return false;
}

static bool is_json_null(lua_State *L, int idx) {
  return lua_isnil(L, idx) || (lua_islightuserdata(L, idx) && lua_touserdata(L, idx) == NULL);
}

static bool value_match(lua_State *L, int idx, const pc_node *want, char *path, size_t pathsz,
                        char *why, size_t whylen) {
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 8, "expectation nested too deeply");
  switch (pc_node_kind(want)) {
  case PC_NULL:
    return is_json_null(L, idx) ? true : mismatch(L, idx, want, path, why, whylen);
  case PC_SCALAR: {
    const char *s = pc_scalar(want);
    if (lua_type(L, idx) == LUA_TSTRING) {
      if (!strcmp(lua_tostring(L, idx), s)) return true;
      return mismatch(L, idx, want, path, why, whylen);
    }
    if (pc_scalar_quoted(want)) return mismatch(L, idx, want, path, why, whylen);
    if (lua_type(L, idx) == LUA_TNUMBER) {
      char *end = NULL;
      double w = strtod(s, &end);
      if (*s && end && !*end && w == lua_tonumber(L, idx)) return true;
      return mismatch(L, idx, want, path, why, whylen);
    }
    if (lua_type(L, idx) == LUA_TBOOLEAN) {
      bool b = lua_toboolean(L, idx);
      if ((b && !strcmp(s, "true")) || (!b && !strcmp(s, "false"))) return true;
      return mismatch(L, idx, want, path, why, whylen);
    }
    if (!strcmp(s, "null") && is_json_null(L, idx)) return true;
    return mismatch(L, idx, want, path, why, whylen);
  }
  case PC_MAP: {
    if (lua_type(L, idx) != LUA_TTABLE) return mismatch(L, idx, want, path, why, whylen);
    size_t base = strlen(path);
    for (size_t i = 0; i < pc_len(want); i++) {
      const char *k = pc_key_at(want, i);
      snprintf(path + base, pathsz - base, ".%s", k);
      lua_getfield(L, idx, k);
      bool ok = value_match(L, -1, pc_at(want, i), path, pathsz, why, whylen);
      lua_pop(L, 1);
      if (!ok) return false;
      path[base] = '\0';
    }
    return true;
  }
  case PC_SEQ: {
    if (lua_type(L, idx) != LUA_TTABLE || lua_rawlen(L, idx) != pc_len(want))
      return mismatch(L, idx, want, path, why, whylen);
    size_t base = strlen(path);
    for (size_t i = 0; i < pc_len(want); i++) {
      snprintf(path + base, pathsz - base, "[%zu]", i);
      lua_rawgeti(L, idx, (lua_Integer)i + 1);
      bool ok = value_match(L, -1, pc_at(want, i), path, pathsz, why, whylen);
      lua_pop(L, 1);
      if (!ok) return false;
      path[base] = '\0';
    }
    return true;
  }
  }
  return false;
}

/* Decodes json with lua-cjson (the runtime's own JSON library) and compares. */
static bool json_match(const char *json, const pc_node *want, const char *name, char *why,
                       size_t whylen) {
  lua_State *L = luaL_newstate();
  if (!L) return snprintf(why, whylen, "out of memory"), false;
  luaopen_cjson(L);
  lua_getfield(L, -1, "encode");
  lua_setfield(L, LUA_REGISTRYINDEX, "plr_spec_encode");
  bool ok;
  char path[512];
  snprintf(path, sizeof path, "%s", name);
  if (!json) {
    lua_pushnil(L);
  } else {
    lua_getfield(L, -1, "decode");
    lua_pushstring(L, json);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
      snprintf(why, whylen, "%s is not valid JSON: %.200s", name, json);
      lua_close(L);
      return false;
    }
  }
  ok = value_match(L, -1, want, path, sizeof path, why, whylen);
  lua_close(L);
  return ok;
}

bool plr_spec_value_matches(const char *json, const pc_node *want, char *why, size_t whylen) {
  return json_match(json, want, "value", why, whylen);
}

/* ------------------------------------------------------------ the checks */

static bool is_reply(const plr_spec_item *it) {
  return it->from_bot && it->kind == PARLEY_EVENT_MESSAGE;
}

static bool labels_eq(const char *labels, const pc_node *want) {
  char buf[2048] = "";
  for (size_t i = 0; i < pc_len(want); i++) {
    if (i) strncat(buf, "\n", sizeof buf - strlen(buf) - 1);
    const char *l = pc_scalar(pc_at(want, i));
    strncat(buf, l ? l : "", sizeof buf - strlen(buf) - 1);
  }
  return !strcmp(labels, buf);
}

static bool has(const char *const *set, size_t n, const char *t) {
  for (size_t i = 0; i < n; i++)
    if (!strcmp(set[i], t)) return true;
  return false;
}

static const char *state_of(const plr_spec_view *v, const char *k) {
  for (size_t i = 0; i < v->n_state; i++)
    if (!strcmp(v->state_keys[i], k)) return v->state_vals[i];
  return NULL;
}

/* Does one item satisfy a message expectation (key: v)? */
static bool item_matches(const plr_spec_item *it, const char *key, const pc_node *v) {
  const char *s = pc_scalar(v);
  if (!strcmp(key, "reply")) return is_reply(it) && s && !strcmp(it->text, s);
  if (!strcmp(key, "reply_contains")) return is_reply(it) && s && strstr(it->text, s);
  if (!strcmp(key, "reply_matches")) {
    regex_t re;
    if (!is_reply(it) || !s || regcomp(&re, s, REG_EXTENDED | REG_NOSUB) != 0) return false;
    bool ok = regexec(&re, it->text, 0, NULL, 0) == 0;
    regfree(&re);
    return ok;
  }
  if (!strcmp(key, "card") || !strcmp(key, "quick_replies")) {
    bool card = key[0] == 'c';
    if (!is_reply(it) || it->ctype != (card ? PARLEY_CONTENT_CARD : PARLEY_CONTENT_QUICK_REPLIES))
      return false;
    const char *t = pc_scalar(pc_get(v, "title")), *x = pc_scalar(pc_get(v, "text"));
    const pc_node *b = pc_get(v, card ? "buttons" : "options");
    return (!t || !strcmp(t, it->title)) && (!x || !strcmp(x, it->text)) &&
           (!b || labels_eq(it->labels, b));
  }
  if (!strcmp(key, "quote")) {
    const char *x = pc_scalar(pc_get(v, "text"));
    return is_reply(it) && it->quote_seq && (!x || !strcmp(x, it->quote_excerpt));
  }
  if (!strcmp(key, "handoff") || !strcmp(key, "close")) {
    bool h = key[0] == 'h';
    if (it->kind != (h ? PARLEY_EVENT_HANDED_OFF : PARLEY_EVENT_CLOSED)) return false;
    const char *q = pc_scalar(pc_get(v, "queue"));
    const char *n = pc_scalar(pc_get(v, h ? "note" : "reason"));
    return (!q || !strcmp(q, it->queue)) && (!n || !strcmp(n, it->note));
  }
  return false;
}

/* What the bot sent in the step, for a failure message. */
static void describe(const plr_spec_view *v, char *buf, size_t size) {
  size_t used = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < v->n_items && used + 1 < size; i++) {
    const plr_spec_item *it = v->items[i];
    if (!it->from_bot) continue;
    int n = snprintf(buf + used, size - used, "%s%s\"%s\"", used ? ", " : "",
                     it->kind == PARLEY_EVENT_HANDED_OFF ? "handoff "
                     : it->kind == PARLEY_EVENT_CLOSED   ? "close "
                     : it->ctype == PARLEY_CONTENT_CARD  ? "card "
                     : it->ctype == PARLEY_CONTENT_QUICK_REPLIES ? "quick_replies "
                                                                 : "",
                     it->kind == PARLEY_EVENT_HANDED_OFF ? it->queue
                     : it->ctype == PARLEY_CONTENT_CARD  ? it->title
                                                         : it->text);
    if (n > 0) used += (size_t)n;
  }
  if (!used) snprintf(buf, size, "nothing");
}

static bool check_one(const plr_spec_view *v, const char *key, const pc_node *val, char *why,
                      size_t whylen) {
  const char *s = pc_scalar(val);
  char got[700];
  describe(v, got, sizeof got);
  if (!strcmp(key, "reply") || !strcmp(key, "reply_contains") || !strcmp(key, "reply_matches") ||
      !strcmp(key, "card") || !strcmp(key, "quick_replies") || !strcmp(key, "quote") ||
      !strcmp(key, "handoff") || !strcmp(key, "close")) {
    for (size_t i = 0; i < v->n_items; i++)
      if (item_matches(v->items[i], key, val)) return true;
    char f[600] = "";
    plr_spec_flow(val, f, sizeof f);
    const char *what = !strcmp(key, "reply")            ? "no reply equal to"
                       : !strcmp(key, "reply_contains") ? "no reply containing"
                       : !strcmp(key, "reply_matches")  ? "no reply matching"
                                                        : NULL;
    if (what) snprintf(why, whylen, "%s %s; the bot sent %s", what, f, got);
    else snprintf(why, whylen, "no %s like %s; the bot sent %s", key, f, got);
    return false;
  }
  if (!strcmp(key, "no_reply")) {
    for (size_t i = 0; i < v->n_items; i++)
      if (is_reply(v->items[i]))
        return snprintf(why, whylen, "expected no reply; the bot sent %s", got), false;
    return true;
  }
  if (!strcmp(key, "reply_count") || !strcmp(key, "replies")) {
    const plr_spec_item *replies[256];
    size_t n = 0;
    for (size_t i = 0; i < v->n_items && n < 256; i++)
      if (is_reply(v->items[i])) replies[n++] = v->items[i];
    size_t want = !strcmp(key, "replies") ? pc_len(val) : (size_t)strtoul(s ? s : "0", NULL, 10);
    if (n != want)
      return snprintf(why, whylen, "expected %zu repl%s, the bot sent %zu: %s", want,
                      want == 1 ? "y" : "ies", n, got),
             false;
    if (!strcmp(key, "reply_count")) return true;
    for (size_t i = 0; i < n; i++) {
      const pc_node *r = pc_at(val, i);
      bool ok;
      if (pc_node_kind(r) == PC_SCALAR) {
        ok = !strcmp(replies[i]->text, pc_scalar(r));
      } else {
        ok = true;
        for (size_t k = 0; k < pc_len(r) && ok; k++)
          ok = item_matches(replies[i], pc_key_at(r, k), pc_at(r, k));
      }
      if (!ok) {
        char f[400] = "";
        plr_spec_flow(r, f, sizeof f);
        return snprintf(why, whylen, "reply %zu of %zu is \"%s\", expected %s (in order: %s)",
                        i + 1, n, replies[i]->text, f, got),
               false;
      }
    }
    return true;
  }
  if (!strcmp(key, "state")) {
    if (pc_node_kind(val) != PC_MAP)
      return snprintf(why, whylen, "state: a mapping of keys to values"), false;
    for (size_t i = 0; i < pc_len(val); i++) {
      const char *k = pc_key_at(val, i);
      char name[200];
      snprintf(name, sizeof name, "state.%s", k);
      if (!json_match(state_of(v, k), pc_at(val, i), name, why, whylen)) return false;
    }
    return true;
  }
  if (!strcmp(key, "tags") || !strcmp(key, "untags")) {
    bool add = key[0] == 't';
    for (size_t i = 0; i < pc_len(val); i++) {
      const char *t = pc_scalar(pc_at(val, i));
      if (!t) continue;
      bool now = has(v->tags, v->n_tags, t), before = has(v->tags_before, v->n_tags_before, t);
      if (add && !now) return snprintf(why, whylen, "the conversation lacks tag %s", t), false;
      if (!add && (now || !before))
        return snprintf(why, whylen, "tag %s was not removed in this step", t), false;
    }
    return true;
  }
  if (!strcmp(key, "timer") || !strcmp(key, "no_timer")) {
    const char *tm = state_of(v, "_timers");
    char pat[200];
    snprintf(pat, sizeof pat, "\"name\":\"%s\"", s ? s : "");
    bool pending = tm && strstr(tm, pat);
    if (key[0] == 't' && !pending) return snprintf(why, whylen, "no timer %s is pending", s), false;
    if (key[0] == 'n' && pending) return snprintf(why, whylen, "timer %s is pending", s), false;
    return true;
  }
  snprintf(why, whylen, "unknown expectation '%s' (line %d)", key, pc_node_line(val));
  return false;
}

static bool on_commit(const char *key) {
  return !strcmp(key, "state") || !strcmp(key, "tags") || !strcmp(key, "untags") ||
         !strcmp(key, "timer") || !strcmp(key, "no_timer");
}

bool plr_spec_check(const pc_node *expect, const plr_spec_view *v, char *why, size_t whylen) {
  for (size_t k = 0; k < pc_len(expect); k++) {
    const pc_node *e = pc_at(expect, k);
    for (size_t j = 0; j < pc_len(e); j++) {
      if (v->commit_unknown && on_commit(pc_key_at(e, j))) continue;
      if (!check_one(v, pc_key_at(e, j), pc_at(e, j), why, whylen)) return false;
    }
  }
  return true;
}
