/* The event machinery of the bot runtime: conversations, their queues, one
 * coroutine per handled event, inbound events, drain and hot reload.
 * Commits are in commit.c, timers in timers.c, the primitives a handler
 * calls (replies, actions, HTTP) in bindings.c, log lines in log.c.
 *
 * Order within a conversation: its events wait in a queue; the next one
 * starts only when the previous handler has finished AND every reply it
 * sent has been answered AND its changes were moved to the commit record.
 * So a commit never acknowledges an event whose replies are not stored, and
 * never carries state of an event it does not acknowledge.
 */
#include "proactive.h"
#include "rt_int.h"

#include "ops/log.h"
#include "rt_metrics.h"
#include "util/assert.h"
#include "util/clock.h"
#include "util/hash.h"

#include <lauxlib.h>

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void swap_vm(parley_runtime *r);
static void check_drained(parley_runtime *r);

/* Conversations. -------------------------------------------------------- */

static size_t hash_id(const char *s) { return (size_t)(pu_hash_str(s) % PLR_BUCKETS); }

plr_conv *plr_conv_find(const parley_runtime *r, const char *id) {
  for (plr_conv *c = r->buckets[hash_id(id)]; c; c = c->hnext)
    if (strcmp(c->id, id) == 0) return c;
  return NULL;
}

static plr_conv *conv_get(parley_runtime *r, const char *id) {
  plr_conv *c = plr_conv_find(r, id);
  if (c) return c;
  if (r->nconvs >= plr_vm_limits(r->vm)->conversations_max) return NULL;
  c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->id = strdup(id);
  if (!c->id) {
    free(c);
    return NULL;
  }
  size_t b = hash_id(id);
  c->hnext = r->buckets[b];
  r->buckets[b] = c;
  r->nconvs++;
  return c;
}

int64_t plr_rt_now(parley_runtime *r) {
  if (r && r->drv.now_ms) return r->drv.now_ms(r->drv.ud);
  return pu_wall_ms();
}

void plr_rt_derive(parley_runtime *r, const char *conv, uint64_t seq, uint32_t ord,
                   uint8_t out[PARLEY_MSG_ID_LEN]) {
  if (r->drv.derive) r->drv.derive(r->principal, conv, seq, ord, out);
  else parley_msg_id_derive(r->principal, conv, seq, ord, out);
}

/* uv handles: the runtime's memory goes when the last one is closed. */

void plr_rt_release(parley_runtime *r) {
  for (size_t b = 0; b < PLR_BUCKETS; b++) {
    plr_conv *c = r->buckets[b];
    while (c) {
      plr_conv *n = c->hnext;
      free(c->timers);
      free(c->id);
      free(c);
      c = n;
    }
  }
  free(r->principal);
  free(r->bot_dir);
  plog_free(r->log);
  free(r);
}

static void handle_closed(uv_handle_t *h) {
  parley_runtime *r = h->data;
  if (--r->handles_open == 0 && r->freeing) plr_rt_release(r);
}


/* Jobs. ----------------------------------------------------------------- */

static void psend_free(plr_psend *p) {
  for (size_t i = 0; i < p->nstrings; i++) free(p->strings[i]);
  free(p->buttons);
  free(p);
}

/* A proactive send ends: its caller hears the outcome once. */
static void psend_finish(plr_job *j, int status, uint64_t seq, bool dup) {
  plr_psend *p = j->psend;
  if (!p) return;
  j->psend = NULL;
  if (p->done) p->done(p->ud, status, seq, dup);
  psend_free(p);
}

static void job_free(parley_runtime *r, plr_job *j) {
  /* A proactive send dropped before its answer (revoked, freed) still
   * answers its caller. */
  psend_finish(j, PARLEY_ENOTFOUND, 0, false);
  lua_State *L = r->vm ? plr_vm_state(r->vm) : NULL;
  if (!L) {
    free(j);
    return;
  }
  /* A coroutine whose handler returned normally is dead with an empty
   * stack and nothing left to close, so it can run the next handler (bot
   * code cannot reach a handler's coroutine: runtime.lua hides it from
   * coroutine.running). Any other one is only dropped, not reset:
   * resetting would run pending __close handlers, and after a budget error
   * Lua would run them with hooks off. */
  bool reusable = j->co && j->co_ref != LUA_NOREF && j->co_ref != 0 && j->done && !j->failed &&
                  !j->exhausted && !r->freeing && r->n_co_pool < PLR_CO_POOL &&
                  lua_status(j->co) == LUA_OK && lua_gettop(j->co) == 0;
  if (reusable) {
    r->co_pool[r->n_co_pool] = j->co;
    r->co_pool_ref[r->n_co_pool++] = j->co_ref;
  } else if (j->co_ref != LUA_NOREF && j->co_ref != 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, j->co_ref);
  }
  if (j->ev_ref != LUA_NOREF && j->ev_ref != 0) luaL_unref(L, LUA_REGISTRYINDEX, j->ev_ref);
  free(j);
}

plr_job *plr_job_new(job_kind kind, uint64_t seq) {
  plr_job *j = calloc(1, sizeof *j);
  if (!j) return NULL;
  j->kind = kind;
  j->seq = seq;
  j->ev_ref = LUA_NOREF;
  j->co_ref = LUA_NOREF;
  return j;
}

void plr_conv_submit(parley_runtime *r, plr_conv *c, plr_job *j) {
  j->conv = c;
  if (c->tail) c->tail->next = j;
  else c->head = j;
  c->tail = j;
  c->qlen++;
  r->queued++;
  plr_conv_pump(r, c);
  plr_rt_maybe_idle(r);
}


static bool runtime_busy(const parley_runtime *r) {
  return r->jobs_running || r->queued || r->ready_head || r->flush_armed || r->inflight;
}

