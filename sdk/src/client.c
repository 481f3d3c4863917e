/* The public client: glue between the protocol engine (sdk/src/core), the
 * WebSocket transport (sdk/src/transport), a uv timer and the
 * application's callbacks. See parley/client.h for the contract.
 *
 * Driving the engine. Every engine call happens inside an enter()/leave()
 * pair. When the outermost pair ends, settle() "pumps" the engine: it
 * writes every output frame to the socket, closes the connection when the
 * engine asks, and arms the one timer for the engine's next deadline (or
 * the reconnect time). Pumping only at the outermost level means that an
 * application callback calling parley_client_send from inside an engine
 * callback never re-enters the engine's output handling.
 *
 * Lifetime. Calls that must not happen inside an engine call (stop) are
 * deferred to settle(); parley_client_free inside any callback only marks
 * the client, which is released once the outermost call returns and every
 * handle it had on the loop has finished closing.
 */
#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>
#include <uv.h>

#include <parley/client.h>

#include "core/engine.h"
#include "wire/wire.h"
#include "transport/url.h"
#include "transport/ws.h"
#include "util/clock.h"
#include "util/rand.h"

/* After the drain time given to parley_client_stop, the close handshake
 * gets this long before the connection is dropped without one. */
#define PC_CLOSE_GRACE_MS 2000u
/* A close this side starts for another reason than stop (the engine saw a
 * protocol error or a silent peer) waits this long for the peer's answer
 * before the connection is dropped, so a dead peer does not delay the
 * reconnect. */
#define PC_CLOSE_WAIT_MS 1000u
/* The largest inbound frame limit an application may configure. */
#define PC_MAX_FRAME_LIMIT (64u * 1024u * 1024u)

struct parley_client {
  /* Copies of the options; strings owned below. */
  parley_client_options opts;
  char *url, *principal, *token, *device, *locale, *ca_file;
  char **queues;
  size_t n_queues;
  /* The gateway nodes, in order; url_i is the one in use. */
  char *urls[PARLEY_MAX_URLS];
  size_t n_urls, url_i;

  uv_loop_t *loop;
  uv_loop_t *own_loop; /* non-NULL when the client owns its loop */
  pe_engine *engine;
  pt_ws *ws;
  uv_timer_t timer;
  bool timer_init;
  /* Random message ids drawn PC_ID_POOL at a time (h_random_id). */
  uint8_t id_pool[PARLEY_MSG_ID_LEN * 16];
  size_t ids_left;

  parley_conn_state state;
  bool started;
  bool connected;      /* WebSocket open and the engine told so */
  bool close_sent;     /* a close was asked for on this connection */
  int local_close_code;
  uint64_t abort_at;   /* drop the connection if still closing by then */
  uint64_t reconnect_at;

  bool stopping;
  bool stop_pending;   /* stop asked inside an engine call */
  uint32_t stop_drain_ms;
  uint64_t stop_hard_at;
  int close_status;    /* reported with CLOSED */

  bool teardown;       /* closing the timer and the transport */
  int handles_open;
  bool freed;          /* parley_client_free was called */
  bool running;        /* inside parley_client_run or free's own uv_run */
  int busy;            /* depth of enter() */
  int engine_depth;    /* depth of engine calls */
};

static void settle(parley_client *c);
static void begin_teardown(parley_client *c, int status);

/* ------------------------------------------------------------ lifetime */

static void enter(parley_client *c) { c->busy++; }

/* May release c: the caller must not touch c afterwards. */
static void leave(parley_client *c) {
  if (--c->busy == 0)
    settle(c);
}

static void release(parley_client *c) {
  pe_engine_free(c->engine);
  /* An owned loop that still has handles (the application added some
   * through parley_client_loop and left them open) cannot be closed; it is
   * leaked rather than freed under them. */
  if (c->own_loop && uv_loop_close(c->own_loop) == 0)
    free(c->own_loop);
  free(c->url);
  free(c->principal);
  free(c->token);
  free(c->device);
  free(c->locale);
  free(c->ca_file);
  for (size_t i = 0; i < c->n_urls; i++)
    free(c->urls[i]);
  for (size_t i = 0; i < c->n_queues; i++)
    free(c->queues[i]);
  free(c->queues);
  free(c);
}

