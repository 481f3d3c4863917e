/* `parley run` as a sidecar: its config file (sidecar.yaml) and its
 * operations port (health, readiness, metrics and the sidecar API) on top
 * of a Lua runtime. docs/operations.md describes both.
 */
#ifndef PARLEY_CLI_SIDECAR_H
#define PARLEY_CLI_SIDECAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ops/log.h"
#include <parley/runtime.h>

struct uv_loop_s;

#define SIDECAR_ENV_PREFIX "PARLEY_SIDECAR"
#define SIDECAR_DEFAULT_DRAIN_MS 10000u

/* What sidecar.yaml (with PARLEY_SIDECAR_* overrides) says. A string left
 * empty was not given. */
typedef struct sidecar_config {
  char url[1024];
  char token[512];     /* gateway.token, or the value of gateway.token_env */
  char token_env[128];
  char principal[256];
  bool insecure_tls;
  char listen[64];     /* ops.listen [127.0.0.1] */
  int port;            /* ops.port: -1 off (not given), 0 ephemeral */
  int log_format;      /* PLOG_TEXT, PLOG_JSON, PLOG_LOGFMT */
  int log_level;       /* PLOG_DEBUG .. PLOG_ERROR [info] */
  uint32_t drain_ms;   /* shutdown.drain [10s] */
} sidecar_config;

/* The defaults: nothing given, ops port off, text at info, 10 s drain. */
void sidecar_config_defaults(sidecar_config *c);

/* Loads path (NULL: no file, only the environment) and applies the
 * PARLEY_SIDECAR_<KEY>__<SUBKEY> environment overrides. 0, or
 * PARLEY_ECONFIG with err "file:line: key: message". */
int sidecar_config_load(const char *path, sidecar_config *out, char *err, size_t n);

/* `parley config check FILE --kind sidecar`: 0 when the file (with the
 * environment's overrides) is a valid sidecar config, else PARLEY_ECONFIG
 * and err "file:line: key: message". Unlike sidecar_config_load it does not
 * require the variable gateway.token_env names to be set. */
int sidecar_config_check(const char *path, char *err, size_t n);

typedef struct sidecar sidecar;

/* Creates the metrics and the logger; out->log is usable at once. The
 * runtime is attached later (sidecar_attach) because the runtime's options
 * take sidecar_observe. */
int sidecar_new(struct uv_loop_s *loop, const sidecar_config *cfg, FILE *log_out,
                sidecar **out);
/* Logger of the sidecar's own lines. */
plog_logger *sidecar_log(sidecar *s);
/* For parley_runtime_options.on_observe with ud = the sidecar. */
void sidecar_observe(void *ud, parley_runtime_observe what, double seconds);
/* Starts the ops server on cfg's listen/port, unless the port is off, and
 * prints "ops listening on HOST:PORT" on stdout. */
int sidecar_attach(sidecar *s, parley_runtime *rt);
/* SIGTERM: /readyz answers 503 "draining" from now on. */
void sidecar_set_draining(sidecar *s);
/* Closes the ops server; done(ud) when it is gone (may be called at once). */
void sidecar_close(sidecar *s, void (*done)(void *ud), void *ud);
/* Frees after sidecar_close's done (or when never attached). */
void sidecar_free(sidecar *s);

#endif
