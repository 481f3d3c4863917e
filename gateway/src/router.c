/* Conversations after a commit: who takes part, which bot connection a
 * conversation is assigned to (fleets, epochs), queue notifications, and
 * pushing events to connections within their window. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>

#include <parley/error.h>

#include "gw.h"
#include "util/array.h"

static bool live(const pg_conn *c) { return c && c->state == PG_CS_OPEN && c->wsi; }

pg_conv *pg_router_conv(pg_gateway *g, const char *id) { return pg_hot_conv(g, id, false); }

bool pg_router_participant(const pg_conn *c, const pg_conv *cv) {
  if (!live(c)) return false;
  switch (c->role) {
  case PG_ROLE_CUSTOMER: return !strcmp(cv->pub.customer, c->principal);
  case PG_ROLE_AGENT: return !strcmp(cv->pub.assignee, c->principal);
  case PG_ROLE_BOT: return cv->owner == c;
  default: return false;
  }
}

/* ---------------------------------------------------------------- streams */

static void seen_key(const pg_conn *c, const char *conv, char *buf, size_t n) {
  gw_join(buf, n, c->principal, c->role == PG_ROLE_BOT ? "" : c->device, conv);
}

/* Queues a stream the window or its share held back, once. */
static void wait_push(pg_conn *c, pg_stream *s) {
  if (s->waiting) return;
  s->waiting = true;
  s->wnext = NULL;
  if (c->wait_tail) c->wait_tail->wnext = s;
  else c->wait_head = s;
  c->wait_tail = s;
}

pg_stream *pg_router_stream(pg_conn *c, const char *conv, bool create) {
  pg_stream *s = gw_map_get(&c->streams, conv);
  if (s || !create) return s;
  s = calloc(1, sizeof *s);
  if (!s) return NULL;
  gw_copy(s->conv, sizeof s->conv, conv);
  s->active = true;
  /* Where the principal's device stands, as applied: an Ack whose batch
   * is still with the store counts (a client that acknowledged and
   * reconnected at once does not get those events again). */
  pg_conv *cv = pg_router_conv(c->g, conv);
  if (!cv)
    pg_store_watermark_get(c->g->store, c->principal, c->role == PG_ROLE_BOT ? "" : c->device,
                           conv, &s->acked);
  else if (c->role == PG_ROLE_BOT && !strcmp(c->principal, cv->pub.bot))
    pg_hot_bot_wm(c->g, cv, &s->acked);
  else
    pg_hot_wm_get(c->g, cv, c->principal, c->role == PG_ROLE_BOT ? "" : c->device, &s->acked);
  s->pushed = s->high = s->acked;
  char key[600];
  seen_key(c, conv, key, sizeof key);
  s->seen = (uint64_t)(uintptr_t)gw_map_get(&c->g->seen, key);
  if (gw_map_put(&c->streams, conv, s) != 0) {
    free(s);
    return NULL;
  }
  /* A new stream may start with a backlog (a cursor behind the log): the
   * next pump looks at it. */
  wait_push(c, s);
  return s;
}

/* The stream stops, but stays known: an ACK the client flushes a little
 * later is still in range and still moves the stored watermark. */
void pg_router_drop_stream(pg_conn *c, const char *conv) {
  pg_stream *s = gw_map_get(&c->streams, conv);
  if (!s || !s->active) return;
  c->inflight -= (uint32_t)(s->pushed - s->acked);
  s->pushed = s->acked;
  s->active = false;
}

void pg_router_stream_acked(pg_conn *c, pg_stream *s, uint64_t up) {
  if (up <= s->acked) return;
  uint64_t before = s->pushed - s->acked;
  s->acked = up;
  if (s->pushed < up) s->pushed = up;
  c->inflight -= (uint32_t)(before - (s->pushed - s->acked));
  s->last_push_ms = pg_mono_ms();
}

/* A Deliver is built from the stored event bytes as they are, without
 * unpacking and packing each event again: Frame{deliver (7)} holds
 * Deliver{events (1)}, each the stored Event followed, when it is
 * redelivered, by its field redelivered (8) = true, which a decoder
 * merges into the event (the stored one never sets it). */
