/* The runtime's driver on the real SDK: parley_client_* for the gateway and
 * ph_* for HTTP, both on the caller's loop. Kept apart from runtime.c so the
 * tests, which drive the runtime with a fake driver, link without a client.
 */
#include "rt_int.h"

#include "adapter.h"
#include "ops/log.h"

#include "http/http.h"
#include "transport/url.h"
#include "util/clock.h"

#include <stdlib.h>
#include <string.h>

/* A send in flight: the runtime's send_ud and when it was handed to the
 * client, for the ACK latency. Listed so that d_destroy frees the ones a
 * stopped client never answered. */
typedef struct adapter_send {
  struct adapter_send *prev, *next;
  void *send_ud;
  uint64_t t0;
} adapter_send;

/* Why the gateway cannot be reached, found out once per lost connection by
 * resolving the host and opening a plain TCP connection to it: the
 * transport only says "input/output error". */
typedef struct adapter_probe {
  struct plr_adapter *a; /* NULL once the adapter is gone */
  uv_getaddrinfo_t gai;
  uv_connect_t conn;
  uv_tcp_t tcp;
  char url[512]; /* the node probed: the one the failed attempt went to */
  pt_url where;  /* url, parsed */
  char cause[600];
} adapter_probe;

typedef struct plr_adapter {
  parley_runtime *rt;
  parley_client *client;
  ph_client *http;
  bool closed;
  adapter_send *sends;
  char url[512], principal[128];
  adapter_probe *probe; /* in flight, or NULL */
  /* The last cause logged for each node tried since the last connection:
   * repeats are debug lines, however the client rotates through them. */
  struct {
    char url[512];
    char cause[600];
  } causes[PARLEY_MAX_URLS];
  size_t n_causes;
  bool fatal;
  void (*on_fatal)(void *ud, int status, const char *message);
  void *fatal_ud;
  plr_adapter_hooks hooks; /* zero: none */
} plr_adapter;

static adapter_send *send_track(plr_adapter *a, void *send_ud) {
  adapter_send *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->send_ud = send_ud;
  s->t0 = pu_clock_ns();
  s->next = a->sends;
  if (a->sends) a->sends->prev = s;
  a->sends = s;
  return s;
}

static void send_untrack(plr_adapter *a, adapter_send *s) {
  if (s->prev) s->prev->next = s->next;
  else a->sends = s->next;
  if (s->next) s->next->prev = s->prev;
  free(s);
}

/* One HTTP request in flight: the runtime's callback and ph's id. */
typedef struct adapter_req {
  plr_adapter *a;
  plr_http_done done;
  void *cb_ud;
  uint64_t id;
} adapter_req;

static void cb_event(parley_client *c, const parley_event *ev, void *ud) {
  (void)c;
  plr_adapter *a = ud;
  if (a->hooks.on_event && a->hooks.on_event(a->hooks.ud, ev)) return;
  plr_rt_on_event(a->rt, ev);
}

static void cb_send_result(parley_client *c, const parley_send_result *r, void *send_ud,
                           void *ud) {
  (void)c;
  plr_adapter *a = ud;
  adapter_send *s = send_ud;
  void *inner = s ? s->send_ud : NULL;
  if (s) {
    if (r->status == 0 && a->rt->on_observe)
      a->rt->on_observe(a->rt->ud, PARLEY_RUNTIME_OBSERVE_ACK, (double)(pu_clock_ns() - s->t0) / 1e9);
    send_untrack(a, s);
  }
  if (a->hooks.on_send_result) a->hooks.on_send_result(a->hooks.ud, r);
  plr_rt_on_send_result(a->rt, r, inner);
}

static void cb_commit_result(parley_client *c, const parley_commit_result *r, void *ud) {
  (void)c;
  plr_adapter *a = ud;
  plr_rt_on_commit_result(a->rt, r);
}

static void cb_assign(parley_client *c, const parley_assignment *as, void *ud) {
  (void)c;
  plr_adapter *a = ud;
  if (a->hooks.on_assign) a->hooks.on_assign(a->hooks.ud, as);
  plr_rt_on_assign(a->rt, as);
}

static void cb_revoke(parley_client *c, const char *conv, uint64_t epoch, const char *reason,
                      void *ud) {
  (void)c;
  plr_adapter *a = ud;
  plr_rt_on_revoke(a->rt, conv, epoch, reason);
}

