/* The client over a real WebSocket on 127.0.0.1, against a FAKE gateway
 * (tests/client/fake_peer.c) that checks the exact frames the client
 * writes and answers with hand-built ones. The peer, the client and the
 * test's timers share one uv loop, as an application embedding both a
 * gateway and clients would.
 *
 * Every scenario ends with uv_run returning on its own and uv_loop_close
 * succeeding: the client leaves no handle behind once CLOSED (or freed). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include <parley/client.h>

#include "fake_peer.h"
#include "util/clock.h"

#define WATCHDOG_MS 20000
#define MAX_LOG 64

enum { F_HELLO = PARLEY__V1__FRAME__BODY_HELLO,
       F_SEND = PARLEY__V1__FRAME__BODY_SEND,
       F_ACK = PARLEY__V1__FRAME__BODY_ACK };

/* Everything one scenario observes. */
typedef struct scenario {
  uv_loop_t loop;
  uv_timer_t watchdog;
  fake_peer peer;
  parley_client *client;
  bool timed_out;
  bool closed;

  parley_conn_state states[MAX_LOG];
  int state_status[MAX_LOG];
  uint64_t state_at[MAX_LOG];
  int n_states;

  uint64_t seqs[MAX_LOG];
  parley_event_kind kinds[MAX_LOG];
  int n_events;

  int n_results;
  parley_send_result result;
  void *result_ud;
  char result_conv[64];

  int n_errors;
  uint8_t sent_id[16];
  bool have_sent_id;
  uint64_t ack_up_to[FP_MAX_CONNS];
  uint64_t acks[FP_MAX_CONNS][8]; /* every up_to_seq, per connection */
  int n_acks[FP_MAX_CONNS];
  bool stop_in_event; /* call parley_client_stop from on_event at seq stop_seq */
  uint64_t stop_seq;
  bool free_on_ready;
  bool free_after_ready; /* free from a timer of the test, not a callback */
  uv_timer_t free_timer;
  int free_after_connecting; /* free from on_state after this many CONNECTING */
  int n_connecting;
  int open_clients;          /* multi-client scenarios: not yet CLOSED */
  uint64_t stop_at;          /* when the test called parley_client_stop */
} scenario;

static int marker;

/* ------------------------------------------------------------ client side */

static void free_timer_cb(uv_timer_t *t) {
  scenario *sc = t->data;
  parley_client_free(sc->client);
  sc->client = NULL;
  uv_close((uv_handle_t *)t, NULL);
}

static void on_state(parley_client *c, parley_conn_state s, int status,
                     void *ud) {
  scenario *sc = ud;
  assert_ptr_equal(c, sc->client);
  if (sc->n_states < MAX_LOG) {
    sc->states[sc->n_states] = s;
    sc->state_status[sc->n_states] = status;
    sc->state_at[sc->n_states] = pu_clock_ms();
    sc->n_states++;
  }
  if (s == PARLEY_CONN_READY && sc->free_on_ready) {
    parley_client_free(c);
    sc->client = NULL;
    return;
  }
  if (s == PARLEY_CONN_READY && sc->free_after_ready)
    uv_timer_start(&sc->free_timer, free_timer_cb, 0, 0);
  if (s == PARLEY_CONN_CONNECTING && sc->free_after_connecting &&
      ++sc->n_connecting == sc->free_after_connecting) {
    parley_client_free(c);
    sc->client = NULL;
    return;
  }
  if (s == PARLEY_CONN_CLOSED) {
    sc->closed = true;
    /* The client is closed: nothing of it is left on the loop, so once the
     * peer and the watchdog are gone the loop has to end by itself. */
    uv_close((uv_handle_t *)&sc->watchdog, NULL);
    fp_destroy_begin(&sc->peer);
  }
}

static void on_event(parley_client *c, const parley_event *ev, void *ud) {
  scenario *sc = ud;
  if (sc->n_events < MAX_LOG) {
    sc->seqs[sc->n_events] = ev->seq;
    sc->kinds[sc->n_events] = ev->kind;
    sc->n_events++;
  }
  assert_string_equal(ev->conversation, "conv-1");
  if (sc->stop_in_event && ev->seq == sc->stop_seq)
    assert_int_equal(parley_client_stop(c, 2000), 0);
}

static void on_send_result(parley_client *c, const parley_send_result *r,
                           void *send_ud, void *ud) {
  (void)c;
  scenario *sc = ud;
  sc->n_results++;
  sc->result = *r;
  sc->result_ud = send_ud;
  snprintf(sc->result_conv, sizeof sc->result_conv, "%s",
           r->conversation ? r->conversation : "");
}

static void on_error(parley_client *c, int status, const char *message,
                     void *ud) {
  (void)c;
  scenario *sc = ud;
  sc->n_errors++;
  fprintf(stderr, "client error %s: %s\n", parley_errname(status),
          message ? message : "");
}

static void on_ready_send(parley_client *c, parley_conn_state s, int status,
                          void *ud) {
  scenario *sc = ud;
  on_state(c, s, status, ud);
  /* The first time the session is up, send one message. */
  if (s == PARLEY_CONN_READY && sc->n_results == 0 && !sc->have_sent_id) {
    parley_content text = {.kind = PARLEY_CONTENT_TEXT, .text = "hello"};
    sc->have_sent_id = true;
    assert_int_equal(parley_client_send(c, "conv-1", &text, NULL, NULL, 0,
                                        &marker),
                     0);
  }
}

static void watchdog_cb(uv_timer_t *t) {
  scenario *sc = t->data;
  sc->timed_out = true;
  uv_stop(&sc->loop);
}

