/* The gateway's web pages: the customer widget and the agent workbench
 * (web/, built into the build directory), served over HTTP with a strict
 * Content-Security-Policy, on the gateway's own port or a configured one.
 * docs/web.md describes the `web:` keys. */
#ifndef PARLEY_GW_WEB_H
#define PARLEY_GW_WEB_H

#include <stdio.h>

#include "config/config.h"

struct pg_config;
struct pg_gateway;
struct lws_context_creation_info;
typedef struct pg_web pg_web;

/* Reads the `web:` section (absent: served from the built-in directory on
 * the gateway's port) into c->web. PARLEY_ECONFIG with err filled on a bad
 * key or value. */
int pg_web_load(struct pg_config *c, const pc_node *n, pc_error *err);
/* Serves a bot's templates folder at /templates/ (an embedded gateway's
 * `web.templates`). 0, PARLEY_EINVAL when dir is not a directory, or
 * PARLEY_ENOMEM. */
int pg_web_set_templates(pg_web *w, const char *dir);
pg_web *pg_web_dup(const pg_web *w);
void pg_web_free(pg_web *w);

/* Same-port serving: adds the pages' mounts and headers to the gateway's
 * own vhost before it is created. Leaves info alone otherwise. */
void pg_web_vhost_info(struct pg_config *c, struct lws_context_creation_info *info);
/* A configured port: creates the pages' own vhost once the gateway's vhost
 * is listening. 0, or PARLEY_EIO when it cannot listen. */
int pg_web_start(struct pg_gateway *g);
/* Prints "web pages on http://HOST:PORT/ (widget.html, workbench.html)"
 * when the pages are served. */
void pg_web_print(const struct pg_gateway *g, FILE *out);

/* The embedded gateway (`parley run` without --url): prints the widget's
 * and the workbench's URLs, each with its principal and token in the
 * fragment, which the browser does not send to any server. */
void pg_web_print_urls(const struct pg_gateway *g, const char *customer, const char *customer_token,
                       const char *agent, const char *agent_token, FILE *out);

#endif
