/* YAML configuration loader on libyaml's event API.
 *
 * The document is turned into a tree of pc_node, each carrying the line it
 * came from and its dotted path, so that every later error (a wrong type,
 * an out-of-range number, an unknown key) can name "file:line: key". Scalars
 * stay strings; the typed getters interpret them on demand.
 *
 * Hostile input is bounded: the document size, each scalar, the nesting
 * depth, the number of nodes, the entries of one mapping, the length of keys
 * and paths, and the total memory of the tree all have hard caps. Aliases
 * are refused, which rules out "billion laughs" expansion altogether.
 */
#include "config/config.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <yaml.h>

#include <parley/error.h>

extern char **environ;

/* Hard limits. A configuration file is small; anything beyond these is a
 * mistake or an attack, and is reported as such instead of being loaded. */
#define PC_MAX_DOC_BYTES (4u * 1024u * 1024u)
#define PC_MAX_SCALAR_BYTES (1u * 1024u * 1024u)
#define PC_MAX_DEPTH 64
#define PC_MAX_NODES 100000u
#define PC_MAX_MAP_ENTRIES 4096u
#define PC_MAX_KEY_BYTES 256u
#define PC_MAX_PATH_BYTES 1024u
#define PC_MAX_TREE_BYTES (64u * 1024u * 1024u)

struct pc_node {
  pc_kind kind;
  int line;
  const char *file; /* the document name, or owned_file for env overrides */
  char *owned_file; /* "env:NAME" when set by pc_apply_env, else NULL */
  char *path;
  char *scalar; /* PC_SCALAR only */
  bool quoted;  /* PC_SCALAR written in quotes (or as a block): a string */
  size_t len, cap;
  char **keys;   /* PC_MAP only */
  int *key_lines;
  pc_node **items; /* map values or sequence items */
};

struct pc_doc {
  char *name;
  pc_node *root;
  size_t nodes;
  size_t bytes; /* rough total of allocations, checked against the cap */
};

/* ---- errors ------------------------------------------------------------ */

static void set_err(pc_error *err, const char *file, int line, const char *key,
                    const char *fmt, ...) {
  if (!err)
    return;
  snprintf(err->file, sizeof err->file, "%s", file ? file : "");
  err->line = line;
  snprintf(err->key, sizeof err->key, "%s", key ? key : "");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof err->message, fmt, ap);
  va_end(ap);
}

int pc_fail_text(char *buf, size_t size, const pc_node *n, const char *key, const char *fmt,
                 ...) {
  pc_error e;
  memset(&e, 0, sizeof e);
  va_list ap;
  va_start(ap, fmt);
  pc_vfail(&e, n, key, fmt, ap);
  va_end(ap);
  pc_error_format(&e, buf, size);
  return PARLEY_ECONFIG;
}

/* An error about a node, named by its own path (pc_vfail). */
static void node_err(pc_error *err, const pc_node *n, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  pc_vfail(err, n, NULL, fmt, ap);
  va_end(ap);
}

const char *pc_error_format(const pc_error *err, char *buf, size_t size) {
  if (!buf || size == 0)
    return buf;
  if (!err) {
    snprintf(buf, size, "unknown configuration error");
    return buf;
  }
  char where[300];
  if (err->line > 0)
    snprintf(where, sizeof where, "%s:%d", err->file, err->line);
  else
    snprintf(where, sizeof where, "%s", err->file);
  /* An empty key (a syntax error, a file that cannot be read) is left out
   * rather than printed as an empty field. */
  if (err->key[0])
    snprintf(buf, size, "%s: %s: %s", where, err->key, err->message);
  else
    snprintf(buf, size, "%s: %s", where, err->message);
  return buf;
}

int pc_vfail(pc_error *err, const pc_node *n, const char *key, const char *fmt,
             va_list ap) {
  if (!err)
    return PARLEY_ECONFIG;
  if (n && n->file)
    snprintf(err->file, sizeof err->file, "%s", n->file);
  err->line = n ? n->line : 0;
  snprintf(err->key, sizeof err->key, "%s", key ? key : n && n->path ? n->path : "");
  vsnprintf(err->message, sizeof err->message, fmt, ap);
  return PARLEY_ECONFIG;
}

int pc_fail(pc_error *err, const pc_node *n, const char *key, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = pc_vfail(err, n, key, fmt, ap);
  va_end(ap);
  return rc;
}

/* ---- tree construction ------------------------------------------------- */

static const char *kind_name(pc_kind k) {
  switch (k) {
  case PC_SCALAR:
    return "a scalar";
  case PC_MAP:
    return "a mapping";
  case PC_SEQ:
    return "a sequence";
  default:
    return "null";
  }
}

static void node_free(pc_node *n) {
  if (!n)
    return;
  for (size_t i = 0; i < n->len; i++) {
    if (n->keys)
      free(n->keys[i]);
    node_free(n->items[i]);
  }
  free(n->keys);
  free(n->key_lines);
  free(n->items);
  free(n->scalar);
  free(n->path);
  free(n->owned_file);
  free(n);
}

