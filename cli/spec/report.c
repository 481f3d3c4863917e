/* `parley test`: the report. One PASS/FAIL/SKIP line per case; a failing
 * case also gets the spec's steps and what the customer saw side by side,
 * wrapped at WB_COL columns (East Asian wide characters count two). */
#include "wb.h"

#include <stdarg.h>


void wb_add_line(wb_lines *l, const char *fmt, ...) {
  if (l->n >= 256) return;
  char tmp[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  l->buf[l->n++] = wb_xdup(tmp);
}

void wb_free_lines(wb_lines *l) {
  for (size_t i = 0; i < l->n; i++) free(l->buf[i]);
  l->n = 0;
}


void wb_render_item(wb_lines *l, const wb_item *it) {
  const char *who = it->from_bot ? "bot" : it->sender && it->sender[0] ? it->sender : "gateway";
  if (it->kind == PARLEY_EVENT_MESSAGE) {
    char labels[1024] = "";
    if (it->labels)
      for (const char *p = it->labels; *p; p++) {
        size_t k = strlen(labels);
        if (k + 3 >= sizeof labels) break;
        if (*p == '\n') strcat(labels, " | ");
        else labels[k] = *p, labels[k + 1] = 0;
      }
    switch (it->ctype) {
    case PARLEY_CONTENT_CARD:
      wb_add_line(l, "%s: card \"%s\"", who, it->title);
      if (it->text[0]) wb_add_line(l, "  text: \"%s\"", it->text);
      if (it->n_labels) wb_add_line(l, "  buttons: [%s]", labels);
      break;
    case PARLEY_CONTENT_QUICK_REPLIES:
      wb_add_line(l, "%s: quick_replies \"%s\"", who, it->text);
      if (it->n_labels) wb_add_line(l, "  options: [%s]", labels);
      break;
    case PARLEY_CONTENT_IMAGE: wb_add_line(l, "%s: image %s \"%s\"", who, it->image, it->text); break;
    case PARLEY_CONTENT_POSTBACK: wb_add_line(l, "%s: pressed \"%s\"", who, it->text); break;
    default: wb_add_line(l, "%s: \"%s\"", who, it->text); break;
    }
    if (it->quote_seq) wb_add_line(l, "  quote: #%llu \"%s\"", (unsigned long long)it->quote_seq,
                                it->quote_excerpt);
    return;
  }
  switch (it->kind) {
  case PARLEY_EVENT_HANDED_OFF:
    wb_add_line(l, "-- handoff to %s%s%s%s", it->queue, it->note[0] ? ": \"" : "", it->note,
             it->note[0] ? "\"" : "");
    break;
  case PARLEY_EVENT_HANDED_BACK: wb_add_line(l, "-- handed back by %s", who); break;
  case PARLEY_EVENT_ASSIGNED: wb_add_line(l, "-- assigned to %s", it->assignee); break;
  case PARLEY_EVENT_CLOSED: wb_add_line(l, "-- closed%s%s", it->note[0] ? ": " : "", it->note); break;
  case PARLEY_EVENT_LOCALE_CHANGED: wb_add_line(l, "-- locale %s", it->locale); break;
  case PARLEY_EVENT_OPENED: wb_add_line(l, "-- opened (%s)", it->locale); break;
  case PARLEY_EVENT_TAGGED: {
    char t[1024];
    snprintf(t, sizeof t, "%s", it->tags ? it->tags : "");
    for (char *p = t; *p; p++)
      if (*p == '\n') *p = ',';
    wb_add_line(l, "-- tags: [%s]", t);
    break;
  }
  default: break;
  }
}

/* Columns a terminal gives a code point: East Asian wide and fullwidth
 * characters take two. */
static int cp_width(uint32_t c) {
  if ((c >= 0x1100 && c <= 0x115F) || (c >= 0x2E80 && c <= 0xA4CF) ||
      (c >= 0xAC00 && c <= 0xD7A3) || (c >= 0xF900 && c <= 0xFAFF) ||
      (c >= 0xFE30 && c <= 0xFE4F) || (c >= 0xFF00 && c <= 0xFF60) ||
      (c >= 0xFFE0 && c <= 0xFFE6) || (c >= 0x1F300 && c <= 0x1FAFF) ||
      (c >= 0x20000 && c <= 0x3FFFD))
    return 2;
  return 1;
}

/* Decodes one UTF-8 sequence; malformed bytes count as one column each. */
static size_t utf8_next(const char *s, uint32_t *cp) {
  const unsigned char *u = (const unsigned char *)s;
  size_t n = u[0] < 0x80 ? 1 : (u[0] >> 5) == 6 ? 2 : (u[0] >> 4) == 14 ? 3 : (u[0] >> 3) == 30 ? 4 : 1;
  uint32_t c = n == 1 ? u[0] : n == 2 ? u[0] & 0x1F : n == 3 ? u[0] & 0x0F : u[0] & 0x07;
  for (size_t i = 1; i < n; i++) {
    if ((u[i] & 0xC0) != 0x80) {
      *cp = u[0];
      return 1;
    }
    c = (c << 6) | (u[i] & 0x3F);
  }
  *cp = c;
  return n;
}

static size_t display_width(const char *s) {
  size_t w = 0;
  uint32_t cp;
  while (*s) {
    s += utf8_next(s, &cp);
    w += (size_t)cp_width(cp);
  }
  return w;
}

/* Wraps text into pieces of at most WB_COL columns, never inside a
 * character; returns the number of pieces. */
#define WB_PIECE (WB_COL * 4 + 1)
static size_t wrap(const char *s, char out[][WB_PIECE], size_t max) {
  size_t n = 0;
  if (!*s && max) {
    out[n++][0] = 0;
    return n;
  }
  while (*s && n < max) {
    size_t cols = 0, bytes = 0;
    uint32_t cp;
    while (s[bytes]) {
      size_t k = utf8_next(s + bytes, &cp);
      if (cols + (size_t)cp_width(cp) > WB_COL) break;
      cols += (size_t)cp_width(cp);
      bytes += k;
    }
    if (!bytes) bytes = utf8_next(s, &cp); /* a character wider than the column */
    memcpy(out[n], s, bytes);
    out[n][bytes] = 0;
    s += bytes;
    n++;
  }
  return n;
}

void wb_side_by_side_header(FILE *out) {
  fprintf(out, "    %-*s | %s\n", WB_COL, "expected", "actual");
  fprintf(out, "    ");
  for (int i = 0; i < WB_COL; i++) fputc('-', out);
  fprintf(out, "-+-");
  for (int i = 0; i < WB_COL; i++) fputc('-', out);
  fputc('\n', out);
}

/* Both columns of one step, wrapped; the next step starts on a common row. */
void wb_side_by_side_rows(FILE *out, const wb_lines *left, const wb_lines *right) {
  size_t i = 0, j = 0;
  char lw[16][WB_PIECE], rw[16][WB_PIECE];
  size_t ln = 0, rn = 0, li = 0, ri = 0;
  while (i < left->n || j < right->n || li < ln || ri < rn) {
    if (li >= ln) {
      ln = li = 0;
      if (i < left->n) ln = wrap(left->buf[i++], lw, 16);
    }
    if (ri >= rn) {
      rn = ri = 0;
      if (j < right->n) rn = wrap(right->buf[j++], rw, 16);
    }
    const char *a = li < ln ? lw[li++] : "";
    const char *b = ri < rn ? rw[ri++] : "";
    size_t pad = WB_COL - display_width(a);
    fprintf(out, "    %s%*s | %s\n", a, (int)pad, "", b);
  }
}

