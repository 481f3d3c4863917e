/* The PostgreSQL backend's schema, as versioned migrations.
 *
 * Migration N takes a database from schema version N-1 to N. A gateway
 * applies the ones a database lacks at start-up, each in its own
 * transaction and under an advisory lock, so that nodes starting together
 * migrate once; it refuses a database whose version is newer than
 * PGB_SCHEMA_VERSION (a newer gateway migrated it: this one would misread
 * it). The applied versions are rows of parley_schema.
 *
 * Never edit a migration that was released: add the next one.
 */
#ifndef PARLEY_GW_PG_SCHEMA_H
#define PARLEY_GW_PG_SCHEMA_H

#define PGB_SCHEMA_VERSION 3

/* The advisory lock key held while migrating ("parley" in ASCII). */
#define PGB_MIGRATION_LOCK 0x7061726c6579LL

static const char *const pgb_migrations[PGB_SCHEMA_VERSION + 1] = {
    [0] = NULL,
    /* 1: the log, conversations, state and watermarks.
     *
     * parley_conversations.last_seq is the per-conversation sequencer: a
     * batch advances it with parley_advance() from the seq before its first
     * event to its last one, which takes the row lock and fails unless no
     * other node wrote in between (compare and set under the lock). The
     * events' primary key (conv, seq) and the unique (sender, msg_id) index
     * make a doubled seq or a doubled Send impossible whatever the nodes
     * believe. */
    [1] = "CREATE TABLE parley_conversations ("
          "  id text PRIMARY KEY,"
          "  customer text NOT NULL DEFAULT '',"
          "  assignee text NOT NULL DEFAULT '',"
          "  bot text NOT NULL DEFAULT '',"
          "  locale text NOT NULL DEFAULT '',"
          "  queue text NOT NULL DEFAULT '',"
          "  note text NOT NULL DEFAULT '',"
          "  tags text NOT NULL DEFAULT '',"
          "  status smallint NOT NULL DEFAULT 0,"
          "  epoch bigint NOT NULL DEFAULT 0,"
          "  state_version bigint NOT NULL DEFAULT 0,"
          "  queued_ms bigint NOT NULL DEFAULT 0,"
          "  last_seq bigint NOT NULL DEFAULT 0);"
          "CREATE INDEX parley_conv_customer ON parley_conversations (customer, id);"
          "CREATE INDEX parley_conv_assignee ON parley_conversations (assignee, id);"
          "CREATE INDEX parley_conv_bot_queued ON parley_conversations (bot, id) WHERE status = 1;"
          "CREATE INDEX parley_conv_queued ON parley_conversations (queue, queued_ms, id) "
          "  WHERE status = 1;"
          "CREATE TABLE parley_events ("
          "  conv text NOT NULL,"
          "  seq bigint NOT NULL,"
          "  blob bytea NOT NULL,"
          "  sender text,"
          "  msg_id bytea,"
          "  PRIMARY KEY (conv, seq));"
          "CREATE UNIQUE INDEX parley_events_msg ON parley_events (sender, msg_id) "
          "  WHERE msg_id IS NOT NULL;"
          "CREATE TABLE parley_state ("
          "  conv text NOT NULL,"
          "  key text NOT NULL,"
          "  val bytea NOT NULL,"
          "  PRIMARY KEY (conv, key));"
          "CREATE TABLE parley_watermarks ("
          "  principal text NOT NULL,"
          "  device text NOT NULL,"
          "  conv text NOT NULL,"
          "  acked bigint NOT NULL,"
          "  PRIMARY KEY (principal, device, conv));"
          "CREATE FUNCTION parley_advance(c text, first_seq bigint, last_seq_new bigint) "
          "RETURNS void LANGUAGE plpgsql AS $$ "
          "BEGIN "
          "  UPDATE parley_conversations SET last_seq = last_seq_new "
          "    WHERE id = c AND last_seq = first_seq - 1; "
          "  IF NOT FOUND THEN "
          "    RAISE EXCEPTION 'parley: seq conflict in %: another node wrote seq %', "
          "      c, first_seq USING ERRCODE = '40001'; "
          "  END IF; "
          "END $$;",
    /* 2: a conversation row's fenced update as a function that fails
     * (instead of updating nothing) when the row is missing or another
     * node moved its epoch or state version past the new ones, so that
     * the writer can send a whole batch on libpq's pipeline and still
     * have the transaction fail. */
    [2] = "CREATE FUNCTION parley_conv_put(c text, customer_ text, assignee_ text, bot_ text, "
          "  locale_ text, queue_ text, note_ text, tags_ text, status_ smallint, "
          "  epoch_ bigint, state_version_ bigint, queued_ms_ bigint) "
          "RETURNS void LANGUAGE plpgsql AS $$ "
          "BEGIN "
          "  UPDATE parley_conversations SET customer = customer_, assignee = assignee_, "
          "    bot = bot_, locale = locale_, queue = queue_, note = note_, tags = tags_, "
          "    status = status_, epoch = epoch_, state_version = state_version_, "
          "    queued_ms = queued_ms_ "
          "    WHERE id = c AND epoch <= epoch_ AND state_version <= state_version_; "
          "  IF NOT FOUND THEN "
          "    RAISE EXCEPTION 'parley: conversation % is missing or newer in the database', c "
          "      USING ERRCODE = '40001'; "
          "  END IF; "
          "END $$;",
    /* 3: bot placement across nodes. parley_conversations.node is the
     * node that last raised the conversation's epoch: it holds the
     * placement (its bot connection has the conversation, or it is
     * finding one). parley_bot_nodes says which node has how many live
     * connections of which bot principal; a node is alive while its
     * listening session (application_name 'parley-node:<node>') is in
     * pg_stat_activity, so a node killed with SIGKILL stops counting as
     * soon as the server sees its socket close.
     *
     * parley_conv_place is parley_conv_put plus the placement: it records
     * node_ when the epoch rises, and when moved (the writer is placing
     * the conversation, epoch_ = stored epoch + 1) it fails unless the
     * stored epoch is still epoch_ - 1, so that two nodes placing one
     * conversation at once cannot both hand out the same epoch. */
    [3] = "ALTER TABLE parley_conversations ADD COLUMN node text NOT NULL DEFAULT '';"
          "CREATE INDEX parley_conv_bot_open ON parley_conversations (bot, node) "
          "  WHERE status <> 2;"
          "CREATE TABLE parley_bot_nodes ("
          "  node text NOT NULL,"
          "  bot text NOT NULL,"
          "  conns integer NOT NULL,"
          "  PRIMARY KEY (node, bot));"
          "CREATE FUNCTION parley_conv_place(c text, customer_ text, assignee_ text, bot_ text, "
          "  locale_ text, queue_ text, note_ text, tags_ text, status_ smallint, "
          "  epoch_ bigint, state_version_ bigint, queued_ms_ bigint, node_ text, "
          "  moved boolean) "
          "RETURNS void LANGUAGE plpgsql AS $$ "
          "BEGIN "
          "  UPDATE parley_conversations SET customer = customer_, assignee = assignee_, "
          "    bot = bot_, locale = locale_, queue = queue_, note = note_, tags = tags_, "
          "    status = status_, epoch = epoch_, state_version = state_version_, "
          "    queued_ms = queued_ms_, "
          "    node = CASE WHEN epoch_ > epoch THEN node_ ELSE node END "
          "    WHERE id = c AND state_version <= state_version_ "
          "      AND (CASE WHEN moved THEN epoch = epoch_ - 1 ELSE epoch <= epoch_ END); "
          "  IF NOT FOUND THEN "
          "    RAISE EXCEPTION 'parley: conversation % is missing or newer in the database', c "
          "      USING ERRCODE = '40001'; "
          "  END IF; "
          "END $$;",
};

#endif
