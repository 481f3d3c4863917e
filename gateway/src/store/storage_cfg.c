/* See storage_cfg.h. */
#include "store/storage_cfg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#ifdef PARLEY_HAVE_POSTGRES
#include <libpq-fe.h>
#endif

#include <parley/error.h>

#define PASSWORD_MAX 1024

void pg_storage_conninfo_free(char *conninfo) {
  if (!conninfo) return;
  sodium_memzero(conninfo, strlen(conninfo));
  free(conninfo);
}

#ifdef PARLEY_HAVE_POSTGRES
/* Appends " key='value'" with libpq's quoting (backslash before ' and \). */
static int append_kv(char **buf, size_t *len, size_t *cap, const char *k, const char *v) {
  size_t need = *len + strlen(k) + 2 * strlen(v) + 6;
  if (need > *cap) {
    size_t nc = need * 2;
    char *t = realloc(*buf, nc);
    if (!t) return PARLEY_ENOMEM;
    *buf = t;
    *cap = nc;
  }
  char *p = *buf + *len;
  p += sprintf(p, "%s%s='", *len ? " " : "", k);
  for (const char *s = v; *s; s++) {
    if (*s == '\'' || *s == '\\') *p++ = '\\';
    *p++ = *s;
  }
  *p++ = '\'';
  *p = 0;
  *len = (size_t)(p - *buf);
  return 0;
}

/* The password from password_env or password_file, if one is named. */
static int read_password(const pc_node *n, char *out, pc_error *err) {
  const char *env = NULL, *file = NULL;
  int rc;
  out[0] = 0;
  if ((rc = pc_get_str(n, "password_env", NULL, &env, err)) ||
      (rc = pc_get_str(n, "password_file", NULL, &file, err)))
    return rc;
  if (env && file)
    return pc_fail(err, pc_get(n, "password_file"), "storage.password_file",
                "give password_env or password_file, not both");
  if (env) {
    const char *v = getenv(env);
    if (!v || !v[0])
      return pc_fail(err, pc_get(n, "password_env"), "storage.password_env",
                  "environment variable %s is not set", env);
    if (strlen(v) >= PASSWORD_MAX)
      return pc_fail(err, pc_get(n, "password_env"), "storage.password_env", "password too long");
    snprintf(out, PASSWORD_MAX, "%s", v);
  } else if (file) {
    FILE *f = fopen(file, "r");
    if (!f)
      return pc_fail(err, pc_get(n, "password_file"), "storage.password_file",
                  "cannot read %s", file);
    bool ok = fgets(out, PASSWORD_MAX, f) != NULL;
    fclose(f);
    out[strcspn(out, "\r\n")] = 0;
    if (!ok || !out[0])
      return pc_fail(err, pc_get(n, "password_file"), "storage.password_file",
                  "%s holds no password on its first line", file);
  }
  return 0;
}

/* One connection string: url as given (where says where it came from,
 * for errors), with the defaults and the password added. */
static int one_conninfo(const pc_node *n, const pc_node *where, const char *key, const char *url,
                        char **out, pc_error *err) {
  int rc = 0;
  char *msg = NULL;
  PQconninfoOption *opts = PQconninfoParse(url, &msg);
  if (!opts) {
    rc = pc_fail(err, where, key, "%s", msg ? msg : "cannot be parsed");
    if (msg) err->message[strcspn(err->message, "\n")] = 0;
    PQfreemem(msg);
    return rc;
  }
  char password[PASSWORD_MAX];
  char *buf = NULL;
  size_t len = 0, cap = 0;
  /* Defaults where the URL says nothing: the event loop's reads must not
   * hang for minutes on an unreachable host, and the writer must notice a
   * database host that vanished without closing its connections (TCP
   * keepalives: about 25 s instead of the system's two hours). */
  static const char *const defaults[][2] = {{"connect_timeout", "5"},
                                            {"keepalives_idle", "10"},
                                            {"keepalives_interval", "5"},
                                            {"keepalives_count", "3"}};
  bool given[4] = {false, false, false, false};
  for (PQconninfoOption *o = opts; !rc && o->keyword; o++) {
    if (!o->val) continue;
    for (size_t d = 0; d < 4; d++)
      if (!strcmp(o->keyword, defaults[d][0])) given[d] = true;
    if (!strcmp(o->keyword, "password"))
      rc = pc_fail(err, where, key,
                "holds a password: give it with storage.password_env or "
                "storage.password_file instead, never in the YAML");
    else if (strchr(o->val, PG_STORAGE_SHARD_SEP))
      rc = pc_fail(err, where, key, "holds a control character");
    else
      rc = append_kv(&buf, &len, &cap, o->keyword, o->val);
  }
  PQconninfoFree(opts);
  for (size_t d = 0; !rc && d < 4; d++)
    if (!given[d]) rc = append_kv(&buf, &len, &cap, defaults[d][0], defaults[d][1]);
  if (!rc) rc = read_password(n, password, err);
  if (!rc && password[0]) rc = append_kv(&buf, &len, &cap, "password", password);
  sodium_memzero(password, sizeof password);
  if (rc) {
    pg_storage_conninfo_free(buf);
    return rc;
  }
  *out = buf;
  return 0;
}

