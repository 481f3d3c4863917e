/* Group commit: the Sends, Commits and Acks queued during one loop
 * iteration are applied in one SQLite transaction (each inside its own
 * savepoint, so a refused or failed one leaves no trace), and answered only
 * after COMMIT returns. With group_commit off each gets its own
 * transaction, which is what the throughput comparison measures. */
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

/* Gives the event the conversation's next seq and stores it. */
static int append_event(pg_gateway *g, pg_convrow *r, Parley__V1__Event *ev) {
  ev->conversation = r->id;
  ev->seq = r->last_seq + 1;
  ev->server_time_ms = (int64_t)pg_now_ms();
  size_t n = parley__v1__event__get_packed_size(ev);
  /* Every event must fit a Deliver frame within the peer's frame limit. */
  if (n + PG_DELIVER_OVERHEAD > g->cfg->max_frame_bytes) return PARLEY_ETOOBIG;
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) return PARLEY_ENOMEM;
  parley__v1__event__pack(ev, buf);
  int rc = pg_db_event_put(g->db, r->id, ev->seq, buf, n);
  free(buf);
  if (rc == 0) r->last_seq = ev->seq;
  return rc;
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
  for (char *p = copy; *p && n < PG_MAX_TAGS;) {
    v[n++] = p;
    char *nl = strchr(p, '\n');
    if (!nl) break;
    *nl = '\0';
    p = nl + 1;
  }
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

/* Fills the tags field of a TAGGED event from the joined list. */
static size_t tags_split(char *joined, char **v, size_t max) {
  size_t n = 0;
  for (char *p = joined; *p && n < max;) {
    v[n++] = p;
    char *nl = strchr(p, '\n');
    if (!nl) break;
    *nl = '\0';
    p = nl + 1;
  }
  return n;
}

static int tagged_event(pg_gateway *g, pg_op *op, pg_convrow *r, const char *newtags,
                        Parley__V1__Action *action, const ProtobufCBinaryData *msg_id) {
  Parley__V1__Event ev;
  event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_TAGGED);
  char *copy = strdup(newtags);
  if (!copy) return PARLEY_ENOMEM;
  char *v[PG_MAX_TAGS];
  ev.n_tags = tags_split(copy, v, PG_MAX_TAGS);
  ev.tags = v;
  ev.action = action;
  if (msg_id) ev.client_msg_id = *msg_id;
  int rc = append_event(g, r, &ev);
  free(copy);
  if (rc == 0) {
    free(r->tags);
    r->tags = strdup(newtags);
    if (!r->tags) rc = PARLEY_ENOMEM;
  }
  return rc;
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

/* ------------------------------------------------------------------ send */

static int open_conversation(pg_gateway *g, pg_op *op, const Parley__V1__Send *s) {
  const char *locale = s->locale && s->locale[0] ? s->locale : op->locale;
  if (locale[0] && !valid_locale(locale)) return refuse(op, E(INVALID), "send.locale is invalid");
  pg_convrow r = {0};
  r.id = s->conversation;
  r.customer = op->principal;
  r.assignee = g->cfg->bot;
  r.bot = g->cfg->bot;
  r.locale = (char *)locale;
  r.queue = "";
  r.note = "";
  r.tags = "";
  r.status = PG_CONV_OPEN;
  r.epoch = 1;
  int rc = pg_db_conv_insert(g->db, &r);
  Parley__V1__Event ev;
  if (rc == 0) {
    event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_OPENED);
    ev.customer = op->principal;
    ev.locale = (char *)locale;
    rc = append_event(g, &r, &ev);
  }
  if (rc == 0) {
    parley__v1__event__init(&ev);
    ev.kind = PARLEY__V1__EVENT_KIND__EVENT_ASSIGNED;
    ev.sender = "";
    ev.sender_role = PARLEY__V1__ROLE__ROLE_SYSTEM;
    ev.assignee = g->cfg->bot;
    rc = append_event(g, &r, &ev);
  }
  if (rc == 0) {
    event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_MESSAGE);
    ev.client_msg_id = s->client_msg_id;
    ev.content = s->content;
    ev.quote = s->quote;
    rc = append_event(g, &r, &ev);
  }
  if (rc == 0) rc = pg_db_conv_update(g->db, &r);
  if (rc == 0) {
    op->seq = r.last_seq;
    pg_router_touch(g, r.id, true);
  }
  return rc;
}

/* Who may do what, in the order that leaks nothing: ownership first, then
 * the conversation's status, then the epoch. */