/* Prints what a scenario saw, to make a failed comparison readable. */
static void scenario_dump(const scenario *sc) {
  if (!getenv("PARLEY_TEST_VERBOSE") && !sc->timed_out)
    return;
  for (int i = 0; i < sc->n_states; i++)
    fprintf(stderr, "state %d status %s at %llu\n", (int)sc->states[i],
            parley_errname(sc->state_status[i]),
            (unsigned long long)sc->state_at[i]);
  for (int i = 0; i < sc->peer.n_conns; i++) {
    fprintf(stderr, "conn %d close %d frames:", i,
            sc->peer.conns[i].peer_close_code);
    for (int k = 0; k < sc->peer.conns[i].n_types; k++)
      fprintf(stderr, " %d", sc->peer.conns[i].types[k]);
    fprintf(stderr, " acks:");
    for (int k = 0; k < sc->n_acks[i]; k++)
      fprintf(stderr, " %llu", (unsigned long long)sc->acks[i][k]);
    fprintf(stderr, "\n");
  }
  for (int i = 0; i < sc->n_events; i++)
    fprintf(stderr, "event seq %llu kind %d\n",
            (unsigned long long)sc->seqs[i], (int)sc->kinds[i]);
}

static void scenario_init(scenario *sc, fp_frame_fn script) {
  memset(sc, 0, sizeof *sc);
  assert_int_equal(uv_loop_init(&sc->loop), 0);
  assert_int_equal(fp_start(&sc->peer, &sc->loop, script, sc), 0);
  uv_timer_init(&sc->loop, &sc->watchdog);
  sc->watchdog.data = sc;
  /* Unreferenced: the watchdog alone does not keep the loop running. */
  uv_timer_start(&sc->watchdog, watchdog_cb, WATCHDOG_MS, 0);
  uv_unref((uv_handle_t *)&sc->watchdog);
}

static parley_client_options base_options(scenario *sc, char *url,
                                          size_t url_size) {
  snprintf(url, url_size, "ws://127.0.0.1:%d/v1/ws", sc->peer.port);
  parley_client_options o = PARLEY_CLIENT_OPTIONS_INIT;
  o.url = url;
  o.principal = "alice";
  o.token = "secret-token";
  o.role = PARLEY_ROLE_CUSTOMER;
  o.device = "dev-1";
  o.loop = &sc->loop;
  o.tuning.ack_batch_ms = 20;
  o.tuning.reconnect_min_ms = 50;
  o.tuning.reconnect_max_ms = 200;
  o.tuning.seed = 42;
  o.cb.on_state = on_state;
  o.cb.on_event = on_event;
  o.cb.on_send_result = on_send_result;
  o.cb.on_error = on_error;
  o.user_data = sc;
  return o;
}

static void walk_print(uv_handle_t *h, void *arg) {
  (void)arg;
  fprintf(stderr, "left on loop: %s active=%d closing=%d\n",
          uv_handle_type_name(h->type), uv_is_active(h), uv_is_closing(h));
}

/* Runs the loop to its natural end and checks nothing is left on it. */
static void scenario_run_and_finish(scenario *sc) {
  uv_run(&sc->loop, UV_RUN_DEFAULT);
  if (sc->timed_out) {
    uv_walk(&sc->loop, walk_print, NULL);
    fail_msg("scenario did not finish within %d ms", WATCHDOG_MS);
  }
  fp_destroy_end(&sc->peer);
  parley_client_free(sc->client);
  sc->client = NULL;
  int rc = uv_loop_close(&sc->loop);
  if (rc)
    uv_walk(&sc->loop, walk_print, NULL);
  assert_int_equal(rc, 0);
}

/* ------------------------------------------------------------ frame builders */

static Parley__V1__Event *mk_event(Parley__V1__Event *ev, uint64_t seq,
                                   Parley__V1__EventKind kind) {
  parley__v1__event__init(ev);
  ev->conversation = "conv-1";
  ev->seq = seq;
  ev->kind = kind;
  ev->server_time_ms = 1700000000000 + (int64_t)seq;
  ev->sender = "gateway";
  ev->sender_role = PARLEY__V1__ROLE__ROLE_SYSTEM;
  return ev;
}

typedef struct msg_parts {
  Parley__V1__Content content;
  Parley__V1__Text text;
  uint8_t id[16];
} msg_parts;

static Parley__V1__Event *mk_message(Parley__V1__Event *ev, msg_parts *mp,
                                     uint64_t seq, const char *sender,
                                     Parley__V1__Role role, const uint8_t *id,
                                     const char *body) {
  mk_event(ev, seq, PARLEY__V1__EVENT_KIND__EVENT_MESSAGE);
  parley__v1__content__init(&mp->content);
  parley__v1__text__init(&mp->text);
  mp->text.body = (char *)body;
  mp->content.body_case = PARLEY__V1__CONTENT__BODY_TEXT;
  mp->content.text = &mp->text;
  memcpy(mp->id, id, 16);
  ev->sender = (char *)sender;
  ev->sender_role = role;
  ev->client_msg_id.len = 16;
  ev->client_msg_id.data = mp->id;
  ev->content = &mp->content;
  return ev;
}

static void send_deliver(fp_conn *c, Parley__V1__Event **evs, size_t n,
                         int fragments) {
  Parley__V1__Deliver d = PARLEY__V1__DELIVER__INIT;
  d.n_events = n;
  d.events = evs;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_DELIVER;
  f.deliver = &d;
  fp_send(c, &f, fragments);
}

static const uint8_t bot_id4[16] = {0xb0, 4, 4, 4, 4, 4, 4, 4,
                                    4,    4, 4, 4, 4, 4, 4, 4};
static const uint8_t bot_id5[16] = {0xb0, 5, 5, 5, 5, 5, 5, 5,
                                    5,    5, 5, 5, 5, 5, 5, 5};

static void check_hello(fp_conn *c, const pw_frame *f, size_t n_resume) {
  assert_int_equal(f->body_case, PARLEY__V1__FRAME__BODY_HELLO);
  const Parley__V1__Hello *h = f->hello;
  assert_string_equal(c->auth, "Bearer secret-token");
  assert_int_equal(h->min_version, 1);
  assert_int_equal(h->max_version, 1);
  assert_string_equal(h->principal, "alice");
  assert_int_equal(h->role, PARLEY__V1__ROLE__ROLE_CUSTOMER);
  assert_string_equal(h->device, "dev-1");
  assert_int_equal(h->n_resume, n_resume);
}

/* ------------------------------------------------------------ scenario 1 */

