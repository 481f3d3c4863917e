/* The WebSocket transport on libwebsockets 4.1 and libuv; see ws.h.
 *
 * Lifetimes. All transports on one uv loop share one lws client context
 * (one per loop, per TLS or plain, per ca_file), kept in a small registry
 * and reference counted: pt_ws_new takes a reference, creating the context
 * on first use, and pt_ws_destroy drops it once the transport's own wsi is
 * gone. A pt_ws has at most one client wsi at a time and is found from it
 * through the wsi's opaque user data, so every per-connection thing (the
 * URL, the Authorization header, the TLS verification flags, the state
 * below) stays with the connection and never with the context.
 *
 * Why shared. Destroying an lws 4.1.6 context on a foreign loop is not
 * clean: the first lws_context_destroy() closes some file descriptors that
 * lws closes a second time a few loop turns later, in
 * __lws_close_free_wsi_final. Any descriptor opened on the loop in between
 * (another client's socket, a gateway's accepted connection, lws's
 * /dev/urandom) is then closed under its new owner, and libuv aborts on
 * the EBADF from epoll. A context that lives as long as any transport on
 * its loop is destroyed only when the loop's last transport goes, which in
 * a running process is (almost) never while other connections are opening.
 *
 * Teardown with a foreign loop (lws 4.1.6). lws_context_destroy() cannot
 * finish synchronously, because libuv closes handles asynchronously:
 *   1. the first call closes the context's wsis; once the last one is gone
 *      lws itself moves on and starts closing its own per-thread handles
 *      (an idle and a timer, whose handle->data is the context);
 *   2. those closes complete while the loop runs;
 *   3. a second lws_context_destroy() then frees the context.
 * Calling the second one too early frees memory that pending close
 * callbacks still use, and destroying a context while a client wsi is
 * still connecting trips a double close inside lws. So every transport
 * first makes sure its own wsi is gone before it drops its reference, and
 * when the last reference goes the shared entry runs the sequence from a
 * uv timer of its own ("the reaper"), outside every lws callback, polling
 * the loop's handle list until no handle refers to the context any more.
 * An entry being reaped has already left the registry, so a transport
 * created meanwhile on the same loop gets a fresh context.
 *
 * Each transport also keeps one uv handle of its own (`done`), closed when
 * it is destroyed, so that `destroyed` always comes from the loop and never
 * from inside pt_ws_destroy or an lws callback. The transport that dropped
 * the last reference closes it only after its context is freed, so an
 * owner that stops at `destroyed` finds no handle left on its loop.
 *
 * Threads. Different loops may run in different threads, so the registry
 * is guarded by a mutex; an entry itself is only used from its loop's
 * thread (its reference count is changed under the mutex all the same).
 *
 * TLS. lws 4.1.6 keeps the OpenSSL ex_data index it uses to find a
 * context's own client SSL_CTX in a process-wide variable, renewed by every
 * context created with LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT. With several
 * TLS contexts alive (clients on several loops, or a client and an
 * in-process gateway) every context but the newest then fails that lookup
 * when it is destroyed and leaks its SSL_CTX with the whole CA store. So
 * the shared entry makes its client SSL_CTX itself (provided_client_ssl_ctx,
 * which lws never frees and never looks up) and frees it after the context
 * is gone. Whether a connection verifies the peer at all, and checks the
 * host name, is decided per connection by lws from LCCSCF flags.
 */
#include "transport/ws.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <uv.h>

#include <parley/error.h>

#include "transport/reasm.h"
#include "transport/url.h"

/* How long the reaper waits for lws's handles to close before it gives up
 * and leaks the context rather than risk freeing memory in use. */
#define PT_REAP_MAX_MS 5000u
/* The WebSocket close opcode as lws_write() takes it (see write_close). */
#define PT_LWS_WRITE_CLOSE 4
/* Seconds to wait for the peer to answer our close frame. */
#define PT_CLOSE_ACK_SECS 3
/* Bytes of "Bearer " plus the token, bounded so the upgrade request fits
 * the lws header buffer. */
#define PT_AUTH_MAX 2048u

typedef struct pt_frame {
  struct pt_frame *next;
  size_t len;
  uint8_t buf[]; /* LWS_PRE bytes of headroom, then the message */
} pt_frame;