typedef struct push_ctx {
  pg_conn *c;
  pg_stream *s;
  pg_conv *cv;
  uint8_t *buf; /* PUSH_HEAD bytes of room for the frame's header, then events */
  size_t len, cap, n;
  uint64_t max_seq;
  int rc;
} push_ctx;

#define PUSH_HEAD (PG_OUT_NODE + LWS_PRE + 11)

static size_t put_varint(uint8_t *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  p[n++] = (uint8_t)v;
  return n;
}

static void push_flush(push_ctx *p) {
  if (!p->n) return;
  /* The frame's header goes right in front of the events; the frame is
   * then moved to start PG_OUT_NODE + LWS_PRE bytes into the buffer, as queued frames
   * do. */
  uint8_t head[11];
  size_t h = 0;
  head[h++] = (7 << 3) | 2;
  h += put_varint(head + h, p->len - PUSH_HEAD);
  memmove(p->buf + PG_OUT_NODE + LWS_PRE + h, p->buf + PUSH_HEAD, p->len - PUSH_HEAD);
  memcpy(p->buf + PG_OUT_NODE + LWS_PRE, head, h);
  size_t frame = h + p->len - PUSH_HEAD;
  uint8_t *b = p->buf;
  p->buf = NULL;
  p->cap = 0;
  if (pg_conn_send_encoded(p->c, PARLEY__V1__FRAME__BODY_DELIVER, b, frame) != 0)
    p->rc = PARLEY_EIO;
  p->n = 0;
  p->len = 0;
}

static int push_one(void *ud, uint64_t seq, const void *blob, size_t len) {
  push_ctx *p = ud;
  /* Keep each Deliver under the frame limit the peer was promised. */
  if (p->n && p->len - PUSH_HEAD + len + 16 > p->c->g->cfg->max_frame_bytes - 64) push_flush(p);
  if (!p->len) p->len = PUSH_HEAD;
  /* Redelivered: pushed to this device before by this process, or stored
   * by an earlier run of the gateway, which may have pushed it. */
  bool red = seq <= p->s->seen || seq <= p->cv->boot_last_seq;
  size_t need = p->len + 1 + 10 + len + 2;
  if (need > p->cap) {
    size_t nc = p->cap ? p->cap * 2 : 256;
    while (nc < need) nc *= 2;
    uint8_t *t = realloc(p->buf, nc);
    if (!t) return PARLEY_ENOMEM;
    p->buf = t;
    p->cap = nc;
  }
  uint8_t *w = p->buf + p->len;
  size_t k = 0;
  w[k++] = (1 << 3) | 2;
  k += put_varint(w + k, len + (red ? 2 : 0));
  memcpy(w + k, blob, len);
  k += len;
  if (red) {
    w[k++] = (8 << 3) | 0;
    w[k++] = 1;
  }
  p->len += k;
  p->n++;
  p->max_seq = seq;
  return 0;
}

/* A stream's share of its connection's window. One conversation with a
 * long backlog must not take the whole window: a bot handles each
 * conversation's events one at a time, so the others would wait behind it
 * (and every slow reply of that one conversation would stall them all).
 * Each stream gets window / streams, at least 2 so a conversation's next
 * event is already there when its handler ends; a connection with one
 * conversation, like most customers, keeps the whole window. */
static uint64_t stream_share(const pg_conn *c) {
  size_t n = c->streams.len ? c->streams.len : 1;
  uint64_t share = c->window / n;
  return share < 2 ? 2 : share;
}

/* Pushes what the window and the stream's share allow of one stream; what
 * they hold back waits on the connection's list for the next pump. */