/* Connection 0: Hello -> Welcome (in 3 fragments); Send -> SendAck and a
 * Deliver of seq 1..4; Ack(4) -> the peer closes with 1001.
 * Connection 1: Hello with the resume cursor (conv-1, 4) -> Welcome with
 * that cursor, then a Deliver of seq 4 again (redelivered) and seq 5; the
 * application stops at seq 5; Ack(5) then a clean close (1000). */
static void script_main(fake_peer *p, fp_conn *c, const pw_frame *f) {
  scenario *sc = p->ud;
  if (f->body_case == PARLEY__V1__FRAME__BODY_ACK && c->index < FP_MAX_CONNS &&
      sc->n_acks[c->index] < 8 && f->ack->n_entries == 1)
    sc->acks[c->index][sc->n_acks[c->index]++] = f->ack->entries[0]->up_to_seq;
  if (c->index == 0) {
    switch (f->body_case) {
    case PARLEY__V1__FRAME__BODY_HELLO:
      check_hello(c, f, 0);
      fp_welcome(c, NULL, NULL, 0, 3);
      break;
    case PARLEY__V1__FRAME__BODY_SEND: {
      const Parley__V1__Send *s = f->send;
      assert_string_equal(s->conversation, "conv-1");
      assert_int_equal(s->body_case, PARLEY__V1__SEND__BODY_CONTENT);
      assert_int_equal(s->content->body_case, PARLEY__V1__CONTENT__BODY_TEXT);
      assert_string_equal(s->content->text->body, "hello");
      assert_int_equal(s->client_msg_id.len, 16);
      memcpy(sc->sent_id, s->client_msg_id.data, 16);

      Parley__V1__SendAck a = PARLEY__V1__SEND_ACK__INIT;
      a.client_msg_id = s->client_msg_id;
      a.conversation = "conv-1";
      a.seq = 3;
      a.server_time_ms = 1700000000003;
      pw_frame r = PARLEY__V1__FRAME__INIT;
      r.body_case = PARLEY__V1__FRAME__BODY_SEND_ACK;
      r.send_ack = &a;
      fp_send(c, &r, 1);

      Parley__V1__Event e1, e2, e3, e4;
      msg_parts m3, m4;
      mk_event(&e1, 1, PARLEY__V1__EVENT_KIND__EVENT_OPENED);
      e1.customer = "alice";
      e1.locale = "en";
      mk_event(&e2, 2, PARLEY__V1__EVENT_KIND__EVENT_ASSIGNED);
      e2.assignee = "bot-1";
      mk_message(&e3, &m3, 3, "alice", PARLEY__V1__ROLE__ROLE_CUSTOMER,
                 sc->sent_id, "hello");
      mk_message(&e4, &m4, 4, "bot-1", PARLEY__V1__ROLE__ROLE_BOT, bot_id4,
                 "hi alice");
      Parley__V1__Event *evs[] = {&e1, &e2, &e3, &e4};
      send_deliver(c, evs, 4, 1);
      break;
    }
    case PARLEY__V1__FRAME__BODY_ACK:
      assert_int_equal(f->ack->n_entries, 1);
      assert_string_equal(f->ack->entries[0]->conversation, "conv-1");
      sc->ack_up_to[0] = f->ack->entries[0]->up_to_seq;
      if (sc->ack_up_to[0] == 4)
        fp_close(c, 1001); /* going away: the client must come back */
      break;
    default:
      break; /* recorded in c->types and checked at the end */
    }
  } else if (c->index == 1) {
    switch (f->body_case) {
    case PARLEY__V1__FRAME__BODY_HELLO: {
      check_hello(c, f, 1);
      assert_string_equal(f->hello->resume[0]->conversation, "conv-1");
      assert_int_equal(f->hello->resume[0]->after_seq, 4);
      const char *convs[] = {"conv-1"};
      const uint64_t seqs[] = {4};
      fp_welcome(c, convs, seqs, 1, 1);
      Parley__V1__Event e4, e5;
      msg_parts m4, m5;
      mk_message(&e4, &m4, 4, "bot-1", PARLEY__V1__ROLE__ROLE_BOT, bot_id4,
                 "hi alice");
      e4.redelivered = true;
      mk_message(&e5, &m5, 5, "bot-1", PARLEY__V1__ROLE__ROLE_BOT, bot_id5,
                 "still there?");
      Parley__V1__Event *evs[] = {&e4, &e5};
      send_deliver(c, evs, 2, 2);
      break;
    }
    case PARLEY__V1__FRAME__BODY_ACK:
      assert_int_equal(f->ack->n_entries, 1);
      sc->ack_up_to[1] = f->ack->entries[0]->up_to_seq;
      break;
    default:
      break;
    }
  }
}

