/* A small HTTP/1.1 server on a libuv loop. See httpd.h for the rules it
 * enforces and for the lifetime of a request handle. */
#include "ops/httpd.h"

#include <parley/error.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <uv.h>

/* How long a connection that was answered with an error and then shut down
 * for writing keeps draining what the client still sends. Closing at once
 * could make the kernel reset the connection and destroy the answer before
 * the client read it. */
#define PHD_LINGER_MS 2000u
/* The first allocation of a connection's input buffer. */
#define PHD_IN_CHUNK 4096u

typedef struct phd_conn phd_conn;

typedef struct phd_route_entry {
  char *method;
  char *prefix;
  size_t plen;
  phd_handler handler;
  void *ud;
} phd_route_entry;

struct phd_server {
  uv_loop_t *loop;
  uv_tcp_t listener;
  phd_options opt;
  uint16_t port;
  phd_route_entry routes[PHD_MAX_ROUTES];
  size_t n_routes;
  phd_conn *conns; /* doubly linked list of open connections */
  unsigned n_conns;
  bool closing;
  bool listener_closed;
  phd_closed_cb done;
  void *done_ud;
  /* Reads on a connection that only drains land here; libuv calls read_cb
   * right after alloc_cb on the same thread, so one buffer is enough. */
  char discard[4096];
};

struct phd_conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_shutdown_t shutdown;
  phd_server *srv;
  phd_conn *prev, *next;
  char *in;         /* bytes read and not yet consumed */
  size_t in_len, in_cap, in_max;
  phd_request *pend; /* head parsed, waiting for the body */
  phd_request *req;  /* owned by a handler, waiting for the answer */
  unsigned writes_pending;
  int handles_open;  /* tcp and timer: freed when both are closed */
  bool closing;
  bool close_after_write; /* the last answer said Connection: close */
  bool lingering;         /* shut down for writing, draining input */
  bool paused;            /* reading stopped: the input buffer is full */
};

struct phd_request {
  phd_conn *conn; /* NULL once dead */
  char *mem;      /* the head (parsed in place) followed by the body */
  const char *method, *path, *query;
  phd_header *headers;
  size_t n_headers;
  uint8_t *body;
  size_t body_len;
  size_t head_len;
  int minor; /* HTTP/1.minor */
  bool keep_alive;
  bool head_only; /* HEAD served by a GET route */
  bool expect_continue;
  void *data;
};

typedef struct phd_write {
  uv_write_t w;
  phd_conn *conn;
  size_t len;
  char data[];
} phd_write;

static void conn_close(phd_conn *c);
static void conn_process(phd_conn *c);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

/* ---- small helpers ---------------------------------------------------- */

const char *phd_reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

/* RFC 9110 token characters, used for methods and header names. */
static bool is_tchar(unsigned char ch) {
  if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
      (ch >= '0' && ch <= '9'))
    return true;
  return ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static bool is_token(const char *s) {
  if (!s || !*s) return false;
  for (; *s; s++)
    if (!is_tchar((unsigned char)*s)) return false;
  return true;
}

/* Does a comma-separated header value contain this token (case-blind)? */
static bool list_has_token(const char *v, const char *tok) {
  size_t tl = strlen(tok);
  while (v && *v) {
    while (*v == ' ' || *v == '\t' || *v == ',') v++;
    const char *end = v;
    while (*end && *end != ',') end++;
    const char *e = end;
    while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
    if ((size_t)(e - v) == tl && strncasecmp(v, tok, tl) == 0) return true;
    v = end;
  }
  return false;
}

static void request_free(phd_request *r) {
  if (!r) return;
  free(r->headers);
  free(r->mem);
  free(r);
}

/* ---- writing ----------------------------------------------------------- */

static void on_shutdown(uv_shutdown_t *sh, int status) {
  (void)sh;
  (void)status;
}

static void on_timer(uv_timer_t *t);

/* After an answer with Connection: close: send FIN, then drain what the
 * client still sends for a short while before closing (see PHD_LINGER_MS). */
