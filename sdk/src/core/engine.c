/* The client-side protocol engine; see engine.h for how it is driven and
 * docs/protocol.md ("Client engine behaviour") for the timers and limits.
 * This file holds the connection life cycle, frame dispatch, timers and
 * output; outbox.c the sends and commits; inbox.c the inbound stream.
 *
 * Layout of the state (engine_int.h):
 *   - conversations live in an open-addressing hash table of pointers, so a
 *     conversation's address never changes while a callback runs;
 *   - each conversation owns a FIFO of pending sends (only the head is ever
 *     on the wire), a FIFO of pending commits, and a sorted reorder buffer;
 *   - every pending send is also on one global list in creation order, so
 *     a reconnect writes them again in the order the application sent them;
 *   - every timer (send retry/deadline, gap/fetch, commit retry) is a node
 *     of one binary min-heap, so the next deadline is O(1) and arming or
 *     cancelling is O(log n) even with many thousands of conversations.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <parley/error.h>

#include "core/convert.h"
#include "core/engine_int.h"
#include "util/hash.h"
#include "util/array.h"

/* --------------------------------------------------------------- utils */

/* Uniform in [0, n); 0 when n is 0. */
uint64_t pe_rng_below(pe_engine *e, uint64_t n) { return pu_rng_below(&e->rng, n); }

void pe_random_id(pe_engine *e, uint8_t out[PARLEY_MSG_ID_LEN]) {
  if (e->hooks.random_id) {
    e->hooks.random_id(e->hooks.ud, out);
    return;
  }
  for (int i = 0; i < PARLEY_MSG_ID_LEN; i += 8) {
    uint64_t x = pu_rng_next(&e->id_rng);
    for (int k = 0; k < 8; k++) out[i + k] = (uint8_t)(x >> (8 * k));
  }
}

uint64_t pe_add_sat(uint64_t a, uint64_t b) {
  return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* min(cap, base * 2^n) without overflow. */
uint64_t pe_exp_window(uint64_t base, uint32_t n, uint64_t cap) {
  uint64_t w = base ? base : 1;
  for (uint32_t i = 0; i < n && w < cap; i++) w *= 2;
  return w < cap ? w : cap;
}

static char *dup_str(const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

void pe_peer_error(pe_engine *e, int status, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (e->hooks.peer_error) e->hooks.peer_error(e->hooks.ud, status, msg);
}

/* --------------------------------------------------------------- heap */

static bool heap_less(const pe_timer *a, const pe_timer *b) { return a->at < b->at; }

static void heap_swap(pe_engine *e, size_t i, size_t j) {
  pe_timer *t = e->heap[i];
  e->heap[i] = e->heap[j];
  e->heap[j] = t;
  e->heap[i]->idx = i;
  e->heap[j]->idx = j;
}

static void heap_up(pe_engine *e, size_t i) {
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!heap_less(e->heap[i], e->heap[p])) break;
    heap_swap(e, i, p);
    i = p;
  }
}

static void heap_down(pe_engine *e, size_t i) {
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < e->heap_n && heap_less(e->heap[l], e->heap[m])) m = l;
    if (r < e->heap_n && heap_less(e->heap[r], e->heap[m])) m = r;
    if (m == i) break;
    heap_swap(e, i, m);
    i = m;
  }
}

void pe_timer_cancel(pe_engine *e, pe_timer *t) {
  if (t->idx == SIZE_MAX) return;
  size_t i = t->idx;
  /* An armed timer knows its slot: nothing else finds it in the heap. */
  PARLEY_ASSERT(i < e->heap_n && e->heap[i] == t);
  e->heap_n--;
  if (i != e->heap_n) {
    e->heap[i] = e->heap[e->heap_n];
    e->heap[i]->idx = i;
    heap_down(e, i);
    heap_up(e, i);
  }
  t->idx = SIZE_MAX;
}

/* Arms (or re-arms) t at `at`. The heap only grows to the number of timer
 * owners (sends, commits, conversations), each of which is bounded. */
int pe_timer_set(pe_engine *e, pe_timer *t, uint64_t at) {
  PARLEY_ASSERT(t->idx == SIZE_MAX || (t->idx < e->heap_n && e->heap[t->idx] == t));
  if (t->idx != SIZE_MAX) {
    t->at = at;
    heap_down(e, t->idx);
    heap_up(e, t->idx);
    return 0;
  }
  if (pu_reserve(&e->heap, &e->heap_cap, e->heap_n, sizeof *e->heap, 64)) return PARLEY_ENOMEM;
  t->at = at;
  t->idx = e->heap_n;
  e->heap[e->heap_n++] = t;
  heap_up(e, t->idx);
  return 0;
}

