/* Writes the seed corpora of the fuzz targets: small, valid inputs that
 * start the fuzzer off deep inside each parser instead of at its first
 * length check. Frames are built with the protoc-c types and encoded with
 * the real codec, so the seeds follow the schema as it is.
 *
 *   fuzz_gen_corpus <corpus-dir>
 *
 * writes <corpus-dir>/<target>/<name> for every target; existing files of
 * the same name are replaced, others are left alone. The output is
 * deterministic. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <parley/types.h>

#include "wire/wire.h"

static const char *g_root;

static void die(const char *what) {
  fprintf(stderr, "fuzz_gen_corpus: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void write_file(const char *target, const char *name, const void *data,
                       size_t len) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", g_root, target);
  if (mkdir(path, 0755) != 0 && errno != EEXIST) die(path);
  snprintf(path, sizeof path, "%s/%s/%s", g_root, target, name);
  FILE *f = fopen(path, "wb");
  if (!f) die(path);
  if (len && fwrite(data, 1, len, f) != len) die(path);
  if (fclose(f) != 0) die(path);
}

/* ------------------------------------------------------------ frames */

/* A growable byte buffer; the generator's inputs are tiny, so running out
 * of memory simply ends the program. */
typedef struct bytes {
  uint8_t *p;
  size_t len, cap;
} bytes;

static void put(bytes *b, const void *data, size_t len) {
  if (len == 0) return;
  if (b->len + len > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->len + len) cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p) die("realloc");
    b->cap = cap;
  }
  memcpy(b->p + b->len, data, len);
  b->len += len;
}

static void put_u8(bytes *b, uint8_t v) { put(b, &v, 1); }

static void put_u16(bytes *b, uint16_t v) {
  put_u8(b, (uint8_t)(v & 0xFF));
  put_u8(b, (uint8_t)(v >> 8));
}

/* The fuzz_engine_input id scheme: byte 0xF0, then the number. */
static void msg_id(uint8_t out[PARLEY_MSG_ID_LEN], uint32_t n) {
  memset(out, 0, PARLEY_MSG_ID_LEN);
  out[0] = 0xF0;
  out[1] = (uint8_t)n;
  out[2] = (uint8_t)(n >> 8);
  out[3] = (uint8_t)(n >> 16);
  out[4] = (uint8_t)(n >> 24);
}

static bytes encode(const pw_frame *f) {
  uint8_t *buf;
  size_t len;
  if (pw_encode(f, 0, &buf, &len) != 0) die("pw_encode");
  /* A seed that its own decoder refuses would only mislead. */
  pw_frame *g = NULL;
  const char *why = NULL;
  if (pw_decode(buf, len, 0, &g, &why) != 0) {
    fprintf(stderr, "fuzz_gen_corpus: seed frame type %d does not decode: %s\n",
            (int)f->body_case, why ? why : "?");
    exit(1);
  }
  pw_frame_free(g);
  bytes b = {buf, len, len};
  return b;
}

static bytes fr_welcome(uint32_t hb, uint32_t window, const char *cursor_conv,
                        uint64_t after) {
  Parley__V1__Welcome w = PARLEY__V1__WELCOME__INIT;
  Parley__V1__ResumeCursor rc = PARLEY__V1__RESUME_CURSOR__INIT;
  Parley__V1__ResumeCursor *rcs[1] = {&rc};
  w.version = 1;
  w.principal = "alice";
  w.session = "s-1";
  w.server_time_ms = 1700000000000;
  w.heartbeat_ms = hb;
  w.max_frame_bytes = 1u << 20;
  w.window = window;
  w.ack_timeout_ms = 5000;
  if (cursor_conv) {
    rc.conversation = (char *)cursor_conv;
    rc.after_seq = after;
    w.cursors = rcs;
    w.n_cursors = 1;
  }
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_WELCOME;
  f.welcome = &w;
  return encode(&f);
}

static void event_text(Parley__V1__Event *ev, Parley__V1__Content *c, Parley__V1__Text *t,
                       const char *conv, uint64_t seq, const char *body, uint8_t *id,
                       uint32_t id_n) {
  parley__v1__event__init(ev);
  parley__v1__content__init(c);
  parley__v1__text__init(t);
  t->body = (char *)body;
  c->body_case = PARLEY__V1__CONTENT__BODY_TEXT;
  c->text = t;
  ev->conversation = (char *)conv;
  ev->seq = seq;
  ev->kind = PARLEY__V1__EVENT_KIND__EVENT_MESSAGE;
  ev->server_time_ms = 1700000000000 + (int64_t)seq;
  ev->sender = "bob";
  ev->sender_role = PARLEY__V1__ROLE__ROLE_CUSTOMER;
  if (id) {
    msg_id(id, id_n);
    ev->client_msg_id.data = id;
    ev->client_msg_id.len = PARLEY_MSG_ID_LEN;
  }
  ev->content = c;
}

