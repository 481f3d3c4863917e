/* Tests for the YAML configuration loader: tree and line numbers, every
 * typed getter, exact error locations, environment overrides, and the
 * limits that protect against hostile documents. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config/config.h"
#include <parley/error.h>

static pc_doc *load(const char *text, pc_error *err) {
  pc_doc *doc = NULL;
  int rc = pc_load_string("test.yaml", text, strlen(text), &doc, err);
  if (rc != 0) {
    char buf[512];
    print_error("unexpected load failure: %s\n", pc_error_format(err, buf, sizeof buf));
  }
  assert_int_equal(rc, 0);
  assert_non_null(doc);
  return doc;
}

/* Loads text that must fail and returns the formatted error. */
static int load_fail(const char *text, size_t len, pc_error *err) {
  pc_doc *doc = (pc_doc *)1;
  int rc = pc_load_string("bad.yaml", text, len, &doc, err);
  assert_int_not_equal(rc, 0);
  assert_null(doc);
  return rc;
}

static const char *fmt(const pc_error *err) {
  static char buf[600];
  return pc_error_format(err, buf, sizeof buf);
}

static const char k_sample[] =
    "# sample\n"
    "name: support-bot\n"          /* 2 */
    "limits:\n"                    /* 3 */
    "  max_frame_bytes: 1MiB\n"    /* 4 */
    "  max_conns: 64\n"            /* 5 */
    "  idle: 5s\n"                 /* 6 */
    "flags:\n"                     /* 7 */
    "  debug: yes\n"               /* 8 */
    "  quiet: Off\n"               /* 9 */
    "hosts:\n"                     /* 10 */
    "  - api.example.com\n"        /* 11 */
    "  - \"*.example.org\"\n"      /* 12 */
    "empty:\n"                     /* 13 */
    "quoted: \"null\"\n";          /* 14 */

static void test_tree_lines_paths(void **state) {
  (void)state;
  pc_error err;
  pc_doc *doc = load(k_sample, &err);
  const pc_node *root = pc_root(doc);
  assert_string_equal(pc_doc_name(doc), "test.yaml");
  assert_int_equal(pc_node_kind(root), PC_MAP);
  assert_int_equal(pc_len(root), 6);
  assert_string_equal(pc_key_at(root, 0), "name");
  assert_string_equal(pc_scalar(pc_at(root, 0)), "support-bot");
  assert_int_equal(pc_node_line(pc_at(root, 0)), 2);

  const pc_node *mfb = pc_find(root, "limits.max_frame_bytes");
  assert_non_null(mfb);
  assert_int_equal(pc_node_line(mfb), 4);
  assert_string_equal(pc_node_path(mfb), "limits.max_frame_bytes");
  assert_string_equal(pc_scalar(mfb), "1MiB");

  const pc_node *hosts = pc_get(root, "hosts");
  assert_int_equal(pc_node_kind(hosts), PC_SEQ);
  assert_int_equal(pc_len(hosts), 2);
  assert_string_equal(pc_scalar(pc_at(hosts, 1)), "*.example.org");
  assert_string_equal(pc_node_path(pc_at(hosts, 1)), "hosts[1]");
  assert_int_equal(pc_node_line(pc_at(hosts, 1)), 12);
  assert_null(pc_key_at(hosts, 0));
  assert_null(pc_at(hosts, 2));

  /* A bare "key:" is null; a quoted "null" is a string. */
  assert_int_equal(pc_node_kind(pc_get(root, "empty")), PC_NULL);
  assert_non_null(pc_get(root, "empty"));
  assert_string_equal(pc_scalar(pc_get(root, "quoted")), "null");

  /* NULL-safety of every navigation call. */
  assert_int_equal(pc_node_kind(NULL), PC_NULL);
  assert_int_equal(pc_len(NULL), 0);
  assert_null(pc_at(NULL, 0));
  assert_null(pc_get(NULL, "x"));
  assert_null(pc_find(NULL, "a.b"));
  assert_null(pc_find(root, "limits.nope"));
  assert_null(pc_find(root, "name.deeper"));
  assert_null(pc_scalar(pc_get(root, "limits")));
  pc_doc_free(doc);
}

