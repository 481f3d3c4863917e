/* Fuzz target: the frame codec (sdk/src/wire/wire.h).
 *
 * Any byte string given to pw_decode must either decode into a frame that
 * passes validation, or fail with one of the documented statuses and a
 * reason. A frame that decodes must survive pw_encode and decode again to
 * the same frame type, and encoding is stable: encode(decode(encode(f)))
 * is byte for byte encode(f). The same input is also decoded under a small
 * limit taken from its first byte, which must refuse it before parsing when
 * it is larger and agree with the default limit otherwise. */
#include <parley/error.h>

#include "wire/wire.h"
#include "fuzz_common.h"

/* Spare bytes asked of pw_encode, written to prove they are really there. */
#define FZ_HEADROOM 16

static int decode_checked(const uint8_t *data, size_t size, size_t max,
                          pw_frame **out) {
  const char *why = "unset";
  int rc = pw_decode(data, size, max, out, &why);
  if (rc == 0) {
    FZ_CHECK(*out != NULL, "success without a frame");
    FZ_CHECK(why == NULL, "success with a reason: %s", why);
    FZ_CHECK((*out)->body_case != PARLEY__V1__FRAME__BODY__NOT_SET,
             "decoded frame without a body");
  } else {
    FZ_CHECK(*out == NULL, "failure %d left a frame", rc);
    FZ_CHECK(why != NULL && why[0] != '\0', "failure %d without a reason", rc);
    FZ_CHECK(rc == PARLEY_ETOOBIG || rc == PARLEY_EMALFORMED ||
                 rc == PARLEY_EINVAL || rc == PARLEY_EUNSUPPORTED,
             "undocumented status %d (%s)", rc, why);
  }
  return rc;
}

static void round_trip(const pw_frame *f) {
  uint8_t *buf = NULL;
  size_t len = 0;
  int rc = pw_encode(f, FZ_HEADROOM, &buf, &len);
  FZ_CHECK(rc == 0, "pw_encode failed: %d", rc);
  memset(buf, 0xA5, FZ_HEADROOM);

  pw_frame *g = NULL;
  rc = decode_checked(buf + FZ_HEADROOM, len, 0, &g);
  FZ_CHECK(rc == 0, "re-encoded frame (%zu bytes) does not decode: %d", len, rc);
  FZ_CHECK(g->body_case == f->body_case, "frame type changed: %d -> %d",
           (int)f->body_case, (int)g->body_case);

  uint8_t *buf2 = NULL;
  size_t len2 = 0;
  rc = pw_encode(g, 0, &buf2, &len2);
  FZ_CHECK(rc == 0, "second pw_encode failed: %d", rc);
  FZ_CHECK(len2 == len && memcmp(buf2, buf + FZ_HEADROOM, len) == 0,
           "encoding is not stable (%zu vs %zu bytes)", len, len2);
  free(buf2);
  pw_frame_free(g);
  free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  pw_frame *f = NULL;
  int rc = decode_checked(data, size, 0, &f);
  if (rc == 0) {
    round_trip(f);
    pw_frame_free(f);
  }

  size_t small = size ? (size_t)data[0] + 1 : 1;
  pw_frame *h = NULL;
  int rc_small = decode_checked(data, size, small, &h);
  if (size > small)
    FZ_CHECK(rc_small == PARLEY_ETOOBIG, "%zu bytes over a %zu limit gave %d",
             size, small, rc_small);
  else
    FZ_CHECK(rc_small == rc, "limit %zu changed the result: %d vs %d", small,
             rc_small, rc);
  pw_frame_free(h);
  return 0;
}