/* Frees c once it is freed by the application, no call is running and no
 * handle is left on the loop. An owned loop can only be closed from
 * outside its uv_run: that is parley_client_free or the end of
 * parley_client_run, which pass outside_loop. */
static bool maybe_release(parley_client *c, bool outside_loop) {
  if (!c->freed || c->busy || c->handles_open || c->running)
    return false;
  if (c->own_loop && (!outside_loop || uv_loop_alive(c->own_loop)))
    return false;
  release(c);
  return true;
}

static bool live(const parley_client *c) {
  return !c->freed && c->state != PARLEY_CONN_CLOSED;
}

static void set_state(parley_client *c, parley_conn_state s, int status) {
  if (c->state == s)
    return;
  c->state = s;
  if (!c->freed && c->opts.cb.on_state)
    c->opts.cb.on_state(c, s, status, c->opts.user_data);
}

/* ------------------------------------------------------------ engine hooks */

/* The engine takes its random ids from here, so that it has no random
 * source of its own and stays reproducible under test. They come from
 * libsodium's generator as parley_msg_id_random's do, sixteen at a time:
 * one getrandom(2) per id was a system call on every send. */
static void h_random_id(void *ud, uint8_t out[PARLEY_MSG_ID_LEN]) {
  parley_client *c = ud;
  const size_t n = sizeof c->id_pool / PARLEY_MSG_ID_LEN;
  if (c->ids_left == 0) {
    /* Initialises libsodium (once per process) and draws the first id. */
    parley_msg_id_random(c->id_pool);
    randombytes_buf(c->id_pool + PARLEY_MSG_ID_LEN, sizeof c->id_pool - PARLEY_MSG_ID_LEN);
    c->ids_left = n;
  }
  memcpy(out, c->id_pool + PARLEY_MSG_ID_LEN * (n - c->ids_left), PARLEY_MSG_ID_LEN);
  c->ids_left--;
}

static void h_event(void *ud, const parley_event *ev) {
  parley_client *c = ud;
  if (live(c) && c->opts.cb.on_event)
    c->opts.cb.on_event(c, ev, c->opts.user_data);
}

static void h_send_result(void *ud, const parley_send_result *r,
                          void *send_ud) {
  parley_client *c = ud;
  if (!c->freed && c->opts.cb.on_send_result)
    c->opts.cb.on_send_result(c, r, send_ud, c->opts.user_data);
}

static void h_commit_result(void *ud, const parley_commit_result *r) {
  parley_client *c = ud;
  if (!c->freed && c->opts.cb.on_commit_result)
    c->opts.cb.on_commit_result(c, r, c->opts.user_data);
}

static void h_assign(void *ud, const parley_assignment *a) {
  parley_client *c = ud;
  if (live(c) && c->opts.cb.on_assign)
    c->opts.cb.on_assign(c, a, c->opts.user_data);
}

static void h_revoke(void *ud, const char *conversation, uint64_t epoch,
                     const char *reason) {
  parley_client *c = ud;
  if (live(c) && c->opts.cb.on_revoke)
    c->opts.cb.on_revoke(c, conversation, epoch, reason, c->opts.user_data);
}

static void h_queue(void *ud, const parley_queue_item *items, size_t n,
                    bool update, bool removed) {
  parley_client *c = ud;
  if (live(c) && c->opts.cb.on_queue)
    c->opts.cb.on_queue(c, items, n, update, removed, c->opts.user_data);
}

static void h_ready(void *ud) {
  parley_client *c = ud;
  if (c->state == PARLEY_CONN_HANDSHAKE)
    set_state(c, PARLEY_CONN_READY, 0);
}

static void h_peer_error(void *ud, int status, const char *message) {
  parley_client *c = ud;
  if (live(c) && c->opts.cb.on_error)
    c->opts.cb.on_error(c, status, message, c->opts.user_data);
}

/* ------------------------------------------------------------ engine pump */

