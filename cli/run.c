/* `parley run <botdir>`: runs a bot.
 *
 * With --url the bot connects to that gateway and runs until SIGTERM or
 * SIGINT (graceful: handlers finish and commit within the drain time) and
 * reloads on SIGHUP. --config names a sidecar.yaml (cli/sidecar.h): the
 * gateway, the operations port (health, readiness, metrics, the sidecar
 * API), the log format and the drain time; flags override it.
 *
 * Without --url it runs against the embedded gateway: a gateway in this
 * process on the same libuv loop, with a fresh data directory, and a
 * customer console on stdin/stdout. Piped input ends the run once every
 * line was acknowledged and the bot has answered and committed all of it.
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include <parley/client.h>

#include "cli.h"
#include "config/config.h"
#include "console.h"
#include "gateway.h"
#include <parley/runtime.h>
#include "sidecar.h"
#include "web.h"

#define SETTLE_CHECK_MS 50
#define SETTLE_ROUNDS 3

typedef struct run_ctx {
  uv_loop_t *loop;
  pg_gateway *gw;
  pg_config *gw_cfg;
  parley_runtime *rt;
  sidecar *sc;
  uint32_t drain_ms;
  console *con;
  uv_signal_t sig_term, sig_int, sig_hup;
  uv_timer_t settle;
  bool settle_started;
  int settled_rounds;
  uint64_t settle_deadline;
  uint32_t wait_ms;
  uv_timer_t gw_stopper;
  int exit_code;
  bool stopping;
  int pending_stops;
  char data_dir[1024];
  bool own_data_dir;
  /* The embedded gateway's URL and the tokens only this process knows. */
  char gw_url[128];
  char bot_token[33], customer_token[33], web_token[33], agent_token[33];
} run_ctx;

static void random_token(char out[33]) {
  uint8_t id[PARLEY_MSG_ID_LEN];
  parley_msg_id_random(id);
  parley_msg_id_hex(id, out);
}

/* The bot's principal is bot.yaml's `name`, else the folder's name. */
static void bot_name(const char *dir, char *out, size_t size) {
  char path[1024];
  snprintf(path, sizeof path, "%s/bot.yaml", dir);
  pc_doc *doc = NULL;
  pc_error err;
  const char *name = NULL;
  if (pc_load_file(path, &doc, &err) == 0) {
    pc_get_str(pc_root(doc), "name", NULL, &name, &err);
  }
  if (name && name[0]) {
    snprintf(out, size, "%s", name);
  } else {
    const char *base = strrchr(dir, '/');
    base = base && base[1] ? base + 1 : dir;
    snprintf(out, size, "%s", base);
    size_t n = strlen(out);
    while (n && out[n - 1] == '/') out[--n] = 0;
    if (!out[0]) snprintf(out, size, "bot");
  }
  pc_doc_free(doc);
}


