/* Memory accounting of the engine under load: 10,000 conversations, each
 * with early events held in the reorder buffer and sends pending. The
 * engine's buffered-bytes gauge must stay within the configured limits the
 * whole time and return to 0 once everything is delivered and acked. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <time.h>

#include <cmocka.h>

#include "harness.h"

#define NCONV 10000
#define REORDER_BYTES (256u * 1024u)
#define OUTBOX_BYTES ((size_t)1024 * 1024)

static void conv_name(char *out, size_t n, int i) { snprintf(out, n, "mem-%05d", i); }

static uint64_t peak_buffered;
static uint64_t peak_reorder;

static void check_limits(harness *h, size_t out_pending) {
  parley_client_stats st;
  pe_engine_stats(h->e, &st);
  if (st.reorder_bytes > REORDER_BYTES)
    H_FAIL("reorder bytes %llu above the limit %u", (unsigned long long)st.reorder_bytes,
           REORDER_BYTES);
  /* Held events, pending sends and the frames not yet taken. */
  if (st.buffered_bytes > REORDER_BYTES + OUTBOX_BYTES + out_pending)
    H_FAIL("buffered bytes %llu above the limits", (unsigned long long)st.buffered_bytes);
  if (st.buffered_bytes > peak_buffered) peak_buffered = st.buffered_bytes;
  if (st.reorder_bytes > peak_reorder) peak_reorder = st.reorder_bytes;
}

/* Takes every output frame, answering Fetches from the "gateway" stream
 * (each conversation has events 1..3) and ACKing Sends. */
static size_t serve(harness *h, size_t *fetches, size_t *sends) {
  size_t taken = 0;
  pw_frame *f;
  pw_frame **replies = NULL;
  size_t nrep = 0, caprep = 0;
  while ((f = h_take(h))) {
    taken++;
    pw_frame *r = NULL;
    if (f->body_case == PARLEY__V1__FRAME__BODY_FETCH) {
      (*fetches)++;
      const Parley__V1__Fetch *fe = f->fetch;
      uint64_t to = fe->to_seq && fe->to_seq < 3 ? fe->to_seq : 3;
      r = mk_fetch_result(fe->request_id, fe->conversation, true, 3);
      for (uint64_t s = fe->from_seq; s <= to; s++) {
        uint8_t id[16];
        h_id(id, (uint32_t)s);
        mk_fetch_add(r, fe->conversation, s, "payload payload payload", id);
      }
    } else if (f->body_case == PARLEY__V1__FRAME__BODY_SEND) {
      (*sends)++;
      r = mk_send_ack(f->send->client_msg_id.data, f->send->conversation, 4, false, 0);
    }
    if (r) {
      if (nrep == caprep) {
        caprep = caprep ? caprep * 2 : 256;
        replies = realloc(replies, caprep * sizeof *replies);
      }
      replies[nrep++] = r;
    }
    pw_frame_free(f);
  }
  for (size_t i = 0; i < nrep; i++) {
    H_EQ(h_feed(h, replies[i]), 0);
    h_frame_free(replies[i]);
    check_limits(h, 0);
  }
  free(replies);
  return taken;
}

