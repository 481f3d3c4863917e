/* Parley value types shared by the client API, the protocol engine and the
 * Lua runtime.
 *
 * Ownership: every pointer inside these structs is borrowed. When the SDK
 * passes one to a callback it is valid until the callback returns; copy
 * what you keep. When you pass one to the SDK, the SDK copies what it needs
 * before the call returns.
 */
#ifndef PARLEY_TYPES_H
#define PARLEY_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PARLEY_MSG_ID_LEN 16
#define PARLEY_PROTOCOL_VERSION 1
#define PARLEY_MAX_CONVERSATION_ID 128

typedef enum parley_role {
  PARLEY_ROLE_UNSPECIFIED = 0,
  PARLEY_ROLE_CUSTOMER = 1,
  PARLEY_ROLE_AGENT = 2,
  PARLEY_ROLE_BOT = 3,
  PARLEY_ROLE_SYSTEM = 4,
} parley_role;

typedef enum parley_content_kind {
  PARLEY_CONTENT_NONE = 0,
  PARLEY_CONTENT_TEXT = 1,
  PARLEY_CONTENT_CARD = 2,
  PARLEY_CONTENT_QUICK_REPLIES = 3,
  PARLEY_CONTENT_IMAGE = 4,
  PARLEY_CONTENT_POSTBACK = 5,
} parley_content_kind;

/* A card button (payload or url set, not both) or a quick reply (payload). */
typedef struct parley_button {
  const char *label;
  const char *payload;
  const char *url;
} parley_button;

typedef struct parley_content {
  parley_content_kind kind;
  const char *text;      /* TEXT body; CARD text; QUICK_REPLIES prompt; IMAGE alt */
  const char *title;     /* CARD */
  const char *image_url; /* CARD image; IMAGE url */
  const parley_button *buttons; /* CARD buttons or QUICK_REPLIES replies */
  size_t n_buttons;
  const char *payload;   /* POSTBACK payload */
  const char *label;     /* POSTBACK label */
  uint64_t source_seq;   /* POSTBACK: seq of the message with the button */
  uint32_t width, height; /* IMAGE */
  const char *fallback;  /* plain-text rendering; generated when NULL */
} parley_content;

typedef struct parley_quote {
  uint64_t seq;        /* 0: no quote */
  const char *excerpt;
  const char *sender;
} parley_quote;

typedef enum parley_event_kind {
  PARLEY_EVENT_UNSPECIFIED = 0,
  PARLEY_EVENT_MESSAGE = 1,
  PARLEY_EVENT_OPENED = 2,
  PARLEY_EVENT_ASSIGNED = 3,
  PARLEY_EVENT_HANDED_OFF = 4,
  PARLEY_EVENT_HANDED_BACK = 5,
  PARLEY_EVENT_CLOSED = 6,
  PARLEY_EVENT_TAGGED = 7,
  PARLEY_EVENT_STATE_CHANGED = 8,
  PARLEY_EVENT_LOCALE_CHANGED = 9,
} parley_event_kind;

typedef enum parley_action_kind {
  PARLEY_ACTION_NONE = 0,
  PARLEY_ACTION_TAG = 1,
  PARLEY_ACTION_HANDOFF = 2,
  PARLEY_ACTION_HAND_BACK = 3,
  PARLEY_ACTION_TAKE = 4,
  PARLEY_ACTION_CLOSE = 5,
  PARLEY_ACTION_SET_LOCALE = 6,
  /* Bots: open a new conversation with a customer (parley_client_open). */
  PARLEY_ACTION_OPEN = 7,
} parley_action_kind;

/* A conversation action, sent like a message and recorded as an event. */
typedef struct parley_action {
  parley_action_kind kind;
  const char *const *tags_add;    /* TAG */
  size_t n_tags_add;
  const char *const *tags_remove; /* TAG */
  size_t n_tags_remove;
  const char *queue;  /* HANDOFF */
  const char *note;   /* HANDOFF, HAND_BACK; CLOSE reason */
  const char *locale; /* SET_LOCALE; OPEN (optional) */
  const char *customer; /* OPEN: the customer principal */
} parley_action;

/* One event of a conversation's stream, in seq order. */
typedef struct parley_event {
  parley_event_kind kind;
  const char *conversation;
  uint64_t seq;
  int64_t server_time_ms;
  const char *sender;
  parley_role sender_role;
  uint8_t msg_id[PARLEY_MSG_ID_LEN]; /* zero for gateway events */
  bool has_msg_id;
  bool redelivered;
  parley_content content; /* MESSAGE */
  parley_quote quote;     /* MESSAGE */
  parley_action action;   /* HANDED_OFF, HANDED_BACK, CLOSED, TAGGED, LOCALE_CHANGED */
  const char *assignee;   /* ASSIGNED */
  const char *const *tags; /* TAGGED: all tags after the change */
  size_t n_tags;
  const char *const *state_keys; /* STATE_CHANGED */
  size_t n_state_keys;
  const char *locale;   /* OPENED, LOCALE_CHANGED */
  const char *customer; /* OPENED */
} parley_event;

