/* Test harness for the protocol engine; see harness.h. */
#include "harness.h"

#include <protobuf-c/protobuf-c.h>

/* ------------------------------------------------------------ callbacks */

static void cb_event(void *ud, const parley_event *ev) {
  harness *h = ud;
  h_event *r = &h->events[h->n_events++];
  if (h->n_events > H_MAX_REC * 64) H_FAIL("too many events recorded");
  memset(r, 0, sizeof *r);
  snprintf(r->conv, sizeof r->conv, "%s", ev->conversation);
  r->seq = ev->seq;
  r->has_id = ev->has_msg_id;
  memcpy(r->id, ev->msg_id, PARLEY_MSG_ID_LEN);
  r->redelivered = ev->redelivered;
  r->kind = ev->kind;
  if (ev->content.text) snprintf(r->text, sizeof r->text, "%s", ev->content.text);
  if (h->on_event) h->on_event(h, ev);
}

static void cb_send_result(void *ud, const parley_send_result *res, void *sud) {
  harness *h = ud;
  if (h->n_results >= H_MAX_REC * 64) H_FAIL("too many results recorded");
  h_result *r = &h->results[h->n_results++];
  memset(r, 0, sizeof *r);
  snprintf(r->conv, sizeof r->conv, "%s", res->conversation);
  memcpy(r->id, res->msg_id, PARLEY_MSG_ID_LEN);
  r->status = res->status;
  r->seq = res->seq;
  r->duplicate = res->duplicate;
  r->attempts = res->attempts;
  r->ud = sud;
  r->at = h->now;
}

static void cb_commit(void *ud, const parley_commit_result *res) {
  harness *h = ud;
  if (h->n_commits >= 64) H_FAIL("too many commit results");
  h_commit_res *r = &h->commits[h->n_commits++];
  snprintf(r->conv, sizeof r->conv, "%s", res->conversation);
  r->ack_seq = res->ack_seq;
  r->status = res->status;
  r->duplicate = res->duplicate;
}

static void cb_assign(void *ud, const parley_assignment *a) {
  (void)a;
  ((harness *)ud)->n_assign++;
}

static void cb_revoke(void *ud, const char *c, uint64_t ep, const char *why) {
  (void)c, (void)ep, (void)why;
  ((harness *)ud)->n_revoke++;
}

static void cb_queue(void *ud, const parley_queue_item *it, size_t n, bool up,
                     bool rm) {
  (void)it, (void)n, (void)up, (void)rm;
  ((harness *)ud)->n_queue++;
}

static void cb_ready(void *ud) { ((harness *)ud)->n_ready++; }

static void cb_peer_error(void *ud, int status, const char *msg) {
  harness *h = ud;
  if (h->n_errors < H_MAX_REC) h->errors[h->n_errors] = status;
  h->n_errors++;
  snprintf(h->last_error, sizeof h->last_error, "%s", msg);
  if (!h->quiet) fprintf(stderr, "  peer_error %s: %s\n", parley_errname(status), msg);
}

pe_config h_config(parley_role role) {
  pe_config c;
  memset(&c, 0, sizeof c);
  c.principal = role == PARLEY_ROLE_BOT ? "bot-1" : "alice";
  c.token = "secret";
  c.role = role;
  c.device = "dev-1";
  c.locale = "en";
  c.tuning.seed = 42;
  return c;
}

void h_init(harness *h, const pe_config *cfg) {
  memset(h, 0, sizeof *h);
  h->events = calloc(H_MAX_REC * 64, sizeof *h->events);
  h->results = calloc(H_MAX_REC * 64, sizeof *h->results);
  H_TRUE(h->events && h->results);
  pe_hooks hooks = {
      .ud = h,
      .event = cb_event,
      .send_result = cb_send_result,
      .commit_result = cb_commit,
      .assign = cb_assign,
      .revoke = cb_revoke,
      .queue = cb_queue,
      .ready = cb_ready,
      .peer_error = cb_peer_error,
  };
  h->now = 1000;
  h->e = pe_engine_new(cfg, &hooks);
  H_TRUE(h->e != NULL);
}

