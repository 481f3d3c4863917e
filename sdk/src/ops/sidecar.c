/* The sidecar API and the health, readiness and metrics routes on top of
 * httpd. See sidecar.h and docs/operations.md. */
#include "ops/sidecar.h"

#include <parley/client.h>
#include <parley/error.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <sodium.h>
#include <uv.h>

#include "ops/obuf.h"
#include "util/idhash.h"

#define PSC_PREFIX "/v1/conversations/"
/* JSON answers are small; this bounds them all the same. */
#define PSC_MAX_ANSWER (64u * 1024u)

struct psc_server {
  uv_loop_t *loop;
  phd_server *http;
  psc_hooks hooks;
  uv_timer_t timer;     /* fires at the oldest pending request's deadline */
  psc_request *head, *tail; /* unanswered sends, oldest first */
  bool closing;
  int closes_pending;   /* timer and http server */
  void (*done)(void *ud);
  void *done_ud;
};

struct psc_request {
  psc_server *srv;      /* set while linked in the server's pending list */
  psc_request *prev, *next;
  phd_request *http;    /* NULL once answered */
  uint64_t deadline_ms; /* on the loop's clock */
  char conversation[PARLEY_MAX_CONVERSATION_ID + 1];
  uint8_t msg_id[PARLEY_MSG_ID_LEN];
  bool outcome_pending; /* send accepted; psc_send_done still to come */
  bool in_send;         /* inside hooks.send: the handler frees, not done */
  bool done_called;
  int status;
  uint64_t seq;
  bool duplicate;
  bool is_open;         /* POST /v1/conversations */
  char why[256];        /* the gateway's or the runtime's reason, if any */
};

/* ---- answers ----------------------------------------------------------- */

int psc_http_status(int st) {
  switch (st) {
    case PARLEY_EOK: return 200;
    case PARLEY_EINVAL:
    case PARLEY_EMALFORMED:
    case PARLEY_ETOOBIG: return 422;
    case PARLEY_EUNAUTH: return 401;
    case PARLEY_EFORBIDDEN:
    case PARLEY_EDENIED: return 403;
    case PARLEY_ENOTFOUND: return 404;
    case PARLEY_ECLOSED:
    case PARLEY_ESTALE_EPOCH:
    case PARLEY_EEXISTS:
    case PARLEY_ESTATE: return 409;
    case PARLEY_ERATE_LIMITED: return 429;
    case PARLEY_EDISCONNECTED:
    case PARLEY_ESHUTDOWN:
    case PARLEY_EBACKPRESSURE:
    case PARLEY_ETOO_MANY_CONN: return 503;
    case PARLEY_ETIMEOUT:
    case PARLEY_EATTEMPTS: return 504;
    case PARLEY_ENOMEM:
    case PARLEY_EINTERNAL: return 500;
    default: return 502;
  }
}

/* Answers with {"error","message","field"?}. Statuses that a retry may
 * cure carry Retry-After so that a well-behaved client waits a little. */
static void answer_error(phd_request *http, int http_status, int st, const char *field,
                         const char *message) {
  pob_buf b;
  pob_init(&b, PSC_MAX_ANSWER);
  pob_puts(&b, "{\"error\":");
  pob_json_string(&b, parley_errname(st));
  pob_puts(&b, ",\"message\":");
  pob_json_string(&b, message ? message : parley_strerror(st));
  if (field) {
    pob_puts(&b, ",\"field\":");
    pob_json_string(&b, field);
  }
  pob_puts(&b, "}\n");
  size_t len = 0;
  char *body = pob_take(&b, &len);
  phd_header ra = {"Retry-After", "1"};
  bool retry = http_status == 503 || http_status == 429;
  phd_respond_ex(http, http_status, "application/json", &ra, retry ? 1 : 0, body,
                 body ? len : 0);
  free(body);
}

/* One log record per send outcome, so an operator can match a caller's
 * retry to the message the gateway stored. */
static void log_outcome(const psc_server *s, const psc_request *r, int status, const char *what) {
  if (!s || !s->hooks.log) return;
  char hex[33];
  parley_msg_id_hex(r->msg_id, hex);
  plog_conv(s->hooks.log, status == 0 ? PLOG_INFO : PLOG_WARN, r->conversation,
            status == 0 ? r->seq : 0, what, "msg_id", hex, "status", parley_errname(status),
            "duplicate", status == 0 && r->duplicate ? "true" : "false", NULL);
}

