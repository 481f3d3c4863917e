/* The gateway's session rules against a real gateway: authentication,
 * version negotiation, opening a conversation, delivery to every
 * participant, idempotent resend (also across a restart), redelivery, ACK
 * range checks, oversized and malformed frames. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <parley/error.h>

#include "gwharness.h"

/* The shared fixture (gwharness.h): a gateway in a fresh directory. */
typedef gwh_fx fx;

static void test_auth_refusals(void **state) {
  fx *f = *state;
  int code = 0;
  /* Wrong token: UNAUTHENTICATED, fatal, close 4005. */
  wsc *c = wsc_connect("127.0.0.1", gwh_port(f->h), "Bearer nope", 2000);
  assert_non_null(c);
  Parley__V1__Hello he = PARLEY__V1__HELLO__INIT;
  he.min_version = 1;
  he.max_version = 1;
  he.principal = "carol";
  he.role = R_CUSTOMER;
  pw_frame hf = PARLEY__V1__FRAME__INIT;
  hf.body_case = PARLEY__V1__FRAME__BODY_HELLO;
  hf.hello = &he;
  assert_int_equal(wsc_send_frame(c, &hf), 0);
  pw_frame *r = gwh_wait(c, PARLEY__V1__FRAME__BODY_ERROR, 2000);
  assert_non_null(r);
  assert_int_equal(r->error->code, PARLEY__V1__ERROR_CODE__ERROR_UNAUTHENTICATED);
  assert_true(r->error->fatal);
  pw_frame_free(r);
  assert_int_equal(wsc_recv_close(c, 2000), 4005);
  wsc_abort(c);

  /* Missing token. */
  assert_null(gwh_login(f->h, "carol", R_CUSTOMER, NULL, "d1", NULL, &code));
  assert_int_equal(code, PARLEY__V1__ERROR_CODE__ERROR_UNAUTHENTICATED);
  /* Right token, wrong role. */
  assert_null(gwh_login(f->h, "carol", R_AGENT, "carol-token", "d1", NULL, &code));
  assert_int_equal(code, PARLEY__V1__ERROR_CODE__ERROR_UNAUTHENTICATED);
  /* Another principal's token. */
  assert_null(gwh_login(f->h, "faqbot", R_BOT, "alice-token", "d1", NULL, &code));
  assert_int_equal(code, PARLEY__V1__ERROR_CODE__ERROR_UNAUTHENTICATED);
  /* A minted customer token for one principal does not work for another. */
  assert_null(gwh_login(f->h, "dave", R_CUSTOMER,
                        "0000000000000000000000000000000000000000000000000000000000000000", "d1",
                        NULL, &code));
  assert_int_equal(code, PARLEY__V1__ERROR_CODE__ERROR_UNAUTHENTICATED);

  /* The token may travel in Hello.token instead of the header. */
  c = wsc_connect("127.0.0.1", gwh_port(f->h), NULL, 2000);
  assert_non_null(c);
  he.token = "carol-token";
  assert_int_equal(wsc_send_frame(c, &hf), 0);
  r = NULL;
  assert_int_equal(wsc_recv_frame(c, 2000, &r), 0);
  assert_int_equal(r->body_case, PARLEY__V1__FRAME__BODY_WELCOME);
  assert_int_equal(r->welcome->version, 1);
  assert_string_equal(r->welcome->principal, "carol");
  assert_int_equal(r->welcome->window, 64);
  assert_int_equal(r->welcome->ack_timeout_ms, 400);
  pw_frame_free(r);
  wsc_close(c, 1000);
}

