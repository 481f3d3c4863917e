/* A minimal RFC 6455 client over a blocking TCP socket; see wsclient.h. */
#include "wsclient.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include <parley/error.h>

/* Incoming messages larger than this are refused: a bound on test memory. */
#define WSC_MAX_MESSAGE (64u * 1024u * 1024u)

struct wsc {
  int fd;
  int close_code;
  uint8_t buf[65536];
  size_t have, off;
};

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int write_all(int fd, const void *data, size_t len) {
  const uint8_t *p = data;
  while (len) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return PARLEY_EIO;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Reads exactly len bytes before the deadline. */
static int read_exact(wsc *c, void *out, size_t len, uint64_t deadline) {
  uint8_t *p = out;
  while (len) {
    if (c->off < c->have) {
      size_t k = c->have - c->off < len ? c->have - c->off : len;
      memcpy(p, c->buf + c->off, k);
      c->off += k;
      p += k;
      len -= k;
      continue;
    }
    uint64_t now = mono_ms();
    if (now >= deadline) return PARLEY_ETIMEOUT;
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    int pr = poll(&pfd, 1, (int)(deadline - now));
    if (pr < 0 && errno == EINTR) continue;
    if (pr < 0) return PARLEY_EIO;
    if (pr == 0) return PARLEY_ETIMEOUT;
    ssize_t n = recv(c->fd, c->buf, sizeof c->buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return PARLEY_EDISCONNECTED;
    c->have = (size_t)n;
    c->off = 0;
  }
  return 0;
}

static int send_frame_raw(wsc *c, int opcode, const void *data, size_t len) {
  uint8_t hdr[14];
  size_t h = 0;
  hdr[h++] = (uint8_t)(0x80 | opcode);
  if (len < 126) {
    hdr[h++] = (uint8_t)(0x80 | len);
  } else if (len <= 0xffff) {
    hdr[h++] = 0x80 | 126;
    hdr[h++] = (uint8_t)(len >> 8);
    hdr[h++] = (uint8_t)len;
  } else {
    hdr[h++] = 0x80 | 127;
    for (int i = 7; i >= 0; i--) hdr[h++] = (uint8_t)((uint64_t)len >> (8 * i));
  }
  uint8_t mask[4];
  randombytes_buf(mask, 4);
  memcpy(hdr + h, mask, 4);
  h += 4;
  uint8_t *frame = malloc(h + len + 1);
  if (!frame) return PARLEY_ENOMEM;
  memcpy(frame, hdr, h);
  const uint8_t *d = data;
  for (size_t i = 0; i < len; i++) frame[h + i] = d[i] ^ mask[i & 3];
  int rc = write_all(c->fd, frame, h + len);
  free(frame);
  return rc;
}

wsc *wsc_connect(const char *host, int port, const char *authorization, int timeout_ms) {
  if (sodium_init() < 0) return NULL;
  wsc *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (c->fd < 0 || inet_pton(AF_INET, host, &sa.sin_addr) != 1 ||
      connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    fprintf(stderr, "wsc_connect %s:%d: %s\n", host, port, strerror(errno));
    if (c->fd >= 0) close(c->fd);
    free(c);
    return NULL;
  }
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  uint8_t key[16];
  char key64[32];
  randombytes_buf(key, sizeof key);
  sodium_bin2base64(key64, sizeof key64, key, sizeof key, sodium_base64_VARIANT_ORIGINAL);
  char req[2048];
  int n = snprintf(req, sizeof req,
                   "GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                   "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: parley.v1\r\n"
                   "%s%s%s\r\n",
                   host, port, key64, authorization ? "Authorization: " : "",
                   authorization ? authorization : "", authorization ? "\r\n" : "");
  if (n <= 0 || (size_t)n >= sizeof req || write_all(c->fd, req, (size_t)n) != 0) {
    wsc_abort(c);
    return NULL;
  }
  /* Read the response head byte by byte up to the blank line, so no frame
   * bytes that follow it are consumed here. */
  char resp[4096];
  size_t rl = 0;
  uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
  while (rl + 1 < sizeof resp) {
    if (read_exact(c, resp + rl, 1, deadline) != 0) break;
    rl++;
    if (rl >= 4 && !memcmp(resp + rl - 4, "\r\n\r\n", 4)) break;
  }
  resp[rl] = '\0';
  if (strncmp(resp, "HTTP/1.1 101", 12) != 0) {
    fprintf(stderr, "wsc_connect: upgrade refused: %.80s\n", resp);
    wsc_abort(c);
    return NULL;
  }
  return c;
}

int wsc_send_bytes(wsc *c, const void *data, size_t len) {
  return send_frame_raw(c, 0x2, data, len);
}

int wsc_send_raw(wsc *c, const void *data, size_t len) { return write_all(c->fd, data, len); }

int wsc_send_frame(wsc *c, const pw_frame *f) {
  uint8_t *buf;
  size_t len;
  int rc = pw_encode(f, 0, &buf, &len);
  if (rc) return rc;
  rc = wsc_send_bytes(c, buf, len);
  free(buf);
  return rc;
}

int wsc_recv_bytes(wsc *c, int timeout_ms, uint8_t **data, size_t *len) {
  *data = NULL;
  *len = 0;
  if (c->close_code) return PARLEY_EDISCONNECTED;
  uint64_t deadline = mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
  uint8_t *msg = NULL;
  size_t mlen = 0;
  int rc;
  for (;;) {
    uint8_t h[2];
    rc = read_exact(c, h, 2, deadline);
    if (rc) goto fail_rc;
    int fin = h[0] & 0x80, op = h[0] & 0x0f;
    uint64_t plen = h[1] & 0x7f;
    if (h[1] & 0x80) {
      rc = PARLEY_EPROTOCOL; /* servers never mask */
      goto fail_rc;
    }
    if (plen == 126 || plen == 127) {
      uint8_t ext[8];
      size_t k = plen == 126 ? 2 : 8;
      if ((rc = read_exact(c, ext, k, deadline))) goto fail_rc;
      plen = 0;
      for (size_t i = 0; i < k; i++) plen = (plen << 8) | ext[i];
    }
    if (plen > WSC_MAX_MESSAGE || mlen + plen > WSC_MAX_MESSAGE) {
      rc = PARLEY_ETOOBIG;
      goto fail_rc;
    }
    uint8_t *payload = malloc((size_t)plen + 1);
    if (!payload) {
      rc = PARLEY_ENOMEM;
      goto fail_rc;
    }
    if ((rc = read_exact(c, payload, (size_t)plen, deadline))) {
      free(payload);
      goto fail_rc;
    }
    if (op == 0x8) { /* close */
      c->close_code = plen >= 2 ? (payload[0] << 8) | payload[1] : 1005;
      /* Echo the close as RFC 6455 asks. */
      send_frame_raw(c, 0x8, payload, plen >= 2 ? 2 : 0);
      free(payload);
      rc = PARLEY_EDISCONNECTED;
      goto fail_rc;
    }
    if (op == 0x9) { /* ping */
      send_frame_raw(c, 0xA, payload, (size_t)plen);
      free(payload);
      continue;
    }
    if (op == 0xA) {
      free(payload);
      continue;
    }
    uint8_t *t = realloc(msg, mlen + (size_t)plen + 1);
    if (!t) {
      free(payload);
      rc = PARLEY_ENOMEM;
      goto fail_rc;
    }
    msg = t;
    memcpy(msg + mlen, payload, (size_t)plen);
    mlen += (size_t)plen;
    free(payload);
    if (fin) break;
  }
  *data = msg ? msg : malloc(1);
  *len = mlen;
  return 0;
fail_rc:
  free(msg);
  return rc;
}

int wsc_recv_frame(wsc *c, int timeout_ms, pw_frame **out) {
  *out = NULL;
  uint8_t *data;
  size_t len;
  int rc = wsc_recv_bytes(c, timeout_ms, &data, &len);
  if (rc) return rc;
  const char *why = NULL;
  rc = pw_decode(data, len, WSC_MAX_MESSAGE, out, &why);
  free(data);
  if (rc) fprintf(stderr, "wsc_recv_frame: %s\n", why ? why : "decode failed");
  return rc;
}

int wsc_recv_kind(wsc *c, int timeout_ms, Parley__V1__Frame__BodyCase kind, pw_frame **out) {
  uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
  for (;;) {
    uint64_t now = mono_ms();
    if (now >= deadline) return PARLEY_ETIMEOUT;
    int rc = wsc_recv_frame(c, (int)(deadline - now), out);
    if (rc) return rc;
    if ((*out)->body_case == kind) return 0;
    pw_frame_free(*out);
    *out = NULL;
  }
}

int wsc_recv_close(wsc *c, int timeout_ms) {
  uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
  while (!c->close_code) {
    uint64_t now = mono_ms();
    if (now >= deadline) return PARLEY_ETIMEOUT;
    uint8_t *data;
    size_t len;
    int rc = wsc_recv_bytes(c, (int)(deadline - now), &data, &len);
    if (rc == 0) {
      free(data);
      continue;
    }
    if (rc != PARLEY_EDISCONNECTED) return rc;
    if (!c->close_code) return PARLEY_EIO; /* TCP closed without a Close frame */
  }
  return c->close_code;
}

int wsc_close_code(const wsc *c) { return c->close_code; }

void wsc_close(wsc *c, int code) {
  if (!c) return;
  if (!c->close_code) {
    uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    send_frame_raw(c, 0x8, p, code ? 2 : 0);
    wsc_recv_close(c, 500);
  }
  wsc_abort(c);
}

void wsc_abort(wsc *c) {
  if (!c) return;
  if (c->fd >= 0) close(c->fd);
  free(c);
}
