/* Embedding the Parley Lua runtime in a C program.
 *
 * The program owns the libuv loop; the runtime (one bot folder: bot.lua,
 * bot.yaml, templates/) connects to a gateway on that loop, next to
 * whatever else the program runs on it. SIGINT or SIGTERM drain the bot:
 * running handlers finish and their commits land, then the loop ends.
 *
 *   embed_lua <botdir> <ws-url> <token>
 */
/* uv.h needs POSIX's types (pthread_rwlock_t), which strict C11 hides. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include <uv.h>

#include <parley/runtime.h>

typedef struct app {
  parley_runtime *rt;
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
  parley_runtime_stop(a->rt, 10000, on_stopped, a);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s <botdir> <ws-url> <token>\n", argv[0]);
    return 2;
  }
  char err[2048];
  /* The same checks `parley lint` makes, before anything connects. */
  if (parley_runtime_check(argv[1], err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  uv_loop_t *loop = uv_default_loop();
  app a = {0};
  parley_runtime_options o = {
      .struct_version = PARLEY_RUNTIME_OPTIONS_VERSION,
      .loop = loop,
      .bot_dir = argv[1],
      .url = argv[2],
      .token = argv[3],
      .log_format = PARLEY_LOG_JSON, /* JSON lines on stderr */
      .log_level = PARLEY_LOG_INFO,
  };
  if (parley_runtime_new(&o, &a.rt, err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  uv_signal_init(loop, &a.sigint);
  uv_signal_init(loop, &a.sigterm);
  a.sigint.data = a.sigterm.data = &a;
  uv_signal_start(&a.sigint, on_signal, SIGINT);
  uv_signal_start(&a.sigterm, on_signal, SIGTERM);
  if (parley_runtime_start(a.rt) != 0) {
    fprintf(stderr, "cannot start the bot\n");
    return 1;
  }
  uv_run(loop, UV_RUN_DEFAULT);
  parley_runtime_free(a.rt);
  uv_loop_close(loop);
  return a.exit_code;
}
