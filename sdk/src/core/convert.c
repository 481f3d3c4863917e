/* Wire <-> public type conversion and fallback rendering; see convert.h. */
#include "core/convert.h"
#include "util/array.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <parley/error.h>

/* protoc-c treats a string field as a char*; the empty string constant is
 * never written through, so casting away const is safe. */
char *pe_str(const char *s) { return (char *)(s ? s : ""); }

void *pe_arena_alloc(pe_arena *a, size_t size) {
  if (a->failed) return NULL;
  if (pu_reserve(&a->ptrs, &a->cap, a->n, sizeof *a->ptrs, 16)) {
    a->failed = 1;
    return NULL;
  }
  void *p = calloc(1, size ? size : 1);
  if (!p) {
    a->failed = 1;
    return NULL;
  }
  a->ptrs[a->n++] = p;
  return p;
}

void pe_arena_free(pe_arena *a) {
  for (size_t i = 0; i < a->n; i++) free(a->ptrs[i]);
  free(a->ptrs);
  a->ptrs = NULL;
  a->n = a->cap = 0;
  a->failed = 0;
}

/* ------------------------------------------------------------ validation */

int pe_content_check(const parley_content *c, const char **why) {
  *why = NULL;
  if (!c) {
    *why = "content is NULL";
    return PARLEY_EINVAL;
  }
  switch (c->kind) {
  case PARLEY_CONTENT_TEXT:
    if (!c->text || !c->text[0]) *why = "text content needs text";
    break;
  case PARLEY_CONTENT_CARD:
    if ((!c->title || !c->title[0]) && (!c->text || !c->text[0]))
      *why = "card needs a title or text";
    break;
  case PARLEY_CONTENT_QUICK_REPLIES:
    if (c->n_buttons == 0) *why = "quick replies need at least one reply";
    break;
  case PARLEY_CONTENT_IMAGE:
    if (!c->image_url || !c->image_url[0]) *why = "image needs image_url";
    break;
  case PARLEY_CONTENT_POSTBACK:
    if (!c->payload) *why = "postback needs a payload";
    break;
  default:
    *why = "unknown content kind";
    break;
  }
  if (!*why && c->n_buttons && !c->buttons) *why = "n_buttons without buttons";
  if (!*why && c->n_buttons > 100) *why = "more than 100 buttons";
  for (size_t i = 0; !*why && i < c->n_buttons; i++) {
    if (!c->buttons[i].label) *why = "button without label";
    else if (c->kind == PARLEY_CONTENT_CARD && c->buttons[i].payload &&
             c->buttons[i].url)
      *why = "card button with both payload and url";
  }
  return *why ? PARLEY_EINVAL : 0;
}

static int check_strv(const char *const *v, size_t n) {
  if (n && !v) return 0;
  for (size_t i = 0; i < n; i++)
    if (!v[i] || !v[i][0]) return 0;
  return 1;
}

int pe_action_check(const parley_action *a, const char **why) {
  *why = NULL;
  if (!a) {
    *why = "action is NULL";
    return PARLEY_EINVAL;
  }
  switch (a->kind) {
  case PARLEY_ACTION_TAG:
    if (a->n_tags_add + a->n_tags_remove == 0) *why = "tag action without tags";
    else if (!check_strv(a->tags_add, a->n_tags_add) ||
             !check_strv(a->tags_remove, a->n_tags_remove))
      *why = "empty or NULL tag";
    break;
  case PARLEY_ACTION_HANDOFF:
    if (!a->queue || !a->queue[0]) *why = "handoff needs a queue";
    break;
  case PARLEY_ACTION_SET_LOCALE:
    if (!a->locale || !a->locale[0]) *why = "set_locale needs a locale";
    break;
  case PARLEY_ACTION_OPEN:
    if (!a->customer || !pw_valid_conversation(a->customer))
      *why = "open needs a customer principal (1-128 bytes of [A-Za-z0-9._:@-])";
    break;
  case PARLEY_ACTION_HAND_BACK:
  case PARLEY_ACTION_TAKE:
  case PARLEY_ACTION_CLOSE:
    break;
  default:
    *why = "unknown action kind";
    break;
  }
  return *why ? PARLEY_EINVAL : 0;
}

