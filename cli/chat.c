/* `parley chat`: a console client against a gateway.
 *
 * --as customer (the default) is the customer console of console.c.
 * --as agent reads commands: /queue, /take <conv>, /reply <text> (or plain
 * text), /quote <seq> <text>, /tag <t>, /untag <t>, /handback [note],
 * /close [reason], /switch <conv>, /quit.
 *
 * Both work with piped input: lines are handled one at a time, the next
 * only once the previous one was answered by the gateway, so a script can
 * take a conversation and reply to it in order. At end of input the
 * console waits until every send is answered and the conversation has been
 * quiet for a moment (so that answers still on their way get printed), and
 * exits 0, or 1 if any send failed.
 */
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include <parley/client.h>

#include "cli.h"
#include "console.h"
#include "lines.h"
#include "util/clock.h"

#define CHAT_MAX_QUEUES 16
#define CHAT_MAX_TAKEN 64
#define CHAT_QUIET_MS 700
#define CHAT_TICK_MS 50
#define CHAT_HISTORY 256   /* recent messages kept for /quote */
#define CHAT_EXCERPT_MAX 280

typedef struct chat_msg {
  char *conversation, *sender, *text;
  uint64_t seq;
} chat_msg;

typedef struct chat {
  uv_loop_t *loop;
  cli_lines *lines; /* agent: commands from stdin */
  uv_timer_t tick;
  uv_signal_t sig_int, sig_term;
  /* agent */
  parley_client *client;
  const char *principal;
  char current[PARLEY_MAX_CONVERSATION_ID + 1];
  char *taken[CHAT_MAX_TAKEN];
  size_t n_taken;
  unsigned pending;     /* sends and queue listings not yet answered */
  unsigned failures;
  bool input_done;
  bool interactive, color;
  chat_msg history[CHAT_HISTORY];
  size_t n_history;
  /* customer */
  console *con;
  /* both */
  uint64_t last_event_ms;
  uint64_t last_seen_seq; /* customer: to notice events */
  uint64_t wait_ms, done_since;
  uint64_t quiet_ms;       /* --quiet: end after this much silence */
  unsigned want_replies;   /* --replies: end after this many replies */
  unsigned replies;        /* agent: messages of others shown */
  uint64_t started_ms;
  bool ever_ready;
  bool stopping;
  int exit_code;
} chat;

static char *xdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

static void on_closed(uv_handle_t *h) { (void)h; }

static void chat_stop(chat *c, int code) {
  if (c->stopping) return;
  c->stopping = true;
  c->exit_code = code;
  uv_timer_stop(&c->tick);
  uv_close((uv_handle_t *)&c->tick, on_closed);
  uv_close((uv_handle_t *)&c->sig_int, on_closed);
  uv_close((uv_handle_t *)&c->sig_term, on_closed);
  cli_lines_close(c->lines);
  c->lines = NULL;
  if (c->con) console_stop(c->con);
  if (c->client) parley_client_stop(c->client, 2000);
}

/* ------------------------------------------------------------------ input */

static void prompt(chat *c) {
  if (!c->interactive || c->input_done) return;
  printf("%s%s>%s ", c->color ? "\033[1m" : "", c->current[0] ? c->current : "agent",
         c->color ? "\033[0m" : "");
  fflush(stdout);
}

static bool is_taken(chat *c, const char *conv) {
  for (size_t i = 0; i < c->n_taken; i++)
    if (!strcmp(c->taken[i], conv)) return true;
  return false;
}

static void remember_taken(chat *c, const char *conv) {
  if (is_taken(c, conv) || c->n_taken >= CHAT_MAX_TAKEN) return;
  c->taken[c->n_taken++] = xdup(conv);
}

/* Sends and actions go to the conversation taken last: false (counted as
 * a failure) when there is none. */
static bool have_conversation(chat *c) {
  if (c->current[0]) return true;
  fprintf(stderr, "parley chat: no conversation: /take one first\n");
  c->failures++;
  return false;
}

/* The outcome of handing a send or an action to the client: pending until
 * the gateway answers, or a failure now. */