static void test_empty_document(void **state) {
  (void)state;
  pc_error err;
  pc_doc *doc = load("", &err);
  assert_int_equal(pc_node_kind(pc_root(doc)), PC_MAP);
  assert_int_equal(pc_len(pc_root(doc)), 0);
  uint64_t v = 0;
  assert_int_equal(pc_get_u64(pc_root(doc), "x", 7, 0, 10, &v, &err), 0);
  assert_int_equal(v, 7);
  pc_doc_free(doc);
  doc = load("# only a comment\n", &err);
  assert_int_equal(pc_len(pc_root(doc)), 0);
  pc_doc_free(doc);
}

static void test_get_str(void **state) {
  (void)state;
  pc_error err;
  pc_doc *doc = load(k_sample, &err);
  const pc_node *root = pc_root(doc);
  const char *s = NULL;
  assert_int_equal(pc_get_str(root, "name", "d", &s, &err), 0);
  assert_string_equal(s, "support-bot");
  assert_int_equal(pc_get_str(root, "missing", "dflt", &s, &err), 0);
  assert_string_equal(s, "dflt");
  assert_int_equal(pc_get_str(root, "empty", "dflt", &s, &err), 0);
  assert_string_equal(s, "dflt");
  assert_int_equal(pc_get_str(root, "limits", "d", &s, &err), PARLEY_ECONFIG);
  assert_string_equal(err.file, "test.yaml");
  assert_int_equal(err.line, 3);
  assert_string_equal(err.key, "limits");
  assert_string_equal(fmt(&err), "test.yaml:3: limits: expected a string, got a mapping");
  /* A getter on a scalar instead of a mapping is an error too. */
  assert_int_equal(pc_get_str(pc_get(root, "name"), "x", "d", &s, &err), PARLEY_ECONFIG);
  assert_int_equal(err.line, 2);
  /* A NULL map means "section absent": defaults. */
  assert_int_equal(pc_get_str(NULL, "x", "d", &s, &err), 0);
  assert_string_equal(s, "d");
  pc_doc_free(doc);
}

static void test_get_bool(void **state) {
  (void)state;
  static const struct {
    const char *text;
    int ok;
    bool value;
  } cases[] = {{"true", 1, true},  {"false", 1, false}, {"yes", 1, true},
               {"no", 1, false},   {"on", 1, true},     {"off", 1, false},
               {"TRUE", 1, true},  {"Off", 1, false},   {"1", 0, false},
               {"y", 0, false},    {"enable", 0, false}, {"\"\"", 0, false}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char text[64];
    snprintf(text, sizeof text, "a:\n  flag: %s\n", cases[i].text);
    pc_error err;
    pc_doc *doc = load(text, &err);
    bool v = !cases[i].value;
    int rc = pc_get_bool(pc_get(pc_root(doc), "a"), "flag", false, &v, &err);
    if (cases[i].ok) {
      assert_int_equal(rc, 0);
      assert_int_equal(v, cases[i].value);
    } else {
      assert_int_equal(rc, PARLEY_ECONFIG);
      assert_int_equal(err.line, 2);
      assert_string_equal(err.key, "a.flag");
      assert_non_null(strstr(err.message, "expected a boolean"));
    }
    pc_doc_free(doc);
  }
  pc_error err;
  pc_doc *doc = load("x: [1]\n", &err);
  bool v = true;
  assert_int_equal(pc_get_bool(pc_root(doc), "missing", false, &v, &err), 0);
  assert_false(v);
  assert_int_equal(pc_get_bool(pc_root(doc), "x", false, &v, &err), PARLEY_ECONFIG);
  assert_string_equal(fmt(&err), "test.yaml:1: x: expected a boolean, got a sequence");
  pc_doc_free(doc);
}

