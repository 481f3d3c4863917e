/* `parley test`: the customer's and the agents' clients. The customer's
 * client records every event of the case's conversation once (a
 * reconnected client gets unacknowledged events again): that record is
 * what the checks and the transcript look at. */
#include "wb.h"

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
    wb_note(w, "more than %d events in one case", WB_ITEMS_MAX);
    return;
  }
  wb_item *it = &w->items[w->n_items++];
  memset(it, 0, sizeof *it);
  it->seq = ev->seq;
  it->kind = ev->kind;
  it->sender = wb_xdup(ev->sender);
  it->from_bot = from_bot;
  it->step = w->step;
  it->has_id = ev->has_msg_id;
  memcpy(it->id, ev->msg_id, PARLEY_MSG_ID_LEN);
  if (ev->kind == PARLEY_EVENT_MESSAGE) {
    const parley_content *ct = &ev->content;
    it->ctype = ct->kind;
    it->text = wb_xdup(ct->kind == PARLEY_CONTENT_POSTBACK ? (ct->label ? ct->label : ct->payload)
                                                       : ct->text);
    it->title = wb_xdup(ct->title);
    it->image = wb_xdup(ct->image_url);
    join_labels(ct, &it->labels, &it->n_labels);
    it->quote_seq = ev->quote.seq;
    it->quote_excerpt = wb_xdup(ev->quote.excerpt);
    /* Exactly once: a reply id seen at two places is a duplicate. */
    if (from_bot && ev->has_msg_id)
      for (size_t i = 0; i + 1 < w->n_items; i++)
        if (w->items[i].has_id && !memcmp(w->items[i].id, ev->msg_id, PARLEY_MSG_ID_LEN)) {
          wb_note(w, "reply #%llu repeats the message id of #%llu", (unsigned long long)ev->seq,
               (unsigned long long)w->items[i].seq);
          w->dup_reply = true;
        }
  } else {
    it->queue = wb_xdup(ev->action.queue);
    it->note = wb_xdup(ev->action.note);
    it->assignee = wb_xdup(ev->assignee);
    it->locale = wb_xdup(ev->locale);
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
    wb_note(w, "customer send failed: %s%s%s", parley_strerror(r->status), r->message ? ": " : "",
         r->message ? r->message : "");
  }
}

int wb_cust_new(wb *w) {
  parley_client_options co = PARLEY_CLIENT_OPTIONS_INIT;
  co.url = wb_client_url(w);
  co.principal = "customer";
  co.token = w->token;
  co.role = PARLEY_ROLE_CUSTOMER;
  co.locale = w->locale[0] ? w->locale : NULL;
  co.loop = w->loop;
  co.tuning.seed = wb_rnd(w);
  co.cb.on_event = cust_on_event;
  co.cb.on_send_result = cust_on_send_result;
  co.user_data = w;
  int rc = parley_client_new(&co, &w->cust);
  if (rc == 0) rc = parley_client_start(w->cust);
  return rc;
}

/* ---------------------------------------------------------------- agents */

void wb_agent_on_send_result(parley_client *c, const parley_send_result *r, void *send_ud,
                                 void *ud) {
  (void)c, (void)send_ud;
  wb *w = ud;
  if (w->cust_pending) w->cust_pending--;
  if (r->status != 0)
    wb_note(w, "agent action failed: %s%s%s", parley_strerror(r->status), r->message ? ": " : "",
         r->message ? r->message : "");
}

parley_client *wb_agent_get(wb *w, const char *name) {
  for (size_t i = 0; i < w->n_agents; i++)
    if (!strcmp(w->agents[i].name, name)) return w->agents[i].client;
  return NULL;
}

