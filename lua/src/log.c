/* Log lines of the runtime: a thin layer over the SDK's one logger
 * (sdk/src/ops/log.h), so that `parley run` writes one format whatever
 * writes the line: the same timestamps, the same level names, and the same
 * escaping of control characters. Customer text reaches log messages
 * (handler errors quote it), so a newline in it must never start a forged
 * record: plog escapes it in every format. */
#include "rt_int.h"

#include "ops/log.h"

#include <stdarg.h>
#include <stdio.h>

void plr_log(parley_runtime *r, int level, const char *conv, uint64_t seq, const char *fmt,
             ...) {
  if (level < PLOG_DEBUG) level = PLOG_DEBUG;
  if (level > PLOG_ERROR) level = PLOG_ERROR;
  if (r && level < r->log_level) return;
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  const char *bot = r && r->vm ? plr_vm_name(r->vm) : NULL;
  plog_kv kv[1] = {{.key = "bot", .value = bot}};
  plog_write(r && r->log_out ? r->log_out : stderr, r ? r->log_format : PLOG_TEXT, level, conv,
             conv ? seq : 0, msg, kv, bot ? 1 : 0);
}
