/* See faultproxy.h. One thread, one poll loop, non-blocking sockets. */
#define _GNU_SOURCE
#include "faultproxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FP_DEFAULT_CONNS 256
#define FP_DEFAULT_BUF (1024u * 1024u)
#define FP_READ_CHUNK 65536
#define FP_CMD_WAIT_MS 3000

typedef struct fp_buf {
  uint8_t *data;
  size_t off, len, cap;
  bool eof;      /* the source closed its side */
  bool shut;     /* the eof was passed on (shutdown of the other side) */
} fp_buf;

typedef struct fp_conn {
  int fd[2];        /* [0] client side, [1] server side */
  bool connecting;  /* the server side connect is in progress */
  fp_buf b[2];      /* [FP_C2S] client->server, [FP_S2C] server->client */
  size_t cut_after; /* armed mid-burst cut: bytes to forward first, 0 none */
  bool hup[2];      /* that socket hung up: no longer polled */
  bool dead;
} fp_conn;

struct fp_proxy {
  fp_options o;
  int lfd;
  int port;
  int wake[2];
  pthread_t th;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  /* Requests from other threads, guarded by mu. */
  bool stop;
  int cut_all_req;   /* requests not yet done */
  int cut_all_done;  /* connections cut by the last request */
  uint64_t cut_all_gen, cut_all_gen_done;
  size_t cut_mid_k;
  bool cut_mid_req;
  int cut_mid_result;
  uint64_t cut_mid_gen, cut_mid_gen_done;
  uint64_t stall_until[2];
  size_t slice;
  fp_stats st;
  /* Owned by the thread. */
  fp_conn **conns;
  size_t n_conns;
  uint64_t rng;
};

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* xorshift64*: small, fast and reproducible for a given seed. */
static uint64_t rnd(fp_proxy *p) {
  uint64_t x = p->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  p->rng = x;
  return x * 0x2545F4914F6CDD1DULL;
}

static void wake(fp_proxy *p) {
  char c = 1;
  ssize_t r = write(p->wake[1], &c, 1);
  (void)r; /* a full pipe already wakes the loop */
}

static void set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL, 0);
  fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* A reset rather than a FIN: the peers see the connection die the way a
 * crashed host or a broken network makes it die. */
static void reset_fd(int fd) {
  if (fd < 0) return;
  struct linger lg = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
}

static void conn_free(fp_conn *c, bool reset) {
  for (int i = 0; i < 2; i++) {
    if (reset)
      reset_fd(c->fd[i]);
    else if (c->fd[i] >= 0)
      close(c->fd[i]);
    free(c->b[i].data);
  }
  free(c);
}

static void accept_one(fp_proxy *p) {
  int cfd = accept(p->lfd, NULL, NULL);
  if (cfd < 0) return;
  pthread_mutex_lock(&p->mu);
  p->st.accepted++;
  pthread_mutex_unlock(&p->mu);
  if (p->n_conns >= p->o.max_conns) {
    reset_fd(cfd);
    pthread_mutex_lock(&p->mu);
    p->st.refused++;
    pthread_mutex_unlock(&p->mu);
    return;
  }
  set_nonblock(cfd);
  int sfd = socket(AF_INET, SOCK_STREAM, 0);
  if (sfd < 0) {
    reset_fd(cfd);
    return;
  }
  set_nonblock(sfd);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p->o.target_port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool connecting = false;
  if (connect(sfd, (struct sockaddr *)&a, sizeof a) != 0) {
    if (errno != EINPROGRESS) {
      close(sfd);
      reset_fd(cfd);
      pthread_mutex_lock(&p->mu);
      p->st.refused++;
      pthread_mutex_unlock(&p->mu);
      return;
    }
    connecting = true;
  }
  fp_conn *c = calloc(1, sizeof *c);
  if (!c) {
    close(sfd);
    reset_fd(cfd);
    return;
  }
  c->fd[0] = cfd;
  c->fd[1] = sfd;
  c->connecting = connecting;
  p->conns[p->n_conns++] = c;
  pthread_mutex_lock(&p->mu);
  p->st.live = p->n_conns;
  pthread_mutex_unlock(&p->mu);
}

/* Reads from fd into b, growing b up to the proxy's limit. Returns false
 * when the connection must be dropped. */
