-- Writes docs/benchmarks.md and its plots from the figures the benchmark
-- programs recorded (one JSON object per line, see bench/common/bench.h).
--
--   lua5.4 bench/report.lua --json FILE --out DIR --command CMD --tiny 0|1
--                           --only LIST --source ROOT
--
-- Each target pairs Parley's figure with a peer's figure of the same run
-- (or with an absolute bound) and says whether it is reached. A target
-- whose figures are missing is an error (exit 1): a benchmark that stopped
-- emitting a figure must not pass unnoticed.

local cjson = require("cjson")

local args = {}
do
  local i = 1
  while i <= #arg do
    local k = arg[i]:match("^%-%-(.+)$")
    if not k then error("report.lua: unexpected argument " .. arg[i]) end
    args[k] = arg[i + 1]
    i = i + 2
  end
end
for _, k in ipairs({ "json", "out", "command", "source" }) do
  if not args[k] then error("report.lua: --" .. k .. " is required") end
end
local tiny = args.tiny == "1"

-- The targets: Parley's figure against a peer's (ratio) or against an
-- absolute bound. bench/limits.lua says what limits a figure whose target
-- a run misses.
local TARGETS = {
  { bench = "codec", metric = "encode_decode_ns", subject = "parley", peer = "cjson",
    op = "<=", x = 0.35, what = "protobuf encode+decode time vs JSON (cJSON)" },
  { bench = "codec", metric = "size_bytes", subject = "parley", peer = "cjson",
    op = "<=", x = 0.6, what = "frame size vs JSON" },
  { bench = "codec", metric = "encode_decode_ns", subject = "parley",
    op = "<", abs = 1000, what = "encode+decode per frame, ns" },

  { bench = "ack_rtt", metric = "p50_us", subject = "parley", param = "durability=normal",
    peer = "tcp", peer_param = "", op = "<=", x = 3.0, what = "median ACK round trip vs loopback TCP ping-pong" },
  { bench = "ack_rtt", metric = "p50_us", subject = "parley", param = "durability=normal",
    peer = "mosquitto", peer_param = "", op = "<=", x = 1.0,
    what = "median ACK round trip vs mosquitto QoS 1" },

  { bench = "turns", metric = "turns_per_s", subject = "parley", peer = "mosquitto",
    op = ">=", x = 1.0, what = "turns per second vs mosquitto QoS 1 echo" },
  { bench = "turns", metric = "p99_ms", subject = "parley", param = "load=50%",
    op = "<", abs = 10, what = "p99 turn latency at 50% load, ms" },
  { bench = "turns", metric = "turns_per_s", subject = "parley",
    op = ">=", abs = 20000, what = "turns per second on this machine" },

  { bench = "durability", metric = "sends_per_s", subject = "parley-fsync", param = "senders=16",
    peer = "sqlite", op = ">=", x = 10, what = "fsync'd sends/s, 16 senders, vs SQLite one row per transaction" },
  { bench = "durability", metric = "sends_per_s", subject = "parley-fsync", param = "senders=256",
    peer = "sqlite", op = ">=", x = 10, what = "fsync'd sends/s, 256 senders, vs SQLite one row per transaction" },

  { bench = "lua_hook", metric = "call_ns", subject = "lua-table",
    op = "<", abs = 1000, what = "Lua handler call with a message table, ns per event" },
  { bench = "lua_hook", metric = "call_ns", subject = "lua-userdata",
    op = "<", abs = 1000, what = "Lua handler call with a lazy userdata, ns per event" },
  { bench = "lua_hook", metric = "turns_per_s", subject = "parley-lua", peer = "parley-c",
    op = ">=", x = 0.85, what = "end-to-end turns/s, Lua bot vs C bot" },

  { bench = "reorder", metric = "insert_ns", subject = "parley", param = "buffered=10000",
    peer = "linear", op = "<=", x = 0.1, what = "out-of-order insertion at 10,000 buffered vs linear scan" },
  { bench = "reorder", metric = "dedup_ns", subject = "parley",
    op = "<", abs = 50, what = "dedup lookup per event, ns" },

  { bench = "memory", metric = "bytes_per_conn", subject = "parley", param = "conns=max",
    peer = "node-ws", op = "<=", x = 0.5, what = "gateway memory per idle connection vs Node.js ws" },
  { bench = "memory", metric = "bytes_per_conversation", subject = "parley",
    op = "<=", abs = 2048, what = "SDK memory per idle conversation, bytes" },
}

