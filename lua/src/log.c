/* Log lines of the runtime: text, JSON or logfmt, with the bot, the
 * conversation and the seq. */
#include "rt_int.h"

#include <lauxlib.h>

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Logging. -------------------------------------------------------------- */

static const char *const LEVEL_NAMES[] = {"debug", "info", "warn", "error"};

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
    else if (ch == '\n') fputs("\\n", f);
    else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
    else fputc(ch, f);
  }
  fputc('"', f);
}

static void logfmt_str(FILE *f, const char *s) {
  bool quote = !*s || strpbrk(s, " =\"\t\n") != NULL;
  if (!quote) {
    fputs(s, f);
    return;
  }
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') fputc('\\', f);
    if (*s == '\n') {
      fputs("\\n", f);
      continue;
    }
    fputc(*s, f);
  }
  fputc('"', f);
}

void plr_log(plr_runtime *r, int level, const char *conv, uint64_t seq, const char *fmt,
             ...) {
  if (level < 0) level = 0;
  if (level > 3) level = 3;
  if (r && level < r->log_level) return;
  FILE *f = r && r->log_out ? r->log_out : stderr;
  int format = r ? r->log_format : 0;
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char when[80];
  snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
           tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
           ts.tv_nsec / 1000000);
  const char *bot = r && r->vm ? plr_vm_name(r->vm) : NULL;
  if (format == 1) {
    fprintf(f, "{\"ts\":\"%s\",\"level\":\"%s\"", when, LEVEL_NAMES[level]);
    if (bot) {
      fputs(",\"bot\":", f);
      json_str(f, bot);
    }
    if (conv) {
      fputs(",\"conversation\":", f);
      json_str(f, conv);
      fprintf(f, ",\"seq\":%llu", (unsigned long long)seq);
    }
    fputs(",\"msg\":", f);
    json_str(f, msg);
    fputs("}\n", f);
  } else if (format == 2) {
    fprintf(f, "ts=%s level=%s", when, LEVEL_NAMES[level]);
    if (bot) {
      fputs(" bot=", f);
      logfmt_str(f, bot);
    }
    if (conv) {
      fputs(" conversation=", f);
      logfmt_str(f, conv);
      fprintf(f, " seq=%llu", (unsigned long long)seq);
    }
    fputs(" msg=", f);
    logfmt_str(f, msg);
    fputc('\n', f);
  } else {
    fprintf(f, "%s %-5s", when, LEVEL_NAMES[level]);
    if (bot) fprintf(f, " %s", bot);
    if (conv) fprintf(f, " [%s#%llu]", conv, (unsigned long long)seq);
    fprintf(f, " %s\n", msg);
  }
  fflush(f);
}

