/* `parley run` as a sidecar: sidecar.yaml and the operations port.
 *
 * The config is one YAML file with four sections (gateway, ops, log,
 * shutdown); every key can be overridden from the environment as
 * PARLEY_SIDECAR_<SECTION>__<KEY> (PARLEY_SIDECAR_OPS__PORT=9090). Unknown
 * keys and bad values are errors with file, line and key, so a typo never
 * silently falls back to a default.
 *
 * The operations port is psc_server (sdk/src/ops/sidecar.h) with hooks on
 * the Lua runtime: readiness is the runtime's client being READY, metrics
 * are the client's counters plus the runtime's handler counters and the
 * latencies it reports through sidecar_observe, and the sidecar API's
 * sends go through parley_runtime_send_proactive, so they carry the
 * conversation's epoch and keep their place after a running handler's
 * replies.
 */
#include "sidecar.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include <parley/client.h>
#include <parley/error.h>

#include "config/config.h"
#include "ops/metrics.h"
#include "ops/sidecar.h"
#include "rt.h" /* plr_stats */
#include "rt_metrics.h"
#include "proactive.h"

struct sidecar {
  uv_loop_t *loop;
  sidecar_config cfg;
  plog_logger *log;
  pmet_registry *reg;
  pmet_parley m;
  parley_runtime *rt;
  psc_server *srv;
  bool draining;
  void (*closed)(void *ud);
  void *closed_ud;
};

/* Config. --------------------------------------------------------------- */

void sidecar_config_defaults(sidecar_config *c) {
  memset(c, 0, sizeof *c);
  snprintf(c->listen, sizeof c->listen, "127.0.0.1");
  c->port = -1;
  c->log_format = PLOG_TEXT;
  c->log_level = PLOG_INFO;
  c->drain_ms = SIDECAR_DEFAULT_DRAIN_MS;
}

/* e->file names the document already (load), for a node that is missing. */
static int bad(const pc_node *n, const char *key, const char *msg, pc_error *e) {
  return pc_fail(e, n, key, "%s", msg);
}

/* A section: absent, or a map with only the allowed keys. */
static int section(const pc_doc *doc, const char *name, const char *const *allowed,
                   const pc_node **out, pc_error *e) {
  const pc_node *n = pc_get(pc_root(doc), name);
  *out = n;
  if (!n) return 0;
  if (pc_node_kind(n) != PC_MAP) return bad(n, name, "must be a map", e);
  return pc_check_keys(n, allowed, e);
}

static int copy_str(const pc_node *map, const char *key, const char *path,
                    char *dst, size_t size, pc_error *e) {
  const char *v = NULL;
  int rc = pc_get_str(map, key, NULL, &v, e);
  if (rc) return rc;
  if (!v) return 0;
  if (strlen(v) >= size) return bad(pc_get(map, key), path, "value is too long", e);
  snprintf(dst, size, "%s", v);
  return 0;
}

/* gateway.url: one URL, or a list of gateway nodes for failover, kept as
 * the comma-separated form libparley takes. */
static int copy_urls(const pc_node *gw, char *dst, size_t size, pc_error *e) {
  const pc_node *list = pc_get(gw, "url");
  if (pc_node_kind(list) != PC_SEQ) return copy_str(gw, "url", "gateway.url", dst, size, e);
  if (pc_len(list) == 0) return bad(list, "gateway.url", "the list of URLs is empty", e);
  size_t n = 0;
  for (size_t i = 0; i < pc_len(list); i++) {
    const char *u = pc_scalar(pc_at(list, i));
    if (!u || (strncmp(u, "ws://", 5) && strncmp(u, "wss://", 6)))
      return bad(pc_at(list, i), "gateway.url", "must start with ws:// or wss://", e);
    if ((size_t)snprintf(dst + n, size - n, "%s%s", i ? "," : "", u) >= size - n)
      return bad(list, "gateway.url", "the list of URLs is too long", e);
    n += strlen(dst + n);
  }
  return 0;
}

/* resolve: read the variable gateway.token_env names (a check leaves it,
 * since the secret is usually not where configs are checked). */