/* A Deliver of text events conv#first .. conv#first+n-1; ids n0, n0+1... */
static bytes fr_deliver_n(const char *conv, uint64_t first, size_t n, uint32_t id0,
                          bool redelivered) {
  Parley__V1__Event ev[8];
  Parley__V1__Content c[8];
  Parley__V1__Text t[8];
  Parley__V1__Event *evs[8];
  uint8_t ids[8][PARLEY_MSG_ID_LEN];
  if (n > 8) n = 8;
  for (size_t i = 0; i < n; i++) {
    event_text(&ev[i], &c[i], &t[i], conv, first + i, "hi there", id0 ? ids[i] : NULL,
               id0 + (uint32_t)i);
    ev[i].redelivered = redelivered;
    evs[i] = &ev[i];
  }
  Parley__V1__Deliver d = PARLEY__V1__DELIVER__INIT;
  d.events = evs;
  d.n_events = n;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_DELIVER;
  f.deliver = &d;
  return encode(&f);
}

/* A Deliver with one event of every non-message kind. */
static bytes fr_deliver_kinds(const char *conv, uint64_t first) {
  Parley__V1__Event ev[6];
  Parley__V1__Event *evs[6];
  for (int i = 0; i < 6; i++) {
    parley__v1__event__init(&ev[i]);
    ev[i].conversation = (char *)conv;
    ev[i].seq = first + (uint64_t)i;
    ev[i].sender = "gateway";
    ev[i].sender_role = PARLEY__V1__ROLE__ROLE_SYSTEM;
    evs[i] = &ev[i];
  }
  ev[0].kind = PARLEY__V1__EVENT_KIND__EVENT_OPENED;
  ev[0].customer = "bob";
  ev[0].locale = "en";
  ev[1].kind = PARLEY__V1__EVENT_KIND__EVENT_ASSIGNED;
  ev[1].assignee = "faq-bot";
  Parley__V1__Action act = PARLEY__V1__ACTION__INIT;
  Parley__V1__Tag tag = PARLEY__V1__TAG__INIT;
  char *add[] = {"vip"};
  tag.add = add;
  tag.n_add = 1;
  act.body_case = PARLEY__V1__ACTION__BODY_TAG;
  act.tag = &tag;
  ev[2].kind = PARLEY__V1__EVENT_KIND__EVENT_TAGGED;
  ev[2].action = &act;
  char *tags[] = {"vip", "new"};
  ev[2].tags = tags;
  ev[2].n_tags = 2;
  char *keys[] = {"step"};
  ev[3].kind = PARLEY__V1__EVENT_KIND__EVENT_STATE_CHANGED;
  ev[3].state_keys = keys;
  ev[3].n_state_keys = 1;
  Parley__V1__Action act2 = PARLEY__V1__ACTION__INIT;
  Parley__V1__Handoff ho = PARLEY__V1__HANDOFF__INIT;
  ho.queue = "billing";
  ho.note = "needs a human";
  act2.body_case = PARLEY__V1__ACTION__BODY_HANDOFF;
  act2.handoff = &ho;
  ev[4].kind = PARLEY__V1__EVENT_KIND__EVENT_HANDED_OFF;
  ev[4].action = &act2;
  /* A card message quoting an earlier event. */
  Parley__V1__Content c = PARLEY__V1__CONTENT__INIT;
  Parley__V1__Card card = PARLEY__V1__CARD__INIT;
  Parley__V1__Button btn = PARLEY__V1__BUTTON__INIT;
  Parley__V1__Button *btns[1] = {&btn};
  btn.label = "Track";
  btn.action_case = PARLEY__V1__BUTTON__ACTION_POSTBACK;
  btn.postback = "track";
  card.title = "Order 42";
  card.text = "Shipped";
  card.buttons = btns;
  card.n_buttons = 1;
  c.body_case = PARLEY__V1__CONTENT__BODY_CARD;
  c.card = &card;
  c.fallback = "Order 42: Shipped";
  Parley__V1__Quote q = PARLEY__V1__QUOTE__INIT;
  q.seq = first;
  q.excerpt = "opened";
  q.sender = "gateway";
  ev[5].kind = PARLEY__V1__EVENT_KIND__EVENT_MESSAGE;
  ev[5].content = &c;
  ev[5].quote = &q;
  Parley__V1__Deliver d = PARLEY__V1__DELIVER__INIT;
  d.events = evs;
  d.n_events = 6;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_DELIVER;
  f.deliver = &d;
  return encode(&f);
}

static bytes fr_send_ack(const char *conv, uint32_t id_n, uint64_t seq, bool dup,
                         Parley__V1__ErrorCode err) {
  uint8_t id[PARLEY_MSG_ID_LEN];
  msg_id(id, id_n);
  Parley__V1__SendAck a = PARLEY__V1__SEND_ACK__INIT;
  a.client_msg_id.data = id;
  a.client_msg_id.len = PARLEY_MSG_ID_LEN;
  a.conversation = (char *)conv;
  a.seq = seq;
  a.server_time_ms = 1700000000500;
  a.duplicate = dup;
  a.error = err;
  if (err) a.message = "refused";
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_SEND_ACK;
  f.send_ack = &a;
  return encode(&f);
}

