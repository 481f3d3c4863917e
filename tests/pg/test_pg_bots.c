/* Bot placement across three gateway nodes over one PostgreSQL database,
 * in this process (the gateway test harness, each node on its own thread
 * and port, the same schema):
 *
 *   - a conversation opened on node 1, where no bot connection is, is
 *     assigned to the bot connected to node 2 (the request goes through
 *     the database's NOTIFY), and the bot's reply reaches the customer on
 *     node 1; one opened on node 3 too;
 *   - a second connection of the bot joining node 3 does not take them
 *     (no Assign to it, no Revoke to the first), and a customer message
 *     written on node 3 reaches the bot on node 2;
 *   - the bot's connection on node 2 closes: its conversations move to the
 *     bot's other connection (node 3) with a new epoch; the bot reconnecting
 *     on node 1 does not take them back, and its old epoch is refused;
 *   - node 3 stops: the bot on node 1 takes its conversations over;
 *   - the only bot connection moves from node 1 to node 2 and keeps its
 *     conversations (Assigns with a new epoch and the committed ack_seq).
 *
 * Run through with_pg, which starts the server and sets PARLEY_TEST_PG_URL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <parley/client.h>

#include "gwharness.h"

#define E(x) PARLEY__V1__ERROR_CODE__ERROR_##x

typedef struct three {
  char *dir;
  gwh *h[3];
} three;

static int setup(void **state) {
  if (!getenv("PARLEY_TEST_PG_URL")) {
    fprintf(stderr, "test_pg_bots: run it through with_pg (PARLEY_TEST_PG_URL is not set)\n");
    return -1;
  }
  three *t = calloc(1, sizeof *t);
  t->dir = gwh_tmpdir();
  /* The same data_dir: one PostgreSQL schema, one log. The test's bots
   * stay silent for seconds while another is watched: a long heartbeat
   * keeps them from being dropped as dead meanwhile. */
  for (int i = 0; i < 3; i++)
    if (!(t->h[i] = gwh_start(t->dir, "  ack_timeout: 400ms\n  heartbeat: 30s\n  window: 64",
                              NULL)))
      return -1;
  *state = t;
  return 0;
}

static int teardown(void **state) {
  three *t = *state;
  for (int i = 0; i < 3; i++)
    if (t->h[i]) gwh_stop(t->h[i]);
  gwh_rmdir(t->dir);
  free(t);
  return 0;
}

static uint64_t send_acked(wsc *c, const char *conv, uint32_t id, const char *text,
                           uint64_t epoch, int *code) {
  for (int waited = 0; waited < 6000; waited += 500) {
    assert_int_equal(gwh_send_text(c, conv, id, text, epoch), 0);
    pw_frame *a = gwh_wait_ack(c, id, 500);
    if (!a) continue;
    uint64_t seq = a->send_ack->error ? 0 : a->send_ack->seq;
    int err = (int)a->send_ack->error;
    pw_frame_free(a);
    if (code) *code = err;
    if (!err || code) return seq;
  }
  return 0;
}

/* Waits for the Assigns of the n conversations (in any order); their
 * epochs and acked seqs land in epoch[] and acked[]. False on timeout. */
static bool wait_assigns(wsc *bot, const char *const *convs, int n, uint64_t *epoch,
                         uint64_t *acked, int timeout_ms) {
  int got = 0;
  bool seen[8] = {false};
  while (got < n) {
    pw_frame *f = gwh_wait(bot, PARLEY__V1__FRAME__BODY_ASSIGN, timeout_ms);
    if (!f) return false;
    for (int i = 0; i < n; i++) {
      if (!seen[i] && !strcmp(f->assign->conversation, convs[i])) {
        seen[i] = true;
        epoch[i] = f->assign->epoch;
        if (acked) acked[i] = f->assign->acked_seq;
        got++;
      }
    }
    pw_frame_free(f);
  }
  return true;
}

