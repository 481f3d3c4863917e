/* Commits: handled events, state and tag changes of many conversations in
 * one frame, tried again when the client cannot take them; conversations
 * that left are forgotten once nothing is owed. */
#include "rt_int.h"

#include <lauxlib.h>

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void flush_cb(uv_timer_t *t);

void plr_commit_ready(parley_runtime *r, plr_conv *c) {
  if (c->handled_seq <= c->sent_seq) return;
  if (!c->ready) {
    c->ready = true;
    c->rnext = r->ready_head;
    r->ready_head = c;
  }
  if (!r->flush_armed && !r->freeing && !r->handles_closed) {
    r->flush_armed = true;
    uv_timer_start(&r->flush_timer, flush_cb, 0, 0);
  }
}


/* Commits. -------------------------------------------------------------- */

/* Converts take_commit's three tables (on top of the stack) into one
 * parley_commit. The strings stay valid while the tables stay on the
 * stack. */
static int build_commit(lua_State *L, plr_conv *c, parley_commit *pc,
                        parley_state_entry **ents, const char ***tags) {
  int st = lua_gettop(L) - 2, add = st + 1, rm = st + 2;
  size_t ns = 0;
  lua_pushnil(L);
  while (lua_next(L, st)) {
    ns++;
    lua_pop(L, 1);
  }
  size_t na = (size_t)lua_rawlen(L, add), nr = (size_t)lua_rawlen(L, rm);
  *ents = calloc(ns ? ns : 1, sizeof **ents);
  *tags = calloc(na + nr + 1, sizeof **tags);
  if (!*ents || !*tags) return PARLEY_ENOMEM;
  size_t i = 0;
  lua_pushnil(L);
  while (lua_next(L, st) && i < ns) {
    parley_state_entry *e = &(*ents)[i++];
    e->key = lua_tostring(L, -2);
    if (lua_type(L, -1) == LUA_TSTRING) {
      e->value = lua_tolstring(L, -1, &e->value_len);
    } else {
      e->deleted = true;
    }
    lua_pop(L, 1);
  }
  for (size_t k = 0; k < na; k++) {
    lua_rawgeti(L, add, (lua_Integer)k + 1);
    (*tags)[k] = lua_tostring(L, -1);
    lua_pop(L, 1); /* the table keeps the string alive */
  }
  for (size_t k = 0; k < nr; k++) {
    lua_rawgeti(L, rm, (lua_Integer)k + 1);
    (*tags)[na + k] = lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  *pc = (parley_commit){.conversation = c->id,
                        .epoch = c->epoch,
                        .ack_seq = c->handled_seq,
                        .state = *ents,
                        .n_state = ns,
                        .tags_add = *tags,
                        .n_tags_add = na,
                        .tags_remove = *tags + na,
                        .n_tags_remove = nr};
  return 0;
}

/* A conversation that left (revoked, closed) and owes nothing more drops
 * its Lua record and timers; the small C record keeps its watermark. */
void plr_conv_maybe_forget(parley_runtime *r, plr_conv *c) {
  if (c->forgotten || !(c->revoked || c->closed) || c->job || c->head || c->ready ||
      c->handled_seq > c->sent_seq || r->freeing)
    return;
  c->forgotten = true;
  for (size_t i = 0; i < c->ntimers; i++) plr_ctimer_disarm(&c->timers[i]);
  c->ntimers = 0;
  free(c->timers);
  c->timers = NULL;
  plr_vm *vm = r->vm;
  plr_vm_uncapped(vm);
  plr_vm_rt_get(vm, "forget");
  lua_pushstring(plr_vm_state(vm), c->id);
  char err[256];
  if (plr_vm_pcall(vm, 1, 0, err, sizeof err))
    plr_log(r, 3, c->id, c->handled_seq, "forgetting the conversation failed: %s", err);
}

static void flush_cb(uv_timer_t *t) {
  parley_runtime *r = t->data;
  r->flush_armed = false;
  plr_vm *vm = r->vm;
  lua_State *L = plr_vm_state(vm);
  parley_commit items[PLR_COMMIT_BATCH];
  parley_state_entry *ents[PLR_COMMIT_BATCH];
  const char **tags[PLR_COMMIT_BATCH];
  plr_conv *convs[PLR_COMMIT_BATCH];
  bool asked[PLR_COMMIT_BATCH]; /* its changes came from rt.take_commit */
  size_t n = 0;
  int top = lua_gettop(L);
  plr_vm_uncapped(vm);
  if (!lua_checkstack(L, PLR_COMMIT_BATCH * 3 + 20)) return;
  while (r->ready_head && n < PLR_COMMIT_BATCH) {
    plr_conv *c = r->ready_head;
    r->ready_head = c->rnext;
    c->rnext = NULL;
    c->ready = false;
    if (c->handled_seq <= c->sent_seq) continue;
    ents[n] = NULL;
    tags[n] = NULL;
    if (!c->dirty) {
      /* Nothing in runtime.lua's record is waiting: a watermark. */
      items[n] = (parley_commit){.conversation = c->id, .epoch = c->epoch,
                                 .ack_seq = c->handled_seq};
      asked[n] = false;
      convs[n++] = c;
      continue;
    }
    plr_vm_uncapped(vm);
    plr_vm_rt_get(vm, "take_commit");
    lua_pushstring(L, c->id);
    char err[512];
    if (plr_vm_pcall(vm, 1, 3, err, sizeof err)) {
      plr_log(r, 3, c->id, c->handled_seq, "collecting the commit failed: %s", err);
      continue;
    }
    if (build_commit(L, c, &items[n], &ents[n], &tags[n])) {
      free(ents[n]);
      free(tags[n]);
      plr_log(r, 3, c->id, c->handled_seq, "out of memory building a commit");
      continue;
    }
    asked[n] = true;
    convs[n] = c;
    n++;
  }
  if (n) {
    int rc = r->drv.commit(r->drv.ud, items, n);
    if (rc) {
      /* Nothing was taken: the changes stay pending and the conversations
       * go back on the list for a later try. */
      plr_log(r, 2, NULL, 0, "commit of %zu conversations not sent: %s; trying again",
              n, parley_strerror(rc));
      for (size_t i = 0; i < n; i++) {
        if (convs[i]->ready) continue;
        convs[i]->ready = true;
        convs[i]->rnext = r->ready_head;
        r->ready_head = convs[i];
      }
    } else {
      r->stats.commits++;
      r->stats.commit_items += n;
      r->inflight += n;
      for (size_t i = 0; i < n; i++) {
        plr_conv *c = convs[i];
        c->sent_seq = items[i].ack_seq;
        c->commits_out++;
        uint64_t ord = ++c->commits_made;
        if (!asked[i]) continue;
        plr_vm_rt_get(vm, "commit_sent");
        lua_pushstring(L, c->id);
        lua_pushinteger(L, (lua_Integer)ord);
        char err[256];
        if (plr_vm_pcall(vm, 2, 1, err, sizeof err)) {
          plr_log(r, 3, c->id, items[i].ack_seq, "clearing a commit failed: %s", err);
          continue;
        }
        if (lua_toboolean(L, -1)) c->changes_upto = ord;
        lua_pop(L, 1);
        c->dirty = false;
      }
      for (size_t i = 0; i < n; i++) plr_conv_maybe_forget(r, convs[i]);
    }
    for (size_t i = 0; i < n; i++) {
      free(ents[i]);
      free(tags[i]);
    }
    if (rc) {
      lua_settop(L, top);
      if (!r->flush_armed && !r->handles_closed) {
        r->flush_armed = true;
        uv_timer_start(&r->flush_timer, flush_cb, PLR_COMMIT_RETRY_MS, 0);
      }
      plr_rt_maybe_idle(r);
      return;
    }
  }
  lua_settop(L, top);
  if (r->ready_head && !r->flush_armed && !r->handles_closed) {
    r->flush_armed = true;
    uv_timer_start(&r->flush_timer, flush_cb, 0, 0);
  }
  plr_rt_maybe_idle(r);
}

