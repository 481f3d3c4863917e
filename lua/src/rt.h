/* Internals of the Lua bot runtime, shared by its C files and its tests.
 *
 * The runtime never calls the client API directly: every call to the
 * outside (sends, actions, commits, HTTP, the wall clock) goes through a
 * plr_driver. adapter.c implements the driver on parley_client_* and ph_*;
 * the tests implement it with a recording fake, which is what lets them
 * drive the event handling without a network.
 */
#ifndef PARLEY_LUA_RT_H
#define PARLEY_LUA_RT_H

#include <parley/runtime.h>

#include "event.h"

#include <parley/client.h>
#include <parley/error.h>
#include <parley/types.h>

#include <lua.h>
#include <uv.h>

/* An HTTP request as the runtime hands it to the driver. Borrowed until the
 * call returns. */
typedef struct plr_http_req {
  const char *method;
  const char *url;
  const char *const *headers; /* "Name: value" lines */
  size_t n_headers;
  const char *body;
  size_t body_len;
  uint32_t timeout_ms;
  const char *const *allow_hosts; /* bot.yaml http.allow */
  size_t n_allow_hosts;
  bool allow_private;             /* bot.yaml http.allow_private */
  size_t max_response_bytes;
} plr_http_req;

/* An HTTP response; status 0 means a transport failure described by error.
 * Borrowed until the callback returns. */
typedef struct plr_http_resp {
  int status;
  const char *body;
  size_t body_len;
  const char *const *headers; /* "Name: value" lines */
  size_t n_headers;
  const char *error;
} plr_http_resp;

typedef void (*plr_http_done)(void *cb_ud, const plr_http_resp *resp);

typedef struct plr_driver {
  int (*send)(void *ud, const char *conversation, const parley_content *content,
              const parley_quote *quote, const uint8_t msg_id[PARLEY_MSG_ID_LEN],
              uint64_t epoch, void *send_ud);
  int (*action)(void *ud, const char *conversation, const parley_action *action,
                const uint8_t msg_id[PARLEY_MSG_ID_LEN], uint64_t epoch,
                void *send_ud);
  int (*commit)(void *ud, const parley_commit *commits, size_t n);
  /* Starts a request; done is called later, from the loop, exactly once
   * unless the runtime cancels it with http_cancel. Returns 0 or a PARLEY_E*
   * status (then done is never called). */
  int (*http)(void *ud, const plr_http_req *req, plr_http_done done,
              void *cb_ud, void **handle);
  void (*http_cancel)(void *ud, void *handle);
  /* Wall clock in milliseconds since the epoch (timers survive restarts).
   * NULL: the system clock. */
  int64_t (*now_ms)(void *ud);
  /* Reply ids; NULL: parley_msg_id_derive. */
  void (*derive)(const char *principal, const char *conversation, uint64_t seq,
                 uint32_t ordinal, uint8_t out[PARLEY_MSG_ID_LEN]);
  /* Closes the connection after draining; calls closed(r) when done. May be
   * NULL (nothing to close). */
  void (*stop)(void *ud, uint32_t drain_ms);
  /* parley_runtime_start: connects. May be NULL. */
  int (*start)(void *ud);
  /* The runtime stopped: close what holds the loop (HTTP). May be NULL. */
  void (*quiesce)(void *ud);
  /* parley_runtime_free: releases the driver; no callback may follow. May be
   * NULL. */
  void (*destroy)(void *ud);
  void *ud;
} plr_driver;

/* Limits with their defaults; bot.yaml `limits:` overrides them. */
typedef struct plr_limits {
  uint64_t memory;          /* bytes of Lua heap [64 MiB] */
  uint64_t instructions;    /* per handler [10,000,000] */
  uint64_t load_instructions; /* for running bot.lua [50,000,000] */
  uint32_t cpu_time_ms;     /* time a handler may run, waits excluded [5 s] */
  uint32_t load_time_ms;    /* for running bot.lua [4 x cpu_time] */
  uint32_t http_timeout_ms; /* default request timeout [10 s] */
  uint32_t http_max_body;   /* response bytes kept [1 MiB] */
  uint32_t queue_max;       /* events queued per conversation [1024] */
  uint32_t conversations_max; /* [100000] */
} plr_limits;