#define CONTAINER(ptr, type, member) \
  ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* -------------------------------------------------------------- output */

void pe_out_write(pe_engine *e, const uint8_t *data, size_t len) {
  pe_out *o = malloc(sizeof *o);
  uint8_t *buf = o ? malloc(e->headroom + len + 1) : NULL;
  if (!buf) {
    /* Losing an outbound frame is survivable: sends and commits are
     * retried by their timers and ACKs are cumulative. */
    free(o);
    pe_peer_error(e, PARLEY_ENOMEM, "out of memory queueing an outbound frame");
    return;
  }
  memcpy(buf + e->headroom, data, len);
  o->buf = buf;
  o->len = len;
  o->next = NULL;
  if (e->out_tail) e->out_tail->next = o;
  else e->out_head = o;
  e->out_tail = o;
  e->out_bytes += len;
  e->last_tx = e->now;
}

void pe_emit(pe_engine *e, const pw_frame *f) {
  size_t n = parley__v1__frame__get_packed_size(f);
  pe_out *o = malloc(sizeof *o);
  uint8_t *buf = o ? malloc(e->headroom + n + 1) : NULL;
  if (!buf) {
    free(o);
    pe_peer_error(e, PARLEY_ENOMEM, "out of memory encoding an outbound frame");
    return;
  }
  parley__v1__frame__pack(f, buf + e->headroom);
  o->buf = buf;
  o->len = n;
  o->next = NULL;
  if (e->out_tail) e->out_tail->next = o;
  else e->out_head = o;
  e->out_tail = o;
  e->out_bytes += n;
  e->last_tx = e->now;
}

static void out_clear(pe_engine *e) {
  pe_out *o = e->out_head;
  while (o) {
    pe_out *n = o->next;
    free(o->buf);
    free(o);
    o = n;
  }
  e->out_head = e->out_tail = NULL;
  e->out_bytes = 0;
}

/* ------------------------------------------------------- conversations */

pe_conv *pe_conv_find(const pe_engine *e, const char *id) {
  if (!e->tab_cap || !id) return NULL;
  size_t mask = e->tab_cap - 1;
  for (size_t i = pu_hash_str(id) & mask;; i = (i + 1) & mask) {
    pe_conv *c = e->tab[i];
    if (!c) return NULL;
    if (strcmp(c->id, id) == 0) return c;
  }
}

static int tab_grow(pe_engine *e) {
  size_t ncap = e->tab_cap ? e->tab_cap * 2 : 64;
  pe_conv **nt = calloc(ncap, sizeof *nt);
  if (!nt) return PARLEY_ENOMEM;
  for (size_t k = 0; k < e->tab_cap; k++) {
    pe_conv *c = e->tab[k];
    if (!c) continue;
    size_t i = pu_hash_str(c->id) & (ncap - 1);
    while (nt[i]) i = (i + 1) & (ncap - 1);
    nt[i] = c;
  }
  free(e->tab);
  e->tab = nt;
  e->tab_cap = ncap;
  return 0;
}

/* Finds or creates a conversation; id must already be validated. NULL
 * when memory or the conversation ceiling is exhausted. */
pe_conv *pe_conv_get(pe_engine *e, const char *id) {
  pe_conv *c = pe_conv_find(e, id);
  if (c) return c;
  if (e->n_conv >= PE_MAX_CONVERSATIONS) return NULL;
  if ((e->n_conv + 1) * 2 > e->tab_cap && tab_grow(e) != 0) return NULL;
  c = calloc(1, sizeof *c);
  if (!c || !(c->id = dup_str(id))) {
    free(c);
    return NULL;
  }
  c->next = 1;
  c->timer.idx = SIZE_MAX;
  c->timer.kind = T_CONV;
  size_t mask = e->tab_cap - 1;
  size_t i = pu_hash_str(id) & mask;
  while (e->tab[i]) i = (i + 1) & mask;
  e->tab[i] = c;
  e->n_conv++;
  return c;
}

static void queue_item_from_wire(const Parley__V1__QueueItem *w, parley_queue_item *o) {
  o->conversation = w->conversation;
  o->queue = w->queue;
  o->customer = w->customer;
  o->note = w->note;
  o->since_ms = w->since_ms;
  o->last_seq = w->last_seq;
  o->locale = w->locale;
}

