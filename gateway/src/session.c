/* The per-connection protocol: Hello/Welcome, and every frame after it.
 * Frames that change durable state (Send, Commit, Ack) are queued and
 * applied by pg_session_batch in one transaction per loop iteration (group
 * commit); their answers go out only after COMMIT returns. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include <parley/error.h>

#include "gw.h"
#include "util/clock.h"
#include "util/array.h"

#define E(x) PARLEY__V1__ERROR_CODE__ERROR_##x
#define PG_VERSION_MIN 1u
#define PG_VERSION_MAX 1u

static void frame_error(pg_conn *c, Parley__V1__ErrorCode code, const char *msg) {
  pg_conn_error(c, code, false, msg, NULL, NULL, 0, 0);
}

static void fatal(pg_conn *c, Parley__V1__ErrorCode code, const char *msg) {
  pg_conn_error(c, code, true, msg, NULL, NULL, 0, 0);
}

/* ------------------------------------------------------------------ hello */

typedef struct hello_ctx {
  pg_conn *c;
  const Parley__V1__Hello *h;
  Parley__V1__ResumeCursor *cur;
  Parley__V1__ResumeCursor **curp;
  size_t n, cap, bytes;
} hello_ctx;

static uint64_t resume_of(const Parley__V1__Hello *h, const char *conv) {
  for (size_t i = 0; i < h->n_resume; i++)
    if (!strcmp(h->resume[i]->conversation, conv)) return h->resume[i]->after_seq;
  return 0;
}

/* Opens a stream for each conversation the principal takes part in, at
 * max(stored watermark, resume cursor), and lists it for Welcome. */
static int hello_stream(void *ud, const pg_store_conv *stored) {
  hello_ctx *hc = ud;
  pg_conn *c = hc->c;
  /* The published row, which may be newer than the stored one read here:
   * routing and this stream must agree. */
  pg_conv *cv = pg_router_conv(c->g, stored->id);
  if (!cv) return 0;
  const pg_store_conv *r = &cv->pub;
  if (c->role == PG_ROLE_AGENT && r->status == PG_CONV_QUEUED) return 0;
  pg_stream *s = pg_router_stream(c, r->id, true);
  if (!s) return 0;
  uint64_t cur = resume_of(hc->h, r->id);
  if (cur > r->last_seq) cur = r->last_seq;
  if (cur > s->acked) s->acked = s->pushed = s->high = cur;
  /* A closed, fully acknowledged conversation has nothing left to stream. */
  if (r->status == PG_CONV_CLOSED && s->acked >= r->last_seq) {
    pg_router_drop_stream(c, r->id);
    return 0;
  }
  /* Welcome must fit the frame limit; a stream left out of it still
   * streams, and its client fills the gap with Fetch. */
  size_t cost = strlen(s->conv) + 16;
  if (hc->bytes + cost > c->g->cfg->max_frame_bytes - 4096) return 0;
  hc->bytes += cost;
  if (pu_reserve(&hc->cur, &hc->cap, hc->n, sizeof *hc->cur, 16)) return 0;
  Parley__V1__ResumeCursor *rc = &hc->cur[hc->n++];
  parley__v1__resume_cursor__init(rc);
  rc->conversation = s->conv;
  rc->after_seq = s->acked;
  return 0;
}

static bool allowed_queue(const pg_principal *p, const char *q) {
  if (!p || !p->n_queues) return true;
  for (size_t i = 0; i < p->n_queues; i++)
    if (!strcmp(p->queues[i], q)) return true;
  return false;
}

static int set_queues(pg_conn *c, const pg_principal *p, const Parley__V1__Hello *h) {
  size_t n = h->n_queues ? h->n_queues : (p ? p->n_queues : 0);
  if (n > 256) n = 256;
  c->queues = calloc(n ? n : 1, sizeof *c->queues);
  if (!c->queues) return PARLEY_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    const char *q = h->n_queues ? h->queues[i] : p->queues[i];
    if (!pw_valid_conversation(q) || !allowed_queue(p, q)) continue;
    if (!(c->queues[c->n_queues] = strdup(q))) return PARLEY_ENOMEM;
    c->n_queues++;
  }
  return 0;
}

