/* The reference gateway: a Parley protocol server with a durable SQLite log.
 *
 * It runs on a libuv loop it is given (libwebsockets with a foreign loop),
 * so it can share a loop with clients in one process, or run alone under
 * `parley gateway`. docs/gateway.md describes the configuration and the
 * guarantees; docs/protocol.md the protocol it speaks.
 */
#ifndef PARLEY_GATEWAY_H
#define PARLEY_GATEWAY_H

#include <stdbool.h>
#include <stdint.h>

#include <stddef.h>

#include <parley/types.h>

struct uv_loop_s;

/* A parsed, validated configuration. Immutable once loaded. */
typedef struct pg_config pg_config;

/* Loads and validates a YAML file, then applies PARLEY_GATEWAY_* environment
 * overrides. On failure returns PARLEY_ECONFIG (or PARLEY_ENOMEM) and writes
 * "file:line: key: message" into err. */
int pg_config_load(const char *path, pg_config **out, char *err, size_t errlen);
/* The same from a string; `name` stands for the file name in errors. */
int pg_config_from_string(const char *name, const char *yaml, pg_config **out,
                          char *err, size_t errlen);
void pg_config_free(pg_config *c);

/* A gateway embedded in a program (`parley run`, `parley test`) gets its
 * configuration built in code: no YAML is written or parsed, so a data
 * directory may hold any byte a path may, and a principal any character a
 * principal name may. Every key not named here has the default of an empty
 * file (docs/gateway.md), except two: the port is 0 (an ephemeral one, see
 * pg_gateway_port) and durability is `normal`, since an embedded gateway's
 * log serves a demo or a test. Borrowed for the call only. */
typedef struct pg_embedded_principal {
  const char *name;  /* 1-128 bytes of [A-Za-z0-9._:@-] */
  parley_role role;
  const char *token; /* kept only as its hash, like a token_hash entry */
  const char *queue; /* agents: the one queue they serve, or NULL */
} pg_embedded_principal;

/* The test switches of a `faults:` section, in percent (0 to 50). */
typedef struct pg_embedded_faults {
  uint32_t drop_push, duplicate_push, reorder_push, drop_ack, duplicate_ack;
  uint64_t seed; /* 0: 1 */
} pg_embedded_faults;

typedef struct pg_embedded_config {
  const char *data_dir; /* required */
  const char *bot;      /* required: the principal (role bot) new conversations go to */
  const pg_embedded_principal *principals;
  size_t n_principals;
  uint32_t heartbeat_ms, ack_timeout_ms; /* 0: the defaults */
  const char *web_templates;             /* served at /templates/, or NULL */
  const pg_embedded_faults *faults;      /* NULL: none */
  /* The proactive rule {bot, customers: ["*"]}: the bot may open
   * conversations with any customer (ctx:open_conversation). */
  bool bot_opens_any;
} pg_embedded_config;

/* Builds and validates such a configuration. PARLEY_ECONFIG with a message
 * in err (naming the field) or PARLEY_ENOMEM. */
int pg_config_embedded(const pg_embedded_config *e, pg_config **out, char *err, size_t errlen);

/* Command-line overrides applied after loading (used by pg_gateway_main). */
int pg_config_set_port(pg_config *c, int port);
int pg_config_set_data_dir(pg_config *c, const char *dir);

typedef struct pg_gateway pg_gateway;

/* Opens the database in cfg's data_dir and listens. cfg is copied where
 * needed; the caller may free it after this returns. */
int pg_gateway_new(struct uv_loop_s *loop, const pg_config *cfg, pg_gateway **out);
/* The bound port (config port 0 picks an ephemeral one). */
int pg_gateway_port(const pg_gateway *g);
/* Commits what is pending, closes every connection with 1001, stops
 * listening and closes the database. done(ud) runs on the loop once the
 * gateway's loop handles are closed; then call pg_gateway_free. */
void pg_gateway_stop(pg_gateway *g, void (*done)(void *ud), void *ud);
void pg_gateway_free(pg_gateway *g);

/* Test switches: turns the frame faults of the config's `faults:` section
 * (dropped, doubled and reordered pushes and send ACKs) on or off while the
 * gateway runs, with the generator restarted from `faults.seed`. A config
 * without `faults:` has nothing to turn on. */
void pg_gateway_set_faults(pg_gateway *g, bool on);
/* Frames the test switches dropped, doubled and held back so far. */
void pg_gateway_fault_counts(const pg_gateway *g, uint64_t *dropped, uint64_t *doubled,
                             uint64_t *reordered);

/* "blake2b:<hex>" of a token, the token_hash form the gateway's config
 * reads (out has room for 8 + 64 + 1 bytes). */
void pg_token_hash(const char *token, char out[73]);

/* Removes the files a gateway keeps in data_dir, then the directory if it
 * is empty (for embedded gateways on a temporary directory). */
void pg_data_dir_remove(const char *data_dir);

/* The highest seq stored in a conversation, 0 when it does not exist (for
 * tests and tools running the gateway in-process). */
uint64_t pg_gateway_last_seq(pg_gateway *g, const char *conversation);

/* Bytes the hot state holds (conversations, their event tails, recent
 * client message ids, the filter of known ids) and, in *conversations, how
 * many conversations it holds (docs/gateway.md, "Memory"). Loop thread
 * only, or with the loop quiet. */
size_t pg_gateway_hot_bytes(const pg_gateway *g, size_t *conversations);

/* `parley gateway --config FILE [--port N] [--data-dir DIR]` and
 * `parley gateway token --secret S --principal P`, `parley gateway
 * hash-token TOKEN`. argv[0] is the command name ("gateway"). Prints
 * "gateway listening on 127.0.0.1:PORT" (flushed) once listening;
 * SIGTERM/SIGINT stop it cleanly with exit status 0. */
int pg_gateway_main(int argc, char **argv);

#endif
