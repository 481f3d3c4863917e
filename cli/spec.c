/* `parley test <botdir>`: runs a bot's spec files as scripted conversations
 * over the real protocol, in one process on one libuv loop: the embedded
 * gateway, the bot runtime and one customer client per case.
 *
 * The runtime runs on a driver of its own (rt.h) that speaks to the gateway
 * through a real parley_client, like adapter.c does, but answers the bot's
 * HTTP calls from the case's `http:` stubs and reads a simulated clock that
 * only `wait:` steps move. Everything the checks look at comes from the
 * wire: the replies and conversation events the customer receives, and the
 * state the bot commits.
 *
 * With --faults every case runs again while the bot runtime is killed at
 * seeded random moments (freed and created again on the same gateway, so
 * uncommitted events are redelivered and handlers run again) and the
 * customer's connection is dropped and opened again; the customer must
 * still see each reply exactly once and in order.
 */
#include <errno.h>
#include <dirent.h>
#include <getopt.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>
#include <uv.h>

#include <parley/client.h>

#include "cli.h"
#include "config/config.h"
#include "gateway.h"
#include "rt.h"
#include "runtime.h"

#define WB_ITEMS_MAX 512
#define WB_KEYS_MAX 128
#define WB_IDS_MAX 4096
#define WB_HTTP_MAX 32
#define WB_FILES_MAX 64
#define WB_AGENTS_MAX 8
#define WB_STEP_TIMEOUT_MS 15000
#define WB_TICK_MS 20
#define WB_SETTLE_ROUNDS 3
#define WB_COL 58
#define WB_SPEC_AGENT "spec-agent"

typedef struct wb wb;

/* ------------------------------------------------------ the fault layer */

/* A TCP proxy on the loop between the clients and the gateway. In fault
 * runs the bot and the customer connect through it, and it cuts every
 * connection at seeded random moments: the clients see a dropped
 * connection, reconnect and resume on their own. */
#define WB_PAIRS_MAX 64
#define WB_PROXY_QUEUE_MAX (4u << 20)

typedef struct wb_pair wb_pair;
typedef struct wb_side {
  uv_tcp_t tcp;
  wb_pair *pair;
  bool open;
} wb_side;

struct wb_pair {
  wb_side down, up; /* down: the client; up: the gateway */
  uv_connect_t conn;
  struct wb_proxy *px;
  int closing;
  bool cut;
  uint64_t up_since; /* loop time the upstream connected; 0 before */
};

typedef struct wb_proxy {
  uv_loop_t *loop;
  uv_tcp_t listener;
  struct sockaddr_in target;
  int port;
  wb_pair *pairs[WB_PAIRS_MAX];
  size_t n_pairs;
  unsigned cuts;
} wb_proxy;

typedef struct wb_wreq {
  uv_write_t w;
  uv_buf_t buf;
} wb_wreq;

static void px_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  buf->base = malloc(suggested);
  buf->len = buf->base ? suggested : 0;
}

static void px_pair_closed(uv_handle_t *h) {
  wb_side *sd = h->data;
  wb_pair *p = sd->pair;
  if (--p->closing == 0) free(p);
}

static void px_cut(wb_pair *p) {
  if (p->cut) return;
  p->cut = true;
  wb_proxy *px = p->px;
  for (size_t i = 0; i < px->n_pairs; i++)
    if (px->pairs[i] == p) {
      px->pairs[i] = px->pairs[--px->n_pairs];
      break;
    }
  p->closing = 2;
  uv_close((uv_handle_t *)&p->down.tcp, px_pair_closed);
  uv_close((uv_handle_t *)&p->up.tcp, px_pair_closed);
}

static void px_written(uv_write_t *w, int status) {
  (void)status;
  wb_wreq *r = (wb_wreq *)w;
  free(r->buf.base);
  free(r);
}

static void px_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  wb_side *sd = s->data;
  wb_pair *p = sd->pair;
  if (n < 0 || p->cut) {
    free(buf->base);
    if (n < 0) px_cut(p);
    return;
  }
  if (n == 0) {
    free(buf->base);
    return;
  }
  wb_side *other = sd == &p->down ? &p->up : &p->down;
  /* A peer that does not read cannot make the proxy hold without bound. */
  if (uv_stream_get_write_queue_size((uv_stream_t *)&other->tcp) > WB_PROXY_QUEUE_MAX) {
    free(buf->base);
    px_cut(p);
    return;
  }
  wb_wreq *r = malloc(sizeof *r);
  if (!r) {
    free(buf->base);
    px_cut(p);
    return;
  }
  r->buf = uv_buf_init(buf->base, (unsigned)n);
  if (uv_write(&r->w, (uv_stream_t *)&other->tcp, &r->buf, 1, px_written) != 0) {
    free(buf->base);
    free(r);
    px_cut(p);
  }
}

static void px_connected(uv_connect_t *c, int status) {
  wb_pair *p = c->data;
  if (p->cut) return;
  if (status < 0) {
    px_cut(p);
    return;
  }
  p->up_since = uv_now(p->px->loop);
  uv_read_start((uv_stream_t *)&p->up.tcp, px_alloc, px_read);
  uv_read_start((uv_stream_t *)&p->down.tcp, px_alloc, px_read);
}

static void px_accept(uv_stream_t *server, int status) {
  wb_proxy *px = server->data;
  if (status < 0) return;
  wb_pair *p = calloc(1, sizeof *p);
  if (!p) return;
  p->px = px;
  p->down.pair = p->up.pair = p;
  uv_tcp_init(px->loop, &p->down.tcp);
  uv_tcp_init(px->loop, &p->up.tcp);
  p->down.tcp.data = &p->down;
  p->up.tcp.data = &p->up;
  p->conn.data = p;
  if (px->n_pairs >= WB_PAIRS_MAX || uv_accept(server, (uv_stream_t *)&p->down.tcp) != 0) {
    p->cut = true;
    p->closing = 2;
    uv_close((uv_handle_t *)&p->down.tcp, px_pair_closed);
    uv_close((uv_handle_t *)&p->up.tcp, px_pair_closed);
    return;
  }
  px->pairs[px->n_pairs++] = p;
  uv_tcp_nodelay(&p->down.tcp, 1);
  uv_tcp_nodelay(&p->up.tcp, 1);
  if (uv_tcp_connect(&p->conn, &p->up.tcp, (const struct sockaddr *)&px->target, px_connected))
    px_cut(p);
}

static int px_start(wb_proxy *px, uv_loop_t *loop, int target_port) {
  memset(px, 0, sizeof *px);
  px->loop = loop;
  uv_ip4_addr("127.0.0.1", target_port, &px->target);
  struct sockaddr_in any;
  uv_ip4_addr("127.0.0.1", 0, &any);
  uv_tcp_init(loop, &px->listener);
  px->listener.data = px;
  if (uv_tcp_bind(&px->listener, (const struct sockaddr *)&any, 0) != 0 ||
      uv_listen((uv_stream_t *)&px->listener, 64, px_accept) != 0)
    return PARLEY_EIO;
  struct sockaddr_storage ss;
  int len = sizeof ss;
  uv_tcp_getsockname(&px->listener, (struct sockaddr *)&ss, &len);
  px->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  return 0;
}

/* Cuts every connection through the proxy that has been up for a while.
 * A connection closed within moments of its accept has made the gateway's
 * libwebsockets-on-libuv loop re-arm the closed descriptor and abort, so
 * young connections are left alone. */
#define WB_CUT_MIN_AGE_MS 250
static void px_cut_all(wb_proxy *px) {
  uint64_t now = uv_now(px->loop);
  for (size_t i = 0; i < px->n_pairs;) {
    wb_pair *p = px->pairs[i];
    if (p->up_since && now - p->up_since >= WB_CUT_MIN_AGE_MS) {
      px_cut(p); /* moves the last pair to i */
      px->cuts++;
    } else {
      i++;
    }
  }
}

static void px_close_all(wb_proxy *px) {
  while (px->n_pairs) px_cut(px->pairs[0]);
}

static void px_stop(wb_proxy *px, uv_close_cb cb) {
  px_close_all(px);
  uv_close((uv_handle_t *)&px->listener, cb);
}


/* One thing the customer saw in the conversation. */
typedef struct wb_item {
  uint64_t seq;
  int kind;          /* parley_event_kind */
  char *sender;
  bool from_bot;
  int ctype;         /* parley_content_kind of a message */
  char *text, *title, *image, *labels; /* labels: "\n"-joined */
  size_t n_labels;
  uint64_t quote_seq;
  char *quote_excerpt;
  char *queue, *note, *assignee, *tags, *locale;
  uint8_t id[PARLEY_MSG_ID_LEN];
  bool has_id;
  int step;
} wb_item;

/* An HTTP request answered from a stub on the next loop turn. */
typedef struct wb_http {
  uv_timer_t t;
  wb *w;
  plr_http_done done;
  void *cb_ud;
  int status;
  char *body, *error;
  bool active;
} wb_http;

/* The bot side: a runtime on our driver, and its client. */
typedef struct wb_bot {
  wb *w;
  plr_runtime *rt;
  parley_client *client;
  bool closed;
} wb_bot;

/* An event of the conversation held back from the bot during an `open`
 * step, deep-copied because the client's pointers are borrowed. */
#define WB_HELD_MAX 64
#define WB_HELD_ALLOCS 256
typedef struct wb_held {
  parley_event ev;
  parley_button buttons[16];
  const char *tags[32], *tags_add[32], *tags_remove[32], *state_keys[32];
  void *allocs[WB_HELD_ALLOCS];
  size_t n_allocs;
} wb_held;

typedef struct wb_agent {
  char name[64];
  parley_client *client;
} wb_agent;

