/* The engine's outbox: sends and commits.
 *
 * Each conversation has a FIFO of sends of which only the head is ever on
 * the wire, so the sender's order holds even when a send is lost and
 * written again. Unanswered writes are repeated with capped exponential
 * backoff and full jitter, bounded by attempts and a deadline. Commits
 * wait behind the sends of their conversation made before them, share
 * frames, and are repeated like sends (the gateway applies them
 * idempotently). Every send and every commit item gets exactly one result.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <parley/error.h>

#include "core/convert.h"
#include "core/engine_int.h"
#include "util/array.h"
#include "util/varint.h"

/* ------------------------------------------------------------ sends */

static void id_hex(const uint8_t *id, size_t len, char out[33]) {
  if (len == PARLEY_MSG_ID_LEN) {
    parley_msg_id_hex(id, out);
  } else {
    snprintf(out, 33, "<%zu bytes>", len);
  }
}

uint64_t pe_retry_delay(pe_engine *e, uint32_t attempts) {
  /* Full jitter over min(cap, base * 2^(attempts-1)), never under a floor
   * of a quarter of the ACK timeout: an immediate resend would only race
   * the SendAck already on its way. */
  uint64_t w = pe_exp_window(e->ack_timeout, attempts ? attempts - 1 : 0, e->retry_max);
  uint64_t d = pe_rng_below(e, w);
  uint64_t floor = e->ack_timeout / 4 ? e->ack_timeout / 4 : 1;
  return d < floor ? floor : d;
}

static void done_remember(pe_engine *e, const uint8_t *id, uint32_t owed) {
  struct pe_done *slot = &e->done_ring[e->done_pos];
  /* A send the ring forgets while answers are still on their way keeps
   * its place in the spill: without it each late answer was reported as
   * a protocol violation by the gateway. Out of memory, it is forgotten
   * (its late answers are then reported, nothing else changes). */
  if (e->done_n == PE_DONE_RING && slot->owed &&
      pu_reserve(&e->done_spill, &e->done_spill_cap, e->done_spill_n, sizeof *e->done_spill,
                 16) == 0)
    e->done_spill[e->done_spill_n++] = *slot;
  memcpy(slot->id, id, PARLEY_MSG_ID_LEN);
  slot->owed = owed;
  e->done_pos = (e->done_pos + 1) % PE_DONE_RING;
  if (e->done_n < PE_DONE_RING) e->done_n++;
}

/* The most recent completed send with this id, or NULL; *spill_i is its
 * index in the spill, or SIZE_MAX when it is in the ring (or not found). */
static struct pe_done *done_find(pe_engine *e, const uint8_t *id, size_t *spill_i) {
  *spill_i = SIZE_MAX;
  for (size_t k = 1; k <= e->done_n; k++) {
    size_t i = (e->done_pos + PE_DONE_RING - k) % PE_DONE_RING;
    if (memcmp(e->done_ring[i].id, id, PARLEY_MSG_ID_LEN) == 0) return &e->done_ring[i];
  }
  for (size_t i = 0; i < e->done_spill_n; i++)
    if (memcmp(e->done_spill[i].id, id, PARLEY_MSG_ID_LEN) == 0) {
      *spill_i = i;
      return &e->done_spill[i];
    }
  return NULL;
}

/* One answer of a completed send's arrived; a spilled send that is owed
 * nothing more leaves the spill. */
static void done_paid(pe_engine *e, struct pe_done *d, size_t spill_i) {
  if (d->owed) d->owed--;
  if (d->owed || spill_i == SIZE_MAX) return;
  e->done_spill[spill_i] = e->done_spill[--e->done_spill_n];
}

/* Answers still owed by completed sends die with the connection. */
void pe_done_forget_owed(pe_engine *e) {
  for (size_t i = 0; i < e->done_n; i++) e->done_ring[i].owed = 0;
  e->done_spill_n = 0;
}

static void send_write(pe_engine *e, pe_send *s) {
  s->attempts++;
  s->wire_attempts++;
  if (s->attempts > 1) e->stats.retries++;
  s->unanswered++;
  s->state = Q_WIRE;
  pe_out_write(e, s->frame, s->len);
  uint64_t at = pe_add_sat(e->now, pe_retry_delay(e, s->wire_attempts));
  pe_timer_set(e, &s->timer, at < s->deadline_at ? at : s->deadline_at);
}