static void pump_stream(pg_conn *c, pg_stream *s, pg_conv *cv) {
  uint64_t last_seq = cv->pub.last_seq;
  if (!live(c) || !s->active || s->pushed >= last_seq) return;
  uint64_t share = stream_share(c), held = s->pushed - s->acked;
  if (c->inflight >= c->window || held >= share) {
    wait_push(c, s);
    return;
  }
  uint64_t room = c->window - c->inflight;
  if (share - held < room) room = share - held;
  uint64_t to = last_seq;
  if (to - s->pushed > room) to = s->pushed + room;
  size_t want = (size_t)(to - s->pushed);
  push_ctx p = {.c = c, .s = s, .cv = cv};
  int rc = pg_hot_events(c->g, cv, s->pushed + 1, to, (uint32_t)want, push_one, &p);
  push_flush(&p);
  free(p.buf);
  if (rc != 0 || p.max_seq <= s->pushed) return;
  uint64_t now = pg_mono_ms();
  if (s->pushed == s->acked) s->last_push_ms = now;
  c->inflight += (uint32_t)(p.max_seq - s->pushed);
  s->pushed = p.max_seq;
  if (s->pushed > s->high) s->high = s->pushed;
  if (s->pushed > s->seen) {
    s->seen = s->pushed;
    char key[600];
    seen_key(c, s->conv, key, sizeof key);
    gw_map_put(&c->g->seen, key, (void *)(uintptr_t)s->seen);
  }
  if (s->pushed < last_seq) wait_push(c, s);
}

/* Gives room that opened in the window to the streams that were held
 * back, oldest first (round robin: a stream still held back goes to the
 * end of the list). Each waiting stream is looked at once per call, and
 * streams with nothing to push are not visited at all, so the cost does
 * not grow with the connection's number of conversations. */
void pg_router_pump(pg_conn *c) {
  if (!live(c)) return;
  pg_stream *last = c->wait_tail;
  while (c->wait_head && c->inflight < c->window) {
    pg_stream *s = c->wait_head;
    c->wait_head = s->wnext;
    if (!c->wait_head) c->wait_tail = NULL;
    s->waiting = false;
    s->wnext = NULL;
    pg_conv *cv = s->active ? pg_router_conv(c->g, s->conv) : NULL;
    if (cv) pump_stream(c, s, cv);
    if (s == last) break;
  }
}

int pg_router_index(pg_conn *c) {
  pg_gateway *g = c->g;
  c->pnext = gw_map_get(&g->by_principal, c->principal);
  int rc = gw_map_put(&g->by_principal, c->principal, c);
  if (rc != 0) {
    c->pnext = NULL;
    return rc;
  }
  c->indexed = true;
  return 0;
}

void pg_router_unindex(pg_conn *c) {
  if (!c->indexed) return;
  pg_gateway *g = c->g;
  pg_conn *head = gw_map_get(&g->by_principal, c->principal);
  if (head == c) {
    if (c->pnext) gw_map_put(&g->by_principal, c->principal, c->pnext);
    else gw_map_del(&g->by_principal, c->principal);
  } else {
    for (pg_conn *p = head; p; p = p->pnext)
      if (p->pnext == c) {
        p->pnext = c->pnext;
        break;
      }
  }
  c->pnext = NULL;
  c->indexed = false;
}

pg_conn *pg_router_conns_of(pg_gateway *g, const char *principal) {
  return principal && principal[0] ? gw_map_get(&g->by_principal, principal) : NULL;
}

static void pump_one(pg_conn *c, pg_conv *cv) {
  if (c->state != PG_CS_OPEN) return;
  if (pg_router_participant(c, cv)) {
    pg_stream *old = gw_map_get(&c->streams, cv->pub.id);
    bool fresh = !old || !old->active;
    pg_stream *s = old ? old : pg_router_stream(c, cv->pub.id, true);
    if (!s) return;
    s->active = true;
    /* A conversation an agent takes during a session was announced by no
     * cursor, so the client expects it from seq 1: its history. */
    if (fresh && c->role == PG_ROLE_AGENT) s->acked = s->pushed = 0;
    pump_stream(c, s, cv);
  } else {
    pg_router_drop_stream(c, cv->pub.id);
  }
}

