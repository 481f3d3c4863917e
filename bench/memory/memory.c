/* bench_memory: what an idle connection costs the gateway, and what an idle
 * conversation costs the client engine.
 *
 * 1. Gateway memory per idle WebSocket connection. A real `parley gateway`
 *    process runs on 127.0.0.1; this program opens N connections to it
 *    (10,000; --tiny 200) from the source addresses 127.0.0.2..9, each doing
 *    the WebSocket upgrade and Parley's Hello/Welcome as its own customer
 *    principal (tokens minted with the gateway's customer secret, as a
 *    deployment would), and then leaves them idle. The cost is
 *      (VmRSS of the gateway with N idle connections, once its RSS is
 *       stable) - (VmRSS before the first connection), divided by N,
 *    measured at N/10 and at N on the same process to show it is linear.
 *    The peer is a Node.js server on the ws package (bench/peers/node/
 *    ws_server.js) that answers each connection's first message with a
 *    Welcome-sized message and keeps the connection: the same client, the
 *    same N, the same bytes on the wire from the client, the same RSS
 *    measurement of the server process. Neither side does anything while
 *    idle (the gateway's heartbeat is set to an hour, the Node server has no
 *    timers), so the figure is what an open connection holds, not traffic.
 *    The client is a minimal hand-written WebSocket client (non-blocking
 *    sockets and epoll, a fixed Sec-WebSocket-Key, masked frames, the Hello
 *    encoded with the project's codec), so 10,000 of them cost this process
 *    little and nothing of it is counted on the server side.
 *
 * 2. Client engine memory per idle conversation. One sans-I/O engine
 *    (sdk/src/core/engine.h) as a customer holds C conversations (10,000;
 *    --tiny 500). Each went through what a real one does: the customer's
 *    first message sent and acknowledged by a SendAck, then OPENED,
 *    ASSIGNED, its own message and a bot reply received and acknowledged
 *    with batched Acks. The cost is glibc's mallinfo2() uordblks + hblkhd
 *    (bytes in allocated chunks, including malloc's per-chunk overhead, and
 *    in chunks with a mapping of their own) after minus before, divided by
 *    C; every frame this program made is freed first.
 *
 * Correctness is checked, not assumed: every connection must get its
 * Welcome (a decoded Welcome naming its principal, or the peer's reply),
 * none may be closed while idle, the server must still be alive at the end
 * and serve one more connection, and the engine must have delivered every
 * event, completed every send and acknowledged every conversation to its
 * last seq with nothing left buffered.
 */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include <parley/error.h>

#include "bench.h"
#include "core/engine.h"
#include "core/engine_int.h"
#include "wire/wire.h"
#include "gw.h"
#include "proc.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define BENCH "memory"
/* RFC 6455's sample key and its accept value: a fixed key is enough, since
 * the servers only echo its hash. */
#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
#define CUSTOMER_SECRET "bench-memory-customer-secret-0123"
#define BOT_TOKEN "bench-memory-bot-token"
#define N_SOURCES 8          /* source addresses 127.0.0.2 .. 127.0.0.9 */
#define HANDSHAKE_WINDOW 128 /* connections between connect and Welcome at once */
#define WC_BUF 2048          /* handshake buffer of one connection */
#define NODE_WELCOME_LEN 80  /* what ws_server.js answers */
#define STABLE_SPAN 5        /* RSS samples (250 ms apart) that must agree */
#define STABLE_SLACK (64u * 1024u)

static volatile sig_atomic_t g_stop;
static char g_node_versions[128] = "ws/? node/?";

static void on_signal(int sig) {
  (void)sig;
  g_stop = 1;
}

static uint64_t mono_ms(void) { return bench_now_ns() / 1000000u; }

/* ================================================================ client */

enum { CS_NEW = 0, CS_CONNECTING, CS_HTTP, CS_WS, CS_DONE, CS_DEAD };

/* One client connection. The handshake buffer is freed once the Welcome
 * arrived: an idle connection here is its descriptor and this record. */
typedef struct wconn {
  int fd;
  uint8_t state;
  uint16_t len;
  uint8_t *buf;
} wconn;

typedef struct wclient {
  int ep;
  int port;
  bool parley; /* expect a Parley Welcome; otherwise the Node peer's reply */
  const char *server;
  wconn *c;
  size_t cap, n; /* connections allocated, started */
  size_t inflight, done, dead;
  size_t dead_idle;   /* closed by the server after their Welcome */
  size_t idle_bytes;  /* bytes the server sent to idle connections */
  size_t pings;       /* WebSocket pings answered during handshakes */
  char why[320];      /* the first failure */
} wclient;

static void principal_name(char *out, size_t n, size_t i) {
  snprintf(out, n, "mem-c%06zu", i);
}

