/* The backend-independent half of the storage interface (store.h): the
 * batch builder, which coalesces rows so that each is written once per
 * transaction; the choice of backend; and the completion queue that brings
 * a backend's answers back to the loop thread in submission order. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include <parley/error.h>

#include "map.h"
#include "store/store.h"

struct pg_store_batch {
  pg_store_event *events;
  size_t n_events, cap_events;
  pg_store_conv_rec *convs;
  size_t n_convs, cap_convs;
  pg_store_state_rec *state;
  size_t n_state, cap_state;
  pg_store_wm_rec *wms;
  size_t n_wms, cap_wms;
  /* Index + 1 of each coalesced row, by its key. */
  gw_map conv_ix, state_ix, wm_ix;
  size_t bytes;
  /* Set at submit. */
  uint64_t gen;
  pg_store_done_fn done;
  void *ud;
  int status;
  char why[200];
  struct pg_store_batch *next;
};

struct pg_store {
  const pg_store_backend *be;
  void *impl;
  uv_loop_t *loop;
  uv_async_t async;
  bool async_open;
  pthread_mutex_t mu;
  /* Under mu: batches a backend finished, waiting for their callbacks. */
  pg_store_batch *done_head, *done_tail;
  uint64_t failed_gen; /* highest generation in which a batch failed */
  pg_store_stats stats;
  /* Loop thread only. */
  size_t pending;
  uint64_t gen;
  bool closing;
  void (*closed)(void *);
  void *closed_ud;
  /* pg_store_set_loop_polls: completions on loop_thread skip the async. */
  bool loop_polls;
  pthread_t loop_thread;
};

static const pg_store_backend *const backends[] = {&pg_store_sqlite,
#ifdef PARLEY_HAVE_POSTGRES
                                                   &pg_store_postgres,
                                                   &pg_store_postgres_shards,
#endif
                                                   NULL};

/* ----------------------------------------------------------- conv rows */

void pg_store_conv_clear(pg_store_conv *c) {
  if (c->packed) {
    free(c->id);
    memset(c, 0, sizeof *c);
    return;
  }
  free(c->id);
  free(c->customer);
  free(c->assignee);
  free(c->bot);
  free(c->locale);
  free(c->queue);
  free(c->note);
  free(c->tags);
  memset(c, 0, sizeof *c);
}

static char *dup0(const char *s) { return strdup(s ? s : ""); }

int pg_store_conv_copy(pg_store_conv *dst, const pg_store_conv *src) {
  *dst = *src;
  dst->packed = false;
  dst->id = dup0(src->id);
  dst->customer = dup0(src->customer);
  dst->assignee = dup0(src->assignee);
  dst->bot = dup0(src->bot);
  dst->locale = dup0(src->locale);
  dst->queue = dup0(src->queue);
  dst->note = dup0(src->note);
  dst->tags = dup0(src->tags);
  if (!dst->id || !dst->customer || !dst->assignee || !dst->bot || !dst->locale ||
      !dst->queue || !dst->note || !dst->tags) {
    pg_store_conv_clear(dst);
    return PARLEY_ENOMEM;
  }
  return 0;
}

int pg_store_conv_pack(pg_store_conv *dst, const pg_store_conv *src) {
  const char *in[8] = {src->id,     src->customer, src->assignee, src->bot,
                       src->locale, src->queue,    src->note,     src->tags};
  size_t len[8], total = 0;
  for (int i = 0; i < 8; i++) {
    if (!in[i]) in[i] = "";
    len[i] = strlen(in[i]) + 1;
    total += len[i];
  }
  char *p = malloc(total);
  if (!p) {
    memset(dst, 0, sizeof *dst);
    return PARLEY_ENOMEM;
  }
  *dst = *src;
  dst->packed = true;
  char **out[8] = {&dst->id,     &dst->customer, &dst->assignee, &dst->bot,
                   &dst->locale, &dst->queue,    &dst->note,     &dst->tags};
  for (int i = 0; i < 8; i++) {
    *out[i] = memcpy(p, in[i], len[i]);
    p += len[i];
  }
  return 0;
}

/* -------------------------------------------------------------- batches */

pg_store_batch *pg_store_batch_new(void) { return calloc(1, sizeof(pg_store_batch)); }

void pg_store_batch_free(pg_store_batch *b) {
  if (!b) return;
  /* Each event's strings and blob live in one allocation at conv. */
  for (size_t i = 0; i < b->n_events; i++) free((void *)b->events[i].conv);
  free(b->events);
  for (size_t i = 0; i < b->n_convs; i++) pg_store_conv_clear(&b->convs[i].c);
  free(b->convs);
  for (size_t i = 0; i < b->n_state; i++) {
    free(b->state[i].conv);
    free(b->state[i].val);
  }
  free(b->state);
  for (size_t i = 0; i < b->n_wms; i++) free(b->wms[i].principal);
  free(b->wms);
  gw_map_clear(&b->conv_ix);
  gw_map_clear(&b->state_ix);
  gw_map_clear(&b->wm_ix);
  free(b);
}

