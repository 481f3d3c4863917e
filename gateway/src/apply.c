/* Group commit, next to the store: the Sends, Commits and Acks queued
 * during one loop iteration are checked and applied to the hot state, and
 * what they changed goes to the store as one batch (store.h), which the
 * store makes durable as one transaction off the loop. Each operation is
 * staged on a copy of its conversation's row first, so a refused or
 * failed one leaves no trace. Answers (SendAck, CommitResult) and the new
 * events go out only when the store reports the batch durable; routing
 * learns of it through g->route. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <parley/error.h>

#include "gw.h"

#define E(x) PARLEY__V1__ERROR_CODE__ERROR_##x
#define PG_MAX_TAGS 64
#define PG_MAX_TAG_LEN 64
#define PG_MAX_STATE_KEY 128
#define PG_MAX_STATE_KEYS 256
/* Deliver and Frame headers around one event, with room to spare. */
#define PG_DELIVER_OVERHEAD 32
/* Batches handed to the store and not yet durable, at most: past that the
 * loop keeps collecting operations into the next batch, which only makes
 * that batch bigger (and the store's group commit more effective). */
#define PG_MAX_INFLIGHT 4

typedef struct touch {
  pg_conv *cv;
  bool opened;
  pg_store_conv snap; /* the row at the end of this batch */
} touch;

typedef struct place {
  pg_conv *cv;
  pg_conn *to;
} place;

struct pg_turn {
  pg_turn *next;
  pg_gateway *g;
  uint64_t no;
  pg_store_batch *batch;
  pg_op *ops, *ops_tail;
  touch *touch;
  size_t n_touch, cap_touch;
  gw_map touch_ix;   /* conv id -> index + 1 */
  place *places;
  size_t n_places, cap_places;
  pg_conn **uncork;  /* connections whose output waits for this batch */
  size_t n_uncork, cap_uncork;
  bool broken;       /* something could not be added: the batch must fail */
};

static int refuse(pg_op *op, Parley__V1__ErrorCode code, const char *msg) {
  op->error = code;
  snprintf(op->msg, sizeof op->msg, "%s", msg);
  return 1;
}

static Parley__V1__Role wire_role(int role) {
  switch (role) {
  case PG_ROLE_CUSTOMER: return PARLEY__V1__ROLE__ROLE_CUSTOMER;
  case PG_ROLE_AGENT: return PARLEY__V1__ROLE__ROLE_AGENT;
  case PG_ROLE_BOT: return PARLEY__V1__ROLE__ROLE_BOT;
  default: return PARLEY__V1__ROLE__ROLE_SYSTEM;
  }
}

/* ------------------------------------------------------------------ turns */

static pg_turn *turn_new(pg_gateway *g) {
  pg_turn *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->g = g;
  t->no = ++g->next_turn;
  t->batch = pg_store_batch_new();
  if (!t->batch) {
    free(t);
    return NULL;
  }
  return t;
}

static void op_free(pg_op *op) {
  pw_frame_free(op->frame);
  free(op->outcomes);
  free(op); /* its strings live in the same block (pg_apply_enqueue) */
}

static void turn_free(pg_turn *t) {
  while (t->ops) {
    pg_op *n = t->ops->next;
    op_free(t->ops);
    t->ops = n;
  }
  for (size_t i = 0; i < t->n_touch; i++) pg_store_conv_clear(&t->touch[i].snap);
  free(t->touch);
  gw_map_clear(&t->touch_ix);
  free(t->places);
  free(t->uncork);
  pg_store_batch_free(t->batch);
  free(t);
}

/* The batch being built for this loop iteration (placements may start it
 * before any operation arrives). */
static pg_turn *current(pg_gateway *g) {
  if (!g->cur) g->cur = turn_new(g);
  return g->cur;
}

/* A batch touches few conversations when the gateway is not busy (one or
 * two per turn): up to this many are found by comparing ids, without the
 * index map and its copy of each key; past it the map is built. */
#define TOUCH_SCAN 8

static void touch_conv(pg_turn *t, pg_conv *cv, bool opened) {
  uintptr_t ix = 0;
  if (t->touch_ix.len) {
    ix = (uintptr_t)gw_map_get(&t->touch_ix, cv->row.id);
  } else {
    for (size_t i = 0; i < t->n_touch && !ix; i++)
      if (!strcmp(t->touch[i].cv->row.id, cv->row.id)) ix = i + 1;
  }
  if (ix) {
    t->touch[ix - 1].opened |= opened;
    return;
  }
  if (t->n_touch == t->cap_touch) {
    /* Four to start: an entry holds a row snapshot (about 120 bytes), and
     * sixteen of them were a large-bin malloc on every turn. */
    size_t nc = t->cap_touch ? t->cap_touch * 2 : 4;
    touch *n = realloc(t->touch, nc * sizeof *n);
    if (!n) {
      t->broken = true;
      return;
    }
    t->touch = n;
    t->cap_touch = nc;
  }
  if (t->n_touch >= TOUCH_SCAN) {
    /* The first time past TOUCH_SCAN the entries so far go in as well. */
    bool fill = t->touch_ix.len == 0;
    for (size_t i = 0; fill && i < t->n_touch; i++)
      if (gw_map_put(&t->touch_ix, t->touch[i].cv->row.id, (void *)(uintptr_t)(i + 1))) {
        gw_map_clear(&t->touch_ix);
        t->broken = true;
        return;
      }
    if (gw_map_put(&t->touch_ix, cv->row.id, (void *)(uintptr_t)(t->n_touch + 1))) {
      t->broken = true;
      return;
    }
  }
  t->touch[t->n_touch++] = (touch){.cv = cv, .opened = opened};
}

/* ---------------------------------------------------------------- staging */

/* What one operation (or one commit item) changes, before it is known to
 * go through: a copy of the row and the events it appends. */
typedef struct stage_ev {
  uint64_t seq;
  uint8_t *blob;
  size_t len;
  bool has_id;
  uint8_t id[16];
} stage_ev;

typedef struct stage {
  pg_conv *cv;           /* NULL: the operation opens the conversation */
  pg_store_conv row;
  stage_ev ev[4];
  size_t n_ev;
  const Parley__V1__ConversationCommit *item; /* its state entries */
  bool wm;
  uint64_t wm_val;
  /* row's strings are still the conversation's (most operations change
   * only numbers: a message its last seq, a commit its state version), so
   * they are copied only by stage_own, before one of them changes. */
  bool shallow;
} stage;