static void wc_fail(wclient *wc, size_t i, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void wc_fail(wclient *wc, size_t i, const char *fmt, ...) {
  wconn *c = &wc->c[i];
  if (c->state == CS_DEAD) return;
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (!wc->why[0]) snprintf(wc->why, sizeof wc->why, "connection %zu: %s", i, msg);
  if (wc->dead < 5) fprintf(stderr, "bench_memory: %s connection %zu: %s\n", wc->server, i, msg);
  if (c->state == CS_DONE) wc->dead_idle++;
  else if (c->state != CS_NEW) wc->inflight--;
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  free(c->buf);
  c->buf = NULL;
  c->state = CS_DEAD;
  wc->dead++;
}

/* Writes a whole small message. A fresh loopback socket has far more send
 * buffer than a handshake needs, so a short write means something broke. */
static bool wc_write(wconn *c, const void *p, size_t n) {
  ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
  return w == (ssize_t)n;
}

/* Frames payload[0..len) as one masked client message with this opcode.
 * There must be 14 bytes of room in front of payload for the header. */
static bool wc_write_frame(wconn *c, size_t i, uint8_t op, uint8_t *payload, size_t len) {
  uint8_t mask[4] = {(uint8_t)(i * 131u + 7u), (uint8_t)(i >> 3), 0x5a, (uint8_t)(i >> 11)};
  size_t hdr = len < 126 ? 6 : 8;
  if (len > 65535) return false;
  uint8_t *h = payload - hdr;
  h[0] = (uint8_t)(0x80 | op);
  if (len < 126) {
    h[1] = (uint8_t)(0x80 | len);
  } else {
    h[1] = 0x80 | 126;
    h[2] = (uint8_t)(len >> 8);
    h[3] = (uint8_t)len;
  }
  memcpy(payload - 4, mask, 4);
  for (size_t k = 0; k < len; k++) payload[k] ^= mask[k & 3];
  return wc_write(c, h, hdr + len);
}

static bool wc_send_hello(wclient *wc, size_t i) {
  char name[32];
  principal_name(name, sizeof name, i);
  Parley__V1__Hello h = PARLEY__V1__HELLO__INIT;
  h.min_version = 1;
  h.max_version = 1;
  h.principal = name;
  h.role = PARLEY__V1__ROLE__ROLE_CUSTOMER;
  h.device = "bench";
  h.locale = "en";
  h.client = "bench_memory";
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_HELLO;
  f.hello = &h;
  uint8_t *buf;
  size_t len;
  if (pw_encode(&f, 14, &buf, &len) != 0) return false;
  bool ok = wc_write_frame(&wc->c[i], i, 0x2, buf + 14, len);
  free(buf);
  return ok;
}

static void wc_start(wclient *wc, size_t i) {
  wconn *c = &wc->c[i];
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  c->state = CS_CONNECTING;
  wc->inflight++;
  if (c->fd < 0) {
    wc_fail(wc, i, "socket: %s", strerror(errno));
    return;
  }
  /* The port is chosen at connect time, per (source, destination): with
   * several source addresses the ephemeral range is never the limit. */
  int one = 1;
  setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  struct sockaddr_in src = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(i % N_SOURCES))};
  if (bind(c->fd, (struct sockaddr *)&src, sizeof src) != 0) {
    wc_fail(wc, i, "bind 127.0.0.%zu: %s", 2 + i % N_SOURCES, strerror(errno));
    return;
  }
  struct sockaddr_in dst = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)wc->port),
                            .sin_addr.s_addr = htonl(0x7f000001u)};
  if (connect(c->fd, (struct sockaddr *)&dst, sizeof dst) != 0 && errno != EINPROGRESS) {
    wc_fail(wc, i, "connect: %s", strerror(errno));
    return;
  }
  struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = i};
  if (epoll_ctl(wc->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0)
    wc_fail(wc, i, "epoll_ctl: %s", strerror(errno));
}