void h_fini(harness *h) {
  pe_engine_free(h->e);
  free(h->events);
  free(h->results);
  memset(h, 0, sizeof *h);
}

/* --------------------------------------------------------------- frames */

int h_feed(harness *h, const pw_frame *f) {
  uint8_t *buf;
  size_t len;
  H_EQ(pw_encode(f, 0, &buf, &len), 0);
  int rc = pe_engine_on_input(h->e, buf, len, h->now);
  free(buf);
  return rc;
}

int h_feed_bytes(harness *h, const uint8_t *data, size_t len) {
  return pe_engine_on_input(h->e, data, len, h->now);
}

pw_frame *h_take(harness *h) {
  const uint8_t *d;
  size_t n;
  if (!pe_engine_take_output(h->e, &d, &n)) return NULL;
  pw_frame *f = NULL;
  const char *why = NULL;
  int rc = pw_decode(d, n, 0, &f, &why);
  if (rc != 0) H_FAIL("engine wrote an undecodable frame: %s (%s)", parley_errname(rc), why);
  return f;
}

pw_frame *h_expect(harness *h, Parley__V1__Frame__BodyCase type) {
  pw_frame *f = h_take(h);
  if (!f) H_FAIL("expected frame type %d, got nothing", (int)type);
  if (f->body_case != type)
    H_FAIL("expected frame type %d, got %d", (int)type, (int)f->body_case);
  return f;
}

void h_expect_none(harness *h) {
  pw_frame *f = h_take(h);
  if (f) H_FAIL("expected no frame, got type %d", (int)f->body_case);
}

size_t h_drain(harness *h) {
  size_t n = 0;
  pw_frame *f;
  while ((f = h_take(h))) {
    pw_frame_free(f);
    n++;
  }
  return n;
}

void h_run_until(harness *h, uint64_t to) {
  for (int guard = 0; guard < 1000000; guard++) {
    uint64_t d = pe_engine_deadline(h->e);
    if (d > to) break;
    if (d > h->now) h->now = d;
    pe_engine_on_tick(h->e, h->now);
    if (pe_engine_deadline(h->e) <= h->now && d <= h->now) {
      /* A deadline that does not move after a tick would spin forever. */
      uint64_t d2 = pe_engine_deadline(h->e);
      if (d2 <= h->now) {
        pe_engine_on_tick(h->e, h->now);
        if (pe_engine_deadline(h->e) <= h->now) H_FAIL("deadline stuck at %llu", (unsigned long long)d2);
      }
    }
  }
  h->now = to;
  pe_engine_on_tick(h->e, h->now);
}

void h_advance(harness *h, uint64_t ms) { h_run_until(h, h->now + ms); }

void h_connect(harness *h, uint32_t heartbeat_ms) {
  H_EQ(pe_engine_on_connect(h->e, h->now), 0);
  pw_frame *f = h_expect(h, PARLEY__V1__FRAME__BODY_HELLO);
  pw_frame_free(f);
  pw_frame *w = mk_welcome(heartbeat_ms, 0);
  H_EQ(h_feed(h, w), 0);
  h_frame_free(w);
  H_TRUE(pe_engine_ready(h->e));
}

/* Frames built here use heap-allocated submessages and are released with
 * protobuf-c's own free, which walks the descriptor; strings must therefore
 * be heap copies too. */
static char *hs(const char *s) { return strdup(s ? s : ""); }

static void *hz(size_t n) {
  void *p = calloc(1, n);
  H_TRUE(p != NULL);
  return p;
}

void h_frame_free(pw_frame *f) {
  if (f) protobuf_c_message_free_unpacked(&f->base, NULL);
}

static pw_frame *mk_frame(Parley__V1__Frame__BodyCase c) {
  pw_frame *f = hz(sizeof *f);
  parley__v1__frame__init(f);
  f->body_case = c;
  return f;
}