static bytes fr_fetch_result(uint64_t req, const char *conv, uint64_t first, size_t n,
                             bool end, uint64_t last_seq) {
  Parley__V1__Event ev[8];
  Parley__V1__Content c[8];
  Parley__V1__Text t[8];
  Parley__V1__Event *evs[8];
  if (n > 8) n = 8;
  for (size_t i = 0; i < n; i++) {
    event_text(&ev[i], &c[i], &t[i], conv, first + i, "fetched", NULL, 0);
    evs[i] = &ev[i];
  }
  Parley__V1__FetchResult r = PARLEY__V1__FETCH_RESULT__INIT;
  r.request_id = req;
  r.conversation = (char *)conv;
  r.events = evs;
  r.n_events = n;
  r.end = end;
  r.last_seq = last_seq;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_FETCH_RESULT;
  f.fetch_result = &r;
  return encode(&f);
}

static bytes fr_ping(uint64_t nonce) {
  Parley__V1__Ping p = PARLEY__V1__PING__INIT;
  p.nonce = nonce;
  p.time_ms = 1700000000000;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_PING;
  f.ping = &p;
  return encode(&f);
}

static bytes fr_pong(uint64_t nonce) {
  Parley__V1__Pong p = PARLEY__V1__PONG__INIT;
  p.nonce = nonce;
  p.time_ms = 1700000000000;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_PONG;
  f.pong = &p;
  return encode(&f);
}

static bytes fr_error(Parley__V1__ErrorCode code, uint32_t retry_after, bool fatal,
                      const char *conv, uint32_t id_n) {
  uint8_t id[PARLEY_MSG_ID_LEN];
  Parley__V1__Error e = PARLEY__V1__ERROR__INIT;
  e.code = code;
  e.message = "slow down";
  e.retry_after_ms = retry_after;
  e.fatal = fatal;
  if (conv) e.conversation = (char *)conv;
  if (id_n) {
    msg_id(id, id_n);
    e.client_msg_id.data = id;
    e.client_msg_id.len = PARLEY_MSG_ID_LEN;
  }
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_ERROR;
  f.error = &e;
  return encode(&f);
}

static bytes fr_assign(const char *conv, uint64_t epoch, uint64_t acked) {
  Parley__V1__Assign a = PARLEY__V1__ASSIGN__INIT;
  Parley__V1__StateEntry st = PARLEY__V1__STATE_ENTRY__INIT;
  Parley__V1__StateEntry *sts[1] = {&st};
  char *tags[] = {"new"};
  st.key = "step";
  st.value.data = (uint8_t *)"{\"n\":0}";
  st.value.len = 7;
  a.conversation = (char *)conv;
  a.epoch = epoch;
  a.state = sts;
  a.n_state = 1;
  a.state_version = 3;
  a.acked_seq = acked;
  a.locale = "en";
  a.customer = "bob";
  a.tags = tags;
  a.n_tags = 1;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_ASSIGN;
  f.assign = &a;
  return encode(&f);
}

static bytes fr_revoke(const char *conv, uint64_t epoch) {
  Parley__V1__Revoke r = PARLEY__V1__REVOKE__INIT;
  r.conversation = (char *)conv;
  r.epoch = epoch;
  r.reason = "handed_off";
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_REVOKE;
  f.revoke = &r;
  return encode(&f);
}

static bytes fr_commit_result(uint64_t req, const char *conv, uint64_t ack_seq,
                              Parley__V1__ErrorCode err) {
  Parley__V1__CommitResult r = PARLEY__V1__COMMIT_RESULT__INIT;
  Parley__V1__CommitOutcome o = PARLEY__V1__COMMIT_OUTCOME__INIT;
  Parley__V1__CommitOutcome *os[1] = {&o};
  o.conversation = (char *)conv;
  o.ack_seq = ack_seq;
  o.error = err;
  o.state_version = 4;
  r.request_id = req;
  r.outcomes = os;
  r.n_outcomes = 1;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_COMMIT_RESULT;
  f.commit_result = &r;
  return encode(&f);
}

static bytes fr_queue_result(uint64_t req) {
  Parley__V1__QueueResult r = PARLEY__V1__QUEUE_RESULT__INIT;
  Parley__V1__QueueItem it = PARLEY__V1__QUEUE_ITEM__INIT;
  Parley__V1__QueueItem *its[1] = {&it};
  it.conversation = "c2";
  it.queue = "billing";
  it.customer = "bob";
  it.note = "refund";
  it.since_ms = 1700000000000;
  it.last_seq = 7;
  it.locale = "en";
  r.request_id = req;
  r.items = its;
  r.n_items = 1;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_QUEUE_RESULT;
  f.queue_result = &r;
  return encode(&f);
}

static bytes fr_queue_update(bool removed) {
  Parley__V1__QueueUpdate u = PARLEY__V1__QUEUE_UPDATE__INIT;
  Parley__V1__QueueItem it = PARLEY__V1__QUEUE_ITEM__INIT;
  it.conversation = "c2";
  it.queue = "billing";
  it.customer = "bob";
  u.item = &it;
  u.removed = removed;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_QUEUE_UPDATE;
  f.queue_update = &u;
  return encode(&f);
}

