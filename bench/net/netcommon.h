/* What the network benchmarks share: child processes (gateway, brokers)
 * that are killed at exit whatever happens, temporary directories removed
 * at exit, free ports, a gateway configuration with N customers, and a
 * driver that runs N libparley customer clients on one libuv loop, each
 * keeping one send in flight in its own conversation. */
#ifndef PARLEY_BENCH_NETCOMMON_H
#define PARLEY_BENCH_NETCOMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proc.h"

/* The message text every side sends: 200 printable bytes and a NUL. */
#define BN_PAYLOAD_LEN 200
extern const char bn_payload[BN_PAYLOAD_LEN + 1];

/* Prints "bench: message" on stderr and exits 1; the exit handler kills the
 * children and removes the temporary directories. */
void bn_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Copies the last 2 KiB of a log file to stderr (a child's log is in a
 * temporary directory that the exit removes). */
void bn_print_log(const char *path);

/* The first of the given paths that is an executable file, or NULL. */
const char *bn_find_exe(const char *const *paths);

/* Installs the exit and signal handlers. Call first in main. */
void bn_init(const char *prog);

/* A new directory under /tmp removed at exit (or by bn_tmpdir_remove). */
void bn_tmpdir(char *out, size_t size, const char *tag);
void bn_tmpdir_remove(const char *dir);

/* A port on 127.0.0.1 that was free a moment ago (bind port 0, read it,
 * close). */
int bn_free_port(void);

/* Starts argv with its stderr appended to log_path; the process is killed
 * at exit unless bn_proc_stop reaped it first. */
void bn_proc_start(tproc *p, char *const argv[], const char *log_path);
/* SIGTERM, up to timeout_ms for it to exit, then SIGKILL. Returns the exit
 * status (0 clean) or -1 when it had to be killed. */
int bn_proc_stop(tproc *p, int timeout_ms);
/* Waits until something accepts TCP connections on 127.0.0.1:port, at most
 * timeout_ms; false when nothing does or the process died. */
bool bn_wait_port(tproc *p, int port, int timeout_ms);

/* Starts `parley gateway` in dir (config dir/gateway.yaml, data dir/data,
 * log dir/gateway.log) with the given durability ("full", "normal"), group
 * commit on and customers cust0..cust<n-1> with tokens tok-cust<i>.
 * Returns its port; fails the benchmark when it does not come up. */
int bn_gateway_start(tproc *p, const char *dir, const char *durability, int customers);

/* One run of the libparley driver. */
typedef struct bn_drive {
  /* in */
  const char *url;
  int clients;             /* customers cust0.., each in conversation <tag>-<i> */
  const char *tag;         /* conversation name prefix, unique per run and gateway */
  /* Count mode (warmup_count or measure_count > 0): warm-up sends, then
   * measured sends, in total across clients. Time mode otherwise. */
  size_t warmup_count, measure_count;
  uint64_t warmup_ns, measure_ns;
  double *samples;         /* when not NULL: latency in us of each measured send */
  size_t max_samples;
  /* out */
  size_t measured;         /* acknowledged sends in the measured part */
  size_t total;            /* acknowledged sends in all */
  size_t n_samples;
  uint64_t elapsed_ns;     /* length of the measured part */
  uint64_t connect_ns;     /* until every client was READY */
} bn_drive;

/* Connects every client, sends until the run ends, checks every result
 * (status 0, not a duplicate, one attempt, seqs increasing per
 * conversation), stops the clients. Fails the benchmark on any error. */
void bn_drive_run(bn_drive *d);

#endif