static void on_queue_result(pe_engine *e, const Parley__V1__QueueResult *q) {
  if (!e->hooks.queue) return;
  parley_queue_item *items = q->n_items ? calloc(q->n_items, sizeof *items) : NULL;
  if (q->n_items && !items) {
    pe_peer_error(e, PARLEY_ENOMEM, "out of memory converting QueueResult");
    return;
  }
  for (size_t i = 0; i < q->n_items; i++) queue_item_from_wire(q->items[i], &items[i]);
  e->hooks.queue(e->hooks.ud, items, q->n_items, false, false);
  free(items);
}

static void on_queue_update(pe_engine *e, const Parley__V1__QueueUpdate *q) {
  if (!q->item) {
    pe_peer_error(e, PARLEY_EPROTOCOL, "QueueUpdate without an item");
    return;
  }
  parley_queue_item it;
  queue_item_from_wire(q->item, &it);
  if (e->hooks.queue) e->hooks.queue(e->hooks.ud, &it, 1, true, q->removed);
}

int pe_engine_open(pe_engine *e, const char *conversation, const char *customer,
                   const char *locale, const uint8_t *msg_id, void *send_ud,
                   uint64_t now) {
  /* Only bots open conversations this way; a customer opens one by
   * sending its first message, and the gateway would refuse the action
   * from anyone else anyway: saying so here names the mistake. */
  if (!e || e->role != PARLEY_ROLE_BOT) return PARLEY_EINVAL;
  parley_action a = {.kind = PARLEY_ACTION_OPEN, .customer = customer,
                     .locale = locale && locale[0] ? locale : NULL};
  return pe_engine_action(e, conversation, &a, msg_id, 0, send_ud, now);
}

int pe_engine_queue(pe_engine *e, const char *queue, uint64_t now) {
  if (!e) return PARLEY_EINVAL;
  e->now = now;
  if (e->state != ST_READY) return PARLEY_EDISCONNECTED;
  Parley__V1__QueueRequest q = PARLEY__V1__QUEUE_REQUEST__INIT;
  q.request_id = ++e->next_request_id;
  q.queue = pe_str(queue);
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_QUEUE_REQUEST;
  f.queue_request = &q;
  pe_emit(e, &f);
  return 0;
}

/* ---------------------------------------------------------- connection */

static void write_hello(pe_engine *e) {
  Parley__V1__Hello h = PARLEY__V1__HELLO__INIT;
  h.min_version = PARLEY_PROTOCOL_VERSION;
  h.max_version = PARLEY_PROTOCOL_VERSION;
  h.principal = pe_str(e->principal);
  h.token = pe_str(e->token);
  h.role = (Parley__V1__Role)e->role;
  h.device = pe_str(e->device);
  h.locale = pe_str(e->locale);
  h.n_queues = e->n_queues;
  h.queues = e->queues;
  char client[48];
  snprintf(client, sizeof client, "parley-c/%s", parley_version());
  h.client = client;
  /* Resume cursors: for customers and agents the highest applied seq; for
   * bots the committed watermark (uncommitted events must come again).
   * Kept to half a frame: a conversation left out is resumed from the
   * gateway's watermark, and its duplicates are dropped here. */
  size_t budget = e->max_frame_out / 2, used = 0;
  Parley__V1__ResumeCursor *rc = NULL, **rp = NULL;
  size_t n = 0;
  if (e->n_conv) {
    /* Each cursor costs at least 17 bytes, so no more fit the budget. */
    size_t want = e->n_conv < budget / 17 + 1 ? e->n_conv : budget / 17 + 1;
    rc = calloc(want, sizeof *rc);
    rp = calloc(want, sizeof *rp);
    for (size_t i = 0; rc && rp && i < e->tab_cap && n < want; i++) {
      pe_conv *c = e->tab[i];
      if (!c) continue;
      uint64_t after = e->bot ? c->committed : c->next - 1;
      if (after == 0) continue;
      size_t cost = strlen(c->id) + 16; /* tags, lengths, a 10-byte varint */
      if (used + cost > budget) break;
      used += cost;
      parley__v1__resume_cursor__init(&rc[n]);
      rc[n].conversation = c->id;
      rc[n].after_seq = after;
      rp[n] = &rc[n];
      n++;
    }
  }
  h.n_resume = rp ? n : 0;
  h.resume = rp;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_HELLO;
  f.hello = &h;
  pe_emit(e, &f);
  free(rc);
  free(rp);
}