/* One lws client context shared by the transports of one loop. */
typedef struct pt_ws_shared {
  struct pt_ws_shared *next; /* registry link; unlinked once reaping */
  uv_loop_t *loop;
  bool tls;
  char *ca_file;    /* NULL: system CAs only */
  size_t refs;      /* transports holding the context; under pt_reg_lock */
  struct lws_context *ctx;
  SSL_CTX *ssl_ctx; /* tls only; owned here, see the TLS note above */
  pt_ws *last;      /* the transport that dropped the last reference */

  /* Teardown. */
  int reap_phase;
  size_t static_handles; /* lws handles seen on the loop at creation */
  bool leaked_ctx;       /* the context could not be destroyed safely */
  uint64_t reap_start;
  uv_timer_t reaper;
} pt_ws_shared;

struct pt_ws {
  uv_loop_t *loop;
  pt_ws_shared *sh;
  struct lws_context *ctx; /* sh->ctx, kept at hand */
  pt_ws_hooks hooks;
  pt_url url;
  char *auth; /* "Bearer <token>", or NULL */
  bool tls_insecure;
  size_t max_queue;
  pt_reasm rx;

  /* The current connection, if any. */
  struct lws *wsi;
  bool has_conn;    /* a wsi exists or is being created */
  bool open;        /* handshake done */
  bool closing;     /* graceful close asked: flush, then close frame */
  bool close_written; /* our close frame is out; waiting for the echo */
  bool kill;        /* dropping the connection: no more hooks or writes */
  bool discarding;  /* refusing the rest of an inbound message */
  int close_code;
  char close_reason[64];
  bool status_set;  /* first cause of the end of this connection */
  int status;
  int status_code;
  unsigned last_http; /* HTTP status of the last failed upgrade, 0 if none */
  bool in_connect;  /* inside lws_client_connect_via_info */
  bool sync_failed; /* the wsi died inside lws_client_connect_via_info */

  pt_frame *q_head, *q_tail;
  size_t q_bytes;
  uint8_t *wbuf;       /* frames written together (write_coalesced) */
  size_t wbuf_cap;
  /* Writes the queued frames before the loop next polls (flush_cb). */
  uv_prepare_t flush;
  bool flush_on;
  /* Masking keys drawn from OpenSSL's generator 64 at a time, each used
   * once: a draw per write cost a getpid() (OpenSSL's fork check) and the
   * generator's work for two or three frames. */
  uint8_t keys[4 * 64];
  size_t keys_left;

  /* Teardown. */
  bool destroying;
  bool released; /* the reference on sh is dropped */
  uv_timer_t done; /* never started; its close callback ends the transport */
};

/* The registry of live shared contexts. Entries being reaped are not in
 * it. */
static pthread_mutex_t pt_reg_lock = PTHREAD_MUTEX_INITIALIZER;
static pt_ws_shared *pt_reg_head;

/* ------------------------------------------------------------ helpers */

static void queue_clear(pt_ws *t) {
  pt_frame *f = t->q_head;
  while (f) {
    pt_frame *n = f->next;
    free(f);
    f = n;
  }
  t->q_head = t->q_tail = NULL;
  t->q_bytes = 0;
}

static void set_status(pt_ws *t, int status, int code) {
  if (t->status_set)
    return;
  t->status_set = true;
  t->status = status;
  t->status_code = code;
}

/* Hooks stop once the owner asked to drop the connection or destroy the
 * transport; only `closed` (or `destroyed`) follows. */
static bool hooks_live(const pt_ws *t) { return !t->destroying && !t->kill; }

typedef struct handle_count {
  const void *ctx;
  size_t n;
} handle_count;

static void count_ctx_handles(uv_handle_t *h, void *arg) {
  handle_count *hc = arg;
  if (h->data == hc->ctx)
    hc->n++;
}

/* Handles on the loop whose data is the lws context: lws 4.1 marks its
 * per-thread idle and timer handles that way. Only pointer values are
 * compared; no other module's handle data is dereferenced. */
static size_t ctx_handles(pt_ws_shared *sh) {
  handle_count hc = {sh->ctx, 0};
  uv_walk(sh->loop, count_ctx_handles, &hc);
  return hc.n;
}

/* ------------------------------------------------------------ teardown */

static void shared_free(pt_ws_shared *sh) {
  if (sh->ssl_ctx && !sh->leaked_ctx)
    SSL_CTX_free(sh->ssl_ctx);
  free(sh->ca_file);
  free(sh);
}

/* The transport's own handle is closed: `destroyed` is the last hook. */
static void done_closed(uv_handle_t *h);