static int stage_begin(stage *st, pg_conv *cv) {
  memset(st, 0, sizeof *st);
  st->cv = cv;
  st->row = cv->row;
  st->shallow = true;
  return 0;
}

/* Gives the staged row strings of its own, before one is replaced. */
static int stage_own(stage *st) {
  if (!st->shallow) return 0;
  pg_store_conv own;
  if (pg_store_conv_copy(&own, &st->row)) return PARLEY_ENOMEM;
  st->row = own;
  st->shallow = false;
  return 0;
}

static void stage_abort(stage *st) {
  if (!st->shallow) pg_store_conv_clear(&st->row);
  memset(&st->row, 0, sizeof st->row);
  for (size_t i = 0; i < st->n_ev; i++) free(st->ev[i].blob);
  st->n_ev = 0;
}

static bool keys_differ(const pg_store_conv *a, const pg_store_conv *b) {
  return strcmp(a->customer, b->customer) || strcmp(a->assignee, b->assignee) ||
         strcmp(a->bot, b->bot) || strcmp(a->queue, b->queue) || a->status != b->status;
}

/* Whether anything stored of the row changed (last_seq is not stored: the
 * store derives it from the events). */
static bool row_differs(const pg_store_conv *a, const pg_store_conv *b) {
  return keys_differ(a, b) || strcmp(a->locale, b->locale) || strcmp(a->note, b->note) ||
         strcmp(a->tags, b->tags) || a->epoch != b->epoch ||
         a->state_version != b->state_version || a->queued_ms != b->queued_ms;
}

/* Gives the event the conversation's next seq and stages it. id is the
 * Send's client message id when this is the event the Send produced. */
static int append_event(pg_gateway *g, stage *st, Parley__V1__Event *ev,
                        const ProtobufCBinaryData *id) {
  if (st->n_ev == sizeof st->ev / sizeof st->ev[0]) return PARLEY_EINTERNAL;
  ev->conversation = st->row.id;
  ev->seq = st->row.last_seq + 1;
  ev->server_time_ms = (int64_t)pg_now_ms();
  size_t n = parley__v1__event__get_packed_size(ev);
  /* Every event must fit a Deliver frame within the peer's frame limit. */
  if (n + PG_DELIVER_OVERHEAD > g->cfg->max_frame_bytes) return PARLEY_ETOOBIG;
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) return PARLEY_ENOMEM;
  parley__v1__event__pack(ev, buf);
  stage_ev *e = &st->ev[st->n_ev++];
  e->seq = ev->seq;
  e->blob = buf;
  e->len = n;
  e->has_id = id && id->len == 16;
  if (e->has_id) memcpy(e->id, id->data, 16);
  st->row.last_seq = ev->seq;
  return 0;
}

/* The operation goes through: its row becomes the conversation's, its
 * events join the tail and the batch. */
static int stage_commit(pg_gateway *g, pg_turn *t, stage *st, const pg_op *op) {
  pg_conv *cv = st->cv;
  unsigned flags = 0;
  bool opened = !cv, write_row = true;
  if (opened) {
    cv = pg_hot_conv_new(g, &st->row);
    if (!cv) {
      stage_abort(st);
      return PARLEY_ENOMEM;
    }
    pg_store_conv_clear(&st->row);
    flags = PG_STORE_CONV_NEW;
  } else {
    if (keys_differ(&cv->row, &st->row)) flags = PG_STORE_CONV_KEYS;
    /* A message changes nothing of the row but its last seq: the row is
     * not written at all, only the event. */
    write_row = row_differs(&cv->row, &st->row);
    if (st->shallow) {
      /* The strings are the conversation's own already: only numbers. */
      cv->row.status = st->row.status;
      cv->row.epoch = st->row.epoch;
      cv->row.state_version = st->row.state_version;
      cv->row.queued_ms = st->row.queued_ms;
      cv->row.last_seq = st->row.last_seq;
    } else {
      pg_store_conv_clear(&cv->row);
      cv->row = st->row;
    }
    memset(&st->row, 0, sizeof st->row);
  }
  /* From here on the operation is part of the hot state: what cannot be
   * added to the batch breaks the batch, and the whole batch fails. */
  if (write_row && pg_store_batch_conv(t->batch, &cv->row, flags)) t->broken = true;
  for (size_t i = 0; i < st->n_ev; i++) {
    stage_ev *e = &st->ev[i];
    pg_store_event se = {.conv = cv->row.id, .seq = e->seq, .blob = e->blob, .len = e->len,
                         .sender = op->principal, .has_msg_id = e->has_id};
    if (e->has_id) memcpy(se.msg_id, e->id, 16);
    if (pg_store_batch_event(t->batch, &se)) t->broken = true;
    pg_hot_tail_add(g, cv, e->seq, e->blob, e->len);
    if (e->has_id && pg_hot_sent_put(g, op->principal, e->id, cv->row.id, e->seq, t->no))
      t->broken = true;
    free(e->blob);
  }
  st->n_ev = 0;
  if (st->item) {
    for (size_t i = 0; i < st->item->n_state; i++) {
      const Parley__V1__StateEntry *e = st->item->state[i];
      if (pg_store_batch_state(t->batch, cv->row.id, e->key, e->value.data, e->value.len,
                               e->deleted))
        t->broken = true;
    }
  }
  if (st->wm) {
    cv->bot_wm = st->wm_val;
    cv->bot_wm_loaded = true;
    if (pg_store_batch_watermark(t->batch, op->principal, "", cv->row.id, st->wm_val))
      t->broken = true;
  }
  touch_conv(t, cv, opened);
  return 0;
}

static void event_from(Parley__V1__Event *ev, const pg_op *op, Parley__V1__EventKind kind) {
  parley__v1__event__init(ev);
  ev->kind = kind;
  ev->sender = op->principal;
  ev->sender_role = wire_role(op->role);
}

/* ------------------------------------------------------------ validation */

static bool valid_tag(const char *t) {
  size_t n = strlen(t);
  if (n == 0 || n > PG_MAX_TAG_LEN) return false;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)t[i] < 0x20 || t[i] == 0x7f) return false;
  return true;
}

