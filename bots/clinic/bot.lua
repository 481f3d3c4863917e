-- Clinic bot: a booking over four turns. Every turn reads what the turns
-- before it left in ctx.state, so a state that went backwards shows at once.
local bot = parley.bot()

bot:on_open(function(ctx) ctx:reply(ctx:t("welcome")) end)

local function step_booking(ctx, msg, b)
  local text = msg.text
  if b.step == "date" then
    if not text:match("^%d%d%d%d%-%d%d%-%d%d$") then return ctx:reply(ctx:t("bad_date")) end
    b.date, b.step = text, "time"
    ctx:tag("booking:time")
    ctx:untag("booking:date")
    return ctx:reply(ctx:t("ask_time", { date = b.date }))
  elseif b.step == "time" then
    if not text:match("^%d%d:%d%d$") then return ctx:reply(ctx:t("bad_time")) end
    b.time, b.step = text, "name"
    ctx:tag("booking:name")
    ctx:untag("booking:time")
    return ctx:reply(ctx:t("ask_name"))
  elseif b.step == "name" then
    b.name, b.step = text, "confirm"
    ctx:tag("booking:confirm")
    ctx:untag("booking:name")
    return ctx:reply(ctx:t("confirm", b))
  elseif b.step == "confirm" then
    ctx:untag("booking:confirm", "booking")
    ctx.state.booking = nil
    if text:lower() ~= "yes" then return ctx:reply(ctx:t("cancelled")) end
    local list = ctx.state.appointments or {}
    list[#list + 1] = { date = b.date, time = b.time, name = b.name }
    ctx.state.appointments = list
    ctx:tag("booked")
    return ctx:reply(ctx:t("booked", { name = b.name, date = b.date, time = b.time,
                                       count = #list }))
  end
end

bot:on_message(function(ctx, msg)
  local st = ctx.state
  st.turns = (st.turns or 0) + 1
  if st.booking then return step_booking(ctx, msg, st.booking) end
  if msg.text:lower() == "book" then
    st.booking = { step = "date" }
    ctx:tag("booking", "booking:date")
    return ctx:reply(ctx:t("ask_date"))
  end
  ctx:reply(ctx:t("idle"))
end)

return bot