/* The flush handle closes first, then `done`, whose close ends the
 * transport: libuv runs close callbacks newest first, so closing both at
 * once would free the transport before the flush handle's turn. */
static void flush_closed(uv_handle_t *h) {
  pt_ws *t = h->data;
  uv_close((uv_handle_t *)&t->done, done_closed);
}

static void close_handles(pt_ws *t) { uv_close((uv_handle_t *)&t->flush, flush_closed); }

static void done_closed(uv_handle_t *h) {
  pt_ws *t = h->data;
  if (t->hooks.destroyed)
    t->hooks.destroyed(t->hooks.ud);
  queue_clear(t);
  pt_reasm_free(&t->rx);
  free(t->wbuf);
  free(t->auth);
  free(t);
}

static void reaper_closed(uv_handle_t *h) {
  pt_ws_shared *sh = h->data;
  pt_ws *last = sh->last;
  shared_free(sh);
  if (last)
    close_handles(last);
}

static void reap_tick(uv_timer_t *h) {
  pt_ws_shared *sh = h->data;
  if (sh->reap_phase == 0) {
    /* Step 1: closes the event pipe; lws then closes its own handles. */
    sh->reap_phase = 1;
    sh->reap_start = uv_now(sh->loop);
    lws_context_destroy(sh->ctx);
    return;
  }
  size_t left = ctx_handles(sh);
  uint64_t waited = uv_now(sh->loop) - sh->reap_start;
  if (sh->static_handles == 0) {
    /* This lws marks no handle with its context, so completion cannot be
     * observed; give the closes a generous number of loop turns. */
    left = waited < 100 ? 1 : 0;
  }
  if (left && waited < PT_REAP_MAX_MS)
    return;
  if (left) {
    /* Better a leak than a use after free inside lws. */
    lwsl_err("parley: lws context %p did not finish closing; leaking it\n",
             (void *)sh->ctx);
    sh->leaked_ctx = true;
  } else {
    /* Step 3: everything is closed; this frees the context. */
    lws_context_destroy(sh->ctx);
  }
  sh->ctx = NULL;
  uv_timer_stop(&sh->reaper);
  uv_close((uv_handle_t *)&sh->reaper, reaper_closed);
}

/* Drops the transport's reference once its wsi is gone. The last one
 * leaves the registry and starts the reaper; the transport then ends when
 * its context is freed. Any other ends on the loop's next turn. */
static void release(pt_ws *t) {
  if (t->released)
    return;
  t->released = true;
  pt_ws_shared *sh = t->sh;
  pthread_mutex_lock(&pt_reg_lock);
  bool last = --sh->refs == 0;
  if (last) {
    for (pt_ws_shared **pp = &pt_reg_head; *pp; pp = &(*pp)->next)
      if (*pp == sh) {
        *pp = sh->next;
        break;
      }
    sh->next = NULL;
  }
  pthread_mutex_unlock(&pt_reg_lock);
  if (!last) {
    close_handles(t);
    return;
  }
  sh->last = t;
  uv_timer_start(&sh->reaper, reap_tick, 0, 1);
}

/* ------------------------------------------------------------ connection end */

/* The wsi is gone: report why, once, and reset the per-connection state. */
static void connection_gone(pt_ws *t) {
  int status = t->status_set ? t->status : PARLEY_EIO;
  int code = t->status_set ? t->status_code : 1006;
  t->wsi = NULL;
  t->has_conn = false;
  t->open = false;
  t->closing = false;
  t->close_written = false;
  t->kill = false;
  t->discarding = false;
  t->status_set = false;
  queue_clear(t);
  pt_reasm_reset(&t->rx);
  if (t->in_connect) {
    t->sync_failed = true;
    return;
  }
  if (t->destroying) {
    release(t);
    return;
  }
  if (t->hooks.closed)
    t->hooks.closed(t->hooks.ud, status, code);
}

static int classify_connect_error(struct lws *wsi, const char *msg) {
  unsigned int http = lws_http_client_http_response(wsi);
  if (http == 401 || http == 403)
    return PARLEY_EUNAUTH;
  if (msg && (strstr(msg, "ssl") || strstr(msg, "SSL") || strstr(msg, "tls") ||
              strstr(msg, "TLS") || strstr(msg, "cert")))
    return PARLEY_ETLS;
  return PARLEY_EIO;
}

/* ------------------------------------------------------------ lws callbacks */

