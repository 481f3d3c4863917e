/* YAML configuration: a parsed document with line numbers, typed getters
 * that report errors as "file:line: key: message", and environment
 * overrides. Built on libyaml.
 *
 * Environment overrides: with prefix "PARLEY", the variable
 * PARLEY_LIMITS__MAX_FRAME_BYTES sets limits.max_frame_bytes: the path's
 * keys upper-cased, joined by a double underscore (a single underscore is
 * part of a key). docs/config.md lists every key.
 */
#ifndef PARLEY_CONFIG_CONFIG_H
#define PARLEY_CONFIG_CONFIG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pc_doc pc_doc;
typedef struct pc_node pc_node;

typedef enum pc_kind { PC_NULL = 0, PC_SCALAR, PC_MAP, PC_SEQ } pc_kind;

typedef struct pc_error {
  char file[256];
  int line;          /* 1-based; 0 when unknown */
  char key[160];     /* dotted path, e.g. "limits.max_frame_bytes" */
  char message[256];
} pc_error;

/* Formats an error as "file:line: key: message" into buf. */
const char *pc_error_format(const pc_error *err, char *buf, size_t size);

/* Records a validation error against a node, for the checks that readers of
 * a document make beyond the typed getters: the node's file (its document,
 * or "env:NAME" for an environment override; err->file is kept when n is
 * NULL) and line, key (NULL: the node's own dotted path) and the message.
 * Returns PARLEY_ECONFIG, so a check can end with `return pc_fail(...)`. */
int pc_fail(pc_error *err, const pc_node *n, const char *key, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
int pc_vfail(pc_error *err, const pc_node *n, const char *key, const char *fmt, va_list ap);
/* The same for callers that report errors as text: "file:line: key:
 * message" (pc_error_format) into buf. Returns PARLEY_ECONFIG. */
int pc_fail_text(char *buf, size_t size, const pc_node *n, const char *key, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;

/* Parsing. Malformed YAML is PARLEY_ECONFIG with file and line. */
int pc_load_file(const char *path, pc_doc **out, pc_error *err);
int pc_load_string(const char *name, const char *text, size_t len,
                   pc_doc **out, pc_error *err);
void pc_doc_free(pc_doc *doc);
const pc_node *pc_root(const pc_doc *doc);
const char *pc_doc_name(const pc_doc *doc);

/* Applies PREFIX_A__B=value overrides from environ; creates missing keys. */
int pc_apply_env(pc_doc *doc, const char *prefix, pc_error *err);

/* Navigation. NULL-safe: a NULL node has kind PC_NULL and no children. */
pc_kind pc_node_kind(const pc_node *n);
int pc_node_line(const pc_node *n);
const char *pc_node_path(const pc_node *n);   /* dotted path */
const char *pc_node_file(const pc_node *n);   /* the document's name */
const char *pc_scalar(const pc_node *n);      /* NULL unless PC_SCALAR */
/* True for a scalar written in quotes or as a block (| or >): YAML types it
 * as a string, so "01234" is text while a plain 01234 is a number. */
bool pc_scalar_quoted(const pc_node *n);
size_t pc_len(const pc_node *n);              /* map pairs or seq items */
const pc_node *pc_at(const pc_node *n, size_t i);      /* seq item or map value */
const char *pc_key_at(const pc_node *n, size_t i);     /* map key */
const pc_node *pc_get(const pc_node *map, const char *key);
/* Dotted lookup from a node: "limits.max_frame_bytes". */
const pc_node *pc_find(const pc_node *n, const char *dotted);

/* Typed getters. A missing key yields the default and 0; a present key of
 * the wrong type or out of range yields PARLEY_ECONFIG with err filled. */
int pc_get_str(const pc_node *map, const char *key, const char *def,
               const char **out, pc_error *err);
int pc_get_bool(const pc_node *map, const char *key, bool def, bool *out,
                pc_error *err);
int pc_get_u64(const pc_node *map, const char *key, uint64_t def,
               uint64_t min, uint64_t max, uint64_t *out, pc_error *err);
/* Durations: "250ms", "5s", "2m", "1h" or a bare number of milliseconds. */
int pc_get_ms(const pc_node *map, const char *key, uint64_t def, uint64_t *out,
              pc_error *err);
/* The same duration syntax for a string that comes from elsewhere (a
 * command-line flag): 0, or PARLEY_EINVAL when s is not a duration. */
int pc_parse_ms(const char *s, uint64_t *out);
/* Sizes: "1MiB", "512KiB", "1024" bytes. */
int pc_get_size(const pc_node *map, const char *key, uint64_t def,
                uint64_t *out, pc_error *err);

/* Reports keys of map not in allowed (NULL-terminated): typos are errors. */
int pc_check_keys(const pc_node *map, const char *const *allowed,
                  pc_error *err);

#endif
