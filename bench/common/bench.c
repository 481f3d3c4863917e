#include "bench.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Writes s as a JSON string body: the names and notes are ours, but a note
 * may quote a peer's version string, so quotes and control bytes are
 * escaped rather than trusted. */
static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; s && *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c < 0x20) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
}

static FILE *json_out(void) {
  const char *path = getenv("PARLEY_BENCH_JSON");
  if (!path || !*path) return NULL;
  FILE *f = fopen(path, "a");
  if (!f) fprintf(stderr, "bench: cannot append to %s\n", path);
  return f;
}

void bench_figure(const char *bench, const char *metric, const char *subject,
                  const char *param, double value, const char *unit) {
  FILE *f = json_out();
  if (!f) return;
  fputs("{\"bench\":", f);
  json_str(f, bench);
  fputs(",\"metric\":", f);
  json_str(f, metric);
  fputs(",\"subject\":", f);
  json_str(f, subject);
  fputs(",\"param\":", f);
  json_str(f, param ? param : "");
  fprintf(f, ",\"value\":%.6g,\"unit\":", value);
  json_str(f, unit);
  fputs("}\n", f);
  fclose(f);
}

void bench_note(const char *bench, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  printf("note: %s\n", buf);
  FILE *f = json_out();
  if (!f) return;
  fputs("{\"bench\":", f);
  json_str(f, bench);
  fputs(",\"note\":", f);
  json_str(f, buf);
  fputs("}\n", f);
  fclose(f);
}

bool bench_tiny(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--tiny")) return true;
  return false;
}

uint64_t bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double bench_percentile(double *v, size_t n, double p) {
  if (n == 0) return 0;
  qsort(v, n, sizeof *v, cmp_double);
  /* Nearest rank: the smallest value with at least p% of values at or
   * below it. */
  size_t rank = (size_t)((p / 100.0) * (double)n + 0.999999);
  if (rank < 1) rank = 1;
  if (rank > n) rank = n;
  return v[rank - 1];
}

uint64_t bench_rss_bytes(int pid) {
  char path[64], line[256];
  if (pid > 0) snprintf(path, sizeof path, "/proc/%d/status", pid);
  else snprintf(path, sizeof path, "/proc/self/status");
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  uint64_t kb = 0;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, "VmRSS:", 6)) {
      kb = strtoull(line + 6, NULL, 10);
      break;
    }
  fclose(f);
  return kb * 1024;
}
