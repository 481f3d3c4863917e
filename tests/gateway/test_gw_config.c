/* Gateway configuration: defaults, every error names file, line and key,
 * environment overrides, token checks, and the shipped example loads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <libwebsockets.h>
#include <uv.h>

#include <parley/error.h>

#include "gateway.h"
#include "gw.h"

#define BASE                                                                                 \
  "bot: faqbot\n"                                                                            \
  "principals:\n"                                                                            \
  "  - {name: faqbot, role: bot, token_hash: "                                               \
  "\"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"}\n"

static void expect_error(const char *yaml, const char *want) {
  pg_config *c = NULL;
  char err[512] = "";
  assert_int_equal(pg_config_from_string("gw.yaml", yaml, &c, err, sizeof err), PARLEY_ECONFIG);
  assert_null(c);
  if (!strstr(err, want)) fail_msg("error '%s' does not contain '%s'", err, want);
}

static void test_defaults(void **state) {
  (void)state;
  pg_config *c = NULL;
  char err[512] = "";
  assert_int_equal(pg_config_from_string("gw.yaml", BASE, &c, err, sizeof err), 0);
  assert_string_equal(c->listen, "127.0.0.1");
  assert_int_equal(c->port, 7800);
  assert_int_equal(c->durability, PG_DUR_FULL);
  assert_true(c->group_commit);
  assert_int_equal(c->busy_poll_us, 0);
  pg_config *bp = NULL;
  assert_int_equal(pg_config_from_string("gw.yaml", BASE "busy_poll_us: 50\n", &bp, err,
                                         sizeof err), 0);
  assert_int_equal(bp->busy_poll_us, 50);
  pg_config_free(bp);
  assert_int_equal(c->max_frame_bytes, 1024 * 1024);
  assert_int_equal(c->window, 256);
  assert_int_equal(c->ack_timeout_ms, 5000);
  assert_int_equal(c->heartbeat_ms, 10000);
  assert_false(c->plain_tokens);
  /* sha256("test"), as `parley gateway hash-token test` prints it. */
  const pg_principal *p = NULL;
  assert_int_equal(pg_auth(c, "faqbot", PG_ROLE_BOT, "test", &p), 0);
  assert_non_null(p);
  assert_int_equal(pg_auth(c, "faqbot", PG_ROLE_BOT, "tesT", &p), PARLEY_EUNAUTH);
  assert_int_equal(pg_auth(c, "faqbot", PG_ROLE_AGENT, "test", &p), PARLEY_EUNAUTH);
  assert_int_equal(pg_auth(c, "nobody", PG_ROLE_CUSTOMER, "test", &p), PARLEY_EUNAUTH);
  pg_config_free(c);
}

static void test_errors_name_file_line_key(void **state) {
  (void)state;
  expect_error(BASE "limits:\n  windw: 3\n", "gw.yaml:5: limits.windw: unknown key");
  expect_error(BASE "durability: sometimes\n", "gw.yaml:4: durability: must be full, normal or off");
  expect_error(BASE "limits:\n  window: 0\n", "gw.yaml:5: limits.window");
  expect_error(BASE "limits:\n  ack_timeout: 5 parsecs\n", "limits.ack_timeout");
  expect_error(BASE "port: 70000\n", "gw.yaml:4: port");
  expect_error(BASE "busy_poll_us: 5000\n", "gw.yaml:4: busy_poll_us");
  expect_error("bot: ghost\nprincipals: []\n", "gw.yaml:1: bot: 'ghost' must be listed");
  expect_error("bot: b\nprincipals:\n  - {name: b, role: robot, token: x}\n",
               "gw.yaml:3: principals[0].role");
  expect_error("bot: b\nprincipals:\n  - {name: b, role: bot}\n", "needs exactly one of");
  expect_error("bot: b\nprincipals:\n  - {name: b, role: bot, token_hash: abc}\n",
               "expected 64 hex digits");
  expect_error("bot: b\nprincipals:\n  - {name: b, role: bot, token_env: PG_TEST_UNSET_VAR}\n",
               "PG_TEST_UNSET_VAR is not set");
  expect_error(BASE "customers: {secret: short}\n", "customers.secret");
  expect_error(BASE "tls: {cert: a.pem}\n", "tls needs both cert and key");
  expect_error("bot: b\nprincipals:\n  - {name: b, role: bot, token: x, queues: [q]}\n",
               "only agents have queues");
  expect_error("bot: [1, 2]\n", "gw.yaml:1: bot");
}

