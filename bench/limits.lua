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
    "A send is answered once its event is committed, and a one-event SQLite WAL commit " ..
    "alone costs 25-39 us on this machine (docs/benchmarks.md, \"The loop thread and the " ..
    "ACK's path\"), as much as or more than mosquitto's whole round trip, which answers from " ..
    "memory. Of the rest, the two hops between processes (each send() and the wake-up of " ..
    "the other side's idle virtual CPU) are about 66 us and Parley's code on both sides " ..
    "about 15 us. PARLEY_SQLITE_EXCLUSIVE=1 saves about 10 us (no fcntl per commit); a " ..
    "gateway option, busy_poll_us, keeps its CPU warm and cut the round trip to 77 us, at " ..
    "the cost of CPU the bot and the customers need on two cores.",

  ["turns|turns_per_s|parley|"] =
    "The rate follows the CPU per turn: the gateway, the bot and the customers' process " ..
    "share two cores, and the gateway's CPU per turn is about 2.8x mosquitto's. About half " ..
    "of the gateway's instructions per turn are the writer thread's SQLite work (two event " ..
    "rows and their message-id index entries in B-trees, the bot's watermark, the WAL " ..
    "frames, the same pages again at checkpoints), which mosquitto with persistence off " ..
    "never spends; the other half is the loop thread (lws's read and parse, decoding, the " ..
    "hot state, completions, send()). The CPU time per turn of each process depends less on " ..
    "the machine's other load than the rate.",

  ["turns|p99_ms|parley|load=50%"] =
    "Checkpoints used to hold every commit for 100-160 ms about once a second (p99 120 ms " ..
    "on a quiet machine); they now run beside the writer, which only copies their last " ..
    "pages (two small fsyncs). What remains is not yet taken apart: the end of each " ..
    "checkpoint, and the higher CPU per turn of small batches at this rate (bench_turns " ..
    "prints each phase's CPU per turn) with three processes on two cores.",

  ["durability|sends_per_s|parley-fsync|senders=16"] =
    "The ratio follows the disk's fsync latency: with a fast fsync (about 130 us in some " ..
    "runs here) the SQLite peer is fast too and the gateway's rate is set by its CPU per " ..
    "send, not by the disk; its rate without any fsync (parley-nofsync in the same run) " ..
    "bounds the ratio from above. With an fsync of about 1 ms the ratio was 7.5x and 6.6x " ..
    "(16 and 256 senders).",

  ["durability|sends_per_s|parley-fsync|senders=256"] =
    "As with 16 senders: the gateway's CPU per send, not fsync, sets its rate on this disk.",

  ["lua_hook|turns_per_s|parley-lua|"] =
    "The C bot's side of a turn got cheaper (one send() for the frames it queues, 16 us of " ..
    "CPU per turn against mosquitto's echo client's 26), so the same Lua runtime costs a " ..
    "larger share: the Lua bot spends about 53 us per turn more, most of it in the handler " ..
    "call (message table, coroutine resume, budget hook), which is being reworked in lua/.",

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