static int parse_doc(const pc_doc *doc, sidecar_config *c, bool resolve, pc_error *e) {
  static const char *const root_keys[] = {"gateway", "ops", "log", "shutdown", NULL};
  static const char *const gw_keys[] = {"url", "token", "token_env", "principal",
                                        "insecure_tls", NULL};
  static const char *const ops_keys[] = {"listen", "port", NULL};
  static const char *const log_keys[] = {"format", "level", NULL};
  static const char *const shut_keys[] = {"drain", NULL};
  const pc_node *root = pc_root(doc);
  if (pc_node_kind(root) == PC_NULL) return 0; /* an empty file: all defaults */
  if (pc_node_kind(root) != PC_MAP) return bad(root, "", "the config must be a map", e);
  int rc = pc_check_keys(root, root_keys, e);
  if (rc) return rc;
  const pc_node *gw, *ops, *log, *shut;
  if ((rc = section(doc, "gateway", gw_keys, &gw, e)) ||
      (rc = section(doc, "ops", ops_keys, &ops, e)) ||
      (rc = section(doc, "log", log_keys, &log, e)) ||
      (rc = section(doc, "shutdown", shut_keys, &shut, e)))
    return rc;
  if ((rc = copy_urls(gw, c->url, sizeof c->url, e)) ||
      (rc = copy_str(gw, "token", "gateway.token", c->token, sizeof c->token, e)) ||
      (rc = copy_str(gw, "token_env", "gateway.token_env", c->token_env,
                     sizeof c->token_env, e)) ||
      (rc = copy_str(gw, "principal", "gateway.principal", c->principal,
                     sizeof c->principal, e)) ||
      (rc = pc_get_bool(gw, "insecure_tls", false, &c->insecure_tls, e)) ||
      (rc = copy_str(ops, "listen", "ops.listen", c->listen, sizeof c->listen, e)))
    return rc;
  if (c->url[0] && strncmp(c->url, "ws://", 5) && strncmp(c->url, "wss://", 6))
    return bad(pc_get(gw, "url"), "gateway.url", "must start with ws:// or wss://", e);
  if (c->token[0] && c->token_env[0])
    return bad(pc_get(gw, "token"), "gateway.token",
               "give gateway.token or gateway.token_env, not both", e);
  if (c->token_env[0] && resolve) {
    const char *v = getenv(c->token_env);
    if (!v || !*v)
      return bad(pc_get(gw, "token_env"), "gateway.token_env",
                 "the environment variable it names is not set", e);
    if (strlen(v) >= sizeof c->token)
      return bad(pc_get(gw, "token_env"), "gateway.token_env", "the token is too long", e);
    snprintf(c->token, sizeof c->token, "%s", v);
  }
  if (!c->listen[0]) return bad(pc_get(ops, "listen"), "ops.listen", "must not be empty", e);
  if (pc_get(ops, "port")) {
    uint64_t port = 0;
    if ((rc = pc_get_u64(ops, "port", 0, 0, 65535, &port, e))) return rc;
    c->port = (int)port;
  }
  const char *s = NULL;
  if ((rc = pc_get_str(log, "format", NULL, &s, e))) return rc;
  if (s && plog_parse_format(s, &c->log_format))
    return bad(pc_get(log, "format"), "log.format", "must be text, json or logfmt", e);
  s = NULL;
  if ((rc = pc_get_str(log, "level", NULL, &s, e))) return rc;
  if (s && plog_parse_level(s, &c->log_level))
    return bad(pc_get(log, "level"), "log.level", "must be debug, info, warn or error", e);
  uint64_t drain = SIDECAR_DEFAULT_DRAIN_MS;
  if ((rc = pc_get_ms(shut, "drain", SIDECAR_DEFAULT_DRAIN_MS, &drain, e))) return rc;
  if (drain > 3600000u)
    return bad(pc_get(shut, "drain"), "shutdown.drain", "must be at most 1h", e);
  c->drain_ms = (uint32_t)drain;
  return 0;
}

