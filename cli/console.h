/* A customer console on a parley_client: lines typed (or piped) become
 * messages, events of the conversation are rendered as text.
 *
 * Interactive (a terminal): a prompt, system events shown, a number picks a
 * button or quick reply of the last message that had some.
 * Piped: each stdin line is one message, only other participants' messages
 * go to stdout, and at end of input the console reports "drained" once its
 * sends are answered, so the caller can wait for the bot and exit.
 */
#ifndef PARLEY_CLI_CONSOLE_H
#define PARLEY_CLI_CONSOLE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <parley/client.h>

struct uv_loop_s;
typedef struct console console;

typedef struct console_options {
  struct uv_loop_s *loop;
  const char *url;
  const char *principal;
  const char *token;
  const char *conversation; /* NULL: a fresh id */
  const char *locale;
  bool interactive;         /* render for a person at a terminal */
  bool color;
  FILE *out;
  bool tls_insecure;
  /* Called once after end of input when every send was answered. */
  void (*on_input_done)(void *ud);
  void *ud;
} console_options;

int console_new(const console_options *o, console **out);
int console_start(console *c);
void console_stop(console *c);
void console_free(console *c);

const char *console_conversation(const console *c);
/* Highest seq this console sent and had acknowledged. */
uint64_t console_last_sent_seq(const console *c);
/* Highest seq delivered to this console. */
uint64_t console_last_seen_seq(const console *c);
/* Sends that failed for good. */
unsigned console_failures(const console *c);
/* Messages of others (the bot, agents) shown so far, in any conversation. */
unsigned console_replies(const console *c);
parley_client *console_client(console *c);

/* Renders one event as text lines (shared with `parley chat`). Messages of
 * self are left out (the user typed them); self NULL shows every message.
 * prefix (or NULL), such as "#18 " or "[conversation] ", starts the line
 * that names the sender or the event, after any quote line. */
void console_render_event(FILE *out, const parley_event *ev, const char *self,
                          bool interactive, bool color, const char *prefix);

#endif
