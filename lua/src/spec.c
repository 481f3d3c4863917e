/* The spec runner; see spec.h. Each case gets a fresh runtime on a private
 * loop and a recording driver: sends and commits are stored and answered
 * as stored, HTTP requests are answered from the case's `http:` stubs, and
 * the clock only moves with `wait:` steps. */
#include "spec.h"

#include "rt.h"

#include "config/config.h"

#include <dirent.h>
#include <regex.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define SP_SENDS_MAX 512
#define SP_HTTP_MAX 32
#define SP_KV_MAX 128
#define SP_STEPS_MAX 200
#define SP_CONV "spec-conversation"

typedef struct sp_send {
  int kind; /* parley_content_kind, or 100 + parley_action_kind */
  char *text, *title, *fallback, *labels; /* labels: "\n"-joined */
  char *excerpt, *queue, *note;
  uint64_t quote_seq;
  void *send_ud;
  bool answered;
} sp_send;

typedef struct sp_http {
  char *method, *url;
  plr_http_done done;
  void *cb_ud;
  bool finished;
} sp_http;

typedef struct sp_run {
  uv_loop_t loop;
  plr_runtime *r;
  int64_t now;
  sp_send sends[SP_SENDS_MAX];
  size_t nsends;
  size_t commits_unanswered;
  char *keys[SP_KV_MAX], *vals[SP_KV_MAX]; /* the state as committed */
  size_t nkv;
  char *tags[SP_KV_MAX];
  size_t ntags;
  char *removed[SP_KV_MAX]; /* tags removed since the step began */
  size_t nremoved;
  sp_http http[SP_HTTP_MAX];
  size_t nhttp;
  const pc_node *stubs;
  uint64_t epoch, acked;
  bool handoff_sent, queued, revoked;
  char why[1024]; /* first failure of the case */
  uint64_t failures_seen;
  char *logbuf;
  size_t loglen;
  FILE *log;
} sp_run;

static char *dup0(const char *s) { return strdup(s ? s : ""); }

static void fail(sp_run *s, const char *fmt, ...) {
  if (s->why[0]) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->why, sizeof s->why, fmt, ap);
  va_end(ap);
}

/* The recording driver. -------------------------------------------------- */

static int d_send(void *ud, const char *conv, const parley_content *c, const parley_quote *q,
                  const uint8_t id[PARLEY_MSG_ID_LEN], uint64_t epoch, void *send_ud) {
  (void)conv, (void)id, (void)epoch;
  sp_run *s = ud;
  if (s->nsends >= SP_SENDS_MAX) return PARLEY_EBACKPRESSURE;
  sp_send *x = &s->sends[s->nsends++];
  memset(x, 0, sizeof *x);
  x->kind = (int)c->kind;
  x->text = dup0(c->text);
  x->title = dup0(c->title);
  x->fallback = dup0(c->fallback);
  size_t len = 1;
  for (size_t i = 0; i < c->n_buttons; i++) len += strlen(c->buttons[i].label ? c->buttons[i].label : "") + 1;
  x->labels = calloc(1, len);
  for (size_t i = 0; x->labels && i < c->n_buttons; i++) {
    if (i) strcat(x->labels, "\n");
    strcat(x->labels, c->buttons[i].label ? c->buttons[i].label : "");
  }
  x->excerpt = dup0(q ? q->excerpt : NULL);
  x->quote_seq = q ? q->seq : 0;
  x->queue = dup0(NULL);
  x->note = dup0(NULL);
  x->send_ud = send_ud;
  return 0;
}

static int d_action(void *ud, const char *conv, const parley_action *a,
                    const uint8_t id[PARLEY_MSG_ID_LEN], uint64_t epoch, void *send_ud) {
  (void)conv, (void)id, (void)epoch;
  sp_run *s = ud;
  if (s->nsends >= SP_SENDS_MAX) return PARLEY_EBACKPRESSURE;
  sp_send *x = &s->sends[s->nsends++];
  memset(x, 0, sizeof *x);
  x->kind = 100 + (int)a->kind;
  x->text = dup0(a->locale);
  x->title = dup0(NULL);
  x->fallback = dup0(NULL);
  x->labels = dup0(NULL);
  x->excerpt = dup0(NULL);
  x->queue = dup0(a->queue);
  x->note = dup0(a->note);
  x->send_ud = send_ud;
  if (a->kind == PARLEY_ACTION_HANDOFF) s->handoff_sent = true;
  return 0;
}

