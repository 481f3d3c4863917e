/* Timers: kept in the conversation state by runtime.lua (ctx:after), armed
 * here on the loop; firing queues a timer job behind the conversation's
 * events. */
#include "rt_int.h"

#include <lauxlib.h>

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void uvt_closed(uv_handle_t *h) {
  plr_uvt *t = (plr_uvt *)h;
  parley_runtime *r = t->r;
  free(t);
  if (--r->handles_open == 0 && r->freeing) plr_rt_release(r);
}

void plr_ctimer_disarm(plr_ctimer *ct) {
  if (!ct->uvt) return;
  uv_timer_stop(&ct->uvt->h);
  uv_close((uv_handle_t *)&ct->uvt->h, uvt_closed);
  ct->uvt = NULL;
}


/* Timers. --------------------------------------------------------------- */

static void uvt_fire(uv_timer_t *h) {
  plr_uvt *t = (plr_uvt *)h;
  parley_runtime *r = t->r;
  plr_conv *c = t->conv;
  uint64_t id = t->id;
  for (size_t i = 0; i < c->ntimers; i++) {
    plr_ctimer *ct = &c->timers[i];
    if (ct->id != id || ct->uvt != t) continue;
    plr_ctimer_disarm(ct);
    if (c->revoked || r->stopping) return;
    plr_job *j = plr_job_new(JOB_TIMER, c->handled_seq);
    if (!j) return;
    j->timer_id = id;
    ct->queued = true;
    r->stats.timers_fired++;
    plr_conv_submit(r, c, j);
    return;
  }
}

void plr_rt_fire_due(parley_runtime *r) {
  int64_t now = plr_rt_now(r);
  for (size_t b = 0; b < PLR_BUCKETS; b++)
    for (plr_conv *c = r->buckets[b]; c; c = c->hnext) {
      /* Firing may run the timer's job, which rewrites c->timers: collect
       * first, then fire by id. */
      uint64_t due[PLR_TIMERS_MAX];
      size_t n = 0;
      for (size_t i = 0; i < c->ntimers; i++)
        if (c->timers[i].uvt && c->timers[i].due <= now) due[n++] = c->timers[i].id;
      for (size_t k = 0; k < n; k++)
        for (size_t i = 0; i < c->ntimers; i++)
          if (c->timers[i].id == due[k] && c->timers[i].uvt) {
            uvt_fire(&c->timers[i].uvt->h);
            break;
          }
    }
}

static void ctimer_arm(parley_runtime *r, plr_conv *c, plr_ctimer *ct) {
  if (ct->uvt || ct->queued || c->revoked || r->freeing || r->stopping) return;
  plr_uvt *t = calloc(1, sizeof *t);
  if (!t) return;
  t->r = r;
  t->conv = c;
  t->id = ct->id;
  uv_timer_init(r->loop, &t->h);
  r->handles_open++;
  int64_t delay = ct->due - plr_rt_now(r);
  if (c->assigning && delay < PLR_ASSIGN_GRACE_MS) delay = PLR_ASSIGN_GRACE_MS;
  /* At least one millisecond: libuv runs, in the same pass, a timer that
   * is due now, also one armed by a timer callback of that pass. Two timers
   * that re-arm themselves with ctx:after(0) would then run forever inside
   * one pass, with no I/O and no signal handled (SIGTERM ignored). Due one
   * millisecond on, each fires at most once per pass, with the loop's poll
   * for I/O in between. */
  uv_timer_start(&t->h, uvt_fire, delay > 1 ? (uint64_t)delay : 1, 0);
  ct->uvt = t;
}

/* C.sync_timers(conv, {{id, due}, ...}): the timers the conversation's state
 * holds. Arms the new ones, disarms the ones that are gone. */
int plr_l_sync_timers(lua_State *L) {
  parley_runtime *r = lua_touserdata(L, lua_upvalueindex(1));
  const char *id = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  plr_conv *c = plr_conv_find(r, id);
  if (!c) return 0;
  size_t n = (size_t)lua_rawlen(L, 2);
  if (n > PLR_TIMERS_MAX) n = PLR_TIMERS_MAX;
  if (n && !c->timers && !(c->timers = calloc(PLR_TIMERS_MAX, sizeof *c->timers)))
    return luaL_error(L, "out of memory for timers");
  uint64_t ids[PLR_TIMERS_MAX];
  int64_t dues[PLR_TIMERS_MAX];
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, 2, (lua_Integer)i + 1);
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    ids[i] = (uint64_t)lua_tointeger(L, -2);
    dues[i] = (int64_t)lua_tointeger(L, -1);
    lua_pop(L, 3);
  }
  /* Drop the timers that are no longer in the state. */
  size_t k = 0;
  for (size_t i = 0; i < c->ntimers; i++) {
    bool keep = false;
    for (size_t m = 0; m < n; m++) keep |= ids[m] == c->timers[i].id;
    if (keep) c->timers[k++] = c->timers[i];
    else plr_ctimer_disarm(&c->timers[i]);
  }
  c->ntimers = k;
  for (size_t m = 0; m < n; m++) {
    plr_ctimer *ct = NULL;
    for (size_t i = 0; i < c->ntimers; i++)
      if (c->timers[i].id == ids[m]) ct = &c->timers[i];
    if (!ct) {
      if (c->ntimers >= PLR_TIMERS_MAX) break;
      ct = &c->timers[c->ntimers++];
      memset(ct, 0, sizeof *ct);
      ct->id = ids[m];
    }
    if (ct->due != dues[m] && ct->uvt) plr_ctimer_disarm(ct);
    ct->due = dues[m];
    ctimer_arm(r, c, ct);
  }
  return 0;
}

