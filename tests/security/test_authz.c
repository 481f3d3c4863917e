/* Authorization against the real gateway, as a matrix: role (customer,
 * agent, bot) x operation (read, fetch, send, commit, tag, take) x
 * ownership (the principal's own conversation or someone else's). Each
 * refused cell is checked for its documented code (docs/gateway.md) and
 * for leaving nothing behind; each role's own conversation is the positive
 * control, so a gateway that refused everything would fail too. Then
 * authentication (wrong, missing, another principal's token: Error
 * UNAUTHENTICATED and close 4005), stale epochs after a hand back, and
 * takes by agents without the queue. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <parley/error.h>

#include "gwharness.h"

#define E(x) PARLEY__V1__ERROR_CODE__ERROR_##x
#define NOCODE (-1)

/* The shared fixture (tests/gateway/gwharness.h): a gateway in a fresh
 * directory. */
typedef gwh_fx fx;

static int cells, refused_cells, allowed_cells;

static const char *code_name(int code) {
  if (code == NOCODE) return "(no answer)";
  const ProtobufCEnumValue *v =
      protobuf_c_enum_descriptor_get_value(&parley__v1__error_code__descriptor, code);
  return v ? v->name : "?";
}

static void cell(const char *who, const char *op, const char *conv, int got, int want) {
  cells++;
  if (want) refused_cells++;
  else allowed_cells++;
  printf("  | %-9s | %-12s | %-8s | %-22s | %s\n", who, op, conv, code_name(got),
         got == want ? "as documented" : "WRONG");
  if (got != want) fail_msg("%s %s on %s: got %s, wanted %s", who, op, conv, code_name(got),
                            code_name(want));
}

/* ---- operations; each returns the error code (0 = accepted) ---- */

static uint32_t next_id = 1000;

static int op_send(wsc *c, const char *conv, uint64_t epoch) {
  uint32_t id = next_id++;
  if (gwh_send_text(c, conv, id, "intrusion", epoch)) return NOCODE;
  pw_frame *a = gwh_wait_ack(c, id, 2000);
  if (!a) return NOCODE;
  int code = (int)a->send_ack->error;
  if (code) assert_int_equal(a->send_ack->seq, 0);
  pw_frame_free(a);
  return code;
}

static int op_action(wsc *c, const char *conv, Parley__V1__Action *act, uint64_t epoch) {
  uint32_t id = next_id++;
  if (gwh_send_action(c, conv, id, act, epoch)) return NOCODE;
  pw_frame *a = gwh_wait_ack(c, id, 2000);
  if (!a) return NOCODE;
  int code = (int)a->send_ack->error;
  pw_frame_free(a);
  return code;
}

static int op_tag(wsc *c, const char *conv, uint64_t epoch) {
  char *add[1] = {"pwned"};
  Parley__V1__Tag tg = PARLEY__V1__TAG__INIT;
  tg.add = add;
  tg.n_add = 1;
  Parley__V1__Action act = PARLEY__V1__ACTION__INIT;
  act.body_case = PARLEY__V1__ACTION__BODY_TAG;
  act.tag = &tg;
  return op_action(c, conv, &act, epoch);
}

static int op_take(wsc *c, const char *conv, uint64_t epoch) {
  Parley__V1__Take tk = PARLEY__V1__TAKE__INIT;
  Parley__V1__Action act = PARLEY__V1__ACTION__INIT;
  act.body_case = PARLEY__V1__ACTION__BODY_TAKE;
  act.take = &tk;
  return op_action(c, conv, &act, epoch);
}

static int op_handoff(wsc *c, const char *conv, const char *queue, uint64_t epoch) {
  Parley__V1__Handoff ho = PARLEY__V1__HANDOFF__INIT;
  ho.queue = (char *)queue;
  Parley__V1__Action act = PARLEY__V1__ACTION__INIT;
  act.body_case = PARLEY__V1__ACTION__BODY_HANDOFF;
  act.handoff = &ho;
  return op_action(c, conv, &act, epoch);
}

