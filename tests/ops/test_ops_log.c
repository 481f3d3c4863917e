/* The structured logger: exact lines in the three formats with a fixed
 * clock, JSON that parses (control characters, invalid UTF-8), logfmt
 * quoting, level filtering, cut values, and whole lines under concurrent
 * writers. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include <parley/error.h>

#include "ops/log.h"

/* 2023-11-14T22:13:20.123Z */
static int64_t fixed_clock(void *ud) {
  (void)ud;
  return 1700000000123LL;
}

typedef struct sink {
  char *buf;
  size_t len;
  FILE *f;
} sink;

static void sink_open(sink *s) {
  memset(s, 0, sizeof *s);
  s->f = open_memstream(&s->buf, &s->len);
  assert_non_null(s->f);
}

static void sink_close(sink *s) {
  fclose(s->f);
  free(s->buf);
}

static plog_logger *make(sink *s, int format, int level) {
  sink_open(s);
  plog_logger *l = plog_new(s->f, format, level);
  assert_non_null(l);
  plog_set_clock(l, fixed_clock, NULL);
  return l;
}

static void test_text(void **state) {
  (void)state;
  sink s;
  plog_logger *l = make(&s, PLOG_TEXT, PLOG_INFO);
  plog_conv(l, PLOG_INFO, "c1", 7, "reply \"sent\"", "attempt", "2", "note", "two words", NULL);
  plog_log(l, PLOG_DEBUG, "hidden", NULL);
  plog_log(l, PLOG_ERROR, "line1\nline2", NULL);
  fflush(s.f);
  assert_string_equal(s.buf,
                      "2023-11-14T22:13:20.123Z INFO  reply \"sent\" conversation=c1 seq=7 "
                      "attempt=2 note=\"two words\"\n"
                      "2023-11-14T22:13:20.123Z ERROR line1\\nline2\n");
  plog_free(l);
  sink_close(&s);
}

static void test_logfmt(void **state) {
  (void)state;
  sink s;
  plog_logger *l = make(&s, PLOG_LOGFMT, PLOG_DEBUG);
  plog_log(l, PLOG_WARN, "slow", "empty", "", "eq", "a=b", "quote", "say \"hi\"", "bs",
           "a\\b", "bad", "x\xffy", "ok", "plain-value_1.2", "uni", "caf\xc3\xa9", "null", NULL,
           "msg", "clash", "we ird", "k", NULL);
  fflush(s.f);
  assert_string_equal(s.buf,
                      "ts=2023-11-14T22:13:20.123Z level=warn msg=slow empty=\"\" eq=\"a=b\" "
                      "quote=\"say \\\"hi\\\"\" bs=\"a\\\\b\" bad=\"x\xef\xbf\xbdy\" "
                      "ok=plain-value_1.2 uni=caf\xc3\xa9 null=\"\" _msg=clash we_ird=k\n");
  plog_free(l);
  sink_close(&s);
}

static void test_json(void **state) {
  (void)state;
  sink s;
  plog_logger *l = make(&s, PLOG_JSON, PLOG_DEBUG);
  plog_conv(l, PLOG_DEBUG, "c\"2", 42, "tab\there", "ctl", "a\x01" "b\x7f", "bad",
            "\xc0\xaf\xed\xa0\x80z", "nl", "x\ny", "seq", "shadow", NULL);
  fflush(s.f);
  assert_string_equal(s.buf,
                      "{\"ts\":\"2023-11-14T22:13:20.123Z\",\"level\":\"debug\",\"msg\":\"tab\\there\","
                      "\"conversation\":\"c\\\"2\",\"seq\":42,\"ctl\":\"a\\u0001b\\u007f\","
                      "\"bad\":\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdz\","
                      "\"nl\":\"x\\ny\",\"_seq\":\"shadow\"}\n");
  /* And a JSON parser that checks UTF-8 agrees. */
  json_error_t err;
  json_t *j = json_loads(s.buf, 0, &err);
  if (!j) fail_msg("JSON does not parse: %s", err.text);
  assert_string_equal(json_string_value(json_object_get(j, "ctl")), "a\x01" "b\x7f");
  assert_int_equal(json_integer_value(json_object_get(j, "seq")), 42);
  assert_string_equal(json_string_value(json_object_get(j, "conversation")), "c\"2");
  json_decref(j);
  plog_free(l);
  sink_close(&s);
}

static void test_cut_and_parse(void **state) {
  (void)state;
  sink s;
  plog_logger *l = make(&s, PLOG_JSON, PLOG_INFO);
  char *big = malloc(PLOG_MAX_VALUE + 100);
  memset(big, 'v', PLOG_MAX_VALUE + 99);
  big[PLOG_MAX_VALUE + 99] = '\0';
  plog_log(l, PLOG_INFO, "big", "v", big, NULL);
  fflush(s.f);
  json_error_t err;
  json_t *j = json_loads(s.buf, 0, &err);
  if (!j) fail_msg("JSON does not parse: %s", err.text);
  const char *v = json_string_value(json_object_get(j, "v"));
  assert_int_equal(strlen(v), PLOG_MAX_VALUE + 3);
  assert_string_equal(v + PLOG_MAX_VALUE, "...");
  json_decref(j);
  free(big);
  plog_free(l);
  sink_close(&s);

  int level, format;
  assert_int_equal(plog_parse_level("WARNING", &level), 0);
  assert_int_equal(level, PLOG_WARN);
  assert_int_equal(plog_parse_level("loud", &level), PARLEY_EINVAL);
  assert_int_equal(plog_parse_format("logfmt", &format), 0);
  assert_int_equal(format, PLOG_LOGFMT);
  assert_int_equal(plog_parse_format("xml", &format), PARLEY_EINVAL);
  assert_null(plog_new(stderr, 9, PLOG_INFO));
  assert_null(plog_new(NULL, PLOG_TEXT, PLOG_INFO));
}

#define THREADS 4
#define LINES 250

static void *writer(void *arg) {
  plog_logger *l = arg;
  char n[16];
  for (int i = 0; i < LINES; i++) {
    snprintf(n, sizeof n, "%d", i);
    plog_log(l, PLOG_INFO, "concurrent record with some length to it", "i", n, "pad",
             "................................................................", NULL);
  }
  return NULL;
}

static void test_threads(void **state) {
  (void)state;
  sink s;
  plog_logger *l = make(&s, PLOG_JSON, PLOG_INFO);
  pthread_t th[THREADS];
  for (int i = 0; i < THREADS; i++) pthread_create(&th[i], NULL, writer, l);
  for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
  fflush(s.f);
  int lines = 0;
  char *save = NULL;
  for (char *line = strtok_r(s.buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    json_error_t err;
    json_t *j = json_loads(line, 0, &err);
    if (!j) fail_msg("line %d does not parse: %s: %s", lines, err.text, line);
    json_decref(j);
    lines++;
  }
  assert_int_equal(lines, THREADS * LINES);
  plog_free(l);
  sink_close(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_text),          cmocka_unit_test(test_logfmt),
      cmocka_unit_test(test_json),          cmocka_unit_test(test_cut_and_parse),
      cmocka_unit_test(test_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
