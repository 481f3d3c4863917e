/* Exact frame-sequence tests of the protocol engine.
 *
 * The gateway here is a scripted fake peer (see harness.h): each test
 * feeds the exact frames a gateway would send and checks the exact frames
 * the engine writes, on a simulated clock. Semantics over many random
 * schedules are covered by test_engine_property against a gateway model.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "harness.h"

#define CONV_A "conv-a"
#define CONV_B "conv-b"

static void feed_free(harness *h, pw_frame *f, int want_rc) {
  H_EQ(h_feed(h, f), want_rc);
  h_frame_free(f);
}

static void deliver1_rc(harness *h, const char *conv, uint64_t seq, int rc) {
  pw_frame *d = mk_deliver();
  uint8_t id[16];
  h_id(id, (uint32_t)(1000000 + seq));
  mk_deliver_add(d, conv, seq, "hi", id);
  feed_free(h, d, rc);
}

static void deliver1(harness *h, const char *conv, uint64_t seq) {
  deliver1_rc(h, conv, seq, 0);
}

static void expect_ack(harness *h, const char *conv, uint64_t up_to) {
  pw_frame *f = h_expect(h, PARLEY__V1__FRAME__BODY_ACK);
  H_EQ(f->ack->n_entries, 1);
  H_STREQ(f->ack->entries[0]->conversation, conv);
  H_EQ(f->ack->entries[0]->up_to_seq, up_to);
  pw_frame_free(f);
}

/* Takes a Send frame and checks its id number and conversation. */
static void expect_send(harness *h, const char *conv, uint32_t n) {
  uint8_t id[16];
  h_id(id, n);
  pw_frame *f = h_expect(h, PARLEY__V1__FRAME__BODY_SEND);
  H_STREQ(f->send->conversation, conv);
  H_EQ(f->send->client_msg_id.len, 16);
  if (memcmp(f->send->client_msg_id.data, id, 16) != 0)
    H_FAIL("Send carries another id than #%u", n);
  pw_frame_free(f);
}

static void ack_send(harness *h, const char *conv, uint32_t n, uint64_t seq, bool dup) {
  uint8_t id[16];
  h_id(id, n);
  feed_free(h, mk_send_ack(id, conv, seq, dup, 0), 0);
}

/* ------------------------------------------------------------ handshake */

static void t_handshake(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_AGENT);
  const char *queues[] = {"billing", "vip"};
  cfg.queues = queues;
  cfg.n_queues = 2;
  h_init(&h, &cfg);
  H_TRUE(!pe_engine_ready(h.e));
  H_EQ(pe_engine_on_connect(h.e, h.now), 0);
  pw_frame *f = h_expect(&h, PARLEY__V1__FRAME__BODY_HELLO);
  H_EQ(f->hello->min_version, 1);
  H_EQ(f->hello->max_version, 1);
  H_STREQ(f->hello->principal, "alice");
  H_STREQ(f->hello->token, "secret");
  H_EQ(f->hello->role, PARLEY__V1__ROLE__ROLE_AGENT);
  H_STREQ(f->hello->device, "dev-1");
  H_STREQ(f->hello->locale, "en");
  H_EQ(f->hello->n_queues, 2);
  H_STREQ(f->hello->queues[1], "vip");
  H_EQ(f->hello->n_resume, 0);
  pw_frame_free(f);
  h_expect_none(&h);

  /* Anything but Welcome before Welcome is a protocol error. */
  h.quiet = true;
  deliver1_rc(&h, CONV_A, 1, PARLEY_EPROTOCOL);
  H_EQ(h.n_events, 0);
  H_EQ(h.n_errors, 1);
  H_EQ(h.errors[0], PARLEY_EPROTOCOL);

  /* A Ping is answered even before Welcome, with the same nonce. */
  feed_free(&h, mk_ping(99), 0);
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_PONG);
  H_EQ(f->pong->nonce, 99);
  H_EQ(f->pong->time_ms, 77);
  pw_frame_free(f);

  feed_free(&h, mk_welcome(10000, 0), 0);
  H_TRUE(pe_engine_ready(h.e));
  H_EQ(h.n_ready, 1);
  h_expect_none(&h);
  h_fini(&h);
}

static void t_handshake_timeout(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.heartbeat_ms = 1000;
  h_init(&h, &cfg);
  h.quiet = true;
  H_EQ(pe_engine_on_connect(h.e, h.now), 0);
  h_drain(&h);
  uint64_t t0 = h.now;
  H_EQ(pe_engine_deadline(h.e), t0 + 2000);
  h_run_until(&h, t0 + 1999);
  int code = 0;
  H_TRUE(!pe_engine_should_close(h.e, &code));
  h_run_until(&h, t0 + 2000);
  H_TRUE(pe_engine_should_close(h.e, &code));
  H_EQ(code, 4009);
  H_EQ(h.errors[0], PARLEY_ETIMEOUT);
  /* Behaves as disconnected: a reconnect time is set, nothing is written. */
  H_TRUE(pe_engine_reconnect_at(h.e) >= t0 + 2000);
  h_expect_none(&h);
  h_fini(&h);
}

/* ----------------------------------------------------------------- sends */

static void t_send_ack(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  h_init(&h, &cfg);
  h_connect(&h, 10000);
  parley_button bt[] = {{.label = "Yes", .payload = "y"}, {.label = "No", .payload = "n"}};
  parley_content qr = {.kind = PARLEY_CONTENT_QUICK_REPLIES, .text = "Continue?",
                       .buttons = bt, .n_buttons = 2};
  uint8_t id[16];
  h_id(id, 1);
  parley_quote q = {.seq = 4, .excerpt = "earlier", .sender = "bob"};
  H_EQ(pe_engine_send(h.e, CONV_A, &qr, &q, id, 0, (void *)0x1, h.now), 0);
  pw_frame *f = h_expect(&h, PARLEY__V1__FRAME__BODY_SEND);
  H_STREQ(f->send->conversation, CONV_A);
  H_EQ(f->send->body_case, PARLEY__V1__SEND__BODY_CONTENT);
  H_EQ(f->send->content->body_case, PARLEY__V1__CONTENT__BODY_QUICK_REPLIES);
  H_EQ(f->send->content->quick_replies->n_replies, 2);
  H_STREQ(f->send->content->fallback, "Continue?\n1. Yes\n2. No");
  H_EQ(f->send->quote->seq, 4);
  H_STREQ(f->send->locale, "en");
  pw_frame_free(f);
  ack_send(&h, CONV_A, 1, 7, false);
  H_EQ(h.n_results, 1);
  H_EQ(h.results[0].status, 0);
  H_EQ(h.results[0].seq, 7);
  H_EQ(h.results[0].attempts, 1);
  H_TRUE(h.results[0].ud == (void *)0x1);
  H_TRUE(!h.results[0].duplicate);

  /* A card without a fallback gets a generated one. */
  parley_button cb[] = {{.label = "Track", .payload = "track"},
                        {.label = "Site", .url = "https://x.example"}};
  parley_content card = {.kind = PARLEY_CONTENT_CARD, .title = "Order 42",
                         .text = "Shipped", .buttons = cb, .n_buttons = 2};
  H_EQ(pe_engine_send(h.e, CONV_A, &card, NULL, NULL, 0, NULL, h.now), 0);
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_SEND);
  H_STREQ(f->send->content->fallback,
          "Order 42\nShipped\n1. Track\n2. Site (https://x.example)");
  H_EQ(f->send->content->card->buttons[1]->action_case, PARLEY__V1__BUTTON__ACTION_URL);
  /* NULL id: a random 16-byte id was drawn. */
  H_EQ(f->send->client_msg_id.len, 16);
  uint8_t rid[16];
  memcpy(rid, f->send->client_msg_id.data, 16);
  pw_frame_free(f);
  /* Duplicate ACK: the gateway already had it; the original seq counts. */
  feed_free(&h, mk_send_ack(rid, CONV_A, 5, true, 0), 0);
  H_EQ(h.n_results, 2);
  H_EQ(h.results[1].status, 0);
  H_EQ(h.results[1].seq, 5);
  H_TRUE(h.results[1].duplicate);

  /* Invalid arguments are refused at the call. */
  parley_content bad = {.kind = PARLEY_CONTENT_TEXT};
  H_EQ(pe_engine_send(h.e, CONV_A, &bad, NULL, NULL, 0, NULL, h.now), PARLEY_EINVAL);
  H_EQ(h_send_text(&h, "bad id!", "x", 9), PARLEY_EINVAL);
  h_expect_none(&h);
  h_fini(&h);
}

