/* Conversations spread over several PostgreSQL databases (storage.shards):
 * a store backend ("postgres-shards") in front of one PostgreSQL store per
 * database.
 *
 * Every row belongs to one conversation (its events, its row, its state,
 * the watermarks of its readers), and a conversation lives in exactly one
 * shard: the FNV-1a hash of its id modulo the number of shards, so every
 * node with the same list in the same order agrees, and a conversation
 * never spans two databases. Each shard is a complete PostgreSQL store of
 * its own (store/pg.c): its writer thread, its reads, its listener, its
 * schema migrations, its bot placement.
 *
 * A batch is split by shard and each part is submitted to its shard; the
 * batch completes once every part did, in submission order. Each part is
 * atomic in its database, which keeps every conversation's changes (the
 * event, the ACK's watermark, the state, the epoch) atomic: nothing the
 * gateway does needs two conversations to commit together. A batch whose
 * part failed in one shard is reported failed even if its parts in other
 * shards committed: the gateway then re-reads every conversation the
 * batch touched (store.h, pg_store_submit), which brings back what those
 * shards stored, and a client's retry of a Send that was in fact stored is
 * found as a duplicate. Until that failure is reported, later batches fail
 * without being applied, as store.h's contract says.
 *
 * Operations that cross conversations are answered from every shard: the
 * lists behind Hello and QueueRequest (merged in the order store.h
 * promises), a Send's idempotency key (a sender's resend names the same
 * conversation, hence the same shard, but the lookup does not know the
 * conversation), the known ids at start-up, announcements from other
 * nodes, and bot presence (each shard's placement runs on its own).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <parley/error.h>

#include "store/storage_cfg.h"
#include "store/store.h"
#include "util/array.h"

struct outer_item;

/* One part of a batch: the batch and the shard it went to. */
typedef struct part {
  struct outer_item *it;
  size_t k;
} part;

typedef struct outer_item {
  struct outer_item *next;
  struct shard_be *be;
  part parts[PG_STORAGE_MAX_SHARDS];
  pg_store *st;
  pg_store_batch *b;
  int waiting; /* parts not completed yet */
  int status;
  char why[256];
} outer_item;

typedef struct shard_be {
  size_t n;
  pg_store *sub[PG_STORAGE_MAX_SHARDS];
  bool failed[PG_STORAGE_MAX_SHARDS]; /* a part failed: reset on the next good batch */
  bool fail_pending; /* a part failed and its batch is not reported yet */
  outer_item *head, *tail;
  char err[512];
} shard_be;

static size_t shard_of(const shard_be *s, const char *conv) {
  uint32_t h = 2166136261u;
  for (const char *p = conv; *p; p++) h = (h ^ (uint8_t)*p) * 16777619u;
  return h % s->n;
}

/* ---------------------------------------------------------- open/close */

static void sh_close(void *impl) {
  shard_be *s = impl;
  if (!s) return;
  for (size_t i = 0; i < s->n; i++)
    if (s->sub[i]) pg_store_close(s->sub[i], NULL, NULL);
  free(s);
}

static int sh_open(const pg_store_options *o, void **out, char *err, size_t errlen) {
  *out = NULL;
  if (!o->url || !o->url[0]) {
    snprintf(err, errlen, "postgres: storage.shards is empty");
    return PARLEY_ECONFIG;
  }
  shard_be *s = calloc(1, sizeof *s);
  char *urls = strdup(o->url);
  if (!s || !urls) {
    free(s);
    free(urls);
    return PARLEY_ENOMEM;
  }
  int rc = 0;
  char *save = urls;
  for (char *u = urls; u && !rc; s->n++) {
    char *next = strchr(u, PG_STORAGE_SHARD_SEP);
    if (next) *next++ = 0;
    if (s->n == PG_STORAGE_MAX_SHARDS) {
      snprintf(err, errlen, "postgres: at most %d shards", PG_STORAGE_MAX_SHARDS);
      rc = PARLEY_ECONFIG;
      break;
    }
    pg_store_options so = *o;
    so.backend = "postgres";
    so.url = u;
    char e[400] = "";
    rc = pg_store_open(&so, &s->sub[s->n], e, sizeof e);
    if (rc) snprintf(err, errlen, "shard %zu: %s", s->n, e);
    u = next;
  }
  /* sodium is not needed here: the conninfo copy holds the password, so
   * it is wiped before it is freed. */
  memset(save, 0, strlen(o->url));
  free(save);
  if (rc) {
    sh_close(s);
    return rc;
  }
  *out = s;
  return 0;
}