int pe_engine_on_connect(pe_engine *e, uint64_t now) {
  if (!e) return PARLEY_EINVAL;
  e->now = now;
  if (e->state != ST_DOWN) return PARLEY_ESTATE;
  if (e->closing) return PARLEY_ESHUTDOWN;
  if (e->ever_connected) e->stats.reconnects++;
  e->ever_connected = true;
  e->conn_no++;
  e->state = ST_HANDSHAKE;
  e->should_close = false;
  e->close_code = 0;
  e->connected_at = e->last_rx = e->last_tx = now;
  e->hb = e->heartbeat;
  e->reconnect_at = 0;
  out_clear(e);
  write_hello(e);
  return 0;
}

/* The one reconnect backoff of the SDK. Full jitter over
 * min(reconnect_max, reconnect_min * 2^n), n the sessions lost and attempts
 * failed since the last Welcome, never under a retry-after the gateway
 * sent. next_node: the client moves on to a node of its list that has not
 * failed yet this round, so a short jitter below reconnect_min suffices and
 * n does not grow. */
static void draw_reconnect(pe_engine *e, bool next_node) {
  if (e->closing) {
    e->reconnect_at = UINT64_MAX;
    return;
  }
  uint64_t wait;
  if (next_node) {
    wait = pe_rng_below(e, e->reconnect_min);
  } else {
    wait = pe_rng_below(e, pe_exp_window(e->reconnect_min, e->reconnect_n, e->reconnect_max));
    if (e->reconnect_n < 64) e->reconnect_n++;
  }
  if (wait < e->retry_after) wait = e->retry_after;
  e->retry_after = 0;
  e->reconnect_at = pe_add_sat(e->now, wait);
}

/* Everything that was on the wire is lost with the connection: sends and
 * commits go back to their queues (written again after the next Welcome),
 * fetches are forgotten, and the reconnect time is drawn. */
static void go_down(pe_engine *e) {
  if (e->state == ST_DOWN) return;
  e->state = ST_DOWN;
  out_clear(e);
  for (pe_send *s = e->g_head; s; s = s->gnext) {
    s->state = Q_QUEUED;
    s->unanswered = 0; /* answers died with the connection */
    s->stale_owed = 0;
    s->wire_attempts = 0;
    pe_timer_set(e, &s->timer, s->deadline_at);
  }
  pe_done_forget_owed(e);
  for (pe_commit *k = e->c_head; k; k = k->gnext) {
    k->state = Q_QUEUED;
    k->wire_attempts = 0;
    pe_timer_set(e, &k->timer, k->deadline_at);
    pe_commit_wake(e, k->conv); /* written again after the next Welcome */
  }
  for (size_t i = 0; i < e->tab_cap; i++) {
    pe_conv *c = e->tab[i];
    if (!c) continue;
    c->fetching = false;
    pe_timer_cancel(e, &c->timer);
  }
  e->ack_pending = 0;
  e->ack_due = 0;
  draw_reconnect(e, false);
}

void pe_engine_on_disconnect(pe_engine *e, uint64_t now) {
  if (!e) return;
  e->now = now;
  go_down(e);
}

void pe_engine_on_connect_failed(pe_engine *e, uint64_t now, bool next_node) {
  if (!e) return;
  e->now = now;
  go_down(e); /* nothing to do unless it was up, which a failed attempt was not */
  draw_reconnect(e, next_node);
}

static void want_close(pe_engine *e, int code) {
  if (!e->should_close) {
    e->should_close = true;
    e->close_code = code;
  }
}