pw_frame *mk_welcome(uint32_t heartbeat_ms, uint32_t window) {
  pw_frame *f = mk_frame(PARLEY__V1__FRAME__BODY_WELCOME);
  Parley__V1__Welcome *w = hz(sizeof *w);
  parley__v1__welcome__init(w);
  w->version = 1;
  w->principal = hs("alice");
  w->session = hs("s-1");
  w->heartbeat_ms = heartbeat_ms;
  w->max_frame_bytes = 1024 * 1024;
  w->window = window;
  w->ack_timeout_ms = 5000;
  f->welcome = w;
  return f;
}

void mk_welcome_cursor(pw_frame *f, const char *conv, uint64_t after) {
  Parley__V1__Welcome *w = f->welcome;
  w->cursors = realloc(w->cursors, (w->n_cursors + 1) * sizeof *w->cursors);
  Parley__V1__ResumeCursor *c = hz(sizeof *c);
  parley__v1__resume_cursor__init(c);
  c->conversation = hs(conv);
  c->after_seq = after;
  w->cursors[w->n_cursors++] = c;
}

static Parley__V1__Event *mk_event(const char *conv, uint64_t seq, const char *text,
                                   const uint8_t *id) {
  Parley__V1__Event *ev = hz(sizeof *ev);
  parley__v1__event__init(ev);
  ev->conversation = hs(conv);
  ev->seq = seq;
  ev->kind = PARLEY__V1__EVENT_KIND__EVENT_MESSAGE;
  ev->sender = hs("bob");
  ev->sender_role = PARLEY__V1__ROLE__ROLE_CUSTOMER;
  ev->server_time_ms = 1700000000000;
  if (id) {
    ev->client_msg_id.data = hz(16);
    memcpy(ev->client_msg_id.data, id, 16);
    ev->client_msg_id.len = 16;
  }
  Parley__V1__Content *ct = hz(sizeof *ct);
  parley__v1__content__init(ct);
  Parley__V1__Text *t = hz(sizeof *t);
  parley__v1__text__init(t);
  t->body = hs(text);
  ct->body_case = PARLEY__V1__CONTENT__BODY_TEXT;
  ct->text = t;
  ct->fallback = hs("");
  ev->content = ct;
  return ev;
}

pw_frame *mk_deliver(void) {
  pw_frame *f = mk_frame(PARLEY__V1__FRAME__BODY_DELIVER);
  Parley__V1__Deliver *d = hz(sizeof *d);
  parley__v1__deliver__init(d);
  f->deliver = d;
  return f;
}

Parley__V1__Event *mk_deliver_add(pw_frame *f, const char *conv, uint64_t seq,
                                  const char *text, const uint8_t *id) {
  Parley__V1__Deliver *d = f->deliver;
  d->events = realloc(d->events, (d->n_events + 1) * sizeof *d->events);
  Parley__V1__Event *ev = mk_event(conv, seq, text, id);
  d->events[d->n_events++] = ev;
  return ev;
}

pw_frame *mk_send_ack(const uint8_t *id, const char *conv, uint64_t seq, bool dup,
                      Parley__V1__ErrorCode err) {
  pw_frame *f = mk_frame(PARLEY__V1__FRAME__BODY_SEND_ACK);
  Parley__V1__SendAck *a = hz(sizeof *a);
  parley__v1__send_ack__init(a);
  a->client_msg_id.data = hz(16);
  memcpy(a->client_msg_id.data, id, 16);
  a->client_msg_id.len = 16;
  a->conversation = hs(conv);
  a->seq = seq;
  a->duplicate = dup;
  a->error = err;
  a->message = hs(err ? "refused" : "");
  a->server_time_ms = 1700000000000;
  f->send_ack = a;
  return f;
}

pw_frame *mk_fetch_result(uint64_t req, const char *conv, bool end, uint64_t last_seq) {
  pw_frame *f = mk_frame(PARLEY__V1__FRAME__BODY_FETCH_RESULT);
  Parley__V1__FetchResult *r = hz(sizeof *r);
  parley__v1__fetch_result__init(r);
  r->request_id = req;
  r->conversation = hs(conv);
  r->end = end;
  r->last_seq = last_seq;
  f->fetch_result = r;
  return f;
}