static const char *sh_errmsg(void *impl) {
  shard_be *s = impl;
  for (size_t i = 0; i < s->n; i++) {
    const char *m = pg_store_errmsg(s->sub[i]);
    if (m && m[0]) {
      snprintf(s->err, sizeof s->err, "shard %zu: %s", i, m);
      return s->err;
    }
  }
  return "";
}

/* -------------------------------------------------------------- writes */

/* Reports the finished batches at the head, in submission order. */
static void flush_done(shard_be *s) {
  while (s->head && s->head->waiting == 0) {
    outer_item *it = s->head;
    s->head = it->next;
    if (!s->head) s->tail = NULL;
    if (it->status < 0) s->fail_pending = false;
    pg_store__complete(it->st, it->b, it->status, it->status < 0 ? it->why : NULL, 0);
    free(it);
  }
}

static void on_part_done(void *ud, int status, const char *why) {
  part *pt = ud;
  outer_item *it = pt->it;
  shard_be *s = it->be;
  /* The shard refuses every part after this one until it is reset, which
   * happens once the gateway reset after hearing of this failure. */
  if (status < 0) s->failed[pt->k] = true;
  if (status < 0 && it->status == 0) {
    it->status = status;
    snprintf(it->why, sizeof it->why, "%s", why ? why : "a shard failed");
  }
  if (status < 0) s->fail_pending = true;
  it->waiting--;
  flush_done(s);
}

/* Copies what b holds of shard k into part (NULL: the shard of each row
 * is not checked, everything is copied). */
static int split(shard_be *s, const pg_store_batch_view *v, size_t k, pg_store_batch *out) {
  int rc = 0;
  for (size_t i = 0; !rc && i < v->n_events; i++)
    if (shard_of(s, v->events[i].conv) == k) rc = pg_store_batch_event(out, &v->events[i]);
  for (size_t i = 0; !rc && i < v->n_convs; i++)
    if (shard_of(s, v->convs[i].c.id) == k)
      rc = pg_store_batch_conv(out, &v->convs[i].c, v->convs[i].flags);
  for (size_t i = 0; !rc && i < v->n_state; i++) {
    const pg_store_state_rec *r = &v->state[i];
    if (shard_of(s, r->conv) == k)
      rc = pg_store_batch_state(out, r->conv, r->key, r->val, r->len, r->deleted);
  }
  for (size_t i = 0; !rc && i < v->n_wms; i++) {
    const pg_store_wm_rec *r = &v->wms[i];
    if (shard_of(s, r->conv) == k)
      rc = pg_store_batch_watermark(out, r->principal, r->device, r->conv, r->acked);
  }
  return rc;
}

