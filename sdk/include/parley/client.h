/* Parley client: one connection to a gateway as a customer, agent or bot.
 *
 * A client is an opaque handle created from a versioned options struct. It
 * runs on a libuv loop: the caller's (options.loop) or its own
 * (parley_client_run). The client keeps the four promises for the
 * application: sends are ACKed or reported failed, inbound events are
 * delivered once each, in seq order, per conversation.
 *
 * Thread safety: a client and everything it hands out belong to the thread
 * running its loop. Call its functions only from that thread (from the
 * callbacks or from other callbacks of the same loop). Different clients on
 * different loops are independent.
 *
 * Ownership: every pointer passed to a callback is borrowed until the
 * callback returns; copy what you keep. Every pointer passed to a function
 * is copied before the function returns.
 */
#ifndef PARLEY_CLIENT_H
#define PARLEY_CLIENT_H

#include <parley/error.h>
#include <parley/types.h>

#ifdef __cplusplus
extern "C" {
#endif

struct uv_loop_s;
typedef struct parley_client parley_client;

typedef enum parley_conn_state {
  PARLEY_CONN_IDLE = 0,        /* created, not started */
  PARLEY_CONN_CONNECTING = 1,  /* opening the WebSocket */
  PARLEY_CONN_HANDSHAKE = 2,   /* Hello sent, waiting for Welcome */
  PARLEY_CONN_READY = 3,       /* Welcome received: sending and receiving */
  PARLEY_CONN_BACKOFF = 4,     /* lost; waiting before reconnecting */
  PARLEY_CONN_CLOSING = 5,     /* parley_client_stop: flushing */
  PARLEY_CONN_CLOSED = 6,      /* stopped; no more callbacks but this one */
} parley_conn_state;

typedef struct parley_callbacks {
  /* An inbound event, in seq order, once. For customers and agents the
   * event is acknowledged when this returns (unless manual_ack); for bots
   * only parley_client_commit acknowledges. */
  void (*on_event)(parley_client *c, const parley_event *ev, void *ud);
  /* A send completed or failed for good. send_ud is the pointer given to
   * parley_client_send. */
  void (*on_send_result)(parley_client *c, const parley_send_result *r,
                         void *send_ud, void *ud);
  /* Bots: a commit was applied or refused. */
  void (*on_commit_result)(parley_client *c, const parley_commit_result *r,
                           void *ud);
  /* Bots: a conversation was assigned to this connection. */
  void (*on_assign)(parley_client *c, const parley_assignment *a, void *ud);
  /* Bots: a conversation left this connection. */
  void (*on_revoke)(parley_client *c, const char *conversation, uint64_t epoch,
                    const char *reason, void *ud);
  /* Agents: a queue listing (update == false) or a change (update == true). */
  void (*on_queue)(parley_client *c, const parley_queue_item *items, size_t n,
                   bool update, bool removed, void *ud);
  /* The connection changed state. status says why it was lost, or 0. */
  void (*on_state)(parley_client *c, parley_conn_state state, int status,
                   void *ud);
  /* The gateway reported an error not tied to a send or commit. */
  void (*on_error)(parley_client *c, int status, const char *message,
                   void *ud);
} parley_callbacks;

/* Version 2 added urls and n_urls; a version 1 struct is still accepted. */
#define PARLEY_CLIENT_OPTIONS_VERSION 2
/* The most gateway URLs one client holds (url's list and urls together). */
#define PARLEY_MAX_URLS 16

typedef struct parley_client_options {
  uint32_t struct_version;   /* PARLEY_CLIENT_OPTIONS_VERSION */
  /* ws://host:port/path or wss://..., or several gateway nodes separated
   * by commas ("ws://a:8080/,ws://b:8080/"), which is how a command line,
   * a YAML value or an environment variable passes a list. */
  const char *url;
  const char *principal;
  const char *token;         /* sent in the Authorization header */
  parley_role role;
  const char *device;        /* stable per installation; default: principal */
  const char *locale;        /* customers: locale of conversations they open */
  const char *const *queues; /* agents: queues to watch */
  size_t n_queues;
  struct uv_loop_s *loop;    /* NULL: the client owns a loop, see parley_client_run */
  bool manual_ack;           /* customers/agents: acknowledge with parley_client_ack */
  bool tls_insecure;         /* development only: accept any certificate */
  const char *ca_file;       /* extra CA bundle for wss:// */
  parley_tuning tuning;
  parley_callbacks cb;
  void *user_data;           /* passed to every callback */
  /* Version 2. More gateway nodes, tried after those in url. Failover:
   * the client connects to the first URL; whenever a connection is lost or
   * an attempt fails it moves on to the next one (after the last, the
   * first), so a node that goes away costs one reconnect. The session
   * resumes there from the client's cursors: unacknowledged sends are
   * written again with the same ids (the gateway answers duplicates with
   * the original seq), and delivery resumes above the acknowledged seq, so
   * nothing is lost, doubled or reordered. The nodes must share one
   * store (the PostgreSQL backend; docs/scaling.md). Backoff grows only
   * after every URL failed in a row. All URLs use one scheme. */
  const char *const *urls;
  size_t n_urls;
} parley_client_options;

#define PARLEY_CLIENT_OPTIONS_INIT \
  { .struct_version = PARLEY_CLIENT_OPTIONS_VERSION }

/* Creates a client. It does not connect until parley_client_start. */
int parley_client_new(const parley_client_options *opts, parley_client **out);

/* Connects, and keeps reconnecting with backoff until stopped. */
int parley_client_start(parley_client *c);

/* Runs the client's own loop until the client is closed. Only for clients
 * created with loop == NULL. */
int parley_client_run(parley_client *c);

/* Stops: flushes pending ACKs, waits up to drain_ms for pending sends and
 * commits, then closes the connection. on_state(CLOSED) follows. */
int parley_client_stop(parley_client *c, uint32_t drain_ms);

/* Frees a client. Safe on a client that is not closed: it is closed first,
 * without draining. NULL is a no-op. */
void parley_client_free(parley_client *c);

/* Sends a message. msg_id may be NULL (a random id is drawn) or a derived
 * id (parley_msg_id_derive). epoch is the assignment epoch for bots, 0
 * otherwise. The result arrives through on_send_result with send_ud. */
int parley_client_send(parley_client *c, const char *conversation,
                       const parley_content *content, const parley_quote *quote,
                       const uint8_t *msg_id, uint64_t epoch, void *send_ud);

/* Sends a conversation action (tag, handoff, take, ...). Same rules as
 * parley_client_send. */
int parley_client_action(parley_client *c, const char *conversation,
                         const parley_action *action, const uint8_t *msg_id,
                         uint64_t epoch, void *send_ud);

/* Bots: opens a new conversation with a customer (a proactive
 * conversation), where the gateway's policy (`proactive:` in its config)
 * lets this bot principal do so. conversation is the new id; msg_id (NULL:
 * random) makes the open idempotent: the same id again is answered with
 * the original seq and duplicate = true. locale may be NULL: the gateway
 * then uses the customer's (their connection's, else their latest
 * conversation's). on_send_result answers with the OPENED event's seq, or
 * PARLEY_EFORBIDDEN when the policy refuses, PARLEY_EINVAL when the id is
 * taken. The conversation then arrives with on_assign like any other; the
 * first message goes out with parley_client_send and the Assign's epoch.
 * PARLEY_EINVAL at once when this client is not a bot. */
int parley_client_open(parley_client *c, const char *conversation,
                       const char *customer, const char *locale,
                       const uint8_t *msg_id, void *send_ud);

/* manual_ack: everything up to seq in the conversation is applied. */
int parley_client_ack(parley_client *c, const char *conversation, uint64_t seq);

/* Bots: commits handled events with state and tag changes. Several
 * conversations may be given at once; they share one frame. */
int parley_client_commit(parley_client *c, const parley_commit *commits,
                         size_t n);

/* Agents: asks for the listing of a queue (NULL: all watched queues). */
int parley_client_queue(parley_client *c, const char *queue);

parley_conn_state parley_client_state(const parley_client *c);
/* The gateway URL the client is connected or connecting to (borrowed
 * while the client lives). */
const char *parley_client_url(const parley_client *c);
/* The HTTP status the gateway (or a proxy in front of it) answered the
 * last failed WebSocket upgrade with, such as 404 or 502; 0 when the
 * attempt got no HTTP answer (refused, DNS, TLS, reset). For error
 * messages: the status of a failed connection names the class. */
unsigned parley_client_upgrade_status(const parley_client *c);
struct uv_loop_s *parley_client_loop(parley_client *c);

void parley_client_stats_get(const parley_client *c, parley_client_stats *out);

#ifdef __cplusplus
}
#endif
#endif /* PARLEY_CLIENT_H */