static void on_welcome(pe_engine *e, const Parley__V1__Welcome *w) {
  if (e->state != ST_HANDSHAKE) {
    pe_peer_error(e, PARLEY_EPROTOCOL, "Welcome on an established session");
    return;
  }
  if (w->version != PARLEY_PROTOCOL_VERSION) {
    pe_peer_error(e, PARLEY_EVERSION, "gateway chose protocol version %u; this client speaks %d",
               w->version, PARLEY_PROTOCOL_VERSION);
    want_close(e, pw_close_code(PARLEY__V1__ERROR_CODE__ERROR_UNSUPPORTED_VERSION));
    go_down(e);
    return;
  }
  e->state = ST_READY;
  e->reconnect_n = 0;
  e->retry_after = 0;
  if (w->heartbeat_ms) e->hb = w->heartbeat_ms;
  e->max_frame_out = w->max_frame_bytes ? w->max_frame_bytes : PW_DEFAULT_MAX_FRAME;
  e->window = w->window;
  for (size_t i = 0; i < w->n_cursors; i++) {
    const Parley__V1__ResumeCursor *rc = w->cursors[i];
    if (!pw_valid_conversation(rc->conversation) || rc->after_seq == UINT64_MAX) {
      pe_peer_error(e, PARLEY_EPROTOCOL, "Welcome cursor '%s' after %llu is invalid",
                 rc->conversation, (unsigned long long)rc->after_seq);
      continue;
    }
    pe_conv *c = pe_conv_get(e, rc->conversation);
    if (!c) continue;
    /* Never move backwards: what was applied here stays applied. */
    if (rc->after_seq + 1 > c->next) {
      c->next = rc->after_seq + 1;
      c->last_known = false;
      pe_held_trim(e, c);
    }
  }
  /* ACKs first (they open the gateway's window), then every pending send
   * in the order it was made, then the commits that may go. An ACK written
   * on the last session may have died with it, so those are said again;
   * older ones were said again on that session already. */
  uint64_t prev = e->ready_conn;
  e->ready_conn = e->conn_no;
  for (size_t i = 0; prev && pe_may_ack(e) && i < e->tab_cap; i++) {
    pe_conv *c = e->tab[i];
    if (c && c->ack_target > 0 && c->ack_conn == prev) {
      c->reack = true;
      pe_ack_mark(e, c);
    }
  }
  pe_ack_flush(e);
  for (pe_send *s = e->g_head; s;) {
    pe_send *nx = s->gnext;
    if (s->conv->sq_head == s) pe_conv_pump(e, s->conv);
    s = nx;
  }
  pe_flush_commits(e);
  for (size_t i = 0; i < e->tab_cap; i++) {
    pe_conv *c = e->tab[i];
    if (c) {
      pe_conv_drain(e, c);
      pe_conv_gap_check(e, c);
    }
  }
  if (e->hooks.ready) e->hooks.ready(e->hooks.ud);
}

static void on_error_frame(pe_engine *e, const Parley__V1__Error *er) {
  int st = pw_status_from_code(er->code);
  /* An Error frame that names no error is itself a protocol error: the
   * application is always handed a failure status. */
  if (st == 0) st = PARLEY_EPROTOCOL;
  if (er->retry_after_ms) e->retry_after = er->retry_after_ms;
  if (er->client_msg_id.len == PARLEY_MSG_ID_LEN && er->retry_after_ms &&
      pe_code_retryable(er->code)) {
    pe_send *s = pe_send_lookup(e, er->conversation, er->client_msg_id.data);
    if (s && s->state != Q_QUEUED) {
      s->state = Q_RETRY;
      uint64_t at = pe_add_sat(e->now, er->retry_after_ms);
      pe_timer_set(e, &s->timer, at < s->deadline_at ? at : s->deadline_at);
    }
  } else if (er->client_msg_id.len == PARLEY_MSG_ID_LEN && !er->fatal &&
             !pe_code_retryable(er->code)) {
    /* A send the gateway refused to decode (INVALID): writing the same
     * bytes again would be refused again, so it fails now. */
    pe_send *s = pe_send_lookup(e, er->conversation, er->client_msg_id.data);
    if (s && s->state == Q_WIRE) {
      pe_send_finish(e, s, st, 0, 0, false, er->message[0] ? er->message : parley_strerror(st));
      return;
    }
  }
  pe_peer_error(e, st, "gateway error %d%s: %s%s%s", (int)er->code, er->fatal ? " (fatal)" : "",
             er->message, er->conversation[0] ? " conversation " : "", er->conversation);
}

static void write_pong(pe_engine *e, const Parley__V1__Ping *p) {
  Parley__V1__Pong po = PARLEY__V1__PONG__INIT;
  po.nonce = p->nonce;
  po.time_ms = p->time_ms;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_PONG;
  f.pong = &po;
  pe_emit(e, &f);
}

static void check_close_done(pe_engine *e);

