-- The Lua half of the bot runtime: the sandbox environment, the bot object,
-- ctx, state diffs and timers. This chunk runs with the full set of opened
-- libraries; bot code only ever sees the environment built by make_env, and
-- none of this chunk's locals.
--
-- Called once per Lua state by the C side with:
--   C          table of C primitives (send, action, http, log, ...)
--   templates  { [locale] = { [key] = string | {one=..., other=...} } }
--   config     bot.yaml as a table
--   cjson      the lua-cjson module
local C, templates, config, cjson = ...

-- Typed settings (lua/lib/settings.lua): defaults and declared types,
-- before anything reads the config.
load(C.lib("settings"), "=runtime/settings", "t")(config)

local string, table, math, utf8, coroutine = string, table, math, utf8, coroutine
local type, pairs, ipairs, next, tostring, tonumber = type, pairs, ipairs, next, tostring, tonumber
local error, select, setmetatable, getmetatable = error, select, setmetatable, getmetatable
local rawget, rawset, rawequal, rawlen, load, pcall, xpcall, assert =
  rawget, rawset, rawequal, rawlen, load, pcall, xpcall, assert
-- The runtime's own helpers (JSON, UTF-8 checks, limits) use these copies,
-- taken before any bot code runs: nothing a bot does to a library table can
-- change what they call.
local s_format, s_find, s_sub, s_byte, s_gsub, s_match, s_lower, s_gmatch =
  string.format, string.find, string.sub, string.byte, string.gsub, string.match,
  string.lower, string.gmatch
local t_concat, t_sort, t_remove, t_pack, t_unpack, t_move =
  table.concat, table.sort, table.remove, table.pack, table.unpack, table.move
local m_type, m_floor, m_tointeger, m_huge, m_min, m_max =
  math.type, math.floor, math.tointeger, math.huge, math.min, math.max
local utf8_len = utf8.len
local co_create, co_resume, co_close, co_running, co_status =
  coroutine.create, coroutine.resume, coroutine.close, coroutine.running, coroutine.status

-- string.dump is removed from the real table, not only from the proxy: every
-- string reaches the real table through its metatable ("").dump.
string.dump = nil
-- The string metatable is shared by every string in the state; hiding it
-- keeps bot code from replacing __index or adding metamethods.
getmetatable("").__metatable = false

