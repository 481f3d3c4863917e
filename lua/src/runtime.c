/* The event machinery of the bot runtime: conversations, their queues, one
 * coroutine per handled event, replies with derived ids, batched commits,
 * timers, HTTP suspension, drain and hot reload.
 *
 * Order within a conversation: its events wait in a queue; the next one
 * starts only when the previous handler has finished AND every reply it
 * sent has been answered AND its changes were moved to the commit record.
 * So a commit never acknowledges an event whose replies are not stored, and
 * never carries state of an event it does not acknowledge.
 */
#include "vm.h"

#include <lauxlib.h>

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PLR_BUCKETS 4096
#define PLR_COMMIT_BATCH 256
#define PLR_REPLIES_MAX 100
#define PLR_TIMERS_MAX 32
#define PLR_TIMER_ORDINAL 0x40000000u
#define PLR_IDEM_ORDINAL 0xFFFFFFFFu
#define PLR_HTTP_HEADERS_MAX 64
/* A timer that came due while its conversation was elsewhere fires this
 * long after the conversation comes back, so the events that arrive with
 * the assignment are handled first. */
#define PLR_ASSIGN_GRACE_MS 1000

typedef enum job_kind { JOB_EVENT, JOB_TIMER, JOB_ACK } job_kind;

typedef struct plr_conv plr_conv;

typedef struct plr_job {
  struct plr_job *next;
  plr_conv *conv;
  job_kind kind;
  uint64_t seq;        /* inbound seq; for timers the last handled seq */
  uint64_t timer_id;
  int ev_ref;          /* registry ref of the event table */
  lua_State *co;
  int co_ref;
  int64_t budget;
  bool exhausted;
  uint32_t ordinal;    /* replies and actions sent so far */
  uint32_t pending_sends;
  bool started, done, failed, finished, waiting_http;
  void *http_handle;
} plr_job;

typedef struct plr_uvt {
  uv_timer_t h;
  plr_runtime *r;
  plr_conv *conv;
  uint64_t id;
} plr_uvt;

typedef struct plr_ctimer {
  uint64_t id;
  int64_t due;
  plr_uvt *uvt;  /* armed handle, or NULL */
  bool queued;   /* fired; its job waits in the queue */
} plr_ctimer;

struct plr_conv {
  plr_conv *hnext;
  plr_conv *rnext;       /* commit-ready list */
  char *id;
  uint64_t epoch;
  bool revoked, ready, pumping, assigning;
  plr_job *head, *tail;  /* queued, not started */
  uint32_t qlen;
  plr_job *job;          /* running */
  uint64_t last_seq;     /* highest seq queued */
  uint64_t handled_seq;  /* highest seq whose changes are in the commit record */
  uint64_t sent_seq;     /* highest ack_seq put in a commit frame */
  uint64_t committed;    /* highest ack_seq the gateway applied */
  plr_ctimer timers[PLR_TIMERS_MAX];
  size_t ntimers;
};

struct plr_runtime {
  uv_loop_t *loop;
  plr_driver drv;
  plr_vm *vm, *next_vm;
  char *principal;
  char *bot_dir;
  int log_format, log_level;
  FILE *log_out;
  void (*on_idle)(void *);
  void *ud;
  plr_conv *buckets[PLR_BUCKETS];
  size_t nconvs;
  plr_job *current;
  uint32_t jobs_running;
  uint64_t queued;
  plr_conv *ready_head;
  uint64_t inflight;
  uv_timer_t flush_timer;
  bool flush_armed;
  uv_timer_t drain_timer;
  int handles_open;
  bool stopping, stop_called_driver, stop_done_called, freeing;
  void (*stop_done)(void *);
  void *stop_ud;
  plr_stats stats;
};

static void conv_pump(plr_runtime *r, plr_conv *c);
static void swap_vm(plr_runtime *r);
static void job_maybe_complete(plr_runtime *r, plr_job *j);
static void check_drained(plr_runtime *r);

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
    if (conv) fprintf(f, " [%s#%llu]", conv, (unsigned long long)seq);
    fprintf(f, " %s\n", msg);
  }
  fflush(f);
}

/* Conversations. -------------------------------------------------------- */

static size_t hash_id(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return (size_t)(h % PLR_BUCKETS);
}

static plr_conv *conv_find(const plr_runtime *r, const char *id) {
  for (plr_conv *c = r->buckets[hash_id(id)]; c; c = c->hnext)
    if (strcmp(c->id, id) == 0) return c;
  return NULL;
}

