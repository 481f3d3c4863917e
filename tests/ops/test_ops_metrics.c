/* The metrics registry: exact Prometheus text for a small registry
 * (counter, gauge, callback gauge, histogram with labels and escaping),
 * registration rules, and the runtime's metric set filled from client
 * stats. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <parley/error.h>

#include "ops/metrics.h"

static double forty_two(void *ud) { return *(double *)ud; }

static void test_render_exact(void **state) {
  (void)state;
  pmet_registry *r = pmet_registry_new();
  assert_non_null(r);
  pmet_metric *c = pmet_counter(r, "app_requests_total", "Requests handled.", NULL, 0);
  pmet_add(c, 3);
  pmet_inc(c);
  pmet_add(c, -5); /* refused: counters never go down */
  pmet_label room = {"room", "a\"b\\c\nd"};
  pmet_metric *g = pmet_gauge(r, "app_temp", "Temperature\nin \\C", &room, 1);
  pmet_set(g, -1.5);
  pmet_label room2 = {"room", "plain"};
  pmet_metric *g2 = pmet_gauge(r, "app_temp", "ignored", &room2, 1);
  pmet_set(g2, 0.1);
  double v = 42;
  assert_non_null(pmet_gauge_cb(r, "app_cb", NULL, NULL, 0, forty_two, &v));
  const double bounds[] = {0.25, 0.5, 1};
  pmet_label route = {"route", "/x"};
  pmet_metric *h = pmet_histogram(r, "app_latency_seconds", "Latency.", &route, 1, bounds, 3);
  pmet_observe(h, 0.125);
  pmet_observe(h, 0.25); /* on a bound: counted in that bucket (le) */
  pmet_observe(h, 0.375);
  pmet_observe(h, 2);
  pmet_observe(h, NAN); /* dropped */

  char *text;
  size_t len;
  assert_int_equal(pmet_render(r, &text, &len), 0);
  const char *want =
      "# HELP app_requests_total Requests handled.\n"
      "# TYPE app_requests_total counter\n"
      "app_requests_total 4\n"
      "# HELP app_temp Temperature\\nin \\\\C\n"
      "# TYPE app_temp gauge\n"
      "app_temp{room=\"a\\\"b\\\\c\\nd\"} -1.5\n"
      "app_temp{room=\"plain\"} 0.1\n"
      "# TYPE app_cb gauge\n"
      "app_cb 42\n"
      "# HELP app_latency_seconds Latency.\n"
      "# TYPE app_latency_seconds histogram\n"
      "app_latency_seconds_bucket{route=\"/x\",le=\"0.25\"} 2\n"
      "app_latency_seconds_bucket{route=\"/x\",le=\"0.5\"} 3\n"
      "app_latency_seconds_bucket{route=\"/x\",le=\"1\"} 3\n"
      "app_latency_seconds_bucket{route=\"/x\",le=\"+Inf\"} 4\n"
      "app_latency_seconds_sum{route=\"/x\"} 2.75\n"
      "app_latency_seconds_count{route=\"/x\"} 4\n";
  assert_string_equal(text, want);
  assert_int_equal(len, strlen(want));
  free(text);

  /* The callback is read at render time. */
  v = 7;
  assert_int_equal(pmet_render(r, &text, &len), 0);
  assert_non_null(strstr(text, "\napp_cb 7\n"));
  free(text);
  assert_int_equal(pmet_count(h), 4);
  assert_true(pmet_value(h) == 2.75);
  pmet_registry_free(r);
}

static void test_registration_rules(void **state) {
  (void)state;
  pmet_registry *r = pmet_registry_new();
  pmet_label l = {"k", "v"};
  pmet_metric *a = pmet_counter(r, "x_total", "X.", &l, 1);
  assert_non_null(a);
  /* Same name and labels: the same metric. */
  assert_ptr_equal(pmet_counter(r, "x_total", "X.", &l, 1), a);
  /* Same name, other type: refused. */
  assert_null(pmet_gauge(r, "x_total", "X.", &l, 1));
  /* Bad names and labels. */
  assert_null(pmet_counter(r, "9lives", NULL, NULL, 0));
  assert_null(pmet_counter(r, "has-dash", NULL, NULL, 0));
  assert_null(pmet_counter(r, "", NULL, NULL, 0));
  pmet_label bad = {"__reserved", "v"};
  assert_null(pmet_counter(r, "y_total", NULL, &bad, 1));
  pmet_label dup[2] = {{"a", "1"}, {"a", "2"}};
  assert_null(pmet_counter(r, "y_total", NULL, dup, 2));
  const double b[] = {1, 2};
  const double unsorted[] = {2, 1};
  pmet_label le = {"le", "1"};
  assert_null(pmet_histogram(r, "h", NULL, &le, 1, b, 2));
  assert_null(pmet_histogram(r, "h", NULL, NULL, 0, unsorted, 2));
  assert_null(pmet_histogram(r, "h", NULL, NULL, 0, b, 0));
  pmet_metric *h = pmet_histogram(r, "h", NULL, NULL, 0, b, 2);
  assert_non_null(h);
  const double other[] = {1, 3};
  pmet_label hl = {"z", "1"};
  assert_null(pmet_histogram(r, "h", NULL, &hl, 1, other, 2));
  /* Updates of the wrong kind are ignored, and NULL is harmless. */
  pmet_set(a, 10);
  pmet_observe(a, 1);
  pmet_inc(NULL);
  assert_true(pmet_value(a) == 0);
  pmet_registry_free(r);
}

