/* Fuzz target: the sans-I/O protocol engine (sdk/src/core/engine.h).
 *
 * The fuzzer plays the gateway, the clock and the application at once.
 * The input is a program:
 *
 *   u8 flags   bit 0  bot role (else customer, or agent with bit 5)
 *              bit 1  manual_ack (customers and agents)
 *              bit 2  the event callback replies with a send from inside
 *              bit 3  the event callback acknowledges (ack or commit)
 *              bit 4  tight limits (small reorder buffer, outbox, frames)
 *              bit 5  agent role when not a bot
 *   records, until the input ends; each starts with a byte h:
 *     h & 7 = 0..2  a gateway frame: u16 LE length, then that many bytes
 *                   (fewer when the input ends) for pe_engine_on_input
 *     h & 7 = 3     u8 s: the reflecting gateway answers the engine's
 *                   latest request, consistently: s & 3 = 0 SendAck,
 *                   1 FetchResult, 2 CommitResult, 3 the next events of a
 *                   conversation (see reflect() for the other bits)
 *     h & 7 = 4     application send (u8 conversation, u8 id, u8 kind)
 *     h & 7 = 5     application action (u8 conversation, u8 id, u8 kind)
 *     h & 7 = 6     u8 conversation, u8 seq: an ack (customers, agents),
 *                   a commit (bots); agents ask for the queue listing
 *                   instead when seq >= 128
 *     h & 7 = 7     u8 op: 0 disconnect, 1 graceful close, else nothing
 *     then the simulated clock advances by (h >> 3) squared times 16 ms, with
 *     pe_engine_on_tick at every deadline on the way.
 *
 * After every step all output is taken and checked: each frame decodes
 * with the real codec, is a frame a client may send, a bot never writes an
 * Ack and a customer never a Commit, and a conversation never has two
 * different unanswered Sends on the wire (docs/protocol.md, "Sender
 * order"). Events must reach the application once each, in increasing seq
 * order per conversation, and no out-of-memory error may be reported
 * (memory does not run out here). After on_tick(t) the deadline must be later
 * than t, or the transport would spin. A closed connection is reported
 * with on_disconnect and reopened at pe_engine_reconnect_at(). */
#include <stdbool.h>

#include <parley/client.h>
#include <parley/error.h>

#include "core/engine.h"
#include "wire/wire.h"
#include "fuzz_common.h"

#define F_BOT 0x01
#define F_MANUAL 0x02
#define F_REPLY 0x04
#define F_CB_ACK 0x08
#define F_TIGHT 0x10
#define F_AGENT 0x20

/* Bounds on the work one input may cause, so a slow input is not taken for
 * a hang: timer steps per clock advance, conversations tracked. */
#define MAX_STEPS 2000
#define MAX_TRACK 64

static const char *const convs[] = {"c1", "c2", "shop:42", "a.b-c_d@e"};
#define N_CONVS (sizeof convs / sizeof convs[0])

typedef struct track {
  char conv[PARLEY_MAX_CONVERSATION_ID + 1];
  uint64_t last_seq;         /* last seq delivered to the application */
  uint64_t epoch;            /* bots: the current assignment's epoch */
  uint8_t wire_id[PARLEY_MSG_ID_LEN]; /* the Send on the wire, if any */
  bool has_wire;
  uint64_t gw_top;           /* reflecting gateway: highest seq it made up */
} track;

typedef struct finished {
  char conv[PARLEY_MAX_CONVERSATION_ID + 1];
  uint8_t id[PARLEY_MSG_ID_LEN];
} finished;

