/* The one error table: names and messages come from PARLEY_ERRNO_MAP. */
#include <parley/error.h>
#include <parley/types.h>

const char *parley_strerror(int status) {
  switch (status) {
#define PARLEY__ERR_MSG(name, value, msg) \
  case (value):                           \
    return msg;
    PARLEY_ERRNO_MAP(PARLEY__ERR_MSG)
#undef PARLEY__ERR_MSG
  default:
    return "unknown error";
  }
}

const char *parley_errname(int status) {
  switch (status) {
#define PARLEY__ERR_NAME(name, value, msg) \
  case (value):                            \
    return "PARLEY_E" #name;
    PARLEY_ERRNO_MAP(PARLEY__ERR_NAME)
#undef PARLEY__ERR_NAME
  default:
    return "PARLEY_EUNKNOWN";
  }
}

const char *parley_version(void) {
#ifdef PARLEY_VERSION_STRING
  return PARLEY_VERSION_STRING;
#else
  return "0.0.0";
#endif
}