static void test_session_resume_and_clean_stop(void **state) {
  (void)state;
  scenario *sc = calloc(1, sizeof *sc);
  assert_non_null(sc);
  scenario_init(sc, script_main);
  char url[128];
  parley_client_options o = base_options(sc, url, sizeof url);
  o.cb.on_state = on_ready_send;
  sc->stop_in_event = true;
  sc->stop_seq = 5;
  assert_int_equal(parley_client_new(&o, &sc->client), 0);
  assert_ptr_equal(parley_client_loop(sc->client), &sc->loop);
  assert_int_equal(parley_client_state(sc->client), PARLEY_CONN_IDLE);
  assert_int_equal(parley_client_start(sc->client), 0);
  assert_int_equal(parley_client_start(sc->client), PARLEY_ESTATE);

  uv_run(&sc->loop, UV_RUN_DEFAULT);
  scenario_dump(sc);
  assert_false(sc->timed_out);
  assert_true(sc->closed);

  /* Exact frames the peer received on each connection. */
  assert_int_equal(sc->peer.n_conns, 2);
  assert_int_equal(sc->peer.bad, 0);
  const int want0[] = {F_HELLO, F_SEND, F_ACK};
  /* The redelivered seq 4 is acknowledged again, then seq 5. */
  const int want1[] = {F_HELLO, F_ACK, F_ACK};
  assert_int_equal(sc->peer.conns[0].n_types, 3);
  assert_memory_equal(sc->peer.conns[0].types, want0, sizeof want0);
  assert_int_equal(sc->peer.conns[1].n_types, 3);
  assert_memory_equal(sc->peer.conns[1].types, want1, sizeof want1);
  assert_int_equal(sc->n_acks[0], 1);
  assert_int_equal(sc->acks[0][0], 4);
  assert_int_equal(sc->n_acks[1], 2);
  assert_int_equal(sc->acks[1][0], 4);
  assert_int_equal(sc->acks[1][1], 5);
  /* The stop ended with a clean close. */
  assert_int_equal(sc->peer.conns[1].peer_close_code, 1000);

  /* The send result. */
  assert_int_equal(sc->n_results, 1);
  assert_int_equal(sc->result.status, 0);
  assert_int_equal(sc->result.seq, 3);
  assert_ptr_equal(sc->result_ud, &marker);
  assert_string_equal(sc->result_conv, "conv-1");
  assert_memory_equal(sc->result.msg_id, sc->sent_id, 16);
  assert_false(sc->result.duplicate);

  /* Events 1..5 once each, in order; the redelivered 4 was dropped. */
  assert_int_equal(sc->n_events, 5);
  for (int i = 0; i < 5; i++)
    assert_int_equal(sc->seqs[i], (uint64_t)i + 1);
  assert_int_equal(sc->kinds[0], PARLEY_EVENT_OPENED);
  assert_int_equal(sc->kinds[1], PARLEY_EVENT_ASSIGNED);
  assert_int_equal(sc->kinds[2], PARLEY_EVENT_MESSAGE);

  /* Every state change, with the reason for the lost connection. */
  const parley_conn_state want_states[] = {
      PARLEY_CONN_CONNECTING, PARLEY_CONN_HANDSHAKE, PARLEY_CONN_READY,
      PARLEY_CONN_BACKOFF,    PARLEY_CONN_CONNECTING, PARLEY_CONN_HANDSHAKE,
      PARLEY_CONN_READY,      PARLEY_CONN_CLOSING,    PARLEY_CONN_CLOSED};
  assert_int_equal(sc->n_states, 9);
  for (int i = 0; i < 9; i++)
    assert_int_equal(sc->states[i], want_states[i]);
  assert_int_equal(sc->state_status[3], PARLEY_ESHUTDOWN);
  assert_int_equal(sc->state_status[8], 0);
  /* The reconnect waited within the configured backoff window. */
  uint64_t waited = sc->state_at[4] - sc->state_at[3];
  assert_true(waited <= 1000);

  parley_client_stats st;
  parley_client_stats_get(sc->client, &st);
  assert_int_equal(st.reconnects, 1);
  assert_int_equal(parley_client_state(sc->client), PARLEY_CONN_CLOSED);
  /* A closed client refuses new work. */
  parley_content text = {.kind = PARLEY_CONTENT_TEXT, .text = "late"};
  assert_int_equal(parley_client_send(sc->client, "conv-1", &text, NULL, NULL,
                                      0, NULL),
                   PARLEY_ESHUTDOWN);
  assert_int_equal(sc->n_errors, 0);

  fp_destroy_end(&sc->peer);
  parley_client_free(sc->client);
  assert_int_equal(uv_loop_close(&sc->loop), 0);
  free(sc);
}

/* ------------------------------------------------------------ scenario 2 */

/* Oversized inbound messages: one frame over the limit (connection 0) and
 * a message whose fragments together pass it (connection 1) both make the
 * client close with 4002 and reconnect; connection 2 gets a Deliver in 4
 * fragments under the limit, which arrives whole. */
static void script_oversize(fake_peer *p, fp_conn *c, const pw_frame *f) {
  scenario *sc = p->ud;
  (void)sc;
  if (f->body_case != PARLEY__V1__FRAME__BODY_HELLO)
    return;
  fp_welcome(c, NULL, NULL, 0, 1);
  static uint8_t junk[10000];
  if (c->index == 0) {
    fp_send_raw(c, junk, sizeof junk, 1);
  } else if (c->index == 1) {
    fp_send_raw(c, junk, 6000, 3);
  } else {
    Parley__V1__Event e1;
    mk_event(&e1, 1, PARLEY__V1__EVENT_KIND__EVENT_OPENED);
    e1.customer = "alice";
    Parley__V1__Event *evs[] = {&e1};
    send_deliver(c, evs, 1, 4);
  }
}

static void test_oversize_messages_close_4002(void **state) {
  (void)state;
  scenario *sc = calloc(1, sizeof *sc);
  assert_non_null(sc);
  scenario_init(sc, script_oversize);
  char url[128];
  parley_client_options o = base_options(sc, url, sizeof url);
  o.tuning.max_frame_bytes = 4096;
  sc->stop_in_event = true;
  sc->stop_seq = 1;
  assert_int_equal(parley_client_new(&o, &sc->client), 0);
  assert_int_equal(parley_client_start(sc->client), 0);
  uv_run(&sc->loop, UV_RUN_DEFAULT);
  scenario_dump(sc);
  assert_false(sc->timed_out);
  assert_true(sc->closed);

  assert_int_equal(sc->peer.n_conns, 3);
  assert_int_equal(sc->peer.conns[0].peer_close_code, 4002);
  assert_int_equal(sc->peer.conns[1].peer_close_code, 4002);
  assert_int_equal(sc->peer.conns[2].peer_close_code, 1000);
  int backoffs = 0;
  for (int i = 0; i < sc->n_states; i++)
    if (sc->states[i] == PARLEY_CONN_BACKOFF) {
      assert_int_equal(sc->state_status[i], PARLEY_ETOOBIG);
      backoffs++;
    }
  assert_int_equal(backoffs, 2);
  assert_int_equal(sc->n_events, 1);
  assert_int_equal(sc->seqs[0], 1);
  assert_int_equal(sc->states[sc->n_states - 1], PARLEY_CONN_CLOSED);

  fp_destroy_end(&sc->peer);
  parley_client_free(sc->client);
  assert_int_equal(uv_loop_close(&sc->loop), 0);
  free(sc);
}

