/* The SQLite backend's VFS (store/sqlite_vfs.c): SQLite's unix VFS with
 * each commit's WAL frames written in one pwrite(). */
#ifndef PARLEY_GW_SQLITE_VFS_H
#define PARLEY_GW_SQLITE_VFS_H

#include <stdbool.h>

/* The name to give sqlite3_open_v2: over "unix-excl" (exclusive true: the
 * process holds the file alone, the WAL index in its heap) or "unix".
 * Registered on the first call; if that failed, the base VFS's name. */
const char *pg_sqlite_vfs(bool exclusive);

#endif