/* The gateway node the client is connected or connecting to: one URL of
 * the configured list, which is what a message about a connection names. */
static const char *node_url(const plr_adapter *a) {
  const char *u = a->client ? parley_client_url(a->client) : NULL;
  return u && *u ? u : a->url;
}

/* Logs a cause of a lost connection to url at warn the first time, at
 * debug while it stays the same, so a gateway that is down for a minute
 * gives one clear line and not ten a second. */
static void log_cause(plr_adapter *a, const char *url, const char *cause) {
  size_t i = 0;
  while (i < a->n_causes && strcmp(a->causes[i].url, url)) i++;
  if (i == a->n_causes) {
    /* More nodes than the client holds cannot happen; reuse the last slot
     * rather than drop the line. */
    if (a->n_causes < PARLEY_MAX_URLS) a->n_causes++;
    else i = PARLEY_MAX_URLS - 1;
    snprintf(a->causes[i].url, sizeof a->causes[i].url, "%s", url);
    a->causes[i].cause[0] = '\0';
  }
  bool repeat = !strcmp(a->causes[i].cause, cause);
  plr_log(a->rt, repeat ? 0 : 2, NULL, 0, "cannot connect to %s: %s; retrying", url, cause);
  snprintf(a->causes[i].cause, sizeof a->causes[i].cause, "%s", cause);
}

static void probe_closed(uv_handle_t *h) {
  adapter_probe *p = h->data;
  if (p->a) {
    log_cause(p->a, p->url, p->cause);
    p->a->probe = NULL;
  }
  free(p);
}

static void probe_connected(uv_connect_t *req, int status) {
  adapter_probe *p = req->data;
  if (status == UV_ECONNREFUSED)
    snprintf(p->cause, sizeof p->cause, "connection refused (nothing listens on %.200s port %d)",
             p->where.host, p->where.port);
  else if (status < 0)
    snprintf(p->cause, sizeof p->cause, "TCP connection failed: %s", uv_strerror(status));
  else
    snprintf(p->cause, sizeof p->cause,
             "the TCP connection works but the WebSocket upgrade failed (is this a Parley "
             "gateway, and is the path %.200s right?)",
             p->where.path);
  uv_close((uv_handle_t *)&p->tcp, probe_closed);
}

static void probe_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  adapter_probe *p = req->data;
  if (status < 0 || !res || !p->a) {
    snprintf(p->cause, sizeof p->cause, "cannot resolve host '%s': %s",
             p->where.host, status < 0 ? uv_strerror(status) : "no address");
    if (res) uv_freeaddrinfo(res);
    uv_close((uv_handle_t *)&p->tcp, probe_closed);
    return;
  }
  p->conn.data = p;
  int rc = uv_tcp_connect(&p->conn, &p->tcp, res->ai_addr, probe_connected);
  uv_freeaddrinfo(res);
  if (rc) probe_connected(&p->conn, rc);
}

