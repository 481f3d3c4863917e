/* Parsing of gateway URLs: ws://host[:port][/path] and wss://...
 *
 * Pure and bounded: every part is copied into fixed-size fields, and a URL
 * whose parts do not fit is refused rather than truncated.
 */
#ifndef PARLEY_TRANSPORT_URL_H
#define PARLEY_TRANSPORT_URL_H

#include <stdbool.h>

#define PT_URL_HOST_MAX 256  /* bytes of host, with the NUL */
#define PT_URL_PATH_MAX 2048 /* bytes of path and query, with the NUL */

typedef struct pt_url {
  bool tls;                    /* wss:// */
  int port;                    /* 1..65535; 80 or 443 when absent */
  char host[PT_URL_HOST_MAX];  /* name or address, IPv6 without brackets */
  char path[PT_URL_PATH_MAX];  /* starts with '/'; "/" when absent */
} pt_url;

/* Parses url into *out. Returns 0, or PARLEY_EINVAL with *why naming the
 * problem (static string) for a NULL or empty URL, another scheme, an empty
 * host, a bad port, user info, a fragment, or a part that is too long. */
int pt_url_parse(const char *url, pt_url *out, const char **why);

#endif /* PARLEY_TRANSPORT_URL_H */
