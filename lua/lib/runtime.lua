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

local string, table, math, utf8, coroutine = string, table, math, utf8, coroutine
local type, pairs, ipairs, next, tostring, tonumber = type, pairs, ipairs, next, tostring, tonumber
local error, select, setmetatable, getmetatable = error, select, setmetatable, getmetatable
local rawget, rawset, rawequal, rawlen, load, pcall, xpcall, assert =
  rawget, rawset, rawequal, rawlen, load, pcall, xpcall, assert

-- string.dump is removed from the real table, not only from the proxy: every
-- string reaches the real table through its metatable ("").dump.
string.dump = nil
-- The string metatable is shared by every string in the state; hiding it
-- keeps bot code from replacing __index or adding metamethods.
getmetatable("").__metatable = false

local STATE_KEY_MAX = 64 * 1024      -- bytes of JSON per state key
local STATE_TOTAL_MAX = 1024 * 1024  -- bytes of JSON in one conversation's state
local TEXT_MAX = 16 * 1024           -- bytes of a reply's text
local BUTTONS_MAX = 12
local RECENT_MAX = 32                -- inbound messages remembered for quoting
local EXCERPT_MAX = 280
local TIMERS_MAX = 32                -- timers per conversation
local TIMER_KEY = "_timers"

local bot_name = config.name or "bot"
local default_locale = config.default_locale or "en"

------------------------------------------------------------------------------
-- Read-only proxies for shared tables.

local protected = setmetatable({}, { __mode = "k" })

local function readonly(t, name)
  local p = setmetatable({}, {
    __index = t,
    __newindex = function(_, k)
      error("attempt to modify read-only table '" .. name .. "' (key '" ..
        tostring(k) .. "')", 2)
    end,
    __pairs = function() return next, t, nil end,
    __len = function() return #t end,
    __metatable = "read-only",
  })
  protected[p] = true
  return p
end

local function deep_readonly(v, name)
  if type(v) ~= "table" then return v end
  local copy = {}
  for k, x in pairs(v) do copy[k] = deep_readonly(x, name .. "." .. tostring(k)) end
  return readonly(copy, name)
end

------------------------------------------------------------------------------
-- JSON: canonical encoding (sorted keys) so that an unchanged value always
-- encodes to the same text, which is what the state diff compares.

local json_null = cjson.null

local function is_array(t)
  local n = 0
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 then return false end
    if k > n then n = k end
  end
  return n == #t, n
end