static void answer_outcome(psc_request *r) {
  phd_request *http = r->http;
  r->http = NULL;
  if (r->status != 0) {
    char msg[600];
    snprintf(msg, sizeof msg, "the %s %s failed: %s%s%s", r->is_open ? "open of" : "send to",
             r->conversation, parley_strerror(r->status), r->why[0] ? ": " : "", r->why);
    answer_error(http, psc_http_status(r->status), r->status, NULL, msg);
    return;
  }
  char hex[33];
  parley_msg_id_hex(r->msg_id, hex);
  pob_buf b;
  pob_init(&b, PSC_MAX_ANSWER);
  pob_puts(&b, "{\"conversation\":");
  pob_json_string(&b, r->conversation);
  pob_printf(&b, ",\"seq\":%llu,\"duplicate\":%s,\"msg_id\":\"%s\"}\n",
             (unsigned long long)r->seq, r->duplicate ? "true" : "false", hex);
  size_t len = 0;
  char *body = pob_take(&b, &len);
  if (body) phd_respond(http, 200, "application/json", body, len);
  else phd_respond(http, 500, NULL, NULL, 0);
  free(body);
}

/* ---- pending list and timeout ----------------------------------------- */

static void on_timeout(uv_timer_t *t);

static void arm_timer(psc_server *s) {
  if (s->closing) return;
  if (!s->head) {
    uv_timer_stop(&s->timer);
    return;
  }
  uint64_t now = uv_now(s->loop);
  uint64_t d = s->head->deadline_ms > now ? s->head->deadline_ms - now : 0;
  uv_timer_start(&s->timer, on_timeout, d, 0);
}

static void link_req(psc_server *s, psc_request *r) {
  r->srv = s;
  r->prev = s->tail;
  r->next = NULL;
  if (s->tail) s->tail->next = r;
  else s->head = r;
  s->tail = r;
}

static void unlink_req(psc_request *r) {
  psc_server *s = r->srv;
  if (!s) return;
  if (r->prev) r->prev->next = r->next;
  else s->head = r->next;
  if (r->next) r->next->prev = r->prev;
  else s->tail = r->prev;
  r->srv = NULL;
  r->prev = r->next = NULL;
  arm_timer(s);
}

static void maybe_free(psc_request *r) {
  if (!r->outcome_pending && !r->http && !r->in_send && !r->srv) free(r);
}

static void on_timeout(uv_timer_t *t) {
  psc_server *s = t->data;
  uint64_t now = uv_now(s->loop);
  /* Every send has the same timeout, so the list is in deadline order. */
  while (s->head && s->head->deadline_ms <= now) {
    psc_request *r = s->head;
    log_outcome(s, r, PARLEY_ETIMEOUT, "sidecar send timed out");
    unlink_req(r);
    phd_request *http = r->http;
    r->http = NULL;
    char msg[200];
    snprintf(msg, sizeof msg,
             "no ACK from the gateway within %u ms; retry with the same idempotency key",
             s->hooks.send_timeout_ms);
    answer_error(http, 504, PARLEY_ETIMEOUT, NULL, msg);
    maybe_free(r);
  }
  arm_timer(s);
}

void psc_send_done(psc_request *r, int status, uint64_t seq, bool duplicate) {
  if (!r || r->done_called) return;
  r->done_called = true;
  r->outcome_pending = false;
  r->status = status;
  r->seq = seq;
  r->duplicate = duplicate;
  if (r->http) {
    log_outcome(r->srv, r, status, "sidecar send done");
    unlink_req(r);
    answer_outcome(r);
  }
  maybe_free(r);
}

/* ---- request parsing --------------------------------------------------- */

static bool valid_conversation(const char *s, size_t n) {
  if (n == 0 || n > PARLEY_MAX_CONVERSATION_ID) return false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("._:@-", c) != NULL;
    if (!ok || c == '\0') return false;
  }
  return true;
}

static bool valid_key(const char *k) {
  size_t n = strlen(k);
  if (n == 0 || n > PSC_MAX_IDEMPOTENCY_KEY) return false;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)k[i] <= 0x20 || (unsigned char)k[i] >= 0x7F) return false;
  return true;
}

/* A field problem: which field, and what is wrong with it. */
typedef struct psc_err {
  char field[96]; /* empty: the body as a whole */
  char message[256];
} psc_err;

