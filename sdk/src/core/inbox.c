/* The engine's inbox: inbound events and their acknowledgement.
 *
 * Per conversation the events are applied strictly in seq order, exactly
 * once: duplicates are dropped (and acknowledged again), early events wait
 * in a bounded reorder buffer sorted by seq, and a gap that stays open is
 * fetched. Frames that contradict the applied stream are refused whole.
 * Customers and agents acknowledge with cumulative, coalesced ACKs; bots
 * only through commits (outbox.c). Assignments and revocations of bot
 * conversations move the expected seq.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <parley/error.h>

#include "core/convert.h"
#include "core/engine_int.h"

/* ------------------------------------------------------- reorder buffer */

/* A position in the buffer: block b, entry i. b == n_hb is the end. */
typedef struct hpos {
  size_t b, i;
} hpos;

static const pe_held *held_first(const pe_conv *c) {
  return c->n_held ? &c->hb[0]->e[0] : NULL;
}

/* The first held entry with seq >= s: a binary search over the blocks'
 * last seqs, then one within the block. */
static hpos held_lower(const pe_conv *c, uint64_t s) {
  size_t lo = 0, hi = c->n_hb;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    const pe_hblock *b = c->hb[mid];
    if (b->e[b->n - 1].seq < s) lo = mid + 1;
    else hi = mid;
  }
  hpos p = {lo, 0};
  if (lo == c->n_hb) return p;
  const pe_hblock *b = c->hb[lo];
  size_t l = 0, h = b->n;
  while (l < h) {
    size_t mid = l + (h - l) / 2;
    if (b->e[mid].seq < s) l = mid + 1;
    else h = mid;
  }
  p.i = l;
  return p;
}

static pe_held *held_at(const pe_conv *c, hpos p) {
  return p.b < c->n_hb ? &c->hb[p.b]->e[p.i] : NULL;
}

static const pe_held *held_find(const pe_conv *c, uint64_t s) {
  const pe_held *h = held_at(c, held_lower(c, s));
  return h && h->seq == s ? h : NULL;
}

/* Takes the entry at p out of the buffer (its data is the caller's). */
static pe_held held_take(pe_engine *e, pe_conv *c, hpos p) {
  PARLEY_ASSERT(p.b < c->n_hb && p.i < c->hb[p.b]->n);
  pe_hblock *b = c->hb[p.b];
  pe_held h = b->e[p.i];
  /* The engine's totals count every held entry of every conversation. */
  PARLEY_ASSERT(c->n_held > 0 && e->reorder_events > 0 && e->reorder_bytes >= h.len);
  memmove(&b->e[p.i], &b->e[p.i + 1], (b->n - p.i - 1) * sizeof *b->e);
  b->n--;
  c->n_held--;
  e->reorder_bytes -= h.len;
  e->reorder_events--;
  if (b->n == 0) {
    free(b);
    memmove(&c->hb[p.b], &c->hb[p.b + 1], (c->n_hb - p.b - 1) * sizeof *c->hb);
    c->n_hb--;
  }
  if (c->n_held == 0) {
    /* Most conversations hold nothing most of the time: give the block
     * list back rather than keep it per conversation. */
    free(c->hb);
    c->hb = NULL;
    c->n_hb = c->cap_hb = 0;
  }
  return h;
}

static void held_remove_at(pe_engine *e, pe_conv *c, hpos p) {
  pe_held h = held_take(e, c, p);
  free(h.data);
}

/* Room for one more block pointer. */
static bool hb_reserve(pe_conv *c) {
  if (c->n_hb < c->cap_hb) return true;
  size_t ncap = c->cap_hb ? c->cap_hb * 2 : 4;
  pe_hblock **nb = realloc(c->hb, ncap * sizeof *nb);
  if (!nb) return false;
  c->hb = nb;
  c->cap_hb = ncap;
  return true;
}

/* Inserts h at p (the position held_lower gave for h.seq). false: out of
 * memory, nothing changed. */