/* Writes the head send of c when nothing of c is on the wire. */
void pe_conv_pump(pe_engine *e, pe_conv *c) {
  pe_send *s = c->sq_head;
  if (!s || s->state != Q_QUEUED || e->state != ST_READY) return;
  if (s->attempts >= e->max_attempts) {
    char m[96];
    snprintf(m, sizeof m, "no SendAck after %u attempts", s->attempts);
    pe_send_finish(e, s, PARLEY_EATTEMPTS, 0, 0, false, m);
    return;
  }
  send_write(e, s);
}

/* Completes a send: it leaves every list before the callback runs, and the
 * next send of its conversation is written first, so a send made from
 * inside the callback queues behind the ones already waiting. */
void pe_send_finish(pe_engine *e, pe_send *s, int status, uint64_t seq,
                    int64_t server_time, bool dup, const char *msg) {
  pe_conv *c = s->conv;
  /* Unlink from the conversation FIFO (usually the head). */
  pe_send **pp = &c->sq_head;
  pe_send *prev = NULL;
  while (*pp && *pp != s) {
    prev = *pp;
    pp = &(*pp)->cnext;
  }
  if (*pp) {
    *pp = s->cnext;
    if (c->sq_tail == s) c->sq_tail = prev;
  }
  if (s->gprev) s->gprev->gnext = s->gnext;
  else e->g_head = s->gnext;
  if (s->gnext) s->gnext->gprev = s->gprev;
  else e->g_tail = s->gprev;
  pe_timer_cancel(e, &s->timer);
  /* Every send counted here was counted in by send_queue. */
  PARLEY_ASSERT(e->n_sends > 0 && e->outbox_bytes >= s->len);
  e->n_sends--;
  e->outbox_bytes -= s->len;
  if (s->attempts > 0) done_remember(e, s->id, s->unanswered);
  if (status == 0) e->stats.events_out++;
  else e->stats.send_failures++;

  pe_conv_pump(e, c);
  pe_commit_wake(e, c);
  pe_flush_commits(e);

  parley_send_result r;
  memset(&r, 0, sizeof r);
  r.conversation = c->id;
  memcpy(r.msg_id, s->id, PARLEY_MSG_ID_LEN);
  r.status = status;
  r.seq = seq;
  r.server_time_ms = server_time;
  r.duplicate = dup;
  r.attempts = s->attempts;
  r.message = msg;
  void *ud = s->ud;
  free(s->frame);
  free(s);
  if (e->hooks.send_result) e->hooks.send_result(e->hooks.ud, &r, ud);
}

void pe_send_timer(pe_engine *e, pe_send *s) {
  char m[128];
  if (e->now >= s->deadline_at) {
    snprintf(m, sizeof m, "no SendAck within send_deadline_ms=%llu after %u attempts",
             (unsigned long long)e->send_deadline, s->attempts);
    pe_send_finish(e, s, PARLEY_ETIMEOUT, 0, 0, false, m);
    return;
  }
  if (e->state == ST_READY && s->conv->sq_head == s &&
      (s->state == Q_WIRE || s->state == Q_RETRY)) {
    s->state = Q_QUEUED;
    pe_conv_pump(e, s->conv);
    return;
  }
  pe_timer_set(e, &s->timer, s->deadline_at);
}

