/* See gwharness.h. */
#define _GNU_SOURCE
#include "gwharness.h"

#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libwebsockets.h>
#include <uv.h>

#include <parley/error.h>

#include "gateway.h"
#include "gw.h"

#define GWH_SECRET "0123456789abcdef0123456789abcdef"

int gwh_customer_token(const char *principal, char out[65]) {
  return pg_customer_token((const uint8_t *)GWH_SECRET, strlen(GWH_SECRET), principal, out);
}

const char *gwh_durability = "normal";

struct gwh {
  pthread_t th;
  uv_loop_t loop;
  uv_async_t stop;
  pg_gateway *g;
  pg_config *cfg;
  int port, rc;
  bool ready;
  pthread_mutex_t mu;
  pthread_cond_t cv;
};

static void on_async_closed(uv_handle_t *h) { (void)h; }

static void on_stopped(void *ud) {
  gwh *h = ud;
  uv_close((uv_handle_t *)&h->stop, on_async_closed);
}

static void on_stop(uv_async_t *a) {
  gwh *h = a->data;
  pg_gateway_stop(h->g, on_stopped, h);
}

static void *run(void *arg) {
  gwh *h = arg;
  uv_loop_init(&h->loop);
  h->rc = pg_gateway_new(&h->loop, h->cfg, &h->g);
  if (h->rc == 0) {
    h->port = pg_gateway_port(h->g);
    uv_async_init(&h->loop, &h->stop, on_stop);
    h->stop.data = h;
  }
  pthread_mutex_lock(&h->mu);
  h->ready = true;
  pthread_cond_signal(&h->cv);
  pthread_mutex_unlock(&h->mu);
  if (h->rc != 0) return NULL;
  uv_run(&h->loop, UV_RUN_DEFAULT);
  pg_gateway_free(h->g);
  uv_run(&h->loop, UV_RUN_NOWAIT);
  uv_loop_close(&h->loop);
  return NULL;
}

gwh *gwh_start(const char *data_dir, const char *limits, const char *extra) {
  static bool quiet;
  if (!quiet) {
    lws_set_log_level(LLL_ERR, NULL);
    quiet = true;
  }
  char yaml[8192];
  /* PARLEY_TEST_PG_URL (set by tests/pg's with_pg wrapper) puts the log on
   * that PostgreSQL server instead, in a schema named after data_dir, so
   * that a restart on the same directory finds its data and every test
   * starts empty. */
  char storage[1024] = "";
  const char *pg_url = getenv("PARLEY_TEST_PG_URL");
  if (pg_url && *pg_url) {
    unsigned long hsh = 5381;
    for (const char *p = data_dir; *p; p++) hsh = hsh * 33 + (unsigned char)*p;
    snprintf(storage, sizeof storage,
             "storage:\n  kind: postgres\n  url: \"%s options='-csearch_path=gwh_%lx'\"\n",
             pg_url, hsh);
  }
  snprintf(yaml, sizeof yaml,
           "listen: 127.0.0.1\n"
           "port: 0\n"
           "data_dir: %s\n"
           "durability: %s\n"
           "bot: faqbot\n"
           "principals:\n"
           "  - {name: faqbot, role: bot, token: bot-token}\n"
           "  - {name: otherbot, role: bot, token: other-token}\n"
           "  - {name: alice, role: agent, token: alice-token, queues: [billing, sales]}\n"
           "  - {name: bob, role: agent, token: bob-token, queues: [sales]}\n"
           "  - {name: carol, role: customer, token: carol-token}\n"
           "customers:\n"
           "  secret: " GWH_SECRET "\n"
           "limits:\n%s\n%s%s",
           data_dir, gwh_durability,
           limits ? limits : "  ack_timeout: 400ms\n  heartbeat: 2s\n  window: 64",
           extra ? extra : "", storage);
  gwh *h = calloc(1, sizeof *h);
  char err[512];
  if (!h || pg_config_from_string("test.yaml", yaml, &h->cfg, err, sizeof err) != 0) {
    fprintf(stderr, "gwh_start: %s\n", err);
    free(h);
    return NULL;
  }
  pthread_mutex_init(&h->mu, NULL);
  pthread_cond_init(&h->cv, NULL);
  pthread_create(&h->th, NULL, run, h);
  pthread_mutex_lock(&h->mu);
  while (!h->ready) pthread_cond_wait(&h->cv, &h->mu);
  pthread_mutex_unlock(&h->mu);
  if (h->rc != 0) {
    pthread_join(h->th, NULL);
    pg_config_free(h->cfg);
    free(h);
    return NULL;
  }
  return h;
}