/* Only the connections of the principals involved are visited, so the cost
 * does not grow with the number of connections. */
void pg_router_pump_conv(pg_gateway *g, pg_conv *cv, const char *old_assignee) {
  for (pg_conn *c = pg_router_conns_of(g, cv->pub.customer); c; c = c->pnext) pump_one(c, cv);
  if (strcmp(cv->pub.assignee, cv->pub.customer))
    for (pg_conn *c = pg_router_conns_of(g, cv->pub.assignee); c; c = c->pnext) pump_one(c, cv);
  if (old_assignee && strcmp(old_assignee, cv->pub.assignee) &&
      strcmp(old_assignee, cv->pub.customer))
    for (pg_conn *c = pg_router_conns_of(g, old_assignee); c; c = c->pnext) pump_one(c, cv);
  /* Waiting in a queue, the conversation's assignee is the queue, but its
   * bot connection still takes part. */
  if (cv->pub.status == PG_CONV_QUEUED && cv->owner) pump_one(cv->owner, cv);
}

void pg_router_redeliver(pg_gateway *g, uint64_t now) {
  uint64_t t = g->cfg->ack_timeout_ms;
  for (pg_conn *c = g->conns; c; c = c->next) {
    if (!live(c) || !c->inflight) continue;
    size_t i = 0;
    const char *k;
    void *v;
    bool any = false;
    while (gw_map_next(&c->streams, &i, &k, &v)) {
      pg_stream *s = v;
      if (s->pushed > s->acked && now - s->last_push_ms >= t) {
        /* Rewinding to the watermark makes the pump send the range
         * again; `seen` marks it redelivered. */
        c->inflight -= (uint32_t)(s->pushed - s->acked);
        s->pushed = s->acked;
        if (s->active) wait_push(c, s);
        any = true;
      }
    }
    if (any) pg_router_pump(c);
  }
}

/* ------------------------------------------------------------- bot fleet */

static int add_state(void *ud, const char *key, const void *val, size_t len) {
  Parley__V1__Assign *a = ud;
  Parley__V1__StateEntry *e = calloc(1, sizeof *e);
  if (!e) return PARLEY_ENOMEM;
  parley__v1__state_entry__init(e);
  e->key = strdup(key);
  e->value.data = malloc(len ? len : 1);
  if (!e->key || !e->value.data) {
    free(e->key);
    free(e->value.data);
    free(e);
    return PARLEY_ENOMEM;
  }
  memcpy(e->value.data, val, len);
  e->value.len = len;
  Parley__V1__StateEntry **t = realloc(a->state, (a->n_state + 1) * sizeof *t);
  if (!t) {
    free(e->key);
    free(e->value.data);
    free(e);
    return PARLEY_ENOMEM;
  }
  a->state = t;
  a->state[a->n_state++] = e;
  return 0;
}

static void send_assign(pg_conn *c, pg_conv *cv) {
  Parley__V1__Assign a = PARLEY__V1__ASSIGN__INIT;
  a.conversation = cv->pub.id;
  a.epoch = cv->pub.epoch;
  a.state_version = cv->pub.state_version;
  a.locale = cv->pub.locale;
  a.customer = cv->pub.customer;
  pg_stream *s = pg_router_stream(c, cv->pub.id, true);
  if (!s) return;
  /* The stream restarts from the committed watermark, also when this
   * connection held the conversation before. */
  uint64_t wm = 0;
  pg_store_watermark_get(c->g->store, c->principal, "", cv->pub.id, &wm);
  if (s->active) c->inflight -= (uint32_t)(s->pushed - s->acked);
  s->acked = s->pushed = wm;
  if (s->high < wm) s->high = wm;
  s->active = true;
  s->epoch = cv->pub.epoch;
  a.acked_seq = s->acked;
  pg_store_state_each(c->g->store, cv->pub.id, add_state, &a);
  char *tags = strdup(cv->pub.tags);
  char *tv[256];
  a.n_tags = pg_tags_split(tags, tv, 256);
  a.tags = tv;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_ASSIGN;
  f.assign = &a;
  pg_conn_send_frame(c, &f);
  for (size_t i = 0; i < a.n_state; i++) {
    free(a.state[i]->key);
    free(a.state[i]->value.data);
    free(a.state[i]);
  }
  free(a.state);
  free(tags);
}

