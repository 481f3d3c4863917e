/* Structured logging: one line per record, in text, JSON lines or logfmt.
 *
 * Every record has ts (RFC 3339 UTC with milliseconds), level and msg, and
 * optionally conversation and seq, then any key/value pairs. Values are
 * strings; numbers are passed as text. Bytes that are not valid UTF-8 are
 * replaced by U+FFFD in every format, and control characters are escaped,
 * so one record is always exactly one line.
 *
 *   text:   2026-11-28T07:51:58.123Z INFO  sent conversation=c1 seq=7 attempt=2
 *   json:   {"ts":"2026-11-28T07:51:58.123Z","level":"info","msg":"sent",
 *            "conversation":"c1","seq":7,"attempt":"2"}
 *   logfmt: ts=2026-11-28T07:51:58.123Z level=info msg=sent conversation=c1 seq=7 attempt=2
 *
 * A user key that clashes with a built-in one (ts, level, msg,
 * conversation, seq) is written with a leading underscore. Keys keep
 * [A-Za-z0-9_.-] and other bytes become '_'. Each value is cut at
 * PLOG_MAX_VALUE bytes (marked with "..."), and at most PLOG_MAX_KV pairs
 * are written.
 *
 * Threading: a logger may be shared by threads. A record is formatted into
 * its own buffer and written with one fwrite under the stream's lock, then
 * flushed, so lines never interleave. Changing the level while others log
 * is a benign race on one int.
 */
#ifndef PARLEY_OPS_LOG_H
#define PARLEY_OPS_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct plog_logger plog_logger;

enum plog_level { PLOG_DEBUG = 0, PLOG_INFO = 1, PLOG_WARN = 2, PLOG_ERROR = 3 };
enum plog_format { PLOG_TEXT = 0, PLOG_JSON = 1, PLOG_LOGFMT = 2 };

#define PLOG_MAX_VALUE 4096u
#define PLOG_MAX_KV 32u

typedef struct plog_kv {
  const char *key;
  const char *value; /* NULL is written as an empty value (JSON null) */
} plog_kv;

/* A logger writing to out (borrowed; not closed by plog_free). Returns NULL
 * on a bad format or level, or out of memory. */
plog_logger *plog_new(FILE *out, int format, int min_level);
void plog_free(plog_logger *l);
void plog_set_level(plog_logger *l, int min_level);
bool plog_enabled(const plog_logger *l, int level);
/* Replaces the clock (milliseconds since the Unix epoch), for tests. */
void plog_set_clock(plog_logger *l, int64_t (*now_ms)(void *ud), void *ud);

/* "debug", "info", "warn"/"warning", "error" -> level; "text", "json",
 * "logfmt" -> format. Return 0 or PARLEY_EINVAL. */
int plog_parse_level(const char *s, int *level);
int plog_parse_format(const char *s, int *format);
const char *plog_level_name(int level);

/* A record with key/value pairs given as const char * arguments, key then
 * value, ending with a NULL key:
 *   plog_log(l, PLOG_INFO, "sent", "attempt", "2", NULL); */
void plog_log(plog_logger *l, int level, const char *msg, ...);
/* The same about one conversation; conversation may be NULL and seq 0 for
 * "none". */
void plog_conv(plog_logger *l, int level, const char *conversation, uint64_t seq,
               const char *msg, ...);
void plog_vlog(plog_logger *l, int level, const char *conversation, uint64_t seq,
               const char *msg, va_list ap);
/* The same with an array, for bridges (the Lua runtime). */
void plog_kvs(plog_logger *l, int level, const char *conversation, uint64_t seq,
              const char *msg, const plog_kv *kv, size_t n);

/* Writes one record to out without a long-lived logger (for callers that
 * keep only a stream, a format and a level of their own). */
void plog_write(FILE *out, int format, int level, const char *conversation, uint64_t seq,
                const char *msg, const plog_kv *kv, size_t n);

/* Formats one record without writing it: malloc'd line ending in '\n'.
 * NULL when out of memory. Used by plog_kvs and by tests. */
char *plog_format(const plog_logger *l, int level, int64_t ts_ms, const char *conversation,
                  uint64_t seq, const char *msg, const plog_kv *kv, size_t n);

#endif /* PARLEY_OPS_LOG_H */
