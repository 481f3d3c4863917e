-- Middleware: functions a bot registers with bot:use(fn) that run before
-- every handler, in the order they were registered, each deciding whether
-- the rest runs by calling next(). They run in the handler's coroutine,
-- under its budget, with its ctx: an error in a middleware fails the
-- event exactly as an error in the handler would (state rolled back, the
-- fallback reply), and what a middleware puts in ctx.state is committed
-- with the handler's changes.
--
-- Loaded once by runtime.lua with (deps); returns the module table.
local deps = ...
local raise = deps.raise
local type = type

local M = {}

--- Runs chain[1..n] around inner(): chain[i](ctx, ev, next), where next()
--- runs the rest and returns true when a handler ran. Returns true when a
--- handler ran, or when a middleware answered without calling next (it
--- handled the event itself).
function M.run(chain, ctx, ev, inner)
  local n = #chain
  if n == 0 then return inner() end
  local function step(i)
    if i > n then return inner() end
    local called, ran = false, false
    local function nxt()
      if called then raise("next() called twice by the same middleware") end
      called = true
      ran = step(i + 1) and true or false
      return ran
    end
    chain[i](ctx, ev, nxt)
    return ran or not called
  end
  return step(1)
end

function M.check(fn)
  if type(fn) ~= "function" then raise("bot:use needs a function(ctx, ev, next)") end
  return fn
end

return M
