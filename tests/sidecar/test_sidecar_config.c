/* sidecar.yaml parsing (cli/sidecar.c, compiled into this test): defaults,
 * every key, environment overrides and their naming, gateway.token_env,
 * and the "file:line: key: message" errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <parley/error.h>

#include "proc.h"
#include "sidecar.h"

static char dir[256];
static char path[512];

static int setup(void **state) {
  (void)state;
  if (tmpdir_make(dir, sizeof dir, "sidecar-config") != 0) return -1;
  snprintf(path, sizeof path, "%s/sidecar.yaml", dir);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  tmpdir_remove(dir);
  return 0;
}

static int load_text(const char *text, sidecar_config *c, char *err, size_t n) {
  assert_int_equal(write_file(path, text), 0);
  return sidecar_config_load(path, c, err, n);
}

static void test_defaults(void **state) {
  (void)state;
  sidecar_config c;
  char err[512] = "";
  assert_int_equal(load_text("# nothing\n", &c, err, sizeof err), 0);
  assert_string_equal(c.url, "");
  assert_string_equal(c.token, "");
  assert_string_equal(c.listen, "127.0.0.1");
  assert_int_equal(c.port, -1);
  assert_int_equal(c.log_format, PLOG_TEXT);
  assert_int_equal(c.log_level, PLOG_INFO);
  assert_int_equal(c.drain_ms, 10000);
  assert_false(c.insecure_tls);
  /* No file: the environment alone. */
  assert_int_equal(sidecar_config_load(NULL, &c, err, sizeof err), 0);
  assert_int_equal(c.port, -1);
}

static void test_all_keys(void **state) {
  (void)state;
  sidecar_config c;
  char err[512] = "";
  int rc = load_text("gateway:\n"
                     "  url: wss://gw.example.com:8443/\n"
                     "  token: s3cret\n"
                     "  principal: orders\n"
                     "  insecure_tls: true\n"
                     "ops:\n"
                     "  listen: 0.0.0.0\n"
                     "  port: 9090\n"
                     "log:\n"
                     "  format: logfmt\n"
                     "  level: warn\n"
                     "shutdown:\n"
                     "  drain: 2m\n",
                     &c, err, sizeof err);
  if (rc) fail_msg("%s", err);
  assert_string_equal(c.url, "wss://gw.example.com:8443/");
  assert_string_equal(c.token, "s3cret");
  assert_string_equal(c.principal, "orders");
  assert_true(c.insecure_tls);
  assert_string_equal(c.listen, "0.0.0.0");
  assert_int_equal(c.port, 9090);
  assert_int_equal(c.log_format, PLOG_LOGFMT);
  assert_int_equal(c.log_level, PLOG_WARN);
  assert_int_equal(c.drain_ms, 120000);
}

static void test_env_overrides(void **state) {
  (void)state;
  sidecar_config c;
  char err[512] = "";
  setenv("PARLEY_SIDECAR_OPS__PORT", "0", 1);
  setenv("PARLEY_SIDECAR_LOG__FORMAT", "json", 1);
  setenv("PARLEY_SIDECAR_SHUTDOWN__DRAIN", "1500ms", 1);
  setenv("PARLEY_SIDECAR_GATEWAY__TOKEN_ENV", "SIDECAR_CFG_TOKEN", 1);
  setenv("SIDECAR_CFG_TOKEN", "from-env", 1);
  int rc = load_text("ops:\n  port: 9090\nlog:\n  format: text\n", &c, err, sizeof err);
  if (rc) fail_msg("%s", err);
  assert_int_equal(c.port, 0);
  assert_int_equal(c.log_format, PLOG_JSON);
  assert_int_equal(c.drain_ms, 1500);
  assert_string_equal(c.token_env, "SIDECAR_CFG_TOKEN");
  assert_string_equal(c.token, "from-env");
  /* The named variable must be set to run; a check does not need it. */
  unsetenv("SIDECAR_CFG_TOKEN");
  assert_int_equal(sidecar_config_load(path, &c, err, sizeof err), PARLEY_ECONFIG);
  assert_non_null(strstr(err, "gateway.token_env: the environment variable it names is not set"));
  assert_int_equal(sidecar_config_check(path, err, sizeof err), 0);
  unsetenv("PARLEY_SIDECAR_OPS__PORT");
  unsetenv("PARLEY_SIDECAR_LOG__FORMAT");
  unsetenv("PARLEY_SIDECAR_SHUTDOWN__DRAIN");
  unsetenv("PARLEY_SIDECAR_GATEWAY__TOKEN_ENV");
}

static void expect_error(const char *text, const char *want) {
  sidecar_config c;
  char err[512] = "";
  assert_int_equal(write_file(path, text), 0);
  assert_int_equal(sidecar_config_check(path, err, sizeof err), PARLEY_ECONFIG);
  char full[768];
  snprintf(full, sizeof full, "%s:%s", path, want);
  if (!strstr(err, full)) fail_msg("expected '%s' in '%s'", full, err);
  assert_int_equal(sidecar_config_load(path, &c, err, sizeof err), PARLEY_ECONFIG);
}

static void test_errors(void **state) {
  (void)state;
  expect_error("ops:\n  port: 1\n  prot: 2\n", "3: ops.prot:");
  expect_error("gateway:\n  url: http://x/\n", "2: gateway.url: must start with ws:// or wss://");
  expect_error("gateway:\n  token: a\n  token_env: B\n",
               "2: gateway.token: give gateway.token or gateway.token_env, not both");
  expect_error("log:\n  level: loud\n", "2: log.level: must be debug, info, warn or error");
  expect_error("log:\n  format: xml\n", "2: log.format: must be text, json or logfmt");
  expect_error("ops:\n  port: 70000\n", "2: ops.port:");
  expect_error("shutdown:\n  drain: soon\n", "2: shutdown.drain:");
  expect_error("shutdown:\n  drain: 2h\n", "2: shutdown.drain: must be at most 1h");
  expect_error("metrics: {}\n", "1: metrics:");
  expect_error("ops: 9090\n", "1: ops: must be a map");
  expect_error("ops:\n  listen: \"\"\n", "2: ops.listen: must not be empty");
  /* A bad environment value is reported against its variable. */
  setenv("PARLEY_SIDECAR_OPS__PORT", "many", 1);
  sidecar_config c;
  char err[512] = "";
  assert_int_equal(write_file(path, "ops:\n  port: 1\n"), 0);
  assert_int_equal(sidecar_config_load(path, &c, err, sizeof err), PARLEY_ECONFIG);
  unsetenv("PARLEY_SIDECAR_OPS__PORT");
  assert_non_null(strstr(err, "ops.port"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
      cmocka_unit_test_setup_teardown(test_all_keys, setup, teardown),
      cmocka_unit_test_setup_teardown(test_env_overrides, setup, teardown),
      cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
