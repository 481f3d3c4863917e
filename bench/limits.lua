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
    "A send is answered once its batch is durable: the loop hands the batch to the store's " ..
    "writer thread (a futex wake-up), the writer commits it (two or three WAL pages written " ..
    "with pwrite, the event row and its idempotency index entry) and wakes the loop again " ..
    "(an eventfd), which then writes the SendAck and the Deliver in one send(). The two " ..
    "thread hand-overs cost about as much as the commit on this virtual machine (the median " ..
    "was 96 us with the commit on the loop thread, 107-122 us with the writer thread, whose " ..
    "gain is the tail and the loop's throughput); mosquitto QoS 1 with persistence off " ..
    "answers from memory without any of the three.",

  ["turns|turns_per_s|parley|"] =
    "perf (DWARF call graphs) of the gateway under bench_turns: 36% of its samples are the " ..
    "writer thread in SQLite (per turn two event rows, their two idempotency index entries, " ..
    "the bot's and the customer's watermark rows; WAL frames written with pwrite and copied " ..
    "again at checkpoints), 17% applying operations to the hot state, 15% publishing durable " ..
    "batches (routing, answers, pushes), " ..
    "14% in send() (one per connection per loop iteration), 10% in thread wake-ups, 7% " ..
    "reading and decoding frames. mosquitto with persistence off writes nothing. The " ..
    "gateway, the bot and the benchmark's 1,000 customers share two cores with other work; " ..
    "the CPU time per turn of each process depends less on that than the rate.",

  ["turns|p99_ms|parley|load=50%"] =
    "Not explained yet. On a quiet machine (load average 0.15, 2026-12-08) the Lua bot's " ..
    "turns at 50% load had a median of 3.95 ms and a p99 of 120 ms against mosquitto's " ..
    "0.40 and 2.24 ms. Checkpoints and commits run on the store's writer thread, off the " ..
    "loop, and the checkpoints' fdatasync calls took at most 29 ms in that benchmark " ..
    "(strace), so they do not account for it alone; at 50% of the closed-loop maximum the " ..
    "gateway, the bot and the customers' process together need most of the two cores, and " ..
    "queueing between them is the next thing to measure.",

  ["durability|sends_per_s|parley-fsync|senders=16"] =
    "With 16 senders at most 16 sends wait for one fsync, and the gateway's CPU per send " ..
    "(decode, apply, the WebSocket frames) rather than the fsync sets the rate; the writer " ..
    "thread commits every batch waiting when it wakes in one transaction, so the sends per " ..
    "fsync grow with the senders: against SQLite's one row per transaction the ratio was " ..
    "5.5x and 10.2x, then 7.5x and 6.6x, in two runs of the same day, above the 5x of " ..
    "issue 12 and below this table's 10x.",

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
