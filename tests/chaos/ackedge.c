/* Scenario 5 of the chaos suite: batch ACK edge cases against the real
 * gateway (a `parley gateway` child process), written with the raw test
 * client (wsclient.h) so that frames no well-behaved client sends can be
 * sent: ACKs for conversations never streamed, beyond the highest seq
 * pushed, near 2^64, repeated, going back, mixed valid and invalid entries
 * in one frame, zero, empty, and an Ack from a bot. Each bad one must get a
 * non-fatal Error with its code and change nothing; each harmless one must
 * get nothing. Afterwards the state is checked from outside: the cursors of
 * a new connection's Welcome, what is pushed again, a Fetch of the whole
 * stream, and the same after a restart of the gateway. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <parley/error.h>

#include "wire/wire.h"
#include "proc.h"
#include "wsclient.h"

void test_ack_edges(void **unused);
int test_ack_edges_teardown(void **unused);

/* File scope so that the teardown can stop the gateway and remove the
 * directory when an assertion ends the test early. */
static tproc gw;
static char dir[256];

#define CONV "edge-1"
#define RECV_MS 3000

static const char *const yaml =
    "listen: 127.0.0.1\n"
    "durability: normal\n"
    "bot: echo\n"
    "limits:\n"
    "  ack_timeout: 60s\n" /* no redelivery while the cases run */
    "  heartbeat: 10s\n"
    "principals:\n"
    "  - {name: echo, role: bot, token: echo-token}\n"
    "  - {name: carol, role: customer, token: carol-token}\n";

static wsc *login(int port, const char *principal, int role, const char *token,
                  pw_frame **welcome) {
  char auth[128];
  snprintf(auth, sizeof auth, "Bearer %s", token);
  wsc *c = wsc_connect("127.0.0.1", port, auth, RECV_MS);
  if (!c) return NULL;
  Parley__V1__Hello he = PARLEY__V1__HELLO__INIT;
  he.min_version = 1;
  he.max_version = 1;
  he.principal = (char *)principal;
  he.role = role;
  he.device = "d1";
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_HELLO;
  f.hello = &he;
  pw_frame *w = NULL;
  if (wsc_send_frame(c, &f) != 0 ||
      wsc_recv_kind(c, RECV_MS, PARLEY__V1__FRAME__BODY_WELCOME, &w) != 0) {
    wsc_abort(c);
    return NULL;
  }
  if (welcome) *welcome = w;
  else pw_frame_free(w);
  return c;
}

/* The Welcome cursor of CONV, 0 when not listed. */
static uint64_t cursor_of(const pw_frame *w) {
  for (size_t i = 0; i < w->welcome->n_cursors; i++)
    if (strcmp(w->welcome->cursors[i]->conversation, CONV) == 0)
      return w->welcome->cursors[i]->after_seq;
  return 0;
}

static void msgid(uint8_t id[16], uint32_t n) {
  memset(id, 0x5A, 16);
  id[15] = (uint8_t)n;
}

static int send_text(wsc *c, uint32_t n, const char *text) {
  uint8_t id[16];
  msgid(id, n);
  Parley__V1__Text t = PARLEY__V1__TEXT__INIT;
  t.body = (char *)text;
  Parley__V1__Content ct = PARLEY__V1__CONTENT__INIT;
  ct.body_case = PARLEY__V1__CONTENT__BODY_TEXT;
  ct.text = &t;
  Parley__V1__Send s = PARLEY__V1__SEND__INIT;
  s.client_msg_id.data = id;
  s.client_msg_id.len = 16;
  s.conversation = CONV;
  s.body_case = PARLEY__V1__SEND__BODY_CONTENT;
  s.content = &ct;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_SEND;
  f.send = &s;
  return wsc_send_frame(c, &f);
}

/* Reads frames until `nacks` SendAcks came (their seqs in acks, in order)
 * and the Deliver events of CONV reached seq `upto` (each seq in seqs and
 * its flag in redelivered). Returns how many events came. */