static void on_timer(uv_timer_t *t);

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* Arms the single timer for the earliest thing the client waits for. */
static void rearm(parley_client *c) {
  if (!c->timer_init || c->teardown)
    return;
  uint64_t next = pe_engine_deadline(c->engine);
  if (c->state == PARLEY_CONN_BACKOFF && !c->stopping)
    next = min_u64(next, c->reconnect_at);
  if (c->stopping)
    next = min_u64(next, c->stop_hard_at);
  next = min_u64(next, c->abort_at);
  if (next == UINT64_MAX) {
    uv_timer_stop(&c->timer);
    return;
  }
  uint64_t now = pu_clock_ms();
  uint64_t delay = next > now ? next - now : 0;
  /* The loop's cached time may be stale inside a callback; refresh it so
   * the timer does not fire before the engine's deadline. */
  uv_update_time(c->loop);
  uv_timer_start(&c->timer, on_timer, delay, 0);
}

/* The WebSocket close code the engine asked for, as a status for
 * on_state: 0 for a normal close, the wire error for 4000 + code. */
static int status_from_close_code(int code) {
  if (code == 1000 || code == 0)
    return 0;
  if (code == 1001)
    return PARLEY_ESHUTDOWN;
  if (code >= 4000 && code < 4100)
    return pw_status_from_code((Parley__V1__ErrorCode)(code - 4000));
  return PARLEY_EPROTOCOL;
}

static void pump(parley_client *c) {
  if (!c->engine || c->state == PARLEY_CONN_IDLE ||
      c->state == PARLEY_CONN_CLOSED)
    return;
  const uint8_t *data;
  size_t len;
  while (pe_engine_take_output(c->engine, &data, &len)) {
    /* Output while not connected is dropped: after the next Welcome the
     * engine writes again everything that still matters. */
    if (!c->connected || !c->ws || !pt_ws_is_open(c->ws))
      continue;
    int rc = pt_ws_send(c->ws, data, len);
    if (rc) {
      /* The peer is not reading (or memory ran out): drop the connection
       * and let the engine resend after reconnecting. */
      c->close_sent = true;
      c->local_close_code = 4000 + (int)pw_code_from_status(rc);
      pt_ws_abort(c->ws);
      break;
    }
  }
  int code;
  if (c->connected && !c->close_sent &&
      pe_engine_should_close(c->engine, &code)) {
    c->close_sent = true;
    c->local_close_code = code ? code : 1000;
    pt_ws_close(c->ws, c->local_close_code,
                c->stopping ? "client stopping" : "client closing");
    if (!c->stopping)
      c->abort_at = pu_clock_ms() + PC_CLOSE_WAIT_MS;
  }
  if (c->stopping && !c->teardown && (!c->ws || !pt_ws_busy(c->ws)))
    begin_teardown(c, c->close_status);
  rearm(c);
}

/* Runs what was deferred to the outermost level: a stop asked inside an
 * engine call, then the pump. Holds a busy reference so a callback that
 * frees the client cannot release it under our feet. */
static void do_stop(parley_client *c);

static void settle(parley_client *c) {
  c->busy++;
  for (int round = 0; round < 4; round++) {
    if (!c->freed && c->stop_pending) {
      c->stop_pending = false;
      do_stop(c);
    }
    if (!c->freed)
      pump(c);
    if (c->freed || !c->stop_pending)
      break;
  }
  c->busy--;
  maybe_release(c, false);
}

/* ------------------------------------------------------------ connection */

/* When to try again: the engine's backoff (pe_engine_on_connect_failed),
 * which it draws itself when a session it knew is lost. An attempt that
 * failed before the WebSocket opened never reached the engine, so it is
 * told here. With several gateway nodes, a node that has not failed yet
 * this round (url_i != 0 after moving on) is tried after a short jitter;
 * the backoff grows only once every node failed in a row. */
static uint64_t next_attempt(parley_client *c, uint64_t now, bool was_open) {
  if (!was_open)
    pe_engine_on_connect_failed(c->engine, now, c->url_i != 0);
  return pe_engine_reconnect_at(c->engine);
}