/* One key of a conversation's state document: JSON text, or deleted. */
typedef struct parley_state_entry {
  const char *key;
  const char *value; /* JSON text; NULL when deleted */
  size_t value_len;
  bool deleted;
} parley_state_entry;

/* Bots: a conversation assigned to this connection. */
typedef struct parley_assignment {
  const char *conversation;
  uint64_t epoch;
  const parley_state_entry *state;
  size_t n_state;
  uint64_t state_version;
  uint64_t acked_seq;
  const char *locale;
  const char *customer;
  const char *const *tags;
  size_t n_tags;
} parley_assignment;

/* Bots: one conversation's part of a commit. */
typedef struct parley_commit {
  const char *conversation;
  uint64_t epoch;
  uint64_t ack_seq;
  const parley_state_entry *state; /* changes */
  size_t n_state;
  const char *const *tags_add;
  size_t n_tags_add;
  const char *const *tags_remove;
  size_t n_tags_remove;
} parley_commit;


/* The outcomes, counters and tuning below belong to the client
 * (parley/client.h) and are defined here because the protocol engine
 * underneath it, which sees only this header and parley/error.h, fills
 * them in. */

/* The outcome of one send (message or action). */
typedef struct parley_send_result {
  const char *conversation;
  uint8_t msg_id[PARLEY_MSG_ID_LEN];
  int status;             /* 0 stored; PARLEY_E* when it failed for good */
  uint64_t seq;           /* seq assigned by the gateway (original one if duplicate) */
  int64_t server_time_ms;
  bool duplicate;         /* the gateway already had it */
  uint32_t attempts;      /* how many times it was written */
  const char *message;    /* detail for a failure, may be NULL */
} parley_send_result;

/* Bots: the outcome of one conversation's part of a commit. */
typedef struct parley_commit_result {
  const char *conversation;
  uint64_t ack_seq;
  int status;             /* 0 applied; PARLEY_ESTALE_EPOCH, ... */
  bool duplicate;         /* already applied before */
  uint64_t state_version;
} parley_commit_result;

/* Agents: one conversation waiting in a queue. */
typedef struct parley_queue_item {
  const char *conversation;
  const char *queue;
  const char *customer;
  const char *note;
  int64_t since_ms;
  uint64_t last_seq;
  const char *locale;
} parley_queue_item;

/* Tuning of the protocol engine. Zero means the default in brackets. */
typedef struct parley_tuning {
  uint32_t ack_timeout_ms;       /* [2000] resend an unacknowledged send after this */
  uint32_t retry_max_ms;         /* [30000] cap of the exponential backoff */
  uint32_t max_attempts;         /* [10] then the send fails with PARLEY_EATTEMPTS */
  uint32_t send_deadline_ms;     /* [120000] then the send fails with PARLEY_ETIMEOUT */
  uint32_t outbox_max;           /* [10000] pending sends; then PARLEY_EBACKPRESSURE */
  uint32_t ack_batch_n;          /* [32] flush cumulative ACKs after this many events */
  uint32_t ack_batch_ms;         /* [50] ... or after this long */
  uint32_t heartbeat_ms;         /* [10000] ping interval; peer dead after two */
  uint32_t reorder_max;          /* [256] early events held per conversation */
  uint32_t reorder_max_bytes;    /* [8 MiB] early event bytes held in all */
  uint32_t gap_timeout_ms;       /* [200] then fetch the missing range */
  uint32_t fetch_page;           /* [200] events per fetch page */
  uint32_t reconnect_min_ms;     /* [100] first reconnect backoff */
  uint32_t reconnect_max_ms;     /* [30000] cap of the reconnect backoff */
  uint32_t max_frame_bytes;      /* [1 MiB] larger inbound frames are refused */
  uint64_t seed;                 /* [random] jitter; fixed in tests */
} parley_tuning;

/* Counters for metrics; every field is monotonic unless noted. */
typedef struct parley_client_stats {
  uint64_t events_in, events_out, sends, retries, send_failures;
  uint64_t duplicates_dropped, gaps_fetched, reconnects, commits;
  uint64_t outbox_size;          /* gauge */
  uint64_t reorder_events;       /* gauge */
  uint64_t reorder_bytes;        /* gauge */
  uint64_t buffered_bytes;       /* gauge: all bytes the engine holds */
} parley_client_stats;

/* Library version, "MAJOR.MINOR.PATCH". */
const char *parley_version(void);

/* A reply's client message id derived from (principal, conversation,
 * inbound seq, reply ordinal) with BLAKE2b: a handler that runs again
 * sends the same ids, and the gateway drops them as duplicates. */
void parley_msg_id_derive(const char *principal, const char *conversation,
                          uint64_t inbound_seq, uint32_t ordinal,
                          uint8_t out[PARLEY_MSG_ID_LEN]);

/* A random client message id. */
void parley_msg_id_random(uint8_t out[PARLEY_MSG_ID_LEN]);

/* Hex rendering of a message id: 32 characters and a NUL. */
void parley_msg_id_hex(const uint8_t id[PARLEY_MSG_ID_LEN], char out[33]);

#ifdef __cplusplus
}
#endif
#endif /* PARLEY_TYPES_H */