/* Starts finding out why a connection failed with an I/O error. */
static void probe_start(plr_adapter *a) {
  /* The cause is logged at warn: below that level the connection is not
   * worth making (`parley test` runs at error unless -v). */
  if (!plog_enabled(a->rt->log, PLOG_WARN)) return;
  if (a->probe) return;
  adapter_probe *p = calloc(1, sizeof *p);
  if (!p) return;
  snprintf(p->url, sizeof p->url, "%s", node_url(a));
  const char *why = NULL;
  if (pt_url_parse(p->url, &p->where, &why) != 0) {
    log_cause(a, p->url, "input/output error");
    free(p);
    return;
  }
  p->a = a;
  uv_loop_t *loop = a->rt->loop;
  uv_tcp_init(loop, &p->tcp);
  p->tcp.data = p;
  p->gai.data = p;
  char port[8];
  snprintf(port, sizeof port, "%d", p->where.port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  int rc = uv_getaddrinfo(loop, &p->gai, probe_resolved, p->where.host, port, &hints);
  if (rc) {
    snprintf(p->cause, sizeof p->cause, "cannot resolve host '%s': %s", p->where.host,
             uv_strerror(rc));
    uv_close((uv_handle_t *)&p->tcp, probe_closed);
  }
  a->probe = p;
}

/* The gateway refused this principal: no retry can fix that. */
static void refused(plr_adapter *a, int status, const char *message) {
  if (a->fatal) return;
  a->fatal = true;
  char msg[1400];
  snprintf(msg, sizeof msg,
           "the gateway at %.500s refused bot principal '%.120s': %s%s%.300s (check the token and that "
           "the principal is a bot in the gateway's config)",
           node_url(a), a->principal, parley_strerror(status), message && *message ? ": " : "",
           message && *message ? message : "");
  plr_log(a->rt, 3, NULL, 0, "%s", msg);
  if (a->on_fatal) a->on_fatal(a->fatal_ud, status, msg);
}

static const char *state_name(parley_conn_state st) {
  static const char *const names[] = {"idle",    "connecting", "handshake", "ready",
                                      "backoff", "closing",    "closed"};
  return (unsigned)st < 7 ? names[st] : "unknown";
}

static void cb_state(parley_client *c, parley_conn_state st, int status, void *ud) {
  plr_adapter *a = ud;
  if (st == PARLEY_CONN_READY) {
    plr_log(a->rt, 1, NULL, 0, "connected to %s as %s", node_url(a), a->principal);
    a->n_causes = 0;
  } else if (st == PARLEY_CONN_BACKOFF && (status == PARLEY_EUNAUTH || status == PARLEY_EFORBIDDEN)) {
    refused(a, status, NULL);
  } else if (st == PARLEY_CONN_BACKOFF && status == PARLEY_ETLS) {
    log_cause(a, node_url(a), "TLS handshake failed (a certificate the system does not trust? "
                              "--insecure is for development only)");
  } else if (st == PARLEY_CONN_BACKOFF && status == PARLEY_EIO &&
             parley_client_upgrade_status(c) != 0) {
    pt_url w;
    const char *why = NULL;
    const char *url = node_url(a);
    char cause[256];
    snprintf(cause, sizeof cause,
             "the server answered the WebSocket upgrade with HTTP %u (is this a Parley gateway, "
             "and is the path %.120s right?)",
             parley_client_upgrade_status(c), pt_url_parse(url, &w, &why) == 0 ? w.path : "/");
    log_cause(a, url, cause);
  } else if (st == PARLEY_CONN_BACKOFF && status == PARLEY_EIO) {
    probe_start(a);
  } else {
    plr_log(a->rt, st == PARLEY_CONN_BACKOFF ? 2 : 0, NULL, 0, "connection %s%s%s", state_name(st),
            status ? ": " : "", status ? parley_strerror(status) : "");
  }
  if (st == PARLEY_CONN_CLOSED && !a->closed) {
    a->closed = true;
    plr_rt_on_stopped(a->rt);
  }
}

static void cb_error(parley_client *c, int status, const char *message, void *ud) {
  (void)c;
  plr_adapter *a = ud;
  if (status == PARLEY_EUNAUTH || status == PARLEY_EFORBIDDEN) {
    refused(a, status, message);
    return;
  }
  plr_log(a->rt, 2, NULL, 0, "gateway error: %s%s%s", parley_strerror(status),
          message ? ": " : "", message ? message : "");
}

static int d_send(void *ud, const char *conv, const parley_content *content,
                  const parley_quote *quote, const uint8_t id[PARLEY_MSG_ID_LEN], uint64_t epoch,
                  void *send_ud) {
  plr_adapter *a = ud;
  adapter_send *s = send_track(a, send_ud);
  if (!s) return PARLEY_ENOMEM;
  int rc = parley_client_send(a->client, conv, content, quote, id, epoch, s);
  if (rc) send_untrack(a, s);
  else if (a->hooks.on_sent) a->hooks.on_sent(a->hooks.ud, conv);
  return rc;
}

static int d_action(void *ud, const char *conv, const parley_action *action,
                    const uint8_t id[PARLEY_MSG_ID_LEN], uint64_t epoch, void *send_ud) {
  plr_adapter *a = ud;
  adapter_send *s = send_track(a, send_ud);
  if (!s) return PARLEY_ENOMEM;
  int rc = parley_client_action(a->client, conv, action, id, epoch, s);
  if (rc) send_untrack(a, s);
  else if (a->hooks.on_sent) a->hooks.on_sent(a->hooks.ud, conv);
  return rc;
}

static int d_commit(void *ud, const parley_commit *commits, size_t n) {
  plr_adapter *a = ud;
  if (a->hooks.on_commit) a->hooks.on_commit(a->hooks.ud, commits, n);
  return parley_client_commit(a->client, commits, n);
}

static void http_cb(const ph_response *resp, void *ud) {
  adapter_req *q = ud;
  const char *lines[PH_MAX_RESPONSE_HEADERS];
  char *buf[PH_MAX_RESPONSE_HEADERS];
  size_t n = resp->n_headers < PH_MAX_RESPONSE_HEADERS ? resp->n_headers : PH_MAX_RESPONSE_HEADERS;
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    size_t len = strlen(resp->headers[i].name) + strlen(resp->headers[i].value) + 3;
    buf[k] = malloc(len);
    if (!buf[k]) continue;
    snprintf(buf[k], len, "%s: %s", resp->headers[i].name, resp->headers[i].value);
    lines[k] = buf[k];
    k++;
  }
  plr_http_resp r = {.status = resp->status == 0 ? (int)resp->http_status : 0,
                     .body = resp->body,
                     .body_len = resp->body_len,
                     .headers = lines,
                     .n_headers = k,
                     .error = resp->status ? (resp->error ? resp->error : parley_strerror(resp->status))
                                           : NULL};
  plr_http_done done = q->done;
  void *cb_ud = q->cb_ud;
  free(q);
  done(cb_ud, &r);
  for (size_t i = 0; i < k; i++) free(buf[i]);
}