static void t_send_errors(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.ack_timeout_ms = 1000;
  h_init(&h, &cfg);
  h_connect(&h, 60000);
  /* Retryable: BUSY -> same id again after a backoff. */
  H_EQ(h_send_text(&h, CONV_A, "one", 1), 0);
  expect_send(&h, CONV_A, 1);
  uint8_t id[16];
  h_id(id, 1);
  feed_free(&h, mk_send_ack(id, CONV_A, 0, false, PARLEY__V1__ERROR_CODE__ERROR_BUSY), 0);
  H_EQ(h.n_results, 0);
  h_expect_none(&h);
  h_advance(&h, 1000);
  expect_send(&h, CONV_A, 1);
  ack_send(&h, CONV_A, 1, 3, false);
  H_EQ(h.results[0].status, 0);
  H_EQ(h.results[0].attempts, 2);
  /* Final: STALE_EPOCH fails the send at once. */
  H_EQ(h_send_text(&h, CONV_A, "two", 2), 0);
  expect_send(&h, CONV_A, 2);
  h_id(id, 2);
  feed_free(&h, mk_send_ack(id, CONV_A, 0, false, PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH), 0);
  H_EQ(h.n_results, 2);
  H_EQ(h.results[1].status, PARLEY_ESTALE_EPOCH);
  /* A non-fatal Error{INVALID} naming the send (the gateway could not
   * decode it) fails it at once: the same bytes would be refused again. */
  H_EQ(h_send_text(&h, CONV_A, "three", 3), 0);
  expect_send(&h, CONV_A, 3);
  h_id(id, 3);
  pw_frame *er = mk_error(PARLEY__V1__ERROR_CODE__ERROR_INVALID, 0, false);
  er->error->client_msg_id.data = malloc(16);
  memcpy(er->error->client_msg_id.data, id, 16);
  er->error->client_msg_id.len = 16;
  feed_free(&h, er, 0);
  H_EQ(h.n_results, 3);
  H_EQ(h.results[2].status, PARLEY_EINVAL);
  h_fini(&h);
}

static void t_retry_backoff(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.ack_timeout_ms = 1000;
  cfg.tuning.retry_max_ms = 4000;
  cfg.tuning.max_attempts = 8;
  cfg.tuning.send_deadline_ms = 1000000;
  cfg.tuning.seed = 7;
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  H_EQ(h_send_text(&h, CONV_A, "x", 1), 0);
  expect_send(&h, CONV_A, 1);
  uint64_t last = h.now;
  uint64_t floor = 250;
  /* Each resend comes after a wait uniform in [0, min(cap, base*2^n)),
   * raised to the floor; the waits must stay inside those bounds and the
   * later ones must reach beyond the uncapped first window at least once. */
  uint64_t max_seen = 0;
  for (uint32_t attempt = 1; attempt < 8; attempt++) {
    uint64_t window = 1000ull << (attempt - 1);
    if (window > 4000) window = 4000;
    uint64_t next = pe_engine_deadline(h.e);
    H_TRUE(next > last);
    uint64_t wait = next - last;
    if (wait < floor || wait >= window)
      H_FAIL("attempt %u waited %llu ms, outside [%llu, %llu)", attempt,
             (unsigned long long)wait, (unsigned long long)floor, (unsigned long long)window);
    if (wait > max_seen) max_seen = wait;
    h_run_until(&h, next);
    expect_send(&h, CONV_A, 1);
    last = next;
  }
  H_TRUE(max_seen > 1000);
  /* The 8th write was the last: the next deadline fails the send. */
  h_run_until(&h, h.now + 4000);
  H_EQ(h.n_results, 1);
  H_EQ(h.results[0].status, PARLEY_EATTEMPTS);
  H_EQ(h.results[0].attempts, 8);
  h_expect_none(&h);
  parley_client_stats st;
  pe_engine_stats(h.e, &st);
  H_EQ(st.retries, 7);
  H_EQ(st.send_failures, 1);
  H_EQ(st.outbox_size, 0);
  H_EQ(st.buffered_bytes, 0);
  h_fini(&h);
}

/* Late answers to resends of completed sends: 300 conversations each
 * resend their message once (the gateway is slow), the first answers
 * complete all 300, then the answers to the resends arrive. More sends
 * completed than the ring of recent ones holds (PE_DONE_RING, 256), and
 * none of the late answers may be reported as a protocol violation. */
static void t_late_answers_many(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_BOT);
  cfg.tuning.ack_timeout_ms = 1000;
  cfg.tuning.send_deadline_ms = 1000000;
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  enum { N = 300 };
  char conv[N][16];
  for (uint32_t i = 0; i < N; i++) {
    snprintf(conv[i], sizeof conv[i], "conv-%u", i);
    H_EQ(h_send_text(&h, conv[i], "x", i + 1), 0);
  }
  H_EQ(h_drain(&h), N);
  /* Every send written again at least once (resends come after 250 to
   * 1,000 ms, so some twice). */
  h_advance(&h, 1000);
  uint32_t writes[N] = {0};
  pw_frame *f;
  while ((f = h_take(&h))) {
    H_EQ(f->body_case, PARLEY__V1__FRAME__BODY_SEND);
    for (uint32_t i = 0; i < N; i++) {
      uint8_t id[16];
      h_id(id, i + 1);
      if (memcmp(f->send->client_msg_id.data, id, 16) == 0) writes[i]++;
    }
    pw_frame_free(f);
  }
  for (uint32_t i = 0; i < N; i++) H_TRUE(writes[i] >= 1);
  for (uint32_t i = 0; i < N; i++) ack_send(&h, conv[i], i + 1, 1, false);
  H_EQ(h.n_results, N);
  for (uint32_t i = 0; i < N; i++)
    for (uint32_t k = 0; k < writes[i]; k++) ack_send(&h, conv[i], i + 1, 1, true);
  H_EQ(h.n_errors, 0);
  H_EQ(h.n_results, N);
  /* Paid in full: a third answer to the first send is not owed. */
  h.quiet = true;
  ack_send(&h, conv[0], 1, 1, true);
  H_EQ(h.n_errors, 1);
  h_fini(&h);
}

static void t_send_deadline(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.ack_timeout_ms = 1000;
  cfg.tuning.send_deadline_ms = 5000;
  cfg.tuning.max_attempts = 100;
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  uint64_t t0 = h.now;
  H_EQ(h_send_text(&h, CONV_A, "x", 1), 0);
  h_run_until(&h, t0 + 4999);
  H_EQ(h.n_results, 0);
  h_run_until(&h, t0 + 5000);
  H_EQ(h.n_results, 1);
  H_EQ(h.results[0].status, PARLEY_ETIMEOUT);
  H_EQ(h.results[0].at, t0 + 5000);
  h_fini(&h);
}

static void t_conversation_order(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.ack_timeout_ms = 1000;
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  H_EQ(h_send_text(&h, CONV_A, "a1", 1), 0);
  H_EQ(h_send_text(&h, CONV_A, "a2", 2), 0);
  H_EQ(h_send_text(&h, CONV_B, "b1", 3), 0);
  /* a2 waits behind a1; b1 is pipelined. */
  expect_send(&h, CONV_A, 1);
  expect_send(&h, CONV_B, 3);
  h_expect_none(&h);
  ack_send(&h, CONV_B, 3, 1, false);
  /* a1 is lost: it is resent, and a2 still waits. */
  h_advance(&h, 1000);
  expect_send(&h, CONV_A, 1);
  h_expect_none(&h);
  ack_send(&h, CONV_A, 1, 1, false);
  expect_send(&h, CONV_A, 2);
  ack_send(&h, CONV_A, 2, 2, false);
  H_EQ(h.n_results, 3);
  H_EQ(h.results[1].seq, 1);
  H_EQ(h.results[2].seq, 2);
  H_EQ((uintptr_t)h.results[2].ud, 2);
  h_fini(&h);
}

static void t_backpressure(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.outbox_max = 3;
  h_init(&h, &cfg);
  for (uint32_t i = 0; i < 3; i++) H_EQ(h_send_text(&h, CONV_A, "x", i + 1), 0);
  H_EQ(h_send_text(&h, CONV_A, "x", 4), PARLEY_EBACKPRESSURE);
  h_fini(&h);
  /* The byte bound too. */
  cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.outbox_max_bytes = 300;
  h_init(&h, &cfg);
  int rc = 0;
  uint32_t n = 0;
  while ((rc = h_send_text(&h, CONV_A, "0123456789012345678901234567890123456789", ++n)) == 0) {
  }
  H_EQ(rc, PARLEY_EBACKPRESSURE);
  parley_client_stats st;
  pe_engine_stats(h.e, &st);
  H_TRUE(st.buffered_bytes <= 300);
  H_TRUE(n > 2);
  h_fini(&h);
}

/* ------------------------------------------------------------ receiving */

static void t_batch_ack(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.ack_batch_n = 3;
  cfg.tuning.ack_batch_ms = 50;
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  deliver1(&h, CONV_A, 1);
  deliver1(&h, CONV_B, 1);
  h_expect_none(&h);
  deliver1(&h, CONV_A, 2);
  /* Third event: one Ack frame with both conversations. */
  pw_frame *f = h_expect(&h, PARLEY__V1__FRAME__BODY_ACK);
  H_EQ(f->ack->n_entries, 2);
  for (size_t i = 0; i < 2; i++) {
    if (strcmp(f->ack->entries[i]->conversation, CONV_A) == 0)
      H_EQ(f->ack->entries[i]->up_to_seq, 2);
    else
      H_EQ(f->ack->entries[i]->up_to_seq, 1);
  }
  pw_frame_free(f);
  /* T: one event, flushed 50 ms later, not before. */
  deliver1(&h, CONV_A, 3);
  h_advance(&h, 49);
  h_expect_none(&h);
  h_advance(&h, 1);
  expect_ack(&h, CONV_A, 3);
  H_EQ(h.n_events, 4);
  /* Close flushes what is pending before closing. */
  deliver1(&h, CONV_A, 4);
  H_EQ(pe_engine_close(h.e, h.now, h.now + 1000), 0);
  expect_ack(&h, CONV_A, 4);
  int code;
  H_TRUE(pe_engine_should_close(h.e, &code));
  H_EQ(code, 1000);
  h_fini(&h);
}

