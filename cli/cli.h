/* Subcommands of the parley binary. Each takes argv with argv[0] being the
 * subcommand's name and returns the process exit code. */
#ifndef PARLEY_CLI_H
#define PARLEY_CLI_H

#include <stdbool.h>
#include <stddef.h>

int cli_run(int argc, char **argv);
int cli_lint(int argc, char **argv);
int cli_chat(int argc, char **argv);
int cli_test(int argc, char **argv);
int cli_config(int argc, char **argv);
int cli_new(int argc, char **argv);
/* `parley test --watch`: runs cli_test(argc, argv) in a child, again after
 * each change under bot_dir, until SIGINT or max_runs runs (0: no limit).
 * Returns the last run's exit code. */
int cli_test_watch(int argc, char **argv, const char *bot_dir, long max_runs);

/* A repeated --url adds a failover node: url goes at the end of list (cap
 * bytes, comma-separated, the form libparley reads). Returns 0, or -1
 * after printing why (the list would be too long). */
#define CLI_URL_LIST_MAX 4096
int cli_url_append(char *list, size_t cap, const char *url);

/* The flags of every command that connects to a gateway as someone:
 * --url (repeatable, for failover nodes), --token, --principal and
 * --insecure. Put CLI_GATEWAY_OPTIONS in the getopt_long table and "u:t:p:k"
 * in its short options, and hand each option to cli_gateway_flag first. */
#define CLI_GATEWAY_OPTIONS                                                                 \
  {"url", required_argument, 0, 'u'}, {"token", required_argument, 0, 't'},                 \
      {"principal", required_argument, 0, 'p'}, {"insecure", no_argument, 0, 'k'}
typedef struct cli_gateway_flags {
  const char *url; /* NULL, or url_list */
  const char *token, *principal;
  bool insecure;
  char url_list[CLI_URL_LIST_MAX];
} cli_gateway_flags;
/* 1 when ch was one of those flags (taken into f), 0 when it was not, -1
 * after printing why a --url cannot be taken (the usage error, exit 2). */
int cli_gateway_flag(cli_gateway_flags *f, int ch, const char *arg);

#endif
