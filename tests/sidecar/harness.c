/* See harness.h. */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>

static size_t hbuf_write(char *p, size_t size, size_t n, void *ud) {
  hbuf *b = ud;
  size_t k = size * n;
  size_t room = sizeof b->data - 1 - b->len;
  size_t c = k < room ? k : room;
  memcpy(b->data + b->len, p, c);
  b->len += c;
  b->data[b->len] = 0;
  return k;
}

/* GET or POST (body != NULL) to 127.0.0.1:port; returns the HTTP status,
 * 0 when no answer. */
long http_call(int port, const char *path, const char *body, const char *key, hbuf *out) {
  char url[256];
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
  out->len = 0;
  out->data[0] = 0;
  CURL *c = curl_easy_init();
  if (!c) return 0;
  struct curl_slist *hs = NULL;
  char keyh[300];
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, hbuf_write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 15000L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  if (body) {
    hs = curl_slist_append(hs, "Content-Type: application/json");
    if (key) {
      snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", key);
      hs = curl_slist_append(hs, keyh);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hs);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
  }
  long status = 0;
  if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(hs);
  curl_easy_cleanup(c);
  return status;
}

bool wait_ready(int ops, int timeout_ms) {
  hbuf b;
  for (int waited = 0; waited < timeout_ms; waited += 100) {
    if (http_call(ops, "/readyz", NULL, NULL, &b) == 200) return true;
    usleep(100 * 1000);
  }
  return false;
}

/* Every child started, so that a failed assertion (which leaves its test
 * early) does not leave processes behind: the teardown kills those that
 * are still unreaped children of this process. */
static pid_t children[32];
static int n_children;

void track(const tproc *p) {
  if (p->pid > 0 && n_children < (int)(sizeof children / sizeof children[0])) children[n_children++] = p->pid;
}

int kill_children(void **state) {
  (void)state;
  for (int i = 0; i < n_children; i++) {
    int st;
    if (waitpid(children[i], &st, WNOHANG) == 0) {
      kill(children[i], SIGKILL);
      waitpid(children[i], &st, 0);
    }
  }
  n_children = 0;
  return 0;
}

/* Starts `parley run botdir --config <dir>/<name>.yaml [extra...]` and
 * returns its ops port (0 on failure). */
int start_bot(tproc *p, const char *dir, const char *name, const char *botdir,
                     const char *config, const char *extra1, const char *extra2) {
  char cfg[512], log[512];
  snprintf(cfg, sizeof cfg, "%s/%s.yaml", dir, name);
  snprintf(log, sizeof log, "%s/%s.log", dir, name);
  if (write_file(cfg, config) != 0) return 0;
  memset(p, 0, sizeof *p);
  char *argv[] = {(char *)PARLEY_BIN, "run", (char *)botdir, "--config", cfg,
                  (char *)extra1, (char *)extra2, NULL};
  if (tproc_start(p, argv, log) != 0) return 0;
  track(p);
  char line[512];
  if (!tproc_wait_for(p, "ops listening on", line, sizeof line, 15000)) return 0;
  const char *colon = strrchr(line, ':');
  return colon ? atoi(colon + 1) : 0;
}
