/* bench_codec: cost and size of one Deliver frame, Parley's protobuf codec
 * versus the same content as JSON with cJSON.
 *
 * What is measured: a Frame carrying a Deliver with one message Event (the
 * content of sample.h: conversation id, seq, kind, gateway time, sender
 * principal and role, 16-byte message id, about 200 bytes of mixed
 * ASCII/Spanish/Chinese text, two tags).
 *   - parley: the codec the runtime uses, sdk/src/wire/wire.c. Encoding
 *     fills the generated structs and calls pw_encode (sizes, allocates,
 *     packs), then frees the buffer; decoding calls pw_decode (size limit,
 *     protobuf-c unpack, the field-0 and structural validation the engine
 *     relies on), reads every field back and frees the frame.
 *   - cjson: what a JSON API would do with the same content. Encoding
 *     builds the cJSON tree, prints it unformatted and frees tree and
 *     text; the message id is a 32-character hex string. Decoding parses,
 *     looks every field up, turns the hex id back into 16 bytes and frees.
 * Both sides allocate their output, read every field back and release
 * everything, so the comparison is like for like. Before timing, each
 * round trip is checked to give back exactly the original content, and
 * the timed loops check a checksum of what they read.
 *
 * How: a warm-up, then several repetitions of many iterations each,
 * alternating between the codecs; the figure is the median of the
 * repetitions' per-frame means, in thread CPU time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <parley/client.h>
#include <parley/error.h>

#include "bench.h"
#include "wire/wire.h"
#include "sample.h"

/* Timed loops read this thread's CPU clock rather than the wall clock: the
 * work is single-threaded and never waits, and on a machine shared with
 * other jobs the CPU clock does not count the time the thread spends
 * descheduled, which the wall clock would charge to whatever ran then. */
static uint64_t cpu_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* What a decoder gives back, to compare with the original. */
typedef struct decoded {
  char conversation[160];
  uint64_t seq;
  int64_t time_ms;
  char sender[96];
  int role; /* Parley__V1__Role */
  uint8_t msg_id[16];
  char text[512];
  char tags[2][32];
  size_t n_tags;
} decoded;

/* Copies a decoded string out, truncating to the buffer. */
static void copy_str(char *dst, size_t size, const char *src) {
  size_t n = src ? strlen(src) : 0;
  if (n >= size) n = size - 1;
  if (n) memcpy(dst, src, n);
  dst[n] = '\0';
}

static int check_decoded(const char *who, const decoded *d) {
  const char *bad = NULL;
  if (strcmp(d->conversation, SAMPLE_CONV) != 0) bad = "conversation";
  else if (d->seq != SAMPLE_SEQ) bad = "seq";
  else if (d->time_ms != SAMPLE_TIME_MS) bad = "server_time_ms";
  else if (strcmp(d->sender, SAMPLE_SENDER) != 0) bad = "sender";
  else if (d->role != PARLEY__V1__ROLE__ROLE_CUSTOMER) bad = "sender_role";
  else if (memcmp(d->msg_id, sample_msg_id, 16) != 0) bad = "client_msg_id";
  else if (strcmp(d->text, SAMPLE_TEXT) != 0) bad = "text";
  else if (d->n_tags != 2 || strcmp(d->tags[0], SAMPLE_TAG0) || strcmp(d->tags[1], SAMPLE_TAG1))
    bad = "tags";
  if (bad) {
    fprintf(stderr, "bench_codec: %s round trip changed the field '%s'\n", who, bad);
    return 1;
  }
  return 0;
}

/* ------------------------------------------------------------- parley */