static void test_get_u64(void **state) {
  (void)state;
  pc_error err;
  pc_doc *doc = load("a: 42\nb: 18446744073709551615\nc: 18446744073709551616\n"
                     "d: -1\ne: 12x\nf: 0\ng: \" 5\"\nh: 100\n",
                     &err);
  const pc_node *r = pc_root(doc);
  uint64_t v = 0;
  assert_int_equal(pc_get_u64(r, "a", 0, 0, 100, &v, &err), 0);
  assert_int_equal(v, 42);
  assert_int_equal(pc_get_u64(r, "b", 0, 0, UINT64_MAX, &v, &err), 0);
  assert_true(v == UINT64_MAX);
  assert_int_equal(pc_get_u64(r, "c", 0, 0, UINT64_MAX, &v, &err), PARLEY_ECONFIG);
  assert_int_equal(err.line, 3);
  assert_non_null(strstr(err.message, "too large"));
  assert_int_equal(pc_get_u64(r, "d", 0, 0, 100, &v, &err), PARLEY_ECONFIG);
  assert_string_equal(fmt(&err), "test.yaml:4: d: expected a non-negative integer, got '-1'");
  assert_int_equal(pc_get_u64(r, "e", 0, 0, 100, &v, &err), PARLEY_ECONFIG);
  assert_int_equal(err.line, 5);
  assert_int_equal(pc_get_u64(r, "f", 9, 0, 100, &v, &err), 0);
  assert_int_equal(v, 0);
  assert_int_equal(pc_get_u64(r, "f", 9, 1, 100, &v, &err), PARLEY_ECONFIG);
  assert_string_equal(fmt(&err), "test.yaml:6: f: 0 is out of range [1, 100]");
  assert_int_equal(pc_get_u64(r, "g", 0, 0, 100, &v, &err), PARLEY_ECONFIG);
  assert_int_equal(pc_get_u64(r, "h", 0, 0, 100, &v, &err), 0);
  assert_int_equal(v, 100);
  assert_int_equal(pc_get_u64(r, "h", 0, 0, 99, &v, &err), PARLEY_ECONFIG);
  assert_int_equal(err.line, 8);
  assert_int_equal(pc_get_u64(r, "zz", 77, 0, 99, &v, &err), 0);
  assert_int_equal(v, 77);
  pc_doc_free(doc);
}

static void test_get_ms(void **state) {
  (void)state;
  static const struct {
    const char *text;
    int ok;
    uint64_t ms;
  } cases[] = {{"250ms", 1, 250},       {"5s", 1, 5000},      {"2m", 1, 120000},
               {"1h", 1, 3600000},      {"1500", 1, 1500},    {"0", 1, 0},
               {"10 s", 1, 10000},      {"1.5s", 0, 0},       {"5sec", 0, 0},
               {"s", 0, 0},             {"-5s", 0, 0},        {"5d", 0, 0},
               {"99999999999999999999h", 0, 0}, {"9999999999999999h", 0, 0}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char text[96];
    snprintf(text, sizeof text, "\n\nt: %s\n", cases[i].text);
    pc_error err;
    pc_doc *doc = load(text, &err);
    uint64_t v = 12345;
    int rc = pc_get_ms(pc_root(doc), "t", 1, &v, &err);
    if (cases[i].ok) {
      assert_int_equal(rc, 0);
      assert_int_equal(v, cases[i].ms);
    } else {
      assert_int_equal(rc, PARLEY_ECONFIG);
      assert_int_equal(err.line, 3);
      assert_string_equal(err.key, "t");
      assert_int_equal(v, 12345); /* untouched on error */
    }
    pc_doc_free(doc);
    /* A flag's string reads the same way, without a document. */
    v = 12345;
    rc = pc_parse_ms(cases[i].text, &v);
    assert_int_equal(rc, cases[i].ok ? 0 : PARLEY_EINVAL);
    assert_int_equal(v, cases[i].ok ? cases[i].ms : 12345);
  }
  uint64_t none = 7;
  assert_int_equal(pc_parse_ms("", &none), PARLEY_EINVAL);
  assert_int_equal(pc_parse_ms(NULL, &none), PARLEY_EINVAL);
  assert_int_equal(pc_parse_ms("5s\"", &none), PARLEY_EINVAL);
  assert_int_equal(none, 7);
  pc_error err;
  pc_doc *doc = load("x: 1\n", &err);
  uint64_t v = 0;
  assert_int_equal(pc_get_ms(pc_root(doc), "nope", 10000, &v, &err), 0);
  assert_int_equal(v, 10000);
  pc_doc_free(doc);
}

/* pc_fail names the node's document and line, the key given or else the
 * node's own path, an environment override by its variable, and keeps the
 * caller's file name for a node that is missing. */
