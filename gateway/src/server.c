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
#include "web.h"

#define E(x) PARLEY__V1__ERROR_CODE__ERROR_##x

/* lws 4.1 keeps the Close opcode out of its public enum (value 4, between
 * LWS_WRITE_HTTP and LWS_WRITE_PING); lws itself writes Close frames with it. */
#define PG_LWS_WRITE_CLOSE ((enum lws_write_protocol)4)

uint64_t pg_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t pg_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------ outgoing */

static bool pg_faults_configured(const pg_config *fc) {
  return fc->fault_drop_push || fc->fault_dup_push || fc->fault_reorder_push ||
         fc->fault_drop_ack || fc->fault_dup_ack;
}

void pg_gateway_set_faults(pg_gateway *g, bool on) {
  if (!g) return;
  g->fault_rng = on && pg_faults_configured(g->cfg) ? g->cfg->fault_seed : 0;
}

void pg_gateway_fault_counts(const pg_gateway *g, uint64_t *dropped, uint64_t *doubled,
                             uint64_t *reordered) {
  *dropped = g ? g->fault_counts[0] : 0;
  *doubled = g ? g->fault_counts[1] : 0;
  *reordered = g ? g->fault_counts[2] : 0;
}

uint64_t pg_gateway_last_seq(pg_gateway *g, const char *conversation) {
  pg_convrow r;
  if (!g || !g->db || pg_db_conv_get(g->db, conversation, &r) != 0) return 0;
  uint64_t last = r.last_seq;
  pg_convrow_clear(&r);
  return last;
}

static void outq_push(pg_conn *c, pg_outbuf *b) {
  if (c->out_tail) c->out_tail->next = b;
  else c->out_head = b;
  c->out_tail = b;
  c->out_bytes += b->len;
}

/* Percent chance from the test switches' generator. */
static bool fault_roll(pg_gateway *g, uint32_t percent) {
  if (!percent) return false;
  uint64_t x = g->fault_rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  g->fault_rng = x;
  return (x * 2685821657736338717ULL) % 100 < percent;
}

static pg_outbuf *outbuf_copy(const pg_outbuf *b) {
  pg_outbuf *d = calloc(1, sizeof *d);
  if (!d) return NULL;
  d->buf = malloc(LWS_PRE + b->len + 1);
  if (!d->buf) {
    free(d);
    return NULL;
  }
  memcpy(d->buf, b->buf, LWS_PRE + b->len);
  d->len = b->len;
  return d;
}

/* The test switches (config `faults:`, off unless set) act on pushes and
 * send ACKs only, the frames whose loss, doubling and disorder the
 * protocol must absorb: a dropped Deliver comes again by redelivery or a
 * client's gap fetch, a dropped SendAck by the client's retry and the
 * gateway's dedup. Returns true when b was consumed. */
static bool apply_faults(pg_conn *c, const pw_frame *f, pg_outbuf *b) {
  pg_gateway *g = c->g;
  const pg_config *cfg = g->cfg;
  bool push = f->body_case == PARLEY__V1__FRAME__BODY_DELIVER;
  bool ack = f->body_case == PARLEY__V1__FRAME__BODY_SEND_ACK;
  if (!push && !ack) return false;
  if (fault_roll(g, push ? cfg->fault_drop_push : cfg->fault_drop_ack)) {
    free(b->buf);
    free(b);
    g->fault_counts[0]++;
    return true;
  }
  if (fault_roll(g, push ? cfg->fault_dup_push : cfg->fault_dup_ack)) {
    pg_outbuf *d = outbuf_copy(b);
    if (d) {
      outq_push(c, d);
      g->fault_counts[1]++;
    }
  }
  if (push && !c->fault_held && fault_roll(g, cfg->fault_reorder_push)) {
    c->fault_held = b;
    g->fault_counts[2]++;
    return true;
  }
  return false;
}

int pg_conn_send_frame(pg_conn *c, const pw_frame *f) {
  if (!c->wsi || c->close_code) return PARLEY_EDISCONNECTED;
  pg_outbuf *b = calloc(1, sizeof *b);
  if (!b) return PARLEY_ENOMEM;
  if (pw_encode(f, LWS_PRE, &b->buf, &b->len) != 0) {
    free(b);
    return PARLEY_ENOMEM;
  }
  if (c->g->fault_rng && apply_faults(c, f, b)) {
    lws_callback_on_writable(c->wsi);
    return 0;
  }
  /* A peer that does not read is cut off rather than buffered forever. */
  if (c->out_bytes + b->len > PG_OUTQ_MAX_BYTES) {
    free(b->buf);
    free(b);
    pg_conn_close(c, 4000 + E(BUSY), "peer does not read");
    return PARLEY_EBACKPRESSURE;
  }
  outq_push(c, b);
  /* A Deliver held back by the test switches goes after the next frame. */
  if (c->fault_held) {
    outq_push(c, c->fault_held);
    c->fault_held = NULL;
  }
  c->last_tx_ms = pg_mono_ms();
  lws_callback_on_writable(c->wsi);
  return 0;
}

