local bot = parley.bot()

-- 1. A trace of the order in which middleware and the handler ran.
bot:use(function(ctx, ev, next)
  ctx.state.trace = "a"
  local ran = next()
  ctx.state.trace = ctx.state.trace .. (ran and "A" or "-")
end)
bot:use(function(ctx, ev, next)
  ctx.state.trace = ctx.state.trace .. "b"
  if ev.kind == "message" and ev.text == "blocked" then return ctx:reply(ctx:t("blocked")) end
  if ev.kind == "message" and ev.text == "mw boom" then
    ctx.state.poisoned = true
    error("middleware failed")
  end
  if ev.kind == "message" and ev.text == "twice" then next() end
  -- Language detection: Spanish greetings switch the locale.
  if ev.kind == "message" and ev.text == "hola" then ctx:set_locale("es") end
  if ev.kind == "timer" then ctx.state.timer_seen = ev.timer end
  return next()
end)

bot:command("/later", function(ctx) ctx:after(60, "ping") end)
bot:on_timer("ping", function(ctx) ctx:reply("ping") end)
bot:on_message(function(ctx, msg)
  ctx.state.trace = ctx.state.trace .. "h"
  ctx:reply(ctx:t("hello"))
end)