/* Client-to-gateway frames, for the decoder's corpus. */
static bytes fr_hello(void) {
  Parley__V1__Hello h = PARLEY__V1__HELLO__INIT;
  Parley__V1__ResumeCursor rc = PARLEY__V1__RESUME_CURSOR__INIT;
  Parley__V1__ResumeCursor *rcs[1] = {&rc};
  char *queues[] = {"billing"};
  rc.conversation = "c1";
  rc.after_seq = 4;
  h.min_version = 1;
  h.max_version = 1;
  h.principal = "alice";
  h.token = "t0ken";
  h.role = PARLEY__V1__ROLE__ROLE_AGENT;
  h.device = "dev-1";
  h.resume = rcs;
  h.n_resume = 1;
  h.window = 64;
  h.client = "parley-c/0.1.0";
  h.locale = "en";
  h.queues = queues;
  h.n_queues = 1;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_HELLO;
  f.hello = &h;
  return encode(&f);
}

static bytes fr_send(int kind) {
  uint8_t id[PARLEY_MSG_ID_LEN];
  msg_id(id, 9);
  Parley__V1__Send s = PARLEY__V1__SEND__INIT;
  s.client_msg_id.data = id;
  s.client_msg_id.len = PARLEY_MSG_ID_LEN;
  s.conversation = "shop:42";
  Parley__V1__Content c = PARLEY__V1__CONTENT__INIT;
  Parley__V1__Text t = PARLEY__V1__TEXT__INIT;
  Parley__V1__QuickReplies qr = PARLEY__V1__QUICK_REPLIES__INIT;
  Parley__V1__QuickReply r1 = PARLEY__V1__QUICK_REPLY__INIT;
  Parley__V1__QuickReply *rs[1] = {&r1};
  Parley__V1__Image img = PARLEY__V1__IMAGE__INIT;
  Parley__V1__Postback pb = PARLEY__V1__POSTBACK__INIT;
  Parley__V1__Action a = PARLEY__V1__ACTION__INIT;
  Parley__V1__SetLocale sl = PARLEY__V1__SET_LOCALE__INIT;
  Parley__V1__Quote q = PARLEY__V1__QUOTE__INIT;
  switch (kind) {
  case 0:
    t.body = "Where is my order?";
    c.body_case = PARLEY__V1__CONTENT__BODY_TEXT;
    c.text = &t;
    q.seq = 2;
    q.excerpt = "Hello";
    q.sender = "faq-bot";
    s.quote = &q;
    s.locale = "en";
    break;
  case 1:
    r1.label = "Yes";
    r1.payload = "yes";
    qr.text = "Did that help?";
    qr.replies = rs;
    qr.n_replies = 1;
    c.body_case = PARLEY__V1__CONTENT__BODY_QUICK_REPLIES;
    c.quick_replies = &qr;
    c.fallback = "Did that help? [Yes]";
    s.epoch = 2;
    break;
  case 2:
    img.url = "https://example.com/p.png";
    img.alt = "parcel";
    img.width = 640;
    img.height = 480;
    c.body_case = PARLEY__V1__CONTENT__BODY_IMAGE;
    c.image = &img;
    c.fallback = "[image: parcel]";
    break;
  case 3:
    pb.payload = "yes";
    pb.label = "Yes";
    pb.source_seq = 5;
    c.body_case = PARLEY__V1__CONTENT__BODY_POSTBACK;
    c.postback = &pb;
    c.fallback = "Yes";
    break;
  default:
    sl.locale = "de-CH";
    a.body_case = PARLEY__V1__ACTION__BODY_SET_LOCALE;
    a.set_locale = &sl;
    break;
  }
  if (kind < 4) {
    s.body_case = PARLEY__V1__SEND__BODY_CONTENT;
    s.content = &c;
  } else {
    s.body_case = PARLEY__V1__SEND__BODY_ACTION;
    s.action = &a;
  }
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_SEND;
  f.send = &s;
  return encode(&f);
}

static bytes fr_ack(void) {
  Parley__V1__Ack a = PARLEY__V1__ACK__INIT;
  Parley__V1__AckEntry e1 = PARLEY__V1__ACK_ENTRY__INIT, e2 = PARLEY__V1__ACK_ENTRY__INIT;
  Parley__V1__AckEntry *es[2] = {&e1, &e2};
  e1.conversation = "c1";
  e1.up_to_seq = 7;
  e2.conversation = "c2";
  e2.up_to_seq = 1;
  a.entries = es;
  a.n_entries = 2;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_ACK;
  f.ack = &a;
  return encode(&f);
}

static bytes fr_fetch(void) {
  Parley__V1__Fetch x = PARLEY__V1__FETCH__INIT;
  x.request_id = 1;
  x.conversation = "c1";
  x.from_seq = 2;
  x.to_seq = 9;
  x.limit = 200;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_FETCH;
  f.fetch = &x;
  return encode(&f);
}

static bytes fr_commit(void) {
  Parley__V1__Commit c = PARLEY__V1__COMMIT__INIT;
  Parley__V1__ConversationCommit k = PARLEY__V1__CONVERSATION_COMMIT__INIT;
  Parley__V1__ConversationCommit *ks[1] = {&k};
  Parley__V1__StateEntry s1 = PARLEY__V1__STATE_ENTRY__INIT, s2 = PARLEY__V1__STATE_ENTRY__INIT;
  Parley__V1__StateEntry *ss[2] = {&s1, &s2};
  char *add[] = {"handled"}, *rm[] = {"new"};
  s1.key = "step";
  s1.value.data = (uint8_t *)"{\"n\":2}";
  s1.value.len = 7;
  s2.key = "old";
  s2.deleted = true;
  k.conversation = "c1";
  k.epoch = 1;
  k.ack_seq = 3;
  k.state = ss;
  k.n_state = 2;
  k.tags_add = add;
  k.n_tags_add = 1;
  k.tags_remove = rm;
  k.n_tags_remove = 1;
  c.request_id = 1;
  c.items = ks;
  c.n_items = 1;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_COMMIT;
  f.commit = &c;
  return encode(&f);
}