/* -------------------------------------------------------------- fallback */

typedef struct sbuf {
  char *p;
  size_t len, cap;
} sbuf;

/* Appends without ever exceeding cap-1 bytes; a cut never splits a UTF-8
 * sequence, so the fallback stays valid text. */
static void sb_add(sbuf *b, const char *s) {
  if (!s || !b->p) return;
  size_t n = strlen(s), room = b->cap - 1 - b->len;
  if (n > room) {
    n = room;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void sb_line(sbuf *b, const char *s) {
  if (!s || !s[0]) return;
  if (b->len) sb_add(b, "\n");
  sb_add(b, s);
}

static void sb_numbered(sbuf *b, const parley_button *bt, size_t n) {
  char num[32];
  for (size_t i = 0; i < n; i++) {
    snprintf(num, sizeof num, "%zu. ", i + 1);
    if (b->len) sb_add(b, "\n");
    sb_add(b, num);
    sb_add(b, bt[i].label);
    if (bt[i].url && bt[i].url[0]) {
      sb_add(b, " (");
      sb_add(b, bt[i].url);
      sb_add(b, ")");
    }
  }
}

char *pe_fallback_render(pe_arena *a, const parley_content *c) {
  sbuf b = {pe_arena_alloc(a, PE_FALLBACK_MAX + 1), 0, PE_FALLBACK_MAX + 1};
  if (!b.p) return NULL;
  switch (c->kind) {
  case PARLEY_CONTENT_TEXT:
    sb_add(&b, c->text);
    break;
  case PARLEY_CONTENT_CARD:
    sb_line(&b, c->title);
    sb_line(&b, c->text);
    sb_line(&b, c->image_url);
    sb_numbered(&b, c->buttons, c->n_buttons);
    break;
  case PARLEY_CONTENT_QUICK_REPLIES:
    sb_line(&b, c->text);
    sb_numbered(&b, c->buttons, c->n_buttons);
    break;
  case PARLEY_CONTENT_IMAGE:
    if (c->text && c->text[0]) {
      sb_add(&b, "[image: ");
      sb_add(&b, c->text);
      sb_add(&b, "] ");
    } else {
      sb_add(&b, "[image] ");
    }
    sb_add(&b, c->image_url);
    break;
  case PARLEY_CONTENT_POSTBACK:
    sb_add(&b, c->label && c->label[0] ? c->label : c->payload);
    break;
  default:
    break;
  }
  return b.p;
}

/* ------------------------------------------------------------ to the wire */

static Parley__V1__Button *button_to_wire(pe_arena *a, const parley_button *b) {
  Parley__V1__Button *w = pe_arena_alloc(a, sizeof *w);
  if (!w) return NULL;
  parley__v1__button__init(w);
  w->label = pe_str(b->label);
  if (b->url && b->url[0]) {
    w->action_case = PARLEY__V1__BUTTON__ACTION_URL;
    w->url = pe_str(b->url);
  } else {
    w->action_case = PARLEY__V1__BUTTON__ACTION_POSTBACK;
    w->postback = pe_str(b->payload);
  }
  return w;
}

Parley__V1__Content *pe_content_to_wire(pe_arena *a, const parley_content *c) {
  Parley__V1__Content *w = pe_arena_alloc(a, sizeof *w);
  if (!w) return NULL;
  parley__v1__content__init(w);
  switch (c->kind) {
  case PARLEY_CONTENT_TEXT: {
    Parley__V1__Text *t = pe_arena_alloc(a, sizeof *t);
    if (!t) return NULL;
    parley__v1__text__init(t);
    t->body = pe_str(c->text);
    w->body_case = PARLEY__V1__CONTENT__BODY_TEXT;
    w->text = t;
    break;
  }
  case PARLEY_CONTENT_CARD: {
    Parley__V1__Card *k = pe_arena_alloc(a, sizeof *k);
    if (!k) return NULL;
    parley__v1__card__init(k);
    k->title = pe_str(c->title);
    k->text = pe_str(c->text);
    k->image_url = pe_str(c->image_url);
    if (c->n_buttons) {
      k->buttons = pe_arena_alloc(a, c->n_buttons * sizeof *k->buttons);
      if (!k->buttons) return NULL;
      for (size_t i = 0; i < c->n_buttons; i++)
        if (!(k->buttons[i] = button_to_wire(a, &c->buttons[i]))) return NULL;
      k->n_buttons = c->n_buttons;
    }
    w->body_case = PARLEY__V1__CONTENT__BODY_CARD;
    w->card = k;
    break;
  }
  case PARLEY_CONTENT_QUICK_REPLIES: {
    Parley__V1__QuickReplies *q = pe_arena_alloc(a, sizeof *q);
    if (!q) return NULL;
    parley__v1__quick_replies__init(q);
    q->text = pe_str(c->text);
    if (c->n_buttons) {
      q->replies = pe_arena_alloc(a, c->n_buttons * sizeof *q->replies);
      if (!q->replies) return NULL;
      for (size_t i = 0; i < c->n_buttons; i++) {
        Parley__V1__QuickReply *r = pe_arena_alloc(a, sizeof *r);
        if (!r) return NULL;
        parley__v1__quick_reply__init(r);
        r->label = pe_str(c->buttons[i].label);
        r->payload = pe_str(c->buttons[i].payload);
        q->replies[i] = r;
      }
      q->n_replies = c->n_buttons;
    }
    w->body_case = PARLEY__V1__CONTENT__BODY_QUICK_REPLIES;
    w->quick_replies = q;
    break;
  }
  case PARLEY_CONTENT_IMAGE: {
    Parley__V1__Image *im = pe_arena_alloc(a, sizeof *im);
    if (!im) return NULL;
    parley__v1__image__init(im);
    im->url = pe_str(c->image_url);
    im->alt = pe_str(c->text);
    im->width = c->width;
    im->height = c->height;
    w->body_case = PARLEY__V1__CONTENT__BODY_IMAGE;
    w->image = im;
    break;
  }
  case PARLEY_CONTENT_POSTBACK: {
    Parley__V1__Postback *pb = pe_arena_alloc(a, sizeof *pb);
    if (!pb) return NULL;
    parley__v1__postback__init(pb);
    pb->payload = pe_str(c->payload);
    pb->label = pe_str(c->label);
    pb->source_seq = c->source_seq;
    w->body_case = PARLEY__V1__CONTENT__BODY_POSTBACK;
    w->postback = pb;
    break;
  }
  default:
    return NULL;
  }
  if (c->fallback && c->fallback[0]) {
    w->fallback = pe_str(c->fallback);
  } else if (c->kind != PARLEY_CONTENT_TEXT) {
    /* The protocol requires a fallback for every body but plain text, so
     * text-only clients can still show the message. */
    w->fallback = pe_fallback_render(a, c);
    if (!w->fallback) return NULL;
  }
  return w;
}

Parley__V1__Action *pe_action_to_wire(pe_arena *a, const parley_action *act) {
  Parley__V1__Action *w = pe_arena_alloc(a, sizeof *w);
  if (!w) return NULL;
  parley__v1__action__init(w);
  switch (act->kind) {
  case PARLEY_ACTION_TAG: {
    Parley__V1__Tag *t = pe_arena_alloc(a, sizeof *t);
    if (!t) return NULL;
    parley__v1__tag__init(t);
    t->n_add = act->n_tags_add;
    t->add = (char **)act->tags_add;
    t->n_remove = act->n_tags_remove;
    t->remove = (char **)act->tags_remove;
    w->body_case = PARLEY__V1__ACTION__BODY_TAG;
    w->tag = t;
    break;
  }
  case PARLEY_ACTION_HANDOFF: {
    Parley__V1__Handoff *h = pe_arena_alloc(a, sizeof *h);
    if (!h) return NULL;
    parley__v1__handoff__init(h);
    h->queue = pe_str(act->queue);
    h->note = pe_str(act->note);
    w->body_case = PARLEY__V1__ACTION__BODY_HANDOFF;
    w->handoff = h;
    break;
  }
  case PARLEY_ACTION_HAND_BACK: {
    Parley__V1__HandBack *h = pe_arena_alloc(a, sizeof *h);
    if (!h) return NULL;
    parley__v1__hand_back__init(h);
    h->note = pe_str(act->note);
    w->body_case = PARLEY__V1__ACTION__BODY_HAND_BACK;
    w->hand_back = h;
    break;
  }
  case PARLEY_ACTION_TAKE: {
    Parley__V1__Take *t = pe_arena_alloc(a, sizeof *t);
    if (!t) return NULL;
    parley__v1__take__init(t);
    w->body_case = PARLEY__V1__ACTION__BODY_TAKE;
    w->take = t;
    break;
  }
  case PARLEY_ACTION_CLOSE: {
    Parley__V1__Close *c = pe_arena_alloc(a, sizeof *c);
    if (!c) return NULL;
    parley__v1__close__init(c);
    c->reason = pe_str(act->note);
    w->body_case = PARLEY__V1__ACTION__BODY_CLOSE;
    w->close = c;
    break;
  }
  case PARLEY_ACTION_SET_LOCALE: {
    Parley__V1__SetLocale *l = pe_arena_alloc(a, sizeof *l);
    if (!l) return NULL;
    parley__v1__set_locale__init(l);
    l->locale = pe_str(act->locale);
    w->body_case = PARLEY__V1__ACTION__BODY_SET_LOCALE;
    w->set_locale = l;
    break;
  }
  case PARLEY_ACTION_OPEN: {
    Parley__V1__Open *o = pe_arena_alloc(a, sizeof *o);
    if (!o) return NULL;
    parley__v1__open__init(o);
    o->customer = pe_str(act->customer);
    o->locale = pe_str(act->locale);
    w->body_case = PARLEY__V1__ACTION__BODY_OPEN;
    w->open = o;
    break;
  }
  default:
    return NULL;
  }
  return w;
}

Parley__V1__Quote *pe_quote_to_wire(pe_arena *a, const parley_quote *q) {
  if (!q || q->seq == 0) return NULL;
  Parley__V1__Quote *w = pe_arena_alloc(a, sizeof *w);
  if (!w) return NULL;
  parley__v1__quote__init(w);
  w->seq = q->seq;
  w->excerpt = pe_str(q->excerpt);
  w->sender = pe_str(q->sender);
  return w;
}

/* ---------------------------------------------------------- from the wire */

void pe_content_from_wire(pe_arena *a, const Parley__V1__Content *in,
                          parley_content *out) {
  memset(out, 0, sizeof *out);
  if (!in) return;
  out->fallback = in->fallback;
  switch (in->body_case) {
  case PARLEY__V1__CONTENT__BODY_TEXT:
    out->kind = PARLEY_CONTENT_TEXT;
    out->text = in->text->body;
    break;
  case PARLEY__V1__CONTENT__BODY_CARD: {
    const Parley__V1__Card *k = in->card;
    out->kind = PARLEY_CONTENT_CARD;
    out->title = k->title;
    out->text = k->text;
    out->image_url = k->image_url;
    if (k->n_buttons) {
      parley_button *bt = pe_arena_alloc(a, k->n_buttons * sizeof *bt);
      if (!bt) return;
      for (size_t i = 0; i < k->n_buttons; i++) {
        bt[i].label = k->buttons[i]->label;
        if (k->buttons[i]->action_case == PARLEY__V1__BUTTON__ACTION_URL)
          bt[i].url = k->buttons[i]->url;
        else if (k->buttons[i]->action_case == PARLEY__V1__BUTTON__ACTION_POSTBACK)
          bt[i].payload = k->buttons[i]->postback;
      }
      out->buttons = bt;
      out->n_buttons = k->n_buttons;
    }
    break;
  }
  case PARLEY__V1__CONTENT__BODY_QUICK_REPLIES: {
    const Parley__V1__QuickReplies *q = in->quick_replies;
    out->kind = PARLEY_CONTENT_QUICK_REPLIES;
    out->text = q->text;
    if (q->n_replies) {
      parley_button *bt = pe_arena_alloc(a, q->n_replies * sizeof *bt);
      if (!bt) return;
      for (size_t i = 0; i < q->n_replies; i++) {
        bt[i].label = q->replies[i]->label;
        bt[i].payload = q->replies[i]->payload;
      }
      out->buttons = bt;
      out->n_buttons = q->n_replies;
    }
    break;
  }
  case PARLEY__V1__CONTENT__BODY_IMAGE:
    out->kind = PARLEY_CONTENT_IMAGE;
    out->image_url = in->image->url;
    out->text = in->image->alt;
    out->width = in->image->width;
    out->height = in->image->height;
    break;
  case PARLEY__V1__CONTENT__BODY_POSTBACK:
    out->kind = PARLEY_CONTENT_POSTBACK;
    out->payload = in->postback->payload;
    out->label = in->postback->label;
    out->source_seq = in->postback->source_seq;
    break;
  default:
    out->kind = PARLEY_CONTENT_NONE;
    break;
  }
}

void pe_action_from_wire(const Parley__V1__Action *in, parley_action *out) {
  memset(out, 0, sizeof *out);
  if (!in) return;
  switch (in->body_case) {
  case PARLEY__V1__ACTION__BODY_TAG:
    out->kind = PARLEY_ACTION_TAG;
    out->tags_add = (const char *const *)in->tag->add;
    out->n_tags_add = in->tag->n_add;
    out->tags_remove = (const char *const *)in->tag->remove;
    out->n_tags_remove = in->tag->n_remove;
    break;
  case PARLEY__V1__ACTION__BODY_HANDOFF:
    out->kind = PARLEY_ACTION_HANDOFF;
    out->queue = in->handoff->queue;
    out->note = in->handoff->note;
    break;
  case PARLEY__V1__ACTION__BODY_HAND_BACK:
    out->kind = PARLEY_ACTION_HAND_BACK;
    out->note = in->hand_back->note;
    break;
  case PARLEY__V1__ACTION__BODY_TAKE:
    out->kind = PARLEY_ACTION_TAKE;
    break;
  case PARLEY__V1__ACTION__BODY_CLOSE:
    out->kind = PARLEY_ACTION_CLOSE;
    out->note = in->close->reason;
    break;
  case PARLEY__V1__ACTION__BODY_SET_LOCALE:
    out->kind = PARLEY_ACTION_SET_LOCALE;
    out->locale = in->set_locale->locale;
    break;
  case PARLEY__V1__ACTION__BODY_OPEN:
    out->kind = PARLEY_ACTION_OPEN;
    out->customer = in->open->customer;
    out->locale = in->open->locale;
    break;
  default:
    break;
  }
}

int pe_event_from_wire(pe_arena *a, const Parley__V1__Event *in,
                       parley_event *out) {
  memset(out, 0, sizeof *out);
  out->kind = (parley_event_kind)in->kind;
  out->conversation = in->conversation;
  out->seq = in->seq;
  out->server_time_ms = in->server_time_ms;
  out->sender = in->sender;
  out->sender_role = (parley_role)in->sender_role;
  if (in->client_msg_id.len == PARLEY_MSG_ID_LEN && in->client_msg_id.data) {
    memcpy(out->msg_id, in->client_msg_id.data, PARLEY_MSG_ID_LEN);
    out->has_msg_id = true;
  }
  out->redelivered = in->redelivered;
  pe_content_from_wire(a, in->content, &out->content);
  if (in->quote) {
    out->quote.seq = in->quote->seq;
    out->quote.excerpt = in->quote->excerpt;
    out->quote.sender = in->quote->sender;
  }
  pe_action_from_wire(in->action, &out->action);
  out->assignee = in->assignee;
  out->tags = (const char *const *)in->tags;
  out->n_tags = in->n_tags;
  out->state_keys = (const char *const *)in->state_keys;
  out->n_state_keys = in->n_state_keys;
  out->locale = in->locale;
  out->customer = in->customer;
  return a->failed ? PARLEY_ENOMEM : 0;
}