struct pg_gateway *gwh_gateway(gwh *h) { return h->g; }

int gwh_port(const gwh *h) { return h->port; }

void gwh_stop(gwh *h) {
  if (!h) return;
  uv_async_send(&h->stop);
  pthread_join(h->th, NULL);
  pg_config_free(h->cfg);
  pthread_mutex_destroy(&h->mu);
  pthread_cond_destroy(&h->cv);
  free(h);
}

char *gwh_tmpdir(void) {
  char *d = strdup("/tmp/parley-gw-XXXXXX");
  if (d && !mkdtemp(d)) {
    free(d);
    return NULL;
  }
  return d;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

void gwh_rmdir(char *dir) {
  if (!dir) return;
  nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  free(dir);
}

pw_frame *gwh_wait(wsc *c, Parley__V1__Frame__BodyCase kind, int timeout_ms) {
  pw_frame *f = NULL;
  if (wsc_recv_kind(c, timeout_ms, kind, &f) != 0) return NULL;
  return f;
}

wsc *gwh_login(gwh *h, const char *principal, int role, const char *token, const char *device,
               pw_frame **welcome, int *err_code) {
  char auth[600];
  if (token) snprintf(auth, sizeof auth, "Bearer %s", token);
  if (err_code) *err_code = 0;
  if (welcome) *welcome = NULL;
  wsc *c = wsc_connect("127.0.0.1", h->port, token ? auth : NULL, 3000);
  if (!c) return NULL;
  Parley__V1__Hello he = PARLEY__V1__HELLO__INIT;
  he.min_version = 1;
  he.max_version = 1;
  he.principal = (char *)principal;
  he.role = role;
  he.device = (char *)(device ? device : "d1");
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_HELLO;
  f.hello = &he;
  wsc_send_frame(c, &f);
  pw_frame *r = NULL;
  if (wsc_recv_frame(c, 3000, &r) != 0) {
    wsc_abort(c);
    return NULL;
  }
  if (r->body_case != PARLEY__V1__FRAME__BODY_WELCOME) {
    if (err_code && r->body_case == PARLEY__V1__FRAME__BODY_ERROR) *err_code = (int)r->error->code;
    pw_frame_free(r);
    wsc_abort(c);
    return NULL;
  }
  if (welcome) *welcome = r;
  else pw_frame_free(r);
  return c;
}

void gwh_msgid(uint8_t id[16], uint32_t n) {
  memset(id, 0xA5, 16);
  id[12] = (uint8_t)(n >> 24);
  id[13] = (uint8_t)(n >> 16);
  id[14] = (uint8_t)(n >> 8);
  id[15] = (uint8_t)n;
}

static int send_body(wsc *c, const char *conv, uint32_t id, Parley__V1__Content *content,
                     Parley__V1__Action *action, uint64_t epoch) {
  uint8_t mid[16];
  gwh_msgid(mid, id);
  Parley__V1__Send s = PARLEY__V1__SEND__INIT;
  s.client_msg_id.data = mid;
  s.client_msg_id.len = 16;
  s.conversation = (char *)conv;
  s.epoch = epoch;
  if (content) {
    s.body_case = PARLEY__V1__SEND__BODY_CONTENT;
    s.content = content;
  } else {
    s.body_case = PARLEY__V1__SEND__BODY_ACTION;
    s.action = action;
  }
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_SEND;
  f.send = &s;
  return wsc_send_frame(c, &f);
}

int gwh_send_text(wsc *c, const char *conv, uint32_t id, const char *text, uint64_t epoch) {
  Parley__V1__Text t = PARLEY__V1__TEXT__INIT;
  t.body = (char *)text;
  Parley__V1__Content ct = PARLEY__V1__CONTENT__INIT;
  ct.body_case = PARLEY__V1__CONTENT__BODY_TEXT;
  ct.text = &t;
  return send_body(c, conv, id, &ct, NULL, epoch);
}

int gwh_send_action(wsc *c, const char *conv, uint32_t id, Parley__V1__Action *a,
                    uint64_t epoch) {
  return send_body(c, conv, id, NULL, a, epoch);
}

pw_frame *gwh_wait_ack(wsc *c, uint32_t id, int timeout_ms) {
  uint8_t mid[16];
  gwh_msgid(mid, id);
  for (int i = 0; i < 1000; i++) {
    pw_frame *f = gwh_wait(c, PARLEY__V1__FRAME__BODY_SEND_ACK, timeout_ms);
    if (!f) return NULL;
    if (!memcmp(f->send_ack->client_msg_id.data, mid, 16)) return f;
    pw_frame_free(f);
  }
  return NULL;
}

int gwh_collect(wsc *c, const char *conv, uint64_t upto, int timeout_ms, uint64_t *seqs,
                bool *redelivered, int max) {
  int n = 0;
  for (;;) {
    pw_frame *f = gwh_wait(c, PARLEY__V1__FRAME__BODY_DELIVER, timeout_ms);
    if (!f) return n;
    bool done = false;
    for (size_t i = 0; i < f->deliver->n_events; i++) {
      Parley__V1__Event *ev = f->deliver->events[i];
      if (strcmp(ev->conversation, conv)) continue;
      if (n < max) {
        if (seqs) seqs[n] = ev->seq;
        if (redelivered) redelivered[n] = ev->redelivered;
        n++;
      }
      if (ev->seq >= upto) done = true;
    }
    pw_frame_free(f);
    if (done) return n;
  }
}

int gwh_ack(wsc *c, const char *conv, uint64_t upto) {
  Parley__V1__AckEntry e = PARLEY__V1__ACK_ENTRY__INIT;
  e.conversation = (char *)conv;
  e.up_to_seq = upto;
  Parley__V1__AckEntry *ep = &e;
  Parley__V1__Ack a = PARLEY__V1__ACK__INIT;
  a.entries = &ep;
  a.n_entries = 1;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_ACK;
  f.ack = &a;
  return wsc_send_frame(c, &f);
}

pw_frame *gwh_commit(wsc *bot, const char *conv, uint64_t epoch, uint64_t ack_seq,
                     const char *key, const char *json, const char *tag, uint64_t req) {
  Parley__V1__StateEntry se = PARLEY__V1__STATE_ENTRY__INIT;
  Parley__V1__StateEntry *sep = &se;
  Parley__V1__ConversationCommit it = PARLEY__V1__CONVERSATION_COMMIT__INIT;
  it.conversation = (char *)conv;
  it.epoch = epoch;
  it.ack_seq = ack_seq;
  if (key) {
    se.key = (char *)key;
    se.value.data = (uint8_t *)json;
    se.value.len = strlen(json);
    it.state = &sep;
    it.n_state = 1;
  }
  char *tags[1] = {(char *)tag};
  if (tag) {
    it.tags_add = tags;
    it.n_tags_add = 1;
  }
  Parley__V1__ConversationCommit *itp = &it;
  Parley__V1__Commit cm = PARLEY__V1__COMMIT__INIT;
  cm.request_id = req;
  cm.items = &itp;
  cm.n_items = 1;
  pw_frame fr = PARLEY__V1__FRAME__INIT;
  fr.body_case = PARLEY__V1__FRAME__BODY_COMMIT;
  fr.commit = &cm;
  if (wsc_send_frame(bot, &fr) != 0) return NULL;
  for (int i = 0; i < 100; i++) {
    pw_frame *r = gwh_wait(bot, PARLEY__V1__FRAME__BODY_COMMIT_RESULT, 3000);
    if (!r || r->commit_result->request_id == req) return r;
    pw_frame_free(r);
  }
  return NULL;
}

const char *gwh_fx_limits;

int gwh_fx_setup(void **state) {
  gwh_fx *f = calloc(1, sizeof *f);
  if (!f || !(f->dir = gwh_tmpdir())) {
    free(f);
    return -1;
  }
  f->h = gwh_start(f->dir, gwh_fx_limits, NULL);
  if (!f->h) {
    gwh_rmdir(f->dir);
    free(f);
    return -1;
  }
  *state = f;
  return 0;
}

int gwh_fx_teardown(void **state) {
  gwh_fx *f = *state;
  if (!f) return 0;
  gwh_stop(f->h);
  gwh_rmdir(f->dir);
  free(f);
  return 0;
}
