/* bench_turns_cbot: the echo bot of bench/turns written in C on the public
 * client API, so that bench_turns can tell what the Lua runtime adds.
 *
 *   bench_turns_cbot --url ws://127.0.0.1:PORT/ --token TOKEN [--principal echo]
 *
 * It does per event what the Lua runtime does (lua/src/runtime.c,
 * bindings.c, commit.c) minus the Lua handler: events of one conversation
 * are handled one at a time in seq order; a customer message gets one reply
 * "echo: <text>" with the message id derived from (principal, conversation,
 * seq, ordinal 0) and the assignment's epoch; the event counts as handled
 * once the reply is acknowledged; the bot's own events and events without a
 * reply are handled at once; handled conversations are committed together
 * from a zero-delay timer, at most 256 per Commit frame. It runs until
 * SIGTERM or SIGINT, then stops the client with a short drain.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include <parley/client.h>

#define CB_MAX_CONVS 65536     /* hash table slots; conversations beyond are refused */
#define CB_QUEUE_MAX 512       /* events held per conversation */
#define CB_TEXT_MAX 4096       /* longest reply text */
#define CB_COMMIT_BATCH 256    /* conversations per Commit frame, as the runtime */

typedef struct cb_job {
  uint64_t seq;
  bool reply;
  char *text;
} cb_job;

typedef struct cb_conv {
  char *id;
  uint64_t epoch;
  uint64_t last_seq;    /* newest event queued or handled */
  uint64_t handled_seq; /* everything up to here is handled */
  uint64_t sent_seq;    /* committed up to here (sent) */
  cb_job q[CB_QUEUE_MAX];
  size_t qhead, qlen;
  bool busy;            /* the head's reply is in flight */
  bool ready;           /* on the commit list */
  struct cb_conv *rnext;
} cb_conv;

typedef struct cb_bot {
  uv_loop_t loop;
  parley_client *client;
  const char *principal;
  cb_conv **slots;
  size_t nconvs;
  cb_conv *ready_head;
  uv_timer_t flush;
  bool flush_armed;
  uv_signal_t sig_term, sig_int;
  bool stopping;
  uint64_t replies, commits, failures, dropped_at_stop;
} cb_bot;

static uint64_t fnv(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ULL;
  return h;
}

static cb_conv *conv_get(cb_bot *b, const char *id) {
  size_t i = (size_t)(fnv(id) & (CB_MAX_CONVS - 1));
  for (size_t n = 0; n < CB_MAX_CONVS; n++, i = (i + 1) & (CB_MAX_CONVS - 1)) {
    cb_conv *c = b->slots[i];
    if (!c) break;
    if (strcmp(c->id, id) == 0) return c;
  }
  /* Half full at most, so that probes stay short. */
  if (b->nconvs >= CB_MAX_CONVS / 2 || b->slots[i]) return NULL;
  cb_conv *c = calloc(1, sizeof *c);
  if (!c || !(c->id = strdup(id))) {
    free(c);
    return NULL;
  }
  b->slots[i] = c;
  b->nconvs++;
  return c;
}

static void flush_cb(uv_timer_t *t);

static void commit_ready(cb_bot *b, cb_conv *c) {
  if (c->handled_seq <= c->sent_seq) return;
  if (!c->ready) {
    c->ready = true;
    c->rnext = b->ready_head;
    b->ready_head = c;
  }
  if (!b->flush_armed) {
    b->flush_armed = true;
    uv_timer_start(&b->flush, flush_cb, 0, 0);
  }
}

static void flush_cb(uv_timer_t *t) {
  cb_bot *b = t->data;
  b->flush_armed = false;
  parley_commit items[CB_COMMIT_BATCH];
  cb_conv *convs[CB_COMMIT_BATCH];
  size_t n = 0;
  while (b->ready_head && n < CB_COMMIT_BATCH) {
    cb_conv *c = b->ready_head;
    b->ready_head = c->rnext;
    c->rnext = NULL;
    c->ready = false;
    if (c->handled_seq <= c->sent_seq) continue;
    items[n] = (parley_commit){.conversation = c->id, .epoch = c->epoch,
                               .ack_seq = c->handled_seq};
    convs[n++] = c;
  }
  if (n) {
    int rc = parley_client_commit(b->client, items, n);
    if (rc) {
      /* Not taken: back on the list, tried again shortly. */
      for (size_t i = 0; i < n; i++) {
        convs[i]->ready = true;
        convs[i]->rnext = b->ready_head;
        b->ready_head = convs[i];
      }
      b->flush_armed = true;
      uv_timer_start(&b->flush, flush_cb, 20, 0);
      return;
    }
    b->commits++;
    for (size_t i = 0; i < n; i++) convs[i]->sent_seq = items[i].ack_seq;
  }
  if (b->ready_head && !b->flush_armed) {
    b->flush_armed = true;
    uv_timer_start(&b->flush, flush_cb, 0, 0);
  }
}