/* ------------------------------------------------------------ scenario 3 */

static void script_welcome_only(fake_peer *p, fp_conn *c, const pw_frame *f) {
  (void)p;
  if (f->body_case == PARLEY__V1__FRAME__BODY_HELLO)
    fp_welcome(c, NULL, NULL, 0, 1);
}

/* parley_client_free on a live session, from inside a callback, with the
 * caller's loop: the connection is dropped, no callback follows, and the
 * loop still ends with nothing left on it. */
static void run_free_while_ready(bool from_callback) {
  scenario *sc = calloc(1, sizeof *sc);
  assert_non_null(sc);
  scenario_init(sc, script_welcome_only);
  uv_timer_init(&sc->loop, &sc->free_timer);
  sc->free_timer.data = sc;
  char url[128];
  parley_client_options o = base_options(sc, url, sizeof url);
  sc->free_on_ready = from_callback;
  sc->free_after_ready = !from_callback;
  assert_int_equal(parley_client_new(&o, &sc->client), 0);
  assert_int_equal(parley_client_start(sc->client), 0);
  /* Runs until the client is freed and its connection is gone. */
  while (!sc->timed_out && (sc->client || sc->peer.live_conns ||
                            sc->peer.n_conns == 0))
    uv_run(&sc->loop, UV_RUN_ONCE);
  assert_false(sc->timed_out);
  int n = sc->n_states;
  assert_int_equal(sc->states[n - 1], PARLEY_CONN_READY);
  uv_close((uv_handle_t *)&sc->watchdog, NULL);
  if (from_callback)
    uv_close((uv_handle_t *)&sc->free_timer, NULL);
  fp_destroy_begin(&sc->peer);
  scenario_run_and_finish(sc);
  /* Freed: no state change was reported after READY. */
  assert_int_equal(sc->n_states, n);
  assert_int_equal(sc->peer.n_conns, 1);
  assert_int_equal(sc->peer.conns[0].n_types, 1);
  free(sc);
}

/* parley_client_free on a live session with the caller's loop, from inside
 * a callback of the client and from outside any: the connection is
 * dropped, no callback follows, and the loop still ends with nothing left
 * on it. */
static void test_free_while_ready(void **state) {
  (void)state;
  run_free_while_ready(true);
  run_free_while_ready(false);
}

/* ------------------------------------------------------------ scenario 4 */

/* A refused connection backs off and retries; an owned loop run by
 * parley_client_run returns once the client is freed from a callback. */
static void test_refused_backoff_own_loop(void **state) {
  (void)state;
  scenario *sc = calloc(1, sizeof *sc);
  assert_non_null(sc);
  /* Take a free port and close it again, so nothing listens there. */
  uv_loop_t tmp;
  uv_loop_init(&tmp);
  uv_tcp_t tcp;
  uv_tcp_init(&tmp, &tcp);
  struct sockaddr_in addr;
  uv_ip4_addr("127.0.0.1", 0, &addr);
  assert_int_equal(uv_tcp_bind(&tcp, (const struct sockaddr *)&addr, 0), 0);
  struct sockaddr_in bound;
  int blen = sizeof bound;
  uv_tcp_getsockname(&tcp, (struct sockaddr *)&bound, &blen);
  int port = ntohs(bound.sin_port);
  uv_close((uv_handle_t *)&tcp, NULL);
  uv_run(&tmp, UV_RUN_DEFAULT);
  uv_loop_close(&tmp);

  char url[128];
  snprintf(url, sizeof url, "ws://127.0.0.1:%d/", port);
  parley_client_options o = PARLEY_CLIENT_OPTIONS_INIT;
  o.url = url;
  o.principal = "alice";
  o.role = PARLEY_ROLE_CUSTOMER;
  o.tuning.reconnect_min_ms = 20;
  o.tuning.reconnect_max_ms = 80;
  o.cb.on_state = on_state;
  o.user_data = sc;
  sc->free_after_connecting = 4;
  assert_int_equal(parley_client_new(&o, &sc->client), 0);
  parley_client *c = sc->client;
  assert_non_null(parley_client_loop(c));
  assert_int_equal(parley_client_start(c), 0);
  uint64_t t0 = pu_clock_ms();
  assert_int_equal(parley_client_run(c), 0); /* c is released here */
  uint64_t took = pu_clock_ms() - t0;
  assert_null(sc->client);
  /* CONNECTING, BACKOFF(EIO) three times, then the fourth CONNECTING. */
  assert_int_equal(sc->n_states, 7);
  for (int i = 0; i < 7; i++) {
    assert_int_equal(sc->states[i], i % 2 ? PARLEY_CONN_BACKOFF
                                          : PARLEY_CONN_CONNECTING);
    if (i % 2)
      assert_int_equal(sc->state_status[i], PARLEY_EIO);
  }
  /* Three waits, each below its backoff window (20, 40, 80 ms). */
  assert_true(took < 2000);
  free(sc);
}


/* ------------------------------------------------------------ scenario 5 */

/* The peer takes the Send and never answers it; the test stops the client
 * with a 300 ms drain. The send must fail with ESHUTDOWN when the drain
 * ends, and the connection must then close cleanly. */
static void script_silent(fake_peer *p, fp_conn *c, const pw_frame *f) {
  scenario *sc = p->ud;
  if (f->body_case == PARLEY__V1__FRAME__BODY_HELLO) {
    fp_welcome(c, NULL, NULL, 0, 1);
  } else if (f->body_case == PARLEY__V1__FRAME__BODY_SEND) {
    sc->stop_at = pu_clock_ms();
    assert_int_equal(parley_client_stop(sc->client, 300), 0);
    /* A second stop changes nothing. */
    assert_int_equal(parley_client_stop(sc->client, 0), 0);
  }
}