struct wb {
  uv_loop_t *loop;
  uv_timer_t tick;
  pg_gateway *gw;
  pg_config *gw_cfg;
  char url[128], token[33], data_dir[256], bot_dir[1024], principal[128];
  wb_bot *bot;
  wb_agent agents[WB_AGENTS_MAX];
  size_t n_agents;
  /* Simulated clock: wall time at start plus what `wait:` added. */
  int64_t clock_base, clock_offset;
  /* msg id -> inbound seq of the handler that sent it (derive hook). */
  uint8_t ids[WB_IDS_MAX][PARLEY_MSG_ID_LEN];
  uint64_t id_seqs[WB_IDS_MAX];
  size_t n_ids;
  /* Current case. */
  const pc_node *stubs;
  char conv[96];
  char locale[64], default_locale[64];
  parley_client *cust;
  unsigned cust_pending, cust_failures;
  uint64_t cust_last_seq, cust_seen, need_seq;
  wb_item items[WB_ITEMS_MAX];
  size_t n_items;
  int step;
  bool with_bot;
  char *cur_tags, *step_start_tags;
  char *state_keys[WB_KEYS_MAX], *state_vals[WB_KEYS_MAX];
  size_t n_state;
  unsigned bot_pending;
  uint64_t bot_max_acked;
  char last_taker[64];
  uint64_t handoff_need;  /* customer events before the last handoff */
  bool bot_has_conv;      /* the current runtime was assigned the conversation */
  char notes[1024]; /* problems seen on the wire during the step */
  bool dup_reply;
  /* Open step: the customer's opening message and what follows it wait
   * until the bot is done with the opening events. */
  bool gate;
  wb_held *held[WB_HELD_MAX];
  size_t n_held;
  /* Faults. */
  bool faults;
  uint64_t rng;
  uv_timer_t kill_timer, cut_timer, rebirth_timer;
  bool kill_armed, cut_armed, rebirth_armed;
  unsigned kills, reconnects;
  wb_proxy proxy;
  bool proxy_on;
  char proxy_url[128];
  bool verbose;
};

static char *xdup(const char *s) { return strdup(s ? s : ""); }

static void note(wb *w, const char *fmt, ...) {
  size_t n = strlen(w->notes);
  if (n + 2 >= sizeof w->notes) return;
  if (n) w->notes[n++] = ';', w->notes[n++] = ' ', w->notes[n] = 0;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(w->notes + n, sizeof w->notes - n, fmt, ap);
  va_end(ap);
}

static uint64_t rnd(wb *w) {
  /* xorshift64*: reproducible from --seed. */
  uint64_t x = w->rng;
  x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
  w->rng = x;
  return x * 2685821657736338717ULL;
}


/* ----------------------------------------------------------- state keys */

static void state_clear(wb *w) {
  for (size_t i = 0; i < w->n_state; i++) free(w->state_keys[i]), free(w->state_vals[i]);
  w->n_state = 0;
}

static void state_set(wb *w, const char *key, const char *json, size_t len, bool deleted) {
  size_t i;
  for (i = 0; i < w->n_state; i++)
    if (!strcmp(w->state_keys[i], key)) break;
  if (deleted) {
    if (i < w->n_state) {
      free(w->state_keys[i]), free(w->state_vals[i]);
      w->state_keys[i] = w->state_keys[w->n_state - 1];
      w->state_vals[i] = w->state_vals[w->n_state - 1];
      w->n_state--;
    }
    return;
  }
  char *v = malloc(len + 1);
  if (!v) return;
  memcpy(v, json, len);
  v[len] = 0;
  if (i < w->n_state) {
    free(w->state_vals[i]);
    w->state_vals[i] = v;
  } else if (w->n_state < WB_KEYS_MAX) {
    w->state_keys[w->n_state] = xdup(key);
    w->state_vals[w->n_state++] = v;
  } else {
    free(v);
  }
}

static const char *state_get(wb *w, const char *key) {
  for (size_t i = 0; i < w->n_state; i++)
    if (!strcmp(w->state_keys[i], key)) return w->state_vals[i];
  return NULL;
}

/* ---------------------------------------------------------------- driver */

static const char *keep(wb_held *h, const char *str) {
  if (!str || h->n_allocs >= WB_HELD_ALLOCS) return NULL;
  char *d = strdup(str);
  if (d) h->allocs[h->n_allocs++] = d;
  return d;
}

static size_t keep_list(wb_held *h, const char **dst, size_t max, const char *const *src,
                        size_t n) {
  size_t k = n < max ? n : max;
  for (size_t i = 0; i < k; i++) dst[i] = keep(h, src[i]);
  return k;
}

static void held_free(wb_held *h) {
  if (!h) return;
  for (size_t i = 0; i < h->n_allocs; i++) free(h->allocs[i]);
  free(h);
}

static wb_held *held_copy(const parley_event *src) {
  wb_held *h = calloc(1, sizeof *h);
  if (!h) return NULL;
  parley_event *e = &h->ev;
  *e = *src;
  e->conversation = keep(h, src->conversation);
  e->sender = keep(h, src->sender);
  e->assignee = keep(h, src->assignee);
  e->locale = keep(h, src->locale);
  e->customer = keep(h, src->customer);
  parley_content *c = &e->content;
  c->text = keep(h, src->content.text);
  c->title = keep(h, src->content.title);
  c->image_url = keep(h, src->content.image_url);
  c->payload = keep(h, src->content.payload);
  c->label = keep(h, src->content.label);
  c->fallback = keep(h, src->content.fallback);
  c->n_buttons = src->content.n_buttons < 16 ? src->content.n_buttons : 16;
  for (size_t i = 0; i < c->n_buttons; i++) {
    h->buttons[i].label = keep(h, src->content.buttons[i].label);
    h->buttons[i].payload = keep(h, src->content.buttons[i].payload);
    h->buttons[i].url = keep(h, src->content.buttons[i].url);
  }
  c->buttons = h->buttons;
  e->quote.excerpt = keep(h, src->quote.excerpt);
  e->quote.sender = keep(h, src->quote.sender);
  e->action.queue = keep(h, src->action.queue);
  e->action.note = keep(h, src->action.note);
  e->action.locale = keep(h, src->action.locale);
  e->action.n_tags_add = keep_list(h, h->tags_add, 32, src->action.tags_add, src->action.n_tags_add);
  e->action.tags_add = h->tags_add;
  e->action.n_tags_remove =
      keep_list(h, h->tags_remove, 32, src->action.tags_remove, src->action.n_tags_remove);
  e->action.tags_remove = h->tags_remove;
  e->n_tags = keep_list(h, h->tags, 32, src->tags, src->n_tags);
  e->tags = h->tags;
  e->n_state_keys = keep_list(h, h->state_keys, 32, src->state_keys, src->n_state_keys);
  e->state_keys = h->state_keys;
  return h;
}

static void held_drop_all(wb *w) {
  for (size_t i = 0; i < w->n_held; i++) held_free(w->held[i]);
  w->n_held = 0;
}

static void bot_cb_event(parley_client *c, const parley_event *ev, void *ud) {
  (void)c;
  wb_bot *b = ud;
  wb *w = b->w;
  if (w->gate && !strcmp(ev->conversation, w->conv) &&
      (w->n_held || (ev->kind == PARLEY_EVENT_MESSAGE && ev->sender_role == PARLEY_ROLE_CUSTOMER))) {
    for (size_t i = 0; i < w->n_held; i++)
      if (w->held[i]->ev.seq == ev->seq) return; /* pushed again: held once */
    wb_held *h = w->n_held < WB_HELD_MAX ? held_copy(ev) : NULL;
    if (h) w->held[w->n_held++] = h;
    else note(w, "too many events held during the open step");
    return;
  }
  if (b->rt) plr_rt_on_event(b->rt, ev);
}

static void bot_cb_send_result(parley_client *c, const parley_send_result *r, void *send_ud,
                               void *ud) {
  (void)c;
  wb_bot *b = ud;
  wb *w = b->w;
  if (r->conversation && !strcmp(r->conversation, w->conv)) {
    if (w->bot_pending) w->bot_pending--;
    if (r->status == 0 && r->seq > w->bot_max_acked) w->bot_max_acked = r->seq;
  }
  if (b->rt) plr_rt_on_send_result(b->rt, r, send_ud);
}

static void bot_cb_commit_result(parley_client *c, const parley_commit_result *r, void *ud) {
  (void)c;
  wb_bot *b = ud;
  if (b->rt) plr_rt_on_commit_result(b->rt, r);
}

static void bot_cb_assign(parley_client *c, const parley_assignment *a, void *ud) {
  (void)c;
  wb_bot *b = ud;
  wb *w = b->w;
  if (!strcmp(a->conversation, w->conv)) {
    w->bot_has_conv = true;
    /* The assignment carries the state as committed: it replaces ours. */
    state_clear(w);
    for (size_t i = 0; i < a->n_state; i++)
      if (!a->state[i].deleted)
        state_set(w, a->state[i].key, a->state[i].value,
                  a->state[i].value_len ? a->state[i].value_len : strlen(a->state[i].value), false);
  }
  if (b->rt) plr_rt_on_assign(b->rt, a);
}

static void bot_cb_revoke(parley_client *c, const char *conv, uint64_t epoch, const char *reason,
                          void *ud) {
  (void)c;
  wb_bot *b = ud;
  if (b->rt) plr_rt_on_revoke(b->rt, conv, epoch, reason);
}

static void bot_cb_state(parley_client *c, parley_conn_state st, int status, void *ud) {
  (void)c, (void)status;
  wb_bot *b = ud;
  if (st == PARLEY_CONN_CLOSED && !b->closed) {
    b->closed = true;
    if (b->rt) plr_rt_on_stopped(b->rt);
  }
}

static void bot_cb_error(parley_client *c, int status, const char *message, void *ud) {
  (void)c;
  wb_bot *b = ud;
  if (b->w->verbose)
    fprintf(stderr, "parley test: bot: gateway error: %s%s%s\n", parley_strerror(status),
            message ? ": " : "", message ? message : "");
}

static int d_send(void *ud, const char *conv, const parley_content *content,
                  const parley_quote *quote, const uint8_t id[PARLEY_MSG_ID_LEN], uint64_t epoch,
                  void *send_ud) {
  wb_bot *b = ud;
  int rc = parley_client_send(b->client, conv, content, quote, id, epoch, send_ud);
  if (rc == 0 && !strcmp(conv, b->w->conv)) b->w->bot_pending++;
  return rc;
}

static int d_action(void *ud, const char *conv, const parley_action *action,
                    const uint8_t id[PARLEY_MSG_ID_LEN], uint64_t epoch, void *send_ud) {
  wb_bot *b = ud;
  int rc = parley_client_action(b->client, conv, action, id, epoch, send_ud);
  if (rc == 0 && !strcmp(conv, b->w->conv)) b->w->bot_pending++;
  return rc;
}

static int d_commit(void *ud, const parley_commit *commits, size_t n) {
  wb_bot *b = ud;
  wb *w = b->w;
  /* The committed state as the gateway will store it; an assignment
   * (after a restart) replaces it with the stored one. */
  for (size_t i = 0; i < n; i++) {
    if (strcmp(commits[i].conversation, w->conv)) continue;
    for (size_t k = 0; k < commits[i].n_state; k++) {
      const parley_state_entry *e = &commits[i].state[k];
      state_set(w, e->key, e->value ? e->value : "", e->value ? (e->value_len ? e->value_len : strlen(e->value)) : 0,
                e->deleted || !e->value);
    }
  }
  return parley_client_commit(b->client, commits, n);
}

