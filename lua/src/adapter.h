/* The runtime's driver on a real parley_client (adapter.c), with hooks for
 * a caller that must see or replace part of what the driver does. `parley
 * test` is that caller: it answers the bot's HTTP calls from the spec's
 * stubs, reads a simulated clock, remembers the reply ids it derives,
 * holds inbound events back during a step and watches what the bot sends
 * and commits, while the connection, ACK and commit handling stay the one
 * implementation parley run uses. Internal to the runtime and the CLI.
 */
#ifndef PARLEY_LUA_ADAPTER_H
#define PARLEY_LUA_ADAPTER_H

#include "rt.h"

typedef struct plr_adapter_hooks {
  /* Replacements of the real HTTP client, clock and id derivation; NULL
   * keeps the real one. ud is the hooks' ud. */
  int (*http)(void *ud, const plr_http_req *req, plr_http_done done, void *cb_ud,
              void **handle);
  void (*http_cancel)(void *ud, void *handle);
  int64_t (*now_ms)(void *ud);
  void (*derive)(const char *principal, const char *conversation, uint64_t seq,
                 uint32_t ordinal, uint8_t out[PARLEY_MSG_ID_LEN]);
  /* Observers, each called before the runtime sees the same thing.
   * Pointers are borrowed for the call. on_event returns true when it
   * takes the event: the runtime does not see it then (the caller may hand
   * it over later with plr_rt_on_event). */
  bool (*on_event)(void *ud, const parley_event *ev);
  /* A send or an action the client accepted, for conversation. */
  void (*on_sent)(void *ud, const char *conversation);
  void (*on_send_result)(void *ud, const parley_send_result *res);
  void (*on_commit)(void *ud, const parley_commit *commits, size_t n);
  void (*on_assign)(void *ud, const parley_assignment *as);
  uint64_t seed; /* the client's jitter seed (parley_client_tuning.seed); 0: random */
  void *ud;
} plr_adapter_hooks;

/* parley_runtime_new with hooks (copied; NULL: none). */
int plr_runtime_new_hooked(const parley_runtime_options *o, const plr_adapter_hooks *hooks,
                           parley_runtime **out, char *err, size_t errlen);

#endif
