/* Fuzz target: WebSocket message reassembly (sdk/src/transport/reasm.h).
 *
 * The input is a program of pieces, so the fuzzer chooses how a message is
 * cut up, which flags each piece carries and when the transport resets:
 *
 *   u16 LE   v: the max message size is v + 1 (1 .. 32768), or with the
 *            top bit set (v & 0x7FFF) * 16 + 1 (up to 512 KiB), so messages
 *            past PT_REASM_KEEP_BYTES are reachable too
 *   then, until the input ends, one piece per control byte c:
 *     c & 1         first
 *     c & 2         last
 *     c & 4         call pt_reasm_reset before the piece
 *     c >> 3        length 0..30, or 31: a u16 LE length follows
 *     the piece's bytes (fewer when the input ends)
 *
 * A reference model written from the header's contract runs beside the
 * reassembler and every return value, every delivered message and the
 * buffer bound (cap never above max) are checked against it. */
#include <stdbool.h>

#include <parley/error.h>

#include "fuzz_common.h"
#include "transport/reasm.h"

typedef struct model {
  uint8_t *buf; /* the expected partial message, at most max bytes */
  size_t len;
  bool active;
} model;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_reader in = {data, size};
  uint16_t v = fz_u16(&in);
  size_t max = v & 0x8000 ? (size_t)(v & 0x7FFF) * 16 + 1 : (size_t)v + 1;

  pt_reasm r;
  pt_reasm_init(&r, max);
  model m = {malloc(max), 0, false};
  FZ_CHECK(m.buf != NULL, "out of memory");

  while (!fz_empty(&in)) {
    uint8_t c = fz_u8(&in);
    bool first = c & 1, last = c & 2;
    if (c & 4) {
      pt_reasm_reset(&r);
      m.len = 0;
      m.active = false;
    }
    size_t want = c >> 3;
    if (want == 31) want = fz_u16(&in);
    size_t len;
    const uint8_t *piece = fz_bytes(&in, want, &len);

    size_t have = m.active ? m.len : 0;
    bool exceeds = len > max || have > max - len;
    FZ_CHECK(pt_reasm_would_exceed(&r, len) == exceeds,
             "would_exceed(%zu) with %zu of %zu held", len, have, max);

    const uint8_t *msg = NULL;
    size_t msg_len = 0;
    int rc = pt_reasm_feed(&r, piece, len, first, last, &msg, &msg_len);

    if (rc == PARLEY_ENOMEM) {
      m.len = 0;
      m.active = false;
    } else if (first == m.active) {
      FZ_CHECK(rc == PARLEY_EMALFORMED, "first=%d while active=%d gave %d",
               first, m.active, rc);
      m.len = 0;
      m.active = false;
    } else if (exceeds) {
      FZ_CHECK(rc == PARLEY_ETOOBIG, "%zu + %zu over %zu gave %d", have, len,
               max, rc);
      m.len = 0;
      m.active = false;
    } else {
      if (first) m.len = 0;
      if (len) memcpy(m.buf + m.len, piece, len);
      m.len += len;
      if (last) {
        FZ_CHECK(rc == 1, "last piece gave %d", rc);
        FZ_CHECK(msg_len == m.len, "message of %zu bytes, expected %zu",
                 msg_len, m.len);
        FZ_CHECK(msg_len <= max, "message of %zu bytes over the %zu limit",
                 msg_len, max);
        FZ_CHECK(msg_len == 0 || memcmp(msg, m.buf, msg_len) == 0,
                 "message bytes differ (%zu bytes)", msg_len);
        m.len = 0;
        m.active = false;
      } else {
        FZ_CHECK(rc == 0, "middle piece gave %d", rc);
        m.active = true;
      }
    }
    FZ_CHECK(r.cap <= max, "buffer of %zu bytes over the %zu limit", r.cap, max);
    FZ_CHECK(r.len <= max, "%zu bytes held over the %zu limit", r.len, max);
  }

  pt_reasm_free(&r);
  free(m.buf);
  return 0;
}
