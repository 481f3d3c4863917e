/* Per-handler metrics: what the runtime counts into the sidecar's metrics
 * registry (sdk/src/ops/metrics.h), with Prometheus names and labels:
 *
 *   parley_handler_runs_total{handler, outcome}    counter (ok, error)
 *   parley_handler_duration_seconds{handler}       histogram
 *   parley_http_requests_total{host, status}       counter (status "error"
 *                                                  when there was no answer)
 *   parley_template_misses_total{locale}           counter
 *   parley_dialog_steps_total{dialog, step, outcome} counter
 *
 * Label values come from the bot's own declarations (handler names, the
 * HTTP allow-list's hosts, dialog and step names) or from locales; the
 * registry bounds every family at PMET_MAX_SERIES series, and a label set
 * beyond that is not counted rather than grown without bound.
 *
 * Bot code reaches this through C.metric(kind, ...), called by the runtime's
 * Lua half only: bot code never sees the C table. */
#include "rt_metrics.h"

#include "rt_int.h"

#include <lauxlib.h>
#include <string.h>

void plr_runtime_set_metrics(parley_runtime *r, pmet_registry *reg) {
  if (!r) return;
  r->metrics = reg;
  memset(r->metric_slots, 0, sizeof r->metric_slots);
  r->metric_next = 0;
}

/* The cached series of a handler, registered on first use. A registry never
 * drops a series, so a cached pointer stays valid while r->metrics is the
 * same registry; plr_runtime_set_metrics empties the cache. */
static struct plr_metric_slot *handler_slot(parley_runtime *r, const char *handler) {
  size_t nslots = sizeof r->metric_slots / sizeof r->metric_slots[0];
  for (size_t i = 0; i < nslots; i++) {
    struct plr_metric_slot *s = &r->metric_slots[i];
    if (s->handler[0] && strcmp(s->handler, handler) == 0) return s;
  }
  struct plr_metric_slot *s = &r->metric_slots[r->metric_next++ % nslots];
  snprintf(s->handler, sizeof s->handler, "%s", handler);
  for (int o = 0; o < 2; o++) {
    pmet_label l[] = {{"handler", handler}, {"outcome", o ? "error" : "ok"}};
    s->runs[o] = pmet_counter(r->metrics, "parley_handler_runs_total",
                              "Handlers run, by handler and outcome.", l, 2);
  }
  pmet_label l[] = {{"handler", handler}};
  s->duration = pmet_histogram(r->metrics, "parley_handler_duration_seconds",
                               "Time from a handler's start to its end, replies answered "
                               "included, by handler.",
                               l, 1, pmet_latency_buckets, pmet_latency_buckets_n);
  return s;
}

static void count(parley_runtime *r, const char *name, const char *help, const pmet_label *l,
                  size_t n) {
  if (r->metrics) pmet_inc(pmet_counter(r->metrics, name, help, l, n));
}

void plr_metrics_handler_done(parley_runtime *r, const plr_job *j, double seconds) {
  if (!r->metrics || !j->handler[0]) return;
  struct plr_metric_slot *s = handler_slot(r, j->handler);
  pmet_inc(s->runs[j->failed ? 1 : 0]);
  pmet_observe(s->duration, seconds);
}

/* C.metric(kind, ...):
 *   "handler", name                  names the running handler
 *   "http", host, status             an HTTP call's answer (status "error")
 *   "template_miss", locale          a template key missing in a locale
 *   "dialog", dialog, step, outcome  a dialog's step outcome */
static int l_metric(lua_State *L) {
  parley_runtime *r = lua_touserdata(L, lua_upvalueindex(1));
  const char *kind = luaL_checkstring(L, 1);
  if (!strcmp(kind, "handler")) {
    if (r->current) {
      size_t len;
      const char *name = luaL_checklstring(L, 2, &len);
      /* Named on every event: a copy, cut like snprintf would. */
      if (len >= sizeof r->current->handler) len = sizeof r->current->handler - 1;
      memcpy(r->current->handler, name, len);
      r->current->handler[len] = 0;
    }
    return 0;
  }
  if (!r->metrics) return 0;
  if (!strcmp(kind, "http")) {
    pmet_label l[] = {{"host", luaL_checkstring(L, 2)}, {"status", luaL_checkstring(L, 3)}};
    count(r, "parley_http_requests_total", "HTTP calls of handlers, by host and status.", l, 2);
  } else if (!strcmp(kind, "template_miss")) {
    pmet_label l[] = {{"locale", luaL_checkstring(L, 2)}};
    count(r, "parley_template_misses_total",
          "Template keys missing in the locale asked for (a fallback locale or none answered).",
          l, 1);
  } else if (!strcmp(kind, "dialog")) {
    pmet_label l[] = {{"dialog", luaL_checkstring(L, 2)},
                      {"step", luaL_checkstring(L, 3)},
                      {"outcome", luaL_checkstring(L, 4)}};
    count(r, "parley_dialog_steps_total",
          "Dialog steps by outcome: started, answered, nudged, completed, and the drop-outs "
          "cancelled, declined, gave_up.",
          l, 3);
  }
  return 0;
}

void plr_metrics_bind(lua_State *L, parley_runtime *rt) {
  if (rt) {
    lua_pushlightuserdata(L, rt);
    lua_pushcclosure(L, l_metric, 1);
    lua_setfield(L, -2, "metric");
  }
}