/* Charges an allocation to the document; false when the tree would grow
 * past its cap (possible only with pathological input). */
static bool charge(pc_doc *doc, size_t bytes) {
  if (bytes > PC_MAX_TREE_BYTES || doc->bytes > PC_MAX_TREE_BYTES - bytes)
    return false;
  doc->bytes += bytes;
  return true;
}

static pc_node *node_new(pc_doc *doc, pc_kind kind, int line, const char *file,
                         const char *path) {
  if (doc->nodes >= PC_MAX_NODES)
    return NULL;
  size_t plen = strlen(path);
  if (!charge(doc, sizeof(pc_node) + plen + 1))
    return NULL;
  pc_node *n = calloc(1, sizeof *n);
  if (!n)
    return NULL;
  n->path = malloc(plen + 1);
  if (!n->path) {
    free(n);
    return NULL;
  }
  memcpy(n->path, path, plen + 1);
  n->kind = kind;
  n->line = line;
  n->file = file;
  doc->nodes++;
  return n;
}

/* Appends an item (and, for maps, its key) to a container. */
static int node_append(pc_doc *doc, pc_node *n, const char *key, int key_line,
                       pc_node *item) {
  if (n->len == n->cap) {
    size_t ncap = n->cap ? n->cap * 2 : 4;
    if (!charge(doc, (ncap - n->cap) * (sizeof(void *) * 2 + sizeof(int))))
      return PARLEY_ETOOBIG;
    pc_node **items = realloc(n->items, ncap * sizeof *items);
    if (!items)
      return PARLEY_ENOMEM;
    n->items = items;
    if (n->kind == PC_MAP) {
      char **keys = realloc(n->keys, ncap * sizeof *keys);
      if (!keys)
        return PARLEY_ENOMEM;
      n->keys = keys;
      int *lines = realloc(n->key_lines, ncap * sizeof *lines);
      if (!lines)
        return PARLEY_ENOMEM;
      n->key_lines = lines;
    }
    n->cap = ncap;
  }
  if (n->kind == PC_MAP) {
    size_t klen = strlen(key);
    if (!charge(doc, klen + 1))
      return PARLEY_ETOOBIG;
    char *k = malloc(klen + 1);
    if (!k)
      return PARLEY_ENOMEM;
    memcpy(k, key, klen + 1);
    n->keys[n->len] = k;
    n->key_lines[n->len] = key_line;
  }
  n->items[n->len++] = item;
  return 0;
}

/* Builds "parent.key" (or "parent[i]" for sequence items) into out. */
static bool join_path(char *out, size_t size, const char *parent,
                      const char *key, long index) {
  int w;
  if (key)
    w = parent[0] ? snprintf(out, size, "%s.%s", parent, key)
                  : snprintf(out, size, "%s", key);
  else
    w = snprintf(out, size, "%s[%ld]", parent, index);
  return w >= 0 && (size_t)w < size;
}

/* ---- parsing ----------------------------------------------------------- */

typedef struct pc_parse {
  yaml_parser_t parser;
  pc_doc *doc;
  pc_error *err;
} pc_parse;

static int parse_fail(pc_parse *p) {
  const yaml_parser_t *y = &p->parser;
  int line = (int)y->problem_mark.line + 1;
  if (y->error == YAML_MEMORY_ERROR) {
    set_err(p->err, p->doc->name, 0, "", "out of memory while parsing");
    return PARLEY_ENOMEM;
  }
  if (y->context)
    set_err(p->err, p->doc->name, line, "", "%s (line %d): %s", y->context,
            (int)y->context_mark.line + 1,
            y->problem ? y->problem : "syntax error");
  else
    set_err(p->err, p->doc->name, line, "", "%s",
            y->problem ? y->problem : "syntax error");
  return PARLEY_ECONFIG;
}

static int next_event(pc_parse *p, yaml_event_t *ev) {
  if (!yaml_parser_parse(&p->parser, ev))
    return parse_fail(p);
  return 0;
}

static int event_line(const yaml_event_t *ev) {
  return (int)ev->start_mark.line + 1;
}

/* A plain (unquoted) empty value, "~" or "null" is YAML's null: it is kept as
 * a PC_NULL node so that "key:" with nothing after it means "use the
 * default", while a quoted "null" stays a string. */
static bool is_plain_null(const yaml_event_t *ev) {
  if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
    return false;
  const char *v = (const char *)ev->data.scalar.value;
  size_t n = ev->data.scalar.length;
  return n == 0 || (n == 1 && v[0] == '~') ||
         (n == 4 && (!strcmp(v, "null") || !strcmp(v, "Null") ||
                     !strcmp(v, "NULL")));
}

static int limit_err(pc_parse *p, int line, const char *path, int rc) {
  if (rc == PARLEY_ENOMEM)
    set_err(p->err, p->doc->name, line, path, "out of memory");
  else if (p->doc->nodes >= PC_MAX_NODES)
    set_err(p->err, p->doc->name, line, path,
            "document has too many nodes (at most %u)", PC_MAX_NODES);
  else
    set_err(p->err, p->doc->name, line, path,
            "document too large once expanded (at most %u MiB)",
            PC_MAX_TREE_BYTES >> 20);
  return rc == PARLEY_ENOMEM ? PARLEY_ENOMEM : PARLEY_ECONFIG;
}

