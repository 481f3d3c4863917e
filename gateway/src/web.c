/* Serving web/'s built pages (the customer widget and the agent workbench)
 * from the gateway, through libwebsockets' own static file mounts: no
 * hand-written HTTP. By default they share the gateway's port, so the pages
 * and the WebSocket have one origin and the Content-Security-Policy can say
 * `connect-src 'self'`; `web.port` puts them on a port of their own. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <libwebsockets.h>

#include <parley/error.h>

#include "gw.h"
#include "web.h"

/* Where the build puts the pages (web/CMakeLists.txt defines it); an
 * installed gateway looks in the data directory next. */
#ifndef PARLEY_WEB_DIR
#define PARLEY_WEB_DIR ""
#endif
#ifndef PARLEY_WEB_INSTALL_DIR
#define PARLEY_WEB_INSTALL_DIR "/usr/local/share/parley/web"
#endif

#define CSP_MAX 1024

/* Scripts, styles and fonts only from the gateway itself, no inline code,
 * no plugins, no framing, no forms posting elsewhere. Images may come from
 * any https host because bot cards carry image URLs. Bot and customer text
 * is rendered as text (docs/web.md), and this policy is the second line. */
#define CSP_FORMAT                                                                   \
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; " \
  "connect-src 'self'%s%s; font-src 'self'; base-uri 'none'; form-action 'none'; "  \
  "frame-ancestors 'none'"

struct pg_web {
  bool enabled;
  char *root;       /* the built pages */
  char *templates;  /* a bot's templates directory, served at /templates/ */
  char *listen;     /* NULL: the gateway's */
  int port;         /* -1: the gateway's own port */
  char csp[CSP_MAX];
  /* libwebsockets' views of the above; they live as long as the vhost. */
  struct lws_http_mount mount, tmount;
  struct lws_protocol_vhost_options hdr[5];
  struct lws_protocol_vhost_options mime[3];
};