static int handed(chat *c, int rc) {
  if (rc) {
    fprintf(stderr, "parley chat: cannot send: %s\n", parley_strerror(rc));
    c->failures++;
    return rc;
  }
  c->pending++;
  return 0;
}

static int do_action(chat *c, parley_action *a) {
  if (!have_conversation(c)) return -1;
  return handed(c, parley_client_action(c->client, c->current, a, NULL, 0, NULL));
}

/* Remembers a message for /quote, in a ring of the most recent ones. */
static void remember_message(chat *c, const parley_event *ev) {
  chat_msg *m = &c->history[c->n_history++ % CHAT_HISTORY];
  free(m->conversation), free(m->sender), free(m->text);
  const char *t = ev->content.text ? ev->content.text : ev->content.fallback;
  m->conversation = xdup(ev->conversation);
  m->sender = xdup(ev->sender ? ev->sender : "");
  m->text = xdup(t ? t : "");
  m->seq = ev->seq;
}

static const chat_msg *find_message(chat *c, const char *conv, uint64_t seq) {
  for (size_t i = 0; i < CHAT_HISTORY && i < c->n_history; i++) {
    const chat_msg *m = &c->history[i];
    if (m->seq == seq && m->conversation && !strcmp(m->conversation, conv)) return m;
  }
  return NULL;
}

static int do_send(chat *c, const char *text, uint64_t quote_seq) {
  if (!have_conversation(c)) return -1;
  parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = text};
  parley_quote q = {.seq = quote_seq};
  /* The excerpt is the quoted message's start, cut on a character
   * boundary, so the reader sees what is answered. */
  char excerpt[CHAT_EXCERPT_MAX + 1];
  const chat_msg *m = quote_seq ? find_message(c, c->current, quote_seq) : NULL;
  if (m) {
    size_t n = strlen(m->text);
    if (n > CHAT_EXCERPT_MAX) {
      n = CHAT_EXCERPT_MAX;
      while (n && ((unsigned char)m->text[n] & 0xC0) == 0x80) n--;
    }
    memcpy(excerpt, m->text, n);
    excerpt[n] = 0;
    q.excerpt = excerpt;
    q.sender = m->sender;
  }
  return handed(c, parley_client_send(c->client, c->current, &ct, quote_seq ? &q : NULL, NULL, 0,
                                      NULL));
}

static void agent_command(chat *c, char *line) {
  size_t n = strlen(line);
  while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
  char *p = line;
  while (*p == ' ' || *p == '\t') p++;
  if (!*p || *p == '#') return;
  if (*p != '/') {
    do_send(c, p, 0);
    return;
  }
  char *cmd = p, *arg = strpbrk(p, " \t");
  if (arg) {
    *arg++ = 0;
    while (*arg == ' ' || *arg == '\t') arg++;
  } else {
    arg = p + strlen(p);
  }
  if (!strcmp(cmd, "/quit") || !strcmp(cmd, "/exit")) {
    c->input_done = true;
  } else if (!strcmp(cmd, "/queue")) {
    int rc = parley_client_queue(c->client, *arg ? arg : NULL);
    if (rc) {
      fprintf(stderr, "parley chat: /queue: %s\n", parley_strerror(rc));
      c->failures++;
    } else {
      c->pending++;
    }
  } else if (!strcmp(cmd, "/take")) {
    if (!*arg) {
      fprintf(stderr, "parley chat: usage: /take <conversation>\n");
      return;
    }
    snprintf(c->current, sizeof c->current, "%s", arg);
    remember_taken(c, arg);
    parley_action a = {.kind = PARLEY_ACTION_TAKE};
    do_action(c, &a);
  } else if (!strcmp(cmd, "/switch")) {
    if (!*arg) {
      fprintf(stderr, "parley chat: usage: /switch <conversation>\n");
      return;
    }
    snprintf(c->current, sizeof c->current, "%s", arg);
    if (c->interactive) printf("(now in %s)\n", c->current);
  } else if (!strcmp(cmd, "/reply")) {
    do_send(c, arg, 0);
  } else if (!strcmp(cmd, "/quote")) {
    char *end = NULL;
    unsigned long long seq = strtoull(arg, &end, 10);
    if (!seq || end == arg) {
      fprintf(stderr, "parley chat: usage: /quote <seq> <text>\n");
      c->failures++;
      return;
    }
    while (*end == ' ') end++;
    do_send(c, end, seq);
  } else if (!strcmp(cmd, "/tag") || !strcmp(cmd, "/untag")) {
    const char *t[1] = {arg};
    parley_action a = {.kind = PARLEY_ACTION_TAG};
    if (cmd[1] == 't') a.tags_add = t, a.n_tags_add = 1;
    else a.tags_remove = t, a.n_tags_remove = 1;
    if (*arg) do_action(c, &a);
  } else if (!strcmp(cmd, "/handback")) {
    parley_action a = {.kind = PARLEY_ACTION_HAND_BACK, .note = *arg ? arg : NULL};
    do_action(c, &a);
  } else if (!strcmp(cmd, "/close")) {
    parley_action a = {.kind = PARLEY_ACTION_CLOSE, .note = *arg ? arg : NULL};
    do_action(c, &a);
  } else {
    fprintf(stderr,
            "parley chat: unknown command %s (/queue, /take, /reply, /quote, /tag, /untag, "
            "/handback, /close, /switch, /quit)\n",
            cmd);
    if (!c->interactive) c->failures++;
  }
}