static void test_version_and_hello_required(void **state) {
  fx *f = *state;
  wsc *c = wsc_connect("127.0.0.1", gwh_port(f->h), "Bearer carol-token", 2000);
  assert_non_null(c);
  Parley__V1__Hello he = PARLEY__V1__HELLO__INIT;
  he.min_version = 2;
  he.max_version = 3;
  he.principal = "carol";
  he.role = R_CUSTOMER;
  pw_frame hf = PARLEY__V1__FRAME__INIT;
  hf.body_case = PARLEY__V1__FRAME__BODY_HELLO;
  hf.hello = &he;
  wsc_send_frame(c, &hf);
  pw_frame *r = gwh_wait(c, PARLEY__V1__FRAME__BODY_ERROR, 2000);
  assert_non_null(r);
  assert_int_equal(r->error->code, PARLEY__V1__ERROR_CODE__ERROR_UNSUPPORTED_VERSION);
  pw_frame_free(r);
  assert_int_equal(wsc_recv_close(c, 2000), 4003);
  wsc_abort(c);

  /* 0..0 and an empty range 2..1 include no version this gateway speaks:
   * UNSUPPORTED_VERSION, close 4003 (not INVALID). */
  const uint32_t bad[][2] = {{0, 0}, {2, 1}};
  for (int i = 0; i < 2; i++) {
    c = wsc_connect("127.0.0.1", gwh_port(f->h), "Bearer carol-token", 2000);
    assert_non_null(c);
    he.min_version = bad[i][0];
    he.max_version = bad[i][1];
    wsc_send_frame(c, &hf);
    r = gwh_wait(c, PARLEY__V1__FRAME__BODY_ERROR, 2000);
    assert_non_null(r);
    assert_int_equal(r->error->code, PARLEY__V1__ERROR_CODE__ERROR_UNSUPPORTED_VERSION);
    pw_frame_free(r);
    assert_int_equal(wsc_recv_close(c, 2000), 4003);
    wsc_abort(c);
  }

  /* 0..1 includes version 1. */
  c = wsc_connect("127.0.0.1", gwh_port(f->h), "Bearer carol-token", 2000);
  he.min_version = 0;
  he.max_version = 1;
  wsc_send_frame(c, &hf);
  r = gwh_wait(c, PARLEY__V1__FRAME__BODY_WELCOME, 2000);
  assert_non_null(r);
  assert_int_equal(r->welcome->version, 1);
  pw_frame_free(r);
  wsc_close(c, 1000);

  /* A v1..v5 client gets v1. */
  c = wsc_connect("127.0.0.1", gwh_port(f->h), "Bearer carol-token", 2000);
  he.min_version = 1;
  he.max_version = 5;
  wsc_send_frame(c, &hf);
  r = gwh_wait(c, PARLEY__V1__FRAME__BODY_WELCOME, 2000);
  assert_non_null(r);
  assert_int_equal(r->welcome->version, 1);
  pw_frame_free(r);
  wsc_close(c, 1000);

  /* Anything but Hello first. */
  c = wsc_connect("127.0.0.1", gwh_port(f->h), "Bearer carol-token", 2000);
  Parley__V1__Ping p = PARLEY__V1__PING__INIT;
  pw_frame pf = PARLEY__V1__FRAME__INIT;
  pf.body_case = PARLEY__V1__FRAME__BODY_PING;
  pf.ping = &p;
  wsc_send_frame(c, &pf);
  r = gwh_wait(c, PARLEY__V1__FRAME__BODY_ERROR, 2000);
  assert_non_null(r);
  assert_int_equal(r->error->code, PARLEY__V1__ERROR_CODE__ERROR_HELLO_REQUIRED);
  pw_frame_free(r);
  assert_int_equal(wsc_recv_close(c, 2000), 4017);
  wsc_abort(c);
}