static int d_http(void *ud, const plr_http_req *req, plr_http_done done, void *cb_ud,
                  void **handle) {
  plr_adapter *a = ud;
  if (!a->http) return PARLEY_EUNSUPPORTED;
  ph_header hs[PH_MAX_REQUEST_HEADERS];
  char *copies[PH_MAX_REQUEST_HEADERS];
  size_t n = req->n_headers < PH_MAX_REQUEST_HEADERS ? req->n_headers : PH_MAX_REQUEST_HEADERS;
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    char *line = strdup(req->headers[i]);
    if (!line) break;
    char *colon = strchr(line, ':');
    if (!colon) {
      free(line);
      continue;
    }
    *colon = '\0';
    char *v = colon + 1;
    while (*v == ' ') v++;
    copies[k] = line;
    hs[k].name = line;
    hs[k].value = v;
    k++;
  }
  adapter_req *q = calloc(1, sizeof *q);
  int rc = PARLEY_ENOMEM;
  if (q) {
    q->a = a;
    q->done = done;
    q->cb_ud = cb_ud;
    ph_request pr = {.method = req->method,
                     .url = req->url,
                     .headers = hs,
                     .n_headers = k,
                     .body = req->body,
                     .body_len = req->body_len,
                     .timeout_ms = req->timeout_ms,
                     .max_response_bytes = req->max_response_bytes,
                     .allow_hosts = req->allow_hosts,
                     .n_allow_hosts = req->n_allow_hosts,
                     .allow_private = req->allow_private};
    rc = ph_request_start(a->http, &pr, http_cb, q, &q->id);
    if (rc) {
      plr_log(a->rt, 2, NULL, 0, "http request refused: %s", ph_client_last_error(a->http));
      free(q);
    } else {
      *handle = q;
    }
  }
  for (size_t i = 0; i < k; i++) free(copies[i]);
  return rc;
}

static void d_http_cancel(void *ud, void *handle) {
  plr_adapter *a = ud;
  adapter_req *q = handle;
  if (a->http && q && ph_request_cancel(a->http, q->id) == 0) free(q);
}

static void d_stop(void *ud, uint32_t drain_ms) {
  plr_adapter *a = ud;
  if (!a->client || parley_client_stop(a->client, drain_ms) != 0) {
    a->closed = true;
    plr_rt_on_stopped(a->rt);
  }
}

static void d_quiesce(void *ud) {
  plr_adapter *a = ud;
  ph_client_free(a->http);
  a->http = NULL;
}

static int d_start(void *ud) {
  plr_adapter *a = ud;
  return parley_client_start(a->client);
}

static void d_destroy(void *ud) {
  plr_adapter *a = ud;
  if (a->probe) a->probe->a = NULL; /* it finishes on the loop and frees itself */
  parley_client_free(a->client);
  ph_client_free(a->http);
  while (a->sends) send_untrack(a, a->sends);
  free(a);
}

