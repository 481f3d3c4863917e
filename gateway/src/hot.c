/* Hot state: what the gateway keeps in memory so that a turn never reads
 * back what it just wrote. Per conversation its two rows (applied and
 * published, see pg_conv in gw.h), its bot's commit watermark, and a tail of
 * recent events bounded in bytes; across conversations the recent client
 * message ids (sender, msg_id) -> (conv, seq). The store is read only for
 * what is not here: a conversation not touched since start-up, events that
 * left the tail, an id older than the recent window. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <parley/error.h>

#include "gw.h"
#include "util/hash.h"

/* A recent (sender, msg_id): the event its Send produced, and the turn
 * (batch) that wrote it, so a failed batch's ids can be forgotten. */
typedef struct pg_recent {
  char *key;  /* owned by the map; a copy kept here for eviction */
  uint64_t seq;
  uint64_t turn;
  char conv[];
} pg_recent;

#define RECENT_KEY_MAX (128 + 1 + 32 + 1)

static void recent_key(const char *sender, const uint8_t id[16], char out[RECENT_KEY_MAX]) {
  static const char hex[] = "0123456789abcdef";
  size_t n = strnlen(sender, 128);
  memcpy(out, sender, n);
  out[n++] = '\x1f';
  for (int i = 0; i < 16; i++) {
    out[n++] = hex[id[i] >> 4];
    out[n++] = hex[id[i] & 15];
  }
  out[n] = '\0';
}

/* ---------------------------------------------------------- conversations */

static void tail_clear(pg_gateway *g, pg_conv *cv);

/* Re-reads a conversation's row after a failed batch (pg_conv.reload):
 * the published and applied rows become the stored one, and a tail that
 * no longer ends at its last seq starts over. On a read error the flag
 * stays and the next use tries again. */
static void hot_reload(pg_gateway *g, pg_conv *cv) {
  pg_store_conv fresh, row;
  if (pg_store_conv_get(g->store, cv->pub.id, &fresh) != 0) return;
  if (pg_store_conv_copy(&row, &fresh) != 0) {
    pg_store_conv_clear(&fresh);
    return;
  }
  row.last_seq = fresh.last_seq;
  if (fresh.last_seq != cv->pub.last_seq) tail_clear(g, cv);
  pg_store_conv_clear(&cv->pub);
  pg_store_conv_clear(&cv->row);
  cv->pub = fresh;
  cv->row = row;
  cv->bot_wm_loaded = false;
  cv->reload = false;
  /* The stored epoch may be one another node gave its bot connection:
   * placing it here bumps it first. */
  cv->placed_epoch = cv->pub.epoch;
}

/* Another node moved a conversation this node holds in memory: its rows
 * become the stored one, the tail starts over (what is not in it is read
 * from the store), and routing treats it as newly published, which
 * pushes the new events to this node's streams and revokes this node's
 * bot if the other node moved the assignment. A node never places a
 * conversation because another node wrote it (two nodes with bot
 * connections would take it from each other): placing is held for the
 * call. A conversation with writes of this node in flight is left to
 * its batch, which fails on the conflict if the other node moved it, and
 * the rollback re-reads it. */