static void send_revoke(pg_conn *c, const char *conv, uint64_t epoch, const char *reason) {
  Parley__V1__Revoke r = PARLEY__V1__REVOKE__INIT;
  r.conversation = (char *)conv;
  r.epoch = epoch;
  r.reason = (char *)reason;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_REVOKE;
  f.revoke = &r;
  pg_conn_send_frame(c, &f);
}

/* The live connection of the bot principal with the fewest conversations. */
static pg_conn *pick_bot(pg_gateway *g, const char *bot) {
  pg_conn *best = NULL;
  for (pg_conn *c = pg_router_conns_of(g, bot); c; c = c->pnext)
    if (live(c) && c->role == PG_ROLE_BOT && (!best || c->n_owned < best->n_owned)) best = c;
  return best;
}

/* A conversation waiting in a queue stays with its bot connection until an
 * agent takes it: the bot keeps the customer company (and its timers run)
 * while nobody has answered yet. */
static bool bot_assigned(const pg_conv *cv) {
  return (cv->pub.status == PG_CONV_OPEN && !strcmp(cv->pub.assignee, cv->pub.bot)) ||
         cv->pub.status == PG_CONV_QUEUED;
}

/* Gives a placed conversation to its connection: the Assign, then its
 * events. */
static void assign(pg_conn *c, pg_conv *cv) {
  cv->owner = c;
  cv->placed_epoch = cv->pub.epoch;
  send_assign(c, cv);
}

/* Places unowned bot conversations on live connections. An epoch that was
 * already given to some connection is bumped first, and the Assign waits
 * until that bump is durable (g->route.placed), so frames from the
 * previous holder are refused as stale even after a restart. */
static void place(pg_gateway *g, pg_conv **list, size_t n) {
  if (!n || g->stopping) return;
  pg_conn **to = calloc(n, sizeof *to);
  bool *away = calloc(n, sizeof *away);
  if (!to || !away) {
    free(to);
    free(away);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    if (list[i]->placing) continue; /* a placement is already on its way */
    /* A conversation a bot opened goes to the connection that opened it. */
    to[i] = pg_open_placement(g, list[i]);
    if (!to[i]) {
      /* Several nodes: a live bot connection of another node has it. */
      if (pg_store_placement(g->store, list[i]->pub.id, list[i]->pub.bot) ==
          PG_STORE_PLACE_ELSEWHERE)
        continue;
      to[i] = pick_bot(g, list[i]->pub.bot);
      if (!to[i]) {
        away[i] = true;
        continue;
      }
    }
    to[i]->n_owned++; /* so the next pick balances */
    if (list[i]->placed_epoch == list[i]->pub.epoch) {
      if (pg_apply_bump_epoch(g, list[i], to[i]) != 0) to[i]->n_owned--;
      to[i] = NULL; /* assigned once the bump is durable */
    }
  }
  for (size_t i = 0; i < n; i++)
    if (to[i]) assign(to[i], list[i]);
  /* Pushing starts once every conversation placed here has its stream, so
   * that the first one assigned does not take the whole window before the
   * others are counted in the shares. */
  for (size_t i = 0; i < n; i++) {
    if (!to[i]) continue;
    pg_stream *s = pg_router_stream(to[i], list[i]->pub.id, false);
    if (s) pump_stream(to[i], s, list[i]);
  }
  /* No connection of the bot here: a node that has one is asked, one
   * request per bot principal. */
  const char **ids = calloc(n, sizeof *ids);
  for (size_t i = 0; ids && i < n; i++) {
    if (!away[i]) continue;
    size_t m = 0;
    for (size_t j = i; j < n; j++)
      if (away[j] && !strcmp(list[j]->pub.bot, list[i]->pub.bot)) {
        ids[m++] = list[j]->pub.id;
        if (j > i) away[j] = false;
      }
    pg_store_place_elsewhere(g->store, list[i]->pub.bot, ids, m);
  }
  free(ids);
  free(away);
  free(to);
}

