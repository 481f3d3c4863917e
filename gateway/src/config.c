/* Gateway configuration: YAML through the shared pc_* reader, validated
 * into a pg_config, and principal authentication. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include <parley/error.h>

#include "config/config.h"
#include "gw.h"
#include "store/storage_cfg.h"
#include "web.h"

/* A validation error named by the node's own path, or by fallback_key
 * where the node has none (the document's root, a missing node). */
static int node_fail(pc_error *err, const pc_node *n, const char *fallback_key,
                     const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  pc_vfail(err, n, n && pc_node_path(n)[0] ? NULL : fallback_key, fmt, ap);
  va_end(ap);
  return PARLEY_ECONFIG;
}

static char *dupstr(const char *s) { return s ? strdup(s) : NULL; }

static void free_principal(pg_principal *p) {
  free(p->name);
  if (p->token) sodium_memzero(p->token, strlen(p->token));
  free(p->token);
  for (size_t i = 0; i < p->n_queues; i++) free(p->queues[i]);
  free(p->queues);
}

void pg_config_free(pg_config *c) {
  if (!c) return;
  free(c->name);
  free(c->listen);
  free(c->data_dir);
  pg_storage_conninfo_free(c->storage_url);
  free(c->bot);
  for (size_t i = 0; i < c->n_principals; i++) free_principal(&c->principals[i]);
  free(c->principals);
  if (c->customer_secret) sodium_memzero(c->customer_secret, c->secret_len);
  free(c->customer_secret);
  free(c->tls_cert);
  free(c->tls_key);
  pg_web_free(c->web);
  pg_open_policy_free(c);
  free(c);
}

static bool valid_name(const char *s) { return pw_valid_conversation(s); }

static int hex_decode(const char *hex, uint8_t *out, size_t outlen) {
  size_t bin_len = 0;
  if (strlen(hex) != outlen * 2) return -1;
  if (sodium_hex2bin(out, outlen, hex, strlen(hex), NULL, &bin_len, NULL) != 0 ||
      bin_len != outlen)
    return -1;
  return 0;
}

static int parse_role(const char *s) {
  if (!strcmp(s, "bot")) return PG_ROLE_BOT;
  if (!strcmp(s, "agent")) return PG_ROLE_AGENT;
  if (!strcmp(s, "customer")) return PG_ROLE_CUSTOMER;
  return 0;
}