static void remote_one(pg_gateway *g, pg_conv *cv, uint64_t last_seq) {
  if (!cv->exists) return;
  if (last_seq && last_seq <= cv->pub.last_seq) return;
  /* Writes in flight: re-reading now would forget them (their seqs would
   * be given again). If the other node moved it, they fail on the
   * conflict and the rollback re-reads it; if they do not conflict, the
   * turn that makes them durable looks again (pg_hot_remote_again). */
  if (cv->placing || cv->row.last_seq != cv->pub.last_seq || cv->row.epoch != cv->pub.epoch ||
      cv->row.state_version != cv->pub.state_version) {
    cv->remote_missed = true;
    return;
  }
  cv->remote_missed = false;
  pg_store_conv fresh, row;
  if (pg_store_conv_get(g->store, cv->pub.id, &fresh) != 0) return;
  if (fresh.last_seq <= cv->pub.last_seq && fresh.epoch == cv->pub.epoch &&
      fresh.state_version == cv->pub.state_version) {
    pg_store_conv_clear(&fresh);
    return;
  }
  if (pg_store_conv_copy(&row, &fresh) != 0) {
    pg_store_conv_clear(&fresh);
    return;
  }
  row.last_seq = fresh.last_seq;
  pg_store_conv old = cv->pub;
  pg_store_conv_clear(&cv->row);
  cv->pub = fresh;
  cv->row = row;
  cv->reload = false;
  cv->bot_wm_loaded = false;
  /* Another node may have given this epoch to its bot connection. */
  cv->placed_epoch = cv->pub.epoch;
  tail_clear(g, cv);
  cv->placing = true;
  if (g->route.published) g->route.published(g, cv, &old, false);
  cv->placing = false;
  pg_store_conv_clear(&old);
}

void pg_hot_remote_again(pg_gateway *g, pg_conv *cv) {
  if (cv->remote_missed) remote_one(g, cv, 0);
}

void pg_hot_remote(void *ud, const char *conv, uint64_t last_seq) {
  pg_gateway *g = ud;
  if (conv) {
    pg_conv *cv = gw_map_get(&g->convs, conv);
    if (cv) remote_one(g, cv, last_seq);
    return;
  }
  /* News may have been missed: every conversation in memory is checked. */
  size_t i = 0, n = 0;
  const char *k;
  void *v;
  while (gw_map_next(&g->convs, &i, &k, &v)) n++;
  char **ids = n ? calloc(n, sizeof *ids) : NULL;
  size_t m = 0;
  i = 0;
  while (ids && gw_map_next(&g->convs, &i, &k, &v) && m < n) ids[m++] = strdup(k);
  for (size_t j = 0; j < m; j++) {
    pg_conv *cv = ids[j] ? gw_map_get(&g->convs, ids[j]) : NULL;
    if (cv) remote_one(g, cv, 0);
    free(ids[j]);
  }
  free(ids);
}

pg_conv *pg_hot_conv(pg_gateway *g, const char *id, bool pending) {
  pg_conv *cv = gw_map_get(&g->convs, id);
  if (cv && cv->exists && cv->reload) hot_reload(g, cv);
  if (cv) return cv->exists || pending ? cv : NULL;
  cv = calloc(1, sizeof *cv);
  if (!cv) return NULL;
  if (pg_store_conv_get(g->store, id, &cv->pub) != 0) {
    free(cv);
    return NULL;
  }
  if (pg_store_conv_copy(&cv->row, &cv->pub) != 0 || gw_map_put(&g->convs, id, cv) != 0) {
    pg_store_conv_clear(&cv->row);
    pg_store_conv_clear(&cv->pub);
    free(cv);
    return NULL;
  }
  cv->row.last_seq = cv->pub.last_seq;
  cv->boot_last_seq = cv->pub.last_seq;
  cv->exists = true;
  /* Its current epoch may have been given to a connection before a
   * restart: the next placement bumps it, fencing that connection. */
  cv->placed_epoch = cv->pub.epoch;
  return cv;
}

pg_conv *pg_hot_conv_new(pg_gateway *g, const pg_store_conv *row) {
  pg_conv *cv = calloc(1, sizeof *cv);
  if (!cv) return NULL;
  if (pg_store_conv_copy(&cv->row, row) != 0) {
    free(cv);
    return NULL;
  }
  cv->row.last_seq = row->last_seq;
  if (gw_map_put(&g->convs, row->id, cv) != 0) {
    pg_store_conv_clear(&cv->row);
    free(cv);
    return NULL;
  }
  /* A new conversation's bot has nothing to commit yet. */
  cv->bot_wm_loaded = true;
  return cv;
}