void plr_rt_maybe_idle(parley_runtime *r) {
  if (r->stopping) {
    check_drained(r);
    return;
  }
  if (r->on_idle && !runtime_busy(r)) r->on_idle(r->ud);
}

/* Copies a traceback of the failed coroutine into buf. */
static void job_error_text(parley_runtime *r, plr_job *j, char *buf, size_t size) {
  lua_State *L = plr_vm_state(r->vm);
  const char *msg = lua_tostring(j->co, -1);
  luaL_traceback(L, j->co, msg ? msg : "(error object is not a string)", 0);
  snprintf(buf, size, "%s", lua_tostring(L, -1));
  lua_pop(L, 1);
}

static void push_job_arg(lua_State *L, plr_job *j) {
  if (j->kind == JOB_TIMER) lua_pushinteger(L, (lua_Integer)j->timer_id);
  else lua_rawgeti(L, LUA_REGISTRYINDEX, j->ev_ref);
}

/* A handler failed: count, log, roll back, fallback reply. */
void plr_job_fail(parley_runtime *r, plr_job *j, const char *why) {
  plr_conv *c = j->conv;
  r->stats.failures++;
  if (j->exhausted) r->stats.budget_exceeded++;
  plr_log(r, 3, c->id, j->seq, "handler failed: %s", why);
  j->failed = true;
  j->done = true;
  plr_vm *vm = r->vm;
  lua_State *L = plr_vm_state(vm);
  plr_vm_uncapped(vm);
  plr_vm_rt_get(vm, "fail");
  lua_pushstring(L, c->id);
  lua_pushstring(L, j->kind == JOB_TIMER ? "timer" : "event");
  push_job_arg(L, j);
  lua_pushstring(L, why);
  plr_job *prev = r->current;
  r->current = j;
  char err[512];
  if (plr_vm_pcall(vm, 4, 0, err, sizeof err))
    plr_log(r, 3, c->id, j->seq, "rolling back failed: %s", err);
  r->current = prev;
  c->dirty = true;
}

void plr_job_resume(parley_runtime *r, plr_job *j, int nargs) {
  plr_vm *vm = r->vm;
  lua_State *L = plr_vm_state(vm);
  r->current = j;
  plr_vm_budget(vm, j->co, j->budget, j->exhausted);
  int64_t start = plr_vm_now_ns();
  vm->deadline_ns = start + (int64_t)plr_vm_limits(vm)->cpu_time_ms * 1000000 - j->cpu_ns;
  vm->unlimited = false;
  /* The values resumed with are on the coroutine's stack, and a handler
   * (with the C primitives it calls) leaves the main state's stack as it
   * found it. */
  PARLEY_ASSERT(lua_gettop(j->co) >= nargs);
  int main_top = lua_gettop(L);
  int nres = 0;
  int rc = lua_resume(j->co, L, nargs, &nres);
  PARLEY_ASSERT(lua_gettop(L) == main_top);
  plr_vm_uncapped(vm);
  vm->deadline_ns = 0;
  j->cpu_ns += plr_vm_now_ns() - start;
  j->budget = vm->budget;
  j->exhausted = vm->exhausted;
  r->current = NULL;
  if (rc == LUA_YIELD) {
    lua_pop(j->co, nres);
    if (j->waiting_http) return;
    plr_job_fail(r, j, "coroutine.yield outside a coroutine the handler created");
  } else if (rc == LUA_OK && j->exhausted) {
    /* The last error was swallowed where no Lua instruction followed. */
    plr_job_fail(r, j, "handler exceeded its instruction budget");
  } else if (rc == LUA_OK) {
    /* rt.run's results: whether a handler ran, and whether it left nothing
     * for rt.finish to apply. */
    if (nres > 0 && lua_toboolean(j->co, -nres)) r->stats.handled++;
    j->quiet = nres > 1 && lua_toboolean(j->co, -nres + 1);
    lua_pop(j->co, nres);
    j->done = true;
  } else {
    char why[2048];
    job_error_text(r, j, why, sizeof why);
    plr_job_fail(r, j, why);
  }
  plr_job_maybe_complete(r, j);
}

