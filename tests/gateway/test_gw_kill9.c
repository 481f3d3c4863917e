/* kill -9 at arbitrary moments loses no acknowledged event.
 *
 * The real `parley gateway` runs as a child process. A customer pipelines
 * sends over several conversations (one unanswered send per conversation,
 * as the protocol asks) while the gateway is killed with SIGKILL every few
 * acknowledgements and restarted on the same data directory. Unanswered
 * sends are written again after each restart with the same ids. At the end
 * every conversation is fetched and checked: each acknowledged id is
 * stored exactly once at its acknowledged seq, nothing is stored twice,
 * seqs have no gaps and each conversation holds its messages in the order
 * they were sent. KILL_CYCLES and KILL_MESSAGES size the run. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include <cmocka.h>

#include <parley/error.h>

#include "gwharness.h"
#include "proc.h"

#ifndef KILL_CYCLES
#define KILL_CYCLES 3
#endif
#ifndef KILL_MESSAGES
#define KILL_MESSAGES 60
#endif
#ifndef KILL_DURABILITY
#define KILL_DURABILITY "normal"
#endif
#define CONVS 4
#define PER_CONV (KILL_MESSAGES / CONVS)

static const char yaml[] =
    "listen: 127.0.0.1\n"
    "durability: " KILL_DURABILITY "\n"
    "bot: faqbot\n"
    "principals:\n"
    "  - {name: faqbot, role: bot, token: bot-token}\n"
    "  - {name: carol, role: customer, token: carol-token}\n"
    "limits:\n"
    "  ack_timeout: 60s\n"
    "  heartbeat: 30s\n";

typedef struct conv_state {
  char id[16];
  uint32_t next;       /* next message number to send, 1-based */
  uint32_t in_flight;  /* message number on the wire, 0 if none */
  uint64_t acked[PER_CONV + 1]; /* message number -> acknowledged seq */
} conv_state;

static uint32_t msg_number(uint32_t conv, uint32_t n) { return conv * 100000u + n; }

static void send_msg(wsc *c, conv_state *cs, uint32_t conv, uint32_t n) {
  char text[32];
  snprintf(text, sizeof text, "m%u", n);
  gwh_send_text(c, cs->id, msg_number(conv, n), text, 0);
  cs->in_flight = n;
}

static wsc *login(int port) {
  for (int i = 0; i < 50; i++) {
    wsc *c = wsc_connect("127.0.0.1", port, "Bearer carol-token", 2000);
    if (c) {
      Parley__V1__Hello he = PARLEY__V1__HELLO__INIT;
      he.min_version = 1;
      he.max_version = 1;
      he.principal = "carol";
      he.role = R_CUSTOMER;
      he.device = "phone";
      pw_frame f = PARLEY__V1__FRAME__INIT;
      f.body_case = PARLEY__V1__FRAME__BODY_HELLO;
      f.hello = &he;
      wsc_send_frame(c, &f);
      pw_frame *w = gwh_wait(c, PARLEY__V1__FRAME__BODY_WELCOME, 3000);
      if (w) {
        pw_frame_free(w);
        return c;
      }
      wsc_abort(c);
    }
    struct timespec ts = {0, 50 * 1000000L};
    nanosleep(&ts, NULL);
  }
  return NULL;
}

static void verify(wsc *c, conv_state *cs) {
  uint64_t next = 1;
  uint32_t last_n = 0;
  uint32_t seen[PER_CONV + 1] = {0};
  for (int page = 0; page < 1000; page++) {
    Parley__V1__Fetch fe = PARLEY__V1__FETCH__INIT;
    fe.request_id = (uint64_t)page + 1;
    fe.conversation = cs->id;
    fe.from_seq = next;
    fe.limit = 100;
    pw_frame f = PARLEY__V1__FRAME__INIT;
    f.body_case = PARLEY__V1__FRAME__BODY_FETCH;
    f.fetch = &fe;
    assert_int_equal(wsc_send_frame(c, &f), 0);
    pw_frame *r = gwh_wait(c, PARLEY__V1__FRAME__BODY_FETCH_RESULT, 5000);
    assert_non_null(r);
    Parley__V1__FetchResult *fr = r->fetch_result;
    assert_int_equal(fr->error, 0);
    for (size_t i = 0; i < fr->n_events; i++) {
      Parley__V1__Event *ev = fr->events[i];
      assert_int_equal(ev->seq, next); /* no gaps */
      next++;
      if (ev->kind != PARLEY__V1__EVENT_KIND__EVENT_MESSAGE) continue;
      assert_int_equal(ev->client_msg_id.len, 16);
      const uint8_t *id = ev->client_msg_id.data;
      uint32_t num = ((uint32_t)id[12] << 24) | ((uint32_t)id[13] << 16) |
                     ((uint32_t)id[14] << 8) | id[15];
      uint32_t n = num % 100000u;
      assert_true(n >= 1 && n <= PER_CONV);
      assert_int_equal(seen[n], 0); /* stored once */
      seen[n] = 1;
      assert_true(n > last_n); /* sender order */
      last_n = n;
      if (cs->acked[n]) assert_int_equal(cs->acked[n], ev->seq);
    }
    bool end = fr->end;
    pw_frame_free(r);
    if (end) break;
  }
  for (uint32_t n = 1; n <= PER_CONV; n++)
    if (cs->acked[n]) assert_int_equal(seen[n], 1); /* no acknowledged loss */
}