static size_t kv_find(char **keys, size_t n, const char *k) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(keys[i], k) == 0) return i;
  return n;
}

static void set_remove(char **set, size_t *n, const char *v) {
  size_t i = kv_find(set, *n, v);
  if (i == *n) return;
  free(set[i]);
  set[i] = set[--*n];
}

static void set_add(char **set, size_t *n, const char *v) {
  if (kv_find(set, *n, v) < *n || *n >= SP_KV_MAX) return;
  set[(*n)++] = dup0(v);
}

static int d_commit(void *ud, const parley_commit *cs, size_t n) {
  sp_run *s = ud;
  for (size_t i = 0; i < n; i++) {
    for (size_t k = 0; k < cs[i].n_state; k++) {
      const parley_state_entry *e = &cs[i].state[k];
      size_t at = kv_find(s->keys, s->nkv, e->key);
      if (e->deleted) {
        if (at < s->nkv) {
          free(s->keys[at]);
          free(s->vals[at]);
          s->nkv--;
          s->keys[at] = s->keys[s->nkv];
          s->vals[at] = s->vals[s->nkv];
        }
        continue;
      }
      char *v = strndup(e->value, e->value_len);
      if (at < s->nkv) {
        free(s->vals[at]);
        s->vals[at] = v;
      } else if (s->nkv < SP_KV_MAX) {
        s->keys[s->nkv] = dup0(e->key);
        s->vals[s->nkv++] = v;
      } else {
        free(v);
      }
    }
    for (size_t k = 0; k < cs[i].n_tags_add; k++) set_add(s->tags, &s->ntags, cs[i].tags_add[k]);
    for (size_t k = 0; k < cs[i].n_tags_remove; k++) {
      set_remove(s->tags, &s->ntags, cs[i].tags_remove[k]);
      set_add(s->removed, &s->nremoved, cs[i].tags_remove[k]);
    }
    if (cs[i].ack_seq > s->acked) s->acked = cs[i].ack_seq;
    s->commits_unanswered++;
  }
  return 0;
}

static int d_http(void *ud, const plr_http_req *req, plr_http_done done, void *cb_ud,
                  void **handle) {
  sp_run *s = ud;
  if (s->nhttp >= SP_HTTP_MAX) return PARLEY_EBACKPRESSURE;
  sp_http *h = &s->http[s->nhttp++];
  memset(h, 0, sizeof *h);
  h->method = dup0(req->method);
  h->url = dup0(req->url);
  h->done = done;
  h->cb_ud = cb_ud;
  *handle = h;
  return 0;
}

static void d_http_cancel(void *ud, void *handle) {
  (void)ud;
  sp_http *h = handle;
  h->finished = true;
}

static int64_t d_now(void *ud) { return ((sp_run *)ud)->now; }

/* Answers a pending request from the stubs: `request: "GET url"` with
 * `status` and `body`, or `error`. */
static void serve_http(sp_run *s, sp_http *h) {
  h->finished = true;
  char want[1200];
  snprintf(want, sizeof want, "%s %s", h->method, h->url);
  for (size_t i = 0; i < pc_len(s->stubs); i++) {
    const pc_node *st = pc_at(s->stubs, i);
    const char *req = pc_scalar(pc_get(st, "request"));
    if (!req || strcmp(req, want) != 0) continue;
    const char *err = pc_scalar(pc_get(st, "error"));
    const char *body = pc_scalar(pc_get(st, "body"));
    const char *status = pc_scalar(pc_get(st, "status"));
    plr_http_resp resp = {.status = err ? 0 : (status ? atoi(status) : 200),
                          .body = body ? body : "",
                          .body_len = body ? strlen(body) : 0,
                          .error = err};
    h->done(h->cb_ud, &resp);
    return;
  }
  fail(s, "no http stub for \"%s\"", want);
  plr_http_resp resp = {.status = 0, .error = "no stub for this request in the spec"};
  h->done(h->cb_ud, &resp);
}

