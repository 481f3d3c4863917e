/* bench_reorder: the engine's per-conversation reorder buffer and its
 * duplicate detection.
 *
 * Insertion. The engine keeps the early events of a conversation in a
 * list of sorted blocks of at most 64 entries (sdk/src/core/inbox.c:
 * held_lower is a binary search over the blocks, then within one; the new
 * entry goes in with a memmove inside its block; each entry owns a packed
 * copy of its event). The insertion functions are static, so "parley" is
 * measured through the engine's internal entry for an inbound Deliver,
 * pe_on_deliver (engine_int.h), with one early event per call: that adds
 * the conversation lookups and the contradiction check the engine does
 * for every event. For N = 100, 1,000 and 10,000, N events with seqs
 * 2..N+1 arrive (reversed, or shuffled with a fixed seed) while seq 1 is
 * missing, so all of them are held; the figure is the mean cost per
 * insertion while the buffer fills from 0 to N events. "linear" is
 * the plain alternative: one flat array of the same pe_held entries (a
 * packed malloc'd copy of the event each), a linear scan for the position
 * and a memmove of everything after it, without the engine's lookups.
 * Correctness: after the inserts seq 1 arrives and the engine must hand
 * the application seqs 1..N+1 in order; the linear buffer must be sorted
 * and complete.
 *
 * Duplicate detection. The engine detects duplicates by seq, not by a
 * message-id set: an event below the conversation's next seq was applied,
 * an event at a held seq is held (binary search of the buffer); the
 * message id is only compared to refuse a contradiction. "dedup_ns" is the
 * cost of pe_on_deliver for a shuffled mix of half hits (applied and held
 * seqs) and half misses (early seqs not held while the buffer is at its
 * limit, so the event is looked up and then refused for room without
 * changing any state; a disconnected engine sends no fetch). Correctness:
 * the engine's duplicates_dropped counter grows by exactly the number of
 * hits and the buffer and next seq are unchanged.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <parley/error.h>

#include "bench.h"
#include "core/engine_int.h"
#include "sample.h"

/* Timed loops read this thread's CPU clock rather than the wall clock: the
 * work is single-threaded and never waits, and on a machine shared with
 * other jobs the CPU clock does not count the time the thread spends
 * descheduled, which the wall clock would charge to whatever ran then. */
static uint64_t cpu_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------ helpers */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng_next(void) {
  uint64_t x = rng_state;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return rng_state = x;
}

static void shuffle(uint64_t *v, size_t n) {
  for (size_t i = n; i > 1; i--) {
    size_t j = (size_t)(rng_next() % i);
    uint64_t t = v[i - 1];
    v[i - 1] = v[j];
    v[j] = t;
  }
}

/* Events the engine hands the application, to check order. */
typedef struct sink {
  uint64_t *seqs;
  size_t n, cap;
  int errors;
} sink;

static void on_event(void *ud, const parley_event *ev) {
  sink *s = ud;
  if (s->n < s->cap) s->seqs[s->n] = ev->seq;
  s->n++;
}

static void on_peer_error(void *ud, int status, const char *msg) {
  sink *s = ud;
  s->errors++;
  if (s->errors <= 3) fprintf(stderr, "bench_reorder: engine error %d: %s\n", status, msg);
}

/* One prepared inbound Deliver of one message event. The message id
 * depends on the seq, as the gateway's ids would differ per event. */
typedef struct probe {
  Parley__V1__Event ev;
  Parley__V1__Event *evp;
  Parley__V1__Deliver d;
  uint8_t id[16];
} probe;

static Parley__V1__Text g_text = PARLEY__V1__TEXT__INIT;
static Parley__V1__Content g_content = PARLEY__V1__CONTENT__INIT;

static void probe_init(probe *p, uint64_t seq) {
  parley__v1__event__init(&p->ev);
  p->ev.conversation = SAMPLE_CONV;
  p->ev.seq = seq;
  p->ev.kind = PARLEY__V1__EVENT_KIND__EVENT_MESSAGE;
  p->ev.server_time_ms = SAMPLE_TIME_MS;
  p->ev.sender = SAMPLE_SENDER;
  p->ev.sender_role = PARLEY__V1__ROLE__ROLE_CUSTOMER;
  memcpy(p->id, sample_msg_id, 16);
  memcpy(p->id, &seq, sizeof seq);
  p->ev.client_msg_id.data = p->id;
  p->ev.client_msg_id.len = 16;
  p->ev.content = &g_content;
  p->evp = &p->ev;
  parley__v1__deliver__init(&p->d);
  p->d.n_events = 1;
  p->d.events = &p->evp;
}