-- Which program emits each bench's figures (for --only and for failures).
local PROGRAM_OF = {
  codec = "bench_codec", ack_rtt = "bench_ack_rtt", turns = "bench_turns",
  durability = "bench_durability", lua_hook = "bench_lua_hook", reorder = "bench_reorder",
  memory = "bench_memory", pg = "bench_pg",
}
-- lua_hook's end-to-end figures come from the turns program.
local function program_of(t)
  if t.bench == "lua_hook" and t.metric == "turns_per_s" then return "bench_turns" end
  return PROGRAM_OF[t.bench]
end

local TITLES = {
  { "codec", "1. Codec: protobuf-c vs JSON (cJSON)" },
  { "ack_rtt", "2. ACK round trip, one message in flight" },
  { "turns", "3. Conversation throughput and latency" },
  { "durability", "4. Durability cost: group commit vs one transaction per row" },
  { "lua_hook", "5. Lua hook cost" },
  { "reorder", "6. Reorder buffer and dedup" },
  { "memory", "7. Memory per connection and per conversation" },
  { "pg", "8. PostgreSQL backend: one, two and three gateway nodes over one database" },
}

-- Sections shown as one row per configuration, a column per metric,
-- instead of one row per figure: { bench, {metric, heading}... , rows =
-- {{subject, param, label}...} }.
local PIVOTS = {
  pg = {
    cols = {
      { "turns_per_s", "turns/s" }, { "ack_p50_us", "ACK p50 us" }, { "ack_p99_us", "ACK p99 us" },
      { "p50_ms", "turn p50 ms" }, { "p99_ms", "turn p99 ms" },
      { "gateway_cpu_us_per_turn", "gateway CPU us/turn" },
      { "db_cpu_us_per_turn", "PostgreSQL CPU us/turn" }, { "bot_cpu_us_per_turn", "bot CPU us/turn" },
      { "customers_cpu_us_per_turn", "customers CPU us/turn" },
    },
    rows = {
      { "sqlite", "nodes=1", "SQLite, 1 node" }, { "postgres", "nodes=1", "PostgreSQL, 1 node" },
      { "postgres", "nodes=2", "PostgreSQL, 2 nodes" }, { "postgres", "nodes=3", "PostgreSQL, 3 nodes" },
    },
  },
}

-- Reading the figures ------------------------------------------------------

local figures, notes, programs = {}, {}, {}
local order = {}
do
  local f = io.open(args.json, "r")
  if f then
    for line in f:lines() do
      if line ~= "" then
        local ok, o = pcall(cjson.decode, line)
        if not ok then error("report.lua: bad line in " .. args.json .. ": " .. line) end
        if o.program then
          programs[o.program] = o
        elseif o.note then
          notes[o.bench] = notes[o.bench] or {}
          table.insert(notes[o.bench], o.note)
        else
          local key = o.bench .. "|" .. o.metric .. "|" .. o.subject .. "|" .. (o.param or "")
          if not figures[key] then table.insert(order, key) end
          figures[key] = o
        end
      end
    end
    f:close()
  end
end

local function fig(bench, metric, subject, param)
  return figures[bench .. "|" .. metric .. "|" .. subject .. "|" .. (param or "")]
end

local function selected(prog)
  if not args.only or args.only == "" then return true end
  return ("," .. args.only .. ","):find("," .. prog .. ",", 1, true) ~= nil
end

local function num(v)
  if v == nil then return "-" end
  local a = math.abs(v)
  if a >= 1e6 then return string.format("%.3g M", v / 1e6)
  elseif a >= 10000 then return string.format("%.0f", v)
  elseif a >= 100 then return string.format("%.0f", v)
  elseif a >= 10 then return string.format("%.1f", v)
  elseif a >= 1 then return string.format("%.2f", v)
  else return string.format("%.3g", v) end
