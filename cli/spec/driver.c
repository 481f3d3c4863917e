/* `parley test`: the bot's side. The runtime runs on the real driver
 * (lua/src/adapter.c, the one `parley run` uses) through its hooks: the
 * bot's HTTP calls are answered from the case's `http:` stubs, the clock is
 * a simulated one that only `wait:` steps move, and the runner watches what
 * the bot sends, commits and is assigned, and holds events back during an
 * `open` step. Fault runs kill it (free it with its handlers in flight) and
 * let a new one connect to the same gateway. */
#include "wb.h"

#include "adapter.h"

#include <sodium.h>

/* The state as committed: what `state:` expectations look at. */

void wb_state_clear(wb *w) {
  for (size_t i = 0; i < w->n_state; i++) free(w->state_keys[i]), free(w->state_vals[i]);
  w->n_state = 0;
}

static void state_set(wb *w, const char *key, const char *json, size_t len, bool deleted) {
  size_t i;
  for (i = 0; i < w->n_state; i++)
    if (!strcmp(w->state_keys[i], key)) break;
  if (deleted) {
    if (i < w->n_state) {
      free(w->state_keys[i]), free(w->state_vals[i]);
      w->state_keys[i] = w->state_keys[w->n_state - 1];
      w->state_vals[i] = w->state_vals[w->n_state - 1];
      w->n_state--;
    }
    return;
  }
  char *v = malloc(len + 1);
  if (!v) return;
  memcpy(v, json, len);
  v[len] = 0;
  if (i < w->n_state) {
    free(w->state_vals[i]);
    w->state_vals[i] = v;
  } else if (w->n_state < WB_KEYS_MAX) {
    w->state_keys[w->n_state] = wb_xdup(key);
    w->state_vals[w->n_state++] = v;
  } else {
    free(v);
  }
}

const char *wb_state_get(wb *w, const char *key) {
  for (size_t i = 0; i < w->n_state; i++)
    if (!strcmp(w->state_keys[i], key)) return w->state_vals[i];
  return NULL;
}

/* ---------------------------------------------------------------- driver */

static const char *keep(wb_held *h, const char *str) {
  if (!str || h->n_allocs >= WB_HELD_ALLOCS) return NULL;
  char *d = strdup(str);
  if (d) h->allocs[h->n_allocs++] = d;
  return d;
}

static size_t keep_list(wb_held *h, const char **dst, size_t max, const char *const *src,
                        size_t n) {
  size_t k = n < max ? n : max;
  for (size_t i = 0; i < k; i++) dst[i] = keep(h, src[i]);
  return k;
}

static void held_free(wb_held *h) {
  if (!h) return;
  for (size_t i = 0; i < h->n_allocs; i++) free(h->allocs[i]);
  free(h);
}

static wb_held *held_copy(const parley_event *src) {
  wb_held *h = calloc(1, sizeof *h);
  if (!h) return NULL;
  parley_event *e = &h->ev;
  *e = *src;
  e->conversation = keep(h, src->conversation);
  e->sender = keep(h, src->sender);
  e->assignee = keep(h, src->assignee);
  e->locale = keep(h, src->locale);
  e->customer = keep(h, src->customer);
  parley_content *c = &e->content;
  c->text = keep(h, src->content.text);
  c->title = keep(h, src->content.title);
  c->image_url = keep(h, src->content.image_url);
  c->payload = keep(h, src->content.payload);
  c->label = keep(h, src->content.label);
  c->fallback = keep(h, src->content.fallback);
  c->n_buttons = src->content.n_buttons < 16 ? src->content.n_buttons : 16;
  for (size_t i = 0; i < c->n_buttons; i++) {
    h->buttons[i].label = keep(h, src->content.buttons[i].label);
    h->buttons[i].payload = keep(h, src->content.buttons[i].payload);
    h->buttons[i].url = keep(h, src->content.buttons[i].url);
  }
  c->buttons = h->buttons;
  e->quote.excerpt = keep(h, src->quote.excerpt);
  e->quote.sender = keep(h, src->quote.sender);
  e->action.queue = keep(h, src->action.queue);
  e->action.note = keep(h, src->action.note);
  e->action.locale = keep(h, src->action.locale);
  e->action.n_tags_add = keep_list(h, h->tags_add, 32, src->action.tags_add, src->action.n_tags_add);
  e->action.tags_add = h->tags_add;
  e->action.n_tags_remove =
      keep_list(h, h->tags_remove, 32, src->action.tags_remove, src->action.n_tags_remove);
  e->action.tags_remove = h->tags_remove;
  e->n_tags = keep_list(h, h->tags, 32, src->tags, src->n_tags);
  e->tags = h->tags;
  e->n_state_keys = keep_list(h, h->state_keys, 32, src->state_keys, src->n_state_keys);
  e->state_keys = h->state_keys;
  return h;
}

