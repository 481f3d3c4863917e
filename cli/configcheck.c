/* `parley config check <file> [--kind gateway|bot|sidecar]`: loads a
 * gateway config with the gateway's own loader, a bot.yaml with the
 * runtime's loader on its folder, or a sidecar config with `parley run`'s
 * loader, and prints "ok" or the error as "file:line: key: message".
 *
 * Without --kind a file named bot.yaml, or a folder, is a bot; a file whose
 * name starts with "sidecar" is a sidecar config; anything else is a
 * gateway config.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "gateway.h"
#include <parley/runtime.h>
#include "sidecar.h"

static int usage_to(FILE *out) {
  fprintf(out,
          "usage: parley config check <file> [--kind gateway|bot|sidecar]\n"
          "  gateway: a `parley gateway --config` file (environment overrides applied)\n"
          "  bot:     a bot's bot.yaml (or its folder): config, templates and bot.lua\n"
          "  sidecar: a `parley run --config` file (PARLEY_SIDECAR_* overrides applied)\n");
  return out == stdout ? 0 : 2;
}

static int usage(void) { return usage_to(stderr); }

int cli_config(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return usage_to(stdout);
  if (argc < 2 || strcmp(argv[1], "check")) return usage();
  const char *file = NULL, *kind = NULL;
  for (int i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "--kind") && i + 1 < argc) {
      kind = argv[++i];
    } else if (!strncmp(argv[i], "--kind=", 7)) {
      kind = argv[i] + 7;
    } else if (argv[i][0] == '-') {
      return usage();
    } else if (!file) {
      file = argv[i];
    } else {
      return usage();
    }
  }
  if (!file) return usage();
  struct stat sb;
  bool is_dir = stat(file, &sb) == 0 && S_ISDIR(sb.st_mode);
  if (!kind) {
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    kind = is_dir || !strcmp(base, "bot.yaml")   ? "bot"
           : !strncmp(base, "sidecar", 7)         ? "sidecar"
                                                  : "gateway";
  }
  char err[4096];
  if (!strcmp(kind, "gateway")) {
    pg_config *cfg = NULL;
    if (pg_config_load(file, &cfg, err, sizeof err) != 0) {
      fprintf(stderr, "%s\n", err);
      return 1;
    }
    pg_config_free(cfg);
  } else if (!strcmp(kind, "bot")) {
    /* A bot is checked as a whole: its folder holds bot.yaml. */
    char dir[4096];
    if (is_dir) {
      snprintf(dir, sizeof dir, "%s", file);
    } else {
      const char *slash = strrchr(file, '/');
      if (slash)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - file), file);
      else
        snprintf(dir, sizeof dir, ".");
      if (!dir[0]) snprintf(dir, sizeof dir, "/");
      const char *base = slash ? slash + 1 : file;
      if (strcmp(base, "bot.yaml")) {
        fprintf(stderr, "%s:0: bot: a bot's config file is named bot.yaml\n", file);
        return 1;
      }
    }
    if (parley_runtime_check(dir, err, sizeof err) != 0) {
      fprintf(stderr, "%s\n", err);
      return 1;
    }
  } else if (!strcmp(kind, "sidecar")) {
    if (sidecar_config_check(file, err, sizeof err) != 0) {
      fprintf(stderr, "%s\n", err);
      return 1;
    }
  } else {
    fprintf(stderr, "parley config check: --kind is gateway, bot or sidecar, not '%s'\n", kind);
    return 2;
  }
  printf("ok\n");
  return 0;
}
