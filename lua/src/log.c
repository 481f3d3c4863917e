/* Log lines of the runtime, on the SDK's one logger (sdk/src/ops/log.h):
 * the runtime holds a plog_logger made from its options, so `parley run`
 * writes one format whatever writes the line (the same timestamps, level
 * names, level filter and escaping of control characters). What this adds
 * is printf-style formatting and the bot's name as a key. Customer text
 * reaches log messages (handler errors quote it), so a newline in it must
 * never start a forged record: plog escapes it in every format. */
#include "rt_int.h"

#include "ops/log.h"

#include <stdarg.h>
#include <stdio.h>

void plr_log(parley_runtime *r, int level, const char *conv, uint64_t seq, const char *fmt,
             ...) {
  if (level < PLOG_DEBUG) level = PLOG_DEBUG;
  if (level > PLOG_ERROR) level = PLOG_ERROR;
  /* A bot loaded without a runtime (a lint) has no logger: stderr, text. */
  if (r && !plog_enabled(r->log, level)) return;
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  const char *bot = r && r->vm ? plr_vm_name(r->vm) : NULL;
  plog_kv kv[1] = {{.key = "bot", .value = bot}};
  if (r) plog_kvs(r->log, level, conv, conv ? seq : 0, msg, kv, bot ? 1 : 0);
  else plog_write(stderr, PLOG_TEXT, level, conv, conv ? seq : 0, msg, kv, bot ? 1 : 0);
}
