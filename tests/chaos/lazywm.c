/* Scenario 7 of the chaos suite: the gateway killed with SIGKILL after
 * customer Acks whose watermark was committed but not yet written.
 *
 * The SQLite store writes a device's watermark (a customer's, an agent's)
 * lazily (store/sqlite.c, WM_FLUSH_MS_DEFAULT; docs/gateway.md,
 * "Durability"), and a bot's in its commit's transaction. This scenario
 * holds the lazy ones back for ten minutes (PARLEY_SQLITE_WM_FLUSH_MS), so
 * the kill certainly lands before they are written, and checks from outside
 * that losing them is what the protocol already copes with:
 *
 *   - the Ack's watermark is lost (the scenario's precondition: the Welcome
 *     cursor after the restart is below the acknowledged seq);
 *   - a client that does not resume the conversation gets every event after
 *     that cursor again, in order, flagged redelivered, each the same event
 *     as before: applied with the client's rule (a seq below the next one
 *     expected is a duplicate, dropped) it shows every event exactly once and
 *     loses none;
 *   - a client that resumes (Hello.resume, as libparley does) gets nothing
 *     again;
 *   - the bot's commit before the kill survives it (its Assign's acked_seq
 *     and state), so only the events after it come to the bot again;
 *   - after a clean stop (SIGTERM) the lazy watermark is there.
 *
 * Written with the raw test client (wsclient.h) so that the Hello's resume
 * cursors and the frames pushed are exactly what the test chooses and sees;
 * the gateway is the real `parley gateway` process on a real SQLite file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <parley/error.h>

#include "wire/wire.h"
#include "proc.h"
#include "wsclient.h"

void test_lazy_watermark(void **unused);
void test_lazy_watermark_timer(void **unused);
int test_lazy_watermark_teardown(void **unused);

static tproc gw;
static char dir[256];

#define CONV "lazy-1"
#define RECV_MS 3000
#define MAX_SEQ 16

static const char *const yaml =
    "listen: 127.0.0.1\n"
    "durability: normal\n"
    "bot: echo\n"
    "limits:\n"
    "  ack_timeout: 60s\n" /* no redelivery but the restart's */
    "  heartbeat: 10s\n"
    "principals:\n"
    "  - {name: echo, role: bot, token: echo-token}\n"
    "  - {name: carol, role: customer, token: carol-token}\n";