static void connection_lost(parley_client *c, int status) {
  bool was_open = c->connected;
  uint64_t now = pu_clock_ms();
  c->connected = false;
  c->abort_at = UINT64_MAX;
  c->engine_depth++;
  pe_engine_on_disconnect(c->engine, now);
  c->engine_depth--;
  if (c->stopping) {
    begin_teardown(c, c->close_status);
    return;
  }
  /* The next attempt goes to the next node of the list. */
  c->url_i = (c->url_i + 1) % c->n_urls;
  c->reconnect_at = next_attempt(c, now, was_open);
  set_state(c, PARLEY_CONN_BACKOFF, status);
}

static void try_connect(parley_client *c) {
  c->close_sent = false;
  c->local_close_code = 0;
  set_state(c, PARLEY_CONN_CONNECTING, 0);
  if (c->freed || c->teardown || c->stopping)
    return; /* the on_state callback freed or stopped the client */
  /* Every URL was checked by parley_client_new and shares the scheme, and
   * no connection exists between attempts, so this cannot fail. */
  int rc = pt_ws_set_url(c->ws, c->urls[c->url_i], NULL);
  if (!rc)
    rc = pt_ws_connect(c->ws);
  if (rc)
    connection_lost(c, rc);
}

static void t_open(void *ud) {
  parley_client *c = ud;
  enter(c);
  c->connected = true;
  set_state(c, PARLEY_CONN_HANDSHAKE, 0);
  c->engine_depth++;
  int rc = pe_engine_on_connect(c->engine, pu_clock_ms());
  c->engine_depth--;
  if (rc) {
    /* The engine refuses a session (it is closing): end this one. */
    c->close_sent = true;
    c->local_close_code = 1000;
    pt_ws_close(c->ws, 1000, "client closing");
  }
  leave(c);
}

static void t_message(void *ud, const uint8_t *data, size_t len) {
  parley_client *c = ud;
  enter(c);
  if (c->connected) {
    c->engine_depth++;
    /* A bad frame is the engine's to report (on_error) and to close for
     * (should_close); the status adds nothing here. */
    (void)pe_engine_on_input(c->engine, data, len, pu_clock_ms());
    c->engine_depth--;
  }
  leave(c);
}

static void t_closed(void *ud, int status, int close_code) {
  parley_client *c = ud;
  enter(c);
  int st = status;
  if (status == 0) {
    /* This side closed or dropped the connection. */
    st = c->close_sent ? status_from_close_code(c->local_close_code) : 0;
  } else if (status == PARLEY_EDISCONNECTED &&
             (close_code == 1001 || (close_code >= 4000 && close_code < 4100))) {
    /* The gateway said why: going away, or 4000 + an error code. */
    st = status_from_close_code(close_code);
  }
  if (st == 0 && !c->stopping)
    st = PARLEY_EDISCONNECTED;
  if (c->stopping && !c->close_status && !c->close_sent)
    c->close_status = st; /* lost while draining */
  connection_lost(c, st);
  leave(c);
}

static void handle_closed(parley_client *c) {
  if (--c->handles_open == 0 && !c->freed)
    set_state(c, PARLEY_CONN_CLOSED, c->close_status);
}

static void t_destroyed(void *ud) {
  parley_client *c = ud;
  enter(c);
  c->ws = NULL;
  handle_closed(c);
  leave(c);
}

static void timer_closed(uv_handle_t *h) {
  parley_client *c = h->data;
  enter(c);
  handle_closed(c);
  leave(c);
}

/* Closes every handle the client has on the loop. CLOSED is reported when
 * the last close completes, so that after on_state(CLOSED) the loop can
 * exit. */
static void begin_teardown(parley_client *c, int status) {
  if (c->teardown)
    return;
  c->teardown = true;
  c->stopping = true;
  if (!c->close_status)
    c->close_status = status;
  if (c->state != PARLEY_CONN_CLOSED && c->state != PARLEY_CONN_IDLE)
    set_state(c, PARLEY_CONN_CLOSING, 0);
  c->handles_open++; /* held while starting the closes */
  if (c->ws) {
    c->handles_open++;
    pt_ws_destroy(c->ws);
  }
  if (c->timer_init) {
    c->handles_open++;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, timer_closed);
  }
  handle_closed(c);
}