/* Handles queued events from the head until one waits for its reply's
 * acknowledgement. */
static void pump(cb_bot *b, cb_conv *c) {
  while (!c->busy && c->qlen > 0) {
    cb_job *j = &c->q[c->qhead];
    if (j->reply) {
      char text[CB_TEXT_MAX];
      snprintf(text, sizeof text, "echo: %s", j->text ? j->text : "");
      parley_content ct = {.kind = PARLEY_CONTENT_TEXT, .text = text};
      uint8_t id[PARLEY_MSG_ID_LEN];
      parley_msg_id_derive(b->principal, c->id, j->seq, 0, id);
      int rc = parley_client_send(b->client, c->id, &ct, NULL, id, c->epoch, c);
      if (rc == 0) {
        c->busy = true;
        return;
      }
      /* Refused (back-pressure or closed): the event stays unhandled and
       * uncommitted, so the gateway delivers it again. */
      b->failures++;
      fprintf(stderr, "cbot: reply in %s not sent: %s\n", c->id, parley_strerror(rc));
    }
    if (j->seq > c->handled_seq) c->handled_seq = j->seq;
    free(j->text);
    j->text = NULL;
    c->qhead = (c->qhead + 1) % CB_QUEUE_MAX;
    c->qlen--;
  }
  commit_ready(b, c);
}

static void on_event(parley_client *pc, const parley_event *ev, void *ud) {
  (void)pc;
  cb_bot *b = ud;
  if (b->stopping || !ev->conversation) return;
  cb_conv *c = conv_get(b, ev->conversation);
  if (!c) {
    fprintf(stderr, "cbot: too many conversations; %s ignored\n", ev->conversation);
    return;
  }
  if (ev->seq <= c->last_seq) return;
  if (c->qlen >= CB_QUEUE_MAX) {
    fprintf(stderr, "cbot: queue of %s full; the event comes again\n", c->id);
    return;
  }
  c->last_seq = ev->seq;
  cb_job *j = &c->q[(c->qhead + c->qlen) % CB_QUEUE_MAX];
  bool own = ev->sender && strcmp(ev->sender, b->principal) == 0;
  j->seq = ev->seq;
  j->reply = !own && ev->kind == PARLEY_EVENT_MESSAGE;
  j->text = NULL;
  if (j->reply) {
    const char *t = ev->content.kind == PARLEY_CONTENT_TEXT ? ev->content.text
                                                            : ev->content.fallback;
    j->text = strdup(t ? t : "");
    if (!j->text) return;
  }
  c->qlen++;
  pump(b, c);
}

static void on_send_result(parley_client *pc, const parley_send_result *r, void *send_ud,
                           void *ud) {
  (void)pc;
  cb_bot *b = ud;
  cb_conv *c = send_ud;
  if (!c || !c->busy || c->qlen == 0) return;
  if (r->status == PARLEY_ESHUTDOWN && b->stopping) {
    b->dropped_at_stop++;
  } else if (r->status) {
    b->failures++;
    fprintf(stderr, "cbot: reply in %s failed: %s\n", c->id, parley_strerror(r->status));
  } else {
    b->replies++;
  }
  /* As the runtime: a failed reply still completes the handler run. */
  cb_job *j = &c->q[c->qhead];
  if (j->seq > c->handled_seq) c->handled_seq = j->seq;
  free(j->text);
  j->text = NULL;
  c->qhead = (c->qhead + 1) % CB_QUEUE_MAX;
  c->qlen--;
  c->busy = false;
  pump(b, c);
}

static void on_commit_result(parley_client *pc, const parley_commit_result *r, void *ud) {
  (void)pc;
  cb_bot *b = ud;
  /* Commits still queued when the client stops are dropped with
   * PARLEY_ESHUTDOWN: the gateway delivers those events again to the next
   * bot, which is what a stop means, not a failure. */
  if (r->status == PARLEY_ESHUTDOWN && b->stopping) {
    b->dropped_at_stop++;
  } else if (r->status) {
    b->failures++;
    fprintf(stderr, "cbot: commit of %s refused: %s\n", r->conversation ? r->conversation : "?",
            parley_strerror(r->status));
  }
}