int pg_hot_bot_wm(pg_gateway *g, pg_conv *cv, uint64_t *wm) {
  if (!cv->bot_wm_loaded) {
    int rc = pg_store_watermark_get(g->store, cv->row.bot, "", cv->row.id, &cv->bot_wm);
    if (rc) return rc;
    cv->bot_wm_loaded = true;
  }
  *wm = cv->bot_wm;
  return 0;
}

typedef struct pg_wm {
  char *who; /* "principal\x1fdevice" */
  uint64_t acked;
} pg_wm;

static void wms_clear(pg_conv *cv) {
  for (size_t i = 0; i < cv->n_wms; i++) free(cv->wms[i].who);
  cv->n_wms = 0;
}

/* The entry of (principal, device), loaded from the store when new. */
static pg_wm *wm_find(pg_gateway *g, pg_conv *cv, const char *principal, const char *device,
                      int *rc) {
  char who[300];
  gw_join(who, sizeof who, principal, device, NULL);
  *rc = 0;
  for (size_t i = 0; i < cv->n_wms; i++)
    if (!strcmp(cv->wms[i].who, who)) return &cv->wms[i];
  uint64_t stored = 0;
  if ((*rc = pg_store_watermark_get(g->store, principal, device, cv->row.id, &stored)))
    return NULL;
  if (cv->n_wms == cv->cap_wms) {
    size_t nc = cv->cap_wms ? cv->cap_wms * 2 : 2;
    pg_wm *t = realloc(cv->wms, nc * sizeof *t);
    if (!t) {
      *rc = PARLEY_ENOMEM;
      return NULL;
    }
    cv->wms = t;
    cv->cap_wms = nc;
  }
  pg_wm *w = &cv->wms[cv->n_wms];
  if (!(w->who = strdup(who))) {
    *rc = PARLEY_ENOMEM;
    return NULL;
  }
  w->acked = stored;
  cv->n_wms++;
  return w;
}

int pg_hot_wm_get(pg_gateway *g, pg_conv *cv, const char *principal, const char *device,
                  uint64_t *acked) {
  int rc;
  pg_wm *w = wm_find(g, cv, principal, device, &rc);
  *acked = w ? w->acked : 0;
  return rc;
}

int pg_hot_wm_raise(pg_gateway *g, pg_conv *cv, const char *principal, const char *device,
                    uint64_t acked) {
  int rc;
  pg_wm *w = wm_find(g, cv, principal, device, &rc);
  if (w && acked > w->acked) w->acked = acked;
  return rc;
}

static void conv_free(pg_gateway *g, pg_conv *cv) {
  tail_clear(g, cv);
  wms_clear(cv);
  free(cv->wms);
  free(cv->tail);
  pg_store_conv_clear(&cv->row);
  pg_store_conv_clear(&cv->pub);
  free(cv);
}

/* ------------------------------------------------------------------ tails */

static void lru_unlink(pg_gateway *g, pg_conv *cv) {
  if (cv->lru_prev) cv->lru_prev->lru_next = cv->lru_next;
  else if (g->lru_head == cv) g->lru_head = cv->lru_next;
  if (cv->lru_next) cv->lru_next->lru_prev = cv->lru_prev;
  else if (g->lru_tail == cv) g->lru_tail = cv->lru_prev;
  cv->lru_prev = cv->lru_next = NULL;
}

static void lru_front(pg_gateway *g, pg_conv *cv) {
  if (g->lru_head == cv) return;
  lru_unlink(g, cv);
  cv->lru_next = g->lru_head;
  if (g->lru_head) g->lru_head->lru_prev = cv;
  g->lru_head = cv;
  if (!g->lru_tail) g->lru_tail = cv;
}

static void tail_pop_front(pg_gateway *g, pg_conv *cv) {
  pg_tailev *e = &cv->tail[cv->tail_start];
  cv->tail_bytes -= e->len;
  g->tail_total -= e->len;
  free(e->blob);
  e->blob = NULL;
  cv->tail_start = (cv->tail_start + 1) % cv->tail_cap;
  cv->tail_n--;
}