static int parse_node(pc_parse *p, yaml_event_t *ev, const char *path,
                      int depth, pc_node **out);

static int parse_scalar(pc_parse *p, yaml_event_t *ev, const char *path,
                        pc_node **out) {
  int line = event_line(ev);
  size_t n = ev->data.scalar.length;
  if (n > PC_MAX_SCALAR_BYTES) {
    set_err(p->err, p->doc->name, line, path,
            "value too long (%zu bytes, at most %u)", n, PC_MAX_SCALAR_BYTES);
    return PARLEY_ECONFIG;
  }
  if (memchr(ev->data.scalar.value, '\0', n)) {
    set_err(p->err, p->doc->name, line, path, "value contains a NUL character");
    return PARLEY_ECONFIG;
  }
  pc_kind kind = is_plain_null(ev) ? PC_NULL : PC_SCALAR;
  pc_node *node = node_new(p->doc, kind, line, p->doc->name, path);
  if (!node)
    return limit_err(p, line, path, PARLEY_ETOOBIG);
  if (kind == PC_SCALAR) {
    if (!charge(p->doc, n + 1) || !(node->scalar = malloc(n + 1))) {
      node_free(node);
      return limit_err(p, line, path, PARLEY_ETOOBIG);
    }
    memcpy(node->scalar, ev->data.scalar.value, n);
    node->scalar[n] = '\0';
    node->quoted = ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
  }
  *out = node;
  return 0;
}

/* One item of a sequence, given its first event (the caller deletes it). */
static int seq_item(pc_parse *p, pc_node *seq, yaml_event_t *ev, const char *path,
                    int depth) {
  char child_path[PC_MAX_PATH_BYTES];
  if (!join_path(child_path, sizeof child_path, path, NULL, (long)seq->len)) {
    set_err(p->err, p->doc->name, event_line(ev), path, "key path too long");
    return PARLEY_ECONFIG;
  }
  pc_node *item = NULL;
  int rc = parse_node(p, ev, child_path, depth + 1, &item);
  if (rc != 0)
    return rc;
  if ((rc = node_append(p->doc, seq, NULL, 0, item)) != 0) {
    node_free(item);
    return limit_err(p, seq->line, path, rc);
  }
  return 0;
}

/* One key of a mapping and its value, given the key's event (the caller
 * deletes it); the value's events are read and deleted here. */
static int map_entry(pc_parse *p, pc_node *map, yaml_event_t *kev, const char *path,
                     int depth) {
  int kline = event_line(kev);
  if (kev->type == YAML_ALIAS_EVENT) {
    set_err(p->err, p->doc->name, kline, path,
            "aliases (*name) are not supported in configuration files");
    return PARLEY_ECONFIG;
  }
  if (kev->type != YAML_SCALAR_EVENT) {
    set_err(p->err, p->doc->name, kline, path,
            "mapping keys must be plain strings, not %s",
            kev->type == YAML_MAPPING_START_EVENT ? "a mapping" : "a sequence");
    return PARLEY_ECONFIG;
  }
  const char *key = (const char *)kev->data.scalar.value;
  size_t klen = kev->data.scalar.length;
  if (klen > PC_MAX_KEY_BYTES || memchr(key, '\0', klen)) {
    set_err(p->err, p->doc->name, kline, path,
            klen > PC_MAX_KEY_BYTES ? "key too long (at most %u bytes)"
                                    : "key contains a NUL character",
            PC_MAX_KEY_BYTES);
    return PARLEY_ECONFIG;
  }
  char child_path[PC_MAX_PATH_BYTES];
  if (!join_path(child_path, sizeof child_path, path, key, 0)) {
    set_err(p->err, p->doc->name, kline, path, "key path too long");
    return PARLEY_ECONFIG;
  }
  /* Duplicate keys are almost always an editing mistake where the second
   * value silently wins; both lines are reported. */
  for (size_t i = 0; i < map->len; i++) {
    if (!strcmp(map->keys[i], key)) {
      set_err(p->err, p->doc->name, kline, child_path,
              "duplicate key '%s' (first defined at line %d)", key, map->key_lines[i]);
      return PARLEY_ECONFIG;
    }
  }
  if (map->len >= PC_MAX_MAP_ENTRIES) {
    set_err(p->err, p->doc->name, kline, path,
            "mapping has too many keys (at most %u)", PC_MAX_MAP_ENTRIES);
    return PARLEY_ECONFIG;
  }
  yaml_event_t vev;
  int rc = next_event(p, &vev);
  if (rc != 0)
    return rc;
  pc_node *value = NULL;
  rc = parse_node(p, &vev, child_path, depth + 1, &value);
  yaml_event_delete(&vev);
  if (rc != 0)
    return rc;
  /* A block collection starts on the line after its key; the key's line is
   * the one a reader looks for in "limits: expected a string". */
  if (value->kind != PC_SCALAR && value->kind != PC_NULL)
    value->line = kline;
  if ((rc = node_append(p->doc, map, key, kline, value)) != 0) {
    node_free(value);
    return limit_err(p, kline, child_path, rc);
  }
  return 0;
}