static void test_open_and_deliver(void **state) {
  fx *f = *state;
  pw_frame *w = NULL;
  wsc *bot = gwh_login(f->h, "faqbot", R_BOT, "bot-token", NULL, &w, NULL);
  assert_non_null(bot);
  pw_frame_free(w);
  wsc *cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  wsc *cu2 = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "laptop", NULL, NULL);
  assert_non_null(cu);
  assert_non_null(cu2);
  assert_int_equal(gwh_send_text(cu, "c-open", 1, "hello", 0), 0);
  pw_frame *a = gwh_wait_ack(cu, 1, 2000);
  assert_non_null(a);
  assert_int_equal(a->send_ack->error, 0);
  assert_int_equal(a->send_ack->seq, 3);
  assert_false(a->send_ack->duplicate);
  pw_frame_free(a);
  /* The sender, its other device and the bot all get seqs 1..3. */
  uint64_t seqs[8];
  assert_int_equal(gwh_collect(cu, "c-open", 3, 2000, seqs, NULL, 8), 3);
  assert_int_equal(seqs[0], 1);
  assert_int_equal(seqs[2], 3);
  assert_int_equal(gwh_collect(cu2, "c-open", 3, 2000, seqs, NULL, 8), 3);
  pw_frame *as = gwh_wait(bot, PARLEY__V1__FRAME__BODY_ASSIGN, 2000);
  assert_non_null(as);
  assert_string_equal(as->assign->conversation, "c-open");
  assert_int_equal(as->assign->epoch, 1);
  assert_string_equal(as->assign->customer, "carol");
  assert_int_equal(as->assign->acked_seq, 0);
  pw_frame_free(as);
  assert_int_equal(gwh_collect(bot, "c-open", 3, 2000, seqs, NULL, 8), 3);

  /* The bot replies with its epoch; everyone gets seq 4. */
  assert_int_equal(gwh_send_text(bot, "c-open", 100, "hi carol", 1), 0);
  a = gwh_wait_ack(bot, 100, 2000);
  assert_non_null(a);
  assert_int_equal(a->send_ack->seq, 4);
  pw_frame_free(a);
  assert_int_equal(gwh_collect(cu, "c-open", 4, 2000, seqs, NULL, 8), 1);
  assert_int_equal(seqs[0], 4);
  /* A wrong epoch is refused and stores nothing. */
  assert_int_equal(gwh_send_text(bot, "c-open", 101, "stale", 7), 0);
  a = gwh_wait_ack(bot, 101, 2000);
  assert_non_null(a);
  assert_int_equal(a->send_ack->error, PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH);
  assert_int_equal(a->send_ack->seq, 0);
  pw_frame_free(a);
  wsc_close(bot, 1000);
  wsc_close(cu, 1000);
  wsc_close(cu2, 1000);
}

static void test_idempotent_resend_across_restart(void **state) {
  fx *f = *state;
  wsc *cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  assert_non_null(cu);
  assert_int_equal(gwh_send_text(cu, "c-idem", 7, "once", 0), 0);
  pw_frame *a = gwh_wait_ack(cu, 7, 2000);
  assert_non_null(a);
  uint64_t seq = a->send_ack->seq;
  assert_int_equal(seq, 3);
  pw_frame_free(a);
  assert_int_equal(gwh_send_text(cu, "c-idem", 7, "once", 0), 0);
  a = gwh_wait_ack(cu, 7, 2000);
  assert_non_null(a);
  assert_true(a->send_ack->duplicate);
  assert_int_equal(a->send_ack->seq, seq);
  pw_frame_free(a);
  wsc_abort(cu);

  /* Restart on the same data dir: the id is still known. */
  gwh_stop(f->h);
  f->h = gwh_start(f->dir, NULL, NULL);
  assert_non_null(f->h);
  pw_frame *w = NULL;
  cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", &w, NULL);
  assert_non_null(cu);
  assert_int_equal(w->welcome->n_cursors, 1);
  assert_string_equal(w->welcome->cursors[0]->conversation, "c-idem");
  pw_frame_free(w);
  /* Nothing was acknowledged: 1..3 come again, flagged redelivered
   * because the run before this one may have pushed them. */
  uint64_t seqs[8];
  bool red[8];
  assert_int_equal(gwh_collect(cu, "c-idem", 3, 2000, seqs, red, 8), 3);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(seqs[i], (uint64_t)(i + 1));
    assert_true(red[i]);
  }
  assert_int_equal(gwh_send_text(cu, "c-idem", 7, "once", 0), 0);
  a = gwh_wait_ack(cu, 7, 2000);
  assert_non_null(a);
  assert_true(a->send_ack->duplicate);
  assert_int_equal(a->send_ack->seq, seq);
  pw_frame_free(a);
  /* And the next message continues the numbering without a gap. */
  assert_int_equal(gwh_send_text(cu, "c-idem", 8, "twice", 0), 0);
  a = gwh_wait_ack(cu, 8, 2000);
  assert_non_null(a);
  assert_false(a->send_ack->duplicate);
  assert_int_equal(a->send_ack->seq, seq + 1);
  pw_frame_free(a);
  /* Fetch sees exactly one copy. */
  Parley__V1__Fetch fe = PARLEY__V1__FETCH__INIT;
  fe.request_id = 9;
  fe.conversation = "c-idem";
  fe.from_seq = 1;
  pw_frame ff = PARLEY__V1__FRAME__INIT;
  ff.body_case = PARLEY__V1__FRAME__BODY_FETCH;
  ff.fetch = &fe;
  wsc_send_frame(cu, &ff);
  pw_frame *fr = gwh_wait(cu, PARLEY__V1__FRAME__BODY_FETCH_RESULT, 2000);
  assert_non_null(fr);
  assert_int_equal(fr->fetch_result->n_events, 4);
  assert_true(fr->fetch_result->end);
  assert_int_equal(fr->fetch_result->last_seq, 4);
  pw_frame_free(fr);
  wsc_close(cu, 1000);
}

