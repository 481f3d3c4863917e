/* The WebSocket transport: one libwebsockets client connection at a time,
 * on a libuv loop shared with the rest of the process.
 *
 * The transports on one loop share one reference-counted lws client
 * context attached to that loop (LWS_SERVER_OPTION_LIBUV with a foreign
 * loop), so several clients and an in-process gateway can share one loop;
 * each connection keeps its own state, headers and TLS flags. The
 * transport knows nothing of the protocol: whole binary messages go out and
 * come in, and the owner (the client) decides when to connect, reconnect
 * and close.
 *
 * Hooks are called from the loop thread. A hook may call pt_ws_send,
 * pt_ws_close, pt_ws_abort and pt_ws_destroy, but never pt_ws_connect: new
 * connections are started from outside the transport's callbacks (the
 * client does so from its timer).
 */
#ifndef PARLEY_TRANSPORT_WS_H
#define PARLEY_TRANSPORT_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct uv_loop_s;
typedef struct pt_ws pt_ws;

/* The WebSocket subprotocol of protocol version 1. */
#define PT_WS_SUBPROTOCOL "parley.v1"
#define PT_WS_DEFAULT_MAX_MESSAGE (1024u * 1024u)
#define PT_WS_DEFAULT_MAX_QUEUE (16u * 1024u * 1024u)

typedef struct pt_ws_config {
  const char *url;            /* ws://host:port/path or wss://... */
  const char *token;          /* Authorization: Bearer <token>; NULL: none */
  bool tls_insecure;          /* accept self-signed, expired, wrong host */
  const char *ca_file;        /* extra CA bundle; NULL: system CAs */
  size_t max_message_bytes;   /* inbound message limit; 0: 1 MiB */
  size_t max_queue_bytes;     /* outbound queue limit; 0: 16 MiB */
} pt_ws_config;

typedef struct pt_ws_hooks {
  void *ud;
  /* The WebSocket handshake succeeded; pt_ws_send may be used. */
  void (*open)(void *ud);
  /* One whole inbound message; borrowed until the hook returns. */
  void (*message)(void *ud, const uint8_t *data, size_t len);
  /* The connection attempt failed or the connection is gone. status is 0
   * for a close this side asked for, PARLEY_E* otherwise (EIO for network
   * errors, ETLS, EUNAUTH for a 401/403 upgrade answer, ETOOBIG for an
   * oversized message, EDISCONNECTED or the mapped code for a peer
   * close). close_code is the WebSocket close code seen or sent, 1006
   * when there was none. */
  void (*closed)(void *ud, int status, int close_code);
  /* pt_ws_destroy finished: the connection is gone, and every handle the
   * transport had on the loop is closed (with the shared lws context too
   * when this was the loop's last transport). The last hook. */
  void (*destroyed)(void *ud);
} pt_ws_hooks;

/* Creates the transport on loop, and the loop's shared lws context if it
 * has none yet. Does not connect.
 * Errors: PARLEY_EINVAL (bad URL or token; *why says which), PARLEY_ETLS
 * (TLS setup, e.g. an unreadable ca_file), PARLEY_ENOMEM, PARLEY_EIO. */
int pt_ws_new(struct uv_loop_s *loop, const pt_ws_config *cfg,
              const pt_ws_hooks *hooks, pt_ws **out, const char **why);

/* Starts a connection attempt. 0: `open` or `closed` follows later.
 * PARLEY_ESTATE when a connection exists or the transport is being
 * destroyed; PARLEY_EIO when the attempt failed at once (no hook follows). */
int pt_ws_connect(pt_ws *t);

/* Points the next pt_ws_connect at another URL of the same scheme (the
 * loop's shared context is ws:// or wss://, chosen at pt_ws_new).
 * PARLEY_ESTATE while a connection or attempt exists; PARLEY_EINVAL for a
 * bad URL or another scheme, with *why saying which. */
int pt_ws_set_url(pt_ws *t, const char *url, const char **why);

/* Queues one binary message (copied) for the open connection.
 * PARLEY_EDISCONNECTED when not open, PARLEY_EBACKPRESSURE when the queue
 * would pass its limit (the peer is not reading). */
int pt_ws_send(pt_ws *t, const uint8_t *data, size_t len);

/* Closes gracefully: writes what is queued, then a close frame with code
 * and reason, and waits for the peer's close. `closed` follows with
 * status 0. Without an open connection it behaves as pt_ws_abort. */
void pt_ws_close(pt_ws *t, int code, const char *reason);

/* Drops the connection or the attempt at once; `closed` follows with
 * status 0. No-op without a connection. */
void pt_ws_abort(pt_ws *t);

/* Drops any connection and releases the shared lws context, which is
 * destroyed with the loop's last transport. No hook is called
 * after this but `destroyed`, which follows once the loop has run the
 * handle closes (never from inside this call). t is freed after
 * `destroyed` returns. */
void pt_ws_destroy(pt_ws *t);

/* The WebSocket handshake completed and the connection is not closing. */
bool pt_ws_is_open(const pt_ws *t);

/* The HTTP status the server answered the last failed upgrade with (404,
 * 502, ...), or 0 when no answer came (refused, DNS, TLS, reset). */
unsigned pt_ws_last_http_status(const pt_ws *t);
/* A connection or attempt exists (a `closed` hook is still to come). */
bool pt_ws_busy(const pt_ws *t);
/* Bytes queued for writing. */
size_t pt_ws_queued_bytes(const pt_ws *t);

#endif /* PARLEY_TRANSPORT_WS_H */
