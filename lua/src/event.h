/* The event as Lua handlers see it, and the names they see for kinds and
 * roles. Internal to the runtime; bench/micro measures plr_event_push on
 * its own, which is why it is not static in runtime.c.
 */
#ifndef PARLEY_LUA_EVENT_H
#define PARLEY_LUA_EVENT_H

#include <parley/types.h>

struct lua_State;

/* Pushes an inbound event (a parley_event, given as a light userdata in
 * argument 1) as the table handlers receive it. A lua_CFunction, to be run
 * protected; the runtime calls it for every event. */
int plr_event_push(struct lua_State *L);
/* The names handlers see for an event's kind, a sender's role and a
 * content kind ("message", "customer", "text"...). */
const char *plr_event_kind_name(parley_event_kind kind);
const char *plr_role_name(parley_role role);
const char *plr_content_name(parley_content_kind kind);

#endif
