/* Subcommands of the parley binary. Each takes argv with argv[0] being the
 * subcommand's name and returns the process exit code. */
#ifndef PARLEY_CLI_H
#define PARLEY_CLI_H

int cli_run(int argc, char **argv);
int cli_lint(int argc, char **argv);
int cli_chat(int argc, char **argv);
int cli_test(int argc, char **argv);
int cli_config(int argc, char **argv);

#endif