static void conn_start_linger(phd_conn *c) {
  c->lingering = true;
  uv_timer_stop(&c->timer);
  if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    conn_close(c);
    return;
  }
  if (c->paused) {
    c->paused = false;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  }
  uv_timer_start(&c->timer, on_timer, PHD_LINGER_MS, 0);
}

static void on_write(uv_write_t *w, int status) {
  phd_write *pw = (phd_write *)w;
  phd_conn *c = pw->conn;
  free(pw);
  c->writes_pending--;
  if (c->closing) return;
  if (status != 0) {
    conn_close(c);
    return;
  }
  if (c->writes_pending > 0) return;
  if (c->close_after_write) {
    conn_start_linger(c);
    return;
  }
  if (!c->req) {
    /* The answer is out: the idle clock runs again until the next request
     * has arrived, and a pipelined request may already be waiting. */
    uv_timer_start(&c->timer, on_timer, c->srv->opt.idle_timeout_ms, 0);
    if (c->paused) {
      c->paused = false;
      if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        conn_close(c);
        return;
      }
    }
    conn_process(c);
  }
}

/* Queues a write whose data is already in pw. Returns 0 or PARLEY_EIO, in
 * which case the connection has been closed. */
static int conn_queue(phd_conn *c, phd_write *pw) {
  pw->conn = c;
  uv_buf_t b = uv_buf_init(pw->data, (unsigned)pw->len);
  if (uv_write(&pw->w, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
    free(pw);
    conn_close(c);
    return PARLEY_EIO;
  }
  c->writes_pending++;
  return 0;
}

/* Queues a copy of bytes on the connection. */
static int conn_write(phd_conn *c, const char *data, size_t len) {
  phd_write *pw = malloc(sizeof *pw + len);
  if (!pw) {
    conn_close(c);
    return PARLEY_ENOMEM;
  }
  pw->len = len;
  memcpy(pw->data, data, len);
  return conn_queue(c, pw);
}

/* Builds a full response in one write request and queues it. */
static int conn_send_response(phd_conn *c, int status, const char *ctype,
                              const phd_header *extra, size_t n_extra,
                              const void *body, size_t len, bool keep_alive,
                              bool head_only) {
  size_t cap = 256 + (ctype ? strlen(ctype) : 0) + (head_only ? 0 : len);
  for (size_t i = 0; i < n_extra; i++)
    cap += strlen(extra[i].name) + strlen(extra[i].value) + 4;
  phd_write *pw = malloc(sizeof *pw + cap);
  if (!pw) {
    conn_close(c);
    return PARLEY_ENOMEM;
  }
  char *buf = pw->data;
  int n = snprintf(buf, cap,
                   "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\n"
                   "Cache-Control: no-store\r\nConnection: %s\r\n",
                   status, phd_reason(status), len,
                   keep_alive ? "keep-alive" : "close");
  size_t off = (size_t)n;
  if (ctype) off += (size_t)snprintf(buf + off, cap - off, "Content-Type: %s\r\n", ctype);
  for (size_t i = 0; i < n_extra; i++)
    off += (size_t)snprintf(buf + off, cap - off, "%s: %s\r\n", extra[i].name,
                            extra[i].value);
  memcpy(buf + off, "\r\n", 2);
  off += 2;
  if (!head_only && len) {
    memcpy(buf + off, body, len);
    off += len;
  }
  pw->len = off;
  if (!keep_alive) c->close_after_write = true;
  return conn_queue(c, pw);
}

/* An error found while reading a request: answer it and close, because the
 * framing of whatever follows on the connection is unknown. */
static void conn_fail(phd_conn *c, int status, const char *message) {
  char body[512];
  int n = snprintf(body, sizeof body, "%d %s: %s\n", status, phd_reason(status), message);
  if (n < 0) n = 0;
  if ((size_t)n >= sizeof body) n = (int)sizeof body - 1;
  request_free(c->pend);
  c->pend = NULL;
  c->in_len = 0;
  uv_timer_stop(&c->timer);
  conn_send_response(c, status, "text/plain; charset=utf-8", NULL, 0, body,
                     (size_t)n, false, false);
}

/* ---- parsing ----------------------------------------------------------- */

/* Splits the head (a NUL-terminated copy ending in CRLF CRLF) in place.
 * Returns 0, or an HTTP status with *msg set. */
static int parse_head(phd_server *s, phd_request *r, const char **msg) {
  char *p = r->mem;
  char *eol = strstr(p, "\r\n");
  *eol = '\0';
  /* Request line: method SP target SP version, single spaces. */
  char *sp1 = strchr(p, ' ');
  if (!sp1) return *msg = "malformed request line", 400;
  *sp1 = '\0';
  char *target = sp1 + 1;
  char *sp2 = strchr(target, ' ');
  if (!sp2) return *msg = "malformed request line", 400;
  *sp2 = '\0';
  char *version = sp2 + 1;
  if (!is_token(p)) return *msg = "invalid method", 400;
  if (target[0] != '/') return *msg = "request target must be an absolute path", 400;
  for (const char *t = target; *t; t++) {
    unsigned char ch = (unsigned char)*t;
    if (ch <= 0x20 || ch == 0x7f) return *msg = "invalid character in request target", 400;
  }
  if (strcmp(version, "HTTP/1.1") == 0) {
    r->minor = 1;
  } else if (strcmp(version, "HTTP/1.0") == 0) {
    r->minor = 0;
  } else if (strncmp(version, "HTTP/", 5) == 0) {
    return *msg = "only HTTP/1.0 and HTTP/1.1 are supported", 505;
  } else {
    return *msg = "malformed HTTP version", 400;
  }
  r->method = p;
  char *q = strchr(target, '?');
  if (q) {
    *q = '\0';
    r->query = q + 1;
  }
  r->path = target;

  /* Header fields, one per CRLF-terminated line, until the empty line. */
  r->headers = calloc(s->opt.max_headers ? s->opt.max_headers : 1, sizeof *r->headers);
  if (!r->headers) return *msg = "out of memory", 500;
  char *line = eol + 2;
  while (*line && !(line[0] == '\r' && line[1] == '\n')) {
    eol = strstr(line, "\r\n");
    *eol = '\0';
    if (line[0] == ' ' || line[0] == '\t') return *msg = "obsolete header line folding", 400;
    if (r->n_headers >= s->opt.max_headers) return *msg = "too many header fields", 431;
    char *colon = strchr(line, ':');
    if (!colon) return *msg = "header line without a colon", 400;
    *colon = '\0';
    if (!is_token(line)) return *msg = "invalid header name", 400;
    char *v = colon + 1;
    while (*v == ' ' || *v == '\t') v++;
    char *e = v + strlen(v);
    while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
    *e = '\0';
    for (const char *t = v; *t; t++) {
      unsigned char ch = (unsigned char)*t;
      if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
        return *msg = "invalid character in header value", 400;
    }
    r->headers[r->n_headers].name = line;
    r->headers[r->n_headers].value = v;
    r->n_headers++;
    line = eol + 2;
  }

  /* Framing and connection semantics. */
  bool have_len = false, have_host = false;
  uint64_t clen = 0;
  r->keep_alive = r->minor == 1;
  for (size_t i = 0; i < r->n_headers; i++) {
    const char *n = r->headers[i].name, *v = r->headers[i].value;
    if (strcasecmp(n, "Transfer-Encoding") == 0)
      return *msg = "chunked or encoded request bodies are not supported; send Content-Length", 411;
    if (strcasecmp(n, "Content-Length") == 0) {
      if (!*v || strlen(v) > 19 || strspn(v, "0123456789") != strlen(v))
        return *msg = "invalid Content-Length", 400;
      uint64_t x = strtoull(v, NULL, 10);
      if (have_len && x != clen) return *msg = "conflicting Content-Length fields", 400;
      have_len = true;
      clen = x;
    } else if (strcasecmp(n, "Host") == 0) {
      if (have_host) return *msg = "more than one Host field", 400;
      have_host = true;
    } else if (strcasecmp(n, "Connection") == 0) {
      if (list_has_token(v, "close")) r->keep_alive = false;
      else if (list_has_token(v, "keep-alive") && r->minor == 0) r->keep_alive = true;
    } else if (strcasecmp(n, "Expect") == 0) {
      if (strcasecmp(v, "100-continue") != 0) return *msg = "unsupported expectation", 417;
      r->expect_continue = true;
    }
  }
  if (r->minor == 1 && !have_host) return *msg = "missing Host header field", 400;
  if (clen > s->opt.max_body_bytes) return *msg = "request body too large", 413;
  r->body_len = (size_t)clen;
  return 0;
}

static void consume(phd_conn *c, size_t n) {
  memmove(c->in, c->in + n, c->in_len - n);
  c->in_len -= n;
}

/* Tries to read a request head from the buffer. Returns true when a head
 * was parsed into c->pend, false when more input is needed or an error was
 * answered. */
static bool take_head(phd_conn *c) {
  phd_server *s = c->srv;
  /* RFC 9112 asks servers to ignore empty lines before a request line. */
  size_t skip = 0;
  while (skip + 1 < c->in_len && c->in[skip] == '\r' && c->in[skip + 1] == '\n') skip += 2;
  if (skip) consume(c, skip);
  if (c->in_len == 0) return false;

  size_t limit = c->in_len < s->opt.max_head_bytes ? c->in_len : s->opt.max_head_bytes;
  size_t head_len = 0;
  for (size_t i = 0; i + 3 < limit; i++) {
    if (c->in[i] == '\r' && c->in[i + 1] == '\n' && c->in[i + 2] == '\r' && c->in[i + 3] == '\n') {
      head_len = i + 4;
      break;
    }
  }
  if (!head_len) {
    if (c->in_len >= s->opt.max_head_bytes) conn_fail(c, 431, "request head too large");
    else if (memchr(c->in, '\0', c->in_len)) conn_fail(c, 400, "NUL byte in request head");
    return false;
  }
  if (memchr(c->in, '\0', head_len)) {
    conn_fail(c, 400, "NUL byte in request head");
    return false;
  }

  phd_request *r = calloc(1, sizeof *r);
  if (!r) {
    conn_close(c);
    return false;
  }
  r->head_len = head_len;
  r->mem = malloc(head_len + 1);
  if (!r->mem) {
    free(r);
    conn_close(c);
    return false;
  }
  memcpy(r->mem, c->in, head_len);
  r->mem[head_len] = '\0';
  c->pend = r;
  const char *msg = NULL;
  int st = parse_head(s, r, &msg);
  if (st) {
    conn_fail(c, st, msg);
    return false;
  }
  /* The body goes after the head in the same allocation; the head's
   * strings point into it, so grow it before anyone keeps a pointer. */
  char *mem = malloc(head_len + 1 + r->body_len + 1);
  if (!mem) {
    conn_close(c);
    return false;
  }
  memcpy(mem, r->mem, head_len + 1);
  ptrdiff_t shift = mem - r->mem;
  r->method += shift;
  r->path += shift;
  if (r->query) r->query += shift;
  for (size_t i = 0; i < r->n_headers; i++) {
    r->headers[i].name += shift;
    r->headers[i].value += shift;
  }
  free(r->mem);
  r->mem = mem;
  r->body = (uint8_t *)mem + head_len + 1;
  r->body[r->body_len] = 0;
  consume(c, head_len);
  if (r->expect_continue && r->body_len > c->in_len) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (conn_write(c, cont, sizeof cont - 1) != 0) return false;
  }
  return true;
}