static void test_redelivery(void **state) {
  fx *f = *state;
  wsc *cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  assert_non_null(cu);
  assert_int_equal(gwh_send_text(cu, "c-redeliver", 1, "x", 0), 0);
  uint64_t seqs[16];
  bool red[16];
  assert_int_equal(gwh_collect(cu, "c-redeliver", 3, 2000, seqs, red, 16), 3);
  assert_false(red[0]);
  /* Not acknowledged within ack_timeout (400 ms): pushed again, flagged. */
  int n = gwh_collect(cu, "c-redeliver", 3, 3000, seqs, red, 16);
  assert_int_equal(n, 3);
  assert_int_equal(seqs[0], 1);
  assert_true(red[0] && red[1] && red[2]);
  /* Acknowledge 1..2, drop the connection: after reconnect only 3 comes
   * back, flagged redelivered. */
  gwh_ack(cu, "c-redeliver", 2);
  pw_frame *p = NULL;
  /* A Ping round trip makes sure the Ack was processed before the drop. */
  Parley__V1__Ping pg = PARLEY__V1__PING__INIT;
  pg.nonce = 77;
  pw_frame pf = PARLEY__V1__FRAME__INIT;
  pf.body_case = PARLEY__V1__FRAME__BODY_PING;
  pf.ping = &pg;
  wsc_send_frame(cu, &pf);
  p = gwh_wait(cu, PARLEY__V1__FRAME__BODY_PONG, 2000);
  assert_non_null(p);
  assert_int_equal(p->pong->nonce, 77);
  pw_frame_free(p);
  wsc_abort(cu);
  pw_frame *w = NULL;
  cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", &w, NULL);
  assert_non_null(cu);
  assert_int_equal(w->welcome->n_cursors, 1);
  assert_int_equal(w->welcome->cursors[0]->after_seq, 2);
  pw_frame_free(w);
  n = gwh_collect(cu, "c-redeliver", 3, 2000, seqs, red, 16);
  assert_int_equal(n, 1);
  assert_int_equal(seqs[0], 3);
  assert_true(red[0]);
  /* Another device has its own watermark: it gets all three, never
   * pushed to it before, so not flagged. */
  wsc *cu2 = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "tablet", NULL, NULL);
  n = gwh_collect(cu2, "c-redeliver", 3, 2000, seqs, red, 16);
  assert_int_equal(n, 3);
  assert_false(red[0]);
  wsc_close(cu2, 1000);
  wsc_close(cu, 1000);
}

static void test_ack_out_of_range(void **state) {
  fx *f = *state;
  wsc *cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  gwh_send_text(cu, "c-ackrange", 1, "x", 0);
  uint64_t seqs[8];
  assert_int_equal(gwh_collect(cu, "c-ackrange", 3, 2000, seqs, NULL, 8), 3);
  gwh_ack(cu, "c-ackrange", 9);
  pw_frame *e = gwh_wait(cu, PARLEY__V1__FRAME__BODY_ERROR, 2000);
  assert_non_null(e);
  assert_int_equal(e->error->code, PARLEY__V1__ERROR_CODE__ERROR_ACK_OUT_OF_RANGE);
  assert_false(e->error->fatal);
  pw_frame_free(e);
  wsc_abort(cu);
  /* Nothing changed: the stored watermark is still 0. */
  pw_frame *w = NULL;
  cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", &w, NULL);
  assert_non_null(cu);
  assert_int_equal(w->welcome->n_cursors, 1);
  assert_int_equal(w->welcome->cursors[0]->after_seq, 0);
  pw_frame_free(w);
  wsc_close(cu, 1000);
}

