/* A FAKE gateway for exact frame-sequence tests; see fake_peer.h. */
#include "fake_peer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ssl.h>

static fake_peer *peer_of(struct lws *wsi) {
  return lws_context_user(lws_get_context(wsi));
}

static void queue_push(fp_conn *c, fp_out *o) {
  o->next = NULL;
  if (c->q_tail)
    c->q_tail->next = o;
  else
    c->q_head = o;
  c->q_tail = o;
  if (c->wsi)
    lws_callback_on_writable(c->wsi);
}

static void queue_piece(fp_conn *c, const uint8_t *data, size_t len,
                        int flags) {
  fp_out *o = calloc(1, sizeof *o + LWS_PRE + len);
  if (!o)
    abort();
  o->len = len;
  o->flags = flags;
  if (len)
    memcpy(o->buf + LWS_PRE, data, len);
  queue_push(c, o);
}

void fp_send_raw(fp_conn *c, const uint8_t *data, size_t len, int fragments) {
  if (fragments < 1)
    fragments = 1;
  size_t off = 0;
  for (int i = 0; i < fragments; i++) {
    bool first = i == 0, last = i + 1 == fragments;
    size_t take = last ? len - off : len / (size_t)fragments;
    int flags = first ? LWS_WRITE_BINARY : LWS_WRITE_CONTINUATION;
    if (!last)
      flags |= LWS_WRITE_NO_FIN;
    queue_piece(c, data + off, take, flags);
    off += take;
  }
}

void fp_send(fp_conn *c, const pw_frame *f, int fragments) {
  uint8_t *buf;
  size_t len;
  if (pw_encode(f, 0, &buf, &len) != 0)
    abort();
  fp_send_raw(c, buf, len, fragments);
  free(buf);
}

void fp_close(fp_conn *c, int code) {
  fp_out *o = calloc(1, sizeof *o + LWS_PRE);
  if (!o)
    abort();
  o->close_code = code;
  queue_push(c, o);
}

void fp_welcome(fp_conn *c, const char *const *cursor_convs,
                const uint64_t *cursor_seqs, size_t n, int fragments) {
  Parley__V1__Welcome w = PARLEY__V1__WELCOME__INIT;
  Parley__V1__ResumeCursor rc[8];
  Parley__V1__ResumeCursor *rp[8];
  w.version = 1;
  w.principal = "alice";
  w.session = "fake-session";
  w.server_time_ms = 1700000000000;
  w.heartbeat_ms = 10000;
  w.max_frame_bytes = 1024 * 1024;
  w.window = 100;
  w.ack_timeout_ms = 5000;
  for (size_t i = 0; i < n && i < 8; i++) {
    parley__v1__resume_cursor__init(&rc[i]);
    rc[i].conversation = (char *)cursor_convs[i];
    rc[i].after_seq = cursor_seqs[i];
    rp[i] = &rc[i];
  }
  w.n_cursors = n;
  w.cursors = rp;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_WELCOME;
  f.welcome = &w;
  fp_send(c, &f, fragments);
}

static void conn_clear(fp_conn *c) {
  fp_out *o = c->q_head;
  while (o) {
    fp_out *n = o->next;
    free(o);
    o = n;
  }
  c->q_head = c->q_tail = NULL;
  free(c->rx);
  c->rx = NULL;
  c->rx_len = 0;
}

static void on_message(fake_peer *p, fp_conn *c) {
  pw_frame *f = NULL;
  const char *why = NULL;
  if (pw_decode(c->rx, c->rx_len, FP_RX_MAX, &f, &why) != 0) {
    fprintf(stderr, "fake peer: undecodable frame: %s\n", why ? why : "?");
    p->bad++;
    return;
  }
  if (c->n_types < FP_MAX_FRAMES)
    c->types[c->n_types++] = (int)f->body_case;
  if (f->body_case == PARLEY__V1__FRAME__BODY_PING) {
    /* Heartbeats are answered but are not part of any script. */
    c->n_types--;
    Parley__V1__Pong pong = PARLEY__V1__PONG__INIT;
    pong.nonce = f->ping->nonce;
    pw_frame r = PARLEY__V1__FRAME__INIT;
    r.body_case = PARLEY__V1__FRAME__BODY_PONG;
    r.pong = &pong;
    fp_send(c, &r, 1);
  } else if (p->on_frame) {
    p->on_frame(p, c, f);
  }
  pw_frame_free(f);
}

