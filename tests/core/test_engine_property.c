/* Randomized property test of the protocol engine.
 *
 * A gateway model (assigns seqs, dedups sends by client message id, pushes
 * within a window, redelivers what is not acknowledged, answers fetches,
 * resumes after reconnects) talks to the engine through a simulated
 * network that drops, duplicates, delays and reorders frames and cuts the
 * connection. After a quiet phase the test checks, for every seed:
 *   - every conversation the application saw is exactly the gateway's
 *     stream: each seq once, in order, with the same message ids;
 *   - every send got exactly one result, status 0, with the seq the
 *     gateway stored, and the sender's order holds in the gateway's log;
 *   - the engine holds no bytes once everything is delivered and acked.
 *
 * Every third seed runs the client as a bot instead: the gateway assigns
 * each conversation with a new epoch per session, the bot's handler
 * replies to every customer message with a derived id and commits the
 * event (the engine holds the commit until the reply is acknowledged),
 * and a session lost mid-handler makes the handler run again under the
 * new epoch. There the checks are: each customer message has exactly one
 * reply in the gateway's log, after it and in order; every event is
 * committed; every send and commit gets exactly one result (stored,
 * duplicate, or refused as STALE_EPOCH when the epoch moved on); each
 * commit carries the state its handler produced (key "last" = its seq, tag
 * "h<seq mod 3>"), and the gateway's stored state and tags are those of the
 * last committed handler.
 *
 * One seed in six runs a customer with manual_ack, acknowledging what it
 * applied on its own schedule (pe_engine_ack).
 *
 * PARLEY_PROPERTY_SEEDS=N runs N seeds (default 2000);
 * PARLEY_PROPERTY_SEED=N replays one seed verbosely.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <parley/client.h>

#include "core/engine.h"
#include "wire/wire.h"

#define NCONV 4
#define MAXLOG 400
#define MAXSENDS 64
#define MAXNET 4096

static int verbose;
static uint64_t cur_seed;

static const char *prog_name = "test_engine_property";

/* ------------------------------------------------------------ randomness */

typedef struct rng {
  uint64_t s;
} rng;

static uint64_t rnext(rng *r) {
  uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static uint64_t rbelow(rng *r, uint64_t n) { return n ? rnext(r) % n : 0; }
static bool rchance(rng *r, double p) { return (double)(rnext(r) >> 11) / 9007199254740992.0 < p; }

/* ---------------------------------------------------------------- model */

typedef struct g_ev {
  uint8_t id[16];
  int send_no;      /* index into the app's sends, or -1 for another sender */
  uint64_t reply_to; /* bots: the customer seq this reply answers, 0 if none */
} g_ev;

#define MAXCALLS 4096
#define BOT "bot-1"

/* Bots: one pe_engine_send call of the handler. */
typedef struct bot_call {
  int conv;
  uint64_t reply_to;
  uint8_t id[16];
  int results, status;
} bot_call;

typedef struct g_conv {
  char name[16];
  g_ev log[MAXLOG];
  uint64_t n;           /* last seq */
  uint64_t watermark;   /* stored ACK watermark of the client */
  uint64_t pushed;      /* highest seq pushed on this session */
  uint64_t progress_at; /* last push or ACK progress */
  uint64_t state_last;  /* stored state: "last" of the last applied commit */
  char tag[8];          /* stored tag of the last applied commit */
} g_conv;

typedef struct net_msg {
  uint64_t at, order;
  int to_gateway;
  uint64_t conn;
  uint8_t *data;
  size_t len;
} net_msg;

typedef struct app_send {
  uint64_t at;
  int conv;
  uint8_t id[16];
  bool submitted;
  int results;
  int status;
  uint64_t seq;
} app_send;

typedef struct sim {
  rng r;
  uint64_t now;
  pe_engine *e;
  /* Network. */
  net_msg net[MAXNET];
  size_t n_net;
  uint64_t net_order;
  uint64_t conn;         /* current connection number; 0 = none */
  bool gw_session;       /* the gateway has seen Hello on conn */
  double p_drop, p_dup;
  uint64_t delay_max;
  uint64_t next_cut;
  uint64_t cut_every;
  /* Gateway. */
  g_conv conv[NCONV];
  uint32_t window;
  uint64_t gw_ack_timeout;
  uint64_t gw_last_tx;
  double p_busy;
  uint64_t next_inject;
  uint64_t inject_every;
  int injects_left;
  /* Application. */
  app_send sends[MAXSENDS];
  int n_sends;
  uint64_t got[NCONV];     /* events the app received per conversation */
  uint8_t got_ids[NCONV][MAXLOG][16];
  bool got_has[NCONV][MAXLOG];
  /* Bots. */
  bool bot;
  /* Manual ACK customers: the application acknowledges what it applied
   * every ack_every ms instead of after each callback. */
  bool manual;
  uint64_t ack_every, next_manual_ack;
  size_t manual_acks;
  uint64_t gw_epoch[NCONV];  /* the gateway's current epoch per conversation */
  uint64_t app_epoch[NCONV]; /* the epoch the bot was last assigned */
  uint64_t app_next[NCONV];  /* next seq the bot expects in this assignment */
  bot_call calls[MAXCALLS];
  int n_calls;
  size_t commit_results, commit_stale, handler_runs;
  char fail[256];
  size_t peer_errors;
  size_t stat_frames, stat_dropped, stat_duped, stat_cuts;
} sim;

static void app_fail(sim *s, const char *fmt, ...) {
  if (s->fail[0]) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->fail, sizeof s->fail, fmt, ap);
  va_end(ap);
}

static int conv_index(sim *s, const char *name) {
  for (int i = 0; i < NCONV; i++)
    if (strcmp(s->conv[i].name, name) == 0) return i;
  return -1;
}

/* ------------------------------------------------------------ network */

/* reliable: never lost or doubled and delivered next (used in bot runs
 * for Welcome and Assign, which TCP would never lose or reorder and which
 * a session cannot do without). */
static void net_put2(sim *s, int to_gateway, const uint8_t *data, size_t len, bool reliable) {
  s->stat_frames++;
  int copies = 1;
  if (reliable) {
    copies = 1;
  } else if (rchance(&s->r, s->p_drop)) {
    s->stat_dropped++;
    copies = 0;
  } else if (rchance(&s->r, s->p_dup)) {
    s->stat_duped++;
    copies = 2;
  }
  for (int k = 0; k < copies; k++) {
    if (s->n_net == MAXNET) {
      app_fail(s, "network queue overflow");
      return;
    }
    net_msg *m = &s->net[s->n_net++];
    m->at = s->now + 1 + (reliable ? 0 : rbelow(&s->r, s->delay_max));
    m->order = s->net_order++;
    m->to_gateway = to_gateway;
    m->conn = s->conn;
    m->data = malloc(len ? len : 1);
    memcpy(m->data, data, len);
    m->len = len;
  }
}