/* A sequence or a mapping: one loop reads entries up to the closing event,
 * seq_item or map_entry builds each, and any error frees the whole node. */
static int parse_collection(pc_parse *p, yaml_event_t *start, const char *path,
                            int depth, pc_node **out) {
  bool map = start->type == YAML_MAPPING_START_EVENT;
  yaml_event_type_t end = map ? YAML_MAPPING_END_EVENT : YAML_SEQUENCE_END_EVENT;
  int line = event_line(start);
  pc_node *node = node_new(p->doc, map ? PC_MAP : PC_SEQ, line, p->doc->name, path);
  if (!node)
    return limit_err(p, line, path, PARLEY_ETOOBIG);
  int rc;
  for (;;) {
    yaml_event_t ev;
    if ((rc = next_event(p, &ev)) != 0)
      break;
    bool done = ev.type == end;
    if (!done)
      rc = map ? map_entry(p, node, &ev, path, depth)
               : seq_item(p, node, &ev, path, depth);
    yaml_event_delete(&ev);
    if (done || rc != 0)
      break;
  }
  if (rc != 0) {
    node_free(node);
    return rc;
  }
  *out = node;
  return 0;
}

static int parse_node(pc_parse *p, yaml_event_t *ev, const char *path,
                      int depth, pc_node **out) {
  int line = event_line(ev);
  if (depth > PC_MAX_DEPTH) {
    set_err(p->err, p->doc->name, line, path,
            "nesting too deep (at most %d levels)", PC_MAX_DEPTH);
    return PARLEY_ECONFIG;
  }
  switch (ev->type) {
  case YAML_SCALAR_EVENT:
    return parse_scalar(p, ev, path, out);
  case YAML_SEQUENCE_START_EVENT:
  case YAML_MAPPING_START_EVENT:
    return parse_collection(p, ev, path, depth, out);
  case YAML_ALIAS_EVENT:
    /* Refusing aliases outright is what makes expansion bombs impossible;
     * configuration files gain little from them. */
    set_err(p->err, p->doc->name, line, path,
            "aliases (*%s) are not supported in configuration files",
            ev->data.alias.anchor ? (const char *)ev->data.alias.anchor : "");
    return PARLEY_ECONFIG;
  default:
    set_err(p->err, p->doc->name, line, path, "unexpected YAML event");
    return PARLEY_ECONFIG;
  }
}

/* Walks STREAM-START [DOCUMENT-START node DOCUMENT-END] STREAM-END. An empty
 * stream gives an empty mapping so that getters simply return defaults. */
static int parse_stream(pc_parse *p) {
  yaml_event_t ev;
  int rc;
  if ((rc = next_event(p, &ev)) != 0)
    return rc;
  yaml_event_delete(&ev); /* STREAM-START */
  if ((rc = next_event(p, &ev)) != 0)
    return rc;
  if (ev.type == YAML_STREAM_END_EVENT) {
    yaml_event_delete(&ev);
    p->doc->root = node_new(p->doc, PC_MAP, 1, p->doc->name, "");
    return p->doc->root ? 0 : PARLEY_ENOMEM;
  }
  yaml_event_delete(&ev); /* DOCUMENT-START */
  if ((rc = next_event(p, &ev)) != 0)
    return rc;
  pc_node *root = NULL;
  rc = parse_node(p, &ev, "", 0, &root);
  yaml_event_delete(&ev);
  if (rc != 0)
    return rc;
  if (root->kind == PC_NULL) {
    /* A document holding only comments or "~" is an empty configuration. */
    root->kind = PC_MAP;
  }
  p->doc->root = root;
  if ((rc = next_event(p, &ev)) != 0)
    return rc;
  yaml_event_delete(&ev); /* DOCUMENT-END */
  if ((rc = next_event(p, &ev)) != 0)
    return rc;
  if (ev.type != YAML_STREAM_END_EVENT) {
    set_err(p->err, p->doc->name, event_line(&ev), "",
            "only one YAML document per file is supported");
    yaml_event_delete(&ev);
    return PARLEY_ECONFIG;
  }
  yaml_event_delete(&ev);
  return 0;
}

