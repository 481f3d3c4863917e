/* The in-process spec runner (spec.h, plr_spec_run_dir). Each case gets a
 * fresh runtime on a private loop and a recording driver: sends and commits
 * are stored and answered as stored, HTTP requests are answered from the
 * case's `http:` stubs, and the clock only moves with `wait:` steps. It
 * plays the gateway's part (seqs, handoff, take, hand back) and leaves the
 * meaning of steps and expectations to spec.c. */
#include "spec.h"

#include "rt.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define SP_ITEMS_MAX 512
#define SP_HTTP_MAX 32
#define SP_KV_MAX 128
#define SP_STEPS_MAX 200
#define SP_CONV "spec-conversation"

/* A send of the bot, kept until the pump answers it. */
typedef struct sp_item {
  plr_spec_item it;
  char *owned[8]; /* the strings of it */
  void *send_ud;
  bool answered, is_send;
} sp_item;

typedef struct sp_http {
  char *method, *url;
  plr_http_done done;
  void *cb_ud;
  bool finished;
} sp_http;

typedef struct sp_run {
  uv_loop_t loop;
  parley_runtime *r;
  int64_t now;
  uint64_t seq; /* the conversation's last seq, as the gateway would number it */
  sp_item *items[SP_ITEMS_MAX];
  size_t nitems;
  size_t commits_unanswered;
  char *keys[SP_KV_MAX], *vals[SP_KV_MAX]; /* the state as committed */
  size_t nkv;
  char *tags[SP_KV_MAX];
  size_t ntags;
  char *tags_before[SP_KV_MAX];
  size_t ntags_before;
  sp_http http[SP_HTTP_MAX];
  size_t nhttp;
  const pc_node *stubs;
  uint64_t epoch, acked;
  bool handoff_sent, queued, revoked;
  char taker[128]; /* the agent holding the conversation */
  char why[1024];  /* first failure of the case */
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

/* Records one item; its strings are copied. Returns NULL when full. */
static sp_item *record(sp_run *s, int kind, bool from_bot, const char *sender) {
  if (s->nitems >= SP_ITEMS_MAX) return NULL;
  sp_item *x = calloc(1, sizeof *x);
  if (!x) return NULL;
  s->items[s->nitems++] = x;
  x->it.seq = ++s->seq;
  x->it.kind = kind;
  x->it.from_bot = from_bot;
  x->it.sender = x->owned[0] = dup0(sender);
  x->it.text = x->owned[1] = dup0(NULL);
  x->it.title = x->owned[2] = dup0(NULL);
  x->it.labels = x->owned[3] = dup0(NULL);
  x->it.quote_excerpt = x->owned[4] = dup0(NULL);
  x->it.queue = x->owned[5] = dup0(NULL);
  x->it.note = x->owned[6] = dup0(NULL);
  return x;
}

static void set_str(sp_item *x, int slot, const char **field, const char *v) {
  free(x->owned[slot]);
  *field = x->owned[slot] = dup0(v);
}

static void item_free(sp_item *x) {
  for (size_t i = 0; i < 8; i++) free(x->owned[i]);
  free(x);
}

/* The recording driver. -------------------------------------------------- */

static int d_send(void *ud, const char *conv, const parley_content *c, const parley_quote *q,
                  const uint8_t id[PARLEY_MSG_ID_LEN], uint64_t epoch, void *send_ud) {
  (void)conv, (void)id, (void)epoch;
  sp_run *s = ud;
  sp_item *x = record(s, PARLEY_EVENT_MESSAGE, true, "bot");
  if (!x) return PARLEY_EBACKPRESSURE;
  x->is_send = true;
  x->send_ud = send_ud;
  x->it.ctype = (int)c->kind;
  set_str(x, 1, &x->it.text, c->text);
  set_str(x, 2, &x->it.title, c->title);
  size_t len = 1;
  for (size_t i = 0; i < c->n_buttons; i++)
    len += strlen(c->buttons[i].label ? c->buttons[i].label : "") + 1;
  char *labels = calloc(1, len);
  for (size_t i = 0; labels && i < c->n_buttons; i++) {
    if (i) strcat(labels, "\n");
    strcat(labels, c->buttons[i].label ? c->buttons[i].label : "");
  }
  if (labels) {
    free(x->owned[3]);
    x->it.labels = x->owned[3] = labels;
  }
  x->it.quote_seq = q ? q->seq : 0;
  set_str(x, 4, &x->it.quote_excerpt, q ? q->excerpt : NULL);
  return 0;
}

static int d_action(void *ud, const char *conv, const parley_action *a,
                    const uint8_t id[PARLEY_MSG_ID_LEN], uint64_t epoch, void *send_ud) {
  (void)conv, (void)id, (void)epoch;
  sp_run *s = ud;
  int kind = a->kind == PARLEY_ACTION_HANDOFF        ? PARLEY_EVENT_HANDED_OFF
             : a->kind == PARLEY_ACTION_CLOSE        ? PARLEY_EVENT_CLOSED
             : a->kind == PARLEY_ACTION_SET_LOCALE   ? PARLEY_EVENT_LOCALE_CHANGED
             : a->kind == PARLEY_ACTION_HAND_BACK    ? PARLEY_EVENT_HANDED_BACK
                                                     : PARLEY_EVENT_TAGGED;
  sp_item *x = record(s, kind, true, "bot");
  if (!x) return PARLEY_EBACKPRESSURE;
  x->is_send = true;
  x->send_ud = send_ud;
  set_str(x, 1, &x->it.text, a->locale);
  set_str(x, 5, &x->it.queue, a->queue);
  set_str(x, 6, &x->it.note, a->note);
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
    for (size_t k = 0; k < cs[i].n_tags_remove; k++) set_remove(s->tags, &s->ntags, cs[i].tags_remove[k]);
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
    for (size_t i = 0; i < s->nitems; i++) {
      sp_item *x = s->items[i];
      if (!x->is_send || x->answered) continue;
      x->answered = true;
      moved = true;
      parley_send_result res = {.conversation = SP_CONV, .seq = x->it.seq};
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
    size_t ni = s->nitems, nc = s->commits_unanswered;
    uv_run(&s->loop, UV_RUN_NOWAIT);
    if (s->nitems != ni || s->commits_unanswered != nc) moved = true;
    if (!moved) return;
  }
}

/* The gateway's part. --------------------------------------------------- */

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
  s->taker[0] = '\0';
  plr_rt_on_assign(s->r, &a);
}