typedef struct fz_state {
  pe_engine *e;
  uint64_t now;
  unsigned flags;
  bool bot;
  uint32_t id_serial;
  track tr[MAX_TRACK];
  size_t n_tr;
  /* Sends whose result reached the application. Output is checked after
   * the call that made it returns, and by then a send written and finished
   * in the same call has already been reported. */
  finished *done;
  size_t n_done, cap_done;
  int depth; /* callback nesting */
  /* The latest requests the engine wrote, for the reflecting gateway. */
  struct {
    char conv[PARLEY_MAX_CONVERSATION_ID + 1];
    uint8_t id[PARLEY_MSG_ID_LEN];
  } sends[8];
  size_t n_sends, next_send;
  bool has_fetch;
  uint64_t fetch_req, fetch_from, fetch_to;
  char fetch_conv[PARLEY_MAX_CONVERSATION_ID + 1];
  uint64_t commit_req;
  size_t n_commit;
  struct {
    char conv[PARLEY_MAX_CONVERSATION_ID + 1];
    uint64_t ack_seq;
  } commit[8];
} fz_state;

static fz_state S;

static track *track_get(const char *conv) {
  for (size_t i = 0; i < S.n_tr; i++)
    if (strcmp(S.tr[i].conv, conv) == 0) return &S.tr[i];
  if (S.n_tr == MAX_TRACK || strlen(conv) > PARLEY_MAX_CONVERSATION_ID) return NULL;
  track *t = &S.tr[S.n_tr++];
  memset(t, 0, sizeof *t);
  strcpy(t->conv, conv);
  return t;
}

static bool was_finished(const char *conv, const uint8_t *id) {
  for (size_t i = 0; i < S.n_done; i++)
    if (memcmp(S.done[i].id, id, PARLEY_MSG_ID_LEN) == 0 &&
        strcmp(S.done[i].conv, conv) == 0)
      return true;
  return false;
}

static void make_id(uint8_t out[PARLEY_MSG_ID_LEN], uint32_t n) {
  memset(out, 0, PARLEY_MSG_ID_LEN);
  out[0] = 0xF0;
  memcpy(out + 1, &n, sizeof n);
}

/* ------------------------------------------------------ application */

static void app_send(const char *conv, uint32_t id_n, uint8_t kind) {
  uint8_t id[PARLEY_MSG_ID_LEN];
  make_id(id, id_n);
  parley_button buttons[2] = {{.label = "Yes", .payload = "yes"},
                              {.label = "Docs", .url = "https://example.com/d"}};
  parley_content c;
  memset(&c, 0, sizeof c);
  switch (kind % 6) {
  case 0: c.kind = PARLEY_CONTENT_TEXT; c.text = "hello"; break;
  case 1:
    c.kind = PARLEY_CONTENT_CARD; c.title = "Order 42"; c.text = "Shipped";
    c.image_url = "https://example.com/i.png"; c.buttons = buttons; c.n_buttons = 2;
    break;
  case 2:
    c.kind = PARLEY_CONTENT_QUICK_REPLIES; c.text = "Pick one"; c.buttons = buttons;
    c.n_buttons = 1;
    break;
  case 3: c.kind = PARLEY_CONTENT_IMAGE; c.image_url = "https://example.com/p.png";
    c.text = "a photo"; c.width = 10; c.height = 20; break;
  case 4: c.kind = PARLEY_CONTENT_POSTBACK; c.payload = "yes"; c.label = "Yes";
    c.source_seq = 3; break;
  default: c.kind = PARLEY_CONTENT_TEXT; c.text = "\xC3\xA9t\xC3\xA9"; c.fallback = "ete";
    break;
  }
  parley_quote q = {.seq = kind & 0x80 ? 2 : 0, .excerpt = "earlier", .sender = "bob"};
  track *t = track_get(conv);
  uint64_t epoch = S.bot && t ? t->epoch : 0;
  (void)pe_engine_send(S.e, conv, &c, &q, id, epoch, NULL, S.now);
}

