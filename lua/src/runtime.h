/* The Lua bot runtime: one bot folder (bot.lua, bot.yaml, templates/,
 * spec/) run on a libuv loop on top of the public client API.
 *
 * Each bot gets its own lua_State, built from an allow-list (see
 * docs/lua-api.md). Each inbound event runs its handler in its own
 * coroutine; events of one conversation run one at a time in seq order,
 * different conversations run concurrently on the loop. A handler's
 * replies use derived message ids; when it is done and its replies are
 * acknowledged, the runtime commits the inbound seq together with the
 * state and tag changes.
 *
 * Thread safety: a runtime belongs to the thread running its loop.
 */
#ifndef PARLEY_LUA_RUNTIME_H
#define PARLEY_LUA_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <parley/types.h>

struct uv_loop_s;
typedef struct plr_runtime plr_runtime;

typedef struct plr_options {
  struct uv_loop_s *loop;
  const char *bot_dir;
  /* Gateway; principal defaults to bot.yaml's name. */
  const char *url, *principal, *token;
  bool tls_insecure;
  int log_format; /* 0 text, 1 json, 2 logfmt */
  FILE *log_out;  /* NULL: stderr */
  int log_level;  /* 0 debug, 1 info, 2 warn, 3 error */
  /* Optional: called when no handler runs and nothing is uncommitted. */
  void (*on_idle)(void *ud);
  void *ud;
  /* Optional: latencies for metrics, in seconds, called with ud. Handler:
   * from the start of a handler to its end (replies answered included).
   * Ack: from a send handed to the client to its SendAck. */
  void (*on_observe)(void *ud, int what, double seconds);
  /* Optional: the gateway refused this bot for good (a bad token, a
   * principal that is not a bot): retrying cannot help. status is
   * PARLEY_EUNAUTH or PARLEY_EFORBIDDEN, message says which principal and
   * why. The runtime has logged it; the caller decides to stop. */
  void (*on_fatal)(void *fatal_ud, int status, const char *message);
  void *fatal_ud;
} plr_options;

#define PLR_OBSERVE_HANDLER 1
#define PLR_OBSERVE_ACK 2

struct parley_content;
struct parley_client;

/* `parley lint`: loads the config, the templates and bot.lua in a fresh
 * state, without a connection. 0 or a PARLEY_E* status with err filled as
 * "file:line: key: message". */
int plr_load_check(const char *bot_dir, char *err, size_t errlen);

/* Creates a runtime: loads and checks the bot, creates its client. */
int plr_runtime_new(const plr_options *o, plr_runtime **out, char *err,
                    size_t errlen);
/* Connects and starts handling events. */
int plr_runtime_start(plr_runtime *r);
/* Stops taking new events, lets running handlers and commits finish for up
 * to drain_ms, closes the connection and then calls done(ud). */
void plr_runtime_stop(plr_runtime *r, uint32_t drain_ms,
                      void (*done)(void *ud), void *ud);
/* Frees the runtime. NULL is a no-op. */
void plr_runtime_free(plr_runtime *r);
/* SIGHUP: loads and checks the bot in a fresh state; when that succeeds the
 * new state takes over between events, otherwise the old one is kept and
 * the error is returned (and logged). */
int plr_runtime_reload(plr_runtime *r, char *err, size_t errlen);
/* The highest committed seq of a conversation, 0 when unknown. */
uint64_t plr_runtime_committed(const plr_runtime *r, const char *conversation);
/* Handlers running, or events or commits pending. */
bool plr_runtime_busy(const plr_runtime *r);

/* A message the bot sends on its own (the sidecar API). It goes into the
 * conversation's queue, so it follows the replies of a handler that runs
 * now, and it carries the conversation's assignment epoch. content is
 * copied. Returns 0 when under way: done(ud, status, seq, duplicate) then
 * follows exactly once, from the loop (status 0 when the gateway stored it;
 * duplicate when it already had msg_id). Otherwise PARLEY_ENOTFOUND (the
 * conversation is not assigned to this runtime), PARLEY_ESHUTDOWN
 * (stopping), PARLEY_EBACKPRESSURE (its queue is full), PARLEY_EINVAL or
 * PARLEY_ENOMEM, and done is never called. */
int plr_runtime_send_proactive(plr_runtime *r, const char *conversation,
                               const struct parley_content *content,
                               const uint8_t msg_id[16],
                               void (*done)(void *ud, int status, uint64_t seq,
                                            bool duplicate),
                               void *ud);

/* Pushes an inbound event (a parley_event, given as a light userdata in
 * argument 1) as the table handlers receive it. A lua_CFunction, to be run
 * protected; the runtime calls it for every event, and bench/micro measures
 * it. */
struct lua_State;
int plr_event_push(struct lua_State *L);
/* The names handlers see for an event's kind, a sender's role and a
 * content kind ("message", "customer", "text"...). */
const char *plr_event_kind_name(parley_event_kind kind);
const char *plr_role_name(parley_role role);
const char *plr_content_name(parley_content_kind kind);

/* The runtime's client (adapter runtimes only), NULL otherwise: for
 * readiness and metrics. */
struct parley_client *plr_runtime_client(plr_runtime *r);

#endif