#define FAIL(e, f, ...)                                               \
  do {                                                                \
    const char *f_ = (f);                                             \
    snprintf((e)->field, sizeof (e)->field, "%s", f_ ? f_ : "");      \
    snprintf((e)->message, sizeof (e)->message, __VA_ARGS__);         \
    return false;                                                     \
  } while (0)

/* An optional string member; "required" makes absence an error. */
static bool get_string(json_t *obj, const char *key, const char *field, bool required,
                       const char **out, psc_err *e) {
  json_t *v = json_object_get(obj, key);
  *out = NULL;
  if (!v || json_is_null(v)) {
    if (required) FAIL(e, field, "missing field \"%s\" (a non-empty string)", field);
    return true;
  }
  if (!json_is_string(v)) FAIL(e, field, "field \"%s\" must be a string", field);
  size_t n = json_string_length(v);
  const char *s = json_string_value(v);
  if (required && n == 0) FAIL(e, field, "field \"%s\" must not be empty", field);
  if (n > PSC_MAX_TEXT) FAIL(e, field, "field \"%s\" is longer than %u bytes", field, PSC_MAX_TEXT);
  if (strlen(s) != n) FAIL(e, field, "field \"%s\" contains a NUL character", field);
  *out = s;
  return true;
}

static bool only_known(json_t *obj, const char *const *known, const char *where, psc_err *e) {
  const char *key;
  json_t *v;
  json_object_foreach(obj, key, v) {
    bool ok = false;
    for (size_t i = 0; known[i]; i++)
      if (strcmp(key, known[i]) == 0) ok = true;
    if (!ok) {
      char field[96];
      snprintf(field, sizeof field, "%s%.64s", where, key);
      FAIL(e, field, "unknown field \"%s\"", field);
    }
  }
  return true;
}

typedef struct psc_msg {
  parley_content content;
  parley_button buttons[PSC_MAX_BUTTONS];
  const char *key;
  bool is_template; /* the body names a template: hooks.send_reply */
} psc_msg;

static bool parse_card(json_t *card, psc_msg *m, psc_err *e) {
  static const char *const known[] = {"title", "text", "image_url", "buttons", NULL};
  static const char *const bknown[] = {"label", "payload", "url", NULL};
  char bfield[3][64];
  if (!json_is_object(card)) FAIL(e, "card", "field \"card\" must be an object");
  if (!only_known(card, known, "card.", e)) return false;
  parley_content *c = &m->content;
  c->kind = PARLEY_CONTENT_CARD;
  if (!get_string(card, "title", "card.title", false, &c->title, e)) return false;
  if (!get_string(card, "text", "card.text", false, &c->text, e)) return false;
  if (!get_string(card, "image_url", "card.image_url", false, &c->image_url, e)) return false;
  json_t *buttons = json_object_get(card, "buttons");
  if (buttons && !json_is_null(buttons)) {
    if (!json_is_array(buttons)) FAIL(e, "card.buttons", "field \"card.buttons\" must be an array");
    if (json_array_size(buttons) > PSC_MAX_BUTTONS)
      FAIL(e, "card.buttons", "at most %u buttons", PSC_MAX_BUTTONS);
    for (size_t i = 0; i < json_array_size(buttons); i++) {
      json_t *b = json_array_get(buttons, i);
      parley_button *pb = &m->buttons[i];
      snprintf(bfield[0], sizeof bfield[0], "card.buttons[%zu]", i);
      if (!json_is_object(b)) FAIL(e, bfield[0], "field \"%s\" must be an object", bfield[0]);
      if (!only_known(b, bknown, "card.buttons[].", e)) return false;
      snprintf(bfield[1], sizeof bfield[1], "card.buttons[%zu].label", i);
      if (!get_string(b, "label", bfield[1], true, &pb->label, e)) return false;
      snprintf(bfield[2], sizeof bfield[2], "card.buttons[%zu].payload", i);
      if (!get_string(b, "payload", bfield[2], false, &pb->payload, e)) return false;
      char ufield[64];
      snprintf(ufield, sizeof ufield, "card.buttons[%zu].url", i);
      if (!get_string(b, "url", ufield, false, &pb->url, e)) return false;
      if (!pb->payload == !pb->url)
        FAIL(e, bfield[0], "field \"%s\" needs exactly one of \"payload\" and \"url\"", bfield[0]);
    }
    c->buttons = m->buttons;
    c->n_buttons = json_array_size(buttons);
  }
  return true;
}

