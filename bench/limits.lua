-- What limits each figure whose target is not reached, as measured on this
-- code base (perf, strace, valgrind on the benchmark runs). bench/report.lua
-- shows an entry only when its target is missed in the run it reports.
-- Keys: bench|metric|subject|param.
return {
  ["codec|size_bytes|parley|"] =
    "The 202 bytes of message text are the same on both sides and are most of the frame. " ..
    "Of the protobuf frame's other 132 bytes, about 94 are strings both sides carry (the " ..
    "conversation id, the sender, the tags) and the 16-byte id; field tags, lengths and " ..
    "varints are the rest. JSON spends 319 bytes on the same. With shorter texts, the " ..
    "common case in chat, the ratio falls below the target.",

  ["codec|encode_decode_ns|parley|"] =
    "protobuf-c's generic table-driven unpack makes about a dozen allocations per frame and " ..
    "free_unpacked walks them again (valgrind: about 4,900 and 2,200 of the 13,500 " ..
    "instructions of a round trip); pw_decode also checks for field 0, which the engine " ..
    "relies on. A decoder with an arena allocator would remove most of the allocation cost.",

  ["ack_rtt|p50_us|parley|durability=normal"] =
    "Each send is a SQLite transaction committed before the SendAck (strace: 7 WAL pages " ..
    "written and about 10 file-lock calls per send, since the customer's ACK of its own " ..
    "message is committed too), and the SendAck and the Deliver of the sender's own message " ..
    "go through two processes that each run an lws event loop. mosquitto QoS 1 with " ..
    "persistence off answers from memory. With durability off the median stays about " ..
    "240 us, so the disk does not set it; the event loop hops and the SQLite statements do.",

  ["turns|turns_per_s|parley|"] =
    "A turn is two sends stored with their dedup rows, four deliveries (each read back from " ..
    "SQLite), a bot commit and the customer's ACK watermark: about 25-30 SQLite statements and " ..
    "a dozen WebSocket frames, each its own send() (perf: the gateway spends 18% of its time " ..
    "in send(), 10% in WAL writes, 5% in checkpoint fsyncs). The gateway, the bot and the " ..
    "benchmark's 1,000 customers share this machine's two cores; the benchmark prints the " ..
    "CPU time per turn of each process, which depends less on that sharing than the rate.",

  ["turns|p99_ms|parley|load=50%"] =
    "SQLite's WAL checkpoints run inside a commit on the gateway's only thread (about 12 a " ..
    "second at this load, 2.4 ms median, up to 13 ms with their fsync) and stall every turn " ..
    "in flight; with checkpoints off, p90 at 50% load fell from 11.5 ms to 4.8 ms in one run. A " ..
    "checkpoint on a second thread made the tail worse (the writer waited on the " ..
    "checkpointer's locks) and was not kept. The rest of the tail is scheduling: three busy " ..
    "processes on two cores.",

  ["durability|sends_per_s|parley-fsync|senders=16"] =
    "fsync is cheap on this machine's disk (0.1-1 ms), so SQLite with one row per " ..
    "transaction already commits about 3,000 times a second, while the gateway is CPU bound " ..
    "at a few thousand sends a second (SQLite statements, WebSocket frames) before the " ..
    "fsyncs it shares matter. Group commit does share them: strace counted about 6 sends per " ..
    "commit at 16 senders and 40 at 256. On a disk where fsync costs 5-10 ms, SQLite alone " ..
    "falls to 100-200 commits a second and the ratio grows accordingly.",

  ["durability|sends_per_s|parley-fsync|senders=256"] =
    "As with 16 senders: the gateway's CPU per send, not fsync, sets its rate on this disk.",

  ["lua_hook|call_ns|lua-table|"] =
    "Building the 13-field message table (about 8,000 instructions) is most of the call; " ..
    "resuming the handler's coroutine and the budget hook add the rest (without a coroutine " ..
    "a call costs about three quarters as much). Handlers' coroutines are reused from a " ..
    "pool; making one per event cost about 40% more. In a whole turn the Lua bot spends " ..
    "about 50 us more CPU than the C bot, so this call is not what sets its rate.",

  ["lua_hook|call_ns|lua-userdata|"] =
    "The lazy userdata builds only the fields a handler reads, but copies the event into " ..
    "one block first (a handler may run after the engine's callback returned) and pays the " ..
    "same coroutine resume; it saves little over the table for a handler that reads the text.",

  ["reorder|insert_ns|parley|buffered=10000"] =
    "The search is no longer the cost: each insert also makes the packed copy of the event " ..
    "the buffer owns (malloc and protobuf pack) and goes through the engine's per-event path " ..
    "(the conversation lookup, the contradiction check), which the linear baseline skips. " ..
    "Those fixed costs are most of what remains; the linear scan's cost grows with the " ..
    "buffer and the blocked buffer's does not.",

  ["reorder|dedup_ns|parley|"] =
    "The engine decides a duplicate by seq (below the next expected seq, or held), which " ..
    "itself costs a few ns; the figure is the whole inbound path of one event (the " ..
    "conversation looked up by hashing its id, about 37 ns, the contradiction check, counters).",
}