static void net_put(sim *s, int to_gateway, const uint8_t *data, size_t len) {
  net_put2(s, to_gateway, data, len, false);
}

static void net_clear(sim *s) {
  for (size_t i = 0; i < s->n_net; i++) free(s->net[i].data);
  s->n_net = 0;
}

static uint64_t net_next(const sim *s) {
  uint64_t t = UINT64_MAX;
  for (size_t i = 0; i < s->n_net; i++)
    if (s->net[i].at < t) t = s->net[i].at;
  return t;
}

/* ---------------------------------------------------------- gateway out */

static void gw_emit(sim *s, const pw_frame *f) {
  uint8_t *buf;
  size_t len;
  if (pw_encode(f, 0, &buf, &len) != 0) abort();
  bool reliable = s->bot && (f->body_case == PARLEY__V1__FRAME__BODY_WELCOME ||
                             f->body_case == PARLEY__V1__FRAME__BODY_ASSIGN);
  net_put2(s, 0, buf, len, reliable);
  free(buf);
  s->gw_last_tx = s->now;
}

static void fill_event(sim *s, int ci, uint64_t seq, Parley__V1__Event *ev,
                       Parley__V1__Content *ct, Parley__V1__Text *tx, bool redelivered) {
  const g_ev *ge = &s->conv[ci].log[seq - 1];
  parley__v1__event__init(ev);
  parley__v1__content__init(ct);
  parley__v1__text__init(tx);
  ev->conversation = s->conv[ci].name;
  ev->seq = seq;
  ev->kind = PARLEY__V1__EVENT_KIND__EVENT_MESSAGE;
  ev->sender = ge->send_no >= 0 ? (s->bot ? BOT : "alice") : "cust";
  ev->client_msg_id.data = (uint8_t *)ge->id;
  ev->client_msg_id.len = 16;
  ev->redelivered = redelivered;
  tx->body = "m";
  ct->body_case = PARLEY__V1__CONTENT__BODY_TEXT;
  ct->text = tx;
  ev->content = ct;
}

static uint64_t unacked_total(const sim *s) {
  uint64_t n = 0;
  for (int i = 0; i < NCONV; i++)
    if (s->conv[i].pushed > s->conv[i].watermark) n += s->conv[i].pushed - s->conv[i].watermark;
  return n;
}

/* Pushes (or re-pushes from first_seq) events of conversation ci. */
static void gw_push_range(sim *s, int ci, uint64_t from, uint64_t to, bool redelivered) {
  if (from > to) return;
  size_t n = (size_t)(to - from + 1);
  Parley__V1__Event *evs = calloc(n, sizeof *evs);
  Parley__V1__Content *cts = calloc(n, sizeof *cts);
  Parley__V1__Text *txs = calloc(n, sizeof *txs);
  Parley__V1__Event **ptrs = calloc(n, sizeof *ptrs);
  for (size_t k = 0; k < n; k++) {
    fill_event(s, ci, from + k, &evs[k], &cts[k], &txs[k], redelivered);
    ptrs[k] = &evs[k];
  }
  /* Events travel in Deliver frames of 1..3 events, so a lost frame makes
   * a gap of a few seqs. */
  size_t k = 0;
  while (k < n) {
    size_t take = 1 + (size_t)rbelow(&s->r, 3);
    if (take > n - k) take = n - k;
    Parley__V1__Deliver d = PARLEY__V1__DELIVER__INIT;
    d.n_events = take;
    d.events = &ptrs[k];
    pw_frame f = PARLEY__V1__FRAME__INIT;
    f.body_case = PARLEY__V1__FRAME__BODY_DELIVER;
    f.deliver = &d;
    gw_emit(s, &f);
    k += take;
  }
  free(evs);
  free(cts);
  free(txs);
  free(ptrs);
}

static void gw_push(sim *s) {
  if (!s->gw_session) return;
  for (int i = 0; i < NCONV; i++) {
    g_conv *c = &s->conv[i];
    uint64_t from = c->pushed + 1, to = c->pushed;
    while (to < c->n && unacked_total(s) < s->window) {
      to++;
      c->pushed = to;
    }
    if (to >= from) {
      gw_push_range(s, i, from, to, false);
      c->progress_at = s->now;
    }
  }
}

static void gw_redeliver(sim *s) {
  if (!s->gw_session) return;
  for (int i = 0; i < NCONV; i++) {
    g_conv *c = &s->conv[i];
    if (c->pushed > c->watermark && s->now >= c->progress_at + s->gw_ack_timeout) {
      gw_push_range(s, i, c->watermark + 1, c->pushed, true);
      c->progress_at = s->now;
    }
  }
}

static uint64_t gw_next(const sim *s) {
  uint64_t t = UINT64_MAX;
  if (!s->gw_session) return t;
  for (int i = 0; i < NCONV; i++) {
    const g_conv *c = &s->conv[i];
    if (c->pushed > c->watermark && c->progress_at + s->gw_ack_timeout < t)
      t = c->progress_at + s->gw_ack_timeout;
  }
  return t;
}

/* ----------------------------------------------------------- gateway in */

