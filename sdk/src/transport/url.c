/* Gateway URL parsing; see url.h. */
#include "transport/url.h"

#include <string.h>
#include <strings.h>

#include <parley/error.h>

static int bad(const char **why, const char *msg) {
  if (why)
    *why = msg;
  return PARLEY_EINVAL;
}

/* Reads a decimal port of 1 to 5 digits in [1, 65535]. */
static int parse_port(const char *s, size_t n, int *port) {
  if (n == 0 || n > 5)
    return -1;
  int v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return -1;
    v = v * 10 + (s[i] - '0');
  }
  if (v < 1 || v > 65535)
    return -1;
  *port = v;
  return 0;
}

int pt_url_parse(const char *url, pt_url *out, const char **why) {
  memset(out, 0, sizeof *out);
  if (!url || !*url)
    return bad(why, "empty URL");

  const char *p;
  if (strncasecmp(url, "ws://", 5) == 0) {
    p = url + 5;
  } else if (strncasecmp(url, "wss://", 6) == 0) {
    out->tls = true;
    p = url + 6;
  } else {
    return bad(why, "scheme must be ws:// or wss://");
  }
  out->port = out->tls ? 443 : 80;

  /* The authority runs up to the first '/' or '?'. */
  size_t auth_len = strcspn(p, "/?#");
  const char *auth = p;
  const char *rest = p + auth_len;
  if (memchr(auth, '@', auth_len))
    return bad(why, "user info in the URL is not supported; use the token");

  const char *host = auth;
  size_t host_len;
  const char *port_s = NULL;
  size_t port_len = 0;
  if (auth_len && auth[0] == '[') {
    const char *close = memchr(auth, ']', auth_len);
    if (!close)
      return bad(why, "unterminated IPv6 address");
    host = auth + 1;
    host_len = (size_t)(close - host);
    const char *after = close + 1;
    size_t after_len = auth_len - (size_t)(after - auth);
    if (after_len) {
      if (after[0] != ':')
        return bad(why, "garbage after IPv6 address");
      port_s = after + 1;
      port_len = after_len - 1;
    }
  } else {
    const char *colon = memchr(auth, ':', auth_len);
    host_len = colon ? (size_t)(colon - auth) : auth_len;
    if (colon) {
      port_s = colon + 1;
      port_len = auth_len - host_len - 1;
    }
  }
  if (host_len == 0)
    return bad(why, "empty host");
  if (host_len >= sizeof out->host)
    return bad(why, "host too long");
  memcpy(out->host, host, host_len);
  out->host[host_len] = '\0';
  if (port_s && parse_port(port_s, port_len, &out->port) != 0)
    return bad(why, "port must be 1..65535");

  if (*rest == '#' || strchr(rest, '#'))
    return bad(why, "fragments are not allowed in a WebSocket URL");
  if (*rest == '\0') {
    strcpy(out->path, "/");
  } else {
    size_t n = strlen(rest);
    /* A query without a path ("ws://h?x") gets the root path in front. */
    size_t lead = rest[0] == '?' ? 1 : 0;
    if (n + lead >= sizeof out->path)
      return bad(why, "path too long");
    if (lead)
      out->path[0] = '/';
    memcpy(out->path + lead, rest, n + 1);
  }
  for (const char *c = out->path; *c; c++)
    if ((unsigned char)*c <= 0x20 || *c == 0x7f)
      return bad(why, "control character or space in the path");
  for (const char *c = out->host; *c; c++)
    if ((unsigned char)*c <= 0x20 || *c == 0x7f)
      return bad(why, "control character or space in the host");
  return 0;
}