/* Is this route's prefix a match for the path? See httpd.h. */
static bool prefix_match(const phd_route_entry *rt, const char *path) {
  if (strncmp(path, rt->prefix, rt->plen) != 0) return false;
  char next = path[rt->plen];
  return next == '\0' || next == '/' || rt->prefix[rt->plen - 1] == '/';
}

static void dispatch(phd_conn *c, phd_request *r) {
  phd_server *s = c->srv;
  size_t best = 0;
  bool found = false;
  for (size_t i = 0; i < s->n_routes; i++) {
    if (prefix_match(&s->routes[i], r->path) && (!found || s->routes[i].plen > best)) {
      best = s->routes[i].plen;
      found = true;
    }
  }
  r->conn = c;
  c->req = r;
  if (!found) {
    char msg[160];
    snprintf(msg, sizeof msg, "404 Not Found: no resource at %.100s\n", r->path);
    phd_respond(r, 404, "text/plain; charset=utf-8", msg, strlen(msg));
    return;
  }
  const phd_route_entry *hit = NULL, *get = NULL;
  char allow[256] = "";
  for (size_t i = 0; i < s->n_routes; i++) {
    const phd_route_entry *rt = &s->routes[i];
    if (rt->plen != best || !prefix_match(rt, r->path)) continue;
    if (strcmp(rt->method, r->method) == 0) hit = rt;
    if (strcmp(rt->method, "GET") == 0) get = rt;
    if (strlen(allow) + strlen(rt->method) + 8 < sizeof allow) {
      if (allow[0]) strcat(allow, ", ");
      strcat(allow, rt->method);
    }
  }
  if (!hit && get && strcmp(r->method, "HEAD") == 0) {
    hit = get;
    r->head_only = true;
  }
  if (!hit) {
    if (get && strlen(allow) + 8 < sizeof allow) strcat(allow, ", HEAD");
    char msg[400];
    snprintf(msg, sizeof msg, "405 Method Not Allowed: %.40s is not allowed here; allowed: %s\n",
             r->method, allow);
    phd_header h = {"Allow", allow};
    phd_respond_ex(r, 405, "text/plain; charset=utf-8", &h, 1, msg, strlen(msg));
    return;
  }
  hit->handler(r, hit->ud);
}