/* Answers everything outstanding until nothing moves. */
static void pump(sp_run *s) {
  for (int round = 0; round < 10000; round++) {
    bool moved = false;
    for (size_t i = 0; i < s->nsends; i++) {
      sp_send *x = &s->sends[i];
      if (x->answered) continue;
      x->answered = true;
      moved = true;
      parley_send_result res = {.conversation = SP_CONV, .seq = 100000 + i};
      plr_rt_on_send_result(s->r, &res, x->send_ud);
    }
    while (s->commits_unanswered) {
      s->commits_unanswered--;
      moved = true;
      parley_commit_result res = {.conversation = SP_CONV};
      plr_rt_on_commit_result(s->r, &res);
    }
    for (size_t i = 0; i < s->nhttp; i++) {
      if (s->http[i].finished) continue;
      moved = true;
      serve_http(s, &s->http[i]);
    }
    size_t ns = s->nsends, nc = s->commits_unanswered;
    uv_run(&s->loop, UV_RUN_NOWAIT);
    if (s->nsends != ns || s->commits_unanswered != nc) moved = true;
    if (!moved) return;
  }
}

/* Expectations. ---------------------------------------------------------- */

static const char *state_val(sp_run *s, const char *k) {
  size_t i = kv_find(s->keys, s->nkv, k);
  return i < s->nkv ? s->vals[i] : NULL;
}

/* JSON "x" and YAML x compare equal; numbers and booleans compare as text. */
static bool loose_eq(const char *json, const char *want) {
  size_t n = strlen(json);
  if (n >= 2 && json[0] == '"' && json[n - 1] == '"')
    return strlen(want) == n - 2 && strncmp(json + 1, want, n - 2) == 0;
  return strcmp(json, want) == 0;
}

static const char *kind_name(int kind) {
  switch (kind) {
  case PARLEY_CONTENT_TEXT: return "text";
  case PARLEY_CONTENT_CARD: return "card";
  case PARLEY_CONTENT_QUICK_REPLIES: return "quick_replies";
  case PARLEY_CONTENT_IMAGE: return "image";
  case 100 + PARLEY_ACTION_HANDOFF: return "handoff";
  case 100 + PARLEY_ACTION_CLOSE: return "close";
  case 100 + PARLEY_ACTION_SET_LOCALE: return "set_locale";
  default: return "other";
  }
}

/* What was sent in the step, for failure messages. */
static void describe(sp_run *s, size_t from, char *buf, size_t size) {
  size_t used = 0;
  buf[0] = '\0';
  for (size_t i = from; i < s->nsends && used + 1 < size; i++) {
    const sp_send *x = &s->sends[i];
    int n = snprintf(buf + used, size - used, "%s[%s] \"%s\"", i > from ? ", " : "",
                     kind_name(x->kind), x->kind >= 100 ? x->queue : x->text);
    if (n > 0) used += (size_t)n;
  }
  if (from == s->nsends) snprintf(buf, size, "nothing");
}

static bool labels_match(const char *labels, const pc_node *want) {
  char joined[2048] = "";
  for (size_t i = 0; i < pc_len(want); i++) {
    if (i) strncat(joined, "\n", sizeof joined - strlen(joined) - 1);
    strncat(joined, pc_scalar(pc_at(want, i)) ? pc_scalar(pc_at(want, i)) : "",
            sizeof joined - strlen(joined) - 1);
  }
  return strcmp(labels, joined) == 0;
}

