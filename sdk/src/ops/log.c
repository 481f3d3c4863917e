/* Structured logger: text, JSON lines and logfmt. See log.h. */
#include "ops/log.h"

#include <parley/error.h>

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "ops/obuf.h"
#include "util/clock.h"

/* The longest line a record can produce stays well under this (values and
 * the message are cut, pairs are capped); it is the buffer's hard maximum. */
#define PLOG_MAX_LINE (1024u * 1024u)
#define PLOG_MAX_KEY 64u

struct plog_logger {
  FILE *out;
  int format;
  int min_level;
  int64_t (*now_ms)(void *ud);
  void *clock_ud;
};

static int64_t realtime_ms(void *ud) {
  (void)ud;
  return pu_wall_ms();
}

plog_logger *plog_new(FILE *out, int format, int min_level) {
  if (!out || format < PLOG_TEXT || format > PLOG_LOGFMT || min_level < PLOG_DEBUG ||
      min_level > PLOG_ERROR)
    return NULL;
  plog_logger *l = calloc(1, sizeof *l);
  if (!l) return NULL;
  l->out = out;
  l->format = format;
  l->min_level = min_level;
  l->now_ms = realtime_ms;
  return l;
}

void plog_free(plog_logger *l) { free(l); }

void plog_set_level(plog_logger *l, int min_level) {
  if (l && min_level >= PLOG_DEBUG && min_level <= PLOG_ERROR) l->min_level = min_level;
}

bool plog_enabled(const plog_logger *l, int level) { return l && level >= l->min_level; }

void plog_set_clock(plog_logger *l, int64_t (*now_ms)(void *ud), void *ud) {
  if (!l) return;
  l->now_ms = now_ms ? now_ms : realtime_ms;
  l->clock_ud = ud;
}

int plog_parse_level(const char *s, int *level) {
  static const struct { const char *name; int level; } map[] = {
      {"debug", PLOG_DEBUG}, {"info", PLOG_INFO},   {"warn", PLOG_WARN},
      {"warning", PLOG_WARN}, {"error", PLOG_ERROR},
  };
  for (size_t i = 0; s && i < sizeof map / sizeof map[0]; i++)
    if (strcasecmp(s, map[i].name) == 0) {
      *level = map[i].level;
      return 0;
    }
  return PARLEY_EINVAL;
}

int plog_parse_format(const char *s, int *format) {
  if (!s) return PARLEY_EINVAL;
  if (strcasecmp(s, "text") == 0) *format = PLOG_TEXT;
  else if (strcasecmp(s, "json") == 0) *format = PLOG_JSON;
  else if (strcasecmp(s, "logfmt") == 0) *format = PLOG_LOGFMT;
  else return PARLEY_EINVAL;
  return 0;
}

const char *plog_level_name(int level) {
  switch (level) {
    case PLOG_DEBUG: return "debug";
    case PLOG_INFO: return "info";
    case PLOG_WARN: return "warn";
    case PLOG_ERROR: return "error";
    default: return "unknown";
  }
}

/* ---- formatting pieces ------------------------------------------------- */