static int send_queue(pe_engine *e, const char *conversation,
                      Parley__V1__Send *snd, const uint8_t *msg_id, void *ud) {
  if (e->closing) return PARLEY_ESHUTDOWN;
  if (!pw_valid_conversation(conversation)) return PARLEY_EINVAL;
  if (e->n_sends + e->n_commits >= e->outbox_max) return PARLEY_EBACKPRESSURE;
  pe_send *s = calloc(1, sizeof *s);
  if (!s) return PARLEY_ENOMEM;
  if (msg_id) memcpy(s->id, msg_id, PARLEY_MSG_ID_LEN);
  else pe_random_id(e, s->id);
  snd->client_msg_id.data = s->id;
  snd->client_msg_id.len = PARLEY_MSG_ID_LEN;
  snd->conversation = (char *)conversation;
  if (e->role == PARLEY_ROLE_CUSTOMER && e->locale) snd->locale = e->locale;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_SEND;
  f.send = snd;
  size_t n = parley__v1__frame__get_packed_size(&f);
  if (n > e->max_frame_out) {
    free(s);
    return PARLEY_ETOOBIG;
  }
  if (e->outbox_bytes + e->commit_bytes + n > e->outbox_max_bytes) {
    free(s);
    return PARLEY_EBACKPRESSURE;
  }
  pe_conv *c = pe_conv_get(e, conversation);
  if (!c || !(s->frame = malloc(n ? n : 1))) {
    free(s);
    return PARLEY_ENOMEM;
  }
  parley__v1__frame__pack(&f, s->frame);
  s->len = n;
  s->conv = c;
  s->ud = ud;
  s->serial = ++e->send_serial;
  s->deadline_at = pe_add_sat(e->now, e->send_deadline);
  s->timer.idx = SIZE_MAX;
  s->timer.kind = T_SEND;
  if (pe_timer_set(e, &s->timer, s->deadline_at) != 0) {
    free(s->frame);
    free(s);
    return PARLEY_ENOMEM;
  }
  if (c->sq_tail) c->sq_tail->cnext = s;
  else c->sq_head = s;
  c->sq_tail = s;
  s->gprev = e->g_tail;
  if (e->g_tail) e->g_tail->gnext = s;
  else e->g_head = s;
  e->g_tail = s;
  e->n_sends++;
  e->outbox_bytes += n;
  e->stats.sends++;
  pe_conv_pump(e, c);
  return 0;
}

int pe_engine_send(pe_engine *e, const char *conversation,
                   const parley_content *content, const parley_quote *quote,
                   const uint8_t *msg_id, uint64_t epoch, void *send_ud,
                   uint64_t now) {
  if (!e) return PARLEY_EINVAL;
  e->now = now;
  const char *why;
  if (pe_content_check(content, &why) != 0) return PARLEY_EINVAL;
  pe_arena a = PE_ARENA_INIT;
  Parley__V1__Send snd = PARLEY__V1__SEND__INIT;
  snd.body_case = PARLEY__V1__SEND__BODY_CONTENT;
  snd.content = pe_content_to_wire(&a, content);
  snd.quote = pe_quote_to_wire(&a, quote);
  snd.epoch = epoch;
  int rc = PARLEY_ENOMEM;
  if (snd.content && !a.failed) rc = send_queue(e, conversation, &snd, msg_id, send_ud);
  pe_arena_free(&a);
  return rc;
}

int pe_engine_action(pe_engine *e, const char *conversation,
                     const parley_action *action, const uint8_t *msg_id,
                     uint64_t epoch, void *send_ud, uint64_t now) {
  if (!e) return PARLEY_EINVAL;
  e->now = now;
  const char *why;
  if (pe_action_check(action, &why) != 0) return PARLEY_EINVAL;
  pe_arena a = PE_ARENA_INIT;
  Parley__V1__Send snd = PARLEY__V1__SEND__INIT;
  snd.body_case = PARLEY__V1__SEND__BODY_ACTION;
  snd.action = pe_action_to_wire(&a, action);
  snd.epoch = epoch;
  int rc = PARLEY_ENOMEM;
  if (snd.action && !a.failed) rc = send_queue(e, conversation, &snd, msg_id, send_ud);
  pe_arena_free(&a);
  return rc;
}

bool pe_code_retryable(Parley__V1__ErrorCode code) {
  return code == PARLEY__V1__ERROR_CODE__ERROR_BUSY ||
         code == PARLEY__V1__ERROR_CODE__ERROR_RATE_LIMITED ||
         code == PARLEY__V1__ERROR_CODE__ERROR_INTERNAL ||
         code == PARLEY__V1__ERROR_CODE__ERROR_SHUTTING_DOWN;
}

/* The send on the wire with this id: the head of the named conversation,
 * or, when the SendAck names no conversation we know, any head. */