static void http_closed(uv_handle_t *h) {
  wb_http *q = h->data;
  free(q->body);
  free(q->error);
  free(q);
}

static void http_fire(uv_timer_t *t) {
  wb_http *q = t->data;
  q->active = false;
  plr_http_resp r = {.status = q->status,
                     .body = q->body ? q->body : "",
                     .body_len = q->body ? strlen(q->body) : 0,
                     .error = q->error};
  q->done(q->cb_ud, &r);
  uv_close((uv_handle_t *)&q->t, http_closed);
}

/* Finds the case's stub for "METHOD URL". */
static int d_http(void *ud, const plr_http_req *req, plr_http_done done, void *cb_ud,
                  void **handle) {
  wb_bot *b = ud;
  wb *w = b->w;
  char want[2048];
  snprintf(want, sizeof want, "%s %s", req->method ? req->method : "GET", req->url);
  const pc_node *stub = NULL;
  for (size_t i = 0; i < pc_len(w->stubs); i++) {
    const char *r = pc_scalar(pc_get(pc_at(w->stubs, i), "request"));
    if (r && !strcmp(r, want)) {
      stub = pc_at(w->stubs, i);
      break;
    }
  }
  wb_http *q = calloc(1, sizeof *q);
  if (!q) return PARLEY_ENOMEM;
  q->w = w;
  q->done = done;
  q->cb_ud = cb_ud;
  if (!stub) {
    note(w, "no http stub for \"%s\"", want);
    q->error = xdup("no stub in the spec for this request");
  } else if (pc_get(stub, "error")) {
    q->error = xdup(pc_scalar(pc_get(stub, "error")));
  } else {
    const char *st = pc_scalar(pc_get(stub, "status"));
    q->status = st ? atoi(st) : 200;
    q->body = xdup(pc_scalar(pc_get(stub, "body")));
  }
  uv_timer_init(w->loop, &q->t);
  q->t.data = q;
  q->active = true;
  uv_timer_start(&q->t, http_fire, 0, 0);
  *handle = q;
  return 0;
}

static void d_http_cancel(void *ud, void *handle) {
  (void)ud;
  wb_http *q = handle;
  if (q && q->active) {
    q->active = false;
    uv_timer_stop(&q->t);
    uv_close((uv_handle_t *)&q->t, http_closed);
  }
}

static int64_t d_now(void *ud) {
  wb_bot *b = ud;
  return b->w->clock_base + b->w->clock_offset;
}

/* Remembers which inbound seq a reply id belongs to, so replies can be
 * told apart from the greeting of an implicit open. */
static void d_derive(const char *principal, const char *conversation, uint64_t seq,
                     uint32_t ordinal, uint8_t out[PARLEY_MSG_ID_LEN]);
static wb *derive_owner; /* the one runner of this process */
static void d_derive(const char *principal, const char *conversation, uint64_t seq,
                     uint32_t ordinal, uint8_t out[PARLEY_MSG_ID_LEN]) {
  parley_msg_id_derive(principal, conversation, seq, ordinal, out);
  wb *w = derive_owner;
  if (!w) return;
  size_t i = w->n_ids % WB_IDS_MAX;
  memcpy(w->ids[i], out, PARLEY_MSG_ID_LEN);
  w->id_seqs[i] = seq;
  w->n_ids++;
}

static uint64_t inbound_of(wb *w, const uint8_t id[PARLEY_MSG_ID_LEN]) {
  size_t n = w->n_ids < WB_IDS_MAX ? w->n_ids : WB_IDS_MAX;
  for (size_t i = 0; i < n; i++)
    if (!memcmp(w->ids[i], id, PARLEY_MSG_ID_LEN)) return w->id_seqs[i];
  return 0;
}

static void d_stop(void *ud, uint32_t drain_ms) {
  wb_bot *b = ud;
  if (!b->client || parley_client_stop(b->client, drain_ms) != 0) {
    b->closed = true;
    if (b->rt) plr_rt_on_stopped(b->rt);
  }
}

static int d_start(void *ud) {
  wb_bot *b = ud;
  return parley_client_start(b->client);
}

static void d_destroy(void *ud) {
  wb_bot *b = ud;
  parley_client_free(b->client);
  free(b);
}

/* Fault runs connect the bot and the customer through the fault layer. */
static const char *client_url(wb *w) { return w->faults && w->proxy_on ? w->proxy_url : w->url; }

static int bot_new(wb *w, char *err, size_t errlen) {
  wb_bot *b = calloc(1, sizeof *b);
  if (!b) return PARLEY_ENOMEM;
  b->w = w;
  plr_driver d = {.send = d_send,
                  .action = d_action,
                  .commit = d_commit,
                  .http = d_http,
                  .http_cancel = d_http_cancel,
                  .now_ms = d_now,
                  .derive = d_derive,
                  .stop = d_stop,
                  .start = d_start,
                  .destroy = d_destroy,
                  .ud = b};
  plr_options o = {.loop = w->loop,
                   .bot_dir = w->bot_dir,
                   .url = client_url(w),
                   .principal = w->principal,
                   .token = w->token,
                   .log_out = stderr,
                   .log_level = w->verbose ? 1 : 3};
  int rc = plr_runtime_new_driver(&o, &d, &b->rt, err, errlen);
  if (rc) {
    free(b);
    return rc;
  }
  parley_client_options co = PARLEY_CLIENT_OPTIONS_INIT;
  co.url = client_url(w);
  co.principal = plr_rt_principal(b->rt);
  co.token = w->token;
  co.role = PARLEY_ROLE_BOT;
  co.loop = w->loop;
  co.tuning.seed = rnd(w);
  co.cb.on_event = bot_cb_event;
  co.cb.on_send_result = bot_cb_send_result;
  co.cb.on_commit_result = bot_cb_commit_result;
  co.cb.on_assign = bot_cb_assign;
  co.cb.on_revoke = bot_cb_revoke;
  co.cb.on_state = bot_cb_state;
  co.cb.on_error = bot_cb_error;
  co.user_data = b;
  if ((rc = parley_client_new(&co, &b->client)) != 0) {
    snprintf(err, errlen, "cannot create the bot's client: %s", parley_strerror(rc));
    plr_runtime_free(b->rt); /* destroys b */
    return rc;
  }
  if ((rc = plr_runtime_start(b->rt)) != 0) {
    snprintf(err, errlen, "cannot start the bot: %s", parley_strerror(rc));
    plr_runtime_free(b->rt);
    return rc;
  }
  w->bot = b;
  return 0;
}

/* A freed client's transport closes some of its descriptors twice, the
 * second time a few loop turns later; a descriptor opened in between (by
 * a new connection) would be closed under its new owner. So nothing new
 * connects until this long after a client was freed. */
#define WB_FREE_QUIET_MS 150

static void rebirth_fire(uv_timer_t *t) {
  wb *w = t->data;
  w->rebirth_armed = false;
  char err[1024];
  if (bot_new(w, err, sizeof err) != 0) note(w, "the bot did not come back after a kill: %s", err);
}

/* A kill: the runtime is freed with whatever it had in flight, and a new
 * one connects to the same gateway a moment later. */
static void bot_kill(wb *w) {
  if (w->bot) plr_runtime_free(w->bot->rt);
  w->bot = NULL;
  w->bot_pending = 0;
  w->bot_has_conv = false;
  w->kills++;
  /* The held events were the dead runtime's; the gateway pushes them to
   * the new one, and the gate holds them again. */
  held_drop_all(w);
  w->rebirth_armed = true;
  uv_timer_start(&w->rebirth_timer, rebirth_fire, WB_FREE_QUIET_MS, 0);
}

/* ------------------------------------------------------------- customer */

static void join_labels(const parley_content *ct, char **out, size_t *n) {
  size_t len = 1;
  for (size_t i = 0; i < ct->n_buttons; i++)
    len += strlen(ct->buttons[i].label ? ct->buttons[i].label : "") + 1;
  char *s = malloc(len);
  if (!s) return;
  s[0] = 0;
  for (size_t i = 0; i < ct->n_buttons; i++) {
    if (i) strcat(s, "\n");
    strcat(s, ct->buttons[i].label ? ct->buttons[i].label : "");
  }
  *out = s;
  *n = ct->n_buttons;
}

static char *join_tags(const char *const *tags, size_t n) {
  size_t len = 1;
  for (size_t i = 0; i < n; i++) len += strlen(tags[i]) + 1;
  char *s = malloc(len);
  if (!s) return NULL;
  s[0] = 0;
  for (size_t i = 0; i < n; i++) {
    if (i) strcat(s, "\n");
    strcat(s, tags[i]);
  }
  return s;
}

static void cust_on_event(parley_client *c, const parley_event *ev, void *ud) {
  (void)c;
  wb *w = ud;
  if (strcmp(ev->conversation, w->conv)) return;
  /* A customer connection opened again gets what was not acknowledged
   * again; the transcript keeps the first copy. */
  if (ev->seq <= w->cust_seen) return;
  w->cust_seen = ev->seq;
  bool from_bot = ev->sender && !strcmp(ev->sender, w->principal);
  if (ev->kind == PARLEY_EVENT_OPENED ||
      ev->sender_role == PARLEY_ROLE_CUSTOMER || ev->sender_role == PARLEY_ROLE_AGENT)
    if (ev->seq > w->need_seq) w->need_seq = ev->seq;
  switch (ev->kind) {
  case PARLEY_EVENT_HANDED_OFF:
    /* Waiting in the queue the conversation is still the bot's; it leaves
     * the bot when an agent takes it (ASSIGNED below). */
    w->handoff_need = w->need_seq;
    break;
  case PARLEY_EVENT_CLOSED: w->with_bot = false; break;
  case PARLEY_EVENT_HANDED_BACK: w->with_bot = true; break;
  case PARLEY_EVENT_ASSIGNED:
    w->with_bot = ev->assignee && !strcmp(ev->assignee, w->principal);
    break;
  case PARLEY_EVENT_TAGGED:
    free(w->cur_tags);
    w->cur_tags = join_tags(ev->tags, ev->n_tags);
    break;
  default: break;
  }
  if (ev->kind == PARLEY_EVENT_STATE_CHANGED) return; /* the state is checked from commits */
  if (w->n_items >= WB_ITEMS_MAX) {
    note(w, "more than %d events in one case", WB_ITEMS_MAX);
    return;
  }
  wb_item *it = &w->items[w->n_items++];
  memset(it, 0, sizeof *it);
  it->seq = ev->seq;
  it->kind = ev->kind;
  it->sender = xdup(ev->sender);
  it->from_bot = from_bot;
  it->step = w->step;
  it->has_id = ev->has_msg_id;
  memcpy(it->id, ev->msg_id, PARLEY_MSG_ID_LEN);
  if (ev->kind == PARLEY_EVENT_MESSAGE) {
    const parley_content *ct = &ev->content;
    it->ctype = ct->kind;
    it->text = xdup(ct->kind == PARLEY_CONTENT_POSTBACK ? (ct->label ? ct->label : ct->payload)
                                                       : ct->text);
    it->title = xdup(ct->title);
    it->image = xdup(ct->image_url);
    join_labels(ct, &it->labels, &it->n_labels);
    it->quote_seq = ev->quote.seq;
    it->quote_excerpt = xdup(ev->quote.excerpt);
    /* Exactly once: a reply id seen at two places is a duplicate. */
    if (from_bot && ev->has_msg_id)
      for (size_t i = 0; i + 1 < w->n_items; i++)
        if (w->items[i].has_id && !memcmp(w->items[i].id, ev->msg_id, PARLEY_MSG_ID_LEN)) {
          note(w, "reply #%llu repeats the message id of #%llu", (unsigned long long)ev->seq,
               (unsigned long long)w->items[i].seq);
          w->dup_reply = true;
        }
  } else {
    it->queue = xdup(ev->action.queue);
    it->note = xdup(ev->action.note);
    it->assignee = xdup(ev->assignee);
    it->locale = xdup(ev->locale);
    if (ev->kind == PARLEY_EVENT_TAGGED) it->tags = join_tags(ev->tags, ev->n_tags);
  }
}