static void app_action(const char *conv, uint32_t id_n, uint8_t kind) {
  uint8_t id[PARLEY_MSG_ID_LEN];
  make_id(id, id_n);
  static const char *const add[] = {"vip", "refund"};
  static const char *const rm[] = {"new"};
  parley_action a;
  memset(&a, 0, sizeof a);
  a.kind = (parley_action_kind)(kind % 7); /* 0 (none) must be refused */
  a.tags_add = add; a.n_tags_add = kind & 0x10 ? 2 : 0;
  a.tags_remove = rm; a.n_tags_remove = kind & 0x20 ? 1 : 0;
  a.queue = "billing";
  a.note = "over to you";
  a.locale = "de-CH";
  track *t = track_get(conv);
  uint64_t epoch = S.bot && t ? t->epoch : 0;
  (void)pe_engine_action(S.e, conv, &a, id, epoch, NULL, S.now);
}

static void app_ack(const char *conv, uint64_t seq) {
  if (S.bot) {
    track *t = track_get(conv);
    parley_state_entry st[2] = {{.key = "step", .value = "{\"n\":1}"},
                                {.key = "old", .deleted = true}};
    static const char *const add[] = {"handled"};
    parley_commit k = {.conversation = conv, .epoch = t ? t->epoch : 1,
                       .ack_seq = seq, .state = st, .n_state = seq & 1 ? 2 : 0,
                       .tags_add = add, .n_tags_add = 1};
    (void)pe_engine_commit(S.e, &k, 1, S.now);
  } else if (S.flags & F_AGENT && seq & 0x80) {
    (void)pe_engine_queue(S.e, seq & 1 ? NULL : "billing", S.now);
  } else {
    (void)pe_engine_ack(S.e, conv, seq, S.now);
  }
}

/* ------------------------------------------------------------ hooks */

static void on_event(void *ud, const parley_event *ev) {
  (void)ud;
  FZ_CHECK(ev->conversation && pw_valid_conversation(ev->conversation),
           "event with an invalid conversation");
  FZ_CHECK(ev->seq >= 1, "event with seq 0");
  track *t = track_get(ev->conversation);
  if (t) {
    FZ_CHECK(ev->seq > t->last_seq, "event %s#%llu delivered after #%llu",
             ev->conversation, (unsigned long long)ev->seq,
             (unsigned long long)t->last_seq);
    t->last_seq = ev->seq;
  }
  if (S.depth > 2) return;
  S.depth++;
  if (S.flags & F_REPLY) app_send(ev->conversation, ++S.id_serial, (uint8_t)ev->seq);
  if (S.flags & F_CB_ACK) app_ack(ev->conversation, ev->seq);
  S.depth--;
}

static void on_send_result(void *ud, const parley_send_result *r, void *send_ud) {
  (void)ud;
  (void)send_ud;
  FZ_CHECK(r->conversation != NULL, "send result without a conversation");
  if (r->status == 0) FZ_CHECK(r->seq >= 1, "stored send with seq 0");
  if (S.n_done == S.cap_done) {
    size_t cap = S.cap_done ? S.cap_done * 2 : 64;
    finished *d = realloc(S.done, cap * sizeof *d);
    FZ_CHECK(d != NULL, "out of memory");
    S.done = d;
    S.cap_done = cap;
  }
  finished *f = &S.done[S.n_done++];
  snprintf(f->conv, sizeof f->conv, "%s", r->conversation);
  memcpy(f->id, r->msg_id, PARLEY_MSG_ID_LEN);
}

static void on_commit_result(void *ud, const parley_commit_result *r) {
  (void)ud;
  FZ_CHECK(S.bot, "commit result on a non-bot engine");
  FZ_CHECK(r->conversation != NULL, "commit result without a conversation");
}

static void on_assign(void *ud, const parley_assignment *a) {
  (void)ud;
  FZ_CHECK(S.bot, "assignment on a non-bot engine");
  for (size_t i = 0; i < a->n_state; i++)
    FZ_CHECK(a->state[i].key != NULL, "state entry without a key");
  track *t = track_get(a->conversation);
  if (t) {
    /* A new assignment restarts after the committed watermark: events
     * handled but not committed run again. */
    t->epoch = a->epoch;
    t->last_seq = a->acked_seq;
  }
}