static void on_hello(pg_conn *c, const Parley__V1__Hello *h) {
  pg_gateway *g = c->g;
  if (h->min_version > h->max_version || h->min_version > PG_VERSION_MAX ||
      h->max_version < PG_VERSION_MIN) {
    fatal(c, E(UNSUPPORTED_VERSION), "this gateway speaks protocol version 1");
    return;
  }
  int role = h->role == PARLEY__V1__ROLE__ROLE_CUSTOMER ? PG_ROLE_CUSTOMER
             : h->role == PARLEY__V1__ROLE__ROLE_AGENT  ? PG_ROLE_AGENT
             : h->role == PARLEY__V1__ROLE__ROLE_BOT    ? PG_ROLE_BOT
                                                        : 0;
  const char *token = c->header_token && c->header_token[0] ? c->header_token : h->token;
  const pg_principal *p = NULL;
  if (!role || pg_auth(g->cfg, h->principal, role, token, &p) != 0) {
    /* An operator must see refused logins, but a client retrying a bad
     * token must not flood the log: one line a second at most, with the
     * count of those left out, the principal (printable bytes only) and
     * never the token. */
    static time_t last;
    static unsigned skipped;
    time_t now = (time_t)(pu_wall_ms() / 1000);
    if (now != last) {
      char who[65];
      size_t i = 0;
      for (const char *s = h->principal ? h->principal : ""; *s && i + 1 < sizeof who; s++)
        who[i++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
      who[i] = '\0';
      fprintf(stderr, "gateway: refused login of principal '%s' as %s: unknown principal, wrong "
                      "role or wrong token%s",
              who, role == PG_ROLE_BOT ? "bot" : role == PG_ROLE_AGENT ? "agent"
                   : role == PG_ROLE_CUSTOMER ? "customer" : "no role", skipped ? "" : "\n");
      if (skipped) fprintf(stderr, " (%u more refused in the last second)\n", skipped);
      last = now;
      skipped = 0;
    } else {
      skipped++;
    }
    fatal(c, E(UNAUTHENTICATED), "unknown principal, wrong role or wrong token");
    return;
  }
  pg_conn_drop_token(c);
  uint32_t same = 0;
  for (pg_conn *o = pg_router_conns_of(g, h->principal); o; o = o->pnext)
    if (o->state == PG_CS_OPEN) same++;
  if (same >= g->cfg->max_conns) {
    pg_conn_error(c, E(TOO_MANY_CONNECTIONS), true, "too many connections for this principal",
                  NULL, NULL, 0, 1000);
    return;
  }
  const char *dev = h->device ? h->device : "";
  if (strlen(dev) > 128) {
    fatal(c, E(INVALID), "hello.device is longer than 128 bytes");
    return;
  }
  const char *loc = h->locale ? h->locale : "";
  if (strlen(loc) > 35) {
    fatal(c, E(INVALID), "hello.locale is longer than 35 bytes");
    return;
  }
  c->locale = strdup(loc);
  c->principal = strdup(h->principal);
  c->device = strdup(role == PG_ROLE_BOT ? "" : dev);
  c->role = role;
  if (!c->principal || !c->device || !c->locale || (role == PG_ROLE_AGENT && set_queues(c, p, h) != 0)) {
    fatal(c, E(INTERNAL), "out of memory");
    return;
  }
  c->window = g->cfg->window;
  if (h->window && h->window < c->window) c->window = h->window;
  if (pg_router_index(c) != 0) {
    fatal(c, E(INTERNAL), "too many principals connected");
    return;
  }
  c->state = PG_CS_OPEN;

  hello_ctx hc = {.c = c, .h = h};
  if (role == PG_ROLE_CUSTOMER)
    pg_store_conv_each(g->store, PG_STORE_BY_CUSTOMER, c->principal, hello_stream, &hc);
  else if (role == PG_ROLE_AGENT)
    pg_store_conv_each(g->store, PG_STORE_BY_ASSIGNEE, c->principal, hello_stream, &hc);
  hc.curp = calloc(hc.n ? hc.n : 1, sizeof *hc.curp);
  for (size_t i = 0; hc.curp && i < hc.n; i++) hc.curp[i] = &hc.cur[i];

  uint8_t rnd[16];
  randombytes_buf(rnd, sizeof rnd);
  sodium_bin2hex(c->session, sizeof c->session, rnd, sizeof rnd);
  Parley__V1__Welcome w = PARLEY__V1__WELCOME__INIT;
  w.version = h->max_version < PG_VERSION_MAX ? h->max_version : PG_VERSION_MAX;
  w.principal = c->principal;
  w.session = c->session;
  w.server_time_ms = (int64_t)pg_now_ms();
  w.heartbeat_ms = g->cfg->heartbeat_ms;
  w.max_frame_bytes = g->cfg->max_frame_bytes;
  w.window = c->window;
  w.ack_timeout_ms = g->cfg->ack_timeout_ms;
  w.cursors = hc.curp;
  w.n_cursors = hc.curp ? hc.n : 0;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_WELCOME;
  f.welcome = &w;
  /* A bot's Welcome goes out together with its Assigns, once the epoch
   * bumps of the conversations placed on it are durable. */
  if (role == PG_ROLE_BOT) c->corked = true;
  pg_conn_send_frame(c, &f);
  free(hc.curp);
  free(hc.cur);
  if (role == PG_ROLE_BOT) {
    pg_router_bot_joined(c);
    pg_apply_uncork_after(g, c);
  }
  pg_router_pump(c);
}

/* ------------------------------------------------------------ read-only */

static bool may_read(const pg_conn *c, const pg_store_conv *r) {
  switch (c->role) {
  case PG_ROLE_CUSTOMER: return !strcmp(r->customer, c->principal);
  case PG_ROLE_AGENT: return !strcmp(r->assignee, c->principal);
  case PG_ROLE_BOT: return !strcmp(r->bot, c->principal);
  default: return false;
  }
}

typedef struct fetch_ctx {
  Parley__V1__Event **evs;
  size_t n, bytes, max_bytes;
  uint64_t last;
  uint64_t seen;    /* highest seq pushed to this device before */
  uint64_t boot_ms; /* events stored before may have been pushed by an earlier run */
  int rc;
} fetch_ctx;

static int fetch_one(void *ud, uint64_t seq, const void *blob, size_t len) {
  fetch_ctx *fc = ud;
  if (fc->n && fc->bytes + len + 16 > fc->max_bytes) return 1; /* page full */
  Parley__V1__Event *ev = parley__v1__event__unpack(NULL, len, blob);
  if (!ev) return PARLEY_EDB;
  /* A fetch that fills a gap left by a lost push carries the same flag the
   * push had: a bot handling the event again must know it may have seen
   * it. */
  ev->redelivered = seq <= fc->seen ||
                    (ev->server_time_ms > 0 && (uint64_t)ev->server_time_ms < fc->boot_ms);
  fc->evs[fc->n++] = ev;
  fc->bytes += len + 16;
  fc->last = seq;
  return 0;
}

static void on_fetch(pg_conn *c, const Parley__V1__Fetch *fe) {
  pg_gateway *g = c->g;
  Parley__V1__FetchResult fr = PARLEY__V1__FETCH_RESULT__INIT;
  fr.request_id = fe->request_id;
  fr.conversation = fe->conversation;
  pg_conv *cv = pw_valid_conversation(fe->conversation) ? pg_router_conv(g, fe->conversation)
                                                         : NULL;
  fetch_ctx fc = {0};
  pg_stream *st = NULL;
  if (!cv) {
    fr.error = E(NOT_FOUND);
  } else if (!may_read(c, &cv->pub)) {
    fr.error = E(FORBIDDEN);
  } else {
    uint32_t limit = fe->limit && fe->limit < g->cfg->fetch_limit ? fe->limit : g->cfg->fetch_limit;
    uint64_t last = cv->pub.last_seq;
    uint64_t to = fe->to_seq && fe->to_seq < last ? fe->to_seq : last;
    fr.last_seq = last;
    fc.max_bytes = g->cfg->max_frame_bytes - 256;
    st = pg_router_stream(c, fe->conversation, false);
    fc.seen = st ? st->seen : 0;
    fc.boot_ms = g->boot_ms;
    fc.evs = calloc(limit, sizeof *fc.evs);
    if (!fc.evs) {
      fr.error = E(INTERNAL);
    } else if (fe->from_seq <= to) {
      int erc = pg_hot_events(g, cv, fe->from_seq, to, limit, fetch_one, &fc);
      if (erc < 0) fr.error = E(INTERNAL);
    }
    fr.events = fc.evs;
    fr.n_events = fc.n;
    /* What a connection fetched it has been given, like what was pushed:
     * its ACK or commit may now cover it (a client fills a gap, or reads
     * ahead of the push window, through Fetch). */
    if (st && st->active && fc.n && fc.last > st->high) st->high = fc.last;
    fr.end = fr.error == E(NONE) && (fe->from_seq > to || fc.last >= to);
  }
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_FETCH_RESULT;
  f.fetch_result = &fr;
  pg_conn_send_frame(c, &f);
  for (size_t i = 0; i < fc.n; i++) parley__v1__event__free_unpacked(fc.evs[i], NULL);
  free(fc.evs);
}

typedef struct queue_ctx {
  pg_conn *c;
  Parley__V1__QueueItem *items;
  Parley__V1__QueueItem **ptrs;
  pg_store_conv *rows;
  size_t n, cap;
} queue_ctx;

#define PG_QUEUE_MAX_ITEMS 1000

static int queue_one(void *ud, const pg_store_conv *r) {
  queue_ctx *qc = ud;
  if (qc->n >= PG_QUEUE_MAX_ITEMS) return 1;
  if (pu_reserve(&qc->rows, &qc->cap, qc->n, sizeof *qc->rows, 16)) return 1;
  /* Steal the strings: the caller clears only its own copy. */
  pg_store_conv *dst = &qc->rows[qc->n++];
  memset(dst, 0, sizeof *dst);
  dst->id = strdup(r->id);
  dst->queue = strdup(r->queue);
  dst->customer = strdup(r->customer);
  dst->note = strdup(r->note);
  dst->locale = strdup(r->locale);
  dst->queued_ms = r->queued_ms;
  dst->last_seq = r->last_seq;
  return 0;
}

static void on_queue_request(pg_conn *c, const Parley__V1__QueueRequest *q) {
  if (c->role != PG_ROLE_AGENT) {
    pg_conn_error(c, E(FORBIDDEN), false, "only agents watch queues", NULL, NULL,
                  q->request_id, 0);
    return;
  }
  queue_ctx qc = {.c = c};
  bool any = !q->queue || !q->queue[0];
  for (size_t i = 0; i < c->n_queues; i++)
    if (any || !strcmp(c->queues[i], q->queue))
      pg_store_conv_each(c->g->store, PG_STORE_QUEUED, c->queues[i], queue_one, &qc);
  if (!any) {
    bool watched = false;
    for (size_t i = 0; i < c->n_queues; i++) watched |= !strcmp(c->queues[i], q->queue);
    if (!watched) {
      pg_conn_error(c, E(FORBIDDEN), false, "queue not watched by this agent", NULL, NULL,
                    q->request_id, 0);
      return;
    }
  }
  Parley__V1__QueueResult res = PARLEY__V1__QUEUE_RESULT__INIT;
  res.request_id = q->request_id;
  qc.items = calloc(qc.n ? qc.n : 1, sizeof *qc.items);
  qc.ptrs = calloc(qc.n ? qc.n : 1, sizeof *qc.ptrs);
  if (qc.items && qc.ptrs) {
    for (size_t i = 0; i < qc.n; i++) {
      pg_queue_item(&qc.rows[i], &qc.items[i]);
      qc.ptrs[i] = &qc.items[i];
    }
    res.items = qc.ptrs;
    res.n_items = qc.n;
  }
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_QUEUE_RESULT;
  f.queue_result = &res;
  pg_conn_send_frame(c, &f);
  for (size_t i = 0; i < qc.n; i++) pg_store_conv_clear(&qc.rows[i]);
  free(qc.rows);
  free(qc.items);
  free(qc.ptrs);
}

/* ------------------------------------------------------------------ acks */

static void on_ack(pg_conn *c, pw_frame *f) {
  const Parley__V1__Ack *a = f->ack;
  if (c->role == PG_ROLE_BOT) {
    frame_error(c, E(PROTOCOL), "bots acknowledge through Commit, not Ack");
    pw_frame_free(f);
    return;
  }
  /* The whole frame is checked first: an out-of-range entry changes nothing. */
  for (size_t i = 0; i < a->n_entries; i++) {
    pg_stream *s = pg_router_stream(c, a->entries[i]->conversation, false);
    if (!s || a->entries[i]->up_to_seq > s->high) {
      pg_conn_error(c, E(ACK_OUT_OF_RANGE), false, "ack above the highest seq delivered",
                    a->entries[i]->conversation, NULL, 0, 0);
      pw_frame_free(f);
      return;
    }
  }
  bool raised = false;
  for (size_t i = 0; i < a->n_entries; i++) {
    pg_stream *s = pg_router_stream(c, a->entries[i]->conversation, false);
    uint64_t up = a->entries[i]->up_to_seq;
    if (up <= s->acked) continue; /* below the watermark: ignored */
    pg_router_stream_acked(c, s, up);
    raised = true;
  }
  if (!raised) {
    pw_frame_free(f);
    return;
  }
  pg_apply_enqueue(c->g, c, f);
  pg_router_pump(c);
}

/* ---------------------------------------------------------------- frames */

static bool rate_ok(pg_conn *c, uint32_t *retry_ms) {
  const pg_config *cfg = c->g->cfg;
  if (cfg->rate <= 0) return true;
  uint64_t now = pg_mono_ms();
  c->tokens += (double)(now - c->tokens_ms) * cfg->rate / 1000.0;
  if (c->tokens > cfg->burst) c->tokens = cfg->burst;
  c->tokens_ms = now;
  if (c->tokens >= 1.0) {
    c->tokens -= 1.0;
    return true;
  }
  *retry_ms = (uint32_t)((1.0 - c->tokens) * 1000.0 / cfg->rate) + 1;
  return false;
}

void pg_session_frame(pg_conn *c, const uint8_t *data, size_t len) {
  pg_gateway *g = c->g;
  pw_frame *f = NULL;
  const char *why = NULL;
  int rc = pw_decode(data, len, g->cfg->max_frame_bytes, &f, &why);
  if (rc == PARLEY_ETOOBIG) {
    fatal(c, E(FRAME_TOO_LARGE), "frame larger than max_frame_bytes");
    return;
  }
  if (rc == PARLEY_EUNSUPPORTED) {
    if (c->state == PG_CS_HELLO) fatal(c, E(HELLO_REQUIRED), "the first frame must be Hello");
    else frame_error(c, E(UNSUPPORTED_FRAME), why);
    return;
  }
  if (rc != 0) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s: %s", rc == PARLEY_EMALFORMED ? "malformed" : "invalid",
             why ? why : "?");
    Parley__V1__ErrorCode code = rc == PARLEY_EMALFORMED ? E(MALFORMED) : E(INVALID);
    if (c->state == PG_CS_HELLO) {
      fatal(c, code, msg);
    } else if (rc == PARLEY_EINVAL) {
      /* Name the send or the request, so that the client can fail it at
       * once instead of resending until its deadline. */
      pw_refs r;
      pw_frame_refs(data, len, &r);
      ProtobufCBinaryData id = {.len = r.has_msg_id ? sizeof r.msg_id : 0, .data = r.msg_id};
      pg_conn_error(c, code, false, msg, r.conversation[0] ? r.conversation : NULL,
                    r.has_msg_id ? &id : NULL, r.request_id, 0);
    } else {
      frame_error(c, code, msg);
    }
    return;
  }
  if (c->state == PG_CS_HELLO) {
    if (f->body_case != PARLEY__V1__FRAME__BODY_HELLO)
      fatal(c, E(HELLO_REQUIRED), "the first frame must be Hello");
    else
      on_hello(c, f->hello);
    pw_frame_free(f);
    return;
  }
  if (c->state != PG_CS_OPEN) {
    pw_frame_free(f);
    return;
  }
  switch (f->body_case) {
  case PARLEY__V1__FRAME__BODY_PING: {
    Parley__V1__Pong p = PARLEY__V1__PONG__INIT;
    p.nonce = f->ping->nonce;
    p.time_ms = (int64_t)pg_now_ms();
    pw_frame out = PARLEY__V1__FRAME__INIT;
    out.body_case = PARLEY__V1__FRAME__BODY_PONG;
    out.pong = &p;
    pg_conn_send_frame(c, &out);
    break;
  }
  case PARLEY__V1__FRAME__BODY_PONG:
  case PARLEY__V1__FRAME__BODY_ERROR:
    break;
  case PARLEY__V1__FRAME__BODY_SEND: {
    uint32_t retry = 0;
    if (g->stopping) {
      pg_conn_refuse_send(c, f->send, E(SHUTTING_DOWN), "the gateway is shutting down");
      break;
    }
    if (!rate_ok(c, &retry)) {
      pg_conn_error(c, E(RATE_LIMITED), false, "send rate limit", f->send->conversation,
                    &f->send->client_msg_id, 0, retry);
      pg_conn_refuse_send(c, f->send, E(RATE_LIMITED), "send rate limit");
      break;
    }
    pg_apply_enqueue(g, c, f);
    return;
  }
  case PARLEY__V1__FRAME__BODY_COMMIT:
    if (c->role != PG_ROLE_BOT) {
      pg_conn_error(c, E(FORBIDDEN), false, "only bots commit", NULL, NULL,
                    f->commit->request_id, 0);
      break;
    }
    pg_apply_enqueue(g, c, f);
    return;
  case PARLEY__V1__FRAME__BODY_ACK:
    on_ack(c, f);
    return;
  case PARLEY__V1__FRAME__BODY_FETCH:
    on_fetch(c, f->fetch);
    break;
  case PARLEY__V1__FRAME__BODY_QUEUE_REQUEST:
    on_queue_request(c, f->queue_request);
    break;
  case PARLEY__V1__FRAME__BODY_HELLO:
    frame_error(c, E(PROTOCOL), "Hello after Welcome");
    break;
  default:
    frame_error(c, E(PROTOCOL), "a client does not send this frame");
    break;
  }
  pw_frame_free(f);
}

void pg_session_closed(pg_conn *c) {
  pg_apply_conn_gone(c->g, c);
  if (c->role == PG_ROLE_BOT && c->state != PG_CS_HELLO) pg_router_conn_gone(c);
}