static void on_timer(uv_timer_t *t) {
  parley_client *c = t->data;
  enter(c);
  uint64_t now = pu_clock_ms();
  if (pe_engine_deadline(c->engine) <= now) {
    c->engine_depth++;
    pe_engine_on_tick(c->engine, now);
    c->engine_depth--;
  }
  if (now >= c->abort_at) {
    /* The peer did not answer our close in time. */
    c->abort_at = UINT64_MAX;
    if (c->ws)
      pt_ws_abort(c->ws);
  }
  if (c->stopping && !c->teardown && now >= c->stop_hard_at) {
    /* The drain time and the close grace are over: first ask for a close
     * handshake, then give up on it. */
    if (c->connected && !c->close_sent) {
      c->close_sent = true;
      c->local_close_code = 1000;
      pt_ws_close(c->ws, 1000, "client stopping");
      c->stop_hard_at = now + PC_CLOSE_GRACE_MS;
    } else if (c->ws && pt_ws_busy(c->ws)) {
      pt_ws_abort(c->ws);
      c->stop_hard_at = UINT64_MAX;
    } else {
      begin_teardown(c, c->close_status);
    }
  } else if (c->state == PARLEY_CONN_BACKOFF && !c->stopping &&
             now >= c->reconnect_at) {
    try_connect(c);
  }
  leave(c);
}

/* ------------------------------------------------------------ options */

static int dup_opt(const char *s, char **out) {
  *out = NULL;
  if (!s)
    return 0;
  *out = strdup(s);
  return *out ? 0 : PARLEY_ENOMEM;
}

/* Adds url[0..len) to the list, without surrounding blanks. */
static int add_url(char **urls, size_t *n, const char *url, size_t len) {
  while (len && isspace((unsigned char)*url)) {
    url++;
    len--;
  }
  while (len && isspace((unsigned char)url[len - 1]))
    len--;
  if (*n == PARLEY_MAX_URLS)
    return PARLEY_EINVAL;
  char *u = malloc(len + 1);
  if (!u)
    return PARLEY_ENOMEM;
  memcpy(u, url, len);
  u[len] = 0;
  urls[(*n)++] = u;
  return 0;
}

/* The node list: url split where a comma starts another ws:// or wss://
 * URL (a comma inside a path stays), then urls. */
static int build_urls(const parley_client_options *o, char **urls, size_t *n) {
  *n = 0;
  int rc = 0;
  const char *p = o->url;
  while (p && *p && !rc) {
    const char *end = p;
    for (;;) {
      end = strchr(end, ',');
      if (!end)
        break;
      const char *q = end + 1;
      while (isspace((unsigned char)*q))
        q++;
      if (!strncmp(q, "ws://", 5) || !strncmp(q, "wss://", 6))
        break;
      end++;
    }
    size_t len = end ? (size_t)(end - p) : strlen(p);
    rc = add_url(urls, n, p, len);
    p = end ? end + 1 : NULL;
  }
  for (size_t i = 0; !rc && i < o->n_urls; i++)
    rc = o->urls[i] ? add_url(urls, n, o->urls[i], strlen(o->urls[i])) : PARLEY_EINVAL;
  if (!rc && *n == 0)
    rc = PARLEY_EINVAL;
  /* Every node must be a valid URL of one scheme (pt_ws_set_url). */
  pt_url first, u;
  for (size_t i = 0; !rc && i < *n; i++) {
    if (pt_url_parse(urls[i], i ? &u : &first, NULL))
      rc = PARLEY_EINVAL;
    else if (i && u.tls != first.tls)
      rc = PARLEY_EINVAL;
  }
  if (rc) {
    for (size_t i = 0; i < *n; i++)
      free(urls[i]);
    *n = 0;
  }
  return rc;
}

