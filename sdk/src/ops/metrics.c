/* Metrics registry and Prometheus text rendering (exposition format
 * 0.0.4). See metrics.h. */
#include "ops/metrics.h"

#include <parley/error.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/obuf.h"

/* The rendering never grows past this: a registry within the limits of
 * metrics.h stays far below it. */
#define PMET_MAX_RENDER (32u * 1024u * 1024u)

typedef struct pmet_family {
  char *name;
  char *help;
  pmet_type type;
  double *bounds; /* histograms: the family's bucket bounds */
  size_t n_bounds;
  pmet_metric *series[PMET_MAX_SERIES];
  size_t n_series;
} pmet_family;

struct pmet_metric {
  pmet_family *fam;
  pmet_label *labels; /* copied names and values */
  size_t n_labels;
  double value;       /* counter, gauge */
  pmet_gauge_fn fn;   /* callback gauge */
  void *ud;
  uint64_t *buckets;  /* histogram: per-bucket (not cumulative) counts, +Inf last */
  uint64_t count;
  double sum;
};

struct pmet_registry {
  pmet_family *fams[PMET_MAX_FAMILIES];
  size_t n;
};

const double pmet_latency_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                       0.1,   0.25,   0.5,   1,    2.5,   5, 10};
const size_t pmet_latency_buckets_n = sizeof pmet_latency_buckets / sizeof pmet_latency_buckets[0];

pmet_registry *pmet_registry_new(void) { return calloc(1, sizeof(pmet_registry)); }

static void metric_free(pmet_metric *m) {
  for (size_t i = 0; i < m->n_labels; i++) {
    free((char *)m->labels[i].name);
    free((char *)m->labels[i].value);
  }
  free(m->labels);
  free(m->buckets);
  free(m);
}

void pmet_registry_free(pmet_registry *r) {
  if (!r) return;
  for (size_t i = 0; i < r->n; i++) {
    pmet_family *f = r->fams[i];
    for (size_t j = 0; j < f->n_series; j++) metric_free(f->series[j]);
    free(f->name);
    free(f->help);
    free(f->bounds);
    free(f);
  }
  free(r);
}

