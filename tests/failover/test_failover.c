/* Client failover over real gateway processes, SQLite backend.
 *
 * Two SQLite gateways cannot share one log, so this run keeps one node up
 * at a time: every client (libparley customers, and the echo bot through
 * `parley run --url A --url B`) holds both node URLs; the node in use is
 * killed with SIGKILL in the middle of traffic and its data directory is
 * started again as the other node, on the other URL. Every reconnect is
 * therefore a move to the next URL of the list, and the run checks that
 * the clients resumed there from their cursors: 0 lost, 0 duplicated,
 * 0 reordered, 0 gapped, 0 replies missing, and both URLs used.
 * tests/pg runs the same checker with nodes up at once over PostgreSQL.
 *
 * FAILOVER_KILLS and FAILOVER_MSGS size the run. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include <parley/client.h>

#include "failover.h"
#include "proc.h"

#ifndef FAILOVER_KILLS
#define FAILOVER_KILLS 4
#endif
#ifndef FAILOVER_MSGS
#define FAILOVER_MSGS 60
#endif

static const char *sqlite_yaml(int node, void *ud) {
  (void)node;
  (void)ud;
  return "listen: 127.0.0.1\n"
         "durability: normal\n"
         "bot: echo\n"
         "limits:\n"
         "  ack_timeout: 1s\n"
         "  heartbeat: 1s\n"
         "  max_connections_per_principal: 64\n";
}

static void test_failover_next_url(void **unused) {
  (void)unused;
  fo_scenario sc = {
      .name = "sqlite_next_url",
      .nodes = 2,
      .shared_store = false,
      .yaml = sqlite_yaml,
      .customers = 3,
      .msgs = FAILOVER_MSGS,
      .kills = FAILOVER_KILLS,
      .deadline_s = 120,
  };
  fo_counts k;
  int rc = fo_run(&sc, &k);
  fo_print(&sc, &k);
  assert_int_equal(rc, 0);
  assert_int_equal(k.kills, FAILOVER_KILLS);
  assert_int_equal(k.acked, (uint64_t)sc.customers * FAILOVER_MSGS);
  assert_int_equal(k.lost, 0);
  assert_int_equal(k.duplicated, 0);
  assert_int_equal(k.reordered, 0);
  assert_int_equal(k.gapped, 0);
  assert_int_equal(k.replies_missing, 0);
  /* Each kill moved every customer to the other URL: both were used, and
   * each customer reconnected at least once per kill. */
  assert_true(k.ready_on[0] >= (uint64_t)sc.customers);
  assert_true(k.ready_on[1] >= (uint64_t)sc.customers);
  assert_true(k.reconnects >= (uint64_t)sc.customers * FAILOVER_KILLS);
}

static int new_client(const parley_client_options *o, parley_client **c) {
  return parley_client_new(o, c);
}

/* The node list as options give it: comma-separated in url, the urls
 * array, both, and what is refused. */
static void test_url_list_options(void **unused) {
  (void)unused;
  parley_client *c = NULL;
  parley_client_options o = PARLEY_CLIENT_OPTIONS_INIT;
  o.principal = "p";
  o.role = PARLEY_ROLE_CUSTOMER;

  o.url = "ws://a:1/, ws://b:2/x";
  assert_int_equal(new_client(&o, &c), 0);
  assert_string_equal(parley_client_url(c), "ws://a:1/");
  parley_client_free(c);

  /* A comma inside a path does not start another URL. */
  o.url = "ws://a:1/p,q";
  assert_int_equal(new_client(&o, &c), 0);
  assert_string_equal(parley_client_url(c), "ws://a:1/p,q");
  parley_client_free(c);

  const char *more[] = {"ws://c:3/", "ws://d:4/"};
  o.url = NULL;
  o.urls = more;
  o.n_urls = 2;
  assert_int_equal(new_client(&o, &c), 0);
  assert_string_equal(parley_client_url(c), "ws://c:3/");
  parley_client_free(c);

  /* One scheme per client; every entry a URL; a bounded list. */
  const char *mixed[] = {"ws://c:3/", "wss://d:4/"};
  o.urls = mixed;
  assert_int_equal(new_client(&o, &c), PARLEY_EINVAL);
  const char *bad[] = {"ws://c:3/", "http://d/"};
  o.urls = bad;
  assert_int_equal(new_client(&o, &c), PARLEY_EINVAL);
  const char *holes[] = {"ws://c:3/", NULL};
  o.urls = holes;
  assert_int_equal(new_client(&o, &c), PARLEY_EINVAL);
  o.urls = NULL;
  assert_int_equal(new_client(&o, &c), PARLEY_EINVAL);
  o.n_urls = 0;
  char many[1024] = "";
  for (int i = 0; i <= PARLEY_MAX_URLS; i++) {
    size_t n = strlen(many);
    snprintf(many + n, sizeof many - n, "%sws://h%d/", i ? "," : "", i);
  }
  o.url = many;
  assert_int_equal(new_client(&o, &c), PARLEY_EINVAL);
  o.url = "ws://a:1/,";
  assert_int_equal(new_client(&o, &c), 0);
  parley_client_free(c);

  /* A version 1 struct (without urls) is still accepted. */
  parley_client_options v1 = o;
  v1.struct_version = 1;
  v1.url = "ws://a:1/,ws://b:2/";
  v1.urls = (const char *const *)(uintptr_t)1; /* beyond a v1 struct: not read */
  v1.n_urls = 99;
  assert_int_equal(new_client(&v1, &c), 0);
  assert_string_equal(parley_client_url(c), "ws://a:1/");
  parley_client_free(c);
}

/* The sidecar's gateway.url may be a YAML list of nodes. */
static void test_sidecar_url_list(void **unused) {
  (void)unused;
  char dir[256], path[320];
  assert_int_equal(tmpdir_make(dir, sizeof dir, "fo-sidecar"), 0);
  snprintf(path, sizeof path, "%s/sidecar.yaml", dir);
  const char *cases[][2] = {
      {"gateway:\n  url: [ws://a:1/, ws://b:2/]\n  token: t\n", "0"},
      {"gateway:\n  url: [ws://a:1/, http://b:2/]\n  token: t\n", "1"},
      {"gateway:\n  url: []\n  token: t\n", "1"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    assert_int_equal(write_file(path, cases[i][0]), 0);
    char *argv[] = {(char *)PARLEY_BIN, "config", "check", path, "--kind", "sidecar", NULL};
    tproc p;
    assert_int_equal(tproc_start(&p, argv, "/dev/null"), 0);
    assert_int_equal(tproc_wait(&p, 10000), 0);
    tproc_stop(&p);
    bool ok = WIFEXITED(p.status) && WEXITSTATUS(p.status) == 0;
    assert_int_equal(ok, cases[i][1][0] == '0');
  }
  tmpdir_remove(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_url_list_options),
      cmocka_unit_test(test_sidecar_url_list),
      cmocka_unit_test(test_failover_next_url),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
