/* Growable buffer with a hard maximum, and the UTF-8 and JSON string
 * helpers the ops modules share. */
#include "ops/obuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/assert.h"

void pob_init(pob_buf *b, size_t max) {
  memset(b, 0, sizeof *b);
  b->max = max;
}

void pob_free(pob_buf *b) {
  free(b->data);
  memset(b, 0, sizeof *b);
}

static bool reserve(pob_buf *b, size_t extra) {
  if (b->failed) return false;
  /* The limit test below subtracts len from max. */
  PARLEY_ASSERT(b->len <= b->max && (b->cap == 0 || b->len < b->cap));
  if (extra > b->max - b->len) {
    b->failed = true;
    return false;
  }
  size_t need = b->len + extra + 1;
  if (need <= b->cap) return true;
  size_t ncap = b->cap ? b->cap : 256;
  while (ncap < need) ncap *= 2;
  if (ncap > b->max + 1) ncap = b->max + 1;
  char *n = realloc(b->data, ncap);
  if (!n) {
    b->failed = true;
    return false;
  }
  b->data = n;
  b->cap = ncap;
  return true;
}

void pob_append(pob_buf *b, const char *s, size_t n) {
  if (!reserve(b, n)) return;
  if (n) memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = '\0';
}

void pob_puts(pob_buf *b, const char *s) { pob_append(b, s, strlen(s)); }
void pob_putc(pob_buf *b, char ch) { pob_append(b, &ch, 1); }

void pob_printf(pob_buf *b, const char *fmt, ...) {
  char small[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(small, sizeof small, fmt, ap);
  va_end(ap);
  if (n < 0) {
    b->failed = true;
    return;
  }
  if ((size_t)n < sizeof small) {
    pob_append(b, small, (size_t)n);
    return;
  }
  if (!reserve(b, (size_t)n)) return;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

char *pob_take(pob_buf *b, size_t *len) {
  if (b->failed) {
    pob_free(b);
    return NULL;
  }
  if (!b->data && !reserve(b, 0)) return NULL;
  char *d = b->data;
  if (len) *len = b->len;
  size_t max = b->max;
  memset(b, 0, sizeof *b);
  b->max = max;
  return d;
}

size_t pob_utf8_decode(const unsigned char *s, size_t n, unsigned *cp) {
  if (n == 0) return 0;
  unsigned c = s[0];
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  size_t len;
  unsigned min;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2, min = 0x80, c &= 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3, min = 0x800, c &= 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4, min = 0x10000, c &= 0x07;
  } else {
    return 0;
  }
  if (n < len) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    c = (c << 6) | (s[i] & 0x3F);
  }
  if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
  *cp = c;
  return len;
}

void pob_json_escape(pob_buf *b, const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0;
  while (i < n) {
    unsigned char ch = p[i];
    if (ch >= 0x80) {
      unsigned cp;
      size_t k = pob_utf8_decode(p + i, n - i, &cp);
      if (k == 0) {
        pob_append(b, "\xEF\xBF\xBD", 3); /* U+FFFD for each bad byte */
        i++;
      } else {
        pob_append(b, s + i, k);
        i += k;
      }
      continue;
    }
    switch (ch) {
      case '"': pob_append(b, "\\\"", 2); break;
      case '\\': pob_append(b, "\\\\", 2); break;
      case '\n': pob_append(b, "\\n", 2); break;
      case '\r': pob_append(b, "\\r", 2); break;
      case '\t': pob_append(b, "\\t", 2); break;
      case '\b': pob_append(b, "\\b", 2); break;
      case '\f': pob_append(b, "\\f", 2); break;
      default:
        if (ch < 0x20 || ch == 0x7F) pob_printf(b, "\\u%04x", ch);
        else pob_putc(b, (char)ch);
    }
    i++;
  }
}

void pob_json_string(pob_buf *b, const char *s) {
  if (!s) {
    pob_puts(b, "null");
    return;
  }
  pob_putc(b, '"');
  pob_json_escape(b, s, strlen(s));
  pob_putc(b, '"');
}
