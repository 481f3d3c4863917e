/* `parley test`: what each step does over the wire. The step was parsed by
 * the runtime's spec interpreter (plr_spec_step_parse); here it becomes a
 * customer's or an agent's send or action on the gateway. Some steps only
 * the bot could cause over a real gateway: those skip the case. */
#include "wb.h"

int wb_cust_send(wb *w, const parley_content *ct) {
  int rc = parley_client_send(w->cust, w->conv, ct, NULL, NULL, 0, NULL);
  if (rc == 0) w->cust_pending++;
  return rc;
}

static int agent_action(wb *w, const char *agent, const parley_action *act) {
  parley_client *a = wb_agent_get(w, agent);
  if (!a) return PARLEY_ENOTFOUND;
  int rc = parley_client_action(a, w->conv, act, NULL, 0, NULL);
  if (rc == 0) w->cust_pending++;
  return rc;
}

static bool event_start(wb *w, const plr_spec_step *st, bool *skip, char *why, size_t whylen) {
  int rc = 0;
  const char *kind = st->event_name;
  switch (st->event) {
  case PARLEY_EVENT_ASSIGNED: {
    const char *who = st->assignee ? st->assignee : PLR_SPEC_AGENT;
    rc = agent_action(w, who, &(parley_action){.kind = PARLEY_ACTION_TAKE});
    if (rc == 0) snprintf(w->last_taker, sizeof w->last_taker, "%s", who);
    break;
  }
  case PARLEY_EVENT_HANDED_BACK:
    if (!w->last_taker[0]) {
      /* Only the agent holding a conversation can hand it back. */
      *skip = true;
      return snprintf(why, whylen,
                      "not possible over the gateway: handed_back without an agent having "
                      "taken the conversation (add an `assigned` event first)"),
             false;
    }
    rc = agent_action(w, w->last_taker,
                      &(parley_action){.kind = PARLEY_ACTION_HAND_BACK, .note = st->note});
    if (rc == 0) w->last_taker[0] = '\0';
    break;
  case PARLEY_EVENT_CLOSED: {
    parley_action act = {.kind = PARLEY_ACTION_CLOSE, .note = st->note};
    rc = parley_client_action(w->cust, w->conv, &act, NULL, 0, NULL);
    if (rc == 0) w->cust_pending++;
    break;
  }
  case PARLEY_EVENT_LOCALE_CHANGED: {
    parley_action act = {.kind = PARLEY_ACTION_SET_LOCALE, .locale = st->locale};
    rc = parley_client_action(w->cust, w->conv, &act, NULL, 0, NULL);
    if (rc == 0) w->cust_pending++;
    break;
  }
  default:
    *skip = true;
    return snprintf(why, whylen, "not possible over the gateway: event %s", kind), false;
  }
  if (rc) return snprintf(why, whylen, "event %s: %s", kind, parley_strerror(rc)), false;
  return true;
}

/* An agent holding the conversation writes, quoting an earlier message
 * and tagging the conversation if the step says so. */
static bool agent_start(wb *w, const plr_spec_step *st, char *why, size_t whylen) {
  const char *who = st->agent ? st->agent : w->last_taker;
  if (!w->last_taker[0] || strcmp(who, w->last_taker))
    return snprintf(why, whylen,
                    "agent: only the agent holding the conversation writes in it (take it "
                    "first with `event: {kind: assigned, assignee: ...}`)"),
           false;
  parley_client *a = wb_agent_get(w, who);
  if (!a) return snprintf(why, whylen, "agent: no agent %s", who), false;
  parley_quote q = {0};
  if (st->quote) {
    const plr_spec_item *all[WB_ITEMS_MAX];
    plr_spec_item views[WB_ITEMS_MAX];
    for (size_t i = 0; i < w->n_items; i++) {
      const wb_item *it = &w->items[i];
      views[i] = (plr_spec_item){.seq = it->seq, .kind = it->kind, .text = it->text};
      all[i] = &views[i];
    }
    const plr_spec_item *found = plr_spec_find_quote(all, w->n_items, st->quote);
    if (!found) return snprintf(why, whylen, "agent: no earlier message says \"%s\"", st->quote), false;
    q.seq = found->seq;
    q.excerpt = found->text;
  }
  parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = st->text};
  int rc = parley_client_send(a, w->conv, &ct, q.seq ? &q : NULL, NULL, 0, NULL);
  if (rc) return snprintf(why, whylen, "agent: cannot send: %s", parley_strerror(rc)), false;
  w->cust_pending++;
  if (pc_len(st->tags)) {
    const char *tags[32];
    size_t n = 0;
    for (size_t i = 0; i < pc_len(st->tags) && n < 32; i++)
      if (pc_scalar(pc_at(st->tags, i))) tags[n++] = pc_scalar(pc_at(st->tags, i));
    parley_action act = {.kind = PARLEY_ACTION_TAG, .tags_add = tags, .n_tags_add = n};
    if ((rc = agent_action(w, who, &act)) != 0)
      return snprintf(why, whylen, "agent: cannot tag: %s", parley_strerror(rc)), false;
  }
  return true;
}

bool wb_step_start(wb *w, const plr_spec_step *st, bool *skip, char *why, size_t whylen) {
  parley_content ct = {0};
  switch (st->kind) {
  case PLR_STEP_SEND:
    ct.kind = PARLEY_CONTENT_TEXT;
    ct.text = st->text;
    break;
  case PLR_STEP_POSTBACK:
    ct.kind = PARLEY_CONTENT_POSTBACK;
    ct.payload = st->payload;
    ct.label = st->label;
    /* The seq of the last message with buttons, as a tap would carry. */
    for (size_t i = w->n_items; i-- > 0;)
      if (w->items[i].from_bot && w->items[i].n_labels) {
        ct.source_seq = w->items[i].seq;
        break;
      }
    break;
  case PLR_STEP_OPEN:
    /* A conversation opens with a message: the open step sends one (the
     * step's `text`, "hi" by default) and looks only at what the bot did
     * for the opening events, not at its answer to that message. */
    if (w->cust_last_seq)
      return snprintf(why, whylen, "open: the conversation is already open"), false;
    ct.kind = PARLEY_CONTENT_TEXT;
    ct.text = st->text;
    break;
  case PLR_STEP_WAIT:
    w->clock_offset += (int64_t)st->wait_ms;
    if (w->bot && w->bot->rt) plr_rt_fire_due(w->bot->rt);
    return true;
  case PLR_STEP_EVENT: return event_start(w, st, skip, why, whylen);
  case PLR_STEP_AGENT: return agent_start(w, st, why, whylen);
  }
  int rc = wb_cust_send(w, &ct);
  if (rc) return snprintf(why, whylen, "cannot send: %s", parley_strerror(rc)), false;
  return true;
}

const char *wb_step_title(const pc_node *st, char *buf, size_t size) {
  static const char *kinds[] = {"send", "postback", "open", "wait", "event", "agent", NULL};
  for (int i = 0; kinds[i]; i++) {
    const pc_node *n = pc_get(st, kinds[i]);
    if (!n) continue;
    char f[512] = "";
    plr_spec_flow(n, f, sizeof f);
    snprintf(buf, size, "%s: %s", kinds[i], f);
    return buf;
  }
  snprintf(buf, size, "?");
  return buf;
}
