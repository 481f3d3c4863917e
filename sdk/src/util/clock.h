/* The clocks, read in one place for the SDK, the Lua runtime and the
 * gateway.
 *
 * The protocol engine never reads a clock: the layers that drive it read
 * this one and pass the value in. The monotonic readings have an arbitrary
 * origin, so only differences mean something, and wall-clock jumps do not
 * move deadlines. They come from CLOCK_MONOTONIC, the clock libuv arms its
 * timers on (uv_hrtime), so deadlines computed from them and timers on a
 * uv loop agree. A loop's cached time (uv_now) is a different thing, for
 * code that runs on that loop, and stays with it.
 */
#ifndef PARLEY_UTIL_CLOCK_H
#define PARLEY_UTIL_CLOCK_H

#include <stdint.h>

/* Monotonic milliseconds; never goes backwards. */
uint64_t pu_clock_ms(void);
/* Monotonic nanoseconds, for latencies and CPU budgets. */
uint64_t pu_clock_ns(void);
/* Milliseconds since the Unix epoch (wall clock), for timestamps that
 * leave the process: log lines, stored events, due times of bot timers. */
int64_t pu_wall_ms(void);

#endif /* PARLEY_UTIL_CLOCK_H */