bool pg_store_batch_empty(const pg_store_batch *b) {
  return !b->n_events && !b->n_convs && !b->n_state && !b->n_wms;
}

/* Grows an array of `size`-byte items to hold one more. */
static int grow(void **arr, size_t *cap, size_t n, size_t size) {
  if (n < *cap) return 0;
  size_t nc = *cap ? *cap * 2 : 16;
  void *t = realloc(*arr, nc * size);
  if (!t) return PARLEY_ENOMEM;
  *arr = t;
  *cap = nc;
  return 0;
}

int pg_store_batch_event(pg_store_batch *b, const pg_store_event *ev) {
  if (grow((void **)&b->events, &b->cap_events, b->n_events, sizeof *b->events))
    return PARLEY_ENOMEM;
  size_t lc = strlen(ev->conv) + 1, ls = ev->sender ? strlen(ev->sender) + 1 : 1;
  char *mem = malloc(lc + ls + ev->len + 1);
  if (!mem) return PARLEY_ENOMEM;
  pg_store_event *e = &b->events[b->n_events++];
  *e = *ev;
  memcpy(mem, ev->conv, lc);
  memcpy(mem + lc, ev->sender ? ev->sender : "", ls);
  if (ev->len) memcpy(mem + lc + ls, ev->blob, ev->len);
  e->conv = mem;
  e->sender = mem + lc;
  e->blob = (const uint8_t *)mem + lc + ls;
  b->bytes += ev->len;
  return 0;
}

int pg_store_batch_conv(pg_store_batch *b, const pg_store_conv *c, unsigned flags) {
  uintptr_t ix = (uintptr_t)gw_map_get(&b->conv_ix, c->id);
  pg_store_conv copy;
  if (pg_store_conv_pack(&copy, c)) return PARLEY_ENOMEM;
  if (ix) {
    pg_store_conv_rec *r = &b->convs[ix - 1];
    pg_store_conv_clear(&r->c);
    r->c = copy;
    r->flags |= flags;
    return 0;
  }
  if (grow((void **)&b->convs, &b->cap_convs, b->n_convs, sizeof *b->convs) ||
      gw_map_put(&b->conv_ix, c->id, (void *)(uintptr_t)(b->n_convs + 1))) {
    pg_store_conv_clear(&copy);
    return PARLEY_ENOMEM;
  }
  b->convs[b->n_convs].c = copy;
  b->convs[b->n_convs].flags = flags;
  b->n_convs++;
  return 0;
}

int pg_store_batch_state(pg_store_batch *b, const char *conv, const char *key, const void *val,
                         size_t len, bool deleted) {
  size_t lc = strlen(conv), lk = strlen(key);
  char *k = malloc(lc + lk + 2);
  if (!k) return PARLEY_ENOMEM;
  memcpy(k, conv, lc);
  k[lc] = '\0';
  memcpy(k + lc + 1, key, lk + 1);
  uint8_t *v = NULL;
  if (!deleted && !(v = malloc(len ? len : 1))) {
    free(k);
    return PARLEY_ENOMEM;
  }
  if (!deleted && len) memcpy(v, val, len);
  /* The map key joins conv and key with a unit separator, which neither
   * may contain (conversation ids are [A-Za-z0-9._:@-]). */
  char mk[300];
  gw_join(mk, sizeof mk, conv, key, NULL);
  uintptr_t ix = (uintptr_t)gw_map_get(&b->state_ix, mk);
  pg_store_state_rec *r;
  if (ix) {
    r = &b->state[ix - 1];
    free(r->conv);
    free(r->val);
  } else {
    if (grow((void **)&b->state, &b->cap_state, b->n_state, sizeof *b->state) ||
        gw_map_put(&b->state_ix, mk, (void *)(uintptr_t)(b->n_state + 1))) {
      free(k);
      free(v);
      return PARLEY_ENOMEM;
    }
    r = &b->state[b->n_state++];
  }
  r->conv = k;
  r->key = k + lc + 1;
  r->val = v;
  r->len = deleted ? 0 : len;
  r->deleted = deleted;
  return 0;
}