static bool fill(fp_proxy *p, int fd, fp_buf *b) {
  if (b->off > 0 && b->off == b->len) b->off = b->len = 0;
  if (b->off > 0 && b->len == b->cap) {
    memmove(b->data, b->data + b->off, b->len - b->off);
    b->len -= b->off;
    b->off = 0;
  }
  if (b->len == b->cap) {
    if (b->cap >= p->o.buf_bytes) return true; /* full: the source waits */
    size_t ncap = b->cap ? b->cap * 2 : FP_READ_CHUNK;
    if (ncap > p->o.buf_bytes) ncap = p->o.buf_bytes;
    uint8_t *nd = realloc(b->data, ncap);
    if (!nd) return false;
    b->data = nd;
    b->cap = ncap;
  }
  ssize_t n = read(fd, b->data + b->len, b->cap - b->len);
  if (n > 0) {
    b->len += (size_t)n;
    return true;
  }
  if (n == 0) {
    b->eof = true;
    return true;
  }
  return errno == EAGAIN || errno == EINTR;
}

/* Writes from b to fd: everything, or one piece of 1..slice bytes. */
static bool drain(fp_proxy *p, int fd, fp_buf *b, size_t slice, uint64_t *counter) {
  size_t avail = b->len - b->off;
  if (avail == 0) return true;
  size_t want = avail;
  if (slice > 0) {
    size_t piece = 1 + (size_t)(rnd(p) % slice);
    if (piece < want) want = piece;
  }
  ssize_t n = send(fd, b->data + b->off, want, MSG_NOSIGNAL);
  if (n > 0) {
    b->off += (size_t)n;
    pthread_mutex_lock(&p->mu);
    *counter += (uint64_t)n;
    pthread_mutex_unlock(&p->mu);
    return true;
  }
  return n < 0 && (errno == EAGAIN || errno == EINTR);
}

/* The armed cut: forward k bytes of what the server sent (always fewer than
 * it sent, so the cut lands inside the burst), then reset both sides. */
static void do_cut_mid(fp_proxy *p, fp_conn *c) {
  fp_buf *b = &c->b[FP_S2C];
  size_t avail = b->len - b->off;
  size_t k = c->cut_after;
  if (k >= avail) k = avail - 1;
  size_t sent = 0;
  uint64_t deadline = mono_ms() + 500;
  while (sent < k && mono_ms() < deadline) {
    ssize_t n = send(c->fd[0], b->data + b->off + sent, k - sent, MSG_NOSIGNAL);
    if (n > 0)
      sent += (size_t)n;
    else if (n < 0 && errno != EAGAIN && errno != EINTR)
      break;
  }
  c->dead = true;
  pthread_mutex_lock(&p->mu);
  p->st.cut++;
  p->st.cut_mid++;
  p->st.bytes_s2c += sent;
  pthread_mutex_unlock(&p->mu);
}

static void handle_requests(fp_proxy *p) {
  pthread_mutex_lock(&p->mu);
  if (p->cut_all_req) {
    int n = 0;
    for (size_t i = 0; i < p->n_conns; i++) {
      if (!p->conns[i]->dead) {
        p->conns[i]->dead = true;
        n++;
      }
    }
    p->st.cut += (uint64_t)n;
    p->cut_all_done = n;
    p->cut_all_req = 0;
    p->cut_all_gen_done = p->cut_all_gen;
    pthread_cond_broadcast(&p->cv);
  }
  if (p->cut_mid_req) {
    size_t live = 0;
    for (size_t i = 0; i < p->n_conns; i++)
      if (!p->conns[i]->dead && !p->conns[i]->connecting) live++;
    p->cut_mid_result = -1;
    if (live > 0) {
      size_t pick = (size_t)(rnd(p) % live);
      for (size_t i = 0; i < p->n_conns; i++) {
        fp_conn *c = p->conns[i];
        if (c->dead || c->connecting) continue;
        if (pick-- == 0) {
          c->cut_after = p->cut_mid_k ? p->cut_mid_k : 1 + (size_t)(rnd(p) % 64);
          p->cut_mid_result = 0;
          break;
        }
      }
    }
    p->cut_mid_req = false;
    p->cut_mid_gen_done = p->cut_mid_gen;
    pthread_cond_broadcast(&p->cv);
  }
  pthread_mutex_unlock(&p->mu);
}