int pc_load_string(const char *name, const char *text, size_t len,
                   pc_doc **out, pc_error *err) {
  if (err)
    memset(err, 0, sizeof *err);
  if (!out || (!text && len > 0)) {
    set_err(err, name, 0, "", "invalid argument");
    return PARLEY_EINVAL;
  }
  *out = NULL;
  if (!name)
    name = "<string>";
  if (len > PC_MAX_DOC_BYTES) {
    set_err(err, name, 0, "", "document too large (%zu bytes, at most %u MiB)",
            len, PC_MAX_DOC_BYTES >> 20);
    return PARLEY_ECONFIG;
  }
  pc_doc *doc = calloc(1, sizeof *doc);
  if (!doc || !(doc->name = strdup(name))) {
    free(doc);
    set_err(err, name, 0, "", "out of memory");
    return PARLEY_ENOMEM;
  }
  pc_parse p = {.doc = doc, .err = err};
  if (!yaml_parser_initialize(&p.parser)) {
    pc_doc_free(doc);
    set_err(err, name, 0, "", "out of memory");
    return PARLEY_ENOMEM;
  }
  yaml_parser_set_input_string(&p.parser, (const unsigned char *)(text ? text : ""),
                               len);
  int rc = parse_stream(&p);
  yaml_parser_delete(&p.parser);
  if (rc != 0) {
    pc_doc_free(doc);
    return rc;
  }
  *out = doc;
  return 0;
}

int pc_load_file(const char *path, pc_doc **out, pc_error *err) {
  if (err)
    memset(err, 0, sizeof *err);
  if (!path || !out) {
    set_err(err, path, 0, "", "invalid argument");
    return PARLEY_EINVAL;
  }
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) {
    int e = errno;
    set_err(err, path, 0, "", "cannot open: %s", strerror(e));
    return e == ENOENT ? PARLEY_ENOTFOUND : PARLEY_EIO;
  }
  /* Read at most one byte past the limit: enough to know it is too big
   * without trusting the size that stat reports (pipes, growing files). */
  char *buf = malloc(PC_MAX_DOC_BYTES + 1);
  if (!buf) {
    fclose(f);
    set_err(err, path, 0, "", "out of memory");
    return PARLEY_ENOMEM;
  }
  size_t n = fread(buf, 1, PC_MAX_DOC_BYTES + 1, f);
  int read_error = ferror(f);
  fclose(f);
  if (read_error) {
    free(buf);
    set_err(err, path, 0, "", "read error");
    return PARLEY_EIO;
  }
  int rc = pc_load_string(path, buf, n, out, err);
  free(buf);
  return rc;
}

void pc_doc_free(pc_doc *doc) {
  if (!doc)
    return;
  node_free(doc->root);
  free(doc->name);
  free(doc);
}

const pc_node *pc_root(const pc_doc *doc) { return doc ? doc->root : NULL; }

const char *pc_doc_name(const pc_doc *doc) { return doc ? doc->name : NULL; }

/* ---- navigation -------------------------------------------------------- */

pc_kind pc_node_kind(const pc_node *n) { return n ? n->kind : PC_NULL; }

int pc_node_line(const pc_node *n) { return n ? n->line : 0; }

const char *pc_node_path(const pc_node *n) { return n ? n->path : ""; }

const char *pc_node_file(const pc_node *n) { return n && n->file ? n->file : ""; }

const char *pc_scalar(const pc_node *n) {
  return n && n->kind == PC_SCALAR ? n->scalar : NULL;
}

bool pc_scalar_quoted(const pc_node *n) { return n && n->kind == PC_SCALAR && n->quoted; }

size_t pc_len(const pc_node *n) {
  return n && (n->kind == PC_MAP || n->kind == PC_SEQ) ? n->len : 0;
}

const pc_node *pc_at(const pc_node *n, size_t i) {
  if (!n || (n->kind != PC_MAP && n->kind != PC_SEQ) || i >= n->len)
    return NULL;
  return n->items[i];
}

const char *pc_key_at(const pc_node *n, size_t i) {
  if (!n || n->kind != PC_MAP || i >= n->len)
    return NULL;
  return n->keys[i];
}

static pc_node *map_get(const pc_node *map, const char *key, size_t klen,
                        size_t *index) {
  if (!map || map->kind != PC_MAP || !key)
    return NULL;
  for (size_t i = 0; i < map->len; i++) {
    if (strlen(map->keys[i]) == klen && !memcmp(map->keys[i], key, klen)) {
      if (index)
        *index = i;
      return map->items[i];
    }
  }
  return NULL;
}

const pc_node *pc_get(const pc_node *map, const char *key) {
  return key ? map_get(map, key, strlen(key), NULL) : NULL;
}

const pc_node *pc_find(const pc_node *n, const char *dotted) {
  if (!dotted)
    return NULL;
  const char *s = dotted;
  while (n) {
    const char *dot = strchr(s, '.');
    size_t klen = dot ? (size_t)(dot - s) : strlen(s);
    n = map_get(n, s, klen, NULL);
    if (!dot)
      return n;
    s = dot + 1;
  }
  return NULL;
}

/* ---- typed getters ----------------------------------------------------- */

/* Looks up key in map. Returns 1 with *node set when a usable value is
 * present, 0 when the key is absent or null (use the default), or an error
 * when map itself is not a mapping. */
static int lookup(const pc_node *map, const char *key, const pc_node **node,
                  pc_error *err) {
  *node = NULL;
  if (!map || map->kind == PC_NULL)
    return 0;
  if (map->kind != PC_MAP) {
    node_err(err, map, "expected a mapping, got %s", kind_name(map->kind));
    return PARLEY_ECONFIG;
  }
  const pc_node *n = pc_get(map, key);
  if (!n || n->kind == PC_NULL)
    return 0;
  *node = n;
  return 1;
}