static plr_conv *conv_get(plr_runtime *r, const char *id) {
  plr_conv *c = conv_find(r, id);
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

int64_t plr_rt_now(plr_runtime *r) {
  if (r && r->drv.now_ms) return r->drv.now_ms(r->drv.ud);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void derive(plr_runtime *r, const char *conv, uint64_t seq, uint32_t ord,
                   uint8_t out[PARLEY_MSG_ID_LEN]) {
  if (r->drv.derive) r->drv.derive(r->principal, conv, seq, ord, out);
  else parley_msg_id_derive(r->principal, conv, seq, ord, out);
}

/* uv handles: the runtime's memory goes when the last one is closed. */

static void runtime_release(plr_runtime *r) {
  for (size_t b = 0; b < PLR_BUCKETS; b++) {
    plr_conv *c = r->buckets[b];
    while (c) {
      plr_conv *n = c->hnext;
      free(c->id);
      free(c);
      c = n;
    }
  }
  free(r->principal);
  free(r->bot_dir);
  free(r);
}

static void handle_closed(uv_handle_t *h) {
  plr_runtime *r = h->data;
  if (--r->handles_open == 0 && r->freeing) runtime_release(r);
}

static void uvt_closed(uv_handle_t *h) {
  plr_uvt *t = (plr_uvt *)h;
  plr_runtime *r = t->r;
  free(t);
  if (--r->handles_open == 0 && r->freeing) runtime_release(r);
}

static void ctimer_disarm(plr_ctimer *ct) {
  if (!ct->uvt) return;
  uv_timer_stop(&ct->uvt->h);
  uv_close((uv_handle_t *)&ct->uvt->h, uvt_closed);
  ct->uvt = NULL;
}

/* Jobs. ----------------------------------------------------------------- */

static void job_free(plr_runtime *r, plr_job *j) {
  lua_State *L = plr_vm_state(r->vm);
  /* The coroutine is only dropped, not reset: resetting would run pending
   * __close handlers, and after a budget error Lua would run them with
   * hooks off. */
  if (j->co_ref != LUA_NOREF && j->co_ref != 0) luaL_unref(L, LUA_REGISTRYINDEX, j->co_ref);
  if (j->ev_ref != LUA_NOREF && j->ev_ref != 0) luaL_unref(L, LUA_REGISTRYINDEX, j->ev_ref);
  free(j);
}

static void enqueue(plr_runtime *r, plr_conv *c, plr_job *j) {
  j->conv = c;
  if (c->tail) c->tail->next = j;
  else c->head = j;
  c->tail = j;
  c->qlen++;
  r->queued++;
}

static void flush_cb(uv_timer_t *t);

static void commit_ready(plr_runtime *r, plr_conv *c) {
  if (c->handled_seq <= c->sent_seq) return;
  if (!c->ready) {
    c->ready = true;
    c->rnext = r->ready_head;
    r->ready_head = c;
  }
  if (!r->flush_armed && !r->freeing) {
    r->flush_armed = true;
    uv_timer_start(&r->flush_timer, flush_cb, 0, 0);
  }
}

static bool runtime_busy(const plr_runtime *r) {
  return r->jobs_running || r->queued || r->ready_head || r->flush_armed || r->inflight;
}

static void maybe_idle(plr_runtime *r) {
  if (r->stopping) {
    check_drained(r);
    return;
  }
  if (r->on_idle && !runtime_busy(r)) r->on_idle(r->ud);
}

/* Copies a traceback of the failed coroutine into buf. */
static void job_error_text(plr_runtime *r, plr_job *j, char *buf, size_t size) {
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
static void job_fail(plr_runtime *r, plr_job *j, const char *why) {
  plr_conv *c = j->conv;
  r->stats.failures++;
  if (j->exhausted) r->stats.budget_exceeded++;
  plr_log(r, 3, c->id, j->seq, "handler failed: %s", why);
  j->failed = true;
  j->done = true;
  plr_vm *vm = r->vm;
  lua_State *L = plr_vm_state(vm);
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
}

static void job_resume(plr_runtime *r, plr_job *j, int nargs) {
  plr_vm *vm = r->vm;
  lua_State *L = plr_vm_state(vm);
  r->current = j;
  plr_vm_budget(vm, j->co, j->budget, j->exhausted);
  int nres = 0;
  int rc = lua_resume(j->co, L, nargs, &nres);
  j->budget = vm->budget;
  j->exhausted = vm->exhausted;
  r->current = NULL;
  if (rc == LUA_YIELD) {
    lua_pop(j->co, nres);
    if (j->waiting_http) return;
    job_fail(r, j, "coroutine.yield outside a coroutine the handler created");
  } else if (rc == LUA_OK && j->exhausted) {
    /* The last error was swallowed where no Lua instruction followed. */
    job_fail(r, j, "handler exceeded its instruction budget");
  } else if (rc == LUA_OK) {
    if (nres > 0 && lua_toboolean(j->co, -nres)) r->stats.handled++;
    lua_pop(j->co, nres);
    j->done = true;
  } else {
    char why[2048];
    job_error_text(r, j, why, sizeof why);
    job_fail(r, j, why);
  }
  job_maybe_complete(r, j);
}

static void job_start(plr_runtime *r, plr_job *j) {
  plr_vm *vm = r->vm;
  lua_State *L = plr_vm_state(vm);
  j->started = true;
  plr_vm_budget(vm, L, PLR_INTERNAL_BUDGET, false);
  j->co = lua_newthread(L);
  j->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  j->budget = (int64_t)plr_vm_limits(vm)->instructions;
  j->exhausted = false;
  plr_vm_rt_get(vm, "run");
  lua_pushstring(L, j->conv->id);
  lua_pushstring(L, j->kind == JOB_TIMER ? "timer" : "event");
  push_job_arg(L, j);
  lua_pushinteger(L, (lua_Integer)j->seq);
  lua_xmove(L, j->co, 5);
  job_resume(r, j, 4);
}

/* The job is over when its handler returned (or failed) and every send it
 * made was answered. Then its changes go to the commit record. */
static void job_maybe_complete(plr_runtime *r, plr_job *j) {
  if (!j->done || j->pending_sends || j->waiting_http || j->finished) return;
  plr_conv *c = j->conv;
  plr_vm *vm = r->vm;
  lua_State *L = plr_vm_state(vm);
  if (!j->failed) {
    plr_vm_rt_get(vm, "finish");
    lua_pushstring(L, c->id);
    plr_job *prev = r->current;
    r->current = j;
    char err[1024];
    int rc = plr_vm_pcall(vm, 1, 0, err, sizeof err);
    r->current = prev;
    if (rc) {
      job_fail(r, j, err);
      if (j->pending_sends) return; /* the fallback reply is on its way */
    }
  }
  j->finished = true;
  if (j->kind == JOB_EVENT && j->seq > c->handled_seq) c->handled_seq = j->seq;
  c->job = NULL;
  r->jobs_running--;
  job_free(r, j);
  commit_ready(r, c);
  /* A reload waits for the moment no handler runs. */
  if (r->next_vm && !r->jobs_running) swap_vm(r);
  else conv_pump(r, c);
  maybe_idle(r);
}

/* Starts queued jobs of c until one has to wait. Re-entry (a job that
 * completes inside job_start) continues this loop instead of recursing. */
static void conv_pump(plr_runtime *r, plr_conv *c) {
  if (c->pumping) return;
  c->pumping = true;
  while (!c->job && c->head && !r->next_vm && !r->freeing) {
    plr_job *j = c->head;
    c->head = j->next;
    if (!c->head) c->tail = NULL;
    j->next = NULL;
    c->qlen--;
    r->queued--;
    if (j->kind == JOB_ACK) {
      if (j->seq > c->handled_seq) c->handled_seq = j->seq;
      job_free(r, j);
      commit_ready(r, c);
      continue;
    }
    c->job = j;
    r->jobs_running++;
    job_start(r, j);
  }
  c->pumping = false;
}

static void pump_all(plr_runtime *r) {
  for (size_t b = 0; b < PLR_BUCKETS; b++)
    for (plr_conv *c = r->buckets[b]; c; c = c->hnext) conv_pump(r, c);
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
  size_t na = (size_t)luaL_len(L, add), nr = (size_t)luaL_len(L, rm);
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

static void flush_cb(uv_timer_t *t) {
  plr_runtime *r = t->data;
  r->flush_armed = false;
  plr_vm *vm = r->vm;
  lua_State *L = plr_vm_state(vm);
  parley_commit items[PLR_COMMIT_BATCH];
  parley_state_entry *ents[PLR_COMMIT_BATCH];
  const char **tags[PLR_COMMIT_BATCH];
  plr_conv *convs[PLR_COMMIT_BATCH];
  size_t n = 0;
  int top = lua_gettop(L);
  if (!lua_checkstack(L, PLR_COMMIT_BATCH * 3 + 20)) return;
  while (r->ready_head && n < PLR_COMMIT_BATCH) {
    plr_conv *c = r->ready_head;
    r->ready_head = c->rnext;
    c->rnext = NULL;
    c->ready = false;
    if (c->handled_seq <= c->sent_seq) continue;
    plr_vm_rt_get(vm, "take_commit");
    lua_pushstring(L, c->id);
    char err[512];
    if (plr_vm_pcall(vm, 1, 3, err, sizeof err)) {
      plr_log(r, 3, c->id, c->handled_seq, "collecting the commit failed: %s", err);
      continue;
    }
    ents[n] = NULL;
    tags[n] = NULL;
    if (build_commit(L, c, &items[n], &ents[n], &tags[n])) {
      free(ents[n]);
      free(tags[n]);
      plr_log(r, 3, c->id, c->handled_seq, "out of memory building a commit");
      continue;
    }
    convs[n] = c;
    n++;
  }
  if (n) {
    int rc = r->drv.commit(r->drv.ud, items, n);
    if (rc) {
      plr_log(r, 2, NULL, 0, "commit of %zu conversations not sent: %s; the events "
              "will be delivered again", n, parley_strerror(rc));
    } else {
      r->stats.commits++;
      r->stats.commit_items += n;
      r->inflight += n;
      for (size_t i = 0; i < n; i++) convs[i]->sent_seq = items[i].ack_seq;
    }
    for (size_t i = 0; i < n; i++) {
      free(ents[i]);
      free(tags[i]);
    }
  }
  lua_settop(L, top);
  if (r->ready_head && !r->flush_armed) {
    r->flush_armed = true;
    uv_timer_start(&r->flush_timer, flush_cb, 0, 0);
  }
  maybe_idle(r);
}

/* Timers. --------------------------------------------------------------- */

static void uvt_fire(uv_timer_t *h) {
  plr_uvt *t = (plr_uvt *)h;
  plr_runtime *r = t->r;
  plr_conv *c = t->conv;
  uint64_t id = t->id;
  for (size_t i = 0; i < c->ntimers; i++) {
    plr_ctimer *ct = &c->timers[i];
    if (ct->id != id || ct->uvt != t) continue;
    ctimer_disarm(ct);
    if (c->revoked || r->stopping) return;
    plr_job *j = calloc(1, sizeof *j);
    if (!j) return;
    j->kind = JOB_TIMER;
    j->timer_id = id;
    j->seq = c->handled_seq;
    j->ev_ref = LUA_NOREF;
    j->co_ref = LUA_NOREF;
    ct->queued = true;
    r->stats.timers_fired++;
    enqueue(r, c, j);
    conv_pump(r, c);
    maybe_idle(r);
    return;
  }
}

void plr_rt_fire_due(plr_runtime *r) {
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

static void ctimer_arm(plr_runtime *r, plr_conv *c, plr_ctimer *ct) {
  if (ct->uvt || ct->queued || c->revoked || r->freeing) return;
  plr_uvt *t = calloc(1, sizeof *t);
  if (!t) return;
  t->r = r;
  t->conv = c;
  t->id = ct->id;
  uv_timer_init(r->loop, &t->h);
  r->handles_open++;
  int64_t delay = ct->due - plr_rt_now(r);
  if (c->assigning && delay < PLR_ASSIGN_GRACE_MS) delay = PLR_ASSIGN_GRACE_MS;
  uv_timer_start(&t->h, uvt_fire, delay > 0 ? (uint64_t)delay : 0, 0);
  ct->uvt = t;
}

/* C.sync_timers(conv, {{id, due}, ...}): the timers the conversation's state
 * holds. Arms the new ones, disarms the ones that are gone. */
static int l_sync_timers(lua_State *L) {
  plr_runtime *r = lua_touserdata(L, lua_upvalueindex(1));
  const char *id = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  plr_conv *c = conv_find(r, id);
  if (!c) return 0;
  size_t n = (size_t)luaL_len(L, 2);
  if (n > PLR_TIMERS_MAX) n = PLR_TIMERS_MAX;
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
    else ctimer_disarm(&c->timers[i]);
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
    if (ct->due != dues[m] && ct->uvt) ctimer_disarm(ct);
    ct->due = dues[m];
    ctimer_arm(r, c, ct);
  }
  return 0;
}

/* Sends. ---------------------------------------------------------------- */

static plr_job *current_job(lua_State *L, plr_runtime *r, const char *conv) {
  plr_job *j = r->current;
  if (!j) luaL_error(L, "replies and actions are only possible inside a handler");
  if (strcmp(j->conv->id, conv) != 0)
    luaL_error(L, "this ctx belongs to conversation %s, not to the running handler", conv);
  if (j->ordinal >= PLR_REPLIES_MAX)
    luaL_error(L, "a handler may send at most %d replies and actions", PLR_REPLIES_MAX);
  return j;
}

static void job_msg_id(plr_runtime *r, plr_job *j, uint8_t id[PARLEY_MSG_ID_LEN]) {
  if (j->kind == JOB_TIMER)
    derive(r, j->conv->id, 0,
           PLR_TIMER_ORDINAL + (uint32_t)(j->timer_id % 0x3FFFFF) * 256u + j->ordinal, id);
  else
    derive(r, j->conv->id, j->seq, j->ordinal, id);
  j->ordinal++;
}

static const char *opt_field(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  const char *s = lua_tostring(L, -1);
  lua_pop(L, 1); /* the table keeps the string alive */
  return s;
}

static parley_content_kind content_kind(const char *k) {
  if (!k) return PARLEY_CONTENT_NONE;
  if (strcmp(k, "text") == 0) return PARLEY_CONTENT_TEXT;
  if (strcmp(k, "card") == 0) return PARLEY_CONTENT_CARD;
  if (strcmp(k, "quick_replies") == 0) return PARLEY_CONTENT_QUICK_REPLIES;
  if (strcmp(k, "image") == 0) return PARLEY_CONTENT_IMAGE;
  return PARLEY_CONTENT_NONE;
}

static int push_send_status(lua_State *L, plr_runtime *r, plr_job *j, int rc) {
  if (rc) {
    r->stats.send_failures++;
    lua_pushnil(L);
    lua_pushstring(L, parley_strerror(rc));
    return 2;
  }
  r->stats.sends++;
  j->pending_sends++;
  lua_pushboolean(L, 1);
  return 1;
}

/* C.send(conv, content, quote): content is runtime.lua's normalised table. */
static int l_send(lua_State *L) {
  plr_runtime *r = lua_touserdata(L, lua_upvalueindex(1));
  const char *conv = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  plr_job *j = current_job(L, r, conv);
  parley_content ct;
  memset(&ct, 0, sizeof ct);
  ct.kind = content_kind(opt_field(L, 2, "kind"));
  if (ct.kind == PARLEY_CONTENT_NONE) return luaL_error(L, "unknown content kind");
  ct.text = opt_field(L, 2, "text");
  ct.title = opt_field(L, 2, "title");
  ct.image_url = opt_field(L, 2, "image_url");
  ct.fallback = opt_field(L, 2, "fallback");
  parley_button buttons[16];
  if (lua_getfield(L, 2, "buttons") == LUA_TTABLE) {
    int bt = lua_gettop(L);
    size_t n = (size_t)luaL_len(L, bt);
    if (n > 16) n = 16;
    for (size_t i = 0; i < n; i++) {
      lua_rawgeti(L, bt, (lua_Integer)i + 1);
      int b = lua_gettop(L);
      buttons[i].label = opt_field(L, b, "label");
      buttons[i].payload = opt_field(L, b, "payload");
      buttons[i].url = opt_field(L, b, "url");
      lua_pop(L, 1); /* the buttons table keeps it alive */
    }
    ct.buttons = buttons;
    ct.n_buttons = n;
  }
  parley_quote q;
  memset(&q, 0, sizeof q);
  if (lua_type(L, 3) == LUA_TTABLE) {
    lua_getfield(L, 3, "seq");
    q.seq = (uint64_t)lua_tointeger(L, -1);
    lua_pop(L, 1);
    q.excerpt = opt_field(L, 3, "excerpt");
    q.sender = opt_field(L, 3, "sender");
  }
  uint8_t id[PARLEY_MSG_ID_LEN];
  job_msg_id(r, j, id);
  int rc = r->drv.send(r->drv.ud, conv, &ct, q.seq ? &q : NULL, id, j->conv->epoch, j);
  return push_send_status(L, r, j, rc);
}

/* C.action(conv, kind, fields). */
static int l_action(lua_State *L) {
  plr_runtime *r = lua_touserdata(L, lua_upvalueindex(1));
  const char *conv = luaL_checkstring(L, 1);
  const char *kind = luaL_checkstring(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  plr_job *j = current_job(L, r, conv);
  parley_action a;
  memset(&a, 0, sizeof a);
  if (strcmp(kind, "handoff") == 0) a.kind = PARLEY_ACTION_HANDOFF;
  else if (strcmp(kind, "close") == 0) a.kind = PARLEY_ACTION_CLOSE;
  else if (strcmp(kind, "set_locale") == 0) a.kind = PARLEY_ACTION_SET_LOCALE;
  else return luaL_error(L, "unknown action '%s'", kind);
  a.queue = opt_field(L, 3, "queue");
  a.note = opt_field(L, 3, "note");
  a.locale = opt_field(L, 3, "locale");
  uint8_t id[PARLEY_MSG_ID_LEN];
  job_msg_id(r, j, id);
  int rc = r->drv.action(r->drv.ud, conv, &a, id, j->conv->epoch, j);
  return push_send_status(L, r, j, rc);
}

static int l_idem(lua_State *L) {
  plr_runtime *r = lua_touserdata(L, lua_upvalueindex(1));
  const char *conv = luaL_checkstring(L, 1);
  uint64_t seq = (uint64_t)luaL_checkinteger(L, 2);
  bool timer = lua_toboolean(L, 3);
  uint8_t id[PARLEY_MSG_ID_LEN];
  uint32_t ord = PLR_IDEM_ORDINAL;
  if (timer && r->current) ord = PLR_TIMER_ORDINAL - 1 - (uint32_t)(r->current->timer_id % 0xFFFF);
  derive(r, conv, seq, ord, id);
  char hex[33];
  parley_msg_id_hex(id, hex);
  lua_pushstring(L, hex);
  return 1;
}

/* HTTP. ----------------------------------------------------------------- */

static void http_done(void *cb_ud, const plr_http_resp *resp) {
  plr_job *j = cb_ud;
  plr_conv *c = j->conv;
  plr_runtime *r = NULL;
  /* The job knows its conversation, the conversation not its runtime: the
   * runtime rides in the job's Lua state. */
  plr_vm *vm = plr_vm_of(j->co);
  r = vm->rt;
  j->waiting_http = false;
  j->http_handle = NULL;
  lua_State *co = j->co;
  if (!lua_checkstack(co, 8)) {
    job_fail(r, j, "out of stack for the HTTP response");
    job_maybe_complete(r, j);
    return;
  }
  if (resp->status == 0 && resp->error) {
    lua_pushnil(co);
    lua_pushstring(co, resp->error);
    plr_log(r, 1, c->id, j->seq, "http request failed: %s", resp->error);
    job_resume(r, j, 2);
    return;
  }
  size_t max = plr_vm_limits(vm)->http_max_body;
  if (resp->body_len > max) {
    lua_pushnil(co);
    lua_pushfstring(co, "response body larger than %d bytes", (int)max);
    job_resume(r, j, 2);
    return;
  }
  lua_createtable(co, 0, 3);
  lua_pushinteger(co, resp->status);
  lua_setfield(co, -2, "status");
  lua_pushlstring(co, resp->body ? resp->body : "", resp->body ? resp->body_len : 0);
  lua_setfield(co, -2, "body");
  lua_createtable(co, 0, (int)resp->n_headers);
  for (size_t i = 0; i < resp->n_headers; i++) {
    const char *h = resp->headers[i];
    const char *colon = strchr(h, ':');
    if (!colon) continue;
    luaL_Buffer b;
    luaL_buffinit(co, &b);
    for (const char *p = h; p < colon; p++) luaL_addchar(&b, (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p));
    luaL_pushresult(&b);
    const char *v = colon + 1;
    while (*v == ' ' || *v == '\t') v++;
    lua_pushstring(co, v);
    lua_settable(co, -3);
  }
  lua_setfield(co, -2, "headers");
  job_resume(r, j, 1);
}

/* C.http(method, url, headers, body, timeout_ms): yields the handler's
 * coroutine until the response; returns resp or nil, err. */
static int l_http(lua_State *L) {
  plr_runtime *r = lua_touserdata(L, lua_upvalueindex(1));
  plr_job *j = r->current;
  if (!j || L != j->co)
    return luaL_error(L, "http calls are only possible in a handler's own coroutine "
                         "(not while loading, not inside coroutines it created)");
  plr_vm *vm = r->vm;
  plr_http_req req;
  memset(&req, 0, sizeof req);
  req.method = luaL_checkstring(L, 1);
  req.url = luaL_checkstring(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  const char *hdrs[PLR_HTTP_HEADERS_MAX];
  size_t nh = (size_t)luaL_len(L, 3);
  if (nh > PLR_HTTP_HEADERS_MAX) return luaL_error(L, "at most %d request headers", PLR_HTTP_HEADERS_MAX);
  for (size_t i = 0; i < nh; i++) {
    lua_rawgeti(L, 3, (lua_Integer)i + 1);
    hdrs[i] = lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  req.headers = hdrs;
  req.n_headers = nh;
  req.body = lua_tolstring(L, 4, &req.body_len);
  lua_Integer t = luaL_optinteger(L, 5, 0);
  req.timeout_ms = t > 0 ? (uint32_t)t : plr_vm_limits(vm)->http_timeout_ms;
  req.allow_hosts = (const char *const *)vm->allow;
  req.n_allow_hosts = vm->n_allow;
  req.allow_private = vm->allow_private;
  req.max_response_bytes = plr_vm_limits(vm)->http_max_body;
  if (!r->drv.http) {
    lua_pushnil(L);
    lua_pushstring(L, "HTTP is not available");
    return 2;
  }
  j->waiting_http = true;
  int rc = r->drv.http(r->drv.ud, &req, http_done, j, &j->http_handle);
  if (rc) {
    j->waiting_http = false;
    lua_pushnil(L);
    lua_pushstring(L, parley_strerror(rc));
    return 2;
  }
  r->stats.http_requests++;
  return lua_yield(L, 0);
}

static int l_unavailable(lua_State *L) {
  return luaL_error(L, "not available while the bot is loading or being checked");
}

void plr_rt_bind(lua_State *L, plr_runtime *rt) {
  static const luaL_Reg fns[] = {{"send", l_send},       {"action", l_action},
                                 {"http", l_http},       {"sync_timers", l_sync_timers},
                                 {"idem", l_idem},       {NULL, NULL}};
  for (const luaL_Reg *f = fns; f->name; f++) {
    if (rt) {
      lua_pushlightuserdata(L, rt);
      lua_pushcclosure(L, f->func, 1);
    } else {
      lua_pushcfunction(L, l_unavailable);
    }
    lua_setfield(L, -2, f->name);
  }
}

/* Inbound. -------------------------------------------------------------- */

static const char *event_kind_name(parley_event_kind k) {
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

static const char *role_name(parley_role r) {
  switch (r) {
  case PARLEY_ROLE_CUSTOMER: return "customer";
  case PARLEY_ROLE_AGENT: return "agent";
  case PARLEY_ROLE_BOT: return "bot";
  case PARLEY_ROLE_SYSTEM: return "system";
  default: return "unknown";
  }
}

static const char *content_name(parley_content_kind k) {
  switch (k) {
  case PARLEY_CONTENT_TEXT: return "text";
  case PARLEY_CONTENT_CARD: return "card";
  case PARLEY_CONTENT_QUICK_REPLIES: return "quick_replies";
  case PARLEY_CONTENT_IMAGE: return "image";
  case PARLEY_CONTENT_POSTBACK: return "postback";
  default: return "none";
  }
}

static void set_str(lua_State *L, const char *k, const char *v) {
  if (!v) return;
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

static void set_list(lua_State *L, const char *k, const char *const *v, size_t n) {
  if (!v && !n) return;
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_pushstring(L, v[i] ? v[i] : "");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, k);
}

/* Pushes an event as the table handlers get. Runs protected. */
static int push_event(lua_State *L) {
  const parley_event *ev = lua_touserdata(L, 1);
  lua_createtable(L, 0, 16);
  set_str(L, "kind", event_kind_name(ev->kind));
  set_str(L, "conversation", ev->conversation);
  lua_pushinteger(L, (lua_Integer)ev->seq);
  lua_setfield(L, -2, "seq");
  lua_pushinteger(L, (lua_Integer)ev->server_time_ms);
  lua_setfield(L, -2, "time");
  set_str(L, "sender", ev->sender ? ev->sender : "");
  set_str(L, "sender_role", role_name(ev->sender_role));
  lua_pushboolean(L, ev->redelivered);
  lua_setfield(L, -2, "redelivered");
  if (ev->has_msg_id) {
    char hex[33];
    parley_msg_id_hex(ev->msg_id, hex);
    set_str(L, "id", hex);
  }
  if (ev->kind == PARLEY_EVENT_MESSAGE) {
    const parley_content *c = &ev->content;
    set_str(L, "content", content_name(c->kind));
    if (c->kind == PARLEY_CONTENT_POSTBACK) {
      set_str(L, "payload", c->payload ? c->payload : "");
      set_str(L, "label", c->label);
      lua_pushinteger(L, (lua_Integer)c->source_seq);
      lua_setfield(L, -2, "source_seq");
    } else {
      set_str(L, "text", c->text ? c->text : (c->fallback ? c->fallback : ""));
      set_str(L, "title", c->title);
      set_str(L, "image_url", c->image_url);
    }
    if (ev->quote.seq) {
      lua_createtable(L, 0, 3);
      lua_pushinteger(L, (lua_Integer)ev->quote.seq);
      lua_setfield(L, -2, "seq");
      set_str(L, "excerpt", ev->quote.excerpt);
      set_str(L, "sender", ev->quote.sender);
      lua_setfield(L, -2, "quote");
    }
  }
  const parley_action *a = &ev->action;
  set_str(L, "queue", a->queue);
  set_str(L, "note", a->note);
  set_list(L, "tags_add", a->tags_add, a->n_tags_add);
  set_list(L, "tags_remove", a->tags_remove, a->n_tags_remove);
  set_str(L, "assignee", ev->assignee);
  set_list(L, "tags", ev->tags, ev->n_tags);
  set_list(L, "state_keys", ev->state_keys, ev->n_state_keys);
  set_str(L, "locale", ev->locale ? ev->locale : a->locale);
  set_str(L, "customer", ev->customer);
  return 1;
}

void plr_rt_on_event(plr_runtime *r, const parley_event *ev) {
  if (r->stopping || r->freeing || !ev->conversation) return;
  plr_conv *c = conv_get(r, ev->conversation);
  if (!c) {
    plr_log(r, 3, ev->conversation, ev->seq, "too many conversations; event dropped");
    return;
  }
  r->stats.events++;
  if (ev->seq <= c->last_seq) return; /* already queued or handled */
  if (c->revoked) return;
  if (c->qlen >= plr_vm_limits(r->vm)->queue_max) {
    plr_log(r, 2, c->id, ev->seq, "queue full; the event will be delivered again");
    return;
  }
  plr_job *j = calloc(1, sizeof *j);
  if (!j) return;
  j->seq = ev->seq;
  j->ev_ref = LUA_NOREF;
  j->co_ref = LUA_NOREF;
  bool own = ev->sender && strcmp(ev->sender, r->principal) == 0;
  if (own) {
    j->kind = JOB_ACK;
    r->stats.acked_only++;
  } else {
    j->kind = JOB_EVENT;
    lua_State *L = plr_vm_state(r->vm);
    plr_vm_budget(r->vm, L, PLR_INTERNAL_BUDGET, false);
    lua_pushcfunction(L, push_event);
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
  enqueue(r, c, j);
  conv_pump(r, c);
  maybe_idle(r);
}

void plr_rt_on_assign(plr_runtime *r, const parley_assignment *a) {
  if (r->freeing || !a->conversation) return;
  plr_conv *c = conv_get(r, a->conversation);
  if (!c) {
    plr_log(r, 3, a->conversation, 0, "too many conversations; assignment ignored");
    return;
  }
  c->epoch = a->epoch;
  c->revoked = false;
  /* The gateway's watermark is the truth: the stream resumes after it, and
   * the state document it sends goes with it. */
  if (!c->job && !c->head) c->last_seq = c->handled_seq = c->sent_seq = a->acked_seq;
  if (a->acked_seq > c->committed) c->committed = a->acked_seq;
  plr_vm *vm = r->vm;
  lua_State *L = plr_vm_state(vm);
  if (!lua_checkstack(L, 10)) return;
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
  char err[512];
  c->assigning = true;
  if (plr_vm_pcall(vm, 5, 0, err, sizeof err))
    plr_log(r, 3, c->id, a->acked_seq, "assignment failed: %s", err);
  c->assigning = false;
  plr_log(r, 0, c->id, a->acked_seq, "assigned, epoch %llu", (unsigned long long)a->epoch);
}

void plr_rt_on_revoke(plr_runtime *r, const char *conversation, uint64_t epoch,
                      const char *reason) {
  plr_conv *c = conv_find(r, conversation);
  if (!c) return;
  if (epoch && epoch < c->epoch) return;
  plr_log(r, 1, c->id, c->handled_seq, "revoked: %s", reason ? reason : "");
  c->revoked = true;
  for (size_t i = 0; i < c->ntimers; i++) ctimer_disarm(&c->timers[i]);
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
  commit_ready(r, c);
  maybe_idle(r);
}

void plr_rt_on_send_result(plr_runtime *r, const parley_send_result *res, void *send_ud) {
  plr_job *j = send_ud;
  if (!j) return;
  if (res->status) {
    r->stats.send_failures++;
    plr_log(r, 2, j->conv->id, j->seq, "reply failed: %s%s%s", parley_strerror(res->status),
            res->message ? ": " : "", res->message ? res->message : "");
  }
  if (j->pending_sends) j->pending_sends--;
  job_maybe_complete(r, j);
}

void plr_rt_on_commit_result(plr_runtime *r, const parley_commit_result *res) {
  if (r->inflight) r->inflight--;
  plr_conv *c = res->conversation ? conv_find(r, res->conversation) : NULL;
  if (res->status) {
    plr_log(r, 2, res->conversation, res->ack_seq, "commit refused: %s",
            parley_strerror(res->status));
  } else if (c && res->ack_seq > c->committed) {
    c->committed = res->ack_seq;
  }
  maybe_idle(r);
}

/* Lifecycle. ------------------------------------------------------------ */

const char *plr_rt_principal(const plr_runtime *r) { return r->principal; }
plr_vm *plr_runtime_vm(plr_runtime *r) { return r->vm; }
void plr_runtime_stats(const plr_runtime *r, plr_stats *out) { *out = r->stats; }

int plr_runtime_new_driver(const plr_options *o, const plr_driver *d, plr_runtime **out,
                           char *err, size_t errlen) {
  *out = NULL;
  if (!o || !o->loop || !o->bot_dir || !d || !d->send || !d->action || !d->commit) {
    if (err && errlen) snprintf(err, errlen, "runtime options need a loop, a bot_dir and a driver");
    return PARLEY_EINVAL;
  }
  plr_runtime *r = calloc(1, sizeof *r);
  if (!r) return PARLEY_ENOMEM;
  r->loop = o->loop;
  r->drv = *d;
  r->log_format = o->log_format;
  r->log_level = o->log_level;
  r->log_out = o->log_out;
  r->on_idle = o->on_idle;
  r->ud = o->ud;
  r->bot_dir = strdup(o->bot_dir);
  if (!r->bot_dir) {
    free(r);
    return PARLEY_ENOMEM;
  }
  int rc = plr_vm_load(r, o->bot_dir, &r->vm, err, errlen);
  if (rc) {
    free(r->bot_dir);
    free(r);
    return rc;
  }
  r->principal = strdup(o->principal && *o->principal ? o->principal : plr_vm_name(r->vm));
  if (!r->principal) {
    plr_vm_free(r->vm);
    free(r->bot_dir);
    free(r);
    return PARLEY_ENOMEM;
  }
  uv_timer_init(r->loop, &r->flush_timer);
  r->flush_timer.data = r;
  uv_timer_init(r->loop, &r->drain_timer);
  r->drain_timer.data = r;
  r->handles_open = 2;
  *out = r;
  return 0;
}

static void finish_stop(plr_runtime *r) {
  if (r->stop_done_called) return;
  r->stop_done_called = true;
  uv_timer_stop(&r->drain_timer);
  if (r->stop_done) r->stop_done(r->stop_ud);
}

void plr_rt_on_stopped(plr_runtime *r) { finish_stop(r); }

static void begin_driver_stop(plr_runtime *r, uint32_t left) {
  if (r->stop_called_driver) return;
  r->stop_called_driver = true;
  if (r->drv.stop) r->drv.stop(r->drv.ud, left);
  else finish_stop(r);
}

static void check_drained(plr_runtime *r) {
  if (!r->stopping || r->stop_called_driver) return;
  if (runtime_busy(r)) return;
  begin_driver_stop(r, 1000);
}

static void drain_timeout(uv_timer_t *t) {
  plr_runtime *r = t->data;
  plr_log(r, 2, NULL, 0, "drain timed out with %u handlers running, %llu events queued",
          r->jobs_running, (unsigned long long)r->queued);
  begin_driver_stop(r, 0);
}

void plr_runtime_stop(plr_runtime *r, uint32_t drain_ms, void (*done)(void *ud), void *ud) {
  if (!r || r->stopping) return;
  r->stopping = true;
  r->stop_done = done;
  r->stop_ud = ud;
  uv_timer_start(&r->drain_timer, drain_timeout, drain_ms, 0);
  check_drained(r);
}

int plr_runtime_start(plr_runtime *r) {
  if (!r) return PARLEY_EINVAL;
  return r->drv.start ? r->drv.start(r->drv.ud) : 0;
}

bool plr_runtime_busy(const plr_runtime *r) { return r && runtime_busy(r); }

uint64_t plr_runtime_committed(const plr_runtime *r, const char *conversation) {
  const plr_conv *c = r && conversation ? conv_find(r, conversation) : NULL;
  return c ? c->committed : 0;
}

/* Frees every job of every conversation; running ones are abandoned. */
static void drop_jobs(plr_runtime *r) {
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
      for (size_t i = 0; i < c->ntimers; i++) ctimer_disarm(&c->timers[i]);
      c->ntimers = 0;
    }
}

void plr_runtime_free(plr_runtime *r) {
  if (!r) return;
  r->freeing = true;
  /* The driver goes first: after this no callback can name a job. */
  if (r->drv.destroy) r->drv.destroy(r->drv.ud);
  drop_jobs(r);
  plr_vm_free(r->vm);
  r->vm = NULL;
  plr_vm_free(r->next_vm);
  r->next_vm = NULL;
  uv_timer_stop(&r->flush_timer);
  uv_timer_stop(&r->drain_timer);
  uv_close((uv_handle_t *)&r->flush_timer, handle_closed);
  uv_close((uv_handle_t *)&r->drain_timer, handle_closed);
}

/* Reload. --------------------------------------------------------------- */

/* Moves conversation records and queued events into the new state. */
static void swap_vm(plr_runtime *r) {
  plr_vm *old = r->vm, *nv = r->next_vm;
  lua_State *Lo = plr_vm_state(old), *Ln = plr_vm_state(nv);
  char err[512];
  plr_vm_rt_get(old, "export");
  if (plr_vm_pcall(old, 0, 1, err, sizeof err)) {
    plr_log(r, 3, NULL, 0, "reload: export failed, keeping the old bot: %s", err);
    plr_vm_free(nv);
    r->next_vm = NULL;
    r->stats.reload_failures++;
    return;
  }
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
        plr_vm_rt_get(old, "event_to_json");
        lua_rawgeti(Lo, LUA_REGISTRYINDEX, j->ev_ref);
        if (plr_vm_pcall(old, 1, 1, err, sizeof err)) {
          lua_pushstring(Lo, "{}");
        }
        plr_vm_rt_get(nv, "event_from_json");
        lua_pushstring(Ln, lua_tostring(Lo, -1));
        lua_pop(Lo, 1);
        luaL_unref(Lo, LUA_REGISTRYINDEX, j->ev_ref);
        if (plr_vm_pcall(nv, 1, 1, err, sizeof err)) lua_newtable(Ln);
        j->ev_ref = luaL_ref(Ln, LUA_REGISTRYINDEX);
      }
  r->vm = nv;
  r->next_vm = NULL;
  plr_vm_free(old);
  r->stats.reloads++;
  plr_log(r, 1, NULL, 0, "reloaded %s", plr_vm_name(nv));
  pump_all(r);
}

int plr_runtime_reload(plr_runtime *r, char *err, size_t errlen) {
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