static int authorize(pg_gateway *g, pg_op *op, const Parley__V1__Send *s, const pg_convrow *r) {
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

static int apply_action(pg_gateway *g, pg_op *op, const Parley__V1__Send *s, pg_convrow *r) {
  Parley__V1__Action *a = s->action;
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
    rc = tagged_event(g, op, r, nt, a, &s->client_msg_id);
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
    if ((rc = append_event(g, r, &ev))) return rc;
    char *na = strdup(assignee), *nq = strdup(q), *nn = strdup(a->handoff->note ? a->handoff->note : "");
    if (!na || !nq || !nn) {
      free(na);
      free(nq);
      free(nn);
      return PARLEY_ENOMEM;
    }
    free(r->assignee);
    free(r->queue);
    free(r->note);
    r->assignee = na;
    r->queue = nq;
    r->note = nn;
    r->status = PG_CONV_QUEUED;
    r->queued_ms = (int64_t)pg_now_ms();
    return 0;
  }
  case PARLEY__V1__ACTION__BODY_HAND_BACK: {
    event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_HANDED_BACK);
    ev.client_msg_id = s->client_msg_id;
    ev.action = a;
    ev.assignee = r->bot;
    if ((rc = append_event(g, r, &ev))) return rc;
    char *na = strdup(r->bot);
    if (!na) return PARLEY_ENOMEM;
    free(r->assignee);
    r->assignee = na;
    r->queue[0] = '\0';
    r->status = PG_CONV_OPEN;
    r->epoch++;
    return 0;
  }
  case PARLEY__V1__ACTION__BODY_TAKE: {
    event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_ASSIGNED);
    ev.client_msg_id = s->client_msg_id;
    ev.action = a;
    ev.assignee = op->principal;
    if ((rc = append_event(g, r, &ev))) return rc;
    char *na = strdup(op->principal);
    if (!na) return PARLEY_ENOMEM;
    free(r->assignee);
    r->assignee = na;
    r->queue[0] = '\0';
    r->status = PG_CONV_OPEN;
    return 0;
  }
  case PARLEY__V1__ACTION__BODY_CLOSE:
    event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_CLOSED);
    ev.client_msg_id = s->client_msg_id;
    ev.action = a;
    if ((rc = append_event(g, r, &ev))) return rc;
    r->status = PG_CONV_CLOSED;
    r->queue[0] = '\0';
    return 0;
  case PARLEY__V1__ACTION__BODY_SET_LOCALE: {
    const char *l = a->set_locale->locale;
    if (!l || !valid_locale(l)) return refuse(op, E(INVALID), "set_locale.locale is invalid");
    event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_LOCALE_CHANGED);
    ev.client_msg_id = s->client_msg_id;
    ev.action = a;
    ev.locale = (char *)l;
    if ((rc = append_event(g, r, &ev))) return rc;
    char *nl = strdup(l);
    if (!nl) return PARLEY_ENOMEM;
    free(r->locale);
    r->locale = nl;
    return 0;
  }
  default:
    return refuse(op, E(INVALID), "unknown action");
  }
}

static int apply_send(pg_gateway *g, pg_op *op) {
  Parley__V1__Send *s = op->frame->send;
  snprintf(op->conv, sizeof op->conv, "%s", s->conversation);
  char conv[129];
  uint64_t seq;
  int rc = pg_db_sent_get(g->db, op->principal, s->client_msg_id.data, conv, &seq);
  if (rc == 0) {
    op->seq = seq;
    op->duplicate = true;
    snprintf(op->conv, sizeof op->conv, "%s", conv);
    return 0;
  }
  if (rc != PARLEY_ENOTFOUND) return rc;
  if (s->body_case == PARLEY__V1__SEND__BODY_CONTENT) ensure_fallback(s->content);
  if (s->quote && s->quote->excerpt && strlen(s->quote->excerpt) > 280)
    return refuse(op, E(INVALID), "quote.excerpt is longer than 280 bytes");
  pg_convrow r;
  rc = pg_db_conv_get(g->db, s->conversation, &r);
  if (rc == PARLEY_ENOTFOUND) {
    if (op->role != PG_ROLE_CUSTOMER)
      return refuse(op, E(NOT_FOUND), "unknown conversation");
    if (s->body_case != PARLEY__V1__SEND__BODY_CONTENT)
      return refuse(op, E(NOT_FOUND), "a conversation opens with a message");
    if ((rc = open_conversation(g, op, s)) != 0) return rc;
    return pg_db_sent_put(g->db, op->principal, s->client_msg_id.data, s->conversation, op->seq);
  }
  if (rc != 0) return rc;
  if (authorize(g, op, s, &r)) {
    pg_convrow_clear(&r);
    return 1;
  }
  if (s->quote && s->quote->seq > r.last_seq) {
    pg_convrow_clear(&r);
    return refuse(op, E(INVALID), "quote.seq is beyond the conversation");
  }
  if (s->body_case == PARLEY__V1__SEND__BODY_CONTENT) {
    Parley__V1__Event ev;
    event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_MESSAGE);
    ev.client_msg_id = s->client_msg_id;
    ev.content = s->content;
    ev.quote = s->quote;
    rc = append_event(g, &r, &ev);
  } else {
    rc = apply_action(g, op, s, &r);
  }
  if (rc == 0) rc = pg_db_conv_update(g->db, &r);
  if (rc == 0) rc = pg_db_sent_put(g->db, op->principal, s->client_msg_id.data, r.id, r.last_seq);
  if (rc == 0) {
    op->seq = r.last_seq;
    pg_router_touch(g, r.id, false);
  }
  pg_convrow_clear(&r);
  return rc;
}