static void t_manual_ack(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.manual_ack = true;
  cfg.tuning.ack_batch_n = 2;
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  deliver1(&h, CONV_A, 1);
  deliver1(&h, CONV_A, 2);
  h_advance(&h, 1000);
  h_expect_none(&h);
  H_EQ(pe_engine_ack(h.e, CONV_A, 3, h.now), PARLEY_EINVAL); /* not applied yet */
  H_EQ(pe_engine_ack(h.e, "nope", 1, h.now), PARLEY_ENOTFOUND);
  H_EQ(pe_engine_ack(h.e, CONV_A, 2, h.now), 0);
  h_advance(&h, 50);
  expect_ack(&h, CONV_A, 2);
  h_fini(&h);
}

static void t_duplicates(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.ack_batch_n = 2;
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  deliver1(&h, CONV_A, 1);
  deliver1(&h, CONV_A, 2);
  expect_ack(&h, CONV_A, 2);
  /* Both again (a redelivery): dropped, and acknowledged again. */
  deliver1(&h, CONV_A, 1);
  deliver1(&h, CONV_A, 2);
  H_EQ(h.n_events, 2);
  h_advance(&h, 50);
  expect_ack(&h, CONV_A, 2);
  h_expect_none(&h);
  parley_client_stats st;
  pe_engine_stats(h.e, &st);
  H_EQ(st.duplicates_dropped, 2);
  H_EQ(st.events_in, 2);
  h_fini(&h);
}

static void t_gap_fetch(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.gap_timeout_ms = 200;
  cfg.tuning.fetch_page = 3;
  cfg.tuning.ack_batch_n = 1000;
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  deliver1(&h, CONV_A, 1);
  deliver1(&h, CONV_A, 9); /* 2..8 missing */
  deliver1(&h, CONV_A, 8);
  H_EQ(h.n_events, 1);
  h_advance(&h, 50);
  expect_ack(&h, CONV_A, 1);
  h_advance(&h, 149);
  h_expect_none(&h);
  h_advance(&h, 1);
  pw_frame *f = h_expect(&h, PARLEY__V1__FRAME__BODY_FETCH);
  H_STREQ(f->fetch->conversation, CONV_A);
  H_EQ(f->fetch->from_seq, 2);
  H_EQ(f->fetch->to_seq, 7);
  H_EQ(f->fetch->limit, 3);
  uint64_t req = f->fetch->request_id;
  pw_frame_free(f);
  /* First page: 2..4, not the end; the next page starts at 5. */
  pw_frame *r = mk_fetch_result(req, CONV_A, false, 9);
  for (uint64_t s = 2; s <= 4; s++) {
    uint8_t id[16];
    h_id(id, (uint32_t)(1000000 + s));
    mk_fetch_add(r, CONV_A, s, "hi", id);
  }
  feed_free(&h, r, 0);
  H_EQ(h.n_events, 4);
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_FETCH);
  H_EQ(f->fetch->from_seq, 5);
  H_EQ(f->fetch->to_seq, 7);
  req = f->fetch->request_id;
  pw_frame_free(f);
  r = mk_fetch_result(req, CONV_A, true, 9);
  for (uint64_t s = 5; s <= 7; s++) {
    uint8_t id[16];
    h_id(id, (uint32_t)(1000000 + s));
    mk_fetch_add(r, CONV_A, s, "hi", id);
  }
  feed_free(&h, r, 0);
  /* 5..7 fetched, then 8 and 9 from the reorder buffer, in order. */
  H_EQ(h.n_events, 9);
  for (size_t i = 0; i < 9; i++) H_EQ(h.events[i].seq, i + 1);
  parley_client_stats st;
  pe_engine_stats(h.e, &st);
  H_EQ(st.gaps_fetched, 2);
  H_EQ(st.reorder_events, 0);
  H_EQ(st.reorder_bytes, 0);
  h_advance(&h, 50);
  expect_ack(&h, CONV_A, 9);
  h_expect_none(&h);
  h_fini(&h);
}

static void t_reorder_full(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.reorder_max = 2;
  cfg.tuning.gap_timeout_ms = 10000;
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  deliver1(&h, CONV_A, 1);
  deliver1(&h, CONV_A, 3);
  deliver1(&h, CONV_A, 4);
  h_expect_none(&h);
  /* Buffer full: 5 is dropped and the gap is fetched at once. */
  deliver1(&h, CONV_A, 5);
  pw_frame *f = h_expect(&h, PARLEY__V1__FRAME__BODY_FETCH);
  H_EQ(f->fetch->from_seq, 2);
  H_EQ(f->fetch->to_seq, 2);
  uint64_t req = f->fetch->request_id;
  pw_frame_free(f);
  parley_client_stats st;
  pe_engine_stats(h.e, &st);
  H_EQ(st.reorder_events, 2);
  pw_frame *r = mk_fetch_result(req, CONV_A, true, 5);
  uint8_t id[16];
  h_id(id, 1000002);
  mk_fetch_add(r, CONV_A, 2, "hi", id);
  feed_free(&h, r, 0);
  H_EQ(h.n_events, 4);
  /* 5 was dropped but is known: after the gap timer it is fetched too. */
  h_advance(&h, 10000);
  h_drain(&h);
  pe_engine_stats(h.e, &st);
  H_EQ(st.gaps_fetched, 2);
  h_fini(&h);
}

/* Thousands of early events in random order: the blocked reorder buffer
 * splits, keeps seq order across its blocks, drops repeats, and hands the
 * whole range over in order once the first seq arrives. */
static void t_reorder_large(void **state) {
  (void)state;
  enum { N = 3000 };
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.reorder_max = N;
  cfg.tuning.reorder_max_bytes = 4u << 20;
  cfg.tuning.gap_timeout_ms = 600000;
  h_init(&h, &cfg);
  h.quiet = true;
  h_connect(&h, 600000);
  uint64_t order[N];
  for (size_t i = 0; i < N; i++) order[i] = i + 2;
  uint64_t x = 20261128;
  for (size_t i = N - 1; i > 0; i--) { /* Fisher-Yates with a fixed xorshift seed */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    size_t j = (size_t)(x % (i + 1));
    uint64_t t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  for (size_t i = 0; i < N; i++) {
    deliver1(&h, CONV_A, order[i]);
    if (i % 7 == 0) deliver1(&h, CONV_A, order[i / 2]); /* a repeat of a held seq */
  }
  H_EQ(h.n_events, 0);
  parley_client_stats st;
  pe_engine_stats(h.e, &st);
  H_EQ(st.reorder_events, N);
  H_EQ(st.duplicates_dropped, (N + 6) / 7);
  h_drain(&h);
  deliver1(&h, CONV_A, 1);
  H_EQ(h.n_events, N + 1);
  for (size_t i = 0; i <= N; i++) H_EQ(h.events[i].seq, i + 1);
  pe_engine_stats(h.e, &st);
  H_EQ(st.reorder_events, 0);
  H_EQ(st.reorder_bytes, 0);
  h_fini(&h);
}

/* ------------------------------------------------------------ connection */

static void t_heartbeat(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  h_init(&h, &cfg);
  h.quiet = true;
  h_connect(&h, 1000); /* the gateway's interval wins over the default */
  uint64_t t0 = h.now;
  h_run_until(&h, t0 + 999);
  h_expect_none(&h);
  h_run_until(&h, t0 + 1000);
  pw_frame *f = h_expect(&h, PARLEY__V1__FRAME__BODY_PING);
  H_EQ(f->ping->nonce, 1);
  pw_frame_free(f);
  /* Something arrives at +1500: the peer is alive until +3500. */
  h_run_until(&h, t0 + 1500);
  feed_free(&h, mk_ping(5), 0);
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_PONG);
  pw_frame_free(f);
  h_run_until(&h, t0 + 3499);
  h_drain(&h);
  int code;
  H_TRUE(!pe_engine_should_close(h.e, &code));
  h_run_until(&h, t0 + 3500);
  H_TRUE(pe_engine_should_close(h.e, &code));
  H_EQ(code, 4009);
  H_TRUE(!pe_engine_ready(h.e));
  h_fini(&h);
}