static void tail_clear(pg_gateway *g, pg_conv *cv) {
  while (cv->tail_n) tail_pop_front(g, cv);
  cv->tail_start = 0;
  lru_unlink(g, cv);
}

/* Drops the events after seq `keep` (a failed batch's). */
static void tail_truncate(pg_gateway *g, pg_conv *cv, uint64_t keep) {
  while (cv->tail_n) {
    pg_tailev *e = &cv->tail[(cv->tail_start + cv->tail_n - 1) % cv->tail_cap];
    if (e->seq <= keep) break;
    cv->tail_bytes -= e->len;
    g->tail_total -= e->len;
    free(e->blob);
    e->blob = NULL;
    cv->tail_n--;
  }
  if (!cv->tail_n) lru_unlink(g, cv);
}

void pg_hot_tail_add(pg_gateway *g, pg_conv *cv, uint64_t seq, const uint8_t *blob, size_t len) {
  size_t cap = g->cfg->cache_tail_bytes;
  /* The tail stays seq-contiguous: an event that does not follow it (or
   * does not fit at all) starts it over. */
  if (cv->tail_n) {
    pg_tailev *last = &cv->tail[(cv->tail_start + cv->tail_n - 1) % cv->tail_cap];
    if (last->seq + 1 != seq) tail_clear(g, cv);
  }
  if (len > cap) {
    tail_clear(g, cv);
    return;
  }
  while (cv->tail_n && cv->tail_bytes + len > cap) tail_pop_front(g, cv);
  if (cv->tail_n == cv->tail_cap) {
    size_t nc = cv->tail_cap ? cv->tail_cap * 2 : 8;
    pg_tailev *t = malloc(nc * sizeof *t);
    if (!t) return;
    for (size_t i = 0; i < cv->tail_n; i++) t[i] = cv->tail[(cv->tail_start + i) % cv->tail_cap];
    free(cv->tail);
    cv->tail = t;
    cv->tail_cap = nc;
    cv->tail_start = 0;
  }
  uint8_t *copy = malloc(len ? len : 1);
  if (!copy) return;
  if (len) memcpy(copy, blob, len);
  pg_tailev *e = &cv->tail[(cv->tail_start + cv->tail_n) % cv->tail_cap];
  e->seq = seq;
  e->blob = copy;
  e->len = len;
  cv->tail_n++;
  cv->tail_bytes += len;
  g->tail_total += len;
  lru_front(g, cv);
  /* Past the cache's total, the least recently written conversations give
   * up their tails (they are read from the store again if needed). */
  while (g->tail_total > g->cfg->cache_max_bytes && g->lru_tail && g->lru_tail != cv)
    tail_clear(g, g->lru_tail);
}

typedef struct walk {
  int (*fn)(void *ud, uint64_t seq, const void *blob, size_t len);
  void *ud;
  uint32_t n;
  int stop;
} walk;

static int walk_one(void *ud, uint64_t seq, const void *blob, size_t len) {
  walk *w = ud;
  int rc = w->fn(w->ud, seq, blob, len);
  if (rc) {
    w->stop = rc;
    return rc;
  }
  w->n++;
  return 0;
}

/* Walks [from, to] from the store; returns 1 when the walk must end there
 * (the callback stopped it, the limit is used up, or the store had less). */
static int store_part(pg_gateway *g, pg_conv *cv, uint64_t from, uint64_t to, uint32_t *limit,
                      walk *w, int *rc) {
  uint32_t before = w->n;
  *rc = pg_store_events(g->store, cv->pub.id, from, to, *limit, walk_one, w);
  if (*rc < 0 || w->stop) {
    if (*rc >= 0) *rc = w->stop < 0 ? w->stop : 0;
    return 1;
  }
  uint32_t got = w->n - before;
  *limit -= got;
  return got < to - from + 1 || !*limit;
}

