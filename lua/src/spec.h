/* Bot specs: runs the YAML cases in a bot's spec/ folder against the bot,
 * in process, with no gateway: the runtime is driven through a recording
 * driver, HTTP calls are answered from the case's stubs and timers run on
 * a simulated clock. docs/lua-api.md ("Specs") describes the format.
 */
#ifndef PARLEY_LUA_SPEC_H
#define PARLEY_LUA_SPEC_H

#include <stdio.h>

typedef struct plr_spec_result {
  int files, cases, passed, failed;
} plr_spec_result;

/* Runs every .yaml file of bot_dir/spec (sorted). Reports one line per case on
 * out ("PASS file: name" / "FAIL file: name: why"). Returns 0 when every
 * case passed, PARLEY_ECONFIG for a malformed spec or bot, PARLEY_EINVAL
 * when a case failed. res may be NULL. */
int plr_spec_run_dir(const char *bot_dir, FILE *out, plr_spec_result *res);

/* Runs one spec file against the bot. */
int plr_spec_run_file(const char *bot_dir, const char *spec_path, FILE *out,
                      plr_spec_result *res);

#endif
