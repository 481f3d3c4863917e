/* Embedding the Parley Lua runtime in a C program.
 *
 * The program owns the libuv loop; the runtime (one bot folder: bot.lua,
 * bot.yaml, templates/) connects to a gateway on that loop, next to
 * whatever else the program runs on it. SIGINT or SIGTERM drain the bot:
 * running handlers finish and their commits land, then the loop ends.
 *
 *   embed_lua <botdir> <ws-url> <token>
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include <uv.h>

#include "runtime.h"

typedef struct app {
  plr_runtime *rt;
  uv_signal_t sigint, sigterm;
  int exit_code;
} app;

static void on_stopped(void *ud) {
  app *a = ud;
  /* The runtime has closed its handles; closing ours lets uv_run return. */
  uv_close((uv_handle_t *)&a->sigint, NULL);
  uv_close((uv_handle_t *)&a->sigterm, NULL);
}

static void on_signal(uv_signal_t *s, int signum) {
  app *a = s->data;
  (void)signum;
  uv_signal_stop(&a->sigint);
  uv_signal_stop(&a->sigterm);
  plr_runtime_stop(a->rt, 10000, on_stopped, a);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s <botdir> <ws-url> <token>\n", argv[0]);
    return 2;
  }
  char err[2048];
  /* The same checks `parley lint` makes, before anything connects. */
  if (plr_load_check(argv[1], err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  uv_loop_t *loop = uv_default_loop();
  app a = {0};
  plr_options o = {
      .loop = loop,
      .bot_dir = argv[1],
      .url = argv[2],
      .token = argv[3],
      .log_format = 1, /* JSON lines on stderr */
      .log_level = 1,  /* info */
  };
  if (plr_runtime_new(&o, &a.rt, err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  uv_signal_init(loop, &a.sigint);
  uv_signal_init(loop, &a.sigterm);
  a.sigint.data = a.sigterm.data = &a;
  uv_signal_start(&a.sigint, on_signal, SIGINT);
  uv_signal_start(&a.sigterm, on_signal, SIGTERM);
  if (plr_runtime_start(a.rt) != 0) {
    fprintf(stderr, "cannot start the bot\n");
    return 1;
  }
  uv_run(loop, UV_RUN_DEFAULT);
  plr_runtime_free(a.rt);
  uv_loop_close(loop);
  return a.exit_code;
}
