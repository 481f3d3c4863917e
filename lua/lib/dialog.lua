-- Dialogs: declarative multi-turn forms on top of ctx. A dialog asks its
-- steps in order, checks each answer, asks again on a bad one, gives up
-- after a number of tries, and supports cancel and back. Its progress lives
-- in ctx.state (key "_dialog"), which the runtime commits with the event's
-- acknowledgement: a handler that crashes or a connection that is cut
-- mid-dialog runs again from the committed step, never from a later or an
-- earlier one.
--
-- Loaded once by runtime.lua with (deps); returns the module table. The
-- code here only uses the public ctx methods, so a dialog keeps every
-- guarantee and limit a hand-written handler has.
local deps = ...
local raise, has_template, metric = deps.raise, deps.has_template, deps.metric

local type, pairs, ipairs, next, rawget, rawlen, tostring, pcall =
  type, pairs, ipairs, next, rawget, rawlen, tostring, pcall
local getmetatable, setmetatable, m_type = getmetatable, setmetatable, math.type
local s_find, s_lower, s_match, s_gsub = string.find, string.lower, string.match, string.gsub

local STATE_KEY = "_dialog"
local TIMER = "_dialog.nudge"
local DEFAULT_TRIES = 3
local STEPS_MAX = 64

local M = { STATE_KEY = STATE_KEY, TIMER = TIMER }

local Dialog = {}
Dialog.__index = Dialog
Dialog.__metatable = "dialog"

-- Lower-cases a Lua pattern without touching what follows a '%', so that
-- %A and %S keep their meaning (as bot:match does).
local function lower_pattern(p)
  return (s_gsub(p, "(%%?)(.)", function(esc, ch)
    if esc ~= "" then return esc .. ch end
    return s_lower(ch)
  end))
end

local function trim(s) return (s_gsub(s_gsub(s, "^%s+", ""), "%s+$", "")) end

local function word_set(list, what, default)
  if list == nil then list = default end
  if list == false then return {} end
  if type(list) == "string" then list = { list } end
  if type(list) ~= "table" then raise(what .. " must be a word or a list of words") end
  local set = {}
  for i = 1, rawlen(list) do
    local w = rawget(list, i)
    if type(w) ~= "string" or w == "" then raise(what .. "[" .. i .. "] must be a non-empty string") end
    set[s_lower(w)] = true
  end
  return set
end

local function check_template(key, what)
  if key == nil then return nil end
  if type(key) ~= "string" then raise(what .. " must be a template key") end
  if not has_template(key) then raise(what .. ": no template key '" .. key .. "'") end
  return key
end

local function check_nudge(n, what)
  if n == nil then return nil end
  if type(n) ~= "table" then raise(what .. " must be a table { after = seconds, say = key }") end
  local after = rawget(n, "after")
  if type(after) ~= "number" or not (after > 0 and after <= 366 * 86400) then
    raise(what .. ".after must be a delay in seconds, more than 0 and at most one year")
  end
  return { after = after, say = check_template(rawget(n, "say"), what .. ".say") }
end

-- A step's check becomes one function(text, data, ctx) -> value | nil, key.
local function make_check(c, options, what)
  if c == nil and options ~= nil then c = options end
  if c == nil then
    return function(text) if text ~= "" then return text end end
  end
  if type(c) == "function" then return c end
  if type(c) == "string" then
    local ok, err = pcall(s_find, "", c)
    if not ok then raise(what .. ": bad pattern '" .. c .. "': " .. tostring(err)) end
    return function(text)
      local cap = s_match(text, c)
      if cap == nil then return nil end
      -- A pattern without captures matches with its whole match.
      if type(cap) ~= "string" then return text end
      return cap
    end
  end
  if type(c) == "table" then
    local canon = {}
    for i = 1, rawlen(c) do
      local o = rawget(c, i)
      if type(o) ~= "string" then raise(what .. "[" .. i .. "] must be a string") end
      canon[s_lower(o)] = o
    end
    if next(canon) == nil then raise(what .. " must list at least one choice") end
    return function(text) return canon[s_lower(text)] end
  end
  raise(what .. " must be a Lua pattern, a list of choices or a function")
end

