/* A small HTTP/1.1 server on a libuv loop, for the sidecar's local
 * operations port (health, readiness, metrics and the sidecar API).
 *
 * One thread, no blocking calls: every function here must be called on the
 * loop's thread, and every handler is called on that thread from inside
 * uv_run. The server binds 127.0.0.1 by default because what it serves is
 * meant for the machine it runs on, not for the network.
 *
 * What it accepts: a request line in origin form ("GET /path?q HTTP/1.1"),
 * at most max_headers header fields in at most max_head_bytes, and a body
 * framed by Content-Length of at most max_body_bytes. Transfer-Encoding
 * (chunked bodies) is refused with 411, an oversized head with 431, an
 * oversized body with 413, anything malformed with 400 and a message that
 * says what was wrong; after such an error the connection is closed,
 * because the framing of what follows cannot be trusted. Connections are
 * kept alive (HTTP/1.1 default, "Connection: close" honoured; HTTP/1.0 only
 * with "Connection: keep-alive"). Pipelined requests are answered in order,
 * one at a time.
 *
 * Routing: a route is (method, path prefix). A prefix matches a path equal
 * to it, or a path that continues it with '/' (so "/healthz" does not match
 * "/healthzz"), or any continuation when the prefix itself ends with '/'.
 * The longest matching prefix wins. A path that matches no route gets 404;
 * a path whose best prefix has no route for the method gets 405 with an
 * Allow header. HEAD is served by a GET route with the body left out.
 *
 * Request lifetime (read this before answering asynchronously):
 * - A handler receives a phd_request it owns from then on. It must call
 *   phd_respond (or phd_respond_ex) on it exactly once, now or later from
 *   another callback of the same loop. phd_respond frees the handle; using
 *   it afterwards is a use-after-free.
 * - If the client disconnects, or the server is closed, before the answer,
 *   the request is marked dead: phd_req_alive() turns false, the accessors
 *   keep returning the request's data (it is a copy owned by the handle),
 *   and phd_respond only frees the handle and returns PARLEY_EDISCONNECTED.
 *   So a dead request is never a dangling pointer, as long as the handler
 *   answers it once.
 * - While a request waits for its answer the connection reads no further
 *   request, but still notices a disconnect (end of stream or error). The
 *   one exception: a client that keeps pipelining until its input buffer
 *   (max_head_bytes + max_body_bytes) is full is no longer read, so its
 *   disconnect is only seen when the answer is written.
 * - The idle timeout counts from accept or from the last answer until the
 *   next request has fully arrived; it does not run while a handler owns a
 *   request, so a slow asynchronous answer is not cut off by it.
 */
#ifndef PARLEY_OPS_HTTPD_H
#define PARLEY_OPS_HTTPD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct uv_loop_s;

typedef struct phd_server phd_server;
typedef struct phd_request phd_request;

/* Defaults used when the matching phd_options field is 0. */
#define PHD_DEFAULT_HOST "127.0.0.1"
#define PHD_DEFAULT_MAX_HEAD_BYTES (8u * 1024u)
#define PHD_DEFAULT_MAX_HEADERS 100u
#define PHD_DEFAULT_MAX_BODY_BYTES (1024u * 1024u)
#define PHD_DEFAULT_MAX_CONNECTIONS 64u
#define PHD_DEFAULT_IDLE_TIMEOUT_MS 30000u
/* Hard limits: options above them are refused with PARLEY_EINVAL. */
#define PHD_MAX_HEAD_BYTES (64u * 1024u)
#define PHD_MAX_HEADERS 1000u
#define PHD_MAX_BODY_BYTES (64u * 1024u * 1024u)
#define PHD_MAX_CONNECTIONS 4096u
#define PHD_MAX_ROUTES 64u
#define PHD_MAX_RESPONSE_HEADERS 16u

typedef struct phd_options {
  const char *host;           /* [127.0.0.1] IPv4 or IPv6 literal to bind */
  uint16_t port;              /* 0: an ephemeral port, see phd_server_port */
  uint32_t max_head_bytes;    /* [8 KiB] request line and headers */
  uint32_t max_headers;       /* [100] header fields */
  uint32_t max_body_bytes;    /* [1 MiB] Content-Length bodies */
  uint32_t max_connections;   /* [64] more are answered 503 and closed */
  uint32_t idle_timeout_ms;   /* [30000] see the lifetime notes above */
} phd_options;

/* A header field. Borrowed in both directions. */
typedef struct phd_header {
  const char *name;
  const char *value;
} phd_header;

/* A route handler. req is owned by the handler: answer it exactly once. */
typedef void (*phd_handler)(phd_request *req, void *ud);

/* Called once when phd_server_close has finished and the server is freed. */
typedef void (*phd_closed_cb)(void *ud);

/* Binds and listens. loop is borrowed and must outlive the server.
 * Returns 0, PARLEY_EINVAL (bad option or host), PARLEY_EIO (bind or listen
 * failed, e.g. the port is taken) or PARLEY_ENOMEM. */
int phd_server_start(struct uv_loop_s *loop, const phd_options *opts,
                     phd_server **out);

/* The port actually bound (the ephemeral one when options.port was 0). */
uint16_t phd_server_port(const phd_server *s);

/* Adds a route. method is a token such as "GET" or "POST"; prefix starts
 * with '/'. Both are copied. Routes may be added at any time before close.
 * Returns 0, PARLEY_EINVAL or PARLEY_ENOMEM. */
int phd_route(phd_server *s, const char *method, const char *prefix,
              phd_handler handler, void *ud);

/* Stops listening, closes every connection (pending requests turn dead,
 * see above), and calls done (may be NULL) once every handle is closed;
 * the server is freed then. Call it once; uv_run must go on until done. */
void phd_server_close(phd_server *s, phd_closed_cb done, void *ud);

/* Request accessors. Every string is NUL-terminated and owned by the
 * request: valid until phd_respond. */
const char *phd_req_method(const phd_request *r);
const char *phd_req_path(const phd_request *r);   /* without the query */
const char *phd_req_query(const phd_request *r);  /* after '?', or NULL */
/* The first header with this name (case-insensitive), or NULL. */
const char *phd_req_header(const phd_request *r, const char *name);
/* The body (NUL-terminated for convenience; len excludes the NUL). */
const uint8_t *phd_req_body(const phd_request *r, size_t *len);
/* False once the client is gone or the server closed. */
bool phd_req_alive(const phd_request *r);
/* One pointer of the handler's own, NULL until set. */
void phd_req_set_data(phd_request *r, void *data);
void *phd_req_data(const phd_request *r);

/* Answers and frees the request. content_type may be NULL when len is 0.
 * The body is copied. Returns 0, PARLEY_EDISCONNECTED (the client was gone;
 * the request is freed all the same), or PARLEY_ENOMEM (the connection is
 * closed instead of answered). */
int phd_respond(phd_request *r, int status, const char *content_type,
                const void *body, size_t len);

/* Same, with extra response header fields (at most PHD_MAX_RESPONSE_HEADERS,
 * copied). A name or value containing CR, LF or NUL is refused: the client
 * gets 500 instead and the call returns PARLEY_EINVAL. */
int phd_respond_ex(phd_request *r, int status, const char *content_type,
                   const phd_header *extra, size_t n_extra, const void *body,
                   size_t len);

/* The standard reason phrase for a status code ("Not Found"). */
const char *phd_reason(int status);

#endif /* PARLEY_OPS_HTTPD_H */