static void gw_on_hello(sim *s, const Parley__V1__Hello *h) {
  s->gw_session = true;
  Parley__V1__Welcome w = PARLEY__V1__WELCOME__INIT;
  w.version = 1;
  w.principal = "alice";
  w.heartbeat_ms = 1000;
  w.window = s->window;
  w.max_frame_bytes = 1024 * 1024;
  w.ack_timeout_ms = (uint32_t)s->gw_ack_timeout;
  Parley__V1__ResumeCursor rc[NCONV], *rp[NCONV];
  size_t n = 0;
  for (int i = 0; i < NCONV; i++) {
    g_conv *c = &s->conv[i];
    uint64_t cursor = c->watermark;
    for (size_t k = 0; k < h->n_resume; k++)
      if (strcmp(h->resume[k]->conversation, c->name) == 0 && h->resume[k]->after_seq > cursor)
        cursor = h->resume[k]->after_seq;
    if (cursor > c->n) cursor = c->n;
    if (s->bot) cursor = c->watermark; /* bots resume from their commits */
    /* Resume: the gateway streams after the cursor; events between the
     * watermark and the cursor count as acknowledged by this client. */
    if (cursor > c->watermark) c->watermark = cursor;
    c->pushed = cursor;
    c->progress_at = s->now;
    if (c->n == 0) continue;
    parley__v1__resume_cursor__init(&rc[n]);
    rc[n].conversation = c->name;
    rc[n].after_seq = cursor;
    rp[n] = &rc[n];
    n++;
  }
  w.n_cursors = s->bot ? 0 : n;
  w.cursors = rp;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_WELCOME;
  f.welcome = &w;
  gw_emit(s, &f);
  if (s->bot) {
    /* Every conversation moves to this connection with a new epoch and
     * streams after the bot's committed watermark. */
    for (int i = 0; i < NCONV; i++) {
      g_conv *c = &s->conv[i];
      s->gw_epoch[i]++;
      c->pushed = c->watermark;
      Parley__V1__Assign a = PARLEY__V1__ASSIGN__INIT;
      a.conversation = c->name;
      a.epoch = s->gw_epoch[i];
      a.acked_seq = c->watermark;
      pw_frame af = PARLEY__V1__FRAME__INIT;
      af.body_case = PARLEY__V1__FRAME__BODY_ASSIGN;
      af.assign = &a;
      gw_emit(s, &af);
    }
  }
  gw_push(s);
}

static int find_send_by_id(sim *s, const uint8_t *id) {
  for (int i = 0; i < s->n_sends; i++)
    if (memcmp(s->sends[i].id, id, 16) == 0) return i;
  return -1;
}

static void gw_on_send(sim *s, const Parley__V1__Send *snd) {
  int ci = conv_index(s, snd->conversation);
  Parley__V1__SendAck a = PARLEY__V1__SEND_ACK__INIT;
  a.client_msg_id = snd->client_msg_id;
  a.conversation = snd->conversation;
  if (ci < 0) {
    app_fail(s, "gateway got a Send for unknown conversation %s", snd->conversation);
    return;
  }
  g_conv *c = &s->conv[ci];
  uint64_t seq = 0;
  for (uint64_t k = 0; k < c->n; k++)
    if (memcmp(c->log[k].id, snd->client_msg_id.data, 16) == 0) seq = k + 1;
  if (seq) {
    a.seq = seq;
    a.duplicate = true;
  } else if (s->bot && snd->epoch != s->gw_epoch[ci]) {
    a.error = PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH;
    a.message = "stale epoch";
  } else if (rchance(&s->r, s->p_busy)) {
    a.error = PARLEY__V1__ERROR_CODE__ERROR_BUSY;
    a.message = "busy";
  } else {
    if (c->n == MAXLOG) {
      app_fail(s, "conversation log full");
      return;
    }
    g_ev *ge = &c->log[c->n++];
    memcpy(ge->id, snd->client_msg_id.data, 16);
    ge->reply_to = 0;
    if (s->bot) {
      ge->send_no = -1;
      for (int k = 0; k < s->n_calls; k++)
        if (memcmp(s->calls[k].id, ge->id, 16) == 0) {
          ge->send_no = 0;
          ge->reply_to = s->calls[k].reply_to;
        }
    } else {
      ge->send_no = find_send_by_id(s, ge->id);
    }
    if (ge->send_no < 0) app_fail(s, "gateway stored a send the app never made");
    a.seq = c->n;
  }
  if (verbose > 1)
    fprintf(stderr, "  [%llu] gw Send %s epoch %llu (now %llu) id %02x%02x -> seq %llu dup %d err %d\n",
            (unsigned long long)s->now, c->name, (unsigned long long)snd->epoch,
            (unsigned long long)s->gw_epoch[ci], snd->client_msg_id.data[14],
            snd->client_msg_id.data[15], (unsigned long long)a.seq, (int)a.duplicate, (int)a.error);
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_SEND_ACK;
  f.send_ack = &a;
  gw_emit(s, &f);
  gw_push(s);
}

static void gw_on_ack(sim *s, const Parley__V1__Ack *a) {
  for (size_t k = 0; k < a->n_entries; k++) {
    int ci = conv_index(s, a->entries[k]->conversation);
    if (ci < 0) {
      app_fail(s, "ACK for unknown conversation");
      return;
    }
    g_conv *c = &s->conv[ci];
    uint64_t up = a->entries[k]->up_to_seq;
    if (up > c->n) {
      app_fail(s, "ACK of %s up to %llu beyond the stream end %llu", c->name,
               (unsigned long long)up, (unsigned long long)c->n);
      return;
    }
    if (up > c->watermark) {
      c->watermark = up;
      c->progress_at = s->now;
      if (c->pushed < up) c->pushed = up;
    }
  }
  gw_push(s);
}