static void test_stop_drains_then_fails_pending_send(void **state) {
  (void)state;
  scenario *sc = calloc(1, sizeof *sc);
  assert_non_null(sc);
  scenario_init(sc, script_silent);
  char url[128];
  parley_client_options o = base_options(sc, url, sizeof url);
  o.cb.on_state = on_ready_send;
  assert_int_equal(parley_client_new(&o, &sc->client), 0);
  assert_int_equal(parley_client_start(sc->client), 0);
  uv_run(&sc->loop, UV_RUN_DEFAULT);
  scenario_dump(sc);
  assert_false(sc->timed_out);
  assert_true(sc->closed);

  assert_int_equal(sc->n_results, 1);
  assert_int_equal(sc->result.status, PARLEY_ESHUTDOWN);
  assert_ptr_equal(sc->result_ud, &marker);
  uint64_t closed_at = sc->state_at[sc->n_states - 1];
  uint64_t drained = closed_at - sc->stop_at;
  assert_true(drained >= 290);  /* waited for the answer... */
  assert_true(drained < 2300);  /* ...but not past drain + close grace */
  const int want0[] = {F_HELLO, F_SEND};
  assert_int_equal(sc->peer.conns[0].n_types, 2);
  assert_memory_equal(sc->peer.conns[0].types, want0, sizeof want0);
  assert_int_equal(sc->peer.conns[0].peer_close_code, 1000);
  assert_int_equal(sc->states[sc->n_states - 2], PARLEY_CONN_CLOSING);
  assert_int_equal(sc->state_status[sc->n_states - 1], 0);
  /* New sends are refused once stopping. */
  parley_content text = {.kind = PARLEY_CONTENT_TEXT, .text = "late"};
  assert_int_equal(parley_client_send(sc->client, "conv-1", &text, NULL, NULL,
                                      0, NULL),
                   PARLEY_ESHUTDOWN);

  fp_destroy_end(&sc->peer);
  parley_client_free(sc->client);
  assert_int_equal(uv_loop_close(&sc->loop), 0);
  free(sc);
}

/* ------------------------------------------------------------ scenario 6 */

/* A TCP listener that accepts and never answers the WebSocket upgrade: the
 * client stays CONNECTING until the test stops it. */
typedef struct mute_server {
  uv_tcp_t listener;
  uv_tcp_t conn;
  bool accepted;
  scenario *sc;
} mute_server;

static void mute_alloc(uv_handle_t *h, size_t n, uv_buf_t *b) {
  (void)h;
  static char buf[4096];
  (void)n;
  *b = uv_buf_init(buf, sizeof buf);
}

static void mute_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  (void)b;
  mute_server *m = s->data;
  if (n > 0 && !m->sc->stop_at) {
    /* The upgrade request arrived: stop while the handshake is pending. */
    assert_int_equal(parley_client_state(m->sc->client), PARLEY_CONN_CONNECTING);
    m->sc->stop_at = pu_clock_ms();
    assert_int_equal(parley_client_stop(m->sc->client, 1000), 0);
  }
  if (n < 0)
    uv_read_stop(s);
}

static void mute_accept(uv_stream_t *l, int status) {
  mute_server *m = l->data;
  assert_int_equal(status, 0);
  assert_false(m->accepted);
  uv_tcp_init(l->loop, &m->conn);
  m->conn.data = m;
  assert_int_equal(uv_accept(l, (uv_stream_t *)&m->conn), 0);
  m->accepted = true;
  uv_read_start((uv_stream_t *)&m->conn, mute_alloc, mute_read);
}

static void test_stop_during_handshake(void **state) {
  (void)state;
  scenario *sc = calloc(1, sizeof *sc);
  mute_server *m = calloc(1, sizeof *m);
  assert_non_null(sc);
  assert_non_null(m);
  scenario_init(sc, NULL);
  m->sc = sc;
  uv_tcp_init(&sc->loop, &m->listener);
  m->listener.data = m;
  struct sockaddr_in addr;
  uv_ip4_addr("127.0.0.1", 0, &addr);
  assert_int_equal(uv_tcp_bind(&m->listener, (const struct sockaddr *)&addr, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&m->listener, 4, mute_accept), 0);
  struct sockaddr_in bound;
  int blen = sizeof bound;
  uv_tcp_getsockname(&m->listener, (struct sockaddr *)&bound, &blen);

  char url[128];
  parley_client_options o = base_options(sc, url, sizeof url);
  snprintf(url, sizeof url, "ws://127.0.0.1:%d/", ntohs(bound.sin_port));
  assert_int_equal(parley_client_new(&o, &sc->client), 0);
  assert_int_equal(parley_client_start(sc->client), 0);
  while (!sc->closed && !sc->timed_out)
    uv_run(&sc->loop, UV_RUN_ONCE);
  assert_false(sc->timed_out);
  /* The attempt was dropped at once: no drain without a connection. */
  uint64_t took = sc->state_at[sc->n_states - 1] - sc->stop_at;
  assert_true(took < 1000);
  const parley_conn_state want[] = {PARLEY_CONN_CONNECTING, PARLEY_CONN_CLOSING,
                                    PARLEY_CONN_CLOSED};
  assert_int_equal(sc->n_states, 3);
  for (int i = 0; i < 3; i++)
    assert_int_equal(sc->states[i], want[i]);
  uv_close((uv_handle_t *)&m->listener, NULL);
  if (m->accepted)
    uv_close((uv_handle_t *)&m->conn, NULL);
  scenario_run_and_finish(sc);
  free(m);
  free(sc);
}

/* ------------------------------------------------------------ several clients */

typedef struct mc {
  scenario *sc;
  parley_client *c;
  parley_conn_state states[16];
  int status[16];
  int n;
  parley_conn_state stop_on; /* stop when this state is reached */
} mc;

static void on_state_mc(parley_client *c, parley_conn_state s, int status,
                        void *ud) {
  mc *m = ud;
  assert_ptr_equal(c, m->c);
  if (m->n < 16) {
    m->states[m->n] = s;
    m->status[m->n] = status;
    m->n++;
  }
  if (s == m->stop_on)
    assert_int_equal(parley_client_stop(c, 500), 0);
  if (s == PARLEY_CONN_CLOSED && --m->sc->open_clients == 0) {
    uv_close((uv_handle_t *)&m->sc->watchdog, NULL);
    fp_destroy_begin(&m->sc->peer);
  }
}