static void cust_on_send_result(parley_client *c, const parley_send_result *r, void *send_ud,
                                void *ud) {
  (void)c, (void)send_ud;
  wb *w = ud;
  if (w->cust_pending) w->cust_pending--;
  if (r->status == 0) {
    if (r->seq > w->cust_last_seq) w->cust_last_seq = r->seq;
  } else {
    w->cust_failures++;
    note(w, "customer send failed: %s%s%s", parley_strerror(r->status), r->message ? ": " : "",
         r->message ? r->message : "");
  }
}

static int cust_new(wb *w) {
  parley_client_options co = PARLEY_CLIENT_OPTIONS_INIT;
  co.url = client_url(w);
  co.principal = "customer";
  co.token = w->token;
  co.role = PARLEY_ROLE_CUSTOMER;
  co.locale = w->locale[0] ? w->locale : NULL;
  co.loop = w->loop;
  co.tuning.seed = rnd(w);
  co.cb.on_event = cust_on_event;
  co.cb.on_send_result = cust_on_send_result;
  co.user_data = w;
  int rc = parley_client_new(&co, &w->cust);
  if (rc == 0) rc = parley_client_start(w->cust);
  return rc;
}

/* ---------------------------------------------------------------- agents */

static void agent_on_send_result(parley_client *c, const parley_send_result *r, void *send_ud,
                                 void *ud) {
  (void)c, (void)send_ud;
  wb *w = ud;
  if (w->cust_pending) w->cust_pending--;
  if (r->status != 0)
    note(w, "agent action failed: %s%s%s", parley_strerror(r->status), r->message ? ": " : "",
         r->message ? r->message : "");
}

static parley_client *agent_get(wb *w, const char *name) {
  for (size_t i = 0; i < w->n_agents; i++)
    if (!strcmp(w->agents[i].name, name)) return w->agents[i].client;
  return NULL;
}

/* ------------------------------------------------------------ the loop */

static void on_tick(uv_timer_t *t) { (void)t; }

typedef bool (*wb_cond)(wb *w);

static bool pump_until(wb *w, wb_cond cond, uint32_t timeout_ms) {
  uint64_t deadline = uv_now(w->loop) + timeout_ms;
  while (!cond(w)) {
    if (uv_now(w->loop) > deadline) return false;
    uv_run(w->loop, UV_RUN_ONCE);
  }
  return true;
}

static bool cond_cust_ready(wb *w) {
  return w->cust && parley_client_state(w->cust) == PARLEY_CONN_READY;
}

static bool cond_never(wb *w) {
  (void)w;
  return false;
}

/* Lets a freed client's transport finish closing (see WB_FREE_QUIET_MS). */
static void quiet_after_free(wb *w) { pump_until(w, cond_never, WB_FREE_QUIET_MS); }

static bool cond_no_kill(wb *w) { return !w->kill_armed && !w->rebirth_armed && w->bot; }

static bool cond_bot_ready(wb *w) {
  return !w->bot || parley_client_state(w->bot->client) == PARLEY_CONN_READY;
}

static bool cond_agents_ready(wb *w) {
  for (size_t i = 0; i < w->n_agents; i++)
    if (parley_client_state(w->agents[i].client) != PARLEY_CONN_READY) return false;
  return true;
}

/* The bot is done with what the step caused: nothing in flight on either
 * side, the bot committed every event it must handle, and the customer saw
 * every reply the gateway stored. Checked a few ticks in a row because a
 * reply may still be on the wire. */
static int settle_rounds;
static bool settled_once(wb *w) {
  if (!w->bot || !w->bot->rt) return false;
  /* Timers due on the simulated clock fire now rather than on the real one. */
  plr_rt_fire_due(w->bot->rt);
  /* A customer that is reconnecting has not been told everything yet. */
  if (!w->cust || parley_client_state(w->cust) != PARLEY_CONN_READY) return false;
  bool ok = w->cust_pending == 0 && w->bot_pending == 0 && !plr_runtime_busy(w->bot->rt) &&
            w->cust_seen >= w->bot_max_acked && w->cust_seen >= w->cust_last_seq;
  uint64_t need = w->need_seq;
  if (w->gate) {
    /* Settled when the bot is done with everything before the opening
     * message, which it has not been given yet. */
    if (!w->n_held) return false;
    need = w->held[0]->ev.seq - 1;
  }
  if (ok && w->with_bot) ok = plr_runtime_committed(w->bot->rt, w->conv) >= need;
  /* Every event the gateway stored, including what the bot's commit
   * produced (tags, state changes), reached the customer: a push dropped by
   * the fault switches comes back by redelivery. */
  if (ok && w->gw && w->conv[0]) ok = w->cust_seen >= pg_gateway_last_seq(w->gw, w->conv);
  /* After a handoff the bot still commits the handler that handed off
   * (its state and tags come with that commit). A runtime that never held
   * the conversation (a new one after a kill) cannot: the commit then
   * comes with the hand back, when the event is handled again. */
  if (ok && !w->with_bot && w->bot_has_conv)
    ok = plr_runtime_committed(w->bot->rt, w->conv) >= w->handoff_need;
  return ok;
}

static bool cond_settled(wb *w) {
  if (settled_once(w)) {
    if (++settle_rounds >= WB_SETTLE_ROUNDS) return true;
  } else {
    settle_rounds = 0;
  }
  /* Let a tick pass between checks. */
  uv_run(w->loop, UV_RUN_ONCE);
  return false;
}

static void cut_fire(uv_timer_t *t) {
  wb *w = t->data;
  w->cut_armed = false;
  px_cut_all(&w->proxy);
}

/* A client is freed only while it is connected: freeing one in the middle
 * of reconnecting (after a cut) has aborted in the transport's teardown,
 * so a kill that falls there waits for the connection to be back. */
static void kill_fire(uv_timer_t *t) {
  wb *w = t->data;
  if (!w->bot || parley_client_state(w->bot->client) != PARLEY_CONN_READY) {
    uv_timer_start(&w->kill_timer, kill_fire, 5, 0);
    return;
  }
  w->kill_armed = false;
  bot_kill(w);
}

/* --------------------------------------------------------------- output */

typedef struct lines {
  char *buf[256];
  size_t n;
} lines;