static bool valid_locale(const char *l) {
  size_t n = strlen(l);
  if (n == 0 || n > 35) return false;
  for (size_t i = 0; i < n; i++) {
    char ch = l[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          ch == '-' || ch == '_'))
      return false;
  }
  return true;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Applies adds and removes to the stored "a\nb" tag list. Returns 1 when
 * the set changed, 0 when not, negative on error. *out is malloc'd. */
static int tags_apply(const char *cur, char *const *add, size_t n_add, char *const *rm,
                      size_t n_rm, char **out, const char **why) {
  char *v[PG_MAX_TAGS * 2 + 1];
  size_t n = 0;
  char *copy = strdup(cur);
  if (!copy) return PARLEY_ENOMEM;
  n = pg_tags_split(copy, v, PG_MAX_TAGS);
  bool changed = false;
  for (size_t i = 0; i < n_rm; i++) {
    for (size_t j = 0; j < n; j++) {
      if (!strcmp(v[j], rm[i])) {
        v[j] = v[--n];
        changed = true;
        break;
      }
    }
  }
  for (size_t i = 0; i < n_add; i++) {
    if (!valid_tag(add[i])) {
      *why = "a tag is 1-64 bytes without control characters";
      free(copy);
      return PARLEY_EINVAL;
    }
    bool have = false;
    for (size_t j = 0; j < n && !have; j++) have = !strcmp(v[j], add[i]);
    if (have) continue;
    if (n >= PG_MAX_TAGS) {
      *why = "a conversation has at most 64 tags";
      free(copy);
      return PARLEY_EINVAL;
    }
    v[n++] = add[i];
    changed = true;
  }
  qsort(v, n, sizeof v[0], cmp_str);
  size_t len = 1;
  for (size_t i = 0; i < n; i++) len += strlen(v[i]) + 1;
  char *s = malloc(len), *p = s;
  if (!s) {
    free(copy);
    return PARLEY_ENOMEM;
  }
  *p = '\0';
  for (size_t i = 0; i < n; i++) p += sprintf(p, "%s%s", i ? "\n" : "", v[i]);
  free(copy);
  *out = s;
  return changed ? 1 : 0;
}

/* A plain-text rendering for clients that show text only, when the sender
 * gave none. */
static void ensure_fallback(Parley__V1__Content *c) {
  if (c->fallback && c->fallback[0]) return;
  const char *fb = NULL;
  switch (c->body_case) {
  case PARLEY__V1__CONTENT__BODY_TEXT: return;
  case PARLEY__V1__CONTENT__BODY_CARD: fb = c->card->title; break;
  case PARLEY__V1__CONTENT__BODY_QUICK_REPLIES: fb = c->quick_replies->text; break;
  case PARLEY__V1__CONTENT__BODY_IMAGE: fb = c->image->alt; break;
  case PARLEY__V1__CONTENT__BODY_POSTBACK: fb = c->postback->label; break;
  default: break;
  }
  if (!fb || !fb[0]) fb = "[message]";
  char *dup = strdup(fb);
  if (!dup) return;
  if (c->fallback != protobuf_c_empty_string) free(c->fallback);
  c->fallback = dup;
}

/* Who may do what, in the order that leaks nothing: ownership first, then
 * the conversation's status, then the epoch. */
static int authorize(pg_gateway *g, pg_op *op, const Parley__V1__Send *s, const pg_store_conv *r) {
  int kind = s->body_case == PARLEY__V1__SEND__BODY_ACTION ? (int)s->action->body_case : 0;
  switch (op->role) {
  case PG_ROLE_CUSTOMER:
    if (strcmp(r->customer, op->principal)) return refuse(op, E(FORBIDDEN), "not your conversation");
    if (r->status == PG_CONV_CLOSED) return refuse(op, E(CLOSED), "the conversation is closed");
    if (kind && kind != PARLEY__V1__ACTION__BODY_CLOSE && kind != PARLEY__V1__ACTION__BODY_SET_LOCALE)
      return refuse(op, E(FORBIDDEN), "customers may only close or set the locale");
    return 0;
  case PG_ROLE_BOT:
    if (strcmp(r->bot, op->principal)) return refuse(op, E(FORBIDDEN), "not your conversation");
    if (r->status == PG_CONV_CLOSED) return refuse(op, E(CLOSED), "the conversation is closed");
    if (s->epoch != r->epoch) return refuse(op, E(STALE_EPOCH), "assignment epoch is not current");
    /* Handed off but not yet taken: the bot still speaks for it. */
    if (r->status != PG_CONV_QUEUED && strcmp(r->assignee, op->principal))
      return refuse(op, E(FORBIDDEN), "the conversation is not assigned to this bot");
    if (kind == PARLEY__V1__ACTION__BODY_TAKE || kind == PARLEY__V1__ACTION__BODY_HAND_BACK)
      return refuse(op, E(FORBIDDEN), "bots do not take or hand back conversations");
    return 0;
  case PG_ROLE_AGENT:
    if (kind == PARLEY__V1__ACTION__BODY_TAKE) {
      if (r->status == PG_CONV_CLOSED) return refuse(op, E(CLOSED), "the conversation is closed");
      if (r->status != PG_CONV_QUEUED)
        return refuse(op, E(FORBIDDEN), "the conversation is not waiting in a queue");
      const pg_principal *p = pg_config_principal(g->cfg, op->principal);
      bool ok = !p || !p->n_queues;
      for (size_t i = 0; p && !ok && i < p->n_queues; i++) ok = !strcmp(p->queues[i], r->queue);
      if (!ok) return refuse(op, E(FORBIDDEN), "the queue is not one of this agent's");
      return 0;
    }
    if (strcmp(r->assignee, op->principal)) return refuse(op, E(FORBIDDEN), "not your conversation");
    if (r->status == PG_CONV_CLOSED) return refuse(op, E(CLOSED), "the conversation is closed");
    return 0;
  default:
    return refuse(op, E(FORBIDDEN), "unknown role");
  }
}


/* Replaces a row string. */
static int set_str(char **field, const char *v) {
  char *d = strdup(v ? v : "");
  if (!d) return PARLEY_ENOMEM;
  free(*field);
  *field = d;
  return 0;
}