static void t_reconnect_backoff(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.reconnect_min_ms = 100;
  cfg.tuning.reconnect_max_ms = 1000;
  h_init(&h, &cfg);
  h.quiet = true;
  /* Failed attempts: waits within [0, min(1000, 100*2^n)). */
  for (uint32_t n = 0; n < 8; n++) {
    H_EQ(pe_engine_on_connect(h.e, h.now), 0);
    h_drain(&h);
    pe_engine_on_disconnect(h.e, h.now);
    uint64_t w = 100ull << n;
    if (w > 1000) w = 1000;
    uint64_t at = pe_engine_reconnect_at(h.e);
    H_TRUE(at >= h.now && at < h.now + w);
    h.now = at;
  }
  /* retry_after is a floor under the next wait. */
  H_EQ(pe_engine_on_connect(h.e, h.now), 0);
  h_drain(&h);
  feed_free(&h, mk_error(PARLEY__V1__ERROR_CODE__ERROR_SHUTTING_DOWN, 5000, true), 0);
  H_EQ(h.errors[h.n_errors - 1], PARLEY_ESHUTDOWN);
  pe_engine_on_disconnect(h.e, h.now);
  H_TRUE(pe_engine_reconnect_at(h.e) >= h.now + 5000);
  /* A Welcome resets the backoff: the next wait is under 100 ms again. */
  h.now = pe_engine_reconnect_at(h.e);
  h_connect(&h, 600000);
  pe_engine_on_disconnect(h.e, h.now);
  H_TRUE(pe_engine_reconnect_at(h.e) < h.now + 100);
  parley_client_stats st;
  pe_engine_stats(h.e, &st);
  H_EQ(st.reconnects, 9);
  h_fini(&h);
}

/* An attempt that failed before the connection opened draws its wait from
 * the same backoff as a lost session (one backoff for the SDK): it grows
 * with every failure, a node not yet tried this round gets only a short
 * jitter, a Welcome resets it, and the waits follow from the seed alone. */
static void run_failed_attempts(uint64_t seed, uint64_t out[10]) {
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.reconnect_min_ms = 100;
  cfg.tuning.reconnect_max_ms = 1000;
  cfg.tuning.seed = seed;
  h_init(&h, &cfg);
  h.quiet = true;
  for (uint32_t n = 0; n < 8; n++) {
    pe_engine_on_connect_failed(h.e, h.now, false);
    uint64_t w = 100ull << n;
    if (w > 1000) w = 1000;
    uint64_t at = pe_engine_reconnect_at(h.e);
    H_TRUE(at >= h.now && at < h.now + w);
    out[n] = at - h.now;
    h.now = at + 1;
  }
  /* Another node of the list: below reconnect_min, and no growth. */
  pe_engine_on_connect_failed(h.e, h.now, true);
  out[8] = pe_engine_reconnect_at(h.e) - h.now;
  H_TRUE(out[8] < 100);
  /* A session that reached Welcome resets the count for both paths. */
  h.now = pe_engine_reconnect_at(h.e);
  h_connect(&h, 600000);
  pe_engine_on_disconnect(h.e, h.now);
  h.now = pe_engine_reconnect_at(h.e);
  pe_engine_on_connect_failed(h.e, h.now, false);
  out[9] = pe_engine_reconnect_at(h.e) - h.now;
  H_TRUE(out[9] < 200);
  h_fini(&h);
}

static void t_connect_failed_backoff(void **state) {
  (void)state;
  uint64_t a[10], b[10], c[10];
  run_failed_attempts(7, a);
  run_failed_attempts(7, b);
  run_failed_attempts(8, c);
  H_TRUE(memcmp(a, b, sizeof a) == 0);
  H_TRUE(memcmp(a, c, sizeof a) != 0);
}

/* The engine has no random source of its own: a send without an id takes
 * one from the caller's hook, or else from a generator seeded with
 * tuning.seed, so the same seed writes the same frames. */
static void rid_hook(void *ud, uint8_t out[PARLEY_MSG_ID_LEN]) {
  int *calls = ud;
  (*calls)++;
  memset(out, 0xAB, PARLEY_MSG_ID_LEN);
}

static void first_send_id(uint64_t seed, bool hook, int *calls, uint8_t id[16]) {
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.seed = seed;
  pe_hooks hooks = {.ud = calls, .random_id = hook ? rid_hook : NULL};
  pe_engine *e = pe_engine_new(&cfg, &hooks);
  H_TRUE(e != NULL);
  parley_content text = {.kind = PARLEY_CONTENT_TEXT, .text = "hi"};
  H_EQ(pe_engine_send(e, CONV_A, &text, NULL, NULL, 0, NULL, 1000), 0);
  /* Disconnected, the send waits in the outbox; connecting writes Hello,
   * and the Send follows the Welcome. */
  H_EQ(pe_engine_on_connect(e, 1000), 0);
  const uint8_t *data;
  size_t len;
  while (pe_engine_take_output(e, &data, &len)) {}
  pw_frame *w = mk_welcome(600000, 0);
  uint8_t *buf;
  size_t n;
  H_EQ(pw_encode(w, 0, &buf, &n), 0);
  h_frame_free(w);
  H_EQ(pe_engine_on_input(e, buf, n, 1000), 0);
  free(buf);
  bool found = false;
  while (pe_engine_take_output(e, &data, &len)) {
    pw_frame *f = NULL;
    const char *why = NULL;
    H_EQ(pw_decode(data, len, PW_DEFAULT_MAX_FRAME, &f, &why), 0);
    if (f->body_case == PARLEY__V1__FRAME__BODY_SEND) {
      H_EQ(f->send->client_msg_id.len, 16);
      memcpy(id, f->send->client_msg_id.data, 16);
      found = true;
    }
    pw_frame_free(f);
  }
  H_TRUE(found);
  pe_engine_free(e);
}

static void t_random_ids_from_caller(void **state) {
  (void)state;
  int calls = 0;
  uint8_t a[16], b[16], c[16], d[16], ab[16];
  first_send_id(5, false, &calls, a);
  first_send_id(5, false, &calls, b);
  first_send_id(6, false, &calls, c);
  H_TRUE(memcmp(a, b, 16) == 0);
  H_TRUE(memcmp(a, c, 16) != 0);
  H_EQ(calls, 0);
  first_send_id(5, true, &calls, d);
  memset(ab, 0xAB, 16);
  H_TRUE(memcmp(d, ab, 16) == 0);
  H_EQ(calls, 1);
}

static void t_resume(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.ack_timeout_ms = 1000;
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  for (uint64_t s = 1; s <= 3; s++) deliver1(&h, CONV_B, s);
  H_EQ(h_send_text(&h, CONV_A, "a1", 1), 0);
  H_EQ(h_send_text(&h, CONV_B, "b1", 2), 0);
  H_EQ(h_send_text(&h, CONV_A, "a2", 3), 0);
  h_drain(&h);
  pe_engine_on_disconnect(h.e, h.now);
  /* Sends made while down wait for the connection. */
  H_EQ(h_send_text(&h, CONV_B, "b2", 4), 0);
  h_expect_none(&h);
  h.now = pe_engine_reconnect_at(h.e);
  H_EQ(pe_engine_on_connect(h.e, h.now), 0);
  pw_frame *f = h_expect(&h, PARLEY__V1__FRAME__BODY_HELLO);
  H_EQ(f->hello->n_resume, 1);
  H_STREQ(f->hello->resume[0]->conversation, CONV_B);
  H_EQ(f->hello->resume[0]->after_seq, 3);
  pw_frame_free(f);
  h_expect_none(&h);
  pw_frame *w = mk_welcome(600000, 0);
  mk_welcome_cursor(w, CONV_B, 3);
  feed_free(&h, w, 0);
  /* The ACK watermark is said again, then the heads of each conversation
   * in the order they were sent. */
  expect_ack(&h, CONV_B, 3);
  expect_send(&h, CONV_A, 1);
  expect_send(&h, CONV_B, 2);
  h_expect_none(&h);
  ack_send(&h, CONV_A, 1, 1, false);
  expect_send(&h, CONV_A, 3);
  ack_send(&h, CONV_B, 2, 4, false);
  expect_send(&h, CONV_B, 4);
  /* Deliveries resume after the cursor. */
  deliver1(&h, CONV_B, 3);
  H_EQ(h.n_events, 3);
  deliver1(&h, CONV_B, 4);
  H_EQ(h.n_events, 4);
  h_fini(&h);
}

static void t_welcome_cursor_ahead(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  h_init(&h, &cfg);
  H_EQ(pe_engine_on_connect(h.e, h.now), 0);
  h_drain(&h);
  pw_frame *w = mk_welcome(600000, 0);
  mk_welcome_cursor(w, CONV_A, 10);
  feed_free(&h, w, 0);
  /* Seq 10 again (with a message id the engine never saw) is a plain
   * duplicate, not a contradiction, and does not spoil the frame. */
  pw_frame *d = mk_deliver();
  uint8_t id[16];
  h_id(id, 10);
  mk_deliver_add(d, CONV_A, 10, "old", id);
  h_id(id, 11);
  mk_deliver_add(d, CONV_A, 11, "new", id);
  feed_free(&h, d, 0);
  H_EQ(h.n_events, 1);
  H_EQ(h.events[0].seq, 11);
  H_EQ(h.n_errors, 0);
  h_fini(&h);
}

/* ------------------------------------------------------------ bots */