static void on_revoke(void *ud, const char *conv, uint64_t epoch, const char *reason) {
  (void)ud;
  (void)epoch;
  FZ_CHECK(conv != NULL && reason != NULL, "revoke without a conversation or reason");
}

static void on_queue(void *ud, const parley_queue_item *items, size_t n, bool update,
                     bool removed) {
  (void)ud;
  (void)update;
  (void)removed;
  for (size_t i = 0; i < n; i++)
    FZ_CHECK(items[i].conversation != NULL, "queue item without a conversation");
}

static void on_peer_error(void *ud, int status, const char *message) {
  (void)ud;
  FZ_CHECK(status < 0, "peer error with status %d", status);
  FZ_CHECK(message != NULL, "peer error without a message");
  /* Memory does not run out under the fuzzer (far below -rss_limit_mb), so
   * an out-of-memory report means a failure taken for one, and whatever
   * it dropped (a frame, a held event) is lost for no reason. */
  FZ_CHECK(status != PARLEY_ENOMEM, "spurious out of memory: %s", message);
}

/* ----------------------------------------------------------- output */

static void check_output_frame(const uint8_t *data, size_t len) {
  pw_frame *f = NULL;
  const char *why = NULL;
  int rc = pw_decode(data, len, 0, &f, &why);
  FZ_CHECK(rc == 0, "engine wrote a frame (%zu bytes) that does not decode: %d %s", len,
           rc, why ? why : "");
  switch (f->body_case) {
  case PARLEY__V1__FRAME__BODY_HELLO:
  case PARLEY__V1__FRAME__BODY_PING:
  case PARLEY__V1__FRAME__BODY_PONG:
    break;
  case PARLEY__V1__FRAME__BODY_FETCH:
    S.has_fetch = true;
    S.fetch_req = f->fetch->request_id;
    S.fetch_from = f->fetch->from_seq;
    S.fetch_to = f->fetch->to_seq;
    snprintf(S.fetch_conv, sizeof S.fetch_conv, "%s", f->fetch->conversation);
    break;
  case PARLEY__V1__FRAME__BODY_QUEUE_REQUEST:
    FZ_CHECK(S.flags & F_AGENT && !S.bot, "QueueRequest from a non-agent");
    break;
  case PARLEY__V1__FRAME__BODY_ACK:
    FZ_CHECK(!S.bot, "a bot wrote an Ack (bots acknowledge only by Commit)");
    break;
  case PARLEY__V1__FRAME__BODY_COMMIT:
    FZ_CHECK(S.bot, "a non-bot wrote a Commit");
    S.commit_req = f->commit->request_id;
    S.n_commit = 0;
    for (size_t i = 0; i < f->commit->n_items && S.n_commit < 8; i++, S.n_commit++) {
      snprintf(S.commit[i].conv, sizeof S.commit[i].conv, "%s",
               f->commit->items[i]->conversation);
      S.commit[i].ack_seq = f->commit->items[i]->ack_seq;
    }
    break;
  case PARLEY__V1__FRAME__BODY_SEND: {
    const Parley__V1__Send *s = f->send;
    track *t = track_get(s->conversation);
    if (t) {
      if (t->has_wire && memcmp(t->wire_id, s->client_msg_id.data, PARLEY_MSG_ID_LEN) != 0)
        FZ_CHECK(was_finished(s->conversation, t->wire_id),
                 "two unanswered Sends on the wire in conversation %s", s->conversation);
      memcpy(t->wire_id, s->client_msg_id.data, PARLEY_MSG_ID_LEN);
      t->has_wire = true;
    }
    size_t k = S.next_send++ % 8;
    snprintf(S.sends[k].conv, sizeof S.sends[k].conv, "%s", s->conversation);
    memcpy(S.sends[k].id, s->client_msg_id.data, PARLEY_MSG_ID_LEN);
    if (S.n_sends < 8) S.n_sends++;
    break;
  }
  default:
    FZ_CHECK(0, "engine wrote frame type %d, which only a gateway sends",
             (int)f->body_case);
  }
  pw_frame_free(f);
}