static void deliver(sp_run *s, parley_event *ev) {
  ev->conversation = SP_CONV;
  ev->seq = s->seq;
  plr_rt_on_event(s->r, ev);
}

/* A customer message: recorded (an agent may quote it) and delivered. */
static void customer_message(sp_run *s, const parley_content *ct) {
  sp_item *x = record(s, PARLEY_EVENT_MESSAGE, false, "customer");
  if (!x) return fail(s, "more than %d events in one case", SP_ITEMS_MAX);
  x->it.ctype = (int)ct->kind;
  set_str(x, 1, &x->it.text, ct->kind == PARLEY_CONTENT_POSTBACK ? ct->label : ct->text);
  parley_event ev = {.kind = PARLEY_EVENT_MESSAGE, .sender = "customer",
                     .sender_role = PARLEY_ROLE_CUSTOMER, .content = *ct};
  deliver(s, &ev);
}

/* An agent's message, with its quote and tags, as the gateway records it. */
static void agent_message(sp_run *s, const plr_spec_step *st) {
  const char *who = st->agent ? st->agent : s->taker[0] ? s->taker : NULL;
  if (!who || (s->taker[0] && strcmp(who, s->taker)))
    return fail(s, "agent: only the agent holding the conversation writes in it (take it "
                   "first with `event: {kind: assigned, assignee: ...}`)");
  if (!s->revoked)
    return fail(s, "agent: the conversation is not with an agent (take it first with `event: "
                   "{kind: assigned}`)");
  const plr_spec_item *quoted = NULL;
  if (st->quote) {
    const plr_spec_item *all[SP_ITEMS_MAX];
    for (size_t i = 0; i < s->nitems; i++) all[i] = &s->items[i]->it;
    quoted = plr_spec_find_quote(all, s->nitems, st->quote);
    if (!quoted) return fail(s, "agent: no earlier message to quote says \"%s\"", st->quote);
  }
  sp_item *x = record(s, PARLEY_EVENT_MESSAGE, false, who);
  if (!x) return fail(s, "more than %d events in one case", SP_ITEMS_MAX);
  x->it.ctype = PARLEY_CONTENT_TEXT;
  set_str(x, 1, &x->it.text, st->text);
  if (quoted) {
    x->it.quote_seq = quoted->seq;
    set_str(x, 4, &x->it.quote_excerpt, quoted->text);
  }
  parley_event ev = {.kind = PARLEY_EVENT_MESSAGE, .sender = who,
                     .sender_role = PARLEY_ROLE_AGENT,
                     .content = {.kind = PARLEY_CONTENT_TEXT, .text = st->text},
                     .quote = {.seq = x->it.quote_seq, .excerpt = x->it.quote_excerpt}};
  deliver(s, &ev);
  for (size_t i = 0; i < pc_len(st->tags); i++) {
    const char *t = pc_scalar(pc_at(st->tags, i));
    if (t) set_add(s->tags, &s->ntags, t);
  }
}