static void job_start(parley_runtime *r, plr_job *j) {
  plr_vm *vm = r->vm;
  lua_State *L = plr_vm_state(vm);
  j->started = true;
  j->start_ns = plr_vm_now_ns();
  plr_vm_budget(vm, L, PLR_INTERNAL_BUDGET, false);
  plr_vm_uncapped(vm);
  if (r->n_co_pool > 0) {
    r->n_co_pool--;
    j->co = r->co_pool[r->n_co_pool];
    j->co_ref = r->co_pool_ref[r->n_co_pool];
  } else {
    j->co = lua_newthread(L);
    j->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  /* A pooled coroutine is only reused dead with an empty stack (job_free),
   * so the five values below are all it holds when it starts. */
  PARLEY_ASSERT(lua_status(j->co) == LUA_OK && lua_gettop(j->co) == 0);
  int top = lua_gettop(L);
  j->budget = (int64_t)plr_vm_limits(vm)->instructions;
  j->exhausted = false;
  /* The timer is running: its slot may be armed again (a handler that
   * re-arms its own timer keeps the slot only if the id comes back). */
  if (j->kind == JOB_TIMER)
    for (size_t i = 0; i < j->conv->ntimers; i++)
      if (j->conv->timers[i].id == j->timer_id) j->conv->timers[i].queued = false;
  plr_vm_rt_get(vm, "run");
  lua_pushstring(L, j->conv->id);
  lua_pushstring(L, j->kind == JOB_TIMER ? "timer" : "event");
  push_job_arg(L, j);
  lua_pushinteger(L, (lua_Integer)j->seq);
  PARLEY_ASSERT(lua_gettop(L) == top + 5);
  lua_xmove(L, j->co, 5);
  plr_job_resume(r, j, 4);
}

/* The job is over when its handler returned (or failed) and every send it
 * made was answered. Then its changes go to the commit record. */
void plr_job_maybe_complete(parley_runtime *r, plr_job *j) {
  if (!j->done || j->pending_sends || j->waiting_http || j->finished) return;
  plr_conv *c = j->conv;
  plr_vm *vm = r->vm;
  lua_State *L = plr_vm_state(vm);
  if (!j->failed && j->kind != JOB_SEND && !j->quiet) {
    plr_vm_uncapped(vm);
    plr_vm_rt_get(vm, "finish");
    lua_pushstring(L, c->id);
    plr_job *prev = r->current;
    r->current = j;
    char err[1024];
    int rc = plr_vm_pcall(vm, 1, 1, err, sizeof err);
    r->current = prev;
    if (rc) {
      plr_job_fail(r, j, err);
      if (j->pending_sends) return; /* the fallback reply is on its way */
    } else {
      if (lua_toboolean(L, -1)) c->dirty = true;
      lua_pop(L, 1);
    }
  }
  j->finished = true;
  if (j->kind != JOB_SEND && r->on_observe && j->start_ns)
    r->on_observe(r->ud, PARLEY_RUNTIME_OBSERVE_HANDLER, (double)(plr_vm_now_ns() - j->start_ns) / 1e9);
  if (j->kind != JOB_SEND && j->start_ns)
    plr_metrics_handler_done(r, j, (double)(plr_vm_now_ns() - j->start_ns) / 1e9);
  if (j->kind == JOB_EVENT && j->seq > c->handled_seq) c->handled_seq = j->seq;
  c->job = NULL;
  r->jobs_running--;
  job_free(r, j);
  plr_commit_ready(r, c);
  /* A reload waits for the moment no handler runs. */
  if (r->next_vm && !r->jobs_running) swap_vm(r);
  else plr_conv_pump(r, c);
  plr_rt_maybe_idle(r);
}

/* Starts queued jobs of c until one has to wait. Re-entry (a job that
 * completes inside job_start) continues this loop instead of recursing. */
void plr_conv_pump(parley_runtime *r, plr_conv *c) {
  if (c->pumping) return;
  c->pumping = true;
  while (!c->job && c->head && !r->next_vm && !r->freeing) {
    plr_job *j = c->head;
    c->head = j->next;
    if (!c->head) c->tail = NULL;
    j->next = NULL;
    c->qlen--;
    r->queued--;
    if (j->kind == JOB_SEND) {
      /* Runs no handler: the send goes now, and the conversation's next
       * job waits for its answer, which keeps the order. */
      c->job = j;
      r->jobs_running++;
      j->started = true;
      j->done = true;
      plr_psend *p = j->psend;
      int rc = r->drv.send(r->drv.ud, c->id, &p->content, NULL, p->msg_id, c->epoch, j);
      if (rc) {
        r->stats.send_failures++;
        psend_finish(j, rc, 0, false);
      } else {
        r->stats.sends++;
        j->pending_sends++;
      }
      plr_job_maybe_complete(r, j);
      continue;
    }
    /* After the bot's own close, the events already queued are
     * acknowledged without a handler: replies would be refused. */
    if (j->kind == JOB_ACK || c->leaving) {
      if (j->kind != JOB_TIMER && j->seq > c->handled_seq) c->handled_seq = j->seq;
      job_free(r, j);
      plr_commit_ready(r, c);
      continue;
    }
    c->job = j;
    r->jobs_running++;
    job_start(r, j);
  }
  c->pumping = false;
}

static void pump_all(parley_runtime *r) {
  for (size_t b = 0; b < PLR_BUCKETS; b++)
    for (plr_conv *c = r->buckets[b]; c; c = c->hnext) plr_conv_pump(r, c);
}


/* Inbound. -------------------------------------------------------------- */

const char *plr_event_kind_name(parley_event_kind k) {
  switch (k) {
  case PARLEY_EVENT_MESSAGE: return "message";
  case PARLEY_EVENT_OPENED: return "opened";
  case PARLEY_EVENT_ASSIGNED: return "assigned";
  case PARLEY_EVENT_HANDED_OFF: return "handed_off";
  case PARLEY_EVENT_HANDED_BACK: return "handed_back";
  case PARLEY_EVENT_CLOSED: return "closed";
  case PARLEY_EVENT_TAGGED: return "tagged";
  case PARLEY_EVENT_STATE_CHANGED: return "state_changed";
  case PARLEY_EVENT_LOCALE_CHANGED: return "locale_changed";
  default: return "unknown";
  }
}

const char *plr_role_name(parley_role r) {
  switch (r) {
  case PARLEY_ROLE_CUSTOMER: return "customer";
  case PARLEY_ROLE_AGENT: return "agent";
  case PARLEY_ROLE_BOT: return "bot";
  case PARLEY_ROLE_SYSTEM: return "system";
  default: return "unknown";
  }
}

const char *plr_content_name(parley_content_kind k) {
  switch (k) {
  case PARLEY_CONTENT_TEXT: return "text";
  case PARLEY_CONTENT_CARD: return "card";
  case PARLEY_CONTENT_QUICK_REPLIES: return "quick_replies";
  case PARLEY_CONTENT_IMAGE: return "image";
  case PARLEY_CONTENT_POSTBACK: return "postback";
  default: return "none";
  }
}

/* The keys of an event table and the names of kinds, roles and contents,
 * interned once per Lua state as upvalues of the converting closure: a
 * key given as a C string (lua_setfield) is looked up in Lua's string
 * cache and compared on every field of every event. */
#define EV_NAMES(X)                                                                      \
  X(K_KIND, "kind") X(K_CONVERSATION, "conversation") X(K_SEQ, "seq") X(K_TIME, "time")  \
  X(K_SENDER, "sender") X(K_SENDER_ROLE, "sender_role") X(K_REDELIVERED, "redelivered")  \
  X(K_ID, "id") X(K_CONTENT, "content") X(K_PAYLOAD, "payload") X(K_LABEL, "label")      \
  X(K_SOURCE_SEQ, "source_seq") X(K_TEXT, "text") X(K_TITLE, "title")                    \
  X(K_IMAGE_URL, "image_url") X(K_QUOTE, "quote") X(K_EXCERPT, "excerpt")                \
  X(K_QUEUE, "queue") X(K_NOTE, "note") X(K_TAGS_ADD, "tags_add")                        \
  X(K_TAGS_REMOVE, "tags_remove") X(K_ASSIGNEE, "assignee") X(K_TAGS, "tags")            \
  X(K_STATE_KEYS, "state_keys") X(K_LOCALE, "locale") X(K_CUSTOMER, "customer")          \
  X(V_MESSAGE, "message") X(V_CUSTOMERROLE, "customer") X(V_AGENT, "agent")              \
  X(V_BOT, "bot") X(V_TEXTKIND, "text")
#define EV_ENUM(id, name) id,
enum { EV_FIRST = 0, EV_NAMES(EV_ENUM) EV_N };
#define EV_UP(id) lua_upvalueindex(id)

/* Sets t[key] (t on top of the stack) to the string v, when there is one. */
static void set_str(lua_State *L, int key, const char *v) {
  if (!v) return;
  lua_pushvalue(L, EV_UP(key));
  lua_pushstring(L, v);
  lua_rawset(L, -3);
}

/* t[key] = a name: one of the closure's interned ones, or v. */
static void set_name(lua_State *L, int key, int interned, const char *v) {
  lua_pushvalue(L, EV_UP(key));
  if (interned) lua_pushvalue(L, EV_UP(interned));
  else lua_pushstring(L, v);
  lua_rawset(L, -3);
}

static void set_int(lua_State *L, int key, lua_Integer v) {
  lua_pushvalue(L, EV_UP(key));
  lua_pushinteger(L, v);
  lua_rawset(L, -3);
}

static void set_list(lua_State *L, int key, const char *const *v, size_t n) {
  if (!v && !n) return;
  lua_pushvalue(L, EV_UP(key));
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_pushstring(L, v[i] ? v[i] : "");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_rawset(L, -3);
}

/* Builds an event as the table handlers get. The closure of
 * plr_event_push_fn; runs protected. */
static int event_push(lua_State *L) {
  const parley_event *ev = lua_touserdata(L, 1);
  lua_createtable(L, 0, 16);
  set_name(L, K_KIND, ev->kind == PARLEY_EVENT_MESSAGE ? V_MESSAGE : 0,
           plr_event_kind_name(ev->kind));
  set_str(L, K_CONVERSATION, ev->conversation);
  set_int(L, K_SEQ, (lua_Integer)ev->seq);
  set_int(L, K_TIME, (lua_Integer)ev->server_time_ms);
  set_str(L, K_SENDER, ev->sender ? ev->sender : "");
  int role = ev->sender_role == PARLEY_ROLE_CUSTOMER ? V_CUSTOMERROLE
             : ev->sender_role == PARLEY_ROLE_AGENT  ? V_AGENT
             : ev->sender_role == PARLEY_ROLE_BOT    ? V_BOT
                                                     : 0;
  set_name(L, K_SENDER_ROLE, role, plr_role_name(ev->sender_role));
  lua_pushvalue(L, EV_UP(K_REDELIVERED));
  lua_pushboolean(L, ev->redelivered);
  lua_rawset(L, -3);
  if (ev->has_msg_id) {
    char hex[33];
    parley_msg_id_hex(ev->msg_id, hex);
    lua_pushvalue(L, EV_UP(K_ID));
    lua_pushlstring(L, hex, 32);
    lua_rawset(L, -3);
  }
  if (ev->kind == PARLEY_EVENT_MESSAGE) {
    const parley_content *c = &ev->content;
    set_name(L, K_CONTENT, c->kind == PARLEY_CONTENT_TEXT ? V_TEXTKIND : 0,
             plr_content_name(c->kind));
    if (c->kind == PARLEY_CONTENT_POSTBACK) {
      set_str(L, K_PAYLOAD, c->payload ? c->payload : "");
      set_str(L, K_LABEL, c->label);
      set_int(L, K_SOURCE_SEQ, (lua_Integer)c->source_seq);
    } else {
      set_str(L, K_TEXT, c->text ? c->text : (c->fallback ? c->fallback : ""));
      set_str(L, K_TITLE, c->title);
      set_str(L, K_IMAGE_URL, c->image_url);
    }
    if (ev->quote.seq) {
      lua_pushvalue(L, EV_UP(K_QUOTE));
      lua_createtable(L, 0, 3);
      set_int(L, K_SEQ, (lua_Integer)ev->quote.seq);
      set_str(L, K_EXCERPT, ev->quote.excerpt);
      set_str(L, K_SENDER, ev->quote.sender);
      lua_rawset(L, -3);
    }
  }
  const parley_action *a = &ev->action;
  set_str(L, K_QUEUE, a->queue);
  set_str(L, K_NOTE, a->note);
  set_list(L, K_TAGS_ADD, a->tags_add, a->n_tags_add);
  set_list(L, K_TAGS_REMOVE, a->tags_remove, a->n_tags_remove);
  set_str(L, K_ASSIGNEE, ev->assignee);
  set_list(L, K_TAGS, ev->tags, ev->n_tags);
  set_list(L, K_STATE_KEYS, ev->state_keys, ev->n_state_keys);
  set_str(L, K_LOCALE, ev->locale ? ev->locale : a->locale);
  set_str(L, K_CUSTOMER, ev->customer);
  return 1;
}

/* The registry key of each state's converting closure. */
static const char event_push_key = 'e';

bool plr_event_push_fn(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &event_push_key) == LUA_TFUNCTION) return true;
  lua_pop(L, 1);
  if (!lua_checkstack(L, EV_N + 2)) return false;