end

local function cmp(op, a, b)
  if op == "<=" then return a <= b
  elseif op == "<" then return a < b
  elseif op == ">=" then return a >= b
  elseif op == ">" then return a > b end
  error("report.lua: unknown comparison " .. op)
end

-- Limits measured on this code base, shown beside a target not reached.
local WHY = {}
do
  local f = io.open(args.source .. "/bench/limits.lua", "r")
  if f then
    f:close()
    WHY = dofile(args.source .. "/bench/limits.lua")
  end
end

-- Checking the targets -----------------------------------------------------

local missing, results = {}, {}
for _, t in ipairs(TARGETS) do
  local prog = program_of(t)
  if selected(prog) then
    local a = fig(t.bench, t.metric, t.subject, t.param)
    local b = t.peer and fig(t.bench, t.metric, t.peer, t.peer_param or t.param) or nil
    local r = { t = t, a = a, b = b }
    if not a or (t.peer and not b) then
      table.insert(missing, string.format("%s %s %s%s%s", t.bench, t.metric, t.subject,
        t.param and (" " .. t.param) or "", t.peer and (" vs " .. t.peer) or ""))
      r.missing = true
    elseif t.peer then
      r.ratio = (b.value ~= 0) and a.value / b.value or math.huge
      r.met = cmp(t.op, r.ratio, t.x)
    else
      r.met = cmp(t.op, a.value, t.abs)
    end
    results[t.bench] = results[t.bench] or {}
    table.insert(results[t.bench], r)
  end
end

-- The machine --------------------------------------------------------------

local function sh(cmd)
  local p = io.popen(cmd .. " 2>/dev/null")
  if not p then return "" end
  local s = p:read("a") or ""
  p:close()
  return (s:gsub("%s+$", ""))
end

local function machine()
  local cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-"):gsub("^%s+", "")
  local mem = tonumber(sh("awk '/MemTotal/ {print $2}' /proc/meminfo")) or 0
  return {
    { "CPU", cpu ~= "" and cpu or "unknown" },
    { "cores", sh("nproc") },
    { "memory", string.format("%.1f GiB", mem / 1048576) },
    { "kernel", sh("uname -sr") },
    { "OS", sh(". /etc/os-release && echo \"$PRETTY_NAME\"") },
    { "compiler", sh("cc --version | head -n1") },
    { "libwebsockets", sh("pkg-config --modversion libwebsockets") },
    { "protobuf-c", sh("pkg-config --modversion libprotobuf-c") },
    { "SQLite", sh("pkg-config --modversion sqlite3") },
    { "PostgreSQL", sh("pg_config --version") },
    { "Lua", sh("pkg-config --modversion lua5.4") },
    { "cJSON", sh("pkg-config --modversion libcjson") },
    { "mosquitto", sh("dpkg-query -W -f='${Version}' mosquitto") },
    { "nats-server", sh("dpkg-query -W -f='${Version}' nats-server") },
    { "libnats", sh("pkg-config --modversion libnats") },
    { "Node.js", sh("node --version") },
    { "ws (npm)", sh("node -p \"require('" .. args.source .. "/bench/peers/node/node_modules/ws/package.json').version\"") },
    { "commit", sh("git -C '" .. args.source .. "' rev-parse --short HEAD") },
  }
end

-- Plots --------------------------------------------------------------------

local plots = {}