static void wc_connected(wclient *wc, size_t i) {
  wconn *c = &wc->c[i];
  int err = 0;
  socklen_t el = sizeof err;
  if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err) {
    wc_fail(wc, i, "connect: %s", strerror(err ? err : errno));
    return;
  }
  char name[32], req[768];
  principal_name(name, sizeof name, i);
  /* The customer's token: hex(BLAKE2b-256 keyed with the secret) of the
   * principal, what `parley gateway token` prints. */
  uint8_t mac[32];
  char tok[65];
  crypto_generichash(mac, sizeof mac, (const uint8_t *)name, strlen(name),
                     (const uint8_t *)CUSTOMER_SECRET, strlen(CUSTOMER_SECRET));
  sodium_bin2hex(tok, sizeof tok, mac, sizeof mac);
  int n = snprintf(req, sizeof req,
                   "GET / HTTP/1.1\r\n"
                   "Host: 127.0.0.1:%d\r\n"
                   "Upgrade: websocket\r\n"
                   "Connection: Upgrade\r\n"
                   "Sec-WebSocket-Key: " WS_KEY "\r\n"
                   "Sec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Protocol: parley.v1\r\n"
                   "Authorization: Bearer %s\r\n"
                   "\r\n",
                   wc->port, tok);
  if (!wc_write(c, req, (size_t)n)) {
    wc_fail(wc, i, "writing the upgrade request: %s", strerror(errno));
    return;
  }
  c->buf = malloc(WC_BUF);
  if (!c->buf) {
    wc_fail(wc, i, "out of memory");
    return;
  }
  c->len = 0;
  c->state = CS_HTTP;
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = i};
  epoll_ctl(wc->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Marks connection i failed and leaves the calling handler. */
#define FAIL_RET(...)            \
  do {                           \
    wc_fail(wc, i, __VA_ARGS__); \
    return;                      \
  } while (0)

static bool find_bytes(const uint8_t *hay, size_t n, const char *needle, size_t *at) {
  size_t k = strlen(needle);
  for (size_t i = 0; i + k <= n; i++)
    if (!memcmp(hay + i, needle, k)) {
      if (at) *at = i;
      return true;
    }
  return false;
}

/* The first data message: a Welcome for this principal (Parley), or the
 * peer's fixed reply (Node). */
static void wc_first_message(wclient *wc, size_t i, const uint8_t *p, size_t len) {
  wconn *c = &wc->c[i];
  if (wc->parley) {
    pw_frame *f = NULL;
    const char *why = NULL;
    int rc = pw_decode(p, len, PW_DEFAULT_MAX_FRAME, &f, &why);
    if (rc != 0) {
      wc_fail(wc, i, "undecodable first frame: %s (%s)", parley_errname(rc), why ? why : "");
      return;
    }
    char name[32];
    principal_name(name, sizeof name, i);
    if (f->body_case == PARLEY__V1__FRAME__BODY_ERROR) {
      wc_fail(wc, i, "Error %d instead of Welcome: %s", (int)f->error->code,
              f->error->message ? f->error->message : "");
    } else if (f->body_case != PARLEY__V1__FRAME__BODY_WELCOME) {
      wc_fail(wc, i, "frame %d instead of Welcome", (int)f->body_case);
    } else if (!f->welcome->principal || strcmp(f->welcome->principal, name) != 0) {
      wc_fail(wc, i, "Welcome for another principal");
    }
    pw_frame_free(f);
    if (c->state == CS_DEAD) return;
  } else if (len != NODE_WELCOME_LEN || memcmp(p, "welcome", 7) != 0) {
    wc_fail(wc, i, "unexpected first message of %zu bytes", len);
    return;
  }
  c->state = CS_DONE;
  free(c->buf);
  c->buf = NULL;
  c->len = 0;
  wc->inflight--;
  wc->done++;
}

/* Parses whole server frames in the handshake buffer. */
static void wc_parse_ws(wclient *wc, size_t i) {
  wconn *c = &wc->c[i];
  size_t off = 0;
  while (c->state == CS_WS && c->len - off >= 2) {
    uint8_t *b = c->buf + off;
    size_t avail = c->len - off, hdr = 2, plen = b[1] & 0x7f;
    if (b[1] & 0x80) FAIL_RET("masked frame from the server");
    if (plen == 127) FAIL_RET("oversized frame from the server");
    if (plen == 126) {
      if (avail < 4) break;
      plen = (size_t)b[2] << 8 | b[3];
      hdr = 4;
    }
    if (hdr + plen > WC_BUF) FAIL_RET("frame of %zu bytes in the handshake", plen);
    if (avail < hdr + plen) break;
    uint8_t *pl = b + hdr;
    switch (b[0] & 0x0f) {
    case 0x2:
      if (!(b[0] & 0x80)) FAIL_RET("fragmented first message");
      wc_first_message(wc, i, pl, plen);
      return; /* freed the buffer, or failed */
    case 0x9: {
      uint8_t pong[14 + 125];
      memcpy(pong + 14, pl, plen);
      if (plen > 125 || !wc_write_frame(c, i, 0xA, pong + 14, plen))
        FAIL_RET("cannot answer a ping");
      wc->pings++;
      break;
    }
    case 0xA:
      break;
    case 0x8: {
      int code = plen >= 2 ? (pl[0] << 8 | pl[1]) : 1005;
      FAIL_RET("closed with %d %.*s", code, plen > 2 ? (int)(plen - 2) : 0,
                     (const char *)pl + 2);
    }
    default:
      FAIL_RET("unexpected opcode %d", b[0] & 0x0f);
    }
    off += hdr + plen;
  }
  if (c->state == CS_WS && off) {
    memmove(c->buf, c->buf + off, c->len - off);
    c->len = (uint16_t)(c->len - off);
  }
}

static void wc_readable(wclient *wc, size_t i) {
  wconn *c = &wc->c[i];
  if (c->state == CS_DONE) {
    /* An idle connection: anything but silence is noted; a close ends it. */
    uint8_t tmp[4096];
    ssize_t r = recv(c->fd, tmp, sizeof tmp, 0);
    if (r == 0) wc_fail(wc, i, "closed by the server while idle");
    else if (r < 0 && errno != EAGAIN && errno != EINTR)
      wc_fail(wc, i, "while idle: %s", strerror(errno));
    else if (r > 0) wc->idle_bytes += (size_t)r;
    return;
  }
  ssize_t r = recv(c->fd, c->buf + c->len, WC_BUF - c->len, 0);
  if (r == 0) FAIL_RET("closed by the server during the handshake");
  if (r < 0) {
    if (errno != EAGAIN && errno != EINTR) wc_fail(wc, i, "recv: %s", strerror(errno));
    return;
  }
  c->len = (uint16_t)(c->len + r);
  if (c->state == CS_HTTP) {
    size_t end;
    if (!find_bytes(c->buf, c->len, "\r\n\r\n", &end)) {
      if (c->len == WC_BUF) wc_fail(wc, i, "upgrade response too long");
      return;
    }
    if (c->len < 12 || memcmp(c->buf, "HTTP/1.1 101", 12) != 0)
      FAIL_RET("upgrade refused: %.*s", (int)(end < 60 ? end : 60),
                     (const char *)c->buf);
    if (!find_bytes(c->buf, end, WS_ACCEPT, NULL))
      FAIL_RET("wrong Sec-WebSocket-Accept");
    end += 4;
    memmove(c->buf, c->buf + end, c->len - end);
    c->len = (uint16_t)(c->len - end);
    c->state = CS_WS;
    if (!wc_send_hello(wc, i)) FAIL_RET("writing Hello: %s", strerror(errno));
  }
  wc_parse_ws(wc, i);
}

static void wc_event(wclient *wc, const struct epoll_event *ev) {
  size_t i = (size_t)ev->data.u64;
  wconn *c = &wc->c[i];
  if (c->state == CS_CONNECTING) {
    if (ev->events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) wc_connected(wc, i);
    return;
  }
  if (c->state == CS_HTTP || c->state == CS_WS || c->state == CS_DONE) {
    if (ev->events & (EPOLLIN | EPOLLERR | EPOLLHUP)) wc_readable(wc, i);
  }
}

/* Waits up to ms for socket events and handles them. */
static void wc_pump(wclient *wc, int ms) {
  struct epoll_event evs[256];
  int n = epoll_wait(wc->ep, evs, 256, ms);
  for (int k = 0; k < n; k++) wc_event(wc, &evs[k]);
}

static int wc_init(wclient *wc, bool parley, int port, size_t cap) {
  memset(wc, 0, sizeof *wc);
  wc->parley = parley;
  wc->server = parley ? "gateway" : "node";
  wc->port = port;
  wc->cap = cap;
  wc->c = calloc(cap, sizeof *wc->c);
  wc->ep = epoll_create1(EPOLL_CLOEXEC);
  if (!wc->c || wc->ep < 0) return -1;
  for (size_t i = 0; i < cap; i++) wc->c[i].fd = -1;
  return 0;
}

static void wc_free(wclient *wc) {
  for (size_t i = 0; i < wc->n; i++) {
    if (wc->c[i].fd >= 0) close(wc->c[i].fd);
    free(wc->c[i].buf);
  }
  free(wc->c);
  if (wc->ep >= 0) close(wc->ep);
  wc->c = NULL;
  wc->n = wc->cap = 0;
  wc->ep = -1;
}

/* Opens connections until `target` exist, at most HANDSHAKE_WINDOW in
 * their handshake at once, and waits for every Welcome. 0 when all of
 * them got one. */
static int wc_open(wclient *wc, size_t target, int timeout_ms) {
  uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
  if (target > wc->cap) target = wc->cap;
  while (!g_stop) {
    while (wc->n < target && wc->inflight < HANDSHAKE_WINDOW) wc_start(wc, wc->n++);
    if (wc->n == target && wc->inflight == 0) break;
    if (mono_ms() > deadline) {
      fprintf(stderr,
              "bench_memory: %s: %zu of %zu connections still in their handshake after %d ms\n",
              wc->server, wc->inflight, target, timeout_ms);
      return -1;
    }
    wc_pump(wc, 100);
  }
  if (g_stop) return -1;
  return wc->dead ? -1 : 0;
}

/* Samples the server's RSS every 250 ms, handling the idle connections in
 * between, until STABLE_SPAN samples in a row agree within STABLE_SLACK or
 * max_ms passes. Returns the last sample, 0 when the process is gone. */
static uint64_t wait_quiet(wclient *wc, int pid, int max_ms, bool *stable) {
  uint64_t ring[STABLE_SPAN] = {0};
  size_t got = 0;
  uint64_t start = mono_ms(), last = 0;
  *stable = false;
  while (!g_stop) {
    if (wc) {
      uint64_t until = mono_ms() + 250;
      while (!g_stop && mono_ms() < until) wc_pump(wc, 50);
    } else {
      struct timespec ts = {0, 250 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
    last = bench_rss_bytes(pid);
    if (!last) return 0;
    ring[got++ % STABLE_SPAN] = last;
    if (got >= STABLE_SPAN) {
      uint64_t lo = UINT64_MAX, hi = 0;
      for (size_t k = 0; k < STABLE_SPAN; k++) {
        if (ring[k] < lo) lo = ring[k];
        if (ring[k] > hi) hi = ring[k];
      }
      if (hi - lo <= STABLE_SLACK) {
        *stable = true;
        return last;
      }
    }
    if (mono_ms() - start > (uint64_t)max_ms) return last;
  }
  return last;
}

/* ================================================================ servers */

typedef struct srv_run {
  const char *subject;   /* "parley" or "node-ws" */
  size_t n_small, n_full;
  uint64_t rss_base, rss_small, rss_full;
  bool stable;
  double per_small, per_full, per_marginal;
  size_t welcomes, idle_bytes;
  int exit_status;
} srv_run;

static bool process_alive(tproc *p) {
  if (p->reaped) return false;
  int st;
  pid_t r = waitpid(p->pid, &st, WNOHANG);
  if (r == p->pid) {
    p->reaped = true;
    p->status = st;
    return false;
  }
  return kill(p->pid, 0) == 0;
}

static void print_log(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return;
  char line[512];
  int n = 0;
  while (fgets(line, sizeof line, f) && n++ < 20) fprintf(stderr, "  | %s", line);
  fclose(f);
}

/* tproc_start, plus: the child is killed when this process dies, however it
 * dies, and no descriptor of ours leaks into it. */
static int spawn(tproc *p, char *const argv[], const char *errlog) {
  memset(p, 0, sizeof *p);
  int fds[2];
  if (pipe(fds) != 0) return -1;
  fcntl(fds[0], F_SETFD, FD_CLOEXEC);
  fcntl(fds[1], F_SETFD, FD_CLOEXEC);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return -1;
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(fds[1], STDOUT_FILENO);
    int fd = open(errlog, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) dup2(fd, STDERR_FILENO);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
    signal(SIGPIPE, SIG_DFL);
    execv(argv[0], argv);
    _exit(127);
  }
  close(fds[1]);
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  p->pid = pid;
  p->out_fd = fds[0];
  return 0;
}

/* Starts the server: the gateway with a config that admits n + 16
 * connections, or the Node peer. Returns the port, 0 on failure. */
static int start_server(bool parley, tproc *p, const char *dir, size_t n, const char *errlog) {
  char line[512];
  if (parley) {
    char yaml[1024], cfg[512], data[512];
    snprintf(cfg, sizeof cfg, "%s/gateway.yaml", dir);
    snprintf(data, sizeof data, "%s/data", dir);
    /* Customers authenticate with tokens minted from the secret, each its
     * own principal (a shared one would meet max_connections_per_principal).
     * The heartbeat is an hour so that idle really is idle: no pings. */
    snprintf(yaml, sizeof yaml,
             "listen: 127.0.0.1\n"
             "port: 0\n"
             "data_dir: %s\n"
             "durability: off\n"
             "bot: bench-bot\n"
             "principals:\n"
             "  - {name: bench-bot, role: bot, token_env: PARLEY_BENCH_MEM_BOT_TOKEN}\n"
             "customers:\n"
             "  secret_env: PARLEY_BENCH_MEM_SECRET\n"
             "limits:\n"
             "  max_connections: %zu\n"
             "  heartbeat: 1h\n",
             data, n + 16);
    if (write_file(cfg, yaml) != 0) return 0;
    /* PARLEY_BENCH_GATEWAY_WRAP runs the gateway under a tool, to see
     * where its memory goes ("valgrind --tool=massif --massif-out-file=F");
     * at most 8 words, split at spaces. */
    char *argv[16], wrap[512];
    int a = 0;
    const char *w = getenv("PARLEY_BENCH_GATEWAY_WRAP");
    if (w && *w) {
      snprintf(wrap, sizeof wrap, "%s", w);
      for (char *save = NULL, *t = strtok_r(wrap, " ", &save); t && a < 8;
           t = strtok_r(NULL, " ", &save))
        argv[a++] = t;
    }
    argv[a++] = (char *)PARLEY_BIN;
    argv[a++] = "gateway";
    argv[a++] = "--config";
    argv[a++] = cfg;
    argv[a] = NULL;
    if (spawn(p, argv, errlog) != 0) return 0;
    if (!tproc_wait_for(p, "listening on", line, sizeof line, 15000)) return 0;
    const char *colon = strrchr(line, ':');
    return colon ? atoi(colon + 1) : 0;
  }
  char script[512];
  snprintf(script, sizeof script, "%s/bench/peers/node/ws_server.js", PARLEY_SOURCE_DIR);
  char *argv[] = {"/usr/bin/env", "node", "--expose-gc", script, "0", NULL};
  if (spawn(p, argv, errlog) != 0) return 0;
  if (!tproc_wait_for(p, "listening", line, sizeof line, 15000)) return 0;
  /* "listening PORT ws/VERSION node/VERSION" */
  const char *sp = strchr(line, ' ');
  const char *vs = sp ? strchr(sp + 1, ' ') : NULL;
  if (vs) snprintf(g_node_versions, sizeof g_node_versions, "%s", vs + 1);
  return sp ? atoi(sp + 1) : 0;
}

static int run_server(bool parley, size_t n, bool tiny, srv_run *out) {
  memset(out, 0, sizeof *out);
  out->subject = parley ? "parley" : "node-ws";
  out->n_full = n;
  out->n_small = n / 10;
  out->exit_status = -1;
  const char *who = parley ? "gateway" : "node ws server";
  char dir[256], errlog[512];
  if (tmpdir_make(dir, sizeof dir, "bench-mem") != 0) {
    fprintf(stderr, "bench_memory: cannot make a temp dir: %s\n", strerror(errno));
    return -1;
  }
  snprintf(errlog, sizeof errlog, "%s/server.log", dir);
  int rc = -1;
  tproc p;
  memset(&p, 0, sizeof p);
  wclient wc;
  memset(&wc, 0, sizeof wc);
  wc.ep = -1;
  int port = start_server(parley, &p, dir, n, errlog);
  if (!port) {
    fprintf(stderr, "bench_memory: the %s did not start; its log:\n", who);
    print_log(errlog);
    goto done;
  }
  if (wc_init(&wc, parley, port, n + 1) != 0) {
    fprintf(stderr, "bench_memory: out of memory\n");
    goto done;
  }
  int quiet_ms = tiny ? 3000 : 15000, open_ms = tiny ? 10000 : 120000;
  bool st1, st2, st3;
  out->rss_base = wait_quiet(&wc, p.pid, quiet_ms, &st1);
  if (!out->rss_base) goto gone;
  uint64_t t0 = mono_ms();
  if (wc_open(&wc, out->n_small, open_ms) != 0) goto failed;
  out->rss_small = wait_quiet(&wc, p.pid, quiet_ms, &st2);
  if (!out->rss_small) goto gone;
  if (wc_open(&wc, n, open_ms) != 0) goto failed;
  uint64_t t1 = mono_ms();
  out->rss_full = wait_quiet(&wc, p.pid, quiet_ms, &st3);
  if (!out->rss_full) goto gone;
  out->stable = st1 && st2 && st3;
  if (wc.dead) goto failed;
  if (wc.done != n) {
    fprintf(stderr, "bench_memory: %s: %zu Welcomes for %zu connections\n", who, wc.done, n);
    goto done;
  }
  if (!process_alive(&p)) goto gone;
  out->welcomes = wc.done;
  out->idle_bytes = wc.idle_bytes;
  printf("  %-8s %zu connections opened in %.1f s, %zu Welcomes, %zu idle bytes received%s\n",
         out->subject, n, (double)(t1 - t0) / 1000.0, wc.done, wc.idle_bytes,
         out->stable ? "" : ", RSS not fully stable");
  /* Still serving after the measurement: one more connection must get its
   * Welcome too. */
  if (wc_open(&wc, n + 1, 10000) != 0) {
    fprintf(stderr, "bench_memory: the %s no longer serves a new connection\n", who);
    goto failed;
  }
  out->per_small = out->n_small
                       ? ((double)out->rss_small - (double)out->rss_base) / (double)out->n_small
                       : 0;
  out->per_full = ((double)out->rss_full - (double)out->rss_base) / (double)n;
  out->per_marginal = n > out->n_small ? ((double)out->rss_full - (double)out->rss_small) /
                                             (double)(n - out->n_small)
                                       : 0;
  /* Clients leave first, then the server is asked to stop and must exit
   * cleanly. */
  wc_free(&wc);
  tproc_kill(&p, SIGTERM);
  if (tproc_wait(&p, 15000) != 0) {
    fprintf(stderr, "bench_memory: the %s did not stop within 15 s of SIGTERM\n", who);
    goto done;
  }
  if (!WIFEXITED(p.status) || WEXITSTATUS(p.status) != 0) {
    fprintf(stderr, "bench_memory: the %s ended with status 0x%x; its log:\n", who, p.status);
    print_log(errlog);
    goto done;
  }
  out->exit_status = 0;
  rc = 0;
  goto done;
failed:
  if (g_stop) {
    fprintf(stderr, "bench_memory: interrupted\n");
    goto done;
  }
  fprintf(stderr,
          "bench_memory: %s: %zu of %zu connections failed (%zu closed while idle); first: %s\n",
          who, wc.dead, wc.n, wc.dead_idle, wc.why[0] ? wc.why : "(none)");
  goto done;
gone:
  fprintf(stderr, "bench_memory: the %s is gone; its log:\n", who);
  print_log(errlog);
done:
  wc_free(&wc);
  tproc_stop(&p);
  tmpdir_remove(dir);
  return rc;
}

/* ================================================================ engine */

typedef struct sdk_counts {
  size_t events, sends_ok, sends_failed, peer_errors;
  uint64_t *acked; /* per conversation, the highest up_to_seq seen in an Ack */
  size_t n_conv;
} sdk_counts;

static void sdk_event(void *ud, const parley_event *ev) {
  (void)ev;
  ((sdk_counts *)ud)->events++;
}

static void sdk_send_result(void *ud, const parley_send_result *r, void *send_ud) {
  (void)send_ud;
  sdk_counts *k = ud;
  if (r->status == 0) k->sends_ok++;
  else k->sends_failed++;
}

static void sdk_peer_error(void *ud, int status, const char *message) {
  sdk_counts *k = ud;
  if (k->peer_errors++ < 3)
    fprintf(stderr, "bench_memory: engine peer_error %s: %s\n", parley_errname(status),
            message ? message : "");
}

static void conv_name(char *out, size_t n, size_t i) { snprintf(out, n, "conv-%06zu", i); }

static void msg_id(uint8_t id[16], size_t i, uint8_t who) {
  memset(id, 0, 16);
  id[0] = who;
  for (int k = 0; k < 8; k++) id[8 + k] = (uint8_t)(i >> (8 * k));
}

static int feed(pe_engine *e, const pw_frame *f, uint64_t now) {
  uint8_t *buf;
  size_t len;
  if (pw_encode(f, 0, &buf, &len) != 0) return PARLEY_ENOMEM;
  int rc = pe_engine_on_input(e, buf, len, now);
  free(buf);
  return rc;
}

/* Takes every output frame; Acks are recorded, Send frames counted. */
static int drain(pe_engine *e, sdk_counts *k, size_t *sends_seen) {
  const uint8_t *data;
  size_t len;
  while (pe_engine_take_output(e, &data, &len)) {
    pw_frame *f = NULL;
    const char *why = NULL;
    if (pw_decode(data, len, PW_DEFAULT_MAX_FRAME, &f, &why) != 0) {
      fprintf(stderr, "bench_memory: engine wrote an undecodable frame (%s)\n", why ? why : "");
      return -1;
    }
    if (f->body_case == PARLEY__V1__FRAME__BODY_ACK) {
      for (size_t j = 0; j < f->ack->n_entries; j++) {
        const Parley__V1__AckEntry *a = f->ack->entries[j];
        size_t idx;
        if (sscanf(a->conversation, "conv-%zu", &idx) == 1 && idx < k->n_conv &&
            a->up_to_seq > k->acked[idx])
          k->acked[idx] = a->up_to_seq;
      }
    } else if (f->body_case == PARLEY__V1__FRAME__BODY_SEND && sends_seen) {
      (*sends_seen)++;
    }
    pw_frame_free(f);
  }
  return 0;
}

static void tick_until(pe_engine *e, uint64_t now) {
  while (pe_engine_deadline(e) <= now) {
    uint64_t before = pe_engine_deadline(e);
    pe_engine_on_tick(e, now);
    if (pe_engine_deadline(e) == before) break;
  }
}

/* One conversation's stream: OPENED, ASSIGNED, the customer's message (its
 * own id) and the bot's reply, as the gateway stores them. */
static int sdk_deliver(pe_engine *e, size_t i, const char *conv, uint64_t now) {
  Parley__V1__Event ev[4];
  Parley__V1__Event *evp[4];
  Parley__V1__Content ct[2];
  Parley__V1__Text tx[2];
  uint8_t ids[2][16];
  msg_id(ids[0], i, 1);
  msg_id(ids[1], i, 2);
  for (int k = 0; k < 4; k++) {
    parley__v1__event__init(&ev[k]);
    ev[k].conversation = (char *)conv;
    ev[k].seq = (uint64_t)k + 1;
    ev[k].server_time_ms = 1700000000000 + (int64_t)k;
    evp[k] = &ev[k];
  }
  ev[0].kind = PARLEY__V1__EVENT_KIND__EVENT_OPENED;
  ev[0].sender = "sdk-customer";
  ev[0].sender_role = PARLEY__V1__ROLE__ROLE_CUSTOMER;
  ev[0].customer = "sdk-customer";
  ev[0].locale = "en";
  ev[1].kind = PARLEY__V1__EVENT_KIND__EVENT_ASSIGNED;
  ev[1].assignee = "support-bot";
  for (int k = 0; k < 2; k++) {
    parley__v1__content__init(&ct[k]);
    parley__v1__text__init(&tx[k]);
    ct[k].body_case = PARLEY__V1__CONTENT__BODY_TEXT;
    ct[k].text = &tx[k];
    ev[2 + k].kind = PARLEY__V1__EVENT_KIND__EVENT_MESSAGE;
    ev[2 + k].content = &ct[k];
    ev[2 + k].client_msg_id.data = ids[k];
    ev[2 + k].client_msg_id.len = 16;
  }
  tx[0].body = "Hello, where is my order 12345?";
  ev[2].sender = "sdk-customer";
  ev[2].sender_role = PARLEY__V1__ROLE__ROLE_CUSTOMER;
  tx[1].body = "Your order 12345 left the warehouse today and arrives on Tuesday.";
  ev[3].sender = "support-bot";
  ev[3].sender_role = PARLEY__V1__ROLE__ROLE_BOT;
  Parley__V1__Deliver d = PARLEY__V1__DELIVER__INIT;
  d.events = evp;
  d.n_events = 4;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_DELIVER;
  f.deliver = &d;
  return feed(e, &f, now);
}

typedef struct sdk_run {
  size_t n_conv;
  double per_conv;
  size_t conv_struct, id_chunk;
  double table_per_conv;
  size_t tab_cap;
} sdk_run;

static int run_engine(size_t n_conv, sdk_run *out) {
  memset(out, 0, sizeof *out);
  out->n_conv = n_conv;
  sdk_counts k = {.n_conv = n_conv};
  k.acked = calloc(n_conv, sizeof *k.acked);
  if (!k.acked) return -1;
  pe_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.principal = "sdk-customer";
  cfg.token = "sdk-token";
  cfg.role = PARLEY_ROLE_CUSTOMER;
  cfg.device = "phone";
  cfg.locale = "en";
  cfg.tuning.seed = 7;
  pe_hooks hooks;
  memset(&hooks, 0, sizeof hooks);
  hooks.ud = &k;
  hooks.event = sdk_event;
  hooks.send_result = sdk_send_result;
  hooks.peer_error = sdk_peer_error;
  pe_engine *e = pe_engine_new(&cfg, &hooks);
  int rc = -1;
  if (!e) goto out;
  uint64_t now = 1000;
  pe_engine_on_connect(e, now);
  if (drain(e, &k, NULL) != 0) goto out;
  {
    Parley__V1__Welcome w = PARLEY__V1__WELCOME__INIT;
    w.version = 1;
    w.principal = "sdk-customer";
    w.session = "bench";
    w.server_time_ms = 1700000000000;
    w.heartbeat_ms = 3600000; /* no pings in this simulated hour */
    w.max_frame_bytes = PW_DEFAULT_MAX_FRAME;
    w.window = 256;
    w.ack_timeout_ms = 5000;
    pw_frame f = PARLEY__V1__FRAME__INIT;
    f.body_case = PARLEY__V1__FRAME__BODY_WELCOME;
    f.welcome = &w;
    if (feed(e, &f, now) != 0 || !pe_engine_ready(e)) {
      fprintf(stderr, "bench_memory: the engine did not take the Welcome\n");
      goto out;
    }
  }
  if (drain(e, &k, NULL) != 0) goto out;

  struct mallinfo2 before = mallinfo2();
  const size_t batch = 100;
  char conv[32];
  for (size_t b = 0; b < n_conv; b += batch) {
    size_t end = b + batch < n_conv ? b + batch : n_conv;
    size_t sends_seen = 0;
    /* The customer's first message opens each conversation. */
    for (size_t i = b; i < end; i++) {
      conv_name(conv, sizeof conv, i);
      parley_content ct;
      memset(&ct, 0, sizeof ct);
      ct.kind = PARLEY_CONTENT_TEXT;
      ct.text = "Hello, where is my order 12345?";
      uint8_t id[16];
      msg_id(id, i, 1);
      int src = pe_engine_send(e, conv, &ct, NULL, id, 0, NULL, now);
      if (src != 0) {
        fprintf(stderr, "bench_memory: send: %s\n", parley_errname(src));
        goto out;
      }
    }
    if (drain(e, &k, &sends_seen) != 0) goto out;
    if (sends_seen != end - b) {
      fprintf(stderr, "bench_memory: %zu Send frames written for %zu sends\n", sends_seen,
              end - b);
      goto out;
    }
    for (size_t i = b; i < end; i++) {
      conv_name(conv, sizeof conv, i);
      uint8_t id[16];
      msg_id(id, i, 1);
      Parley__V1__SendAck a = PARLEY__V1__SEND_ACK__INIT;
      a.client_msg_id.data = id;
      a.client_msg_id.len = 16;
      a.conversation = conv;
      a.seq = 3;
      a.server_time_ms = 1700000000002;
      pw_frame f = PARLEY__V1__FRAME__INIT;
      f.body_case = PARLEY__V1__FRAME__BODY_SEND_ACK;
      f.send_ack = &a;
      if (feed(e, &f, now) != 0 || sdk_deliver(e, i, conv, now) != 0) {
        fprintf(stderr, "bench_memory: the engine refused a frame of %s\n", conv);
        goto out;
      }
      if (drain(e, &k, NULL) != 0) goto out;
    }
    now += 60; /* past ack_batch_ms: the partial batch of Acks goes out */
    tick_until(e, now);
    if (drain(e, &k, NULL) != 0) goto out;
  }
  now += 1000;
  tick_until(e, now);
  if (drain(e, &k, NULL) != 0) goto out;
  struct mallinfo2 after = mallinfo2();

  parley_client_stats st;
  pe_engine_stats(e, &st);
  size_t not_acked = 0;
  for (size_t i = 0; i < n_conv; i++)
    if (k.acked[i] != 4) not_acked++;
  if (k.events != 4 * n_conv || k.sends_ok != n_conv || k.sends_failed || k.peer_errors ||
      not_acked || st.buffered_bytes || st.outbox_size || st.reorder_events) {
    fprintf(stderr,
            "bench_memory: engine: %zu of %zu events, %zu of %zu sends stored (%zu failed), "
            "%zu peer errors, %zu conversations not acknowledged to seq 4, %llu bytes still "
            "buffered\n",
            k.events, 4 * n_conv, k.sends_ok, n_conv, k.sends_failed, k.peer_errors, not_acked,
            (unsigned long long)st.buffered_bytes);
    goto out;
  }
  /* uordblks: chunks in the heap; hblkhd: chunks malloc gave their own
   * mapping (the conversation table, once it is large). */
  out->per_conv = ((double)(after.uordblks + after.hblkhd) -
                   (double)(before.uordblks + before.hblkhd)) /
                  (double)n_conv;
  if (out->per_conv <= 0) {
    fprintf(stderr, "bench_memory: mallinfo2 saw no allocation by the engine (is malloc "
                    "replaced, e.g. under valgrind?)\n");
    goto out;
  }
  /* What one conversation is made of. */
  out->conv_struct = sizeof(pe_conv);
  pe_conv *c0 = pe_conv_find(e, "conv-000000");
  out->id_chunk = c0 ? malloc_usable_size(c0->id) + sizeof(size_t) : 0;
  out->tab_cap = e->tab_cap;
  out->table_per_conv = (double)(e->tab_cap * sizeof(pe_conv *)) / (double)n_conv;
  rc = 0;
out:
  pe_engine_free(e);
  free(k.acked);
  return rc;
}

/* ================================================================ main */

static int raise_nofile(size_t need) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
    fprintf(stderr,
            "bench_memory: RLIMIT_NOFILE hard limit %llu is below the %zu descriptors needed "
            "(raise it with ulimit -Hn)\n",
            (unsigned long long)rl.rlim_cur, need);
    return -1;
  }
  return 0;
}