static pe_engine *engine_new(sink *s, uint32_t reorder_max) {
  pe_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.principal = "bench-agent";
  cfg.role = PARLEY_ROLE_AGENT;
  cfg.tuning.reorder_max = reorder_max;
  cfg.tuning.reorder_max_bytes = 512u * 1024u * 1024u;
  cfg.tuning.seed = 42;
  pe_hooks h;
  memset(&h, 0, sizeof h);
  h.ud = s;
  h.event = on_event;
  h.peer_error = on_peer_error;
  return pe_engine_new(&cfg, &h);
}

/* ------------------------------------------------ linear-scan buffer */

/* A flat array of the engine's entries (pe_held, sorted by seq, packed
 * copy per entry), with a linear scan for the insertion point. */
typedef struct lin_buf {
  pe_held *held;
  size_t n, cap, max;
} lin_buf;

/* 0: held; 1: duplicate; -1: full or out of memory. */
static int lin_insert(lin_buf *b, const Parley__V1__Event *ev) {
  size_t i = 0;
  while (i < b->n && b->held[i].seq < ev->seq) i++;
  if (i < b->n && b->held[i].seq == ev->seq) return 1;
  if (b->n >= b->max) return -1;
  size_t n = parley__v1__event__get_packed_size(ev);
  if (b->n == b->cap) {
    size_t ncap = b->cap ? b->cap * 2 : 4;
    if (ncap > b->max) ncap = b->max;
    pe_held *nh = realloc(b->held, ncap * sizeof *nh);
    if (!nh) return -1;
    b->held = nh;
    b->cap = ncap;
  }
  uint8_t *data = malloc(n ? n : 1);
  if (!data) return -1;
  parley__v1__event__pack(ev, data);
  memmove(&b->held[i + 1], &b->held[i], (b->n - i) * sizeof *b->held);
  pe_held *h = &b->held[i];
  h->seq = ev->seq;
  h->data = data;
  h->len = n;
  h->has_id = ev->client_msg_id.len == 16;
  if (h->has_id) memcpy(h->id, ev->client_msg_id.data, 16);
  b->n++;
  return 0;
}

static void lin_free(lin_buf *b) {
  for (size_t i = 0; i < b->n; i++) free(b->held[i].data);
  free(b->held);
  memset(b, 0, sizeof *b);
}

/* ------------------------------------------------------- insertion */

/* Cost per event of the last drain (seq 1 arriving and the N held events
 * delivered after it), shown next to the insertion figures. */
static double g_drain_ns;

/* One round: the N prepared events, in their order, into a fresh engine.
 * Returns mean ns per insertion, negative on a failed check. */
static double round_parley(probe *pr, size_t n) {
  sink s = {0};
  s.cap = n + 1;
  s.seqs = calloc(s.cap, sizeof *s.seqs);
  pe_engine *e = engine_new(&s, (uint32_t)n);
  if (!e || !s.seqs) {
    fprintf(stderr, "bench_reorder: out of memory\n");
    exit(1);
  }
  uint64_t t0 = cpu_now_ns();
  for (size_t i = 0; i < n; i++) pe_on_deliver(e, &pr[i].d);
  uint64_t t1 = cpu_now_ns();
  double r = (double)(t1 - t0) / (double)n;
  pe_conv *c = pe_conv_find(e, SAMPLE_CONV);
  if (!c || c->n_held != n || s.n != 0 || s.errors) {
    fprintf(stderr, "bench_reorder: parley held %zu of %zu events (%zu delivered early)\n",
            c ? c->n_held : 0, n, s.n);
    r = -1;
  }
  /* Seq 1 closes the gap: everything must come out, in order. */
  probe first;
  probe_init(&first, 1);
  uint64_t d0 = cpu_now_ns();
  if (r >= 0) pe_on_deliver(e, &first.d);
  g_drain_ns = (double)(cpu_now_ns() - d0) / (double)(n + 1);
  for (size_t i = 0; r >= 0 && i < n + 1; i++) {
    if (s.n != n + 1 || s.seqs[i] != i + 1) {
      fprintf(stderr, "bench_reorder: parley delivered %zu events, position %zu is seq %llu\n",
              s.n, i, (unsigned long long)(i < s.n ? s.seqs[i] : 0));
      r = -1;
    }
  }
  if (r >= 0 && (s.errors || c->n_held != 0 || c->next != n + 2)) {
    fprintf(stderr, "bench_reorder: parley buffer not empty after the gap closed\n");
    r = -1;
  }
  pe_engine_free(e);
  free(s.seqs);
  return r;
}

