/* The sidecar's local HTTP port: health, readiness, metrics, and the
 * sidecar API through which the service next to the bot sends proactive
 * messages. Independent of Lua: the embedder supplies a send function and
 * reports each send's outcome with psc_send_done.
 *
 * Routes (docs/operations.md has the full contract and curl examples):
 *   GET  /healthz   200 "ok": the process is alive and its loop turns.
 *   GET  /readyz    200 "ready", or 503 "not ready: <reason>" (hooks.ready).
 *   GET  /metrics   the registry (hooks.metrics) in Prometheus text 0.0.4.
 *   POST /v1/conversations/{id}/messages
 *        body {"text": "...", "card": {...}?, "idempotency_key": "..."?}
 *        or {"template": "key", "vars": {...}?, "quick_replies": [...]? |
 *        "card": {...}?, "idempotency_key": "..."?} (hooks.send_reply)
 *        or the Idempotency-Key header. Answers only after the gateway's
 *        ACK: 200 {"conversation", "seq", "duplicate", "msg_id"}; errors
 *        are {"error": "PARLEY_E...", "message": "...", "field"?: "..."}.
 *   POST /v1/conversations
 *        body {"customer": "...", "template": "key", "vars": {...}?,
 *        "quick_replies": [...]? | "card": {...}?, "idempotency_key": "..."}
 *        (or the Idempotency-Key header; required): opens a conversation
 *        with the customer and sends the template as its first message
 *        (hooks.open). Answers like a send, with the new conversation's id;
 *        the same key again answers the same conversation, duplicate: true.
 *
 * Idempotency: the client message id is BLAKE2b(domain, conversation, key)
 * (psc_msg_id_from_key), so a request retried with the same key carries the
 * same id, and the gateway answers it with the original seq and
 * duplicate: true instead of storing a second message. Without a key a
 * random id is used, and a retry may send the message twice.
 *
 * Threading: everything runs on the loop's thread; hooks are called there
 * and psc_send_done must be called there.
 */
#ifndef PARLEY_OPS_SIDECAR_H
#define PARLEY_OPS_SIDECAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <parley/types.h>

#include "ops/httpd.h"
#include "ops/limits.h"
#include "ops/log.h"
#include "ops/metrics.h"

struct uv_loop_s;

typedef struct psc_server psc_server;
/* One sidecar send waiting for its outcome. */
typedef struct psc_request psc_request;

#define PSC_DEFAULT_SEND_TIMEOUT_MS 30000u
#define PSC_MAX_IDEMPOTENCY_KEY 255u
/* The limits of a Lua reply (ops/limits.h): one set for every way a bot sends. */
#define PSC_MAX_TEXT PARLEY_REPLY_TEXT_MAX /* bytes of "text" and of each card string */
#define PSC_MAX_BUTTONS PARLEY_REPLY_BUTTONS_MAX

typedef struct psc_hooks {
  /* Sends content to conversation with msg_id. Everything passed is
   * borrowed until the call returns: copy what you keep (the client API
   * does). Return 0 when the send is under way: psc_send_done(req, ...) must
   * then follow exactly once, later or even from inside this call. Return a
   * PARLEY_E* status when it could not start: psc_send_done must then not
   * be called, and the HTTP answer is made from the status. Required. */
  int (*send)(void *ud, const char *conversation, const parley_content *c,
              const uint8_t msg_id[PARLEY_MSG_ID_LEN], psc_request *req);
  /* A message by template: reply_json is {"template", "vars"?,
   * "quick_replies"? | "card"?} for the embedder to render in the
   * conversation's locale. The same contract as send; on PARLEY_EINVAL the
   * message written to err (err_size bytes) is the 400's. NULL: bodies with
   * "template" are refused. */
  int (*send_reply)(void *ud, const char *conversation, const char *reply_json,
                    const uint8_t msg_id[PARLEY_MSG_ID_LEN], psc_request *req, char *err,
                    size_t err_size);
  /* Opens a conversation with customer and sends reply_json (as for
   * send_reply) as its first message; key is the idempotency key. Writes
   * the new conversation's id to conversation (PARLEY_MAX_CONVERSATION_ID
   * + 1 bytes) and its first message's id to msg_id at once. The same
   * contract as send, but the outcome goes through psc_open_done. NULL:
   * POST /v1/conversations answers 501. */
  int (*open)(void *ud, const char *customer, const char *key, const char *reply_json,
              psc_request *req, char *conversation, uint8_t msg_id[PARLEY_MSG_ID_LEN],
              char *err, size_t err_size);
  /* Ready to send (connected and resumed)? When not, write a short reason
   * into reason (NUL-terminated, reason_size bytes). NULL: always ready. */
  bool (*ready)(void *ud, char *reason, size_t reason_size);
  /* Called just before /metrics is rendered, e.g. to run
   * pmet_parley_fill. May be NULL. */
  void (*before_metrics)(void *ud);
  pmet_registry *metrics; /* borrowed; NULL: /metrics renders nothing */
  /* Borrowed; NULL: no log. Each send's outcome is logged (info when
   * stored, warn when it failed or timed out) with conversation, seq,
   * msg_id and status. */
  plog_logger *log;
  void *ud;
  /* [30000] a send with no outcome by then is answered 504; the outcome
   * may still arrive later (psc_send_done stays valid), and a retry with
   * the same key then gets the original seq. */
  uint32_t send_timeout_ms;
  /* Limits of the underlying server; zero fields take httpd defaults. The
   * host and port arguments of psc_server_start override host and port. */
  phd_options http;
} psc_hooks;

/* Starts the server on host (NULL: 127.0.0.1) and port (0: ephemeral).
 * hooks is copied. Returns 0, PARLEY_EINVAL (no send hook, bad option),
 * PARLEY_EIO (cannot bind) or PARLEY_ENOMEM. */
int psc_server_start(struct uv_loop_s *loop, const char *host, uint16_t port,
                     const psc_hooks *hooks, psc_server **out);

uint16_t psc_server_port(const psc_server *s);

/* The outcome of a send: status 0 and the seq the gateway assigned (and
 * whether it already had the message), or a PARLEY_E* status. Frees req.
 * Safe after the HTTP client went away, after the 504 timeout, and after
 * psc_server_close: then it only frees. */
void psc_send_done(psc_request *req, int status, uint64_t seq, bool duplicate);

/* The outcome of an open: like psc_send_done, with the conversation's id
 * and, on failure, why (both copied; may be NULL). */
void psc_open_done(psc_request *req, int status, const char *conversation, uint64_t seq,
                   bool duplicate, const char *why);
/* Closes the server. Sends still waiting are answered 503 (shutting down);
 * their psc_request handles stay valid until psc_send_done. done (may be
 * NULL) is called once the server is freed. */
void psc_server_close(psc_server *s, void (*done)(void *ud), void *ud);

/* The message id a request with this idempotency key gets. */
void psc_msg_id_from_key(const char *conversation, const char *key,
                         uint8_t out[PARLEY_MSG_ID_LEN]);

/* The HTTP status the API answers for a PARLEY_E* status. */
int psc_http_status(int parley_status);

#endif /* PARLEY_OPS_SIDECAR_H */