static int load_principal(pg_config *c, const pc_node *n, pg_principal *p, pc_error *err) {
  static const char *const keys[] = {"name", "role", "token_hash", "token_env", "token",
                                     "queues", NULL};
  int rc;
  if (pc_node_kind(n) != PC_MAP) return node_fail(err, n, "principals", "expected a mapping");
  if ((rc = pc_check_keys(n, keys, err))) return rc;
  const char *name = NULL, *role = NULL, *th = NULL, *tenv = NULL, *tok = NULL;
  if ((rc = pc_get_str(n, "name", NULL, &name, err)) ||
      (rc = pc_get_str(n, "role", NULL, &role, err)) ||
      (rc = pc_get_str(n, "token_hash", NULL, &th, err)) ||
      (rc = pc_get_str(n, "token_env", NULL, &tenv, err)) ||
      (rc = pc_get_str(n, "token", NULL, &tok, err)))
    return rc;
  if (!name || !valid_name(name))
    return node_fail(err, name ? pc_get(n, "name") : n, "principals.name",
                     "a principal name is required: 1-128 bytes of [A-Za-z0-9._:@-]");
  if (!role || !(p->role = parse_role(role)))
    return node_fail(err, role ? pc_get(n, "role") : n, "principals.role",
                     "role must be bot, agent or customer");
  p->name = strdup(name);
  if (!p->name) return PARLEY_ENOMEM;
  int nsrc = (th != NULL) + (tenv != NULL) + (tok != NULL);
  if (nsrc != 1)
    return node_fail(err, n, "principals", "principal '%s' needs exactly one of token_hash, "
                     "token_env or token", name);
  if (th) {
    const char *hex = th;
    p->hash_kind = PG_HASH_ANY;
    if (!strncmp(th, "sha256:", 7)) p->hash_kind = PG_HASH_SHA256, hex = th + 7;
    else if (!strncmp(th, "blake2b:", 8)) p->hash_kind = PG_HASH_BLAKE2B, hex = th + 8;
    if (hex_decode(hex, p->hash, 32) != 0)
      return node_fail(err, pc_get(n, "token_hash"), "token_hash",
                       "expected 64 hex digits, optionally prefixed sha256: or blake2b:");
  } else if (tenv) {
    const char *v = getenv(tenv);
    if (!v || !v[0])
      return node_fail(err, pc_get(n, "token_env"), "token_env",
                       "environment variable %s is not set", tenv);
    p->token = strdup(v);
  } else {
    p->token = strdup(tok);
    c->plain_tokens = true;
  }
  if ((th == NULL) && !p->token) return PARLEY_ENOMEM;
  const pc_node *q = pc_get(n, "queues");
  if (q && pc_node_kind(q) != PC_NULL) {
    if (p->role != PG_ROLE_AGENT)
      return node_fail(err, q, "queues", "only agents have queues");
    if (pc_node_kind(q) != PC_SEQ) return node_fail(err, q, "queues", "expected a list");
    size_t nq = pc_len(q);
    if (nq > 256) return node_fail(err, q, "queues", "at most 256 queues");
    p->queues = calloc(nq ? nq : 1, sizeof *p->queues);
    if (!p->queues) return PARLEY_ENOMEM;
    for (size_t i = 0; i < nq; i++) {
      const char *qs = pc_scalar(pc_at(q, i));
      if (!qs || !valid_name(qs))
        return node_fail(err, pc_at(q, i), "queues",
                         "queue names are 1-128 bytes of [A-Za-z0-9._:@-]");
      if (!(p->queues[p->n_queues++] = strdup(qs))) return PARLEY_ENOMEM;
    }
  }
  return 0;
}

static int load_limits(pg_config *c, const pc_node *l, pc_error *err) {
  static const char *const keys[] = {"max_frame_bytes", "window", "ack_timeout", "heartbeat",
                                     "rate", "burst", "max_connections_per_principal",
                                     "max_connections", "fetch_limit", NULL};
  int rc;
  uint64_t v;
  if ((rc = pc_check_keys(l, keys, err))) return rc;
  if ((rc = pc_get_size(l, "max_frame_bytes", PW_DEFAULT_MAX_FRAME, &v, err))) return rc;
  if (v < 1024 || v > 64u * 1024 * 1024)
    return node_fail(err, pc_get(l, "max_frame_bytes"), "limits.max_frame_bytes",
                     "must be between 1KiB and 64MiB");
  c->max_frame_bytes = (uint32_t)v;
  if ((rc = pc_get_u64(l, "window", 256, 1, 65536, &v, err))) return rc;
  c->window = (uint32_t)v;
  if ((rc = pc_get_ms(l, "ack_timeout", 5000, &v, err))) return rc;
  if (v < 10 || v > 3600000)
    return node_fail(err, pc_get(l, "ack_timeout"), "limits.ack_timeout",
                     "must be between 10ms and 1h");
  c->ack_timeout_ms = (uint32_t)v;
  if ((rc = pc_get_ms(l, "heartbeat", 10000, &v, err))) return rc;
  if (v < 20 || v > 3600000)
    return node_fail(err, pc_get(l, "heartbeat"), "limits.heartbeat",
                     "must be between 20ms and 1h");
  c->heartbeat_ms = (uint32_t)v;
  if ((rc = pc_get_u64(l, "rate", 0, 0, 1000000, &v, err))) return rc;
  c->rate = (double)v;
  if ((rc = pc_get_u64(l, "burst", c->rate > 0 ? (uint64_t)c->rate * 2 : 0, 0, 10000000, &v,
                       err)))
    return rc;
  c->burst = (uint32_t)v;
  if (c->rate > 0 && c->burst < 1)
    return node_fail(err, pc_get(l, "burst"), "limits.burst", "must be at least 1 with a rate");
  if ((rc = pc_get_u64(l, "max_connections_per_principal", 64, 1, 100000, &v, err))) return rc;
  c->max_conns = (uint32_t)v;
  if ((rc = pc_get_u64(l, "max_connections", 10000, 1, 1000000, &v, err))) return rc;
  c->max_connections = (uint32_t)v;
  if ((rc = pc_get_u64(l, "fetch_limit", 500, 1, 100000, &v, err))) return rc;
  c->fetch_limit = (uint32_t)v;
  return 0;
}