static int want_scalar(const pc_node *n, const char *what, pc_error *err) {
  if (n->kind == PC_SCALAR)
    return 0;
  node_err(err, n, "expected %s, got %s", what, kind_name(n->kind));
  return PARLEY_ECONFIG;
}

int pc_get_str(const pc_node *map, const char *key, const char *def,
               const char **out, pc_error *err) {
  const pc_node *n;
  int rc = lookup(map, key, &n, err);
  if (rc <= 0) {
    if (rc == 0 && out)
      *out = def;
    return rc;
  }
  if ((rc = want_scalar(n, "a string", err)) != 0)
    return rc;
  if (out)
    *out = n->scalar;
  return 0;
}

static bool ieq(const char *a, const char *b) {
  for (; *a && *b; a++, b++)
    if (tolower((unsigned char)*a) != tolower((unsigned char)*b))
      return false;
  return *a == *b;
}

int pc_get_bool(const pc_node *map, const char *key, bool def, bool *out,
                pc_error *err) {
  const pc_node *n;
  int rc = lookup(map, key, &n, err);
  if (rc <= 0) {
    if (rc == 0 && out)
      *out = def;
    return rc;
  }
  if ((rc = want_scalar(n, "a boolean", err)) != 0)
    return rc;
  static const char *const yes[] = {"true", "yes", "on"};
  static const char *const no[] = {"false", "no", "off"};
  for (size_t i = 0; i < 3; i++) {
    if (ieq(n->scalar, yes[i]) || ieq(n->scalar, no[i])) {
      if (out)
        *out = ieq(n->scalar, yes[i]);
      return 0;
    }
  }
  node_err(err, n, "expected a boolean (true/false, yes/no, on/off), got '%.64s'",
           n->scalar);
  return PARLEY_ECONFIG;
}

/* Parses leading decimal digits of s into *v; returns the number of digits,
 * or -1 on overflow. */
static int parse_digits(const char *s, uint64_t *v) {
  uint64_t acc = 0;
  int i = 0;
  for (; isdigit((unsigned char)s[i]); i++) {
    unsigned d = (unsigned)(s[i] - '0');
    if (acc > (UINT64_MAX - d) / 10)
      return -1;
    acc = acc * 10 + d;
  }
  *v = acc;
  return i;
}

int pc_get_u64(const pc_node *map, const char *key, uint64_t def,
               uint64_t min, uint64_t max, uint64_t *out, pc_error *err) {
  const pc_node *n;
  int rc = lookup(map, key, &n, err);
  if (rc <= 0) {
    if (rc == 0 && out)
      *out = def;
    return rc;
  }
  if ((rc = want_scalar(n, "a non-negative integer", err)) != 0)
    return rc;
  uint64_t v;
  int nd = parse_digits(n->scalar, &v);
  if (nd < 0) {
    node_err(err, n, "number too large: '%.64s'", n->scalar);
    return PARLEY_ECONFIG;
  }
  if (nd == 0 || n->scalar[nd] != '\0') {
    node_err(err, n, "expected a non-negative integer, got '%.64s'", n->scalar);
    return PARLEY_ECONFIG;
  }
  if (v < min || v > max) {
    node_err(err, n, "%llu is out of range [%llu, %llu]", (unsigned long long)v,
             (unsigned long long)min, (unsigned long long)max);
    return PARLEY_ECONFIG;
  }
  if (out)
    *out = v;
  return 0;
}

typedef struct pc_unit {
  const char *name;
  uint64_t mult;
} pc_unit;

enum { UNIT_BAD = -1, UNIT_DIGITS_OVERFLOW = -2, UNIT_OVERFLOW = -3 };

/* Reads "<digits>[ ]<unit>" with the unit looked up in units (an empty unit
 * name stands for a bare number): 0, or one of the UNIT_ codes. */
static int unit_value(const char *s, const pc_unit *units, size_t n_units, uint64_t *out) {
  uint64_t v;
  int nd = parse_digits(s, &v);
  if (nd < 0)
    return UNIT_DIGITS_OVERFLOW;
  const char *unit = s + nd;
  if (*unit == ' ')
    unit++;
  for (size_t i = 0; nd > 0 && i < n_units; i++) {
    if (strcmp(unit, units[i].name) != 0)
      continue;
    if (v != 0 && units[i].mult > UINT64_MAX / v)
      return UNIT_OVERFLOW;
    *out = v * units[i].mult;
    return 0;
  }
  return UNIT_BAD;
}

/* unit_value on a node: overflow is reported here, -1 leaves the message
 * about the expected form to the caller. */
static int parse_with_unit(const pc_node *n, const pc_unit *units,
                           size_t n_units, const char *what, uint64_t *out,
                           pc_error *err) {
  int rc = want_scalar(n, what, err);
  if (rc != 0)
    return rc;
  switch (unit_value(n->scalar, units, n_units, out)) {
  case 0:
    return 0;
  case UNIT_DIGITS_OVERFLOW:
    node_err(err, n, "number too large: '%.64s'", n->scalar);
    return PARLEY_ECONFIG;
  case UNIT_OVERFLOW:
    node_err(err, n, "value too large: '%.64s'", n->scalar);
    return PARLEY_ECONFIG;
  default:
    return -1;
  }
}