static void check_one(sp_run *s, size_t from, const char *what, const pc_node *v) {
  char got[1024];
  describe(s, from, got, sizeof got);
  const char *sv = pc_scalar(v);
  if (strcmp(what, "reply") == 0) {
    for (size_t i = from; i < s->nsends; i++)
      if (s->sends[i].kind < 100 && strcmp(s->sends[i].text, sv ? sv : "") == 0) return;
    fail(s, "expected reply \"%s\", got %s", sv ? sv : "", got);
  } else if (strcmp(what, "reply_contains") == 0) {
    for (size_t i = from; i < s->nsends; i++)
      if (s->sends[i].kind < 100 && strstr(s->sends[i].text, sv ? sv : "")) return;
    fail(s, "expected a reply containing \"%s\", got %s", sv ? sv : "", got);
  } else if (strcmp(what, "reply_matches") == 0) {
    regex_t re;
    if (!sv || regcomp(&re, sv, REG_EXTENDED | REG_NOSUB) != 0) {
      fail(s, "reply_matches: invalid regular expression (line %d)", pc_node_line(v));
      return;
    }
    bool found = false;
    for (size_t i = from; i < s->nsends && !found; i++)
      found = s->sends[i].kind < 100 && regexec(&re, s->sends[i].text, 0, NULL, 0) == 0;
    regfree(&re);
    if (!found) fail(s, "expected a reply matching /%s/, got %s", sv, got);
  } else if (strcmp(what, "no_reply") == 0) {
    for (size_t i = from; i < s->nsends; i++)
      if (s->sends[i].kind < 100) fail(s, "expected no reply, got %s", got);
  } else if (strcmp(what, "quick_replies") == 0 || strcmp(what, "card") == 0) {
    bool card = what[0] == 'c';
    const char *text = pc_scalar(pc_get(v, "text"));
    const char *title = pc_scalar(pc_get(v, "title"));
    const pc_node *labels = pc_get(v, card ? "buttons" : "options");
    for (size_t i = from; i < s->nsends; i++) {
      const sp_send *x = &s->sends[i];
      if (x->kind != (card ? PARLEY_CONTENT_CARD : PARLEY_CONTENT_QUICK_REPLIES)) continue;
      if (text && strcmp(x->text, text) != 0) continue;
      if (title && strcmp(x->title, title) != 0) continue;
      if (labels && !labels_match(x->labels, labels)) continue;
      return;
    }
    fail(s, "expected %s%s%s%s, got %s", what, text ? " \"" : "", text ? text : "",
         text ? "\"" : "", got);
  } else if (strcmp(what, "quote") == 0) {
    const char *text = pc_scalar(pc_get(v, "text"));
    for (size_t i = from; i < s->nsends; i++)
      if (s->sends[i].quote_seq && (!text || strcmp(s->sends[i].excerpt, text) == 0)) return;
    fail(s, "expected a reply quoting \"%s\", got %s", text ? text : "", got);
  } else if (strcmp(what, "handoff") == 0 || strcmp(what, "close") == 0) {
    bool handoff = what[0] == 'h';
    const char *queue = pc_scalar(pc_get(v, "queue"));
    const char *note = pc_scalar(pc_get(v, handoff ? "note" : "reason"));
    for (size_t i = from; i < s->nsends; i++) {
      const sp_send *x = &s->sends[i];
      if (x->kind != 100 + (handoff ? PARLEY_ACTION_HANDOFF : PARLEY_ACTION_CLOSE)) continue;
      if (queue && strcmp(x->queue, queue) != 0) continue;
      if (note && strcmp(x->note, note) != 0) continue;
      return;
    }
    fail(s, "expected %s%s%s, got %s", what, queue ? " to " : "", queue ? queue : "", got);
  } else if (strcmp(what, "state") == 0) {
    for (size_t i = 0; i < pc_len(v); i++) {
      const char *k = pc_key_at(v, i);
      const char *want = pc_scalar(pc_at(v, i));
      const char *have = state_val(s, k);
      if (!want) continue;
      if (strcmp(want, "null") == 0 ? have != NULL : (!have || !loose_eq(have, want)))
        fail(s, "expected state.%s = %s, got %s", k, want, have ? have : "(none)");
    }
  } else if (strcmp(what, "tags") == 0) {
    for (size_t i = 0; i < pc_len(v); i++) {
      const char *t = pc_scalar(pc_at(v, i));
      if (t && kv_find(s->tags, s->ntags, t) == s->ntags) fail(s, "expected tag %s", t);
    }
  } else if (strcmp(what, "untags") == 0) {
    for (size_t i = 0; i < pc_len(v); i++) {
      const char *t = pc_scalar(pc_at(v, i));
      if (t && kv_find(s->removed, s->nremoved, t) == s->nremoved) fail(s, "expected tag %s removed", t);
    }
  } else if (strcmp(what, "timer") == 0 || strcmp(what, "no_timer") == 0) {
    const char *timers = state_val(s, "_timers");
    char needle[200];
    snprintf(needle, sizeof needle, "\"name\":\"%s\"", sv ? sv : "");
    bool has = timers && strstr(timers, needle);
    if (what[0] == 't' && !has) fail(s, "expected a timer %s in the state", sv ? sv : "");
    if (what[0] == 'n' && has) fail(s, "expected no timer %s in the state", sv ? sv : "");
  } else {
    fail(s, "unknown expectation '%s' (line %d)", what, pc_node_line(v));
  }
}

