/* What a bot may send, the same whichever way it sends it: a Lua reply
 * (ctx:reply, checked in lua/lib/runtime.lua: TEXT_MAX, BUTTONS_MAX) or the
 * sidecar API (POST /v1/conversations/{id}/messages, sidecar.c). One set of
 * limits, so that a message the API accepts is one a handler could send,
 * and the other way round; tests/ops/test_ops_sidecar.c checks that
 * runtime.lua states the same numbers. */
#ifndef PARLEY_OPS_LIMITS_H
#define PARLEY_OPS_LIMITS_H

/* Bytes of a message's text, and of each card string (title, text, a
 * button's label, payload or url). */
#define PARLEY_REPLY_TEXT_MAX (16u * 1024u)
/* Buttons of a card, options of quick replies. */
#define PARLEY_REPLY_BUTTONS_MAX 12u

#endif