static void put_ts(pob_buf *b, int64_t ms) {
  time_t sec = (time_t)(ms / 1000);
  int frac = (int)(ms % 1000);
  if (frac < 0) {
    frac += 1000;
    sec -= 1;
  }
  struct tm tm;
  gmtime_r(&sec, &tm);
  pob_printf(b, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
}

/* Cuts a value at PLOG_MAX_VALUE bytes, on a UTF-8 boundary when the text
 * is valid there, and says whether it was cut. */
static size_t cut_len(const char *s, bool *cut) {
  size_t n = strlen(s);
  *cut = n > PLOG_MAX_VALUE;
  if (!*cut) return n;
  n = PLOG_MAX_VALUE;
  while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
  return n;
}

/* Does a logfmt value need quotes? Empty values, spaces, '=', quotes,
 * backslashes, control characters and invalid UTF-8 all do. */
static bool logfmt_needs_quotes(const char *s, size_t n) {
  if (n == 0) return true;
  const unsigned char *p = (const unsigned char *)s;
  for (size_t i = 0; i < n;) {
    unsigned char ch = p[i];
    if (ch <= 0x20 || ch == '=' || ch == '"' || ch == '\\' || ch == 0x7F) return true;
    if (ch >= 0x80) {
      unsigned cp;
      size_t k = pob_utf8_decode(p + i, n - i, &cp);
      if (k == 0) return true;
      i += k;
    } else {
      i++;
    }
  }
  return false;
}

/* A logfmt value: bare when safe, otherwise a quoted string with the same
 * escapes as JSON. */
static void put_logfmt_value(pob_buf *b, const char *v) {
  if (!v) v = "";
  bool cut;
  size_t n = cut_len(v, &cut);
  if (!cut && !logfmt_needs_quotes(v, n)) {
    pob_append(b, v, n);
    return;
  }
  pob_putc(b, '"');
  pob_json_escape(b, v, n);
  if (cut) pob_puts(b, "...");
  pob_putc(b, '"');
}

static void put_json_value(pob_buf *b, const char *v) {
  if (!v) {
    pob_puts(b, "null");
    return;
  }
  bool cut;
  size_t n = cut_len(v, &cut);
  pob_putc(b, '"');
  pob_json_escape(b, v, n);
  if (cut) pob_puts(b, "...");
  pob_putc(b, '"');
}

/* Text messages are for people: quotes stay as they are, but control
 * characters are escaped so the record stays on one line. */
static void put_text_msg(pob_buf *b, const char *s) {
  bool cut;
  size_t n = cut_len(s, &cut);
  const unsigned char *p = (const unsigned char *)s;
  for (size_t i = 0; i < n;) {
    unsigned char ch = p[i];
    if (ch >= 0x80) {
      unsigned cp;
      size_t k = pob_utf8_decode(p + i, n - i, &cp);
      if (k == 0) {
        pob_append(b, "\xEF\xBF\xBD", 3);
        i++;
      } else {
        pob_append(b, s + i, k);
        i += k;
      }
      continue;
    }
    if (ch == '\n') pob_puts(b, "\\n");
    else if (ch == '\r') pob_puts(b, "\\r");
    else if (ch == '\t') pob_puts(b, "\\t");
    else if (ch < 0x20 || ch == 0x7F) pob_printf(b, "\\x%02x", ch);
    else pob_putc(b, (char)ch);
    i++;
  }
  if (cut) pob_puts(b, "...");
}

static bool reserved_key(const char *k) {
  static const char *const names[] = {"ts", "level", "msg", "conversation", "seq"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcmp(k, names[i]) == 0) return true;
  return false;
}

/* Keys are kept to a safe alphabet so that no format needs to quote them. */
static void clean_key(const char *k, char out[PLOG_MAX_KEY + 2]) {
  size_t o = 0;
  if (!k || !*k) k = "_";
  if (reserved_key(k)) out[o++] = '_';
  for (; *k && o < PLOG_MAX_KEY + 1; k++) {
    char c = *k;
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-';
    out[o++] = ok ? c : '_';
  }
  out[o] = '\0';
}

char *plog_format(const plog_logger *l, int level, int64_t ts_ms, const char *conversation,
                  uint64_t seq, const char *msg, const plog_kv *kv, size_t n) {
  pob_buf b;
  pob_init(&b, PLOG_MAX_LINE);
  if (!msg) msg = "";
  if (n > PLOG_MAX_KV) n = PLOG_MAX_KV;
  char key[PLOG_MAX_KEY + 2];
  switch (l->format) {
    case PLOG_JSON:
      pob_puts(&b, "{\"ts\":\"");
      put_ts(&b, ts_ms);
      pob_printf(&b, "\",\"level\":\"%s\",\"msg\":", plog_level_name(level));
      put_json_value(&b, msg);
      if (conversation) {
        pob_puts(&b, ",\"conversation\":");
        put_json_value(&b, conversation);
      }
      if (seq) pob_printf(&b, ",\"seq\":%llu", (unsigned long long)seq);
      for (size_t i = 0; i < n; i++) {
        clean_key(kv[i].key, key);
        pob_printf(&b, ",\"%s\":", key);
        put_json_value(&b, kv[i].value);
      }
      pob_puts(&b, "}\n");
      break;
    case PLOG_LOGFMT:
      pob_puts(&b, "ts=");
      put_ts(&b, ts_ms);
      pob_printf(&b, " level=%s msg=", plog_level_name(level));
      put_logfmt_value(&b, msg);
      goto pairs;
    default: {
      static const char *const upper[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};
      put_ts(&b, ts_ms);
      pob_printf(&b, " %s ", level >= PLOG_DEBUG && level <= PLOG_ERROR ? upper[level] : "?    ");
      put_text_msg(&b, msg);
    }
    pairs:
      if (conversation) {
        pob_puts(&b, " conversation=");
        put_logfmt_value(&b, conversation);
      }
      if (seq) pob_printf(&b, " seq=%llu", (unsigned long long)seq);
      for (size_t i = 0; i < n; i++) {
        clean_key(kv[i].key, key);
        pob_printf(&b, " %s=", key);
        put_logfmt_value(&b, kv[i].value);
      }
      pob_putc(&b, '\n');
      break;
  }
  return pob_take(&b, NULL);
}

void plog_kvs(plog_logger *l, int level, const char *conversation, uint64_t seq,
              const char *msg, const plog_kv *kv, size_t n) {
  if (!plog_enabled(l, level)) return;
  char *line = plog_format(l, level, l->now_ms(l->clock_ud), conversation, seq, msg, kv, n);
  if (!line) return;
  /* One write per record under the stream lock: records of different
   * threads never interleave, and the flush makes them visible at once. */
  flockfile(l->out);
  fwrite(line, 1, strlen(line), l->out);
  fflush(l->out);
  funlockfile(l->out);
  free(line);
}

void plog_vlog(plog_logger *l, int level, const char *conversation, uint64_t seq,
               const char *msg, va_list ap) {
  if (!plog_enabled(l, level)) return;
  plog_kv kv[PLOG_MAX_KV];
  size_t n = 0;
  while (n < PLOG_MAX_KV) {
    const char *k = va_arg(ap, const char *);
    if (!k) break;
    kv[n].key = k;
    kv[n].value = va_arg(ap, const char *);
    n++;
  }
  plog_kvs(l, level, conversation, seq, msg, kv, n);
}

void plog_log(plog_logger *l, int level, const char *msg, ...) {
  va_list ap;
  va_start(ap, msg);
  plog_vlog(l, level, NULL, 0, msg, ap);
  va_end(ap);
}

void plog_conv(plog_logger *l, int level, const char *conversation, uint64_t seq,
               const char *msg, ...) {
  va_list ap;
  va_start(ap, msg);
  plog_vlog(l, level, conversation, seq, msg, ap);
  va_end(ap);
}

void plog_write(FILE *out, int format, int level, const char *conversation, uint64_t seq,
                const char *msg, const plog_kv *kv, size_t n) {
  if (!out) return;
  /* A logger for this one record: the same formatting and the same single
   * locked write as a long-lived one. */
  plog_logger l = {.out = out,
                   .format = format >= PLOG_TEXT && format <= PLOG_LOGFMT ? format : PLOG_TEXT,
                   .min_level = PLOG_DEBUG,
                   .now_ms = realtime_ms};
  if (level < PLOG_DEBUG) level = PLOG_DEBUG;
  if (level > PLOG_ERROR) level = PLOG_ERROR;
  plog_kvs(&l, level, conversation, seq, msg, kv, n);
}