/* Steps. ---------------------------------------------------------------- */

static parley_event_kind event_kind(const char *k) {
  static const char *const names[] = {"", "message", "opened", "assigned", "handed_off",
                                      "handed_back", "closed", "tagged", "state_changed",
                                      "locale_changed"};
  for (int i = 1; k && i < 10; i++)
    if (strcmp(names[i], k) == 0) return (parley_event_kind)i;
  return PARLEY_EVENT_UNSPECIFIED;
}

/* The conversation comes back to the bot (as after a hand back): a new
 * epoch, the committed state and watermark, like a gateway's Assign. */
static void reassign(sp_run *s, const char *locale) {
  parley_state_entry st[SP_KV_MAX];
  for (size_t i = 0; i < s->nkv; i++)
    st[i] = (parley_state_entry){.key = s->keys[i], .value = s->vals[i],
                                 .value_len = strlen(s->vals[i])};
  parley_assignment a = {.conversation = SP_CONV, .epoch = ++s->epoch, .state = st,
                         .n_state = s->nkv, .acked_seq = s->acked, .locale = locale,
                         .customer = "customer"};
  s->revoked = false;
  s->queued = false;
  plr_rt_on_assign(s->r, &a);
}

static void run_step(sp_run *s, const pc_node *step, uint64_t *seq, const char *locale) {
  size_t from = s->nsends;
  for (size_t i = 0; i < s->nremoved; i++) free(s->removed[i]);
  s->nremoved = 0;
  const pc_node *n;
  if ((n = pc_get(step, "send"))) {
    parley_event ev = {.kind = PARLEY_EVENT_MESSAGE, .conversation = SP_CONV, .seq = ++*seq,
                       .sender = "customer", .sender_role = PARLEY_ROLE_CUSTOMER,
                       .content = {.kind = PARLEY_CONTENT_TEXT, .text = pc_scalar(n)}};
    plr_rt_on_event(s->r, &ev);
  } else if ((n = pc_get(step, "postback"))) {
    parley_event ev = {.kind = PARLEY_EVENT_MESSAGE, .conversation = SP_CONV, .seq = ++*seq,
                       .sender = "customer", .sender_role = PARLEY_ROLE_CUSTOMER,
                       .content = {.kind = PARLEY_CONTENT_POSTBACK, .payload = pc_scalar(n),
                                   .label = pc_scalar(pc_get(step, "label"))}};
    plr_rt_on_event(s->r, &ev);
  } else if ((n = pc_get(step, "open"))) {
    parley_event ev = {.kind = PARLEY_EVENT_OPENED, .conversation = SP_CONV, .seq = ++*seq,
                       .sender = "", .sender_role = PARLEY_ROLE_SYSTEM, .locale = locale,
                       .customer = "customer"};
    plr_rt_on_event(s->r, &ev);
  } else if ((n = pc_get(step, "event"))) {
    const char *k = pc_scalar(pc_get(n, "kind"));
    parley_event ev = {.kind = event_kind(k), .conversation = SP_CONV, .seq = ++*seq,
                       .sender = "", .sender_role = PARLEY_ROLE_SYSTEM,
                       .assignee = pc_scalar(pc_get(n, "assignee")),
                       .locale = pc_scalar(pc_get(n, "locale"))};
    ev.action.queue = pc_scalar(pc_get(n, "queue"));
    ev.action.note = pc_scalar(pc_get(n, "note"));
    if (ev.kind == PARLEY_EVENT_UNSPECIFIED) {
      fail(s, "unknown event kind '%s' (line %d)", k ? k : "", pc_node_line(n));
      return;
    }
    /* A conversation an agent took comes back to the bot before any
     * further event reaches it. */
    if (s->revoked) reassign(s, locale);
    plr_rt_on_event(s->r, &ev);
    plr_rt_fire_due(s->r);
    if (ev.kind == PARLEY_EVENT_ASSIGNED && s->queued) {
      /* An agent took it from the queue: the bot sees the take, then the
       * gateway takes the conversation away from it. */
      pump(s);
      s->queued = false;
      s->revoked = true;
      plr_rt_on_revoke(s->r, SP_CONV, s->epoch, "taken");
    }
  } else if ((n = pc_get(step, "wait"))) {
    const char *w = pc_scalar(n);
    double secs = w ? strtod(w, NULL) : 0;
    s->now += (int64_t)(secs * 1000);
    plr_rt_fire_due(s->r);
  } else {
    fail(s, "step at line %d needs send, postback, open, event or wait", pc_node_line(step));
    return;
  }
  pump(s);
  if (s->handoff_sent) {
    /* Waiting in the queue, the conversation stays with the bot until an
     * agent takes it. */
    s->handoff_sent = false;
    s->queued = true;
  }
  plr_stats st;
  plr_runtime_stats(s->r, &st);
  if (st.failures > s->failures_seen) {
    s->failures_seen = st.failures;
    const char *ok = pc_scalar(pc_get(step, "handler_fails"));
    if (!ok || strcmp(ok, "true") != 0) {
      fflush(s->log);
      const char *lg = s->logbuf ? s->logbuf : "";
      const char *last = strstr(lg, "handler failed");
      fail(s, "%.700s", last ? last : lg);
      return;
    }
  }
  const pc_node *ex = pc_get(step, "expect");
  for (size_t i = 0; i < pc_len(ex) && !s->why[0]; i++) {
    const pc_node *item = pc_at(ex, i);
    for (size_t k = 0; k < pc_len(item); k++) check_one(s, from, pc_key_at(item, k), pc_at(item, k));
  }
}