static bool held_insert(pe_conv *c, hpos p, const pe_held *h) {
  if (c->n_hb == 0) {
    if (!hb_reserve(c)) return false;
    pe_hblock *b = malloc(sizeof *b + 4 * sizeof b->e[0]);
    if (!b) return false;
    b->n = 0;
    b->cap = 4;
    c->hb[0] = b;
    c->n_hb = 1;
    p.b = 0;
    p.i = 0;
  } else if (p.b == c->n_hb) {
    p.b = c->n_hb - 1; /* after every held seq: the end of the last block */
    p.i = c->hb[p.b]->n;
  }
  pe_hblock *b = c->hb[p.b];
  if (b->n == PE_HELD_BLOCK) {
    /* Full: the upper half moves to a new block after it. */
    if (!hb_reserve(c)) return false;
    uint32_t half = PE_HELD_BLOCK / 2;
    pe_hblock *nb = malloc(sizeof *nb + PE_HELD_BLOCK * sizeof nb->e[0]);
    if (!nb) return false;
    nb->cap = PE_HELD_BLOCK;
    nb->n = b->n - half;
    memcpy(nb->e, &b->e[half], nb->n * sizeof nb->e[0]);
    b->n = half;
    memmove(&c->hb[p.b + 2], &c->hb[p.b + 1], (c->n_hb - p.b - 1) * sizeof *c->hb);
    c->hb[p.b + 1] = nb;
    c->n_hb++;
    if (p.i > half) {
      p.b++;
      p.i -= half;
      b = nb;
    }
  }
  if (b->n == b->cap) {
    uint32_t ncap = b->cap * 2 > PE_HELD_BLOCK ? PE_HELD_BLOCK : b->cap * 2;
    pe_hblock *gb = realloc(b, sizeof *gb + ncap * sizeof gb->e[0]);
    if (!gb) return false;
    gb->cap = ncap;
    c->hb[p.b] = b = gb;
  }
  PARLEY_ASSERT(p.i <= b->n && b->n < b->cap);
  memmove(&b->e[p.i + 1], &b->e[p.i], (b->n - p.i) * sizeof *b->e);
  b->e[p.i] = *h;
  b->n++;
  c->n_held++;
  /* Held seqs are unique and ascending within a block: held_lower's
   * binary search depends on it. */
  PARLEY_ASSERT(p.i == 0 || b->e[p.i - 1].seq < h->seq);
  PARLEY_ASSERT(p.i + 1 == b->n || b->e[p.i + 1].seq > h->seq);
  return true;
}

/* Drops held events below the conversation's next seq (after a cursor or
 * an assignment moved it). */
void pe_held_trim(pe_engine *e, pe_conv *c) {
  while (c->n_held && held_first(c)->seq < c->next) held_remove_at(e, c, (hpos){0, 0});
}

void pe_held_clear(pe_engine *e, pe_conv *c) {
  for (size_t b = 0; b < c->n_hb; b++) {
    for (size_t i = 0; i < c->hb[b]->n; i++) {
      e->reorder_bytes -= c->hb[b]->e[i].len;
      e->reorder_events--;
      free(c->hb[b]->e[i].data);
    }
    free(c->hb[b]);
  }
  free(c->hb);
  c->hb = NULL;
  c->n_hb = c->cap_hb = 0;
  c->n_held = 0;
}

/* ------------------------------------------------------------ acks */

bool pe_may_ack(const pe_engine *e) { return !e->bot; }

void pe_ack_mark(pe_engine *e, pe_conv *c) {
  if (!c->ack_dirty) {
    c->ack_dirty = true;
    c->dirty_next = e->dirty_head;
    e->dirty_head = c;
  }
}