int pg_store_batch_watermark(pg_store_batch *b, const char *principal, const char *device,
                             const char *conv, uint64_t acked) {
  char mk[420];
  gw_join(mk, sizeof mk, principal, device, conv);
  uintptr_t ix = (uintptr_t)gw_map_get(&b->wm_ix, mk);
  if (ix) {
    pg_store_wm_rec *r = &b->wms[ix - 1];
    if (acked > r->acked) r->acked = acked;
    return 0;
  }
  size_t lp = strlen(principal) + 1, ld = strlen(device) + 1, lc = strlen(conv) + 1;
  char *mem = malloc(lp + ld + lc);
  if (!mem) return PARLEY_ENOMEM;
  if (grow((void **)&b->wms, &b->cap_wms, b->n_wms, sizeof *b->wms) ||
      gw_map_put(&b->wm_ix, mk, (void *)(uintptr_t)(b->n_wms + 1))) {
    free(mem);
    return PARLEY_ENOMEM;
  }
  pg_store_wm_rec *r = &b->wms[b->n_wms++];
  memcpy(mem, principal, lp);
  memcpy(mem + lp, device, ld);
  memcpy(mem + lp + ld, conv, lc);
  r->principal = mem;
  r->device = mem + lp;
  r->conv = mem + lp + ld;
  r->acked = acked;
  return 0;
}

void pg_store_batch_view_get(const pg_store_batch *b, pg_store_batch_view *out) {
  out->events = b->events;
  out->n_events = b->n_events;
  out->convs = b->convs;
  out->n_convs = b->n_convs;
  out->state = b->state;
  out->n_state = b->n_state;
  out->wms = b->wms;
  out->n_wms = b->n_wms;
  out->bytes = b->bytes;
}

/* ----------------------------------------------------------- completion */

void pg_store__complete(pg_store *st, pg_store_batch *b, int status, const char *why,
                        uint64_t commit_us) {
  b->status = status;
  gw_copy(b->why, sizeof b->why, status < 0 && why ? why : "");
  b->next = NULL;
  pthread_mutex_lock(&st->mu);
  if (status < 0) {
    if (b->gen > st->failed_gen) st->failed_gen = b->gen;
    st->stats.failed++;
  } else {
    st->stats.batches++;
    st->stats.events += b->n_events;
    st->stats.rows += b->n_events + b->n_convs + b->n_state + b->n_wms;
    st->stats.commit_us += commit_us;
    if (commit_us > st->stats.max_commit_us) st->stats.max_commit_us = commit_us;
  }
  if (st->done_tail) st->done_tail->next = b;
  else st->done_head = b;
  st->done_tail = b;
  pthread_mutex_unlock(&st->mu);
  /* loop_polls is set and read on the loop thread only. */
  if (!(pthread_equal(pthread_self(), st->loop_thread) && st->loop_polls))
    uv_async_send(&st->async);
}

bool pg_store__poisoned(pg_store *st, const pg_store_batch *b) {
  pthread_mutex_lock(&st->mu);
  bool p = b->gen <= st->failed_gen;
  pthread_mutex_unlock(&st->mu);
  return p;
}

/* Runs the callbacks of finished batches, in the order they finished
 * (which is the order they were submitted). */
static size_t run_completions(pg_store *st) {
  pthread_mutex_lock(&st->mu);
  pg_store_batch *b = st->done_head;
  st->done_head = st->done_tail = NULL;
  pthread_mutex_unlock(&st->mu);
  size_t n_run = 0;
  while (b) {
    pg_store_batch *n = b->next;
    st->pending--;
    if (b->done) b->done(b->ud, b->status, b->why);
    pg_store_batch_free(b);
    b = n;
    n_run++;
  }
  return n_run;
}

static void on_async(uv_async_t *a) { (void)run_completions(a->data); }

size_t pg_store_poll(pg_store *st) {
  if (!st) return 0;
  pthread_mutex_lock(&st->mu);
  bool any = st->done_head != NULL;
  pthread_mutex_unlock(&st->mu);
  return any ? run_completions(st) : 0;
}

void pg_store_set_loop_polls(pg_store *st, bool on) {
  if (st) st->loop_polls = on;
}

void pg_store_wake(pg_store *st) {
  if (st && !st->closing) uv_async_send(&st->async);
}

/* ----------------------------------------------------------- front door */

int pg_store_open(const pg_store_options *o, pg_store **out, char *err, size_t errlen) {
  *out = NULL;
  if (!o || o->version != PG_STORE_OPTIONS_VERSION || !o->loop) {
    snprintf(err, errlen, "store: bad options");
    return PARLEY_EINVAL;
  }
  const char *name = o->backend ? o->backend : "sqlite";
  const pg_store_backend *be = NULL;
  for (size_t i = 0; backends[i]; i++)
    if (!strcmp(backends[i]->name, name)) be = backends[i];
  if (!be) {
    snprintf(err, errlen, "store: unknown backend \"%s\"", name);
    return PARLEY_EINVAL;
  }
  pg_store *st = calloc(1, sizeof *st);
  if (!st) return PARLEY_ENOMEM;
  st->be = be;
  st->loop = o->loop;
  st->gen = 1;
  st->loop_thread = pthread_self();
  pthread_mutex_init(&st->mu, NULL);
  int rc = be->open(o, &st->impl, err, errlen);
  if (rc) {
    pthread_mutex_destroy(&st->mu);
    free(st);
    return rc;
  }
  uv_async_init(o->loop, &st->async, on_async);
  st->async.data = st;
  /* The async handle alone must not keep the loop alive. */
  uv_unref((uv_handle_t *)&st->async);
  st->async_open = true;
  *out = st;
  return 0;
}