static void *run(void *arg) {
  fp_proxy *p = arg;
  size_t maxfds = 2 + 2 * p->o.max_conns;
  struct pollfd *pf = calloc(maxfds, sizeof *pf);
  fp_conn **owner = calloc(maxfds, sizeof *owner);
  if (!pf || !owner) {
    free(pf);
    free(owner);
    return NULL;
  }
  for (;;) {
    pthread_mutex_lock(&p->mu);
    bool stop = p->stop;
    uint64_t stall[2] = {p->stall_until[0], p->stall_until[1]};
    size_t slice = p->slice;
    pthread_mutex_unlock(&p->mu);
    if (stop) break;
    handle_requests(p);
    uint64_t now = mono_ms();
    bool held[2] = {stall[0] > now, stall[1] > now};

    /* Drop the dead connections first. */
    for (size_t i = 0; i < p->n_conns;) {
      fp_conn *c = p->conns[i];
      bool done = c->b[0].shut && c->b[1].shut;
      if (c->dead || done) {
        conn_free(c, c->dead);
        p->conns[i] = p->conns[--p->n_conns];
        continue;
      }
      i++;
    }
    pthread_mutex_lock(&p->mu);
    p->st.live = p->n_conns;
    pthread_mutex_unlock(&p->mu);

    size_t n = 0;
    pf[n++] = (struct pollfd){.fd = p->lfd, .events = POLLIN};
    pf[n++] = (struct pollfd){.fd = p->wake[0], .events = POLLIN};
    for (size_t i = 0; i < p->n_conns; i++) {
      fp_conn *c = p->conns[i];
      for (int side = 0; side < 2; side++) {
        /* side 0 reads into C2S and writes S2C; side 1 the reverse. */
        fp_buf *in = &c->b[side == 0 ? FP_C2S : FP_S2C];
        fp_buf *out = &c->b[side == 0 ? FP_S2C : FP_C2S];
        int out_dir = side == 0 ? FP_S2C : FP_C2S;
        short ev = 0;
        if (side == 1 && c->connecting) {
          ev = POLLOUT;
        } else {
          bool room = in->len < in->cap || in->cap < p->o.buf_bytes || in->off > 0;
          if (!in->eof && room) ev |= POLLIN;
          if (out->len > out->off && !held[out_dir]) ev |= POLLOUT;
        }
        owner[n] = c;
        /* A hung-up socket would report POLLHUP on every turn; a negative
         * fd makes poll skip it. */
        pf[n++] = (struct pollfd){.fd = c->hup[side] ? -1 : c->fd[side], .events = ev};
      }
    }
    int timeout = 100;
    for (int d = 0; d < 2; d++)
      if (held[d] && stall[d] - now < (uint64_t)timeout) timeout = (int)(stall[d] - now) + 1;
    int r = poll(pf, n, timeout);
    if (r < 0 && errno != EINTR) break;
    if (r <= 0) continue;
    if (pf[1].revents & POLLIN) {
      char tmp[256];
      while (read(p->wake[0], tmp, sizeof tmp) > 0) {
      }
    }
    for (size_t k = 2; k < n; k += 2) {
      fp_conn *c = owner[k];
      if (c->dead) continue;
      for (int side = 0; side < 2 && !c->dead; side++) {
        struct pollfd *q = &pf[k + (size_t)side];
        fp_buf *in = &c->b[side == 0 ? FP_C2S : FP_S2C];
        fp_buf *out = &c->b[side == 0 ? FP_S2C : FP_C2S];
        uint64_t *counter = side == 0 ? &p->st.bytes_s2c : &p->st.bytes_c2s;
        if (side == 1 && c->connecting) {
          if (!(q->revents & (POLLOUT | POLLERR | POLLHUP))) continue;
          int err = 0;
          socklen_t el = sizeof err;
          getsockopt(c->fd[1], SOL_SOCKET, SO_ERROR, &err, &el);
          if (err) {
            /* The target is down (a gateway being restarted): the client
             * sees its connection reset, as it would without a proxy. */
            c->dead = true;
            pthread_mutex_lock(&p->mu);
            p->st.refused++;
            pthread_mutex_unlock(&p->mu);
          }
          c->connecting = false;
          continue;
        }
        if (q->revents & POLLIN) {
          if (!fill(p, c->fd[side], in)) {
            c->dead = true;
            break;
          }
          if (side == 1 && c->cut_after && in->len - in->off >= 2) {
            do_cut_mid(p, c);
            break;
          }
        } else if (q->revents & POLLERR) {
          c->dead = true;
          break;
        } else if (q->revents & POLLHUP) {
          if (!fill(p, c->fd[side], in)) {
            c->dead = true;
            break;
          }
          if (in->eof) {
            c->hup[side] = true;
            /* Nothing can be written to it any more. */
            out->off = out->len = 0;
            out->eof = true;
          }
        }
        if (q->revents & POLLOUT) {
          if (!drain(p, c->fd[side], out, slice, counter)) {
            c->dead = true;
            break;
          }
        }
      }
      /* Pass a finished half on once its bytes are out. */
      for (int d = 0; d < 2 && !c->dead; d++) {
        fp_buf *b = &c->b[d];
        if (b->eof && !b->shut && b->off == b->len) {
          shutdown(c->fd[d == FP_C2S ? 1 : 0], SHUT_WR);
          b->shut = true;
        }
      }
    }
    if (pf[0].revents & POLLIN) accept_one(p);
  }
  for (size_t i = 0; i < p->n_conns; i++) conn_free(p->conns[i], true);
  p->n_conns = 0;
  free(pf);
  free(owner);
  return NULL;
}