static int collect(wsc *c, int nacks, uint64_t *acks, uint64_t upto, uint64_t *seqs,
                   bool *redelivered, int max) {
  int n = 0, na = 0;
  bool done = upto == 0;
  for (int frames = 0; frames < 200 && (!done || na < nacks); frames++) {
    pw_frame *f = NULL;
    if (wsc_recv_frame(c, RECV_MS, &f) != 0) return n;
    if (f->body_case == PARLEY__V1__FRAME__BODY_SEND_ACK && na < nacks) {
      acks[na++] = f->send_ack->error ? 0 : f->send_ack->seq;
    } else if (f->body_case == PARLEY__V1__FRAME__BODY_DELIVER) {
      for (size_t i = 0; i < f->deliver->n_events; i++) {
        Parley__V1__Event *e = f->deliver->events[i];
        if (strcmp(e->conversation, CONV) != 0) continue;
        if (n < max) {
          seqs[n] = e->seq;
          redelivered[n] = e->redelivered;
          n++;
        }
        if (e->seq >= upto) done = true;
      }
    }
    pw_frame_free(f);
  }
  return n;
}

static int ack_frame(wsc *c, const char *const *convs, const uint64_t *ups, size_t n) {
  Parley__V1__AckEntry e[4];
  Parley__V1__AckEntry *ep[4];
  for (size_t i = 0; i < n && i < 4; i++) {
    parley__v1__ack_entry__init(&e[i]);
    e[i].conversation = (char *)convs[i];
    e[i].up_to_seq = ups[i];
    ep[i] = &e[i];
  }
  Parley__V1__Ack a = PARLEY__V1__ACK__INIT;
  a.entries = ep;
  a.n_entries = n;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_ACK;
  f.ack = &a;
  return wsc_send_frame(c, &f);
}

static int ack1(wsc *c, const char *conv, uint64_t up) { return ack_frame(c, &conv, &up, 1); }

/* Sends a Ping and reads until its Pong. Returns the code of the first
 * Error that came before the Pong (0: none, -1: no Pong). Frames are
 * answered in order, so an Error caused by an earlier frame comes first. */
static int next_error(wsc *c, uint64_t nonce, bool *fatal) {
  Parley__V1__Ping p = PARLEY__V1__PING__INIT;
  p.nonce = nonce;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_PING;
  f.ping = &p;
  if (wsc_send_frame(c, &f) != 0) return -1;
  int code = 0;
  for (int i = 0; i < 100; i++) {
    pw_frame *r = NULL;
    if (wsc_recv_frame(c, RECV_MS, &r) != 0) return -1;
    if (r->body_case == PARLEY__V1__FRAME__BODY_ERROR && code == 0) {
      code = (int)r->error->code;
      if (fatal) *fatal = r->error->fatal;
    }
    bool pong = r->body_case == PARLEY__V1__FRAME__BODY_PONG && r->pong->nonce == nonce;
    pw_frame_free(r);
    if (pong) return code;
  }
  return -1;
}

static void expect_code(wsc *c, int want, const char *what) {
  static uint64_t nonce = 1000;
  bool fatal = false;
  int got = next_error(c, ++nonce, &fatal);
  print_message("ack edge: %-40s -> %s%d\n", what, got > 0 ? "Error " : "", got);
  if (got != want) print_error("%s: want error %d, got %d\n", what, want, got);
  assert_int_equal(got, want);
  assert_false(fatal);
}