int pe_engine_on_input(pe_engine *e, const uint8_t *data, size_t len,
                       uint64_t now) {
  if (!e) return PARLEY_EINVAL;
  e->now = now;
  if (e->state == ST_DOWN) return PARLEY_EDISCONNECTED;
  e->last_rx = now;
  if (len > e->max_frame_in) {
    pe_peer_error(e, PARLEY_ETOOBIG, "inbound frame of %zu bytes exceeds max_frame_bytes=%zu",
               len, e->max_frame_in);
    return PARLEY_ETOOBIG;
  }
  pw_frame *f = NULL;
  const char *why = NULL;
  int rc = pw_decode(data, len, e->max_frame_in, &f, &why);
  if (rc != 0) {
    pe_peer_error(e, rc, "inbound frame refused (%zu bytes): %s", len, why ? why : "?");
    return rc;
  }
  if (e->state == ST_HANDSHAKE && f->body_case != PARLEY__V1__FRAME__BODY_WELCOME &&
      f->body_case != PARLEY__V1__FRAME__BODY_ERROR &&
      f->body_case != PARLEY__V1__FRAME__BODY_PING &&
      f->body_case != PARLEY__V1__FRAME__BODY_PONG) {
    pe_peer_error(e, PARLEY_EPROTOCOL, "frame type %d before Welcome", (int)f->body_case);
    pw_frame_free(f);
    return PARLEY_EPROTOCOL;
  }
  rc = 0;
  switch (f->body_case) {
  case PARLEY__V1__FRAME__BODY_WELCOME: on_welcome(e, f->welcome); break;
  case PARLEY__V1__FRAME__BODY_PING: write_pong(e, f->ping); break;
  case PARLEY__V1__FRAME__BODY_PONG: break;
  case PARLEY__V1__FRAME__BODY_SEND_ACK: pe_on_send_ack(e, f->send_ack); break;
  case PARLEY__V1__FRAME__BODY_DELIVER: rc = pe_on_deliver(e, f->deliver); break;
  case PARLEY__V1__FRAME__BODY_FETCH_RESULT: rc = pe_on_fetch_result(e, f->fetch_result); break;
  case PARLEY__V1__FRAME__BODY_COMMIT_RESULT: pe_on_commit_result(e, f->commit_result); break;
  case PARLEY__V1__FRAME__BODY_ASSIGN: pe_on_assign(e, f->assign); break;
  case PARLEY__V1__FRAME__BODY_REVOKE: pe_on_revoke(e, f->revoke); break;
  case PARLEY__V1__FRAME__BODY_QUEUE_RESULT: on_queue_result(e, f->queue_result); break;
  case PARLEY__V1__FRAME__BODY_QUEUE_UPDATE: on_queue_update(e, f->queue_update); break;
  case PARLEY__V1__FRAME__BODY_ERROR: on_error_frame(e, f->error); break;
  default:
    /* Hello, Send, Ack, Fetch, Commit and QueueRequest only travel from
     * client to gateway. */
    pe_peer_error(e, PARLEY_EPROTOCOL, "frame type %d is not sent by a gateway",
               (int)f->body_case);
    rc = PARLEY_EPROTOCOL;
    break;
  }
  pw_frame_free(f);
  check_close_done(e);
  return rc;
}

/* --------------------------------------------------------------- ticks */

static uint64_t ping_due(const pe_engine *e) { return pe_add_sat(e->last_tx, e->hb); }
/* The peer is dead after two silent intervals; a handshake gets two
 * intervals in all, whatever arrives meanwhile (a Ping is no Welcome). */
static uint64_t dead_due(const pe_engine *e) {
  uint64_t t = pe_add_sat(e->last_rx, 2 * e->hb);
  if (e->state == ST_HANDSHAKE) {
    uint64_t h = pe_add_sat(e->connected_at, 2 * e->heartbeat);
    if (h < t) t = h;
  }
  return t;
}

uint64_t pe_engine_deadline(const pe_engine *e) {
  if (!e) return UINT64_MAX;
  uint64_t d = e->heap_n ? e->heap[0]->at : UINT64_MAX;
  if (e->state != ST_DOWN && !e->should_close) {
    uint64_t t = dead_due(e);
    if (t < d) d = t;
  }
  if (e->state == ST_READY && !e->should_close) {
    uint64_t t = ping_due(e);
    if (t < d) d = t;
    if (e->ack_due && e->ack_due < d) d = e->ack_due;
  }
  if (e->closing && !e->should_close && e->close_deadline < d) d = e->close_deadline;
  return d;
}

static void check_close_done(pe_engine *e) {
  if (!e->closing || e->should_close) return;
  if (e->n_sends == 0 && e->n_commits == 0) {
    pe_ack_flush(e);
    want_close(e, PE_CLOSE_NORMAL);
    return;
  }
  if (e->now >= e->close_deadline || e->state == ST_DOWN) {
    /* Draining ran out of time: every pending send and commit gets its
     * result now, so the application hears about each exactly once. */
    pe_ack_flush(e);
    want_close(e, PE_CLOSE_NORMAL);
    while (e->g_head)
      pe_send_finish(e, e->g_head, PARLEY_ESHUTDOWN, 0, 0, false, "closed before the send was acknowledged");
    while (e->c_head) pe_commit_finish(e, e->c_head, PARLEY_ESHUTDOWN, false, 0);
  }
}