/* Writes every pending cumulative ACK, several conversations per frame. */
void pe_ack_flush(pe_engine *e) {
  e->ack_pending = 0;
  e->ack_due = 0;
  if (e->state != ST_READY || !e->dirty_head) return;
  Parley__V1__AckEntry ents[PE_ACK_ENTRIES_MAX];
  Parley__V1__AckEntry *ptrs[PE_ACK_ENTRIES_MAX];
  size_t n = 0;
  pe_conv *c = e->dirty_head;
  e->dirty_head = NULL;
  while (c) {
    pe_conv *nx = c->dirty_next;
    c->ack_dirty = false;
    c->dirty_next = NULL;
    if (c->ack_target > 0 && (c->ack_target > c->ack_sent || c->reack)) {
      parley__v1__ack_entry__init(&ents[n]);
      ents[n].conversation = c->id;
      ents[n].up_to_seq = c->ack_target;
      ptrs[n] = &ents[n];
      n++;
      c->ack_sent = c->ack_target;
      c->ack_conn = e->conn_no;
    }
    c->reack = false;
    if (n == PE_ACK_ENTRIES_MAX || (!nx && n > 0)) {
      Parley__V1__Ack ack = PARLEY__V1__ACK__INIT;
      ack.n_entries = n;
      ack.entries = ptrs;
      pw_frame f = PARLEY__V1__FRAME__INIT;
      f.body_case = PARLEY__V1__FRAME__BODY_ACK;
      f.ack = &ack;
      pe_emit(e, &f);
      n = 0;
    }
    c = nx;
  }
}

/* The flush threshold never exceeds half the gateway's window, so a small
 * window cannot stall the stream waiting for the batch timer. */
static uint32_t ack_threshold(const pe_engine *e) {
  uint32_t n = e->ack_batch_n;
  if (e->window && e->window / 2 < n) n = e->window / 2 ? e->window / 2 : 1;
  PARLEY_ASSERT(n > 0 && (!e->window || n <= e->window));
  return n;
}

static void ack_note(pe_engine *e, pe_conv *c, uint64_t seq) {
  if (seq > c->ack_target) c->ack_target = seq;
  pe_ack_mark(e, c);
  if (e->ack_pending++ == 0 || !e->ack_due)
    e->ack_due = pe_add_sat(e->now, e->ack_batch_ms);
  if (e->ack_pending >= ack_threshold(e)) pe_ack_flush(e);
}

/* A duplicate arrived: the gateway did not see our ACK, so say it again. */
static void ack_again(pe_engine *e, pe_conv *c) {
  if (!pe_may_ack(e) || c->ack_target == 0) return;
  c->reack = true;
  pe_ack_mark(e, c);
  if (!e->ack_due) e->ack_due = pe_add_sat(e->now, e->ack_batch_ms);
}

/* ------------------------------------------------------------ inbound */

static void fetch_send(pe_engine *e, pe_conv *c, uint64_t from, uint64_t to) {
  Parley__V1__Fetch fe = PARLEY__V1__FETCH__INIT;
  fe.request_id = ++e->next_request_id;
  fe.conversation = c->id;
  fe.from_seq = from;
  fe.to_seq = to;
  fe.limit = e->fetch_page;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_FETCH;
  f.fetch = &fe;
  pe_emit(e, &f);
  c->fetching = true;
  c->fetch_req = fe.request_id;
  c->fetch_from = from;
  c->fetch_to = to;
  e->stats.gaps_fetched++;
  /* A fetch without an answer is asked again after the ACK timeout. */
  pe_timer_set(e, &c->timer, pe_add_sat(e->now, e->ack_timeout));
}

static bool conv_has_gap(const pe_conv *c) {
  return c->n_held > 0 || c->known_max >= c->next;
}

/* Fetches the first missing range of c now. */
static void conv_fetch(pe_engine *e, pe_conv *c) {
  if (e->state != ST_READY || c->fetching || !conv_has_gap(c)) return;
  uint64_t to = c->n_held ? held_first(c)->seq - 1 : c->known_max;
  fetch_send(e, c, c->next, to);
}

/* Arms the gap timer when c is missing events and nothing repairs them. */
void pe_conv_gap_check(pe_engine *e, pe_conv *c) {
  if (c->fetching) return;
  if (!conv_has_gap(c)) {
    pe_timer_cancel(e, &c->timer);
    return;
  }
  if (c->timer.idx == SIZE_MAX) pe_timer_set(e, &c->timer, pe_add_sat(e->now, e->gap_timeout));
}