static void test_env_overrides(void **state) {
  (void)state;
  setenv("PARLEY_GATEWAY_PORT", "9123", 1);
  setenv("PARLEY_GATEWAY_LIMITS__ACK_TIMEOUT", "2s", 1);
  setenv("PARLEY_GATEWAY_DURABILITY", "normal", 1);
  pg_config *c = NULL;
  char err[512] = "";
  int rc = pg_config_from_string("gw.yaml", BASE "port: 1\n", &c, err, sizeof err);
  unsetenv("PARLEY_GATEWAY_PORT");
  unsetenv("PARLEY_GATEWAY_LIMITS__ACK_TIMEOUT");
  unsetenv("PARLEY_GATEWAY_DURABILITY");
  assert_int_equal(rc, 0);
  assert_int_equal(c->port, 9123);
  assert_int_equal(c->ack_timeout_ms, 2000);
  assert_int_equal(c->durability, PG_DUR_NORMAL);
  pg_config_free(c);
  setenv("PARLEY_GATEWAY_LIMITS__WINDOW", "lots", 1);
  expect_error(BASE, "limits.window");
  unsetenv("PARLEY_GATEWAY_LIMITS__WINDOW");
}

static void test_customer_tokens(void **state) {
  (void)state;
  pg_config *c = NULL;
  char err[512] = "";
  assert_int_equal(pg_config_from_string("gw.yaml",
                                         BASE "customers: {secret: 0123456789abcdef0123}\n", &c,
                                         err, sizeof err),
                   0);
  assert_true(c->plain_tokens);
  char tok[65], other[65];
  assert_int_equal(pg_customer_token(c->customer_secret, c->secret_len, "cust-1", tok), 0);
  assert_int_equal(pg_customer_token(c->customer_secret, c->secret_len, "cust-2", other), 0);
  assert_int_equal(strlen(tok), 64);
  assert_string_not_equal(tok, other);
  const pg_principal *p = (const pg_principal *)1;
  assert_int_equal(pg_auth(c, "cust-1", PG_ROLE_CUSTOMER, tok, &p), 0);
  assert_null(p);
  assert_int_equal(pg_auth(c, "cust-2", PG_ROLE_CUSTOMER, tok, &p), PARLEY_EUNAUTH);
  assert_int_equal(pg_auth(c, "cust-1", PG_ROLE_AGENT, tok, &p), PARLEY_EUNAUTH);
  /* A listed principal cannot be impersonated with a minted token. */
  assert_int_equal(pg_customer_token(c->customer_secret, c->secret_len, "faqbot", tok), 0);
  assert_int_equal(pg_auth(c, "faqbot", PG_ROLE_BOT, tok, &p), PARLEY_EUNAUTH);
  pg_config_free(c);
}

static void test_example_loads(void **state) {
  (void)state;
  setenv("PARLEY_ALICE_TOKEN", "alice", 1);
  setenv("PARLEY_CUSTOMER_SECRET", "a-secret-of-32-bytes-for-testing", 1);
  pg_config *c = NULL;
  char err[512] = "";
  int rc = pg_config_load(PARLEY_SOURCE_DIR "/gateway/example.yaml", &c, err, sizeof err);
  if (rc) fail_msg("%s", err);
  assert_int_equal(c->n_principals, 2);
  assert_int_equal(c->rate, 50);
  assert_non_null(c->customer_secret);
  pg_config_free(c);
  unsetenv("PARLEY_ALICE_TOKEN");
  unsetenv("PARLEY_CUSTOMER_SECRET");
}

/* An embedder's error path may free a running gateway without stopping it:
 * every handle is closed and the loop can be closed afterwards. */
/* The test switches are off by default, bounded, and read as given. */
static void test_fault_switches(void **state) {
  (void)state;
  pg_config *c = NULL;
  char err[512] = "";
  assert_int_equal(pg_config_from_string("gw.yaml", BASE, &c, err, sizeof err), 0);
  assert_int_equal(c->fault_drop_push + c->fault_dup_push + c->fault_reorder_push +
                       c->fault_drop_ack + c->fault_dup_ack,
                   0);
  pg_config_free(c);
  c = NULL;
  assert_int_equal(pg_config_from_string("gw.yaml",
                                         BASE "faults:\n  drop_push: 5\n  duplicate_push: 6\n"
                                              "  reorder_push: 7\n  drop_ack: 8\n"
                                              "  duplicate_ack: 9\n  seed: 42\n",
                                         &c, err, sizeof err),
                   0);
  assert_int_equal(c->fault_drop_push, 5);
  assert_int_equal(c->fault_dup_push, 6);
  assert_int_equal(c->fault_reorder_push, 7);
  assert_int_equal(c->fault_drop_ack, 8);
  assert_int_equal(c->fault_dup_ack, 9);
  assert_int_equal(c->fault_seed, 42);
  pg_config_free(c);
  expect_error(BASE "faults:\n  drop_push: 60\n", "gw.yaml:5: faults.drop_push: 60 is out of range");
  expect_error(BASE "faults:\n  drop: 5\n", "gw.yaml:5: faults.drop: unknown key");
}