static void t_commit(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_BOT);
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  feed_free(&h, mk_assign(CONV_A, 3, 0), 0);
  feed_free(&h, mk_assign(CONV_B, 4, 5), 0);
  H_EQ(h.n_assign, 2);
  deliver1(&h, CONV_A, 1);
  deliver1(&h, CONV_B, 6);
  H_EQ(h.n_events, 2);
  h_advance(&h, 1000);
  h_expect_none(&h); /* bots never send Ack */
  H_EQ(pe_engine_ack(h.e, CONV_A, 1, h.now), PARLEY_ESTATE);
  /* A reply in A is pending; the commit of A waits for it, B's goes. */
  uint8_t rid[16];
  parley_msg_id_derive("bot-1", CONV_A, 1, 0, rid);
  parley_content txt = {.kind = PARLEY_CONTENT_TEXT, .text = "hello"};
  H_EQ(pe_engine_send(h.e, CONV_A, &txt, NULL, rid, 3, NULL, h.now), 0);
  pw_frame *f = h_expect(&h, PARLEY__V1__FRAME__BODY_SEND);
  H_EQ(f->send->epoch, 3);
  pw_frame_free(f);
  parley_state_entry st[] = {{.key = "step", .value = "\"done\""}, {.key = "old", .deleted = true}};
  const char *tags[] = {"faq"};
  parley_commit cm[] = {
      {.conversation = CONV_A, .epoch = 3, .ack_seq = 1, .state = st, .n_state = 2,
       .tags_add = tags, .n_tags_add = 1},
      {.conversation = CONV_B, .epoch = 4, .ack_seq = 6},
  };
  H_EQ(pe_engine_commit(h.e, cm, 2, h.now), 0);
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_COMMIT);
  H_EQ(f->commit->n_items, 1);
  H_STREQ(f->commit->items[0]->conversation, CONV_B);
  H_EQ(f->commit->items[0]->ack_seq, 6);
  uint64_t req_b = f->commit->request_id;
  pw_frame_free(f);
  h_expect_none(&h);
  /* The reply lands: now A's commit goes, with its state and tags. */
  feed_free(&h, mk_send_ack(rid, CONV_A, 2, false, 0), 0);
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_COMMIT);
  H_EQ(f->commit->n_items, 1);
  const Parley__V1__ConversationCommit *it = f->commit->items[0];
  H_STREQ(it->conversation, CONV_A);
  H_EQ(it->epoch, 3);
  H_EQ(it->ack_seq, 1);
  H_EQ(it->n_state, 2);
  H_STREQ(it->state[0]->key, "step");
  H_EQ(it->state[0]->value.len, 6);
  H_TRUE(it->state[1]->deleted);
  H_EQ(it->n_tags_add, 1);
  uint64_t req_a = f->commit->request_id;
  pw_frame_free(f);
  pw_frame *r = mk_commit_result(req_a);
  mk_commit_outcome(r, CONV_A, 1, 0, false);
  feed_free(&h, r, 0);
  r = mk_commit_result(req_b);
  mk_commit_outcome(r, CONV_B, 6, 0, true);
  feed_free(&h, r, 0);
  H_EQ(h.n_commits, 2);
  H_STREQ(h.commits[0].conv, CONV_A);
  H_EQ(h.commits[0].status, 0);
  H_TRUE(h.commits[1].duplicate);

  /* Several conversations without pending sends share one frame. */
  deliver1(&h, CONV_A, 2);
  deliver1(&h, CONV_B, 7);
  parley_commit cm2[] = {{.conversation = CONV_A, .epoch = 3, .ack_seq = 2},
                         {.conversation = CONV_B, .epoch = 4, .ack_seq = 7}};
  H_EQ(pe_engine_commit(h.e, cm2, 2, h.now), 0);
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_COMMIT);
  H_EQ(f->commit->n_items, 2);
  uint64_t req = f->commit->request_id;
  pw_frame_free(f);
  /* No answer: on reconnect the commits go again, in one frame. */
  pe_engine_on_disconnect(h.e, h.now);
  h.now = pe_engine_reconnect_at(h.e);
  H_EQ(pe_engine_on_connect(h.e, h.now), 0);
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_HELLO);
  H_EQ(f->hello->n_resume, 2); /* the committed watermarks */
  pw_frame_free(f);
  feed_free(&h, mk_welcome(600000, 0), 0);
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_COMMIT);
  H_EQ(f->commit->n_items, 2);
  H_TRUE(f->commit->request_id != req);
  req = f->commit->request_id;
  pw_frame_free(f);
  r = mk_commit_result(req);
  mk_commit_outcome(r, CONV_A, 2, PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH, false);
  mk_commit_outcome(r, CONV_B, 7, 0, false);
  feed_free(&h, r, 0);
  H_EQ(h.n_commits, 4);
  H_EQ(h.commits[2].status, PARLEY_ESTALE_EPOCH);
  H_EQ(h.commits[3].status, 0);

  /* Revoke: no more events of that conversation. */
  feed_free(&h, mk_revoke(CONV_B, 4), 0);
  H_EQ(h.n_revoke, 1);
  deliver1(&h, CONV_B, 8);
  H_EQ(h.n_events, 4);
  /* A new assignment starts after the committed watermark. */
  feed_free(&h, mk_assign(CONV_B, 5, 7), 0);
  deliver1(&h, CONV_B, 8);
  H_EQ(h.n_events, 5);
  h_fini(&h);
}

/* ------------------------------------------------------------ bad input */

/* A bot opens a conversation: Action.open with the customer (and the
 * locale when given), epoch 0, the caller's id, one result; the same id
 * answered as a duplicate completes it with the original seq. Only bots
 * may open; a bad customer name is refused before anything is written. */
static void t_open(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_BOT);
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  uint8_t id[16];
  h_id(id, 41);
  H_EQ(pe_engine_open(h.e, "px-new", "alice", NULL, id, NULL, h.now), 0);
  pw_frame *f = h_expect(&h, PARLEY__V1__FRAME__BODY_SEND);
  H_STREQ(f->send->conversation, "px-new");
  H_EQ(f->send->epoch, 0);
  H_EQ(f->send->body_case, PARLEY__V1__SEND__BODY_ACTION);
  H_EQ(f->send->action->body_case, PARLEY__V1__ACTION__BODY_OPEN);
  H_STREQ(f->send->action->open->customer, "alice");
  H_STREQ(f->send->action->open->locale, "");
  if (memcmp(f->send->client_msg_id.data, id, 16) != 0) H_FAIL("Send carries another id");
  pw_frame_free(f);
  feed_free(&h, mk_send_ack(id, "px-new", 1, true, 0), 0);
  H_EQ(h.n_results, 1);
  H_EQ(h.results[0].status, 0);
  H_EQ(h.results[0].seq, 1);
  H_TRUE(h.results[0].duplicate);
  h_id(id, 42);
  H_EQ(pe_engine_open(h.e, "px-fr", "bob", "fr", id, NULL, h.now), 0);
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_SEND);
  H_STREQ(f->send->action->open->locale, "fr");
  pw_frame_free(f);
  H_EQ(pe_engine_open(h.e, "px-bad", "no spaces", NULL, NULL, NULL, h.now), PARLEY_EINVAL);
  H_EQ(pe_engine_open(h.e, "px-bad", NULL, NULL, NULL, NULL, h.now), PARLEY_EINVAL);
  h_expect_none(&h);
  h_fini(&h);
  cfg = h_config(PARLEY_ROLE_CUSTOMER);
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  H_EQ(pe_engine_open(h.e, "px-new", "alice", NULL, NULL, NULL, h.now), PARLEY_EINVAL);
  h_expect_none(&h);
  h_fini(&h);
}

