/* parley: one binary, subcommands. */
#include <stdio.h>
#include <string.h>

#include <parley/client.h>

static int usage(FILE *out) {
  fprintf(out,
          "usage: parley <command> [options]\n"
          "\n"
          "commands:\n"
          "  gateway    run the reference gateway\n"
          "  run        run a bot (against the embedded gateway by default)\n"
          "  version    print the version\n");
  return out == stderr ? 2 : 0;
}

int main(int argc, char **argv) {
  if (argc < 2) return usage(stderr);
  if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
    printf("parley %s\n", parley_version());
    return 0;
  }
  if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help")) return usage(stdout);
  fprintf(stderr, "parley: unknown command '%s'\n", argv[1]);
  return usage(stderr);
}
