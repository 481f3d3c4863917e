/* HTTP client: libcurl's multi socket interface driven by a libuv loop.
 *
 * curl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION, one
 * uv_poll per socket) and when to wake it up (CURLMOPT_TIMERFUNCTION, one
 * uv_timer); the loop calls curl_multi_socket_action when either fires and
 * then collects finished transfers. Nothing here waits: name resolution
 * runs on curl's resolver threads.
 *
 * The security checks live in three places: the URL's scheme and host are
 * checked before a transfer starts, each resolved address is checked in
 * the open-socket callback before connect(), and the write and header
 * callbacks enforce the size limits. See http.h for the rules.
 */
#include "http/http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>
#include <uv.h>

#include <parley/error.h>

typedef struct ph_sock {
  uv_poll_t poll;
  curl_socket_t fd;
  ph_client *client;
  struct ph_sock *prev, *next;
} ph_sock;

typedef struct ph_req {
  ph_client *client;
  uint64_t id;
  CURL *easy;
  CURLU *url;
  struct curl_slist *headers;
  ph_done_cb cb;
  void *ud;
  bool allow_private;
  size_t max_body;
  char *body; /* response body, NUL-terminated, at most max_body bytes */
  size_t body_len, body_cap;
  /* Response headers: "name\0value\0" pairs in one bounded arena, with
   * offsets (not pointers, since the arena moves when it grows). */
  char *hdr_buf;
  size_t hdr_len, hdr_cap;
  size_t hdr_off[PH_MAX_RESPONSE_HEADERS][2];
  size_t n_hdr;
  bool body_too_big, hdr_too_big, denied;
  char denied_msg[160];
  char errbuf[CURL_ERROR_SIZE];
  struct ph_req *prev, *next;
} ph_req;

struct ph_client {
  uv_loop_t *loop;
  CURLM *multi;
  uv_timer_t timer;
  ph_req *reqs;
  size_t n_reqs;
  ph_sock *socks;
  uint64_t next_id;
  bool closing;
  char last_error[256];
};

/* ---- address and host policy ------------------------------------------- */

static int deny(char *why, size_t n, const char *addr, const char *reason) {
  if (why && n)
    snprintf(why, n, "address %s refused: %s", addr, reason);
  return PARLEY_EDENIED;
}

static int check_v4(uint32_t a, bool allow_private, const char *text,
                    char *why, size_t n) {
  /* Always refused: no legitimate bot talks to these, and they are how
   * server-side request forgery reaches cloud credentials. */
  if (a == 0xA9FEA9FEu) /* 169.254.169.254 */
    return deny(why, n, text, "cloud metadata address");
  if ((a >> 16) == 0xA9FEu) /* 169.254.0.0/16 */
    return deny(why, n, text, "link-local address");
  if ((a >> 24) == 0) /* 0.0.0.0/8 reaches the local host on Linux */
    return deny(why, n, text, "unspecified address");
  if ((a >> 28) == 0xE) /* 224.0.0.0/4 */
    return deny(why, n, text, "multicast address");
  if ((a >> 28) == 0xF) /* 240.0.0.0/4 and broadcast */
    return deny(why, n, text, "reserved address");
  if (allow_private)
    return 0;
  if ((a >> 24) == 127)
    return deny(why, n, text, "loopback address (allow_private is off)");
  if ((a >> 24) == 10 || (a >> 20) == 0xAC1u /* 172.16/12 */ ||
      (a >> 16) == 0xC0A8u /* 192.168/16 */ ||
      (a >> 22) == (100u << 2 | 1u) /* 100.64/10 */ ||
      (a >> 17) == (0xC612u >> 1) /* 198.18/15 */ ||
      (a >> 8) == 0xC00000u /* 192.0.0/24 */)
    return deny(why, n, text, "private address (allow_private is off)");
  return 0;
}

static uint32_t v4_at(const uint8_t *b) {
  return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 |
         (uint32_t)b[3];
}