pe_send *pe_send_lookup(pe_engine *e, const char *conversation,
                        const uint8_t *id) {
  pe_conv *c = pe_conv_find(e, conversation);
  if (c && c->sq_head && memcmp(c->sq_head->id, id, PARLEY_MSG_ID_LEN) == 0)
    return c->sq_head;
  for (pe_send *s = e->g_head; s; s = s->gnext)
    if (s->conv->sq_head == s && memcmp(s->id, id, PARLEY_MSG_ID_LEN) == 0)
      return s;
  return NULL;
}

void pe_on_send_ack(pe_engine *e, const Parley__V1__SendAck *a) {
  char hex[33];
  pe_send *s = pe_send_lookup(e, a->conversation, a->client_msg_id.data);
  if (s && s->attempts && a->error == PARLEY__V1__ERROR_CODE__ERROR_NONE) {
    /* Stored is stored, whichever write this answers. The ring of completed
     * sends (a scan of up to PE_DONE_RING ids) is read only for the other
     * answers: on this, the usual one, it cost more than the rest. This
     * answer is one of the writes' answers: the others are still owed. */
    if (s->unanswered) s->unanswered--;
    pe_send_finish(e, s, 0, a->seq, a->server_time_ms, a->duplicate, NULL);
    return;
  }
  size_t spill_i;
  struct pe_done *d = done_find(e, a->client_msg_id.data, &spill_i);
  if (!s || s->attempts == 0) {
    if (d) {
      done_paid(e, d, spill_i);
      return; /* a late answer to a completed send */
    }
    id_hex(a->client_msg_id.data, a->client_msg_id.len, hex);
    pe_peer_error(e, PARLEY_EPROTOCOL, "SendAck for client_msg_id %s that is not pending%s%s",
               hex, a->conversation[0] ? " in conversation " : "", a->conversation);
    return;
  }
  if (d && d->owed) {
    done_paid(e, d, spill_i); /* the refusal of an earlier send with this id */
    return;
  }
  if (a->error == PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH && s->stale_owed) {
    /* A write made before the conversation was assigned here again. */
    s->stale_owed--;
    if (s->unanswered) s->unanswered--;
    return;
  }
  if (s->unanswered) s->unanswered--;
  if (s->state != Q_WIRE) return; /* a refusal of an earlier attempt */
  /* A restamped send's refusal may still be an old write's, answered twice
   * (a gateway that repeats a frame): write it again while the conversation
   * is ours. A conversation that really moved is revoked, or refuses every
   * try, and the send then fails as before. */
  bool stale_again = a->error == PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH && s->restamped &&
                     !s->conv->revoked && s->stale_retries < PE_STALE_RETRIES;
  if (stale_again) s->stale_retries++;
  if (stale_again || pe_code_retryable(a->error)) {
    s->state = Q_RETRY;
    uint64_t at = pe_add_sat(e->now, pe_retry_delay(e, s->wire_attempts));
    pe_timer_set(e, &s->timer, at < s->deadline_at ? at : s->deadline_at);
    return;
  }
  pe_send_finish(e, s, pw_status_from_code(a->error), 0, a->server_time_ms, false,
              a->message[0] ? a->message : parley_strerror(pw_status_from_code(a->error)));
}

/* The conversation was assigned to this connection again, with a new
 * epoch (after a reconnect, a gateway restart, a move away and back). The
 * bot's sends still pending were made by handlers of this process under
 * the old epoch; the gateway would refuse them as stale, and the handler's
 * commit would then acknowledge an event whose replies were never stored.
 * They carry the new epoch from now on: the replies' derived ids keep a
 * handler that another replica ran meanwhile from showing twice. A send
 * on the wire is written again at once; the STALE_EPOCH answers its
 * earlier writes still owe are not taken as final. */