static void t_bad_input(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.max_frame_bytes = 4096;
  cfg.tuning.gap_timeout_ms = 100;
  h_init(&h, &cfg);
  h.quiet = true;
  h_connect(&h, 600000);
  size_t errs = 0;

  /* SendAck for an id never sent. */
  uint8_t id[16];
  h_id(id, 77);
  feed_free(&h, mk_send_ack(id, CONV_A, 1, false, 0), 0);
  H_EQ(h.n_errors, ++errs);
  H_EQ(h.errors[errs - 1], PARLEY_EPROTOCOL);
  /* A late duplicate SendAck of a completed send is silently ignored. */
  H_EQ(h_send_text(&h, CONV_A, "x", 1), 0);
  h_drain(&h);
  ack_send(&h, CONV_A, 1, 1, false);
  ack_send(&h, CONV_A, 1, 1, false);
  H_EQ(h.n_errors, errs);
  H_EQ(h.n_results, 1);

  /* Undecodable, oversized, empty. */
  const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
  H_EQ(h_feed_bytes(&h, junk, sizeof junk), PARLEY_EMALFORMED);
  uint8_t *big = calloc(1, 5000);
  H_EQ(h_feed_bytes(&h, big, 5000), PARLEY_ETOOBIG);
  free(big);
  H_EQ(h_feed_bytes(&h, junk, 0), PARLEY_EUNSUPPORTED);
  errs += 3;
  H_EQ(h.n_errors, errs);

  /* Seqs near 2^32 are ordinary; the 2^64 limit is refused. */
  pw_frame *w;
  deliver1(&h, CONV_B, 1);
  pe_engine_on_disconnect(h.e, h.now);
  H_EQ(pe_engine_on_connect(h.e, h.now), 0);
  h_drain(&h);
  w = mk_welcome(600000, 0);
  mk_welcome_cursor(w, CONV_B, 0xFFFFFFFFull);
  mk_welcome_cursor(w, "conv-c", UINT64_MAX - 1);
  mk_welcome_cursor(w, "conv-d", UINT64_MAX);
  feed_free(&h, w, 0);
  H_EQ(h.n_errors, ++errs); /* conv-d's cursor */
  h_drain(&h);
  deliver1(&h, CONV_B, 0x100000000ull);
  H_EQ(h.events[h.n_events - 1].seq, 0x100000000ull);
  pw_frame *d = mk_deliver();
  mk_deliver_add(d, "conv-c", UINT64_MAX, "end", NULL);
  feed_free(&h, d, PARLEY_EPROTOCOL);
  H_EQ(h.n_errors, ++errs);
  size_t before = h.n_events;
  d = mk_deliver();
  mk_deliver_add(d, "conv-e", UINT64_MAX - 1, "far", NULL);
  feed_free(&h, d, 0); /* held, far ahead */
  H_EQ(h.n_events, before);
  /* Seq 0 does not decode as a valid event. */
  d = mk_deliver();
  mk_deliver_add(d, CONV_B, 0, "zero", NULL);
  feed_free(&h, d, PARLEY_EINVAL);
  H_EQ(h.n_errors, ++errs);

  /* The gap before conv-e's far event is fetched; the gateway says the
   * conversation ends at 2, so the held event is bogus and dropped. */
  h_advance(&h, 100);
  pw_frame *f = h_take(&h);
  while (f && f->body_case != PARLEY__V1__FRAME__BODY_FETCH) {
    pw_frame_free(f);
    f = h_take(&h);
  }
  H_TRUE(f != NULL);
  H_STREQ(f->fetch->conversation, "conv-e");
  H_EQ(f->fetch->from_seq, 1);
  H_EQ(f->fetch->to_seq, UINT64_MAX - 2);
  uint64_t req = f->fetch->request_id;
  pw_frame_free(f);
  /* A FetchResult that is not consecutive is refused, state intact. */
  pw_frame *r = mk_fetch_result(req, "conv-e", true, 2);
  mk_fetch_add(r, "conv-e", 1, "a", NULL);
  mk_fetch_add(r, "conv-e", 3, "c", NULL);
  feed_free(&h, r, PARLEY_EPROTOCOL);
  H_EQ(h.n_errors, ++errs);
  H_EQ(h.n_events, before);
  parley_client_stats st;
  pe_engine_stats(h.e, &st);
  H_EQ(st.reorder_events, 1);
  /* Asked again after the gap timer; this time a proper answer. */
  h_advance(&h, 100);
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_FETCH);
  req = f->fetch->request_id;
  pw_frame_free(f);
  r = mk_fetch_result(req, "conv-e", true, 2);
  mk_fetch_add(r, "conv-e", 1, "a", NULL);
  mk_fetch_add(r, "conv-e", 2, "b", NULL);
  feed_free(&h, r, 0);
  H_EQ(h.n_events, before + 2);
  /* Once may be a race with the push of the held event: no verdict yet. */
  H_EQ(h.n_errors, errs);
  pe_engine_stats(h.e, &st);
  H_EQ(st.reorder_events, 1);
  h_advance(&h, 100);
  f = h_take(&h);
  while (f && f->body_case == PARLEY__V1__FRAME__BODY_ACK) {
    pw_frame_free(f);
    f = h_take(&h);
  }
  H_TRUE(f && f->body_case == PARLEY__V1__FRAME__BODY_FETCH);
  H_EQ(f->fetch->from_seq, 3);
  req = f->fetch->request_id;
  pw_frame_free(f);
  feed_free(&h, mk_fetch_result(req, "conv-e", true, 2), 0);
  H_EQ(h.n_errors, ++errs); /* twice: the held event was bogus */
  pe_engine_stats(h.e, &st);
  H_EQ(st.reorder_events, 0);
  h_advance(&h, 1000);
  f = h_take(&h);
  while (f) { /* only ACKs: nothing is fetched any more */
    H_EQ(f->body_case, PARLEY__V1__FRAME__BODY_ACK);
    pw_frame_free(f);
    f = h_take(&h);
  }

  /* Same seq as an applied event with another message id. */
  uint8_t id_a[16], id_b[16];
  h_id(id_a, 500);
  h_id(id_b, 501);
  d = mk_deliver();
  mk_deliver_add(d, "conv-f", 1, "one", id_a);
  feed_free(&h, d, 0);
  d = mk_deliver();
  mk_deliver_add(d, "conv-f", 1, "other", id_b);
  feed_free(&h, d, PARLEY_EPROTOCOL);
  H_EQ(h.n_errors, ++errs);
  /* A FetchResult for a request never made. */
  r = mk_fetch_result(999999, "conv-f", true, 1);
  feed_free(&h, r, PARLEY_EPROTOCOL);
  H_EQ(h.n_errors, ++errs);
  /* Frames only a client sends. */
  d = mk_ping(1);
  d->body_case = PARLEY__V1__FRAME__BODY_PING;
  feed_free(&h, d, 0);
  h_drain(&h);
  /* Commit results and revokes that match nothing. */
  r = mk_commit_result(424242);
  feed_free(&h, r, 0);
  H_EQ(h.n_errors, ++errs);
  feed_free(&h, mk_revoke(CONV_A, 1), 0);
  H_EQ(h.n_errors, ++errs);
  feed_free(&h, mk_assign(CONV_A, 1, 0), 0);
  H_EQ(h.n_errors, ++errs); /* Assign to a customer */
  /* After all that the engine still works. */
  deliver1(&h, "conv-f", 2);
  H_EQ(h.events[h.n_events - 1].seq, 2);
  H_EQ(h_send_text(&h, CONV_A, "y", 2), 0);
  h_drain(&h);
  ack_send(&h, CONV_A, 2, 2, false);
  H_EQ(h.n_results, 2);
  H_EQ(h.results[1].status, 0);
  h_fini(&h);
}

static void t_callback_reentry(harness *h, const parley_event *ev) {
  /* A reply from inside the event callback, like a bot handler would. */
  char text[32];
  snprintf(text, sizeof text, "re %llu", (unsigned long long)ev->seq);
  H_EQ(h_send_text(h, ev->conversation, text, (uint32_t)ev->seq), 0);
}

static void t_reentrant(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  h.on_event = t_callback_reentry;
  deliver1(&h, CONV_A, 2); /* held */
  deliver1(&h, CONV_A, 1); /* delivers 1 and 2; two replies queued */
  expect_send(&h, CONV_A, 1);
  h_expect_none(&h);
  ack_send(&h, CONV_A, 1, 3, false);
  expect_send(&h, CONV_A, 2);
  h_fini(&h);
}

/* The conversation is assigned to this connection again with a new epoch
 * (a reconnect, a gateway restart, a move away and back) while a reply of
 * its bot is still unanswered: the reply is written again with the new
 * epoch, and the STALE_EPOCH answers its old writes still owe are not
 * final, so the handler's commit never acknowledges an event whose reply
 * was refused. A handler that runs again with the same derived id gets the
 * original seq as a duplicate. A refusal with nothing owed stays final. */
static void t_same_id_rerun(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_BOT);
  cfg.tuning.ack_timeout_ms = 1000;
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  feed_free(&h, mk_assign(CONV_A, 1, 0), 0);
  deliver1(&h, CONV_A, 1);
  uint8_t id[16];
  parley_msg_id_derive("bot-1", CONV_A, 1, 0, id);
  parley_content txt = {.kind = PARLEY_CONTENT_TEXT, .text = "re"};
  H_EQ(pe_engine_send(h.e, CONV_A, &txt, NULL, id, 1, (void *)1, h.now), 0);
  pw_frame *f = h_expect(&h, PARLEY__V1__FRAME__BODY_SEND);
  pw_frame_free(f);
  h_run_until(&h, pe_engine_deadline(h.e)); /* no answer: written a second time */
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_SEND);
  H_EQ(f->send->epoch, 1);
  pw_frame_free(f);
  /* Assigned again with epoch 2: the reply goes again at once, restamped. */
  feed_free(&h, mk_assign(CONV_A, 2, 0), 0);
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_SEND);
  H_EQ(f->send->epoch, 2);
  H_TRUE(memcmp(f->send->client_msg_id.data, id, 16) == 0);
  pw_frame_free(f);
  /* The event comes again; the handler runs again with the same id. */
  deliver1(&h, CONV_A, 1);
  H_EQ(h.n_events, 2);
  H_EQ(pe_engine_send(h.e, CONV_A, &txt, NULL, id, 2, (void *)2, h.now), 0);
  h_expect_none(&h); /* queued behind the first */
  /* The two old writes are refused as stale: owed, not final. */
  feed_free(&h, mk_send_ack(id, CONV_A, 0, false, PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH), 0);
  feed_free(&h, mk_send_ack(id, CONV_A, 0, false, PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH), 0);
  H_EQ(h.n_results, 0);
  /* The restamped write is stored. */
  feed_free(&h, mk_send_ack(id, CONV_A, 2, false, 0), 0);
  H_EQ(h.n_results, 1);
  H_EQ(h.results[0].status, 0);
  H_EQ(h.results[0].seq, 2);
  H_TRUE(h.results[0].ud == (void *)1);
  /* The re-run's send: the gateway has it already. */
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_SEND);
  H_EQ(f->send->epoch, 2);
  pw_frame_free(f);
  feed_free(&h, mk_send_ack(id, CONV_A, 2, true, 0), 0);
  H_EQ(h.n_results, 2);
  H_EQ(h.results[1].status, 0);
  H_TRUE(h.results[1].duplicate);
  H_TRUE(h.results[1].ud == (void *)2);

  /* A refusal with nothing owed is final: the conversation moved on. */
  deliver1(&h, CONV_A, 2);
  uint8_t id3[16];
  parley_msg_id_derive("bot-1", CONV_A, 2, 0, id3);
  H_EQ(pe_engine_send(h.e, CONV_A, &txt, NULL, id3, 2, (void *)3, h.now), 0);
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_SEND);
  pw_frame_free(f);
  feed_free(&h, mk_send_ack(id3, CONV_A, 0, false, PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH), 0);
  H_EQ(h.n_results, 3);
  H_EQ(h.results[2].status, PARLEY_ESTALE_EPOCH);
  H_EQ(h.n_errors, 0);
  h_fini(&h);
}

