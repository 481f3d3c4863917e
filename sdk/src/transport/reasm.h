/* Reassembly of WebSocket messages from the pieces libwebsockets hands over.
 *
 * A message can arrive in several WebSocket fragments, and each fragment
 * can itself arrive in several receive callbacks. This module glues the
 * pieces back into one message under a hard size limit, so that a peer
 * cannot make the client buffer more than max_bytes for one message.
 *
 * It is pure: no sockets, no libwebsockets, no clock. The transport feeds it
 * and the tests (and a fuzzer) can feed it arbitrary piece sequences.
 */
#ifndef PARLEY_TRANSPORT_REASM_H
#define PARLEY_TRANSPORT_REASM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pt_reasm {
  uint8_t *buf;   /* pieces of the message being assembled */
  size_t len;     /* bytes in buf */
  size_t cap;     /* allocated bytes in buf, never above max */
  size_t max;     /* the largest message accepted */
  bool active;    /* a message has started and not yet ended */
} pt_reasm;

/* A buffer larger than this is released after its message is delivered, so
 * one big message does not pin a large allocation for the connection's
 * lifetime. */
#define PT_REASM_KEEP_BYTES (64u * 1024u)

/* Prepares an empty reassembler accepting messages of at most max_bytes
 * (max_bytes > 0). Allocates nothing until a message needs it. */
void pt_reasm_init(pt_reasm *r, size_t max_bytes);

/* Feeds one piece. `first` says the piece starts a message, `last` that it
 * ends one (both for a message in a single piece).
 *
 * Returns:
 *   1  a message is complete: *msg and *msg_len describe it. The bytes are
 *      borrowed until the next call on r (they may point into `data`).
 *   0  the piece was stored; more are needed.
 *   PARLEY_ETOOBIG    the message would exceed max_bytes. The partial
 *                     message is discarded; the caller must drop the
 *                     connection (the rest of the message is not wanted).
 *   PARLEY_EMALFORMED the pieces do not form messages (a continuation with
 *                     no message started, or a new message while one is
 *                     unfinished). The partial message is discarded.
 *   PARLEY_ENOMEM     out of memory; the partial message is discarded.
 */
int pt_reasm_feed(pt_reasm *r, const uint8_t *data, size_t len, bool first,
                  bool last, const uint8_t **msg, size_t *msg_len);

/* True when `more` further bytes would push the current message over the
 * limit. Lets the transport refuse a message as soon as the peer announces
 * its length, before buffering any of it. */
bool pt_reasm_would_exceed(const pt_reasm *r, size_t more);

/* Discards a partial message (after a disconnect). Keeps r usable. */
void pt_reasm_reset(pt_reasm *r);

/* Releases the buffer. r may be initialised again afterwards. */
void pt_reasm_free(pt_reasm *r);

#endif /* PARLEY_TRANSPORT_REASM_H */