/* Reads the JSON body into m. Strings stay owned by root. */
/* A body by template is checked here only for its shape; the embedder
 * renders it and checks it as a reply (hooks.send_reply). */
static bool parse_template_body(json_t *root, psc_msg *m, psc_err *e) {
  static const char *const known[] = {"template", "vars", "quick_replies", "card",
                                      "idempotency_key", NULL};
  if (!only_known(root, known, "", e)) return false;
  const char *key;
  if (!get_string(root, "template", "template", true, &key, e)) return false;
  if (!get_string(root, "idempotency_key", "idempotency_key", false, &m->key, e)) return false;
  json_t *vars = json_object_get(root, "vars");
  if (vars && !json_is_null(vars) && !json_is_object(vars))
    FAIL(e, "vars", "field \"vars\" must be an object");
  json_t *qr = json_object_get(root, "quick_replies");
  if (qr && !json_is_null(qr) && !json_is_array(qr))
    FAIL(e, "quick_replies", "field \"quick_replies\" must be an array");
  m->is_template = true;
  return true;
}

static bool parse_body(json_t *root, psc_msg *m, psc_err *e) {
  static const char *const known[] = {"text", "card", "idempotency_key", NULL};
  if (!json_is_object(root)) FAIL(e, NULL, "the body must be a JSON object");
  if (json_object_get(root, "template")) return parse_template_body(root, m, e);
  if (!only_known(root, known, "", e)) return false;
  const char *text;
  if (!get_string(root, "text", "text", true, &text, e)) return false;
  if (!get_string(root, "idempotency_key", "idempotency_key", false, &m->key, e)) return false;
  json_t *card = json_object_get(root, "card");
  if (card && !json_is_null(card)) {
    if (!parse_card(card, m, e)) return false;
    /* With a card, "text" is the plain-text rendering for clients that
     * show text only, and the card's own text defaults to it. */
    m->content.fallback = text;
    if (!m->content.text) m->content.text = text;
  } else {
    m->content.kind = PARLEY_CONTENT_TEXT;
    m->content.text = text;
  }
  return true;
}

#undef FAIL

/* ---- routes ------------------------------------------------------------ */

static const char psc_domain[] = "parley.sidecar.idempotency.v1";

void psc_msg_id_from_key(const char *conversation, const char *key,
                         uint8_t out[PARLEY_MSG_ID_LEN]) {
  /* Length-prefixed fields under a domain string: ("ab","c") and ("a","bc")
   * differ, and no other BLAKE2b use in Parley can produce the same id. The
   * conversation is part of it, so one key reused for another conversation
   * is another message, not the first one's duplicate. */
  const char *const f[] = {psc_domain, conversation, key};
  pu_hash_fields(f, 3, out, PARLEY_MSG_ID_LEN);
}

/* The request's JSON body, or NULL once an error is answered (a content
 * type other than JSON, or a body that does not parse). */
static json_t *json_body(phd_request *http) {
  const char *ctype = phd_req_header(http, "Content-Type");
  if (ctype && strncasecmp(ctype, "application/json", 16) != 0) {
    answer_error(http, 415, PARLEY_EINVAL, NULL, "the body must be application/json");
    return NULL;
  }
  size_t blen;
  const uint8_t *body = phd_req_body(http, &blen);
  json_error_t jerr;
  json_t *root = json_loadb((const char *)body, blen, JSON_REJECT_DUPLICATES, &jerr);
  if (!root) {
    char msg[256];
    snprintf(msg, sizeof msg, "invalid JSON at line %d, column %d: %s", jerr.line, jerr.column,
             jerr.text);
    answer_error(http, 400, PARLEY_EINVAL, NULL, msg);
  }
  return root;
}

/* Whether the embedder can send now; answers 503 when it cannot. */
static bool gateway_ready(psc_server *s, phd_request *http) {
  char reason[200] = "";
  if (!s->hooks.ready || s->hooks.ready(s->hooks.ud, reason, sizeof reason)) return true;
  char msg[256];
  snprintf(msg, sizeof msg, "not connected to the gateway: %s", reason[0] ? reason : "not ready");
  answer_error(http, 503, PARLEY_EDISCONNECTED, NULL, msg);
  return false;
}

