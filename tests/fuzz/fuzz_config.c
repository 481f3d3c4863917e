/* Fuzz target: the YAML configuration loader (sdk/src/config/config.h).
 *
 * The input is a configuration document. It is loaded from a buffer of
 * exactly its size (no terminating NUL, so a read past the end is caught),
 * then every node of the tree is visited and every typed getter is called
 * on every key, with pc_check_keys and pc_error_format on each result.
 * Environment overrides set once at start-up are applied to the loaded
 * tree, which is walked again. Oversized, deeply nested and alias-laden
 * documents must be refused with PARLEY_ECONFIG and a located message, and
 * nothing may exceed libFuzzer's -rss_limit_mb. */
#include <parley/error.h>

#include "config/config.h"
#include "fuzz_common.h"

/* Deeper than the loader's nesting limit; a tree deeper than this would be
 * a loader bug, reported instead of overflowing the stack here. */
#define FZ_MAX_WALK_DEPTH 200

static const char *const allowed_keys[] = {
    "name", "url", "limits", "max_frame_bytes", "heartbeat", "tls", "bots", NULL};

static void check_error(int rc, const pc_error *err, const char *what) {
  if (rc == 0) return;
  FZ_CHECK(rc == PARLEY_ECONFIG || rc == PARLEY_ENOMEM || rc == PARLEY_EINVAL ||
               rc == PARLEY_ETOOBIG,
           "%s: undocumented status %d", what, rc);
  FZ_CHECK(err->message[0] != '\0', "%s: status %d without a message", what, rc);
  FZ_CHECK(memchr(err->file, '\0', sizeof err->file) &&
               memchr(err->key, '\0', sizeof err->key) &&
               memchr(err->message, '\0', sizeof err->message),
           "%s: unterminated error field", what);
  static const size_t sizes[] = {1, 7, 64, 1024};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    char buf[1024];
    memset(buf, 'x', sizeof buf);
    const char *s = pc_error_format(err, buf, sizes[i]);
    FZ_CHECK(s == buf, "pc_error_format returned another buffer");
    FZ_CHECK(memchr(buf, '\0', sizes[i]) != NULL,
             "pc_error_format(%zu) left the buffer unterminated", sizes[i]);
  }
}

/* Getters: an absent or null key stores the default and returns 0; an
 * error leaves the output untouched (docs/config.md, "Using it from C"). */
static void call_getters(const pc_node *map, const char *key) {
  const pc_node *v = pc_node_kind(map) == PC_MAP ? pc_get(map, key) : NULL;
  bool absent = pc_node_kind(map) != PC_MAP ? pc_node_kind(map) == PC_NULL
                                            : pc_node_kind(v) == PC_NULL;
  pc_error err;
  int rc;

  const char *s = "sentinel";
  memset(&err, 0, sizeof err);
  rc = pc_get_str(map, key, "def", &s, &err);
  check_error(rc, &err, "pc_get_str");
  if (rc != 0) FZ_CHECK(strcmp(s, "sentinel") == 0, "pc_get_str error changed the output");
  else if (absent) FZ_CHECK(strcmp(s, "def") == 0, "pc_get_str: absent key without the default");
  else FZ_CHECK(s != NULL && s == pc_scalar(v), "pc_get_str gave another string for '%s'", key);

  /* 2 is neither true nor false: it shows whether the output was written. */
  bool b;
  memset(&b, 2, sizeof b);
  memset(&err, 0, sizeof err);
  rc = pc_get_bool(map, key, true, &b, &err);
  check_error(rc, &err, "pc_get_bool");
  unsigned char braw;
  memcpy(&braw, &b, 1);
  if (rc != 0) FZ_CHECK(braw == 2, "pc_get_bool error changed the output");
  else FZ_CHECK(braw <= 1 && (!absent || b), "pc_get_bool output %u", braw);

  static const uint64_t sentinel = 0x5EA5EA5EA5EA5EA5ull;
  uint64_t u = sentinel;
  memset(&err, 0, sizeof err);
  rc = pc_get_u64(map, key, 5, 1, 1000, &u, &err);
  check_error(rc, &err, "pc_get_u64");
  if (rc != 0) FZ_CHECK(u == sentinel, "pc_get_u64 error changed the output");
  else if (absent) FZ_CHECK(u == 5, "pc_get_u64: absent key without the default");
  else FZ_CHECK(u >= 1 && u <= 1000, "pc_get_u64 out of range: %llu", (unsigned long long)u);

  u = sentinel;
  memset(&err, 0, sizeof err);
  rc = pc_get_u64(map, key, 0, 0, UINT64_MAX, &u, &err);
  check_error(rc, &err, "pc_get_u64");
  if (rc != 0) FZ_CHECK(u == sentinel, "pc_get_u64 error changed the output");

  u = sentinel;
  memset(&err, 0, sizeof err);
  rc = pc_get_ms(map, key, 100, &u, &err);
  check_error(rc, &err, "pc_get_ms");
  if (rc != 0) FZ_CHECK(u == sentinel, "pc_get_ms error changed the output");
  else if (absent) FZ_CHECK(u == 100, "pc_get_ms: absent key without the default");

  u = sentinel;
  memset(&err, 0, sizeof err);
  rc = pc_get_size(map, key, 1024, &u, &err);
  check_error(rc, &err, "pc_get_size");
  if (rc != 0) FZ_CHECK(u == sentinel, "pc_get_size error changed the output");
  else if (absent) FZ_CHECK(u == 1024, "pc_get_size: absent key without the default");
}

