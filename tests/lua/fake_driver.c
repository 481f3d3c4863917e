/* The recording fake driver; see fake_driver.h. */
#define _XOPEN_SOURCE 700
#include "fake_driver.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void cpy(char *dst, size_t size, const char *src) {
  snprintf(dst, size, "%s", src ? src : "");
}

static int fd_send_cb(void *ud, const char *conv, const parley_content *c, const parley_quote *q,
                      const uint8_t id[PARLEY_MSG_ID_LEN], uint64_t epoch, void *send_ud) {
  fd *f = ud;
  if (f->nsends >= FD_MAX) return PARLEY_EBACKPRESSURE;
  fd_send *s = &f->sends[f->nsends++];
  memset(s, 0, sizeof *s);
  cpy(s->conv, sizeof s->conv, conv);
  s->kind = (int)c->kind;
  cpy(s->text, sizeof s->text, c->text);
  cpy(s->fallback, sizeof s->fallback, c->fallback);
  cpy(s->title, sizeof s->title, c->title);
  for (size_t i = 0; i < c->n_buttons; i++) {
    size_t len = strlen(s->buttons);
    snprintf(s->buttons + len, sizeof s->buttons - len, "%s|%s|%s;", c->buttons[i].label,
             c->buttons[i].payload ? c->buttons[i].payload : "",
             c->buttons[i].url ? c->buttons[i].url : "");
  }
  if (q) {
    s->quote_seq = q->seq;
    cpy(s->quote_excerpt, sizeof s->quote_excerpt, q->excerpt);
    cpy(s->quote_sender, sizeof s->quote_sender, q->sender);
  }
  memcpy(s->msg_id, id, PARLEY_MSG_ID_LEN);
  s->epoch = epoch;
  s->send_ud = send_ud;
  return 0;
}

static int fd_action_cb(void *ud, const char *conv, const parley_action *a,
                        const uint8_t id[PARLEY_MSG_ID_LEN], uint64_t epoch, void *send_ud) {
  fd *f = ud;
  if (f->nsends >= FD_MAX) return PARLEY_EBACKPRESSURE;
  fd_send *s = &f->sends[f->nsends++];
  memset(s, 0, sizeof *s);
  cpy(s->conv, sizeof s->conv, conv);
  s->kind = 100 + (int)a->kind;
  cpy(s->queue, sizeof s->queue, a->queue);
  cpy(s->note, sizeof s->note, a->note);
  cpy(s->locale, sizeof s->locale, a->locale);
  memcpy(s->msg_id, id, PARLEY_MSG_ID_LEN);
  s->epoch = epoch;
  s->send_ud = send_ud;
  return 0;
}

static int entry_cmp(const void *a, const void *b) {
  const parley_state_entry *x = *(const parley_state_entry *const *)a;
  const parley_state_entry *y = *(const parley_state_entry *const *)b;
  return strcmp(x->key, y->key);
}

static int fd_commit_cb(void *ud, const parley_commit *cs, size_t n) {
  fd *f = ud;
  if (f->commit_fail > 0) {
    f->commit_fail--;
    return PARLEY_EDISCONNECTED;
  }
  f->ncommit_calls++;
  for (size_t i = 0; i < n && f->ncommits < FD_MAX; i++) {
    fd_commit *c = &f->commits[f->ncommits++];
    memset(c, 0, sizeof *c);
    cpy(c->conv, sizeof c->conv, cs[i].conversation);
    c->epoch = cs[i].epoch;
    c->ack_seq = cs[i].ack_seq;
    /* Keys in order, so that tests do not depend on Lua's table order. */
    const parley_state_entry *sorted[64];
    size_t ns = cs[i].n_state < 64 ? cs[i].n_state : 64;
    for (size_t k = 0; k < ns; k++) sorted[k] = &cs[i].state[k];
    qsort(sorted, ns, sizeof *sorted, entry_cmp);
    for (size_t k = 0; k < ns; k++) {
      size_t len = strlen(c->state);
      const parley_state_entry *e = sorted[k];
      snprintf(c->state + len, sizeof c->state - len, "%s=%.*s;", e->key,
               e->deleted ? 9 : (int)e->value_len, e->deleted ? "<deleted>" : e->value);
    }
    for (size_t k = 0; k < cs[i].n_tags_add; k++) {
      size_t len = strlen(c->tags);
      snprintf(c->tags + len, sizeof c->tags - len, "+%s ", cs[i].tags_add[k]);
    }
    for (size_t k = 0; k < cs[i].n_tags_remove; k++) {
      size_t len = strlen(c->tags);
      snprintf(c->tags + len, sizeof c->tags - len, "-%s ", cs[i].tags_remove[k]);
    }
  }
  return 0;
}

