/* PARLEY_ASSERT: an invariant the code relies on and does not test.
 *
 * Where a function's correctness rests on something its callers guarantee
 * (a count that cannot underflow because every decrement follows an
 * increment, a buffer that is never fuller than its maximum, a Lua stack
 * at a known height), the assertion says so in code, as Lua's api_check
 * and Redis's serverAssert do. It is not input validation: bad input from
 * a peer, a config file or bot code gets an error code, never an assert.
 *
 * On in Debug builds and in sanitizer and fuzzing builds (CMake defines
 * PARLEY_ASSERTS there), where a broken invariant aborts at once with its
 * expression and place, before it corrupts anything further. Off in
 * release builds: the condition is then not evaluated (only type-checked),
 * so it may be as costly as it needs to be but must have no side effects.
 */
#ifndef PARLEY_UTIL_ASSERT_H
#define PARLEY_UTIL_ASSERT_H

#if defined(PARLEY_ASSERTS) && PARLEY_ASSERTS
#define PARLEY_ASSERT(cond) \
  ((cond) ? (void)0 : pu_assert_fail(#cond, __FILE__, __LINE__, __func__))
#else
#define PARLEY_ASSERT(cond) ((void)sizeof(!(cond)))
#endif

/* Writes "file:line: func: invariant failed: expr" to stderr and aborts. */
_Noreturn void pu_assert_fail(const char *expr, const char *file, int line,
                              const char *func);

#endif /* PARLEY_UTIL_ASSERT_H */
