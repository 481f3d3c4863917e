/* Wire codec tests: every frame type survives encode/decode with its
 * fields intact, and malformed input is refused with the right code. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "core/convert.h"
#include "harness.h"

/* Encodes f, decodes the bytes back, checks that re-encoding the result
 * gives the same bytes, and returns the decoded frame. */
static pw_frame *round_trip(const pw_frame *f) {
  uint8_t *buf = NULL, *buf2 = NULL;
  size_t len = 0, len2 = 0;
  H_EQ(pw_encode(f, 16, &buf, &len), 0);
  pw_frame *out = NULL;
  const char *why = NULL;
  int rc = pw_decode(buf + 16, len, 0, &out, &why);
  if (rc != 0) H_FAIL("decode failed: %s (%s)", parley_errname(rc), why ? why : "");
  H_EQ(out->body_case, f->body_case);
  H_EQ(pw_encode(out, 0, &buf2, &len2), 0);
  H_EQ(len2, len);
  H_TRUE(memcmp(buf + 16, buf2, len) == 0);
  free(buf);
  free(buf2);
  return out;
}

static uint8_t ID[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

static void t_session_frames(void **state) {
  (void)state;
  /* Hello */
  Parley__V1__ResumeCursor rc = PARLEY__V1__RESUME_CURSOR__INIT, *rcp = &rc;
  rc.conversation = "c-1";
  rc.after_seq = 0xFFFFFFFFFFull;
  char *queues[] = {"billing", "vip"};
  Parley__V1__Hello he = PARLEY__V1__HELLO__INIT;
  he.min_version = 1;
  he.max_version = 2;
  he.principal = "alice";
  he.token = "tok";
  he.role = PARLEY__V1__ROLE__ROLE_AGENT;
  he.device = "d";
  he.n_resume = 1;
  he.resume = &rcp;
  he.window = 64;
  he.client = "parley-c/0.1";
  he.locale = "de-CH";
  he.n_queues = 2;
  he.queues = queues;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_HELLO;
  f.hello = &he;
  pw_frame *o = round_trip(&f);
  H_EQ(o->hello->min_version, 1);
  H_EQ(o->hello->max_version, 2);
  H_STREQ(o->hello->principal, "alice");
  H_STREQ(o->hello->token, "tok");
  H_EQ(o->hello->role, PARLEY__V1__ROLE__ROLE_AGENT);
  H_STREQ(o->hello->device, "d");
  H_EQ(o->hello->n_resume, 1);
  H_STREQ(o->hello->resume[0]->conversation, "c-1");
  H_EQ(o->hello->resume[0]->after_seq, 0xFFFFFFFFFFull);
  H_EQ(o->hello->window, 64);
  H_STREQ(o->hello->client, "parley-c/0.1");
  H_STREQ(o->hello->locale, "de-CH");
  H_EQ(o->hello->n_queues, 2);
  H_STREQ(o->hello->queues[1], "vip");
  pw_frame_free(o);

  /* Welcome */
  Parley__V1__Welcome we = PARLEY__V1__WELCOME__INIT;
  we.version = 1;
  we.principal = "alice";
  we.session = "s-9";
  we.server_time_ms = -5;
  we.heartbeat_ms = 10000;
  we.max_frame_bytes = 1 << 20;
  we.window = 128;
  we.ack_timeout_ms = 3000;
  we.n_cursors = 1;
  we.cursors = &rcp;
  f.body_case = PARLEY__V1__FRAME__BODY_WELCOME;
  f.welcome = &we;
  o = round_trip(&f);
  H_EQ(o->welcome->version, 1);
  H_STREQ(o->welcome->session, "s-9");
  H_EQ(o->welcome->server_time_ms, (uint64_t)-5);
  H_EQ(o->welcome->heartbeat_ms, 10000);
  H_EQ(o->welcome->max_frame_bytes, 1 << 20);
  H_EQ(o->welcome->window, 128);
  H_EQ(o->welcome->ack_timeout_ms, 3000);
  H_EQ(o->welcome->cursors[0]->after_seq, 0xFFFFFFFFFFull);
  pw_frame_free(o);

  /* Ping, Pong */
  Parley__V1__Ping pi = PARLEY__V1__PING__INIT;
  pi.nonce = UINT64_MAX;
  pi.time_ms = INT64_MAX;
  f.body_case = PARLEY__V1__FRAME__BODY_PING;
  f.ping = &pi;
  o = round_trip(&f);
  H_EQ(o->ping->nonce, UINT64_MAX);
  H_EQ(o->ping->time_ms, INT64_MAX);
  pw_frame_free(o);
  Parley__V1__Pong po = PARLEY__V1__PONG__INIT;
  po.nonce = 7;
  po.time_ms = 8;
  f.body_case = PARLEY__V1__FRAME__BODY_PONG;
  f.pong = &po;
  o = round_trip(&f);
  H_EQ(o->pong->nonce, 7);
  H_EQ(o->pong->time_ms, 8);
  pw_frame_free(o);

  /* Error */
  Parley__V1__Error er = PARLEY__V1__ERROR__INIT;
  er.code = PARLEY__V1__ERROR_CODE__ERROR_RATE_LIMITED;
  er.message = "slow down";
  er.conversation = "c-1";
  er.client_msg_id.data = ID;
  er.client_msg_id.len = 16;
  er.request_id = 44;
  er.retry_after_ms = 1500;
  er.fatal = true;
  f.body_case = PARLEY__V1__FRAME__BODY_ERROR;
  f.error = &er;
  o = round_trip(&f);
  H_EQ(o->error->code, PARLEY__V1__ERROR_CODE__ERROR_RATE_LIMITED);
  H_STREQ(o->error->message, "slow down");
  H_STREQ(o->error->conversation, "c-1");
  H_TRUE(o->error->client_msg_id.len == 16 && memcmp(o->error->client_msg_id.data, ID, 16) == 0);
  H_EQ(o->error->request_id, 44);
  H_EQ(o->error->retry_after_ms, 1500);
  H_TRUE(o->error->fatal);
  pw_frame_free(o);
}

/* Builds each content variant through the engine's own converter, sends
 * it through the codec and reads it back as a parley_content. */
static void check_content(const parley_content *in, const Parley__V1__Quote *quote) {
  pe_arena a = PE_ARENA_INIT;
  Parley__V1__Send s = PARLEY__V1__SEND__INIT;
  s.client_msg_id.data = ID;
  s.client_msg_id.len = 16;
  s.conversation = "conv:1@x";
  s.body_case = PARLEY__V1__SEND__BODY_CONTENT;
  s.content = pe_content_to_wire(&a, in);
  H_TRUE(s.content != NULL);
  s.quote = (Parley__V1__Quote *)quote;
  s.epoch = 3;
  s.locale = "fr";
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_SEND;
  f.send = &s;
  pw_frame *o = round_trip(&f);
  pe_arena_free(&a);
  H_STREQ(o->send->conversation, "conv:1@x");
  H_EQ(o->send->epoch, 3);
  H_STREQ(o->send->locale, "fr");
  H_TRUE(memcmp(o->send->client_msg_id.data, ID, 16) == 0);
  if (quote) {
    H_EQ(o->send->quote->seq, quote->seq);
    H_STREQ(o->send->quote->excerpt, quote->excerpt);
    H_STREQ(o->send->quote->sender, quote->sender);
  } else {
    H_TRUE(o->send->quote == NULL);
  }
  pe_arena b = PE_ARENA_INIT;
  parley_content out;
  pe_content_from_wire(&b, o->send->content, &out);
  H_EQ(out.kind, in->kind);
  if (in->text) H_STREQ(out.text, in->text);
  if (in->title) H_STREQ(out.title, in->title);
  if (in->image_url) H_STREQ(out.image_url, in->image_url);
  if (in->payload) H_STREQ(out.payload, in->payload);
  if (in->label) H_STREQ(out.label, in->label);
  H_EQ(out.source_seq, in->source_seq);
  H_EQ(out.width, in->width);
  H_EQ(out.height, in->height);
  H_EQ(out.n_buttons, in->n_buttons);
  for (size_t i = 0; i < in->n_buttons; i++) {
    H_STREQ(out.buttons[i].label, in->buttons[i].label);
    if (in->buttons[i].payload) H_STREQ(out.buttons[i].payload, in->buttons[i].payload);
    if (in->buttons[i].url) H_STREQ(out.buttons[i].url, in->buttons[i].url);
  }
  if (in->fallback) H_STREQ(out.fallback, in->fallback);
  else if (in->kind != PARLEY_CONTENT_TEXT) H_TRUE(out.fallback && out.fallback[0]);
  pe_arena_free(&b);
  pw_frame_free(o);
}

static void t_content_variants(void **state) {
  (void)state;
  parley_content text = {.kind = PARLEY_CONTENT_TEXT, .text = "Grüezi 👋"};
  check_content(&text, NULL);
  Parley__V1__Quote q = PARLEY__V1__QUOTE__INIT;
  q.seq = 41;
  q.excerpt = "where is my order";
  q.sender = "bob";
  check_content(&text, &q);
  parley_button cb[] = {{.label = "Track", .payload = "track:42"},
                        {.label = "Help", .url = "https://help.example/42"}};
  parley_content card = {.kind = PARLEY_CONTENT_CARD, .title = "Order 42", .text = "Shipped",
                         .image_url = "https://img.example/42.png", .buttons = cb,
                         .n_buttons = 2, .fallback = "Order 42 shipped"};
  check_content(&card, NULL);
  card.fallback = NULL; /* generated */
  check_content(&card, NULL);
  parley_button qb[] = {{.label = "Yes", .payload = "y"}, {.label = "No", .payload = "n"}};
  parley_content qr = {.kind = PARLEY_CONTENT_QUICK_REPLIES, .text = "Continue?", .buttons = qb,
                       .n_buttons = 2};
  check_content(&qr, NULL);
  parley_content img = {.kind = PARLEY_CONTENT_IMAGE, .image_url = "https://img.example/a.png",
                        .text = "a chart", .width = 640, .height = 480};
  check_content(&img, NULL);
  parley_content pb = {.kind = PARLEY_CONTENT_POSTBACK, .payload = "track:42", .label = "Track",
                       .source_seq = 0x100000001ull};
  check_content(&pb, NULL);

  /* Generated fallbacks, exactly. */
  pe_arena a = PE_ARENA_INIT;
  H_STREQ(pe_fallback_render(&a, &qr), "Continue?\n1. Yes\n2. No");
  H_STREQ(pe_fallback_render(&a, &img), "[image: a chart] https://img.example/a.png");
  H_STREQ(pe_fallback_render(&a, &pb), "Track");
  /* A huge card is cut at a character boundary under the limit. */
  char *big = malloc(PE_FALLBACK_MAX * 2);
  for (size_t i = 0; i + 2 < PE_FALLBACK_MAX * 2; i += 2) {
    big[i] = (char)0xC3; /* "é" */
    big[i + 1] = (char)0xA9;
  }
  big[PE_FALLBACK_MAX * 2 - 2] = '\0';
  parley_content bc = {.kind = PARLEY_CONTENT_CARD, .title = "T", .text = big};
  const char *fb = pe_fallback_render(&a, &bc);
  H_TRUE(strlen(fb) <= PE_FALLBACK_MAX);
  H_TRUE(((unsigned char)fb[strlen(fb) - 1]) == 0xA9);
  free(big);
  pe_arena_free(&a);
}

static void check_action(const parley_action *in) {
  pe_arena a = PE_ARENA_INIT;
  Parley__V1__Send s = PARLEY__V1__SEND__INIT;
  s.client_msg_id.data = ID;
  s.client_msg_id.len = 16;
  s.conversation = "c";
  s.body_case = PARLEY__V1__SEND__BODY_ACTION;
  s.action = pe_action_to_wire(&a, in);
  H_TRUE(s.action != NULL);
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_SEND;
  f.send = &s;
  pw_frame *o = round_trip(&f);
  pe_arena_free(&a);
  parley_action out;
  pe_action_from_wire(o->send->action, &out);
  H_EQ(out.kind, in->kind);
  H_EQ(out.n_tags_add, in->n_tags_add);
  H_EQ(out.n_tags_remove, in->n_tags_remove);
  for (size_t i = 0; i < in->n_tags_add; i++) H_STREQ(out.tags_add[i], in->tags_add[i]);
  for (size_t i = 0; i < in->n_tags_remove; i++) H_STREQ(out.tags_remove[i], in->tags_remove[i]);
  if (in->queue) H_STREQ(out.queue, in->queue);
  if (in->note) H_STREQ(out.note, in->note);
  if (in->locale) H_STREQ(out.locale, in->locale);
  pw_frame_free(o);
}

static void t_actions(void **state) {
  (void)state;
  const char *add[] = {"vip", "refund"}, *rm[] = {"new"};
  parley_action tag = {.kind = PARLEY_ACTION_TAG, .tags_add = add, .n_tags_add = 2,
                       .tags_remove = rm, .n_tags_remove = 1};
  check_action(&tag);
  parley_action ho = {.kind = PARLEY_ACTION_HANDOFF, .queue = "billing", .note = "angry"};
  check_action(&ho);
  parley_action hb = {.kind = PARLEY_ACTION_HAND_BACK, .note = "solved"};
  check_action(&hb);
  parley_action tk = {.kind = PARLEY_ACTION_TAKE};
  check_action(&tk);
  parley_action cl = {.kind = PARLEY_ACTION_CLOSE, .note = "done"};
  check_action(&cl);
  parley_action sl = {.kind = PARLEY_ACTION_SET_LOCALE, .locale = "ja-JP"};
  check_action(&sl);
}

static void t_stream_frames(void **state) {
  (void)state;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  /* SendAck */
  Parley__V1__SendAck sa = PARLEY__V1__SEND_ACK__INIT;
  sa.client_msg_id.data = ID;
  sa.client_msg_id.len = 16;
  sa.conversation = "c";
  sa.seq = 0x100000000ull;
  sa.server_time_ms = 1700000000123;
  sa.duplicate = true;
  f.body_case = PARLEY__V1__FRAME__BODY_SEND_ACK;
  f.send_ack = &sa;
  pw_frame *o = round_trip(&f);
  H_EQ(o->send_ack->seq, 0x100000000ull);
  H_EQ(o->send_ack->server_time_ms, 1700000000123);
  H_TRUE(o->send_ack->duplicate);
  H_STREQ(o->send_ack->conversation, "c");
  pw_frame_free(o);
  sa.seq = 0;
  sa.error = PARLEY__V1__ERROR_CODE__ERROR_CLOSED;
  sa.message = "closed";
  o = round_trip(&f);
  H_EQ(o->send_ack->error, PARLEY__V1__ERROR_CODE__ERROR_CLOSED);
  H_STREQ(o->send_ack->message, "closed");
  pw_frame_free(o);

  /* Deliver with events of every shape. */
  pw_frame *d = mk_deliver();
  Parley__V1__Event *ev = mk_deliver_add(d, "c", 1, "hi", ID);
  ev->redelivered = true;
  ev = mk_deliver_add(d, "c", UINT64_MAX - 1, "x", NULL);
  ev->kind = PARLEY__V1__EVENT_KIND__EVENT_TAGGED;
  ev->tags = calloc(2, sizeof *ev->tags);
  ev->tags[0] = strdup("a");
  ev->tags[1] = strdup("b");
  ev->n_tags = 2;
  ev->state_keys = calloc(1, sizeof *ev->state_keys);
  ev->state_keys[0] = strdup("k");
  ev->n_state_keys = 1;
  ev->assignee = strdup("queue:billing");
  o = round_trip(d);
  H_EQ(o->deliver->n_events, 2);
  H_EQ(o->deliver->events[0]->seq, 1);
  H_TRUE(o->deliver->events[0]->redelivered);
  H_TRUE(memcmp(o->deliver->events[0]->client_msg_id.data, ID, 16) == 0);
  H_STREQ(o->deliver->events[0]->content->text->body, "hi");
  H_STREQ(o->deliver->events[0]->sender, "bob");
  H_EQ(o->deliver->events[1]->seq, UINT64_MAX - 1);
  H_EQ(o->deliver->events[1]->kind, PARLEY__V1__EVENT_KIND__EVENT_TAGGED);
  H_EQ(o->deliver->events[1]->n_tags, 2);
  H_STREQ(o->deliver->events[1]->tags[1], "b");
  H_STREQ(o->deliver->events[1]->state_keys[0], "k");
  H_STREQ(o->deliver->events[1]->assignee, "queue:billing");
  /* And as the application sees it. */
  pe_arena a = PE_ARENA_INIT;
  parley_event pev;
  H_EQ(pe_event_from_wire(&a, o->deliver->events[1], &pev), 0);
  H_EQ(pev.kind, PARLEY_EVENT_TAGGED);
  H_EQ(pev.n_tags, 2);
  H_STREQ(pev.assignee, "queue:billing");
  H_TRUE(!pev.has_msg_id);
  pe_arena_free(&a);
  pw_frame_free(o);
  h_frame_free(d);

  /* Ack */
  Parley__V1__AckEntry ae = PARLEY__V1__ACK_ENTRY__INIT, *aep = &ae;
  ae.conversation = "c";
  ae.up_to_seq = 99;
  Parley__V1__Ack ack = PARLEY__V1__ACK__INIT;
  ack.n_entries = 1;
  ack.entries = &aep;
  f.body_case = PARLEY__V1__FRAME__BODY_ACK;
  f.ack = &ack;
  o = round_trip(&f);
  H_EQ(o->ack->entries[0]->up_to_seq, 99);
  H_STREQ(o->ack->entries[0]->conversation, "c");
  pw_frame_free(o);

  /* Fetch */
  Parley__V1__Fetch fe = PARLEY__V1__FETCH__INIT;
  fe.request_id = 5;
  fe.conversation = "c";
  fe.from_seq = 10;
  fe.to_seq = 20;
  fe.limit = 3;
  f.body_case = PARLEY__V1__FRAME__BODY_FETCH;
  f.fetch = &fe;
  o = round_trip(&f);
  H_EQ(o->fetch->request_id, 5);
  H_EQ(o->fetch->from_seq, 10);
  H_EQ(o->fetch->to_seq, 20);
  H_EQ(o->fetch->limit, 3);
  pw_frame_free(o);

  /* FetchResult */
  pw_frame *r = mk_fetch_result(5, "c", true, 12);
  mk_fetch_add(r, "c", 10, "a", ID);
  mk_fetch_add(r, "c", 11, "b", NULL);
  r->fetch_result->error = PARLEY__V1__ERROR_CODE__ERROR_NONE;
  o = round_trip(r);
  H_EQ(o->fetch_result->request_id, 5);
  H_TRUE(o->fetch_result->end);
  H_EQ(o->fetch_result->last_seq, 12);
  H_EQ(o->fetch_result->n_events, 2);
  H_EQ(o->fetch_result->events[1]->seq, 11);
  pw_frame_free(o);
  h_frame_free(r);
}

static void t_bot_agent_frames(void **state) {
  (void)state;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  /* Commit */
  Parley__V1__StateEntry se1 = PARLEY__V1__STATE_ENTRY__INIT, se2 = PARLEY__V1__STATE_ENTRY__INIT;
  se1.key = "step";
  se1.value.data = (uint8_t *)"{\"n\":1}";
  se1.value.len = 7;
  se2.key = "gone";
  se2.deleted = true;
  Parley__V1__StateEntry *sep[] = {&se1, &se2};
  char *tadd[] = {"faq"}, *trm[] = {"new"};
  Parley__V1__ConversationCommit cc = PARLEY__V1__CONVERSATION_COMMIT__INIT, *ccp = &cc;
  cc.conversation = "c";
  cc.epoch = 4;
  cc.ack_seq = 17;
  cc.n_state = 2;
  cc.state = sep;
  cc.n_tags_add = 1;
  cc.tags_add = tadd;
  cc.n_tags_remove = 1;
  cc.tags_remove = trm;
  Parley__V1__Commit cm = PARLEY__V1__COMMIT__INIT;
  cm.request_id = 8;
  cm.n_items = 1;
  cm.items = &ccp;
  f.body_case = PARLEY__V1__FRAME__BODY_COMMIT;
  f.commit = &cm;
  pw_frame *o = round_trip(&f);
  const Parley__V1__ConversationCommit *oc = o->commit->items[0];
  H_EQ(o->commit->request_id, 8);
  H_EQ(oc->epoch, 4);
  H_EQ(oc->ack_seq, 17);
  H_EQ(oc->n_state, 2);
  H_EQ(oc->state[0]->value.len, 7);
  H_TRUE(memcmp(oc->state[0]->value.data, "{\"n\":1}", 7) == 0);
  H_TRUE(oc->state[1]->deleted);
  H_STREQ(oc->tags_add[0], "faq");
  H_STREQ(oc->tags_remove[0], "new");
  pw_frame_free(o);

  /* CommitResult */
  pw_frame *cr = mk_commit_result(8);
  mk_commit_outcome(cr, "c", 17, PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH, true);
  cr->commit_result->outcomes[0]->state_version = 33;
  o = round_trip(cr);
  H_EQ(o->commit_result->request_id, 8);
  H_EQ(o->commit_result->outcomes[0]->ack_seq, 17);
  H_EQ(o->commit_result->outcomes[0]->error, PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH);
  H_TRUE(o->commit_result->outcomes[0]->duplicate);
  H_EQ(o->commit_result->outcomes[0]->state_version, 33);
  pw_frame_free(o);
  h_frame_free(cr);

  /* Assign */
  Parley__V1__Assign as = PARLEY__V1__ASSIGN__INIT;
  as.conversation = "c";
  as.epoch = 9;
  as.n_state = 2;
  as.state = sep;
  as.state_version = 12;
  as.acked_seq = 16;
  as.locale = "en";
  as.customer = "bob";
  as.n_tags = 1;
  as.tags = tadd;
  f.body_case = PARLEY__V1__FRAME__BODY_ASSIGN;
  f.assign = &as;
  o = round_trip(&f);
  H_EQ(o->assign->epoch, 9);
  H_EQ(o->assign->state_version, 12);
  H_EQ(o->assign->acked_seq, 16);
  H_STREQ(o->assign->customer, "bob");
  H_STREQ(o->assign->state[0]->key, "step");
  H_STREQ(o->assign->tags[0], "faq");
  pw_frame_free(o);

  /* Revoke */
  Parley__V1__Revoke rv = PARLEY__V1__REVOKE__INIT;
  rv.conversation = "c";
  rv.epoch = 9;
  rv.reason = "handed_off";
  f.body_case = PARLEY__V1__FRAME__BODY_REVOKE;
  f.revoke = &rv;
  o = round_trip(&f);
  H_EQ(o->revoke->epoch, 9);
  H_STREQ(o->revoke->reason, "handed_off");
  pw_frame_free(o);

  /* QueueRequest, QueueResult, QueueUpdate */
  Parley__V1__QueueRequest qr = PARLEY__V1__QUEUE_REQUEST__INIT;
  qr.request_id = 3;
  qr.queue = "billing";
  f.body_case = PARLEY__V1__FRAME__BODY_QUEUE_REQUEST;
  f.queue_request = &qr;
  o = round_trip(&f);
  H_EQ(o->queue_request->request_id, 3);
  H_STREQ(o->queue_request->queue, "billing");
  pw_frame_free(o);
  Parley__V1__QueueItem qi = PARLEY__V1__QUEUE_ITEM__INIT, *qip = &qi;
  qi.conversation = "c";
  qi.queue = "billing";
  qi.customer = "bob";
  qi.note = "angry";
  qi.since_ms = 1700000000000;
  qi.last_seq = 12;
  qi.locale = "en";
  Parley__V1__QueueResult qres = PARLEY__V1__QUEUE_RESULT__INIT;
  qres.request_id = 3;
  qres.n_items = 1;
  qres.items = &qip;
  f.body_case = PARLEY__V1__FRAME__BODY_QUEUE_RESULT;
  f.queue_result = &qres;
  o = round_trip(&f);
  H_EQ(o->queue_result->n_items, 1);
  H_STREQ(o->queue_result->items[0]->note, "angry");
  H_EQ(o->queue_result->items[0]->last_seq, 12);
  H_EQ(o->queue_result->items[0]->since_ms, 1700000000000);
  pw_frame_free(o);
  Parley__V1__QueueUpdate qu = PARLEY__V1__QUEUE_UPDATE__INIT;
  qu.item = &qi;
  qu.removed = true;
  f.body_case = PARLEY__V1__FRAME__BODY_QUEUE_UPDATE;
  f.queue_update = &qu;
  o = round_trip(&f);
  H_TRUE(o->queue_update->removed);
  H_STREQ(o->queue_update->item->customer, "bob");
  pw_frame_free(o);
}

/* --------------------------------------------------------------- refusals */

static int decode_rc(const uint8_t *d, size_t n, size_t max) {
  pw_frame *f = (pw_frame *)0x1;
  const char *why = NULL;
  int rc = pw_decode(d, n, max, &f, &why);
  if (rc == 0) pw_frame_free(f);
  else {
    H_TRUE(f == NULL);
    H_TRUE(why != NULL);
  }
  return rc;
}

static int encode_decode_rc(const pw_frame *f) {
  uint8_t *buf;
  size_t len;
  H_EQ(pw_encode(f, 0, &buf, &len), 0);
  int rc = decode_rc(buf, len, 0);
  free(buf);
  return rc;
}

static void t_malformed(void **state) {
  (void)state;
  /* A valid Deliver, then every truncation of it. */
  pw_frame *d = mk_deliver();
  mk_deliver_add(d, "c", 1, "hello there", ID);
  uint8_t *buf;
  size_t len;
  H_EQ(pw_encode(d, 0, &buf, &len), 0);
  H_EQ(decode_rc(buf, len, 0), 0);
  for (size_t n = 1; n < len; n++) {
    int rc = decode_rc(buf, n, 0);
    if (rc != PARLEY_EMALFORMED) H_FAIL("truncated to %zu of %zu: %s", n, len, parley_errname(rc));
  }
  /* Oversized: refused before parsing, even when the bytes are valid. */
  H_EQ(decode_rc(buf, len, len - 1), PARLEY_ETOOBIG);
  uint8_t *big = malloc(PW_DEFAULT_MAX_FRAME + 1);
  memset(big, 0xff, PW_DEFAULT_MAX_FRAME + 1);
  H_EQ(decode_rc(big, PW_DEFAULT_MAX_FRAME + 1, 0), PARLEY_ETOOBIG);
  free(big);
  free(buf);
  h_frame_free(d);

  /* Garbage. */
  const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
  H_EQ(decode_rc(garbage, sizeof garbage, 0), PARLEY_EMALFORMED);
  const uint8_t bad_len[] = {0x3a, 0x7f, 0x01};  /* Deliver claiming 127 bytes */
  H_EQ(decode_rc(bad_len, sizeof bad_len, 0), PARLEY_EMALFORMED);
  /* Wrong wire types: field 1 (hello, a message) as a varint; field 3
   * (ping) as a fixed32. */
  const uint8_t wt1[] = {0x08, 0x01};
  H_EQ(decode_rc(wt1, sizeof wt1, 0), PARLEY_EMALFORMED);
  const uint8_t wt2[] = {0x1d, 0x01, 0x02, 0x03, 0x04};
  H_EQ(decode_rc(wt2, sizeof wt2, 0), PARLEY_EMALFORMED);
  /* Inside a Ping: nonce (a varint) sent length-delimited. */
  const uint8_t wt3[] = {0x1a, 0x03, 0x0a, 0x01, 0x00};
  H_EQ(decode_rc(wt3, sizeof wt3, 0), PARLEY_EMALFORMED);

  /* Field number 0 in the long form protobuf-c keeps as unknown (80 00),
   * at each depth the check walks: in the Frame, in a Ping body, in the
   * second Event of a Deliver (a repeated field), and inside an Event's
   * content. Without the nested walk the deeper ones would come back
   * EINVAL from the body checks instead. */
  const uint8_t z0[] = {0x80, 0x00, 0x01, 0x1a, 0x00};
  H_EQ(decode_rc(z0, sizeof z0, 0), PARLEY_EMALFORMED);
  const uint8_t z1[] = {0x1a, 0x03, 0x80, 0x00, 0x01};
  H_EQ(decode_rc(z1, sizeof z1, 0), PARLEY_EMALFORMED);
  const uint8_t z2[] = {0x3a, 0x07, 0x0a, 0x00, 0x0a, 0x03, 0x80, 0x00, 0x01};
  H_EQ(decode_rc(z2, sizeof z2, 0), PARLEY_EMALFORMED);
  /* Deliver{events: [Event{content (10): Content{80 00 01}}]}. */
  const uint8_t z3[] = {0x3a, 0x07, 0x0a, 0x05, 0x52, 0x03, 0x80, 0x00, 0x01};
  H_EQ(decode_rc(z3, sizeof z3, 0), PARLEY_EMALFORMED);
  /* The same frames without the field-0 bytes are not malformed. */
  const uint8_t ok3[] = {0x3a, 0x04, 0x0a, 0x02, 0x52, 0x00};
  H_TRUE(decode_rc(ok3, sizeof ok3, 0) != PARLEY_EMALFORMED);

  /* No body: empty input, and a frame with only an unknown field. */
  H_EQ(decode_rc((const uint8_t *)"", 0, 0), PARLEY_EUNSUPPORTED);
  const uint8_t unknown[] = {0xa8, 0x06, 0x01}; /* field 101, varint */
  H_EQ(decode_rc(unknown, sizeof unknown, 0), PARLEY_EUNSUPPORTED);

  /* Decodes, but invalid. */
  uint8_t short_id[15] = {0};
  pw_frame *sa = mk_send_ack(ID, "c", 1, false, 0);
  H_EQ(encode_decode_rc(sa), 0);
  sa->send_ack->client_msg_id.len = 15;
  memcpy(sa->send_ack->client_msg_id.data, short_id, 15);
  H_EQ(encode_decode_rc(sa), PARLEY_EINVAL); /* bad msg id length */
  sa->send_ack->client_msg_id.len = 16;
  sa->send_ack->seq = 0;
  H_EQ(encode_decode_rc(sa), PARLEY_EINVAL); /* stored without a seq */
  h_frame_free(sa);

  d = mk_deliver();
  Parley__V1__Event *ev = mk_deliver_add(d, "c", 0, "x", NULL);
  H_EQ(encode_decode_rc(d), PARLEY_EINVAL); /* seq 0 */
  ev->seq = 1;
  H_EQ(encode_decode_rc(d), 0);
  free(ev->conversation);
  ev->conversation = strdup("bad id!");
  H_EQ(encode_decode_rc(d), PARLEY_EINVAL); /* invalid conversation id */
  free(ev->conversation);
  ev->conversation = calloc(1, 130);
  memset(ev->conversation, 'a', 129);
  H_EQ(encode_decode_rc(d), PARLEY_EINVAL); /* 129 bytes */
  ev->conversation[128] = '\0';
  H_EQ(encode_decode_rc(d), 0); /* 128 bytes is fine */
  free(ev->conversation);
  ev->conversation = strdup("");
  H_EQ(encode_decode_rc(d), PARLEY_EINVAL); /* empty */
  free(ev->conversation);
  ev->conversation = strdup("c");
  ev->client_msg_id.data = calloc(1, 3);
  ev->client_msg_id.len = 3;
  H_EQ(encode_decode_rc(d), PARLEY_EINVAL); /* event id neither 0 nor 16 bytes */
  h_frame_free(d);

  pw_frame *r = mk_fetch_result(1, "c", true, 1);
  mk_fetch_add(r, "c", 0, "x", NULL);
  H_EQ(encode_decode_rc(r), PARLEY_EINVAL);
  h_frame_free(r);

  Parley__V1__Fetch fe = PARLEY__V1__FETCH__INIT;
  fe.conversation = "c";
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_FETCH;
  f.fetch = &fe;
  H_EQ(encode_decode_rc(&f), PARLEY_EINVAL); /* from_seq 0 */
  fe.from_seq = 5;
  fe.to_seq = 4;
  H_EQ(encode_decode_rc(&f), PARLEY_EINVAL); /* to below from */

  Parley__V1__Hello he = PARLEY__V1__HELLO__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_HELLO;
  f.hello = &he;
  /* Version ranges are the gateway's to judge, not the codec's. */
  H_EQ(encode_decode_rc(&f), 0);
  he.min_version = 2;
  he.max_version = 1;
  H_EQ(encode_decode_rc(&f), 0);

  Parley__V1__Send s = PARLEY__V1__SEND__INIT;
  s.client_msg_id.data = ID;
  s.client_msg_id.len = 16;
  s.conversation = "c";
  f.body_case = PARLEY__V1__FRAME__BODY_SEND;
  f.send = &s;
  H_EQ(encode_decode_rc(&f), PARLEY_EINVAL); /* no body */

  Parley__V1__Assign as = PARLEY__V1__ASSIGN__INIT;
  as.conversation = "c";
  f.body_case = PARLEY__V1__FRAME__BODY_ASSIGN;
  f.assign = &as;
  H_EQ(encode_decode_rc(&f), PARLEY_EINVAL); /* epoch 0 */

  Parley__V1__AckEntry ae = PARLEY__V1__ACK_ENTRY__INIT, *aep = &ae;
  ae.conversation = "c";
  Parley__V1__Ack ack = PARLEY__V1__ACK__INIT;
  ack.n_entries = 1;
  ack.entries = &aep;
  f.body_case = PARLEY__V1__FRAME__BODY_ACK;
  f.ack = &ack;
  H_EQ(encode_decode_rc(&f), PARLEY_EINVAL); /* up_to_seq 0 */
}

/* Random bytes never crash the decoder, and random mutations of valid
 * frames are either refused with a code or decode to a valid frame. */
static void t_fuzz_smoke(void **state) {
  (void)state;
  uint64_t x = 12345;
  uint8_t buf[256];
  int counts[4] = {0};
  pw_frame *d = mk_deliver();
  mk_deliver_add(d, "conv-1", 7, "text body", ID);
  uint8_t *valid;
  size_t vlen;
  H_EQ(pw_encode(d, 0, &valid, &vlen), 0);
  h_frame_free(d);
  for (int i = 0; i < 20000; i++) {
    size_t n;
    if (i % 2) {
      n = vlen < sizeof buf ? vlen : sizeof buf;
      memcpy(buf, valid, n);
      for (int k = 0; k < 3; k++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        buf[(x >> 33) % n] ^= (uint8_t)(x >> 13);
      }
    } else {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      n = (x >> 33) % sizeof buf;
      for (size_t k = 0; k < n; k++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        buf[k] = (uint8_t)(x >> 40);
      }
    }
    int rc = decode_rc(buf, n, 0);
    H_TRUE(rc == 0 || rc == PARLEY_EMALFORMED || rc == PARLEY_EINVAL || rc == PARLEY_EUNSUPPORTED);
    counts[rc == 0 ? 0 : rc == PARLEY_EMALFORMED ? 1 : rc == PARLEY_EINVAL ? 2 : 3]++;
  }
  free(valid);
  /* Both outcomes must actually occur, or the loop tested nothing. */
  H_TRUE(counts[0] > 0 && counts[1] > 0);
}

static void t_status_map(void **state) {
  (void)state;
  H_EQ(pw_status_from_code(PARLEY__V1__ERROR_CODE__ERROR_NONE), 0);
  H_EQ(pw_status_from_code(PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH), PARLEY_ESTALE_EPOCH);
  H_EQ(pw_status_from_code(PARLEY__V1__ERROR_CODE__ERROR_CLOSED), PARLEY_ECLOSED);
  H_EQ(pw_status_from_code((Parley__V1__ErrorCode)999), PARLEY_EPROTOCOL);
  H_EQ(pw_close_code(PARLEY__V1__ERROR_CODE__ERROR_FRAME_TOO_LARGE), 4002);
  H_EQ(pw_code_from_status(PARLEY_EFORBIDDEN), PARLEY__V1__ERROR_CODE__ERROR_FORBIDDEN);
}

/* pw_encode writes SendAck frames itself (wire.c, encode_send_ack): the
 * bytes must be protobuf-c's, for every combination of present and absent
 * fields, long and short varints, negative times and error codes, and the
 * frames must decode back to the same values. */
static void t_send_ack_fast_path(void **state) {
  (void)state;
  uint64_t x = 77;
  static const char *const convs[] = {NULL, "", "c", "rtt-0", "a-conversation-id-of-sixty-bytes-"
                                      "xxxxxxxxxxxxxxxxxxxxxxxxxx"};
  static const char *const msgs[] = {NULL, "", "stored", "a much longer refusal message"};
  uint8_t id[16];
  for (int i = 0; i < 4000; i++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    for (int k = 0; k < 16; k++) id[k] = (uint8_t)(x >> (k * 4));
    Parley__V1__SendAck a = PARLEY__V1__SEND_ACK__INIT;
    if (x & 1) {
      a.client_msg_id.data = id;
      a.client_msg_id.len = (x >> 8) & 1 ? 16 : (size_t)((x >> 9) % 16);
    }
    a.conversation = (char *)convs[(x >> 12) % 5];
    a.message = (char *)msgs[(x >> 15) % 4];
    int shift = (int)((x >> 20) % 64);
    a.seq = (x >> 26) & 1 ? (x >> shift) : 0;
    a.server_time_ms = (x >> 27) & 1 ? (int64_t)(x >> shift) * ((x >> 28) & 1 ? -1 : 1) : 0;
    a.duplicate = (x >> 29) & 1;
    a.error = (Parley__V1__ErrorCode)((x >> 30) & 1 ? (int)((x >> 31) % 20) - 2 : 0);
    pw_frame f = PARLEY__V1__FRAME__INIT;
    f.body_case = PARLEY__V1__FRAME__BODY_SEND_ACK;
    f.send_ack = &a;
    size_t want_len = parley__v1__frame__get_packed_size(&f);
    uint8_t *want = malloc(want_len + 1);
    H_TRUE(want != NULL);
    parley__v1__frame__pack(&f, want);
    uint8_t *got = NULL;
    size_t got_len = 0;
    H_EQ(pw_encode(&f, 16, &got, &got_len), 0);
    H_EQ(got_len, want_len);
    H_TRUE(memcmp(got + 16, want, want_len) == 0);
    Parley__V1__Frame *d = parley__v1__frame__unpack(NULL, got_len, got + 16);
    H_TRUE(d != NULL && d->body_case == PARLEY__V1__FRAME__BODY_SEND_ACK);
    H_EQ(d->send_ack->seq, a.seq);
    H_EQ(d->send_ack->server_time_ms, a.server_time_ms);
    H_EQ(d->send_ack->error, a.error);
    parley__v1__frame__free_unpacked(d, NULL);
    free(got);
    free(want);
  }
}

static void t_msg_id(void **state) {
  (void)state;
  uint8_t a[16], b[16], c[16];
  parley_msg_id_derive("bot", "conv", 5, 0, a);
  parley_msg_id_derive("bot", "conv", 5, 0, b);
  H_TRUE(memcmp(a, b, 16) == 0);
  parley_msg_id_derive("bot", "conv", 5, 1, c);
  H_TRUE(memcmp(a, c, 16) != 0);
  parley_msg_id_derive("bo", "tconv", 5, 0, c); /* length prefixes keep these apart */
  H_TRUE(memcmp(a, c, 16) != 0);
  parley_msg_id_derive("bot", "conv", 6, 0, c);
  H_TRUE(memcmp(a, c, 16) != 0);
  parley_msg_id_random(b);
  parley_msg_id_random(c);
  H_TRUE(memcmp(b, c, 16) != 0);
  char hex[33];
  uint8_t id[16];
  for (int i = 0; i < 16; i++) id[i] = (uint8_t)(i * 17);
  parley_msg_id_hex(id, hex);
  H_STREQ(hex, "00112233445566778899aabbccddeeff");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(t_session_frames), cmocka_unit_test(t_content_variants),
      cmocka_unit_test(t_actions),        cmocka_unit_test(t_stream_frames),
      cmocka_unit_test(t_bot_agent_frames), cmocka_unit_test(t_malformed),
      cmocka_unit_test(t_fuzz_smoke),     cmocka_unit_test(t_status_map),
      cmocka_unit_test(t_msg_id),         cmocka_unit_test(t_send_ack_fast_path),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