static int op_hand_back(wsc *c, const char *conv, uint64_t epoch) {
  Parley__V1__HandBack hb = PARLEY__V1__HAND_BACK__INIT;
  Parley__V1__Action act = PARLEY__V1__ACTION__INIT;
  act.body_case = PARLEY__V1__ACTION__BODY_HAND_BACK;
  act.hand_back = &hb;
  return op_action(c, conv, &act, epoch);
}

static uint64_t next_req = 1;

/* Fetch: the FetchResult's error; a refusal must carry no events. */
static int op_fetch(wsc *c, const char *conv) {
  uint64_t req = next_req++;
  Parley__V1__Fetch fe = PARLEY__V1__FETCH__INIT;
  fe.request_id = req;
  fe.conversation = (char *)conv;
  fe.from_seq = 1;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_FETCH;
  f.fetch = &fe;
  if (wsc_send_frame(c, &f)) return NOCODE;
  for (int i = 0; i < 50; i++) {
    pw_frame *r = gwh_wait(c, PARLEY__V1__FRAME__BODY_FETCH_RESULT, 2000);
    if (!r) return NOCODE;
    if (r->fetch_result->request_id != req) {
      pw_frame_free(r);
      continue;
    }
    int code = (int)r->fetch_result->error;
    if (code) assert_int_equal(r->fetch_result->n_events, 0);
    else assert_true(r->fetch_result->n_events > 0);
    pw_frame_free(r);
    return code;
  }
  return NOCODE;
}

/* Commit: the outcome's error for bots; for other roles the gateway
 * answers with an Error frame carrying the request id. */
static int op_commit(wsc *c, const char *conv, uint64_t epoch, uint64_t ack_seq) {
  uint64_t req = next_req++;
  char *tags[1] = {"committed"};
  Parley__V1__ConversationCommit it = PARLEY__V1__CONVERSATION_COMMIT__INIT;
  it.conversation = (char *)conv;
  it.epoch = epoch;
  it.ack_seq = ack_seq;
  it.tags_add = tags;
  it.n_tags_add = 1;
  Parley__V1__ConversationCommit *itp = &it;
  Parley__V1__Commit cm = PARLEY__V1__COMMIT__INIT;
  cm.request_id = req;
  cm.items = &itp;
  cm.n_items = 1;
  pw_frame fr = PARLEY__V1__FRAME__INIT;
  fr.body_case = PARLEY__V1__FRAME__BODY_COMMIT;
  fr.commit = &cm;
  if (wsc_send_frame(c, &fr)) return NOCODE;
  for (int i = 0; i < 50; i++) {
    pw_frame *r = NULL;
    if (wsc_recv_frame(c, 2000, &r)) return NOCODE;
    if (r->body_case == PARLEY__V1__FRAME__BODY_COMMIT_RESULT &&
        r->commit_result->request_id == req) {
      assert_int_equal(r->commit_result->n_outcomes, 1);
      int code = (int)r->commit_result->outcomes[0]->error;
      pw_frame_free(r);
      return code;
    }
    if (r->body_case == PARLEY__V1__FRAME__BODY_ERROR && r->error->request_id == req) {
      int code = (int)r->error->code;
      pw_frame_free(r);
      return code;
    }
    pw_frame_free(r);
  }
  return NOCODE;
}

/* Read: how many events of conv were pushed to c within the wait. */
static int pushed(wsc *c, const char *conv, int wait_ms) {
  uint64_t seqs[64];
  return gwh_collect(c, conv, UINT64_MAX, wait_ms, seqs, NULL, 64);
}

static uint64_t last_seq(wsc *owner, const char *conv) {
  Parley__V1__Fetch fe = PARLEY__V1__FETCH__INIT;
  uint64_t req = next_req++;
  fe.request_id = req;
  fe.conversation = (char *)conv;
  fe.from_seq = 1;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_FETCH;
  f.fetch = &fe;
  assert_int_equal(wsc_send_frame(owner, &f), 0);
  for (int i = 0; i < 50; i++) {
    pw_frame *r = gwh_wait(owner, PARLEY__V1__FRAME__BODY_FETCH_RESULT, 2000);
    assert_non_null(r);
    if (r->fetch_result->request_id == req) {
      uint64_t s = r->fetch_result->last_seq;
      pw_frame_free(r);
      return s;
    }
    pw_frame_free(r);
  }
  fail();
  return 0;
}