/* Nodes that get the full treatment per walk; past this a big document is
 * only navigated, so one input stays well under libFuzzer's -timeout. */
#define FZ_FULL_VISITS 2000
static size_t g_visits;

static void walk(const pc_node *root, const pc_node *n, int depth) {
  FZ_CHECK(depth <= FZ_MAX_WALK_DEPTH, "tree deeper than %d levels", depth);
  if (++g_visits > FZ_FULL_VISITS) {
    for (size_t i = 0; i < pc_len(n); i++) walk(root, pc_at(n, i), depth + 1);
    return;
  }
  (void)pc_node_line(n);
  const char *path = pc_node_path(n);
  FZ_CHECK(path != NULL, "node without a path");
  (void)pc_find(root, path);

  pc_kind kind = pc_node_kind(n);
  size_t len = pc_len(n);
  if (kind == PC_SCALAR) {
    FZ_CHECK(pc_scalar(n) != NULL, "scalar without a value at '%s'", path);
    FZ_CHECK(len == 0, "scalar with %zu children at '%s'", len, path);
  } else {
    FZ_CHECK(pc_scalar(n) == NULL, "non-scalar with a value at '%s'", path);
  }

  /* Getters on a non-mapping must report it, not misbehave. */
  call_getters(n, "name");

  pc_error err;
  memset(&err, 0, sizeof err);
  check_error(pc_check_keys(n, allowed_keys, &err), &err, "pc_check_keys");

  for (size_t i = 0; i < len; i++) {
    const pc_node *child = pc_at(n, i);
    if (kind == PC_MAP) {
      const char *key = pc_key_at(n, i);
      FZ_CHECK(key != NULL, "map entry %zu without a key at '%s'", i, path);
      FZ_CHECK(pc_get(n, key) != NULL, "pc_get cannot find key '%s'", key);
      call_getters(n, key);
    } else {
      FZ_CHECK(pc_key_at(n, i) == NULL, "sequence item with a key");
    }
    walk(root, child, depth + 1);
  }
  FZ_CHECK(pc_at(n, len) == NULL, "pc_at past the end");
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  /* Overrides that meet scalars, maps, sequences and missing keys
   * depending on the document. */
  setenv("PFUZZ_LIMITS__MAX_FRAME_BYTES", "2MiB", 1);
  setenv("PFUZZ_NAME", "from-env", 1);
  setenv("PFUZZ_BOTS__FAQ__TIMEOUT", "5s", 1);
  setenv("PFUZZ_URL__HOST", "x", 1);
  return 0;
}

/* The loader's documented document limit (docs/config.md). */
#define FZ_DOC_LIMIT (4u * 1024u * 1024u)

/* An input starting with bytes FF FE (never valid YAML) stands for a big
 * document: the rest of the input repeated up to a size chosen by the
 * third byte s: one byte under, at, or one byte over the 4 MiB limit for
 * s = 0, 1, 2, else s KiB. Without this the fuzzer, whose inputs are small,
 * would never reach the size and node limits. Big documents are slow, so
 * the seeds using this mode are kept in regressions/fuzz_config/ (run once
 * by every regression run) rather than in the corpus the fuzzer mutates. */
static char *make_text(const uint8_t *data, size_t size, size_t *len) {
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xFE) {
    size_t n = data[2] < 3 ? FZ_DOC_LIMIT - 1 + data[2] : (size_t)data[2] * 1024;
    const uint8_t *unit = data + 3;
    size_t ulen = size - 3;
    char *text = malloc(n);
    FZ_CHECK(text != NULL, "out of memory");
    if (ulen == 0) {
      memset(text, ' ', n);
    } else {
      for (size_t i = 0; i < n; i += ulen)
        memcpy(text + i, unit, n - i < ulen ? n - i : ulen);
    }
    *len = n;
    return text;
  }
  /* An exact-size copy: the loader takes a length and must not read past
   * it. */
  char *text = malloc(size ? size : 1);
  FZ_CHECK(text != NULL, "out of memory");
  if (size) memcpy(text, data, size);
  *len = size;
  return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t len;
  char *text = make_text(data, size, &len);

  pc_doc *doc = NULL;
  pc_error err;
  int rc = pc_load_string("fuzz.yaml", text, len, &doc, &err);
  if (len > FZ_DOC_LIMIT)
    FZ_CHECK(rc == PARLEY_ECONFIG, "%zu-byte document accepted or refused with %d", len, rc);
  check_error(rc, &err, "pc_load_string");
  if (rc != 0) {
    FZ_CHECK(doc == NULL, "failed load left a document");
    free(text);
    return 0;
  }
  FZ_CHECK(doc != NULL, "load succeeded without a document");
  /* The tree must not borrow the input buffer. */
  memset(text, 0, len);
  free(text);

  const pc_node *root = pc_root(doc);
  g_visits = 0;
  walk(root, root, 0);

  rc = pc_apply_env(doc, "PFUZZ", &err);
  check_error(rc, &err, "pc_apply_env");
  root = pc_root(doc);
  g_visits = 0;
  walk(root, root, 0);

  pc_doc_free(doc);
  return 0;
}