static void on_async_closed(uv_handle_t *h) {
  pg_store *st = h->data;
  void (*closed)(void *) = st->closed;
  void *ud = st->closed_ud;
  pthread_mutex_destroy(&st->mu);
  free(st);
  if (closed) closed(ud);
}

void pg_store_close(pg_store *st, void (*closed)(void *ud), void *ud) {
  if (!st) {
    if (closed) closed(ud);
    return;
  }
  pg_store_drain(st);
  st->closing = true;
  st->be->close(st->impl);
  st->impl = NULL;
  st->closed = closed;
  st->closed_ud = ud;
  uv_close((uv_handle_t *)&st->async, on_async_closed);
}

const char *pg_store_errmsg(pg_store *st) {
  return st && st->impl ? st->be->errmsg(st->impl) : "";
}

int pg_store_submit(pg_store *st, pg_store_batch *b, pg_store_done_fn done, void *ud) {
  if (st->closing) {
    pg_store_batch_free(b);
    return PARLEY_ESHUTDOWN;
  }
  b->gen = st->gen;
  b->done = done;
  b->ud = ud;
  st->pending++;
  st->be->submit(st->impl, st, b);
  return 0;
}

void pg_store_reset(pg_store *st) { st->gen++; }

size_t pg_store_pending(const pg_store *st) { return st->pending; }

void pg_store_drain(pg_store *st) {
  if (!st->pending) return;
  st->be->drain(st->impl);
  run_completions(st);
}

void pg_store_stats_get(const pg_store *st, pg_store_stats *out) {
  pthread_mutex_lock((pthread_mutex_t *)&st->mu);
  *out = st->stats;
  pthread_mutex_unlock((pthread_mutex_t *)&st->mu);
}

int pg_store_conv_get(pg_store *st, const char *id, pg_store_conv *out) {
  return st->be->conv_get(st->impl, id, out);
}

int pg_store_conv_each(pg_store *st, pg_store_index which, const char *key,
                       int (*fn)(void *ud, const pg_store_conv *c), void *ud) {
  return st->be->conv_each(st->impl, which, key, fn, ud);
}

int pg_store_events(pg_store *st, const char *conv, uint64_t from, uint64_t to, uint32_t limit,
                    int (*fn)(void *ud, uint64_t seq, const void *blob, size_t len), void *ud) {
  return st->be->events(st->impl, conv, from, to, limit, fn, ud);
}

int pg_store_sent_get(pg_store *st, const char *sender, const uint8_t msg_id[16],
                      char conv[129], uint64_t *seq) {
  return st->be->sent_get(st->impl, sender, msg_id, conv, seq);
}

int pg_store_watermark_get(pg_store *st, const char *principal, const char *device,
                           const char *conv, uint64_t *acked) {
  return st->be->watermark_get(st->impl, principal, device, conv, acked);
}

int pg_store_state_each(pg_store *st, const char *conv,
                        int (*fn)(void *ud, const char *key, const void *val, size_t len),
                        void *ud) {
  return st->be->state_each(st->impl, conv, fn, ud);
}

void pg_store_on_remote(pg_store *st, pg_store_remote_fn fn, void *ud) {
  if (st->be->on_remote) st->be->on_remote(st->impl, fn, ud);
}

int pg_store_bot_presence(pg_store *st, const char *bot, unsigned conns) {
  return st->be->bot_presence ? st->be->bot_presence(st->impl, bot, conns) : 0;
}

int pg_store_placement(pg_store *st, const char *conv, const char *bot) {
  return st->be->placement ? st->be->placement(st->impl, conv, bot) : PG_STORE_PLACE_HERE;
}

int pg_store_place_elsewhere(pg_store *st, const char *bot, const char *const *convs, size_t n) {
  return st->be->place_elsewhere ? st->be->place_elsewhere(st->impl, bot, convs, n)
                                 : PARLEY_ENOTFOUND;
}

void pg_store_on_place(pg_store *st, pg_store_place_fn fn, void *ud) {
  if (st->be->on_place) st->be->on_place(st->impl, fn, ud);
}

int pg_store_sent_each(pg_store *st,
                       int (*fn)(void *ud, const char *sender, const uint8_t msg_id[16]),
                       void *ud) {
  return st->be->sent_each(st->impl, fn, ud);
}