static int copy_options(parley_client *c, const parley_client_options *o) {
  c->opts = *o;
  int rc = build_urls(o, c->urls, &c->n_urls);
  rc = rc ? rc : dup_opt(c->urls[0], &c->url);
  rc = rc ? rc : dup_opt(o->principal, &c->principal);
  rc = rc ? rc : dup_opt(o->token, &c->token);
  rc = rc ? rc : dup_opt(o->device, &c->device);
  rc = rc ? rc : dup_opt(o->locale, &c->locale);
  rc = rc ? rc : dup_opt(o->ca_file, &c->ca_file);
  if (rc)
    return rc;
  if (o->n_queues) {
    c->queues = calloc(o->n_queues, sizeof *c->queues);
    if (!c->queues)
      return PARLEY_ENOMEM;
    for (size_t i = 0; i < o->n_queues; i++) {
      if (dup_opt(o->queues[i], &c->queues[i]))
        return PARLEY_ENOMEM;
      c->n_queues = i + 1;
    }
  }
  c->opts.url = c->url;
  c->opts.urls = (const char *const *)c->urls;
  c->opts.n_urls = c->n_urls;
  c->opts.principal = c->principal;
  c->opts.token = c->token;
  c->opts.device = c->device;
  c->opts.locale = c->locale;
  c->opts.ca_file = c->ca_file;
  c->opts.queues = (const char *const *)c->queues;
  c->opts.n_queues = c->n_queues;
  return 0;
}

static int check_options(const parley_client_options *o) {
  if (o->n_urls && !o->urls)
    return PARLEY_EINVAL;
  if (!o->url && !o->n_urls)
    return PARLEY_EINVAL;
  if (!o->principal || !*o->principal)
    return PARLEY_EINVAL;
  if (o->role != PARLEY_ROLE_CUSTOMER && o->role != PARLEY_ROLE_AGENT &&
      o->role != PARLEY_ROLE_BOT)
    return PARLEY_EINVAL;
  if (o->n_queues && !o->queues)
    return PARLEY_EINVAL;
  for (size_t i = 0; i < o->n_queues; i++)
    if (!o->queues[i])
      return PARLEY_EINVAL;
  if (o->tuning.max_frame_bytes > PC_MAX_FRAME_LIMIT)
    return PARLEY_EINVAL;
  if (o->token)
    for (const char *p = o->token; *p; p++)
      if ((unsigned char)*p < 0x20 || *p == 0x7f)
        return PARLEY_EINVAL; /* would break the Authorization header */
  return 0;
}

/* ------------------------------------------------------------ public API */

int parley_client_new(const parley_client_options *opts, parley_client **out) {
  if (!out)
    return PARLEY_EINVAL;
  *out = NULL;
  if (!opts)
    return PARLEY_EINVAL;
  /* A version 1 struct ends before urls: only its own fields are read. */
  parley_client_options o2;
  memset(&o2, 0, sizeof o2);
  if (opts->struct_version == 1)
    memcpy(&o2, opts, offsetof(parley_client_options, urls));
  else if (opts->struct_version == PARLEY_CLIENT_OPTIONS_VERSION)
    o2 = *opts;
  else
    return PARLEY_EINVAL;
  opts = &o2;
  int rc = check_options(opts);
  if (rc)
    return rc;

  parley_client *c = calloc(1, sizeof *c);
  if (!c)
    return PARLEY_ENOMEM;
  c->state = PARLEY_CONN_IDLE;
  c->abort_at = UINT64_MAX;
  c->reconnect_at = UINT64_MAX;
  c->stop_hard_at = UINT64_MAX;
  c->freed = true; /* so that release() paths below need no special case */
  rc = copy_options(c, opts);
  if (rc) {
    release(c);
    return rc;
  }
  if (!c->opts.tuning.seed)
    c->opts.tuning.seed = pu_rng_seed_fresh();

  if (opts->loop) {
    c->loop = opts->loop;
  } else {
    c->own_loop = malloc(sizeof *c->own_loop);
    if (!c->own_loop || uv_loop_init(c->own_loop) != 0) {
      free(c->own_loop);
      c->own_loop = NULL;
      release(c);
      return PARLEY_ENOMEM;
    }
    c->loop = c->own_loop;
  }
  c->opts.loop = c->loop;

  pe_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.principal = c->principal;
  cfg.token = c->token;
  cfg.role = c->opts.role;
  cfg.device = c->device;
  cfg.locale = c->locale;
  cfg.queues = (const char *const *)c->queues;
  cfg.n_queues = c->n_queues;
  cfg.manual_ack = c->opts.manual_ack;
  cfg.tuning = c->opts.tuning;
  pe_hooks hooks = {
      .ud = c,
      .random_id = h_random_id,
      .event = h_event,
      .send_result = h_send_result,
      .commit_result = h_commit_result,
      .assign = h_assign,
      .revoke = h_revoke,
      .queue = h_queue,
      .ready = h_ready,
      .peer_error = h_peer_error,
  };
  c->engine = pe_engine_new(&cfg, &hooks);
  if (!c->engine) {
    release(c);
    return PARLEY_ENOMEM;
  }
  c->freed = false;
  *out = c;
  return 0;
}

