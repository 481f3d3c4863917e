/* minimal_client: connect to a Parley gateway as a customer, send one
 * message, print what comes back, stop.
 *
 *   minimal_client URL TOKEN [PRINCIPAL] [CONVERSATION] [TEXT]
 *   minimal_client ws://127.0.0.1:8080/v1/ws secret alice conv-1 "hello"
 *
 * It stops after the first message from someone else that follows its own,
 * after its send fails for good, or after five failed connection attempts.
 * Only libparley's public headers are used.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <parley/client.h>

typedef struct app {
  const char *principal;
  const char *conversation;
  const char *text;
  int sent;         /* the message was handed to the client */
  uint64_t own_seq; /* seq the gateway gave our message, 0 until known */
  int failures;     /* connection attempts lost before READY */
  int exit_code;
} app;

static void on_state(parley_client *c, parley_conn_state state, int status,
                     void *ud) {
  app *a = ud;
  static const char *names[] = {"idle",    "connecting", "handshake", "ready",
                                "backoff", "closing",    "closed"};
  printf("state: %s%s%s\n", names[state], status ? " - " : "",
         status ? parley_strerror(status) : "");
  if (state == PARLEY_CONN_READY && !a->sent) {
    /* The message id is drawn at random (NULL); the client resends it with
     * the same id until the gateway acknowledges it. */
    parley_content msg = {.kind = PARLEY_CONTENT_TEXT, .text = a->text};
    int rc = parley_client_send(c, a->conversation, &msg, NULL, NULL, 0, NULL);
    if (rc != 0) {
      fprintf(stderr, "send: %s\n", parley_strerror(rc));
      a->exit_code = 1;
      parley_client_stop(c, 0);
      return;
    }
    a->sent = 1;
  }
  if (state == PARLEY_CONN_READY)
    a->failures = 0;
  if (state == PARLEY_CONN_BACKOFF && ++a->failures >= 5) {
    fprintf(stderr, "giving up after %d attempts\n", a->failures);
    a->exit_code = 1;
    parley_client_stop(c, 0);
  }
}

static void on_send_result(parley_client *c, const parley_send_result *r,
                           void *send_ud, void *ud) {
  app *a = ud;
  (void)send_ud;
  char id[33];
  parley_msg_id_hex(r->msg_id, id);
  if (r->status != 0) {
    fprintf(stderr, "message %s failed: %s%s%s\n", id,
            parley_strerror(r->status), r->message ? ": " : "",
            r->message ? r->message : "");
    a->exit_code = 1;
    parley_client_stop(c, 1000);
    return;
  }
  a->own_seq = r->seq;
  printf("message %s stored as seq %llu after %u attempt(s)%s\n", id,
         (unsigned long long)r->seq, r->attempts,
         r->duplicate ? " (duplicate)" : "");
}

static void on_event(parley_client *c, const parley_event *ev, void *ud) {
  app *a = ud;
  /* Borrowed until this callback returns: print it, keep nothing. */
  if (ev->kind == PARLEY_EVENT_MESSAGE) {
    const char *body = ev->content.text ? ev->content.text : ev->content.fallback;
    printf("[%s #%llu] %s: %s\n", ev->conversation,
           (unsigned long long)ev->seq, ev->sender ? ev->sender : "?",
           body ? body : "(no text)");
  } else {
    printf("[%s #%llu] event %d\n", ev->conversation,
           (unsigned long long)ev->seq, (int)ev->kind);
  }
  /* A reply: a message from someone else after ours. */
  if (ev->kind == PARLEY_EVENT_MESSAGE && a->own_seq && ev->seq > a->own_seq &&
      ev->sender && strcmp(ev->sender, a->principal) != 0)
    parley_client_stop(c, 2000); /* flushes the ACK of this event first */
}

static void on_error(parley_client *c, int status, const char *message,
                     void *ud) {
  (void)c;
  (void)ud;
  fprintf(stderr, "gateway error: %s%s%s\n", parley_strerror(status),
          message ? ": " : "", message ? message : "");
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s URL TOKEN [PRINCIPAL] [CONVERSATION] [TEXT]\n",
            argv[0]);
    return 2;
  }
  app a = {
      .principal = argc > 3 ? argv[3] : "alice",
      .conversation = argc > 4 ? argv[4] : "conv-1",
      .text = argc > 5 ? argv[5] : "hello from minimal_client",
  };
  printf("libparley %s\n", parley_version());

  parley_client_options opts = PARLEY_CLIENT_OPTIONS_INIT;
  opts.url = argv[1];
  opts.token = argv[2];
  opts.principal = a.principal;
  opts.role = PARLEY_ROLE_CUSTOMER;
  opts.locale = "en";
  opts.loop = NULL; /* the client owns its loop: see parley_client_run */
  opts.cb.on_state = on_state;
  opts.cb.on_send_result = on_send_result;
  opts.cb.on_event = on_event;
  opts.cb.on_error = on_error;
  opts.user_data = &a;

  parley_client *c = NULL;
  int rc = parley_client_new(&opts, &c);
  if (rc != 0) {
    fprintf(stderr, "parley_client_new: %s (%s)\n", parley_strerror(rc),
            parley_errname(rc));
    return 2;
  }
  rc = parley_client_start(c);
  if (rc == 0)
    rc = parley_client_run(c); /* returns once the client is CLOSED */
  if (rc != 0) {
    fprintf(stderr, "client: %s\n", parley_strerror(rc));
    a.exit_code = 1;
  }

  parley_client_stats st;
  parley_client_stats_get(c, &st);
  printf("events in: %llu, sends: %llu, reconnects: %llu\n",
         (unsigned long long)st.events_in, (unsigned long long)st.sends,
         (unsigned long long)st.reconnects);
  parley_client_free(c);
  return a.exit_code;
}