#define EV_NAME(id, name) lua_pushliteral(L, name);
  EV_NAMES(EV_NAME)
#undef EV_NAME
  lua_pushcclosure(L, event_push, EV_N - 1);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &event_push_key);
  return true;
}

void plr_rt_on_event(parley_runtime *r, const parley_event *ev) {
  if (r->stopping || r->freeing || !ev->conversation) return;
  plr_conv *c = conv_get(r, ev->conversation);
  if (!c) {
    plr_log(r, 3, ev->conversation, ev->seq, "too many conversations; event dropped");
    return;
  }
  r->stats.events++;
  if (ev->seq <= c->last_seq) {
    /* Already queued or handled. Coming again while our commit of it is not
     * confirmed means the commit was lost or refused: send it again. */
    if (ev->redelivered && ev->seq <= c->sent_seq && ev->seq > c->committed && !c->job) {
      c->sent_seq = c->committed;
      plr_commit_ready(r, c);
    }
    return;
  }
  if (c->revoked) return;
  if (c->qlen >= plr_vm_limits(r->vm)->queue_max) {
    plr_log(r, 2, c->id, ev->seq, "queue full; the event will be delivered again");
    return;
  }
  bool own = ev->sender && strcmp(ev->sender, r->principal) == 0;
  plr_job *j = plr_job_new(own ? JOB_ACK : JOB_EVENT, ev->seq);
  if (!j) return;
  if (own) {
    r->stats.acked_only++;
  } else {
    lua_State *L = plr_vm_state(r->vm);
    plr_vm_budget(r->vm, L, PLR_INTERNAL_BUDGET, false);
    plr_vm_uncapped(r->vm);
    if (!plr_event_push_fn(L)) {
      plr_log(r, 3, c->id, ev->seq, "cannot convert the event: out of memory");
      free(j);
      return;
    }
    lua_pushlightuserdata(L, (void *)ev);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
      plr_log(r, 3, c->id, ev->seq, "cannot convert the event: %s", lua_tostring(L, -1));
      lua_pop(L, 1);
      free(j);
      return;
    }
    j->ev_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  c->last_seq = ev->seq;
  if (ev->kind == PARLEY_EVENT_CLOSED) c->closed = true;
  plr_conv_submit(r, c, j);
}

