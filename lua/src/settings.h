/* Typed settings of bot.yaml (settings_schema); see settings.c. */
#ifndef PLR_SETTINGS_H
#define PLR_SETTINGS_H

#include "config/config.h"

#include <stddef.h>

/* Checks root's settings_schema and its settings (environment overrides
 * applied); on an error writes "file:line: message" and returns
 * PARLEY_ECONFIG. No schema: 0. */
int plr_settings_check(const pc_node *root, char *err, size_t errlen);

#endif