static void test_kill9(void **state) {
  (void)state;
  char dir[256];
  assert_int_equal(tmpdir_make(dir, sizeof dir, "kill9"), 0);
  unsigned seed = (unsigned)time(NULL);
  printf("kill9: seed %u, %d cycles, %d messages, durability %s\n", seed, KILL_CYCLES,
         KILL_MESSAGES, KILL_DURABILITY);
  srand(seed);
  conv_state cs[CONVS];
  memset(cs, 0, sizeof cs);
  for (uint32_t k = 0; k < CONVS; k++) {
    snprintf(cs[k].id, sizeof cs[k].id, "k9-%u", k);
    cs[k].next = 1;
  }
  tproc gw;
  int port = tproc_start_gateway(&gw, dir, yaml);
  assert_true(port > 0);
  wsc *c = login(port);
  assert_non_null(c);
  int kills = 0, acked = 0, total = PER_CONV * CONVS;
  int kill_after = 1 + rand() % (total / (KILL_CYCLES + 1) + 1);
  int since_kill = 0;
  time_t started = time(NULL);
  while (acked < total) {
    assert_true(time(NULL) - started < (KILL_CYCLES > 10 ? 600 : 50));
    for (uint32_t k = 0; k < CONVS; k++)
      if (!cs[k].in_flight && cs[k].next <= PER_CONV) send_msg(c, &cs[k], k, cs[k].next++);
    pw_frame *f = NULL;
    int rc = wsc_recv_frame(c, 2000, &f);
    if (rc == 0 && f->body_case == PARLEY__V1__FRAME__BODY_SEND_ACK) {
      Parley__V1__SendAck *a = f->send_ack;
      assert_int_equal(a->error, 0);
      const uint8_t *id = a->client_msg_id.data;
      uint32_t num = ((uint32_t)id[12] << 24) | ((uint32_t)id[13] << 16) |
                     ((uint32_t)id[14] << 8) | id[15];
      uint32_t k = num / 100000u, n = num % 100000u;
      assert_true(k < CONVS && n >= 1 && n <= PER_CONV);
      if (cs[k].in_flight == n) {
        if (cs[k].acked[n]) assert_int_equal(cs[k].acked[n], a->seq);
        else acked++;
        cs[k].acked[n] = a->seq;
        cs[k].in_flight = 0;
        since_kill++;
      }
    }
    if (f) pw_frame_free(f);
    bool dead = rc == PARLEY_EDISCONNECTED || rc == PARLEY_EIO;
    if (!dead && kills < KILL_CYCLES && since_kill >= kill_after) {
      /* SIGKILL while sends are on the wire. */
      for (uint32_t k = 0; k < CONVS; k++)
        if (!cs[k].in_flight && cs[k].next <= PER_CONV) send_msg(c, &cs[k], k, cs[k].next++);
      tproc_kill(&gw, SIGKILL);
      tproc_wait(&gw, 5000);
      kills++;
      since_kill = 0;
      kill_after = 1 + rand() % (total / (KILL_CYCLES + 1) + 1);
      dead = true;
    }
    if (dead) {
      wsc_abort(c);
      tproc_stop(&gw);
      port = tproc_start_gateway(&gw, dir, yaml);
      assert_true(port > 0);
      c = login(port);
      assert_non_null(c);
      /* Every unanswered send is written again with the same id. */
      for (uint32_t k = 0; k < CONVS; k++)
        if (cs[k].in_flight) send_msg(c, &cs[k], k, cs[k].in_flight);
    }
  }
  printf("kill9: %d kills, %d acknowledged sends\n", kills, acked);
  assert_int_equal(kills, KILL_CYCLES);
  /* One more unclean restart before checking. */
  tproc_stop(&gw);
  wsc_abort(c);
  port = tproc_start_gateway(&gw, dir, yaml);
  assert_true(port > 0);
  c = login(port);
  assert_non_null(c);
  for (uint32_t k = 0; k < CONVS; k++) verify(c, &cs[k]);
  wsc_close(c, 1000);
  /* A clean stop exits with status 0. */
  tproc_kill(&gw, SIGTERM);
  assert_int_equal(tproc_wait(&gw, 5000), 0);
  assert_true(WIFEXITED(gw.status));
  assert_int_equal(WEXITSTATUS(gw.status), 0);
  tproc_stop(&gw);
  tmpdir_remove(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_kill9)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