/* The hot state's bounds (docs/gateway.md, "Memory"). */
static int load_cache(pg_config *c, const pc_node *n, pc_error *err) {
  static const char *const keys[] = {"tail_bytes", "max_bytes", "recent_ids", NULL};
  int rc;
  uint64_t v;
  if (n && (rc = pc_check_keys(n, keys, err))) return rc;
  if ((rc = pc_get_size(n, "tail_bytes", 64 * 1024, &v, err))) return rc;
  if (v > 64u * 1024 * 1024)
    return node_fail(err, pc_get(n, "tail_bytes"), "cache.tail_bytes", "must be at most 64MiB");
  c->cache_tail_bytes = (size_t)v;
  if ((rc = pc_get_size(n, "max_bytes", 256u * 1024 * 1024, &v, err))) return rc;
  if (v > (uint64_t)1 << 40)
    return node_fail(err, pc_get(n, "max_bytes"), "cache.max_bytes", "must be at most 1TiB");
  c->cache_max_bytes = (size_t)v;
  if ((rc = pc_get_u64(n, "recent_ids", 65536, 0, 1u << 22, &v, err))) return rc;
  c->cache_recent_ids = (size_t)v;
  return 0;
}

/* Test switches: never set in production; a warning says so at start. */
static int load_faults(pg_config *c, const pc_node *f, pc_error *err) {
  static const char *const keys[] = {"drop_push", "duplicate_push", "reorder_push",
                                     "drop_ack", "duplicate_ack", "seed", "writer_hold_ms",
                                     NULL};
  int rc;
  uint64_t v;
  if (!f || pc_node_kind(f) == PC_NULL) return 0;
  if ((rc = pc_check_keys(f, keys, err))) return rc;
  struct {
    const char *key;
    uint32_t *out;
  } pct[] = {{"drop_push", &c->fault_drop_push},     {"duplicate_push", &c->fault_dup_push},
             {"reorder_push", &c->fault_reorder_push}, {"drop_ack", &c->fault_drop_ack},
             {"duplicate_ack", &c->fault_dup_ack}};
  for (size_t i = 0; i < sizeof pct / sizeof pct[0]; i++) {
    if ((rc = pc_get_u64(f, pct[i].key, 0, 0, 50, &v, err))) return rc;
    *pct[i].out = (uint32_t)v;
  }
  if ((rc = pc_get_u64(f, "writer_hold_ms", 0, 0, 1000, &v, err))) return rc;
  c->fault_writer_hold_ms = (uint32_t)v;
  if ((rc = pc_get_u64(f, "seed", 1, 0, UINT64_MAX, &v, err))) return rc;
  c->fault_seed = v ? v : 1;
  return 0;
}

/* The server's own keys (listen, port, data_dir, durability,
 * group_commit, busy_poll_us); a NULL root gives the defaults of an empty file. */
