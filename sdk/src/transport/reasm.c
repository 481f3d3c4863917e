/* Message reassembly under a hard limit; see reasm.h. */
#include "transport/reasm.h"

#include <stdlib.h>
#include <string.h>

#include <parley/error.h>

#include "util/assert.h"

void pt_reasm_init(pt_reasm *r, size_t max_bytes) {
  memset(r, 0, sizeof *r);
  r->max = max_bytes;
}

static void shrink_if_large(pt_reasm *r) {
  if (r->cap > PT_REASM_KEEP_BYTES) {
    free(r->buf);
    r->buf = NULL;
    r->cap = 0;
  }
}

void pt_reasm_reset(pt_reasm *r) {
  r->len = 0;
  r->active = false;
  shrink_if_large(r);
}

void pt_reasm_free(pt_reasm *r) {
  free(r->buf);
  r->buf = NULL;
  r->cap = 0;
  r->len = 0;
  r->active = false;
}

bool pt_reasm_would_exceed(const pt_reasm *r, size_t more) {
  size_t have = r->active ? r->len : 0;
  return more > r->max || have > r->max - more;
}

/* Makes room for `more` bytes. Growth doubles to keep appends amortised
 * O(1) but never allocates past max, which the caller already checked. */
static int reserve(pt_reasm *r, size_t more) {
  PARLEY_ASSERT(r->len <= r->max && more <= r->max - r->len);
  size_t need = r->len + more;
  if (need <= r->cap)
    return 0;
  size_t cap = r->cap ? r->cap : 4096;
  while (cap < need)
    cap = cap > r->max / 2 ? r->max : cap * 2;
  if (cap > r->max)
    cap = r->max;
  uint8_t *nb = realloc(r->buf, cap);
  if (!nb)
    return PARLEY_ENOMEM;
  r->buf = nb;
  r->cap = cap;
  return 0;
}

static int fail(pt_reasm *r, int status) {
  pt_reasm_reset(r);
  return status;
}

int pt_reasm_feed(pt_reasm *r, const uint8_t *data, size_t len, bool first,
                  bool last, const uint8_t **msg, size_t *msg_len) {
  if (first == r->active)
    return fail(r, PARLEY_EMALFORMED);
  if (pt_reasm_would_exceed(r, len))
    return fail(r, PARLEY_ETOOBIG);

  /* The common case, a message in one piece, is handed back without a
   * copy. */
  if (first && last) {
    *msg = data;
    *msg_len = len;
    return 1;
  }
  if (first) {
    /* The previous message is no longer borrowed: a large buffer it
     * needed can go now. */
    shrink_if_large(r);
    r->active = true;
    r->len = 0;
  }
  if (len) {
    int rc = reserve(r, len);
    if (rc)
      return fail(r, rc);
    memcpy(r->buf + r->len, data, len);
    r->len += len;
    PARLEY_ASSERT(r->len <= r->cap && r->cap <= r->max);
  }
  if (!last)
    return 0;

  /* The message stays in buf until the next feed; a large buffer is
   * released when the next message starts. */
  r->active = false;
  *msg = r->buf;
  *msg_len = r->len;
  return 1;
}
