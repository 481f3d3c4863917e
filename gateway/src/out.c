/* A connection's outgoing side: frames queued per connection and written
 * when its socket is writable, errors and closes, and the test switches
 * that drop, double or reorder pushes and send ACKs. The bottom layer:
 * everything above sends through here. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libwebsockets.h>

#include <parley/error.h>

#include "gw.h"
#include "util/clock.h"

#define E(x) PARLEY__V1__ERROR_CODE__ERROR_##x

/* lws 4.1 keeps the Close opcode out of its public enum (value 4, between
 * LWS_WRITE_HTTP and LWS_WRITE_PING); lws itself writes Close frames with it. */
#define PG_LWS_WRITE_CLOSE ((enum lws_write_protocol)4)

uint64_t pg_now_ms(void) { return (uint64_t)pu_wall_ms(); }

uint64_t pg_mono_ms(void) { return pu_clock_ms(); }


bool pg_faults_configured(const pg_config *fc) {
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
  uint8_t *block = malloc(PG_OUT_NODE + LWS_PRE + b->len + 1);
  if (!block) return NULL;
  pg_outbuf *d = (pg_outbuf *)(void *)block;
  d->next = NULL;
  d->buf = block + PG_OUT_NODE;
  d->len = b->len;
  memcpy(d->buf + LWS_PRE, b->buf + LWS_PRE, b->len);
  return d;
}

/* The test switches (config `faults:`, off unless set) act on pushes and
 * send ACKs only, the frames whose loss, doubling and disorder the
 * protocol must absorb: a dropped Deliver comes again by redelivery or a
 * client's gap fetch, a dropped SendAck by the client's retry and the
 * gateway's dedup. Returns true when b was consumed. */
