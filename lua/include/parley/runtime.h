/* Parley Lua runtime: one bot folder (bot.lua, bot.yaml, templates/,
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
 * Link with libparley_lua (CMake: parley::parley_lua) and libuv; the
 * program owns the loop and runs it. examples/embed-lua/embed_lua.c is a
 * complete program.
 *
 * Thread safety: a runtime and everything it hands out belong to the
 * thread running its loop. Call its functions only from that thread.
 *
 * Ownership: every pointer passed to a callback is borrowed until the
 * callback returns; copy what you keep. Strings in the options are copied
 * by parley_runtime_new, except loop and log_out, which must outlive the
 * runtime.
 */
#ifndef PARLEY_RUNTIME_H
#define PARLEY_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <parley/error.h>
#include <parley/types.h>

#ifdef __cplusplus
extern "C" {
#endif

struct uv_loop_s;
struct parley_client;
typedef struct parley_runtime parley_runtime;

/* How log records are written: one line each (docs/operations.md). */
typedef enum parley_log_format {
  PARLEY_LOG_TEXT = 0,   /* "2026-11-28T07:51:58.123Z INFO  sent seq=7" */
  PARLEY_LOG_JSON = 1,   /* JSON lines */
  PARLEY_LOG_LOGFMT = 2, /* key=value pairs */
} parley_log_format;

/* The least severe record written. */
typedef enum parley_log_level {
  PARLEY_LOG_DEBUG = 0,
  PARLEY_LOG_INFO = 1,
  PARLEY_LOG_WARN = 2,
  PARLEY_LOG_ERROR = 3,
} parley_log_level;

/* What an on_observe latency measures. */
typedef enum parley_runtime_observe {
  /* From the start of a handler to its end (its replies answered). */
  PARLEY_RUNTIME_OBSERVE_HANDLER = 1,
  /* From a send handed to the client to its SendAck. */
  PARLEY_RUNTIME_OBSERVE_ACK = 2,
} parley_runtime_observe;

#define PARLEY_RUNTIME_OPTIONS_VERSION 1

typedef struct parley_runtime_options {
  /* PARLEY_RUNTIME_OPTIONS_VERSION. 0, what a zeroed struct holds, is read
   * as version 1, the first one. */
  uint32_t struct_version;
  struct uv_loop_s *loop; /* required; the caller runs it */
  const char *bot_dir;    /* required: the folder holding bot.lua */
  /* Gateway; principal defaults to bot.yaml's name. */
  const char *url, *principal, *token;
  bool tls_insecure;            /* development only: accept any certificate */
  parley_log_format log_format; /* [PARLEY_LOG_TEXT] */
  FILE *log_out;                /* NULL: stderr */
  parley_log_level log_level;   /* [PARLEY_LOG_DEBUG] */
  /* Optional: called when no handler runs and nothing is uncommitted. */
  void (*on_idle)(void *ud);
  void *ud;
  /* Optional: latencies for metrics, in seconds, called with ud. */
  void (*on_observe)(void *ud, parley_runtime_observe what, double seconds);
  /* Optional: the gateway refused this bot for good (a bad token, a
   * principal that is not a bot): retrying cannot help. status is
   * PARLEY_EUNAUTH or PARLEY_EFORBIDDEN, message says which principal and
   * why. The runtime has logged it; the caller decides to stop. */
  void (*on_fatal)(void *fatal_ud, int status, const char *message);
  void *fatal_ud;
} parley_runtime_options;

#define PARLEY_RUNTIME_OPTIONS_INIT \
  { .struct_version = PARLEY_RUNTIME_OPTIONS_VERSION }

/* What `parley lint` checks: loads bot.yaml, the templates and bot.lua in a
 * fresh state, without a connection. Returns 0, or a PARLEY_E* status with
 * err filled as "file:line: key: message". */
int parley_runtime_check(const char *bot_dir, char *err, size_t errlen);

/* Creates a runtime: loads and checks the bot, creates its client. Returns
 * 0 and sets *out, or a PARLEY_E* status with err filled; nothing connects
 * before parley_runtime_start. */
int parley_runtime_new(const parley_runtime_options *o, parley_runtime **out,
                       char *err, size_t errlen);
/* Connects and starts handling events. */
int parley_runtime_start(parley_runtime *r);
/* Stops taking new events, lets running handlers and commits finish for up
 * to drain_ms, closes the connection and then calls done(ud) from the loop.
 * After done the runtime holds no handle open on the loop. */
void parley_runtime_stop(parley_runtime *r, uint32_t drain_ms,
                         void (*done)(void *ud), void *ud);
/* Frees the runtime. NULL is a no-op. */
void parley_runtime_free(parley_runtime *r);
/* SIGHUP: loads and checks the bot in a fresh state; when that succeeds the
 * new state takes over between events, otherwise the old one is kept and
 * the error is returned (and logged). */
int parley_runtime_reload(parley_runtime *r, char *err, size_t errlen);
/* The highest committed seq of a conversation, 0 when unknown. */
uint64_t parley_runtime_committed(const parley_runtime *r,
                                  const char *conversation);
/* Handlers running, or events or commits pending. */
bool parley_runtime_busy(const parley_runtime *r);

/* A message the bot sends on its own. It goes into the conversation's
 * queue, so it follows the replies of a handler that runs now, and it
 * carries the conversation's assignment epoch. content is copied. Returns 0
 * when under way: done(ud, status, seq, duplicate) then follows exactly
 * once, from the loop (status 0 when the gateway stored it; duplicate when
 * it already had msg_id). Otherwise PARLEY_ENOTFOUND (the conversation is
 * not assigned to this runtime), PARLEY_ESHUTDOWN (stopping),
 * PARLEY_EBACKPRESSURE (its queue is full), PARLEY_EINVAL or PARLEY_ENOMEM,
 * and done is never called. */
int parley_runtime_send_proactive(parley_runtime *r, const char *conversation,
                                  const parley_content *content,
                                  const uint8_t msg_id[16],
                                  void (*done)(void *ud, int status,
                                               uint64_t seq, bool duplicate),
                                  void *ud);

/* The runtime's client, for readiness and metrics (parley/client.h);
 * borrowed, valid until parley_runtime_free. */
struct parley_client *parley_runtime_client(parley_runtime *r);

#ifdef __cplusplus
}
#endif

#endif