/* Tells the store how many live connections of a bot principal this node
 * has (gone: one about to close, not counted). */
static void presence(pg_gateway *g, const char *bot, const pg_conn *gone) {
  unsigned k = 0;
  for (pg_conn *c = pg_router_conns_of(g, bot); c; c = c->pnext)
    if (c != gone && live(c) && c->role == PG_ROLE_BOT) k++;
  pg_store_bot_presence(g->store, bot, k);
}

/* Another node asks this one to place a conversation (or its holder went
 * away and this node takes it over). */
static void on_place_request(void *ud, const char *id) {
  pg_gateway *g = ud;
  pg_conv *cv = pg_router_conv(g, id);
  if (cv) pg_router_replace(g, cv);
}

/* A placement's epoch bump is durable (or failed: to is NULL). */
static void on_placed(pg_gateway *g, pg_conv *cv, pg_conn *to) {
  if (to && live(to) && !live(cv->owner) && bot_assigned(cv)) {
    assign(to, cv);
    pg_stream *s = pg_router_stream(to, cv->pub.id, false);
    if (s) pump_stream(to, s, cv);
    return;
  }
  if (to && to->n_owned) to->n_owned--;
  pg_router_replace(g, cv);
}

void pg_router_replace(pg_gateway *g, pg_conv *cv) {
  if (!cv->exists || !bot_assigned(cv) || live(cv->owner)) return;
  cv->owner = NULL;
  place(g, &cv, 1);
}

typedef struct collect_ctx {
  pg_gateway *g;
  pg_conv **list;
  size_t n, cap;
} collect_ctx;

static void collect(collect_ctx *cc, pg_conv *cv) {
  if (pu_reserve(&cc->list, &cc->cap, cc->n, sizeof *cc->list, 16)) return;
  cc->list[cc->n++] = cv;
}

static int collect_assigned(void *ud, const pg_store_conv *r) {
  collect_ctx *cc = ud;
  pg_conv *cv = pg_router_conv(cc->g, r->id);
  if (cv && bot_assigned(cv) && !live(cv->owner)) collect(cc, cv);
  return 0;
}

void pg_router_bot_joined(pg_conn *c) {
  presence(c->g, c->principal, NULL);
  collect_ctx cc = {.g = c->g};
  pg_store_conv_each(c->g->store, PG_STORE_BY_ASSIGNEE, c->principal, collect_assigned, &cc);
  /* Conversations waiting in a queue are still their bot's. */
  pg_store_conv_each(c->g->store, PG_STORE_BOT_QUEUED, c->principal, collect_assigned, &cc);
  for (size_t i = 0; i < cc.n; i++)
    if (cc.list[i]->owner && !live(cc.list[i]->owner)) cc.list[i]->owner = NULL;
  place(c->g, cc.list, cc.n);
  free(cc.list);
}

void pg_router_conn_gone(pg_conn *c) {
  if (c->role == PG_ROLE_BOT) presence(c->g, c->principal, c);
  collect_ctx cc = {.g = c->g};
  size_t i = 0;
  const char *k;
  void *v;
  /* Every cached conversation is checked, not only the streams, so no
   * conversation is left pointing at a connection about to be freed. */
  while (gw_map_next(&c->g->convs, &i, &k, &v)) {
    pg_conv *cv = v;
    if (cv->owner == c) {
      cv->owner = NULL;
      if (bot_assigned(cv)) collect(&cc, cv);
    }
  }
  c->n_owned = 0;
  place(c->g, cc.list, cc.n);
  free(cc.list);
}

/* -------------------------------------------------------------- queues */

int pg_queue_item(const pg_store_conv *r, Parley__V1__QueueItem *it) {
  parley__v1__queue_item__init(it);
  it->conversation = r->id;
  it->queue = r->queue;
  it->customer = r->customer;
  it->note = r->note;
  it->since_ms = r->queued_ms;
  it->last_seq = r->last_seq;
  it->locale = r->locale;
  return 0;
}