static int load(const char *path, sidecar_config *out, bool resolve, char *err, size_t n) {
  sidecar_config_defaults(out);
  pc_doc *doc = NULL;
  pc_error e;
  memset(&e, 0, sizeof e);
  int rc = path ? pc_load_file(path, &doc, &e) : pc_load_string("environment", "{}\n", 3, &doc, &e);
  if (!rc) snprintf(e.file, sizeof e.file, "%s", pc_doc_name(doc) ? pc_doc_name(doc) : "");
  if (!rc) rc = pc_apply_env(doc, SIDECAR_ENV_PREFIX, &e);
  if (!rc) rc = parse_doc(doc, out, resolve, &e);
  if (rc && err && n) pc_error_format(&e, err, n);
  pc_doc_free(doc);
  return rc ? PARLEY_ECONFIG : 0;
}

int sidecar_config_load(const char *path, sidecar_config *out, char *err, size_t n) {
  return load(path, out, true, err, n);
}

int sidecar_config_check(const char *path, char *err, size_t n) {
  sidecar_config c;
  return load(path, &c, false, err, n);
}

/* The ops server. -------------------------------------------------------- */

int sidecar_new(uv_loop_t *loop, const sidecar_config *cfg, FILE *log_out, sidecar **out) {
  *out = NULL;
  sidecar *s = calloc(1, sizeof *s);
  if (!s) return PARLEY_ENOMEM;
  s->loop = loop;
  s->cfg = *cfg;
  s->log = plog_new(log_out ? log_out : stderr, cfg->log_format, cfg->log_level);
  s->reg = pmet_registry_new();
  int rc = s->log && s->reg ? pmet_parley_register(s->reg, &s->m) : PARLEY_ENOMEM;
  if (rc) {
    sidecar_free(s);
    return rc;
  }
  *out = s;
  return 0;
}

plog_logger *sidecar_log(sidecar *s) { return s ? s->log : NULL; }

void sidecar_observe(void *ud, parley_runtime_observe what, double seconds) {
  sidecar *s = ud;
  if (!s) return;
  if (what == PARLEY_RUNTIME_OBSERVE_HANDLER) pmet_observe(s->m.handler_latency, seconds);
  else if (what == PARLEY_RUNTIME_OBSERVE_ACK) pmet_observe(s->m.ack_latency, seconds);
}

static void send_done(void *ud, int status, uint64_t seq, bool duplicate) {
  psc_send_done(ud, status, seq, duplicate);
}

static int hook_send(void *ud, const char *conv, const parley_content *c,
                     const uint8_t msg_id[PARLEY_MSG_ID_LEN], psc_request *req) {
  sidecar *s = ud;
  if (!s->rt || s->draining) return PARLEY_ESHUTDOWN;
  int rc = parley_runtime_send_proactive(s->rt, conv, c, msg_id, send_done, req);
  if (rc == PARLEY_ENOTFOUND)
    plog_conv(s->log, PLOG_WARN, conv, 0, "sidecar send refused: conversation not assigned here",
              NULL);
  return rc;
}

/* A message by template: rendered in the conversation's locale and checked
 * as a Lua reply is (lua/src/proactive.c). */
static int hook_send_reply(void *ud, const char *conv, const char *reply_json,
                           const uint8_t msg_id[PARLEY_MSG_ID_LEN], psc_request *req, char *err,
                           size_t err_size) {
  sidecar *s = ud;
  if (!s->rt || s->draining) return PARLEY_ESHUTDOWN;
  int rc = plr_runtime_send_reply_json(s->rt, conv, reply_json, msg_id, send_done, req, err,
                                       err_size);
  if (rc == PARLEY_ENOTFOUND)
    plog_conv(s->log, PLOG_WARN, conv, 0, "sidecar send refused: conversation not assigned here",
              NULL);
  return rc;
}

static void open_done(void *ud, int status, const char *conversation, uint64_t seq,
                      bool duplicate, const char *why) {
  psc_open_done(ud, status, conversation, seq, duplicate, why);
}

/* A proactive conversation (lua/src/proactive.c): opened where the
 * gateway's policy allows it, its first message rendered in the customer's
 * locale and checked as a Lua reply is. */