static bytes fr_queue_request(void) {
  Parley__V1__QueueRequest q = PARLEY__V1__QUEUE_REQUEST__INIT;
  q.request_id = 1;
  q.queue = "billing";
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_QUEUE_REQUEST;
  f.queue_request = &q;
  return encode(&f);
}

static void seed_frame(const char *name, bytes b) {
  write_file("fuzz_frame_decode", name, b.p, b.len);
  free(b.p);
}

static void gen_frame_decode(void) {
  seed_frame("hello", fr_hello());
  seed_frame("welcome", fr_welcome(10000, 100, "c1", 4));
  seed_frame("ping", fr_ping(7));
  seed_frame("pong", fr_pong(7));
  seed_frame("send_text", fr_send(0));
  seed_frame("send_quick_replies", fr_send(1));
  seed_frame("send_image", fr_send(2));
  seed_frame("send_postback", fr_send(3));
  seed_frame("send_action", fr_send(4));
  seed_frame("send_ack", fr_send_ack("c1", 1, 3, false, 0));
  seed_frame("send_ack_busy", fr_send_ack("c1", 1, 0, false,
                                          PARLEY__V1__ERROR_CODE__ERROR_BUSY));
  seed_frame("deliver", fr_deliver_n("c1", 1, 3, 100, false));
  seed_frame("deliver_kinds", fr_deliver_kinds("c2", 1));
  seed_frame("ack", fr_ack());
  seed_frame("fetch", fr_fetch());
  seed_frame("fetch_result", fr_fetch_result(1, "c1", 2, 2, true, 3));
  seed_frame("commit", fr_commit());
  seed_frame("commit_result", fr_commit_result(1, "c1", 2, 0));
  seed_frame("assign", fr_assign("c1", 1, 0));
  seed_frame("revoke", fr_revoke("c1", 1));
  seed_frame("queue_request", fr_queue_request());
  seed_frame("queue_result", fr_queue_result(1));
  seed_frame("queue_update", fr_queue_update(true));
  seed_frame("error", fr_error(PARLEY__V1__ERROR_CODE__ERROR_RATE_LIMITED, 500, false,
                               "c1", 1));
}

/* ------------------------------------------------------- engine input */

/* Flag bits and record kinds of fuzz_engine_input.c. */
enum { F_BOT = 1, F_MANUAL = 2, F_REPLY = 4, F_CB_ACK = 8, F_TIGHT = 16, F_AGENT = 32 };

/* dt: the clock then advances by dt * dt * 16 ms (dt < 32). */
static void rec_frame(bytes *p, uint8_t dt, bytes fr) {
  put_u8(p, (uint8_t)(dt << 3 | 0));
  put_u16(p, (uint16_t)fr.len);
  put(p, fr.p, fr.len);
  free(fr.p);
}

static void rec_app(bytes *p, uint8_t dt, uint8_t kind, uint8_t a, uint8_t b, uint8_t c) {
  put_u8(p, (uint8_t)(dt << 3 | kind));
  put_u8(p, a);
  put_u8(p, b);
  if (kind == 4 || kind == 5) put_u8(p, c);
}

static void rec_ack(bytes *p, uint8_t dt, uint8_t conv, uint8_t seq) {
  put_u8(p, (uint8_t)(dt << 3 | 6));
  put_u8(p, conv);
  put_u8(p, seq);
}

/* The reflecting gateway: sub & 3 = 0 SendAck, 1 FetchResult,
 * 2 CommitResult, 3 next events. */
static void rec_reflect(bytes *p, uint8_t dt, uint8_t sub) {
  put_u8(p, (uint8_t)(dt << 3 | 3));
  put_u8(p, sub);
}

static void rec_ctl(bytes *p, uint8_t dt, uint8_t op) {
  put_u8(p, (uint8_t)(dt << 3 | 7));
  put_u8(p, op);
}

static void seed_engine(const char *name, bytes *p) {
  write_file("fuzz_engine_input", name, p->p, p->len);
  free(p->p);
  memset(p, 0, sizeof *p);
}