void pe_outbox_restamp(pe_engine *e, pe_conv *c, uint64_t epoch) {
  for (pe_send *s = c->sq_head; s; s = s->cnext) {
    pw_frame *f = parley__v1__frame__unpack(NULL, s->len, s->frame);
    if (!f) continue;
    bool older = f->body_case == PARLEY__V1__FRAME__BODY_SEND && f->send->epoch != 0 &&
                 f->send->epoch < epoch;
    uint8_t *buf = NULL;
    size_t n = 0;
    if (older) {
      f->send->epoch = epoch;
      n = parley__v1__frame__get_packed_size(f);
      buf = malloc(n ? n : 1);
      if (buf) parley__v1__frame__pack(f, buf);
    }
    parley__v1__frame__free_unpacked(f, NULL);
    if (!buf) continue;
    s->restamped = true;
    e->outbox_bytes = e->outbox_bytes - s->len + n;
    free(s->frame);
    s->frame = buf;
    s->len = n;
    if (s->state == Q_WIRE && s->unanswered && e->state == ST_READY) {
      s->stale_owed = s->unanswered;
      send_write(e, s);
    }
  }
}

/* ------------------------------------------------------------ commits */

static bool commit_eligible(const pe_commit *k) {
  const pe_conv *c = k->conv;
  if (c->cq_head != k || k->state != Q_QUEUED) return false;
  return !c->sq_head || c->sq_head->serial > k->barrier;
}

/* Writes one Commit frame holding the given stored items. The items are
 * already encoded, so the frame is assembled from them directly:
 * Frame{11: Commit{1: request_id, 2: item...}}. */
static void commit_emit(pe_engine *e, pe_commit **items, size_t n, uint64_t req) {
  size_t body = 1 + pu_varint_len(req);
  for (size_t i = 0; i < n; i++) body += 1 + pu_varint_len(items[i]->len) + items[i]->len;
  size_t total = 1 + pu_varint_len(body) + body;
  uint8_t *buf = malloc(total);
  if (!buf) {
    pe_peer_error(e, PARLEY_ENOMEM, "out of memory encoding a Commit frame");
    return;
  }
  uint8_t *p = buf;
  *p++ = (11 << 3) | 2;
  p = pu_varint_put(p, body);
  *p++ = (1 << 3) | 0;
  p = pu_varint_put(p, req);
  for (size_t i = 0; i < n; i++) {
    *p++ = (2 << 3) | 2;
    p = pu_varint_put(p, items[i]->len);
    memcpy(p, items[i]->item, items[i]->len);
    p += items[i]->len;
  }
  pe_out_write(e, buf, total);
  free(buf);
}

/* Gathers every commit that may go now into shared Commit frames. */
void pe_commit_wake(pe_engine *e, pe_conv *c) {
  if (c->commit_woken || !c->cq_head) return;
  c->commit_woken = true;
  c->wake_next = NULL;
  if (e->wake_tail) e->wake_tail->wake_next = c;
  else e->wake_head = c;
  e->wake_tail = c;
}

/* Writes the commits that may go. Only conversations woken since the last
 * flush are looked at: with a thousand conversations each holding queued
 * commits, scanning every commit on every inbound frame cost most of a
 * bot's CPU. Only a conversation's head commit can be eligible, so one
 * look per woken conversation finds them all. */
void pe_flush_commits(pe_engine *e) {
  if (e->state != ST_READY) return;
  pe_commit *batch[256];
  size_t n = 0, bytes = 0;
  uint64_t req = 0;
  while (e->wake_head) {
    pe_conv *c = e->wake_head;
    e->wake_head = c->wake_next;
    if (!e->wake_head) e->wake_tail = NULL;
    c->commit_woken = false;
    c->wake_next = NULL;
    pe_commit *k = c->cq_head;
    if (!k || !commit_eligible(k)) continue;
    if (k->attempts >= e->max_attempts) {
      /* Finishing wakes the conversation again for its next commit. */
      pe_commit_finish(e, k, PARLEY_EATTEMPTS, false, 0);
      continue;
    }
    if (n == 256 || (n > 0 && bytes + k->len + 32 > e->max_frame_out)) {
      commit_emit(e, batch, n, req);
      n = 0;
      bytes = 0;
    }
    if (n == 0) req = ++e->next_request_id;
    k->state = Q_WIRE;
    k->request_id = req;
    if (!k->first_req) k->first_req = req;
    k->attempts++;
    k->wire_attempts++;
    if (k->attempts > 1) e->stats.retries++;
    uint64_t at = pe_add_sat(e->now, pe_retry_delay(e, k->wire_attempts));
    pe_timer_set(e, &k->timer, at < k->deadline_at ? at : k->deadline_at);
    batch[n++] = k;
    bytes += k->len + 8;
  }
  if (n) commit_emit(e, batch, n, req);
}

