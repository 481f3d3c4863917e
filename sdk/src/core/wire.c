/* Frame codec with structural validation; see wire.h. */
#include "core/wire.h"

#include <stdlib.h>
#include <string.h>

#include <parley/error.h>

int pw_valid_conversation(const char *id) {
  if (!id) return 0;
  size_t n = strlen(id);
  if (n == 0 || n > 128) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)id[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
             (c >= '0' && c <= '9') || c == '.' || c == '_' || c == ':' ||
             c == '@' || c == '-';
    if (!ok) return 0;
  }
  return 1;
}

static int valid_msg_id(const ProtobufCBinaryData *id) {
  return id->len == 16 && id->data != NULL;
}

/* Every event must name a valid conversation and a seq >= 1. */
static const char *check_event(const Parley__V1__Event *ev) {
  if (!pw_valid_conversation(ev->conversation)) return "event.conversation";
  if (ev->seq == 0) return "event.seq";
  if (ev->client_msg_id.len != 0 && ev->client_msg_id.len != 16)
    return "event.client_msg_id";
  return NULL;
}

static const char *check_frame(const pw_frame *f) {
  switch (f->body_case) {
  case PARLEY__V1__FRAME__BODY_HELLO:
    if (f->hello->min_version == 0 || f->hello->max_version < f->hello->min_version)
      return "hello.version";
    for (size_t i = 0; i < f->hello->n_resume; i++)
      if (!pw_valid_conversation(f->hello->resume[i]->conversation))
        return "hello.resume.conversation";
    return NULL;
  case PARLEY__V1__FRAME__BODY_SEND:
    if (!valid_msg_id(&f->send->client_msg_id)) return "send.client_msg_id";
    if (!pw_valid_conversation(f->send->conversation)) return "send.conversation";
    if (f->send->body_case == PARLEY__V1__SEND__BODY__NOT_SET) return "send.body";
    if (f->send->body_case == PARLEY__V1__SEND__BODY_CONTENT &&
        f->send->content->body_case == PARLEY__V1__CONTENT__BODY__NOT_SET)
      return "send.content";
    if (f->send->body_case == PARLEY__V1__SEND__BODY_ACTION &&
        f->send->action->body_case == PARLEY__V1__ACTION__BODY__NOT_SET)
      return "send.action";
    return NULL;
  case PARLEY__V1__FRAME__BODY_SEND_ACK:
    if (!valid_msg_id(&f->send_ack->client_msg_id)) return "send_ack.client_msg_id";
    if (f->send_ack->error == PARLEY__V1__ERROR_CODE__ERROR_NONE && f->send_ack->seq == 0)
      return "send_ack.seq";
    return NULL;
  case PARLEY__V1__FRAME__BODY_DELIVER:
    for (size_t i = 0; i < f->deliver->n_events; i++) {
      const char *why = check_event(f->deliver->events[i]);
      if (why) return why;
    }
    return NULL;
  case PARLEY__V1__FRAME__BODY_ACK:
    for (size_t i = 0; i < f->ack->n_entries; i++) {
      if (!pw_valid_conversation(f->ack->entries[i]->conversation)) return "ack.conversation";
      if (f->ack->entries[i]->up_to_seq == 0) return "ack.up_to_seq";
    }
    return NULL;
  case PARLEY__V1__FRAME__BODY_FETCH:
    if (!pw_valid_conversation(f->fetch->conversation)) return "fetch.conversation";
    if (f->fetch->from_seq == 0) return "fetch.from_seq";
    if (f->fetch->to_seq != 0 && f->fetch->to_seq < f->fetch->from_seq) return "fetch.to_seq";
    return NULL;
  case PARLEY__V1__FRAME__BODY_FETCH_RESULT:
    for (size_t i = 0; i < f->fetch_result->n_events; i++) {
      const char *why = check_event(f->fetch_result->events[i]);
      if (why) return why;
    }
    return NULL;
  case PARLEY__V1__FRAME__BODY_COMMIT:
    for (size_t i = 0; i < f->commit->n_items; i++) {
      const Parley__V1__ConversationCommit *c = f->commit->items[i];
      if (!pw_valid_conversation(c->conversation)) return "commit.conversation";
      for (size_t k = 0; k < c->n_state; k++)
        if (!c->state[k]->key || !c->state[k]->key[0]) return "commit.state.key";
    }
    return NULL;
  case PARLEY__V1__FRAME__BODY_ASSIGN:
    if (!pw_valid_conversation(f->assign->conversation)) return "assign.conversation";
    if (f->assign->epoch == 0) return "assign.epoch";
    return NULL;
  case PARLEY__V1__FRAME__BODY_REVOKE:
    if (!pw_valid_conversation(f->revoke->conversation)) return "revoke.conversation";
    return NULL;
  case PARLEY__V1__FRAME__BODY__NOT_SET:
    return "frame.body";
  default:
    return NULL;
  }
}

/* protobuf-c accepts field number 0 when its tag is written in a long form
 * and keeps it as an unknown field, but refuses the short form it writes
 * back: such a frame would decode once and never again after re-encoding
 * (the engine re-encodes held events). Field 0 is invalid protobuf, so the
 * frame is refused as malformed. */