/* Links r as under way for http, with the send timeout running, before
 * the embedder's hook is called (which may already complete it). */
static void req_begin(psc_server *s, psc_request *r, phd_request *http) {
  r->http = http;
  r->deadline_ms = uv_now(s->loop) + s->hooks.send_timeout_ms;
  r->outcome_pending = true;
  r->in_send = true;
  link_req(s, r);
  if (s->head == r) arm_timer(s);
}

/* The hook returned st: 0, or a refusal before anything started, so no
 * outcome will come and the request is answered here ("<what>: <why>"). */
static void req_started(psc_server *s, psc_request *r, int st, const char *what,
                        const char *why, const char *log) {
  r->in_send = false;
  if (st == 0) return;
  r->outcome_pending = false;
  if (!r->http) return;
  log_outcome(s, r, st, log);
  unlink_req(r);
  phd_request *h = r->http;
  r->http = NULL;
  char msg[768];
  snprintf(msg, sizeof msg, "%s: %s", what, why[0] ? why : parley_strerror(st));
  answer_error(h, psc_http_status(st), st, why[0] && st == PARLEY_EINVAL ? "template" : NULL,
               msg);
}

static void on_messages(phd_request *http, void *ud) {
  psc_server *s = ud;
  const char *path = phd_req_path(http) + strlen(PSC_PREFIX);
  const char *slash = strchr(path, '/');
  if (!slash || strcmp(slash, "/messages") != 0) {
    answer_error(http, 404, PARLEY_ENOTFOUND, NULL,
                 "no such resource; messages are posted to /v1/conversations/{id}/messages");
    return;
  }
  size_t idlen = (size_t)(slash - path);
  if (!valid_conversation(path, idlen)) {
    answer_error(http, 400, PARLEY_EINVAL, "conversation",
                 "conversation id must be 1 to 128 characters from [A-Za-z0-9._:@-]");
    return;
  }
  json_t *root = json_body(http);
  if (!root) return;
  psc_msg m;
  memset(&m, 0, sizeof m);
  psc_err e = {0};
  if (!parse_body(root, &m, &e)) {
    answer_error(http, 400, PARLEY_EINVAL, e.field[0] ? e.field : NULL, e.message);
    json_decref(root);
    return;
  }
  const char *hkey = phd_req_header(http, "Idempotency-Key");
  if (hkey && m.key && strcmp(hkey, m.key) != 0) {
    answer_error(http, 400, PARLEY_EINVAL, "idempotency_key",
                 "the Idempotency-Key header and the idempotency_key field differ");
    json_decref(root);
    return;
  }
  if (!m.key) m.key = hkey;
  if (m.key && !valid_key(m.key)) {
    answer_error(http, 400, PARLEY_EINVAL, "idempotency_key",
                 "idempotency key must be 1 to 255 visible ASCII characters");
    json_decref(root);
    return;
  }
  if (!gateway_ready(s, http)) {
    json_decref(root);
    return;
  }

  psc_request *r = calloc(1, sizeof *r);
  if (!r) {
    answer_error(http, 500, PARLEY_ENOMEM, NULL, NULL);
    json_decref(root);
    return;
  }
  memcpy(r->conversation, path, idlen);
  r->conversation[idlen] = '\0';
  if (m.key) psc_msg_id_from_key(r->conversation, m.key, r->msg_id);
  else parley_msg_id_random(r->msg_id);
  req_begin(s, r, http);
  int st;
  char why[512] = "";
  if (m.is_template) {
    /* The embedder gets the body without the key: what to render. */
    json_object_del(root, "idempotency_key");
    char *reply = s->hooks.send_reply ? json_dumps(root, JSON_COMPACT) : NULL;
    st = !s->hooks.send_reply ? PARLEY_EUNSUPPORTED
         : reply ? s->hooks.send_reply(s->hooks.ud, r->conversation, reply, r->msg_id, r, why,
                                       sizeof why)
                 : PARLEY_ENOMEM;
    free(reply);
  } else {
    st = s->hooks.send(s->hooks.ud, r->conversation, &m.content, r->msg_id, r);
  }
  json_decref(root);
  char what[200];
  snprintf(what, sizeof what, "the send to %s could not start", r->conversation);
  req_started(s, r, st, what, why, "sidecar send refused");
  maybe_free(r);
}