static void mc_start(mc *m, scenario *sc, const char *url, bool insecure,
                     const char *ca_file, parley_conn_state stop_on) {
  memset(m, 0, sizeof *m);
  m->sc = sc;
  m->stop_on = stop_on;
  parley_client_options o = PARLEY_CLIENT_OPTIONS_INIT;
  o.url = url;
  o.principal = "alice";
  o.token = "secret-token";
  o.role = PARLEY_ROLE_CUSTOMER;
  o.device = "dev-1";
  o.loop = &sc->loop;
  o.tls_insecure = insecure;
  o.ca_file = ca_file;
  o.tuning.reconnect_min_ms = 50;
  o.cb.on_state = on_state_mc;
  o.user_data = m;
  assert_int_equal(parley_client_new(&o, &m->c), 0);
  sc->open_clients++;
  assert_int_equal(parley_client_start(m->c), 0);
}

static bool mc_reached(const mc *m, parley_conn_state s) {
  for (int i = 0; i < m->n; i++)
    if (m->states[i] == s)
      return true;
  return false;
}

/* Two clients and the peer on one loop: independent sessions, and both
 * stop from inside their READY callback (an engine callback). */
static void test_two_clients_one_loop(void **state) {
  (void)state;
  scenario *sc = calloc(1, sizeof *sc);
  mc *a = calloc(2, sizeof *a);
  assert_non_null(sc);
  assert_non_null(a);
  scenario_init(sc, script_welcome_only);
  char url[128];
  snprintf(url, sizeof url, "ws://127.0.0.1:%d/v1/ws", sc->peer.port);
  mc_start(&a[0], sc, url, false, NULL, PARLEY_CONN_READY);
  mc_start(&a[1], sc, url, false, NULL, PARLEY_CONN_READY);
  uv_run(&sc->loop, UV_RUN_DEFAULT);
  assert_false(sc->timed_out);
  assert_int_equal(sc->open_clients, 0);
  assert_int_equal(sc->peer.n_conns, 2);
  for (int i = 0; i < 2; i++) {
    assert_true(mc_reached(&a[i], PARLEY_CONN_READY));
    assert_int_equal(a[i].states[a[i].n - 1], PARLEY_CONN_CLOSED);
    assert_int_equal(a[i].status[a[i].n - 1], 0);
    assert_int_equal(sc->peer.conns[i].peer_close_code, 1000);
    assert_int_equal(sc->peer.conns[i].n_types, 1);
  }
  fp_destroy_end(&sc->peer);
  parley_client_free(a[0].c);
  parley_client_free(a[1].c);
  assert_int_equal(uv_loop_close(&sc->loop), 0);
  free(a);
  free(sc);
}

/* ------------------------------------------------------------ TLS */

/* A self-signed certificate for localhost and 127.0.0.1, valid until 2126,
 * made for this test only. */