static void test_fail(void **state) {
  (void)state;
  pc_error err;
  memset(&err, 0, sizeof err);
  pc_doc *doc = load("a:\n  b: 1\n", &err);
  const pc_node *b = pc_find(pc_root(doc), "a.b");
  assert_int_equal(pc_fail(&err, b, NULL, "must be %s", "even"), PARLEY_ECONFIG);
  assert_string_equal(fmt(&err), "test.yaml:2: a.b: must be even");
  assert_int_equal(pc_fail(&err, b, "a.other", "no"), PARLEY_ECONFIG);
  assert_string_equal(fmt(&err), "test.yaml:2: a.other: no");
  snprintf(err.file, sizeof err.file, "caller.yaml");
  assert_int_equal(pc_fail(&err, NULL, "a.c", "is required"), PARLEY_ECONFIG);
  assert_string_equal(fmt(&err), "caller.yaml: a.c: is required");
  setenv("PCFAIL_A__B", "3", 1);
  assert_int_equal(pc_apply_env(doc, "PCFAIL", &err), 0);
  unsetenv("PCFAIL_A__B");
  assert_int_equal(pc_fail(&err, pc_find(pc_root(doc), "a.b"), NULL, "must be even"),
                   PARLEY_ECONFIG);
  assert_string_equal(fmt(&err), "env:PCFAIL_A__B: a.b: must be even");
  pc_doc_free(doc);
}

static void test_get_size(void **state) {
  (void)state;
  static const struct {
    const char *text;
    int ok;
    uint64_t bytes;
  } cases[] = {{"1024", 1, 1024},          {"1MiB", 1, 1048576},
               {"512KiB", 1, 524288},      {"1GiB", 1, 1073741824ull},
               {"2TiB", 1, 2ull << 40},    {"7B", 1, 7},
               {"4 MiB", 1, 4u << 20},     {"1MB", 0, 0},
               {"1kb", 0, 0},              {"1.5MiB", 0, 0},
               {"MiB", 0, 0},              {"16777216TiB", 0, 0}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char text[96];
    snprintf(text, sizeof text, "limits:\n  max: %s\n", cases[i].text);
    pc_error err;
    pc_doc *doc = load(text, &err);
    uint64_t v = 1;
    int rc = pc_get_size(pc_find(pc_root(doc), "limits"), "max", 0, &v, &err);
    if (cases[i].ok) {
      assert_int_equal(rc, 0);
      assert_true(v == cases[i].bytes);
    } else {
      assert_int_equal(rc, PARLEY_ECONFIG);
      assert_int_equal(err.line, 2);
      assert_string_equal(err.key, "limits.max");
    }
    pc_doc_free(doc);
  }
}

static void test_check_keys(void **state) {
  (void)state;
  pc_error err;
  pc_doc *doc = load("limits:\n  max_conns: 1\n  max_frame_byte: 10\n", &err);
  const pc_node *limits = pc_get(pc_root(doc), "limits");
  static const char *const allowed[] = {"max_conns", "max_frame_bytes", "idle", NULL};
  assert_int_equal(pc_check_keys(limits, allowed, &err), PARLEY_ECONFIG);
  assert_string_equal(fmt(&err), "test.yaml:3: limits.max_frame_byte: unknown key "
                                 "'max_frame_byte' (did you mean 'max_frame_bytes'?)");
  static const char *const top[] = {"limits", NULL};
  assert_int_equal(pc_check_keys(pc_root(doc), top, &err), 0);
  pc_doc_free(doc);

  /* Nothing close: no suggestion. */
  doc = load("zzzzzz: 1\n", &err);
  assert_int_equal(pc_check_keys(pc_root(doc), allowed, &err), PARLEY_ECONFIG);
  assert_string_equal(fmt(&err), "test.yaml:1: zzzzzz: unknown key 'zzzzzz'");
  pc_doc_free(doc);

  /* Two equally close candidates: no guess. */
  static const char *const twins[] = {"port_a", "port_b", NULL};
  doc = load("port_c: 1\n", &err);
  assert_int_equal(pc_check_keys(pc_root(doc), twins, &err), PARLEY_ECONFIG);
  assert_null(strstr(err.message, "did you mean"));
  pc_doc_free(doc);
  assert_int_equal(pc_check_keys(NULL, allowed, &err), 0);
}