static void test_oversized_and_malformed(void **state) {
  fx *f = *state;
  wsc *cu = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  assert_non_null(cu);
  /* Garbage that does not decode: a non-fatal MALFORMED error. */
  const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x12};
  wsc_send_bytes(cu, junk, sizeof junk);
  pw_frame *e = gwh_wait(cu, PARLEY__V1__FRAME__BODY_ERROR, 2000);
  assert_non_null(e);
  assert_int_equal(e->error->code, PARLEY__V1__ERROR_CODE__ERROR_MALFORMED);
  assert_false(e->error->fatal);
  pw_frame_free(e);
  /* A Send with a 3-byte message id: INVALID, still not fatal. */
  uint8_t bad_id[3] = {1, 2, 3};
  Parley__V1__Text t = PARLEY__V1__TEXT__INIT;
  t.body = "x";
  Parley__V1__Content ct = PARLEY__V1__CONTENT__INIT;
  ct.body_case = PARLEY__V1__CONTENT__BODY_TEXT;
  ct.text = &t;
  Parley__V1__Send s = PARLEY__V1__SEND__INIT;
  s.client_msg_id.data = bad_id;
  s.client_msg_id.len = 3;
  s.conversation = "c-bad";
  s.body_case = PARLEY__V1__SEND__BODY_CONTENT;
  s.content = &ct;
  pw_frame sf = PARLEY__V1__FRAME__INIT;
  sf.body_case = PARLEY__V1__FRAME__BODY_SEND;
  sf.send = &s;
  wsc_send_frame(cu, &sf);
  e = gwh_wait(cu, PARLEY__V1__FRAME__BODY_ERROR, 2000);
  assert_non_null(e);
  assert_int_equal(e->error->code, PARLEY__V1__ERROR_CODE__ERROR_INVALID);
  pw_frame_free(e);
  /* The connection still works. */
  assert_int_equal(gwh_send_text(cu, "c-bad", 1, "fine", 0), 0);
  pw_frame *a = gwh_wait_ack(cu, 1, 2000);
  assert_non_null(a);
  assert_int_equal(a->send_ack->seq, 3);
  pw_frame_free(a);
  /* A Send that fits the limit but whose event would not fit a Deliver
   * is refused as INVALID, not stored. */
  {
    size_t max = 1024 * 1024, blen = max - 100;
    char *body = malloc(max);
    memset(body, 'x', max);
    body[blen] = '\0';
    uint8_t mid[16];
    gwh_msgid(mid, 2);
    Parley__V1__Text bt = PARLEY__V1__TEXT__INIT;
    bt.body = body;
    Parley__V1__Content bc = PARLEY__V1__CONTENT__INIT;
    bc.body_case = PARLEY__V1__CONTENT__BODY_TEXT;
    bc.text = &bt;
    Parley__V1__Send bs = PARLEY__V1__SEND__INIT;
    bs.client_msg_id.data = mid;
    bs.client_msg_id.len = 16;
    bs.conversation = "c-bad";
    bs.body_case = PARLEY__V1__SEND__BODY_CONTENT;
    bs.content = &bc;
    pw_frame bf = PARLEY__V1__FRAME__INIT;
    bf.body_case = PARLEY__V1__FRAME__BODY_SEND;
    bf.send = &bs;
    size_t fsz = parley__v1__frame__get_packed_size(&bf);
    body[blen] = 'x';
    blen += max - 10 - fsz;
    body[blen] = '\0';
    assert_int_equal(parley__v1__frame__get_packed_size(&bf), max - 10);
    assert_int_equal(wsc_send_frame(cu, &bf), 0);
    free(body);
    a = gwh_wait_ack(cu, 2, 3000);
    assert_non_null(a);
    assert_int_equal(a->send_ack->error, PARLEY__V1__ERROR_CODE__ERROR_INVALID);
    assert_int_equal(a->send_ack->seq, 0);
    pw_frame_free(a);
  }
  /* Larger than max_frame_bytes (1 MiB): the header announces it, the
   * gateway answers FRAME_TOO_LARGE and closes with 4002. */
  size_t big = 1024 * 1024 + 100;
  uint8_t *buf = calloc(1, big);
  wsc_send_bytes(cu, buf, big);
  free(buf);
  e = gwh_wait(cu, PARLEY__V1__FRAME__BODY_ERROR, 3000);
  assert_non_null(e);
  assert_int_equal(e->error->code, PARLEY__V1__ERROR_CODE__ERROR_FRAME_TOO_LARGE);
  assert_true(e->error->fatal);
  pw_frame_free(e);
  assert_int_equal(wsc_recv_close(cu, 3000), 4002);
  wsc_abort(cu);
}