static void run_event(sp_run *s, const plr_spec_step *st, const char *locale) {
  /* A conversation an agent took comes back to the bot before any further
   * event reaches it, unless the event is the hand back itself. */
  if (s->revoked) reassign(s, locale);
  sp_item *x = record(s, st->event, false, "");
  if (!x) return fail(s, "more than %d events in one case", SP_ITEMS_MAX);
  set_str(x, 5, &x->it.queue, st->queue);
  set_str(x, 6, &x->it.note, st->note);
  parley_event ev = {.kind = st->event, .sender = "", .sender_role = PARLEY_ROLE_SYSTEM,
                     .assignee = st->assignee, .locale = st->locale};
  ev.action.queue = st->queue;
  ev.action.note = st->note;
  deliver(s, &ev);
  plr_rt_fire_due(s->r);
  if (st->event == PARLEY_EVENT_ASSIGNED && s->queued) {
    /* An agent took it from the queue: the bot sees the take, then the
     * gateway takes the conversation away from it. */
    pump(s);
    s->queued = false;
    s->revoked = true;
    snprintf(s->taker, sizeof s->taker, "%s", st->assignee ? st->assignee : PLR_SPEC_AGENT);
    plr_rt_on_revoke(s->r, SP_CONV, s->epoch, "taken");
  }
}