static void drain(void) {
  const uint8_t *data;
  size_t len;
  while (pe_engine_take_output(S.e, &data, &len)) check_output_frame(data, len);
}

/* What the transport does after every call: write, close, reconnect. */
static void after_call(void) {
  drain();
  int code = 0;
  if (pe_engine_should_close(S.e, &code)) {
    FZ_CHECK(code >= 1000 && code < 5000, "close code %d", code);
    pe_engine_on_disconnect(S.e, S.now);
    drain();
  }
}

static void tick(uint64_t t) {
  S.now = t;
  pe_engine_on_tick(S.e, t);
  after_call();
  uint64_t d = pe_engine_deadline(S.e);
  FZ_CHECK(d > t, "deadline %llu not after on_tick(%llu): the transport would spin",
           (unsigned long long)d, (unsigned long long)t);
}

static void advance(uint64_t ms) {
  uint64_t to = S.now + ms;
  for (int steps = 0; steps < MAX_STEPS; steps++) {
    uint64_t d = pe_engine_deadline(S.e);
    if (d > to) break;
    tick(d > S.now ? d : S.now);
  }
  tick(to);
  /* The transport reconnects once the backoff has passed. */
  if (!pe_engine_ready(S.e)) {
    uint64_t at = pe_engine_reconnect_at(S.e);
    if (at != UINT64_MAX && at <= to) {
      if (pe_engine_on_connect(S.e, to) == 0) {
        for (size_t i = 0; i < S.n_tr; i++) S.tr[i].has_wire = false;
      }
      after_call();
    }
  }
}

/* ------------------------------------------------- reflecting gateway */

/* Random frames rarely answer what the engine asked (a FetchResult must
 * name the request id and start at the requested seq). A reflect record
 * makes up a consistent gateway answer to the latest request instead, so
 * the fuzzer reaches the engine's deeper states. */

static void feed(const pw_frame *f) {
  uint8_t *buf = NULL;
  size_t len = 0;
  FZ_CHECK(pw_encode(f, 0, &buf, &len) == 0, "pw_encode failed");
  (void)pe_engine_on_input(S.e, buf, len, S.now);
  free(buf);
  after_call();
}

static void make_events(Parley__V1__Event *ev, Parley__V1__Event **evs, size_t n,
                        const char *conv, uint64_t first) {
  for (size_t i = 0; i < n; i++) {
    parley__v1__event__init(&ev[i]);
    ev[i].conversation = (char *)conv;
    ev[i].seq = first + i;
    /* Gateway events carry no message id, so an event made up twice is
     * the same event both times. */
    ev[i].kind = PARLEY__V1__EVENT_KIND__EVENT_TAGGED;
    ev[i].sender = "gw";
    evs[i] = &ev[i];
  }
}

static void reflect_send_ack(uint8_t sub) {
  if (!S.n_sends) return;
  size_t k = (S.next_send - 1 - (sub >> 2) % S.n_sends) % 8;
  track *t = track_get(S.sends[k].conv);
  if (!t) return;
  static const Parley__V1__ErrorCode codes[8] = {
      PARLEY__V1__ERROR_CODE__ERROR_NONE,  PARLEY__V1__ERROR_CODE__ERROR_NONE,
      PARLEY__V1__ERROR_CODE__ERROR_NONE,  PARLEY__V1__ERROR_CODE__ERROR_NONE,
      PARLEY__V1__ERROR_CODE__ERROR_NONE,  PARLEY__V1__ERROR_CODE__ERROR_BUSY,
      PARLEY__V1__ERROR_CODE__ERROR_CLOSED, PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH};
  Parley__V1__SendAck a = PARLEY__V1__SEND_ACK__INIT;
  a.client_msg_id.data = S.sends[k].id;
  a.client_msg_id.len = PARLEY_MSG_ID_LEN;
  a.conversation = S.sends[k].conv;
  a.error = codes[sub >> 5];
  a.seq = a.error ? 0 : ++t->gw_top;
  a.duplicate = (sub >> 5) == 4;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_SEND_ACK;
  f.send_ack = &a;
  feed(&f);
}