void psc_open_done(psc_request *r, int status, const char *conversation, uint64_t seq,
                   bool duplicate, const char *why) {
  if (!r || r->done_called) return;
  if (conversation && strlen(conversation) <= PARLEY_MAX_CONVERSATION_ID)
    snprintf(r->conversation, sizeof r->conversation, "%s", conversation);
  if (why) snprintf(r->why, sizeof r->why, "%s", why);
  psc_send_done(r, status, seq, duplicate);
}

/* POST /v1/conversations: opens a conversation with a customer and sends
 * it a first message by template (hooks.open). The body is a template
 * reply with "customer", and the idempotency key is required: without it
 * a retry would open a second conversation. */
static void on_open(phd_request *http, void *ud) {
  psc_server *s = ud;
  if (strcmp(phd_req_path(http), "/v1/conversations") != 0) {
    answer_error(http, 404, PARLEY_ENOTFOUND, NULL,
                 "no such resource; conversations are opened with POST /v1/conversations");
    return;
  }
  if (!s->hooks.open) {
    answer_error(http, 501, PARLEY_EUNSUPPORTED, NULL, "this sidecar cannot open conversations");
    return;
  }
  json_t *root = json_body(http);
  if (!root) return;
  static const char *const known[] = {"customer", "template", "vars", "quick_replies", "card",
                                      "idempotency_key", NULL};
  psc_msg m;
  memset(&m, 0, sizeof m);
  psc_err e = {0};
  const char *customer = NULL;
  bool ok = json_is_object(root);
  if (!ok) snprintf(e.message, sizeof e.message, "the body must be a JSON object");
  ok = ok && only_known(root, known, "", &e) &&
       get_string(root, "customer", "customer", true, &customer, &e);
  if (ok && !valid_conversation(customer, strlen(customer))) {
    snprintf(e.field, sizeof e.field, "customer");
    snprintf(e.message, sizeof e.message,
             "customer must be 1 to 128 characters from [A-Za-z0-9._:@-]");
    ok = false;
  }
  if (ok) json_incref(json_object_get(root, "customer"));
  json_t *cust = ok ? json_object_get(root, "customer") : NULL;
  if (ok) json_object_del(root, "customer");
  ok = ok && parse_template_body(root, &m, &e);
  const char *hkey = phd_req_header(http, "Idempotency-Key");
  if (ok && hkey && m.key && strcmp(hkey, m.key) != 0) {
    snprintf(e.field, sizeof e.field, "idempotency_key");
    snprintf(e.message, sizeof e.message,
             "the Idempotency-Key header and the idempotency_key field differ");
    ok = false;
  }
  if (ok && !m.key) m.key = hkey;
  if (ok && (!m.key || !valid_key(m.key))) {
    snprintf(e.field, sizeof e.field, "idempotency_key");
    snprintf(e.message, sizeof e.message,
             "an idempotency key (1 to 255 visible ASCII characters) is required to open a "
             "conversation, so that a retry does not open a second one");
    ok = false;
  }
  if (!ok) {
    answer_error(http, 400, PARLEY_EINVAL, e.field[0] ? e.field : NULL, e.message);
    json_decref(cust);
    json_decref(root);
    return;
  }
  if (!gateway_ready(s, http)) {
    json_decref(cust);
    json_decref(root);
    return;
  }
  psc_request *r = calloc(1, sizeof *r);
  char *key = m.key ? strdup(m.key) : NULL;
  json_object_del(root, "idempotency_key");
  char *reply = json_dumps(root, JSON_COMPACT);
  if (!r || !key || !reply) {
    answer_error(http, 500, PARLEY_ENOMEM, NULL, NULL);
    free(r);
    free(key);
    free(reply);
    json_decref(cust);
    json_decref(root);
    return;
  }
  r->is_open = true;
  req_begin(s, r, http);
  char why[512] = "";
  int st = s->hooks.open(s->hooks.ud, json_string_value(cust), key, reply, r, r->conversation,
                         r->msg_id, why, sizeof why);
  free(key);
  free(reply);
  char what[200];
  snprintf(what, sizeof what, "the conversation with %.128s could not be opened",
           json_string_value(cust));
  req_started(s, r, st, what, why, "sidecar open refused");
  json_decref(cust);
  json_decref(root);
  maybe_free(r);
}

static void on_healthz(phd_request *http, void *ud) {
  (void)ud;
  phd_respond(http, 200, "text/plain; charset=utf-8", "ok\n", 3);
}

