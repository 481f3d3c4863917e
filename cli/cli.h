/* Subcommands of the parley binary. Each takes argv with argv[0] being the
 * subcommand's name and returns the process exit code. */
#ifndef PARLEY_CLI_H
#define PARLEY_CLI_H

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

#endif
