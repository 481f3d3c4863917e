/* Harness for the ops HTTP tests; see opsh.h. */
#include "opsh.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

typedef struct oh_thread {
  oh_env *e;
  oh_script script;
} oh_thread;

static pthread_mutex_t fail_lock = PTHREAD_MUTEX_INITIALIZER;

void oh_failf(oh_env *e, const char *file, int line, const char *fmt, ...) {
  pthread_mutex_lock(&fail_lock);
  if (!e->fail[0]) {
    int n = snprintf(e->fail, sizeof e->fail, "%s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->fail + n, sizeof e->fail - (size_t)n, fmt, ap);
    va_end(ap);
  }
  pthread_mutex_unlock(&fail_lock);
}

static void on_stop(uv_async_t *a) { uv_stop(a->loop); }

static void on_guard(uv_timer_t *t) {
  oh_env *e = t->data;
  e->timed_out = true;
  uv_stop(t->loop);
}

void oh_init(oh_env *e) {
  memset(e, 0, sizeof *e);
  uv_loop_init(&e->loop);
}

static void *thread_main(void *arg) {
  oh_thread *t = arg;
  t->script(t->e);
  uv_async_send(&t->e->stop);
  return NULL;
}

void oh_run(oh_env *e, oh_script script, int guard_ms) {
  uv_async_init(&e->loop, &e->stop, on_stop);
  uv_timer_init(&e->loop, &e->guard);
  e->guard.data = e;
  uv_timer_start(&e->guard, on_guard, (uint64_t)guard_ms, 0);
  oh_thread t = {e, script};
  pthread_t th;
  pthread_create(&th, NULL, thread_main, &t);
  uv_run(&e->loop, UV_RUN_DEFAULT);
  pthread_join(th, NULL);
  uv_close((uv_handle_t *)&e->stop, NULL);
  uv_close((uv_handle_t *)&e->guard, NULL);
}

int oh_finish(oh_env *e) {
  /* Bounded: every handle left must close within a few turns. */
  for (int i = 0; i < 1000 && uv_loop_alive(&e->loop); i++) uv_run(&e->loop, UV_RUN_ONCE);
  return uv_loop_close(&e->loop);
}

uint64_t oh_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void oh_sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

int oh_connect(oh_conn *c, uint16_t port) {
  c->len = 0;
  c->fd = socket(AF_INET, SOCK_STREAM, 0);
  if (c->fd < 0) return -1;
  struct timeval tv = {5, 0};
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    close(c->fd);
    c->fd = -1;
    return -1;
  }
  return 0;
}

int oh_send(oh_conn *c, const char *data, size_t len) {
  while (len) {
    ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    data += n;
    len -= (size_t)n;
  }
  return 0;
}

int oh_sends(oh_conn *c, const char *s) { return oh_send(c, s, strlen(s)); }

static int fill(oh_conn *c) {
  if (c->len >= sizeof c->buf) return -1;
  ssize_t n;
  do {
    n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return -1;
  c->len += (size_t)n;
  return 0;
}

const char *oh_header(const oh_resp *r, const char *name, char *out, size_t size) {
  size_t nl = strlen(name);
  const char *p = strstr(r->head, "\r\n");
  while (p && p[2]) {
    p += 2;
    if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
      const char *v = p + nl + 1;
      while (*v == ' ') v++;
      const char *e = strstr(v, "\r\n");
      size_t n = e ? (size_t)(e - v) : strlen(v);
      if (n >= size) n = size - 1;
      memcpy(out, v, n);
      out[n] = '\0';
      return out;
    }
    p = strstr(p, "\r\n");
  }
  return NULL;
}

static char *find_head_end(oh_conn *c) {
  for (size_t i = 0; i + 3 < c->len; i++)
    if (memcmp(c->buf + i, "\r\n\r\n", 4) == 0) return c->buf + i;
  return NULL;
}

int oh_read_ex(oh_conn *c, oh_resp *r, bool no_body) {
  memset(r, 0, sizeof *r);
  char *end;
  for (;;) {
    end = find_head_end(c);
    if (end) break;
    if (fill(c) != 0) return -1;
  }
  size_t hl = (size_t)(end - c->buf) + 4;
  if (hl >= sizeof r->head) return -1;
  memcpy(r->head, c->buf, hl);
  r->head[hl] = '\0';
  if (sscanf(r->head, "HTTP/1.1 %d", &r->status) != 1) return -1;
  char v[32];
  size_t blen = oh_header(r, "Content-Length", v, sizeof v) ? strtoul(v, NULL, 10) : 0;
  if (no_body) blen = 0;
  memmove(c->buf, c->buf + hl, c->len - hl);
  c->len -= hl;
  while (c->len < blen)
    if (fill(c) != 0) return -1;
  r->body = malloc(blen + 1);
  memcpy(r->body, c->buf, blen);
  r->body[blen] = '\0';
  r->body_len = blen;
  memmove(c->buf, c->buf + blen, c->len - blen);
  c->len -= blen;
  return 0;
}

int oh_read(oh_conn *c, oh_resp *r) { return oh_read_ex(c, r, false); }

bool oh_wait_eof(oh_conn *c, int timeout_ms) {
  uint64_t end = oh_now_ms() + (uint64_t)timeout_ms;
  struct timeval tv = {0, 100 * 1000};
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  bool eof = false;
  while (oh_now_ms() < end) {
    char tmp[4096];
    ssize_t n = recv(c->fd, tmp, sizeof tmp, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      eof = true;
      break;
    }
  }
  struct timeval back = {5, 0};
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &back, sizeof back);
  return eof;
}

void oh_close(oh_conn *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
}

void oh_resp_free(oh_resp *r) {
  free(r->body);
  r->body = NULL;
}

int oh_request(uint16_t port, const char *raw, oh_resp *r) {
  oh_conn *c = malloc(sizeof *c);
  if (!c) return -1;
  int rc = oh_connect(c, port);
  if (rc == 0) rc = oh_sends(c, raw);
  if (rc == 0) rc = oh_read(c, r);
  oh_close(c);
  free(c);
  return rc;
}