static void gw_on_commit(sim *s, const Parley__V1__Commit *cm) {
  Parley__V1__CommitOutcome *outs = calloc(cm->n_items + 1, sizeof *outs);
  Parley__V1__CommitOutcome **ptrs = calloc(cm->n_items + 1, sizeof *ptrs);
  for (size_t k = 0; k < cm->n_items; k++) {
    const Parley__V1__ConversationCommit *it = cm->items[k];
    Parley__V1__CommitOutcome *o = &outs[k];
    parley__v1__commit_outcome__init(o);
    o->conversation = it->conversation;
    o->ack_seq = it->ack_seq;
    ptrs[k] = o;
    int ci = conv_index(s, it->conversation);
    if (ci < 0) {
      app_fail(s, "Commit of unknown conversation");
      break;
    }
    g_conv *c = &s->conv[ci];
    if (it->ack_seq <= c->watermark) {
      o->duplicate = true;
    } else if (it->epoch != s->gw_epoch[ci]) {
      o->error = PARLEY__V1__ERROR_CODE__ERROR_STALE_EPOCH;
    } else if (it->ack_seq > c->n) {
      app_fail(s, "Commit of %s up to %llu beyond the stream end", c->name,
               (unsigned long long)it->ack_seq);
      break;
    } else if (rchance(&s->r, s->p_busy)) {
      o->error = PARLEY__V1__ERROR_CODE__ERROR_BUSY;
    } else {
      /* The bot's handler for seq N commits "last" = N and tag h<N mod 3>:
       * an item carrying another handler's state is the engine's mix-up. */
      char want[24];
      snprintf(want, sizeof want, "%llu", (unsigned long long)it->ack_seq);
      if (s->bot) {
        if (it->n_state != 1 || strcmp(it->state[0]->key, "last") != 0 ||
            it->state[0]->value.len != strlen(want) ||
            memcmp(it->state[0]->value.data, want, strlen(want)) != 0 || it->n_tags_add != 1) {
          app_fail(s, "Commit of %s#%llu does not carry its handler's state", c->name,
                   (unsigned long long)it->ack_seq);
          break;
        }
        c->state_last = it->ack_seq;
        snprintf(c->tag, sizeof c->tag, "%s", it->tags_add[0]);
      }
      c->watermark = it->ack_seq;
      c->progress_at = s->now;
      if (c->pushed < c->watermark) c->pushed = c->watermark;
    }
  }
  if (verbose > 1)
    for (size_t k = 0; k < cm->n_items; k++)
      fprintf(stderr, "  [%llu] gw Commit %s#%llu epoch %llu -> dup %d err %d\n",
              (unsigned long long)s->now, cm->items[k]->conversation,
              (unsigned long long)cm->items[k]->ack_seq, (unsigned long long)cm->items[k]->epoch,
              (int)outs[k].duplicate, (int)outs[k].error);
  Parley__V1__CommitResult r = PARLEY__V1__COMMIT_RESULT__INIT;
  r.request_id = cm->request_id;
  r.n_outcomes = cm->n_items;
  r.outcomes = ptrs;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_COMMIT_RESULT;
  f.commit_result = &r;
  gw_emit(s, &f);
  free(outs);
  free(ptrs);
  gw_push(s);
}

static void gw_on_fetch(sim *s, const Parley__V1__Fetch *fe) {
  int ci = conv_index(s, fe->conversation);
  if (ci < 0) {
    app_fail(s, "Fetch of unknown conversation");
    return;
  }
  g_conv *c = &s->conv[ci];
  uint64_t to = fe->to_seq && fe->to_seq < c->n ? fe->to_seq : c->n;
  uint64_t last = to;
  if (fe->limit && fe->from_seq + fe->limit - 1 < last) last = fe->from_seq + fe->limit - 1;
  size_t n = fe->from_seq <= last ? (size_t)(last - fe->from_seq + 1) : 0;
  Parley__V1__Event *evs = calloc(n + 1, sizeof *evs);
  Parley__V1__Content *cts = calloc(n + 1, sizeof *cts);
  Parley__V1__Text *txs = calloc(n + 1, sizeof *txs);
  Parley__V1__Event **ptrs = calloc(n + 1, sizeof *ptrs);
  for (size_t k = 0; k < n; k++) {
    fill_event(s, ci, fe->from_seq + k, &evs[k], &cts[k], &txs[k], false);
    ptrs[k] = &evs[k];
  }
  Parley__V1__FetchResult r = PARLEY__V1__FETCH_RESULT__INIT;
  r.request_id = fe->request_id;
  r.conversation = c->name;
  r.n_events = n;
  r.events = ptrs;
  r.end = n == 0 || last >= to;
  r.last_seq = c->n;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_FETCH_RESULT;
  f.fetch_result = &r;
  gw_emit(s, &f);
  free(evs);
  free(cts);
  free(txs);
  free(ptrs);
}

static void gw_input(sim *s, const uint8_t *data, size_t len) {
  pw_frame *f = NULL;
  const char *why;
  if (pw_decode(data, len, 0, &f, &why) != 0) {
    app_fail(s, "engine wrote an invalid frame: %s", why);
    return;
  }
  if (!s->gw_session && f->body_case != PARLEY__V1__FRAME__BODY_HELLO) {
    pw_frame_free(f);
    return; /* the gateway ignores frames before Hello in this model */
  }
  switch (f->body_case) {
  case PARLEY__V1__FRAME__BODY_HELLO:
    if (!s->gw_session) gw_on_hello(s, f->hello);
    break;
  case PARLEY__V1__FRAME__BODY_SEND: gw_on_send(s, f->send); break;
  case PARLEY__V1__FRAME__BODY_ACK:
    if (s->bot) app_fail(s, "a bot sent an Ack");
    else gw_on_ack(s, f->ack);
    break;
  case PARLEY__V1__FRAME__BODY_COMMIT:
    if (!s->bot) app_fail(s, "a customer sent a Commit");
    else gw_on_commit(s, f->commit);
    break;
  case PARLEY__V1__FRAME__BODY_FETCH: gw_on_fetch(s, f->fetch); break;
  case PARLEY__V1__FRAME__BODY_PING: {
    Parley__V1__Pong p = PARLEY__V1__PONG__INIT;
    p.nonce = f->ping->nonce;
    pw_frame o = PARLEY__V1__FRAME__INIT;
    o.body_case = PARLEY__V1__FRAME__BODY_PONG;
    o.pong = &p;
    gw_emit(s, &o);
    break;
  }
  case PARLEY__V1__FRAME__BODY_PONG: break;
  default:
    app_fail(s, "gateway got unexpected frame type %d", (int)f->body_case);
    break;
  }
  pw_frame_free(f);
}

static void gw_inject(sim *s) {
  int ci = (int)rbelow(&s->r, NCONV);
  g_conv *c = &s->conv[ci];
  if (c->n == MAXLOG) return;
  g_ev *ge = &c->log[c->n++];
  for (int k = 0; k < 16; k++) ge->id[k] = (uint8_t)rnext(&s->r);
  ge->id[0] = 0xEE; /* never equal to an app id, which start differently */
  ge->send_no = -1;
  ge->reply_to = 0;
  gw_push(s);
}

/* -------------------------------------------------------------- client */

/* The bot's handler: reply to a customer message (derived id, so a re-run
 * sends the same id), then commit the event. */
