/* The fault proxy; see faultproxy.h. */
#include "faultproxy.h"

#include <stdlib.h>
#include <string.h>

#include <parley/error.h>

typedef struct wb_wreq {
  uv_write_t w;
  uv_buf_t buf;
} wb_wreq;

static void px_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  buf->base = malloc(suggested);
  buf->len = buf->base ? suggested : 0;
}

static void px_pair_closed(uv_handle_t *h) {
  wb_side *sd = h->data;
  wb_pair *p = sd->pair;
  if (--p->closing == 0) free(p);
}

static void px_cut(wb_pair *p) {
  if (p->cut) return;
  p->cut = true;
  wb_proxy *px = p->px;
  for (size_t i = 0; i < px->n_pairs; i++)
    if (px->pairs[i] == p) {
      px->pairs[i] = px->pairs[--px->n_pairs];
      break;
    }
  p->closing = 2;
  uv_close((uv_handle_t *)&p->down.tcp, px_pair_closed);
  uv_close((uv_handle_t *)&p->up.tcp, px_pair_closed);
}

static void px_written(uv_write_t *w, int status) {
  (void)status;
  wb_wreq *r = (wb_wreq *)w;
  free(r->buf.base);
  free(r);
}

static void px_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  wb_side *sd = s->data;
  wb_pair *p = sd->pair;
  if (n < 0 || p->cut) {
    free(buf->base);
    if (n < 0) px_cut(p);
    return;
  }
  if (n == 0) {
    free(buf->base);
    return;
  }
  wb_side *other = sd == &p->down ? &p->up : &p->down;
  /* A peer that does not read cannot make the proxy hold without bound. */
  if (uv_stream_get_write_queue_size((uv_stream_t *)&other->tcp) > WB_PROXY_QUEUE_MAX) {
    free(buf->base);
    px_cut(p);
    return;
  }
  wb_wreq *r = malloc(sizeof *r);
  if (!r) {
    free(buf->base);
    px_cut(p);
    return;
  }
  r->buf = uv_buf_init(buf->base, (unsigned)n);
  if (uv_write(&r->w, (uv_stream_t *)&other->tcp, &r->buf, 1, px_written) != 0) {
    free(buf->base);
    free(r);
    px_cut(p);
  }
}

static void px_connected(uv_connect_t *c, int status) {
  wb_pair *p = c->data;
  if (p->cut) return;
  if (status < 0) {
    px_cut(p);
    return;
  }
  p->up_since = uv_now(p->px->loop);
  uv_read_start((uv_stream_t *)&p->up.tcp, px_alloc, px_read);
  uv_read_start((uv_stream_t *)&p->down.tcp, px_alloc, px_read);
}

static void px_accept(uv_stream_t *server, int status) {
  wb_proxy *px = server->data;
  if (status < 0) return;
  wb_pair *p = calloc(1, sizeof *p);
  if (!p) return;
  p->px = px;
  p->down.pair = p->up.pair = p;
  uv_tcp_init(px->loop, &p->down.tcp);
  uv_tcp_init(px->loop, &p->up.tcp);
  p->down.tcp.data = &p->down;
  p->up.tcp.data = &p->up;
  p->conn.data = p;
  if (px->n_pairs >= WB_PAIRS_MAX || uv_accept(server, (uv_stream_t *)&p->down.tcp) != 0) {
    p->cut = true;
    p->closing = 2;
    uv_close((uv_handle_t *)&p->down.tcp, px_pair_closed);
    uv_close((uv_handle_t *)&p->up.tcp, px_pair_closed);
    return;
  }
  px->pairs[px->n_pairs++] = p;
  uv_tcp_nodelay(&p->down.tcp, 1);
  uv_tcp_nodelay(&p->up.tcp, 1);
  if (uv_tcp_connect(&p->conn, &p->up.tcp, (const struct sockaddr *)&px->target, px_connected))
    px_cut(p);
}

int px_start(wb_proxy *px, uv_loop_t *loop, int target_port) {
  memset(px, 0, sizeof *px);
  px->loop = loop;
  uv_ip4_addr("127.0.0.1", target_port, &px->target);
  struct sockaddr_in any;
  uv_ip4_addr("127.0.0.1", 0, &any);
  uv_tcp_init(loop, &px->listener);
  px->listener.data = px;
  if (uv_tcp_bind(&px->listener, (const struct sockaddr *)&any, 0) != 0 ||
      uv_listen((uv_stream_t *)&px->listener, 64, px_accept) != 0)
    return PARLEY_EIO;
  struct sockaddr_storage ss;
  int len = sizeof ss;
  uv_tcp_getsockname(&px->listener, (struct sockaddr *)&ss, &len);
  px->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  return 0;
}

/* Cuts every connection through the proxy that has been up for a while.
 * A connection closed within moments of its accept has made the gateway's
 * libwebsockets-on-libuv loop re-arm the closed descriptor and abort, so
 * young connections are left alone. */
#define WB_CUT_MIN_AGE_MS 250
void px_cut_all(wb_proxy *px) {
  uint64_t now = uv_now(px->loop);
  for (size_t i = 0; i < px->n_pairs;) {
    wb_pair *p = px->pairs[i];
    if (p->up_since && now - p->up_since >= WB_CUT_MIN_AGE_MS) {
      px_cut(p); /* moves the last pair to i */
      px->cuts++;
    } else {
      i++;
    }
  }
}

static void px_close_all(wb_proxy *px) {
  while (px->n_pairs) px_cut(px->pairs[0]);
}

void px_stop(wb_proxy *px, uv_close_cb cb) {
  px_close_all(px);
  uv_close((uv_handle_t *)&px->listener, cb);
}
