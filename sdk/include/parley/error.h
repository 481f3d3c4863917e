/* Parley error codes.
 *
 * Every function that can fail returns an int status: 0 on success, one of
 * the negative PARLEY_E* codes below otherwise. The table is the single
 * source of the enum, the names and the messages (parley_strerror).
 */
#ifndef PARLEY_ERROR_H
#define PARLEY_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

/* X(name, value, message) */
#define PARLEY_ERRNO_MAP(X)                                                   \
  X(OK, 0, "success")                                                         \
  X(NOMEM, -1, "out of memory")                                               \
  X(INVAL, -2, "invalid argument")                                            \
  X(MALFORMED, -3, "malformed frame")                                         \
  X(TOOBIG, -4, "frame or value too large")                                   \
  X(VERSION, -5, "no common protocol version")                                \
  X(UNSUPPORTED, -6, "unsupported frame or feature")                          \
  X(UNAUTH, -7, "authentication failed")                                      \
  X(FORBIDDEN, -8, "not allowed for this principal")                          \
  X(NOTFOUND, -9, "not found")                                                \
  X(PROTOCOL, -10, "protocol violation by the peer")                          \
  X(STALE_EPOCH, -11, "assignment epoch is stale")                            \
  X(RATE_LIMITED, -12, "rate limited")                                        \
  X(TOO_MANY_CONN, -13, "too many connections")                               \
  X(CLOSED, -14, "conversation is closed")                                    \
  X(BACKPRESSURE, -15, "outbox full: retry after sends complete")             \
  X(TIMEOUT, -16, "timed out")                                                \
  X(ATTEMPTS, -17, "gave up after the maximum number of attempts")           \
  X(DISCONNECTED, -18, "not connected")                                       \
  X(SHUTDOWN, -19, "shutting down")                                           \
  X(IO, -20, "input/output error")                                            \
  X(CONFIG, -21, "configuration error")                                       \
  X(STATE, -22, "call not valid in the current state")                        \
  X(LUA, -23, "Lua error")                                                    \
  X(BUDGET, -24, "handler exceeded its budget")                               \
  X(HTTP, -25, "HTTP request failed")                                         \
  X(DENIED, -26, "host not allowed")                                          \
  X(DB, -27, "database error")                                                \
  X(INTERNAL, -28, "internal error")                                          \
  X(TLS, -29, "TLS error")                                                    \
  X(EXISTS, -30, "already exists")

typedef enum parley_status {
#define PARLEY__ERR_ENUM(name, value, msg) PARLEY_E##name = (value),
  PARLEY_ERRNO_MAP(PARLEY__ERR_ENUM)
#undef PARLEY__ERR_ENUM
} parley_status;

/* The message for a status code; never NULL, static storage. */
const char *parley_strerror(int status);

/* The symbolic name ("PARLEY_ETIMEOUT") for a status code; static storage. */
const char *parley_errname(int status);

#ifdef __cplusplus
}
#endif
#endif /* PARLEY_ERROR_H */