static int postgres_conninfo(const pc_node *n, char **out, pc_error *err) {
  const char *url = NULL;
  int rc = pc_get_str(n, "url", NULL, &url, err);
  if (rc) return rc;
  if (!url || !url[0])
    return pc_fail(err, n, "storage.url",
                "kind postgres needs url (one database) or shards (a list of them)");
  return one_conninfo(n, pc_get(n, "url"), "storage.url", url, out, err);
}

/* shards: one connection string per database, joined by
 * PG_STORAGE_SHARD_SEP in the order given (the order decides which shard
 * a conversation hashes to: it must be the same on every node). */
static int shards_conninfo(const pc_node *n, char **out, pc_error *err) {
  const pc_node *list = pc_get(n, "shards");
  if (pc_get(n, "url"))
    return pc_fail(err, pc_get(n, "url"), "storage.url", "give url or shards, not both");
  if (pc_node_kind(list) != PC_SEQ || pc_len(list) < 1)
    return pc_fail(err, list, "storage.shards", "expected a list of libpq connection strings");
  if (pc_len(list) > PG_STORAGE_MAX_SHARDS)
    return pc_fail(err, list, "storage.shards", "at most %d shards", PG_STORAGE_MAX_SHARDS);
  char *all = NULL;
  size_t len = 0;
  for (size_t i = 0; i < pc_len(list); i++) {
    const pc_node *it = pc_at(list, i);
    const char *url = pc_scalar(it);
    char key[48];
    snprintf(key, sizeof key, "storage.shards[%zu]", i);
    if (!url || !url[0]) {
      pg_storage_conninfo_free(all);
      return pc_fail(err, it, key, "expected a libpq connection string");
    }
    char *one = NULL;
    int rc = one_conninfo(n, it, key, url, &one, err);
    if (rc) {
      pg_storage_conninfo_free(all);
      return rc;
    }
    size_t ol = strlen(one);
    char *t = realloc(all, len + ol + 2);
    if (!t) {
      pg_storage_conninfo_free(one);
      pg_storage_conninfo_free(all);
      return PARLEY_ENOMEM;
    }
    all = t;
    if (len) all[len++] = PG_STORAGE_SHARD_SEP;
    memcpy(all + len, one, ol + 1);
    len += ol;
    pg_storage_conninfo_free(one);
  }
  *out = all;
  return 0;
}
#endif

int pg_storage_load(const pc_node *n, const char **kind, char **conninfo, pc_error *err) {
  static const char *const keys[] = {"kind",          "url",  "shards", "password_env",
                                     "password_file", "pool", NULL};
  *kind = "sqlite";
  *conninfo = NULL;
  if (!n || pc_node_kind(n) == PC_NULL) return 0;
  if (pc_node_kind(n) != PC_MAP) return pc_fail(err, n, "storage", "expected a mapping");
  int rc = pc_check_keys(n, keys, err);
  if (rc) return rc;
  const char *k = NULL;
  if ((rc = pc_get_str(n, "kind", "sqlite", &k, err))) return rc;
  if (!strcmp(k, "sqlite")) {
    static const char *const pg_only[] = {"url", "shards", "pool", "password_env",
                                          "password_file"};
    for (size_t i = 0; i < sizeof pg_only / sizeof *pg_only; i++)
      if (pc_get(n, pg_only[i])) {
        char key[40];
        snprintf(key, sizeof key, "storage.%s", pg_only[i]);
        return pc_fail(err, pc_get(n, pg_only[i]), key, "only kind postgres takes %s", pg_only[i]);
      }
    return 0;
  }
  if (strcmp(k, "postgres") != 0)
    return pc_fail(err, pc_get(n, "kind"), "storage.kind", "must be sqlite or postgres, got '%.32s'",
                k);
  /* pool: the database connections one node holds per database. A node
   * needs exactly PG_STORAGE_POOL_MIN (the writer thread's, the loop's
   * reads, the listener); a smaller value is refused rather than quietly
   * exceeded. */
  uint64_t pool = PG_STORAGE_POOL_MIN;
  if ((rc = pc_get_u64(n, "pool", PG_STORAGE_POOL_MIN, 0, 1000, &pool, err))) return rc;
  if (pool < PG_STORAGE_POOL_MIN)
    return pc_fail(err, pc_get(n, "pool"), "storage.pool",
                "a node holds %d connections per database (writer, reads, listener): pool must "
                "be at least %d, got %llu",
                PG_STORAGE_POOL_MIN, PG_STORAGE_POOL_MIN, (unsigned long long)pool);
#ifdef PARLEY_HAVE_POSTGRES
  if (pc_get(n, "shards")) {
    *kind = "postgres-shards";
    return shards_conninfo(n, conninfo, err);
  }
  *kind = "postgres";
  return postgres_conninfo(n, conninfo, err);
#else
  return pc_fail(err, pc_get(n, "kind"), "storage.kind",
              "this gateway was built without PostgreSQL (PARLEY_POSTGRES=OFF)");
#endif
}