static int check_v6(const uint8_t *b, bool allow_private, const char *text,
                    char *why, size_t n) {
  static const uint8_t metadata[16] = {0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0,    0,
                                       0,    0,    0,    0,    0, 0, 0x02, 0x54};
  static const uint8_t zero12[12] = {0};
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
  /* Addresses that embed an IPv4 address are judged by it, so that
   * ::ffff:169.254.169.254 is no way around the IPv4 rules. */
  if (!memcmp(b, mapped, 12) || !memcmp(b, nat64, 12))
    return check_v4(v4_at(b + 12), allow_private, text, why, n);
  if (!memcmp(b, zero12, 12)) {
    uint32_t low = v4_at(b + 12);
    if (low == 0)
      return deny(why, n, text, "unspecified address");
    if (low == 1)
      return allow_private ? 0
                           : deny(why, n, text,
                                  "loopback address (allow_private is off)");
    return check_v4(low, allow_private, text, why, n); /* IPv4-compatible */
  }
  if (b[0] == 0x20 && b[1] == 0x02) /* 6to4 2002::/16 */
    return check_v4(v4_at(b + 2), allow_private, text, why, n);
  if (!memcmp(b, metadata, 16))
    return deny(why, n, text, "cloud metadata address");
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) /* fe80::/10 */
    return deny(why, n, text, "link-local address");
  if (b[0] == 0xff)
    return deny(why, n, text, "multicast address");
  if (allow_private)
    return 0;
  if ((b[0] & 0xfe) == 0xfc || (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0))
    return deny(why, n, text, "private address (allow_private is off)");
  return 0;
}

int ph_addr_check(const struct sockaddr *sa, bool allow_private, char *why,
                  size_t why_size) {
  char text[INET6_ADDRSTRLEN] = "?";
  if (why && why_size)
    why[0] = '\0';
  if (!sa)
    return deny(why, why_size, text, "no address");
  if (sa->sa_family == AF_INET) {
    struct sockaddr_in sin;
    memcpy(&sin, sa, sizeof sin);
    inet_ntop(AF_INET, &sin.sin_addr, text, sizeof text);
    return check_v4(ntohl(sin.sin_addr.s_addr), allow_private, text, why,
                    why_size);
  }
  if (sa->sa_family == AF_INET6) {
    struct sockaddr_in6 sin6;
    memcpy(&sin6, sa, sizeof sin6);
    inet_ntop(AF_INET6, &sin6.sin6_addr, text, sizeof text);
    return check_v6(sin6.sin6_addr.s6_addr, allow_private, text, why,
                    why_size);
  }
  return deny(why, why_size, text, "not an internet address");
}

static bool ieq_n(const char *a, const char *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (tolower((unsigned char)a[i]) != tolower((unsigned char)b[i]))
      return false;
  return true;
}

/* Strips "[...]" around an IPv6 literal and one trailing dot from a name;
 * returns the length of what remains from *s. */
static size_t host_trim(const char **s) {
  const char *h = *s;
  size_t n = strlen(h);
  if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
    h++;
    n -= 2;
  }
  if (n > 1 && h[n - 1] == '.')
    n--;
  *s = h;
  return n;
}

/* Parses an IP literal into bin (16 bytes); returns the family or 0. */
static int ip_literal(const char *s, size_t n, uint8_t bin[16]) {
  char tmp[64];
  if (n == 0 || n >= sizeof tmp)
    return 0;
  memcpy(tmp, s, n);
  tmp[n] = '\0';
  if (inet_pton(AF_INET, tmp, bin) == 1)
    return AF_INET;
  if (inet_pton(AF_INET6, tmp, bin) == 1)
    return AF_INET6;
  return 0;
}