int pg_hot_events(pg_gateway *g, pg_conv *cv, uint64_t from, uint64_t to, uint32_t limit,
                  int (*fn)(void *ud, uint64_t seq, const void *blob, size_t len), void *ud) {
  if (!to || to > cv->pub.last_seq) to = cv->pub.last_seq;
  if (from < 1) from = 1;
  if (from > to || !limit) return 0;
  walk w = {fn, ud, 0, 0};
  int rc = 0;
  uint64_t first = cv->tail_n ? cv->tail[cv->tail_start].seq : to + 1;
  uint64_t last = cv->tail_n ? first + cv->tail_n - 1 : to;
  /* The part before the tail comes from the store. */
  if (from < first) {
    uint64_t upto = first - 1 < to ? first - 1 : to;
    if (store_part(g, cv, from, upto, &limit, &w, &rc)) return rc;
    from = upto + 1;
  }
  for (; from <= to && from <= last && limit; from++, limit--) {
    pg_tailev *e = &cv->tail[(cv->tail_start + (from - first)) % cv->tail_cap];
    int r = fn(ud, e->seq, e->blob, e->len);
    if (r) return r < 0 ? r : 0;
  }
  /* A tail shorter than the log (it could not grow) ends in the store. */
  if (from <= to && limit) store_part(g, cv, from, to, &limit, &w, &rc);
  return rc;
}

/* ------------------------------------------------------------ known ids */

/* A Bloom filter of every (sender, msg_id) the store holds or a batch in
 * flight carries: nearly every Send brings a new id, and without it each
 * would cost a read of the store to prove that. Layers double in size as
 * ids arrive (a scalable Bloom filter), so it never needs a rescan; each
 * layer takes one id per 12 bits with 8 probes, about 0.3% false
 * positives, which only cost a read. */
typedef struct pg_bloom {
  struct pg_bloom *older;
  uint64_t *bits;
  size_t mask; /* bits - 1 */
  size_t n, max;
} pg_bloom;

#define BLOOM_PROBES 8
#define BLOOM_MIN_BITS ((size_t)1 << 20)

static uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* The filter lives in memory only (pg_hot_init fills it at start-up), so
 * its hash may change between versions. */
static void bloom_hashes(const char *key, uint64_t *h1, uint64_t *h2) {
  uint64_t h = pu_hash_mem(key, strlen(key));
  *h1 = mix64(h);
  *h2 = mix64(h ^ 0x9e3779b97f4a7c15ull) | 1;
}

static bool bloom_maybe(const pg_gateway *g, const char *key) {
  uint64_t h1, h2;
  bloom_hashes(key, &h1, &h2);
  for (const pg_bloom *b = g->bloom; b; b = b->older) {
    bool all = true;
    for (int i = 0; all && i < BLOOM_PROBES; i++) {
      size_t bit = (size_t)(h1 + (uint64_t)i * h2) & b->mask;
      all = (b->bits[bit >> 6] >> (bit & 63)) & 1;
    }
    if (all) return true;
  }
  return false;
}

static int bloom_add(pg_gateway *g, const char *key) {
  pg_bloom *b = g->bloom;
  if (!b || b->n >= b->max) {
    size_t bits = b ? (b->mask + 1) * 2 : BLOOM_MIN_BITS;
    pg_bloom *nb = calloc(1, sizeof *nb);
    if (!nb || !(nb->bits = calloc(bits / 64, sizeof *nb->bits))) {
      free(nb);
      return PARLEY_ENOMEM;
    }
    nb->mask = bits - 1;
    nb->max = bits / 12;
    nb->older = b;
    g->bloom = b = nb;
    g->bloom_bytes += bits / 8;
  }
  uint64_t h1, h2;
  bloom_hashes(key, &h1, &h2);
  for (int i = 0; i < BLOOM_PROBES; i++) {
    size_t bit = (size_t)(h1 + (uint64_t)i * h2) & b->mask;
    b->bits[bit >> 6] |= (uint64_t)1 << (bit & 63);
  }
  b->n++;
  return 0;
}

