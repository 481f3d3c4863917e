/* clock_gettime(2) directly: CLOCK_MONOTONIC is what uv_hrtime reads, so
 * this agrees with libuv's timers without tying util/ to libuv. */
#include "util/clock.h"

#include <time.h>

uint64_t pu_clock_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t pu_clock_ms(void) { return pu_clock_ns() / 1000000u; }

int64_t pu_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