static bool watches(const pg_conn *c, const char *queue) {
  for (size_t i = 0; i < c->n_queues; i++)
    if (!strcmp(c->queues[i], queue)) return true;
  return false;
}

void pg_router_queue_update(pg_gateway *g, const pg_store_conv *r, const char *queue,
                            bool removed) {
  Parley__V1__QueueItem it;
  pg_queue_item(r, &it);
  it.queue = (char *)queue;
  Parley__V1__QueueUpdate u = PARLEY__V1__QUEUE_UPDATE__INIT;
  u.item = &it;
  u.removed = removed;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_QUEUE_UPDATE;
  f.queue_update = &u;
  for (pg_conn *c = g->conns; c; c = c->next)
    if (live(c) && c->role == PG_ROLE_AGENT && watches(c, queue)) pg_conn_send_frame(c, &f);
}

/* --------------------------------------------------------- after commit */

/* A batch made cv's new row durable: compares it with the row before (old,
 * NULL for a conversation just opened) and tells connections what changed:
 * revokes, queue updates, new bot assignments, and the new events. */
static void on_published(pg_gateway *g, pg_conv *cv, pg_store_conv *old, bool opened) {
  const char *id = cv->pub.id;
  bool fresh = old == NULL;
  /* Only a conversation opened in this batch has an epoch no connection
   * ever held. */
  if (fresh && !opened) cv->placed_epoch = cv->pub.epoch;
  if (!fresh && cv->owner && (!bot_assigned(cv) || cv->pub.epoch != old->epoch)) {
    const char *why = cv->pub.status == PG_CONV_CLOSED ? "closed"
                      : cv->pub.epoch != old->epoch    ? "moved"
                                                       : "taken";
    /* The bot first gets the events that took the conversation away (an
     * agent's take, the close), so it knows why before the Revoke. */
    if (live(cv->owner)) {
      pump_one(cv->owner, cv);
      send_revoke(cv->owner, id, old->epoch, why);
    }
    pg_router_drop_stream(cv->owner, id);
    cv->owner->n_owned--;
    cv->owner = NULL;
  }
  bool was_queued = !fresh && old->status == PG_CONV_QUEUED;
  if (was_queued && (cv->pub.status != PG_CONV_QUEUED || strcmp(old->queue, cv->pub.queue)))
    pg_router_queue_update(g, old, old->queue, true);
  if (cv->pub.status == PG_CONV_QUEUED && (!was_queued || strcmp(old->queue, cv->pub.queue)))
    pg_router_queue_update(g, &cv->pub, cv->pub.queue, false);
  if (bot_assigned(cv) && !live(cv->owner) && !cv->placing) {
    cv->owner = NULL;
    place(g, &cv, 1);
  }
  pg_router_pump_conv(g, cv, fresh ? NULL : old->assignee);
}

/* A commit item went through: the committed ack_seq frees the bot
 * connection's window. A duplicate does too: the watermark is already
 * there (committed on an earlier connection, or while this stream was
 * being set up), and the bot will not commit those events again, so
 * leaving the stream behind would keep its share of the window taken for
 * good. The ack_seq may pass what this connection pushed (the range check
 * allows what the bot was given before a reconnect): the stream then
 * resumes after it. */
static void on_committed(pg_conn *c, const char *conv, uint64_t ack_seq) {
  pg_stream *s = pg_router_stream(c, conv, false);
  if (!s) return;
  if (s->high < ack_seq) s->high = ack_seq;
  pg_router_stream_acked(c, s, ack_seq);
}

void pg_router_init(pg_gateway *g) {
  g->route.published = on_published;
  g->route.placed = on_placed;
  g->route.committed = on_committed;
  g->route.pump = pg_router_pump;
  g->route.closing = pg_router_conn_gone;
  pg_store_on_place(g->store, on_place_request, g);
}
