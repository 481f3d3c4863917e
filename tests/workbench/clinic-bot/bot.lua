-- The clinic's appointment bot (tests/workbench): a booking is a table in
-- ctx.state that grows over three turns.
local bot = parley.bot()
local cfg = parley.config.settings

bot:on_open(function(ctx)
  ctx:reply(ctx:t("greeting"))
end)

bot:on_message(function(ctx, msg)
  local st = ctx.state
  local text = msg.text
  if text == "code" then
    ctx:reply(ctx:t("code", { code = cfg.clinic_code, kind = type(cfg.clinic_code) }))
    return
  end
  if text == "slots" then
    -- Two replies, in this order.
    ctx:reply(ctx:t("slots", { count = cfg.max_slots }))
    ctx:reply(ctx:t("ask_date"))
    return
  end
  if text == "person" then
    ctx:reply(ctx:t("person"))
    ctx:handoff(cfg.queue, "asked for a person")
    return
  end
  if text == "book" then
    ctx:tag("booking")
    st.booking = { step = "date", patient = { name = "Ana Silva", langs = { "pt", "en" } } }
    ctx:after(cfg.nudge_after, "nudge")
    ctx:reply(ctx:t("ask_date"))
    return
  end
  local b = st.booking
  if b and b.step == "date" then
    b.date = text
    b.step = "time"
    st.booking = b
    ctx:reply(ctx:t("ask_time", { date = text }))
  elseif b and b.step == "time" then
    b.time = text
    b.step = "done"
    st.booking = b
    ctx:cancel("nudge")
    ctx:untag("booking")
    ctx:tag("booked")
    ctx:reply(ctx:t("confirm", { name = b.patient.name, date = b.date, time = b.time }))
  end
end)

bot:on_timer("nudge", function(ctx)
  ctx:reply(ctx:t("reminder"))
end)

return bot