local STATE_KEY_MAX = 64 * 1024      -- bytes of JSON per state key
-- Bytes of one conversation's state (JSON values and key names): the whole
-- state travels in one frame of at most 1 MiB when the conversation is
-- assigned, so a margin is kept for the frame's other fields.
local STATE_TOTAL_MAX = 960 * 1024
local STATE_KEYS_MAX = 128           -- keys of one conversation's state
local STATE_KEY_NAME_MAX = 128       -- bytes of a state key's name (the gateway's limit)
local TEXT_MAX = 16 * 1024           -- bytes of a reply's text
local BUTTONS_MAX = 12
local RECENT_MAX = 32                -- inbound messages remembered for quoting
local EXCERPT_MAX = 280
local TIMERS_MAX = 32                -- timers per conversation
local TAGS_MAX = 64                  -- tags per conversation (the gateway's limit)
local TAG_MAX = 64                   -- bytes of a tag
local QUEUE_MAX = 128                -- bytes of a handoff queue name
local NOTE_MAX = 4096                -- bytes of a handoff or close note
local LOAD_MAX = 1024 * 1024         -- bytes of a chunk load() compiles
local TIMER_KEY = "_timers"

local bot_name = config.name or "bot"
local default_locale = config.default_locale or "en"

-- A description of any value that runs no bot code (no __tostring, no
-- __name), for error messages about bot values.
local function safe_str(x)
  local tx = type(x)
  if tx == "string" then return x end
  if tx == "number" or tx == "boolean" or tx == "nil" then return tostring(x) end
  return tx
end

-- Raises msg at the bot's line: the first frame of the stack that is not
-- this chunk (C.where looks it up), so that a limit checked deep in the
-- runtime points at the ctx:reply or ctx:tag that broke it.
local function raise(msg)
  error(C.where() .. msg, 0)
end

-- Per-handler metrics (lua/src/rt_metrics.c); absent in a state without
-- a runtime (lint).
local c_metric = C.metric or function() end

------------------------------------------------------------------------------
-- Read-only proxies for shared tables.

local protected = setmetatable({}, { __mode = "k" })

-- Nothing of a proxy yields the table behind it: __index is a hidden
-- metatable field, and __pairs hands out an iterator closure rather than
-- (next, t), whose second value would be the real, writable table.
local function readonly(t, name)
  local p = setmetatable({}, {
    __index = t,
    __newindex = function(_, k)
      error("attempt to modify read-only table '" .. name .. "' (key '" ..
        safe_str(k) .. "')", 2)
    end,
    __pairs = function()
      return function(_, k) return next(t, k) end, nil, nil
    end,
    __len = function() return rawlen(t) end,
    __metatable = "read-only",
  })
  protected[p] = true
  return p
end

local function deep_readonly(v, name)
  if type(v) ~= "table" then return v end
  local copy = {}
  for k, x in next, v do copy[k] = deep_readonly(x, name .. "." .. tostring(k)) end
  return readonly(copy, name)
end

------------------------------------------------------------------------------
-- JSON: canonical encoding (sorted keys) so that an unchanged value always
-- encodes to the same text, which is what the state diff compares.

local json_null = cjson.null

-- The encoder reads bot values with raw access only (next, rawget, rawlen):
-- a metatable on a state table changes nothing and runs nothing. It stops
-- as soon as the text would exceed `max` bytes, so a huge or much-shared
-- value costs no more than the limit it breaks.

local function is_array(t)
  local n = 0
  for k in next, t do
    if m_type(k) ~= "integer" or k < 1 then return false end
    if k > n then n = k end
  end
  return n == rawlen(t), n
end

-- Strings are escaped in C (C.json_str): '"', '\\', the short escapes and
-- \u00XX for other control bytes and DEL, the rest as is.
local esc = C.json_str

-- Appends v's JSON to out; returns false as soon as out passes out.max
-- bytes (the text is then useless and encoding stops).
local function encode(v, depth, out)
  if depth > 32 then error("value nested too deeply for JSON", 0) end
  local tv = type(v)
  local piece
  if v == nil or v == json_null then piece = "null"
  elseif tv == "boolean" then piece = v and "true" or "false"
  elseif tv == "number" then
    if v ~= v or v == m_huge or v == -m_huge then
      error("cannot encode NaN or infinity as JSON", 0)
    end
    if m_type(v) == "integer" then piece = s_format("%d", v)
    elseif v == m_floor(v) and v > -2^53 and v < 2^53 then
      piece = s_format("%d", m_tointeger(v))
    else piece = s_format("%.17g", v) end
  elseif tv == "string" then piece = esc(v)
  elseif tv == "table" then
    local arr, n = is_array(v)
    local o = out
    if arr and n > 0 then
      o.n = o.n + 1; o[o.n] = "["
      for i = 1, n do
        if i > 1 then o.n = o.n + 1; o[o.n] = "," end
        if not encode(rawget(v, i), depth + 1, o) then return false end
      end
      o.n = o.n + 1; o[o.n] = "]"
    else
      local keys, nk = {}, 0
      for k in next, v do
        if type(k) ~= "string" then
          error("cannot encode a table with non-string key '" .. safe_str(k) .. "' as JSON", 0)
        end
        nk = nk + 1
        keys[nk] = k
      end
      t_sort(keys)
      o.n = o.n + 1; o[o.n] = "{"
      for i = 1, nk do
        local k = keys[i]
        if i > 1 then o.n = o.n + 1; o[o.n] = "," end
        local ek = esc(k)
        o.bytes = o.bytes + #ek + 1
        o.n = o.n + 1; o[o.n] = ek
        o.n = o.n + 1; o[o.n] = ":"
        if not encode(rawget(v, k), depth + 1, o) then return false end
      end
      o.n = o.n + 1; o[o.n] = "}"
    end
    o.bytes = o.bytes + 2
    return o.bytes <= o.max
  else
    error("cannot encode a " .. tv .. " as JSON", 0)
  end
  out.n = out.n + 1
  out[out.n] = piece
  out.bytes = out.bytes + #piece
  return out.bytes <= out.max
end

-- The JSON text of v, or nil when it would be longer than max bytes.
local function json_encode_max(v, max)
  local out = { n = 0, bytes = 0, max = max }
  if not encode(v, 0, out) then return nil end
  out.n, out.bytes, out.max = nil, nil, nil
  return t_concat(out)
end

local JSON_MAX = 64 * 1024 * 1024
local JSON_DECODE_MAX = 4 * 1024 * 1024

local function json_encode(v)
  local s = json_encode_max(v, JSON_MAX)
  if not s then error("value too large for JSON", 0) end
  return s
end

-- cjson decodes every number as a float; integral values come back as
-- integers so that seq numbers and counters keep printing as "5", not "5.0".
local function integerize(v, depth)
  if type(v) == "number" then return math.tointeger(v) or v end
  if type(v) == "table" and depth < 64 then
    for k, x in next, v do v[k] = integerize(x, depth + 1) end
  end
  return v
end

local function json_decode(s)
  local ok, v = pcall(cjson.decode, s)
  if not ok then return nil, tostring(v) end
  return integerize(v, 0)
end

------------------------------------------------------------------------------
-- Logging.

local LEVELS = { debug = 0, info = 1, warn = 2, error = 3 }

local function level_of(level)
  local n = LEVELS[level]
  if n == nil then error("log level must be debug, info, warn or error", 3) end
  return n
end

------------------------------------------------------------------------------
-- Templates.

-- Chains are cached per locale string. parley.t takes any string from bot
-- code, so the cache has a bound: when it is full it starts over.
local CHAINS_MAX = 256
local chains, nchains = {}, 0

local function chain_for(locale)
  locale = locale or default_locale
  local c = chains[locale]
  if not c then
    c = C.locale_chain(locale, default_locale)
    if nchains >= CHAINS_MAX then chains, nchains = {}, 0 end
    chains[locale] = c
    nchains = nchains + 1
  end
  return c
end

-- The text a placeholder shows: strings, numbers, booleans, and values with
-- a __tostring of their own. Any other value would print as its type and
-- heap address ("table: 0x55..."), which must never reach a customer.
local function var_text(x)
  local tx = type(x)
  if tx == "string" then return x end
  if tx == "number" or tx == "boolean" then return tostring(x) end
  local mt = getmetatable(x)
  if type(mt) == "table" and rawget(mt, "__tostring") ~= nil then return tostring(x) end
  return nil
end

-- Errors raised from the gsub callback are two levels further from the
-- caller than render itself (the callback and gsub). Callers that pass a
-- level must not tail-call render, or the level would skip a frame.
local function render(locale, key, vars, level)
  if type(key) ~= "string" then error("template key must be a string", level) end
  if vars ~= nil and type(vars) ~= "table" then error("template vars must be a table", level) end
  if locale ~= nil and type(locale) ~= "string" then
    error("template locale must be a string", level)
  end
  -- A miss: the first locale of the chain that has templates lacks the
  -- key, and a fallback locale answers (or none does). It is counted under
  -- the locale asked for.
  local served = nil
  for _, loc in ipairs(chain_for(locale)) do
    local t = templates[loc]
    local v = t and t[key]
    if t and not served then served = loc end
    if v ~= nil and served ~= loc then c_metric("template_miss", locale or default_locale) end
    if v ~= nil then
      if type(v) == "table" then
        local n = vars and vars.count
        if type(n) ~= "number" then
          error("template '" .. key .. "' has plural forms and needs a numeric 'count' var", level)
        end
        v = v[C.plural(loc, n)] or v.other
      end
      -- A rendered template is a reply's text: valid UTF-8 without NUL bytes
      -- and at most TEXT_MAX bytes. The values are checked as they are
      -- filled in, so that a huge value is refused before a huge string is
      -- built (the template itself is at most TEXT_MAX bytes).
      local what = "template '" .. key .. "' (" .. loc .. ")"
      local added = 0
      local out = v:gsub("{([%a_][%w_]*)}", function(name)
        local x = vars and vars[name]
        if x == nil then error(what .. " needs var '" .. name .. "'", level + 2) end
        local s = var_text(x)
        if s == nil then
          error(what .. ": var '" .. name .. "' must be a string, number or boolean, not a " ..
            type(x), level + 2)
        end
        if not utf8_len(s) then error(what .. ": var '" .. name .. "' is not valid UTF-8", level + 2) end
        if s_find(s, "\0", 1, true) then
          error(what .. ": var '" .. name .. "' contains a NUL byte", level + 2)
        end
        added = added + #s
        if added > TEXT_MAX then
          error(what .. " is longer than " .. TEXT_MAX .. " bytes once filled in", level + 2)
        end
        return s
      end)
      if #out > TEXT_MAX then
        error(what .. " is longer than " .. TEXT_MAX .. " bytes once filled in", level)
      end
      return out
    end
  end
  c_metric("template_miss", locale or default_locale)
  error("unknown template key '" .. key .. "'", level)
end

local function has_template(key)
  for _, t in pairs(templates) do if t[key] ~= nil then return true end end
  return false
end

-- Dialogs (lua/lib/dialog.lua) are built on the public ctx methods; their
-- chunk is named "=runtime/dialog" so that errors point at the bot's line.
local dialog_mod = load(C.lib("dialog"), "=runtime/dialog", "t")({
  raise = function(msg) error(C.where() .. msg, 0) end,
  has_template = has_template,
  metric = function(name, step, outcome)
    if C.metric then C.metric("dialog", name, step, outcome) end
  end,
})

------------------------------------------------------------------------------
-- Rich content: normalisation and the plain-text fallback.

local function utf8_cut(s, max)
  if #s <= max then return s end
  local cut = max
  -- Back off over continuation bytes so the excerpt ends on a whole character.
  while cut > 0 do
    local b = s_byte(s, cut + 1)
    if not b or b < 0x80 or b >= 0xC0 then break end
    cut = cut - 1
  end
  return s_sub(s, 1, cut)
end

-- Content checks raise at the bot's line (raise), however deep the
-- runtime's own calls are; level is kept for the callers' symmetry.
local function check_text(s, what, level, max)
  max = max or TEXT_MAX
  if type(s) ~= "string" then raise(what .. " must be a string") end
  if #s > max then raise(what .. " is longer than " .. max .. " bytes") end
  if not utf8_len(s) then raise(what .. " is not valid UTF-8") end
  -- The C side reads texts as C strings: a NUL would cut the text silently.
  if s_find(s, "\0", 1, true) then raise(what .. " contains a NUL byte") end
  return s
end

-- The longest prefix of s that is valid UTF-8 without NUL, at most max
-- bytes: quoted excerpts come from other people's messages.
local function clean_cut(s, max)
  local _, bad = utf8_len(s)
  if bad then s = s_sub(s, 1, bad - 1) end
  local nul = s_find(s, "\0", 1, true)
  if nul then s = s_sub(s, 1, nul - 1) end
  return utf8_cut(s, max)
end

local function opt_text(s, what, level)
  if s == nil then return nil end
  return check_text(s, what, level)
end

local FALLBACK_MAX = 4096 -- bytes, as docs/protocol.md says

local fallback_parts
local function fallback_text(c)
  return utf8_cut(fallback_parts(c) or "", FALLBACK_MAX)
end

fallback_parts = function(c)
  if c.kind == "card" then
    local lines = {}
    if c.title then lines[#lines + 1] = c.title end
    if c.text then lines[#lines + 1] = c.text end
    for _, b in ipairs(c.buttons or {}) do
      lines[#lines + 1] = b.url and ("- " .. b.label .. ": " .. b.url) or ("- " .. b.label)
    end
    if #lines == 0 and c.image_url then lines[1] = c.image_url end
    return t_concat(lines, "\n")
  elseif c.kind == "quick_replies" then
    local lines = { c.text }
    for i, b in ipairs(c.buttons or {}) do lines[#lines + 1] = i .. ". " .. b.label end
    return t_concat(lines, "\n")
  elseif c.kind == "image" then
    if c.text and c.text ~= "" then return "[" .. c.text .. "] " .. c.image_url end
    return c.image_url
  end
  return c.text
end

-- A reply is the bot's table: it is read with raw access (rawget, rawlen),
-- so what is checked is what is sent (no __len or __index can count 12
-- buttons and then hand over 16), and every limit raises at the bot's line.
local function rget(t, k) return rawget(t, k) end

local function normalize_content(x, fallback, level)
  level = level + 1
  local c
  if type(x) == "string" then
    c = { kind = "text", text = check_text(x, "reply text", level) }
  elseif type(x) ~= "table" then
    raise("reply must be a string or a table")
  elseif rget(x, "card") ~= nil then
    local k = rget(x, "card")
    if type(k) ~= "table" then raise("card must be a table") end
    c = { kind = "card", title = opt_text(rget(k, "title"), "card.title", level),
          text = opt_text(rget(k, "text"), "card.text", level),
          image_url = opt_text(rget(k, "image"), "card.image", level), buttons = {} }
    local bs = rget(k, "buttons")
    if bs == nil then bs = {} end
    if type(bs) ~= "table" then raise("card.buttons must be a list") end
    local nb = rawlen(bs)
    if nb > BUTTONS_MAX then raise("a card has at most " .. BUTTONS_MAX .. " buttons") end
    for i = 1, nb do
      local b = rget(bs, i)
      if type(b) ~= "table" then raise("card.buttons[" .. i .. "] must be a table") end
      local label = rget(b, "label")
      if label == nil then label = rget(b, 1) end
      label = check_text(label, "card.buttons[" .. i .. "].label", level)
      local pb, url = rget(b, "postback"), rget(b, "url")
      if (pb == nil) == (url == nil) then
        raise("card.buttons[" .. i .. "] needs exactly one of postback or url")
      end
      c.buttons[i] = { label = label, payload = opt_text(pb, "postback", level),
                       url = opt_text(url, "url", level) }
    end
    if not c.title and not c.text and not c.image_url then
      raise("a card needs a title, a text or an image")
    end
  elseif rget(x, "quick_replies") ~= nil then
    local q = rget(x, "quick_replies")
    if type(q) ~= "table" then raise("quick_replies must be a table") end
    c = { kind = "quick_replies", text = check_text(rget(q, "text"), "quick_replies.text", level),
          buttons = {} }
    local os_ = rget(q, "options")
    if type(os_) ~= "table" or rawlen(os_) == 0 then
      raise("quick_replies.options must be a non-empty list")
    end
    local no = rawlen(os_)
    if no > BUTTONS_MAX then raise("at most " .. BUTTONS_MAX .. " quick replies") end
    for i = 1, no do
      local o = rget(os_, i)
      if type(o) == "string" then o = { label = o } end
      if type(o) ~= "table" then raise("quick_replies.options[" .. i .. "] must be a table") end
      local label = rget(o, "label")
      if label == nil then label = rget(o, 1) end
      label = check_text(label, "quick_replies.options[" .. i .. "].label", level)
      local payload = rget(o, "payload")
      if payload == nil then payload = rget(o, 2) end
      if payload == nil then payload = label end
      c.buttons[i] = { label = label, payload = opt_text(payload, "payload", level) }
    end
  elseif rget(x, "image") ~= nil then
    local im = rget(x, "image")
    if type(im) ~= "table" then raise("image must be a table") end
    c = { kind = "image", image_url = check_text(rget(im, "url"), "image.url", level),
          text = opt_text(rget(im, "alt"), "image.alt", level) }
  elseif rget(x, "text") ~= nil then
    c = { kind = "text", text = check_text(rget(x, "text"), "reply text", level) }
  else
    raise("reply table needs one of text, card, quick_replies or image")
  end
  local fb = fallback
  if fb == nil and type(x) == "table" then fb = rget(x, "fallback") end
  c.fallback = opt_text(fb, "fallback", level)
  if not c.fallback and c.kind ~= "text" then c.fallback = fallback_text(c) end
  return c
end

------------------------------------------------------------------------------
-- Conversations: live state, committed base, pending changes.

local convs = {}   -- [conversation id] = record

-- One empty table shared where a turn would otherwise make a new empty one
-- (an unchanged state's encoding, a commit without state or tag changes):
-- nothing ever writes to it, and bot code never sees it.
local NOTHING = setmetatable({}, {
  __newindex = function() error("internal error: the shared empty table was written to") end,
  __metatable = false,
})

local function conv_rec(id)
  local rec = convs[id]
  if not rec then
    -- rseq, rtext, rsender: the conversation's last RECENT_MAX inbound
    -- messages (for quoting) in a ring of three arrays, rn messages so
    -- far; a table per message made these most of the objects the
    -- collector walks when a bot holds many conversations.
    rec = { id = id, state = {}, base = {}, pending = {}, tags = {}, inflight = {},
            tags_add = {}, tags_remove = {}, rseq = {}, rtext = {}, rsender = {}, rn = 0,
            locale = default_locale }
    convs[id] = rec
  end
  return rec
end

-- Remembers an inbound message for quoting.
local function remember(rec, seq, text, sender)
  local n = rec.rn + 1
  local i = (n - 1) % RECENT_MAX + 1
  rec.rn = n
  rec.rseq[i], rec.rtext[i], rec.rsender[i] = seq, text, sender
end

-- The remembered messages, oldest first, as a list of {seq, text, sender}
-- (reload).
local function recent_list(rec)
  local out, n = {}, rec.rn
  for k = m_max(1, n - RECENT_MAX + 1), n do
    local i = (k - 1) % RECENT_MAX + 1
    out[#out + 1] = { seq = rec.rseq[i], text = rec.rtext[i], sender = rec.rsender[i] }
  end
  return out
end

local function decode_state(base)
  local st = {}
  for k, enc in next, base do
    local v = json_decode(enc)
    if v ~= nil then st[k] = v end
  end
  return st
end

-- The timers of a state, read raw: the state is the bot's table.
local function timers_of(state)
  if type(state) ~= "table" then return nil end
  local tm = rawget(state, TIMER_KEY)
  if type(tm) ~= "table" or type(rawget(tm, "list")) ~= "table" then return nil end
  return tm
end

-- Hands the C side the timers it should have armed for the conversation.
local function sync_timers(rec)
  local tm = timers_of(rec.state)
  -- Most conversations have no timers: once the C side was told so, an
  -- empty list again changes nothing there (it drops timers only when told).
  if not tm and rec.no_timers then return end
  rec.no_timers = not tm
  local list = {}
  if tm then
    local tl = rawget(tm, "list")
    for i = 1, m_min(rawlen(tl), TIMERS_MAX) do
      local e = rawget(tl, i)
      if type(e) == "table" then
        local id, due = rawget(e, "id"), rawget(e, "due")
        if m_type(id) == "integer" and type(due) == "number" and due == due
           and due > -2^62 and due < 2^62 then
          list[#list + 1] = { id, m_tointeger(due) or m_floor(due) }
        end
      end
    end
  end
  C.sync_timers(rec.id, list)
end

-- Encodes the state of a conversation key by key and checks every limit;
-- returns the table of encodings, or raises (with raise, at the bot's line
-- when a handler is running). Raw access only: no bot code runs here.
local function encode_state(st)
  if type(st) ~= "table" then raise("ctx.state must stay a table") end
  if next(st) == nil then return NOTHING end
  local seen, total, nkeys = {}, 0, 0
  for k, v in next, st do
    if type(k) ~= "string" then
      raise("ctx.state keys must be strings, got " .. type(k))
    end
    if #k == 0 or #k > STATE_KEY_NAME_MAX then
      raise("ctx.state key names are 1 to " .. STATE_KEY_NAME_MAX .. " bytes")
    end
    nkeys = nkeys + 1
    if nkeys > STATE_KEYS_MAX then
      raise("ctx.state has more than " .. STATE_KEYS_MAX .. " keys")
    end
    -- Strings, integers and booleans, the usual state values, are encoded
    -- here directly: the state is checked before every reply.
    local tv, enc = type(v), nil
    if tv == "string" then enc = esc(v)
    elseif tv == "boolean" then enc = v and "true" or "false"
    elseif m_type(v) == "integer" then enc = s_format("%d", v)
    else
      local ok, e = pcall(json_encode_max, v, STATE_KEY_MAX)
      if not ok then raise("ctx.state." .. k .. ": " .. safe_str(e)) end
      enc = e
    end
    if enc and #enc > STATE_KEY_MAX then enc = nil end
    if not enc then
      raise("ctx.state." .. k .. " is larger than " .. STATE_KEY_MAX .. " bytes of JSON")
    end
    total = total + #enc + #k
    if total > STATE_TOTAL_MAX then
      raise("ctx.state is larger than " .. STATE_TOTAL_MAX .. " bytes of JSON")
    end
    seen[k] = enc
  end
  return seen
end

-- Moves the changed keys of a finished handler (its encoded state) to
-- pending.
local function apply_state(rec, seen)
  for k, enc in next, seen do
    if rec.base[k] ~= enc then rec.base[k] = enc; rec.pending[k] = enc end
  end
  for k in next, rec.base do
    if seen[k] == nil then rec.base[k] = nil; rec.pending[k] = false end
  end
end

local function diff_state(rec)
  apply_state(rec, encode_state(rec.state))
end

------------------------------------------------------------------------------
-- The bot object.

local Bot = {}
Bot.__index = Bot
Bot.__metatable = "bot"

local EVENT_NAMES = {
  opened = true, assigned = true, handed_off = true, handed_back = true,
  closed = true, tagged = true, state_changed = true, locale_changed = true,
}

local the_bot = nil

local function check_fn(fn, what)
  if type(fn) ~= "function" then error(what .. " needs a function", 3) end
end

local function check_self(b)
  if getmetatable(b) ~= "bot" then error("bot methods are called with ':'", 3) end
end

-- Lower-cases a Lua pattern without touching what follows a '%', so that
-- %A and %S keep their meaning.
local function lower_pattern(p)
  local out, i = {}, 1
  while i <= #p do
    local ch = p:sub(i, i)
    if ch == "%" then
      out[#out + 1] = p:sub(i, i + 1)
      i = i + 2
    else
      out[#out + 1] = ch:lower()
      i = i + 1
    end
  end
  return t_concat(out)
end

function Bot:on_open(fn) check_self(self); check_fn(fn, "on_open"); self._open = fn; return self end
function Bot:on_message(fn) check_self(self); check_fn(fn, "on_message"); self._message = fn; return self end
function Bot:on_agent_message(fn)
  check_self(self); check_fn(fn, "on_agent_message"); self._agent = fn; return self
end
function Bot:fallback(fn) check_self(self); check_fn(fn, "fallback"); self._fallback = fn; return self end

function Bot:command(name, fn)
  check_self(self)
  if type(name) ~= "string" or not name:match("^/[%w_%-]+$") then
    error("command name must look like '/word'", 2)
  end
  check_fn(fn, "command")
  self._commands[name:lower()] = fn
  return self
end

function Bot:match(pattern, fn, opts)
  check_self(self)
  if type(pattern) ~= "string" then error("match pattern must be a string", 2) end
  check_fn(fn, "match")
  if opts ~= nil and type(opts) ~= "table" then error("match options must be a table", 2) end
  local ci = not (opts and opts.case_sensitive)
  local ok, err = pcall(string.find, "", pattern)
  if not ok then error("bad pattern '" .. pattern .. "': " .. tostring(err), 2) end
  self._matches[#self._matches + 1] = { pattern = ci and lower_pattern(pattern) or pattern,
                                        ci = ci, fn = fn }
  return self
end

function Bot:on_postback(pattern, fn)
  check_self(self)
  if type(pattern) ~= "string" then error("postback pattern must be a string", 2) end
  check_fn(fn, "on_postback")
  local ok, err = pcall(string.find, "", pattern)
  if not ok then error("bad pattern '" .. pattern .. "': " .. tostring(err), 2) end
  self._postbacks[#self._postbacks + 1] = { pattern = "^" .. pattern .. "$", raw = pattern,
                                            fn = fn }
  return self
end

function Bot:on_event(name, fn)
  check_self(self)
  if not EVENT_NAMES[name] then error("unknown event '" .. tostring(name) .. "'", 2) end
  check_fn(fn, "on_event")
  self._events[name] = fn
  return self
end

function Bot:on_timer(name, fn)
  check_self(self)
  if type(name) ~= "string" or name == "" then error("timer name must be a non-empty string", 2) end
  check_fn(fn, "on_timer")
  self._timers[name] = fn
  return self
end

-- Middleware (lua/lib/middleware.lua): bot:use(fn) runs fn(ctx, ev, next)
-- before every handler.
local middleware_mod = load(C.lib("middleware"), "=runtime/middleware", "t")({
  raise = function(msg) error(C.where() .. msg, 0) end,
})

function Bot:use(fn)
  check_self(self)
  self._use[#self._use + 1] = middleware_mod.check(fn)
  return self
end

-- bot:dialog(name, spec): a multi-turn form (lua/lib/dialog.lua). While a
-- conversation is in a dialog, the customer's messages and taps go to the
-- dialog before any other handler.
function Bot:dialog(name, spec)
  check_self(self)
  if self._dialogs[name] ~= nil then raise("dialog '" .. safe_str(name) .. "' is defined twice") end
  local d = dialog_mod.new(name, spec, self)
  self._dialogs[name] = d
  self._dialog_order[#self._dialog_order + 1] = d
  if d.nudges and not self._timers[dialog_mod.TIMER] then
    local dialogs = self._dialogs
    self._timers[dialog_mod.TIMER] = function(ctx, data) dialog_mod.nudge(ctx, dialogs, data) end
  end
  return d
end

local function new_bot()
  if the_bot then error("parley.bot() may be called only once", 2) end
  the_bot = setmetatable({ _commands = {}, _matches = {}, _postbacks = {}, _events = {},
                           _timers = {}, _dialogs = {},
                           _dialog_order = {}, _use = {} }, Bot)
  return the_bot
end

------------------------------------------------------------------------------
-- ctx: what a handler works with.

-- A handler's ctx is a userdata (C.proxy) with no fields of its own: what
-- it stands for lives in ctx_data, a table bot code cannot name, keyed by
-- the proxy. When the handler ends its entry goes, and nothing can bring it
-- back: the ctx is dead for good, whatever a bot kept of it.

local ctx_data = setmetatable({}, { __mode = "k" })
local Ctx = {}

local function dead()
  raise("ctx used after its handler finished")
end

-- The running ctx's record, or a raise: every method starts with it.
local function ctx_of(self)
  local d = ctx_data[self]
  if d == nil then
    if type(self) ~= "userdata" or getmetatable(self) ~= "ctx" then
      raise("ctx methods are called with ':'")
    end
    dead()
  end
  return d
end

local ctx_fields = {
  conversation = function(d) return d.rec.id end,
  seq = function(d) return d.seq end,
  locale = function(d) return d.rec.locale end,
  customer = function(d) return d.rec.customer end,
  state = function(d) return d.rec.state end,
  bot = function() return bot_name end,
  kind = function(d) return d.kind end,
  idempotency_key = function(d)
    local k = d.idem
    if not k then
      k = C.idem(d.rec.id, d.seq, d.kind == "timer")
      d.idem = k
    end
    return k
  end,
}

local CtxMT = {
  __metatable = "ctx",
  __index = function(self, k)
    local m = Ctx[k]
    if m ~= nil then return m end
    local d = ctx_data[self]
    if d == nil then dead() end
    local f = ctx_fields[k]
    if f then return f(d) end
    return nil
  end,
  __newindex = function(self, k, v)
    local d = ctx_data[self]
    if d == nil then dead() end
    -- ctx.state = {...} replaces the state table, as a plain table would
    -- let a handler do; every other field is the runtime's.
    if k == "state" then
      if type(v) ~= "table" then raise("ctx.state must be a table") end
      d.rec.state = v
      return
    end
    raise("ctx." .. safe_str(k) .. " cannot be set")
  end,
  __tostring = function() return "ctx" end,
  __name = "ctx",
}

-- State and tag limits, checked where the bot acts: before a reply or an
-- action leaves, so a handler over a limit fails before anything of it
-- reaches the customer, with the error at its own line.
local function check_limits(d)
  local st = d.rec.state
  if type(st) ~= "table" then raise("ctx.state must stay a table") end
  if next(st) ~= nil then encode_state(st) end
end

local function quote_of(rec, q)
  if q == nil then return nil end
  local seq
  if type(q) == "table" then
    seq = rawget(q, "seq")
  elseif m_type(q) == "integer" then
    seq = q
  else
    raise("quote must be a message or a seq")
  end
  if m_type(seq) ~= "integer" or seq < 1 then raise("quote needs a positive seq") end
  -- The quote shows what the conversation holds for that seq, never text
  -- or a sender the bot made up.
  local n = rec.rn
  for k = n, m_max(1, n - RECENT_MAX + 1), -1 do
    local i = (k - 1) % RECENT_MAX + 1
    if rec.rseq[i] == seq then
      return { seq = seq, excerpt = clean_cut(rec.rtext[i], EXCERPT_MAX),
               sender = clean_cut(rec.rsender[i], 128) }
    end
  end
  raise("quote: seq " .. seq .. " is not one of the conversation's last " .. RECENT_MAX ..
    " messages")
end

function Ctx:reply(content, opts)
  local d = ctx_data[self] or ctx_of(self)
  -- A text without options, the usual reply: no content table, and
  -- C.send_text makes check_text's checks itself. Before the state's limits
  -- are checked the text is, as below; an empty state has none to check.
  if opts == nil and type(content) == "string" then
    local st = d.rec.state
    if type(st) ~= "table" or next(st) ~= nil then
      check_text(content, "reply text", 2)
      check_limits(d)
    end
    return C.send_text(d.rec.id, content)
  end
  if opts ~= nil and type(opts) ~= "table" then raise("reply options must be a table") end
  local c = normalize_content(content, opts and rawget(opts, "fallback"), 2)
  local q = quote_of(d.rec, opts and rawget(opts, "quote"))
  check_limits(d)
  return C.send(d.rec.id, c, q)
end

local function tag_list(...)
  local n = select("#", ...)
  if n == 0 then raise("tag needs at least one tag") end
  local out = {}
  for i = 1, n do
    local t = select(i, ...)
    if type(t) ~= "string" or t == "" or #t > TAG_MAX or s_find(t, "[%c\127]") then
      raise("a tag is a string of 1 to " .. TAG_MAX .. " bytes without control characters")
    end
    out[i] = t
  end
  return out
end

-- The conversation's tags once this handler's changes are applied.
local function tag_count(d)
  local n = 0
  for t in next, d.rec.tags do
    if not d.tags_remove[t] then n = n + 1 end
  end
  for t in next, d.tags_add do
    if not d.rec.tags[t] then n = n + 1 end
  end
  return n
end

-- A handler's tag changes start as the shared empty table (most handlers
-- change no tag) and get tables of their own on the first change.
local function own_tags(d)
  if d.tags_add == NOTHING then d.tags_add, d.tags_remove = {}, {} end
end

function Ctx:tag(...)
  local d = ctx_of(self)
  local list = tag_list(...)
  own_tags(d)
  for _, t in ipairs(list) do
    if not d.tags_add[t] and (not d.rec.tags[t] or d.tags_remove[t]) then
      d.tags_add[t] = true; d.tags_remove[t] = nil
      if tag_count(d) > TAGS_MAX then
        d.tags_add[t] = nil
        raise("a conversation has at most " .. TAGS_MAX .. " tags")
      end
    end
    d.tags_add[t] = true; d.tags_remove[t] = nil
  end
end

function Ctx:untag(...)
  local d = ctx_of(self)
  local list = tag_list(...)
  own_tags(d)
  for _, t in ipairs(list) do d.tags_remove[t] = true; d.tags_add[t] = nil end
end

function Ctx:has_tag(t)
  local d = ctx_of(self)
  if d.tags_add[t] then return true end
  if d.tags_remove[t] then return false end
  return d.rec.tags[t] == true
end

local function opt_note(note, what)
  if note == nil then return nil end
  return check_text(note, what, 0, NOTE_MAX)
end

function Ctx:handoff(queue, note)
  local d = ctx_of(self)
  if type(queue) ~= "string" or #queue == 0 or #queue > QUEUE_MAX
     or s_find(queue, "[^%w%._:@%-]") then
    raise("handoff needs a queue name of 1 to " .. QUEUE_MAX .. " bytes of [A-Za-z0-9._:@-]")
  end
  note = opt_note(note, "handoff note")
  check_limits(d)
  return C.action(d.rec.id, "handoff", { queue = queue, note = note })
end

function Ctx:close(reason)
  local d = ctx_of(self)
  reason = opt_note(reason, "close reason")
  check_limits(d)
  return C.action(d.rec.id, "close", { note = reason })
end

function Ctx:set_locale(locale)
  local d = ctx_of(self)
  if type(locale) ~= "string" or #locale > 35 or not s_match(locale, "^%a%a%a?[%w%-_]*$") then
    raise("set_locale needs a locale like 'en' or 'zh-Hant-TW'")
  end
  check_limits(d)
  d.rec.locale = locale
  return C.action(d.rec.id, "set_locale", { locale = locale })
end

function Ctx:t(key, vars)
  local d = ctx_of(self)
  return (render(d.rec.locale, key, vars, 3))
end

function Ctx:log(level, msg)
  local d = ctx_of(self)
  C.log(level_of(level), tostring(msg), d.rec.id, d.seq)
end

function Ctx:after(seconds, name, data)
  local d = ctx_of(self)
  if type(seconds) ~= "number" or not (seconds >= 0 and seconds <= 366 * 86400) then
    raise("after needs a delay in seconds between 0 and one year")
  end
  if type(name) ~= "string" or name == "" then raise("after needs a timer name") end
  if the_bot and not the_bot._timers[name] then
    raise("no on_timer handler for '" .. name .. "'")
  end
  local st = d.rec.state
  if type(st) ~= "table" then raise("ctx.state must stay a table") end
  local tm = timers_of(st)
  if not tm then
    tm = { next = d.rec.timer_next or 1, list = {} }
    rawset(st, TIMER_KEY, tm)
  end
  local list = rawget(tm, "list")
  if rawlen(list) >= TIMERS_MAX then raise("at most " .. TIMERS_MAX .. " timers per conversation") end
  -- Ids only grow, also across an emptied timer list (rec.timer_next): a
  -- timer that arms its successor must not hand it its own, firing id.
  local id = m_tointeger(rawget(tm, "next")) or 1
  if d.rec.timer_next and id < d.rec.timer_next then id = d.rec.timer_next end
  rawset(tm, "next", id + 1)
  d.rec.timer_next = id + 1
  rawset(list, rawlen(list) + 1, { id = id, name = name, due = C.now() + m_floor(seconds * 1000),
                                   data = data })
  return id
end

function Ctx:cancel(name)
  local d = ctx_of(self)
  if type(name) ~= "string" then raise("cancel needs a timer name") end
  local st = d.rec.state
  local tm = timers_of(st)
  if not tm then return 0 end
  local list = rawget(tm, "list")
  local kept, n = {}, 0
  for i = 1, rawlen(list) do
    local e = rawget(list, i)
    if type(e) == "table" and rawget(e, "name") == name then n = n + 1
    else kept[#kept + 1] = e end
  end
  rawset(tm, "list", kept)
  if #kept == 0 then rawset(st, TIMER_KEY, nil) end
  return n
end

function Ctx:timers()
  local d = ctx_of(self)
  local out = {}
  local tm = timers_of(d.rec.state)
  if tm then
    local list = rawget(tm, "list")
    for i = 1, rawlen(list) do
      local e = rawget(list, i)
      if type(e) == "table" then
        out[#out + 1] = { id = rawget(e, "id"), name = rawget(e, "name"), due = rawget(e, "due") }
      end
    end
  end
  return out
end

-- The record behind a ctx is the conversation's own table, filled again
-- for each handler: only one handler of a conversation runs at a time,
-- and the ctx of an earlier one no longer reaches it (kill_ctx).
local function new_ctx(rec, seq, kind)
  local ctx = C.proxy(CtxMT)
  local d = rec.ctxd
  if d == nil then d = {}; rec.ctxd = d end
  d.rec, d.seq, d.kind, d.tags_add, d.tags_remove, d.idem = rec, seq, kind, NOTHING, NOTHING, nil
  ctx_data[ctx] = d
  return ctx
end

------------------------------------------------------------------------------
-- Dispatch.

local function split_args(s)
  local out = {}
  for w in s:gmatch("%S+") do out[#out + 1] = w end
  return out
end

local function dispatch_message(b, ctx, msg)
  local text = msg.text or ""
  -- Without commands or patterns (an echo bot, a bot of dialogs) there is
  -- nothing to match the text against.
  local commands = b._commands
  local cmd, rest
  if next(commands) ~= nil then cmd, rest = text:match("^%s*(/[%w_%-]+)%s*(.*)$") end
  if cmd then
    local fn = commands[cmd:lower()]
    if fn then
      c_metric("handler", "command " .. cmd:lower())
      return true, fn(ctx, msg, split_args(rest))
    end
  end
  local lowered = nil
  local matches = b._matches
  if matches[1] ~= nil then for _, m in ipairs(matches) do
    local subject = text
    if m.ci then lowered = lowered or text:lower(); subject = lowered end
    local caps = { subject:find(m.pattern) }
    if caps[1] then
      t_remove(caps, 1); t_remove(caps, 1)
      c_metric("handler", "match " .. m.pattern)
      return true, m.fn(ctx, msg, caps)
    end
  end end
  if b._message then c_metric("handler", "on_message") return true, b._message(ctx, msg) end
  if b._fallback then c_metric("handler", "fallback") return true, b._fallback(ctx, msg) end
  return false
end

local function dispatch(b, ctx, ev)
  local kind = ev.kind
  if kind == "message" then
    -- Message handlers hear the customer. What an agent writes (while
    -- holding the conversation, before handing it back) goes to
    -- on_agent_message only; other senders' messages are acknowledged.
    local role = ev.sender_role
    if role == "agent" or role == "bot" or role == "system" then
      if role == "agent" and b._agent then
        c_metric("handler", "on_agent_message")
        return true, b._agent(ctx, ev)
      end
      return false
    end
    if next(b._dialogs) ~= nil then
      local dlg, prog = dialog_mod.current(ctx, b._dialogs)
      -- A registered command is an explicit request and still reaches its
      -- handler mid-dialog (help, a new dialog); everything else answers
      -- the dialog's step.
      local cmd = ev.content ~= "postback" and s_match(ev.text or "", "^%s*(/[%w_%-]+)")
      if dlg and not (cmd and b._commands[s_lower(cmd)]) then
        local text = ev.text
        if ev.content == "postback" then text = ev.label or ev.payload end
        c_metric("handler", "dialog " .. dlg.name)
        return true, dialog_mod.route(ctx, dlg, prog, text)
      end
      if not dlg and not cmd and ev.content ~= "postback" then
        local starting = dialog_mod.starting(b._dialog_order, ev.text)
        if starting then
          c_metric("handler", "dialog " .. starting.name)
          return true, starting:start(ctx)
        end
      end
    end
    if ev.content == "postback" then
      for _, p in ipairs(b._postbacks) do
        local caps = { ev.payload:find(p.pattern) }
        if caps[1] then
          t_remove(caps, 1); t_remove(caps, 1)
          c_metric("handler", "postback " .. p.raw)
          return true, p.fn(ctx, ev, caps)
        end
      end
      -- A tapped quick reply without a postback handler reads like its label.
      ev.text = ev.label or ev.payload
    end
    return dispatch_message(b, ctx, ev)
  elseif kind == "opened" then
    if b._open then c_metric("handler", "on_open") return true, b._open(ctx, ev) end
    local fn = b._events.opened
    if fn then c_metric("handler", "event opened") return true, fn(ctx, ev) end
    return false
  end
  local fn = b._events[kind]
  if fn then c_metric("handler", "event " .. safe_str(kind)) return true, fn(ctx, ev) end
  return false
end

------------------------------------------------------------------------------
-- The environment bot code runs in.

local api, http_mod, json_mod
local handler_threads = setmetatable({}, { __mode = "k" })

local function make_env()
  local env = {}
  for _, k in ipairs({ "assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal",
                       "rawget", "rawlen", "select", "tonumber", "tostring", "type",
                       "getmetatable" }) do
    env[k] = _G[k]
  end
  -- Lua runs finalizers with debug hooks off, so a __gc metamethod would
  -- escape the instruction budget: bot tables cannot have one.
  env.setmetatable = function(t, mt)
    if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
      error("__gc metamethods are not allowed", 2)
    end
    return setmetatable(t, mt)
  end
  -- A message handler called for an error raised by the budget hook would
  -- run with hooks off; this xpcall calls it after unwinding instead, where
  -- the budget still holds.
  env.xpcall = function(f, h, ...)
    if type(h) ~= "function" then error("bad argument #2 to 'xpcall' (function expected)", 2) end
    local r = t_pack(pcall(f, ...))
    if r[1] then return t_unpack(r, 1, r.n) end
    return false, h(r[2])
  end
  env._VERSION = _VERSION
  env.rawset = function(t, k, v)
    if type(t) ~= "table" then
      error("bad argument #1 to 'rawset' (table expected, got " .. type(t) .. ")", 2)
    end
    if protected[t] then error("attempt to modify a read-only table", 2) end
    return rawset(t, k, v)
  end
  -- load compiles in C, where no hook runs: the chunk's size bounds the
  -- time it takes (LOAD_MAX bytes, as bot.lua itself).
  env.load = function(chunk, name, mode, e)
    if mode ~= nil and mode ~= "t" then error("only text chunks may be loaded", 2) end
    if e == nil then e = env end
    if type(chunk) == "string" then
      if #chunk > LOAD_MAX then error("chunk larger than " .. LOAD_MAX .. " bytes", 2) end
    elseif type(chunk) == "function" then
      local reader, total = chunk, 0
      chunk = function()
        local piece = reader()
        if type(piece) == "string" then
          total = total + #piece
          if total > LOAD_MAX then error("chunk larger than " .. LOAD_MAX .. " bytes", 0) end
        end
        return piece
      end
    end
    return load(chunk, name, "t", e)
  end
  env.print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    C.log(1, t_concat(parts, "\t"))
  end
  env.string = readonly(string, "string")
  env.table = readonly(table, "table")
  env.math = readonly(math, "math")
  env.utf8 = readonly(utf8, "utf8")
  -- A handler's own coroutine stays out of reach: resumed or closed from
  -- bot code it would run outside the runtime's control.
  local co_lib = {}
  for k, f in next, coroutine do co_lib[k] = f end
  co_lib.running = function()
    local co, main = co_running()
    if handler_threads[co] then return nil, true end
    return co, main
  end
  -- A coroutine the budget stopped died inside the count hook, where Lua
  -- turns hooks off; closing it would run its __close handlers with no
  -- budget at all. Such a coroutine (C.doomed) is never closed: its
  -- to-be-closed variables are abandoned with it.
  co_lib.close = function(co)
    if type(co) == "thread" and C.doomed(co) then
      return false, "coroutine stopped by the instruction budget"
    end
    return co_close(co)
  end
  co_lib.wrap = function(f)
    local co = co_create(f)
    return function(...)
      local r = t_pack(co_resume(co, ...))
      if r[1] then return t_unpack(r, 2, r.n) end
      if co_status(co) == "dead" and not C.doomed(co) then co_close(co) end
      error(r[2], 0)
    end
  end
  env.coroutine = readonly(co_lib, "coroutine")
  env.parley = api
  env.http = http_mod
  env.json = json_mod
  env._G = env
  return setmetatable(env, {
    __index = function(_, k) error("undefined global '" .. tostring(k) .. "'", 2) end,
    __metatable = "sandbox",
  })
end

------------------------------------------------------------------------------
-- HTTP for bot code: argument checks and the allow-list; C does the rest.

-- The URL is parsed by libcurl's own parser (C.url_host), the one the
-- request will use, and the host is checked with the HTTP client's own
-- allow-list match against bot.yaml's entries as written: no second parser
-- to disagree about user info, IPv6 literals or numeric hosts.
local function http_request(req)
  if type(req) ~= "table" then raise("http.request needs a table") end
  local url = rawget(req, "url")
  if type(url) ~= "string" then raise("http.request needs a url") end
  local host, why = C.url_host(url)
  if not host then raise(why) end
  local method = rawget(req, "method")
  local body = rawget(req, "body")
  if method == nil then method = body ~= nil and "POST" or "GET" end
  if type(method) ~= "string" or not s_match(method, "^%u+$") or #method > 16 then
    raise("bad http method")
  end
  local headers = {}
  local rh = rawget(req, "headers")
  if rh ~= nil then
    if type(rh) ~= "table" then raise("http headers must be a table") end
    for k, v in next, rh do
      if type(k) ~= "string" or type(v) ~= "string" or s_find(k, "[%c:]") or s_find(v, "[\r\n%z]") then
        raise("http headers must be string names and values without newlines")
      end
      headers[#headers + 1] = k .. ": " .. v
    end
  end
  if body ~= nil and type(body) ~= "string" then raise("http body must be a string") end
  local timeout = rawget(req, "timeout")
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout > 0 and timeout <= 120)) then
    raise("http timeout must be between 0 and 120 seconds")
  end
  local resp, err = C.http(method, url, headers, body, timeout and m_floor(timeout * 1000) or 0)
  c_metric("http", host, resp and tostring(rawget(resp, "status")) or "error")
  return resp, err
end

local function http_opts(opts, what)
  local r = {}
  if opts ~= nil then
    if type(opts) ~= "table" then raise(what .. " options must be a table") end
    r.headers, r.timeout = rawget(opts, "headers"), rawget(opts, "timeout")
  end
  return r
end

http_mod = readonly({
  request = http_request,
  get = function(url, opts)
    local r = http_opts(opts, "http.get")
    r.method, r.url = "GET", url
    return http_request(r)
  end,
  post = function(url, body, opts)
    local r = http_opts(opts, "http.post")
    r.method, r.url, r.body = "POST", url, body
    return http_request(r)
  end,
}, "http")

json_mod = readonly({
  encode = function(v)
    local ok, s = pcall(json_encode, v)
    if not ok then error(s, 2) end
    return s
  end,
  decode = function(s)
    if type(s) ~= "string" then error("json.decode needs a string", 2) end
    -- The decoder runs in C without a hook: the text's size bounds its time.
    if #s > JSON_DECODE_MAX then raise("json.decode: text larger than " .. JSON_DECODE_MAX .. " bytes") end
    return json_decode(s)
  end,
  null = json_null,
}, "json")

api = readonly({
  bot = new_bot,
  log = function(level, msg) C.log(level_of(level), tostring(msg)) end,
  t = function(locale, key, vars) return (render(locale, key, vars, 3)) end,
  now = function() return C.now() end,
  name = bot_name,
  default_locale = default_locale,
  config = deep_readonly(config, "parley.config"),
  version = C.version,
}, "parley")

------------------------------------------------------------------------------
-- Entry points for the C side.

local rt = {}

-- Runs bot.lua; returns the bot object or raises.
function rt.load_bot(source, chunkname)
  local env = make_env()
  local fn, err = load(source, chunkname, "t", env)
  if not fn then error(err, 0) end
  local ret = fn()
  local b = the_bot
  if ret ~= nil and ret ~= b then error(chunkname:sub(2) .. ": bot.lua must return the object of parley.bot()", 0) end
  if not b then error(chunkname:sub(2) .. ": bot.lua must create its bot with parley.bot()", 0) end
  local fr = config.fallback_reply
  if fr ~= nil and not has_template(fr) then
    error("bot.yaml: fallback_reply: no template key '" .. tostring(fr) .. "'", 0)
  end
  return true
end

-- The gateway's document becomes the committed base. keep: a handler is
-- running or events are queued; the live state and tags, which already
-- hold their changes (and those of handled events whose commits the
-- gateway did not apply), stay, and the next commit carries whatever
-- differs from the gateway's document. Otherwise the record starts over
-- from the document and the gateway delivers the unapplied events again.
function rt.assign(conv, state, locale, customer, tags, keep)
  local rec = conv_rec(conv)
  rec.base, rec.pending, rec.inflight = {}, {}, {}
  for k, enc in pairs(state) do rec.base[k] = enc end
  if locale and locale ~= "" then rec.locale = locale end
  if customer and customer ~= "" then rec.customer = customer end
  local gw_tags = {}
  for _, t in ipairs(tags) do gw_tags[t] = true end
  rec.tags_add, rec.tags_remove = {}, {}
  if keep then
    for t in pairs(rec.tags) do
      if not gw_tags[t] then rec.tags_add[t] = true end
    end
    for t in pairs(gw_tags) do
      if not rec.tags[t] then rec.tags_remove[t] = true end
    end
    -- Without a running handler the changes of the handled events are in
    -- the live state only: put the difference in pending now.
    if not rec.ctx then diff_state(rec) end
  else
    rec.state = decode_state(rec.base)
    rec.tags = gw_tags
  end
  sync_timers(rec)
end

function rt.forget(conv)
  local rec = convs[conv]
  -- A handler dropped while it waited (the conversation left) leaves its
  -- ctx behind: it dies with the record.
  if rec and rec.ctx ~= nil then ctx_data[rec.ctx] = nil end
  convs[conv] = nil
end

-- Kills a handler's ctx for good: its record leaves ctx_data.
local function kill_ctx(rec)
  local ctx = rec.ctx
  rec.ctx = nil
  if ctx ~= nil then ctx_data[ctx] = nil end
end

-- The end of a handler, still in its coroutine and under its budget: the
-- state is encoded and checked (a limit broken here fails the handler),
-- and the ctx dies. rt.finish applies the result once the replies are
-- stored. Returns true when there is nothing to apply: an empty state and
-- an empty committed base, no tag changes and no timers the C side holds.
-- Then rt.finish would change nothing (until it runs, no bot code runs for
-- the conversation, and an Assign settles the record itself), so the C
-- side does not call it.
local function end_handler(rec)
  local ctx, st = rec.ctx, rec.state
  local d = ctx and ctx_data[ctx]
  -- An empty state is encode_state's first answer, without the call.
  local seen = NOTHING
  if type(st) ~= "table" or next(st) ~= nil then seen = encode_state(st) end
  rec.ctx = nil
  if ctx ~= nil then ctx_data[ctx] = nil end
  local add, rm = d and d.tags_add, d and d.tags_remove
  if seen == NOTHING and add == NOTHING and rm == NOTHING and rec.no_timers
     and next(rec.base) == nil then
    rec.done = nil
    return true
  end
  rec.done = { seen = seen, tags_add = add, tags_remove = rm }
  return false
end

-- Runs inside the handler's coroutine. kind is "event" or "timer"; for a
-- timer, ev is its id. Returns true when a handler ran, and true when the
-- handler left nothing for rt.finish to do (end_handler).
function rt.run(conv, kind, ev, seq)
  handler_threads[co_running()] = true
  local rec = convs[conv] or conv_rec(conv)
  if rec.ctx ~= nil then kill_ctx(rec) end
  rec.done = nil
  local b = the_bot
  if kind == "timer" then
    local tm = timers_of(rec.state)
    if not tm then return false end
    local list = rawget(tm, "list")
    local entry
    for i = 1, rawlen(list) do
      local e = rawget(list, i)
      if type(e) == "table" and rawget(e, "id") == ev then entry = t_remove(list, i); break end
    end
    if rawlen(list) == 0 then rawset(rec.state, TIMER_KEY, nil) end
    if not entry then return false end
    local name = rawget(entry, "name")
    local fn = b._timers[name]
    if not fn then
      C.log(2, "no on_timer handler for '" .. safe_str(name) .. "'", conv, seq)
      return false
    end
    local ctx = new_ctx(rec, seq, "timer")
    rec.ctx = ctx
    local data = rawget(entry, "data")
    c_metric("handler", "timer " .. safe_str(name))
    -- Middleware sees a timer as an event of kind "timer".
    local ran = middleware_mod.run(b._use, ctx, { kind = "timer", timer = name, data = data },
                                   function() fn(ctx, data) return true end)
    return ran, end_handler(rec)
  end
  local ek = ev.kind
  if ek == "opened" or ek == "locale_changed" then
    if ev.locale and ev.locale ~= "" then rec.locale = ev.locale end
    if ev.customer and ev.customer ~= "" then rec.customer = ev.customer end
  elseif ek == "tagged" and ev.tags then
    rec.tags = {}
    for _, t in ipairs(ev.tags) do rec.tags[t] = true end
  elseif ek == "message" then
    if not ev.locale then ev.locale = rec.locale end
    if ev.text then remember(rec, ev.seq, ev.text, ev.sender or "") end
  end
  local ctx = new_ctx(rec, seq, "event")
  rec.ctx = ctx
  -- An event that middleware answers without next() counts as the
  -- middleware's; dispatch names the handler it picks. Without middleware
  -- the name starts empty, as the C side's job does.
  local ran
  if b._use[1] == nil then
    ran = (dispatch(b, ctx, ev))
  else
    c_metric("handler", "middleware")
    ran = middleware_mod.run(b._use, ctx, ev, function() return (dispatch(b, ctx, ev)) end)
  end
  if not ran then c_metric("handler", "") end
  return ran, end_handler(rec)
end

-- After a handler's sends are answered: state changes into pending, tags,
-- timers. Raw access only: this runs outside every handler's budget.
-- Returns true when the record holds changes for the next commit.
function rt.finish(conv)
  local rec = conv_rec(conv)
  kill_ctx(rec)
  local done = rec.done
  rec.done = nil
  if done and done.tags_add then
    for t in next, done.tags_add do rec.tags_add[t] = true; rec.tags_remove[t] = nil; rec.tags[t] = true end
    for t in next, done.tags_remove do rec.tags_remove[t] = true; rec.tags_add[t] = nil; rec.tags[t] = nil end
  end
  if done then apply_state(rec, done.seen) else diff_state(rec) end
  sync_timers(rec)
  return next(rec.pending) ~= nil or next(rec.tags_add) ~= nil or next(rec.tags_remove) ~= nil
end

-- A handler failed: state back to before the event, the fallback reply.
function rt.fail(conv, kind, ev, err)
  local rec = conv_rec(conv)
  kill_ctx(rec)
  rec.done = nil
  rec.state = decode_state(rec.base)
  if kind == "timer" then
    -- The failed timer is not armed again, or it would fail forever.
    local tm = timers_of(rec.state)
    if tm then
      local list = rawget(tm, "list")
      for i = 1, rawlen(list) do
        local e = rawget(list, i)
        if type(e) == "table" and rawget(e, "id") == ev then t_remove(list, i); break end
      end
      if rawlen(list) == 0 then rawset(rec.state, TIMER_KEY, nil) end
      diff_state(rec)
    end
  end
  sync_timers(rec)
  local key = config.fallback_reply
  if key and not (type(ev) == "table" and rawget(ev, "kind") ~= "message") then
    local ok, text = pcall(render, rec.locale, key, nil, 1)
    if ok then C.send(conv, { kind = "text", text = text }, nil) end
  end
end

-- The pending changes of a conversation: state, tags to add, tags to
-- remove. They stay pending until rt.commit_sent says the commit went out.
function rt.take_commit(conv)
  local rec = convs[conv]
  if not rec then return {}, {}, {} end
  if next(rec.tags_add) == nil and next(rec.tags_remove) == nil then
    return rec.pending, NOTHING, NOTHING
  end
  local add, rm = {}, {}
  for t in pairs(rec.tags_add) do add[#add + 1] = t end
  for t in pairs(rec.tags_remove) do rm[#rm + 1] = t end
  t_sort(add); t_sort(rm)
  return rec.pending, add, rm
end

-- The pending changes went out in the commit with ordinal n (the C side
-- counts a conversation's commits): they stay in flight until the gateway
-- answers (rt.commit_done), in the order the commits went. Returns true
-- when the commit carried changes; a commit that is only a watermark has
-- nothing to give back if it is refused, and gets no entry.
function rt.commit_sent(conv, n)
  local rec = convs[conv]
  if not rec then return false end
  if next(rec.pending) == nil and next(rec.tags_add) == nil and next(rec.tags_remove) == nil then
    return false
  end
  local fl = rec.inflight
  fl[#fl + 1] = { pending = rec.pending, add = rec.tags_add, rm = rec.tags_remove, n = n }
  rec.pending, rec.tags_add, rec.tags_remove = {}, {}, {}
  return true
end

-- The gateway answered the commit with ordinal n. Only commits that
-- carried changes have an entry (the oldest first); the C side calls this
-- for answers up to the newest of those. A refused commit's changes go back
-- to pending, under whatever a later handler changed since (pending, or a
-- commit still in flight), so that the next commit carries them: the
-- record's base already counts them as the gateway's.
function rt.commit_done(conv, ok, n)
  local rec = convs[conv]
  if not rec or not rec.inflight then return end
  local it = rec.inflight[1]
  if not it or it.n ~= n then return end
  table.remove(rec.inflight, 1)
  if ok then return end
  local newer_keys, newer_tags = {}, {}
  for _, later in ipairs(rec.inflight) do
    for k in pairs(later.pending) do newer_keys[k] = true end
    for t in pairs(later.add) do newer_tags[t] = true end
    for t in pairs(later.rm) do newer_tags[t] = true end
  end
  for k, v in pairs(it.pending) do
    if rec.pending[k] == nil and not newer_keys[k] then rec.pending[k] = v end
  end
  for t in pairs(it.add) do
    if not newer_tags[t] and not rec.tags_add[t] and not rec.tags_remove[t] then
      rec.tags_add[t] = true
    end
  end
  for t in pairs(it.rm) do
    if not newer_tags[t] and not rec.tags_add[t] and not rec.tags_remove[t] then
      rec.tags_remove[t] = true
    end
  end
end

-- Reload: everything a new state needs to take over, as JSON text.
function rt.export()
  local out = {}
  for id, rec in pairs(convs) do
    local tags = {}
    for t in pairs(rec.tags) do tags[#tags + 1] = t end
    local function changes(p)
      local o = {}
      for k, v in pairs(p) do o[k] = v == false and json_null or v end
      return o
    end
    local inflight = {}
    for i, it in ipairs(rec.inflight) do
      inflight[i] = { pending = changes(it.pending), add = it.add, rm = it.rm, n = it.n }
    end
    out[id] = { base = rec.base, pending = changes(rec.pending), tags = tags,
                locale = rec.locale, customer = rec.customer, recent = recent_list(rec),
                tags_add = rec.tags_add, tags_remove = rec.tags_remove,
                inflight = inflight, timer_next = rec.timer_next }
  end
  return json_encode(out)
end

function rt.import(text)
  local all = json_decode(text) or {}
  for id, x in pairs(all) do
    local rec = conv_rec(id)
    rec.base = x.base or {}
    local function changes(p)
      local o = {}
      for k, v in pairs(p or {}) do o[k] = v ~= json_null and v or false end
      return o
    end
    rec.pending = changes(x.pending)
    rec.inflight = {}
    for i, it in ipairs(x.inflight or {}) do
      rec.inflight[i] = { pending = changes(it.pending), add = it.add or {}, rm = it.rm or {},
                          n = m_tointeger(it.n) }
    end
    rec.state = decode_state(rec.base)
    rec.tags = {}
    for _, t in ipairs(x.tags or {}) do rec.tags[t] = true end
    rec.locale, rec.customer = x.locale or rec.locale, x.customer
    rec.rseq, rec.rtext, rec.rsender, rec.rn = {}, {}, {}, 0
    for _, m in ipairs(x.recent or {}) do
      if type(m) == "table" and m_type(m.seq) == "integer" and type(m.text) == "string" then
        remember(rec, m.seq, m.text, type(m.sender) == "string" and m.sender or "")
      end
    end
    rec.tags_add, rec.tags_remove = x.tags_add or {}, x.tags_remove or {}
    rec.timer_next = m_tointeger(x.timer_next)
  end
end

-- The sidecar API's reply by template (lua/src/proactive.c): the template
-- rendered in the conversation's locale with vars, as quick replies or a
-- card when asked, then checked exactly as a ctx:reply is (the same
-- normalize_content, the same limits). Returns the normalized content, or
-- raises with a message for the API's caller.
local function render_reply(conv, text)
  local req = json_decode(text)
  if type(req) ~= "table" then error("the reply must be a JSON object", 0) end
  local rec = convs[conv]
  local key, vars = rawget(req, "template"), rawget(req, "vars")
  if type(key) ~= "string" then error("template must be a template key", 0) end
  if vars ~= nil and type(vars) ~= "table" then error("vars must be an object", 0) end
  local body = render(rec and rec.locale or default_locale, key, vars, 0)
  local content = body
  local qr, card = rawget(req, "quick_replies"), rawget(req, "card")
  if qr ~= nil and card ~= nil then error("give quick_replies or card, not both", 0) end
  if qr ~= nil then
    content = { quick_replies = { text = body, options = qr } }
  elseif card ~= nil then
    if type(card) ~= "table" then error("card must be an object", 0) end
    local c = { title = rawget(card, "title"), image = rawget(card, "image_url"), text = body,
                buttons = {} }
    -- The sidecar names a button's postback "payload", as the wire does.
    local bs = rawget(card, "buttons")
    if type(bs) == "table" then
      for i = 1, rawlen(bs) do
        local b = rawget(bs, i)
        if type(b) ~= "table" then error("card.buttons[" .. i .. "] must be an object", 0) end
        c.buttons[i] = { label = rawget(b, "label"), postback = rawget(b, "payload"),
                         url = rawget(b, "url") }
      end
    end
    content = { card = c }
  end
  return normalize_content(content, nil, 1)
end

-- Opens a new conversation with a customer and sends it a first message by
-- template, in the customer's locale (proactive conversations;
-- docs/lua-api.md). The message is checked here as a sidecar template
-- reply is, so a wrong key, a missing var or a limit raises at once; the
-- open itself goes on after the handler, and its outcome is logged.
local OPEN_KEYS = { customer = true, template = true, vars = true, quick_replies = true,
                    card = true, key = true }

function Ctx:open_conversation(spec)
  local d = ctx_of(self)
  if type(spec) ~= "table" then
    raise("open_conversation needs a table {customer, template, vars?, quick_replies? | card?, key?}")
  end
  for k in next, spec do
    if not OPEN_KEYS[k] then raise("open_conversation: unknown field '" .. tostring(k) .. "'") end
  end
  local customer, key = rawget(spec, "customer"), rawget(spec, "key")
  if type(customer) ~= "string" or #customer == 0 or #customer > 128
     or s_find(customer, "[^%w%._:@%-]") then
    raise("open_conversation needs a customer name of 1 to 128 bytes of [A-Za-z0-9._:@-]")
  end
  if key ~= nil and (type(key) ~= "string" or #key == 0 or #key > 255) then
    raise("open_conversation: key must be a string of 1 to 255 bytes")
  end
  local req = { template = rawget(spec, "template"), vars = rawget(spec, "vars"),
                quick_replies = rawget(spec, "quick_replies"), card = rawget(spec, "card") }
  local ok, text = pcall(json_encode, req)
  if not ok then raise("open_conversation: vars, quick_replies and card must be plain data") end
  local ok2, e = pcall(render_reply, nil, text)
  if not ok2 then raise("open_conversation: " .. s_gsub(tostring(e), "^runtime[%w/]*:%d+: ", "")) end
  check_limits(d)
  return C.open(d.rec.id, customer, key, text)
end

function rt.render_reply(conv, text)
  local ok, c = pcall(render_reply, conv, text)
  -- The caller is an HTTP client: no runtime positions in the message.
  if not ok then error((s_gsub(tostring(c), "^runtime[%w/]*:%d+: ", "")), 0) end
  return c
end

-- Moves a queued event table between states (reload).
function rt.event_to_json(ev) return json_encode(ev) end
function rt.event_from_json(s) return (json_decode(s)) end

-- For tests and tools.
rt.json_encode = json_encode
rt.json_decode = json_decode
rt.normalize_content = function(x, fb) return normalize_content(x, fb, 1) end
rt.render = function(locale, key, vars) return render(locale, key, vars, 1) end
rt.utf8_cut = utf8_cut
rt.make_env = make_env
rt.conv = function(id) return convs[id] end
rt.has_template = has_template

return rt