bool ph_host_allowed(const char *host, const char *const *allow_hosts,
                     size_t n_allow_hosts) {
  if (!host || !allow_hosts)
    return false;
  size_t hn = host_trim(&host);
  if (hn == 0)
    return false;
  uint8_t hbin[16], pbin[16];
  int hfam = ip_literal(host, hn, hbin);
  for (size_t i = 0; i < n_allow_hosts; i++) {
    const char *p = allow_hosts[i];
    if (!p)
      continue;
    size_t pn = host_trim(&p);
    if (pn >= 2 && p[0] == '*' && p[1] == '.') {
      /* "*.example.com" covers names below example.com. IP literals never
       * match a wildcard: "*.0.0.1" is not a way to allow 127.0.0.1. */
      size_t sn = pn - 1; /* ".example.com" */
      if (!hfam && sn > 1 && hn > sn && ieq_n(host + hn - sn, p + 1, sn))
        return true;
      continue;
    }
    if (hfam) {
      /* Compare IP literals in binary so "::1" matches "0:0::1". */
      if (ip_literal(p, pn, pbin) == hfam &&
          !memcmp(hbin, pbin, hfam == AF_INET ? 4 : 16))
        return true;
      continue;
    }
    if (pn == hn && ieq_n(host, p, hn))
      return true;
  }
  return false;
}

/* ---- requests ---------------------------------------------------------- */

static void req_unlink(ph_req *r) {
  ph_client *c = r->client;
  if (r->prev)
    r->prev->next = r->next;
  else if (c->reqs == r)
    c->reqs = r->next;
  if (r->next)
    r->next->prev = r->prev;
  r->prev = r->next = NULL;
  c->n_reqs--;
}

static void req_free(ph_req *r) {
  if (!r)
    return;
  if (r->easy)
    curl_easy_cleanup(r->easy);
  if (r->url)
    curl_url_cleanup(r->url);
  curl_slist_free_all(r->headers);
  free(r->body);
  free(r->hdr_buf);
  free(r);
}

/* Grows *buf to hold need bytes, doubling up to limit. */
static bool grow(char **buf, size_t *cap, size_t need, size_t limit) {
  if (need <= *cap)
    return true;
  if (need > limit)
    return false;
  size_t ncap = *cap ? *cap : 1024;
  while (ncap < need)
    ncap = ncap > limit / 2 ? limit : ncap * 2;
  char *nb = realloc(*buf, ncap);
  if (!nb)
    return false;
  *buf = nb;
  *cap = ncap;
  return true;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *ud) {
  ph_req *r = ud;
  size_t n = size * nmemb;
  if (n > r->max_body - r->body_len) {
    /* Returning short makes curl abort with CURLE_WRITE_ERROR; the flag
     * turns that into PARLEY_ETOOBIG. */
    r->body_too_big = true;
    return 0;
  }
  if (!grow(&r->body, &r->body_cap, r->body_len + n + 1, r->max_body + 1))
    return 0;
  memcpy(r->body + r->body_len, data, n);
  r->body_len += n;
  r->body[r->body_len] = '\0';
  return n;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *ud) {
  ph_req *r = ud;
  size_t n = size * nmemb, len = n;
  /* A status line starts a new response (after 100 Continue, say): only
   * the final response's headers are reported. */
  if (len >= 5 && !memcmp(data, "HTTP/", 5)) {
    r->n_hdr = 0;
    r->hdr_len = 0;
    return n;
  }
  while (len > 0 && (data[len - 1] == '\r' || data[len - 1] == '\n'))
    len--;
  if (len == 0 || data[0] == ' ' || data[0] == '\t')
    return n; /* end of headers, or an obsolete folded line */
  const char *colon = memchr(data, ':', len);
  if (!colon)
    return n;
  size_t nlen = (size_t)(colon - data);
  const char *v = colon + 1;
  const char *end = data + len;
  while (v < end && (*v == ' ' || *v == '\t'))
    v++;
  size_t vlen = (size_t)(end - v);
  size_t need = r->hdr_len + nlen + vlen + 2;
  if (r->n_hdr >= PH_MAX_RESPONSE_HEADERS ||
      !grow(&r->hdr_buf, &r->hdr_cap, need, PH_MAX_RESPONSE_HEADER_BYTES)) {
    r->hdr_too_big = true;
    return 0;
  }
  char *dst = r->hdr_buf + r->hdr_len;
  memcpy(dst, data, nlen);
  dst[nlen] = '\0';
  memcpy(dst + nlen + 1, v, vlen);
  dst[nlen + 1 + vlen] = '\0';
  r->hdr_off[r->n_hdr][0] = r->hdr_len;
  r->hdr_off[r->n_hdr][1] = r->hdr_len + nlen + 1;
  r->n_hdr++;
  r->hdr_len = need;
  return n;
}