void pe_conv_timer(pe_engine *e, pe_conv *c) {
  if (e->state != ST_READY) return; /* re-armed after the next Welcome */
  c->fetching = false;              /* a fetch timed out: ask again */
  conv_fetch(e, c);
}

/* Applies one event: advances next before the callback, so the
 * application may acknowledge it from inside. */
static void deliver_one(pe_engine *e, pe_conv *c, const Parley__V1__Event *ev) {
  c->next = ev->seq + 1;
  c->last_known = true;
  if (ev->client_msg_id.len == PARLEY_MSG_ID_LEN) {
    memcpy(c->last_id, ev->client_msg_id.data, PARLEY_MSG_ID_LEN);
    c->last_has_id = true;
  } else {
    c->last_has_id = false;
  }
  e->stats.events_in++;
  if (e->hooks.event) {
    pe_arena a = PE_ARENA_INIT;
    parley_event pev;
    if (pe_event_from_wire(&a, ev, &pev) == 0) e->hooks.event(e->hooks.ud, &pev);
    else pe_peer_error(e, PARLEY_ENOMEM, "out of memory converting event %s#%llu",
                    c->id, (unsigned long long)ev->seq);
    pe_arena_free(&a);
  }
  if (pe_may_ack(e) && !e->manual_ack) ack_note(e, c, ev->seq);
}

/* Delivers held events that have become consecutive. */
void pe_conv_drain(pe_engine *e, pe_conv *c) {
  pe_held_trim(e, c);
  while (c->n_held && held_first(c)->seq == c->next) {
    pe_held h = held_take(e, c, (hpos){0, 0});
    Parley__V1__Event *ev = parley__v1__event__unpack(NULL, h.len, h.data);
    free(h.data);
    if (!ev) {
      /* It was encoded by us a moment ago; this means memory ran out. */
      pe_peer_error(e, PARLEY_ENOMEM, "could not restore held event %s#%llu",
                 c->id, (unsigned long long)h.seq);
      break;
    }
    deliver_one(e, c, ev);
    parley__v1__event__free_unpacked(ev, NULL);
  }
  if (!c->n_held) {
    if (!c->fetching && c->known_max < c->next) pe_timer_cancel(e, &c->timer);
  }
}

static bool ids_differ(const Parley__V1__Event *ev, const uint8_t *id, bool has) {
  bool evh = ev->client_msg_id.len == PARLEY_MSG_ID_LEN;
  if (evh != has) return true;
  return has && memcmp(ev->client_msg_id.data, id, PARLEY_MSG_ID_LEN) != 0;
}

/* An event that contradicts what was applied or held: the same seq with
 * another message id, or a seq the engine cannot advance past. */
static const char *contradiction(const pe_conv *c, const Parley__V1__Event *ev) {
  if (ev->seq == UINT64_MAX) return "seq at the 2^64 limit";
  if (!c) return NULL;
  if (ev->seq + 1 == c->next && c->last_known &&
      ids_differ(ev, c->last_id, c->last_has_id))
    return "same seq as an applied event with another message id";
  const pe_held *h = held_find(c, ev->seq);
  if (h && ids_differ(ev, h->id, h->has_id))
    return "same seq as a held event with another message id";
  return NULL;
}

/* Holds an early event; when the buffer is full the event is dropped and
 * the missing range is fetched instead. */
