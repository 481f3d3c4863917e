/* A FAKE gateway for exact frame-sequence tests of the client.
 *
 * This is not the reference gateway: it is a libwebsockets server inside
 * the test process, on 127.0.0.1 and an ephemeral port, on the test's uv
 * loop, that hands every decoded frame to a scripted callback and sends
 * back hand-built frames (optionally split into WebSocket fragments). It
 * records the type of every frame each connection received so a test can
 * compare the whole sequence.
 */
#ifndef PARLEY_TEST_FAKE_PEER_H
#define PARLEY_TEST_FAKE_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libwebsockets.h>
#include <uv.h>

#include "wire/wire.h"

#define FP_MAX_CONNS 8
#define FP_MAX_FRAMES 32
#define FP_RX_MAX (256u * 1024u)

typedef struct fp_out {
  struct fp_out *next;
  size_t len;
  int flags;      /* LWS_WRITE_* */
  int close_code; /* non-zero: close the connection with this code */
  uint8_t buf[];  /* LWS_PRE headroom, then the bytes */
} fp_out;

typedef struct fp_conn {
  struct lws *wsi;
  int index;
  bool live;
  char auth[256];     /* Authorization header of the upgrade */
  int types[FP_MAX_FRAMES]; /* Frame body cases received, in order */
  int n_types;
  int peer_close_code; /* close code the client sent, 0 if none */
  fp_out *q_head, *q_tail;
  uint8_t *rx;
  size_t rx_len;
} fp_conn;

typedef struct fake_peer fake_peer;
typedef void (*fp_frame_fn)(fake_peer *p, fp_conn *c, const pw_frame *f);

struct fake_peer {
  struct lws_context *ctx;
  uv_loop_t *loop;
  int port;
  fp_frame_fn on_frame;
  void *ud;
  char pending_auth[256];
  fp_conn conns[FP_MAX_CONNS];
  int n_conns;
  int live_conns;
  int bad;            /* frames that did not decode */
  void *client_ssl_ctx; /* see fp_start_tls */
  bool destroying;
};

/* Starts the peer on loop. Returns 0 or -1. */
int fp_start(fake_peer *p, uv_loop_t *loop, fp_frame_fn on_frame, void *ud);
/* The same over TLS with the given PEM certificate and key files. */
int fp_start_tls(fake_peer *p, uv_loop_t *loop, fp_frame_fn on_frame,
                 void *ud, const char *cert_file, const char *key_file);
/* First half of the lws 4.1 foreign-loop teardown: call from a loop
 * callback; the loop must then run until its handles are closed. */
void fp_destroy_begin(fake_peer *p);
/* Second half, once uv_run has returned: frees the context. */
void fp_destroy_end(fake_peer *p);

/* Queues a frame, split into `fragments` WebSocket fragments (1: whole). */
void fp_send(fp_conn *c, const pw_frame *f, int fragments);
/* Queues raw bytes as one binary message of `fragments` fragments. */
void fp_send_raw(fp_conn *c, const uint8_t *data, size_t len, int fragments);
/* Queues a close with code after what is queued. */
void fp_close(fp_conn *c, int code);

/* Frame builders; strings are borrowed until the frame is sent. */
void fp_welcome(fp_conn *c, const char *const *cursor_convs,
                const uint64_t *cursor_seqs, size_t n, int fragments);

#endif
