/* Frame codec with structural validation; see wire.h. */
#include "wire/wire.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <parley/error.h>

#include "util/assert.h"
#include "util/varint.h"

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
    /* The version range is the gateway's to judge (UNSUPPORTED_VERSION),
     * not the codec's: 0..1 includes 1. */
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

/* Which fields of each message type are messages, found once: walking
 * every field of every decoded message (the Frame's eighteen bodies, an
 * Event's twenty fields) to find the few sub-messages cost about as much
 * as a small frame's checks. Built for every type reachable from Frame on
 * first use (pthread_once); a type not in the table is walked field by
 * field as before. */
#define PW_META_SLOTS 256
#define PW_META_FIELDS 24
#define PW_META_ONEOFS 4
typedef struct pw_meta {
  const ProtobufCMessageDescriptor *d;
  unsigned n, n_oneofs;
  uint16_t idx[PW_META_FIELDS];          /* message fields outside oneofs */
  uint32_t oneof_case[PW_META_ONEOFS];   /* offsets of oneofs with message members */
} pw_meta;
static pw_meta pw_metas[PW_META_SLOTS];
static pthread_once_t pw_metas_once = PTHREAD_ONCE_INIT;

static size_t meta_slot(const ProtobufCMessageDescriptor *d) {
  uintptr_t h = (uintptr_t)d;
  h ^= h >> 17;
  h *= 0x9e3779b97f4a7c15ull;
  return (size_t)(h >> 56) & (PW_META_SLOTS - 1);
}

static const pw_meta *meta_find(const ProtobufCMessageDescriptor *d) {
  for (size_t i = meta_slot(d), k = 0; k < PW_META_SLOTS; k++, i = (i + 1) & (PW_META_SLOTS - 1)) {
    if (pw_metas[i].d == d) return &pw_metas[i];
    if (!pw_metas[i].d) return NULL;
  }
  return NULL;
}

static void meta_add(const ProtobufCMessageDescriptor *d, size_t *filled) {
  if (meta_find(d) || *filled + 1 >= PW_META_SLOTS / 2) return;
  pw_meta m = {.d = d};
  for (unsigned f = 0; f < d->n_fields; f++) {
    const ProtobufCFieldDescriptor *fd = &d->fields[f];
    if (fd->type != PROTOBUF_C_TYPE_MESSAGE) continue;
    if (fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
      unsigned k = 0;
      while (k < m.n_oneofs && m.oneof_case[k] != fd->quantifier_offset) k++;
      if (k == m.n_oneofs) {
        if (m.n_oneofs == PW_META_ONEOFS) return; /* not in the table: walked in full */
        m.oneof_case[m.n_oneofs++] = fd->quantifier_offset;
      }
    } else {
      if (m.n == PW_META_FIELDS) return;
      m.idx[m.n++] = (uint16_t)f;
    }
  }
  size_t i = meta_slot(d);
  while (pw_metas[i].d) i = (i + 1) & (PW_META_SLOTS - 1);
  pw_metas[i] = m; /* d set: a recursive call below sees it and stops */
  (*filled)++;
  for (unsigned f = 0; f < d->n_fields; f++)
    if (d->fields[f].type == PROTOBUF_C_TYPE_MESSAGE)
      meta_add((const ProtobufCMessageDescriptor *)d->fields[f].descriptor, filled);
}

static void metas_build(void) {
  size_t filled = 0;
  meta_add(&parley__v1__frame__descriptor, &filled);
}

static int has_field_zero(const ProtobufCMessage *m, int depth);

/* Field fd of m, a message field that is set (a oneof's active member, or
 * a plain one): 1 when it, or what it holds, has field number 0. */
static inline int field_has_zero(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *fd,
                                 int depth) {
  const char *base = (const char *)m;
  if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
    size_t n = *(const size_t *)(base + fd->quantifier_offset);
    ProtobufCMessage *const *v = *(ProtobufCMessage *const *const *)(base + fd->offset);
    for (size_t k = 0; k < n; k++)
      if (has_field_zero(v[k], depth + 1)) return 1;
    return 0;
  }
  const ProtobufCMessage *sub = *(ProtobufCMessage *const *)(base + fd->offset);
  return sub && has_field_zero(sub, depth + 1);
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
  const pw_meta *meta = meta_find(d);
  if (meta) {
    for (unsigned i = 0; i < meta->n; i++)
      if (field_has_zero(m, &d->fields[meta->idx[i]], depth)) return 1;
    /* A oneof: only its active member, found by its field number. */
    for (unsigned i = 0; i < meta->n_oneofs; i++) {
      uint32_t id = *(const uint32_t *)(base + meta->oneof_case[i]);
      const ProtobufCFieldDescriptor *fd = id ? protobuf_c_message_descriptor_get_field(d, id)
                                              : NULL;
      if (fd && fd->type == PROTOBUF_C_TYPE_MESSAGE && field_has_zero(m, fd, depth)) return 1;
    }
    return 0;
  }
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *fd = &d->fields[i];
    if (fd->type != PROTOBUF_C_TYPE_MESSAGE) continue;
    if ((fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
        *(const uint32_t *)(base + fd->quantifier_offset) != fd->id)
      continue;
    if (field_has_zero(m, fd, depth)) return 1;
  }
  return 0;
}

