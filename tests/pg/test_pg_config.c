/* The gateway YAML's storage: section (gateway/src/store/storage_cfg.c):
 * the backend chosen, the connection string built with its password from
 * the environment or a file, never from the YAML, production defaults for
 * timeouts added, and every mistake a configuration error naming its key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "gw.h"
#include "proc.h"

static const char base[] = "bot: faqbot\n"
                           "principals:\n"
                           "  - {name: faqbot, role: bot, token: bot-token}\n";

static int load(const char *storage, pg_config **out, char *err, size_t errlen) {
  char yaml[2048];
  snprintf(yaml, sizeof yaml, "%s%s", base, storage);
  *out = NULL;
  return pg_config_from_string("test.yaml", yaml, out, err, errlen);
}

static void test_storage_section(void **unused) {
  (void)unused;
  pg_config *c;
  char err[512];

  /* No section: SQLite. */
  assert_int_equal(load("", &c, err, sizeof err), 0);
  assert_true(c->storage_kind == NULL || !strcmp(c->storage_kind, "sqlite"));
  assert_null(c->storage_url);
  pg_config_free(c);

  /* PostgreSQL, password from the environment, defaults added. */
  setenv("TEST_PG_PW", "s3cr'et", 1);
  assert_int_equal(load("storage:\n  kind: postgres\n"
                        "  url: postgresql://parley@db.internal:5433/parley\n"
                        "  password_env: TEST_PG_PW\n",
                        &c, err, sizeof err),
                   0);
  assert_string_equal(c->storage_kind, "postgres");
  assert_non_null(strstr(c->storage_url, "host='db.internal'"));
  assert_non_null(strstr(c->storage_url, "port='5433'"));
  assert_non_null(strstr(c->storage_url, "password='s3cr\\'et'"));
  assert_non_null(strstr(c->storage_url, "connect_timeout='5'"));
  assert_non_null(strstr(c->storage_url, "keepalives_idle='10'"));
  pg_config_free(c);

  /* A timeout given in the URL is kept. */
  assert_int_equal(load("storage:\n  kind: postgres\n  url: \"host=db connect_timeout=2\"\n",
                        &c, err, sizeof err),
                   0);
  assert_non_null(strstr(c->storage_url, "connect_timeout='2'"));
  assert_null(strstr(c->storage_url, "connect_timeout='5'"));
  pg_config_free(c);

  /* Password from a file: its first line. */
  char dir[256], path[320], yaml[600];
  assert_int_equal(tmpdir_make(dir, sizeof dir, "pgcfg"), 0);
  snprintf(path, sizeof path, "%s/pw", dir);
  assert_int_equal(write_file(path, "from-file\nignored\n"), 0);
  snprintf(yaml, sizeof yaml, "storage:\n  kind: postgres\n  url: host=db\n  password_file: %s\n",
           path);
  assert_int_equal(load(yaml, &c, err, sizeof err), 0);
  assert_non_null(strstr(c->storage_url, "password='from-file'"));
  pg_config_free(c);

  /* Several databases: one connection string each, in the order given,
   * each with the password and the defaults. */
  setenv("TEST_PG_PW", "pw2", 1);
  assert_int_equal(load("storage:\n  kind: postgres\n"
                        "  shards: [\"host=db1 dbname=p\", \"postgresql://u@db2/p\"]\n"
                        "  password_env: TEST_PG_PW\n  pool: 5\n",
                        &c, err, sizeof err),
                   0);
  assert_string_equal(c->storage_kind, "postgres-shards");
  {
    const char *sep = strchr(c->storage_url, '\x1e');
    assert_non_null(sep);
    assert_null(strchr(sep + 1, '\x1e'));
    assert_non_null(strstr(c->storage_url, "host='db1'"));
    assert_non_null(strstr(sep, "host='db2'"));
    assert_true(strstr(c->storage_url, "host='db1'") < sep);
    assert_non_null(strstr(sep, "password='pw2'"));
    assert_true(strstr(c->storage_url, "password='pw2'") < sep);
  }
  pg_config_free(c);

  /* Mistakes, each naming the file, its line and its key. */
  struct {
    const char *yaml, *key, *text;
  } bad[] = {
      {"storage:\n  kind: postgres\n  url: \"host=db password=inline\"\n", "storage.url",
       "never in the YAML"},
      {"storage:\n  kind: postgres\n  url: postgresql://u:inline@db/p\n", "storage.url",
       "never in the YAML"},
      {"storage:\n  kind: postgres\n", "storage.url", "needs url"},
      {"storage:\n  kind: postgres\n  url: \"host=db port\"\n", "storage.url", ""},
      {"storage:\n  kind: mysql\n", "storage.kind", "sqlite or postgres"},
      {"storage:\n  kind: sqlite\n  url: host=db\n", "storage.url", "only kind postgres"},
      {"storage:\n  kind: postgres\n  url: host=db\n  password_env: TEST_PG_UNSET\n",
       "storage.password_env", "not set"},
      {"storage:\n  kind: postgres\n  url: host=db\n  password_file: /nonexistent/pw\n",
       "storage.password_file", "cannot read"},
      {"storage:\n  kind: postgres\n  url: host=db\n  pasword_env: X\n", "storage", ""},
      {"storage:\n  kind: postgres\n  url: host=db\n  shards: [host=db2]\n", "storage.url",
       "not both"},
      {"storage:\n  kind: postgres\n  shards: []\n", "storage.shards", "list"},
      {"storage:\n  kind: postgres\n  shards: host=db\n", "storage.shards", "list"},
      {"storage:\n  kind: postgres\n  shards: [host=a, \"host=b password=x\"]\n",
       "storage.shards[1]", "never in the YAML"},
      {"storage:\n  kind: postgres\n  url: host=db\n  pool: 2\n", "storage.pool",
       "at least 3"},
      {"storage:\n  kind: sqlite\n  shards: [host=db]\n", "storage.shards",
       "only kind postgres"},
  };
  unsetenv("TEST_PG_UNSET");
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err[0] = 0;
    int rc = load(bad[i].yaml, &c, err, sizeof err);
    if (rc == 0) pg_config_free(c);
    if (rc == 0 || !strstr(err, bad[i].key) || !strstr(err, bad[i].text) ||
        strncmp(err, "test.yaml:", 10))
      fprintf(stderr, "case %zu: rc %d, err \"%s\"\n", i, rc, err);
    assert_int_not_equal(rc, 0);
    assert_int_equal(strncmp(err, "test.yaml:", 10), 0);
    assert_non_null(strstr(err, bad[i].key));
    assert_non_null(strstr(err, bad[i].text));
  }
  tmpdir_remove(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_storage_section),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