int parley_client_start(parley_client *c) {
  if (!c || c->freed)
    return PARLEY_EINVAL;
  if (c->started || c->stopping || c->state != PARLEY_CONN_IDLE)
    return PARLEY_ESTATE;
  pt_ws_config wc = {
      .url = c->urls[0],
      .token = c->token,
      .tls_insecure = c->opts.tls_insecure,
      .ca_file = c->ca_file,
      .max_message_bytes = c->opts.tuning.max_frame_bytes
                               ? c->opts.tuning.max_frame_bytes
                               : PW_DEFAULT_MAX_FRAME,
  };
  pt_ws_hooks wh = {
      .ud = c,
      .open = t_open,
      .message = t_message,
      .closed = t_closed,
      .destroyed = t_destroyed,
  };
  const char *why = NULL;
  int rc = pt_ws_new(c->loop, &wc, &wh, &c->ws, &why);
  if (rc)
    return rc;
  uv_timer_init(c->loop, &c->timer);
  c->timer.data = c;
  c->timer_init = true;
  c->started = true;

  enter(c);
  try_connect(c);
  leave(c);
  return 0;
}

int parley_client_run(parley_client *c) {
  if (!c || c->freed || !c->own_loop)
    return PARLEY_EINVAL;
  if (c->running)
    return PARLEY_ESTATE;
  c->running = true;
  int rc = uv_run(c->own_loop, UV_RUN_DEFAULT);
  c->running = false;
  /* A callback may have freed the client while the loop ran. */
  if (c->freed) {
    maybe_release(c, true);
    return 0;
  }
  return rc < 0 ? PARLEY_EIO : 0;
}

static void do_stop(parley_client *c) {
  if (c->stopping || c->state == PARLEY_CONN_CLOSED)
    return;
  uint64_t now = pu_clock_ms();
  c->stopping = true;
  c->stop_hard_at = now + c->stop_drain_ms + PC_CLOSE_GRACE_MS;
  set_state(c, PARLEY_CONN_CLOSING, 0);
  c->engine_depth++;
  pe_engine_close(c->engine, now, now + c->stop_drain_ms);
  c->engine_depth--;
  if (!c->connected && c->ws && pt_ws_busy(c->ws)) {
    /* Still opening the WebSocket: nothing to flush on it. */
    pt_ws_abort(c->ws);
  }
  /* settle()'s pump sends the engine's last frames, closes the WebSocket
   * when the engine is done, or tears down when nothing is connected. */
}

int parley_client_stop(parley_client *c, uint32_t drain_ms) {
  if (!c || c->freed)
    return PARLEY_EINVAL;
  if (c->state == PARLEY_CONN_CLOSED || c->stopping || c->stop_pending)
    return 0;
  if (!c->started) {
    enter(c);
    c->stopping = true;
    c->engine_depth++;
    pe_engine_close(c->engine, pu_clock_ms(), pu_clock_ms());
    c->engine_depth--;
    set_state(c, PARLEY_CONN_CLOSED, 0);
    leave(c);
    return 0;
  }
  c->stop_drain_ms = drain_ms;
  if (c->engine_depth) {
    /* Inside an engine callback: the engine must not be closed under
     * itself; the outermost call does it on return. */
    c->stop_pending = true;
    return 0;
  }
  enter(c);
  do_stop(c);
  leave(c);
  return 0;
}