static void bot_event(sim *s, int ci, const parley_event *ev) {
  if (ev->seq != s->app_next[ci]) {
    app_fail(s, "bot: %s: got seq %llu, expected %llu", ev->conversation,
             (unsigned long long)ev->seq, (unsigned long long)s->app_next[ci]);
    return;
  }
  s->app_next[ci] = ev->seq + 1;
  s->handler_runs++;
  if (verbose > 1)
    fprintf(stderr, "  [%llu] bot handles %s#%llu from %s (epoch %llu)\n", (unsigned long long)s->now,
            ev->conversation, (unsigned long long)ev->seq, ev->sender,
            (unsigned long long)s->app_epoch[ci]);
  if (ev->seq > s->got[ci]) s->got[ci] = ev->seq;
  if (strcmp(ev->sender, "cust") == 0) {
    if (s->n_calls == MAXCALLS) {
      app_fail(s, "too many bot calls");
      return;
    }
    bot_call *bc = &s->calls[s->n_calls];
    bc->conv = ci;
    bc->reply_to = ev->seq;
    parley_msg_id_derive(BOT, ev->conversation, ev->seq, 0, bc->id);
    parley_content c = {.kind = PARLEY_CONTENT_TEXT, .text = "re"};
    int rc = pe_engine_send(s->e, ev->conversation, &c, NULL, bc->id, s->app_epoch[ci],
                            (void *)(intptr_t)s->n_calls, s->now);
    if (rc != 0) {
      app_fail(s, "bot send: %s", parley_errname(rc));
      return;
    }
    s->n_calls++;
  }
  char last[24], tag[8];
  snprintf(last, sizeof last, "%llu", (unsigned long long)ev->seq);
  snprintf(tag, sizeof tag, "h%llu", (unsigned long long)(ev->seq % 3));
  parley_state_entry st = {.key = "last", .value = last, .value_len = strlen(last)};
  const char *tags[] = {tag};
  parley_commit cm = {.conversation = ev->conversation, .epoch = s->app_epoch[ci],
                      .ack_seq = ev->seq, .state = &st, .n_state = 1,
                      .tags_add = tags, .n_tags_add = 1};
  int rc = pe_engine_commit(s->e, &cm, 1, s->now);
  if (rc != 0) app_fail(s, "bot commit: %s", parley_errname(rc));
}

static void cb_assign(void *ud, const parley_assignment *a) {
  sim *s = ud;
  int ci = conv_index(s, a->conversation);
  if (ci < 0) {
    app_fail(s, "assign of unknown conversation");
    return;
  }
  s->app_epoch[ci] = a->epoch;
  s->app_next[ci] = a->acked_seq + 1;
}

static void cb_commit_result(void *ud, const parley_commit_result *r) {
  sim *s = ud;
  s->commit_results++;
  if (r->status == PARLEY_ESTALE_EPOCH) s->commit_stale++;
  else if (r->status != 0)
    app_fail(s, "commit of %s#%llu failed: %s", r->conversation,
             (unsigned long long)r->ack_seq, parley_errname(r->status));
}

static void cb_event(void *ud, const parley_event *ev) {
  sim *s = ud;
  int ci = conv_index(s, ev->conversation);
  if (s->bot && ci >= 0) {
    bot_event(s, ci, ev);
    return;
  }
  if (ci < 0) {
    app_fail(s, "event of unknown conversation %s", ev->conversation);
    return;
  }
  if (ev->seq != s->got[ci] + 1) {
    app_fail(s, "%s: got seq %llu after %llu", ev->conversation,
             (unsigned long long)ev->seq, (unsigned long long)s->got[ci]);
    return;
  }
  if (ev->seq > MAXLOG) {
    app_fail(s, "seq beyond the log");
    return;
  }
  memcpy(s->got_ids[ci][ev->seq - 1], ev->msg_id, 16);
  s->got_has[ci][ev->seq - 1] = ev->has_msg_id;
  s->got[ci] = ev->seq;
}

static void cb_send_result(void *ud, const parley_send_result *r, void *send_ud) {
  sim *s = ud;
  int i = (int)(intptr_t)send_ud;
  if (s->bot) {
    if (i < 0 || i >= s->n_calls) {
      app_fail(s, "send_result with a bad send_ud");
      return;
    }
    bot_call *bc = &s->calls[i];
    bc->results++;
    bc->status = r->status;
    if (memcmp(r->msg_id, bc->id, 16) != 0) app_fail(s, "send_result with another id");
    if (r->status != 0 && r->status != PARLEY_ESTALE_EPOCH)
      app_fail(s, "bot send %d failed: %s", i, parley_errname(r->status));
    return;
  }
  if (i < 0 || i >= s->n_sends) {
    app_fail(s, "send_result with a bad send_ud");
    return;
  }
  app_send *a = &s->sends[i];
  a->results++;
  a->status = r->status;
  a->seq = r->seq;
  if (memcmp(r->msg_id, a->id, 16) != 0) app_fail(s, "send_result with another id");
  if (r->status != 0)
    app_fail(s, "send %d failed: %s (%s)", i, parley_errname(r->status),
             r->message ? r->message : "");
}

static void cb_peer_error(void *ud, int status, const char *msg) {
  sim *s = ud;
  s->peer_errors++;
  if (verbose) fprintf(stderr, "  [%llu] peer_error %s: %s\n", (unsigned long long)s->now,
                       parley_errname(status), msg);
  /* A correct gateway never contradicts the stream, whatever the network
   * does. The complaints allowed are about silence, and about handshake
   * frames the simulated network reordered or duplicated (a frame that
   * overtakes Welcome, a second Welcome), which TCP would never do. */
  if (status == PARLEY_ETIMEOUT) return;
  if (status == PARLEY_EPROTOCOL &&
      (strstr(msg, "before Welcome") || strstr(msg, "Welcome on an established session")))
    return;
  /* Bots: a Deliver the network moved ahead of its Assign. */
  if (s->bot && status == PARLEY_EPROTOCOL && strstr(msg, "not assigned to this bot")) return;
  app_fail(s, "unexpected peer_error %s: %s", parley_errname(status), msg);
}

static void pump(sim *s) {
  const uint8_t *d;
  size_t n;
  while (pe_engine_take_output(s->e, &d, &n)) {
    if (s->conn) net_put(s, 1, d, n);
  }
}

static void cut(sim *s, const char *why) {
  if (verbose) fprintf(stderr, "  [%llu] cut: %s\n", (unsigned long long)s->now, why);
  s->stat_cuts++;
  net_clear(s);
  s->conn = 0;
  s->gw_session = false;
  pe_engine_on_disconnect(s->e, s->now);
  pump(s);
}

static void after_engine_call(sim *s) {
  pump(s);
  int code;
  if (s->conn && pe_engine_should_close(s->e, &code)) cut(s, "engine asked to close");
}

/* --------------------------------------------------------------- run */

/* Totals over all seeds, for the summary line. */
static size_t g_bot_seeds, g_tot_commits, g_tot_stale, g_tot_runs, g_manual_seeds,
    g_tot_manual_acks;