/* Decoded frames live in an arena: protobuf-c's unpack makes a dozen or so
 * allocations per frame (every string, bytes field and sub-message) and
 * free_unpacked walks the descriptors again to free them one by one; with
 * the arena a frame costs one or two mallocs and one walk-free release.
 * Every allocation is preceded by a pointer to its arena, so that
 * pw_frame_free finds it from the frame alone, whichever allocation
 * protobuf-c made first. */
typedef struct pw_chunk {
  struct pw_chunk *next;
  size_t used, cap;
  max_align_t data[];
} pw_chunk;

typedef struct pw_arena {
  pw_chunk *head;  /* newest chunk first; the last one holds this struct */
  size_t next_cap;
} pw_arena;

#define PW_PREFIX sizeof(max_align_t)
#define PW_CHUNK_MAX ((size_t)1 << 20)
/* What a small frame's first chunk may hold: malloc's request, header
 * included, stays at 1,000 bytes. A 65-byte Deliver decodes into about
 * 930. */
#define PW_SMALL_CAP (1000 - sizeof(pw_chunk))
#define PW_SMALL_FRAME 256

static size_t pw_round(size_t n) {
  return (n + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1);
}

static void *arena_alloc(void *ud, size_t size) {
  pw_arena *a = ud;
  if (size > SIZE_MAX / 2) return NULL;
  size_t need = PW_PREFIX + pw_round(size);
  pw_chunk *c = a->head;
  if (c->cap - c->used < need) {
    size_t cap = a->next_cap > need ? a->next_cap : need;
    pw_chunk *n = malloc(sizeof *n + cap);
    if (!n) return NULL;
    n->next = c;
    n->used = 0;
    n->cap = cap;
    a->head = c = n;
    if (a->next_cap < PW_CHUNK_MAX) a->next_cap *= 2;
  }
  uint8_t *p = (uint8_t *)c->data + c->used;
  c->used += need;
  *(pw_arena **)p = a;
  return p + PW_PREFIX;
}

static void arena_free_one(void *ud, void *p) {
  (void)ud; /* released with the whole arena */
  (void)p;
}

static void arena_release(pw_arena *a) {
  pw_chunk *c = a->head;
  while (c) {
    pw_chunk *next = c->next;
    free(c); /* the first chunk, holding *a, goes last */
    c = next;
  }
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
  /* The first chunk holds the arena and, usually, the whole frame: decoded
   * structs take a few times the wire size. A small frame's chunk stays
   * under 1,000 bytes, in glibc's small bins and per-thread cache: a larger
   * request first consolidates every freed small chunk (malloc_consolidate),
   * which the many small blocks a Lua runtime frees make costly on every
   * frame. A frame that needs more takes a second chunk. */
  size_t cap = pw_round(sizeof(pw_arena)) + 4 * len + 1024;
  if (len <= PW_SMALL_FRAME && cap > PW_SMALL_CAP) cap = PW_SMALL_CAP;
  pw_chunk *first = malloc(sizeof *first + cap);
  if (!first) {
    if (why) *why = "out of memory";
    return PARLEY_ENOMEM;
  }
  first->next = NULL;
  first->cap = cap;
  first->used = pw_round(sizeof(pw_arena));
  pw_arena *a = (pw_arena *)(void *)first->data;
  a->head = first;
  a->next_cap = cap;
  ProtobufCAllocator al = {.alloc = arena_alloc, .free = arena_free_one, .allocator_data = a};
  pw_frame *f = parley__v1__frame__unpack(&al, len, data);
  if (!f) {
    arena_release(a);
    if (why) *why = "frame does not decode";
    return PARLEY_EMALFORMED;
  }
  const char *bad = NULL;
  int rc = 0;
  pthread_once(&pw_metas_once, metas_build);
  if (has_field_zero(&f->base, 0)) {
    bad = "field number 0";
    rc = PARLEY_EMALFORMED;
  } else if (f->body_case == PARLEY__V1__FRAME__BODY__NOT_SET) {
    bad = "frame has no body (unknown frame type?)";
    rc = PARLEY_EUNSUPPORTED;
  } else if ((bad = check_frame(f)) != NULL) {
    rc = PARLEY_EINVAL;
  }
  if (rc) {
    arena_release(a);
    if (why) *why = bad;
    return rc;
  }
  *out = f;
  return 0;
}