/* Writes one masked WebSocket frame with the given first byte (FIN and
 * opcode), as a client that fragments messages would. */
static void raw_frame(wsc *c, uint8_t b0, const uint8_t *data, size_t len) {
  uint8_t buf[8 + 256];
  assert_true(len < 126);
  buf[0] = b0;
  buf[1] = (uint8_t)(0x80 | len);
  memset(buf + 2, 0, 4); /* zero mask: payload unchanged */
  memcpy(buf + 6, data, len);
  assert_int_equal(wsc_send_raw(c, buf, 6 + len), 0);
}

/* An invalid Send or Fetch gets a non-fatal Error{INVALID} that names the
 * send's client_msg_id or the request's request_id. */
static void test_invalid_frames_named(void **state) {
  fx *f = *state;
  int code = 0;
  wsc *c = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "named", NULL, &code);
  assert_non_null(c);
  Parley__V1__Send sd = PARLEY__V1__SEND__INIT;
  uint8_t id[16];
  gwh_msgid(id, 4711);
  sd.client_msg_id.data = id;
  sd.client_msg_id.len = 16;
  sd.conversation = "bad conversation id!";
  Parley__V1__Content ct = PARLEY__V1__CONTENT__INIT;
  Parley__V1__Text tx = PARLEY__V1__TEXT__INIT;
  tx.body = "hi";
  ct.body_case = PARLEY__V1__CONTENT__BODY_TEXT;
  ct.text = &tx;
  sd.body_case = PARLEY__V1__SEND__BODY_CONTENT;
  sd.content = &ct;
  pw_frame sf = PARLEY__V1__FRAME__INIT;
  sf.body_case = PARLEY__V1__FRAME__BODY_SEND;
  sf.send = &sd;
  wsc_send_frame(c, &sf);
  pw_frame *r = gwh_wait(c, PARLEY__V1__FRAME__BODY_ERROR, 2000);
  assert_non_null(r);
  assert_int_equal(r->error->code, PARLEY__V1__ERROR_CODE__ERROR_INVALID);
  assert_false(r->error->fatal);
  assert_int_equal(r->error->client_msg_id.len, 16);
  assert_memory_equal(r->error->client_msg_id.data, id, 16);
  pw_frame_free(r);

  Parley__V1__Fetch fe = PARLEY__V1__FETCH__INIT;
  fe.request_id = 77;
  fe.conversation = "conv-named";
  fe.from_seq = 0;
  pw_frame ff = PARLEY__V1__FRAME__INIT;
  ff.body_case = PARLEY__V1__FRAME__BODY_FETCH;
  ff.fetch = &fe;
  wsc_send_frame(c, &ff);
  r = gwh_wait(c, PARLEY__V1__FRAME__BODY_ERROR, 2000);
  assert_non_null(r);
  assert_int_equal(r->error->code, PARLEY__V1__ERROR_CODE__ERROR_INVALID);
  assert_int_equal(r->error->request_id, 77);
  assert_string_equal(r->error->conversation, "conv-named");
  pw_frame_free(r);
  fe.from_seq = 5;
  fe.to_seq = 4;
  fe.request_id = 78;
  wsc_send_frame(c, &ff);
  r = gwh_wait(c, PARLEY__V1__FRAME__BODY_ERROR, 2000);
  assert_non_null(r);
  assert_int_equal(r->error->request_id, 78);
  pw_frame_free(r);
  wsc_close(c, 1000);
}

/* A text WebSocket message is refused by name: fatal MALFORMED, close
 * 4000 + MALFORMED, whatever its bytes. */
