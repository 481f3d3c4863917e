/* The event as Lua handlers see it, and the names they see for kinds and
 * roles. Internal to the runtime; bench/micro measures the conversion on
 * its own, which is why it is not static in runtime.c.
 */
#ifndef PARLEY_LUA_EVENT_H
#define PARLEY_LUA_EVENT_H

#include <parley/types.h>

#include <stdbool.h>

struct lua_State;

/* Pushes the function that converts an inbound event (a parley_event,
 * given as a light userdata in its argument 1) into the table handlers
 * receive: a C closure made once per Lua state (it holds the table's keys,
 * interned) and kept in the registry. The function is to be called
 * protected; the runtime calls it for every event. The first push in a
 * state makes the closure (the state's boot does, with the cap lifted);
 * returns false, pushing nothing, when the stack cannot hold its names. */
bool plr_event_push_fn(struct lua_State *L);
/* The names handlers see for an event's kind, a sender's role and a
 * content kind ("message", "customer", "text"...). */
const char *plr_event_kind_name(parley_event_kind kind);
const char *plr_role_name(parley_role role);
const char *plr_content_name(parley_content_kind kind);

#endif