--- Builds a dialog from its declaration; raises at the bot's line.
function M.new(name, spec, bot)
  if type(name) ~= "string" or not s_match(name, "^[%w_%.%-]+$") or #name > 64 then
    raise("dialog name must be 1 to 64 bytes of [A-Za-z0-9_.-]")
  end
  if type(spec) ~= "table" then raise("dialog '" .. name .. "' needs a table") end
  -- Steps are the list part of the declaration, or its `steps` field.
  local steps = rawget(spec, "steps")
  if steps == nil and rawlen(spec) > 0 then steps = spec end
  if type(steps) ~= "table" or rawlen(steps) == 0 then
    raise("dialog '" .. name .. "' needs a non-empty list of steps")
  end
  if rawlen(steps) > STEPS_MAX then raise("a dialog has at most " .. STEPS_MAX .. " steps") end
  local d = setmetatable({ name = name, steps = {} }, Dialog)
  d.done = rawget(spec, "done")
  if type(d.done) ~= "function" then raise("dialog '" .. name .. "' needs a done function") end
  for _, k in ipairs({ "on_cancel", "on_give_up" }) do
    local f = rawget(spec, k)
    if f ~= nil and type(f) ~= "function" then raise("dialog " .. k .. " must be a function") end
    d[k] = f
  end
  d.tries = rawget(spec, "tries") or DEFAULT_TRIES
  if m_type(d.tries) ~= "integer" or d.tries < 1 or d.tries > 100 then
    raise("dialog tries must be an integer from 1 to 100")
  end
  d.cancel_words = word_set(rawget(spec, "cancel"), "dialog cancel", { "cancel" })
  d.back_words = word_set(rawget(spec, "back"), "dialog back", { "back" })
  d.cancelled = check_template(rawget(spec, "cancelled"), "dialog cancelled")
  d.gave_up = check_template(rawget(spec, "gave_up"), "dialog gave_up")
  d.retry = check_template(rawget(spec, "retry"), "dialog retry")
  local nudge = check_nudge(rawget(spec, "nudge"), "dialog nudge")
  -- start: a Lua pattern; a customer message outside any dialog that
  -- matches it (ignoring case) starts the dialog.
  local start = rawget(spec, "start")
  if start ~= nil then
    if type(start) ~= "string" then raise("dialog start must be a Lua pattern") end
    local ok, err = pcall(s_find, "", start)
    if not ok then raise("dialog start: bad pattern '" .. start .. "': " .. tostring(err)) end
    d.start_pattern = lower_pattern(start)
  end
  local saves = {}
  for i = 1, rawlen(steps) do
    local s = rawget(steps, i)
    local what = "dialog '" .. name .. "' step " .. i
    if type(s) ~= "table" then raise(what .. " must be a table") end
    -- confirm = true (or a list of words, the first meaning yes): the
    -- step offers them as quick replies, a yes goes on and any other
    -- offered word ends the dialog as cancelled.
    local confirm = rawget(s, "confirm")
    if confirm == true then confirm = { "yes", "no" } end
    if confirm ~= nil and (type(confirm) ~= "table" or rawlen(confirm) < 2) then
      raise(what .. " confirm must be true or a list of at least two words")
    end
    local save = rawget(s, "save")
    if save == nil and confirm then save = "confirmed" end
    if type(save) ~= "string" or save == "" then raise(what .. " needs save = 'key'") end
    if saves[save] then raise(what .. ": save key '" .. save .. "' is used twice") end
    saves[save] = true
    local ask = rawget(s, "ask")
    if type(ask) == "string" then check_template(ask, what .. " ask")
    elseif type(ask) ~= "function" then raise(what .. " needs ask = 'template key' or a function") end
    local options = rawget(s, "options") or confirm
    if options ~= nil and (type(options) ~= "table" or rawlen(options) == 0) then
      raise(what .. " options must be a non-empty list")
    end
    local tries = rawget(s, "tries") or d.tries
    if m_type(tries) ~= "integer" or tries < 1 or tries > 100 then
      raise(what .. " tries must be an integer from 1 to 100")
    end
    d.steps[i] = {
      save = save, ask = ask, options = options, tries = tries,
      yes = confirm and s_lower(rawget(confirm, 1)),
      check = make_check(rawget(s, "check"), options, what .. " check"),
      retry = check_template(rawget(s, "retry"), what .. " retry") or d.retry,
      nudge = check_nudge(rawget(s, "nudge"), what .. " nudge") or nudge,
    }
    if d.steps[i].nudge then d.nudges = true end
  end
  return d
end

------------------------------------------------------------------------------
-- Progress in ctx.state._dialog = { name, step, tries, turn, data }.

local function progress(ctx)
  local st = ctx.state
  local p = type(st) == "table" and rawget(st, STATE_KEY)
  if type(p) ~= "table" then return nil end
  return p
end

-- Template vars of a step: what the dialog collected so far, and where it
-- stands ("step 2 of 4").
local function vars_of(d, p)
  local v = {}
  for k, x in pairs(p.data) do v[k] = x end
  v.step_number, v.step_count = p.step, #d.steps
  return v
end

local function arm_nudge(ctx, d, p)
  ctx:cancel(TIMER)
  local n = d.steps[p.step].nudge
  if n then ctx:after(n.after, TIMER, { dialog = d.name, step = p.step, turn = p.turn }) end
end

local function ask(ctx, d, p, key)
  local s = d.steps[p.step]
  local content
  if key then
    content = ctx:t(key, vars_of(d, p))
  elseif type(s.ask) == "function" then
    content = s.ask(ctx, p.data)
  else
    content = ctx:t(s.ask, vars_of(d, p))
  end
  if s.options and type(content) == "string" then
    content = { quick_replies = { text = content, options = s.options } }
  end
  ctx:reply(content)
  arm_nudge(ctx, d, p)
