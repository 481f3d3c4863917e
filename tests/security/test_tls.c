/* Certificate checks of the client against the real gateway over wss://.
 * The certificates are made at test time with the openssl command in a
 * temporary directory: a CA, a server certificate for localhost/127.0.0.1
 * signed by it, a self-signed one, one for another host and an expired one
 * (both also signed by the CA, so each has exactly one fault). For each,
 * the gateway runs with it and two clients connect: one verifying with
 * ca_file = the CA, one with tls_insecure. Without the openssl command the
 * test is skipped.
 *
 * The gateway and the clients share this process, which is what once made
 * lws 4.1.6 leak the gateway vhost's client SSL_CTX (see pg_gateway_new):
 * the test runs under LeakSanitizer without suppressions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include <parley/client.h>
#include <parley/error.h>

#include "gwharness.h"

static char *dir;

static void sh(const char *fmt, ...) {
  char cmd[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  char full[2200];
  snprintf(full, sizeof full, "cd %s && (%s) > openssl.log 2>&1", dir, cmd);
  if (system(full) != 0) {
    char log[2300];
    snprintf(log, sizeof log, "cat %s/openssl.log >&2", dir);
    if (system(log)) {
    }
    fail_msg("command failed: %s", cmd);
  }
}

#define KEY "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"

/* A CSR and key for subject cn with these subjectAltNames. */
static void csr(const char *name, const char *cn, const char *san) {
  sh("printf 'subjectAltName=%s\\nbasicConstraints=CA:FALSE\\n' > %s.ext", san, name);
  sh("openssl req -new " KEY " -subj /CN=%s -keyout %s.key -out %s.csr", cn, name, name);
}

static void make_certs(void) {
  sh("openssl req -x509 " KEY " -days 2 -subj /CN=Parley-Test-CA -keyout ca.key -out ca.pem");
  csr("good", "localhost", "DNS:localhost,IP:127.0.0.1");
  sh("openssl x509 -req -in good.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
     "-extfile good.ext -out good.pem");
  csr("wrong", "other.example", "DNS:other.example");
  sh("openssl x509 -req -in wrong.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
     "-extfile wrong.ext -out wrong.pem");
  sh("openssl req -x509 " KEY " -days 2 -subj /CN=localhost "
     "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout self.key -out self.pem");
  /* `openssl x509 -req` cannot back-date in OpenSSL 3.0; `openssl ca` with
   * a minimal configuration can. */
  csr("expired", "localhost", "DNS:localhost,IP:127.0.0.1");
  sh("mkdir -p newcerts && : > index.txt && echo 01 > serial && "
     "printf '[ca]\\ndefault_ca = d\\n[d]\\ndatabase = index.txt\\nnew_certs_dir = newcerts\\n"
     "serial = serial\\ndefault_md = sha256\\npolicy = p\\nunique_subject = no\\n"
     "[p]\\ncommonName = supplied\\n' > ca.cnf");
  sh("openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr "
     "-out expired.pem -startdate 20200101000000Z -enddate 20200102000000Z -extfile expired.ext");
  /* The certificates are what they claim to be. */
  sh("openssl verify -CAfile ca.pem good.pem wrong.pem");
  sh("! openssl verify -CAfile ca.pem expired.pem");
  sh("! openssl verify -CAfile ca.pem self.pem");
}

typedef struct cl {
  parley_client *c;
  parley_conn_state states[64];
  int status[64];
  int n;
  bool stopping;
} cl;

static void on_state(parley_client *c, parley_conn_state st, int status, void *ud) {
  cl *k = ud;
  if (k->n < 64) {
    k->states[k->n] = st;
    k->status[k->n] = status;
    k->n++;
  }
  /* One outcome is enough: READY, or the first connection lost. */
  if (!k->stopping && (st == PARLEY_CONN_READY || st == PARLEY_CONN_BACKOFF)) {
    k->stopping = true;
    parley_client_stop(c, 0);
  }
}

static bool reached(const cl *k, parley_conn_state s) {
  for (int i = 0; i < k->n; i++)
    if (k->states[i] == s) return true;
  return false;
}

static int lost_status(const cl *k) {
  for (int i = 0; i < k->n; i++)
    if (k->states[i] == PARLEY_CONN_BACKOFF) return k->status[i];
  return 0;
}

static void on_watchdog(uv_timer_t *t) {
  cl *k = t->data;
  for (int i = 0; i < 2; i++)
    if (!k[i].stopping) {
      k[i].stopping = true;
      parley_client_stop(k[i].c, 0);
    }
}

/* Runs the gateway with cert `name` and two clients against it. */
static bool no_ca;

