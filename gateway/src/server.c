/* libwebsockets glue and the gateway's lifecycle: one lws context on the
 * caller's libuv loop (foreign loop), a tick timer for heartbeats and
 * redelivery, and a check handle that runs the group commit once per loop
 * iteration, after every frame that arrived in it has been read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libwebsockets.h>
#include <sodium.h>

#include <parley/error.h>

#include "gw.h"
#include "util/clock.h"
#include "web.h"

#define E(x) PARLEY__V1__ERROR_CODE__ERROR_##x

uint64_t pg_gateway_last_seq(pg_gateway *g, const char *conversation) {
  pg_conv *cv = g && g->store ? pg_router_conv(g, conversation) : NULL;
  return cv ? cv->pub.last_seq : 0;
}

/* --------------------------------------------------------- connections */

static void conn_free(pg_conn *c) {
  pg_out_forget(c);
  pg_conn_free_out(c);
  size_t i = 0;
  void *v;
  while (gw_map_next(&c->streams, &i, NULL, &v)) free(v);
  gw_map_clear(&c->streams);
  c->wait_head = c->wait_tail = NULL;
  for (size_t k = 0; k < c->n_queues; k++) free(c->queues[k]);
  free(c->queues);
  free(c->principal);
  free(c->device);
  free(c->locale);
  pt_reasm_free(&c->rx);
  pg_conn_drop_token(c);
  free(c);
}

static void conn_unlink(pg_gateway *g, pg_conn *c) {
  pg_router_unindex(c);
  if (c->prev) c->prev->next = c->next;
  else g->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  g->n_conns--;
}

void pg_conn_drop_token(pg_conn *c) {
  if (!c->header_token) return;
  sodium_memzero(c->header_token, strlen(c->header_token));
  free(c->header_token);
  c->header_token = NULL;
}

static void capture_token(pg_conn *c, struct lws *wsi) {
  char buf[PG_TOKEN_MAX + 16];
  int n = lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_HTTP_AUTHORIZATION);
  if (n > 7 && strncasecmp(buf, "Bearer ", 7) == 0) {
    const char *t = buf + 7;
    while (*t == ' ') t++;
    size_t len = strnlen(t, PG_TOKEN_MAX - 1);
    pg_conn_drop_token(c);
    c->header_token = malloc(len + 1);
    if (c->header_token) {
      memcpy(c->header_token, t, len);
      c->header_token[len] = '\0';
    }
  }
  sodium_memzero(buf, sizeof buf);
}

static int on_receive(pg_conn *c, struct lws *wsi, const void *in, size_t len) {
  c->last_rx_ms = pg_mono_ms();
  if (c->state == PG_CS_CLOSING) return 0;
  /* Frames travel in binary messages only. A text message must be UTF-8
   * (RFC 6455) and is no Frame: decoding it as protobuf would answer a
   * client's mistake with a confusing MALFORMED, so it is refused by name. */
  if (!c->rx.active && lws_is_first_fragment(wsi) && !lws_frame_is_binary(wsi)) {
    pg_conn_error(c, E(MALFORMED), true,
                  "text WebSocket messages are not part of the protocol: send each Frame in a "
                  "binary message", NULL, NULL, 0, 0);
    return 0;
  }
  /* lws hands a message over in pieces: the fragments of the WebSocket
   * message, and each fragment in as many callbacks as its bytes took. The
   * SDK's reassembler (fuzzed) glues them under the frame limit. */
  size_t remaining = lws_remaining_packet_payload(wsi);
  bool last = lws_is_final_fragment(wsi) && remaining == 0;
  const uint8_t *msg = NULL;
  size_t msg_len = 0;
  int rc;
  /* The frame header announces the rest of this fragment: an oversized
   * message is refused before any of it is buffered. */
  if (remaining > c->rx.max || pt_reasm_would_exceed(&c->rx, len + remaining))
    rc = PARLEY_ETOOBIG;
  else
    rc = pt_reasm_feed(&c->rx, in, len, !c->rx.active, last, &msg, &msg_len);
  if (rc == PARLEY_ETOOBIG) {
    pt_reasm_reset(&c->rx);
    pg_conn_error(c, E(FRAME_TOO_LARGE), true, "frame larger than max_frame_bytes", NULL, NULL,
                  0, 0);
  } else if (rc == PARLEY_ENOMEM) {
    pg_conn_error(c, E(INTERNAL), true, "out of memory", NULL, NULL, 0, 1000);
  } else if (rc < 0) {
    pg_conn_error(c, E(MALFORMED), true, "WebSocket fragments do not form a message", NULL,
                  NULL, 0, 0);
  } else if (rc == 1) {
    pg_session_frame(c, msg, msg_len);
  }
  return 0;
}

