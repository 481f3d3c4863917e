/* parley: one binary, subcommands. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>

#include <parley/client.h>

#include <lauxlib.h>

#include "cli.h"
#include "config/config.h"
#include "rt.h"
#include "gateway.h"
#include <parley/runtime.h>

static int usage(FILE *out) {
  fprintf(out,
          "usage: parley <command> [options]\n"
          "\n"
          "commands:\n"
          "  run <botdir>       run a bot (against the embedded gateway by default)\n"
          "  gateway            run the reference gateway\n"
          "  lint <botdir>      load and check a bot without connecting\n"
          "  test <botdir>      run a bot's spec files against it (--faults, --seed N, --watch)\n"
          "  new bot NAME       write a starting bot that passes lint and test\n"
          "  chat               a console as a customer or an agent against a gateway\n"
          "  config check FILE  check a gateway, bot or sidecar config\n"
          "  version            print the version\n"
          "\n"
          "`parley <command> --help` describes a command's options.\n");
  return out == stderr ? 2 : 0;
}

int cli_lint(int argc, char **argv) {
  static const char use[] = "usage: parley lint <botdir> [--strict]\n"
                            "  --strict   warnings (unused plural categories, keys missing in a\n"
                            "             locale, files named like no locale) fail the lint\n";
  if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
    fputs(use, stdout);
    return 0;
  }
  if (argc < 2) {
    fputs(use, stderr);
    return 2;
  }
  const char *dir = argv[1];
  bool strict = argc >= 3 && !strcmp(argv[2], "--strict");
  if (argc > 3 || (argc == 3 && !strict)) {
    fputs(use, stderr);
    return 2;
  }
  char err[4096];
  if (parley_runtime_check(dir, err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  /* Warnings: what loads but is likely a mistake (templates.c). */
  char path[1200];
  snprintf(path, sizeof path, "%s/bot.yaml", dir);
  pc_doc *doc = NULL;
  pc_error pe;
  const char *locale = "en";
  if (pc_load_file(path, &doc, &pe) == 0) pc_get_str(pc_root(doc), "default_locale", "en", &locale, &pe);
  char warn[8192] = "";
  int nwarn = 0;
  lua_State *L = luaL_newstate();
  if (L) {
    plr_templates_load_warn(L, dir, locale, err, sizeof err, warn, sizeof warn, &nwarn);
    lua_close(L);
  }
  pc_doc_free(doc);
  if (nwarn) {
    for (char *line = strtok(warn, "\n"); line; line = strtok(NULL, "\n"))
      fprintf(stderr, "warning: %s\n", line);
    printf("%s: ok, %d warning%s%s\n", dir, nwarn, nwarn == 1 ? "" : "s",
           strict ? " (--strict: failing)" : "");
    return strict ? 1 : 0;
  }
  printf("%s: ok\n", dir);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) return usage(stderr);
  /* libwebsockets logs notices to stderr by default; the CLI reports what
   * matters itself, so only lws errors and warnings get through, unless
   * PARLEY_LWS_LOG gives lws's own level mask. */
  const char *lws_level = getenv("PARLEY_LWS_LOG");
  lws_set_log_level(lws_level ? atoi(lws_level) : (LLL_ERR | LLL_WARN), NULL);
  const char *cmd = argv[1];
  if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
    printf("parley %s (protocol v%d)\n", parley_version(), PARLEY_PROTOCOL_VERSION);
    return 0;
  }
  if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) return usage(stdout);
  if (!strcmp(cmd, "run")) return cli_run(argc - 1, argv + 1);
  if (!strcmp(cmd, "gateway")) return pg_gateway_main(argc - 1, argv + 1);
  if (!strcmp(cmd, "lint")) return cli_lint(argc - 1, argv + 1);
  if (!strcmp(cmd, "test")) return cli_test(argc - 1, argv + 1);
  if (!strcmp(cmd, "chat")) return cli_chat(argc - 1, argv + 1);
  if (!strcmp(cmd, "config")) return cli_config(argc - 1, argv + 1);
  if (!strcmp(cmd, "new")) return cli_new(argc - 1, argv + 1);
  fprintf(stderr, "parley: unknown command '%s'\n", cmd);
  return usage(stderr);
}

int cli_url_append(char *list, size_t cap, const char *url) {
  size_t n = strnlen(list, cap);
  if (n >= cap || (size_t)snprintf(list + n, cap - n, "%s%s", n ? "," : "", url) >= cap - n) {
    if (n < cap) list[n] = '\0'; /* the list stays as it was */
    fprintf(stderr, "parley: --url: the list of gateway URLs is too long\n");
    return -1;
  }
  return 0;
}

int cli_gateway_flag(cli_gateway_flags *f, int ch, const char *arg) {
  switch (ch) {
  case 'u':
    if (cli_url_append(f->url_list, sizeof f->url_list, arg)) return -1;
    f->url = f->url_list;
    return 1;
  case 't': f->token = arg; return 1;
  case 'p': f->principal = arg; return 1;
  case 'k': f->insecure = true; return 1;
  default: return 0;
  }
}
