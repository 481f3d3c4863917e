/* Monotonic milliseconds, from the same source libuv uses for its timers
 * (uv_hrtime reads CLOCK_MONOTONIC), so deadlines computed from this clock
 * and timers armed on a uv loop agree with each other. */
#include "util/clock.h"

#include <uv.h>

uint64_t pu_clock_ms(void) { return uv_hrtime() / 1000000u; }