static int on_append_headers(pt_ws *t, struct lws *wsi, void *in, size_t len) {
  if (!t->auth)
    return 0;
  unsigned char **p = in;
  unsigned char *end = *p + len;
  if (lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_AUTHORIZATION,
                                   (const unsigned char *)t->auth,
                                   (int)strlen(t->auth), p, end)) {
    set_status(t, PARLEY_EINVAL, 1006);
    return -1;
  }
  return 0;
}

/* Starts a graceful close from inside lws callbacks: nothing more of ours
 * is written but the close frame. */
static void close_with(pt_ws *t, struct lws *wsi, int status, int code,
                       const char *reason) {
  set_status(t, status, code);
  queue_clear(t);
  t->closing = true;
  t->close_code = code;
  snprintf(t->close_reason, sizeof t->close_reason, "%s", reason);
  lws_callback_on_writable(wsi);
}

static void kill_conn(pt_ws *t);

static int on_receive(pt_ws *t, struct lws *wsi, const uint8_t *in,
                      size_t len) {
  /* lws 4.1.6 overruns its receive buffer when a RECEIVE callback returns
   * -1 in the middle of a frame, so a refused message is read to its end
   * and dropped while the close handshake runs. */
  if (t->kill || t->discarding)
    return 0;
  size_t remaining = lws_remaining_packet_payload(wsi);
  bool last = lws_is_final_fragment(wsi) && remaining == 0;
  const uint8_t *msg = NULL;
  size_t msg_len = 0;
  int rc;

  /* The frame header announces the rest of this fragment: refuse an
   * oversized message before buffering any of it. */
  if (remaining > t->rx.max || pt_reasm_would_exceed(&t->rx, len + remaining))
    rc = PARLEY_ETOOBIG;
  else
    rc = pt_reasm_feed(&t->rx, in, len, !t->rx.active, last, &msg, &msg_len);

  if (rc < 0) {
    /* 4002 is the protocol's close code for FRAME_TOO_LARGE. */
    pt_reasm_reset(&t->rx);
    t->discarding = true;
    if (rc == PARLEY_ETOOBIG)
      close_with(t, wsi, rc, 4002, "message too large");
    else
      close_with(t, wsi, rc, LWS_CLOSE_STATUS_PROTOCOL_ERR, "bad fragments");
    return 0;
  }
  if (rc == 1 && hooks_live(t) && t->hooks.message) {
    t->hooks.message(t->hooks.ud, msg, msg_len);
  }
  return 0;
}

/* Writes the close frame of a graceful close and waits for the peer's.
 *
 * lws 4.1.6 drops the connection without any close frame when a WRITEABLE
 * callback calls lws_close_reason() and returns -1 (it does send one when
 * the same happens in a RECEIVE callback), so the frame is written here
 * with the close opcode, which lws_write still accepts although the header
 * no longer names it. The peer echoes the close and lws then ends the
 * connection; if the echo does not come, lws kills it after
 * PT_CLOSE_ACK_SECS. */
static int write_close(pt_ws *t, struct lws *wsi) {
  uint8_t buf[LWS_PRE + 2 + sizeof t->close_reason];
  size_t rl = strlen(t->close_reason);
  uint8_t *p = buf + LWS_PRE;
  p[0] = (uint8_t)((t->close_code >> 8) & 0xff);
  p[1] = (uint8_t)(t->close_code & 0xff);
  memcpy(p + 2, t->close_reason, rl);
  set_status(t, 0, t->close_code);
  t->close_written = true;
  if (lws_write(wsi, p, 2 + rl, (enum lws_write_protocol)PT_LWS_WRITE_CLOSE) < 0)
    return -1;
  lws_set_timeout(wsi, PENDING_TIMEOUT_CLOSE_ACK, PT_CLOSE_ACK_SECS);
  return 0;
}

/* Bytes of queued frames written together in one writable callback. */
#define PT_COALESCE_BYTES (64u * 1024u)

static size_t ws_header_len(size_t len) {
  return (len < 126 ? 2 : len <= 0xffff ? 4 : 10) + 4; /* + the mask key */
}

/* Frames one client-to-server WebSocket frame (binary, final, masked with
 * key, RFC 6455 section 5.2-5.3) into out; returns its length. */
