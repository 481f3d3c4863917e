/* Non-blocking HTTP client on a libuv loop, built on libcurl's multi socket
 * interface: curl never blocks the loop (name resolution runs on curl's
 * resolver threads, sockets are watched with uv_poll, curl's timeouts with
 * one uv_timer).
 *
 * Threading: every function here must be called on the loop's thread, and
 * every callback is called on that thread, from inside uv_run. A callback is
 * never called from inside ph_request_start, so a caller may start a request
 * and then suspend (a Lua coroutine yields) without a race.
 *
 * Security rules, applied to every request:
 * - Only http:// and https:// URLs. Environment proxies (http_proxy ...) are
 *   ignored: a proxy would hide where the request really goes.
 * - The URL's host must match allow_hosts: an exact (case-insensitive) name
 *   or IP literal ("api.example.com", "127.0.0.1", "[::1]" is written
 *   "::1"), or a wildcard "*.example.com" that matches any name ending in
 *   ".example.com" (but not "example.com" itself). An empty list allows no
 *   host. Otherwise ph_request_start fails with PARLEY_EDENIED before any
 *   name is resolved or connection made.
 * - Every address a connection is about to be opened to is checked after
 *   resolution and before connect(): link-local (169.254.0.0/16, fe80::/10),
 *   cloud metadata (169.254.169.254, fd00:ec2::254), unspecified, multicast
 *   and reserved addresses are always refused; loopback and private ranges
 *   (127/8, 10/8, 172.16/12, 192.168/16, 100.64/10, ::1, fc00::/7) are
 *   refused unless allow_private. The request then completes with
 *   PARLEY_EDENIED and a message naming the address. This also defeats DNS
 *   names that point at internal addresses.
 * - Redirects are not followed: a 3xx is reported as the response (with its
 *   Location header), so a redirect can never reach a host that is not
 *   allowed. Follow it yourself with a new request if the target is allowed.
 * - Connections opened with allow_private are never reused, so a later
 *   request without allow_private cannot ride on one.
 * - Time, response body and response headers are bounded (see ph_request).
 */
#ifndef PARLEY_HTTP_HTTP_H
#define PARLEY_HTTP_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct uv_loop_s;
struct sockaddr;

typedef struct ph_client ph_client;

/* Defaults used when the matching ph_request field is 0. */
#define PH_DEFAULT_TIMEOUT_MS 10000u
#define PH_DEFAULT_CONNECT_TIMEOUT_MS 5000u /* capped at the total timeout */
#define PH_DEFAULT_MAX_RESPONSE_BYTES (1024u * 1024u)
/* Hard limits. */
#define PH_MAX_IN_FLIGHT 256u                  /* requests per client */
#define PH_MAX_REQUEST_HEADERS 64u
#define PH_MAX_REQUEST_BODY (16u * 1024u * 1024u)
#define PH_MAX_RESPONSE_HEADERS 100u
#define PH_MAX_RESPONSE_HEADER_BYTES (64u * 1024u)
#define PH_MAX_RESPONSE_BYTES (256u * 1024u * 1024u) /* max_response_bytes cap */

/* Creates a client on loop (borrowed: it must outlive the client). Returns
 * 0, PARLEY_ENOMEM or PARLEY_EINTERNAL (curl could not be initialised). */
int ph_client_new(struct uv_loop_s *loop, ph_client **out);

/* Cancels every pending request, calling its callback with status
 * PARLEY_ESHUTDOWN (synchronously, from inside this call), then closes the
 * client's uv handles. The memory is released by the handles' close
 * callbacks: run the loop once more (uv_run(loop, UV_RUN_NOWAIT) or until
 * it returns 0) before closing the loop. NULL is a no-op. May be called
 * from inside a ph_done_cb. */
void ph_client_free(ph_client *c);

/* One header. Both strings are borrowed for the duration of the call they
 * are passed to; response headers are borrowed until the callback returns. */
typedef struct ph_header {
  const char *name, *value;
} ph_header;

/* A request description. Every pointer is borrowed only for the duration of
 * ph_request_start, which copies what it keeps. Zeroed fields take the
 * defaults above. */
