/* Bot specs: the one interpreter of the YAML cases in a bot's spec/ folder.
 * docs/lua-api.md ("Specs") describes the format.
 *
 * The interpreter has three parts, used by both runners:
 *   - plr_spec_validate checks a spec file before anything runs: unknown
 *     keys are errors with file:line and a suggestion, as in bot.yaml;
 *   - plr_spec_step_parse turns one step into a plr_spec_step;
 *   - plr_spec_check judges a step's expectations against what the step
 *     caused (a plr_spec_view).
 * The runners only make the step happen and collect what it caused:
 *   - the in-process runner here (plr_spec_run_dir, no gateway: the runtime
 *     on a recording driver, HTTP from stubs, a simulated clock), used by
 *     the unit tests;
 *   - `parley test` (cli/spec/), the same cases over the real protocol and
 *     the embedded gateway, with faults when asked.
 */
#ifndef PARLEY_LUA_SPEC_H
#define PARLEY_LUA_SPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <parley/types.h>

#include "config/config.h"

/* The agent the runners use when a step names none. */
#define PLR_SPEC_AGENT "spec-agent"

typedef enum plr_spec_step_kind {
  PLR_STEP_SEND = 1,  /* the customer sends a text */
  PLR_STEP_POSTBACK,  /* the customer taps a button */
  PLR_STEP_OPEN,      /* the customer opens the conversation */
  PLR_STEP_WAIT,      /* the simulated clock moves on */
  PLR_STEP_EVENT,     /* a conversation event */
  PLR_STEP_AGENT,     /* an agent holding the conversation writes */
} plr_spec_step_kind;

/* One step, parsed. Strings are borrowed from the spec document. */
typedef struct plr_spec_step {
  plr_spec_step_kind kind;
  int line;
  const char *text;            /* send; open ("hi" by default); agent */
  const char *payload, *label; /* postback (label defaults to the payload) */
  uint64_t wait_ms;            /* wait */
  parley_event_kind event;     /* event */
  const char *event_name;      /* event: the kind as written */
  const char *assignee, *queue, *note, *locale; /* event */
  const char *agent;           /* agent: who writes (NULL: the one holding it) */
  const char *quote;           /* agent: the text of an earlier message to quote */
  const pc_node *tags;         /* agent: tags added with the message */
  bool handler_fails;          /* a handler failure in this step is expected */
  const pc_node *expect;       /* the expectations (a list), or NULL */
} plr_spec_step;

/* One thing a step caused, as the checks see it. Strings are never NULL. */
typedef struct plr_spec_item {
  uint64_t seq;
  int kind;      /* parley_event_kind: MESSAGE, HANDED_OFF, CLOSED, ... */
  bool from_bot; /* a message or action of the bot */
  int ctype;     /* parley_content_kind of a message */
  const char *sender;
  const char *text, *title, *labels; /* labels: "\n"-joined button labels */
  uint64_t quote_seq;
  const char *quote_excerpt;
  const char *queue, *note;
} plr_spec_item;

/* What the checks look at after a step. */
typedef struct plr_spec_view {
  const plr_spec_item *const *items; /* what the step caused, in seq order */
  size_t n_items;
  const char *const *state_keys, *const *state_vals; /* committed state, values as JSON */
  size_t n_state;
  const char *const *tags; /* the conversation's tags now */
  size_t n_tags;
  const char *const *tags_before; /* ... and when the step began */
  size_t n_tags_before;
  /* The bot's last commit may not be applied yet (a fault run killed it
   * between a handoff and its commit): state, tags and timers are not
   * judged, what the customer saw still is. */
  bool commit_unknown;
} plr_spec_view;

/* Checks a spec document (a list of cases) before it runs: case, step,
 * event, agent, stub and expectation keys, event kinds and durations.
 * Returns 0, or PARLEY_ECONFIG with "file:line: key: message" (and a
 * suggestion for a misspelt key) in err. */
int plr_spec_validate(const pc_node *root, char *err, size_t errlen);

/* Parses one step; returns false with why filled for a step that is not
 * one (plr_spec_validate reports those first, with their line). */
bool plr_spec_step_parse(const pc_node *st, plr_spec_step *out, char *why, size_t whylen);

/* A spec's duration: "500ms", "90s", "5m", "1h" as in the config, or a bare
 * number of seconds ("121", "0.5"). Returns 0 or PARLEY_EINVAL. */
int plr_spec_duration_ms(const char *s, uint64_t *ms);

/* Judges every expectation of expect (a list of maps) against v. Returns
 * true when all hold; otherwise false with the first failure in why. */
bool plr_spec_check(const pc_node *expect, const plr_spec_view *v, char *why, size_t whylen);

/* Structural comparison of a committed value (JSON) with a YAML
 * expectation: a mapping matches an object that has at least its keys
 * (each matching, key order free; a null expects the key absent), a
 * sequence matches an array of the same length item by item, a scalar
 * matches the same text, number or boolean (a quoted scalar only a
 * string). json NULL is an absent value. */
bool plr_spec_value_matches(const char *json, const pc_node *want, char *why, size_t whylen);

/* The latest item of items[0..n) whose text is quote (else one containing
 * it); NULL when there is none. For an agent step's `quote:`. */
const plr_spec_item *plr_spec_find_quote(const plr_spec_item *const *items, size_t n,
                                         const char *quote);

/* A YAML node in flow style ("x", [a, b], {k: v}), appended to out. */
void plr_spec_flow(const pc_node *n, char *out, size_t size);

typedef struct plr_spec_result {
  int files, cases, passed, failed;
} plr_spec_result;

/* Runs every .yaml file of bot_dir/spec (sorted) in process. Reports one
 * line per case on out ("PASS file: name" / "FAIL file:line: name: why").
 * Returns 0 when every case passed, PARLEY_ECONFIG for a malformed spec or
 * bot, PARLEY_EINVAL when a case failed. res may be NULL. */
int plr_spec_run_dir(const char *bot_dir, FILE *out, plr_spec_result *res);

/* Runs one spec file against the bot in process. */
int plr_spec_run_file(const char *bot_dir, const char *spec_path, FILE *out,
                      plr_spec_result *res);

#endif