static void test_duplicate_keys(void **state) {
  (void)state;
  pc_error err;
  const char *text = "a: 1\nsub:\n  x: 1\n  y: 2\n  x: 3\n";
  assert_int_equal(load_fail(text, strlen(text), &err), PARLEY_ECONFIG);
  assert_string_equal(fmt(&err),
                      "bad.yaml:5: sub.x: duplicate key 'x' (first defined at line 3)");
}

static void test_malformed(void **state) {
  (void)state;
  pc_error err;
  const char *text = "a: 1\nb: [1, 2\nc: 3\n";
  assert_int_equal(load_fail(text, strlen(text), &err), PARLEY_ECONFIG);
  assert_string_equal(err.file, "bad.yaml");
  assert_true(err.line >= 2);
  assert_true(strlen(err.message) > 0);
  print_message("malformed flow: %s\n", fmt(&err));

  text = "a: 1\n  b: 2\n";
  assert_int_equal(load_fail(text, strlen(text), &err), PARLEY_ECONFIG);
  assert_int_equal(err.line, 2);
  assert_non_null(strstr(err.message, "mapping values are not allowed"));
  print_message("bad indent: %s\n", fmt(&err));

  text = "a: \"unterminated\n";
  assert_int_equal(load_fail(text, strlen(text), &err), PARLEY_ECONFIG);
  assert_true(err.line >= 1);

  text = "a: 1\n---\nb: 2\n";
  assert_int_equal(load_fail(text, strlen(text), &err), PARLEY_ECONFIG);
  assert_int_equal(err.line, 2);
  assert_non_null(strstr(err.message, "one YAML document"));

  text = "? [a]\n: 1\n";
  assert_int_equal(load_fail(text, strlen(text), &err), PARLEY_ECONFIG);
  assert_non_null(strstr(err.message, "keys must be plain strings"));

  /* An embedded NUL in the input is refused by the parser, not truncated. */
  static const char nul[] = "a: 1\nb: x\0y\n";
  assert_int_equal(load_fail(nul, sizeof nul - 1, &err), PARLEY_ECONFIG);
  text = "a: \"x\\0y\"\n";
  assert_int_equal(load_fail(text, strlen(text), &err), PARLEY_ECONFIG);
  assert_non_null(strstr(err.message, "NUL"));
}

static void test_aliases_refused(void **state) {
  (void)state;
  pc_error err;
  const char *text = "base: &b\n  x: 1\nother: *b\n";
  assert_int_equal(load_fail(text, strlen(text), &err), PARLEY_ECONFIG);
  assert_int_equal(err.line, 3);
  assert_string_equal(err.key, "other");
  assert_non_null(strstr(err.message, "aliases"));

  /* The classic expansion bomb is rejected at its first alias. */
  const char *bomb = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
                     "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                     "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                     "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n";
  assert_int_equal(load_fail(bomb, strlen(bomb), &err), PARLEY_ECONFIG);
  assert_int_equal(err.line, 2);
  assert_string_equal(err.key, "b[0]");
}

static void test_depth_bomb(void **state) {
  (void)state;
  pc_error err;
  /* 64 levels load; 65 do not. */
  for (int depth = 64; depth <= 65; depth++) {
    char text[512];
    size_t n = 0;
    for (int i = 0; i < depth; i++)
      text[n++] = '[';
    text[n++] = '1';
    for (int i = 0; i < depth; i++)
      text[n++] = ']';
    text[n] = '\0';
    pc_doc *doc = NULL;
    int rc = pc_load_string("deep.yaml", text, n, &doc, &err);
    if (depth == 64) {
      assert_int_equal(rc, 0);
      pc_doc_free(doc);
    } else {
      assert_int_equal(rc, PARLEY_ECONFIG);
      assert_non_null(strstr(err.message, "nesting too deep"));
    }
  }
  /* A megabyte of brackets stops at the depth cap, quickly. */
  size_t big = 1u << 20;
  char *text = malloc(big + 1);
  assert_non_null(text);
  memset(text, '[', big);
  text[big] = '\0';
  assert_int_equal(load_fail(text, big, &err), PARLEY_ECONFIG);
  assert_non_null(strstr(err.message, "nesting too deep"));
  free(text);
}