static int ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                       size_t len) {
  pg_conn **slot = user;
  struct lws_context *ctx = lws_get_context(wsi);
  pg_gateway *g = ctx ? lws_context_user(ctx) : NULL;
  switch (reason) {
  case LWS_CALLBACK_ESTABLISHED: {
    if (!g || !slot) return -1;
    pg_conn *c = calloc(1, sizeof *c);
    if (!c) return -1;
    c->g = g;
    c->wsi = wsi;
    c->id = ++g->next_conn_id;
    c->last_rx_ms = c->last_tx_ms = c->tokens_ms = pg_mono_ms();
    c->tokens = g->cfg->burst;
    pt_reasm_init(&c->rx, g->cfg->max_frame_bytes);
    capture_token(c, wsi);
    c->next = g->conns;
    if (g->conns) g->conns->prev = c;
    g->conns = c;
    g->n_conns++;
    *slot = c;
    if (g->stopping) {
      pg_conn_error(c, E(SHUTTING_DOWN), true, "the gateway is shutting down", NULL, NULL, 0,
                    1000);
    } else if (g->n_conns > g->cfg->max_connections) {
      pg_conn_error(c, E(TOO_MANY_CONNECTIONS), true, "the gateway is full", NULL, NULL, 0,
                    1000);
    }
    return 0;
  }
  case LWS_CALLBACK_RECEIVE:
    if (!slot || !*slot) return -1;
    return on_receive(*slot, wsi, in, len);
  case LWS_CALLBACK_SERVER_WRITEABLE:
    if (!slot || !*slot) return -1;
    return pg_conn_write(*slot, wsi);
  case LWS_CALLBACK_CLOSED: {
    if (!slot || !*slot) return 0;
    pg_conn *c = *slot;
    *slot = NULL;
    c->wsi = NULL;
    int prev = c->state;
    c->state = PG_CS_CLOSING;
    if (prev != PG_CS_HELLO || c->role) pg_session_closed(c);
    conn_unlink(g, c);
    conn_free(c);
    return 0;
  }
  default:
    break;
  }
  return lws_callback_http_dummy(wsi, reason, user, in, len);
}

/* A 1 KiB receive buffer per connection instead of lws's 4 KiB default:
 * most frames fit in it, larger ones arrive in pieces that on_receive
 * reassembles anyway, and at 10,000 idle connections the default buffer was
 * most of the gateway's memory (bench/memory). A send is still written in
 * one piece up to 64 KiB (tx_packet_size; 0 would limit it to the receive
 * buffer's size). */
