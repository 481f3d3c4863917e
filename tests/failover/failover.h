/* Failover runs: real `parley gateway` nodes, an echo bot (`parley run`
 * child process) and customers (libparley clients in this process), every
 * client holding the list of all node URLs. While customers send numbered
 * messages, the node a client is on is killed with SIGKILL; clients move to
 * the next URL of their list and resume from their cursors.
 *
 * Two shapes:
 *   - one node up at a time (SQLite: two processes cannot share one file):
 *     the killed node's data directory is started again as the *other*
 *     node, on the other URL, so every reconnect is a move to the next URL;
 *   - all nodes up at once over one shared store (PostgreSQL): the node
 *     every client is on is killed, the clients move to the next node of
 *     their list, and the node killed before is started again (empty
 *     memory, same database) before the next kill. Clients are all on one
 *     node at a time: delivery between nodes (a customer on one node, the
 *     bot on another) is not part of these runs.
 *
 * The checker counts, per customer: sends not ACKed (lost), ACKed seqs not
 * increasing in send order (reordered), delivered seqs that are not
 * 1, 2, 3, ... (gapped or doubled), a message or echo handed to the
 * application twice (duplicated), messages without their echo
 * (replies_missing), and how often each node URL was connected to.
 */
#ifndef PARLEY_TEST_FAILOVER_H
#define PARLEY_TEST_FAILOVER_H

#include <stdbool.h>
#include <stdint.h>

#define FO_MAX_NODES 3

typedef struct fo_scenario {
  const char *name;
  int nodes;             /* node URLs every client holds */
  bool shared_store;     /* all nodes up at once (PostgreSQL) */
  /* The gateway YAML of node i, without principals (added here). */
  const char *(*yaml)(int node, void *ud);
  void *ud;
  int customers;
  int msgs;              /* per customer */
  int kills;             /* SIGKILLs of a node during the run (or faults, below) */
  /* When set, each "kill" calls this instead (for example a restart of
   * the database) and no node is killed. */
  void (*fault)(void *ud);
  int deadline_s;
  /* Shared shape only: customer i starts on node i % nodes (its URL list
   * rotated) and the bot on the last node, so that customers and the bot
   * are on different nodes and delivery and bot placement go between
   * nodes; each kill takes node kills % nodes, whoever is on it. */
  bool spread;
} fo_scenario;

typedef struct fo_counts {
  uint64_t sent, acked, failed, delivered;
  uint64_t lost, duplicated, reordered, gapped, replies_missing;
  uint64_t kills, reconnects;
  uint64_t ready_on[FO_MAX_NODES]; /* READY states per node URL, all clients */
} fo_counts;

/* Runs the scenario and fills *out; 0 when it ran to the end (every send
 * answered and every echo in, before the deadline), -1 otherwise (the
 * counts then say what was missing). */
int fo_run(const fo_scenario *sc, fo_counts *out);

/* Prints the counts as one line named after the scenario. */
void fo_print(const fo_scenario *sc, const fo_counts *k);

#endif
