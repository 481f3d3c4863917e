/* Lines from standard input for the consoles (`parley run`, `parley chat`).
 *
 * Standard input may be a terminal, a pipe or a regular file; only a
 * blocking read handles all three alike, so a small thread reads lines with
 * getline and hands them to the loop through a uv_async. The reader pauses
 * while CLI_LINES_MAX_QUEUED lines wait, so a huge piped file cannot queue
 * without bound; a line longer than CLI_LINES_MAX_LINE bytes is cut.
 */
#ifndef PARLEY_CLI_LINES_H
#define PARLEY_CLI_LINES_H

#include <stdbool.h>

#define CLI_LINES_MAX_LINE 4096
#define CLI_LINES_MAX_QUEUED 1024

struct uv_loop_s;
typedef struct cli_lines cli_lines;

/* Starts reading. wake(ud) runs on the loop thread when lines (or the end
 * of input) are waiting; take them with cli_lines_take. */
int cli_lines_start(struct uv_loop_s *loop, void (*wake)(void *ud), void *ud,
                    cli_lines **out);

/* The next line without its newline, malloc'd (the caller frees it), or
 * NULL when none is waiting; *eof turns true once input ended and every
 * line was taken. */
char *cli_lines_take(cli_lines *l, bool *eof);

/* Stops delivering and closes the loop handle (the loop must run for the
 * close to finish). The reader may still block on a terminal: whichever
 * of the reader and the handle's close finishes last frees the state, so
 * nothing is touched after it is gone. NULL is a no-op. */
void cli_lines_close(cli_lines *l);

#endif