/* The gateway repeats the refusal of a reply's write made before the
 * conversation came back with a new epoch: the copy cannot be told from a
 * refusal of the restamped write, so the reply is written again instead of
 * failing, and stored. */
static void t_restamp_repeated_refusal(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_BOT);
  cfg.tuning.ack_timeout_ms = 1000;
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  feed_free(&h, mk_assign(CONV_A, 1, 0), 0);
  deliver1(&h, CONV_A, 1);
  uint8_t id[16];
  parley_msg_id_derive("bot-1", CONV_A, 1, 0, id);
  parley_content txt = {.kind = PARLEY_CONTENT_TEXT, .text = "re"};
  H_EQ(pe_engine_send(h.e, CONV_A, &txt, NULL, id, 1, (void *)1, h.now), 0);
  pw_frame *f = h_expect(&h, PARLEY__V1__FRAME__BODY_SEND);
  pw_frame_free(f);
  feed_free(&h, mk_assign(CONV_A, 2, 0), 0);
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_SEND);
  H_EQ(f->send->epoch, 2);
  pw_frame_free(f);
  /* The first write's refusal, twice. */
  feed_free(&h, mk_send_ack(id, CONV_A, 0, false, PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH), 0);
  feed_free(&h, mk_send_ack(id, CONV_A, 0, false, PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH), 0);
  H_EQ(h.n_results, 0);
  /* Written again, with the new epoch, and stored. */
  h_run_until(&h, pe_engine_deadline(h.e));
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_SEND);
  H_EQ(f->send->epoch, 2);
  H_TRUE(memcmp(f->send->client_msg_id.data, id, 16) == 0);
  pw_frame_free(f);
  feed_free(&h, mk_send_ack(id, CONV_A, 2, false, 0), 0);
  H_EQ(h.n_results, 1);
  H_EQ(h.results[0].status, 0);
  H_EQ(h.results[0].seq, 2);
  /* A restamped send of a conversation that moved away (revoked) fails
   * on the refusal. */
  deliver1(&h, CONV_A, 2);
  uint8_t id2[16];
  parley_msg_id_derive("bot-1", CONV_A, 2, 0, id2);
  H_EQ(pe_engine_send(h.e, CONV_A, &txt, NULL, id2, 2, (void *)2, h.now), 0);
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_SEND);
  pw_frame_free(f);
  feed_free(&h, mk_assign(CONV_A, 3, 0), 0);
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_SEND);
  H_EQ(f->send->epoch, 3);
  pw_frame_free(f);
  feed_free(&h, mk_send_ack(id2, CONV_A, 0, false, PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH), 0);
  H_EQ(h.n_results, 1); /* owed by the first write */
  feed_free(&h, mk_revoke(CONV_A, 3), 0);
  feed_free(&h, mk_send_ack(id2, CONV_A, 0, false, PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH), 0);
  H_EQ(h.n_results, 2);
  H_EQ(h.results[1].status, PARLEY_ESTALE_EPOCH);
  h_fini(&h);
}

/* The backoff of a send starts over on a new connection: a send written
 * many times before a reconnect, whose answer the new connection loses,
 * goes again within one ACK timeout, not after up to retry_max_ms. */
static void t_backoff_per_connection(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.ack_timeout_ms = 1000;
  cfg.tuning.retry_max_ms = 30000;
  cfg.tuning.max_attempts = 100;
  cfg.tuning.send_deadline_ms = 3600000;
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  uint8_t id[16];
  h_id(id, 7);
  parley_content txt = {.kind = PARLEY_CONTENT_TEXT, .text = "hi"};
  H_EQ(pe_engine_send(h.e, CONV_A, &txt, NULL, id, 0, (void *)1, h.now), 0);
  for (int i = 0; i < 8; i++) {
    pw_frame *f = h_expect(&h, PARLEY__V1__FRAME__BODY_SEND);
    pw_frame_free(f);
    h_run_until(&h, pe_engine_deadline(h.e)); /* no answer: written again */
  }
  h_drain(&h);
  pe_engine_on_disconnect(h.e, h.now);
  h_advance(&h, 60000);
  h_connect(&h, 600000);
  pw_frame *f = h_expect(&h, PARLEY__V1__FRAME__BODY_SEND); /* written again on Welcome */
  pw_frame_free(f);
  uint64_t written = h.now;
  /* Its answer is lost: the next write comes within one ACK timeout. */
  h_run_until(&h, written + 1000);
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_SEND);
  pw_frame_free(f);
  feed_free(&h, mk_send_ack(id, CONV_A, 1, false, 0), 0);
  H_EQ(h.n_results, 1);
  H_EQ(h.results[0].status, 0);
  h_fini(&h);
}

/* Random and mutated frames never crash the engine or break it: after
 * each burst it still delivers and sends correctly. */
static void t_fuzz_input(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.reorder_max = 8;
  h_init(&h, &cfg);
  h.quiet = true;
  h_connect(&h, 600000);
  /* Valid frames of several types to mutate. */
  uint8_t *seeds[6];
  size_t seed_len[6];
  pw_frame *fr[6];
  uint8_t id[16];
  h_id(id, 1);
  fr[0] = mk_deliver();
  mk_deliver_add(fr[0], "fz", 3, "x", id);
  mk_deliver_add(fr[0], "fz", 2, "y", NULL);
  fr[1] = mk_send_ack(id, "fz", 9, true, 0);
  fr[2] = mk_fetch_result(1, "fz", false, 9);
  mk_fetch_add(fr[2], "fz", 1, "a", id);
  fr[3] = mk_welcome(1000, 4);
  mk_welcome_cursor(fr[3], "fz", 5);
  fr[4] = mk_commit_result(1);
  mk_commit_outcome(fr[4], "fz", 3, 0, false);
  fr[5] = mk_error(PARLEY__V1__ERROR_CODE__ERROR_BUSY, 10, false);
  for (int i = 0; i < 6; i++) {
    H_EQ(pw_encode(fr[i], 0, &seeds[i], &seed_len[i]), 0);
    h_frame_free(fr[i]);
  }
  uint64_t x = 99;
  uint8_t buf[512];
  int accepted = 0, refused = 0;
  for (int i = 0; i < 20000; i++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    int k = (int)((x >> 33) % 6);
    size_t n = seed_len[k] < sizeof buf ? seed_len[k] : sizeof buf;
    memcpy(buf, seeds[k], n);
    int flips = 1 + (int)((x >> 20) % 4);
    for (int j = 0; j < flips; j++) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      buf[(x >> 33) % n] ^= (uint8_t)(1u << ((x >> 24) % 8));
    }
    int rc = h_feed_bytes(&h, buf, n);
    if (rc == 0) accepted++;
    else refused++;
    h_drain(&h);
    h.now += 1;
    pe_engine_on_tick(h.e, h.now);
    if (!pe_engine_ready(h.e)) { /* a mutated frame may have closed it */
      pe_engine_on_disconnect(h.e, h.now);
      h.now = pe_engine_reconnect_at(h.e);
      h_connect(&h, 600000);
    }
  }
  for (int i = 0; i < 6; i++) free(seeds[i]);
  H_TRUE(accepted > 0 && refused > 0);
  printf("fuzz: 20000 mutated frames, %d accepted, %d refused, %zu peer errors, %zu events\n",
         accepted, refused, h.n_errors, h.n_events);
  /* Still sound: a fresh conversation delivers and a send completes. */
  size_t before = h.n_events, results = h.n_results;
  deliver1(&h, "after-fuzz", 1);
  H_EQ(h.n_events, before + 1);
  H_EQ(h_send_text(&h, "after-fuzz", "ok", 4242), 0);
  pw_frame *f = h_take(&h);
  while (f && f->body_case != PARLEY__V1__FRAME__BODY_SEND) {
    pw_frame_free(f);
    f = h_take(&h);
  }
  H_TRUE(f != NULL);
  pw_frame_free(f);
  ack_send(&h, "after-fuzz", 4242, 2, false);
  H_EQ(h.n_results, results + 1);
  H_EQ(h.results[h.n_results - 1].status, 0);
  h_fini(&h);
}

