/* The gateway YAML's `storage:` section: which backend holds the log.
 *
 *   storage:
 *     kind: postgres                  # sqlite (the default) or postgres
 *     url: "host=db.internal dbname=parley user=parley sslmode=verify-full"
 *     password_env: PARLEY_PG_PASSWORD  # or password_file: /run/secrets/pg
 *     # or, instead of url, several databases (conversations spread by a
 *     # hash of their id; the same list in the same order on every node):
 *     # shards: ["host=db1 dbname=parley", "host=db2 dbname=parley"]
 *     pool: 3                         # connections per node per database
 *
 * url is a libpq connection string, keywords or a postgresql:// URI. A
 * password inside it is refused: the YAML is not the place for secrets.
 * It comes from the environment variable password_env names, or the first
 * line of password_file, or libpq's own PGPASSWORD / passfile. docs/gateway.md,
 * "Storage backends", has the details.
 */
#ifndef PARLEY_GW_STORAGE_CFG_H
#define PARLEY_GW_STORAGE_CFG_H

#include "config/config.h"

/* Several databases (storage.shards): the connection strings are joined
 * by this byte in *conninfo, in the order given, and *kind is
 * "postgres-shards" (store/shard.c). */
#define PG_STORAGE_SHARD_SEP '\x1e'
#define PG_STORAGE_MAX_SHARDS 64
/* The connections a node holds per database: the writer thread's, the
 * loop's reads, and the listener (storage.pool may not be lower). */
#define PG_STORAGE_POOL_MIN 3

/* Reads the section (n NULL: absent, SQLite). *kind is "sqlite",
 * "postgres" or "postgres-shards" (static); *conninfo (owned, NULL for
 * SQLite) is the connection string with the password added (several,
 * joined by PG_STORAGE_SHARD_SEP, for shards), for pg_store_options.url.
 * PARLEY_ECONFIG with err filled, or PARLEY_ENOMEM. */
int pg_storage_load(const pc_node *n, const char **kind, char **conninfo, pc_error *err);

/* Frees a conninfo after wiping the password it may hold. */
void pg_storage_conninfo_free(char *conninfo);

#endif