end

local function finish(ctx, d, p, outcome, template)
  ctx.state[STATE_KEY] = nil
  ctx:cancel(TIMER)
  metric(d.name, d.steps[p.step].save, outcome)
  if template then ctx:reply(ctx:t(template, vars_of(d, p))) end
end

--- Starts the dialog: asks its first step. data: values known beforehand.
function Dialog:start(ctx, data)
  if getmetatable(self) ~= "dialog" then raise("dialog methods are called with ':'") end
  if data ~= nil and type(data) ~= "table" then raise("dialog start data must be a table") end
  local p = { name = self.name, step = 1, tries = 0, turn = 0, data = {} }
  if data then for k, v in pairs(data) do p.data[k] = v end end
  ctx.state[STATE_KEY] = p
  metric(self.name, self.steps[1].save, "started")
  ask(ctx, self, p)
end

--- The save key of the step the conversation is at, or nil.
function Dialog:step(ctx)
  local p = progress(ctx)
  if p and p.name == self.name then
    local s = self.steps[p.step]
    return s and s.save
  end
  return nil
end

--- Ends the dialog without done or a reply.
function Dialog:stop(ctx)
  local p = progress(ctx)
  if p and p.name == self.name then
    ctx.state[STATE_KEY] = nil
    ctx:cancel(TIMER)
    return true
  end
  return false
end

-- One answer of the customer at the dialog's current step.
local function answer(ctx, d, p, text)
  text = trim(text or "")
  local word = s_lower(text)
  if d.cancel_words[word] then
    local step = d.steps[p.step].save
    finish(ctx, d, p, "cancelled", d.cancelled)
    if d.on_cancel then d.on_cancel(ctx, p.data, step) end
    return
  end
  p.turn = p.turn + 1
  if d.back_words[word] then
    if p.step > 1 then
      p.step = p.step - 1
      p.data[d.steps[p.step].save] = nil
    end
    p.tries = 0
    return ask(ctx, d, p)
  end
  local s = d.steps[p.step]
  local value, why = s.check(text, p.data, ctx)
  if value == nil or value == false then
    p.tries = p.tries + 1
    if p.tries >= s.tries then
      finish(ctx, d, p, "gave_up", d.gave_up)
      if d.on_give_up then d.on_give_up(ctx, p.data, s.save) end
      return
    end
    if why ~= nil and type(why) ~= "string" then raise("a dialog check's second result must be a template key") end
    return ask(ctx, d, p, why or s.retry)
  end
  if s.yes and s_lower(value) ~= s.yes then
    local data = p.data
    finish(ctx, d, p, "declined", d.cancelled)
    if d.on_cancel then d.on_cancel(ctx, data, s.save) end
    return
  end
  -- A confirmation is not data: done gets what the other steps saved.
  if not s.yes then p.data[s.save] = value end
  p.tries = 0
  if p.step < #d.steps then
    metric(d.name, s.save, "answered")
    p.step = p.step + 1
    return ask(ctx, d, p)
  end
  local data = p.data
  finish(ctx, d, p, "completed")
  return d.done(ctx, data)
end

------------------------------------------------------------------------------
-- Hooks for the dispatcher.

-- The dialog the conversation is in, if the bot still defines it. A
-- progress record of a dialog the bot no longer has (a new version of
-- bot.lua) is dropped, and the message goes to the ordinary handlers.
function M.current(ctx, dialogs)
  local p = progress(ctx)
  if not p then return nil end
  local d = type(p.name) == "string" and dialogs[p.name]
  if not d or m_type(p.step) ~= "integer" or not d.steps[p.step] or type(p.data) ~= "table" then
    ctx.state[STATE_KEY] = nil
    return nil
  end
  if m_type(p.tries) ~= "integer" then p.tries = 0 end
  if m_type(p.turn) ~= "integer" then p.turn = 0 end
  return d, p
end

function M.route(ctx, d, p, text) answer(ctx, d, p, text) return true end

-- The dialog whose start pattern the text matches, or nil; dialogs are
-- tried in the order they were declared.
function M.starting(order, text)
  local lowered = s_lower(text or "")
  for _, d in ipairs(order) do
    if d.start_pattern and s_find(lowered, d.start_pattern) then return d end
  end
  return nil
end

-- The nudge timer: says the step's nudge if the conversation is still at
-- the step and turn that armed it; a stale nudge says nothing.
function M.nudge(ctx, dialogs, t)
  local d, p = M.current(ctx, dialogs)
  if not d or type(t) ~= "table" or t.dialog ~= d.name or t.step ~= p.step or t.turn ~= p.turn then
    return
  end
  local n = d.steps[p.step].nudge
  if n and n.say then ctx:reply(ctx:t(n.say, vars_of(d, p))) end
  metric(d.name, d.steps[p.step].save, "nudged")
end

return M