static size_t g_tot_frames, g_tot_sends, g_tot_events, g_tot_cuts, g_tot_fetches, g_tot_dups,
    g_tot_retries;

static uint64_t min2(uint64_t a, uint64_t b) { return a < b ? a : b; }

static int run_seed(uint64_t seed) {
  cur_seed = seed;
  sim *s = calloc(1, sizeof *s);
  s->r.s = seed * 0x2545F4914F6CDD1Dull + 1;
  s->now = 1000;
  for (int i = 0; i < NCONV; i++) snprintf(s->conv[i].name, sizeof s->conv[i].name, "c%d", i);
  s->p_drop = (double)rbelow(&s->r, 8) / 100.0;
  s->p_dup = (double)rbelow(&s->r, 5) / 100.0;
  s->delay_max = 1 + rbelow(&s->r, 60);
  s->cut_every = rchance(&s->r, 0.7) ? 2000 + rbelow(&s->r, 8000) : 0;
  s->window = 2 + (uint32_t)rbelow(&s->r, 14);
  s->gw_ack_timeout = 300 + rbelow(&s->r, 700);
  s->p_busy = (double)rbelow(&s->r, 10) / 100.0;
  s->inject_every = 20 + rbelow(&s->r, 200);
  s->injects_left = (int)rbelow(&s->r, 60);
  s->n_sends = (int)rbelow(&s->r, MAXSENDS);
  s->bot = seed % 3 == 0;
  s->manual = seed % 6 == 1;
  s->ack_every = 20 + rbelow(&s->r, 400);
  s->next_manual_ack = s->manual ? 1000 + s->ack_every : UINT64_MAX;
  if (s->bot) {
    /* The bot only answers: its sends are the handler's replies. A
     * SendAck names only the message id, so a network that doubles
     * frames could make a refusal of one send look like the answer to a
     * later send with the same id; TCP never doubles, so bot runs keep
     * drops, delays and cuts but no duplicates. */
    s->p_dup = 0;
    s->n_sends = 0;
    s->injects_left = 5 + (int)rbelow(&s->r, 60);
  }
  uint64_t horizon = 1000 + 15000;
  for (int i = 0; i < s->n_sends; i++) {
    s->sends[i].at = 1000 + rbelow(&s->r, 15000);
    s->sends[i].conv = (int)rbelow(&s->r, NCONV);
    parley_msg_id_derive("prop", "send", seed, (uint32_t)i, s->sends[i].id);
    s->sends[i].id[0] = 0x11;
  }
  /* Sends are submitted in index order, so sort their times. */
  for (int i = 1; i < s->n_sends; i++)
    for (int k = i; k > 0 && s->sends[k].at < s->sends[k - 1].at; k--) {
      uint64_t t = s->sends[k].at;
      s->sends[k].at = s->sends[k - 1].at;
      s->sends[k - 1].at = t;
    }
  s->next_inject = 1000 + s->inject_every;
  s->next_cut = s->cut_every ? 1000 + s->cut_every / 2 + rbelow(&s->r, s->cut_every) : UINT64_MAX;

  pe_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.principal = s->bot ? BOT : "alice";
  cfg.role = s->bot ? PARLEY_ROLE_BOT : PARLEY_ROLE_CUSTOMER;
  cfg.manual_ack = s->manual;
  cfg.device = "d1";
  cfg.tuning.seed = seed + 1;
  cfg.tuning.ack_timeout_ms = 100 + (uint32_t)rbelow(&s->r, 400);
  cfg.tuning.retry_max_ms = 2000;
  cfg.tuning.max_attempts = 100000;
  cfg.tuning.send_deadline_ms = 100000000;
  cfg.tuning.ack_batch_n = 1 + (uint32_t)rbelow(&s->r, 8);
  cfg.tuning.ack_batch_ms = 5 + (uint32_t)rbelow(&s->r, 100);
  cfg.tuning.heartbeat_ms = 1000;
  cfg.tuning.reorder_max = 1 + (uint32_t)rbelow(&s->r, 8);
  cfg.tuning.gap_timeout_ms = 20 + (uint32_t)rbelow(&s->r, 300);
  cfg.tuning.fetch_page = 1 + (uint32_t)rbelow(&s->r, 5);
  cfg.tuning.reconnect_min_ms = 50;
  cfg.tuning.reconnect_max_ms = 2000;
  pe_hooks hooks = {.ud = s, .event = cb_event, .send_result = cb_send_result,
                    .peer_error = cb_peer_error, .assign = cb_assign,
                    .commit_result = cb_commit_result};
  s->e = pe_engine_new(&cfg, &hooks);

  int next_send = 0;
  bool quiet = false;
  uint64_t quiet_end = horizon + 600000;
  /* The connection is opened at the start and after every cut. */
  s->conn = 1;
  pe_engine_on_connect(s->e, s->now);
  after_engine_call(s);
  uint64_t conn_counter = 1;
  int steps = 0;

  for (;;) {
    if (s->fail[0]) break;
    if (++steps > 2000000) {
      app_fail(s, "simulation did not settle");
      break;
    }
    if (!quiet && s->now >= horizon && next_send >= s->n_sends && s->injects_left <= 0) {
      /* Quiet phase: the network heals and stays up. */
      quiet = true;
      s->p_drop = s->p_dup = 0;
      s->next_cut = UINT64_MAX;
    }
    if (quiet) {
      bool done = true;
      for (int i = 0; i < s->n_sends; i++)
        if (s->sends[i].results == 0) done = false;
      for (int i = 0; i < NCONV; i++)
        if (s->got[i] != s->conv[i].n || s->conv[i].watermark != s->conv[i].n) done = false;
      for (int i = 0; i < s->n_calls; i++)
        if (s->calls[i].results == 0) done = false;
      if (done && s->n_net == 0) break;
      if (s->now > quiet_end) {
        app_fail(s, "not settled 600 s after the traffic stopped");
        break;
      }
    }
    uint64_t t = net_next(s);
    t = min2(t, pe_engine_deadline(s->e));
    t = min2(t, gw_next(s));
    if (next_send < s->n_sends) t = min2(t, s->sends[next_send].at);
    if (s->injects_left > 0) t = min2(t, s->next_inject);
    t = min2(t, s->next_cut);
    t = min2(t, s->next_manual_ack);
    if (!s->conn) t = min2(t, pe_engine_reconnect_at(s->e));
    if (s->gw_session) t = min2(t, s->gw_last_tx + 1000); /* gateway heartbeat */
    if (t == UINT64_MAX) {
      app_fail(s, "nothing scheduled");
      break;
    }
    if (t > s->now) s->now = t;

    /* Network deliveries due now, in time order. */
    for (;;) {
      size_t best = SIZE_MAX;
      for (size_t i = 0; i < s->n_net; i++)
        if (s->net[i].at <= s->now &&
            (best == SIZE_MAX || s->net[i].at < s->net[best].at ||
             (s->net[i].at == s->net[best].at && s->net[i].order < s->net[best].order)))
          best = i;
      if (best == SIZE_MAX) break;
      net_msg m = s->net[best];
      s->net[best] = s->net[--s->n_net];
      if (m.conn == s->conn && s->conn) {
        if (m.to_gateway) {
          gw_input(s, m.data, m.len);
        } else {
          pe_engine_on_input(s->e, m.data, m.len, s->now);
          after_engine_call(s);
        }
      }
      free(m.data);
      if (s->fail[0]) break;
    }
    if (s->gw_session && s->now >= s->gw_last_tx + 1000) {
      Parley__V1__Ping p = PARLEY__V1__PING__INIT;
      p.nonce = s->now;
      pw_frame f = PARLEY__V1__FRAME__INIT;
      f.body_case = PARLEY__V1__FRAME__BODY_PING;
      f.ping = &p;
      gw_emit(s, &f);
    }
    gw_redeliver(s);
    while (next_send < s->n_sends && s->sends[next_send].at <= s->now) {
      app_send *a = &s->sends[next_send];
      parley_content c = {.kind = PARLEY_CONTENT_TEXT, .text = "hello"};
      int rc = pe_engine_send(s->e, s->conv[a->conv].name, &c, NULL, a->id, 0,
                              (void *)(intptr_t)next_send, s->now);
      if (rc != 0) app_fail(s, "pe_engine_send: %s", parley_errname(rc));
      a->submitted = true;
      next_send++;
      after_engine_call(s);
    }
    if (s->now >= s->next_manual_ack) {
      for (int i = 0; i < NCONV; i++) {
        if (s->got[i] == 0) continue;
        int rc = pe_engine_ack(s->e, s->conv[i].name, s->got[i], s->now);
        if (rc != 0) app_fail(s, "pe_engine_ack(%s, %llu): %s", s->conv[i].name,
                              (unsigned long long)s->got[i], parley_errname(rc));
        s->manual_acks++;
      }
      s->next_manual_ack = s->now + s->ack_every;
      after_engine_call(s);
    }
    if (s->injects_left > 0 && s->now >= s->next_inject) {
      gw_inject(s);
      s->injects_left--;
      s->next_inject = s->now + 1 + rbelow(&s->r, 2 * s->inject_every);
    }
    if (s->now >= s->next_cut) {
      if (s->conn) cut(s, "network");
      s->next_cut = s->now + s->cut_every / 2 + rbelow(&s->r, s->cut_every);
    }
    if (pe_engine_deadline(s->e) <= s->now) {
      pe_engine_on_tick(s->e, s->now);
      after_engine_call(s);
    }
    if (!s->conn && s->now >= pe_engine_reconnect_at(s->e)) {
      s->conn = ++conn_counter;
      pe_engine_on_connect(s->e, s->now);
      after_engine_call(s);
    }
  }

  int rc = 0;
  if (verbose)
    for (int i = 0; i < NCONV; i++)
      fprintf(stderr, "  %s: gateway n=%llu watermark=%llu pushed=%llu; app got %llu\n",
              s->conv[i].name, (unsigned long long)s->conv[i].n,
              (unsigned long long)s->conv[i].watermark, (unsigned long long)s->conv[i].pushed,
              (unsigned long long)s->got[i]);
  if (verbose)
    for (int i = 0; i < s->n_sends; i++)
      fprintf(stderr, "  send %d: at %llu conv c%d submitted %d results %d status %d seq %llu\n", i,
              (unsigned long long)s->sends[i].at, s->sends[i].conv, s->sends[i].submitted,
              s->sends[i].results, s->sends[i].status, (unsigned long long)s->sends[i].seq);
  if (s->fail[0]) {
    fprintf(stderr, "seed %llu FAILED at t=%llu: %s\n  replay: PARLEY_PROPERTY_SEED=%llu %s\n",
            (unsigned long long)seed, (unsigned long long)s->now, s->fail,
            (unsigned long long)seed, prog_name);
    rc = 1;
  }
  /* Bots: one reply per customer message, after it and in order; every
   * handler call and commit answered once. */
  for (int i = 0; s->bot && i < NCONV && rc == 0; i++) {
    g_conv *c = &s->conv[i];
    uint64_t last_reply_to = 0;
    for (uint64_t k = 0; k < c->n && rc == 0; k++) {
      const g_ev *ge = &c->log[k];
      if (ge->send_no < 0) {
        /* A customer message: exactly one reply with its derived id. */
        uint8_t want[16];
        parley_msg_id_derive(BOT, c->name, k + 1, 0, want);
        int found = 0;
        for (uint64_t j = 0; j < c->n; j++)
          if (memcmp(c->log[j].id, want, 16) == 0) {
            found++;
            if (j <= k) {
              fprintf(stderr, "seed %llu: %s: reply to #%llu stored before it\n",
                      (unsigned long long)seed, c->name, (unsigned long long)k + 1);
              rc = 1;
            }
          }
        if (found != 1) {
          fprintf(stderr, "seed %llu: %s: customer message #%llu has %d replies\n",
                  (unsigned long long)seed, c->name, (unsigned long long)k + 1, found);
          rc = 1;
        }
      } else {
        if (ge->reply_to <= last_reply_to) {
          fprintf(stderr, "seed %llu: %s: reply to #%llu stored after reply to #%llu\n",
                  (unsigned long long)seed, c->name, (unsigned long long)ge->reply_to,
                  (unsigned long long)last_reply_to);
          rc = 1;
        }
        last_reply_to = ge->reply_to;
      }
    }
    if (c->watermark != c->n) {
      fprintf(stderr, "seed %llu: %s: committed %llu of %llu\n", (unsigned long long)seed,
              c->name, (unsigned long long)c->watermark, (unsigned long long)c->n);
      rc = 1;
    }
    /* The stored state and tag are the last handler's. */
    char want_tag[8];
    snprintf(want_tag, sizeof want_tag, "h%llu", (unsigned long long)(c->n % 3));
    if (c->n && (c->state_last != c->n || strcmp(c->tag, want_tag) != 0)) {
      fprintf(stderr, "seed %llu: %s: stored state is handler #%llu's (tag %s), last is #%llu\n",
              (unsigned long long)seed, c->name, (unsigned long long)c->state_last, c->tag,
              (unsigned long long)c->n);
      rc = 1;
    }
  }
  for (int i = 0; s->bot && i < s->n_calls && rc == 0; i++)
    if (s->calls[i].results != 1) {
      fprintf(stderr, "seed %llu: bot send %d got %d results\n", (unsigned long long)seed, i,
              s->calls[i].results);
      rc = 1;
    }
  /* The application saw exactly the gateway's streams. */
  for (int i = 0; !s->bot && i < NCONV && rc == 0; i++) {
    g_conv *c = &s->conv[i];
    if (s->got[i] != c->n) {
      fprintf(stderr, "seed %llu: %s: app has %llu events, gateway %llu\n",
              (unsigned long long)seed, c->name, (unsigned long long)s->got[i],
              (unsigned long long)c->n);
      rc = 1;
    }
    for (uint64_t k = 0; k < c->n && rc == 0; k++)
      if (!s->got_has[i][k] || memcmp(s->got_ids[i][k], c->log[k].id, 16) != 0) {
        fprintf(stderr, "seed %llu: %s#%llu: another message than the gateway's\n",
                (unsigned long long)seed, c->name, (unsigned long long)k + 1);
        rc = 1;
      }
    /* Sender order: the app's sends of this conversation appear in the
     * log in the order they were made. */
    int last = -1;
    for (uint64_t k = 0; k < c->n && rc == 0; k++) {
      int no = c->log[k].send_no;
      if (no < 0) continue;
      if (no <= last) {
        fprintf(stderr, "seed %llu: %s: send %d stored after send %d\n",
                (unsigned long long)seed, c->name, no, last);
        rc = 1;
      }
      last = no;
      if (s->sends[no].seq != k + 1) {
        fprintf(stderr, "seed %llu: send %d reported seq %llu, stored at %llu\n",
                (unsigned long long)seed, no, (unsigned long long)s->sends[no].seq,
                (unsigned long long)k + 1);
        rc = 1;
      }
    }
  }
  for (int i = 0; i < s->n_sends && rc == 0; i++) {
    if (s->sends[i].results != 1 || s->sends[i].status != 0) {
      fprintf(stderr, "seed %llu: send %d got %d results (status %d)\n",
              (unsigned long long)seed, i, s->sends[i].results, s->sends[i].status);
      rc = 1;
    }
  }
  parley_client_stats st;
  pe_engine_stats(s->e, &st);
  if (rc == 0 && (st.buffered_bytes != 0 || st.outbox_size != 0 || st.reorder_events != 0)) {
    fprintf(stderr, "seed %llu: engine still holds %llu bytes (outbox %llu, reorder %llu)\n",
            (unsigned long long)seed, (unsigned long long)st.buffered_bytes,
            (unsigned long long)st.outbox_size, (unsigned long long)st.reorder_events);
    rc = 1;
  }
  if (rc && !s->fail[0])
    fprintf(stderr, "  replay: PARLEY_PROPERTY_SEED=%llu %s\n", (unsigned long long)seed, prog_name);
  if (verbose || rc) {
    fprintf(stderr,
            "seed %llu: sends %d, events %llu/%llu/%llu/%llu, frames %zu (dropped %zu, duplicated %zu), "
            "cuts %zu, retries %llu, dups dropped %llu, fetches %llu, reconnects %llu, t=%llu ms\n",
            (unsigned long long)seed, s->n_sends, (unsigned long long)s->conv[0].n,
            (unsigned long long)s->conv[1].n, (unsigned long long)s->conv[2].n,
            (unsigned long long)s->conv[3].n, s->stat_frames, s->stat_dropped, s->stat_duped,
            s->stat_cuts, (unsigned long long)st.retries, (unsigned long long)st.duplicates_dropped,
            (unsigned long long)st.gaps_fetched, (unsigned long long)st.reconnects,
            (unsigned long long)s->now);
  }
  g_tot_frames += s->stat_frames;
  g_tot_sends += (size_t)s->n_sends + (size_t)s->n_calls;
  if (s->manual) {
    g_manual_seeds++;
    g_tot_manual_acks += s->manual_acks;
  }
  if (s->bot) {
    g_bot_seeds++;
    g_tot_commits += s->commit_results;
    g_tot_stale += s->commit_stale;
    g_tot_runs += s->handler_runs;
  }
  for (int i = 0; i < NCONV; i++) g_tot_events += s->conv[i].n;
  g_tot_cuts += s->stat_cuts;
  g_tot_fetches += st.gaps_fetched;
  g_tot_dups += st.duplicates_dropped;
  g_tot_retries += st.retries;
  pe_engine_free(s->e);
  net_clear(s);
  free(s);
  return rc;
}