/* Reads at most one request from the buffer and hands it to its handler.
 * The next one is read once this one's answer is written (on_write), so a
 * burst of pipelined requests never recurses. */
static void conn_process(phd_conn *c) {
  if (c->closing || c->req || c->close_after_write || c->lingering) return;
  if (!c->pend && !take_head(c)) return;
  phd_request *r = c->pend;
  if (!r || c->in_len < r->body_len) return;
  memcpy(r->body, c->in, r->body_len);
  consume(c, r->body_len);
  c->pend = NULL;
  uv_timer_stop(&c->timer);
  dispatch(c, r);
}

/* ---- connection life --------------------------------------------------- */

static void server_maybe_finish(phd_server *s) {
  if (!s->closing || !s->listener_closed || s->n_conns) return;
  phd_closed_cb done = s->done;
  void *ud = s->done_ud;
  for (size_t i = 0; i < s->n_routes; i++) {
    free(s->routes[i].method);
    free(s->routes[i].prefix);
  }
  free(s);
  if (done) done(ud);
}

static void on_conn_handle_closed(uv_handle_t *h) {
  phd_conn *c = h->data;
  if (--c->handles_open > 0) return;
  phd_server *s = c->srv;
  if (c->prev) c->prev->next = c->next;
  else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->n_conns--;
  free(c->in);
  free(c);
  server_maybe_finish(s);
}