static uint64_t wait_assign(wsc *bot, const char *conv) {
  for (int i = 0; i < 20; i++) {
    pw_frame *as = gwh_wait(bot, PARLEY__V1__FRAME__BODY_ASSIGN, 2000);
    assert_non_null(as);
    bool match = !strcmp(as->assign->conversation, conv);
    uint64_t e = as->assign->epoch;
    pw_frame_free(as);
    if (match) return e;
  }
  fail();
  return 0;
}

static void test_matrix(void **state) {
  fx *f = *state;
  wsc *carol = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  wsc *bot = gwh_login(f->h, "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  wsc *alice = gwh_login(f->h, "alice", R_AGENT, "alice-token", "desk", NULL, NULL);
  wsc *otherbot = gwh_login(f->h, "otherbot", R_BOT, "other-token", NULL, NULL, NULL);
  char tok[65];
  assert_int_equal(gwh_customer_token("dave", tok), 0);
  wsc *dave = gwh_login(f->h, "dave", R_CUSTOMER, tok, "x", NULL, NULL);
  assert_non_null(carol);
  assert_non_null(bot);
  assert_non_null(alice);
  assert_non_null(otherbot);
  assert_non_null(dave);
  assert_int_equal(op_send(carol, "c-a", 0), 0);
  uint64_t epoch = wait_assign(bot, "c-a");
  uint64_t before = last_seq(carol, "c-a");
  printf("  | %-9s | %-12s | %-8s | %-22s |\n", "principal", "operation", "conv", "answer");

  /* Intruders: another customer, an agent who has not taken it, another
   * bot principal (with the real epoch, so only ownership can refuse). */
  struct {
    const char *name;
    wsc *c;
    uint64_t epoch;
    bool is_bot;
  } in[3] = {{"dave", dave, 0, false}, {"alice", alice, 0, false},
             {"otherbot", otherbot, epoch, true}};
  for (int i = 0; i < 3; i++) {
    cell(in[i].name, "fetch", "c-a", op_fetch(in[i].c, "c-a"), E(FORBIDDEN));
    cell(in[i].name, "send", "c-a", op_send(in[i].c, "c-a", in[i].epoch), E(FORBIDDEN));
    cell(in[i].name, "tag", "c-a", op_tag(in[i].c, "c-a", in[i].epoch), E(FORBIDDEN));
    cell(in[i].name, "take", "c-a", op_take(in[i].c, "c-a", in[i].epoch), E(FORBIDDEN));
    cell(in[i].name, "handoff", "c-a", op_handoff(in[i].c, "c-a", "billing", in[i].epoch),
         E(FORBIDDEN));
    cell(in[i].name, "commit", "c-a", op_commit(in[i].c, "c-a", epoch, 1), E(FORBIDDEN));
  }
  /* Nothing the intruders did was stored. */
  assert_int_equal(last_seq(carol, "c-a"), before);
  /* Read: new events of c-a reach the owner and its bot, not the intruders. */
  assert_int_equal(op_send(carol, "c-a", 0), 0);
  uint64_t seqs[64];
  assert_true(gwh_collect(bot, "c-a", before + 1, 2000, seqs, NULL, 64) >= 1);
  for (int i = 0; i < 3; i++) {
    int n = pushed(in[i].c, "c-a", 300);
    cell(in[i].name, "read (push)", "c-a", n ? 0 : E(FORBIDDEN), E(FORBIDDEN));
  }

  /* Positive controls: the owners may do what their role allows. */
  cell("carol", "fetch", "c-a", op_fetch(carol, "c-a"), 0);
  cell("carol", "send", "c-a", op_send(carol, "c-a", 0), 0);
  cell("faqbot", "fetch", "c-a", op_fetch(bot, "c-a"), 0);
  cell("faqbot", "send", "c-a", op_send(bot, "c-a", epoch), 0);
  cell("faqbot", "tag", "c-a", op_tag(bot, "c-a", epoch), 0);
  assert_true(gwh_collect(bot, "c-a", before + 4, 2000, seqs, NULL, 64) >= 1);
  cell("faqbot", "commit", "c-a", op_commit(bot, "c-a", epoch, before + 1), 0);
  /* ... and no more than that. */
  cell("carol", "tag", "c-a", op_tag(carol, "c-a", 0), E(FORBIDDEN));
  cell("carol", "take", "c-a", op_take(carol, "c-a", 0), E(FORBIDDEN));
  cell("carol", "handoff", "c-a", op_handoff(carol, "c-a", "billing", 0), E(FORBIDDEN));
  cell("carol", "commit", "c-a", op_commit(carol, "c-a", epoch, 1), E(FORBIDDEN));
  cell("faqbot", "take", "c-a", op_take(bot, "c-a", epoch), E(FORBIDDEN));
  cell("faqbot", "hand back", "c-a", op_hand_back(bot, "c-a", epoch), E(FORBIDDEN));

  /* Unknown conversations: NOT_FOUND for bots and agents. */
  cell("alice", "send", "c-none", op_send(alice, "c-none", 0), E(NOT_FOUND));
  cell("otherbot", "send", "c-none", op_send(otherbot, "c-none", 1), E(NOT_FOUND));
  cell("faqbot", "commit", "c-none", op_commit(bot, "c-none", 1, 1), E(NOT_FOUND));
  cell("carol", "fetch", "c-none", op_fetch(carol, "c-none"), E(NOT_FOUND));
  /* A customer opening one with an action instead of a message. */
  Parley__V1__Close cl = PARLEY__V1__CLOSE__INIT;
  Parley__V1__Action close = PARLEY__V1__ACTION__INIT;
  close.body_case = PARLEY__V1__ACTION__BODY_CLOSE;
  close.close = &cl;
  cell("carol", "open by close", "c-new", op_action(carol, "c-new", &close, 0), E(NOT_FOUND));
  wsc_close(dave, 1000);
  wsc_close(otherbot, 1000);
  wsc_close(alice, 1000);
  wsc_close(bot, 1000);
  wsc_close(carol, 1000);
}

/* Handoff, takes by agents with and without the queue, what the bot may do
 * once an agent has it, and the old epoch after the hand back. */
static void test_queue_and_epochs(void **state) {
  fx *f = *state;
  wsc *carol = gwh_login(f->h, "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  wsc *bot = gwh_login(f->h, "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  wsc *alice = gwh_login(f->h, "alice", R_AGENT, "alice-token", "desk", NULL, NULL);
  wsc *bob = gwh_login(f->h, "bob", R_AGENT, "bob-token", "desk", NULL, NULL);
  wsc *otherbot = gwh_login(f->h, "otherbot", R_BOT, "other-token", NULL, NULL, NULL);
  assert_non_null(carol);
  assert_non_null(bot);
  assert_non_null(alice);
  assert_non_null(bob);
  assert_non_null(otherbot);
  assert_int_equal(op_send(carol, "c-q", 0), 0);
  uint64_t epoch = wait_assign(bot, "c-q");
  uint64_t seqs[64];
  uint64_t s0 = last_seq(carol, "c-q");
  assert_int_equal(gwh_collect(bot, "c-q", s0, 2000, seqs, NULL, 64), (int)s0);
  /* Handoff to a queue by anyone but the bot is refused. */
  cell("otherbot", "handoff", "c-q", op_handoff(otherbot, "c-q", "billing", epoch), E(FORBIDDEN));
  cell("faqbot", "handoff", "c-q", op_handoff(bot, "c-q", "billing", epoch), 0);
  /* Takes: the wrong queue, the wrong roles. */
  cell("bob", "take", "c-q", op_take(bob, "c-q", 0), E(FORBIDDEN));
  cell("carol", "take", "c-q", op_take(carol, "c-q", 0), E(FORBIDDEN));
  cell("otherbot", "take", "c-q", op_take(otherbot, "c-q", epoch), E(FORBIDDEN));
  cell("faqbot", "take", "c-q", op_take(bot, "c-q", epoch), E(FORBIDDEN));
  /* Queued, not taken: the other agents cannot speak or read in it. */
  cell("bob", "send", "c-q", op_send(bob, "c-q", 0), E(FORBIDDEN));
  cell("alice", "send", "c-q", op_send(alice, "c-q", 0), E(FORBIDDEN));
  cell("alice", "fetch", "c-q", op_fetch(alice, "c-q"), E(FORBIDDEN));
  cell("alice", "take", "c-q", op_take(alice, "c-q", 0), 0);
  /* Taken: the agent reads and sends, the others cannot. */
  cell("alice", "fetch", "c-q", op_fetch(alice, "c-q"), 0);
  cell("alice", "send", "c-q", op_send(alice, "c-q", 0), 0);
  cell("alice", "tag", "c-q", op_tag(alice, "c-q", 0), 0);
  cell("bob", "send", "c-q", op_send(bob, "c-q", 0), E(FORBIDDEN));
  cell("bob", "fetch", "c-q", op_fetch(bob, "c-q"), E(FORBIDDEN));
  cell("bob", "take", "c-q", op_take(bob, "c-q", 0), E(FORBIDDEN));
  cell("bob", "hand back", "c-q", op_hand_back(bob, "c-q", 0), E(FORBIDDEN));
  cell("faqbot", "send", "c-q", op_send(bot, "c-q", epoch), E(FORBIDDEN));
  cell("faqbot", "tag", "c-q", op_tag(bot, "c-q", epoch), E(FORBIDDEN));
  cell("alice", "take again", "c-q", op_take(alice, "c-q", 0), E(FORBIDDEN));
  /* Bob is told nothing of c-q's new events. */
  assert_int_equal(pushed(bob, "c-q", 300), 0);
  /* Hand back: the bot gets epoch + 1; the old epoch is stale for sends
   * and commits, replayed or new. */
  cell("alice", "hand back", "c-q", op_hand_back(alice, "c-q", 0), 0);
  uint64_t e2 = wait_assign(bot, "c-q");
  assert_int_equal(e2, epoch + 1);
  uint64_t top = last_seq(carol, "c-q");
  assert_true(gwh_collect(bot, "c-q", top, 2000, seqs, NULL, 64) >= 1);
  cell("faqbot", "send (old)", "c-q", op_send(bot, "c-q", epoch), E(STALE_EPOCH));
  cell("faqbot", "commit (old)", "c-q", op_commit(bot, "c-q", epoch, top), E(STALE_EPOCH));
  cell("faqbot", "tag (old)", "c-q", op_tag(bot, "c-q", epoch), E(STALE_EPOCH));
  cell("faqbot", "send (future)", "c-q", op_send(bot, "c-q", e2 + 1), E(STALE_EPOCH));
  /* The same Send, byte for byte, replayed with the old epoch. */
  uint32_t id = next_id++;
  assert_int_equal(gwh_send_text(bot, "c-q", id, "replay", epoch), 0);
  pw_frame *a = gwh_wait_ack(bot, id, 2000);
  assert_non_null(a);
  assert_int_equal(a->send_ack->error, E(STALE_EPOCH));
  pw_frame_free(a);
  assert_int_equal(gwh_send_text(bot, "c-q", id, "replay", epoch), 0);
  a = gwh_wait_ack(bot, id, 2000);
  assert_non_null(a);
  cell("faqbot", "replay (old)", "c-q", (int)a->send_ack->error, E(STALE_EPOCH));
  pw_frame_free(a);
  assert_int_equal(last_seq(carol, "c-q"), top);
  cell("faqbot", "send (new)", "c-q", op_send(bot, "c-q", e2), 0);
  cell("faqbot", "commit (new)", "c-q", op_commit(bot, "c-q", e2, top), 0);
  cell("alice", "send", "c-q", op_send(alice, "c-q", 0), E(FORBIDDEN));
  wsc_close(otherbot, 1000);
  wsc_close(bob, 1000);
  wsc_close(alice, 1000);
  wsc_close(bot, 1000);
  wsc_close(carol, 1000);
}

/* Logs in and expects Error{UNAUTHENTICATED} then close 4005. Returns the
 * close code (or a negative status). */
static void refused_login(fx *f, const char *what, const char *principal, int role,
                          const char *token) {
  char auth[256];
  if (token) snprintf(auth, sizeof auth, "Bearer %s", token);
  wsc *c = wsc_connect("127.0.0.1", gwh_port(f->h), token ? auth : NULL, 3000);
  int code = NOCODE, close_code = 0;
  if (c) {
    Parley__V1__Hello he = PARLEY__V1__HELLO__INIT;
    he.min_version = 1;
    he.max_version = 1;
    he.principal = (char *)principal;
    he.role = role;
    he.device = "d1";
    pw_frame fr = PARLEY__V1__FRAME__INIT;
    fr.body_case = PARLEY__V1__FRAME__BODY_HELLO;
    fr.hello = &he;
    assert_int_equal(wsc_send_frame(c, &fr), 0);
    pw_frame *r = NULL;
    if (wsc_recv_frame(c, 3000, &r) == 0) {
      if (r->body_case == PARLEY__V1__FRAME__BODY_ERROR) {
        code = (int)r->error->code;
        assert_true(r->error->fatal);
      } else if (r->body_case == PARLEY__V1__FRAME__BODY_WELCOME) {
        code = 0;
      }
      pw_frame_free(r);
    }
    close_code = wsc_close_code(c);
    if (!close_code) close_code = wsc_recv_close(c, 3000);
    wsc_abort(c);
  }
  cells++;
  refused_cells++;
  printf("  | %-28s | %-22s | close %d\n", what, code_name(code), close_code);
  if (code != E(UNAUTHENTICATED) || close_code != 4005)
    fail_msg("%s: got %s and close %d", what, code_name(code), close_code);
}

static void test_authentication(void **state) {
  fx *f = *state;
  char carol_tok[65], dave_tok[65];
  assert_int_equal(gwh_customer_token("carol", carol_tok), 0);
  assert_int_equal(gwh_customer_token("dave", dave_tok), 0);
  refused_login(f, "carol, wrong token", "carol", R_CUSTOMER, "nope");
  refused_login(f, "carol, no token", "carol", R_CUSTOMER, NULL);
  refused_login(f, "carol, empty token", "carol", R_CUSTOMER, "");
  refused_login(f, "carol, alice's token", "carol", R_CUSTOMER, "alice-token");
  refused_login(f, "alice, bob's token", "alice", R_AGENT, "bob-token");
  refused_login(f, "faqbot, otherbot's token", "faqbot", R_BOT, "other-token");
  refused_login(f, "faqbot, no token", "faqbot", R_BOT, NULL);
  refused_login(f, "dave, carol's minted token", "dave", R_CUSTOMER, carol_tok);
  refused_login(f, "dave, his token as agent", "dave", R_AGENT, dave_tok);
  refused_login(f, "alice as bot", "alice", R_BOT, "alice-token");
  refused_login(f, "carol as agent", "carol", R_AGENT, "carol-token");
  refused_login(f, "unknown principal", "mallory", R_AGENT, "alice-token");
  char longtok[200];
  memset(longtok, 'a', sizeof longtok - 1);
  longtok[sizeof longtok - 1] = '\0';
  refused_login(f, "minted token, wrong length", "dave", R_CUSTOMER, longtok);
  /* Positive control: the right token is let in. */
  wsc *c = gwh_login(f->h, "dave", R_CUSTOMER, dave_tok, "x", NULL, NULL);
  assert_non_null(c);
  wsc_close(c, 1000);
}

static void test_summary(void **state) {
  (void)state;
  printf("    %d cells: %d refusals, %d allowed controls\n", cells, refused_cells, allowed_cells);
  assert_true(cells >= 60);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_matrix, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_queue_and_epochs, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test_setup_teardown(test_authentication, gwh_fx_setup, gwh_fx_teardown),
      cmocka_unit_test(test_summary),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