/* One line at a time: the next waits until the gateway answered. */
static void agent_pump(chat *c) {
  while (!c->input_done && c->pending == 0 &&
         parley_client_state(c->client) == PARLEY_CONN_READY) {
    bool eof = false;
    char *line = c->lines ? cli_lines_take(c->lines, &eof) : NULL;
    if (!line) {
      if (eof) c->input_done = true;
      return;
    }
    agent_command(c, line);
    free(line);
    if (c->pending == 0) prompt(c);
  }
}

static void on_lines(void *ud) {
  chat *c = ud;
  if (c->client) agent_pump(c);
}

/* --------------------------------------------------------------- agent cb */

static void a_on_event(parley_client *cl, const parley_event *ev, void *ud) {
  (void)cl;
  chat *c = ud;
  c->last_event_ms = uv_now(c->loop);
  if (!is_taken(c, ev->conversation)) return;
  if (ev->kind == PARLEY_EVENT_MESSAGE) remember_message(c, ev);
  /* The prefix names the conversation when it is not the current one and
   * the message's seq (what /quote takes), on the sender's line. */
  char prefix[200] = "";
  if (strcmp(ev->conversation, c->current))
    snprintf(prefix, sizeof prefix, "[%.120s] ", ev->conversation);
  if (ev->kind == PARLEY_EVENT_MESSAGE) {
    size_t n = strlen(prefix);
    snprintf(prefix + n, sizeof prefix - n, "#%llu ", (unsigned long long)ev->seq);
    if (ev->sender && strcmp(ev->sender, c->principal)) c->replies++;
  }
  /* Rendered as for a person, so that handoffs and tags show, with the
   * agent's own messages too: the transcript is the conversation as the
   * gateway stored it. */
  console_render_event(stdout, ev, NULL, true, c->color, prefix);
  fflush(stdout);
}

static void a_on_send_result(parley_client *cl, const parley_send_result *r, void *send_ud,
                             void *ud) {
  (void)cl, (void)send_ud;
  chat *c = ud;
  if (c->pending) c->pending--;
  if (r->status) {
    c->failures++;
    fprintf(stderr, "parley chat: refused: %s%s%s\n", parley_strerror(r->status),
            r->message ? ": " : "", r->message ? r->message : "");
  }
  agent_pump(c);
}

static void a_on_queue(parley_client *cl, const parley_queue_item *items, size_t n, bool update,
                       bool removed, void *ud) {
  (void)cl;
  chat *c = ud;
  c->last_event_ms = uv_now(c->loop);
  if (!update) {
    if (c->pending) c->pending--;
    printf("queue: %zu waiting\n", n);
  }
  int64_t now = pu_wall_ms();
  for (size_t i = 0; i < n; i++) {
    const parley_queue_item *q = &items[i];
    printf("%s %s  queue=%s customer=%s locale=%s waiting=%llds%s%s\n",
           update ? (removed ? "-" : "+") : " ", q->conversation, q->queue ? q->queue : "",
           q->customer ? q->customer : "", q->locale ? q->locale : "",
           (long long)(q->since_ms && now > q->since_ms ? (now - q->since_ms) / 1000 : 0),
           q->note && q->note[0] ? "  note: " : "", q->note ? q->note : "");
  }
  fflush(stdout);
  agent_pump(c);
}