static bool apply_faults(pg_conn *c, Parley__V1__Frame__BodyCase kind, pg_outbuf *b) {
  pg_gateway *g = c->g;
  const pg_config *cfg = g->cfg;
  bool push = kind == PARLEY__V1__FRAME__BODY_DELIVER;
  bool ack = kind == PARLEY__V1__FRAME__BODY_SEND_ACK;
  if (!push && !ack) return false;
  if (fault_roll(g, push ? cfg->fault_drop_push : cfg->fault_drop_ack)) {
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

/* Frames are not written when they are queued but once per loop iteration
 * (pg_out_flush), so that everything one iteration produced for a
 * connection goes out in one send(). */
static void mark_dirty(pg_conn *c) {
  if (c->dirty) return;
  c->dirty = true;
  c->dnext = c->g->dirty_head;
  c->g->dirty_head = c;
}

void pg_out_kick(pg_conn *c) {
  if (c->wsi && c->out_head) mark_dirty(c);
}

void pg_out_forget(pg_conn *c) {
  if (!c->dirty) return;
  for (pg_conn **p = &c->g->dirty_head; *p; p = &(*p)->dnext)
    if (*p == c) {
      *p = c->dnext;
      break;
    }
  c->dirty = false;
  c->dnext = NULL;
}

/* Writes what each connection got during this loop iteration, directly
 * when lws holds nothing back for it: waiting for a writable callback
 * first would switch POLLOUT on and off again in epoll (two or three
 * epoll_ctl calls) for every connection on every turn. A connection whose
 * last write was only partly taken waits for its callback as before. */
void pg_out_flush(pg_gateway *g) {
  while (g->dirty_head) {
    pg_conn *c = g->dirty_head;
    g->dirty_head = c->dnext;
    c->dnext = NULL;
    c->dirty = false;
    if (!c->wsi || !c->out_head || c->corked) continue;
    if (c->close_code || lws_partial_buffered(c->wsi)) {
      lws_callback_on_writable(c->wsi);
      continue;
    }
    if (pg_conn_write(c, c->wsi) < 0) pg_conn_close(c, 1011, "write failed");
  }
}

int pg_conn_send_frame(pg_conn *c, const pw_frame *f) {
  if (!c->wsi || c->close_code) return PARLEY_EDISCONNECTED;
  uint8_t *buf;
  size_t len;
  if (pw_encode(f, PG_OUT_NODE + LWS_PRE, &buf, &len) != 0) return PARLEY_ENOMEM;
  return pg_conn_send_encoded(c, f->body_case, buf, len);
}

int pg_conn_send_encoded(pg_conn *c, Parley__V1__Frame__BodyCase kind, uint8_t *buf,
                         size_t len) {
  if (!c->wsi || c->close_code) {
    free(buf);
    return PARLEY_EDISCONNECTED;
  }
  /* The node lives at the start of the frame's own block: no allocation
   * per queued frame besides the encoder's. */
  pg_outbuf *b = (pg_outbuf *)(void *)buf;
  b->next = NULL;
  b->buf = buf + PG_OUT_NODE;
  b->len = len;
  if (c->g->fault_rng && apply_faults(c, kind, b)) {
    mark_dirty(c);
    return 0;
  }
  /* A peer that does not read is cut off rather than buffered forever. */
  if (c->out_bytes + b->len > PG_OUTQ_MAX_BYTES) {
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
  mark_dirty(c);
  return 0;
}

void pg_conn_close(pg_conn *c, int code, const char *msg) {
  if (!c->wsi || c->close_code) return;
  bool was_bot = c->role == PG_ROLE_BOT && c->state == PG_CS_OPEN;
  c->close_code = code;
  snprintf(c->close_msg, sizeof c->close_msg, "%s", msg ? msg : "");
  c->state = PG_CS_CLOSING;
  lws_callback_on_writable(c->wsi);
  /* A closing bot connection's conversations move now, not when its
   * socket is finally gone. */
  if (was_bot && c->g->route.closing) c->g->route.closing(c);
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
  if (fatal) pg_conn_close(c, pw_close_code(code), msg);
}

/* Bytes of queued frames written together in one writable callback. */
#define PG_COALESCE_BYTES (128u * 1024u)

/* A server-to-client WebSocket frame header (binary, final, unmasked,
 * RFC 6455 section 5.2); returns its length. */
static size_t ws_header(uint8_t *h, size_t len) {
  h[0] = 0x82;
  if (len < 126) {
    h[1] = (uint8_t)len;
    return 2;
  }
  if (len <= 0xffff) {
    h[1] = 126;
    h[2] = (uint8_t)(len >> 8);
    h[3] = (uint8_t)len;
    return 4;
  }
  h[1] = 127;
  for (int i = 0; i < 8; i++) h[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
  return 10;
}

static size_t ws_header_len(size_t len) { return len < 126 ? 2 : len <= 0xffff ? 4 : 10; }

static void outbuf_pop(pg_conn *c) {
  pg_outbuf *b = c->out_head;
  c->out_head = b->next;
  if (!c->out_head) c->out_tail = NULL;
  c->out_bytes -= b->len;
  free(b);
}

int pg_conn_write(pg_conn *c, struct lws *wsi) {
  if (c->out_head) {
    pg_outbuf *b = c->out_head;
    if (!b->next || b->len + ws_header_len(b->len) >= PG_COALESCE_BYTES) {
      int n = lws_write(wsi, b->buf + LWS_PRE, b->len, LWS_WRITE_BINARY);
      outbuf_pop(c);
      if (n < 0) return -1;
    } else {
      /* Every frame that is ready goes out in one send(): a turn answers
       * a customer with a SendAck and a Deliver, a bot with a Deliver, a
       * SendAck and a CommitResult, and a syscall per frame cost more than
       * the frames. The frames are framed here (a server's frames are not
       * masked) and written raw; lws keeps what the socket does not take
       * and holds back the next callback until it is out. */
      pg_gateway *g = c->g;
      size_t total = 0;
      for (pg_outbuf *p = b; p && (p == b || total + p->len + 10 <= PG_COALESCE_BYTES);
           p = p->next)
        total += p->len + ws_header_len(p->len);
      if (g->wbuf_cap < LWS_PRE + total) {
        uint8_t *t = realloc(g->wbuf, LWS_PRE + total);
        if (!t) return -1;
        g->wbuf = t;
        g->wbuf_cap = LWS_PRE + total;
      }
      uint8_t *w = g->wbuf + LWS_PRE;
      size_t off = 0;
      while (c->out_head && off < total) {
        pg_outbuf *p = c->out_head;
        if (off + p->len + ws_header_len(p->len) > total) break;
        off += ws_header(w + off, p->len);
        memcpy(w + off, p->buf + LWS_PRE, p->len);
        off += p->len;
        outbuf_pop(c);
      }
      if (lws_write(wsi, w, off, LWS_WRITE_RAW) < 0) return -1;
    }
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


void pg_conn_refuse_send(pg_conn *c, const Parley__V1__Send *s, Parley__V1__ErrorCode code,
                         const char *msg) {
  Parley__V1__SendAck a = PARLEY__V1__SEND_ACK__INIT;
  a.client_msg_id = s->client_msg_id;
  a.conversation = s->conversation;
  a.error = code;
  a.message = (char *)msg;
  a.server_time_ms = (int64_t)pg_now_ms();
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_SEND_ACK;
  f.send_ack = &a;
  pg_conn_send_frame(c, &f);
}

void pg_conn_free_out(pg_conn *c) {
  if (c->fault_held) {
    free(c->fault_held);
    c->fault_held = NULL;
  }
  while (c->out_head) {
    pg_outbuf *b = c->out_head;
    c->out_head = b->next;
    free(b);
  }
  c->out_tail = NULL;
  c->out_bytes = 0;
}