void pg_conn_close(pg_conn *c, int code, const char *msg) {
  if (!c->wsi || c->close_code) return;
  c->close_code = code;
  snprintf(c->close_msg, sizeof c->close_msg, "%s", msg ? msg : "");
  if (c->state == PG_CS_OPEN) c->state = PG_CS_CLOSING;
  else if (c->state == PG_CS_HELLO) c->state = PG_CS_CLOSING;
  lws_callback_on_writable(c->wsi);
}

void pg_conn_error(pg_conn *c, Parley__V1__ErrorCode code, bool fatal, const char *msg,
                   const char *conv, const ProtobufCBinaryData *msg_id, uint64_t request_id,
                   uint32_t retry_after_ms) {
  Parley__V1__Error e = PARLEY__V1__ERROR__INIT;
  e.code = code;
  e.message = (char *)(msg ? msg : "");
  if (conv) e.conversation = (char *)conv;
  if (msg_id) e.client_msg_id = *msg_id;
  e.request_id = request_id;
  e.retry_after_ms = retry_after_ms;
  e.fatal = fatal;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_ERROR;
  f.error = &e;
  pg_conn_send_frame(c, &f);
  if (fatal) {
    bool was_bot = c->role == PG_ROLE_BOT && c->state == PG_CS_OPEN;
    pg_conn_close(c, pw_close_code(code), msg);
    if (was_bot) pg_router_conn_gone(c);
  }
}

void pg_gateway_enqueue(pg_gateway *g, pg_conn *c, pw_frame *f) {
  /* One loop iteration's writes are bounded; past that the sender waits. */
  if (g->n_ops >= PG_MAX_OPS) {
    const Parley__V1__Send *s = f->body_case == PARLEY__V1__FRAME__BODY_SEND ? f->send : NULL;
    pg_conn_error(c, E(BUSY), false, "too many pending writes", s ? s->conversation : NULL,
                  s ? &s->client_msg_id : NULL,
                  f->body_case == PARLEY__V1__FRAME__BODY_COMMIT ? f->commit->request_id : 0,
                  100);
    if (s) {
      Parley__V1__SendAck a = PARLEY__V1__SEND_ACK__INIT;
      a.client_msg_id = s->client_msg_id;
      a.conversation = s->conversation;
      a.error = E(BUSY);
      a.message = "too many pending writes";
      pw_frame out = PARLEY__V1__FRAME__INIT;
      out.body_case = PARLEY__V1__FRAME__BODY_SEND_ACK;
      out.send_ack = &a;
      pg_conn_send_frame(c, &out);
    }
    pw_frame_free(f);
    return;
  }
  pg_op *op = calloc(1, sizeof *op);
  if (op) {
    op->principal = strdup(c->principal);
    op->device = strdup(c->device);
    op->locale = strdup(c->locale ? c->locale : "");
  }
  if (!op || !op->principal || !op->device || !op->locale) {
    if (op) {
      free(op->principal);
      free(op->device);
      free(op->locale);
      free(op);
    }
    pw_frame_free(f);
    pg_conn_error(c, E(INTERNAL), false, "out of memory", NULL, NULL, 0, 100);
    return;
  }
  op->conn = c;
  op->frame = f;
  op->role = c->role;
  if (g->ops_tail) g->ops_tail->next = op;
  else g->ops_head = op;
  g->ops_tail = op;
  g->n_ops++;
}

/* --------------------------------------------------------- connections */

static void conn_free(pg_conn *c) {
  if (c->fault_held) {
    free(c->fault_held->buf);
    free(c->fault_held);
  }
  while (c->out_head) {
    pg_outbuf *b = c->out_head;
    c->out_head = b->next;
    free(b->buf);
    free(b);
  }
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
  free(c->rx);
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
  pg_gateway *g = c->g;
  c->last_rx_ms = pg_mono_ms();
  if (c->state == PG_CS_CLOSING) return 0;
  if (lws_is_first_fragment(wsi)) {
    c->rx_len = 0;
    c->rx_discard = false;
  }
  if (c->rx_discard) return 0;
  size_t remaining = lws_remaining_packet_payload(wsi);
  /* The size is checked against what the frame header announces, before
   * buffering or decoding anything. */
  if (c->rx_len + len + remaining > g->cfg->max_frame_bytes) {
    c->rx_discard = true;
    pg_conn_error(c, E(FRAME_TOO_LARGE), true, "frame larger than max_frame_bytes", NULL, NULL,
                  0, 0);
    return 0;
  }
  if (c->rx_len + len > c->rx_cap) {
    size_t ncap = c->rx_len + len + remaining;
    uint8_t *t = realloc(c->rx, ncap);
    if (!t) {
      pg_conn_error(c, E(INTERNAL), true, "out of memory", NULL, NULL, 0, 1000);
      return 0;
    }
    c->rx = t;
    c->rx_cap = ncap;
  }
  if (len) memcpy(c->rx + c->rx_len, in, len);
  c->rx_len += len;
  if (!lws_is_final_fragment(wsi) || remaining) return 0;
  size_t n = c->rx_len;
  c->rx_len = 0;
  pg_session_frame(c, c->rx, n);
  /* Large reassembly buffers are not kept around between frames. */
  if (c->rx_cap > 64 * 1024) {
    free(c->rx);
    c->rx = NULL;
    c->rx_cap = 0;
  }
  return 0;
}