local function gnuplot(name, title, ylabel, series, xlabels, opts)
  -- series: { {label, {values by x index}} ... }; one clustered bar chart.
  opts = opts or {}
  -- A series without any value would make gnuplot give up on the plot.
  local kept = {}
  for _, s in ipairs(series) do
    local any = false
    for i = 1, #xlabels do if s[2][i] then any = true end end
    if any then kept[#kept + 1] = s end
  end
  series = kept
  if #series == 0 then return end
  local dat = args.out .. "/bench/" .. name .. ".dat"
  local png = args.out .. "/bench/" .. name .. ".png"
  local f = assert(io.open(dat, "w"))
  f:write("x")
  for _, s in ipairs(series) do f:write("\t\"" .. s[1] .. "\"") end
  f:write("\n")
  for i, x in ipairs(xlabels) do
    f:write("\"" .. x .. "\"")
    for _, s in ipairs(series) do
      local v = s[2][i]
      f:write("\t" .. (v and string.format("%.6g", v) or "NaN"))
    end
    f:write("\n")
  end
  f:close()
  local gp = {
    "set terminal pngcairo size 900,480 font 'sans,10'",
    "set output '" .. png .. "'",
    "set title '" .. title .. "'",
    "set ylabel '" .. ylabel .. "'",
    "set style data histogram",
    "set style histogram clustered gap 1",
    "set style fill solid 0.85 border -1",
    "set boxwidth 0.9",
    "set grid ytics",
    "set key top left",
    "set yrange [0:*]",
  }
  if opts.logy then
    gp[#gp + 1] = "set logscale y"
    gp[#gp + 1] = "set yrange [*:*]"
  end
  local cols = {}
  for i = 1, #series do
    cols[#cols + 1] = string.format("'%s' using %d:xtic(1) title columnheader(%d)", dat, i + 1, i + 1)
  end
  gp[#gp + 1] = "plot " .. table.concat(cols, ", ")
  local p = io.popen("gnuplot", "w")
  if not p then return end
  p:write(table.concat(gp, "\n") .. "\n")
  p:close()
  -- The data file only feeds gnuplot; the report keeps the figures.
  os.remove(dat)
  local chk = io.open(png, "r")
  if chk then
    chk:close()
    plots[name] = "bench/" .. name .. ".png"
  end
end

local function values(bench, metric, subjects, params)
  local out = {}
  for si, s in ipairs(subjects) do
    local vals = {}
    for pi, p in ipairs(params) do
      local f = fig(bench, metric, s[2] or s[1], p)
      vals[pi] = f and f.value or nil
    end
    out[si] = { s[1], vals }
  end
  return out
end

os.execute("mkdir -p '" .. args.out .. "/bench'")
if sh("command -v gnuplot") ~= "" then
  -- ACK round trip: percentiles per subject.
  do
    local subs = {
      { "parley (normal)", "parley", "durability=normal" },
      { "parley (full)", "parley", "durability=full" },
      { "mosquitto QoS 1", "mosquitto", "" }, { "NATS request", "nats", "" },
      { "TCP ping-pong", "tcp", "" },
    }
    local series = {}
    for _, s in ipairs(subs) do
      local v = {}
      for i, m in ipairs({ "p50_us", "p90_us", "p99_us" }) do
        local f = fig("ack_rtt", m, s[2], s[3])
        v[i] = f and f.value or nil
      end
      series[#series + 1] = { s[1], v }
    end
    gnuplot("ack_rtt", "ACK round trip, one message in flight", "microseconds (log)", series,
      { "p50", "p90", "p99" }, { logy = true })
  end
  -- Turn latency at 50% and 90% load.
  do
    local series = {}
    for _, s in ipairs({ { "parley", "parley" }, { "mosquitto QoS 1", "mosquitto" } }) do
      for _, load in ipairs({ "50%", "90%" }) do
        local v = {}
        for i, m in ipairs({ "p50_ms", "p90_ms", "p99_ms" }) do
          local f = fig("turns", m, s[2], "load=" .. load)
          v[i] = f and f.value or nil
        end
        series[#series + 1] = { s[1] .. " at " .. load .. " load", v }
      end
    end
    gnuplot("turns_latency", "Turn latency percentiles (customer send to reply received)",
      "milliseconds (log)", series, { "p50", "p90", "p99" }, { logy = true })
  end
  -- Throughput: turns per second.
  do
    local v = {}
    local labels = {}
    for _, s in ipairs({ { "parley", "turns", "parley" }, { "mosquitto", "turns", "mosquitto" },
      { "parley Lua bot", "lua_hook", "parley-lua" }, { "parley C bot", "lua_hook", "parley-c" } }) do
      local f = fig(s[2], "turns_per_s", s[3], "")
      labels[#labels + 1] = s[1]
      v[#v + 1] = f and f.value or nil
    end
    gnuplot("turns_throughput", "Full turns per second, 1,000 conversations", "turns per second",
      { { "turns/s", v } }, labels)
  end
  -- Durability: sends per second by senders.
  gnuplot("durability", "Acknowledged sends per second", "sends per second (log)",
    values("durability", "sends_per_s",
      { { "parley, fsync (group commit)", "parley-fsync" }, { "parley, no fsync", "parley-nofsync" },
        { "SQLite, synchronous=FULL, 1 row/txn", "sqlite" } },
      { "senders=1", "senders=16", "senders=256" }),
    { "1 sender", "16 senders", "256 senders" }, { logy = true })
  -- PostgreSQL: CPU per turn of each process by configuration.
  do
    local rows = PIVOTS.pg.rows
    local series = {}
    for _, m in ipairs({ { "gateway (all nodes)", "gateway_cpu_us_per_turn" },
      { "PostgreSQL (all processes)", "db_cpu_us_per_turn" }, { "bot", "bot_cpu_us_per_turn" } }) do
      local v = {}
      for i, r in ipairs(rows) do
        local f = fig("pg", m[2], r[1], r[2])
        v[i] = f and f.value or nil
      end
      series[#series + 1] = { m[1], v }
    end
    local labels = {}
    for i, r in ipairs(rows) do labels[i] = r[3] end
    gnuplot("pg_cpu", "CPU time per turn, SQLite and PostgreSQL backends", "microseconds per turn",
      series, labels)
  end
  -- Reorder: insertion cost by buffer size.
  gnuplot("reorder", "Out-of-order insertion cost per event", "nanoseconds (log)",
    values("reorder", "insert_ns", { { "parley (binary search)", "parley" }, { "linear scan", "linear" } },
      { "buffered=100", "buffered=1000", "buffered=10000" }),
    { "100 buffered", "1,000 buffered", "10,000 buffered" }, { logy = true })
end

-- Writing the report -------------------------------------------------------

local md = {}
local function w(s) md[#md + 1] = s or "" end

w("# Benchmarks")
w()
if tiny then
  w("**Tiny configuration: these figures check that the benchmarks run and mean nothing.**")
  w()
end
w("Parley measured side by side with what its users would pick instead, on the same machine in")
w("the same run. Each ratio is Parley's figure divided by the peer's. This file is written by")
w("`" .. args.command .. "` (`make bench`), which leaves the raw figures in")
w("`build/bench-run/benchmarks.jsonl` and each program's own output in `build/bench-run/logs/`.")
w()
w("Run on " .. os.date("!%Y-%m-%d %H:%M UTC") .. " with `" .. args.command .. "`. The machine")
w("below is a shared virtual machine: absolute figures move by a factor of two or three between")
w("runs, for Parley and its peers alike, so read the ratios of one run, and for the conversation")
w("benchmark the CPU time per turn of each process, which varies much less.")
w()
w("| machine | |")
w("|---|---|")
for _, kv in ipairs(machine()) do w("| " .. kv[1] .. " | " .. (kv[2] ~= "" and kv[2] or "-") .. " |") end
w()

-- Summary of targets.
w("## Targets")
w()
w("| bench | target | Parley | peer | ratio | goal | reached |")
w("|---|---|---|---|---|---|---|")
local reached, total = 0, 0
for _, bt in ipairs(TITLES) do
  for _, r in ipairs(results[bt[1]] or {}) do
    local t = r.t
    total = total + 1
    local goal = t.peer and string.format("ratio %s %s", t.op, num(t.x)) or string.format("%s %s", t.op, num(t.abs))
    local unit = r.a and (" " .. r.a.unit) or ""
    local peer = t.peer and (r.b and (num(r.b.value) .. " " .. r.b.unit .. " (" .. t.peer .. ")") or "missing") or "-"
    local state
    if r.missing then state = "**missing**"
    elseif r.met then state = "yes"; reached = reached + 1
    else state = "**no**" end
    w(string.format("| %s | %s | %s | %s | %s | %s | %s |", bt[1], t.what,
      r.a and (num(r.a.value) .. unit) or "missing", peer,
      r.ratio and string.format("%.3gx", r.ratio) or "-", goal, state))
  end
end
w()
w(string.format("%d of %d targets reached.", reached, total))
w()

for _, bt in ipairs(TITLES) do
  local bench = bt[1]
  local has = false
  for _, key in ipairs(order) do if figures[key].bench == bench then has = true end end
  if has or results[bench] or notes[bench] then
    w("## " .. bt[2])
    w()
    local told = {}
    for _, r in ipairs(results[bench] or {}) do
      if not r.missing and not r.met then
        local why = WHY[bench .. "|" .. r.t.metric .. "|" .. r.t.subject .. "|" .. (r.t.param or "")]
        if why and told[why] then
          why = "The same limit as above."
        elseif why then
          told[why] = true
        end
        w("- Not reached: " .. r.t.what .. "." .. (why and (" " .. why) or " The limit is not yet analysed."))
      end
    end
    for _, n in ipairs(notes[bench] or {}) do w("- " .. n) end
    w()
    local pv = PIVOTS[bench]
    if pv and has then
      local head, rule = { "| configuration" }, { "|---" }
      for _, c in ipairs(pv.cols) do head[#head + 1] = c[2]; rule[#rule + 1] = "---" end
      w(table.concat(head, " | ") .. " |")
      w(table.concat(rule, "|") .. "|")
      for _, r in ipairs(pv.rows) do
        local cells = { "| " .. r[3] }
        for _, c in ipairs(pv.cols) do
          local f = fig(bench, c[1], r[1], r[2])
          cells[#cells + 1] = f and num(f.value) or "-"
        end
        w(table.concat(cells, " | ") .. " |")
      end
      w()
    elseif not pv then
      w("| metric | subject | param | value |")
      w("|---|---|---|---|")
      for _, key in ipairs(order) do
        local f = figures[key]
        if f.bench == bench then
          w(string.format("| %s | %s | %s | %s %s |", f.metric, f.subject, f.param ~= "" and f.param or "-",
            num(f.value), f.unit))
        end
      end
      w()
    end
    -- What a single run's table cannot say (what limits each figure, from
    -- profiles), kept by hand in bench/notes/<bench>.md; not under a
    -- section whose program was skipped.
    local nf = has and io.open(args.source .. "/bench/notes/" .. bench .. ".md", "r")
    if nf then
      w((nf:read("a"):gsub("%s+$", "")))
      nf:close()
      w()
    end
    local pl = {
      ack_rtt = { "ack_rtt" }, turns = { "turns_throughput", "turns_latency" },
      durability = { "durability" }, reorder = { "reorder" }, pg = { "pg_cpu" },
    }
    for _, name in ipairs(pl[bench] or {}) do
      if plots[name] then w("![" .. name .. "](" .. plots[name] .. ")"); w() end
    end
  end
end

-- Before/after comparisons and profiles that a single run cannot show are
-- kept by hand in bench/history.md and copied in after the figures.
do
  local f = io.open(args.source .. "/bench/history.md", "r")
  if f then
    w(f:read("a"))
    f:close()
  end
end

local failed = {}
for name, p in pairs(programs) do
  if p.status ~= "ok" then failed[#failed + 1] = name .. " (exit " .. tostring(p.exit) .. ")" end
end
table.sort(failed)
if #failed > 0 then
  w("## Failed programs")
  w()
  for _, f in ipairs(failed) do w("- " .. f .. ": see build/bench-run/logs/") end
  w()
end

local out = assert(io.open(args.out .. "/benchmarks.md", "w"))
out:write(table.concat(md, "\n"))
out:close()
io.stderr:write(string.format("bench/report: %d of %d targets reached; report in %s/benchmarks.md\n",
  reached, total, args.out))
if #missing > 0 then
  io.stderr:write("bench/report: figures missing:\n  " .. table.concat(missing, "\n  ") .. "\n")
  os.exit(1)
end