void test_ack_edges(void **unused) {
  (void)unused;
  const int OOR = PARLEY__V1__ERROR_CODE__ERROR_ACK_OUT_OF_RANGE;
  assert_int_equal(tmpdir_make(dir, sizeof dir, "chaos-ack"), 0);
  int port = tproc_start_gateway(&gw, dir, yaml);
  assert_true(port > 0);

  pw_frame *w = NULL;
  wsc *c = login(port, "carol", PARLEY__V1__ROLE__ROLE_CUSTOMER, "carol-token", &w);
  assert_non_null(c);
  pw_frame_free(w);
  /* OPENED (1), ASSIGNED (2), then the three messages (3, 4, 5). */
  assert_int_equal(send_text(c, 1, "one"), 0);
  assert_int_equal(send_text(c, 2, "two"), 0);
  assert_int_equal(send_text(c, 3, "three"), 0);
  uint64_t seqs[32], acks[4] = {0};
  bool red[32];
  int n = collect(c, 3, acks, 5, seqs, red, 32);
  assert_int_equal(acks[0], 3);
  assert_int_equal(acks[1], 4);
  assert_int_equal(acks[2], 5);
  assert_int_equal(n, 5);
  for (int i = 0; i < n; i++) assert_int_equal(seqs[i], (uint64_t)(i + 1));

  /* Out of range: nothing of the frame is applied. */
  ack1(c, "never-streamed", 1);
  expect_code(c, OOR, "conversation never streamed");
  ack1(c, CONV, 6);
  expect_code(c, OOR, "one beyond the highest pushed");
  ack1(c, CONV, UINT64_MAX);
  expect_code(c, OOR, "2^64-1");
  ack1(c, CONV, UINT64_MAX - 1);
  expect_code(c, OOR, "2^64-2");
  ack1(c, CONV, UINT64_C(1) << 63);
  expect_code(c, OOR, "2^63");
  {
    const char *convs[2] = {CONV, CONV};
    uint64_t ups[2] = {4, 7};
    ack_frame(c, convs, ups, 2);
    expect_code(c, OOR, "valid entry then out-of-range entry");
  }
  /* Harmless: nothing to answer. */
  ack1(c, CONV, 3);
  expect_code(c, 0, "ack 3");
  ack1(c, CONV, 3);
  expect_code(c, 0, "ack 3 repeated");
  ack1(c, CONV, 2);
  expect_code(c, 0, "ack 2 (below the watermark)");
  ack_frame(c, NULL, NULL, 0);
  expect_code(c, 0, "empty ack");
  ack1(c, CONV, 0);
  expect_code(c, PARLEY__V1__ERROR_CODE__ERROR_INVALID, "ack 0 (seqs start at 1)");

  /* State: the watermark is 3, so a new connection of the same device
   * resumes after 3 and gets 4 and 5 again, flagged redelivered. */
  wsc_close(c, 1000);
  c = login(port, "carol", PARLEY__V1__ROLE__ROLE_CUSTOMER, "carol-token", &w);
  assert_non_null(c);
  assert_int_equal(cursor_of(w), 3);
  pw_frame_free(w);
  n = collect(c, 0, acks, 5, seqs, red, 32);
  assert_int_equal(n, 2);
  assert_int_equal(seqs[0], 4);
  assert_int_equal(seqs[1], 5);
  assert_true(red[0] && red[1]);

  /* Entries out of order inside one frame: the higher one wins. */
  {
    const char *convs[2] = {CONV, CONV};
    uint64_t ups[2] = {4, 2};
    ack_frame(c, convs, ups, 2);
    expect_code(c, 0, "entries 4 then 2 in one frame");
  }
  /* The stream goes on: a new message gets seq 6. */
  assert_int_equal(send_text(c, 4, "four"), 0);
  n = collect(c, 1, acks, 6, seqs, red, 32);
  assert_int_equal(acks[0], 6);
  assert_int_equal(n, 1);
  assert_int_equal(seqs[0], 6);

  /* Fetch the whole stream: 1..6, consecutive, the messages' ids. */
  {
    Parley__V1__Fetch fe = PARLEY__V1__FETCH__INIT;
    fe.request_id = 77;
    fe.conversation = CONV;
    fe.from_seq = 1;
    fe.to_seq = 0;
    fe.limit = 100;
    pw_frame f = PARLEY__V1__FRAME__INIT;
    f.body_case = PARLEY__V1__FRAME__BODY_FETCH;
    f.fetch = &fe;
    assert_int_equal(wsc_send_frame(c, &f), 0);
    pw_frame *r = NULL;
    assert_int_equal(wsc_recv_kind(c, RECV_MS, PARLEY__V1__FRAME__BODY_FETCH_RESULT, &r), 0);
    assert_int_equal(r->fetch_result->request_id, 77);
    assert_int_equal(r->fetch_result->n_events, 6);
    assert_true(r->fetch_result->end);
    for (size_t i = 0; i < r->fetch_result->n_events; i++) {
      Parley__V1__Event *e = r->fetch_result->events[i];
      assert_int_equal(e->seq, i + 1);
      if (i >= 2) {
        uint8_t id[16];
        msgid(id, (uint32_t)(i - 1));
        assert_int_equal(e->client_msg_id.len, 16);
        assert_memory_equal(e->client_msg_id.data, id, 16);
      }
    }
    pw_frame_free(r);
    /* A fetch near 2^64: nothing there, and the connection stays usable. */
    fe.request_id = 78;
    fe.from_seq = UINT64_MAX;
    assert_int_equal(wsc_send_frame(c, &f), 0);
    assert_int_equal(wsc_recv_kind(c, RECV_MS, PARLEY__V1__FRAME__BODY_FETCH_RESULT, &r), 0);
    assert_int_equal(r->fetch_result->n_events, 0);
    pw_frame_free(r);
    expect_code(c, 0, "after a fetch from 2^64-1");
  }
  wsc_close(c, 1000);

  /* The watermark (4) survives a restart of the gateway. */
  assert_int_equal(tproc_kill(&gw, SIGTERM), 0);
  assert_int_equal(tproc_wait(&gw, 15000), 0);
  tproc_stop(&gw);
  char cfg[400], data[400], portarg[16], errlog[400];
  snprintf(cfg, sizeof cfg, "%s/gateway.yaml", dir);
  snprintf(data, sizeof data, "%s/data", dir);
  snprintf(errlog, sizeof errlog, "%s/gateway.log", dir);
  snprintf(portarg, sizeof portarg, "%d", port);
  char *argv[] = {(char *)PARLEY_BIN, "gateway", "--config", cfg, "--data-dir", data,
                  "--port", portarg, NULL};
  assert_int_equal(tproc_start(&gw, argv, errlog), 0);
  assert_true(tproc_wait_for(&gw, "listening on", NULL, 0, 15000));
  c = login(port, "carol", PARLEY__V1__ROLE__ROLE_CUSTOMER, "carol-token", &w);
  assert_non_null(c);
  assert_int_equal(cursor_of(w), 4);
  pw_frame_free(w);
  n = collect(c, 0, acks, 6, seqs, red, 32);
  assert_int_equal(n, 2);
  assert_int_equal(seqs[0], 5);
  assert_int_equal(seqs[1], 6);
  ack1(c, CONV, 6);
  expect_code(c, 0, "ack 6 after the restart");
  ack1(c, CONV, 7);
  expect_code(c, OOR, "ack 7 after the restart");
  wsc_close(c, 1000);
  c = login(port, "carol", PARLEY__V1__ROLE__ROLE_CUSTOMER, "carol-token", &w);
  assert_non_null(c);
  assert_int_equal(cursor_of(w), 6);
  pw_frame_free(w);
  {
    pw_frame *d = NULL;
    int rc = wsc_recv_kind(c, 700, PARLEY__V1__FRAME__BODY_DELIVER, &d);
    if (rc == 0) pw_frame_free(d);
    assert_int_equal(rc, PARLEY_ETIMEOUT); /* nothing more is pushed */
  }
  wsc_close(c, 1000);

  /* A bot acknowledges only through Commit. */
  wsc *b = login(port, "echo", PARLEY__V1__ROLE__ROLE_BOT, "echo-token", NULL);
  assert_non_null(b);
  ack1(b, CONV, 1);
  expect_code(b, PARLEY__V1__ERROR_CODE__ERROR_PROTOCOL, "Ack from a bot");
  wsc_close(b, 1000);

  assert_int_equal(tproc_kill(&gw, SIGTERM), 0);
  assert_int_equal(tproc_wait(&gw, 15000), 0);
  tproc_stop(&gw);
  tmpdir_remove(dir);
  dir[0] = 0;
}

int test_ack_edges_teardown(void **unused) {
  (void)unused;
  if (gw.pid > 0 && !gw.reaped) tproc_stop(&gw);
  if (dir[0]) tmpdir_remove(dir);
  dir[0] = 0;
  return 0;
}