static void run_free(sp_run *s) {
  if (s->r) plr_runtime_free(s->r);
  uv_run(&s->loop, UV_RUN_DEFAULT);
  uv_loop_close(&s->loop);
  for (size_t i = 0; i < s->nsends; i++) {
    sp_send *x = &s->sends[i];
    free(x->text), free(x->title), free(x->fallback), free(x->labels);
    free(x->excerpt), free(x->queue), free(x->note);
  }
  for (size_t i = 0; i < s->nkv; i++) free(s->keys[i]), free(s->vals[i]);
  for (size_t i = 0; i < s->ntags; i++) free(s->tags[i]);
  for (size_t i = 0; i < s->nremoved; i++) free(s->removed[i]);
  for (size_t i = 0; i < s->nhttp; i++) free(s->http[i].method), free(s->http[i].url);
  if (s->log) fclose(s->log);
  free(s->logbuf);
  free(s);
}

/* One case. Returns true when it passed; why gets the reason otherwise. */
static bool run_case(const char *bot_dir, const pc_node *c, char *why, size_t whylen) {
  sp_run *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(why, whylen, "out of memory");
    return false;
  }
  uv_loop_init(&s->loop);
  s->now = 1767225600000; /* 2026-01-01T00:00:00Z */
  s->stubs = pc_get(c, "http");
  s->log = open_memstream(&s->logbuf, &s->loglen);
  const char *locale = pc_scalar(pc_get(c, "locale"));
  plr_options o = {.loop = &s->loop, .bot_dir = bot_dir, .log_out = s->log, .log_level = 2};
  plr_driver d = {.send = d_send, .action = d_action, .commit = d_commit, .http = d_http,
                  .http_cancel = d_http_cancel, .now_ms = d_now, .ud = s};
  char err[1024] = "";
  if (plr_runtime_new_driver(&o, &d, &s->r, err, sizeof err)) {
    snprintf(why, whylen, "%s", err);
    s->r = NULL;
    run_free(s);
    return false;
  }
  s->epoch = 1;
  parley_assignment a = {.conversation = SP_CONV, .epoch = 1, .locale = locale,
                         .customer = "customer"};
  plr_rt_on_assign(s->r, &a);
  uint64_t seq = 0;
  const pc_node *steps = pc_get(c, "steps");
  if (pc_node_kind(steps) != PC_SEQ) fail(s, "a case needs a list of steps (line %d)", pc_node_line(c));
  for (size_t i = 0; i < pc_len(steps) && i < SP_STEPS_MAX && !s->why[0]; i++) {
    run_step(s, pc_at(steps, i), &seq, locale);
    if (s->why[0]) {
      char step[sizeof s->why];
      snprintf(step, sizeof step, "step %zu (line %d): %.900s", i + 1,
               pc_node_line(pc_at(steps, i)), s->why);
      memcpy(s->why, step, sizeof step);
    }
  }
  bool ok = !s->why[0];
  if (!ok) snprintf(why, whylen, "%s", s->why);
  run_free(s);
  return ok;
}