static void reflect_fetch(uint8_t sub) {
  if (!S.has_fetch) return;
  track *t = track_get(S.fetch_conv);
  if (!t) return;
  Parley__V1__Event ev[4], *evs[4];
  size_t n = (sub >> 2) & 3;
  uint64_t top = t->gw_top > S.fetch_from + n ? t->gw_top : S.fetch_from + n;
  if (S.fetch_to && S.fetch_from + n > S.fetch_to + 1) n = S.fetch_to + 1 - S.fetch_from;
  make_events(ev, evs, n, S.fetch_conv, S.fetch_from);
  Parley__V1__FetchResult r = PARLEY__V1__FETCH_RESULT__INIT;
  r.request_id = S.fetch_req;
  r.conversation = S.fetch_conv;
  r.events = evs;
  r.n_events = n;
  r.end = sub & 0x10 || n == 0;
  r.last_seq = sub & 0x20 ? top : S.fetch_from + n - 1;
  if (sub & 0x40) r.error = PARLEY__V1__ERROR_CODE__ERROR_FORBIDDEN;
  t->gw_top = top;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_FETCH_RESULT;
  f.fetch_result = &r;
  feed(&f);
}

static void reflect_commit(uint8_t sub) {
  if (!S.n_commit) return;
  Parley__V1__CommitOutcome o[8], *os[8];
  for (size_t i = 0; i < S.n_commit; i++) {
    parley__v1__commit_outcome__init(&o[i]);
    o[i].conversation = S.commit[i].conv;
    o[i].ack_seq = S.commit[i].ack_seq;
    o[i].duplicate = (sub >> (2 + i % 4)) & 1;
    if ((sub >> 6) == 2) o[i].error = PARLEY__V1__ERROR_CODE__ERROR_INTERNAL;
    if ((sub >> 6) == 3) o[i].error = PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH;
    o[i].state_version = i + 1;
    os[i] = &o[i];
  }
  Parley__V1__CommitResult r = PARLEY__V1__COMMIT_RESULT__INIT;
  r.request_id = S.commit_req;
  r.outcomes = os;
  r.n_outcomes = S.n_commit;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_COMMIT_RESULT;
  f.commit_result = &r;
  feed(&f);
}

/* The next events of a conversation, with a gap of 0..3 seqs. */
static void reflect_deliver(uint8_t sub) {
  const char *conv = convs[(sub >> 2) & 3];
  track *t = track_get(conv);
  if (!t) return;
  if (S.bot && t->epoch == 0) {
    Parley__V1__Assign a = PARLEY__V1__ASSIGN__INIT;
    a.conversation = (char *)conv;
    a.epoch = 1;
    a.acked_seq = t->gw_top;
    pw_frame f = PARLEY__V1__FRAME__INIT;
    f.body_case = PARLEY__V1__FRAME__BODY_ASSIGN;
    f.assign = &a;
    feed(&f);
  }
  Parley__V1__Event ev[2], *evs[2];
  size_t n = 1 + ((sub >> 6) & 1);
  uint64_t first = t->gw_top + 1 + ((sub >> 4) & 3);
  make_events(ev, evs, n, conv, first);
  ev[0].redelivered = sub >> 7;
  t->gw_top = first + n - 1;
  Parley__V1__Deliver d = PARLEY__V1__DELIVER__INIT;
  d.events = evs;
  d.n_events = n;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_DELIVER;
  f.deliver = &d;
  feed(&f);
}