static size_t ws_frame(uint8_t *out, const uint8_t *data, size_t len, const uint8_t key[4]) {
  size_t h = 0;
  out[h++] = 0x82;
  if (len < 126) {
    out[h++] = (uint8_t)(0x80 | len);
  } else if (len <= 0xffff) {
    out[h++] = 0x80 | 126;
    out[h++] = (uint8_t)(len >> 8);
    out[h++] = (uint8_t)len;
  } else {
    out[h++] = 0x80 | 127;
    for (int i = 0; i < 8; i++)
      out[h++] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
  }
  memcpy(out + h, key, 4);
  h += 4;
  /* Masked eight bytes at a time: the key repeats every four bytes, so the
   * same eight-byte pattern applies at every multiple of eight. */
  uint8_t k8[8] = {key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]};
  uint64_t kw;
  memcpy(&kw, k8, 8);
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t w;
    memcpy(&w, data + i, 8);
    w ^= kw;
    memcpy(out + h + i, &w, 8);
  }
  for (; i < len; i++)
    out[h + i] = data[i] ^ key[i & 3];
  return h + len;
}

static void pop_frame(pt_ws *t) {
  pt_frame *f = t->q_head;
  t->q_head = f->next;
  if (!t->q_head)
    t->q_tail = NULL;
  t->q_bytes -= f->len;
  free(f);
}

/* Writes the frames queued at this moment in one send(): a bot's turn is a
 * reply Send and a Commit, often with others' in the same loop turn, and a
 * syscall per frame cost more than the frames. lws masks what lws_write
 * frames itself; here the frames are masked with keys from OpenSSL's
 * generator (unpredictable, as RFC 6455 asks, each used once, drawn 64 at
 * a time: t->keys) and written raw. Returns 0, or -1 to drop the connection. */
static int write_coalesced(pt_ws *t, struct lws *wsi) {
  size_t total = 0, n = 0;
  for (pt_frame *f = t->q_head;
       f && (n == 0 || total + f->len + 14 <= PT_COALESCE_BYTES); f = f->next, n++)
    total += f->len + ws_header_len(f->len);
  if (t->wbuf_cap < LWS_PRE + total) {
    uint8_t *b = realloc(t->wbuf, LWS_PRE + total);
    if (!b)
      return -1;
    t->wbuf = b;
    t->wbuf_cap = LWS_PRE + total;
  }
  uint8_t *w = t->wbuf + LWS_PRE;
  size_t off = 0;
  for (size_t i = 0; i < n; i++) {
    if (t->keys_left < 4) {
      if (RAND_bytes(t->keys, sizeof t->keys) != 1)
        return -1;
      t->keys_left = sizeof t->keys;
    }
    const uint8_t *key = t->keys + sizeof t->keys - t->keys_left;
    t->keys_left -= 4;
    off += ws_frame(w + off, t->q_head->buf + LWS_PRE, t->q_head->len, key);
    pop_frame(t);
  }
  int wrote = lws_write(wsi, w, off, LWS_WRITE_RAW);
  return wrote < 0 || (size_t)wrote < off ? -1 : 0;
}

/* Writes what is queued (up to PT_COALESCE_BYTES). Returns 0, or -1 to
 * drop the connection. A single frame goes the same way: lws_write's own
 * masking reads four bytes from /dev/urandom per frame (a read(2) on
 * every send of a customer's one message in flight), where the keys here
 * come 64 at a time. */
static int write_queued(pt_ws *t, struct lws *wsi) {
  return write_coalesced(t, wsi);
}

/* Runs once per loop iteration that queued frames, just before the loop
 * polls: the frames go out with lws_write at once instead of through
 * lws_callback_on_writable, which added and removed POLLOUT with several
 * epoll_ctl calls per write (about twelve per send() of a busy bot, most
 * of them failing ones that libuv retries). As the gateway does: when lws
 * still holds part of an earlier write, or a close is under way, the
 * WRITEABLE callback writes instead. */
static void flush_cb(uv_prepare_t *h) {
  pt_ws *t = h->data;
  t->flush_on = false;
  uv_prepare_stop(h);
  struct lws *wsi = t->wsi;
  if (!wsi || !t->open || t->kill || t->destroying || !t->q_head)
    return;
  if (t->closing || lws_partial_buffered(wsi)) {
    lws_callback_on_writable(wsi);
    return;
  }
  if (write_queued(t, wsi) < 0) {
    set_status(t, PARLEY_EIO, 1006);
    kill_conn(t);
    return;
  }
  if (t->q_head)
    lws_callback_on_writable(wsi);
}

