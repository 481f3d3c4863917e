/* Frame encoding and decoding, shared by the client engine and the gateway.
 *
 * Limits are checked before decoding: a frame larger than max_bytes is
 * refused without being parsed. Decoded frames are validated for the rules
 * protobuf cannot express (16-byte message ids, conversation id syntax,
 * non-zero seqs where required) so that the state machines above never see
 * a structurally invalid frame.
 */
#ifndef PARLEY_WIRE_WIRE_H
#define PARLEY_WIRE_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "parley.pb-c.h"

typedef Parley__V1__Frame pw_frame;

#define PW_DEFAULT_MAX_FRAME (1024u * 1024u)

/* Decodes one frame. On success *out must be freed with pw_frame_free.
 * The frame and everything in it live in one arena: its fields may be read
 * and changed in place, but no part of it is freed (or replaced by a heap
 * pointer) on its own. Errors: PARLEY_ETOOBIG (before parsing),
 * PARLEY_EMALFORMED (does not decode), PARLEY_EUNSUPPORTED (no body: empty
 * input, or only a frame type from a later protocol version), PARLEY_EINVAL
 * (decodes but a field is invalid; *why says which), PARLEY_ENOMEM. */
int pw_decode(const uint8_t *data, size_t len, size_t max_bytes,
              pw_frame **out, const char **why);
/* Frees a frame pw_decode returned (and only such a frame). NULL: no-op. */
void pw_frame_free(pw_frame *f);

/* What an Error about a refused frame names. */
typedef struct pw_refs {
  char conversation[130];  /* "" unless the frame's conversation id is valid */
  uint8_t msg_id[16];
  bool has_msg_id;         /* a Send with a 16-byte client_msg_id */
  uint64_t request_id;     /* Fetch, Commit, QueueRequest */
} pw_refs;

/* Reads the references of a frame pw_decode refused as PARLEY_EINVAL. */
void pw_frame_refs(const uint8_t *data, size_t len, pw_refs *out);

/* Encodes a frame into a new malloc'd buffer with `headroom` spare bytes in
 * front (libwebsockets wants LWS_PRE). *out points at the start of the
 * allocation; the frame starts at *out + headroom. */
int pw_encode(const pw_frame *f, size_t headroom, uint8_t **out, size_t *len);

/* Conversation ids: 1..128 bytes of [A-Za-z0-9._:@-]. */
int pw_valid_conversation(const char *id);

/* Maps between wire error codes and PARLEY_E* statuses. */
int pw_status_from_code(Parley__V1__ErrorCode code);
Parley__V1__ErrorCode pw_code_from_status(int status);

/* WebSocket close code for a fatal error (4000 + wire code). */
int pw_close_code(Parley__V1__ErrorCode code);

#endif