/* proactive: which bots may open conversations with which customers. */
static void test_proactive_policy(void **state) {
  (void)state;
  pg_config *c = NULL;
  char err[512] = "";
  assert_int_equal(pg_config_from_string("gw.yaml", BASE, &c, err, sizeof err), 0);
  assert_false(pg_open_allowed(c, "faqbot", "alice")); /* nothing without a rule */
  pg_config_free(c);
  c = NULL;
  assert_int_equal(pg_config_from_string("gw.yaml",
                                         BASE "  - {name: rem, role: bot, token: x}\n"
                                              "proactive:\n"
                                              "  - {bot: faqbot, customers: [alice, \"shop-*\"]}\n"
                                              "  - {bot: rem, customers: [\"*\"]}\n",
                                         &c, err, sizeof err),
                   0);
  assert_true(pg_open_allowed(c, "faqbot", "alice"));
  assert_true(pg_open_allowed(c, "faqbot", "shop-17"));
  assert_false(pg_open_allowed(c, "faqbot", "alice2"));
  assert_false(pg_open_allowed(c, "faqbot", "bob"));
  assert_true(pg_open_allowed(c, "rem", "bob"));
  assert_false(pg_open_allowed(c, "nobody", "alice"));
  /* The copy the server keeps has its own rules. */
  pg_config *d = pg_config_dup(c);
  pg_config_free(c);
  assert_non_null(d);
  assert_true(pg_open_allowed(d, "faqbot", "shop-1"));
  assert_false(pg_open_allowed(d, "faqbot", "bob"));
  pg_config_free(d);
  expect_error(BASE "proactive:\n  - {bot: ghost, customers: [a]}\n",
               "gw.yaml:5: proactive.bot: must name a principal listed under principals with "
               "role bot");
  expect_error(BASE "proactive:\n  - {bot: faqbot, customers: []}\n", "proactive.customers");
  expect_error(BASE "proactive:\n  - {bot: faqbot, customers: [\"a*b\"]}\n",
               "gw.yaml:5: proactive.customers: a customer name");
  expect_error(BASE "proactive:\n  - {bot: faqbot, customer: [a]}\n", "unknown key");
  expect_error(BASE "proactive: {bot: faqbot}\n", "gw.yaml:4: proactive: a list");
}