static int load_server(pg_config *c, const pc_node *root, pc_error *err) {
  int rc;
  const char *s;
  uint64_t v;
  if ((rc = pc_get_str(root, "listen", "127.0.0.1", &s, err))) return rc;
  if (!(c->listen = strdup(s))) return PARLEY_ENOMEM;
  if ((rc = pc_get_u64(root, "port", 7800, 0, 65535, &v, err))) return rc;
  c->port = (int)v;
  if ((rc = pc_get_str(root, "data_dir", "./parley-data", &s, err))) return rc;
  if (!s[0]) return node_fail(err, pc_get(root, "data_dir"), "data_dir", "must not be empty");
  if (!(c->data_dir = strdup(s))) return PARLEY_ENOMEM;
  if ((rc = pc_get_str(root, "durability", "full", &s, err))) return rc;
  if (!strcmp(s, "full")) c->durability = PG_DUR_FULL;
  else if (!strcmp(s, "normal")) c->durability = PG_DUR_NORMAL;
  else if (!strcmp(s, "off")) c->durability = PG_DUR_OFF;
  else
    return node_fail(err, pc_get(root, "durability"), "durability",
                     "must be full, normal or off, got '%.32s'", s);
  if ((rc = pc_get_bool(root, "group_commit", true, &c->group_commit, err))) return rc;
  if ((rc = pc_get_u64(root, "busy_poll_us", 0, 0, 1000, &v, err))) return rc;
  c->busy_poll_us = (uint32_t)v;
  return 0;
}

/* The sections with defaults of their own (limits, cache, storage,
 * faults, web); a NULL root gives those of an empty file. */
static int load_sections(pg_config *c, const pc_node *root, pc_error *err) {
  int rc;
  if ((rc = load_limits(c, pc_get(root, "limits"), err))) return rc;
  if ((rc = load_cache(c, pc_get(root, "cache"), err))) return rc;
  if ((rc = pg_storage_load(pc_get(root, "storage"), &c->storage_kind, &c->storage_url, err)))
    return rc;
  if ((rc = load_faults(c, pc_get(root, "faults"), err))) return rc;
  if ((rc = pg_web_load(c, pc_get(root, "web"), err))) return rc;
  return pg_open_policy_load(c, pc_get(root, "proactive"), err);
}