static void a_on_state(parley_client *cl, parley_conn_state st, int status, void *ud) {
  (void)cl;
  chat *c = ud;
  if (st == PARLEY_CONN_READY) agent_pump(c);
  if (st == PARLEY_CONN_BACKOFF)
    fprintf(stderr, "parley chat: connection lost (%s); reconnecting\n", parley_strerror(status));
}

static void a_on_error(parley_client *cl, int status, const char *message, void *ud) {
  (void)cl;
  chat *c = ud;
  fprintf(stderr, "parley chat: gateway error: %s%s%s\n", parley_strerror(status),
          message ? ": " : "", message ? message : "");
  if (status == PARLEY_EUNAUTH) chat_stop(c, 1);
}

/* ------------------------------------------------------------- the ends */

static void on_tick(uv_timer_t *t) {
  chat *c = t->data;
  uint64_t now = uv_now(c->loop);
  if (c->con && console_last_seen_seq(c->con) != c->last_seen_seq) {
    c->last_seen_seq = console_last_seen_seq(c->con);
    c->last_event_ms = now;
  }
  parley_client *cl = c->con ? console_client(c->con) : c->client;
  if (cl && parley_client_state(cl) == PARLEY_CONN_READY) c->ever_ready = true;
  /* A refused token or an unreachable gateway would be retried forever:
   * a console that never got in gives up. */
  if (!c->ever_ready && now - c->started_ms > c->wait_ms) {
    fprintf(stderr, "parley chat: could not connect within %llu ms\n",
            (unsigned long long)c->wait_ms);
    chat_stop(c, 1);
    return;
  }
  bool drained = c->con ? c->input_done : (c->input_done && c->pending == 0);
  if (!drained) return;
  if (!c->done_since) c->done_since = now;
  /* Quiet for a moment, or out of patience. */
  int rc = c->failures || (c->con && console_failures(c->con)) ? 1 : 0;
  if (c->want_replies) {
    /* --replies N: done once N messages of others were shown, whatever
     * the pauses between them; out of patience (--wait) is a failure. */
    unsigned seen = c->con ? console_replies(c->con) : c->replies;
    if (seen >= c->want_replies) {
      chat_stop(c, rc);
    } else if (now - c->done_since > c->wait_ms) {
      fprintf(stderr, "parley chat: %u of %u replies after %llu ms\n", seen, c->want_replies,
              (unsigned long long)c->wait_ms);
      chat_stop(c, 1);
    }
    return;
  }
  /* Quiet for a moment (--quiet), or out of patience (--wait). */
  if (now - c->last_event_ms >= c->quiet_ms && now - c->done_since >= c->quiet_ms)
    chat_stop(c, rc);
  else if (now - c->done_since > c->wait_ms)
    chat_stop(c, rc);
}

static void on_customer_done(void *ud) {
  chat *c = ud;
  c->input_done = true;
  c->last_event_ms = uv_now(c->loop);
}

static void on_signal(uv_signal_t *s, int signum) {
  (void)signum;
  chat_stop(s->data, 0);
}

/* --help prints the usage on stdout and succeeds; a usage error prints it
 * on stderr and exits 2. */