/* resume: the Hello's cursor for CONV (0: none). */
static wsc *login(int port, const char *principal, int role, const char *token, uint64_t resume,
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
  Parley__V1__ResumeCursor rc = PARLEY__V1__RESUME_CURSOR__INIT;
  Parley__V1__ResumeCursor *rcp = &rc;
  if (resume) {
    rc.conversation = CONV;
    rc.after_seq = resume;
    he.resume = &rcp;
    he.n_resume = 1;
  }
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

static uint64_t cursor_of(const pw_frame *w) {
  for (size_t i = 0; i < w->welcome->n_cursors; i++)
    if (strcmp(w->welcome->cursors[i]->conversation, CONV) == 0)
      return w->welcome->cursors[i]->after_seq;
  return 0;
}

static int send_text(wsc *c, uint32_t n, const char *text) {
  uint8_t id[16];
  memset(id, 0x6B, 16);
  id[15] = (uint8_t)n;
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

static int ack1(wsc *c, uint64_t up) {
  Parley__V1__AckEntry e = PARLEY__V1__ACK_ENTRY__INIT;
  Parley__V1__AckEntry *ep = &e;
  e.conversation = CONV;
  e.up_to_seq = up;
  Parley__V1__Ack a = PARLEY__V1__ACK__INIT;
  a.entries = &ep;
  a.n_entries = 1;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_ACK;
  f.ack = &a;
  return wsc_send_frame(c, &f);
}

/* What one connection received of CONV. */
typedef struct seen {
  int n;                     /* events pushed, in arrival order */
  uint64_t seq[64];
  bool redelivered[64];
  int nacks;                 /* SendAck seqs, in order */
  uint64_t acks[8];
  bool assigned;             /* an Assign (bots) */
  uint64_t assign_acked, assign_epoch;
  char state_n[16];          /* the Assign's state value of key "n" */
  bool committed;            /* a CommitResult without error */
} seen;

/* The packed event of each seq as first pushed (redelivered cleared), and
 * how many times the customer's application was handed it. */
static uint8_t *first_bytes[MAX_SEQ + 1];
static size_t first_len[MAX_SEQ + 1];
static int shown[MAX_SEQ + 1];
static uint64_t next_seq = 1; /* the customer's next expected seq */

static void record_event(Parley__V1__Event *e, bool compare) {
  bool red = e->redelivered;
  e->redelivered = false;
  size_t len = parley__v1__event__get_packed_size(e);
  uint8_t *buf = malloc(len);
  assert_non_null(buf);
  parley__v1__event__pack(e, buf);
  e->redelivered = red;
  assert_true(e->seq >= 1 && e->seq <= MAX_SEQ);
  if (!first_bytes[e->seq]) {
    first_bytes[e->seq] = buf;
    first_len[e->seq] = len;
    return;
  }
  if (compare) {
    /* The same event, not a new one at an old seq. */
    assert_int_equal(len, first_len[e->seq]);
    assert_memory_equal(buf, first_bytes[e->seq], len);
  }
  free(buf);
}

/* The customer's receive rule (docs/protocol.md, DESIGN "Receiving"):
 * seq == next: shown, next advances; below: a duplicate, dropped. Returns
 * whether it was dropped. Events here come in order, so there is no gap. */
static bool apply_event(uint64_t seq) {
  if (seq < next_seq) return true;
  assert_int_equal(seq, next_seq);
  shown[seq]++;
  next_seq++;
  return false;
}

/* Reads frames until `nacks` SendAcks came and CONV's pushes reached `upto`
 * (0: none expected), or `quiet_ms` passed without a frame when upto is 0.
 * customer: events go through the client's rule and their bytes are
 * recorded. */
static void collect(wsc *c, seen *s, int nacks, uint64_t upto, bool customer, bool commit) {
  bool done = upto == 0;
  for (int frames = 0; frames < 200 && (!done || s->nacks < nacks || (commit && !s->committed));
       frames++) {
    pw_frame *f = NULL;
    int rc = wsc_recv_frame(c, RECV_MS, &f);
    assert_int_equal(rc, 0);
    switch (f->body_case) {
    case PARLEY__V1__FRAME__BODY_SEND_ACK:
      assert_int_equal(f->send_ack->error, 0);
      if (s->nacks < 8) s->acks[s->nacks++] = f->send_ack->seq;
      break;
    case PARLEY__V1__FRAME__BODY_ASSIGN:
      if (strcmp(f->assign->conversation, CONV) == 0) {
        s->assigned = true;
        s->assign_acked = f->assign->acked_seq;
        s->assign_epoch = f->assign->epoch;
        for (size_t i = 0; i < f->assign->n_state; i++)
          if (strcmp(f->assign->state[i]->key, "n") == 0)
            snprintf(s->state_n, sizeof s->state_n, "%.*s", (int)f->assign->state[i]->value.len,
                     (const char *)f->assign->state[i]->value.data);
      }
      break;
    case PARLEY__V1__FRAME__BODY_COMMIT_RESULT:
      for (size_t i = 0; i < f->commit_result->n_outcomes; i++)
        assert_int_equal(f->commit_result->outcomes[i]->error, 0);
      s->committed = true;
      break;
    case PARLEY__V1__FRAME__BODY_DELIVER:
      for (size_t i = 0; i < f->deliver->n_events; i++) {
        Parley__V1__Event *e = f->deliver->events[i];
        if (strcmp(e->conversation, CONV) != 0) continue;
        assert_true(s->n < 64);
        s->seq[s->n] = e->seq;
        s->redelivered[s->n] = e->redelivered;
        s->n++;
        if (customer) {
          record_event(e, true);
          apply_event(e->seq);
        }
        if (e->seq >= upto) done = true;
      }
      break;
    default:
      break;
    }
    pw_frame_free(f);
  }
  assert_true(done);
  assert_true(s->nacks >= nacks);
}

/* Nothing of CONV is pushed within ms. */
static void expect_quiet(wsc *c, int ms) {
  for (;;) {
    pw_frame *f = NULL;
    int rc = wsc_recv_frame(c, ms, &f);
    if (rc == PARLEY_ETIMEOUT) return;
    assert_int_equal(rc, 0);
    bool pushed = f->body_case == PARLEY__V1__FRAME__BODY_DELIVER;
    if (pushed) print_error("a Deliver of seq %llu came to a client that resumed\n",
                            (unsigned long long)f->deliver->events[0]->seq);
    pw_frame_free(f);
    assert_false(pushed);
  }
}

static int commit(wsc *b, uint64_t epoch, uint64_t ack, const char *n) {
  Parley__V1__StateEntry se = PARLEY__V1__STATE_ENTRY__INIT;
  Parley__V1__StateEntry *sep = &se;
  se.key = "n";
  se.value.data = (uint8_t *)n;
  se.value.len = strlen(n);
  Parley__V1__ConversationCommit cc = PARLEY__V1__CONVERSATION_COMMIT__INIT;
  Parley__V1__ConversationCommit *ccp = &cc;
  cc.conversation = CONV;
  cc.epoch = epoch;
  cc.ack_seq = ack;
  cc.state = &sep;
  cc.n_state = 1;
  Parley__V1__Commit cm = PARLEY__V1__COMMIT__INIT;
  cm.request_id = 9;
  cm.items = &ccp;
  cm.n_items = 1;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_COMMIT;
  f.commit = &cm;
  return wsc_send_frame(b, &f);
}

static void restart(int port) {
  char cfg[400], data[400], portarg[16], errlog[400];
  snprintf(cfg, sizeof cfg, "%s/gateway.yaml", dir);
  snprintf(data, sizeof data, "%s/data", dir);
  snprintf(errlog, sizeof errlog, "%s/gateway.log", dir);
  snprintf(portarg, sizeof portarg, "%d", port);
  char *argv[] = {(char *)PARLEY_BIN, "gateway", "--config", cfg, "--data-dir", data,
                  "--port", portarg, NULL};
  assert_int_equal(tproc_start(&gw, argv, errlog), 0);
  assert_true(tproc_wait_for(&gw, "listening on", NULL, 0, 15000));
}

void test_lazy_watermark(void **unused) {
  (void)unused;
  /* Ten minutes: the device watermarks of this run are written only when
   * the store closes, which the SIGKILL prevents. */
  setenv("PARLEY_SQLITE_WM_FLUSH_MS", "600000", 1);
  assert_int_equal(tmpdir_make(dir, sizeof dir, "chaos-lazywm"), 0);
  int port = tproc_start_gateway(&gw, dir, yaml);
  assert_true(port > 0);

  /* The bot first, so the new conversation is assigned to it. */
  wsc *b = login(port, "echo", PARLEY__V1__ROLE__ROLE_BOT, "echo-token", 0, NULL);
  assert_non_null(b);
  wsc *c = login(port, "carol", PARLEY__V1__ROLE__ROLE_CUSTOMER, "carol-token", 0, NULL);
  assert_non_null(c);

  /* OPENED (1), ASSIGNED (2), then three messages (3, 4, 5). */
  assert_int_equal(send_text(c, 1, "one"), 0);
  assert_int_equal(send_text(c, 2, "two"), 0);
  assert_int_equal(send_text(c, 3, "three"), 0);
  seen s1 = {0};
  collect(c, &s1, 3, 5, true, false);
  assert_int_equal(s1.acks[0], 3);
  assert_int_equal(s1.acks[2], 5);
  assert_int_equal(next_seq, 6);

  /* The bot handles 1..5 and commits them with its state. */
  seen sb = {0};
  collect(b, &sb, 0, 5, false, false);
  assert_true(sb.assigned);
  assert_int_equal(commit(b, sb.assign_epoch, 5, "3"), 0);
  collect(b, &sb, 0, 0, false, true);

  /* The customer acknowledges 5, then sends once more (6). Batches are
   * committed in order, so when 6 is acknowledged the Ack's batch has
   * committed too: only its watermark row can be missing from the file. */
  assert_int_equal(ack1(c, 5), 0);
  assert_int_equal(send_text(c, 4, "four"), 0);
  seen s2 = {0};
  collect(c, &s2, 1, 0, true, false);
  /* The commit's state change may be an event of its own before it. */
  uint64_t last = s2.acks[0];
  assert_true(last >= 6 && last < MAX_SEQ);
  if (next_seq <= last) collect(c, &s2, 1, last, true, false);
  assert_int_equal(next_seq, last + 1);
  seen sb2 = {0};
  collect(b, &sb2, 0, last, false, false); /* pushed to the bot, not committed */
  /* The gateway has the Ack: a new connection of the device resumes after 5. */
  pw_frame *w = NULL;
  wsc *c2 = login(port, "carol", PARLEY__V1__ROLE__ROLE_CUSTOMER, "carol-token", 0, &w);
  assert_non_null(c2);
  assert_int_equal(cursor_of(w), 5);
  pw_frame_free(w);
  wsc_abort(c2);

  /* The kill, with the Ack's watermark committed but not written. */
  assert_int_equal(tproc_kill(&gw, SIGKILL), 0);
  assert_int_equal(tproc_wait(&gw, 15000), 0);
  tproc_stop(&gw);
  wsc_abort(c);
  wsc_abort(b);
  restart(port);

  /* A client that does not resume CONV: the stored watermark decides. */
  c = login(port, "carol", PARLEY__V1__ROLE__ROLE_CUSTOMER, "carol-token", 0, &w);
  assert_non_null(c);
  uint64_t cur = cursor_of(w);
  pw_frame_free(w);
  print_message("lazy watermark: acknowledged 5, Welcome cursor after the kill %llu\n",
                (unsigned long long)cur);
  /* Precondition: the lazy watermark was lost with the process. */
  assert_true(cur < 5);
  seen s3 = {0};
  collect(c, &s3, 0, last, true, false);
  /* Everything after the cursor again, in order, flagged, nothing missing. */
  assert_int_equal(s3.n, (int)(last - cur));
  for (int i = 0; i < s3.n; i++) {
    assert_int_equal(s3.seq[i], cur + 1 + (uint64_t)i);
    assert_true(s3.redelivered[i]);
  }
  /* The client dropped them all: each event shown exactly once, 1..last. */
  assert_int_equal(next_seq, last + 1);
  for (uint64_t q = 1; q <= last; q++) assert_int_equal(shown[q], 1);
  wsc_close(c, 1000);

  /* A client that resumes (as libparley does) gets nothing again. */
  c = login(port, "carol", PARLEY__V1__ROLE__ROLE_CUSTOMER, "carol-token", last, &w);
  assert_non_null(c);
  assert_int_equal(cursor_of(w), last);
  pw_frame_free(w);
  expect_quiet(c, 700);

  /* The bot's commit is in its transaction: it survived the kill. */
  b = login(port, "echo", PARLEY__V1__ROLE__ROLE_BOT, "echo-token", 0, NULL);
  assert_non_null(b);
  seen sb3 = {0};
  collect(b, &sb3, 0, last, false, false);
  assert_true(sb3.assigned);
  assert_int_equal(sb3.assign_acked, 5);
  assert_string_equal(sb3.state_n, "3");
  /* Only what it had not committed comes again: 6..last. */
  assert_int_equal(sb3.n, (int)(last - 5));
  for (int i = 0; i < sb3.n; i++) {
    assert_int_equal(sb3.seq[i], 6 + (uint64_t)i);
    assert_true(sb3.redelivered[i]);
  }
  wsc_close(b, 1000);
  /* One more message, acknowledged: the watermark moves to last + 1 in
   * memory (a new connection of the device resumes after it). */
  assert_int_equal(send_text(c, 5, "five"), 0);
  seen s4 = {0};
  collect(c, &s4, 1, last + 1, true, false);
  assert_int_equal(s4.acks[0], last + 1);
  assert_int_equal(ack1(c, last + 1), 0);
  wsc_close(c, 1000);
  c = login(port, "carol", PARLEY__V1__ROLE__ROLE_CUSTOMER, "carol-token", 0, &w);
  assert_non_null(c);
  assert_int_equal(cursor_of(w), last + 1);
  pw_frame_free(w);
  wsc_close(c, 1000);

  /* A clean stop writes the waiting watermarks: last + 1 is there afterwards. */
  assert_int_equal(tproc_kill(&gw, SIGTERM), 0);
  assert_int_equal(tproc_wait(&gw, 15000), 0);
  tproc_stop(&gw);
  restart(port);
  c = login(port, "carol", PARLEY__V1__ROLE__ROLE_CUSTOMER, "carol-token", 0, &w);
  assert_non_null(c);
  assert_int_equal(cursor_of(w), last + 1);
  pw_frame_free(w);
  wsc_close(c, 1000);

  assert_int_equal(tproc_kill(&gw, SIGTERM), 0);
  assert_int_equal(tproc_wait(&gw, 15000), 0);
  tproc_stop(&gw);
  tmpdir_remove(dir);
  dir[0] = 0;
  unsetenv("PARLEY_SQLITE_WM_FLUSH_MS");
}

/* The same kill a while after the Ack, on a quiet gateway: the writer wrote
 * the watermark on its own when its interval (200 ms here) was over, so it
 * survives. The Ack's batch has no event and is committed on the loop
 * thread, so this also checks that such a commit wakes the writer. */
void test_lazy_watermark_timer(void **unused) {
  (void)unused;
  setenv("PARLEY_SQLITE_WM_FLUSH_MS", "200", 1);
  assert_int_equal(tmpdir_make(dir, sizeof dir, "chaos-lazywm2"), 0);
  int port = tproc_start_gateway(&gw, dir, yaml);
  assert_true(port > 0);
  wsc *c = login(port, "carol", PARLEY__V1__ROLE__ROLE_CUSTOMER, "carol-token", 0, NULL);
  assert_non_null(c);
  assert_int_equal(send_text(c, 1, "one"), 0);
  assert_int_equal(send_text(c, 2, "two"), 0);
  seen s1 = {0};
  collect(c, &s1, 2, 0, false, false);
  uint64_t last = s1.acks[1];
  assert_true(last >= 2);
  if (s1.n == 0 || s1.seq[s1.n - 1] < last) collect(c, &s1, 2, last, false, false);
  /* Let the gateway settle (the writer idle), then acknowledge. */
  struct timespec ts = {0, 300 * 1000000L};
  nanosleep(&ts, NULL);
  assert_int_equal(ack1(c, last), 0);
  pw_frame *w = NULL;
  wsc *c2 = login(port, "carol", PARLEY__V1__ROLE__ROLE_CUSTOMER, "carol-token", 0, &w);
  assert_non_null(c2);
  assert_int_equal(cursor_of(w), last);
  pw_frame_free(w);
  wsc_abort(c2);
  /* Five intervals: the watermark is written by then. */
  ts.tv_nsec = 999 * 1000000L;
  nanosleep(&ts, NULL);
  assert_int_equal(tproc_kill(&gw, SIGKILL), 0);
  assert_int_equal(tproc_wait(&gw, 15000), 0);
  tproc_stop(&gw);
  wsc_abort(c);
  restart(port);
  c = login(port, "carol", PARLEY__V1__ROLE__ROLE_CUSTOMER, "carol-token", 0, &w);
  assert_non_null(c);
  assert_int_equal(cursor_of(w), last);
  pw_frame_free(w);
  expect_quiet(c, 500);
  wsc_close(c, 1000);
  assert_int_equal(tproc_kill(&gw, SIGTERM), 0);
  assert_int_equal(tproc_wait(&gw, 15000), 0);
  tproc_stop(&gw);
  tmpdir_remove(dir);
  dir[0] = 0;
  unsetenv("PARLEY_SQLITE_WM_FLUSH_MS");
}

int test_lazy_watermark_teardown(void **unused) {
  (void)unused;
  if (gw.pid > 0 && !gw.reaped) tproc_stop(&gw);
  if (dir[0]) tmpdir_remove(dir);
  dir[0] = 0;
  for (int i = 0; i <= MAX_SEQ; i++) {
    free(first_bytes[i]);
    first_bytes[i] = NULL;
  }
  unsetenv("PARLEY_SQLITE_WM_FLUSH_MS");
  return 0;
}