static const struct lws_protocols protocols[] = {
    {"parley.v1", ws_callback, sizeof(pg_conn *), 1024, 0, NULL, 65536},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* ----------------------------------------------------------------- timers */

static void on_tick(uv_timer_t *t) {
  pg_gateway *g = t->data;
  if (g->stopping) return;
  uint64_t now = pg_mono_ms(), hb = g->cfg->heartbeat_ms;
  for (pg_conn *c = g->conns; c; c = c->next) {
    if (!c->wsi || c->close_code) continue;
    if (now - c->last_rx_ms >= 2 * hb) {
      /* Silent for two intervals: dead. Its conversations move now, not
       * when the socket finally closes. */
      pg_conn_close(c, 4000 + E(PROTOCOL), "heartbeat timeout");
      continue;
    }
    if (c->state == PG_CS_OPEN && now - c->last_tx_ms >= hb) {
      Parley__V1__Ping p = PARLEY__V1__PING__INIT;
      p.nonce = now;
      p.time_ms = (int64_t)pg_now_ms();
      pw_frame f = PARLEY__V1__FRAME__INIT;
      f.body_case = PARLEY__V1__FRAME__BODY_PING;
      f.ping = &p;
      pg_conn_send_frame(c, &f);
    }
  }
  pg_router_redeliver(g, now);
}

/* busy_poll_us: the idle handle keeps libuv polling with a zero timeout
 * until spin_until_ns, then stops itself and the loop sleeps again. */
static void on_spin(uv_idle_t *h) {
  pg_gateway *g = h->data;
  if (pu_clock_ns() < g->spin_until_ns) return;
  uv_idle_stop(h);
  g->spin_on = false;
}

/* After a write the peer's answer usually follows within tens of
 * microseconds (a bot's reply, a customer's next message): with
 * busy_poll_us set the loop waits for it awake. On a virtual machine an
 * idle CPU's wake-up costs 10-20 us on each side of a round trip
 * (docs/benchmarks.md, "The loop thread and the ACK's path"), which
 * this spends CPU time to avoid. */
static void spin_after_write(pg_gateway *g) {
  g->spin_until_ns = pu_clock_ns() + (uint64_t)g->cfg->busy_poll_us * 1000u;
  if (g->spin_on || g->stopping) return;
  g->spin_on = true;
  uv_idle_start(&g->spin, on_spin);
}

/* Rounds of flush and completions one iteration runs before it leaves
 * the rest to the next one (completions can queue more: placements). */
#define PG_CHECK_ROUNDS 4

/* Once per loop iteration, after every frame that arrived in it was read:
 * what they changed goes to the store as one batch. A batch the store
 * committed right away on this thread (SQLite's inline commit of a
 * one-event batch) is answered in the same iteration: its completion runs
 * here, and its SendAck goes out with this iteration's send(), instead of
 * after an eventfd write and another pass through the loop (three system
 * calls and a poll on the ACK's path). */
static void on_check(uv_check_t *h) {
  pg_gateway *g = h->data;
  bool more = true;
  for (int i = 0; more && i < PG_CHECK_ROUNDS; i++) {
    pg_apply_flush(g);
    more = g->store && pg_store_poll(g->store) > 0;
  }
  /* Completions of the last round may have queued operations or left
   * finished batches: the store's async wakes the loop for them. */
  if (more) pg_store_wake(g->store);
  if (g->cfg->busy_poll_us && g->dirty_head) spin_after_write(g);
  pg_out_flush(g);
}

/* ---------------------------------------------------------------- lifecycle */

static void no_signals(void *handle, int signum) {
  (void)handle;
  (void)signum;
}

/* Opens the store in cfg's data_dir and loads the hot state's filter of
 * known message ids. 0, or the status after printing why. */
static int gw_open_store(pg_gateway *g) {
  char err[512];
  pg_store_options so = PG_STORE_OPTIONS_INIT;
  so.data_dir = g->cfg->data_dir;
  so.backend = g->cfg->storage_kind ? g->cfg->storage_kind : "sqlite";
  so.url = g->cfg->storage_url;
  so.durability = g->cfg->durability;
  so.loop = g->loop;
  so.merge_batches = g->cfg->group_commit;
  so.test_hold_ms = g->cfg->fault_writer_hold_ms;
  if (so.test_hold_ms)
    fprintf(stderr, "gateway: warning: test fault on (the writer holds each batch %u ms): for "
                    "tests only\n", so.test_hold_ms);
  int rc = pg_store_open(&so, &g->store, err, sizeof err);
  if (rc == 0) pg_store_on_remote(g->store, pg_hot_remote, g);
  /* on_check polls the store after each flush (pg_store_set_loop_polls). */
  if (rc == 0) pg_store_set_loop_polls(g->store, true);
  if (rc == 0 && (rc = pg_hot_init(g)) != 0)
    snprintf(err, sizeof err, "%s: reading the known message ids: %s", g->cfg->data_dir,
             pg_store_errmsg(g->store));
  if (rc) fprintf(stderr, "gateway: %s\n", err);
  return rc;
}

/* Test switches and plain tokens are for development: each start says so. */
static void gw_warn_development(pg_gateway *g) {
  const pg_config *fc = g->cfg;
  if (pg_faults_configured(fc)) {
    g->fault_rng = fc->fault_seed;
    fprintf(stderr,
            "gateway: warning: test faults on (drop/duplicate/reorder pushes %u/%u/%u%%, "
            "drop/duplicate ACKs %u/%u%%, seed %llu): for tests only\n",
            fc->fault_drop_push, fc->fault_dup_push, fc->fault_reorder_push, fc->fault_drop_ack,
            fc->fault_dup_ack, (unsigned long long)fc->fault_seed);
  }
  if (fc->plain_tokens)
    fprintf(stderr, "gateway: warning: plain tokens or secrets in %s are for development only\n",
            fc->name ? fc->name : "the configuration");
}

/* The lws context on the caller's loop and the gateway's vhost, listening.
 * 0 or PARLEY_EIO. */
static int gw_listen(pg_gateway *g) {
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  g->foreign[0] = g->loop;
  info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
  if (g->cfg->tls_cert) info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
  info.foreign_loops = g->foreign;
  info.signal_cb = no_signals;
  info.user = g;
  info.pcontext = &g->ctx_alive;
  g->ctx = lws_create_context(&info);
  if (!g->ctx) return PARLEY_EIO;
  g->ctx_alive = g->ctx;
  memset(&info, 0, sizeof info);
  info.port = g->cfg->port;
  info.iface = g->cfg->listen;
  info.protocols = protocols;
  info.vhost_name = "parley-gateway";
  info.options = LWS_SERVER_OPTION_LIBUV;
  if (g->cfg->tls_cert) {
    info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.ssl_cert_filepath = g->cfg->tls_cert;
    info.ssl_private_key_filepath = g->cfg->tls_key;
    /* lws 4.1.6 gives every TLS vhost a client SSL_CTX as well, loaded with
     * the system CA store, and frees it on destroy only if it finds its
     * bookkeeping under an OpenSSL ex_data index that lives in a
     * process-wide variable, renewed by every context created with
     * DO_SSL_GLOBAL_INIT (lws_ssl_destroy_client_ctx in
     * lib/tls/openssl/openssl-ssl.c). Once a client context (a
     * parley_client in the same process) has been created after this one,
     * that lookup fails and the SSL_CTX leaks. The gateway makes no client
     * connections, so it hands lws an empty client SSL_CTX of its own,
     * which lws never frees, and frees it after the context is gone. */
    g->vh_client_ssl = SSL_CTX_new(TLS_client_method());
    info.provided_client_ssl_ctx = g->vh_client_ssl;
  }
  pg_web_vhost_info(g->cfg, &info);
  if (g->cfg->tls_cert && !g->vh_client_ssl)
    g->vh = NULL;
  else
    g->vh = lws_create_vhost(g->ctx, &info);
  if (!g->vh) {
    fprintf(stderr, "gateway: cannot listen on %s:%d\n", g->cfg->listen, g->cfg->port);
    return PARLEY_EIO;
  }
  g->port = lws_get_vhost_listen_port(g->vh);
  return 0;
}

/* The heartbeat and redelivery tick (a quarter of the shorter of the two
 * intervals, within 10 ms to 1 s), the per-iteration flush, the busy-poll
 * idle handle and the stop timer: the four handles pg_gateway_stop
 * closes. */
static void gw_start_timers(pg_gateway *g) {
  uint64_t tick = g->cfg->heartbeat_ms < g->cfg->ack_timeout_ms ? g->cfg->heartbeat_ms
                                                                 : g->cfg->ack_timeout_ms;
  tick /= 4;
  if (tick < 10) tick = 10;
  if (tick > 1000) tick = 1000;
  pg_router_init(g);
  uv_timer_init(g->loop, &g->tick);
  g->tick.data = g;
  uv_timer_start(&g->tick, on_tick, tick, tick);
  uv_check_init(g->loop, &g->check);
  g->check.data = g;
  uv_check_start(&g->check, on_check);
  uv_unref((uv_handle_t *)&g->check);
  uv_idle_init(g->loop, &g->spin);
  g->spin.data = g;
  uv_unref((uv_handle_t *)&g->spin);
  uv_timer_init(g->loop, &g->stop_timer);
  g->stop_timer.data = g;
  g->handles_open = 4;
}

/* Undoes a pg_gateway_new that failed before its own loop handles
 * existed: the lws context, the hot state, the store, the copied config.
 * lws and the store close handles on the caller's loop, so it runs a few
 * passes for them (as pg_gateway_free does), or the caller's
 * uv_loop_close would find them open and leak the loop. */
static void gw_discard(pg_gateway *g) {
  for (int i = 0; i < 8 && g->ctx_alive; i++) {
    lws_context_destroy(g->ctx);
    for (int k = 0; k < 4; k++) uv_run(g->loop, UV_RUN_NOWAIT);
  }
  /* Only once lws is done with the vhost that points at it. */
  if (g->vh_client_ssl && !g->ctx_alive) SSL_CTX_free(g->vh_client_ssl);
  g->ctx = NULL;
  pg_hot_free(g);
  if (g->store) {
    pg_store_close(g->store, NULL, NULL);
    for (int i = 0; i < 4; i++) uv_run(g->loop, UV_RUN_NOWAIT);
  }
  pg_config_free(g->cfg);
  free(g);
}

int pg_gateway_new(uv_loop_t *loop, const pg_config *cfg, pg_gateway **out) {
  *out = NULL;
  if (sodium_init() < 0) return PARLEY_EINTERNAL;
  pg_gateway *g = calloc(1, sizeof *g);
  if (!g) return PARLEY_ENOMEM;
  g->loop = loop;
  g->boot_ms = pg_now_ms();
  g->cfg = pg_config_dup(cfg);
  if (!g->cfg) {
    free(g);
    return PARLEY_ENOMEM;
  }
  int rc = gw_open_store(g);
  if (rc == 0) {
    gw_warn_development(g);
    rc = gw_listen(g);
  }
  if (rc) {
    gw_discard(g);
    return rc;
  }
  gw_start_timers(g);
  /* From here the loop holds the gateway's handles: pg_gateway_free
   * closes them. */
  if (pg_web_start(g) != 0) {
    pg_gateway_free(g);
    return PARLEY_EIO;
  }
  *out = g;
  return 0;
}

int pg_gateway_port(const pg_gateway *g) { return g ? g->port : -1; }

size_t pg_gateway_hot_bytes(const pg_gateway *g, size_t *conversations) {
  if (conversations) *conversations = g ? g->convs.len : 0;
  return g ? pg_hot_bytes(g) : 0;
}

static void handle_gone(pg_gateway *g) {
  if (--g->handles_open == 0 && g->done) g->done(g->done_ud);
}

static void on_handle_closed(uv_handle_t *h) { handle_gone(h->data); }
static void on_store_closed(void *ud) { handle_gone(ud); }

/* Answers what is queued and waits for the store, then closes it. */
static void close_store(pg_gateway *g) {
  pg_apply_drain(g);
  g->handles_open++;
  pg_store *st = g->store;
  g->store = NULL;
  pg_store_close(st, on_store_closed, g);
}

/* Stop runs in phases on a short timer: connections close (1001) and
 * drain, then the lws context is destroyed and its handles close on the
 * loop, then the database and our own handles. */
static void on_stop_timer(uv_timer_t *t) {
  pg_gateway *g = t->data;
  uint64_t waited = pg_mono_ms() - g->stop_started_ms;
  pg_apply_flush(g);
  if (g->store) pg_store_poll(g->store);
  if (!g->destroy_calls && g->n_conns && waited < 1000) return;
  /* With a foreign loop lws finishes destroying its context in steps: the
   * first call closes its handles, which needs the loop to run; later calls
   * free what is left and finally clear ctx_alive (info.pcontext). */
  if (g->ctx_alive && g->destroy_calls < 8) {
    /* Each step gets a few loop passes: lws closes some handles from the
     * close callbacks of others, and the next step unloads its event
     * library plugin. */
    if (g->destroy_calls && ++g->destroy_wait < 3) return;
    g->destroy_wait = 0;
    g->destroy_calls++;
    lws_context_destroy(g->ctx);
    return;
  }
  g->ctx = NULL;
  uv_timer_stop(t);
  close_store(g);
  uv_close((uv_handle_t *)&g->tick, on_handle_closed);
  uv_close((uv_handle_t *)&g->check, on_handle_closed);
  uv_close((uv_handle_t *)&g->spin, on_handle_closed);
  uv_close((uv_handle_t *)&g->stop_timer, on_handle_closed);
}

void pg_gateway_stop(pg_gateway *g, void (*done)(void *ud), void *ud) {
  if (g->stopping) return;
  g->stopping = true;
  g->done = done;
  g->done_ud = ud;
  g->stop_started_ms = pg_mono_ms();
  /* What is queued is committed and answered before the connections
   * close: the loop waits for the store here, once, at shutdown, so the
   * answers are queued ahead of the Close frames. */
  pg_apply_drain(g);
  for (pg_conn *c = g->conns; c; c = c->next) pg_conn_close(c, 1001, "gateway going away");
  uv_timer_stop(&g->tick);
  uv_timer_start(&g->stop_timer, on_stop_timer, 10, 10);
}

void pg_gateway_free(pg_gateway *g) {
  if (!g) return;
  if (!g->stopping) {
    /* Freed without pg_gateway_stop (an error path of the embedder): stop
     * here, running the loop just long enough for lws and our handles to
     * close, since their memory is about to go. */
    g->stopping = true;
    pg_apply_drain(g);
    uv_timer_stop(&g->tick);
    for (int i = 0; i < 8 && g->ctx_alive; i++) {
      lws_context_destroy(g->ctx);
      /* Several passes: lws closes some handles from close callbacks. */
      for (int k = 0; k < 4; k++) uv_run(g->loop, UV_RUN_NOWAIT);
    }
    g->ctx = NULL;
    close_store(g);
    uv_close((uv_handle_t *)&g->tick, on_handle_closed);
    uv_close((uv_handle_t *)&g->check, on_handle_closed);
    uv_close((uv_handle_t *)&g->spin, on_handle_closed);
    uv_close((uv_handle_t *)&g->stop_timer, on_handle_closed);
    for (int i = 0; i < 100 && g->handles_open > 0; i++) uv_run(g->loop, UV_RUN_NOWAIT);
  }
  if (g->ctx && g->ctx_alive) lws_context_destroy(g->ctx);
  while (g->conns) {
    pg_conn *c = g->conns;
    conn_unlink(g, c);
    conn_free(c);
  }
  pg_apply_free(g);
  pg_hot_free(g);
  free(g->wbuf);
  gw_map_clear(&g->by_principal);
  gw_map_clear(&g->seen);
  /* Only once lws is done with the vhost that points at it; a context that
   * never finished closing keeps it (better a leak than a use after free). */
  if (g->vh_client_ssl && !g->ctx_alive) SSL_CTX_free(g->vh_client_ssl);
  if (g->store) {
    /* Only when the gateway never ran its stop: the loop gets a few passes
     * to close the store's handle. */
    pg_apply_drain(g);
    pg_store_close(g->store, NULL, NULL);
    g->store = NULL;
    for (int i = 0; i < 4; i++) uv_run(g->loop, UV_RUN_NOWAIT);
  }
  pg_config_free(g->cfg);
  free(g);
}