static void conv_hold(pe_engine *e, pe_conv *c, const Parley__V1__Event *ev) {
  if (ev->seq > c->known_max) c->known_max = ev->seq;
  hpos p = held_lower(c, ev->seq);
  const pe_held *at = held_at(c, p);
  if (at && at->seq == ev->seq) {
    e->stats.duplicates_dropped++;
    return;
  }
  if (c->n_held >= e->reorder_max) {
    conv_fetch(e, c);
    return;
  }
  size_t n = parley__v1__event__get_packed_size(ev);
  if (e->reorder_bytes + n > e->reorder_max_bytes) {
    conv_fetch(e, c);
    return;
  }
  pe_held h;
  memset(&h, 0, sizeof h);
  h.data = malloc(n ? n : 1);
  if (!h.data) {
    conv_fetch(e, c);
    return;
  }
  parley__v1__event__pack(ev, h.data);
  h.seq = ev->seq;
  h.len = n;
  h.has_id = ev->client_msg_id.len == PARLEY_MSG_ID_LEN;
  if (h.has_id) memcpy(h.id, ev->client_msg_id.data, PARLEY_MSG_ID_LEN);
  if (!held_insert(c, p, &h)) {
    free(h.data);
    conv_fetch(e, c);
    return;
  }
  e->reorder_bytes += n;
  e->reorder_events++;
  pe_conv_gap_check(e, c);
}

/* Finds the conversation an inbound event belongs to; for bots only the
 * conversations assigned to this connection. NULL: drop the event. */
static pe_conv *inbound_conv(pe_engine *e, const Parley__V1__Event *ev, pe_conv *found) {
  pe_conv *c = found ? found : pe_conv_find(e, ev->conversation);
  if (e->bot) {
    if (c && c->assigned) return c;
    if (c && c->revoked) {
      e->stats.duplicates_dropped++;
      return NULL;
    }
    pe_peer_error(e, PARLEY_EPROTOCOL, "event %s#%llu for a conversation not assigned to this bot",
               ev->conversation, (unsigned long long)ev->seq);
    return NULL;
  }
  if (!c && !(c = pe_conv_get(e, ev->conversation))) {
    pe_peer_error(e, PARLEY_ENOMEM, "no room for conversation %s", ev->conversation);
    return NULL;
  }
  return c;
}

/* found: the conversation when the caller already looked it up. */
static void inbound_event(pe_engine *e, const Parley__V1__Event *ev, pe_conv *found) {
  pe_conv *c = inbound_conv(e, ev, found);
  if (!c) return;
  if (ev->seq < c->next) {
    /* Checked again here: an earlier event of the same frame may have
     * just been applied at this seq. */
    if (ev->seq + 1 == c->next && c->last_known &&
        ids_differ(ev, c->last_id, c->last_has_id))
      pe_peer_error(e, PARLEY_EPROTOCOL, "event %s#%llu repeated with another message id",
                 c->id, (unsigned long long)ev->seq);
    e->stats.duplicates_dropped++;
    ack_again(e, c);
    return;
  }
  if (ev->seq > c->next) {
    conv_hold(e, c, ev);
    return;
  }
  hpos p = held_lower(c, ev->seq);
  const pe_held *at = held_at(c, p);
  if (at && at->seq == ev->seq) held_remove_at(e, c, p);
  deliver_one(e, c, ev);
  pe_conv_drain(e, c);
  pe_conv_gap_check(e, c);
}

int pe_on_deliver(pe_engine *e, const Parley__V1__Deliver *d) {
  /* The whole frame is checked before anything is applied, so a frame
   * that contradicts the stream changes nothing. */
  /* The lookups of the check are kept for the first events, so each is
   * hashed once (conversations are never freed while the engine lives; one
   * not found yet is looked up again, an earlier event may create it). */
  enum { KEEP = 16 };
  pe_conv *found[KEEP];
  for (size_t i = 0; i < d->n_events; i++) {
    const Parley__V1__Event *ev = d->events[i];
    pe_conv *c = pe_conv_find(e, ev->conversation);
    if (i < KEEP) found[i] = c;
    const char *why = contradiction(c, ev);
    if (why) {
      pe_peer_error(e, PARLEY_EPROTOCOL, "Deliver dropped: event %s#%llu: %s",
                 ev->conversation, (unsigned long long)ev->seq, why);
      return PARLEY_EPROTOCOL;
    }
  }
  for (size_t i = 0; i < d->n_events; i++)
    inbound_event(e, d->events[i], i < KEEP ? found[i] : NULL);
  return 0;
}