/* ---------------------------------------------------------------- commit */

static int apply_item(pg_gateway *g, pg_op *op, const Parley__V1__ConversationCommit *it,
                      Parley__V1__CommitOutcome *out) {
  pg_convrow r;
  int rc = pg_db_conv_get(g->db, it->conversation, &r);
  if (rc == PARLEY_ENOTFOUND) {
    out->error = E(NOT_FOUND);
    return 1;
  }
  if (rc) return rc;
  out->state_version = r.state_version;
  if (strcmp(r.bot, op->principal)) {
    out->error = E(FORBIDDEN);
  } else if (it->epoch != r.epoch) {
    out->error = E(STALE_EPOCH);
  } else {
    pg_stream *st = op->conn ? pg_router_stream(op->conn, r.id, false) : NULL;
    /* A revoked bot may still commit up to what the conversation holds.
     * An active stream's limit is what this bot principal has been given:
     * on this connection (high) or, by this process, on an earlier one
     * (seen): a bot that reconnects commits what it handled before the
     * cut, and those events may not have been pushed again yet. */
    uint64_t limit = r.last_seq;
    if (st && st->active) limit = st->high > st->seen ? st->high : st->seen;
    if (it->ack_seq > limit) out->error = E(ACK_OUT_OF_RANGE);
  }
  if (out->error == E(NONE) && it->n_state > PG_MAX_STATE_KEYS) out->error = E(INVALID);
  for (size_t i = 0; out->error == E(NONE) && i < it->n_state; i++)
    if (strlen(it->state[i]->key) > PG_MAX_STATE_KEY) out->error = E(INVALID);
  if (out->error != E(NONE)) {
    pg_convrow_clear(&r);
    return 1;
  }
  uint64_t wm = pg_db_watermark(g->db, op->principal, "", r.id);
  if (it->ack_seq <= wm) {
    out->duplicate = true;
    pg_convrow_clear(&r);
    return 0;
  }
  rc = pg_db_watermark_set(g->db, op->principal, "", r.id, it->ack_seq);
  if (rc == 0 && it->n_state) {
    char **keys = calloc(it->n_state, sizeof *keys);
    if (!keys) rc = PARLEY_ENOMEM;
    for (size_t i = 0; rc == 0 && i < it->n_state; i++) {
      const Parley__V1__StateEntry *e = it->state[i];
      keys[i] = e->key;
      rc = e->deleted ? pg_db_state_del(g->db, r.id, e->key)
                      : pg_db_state_set(g->db, r.id, e->key, e->value.data, e->value.len);
    }
    if (rc == 0) {
      r.state_version++;
      Parley__V1__Event ev;
      event_from(&ev, op, PARLEY__V1__EVENT_KIND__EVENT_STATE_CHANGED);
      ev.state_keys = keys;
      ev.n_state_keys = it->n_state;
      rc = append_event(g, &r, &ev);
    }
    free(keys);
  }
  if (rc == 0 && (it->n_tags_add || it->n_tags_remove)) {
    char *nt = NULL;
    const char *why = NULL;
    int trc = tags_apply(r.tags, it->tags_add, it->n_tags_add, it->tags_remove,
                         it->n_tags_remove, &nt, &why);
    if (trc == PARLEY_EINVAL) {
      out->error = E(INVALID);
      pg_convrow_clear(&r);
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
      rc = tagged_event(g, op, &r, nt, &act, NULL);
    }
    free(nt);
  }
  if (rc == 0) rc = pg_db_conv_update(g->db, &r);
  if (rc == 0) {
    out->state_version = r.state_version;
    pg_router_touch(g, r.id, false);
  }
  pg_convrow_clear(&r);
  return rc;
}