static int usage_to(FILE *out) {
  fprintf(out,
          "usage: parley chat --url URL --token TOKEN [options]\n"
          "  --url URL            the gateway; repeat it, or separate URLs by commas,\n"
          "                       for failover nodes\n"
          "  --as customer|agent  who to be (default customer)\n"
          "  --principal NAME     the principal (default: customer, or agent)\n"
          "  --conversation ID    customer: the conversation (default: a new one)\n"
          "  --locale TAG         customer: the locale of a new conversation (default en)\n"
          "  --queue Q            agent: a queue to watch (repeatable; default all)\n"
          "  --wait MS            at end of input, wait at most this long for answers\n"
          "                       (default 5000)\n"
          "  --replies N          at end of input, wait until N messages of others (the\n"
          "                       bot's replies, an agent's) were shown in all, then exit;\n"
          "                       exit 1 if --wait runs out first\n"
          "  --quiet MS           without --replies: exit once nothing arrived for this\n"
          "                       long (default 700)\n"
          "  --insecure           development only: accept any TLS certificate\n"
          "agent commands: /queue, /take <conv>, /reply <text> (or plain text),\n"
          "  /quote <seq> <text>, /tag <t>, /untag <t>, /handback [note], /close [reason],\n"
          "  /switch <conv>, /quit\n"
          "The token may also come from the environment: PARLEY_TOKEN.\n");
  return out == stdout ? 0 : 2;
}

static int usage(void) { return usage_to(stderr); }

/* What `parley chat` was asked for. */
typedef struct chat_args {
  cli_gateway_flags gw; /* --url, --token, --principal, --insecure */
  const char *conversation, *locale;
  const char *queues[CHAT_MAX_QUEUES];
  size_t n_queues;
  bool agent;
  uint64_t wait_ms, quiet_ms;
  unsigned want_replies;
} chat_args;

/* "Go on" from chat_parse; anything else is the exit status. */
enum { CHAT_GO = -1 };