int pe_on_fetch_result(pe_engine *e, const Parley__V1__FetchResult *r) {
  pe_conv *c = pe_conv_find(e, r->conversation);
  if (!c || !c->fetching || r->request_id != c->fetch_req) {
    if (c && r->request_id > 0 && r->request_id <= e->next_request_id)
      return 0; /* the answer to a fetch that timed out and was asked again */
    pe_peer_error(e, PARLEY_EPROTOCOL, "FetchResult for unknown request %llu (conversation '%s')",
               (unsigned long long)r->request_id, r->conversation);
    return PARLEY_EPROTOCOL;
  }
  if (r->error != PARLEY__V1__ERROR_CODE__ERROR_NONE) {
    pe_peer_error(e, pw_status_from_code(r->error), "Fetch of %s [%llu..%llu] refused",
               c->id, (unsigned long long)c->fetch_from, (unsigned long long)c->fetch_to);
    c->fetching = false;
    pe_timer_cancel(e, &c->timer);
    pe_conv_gap_check(e, c);
    return 0;
  }
  const char *why = NULL;
  uint64_t expect = c->fetch_from;
  for (size_t i = 0; i < r->n_events && !why; i++) {
    const Parley__V1__Event *ev = r->events[i];
    if (strcmp(ev->conversation, c->id) != 0) why = "event of another conversation";
    else if (ev->seq != expect) why = "events not consecutive from the requested seq";
    else if (c->fetch_to && ev->seq > c->fetch_to) why = "event beyond the requested range";
    else why = contradiction(c, ev);
    if (!why && expect == UINT64_MAX) why = "seq at the 2^64 limit";
    expect++;
  }
  if (!why && !r->end && r->n_events == 0) why = "empty page without the end marker";
  if (why) {
    pe_peer_error(e, PARLEY_EPROTOCOL, "FetchResult for %s dropped: %s", c->id, why);
    c->fetching = false;
    pe_timer_cancel(e, &c->timer);
    pe_conv_gap_check(e, c);
    return PARLEY_EPROTOCOL;
  }
  c->fetching = false;
  pe_timer_cancel(e, &c->timer);
  for (size_t i = 0; i < r->n_events; i++) {
    const Parley__V1__Event *ev = r->events[i];
    if (ev->seq < c->next) {
      e->stats.duplicates_dropped++;
      continue;
    }
    hpos p = held_lower(c, ev->seq);
    const pe_held *at = held_at(c, p);
    if (at && at->seq == ev->seq) held_remove_at(e, c, p);
    deliver_one(e, c, ev);
    pe_conv_drain(e, c);
  }
  if (!r->end && (c->fetch_to == 0 || c->next <= c->fetch_to)) {
    fetch_send(e, c, c->next, c->fetch_to);
    return 0;
  }
  if (r->end && c->n_held && r->last_seq < held_first(c)->seq) {
    /* The gateway says the held events do not exist. Once could be a
     * race (the answer was made just before those events were); twice in
     * a row, a gap timer apart, means they were bogus. */
    if (++c->strikes >= 2) {
      pe_peer_error(e, PARLEY_EPROTOCOL,
                 "held events of %s from seq %llu are beyond the conversation's last seq %llu",
                 c->id, (unsigned long long)held_first(c)->seq, (unsigned long long)r->last_seq);
      pe_held_clear(e, c);
      c->strikes = 0;
    }
  } else {
    c->strikes = 0;
  }
  if (r->end && c->known_max > r->last_seq && !c->n_held) {
    /* Nothing exists beyond the gateway's last seq (and nothing is held):
     * forget larger seqs we heard of, so no fetch chases them. */
    uint64_t top = c->next - 1;
    c->known_max = r->last_seq > top ? r->last_seq : top;
  }
  pe_conv_gap_check(e, c);
  return 0;
}

/* ----------------------------------------------------------------- bots */

