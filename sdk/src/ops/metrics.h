/* A tiny metrics registry rendered in the Prometheus text exposition
 * format, version 0.0.4.
 *
 * A registry holds metric families (one name, one type, one help text);
 * each family holds one or more series, each with a fixed label set given
 * when it is registered. Registering the same name and labels again returns
 * the same metric, so independent parts of a program may register what they
 * use. Registering a name again with another type, or with labels the
 * family cannot take, fails (NULL).
 *
 * Threading: a registry and its metrics belong to one thread (the loop's):
 * updates and rendering are plain reads and writes, with no locks.
 *
 * Ownership: names, help texts, label names and values are copied at
 * registration. Metrics are freed with their registry.
 */
#ifndef PARLEY_OPS_METRICS_H
#define PARLEY_OPS_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <parley/client.h>

typedef struct pmet_registry pmet_registry;
typedef struct pmet_metric pmet_metric;

/* Hard limits; registration beyond them fails. */
#define PMET_MAX_FAMILIES 256u
#define PMET_MAX_SERIES 128u      /* per family */
#define PMET_MAX_LABELS 8u        /* per series */
#define PMET_MAX_BUCKETS 32u      /* per histogram, +Inf not counted */
#define PMET_MAX_LABEL_VALUE 256u /* bytes */
#define PMET_MAX_HELP 1024u       /* bytes */

typedef enum pmet_type {
  PMET_COUNTER = 1,
  PMET_GAUGE = 2,
  PMET_HISTOGRAM = 3,
} pmet_type;

typedef struct pmet_label {
  const char *name;  /* [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__" */
  const char *value; /* any UTF-8; escaped when rendered */
} pmet_label;

/* A gauge whose value is read when the registry is rendered. */
typedef double (*pmet_gauge_fn)(void *ud);

/* Bucket bounds, in seconds, for ACK and handler latencies: 1 ms to 10 s. */
extern const double pmet_latency_buckets[];
extern const size_t pmet_latency_buckets_n;

pmet_registry *pmet_registry_new(void);
void pmet_registry_free(pmet_registry *r);

/* Registration. name matches [a-zA-Z_:][a-zA-Z0-9_:]*; help may be NULL.
 * labels may be NULL when n_labels is 0. Returns the metric or NULL (bad
 * name or label, type clash, limit reached, out of memory). */
pmet_metric *pmet_counter(pmet_registry *r, const char *name, const char *help,
                          const pmet_label *labels, size_t n_labels);
pmet_metric *pmet_gauge(pmet_registry *r, const char *name, const char *help,
                        const pmet_label *labels, size_t n_labels);
/* A gauge read through fn at render time; fn runs on the rendering thread. */
pmet_metric *pmet_gauge_cb(pmet_registry *r, const char *name, const char *help,
                           const pmet_label *labels, size_t n_labels,
                           pmet_gauge_fn fn, void *ud);
/* bounds: strictly increasing finite upper bounds; +Inf is added. Every
 * series of one histogram family must use the same bounds. */
pmet_metric *pmet_histogram(pmet_registry *r, const char *name, const char *help,
                            const pmet_label *labels, size_t n_labels,
                            const double *bounds, size_t n_bounds);

/* Updates. Each is a no-op on NULL or on a metric of another type, so a
 * failed registration never crashes the code that counts. */
void pmet_inc(pmet_metric *m);                /* counter += 1 */
void pmet_add(pmet_metric *m, double v);      /* counter += v (v >= 0) */
/* A counter mirrored from another monotonic source (client stats): the
 * value is replaced. */
void pmet_counter_set(pmet_metric *m, double v);
void pmet_set(pmet_metric *m, double v);      /* gauge = v */
void pmet_observe(pmet_metric *m, double v);  /* histogram */
double pmet_value(const pmet_metric *m);      /* counter/gauge; histogram: sum */
uint64_t pmet_count(const pmet_metric *m);    /* histogram observations */

/* Renders every family, in registration order, with HELP and TYPE lines.
 * *out is malloc'd and NUL-terminated; *len excludes the NUL. Returns 0 or
 * PARLEY_ENOMEM. */
int pmet_render(const pmet_registry *r, char **out, size_t *len);

/* The Content-Type of the rendering. */
#define PMET_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* The runtime's metrics (names in docs/operations.md). */
typedef struct pmet_parley {
  /* Mirrored from parley_client_stats by pmet_parley_update. */
  pmet_metric *events_in, *events_out, *sends, *send_retries, *send_failures;
  pmet_metric *duplicates_dropped, *gaps_fetched, *reconnects, *commits;
  pmet_metric *reorder_buffer_events, *reorder_buffer_bytes, *outbox_size;
  /* Set by the runtime itself. */
  pmet_metric *connected;
  pmet_metric *ack_latency, *handler_latency; /* histograms, seconds */
  pmet_metric *handler_errors, *handler_budget_kills;
} pmet_parley;

/* Registers all of the above in r. Returns 0 or PARLEY_ENOMEM/EINVAL. */
int pmet_parley_register(pmet_registry *r, pmet_parley *m);
/* Copies the client-derived counters and gauges from st. */
void pmet_parley_update(pmet_parley *m, const parley_client_stats *st);
/* Reads the client's stats and state (connected = READY) and updates. */
void pmet_parley_fill(pmet_parley *m, const parley_client *c);

/* Formats a sample value as Prometheus expects: shortest round-trip
 * decimal, "+Inf", "-Inf" or "NaN". buf must hold 32 bytes. */
void pmet_format_value(double v, char buf[32]);

#endif /* PARLEY_OPS_METRICS_H */