static int tagged_event(pg_gateway *g, stage *st, const pg_op *op, const char *newtags,
                        Parley__V1__Action *action, const ProtobufCBinaryData *msg_id) {
  Parley__V1__Event ev;
  event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_TAGGED);
  char *copy = strdup(newtags);
  if (!copy) return PARLEY_ENOMEM;
  char *v[PG_MAX_TAGS];
  ev.n_tags = pg_tags_split(copy, v, PG_MAX_TAGS);
  ev.tags = v;
  ev.action = action;
  if (msg_id) ev.client_msg_id = *msg_id;
  int rc = append_event(g, st, &ev, msg_id);
  free(copy);
  if (rc == 0) rc = stage_own(st);
  if (rc == 0) rc = set_str(&st->row.tags, newtags);
  return rc;
}

/* ------------------------------------------------------------------ send */

/* A customer opens a conversation with its first message; a bot opens one
 * with Action.open (open.c checked it; locale is the customer's): OPENED
 * then carries the action and the Send's id, and no message follows. */
static int open_conversation(pg_gateway *g, pg_op *op, const Parley__V1__Send *s, stage *st,
                             const char *bot_locale) {
  bool by_bot = bot_locale != NULL;
  const char *locale = by_bot ? bot_locale : s->locale && s->locale[0] ? s->locale : op->locale;
  if (locale[0] && !valid_locale(locale)) return refuse(op, E(INVALID), "send.locale is invalid");
  const char *customer = by_bot ? s->action->open->customer : op->principal;
  const char *bot = by_bot ? op->principal : g->cfg->bot;
  memset(st, 0, sizeof *st);
  pg_store_conv r = {0};
  r.id = s->conversation;
  r.customer = (char *)customer;
  r.assignee = (char *)bot;
  r.bot = (char *)bot;
  r.locale = (char *)locale;
  r.status = PG_CONV_OPEN;
  r.epoch = 1;
  int rc = pg_store_conv_copy(&st->row, &r);
  if (rc) return rc;
  Parley__V1__Event ev;
  event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_OPENED);
  ev.customer = (char *)customer;
  ev.locale = (char *)locale;
  if (by_bot) {
    ev.action = s->action;
    ev.client_msg_id = s->client_msg_id;
  }
  rc = append_event(g, st, &ev, by_bot ? &s->client_msg_id : NULL);
  if (rc == 0 && by_bot) op->seq = st->row.last_seq;
  if (rc == 0) {
    parley__v1__event__init(&ev);
    ev.kind = PARLEY__V1__EVENT_KIND__EVENT_ASSIGNED;
    ev.sender = "";
    ev.sender_role = PARLEY__V1__ROLE__ROLE_SYSTEM;
    ev.assignee = (char *)bot;
    rc = append_event(g, st, &ev, NULL);
  }
  if (rc == 0 && by_bot) return 0;
  if (rc == 0) {
    event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_MESSAGE);
    ev.client_msg_id = s->client_msg_id;
    ev.content = s->content;
    ev.quote = s->quote;
    rc = append_event(g, st, &ev, &s->client_msg_id);
  }
  if (rc == 0) op->seq = st->row.last_seq;
  return rc;
}

static int apply_action(pg_gateway *g, pg_op *op, const Parley__V1__Send *s, stage *st) {
  Parley__V1__Action *a = s->action;
  /* Actions change the row's strings (assignee, queue, note, locale, tags). */
  if (stage_own(st)) return PARLEY_ENOMEM;
  pg_store_conv *r = &st->row;
  const ProtobufCBinaryData *id = &s->client_msg_id;
  Parley__V1__Event ev;
  int rc;
  switch (a->body_case) {
  case PARLEY__V1__ACTION__BODY_TAG: {
    char *nt = NULL;
    const char *why = NULL;
    rc = tags_apply(r->tags, a->tag->add, a->tag->n_add, a->tag->remove, a->tag->n_remove, &nt,
                    &why);
    if (rc == PARLEY_EINVAL) return refuse(op, E(INVALID), why);
    if (rc < 0) return rc;
    /* The event is written even when nothing changed: the Send gets a seq
     * like every other, and the stream shows the tag set. */
    rc = tagged_event(g, st, op, nt, a, id);
    free(nt);
    return rc;
  }
  case PARLEY__V1__ACTION__BODY_HANDOFF: {
    const char *q = a->handoff->queue;
    if (!q || !pw_valid_conversation(q))
      return refuse(op, E(INVALID), "handoff.queue: 1-128 bytes of [A-Za-z0-9._:@-]");
    if (r->status == PG_CONV_QUEUED) return refuse(op, E(INVALID), "already waiting in a queue");
    char assignee[140];
    snprintf(assignee, sizeof assignee, "queue:%s", q);
    event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_HANDED_OFF);
    ev.client_msg_id = s->client_msg_id;
    ev.action = a;
    ev.assignee = assignee;
    if ((rc = append_event(g, st, &ev, id))) return rc;
    if (set_str(&r->assignee, assignee) || set_str(&r->queue, q) ||
        set_str(&r->note, a->handoff->note))
      return PARLEY_ENOMEM;
    r->status = PG_CONV_QUEUED;
    r->queued_ms = (int64_t)pg_now_ms();
    return 0;
  }
  case PARLEY__V1__ACTION__BODY_HAND_BACK:
    event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_HANDED_BACK);
    ev.client_msg_id = s->client_msg_id;
    ev.action = a;
    ev.assignee = r->bot;
    if ((rc = append_event(g, st, &ev, id))) return rc;
    if (set_str(&r->assignee, r->bot) || set_str(&r->queue, "")) return PARLEY_ENOMEM;
    r->status = PG_CONV_OPEN;
    r->epoch++;
    return 0;
  case PARLEY__V1__ACTION__BODY_TAKE:
    event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_ASSIGNED);
    ev.client_msg_id = s->client_msg_id;
    ev.action = a;
    ev.assignee = op->principal;
    if ((rc = append_event(g, st, &ev, id))) return rc;
    if (set_str(&r->assignee, op->principal) || set_str(&r->queue, "")) return PARLEY_ENOMEM;
    r->status = PG_CONV_OPEN;
    return 0;
  case PARLEY__V1__ACTION__BODY_CLOSE:
    event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_CLOSED);
    ev.client_msg_id = s->client_msg_id;
    ev.action = a;
    if ((rc = append_event(g, st, &ev, id))) return rc;
    r->status = PG_CONV_CLOSED;
    return set_str(&r->queue, "");
  case PARLEY__V1__ACTION__BODY_SET_LOCALE: {
    const char *l = a->set_locale->locale;
    if (!l || !valid_locale(l)) return refuse(op, E(INVALID), "set_locale.locale is invalid");
    event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_LOCALE_CHANGED);
    ev.client_msg_id = s->client_msg_id;
    ev.action = a;
    ev.locale = (char *)l;
    if ((rc = append_event(g, st, &ev, id))) return rc;
    return set_str(&r->locale, l);
  }
  default:
    return refuse(op, E(INVALID), "unknown action");
  }
}