static int chat_parse(int argc, char **argv, chat_args *a) {
  static const struct option opts[] = {
      CLI_GATEWAY_OPTIONS,
      {"as", required_argument, 0, 'a'},        {"conversation", required_argument, 0, 'c'},
      {"locale", required_argument, 0, 'l'},    {"queue", required_argument, 0, 'q'},
      {"wait", required_argument, 0, 'w'},      {"replies", required_argument, 0, 'r'},
      {"quiet", required_argument, 0, 'Q'},     {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  const char *as = "customer";
  a->gw.token = getenv("PARLEY_TOKEN");
  a->locale = "en";
  a->wait_ms = 5000;
  a->quiet_ms = CHAT_QUIET_MS;
  optind = 1;
  int ch;
  while ((ch = getopt_long(argc, argv, "u:t:p:ka:c:l:q:w:r:Q:h", opts, NULL)) != -1) {
    int took = cli_gateway_flag(&a->gw, ch, optarg);
    if (took < 0) return 2;
    if (took) continue;
    switch (ch) {
    case 'a': as = optarg; break;
    case 'c': a->conversation = optarg; break;
    case 'l': a->locale = optarg; break;
    case 'q':
      if (a->n_queues < CHAT_MAX_QUEUES) a->queues[a->n_queues++] = optarg;
      break;
    case 'w': a->wait_ms = strtoull(optarg, NULL, 10); break;
    case 'r': a->want_replies = (unsigned)strtoul(optarg, NULL, 10); break;
    case 'Q': a->quiet_ms = strtoull(optarg, NULL, 10); break;
    case 'h': return usage_to(stdout);
    default: return usage();
    }
  }
  a->agent = !strcmp(as, "agent");
  if ((!a->agent && strcmp(as, "customer")) || !a->gw.url || !a->gw.token) return usage();
  if (!a->gw.principal) a->gw.principal = a->agent ? "agent" : "customer";
  return CHAT_GO;
}

/* The customer console reads stdin itself. */
static int chat_start_customer(chat *c, const chat_args *a) {
  console_options co = {0};
  co.loop = c->loop;
  co.url = a->gw.url;
  co.principal = a->gw.principal;
  co.token = a->gw.token;
  co.conversation = a->conversation;
  co.locale = a->locale;
  co.interactive = c->interactive;
  co.color = c->color;
  co.out = stdout;
  co.tls_insecure = a->gw.insecure;
  co.on_input_done = on_customer_done;
  co.ud = c;
  int rc;
  if ((rc = console_new(&co, &c->con)) != 0 || (rc = console_start(c->con)) != 0) {
    fprintf(stderr, "parley chat: cannot start: %s\n", parley_strerror(rc));
    return 1;
  }
  if (!c->interactive) fprintf(stderr, "conversation %s\n", console_conversation(c->con));
  return 0;
}

/* An agent's client, and its commands from stdin. */
static int chat_start_agent(chat *c, const chat_args *a) {
  parley_client_options co = PARLEY_CLIENT_OPTIONS_INIT;
  co.url = a->gw.url;
  co.principal = a->gw.principal;
  co.token = a->gw.token;
  co.role = PARLEY_ROLE_AGENT;
  co.queues = a->n_queues ? a->queues : NULL;
  co.n_queues = a->n_queues;
  co.loop = c->loop;
  co.tls_insecure = a->gw.insecure;
  co.cb.on_event = a_on_event;
  co.cb.on_send_result = a_on_send_result;
  co.cb.on_queue = a_on_queue;
  co.cb.on_state = a_on_state;
  co.cb.on_error = a_on_error;
  co.user_data = c;
  int rc;
  if ((rc = parley_client_new(&co, &c->client)) != 0 ||
      (rc = parley_client_start(c->client)) != 0) {
    fprintf(stderr, "parley chat: cannot start: %s\n", parley_strerror(rc));
    /* Never started, so there is nothing to stop: chat_stop must not try. */
    parley_client_free(c->client);
    c->client = NULL;
    return 1;
  }
  if ((rc = cli_lines_start(c->loop, on_lines, c, &c->lines)) != 0) {
    fprintf(stderr, "parley chat: cannot read standard input: %s\n", parley_strerror(rc));
    return 1;
  }
  if (c->interactive)
    printf("Agent %s. /queue lists waiting conversations, /take <conv> takes one, /quit ends.\n",
           a->gw.principal);
  prompt(c);
  return 0;
}

/* The loop's handles, then the customer's or the agent's side. 0 or 1. */
static int chat_setup(chat *c, const chat_args *a) {
  c->loop = uv_default_loop();
  c->principal = a->gw.principal;
  c->wait_ms = a->wait_ms;
  c->quiet_ms = a->quiet_ms;
  c->want_replies = a->want_replies;
  c->interactive = isatty(STDIN_FILENO) && isatty(STDOUT_FILENO);
  c->color = c->interactive && getenv("NO_COLOR") == NULL;
  c->last_event_ms = c->started_ms = uv_now(c->loop);
  uv_timer_init(c->loop, &c->tick);
  c->tick.data = c;
  uv_signal_init(c->loop, &c->sig_int);
  uv_signal_init(c->loop, &c->sig_term);
  c->sig_int.data = c->sig_term.data = c;
  uv_signal_start(&c->sig_int, on_signal, SIGINT);
  uv_signal_start(&c->sig_term, on_signal, SIGTERM);
  return a->agent ? chat_start_agent(c, a) : chat_start_customer(c, a);
}

/* Until chat_stop: end of input and answers seen, a signal, or /quit. */
static void chat_run(chat *c) {
  uv_timer_start(&c->tick, on_tick, CHAT_TICK_MS, CHAT_TICK_MS);
  uv_run(c->loop, UV_RUN_DEFAULT);
}

/* After a run, or after chat_stop on a failed set-up: the loop runs until
 * the handles chat_stop closed are closed, then everything is freed. */
static int chat_teardown(chat *c) {
  uv_run(c->loop, UV_RUN_DEFAULT);
  if (c->con) console_free(c->con);
  parley_client_free(c->client);
  for (size_t i = 0; i < c->n_taken; i++) free(c->taken[i]);
  for (size_t i = 0; i < CHAT_HISTORY; i++)
    free(c->history[i].conversation), free(c->history[i].sender), free(c->history[i].text);
  uv_loop_close(c->loop);
  return c->exit_code;
}

int cli_chat(int argc, char **argv) {
  chat_args a = {0};
  int rc = chat_parse(argc, argv, &a);
  if (rc != CHAT_GO) return rc;
  static chat c;
  memset(&c, 0, sizeof c);
  if (chat_setup(&c, &a) == 0) chat_run(&c);
  else chat_stop(&c, 1);
  return chat_teardown(&c);
}