static int apply_commit(pg_gateway *g, pg_op *op) {
  const Parley__V1__Commit *cm = op->frame->commit;
  op->outcomes = calloc(cm->n_items ? cm->n_items : 1, sizeof *op->outcomes);
  if (!op->outcomes) return PARLEY_ENOMEM;
  for (size_t i = 0; i < cm->n_items; i++) {
    Parley__V1__CommitOutcome *out = &op->outcomes[i];
    parley__v1__commit_outcome__init(out);
    out->conversation = cm->items[i]->conversation;
    out->ack_seq = cm->items[i]->ack_seq;
    /* Each item is atomic on its own: a savepoint per item. */
    if (pg_db_savepoint(g->db)) return PARLEY_EDB;
    int rc = apply_item(g, op, cm->items[i], out);
    if (rc > 0) {
      pg_db_rollback_to(g->db);
    } else if (rc < 0) {
      pg_db_rollback_to(g->db);
      out->error = rc == PARLEY_ETOOBIG ? E(INVALID) : E(INTERNAL);
    } else if (pg_db_release(g->db)) {
      return PARLEY_EDB;
    }
  }
  return 0;
}

static int apply_ack(pg_gateway *g, pg_op *op) {
  const Parley__V1__Ack *a = op->frame->ack;
  for (size_t i = 0; i < a->n_entries; i++) {
    int rc = pg_db_watermark_set(g->db, op->principal, op->device, a->entries[i]->conversation,
                                 a->entries[i]->up_to_seq);
    if (rc) return rc;
  }
  return 0;
}

/* Runs one op inside a savepoint. Returns nonzero only when the whole
 * transaction is unusable. */
static int apply_op(pg_gateway *g, pg_op *op) {
  op->time_ms = pg_now_ms();
  if (pg_db_savepoint(g->db)) return PARLEY_EDB;
  int rc;
  switch (op->frame->body_case) {
  case PARLEY__V1__FRAME__BODY_SEND: rc = apply_send(g, op); break;
  case PARLEY__V1__FRAME__BODY_COMMIT: rc = apply_commit(g, op); break;
  case PARLEY__V1__FRAME__BODY_ACK: rc = apply_ack(g, op); break;
  default: rc = 0; break;
  }
  if (rc == 0) return pg_db_release(g->db);
  pg_db_rollback_to(g->db);
  if (rc == PARLEY_ETOOBIG) {
    refuse(op, E(INVALID), "the event would not fit in max_frame_bytes");
  } else if (rc < 0) {
    op->error = E(INTERNAL);
    snprintf(op->msg, sizeof op->msg, "storage error: %s", pg_db_errmsg(g->db));
    op->seq = 0;
    op->duplicate = false;
  }
  return 0;
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
    /* A committed ack_seq frees the bot connection's window. A duplicate
     * does too: the watermark is already there (committed on an earlier
     * connection, or while this stream was being set up), and the bot will
     * not commit those events again, so leaving the stream behind would
     * keep its share of the window taken for good. The ack_seq may pass
     * what this connection pushed (the range check allows what the bot was
     * given before a reconnect): the stream then resumes after it. */
    for (size_t i = 0; i < cm->n_items; i++) {
      if (op->outcomes[i].error) continue;
      pg_stream *s = pg_router_stream(c, cm->items[i]->conversation, false);
      if (!s) continue;
      uint64_t up = cm->items[i]->ack_seq;
      if (s->high < up) s->high = up;
      pg_router_stream_acked(c, s, up);
    }
    free(res.outcomes);
  }
}

static void fail_all(pg_op *from, pg_op *to) {
  for (pg_op *op = from; op != to; op = op->next) {
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
      snprintf(op->msg, sizeof op->msg, "storage error: the transaction did not commit");
    }
  }
}

/* Applies ops [from, to) in one transaction. */
static void run(pg_gateway *g, pg_op *from, pg_op *to) {
  bool ok = pg_db_begin(g->db) == 0;
  for (pg_op *op = from; ok && op != to; op = op->next) ok = apply_op(g, op) == 0;
  if (ok) ok = pg_db_commit(g->db) == 0;
  if (!ok) {
    pg_db_rollback(g->db);
    pg_router_discard(g);
    fail_all(from, to);
  }
  for (pg_op *op = from; op != to; op = op->next) reply(g, op);
  if (ok) pg_router_after_commit(g);
  for (pg_op *op = from; op != to; op = op->next)
    if (op->conn && op->frame->body_case == PARLEY__V1__FRAME__BODY_COMMIT) pg_router_pump(op->conn);
}

void pg_session_batch(pg_gateway *g) {
  pg_op *ops = g->ops_head;
  g->ops_head = g->ops_tail = NULL;
  g->n_ops = 0;
  if (!ops) return;
  if (g->cfg->group_commit) {
    run(g, ops, NULL);
  } else {
    for (pg_op *op = ops; op; op = op->next) run(g, op, op->next);
  }
  while (ops) {
    pg_op *n = ops->next;
    pw_frame_free(ops->frame);
    free(ops->principal);
    free(ops->device);
    free(ops->locale);
    free(ops->outcomes);
    free(ops);
    ops = n;
  }
}
