/* Lines from standard input; see lines.h. */
#include "lines.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>

#include <parley/error.h>

typedef struct line_node {
  struct line_node *next;
  char *text;
} line_node;

struct cli_lines {
  uv_async_t wake;
  void (*on_wake)(void *ud);
  void *ud;
  pthread_mutex_t mu;
  line_node *head, *tail;
  size_t queued;
  bool eof;           /* the reader saw the end of input */
  bool closed;        /* cli_lines_close was called: no more wakes */
  bool reader_done;   /* the reader thread is gone */
  bool handle_closed; /* the uv_async handle finished closing */
};

static void free_state(cli_lines *l) {
  while (l->head) {
    line_node *n = l->head;
    l->head = n->next;
    free(n->text);
    free(n);
  }
  pthread_mutex_destroy(&l->mu);
  free(l);
}

static void on_async(uv_async_t *h) {
  cli_lines *l = h->data;
  if (!l->closed && l->on_wake) l->on_wake(l->ud);
}

/* Called with l->mu held. The wake is sent under the lock so it cannot
 * race with cli_lines_close closing the handle. */
static void wake_locked(cli_lines *l) {
  if (!l->closed) uv_async_send(&l->wake);
}

static void push(cli_lines *l, char *text) {
  line_node *n = calloc(1, sizeof *n);
  if (!n) {
    free(text);
    return;
  }
  n->text = text;
  pthread_mutex_lock(&l->mu);
  if (l->tail)
    l->tail->next = n;
  else
    l->head = n;
  l->tail = n;
  l->queued++;
  wake_locked(l);
  pthread_mutex_unlock(&l->mu);
}

static void *reader_main(void *arg) {
  cli_lines *l = arg;
  char *buf = NULL;
  size_t cap = 0;
  ssize_t n;
  while ((n = getline(&buf, &cap, stdin)) >= 0) {
    if (n > CLI_LINES_MAX_LINE) buf[CLI_LINES_MAX_LINE] = 0;
    size_t len = strlen(buf);
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) buf[--len] = 0;
    for (;;) {
      pthread_mutex_lock(&l->mu);
      bool wait = l->queued >= CLI_LINES_MAX_QUEUED && !l->closed;
      bool stop = l->closed;
      pthread_mutex_unlock(&l->mu);
      if (stop) goto out;
      if (!wait) break;
      struct timespec ts = {0, 10 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
    char *copy = malloc(len + 1);
    if (copy) {
      memcpy(copy, buf, len + 1);
      push(l, copy);
    }
  }
out:
  free(buf);
  pthread_mutex_lock(&l->mu);
  l->eof = true;
  l->reader_done = true;
  wake_locked(l);
  bool last = l->handle_closed;
  pthread_mutex_unlock(&l->mu);
  if (last) free_state(l);
  return NULL;
}

int cli_lines_start(uv_loop_t *loop, void (*wake)(void *ud), void *ud, cli_lines **out) {
  cli_lines *l = calloc(1, sizeof *l);
  if (!l) return PARLEY_ENOMEM;
  l->on_wake = wake;
  l->ud = ud;
  pthread_mutex_init(&l->mu, NULL);
  if (uv_async_init(loop, &l->wake, on_async) != 0) {
    pthread_mutex_destroy(&l->mu);
    free(l);
    return PARLEY_EIO;
  }
  l->wake.data = l;
  pthread_t th;
  if (pthread_create(&th, NULL, reader_main, l) != 0) {
    /* No reader: the handle's close frees the state. */
    l->reader_done = true;
    cli_lines_close(l);
    return PARLEY_EIO;
  }
  pthread_detach(th);
  *out = l;
  return 0;
}

char *cli_lines_take(cli_lines *l, bool *eof) {
  pthread_mutex_lock(&l->mu);
  line_node *n = l->head;
  if (n) {
    l->head = n->next;
    if (!l->head) l->tail = NULL;
    l->queued--;
  }
  *eof = !n && l->eof;
  pthread_mutex_unlock(&l->mu);
  if (!n) return NULL;
  char *text = n->text;
  free(n);
  return text;
}

static void on_handle_closed(uv_handle_t *h) {
  cli_lines *l = h->data;
  pthread_mutex_lock(&l->mu);
  l->handle_closed = true;
  bool last = l->reader_done;
  pthread_mutex_unlock(&l->mu);
  if (last) free_state(l);
}

void cli_lines_close(cli_lines *l) {
  if (!l) return;
  pthread_mutex_lock(&l->mu);
  bool already = l->closed;
  l->closed = true;
  pthread_mutex_unlock(&l->mu);
  if (!already) uv_close((uv_handle_t *)&l->wake, on_handle_closed);
}