static int on_writeable(pt_ws *t, struct lws *wsi) {
  if (t->kill)
    return 0; /* lws kills the connection on its next service */
  if (t->q_head) {
    int rc = write_queued(t, wsi);
    if (rc < 0) {
      set_status(t, PARLEY_EIO, 1006);
      return -1;
    }
    if (t->q_head || t->closing)
      lws_callback_on_writable(wsi);
    return 0;
  }
  if (t->closing && !t->close_written)
    return write_close(t, wsi);
  return 0;
}

static int ws_callback(struct lws *wsi, enum lws_callback_reasons reason,
                       void *user, void *in, size_t len) {
  (void)user;
  pt_ws *t = wsi ? lws_get_opaque_user_data(wsi) : NULL;
  if (!t)
    return 0;

  switch (reason) {
  case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER:
    return on_append_headers(t, wsi, in, len);

  case LWS_CALLBACK_CLIENT_ESTABLISHED:
    t->wsi = wsi;
    t->open = true;
    pt_reasm_reset(&t->rx);
    if (hooks_live(t) && t->hooks.open) {
        t->hooks.open(t->hooks.ud);
      }
    if (t->q_head || t->closing)
      lws_callback_on_writable(wsi);
    return 0;

  case LWS_CALLBACK_CLIENT_RECEIVE:
    return on_receive(t, wsi, in, len);

  case LWS_CALLBACK_CLIENT_WRITEABLE:
    return on_writeable(t, wsi);

  case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
    /* Kept for the error a user reads: a 404 or a 502 from a proxy says
     * more about a wrong URL than "I/O error". */
    t->last_http = wsi ? lws_http_client_http_response(wsi) : 0;
    set_status(t, classify_connect_error(wsi, in), 1006);
    return 0;

  case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE: {
    const uint8_t *b = in;
    int code = len >= 2 ? (b[0] << 8) | b[1] : LWS_CLOSE_STATUS_NO_STATUS;
    set_status(t, PARLEY_EDISCONNECTED, code);
    return 0; /* lws echoes the close */
  }

  case LWS_CALLBACK_CLIENT_CLOSED:
    set_status(t, PARLEY_EDISCONNECTED, 1006);
    return 0;

  case LWS_CALLBACK_WSI_DESTROY:
    if (t->has_conn)
      connection_gone(t);
    return 0;

  default:
    return 0;
  }
}