void wb_held_drop_all(wb *w) {
  for (size_t i = 0; i < w->n_held; i++) held_free(w->held[i]);
  w->n_held = 0;
}

/* Events of the case's conversation are held back while the gate is up
 * (an `open` step): the runner hands them over later. */
static bool h_event(void *ud, const parley_event *ev) {
  wb *w = ud;
  if (!(w->gate && !strcmp(ev->conversation, w->conv) &&
        (w->n_held || (ev->kind == PARLEY_EVENT_MESSAGE &&
                       ev->sender_role == PARLEY_ROLE_CUSTOMER))))
    return false;
  for (size_t i = 0; i < w->n_held; i++)
    if (w->held[i]->ev.seq == ev->seq) return true; /* pushed again: held once */
  wb_held *h = w->n_held < WB_HELD_MAX ? held_copy(ev) : NULL;
  if (h) w->held[w->n_held++] = h;
  else wb_note(w, "too many events held during the open step");
  return true;
}

static void h_sent(void *ud, const char *conv) {
  wb *w = ud;
  if (!strcmp(conv, w->conv)) w->bot_pending++;
}

static void h_send_result(void *ud, const parley_send_result *r) {
  wb *w = ud;
  if (r->conversation && !strcmp(r->conversation, w->conv)) {
    if (w->bot_pending) w->bot_pending--;
    if (r->status == 0 && r->seq > w->bot_max_acked) w->bot_max_acked = r->seq;
  }
}

static void h_assign(void *ud, const parley_assignment *a) {
  wb *w = ud;
  if (strcmp(a->conversation, w->conv)) return;
  w->bot_has_conv = true;
  /* The assignment carries the state as committed: it replaces ours. */
  wb_state_clear(w);
  for (size_t i = 0; i < a->n_state; i++)
    if (!a->state[i].deleted)
      state_set(w, a->state[i].key, a->state[i].value,
                a->state[i].value_len ? a->state[i].value_len : strlen(a->state[i].value), false);
}

/* The committed state as the gateway will store it; an assignment (after a
 * restart) replaces it with the stored one. */
static void h_commit(void *ud, const parley_commit *commits, size_t n) {
  wb *w = ud;
  for (size_t i = 0; i < n; i++) {
    if (strcmp(commits[i].conversation, w->conv)) continue;
    for (size_t k = 0; k < commits[i].n_state; k++) {
      const parley_state_entry *e = &commits[i].state[k];
      state_set(w, e->key, e->value ? e->value : "",
                e->value ? (e->value_len ? e->value_len : strlen(e->value)) : 0,
                e->deleted || !e->value);
    }
  }
}

static void http_closed(uv_handle_t *h) {
  wb_http *q = h->data;
  free(q->body);
  free(q->error);
  free(q);
}

static void http_fire(uv_timer_t *t) {
  wb_http *q = t->data;
  q->active = false;
  plr_http_resp r = {.status = q->status,
                     .body = q->body ? q->body : "",
                     .body_len = q->body ? strlen(q->body) : 0,
                     .error = q->error};
  q->done(q->cb_ud, &r);
  uv_close((uv_handle_t *)&q->t, http_closed);
}

/* Finds the case's stub for "METHOD URL". */
static int d_http(void *ud, const plr_http_req *req, plr_http_done done, void *cb_ud,
                  void **handle) {
  wb *w = ud;
  char want[2048];
  snprintf(want, sizeof want, "%s %s", req->method ? req->method : "GET", req->url);
  const pc_node *stub = NULL;
  for (size_t i = 0; i < pc_len(w->stubs); i++) {
    const char *r = pc_scalar(pc_get(pc_at(w->stubs, i), "request"));
    if (r && !strcmp(r, want)) {
      stub = pc_at(w->stubs, i);
      break;
    }
  }
  wb_http *q = calloc(1, sizeof *q);
  if (!q) return PARLEY_ENOMEM;
  q->w = w;
  q->done = done;
  q->cb_ud = cb_ud;
  if (!stub) {
    wb_note(w, "no http stub for \"%s\"", want);
    q->error = wb_xdup("no stub in the spec for this request");
  } else if (pc_get(stub, "error")) {
    q->error = wb_xdup(pc_scalar(pc_get(stub, "error")));
  } else {
    const char *st = pc_scalar(pc_get(stub, "status"));
    q->status = st ? atoi(st) : 200;
    q->body = wb_xdup(pc_scalar(pc_get(stub, "body")));
  }
  uv_timer_init(w->loop, &q->t);
  q->t.data = q;
  q->active = true;
  uv_timer_start(&q->t, http_fire, 0, 0);
  *handle = q;
  return 0;
}

