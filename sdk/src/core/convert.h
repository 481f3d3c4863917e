/* Conversion between the wire types (protoc-c structs) and the public
 * parley_* value types, and the plain-text fallback for rich content.
 *
 * Conversions never copy strings: the results point into their input and
 * into allocations recorded in a pe_arena, all freed at once by
 * pe_arena_free. That keeps ownership simple: an arena lives exactly as
 * long as one encode or one callback.
 */
#ifndef PARLEY_CORE_CONVERT_H
#define PARLEY_CORE_CONVERT_H

#include <stddef.h>
#include <stdint.h>

#include <parley/error.h>
#include <parley/types.h>

#include "wire/wire.h"

/* Longest generated fallback text; longer renderings are cut at a UTF-8
 * character boundary. */
#define PE_FALLBACK_MAX 4096

typedef struct pe_arena {
  void **ptrs;
  size_t n, cap;
  int failed; /* an allocation failed; results are unusable */
} pe_arena;

#define PE_ARENA_INIT {NULL, 0, 0, 0}

void *pe_arena_alloc(pe_arena *a, size_t size);
void pe_arena_free(pe_arena *a);

/* Validates an application content/action before it is queued. Returns 0
 * or PARLEY_EINVAL with *why naming the field. */
int pe_content_check(const parley_content *c, const char **why);
int pe_action_check(const parley_action *a, const char **why);

/* Builds the wire Content for c, generating the fallback when c has none
 * and the body is not plain text. NULL on allocation failure. */
Parley__V1__Content *pe_content_to_wire(pe_arena *a, const parley_content *c);
Parley__V1__Action *pe_action_to_wire(pe_arena *a, const parley_action *act);
Parley__V1__Quote *pe_quote_to_wire(pe_arena *a, const parley_quote *q);

/* The generated plain-text rendering of c, in the arena (never NULL unless
 * the arena failed). */
char *pe_fallback_render(pe_arena *a, const parley_content *c);

/* Fills out from a decoded wire event; arrays come from the arena.
 * Returns 0 or PARLEY_ENOMEM. */
int pe_event_from_wire(pe_arena *a, const Parley__V1__Event *in,
                       parley_event *out);
void pe_content_from_wire(pe_arena *a, const Parley__V1__Content *in,
                          parley_content *out);
void pe_action_from_wire(const Parley__V1__Action *in, parley_action *out);

/* A NULL-safe string for protoc-c fields: NULL becomes "". */
char *pe_str(const char *s);

#endif