static void test_text_message_refused(void **state) {
  fx *f = *state;
  int code = 0;
  wsc *c = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "text", NULL, &code);
  assert_non_null(c);
  const char *hello = "hello";
  raw_frame(c, 0x81, (const uint8_t *)hello, strlen(hello)); /* FIN, opcode 1: text */
  pw_frame *r = gwh_wait(c, PARLEY__V1__FRAME__BODY_ERROR, 2000);
  assert_non_null(r);
  assert_int_equal(r->error->code, PARLEY__V1__ERROR_CODE__ERROR_MALFORMED);
  assert_true(r->error->fatal);
  assert_non_null(strstr(r->error->message, "text WebSocket messages"));
  pw_frame_free(r);
  assert_int_equal(wsc_recv_close(c, 2000), 4000 + PARLEY__V1__ERROR_CODE__ERROR_MALFORMED);
  wsc_abort(c);
}

static void test_fragments_and_garbage(void **state) {
  fx *f = *state;
  wsc *c = wsc_connect("127.0.0.1", gwh_port(f->h), "Bearer carol-token", 2000);
  assert_non_null(c);
  Parley__V1__Hello he = PARLEY__V1__HELLO__INIT;
  he.min_version = 1;
  he.max_version = 1;
  he.principal = "carol";
  he.role = R_CUSTOMER;
  he.device = "frag";
  pw_frame hf = PARLEY__V1__FRAME__INIT;
  hf.body_case = PARLEY__V1__FRAME__BODY_HELLO;
  hf.hello = &he;
  uint8_t *enc;
  size_t len;
  assert_int_equal(pw_encode(&hf, 0, &enc, &len), 0);
  /* Hello split in three WebSocket fragments. */
  size_t a = len / 3, b = 2 * len / 3;
  raw_frame(c, 0x02, enc, a);
  raw_frame(c, 0x00, enc + a, b - a);
  raw_frame(c, 0x80, enc + b, len - b);
  free(enc);
  pw_frame *w = gwh_wait(c, PARLEY__V1__FRAME__BODY_WELCOME, 2000);
  assert_non_null(w);
  pw_frame_free(w);
  /* Random garbage frames: each gets a non-fatal error, none crashes or
   * closes the connection. */
  srand(1234);
  int errors = 0;
  for (int i = 0; i < 50; i++) {
    uint8_t junk[64];
    size_t n = 1 + (size_t)(rand() % 63);
    for (size_t k = 0; k < n; k++) junk[k] = (uint8_t)rand();
    assert_int_equal(wsc_send_bytes(c, junk, n), 0);
  }
  /* A Ping after the garbage: everything before it was answered. */
  Parley__V1__Ping pg = PARLEY__V1__PING__INIT;
  pg.nonce = 4242;
  pw_frame pf = PARLEY__V1__FRAME__INIT;
  pf.body_case = PARLEY__V1__FRAME__BODY_PING;
  pf.ping = &pg;
  wsc_send_frame(c, &pf);
  for (;;) {
    pw_frame *x = NULL;
    assert_int_equal(wsc_recv_frame(c, 3000, &x), 0);
    if (x->body_case == PARLEY__V1__FRAME__BODY_ERROR) {
      assert_false(x->error->fatal);
      errors++;
    }
    bool done = x->body_case == PARLEY__V1__FRAME__BODY_PONG && x->pong->nonce == 4242;
    pw_frame_free(x);
    if (done) break;
  }
  assert_true(errors > 0);
  assert_int_equal(wsc_close_code(c), 0);
  /* Still usable. */
  assert_int_equal(gwh_send_text(c, "c-frag", 1, "ok", 0), 0);
  pw_frame *ack = gwh_wait_ack(c, 1, 2000);
  assert_non_null(ack);
  assert_int_equal(ack->send_ack->seq, 3);
  pw_frame_free(ack);
  wsc_close(c, 1000);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_auth_refusals, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_version_and_hello_required, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_open_and_deliver, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_idempotent_resend_across_restart, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_redelivery, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_ack_out_of_range, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_oversized_and_malformed, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_invalid_frames_named, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_text_message_refused, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_fragments_and_garbage, gwh_fx_setup, gwh_fx_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