static void test_size_bombs(void **state) {
  (void)state;
  pc_error err;
  /* Document over 4 MiB. */
  size_t big = (4u << 20) + 1;
  char *text = malloc(big + 1);
  assert_non_null(text);
  memset(text, '#', big);
  text[big] = '\0';
  assert_int_equal(load_fail(text, big, &err), PARLEY_ECONFIG);
  assert_non_null(strstr(err.message, "document too large"));

  /* A scalar over 1 MiB in an otherwise legal document. */
  size_t slen = (1u << 20) + 10;
  memcpy(text, "a: ", 3);
  memset(text + 3, 'x', slen);
  text[3 + slen] = '\n';
  assert_int_equal(load_fail(text, slen + 4, &err), PARLEY_ECONFIG);
  assert_int_equal(err.line, 1);
  assert_string_equal(err.key, "a");
  assert_non_null(strstr(err.message, "value too long"));

  /* Too many nodes: a flat sequence of 200000 items (~800 KiB). */
  size_t n = 0;
  text[n++] = '[';
  for (int i = 0; i < 200000; i++) {
    memcpy(text + n, "1, ", 3);
    n += 3;
  }
  text[n++] = '1';
  text[n++] = ']';
  assert_int_equal(load_fail(text, n, &err), PARLEY_ECONFIG);
  assert_non_null(strstr(err.message, "too many nodes"));

  /* Too many keys in one mapping. */
  n = 0;
  for (int i = 0; i < 5000; i++)
    n += (size_t)sprintf(text + n, "k%d: 1\n", i);
  assert_int_equal(load_fail(text, n, &err), PARLEY_ECONFIG);
  assert_non_null(strstr(err.message, "too many keys"));
  assert_int_equal(err.line, 4097);
  free(text);
}

static void test_load_file(void **state) {
  (void)state;
  char dir[] = "/tmp/parley-cfg-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/gateway.yaml", dir);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs("listen:\n  port: 8443\n  port_typo: 1\n", f);
  fclose(f);
  pc_error err;
  pc_doc *doc = NULL;
  assert_int_equal(pc_load_file(path, &doc, &err), 0);
  uint64_t port = 0;
  assert_int_equal(pc_get_u64(pc_get(pc_root(doc), "listen"), "port", 0, 1, 65535, &port, &err), 0);
  assert_int_equal(port, 8443);
  static const char *const allowed[] = {"port", "host", NULL};
  assert_int_equal(pc_check_keys(pc_get(pc_root(doc), "listen"), allowed, &err), PARLEY_ECONFIG);
  assert_string_equal(err.file, path);
  assert_int_equal(err.line, 3);
  assert_string_equal(err.key, "listen.port_typo");
  pc_doc_free(doc);
  unlink(path);

  assert_int_equal(pc_load_file(path, &doc, &err), PARLEY_ENOTFOUND);
  assert_null(doc);
  assert_string_equal(err.file, path);
  assert_non_null(strstr(err.message, "cannot open"));
  rmdir(dir);
}