void pe_on_assign(pe_engine *e, const Parley__V1__Assign *a) {
  if (!e->bot) {
    pe_peer_error(e, PARLEY_EPROTOCOL, "Assign of %s to a %s connection", a->conversation,
               e->role == PARLEY_ROLE_AGENT ? "agent" : "customer");
    return;
  }
  if (a->acked_seq == UINT64_MAX) {
    pe_peer_error(e, PARLEY_EPROTOCOL, "Assign of %s: acked_seq at the 2^64 limit",
               a->conversation);
    return;
  }
  pe_conv *c = pe_conv_get(e, a->conversation);
  if (!c) {
    pe_peer_error(e, PARLEY_ENOMEM, "no room for conversation %s", a->conversation);
    return;
  }
  if (!c->assigned || c->epoch != a->epoch) {
    /* A new assignment starts after the bot's committed watermark: events
     * handled but not committed under the old epoch run again. */
    c->next = a->acked_seq + 1;
    c->last_known = false;
    if (c->epoch && c->epoch < a->epoch) pe_outbox_restamp(e, c, a->epoch);
  } else if (a->acked_seq + 1 > c->next) {
    c->next = a->acked_seq + 1;
  }
  if (a->acked_seq > c->committed) c->committed = a->acked_seq;
  c->assigned = true;
  c->revoked = false;
  c->epoch = a->epoch;
  pe_held_trim(e, c);
  if (e->hooks.assign) {
    pe_arena ar = PE_ARENA_INIT;
    parley_assignment pa;
    memset(&pa, 0, sizeof pa);
    pa.conversation = c->id;
    pa.epoch = a->epoch;
    pa.state_version = a->state_version;
    pa.acked_seq = a->acked_seq;
    pa.locale = a->locale;
    pa.customer = a->customer;
    pa.tags = (const char *const *)a->tags;
    pa.n_tags = a->n_tags;
    parley_state_entry *st = a->n_state ? pe_arena_alloc(&ar, a->n_state * sizeof *st) : NULL;
    if (a->n_state && !st) {
      pe_peer_error(e, PARLEY_ENOMEM, "out of memory converting Assign of %s", c->id);
    } else {
      for (size_t i = 0; i < a->n_state; i++) {
        st[i].key = a->state[i]->key;
        st[i].deleted = a->state[i]->deleted;
        st[i].value = a->state[i]->deleted ? NULL : (const char *)a->state[i]->value.data;
        st[i].value_len = a->state[i]->value.len;
        if (!st[i].deleted && !st[i].value) st[i].value = "";
      }
      pa.state = st;
      pa.n_state = a->n_state;
      e->hooks.assign(e->hooks.ud, &pa);
    }
    pe_arena_free(&ar);
  }
  pe_conv_drain(e, c);
  pe_conv_gap_check(e, c);
}

void pe_on_revoke(pe_engine *e, const Parley__V1__Revoke *r) {
  pe_conv *c = pe_conv_find(e, r->conversation);
  if (!e->bot || !c || !c->assigned) {
    pe_peer_error(e, PARLEY_EPROTOCOL, "Revoke of %s that is not assigned to this connection",
               r->conversation);
    return;
  }
  c->assigned = false;
  c->revoked = true;
  pe_held_clear(e, c);
  c->fetching = false;
  pe_timer_cancel(e, &c->timer);
  if (e->hooks.revoke) e->hooks.revoke(e->hooks.ud, c->id, r->epoch, r->reason);
}

int pe_engine_ack(pe_engine *e, const char *conversation, uint64_t seq,
                  uint64_t now) {
  if (!e) return PARLEY_EINVAL;
  e->now = now;
  if (e->bot) return PARLEY_ESTATE; /* bots acknowledge by committing */
  pe_conv *c = pe_conv_find(e, conversation);
  if (!c) return PARLEY_ENOTFOUND;
  if (seq == 0 || seq >= c->next) return PARLEY_EINVAL; /* not applied yet */
  if (seq <= c->ack_target) return 0;
  ack_note(e, c, seq);
  return 0;
}
