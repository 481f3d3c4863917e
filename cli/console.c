/* Customer console; see console.h. Lines come from cli/lines.h. */
#include "console.h"

#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "lines.h"

#define CONSOLE_MAX_CHOICES 16

typedef struct choice {
  char *label;
  char *payload; /* NULL for a link */
  char *url;
} choice;

struct console {
  console_options o;
  char *conversation;
  char *principal;
  parley_client *client;
  cli_lines *lines;
  bool input_done;     /* end of input seen on the loop */
  bool done_reported;
  unsigned pending;    /* sends not yet answered */
  unsigned failures;
  uint64_t last_sent_seq;
  uint64_t last_seen_seq;
  unsigned replies; /* messages of others shown, in any conversation */
  choice choices[CONSOLE_MAX_CHOICES];
  size_t n_choices;
  uint64_t choices_seq;
  bool prompt_shown;
};

static char *xstrdup(const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

static void clear_choices(console *c) {
  for (size_t i = 0; i < c->n_choices; i++) {
    free(c->choices[i].label);
    free(c->choices[i].payload);
    free(c->choices[i].url);
  }
  c->n_choices = 0;
}

static void remember_choices(console *c, const parley_event *ev) {
  const parley_content *ct = &ev->content;
  if (ct->kind != PARLEY_CONTENT_CARD && ct->kind != PARLEY_CONTENT_QUICK_REPLIES) return;
  if (ct->n_buttons == 0) return;
  clear_choices(c);
  for (size_t i = 0; i < ct->n_buttons && i < CONSOLE_MAX_CHOICES; i++) {
    c->choices[i].label = xstrdup(ct->buttons[i].label ? ct->buttons[i].label : "");
    c->choices[i].payload = xstrdup(ct->buttons[i].payload);
    c->choices[i].url = xstrdup(ct->buttons[i].url);
    c->n_choices++;
  }
  c->choices_seq = ev->seq;
}

static void prompt(console *c) {
  if (!c->o.interactive || c->input_done) return;
  fputs(c->o.color ? "\033[1myou>\033[0m " : "you> ", c->o.out);
  fflush(c->o.out);
  c->prompt_shown = true;
}

/* ---------------------------------------------------------------- render */

static const char *event_name(parley_event_kind k) {
  switch (k) {
  case PARLEY_EVENT_OPENED: return "conversation opened";
  case PARLEY_EVENT_ASSIGNED: return "assigned to";
  case PARLEY_EVENT_HANDED_OFF: return "handed off to queue";
  case PARLEY_EVENT_HANDED_BACK: return "handed back to the bot";
  case PARLEY_EVENT_CLOSED: return "conversation closed";
  case PARLEY_EVENT_TAGGED: return "tags";
  case PARLEY_EVENT_STATE_CHANGED: return "state changed";
  case PARLEY_EVENT_LOCALE_CHANGED: return "locale changed to";
  default: return "event";
  }
}

static void render_buttons(FILE *out, const parley_content *ct, const char *indent) {
  for (size_t i = 0; i < ct->n_buttons; i++) {
    const parley_button *b = &ct->buttons[i];
    if (b->url && b->url[0])
      fprintf(out, "%s[%zu] %s <%s>\n", indent, i + 1, b->label ? b->label : "", b->url);
    else
      fprintf(out, "%s[%zu] %s\n", indent, i + 1, b->label ? b->label : "");
  }
}

void console_render_event(FILE *out, const parley_event *ev, const char *self,
                          bool interactive, bool color, const char *prefix) {
  if (!prefix) prefix = "";
  const char *who = ev->sender && ev->sender[0] ? ev->sender : "gateway";
  bool mine = self && ev->sender && !strcmp(self, ev->sender);
  const char *dim = color ? "\033[2m" : "", *bold = color ? "\033[1m" : "",
             *reset = color ? "\033[0m" : "";
  const char *indent = "    ";

  if (ev->kind != PARLEY_EVENT_MESSAGE) {
    /* State changes are the bot's bookkeeping, not part of the chat. */
    if (!interactive || ev->kind == PARLEY_EVENT_STATE_CHANGED) return;
    fprintf(out, "%s%s-- #%llu %s", prefix, dim, (unsigned long long)ev->seq, event_name(ev->kind));
    switch (ev->kind) {
    case PARLEY_EVENT_ASSIGNED:
      fprintf(out, " %s", ev->assignee ? ev->assignee : "?");
      break;
    case PARLEY_EVENT_HANDED_OFF:
      fprintf(out, " %s", ev->action.queue ? ev->action.queue : "?");
      if (ev->action.note && ev->action.note[0]) fprintf(out, " (%s)", ev->action.note);
      break;
    case PARLEY_EVENT_TAGGED:
      /* The tags the conversation has now, then what changed. */
      for (size_t i = 0; i < ev->n_tags; i++) fprintf(out, "%s%s", i ? ", " : ": ", ev->tags[i]);
      if (!ev->n_tags) fputs(": (none)", out);
      for (size_t i = 0; i < ev->action.n_tags_add; i++)
        fprintf(out, "%s+%s", i ? " " : " (", ev->action.tags_add[i]);
      for (size_t i = 0; i < ev->action.n_tags_remove; i++)
        fprintf(out, "%s-%s", i || ev->action.n_tags_add ? " " : " (", ev->action.tags_remove[i]);
      if (ev->action.n_tags_add || ev->action.n_tags_remove) fputc(')', out);
      break;
    case PARLEY_EVENT_LOCALE_CHANGED:
      fprintf(out, " %s", ev->locale ? ev->locale : "?");
      break;
    default:
      break;
    }
    fprintf(out, " --%s\n", reset);
    return;
  }

  const parley_content *ct = &ev->content;
  if (mine && interactive && ct->kind != PARLEY_CONTENT_POSTBACK) return; /* the user typed it */
  if (mine && !interactive) return;
  if (ev->quote.seq)
    fprintf(out, "%s%s> (#%llu) %s%s\n", indent, dim, (unsigned long long)ev->quote.seq,
            ev->quote.excerpt ? ev->quote.excerpt : "", reset);
  switch (ct->kind) {
  case PARLEY_CONTENT_TEXT:
    fprintf(out, "%s%s%s:%s %s\n", prefix, bold, who, reset, ct->text ? ct->text : "");
    break;
  case PARLEY_CONTENT_CARD:
    fprintf(out, "%s%s%s:%s [%s]\n", prefix, bold, who, reset, ct->title ? ct->title : "card");
    if (ct->text && ct->text[0]) fprintf(out, "%s%s\n", indent, ct->text);
    if (ct->image_url && ct->image_url[0]) fprintf(out, "%s(image %s)\n", indent, ct->image_url);
    render_buttons(out, ct, indent);
    break;
  case PARLEY_CONTENT_QUICK_REPLIES:
    fprintf(out, "%s%s%s:%s %s\n", prefix, bold, who, reset, ct->text ? ct->text : "");
    render_buttons(out, ct, indent);
    break;
  case PARLEY_CONTENT_IMAGE:
    fprintf(out, "%s%s%s:%s (image) %s %s\n", prefix, bold, who, reset, ct->text ? ct->text : "",
            ct->image_url ? ct->image_url : "");
    break;
  case PARLEY_CONTENT_POSTBACK:
    fprintf(out, "%s%s%s pressed \"%s\"%s\n", prefix, dim, mine ? "you" : who,
            ct->label && ct->label[0] ? ct->label : (ct->payload ? ct->payload : ""), reset);
    break;
  default:
    fprintf(out, "%s%s%s:%s %s\n", prefix, bold, who, reset, ct->fallback ? ct->fallback : "(message)");
    break;
  }
}

/* ------------------------------------------------------------- callbacks */

static void maybe_done(console *c) {
  if (c->input_done && c->pending == 0 && !c->done_reported) {
    c->done_reported = true;
    if (c->o.on_input_done) c->o.on_input_done(c->o.ud);
  }
}

static void on_event(parley_client *cl, const parley_event *ev, void *ud) {
  console *c = ud;
  (void)cl;
  /* The client acknowledges every event handed to this callback, so each
   * one is shown: an event of another conversation of the same principal
   * (a proactive message, say) too, under its conversation's name. */
  bool here = strcmp(ev->conversation, c->conversation) == 0;
  if (here && ev->seq > c->last_seen_seq) c->last_seen_seq = ev->seq;
  if (c->o.interactive && c->prompt_shown) {
    fputs("\r\033[K", c->o.out);
    c->prompt_shown = false;
  }
  char where[160] = "";
  if (!here) snprintf(where, sizeof where, "[%.120s] ", ev->conversation);
  if (ev->kind == PARLEY_EVENT_MESSAGE && ev->sender && strcmp(ev->sender, c->principal))
    c->replies++;
  console_render_event(c->o.out, ev, c->principal, c->o.interactive, c->o.color, where);
  if (ev->kind == PARLEY_EVENT_MESSAGE && ev->sender && strcmp(ev->sender, c->principal))
    remember_choices(c, ev);
  fflush(c->o.out);
  prompt(c);
}

static void on_send_result(parley_client *cl, const parley_send_result *r,
                           void *send_ud, void *ud) {
  console *c = ud;
  (void)cl;
  (void)send_ud;
  if (c->pending) c->pending--;
  if (r->status == 0) {
    if (r->seq > c->last_sent_seq) c->last_sent_seq = r->seq;
  } else {
    c->failures++;
    fprintf(stderr, "parley: message not delivered: %s%s%s\n", parley_strerror(r->status),
            r->message ? ": " : "", r->message ? r->message : "");
  }
  maybe_done(c);
}

static void on_state(parley_client *cl, parley_conn_state st, int status, void *ud) {
  console *c = ud;
  (void)cl;
  if (!c->o.interactive) return;
  if (st == PARLEY_CONN_BACKOFF)
    fprintf(stderr, "(connection lost: %s; reconnecting)\n", parley_strerror(status));
}

static void on_error(parley_client *cl, int status, const char *message, void *ud) {
  (void)cl;
  (void)ud;
  fprintf(stderr, "parley: gateway error: %s%s%s\n", parley_strerror(status),
          message ? ": " : "", message ? message : "");
}

/* ----------------------------------------------------------------- input */

static void send_line(console *c, char *line) {
  size_t n = strlen(line);
  while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
  char *p = line;
  while (*p == ' ' || *p == '\t') p++;
  if (!*p) {
    prompt(c);
    return;
  }
  if (c->o.interactive && (!strcmp(p, "/quit") || !strcmp(p, "/exit"))) {
    c->input_done = true;
    maybe_done(c);
    return;
  }
  parley_content ct = {0};
  char *end = NULL;
  long pick = strtol(p, &end, 10);
  if (c->n_choices && end && *end == 0 && pick >= 1 && (size_t)pick <= c->n_choices) {
    choice *ch = &c->choices[pick - 1];
    if (!ch->payload) {
      fprintf(c->o.out, "    (link: %s)\n", ch->url ? ch->url : "");
      prompt(c);
      return;
    }
    ct.kind = PARLEY_CONTENT_POSTBACK;
    ct.payload = ch->payload;
    ct.label = ch->label;
    ct.source_seq = c->choices_seq;
  } else {
    ct.kind = PARLEY_CONTENT_TEXT;
    ct.text = p;
  }
  int rc = parley_client_send(c->client, c->conversation, &ct, NULL, NULL, 0, NULL);
  if (rc != 0) {
    c->failures++;
    fprintf(stderr, "parley: cannot send: %s\n", parley_strerror(rc));
  } else {
    c->pending++;
  }
  if (c->o.interactive) prompt(c);
}

static void on_lines(void *ud) {
  console *c = ud;
  for (;;) {
    bool eof = false;
    char *line = cli_lines_take(c->lines, &eof);
    if (!line) {
      if (eof && !c->input_done) {
        c->input_done = true;
        maybe_done(c);
      }
      return;
    }
    if (!c->input_done) send_line(c, line);
    free(line);
  }
}

/* ------------------------------------------------------------------- API */

int console_new(const console_options *o, console **out) {
  console *c = calloc(1, sizeof *c);
  if (!c) return PARLEY_ENOMEM;
  c->o = *o;
  if (!c->o.out) c->o.out = stdout;
  c->principal = xstrdup(o->principal);
  if (o->conversation) {
    c->conversation = xstrdup(o->conversation);
  } else {
    uint8_t id[PARLEY_MSG_ID_LEN];
    char hex[33];
    parley_msg_id_random(id);
    parley_msg_id_hex(id, hex);
    size_t n = strlen("console-") + 13;
    c->conversation = malloc(n);
    if (c->conversation) snprintf(c->conversation, n, "console-%.12s", hex);
  }
  if (!c->principal || !c->conversation) {
    console_free(c);
    return PARLEY_ENOMEM;
  }
  parley_client_options co = PARLEY_CLIENT_OPTIONS_INIT;
  co.url = o->url;
  co.principal = o->principal;
  co.token = o->token;
  co.role = PARLEY_ROLE_CUSTOMER;
  co.locale = o->locale;
  co.loop = o->loop;
  co.tls_insecure = o->tls_insecure;
  co.cb.on_event = on_event;
  co.cb.on_send_result = on_send_result;
  co.cb.on_state = on_state;
  co.cb.on_error = on_error;
  co.user_data = c;
  int rc = parley_client_new(&co, &c->client);
  if (rc) {
    console_free(c);
    return rc;
  }
  *out = c;
  return 0;
}

int console_start(console *c) {
  int rc = parley_client_start(c->client);
  if (rc) return rc;
  if ((rc = cli_lines_start(c->o.loop, on_lines, c, &c->lines)) != 0) return rc;
  if (c->o.interactive) {
    fprintf(c->o.out, "Conversation %s. Type a message; a number presses a button; /quit ends.\n",
            c->conversation);
    prompt(c);
  }
  return 0;
}

void console_stop(console *c) {
  if (!c) return;
  cli_lines_close(c->lines);
  c->lines = NULL;
  if (c->client) parley_client_stop(c->client, 1000);
}

void console_free(console *c) {
  if (!c) return;
  parley_client_free(c->client);
  clear_choices(c);
  cli_lines_close(c->lines); /* when console_stop was not called */
  free(c->conversation);
  free(c->principal);
  free(c);
}

const char *console_conversation(const console *c) { return c->conversation; }
uint64_t console_last_sent_seq(const console *c) { return c->last_sent_seq; }
uint64_t console_last_seen_seq(const console *c) { return c->last_seen_seq; }
unsigned console_failures(const console *c) { return c->failures; }
unsigned console_replies(const console *c) { return c->replies; }
parley_client *console_client(console *c) { return c->client; }