static void gen_engine(void) {
  bytes p = {0};

  /* A customer: Welcome, in-order events, a send and its ACK, its own
   * message coming back in the stream, a Ping, the batch ACK timer. */
  put_u8(&p, 0);
  rec_frame(&p, 0, fr_welcome(10000, 100, "c1", 0));
  rec_frame(&p, 1, fr_deliver_n("c1", 1, 2, 100, false));
  rec_app(&p, 0, 4, 0, 1, 0); /* send text in c1, id 1 */
  rec_frame(&p, 1, fr_send_ack("c1", 1, 3, false, 0));
  rec_frame(&p, 1, fr_deliver_n("c1", 3, 1, 1, false));
  rec_frame(&p, 2, fr_ping(7));
  rec_frame(&p, 0, fr_deliver_kinds("c2", 1));
  rec_ctl(&p, 20, 2);
  seed_engine("customer_basic", &p);

  /* A gap: seq 4 before 2 and 3, the gap timer, Fetch, FetchResult. */
  put_u8(&p, 0);
  rec_frame(&p, 0, fr_welcome(10000, 100, NULL, 0));
  rec_frame(&p, 0, fr_deliver_n("c1", 1, 1, 0, false));
  rec_frame(&p, 5, fr_deliver_n("c1", 4, 1, 0, false));
  rec_frame(&p, 0, fr_fetch_result(1, "c1", 2, 2, true, 4));
  rec_frame(&p, 0, fr_deliver_n("c1", 3, 2, 0, true)); /* duplicates */
  seed_engine("customer_gap_fetch", &p);

  /* Retries: a send refused with BUSY, a timeout, a lost connection,
   * reconnect with backoff, the send written again and stored as a
   * duplicate. */
  put_u8(&p, F_MANUAL | F_CB_ACK);
  rec_frame(&p, 0, fr_welcome(10000, 100, NULL, 0));
  rec_app(&p, 0, 4, 1, 2, 1); /* card in c2, id 2 */
  rec_app(&p, 0, 4, 1, 3, 0); /* queued behind it */
  rec_frame(&p, 0, fr_send_ack("c2", 2, 0, false, PARLEY__V1__ERROR_CODE__ERROR_BUSY));
  rec_frame(&p, 0, fr_deliver_n("c2", 1, 2, 50, false));
  rec_ack(&p, 0, 1, 2);
  rec_ctl(&p, 12, 0); /* disconnect, wait */
  rec_frame(&p, 0, fr_welcome(10000, 100, "c2", 2));
  rec_frame(&p, 0, fr_send_ack("c2", 2, 3, true, 0));
  rec_frame(&p, 0, fr_send_ack("c2", 3, 4, false, 0));
  rec_frame(&p, 0, fr_error(PARLEY__V1__ERROR_CODE__ERROR_RATE_LIMITED, 800, false, "c2", 3));
  rec_ctl(&p, 0, 1); /* graceful close */
  seed_engine("customer_retry_reconnect", &p);

  /* A bot: assignment with state, events, a reply from inside the event
   * callback, commits waiting for the reply's ACK, CommitResult, Revoke. */
  put_u8(&p, F_BOT | F_REPLY | F_CB_ACK);
  rec_frame(&p, 0, fr_welcome(10000, 100, NULL, 0));
  rec_frame(&p, 0, fr_assign("c1", 1, 0));
  rec_frame(&p, 1, fr_deliver_n("c1", 1, 2, 200, false));
  rec_frame(&p, 0, fr_send_ack("c1", 1, 3, false, 0));
  rec_frame(&p, 0, fr_send_ack("c1", 2, 4, false, 0));
  rec_frame(&p, 0, fr_commit_result(1, "c1", 1, 0));
  rec_frame(&p, 0, fr_commit_result(2, "c1", 2, 0));
  rec_app(&p, 0, 5, 0, 1, 1); /* tag action in c1 */
  rec_frame(&p, 0, fr_revoke("c1", 1));
  rec_frame(&p, 0, fr_assign("c1", 2, 2));
  rec_frame(&p, 0, fr_commit_result(3, "c1", 3, PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH));
  seed_engine("bot_assign_commit", &p);

  /* A bot committing by hand, with a redelivery after a lost connection. */
  put_u8(&p, F_BOT);
  rec_frame(&p, 0, fr_welcome(10000, 100, NULL, 0));
  rec_frame(&p, 0, fr_assign("shop:42", 5, 3));
  rec_frame(&p, 0, fr_deliver_n("shop:42", 4, 3, 0, false));
  rec_ack(&p, 0, 2, 5); /* commit shop:42 up to 5 */
  rec_ctl(&p, 14, 0);
  rec_frame(&p, 0, fr_welcome(10000, 100, NULL, 0));
  rec_frame(&p, 0, fr_assign("shop:42", 5, 5));
  rec_frame(&p, 0, fr_deliver_n("shop:42", 6, 1, 0, true));
  rec_frame(&p, 0, fr_commit_result(2, "shop:42", 5, 0));
  seed_engine("bot_redelivery", &p);

  /* An agent: queue listing and updates, taking a conversation. */
  put_u8(&p, F_AGENT);
  rec_frame(&p, 0, fr_welcome(10000, 100, NULL, 0));
  rec_ack(&p, 0, 0, 0x80); /* queue request for "billing" */
  rec_frame(&p, 0, fr_queue_result(1));
  rec_frame(&p, 0, fr_queue_update(false));
  rec_app(&p, 0, 5, 1, 4, 4); /* take c2 */
  rec_frame(&p, 0, fr_send_ack("c2", 0x104, 9, false, 0));
  rec_frame(&p, 0, fr_deliver_n("c2", 1, 3, 0, false));
  rec_frame(&p, 0, fr_queue_update(true));
  seed_engine("agent_queue", &p);

  /* Tight limits: a small reorder buffer overflowing into a fetch, short
   * heartbeats, the peer going silent. */
  put_u8(&p, F_TIGHT);
  rec_frame(&p, 0, fr_welcome(500, 4, NULL, 0));
  rec_frame(&p, 0, fr_deliver_n("c1", 3, 5, 0, false));
  rec_frame(&p, 0, fr_deliver_n("c2", 2, 1, 0, false));
  rec_app(&p, 0, 4, 0, 1, 2);
  rec_app(&p, 0, 4, 0, 2, 3);
  rec_app(&p, 0, 4, 1, 3, 4);
  rec_frame(&p, 3, fr_pong(1));
  rec_ctl(&p, 31, 2);
  seed_engine("tight_limits", &p);

  /* A customer against the reflecting gateway: events with gaps that are
   * fetched and answered, sends answered in turn. */
  put_u8(&p, F_REPLY);
  rec_frame(&p, 0, fr_welcome(10000, 100, NULL, 0));
  rec_reflect(&p, 0, 3);        /* c1#1 (and the reply) */
  rec_reflect(&p, 0, 0);        /* SendAck of the reply */
  rec_reflect(&p, 6, 3 | 0x20); /* c1: two seqs skipped; the gap timer */
  rec_reflect(&p, 0, 1 | 0x10 | 0x08); /* FetchResult */
  rec_reflect(&p, 0, 0);
  rec_reflect(&p, 0, 3 | 0x04 | 0x40); /* c2: two events */
  rec_reflect(&p, 0, 0 | 0xA0); /* BUSY */
  rec_reflect(&p, 8, 0);
  seed_engine("reflect_customer", &p);

  /* A bot against the reflecting gateway: assignment, events, replies and
   * commits from inside the callback, their ACKs and CommitResults. */
  put_u8(&p, F_BOT | F_REPLY | F_CB_ACK);
  rec_frame(&p, 0, fr_welcome(10000, 100, NULL, 0));
  rec_reflect(&p, 0, 3);
  rec_reflect(&p, 0, 0);
  rec_reflect(&p, 0, 2);
  rec_reflect(&p, 0, 3 | 0x04);
  rec_reflect(&p, 0, 0);
  rec_reflect(&p, 0, 2 | 0x80); /* INTERNAL: retried */
  rec_reflect(&p, 4, 2);
  rec_reflect(&p, 6, 3 | 0x10);
  rec_reflect(&p, 0, 1);
  seed_engine("reflect_bot", &p);

  /* The handshake going wrong: a Ping first, a fatal error with
   * retry-after, a Welcome with another version. */
  put_u8(&p, 0);
  rec_frame(&p, 0, fr_ping(1));
  rec_frame(&p, 0, fr_error(PARLEY__V1__ERROR_CODE__ERROR_UNAUTHENTICATED, 1000, true, NULL, 0));
  rec_ctl(&p, 0, 0);
  rec_ctl(&p, 10, 2);
  {
    Parley__V1__Welcome w = PARLEY__V1__WELCOME__INIT;
    w.version = 2;
    pw_frame f = PARLEY__V1__FRAME__INIT;
    f.body_case = PARLEY__V1__FRAME__BODY_WELCOME;
    f.welcome = &w;
    rec_frame(&p, 10, encode(&f));
  }
  seed_engine("handshake_errors", &p);
}