int pe_engine_on_tick(pe_engine *e, uint64_t now) {
  if (!e) return PARLEY_EINVAL;
  e->now = now;
  /* Each timer is popped before it runs, and a handler re-arms only for a
   * time after now, so this loop ends. */
  while (e->heap_n && e->heap[0]->at <= now) {
    pe_timer *t = e->heap[0];
    pe_timer_cancel(e, t);
    switch (t->kind) {
    case T_SEND: pe_send_timer(e, CONTAINER(t, pe_send, timer)); break;
    case T_CONV: pe_conv_timer(e, CONTAINER(t, pe_conv, timer)); break;
    case T_COMMIT: pe_commit_timer(e, CONTAINER(t, pe_commit, timer)); break;
    default: break;
    }
  }
  if (e->state != ST_DOWN && !e->should_close && now >= dead_due(e)) {
    if (e->state == ST_HANDSHAKE)
      pe_peer_error(e, PARLEY_ETIMEOUT, "no Welcome %llu ms after connecting",
                 (unsigned long long)(now - e->connected_at));
    else
      pe_peer_error(e, PARLEY_ETIMEOUT, "gateway silent: nothing received for %llu ms",
                 (unsigned long long)(now - e->last_rx));
    want_close(e, PE_CLOSE_DEAD_PEER);
    go_down(e);
  }
  if (e->state == ST_READY) {
    if (e->ack_due && now >= e->ack_due) pe_ack_flush(e);
    if (now >= ping_due(e)) {
      Parley__V1__Ping p = PARLEY__V1__PING__INIT;
      p.nonce = ++e->ping_nonce;
      p.time_ms = (int64_t)now;
      pw_frame f = PARLEY__V1__FRAME__INIT;
      f.body_case = PARLEY__V1__FRAME__BODY_PING;
      f.ping = &p;
      pe_emit(e, &f);
    }
  }
  check_close_done(e);
  return 0;
}

/* ---------------------------------------------------- output and state */

bool pe_engine_take_output(pe_engine *e, const uint8_t **data, size_t *len) {
  if (!e) return false;
  if (e->lent) {
    free(e->lent->buf);
    free(e->lent);
    e->lent = NULL;
  }
  pe_out *o = e->out_head;
  if (!o) return false;
  e->out_head = o->next;
  if (!e->out_head) e->out_tail = NULL;
  e->out_bytes -= o->len;
  e->lent = o;
  *data = o->buf + e->headroom;
  *len = o->len;
  return true;
}

bool pe_engine_should_close(const pe_engine *e, int *code) {
  if (!e) {
    if (code) *code = 0;
    return false;
  }
  if (code) *code = e->should_close ? e->close_code : 0;
  return e->should_close;
}

uint64_t pe_engine_reconnect_at(const pe_engine *e) { return e ? e->reconnect_at : UINT64_MAX; }

bool pe_engine_ready(const pe_engine *e) { return e && e->state == ST_READY; }

int pe_engine_close(pe_engine *e, uint64_t now, uint64_t deadline) {
  if (!e) return PARLEY_EINVAL;
  e->now = now;
  e->closing = true;
  e->close_deadline = deadline;
  pe_ack_flush(e);
  check_close_done(e);
  return 0;
}

void pe_engine_stats(const pe_engine *e, parley_client_stats *out) {
  if (!e) {
    memset(out, 0, sizeof *out);
    return;
  }
  *out = e->stats;
  out->outbox_size = e->n_sends + e->n_commits;
  out->reorder_events = e->reorder_events;
  out->reorder_bytes = e->reorder_bytes;
  out->buffered_bytes = e->outbox_bytes + e->commit_bytes + e->reorder_bytes + e->out_bytes;
}

/* ----------------------------------------------------- create and free */

static uint64_t pick(uint64_t v, uint64_t d) { return v ? v : d; }