/* Returns 0 (applied, or answered as a duplicate), 1 (refused: op->error
 * says why) or a negative error (nothing applied). */
static int apply_send(pg_gateway *g, pg_turn *t, pg_op *op) {
  Parley__V1__Send *s = op->frame->send;
  gw_copy(op->conv, sizeof op->conv, s->conversation);
  char conv[129];
  uint64_t seq;
  int rc = pg_hot_sent_get(g, op->principal, s->client_msg_id.data, conv, &seq);
  if (rc == 0) {
    op->seq = seq;
    op->duplicate = true;
    gw_copy(op->conv, sizeof op->conv, conv);
    return 0;
  }
  if (rc != PARLEY_ENOTFOUND) return rc;
  if (s->body_case == PARLEY__V1__SEND__BODY_CONTENT) ensure_fallback(s->content);
  if (s->quote && s->quote->excerpt && strlen(s->quote->excerpt) > 280)
    return refuse(op, E(INVALID), "quote.excerpt is longer than 280 bytes");
  stage st;
  pg_conv *cv = pg_hot_conv(g, s->conversation, true);
  if (s->body_case == PARLEY__V1__SEND__BODY_ACTION &&
      s->action->body_case == PARLEY__V1__ACTION__BODY_OPEN) {
    char locale[36];
    if (pg_open_check(g, op, s->action->open, cv ? &cv->row : NULL, locale, sizeof locale))
      return 1;
    if ((rc = open_conversation(g, op, s, &st, locale)) == 0 &&
        (rc = stage_commit(g, t, &st, op)) == 0 && (cv = pg_hot_conv(g, s->conversation, true)))
      cv->opener = op->conn ? op->conn->id : 0;
    if (rc) stage_abort(&st);
    return rc;
  }
  if (!cv) {
    if (op->role != PG_ROLE_CUSTOMER) return refuse(op, E(NOT_FOUND), "unknown conversation");
    if (s->body_case != PARLEY__V1__SEND__BODY_CONTENT)
      return refuse(op, E(NOT_FOUND), "a conversation opens with a message");
    rc = open_conversation(g, op, s, &st, NULL);
    if (rc) {
      stage_abort(&st);
      return rc;
    }
    return stage_commit(g, t, &st, op);
  }
  if (authorize(g, op, s, &cv->row)) return 1;
  if (s->quote && s->quote->seq > cv->row.last_seq)
    return refuse(op, E(INVALID), "quote.seq is beyond the conversation");
  if ((rc = stage_begin(&st, cv))) return rc;
  if (s->body_case == PARLEY__V1__SEND__BODY_CONTENT) {
    Parley__V1__Event ev;
    event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_MESSAGE);
    ev.client_msg_id = s->client_msg_id;
    ev.content = s->content;
    ev.quote = s->quote;
    rc = append_event(g, &st, &ev, &s->client_msg_id);
  } else {
    rc = apply_action(g, op, s, &st);
  }
  if (rc) {
    stage_abort(&st);
    return rc;
  }
  op->seq = st.row.last_seq;
  return stage_commit(g, t, &st, op);
}

/* ---------------------------------------------------------------- commit */

static int apply_item(pg_gateway *g, pg_turn *t, pg_op *op,
                      const Parley__V1__ConversationCommit *it, Parley__V1__CommitOutcome *out) {
  pg_conv *cv = pg_hot_conv(g, it->conversation, false);
  if (!cv) {
    out->error = E(NOT_FOUND);
    return 1;
  }
  pg_store_conv *r = &cv->row;
  out->state_version = r->state_version;
  if (strcmp(r->bot, op->principal)) {
    out->error = E(FORBIDDEN);
  } else if (it->epoch != r->epoch) {
    out->error = E(STALE_EPOCH);
  } else {
    pg_stream *st = op->conn ? gw_map_get(&op->conn->streams, r->id) : NULL;
    /* A revoked bot may still commit up to what the conversation holds.
     * An active stream's limit is what this bot principal has been given:
     * on this connection (high) or, by this process, on an earlier one
     * (seen): a bot that reconnects commits what it handled before the
     * cut, and those events may not have been pushed again yet. */
    uint64_t limit = r->last_seq;
    if (st && st->active) {
      limit = st->high > st->seen ? st->high : st->seen;
      /* After a restart the same holds for what the earlier run stored:
       * it may have pushed those events, and a bot that handled them
       * commits them on its new connection before they come again. A
       * limit below that would refuse those commits for good once the
       * stream's share of the window is taken by the events the bot
       * already handled. */
      if (limit < cv->boot_last_seq) limit = cv->boot_last_seq;
    }
    if (it->ack_seq > limit) out->error = E(ACK_OUT_OF_RANGE);
  }
  if (out->error == E(NONE) && it->n_state > PG_MAX_STATE_KEYS) out->error = E(INVALID);
  for (size_t i = 0; out->error == E(NONE) && i < it->n_state; i++)
    if (strlen(it->state[i]->key) > PG_MAX_STATE_KEY) out->error = E(INVALID);
  if (out->error != E(NONE)) return 1;
  uint64_t wm;
  int rc = pg_hot_bot_wm(g, cv, &wm);
  if (rc) return rc;
  if (it->ack_seq <= wm) {
    out->duplicate = true;
    return 0;
  }
  stage st;
  if ((rc = stage_begin(&st, cv))) return rc;
  st.wm = true;
  st.wm_val = it->ack_seq;
  if (it->n_state) {
    char **keys = calloc(it->n_state, sizeof *keys);
    if (!keys) rc = PARLEY_ENOMEM;
    for (size_t i = 0; rc == 0 && i < it->n_state; i++) keys[i] = it->state[i]->key;
    if (rc == 0) {
      st.item = it;
      st.row.state_version++;
      Parley__V1__Event ev;
      event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_STATE_CHANGED);
      ev.state_keys = keys;
      ev.n_state_keys = it->n_state;
      rc = append_event(g, &st, &ev, NULL);
    }
    free(keys);
  }
  if (rc == 0 && (it->n_tags_add || it->n_tags_remove)) {
    char *nt = NULL;
    const char *why = NULL;
    int trc = tags_apply(st.row.tags, it->tags_add, it->n_tags_add, it->tags_remove,
                         it->n_tags_remove, &nt, &why);
    if (trc == PARLEY_EINVAL) {
      out->error = E(INVALID);
      stage_abort(&st);
      return 1;
    }
    if (trc < 0) rc = trc;
    if (trc == 1) {
      Parley__V1__Tag tag = PARLEY__V1__TAG__INIT;
      tag.add = it->tags_add;
      tag.n_add = it->n_tags_add;
      tag.remove = it->tags_remove;
      tag.n_remove = it->n_tags_remove;
      Parley__V1__Action act = PARLEY__V1__ACTION__INIT;
      act.body_case = PARLEY__V1__ACTION__BODY_TAG;
      act.tag = &tag;
      rc = tagged_event(g, &st, op, nt, &act, NULL);
    }
    free(nt);
  }
  if (rc) {
    stage_abort(&st);
    return rc;
  }
  out->state_version = st.row.state_version;
  return stage_commit(g, t, &st, op);
}