int fp_start(const fp_options *o, fp_proxy **out) {
  *out = NULL;
  fp_proxy *p = calloc(1, sizeof *p);
  if (!p) return -1;
  p->o = *o;
  if (!p->o.max_conns) p->o.max_conns = FP_DEFAULT_CONNS;
  if (!p->o.buf_bytes) p->o.buf_bytes = FP_DEFAULT_BUF;
  p->rng = o->seed ? o->seed : 1;
  p->conns = calloc(p->o.max_conns, sizeof *p->conns);
  p->lfd = socket(AF_INET, SOCK_STREAM, 0);
  if (!p->conns || p->lfd < 0 || pipe(p->wake) != 0) goto fail;
  int one = 1;
  setsockopt(p->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof a;
  if (bind(p->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(p->lfd, 128) != 0 ||
      getsockname(p->lfd, (struct sockaddr *)&a, &al) != 0)
    goto fail;
  p->port = ntohs(a.sin_port);
  fcntl(p->lfd, F_SETFL, O_NONBLOCK);
  fcntl(p->wake[0], F_SETFL, O_NONBLOCK);
  fcntl(p->wake[1], F_SETFL, O_NONBLOCK);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  if (pthread_create(&p->th, NULL, run, p) != 0) goto fail;
  *out = p;
  return 0;
fail:
  if (p->lfd >= 0) close(p->lfd);
  free(p->conns);
  free(p);
  return -1;
}

int fp_port(const fp_proxy *p) { return p->port; }

/* Waits (bounded) until the thread has served request generation gen. */
static void wait_gen(fp_proxy *p, const uint64_t *done, uint64_t gen) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += FP_CMD_WAIT_MS / 1000;
  while (*done < gen) {
    if (pthread_cond_timedwait(&p->cv, &p->mu, &ts) != 0) break;
  }
}

int fp_cut_all(fp_proxy *p) {
  pthread_mutex_lock(&p->mu);
  p->cut_all_req = 1;
  uint64_t gen = ++p->cut_all_gen;
  wake(p);
  wait_gen(p, &p->cut_all_gen_done, gen);
  int n = p->cut_all_gen_done >= gen ? p->cut_all_done : -1;
  pthread_mutex_unlock(&p->mu);
  wake(p);
  return n;
}

int fp_cut_mid(fp_proxy *p, size_t k) {
  pthread_mutex_lock(&p->mu);
  p->cut_mid_req = true;
  p->cut_mid_k = k;
  uint64_t gen = ++p->cut_mid_gen;
  wake(p);
  wait_gen(p, &p->cut_mid_gen_done, gen);
  int r = p->cut_mid_gen_done >= gen ? p->cut_mid_result : -1;
  pthread_mutex_unlock(&p->mu);
  return r;
}

void fp_stall(fp_proxy *p, fp_dir dir, uint32_t ms) {
  pthread_mutex_lock(&p->mu);
  p->stall_until[dir] = ms ? mono_ms() + ms : 0;
  pthread_mutex_unlock(&p->mu);
  wake(p);
}

void fp_slice(fp_proxy *p, size_t n) {
  pthread_mutex_lock(&p->mu);
  p->slice = n;
  pthread_mutex_unlock(&p->mu);
  wake(p);
}

void fp_get_stats(fp_proxy *p, fp_stats *out) {
  pthread_mutex_lock(&p->mu);
  *out = p->st;
  pthread_mutex_unlock(&p->mu);
}

void fp_stop(fp_proxy *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->stop = true;
  pthread_mutex_unlock(&p->mu);
  wake(p);
  pthread_join(p->th, NULL);
  close(p->lfd);
  close(p->wake[0]);
  close(p->wake[1]);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  free(p->conns);
  free(p);
}