static bool valid_metric_name(const char *s) {
  if (!s || !*s) return false;
  for (size_t i = 0; s[i]; i++) {
    char c = s[i];
    bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

static bool valid_label_name(const char *s) {
  if (!s || !*s || strncmp(s, "__", 2) == 0) return false;
  for (size_t i = 0; s[i]; i++) {
    char c = s[i];
    bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

static bool labels_equal(const pmet_metric *m, const pmet_label *l, size_t n) {
  if (m->n_labels != n) return false;
  for (size_t i = 0; i < n; i++)
    if (strcmp(m->labels[i].name, l[i].name) != 0 || strcmp(m->labels[i].value, l[i].value) != 0)
      return false;
  return true;
}

static bool check_labels(pmet_type type, const pmet_label *l, size_t n) {
  if (n > PMET_MAX_LABELS || (n && !l)) return false;
  for (size_t i = 0; i < n; i++) {
    if (!valid_label_name(l[i].name) || !l[i].value) return false;
    if (strlen(l[i].value) > PMET_MAX_LABEL_VALUE) return false;
    /* "le" is how histogram buckets are told apart. */
    if (type == PMET_HISTOGRAM && strcmp(l[i].name, "le") == 0) return false;
    for (size_t j = 0; j < i; j++)
      if (strcmp(l[i].name, l[j].name) == 0) return false;
  }
  return true;
}

static pmet_family *find_family(pmet_registry *r, const char *name) {
  for (size_t i = 0; i < r->n; i++)
    if (strcmp(r->fams[i]->name, name) == 0) return r->fams[i];
  return NULL;
}

static bool same_bounds(const pmet_family *f, const double *b, size_t n) {
  if (f->n_bounds != n) return false;
  for (size_t i = 0; i < n; i++)
    if (f->bounds[i] != b[i]) return false;
  return true;
}

static pmet_metric *do_register(pmet_registry *r, pmet_type type, const char *name,
                                const char *help, const pmet_label *labels, size_t n_labels,
                                const double *bounds, size_t n_bounds) {
  if (!r || !valid_metric_name(name) || !check_labels(type, labels, n_labels)) return NULL;
  if (help && strlen(help) > PMET_MAX_HELP) return NULL;
  if (type == PMET_HISTOGRAM) {
    if (!bounds || n_bounds == 0 || n_bounds > PMET_MAX_BUCKETS) return NULL;
    for (size_t i = 0; i < n_bounds; i++)
      if (!isfinite(bounds[i]) || (i && bounds[i] <= bounds[i - 1])) return NULL;
  }
  pmet_family *f = find_family(r, name);
  if (f) {
    if (f->type != type) return NULL;
    if (type == PMET_HISTOGRAM && !same_bounds(f, bounds, n_bounds)) return NULL;
    for (size_t i = 0; i < f->n_series; i++)
      if (labels_equal(f->series[i], labels, n_labels)) return f->series[i];
    if (f->n_series >= PMET_MAX_SERIES) return NULL;
  } else {
    if (r->n >= PMET_MAX_FAMILIES) return NULL;
    f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    f->type = type;
    if (type == PMET_HISTOGRAM) {
      f->bounds = malloc(n_bounds * sizeof *bounds);
      if (f->bounds) memcpy(f->bounds, bounds, n_bounds * sizeof *bounds);
      f->n_bounds = n_bounds;
    }
    if (!f->name || !f->help || (type == PMET_HISTOGRAM && !f->bounds)) {
      free(f->name);
      free(f->help);
      free(f->bounds);
      free(f);
      return NULL;
    }
    r->fams[r->n++] = f;
  }
  pmet_metric *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  m->fam = f;
  bool ok = true;
  if (n_labels) {
    m->labels = calloc(n_labels, sizeof *m->labels);
    ok = m->labels != NULL;
    for (size_t i = 0; ok && i < n_labels; i++) {
      m->labels[i].name = strdup(labels[i].name);
      m->labels[i].value = strdup(labels[i].value);
      m->n_labels = i + 1;
      ok = m->labels[i].name && m->labels[i].value;
    }
  }
  if (ok && type == PMET_HISTOGRAM) {
    m->buckets = calloc(f->n_bounds + 1, sizeof *m->buckets);
    ok = m->buckets != NULL;
  }
  if (!ok) {
    metric_free(m);
    return NULL;
  }
  f->series[f->n_series++] = m;
  return m;
}

pmet_metric *pmet_counter(pmet_registry *r, const char *name, const char *help,
                          const pmet_label *labels, size_t n_labels) {
  return do_register(r, PMET_COUNTER, name, help, labels, n_labels, NULL, 0);
}

pmet_metric *pmet_gauge(pmet_registry *r, const char *name, const char *help,
                        const pmet_label *labels, size_t n_labels) {
  return do_register(r, PMET_GAUGE, name, help, labels, n_labels, NULL, 0);
}

pmet_metric *pmet_gauge_cb(pmet_registry *r, const char *name, const char *help,
                           const pmet_label *labels, size_t n_labels, pmet_gauge_fn fn,
                           void *ud) {
  if (!fn) return NULL;
  pmet_metric *m = do_register(r, PMET_GAUGE, name, help, labels, n_labels, NULL, 0);
  if (m) {
    m->fn = fn;
    m->ud = ud;
  }
  return m;
}

pmet_metric *pmet_histogram(pmet_registry *r, const char *name, const char *help,
                            const pmet_label *labels, size_t n_labels, const double *bounds,
                            size_t n_bounds) {
  return do_register(r, PMET_HISTOGRAM, name, help, labels, n_labels, bounds, n_bounds);
}

void pmet_inc(pmet_metric *m) { pmet_add(m, 1); }

void pmet_add(pmet_metric *m, double v) {
  /* A counter only goes up; a negative or NaN step is a caller bug that
   * must not make the series go backwards. */
  if (m && m->fam->type == PMET_COUNTER && v >= 0) m->value += v;
}

void pmet_counter_set(pmet_metric *m, double v) {
  if (m && m->fam->type == PMET_COUNTER && v >= 0) m->value = v;
}

void pmet_set(pmet_metric *m, double v) {
  if (m && m->fam->type == PMET_GAUGE) m->value = v;
}

void pmet_observe(pmet_metric *m, double v) {
  if (!m || m->fam->type != PMET_HISTOGRAM || isnan(v)) return;
  size_t i = 0;
  while (i < m->fam->n_bounds && v > m->fam->bounds[i]) i++;
  m->buckets[i]++;
  m->count++;
  m->sum += v;
}

double pmet_value(const pmet_metric *m) {
  if (!m) return 0;
  if (m->fam->type == PMET_HISTOGRAM) return m->sum;
  if (m->fn) return m->fn(m->ud);
  return m->value;
}

uint64_t pmet_count(const pmet_metric *m) {
  return m && m->fam->type == PMET_HISTOGRAM ? m->count : 0;
}

void pmet_format_value(double v, char buf[32]) {
  if (isnan(v)) {
    strcpy(buf, "NaN");
    return;
  }
  if (isinf(v)) {
    strcpy(buf, v > 0 ? "+Inf" : "-Inf");
    return;
  }
  /* Whole numbers (every counter) print as integers, never as "9e+02". */
  if (v == floor(v) && fabs(v) < 9007199254740992.0) {
    snprintf(buf, 32, "%.0f", v);
    return;
  }
  /* Otherwise the shortest precision that reads back as the same double,
   * so 0.1 renders as "0.1" and not "0.10000000000000001". */
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(buf, 32, "%.*g", prec, v);
    if (strtod(buf, NULL) == v) return;
  }
}

/* Label values escape backslash, double quote and newline; HELP text
 * escapes backslash and newline (exposition format 0.0.4). */
static void escape(pob_buf *b, const char *s, bool quote) {
  for (; *s; s++) {
    if (*s == '\\') pob_puts(b, "\\\\");
    else if (*s == '\n') pob_puts(b, "\\n");
    else if (quote && *s == '"') pob_puts(b, "\\\"");
    else pob_putc(b, *s);
  }
}

static void put_labels(pob_buf *b, const pmet_metric *m, const char *le) {
  if (!m->n_labels && !le) return;
  pob_putc(b, '{');
  for (size_t i = 0; i < m->n_labels; i++) {
    if (i) pob_putc(b, ',');
    pob_puts(b, m->labels[i].name);
    pob_puts(b, "=\"");
    escape(b, m->labels[i].value, true);
    pob_putc(b, '"');
  }
  if (le) {
    if (m->n_labels) pob_putc(b, ',');
    pob_printf(b, "le=\"%s\"", le);
  }
  pob_putc(b, '}');
}

static void put_sample(pob_buf *b, const char *name, const char *suffix, const pmet_metric *m,
                       const char *le, double v) {
  char num[32];
  pmet_format_value(v, num);
  pob_puts(b, name);
  pob_puts(b, suffix);
  put_labels(b, m, le);
  pob_putc(b, ' ');
  pob_puts(b, num);
  pob_putc(b, '\n');
}

int pmet_render(const pmet_registry *r, char **out, size_t *len) {
  static const char *const type_names[] = {"", "counter", "gauge", "histogram"};
  pob_buf b;
  pob_init(&b, PMET_MAX_RENDER);
  for (size_t i = 0; r && i < r->n; i++) {
    const pmet_family *f = r->fams[i];
    if (f->help[0]) {
      pob_printf(&b, "# HELP %s ", f->name);
      escape(&b, f->help, false);
      pob_putc(&b, '\n');
    }
    pob_printf(&b, "# TYPE %s %s\n", f->name, type_names[f->type]);
    for (size_t j = 0; j < f->n_series; j++) {
      const pmet_metric *m = f->series[j];
      if (f->type != PMET_HISTOGRAM) {
        put_sample(&b, f->name, "", m, NULL, pmet_value(m));
        continue;
      }
      uint64_t cum = 0;
      char le[32];
      for (size_t k = 0; k < f->n_bounds; k++) {
        cum += m->buckets[k];
        pmet_format_value(f->bounds[k], le);
        put_sample(&b, f->name, "_bucket", m, le, (double)cum);
      }
      put_sample(&b, f->name, "_bucket", m, "+Inf", (double)m->count);
      put_sample(&b, f->name, "_sum", m, NULL, m->sum);
      put_sample(&b, f->name, "_count", m, NULL, (double)m->count);
    }
  }
  char *d = pob_take(&b, len);
  if (!d) return PARLEY_ENOMEM;
  *out = d;
  return 0;
}

/* ---- the runtime's metric set ----------------------------------------- */

int pmet_parley_register(pmet_registry *r, pmet_parley *m) {
  memset(m, 0, sizeof *m);
#define C(field, name, help) \
  if (!(m->field = pmet_counter(r, name, help, NULL, 0))) return PARLEY_EINVAL
#define G(field, name, help) \
  if (!(m->field = pmet_gauge(r, name, help, NULL, 0))) return PARLEY_EINVAL
#define H(field, name, help)                                                           \
  if (!(m->field = pmet_histogram(r, name, help, NULL, 0, pmet_latency_buckets,        \
                                  pmet_latency_buckets_n)))                            \
  return PARLEY_EINVAL
  C(events_in, "parley_events_in_total", "Inbound events delivered to the application, once each, in order.");
  C(events_out, "parley_events_out_total", "Messages and actions the gateway stored and acknowledged.");
  C(sends, "parley_sends_total", "Messages and actions queued for sending (each counted once, however often it is resent).");
  C(send_retries, "parley_send_retries_total", "Resends of a message after its ACK did not arrive in time.");
  C(send_failures, "parley_send_failures_total", "Sends that failed for good (attempts or deadline exhausted, or refused).");
  C(duplicates_dropped, "parley_duplicates_dropped_total", "Inbound events dropped because their seq was already delivered.");
  C(gaps_fetched, "parley_gaps_fetched_total", "Fetch requests sent to fill a gap in a conversation's seq.");
  C(reconnects, "parley_reconnects_total", "Reconnections to the gateway after the connection was lost.");
  C(commits, "parley_commits_total", "Commits (handled events with state changes) acknowledged by the gateway.");
  H(ack_latency, "parley_ack_latency_seconds", "Time from the first write of a send to its ACK.");
  H(handler_latency, "parley_handler_latency_seconds", "Time a bot handler took for one event, from start to commit.");
  C(handler_errors, "parley_handler_errors_total", "Bot handlers that raised an error.");
  C(handler_budget_kills, "parley_handler_budget_kills_total", "Bot handlers abandoned for exceeding their CPU or memory budget.");
  G(reorder_buffer_events, "parley_reorder_buffer_events", "Early events held until the gap before them is filled.");
  G(reorder_buffer_bytes, "parley_reorder_buffer_bytes", "Bytes of early events held in the reorder buffers.");
  G(outbox_size, "parley_outbox_size", "Sends waiting for their ACK.");
  G(connected, "parley_connected", "1 while connected to the gateway and resumed, else 0.");
#undef C
#undef G
#undef H
  return 0;
}

void pmet_parley_update(pmet_parley *m, const parley_client_stats *st) {
  pmet_counter_set(m->events_in, (double)st->events_in);
  pmet_counter_set(m->events_out, (double)st->events_out);
  pmet_counter_set(m->sends, (double)st->sends);
  pmet_counter_set(m->send_retries, (double)st->retries);
  pmet_counter_set(m->send_failures, (double)st->send_failures);
  pmet_counter_set(m->duplicates_dropped, (double)st->duplicates_dropped);
  pmet_counter_set(m->gaps_fetched, (double)st->gaps_fetched);
  pmet_counter_set(m->reconnects, (double)st->reconnects);
  pmet_counter_set(m->commits, (double)st->commits);
  pmet_set(m->reorder_buffer_events, (double)st->reorder_events);
  pmet_set(m->reorder_buffer_bytes, (double)st->reorder_bytes);
  pmet_set(m->outbox_size, (double)st->outbox_size);
}

void pmet_parley_fill(pmet_parley *m, const parley_client *c) {
  parley_client_stats st;
  memset(&st, 0, sizeof st);
  if (c) parley_client_stats_get(c, &st);
  pmet_parley_update(m, &st);
  pmet_set(m->connected, c && parley_client_state(c) == PARLEY_CONN_READY ? 1 : 0);
}