static double round_linear(probe *pr, size_t n) {
  lin_buf b = {.max = n};
  uint64_t t0 = cpu_now_ns();
  for (size_t i = 0; i < n; i++)
    if (lin_insert(&b, &pr[i].ev) != 0) {
      lin_free(&b);
      fprintf(stderr, "bench_reorder: linear buffer refused seq %llu\n",
              (unsigned long long)pr[i].ev.seq);
      return -1;
    }
  uint64_t t1 = cpu_now_ns();
  double r = (double)(t1 - t0) / (double)n;
  if (b.n != n) r = -1;
  for (size_t i = 0; r >= 0 && i < n; i++)
    if (b.held[i].seq != i + 2) r = -1;
  if (r < 0) fprintf(stderr, "bench_reorder: linear buffer is not sorted and complete\n");
  lin_free(&b);
  return r;
}

/* Median over rounds of the mean insertion cost, out[0] parley and out[1]
 * linear. Each round gives both buffers the same arrival order, one after
 * the other, so a burst of load from elsewhere on the machine falls on
 * both rather than on one. */
static void measure_insert(size_t n, bool reversed, int rounds, double out[2]) {
  uint64_t *seqs = malloc(n * sizeof *seqs);
  probe *pr = malloc(n * sizeof *pr);
  double *v[2] = {malloc((size_t)rounds * sizeof(double)), malloc((size_t)rounds * sizeof(double))};
  if (!seqs || !pr || !v[0] || !v[1]) {
    fprintf(stderr, "bench_reorder: out of memory\n");
    exit(1);
  }
  for (size_t i = 0; i < n; i++) seqs[i] = reversed ? n + 1 - i : i + 2;
  /* Round -1 is a warm-up, not counted. */
  for (int r = -1; r < rounds; r++) {
    if (!reversed) shuffle(seqs, n);
    for (size_t i = 0; i < n; i++) probe_init(&pr[i], seqs[i]);
    for (int k = 0; k < 2; k++) {
      double x = k == 0 ? round_parley(pr, n) : round_linear(pr, n);
      if (x < 0) exit(1);
      if (r >= 0) v[k][r] = x;
    }
  }
  for (int k = 0; k < 2; k++) {
    out[k] = bench_percentile(v[k], (size_t)rounds, 50);
    free(v[k]);
  }
  free(seqs);
  free(pr);
}

/* ------------------------------------------------------------ dedup */

static double measure_dedup(bool tiny, double *hit_ns, double *miss_ns, double *lookup_ns) {
  const uint64_t applied = 1000; /* seqs 1..applied were delivered */
  const uint32_t held = 256;     /* every other seq after that is held */
  sink s = {0};
  pe_engine *e = engine_new(&s, held);
  if (!e) exit(1);
  probe p;
  for (uint64_t q = 1; q <= applied; q++) {
    probe_init(&p, q);
    pe_on_deliver(e, &p.d);
  }
  for (uint32_t k = 0; k < held; k++) {
    probe_init(&p, applied + 2 + 2 * (uint64_t)k);
    pe_on_deliver(e, &p.d);
  }
  pe_conv *c = pe_conv_find(e, SAMPLE_CONV);
  if (!c || c->next != applied + 1 || c->n_held != held || s.errors) {
    fprintf(stderr, "bench_reorder: dedup setup failed\n");
    exit(1);
  }
  /* Probes: a quarter applied seqs, a quarter held seqs (hits), half
   * early seqs that are not held (misses), shuffled. */
  enum { NP = 4096 };
  probe *pr = malloc(NP * sizeof *pr);
  bool *is_hit = malloc(NP * sizeof *is_hit);
  uint64_t *seqs = malloc(NP * sizeof *seqs);
  if (!pr || !is_hit || !seqs) exit(1);
  for (size_t i = 0; i < NP; i++) {
    switch (i % 4) {
    case 0: seqs[i] = 1 + rng_next() % applied; break;
    case 1: seqs[i] = applied + 2 + 2 * (rng_next() % held); break;
    case 2: seqs[i] = applied + 3 + 2 * (rng_next() % held); break;
    default: seqs[i] = applied + 2 * held + 2 + rng_next() % 100000; break;
    }
  }
  shuffle(seqs, NP);
  size_t hits = 0;
  for (size_t i = 0; i < NP; i++) {
    probe_init(&pr[i], seqs[i]);
    bool h = seqs[i] <= applied || (seqs[i] <= applied + 2 * held && (seqs[i] - applied) % 2 == 0);
    is_hit[i] = h;
    hits += h;
  }
  int rounds = tiny ? 3 : 9;
  size_t loops = tiny ? 5 : 200;
  double v[16];
  parley_client_stats st0, st1;
  for (int r = -1; r < rounds; r++) {
    pe_engine_stats(e, &st0);
    uint64_t t0 = cpu_now_ns();
    for (size_t l = 0; l < loops; l++)
      for (size_t i = 0; i < NP; i++) pe_on_deliver(e, &pr[i].d);
    uint64_t t1 = cpu_now_ns();
    pe_engine_stats(e, &st1);
    if (st1.duplicates_dropped - st0.duplicates_dropped != hits * loops || s.n != applied ||
        c->n_held != held || c->next != applied + 1 || s.errors) {
      fprintf(stderr, "bench_reorder: dedup answered wrong (%llu duplicates for %zu hits)\n",
              (unsigned long long)(st1.duplicates_dropped - st0.duplicates_dropped),
              hits * loops);
      exit(1);
    }
    if (r >= 0) v[r] = (double)(t1 - t0) / (double)(loops * NP);
  }
  /* Hits and misses apart, to show what the mix is made of. */
  double part[2];
  for (int want = 0; want < 2; want++) {
    size_t cnt = 0;
    uint64_t t0 = cpu_now_ns();
    for (size_t l = 0; l < loops; l++)
      for (size_t i = 0; i < NP; i++)
        if (is_hit[i] == (want == 1)) {
          pe_on_deliver(e, &pr[i].d);
          cnt++;
        }
    part[want] = (double)(cpu_now_ns() - t0) / (double)cnt;
  }
  *miss_ns = part[0];
  *hit_ns = part[1];
  /* What one conversation lookup costs: the engine makes two per event. */
  size_t nl = loops * NP;
  uint64_t t0 = cpu_now_ns();
  for (size_t i = 0; i < nl; i++) {
    pe_conv *f = pe_conv_find(e, pr[i % NP].ev.conversation);
    BENCH_KEEP(f);
  }
  *lookup_ns = (double)(cpu_now_ns() - t0) / (double)nl;
  pe_engine_free(e);
  free(pr);
  free(is_hit);
  free(seqs);
  return bench_percentile(v, (size_t)rounds, 50);
}