static int fd_http_cb(void *ud, const plr_http_req *req, plr_http_done done, void *cb_ud,
                      void **handle) {
  fd *f = ud;
  if (f->nhttp >= 16) return PARLEY_EBACKPRESSURE;
  fd_http *h = &f->http[f->nhttp++];
  memset(h, 0, sizeof *h);
  cpy(h->url, sizeof h->url, req->url);
  cpy(h->method, sizeof h->method, req->method);
  if (req->body) snprintf(h->body, sizeof h->body, "%.*s", (int)req->body_len, req->body);
  for (size_t i = 0; i < req->n_headers; i++) {
    size_t len = strlen(h->headers);
    snprintf(h->headers + len, sizeof h->headers - len, "%s\n", req->headers[i]);
  }
  h->timeout_ms = req->timeout_ms;
  h->done = done;
  h->cb_ud = cb_ud;
  *handle = h;
  return 0;
}

static void fd_http_cancel_cb(void *ud, void *handle) {
  (void)ud;
  fd_http *h = handle;
  h->cancelled = true;
}

static int64_t fd_now(void *ud) {
  fd *f = ud;
  return f->now;
}

void fd_http_complete(fd *f, size_t i, int status, const char *body) {
  fd_http *h = &f->http[i];
  if (h->completed || h->cancelled) return;
  h->completed = true;
  const char *hdrs[] = {"Content-Type: application/json"};
  plr_http_resp resp = {.status = status,
                        .body = body,
                        .body_len = body ? strlen(body) : 0,
                        .headers = hdrs,
                        .n_headers = 1,
                        .error = status ? NULL : "connection refused"};
  h->done(h->cb_ud, &resp);
}

static char bot_dir_buf[256];

const char *fd_bot_dir(const char *const *files) {
  snprintf(bot_dir_buf, sizeof bot_dir_buf, "/tmp/parley-lua-test-XXXXXX");
  if (!mkdtemp(bot_dir_buf)) return NULL;
  for (size_t i = 0; files[i]; i += 2) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", bot_dir_buf, files[i]);
    char *slash = strrchr(path, '/');
    if (slash && strchr(files[i], '/')) {
      *slash = '\0';
      mkdir(path, 0700);
      *slash = '/';
    }
    FILE *fp = fopen(path, "w");
    if (!fp) return NULL;
    fputs(files[i + 1], fp);
    fclose(fp);
  }
  return bot_dir_buf;
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(p);
}

