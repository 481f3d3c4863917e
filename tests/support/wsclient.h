/* A blocking, single-connection WebSocket client for tests.
 *
 * Hand-written RFC 6455 over a plain TCP socket, so tests can also send
 * frames no well-behaved client would (oversized, malformed, fragmented).
 * No TLS. Every call takes a timeout and never blocks longer than that.
 *
 *   wsc *c = wsc_connect("127.0.0.1", port, "Bearer tok", 2000);
 *   wsc_send_frame(c, &hello);
 *   pw_frame *f; wsc_recv_frame(c, 2000, &f); ... pw_frame_free(f);
 *   wsc_close(c, 1000);
 *
 * Control frames (ping) from the server are answered inside the receive
 * calls. A Close from the server is remembered: wsc_close_code() returns
 * its code, and receive calls then return PARLEY_EDISCONNECTED. A timeout
 * that strikes in the middle of a message leaves the stream unusable;
 * timeouts while waiting for a message are harmless.
 */
#ifndef PARLEY_TEST_WSCLIENT_H
#define PARLEY_TEST_WSCLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "wire/wire.h"

typedef struct wsc wsc;

/* Connects to an IPv4 address (e.g. "127.0.0.1") and upgrades with
 * subprotocol "parley.v1". authorization is the
 * whole Authorization header value ("Bearer <token>") or NULL for none.
 * Returns NULL on failure (the reason goes to stderr). */
wsc *wsc_connect(const char *host, int port, const char *authorization, int timeout_ms);

/* Sends one binary message with these bytes as payload. */
int wsc_send_bytes(wsc *c, const void *data, size_t len);
/* Writes bytes to the socket as they are (hand-made frames). */
int wsc_send_raw(wsc *c, const void *data, size_t len);
/* Encodes and sends one frame. */
int wsc_send_frame(wsc *c, const pw_frame *f);

/* Receives the next data message's payload (malloc'd; caller frees).
 * 0, PARLEY_ETIMEOUT, PARLEY_EDISCONNECTED (closed; see wsc_close_code),
 * PARLEY_EIO, PARLEY_EPROTOCOL. */
int wsc_recv_bytes(wsc *c, int timeout_ms, uint8_t **data, size_t *len);
/* Receives and decodes the next frame (no size limit on this side);
 * free it with pw_frame_free. Same statuses, plus PARLEY_EMALFORMED. */
int wsc_recv_frame(wsc *c, int timeout_ms, pw_frame **out);
/* Receives frames, dropping Ping/Pong, until one with this body case
 * arrives; other frames are dropped too. */
int wsc_recv_kind(wsc *c, int timeout_ms, Parley__V1__Frame__BodyCase kind, pw_frame **out);

/* Waits until the server closes; returns its close code (1005 when the
 * Close carried none), or a negative status on timeout or error. */
int wsc_recv_close(wsc *c, int timeout_ms);
/* The close code the server sent, 0 if none yet. */
int wsc_close_code(const wsc *c);

/* Sends Close with code (0: none), waits briefly for the echo, frees. */
void wsc_close(wsc *c, int code);
/* Drops the TCP connection without a close handshake, frees. */
void wsc_abort(wsc *c);

#endif
