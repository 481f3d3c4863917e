/* Per-handler metrics of the runtime; see rt_metrics.c. */
#ifndef PLR_RT_METRICS_H
#define PLR_RT_METRICS_H

#include "ops/metrics.h"

#include <lua.h>

struct parley_runtime;
struct plr_job;

/* Counts into reg from now on (NULL: stop). reg outlives the runtime. */
void plr_runtime_set_metrics(struct parley_runtime *r, pmet_registry *reg);
/* A handler finished (failed or not) after seconds. */
void plr_metrics_handler_done(struct parley_runtime *r, const struct plr_job *j, double seconds);
/* Sets C.metric in the table on top of L's stack. */
void plr_metrics_bind(lua_State *L, struct parley_runtime *rt);

#endif