void pe_commit_finish(pe_engine *e, pe_commit *k, int status, bool dup,
                      uint64_t state_version) {
  pe_conv *c = k->conv;
  pe_commit **pp = &c->cq_head, *prev = NULL;
  while (*pp && *pp != k) {
    prev = *pp;
    pp = &(*pp)->cnext;
  }
  if (*pp) {
    *pp = k->cnext;
    if (c->cq_tail == k) c->cq_tail = prev;
  }
  if (k->gprev) k->gprev->gnext = k->gnext;
  else e->c_head = k->gnext;
  if (k->gnext) k->gnext->gprev = k->gprev;
  else e->c_tail = k->gprev;
  pe_timer_cancel(e, &k->timer);
  PARLEY_ASSERT(e->n_commits > 0 && e->commit_bytes >= k->len);
  e->n_commits--;
  e->commit_bytes -= k->len;
  if (status == 0) {
    e->stats.commits++;
    if (k->ack_seq > c->committed) c->committed = k->ack_seq;
  }
  parley_commit_result r;
  memset(&r, 0, sizeof r);
  r.conversation = c->id;
  r.ack_seq = k->ack_seq;
  r.status = status;
  r.duplicate = dup;
  r.state_version = state_version;
  free(k->item);
  free(k);
  pe_commit_wake(e, c);
  if (e->hooks.commit_result) e->hooks.commit_result(e->hooks.ud, &r);
}

void pe_commit_timer(pe_engine *e, pe_commit *k) {
  if (e->now >= k->deadline_at) {
    pe_commit_finish(e, k, PARLEY_ETIMEOUT, false, 0);
    return;
  }
  if (k->state == Q_WIRE || k->state == Q_RETRY) {
    /* Commits are idempotent at the gateway: writing one again is safe. */
    k->state = Q_QUEUED;
    pe_commit_wake(e, k->conv);
    pe_flush_commits(e);
    return;
  }
  pe_timer_set(e, &k->timer, k->deadline_at);
}

static int commit_check(const parley_commit *c) {
  if (!c || !pw_valid_conversation(c->conversation)) return PARLEY_EINVAL;
  if (c->n_state && !c->state) return PARLEY_EINVAL;
  for (size_t i = 0; i < c->n_state; i++) {
    if (!c->state[i].key || !c->state[i].key[0]) return PARLEY_EINVAL;
    if (!c->state[i].deleted && !c->state[i].value) return PARLEY_EINVAL;
  }
  if ((c->n_tags_add && !c->tags_add) || (c->n_tags_remove && !c->tags_remove))
    return PARLEY_EINVAL;
  for (size_t i = 0; i < c->n_tags_add; i++)
    if (!c->tags_add[i]) return PARLEY_EINVAL;
  for (size_t i = 0; i < c->n_tags_remove; i++)
    if (!c->tags_remove[i]) return PARLEY_EINVAL;
  return 0;
}