static int apply_commit(pg_gateway *g, pg_turn *t, pg_op *op) {
  const Parley__V1__Commit *cm = op->frame->commit;
  op->outcomes = calloc(cm->n_items ? cm->n_items : 1, sizeof *op->outcomes);
  if (!op->outcomes) return PARLEY_ENOMEM;
  for (size_t i = 0; i < cm->n_items; i++) {
    Parley__V1__CommitOutcome *out = &op->outcomes[i];
    parley__v1__commit_outcome__init(out);
    out->conversation = cm->items[i]->conversation;
    out->ack_seq = cm->items[i]->ack_seq;
    /* Each item is atomic on its own: staged, then applied or dropped. */
    int rc = apply_item(g, t, op, cm->items[i], out);
    if (rc < 0) {
      out->error = rc == PARLEY_ETOOBIG ? E(INVALID) : E(INTERNAL);
      out->duplicate = false;
    }
  }
  return 0;
}

static int apply_ack(pg_gateway *g, pg_turn *t, pg_op *op) {
  const Parley__V1__Ack *a = op->frame->ack;
  for (size_t i = 0; i < a->n_entries; i++) {
    const Parley__V1__AckEntry *e = a->entries[i];
    if (pg_store_batch_watermark(t->batch, op->principal, op->device, e->conversation,
                                 e->up_to_seq))
      return PARLEY_ENOMEM;
    /* The hot copy, for a reconnect before the batch is durable. */
    pg_conv *cv = pg_hot_conv(g, e->conversation, false);
    if (cv) pg_hot_wm_raise(g, cv, op->principal, op->device, e->up_to_seq);
  }
  return 0;
}

static void apply_op(pg_gateway *g, pg_turn *t, pg_op *op) {
  op->time_ms = pg_now_ms();
  int rc;
  switch (op->frame->body_case) {
  case PARLEY__V1__FRAME__BODY_SEND: rc = apply_send(g, t, op); break;
  case PARLEY__V1__FRAME__BODY_COMMIT: rc = apply_commit(g, t, op); break;
  case PARLEY__V1__FRAME__BODY_ACK: rc = apply_ack(g, t, op); break;
  default: rc = 0; break;
  }
  if (rc == PARLEY_ETOOBIG) {
    refuse(op, E(INVALID), "the event would not fit in max_frame_bytes");
  } else if (rc < 0) {
    op->error = E(INTERNAL);
    snprintf(op->msg, sizeof op->msg, "storage error: %s",
             rc == PARLEY_ENOMEM ? "out of memory" : pg_store_errmsg(g->store));
    op->seq = 0;
    op->duplicate = false;
  }
}

/* --------------------------------------------------------------- replies */

static void reply(pg_gateway *g, pg_op *op) {
  pg_conn *c = op->conn;
  if (!c || !c->wsi) return;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  if (op->frame->body_case == PARLEY__V1__FRAME__BODY_SEND) {
    Parley__V1__SendAck a = PARLEY__V1__SEND_ACK__INIT;
    a.client_msg_id = op->frame->send->client_msg_id;
    a.conversation = op->conv;
    a.seq = op->error ? 0 : op->seq;
    a.server_time_ms = (int64_t)op->time_ms;
    a.duplicate = op->duplicate;
    a.error = op->error;
    a.message = op->msg;
    f.body_case = PARLEY__V1__FRAME__BODY_SEND_ACK;
    f.send_ack = &a;
    pg_conn_send_frame(c, &f);
  } else if (op->frame->body_case == PARLEY__V1__FRAME__BODY_COMMIT && op->outcomes) {
    const Parley__V1__Commit *cm = op->frame->commit;
    Parley__V1__CommitResult res = PARLEY__V1__COMMIT_RESULT__INIT;
    res.request_id = cm->request_id;
    res.n_outcomes = cm->n_items;
    res.outcomes = calloc(cm->n_items ? cm->n_items : 1, sizeof *res.outcomes);
    if (!res.outcomes) return;
    for (size_t i = 0; i < cm->n_items; i++) res.outcomes[i] = &op->outcomes[i];
    f.body_case = PARLEY__V1__FRAME__BODY_COMMIT_RESULT;
    f.commit_result = &res;
    pg_conn_send_frame(c, &f);
    free(res.outcomes);
    /* A committed ack_seq frees the bot connection's window (routing). */
    for (size_t i = 0; i < cm->n_items; i++)
      if (!op->outcomes[i].error && g->route.committed)
        g->route.committed(c, cm->items[i]->conversation, cm->items[i]->ack_seq);
  }
}