static void d_http_cancel(void *ud, void *handle) {
  (void)ud;
  wb_http *q = handle;
  if (q && q->active) {
    q->active = false;
    uv_timer_stop(&q->t);
    uv_close((uv_handle_t *)&q->t, http_closed);
  }
}

static int64_t d_now(void *ud) {
  wb *w = ud;
  return w->clock_base + w->clock_offset;
}

/* Remembers which inbound seq a reply id belongs to, so replies can be
 * told apart from the greeting of an implicit open. */
static void d_derive(const char *principal, const char *conversation, uint64_t seq,
                     uint32_t ordinal, uint8_t out[PARLEY_MSG_ID_LEN]);
wb *wb_derive_owner; /* the one runner of this process */
static void d_derive(const char *principal, const char *conversation, uint64_t seq,
                     uint32_t ordinal, uint8_t out[PARLEY_MSG_ID_LEN]) {
  parley_msg_id_derive(principal, conversation, seq, ordinal, out);
  wb *w = wb_derive_owner;
  if (!w) return;
  size_t i = w->n_ids % WB_IDS_MAX;
  memcpy(w->ids[i], out, PARLEY_MSG_ID_LEN);
  w->id_seqs[i] = seq;
  w->n_ids++;
}

uint64_t wb_inbound_of(wb *w, const uint8_t id[PARLEY_MSG_ID_LEN]) {
  size_t n = w->n_ids < WB_IDS_MAX ? w->n_ids : WB_IDS_MAX;
  for (size_t i = 0; i < n; i++)
    if (!memcmp(w->ids[i], id, PARLEY_MSG_ID_LEN)) return w->id_seqs[i];
  return 0;
}

/* Fault runs connect the bot and the customer through the fault layer. */
const char *wb_client_url(wb *w) { return w->faults && w->proxy_on ? w->proxy_url : w->url; }

int wb_bot_new(wb *w, char *err, size_t errlen) {
  wb_bot *b = calloc(1, sizeof *b);
  if (!b) return PARLEY_ENOMEM;
  b->w = w;
  plr_adapter_hooks h = {.http = d_http,
                         .http_cancel = d_http_cancel,
                         .now_ms = d_now,
                         .derive = d_derive,
                         .on_event = h_event,
                         .on_sent = h_sent,
                         .on_send_result = h_send_result,
                         .on_commit = h_commit,
                         .on_assign = h_assign,
                         .seed = wb_rnd(w),
                         .ud = w};
  parley_runtime_options o = {.loop = w->loop,
                              .bot_dir = w->bot_dir,
                              .url = wb_client_url(w),
                              .principal = w->principal,
                              .token = w->token,
                              .log_out = stderr,
                              .log_level = w->verbose ? PARLEY_LOG_INFO : PARLEY_LOG_ERROR};
  int rc = plr_runtime_new_hooked(&o, &h, &b->rt, err, errlen);
  if (rc) {
    free(b);
    return rc;
  }
  if ((rc = parley_runtime_start(b->rt)) != 0) {
    snprintf(err, errlen, "cannot start the bot: %s", parley_strerror(rc));
    parley_runtime_free(b->rt);
    free(b);
    return rc;
  }
  w->bot = b;
  return 0;
}

void wb_bot_free(wb *w) {
  if (!w->bot) return;
  parley_runtime_free(w->bot->rt);
  free(w->bot);
  w->bot = NULL;
}

static void rebirth_fire(uv_timer_t *t) {
  wb *w = t->data;
  w->rebirth_armed = false;
  char err[1024];
  if (wb_bot_new(w, err, sizeof err) != 0) wb_note(w, "the bot did not come back after a kill: %s", err);
}

/* A kill: the runtime is freed with whatever it had in flight, and a new
 * one connects to the same gateway a moment later. */
void wb_bot_kill(wb *w) {
  wb_bot_free(w);
  w->bot_pending = 0;
  w->bot_has_conv = false;
  w->kills++;
  /* The held events were the dead runtime's; the gateway pushes them to
   * the new one, and the gate holds them again. */
  wb_held_drop_all(w);
  w->rebirth_armed = true;
  uv_timer_start(&w->rebirth_timer, rebirth_fire, WB_FREE_QUIET_MS, 0);
}


/* A client is freed only while it is connected: freeing one in the middle
 * of reconnecting (after a cut) has aborted in the transport's teardown,
 * so a kill that falls there waits for the connection to be back. */
void wb_kill_fire(uv_timer_t *t) {
  wb *w = t->data;
  if (!w->bot || parley_client_state(parley_runtime_client(w->bot->rt)) != PARLEY_CONN_READY) {
    uv_timer_start(&w->kill_timer, wb_kill_fire, 5, 0);
    return;
  }
  w->kill_armed = false;
  wb_bot_kill(w);
}