static void run_case(const char *name, const char *host, cl out[2]) {
  char extra[1024];
  snprintf(extra, sizeof extra, "tls:\n  cert: %s/%s.pem\n  key: %s/%s.key\n", dir, name, dir,
           name);
  char *data = gwh_tmpdir();
  assert_non_null(data);
  gwh *h = gwh_start(data, NULL, extra);
  assert_non_null(h);
  char url[256], ca[512];
  snprintf(url, sizeof url, "wss://%s:%d/v1/ws", host, gwh_port(h));
  snprintf(ca, sizeof ca, "%s/ca.pem", dir);
  uv_loop_t loop;
  uv_loop_init(&loop);
  memset(out, 0, 2 * sizeof *out);
  for (int i = 0; i < 2; i++) {
    parley_client_options o = PARLEY_CLIENT_OPTIONS_INIT;
    o.url = url;
    o.principal = "carol";
    o.token = "carol-token";
    o.role = PARLEY_ROLE_CUSTOMER;
    o.device = i ? "insecure" : "verify";
    o.loop = &loop;
    o.ca_file = no_ca ? NULL : ca;
    o.tls_insecure = i == 1;
    o.tuning.reconnect_min_ms = 50;
    o.cb.on_state = on_state;
    o.user_data = &out[i];
    assert_int_equal(parley_client_new(&o, &out[i].c), 0);
    assert_int_equal(parley_client_start(out[i].c), 0);
  }
  uv_timer_t wd;
  uv_timer_init(&loop, &wd);
  wd.data = out;
  uv_timer_start(&wd, on_watchdog, 8000, 0);
  uv_unref((uv_handle_t *)&wd);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&wd, NULL);
  for (int i = 0; i < 2; i++) parley_client_free(out[i].c);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  gwh_stop(h);
  gwh_rmdir(data);
  for (int i = 0; i < 2; i++) {
    printf("    %-8s %-9s %-8s:", name, host, i ? "insecure" : "ca_file");
    for (int j = 0; j < out[i].n; j++)
      printf(" %d/%s", (int)out[i].states[j], out[i].status[j] ? parley_errname(out[i].status[j]) : "0");
    printf("\n");
  }
}

static void expect_refused(const char *name, const char *host) {
  cl k[2];
  run_case(name, host, k);
  /* Verified: never READY, lost with a TLS error before any Hello. */
  assert_false(reached(&k[0], PARLEY_CONN_READY));
  assert_false(reached(&k[0], PARLEY_CONN_HANDSHAKE));
  assert_true(reached(&k[0], PARLEY_CONN_BACKOFF));
  assert_int_equal(lost_status(&k[0]), PARLEY_ETLS);
  /* tls_insecure accepts it. */
  assert_true(reached(&k[1], PARLEY_CONN_READY));
}

static int setup(void **state) {
  (void)state;
  if (system("openssl version > /dev/null 2>&1") != 0) return 0;
  dir = gwh_tmpdir();
  assert_non_null(dir);
  make_certs();
  return 0;
}

static int teardown(void **state) {
  (void)state;
  gwh_rmdir(dir);
  dir = NULL;
  return 0;
}

static void test_good(void **state) {
  (void)state;
  if (!dir) skip();
  cl k[2];
  run_case("good", "localhost", k);
  assert_true(reached(&k[0], PARLEY_CONN_READY));
  assert_true(reached(&k[1], PARLEY_CONN_READY));
  run_case("good", "127.0.0.1", k);
  assert_true(reached(&k[0], PARLEY_CONN_READY));
}

/* Without ca_file the test CA is unknown (system store only): refused by
 * the verifying client. tls_insecure ("accept any certificate") should
 * accept it like the others; built as its own program (see
 * CMakeLists.txt) because it does not. */
static void test_unknown_ca(void **state) {
  (void)state;
  if (!dir) skip();
  no_ca = true;
  expect_refused("good", "localhost");
}

static int reset_ca(void **state) {
  (void)state;
  no_ca = false;
  return 0;
}

static void test_self_signed(void **state) {
  (void)state;
  if (!dir) skip();
  expect_refused("self", "localhost");
}

static void test_wrong_host(void **state) {
  (void)state;
  if (!dir) skip();
  expect_refused("wrong", "localhost");
  expect_refused("wrong", "127.0.0.1");
}

static void test_expired(void **state) {
  (void)state;
  if (!dir) skip();
  expect_refused("expired", "localhost");
}

int main(void) {
  /* PARLEY_TEST_FILTER=test_expired runs one case alone. */
  if (getenv("PARLEY_TEST_FILTER")) cmocka_set_test_filter(getenv("PARLEY_TEST_FILTER"));
#ifdef TLS_UNKNOWN_CA
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_unknown_ca, reset_ca),
  };
  (void)test_good;
  (void)test_self_signed;
  (void)test_wrong_host;
  (void)test_expired;
#else
  (void)test_unknown_ca;
  (void)reset_ca;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_good),
      cmocka_unit_test(test_self_signed),
      cmocka_unit_test(test_wrong_host),
      cmocka_unit_test(test_expired),
  };
#endif
  return cmocka_run_group_tests(tests, setup, teardown);
}