void fd_rm_rf(const char *dir) {
  if (dir && strncmp(dir, "/tmp/parley-lua-test-", 21) == 0)
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int log_format;
void fd_set_log_format(int format) { log_format = format; }

int fd_open(fd *f, const char *dir, char *err, size_t errlen) {
  memset(f, 0, sizeof *f);
  uv_loop_init(&f->loop);
  f->now = 1700000000000;
  f->logf = fmemopen(f->log, sizeof f->log - 1, "w");
  parley_runtime_options o = {.loop = &f->loop, .bot_dir = dir, .log_out = f->logf, .log_level = PARLEY_LOG_DEBUG,
                   .log_format = log_format};
  plr_driver d = {.send = fd_send_cb,
                  .action = fd_action_cb,
                  .commit = fd_commit_cb,
                  .http = fd_http_cb,
                  .http_cancel = fd_http_cancel_cb,
                  .now_ms = fd_now,
                  .ud = f};
  int rc = plr_runtime_new_driver(&o, &d, &f->r, err, errlen);
  if (rc) {
    uv_loop_close(&f->loop);
    fclose(f->logf);
    f->logf = NULL;
  }
  return rc;
}

void fd_close(fd *f) {
  parley_runtime_free(f->r);
  f->r = NULL;
  uv_run(&f->loop, UV_RUN_DEFAULT);
  uv_loop_close(&f->loop);
  if (f->logf) fclose(f->logf);
  f->logf = NULL;
}

void fd_assign_state(fd *f, const char *conv, const char *locale, uint64_t epoch,
                     uint64_t acked, const parley_state_entry *st, size_t n) {
  parley_assignment a = {.conversation = conv,
                         .epoch = epoch,
                         .state = st,
                         .n_state = n,
                         .acked_seq = acked,
                         .locale = locale,
                         .customer = "cust"};
  plr_rt_on_assign(f->r, &a);
}

void fd_assign(fd *f, const char *conv, const char *locale) {
  fd_assign_state(f, conv, locale, 1, 0, NULL, 0);
}

void fd_event(fd *f, const parley_event *ev) { plr_rt_on_event(f->r, ev); }

void fd_message(fd *f, const char *conv, uint64_t seq, const char *text) {
  parley_event ev = {.kind = PARLEY_EVENT_MESSAGE,
                     .conversation = conv,
                     .seq = seq,
                     .sender = "cust",
                     .sender_role = PARLEY_ROLE_CUSTOMER,
                     .content = {.kind = PARLEY_CONTENT_TEXT, .text = text}};
  plr_rt_on_event(f->r, &ev);
}

void fd_pump(fd *f) {
  for (int round = 0; round < 1000; round++) {
    bool moved = false;
    for (size_t i = 0; i < f->nsends; i++) {
      fd_send *s = &f->sends[i];
      if (s->answered) continue;
      s->answered = true;
      moved = true;
      parley_send_result res = {.conversation = s->conv, .status = f->send_status, .seq = 1000 + i};
      memcpy(res.msg_id, s->msg_id, PARLEY_MSG_ID_LEN);
      plr_rt_on_send_result(f->r, &res, s->send_ud);
    }
    for (size_t i = 0; i < f->ncommits; i++) {
      fd_commit *c = &f->commits[i];
      if (c->answered || f->hold_commits) continue;
      c->answered = true;
      moved = true;
      parley_commit_result res = {.conversation = c->conv, .ack_seq = c->ack_seq};
      plr_rt_on_commit_result(f->r, &res);
    }
    size_t ns = f->nsends, nc = f->ncommits;
    uv_run(&f->loop, UV_RUN_NOWAIT);
    if (f->nsends != ns || f->ncommits != nc) moved = true;
    /* Nothing moved: only handlers waiting on HTTP or armed timers remain. */
    if (!moved) return;
  }
}

const fd_send *fd_last_send(const fd *f, const char *conv) {
  for (size_t i = f->nsends; i > 0; i--)
    if (strcmp(f->sends[i - 1].conv, conv) == 0) return &f->sends[i - 1];
  return NULL;
}

const fd_commit *fd_last_commit(const fd *f, const char *conv) {
  for (size_t i = f->ncommits; i > 0; i--)
    if (strcmp(f->commits[i - 1].conv, conv) == 0) return &f->commits[i - 1];
  return NULL;
}

size_t fd_count_sends(const fd *f, const char *conv) {
  size_t n = 0;
  for (size_t i = 0; i < f->nsends; i++) n += strcmp(f->sends[i].conv, conv) == 0;
  return n;
}