static int hook_open(void *ud, const char *customer, const char *key, const char *reply_json,
                     psc_request *req, char *conversation, uint8_t msg_id[PARLEY_MSG_ID_LEN],
                     char *err, size_t err_size) {
  sidecar *s = ud;
  if (!s->rt || s->draining) return PARLEY_ESHUTDOWN;
  char conv[PLR_OPEN_CONV_LEN + 1] = "";
  int rc = plr_runtime_open_json(s->rt, customer, key, reply_json, open_done, req, conv, msg_id,
                                 err, err_size);
  snprintf(conversation, PARLEY_MAX_CONVERSATION_ID + 1, "%s", conv);
  return rc;
}

static const char *state_name(parley_conn_state st) {
  switch (st) {
  case PARLEY_CONN_IDLE: return "not started";
  case PARLEY_CONN_CONNECTING: return "connecting to the gateway";
  case PARLEY_CONN_HANDSHAKE: return "waiting for the gateway's welcome";
  case PARLEY_CONN_READY: return "ready";
  case PARLEY_CONN_BACKOFF: return "disconnected, reconnecting";
  case PARLEY_CONN_CLOSING: return "closing";
  case PARLEY_CONN_CLOSED: return "closed";
  default: return "unknown state";
  }
}

static bool hook_ready(void *ud, char *reason, size_t size) {
  sidecar *s = ud;
  if (s->draining) {
    snprintf(reason, size, "draining");
    return false;
  }
  parley_client *c = parley_runtime_client(s->rt);
  if (!c) {
    snprintf(reason, size, "no gateway client");
    return false;
  }
  parley_conn_state st = parley_client_state(c);
  if (st != PARLEY_CONN_READY) {
    snprintf(reason, size, "%s", state_name(st));
    return false;
  }
  return true;
}

static void hook_metrics(void *ud) {
  sidecar *s = ud;
  parley_client *c = parley_runtime_client(s->rt);
  if (c) pmet_parley_fill(&s->m, c);
  plr_stats st;
  plr_runtime_stats(s->rt, &st);
  pmet_counter_set(s->m.handler_errors, (double)st.failures);
  pmet_counter_set(s->m.handler_budget_kills, (double)st.budget_exceeded);
}

int sidecar_attach(sidecar *s, parley_runtime *rt) {
  s->rt = rt;
  /* Per-handler, HTTP, template and dialog counts go to the same registry. */
  plr_runtime_set_metrics(rt, s->reg);
  if (s->cfg.port < 0) return 0;
  psc_hooks h;
  memset(&h, 0, sizeof h);
  h.send = hook_send;
  h.send_reply = hook_send_reply;
  h.open = hook_open;
  h.ready = hook_ready;
  h.before_metrics = hook_metrics;
  h.metrics = s->reg;
  h.log = s->log;
  h.ud = s;
  int rc = psc_server_start(s->loop, s->cfg.listen, (uint16_t)s->cfg.port, &h, &s->srv);
  if (rc) {
    plog_log(s->log, PLOG_ERROR, "cannot start the ops server", "listen", s->cfg.listen,
             "error", parley_strerror(rc), NULL);
    return rc;
  }
  char port[16];
  snprintf(port, sizeof port, "%u", (unsigned)psc_server_port(s->srv));
  /* Tests and supervisors read the port from this line. */
  printf("ops listening on %s:%s\n", s->cfg.listen, port);
  fflush(stdout);
  plog_log(s->log, PLOG_INFO, "ops listening", "listen", s->cfg.listen, "port", port, NULL);
  return 0;
}

void sidecar_set_draining(sidecar *s) {
  if (!s || s->draining) return;
  s->draining = true;
  plog_log(s->log, PLOG_INFO, "draining", NULL);
}

static void srv_closed(void *ud) {
  sidecar *s = ud;
  s->srv = NULL;
  if (s->closed) s->closed(s->closed_ud);
}

void sidecar_close(sidecar *s, void (*done)(void *ud), void *ud) {
  if (!s || !s->srv) {
    if (done) done(ud);
    return;
  }
  s->closed = done;
  s->closed_ud = ud;
  psc_server_close(s->srv, srv_closed, s);
}

void sidecar_free(sidecar *s) {
  if (!s) return;
  pmet_registry_free(s->reg);
  plog_free(s->log);
  free(s);
}