static void fail_all(pg_op *ops, const char *why) {
  for (pg_op *op = ops; op; op = op->next) {
    if (op->frame->body_case == PARLEY__V1__FRAME__BODY_COMMIT && op->outcomes) {
      for (size_t i = 0; i < op->frame->commit->n_items; i++)
        if (!op->outcomes[i].error) {
          op->outcomes[i].error = E(INTERNAL);
          op->outcomes[i].duplicate = false;
        }
    } else if (!op->error) {
      op->error = E(INTERNAL);
      op->seq = 0;
      op->duplicate = false;
      snprintf(op->msg, sizeof op->msg, "storage error: %s", why);
    }
  }
}

/* ------------------------------------------------------------ completion */

static void uncork_all(pg_turn *t) {
  for (size_t i = 0; i < t->n_uncork; i++) {
    pg_conn *c = t->uncork[i];
    if (!c) continue;
    c->corked = false;
    pg_out_kick(c);
  }
  t->n_uncork = 0;
}

/* The store answered turn t (in submission order). */
static void turn_done(void *ud, int status, const char *why) {
  pg_turn *t = ud;
  pg_gateway *g = t->g;
  if (g->turns_head == t) {
    g->turns_head = t->next;
    if (!g->turns_head) g->turns_tail = NULL;
  }
  bool ok = status == 0 && !t->broken;
  if (ok) {
    g->done_turn = t->no;
    /* The rows become what routing sees, then the answers go out, then
     * routing pushes the new events and moves assignments. */
    pg_store_conv *old = calloc(t->n_touch ? t->n_touch : 1, sizeof *old);
    bool *fresh = calloc(t->n_touch ? t->n_touch : 1, sizeof *fresh);
    for (size_t i = 0; old && fresh && i < t->n_touch; i++) {
      pg_conv *cv = t->touch[i].cv;
      old[i] = cv->pub;
      fresh[i] = !cv->exists;
      cv->pub = t->touch[i].snap;
      memset(&t->touch[i].snap, 0, sizeof t->touch[i].snap);
      cv->exists = true;
    }
    for (pg_op *op = t->ops; op; op = op->next) reply(g, op);
    for (size_t i = 0; old && fresh && i < t->n_touch; i++) {
      if (g->route.published)
        g->route.published(g, t->touch[i].cv, fresh[i] ? NULL : &old[i], t->touch[i].opened);
      pg_store_conv_clear(&old[i]);
    }
    free(old);
    free(fresh);
    for (size_t i = 0; i < t->n_places; i++) {
      t->places[i].cv->placing = false;
      if (g->route.placed) g->route.placed(g, t->places[i].cv, t->places[i].to);
    }
    for (pg_op *op = t->ops; op; op = op->next)
      if (op->conn && op->frame->body_case == PARLEY__V1__FRAME__BODY_COMMIT && g->route.pump)
        g->route.pump(op->conn);
    /* News another node announced while these writes were in flight. */
    for (size_t i = 0; i < t->n_touch; i++) pg_hot_remote_again(g, t->touch[i].cv);
    for (size_t i = 0; i < t->n_places; i++) pg_hot_remote_again(g, t->places[i].cv);
    uncork_all(t);
  } else {
    const char *reason = status < 0 ? (why && why[0] ? why : "the batch did not commit")
                                    : "the batch could not be built";
    fail_all(t->ops, reason);
    for (pg_op *op = t->ops; op; op = op->next) reply(g, op);
    /* The first failed turn takes the hot state back to what is durable;
     * the turns after it, built on it, fail as well (the store refuses
     * them) and find it done. */
    if (t->no > g->rollback_mark) {
      fprintf(stderr, "gateway: storage error, batch %llu failed: %s\n",
              (unsigned long long)t->no, reason);
      /* The batch being built was built on the failed state too: its
       * placements start over once the state is back. */
      pg_turn *cur = g->cur;
      g->cur = NULL;
      pg_hot_rollback(g, t->no);
      pg_store_reset(g->store);
      g->rollback_mark = g->next_turn;
      g->halted = false;
      if (cur) {
        for (size_t i = 0; i < cur->n_places; i++) {
          cur->places[i].cv->placing = false;
          if (cur->places[i].to && cur->places[i].to->n_owned) cur->places[i].to->n_owned--;
          if (g->route.placed) g->route.placed(g, cur->places[i].cv, NULL);
        }
        uncork_all(cur);
        turn_free(cur);
      }
    }
    for (size_t i = 0; i < t->n_places; i++) {
      t->places[i].cv->placing = false;
      if (t->places[i].to && t->places[i].to->n_owned) t->places[i].to->n_owned--;
      if (g->route.placed) g->route.placed(g, t->places[i].cv, NULL);
    }
    uncork_all(t);
  }
  turn_free(t);
}

static void submit(pg_gateway *g, pg_turn *t) {
  /* Each touched conversation's row as this batch leaves it: what routing
   * will see once the batch is durable. */
  for (size_t i = 0; i < t->n_touch; i++) {
    if (pg_store_conv_pack(&t->touch[i].snap, &t->touch[i].cv->row)) t->broken = true;
    t->touch[i].snap.last_seq = t->touch[i].cv->row.last_seq;
  }
  if (t->broken) {
    /* Nothing after this batch may be built on it: the loop stops taking
     * operations until its failure has been rolled back. An empty batch
     * keeps its place in the store's order. */
    g->halted = true;
    pg_store_batch_free(t->batch);
    t->batch = pg_store_batch_new();
  }
  if (g->turns_tail) g->turns_tail->next = t;
  else g->turns_head = t;
  g->turns_tail = t;
  pg_store_batch *b = t->batch;
  t->batch = NULL;
  if (!b || pg_store_submit(g->store, b, turn_done, t) != 0) {
    /* The store is closing (or no memory for an empty batch): answer now. */
    t->broken = true;
    turn_done(t, PARLEY_EDB, "the store is closed");
  }
}

/* --------------------------------------------------------------- entry */