local escapes = {
  ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
  ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t',
}
local function esc(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return escapes[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function encode(v, depth, out)
  depth = depth or 0
  if depth > 32 then error("value nested too deeply for JSON", 0) end
  local tv = type(v)
  if v == nil or v == json_null then out[#out + 1] = "null"
  elseif tv == "boolean" then out[#out + 1] = v and "true" or "false"
  elseif tv == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      error("cannot encode NaN or infinity as JSON", 0)
    end
    if math.type(v) == "integer" then out[#out + 1] = string.format("%d", v)
    elseif v == math.floor(v) and v > -2^53 and v < 2^53 then
      out[#out + 1] = string.format("%d", math.tointeger(v))
    else out[#out + 1] = string.format("%.17g", v) end
  elseif tv == "string" then out[#out + 1] = esc(v)
  elseif tv == "table" then
    local arr, n = is_array(v)
    if arr and n > 0 then
      out[#out + 1] = "["
      for i = 1, n do
        if i > 1 then out[#out + 1] = "," end
        encode(v[i], depth + 1, out)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do
        if type(k) ~= "string" then
          error("cannot encode a table with non-string key '" .. tostring(k) .. "' as JSON", 0)
        end
        keys[#keys + 1] = k
      end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = esc(k)
        out[#out + 1] = ":"
        encode(v[k], depth + 1, out)
      end
      out[#out + 1] = "}"
    end
  else
    error("cannot encode a " .. tv .. " as JSON", 0)
  end
  return out
end

local function json_encode(v) return table.concat(encode(v, 0, {})) end

-- cjson decodes every number as a float; integral values come back as
-- integers so that seq numbers and counters keep printing as "5", not "5.0".
local function integerize(v, depth)
  if type(v) == "number" then return math.tointeger(v) or v end
  if type(v) == "table" and depth < 64 then
    for k, x in pairs(v) do v[k] = integerize(x, depth + 1) end
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
  for _, loc in ipairs(chain_for(locale)) do
    local t = templates[loc]
    local v = t and t[key]
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
        if not utf8.len(s) then error(what .. ": var '" .. name .. "' is not valid UTF-8", level + 2) end
        if s:find("\0", 1, true) then
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
  error("unknown template key '" .. key .. "'", level)
end

local function has_template(key)
  for _, t in pairs(templates) do if t[key] ~= nil then return true end end
  return false
end

------------------------------------------------------------------------------
-- Rich content: normalisation and the plain-text fallback.

local function utf8_cut(s, max)
  if #s <= max then return s end
  local cut = max
  -- Back off over continuation bytes so the excerpt ends on a whole character.
  while cut > 0 do
    local b = s:byte(cut + 1)
    if not b or b < 0x80 or b >= 0xC0 then break end
    cut = cut - 1
  end
  return s:sub(1, cut)
end

local function check_text(s, what, level)
  if type(s) ~= "string" then error(what .. " must be a string", level) end
  if #s > TEXT_MAX then error(what .. " is longer than " .. TEXT_MAX .. " bytes", level) end
  if not utf8.len(s) then error(what .. " is not valid UTF-8", level) end
  -- The C side reads texts as C strings: a NUL would cut the text silently.
  if s:find("\0", 1, true) then error(what .. " contains a NUL byte", level) end
  return s
end

-- The longest prefix of s that is valid UTF-8 without NUL, at most max
-- bytes: quoted excerpts come from other people's messages.
local function clean_cut(s, max)
  local _, bad = utf8.len(s)
  if bad then s = s:sub(1, bad - 1) end
  local nul = s:find("\0", 1, true)
  if nul then s = s:sub(1, nul - 1) end
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
    return table.concat(lines, "\n")
  elseif c.kind == "quick_replies" then
    local lines = { c.text }
    for i, b in ipairs(c.buttons or {}) do lines[#lines + 1] = i .. ". " .. b.label end
    return table.concat(lines, "\n")
  elseif c.kind == "image" then
    if c.text and c.text ~= "" then return "[" .. c.text .. "] " .. c.image_url end
    return c.image_url
  end
  return c.text
end

local function normalize_content(x, fallback, level)
  level = level + 1
  local c
  if type(x) == "string" then
    c = { kind = "text", text = check_text(x, "reply text", level) }
  elseif type(x) ~= "table" then
    error("reply must be a string or a table", level)
  elseif x.card ~= nil then
    local k = x.card
    if type(k) ~= "table" then error("card must be a table", level) end
    c = { kind = "card", title = opt_text(k.title, "card.title", level),
          text = opt_text(k.text, "card.text", level),
          image_url = opt_text(k.image, "card.image", level), buttons = {} }
    local bs = k.buttons or {}
    if type(bs) ~= "table" then error("card.buttons must be a list", level) end
    if #bs > BUTTONS_MAX then error("a card has at most " .. BUTTONS_MAX .. " buttons", level) end
    for i, b in ipairs(bs) do
      if type(b) ~= "table" then error("card.buttons[" .. i .. "] must be a table", level) end
      local label = check_text(b.label or b[1], "card.buttons[" .. i .. "].label", level)
      local pb, url = b.postback, b.url
      if (pb == nil) == (url == nil) then
        error("card.buttons[" .. i .. "] needs exactly one of postback or url", level)
      end
      c.buttons[i] = { label = label, payload = opt_text(pb, "postback", level),
                       url = opt_text(url, "url", level) }
    end
    if not c.title and not c.text and not c.image_url then
      error("a card needs a title, a text or an image", level)
    end
  elseif x.quick_replies ~= nil then
    local q = x.quick_replies
    if type(q) ~= "table" then error("quick_replies must be a table", level) end
    c = { kind = "quick_replies", text = check_text(q.text, "quick_replies.text", level), buttons = {} }
    local os_ = q.options
    if type(os_) ~= "table" or #os_ == 0 then
      error("quick_replies.options must be a non-empty list", level)
    end
    if #os_ > BUTTONS_MAX then error("at most " .. BUTTONS_MAX .. " quick replies", level) end
    for i, o in ipairs(os_) do
      if type(o) == "string" then o = { label = o } end
      if type(o) ~= "table" then error("quick_replies.options[" .. i .. "] must be a table", level) end
      local label = check_text(o.label or o[1], "quick_replies.options[" .. i .. "].label", level)
      c.buttons[i] = { label = label, payload = opt_text(o.payload or o[2] or label, "payload", level) }
    end
  elseif x.image ~= nil then
    local im = x.image
    if type(im) ~= "table" then error("image must be a table", level) end
    c = { kind = "image", image_url = check_text(im.url, "image.url", level),
          text = opt_text(im.alt, "image.alt", level) }
  elseif x.text ~= nil then
    c = { kind = "text", text = check_text(x.text, "reply text", level) }
  else
    error("reply table needs one of text, card, quick_replies or image", level)
  end
  c.fallback = opt_text(fallback or (type(x) == "table" and x.fallback or nil), "fallback", level)
  if not c.fallback and c.kind ~= "text" then c.fallback = fallback_text(c) end
  return c
end

------------------------------------------------------------------------------
-- Conversations: live state, committed base, pending changes.

local convs = {}   -- [conversation id] = record

local function conv_rec(id)
  local rec = convs[id]
  if not rec then
    rec = { id = id, state = {}, base = {}, pending = {}, tags = {}, inflight = {},
            tags_add = {}, tags_remove = {}, recent = {}, locale = default_locale }
    convs[id] = rec
  end
  return rec
end

local function decode_state(base)
  local st = {}
  for k, enc in pairs(base) do
    local v = json_decode(enc)
    if v ~= nil then st[k] = v end
  end
  return st
end

local function timers_of(state)
  local tm = state[TIMER_KEY]
  if type(tm) ~= "table" or type(tm.list) ~= "table" then return nil end
  return tm
end

-- Hands the C side the timers it should have armed for the conversation.
local function sync_timers(rec)
  local list = {}
  local tm = timers_of(rec.state)
  if tm then
    for _, e in ipairs(tm.list) do
      if math.type(e.id) == "integer" and type(e.due) == "number" then
        list[#list + 1] = { e.id, math.tointeger(e.due) or math.floor(e.due) }
      end
    end
  end
  C.sync_timers(rec.id, list)
end

-- Computes the changed keys of a finished handler and moves them to pending.
local function diff_state(rec)
  local seen, total = {}, 0
  local st = rec.state
  if type(st) ~= "table" then error("ctx.state must stay a table", 0) end
  for k, v in pairs(st) do
    if type(k) ~= "string" then error("ctx.state keys must be strings, got " .. type(k), 0) end
    local enc = json_encode(v)
    if #enc > STATE_KEY_MAX then
      error("ctx.state." .. k .. " is larger than " .. STATE_KEY_MAX .. " bytes of JSON", 0)
    end
    total = total + #enc
    seen[k] = enc
  end
  if total > STATE_TOTAL_MAX then
    error("ctx.state is larger than " .. STATE_TOTAL_MAX .. " bytes of JSON", 0)
  end
  for k, enc in pairs(seen) do
    if rec.base[k] ~= enc then rec.base[k] = enc; rec.pending[k] = enc end
  end
  for k in pairs(rec.base) do
    if seen[k] == nil then rec.base[k] = nil; rec.pending[k] = false end
  end
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
  return table.concat(out)
end

function Bot:on_open(fn) check_self(self); check_fn(fn, "on_open"); self._open = fn; return self end
function Bot:on_message(fn) check_self(self); check_fn(fn, "on_message"); self._message = fn; return self end
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
  self._postbacks[#self._postbacks + 1] = { pattern = "^" .. pattern .. "$", fn = fn }
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

local function new_bot()
  if the_bot then error("parley.bot() may be called only once", 2) end
  the_bot = setmetatable({ _commands = {}, _matches = {}, _postbacks = {}, _events = {},
                           _timers = {} }, Bot)
  return the_bot
end

------------------------------------------------------------------------------
-- ctx: what a handler works with.

local Ctx = {}
Ctx.__index = Ctx
Ctx.__metatable = "ctx"

local function check_ctx(ctx)
  if getmetatable(ctx) ~= "ctx" then error("ctx methods are called with ':'", 3) end
  if ctx._done then error("ctx used after its handler finished", 3) end
end

local function quote_of(rec, q)
  if q == nil then return nil end
  local seq, text, sender
  if type(q) == "table" then
    seq, text, sender = q.seq, q.text, q.sender
  elseif math.type(q) == "integer" then
    seq = q
    for _, m in ipairs(rec.recent) do
      if m.seq == q then text, sender = m.text, m.sender end
    end
  else
    error("quote must be a message or a seq", 3)
  end
  if math.type(seq) ~= "integer" or seq < 1 then error("quote needs a positive seq", 3) end
  if text ~= nil and type(text) ~= "string" then error("quote text must be a string", 3) end
  if sender ~= nil and type(sender) ~= "string" then error("quote sender must be a string", 3) end
  return { seq = seq, excerpt = clean_cut(text or "", EXCERPT_MAX),
           sender = clean_cut(sender or "", 128) }
end

function Ctx:reply(content, opts)
  check_ctx(self)
  if opts ~= nil and type(opts) ~= "table" then error("reply options must be a table", 2) end
  local c = normalize_content(content, opts and opts.fallback, 2)
  local q = quote_of(self._rec, opts and opts.quote)
  return C.send(self.conversation, c, q)
end

local function tag_list(...)
  local n = select("#", ...)
  if n == 0 then error("tag needs at least one tag", 3) end
  local out = {}
  for i = 1, n do
    local t = select(i, ...)
    if type(t) ~= "string" or t == "" or #t > 64 then
      error("a tag must be a string of 1 to 64 bytes", 3)
    end
    out[i] = t
  end
  return out
end

function Ctx:tag(...)
  check_ctx(self)
  for _, t in ipairs(tag_list(...)) do self._tags_add[t] = true; self._tags_remove[t] = nil end
end

function Ctx:untag(...)
  check_ctx(self)
  for _, t in ipairs(tag_list(...)) do self._tags_remove[t] = true; self._tags_add[t] = nil end
end

function Ctx:has_tag(t)
  check_ctx(self)
  if self._tags_add[t] then return true end
  if self._tags_remove[t] then return false end
  return self._rec.tags[t] == true
end

function Ctx:handoff(queue, note)
  check_ctx(self)
  if type(queue) ~= "string" or queue == "" then error("handoff needs a queue name", 2) end
  if note ~= nil and type(note) ~= "string" then error("handoff note must be a string", 2) end
  return C.action(self.conversation, "handoff", { queue = queue, note = note })
end

function Ctx:close(reason)
  check_ctx(self)
  if reason ~= nil and type(reason) ~= "string" then error("close reason must be a string", 2) end
  return C.action(self.conversation, "close", { note = reason })
end

function Ctx:set_locale(locale)
  check_ctx(self)
  if type(locale) ~= "string" or not locale:match("^%a%a%a?[%w%-_]*$") then
    error("set_locale needs a locale like 'en' or 'zh-Hant-TW'", 2)
  end
  self._rec.locale = locale
  self.locale = locale
  return C.action(self.conversation, "set_locale", { locale = locale })
end

function Ctx:t(key, vars)
  check_ctx(self)
  return (render(self.locale, key, vars, 3))
end

function Ctx:log(level, msg)
  check_ctx(self)
  C.log(level_of(level), tostring(msg), self.conversation, self.seq)
end

function Ctx:after(seconds, name, data)
  check_ctx(self)
  if type(seconds) ~= "number" or seconds < 0 or seconds > 366 * 86400 then
    error("after needs a delay in seconds between 0 and one year", 2)
  end
  if type(name) ~= "string" or name == "" then error("after needs a timer name", 2) end
  if the_bot and not the_bot._timers[name] then
    error("no on_timer handler for '" .. name .. "'", 2)
  end
  local st = self.state
  local tm = timers_of(st)
  if not tm then tm = { next = 1, list = {} }; st[TIMER_KEY] = tm end
  if #tm.list >= TIMERS_MAX then error("at most " .. TIMERS_MAX .. " timers per conversation", 2) end
  local id = math.tointeger(tm.next) or 1
  tm.next = id + 1
  tm.list[#tm.list + 1] = { id = id, name = name, due = C.now() + math.floor(seconds * 1000),
                            data = data }
  return id
end

function Ctx:cancel(name)
  check_ctx(self)
  if type(name) ~= "string" then error("cancel needs a timer name", 2) end
  local tm = timers_of(self.state)
  if not tm then return 0 end
  local kept, n = {}, 0
  for _, e in ipairs(tm.list) do
    if e.name == name then n = n + 1 else kept[#kept + 1] = e end
  end
  tm.list = kept
  if #kept == 0 then self.state[TIMER_KEY] = nil end
  return n
end

function Ctx:timers()
  check_ctx(self)
  local out = {}
  local tm = timers_of(self.state)
  for _, e in ipairs(tm and tm.list or {}) do
    out[#out + 1] = { id = e.id, name = e.name, due = e.due }
  end
  return out
end

local function new_ctx(rec, seq, kind)
  local ctx = setmetatable({
    conversation = rec.id, seq = seq, locale = rec.locale, customer = rec.customer,
    state = rec.state, bot = bot_name, kind = kind,
    idempotency_key = C.idem(rec.id, seq, kind == "timer"),
    _rec = rec, _tags_add = {}, _tags_remove = {},
  }, Ctx)
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
  local cmd, rest = text:match("^%s*(/[%w_%-]+)%s*(.*)$")
  if cmd then
    local fn = b._commands[cmd:lower()]
    if fn then return true, fn(ctx, msg, split_args(rest)) end
  end
  local lowered = nil
  for _, m in ipairs(b._matches) do
    local subject = text
    if m.ci then lowered = lowered or text:lower(); subject = lowered end
    local caps = { subject:find(m.pattern) }
    if caps[1] then
      table.remove(caps, 1); table.remove(caps, 1)
      return true, m.fn(ctx, msg, caps)
    end
  end
  if b._message then return true, b._message(ctx, msg) end
  if b._fallback then return true, b._fallback(ctx, msg) end
  return false
end

local function dispatch(b, ctx, ev)
  local kind = ev.kind
  if kind == "message" then
    if ev.content == "postback" then
      for _, p in ipairs(b._postbacks) do
        local caps = { ev.payload:find(p.pattern) }
        if caps[1] then
          table.remove(caps, 1); table.remove(caps, 1)
          return true, p.fn(ctx, ev, caps)
        end
      end
      -- A tapped quick reply without a postback handler reads like its label.
      ev.text = ev.label or ev.payload
    end
    return dispatch_message(b, ctx, ev)
  elseif kind == "opened" then
    if b._open then return true, b._open(ctx, ev) end
    local fn = b._events.opened
    if fn then return true, fn(ctx, ev) end
    return false
  end
  local fn = b._events[kind]
  if fn then return true, fn(ctx, ev) end
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
    local r = table.pack(pcall(f, ...))
    if r[1] then return table.unpack(r, 1, r.n) end
    return false, h(r[2])
  end
  env._VERSION = _VERSION
  env.rawset = function(t, k, v)
    if protected[t] then error("attempt to modify a read-only table", 2) end
    return rawset(t, k, v)
  end
  env.load = function(chunk, name, mode, e)
    if mode ~= nil and mode ~= "t" then error("only text chunks may be loaded", 2) end
    if e == nil then e = env end
    return load(chunk, name, "t", e)
  end
  env.print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    C.log(1, table.concat(parts, "\t"))
  end
  env.string = readonly(string, "string")
  env.table = readonly(table, "table")
  env.math = readonly(math, "math")
  env.utf8 = readonly(utf8, "utf8")
  -- A handler's own coroutine stays out of reach: resumed or closed from
  -- bot code it would run outside the runtime's control.
  local co_lib = {}
  for k, f in pairs(coroutine) do co_lib[k] = f end
  co_lib.running = function()
    local co, main = coroutine.running()
    if handler_threads[co] then return nil, true end
    return co, main
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

local allow = {}
do
  local a = config.http and config.http.allow
  if type(a) == "table" then
    for _, h in ipairs(a) do allow[#allow + 1] = tostring(h):lower() end
  end
end

local function host_allowed(host)
  for _, h in ipairs(allow) do
    if h == host then return true end
    if h:sub(1, 2) == "*." and host:sub(-(#h - 1)) == h:sub(2) then return true end
  end
  return false
end

local function http_request(req)
  if type(req) ~= "table" then error("http.request needs a table", 2) end
  local url = req.url
  if type(url) ~= "string" then error("http.request needs a url", 2) end
  local scheme, host = url:match("^(https?)://([^/:?#@]+)")
  if not scheme then error("url must start with http:// or https://: " .. url, 2) end
  host = host:lower()
  if not host_allowed(host) then
    error("host '" .. host .. "' is not in bot.yaml http.allow", 2)
  end
  local method = req.method or (req.body and "POST" or "GET")
  if type(method) ~= "string" or not method:match("^%u+$") then error("bad http method", 2) end
  local headers = {}
  if req.headers ~= nil then
    if type(req.headers) ~= "table" then error("http headers must be a table", 2) end
    for k, v in pairs(req.headers) do
      if type(k) ~= "string" or type(v) ~= "string" or k:find("[\r\n:]") or v:find("[\r\n]") then
        error("http headers must be string names and values without newlines", 2)
      end
      headers[#headers + 1] = k .. ": " .. v
    end
  end
  local body = req.body
  if body ~= nil and type(body) ~= "string" then error("http body must be a string", 2) end
  local timeout = req.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or timeout <= 0 or timeout > 120) then
    error("http timeout must be between 0 and 120 seconds", 2)
  end
  return C.http(method, url, headers, body, timeout and math.floor(timeout * 1000) or 0)
end

http_mod = readonly({
  request = http_request,
  get = function(url, opts)
    local r = {}
    for k, v in pairs(opts or {}) do r[k] = v end
    r.method, r.url = "GET", url
    return http_request(r)
  end,
  post = function(url, body, opts)
    local r = {}
    for k, v in pairs(opts or {}) do r[k] = v end
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
  convs[conv] = nil
end

-- Runs inside the handler's coroutine. kind is "event" or "timer"; for a
-- timer, ev is its id. Returns true when a handler ran.
function rt.run(conv, kind, ev, seq)
  handler_threads[coroutine.running()] = true
  local rec = conv_rec(conv)
  local b = the_bot
  if kind == "timer" then
    local tm = timers_of(rec.state)
    if not tm then return false end
    local entry
    for i, e in ipairs(tm.list) do
      if e.id == ev then entry = table.remove(tm.list, i); break end
    end
    if #tm.list == 0 then rec.state[TIMER_KEY] = nil end
    if not entry then return false end
    local ctx = new_ctx(rec, seq, "timer")
    rec.ctx = ctx
    local fn = b._timers[entry.name]
    if not fn then
      C.log(2, "no on_timer handler for '" .. tostring(entry.name) .. "'", conv, seq)
      return false
    end
    fn(ctx, entry.data)
    return true
  end
  if ev.kind == "opened" or ev.kind == "locale_changed" then
    if ev.locale and ev.locale ~= "" then rec.locale = ev.locale end
    if ev.customer and ev.customer ~= "" then rec.customer = ev.customer end
  elseif ev.kind == "tagged" and ev.tags then
    rec.tags = {}
    for _, t in ipairs(ev.tags) do rec.tags[t] = true end
  elseif ev.kind == "message" then
    if not ev.locale then ev.locale = rec.locale end
    if ev.text then
      local r = rec.recent
      r[#r + 1] = { seq = ev.seq, text = ev.text, sender = ev.sender }
      if #r > RECENT_MAX then table.remove(r, 1) end
    end
  end
  local ctx = new_ctx(rec, seq, "event")
  rec.ctx = ctx
  local ran = dispatch(b, ctx, ev)
  return ran
end

-- After a handler's sends are answered: state diff into pending, timers.
function rt.finish(conv)
  local rec = conv_rec(conv)
  local ctx = rec.ctx
  rec.ctx = nil
  if ctx then
    ctx._done = true
    for t in pairs(ctx._tags_add) do rec.tags_add[t] = true; rec.tags_remove[t] = nil; rec.tags[t] = true end
    for t in pairs(ctx._tags_remove) do rec.tags_remove[t] = true; rec.tags_add[t] = nil; rec.tags[t] = nil end
  end
  diff_state(rec)
  sync_timers(rec)
end

-- A handler failed: state back to before the event, the fallback reply.
function rt.fail(conv, kind, ev, err)
  local rec = conv_rec(conv)
  local ctx = rec.ctx
  rec.ctx = nil
  if ctx then ctx._done = true end
  rec.state = decode_state(rec.base)
  if kind == "timer" then
    -- The failed timer is not armed again, or it would fail forever.
    local tm = timers_of(rec.state)
    if tm then
      for i, e in ipairs(tm.list) do
        if e.id == ev then table.remove(tm.list, i); break end
      end
      if #tm.list == 0 then rec.state[TIMER_KEY] = nil end
      diff_state(rec)
    end
  end
  sync_timers(rec)
  local key = config.fallback_reply
  if key and not (type(ev) == "table" and ev.kind ~= "message") then
    local ok, text = pcall(render, rec.locale, key, nil, 1)
    if ok then C.send(conv, { kind = "text", text = text }, nil) end
  end
end

-- The pending changes of a conversation: state, tags to add, tags to
-- remove. They stay pending until rt.commit_sent says the commit went out.
function rt.take_commit(conv)
  local rec = convs[conv]
  if not rec then return {}, {}, {} end
  local add, rm = {}, {}
  for t in pairs(rec.tags_add) do add[#add + 1] = t end
  for t in pairs(rec.tags_remove) do rm[#rm + 1] = t end
  table.sort(add); table.sort(rm)
  return rec.pending, add, rm
end

-- The pending changes went out in a commit: they stay in flight until the
-- gateway answers (rt.commit_done), in the order the commits went.
function rt.commit_sent(conv)
  local rec = convs[conv]
  if not rec then return end
  local fl = rec.inflight
  fl[#fl + 1] = { pending = rec.pending, add = rec.tags_add, rm = rec.tags_remove }
  rec.pending, rec.tags_add, rec.tags_remove = {}, {}, {}
end

-- The gateway answered the oldest commit in flight. A refused commit's
-- changes go back to pending, under whatever a later handler changed since
-- (pending, or a commit still in flight), so that the next commit carries
-- them: the record's base already counts them as the gateway's.
function rt.commit_done(conv, ok)
  local rec = convs[conv]
  if not rec or not rec.inflight or #rec.inflight == 0 then return end
  local it = table.remove(rec.inflight, 1)
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
      inflight[i] = { pending = changes(it.pending), add = it.add, rm = it.rm }
    end
    out[id] = { base = rec.base, pending = changes(rec.pending), tags = tags,
                locale = rec.locale, customer = rec.customer, recent = rec.recent,
                tags_add = rec.tags_add, tags_remove = rec.tags_remove,
                inflight = inflight }
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
      rec.inflight[i] = { pending = changes(it.pending), add = it.add or {}, rm = it.rm or {} }
    end
    rec.state = decode_state(rec.base)
    rec.tags = {}
    for _, t in ipairs(x.tags or {}) do rec.tags[t] = true end
    rec.locale, rec.customer = x.locale or rec.locale, x.customer
    rec.recent = x.recent or {}
    rec.tags_add, rec.tags_remove = x.tags_add or {}, x.tags_remove or {}
  end
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