static int commit_queue(pe_engine *e, const parley_commit *in) {
  pe_arena a = PE_ARENA_INIT;
  Parley__V1__ConversationCommit w = PARLEY__V1__CONVERSATION_COMMIT__INIT;
  w.conversation = (char *)in->conversation;
  w.epoch = in->epoch;
  w.ack_seq = in->ack_seq;
  w.n_tags_add = in->n_tags_add;
  w.tags_add = (char **)in->tags_add;
  w.n_tags_remove = in->n_tags_remove;
  w.tags_remove = (char **)in->tags_remove;
  if (in->n_state) {
    w.state = pe_arena_alloc(&a, in->n_state * sizeof *w.state);
    for (size_t i = 0; w.state && i < in->n_state; i++) {
      Parley__V1__StateEntry *se = pe_arena_alloc(&a, sizeof *se);
      if (!se) break;
      parley__v1__state_entry__init(se);
      se->key = (char *)in->state[i].key;
      se->deleted = in->state[i].deleted;
      if (!se->deleted) {
        se->value.data = (uint8_t *)in->state[i].value;
        se->value.len = in->state[i].value_len ? in->state[i].value_len
                                               : strlen(in->state[i].value);
      }
      w.state[i] = se;
    }
    w.n_state = in->n_state;
  }
  if (a.failed) {
    pe_arena_free(&a);
    return PARLEY_ENOMEM;
  }
  size_t n = parley__v1__conversation_commit__get_packed_size(&w);
  if (n + 64 > e->max_frame_out) {
    pe_arena_free(&a);
    return PARLEY_ETOOBIG;
  }
  pe_conv *c = pe_conv_get(e, in->conversation);
  pe_commit *k = c ? calloc(1, sizeof *k) : NULL;
  if (!k || !(k->item = malloc(n ? n : 1))) {
    free(k);
    pe_arena_free(&a);
    return PARLEY_ENOMEM;
  }
  parley__v1__conversation_commit__pack(&w, k->item);
  pe_arena_free(&a);
  k->len = n;
  k->conv = c;
  k->ack_seq = in->ack_seq;
  k->barrier = e->send_serial;
  k->deadline_at = pe_add_sat(e->now, e->send_deadline);
  k->timer.idx = SIZE_MAX;
  k->timer.kind = T_COMMIT;
  pe_timer_set(e, &k->timer, k->deadline_at);
  if (c->cq_tail) c->cq_tail->cnext = k;
  else c->cq_head = k;
  c->cq_tail = k;
  k->gprev = e->c_tail;
  if (e->c_tail) e->c_tail->gnext = k;
  else e->c_head = k;
  e->c_tail = k;
  e->n_commits++;
  e->commit_bytes += n;
  pe_commit_wake(e, c);
  return 0;
}

int pe_engine_commit(pe_engine *e, const parley_commit *commits, size_t n,
                     uint64_t now) {
  if (!e || (n && !commits)) return PARLEY_EINVAL;
  e->now = now;
  if (!e->bot) return PARLEY_ESTATE;
  if (e->closing) return PARLEY_ESHUTDOWN;
  size_t bytes = 0;
  for (size_t i = 0; i < n; i++) {
    if (commit_check(&commits[i]) != 0) return PARLEY_EINVAL;
    bytes += 64 + strlen(commits[i].conversation);
  }
  if (e->n_sends + e->n_commits + n > e->outbox_max ||
      e->outbox_bytes + e->commit_bytes + bytes > e->outbox_max_bytes)
    return PARLEY_EBACKPRESSURE;
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) rc = commit_queue(e, &commits[i]);
  pe_flush_commits(e);
  return rc;
}

void pe_on_commit_result(pe_engine *e, const Parley__V1__CommitResult *r) {
  if (r->request_id == 0 || r->request_id > e->next_request_id) {
    pe_peer_error(e, PARLEY_EPROTOCOL, "CommitResult for request %llu that was never sent",
               (unsigned long long)r->request_id);
    return;
  }
  for (size_t i = 0; i < r->n_outcomes; i++) {
    const Parley__V1__CommitOutcome *o = r->outcomes[i];
    pe_conv *c = pe_conv_find(e, o->conversation);
    pe_commit *k = c ? c->cq_head : NULL;
    if (!k || k->ack_seq != o->ack_seq || k->state == Q_QUEUED || r->request_id < k->first_req) {
      /* An answer to an earlier write of an item already finished (or of
       * an earlier item with the same ack_seq): nothing to do. */
      continue;
    }
    if (o->error == PARLEY__V1__ERROR_CODE__ERROR_NONE) {
      pe_commit_finish(e, k, 0, o->duplicate, o->state_version);
    } else if (pe_code_retryable(o->error)) {
      k->state = Q_RETRY;
      uint64_t at = pe_add_sat(e->now, pe_retry_delay(e, k->wire_attempts));
      pe_timer_set(e, &k->timer, at < k->deadline_at ? at : k->deadline_at);
    } else {
      pe_commit_finish(e, k, pw_status_from_code(o->error), false, o->state_version);
    }
  }
  pe_flush_commits(e);
}
