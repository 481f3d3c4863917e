/* Subcommands of the parley binary. Each takes argv with argv[0] being the
 * subcommand's name and returns the process exit code. */
#ifndef PARLEY_CLI_H
#define PARLEY_CLI_H

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

#endif