static void add_line(lines *l, const char *fmt, ...) {
  if (l->n >= 256) return;
  char tmp[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  l->buf[l->n++] = xdup(tmp);
}

static void free_lines(lines *l) {
  for (size_t i = 0; i < l->n; i++) free(l->buf[i]);
  l->n = 0;
}

/* A YAML node in flow style: "x", [a, b], {k: v}. */
static void flow(const pc_node *n, char *out, size_t size) {
  size_t len = strlen(out);
  switch (pc_node_kind(n)) {
  case PC_SCALAR: snprintf(out + len, size - len, "%s", pc_scalar(n)); break;
  case PC_SEQ:
    snprintf(out + len, size - len, "[");
    for (size_t i = 0; i < pc_len(n); i++) {
      if (i) strncat(out, ", ", size - strlen(out) - 1);
      flow(pc_at(n, i), out, size);
    }
    strncat(out, "]", size - strlen(out) - 1);
    break;
  case PC_MAP:
    snprintf(out + len, size - len, "{");
    for (size_t i = 0; i < pc_len(n); i++) {
      len = strlen(out);
      snprintf(out + len, size - len, "%s%s: ", i ? ", " : "", pc_key_at(n, i));
      flow(pc_at(n, i), out, size);
    }
    strncat(out, "}", size - strlen(out) - 1);
    break;
  default: strncat(out, "null", size - strlen(out) - 1); break;
  }
}

static void render_item(lines *l, const wb_item *it) {
  const char *who = it->from_bot ? "bot" : it->sender && it->sender[0] ? it->sender : "gateway";
  if (it->kind == PARLEY_EVENT_MESSAGE) {
    char labels[1024] = "";
    if (it->labels)
      for (const char *p = it->labels; *p; p++) {
        size_t k = strlen(labels);
        if (k + 3 >= sizeof labels) break;
        if (*p == '\n') strcat(labels, " | ");
        else labels[k] = *p, labels[k + 1] = 0;
      }
    switch (it->ctype) {
    case PARLEY_CONTENT_CARD:
      add_line(l, "%s: card \"%s\"", who, it->title);
      if (it->text[0]) add_line(l, "  text: \"%s\"", it->text);
      if (it->n_labels) add_line(l, "  buttons: [%s]", labels);
      break;
    case PARLEY_CONTENT_QUICK_REPLIES:
      add_line(l, "%s: quick_replies \"%s\"", who, it->text);
      if (it->n_labels) add_line(l, "  options: [%s]", labels);
      break;
    case PARLEY_CONTENT_IMAGE: add_line(l, "%s: image %s \"%s\"", who, it->image, it->text); break;
    case PARLEY_CONTENT_POSTBACK: add_line(l, "%s: pressed \"%s\"", who, it->text); break;
    default: add_line(l, "%s: \"%s\"", who, it->text); break;
    }
    if (it->quote_seq) add_line(l, "  quote: #%llu \"%s\"", (unsigned long long)it->quote_seq,
                                it->quote_excerpt);
    return;
  }
  switch (it->kind) {
  case PARLEY_EVENT_HANDED_OFF:
    add_line(l, "-- handoff to %s%s%s%s", it->queue, it->note[0] ? ": \"" : "", it->note,
             it->note[0] ? "\"" : "");
    break;
  case PARLEY_EVENT_HANDED_BACK: add_line(l, "-- handed back by %s", who); break;
  case PARLEY_EVENT_ASSIGNED: add_line(l, "-- assigned to %s", it->assignee); break;
  case PARLEY_EVENT_CLOSED: add_line(l, "-- closed%s%s", it->note[0] ? ": " : "", it->note); break;
  case PARLEY_EVENT_LOCALE_CHANGED: add_line(l, "-- locale %s", it->locale); break;
  case PARLEY_EVENT_OPENED: add_line(l, "-- opened (%s)", it->locale); break;
  case PARLEY_EVENT_TAGGED: {
    char t[1024];
    snprintf(t, sizeof t, "%s", it->tags ? it->tags : "");
    for (char *p = t; *p; p++)
      if (*p == '\n') *p = ',';
    add_line(l, "-- tags: [%s]", t);
    break;
  }
  default: break;
  }
}

/* Columns a terminal gives a code point: East Asian wide and fullwidth
 * characters take two. */
static int cp_width(uint32_t c) {
  if ((c >= 0x1100 && c <= 0x115F) || (c >= 0x2E80 && c <= 0xA4CF) ||
      (c >= 0xAC00 && c <= 0xD7A3) || (c >= 0xF900 && c <= 0xFAFF) ||
      (c >= 0xFE30 && c <= 0xFE4F) || (c >= 0xFF00 && c <= 0xFF60) ||
      (c >= 0xFFE0 && c <= 0xFFE6) || (c >= 0x1F300 && c <= 0x1FAFF) ||
      (c >= 0x20000 && c <= 0x3FFFD))
    return 2;
  return 1;
}

/* Decodes one UTF-8 sequence; malformed bytes count as one column each. */
static size_t utf8_next(const char *s, uint32_t *cp) {
  const unsigned char *u = (const unsigned char *)s;
  size_t n = u[0] < 0x80 ? 1 : (u[0] >> 5) == 6 ? 2 : (u[0] >> 4) == 14 ? 3 : (u[0] >> 3) == 30 ? 4 : 1;
  uint32_t c = n == 1 ? u[0] : n == 2 ? u[0] & 0x1F : n == 3 ? u[0] & 0x0F : u[0] & 0x07;
  for (size_t i = 1; i < n; i++) {
    if ((u[i] & 0xC0) != 0x80) {
      *cp = u[0];
      return 1;
    }
    c = (c << 6) | (u[i] & 0x3F);
  }
  *cp = c;
  return n;
}

static size_t display_width(const char *s) {
  size_t w = 0;
  uint32_t cp;
  while (*s) {
    s += utf8_next(s, &cp);
    w += (size_t)cp_width(cp);
  }
  return w;
}

/* Wraps text into pieces of at most WB_COL columns, never inside a
 * character; returns the number of pieces. */
#define WB_PIECE (WB_COL * 4 + 1)
static size_t wrap(const char *s, char out[][WB_PIECE], size_t max) {
  size_t n = 0;
  if (!*s && max) {
    out[n++][0] = 0;
    return n;
  }
  while (*s && n < max) {
    size_t cols = 0, bytes = 0;
    uint32_t cp;
    while (s[bytes]) {
      size_t k = utf8_next(s + bytes, &cp);
      if (cols + (size_t)cp_width(cp) > WB_COL) break;
      cols += (size_t)cp_width(cp);
      bytes += k;
    }
    if (!bytes) bytes = utf8_next(s, &cp); /* a character wider than the column */
    memcpy(out[n], s, bytes);
    out[n][bytes] = 0;
    s += bytes;
    n++;
  }
  return n;
}

static void side_by_side_header(FILE *out) {
  fprintf(out, "    %-*s | %s\n", WB_COL, "expected", "actual");
  fprintf(out, "    ");
  for (int i = 0; i < WB_COL; i++) fputc('-', out);
  fprintf(out, "-+-");
  for (int i = 0; i < WB_COL; i++) fputc('-', out);
  fputc('\n', out);
}

/* Both columns of one step, wrapped; the next step starts on a common row. */
static void side_by_side_rows(FILE *out, const lines *left, const lines *right) {
  size_t i = 0, j = 0;
  char lw[16][WB_PIECE], rw[16][WB_PIECE];
  size_t ln = 0, rn = 0, li = 0, ri = 0;
  while (i < left->n || j < right->n || li < ln || ri < rn) {
    if (li >= ln) {
      ln = li = 0;
      if (i < left->n) ln = wrap(left->buf[i++], lw, 16);
    }
    if (ri >= rn) {
      rn = ri = 0;
      if (j < right->n) rn = wrap(right->buf[j++], rw, 16);
    }
    const char *a = li < ln ? lw[li++] : "";
    const char *b = ri < rn ? rw[ri++] : "";
    size_t pad = WB_COL - display_width(a);
    fprintf(out, "    %s%*s | %s\n", a, (int)pad, "", b);
  }
}

/* ------------------------------------------------------------ the checks */

static bool label_list_eq(const char *labels, const pc_node *want) {
  char buf[2048] = "";
  for (size_t i = 0; i < pc_len(want); i++) {
    if (i) strncat(buf, "\n", sizeof buf - strlen(buf) - 1);
    strncat(buf, pc_scalar(pc_at(want, i)) ? pc_scalar(pc_at(want, i)) : "",
            sizeof buf - strlen(buf) - 1);
  }
  return labels && !strcmp(labels, buf);
}

static bool has_tag(const char *tags, const char *t) {
  if (!tags) return false;
  size_t n = strlen(t);
  for (const char *p = tags; *p;) {
    const char *e = strchr(p, '\n');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (len == n && !memcmp(p, t, n)) return true;
    if (!e) break;
    p = e + 1;
  }
  return false;
}

/* Compares a committed JSON value with a YAML value: scalars by their
 * text (a JSON string without its quotes), collections in flow style
 * without spaces. */
static bool json_eq(const char *json, const pc_node *want) {
  if (pc_node_kind(want) == PC_NULL || (pc_scalar(want) && !strcmp(pc_scalar(want), "null")))
    return json == NULL || !strcmp(json, "null");
  if (!json) return false;
  if (pc_node_kind(want) == PC_SCALAR) {
    const char *s = pc_scalar(want);
    size_t n = strlen(json);
    if (n >= 2 && json[0] == '"' && json[n - 1] == '"')
      return n - 2 == strlen(s) && !strncmp(json + 1, s, n - 2);
    if (!strcmp(json, s)) return true;
    char *e1, *e2;
    double a = strtod(json, &e1), b = strtod(s, &e2);
    return !*e1 && !*e2 && a == b;
  }
  char f[4096] = "", g[4096];
  flow(want, f, sizeof f);
  size_t k = 0;
  for (const char *p = json; *p && k + 1 < sizeof g; p++)
    if (*p != '"' && *p != ' ') g[k++] = *p;
  g[k] = 0;
  k = 0;
  for (char *p = f; *p; p++)
    if (*p != ' ') f[k++] = *p;
  f[k] = 0;
  return !strcmp(f, g);
}

typedef struct step_view {
  wb_item *its[WB_ITEMS_MAX];
  size_t n;
} step_view;

static bool check_one(wb *w, const char *key, const pc_node *v, const step_view *sv,
                      const char *start_tags, char *why, size_t whylen) {
  const char *s = pc_scalar(v);
  if (!strcmp(key, "reply") || !strcmp(key, "reply_contains") || !strcmp(key, "reply_matches")) {
    if (!s) return snprintf(why, whylen, "%s needs a string", key), false;
    regex_t re;
    bool isre = !strcmp(key, "reply_matches");
    if (isre && regcomp(&re, s, REG_EXTENDED | REG_NOSUB) != 0)
      return snprintf(why, whylen, "reply_matches: invalid regular expression"), false;
    bool found = false;
    for (size_t i = 0; i < sv->n && !found; i++) {
      wb_item *it = sv->its[i];
      if (!it->from_bot || it->kind != PARLEY_EVENT_MESSAGE) continue;
      if (key[5] == 0) found = !strcmp(it->text, s);
      else if (isre) found = regexec(&re, it->text, 0, NULL, 0) == 0;
      else found = strstr(it->text, s) != NULL;
    }
    if (isre) regfree(&re);
    if (!found) snprintf(why, whylen, "no reply %s \"%s\"",
                         key[5] == 0 ? "equal to" : isre ? "matching" : "containing", s);
    return found;
  }
  if (!strcmp(key, "no_reply")) {
    for (size_t i = 0; i < sv->n; i++)
      if (sv->its[i]->from_bot && sv->its[i]->kind == PARLEY_EVENT_MESSAGE)
        return snprintf(why, whylen, "expected no reply"), false;
    return true;
  }
  if (!strcmp(key, "card") || !strcmp(key, "quick_replies")) {
    bool card = key[0] == 'c';
    for (size_t i = 0; i < sv->n; i++) {
      wb_item *it = sv->its[i];
      if (!it->from_bot || it->kind != PARLEY_EVENT_MESSAGE) continue;
      if (it->ctype != (card ? PARLEY_CONTENT_CARD : PARLEY_CONTENT_QUICK_REPLIES)) continue;
      const char *t = pc_scalar(pc_get(v, "title")), *x = pc_scalar(pc_get(v, "text"));
      const pc_node *b = pc_get(v, card ? "buttons" : "options");
      if (t && strcmp(t, it->title)) continue;
      if (x && strcmp(x, it->text)) continue;
      if (b && !label_list_eq(it->labels, b)) continue;
      return true;
    }
    snprintf(why, whylen, "no %s like that", card ? "card" : "quick replies");
    return false;
  }
  if (!strcmp(key, "quote")) {
    const char *x = pc_scalar(pc_get(v, "text"));
    for (size_t i = 0; i < sv->n; i++)
      if (sv->its[i]->from_bot && sv->its[i]->quote_seq &&
          (!x || !strcmp(x, sv->its[i]->quote_excerpt)))
        return true;
    return snprintf(why, whylen, "no reply quotes \"%s\"", x ? x : ""), false;
  }
  if (!strcmp(key, "handoff") || !strcmp(key, "close")) {
    bool h = key[0] == 'h';
    const char *q = pc_scalar(pc_get(v, "queue"));
    const char *n = pc_scalar(pc_get(v, h ? "note" : "reason"));
    for (size_t i = 0; i < sv->n; i++) {
      wb_item *it = sv->its[i];
      if (it->kind != (h ? PARLEY_EVENT_HANDED_OFF : PARLEY_EVENT_CLOSED)) continue;
      if (q && strcmp(q, it->queue)) continue;
      if (n && strcmp(n, it->note)) continue;
      return true;
    }
    return snprintf(why, whylen, "no %s like that", h ? "handoff" : "close"), false;
  }
  if (!strcmp(key, "state")) {
    for (size_t i = 0; i < pc_len(v); i++) {
      const char *k = pc_key_at(v, i);
      const char *have = state_get(w, k);
      if (!json_eq(have, pc_at(v, i))) {
        char f[512] = "";
        flow(pc_at(v, i), f, sizeof f);
        return snprintf(why, whylen, "state.%s is %s, expected %s", k, have ? have : "absent", f),
               false;
      }
    }
    return true;
  }
  if (!strcmp(key, "tags") || !strcmp(key, "untags")) {
    bool add = key[0] == 't';
    for (size_t i = 0; i < pc_len(v); i++) {
      const char *t = pc_scalar(pc_at(v, i));
      if (!t) continue;
      bool now = has_tag(w->cur_tags, t), before = has_tag(start_tags, t);
      if (add && !now) return snprintf(why, whylen, "the conversation lacks tag %s", t), false;
      if (!add && (now || !before))
        return snprintf(why, whylen, "tag %s was not removed in this step", t), false;
    }
    return true;
  }
  if (!strcmp(key, "timer") || !strcmp(key, "no_timer")) {
    const char *tm = state_get(w, "_timers");
    char pat[200];
    snprintf(pat, sizeof pat, "\"name\":\"%s\"", s ? s : "");
    bool pending = tm && strstr(tm, pat);
    if (key[0] == 't' && !pending) return snprintf(why, whylen, "no timer %s is pending", s), false;
    if (key[0] == 'n' && pending) return snprintf(why, whylen, "timer %s is pending", s), false;
    return true;
  }
  snprintf(why, whylen, "unknown expectation '%s'", key);
  return false;
}

/* -------------------------------------------------------------- one case */

typedef struct case_result {
  bool failed, skipped;
  char why[1200];
} case_result;

static void reset_case(wb *w) {
  for (size_t i = 0; i < w->n_items; i++) {
    wb_item *it = &w->items[i];
    free(it->sender), free(it->text), free(it->title), free(it->image), free(it->labels);
    free(it->quote_excerpt), free(it->queue), free(it->note), free(it->assignee), free(it->tags);
    free(it->locale);
  }
  w->n_items = 0;
  state_clear(w);
  free(w->cur_tags), free(w->step_start_tags);
  w->cur_tags = w->step_start_tags = NULL;
  w->cust_pending = w->cust_failures = 0;
  w->cust_last_seq = w->cust_seen = w->need_seq = 0;
  w->bot_pending = 0;
  w->bot_max_acked = 0;
  w->last_taker[0] = 0;
  w->handoff_need = 0;
  w->bot_has_conv = false;
  w->notes[0] = 0;
  w->dup_reply = false;
  w->with_bot = true;
}

static int cust_send(wb *w, const parley_content *ct) {
  int rc = parley_client_send(w->cust, w->conv, ct, NULL, NULL, 0, NULL);
  if (rc == 0) w->cust_pending++;
  return rc;
}

static int agent_action(wb *w, const char *agent, parley_action_kind kind, const char *text) {
  parley_client *a = agent_get(w, agent);
  if (!a) return PARLEY_ENOTFOUND;
  parley_action act = {.kind = kind, .note = text};
  int rc = parley_client_action(a, w->conv, &act, NULL, 0, NULL);
  if (rc == 0) w->cust_pending++;
  return rc;
}

static bool cond_cust_answered(wb *w) { return w->cust_pending == 0; }

/* Starts what a step does. Returns false with why filled when the step
 * cannot run. */
static bool run_step_action(wb *w, const pc_node *st, bool *skip,
                            char *why, size_t whylen) {
  parley_content ct = {0};
  const pc_node *n;
  if ((n = pc_get(st, "send"))) {
    ct.kind = PARLEY_CONTENT_TEXT;
    ct.text = pc_scalar(n);
    if (!ct.text) return snprintf(why, whylen, "send: needs a string"), false;
  } else if ((n = pc_get(st, "postback"))) {
    ct.kind = PARLEY_CONTENT_POSTBACK;
    ct.payload = pc_scalar(n);
    ct.label = pc_scalar(pc_get(st, "label"));
    if (!ct.label) ct.label = ct.payload;
    /* The seq of the last message with buttons, as a tap would carry. */
    for (size_t i = w->n_items; i-- > 0;)
      if (w->items[i].from_bot && w->items[i].n_labels) {
        ct.source_seq = w->items[i].seq;
        break;
      }
  } else if ((n = pc_get(st, "open"))) {
    /* A conversation opens with a message: the open step sends one (the
     * step's `text`, "hi" by default) and looks only at what the bot did
     * for the opening events, not at its answer to that message. */
    if (w->cust_last_seq) return snprintf(why, whylen, "open: the conversation is already open"), false;
    ct.kind = PARLEY_CONTENT_TEXT;
    ct.text = pc_scalar(pc_get(n, "text"));
    if (!ct.text) ct.text = "hi";
  } else if ((n = pc_get(st, "wait"))) {
    const char *s = pc_scalar(n);
    char *end = NULL;
    double secs = s ? strtod(s, &end) : -1;
    if (!s || secs < 0 || (end && *end && strcmp(end, "s")))
      return snprintf(why, whylen, "wait: needs seconds"), false;
    w->clock_offset += (int64_t)(secs * 1000);
    if (w->bot && w->bot->rt) plr_rt_fire_due(w->bot->rt);
    return true;
  } else if ((n = pc_get(st, "event"))) {
    const char *kind = pc_scalar(pc_get(n, "kind"));
    if (!kind) return snprintf(why, whylen, "event: needs a kind"), false;
    int rc = 0;
    if (!strcmp(kind, "assigned")) {
      const char *who = pc_scalar(pc_get(n, "assignee"));
      if (!who) who = WB_SPEC_AGENT;
      rc = agent_action(w, who, PARLEY_ACTION_TAKE, NULL);
      if (rc == 0) snprintf(w->last_taker, sizeof w->last_taker, "%s", who);
    } else if (!strcmp(kind, "handed_back")) {
      if (!w->last_taker[0]) {
        /* Only the agent holding a conversation can hand it back. */
        *skip = true;
        return snprintf(why, whylen,
                        "not possible over the gateway: handed_back without an agent having "
                        "taken the conversation (add an `assigned` event first)"),
               false;
      }
      rc = agent_action(w, w->last_taker, PARLEY_ACTION_HAND_BACK, pc_scalar(pc_get(n, "note")));
    } else if (!strcmp(kind, "closed")) {
      parley_action act = {.kind = PARLEY_ACTION_CLOSE, .note = pc_scalar(pc_get(n, "note"))};
      rc = parley_client_action(w->cust, w->conv, &act, NULL, 0, NULL);
      if (rc == 0) w->cust_pending++;
    } else if (!strcmp(kind, "locale_changed")) {
      parley_action act = {.kind = PARLEY_ACTION_SET_LOCALE,
                           .locale = pc_scalar(pc_get(n, "locale"))};
      rc = parley_client_action(w->cust, w->conv, &act, NULL, 0, NULL);
      if (rc == 0) w->cust_pending++;
    } else {
      *skip = true;
      return snprintf(why, whylen, "not possible over the gateway: event %s", kind), false;
    }
    if (rc) return snprintf(why, whylen, "event %s: %s", kind, parley_strerror(rc)), false;
    return true;
  } else {
    return snprintf(why, whylen, "a step needs send, postback, open, wait or event"), false;
  }
  int rc = cust_send(w, &ct);
  if (rc) return snprintf(why, whylen, "cannot send: %s", parley_strerror(rc)), false;
  return true;
}

static const char *step_title(const pc_node *st, char *buf, size_t size) {
  static const char *kinds[] = {"send", "postback", "open", "wait", "event", NULL};
  for (int i = 0; kinds[i]; i++) {
    const pc_node *n = pc_get(st, kinds[i]);
    if (!n) continue;
    char f[512] = "";
    flow(n, f, sizeof f);
    snprintf(buf, size, "%s: %s", kinds[i], f);
    return buf;
  }
  snprintf(buf, size, "?");
  return buf;
}

static void run_case(wb *w, const char *file, const pc_node *c, int index, FILE *out,
                     case_result *res) {
  memset(res, 0, sizeof *res);
  reset_case(w);
  const char *name = pc_scalar(pc_get(c, "name"));
  char fallback_name[32];
  if (!name) snprintf(fallback_name, sizeof fallback_name, "case %d", index + 1), name = fallback_name;
  const char *locale = pc_scalar(pc_get(c, "locale"));
  snprintf(w->locale, sizeof w->locale, "%s", locale ? locale : w->default_locale);
  w->stubs = pc_get(c, "http");
  uint8_t id[PARLEY_MSG_ID_LEN];
  char hex[33];
  parley_msg_id_random(id);
  parley_msg_id_hex(id, hex);
  snprintf(w->conv, sizeof w->conv, "spec-%d-%.12s", index + 1, hex);

  lines exp = {0}, act = {0};
  /* The conversation so far, printed when the case fails. */
  char *trace_buf = NULL;
  size_t trace_len = 0;
  FILE *trace = open_memstream(&trace_buf, &trace_len);
  const pc_node *steps = pc_get(c, "steps");
  if (cust_new(w) != 0 || !pump_until(w, cond_cust_ready, 5000)) {
    snprintf(res->why, sizeof res->why, "the customer could not connect");
    res->failed = true;
    goto report;
  }
  for (size_t si = 0; si < pc_len(steps) && !res->failed && !res->skipped; si++) {
    const pc_node *st = pc_at(steps, si);
    w->step = (int)si;
    w->notes[0] = 0;
    free(w->step_start_tags);
    w->step_start_tags = w->cur_tags ? xdup(w->cur_tags) : NULL;
    plr_stats before = {0};
    if (w->bot && w->bot->rt) plr_runtime_stats(w->bot->rt, &before);
    uint64_t kills_before = w->kills;
    size_t first_item = w->n_items;
    bool open_step = pc_get(st, "open") != NULL;
    char why[1024] = "";
    bool skip = false;
    w->gate = open_step;
    if (!run_step_action(w, st, &skip, why, sizeof why)) {
      w->gate = false;
      res->failed = !skip;
      res->skipped = skip;
      snprintf(res->why, sizeof res->why, "step %zu (line %d): %s", si + 1, pc_node_line(st), why);
      break;
    }
    if (w->faults) {
      /* Kill the bot at a random moment of about half the steps, and
       * sometimes drop the customer's connection once its send is stored. */
      if (rnd(w) % 2 == 0 && !w->kill_armed) {
        w->kill_armed = true;
        uv_timer_start(&w->kill_timer, kill_fire, rnd(w) % 40, 0);
      }
      if (w->proxy_on && rnd(w) % 2 == 0 && !w->cut_armed) {
        w->cut_armed = true;
        uv_timer_start(&w->cut_timer, cut_fire, rnd(w) % 60, 0);
      }
      if (rnd(w) % 3 == 0 && pump_until(w, cond_cust_answered, 5000) &&
          pump_until(w, cond_cust_ready, 5000) && pump_until(w, cond_no_kill, 5000)) {
        parley_client_free(w->cust);
        w->cust = NULL;
        w->reconnects++;
        quiet_after_free(w);
        if (cust_new(w) != 0) note(w, "the customer could not connect again");
      }
    }
    settle_rounds = 0;
    if (!pump_until(w, cond_settled, WB_STEP_TIMEOUT_MS)) {
      snprintf(why, sizeof why, "the bot did not settle within %d ms (committed #%llu of #%llu)",
               WB_STEP_TIMEOUT_MS,
               (unsigned long long)(w->bot ? plr_runtime_committed(w->bot->rt, w->conv) : 0),
               (unsigned long long)w->need_seq);
    }
    /* What this step caused. The open step leaves out the answer to its
     * opening message; other steps see everything that arrived. */
    step_view sv = {.n = 0};
    uint64_t open_msg_seq = w->cust_last_seq;
    for (size_t i = first_item; i < w->n_items; i++) {
      wb_item *it = &w->items[i];
      if (open_step && it->from_bot && it->has_id) {
        uint64_t in = inbound_of(w, it->id);
        if (in && in >= open_msg_seq) continue;
      }
      if (open_step && it->seq == open_msg_seq) continue;
      sv.its[sv.n++] = it;
    }
    plr_stats after = {0};
    if (w->bot && w->bot->rt) plr_runtime_stats(w->bot->rt, &after);
    bool may_fail = false;
    pc_get_bool(st, "handler_fails", false, &may_fail, &(pc_error){0});
    if (!why[0] && w->kills == kills_before && after.failures > before.failures && !may_fail)
      snprintf(why, sizeof why, "a handler failed (see the log with -v)");
    const pc_node *ex = pc_get(st, "expect");
    /* A kill between a handoff and its commit leaves the state, the tags
     * and the timers to the hand back; what the customer saw must hold. */
    bool commit_lost = w->kills > kills_before && !w->with_bot && !w->bot_has_conv &&
                       w->handoff_need;
    for (size_t k = 0; k < pc_len(ex) && !why[0]; k++) {
      const pc_node *e = pc_at(ex, k);
      for (size_t j = 0; j < pc_len(e) && !why[0]; j++) {
        const char *key = pc_key_at(e, j);
        if (commit_lost && (!strcmp(key, "state") || strstr(key, "tags") || strstr(key, "timer")))
          continue;
        check_one(w, key, pc_at(e, j), &sv, w->step_start_tags, why, sizeof why);
      }
    }
    if (!why[0] && w->dup_reply) snprintf(why, sizeof why, "%s", w->notes);
    if (!why[0] && w->cust_failures) snprintf(why, sizeof why, "%s", w->notes);
    if (why[0]) {
      if (w->notes[0] && strcmp(why, w->notes))
        snprintf(why + strlen(why), sizeof why - strlen(why), " (%s)", w->notes);
      res->failed = true;
      snprintf(res->why, sizeof res->why, "step %zu (line %d): %s", si + 1, pc_node_line(st), why);
    }
    /* The step in the side-by-side view: the spec on the left, what the
     * customer got on the right; the failing one with the state. */
    char title[600];
    step_title(st, title, sizeof title);
    add_line(&exp, "%s%s", why[0] ? ">> " : "", title);
    add_line(&act, "%s%s", why[0] ? ">> " : "", title);
    for (size_t k = 0; k < pc_len(ex); k++) {
      const pc_node *e = pc_at(ex, k);
      for (size_t j = 0; j < pc_len(e); j++) {
        char f[1500] = "";
        flow(pc_at(e, j), f, sizeof f);
        add_line(&exp, "  %s: %s", pc_key_at(e, j), f);
      }
    }
    for (size_t i = 0; i < sv.n; i++) render_item(&act, sv.its[i]);
    if (!sv.n) add_line(&act, "(nothing)");
    if (why[0]) {
      char st_line[1500] = "state: {";
      for (size_t i = 0; i < w->n_state; i++) {
        if (!strcmp(w->state_keys[i], "_timers")) continue;
        size_t len = strlen(st_line);
        snprintf(st_line + len, sizeof st_line - len, "%s%s: %s", st_line[8] ? ", " : "",
                 w->state_keys[i], w->state_vals[i]);
      }
      strncat(st_line, "}", sizeof st_line - strlen(st_line) - 1);
      add_line(&act, "%s", st_line);
      if (w->cur_tags) {
        char t[1024];
        snprintf(t, sizeof t, "%s", w->cur_tags);
        for (char *p = t; *p; p++)
          if (*p == '\n') *p = ',';
        add_line(&act, "tags: [%s]", t);
      }
    }
    if (trace) side_by_side_rows(trace, &exp, &act);
    free_lines(&exp);
    free_lines(&act);
    if (w->gate) {
      /* The open step is judged; now the bot gets the opening message. */
      w->gate = false;
      for (size_t i = 0; i < w->n_held; i++)
        if (w->bot && w->bot->rt) plr_rt_on_event(w->bot->rt, &w->held[i]->ev);
      held_drop_all(w);
      settle_rounds = 0;
      if (!pump_until(w, cond_settled, WB_STEP_TIMEOUT_MS) && !res->failed) {
        res->failed = true;
        snprintf(res->why, sizeof res->why,
                 "step %zu (line %d): the bot did not settle after the opening message", si + 1,
                 pc_node_line(st));
      }
    }
  }
  w->gate = false;
  held_drop_all(w);
report:
  if (w->kill_armed) {
    uv_timer_stop(&w->kill_timer);
    w->kill_armed = false;
  }
  if (w->cut_armed) {
    uv_timer_stop(&w->cut_timer);
    w->cut_armed = false;
  }
  if (w->cust) {
    pump_until(w, cond_cust_ready, 3000); /* see kill_fire */
    pump_until(w, cond_no_kill, 3000);
    parley_client_free(w->cust);
    w->cust = NULL;
    quiet_after_free(w);
  }
  if (res->skipped) {
    fprintf(out, "SKIP %s:%d: %s: %s\n", file, pc_node_line(c), name, res->why);
  } else if (res->failed) {
    fprintf(out, "FAIL %s:%d: %s%s: %s\n", file, pc_node_line(c), name,
            w->faults ? " [faults]" : "", res->why);
    if (trace) {
      fflush(trace);
      if (trace_len) {
        side_by_side_header(out);
        fwrite(trace_buf, 1, trace_len, out);
      }
    }
  } else {
    fprintf(out, "PASS %s: %s%s\n", file, name, w->faults ? " [faults]" : "");
  }
  fflush(out);
  if (trace) fclose(trace);
  free(trace_buf);
  free_lines(&exp);
  free_lines(&act);
}

/* ------------------------------------------------------------ the setup */

static void add_agent_name(wb *w, const char *name) {
  if (!name || !name[0] || w->n_agents >= WB_AGENTS_MAX) return;
  for (size_t i = 0; i < w->n_agents; i++)
    if (!strcmp(w->agents[i].name, name)) return;
  snprintf(w->agents[w->n_agents++].name, sizeof w->agents[0].name, "%s", name);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void on_closed_noop(uv_handle_t *h) { (void)h; }

/* --help prints the usage on stdout and succeeds; a usage error prints it
 * on stderr and exits 2. */
static int usage_to(FILE *out) {
  fprintf(out,
          "usage: parley test <botdir> [options] [spec files...]\n"
          "  --faults           run every case again with the bot killed and the customer\n"
          "                     reconnected at random moments\n"
          "  --cut              with --faults, also cut the bot's and the customer's\n"
          "                     connections at random moments (experimental)\n"
          "  --seed N           seed of the fault schedule (default 1)\n"
          "  -v, --verbose      show the bot's log\n"
          "Runs bots' spec/*.yaml (or the files given) against the bot over the embedded\n"
          "gateway; prints PASS/FAIL per case and \"N passed, N failed\".\n");
  return out == stdout ? 0 : 2;
}

static int usage(void) { return usage_to(stderr); }

/* bot.yaml's name (the bot's principal) and default locale. */
static void bot_identity(const char *dir, char *out, size_t size, char *locale, size_t lsize) {
  char path[1200];
  snprintf(path, sizeof path, "%s/bot.yaml", dir);
  pc_doc *doc = NULL;
  pc_error err;
  const char *name = NULL, *loc = NULL;
  if (pc_load_file(path, &doc, &err) == 0) {
    pc_get_str(pc_root(doc), "name", NULL, &name, &err);
    pc_get_str(pc_root(doc), "default_locale", NULL, &loc, &err);
  }
  snprintf(out, size, "%s", name && name[0] ? name : "bot");
  snprintf(locale, lsize, "%s", loc && loc[0] ? loc : "en");
  pc_doc_free(doc);
}

int cli_test(int argc, char **argv) {
  static const struct option opts[] = {{"faults", no_argument, 0, 'f'},
                                       {"cut", no_argument, 0, 'c'},
                                       {"seed", required_argument, 0, 's'},
                                       {"verbose", no_argument, 0, 'v'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  bool faults = false, verbose = false, cut = false;
  uint64_t seed = 1;
  optind = 1;
  int ch;
  while ((ch = getopt_long(argc, argv, "fcs:vh", opts, NULL)) != -1) {
    switch (ch) {
    case 'f': faults = true; break;
    case 'c': cut = faults = true; break;
    case 's': seed = strtoull(optarg, NULL, 10); break;
    case 'v': verbose = true; break;
    case 'h': return usage_to(stdout);
    default: return usage();
    }
  }
  if (optind >= argc) return usage();
  const char *bot_dir = argv[optind++];

  char err[4096];
  if (plr_load_check(bot_dir, err, sizeof err) != 0) {
    fprintf(stderr, "parley test: cannot load bot %s:\n%s\n", bot_dir, err);
    return 1;
  }

  /* The spec files: those given, or the .yaml files of the bot's spec folder, sorted. */
  char *files[WB_FILES_MAX];
  size_t n_files = 0;
  if (optind < argc) {
    for (int i = optind; i < argc && n_files < WB_FILES_MAX; i++) files[n_files++] = xdup(argv[i]);
  } else {
    char sdir[1100];
    snprintf(sdir, sizeof sdir, "%s/spec", bot_dir);
    DIR *d = opendir(sdir);
    if (!d) {
      fprintf(stderr, "parley test: %s: %s\n", sdir, strerror(errno));
      return 1;
    }
    struct dirent *de;
    while ((de = readdir(d)) && n_files < WB_FILES_MAX) {
      size_t n = strlen(de->d_name);
      if (n > 5 && !strcmp(de->d_name + n - 5, ".yaml")) {
        char p[1400];
        snprintf(p, sizeof p, "%s/%s", sdir, de->d_name);
        files[n_files++] = xdup(p);
      }
    }
    closedir(d);
    qsort(files, n_files, sizeof files[0], cmp_str);
  }
  pc_doc *docs[WB_FILES_MAX] = {0};
  int rc = 0;
  for (size_t i = 0; i < n_files; i++) {
    pc_error pe;
    if (pc_load_file(files[i], &docs[i], &pe) != 0) {
      fprintf(stderr, "parley test: %s\n", pc_error_format(&pe, err, sizeof err));
      rc = 1;
    } else if (pc_node_kind(pc_root(docs[i])) != PC_SEQ) {
      fprintf(stderr, "parley test: %s:1: a spec file is a list of cases\n", files[i]);
      rc = 1;
    }
  }
  if (n_files == 0) {
    fprintf(stderr, "parley test: no spec files in %s/spec\n", bot_dir);
    rc = 1;
  }
  static wb runner;
  wb *w = &runner;
  memset(w, 0, sizeof *w);
  if (rc) goto out_files;

  w->verbose = verbose;
  w->rng = seed ? seed * 0x9E3779B97F4A7C15ULL : 0x9E3779B97F4A7C15ULL;
  snprintf(w->bot_dir, sizeof w->bot_dir, "%s", bot_dir);
  bot_identity(bot_dir, w->principal, sizeof w->principal, w->default_locale,
               sizeof w->default_locale);
  add_agent_name(w, WB_SPEC_AGENT);
  for (size_t i = 0; i < n_files; i++) {
    const pc_node *cases = pc_root(docs[i]);
    for (size_t c = 0; c < pc_len(cases); c++) {
      const pc_node *steps = pc_get(pc_at(cases, c), "steps");
      for (size_t s = 0; s < pc_len(steps); s++)
        add_agent_name(w, pc_scalar(pc_find(pc_at(steps, s), "event.assignee")));
    }
  }

  /* The embedded gateway: a fresh data directory and one token for all. */
  if (sodium_init() < 0) {
    rc = 1;
    goto out_files;
  }
  derive_owner = w;
  w->loop = uv_default_loop();
  uint8_t tid[PARLEY_MSG_ID_LEN];
  parley_msg_id_random(tid);
  parley_msg_id_hex(tid, w->token);
  const char *tmp = getenv("TMPDIR");
  snprintf(w->data_dir, sizeof w->data_dir, "%s/parley-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(w->data_dir)) {
    fprintf(stderr, "parley test: cannot create a data directory: %s\n", strerror(errno));
    rc = 1;
    goto out_files;
  }
  char hash[8 + 65];
  pg_token_hash(w->token, hash);
  char yaml[4096];
  int n = snprintf(yaml, sizeof yaml,
                   "listen: 127.0.0.1\nport: 0\ndata_dir: \"%s\"\ndurability: normal\n"
                   /* A killed bot's connection may die without a close; short
                    * heartbeats let the gateway reassign within a second. */
                   "limits:\n  heartbeat: 500ms\n  ack_timeout: 1s\n"
                   "bot: %s\nprincipals:\n"
                   "  - {name: \"%s\", role: bot, token_hash: \"%s\"}\n"
                   "  - {name: customer, role: customer, token_hash: \"%s\"}\n",
                   w->data_dir, w->principal, w->principal, hash, hash);
  for (size_t i = 0; i < w->n_agents && n > 0 && (size_t)n < sizeof yaml; i++)
    n += snprintf(yaml + n, sizeof yaml - (size_t)n,
                  "  - {name: \"%s\", role: agent, token_hash: \"%s\"}\n", w->agents[i].name, hash);
  /* --faults: the gateway's test switches drop, double and reorder pushes
   * and send ACKs during the second pass (turned on there). */
  if (faults && n > 0 && (size_t)n < sizeof yaml)
    n += snprintf(yaml + n, sizeof yaml - (size_t)n,
                  "faults:\n  drop_push: 5\n  duplicate_push: 5\n  reorder_push: 10\n"
                  "  drop_ack: 5\n  duplicate_ack: 5\n  seed: %llu\n",
                  (unsigned long long)(seed ? seed : 1));
  if (pg_config_from_string("embedded", yaml, &w->gw_cfg, err, sizeof err) != 0) {
    fprintf(stderr, "parley test: embedded gateway config: %s\n", err);
    rc = 1;
    goto out_dir;
  }
  if ((rc = pg_gateway_new(w->loop, w->gw_cfg, &w->gw)) != 0) {
    fprintf(stderr, "parley test: cannot start the embedded gateway: %s\n", parley_strerror(rc));
    rc = 1;
    goto out_dir;
  }
  pg_gateway_set_faults(w->gw, false);
  snprintf(w->url, sizeof w->url, "ws://127.0.0.1:%d/", pg_gateway_port(w->gw));
  uv_timer_init(w->loop, &w->tick);
  uv_timer_start(&w->tick, on_tick, WB_TICK_MS, WB_TICK_MS);
  uv_timer_init(w->loop, &w->kill_timer);
  w->kill_timer.data = w;
  uv_timer_init(w->loop, &w->cut_timer);
  w->cut_timer.data = w;
  uv_timer_init(w->loop, &w->rebirth_timer);
  w->rebirth_timer.data = w;
  if (cut) {
    if (px_start(&w->proxy, w->loop, pg_gateway_port(w->gw)) != 0) {
      fprintf(stderr, "parley test: cannot start the fault layer\n");
      rc = 1;
      goto out_stop;
    }
    w->proxy_on = true;
    snprintf(w->proxy_url, sizeof w->proxy_url, "ws://127.0.0.1:%d/", w->proxy.port);
  }
  w->clock_base = (int64_t)uv_now(w->loop);
  {
    uv_timeval64_t tv;
    if (uv_gettimeofday(&tv) == 0) w->clock_base = tv.tv_sec * 1000 + tv.tv_usec / 1000;
  }

  for (size_t i = 0; i < w->n_agents; i++) {
    parley_client_options co = PARLEY_CLIENT_OPTIONS_INIT;
    co.url = w->url;
    co.principal = w->agents[i].name;
    co.token = w->token;
    co.role = PARLEY_ROLE_AGENT;
    co.loop = w->loop;
    co.cb.on_send_result = agent_on_send_result;
    co.user_data = w;
    if (parley_client_new(&co, &w->agents[i].client) == 0)
      parley_client_start(w->agents[i].client);
  }
  if (bot_new(w, err, sizeof err) != 0) {
    fprintf(stderr, "parley test: %s\n", err);
    rc = 1;
    goto out_stop;
  }
  if (!pump_until(w, cond_agents_ready, 5000)) {
    fprintf(stderr, "parley test: the spec agents could not connect\n");
    rc = 1;
    goto out_stop;
  }

  unsigned passed = 0, failed = 0, skipped = 0;
  for (int round = 0; round < (faults ? 2 : 1); round++) {
    w->faults = round == 1;
    pg_gateway_set_faults(w->gw, w->faults);
    if (w->faults) {
      printf("-- faults (seed %llu)\n", (unsigned long long)seed);
      /* With --cut the bot comes back through the fault layer. */
      if (w->proxy_on) {
        bot_kill(w);
        pump_until(w, cond_no_kill, 5000);
        w->kills = 0;
      }
    }
    for (size_t i = 0; i < n_files; i++) {
      const pc_node *cases = pc_root(docs[i]);
      for (size_t c = 0; c < pc_len(cases); c++) {
        case_result cr;
        run_case(w, files[i], pc_at(cases, c), (int)(round * 1000 + c + i * 100), stdout, &cr);
        if (cr.skipped) skipped++;
        else if (cr.failed) failed++;
        else passed++;
      }
    }
    if (w->faults) {
      uint64_t dropped, doubled, reordered;
      pg_gateway_fault_counts(w->gw, &dropped, &doubled, &reordered);
      printf("-- faults: %u bot kills, %u customer reconnects, %u connections cut; "
             "%llu frames dropped, %llu doubled, %llu reordered\n",
             w->kills, w->reconnects, w->proxy.cuts, (unsigned long long)dropped,
             (unsigned long long)doubled, (unsigned long long)reordered);
    }
  }
  if (skipped) printf("%u skipped (not possible over the gateway)\n", skipped);
  printf("%u passed, %u failed\n", passed, failed);
  fflush(stdout);
  rc = failed ? 1 : 0;

out_stop:
  reset_case(w);
  pump_until(w, cond_no_kill, 3000);
  if (w->bot) {
    pump_until(w, cond_bot_ready, 3000); /* see kill_fire */
    plr_runtime_free(w->bot->rt);
  }
  w->bot = NULL;
  for (size_t i = 0; i < w->n_agents; i++) parley_client_free(w->agents[i].client);
  uv_timer_stop(&w->kill_timer);
  uv_close((uv_handle_t *)&w->kill_timer, on_closed_noop);
  uv_timer_stop(&w->cut_timer);
  uv_close((uv_handle_t *)&w->cut_timer, on_closed_noop);
  uv_timer_stop(&w->rebirth_timer);
  uv_close((uv_handle_t *)&w->rebirth_timer, on_closed_noop);
  if (w->proxy_on) px_stop(&w->proxy, on_closed_noop);
  if (w->gw) pg_gateway_stop(w->gw, NULL, NULL);
  uv_timer_stop(&w->tick);
  uv_close((uv_handle_t *)&w->tick, on_closed_noop);
  for (int i = 0; i < 1000 && uv_run(w->loop, UV_RUN_NOWAIT); i++) {
    struct timespec ts = {0, 2 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  if (w->gw) pg_gateway_free(w->gw);
  uv_loop_close(w->loop);
out_dir:
  if (w->gw_cfg) pg_config_free(w->gw_cfg);
  pg_data_dir_remove(w->data_dir);
out_files:
  derive_owner = NULL;
  for (size_t i = 0; i < n_files; i++) {
    pc_doc_free(docs[i]);
    free(files[i]);
  }
  return rc;
}