static void test_bots_across_three_nodes(void **state) {
  three *t = *state;
  const char *convs[2] = {"c-n1", "c-n3"};
  uint64_t ep[2] = {0}, ep2[2] = {0}, ep3[2] = {0}, ep4[2] = {0}, acked[2] = {0};

  /* The bot on node 2 only; customers on nodes 1 and 3. */
  wsc *bot = gwh_login(t->h[1], "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  wsc *carol = gwh_login(t->h[0], "carol", R_CUSTOMER, "carol-token", "phone", NULL, NULL);
  char dave_token[65];
  assert_int_equal(gwh_customer_token("dave", dave_token), 0);
  wsc *dave = gwh_login(t->h[2], "dave", R_CUSTOMER, dave_token, "phone", NULL, NULL);
  assert_non_null(bot);
  assert_non_null(carol);
  assert_non_null(dave);
  uint64_t s1 = send_acked(carol, "c-n1", 1, "hello from node 1", 0, NULL);
  assert_int_not_equal(s1, 0);
  uint64_t s3 = send_acked(dave, "c-n3", 1, "hello from node 3", 0, NULL);
  assert_int_not_equal(s3, 0);
  /* Placed on node 2's bot through the database. */
  assert_true(wait_assigns(bot, convs, 2, ep, NULL, 5000));
  /* Its reply, with the epoch it was given, reaches carol on node 1. */
  uint64_t r1 = send_acked(bot, "c-n1", 100, "hi carol", ep[0], NULL);
  assert_int_equal(r1, s1 + 1);
  uint64_t seqs[32];
  int n = gwh_collect(carol, "c-n1", r1, 5000, seqs, NULL, 32);
  assert_true(n >= 1);
  assert_int_equal(seqs[n - 1], r1);
  pw_frame *cr = gwh_commit(bot, "c-n1", ep[0], r1, NULL, NULL, NULL, 1);
  assert_non_null(cr);
  assert_int_equal(cr->commit_result->outcomes[0]->error, 0);
  pw_frame_free(cr);

  /* A second connection of the bot joins node 3: it takes nothing, and
   * the first is not revoked. */
  wsc *bot2 = gwh_login(t->h[2], "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  assert_non_null(bot2);
  pw_frame *f = gwh_wait(bot2, PARLEY__V1__FRAME__BODY_ASSIGN, 2500);
  if (f) fail_msg("node 3's bot took %s", f->assign->conversation);
  /* A customer message on node 3 reaches the bot that holds it, on node 2. */
  uint64_t s4 = send_acked(dave, "c-n3", 2, "still there?", 0, NULL);
  assert_int_equal(s4, s3 + 1);
  n = gwh_collect(bot, "c-n3", s4, 5000, seqs, NULL, 32);
  assert_true(n >= 1);
  assert_int_equal(seqs[n - 1], s4);
  /* gwh_collect dropped the frames before it: a Revoke among them would
   * show as a stale epoch now. */
  uint64_t r2 = send_acked(bot, "c-n3", 101, "yes", ep[1], NULL);
  assert_int_equal(r2, s4 + 1);
  f = gwh_wait(bot2, PARLEY__V1__FRAME__BODY_ASSIGN, 300);
  assert_null(f);

  /* The connection on node 2 closes: the bot's other connection, on
   * node 3, gets both, each with a new epoch. */
  wsc_close(bot, 1000);
  assert_true(wait_assigns(bot2, convs, 2, ep2, NULL, 5000));
  assert_true(ep2[0] > ep[0]);
  assert_true(ep2[1] > ep[1]);
  /* The bot reconnects on node 1: it does not take them back. */
  wsc *bot1 = gwh_login(t->h[0], "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  assert_non_null(bot1);
  f = gwh_wait(bot1, PARLEY__V1__FRAME__BODY_ASSIGN, 2500);
  if (f) fail_msg("the reconnected bot took %s", f->assign->conversation);
  /* The old epoch is refused on any node. */
  int code = 0;
  send_acked(bot1, "c-n1", 102, "old epoch", ep[0], &code);
  assert_int_equal(code, E(STALE_EPOCH));
  uint64_t r3 = send_acked(bot2, "c-n1", 103, "from node 3", ep2[0], NULL);
  assert_int_equal(r3, r1 + 1);

  /* Node 3 stops: the bot on node 1 takes its conversations over. */
  wsc_close(bot2, 1000);
  wsc_close(dave, 1000);
  gwh_stop(t->h[2]);
  t->h[2] = NULL;
  assert_true(wait_assigns(bot1, convs, 2, ep3, NULL, 8000));
  assert_true(ep3[0] > ep2[0]);
  assert_true(ep3[1] > ep2[1]);
  uint64_t r4 = send_acked(bot1, "c-n1", 104, "from node 1", ep3[0], NULL);
  assert_int_equal(r4, r3 + 1);

  /* The only bot connection moves from node 1 to node 2 and keeps its
   * conversations, with what it committed. */
  wsc_close(bot1, 1000);
  wsc *bot3 = gwh_login(t->h[1], "faqbot", R_BOT, "bot-token", NULL, NULL, NULL);
  assert_non_null(bot3);
  assert_true(wait_assigns(bot3, convs, 2, ep4, acked, 8000));
  assert_true(ep4[0] > ep3[0]);
  assert_true(ep4[1] > ep3[1]);
  assert_int_equal(acked[0], r1);
  uint64_t r5 = send_acked(bot3, "c-n1", 105, "from node 2 again", ep4[0], NULL);
  assert_int_equal(r5, r4 + 1);
  /* Carol, on node 1, is handed what the bot wrote on nodes 3, 1 and 2,
   * in seq order (what she did not acknowledge in time comes again,
   * flagged redelivered, before it). */
  uint64_t got[256];
  n = gwh_collect(carol, "c-n1", r5, 8000, got, NULL, 256);
  int at[3] = {-1, -1, -1};
  for (int i = 0; i < n; i++)
    for (int k = 0; k < 3; k++)
      if (at[k] < 0 && got[i] == (k == 0 ? r3 : k == 1 ? r4 : r5)) at[k] = i;
  assert_true(at[0] >= 0 && at[1] > at[0] && at[2] > at[1]);
  printf("bots across three nodes: epochs c-n1 %llu -> %llu -> %llu -> %llu, "
         "c-n3 %llu -> %llu -> %llu -> %llu, log of c-n1 1..%llu\n",
         (unsigned long long)ep[0], (unsigned long long)ep2[0], (unsigned long long)ep3[0],
         (unsigned long long)ep4[0], (unsigned long long)ep[1], (unsigned long long)ep2[1],
         (unsigned long long)ep3[1], (unsigned long long)ep4[1], (unsigned long long)r5);
  wsc_close(bot3, 1000);
  wsc_close(carol, 1000);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_bots_across_three_nodes, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