/* The loaded, checked bot: one Lua state and what belongs to it. */
typedef struct plr_vm plr_vm;

/* Loads a bot folder into a fresh state. rt may be NULL (lint). */
int plr_vm_load(parley_runtime *rt, const char *bot_dir, plr_vm **out, char *err,
                size_t errlen);
void plr_vm_free(plr_vm *vm);
lua_State *plr_vm_state(plr_vm *vm);
const char *plr_vm_name(const plr_vm *vm);
const char *plr_vm_default_locale(const plr_vm *vm);
const plr_limits *plr_vm_limits(const plr_vm *vm);
size_t plr_vm_memory(const plr_vm *vm);

/* A runtime on an explicit driver (the tests' entry point; adapter.c uses
 * it too). The driver is copied. */
int plr_runtime_new_driver(const parley_runtime_options *o, const plr_driver *d,
                           parley_runtime **out, char *err, size_t errlen);

/* What the driver reports back into the runtime. Pointers are borrowed. */
void plr_rt_on_assign(parley_runtime *r, const parley_assignment *a);
void plr_rt_on_revoke(parley_runtime *r, const char *conversation, uint64_t epoch,
                      const char *reason);
void plr_rt_on_event(parley_runtime *r, const parley_event *ev);
void plr_rt_on_send_result(parley_runtime *r, const parley_send_result *res,
                           void *send_ud);
void plr_rt_on_commit_result(parley_runtime *r, const parley_commit_result *res);
/* Fires every armed timer whose due time (plr_driver.now_ms) has passed,
 * now; for spec runs on a simulated clock. */
void plr_rt_fire_due(parley_runtime *r);
/* The driver finished plr_driver.stop. */
void plr_rt_on_stopped(parley_runtime *r);
const char *plr_rt_principal(const parley_runtime *r);

/* Counters, for metrics and tests. */
typedef struct plr_stats {
  uint64_t events, handled, acked_only, failures, budget_exceeded;
  uint64_t sends, send_failures, commits, commit_items, http_requests;
  uint64_t timers_fired, reloads, reload_failures;
} plr_stats;
void plr_runtime_stats(const parley_runtime *r, plr_stats *out);
plr_vm *plr_runtime_vm(parley_runtime *r);

/* Logging shared by the C files: level 0 debug .. 3 error. */
void plr_log(parley_runtime *r, int level, const char *conversation, uint64_t seq,
             const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;

/* Templates (templates.c). Loads templates/<locale>.yaml of bot_dir into a
 * table left on the stack: { [locale] = { [key] = string | {one=..} } },
 * checked against the default locale. */
int plr_templates_load(lua_State *L, const char *bot_dir,
                       const char *default_locale, char *err, size_t errlen);
/* The same, also collecting warnings ("file:line: key: message" lines):
 * plural categories the locale never selects, keys of the default locale
 * missing in another, file names that are no language. `parley lint`. */
int plr_templates_load_warn(lua_State *L, const char *bot_dir, const char *default_locale,
                            char *err, size_t errlen, char *warn, size_t warnlen, int *nwarn);
/* parley-internal Lua functions: plural(locale, n) and locale_chain(loc). */
int plr_l_plural(lua_State *L);
int plr_l_locale_chain(lua_State *L);
/* Pushes a YAML node as a Lua value: maps and sequences as tables, scalars
 * as strings (typed: true, false, integers and numbers converted). */
struct pc_node;
void plr_push_yaml(lua_State *L, const struct pc_node *n, bool typed);

/* The embedded Lua modules (generated from the .lua files of lua/lib at build time). */
typedef struct plr_embedded {
  const char *name;
  const unsigned char *data;
  size_t len;
} plr_embedded;
extern const plr_embedded plr_embedded_lib[];
extern const size_t plr_embedded_lib_count;

#endif
