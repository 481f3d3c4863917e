/* What the sidecar tests share: HTTP calls to a `parley run` ops port with
 * libcurl, and `parley run` child processes that a failed assertion's
 * teardown still kills. */
#ifndef PARLEY_TESTS_SIDECAR_HARNESS_H
#define PARLEY_TESTS_SIDECAR_HARNESS_H

#include <stdbool.h>
#include <stddef.h>

#include "proc.h"

typedef struct hbuf {
  char data[65536];
  size_t len;
} hbuf;

/* GET or POST (body != NULL, with key as its Idempotency-Key) to
 * 127.0.0.1:port; returns the HTTP status, 0 when no answer. */
long http_call(int port, const char *path, const char *body, const char *key, hbuf *out);
/* Whether /readyz on the ops port answered 200 within timeout_ms. */
bool wait_ready(int ops, int timeout_ms);
/* Remembers a started child for kill_children. */
void track(const tproc *p);
/* cmocka teardown: kills and reaps the tracked children still running. */
int kill_children(void **state);
/* Starts `parley run botdir --config <dir>/<name>.yaml [extra...]` and
 * returns its ops port (0 on failure). */
int start_bot(tproc *p, const char *dir, const char *name, const char *botdir,
              const char *config, const char *extra1, const char *extra2);

#endif