static curl_socket_t on_opensocket(void *clientp, curlsocktype purpose,
                                   struct curl_sockaddr *addr) {
  ph_req *r = clientp;
  char why[sizeof r->denied_msg];
  if (purpose != CURLSOCKTYPE_IPCXN) {
    snprintf(r->denied_msg, sizeof r->denied_msg, "unexpected socket type");
    r->denied = true;
    return CURL_SOCKET_BAD;
  }
  if (ph_addr_check(&addr->addr, r->allow_private, why, sizeof why) != 0) {
    /* Refusing here, before connect(), means no packet ever reaches the
     * forbidden address. curl tries the next address, if any. */
    memcpy(r->denied_msg, why, sizeof why);
    r->denied = true;
    return CURL_SOCKET_BAD;
  }
  return socket(addr->family, addr->socktype | SOCK_CLOEXEC, addr->protocol);
}

static void sock_closed_cb(uv_handle_t *h) { free(h->data); }

static void sock_close(ph_client *c, ph_sock *s) {
  if (s->prev)
    s->prev->next = s->next;
  else if (c->socks == s)
    c->socks = s->next;
  if (s->next)
    s->next->prev = s->prev;
  s->prev = s->next = NULL;
  uv_poll_stop(&s->poll);
  uv_close((uv_handle_t *)&s->poll, sock_closed_cb);
}

/* curl normally reports CURL_POLL_REMOVE before closing a socket; this is
 * the safety net that guarantees no uv_poll outlives its descriptor. */
static int on_closesocket(void *clientp, curl_socket_t fd) {
  ph_client *c = clientp;
  for (ph_sock *s = c->socks; s; s = s->next) {
    if (s->fd == fd) {
      if (c->multi)
        curl_multi_assign(c->multi, fd, NULL);
      sock_close(c, s);
      break;
    }
  }
  return close(fd);
}

static int map_error(ph_req *r, CURLcode rc, const char **msg) {
  if (r->body_too_big || rc == CURLE_FILESIZE_EXCEEDED) {
    *msg = "response body larger than max_response_bytes";
    return PARLEY_ETOOBIG;
  }
  if (r->hdr_too_big) {
    *msg = "response headers over their limit";
    return PARLEY_ETOOBIG;
  }
  if (r->denied) {
    *msg = r->denied_msg;
    return PARLEY_EDENIED;
  }
  *msg = r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc);
  switch (rc) {
  case CURLE_OPERATION_TIMEDOUT:
    return PARLEY_ETIMEOUT;
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
    return PARLEY_ETLS;
  case CURLE_OUT_OF_MEMORY:
    return PARLEY_ENOMEM;
  case CURLE_UNSUPPORTED_PROTOCOL:
    return PARLEY_EDENIED;
  default:
    return PARLEY_EHTTP;
  }
}

/* Reports r's outcome and frees it. The request is already detached from
 * the client and from curl, so the callback may do anything, including
 * cancelling other requests or freeing the client. */