static void t_agent_queue(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_AGENT);
  h_init(&h, &cfg);
  H_EQ(pe_engine_queue(h.e, "billing", h.now), PARLEY_EDISCONNECTED);
  h_connect(&h, 600000);
  H_EQ(pe_engine_queue(h.e, "billing", h.now), 0);
  pw_frame *f = h_expect(&h, PARLEY__V1__FRAME__BODY_QUEUE_REQUEST);
  H_STREQ(f->queue_request->queue, "billing");
  H_TRUE(f->queue_request->request_id > 0);
  pw_frame_free(f);
  H_EQ(pe_engine_queue(h.e, NULL, h.now), 0); /* all watched queues */
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_QUEUE_REQUEST);
  H_STREQ(f->queue_request->queue, "");
  pw_frame_free(f);
  Parley__V1__QueueItem qi = PARLEY__V1__QUEUE_ITEM__INIT, *qip = &qi;
  qi.conversation = "c-1";
  qi.queue = "billing";
  Parley__V1__QueueResult qr = PARLEY__V1__QUEUE_RESULT__INIT;
  qr.request_id = 1;
  qr.n_items = 1;
  qr.items = &qip;
  pw_frame in = PARLEY__V1__FRAME__INIT;
  in.body_case = PARLEY__V1__FRAME__BODY_QUEUE_RESULT;
  in.queue_result = &qr;
  H_EQ(h_feed(&h, &in), 0);
  Parley__V1__QueueUpdate qu = PARLEY__V1__QUEUE_UPDATE__INIT;
  qu.item = &qi;
  qu.removed = true;
  in.body_case = PARLEY__V1__FRAME__BODY_QUEUE_UPDATE;
  in.queue_update = &qu;
  H_EQ(h_feed(&h, &in), 0);
  H_EQ(h.n_queue, 2);
  H_EQ(h.n_errors, 0);
  h_fini(&h);
}

static void t_commit_retry(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_BOT);
  cfg.tuning.ack_timeout_ms = 1000;
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  feed_free(&h, mk_assign(CONV_A, 1, 0), 0);
  deliver1(&h, CONV_A, 1);
  parley_commit cm = {.conversation = CONV_A, .epoch = 1, .ack_seq = 1};
  H_EQ(pe_engine_commit(h.e, &cm, 1, h.now), 0);
  pw_frame *f = h_expect(&h, PARLEY__V1__FRAME__BODY_COMMIT);
  uint64_t req1 = f->commit->request_id;
  pw_frame_free(f);
  /* No answer: the same item goes again in a new frame. */
  h_run_until(&h, pe_engine_deadline(h.e));
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_COMMIT);
  uint64_t req2 = f->commit->request_id;
  H_TRUE(req2 > req1);
  H_EQ(f->commit->items[0]->ack_seq, 1);
  pw_frame_free(f);
  /* The late answer to the first write completes it; the second answer
   * finds nothing left and is ignored. */
  pw_frame *r = mk_commit_result(req1);
  mk_commit_outcome(r, CONV_A, 1, 0, false);
  feed_free(&h, r, 0);
  r = mk_commit_result(req2);
  mk_commit_outcome(r, CONV_A, 1, 0, true);
  feed_free(&h, r, 0);
  H_EQ(h.n_commits, 1);
  H_EQ(h.commits[0].status, 0);
  H_EQ(h.n_errors, 0);
  /* A refused retryable outcome is written again. */
  deliver1(&h, CONV_A, 2);
  cm.ack_seq = 2;
  H_EQ(pe_engine_commit(h.e, &cm, 1, h.now), 0);
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_COMMIT);
  r = mk_commit_result(f->commit->request_id);
  pw_frame_free(f);
  mk_commit_outcome(r, CONV_A, 2, PARLEY__V1__ERROR_CODE__ERROR_INTERNAL, false);
  feed_free(&h, r, 0);
  H_EQ(h.n_commits, 1);
  h_run_until(&h, pe_engine_deadline(h.e));
  f = h_expect(&h, PARLEY__V1__FRAME__BODY_COMMIT);
  H_EQ(f->commit->items[0]->ack_seq, 2);
  pw_frame_free(f);
  parley_client_stats st;
  pe_engine_stats(h.e, &st);
  H_EQ(st.commits, 1);
  H_EQ(st.outbox_size, 1);
  h_fini(&h);
}

static void t_close_drain(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.ack_timeout_ms = 100000;
  h_init(&h, &cfg);
  h_connect(&h, 600000);
  H_EQ(h_send_text(&h, CONV_A, "a", 1), 0);
  H_EQ(h_send_text(&h, CONV_B, "b", 2), 0);
  h_drain(&h);
  H_EQ(pe_engine_close(h.e, h.now, h.now + 1000), 0);
  int code;
  H_TRUE(!pe_engine_should_close(h.e, &code));
  H_EQ(h_send_text(&h, CONV_A, "late", 3), PARLEY_ESHUTDOWN);
  ack_send(&h, CONV_A, 1, 1, false);
  H_TRUE(!pe_engine_should_close(h.e, &code));
  /* The deadline passes with b unanswered: it fails, then close. */
  h_run_until(&h, h.now + 1000);
  H_TRUE(pe_engine_should_close(h.e, &code));
  H_EQ(code, 1000);
  H_EQ(h.n_results, 2);
  H_EQ(h.results[1].status, PARLEY_ESHUTDOWN);
  pe_engine_on_disconnect(h.e, h.now);
  H_EQ(pe_engine_reconnect_at(h.e), UINT64_MAX);
  H_EQ(pe_engine_on_connect(h.e, h.now), PARLEY_ESHUTDOWN);
  h_fini(&h);
}

/* Resume cursors are kept to half the gateway's frame limit. */
static void t_hello_budget(void **state) {
  (void)state;
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  h_init(&h, &cfg);
  H_EQ(pe_engine_on_connect(h.e, h.now), 0);
  h_drain(&h);
  pw_frame *w = mk_welcome(600000, 0);
  w->welcome->max_frame_bytes = 1000;
  feed_free(&h, w, 0);
  char name[32];
  for (int i = 0; i < 100; i++) {
    snprintf(name, sizeof name, "c-%04d", i);
    deliver1(&h, name, 1);
  }
  h_drain(&h);
  pe_engine_on_disconnect(h.e, h.now);
  h.now = pe_engine_reconnect_at(h.e);
  H_EQ(pe_engine_on_connect(h.e, h.now), 0);
  const uint8_t *d;
  size_t n;
  H_TRUE(pe_engine_take_output(h.e, &d, &n));
  H_TRUE(n < 1000);
  pw_frame *f = NULL;
  const char *why;
  H_EQ(pw_decode(d, n, 0, &f, &why), 0);
  H_EQ(f->body_case, PARLEY__V1__FRAME__BODY_HELLO);
  H_TRUE(f->hello->n_resume > 10 && f->hello->n_resume < 100);
  for (size_t i = 0; i < f->hello->n_resume; i++) H_EQ(f->hello->resume[i]->after_seq, 1);
  pw_frame_free(f);
  h_fini(&h);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(t_handshake),
      cmocka_unit_test(t_handshake_timeout),
      cmocka_unit_test(t_send_ack),
      cmocka_unit_test(t_send_errors),
      cmocka_unit_test(t_retry_backoff),
      cmocka_unit_test(t_send_deadline),
      cmocka_unit_test(t_conversation_order),
      cmocka_unit_test(t_backpressure),
      cmocka_unit_test(t_batch_ack),
      cmocka_unit_test(t_manual_ack),
      cmocka_unit_test(t_duplicates),
      cmocka_unit_test(t_gap_fetch),
      cmocka_unit_test(t_reorder_full),
      cmocka_unit_test(t_reorder_large),
      cmocka_unit_test(t_heartbeat),
      cmocka_unit_test(t_reconnect_backoff),
      cmocka_unit_test(t_connect_failed_backoff),
      cmocka_unit_test(t_random_ids_from_caller),
      cmocka_unit_test(t_resume),
      cmocka_unit_test(t_welcome_cursor_ahead),
      cmocka_unit_test(t_commit),
      cmocka_unit_test(t_open),
      cmocka_unit_test(t_bad_input),
      cmocka_unit_test(t_reentrant),
      cmocka_unit_test(t_same_id_rerun),
      cmocka_unit_test(t_late_answers_many),
      cmocka_unit_test(t_restamp_repeated_refusal),
      cmocka_unit_test(t_backoff_per_connection),
      cmocka_unit_test(t_fuzz_input),
      cmocka_unit_test(t_agent_queue),
      cmocka_unit_test(t_commit_retry),
      cmocka_unit_test(t_close_drain),
      cmocka_unit_test(t_hello_budget),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