void parley_client_free(parley_client *c) {
  if (!c || c->freed)
    return;
  c->freed = true;
  c->stop_pending = false;
  if (c->started && !c->teardown) {
    /* Closed without draining: the transport drops the connection. */
    c->stopping = true;
    begin_teardown(c, PARLEY_ESHUTDOWN);
  }
  if (c->own_loop && !c->running && !c->busy) {
    /* Nobody runs an owned loop but the client: finish the closes here. */
    c->running = true;
    uv_run(c->own_loop, UV_RUN_DEFAULT);
    c->running = false;
  }
  maybe_release(c, true);
}

static int api_check(const parley_client *c) {
  if (!c || c->freed)
    return PARLEY_EINVAL;
  if (c->state == PARLEY_CONN_CLOSED || c->teardown)
    return PARLEY_ESHUTDOWN;
  return 0;
}

int parley_client_send(parley_client *c, const char *conversation,
                       const parley_content *content, const parley_quote *quote,
                       const uint8_t *msg_id, uint64_t epoch, void *send_ud) {
  int rc = api_check(c);
  if (rc)
    return rc;
  enter(c);
  c->engine_depth++;
  rc = pe_engine_send(c->engine, conversation, content, quote, msg_id, epoch,
                      send_ud, pu_clock_ms());
  c->engine_depth--;
  leave(c);
  return rc;
}

int parley_client_action(parley_client *c, const char *conversation,
                         const parley_action *action, const uint8_t *msg_id,
                         uint64_t epoch, void *send_ud) {
  int rc = api_check(c);
  if (rc)
    return rc;
  enter(c);
  c->engine_depth++;
  rc = pe_engine_action(c->engine, conversation, action, msg_id, epoch,
                        send_ud, pu_clock_ms());
  c->engine_depth--;
  leave(c);
  return rc;
}

int parley_client_open(parley_client *c, const char *conversation,
                       const char *customer, const char *locale,
                       const uint8_t *msg_id, void *send_ud) {
  int rc = api_check(c);
  if (rc)
    return rc;
  enter(c);
  c->engine_depth++;
  rc = pe_engine_open(c->engine, conversation, customer, locale, msg_id,
                      send_ud, pu_clock_ms());
  c->engine_depth--;
  leave(c);
  return rc;
}

int parley_client_ack(parley_client *c, const char *conversation,
                      uint64_t seq) {
  int rc = api_check(c);
  if (rc)
    return rc;
  enter(c);
  c->engine_depth++;
  rc = pe_engine_ack(c->engine, conversation, seq, pu_clock_ms());
  c->engine_depth--;
  leave(c);
  return rc;
}

int parley_client_commit(parley_client *c, const parley_commit *commits,
                         size_t n) {
  int rc = api_check(c);
  if (rc)
    return rc;
  enter(c);
  c->engine_depth++;
  rc = pe_engine_commit(c->engine, commits, n, pu_clock_ms());
  c->engine_depth--;
  leave(c);
  return rc;
}

int parley_client_queue(parley_client *c, const char *queue) {
  int rc = api_check(c);
  if (rc)
    return rc;
  enter(c);
  c->engine_depth++;
  rc = pe_engine_queue(c->engine, queue, pu_clock_ms());
  c->engine_depth--;
  leave(c);
  return rc;
}

parley_conn_state parley_client_state(const parley_client *c) {
  return c ? c->state : PARLEY_CONN_CLOSED;
}

const char *parley_client_url(const parley_client *c) {
  return c && c->n_urls ? c->urls[c->url_i] : NULL;
}

unsigned parley_client_upgrade_status(const parley_client *c) {
  return c && c->ws ? pt_ws_last_http_status(c->ws) : 0;
}

struct uv_loop_s *parley_client_loop(parley_client *c) {
  return c ? c->loop : NULL;
}

void parley_client_stats_get(const parley_client *c, parley_client_stats *out) {
  if (!out)
    return;
  memset(out, 0, sizeof *out);
  if (c && c->engine)
    pe_engine_stats(c->engine, out);
}