static void run_step(sp_run *s, const pc_node *node, const char *locale) {
  plr_spec_step st;
  char why[512];
  if (!plr_spec_step_parse(node, &st, why, sizeof why)) return fail(s, "%s", why);
  size_t from = s->nitems;
  for (size_t i = 0; i < s->ntags_before; i++) free(s->tags_before[i]);
  s->ntags_before = 0;
  for (size_t i = 0; i < s->ntags; i++) s->tags_before[s->ntags_before++] = dup0(s->tags[i]);
  switch (st.kind) {
  case PLR_STEP_SEND:
    customer_message(s, &(parley_content){.kind = PARLEY_CONTENT_TEXT, .text = st.text});
    break;
  case PLR_STEP_POSTBACK:
    customer_message(s, &(parley_content){.kind = PARLEY_CONTENT_POSTBACK, .payload = st.payload,
                                          .label = st.label});
    break;
  case PLR_STEP_OPEN: {
    record(s, PARLEY_EVENT_OPENED, false, "");
    parley_event ev = {.kind = PARLEY_EVENT_OPENED, .sender = "",
                       .sender_role = PARLEY_ROLE_SYSTEM, .locale = locale,
                       .customer = "customer"};
    deliver(s, &ev);
    break;
  }
  case PLR_STEP_WAIT:
    s->now += (int64_t)st.wait_ms;
    plr_rt_fire_due(s->r);
    break;
  case PLR_STEP_EVENT: run_event(s, &st, locale); break;
  case PLR_STEP_AGENT: agent_message(s, &st); break;
  }
  if (s->why[0]) return;
  pump(s);
  if (s->handoff_sent) {
    /* Waiting in the queue, the conversation stays with the bot until an
     * agent takes it. */
    s->handoff_sent = false;
    s->queued = true;
  }
  plr_stats stats;
  plr_runtime_stats(s->r, &stats);
  if (stats.failures > s->failures_seen) {
    s->failures_seen = stats.failures;
    if (!st.handler_fails) {
      fflush(s->log);
      const char *lg = s->logbuf ? s->logbuf : "";
      const char *last = strstr(lg, "handler failed");
      return fail(s, "%.700s", last ? last : lg);
    }
  }
  const plr_spec_item *view_items[SP_ITEMS_MAX];
  size_t n = 0;
  for (size_t i = from; i < s->nitems; i++) view_items[n++] = &s->items[i]->it;
  plr_spec_view v = {.items = view_items, .n_items = n,
                     .state_keys = (const char *const *)s->keys,
                     .state_vals = (const char *const *)s->vals, .n_state = s->nkv,
                     .tags = (const char *const *)s->tags, .n_tags = s->ntags,
                     .tags_before = (const char *const *)s->tags_before,
                     .n_tags_before = s->ntags_before};
  if (!plr_spec_check(st.expect, &v, why, sizeof why)) fail(s, "%s", why);
}

static void run_free(sp_run *s) {
  if (s->r) parley_runtime_free(s->r);
  uv_run(&s->loop, UV_RUN_DEFAULT);
  uv_loop_close(&s->loop);
  for (size_t i = 0; i < s->nitems; i++) item_free(s->items[i]);
  for (size_t i = 0; i < s->nkv; i++) free(s->keys[i]), free(s->vals[i]);
  for (size_t i = 0; i < s->ntags; i++) free(s->tags[i]);
  for (size_t i = 0; i < s->ntags_before; i++) free(s->tags_before[i]);
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
  parley_runtime_options o = {.loop = &s->loop, .bot_dir = bot_dir, .log_out = s->log, .log_level = PARLEY_LOG_WARN};
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
  const pc_node *steps = pc_get(c, "steps");
  for (size_t i = 0; i < pc_len(steps) && i < SP_STEPS_MAX && !s->why[0]; i++) {
    run_step(s, pc_at(steps, i), locale);
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
  char buf[1024];
  if (pc_load_file(spec_path, &doc, &pe)) {
    fprintf(out, "FAIL %s\n", pc_error_format(&pe, buf, sizeof buf));
    res->failed++;
    return PARLEY_ECONFIG;
  }
  const pc_node *root = pc_root(doc);
  if (plr_spec_validate(root, buf, sizeof buf)) {
    fprintf(out, "FAIL %s\n", buf);
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

static int cmp_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

int plr_spec_run_dir(const char *bot_dir, FILE *out, plr_spec_result *res) {
  plr_spec_result local = {0};
  if (!res) res = &local;
  char err[2048] = "";
  int rc = parley_runtime_check(bot_dir, err, sizeof err);
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
  qsort(names, n, sizeof names[0], cmp_name);
  for (size_t i = 0; i < n; i++) {
    char path[1400];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    int r = plr_spec_run_file(bot_dir, path, out, res);
    if (r && !rc) rc = r;
    free(names[i]);
  }
  return rc;
}