typedef struct ph_request {
  const char *method; /* "GET" (default when NULL), "POST", "PUT", "PATCH",
                         "DELETE", "HEAD", ...: upper-case letters only */
  const char *url;    /* http:// or https:// */
  const ph_header *headers; /* at most PH_MAX_REQUEST_HEADERS; no CR/LF */
  size_t n_headers;
  const char *body; /* sent when body_len > 0, or when method is POST */
  size_t body_len;  /* at most PH_MAX_REQUEST_BODY */
  uint32_t timeout_ms;         /* whole request; 0 = PH_DEFAULT_TIMEOUT_MS */
  uint32_t connect_timeout_ms; /* 0 = PH_DEFAULT_CONNECT_TIMEOUT_MS */
  size_t max_response_bytes;   /* 0 = PH_DEFAULT_MAX_RESPONSE_BYTES; values
                                  above PH_MAX_RESPONSE_BYTES are lowered */
  const char *const *allow_hosts; /* see the rules at the top */
  size_t n_allow_hosts;
  bool allow_private; /* permit loopback and private addresses */
} ph_request;

/* The outcome of a request. The struct and everything it points to are
 * borrowed until the callback returns: copy what you keep. */
typedef struct ph_response {
  int status;        /* 0 when an HTTP response arrived (whatever its code),
                        else PARLEY_ETIMEOUT, PARLEY_ETOOBIG (body or
                        headers over their limits), PARLEY_EDENIED (address
                        refused), PARLEY_ETLS, PARLEY_EHTTP (connection or
                        protocol failure) or PARLEY_ESHUTDOWN */
  const char *error; /* human-readable reason when status != 0, else NULL */
  long http_status;  /* e.g. 200, 404, 302; 0 when no response arrived */
  const char *body;  /* NUL-terminated for convenience; body_len excludes it.
                        Never NULL ("" when empty). */
  size_t body_len;
  const ph_header *headers; /* final response's headers, in order, names as
                               sent by the server */
  size_t n_headers;
  double total_ms; /* wall time of the transfer */
} ph_response;

/* Called exactly once per started request unless it was cancelled; on the
 * loop thread; r is borrowed until the callback returns. The callback may
 * start or cancel requests and may call ph_client_free. */
typedef void (*ph_done_cb)(const ph_response *r, void *ud);

/* Starts a request. On success returns 0, stores the request's id (never 0)
 * in *id_out when id_out is not NULL, and will call cb later. On failure
 * the callback is never called and the status is returned:
 * PARLEY_EINVAL (bad URL, method or header; NULL argument), PARLEY_EDENIED
 * (scheme not http/https, or host not in allow_hosts), PARLEY_ETOOBIG
 * (request body or headers over their limits), PARLEY_EBACKPRESSURE (more
 * than PH_MAX_IN_FLIGHT requests pending), PARLEY_ESHUTDOWN (client being
 * freed), PARLEY_ENOMEM. ph_client_last_error then explains why. */
int ph_request_start(ph_client *c, const ph_request *req, ph_done_cb cb,
                     void *ud, uint64_t *id_out);

/* Cancels a pending request: its callback will not be called. Returns 0, or
 * PARLEY_ENOTFOUND when no request with that id is pending (it finished,
 * was cancelled, or never existed). */
int ph_request_cancel(ph_client *c, uint64_t id);

/* Why the last ph_request_start on this client failed; "" if it did not.
 * Static to the client: valid until the next ph_request_start. */
const char *ph_client_last_error(const ph_client *c);

/* Number of requests started and not yet completed or cancelled. */
size_t ph_client_pending(const ph_client *c);

/* Policy helpers, exposed so that callers (and tests) can apply the same
 * rules. ph_host_allowed matches a host name (no port, no brackets) against
 * an allow list as described at the top of this file. */
bool ph_host_allowed(const char *host, const char *const *allow_hosts,
                     size_t n_allow_hosts);

/* Checks one resolved address: 0 when a connection may be opened to it,
 * PARLEY_EDENIED otherwise with the reason written to why (may be NULL). */
int ph_addr_check(const struct sockaddr *sa, bool allow_private, char *why,
                  size_t why_size);

#endif