static void test_format_value(void **state) {
  (void)state;
  char buf[32];
  pmet_format_value(0.1, buf);
  assert_string_equal(buf, "0.1");
  pmet_format_value(0.001, buf);
  assert_string_equal(buf, "0.001");
  pmet_format_value(12345678, buf);
  assert_string_equal(buf, "12345678");
  pmet_format_value(900, buf);
  assert_string_equal(buf, "900");
  pmet_format_value(-0.5, buf);
  assert_string_equal(buf, "-0.5");
  pmet_format_value(1e21, buf);
  assert_string_equal(buf, "1e+21");
  pmet_format_value(INFINITY, buf);
  assert_string_equal(buf, "+Inf");
  pmet_format_value(-INFINITY, buf);
  assert_string_equal(buf, "-Inf");
  pmet_format_value(NAN, buf);
  assert_string_equal(buf, "NaN");
  pmet_format_value(1.0 / 3.0, buf);
  assert_true(strtod(buf, NULL) == 1.0 / 3.0);
}

static void test_parley_set(void **state) {
  (void)state;
  pmet_registry *r = pmet_registry_new();
  pmet_parley m;
  assert_int_equal(pmet_parley_register(r, &m), 0);
  parley_client_stats st = {.events_in = 11, .events_out = 12, .sends = 13, .retries = 2,
                            .send_failures = 1, .duplicates_dropped = 3, .gaps_fetched = 4,
                            .reconnects = 5, .commits = 6, .outbox_size = 7,
                            .reorder_events = 8, .reorder_bytes = 900};
  pmet_parley_update(&m, &st);
  pmet_set(m.connected, 1);
  pmet_observe(m.ack_latency, 0.004);
  pmet_inc(m.handler_errors);
  char *text;
  size_t len;
  assert_int_equal(pmet_render(r, &text, &len), 0);
  static const char *const lines[] = {
      "\nparley_events_in_total 11\n",    "\nparley_events_out_total 12\n",
      "\nparley_sends_total 13\n",        "\nparley_send_retries_total 2\n",
      "\nparley_send_failures_total 1\n", "\nparley_duplicates_dropped_total 3\n",
      "\nparley_gaps_fetched_total 4\n",  "\nparley_reconnects_total 5\n",
      "\nparley_commits_total 6\n",       "\nparley_outbox_size 7\n",
      "\nparley_reorder_buffer_events 8\n", "\nparley_reorder_buffer_bytes 900\n",
      "\nparley_connected 1\n",           "\nparley_handler_errors_total 1\n",
      "\nparley_handler_budget_kills_total 0\n",
      "\nparley_ack_latency_seconds_bucket{le=\"0.005\"} 1\n",
      "\nparley_ack_latency_seconds_bucket{le=\"0.0025\"} 0\n",
      "\nparley_ack_latency_seconds_bucket{le=\"10\"} 1\n",
      "\nparley_handler_latency_seconds_count 0\n",
      "\n# TYPE parley_ack_latency_seconds histogram\n",
      "\n# TYPE parley_connected gauge\n",
  };
  for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
    if (!strstr(text, lines[i])) fail_msg("missing %s in:\n%s", lines[i], text);
  }
  /* 17 families, each with one TYPE line. */
  int types = 0;
  for (const char *p = text; (p = strstr(p, "# TYPE ")); p++) types++;
  assert_int_equal(types, 17);
  free(text);
  /* With no client, everything reads zero and disconnected. */
  pmet_parley_fill(&m, NULL);
  assert_true(pmet_value(m.connected) == 0);
  assert_true(pmet_value(m.sends) == 0);
  /* A real client that was never started: its stats are read through the
   * public API, and it is not connected. */
  pmet_set(m.connected, 1);
  pmet_counter_set(m.sends, 9);
  parley_client_options o = PARLEY_CLIENT_OPTIONS_INIT;
  o.url = "ws://127.0.0.1:1/v1";
  o.principal = "bot:metrics";
  o.token = "t";
  o.role = PARLEY_ROLE_BOT;
  parley_client *c = NULL;
  assert_int_equal(parley_client_new(&o, &c), 0);
  pmet_parley_fill(&m, c);
  assert_true(pmet_value(m.connected) == 0);
  assert_true(pmet_value(m.sends) == 0);
  parley_client_free(c);
  pmet_registry_free(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_render_exact),
      cmocka_unit_test(test_registration_rules),
      cmocka_unit_test(test_format_value),
      cmocka_unit_test(test_parley_set),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