static int has_field_zero(const ProtobufCMessage *m, int depth) {
  if (depth > 100) return 1;
  for (unsigned i = 0; i < m->n_unknown_fields; i++)
    if (m->unknown_fields[i].tag == 0) return 1;
  const ProtobufCMessageDescriptor *d = m->descriptor;
  const char *base = (const char *)m;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *fd = &d->fields[i];
    if (fd->type != PROTOBUF_C_TYPE_MESSAGE) continue;
    if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(const size_t *)(base + fd->quantifier_offset);
      ProtobufCMessage *const *v = *(ProtobufCMessage *const *const *)(base + fd->offset);
      for (size_t k = 0; k < n; k++)
        if (has_field_zero(v[k], depth + 1)) return 1;
      continue;
    }
    if ((fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
        *(const uint32_t *)(base + fd->quantifier_offset) != fd->id)
      continue;
    const ProtobufCMessage *sub = *(ProtobufCMessage *const *)(base + fd->offset);
    if (sub && has_field_zero(sub, depth + 1)) return 1;
  }
  return 0;
}

int pw_decode(const uint8_t *data, size_t len, size_t max_bytes,
              pw_frame **out, const char **why) {
  *out = NULL;
  if (why) *why = NULL;
  if (max_bytes == 0) max_bytes = PW_DEFAULT_MAX_FRAME;
  if (len > max_bytes) {
    if (why) *why = "frame exceeds max_frame_bytes";
    return PARLEY_ETOOBIG;
  }
  pw_frame *f = parley__v1__frame__unpack(NULL, len, data);
  if (!f) {
    if (why) *why = "frame does not decode";
    return PARLEY_EMALFORMED;
  }
  if (has_field_zero(&f->base, 0)) {
    parley__v1__frame__free_unpacked(f, NULL);
    if (why) *why = "field number 0";
    return PARLEY_EMALFORMED;
  }
  if (f->body_case == PARLEY__V1__FRAME__BODY__NOT_SET) {
    parley__v1__frame__free_unpacked(f, NULL);
    if (why) *why = "frame has no body (unknown frame type?)";
    return PARLEY_EUNSUPPORTED;
  }
  const char *bad = check_frame(f);
  if (bad) {
    parley__v1__frame__free_unpacked(f, NULL);
    if (why) *why = bad;
    return PARLEY_EINVAL;
  }
  *out = f;
  return 0;
}

void pw_frame_free(pw_frame *f) {
  if (f) parley__v1__frame__free_unpacked(f, NULL);
}

int pw_encode(const pw_frame *f, size_t headroom, uint8_t **out, size_t *len) {
  size_t n = parley__v1__frame__get_packed_size(f);
  uint8_t *buf = malloc(headroom + n + 1);
  if (!buf) return PARLEY_ENOMEM;
  parley__v1__frame__pack(f, buf + headroom);
  *out = buf;
  *len = n;
  return 0;
}

static const struct {
  Parley__V1__ErrorCode code;
  int status;
} code_map[] = {
    {PARLEY__V1__ERROR_CODE__ERROR_NONE, PARLEY_EOK},
    {PARLEY__V1__ERROR_CODE__ERROR_MALFORMED, PARLEY_EMALFORMED},
    {PARLEY__V1__ERROR_CODE__ERROR_FRAME_TOO_LARGE, PARLEY_ETOOBIG},
    {PARLEY__V1__ERROR_CODE__ERROR_UNSUPPORTED_VERSION, PARLEY_EVERSION},
    {PARLEY__V1__ERROR_CODE__ERROR_UNSUPPORTED_FRAME, PARLEY_EUNSUPPORTED},
    {PARLEY__V1__ERROR_CODE__ERROR_UNAUTHENTICATED, PARLEY_EUNAUTH},
    {PARLEY__V1__ERROR_CODE__ERROR_FORBIDDEN, PARLEY_EFORBIDDEN},
    {PARLEY__V1__ERROR_CODE__ERROR_NOT_FOUND, PARLEY_ENOTFOUND},
    {PARLEY__V1__ERROR_CODE__ERROR_INVALID, PARLEY_EINVAL},
    {PARLEY__V1__ERROR_CODE__ERROR_PROTOCOL, PARLEY_EPROTOCOL},
    {PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH, PARLEY_ESTALE_EPOCH},
    {PARLEY__V1__ERROR_CODE__ERROR_RATE_LIMITED, PARLEY_ERATE_LIMITED},
    {PARLEY__V1__ERROR_CODE__ERROR_TOO_MANY_CONNECTIONS, PARLEY_ETOO_MANY_CONN},
    {PARLEY__V1__ERROR_CODE__ERROR_CLOSED, PARLEY_ECLOSED},
    {PARLEY__V1__ERROR_CODE__ERROR_BUSY, PARLEY_EBACKPRESSURE},
    {PARLEY__V1__ERROR_CODE__ERROR_INTERNAL, PARLEY_EINTERNAL},
    {PARLEY__V1__ERROR_CODE__ERROR_SHUTTING_DOWN, PARLEY_ESHUTDOWN},
    {PARLEY__V1__ERROR_CODE__ERROR_HELLO_REQUIRED, PARLEY_EPROTOCOL},
    {PARLEY__V1__ERROR_CODE__ERROR_ACK_OUT_OF_RANGE, PARLEY_EPROTOCOL},
};

int pw_status_from_code(Parley__V1__ErrorCode code) {
  for (size_t i = 0; i < sizeof code_map / sizeof code_map[0]; i++)
    if (code_map[i].code == code) return code_map[i].status;
  return PARLEY_EPROTOCOL;
}

Parley__V1__ErrorCode pw_code_from_status(int status) {
  for (size_t i = 0; i < sizeof code_map / sizeof code_map[0]; i++)
    if (code_map[i].status == status) return code_map[i].code;
  return PARLEY__V1__ERROR_CODE__ERROR_INTERNAL;
}

int pw_close_code(Parley__V1__ErrorCode code) { return 4000 + (int)code; }