static int load_doc(pg_config *c, const pc_node *root, pc_error *err) {
  static const char *const keys[] = {"listen", "port", "data_dir", "durability", "group_commit",
                                     "busy_poll_us", "bot", "principals", "customers", "limits", "tls", "faults", "cache",
                                     "storage", "web", "proactive", NULL};
  int rc;
  const char *s;
  if (pc_node_kind(root) != PC_MAP && pc_node_kind(root) != PC_NULL)
    return node_fail(err, root, "", "expected a mapping at the top level");
  if ((rc = pc_check_keys(root, keys, err))) return rc;
  if ((rc = load_server(c, root, err))) return rc;
  if ((rc = pc_get_str(root, "bot", NULL, &s, err))) return rc;
  if (!s) return node_fail(err, root, "bot", "bot: the bot principal new conversations go to, "
                           "is required");
  if (!(c->bot = strdup(s))) return PARLEY_ENOMEM;

  const pc_node *ps = pc_get(root, "principals");
  if (ps && pc_node_kind(ps) != PC_SEQ && pc_node_kind(ps) != PC_NULL)
    return node_fail(err, ps, "principals", "expected a list");
  size_t np = pc_len(ps);
  if (np > 100000) return node_fail(err, ps, "principals", "at most 100000 principals");
  c->principals = calloc(np ? np : 1, sizeof *c->principals);
  if (!c->principals) return PARLEY_ENOMEM;
  for (size_t i = 0; i < np; i++) {
    pg_principal *p = &c->principals[c->n_principals++];
    if ((rc = load_principal(c, pc_at(ps, i), p, err))) return rc;
    for (size_t j = 0; j + 1 < c->n_principals; j++)
      if (!strcmp(c->principals[j].name, p->name))
        return node_fail(err, pc_get(pc_at(ps, i), "name"), "principals.name",
                         "principal '%s' is listed twice", p->name);
  }
  const pg_principal *bot = pg_config_principal(c, c->bot);
  if (!bot || bot->role != PG_ROLE_BOT)
    return node_fail(err, pc_get(root, "bot"), "bot",
                     "'%s' must be listed under principals with role bot", c->bot);

  const pc_node *cu = pc_get(root, "customers");
  if (cu && pc_node_kind(cu) != PC_NULL) {
    static const char *const ckeys[] = {"secret_env", "secret", NULL};
    if ((rc = pc_check_keys(cu, ckeys, err))) return rc;
    const char *senv = NULL, *sec = NULL;
    if ((rc = pc_get_str(cu, "secret_env", NULL, &senv, err)) ||
        (rc = pc_get_str(cu, "secret", NULL, &sec, err)))
      return rc;
    if ((senv != NULL) == (sec != NULL))
      return node_fail(err, cu, "customers", "exactly one of secret_env or secret is required");
    const pc_node *sn = pc_get(cu, senv ? "secret_env" : "secret");
    if (senv) {
      sec = getenv(senv);
      if (!sec || !sec[0])
        return node_fail(err, sn, "customers.secret_env", "environment variable %s is not set",
                         senv);
    } else {
      c->plain_tokens = true;
    }
    size_t sl = strlen(sec);
    if (sl < crypto_generichash_KEYBYTES_MIN || sl > crypto_generichash_KEYBYTES_MAX)
      return node_fail(err, sn, "customers.secret", "the secret must be %d to %d bytes",
                       crypto_generichash_KEYBYTES_MIN, crypto_generichash_KEYBYTES_MAX);
    if (!(c->customer_secret = malloc(sl))) return PARLEY_ENOMEM;
    memcpy(c->customer_secret, sec, sl);
    c->secret_len = sl;
  }

  if ((rc = load_sections(c, root, err))) return rc;

  const pc_node *tls = pc_get(root, "tls");
  if (tls && pc_node_kind(tls) != PC_NULL) {
    static const char *const tkeys[] = {"cert", "key", NULL};
    const char *cert = NULL, *key = NULL;
    if ((rc = pc_check_keys(tls, tkeys, err)) ||
        (rc = pc_get_str(tls, "cert", NULL, &cert, err)) ||
        (rc = pc_get_str(tls, "key", NULL, &key, err)))
      return rc;
    if (!cert || !key) return node_fail(err, tls, "tls", "tls needs both cert and key");
    if (!(c->tls_cert = strdup(cert)) || !(c->tls_key = strdup(key))) return PARLEY_ENOMEM;
  }
  return 0;
}

static int finish(pc_doc *doc, int rc, pc_error *err, pg_config **out, char *errbuf,
                  size_t errlen) {
  pg_config *c = NULL;
  if (rc == 0) rc = pc_apply_env(doc, "PARLEY_GATEWAY", err);
  if (rc == 0) {
    c = calloc(1, sizeof *c);
    if (!c) rc = PARLEY_ENOMEM;
  }
  if (rc == 0) {
    c->name = dupstr(pc_doc_name(doc));
    snprintf(err->file, sizeof err->file, "%s", pc_doc_name(doc) ? pc_doc_name(doc) : "");
    rc = load_doc(c, pc_root(doc), err);
  }
  if (rc != 0) {
    if (errbuf && errlen) {
      if (rc == PARLEY_ENOMEM) snprintf(errbuf, errlen, "out of memory");
      else pc_error_format(err, errbuf, errlen);
    }
    pg_config_free(c);
    pc_doc_free(doc);
    return rc == PARLEY_ENOMEM ? rc : PARLEY_ECONFIG;
  }
  pc_doc_free(doc);
  *out = c;
  return 0;
}

int pg_config_load(const char *path, pg_config **out, char *errbuf, size_t errlen) {
  pc_error err;
  memset(&err, 0, sizeof err);
  pc_doc *doc = NULL;
  *out = NULL;
  if (sodium_init() < 0) return PARLEY_EINTERNAL;
  int rc = pc_load_file(path, &doc, &err);
  return finish(doc, rc, &err, out, errbuf, errlen);
}