static void on_readyz(phd_request *http, void *ud) {
  psc_server *s = ud;
  char reason[200] = "";
  if (s->closing) {
    static const char msg[] = "not ready: shutting down\n";
    phd_respond(http, 503, "text/plain; charset=utf-8", msg, sizeof msg - 1);
    return;
  }
  if (!s->hooks.ready || s->hooks.ready(s->hooks.ud, reason, sizeof reason)) {
    phd_respond(http, 200, "text/plain; charset=utf-8", "ready\n", 6);
    return;
  }
  char body[256];
  int n = snprintf(body, sizeof body, "not ready: %s\n", reason[0] ? reason : "unknown");
  if (n < 0 || (size_t)n >= sizeof body) n = (int)sizeof body - 1;
  phd_respond(http, 503, "text/plain; charset=utf-8", body, (size_t)n);
}

static void on_metrics(phd_request *http, void *ud) {
  psc_server *s = ud;
  if (s->hooks.before_metrics) s->hooks.before_metrics(s->hooks.ud);
  char *text = NULL;
  size_t len = 0;
  if (pmet_render(s->hooks.metrics, &text, &len) != 0) {
    phd_respond(http, 500, "text/plain; charset=utf-8", "out of memory\n", 14);
    return;
  }
  phd_respond(http, 200, PMET_CONTENT_TYPE, text, len);
  free(text);
}

/* ---- server life ------------------------------------------------------- */

static void closed_one(psc_server *s) {
  if (--s->closes_pending > 0) return;
  void (*done)(void *) = s->done;
  void *ud = s->done_ud;
  free(s);
  if (done) done(ud);
}

static void on_timer_closed(uv_handle_t *h) { closed_one(h->data); }
static void on_http_closed(void *ud) { closed_one(ud); }

int psc_server_start(uv_loop_t *loop, const char *host, uint16_t port, const psc_hooks *hooks,
                     psc_server **out) {
  if (!loop || !hooks || !hooks->send || !out) return PARLEY_EINVAL;
  *out = NULL;
  if (sodium_init() < 0) return PARLEY_EINTERNAL;
  psc_server *s = calloc(1, sizeof *s);
  if (!s) return PARLEY_ENOMEM;
  s->loop = loop;
  s->hooks = *hooks;
  if (!s->hooks.send_timeout_ms) s->hooks.send_timeout_ms = PSC_DEFAULT_SEND_TIMEOUT_MS;
  phd_options o = hooks->http;
  o.host = host;
  o.port = port;
  int rc = phd_server_start(loop, &o, &s->http);
  if (rc != 0) {
    free(s);
    return rc;
  }
  if ((rc = phd_route(s->http, "GET", "/healthz", on_healthz, s)) ||
      (rc = phd_route(s->http, "GET", "/readyz", on_readyz, s)) ||
      (rc = phd_route(s->http, "GET", "/metrics", on_metrics, s)) ||
      (rc = phd_route(s->http, "POST", PSC_PREFIX, on_messages, s)) ||
      (rc = phd_route(s->http, "POST", "/v1/conversations", on_open, s))) {
    /* Routes only fail on memory; the server is closed and freed by the
     * loop, so s itself can go now. */
    phd_server_close(s->http, NULL, NULL);
    free(s);
    return rc;
  }
  uv_timer_init(loop, &s->timer);
  s->timer.data = s;
  s->hooks.http.host = NULL; /* borrowed: not kept */
  *out = s;
  return 0;
}

uint16_t psc_server_port(const psc_server *s) { return s ? phd_server_port(s->http) : 0; }

void psc_server_close(psc_server *s, void (*done)(void *ud), void *ud) {
  if (!s || s->closing) return;
  s->closing = true;
  s->done = done;
  s->done_ud = ud;
  while (s->head) {
    psc_request *r = s->head;
    unlink_req(r);
    phd_request *http = r->http;
    r->http = NULL;
    answer_error(http, 503, PARLEY_ESHUTDOWN, NULL,
                 "the sidecar is shutting down; retry with the same idempotency key");
    maybe_free(r);
  }
  s->closes_pending = 2;
  uv_timer_stop(&s->timer);
  uv_close((uv_handle_t *)&s->timer, on_timer_closed);
  phd_server_close(s->http, on_http_closed, s);
}