static const pc_unit duration_units[] = {
    {"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};

int pc_parse_ms(const char *s, uint64_t *out) {
  uint64_t v;
  if (!s || unit_value(s, duration_units, sizeof duration_units / sizeof duration_units[0],
                       &v) != 0)
    return PARLEY_EINVAL;
  *out = v;
  return 0;
}

/* The typed getter over a unit table: the default when key is missing, the
 * value, or an error that shows the expected form. */
static int get_with_unit(const pc_node *map, const char *key, uint64_t def,
                         const pc_unit *units, size_t n_units, const char *what,
                         const char *expected, uint64_t *out, pc_error *err) {
  const pc_node *n;
  int rc = lookup(map, key, &n, err);
  if (rc <= 0) {
    if (rc == 0 && out)
      *out = def;
    return rc;
  }
  uint64_t v;
  rc = parse_with_unit(n, units, n_units, what, &v, err);
  if (rc == -1) {
    node_err(err, n, "expected %s, got '%.64s'", expected, n->scalar);
    return PARLEY_ECONFIG;
  }
  if (rc == 0 && out)
    *out = v;
  return rc;
}

int pc_get_ms(const pc_node *map, const char *key, uint64_t def, uint64_t *out,
              pc_error *err) {
  return get_with_unit(map, key, def, duration_units,
                       sizeof duration_units / sizeof duration_units[0], "a duration",
                       "a duration such as 250ms, 5s, 2m, 1h or a number of milliseconds",
                       out, err);
}

int pc_get_size(const pc_node *map, const char *key, uint64_t def,
                uint64_t *out, pc_error *err) {
  static const pc_unit units[] = {{"", 1},
                                  {"B", 1},
                                  {"KiB", 1ull << 10},
                                  {"MiB", 1ull << 20},
                                  {"GiB", 1ull << 30},
                                  {"TiB", 1ull << 40}};
  /* "MB" is ambiguous (10^6 or 2^20); binary units are required so that a
   * limit means exactly what it says. */
  return get_with_unit(map, key, def, units, sizeof units / sizeof units[0], "a size",
                       "a size such as 1024, 512KiB, 1MiB or 1GiB (binary units)", out, err);
}

/* ---- unknown keys ------------------------------------------------------ */

/* Levenshtein distance, capped: the suggestion only matters for short typos,
 * and long keys are cut to keep the table small. */
static size_t edit_distance(const char *a, const char *b) {
  enum { MAXL = 64 };
  size_t la = strlen(a), lb = strlen(b);
  if (la > MAXL || lb > MAXL)
    return (size_t)-1;
  size_t prev[MAXL + 1], cur[MAXL + 1];
  for (size_t j = 0; j <= lb; j++)
    prev[j] = j;
  for (size_t i = 1; i <= la; i++) {
    cur[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
      size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
      cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
    }
    memcpy(prev, cur, (lb + 1) * sizeof prev[0]);
  }
  return prev[lb];
}

int pc_check_keys(const pc_node *map, const char *const *allowed,
                  pc_error *err) {
  if (!map || map->kind == PC_NULL)
    return 0;
  if (map->kind != PC_MAP) {
    node_err(err, map, "expected a mapping, got %s", kind_name(map->kind));
    return PARLEY_ECONFIG;
  }
  for (size_t i = 0; i < map->len; i++) {
    const char *key = map->keys[i];
    bool ok = false;
    const char *best = NULL;
    size_t best_d = (size_t)-1;
    bool tie = false;
    for (size_t j = 0; allowed && allowed[j]; j++) {
      if (!strcmp(key, allowed[j])) {
        ok = true;
        break;
      }
      size_t d = edit_distance(key, allowed[j]);
      if (d < best_d) {
        best_d = d, best = allowed[j], tie = false;
      } else if (d == best_d) {
        tie = true;
      }
    }
    if (ok)
      continue;
    /* A suggestion is made only when one allowed key is clearly closest and
     * within a couple of edits; otherwise it would be a guess. */
    size_t klen = strlen(key);
    size_t close = klen <= 4 ? 1 : 2;
    const pc_node *child = map->items[i];
    if (err) {
      node_err(err, child, "unknown key '%.64s'", key);
      err->line = map->key_lines[i];
      if (best && !tie && best_d <= close) {
        size_t used = strlen(err->message);
        snprintf(err->message + used, sizeof err->message - used,
                 " (did you mean '%.64s'?)", best);
      }
    }
    return PARLEY_ECONFIG;
  }
  return 0;
}

/* ---- environment overrides --------------------------------------------- */

static int node_set_env_file(pc_node *n, const char *var_name, size_t name_len) {
  char *f = malloc(name_len + 5);
  if (!f)
    return PARLEY_ENOMEM;
  memcpy(f, "env:", 4);
  memcpy(f + 4, var_name, name_len);
  f[name_len + 4] = '\0';
  free(n->owned_file);
  n->owned_file = f;
  n->file = f;
  n->line = 0;
  return 0;
}

/* Applies one NAME=value entry whose NAME starts with the prefix and "_";
 * rest points just after that. */
static int apply_one(pc_doc *doc, const char *entry, const char *rest,
                     pc_error *err) {
  const char *eq = strchr(entry, '=');
  if (!eq)
    return 0;
  size_t name_len = (size_t)(eq - entry);
  char file[300];
  snprintf(file, sizeof file, "env:%.*s", (int)(name_len > 250 ? 250 : name_len),
           entry);
  const char *value = eq + 1;
  size_t vlen = strlen(value);
  if (vlen > PC_MAX_SCALAR_BYTES) {
    set_err(err, file, 0, "", "value too long (at most %u bytes)",
            PC_MAX_SCALAR_BYTES);
    return PARLEY_ECONFIG;
  }
  if (!doc->root || doc->root->kind != PC_MAP) {
    set_err(err, file, 0, "", "the document root is not a mapping");
    return PARLEY_ECONFIG;
  }
  pc_node *cur = doc->root;
  const char *s = rest;
  char path[PC_MAX_PATH_BYTES] = "";
  while (s < eq) {
    const char *sep = strstr(s, "__");
    if (!sep || sep > eq)
      sep = eq;
    size_t klen = (size_t)(sep - s);
    if (klen == 0 || klen > PC_MAX_KEY_BYTES) {
      set_err(err, file, 0, path,
              "invalid override name: empty or overlong key segment (the "
              "form is PREFIX_SECTION__KEY)");
      return PARLEY_ECONFIG;
    }
    char key[PC_MAX_KEY_BYTES + 1];
    for (size_t i = 0; i < klen; i++)
      key[i] = (char)tolower((unsigned char)s[i]);
    key[klen] = '\0';
    char child_path[PC_MAX_PATH_BYTES];
    if (!join_path(child_path, sizeof child_path, path, key, 0)) {
      set_err(err, file, 0, path, "key path too long");
      return PARLEY_ECONFIG;
    }
    bool last = sep == eq;
    size_t idx = 0;
    pc_node *child = map_get(cur, key, klen, &idx);
    if (child && child->kind == PC_NULL) {
      /* A null placeholder ("key:" with no value) is replaced in place. */
      child->kind = last ? PC_SCALAR : PC_MAP;
    } else if (!child) {
      if (cur->len >= PC_MAX_MAP_ENTRIES) {
        set_err(err, file, 0, path, "mapping has too many keys");
        return PARLEY_ECONFIG;
      }
      child = node_new(doc, last ? PC_SCALAR : PC_MAP, 0, doc->name, child_path);
      if (!child) {
        set_err(err, file, 0, child_path, "document too large");
        return PARLEY_ECONFIG;
      }
      int rc = node_append(doc, cur, key, 0, child);
      if (rc != 0) {
        node_free(child);
        set_err(err, file, 0, child_path, "out of memory");
        return rc == PARLEY_ENOMEM ? rc : PARLEY_ECONFIG;
      }
      idx = cur->len - 1;
      if (node_set_env_file(child, entry, name_len) != 0)
        return PARLEY_ENOMEM;
    }
    if (last) {
      if (child->kind != PC_SCALAR) {
        set_err(err, file, 0, child_path,
                "cannot override %s (defined at %s:%d) with a single value",
                kind_name(child->kind), child->file, child->line);
        return PARLEY_ECONFIG;
      }
      char *v = malloc(vlen + 1);
      if (!v) {
        set_err(err, file, 0, child_path, "out of memory");
        return PARLEY_ENOMEM;
      }
      memcpy(v, value, vlen + 1);
      free(child->scalar);
      child->scalar = v;
      cur->key_lines[idx] = 0;
      return node_set_env_file(child, entry, name_len);
    }
    if (child->kind != PC_MAP) {
      set_err(err, file, 0, child_path,
              "cannot set a key inside %s (defined at %s:%d)",
              kind_name(child->kind), child->file, child->line);
      return PARLEY_ECONFIG;
    }
    cur = child;
    memcpy(path, child_path, strlen(child_path) + 1);
    s = sep + 2;
  }
  set_err(err, file, 0, path, "invalid override name: ends with '__'");
  return PARLEY_ECONFIG;
}

int pc_apply_env(pc_doc *doc, const char *prefix, pc_error *err) {
  if (err)
    memset(err, 0, sizeof *err);
  if (!doc || !prefix || !prefix[0]) {
    set_err(err, "env", 0, "", "invalid argument");
    return PARLEY_EINVAL;
  }
  size_t plen = strlen(prefix);
  for (char **e = environ; e && *e; e++) {
    const char *entry = *e;
    if (strncmp(entry, prefix, plen) != 0 || entry[plen] != '_')
      continue;
    int rc = apply_one(doc, entry, entry + plen + 1, err);
    if (rc != 0)
      return rc;
  }
  return 0;
}