void pw_frame_free(pw_frame *f) {
  if (!f) return;
  arena_release(*(pw_arena **)(void *)((uint8_t *)f - PW_PREFIX));
}

/* --------------------------------------------------- SendAck fast path */

static uint8_t *len_field(uint8_t *p, uint8_t tag, const void *data, size_t n) {
  *p++ = tag;
  p = pu_varint_put(p, n);
  memcpy(p, data, n);
  return p + n;
}

/* A SendAck is the frame the gateway writes most (one per Send), and
 * protobuf-c's descriptor-driven get_packed_size and pack took about 2,500
 * instructions for its seven fields. This writes the same bytes directly:
 * proto3 leaves out fields at their zero value, fields go in number order,
 * an enum is an int32 (a negative one sign-extended to ten bytes), as
 * protobuf-c does; test_wire checks the two agree byte for byte. */
static int encode_send_ack(const Parley__V1__SendAck *a, size_t headroom, uint8_t **out,
                           size_t *len) {
  size_t idl = a->client_msg_id.len;
  const char *conv = a->conversation ? a->conversation : "";
  const char *msg = a->message ? a->message : "";
  size_t cl = strlen(conv), ml = strlen(msg);
  uint64_t err = (uint64_t)(int64_t)(int32_t)a->error;
  size_t body = 0;
  if (idl) body += 1 + pu_varint_len(idl) + idl;
  if (cl) body += 1 + pu_varint_len(cl) + cl;
  if (a->seq) body += 1 + pu_varint_len(a->seq);
  if (a->server_time_ms) body += 1 + pu_varint_len((uint64_t)a->server_time_ms);
  if (a->duplicate) body += 2;
  if (err) body += 1 + pu_varint_len(err);
  if (ml) body += 1 + pu_varint_len(ml) + ml;
  size_t n = 1 + pu_varint_len(body) + body;
  uint8_t *buf = malloc(headroom + n + 1);
  if (!buf) return PARLEY_ENOMEM;
  uint8_t *p = buf + headroom;
  *p++ = (6 << 3) | 2; /* Frame.send_ack */
  p = pu_varint_put(p, body);
  if (idl) p = len_field(p, (1 << 3) | 2, a->client_msg_id.data, idl);
  if (cl) p = len_field(p, (2 << 3) | 2, conv, cl);
  if (a->seq) {
    *p++ = 3 << 3;
    p = pu_varint_put(p, a->seq);
  }
  if (a->server_time_ms) {
    *p++ = 4 << 3;
    p = pu_varint_put(p, (uint64_t)a->server_time_ms);
  }
  if (a->duplicate) {
    *p++ = 5 << 3;
    *p++ = 1;
  }
  if (err) {
    *p++ = 6 << 3;
    p = pu_varint_put(p, err);
  }
  if (ml) p = len_field(p, (7 << 3) | 2, msg, ml);
  PARLEY_ASSERT((size_t)(p - (buf + headroom)) == n);
  *out = buf;
  *len = n;
  return 0;
}

int pw_encode(const pw_frame *f, size_t headroom, uint8_t **out, size_t *len) {
  if (f->body_case == PARLEY__V1__FRAME__BODY_SEND_ACK && f->send_ack &&
      !f->base.n_unknown_fields && !f->send_ack->base.n_unknown_fields)
    return encode_send_ack(f->send_ack, headroom, out, len);
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

/* Unpacks an invalid frame once more, on the heap, to read what an Error
 * about it must name: a Send's client_msg_id, a request's request_id, the
 * conversation. Only called on the error path. */
void pw_frame_refs(const uint8_t *data, size_t len, pw_refs *out) {
  memset(out, 0, sizeof *out);
  pw_frame *f = parley__v1__frame__unpack(NULL, len, data);
  if (!f) return;
  const char *conv = NULL;
  switch (f->body_case) {
  case PARLEY__V1__FRAME__BODY_SEND:
    conv = f->send->conversation;
    if (f->send->client_msg_id.len == sizeof out->msg_id) {
      memcpy(out->msg_id, f->send->client_msg_id.data, sizeof out->msg_id);
      out->has_msg_id = true;
    }
    break;
  case PARLEY__V1__FRAME__BODY_FETCH:
    conv = f->fetch->conversation;
    out->request_id = f->fetch->request_id;
    break;
  case PARLEY__V1__FRAME__BODY_COMMIT:
    out->request_id = f->commit->request_id;
    break;
  case PARLEY__V1__FRAME__BODY_QUEUE_REQUEST:
    out->request_id = f->queue_request->request_id;
    break;
  default:
    break;
  }
  /* Only a valid id is echoed back: an Error never carries what would make
   * the peer's own decoder refuse it. */
  if (conv && pw_valid_conversation(conv)) snprintf(out->conversation, sizeof out->conversation, "%s", conv);
  parley__v1__frame__free_unpacked(f, NULL);
}