Parley__V1__Event *mk_fetch_add(pw_frame *f, const char *conv, uint64_t seq,
                                const char *text, const uint8_t *id) {
  Parley__V1__FetchResult *r = f->fetch_result;
  r->events = realloc(r->events, (r->n_events + 1) * sizeof *r->events);
  Parley__V1__Event *ev = mk_event(conv, seq, text, id);
  r->events[r->n_events++] = ev;
  return ev;
}

pw_frame *mk_ping(uint64_t nonce) {
  pw_frame *f = mk_frame(PARLEY__V1__FRAME__BODY_PING);
  Parley__V1__Ping *p = hz(sizeof *p);
  parley__v1__ping__init(p);
  p->nonce = nonce;
  p->time_ms = 77;
  f->ping = p;
  return f;
}

pw_frame *mk_error(Parley__V1__ErrorCode code, uint32_t retry_after, bool fatal) {
  pw_frame *f = mk_frame(PARLEY__V1__FRAME__BODY_ERROR);
  Parley__V1__Error *e = hz(sizeof *e);
  parley__v1__error__init(e);
  e->code = code;
  e->message = hs("test error");
  e->conversation = hs("");
  e->retry_after_ms = retry_after;
  e->fatal = fatal;
  f->error = e;
  return f;
}

pw_frame *mk_assign(const char *conv, uint64_t epoch, uint64_t acked) {
  pw_frame *f = mk_frame(PARLEY__V1__FRAME__BODY_ASSIGN);
  Parley__V1__Assign *a = hz(sizeof *a);
  parley__v1__assign__init(a);
  a->conversation = hs(conv);
  a->epoch = epoch;
  a->acked_seq = acked;
  a->locale = hs("en");
  a->customer = hs("bob");
  f->assign = a;
  return f;
}

pw_frame *mk_revoke(const char *conv, uint64_t epoch) {
  pw_frame *f = mk_frame(PARLEY__V1__FRAME__BODY_REVOKE);
  Parley__V1__Revoke *r = hz(sizeof *r);
  parley__v1__revoke__init(r);
  r->conversation = hs(conv);
  r->epoch = epoch;
  r->reason = hs("handed_off");
  f->revoke = r;
  return f;
}

pw_frame *mk_commit_result(uint64_t req) {
  pw_frame *f = mk_frame(PARLEY__V1__FRAME__BODY_COMMIT_RESULT);
  Parley__V1__CommitResult *r = hz(sizeof *r);
  parley__v1__commit_result__init(r);
  r->request_id = req;
  f->commit_result = r;
  return f;
}

void mk_commit_outcome(pw_frame *f, const char *conv, uint64_t ack_seq,
                       Parley__V1__ErrorCode err, bool dup) {
  Parley__V1__CommitResult *r = f->commit_result;
  r->outcomes = realloc(r->outcomes, (r->n_outcomes + 1) * sizeof *r->outcomes);
  Parley__V1__CommitOutcome *o = hz(sizeof *o);
  parley__v1__commit_outcome__init(o);
  o->conversation = hs(conv);
  o->ack_seq = ack_seq;
  o->error = err;
  o->duplicate = dup;
  r->outcomes[r->n_outcomes++] = o;
}

void h_id(uint8_t out[PARLEY_MSG_ID_LEN], uint32_t n) {
  memset(out, 0, PARLEY_MSG_ID_LEN);
  out[0] = 0xA5;
  out[12] = (uint8_t)(n >> 24);
  out[13] = (uint8_t)(n >> 16);
  out[14] = (uint8_t)(n >> 8);
  out[15] = (uint8_t)n;
}

int h_send_text(harness *h, const char *conv, const char *text, uint32_t n) {
  uint8_t id[16];
  h_id(id, n);
  parley_content c = {.kind = PARLEY_CONTENT_TEXT, .text = text};
  return pe_engine_send(h->e, conv, &c, NULL, id, 0, (void *)(uintptr_t)n, h->now);
}