static int bloom_load_one(void *ud, const char *sender, const uint8_t id[16]) {
  char key[RECENT_KEY_MAX];
  recent_key(sender, id, key);
  return bloom_add(ud, key);
}

int pg_hot_init(pg_gateway *g) { return pg_store_sent_each(g->store, bloom_load_one, g); }

/* ------------------------------------------------------------- recent ids */

int pg_hot_sent_get(pg_gateway *g, const char *sender, const uint8_t id[16], char conv[129],
                    uint64_t *seq) {
  char key[RECENT_KEY_MAX];
  recent_key(sender, id, key);
  pg_recent *r = gw_map_get(&g->recent, key);
  if (r) {
    snprintf(conv, 129, "%s", r->conv);
    *seq = r->seq;
    return 0;
  }
  if (!bloom_maybe(g, key)) return PARLEY_ENOTFOUND;
  return pg_store_sent_get(g->store, sender, id, conv, seq);
}

static void recent_drop(pg_gateway *g, pg_recent *r) {
  gw_map_del(&g->recent, r->key);
  g->recent_bytes -= sizeof *r + strlen(r->conv) + 1 + strlen(r->key) + 1;
  free(r->key);
  free(r);
}

int pg_hot_sent_put(pg_gateway *g, const char *sender, const uint8_t id[16], const char *conv,
                    uint64_t seq, uint64_t turn) {
  size_t max = g->cfg->cache_recent_ids;
  /* Oldest first out; but ids of batches in flight must stay (the store
   * does not have them yet), so the window may run over its size until
   * they are durable. */
  while (g->recent_n && g->recent_n >= max) {
    pg_recent *old = g->recent_ring[g->recent_start];
    if (old && old->turn > g->done_turn) break;
    g->recent_ring[g->recent_start] = NULL;
    g->recent_start = (g->recent_start + 1) % g->recent_cap;
    g->recent_n--;
    if (old) recent_drop(g, old);
  }
  if (g->recent_n == g->recent_cap) {
    size_t nc = g->recent_cap ? g->recent_cap * 2 : 64;
    pg_recent **t = calloc(nc, sizeof *t);
    if (!t) return PARLEY_ENOMEM;
    for (size_t i = 0; i < g->recent_n; i++)
      t[i] = g->recent_ring[(g->recent_start + i) % g->recent_cap];
    free(g->recent_ring);
    g->recent_ring = t;
    g->recent_cap = nc;
    g->recent_start = 0;
  }
  char key[RECENT_KEY_MAX];
  recent_key(sender, id, key);
  if (bloom_add(g, key)) return PARLEY_ENOMEM;
  size_t lc = strlen(conv) + 1;
  pg_recent *r = malloc(sizeof *r + lc);
  if (!r) return PARLEY_ENOMEM;
  r->key = strdup(key);
  r->seq = seq;
  r->turn = turn;
  memcpy(r->conv, conv, lc);
  pg_recent *prev = gw_map_get(&g->recent, key);
  if (!r->key || gw_map_put(&g->recent, key, r) != 0) {
    free(r->key);
    free(r);
    return PARLEY_ENOMEM;
  }
  /* A key seen again (only after the store forgot a failed batch's row)
   * keeps one entry: the old one's ring slot is emptied. */
  if (prev) {
    for (size_t i = 0; i < g->recent_n; i++) {
      pg_recent **slot = &g->recent_ring[(g->recent_start + i) % g->recent_cap];
      if (*slot == prev) *slot = NULL;
    }
    g->recent_bytes -= sizeof *prev + strlen(prev->conv) + 1 + strlen(prev->key) + 1;
    free(prev->key);
    free(prev);
  }
  g->recent_bytes += sizeof *r + lc + strlen(key) + 1;
  g->recent_ring[(g->recent_start + g->recent_n) % g->recent_cap] = r;
  g->recent_n++;
  return 0;
}

/* ---------------------------------------------------------------- rollback */