int pg_config_from_string(const char *name, const char *yaml, pg_config **out, char *errbuf,
                          size_t errlen) {
  pc_error err;
  memset(&err, 0, sizeof err);
  pc_doc *doc = NULL;
  *out = NULL;
  if (sodium_init() < 0) return PARLEY_EINTERNAL;
  int rc = pc_load_string(name, yaml, strlen(yaml), &doc, &err);
  return finish(doc, rc, &err, out, errbuf, errlen);
}

/* ------------------------------------------------ configurations in code */

static int embedded_fail(char *err, size_t errlen, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static int embedded_fail(char *err, size_t errlen, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return PARLEY_ECONFIG;
}

static int role_of(parley_role r) {
  switch (r) {
  case PARLEY_ROLE_BOT: return PG_ROLE_BOT;
  case PARLEY_ROLE_AGENT: return PG_ROLE_AGENT;
  case PARLEY_ROLE_CUSTOMER: return PG_ROLE_CUSTOMER;
  default: return 0;
  }
}

/* The checks load_principal makes on a file's entry, on one from code. */
static int embedded_principal(pg_config *c, const pg_embedded_principal *e, char *err,
                              size_t errlen) {
  const char *name = e->name ? e->name : "";
  if (!valid_name(name))
    return embedded_fail(err, errlen, "principals: '%.140s' is not a principal name: 1-128 bytes "
                         "of [A-Za-z0-9._:@-]", name);
  int role = role_of(e->role);
  if (!role)
    return embedded_fail(err, errlen, "principals: '%s' needs a role: bot, agent or customer",
                         name);
  if (pg_config_principal(c, name))
    return embedded_fail(err, errlen, "principals: '%s' is listed twice", name);
  if (!e->token || !e->token[0])
    return embedded_fail(err, errlen, "principals: '%s' needs a token", name);
  if (e->queue && (role != PG_ROLE_AGENT || !valid_name(e->queue)))
    return embedded_fail(err, errlen, "principals: '%s': only agents have queues, named by "
                         "1-128 bytes of [A-Za-z0-9._:@-]", name);
  pg_principal *p = &c->principals[c->n_principals++];
  p->role = role;
  p->hash_kind = PG_HASH_BLAKE2B;
  crypto_generichash(p->hash, sizeof p->hash, (const uint8_t *)e->token, strlen(e->token), NULL,
                     0);
  if (!(p->name = strdup(name))) return PARLEY_ENOMEM;
  if (e->queue) {
    if (!(p->queues = calloc(1, sizeof *p->queues))) return PARLEY_ENOMEM;
    if (!(p->queues[0] = strdup(e->queue))) return PARLEY_ENOMEM;
    p->n_queues = 1;
  }
  return 0;
}

static int embedded_build(pg_config *c, const pg_embedded_config *e, char *err, size_t errlen) {
  pc_error pe;
  memset(&pe, 0, sizeof pe);
  int rc;
  if ((rc = load_server(c, NULL, &pe)) || (rc = load_sections(c, NULL, &pe)))
    return rc == PARLEY_ENOMEM ? rc : embedded_fail(err, errlen, "%s", pe.message);
  c->durability = PG_DUR_NORMAL;
  c->port = 0;
  if (!e->data_dir || !e->data_dir[0])
    return embedded_fail(err, errlen, "data_dir: must not be empty");
  free(c->data_dir);
  if (!(c->data_dir = strdup(e->data_dir))) return PARLEY_ENOMEM;
  if (e->heartbeat_ms && (e->heartbeat_ms < 20 || e->heartbeat_ms > 3600000))
    return embedded_fail(err, errlen, "limits.heartbeat: must be between 20ms and 1h");
  if (e->ack_timeout_ms && (e->ack_timeout_ms < 10 || e->ack_timeout_ms > 3600000))
    return embedded_fail(err, errlen, "limits.ack_timeout: must be between 10ms and 1h");
  if (e->heartbeat_ms) c->heartbeat_ms = e->heartbeat_ms;
  if (e->ack_timeout_ms) c->ack_timeout_ms = e->ack_timeout_ms;
  if (e->n_principals > 100000) return embedded_fail(err, errlen, "principals: at most 100000");
  if (!(c->principals = calloc(e->n_principals ? e->n_principals : 1, sizeof *c->principals)))
    return PARLEY_ENOMEM;
  for (size_t i = 0; i < e->n_principals; i++)
    if ((rc = embedded_principal(c, &e->principals[i], err, errlen))) return rc;
  const pg_principal *bot = e->bot ? pg_config_principal(c, e->bot) : NULL;
  if (!bot || bot->role != PG_ROLE_BOT)
    return embedded_fail(err, errlen, "bot: '%.140s' must be listed under principals with role bot",
                         e->bot ? e->bot : "");
  if (!(c->bot = strdup(e->bot))) return PARLEY_ENOMEM;
  if (e->faults) {
    const pg_embedded_faults *f = e->faults;
    uint32_t pct[] = {f->drop_push, f->duplicate_push, f->reorder_push, f->drop_ack,
                      f->duplicate_ack};
    for (size_t i = 0; i < sizeof pct / sizeof pct[0]; i++)
      if (pct[i] > 50) return embedded_fail(err, errlen, "faults: at most 50 percent each");
    c->fault_drop_push = f->drop_push;
    c->fault_dup_push = f->duplicate_push;
    c->fault_reorder_push = f->reorder_push;
    c->fault_drop_ack = f->drop_ack;
    c->fault_dup_ack = f->duplicate_ack;
    c->fault_seed = f->seed ? f->seed : 1;
  }
  if (e->bot_opens_any && (rc = pg_open_policy_allow_all(c, c->bot))) return rc;
  if (e->web_templates && (rc = pg_web_set_templates(c->web, e->web_templates)))
    return rc == PARLEY_ENOMEM ? rc
                               : embedded_fail(err, errlen, "web.templates: '%.200s' is not a "
                                               "directory", e->web_templates);
  return 0;
}

int pg_config_embedded(const pg_embedded_config *e, pg_config **out, char *err, size_t errlen) {
  *out = NULL;
  if (sodium_init() < 0) return PARLEY_EINTERNAL;
  pg_config *c = calloc(1, sizeof *c);
  if (!c || !(c->name = strdup("embedded"))) {
    free(c);
    return PARLEY_ENOMEM;
  }
  int rc = embedded_build(c, e, err, errlen);
  if (rc != 0) {
    if (rc == PARLEY_ENOMEM && err && errlen) snprintf(err, errlen, "out of memory");
    pg_config_free(c);
    return rc == PARLEY_ENOMEM ? rc : PARLEY_ECONFIG;
  }
  *out = c;
  return 0;
}

int pg_config_set_port(pg_config *c, int port) {
  if (port < 0 || port > 65535) return PARLEY_EINVAL;
  c->port = port;
  return 0;
}

int pg_config_set_data_dir(pg_config *c, const char *dir) {
  char *d = strdup(dir);
  if (!d || !d[0]) {
    free(d);
    return PARLEY_EINVAL;
  }
  free(c->data_dir);
  c->data_dir = d;
  return 0;
}

pg_config *pg_config_dup(const pg_config *s) {
  pg_config *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  *c = *s;
  c->name = dupstr(s->name);
  c->listen = dupstr(s->listen);
  c->data_dir = dupstr(s->data_dir);
  c->storage_url = dupstr(s->storage_url);
  c->bot = dupstr(s->bot);
  c->tls_cert = dupstr(s->tls_cert);
  c->tls_key = dupstr(s->tls_key);
  c->web = s->web ? pg_web_dup(s->web) : NULL;
  c->principals = calloc(s->n_principals ? s->n_principals : 1, sizeof *c->principals);
  c->customer_secret = NULL;
  c->n_principals = 0;
  bool ok = c->listen && c->data_dir && c->bot && c->principals && (!s->web || c->web);
  for (size_t i = 0; ok && i < s->n_principals; i++) {
    const pg_principal *sp = &s->principals[i];
    pg_principal *p = &c->principals[c->n_principals++];
    *p = *sp;
    p->name = strdup(sp->name);
    p->token = dupstr(sp->token);
    p->queues = calloc(sp->n_queues ? sp->n_queues : 1, sizeof *p->queues);
    p->n_queues = 0;
    ok = p->name && (!sp->token || p->token) && p->queues;
    for (size_t j = 0; ok && j < sp->n_queues; j++)
      ok = (p->queues[p->n_queues++] = strdup(sp->queues[j])) != NULL;
  }
  if (ok && s->customer_secret) {
    c->customer_secret = malloc(s->secret_len);
    ok = c->customer_secret != NULL;
    if (ok) memcpy(c->customer_secret, s->customer_secret, s->secret_len);
  }
  if (pg_open_policy_dup(c, s) != 0) ok = false;
  if (!ok) {
    pg_config_free(c);
    return NULL;
  }
  return c;
}

const pg_principal *pg_config_principal(const pg_config *c, const char *name) {
  for (size_t i = 0; i < c->n_principals; i++)
    if (!strcmp(c->principals[i].name, name)) return &c->principals[i];
  return NULL;
}

int pg_customer_token(const uint8_t *secret, size_t secret_len, const char *principal,
                      char out[65]) {
  uint8_t mac[32];
  if (crypto_generichash(mac, sizeof mac, (const uint8_t *)principal, strlen(principal), secret,
                         secret_len) != 0)
    return PARLEY_EINVAL;
  sodium_bin2hex(out, 65, mac, sizeof mac);
  return 0;
}

/* Compares in constant time, so response timing says nothing about how
 * much of a token matched. */
static bool hash_matches(const pg_principal *p, const char *token) {
  uint8_t h[32];
  size_t n = strlen(token);
  if (p->hash_kind == PG_HASH_SHA256 || p->hash_kind == PG_HASH_ANY) {
    crypto_hash_sha256(h, (const uint8_t *)token, n);
    if (sodium_memcmp(h, p->hash, 32) == 0) return true;
  }
  if (p->hash_kind == PG_HASH_BLAKE2B || p->hash_kind == PG_HASH_ANY) {
    crypto_generichash(h, 32, (const uint8_t *)token, n, NULL, 0);
    if (sodium_memcmp(h, p->hash, 32) == 0) return true;
  }
  return false;
}

static bool str_matches(const char *want, const char *got) {
  /* Hashing both sides gives equal-length inputs to the constant-time
   * comparison whatever the token lengths. */
  uint8_t a[32], b[32];
  crypto_generichash(a, 32, (const uint8_t *)want, strlen(want), NULL, 0);
  crypto_generichash(b, 32, (const uint8_t *)got, strlen(got), NULL, 0);
  return sodium_memcmp(a, b, 32) == 0;
}

int pg_auth(const pg_config *c, const char *principal, int role, const char *token,
            const pg_principal **out) {
  *out = NULL;
  if (!principal || !valid_name(principal) || !token || !token[0]) return PARLEY_EUNAUTH;
  const pg_principal *p = pg_config_principal(c, principal);
  if (p) {
    if (p->role != role) return PARLEY_EUNAUTH;
    bool ok = p->token ? str_matches(p->token, token) : hash_matches(p, token);
    if (!ok) return PARLEY_EUNAUTH;
    *out = p;
    return 0;
  }
  if (role != PG_ROLE_CUSTOMER || !c->customer_secret) return PARLEY_EUNAUTH;
  char want[65];
  if (pg_customer_token(c->customer_secret, c->secret_len, principal, want) != 0)
    return PARLEY_EUNAUTH;
  return str_matches(want, token) ? 0 : PARLEY_EUNAUTH;
}

void pg_token_hash(const char *token, char out[73]) {
  uint8_t h[32];
  crypto_generichash(h, sizeof h, (const uint8_t *)token, strlen(token), NULL, 0);
  memcpy(out, "blake2b:", 8);
  sodium_bin2hex(out + 8, 65, h, sizeof h);
}