static void test_env_overrides(void **state) {
  (void)state;
  pc_error err;
  pc_doc *doc = load("limits:\n  max_frame_bytes: 1MiB\n  idle:\nname: x\nlist: [1]\n", &err);
  setenv("PCTEST_LIMITS__MAX_FRAME_BYTES", "2MiB", 1);
  setenv("PCTEST_LIMITS__IDLE", "5s", 1);
  setenv("PCTEST_NEW__DEEP__KEY_NAME", "on", 1);
  setenv("PCTESTX_IGNORED", "1", 1);
  assert_int_equal(pc_apply_env(doc, "PCTEST", &err), 0);
  const pc_node *r = pc_root(doc);
  uint64_t v = 0;
  assert_int_equal(pc_get_size(pc_get(r, "limits"), "max_frame_bytes", 0, &v, &err), 0);
  assert_int_equal(v, 2u << 20);
  assert_int_equal(pc_get_ms(pc_get(r, "limits"), "idle", 0, &v, &err), 0);
  assert_int_equal(v, 5000);
  bool b = false;
  const pc_node *deep = pc_find(r, "new.deep");
  assert_int_equal(pc_node_kind(deep), PC_MAP);
  assert_int_equal(pc_get_bool(deep, "key_name", false, &b, &err), 0);
  assert_true(b);
  assert_string_equal(pc_node_path(pc_find(r, "new.deep.key_name")), "new.deep.key_name");
  assert_null(pc_get(r, "ignored"));
  assert_null(pc_get(r, "x_ignored"));

  /* Errors on overridden values name the variable. */
  setenv("PCTEST_LIMITS__MAX_FRAME_BYTES", "lots", 1);
  assert_int_equal(pc_apply_env(doc, "PCTEST", &err), 0);
  assert_int_equal(pc_get_size(pc_get(r, "limits"), "max_frame_bytes", 0, &v, &err), PARLEY_ECONFIG);
  assert_string_equal(err.file, "env:PCTEST_LIMITS__MAX_FRAME_BYTES");
  assert_int_equal(err.line, 0);
  assert_string_equal(err.key, "limits.max_frame_bytes");
  assert_non_null(strstr(fmt(&err), "env:PCTEST_LIMITS__MAX_FRAME_BYTES: limits.max_frame_bytes: expected a size"));
  /* Unknown keys created by the environment point at the variable too. */
  static const char *const allowed[] = {"limits", "name", "list", NULL};
  assert_int_equal(pc_check_keys(r, allowed, &err), PARLEY_ECONFIG);
  assert_string_equal(err.file, "env:PCTEST_NEW__DEEP__KEY_NAME");
  assert_string_equal(err.key, "new");
  unsetenv("PCTEST_LIMITS__MAX_FRAME_BYTES");
  unsetenv("PCTEST_LIMITS__IDLE");
  unsetenv("PCTEST_NEW__DEEP__KEY_NAME");
  unsetenv("PCTESTX_IGNORED");

  /* Overriding a mapping with a scalar, or going through a scalar, fails. */
  setenv("PCTEST_LIMITS", "1", 1);
  assert_int_equal(pc_apply_env(doc, "PCTEST", &err), PARLEY_ECONFIG);
  assert_string_equal(err.file, "env:PCTEST_LIMITS");
  assert_string_equal(err.key, "limits");
  unsetenv("PCTEST_LIMITS");
  setenv("PCTEST_NAME__SUB", "1", 1);
  assert_int_equal(pc_apply_env(doc, "PCTEST", &err), PARLEY_ECONFIG);
  assert_string_equal(err.key, "name");
  assert_non_null(strstr(err.message, "test.yaml:4"));
  unsetenv("PCTEST_NAME__SUB");
  setenv("PCTEST_LIST", "1", 1);
  assert_int_equal(pc_apply_env(doc, "PCTEST", &err), PARLEY_ECONFIG);
  unsetenv("PCTEST_LIST");
  setenv("PCTEST_A____B", "1", 1);
  assert_int_equal(pc_apply_env(doc, "PCTEST", &err), PARLEY_ECONFIG);
  assert_non_null(strstr(err.message, "invalid override name"));
  unsetenv("PCTEST_A____B");
  setenv("PCTEST_A__", "1", 1);
  assert_int_equal(pc_apply_env(doc, "PCTEST", &err), PARLEY_ECONFIG);
  unsetenv("PCTEST_A__");
  pc_doc_free(doc);

  /* Overrides build a tree from an empty document. */
  doc = load("", &err);
  setenv("PCTEST_LIMITS__MAX_CONNS", "7", 1);
  assert_int_equal(pc_apply_env(doc, "PCTEST", &err), 0);
  assert_int_equal(pc_get_u64(pc_get(pc_root(doc), "limits"), "max_conns", 0, 1, 10, &v, &err), 0);
  assert_int_equal(v, 7);
  unsetenv("PCTEST_LIMITS__MAX_CONNS");
  pc_doc_free(doc);
}

static void test_error_format(void **state) {
  (void)state;
  pc_error err = {.file = "f.yaml", .line = 12, .key = "a.b", .message = "bad"};
  char buf[64];
  assert_string_equal(pc_error_format(&err, buf, sizeof buf), "f.yaml:12: a.b: bad");
  err.key[0] = '\0';
  assert_string_equal(pc_error_format(&err, buf, sizeof buf), "f.yaml:12: bad");
  err.line = 0;
  snprintf(err.key, sizeof err.key, "k");
  assert_string_equal(pc_error_format(&err, buf, sizeof buf), "f.yaml: k: bad");
  char tiny[6];
  assert_string_equal(pc_error_format(&err, tiny, sizeof tiny), "f.yam");
}