int main(int argc, char **argv) {
  if (argc > 0) prog_name = argv[0];
  const char *one = getenv("PARLEY_PROPERTY_SEED");
  if (one && *one) {
    const char *v = getenv("PARLEY_PROPERTY_VERBOSE");
    verbose = v && *v ? atoi(v) : 1;
    return run_seed(strtoull(one, NULL, 10)) ? 1 : 0;
  }
  const char *ns = getenv("PARLEY_PROPERTY_SEEDS");
  uint64_t n = ns && *ns ? strtoull(ns, NULL, 10) : 2000;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int failed = 0;
  for (uint64_t seed = 1; seed <= n; seed++) {
    if (run_seed(seed)) {
      failed++;
      if (failed >= 5) break;
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf("property: %llu seeds, %d failed, %.2f s; sends %zu, gateway events %zu, frames %zu, "
         "cuts %zu, fetches %zu, duplicates dropped %zu, retries %zu; bot seeds %zu: "
         "handler runs %zu, commit results %zu (%zu stale epoch); manual-ack seeds %zu: "
         "%zu pe_engine_ack calls\n",
         (unsigned long long)n, failed, secs, g_tot_sends, g_tot_events, g_tot_frames,
         g_tot_cuts, g_tot_fetches, g_tot_dups, g_tot_retries, g_bot_seeds, g_tot_runs,
         g_tot_commits, g_tot_stale, g_manual_seeds, g_tot_manual_acks);
  return failed ? 1 : 0;
}