/* Encodes the sample as the gateway does; returns the malloc'd buffer. */
static uint8_t *parley_encode(size_t *len) {
  static char *tags[2] = {SAMPLE_TAG0, SAMPLE_TAG1};
  Parley__V1__Text text = PARLEY__V1__TEXT__INIT;
  text.body = SAMPLE_TEXT;
  Parley__V1__Content content = PARLEY__V1__CONTENT__INIT;
  content.body_case = PARLEY__V1__CONTENT__BODY_TEXT;
  content.text = &text;
  Parley__V1__Event ev = PARLEY__V1__EVENT__INIT;
  ev.conversation = SAMPLE_CONV;
  ev.seq = SAMPLE_SEQ;
  ev.kind = PARLEY__V1__EVENT_KIND__EVENT_MESSAGE;
  ev.server_time_ms = SAMPLE_TIME_MS;
  ev.sender = SAMPLE_SENDER;
  ev.sender_role = PARLEY__V1__ROLE__ROLE_CUSTOMER;
  ev.client_msg_id.data = (uint8_t *)sample_msg_id;
  ev.client_msg_id.len = 16;
  ev.content = &content;
  ev.n_tags = 2;
  ev.tags = tags;
  Parley__V1__Event *evs[1] = {&ev};
  Parley__V1__Deliver d = PARLEY__V1__DELIVER__INIT;
  d.n_events = 1;
  d.events = evs;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_DELIVER;
  f.deliver = &d;
  uint8_t *buf = NULL;
  if (pw_encode(&f, 0, &buf, len) != 0) return NULL;
  return buf;
}

/* Decodes and reads every field into *out. 0 on success. */
static int parley_decode(const uint8_t *buf, size_t len, decoded *out) {
  pw_frame *f = NULL;
  const char *why = NULL;
  int rc = pw_decode(buf, len, 0, &f, &why);
  if (rc != 0) {
    fprintf(stderr, "bench_codec: pw_decode failed (%d): %s\n", rc, why ? why : "?");
    return 1;
  }
  if (f->body_case != PARLEY__V1__FRAME__BODY_DELIVER || f->deliver->n_events != 1) {
    pw_frame_free(f);
    return 1;
  }
  const Parley__V1__Event *ev = f->deliver->events[0];
  copy_str(out->conversation, sizeof out->conversation, ev->conversation);
  out->seq = ev->seq;
  out->time_ms = ev->server_time_ms;
  copy_str(out->sender, sizeof out->sender, ev->sender);
  out->role = ev->sender_role;
  if (ev->client_msg_id.len == 16) memcpy(out->msg_id, ev->client_msg_id.data, 16);
  else memset(out->msg_id, 0, 16);
  bool has_text = ev->content && ev->content->body_case == PARLEY__V1__CONTENT__BODY_TEXT;
  copy_str(out->text, sizeof out->text, has_text ? ev->content->text->body : "");
  out->n_tags = ev->n_tags < 2 ? ev->n_tags : 2;
  for (size_t i = 0; i < out->n_tags; i++) copy_str(out->tags[i], sizeof out->tags[i], ev->tags[i]);
  pw_frame_free(f);
  return 0;
}

/* -------------------------------------------------------------- cJSON */