/* -------------------------------------------------------- reassembly */

static void piece(bytes *p, bool first, bool last, bool reset, size_t len, uint8_t fill) {
  uint8_t c = (uint8_t)((first ? 1 : 0) | (last ? 2 : 0) | (reset ? 4 : 0));
  if (len < 31) {
    put_u8(p, (uint8_t)(c | len << 3));
  } else {
    put_u8(p, (uint8_t)(c | 31 << 3));
    put_u16(p, (uint16_t)len);
  }
  for (size_t i = 0; i < len; i++) put_u8(p, (uint8_t)(fill + i));
}

static void seed_reasm(const char *name, bytes *p) {
  write_file("fuzz_reassembly", name, p->p, p->len);
  free(p->p);
  memset(p, 0, sizeof *p);
}

static void gen_reassembly(void) {
  bytes p = {0};
  put_u16(&p, 99);
  piece(&p, true, true, false, 10, 'a');
  piece(&p, true, true, false, 0, 0);
  seed_reasm("single_pieces", &p);

  put_u16(&p, 4095);
  piece(&p, true, false, false, 5, 'a');
  piece(&p, false, false, false, 300, 'b');
  piece(&p, false, false, false, 0, 0);
  piece(&p, false, true, false, 3, 'c');
  piece(&p, true, false, false, 20, 'd');
  piece(&p, false, true, false, 20, 'e');
  seed_reasm("fragments", &p);

  put_u16(&p, 15);
  piece(&p, true, false, false, 10, 'a');
  piece(&p, false, true, false, 10, 'b');
  piece(&p, true, true, false, 16, 'c');
  piece(&p, true, true, false, 17, 'd');
  seed_reasm("too_big", &p);

  put_u16(&p, 63);
  piece(&p, false, true, false, 4, 'a');
  piece(&p, true, false, false, 4, 'b');
  piece(&p, true, false, false, 4, 'c');
  piece(&p, true, false, true, 4, 'd');
  piece(&p, false, true, false, 4, 'e');
  seed_reasm("malformed_and_reset", &p);

  /* A message over PT_REASM_KEEP_BYTES, so its buffer is released when
   * the next one starts. */
  put_u16(&p, 0x8000 | 4500); /* max 72001 */
  piece(&p, true, false, false, 30000, 'a');
  piece(&p, false, false, false, 30000, 'b');
  piece(&p, false, true, false, 5600, 'c');
  piece(&p, true, false, false, 2, 'd');
  piece(&p, false, true, false, 2, 'e');
  seed_reasm("large_then_small", &p);
}

