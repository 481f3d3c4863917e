/* Monotonic time for the layers that drive the sans-I/O engine.
 *
 * The engine never reads a clock: the client reads this one and passes the
 * value in. Milliseconds on a monotonic clock with an arbitrary origin, so
 * differences are meaningful and wall-clock jumps do not move deadlines.
 */
#ifndef PARLEY_UTIL_CLOCK_H
#define PARLEY_UTIL_CLOCK_H

#include <stdint.h>

/* Milliseconds since an arbitrary fixed point; never goes backwards. */
uint64_t pu_clock_ms(void);

#endif /* PARLEY_UTIL_CLOCK_H */