static char *cjson_encode(size_t *len) {
  char hex[33];
  parley_msg_id_hex(sample_msg_id, hex);
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "type", "deliver");
  cJSON *events = cJSON_AddArrayToObject(root, "events");
  cJSON *ev = cJSON_CreateObject();
  cJSON_AddItemToArray(events, ev);
  cJSON_AddStringToObject(ev, "conversation", SAMPLE_CONV);
  cJSON_AddNumberToObject(ev, "seq", (double)SAMPLE_SEQ);
  cJSON_AddStringToObject(ev, "kind", "message");
  cJSON_AddNumberToObject(ev, "server_time_ms", (double)SAMPLE_TIME_MS);
  cJSON_AddStringToObject(ev, "sender", SAMPLE_SENDER);
  cJSON_AddStringToObject(ev, "sender_role", "customer");
  cJSON_AddStringToObject(ev, "client_msg_id", hex);
  cJSON *content = cJSON_AddObjectToObject(ev, "content");
  cJSON *text = cJSON_AddObjectToObject(content, "text");
  cJSON_AddStringToObject(text, "body", SAMPLE_TEXT);
  const char *tags[2] = {SAMPLE_TAG0, SAMPLE_TAG1};
  cJSON_AddItemToObject(ev, "tags", cJSON_CreateStringArray(tags, 2));
  char *s = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  if (s) *len = strlen(s);
  return s;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static const char *jstr(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int cjson_decode(const char *s, size_t len, decoded *out) {
  cJSON *root = cJSON_ParseWithLength(s, len);
  if (!root) {
    fprintf(stderr, "bench_codec: cJSON_Parse failed\n");
    return 1;
  }
  int rc = 1;
  const cJSON *events = cJSON_GetObjectItemCaseSensitive(root, "events");
  const cJSON *ev = cJSON_GetArrayItem(events, 0);
  const char *type = jstr(root, "type");
  if (!ev || !type || strcmp(type, "deliver") != 0) goto done;
  copy_str(out->conversation, sizeof out->conversation, jstr(ev, "conversation"));
  const cJSON *seq = cJSON_GetObjectItemCaseSensitive(ev, "seq");
  const cJSON *tm = cJSON_GetObjectItemCaseSensitive(ev, "server_time_ms");
  if (!cJSON_IsNumber(seq) || !cJSON_IsNumber(tm)) goto done;
  out->seq = (uint64_t)seq->valuedouble;
  out->time_ms = (int64_t)tm->valuedouble;
  copy_str(out->sender, sizeof out->sender, jstr(ev, "sender"));
  const char *role = jstr(ev, "sender_role");
  out->role = role && strcmp(role, "customer") == 0 ? PARLEY__V1__ROLE__ROLE_CUSTOMER : 0;
  const char *hex = jstr(ev, "client_msg_id");
  if (!hex || strlen(hex) != 32) goto done;
  for (int i = 0; i < 16; i++) {
    int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) goto done;
    out->msg_id[i] = (uint8_t)(hi << 4 | lo);
  }
  const cJSON *content = cJSON_GetObjectItemCaseSensitive(ev, "content");
  const cJSON *text = cJSON_GetObjectItemCaseSensitive(content, "text");
  copy_str(out->text, sizeof out->text, jstr(text, "body"));
  const cJSON *tags = cJSON_GetObjectItemCaseSensitive(ev, "tags");
  out->n_tags = 0;
  const cJSON *t;
  cJSON_ArrayForEach(t, tags) {
    if (out->n_tags == 2 || !cJSON_IsString(t)) goto done;
    copy_str(out->tags[out->n_tags], sizeof out->tags[0], t->valuestring);
    out->n_tags++;
  }
  rc = 0;
done:
  cJSON_Delete(root);
  if (rc) fprintf(stderr, "bench_codec: JSON frame lacks a field\n");
  return rc;
}

/* ------------------------------------------------------------ timing */

typedef struct codec {
  const char *name;
  void *(*encode)(size_t *len);
  int (*decode)(const void *buf, size_t len, decoded *out);
} codec;

static void *enc_parley(size_t *len) { return parley_encode(len); }
static int dec_parley(const void *b, size_t len, decoded *o) { return parley_decode(b, len, o); }
static void *enc_cjson(size_t *len) { return cjson_encode(len); }
static int dec_cjson(const void *b, size_t len, decoded *o) { return cjson_decode(b, len, o); }

enum { M_ENC, M_DEC, M_BOTH };

/* Mean ns per frame of one repetition of `iters` operations of kind m.
 * Returns a negative value when an operation failed. */