static void on_assign(parley_client *pc, const parley_assignment *a, void *ud) {
  (void)pc;
  cb_bot *b = ud;
  cb_conv *c = a->conversation ? conv_get(b, a->conversation) : NULL;
  if (!c) return;
  c->epoch = a->epoch;
  if (!c->busy && c->qlen == 0) c->last_seq = c->handled_seq = c->sent_seq = a->acked_seq;
}

static void on_state(parley_client *pc, parley_conn_state st, int status, void *ud) {
  (void)pc;
  cb_bot *b = ud;
  if (st == PARLEY_CONN_READY) {
    printf("cbot ready\n");
    fflush(stdout);
  }
  if (st == PARLEY_CONN_BACKOFF)
    fprintf(stderr, "cbot: connection lost: %s\n", parley_strerror(status));
  if (st == PARLEY_CONN_CLOSED) {
    uv_close((uv_handle_t *)&b->flush, NULL);
    uv_close((uv_handle_t *)&b->sig_term, NULL);
    uv_close((uv_handle_t *)&b->sig_int, NULL);
  }
}

static void on_signal(uv_signal_t *s, int signum) {
  (void)signum;
  cb_bot *b = s->data;
  if (b->stopping) return;
  b->stopping = true;
  uv_timer_stop(&b->flush);
  parley_client_stop(b->client, 1000);
}

int main(int argc, char **argv) {
  const char *url = NULL, *token = NULL, *principal = "echo";
  static const struct option opts[] = {{"url", required_argument, 0, 'u'},
                                       {"token", required_argument, 0, 't'},
                                       {"principal", required_argument, 0, 'p'},
                                       {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (ch) {
    case 'u': url = optarg; break;
    case 't': token = optarg; break;
    case 'p': principal = optarg; break;
    default: goto usage;
    }
  }
  if (!url || !token) goto usage;

  static cb_bot b;
  b.principal = principal;
  b.slots = calloc(CB_MAX_CONVS, sizeof *b.slots);
  if (!b.slots || uv_loop_init(&b.loop) != 0) {
    fprintf(stderr, "cbot: out of memory\n");
    return 1;
  }
  uv_timer_init(&b.loop, &b.flush);
  b.flush.data = &b;
  uv_signal_init(&b.loop, &b.sig_term);
  uv_signal_init(&b.loop, &b.sig_int);
  b.sig_term.data = b.sig_int.data = &b;
  uv_signal_start(&b.sig_term, on_signal, SIGTERM);
  uv_signal_start(&b.sig_int, on_signal, SIGINT);

  parley_client_options o = PARLEY_CLIENT_OPTIONS_INIT;
  o.url = url;
  o.principal = principal;
  o.token = token;
  o.role = PARLEY_ROLE_BOT;
  o.loop = &b.loop;
  o.cb.on_event = on_event;
  o.cb.on_send_result = on_send_result;
  o.cb.on_commit_result = on_commit_result;
  o.cb.on_assign = on_assign;
  o.cb.on_state = on_state;
  o.user_data = &b;
  int rc = parley_client_new(&o, &b.client);
  if (rc == 0) rc = parley_client_start(b.client);
  if (rc) {
    fprintf(stderr, "cbot: cannot start the client: %s\n", parley_strerror(rc));
    return 1;
  }
  uv_run(&b.loop, UV_RUN_DEFAULT);
  parley_client_free(b.client);
  uv_run(&b.loop, UV_RUN_NOWAIT);
  fprintf(stderr, "cbot: %llu replies, %llu commit frames, %llu failures, %llu commits "
          "dropped at stop\n", (unsigned long long)b.replies, (unsigned long long)b.commits,
          (unsigned long long)b.failures, (unsigned long long)b.dropped_at_stop);
  for (size_t i = 0; i < CB_MAX_CONVS; i++) {
    cb_conv *c = b.slots[i];
    if (!c) continue;
    for (size_t k = 0; k < c->qlen; k++) free(c->q[(c->qhead + k) % CB_QUEUE_MAX].text);
    free(c->id);
    free(c);
  }
  free(b.slots);
  uv_loop_close(&b.loop);
  return b.failures ? 1 : 0;

usage:
  fprintf(stderr, "usage: bench_turns_cbot --url ws://HOST:PORT/ --token TOKEN "
                  "[--principal NAME]\n");
  return 2;
}