int plr_spec_run_file(const char *bot_dir, const char *spec_path, FILE *out,
                      plr_spec_result *res) {
  plr_spec_result local = {0};
  if (!res) res = &local;
  res->files++;
  pc_doc *doc = NULL;
  pc_error pe;
  memset(&pe, 0, sizeof pe);
  if (pc_load_file(spec_path, &doc, &pe)) {
    char buf[768];
    fprintf(out, "FAIL %s\n", pc_error_format(&pe, buf, sizeof buf));
    res->failed++;
    return PARLEY_ECONFIG;
  }
  const pc_node *root = pc_root(doc);
  if (pc_node_kind(root) != PC_SEQ) {
    fprintf(out, "FAIL %s:1: a spec file is a list of cases\n", spec_path);
    pc_doc_free(doc);
    res->failed++;
    return PARLEY_ECONFIG;
  }
  int rc = 0;
  for (size_t i = 0; i < pc_len(root); i++) {
    const pc_node *c = pc_at(root, i);
    const char *name = pc_scalar(pc_get(c, "name"));
    char why[1536] = "";
    res->cases++;
    if (run_case(bot_dir, c, why, sizeof why)) {
      res->passed++;
      fprintf(out, "PASS %s: %s\n", spec_path, name ? name : "(unnamed)");
    } else {
      res->failed++;
      rc = PARLEY_EINVAL;
      fprintf(out, "FAIL %s:%d: %s: %s\n", spec_path, pc_node_line(c), name ? name : "(unnamed)", why);
    }
  }
  pc_doc_free(doc);
  return rc;
}

int plr_spec_run_dir(const char *bot_dir, FILE *out, plr_spec_result *res) {
  plr_spec_result local = {0};
  if (!res) res = &local;
  char err[2048] = "";
  int rc = plr_load_check(bot_dir, err, sizeof err);
  if (rc) {
    fprintf(out, "FAIL %s\n", err);
    res->failed++;
    return rc;
  }
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/spec", bot_dir);
  DIR *d = opendir(dir);
  if (!d) {
    fprintf(out, "FAIL %s: no spec folder\n", bot_dir);
    res->failed++;
    return PARLEY_ECONFIG;
  }
  char *names[256];
  size_t n = 0;
  struct dirent *e;
  while ((e = readdir(d)) && n < 256) {
    size_t len = strlen(e->d_name);
    if (e->d_name[0] != '.' && len > 5 && strcmp(e->d_name + len - 5, ".yaml") == 0)
      names[n++] = strdup(e->d_name);
  }
  closedir(d);
  for (size_t i = 1; i < n; i++)
    for (size_t j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
      char *x = names[j];
      names[j] = names[j - 1];
      names[j - 1] = x;
    }
  for (size_t i = 0; i < n; i++) {
    char path[1400];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    int r = plr_spec_run_file(bot_dir, path, out, res);
    if (r && !rc) rc = r;
    free(names[i]);
  }
  return rc;
}