/* ------------------------------------------------------------- main */

int main(int argc, char **argv) {
  bool tiny = bench_tiny(argc, argv);
  g_text.body = SAMPLE_TEXT;
  g_content.body_case = PARLEY__V1__CONTENT__BODY_TEXT;
  g_content.text = &g_text;
  const size_t sizes[3] = {100, 1000, 10000};
  /* Rounds per size: enough events for a stable mean, a bounded run. */
  const int rounds_full[3] = {301, 41, 7};
  const int rounds_tiny[3] = {5, 3, 1};

  printf("bench_reorder: per-event insertion into a reorder buffer filling from 0 to N "
         "(median of rounds, ns)\n");
  printf("%-8s %-9s %12s %12s %8s %16s\n", "N", "order", "parley", "linear", "ratio",
         "parley drain/ev");
  for (int k = 0; k < 3; k++) {
    size_t n = sizes[k];
    int rounds = tiny ? rounds_tiny[k] : rounds_full[k];
    double res[2][2];
    for (int rev = 1; rev >= 0; rev--) {
      rng_state = 0x9E3779B97F4A7C15ull + n;
      measure_insert(n, rev, rounds, res[rev]);
      printf("%-8zu %-9s %12.1f %12.1f %8.3f %16.1f\n", n, rev ? "reversed" : "shuffled",
             res[rev][0], res[rev][1], res[rev][0] / res[rev][1], g_drain_ns);
    }
    char param[32];
    snprintf(param, sizeof param, "buffered=%zu", n);
    bench_figure("reorder", "insert_ns", "parley", param, res[0][0], "ns");
    bench_figure("reorder", "insert_ns", "linear", param, res[0][1], "ns");
  }

  double hit = 0, miss = 0, lookup = 0;
  double dedup = measure_dedup(tiny, &hit, &miss, &lookup);
  printf("dedup: %.1f ns per event (mixed; hits %.1f ns, misses %.1f ns; one conversation "
         "lookup pe_conv_find %.1f ns)\n",
         dedup, hit, miss, lookup);
  bench_figure("reorder", "dedup_ns", "parley", "", dedup, "ns");

  bench_note("reorder",
             "insert_ns: mean cost per event while a conversation's reorder buffer fills from 0 "
             "to N events in a shuffled order (fixed seed); parley goes through pe_on_deliver "
             "(lookups, contradiction check, binary search over sorted blocks of at most 64 "
             "events, packed copy, memmove within a block), linear is one flat sorted array "
             "of the same entries with a linear scan and a memmove of the tail. dedup_ns: pe_on_deliver for half duplicates "
             "(applied or held seq), half unheld early seqs refused for room; the engine "
             "detects duplicates by seq (next seq and binary search of the held events). "
             "Hits %.1f ns, misses %.1f ns; one pe_conv_find %.1f ns (one per event). "
             "Thread CPU time.",
             hit, miss, lookup);
  return 0;
}