static void test_free_without_stop(void **state) {
  (void)state;
  char dir[] = "/tmp/parley-gwcfg-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char yaml[512];
  snprintf(yaml, sizeof yaml, BASE "port: 0\ndata_dir: %s\n", dir);
  pg_config *c = NULL;
  char err[512] = "";
  assert_int_equal(pg_config_from_string("gw.yaml", yaml, &c, err, sizeof err), 0);
  lws_set_log_level(LLL_ERR, NULL);
  uv_loop_t loop;
  uv_loop_init(&loop);
  pg_gateway *g = NULL;
  assert_int_equal(pg_gateway_new(&loop, c, &g), 0);
  assert_true(pg_gateway_port(g) > 0);
  pg_gateway_free(g);
  uv_run(&loop, UV_RUN_NOWAIT);
  assert_int_equal(uv_loop_close(&loop), 0);
  pg_config_free(c);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

/* A configuration built in code: the defaults of an empty file but for
 * the port and durability, names and paths taken byte for byte (a colon, a
 * quote, a backslash), tokens checked against their hash, and the same
 * refusals a file gets. */
static void test_embedded(void **state) {
  (void)state;
  pg_embedded_principal ps[] = {
      {.name = "@front:desk", .role = PARLEY_ROLE_BOT, .token = "bot-secret"},
      {.name = "customer", .role = PARLEY_ROLE_CUSTOMER, .token = "cust-secret"},
      {.name = "agent", .role = PARLEY_ROLE_AGENT, .token = "agent-secret", .queue = "support"},
  };
  pg_embedded_faults fl = {.drop_push = 5, .reorder_push = 10};
  pg_embedded_config ec = {.data_dir = "/tmp/a:b \"c\" d\\e",
                           .bot = "@front:desk",
                           .principals = ps,
                           .n_principals = 3,
                           .heartbeat_ms = 500,
                           .faults = &fl};
  pg_config *c = NULL;
  char err[512] = "";
  assert_int_equal(pg_config_embedded(&ec, &c, err, sizeof err), 0);
  assert_string_equal(c->data_dir, "/tmp/a:b \"c\" d\\e");
  assert_string_equal(c->bot, "@front:desk");
  assert_string_equal(c->listen, "127.0.0.1");
  assert_int_equal(c->port, 0);
  assert_int_equal(c->durability, PG_DUR_NORMAL);
  assert_int_equal(c->heartbeat_ms, 500);
  assert_int_equal(c->ack_timeout_ms, 5000); /* the file's default */
  assert_int_equal(c->window, 256);
  assert_int_equal(c->fault_drop_push, 5);
  assert_int_equal(c->fault_reorder_push, 10);
  assert_int_equal(c->fault_seed, 1);
  assert_false(c->plain_tokens);
  const pg_principal *p = NULL;
  assert_int_equal(pg_auth(c, "@front:desk", PG_ROLE_BOT, "bot-secret", &p), 0);
  assert_non_null(p);
  assert_int_equal(pg_auth(c, "@front:desk", PG_ROLE_BOT, "cust-secret", &p), PARLEY_EUNAUTH);
  assert_int_equal(pg_auth(c, "agent", PG_ROLE_AGENT, "agent-secret", &p), 0);
  assert_int_equal(p->n_queues, 1);
  assert_string_equal(p->queues[0], "support");
  pg_config_free(c);

  struct {
    pg_embedded_principal p0;
    const char *bot, *want;
  } bad[] = {
      {{.name = "not a name", .role = PARLEY_ROLE_BOT, .token = "t"}, "not a name",
       "is not a principal name"},
      {{.name = "b", .role = PARLEY_ROLE_CUSTOMER, .token = "t"}, "b", "with role bot"},
      {{.name = "b", .role = PARLEY_ROLE_BOT, .token = ""}, "b", "needs a token"},
      {{.name = "b", .role = PARLEY_ROLE_BOT, .token = "t", .queue = "q"}, "b",
       "only agents have queues"},
      {{.name = "customer", .role = PARLEY_ROLE_BOT, .token = "t"}, "customer", "listed twice"},
      {{.name = "b", .role = 0, .token = "t"}, "b", "needs a role"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    pg_embedded_principal two[] = {bad[i].p0, ps[1]};
    pg_embedded_config e = {.data_dir = "/tmp/x", .bot = bad[i].bot, .principals = two,
                            .n_principals = 2};
    err[0] = 0;
    assert_int_equal(pg_config_embedded(&e, &c, err, sizeof err), PARLEY_ECONFIG);
    assert_null(c);
    if (!strstr(err, bad[i].want)) fail_msg("case %zu: '%s' lacks '%s'", i, err, bad[i].want);
  }
  pg_embedded_config e = {.data_dir = "", .bot = "@front:desk", .principals = ps,
                          .n_principals = 3};
  assert_int_equal(pg_config_embedded(&e, &c, err, sizeof err), PARLEY_ECONFIG);
  assert_non_null(strstr(err, "data_dir"));
  e.data_dir = "/tmp/x";
  e.heartbeat_ms = 5;
  assert_int_equal(pg_config_embedded(&e, &c, err, sizeof err), PARLEY_ECONFIG);
  assert_non_null(strstr(err, "limits.heartbeat"));
  e.heartbeat_ms = 0;
  e.web_templates = "/nonexistent/templates";
  assert_int_equal(pg_config_embedded(&e, &c, err, sizeof err), PARLEY_ECONFIG);
  assert_non_null(strstr(err, "web.templates"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_embedded),
      cmocka_unit_test(test_errors_name_file_line_key),
      cmocka_unit_test(test_env_overrides),
      cmocka_unit_test(test_customer_tokens),
      cmocka_unit_test(test_example_loads),
      cmocka_unit_test(test_fault_switches),
      cmocka_unit_test(test_proactive_policy),
      cmocka_unit_test(test_free_without_stop),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