void pg_hot_rollback(pg_gateway *g, uint64_t from_turn) {
  size_t i = 0;
  const char *k;
  void *v;
  /* Conversations first: those only a failed batch opened go. */
  char **gone = NULL;
  size_t n_gone = 0;
  while (gw_map_next(&g->convs, &i, &k, &v)) {
    pg_conv *cv = v;
    if (!cv->exists) {
      char **t = realloc(gone, (n_gone + 1) * sizeof *t);
      if (t) {
        gone = t;
        gone[n_gone++] = strdup(k);
      }
      continue;
    }
    pg_store_conv row;
    if (pg_store_conv_copy(&row, &cv->pub) == 0) {
      pg_store_conv_clear(&cv->row);
      cv->row = row;
    }
    cv->row.last_seq = cv->pub.last_seq;
    cv->bot_wm_loaded = false;
    wms_clear(cv); /* reloaded from the store when needed */
    tail_truncate(g, cv, cv->pub.last_seq);
    cv->reload = true;
  }
  for (size_t j = 0; j < n_gone; j++) {
    if (!gone[j]) continue;
    pg_conv *cv = gw_map_del(&g->convs, gone[j]);
    if (cv) conv_free(g, cv);
    free(gone[j]);
  }
  free(gone);
  /* Then the ids the failed batches wrote. */
  for (size_t j = 0; j < g->recent_n; j++) {
    pg_recent **slot = &g->recent_ring[(g->recent_start + j) % g->recent_cap];
    if (*slot && (*slot)->turn >= from_turn) {
      recent_drop(g, *slot);
      *slot = NULL;
    }
  }
}

void pg_hot_free(pg_gateway *g) {
  size_t i = 0;
  void *v;
  while (gw_map_next(&g->convs, &i, NULL, &v)) conv_free(g, v);
  gw_map_clear(&g->convs);
  i = 0;
  while (gw_map_next(&g->recent, &i, NULL, &v)) {
    pg_recent *r = v;
    free(r->key);
    free(r);
  }
  gw_map_clear(&g->recent);
  free(g->recent_ring);
  g->recent_ring = NULL;
  while (g->bloom) {
    pg_bloom *b = g->bloom;
    g->bloom = b->older;
    free(b->bits);
    free(b);
  }
  g->recent_n = g->recent_start = g->recent_cap = 0;
}

/* The heap bytes of a row's strings, with malloc's 16 bytes per block. */
static size_t row_bytes(const pg_store_conv *r) {
  const char *f[] = {r->id, r->customer, r->assignee, r->bot, r->locale, r->queue, r->note, r->tags};
  size_t n = 0;
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
    if (f[i]) n += strlen(f[i]) + 1 + 16;
  return n;
}

size_t pg_hot_bytes(const pg_gateway *g) {
  size_t n = g->recent_bytes + g->recent_cap * sizeof(void *) + g->bloom_bytes;
  n += (g->convs.cap + g->recent.cap) * 2 * sizeof(void *);
  size_t i = 0;
  const char *k;
  void *v;
  while (gw_map_next(&g->convs, &i, &k, &v)) {
    const pg_conv *cv = v;
    n += sizeof *cv + 16 + strlen(k) + 1 + 16 + row_bytes(&cv->row) + row_bytes(&cv->pub);
    n += cv->tail_cap * sizeof(pg_tailev) + cv->tail_bytes + cv->tail_n * 16;
    n += cv->cap_wms * sizeof(pg_wm);
    for (size_t j = 0; j < cv->n_wms; j++) n += strlen(cv->wms[j].who) + 1 + 16;
  }
  return n;
}

/* ------------------------------------------------------------------- tags */

size_t pg_tags_split(char *joined, char **out, size_t max) {
  size_t n = 0;
  for (char *p = joined; p && *p && n < max;) {
    out[n++] = p;
    char *nl = strchr(p, '\n');
    if (!nl) break;
    *nl = '\0';
    p = nl + 1;
  }
  return n;
}
