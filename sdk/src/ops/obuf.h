/* A growable byte buffer with a hard maximum, shared by the ops modules
 * (metrics rendering, log lines, JSON answers).
 *
 * Appends past the maximum (or after an allocation failure) are dropped and
 * set the `failed` flag, so a writer may append freely and check once. */
#ifndef PARLEY_OPS_OBUF_H
#define PARLEY_OPS_OBUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct pob_buf {
  char *data; /* NUL-terminated while not failed */
  size_t len, cap, max;
  bool failed;
} pob_buf;

/* max is the largest length the buffer may reach (excluding the NUL). */
void pob_init(pob_buf *b, size_t max);
void pob_free(pob_buf *b);
void pob_append(pob_buf *b, const char *s, size_t n);
void pob_puts(pob_buf *b, const char *s);
void pob_putc(pob_buf *b, char ch);
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void pob_printf(pob_buf *b, const char *fmt, ...);
/* Hands the data over (caller frees) and resets the buffer. NULL if failed. */
char *pob_take(pob_buf *b, size_t *len);

/* Decodes one UTF-8 sequence at s (n bytes available). Returns its length
 * (1-4) and the code point, or 0 when the bytes are not valid UTF-8
 * (overlong forms, surrogates and values past U+10FFFF included). */
size_t pob_utf8_decode(const unsigned char *s, size_t n, unsigned *cp);

/* Appends s as the inside of a JSON string: quotes, backslashes and control
 * characters escaped, invalid UTF-8 replaced by U+FFFD. */
void pob_json_escape(pob_buf *b, const char *s, size_t n);
/* The same with the surrounding quotes; NULL becomes null. */
void pob_json_string(pob_buf *b, const char *s);

#endif /* PARLEY_OPS_OBUF_H */