/* The messages quoted in docs/config.md, produced for real. */
static void test_doc_messages(void **state) {
  (void)state;
  pc_error err;
  pc_doc *doc = load("limits:\n  idle_timeout: 30 seconds\n  max_conns: 0\n", &err);
  const pc_node *limits = pc_get(pc_root(doc), "limits");
  uint64_t v;
  assert_int_equal(pc_get_ms(limits, "idle_timeout", 0, &v, &err), PARLEY_ECONFIG);
  assert_string_equal(fmt(&err), "test.yaml:2: limits.idle_timeout: expected a duration "
                                 "such as 250ms, 5s, 2m, 1h or a number of milliseconds, "
                                 "got '30 seconds'");
  assert_int_equal(pc_get_u64(limits, "max_conns", 1, 1, 100000, &v, &err), PARLEY_ECONFIG);
  assert_string_equal(fmt(&err), "test.yaml:3: limits.max_conns: 0 is out of range [1, 100000]");
  setenv("PARLEY_LIMITS__MAX_FRAME_BYTES", "lots", 1);
  assert_int_equal(pc_apply_env(doc, "PARLEY", &err), 0);
  unsetenv("PARLEY_LIMITS__MAX_FRAME_BYTES");
  assert_int_equal(pc_get_size(limits, "max_frame_bytes", 0, &v, &err), PARLEY_ECONFIG);
  assert_string_equal(fmt(&err), "env:PARLEY_LIMITS__MAX_FRAME_BYTES: limits.max_frame_bytes: "
                                 "expected a size such as 1024, 512KiB, 1MiB or 1GiB (binary "
                                 "units), got 'lots'");
  pc_doc_free(doc);

  const char *text = "listen:\n  host: a\n  port: 1\n  port: 2\n";
  assert_int_equal(load_fail(text, strlen(text), &err), PARLEY_ECONFIG);
  assert_string_equal(fmt(&err), "bad.yaml:4: listen.port: duplicate key 'port' (first defined at line 3)");
  text = "listen:\n  host: a\n port: 1\n";
  assert_int_equal(load_fail(text, strlen(text), &err), PARLEY_ECONFIG);
  print_message("syntax: %s\n", fmt(&err));
  assert_int_equal(pc_load_file("/nonexistent/parley.yaml", &doc, &err), PARLEY_ENOTFOUND);
  assert_string_equal(fmt(&err), "/nonexistent/parley.yaml: cannot open: No such file or directory");
}

/* A quoted scalar is a string in YAML: the loader says so, so that bot
 * settings such as "01234" reach Lua as text and not as the number 1234. */
static void test_quoted_scalars(void **state) {
  (void)state;
  pc_error err;
  pc_doc *doc = load("a: \"01234\"\nb: 01234\nc: 'true'\nd: true\ne: |\n  12\n", &err);
  const pc_node *r = pc_root(doc);
  assert_true(pc_scalar_quoted(pc_get(r, "a")));
  assert_false(pc_scalar_quoted(pc_get(r, "b")));
  assert_true(pc_scalar_quoted(pc_get(r, "c")));
  assert_false(pc_scalar_quoted(pc_get(r, "d")));
  assert_true(pc_scalar_quoted(pc_get(r, "e")));
  assert_false(pc_scalar_quoted(r));
  assert_string_equal(pc_scalar(pc_get(r, "a")), "01234");
  pc_doc_free(doc);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tree_lines_paths), cmocka_unit_test(test_empty_document),
      cmocka_unit_test(test_get_str),          cmocka_unit_test(test_get_bool),
      cmocka_unit_test(test_get_u64),          cmocka_unit_test(test_get_ms),
      cmocka_unit_test(test_get_size),         cmocka_unit_test(test_check_keys),
      cmocka_unit_test(test_duplicate_keys),   cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_aliases_refused),  cmocka_unit_test(test_depth_bomb),
      cmocka_unit_test(test_size_bombs),       cmocka_unit_test(test_load_file),
      cmocka_unit_test(test_env_overrides),    cmocka_unit_test(test_error_format),
      cmocka_unit_test(test_doc_messages),     cmocka_unit_test(test_quoted_scalars),
      cmocka_unit_test(test_fail),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