/* The workbench offers the bot's templates as canned responses. */
static bool web_templates(const char *bot_dir) {
  char path[1024];
  struct stat st;
  snprintf(path, sizeof path, "%s/templates", bot_dir);
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static void sidecar_closed(void *ud) {
  run_ctx *r = ud;
  if (r->pending_stops > 0) r->pending_stops--;
}

/* The runtime has drained (or the drain time ran out): the ops port goes
 * last, so /readyz answers "draining" until the very end. */
static void stop_done(void *ud) {
  run_ctx *r = ud;
  if (r->rt && parley_runtime_busy(r->rt)) {
    plog_log(sidecar_log(r->sc), PLOG_WARN, "drain time ran out with work left; the gateway "
             "delivers the unacknowledged events again", NULL);
    if (r->exit_code == 0) r->exit_code = 1;
  } else if (r->sc) {
    plog_log(sidecar_log(r->sc), PLOG_INFO, "drained", NULL);
  }
  if (r->sc) {
    r->pending_stops++;
    sidecar_close(r->sc, sidecar_closed, r);
  }
  if (r->pending_stops > 0) r->pending_stops--;
}

static void on_handle_closed(uv_handle_t *h) { (void)h; }

static void begin_stop(run_ctx *r, int code) {
  if (r->stopping) return;
  r->stopping = true;
  r->exit_code = code;
  if (r->settle_started) {
    uv_timer_stop(&r->settle);
    uv_close((uv_handle_t *)&r->settle, on_handle_closed);
    r->settle_started = false;
  }
  uv_signal_stop(&r->sig_term);
  uv_signal_stop(&r->sig_int);
  uv_signal_stop(&r->sig_hup);
  uv_close((uv_handle_t *)&r->sig_term, on_handle_closed);
  uv_close((uv_handle_t *)&r->sig_int, on_handle_closed);
  uv_close((uv_handle_t *)&r->sig_hup, on_handle_closed);
  if (r->con) console_stop(r->con);
  if (r->sc) sidecar_set_draining(r->sc);
  if (r->rt) {
    r->pending_stops++;
    parley_runtime_stop(r->rt, r->drain_ms, stop_done, r);
  } else if (r->sc) {
    r->pending_stops++;
    sidecar_close(r->sc, sidecar_closed, r);
  }
}

/* After the gateway's clients are gone, the gateway itself stops. */
static void stop_gateway_when_clients_done(uv_timer_t *t) {
  run_ctx *r = t->data;
  if (r->pending_stops > 0) return;
  uv_timer_stop(t);
  uv_close((uv_handle_t *)t, on_handle_closed);
  if (r->gw) pg_gateway_stop(r->gw, NULL, NULL);
}

static void on_signal(uv_signal_t *s, int signum) {
  run_ctx *r = s->data;
  if (signum == SIGHUP) {
    /* The runtime logs the outcome (in the configured format, once):
     * "reloaded <bot>" or "reload failed, keeping the running bot: ...". */
    char err[1024];
    if (r->rt) parley_runtime_reload(r->rt, err, sizeof err);
    return;
  }
  begin_stop(r, 0);
}

/* Piped input: wait until the bot has handled and committed everything up
 * to the last acknowledged customer message, and this console has seen
 * every event the bot committed (its replies included), a few checks in a
 * row so that replies still on the wire are not cut off. */
static void on_settle_tick(uv_timer_t *t) {
  run_ctx *r = t->data;
  const char *conv = console_conversation(r->con);
  uint64_t sent = console_last_sent_seq(r->con);
  uint64_t seen = console_last_seen_seq(r->con);
  uint64_t committed = parley_runtime_committed(r->rt, conv);
  bool ok = !parley_runtime_busy(r->rt) && committed >= sent && seen >= committed;
  if (sent == 0) ok = true; /* nothing was sent */
  r->settled_rounds = ok ? r->settled_rounds + 1 : 0;
  if (r->settled_rounds >= SETTLE_ROUNDS) {
    begin_stop(r, console_failures(r->con) ? 1 : 0);
    return;
  }
  if (uv_now(r->loop) > r->settle_deadline) {
    char msg[256];
    snprintf(msg, sizeof msg,
             "gave up waiting for the bot after %u ms (sent #%llu, committed #%llu, seen #%llu)",
             r->wait_ms, (unsigned long long)sent, (unsigned long long)committed,
             (unsigned long long)seen);
    plog_log(sidecar_log(r->sc), PLOG_ERROR, msg, NULL);
    begin_stop(r, 1);
  }
}

/* The gateway refused the bot's principal for good: retrying forever would
 * only fill the log. The runtime logged who and why; stop with status 1. */
static void on_fatal(void *ud, int status, const char *message) {
  (void)status, (void)message;
  begin_stop(ud, 1);
}

static void on_input_done(void *ud) {
  run_ctx *r = ud;
  if (r->stopping || r->settle_started) return;
  uv_timer_init(r->loop, &r->settle);
  r->settle.data = r;
  r->settle_started = true;
  r->settle_deadline = uv_now(r->loop) + r->wait_ms;
  uv_timer_start(&r->settle, on_settle_tick, SETTLE_CHECK_MS, SETTLE_CHECK_MS);
}

/* --help prints the usage on stdout and succeeds; a usage error prints it
 * on stderr and exits 2. */
static int usage_to(FILE *out) {
  fprintf(out,
          "usage: parley run <botdir> [options]\n"
          "  --url URL          gateway to connect to (default: the embedded gateway);\n"
          "                     repeat it, or separate URLs by commas, for failover nodes\n"
          "  --token TOKEN      the bot's token (or env PARLEY_TOKEN)\n"
          "  --principal NAME   the bot's principal (default: bot.yaml name)\n"
          "  --locale TAG       console: the customer's locale (default en)\n"
          "  --data-dir DIR     embedded gateway: keep its log here (default: temporary)\n"
          "  --wait MS          piped console: how long to wait for the bot (default 30000)\n"
          "  --log-format F     text, json or logfmt\n"
          "  --log-level L      debug, info, warn or error\n"
          "  --insecure         development only: accept any TLS certificate\n"
          "  --config FILE      sidecar config (gateway, ops, log, shutdown; see\n"
          "                     docs/operations.md); env PARLEY_SIDECAR_<KEY>__<SUBKEY>\n"
          "                     overrides it, these flags override both\n"
          "  --ops-port N       operations port (health, metrics, API); 0: ephemeral\n"
          "  --ops-listen HOST  address of the operations port (default 127.0.0.1)\n"
          "  --drain DURATION   SIGTERM: time for handlers to finish (default 10s)\n");
  return out == stdout ? 0 : 2;
}

static int usage(void) { return usage_to(stderr); }

/* A fatal error at start, once the log format is known: a plain line for
 * people in the text format, a record like every other with json or
 * logfmt, so that a collector never gets a line it cannot parse. */
static void start_error(const sidecar_config *sc, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void start_error(const sidecar_config *sc, const char *fmt, ...) {
  char msg[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (sc->log_format == PLOG_TEXT) fprintf(stderr, "parley: %s\n", msg);
  else plog_write(stderr, sc->log_format, PLOG_ERROR, NULL, 0, msg, NULL, 0);
}

/* What `parley run` was asked for: the flags, then the sidecar config with
 * the flags on top. */
typedef struct run_args {
  const char *bot_dir;
  const char *url, *token, *principal, *locale, *data_dir, *config_path;
  const char *f_format, *f_level, *f_port, *f_listen, *f_drain;
  bool insecure;
  bool quiet; /* embedded, no log level asked for: the console is the show */
  uint32_t wait_ms;
  cli_gateway_flags gw; /* the flags as given; url and the rest above are resolved */
  sidecar_config sc;
  char name[128];
} run_args;

/* "Go on" from the parse steps; anything else is the exit status. */
enum { RUN_GO = -1 };

static int run_parse_flags(int argc, char **argv, run_args *a) {
  static const struct option opts[] = {
      CLI_GATEWAY_OPTIONS,
      {"locale", required_argument, 0, 'l'},     {"data-dir", required_argument, 0, 'd'},
      {"wait", required_argument, 0, 'w'},       {"log-format", required_argument, 0, 'f'},
      {"config", required_argument, 0, 'c'},     {"ops-port", required_argument, 0, 'P'},
      {"ops-listen", required_argument, 0, 'L'}, {"log-level", required_argument, 0, 'v'},
      {"drain", required_argument, 0, 'D'},      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  a->locale = "en";
  a->wait_ms = 30000;
  optind = 1;
  int ch;
  while ((ch = getopt_long(argc, argv, "u:t:p:kl:d:w:f:c:P:L:v:D:h", opts, NULL)) != -1) {
    int took = cli_gateway_flag(&a->gw, ch, optarg);
    if (took < 0) return 2;
    if (took) continue;
    switch (ch) {
    case 'l': a->locale = optarg; break;
    case 'd': a->data_dir = optarg; break;
    case 'w': a->wait_ms = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'f': a->f_format = optarg; break;
    case 'c': a->config_path = optarg; break;
    case 'P': a->f_port = optarg; break;
    case 'L': a->f_listen = optarg; break;
    case 'v': a->f_level = optarg; break;
    case 'D': a->f_drain = optarg; break;
    case 'h': return usage_to(stdout);
    default: return usage();
    }
  }
  if (optind >= argc) return usage();
  a->bot_dir = argv[optind];
  a->url = a->gw.url;
  a->token = a->gw.token;
  a->principal = a->gw.principal;
  a->insecure = a->gw.insecure;
  return RUN_GO;
}

/* The sidecar config: the file (if any) with the environment's overrides,
 * then the flags on top. */
static int run_parse_config(run_args *a) {
  sidecar_config *sc = &a->sc;
  char cerr[1024];
  if (sidecar_config_load(a->config_path, sc, cerr, sizeof cerr) != 0) {
    fprintf(stderr, "parley: %s\n", cerr);
    return 2;
  }
  if (a->f_format && plog_parse_format(a->f_format, &sc->log_format) != 0) {
    fprintf(stderr, "parley: --log-format: must be text, json or logfmt\n");
    return 2;
  }
  if (a->f_level && plog_parse_level(a->f_level, &sc->log_level) != 0) {
    fprintf(stderr, "parley: --log-level: must be debug, info, warn or error\n");
    return 2;
  }
  if (a->f_port) {
    char *end = NULL;
    unsigned long p = strtoul(a->f_port, &end, 10);
    if (!*a->f_port || *end || p > 65535) {
      fprintf(stderr, "parley: --ops-port: must be a port number (0: ephemeral)\n");
      return 2;
    }
    sc->port = (int)p;
  }
  if (a->f_listen) snprintf(sc->listen, sizeof sc->listen, "%s", a->f_listen);
  if (a->f_drain) {
    uint64_t ms = 0;
    if (pc_parse_ms(a->f_drain, &ms) != 0 || ms > 3600000u) {
      fprintf(stderr, "parley: --drain: a duration such as 500ms, 10s or 1m\n");
      return 2;
    }
    sc->drain_ms = (uint32_t)ms;
  }
  if (!a->url && sc->url[0]) a->url = sc->url;
  if (!a->principal && sc->principal[0]) a->principal = sc->principal;
  if (!a->token && sc->token[0]) a->token = sc->token;
  if (!a->token) a->token = getenv("PARLEY_TOKEN");
  if (sc->insecure_tls) a->insecure = true;
  bot_name(a->bot_dir, a->name, sizeof a->name);
  if (!a->principal) a->principal = a->name;
  a->quiet = !a->url && !a->f_level && !a->config_path;
  return RUN_GO;
}

/* ---------------------------------------------------------------- set-up */

/* --data-dir, or a fresh temporary directory that the tear-down removes. */
static int run_data_dir(run_ctx *r, const run_args *a) {
  if (a->data_dir) {
    size_t n = (size_t)snprintf(r->data_dir, sizeof r->data_dir, "%s", a->data_dir);
    if (n >= sizeof r->data_dir) {
      start_error(&a->sc, "--data-dir: the path is longer than %zu bytes", sizeof r->data_dir - 1);
      return 1;
    }
    return 0;
  }
  const char *tmp = getenv("TMPDIR");
  snprintf(r->data_dir, sizeof r->data_dir, "%s/parley-run-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(r->data_dir)) {
    start_error(&a->sc, "cannot create a data directory: %s", strerror(errno));
    return 1;
  }
  r->own_data_dir = true;
  return 0;
}

/* The embedded gateway: a configuration built here, with tokens only this
 * process knows, and the bot pointed at it. */
static int run_embedded_gateway(run_ctx *r, run_args *a) {
  int rc = run_data_dir(r, a);
  if (rc) return rc;
  random_token(r->bot_token);
  random_token(r->customer_token);
  random_token(r->web_token);
  random_token(r->agent_token);
  pg_embedded_principal ps[] = {
      {.name = a->principal, .role = PARLEY_ROLE_BOT, .token = r->bot_token},
      {.name = "customer", .role = PARLEY_ROLE_CUSTOMER, .token = r->customer_token},
      /* The browser pages: a customer for the widget, an agent for the workbench. */
      {.name = "web-customer", .role = PARLEY_ROLE_CUSTOMER, .token = r->web_token},
      {.name = "agent", .role = PARLEY_ROLE_AGENT, .token = r->agent_token, .queue = "support"},
  };
  char templates[1100];
  snprintf(templates, sizeof templates, "%s/templates", a->bot_dir);
  pg_embedded_config ec = {.data_dir = r->data_dir,
                           .bot = a->principal,
                           .principals = ps,
                           .n_principals = sizeof ps / sizeof ps[0],
                           .web_templates = web_templates(a->bot_dir) ? templates : NULL};
  char err[1024];
  if (pg_config_embedded(&ec, &r->gw_cfg, err, sizeof err) != 0) {
    start_error(&a->sc, "embedded gateway config: %s", err);
    return 1;
  }
  if ((rc = pg_gateway_new(r->loop, r->gw_cfg, &r->gw)) != 0) {
    start_error(&a->sc, "cannot start the embedded gateway: %s", parley_strerror(rc));
    return 1;
  }
  snprintf(r->gw_url, sizeof r->gw_url, "ws://127.0.0.1:%d/", pg_gateway_port(r->gw));
  a->url = r->gw_url;
  a->token = r->bot_token;
  pg_web_print_urls(r->gw, "web-customer", r->web_token, "agent", r->agent_token, stderr);
  return 0;
}

static int run_start_bot(run_ctx *r, const run_args *a) {
  parley_runtime_options ro = {0};
  ro.loop = r->loop;
  ro.bot_dir = a->bot_dir;
  ro.url = a->url;
  ro.principal = a->principal;
  ro.token = a->token;
  ro.tls_insecure = a->insecure;
  ro.log_format = a->sc.log_format;
  ro.log_out = stderr;
  ro.log_level = a->quiet ? PLOG_WARN : a->sc.log_level;
  ro.on_observe = sidecar_observe;
  ro.ud = r->sc;
  ro.on_fatal = on_fatal;
  ro.fatal_ud = r;
  char err[2048];
  int rc = parley_runtime_new(&ro, &r->rt, err, sizeof err);
  if (rc != 0) {
    start_error(&a->sc, "%s", err);
    return 1;
  }
  if ((rc = sidecar_attach(r->sc, r->rt)) != 0) {
    start_error(&a->sc, "cannot open the ops port on %s:%d: %s", a->sc.listen, a->sc.port,
                parley_strerror(rc));
    return 1;
  }
  if ((rc = parley_runtime_start(r->rt)) != 0) {
    start_error(&a->sc, "cannot start the bot: %s", parley_strerror(rc));
    return 1;
  }
  return 0;
}

/* The customer's side of the embedded gateway, on stdin and stdout. */
static int run_start_console(run_ctx *r, const run_args *a) {
  console_options co = {0};
  co.loop = r->loop;
  co.url = a->url;
  co.principal = "customer";
  co.token = r->customer_token;
  co.locale = a->locale;
  co.interactive = isatty(STDIN_FILENO) && isatty(STDOUT_FILENO);
  co.color = co.interactive && getenv("NO_COLOR") == NULL;
  co.out = stdout;
  co.on_input_done = on_input_done;
  co.ud = r;
  int rc;
  if ((rc = console_new(&co, &r->con)) != 0 || (rc = console_start(r->con)) != 0) {
    start_error(&a->sc, "cannot start the console: %s", parley_strerror(rc));
    return 1;
  }
  return 0;
}

static void run_watch_signals(run_ctx *r) {
  uv_signal_init(r->loop, &r->sig_term);
  uv_signal_init(r->loop, &r->sig_int);
  uv_signal_init(r->loop, &r->sig_hup);
  r->sig_term.data = r->sig_int.data = r->sig_hup.data = r;
  uv_signal_start(&r->sig_term, on_signal, SIGTERM);
  uv_signal_start(&r->sig_int, on_signal, SIGINT);
  uv_signal_start(&r->sig_hup, on_signal, SIGHUP);
}

/* Everything the run needs, in order; whatever was made before a failure
 * is recorded in r for run_teardown. 0 or the exit status. */
static int run_setup(run_ctx *r, run_args *a) {
  char err[2048];
  if (parley_runtime_check(a->bot_dir, err, sizeof err) != 0) {
    start_error(&a->sc, "cannot load bot %s:\n%s", a->bot_dir, err);
    return 1;
  }
  r->drain_ms = a->sc.drain_ms;
  r->wait_ms = a->wait_ms;
  r->loop = uv_default_loop();
  if (sidecar_new(r->loop, &a->sc, stderr, &r->sc) != 0) {
    start_error(&a->sc, "cannot set up the sidecar (out of memory)");
    return 1;
  }
  if (a->quiet) plog_set_level(sidecar_log(r->sc), PLOG_WARN);
  int rc;
  if (!a->url) {
    if ((rc = run_embedded_gateway(r, a))) return rc;
  } else if (!a->token) {
    start_error(&a->sc, "--token (or PARLEY_TOKEN, or gateway.token/token_env in --config) "
                        "is required with --url");
    return 2;
  }
  if ((rc = run_start_bot(r, a))) return rc;
  if (r->gw && (rc = run_start_console(r, a))) return rc;
  run_watch_signals(r);
  return 0;
}

/* ------------------------------------------------------ run, tear-down */

/* Until every handle is closed: the bot, the console and the ops port stop
 * first (begin_stop), then the embedded gateway once its clients are gone. */
static int run_loop(run_ctx *r) {
  bool gw_stopper_started = false;
  while (uv_run(r->loop, UV_RUN_ONCE)) {
    if (r->stopping && r->gw && !gw_stopper_started) {
      gw_stopper_started = true;
      uv_timer_init(r->loop, &r->gw_stopper);
      r->gw_stopper.data = r;
      uv_timer_start(&r->gw_stopper, stop_gateway_when_clients_done, 20, 20);
    }
  }
  return r->exit_code;
}

/* Frees what run_setup made, in reverse, whether the run ended or set-up
 * stopped half-way; returns status. */
static int run_teardown(run_ctx *r, int status) {
  if (r->con) console_free(r->con);
  if (r->rt) parley_runtime_free(r->rt);
  if (status && r->sc) {
    /* A failed start may leave the ops port open: close it before freeing. */
    sidecar_close(r->sc, NULL, NULL);
    for (int i = 0; i < 8; i++) uv_run(r->loop, UV_RUN_NOWAIT);
  }
  sidecar_free(r->sc);
  if (r->gw) pg_gateway_free(r->gw);
  if (r->gw_cfg) pg_config_free(r->gw_cfg);
  if (r->loop) uv_loop_close(r->loop);
  if (r->own_data_dir) pg_data_dir_remove(r->data_dir);
  return status;
}

int cli_run(int argc, char **argv) {
  run_args a = {0};
  int rc = run_parse_flags(argc, argv, &a);
  if (rc == RUN_GO) rc = run_parse_config(&a);
  if (rc != RUN_GO) return rc;
  run_ctx r = {0};
  rc = run_setup(&r, &a);
  if (rc == 0) rc = run_loop(&r);
  rc = run_teardown(&r, rc);
  return rc == 2 ? 2 : rc ? 1 : 0;
}