/* Frames written per writable callback at most (see on_writeable). */
#define PG_WRITES_PER_CALLBACK 32

static int on_writeable(pg_conn *c, struct lws *wsi) {
  if (c->out_head) {
    /* Several frames per callback while the socket takes them: a send
     * answers with a SendAck and pushes a Deliver, and one event loop
     * round trip (with its epoll changes) per frame cost more than the
     * frames. lws keeps any part the socket does not take and holds back
     * the next callback until it is out. The limit keeps one busy
     * connection from holding the loop. */
    int written = 0;
    do {
      pg_outbuf *b = c->out_head;
      c->out_head = b->next;
      if (!c->out_head) c->out_tail = NULL;
      c->out_bytes -= b->len;
      int n = lws_write(wsi, b->buf + LWS_PRE, b->len, LWS_WRITE_BINARY);
      free(b->buf);
      free(b);
      if (n < 0) return -1;
    } while (c->out_head && ++written < PG_WRITES_PER_CALLBACK && !lws_send_pipe_choked(wsi));
    if (c->out_head || c->close_code) lws_callback_on_writable(wsi);
    return 0;
  }
  if (c->close_code && !c->close_sent) {
    /* The Close frame is written here: returning -1 from a writeable
     * callback would drop the socket without one. The peer's echo then
     * ends the connection; the timeout covers a peer that never answers. */
    c->close_sent = true;
    uint8_t buf[LWS_PRE + 2 + sizeof c->close_msg];
    size_t ml = strlen(c->close_msg);
    buf[LWS_PRE] = (uint8_t)(c->close_code >> 8);
    buf[LWS_PRE + 1] = (uint8_t)c->close_code;
    memcpy(buf + LWS_PRE + 2, c->close_msg, ml);
    if (lws_write(wsi, buf + LWS_PRE, 2 + ml, PG_LWS_WRITE_CLOSE) < 0) return -1;
    lws_set_timeout(wsi, PENDING_TIMEOUT_CLOSE_ACK, 2);
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
    return on_writeable(*slot, wsi);
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
      bool was_bot = c->role == PG_ROLE_BOT && c->state == PG_CS_OPEN;
      pg_conn_close(c, 4000 + E(PROTOCOL), "heartbeat timeout");
      if (was_bot) pg_router_conn_gone(c);
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

static void on_check(uv_check_t *h) {
  pg_gateway *g = h->data;
  if (g->ops_head) pg_session_batch(g);
}

/* ---------------------------------------------------------------- lifecycle */

static void no_signals(void *handle, int signum) {
  (void)handle;
  (void)signum;
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
  char err[512];
  int rc = pg_db_open(&g->db, g->cfg->data_dir, g->cfg->durability, err, sizeof err);
  if (rc) {
    fprintf(stderr, "gateway: %s\n", err);
    pg_config_free(g->cfg);
    free(g);
    return rc;
  }
  if (pg_faults_configured(g->cfg)) {
    const pg_config *fc = g->cfg;
    g->fault_rng = fc->fault_seed;
    fprintf(stderr,
            "gateway: warning: test faults on (drop/duplicate/reorder pushes %u/%u/%u%%, "
            "drop/duplicate ACKs %u/%u%%, seed %llu): for tests only\n",
            fc->fault_drop_push, fc->fault_dup_push, fc->fault_reorder_push, fc->fault_drop_ack,
            fc->fault_dup_ack, (unsigned long long)fc->fault_seed);
  }
  if (g->cfg->plain_tokens)
    fprintf(stderr, "gateway: warning: plain tokens or secrets in %s are for development only\n",
            g->cfg->name ? g->cfg->name : "the configuration");

  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  g->foreign[0] = loop;
  info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
  if (g->cfg->tls_cert) info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
  info.foreign_loops = g->foreign;
  info.signal_cb = no_signals;
  info.user = g;
  info.pcontext = &g->ctx_alive;
  g->ctx = lws_create_context(&info);
  if (!g->ctx) {
    pg_db_close(g->db);
    pg_config_free(g->cfg);
    free(g);
    return PARLEY_EIO;
  }
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
    lws_context_destroy(g->ctx);
    g->ctx = NULL;
    if (g->vh_client_ssl) SSL_CTX_free(g->vh_client_ssl);
    pg_db_close(g->db);
    pg_config_free(g->cfg);
    free(g);
    return PARLEY_EIO;
  }
  g->port = lws_get_vhost_listen_port(g->vh);

  uint64_t tick = g->cfg->heartbeat_ms < g->cfg->ack_timeout_ms ? g->cfg->heartbeat_ms
                                                                 : g->cfg->ack_timeout_ms;
  tick /= 4;
  if (tick < 10) tick = 10;
  if (tick > 1000) tick = 1000;
  uv_timer_init(loop, &g->tick);
  g->tick.data = g;
  uv_timer_start(&g->tick, on_tick, tick, tick);
  uv_check_init(loop, &g->check);
  g->check.data = g;
  uv_check_start(&g->check, on_check);
  uv_unref((uv_handle_t *)&g->check);
  uv_timer_init(loop, &g->stop_timer);
  g->stop_timer.data = g;
  g->handles_open = 3;
  if (pg_web_start(g) != 0) {
    pg_gateway_free(g);
    return PARLEY_EIO;
  }
  *out = g;
  return 0;
}

int pg_gateway_port(const pg_gateway *g) { return g ? g->port : -1; }

static void on_handle_closed(uv_handle_t *h) {
  pg_gateway *g = h->data;
  if (--g->handles_open == 0 && g->done) g->done(g->done_ud);
}

/* Stop runs in phases on a short timer: connections close (1001) and
 * drain, then the lws context is destroyed and its handles close on the
 * loop, then the database and our own handles. */
static void on_stop_timer(uv_timer_t *t) {
  pg_gateway *g = t->data;
  uint64_t waited = pg_mono_ms() - g->stop_started_ms;
  if (g->ops_head) pg_session_batch(g);
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
  if (g->ops_head) pg_session_batch(g);
  pg_db_close(g->db);
  g->db = NULL;
  uv_close((uv_handle_t *)&g->tick, on_handle_closed);
  uv_close((uv_handle_t *)&g->check, on_handle_closed);
  uv_close((uv_handle_t *)&g->stop_timer, on_handle_closed);
}

void pg_gateway_stop(pg_gateway *g, void (*done)(void *ud), void *ud) {
  if (g->stopping) return;
  g->stopping = true;
  g->done = done;
  g->done_ud = ud;
  g->stop_started_ms = pg_mono_ms();
  if (g->ops_head) pg_session_batch(g);
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
    if (g->ops_head) pg_session_batch(g);
    uv_timer_stop(&g->tick);
    for (int i = 0; i < 8 && g->ctx_alive; i++) {
      lws_context_destroy(g->ctx);
      /* Several passes: lws closes some handles from close callbacks. */
      for (int k = 0; k < 4; k++) uv_run(g->loop, UV_RUN_NOWAIT);
    }
    g->ctx = NULL;
    uv_close((uv_handle_t *)&g->tick, on_handle_closed);
    uv_close((uv_handle_t *)&g->check, on_handle_closed);
    uv_close((uv_handle_t *)&g->stop_timer, on_handle_closed);
    for (int i = 0; i < 100 && g->handles_open > 0; i++) uv_run(g->loop, UV_RUN_NOWAIT);
  }
  if (g->ctx && g->ctx_alive) lws_context_destroy(g->ctx);
  while (g->conns) {
    pg_conn *c = g->conns;
    conn_unlink(g, c);
    conn_free(c);
  }
  size_t i = 0;
  void *v;
  while (gw_map_next(&g->convs, &i, NULL, &v)) {
    pg_conv *cv = v;
    pg_convrow_clear(&cv->row);
    free(cv);
  }
  gw_map_clear(&g->convs);
  gw_map_clear(&g->by_principal);
  gw_map_clear(&g->seen);
  gw_map_clear(&g->touched);
  while (g->ops_head) {
    pg_op *op = g->ops_head;
    g->ops_head = op->next;
    pw_frame_free(op->frame);
    free(op->principal);
    free(op->device);
    free(op->locale);
    free(op->outcomes);
    free(op);
  }
  /* Only once lws is done with the vhost that points at it; a context that
   * never finished closing keeps it (better a leak than a use after free). */
  if (g->vh_client_ssl && !g->ctx_alive) SSL_CTX_free(g->vh_client_ssl);
  pg_db_close(g->db);
  pg_config_free(g->cfg);
  free(g);
}
