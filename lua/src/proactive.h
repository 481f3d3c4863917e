/* Replies by template from the sidecar API; see proactive.c. */
#ifndef PLR_PROACTIVE_H
#define PLR_PROACTIVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <parley/types.h>

struct parley_runtime;

/* Renders json ({"template", "vars"?, "quick_replies"? | "card"?}) in the
 * conversation's locale, checks it as a Lua reply, and sends it with msg_id
 * as parley_runtime_send_proactive does (done follows on 0). On PARLEY_EINVAL
 * (a bad reply: unknown key, missing var, a limit) or PARLEY_ENOTFOUND, err
 * says why. */
int plr_runtime_send_reply_json(struct parley_runtime *r, const char *conversation,
                                const char *json, const uint8_t msg_id[PARLEY_MSG_ID_LEN],
                                void (*done)(void *ud, int status, uint64_t seq, bool duplicate),
                                void *ud, char *err, size_t errlen);

#endif