/* ------------------------------------------------------------ config */

static void seed_yaml(const char *name, const char *text) {
  write_file("fuzz_config", name, text, strlen(text));
}

static void gen_config(void) {
  seed_yaml("gateway.yaml",
            "# gateway.yaml\n"
            "listen:\n"
            "  host: 127.0.0.1\n"
            "  port: 8443\n"
            "limits:\n"
            "  max_frame_bytes: 1MiB\n"
            "  idle_timeout: 30s\n"
            "  max_conns: 1000\n"
            "tls:\n"
            "  enabled: no\n"
            "  cert: \"/etc/parley/cert.pem\"\n"
            "db: /var/lib/parley/gw.db\n");
  seed_yaml("bot.yaml",
            "name: faq\n"
            "url: ws://127.0.0.1:8443/v1\n"
            "token: ${TOKEN}\n"
            "heartbeat: 10 s\n"
            "budget:\n"
            "  memory: 8MiB\n"
            "  instructions: 1000000\n"
            "http:\n"
            "  allow: [api.example.com, \"*.shop.example\"]\n"
            "  timeout: 2500ms\n"
            "locales:\n"
            "  - en\n"
            "  - de-CH\n"
            "fallback: \"Sorry, something went wrong.\"\n");
  seed_yaml("flow_and_scalars.yaml",
            "{a: 1, b: [true, off, ~, null, \"null\"], c: {d: 18446744073709551615}}\n"
            "---\n"
            "ignored: second document\n");
  seed_yaml("block_scalars.yaml",
            "text: |\n"
            "  line one\n"
            "  line two\n"
            "folded: >-\n"
            "  folded\n"
            "  text\n"
            "quoted: 'it''s'\n"
            "utf8: \"\\u00e9t\\u00e9 \xe2\x82\xac\"\n"
            "sizes: [1024, 1024B, 512KiB, 2TiB, 1MB]\n"
            "durations: [250ms, 5s, 2m, 1h, 1.5s, 5d]\n");
  seed_yaml("anchor_alias.yaml",
            "base: &b\n"
            "  x: 1\n"
            "copy: *b\n");
  seed_yaml("duplicate_keys.yaml",
            "limits:\n"
            "  port: 1\n"
            "  port: 2\n");
  seed_yaml("nested_seq.yaml",
            "bots:\n"
            "  - name: faq\n"
            "    queues: [billing, tech]\n"
            "  - name: orders\n"
            "    limits: {max_frame_bytes: 64KiB}\n"
            "? complex key\n"
            ": value\n"
            "!!str tagged: !custom 5\n");
  seed_yaml("bad_indent.yaml", "a:\n  b: 1\n c: 2\n\t- x\n");
}

/* ---------------------------------------------------------- templates */

/* fuzz_templates: en.yaml \0 de.yaml \0 pt_BR.yaml \0 locale \0 number. */
static void seed_templates(const char *name, const char *const parts[5]) {
  bytes b = {0};
  for (size_t i = 0; i < 5 && parts[i]; i++) {
    if (i) put_u8(&b, 0);
    put(&b, parts[i], strlen(parts[i]));
  }
  write_file("fuzz_templates", name, b.p, b.len);
  free(b.p);
}

static void gen_templates(void) {
  static const char *const three[5] = {
      "greeting: \"Hi {name}!\"\n"
      "order:\n"
      "  not_found: \"No order {id}.\"\n"
      "  items:\n"
      "    one: \"{count} item\"\n"
      "    other: \"{count} items\"\n",
      "greeting: \"Hallo {name}!\"\n"
      "order:\n"
      "  not_found: \"Keine Bestellung {id}.\"\n"
      "  items: {one: \"{count} Artikel\", other: \"{count} Artikel\"}\n",
      "greeting: \"Ol\xc3\xa1 {name}!\"\n"
      "order.items:\n"
      "  one: \"{count} item\"\n"
      "  many: \"{count} de itens\"\n"
      "  other: \"{count} itens\"\n",
      "zh-TW", "2"};
  seed_templates("three_locales", three);
  static const char *const broken[5] = {
      "greeting: \"Hi\"\nlist: [a, b]\nplural: {one: x}\n",
      "greeting: \"Hallo {who}\"\nextra: \"nur hier\"\n",
      NULL, NULL, NULL};
  seed_templates("errors", broken);
  static const char *const no_default[5] = {"", "greeting: Hallo\n", "", "pt_BR", "1.5"};
  seed_templates("missing_default", no_default);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s <corpus-dir>\n", argv[0]);
    return 2;
  }
  g_root = argv[1];
  if (mkdir(g_root, 0755) != 0 && errno != EEXIST) die(g_root);
  gen_frame_decode();
  gen_engine();
  gen_reassembly();
  gen_config();
  gen_templates();
  return 0;
}
