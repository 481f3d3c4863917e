/* `parley gateway`: runs the reference gateway until SIGTERM or SIGINT. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>
#include <sodium.h>
#include <uv.h>

#include <parley/error.h>

#include "gw.h"
#include "web.h"

static int usage(FILE *out) {
  fprintf(out,
          "usage: parley gateway --config FILE [--port N] [--data-dir DIR]\n"
          "       parley gateway token --secret SECRET --principal NAME\n"
          "       parley gateway hash-token TOKEN\n"
          "\n"
          "  token       prints the token of a customer principal, minted with the\n"
          "              customers.secret of the configuration\n"
          "  hash-token  prints sha256:<hex> of a token, for principals.token_hash\n");
  return out == stderr ? 2 : 0;
}

typedef struct run_state {
  pg_gateway *g;
  uv_signal_t sigterm, sigint;
  int stopping;
} run_state;

static void on_closed(uv_handle_t *h) { (void)h; }

static void on_stopped(void *ud) {
  run_state *rs = ud;
  uv_close((uv_handle_t *)&rs->sigterm, on_closed);
  uv_close((uv_handle_t *)&rs->sigint, on_closed);
}

static void on_signal(uv_signal_t *s, int signum) {
  run_state *rs = s->data;
  (void)signum;
  if (rs->stopping++) return;
  pg_gateway_stop(rs->g, on_stopped, rs);
}

static int cmd_token(int argc, char **argv) {
  const char *secret = NULL, *principal = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--secret") && i + 1 < argc) secret = argv[++i];
    else if (!strcmp(argv[i], "--principal") && i + 1 < argc) principal = argv[++i];
    else return usage(stderr);
  }
  if (!secret || !principal) return usage(stderr);
  size_t sl = strlen(secret);
  if (sl < crypto_generichash_KEYBYTES_MIN || sl > crypto_generichash_KEYBYTES_MAX) {
    fprintf(stderr, "parley gateway token: the secret must be %d to %d bytes\n",
            crypto_generichash_KEYBYTES_MIN, crypto_generichash_KEYBYTES_MAX);
    return 2;
  }
  if (!pw_valid_conversation(principal)) {
    fprintf(stderr, "parley gateway token: principal names are 1-128 bytes of [A-Za-z0-9._:@-]\n");
    return 2;
  }
  char tok[65];
  if (pg_customer_token((const uint8_t *)secret, sl, principal, tok) != 0) return 1;
  printf("%s\n", tok);
  return 0;
}

static int cmd_hash(int argc, char **argv) {
  if (argc != 2) return usage(stderr);
  uint8_t h[32];
  char hex[65];
  crypto_hash_sha256(h, (const uint8_t *)argv[1], strlen(argv[1]));
  sodium_bin2hex(hex, sizeof hex, h, sizeof h);
  printf("sha256:%s\n", hex);
  return 0;
}

int pg_gateway_main(int argc, char **argv) {
  if (sodium_init() < 0) return 1;
  if (argc >= 2 && !strcmp(argv[1], "token")) return cmd_token(argc - 1, argv + 1);
  if (argc >= 2 && !strcmp(argv[1], "hash-token")) return cmd_hash(argc - 1, argv + 1);
  const char *config = NULL, *data_dir = NULL;
  long port = -1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--config") && i + 1 < argc) config = argv[++i];
    else if (!strcmp(argv[i], "--data-dir") && i + 1 < argc) data_dir = argv[++i];
    else if (!strcmp(argv[i], "--port") && i + 1 < argc) {
      char *end;
      port = strtol(argv[++i], &end, 10);
      if (*end || port < 0 || port > 65535) {
        fprintf(stderr, "parley gateway: --port wants 0..65535\n");
        return 2;
      }
    } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      return usage(stdout);
    } else {
      return usage(stderr);
    }
  }
  if (!config) return usage(stderr);
  char err[768];
  pg_config *cfg = NULL;
  if (pg_config_load(config, &cfg, err, sizeof err) != 0) {
    fprintf(stderr, "parley gateway: %s\n", err);
    return 2;
  }
  if (port >= 0) pg_config_set_port(cfg, (int)port);
  if (data_dir && pg_config_set_data_dir(cfg, data_dir) != 0) {
    pg_config_free(cfg);
    return 2;
  }
  lws_set_log_level(LLL_ERR | LLL_WARN, NULL);
  uv_loop_t loop;
  uv_loop_init(&loop);
  run_state rs = {0};
  int rc = pg_gateway_new(&loop, cfg, &rs.g);
  if (rc != 0) {
    fprintf(stderr, "parley gateway: cannot start: %s\n", parley_strerror(rc));
    pg_config_free(cfg);
    uv_loop_close(&loop);
    return 1;
  }
  printf("gateway listening on %s:%d\n", cfg->listen, pg_gateway_port(rs.g));
  pg_web_print(rs.g, stdout);
  fflush(stdout);
  pg_config_free(cfg);
  uv_signal_init(&loop, &rs.sigterm);
  uv_signal_init(&loop, &rs.sigint);
  rs.sigterm.data = rs.sigint.data = &rs;
  uv_signal_start(&rs.sigterm, on_signal, SIGTERM);
  uv_signal_start(&rs.sigint, on_signal, SIGINT);
  uv_run(&loop, UV_RUN_DEFAULT);
  pg_gateway_free(rs.g);
  /* lws may leave closed handles for one more pass. */
  uv_run(&loop, UV_RUN_NOWAIT);
  uv_loop_close(&loop);
  return 0;
}