static void reflect(uint8_t sub) {
  switch (sub & 3) {
  case 0: reflect_send_ack(sub); break;
  case 1: reflect_fetch(sub); break;
  case 2: reflect_commit(sub); break;
  default: reflect_deliver(sub); break;
  }
}

/* ------------------------------------------------------------ driver */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_reader in = {data, size};
  memset(&S, 0, sizeof S);
  S.flags = fz_u8(&in);
  S.bot = S.flags & F_BOT;
  S.now = 1000;

  static const char *const queues[] = {"billing", "tech"};
  pe_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.principal = S.bot ? "faq-bot" : "alice";
  cfg.token = "t0ken";
  cfg.role = S.bot ? PARLEY_ROLE_BOT
                   : (S.flags & F_AGENT ? PARLEY_ROLE_AGENT : PARLEY_ROLE_CUSTOMER);
  cfg.device = "dev-1";
  cfg.locale = "en";
  cfg.queues = queues;
  cfg.n_queues = S.flags & F_AGENT ? 2 : 0;
  cfg.manual_ack = S.flags & F_MANUAL;
  cfg.out_headroom = 16;
  cfg.tuning.seed = 42;
  if (S.flags & F_TIGHT) {
    cfg.tuning.reorder_max = 3;
    cfg.tuning.reorder_max_bytes = 2048;
    cfg.tuning.outbox_max = 4;
    cfg.tuning.ack_batch_n = 2;
    cfg.tuning.max_attempts = 2;
    cfg.tuning.fetch_page = 2;
    cfg.tuning.heartbeat_ms = 500;
    cfg.tuning.max_frame_bytes = 1024;
    cfg.outbox_max_bytes = 4096;
  }
  pe_hooks hooks = {.event = on_event,
                    .send_result = on_send_result,
                    .commit_result = on_commit_result,
                    .assign = on_assign,
                    .revoke = on_revoke,
                    .queue = on_queue,
                    .peer_error = on_peer_error};
  S.e = pe_engine_new(&cfg, &hooks);
  FZ_CHECK(S.e != NULL, "pe_engine_new failed");
  FZ_CHECK(pe_engine_on_connect(S.e, S.now) == 0, "on_connect failed");
  after_call();

  while (!fz_empty(&in)) {
    uint8_t h = fz_u8(&in);
    switch (h & 7) {
    case 3:
      reflect(fz_u8(&in));
      break;
    case 0: case 1: case 2: {
      size_t len;
      const uint8_t *frame = fz_bytes(&in, fz_u16(&in), &len);
      (void)pe_engine_on_input(S.e, frame, len, S.now);
      break;
    }
    case 4: {
      const char *conv = convs[fz_u8(&in) % N_CONVS];
      uint32_t id = fz_u8(&in);
      app_send(conv, id, fz_u8(&in));
      break;
    }
    case 5: {
      const char *conv = convs[fz_u8(&in) % N_CONVS];
      uint32_t id = 0x100u + fz_u8(&in);
      app_action(conv, id, fz_u8(&in));
      break;
    }
    case 6: {
      const char *conv = convs[fz_u8(&in) % N_CONVS];
      app_ack(conv, fz_u8(&in));
      break;
    }
    default: {
      uint8_t op = fz_u8(&in);
      if (op == 0) pe_engine_on_disconnect(S.e, S.now);
      else if (op == 1) (void)pe_engine_close(S.e, S.now, S.now + 3000);
      break;
    }
    }
    after_call();
    uint64_t dt = (uint64_t)(h >> 3);
    advance(dt * dt * 16);
  }

  parley_client_stats st;
  pe_engine_stats(S.e, &st);
  pe_engine_free(S.e);
  free(S.done);
  return 0;
}