/* Read-only and shared by every context; lws keeps no state in it. */
static const struct lws_protocols pt_protocols[] = {
    {PT_WS_SUBPROTOCOL, ws_callback, 0, 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* ------------------------------------------------------------ public API */

/* The client TLS context: TLS 1.2 or later, peers verified against the
 * system CAs plus ca_file. Whether a connection verifies at all, and checks
 * the host name, is decided per connection by lws from LCCSCF flags. */
static int make_ssl_ctx(pt_ws_shared *sh, const char **why) {
  sh->ssl_ctx = SSL_CTX_new(TLS_client_method());
  if (!sh->ssl_ctx) {
    *why = "cannot create the TLS context";
    return PARLEY_ETLS;
  }
  SSL_CTX_set_min_proto_version(sh->ssl_ctx, TLS1_2_VERSION);
  /* A system without a CA store still works with ca_file alone. */
  (void)SSL_CTX_set_default_verify_paths(sh->ssl_ctx);
  if (sh->ca_file &&
      SSL_CTX_load_verify_locations(sh->ssl_ctx, sh->ca_file, NULL) != 1) {
    *why = "cannot read ca_file as a PEM CA bundle";
    return PARLEY_ETLS;
  }
  return 0;
}

static bool same_ca(const char *a, const char *b) {
  if (!a || !b)
    return a == b;
  return strcmp(a, b) == 0;
}

/* Creates a shared context for loop; not yet in the registry. */
static int shared_new(uv_loop_t *loop, bool tls, const char *ca_file,
                      pt_ws_shared **out, const char **why) {
  pt_ws_shared *sh = calloc(1, sizeof *sh);
  if (!sh)
    return PARLEY_ENOMEM;
  sh->loop = loop;
  sh->tls = tls;
  if (tls && ca_file) {
    sh->ca_file = strdup(ca_file);
    if (!sh->ca_file) {
      shared_free(sh);
      return PARLEY_ENOMEM;
    }
  }

  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  void *loops[1] = {loop};
  info.options = LWS_SERVER_OPTION_LIBUV;
  if (tls) {
    int rc = make_ssl_ctx(sh, why);
    if (rc) {
      shared_free(sh);
      return rc;
    }
    /* lws only uses a provided client SSL_CTX with its TLS support on. */
    info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.provided_client_ssl_ctx = sh->ssl_ctx;
  }
  info.foreign_loops = loops;
  info.port = CONTEXT_PORT_NO_LISTEN;
  info.protocols = pt_protocols;
  info.gid = -1;
  info.uid = -1;
  /* Nothing reads the context user; connections carry their pt_ws. */
  info.user = sh;
  info.timeout_secs = 10;
  info.connect_timeout_secs = 10;
  sh->ctx = lws_create_context(&info);
  if (!sh->ctx) {
    *why = "cannot create the WebSocket context";
    shared_free(sh);
    return PARLEY_EIO;
  }
  sh->static_handles = ctx_handles(sh);
  uv_timer_init(loop, &sh->reaper);
  sh->reaper.data = sh;
  *out = sh;
  return 0;
}

/* Takes a reference on the loop's shared context for (tls, ca_file),
 * creating it on first use. The lock is held across the creation so that
 * two transports never create two contexts for the same key; creation only
 * touches the caller's own loop. */
static int shared_acquire(uv_loop_t *loop, bool tls, const char *ca_file,
                          pt_ws_shared **out, const char **why) {
  if (!tls)
    ca_file = NULL;
  pthread_mutex_lock(&pt_reg_lock);
  for (pt_ws_shared *sh = pt_reg_head; sh; sh = sh->next)
    if (sh->loop == loop && sh->tls == tls && same_ca(sh->ca_file, ca_file)) {
      sh->refs++;
      pthread_mutex_unlock(&pt_reg_lock);
      *out = sh;
      return 0;
    }
  pt_ws_shared *sh = NULL;
  int rc = shared_new(loop, tls, ca_file, &sh, why);
  if (rc == 0) {
    sh->refs = 1;
    sh->next = pt_reg_head;
    pt_reg_head = sh;
    *out = sh;
  }
  pthread_mutex_unlock(&pt_reg_lock);
  return rc;
}

static int fail_new(pt_ws *t, int status) {
  if (t) {
    free(t->auth);
    pt_reasm_free(&t->rx);
    free(t);
  }
  return status;
}

int pt_ws_new(uv_loop_t *loop, const pt_ws_config *cfg,
              const pt_ws_hooks *hooks, pt_ws **out, const char **why) {
  const char *dummy;
  if (!why)
    why = &dummy;
  *out = NULL;
  if (!loop || !cfg || !hooks) {
    *why = "missing loop, config or hooks";
    return PARLEY_EINVAL;
  }
  pt_ws *t = calloc(1, sizeof *t);
  if (!t)
    return PARLEY_ENOMEM;
  t->loop = loop;
  t->hooks = *hooks;
  t->tls_insecure = cfg->tls_insecure;
  t->max_queue = cfg->max_queue_bytes ? cfg->max_queue_bytes
                                      : PT_WS_DEFAULT_MAX_QUEUE;
  pt_reasm_init(&t->rx, cfg->max_message_bytes ? cfg->max_message_bytes
                                               : PT_WS_DEFAULT_MAX_MESSAGE);
  int rc = pt_url_parse(cfg->url, &t->url, why);
  if (rc)
    return fail_new(t, rc);

  if (cfg->token && *cfg->token) {
    size_t n = strlen(cfg->token);
    if (n + 8 > PT_AUTH_MAX) {
      *why = "token too long";
      return fail_new(t, PARLEY_EINVAL);
    }
    /* A CR or LF would let the token inject headers into the upgrade. */
    for (size_t i = 0; i < n; i++)
      if ((unsigned char)cfg->token[i] < 0x20 || cfg->token[i] == 0x7f) {
        *why = "control character in token";
        return fail_new(t, PARLEY_EINVAL);
      }
    t->auth = malloc(n + 8);
    if (!t->auth)
      return fail_new(t, PARLEY_ENOMEM);
    memcpy(t->auth, "Bearer ", 7);
    memcpy(t->auth + 7, cfg->token, n + 1);
  }

  rc = shared_acquire(loop, t->url.tls, cfg->ca_file, &t->sh, why);
  if (rc)
    return fail_new(t, rc);
  t->ctx = t->sh->ctx;
  uv_timer_init(loop, &t->done);
  t->done.data = t;
  uv_prepare_init(loop, &t->flush);
  t->flush.data = t;
  *out = t;
  return 0;
}

int pt_ws_connect(pt_ws *t) {
  if (t->destroying || t->has_conn)
    return PARLEY_ESTATE;

  struct lws_client_connect_info ci;
  memset(&ci, 0, sizeof ci);
  ci.context = t->ctx;
  ci.address = t->url.host;
  ci.port = t->url.port;
  ci.path = t->url.path;
  ci.host = t->url.host;
  ci.origin = t->url.host;
  ci.protocol = PT_WS_SUBPROTOCOL;
  ci.opaque_user_data = t;
  if (t->url.tls) {
    ci.ssl_connection = LCCSCF_USE_SSL;
    if (t->tls_insecure)
      /* "Accept any certificate": lws lets each kind of failure through
       * only with its own flag; ALLOW_INSECURE covers a leaf whose issuer
       * is not in the trust store. */
      ci.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED |
                           LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK |
                           LCCSCF_ALLOW_EXPIRED | LCCSCF_ALLOW_INSECURE;
  }

  t->has_conn = true;
  t->status_set = false;
  t->sync_failed = false;
  t->in_connect = true;
  struct lws *wsi = lws_client_connect_via_info(&ci);
  t->in_connect = false;
  if (!wsi || t->sync_failed) {
    /* Either lws refused at once or the wsi already died inside the call;
     * both are reported to the caller, not through a hook. */
    t->has_conn = false;
    t->wsi = NULL;
    t->status_set = false;
    return PARLEY_EIO;
  }
  t->wsi = wsi;
  return 0;
}

int pt_ws_set_url(pt_ws *t, const char *url, const char **why) {
  const char *dummy;
  if (!why)
    why = &dummy;
  if (t->destroying || t->has_conn) {
    *why = "a connection exists";
    return PARLEY_ESTATE;
  }
  pt_url u;
  int rc = pt_url_parse(url, &u, why);
  if (rc)
    return rc;
  if (u.tls != t->url.tls) {
    *why = "every gateway URL of one client must use the same scheme";
    return PARLEY_EINVAL;
  }
  t->url = u;
  return 0;
}

int pt_ws_send(pt_ws *t, const uint8_t *data, size_t len) {
  if (t->destroying || !t->open || t->closing || t->kill)
    return PARLEY_EDISCONNECTED;
  if (len > t->max_queue || t->q_bytes > t->max_queue - len)
    return PARLEY_EBACKPRESSURE;
  pt_frame *f = malloc(sizeof *f + LWS_PRE + len);
  if (!f)
    return PARLEY_ENOMEM;
  f->next = NULL;
  f->len = len;
  if (len)
    memcpy(f->buf + LWS_PRE, data, len);
  if (t->q_tail)
    t->q_tail->next = f;
  else
    t->q_head = f;
  t->q_tail = f;
  t->q_bytes += len;
  if (!t->flush_on) {
    t->flush_on = true;
    uv_prepare_start(&t->flush, flush_cb);
  }
  return 0;
}

/* Ends the connection without a close handshake. lws is asked to kill the
 * wsi on its next service, never synchronously under the caller's feet
 * (and never by returning -1 from a receive callback, see on_receive). */
static void kill_conn(pt_ws *t) {
  if (!t->has_conn || !t->wsi || t->kill)
    return;
  set_status(t, 0, 1006);
  t->kill = true;
  lws_set_timeout(t->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

void pt_ws_abort(pt_ws *t) { kill_conn(t); }

void pt_ws_close(pt_ws *t, int code, const char *reason) {
  if (!t->has_conn)
    return;
  if (!t->open) {
    kill_conn(t);
    return;
  }
  if (t->closing)
    return;
  t->closing = true;
  t->close_code = code;
  snprintf(t->close_reason, sizeof t->close_reason, "%s", reason ? reason : "");
  lws_callback_on_writable(t->wsi);
}

void pt_ws_destroy(pt_ws *t) {
  if (!t || t->destroying)
    return;
  t->destroying = true;
  if (t->has_conn)
    kill_conn(t); /* connection_gone() drops the reference */
  else
    release(t);
}

unsigned pt_ws_last_http_status(const pt_ws *t) { return t ? t->last_http : 0; }

bool pt_ws_is_open(const pt_ws *t) {
  return t->open && !t->closing && !t->kill && !t->destroying;
}

bool pt_ws_busy(const pt_ws *t) { return t->has_conn; }

size_t pt_ws_queued_bytes(const pt_ws *t) { return t->q_bytes; }