static int peer_cb(struct lws *wsi, enum lws_callback_reasons reason,
                   void *user, void *in, size_t len) {
  fake_peer *p = peer_of(wsi);
  fp_conn **slot = user;
  fp_conn *c = slot ? *slot : NULL;
  switch (reason) {
  case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
    int n = lws_hdr_copy(wsi, p->pending_auth, sizeof p->pending_auth,
                         WSI_TOKEN_HTTP_AUTHORIZATION);
    if (n < 0)
      p->pending_auth[0] = '\0';
    return 0;
  }
  case LWS_CALLBACK_ESTABLISHED:
    if (p->n_conns >= FP_MAX_CONNS)
      return -1;
    c = &p->conns[p->n_conns];
    memset(c, 0, sizeof *c);
    c->index = p->n_conns++;
    c->wsi = wsi;
    c->live = true;
    snprintf(c->auth, sizeof c->auth, "%s", p->pending_auth);
    p->live_conns++;
    *slot = c;
    return 0;
  case LWS_CALLBACK_RECEIVE: {
    if (!c)
      return -1;
    if (c->rx_len + len > FP_RX_MAX)
      return -1;
    uint8_t *nb = realloc(c->rx, c->rx_len + len + 1);
    if (!nb)
      return -1;
    c->rx = nb;
    memcpy(c->rx + c->rx_len, in, len);
    c->rx_len += len;
    if (lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi)) {
      on_message(p, c);
      c->rx_len = 0;
    }
    return 0;
  }
  case LWS_CALLBACK_SERVER_WRITEABLE: {
    if (!c || !c->q_head)
      return 0;
    fp_out *o = c->q_head;
    c->q_head = o->next;
    if (!c->q_head)
      c->q_tail = NULL;
    if (o->close_code) {
      /* A close frame written directly: lws 4.1.6 sends none when a
       * WRITEABLE callback sets a close reason and returns -1. The client
       * echoes it and lws then ends the connection. */
      uint8_t b[LWS_PRE + 2];
      b[LWS_PRE] = (uint8_t)(o->close_code >> 8);
      b[LWS_PRE + 1] = (uint8_t)(o->close_code & 0xff);
      free(o);
      return lws_write(wsi, b + LWS_PRE, 2, (enum lws_write_protocol)4) < 0
                 ? -1
                 : 0;
    }
    int n = lws_write(wsi, o->buf + LWS_PRE, o->len,
                      (enum lws_write_protocol)o->flags);
    size_t want = o->len;
    free(o);
    if (n < (int)want)
      return -1;
    if (c->q_head)
      lws_callback_on_writable(wsi);
    return 0;
  }
  case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
    /* The first close code seen: the client's own, or the echo of ours. */
    if (c && len >= 2 && !c->peer_close_code) {
      const uint8_t *b = in;
      c->peer_close_code = (b[0] << 8) | b[1];
    }
    return 0;
  case LWS_CALLBACK_CLOSED:
    if (c && c->live) {
      c->live = false;
      c->wsi = NULL;
      conn_clear(c);
      p->live_conns--;
    }
    return 0;
  default:
    return 0;
  }
}

static const struct lws_protocols fp_protocols[] = {
    {"parley.v1", peer_cb, sizeof(fp_conn *), 4096, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

int fp_start(fake_peer *p, uv_loop_t *loop, fp_frame_fn on_frame, void *ud) {
  return fp_start_tls(p, loop, on_frame, ud, NULL, NULL);
}

int fp_start_tls(fake_peer *p, uv_loop_t *loop, fp_frame_fn on_frame,
                 void *ud, const char *cert_file, const char *key_file) {
  memset(p, 0, sizeof *p);
  p->loop = loop;
  p->on_frame = on_frame;
  p->ud = ud;
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  void *loops[1] = {loop};
  info.options = LWS_SERVER_OPTION_LIBUV;
  info.foreign_loops = loops;
  info.port = 0; /* ephemeral */
  info.iface = "127.0.0.1";
  info.protocols = fp_protocols;
  info.user = p;
  info.gid = -1;
  info.uid = -1;
  if (cert_file) {
    info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.ssl_cert_filepath = cert_file;
    info.ssl_private_key_filepath = key_file;
    /* lws 4.1.6 would make a client SSL_CTX for this server vhost too and
     * leak it at destroy once another TLS context was created after this
     * one (see sdk/src/transport/ws.c); a provided one is ours to free. */
    p->client_ssl_ctx = SSL_CTX_new(TLS_client_method());
    info.provided_client_ssl_ctx = p->client_ssl_ctx;
  }
  p->ctx = lws_create_context(&info);
  if (!p->ctx)
    return -1;
  p->port = lws_get_vhost_listen_port(lws_get_vhost_by_name(p->ctx, "default"));
  return p->port > 0 ? 0 : -1;
}

void fp_destroy_begin(fake_peer *p) {
  if (p->ctx && !p->destroying) {
    p->destroying = true;
    lws_context_destroy(p->ctx);
  }
}

void fp_destroy_end(fake_peer *p) {
  if (p->ctx)
    lws_context_destroy(p->ctx);
  p->ctx = NULL;
  if (p->client_ssl_ctx)
    SSL_CTX_free(p->client_ssl_ctx);
  p->client_ssl_ctx = NULL;
  for (int i = 0; i < p->n_conns; i++)
    conn_clear(&p->conns[i]);
}