static const char test_cert[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBmzCCAUGgAwIBAgIUceo6leKseEEPr7pRM+lMD+h2DiMwCgYIKoZIzj0EAwIw\n"
    "FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyODA3NTU1OFoYDzIxMjYxMTA0\n"
    "MDc1NTU4WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO\n"
    "PQMBBwNCAAR2fdfHos8wxACGxEJ8Mf7qAqWckhaUD8p/mFtAffwLFakahKPDL1m9\n"
    "HkTBYGLIz8jxqYgraA22xduhV+JSaYzko28wbTAdBgNVHQ4EFgQUEJBLfW0qnrFx\n"
    "mfEgJ9ZSqg0qb+wwHwYDVR0jBBgwFoAUEJBLfW0qnrFxmfEgJ9ZSqg0qb+wwDwYD\n"
    "VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwCgYIKoZI\n"
    "zj0EAwIDSAAwRQIhAICPNyfGr37xqktITsoajU4P+ifA7I2Pa6hK+La/GsqIAiAr\n"
    "7wc4kkzirkAIxMEr9EYg91tP0+qFNs4MILv8WOPtsg==\n"
    "-----END CERTIFICATE-----\n";
static const char test_key[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgrZ7WdYxrIP9f9Thq\n"
    "QBxUslMai6x/E9eEIwpViMT9K/+hRANCAAR2fdfHos8wxACGxEJ8Mf7qAqWckhaU\n"
    "D8p/mFtAffwLFakahKPDL1m9HkTBYGLIz8jxqYgraA22xduhV+JSaYzk\n"
    "-----END PRIVATE KEY-----\n";

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  assert_int_equal(fputs(text, f) >= 0, 1);
  assert_int_equal(fclose(f), 0);
}

/* wss:// against a self-signed peer: refused by default (a TLS error,
 * then backoff), accepted with tls_insecure, and accepted when ca_file
 * names the certificate. */
static void test_tls_verification(void **state) {
  (void)state;
  char dir[] = "/tmp/parley-tls-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char cert[64], key[64];
  snprintf(cert, sizeof cert, "%s/cert.pem", dir);
  snprintf(key, sizeof key, "%s/key.pem", dir);
  write_file(cert, test_cert);
  write_file(key, test_key);

  scenario *sc = calloc(1, sizeof *sc);
  mc *a = calloc(3, sizeof *a);
  assert_non_null(sc);
  assert_non_null(a);
  memset(sc, 0, sizeof *sc);
  assert_int_equal(uv_loop_init(&sc->loop), 0);
  assert_int_equal(fp_start_tls(&sc->peer, &sc->loop, script_welcome_only, sc,
                                cert, key),
                   0);
  uv_timer_init(&sc->loop, &sc->watchdog);
  sc->watchdog.data = sc;
  uv_timer_start(&sc->watchdog, watchdog_cb, WATCHDOG_MS, 0);
  uv_unref((uv_handle_t *)&sc->watchdog);

  char url[128], url_host[128];
  snprintf(url, sizeof url, "wss://127.0.0.1:%d/v1/ws", sc->peer.port);
  snprintf(url_host, sizeof url_host, "wss://localhost:%d/v1/ws", sc->peer.port);
  mc_start(&a[0], sc, url, false, NULL, PARLEY_CONN_BACKOFF);
  mc_start(&a[1], sc, url, true, NULL, PARLEY_CONN_READY);
  mc_start(&a[2], sc, url_host, false, cert, PARLEY_CONN_READY);

  /* An unreadable CA bundle is refused when the client starts. */
  parley_client_options bad = PARLEY_CLIENT_OPTIONS_INIT;
  bad.url = url;
  bad.principal = "alice";
  bad.role = PARLEY_ROLE_CUSTOMER;
  bad.loop = &sc->loop;
  bad.ca_file = "/nonexistent/ca.pem";
  parley_client *bc = NULL;
  assert_int_equal(parley_client_new(&bad, &bc), 0);
  assert_int_equal(parley_client_start(bc), PARLEY_ETLS);
  parley_client_free(bc);
  /* The peer and the clients have read the files: remove them now, so a
   * failed assertion below leaves nothing behind. */
  unlink(cert);
  unlink(key);
  rmdir(dir);

  uv_run(&sc->loop, UV_RUN_DEFAULT);
  for (int k = 0; k < 3; k++)
    for (int i = 0; i < a[k].n; i++)
      if (getenv("PARLEY_TEST_VERBOSE"))
        fprintf(stderr, "client %d state %d %s\n", k, (int)a[k].states[i],
                parley_errname(a[k].status[i]));
  assert_false(sc->timed_out);
  assert_int_equal(sc->open_clients, 0);

  /* Verified by default: the self-signed certificate is refused. */
  assert_false(mc_reached(&a[0], PARLEY_CONN_HANDSHAKE));
  assert_int_equal(a[0].states[1], PARLEY_CONN_BACKOFF);
  assert_int_equal(a[0].status[1], PARLEY_ETLS);
  /* Relaxed on request, or verified against the given CA. */
  assert_true(mc_reached(&a[1], PARLEY_CONN_READY));
  assert_true(mc_reached(&a[2], PARLEY_CONN_READY));
  for (int k = 0; k < 3; k++)
    assert_int_equal(a[k].states[a[k].n - 1], PARLEY_CONN_CLOSED);

  fp_destroy_end(&sc->peer);
  for (int k = 0; k < 3; k++)
    parley_client_free(a[k].c);
  assert_int_equal(uv_loop_close(&sc->loop), 0);
  free(a);
  free(sc);
}

/* ------------------------------------------------------------ options */

static void test_options_validation(void **state) {
  (void)state;
  parley_client *c = NULL;
  parley_client_options o = PARLEY_CLIENT_OPTIONS_INIT;
  o.url = "ws://127.0.0.1:1/";
  o.principal = "alice";
  o.role = PARLEY_ROLE_CUSTOMER;
  assert_int_equal(parley_client_new(NULL, &c), PARLEY_EINVAL);
  assert_int_equal(parley_client_new(&o, NULL), PARLEY_EINVAL);

  parley_client_options b = o;
  b.struct_version = 99;
  assert_int_equal(parley_client_new(&b, &c), PARLEY_EINVAL);
  b = o;
  b.url = "http://127.0.0.1/";
  assert_int_equal(parley_client_new(&b, &c), PARLEY_EINVAL);
  b = o;
  b.url = NULL;
  assert_int_equal(parley_client_new(&b, &c), PARLEY_EINVAL);
  b = o;
  b.principal = "";
  assert_int_equal(parley_client_new(&b, &c), PARLEY_EINVAL);
  b = o;
  b.role = PARLEY_ROLE_SYSTEM;
  assert_int_equal(parley_client_new(&b, &c), PARLEY_EINVAL);
  b = o;
  b.role = PARLEY_ROLE_UNSPECIFIED;
  assert_int_equal(parley_client_new(&b, &c), PARLEY_EINVAL);
  b = o;
  b.token = "abc\r\nX-Injected: 1";
  assert_int_equal(parley_client_new(&b, &c), PARLEY_EINVAL);
  b = o;
  b.n_queues = 1;
  assert_int_equal(parley_client_new(&b, &c), PARLEY_EINVAL);
  assert_null(c);

  /* Options are copied: the caller's strings may go away. */
  char url[64], principal[16];
  strcpy(url, "wss://127.0.0.1:1/x");
  strcpy(principal, "bob");
  const char *queues[] = {"billing"};
  b = o;
  b.url = url;
  b.principal = principal;
  b.role = PARLEY_ROLE_AGENT;
  b.queues = queues;
  b.n_queues = 1;
  assert_int_equal(parley_client_new(&b, &c), 0);
  memset(url, 0, sizeof url);
  memset(principal, 0, sizeof principal);
  assert_int_equal(parley_client_state(c), PARLEY_CONN_IDLE);
  /* Stop before start closes at once; start afterwards is refused. */
  assert_int_equal(parley_client_stop(c, 0), 0);
  assert_int_equal(parley_client_state(c), PARLEY_CONN_CLOSED);
  assert_int_equal(parley_client_start(c), PARLEY_ESTATE);
  parley_client_free(c);
  parley_client_free(NULL);

  /* An owned loop is created and closed with the client. */
  assert_int_equal(parley_client_new(&o, &c), 0);
  assert_non_null(parley_client_loop(c));
  parley_client_stats st;
  parley_client_stats_get(c, &st);
  assert_int_equal(st.sends, 0);
  parley_client_free(c);
}

int main(void) {
  lws_set_log_level(LLL_ERR, NULL);
  /* PARLEY_TEST_FILTER=test_tls* runs one scenario alone. */
  if (getenv("PARLEY_TEST_FILTER"))
    cmocka_set_test_filter(getenv("PARLEY_TEST_FILTER"));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_options_validation),
      cmocka_unit_test(test_session_resume_and_clean_stop),
      cmocka_unit_test(test_oversize_messages_close_4002),
      cmocka_unit_test(test_free_while_ready),
      cmocka_unit_test(test_refused_backoff_own_loop),
      cmocka_unit_test(test_stop_drains_then_fails_pending_send),
      cmocka_unit_test(test_stop_during_handshake),
      cmocka_unit_test(test_two_clients_one_loop),
      cmocka_unit_test(test_tls_verification),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