static void conn_close(phd_conn *c) {
  if (c->closing) return;
  c->closing = true;
  if (c->req) {
    /* The handler still owns the request; it turns dead, see httpd.h. */
    c->req->conn = NULL;
    c->req = NULL;
  }
  request_free(c->pend);
  c->pend = NULL;
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
  uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

static void on_timer(uv_timer_t *t) {
  phd_conn *c = t->data;
  /* Either the idle time ran out with no complete request, or a lingering
   * connection drained long enough. Both simply close. */
  conn_close(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  phd_conn *c = h->data;
  if (c->lingering || c->close_after_write) {
    *buf = uv_buf_init(c->srv->discard, sizeof c->srv->discard);
    return;
  }
  if (c->in_cap - c->in_len < PHD_IN_CHUNK && c->in_cap < c->in_max) {
    size_t ncap = c->in_cap ? c->in_cap * 2 : PHD_IN_CHUNK;
    if (ncap > c->in_max) ncap = c->in_max;
    char *n = realloc(c->in, ncap);
    if (n) {
      c->in = n;
      c->in_cap = ncap;
    }
  }
  /* A full buffer yields a zero-length buffer; libuv then reports
   * UV_ENOBUFS and on_read decides. */
  *buf = uv_buf_init(c->in ? c->in + c->in_len : NULL, (unsigned)(c->in_cap - c->in_len));
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  phd_conn *c = st->data;
  if (c->closing) return;
  if (nread == UV_ENOBUFS) {
    /* Only possible while a handler owns a request and the client keeps
     * pipelining: stop reading until the answer is out. */
    uv_read_stop(st);
    c->paused = true;
    return;
  }
  if (nread < 0) {
    /* End of stream or an error: the client is gone, and any request its
     * handler still owns turns dead. */
    conn_close(c);
    return;
  }
  if (nread == 0) return;
  if (c->lingering || c->close_after_write) return; /* drained and dropped */
  c->in_len += (size_t)nread;
  conn_process(c);
}

static void on_connection(uv_stream_t *ls, int status) {
  phd_server *s = ls->data;
  if (status < 0 || s->closing) return;
  phd_conn *c = calloc(1, sizeof *c);
  if (!c) return;
  c->srv = s;
  c->in_max = (size_t)s->opt.max_head_bytes + s->opt.max_body_bytes;
  uv_tcp_init(s->loop, &c->tcp);
  uv_timer_init(s->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->handles_open = 2;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->n_conns++;
  if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  if (s->n_conns > 2u * s->opt.max_connections) {
    /* Far over the limit: not even an answer, so a flood costs nothing. */
    conn_close(c);
    return;
  }
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
    conn_close(c);
    return;
  }
  if (s->n_conns > s->opt.max_connections) {
    static const char msg[] = "503 Service Unavailable: too many connections\n";
    conn_send_response(c, 503, "text/plain; charset=utf-8", NULL, 0, msg,
                       sizeof msg - 1, false, false);
    return;
  }
  uv_timer_start(&c->timer, on_timer, s->opt.idle_timeout_ms, 0);
}

/* ---- public API -------------------------------------------------------- */

static int fill_options(const phd_options *in, phd_options *o) {
  *o = in ? *in : (phd_options){0};
  if (!o->host) o->host = PHD_DEFAULT_HOST;
  if (!o->max_head_bytes) o->max_head_bytes = PHD_DEFAULT_MAX_HEAD_BYTES;
  if (!o->max_headers) o->max_headers = PHD_DEFAULT_MAX_HEADERS;
  if (!o->max_body_bytes) o->max_body_bytes = PHD_DEFAULT_MAX_BODY_BYTES;
  if (!o->max_connections) o->max_connections = PHD_DEFAULT_MAX_CONNECTIONS;
  if (!o->idle_timeout_ms) o->idle_timeout_ms = PHD_DEFAULT_IDLE_TIMEOUT_MS;
  if (o->max_head_bytes > PHD_MAX_HEAD_BYTES || o->max_head_bytes < 64 ||
      o->max_headers > PHD_MAX_HEADERS || o->max_body_bytes > PHD_MAX_BODY_BYTES ||
      o->max_connections > PHD_MAX_CONNECTIONS)
    return PARLEY_EINVAL;
  return 0;
}

static void on_failed_listener_closed(uv_handle_t *h) { free(h->data); }

int phd_server_start(uv_loop_t *loop, const phd_options *opts, phd_server **out) {
  if (!loop || !out) return PARLEY_EINVAL;
  *out = NULL;
  phd_server *s = calloc(1, sizeof *s);
  if (!s) return PARLEY_ENOMEM;
  if (fill_options(opts, &s->opt) != 0) {
    free(s);
    return PARLEY_EINVAL;
  }
  s->loop = loop;
  struct sockaddr_storage ss;
  if (uv_ip4_addr(s->opt.host, s->opt.port, (struct sockaddr_in *)&ss) != 0 &&
      uv_ip6_addr(s->opt.host, s->opt.port, (struct sockaddr_in6 *)&ss) != 0) {
    free(s);
    return PARLEY_EINVAL;
  }
  s->opt.host = NULL; /* borrowed: not kept past this call */
  uv_tcp_init(loop, &s->listener);
  s->listener.data = s;
  int rc = uv_tcp_bind(&s->listener, (struct sockaddr *)&ss, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&s->listener, 128, on_connection);
  if (rc != 0) {
    /* The handle must be closed before its memory goes; the close
     * callback frees the server. */
    s->closing = true;
    uv_close((uv_handle_t *)&s->listener, on_failed_listener_closed);
    return PARLEY_EIO;
  }
  struct sockaddr_storage bound;
  int blen = sizeof bound;
  uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &blen);
  if (bound.ss_family == AF_INET)
    s->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
  else
    s->port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
  *out = s;
  return 0;
}

uint16_t phd_server_port(const phd_server *s) { return s ? s->port : 0; }

int phd_route(phd_server *s, const char *method, const char *prefix,
              phd_handler handler, void *ud) {
  if (!s || !is_token(method) || !prefix || prefix[0] != '/' || !handler || s->closing)
    return PARLEY_EINVAL;
  if (s->n_routes >= PHD_MAX_ROUTES) return PARLEY_EINVAL;
  phd_route_entry *rt = &s->routes[s->n_routes];
  rt->method = strdup(method);
  rt->prefix = strdup(prefix);
  if (!rt->method || !rt->prefix) {
    free(rt->method);
    free(rt->prefix);
    return PARLEY_ENOMEM;
  }
  rt->plen = strlen(prefix);
  rt->handler = handler;
  rt->ud = ud;
  s->n_routes++;
  return 0;
}

static void on_listener_closed(uv_handle_t *h) {
  phd_server *s = h->data;
  s->listener_closed = true;
  server_maybe_finish(s);
}

void phd_server_close(phd_server *s, phd_closed_cb done, void *ud) {
  if (!s || s->closing) return;
  s->closing = true;
  s->done = done;
  s->done_ud = ud;
  uv_close((uv_handle_t *)&s->listener, on_listener_closed);
  for (phd_conn *c = s->conns; c; c = c->next) conn_close(c);
}

const char *phd_req_method(const phd_request *r) { return r->method; }
const char *phd_req_path(const phd_request *r) { return r->path; }
const char *phd_req_query(const phd_request *r) { return r->query; }

const char *phd_req_header(const phd_request *r, const char *name) {
  for (size_t i = 0; i < r->n_headers; i++)
    if (strcasecmp(r->headers[i].name, name) == 0) return r->headers[i].value;
  return NULL;
}

const uint8_t *phd_req_body(const phd_request *r, size_t *len) {
  if (len) *len = r->body_len;
  return r->body;
}

bool phd_req_alive(const phd_request *r) { return r->conn != NULL; }
void phd_req_set_data(phd_request *r, void *data) { r->data = data; }
void *phd_req_data(const phd_request *r) { return r->data; }

static bool header_safe(const char *s) {
  return s && strpbrk(s, "\r\n") == NULL;
}

int phd_respond_ex(phd_request *r, int status, const char *content_type,
                   const phd_header *extra, size_t n_extra, const void *body,
                   size_t len) {
  if (!r) return PARLEY_EINVAL;
  phd_conn *c = r->conn;
  bool keep = r->keep_alive, head_only = r->head_only;
  request_free(r);
  if (!c) return PARLEY_EDISCONNECTED;
  c->req = NULL;
  bool ok = n_extra <= PHD_MAX_RESPONSE_HEADERS && (!content_type || header_safe(content_type)) &&
            status >= 100 && status <= 999;
  for (size_t i = 0; ok && i < n_extra; i++)
    ok = is_token(extra[i].name) && header_safe(extra[i].value);
  if (!ok) {
    static const char msg[] = "500 Internal Server Error: invalid response header\n";
    conn_send_response(c, 500, "text/plain; charset=utf-8", NULL, 0, msg, sizeof msg - 1,
                       keep, head_only);
    return PARLEY_EINVAL;
  }
  if (len && !body) len = 0;
  return conn_send_response(c, status, content_type, extra, n_extra, body, len, keep,
                            head_only);
}

int phd_respond(phd_request *r, int status, const char *content_type,
                const void *body, size_t len) {
  return phd_respond_ex(r, status, content_type, NULL, 0, body, len);
}