static bool is_dir(const char *p) {
  struct stat st;
  return p && p[0] && stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static const char *default_root(void) {
  if (getenv("PARLEY_WEB_ROOT") && getenv("PARLEY_WEB_ROOT")[0]) return getenv("PARLEY_WEB_ROOT");
  if (is_dir(PARLEY_WEB_DIR)) return PARLEY_WEB_DIR;
  if (is_dir(PARLEY_WEB_INSTALL_DIR)) return PARLEY_WEB_INSTALL_DIR;
  return NULL;
}

int pg_web_load(pg_config *c, const pc_node *n, pc_error *err) {
  static const char *const keys[] = {"enabled", "root", "templates", "listen", "port", NULL};
  int rc;
  pg_web *w = calloc(1, sizeof *w);
  if (!w) return PARLEY_ENOMEM;
  c->web = w;
  w->port = -1;
  const char *root = NULL, *templates = NULL, *listen = NULL;
  if (n && pc_node_kind(n) != PC_NULL) {
    if (pc_node_kind(n) != PC_MAP) return pc_fail(err, n, "web", "expected a mapping");
    if ((rc = pc_check_keys(n, keys, err))) return rc;
    uint64_t port = 0;
    if ((rc = pc_get_bool(n, "enabled", true, &w->enabled, err)) ||
        (rc = pc_get_str(n, "root", NULL, &root, err)) ||
        (rc = pc_get_str(n, "templates", NULL, &templates, err)) ||
        (rc = pc_get_str(n, "listen", NULL, &listen, err)) ||
        (rc = pc_get_u64(n, "port", 0, 0, 65535, &port, err)))
      return rc;
    if (pc_get(n, "port")) w->port = (int)port;
    if (root && !is_dir(root))
      return pc_fail(err, pc_get(n, "root"), "web.root", "'%s' is not a directory", root);
    if (templates && !is_dir(templates))
      return pc_fail(err, pc_get(n, "templates"), "web.templates", "'%s' is not a directory",
                      templates);
  } else {
    w->enabled = true;
  }
  /* Without built pages (a build without Node.js) the gateway runs without
   * them, and says so when it starts. */
  if (!root) root = default_root();
  if (root && !(w->root = strdup(root))) return PARLEY_ENOMEM;
  if (templates && !(w->templates = strdup(templates))) return PARLEY_ENOMEM;
  if (listen && !(w->listen = strdup(listen))) return PARLEY_ENOMEM;
  return 0;
}

int pg_web_set_templates(pg_web *w, const char *dir) {
  if (!is_dir(dir)) return PARLEY_EINVAL;
  char *t = strdup(dir);
  if (!t) return PARLEY_ENOMEM;
  free(w->templates);
  w->templates = t;
  return 0;
}

pg_web *pg_web_dup(const pg_web *s) {
  pg_web *w = calloc(1, sizeof *w);
  if (!w) return NULL;
  w->enabled = s->enabled;
  w->port = s->port;
  w->root = s->root ? strdup(s->root) : NULL;
  w->templates = s->templates ? strdup(s->templates) : NULL;
  w->listen = s->listen ? strdup(s->listen) : NULL;
  if ((s->root && !w->root) || (s->templates && !w->templates) || (s->listen && !w->listen)) {
    pg_web_free(w);
    return NULL;
  }
  return w;
}

void pg_web_free(pg_web *w) {
  if (!w) return;
  free(w->root);
  free(w->templates);
  free(w->listen);
  free(w);
}

static bool serving(const pg_config *c) { return c->web && c->web->enabled && c->web->root; }

/* Fills the mounts and the headers; connect is the gateway's WebSocket
 * origin when the pages are on another port ("" when they share it). */
static void build(pg_web *w, const char *connect) {
  snprintf(w->csp, sizeof w->csp, CSP_FORMAT, connect[0] ? " " : "", connect);
  static const char *const names[] = {"content-security-policy:", "x-content-type-options:",
                                      "referrer-policy:", "cross-origin-opener-policy:",
                                      "x-frame-options:"};
  const char *values[] = {w->csp, "nosniff", "no-referrer", "same-origin", "DENY"};
  for (int i = 0; i < 5; i++) {
    w->hdr[i].name = names[i];
    w->hdr[i].value = values[i];
    w->hdr[i].next = i + 1 < 5 ? &w->hdr[i + 1] : NULL;
  }
  /* Types libwebsockets 4.1 does not know. */
  static const char *const ext[][2] = {{".yaml", "text/yaml; charset=utf-8"},
                                       {".map", "application/json"},
                                       {".svg", "image/svg+xml"}};
  for (int i = 0; i < 3; i++) {
    w->mime[i].name = ext[i][0];
    w->mime[i].value = ext[i][1];
    w->mime[i].next = i + 1 < 3 ? &w->mime[i + 1] : NULL;
  }
  memset(&w->mount, 0, sizeof w->mount);
  w->mount.mountpoint = "/";
  w->mount.mountpoint_len = 1;
  w->mount.origin = w->root;
  w->mount.def = "index.html";
  w->mount.origin_protocol = LWSMPRO_FILE;
  w->mount.extra_mimetypes = w->mime;
  /* Pages revalidate, so a new build shows at the next load. */
  w->mount.cache_max_age = 0;
  w->mount.cache_revalidate = 1;
  if (w->templates) {
    w->tmount = w->mount;
    w->tmount.mountpoint = "/templates";
    w->tmount.mountpoint_len = 10;
    w->tmount.origin = w->templates;
    w->tmount.def = NULL;
    w->mount.mount_next = &w->tmount;
  }
}

void pg_web_vhost_info(pg_config *c, struct lws_context_creation_info *info) {
  if (!serving(c) || c->web->port >= 0) return;
  build(c->web, "");
  info->mounts = &c->web->mount;
  info->headers = c->web->hdr;
}

static const struct lws_protocols web_protocols[] = {
    {"http", lws_callback_http_dummy, 0, 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

int pg_web_start(pg_gateway *g) {
  pg_web *w = g->cfg->web;
  if (!serving(g->cfg) || w->port < 0) return 0;
  char connect[300];
  snprintf(connect, sizeof connect, "%s://%s:%d", g->cfg->tls_cert ? "wss" : "ws", g->cfg->listen,
           g->port);
  build(w, connect);
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  info.port = w->port;
  info.iface = w->listen ? w->listen : g->cfg->listen;
  info.protocols = web_protocols;
  info.vhost_name = "parley-web";
  info.options = LWS_SERVER_OPTION_LIBUV;
  if (g->cfg->tls_cert) info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
  info.mounts = &w->mount;
  info.headers = w->hdr;
  if (g->cfg->tls_cert) {
    info.ssl_cert_filepath = g->cfg->tls_cert;
    info.ssl_private_key_filepath = g->cfg->tls_key;
    info.provided_client_ssl_ctx = g->vh_client_ssl;
  }
  if (!lws_create_vhost(g->ctx, &info)) {
    fprintf(stderr, "gateway: cannot serve the web pages on %s:%d\n", info.iface, w->port);
    return PARLEY_EIO;
  }
  return 0;
}

/* The pages' base URL into out; false when they are not served. */
static bool base_url(const pg_gateway *g, char *out, size_t size) {
  const pg_config *c = g->cfg;
  if (!serving(c)) return false;
  int port = g->port;
  const char *host = c->listen;
  if (c->web->port >= 0) {
    struct lws_vhost *vh = lws_get_vhost_by_name(g->ctx, "parley-web");
    port = vh ? lws_get_vhost_listen_port(vh) : c->web->port;
    if (c->web->listen) host = c->web->listen;
  }
  snprintf(out, size, "%s://%s:%d/", c->tls_cert ? "https" : "http", host, port);
  return true;
}

void pg_web_print(const pg_gateway *g, FILE *out) {
  char base[400];
  if (!g->cfg->web || !g->cfg->web->enabled) return;
  if (!base_url(g, base, sizeof base))
    fprintf(out, "web pages not served: no built pages (build with Node.js, or set web.root)\n");
  else
    fprintf(out, "web pages on %s (widget.html, workbench.html)\n", base);
}

void pg_web_print_urls(const pg_gateway *g, const char *customer, const char *customer_token,
                       const char *agent, const char *agent_token, FILE *out) {
  char base[400];
  if (!base_url(g, base, sizeof base)) return;
  fprintf(out,
          "customer widget:  %swidget.html#principal=%s&token=%s\n"
          "agent workbench:  %sworkbench.html#principal=%s&token=%s\n",
          base, customer, customer_token, base, agent, agent_token);
  fflush(out);
}