static void sh_submit(void *impl, pg_store *st, pg_store_batch *b) {
  shard_be *s = impl;
  outer_item *it = calloc(1, sizeof *it);
  if (!it) {
    pg_store__complete(st, b, PARLEY_ENOMEM, "out of memory", 0);
    return;
  }
  it->be = s;
  it->st = st;
  it->b = b;
  if (s->tail) s->tail->next = it;
  else s->head = it;
  s->tail = it;
  if (s->fail_pending || pg_store__poisoned(st, b)) {
    it->status = PARLEY_EDB;
    snprintf(it->why, sizeof it->why, "an earlier batch failed");
    flush_done(s);
    return;
  }
  /* A batch after the failure was reported and the gateway's reset: the
   * shards that failed take batches again. */
  for (size_t k = 0; k < s->n; k++)
    if (s->failed[k]) {
      pg_store_reset(s->sub[k]);
      s->failed[k] = false;
    }
  pg_store_batch_view v;
  pg_store_batch_view_get(b, &v);
  bool barrier = pg_store_batch_empty(b);
  pg_store_batch *parts[PG_STORAGE_MAX_SHARDS] = {NULL};
  int rc = 0;
  for (size_t k = 0; !rc && k < s->n; k++) {
    parts[k] = pg_store_batch_new();
    if (!parts[k]) rc = PARLEY_ENOMEM;
    else rc = split(s, &v, k, parts[k]);
  }
  if (rc) {
    for (size_t k = 0; k < s->n; k++) pg_store_batch_free(parts[k]);
    it->status = rc;
    snprintf(it->why, sizeof it->why, "out of memory");
    flush_done(s);
    return;
  }
  /* The parts are counted before any is submitted, so that a part that
   * completes early cannot report the batch before the rest is out. */
  it->waiting = 1;
  for (size_t k = 0; k < s->n; k++) {
    if (!barrier && pg_store_batch_empty(parts[k])) {
      pg_store_batch_free(parts[k]);
      continue;
    }
    it->waiting++;
    it->parts[k] = (part){.it = it, .k = k};
    if (pg_store_submit(s->sub[k], parts[k], on_part_done, &it->parts[k]) != 0) {
      it->waiting--;
      if (it->status == 0) {
        it->status = PARLEY_ESHUTDOWN;
        snprintf(it->why, sizeof it->why, "shard %zu is closing", k);
      }
    }
  }
  it->waiting--;
  flush_done(s);
}

static void sh_drain(void *impl) {
  shard_be *s = impl;
  for (size_t k = 0; k < s->n; k++) pg_store_drain(s->sub[k]);
}

/* --------------------------------------------------------------- reads */

static int sh_conv_get(void *impl, const char *id, pg_store_conv *out) {
  shard_be *s = impl;
  return pg_store_conv_get(s->sub[shard_of(s, id)], id, out);
}

typedef struct gather {
  pg_store_conv *v;
  size_t n, cap;
  int rc;
} gather;

static int gather_one(void *ud, const pg_store_conv *c) {
  gather *g = ud;
  if (pu_reserve(&g->v, &g->cap, g->n, sizeof *g->v, 16)) return g->rc = PARLEY_ENOMEM;
  if (pg_store_conv_copy(&g->v[g->n], c) != 0) return g->rc = PARLEY_ENOMEM;
  g->v[g->n].last_seq = c->last_seq;
  g->n++;
  return 0;
}

static int by_id(const void *a, const void *b) {
  return strcmp(((const pg_store_conv *)a)->id, ((const pg_store_conv *)b)->id);
}

static int by_queued(const void *a, const void *b) {
  const pg_store_conv *x = a, *y = b;
  if (x->queued_ms != y->queued_ms) return x->queued_ms < y->queued_ms ? -1 : 1;
  return strcmp(x->id, y->id);
}

/* Every shard's list, merged in the order store.h gives for `which`. */
static int sh_conv_each(void *impl, pg_store_index which, const char *key,
                        int (*fn)(void *ud, const pg_store_conv *c), void *ud) {
  shard_be *s = impl;
  gather g = {0};
  int rc = 0;
  for (size_t k = 0; !rc && k < s->n; k++) {
    rc = pg_store_conv_each(s->sub[k], which, key, gather_one, &g);
    if (!rc) rc = g.rc;
  }
  if (!rc && g.n)
    qsort(g.v, g.n, sizeof *g.v, which == PG_STORE_QUEUED ? by_queued : by_id);
  for (size_t i = 0; i < g.n; i++) {
    if (!rc) rc = fn(ud, &g.v[i]);
    pg_store_conv_clear(&g.v[i]);
  }
  free(g.v);
  return rc;
}

