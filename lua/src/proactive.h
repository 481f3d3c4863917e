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

/* Proactive conversations (docs/lua-api.md, docs/operations.md). */

/* "px-" and 32 hex digits. */
#define PLR_OPEN_CONV_LEN 35
/* How long an open that the gateway stored waits for its Assign. */
#define PLR_OPEN_ASSIGN_MS 10000

/* The ids of an open with this key: the new conversation's id, the open's
 * message id and the first message's, all BLAKE2b of (bot principal,
 * customer, key) under a domain string, so that the same key opens the
 * same conversation again (a duplicate) and another key another one. */
void plr_open_ids(const char *principal, const char *customer, const char *key,
                  char conv[PLR_OPEN_CONV_LEN + 1], uint8_t open_id[PARLEY_MSG_ID_LEN],
                  uint8_t msg_id[PARLEY_MSG_ID_LEN]);

/* The outcome of plr_runtime_open_json: status 0 with the first message's
 * seq, duplicate when the gateway already had the open (the same key);
 * otherwise a PARLEY_E* status and, when known, why (borrowed for the
 * call). */
typedef void (*plr_open_done)(void *ud, int status, const char *conversation, uint64_t seq,
                              bool duplicate, const char *why);

/* Opens a conversation with customer, where the gateway's policy allows
 * it, and sends json ({"template", "vars"?, "quick_replies"? | "card"?})
 * as its first message, rendered in the customer's locale with the same
 * checks as a Lua reply. key makes it idempotent. The new conversation's
 * id goes to conv_out and the first message's id to msg_id_out (may be
 * NULL) at once. Returns 0 when under way: done follows
 * exactly once, from the loop. Otherwise PARLEY_EINVAL (err says why: a
 * bad customer, key or reply), PARLEY_ESHUTDOWN, PARLEY_ENOMEM, or the
 * client's refusal, and done is never called. */
int plr_runtime_open_json(struct parley_runtime *r, const char *customer, const char *key,
                          const char *json, plr_open_done done, void *ud,
                          char conv_out[PLR_OPEN_CONV_LEN + 1],
                          uint8_t msg_id_out[PARLEY_MSG_ID_LEN], char *err, size_t errlen);

/* Runtime internals: a JOB_OPEN's send result, an Assign, and the runtime
 * going away. */
struct plr_job;
struct parley_send_result;
void plr_open_on_result(struct parley_runtime *r, struct plr_job *j,
                        const struct parley_send_result *res);
void plr_open_on_assign(struct parley_runtime *r, const char *conversation);
void plr_open_drop_all(struct parley_runtime *r);
/* C.open(conv, customer, key|nil, reply_json) for ctx:open_conversation:
 * returns the new conversation's id, or nil and a message. Without a key,
 * the key is derived from the running handler's event (or timer) and its
 * send ordinal, so a handler that runs again opens nothing twice. */
struct lua_State;
int plr_l_open(struct lua_State *L);

#endif