static void req_finish(ph_req *r, int status, const char *error,
                       CURLcode rc) {
  ph_header hv[PH_MAX_RESPONSE_HEADERS];
  ph_response resp = {.status = status, .error = error, .body = ""};
  if (r->easy) {
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &resp.http_status);
    curl_off_t us = 0;
    if (curl_easy_getinfo(r->easy, CURLINFO_TOTAL_TIME_T, &us) == CURLE_OK)
      resp.total_ms = (double)us / 1000.0;
  }
  if (status == 0 && rc == CURLE_OK) {
    if (r->body)
      resp.body = r->body;
    resp.body_len = r->body_len;
    for (size_t i = 0; i < r->n_hdr; i++) {
      hv[i].name = r->hdr_buf + r->hdr_off[i][0];
      hv[i].value = r->hdr_buf + r->hdr_off[i][1];
    }
    resp.headers = hv;
    resp.n_headers = r->n_hdr;
  }
  if (r->cb)
    r->cb(&resp, r->ud);
  req_free(r);
}

static void check_done(ph_client *c) {
  CURLMsg *m;
  int left;
  while (!c->closing && (m = curl_multi_info_read(c->multi, &left))) {
    if (m->msg != CURLMSG_DONE)
      continue;
    /* The message is invalid once the handle is removed: copy it first. */
    CURL *easy = m->easy_handle;
    CURLcode rc = m->data.result;
    char *priv = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
    ph_req *r = (ph_req *)(void *)priv;
    curl_multi_remove_handle(c->multi, easy);
    req_unlink(r);
    const char *msg = NULL;
    int status = rc == CURLE_OK && !r->body_too_big && !r->hdr_too_big
                     ? 0
                     : map_error(r, rc, &msg);
    req_finish(r, status, msg, rc);
  }
}

static void on_poll(uv_poll_t *h, int status, int events) {
  ph_sock *s = h->data;
  ph_client *c = s->client;
  int flags = 0;
  if (status < 0)
    flags = CURL_CSELECT_ERR;
  else {
    if (events & UV_READABLE)
      flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
      flags |= CURL_CSELECT_OUT;
  }
  if (!c->multi)
    return;
  int running;
  curl_multi_socket_action(c->multi, s->fd, flags, &running);
  check_done(c);
}

