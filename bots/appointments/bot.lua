-- Appointments bot: the clinic's four-turn booking (bots/clinic, by hand)
-- as a dialog, which adds re-asking, giving up, cancel, back and a nudge.
local bot = parley.bot()

bot:dialog("booking", {
  { save = "date", ask = "ask_date", check = "^%d%d%d%d%-%d%d%-%d%d$", retry = "bad_date" },
  { save = "time", ask = "ask_time", check = "^%d%d:%d%d$", retry = "bad_time" },
  { save = "name", ask = "ask_name" },
  { ask = "confirm", confirm = true },
  start = "^book$", cancelled = "cancelled", gave_up = "gave_up", nudge = { after = 600, say = "nudge" },
  done = function(ctx, booking)
    ctx.state.appointments = ctx.state.appointments or {}
    table.insert(ctx.state.appointments, booking)
    ctx:reply(ctx:t("booked", booking))
  end,
})

bot:on_open(function(ctx) ctx:reply(ctx:t("welcome")) end)
bot:on_message(function(ctx) ctx:reply(ctx:t("idle")) end)

-- Middleware: an overlong message is turned away before it reaches the
-- booking, so a pasted text costs the customer no try.
bot:use(function(ctx, ev, next)
  if ev.kind == "message" and #(ev.text or "") > 200 then return ctx:reply(ctx:t("too_long")) end
  return next()
end)