pe_engine *pe_engine_new(const pe_config *cfg, const pe_hooks *hooks) {
  if (!cfg || !cfg->principal || !cfg->principal[0]) return NULL;
  pe_engine *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  e->principal = dup_str(cfg->principal);
  e->token = dup_str(cfg->token);
  e->device = dup_str(cfg->device ? cfg->device : cfg->principal);
  e->locale = dup_str(cfg->locale);
  bool ok = e->principal && e->device && (!cfg->token || e->token) &&
            (!cfg->locale || e->locale);
  if (ok && cfg->n_queues) {
    e->queues = calloc(cfg->n_queues, sizeof *e->queues);
    ok = e->queues != NULL;
    for (size_t i = 0; ok && i < cfg->n_queues; i++) {
      e->queues[i] = dup_str(cfg->queues[i] ? cfg->queues[i] : "");
      ok = e->queues[i] != NULL;
      e->n_queues = i + 1;
    }
  }
  if (!ok) {
    pe_engine_free(e);
    return NULL;
  }
  e->role = cfg->role;
  e->bot = cfg->role == PARLEY_ROLE_BOT;
  e->manual_ack = cfg->manual_ack || e->bot;
  if (hooks) e->hooks = *hooks;
  e->headroom = cfg->out_headroom;
  const parley_tuning *t = &cfg->tuning;
  e->ack_timeout = pick(t->ack_timeout_ms, D_ACK_TIMEOUT);
  e->retry_max = pick(t->retry_max_ms, D_RETRY_MAX);
  if (e->retry_max < e->ack_timeout) e->retry_max = e->ack_timeout;
  e->max_attempts = (uint32_t)pick(t->max_attempts, D_MAX_ATTEMPTS);
  e->send_deadline = pick(t->send_deadline_ms, D_SEND_DEADLINE);
  e->outbox_max = (uint32_t)pick(t->outbox_max, D_OUTBOX_MAX);
  e->ack_batch_n = (uint32_t)pick(t->ack_batch_n, D_ACK_BATCH_N);
  e->ack_batch_ms = pick(t->ack_batch_ms, D_ACK_BATCH_MS);
  e->heartbeat = pick(t->heartbeat_ms, D_HEARTBEAT);
  e->reorder_max = (uint32_t)pick(t->reorder_max, D_REORDER_MAX);
  e->reorder_max_bytes = pick(t->reorder_max_bytes, D_REORDER_BYTES);
  e->gap_timeout = pick(t->gap_timeout_ms, D_GAP_TIMEOUT);
  e->fetch_page = (uint32_t)pick(t->fetch_page, D_FETCH_PAGE);
  e->reconnect_min = pick(t->reconnect_min_ms, D_RECONNECT_MIN);
  e->reconnect_max = pick(t->reconnect_max_ms, D_RECONNECT_MAX);
  if (e->reconnect_max < e->reconnect_min) e->reconnect_max = e->reconnect_min;
  e->max_frame_in = pick(t->max_frame_bytes, PW_DEFAULT_MAX_FRAME);
  e->outbox_max_bytes = pick(cfg->outbox_max_bytes, D_OUTBOX_BYTES);
  e->max_frame_out = PW_DEFAULT_MAX_FRAME;
  e->hb = e->heartbeat;
  /* Without a seed the jitter still must differ between engines (so a
   * fleet does not reconnect in lockstep) but the engine reads no clock:
   * mix the engine's address with a process-wide counter. */
  static uint64_t counter;
  uint64_t seed = t->seed ? t->seed : ((uint64_t)(uintptr_t)e ^ (++counter * 0xD1B54A32D192ED03ull));
  pu_rng_seed(&e->rng, seed);
  pu_rng_seed(&e->id_rng, seed ^ 0xA0761D6478BD642Full);
  return e;
}

void pe_engine_free(pe_engine *e) {
  if (!e) return;
  while (e->g_head) {
    pe_send *s = e->g_head;
    e->g_head = s->gnext;
    free(s->frame);
    free(s);
  }
  while (e->c_head) {
    pe_commit *k = e->c_head;
    e->c_head = k->gnext;
    free(k->item);
    free(k);
  }
  for (size_t i = 0; i < e->tab_cap; i++) {
    pe_conv *c = e->tab[i];
    if (!c) continue;
    pe_held_clear(e, c);
    free(c->id);
    free(c);
  }
  free(e->tab);
  free(e->done_spill);
  free(e->heap);
  out_clear(e);
  if (e->lent) {
    free(e->lent->buf);
    free(e->lent);
  }
  for (size_t i = 0; i < e->n_queues; i++) free(e->queues[i]);
  free(e->queues);
  free(e->principal);
  free(e->token);
  free(e->device);
  free(e->locale);
  free(e);
}