static void on_uv_timer(uv_timer_t *t) {
  ph_client *c = t->data;
  if (!c->multi)
    return;
  int running;
  curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(c);
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp,
                          void *socketp) {
  ph_client *c = userp;
  ph_sock *s = socketp;
  if (what == CURL_POLL_REMOVE) {
    if (s)
      sock_close(c, s);
    return 0;
  }
  if (!s) {
    s = calloc(1, sizeof *s);
    if (!s)
      return -1;
    if (uv_poll_init_socket(c->loop, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    s->fd = fd;
    s->client = c;
    s->poll.data = s;
    s->next = c->socks;
    if (c->socks)
      c->socks->prev = s;
    c->socks = s;
    curl_multi_assign(c->multi, fd, s);
  }
  int ev = 0;
  if (what & CURL_POLL_IN)
    ev |= UV_READABLE;
  if (what & CURL_POLL_OUT)
    ev |= UV_WRITABLE;
  return uv_poll_start(&s->poll, ev, on_poll) == 0 ? 0 : -1;
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp) {
  ph_client *c = userp;
  if (timeout_ms < 0)
    uv_timer_stop(&c->timer);
  else
    /* A 0 timeout still goes through the loop: curl forbids calling
     * socket_action from inside this callback. */
    uv_timer_start(&c->timer, on_uv_timer, (uint64_t)timeout_ms, 0);
  return 0;
}

/* ---- client ------------------------------------------------------------ */

static uv_once_t g_curl_once = UV_ONCE_INIT;
static CURLcode g_curl_init_rc = CURLE_FAILED_INIT;

static void curl_init_once(void) {
  g_curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int ph_client_new(struct uv_loop_s *loop, ph_client **out) {
  if (!loop || !out)
    return PARLEY_EINVAL;
  *out = NULL;
  uv_once(&g_curl_once, curl_init_once);
  if (g_curl_init_rc != CURLE_OK)
    return PARLEY_EINTERNAL;
  ph_client *c = calloc(1, sizeof *c);
  if (!c)
    return PARLEY_ENOMEM;
  c->loop = loop;
  c->next_id = 1;
  c->multi = curl_multi_init();
  if (!c->multi) {
    free(c);
    return PARLEY_ENOMEM;
  }
  if (uv_timer_init(loop, &c->timer) != 0) {
    curl_multi_cleanup(c->multi);
    free(c);
    return PARLEY_EINTERNAL;
  }
  c->timer.data = c;
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
  curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
  curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
  /* No HTTP/2 multiplexing: a request must never ride on a connection that
   * another request opened under a looser address policy. */
  curl_multi_setopt(c->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING);
  *out = c;
  return 0;
}

static void client_closed_cb(uv_handle_t *h) { free(h->data); }

void ph_client_free(ph_client *c) {
  if (!c || c->closing)
    return;
  c->closing = true;
  while (c->reqs) {
    ph_req *r = c->reqs;
    curl_multi_remove_handle(c->multi, r->easy);
    req_unlink(r);
    req_finish(r, PARLEY_ESHUTDOWN, "HTTP client shut down", CURLE_OK);
  }
  curl_multi_cleanup(c->multi);
  c->multi = NULL;
  while (c->socks)
    sock_close(c, c->socks);
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, client_closed_cb);
}

const char *ph_client_last_error(const ph_client *c) {
  return c ? c->last_error : "";
}

size_t ph_client_pending(const ph_client *c) { return c ? c->n_reqs : 0; }

static int fail(ph_client *c, int status, const char *fmt, const char *arg) {
  snprintf(c->last_error, sizeof c->last_error, fmt, arg ? arg : "");
  return status;
}

static bool valid_method(const char *m) {
  size_t n = strlen(m);
  if (n == 0 || n > 16)
    return false;
  for (size_t i = 0; i < n; i++)
    if (m[i] < 'A' || m[i] > 'Z')
      return false;
  return true;
}

/* Header names are HTTP tokens; values may not contain CR, LF or NUL, which
 * would let a value inject further headers. */
static bool valid_header(const ph_header *h) {
  if (!h->name || !h->value || !h->name[0])
    return false;
  for (const char *p = h->name; *p; p++) {
    unsigned char ch = (unsigned char)*p;
    if (ch <= 32 || ch >= 127 || ch == ':')
      return false;
  }
  for (const char *p = h->value; *p; p++)
    if (*p == '\r' || *p == '\n')
      return false;
  return true;
}

static int build_headers(ph_client *c, ph_req *r, const ph_request *req) {
  if (req->n_headers > PH_MAX_REQUEST_HEADERS)
    return fail(c, PARLEY_ETOOBIG, "too many request headers%s", NULL);
  if (req->n_headers && !req->headers)
    return fail(c, PARLEY_EINVAL, "headers is NULL%s", NULL);
  /* "Expect:" turns off curl's 100-continue wait on larger bodies, which
   * would add a second of latency against servers that ignore it. */
  struct curl_slist *l = curl_slist_append(NULL, "Expect:");
  if (!l)
    return fail(c, PARLEY_ENOMEM, "out of memory%s", NULL);
  r->headers = l;
  for (size_t i = 0; i < req->n_headers; i++) {
    const ph_header *h = &req->headers[i];
    if (!valid_header(h))
      return fail(c, PARLEY_EINVAL, "invalid request header '%.64s'",
                  h->name ? h->name : "(null)");
    size_t nl = strlen(h->name), vl = strlen(h->value);
    if (nl + vl > 8192)
      return fail(c, PARLEY_ETOOBIG, "request header '%.64s' too long",
                  h->name);
    char *line = malloc(nl + vl + 3); /* "Name: value" and its NUL */
    if (!line)
      return fail(c, PARLEY_ENOMEM, "out of memory%s", NULL);
    /* curl sends "Name;" as a header with an empty value; "Name:" would
     * remove the header instead. Lengths are known, so copy rather than
     * format. */
    memcpy(line, h->name, nl);
    if (vl) {
      memcpy(line + nl, ": ", 2);
      memcpy(line + nl + 2, h->value, vl + 1);
    } else {
      memcpy(line + nl, ";", 2);
    }
    l = curl_slist_append(r->headers, line);
    free(line);
    if (!l)
      return fail(c, PARLEY_ENOMEM, "out of memory%s", NULL);
    r->headers = l;
  }
  return 0;
}

/* Parses the URL and applies the scheme and host rules. */
static int check_url(ph_client *c, ph_req *r, const ph_request *req) {
  r->url = curl_url();
  if (!r->url)
    return fail(c, PARLEY_ENOMEM, "out of memory%s", NULL);
  if (curl_url_set(r->url, CURLUPART_URL, req->url, 0) != CURLUE_OK)
    return fail(c, PARLEY_EINVAL, "invalid URL '%.200s'", req->url);
  char *scheme = NULL, *host = NULL;
  int rc = 0;
  if (curl_url_get(r->url, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(r->url, CURLUPART_HOST, &host, 0) != CURLUE_OK)
    rc = fail(c, PARLEY_EINVAL, "URL without scheme or host: '%.200s'",
              req->url);
  else if (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)
    rc = fail(c, PARLEY_EDENIED, "scheme '%.32s' not allowed (http and https only)",
              scheme);
  else if (!ph_host_allowed(host, req->allow_hosts, req->n_allow_hosts))
    rc = fail(c, PARLEY_EDENIED, "host '%.200s' is not in allow_hosts", host);
  curl_free(scheme);
  curl_free(host);
  return rc;
}

static int setup_easy(ph_client *c, ph_req *r, const ph_request *req) {
  CURL *e = r->easy;
  uint32_t timeout = req->timeout_ms ? req->timeout_ms : PH_DEFAULT_TIMEOUT_MS;
  uint32_t connect =
      req->connect_timeout_ms ? req->connect_timeout_ms : PH_DEFAULT_CONNECT_TIMEOUT_MS;
  if (connect > timeout)
    connect = timeout;
  const char *method = req->method ? req->method : "GET";
  CURLcode rc = CURLE_OK;
#define SET(opt, val)                          \
  do {                                         \
    if (rc == CURLE_OK)                        \
      rc = curl_easy_setopt(e, opt, val);      \
  } while (0)
  SET(CURLOPT_CURLU, r->url);
  SET(CURLOPT_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_FOLLOWLOCATION, 0L);
  SET(CURLOPT_PROXY, ""); /* ignore http_proxy and friends */
  SET(CURLOPT_NOSIGNAL, 1L);
  SET(CURLOPT_TIMEOUT_MS, (long)timeout);
  SET(CURLOPT_CONNECTTIMEOUT_MS, (long)connect);
  SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->max_body);
  SET(CURLOPT_WRITEFUNCTION, on_write);
  SET(CURLOPT_WRITEDATA, r);
  SET(CURLOPT_HEADERFUNCTION, on_header);
  SET(CURLOPT_HEADERDATA, r);
  SET(CURLOPT_OPENSOCKETFUNCTION, on_opensocket);
  SET(CURLOPT_OPENSOCKETDATA, r);
  SET(CURLOPT_CLOSESOCKETFUNCTION, on_closesocket);
  SET(CURLOPT_CLOSESOCKETDATA, c);
  SET(CURLOPT_ERRORBUFFER, r->errbuf);
  SET(CURLOPT_PRIVATE, (void *)r);
  SET(CURLOPT_HTTPHEADER, r->headers);
  SET(CURLOPT_USERAGENT, "parley-http");
  /* A connection that may point at a private address is closed after use
   * so that no later request, under a stricter policy, reuses it. */
  SET(CURLOPT_FORBID_REUSE, req->allow_private ? 1L : 0L);
  bool is_post = !strcmp(method, "POST");
  if (req->body_len > 0 || is_post) {
    SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
    SET(CURLOPT_COPYPOSTFIELDS, req->body_len ? req->body : "");
    if (!is_post)
      SET(CURLOPT_CUSTOMREQUEST, method);
  } else if (!strcmp(method, "HEAD")) {
    SET(CURLOPT_NOBODY, 1L);
  } else if (strcmp(method, "GET") != 0) {
    SET(CURLOPT_CUSTOMREQUEST, method);
  }
#undef SET
  if (rc != CURLE_OK)
    return fail(c, rc == CURLE_OUT_OF_MEMORY ? PARLEY_ENOMEM : PARLEY_EINTERNAL,
                "curl option refused: %s", curl_easy_strerror(rc));
  return 0;
}

int ph_request_start(ph_client *c, const ph_request *req, ph_done_cb cb,
                     void *ud, uint64_t *id_out) {
  if (!c)
    return PARLEY_EINVAL;
  c->last_error[0] = '\0';
  if (c->closing)
    return fail(c, PARLEY_ESHUTDOWN, "HTTP client is shutting down%s", NULL);
  if (!req || !req->url || !cb)
    return fail(c, PARLEY_EINVAL, "request, url and callback are required%s",
                NULL);
  if (c->n_reqs >= PH_MAX_IN_FLIGHT)
    return fail(c, PARLEY_EBACKPRESSURE, "too many requests in flight%s", NULL);
  if (req->method && !valid_method(req->method))
    return fail(c, PARLEY_EINVAL, "invalid method '%.32s'", req->method);
  if (req->body_len > PH_MAX_REQUEST_BODY)
    return fail(c, PARLEY_ETOOBIG, "request body too large%s", NULL);
  if (req->body_len && !req->body)
    return fail(c, PARLEY_EINVAL, "body is NULL with a non-zero body_len%s",
                NULL);
  ph_req *r = calloc(1, sizeof *r);
  if (!r)
    return fail(c, PARLEY_ENOMEM, "out of memory%s", NULL);
  r->client = c;
  r->cb = cb;
  r->ud = ud;
  r->allow_private = req->allow_private;
  r->max_body =
      req->max_response_bytes ? req->max_response_bytes : PH_DEFAULT_MAX_RESPONSE_BYTES;
  if (r->max_body > PH_MAX_RESPONSE_BYTES)
    r->max_body = PH_MAX_RESPONSE_BYTES; /* keeps max_body + 1 from wrapping */
  int rc = check_url(c, r, req);
  if (rc == 0)
    rc = build_headers(c, r, req);
  if (rc == 0 && !(r->easy = curl_easy_init()))
    rc = fail(c, PARLEY_ENOMEM, "out of memory%s", NULL);
  if (rc == 0)
    rc = setup_easy(c, r, req);
  if (rc == 0 && curl_multi_add_handle(c->multi, r->easy) != CURLM_OK)
    rc = fail(c, PARLEY_EINTERNAL, "curl refused the transfer%s", NULL);
  if (rc != 0) {
    req_free(r);
    return rc;
  }
  r->id = c->next_id++;
  r->next = c->reqs;
  if (c->reqs)
    c->reqs->prev = r;
  c->reqs = r;
  c->n_reqs++;
  if (id_out)
    *id_out = r->id;
  return 0;
}

int ph_request_cancel(ph_client *c, uint64_t id) {
  if (!c)
    return PARLEY_EINVAL;
  for (ph_req *r = c->reqs; r; r = r->next) {
    if (r->id == id) {
      if (c->multi)
        curl_multi_remove_handle(c->multi, r->easy);
      req_unlink(r);
      req_free(r);
      return 0;
    }
  }
  return PARLEY_ENOTFOUND;
}
