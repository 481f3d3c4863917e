/* The failure path of PARLEY_ASSERT: one line on stderr, then abort, so a
 * debugger, a core dump or the sanitizer's report shows where. */
#include "util/assert.h"

#include <stdio.h>
#include <stdlib.h>

void pu_assert_fail(const char *expr, const char *file, int line, const char *func) {
  fprintf(stderr, "%s:%d: %s: invariant failed: %s\n", file, line, func, expr);
  fflush(stderr);
  abort();
}