static int sh_events(void *impl, const char *conv, uint64_t from, uint64_t to, uint32_t limit,
                     int (*fn)(void *ud, uint64_t seq, const void *blob, size_t len), void *ud) {
  shard_be *s = impl;
  return pg_store_events(s->sub[shard_of(s, conv)], conv, from, to, limit, fn, ud);
}

static int sh_sent_get(void *impl, const char *sender, const uint8_t id[16], char conv[129],
                       uint64_t *seq) {
  shard_be *s = impl;
  int out = PARLEY_ENOTFOUND;
  for (size_t k = 0; k < s->n; k++) {
    int rc = pg_store_sent_get(s->sub[k], sender, id, conv, seq);
    if (rc == 0) return 0;
    if (rc != PARLEY_ENOTFOUND) out = rc;
  }
  return out;
}

static int sh_sent_each(void *impl,
                        int (*fn)(void *ud, const char *sender, const uint8_t msg_id[16]),
                        void *ud) {
  shard_be *s = impl;
  int rc = 0;
  for (size_t k = 0; !rc && k < s->n; k++) rc = pg_store_sent_each(s->sub[k], fn, ud);
  return rc;
}

static int sh_watermark_get(void *impl, const char *principal, const char *device,
                            const char *conv, uint64_t *acked) {
  shard_be *s = impl;
  return pg_store_watermark_get(s->sub[shard_of(s, conv)], principal, device, conv, acked);
}

static int sh_state_each(void *impl, const char *conv,
                         int (*fn)(void *ud, const char *key, const void *val, size_t len),
                         void *ud) {
  shard_be *s = impl;
  return pg_store_state_each(s->sub[shard_of(s, conv)], conv, fn, ud);
}

/* ------------------------------------------------------- other nodes */

static void sh_on_remote(void *impl, pg_store_remote_fn fn, void *ud) {
  shard_be *s = impl;
  for (size_t k = 0; k < s->n; k++) pg_store_on_remote(s->sub[k], fn, ud);
}

static int sh_bot_presence(void *impl, const char *bot, unsigned conns) {
  shard_be *s = impl;
  int out = 0;
  for (size_t k = 0; k < s->n; k++) {
    int rc = pg_store_bot_presence(s->sub[k], bot, conns);
    if (rc && !out) out = rc;
  }
  return out;
}

static int sh_placement(void *impl, const char *conv, const char *bot) {
  shard_be *s = impl;
  return pg_store_placement(s->sub[shard_of(s, conv)], conv, bot);
}

static int sh_place_elsewhere(void *impl, const char *bot, const char *const *convs, size_t n) {
  shard_be *s = impl;
  const char **mine = n ? calloc(n, sizeof *mine) : NULL;
  if (n && !mine) return PARLEY_ENOMEM;
  int out = PARLEY_ENOTFOUND;
  for (size_t k = 0; k < s->n; k++) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
      if (shard_of(s, convs[i]) == k) mine[m++] = convs[i];
    if (!m) continue;
    int rc = pg_store_place_elsewhere(s->sub[k], bot, mine, m);
    if (rc == 0 || out == PARLEY_ENOTFOUND) out = rc;
  }
  free(mine);
  return out;
}

static void sh_on_place(void *impl, pg_store_place_fn fn, void *ud) {
  shard_be *s = impl;
  for (size_t k = 0; k < s->n; k++) pg_store_on_place(s->sub[k], fn, ud);
}

const pg_store_backend pg_store_postgres_shards = {
    .name = "postgres-shards",
    .open = sh_open,
    .submit = sh_submit,
    .drain = sh_drain,
    .close = sh_close,
    .errmsg = sh_errmsg,
    .conv_get = sh_conv_get,
    .conv_each = sh_conv_each,
    .events = sh_events,
    .sent_get = sh_sent_get,
    .sent_each = sh_sent_each,
    .on_remote = sh_on_remote,
    .watermark_get = sh_watermark_get,
    .state_each = sh_state_each,
    .bot_presence = sh_bot_presence,
    .placement = sh_placement,
    .place_elsewhere = sh_place_elsewhere,
    .on_place = sh_on_place,
};