static void t_many_conversations(void **state) {
  (void)state;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  harness h;
  pe_config cfg = h_config(PARLEY_ROLE_CUSTOMER);
  cfg.tuning.reorder_max = 4;
  cfg.tuning.reorder_max_bytes = REORDER_BYTES;
  cfg.tuning.outbox_max = 3 * NCONV;
  cfg.tuning.gap_timeout_ms = 3600000; /* only a full buffer fetches here */
  cfg.tuning.ack_timeout_ms = 3600000;
  cfg.tuning.send_deadline_ms = 4000000;
  cfg.tuning.ack_batch_n = 512;
  cfg.outbox_max_bytes = OUTBOX_BYTES;
  h_init(&h, &cfg);
  h_connect(&h, 3600000);
  char name[32];

  /* Two sends per conversation: one on the wire, one queued behind it,
   * until the byte limit says stop. */
  size_t accepted = 0, refused = 0, written = 0;
  for (int i = 0; i < NCONV; i++) {
    conv_name(name, sizeof name, i);
    for (int k = 0; k < 2; k++) {
      int rc = h_send_text(&h, name, "a reply of moderate length, to fill the outbox",
                           (uint32_t)(i * 2 + k + 1));
      if (rc == 0) accepted++;
      else if (rc == PARLEY_EBACKPRESSURE) refused++;
      else H_FAIL("send: %s", parley_errname(rc));
    }
    /* The transport takes the Send frames; they are lost on the wire, so
     * the outbox keeps them. */
    written += h_drain(&h);
    check_limits(&h, 0);
  }
  parley_client_stats st;
  pe_engine_stats(h.e, &st);
  H_TRUE(refused > 0); /* the byte limit was reached */
  H_EQ(st.outbox_size, accepted);

  /* Early events 2 and 3 for every conversation: held until the byte
   * limit, then dropped with a fetch instead. */
  for (int i = 0; i < NCONV; i++) {
    conv_name(name, sizeof name, i);
    pw_frame *d = mk_deliver();
    for (uint64_t s = 2; s <= 3; s++) {
      uint8_t id[16];
      h_id(id, (uint32_t)s);
      mk_deliver_add(d, name, s, "payload payload payload", id);
    }
    H_EQ(h_feed(&h, d), 0);
    h_frame_free(d);
    h_drain(&h); /* Fetches lost on the wire too */
    check_limits(&h, 0);
  }
  pe_engine_stats(h.e, &st);
  H_TRUE(st.reorder_events > 0);
  H_TRUE(st.reorder_bytes <= REORDER_BYTES);
  H_TRUE(peak_reorder > REORDER_BYTES / 2); /* the buffer was really used */
  size_t held_events = st.reorder_events;

  /* The connection drops with all of that pending, and comes back: every
   * head send is written again, then everything is served until quiet. */
  pe_engine_on_disconnect(h.e, h.now);
  check_limits(&h, 0);
  h.now = pe_engine_reconnect_at(h.e);
  h_connect(&h, 3600000);
  check_limits(&h, 4 * 1024 * 1024);
  size_t fetches = 0, sends = 0;
  for (int round = 0; round < 100; round++) {
    size_t n = serve(&h, &fetches, &sends);
    if (n == 0) break;
  }
  /* Conversations whose events were held still wait for seq 1: deliver it. */
  for (int i = 0; i < NCONV; i++) {
    conv_name(name, sizeof name, i);
    pw_frame *d = mk_deliver();
    uint8_t id[16];
    h_id(id, 1);
    mk_deliver_add(d, name, 1, "payload payload payload", id);
    H_EQ(h_feed(&h, d), 0);
    h_frame_free(d);
    check_limits(&h, 64 * 1024);
  }
  for (int round = 0; round < 100; round++) {
    size_t n = serve(&h, &fetches, &sends);
    if (n == 0) break;
  }
  /* The sends refused for backpressure go now that the outbox drained. */
  size_t late = 0;
  for (int i = 0; i < NCONV && late < refused; i++) {
    conv_name(name, sizeof name, i);
    if (h_send_text(&h, name, "late", (uint32_t)(3 * NCONV + i)) == 0) late++;
  }
  for (int round = 0; round < 100; round++) {
    size_t n = serve(&h, &fetches, &sends);
    if (n == 0) break;
  }
  /* Gaps left by dropped events are fetched when their timers fire. */
  h_advance(&h, 3600000);
  for (int round = 0; round < 100; round++) {
    size_t n = serve(&h, &fetches, &sends);
    if (n == 0) break;
  }
  H_TRUE(pe_engine_ready(h.e));
  h_drain(&h); /* the last ACKs */

  pe_engine_stats(h.e, &st);
  H_EQ(h.n_events, 3 * NCONV);
  H_EQ(h.n_results, accepted + late);
  for (size_t i = 0; i < h.n_results; i++) H_EQ(h.results[i].status, 0);
  H_EQ(st.reorder_events, 0);
  H_EQ(st.reorder_bytes, 0);
  H_EQ(st.outbox_size, 0);
  H_EQ(st.buffered_bytes, 0);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf("memory: %d conversations, %zu sends accepted, %zu refused (backpressure), %zu late; "
         "%zu Send frames first written; %zu events held at peak (%llu bytes, limit %u); "
         "peak buffered %llu bytes (limits %u + %zu); %zu fetches; %.2f s\n",
         NCONV, accepted, refused, late, written, held_events, (unsigned long long)peak_reorder,
         REORDER_BYTES, (unsigned long long)peak_buffered, REORDER_BYTES, OUTBOX_BYTES, fetches,
         secs);
  h_fini(&h);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(t_many_conversations)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
