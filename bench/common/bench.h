/* What every benchmark in bench/ shares: how a figure is reported, clocks,
 * percentiles and process memory.
 *
 * A benchmark prints a readable table on standard output. Each figure is
 * also given to bench_figure(), which, when the environment variable
 * PARLEY_BENCH_JSON names a file, appends one JSON object per line to it:
 *
 *   {"bench":"codec","metric":"encode_decode_ns","subject":"parley",
 *    "param":"","value":812.5,"unit":"ns"}
 *
 * bench/report reads those lines, pairs Parley's figure with the peer's
 * figure of the same bench, metric and param from the same run, computes
 * the ratio and checks it against its target (bench/report.lua).
 *
 * Every benchmark accepts --tiny: a configuration small enough to finish in
 * seconds, used by CI to check that it runs, not to measure anything.
 */
#ifndef PARLEY_BENCH_H
#define PARLEY_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Records one figure. subject: "parley" or the peer's name ("cjson",
 * "mosquitto", "nats", "tcp", "sqlite", "node-ws", "linear", "c"...).
 * param: "" or a "key=value" string telling which point of a series this
 * is ("senders=16", "load=50%"). */
void bench_figure(const char *bench, const char *metric, const char *subject,
                  const char *param, double value, const char *unit);

/* A free-form note about the run shown in the report under the bench
 * ("mosquitto 2.0.11 on 127.0.0.1, persistence off"). */
void bench_note(const char *bench, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* True when argv holds --tiny. */
bool bench_tiny(int argc, char **argv);

/* Monotonic clock in nanoseconds. */
uint64_t bench_now_ns(void);

/* Sorts v (n values) in place and returns the p-th percentile (0..100) by
 * nearest rank. n == 0 gives 0. */
double bench_percentile(double *v, size_t n, double p);

/* Resident set size of a process in bytes (pid 0: this process), from
 * /proc/<pid>/status VmRSS; 0 when unknown. */
uint64_t bench_rss_bytes(int pid);

/* Keeps the compiler from removing a computation whose result is unused. */
#define BENCH_KEEP(x) __asm__ volatile("" : : "g"(x) : "memory")

#endif