static double run_rep(const codec *cd, int m, size_t iters, const void *frame, size_t flen) {
  decoded d;
  uint64_t check = 0;
  uint64_t t0 = cpu_now_ns();
  for (size_t i = 0; i < iters; i++) {
    if (m == M_ENC || m == M_BOTH) {
      size_t len = 0;
      void *b = cd->encode(&len);
      if (!b) return -1;
      if (m == M_BOTH) {
        if (cd->decode(b, len, &d) != 0) {
          free(b);
          return -1;
        }
        check += d.seq;
      }
      check += len;
      free(b);
    } else {
      if (cd->decode(frame, flen, &d) != 0) return -1;
      check += d.seq;
    }
  }
  uint64_t t1 = cpu_now_ns();
  BENCH_KEEP(check);
  uint64_t want = m == M_ENC ? flen : m == M_DEC ? SAMPLE_SEQ : flen + SAMPLE_SEQ;
  if (check != want * iters) {
    fprintf(stderr, "bench_codec: %s: checksum of the timed loop is wrong\n", cd->name);
    return -1;
  }
  return (double)(t1 - t0) / (double)iters;
}

int main(int argc, char **argv) {
  bool tiny = bench_tiny(argc, argv);
  size_t iters = tiny ? 2000 : 50000;
  int reps = tiny ? 3 : 15;
  const codec codecs[2] = {{"parley", enc_parley, dec_parley}, {"cjson", enc_cjson, dec_cjson}};
  const char *metrics[3] = {"encode_ns", "decode_ns", "encode_decode_ns"};
  double result[2][3];
  double v[2][3][16];
  size_t sizes[2];
  void *frames[2];

  printf("bench_codec: one Deliver frame (%zu bytes of UTF-8 text), %zu iterations x %d "
         "repetitions, median of repetitions\n",
         strlen(SAMPLE_TEXT), iters, reps);
  for (int k = 0; k < 2; k++) {
    const codec *cd = &codecs[k];
    /* Correctness first: the round trip gives back the same content. */
    size_t flen = 0;
    void *frame = cd->encode(&flen);
    decoded d;
    memset(&d, 0, sizeof d);
    if (!frame || cd->decode(frame, flen, &d) != 0 || check_decoded(cd->name, &d) != 0) {
      fprintf(stderr, "bench_codec: %s round trip failed\n", cd->name);
      free(frame);
      return 1;
    }
    sizes[k] = flen;
    frames[k] = frame;
  }
  /* The repetitions alternate between the codecs and operations, so a
   * burst of load from elsewhere on the machine falls on all of them
   * rather than on one. Repetition -1 is the warm-up. */
  for (int r = -1; r < reps; r++)
    for (int k = 0; k < 2; k++)
      for (int m = 0; m < 3; m++) {
        double x = run_rep(&codecs[k], m, r < 0 ? iters / 4 + 1 : iters, frames[k], sizes[k]);
        if (x < 0) return 1;
        if (r >= 0) v[k][m][r] = x;
      }
  for (int k = 0; k < 2; k++) {
    for (int m = 0; m < 3; m++) result[k][m] = bench_percentile(v[k][m], (size_t)reps, 50);
    free(frames[k]);
  }

  printf("%-8s %12s %12s %18s %12s\n", "subject", "encode_ns", "decode_ns", "encode_decode_ns",
         "size_bytes");
  for (int k = 0; k < 2; k++) {
    printf("%-8s %12.1f %12.1f %18.1f %12zu\n", codecs[k].name, result[k][0], result[k][1],
           result[k][2], sizes[k]);
    for (int m = 0; m < 3; m++)
      bench_figure("codec", metrics[m], codecs[k].name, "", result[k][m], "ns");
    bench_figure("codec", "size_bytes", codecs[k].name, "", (double)sizes[k], "bytes");
  }
  printf("ratios parley/cjson: encode_decode %.3f, size %.3f\n", result[0][2] / result[1][2],
         (double)sizes[0] / (double)sizes[1]);
  bench_note("codec",
             "One Deliver frame, one message event with %zu bytes of UTF-8 text. parley: "
             "pw_encode/pw_decode of sdk/src/wire/wire.c (protobuf-c %s, decode includes the "
             "frame validation); cjson: cJSON %s build+PrintUnformatted, Parse+field reads, "
             "message id as hex. Both free their output. Thread CPU time, median of %d repetitions of %zu frames.",
             strlen(SAMPLE_TEXT), protobuf_c_version(), cJSON_Version(), reps, iters);
  return 0;
}