void plr_rt_on_assign(parley_runtime *r, const parley_assignment *a) {
  if (r->freeing || !a->conversation) return;
  plr_conv *c = conv_get(r, a->conversation);
  if (!c) {
    plr_log(r, 3, a->conversation, 0, "too many conversations; assignment ignored");
    return;
  }
  /* A handler that is running (or events already queued) keeps its work:
   * the conversation's live state already holds their changes, and the
   * commit that follows them carries everything that differs from the
   * gateway's document below. An idle conversation starts over from that
   * document, and the gateway delivers again what it did not apply. */
  bool keep = c->job || c->head;
  c->commits_stale = c->commits_out;
  c->dirty = true; /* rt.assign rebuilds the record's pending changes */
  c->epoch = a->epoch;
  c->revoked = false;
  c->leaving = false;
  c->closed = false;
  c->forgotten = false;
  /* The gateway's watermark is the truth: the stream resumes after it, and
   * the state document it sends goes with it. */
  if (!c->job && !c->head) c->last_seq = c->handled_seq = c->sent_seq = a->acked_seq;
  if (a->acked_seq > c->committed) c->committed = a->acked_seq;
  plr_vm *vm = r->vm;
  lua_State *L = plr_vm_state(vm);
  if (!lua_checkstack(L, 10)) return;
  plr_vm_uncapped(vm);
  plr_vm_rt_get(vm, "assign");
  lua_pushstring(L, c->id);
  lua_createtable(L, 0, (int)a->n_state);
  for (size_t i = 0; i < a->n_state; i++) {
    const parley_state_entry *e = &a->state[i];
    if (e->deleted || !e->value || !e->key) continue;
    lua_pushlstring(L, e->value, e->value_len);
    lua_setfield(L, -2, e->key);
  }
  lua_pushstring(L, a->locale ? a->locale : "");
  lua_pushstring(L, a->customer ? a->customer : "");
  lua_createtable(L, (int)a->n_tags, 0);
  for (size_t i = 0; i < a->n_tags; i++) {
    lua_pushstring(L, a->tags[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_pushboolean(L, keep);
  char err[512];
  c->assigning = true;
  if (plr_vm_pcall(vm, 6, 0, err, sizeof err))
    plr_log(r, 3, c->id, a->acked_seq, "assignment failed: %s", err);
  c->assigning = false;
  plr_log(r, 0, c->id, a->acked_seq, "assigned, epoch %llu", (unsigned long long)a->epoch);
  if (r->opens) plr_open_on_assign(r, c->id);
}

void plr_rt_on_revoke(parley_runtime *r, const char *conversation, uint64_t epoch,
                      const char *reason) {
  plr_conv *c = plr_conv_find(r, conversation);
  if (!c) return;
  if (epoch && epoch < c->epoch) return;
  plr_log(r, 1, c->id, c->handled_seq, "revoked: %s", reason ? reason : "");
  c->revoked = true;
  for (size_t i = 0; i < c->ntimers; i++) plr_ctimer_disarm(&c->timers[i]);
  c->ntimers = 0;
  while (c->head) {
    plr_job *j = c->head;
    c->head = j->next;
    c->qlen--;
    r->queued--;
    /* Own events and events without a handler can still be committed
     * (the gateway accepts commits up to the handoff); the rest is the
     * agent's now. */
    if (j->kind == JOB_ACK && j->seq > c->handled_seq) c->handled_seq = j->seq;
    job_free(r, j);
  }
  c->tail = NULL;
  /* Dropped events come again if the conversation comes back. */
  c->last_seq = c->job && c->job->seq > c->handled_seq ? c->job->seq : c->handled_seq;
  plr_commit_ready(r, c);
  plr_conv_maybe_forget(r, c);
  plr_rt_maybe_idle(r);
}

void plr_rt_on_send_result(parley_runtime *r, const parley_send_result *res, void *send_ud) {
  plr_job *j = send_ud;
  if (!j) return;
  if (j->kind == JOB_OPEN) {
    plr_open_on_result(r, j, res);
    return;
  }
  if (j->kind == JOB_SEND) psend_finish(j, res->status, res->seq, res->duplicate);
  if (res->status) {
    r->stats.send_failures++;
    plr_log(r, 2, j->conv->id, j->seq, "reply failed: %s%s%s", parley_strerror(res->status),
            res->message ? ": " : "", res->message ? res->message : "");
  }
  if (j->pending_sends) j->pending_sends--;
  plr_job_maybe_complete(r, j);
}

/* Tells the conversation's record how its oldest commit in flight ended: a
 * refused one gives its changes back to the pending set, so that the next
 * commit carries them instead of losing them. Answers to commits sent
 * before the last Assign are only counted: that Assign rebuilt the record
 * from the gateway's own document. */
static void commit_answered(parley_runtime *r, plr_conv *c, bool ok) {
  if (c->commits_out) c->commits_out--;
  uint64_t n = ++c->commits_answered;
  if (c->commits_stale) {
    c->commits_stale--;
    return;
  }
  if (c->forgotten || r->freeing) return;
  /* A watermark-only commit has no entry in runtime.lua's record: there is
   * nothing to settle, refused or not. */
  if (n > c->changes_upto) return;
  plr_vm *vm = r->vm;
  lua_State *L = plr_vm_state(vm);
  if (!lua_checkstack(L, 4)) return;
  plr_vm_uncapped(vm);
  plr_vm_rt_get(vm, "commit_done");
  lua_pushstring(L, c->id);
  lua_pushboolean(L, ok);
  lua_pushinteger(L, (lua_Integer)n);
  char err[256];
  if (plr_vm_pcall(vm, 3, 0, err, sizeof err))
    plr_log(r, 3, c->id, c->handled_seq, "settling a commit failed: %s", err);
  if (!ok) c->dirty = true; /* its changes went back to pending */
}

void plr_rt_on_commit_result(parley_runtime *r, const parley_commit_result *res) {
  if (r->inflight) r->inflight--;
  plr_conv *c = res->conversation ? plr_conv_find(r, res->conversation) : NULL;
  if (res->status) {
    plr_log(r, 2, res->conversation, res->ack_seq, "commit refused: %s",
            parley_strerror(res->status));
  } else if (c && res->ack_seq > c->committed) {
    c->committed = res->ack_seq;
  }
  if (c) commit_answered(r, c, res->status == 0);
  plr_rt_maybe_idle(r);
}

/* Lifecycle. ------------------------------------------------------------ */

const char *plr_rt_principal(const parley_runtime *r) { return r->principal; }
plr_vm *plr_runtime_vm(parley_runtime *r) { return r->vm; }
void plr_runtime_stats(const parley_runtime *r, plr_stats *out) { *out = r->stats; }

int plr_runtime_new_driver(const parley_runtime_options *o, const plr_driver *d, parley_runtime **out,
                           char *err, size_t errlen) {
  *out = NULL;
  if (!o || !o->loop || !o->bot_dir || !d || !d->send || !d->action || !d->commit) {
    if (err && errlen) snprintf(err, errlen, "runtime options need a loop, a bot_dir and a driver");
    return PARLEY_EINVAL;
  }
  if (o->struct_version > PARLEY_RUNTIME_OPTIONS_VERSION) {
    if (err && errlen)
      snprintf(err, errlen, "runtime options version %u is newer than this library's %u",
               (unsigned)o->struct_version, (unsigned)PARLEY_RUNTIME_OPTIONS_VERSION);
    return PARLEY_EINVAL;
  }
  if ((unsigned)o->log_format > PARLEY_LOG_LOGFMT || (unsigned)o->log_level > PARLEY_LOG_ERROR) {
    if (err && errlen) snprintf(err, errlen, "runtime options: unknown log_format or log_level");
    return PARLEY_EINVAL;
  }
  parley_runtime *r = calloc(1, sizeof *r);
  if (!r) return PARLEY_ENOMEM;
  r->log = plog_new(o->log_out ? o->log_out : stderr, (int)o->log_format, (int)o->log_level);
  if (!r->log) {
    free(r);
    return PARLEY_ENOMEM;
  }
  r->loop = o->loop;
  r->drv = *d;
  r->on_idle = o->on_idle;
  r->on_observe = o->on_observe;
  r->ud = o->ud;
  r->bot_dir = strdup(o->bot_dir);
  int rc = r->bot_dir ? plr_vm_load(r, o->bot_dir, &r->vm, err, errlen) : PARLEY_ENOMEM;
  if (rc == 0) {
    r->principal = strdup(o->principal && *o->principal ? o->principal : plr_vm_name(r->vm));
    if (!r->principal) rc = PARLEY_ENOMEM;
  }
  if (rc) {
    /* No handle was opened yet: release frees the rest at once. */
    plr_vm_free(r->vm);
    plr_rt_release(r);
    return rc;
  }
  uv_timer_init(r->loop, &r->flush_timer);
  r->flush_timer.data = r;
  uv_timer_init(r->loop, &r->drain_timer);
  r->drain_timer.data = r;
  r->handles_open = 2;
  *out = r;
  return 0;
}

static void close_handles(parley_runtime *r) {
  if (r->handles_closed) return;
  r->handles_closed = true;
  r->flush_armed = false;
  uv_timer_stop(&r->flush_timer);
  uv_timer_stop(&r->drain_timer);
  uv_close((uv_handle_t *)&r->flush_timer, handle_closed);
  uv_close((uv_handle_t *)&r->drain_timer, handle_closed);
}

/* Stopped: the runtime's handles close now, so a loop run until it has no
 * handles ends, and parley_runtime_free after it needs no further loop run. */
static void finish_stop(parley_runtime *r) {
  if (r->stop_done_called) return;
  r->stop_done_called = true;
  close_handles(r);
  if (r->drv.quiesce) r->drv.quiesce(r->drv.ud);
  if (r->stop_done) r->stop_done(r->stop_ud);
}

void plr_rt_on_stopped(parley_runtime *r) { finish_stop(r); }

static void begin_driver_stop(parley_runtime *r, uint32_t left) {
  if (r->stop_called_driver) return;
  r->stop_called_driver = true;
  if (r->drv.stop) r->drv.stop(r->drv.ud, left);
  else finish_stop(r);
}

static void check_drained(parley_runtime *r) {
  if (!r->stopping || r->stop_called_driver) return;
  if (runtime_busy(r)) return;
  begin_driver_stop(r, 1000);
}

static void drain_timeout(uv_timer_t *t) {
  parley_runtime *r = t->data;
  plr_log(r, 2, NULL, 0, "drain timed out with %u handlers running, %llu events queued",
          r->jobs_running, (unsigned long long)r->queued);
  begin_driver_stop(r, 0);
}

void parley_runtime_stop(parley_runtime *r, uint32_t drain_ms, void (*done)(void *ud), void *ud) {
  if (!r || r->stopping) return;
  r->stopping = true;
  r->stop_done = done;
  r->stop_ud = ud;
  /* Timers live in the conversations' state; whoever gets the
   * conversations next arms them again. */
  for (size_t b = 0; b < PLR_BUCKETS; b++)
    for (plr_conv *c = r->buckets[b]; c; c = c->hnext)
      for (size_t i = 0; i < c->ntimers; i++) plr_ctimer_disarm(&c->timers[i]);
  uv_timer_start(&r->drain_timer, drain_timeout, drain_ms, 0);
  check_drained(r);
}

int parley_runtime_start(parley_runtime *r) {
  if (!r) return PARLEY_EINVAL;
  return r->drv.start ? r->drv.start(r->drv.ud) : 0;
}

bool parley_runtime_busy(const parley_runtime *r) { return r && runtime_busy(r); }

static bool psend_str(plr_psend *p, const char **dst, const char *src) {
  if (!src) return true;
  if (p->nstrings >= sizeof p->strings / sizeof p->strings[0]) return false;
  char *s = strdup(src);
  if (!s) return false;
  p->strings[p->nstrings++] = s;
  *dst = s;
  return true;
}

int parley_runtime_send_proactive(parley_runtime *r, const char *conversation,
                               const parley_content *content, const uint8_t msg_id[16],
                               void (*done)(void *ud, int status, uint64_t seq, bool duplicate),
                               void *ud) {
  /* The same limits as a Lua reply's (runtime.lua, docs/lua-api.md). */
  if (!r || !conversation || !content || !msg_id || content->n_buttons > PLR_BUTTONS_MAX ||
      (content->text && strlen(content->text) > PLR_TEXT_MAX) ||
      (content->fallback && strlen(content->fallback) > PLR_TEXT_MAX))
    return PARLEY_EINVAL;
  if (r->stopping || r->freeing) return PARLEY_ESHUTDOWN;
  plr_conv *c = plr_conv_find(r, conversation);
  /* Only a conversation this runtime holds: the epoch must be current. */
  if (!c || c->revoked || c->epoch == 0) return PARLEY_ENOTFOUND;
  if (c->qlen >= plr_vm_limits(r->vm)->queue_max) return PARLEY_EBACKPRESSURE;
  plr_psend *p = calloc(1, sizeof *p);
  plr_job *j = plr_job_new(JOB_SEND, c->handled_seq);
  if (!p || !j) {
    free(p);
    free(j);
    return PARLEY_ENOMEM;
  }
  p->content.kind = content->kind;
  p->content.source_seq = content->source_seq;
  p->content.width = content->width;
  p->content.height = content->height;
  bool ok = psend_str(p, &p->content.text, content->text) &&
            psend_str(p, &p->content.title, content->title) &&
            psend_str(p, &p->content.image_url, content->image_url) &&
            psend_str(p, &p->content.payload, content->payload) &&
            psend_str(p, &p->content.fallback, content->fallback);
  ok = ok && psend_str(p, &p->content.label, content->label);
  if (ok && content->n_buttons) {
    p->buttons = calloc(content->n_buttons, sizeof *p->buttons);
    ok = p->buttons != NULL;
    for (size_t i = 0; ok && i < content->n_buttons; i++)
      ok = psend_str(p, &p->buttons[i].label, content->buttons[i].label) &&
           psend_str(p, &p->buttons[i].payload, content->buttons[i].payload) &&
           psend_str(p, &p->buttons[i].url, content->buttons[i].url);
    p->content.buttons = p->buttons;
    p->content.n_buttons = content->n_buttons;
  }
  if (!ok) {
    psend_free(p);
    free(j);
    return PARLEY_ENOMEM;
  }
  memcpy(p->msg_id, msg_id, PARLEY_MSG_ID_LEN);
  p->done = done;
  p->ud = ud;
  j->psend = p;
  plr_conv_submit(r, c, j);
  return 0;
}

uint64_t parley_runtime_committed(const parley_runtime *r, const char *conversation) {
  const plr_conv *c = r && conversation ? plr_conv_find(r, conversation) : NULL;
  return c ? c->committed : 0;
}

/* Frees every job of every conversation; running ones are abandoned. */
static void drop_jobs(parley_runtime *r) {
  for (size_t b = 0; b < PLR_BUCKETS; b++)
    for (plr_conv *c = r->buckets[b]; c; c = c->hnext) {
      while (c->head) {
        plr_job *j = c->head;
        c->head = j->next;
        job_free(r, j);
      }
      c->tail = NULL;
      if (c->job) {
        if (c->job->waiting_http && c->job->http_handle && r->drv.http_cancel)
          r->drv.http_cancel(r->drv.ud, c->job->http_handle);
        job_free(r, c->job);
        c->job = NULL;
      }
      for (size_t i = 0; i < c->ntimers; i++) plr_ctimer_disarm(&c->timers[i]);
      c->ntimers = 0;
    }
}

void parley_runtime_free(parley_runtime *r) {
  if (!r) return;
  r->freeing = true;
  /* The driver goes first: after this no callback can name a job. */
  if (r->drv.destroy) r->drv.destroy(r->drv.ud);
  plr_open_drop_all(r);
  drop_jobs(r);
  r->n_co_pool = 0;
  plr_vm_free(r->vm);
  r->vm = NULL;
  plr_vm_free(r->next_vm);
  r->next_vm = NULL;
  close_handles(r);
  if (r->handles_open == 0) plr_rt_release(r);
}

/* Reload. --------------------------------------------------------------- */

/* Moves conversation records and queued events into the new state. */
static void swap_vm(parley_runtime *r) {
  plr_vm *old = r->vm, *nv = r->next_vm;
  lua_State *Lo = plr_vm_state(old), *Ln = plr_vm_state(nv);
  char err[512];
  plr_vm_uncapped(old);
  plr_vm_uncapped(nv);
  plr_vm_rt_get(old, "export");
  if (plr_vm_pcall(old, 0, 1, err, sizeof err)) {
    plr_log(r, 3, NULL, 0, "reload: export failed, keeping the old bot: %s", err);
    plr_vm_free(nv);
    r->next_vm = NULL;
    r->stats.reload_failures++;
    return;
  }
  plr_vm_uncapped(old);
  plr_vm_rt_get(nv, "import");
  lua_pushstring(Ln, lua_tostring(Lo, -1));
  lua_pop(Lo, 1);
  if (plr_vm_pcall(nv, 1, 0, err, sizeof err)) {
    plr_log(r, 3, NULL, 0, "reload: import failed, keeping the old bot: %s", err);
    plr_vm_free(nv);
    r->next_vm = NULL;
    r->stats.reload_failures++;
    return;
  }
  for (size_t b = 0; b < PLR_BUCKETS; b++)
    for (plr_conv *c = r->buckets[b]; c; c = c->hnext)
      for (plr_job *j = c->head; j; j = j->next) {
        if (j->kind != JOB_EVENT) continue;
        plr_vm_uncapped(old);
        plr_vm_uncapped(nv);
        plr_vm_rt_get(old, "event_to_json");
        lua_rawgeti(Lo, LUA_REGISTRYINDEX, j->ev_ref);
        if (plr_vm_pcall(old, 1, 1, err, sizeof err)) {
          lua_pushstring(Lo, "{}");
        }
        plr_vm_uncapped(old);
        plr_vm_rt_get(nv, "event_from_json");
        lua_pushstring(Ln, lua_tostring(Lo, -1));
        lua_pop(Lo, 1);
        luaL_unref(Lo, LUA_REGISTRYINDEX, j->ev_ref);
        if (plr_vm_pcall(nv, 1, 1, err, sizeof err)) {
          plr_vm_uncapped(nv);
          lua_newtable(Ln);
        }
        plr_vm_uncapped(nv);
        j->ev_ref = luaL_ref(Ln, LUA_REGISTRYINDEX);
      }
  /* The new state's records came from the export: whatever they hold is
   * for the next commits to carry. */
  for (size_t b = 0; b < PLR_BUCKETS; b++)
    for (plr_conv *c = r->buckets[b]; c; c = c->hnext) c->dirty = true;
  r->vm = nv;
  r->next_vm = NULL;
  r->n_co_pool = 0; /* those threads belong to the old state */
  plr_vm_free(old);
  r->stats.reloads++;
  plr_log(r, 1, NULL, 0, "reloaded %s", plr_vm_name(nv));
  pump_all(r);
}

int parley_runtime_reload(parley_runtime *r, char *err, size_t errlen) {
  plr_vm *nv = NULL;
  int rc = plr_vm_load(r, r->bot_dir, &nv, err, errlen);
  if (rc) {
    r->stats.reload_failures++;
    plr_log(r, 3, NULL, 0, "reload failed, keeping the running bot: %s", err ? err : "");
    return rc;
  }
  plr_vm_free(r->next_vm);
  r->next_vm = nv;
  /* Handlers in flight finish in the old state; queued events wait and
   * then run in the new one. */
  if (!r->jobs_running) swap_vm(r);
  return 0;
}