void pg_apply_enqueue(pg_gateway *g, pg_conn *c, pw_frame *f) {
  /* One loop iteration's writes are bounded; past that the sender waits. */
  if (g->n_ops >= PG_MAX_OPS) {
    const Parley__V1__Send *s = f->body_case == PARLEY__V1__FRAME__BODY_SEND ? f->send : NULL;
    pg_conn_error(c, E(BUSY), false, "too many pending writes", s ? s->conversation : NULL,
                  s ? &s->client_msg_id : NULL,
                  f->body_case == PARLEY__V1__FRAME__BODY_COMMIT ? f->commit->request_id : 0,
                  100);
    if (s) pg_conn_refuse_send(c, s, E(BUSY), "too many pending writes");
    pw_frame_free(f);
    return;
  }
  /* The operation and copies of its connection's names in one block: the
   * connection may close before the operation's batch is durable, and
   * three strdup and free per frame were a visible share of the loop. */
  const char *locale = c->locale ? c->locale : "";
  size_t lp = strlen(c->principal) + 1, ld = strlen(c->device) + 1, ll = strlen(locale) + 1;
  pg_op *op = calloc(1, sizeof *op + lp + ld + ll);
  if (op) {
    char *p = (char *)(op + 1);
    op->principal = memcpy(p, c->principal, lp);
    op->device = memcpy(p + lp, c->device, ld);
    op->locale = memcpy(p + lp + ld, locale, ll);
  }
  if (!op) {
    pw_frame_free(f);
    pg_conn_error(c, E(INTERNAL), false, "out of memory", NULL, NULL, 0, 100);
    return;
  }
  op->conn = c;
  op->frame = f;
  op->role = c->role;
  if (g->ops_tail) g->ops_tail->next = op;
  else g->ops_head = op;
  g->ops_tail = op;
  g->n_ops++;
}

/* Applies ops (a list) into turn t and submits it. */
static void run(pg_gateway *g, pg_turn *t, pg_op *ops) {
  for (pg_op *op = ops; op; op = op->next) {
    apply_op(g, t, op);
    if (t->ops_tail) t->ops_tail->next = op;
    else t->ops = op;
    t->ops_tail = op;
  }
  submit(g, t);
}

void pg_apply_flush(pg_gateway *g) {
  if (g->halted || !g->store) return;
  if (!g->ops_head && !g->cur) return;
  if (pg_store_pending(g->store) >= PG_MAX_INFLIGHT && !g->stopping) return;
  pg_op *ops = g->ops_head;
  g->ops_head = g->ops_tail = NULL;
  g->n_ops = 0;
  pg_turn *t = current(g);
  g->cur = NULL;
  if (!t) {
    /* No memory for a batch: refuse what came in this iteration. */
    for (pg_op *op = ops; op;) {
      pg_op *n = op->next;
      op->next = NULL;
      fail_all(op, "out of memory");
      reply(g, op);
      op_free(op);
      op = n;
    }
    return;
  }
  if (g->cfg->group_commit || !ops) {
    run(g, t, ops);
    return;
  }
  /* Without group commit every operation is its own batch (and its own
   * transaction: the store merges nothing then). */
  while (ops && t) {
    pg_op *n = ops->next;
    ops->next = NULL;
    run(g, t, ops);
    ops = n;
    t = ops && !g->halted ? turn_new(g) : NULL;
  }
  if (ops) {
    /* Out of memory or halted half-way: keep the rest for the next flush. */
    g->ops_head = ops;
    for (pg_op *op = ops; op; op = op->next) {
      g->ops_tail = op;
      g->n_ops++;
    }
  }
}

void pg_apply_drain(pg_gateway *g) {
  if (!g->store) return;
  /* Completions may queue more (placements): a few rounds settle it. */
  for (int i = 0; i < 16; i++) {
    bool more = g->ops_head || g->cur || pg_store_pending(g->store);
    if (!more) break;
    bool stopping = g->stopping;
    g->stopping = true; /* no in-flight limit while draining */
    pg_apply_flush(g);
    g->stopping = stopping;
    pg_store_drain(g->store);
  }
}

int pg_apply_bump_epoch(pg_gateway *g, pg_conv *cv, pg_conn *to) {
  pg_turn *t = current(g);
  if (!t) return PARLEY_ENOMEM;
  if (t->n_places == t->cap_places) {
    size_t nc = t->cap_places ? t->cap_places * 2 : 8;
    place *n = realloc(t->places, nc * sizeof *n);
    if (!n) return PARLEY_ENOMEM;
    t->places = n;
    t->cap_places = nc;
  }
  cv->row.epoch++;
  if (pg_store_batch_conv(t->batch, &cv->row, PG_STORE_CONV_EPOCH)) {
    cv->row.epoch--;
    return PARLEY_ENOMEM;
  }
  touch_conv(t, cv, false);
  t->places[t->n_places++] = (place){.cv = cv, .to = to};
  cv->placing = true;
  return 0;
}

int pg_apply_uncork_after(pg_gateway *g, pg_conn *c) {
  pg_turn *t = current(g);
  if (t && t->n_uncork == t->cap_uncork) {
    size_t nc = t->cap_uncork ? t->cap_uncork * 2 : 4;
    pg_conn **n = realloc(t->uncork, nc * sizeof *n);
    if (!n) t = NULL;
    else {
      t->uncork = n;
      t->cap_uncork = nc;
    }
  }
  if (!t) {
    c->corked = false;
    pg_out_kick(c);
    return PARLEY_ENOMEM;
  }
  t->uncork[t->n_uncork++] = c;
  return 0;
}

static void forget_conn(pg_turn *t, pg_conn *c) {
  for (size_t i = 0; i < t->n_uncork; i++)
    if (t->uncork[i] == c) t->uncork[i] = NULL;
  for (pg_op *op = t->ops; op; op = op->next)
    if (op->conn == c) op->conn = NULL;
  for (size_t i = 0; i < t->n_places; i++)
    if (t->places[i].to == c) t->places[i].to = NULL;
}

void pg_apply_conn_gone(pg_gateway *g, pg_conn *c) {
  for (pg_op *op = g->ops_head; op; op = op->next)
    if (op->conn == c) op->conn = NULL;
  if (g->cur) forget_conn(g->cur, c);
  for (pg_turn *t = g->turns_head; t; t = t->next) forget_conn(t, c);
}

void pg_apply_free(pg_gateway *g) {
  while (g->ops_head) {
    pg_op *op = g->ops_head;
    g->ops_head = op->next;
    op_free(op);
  }
  g->ops_tail = NULL;
  if (g->cur) {
    for (size_t i = 0; i < g->cur->n_places; i++) g->cur->places[i].cv->placing = false;
    turn_free(g->cur);
    g->cur = NULL;
  }
  /* Turns still with the store are answered by its close (drain). */
}