int main(int argc, char **argv) {
  bool tiny = bench_tiny(argc, argv);
  size_t n = tiny ? 200 : 10000;
  /* --conns N: another connection count, for looking at one point. */
  for (int i = 1; i + 1 < argc; i++)
    if (!strcmp(argv[i], "--conns")) {
      long v = strtol(argv[i + 1], NULL, 10);
      if (v < 10 || v > 1000000) {
        fprintf(stderr, "bench_memory: --conns wants 10..1000000\n");
        return 2;
      }
      n = (size_t)v;
    }
  size_t n_conv = tiny ? 500 : 10000;
  setvbuf(stdout, NULL, _IOLBF, 0);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  if (sodium_init() < 0) return 1;
  /* This process holds n client sockets, each server n accepted ones; the
   * servers inherit the raised limit. */
  if (raise_nofile(n + 256) != 0) return 1;
  setenv("PARLEY_BENCH_MEM_SECRET", CUSTOMER_SECRET, 1);
  setenv("PARLEY_BENCH_MEM_BOT_TOKEN", BOT_TOKEN, 1);

  printf("bench_memory%s: %zu idle WebSocket connections per server, %zu idle conversations "
         "in the engine\n",
         tiny ? " --tiny" : "", n, n_conv);
  srv_run runs[2];
  for (int s = 0; s < 2; s++)
    if (run_server(s == 0, n, tiny, &runs[s]) != 0) return 1;
  sdk_run eng;
  if (run_engine(n_conv, &eng) != 0) return 1;

  printf("\nserver memory per idle WebSocket connection (VmRSS delta / connections)\n");
  printf("  %-8s %12s %14s %14s %14s %14s %14s\n", "subject", "base RSS", "RSS at N/10",
         "RSS at N", "B/conn N/10", "B/conn N", "B/conn marginal");
  for (int s = 0; s < 2; s++) {
    const srv_run *r = &runs[s];
    printf("  %-8s %10.1f M %12.1f M %12.1f M %14.0f %14.0f %14.0f\n", r->subject,
           (double)r->rss_base / 1048576.0, (double)r->rss_small / 1048576.0,
           (double)r->rss_full / 1048576.0, r->per_small, r->per_full, r->per_marginal);
  }
  double ratio = runs[1].per_full > 0 ? runs[0].per_full / runs[1].per_full : 0;
  printf("  parley / node-ws at %zu connections: %.2f (target <= 0.5)\n", n, ratio);
  /* The rest (lws's connection, its receive buffer, the loop's poll
   * handle) is private to libwebsockets: PARLEY_BENCH_GATEWAY_WRAP with
   * valgrind's massif shows it. */
  printf("  the gateway's own record per connection: pg_conn %zu bytes (of which %d the "
         "Authorization token buffer), plus lws's connection and receive buffer\n",
         sizeof(pg_conn), PG_TOKEN_MAX);

  printf("\nclient engine memory per idle conversation "
         "(mallinfo2 in-use bytes delta / conversations)\n");
  printf("  %zu conversations: %.0f bytes each (target <= 2048)\n", eng.n_conv, eng.per_conv);
  printf("  of which: pe_conv %zu bytes, id chunk %zu bytes, table slots %.1f bytes "
         "(capacity %zu), malloc overhead per chunk\n",
         eng.conv_struct, eng.id_chunk, eng.table_per_conv, eng.tab_cap);

  for (int s = 0; s < 2; s++) {
    const srv_run *r = &runs[s];
    char p[32];
    snprintf(p, sizeof p, "conns=%zu", r->n_small);
    bench_figure(BENCH, "bytes_per_conn", r->subject, p, r->per_small, "bytes");
    snprintf(p, sizeof p, "conns=%zu", r->n_full);
    bench_figure(BENCH, "bytes_per_conn", r->subject, p, r->per_full, "bytes");
    bench_figure(BENCH, "bytes_per_conn", r->subject, "conns=max", r->per_full, "bytes");
  }
  bench_figure(BENCH, "bytes_per_conversation", "parley", "", eng.per_conv, "bytes");
  bench_note(BENCH,
             "bytes_per_conn: VmRSS of the server process with N idle WebSocket connections "
             "minus before any, over N; each connection did the upgrade and one request/reply "
             "(Parley Hello/Welcome as its own customer principal; the node ws server "
             "answers the first message with an 80-byte message), then stayed idle; "
             "clients from 127.0.0.2-9, %zu connections, same client for both",
             n);
  bench_note(BENCH,
             "parley: `parley gateway`, durability off, heartbeat 1h (no pings while idle); "
             "node-ws: %s with --expose-gc, one gc() once connections stop arriving; "
             "permessage-deflate off on both",
             g_node_versions);
  bench_note(BENCH,
             "bytes_per_conversation: client engine (customer) with %zu conversations, each "
             "with its first message sent and acknowledged and 4 events received and "
             "acknowledged; glibc mallinfo2 in-use bytes (uordblks + hblkhd) after minus "
             "before, over the conversations",
             n_conv);
  return 0;
}