/* The hooks' replacements, called with the hooks' ud. */
static int h_http(void *ud, const plr_http_req *req, plr_http_done done, void *cb_ud,
                  void **handle) {
  plr_adapter *a = ud;
  return a->hooks.http(a->hooks.ud, req, done, cb_ud, handle);
}

static void h_http_cancel(void *ud, void *handle) {
  plr_adapter *a = ud;
  if (a->hooks.http_cancel) a->hooks.http_cancel(a->hooks.ud, handle);
}

static int64_t h_now(void *ud) {
  plr_adapter *a = ud;
  return a->hooks.now_ms(a->hooks.ud);
}

parley_client *parley_runtime_client(parley_runtime *r) {
  if (!r || r->drv.destroy != d_destroy) return NULL;
  return ((plr_adapter *)r->drv.ud)->client;
}

int parley_runtime_new(const parley_runtime_options *o, parley_runtime **out, char *err,
                       size_t errlen) {
  return plr_runtime_new_hooked(o, NULL, out, err, errlen);
}

int plr_runtime_new_hooked(const parley_runtime_options *o, const plr_adapter_hooks *hooks,
                           parley_runtime **out, char *err, size_t errlen) {
  *out = NULL;
  if (!o || !o->loop || !o->url) {
    if (err && errlen) snprintf(err, errlen, "runtime options need a loop and a gateway url");
    return PARLEY_EINVAL;
  }
  /* A URL the client would refuse gets a message that says what to write. */
  pt_url where;
  const char *why = NULL;
  if (pt_url_parse(o->url, &where, &why) != 0) {
    if (err && errlen)
      snprintf(err, errlen,
               "gateway URL '%s': %s; a Parley gateway is reached over WebSocket: "
               "ws://host:port/ (or wss:// with TLS)",
               o->url, why ? why : "invalid");
    return PARLEY_EINVAL;
  }
  plr_adapter *a = calloc(1, sizeof *a);
  if (!a) return PARLEY_ENOMEM;
  snprintf(a->url, sizeof a->url, "%s", o->url);
  a->on_fatal = o->on_fatal;
  a->fatal_ud = o->fatal_ud;
  if (hooks) a->hooks = *hooks;
  plr_driver d = {.send = d_send,
                  .action = d_action,
                  .commit = d_commit,
                  .http = d_http,
                  .http_cancel = d_http_cancel,
                  .stop = d_stop,
                  .start = d_start,
                  .quiesce = d_quiesce,
                  .destroy = d_destroy,
                  .ud = a};
  if (a->hooks.http) d.http = h_http, d.http_cancel = h_http_cancel;
  if (a->hooks.now_ms) d.now_ms = h_now;
  if (a->hooks.derive) d.derive = a->hooks.derive;
  parley_runtime *r = NULL;
  int rc = plr_runtime_new_driver(o, &d, &r, err, errlen);
  if (rc) {
    free(a);
    return rc;
  }
  a->rt = r;
  snprintf(a->principal, sizeof a->principal, "%s", plr_rt_principal(r));
  /* Bots without http.allow do not need it, and a hook may answer instead. */
  if (!a->hooks.http && ph_client_new(o->loop, &a->http) != 0) a->http = NULL;
  parley_client_options co = PARLEY_CLIENT_OPTIONS_INIT;
  co.url = o->url;
  co.principal = plr_rt_principal(r);
  co.token = o->token;
  co.role = PARLEY_ROLE_BOT;
  co.loop = o->loop;
  co.tls_insecure = o->tls_insecure;
  co.tuning.seed = a->hooks.seed;
  co.cb.on_event = cb_event;
  co.cb.on_send_result = cb_send_result;
  co.cb.on_commit_result = cb_commit_result;
  co.cb.on_assign = cb_assign;
  co.cb.on_revoke = cb_revoke;
  co.cb.on_state = cb_state;
  co.cb.on_error = cb_error;
  co.user_data = a;
  rc = parley_client_new(&co, &a->client);
  if (rc) {
    if (err && errlen) snprintf(err, errlen, "cannot create the client: %s", parley_strerror(rc));
    parley_runtime_free(r);
    return rc;
  }
  *out = r;
  return 0;
}
