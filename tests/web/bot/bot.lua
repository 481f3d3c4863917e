-- Greets with a card, answers taps and typed questions, hands the
-- conversation to the support queue when asked for a person, and says it is
-- back when an agent hands it back.
local bot = parley.bot()
local cfg = parley.config.settings

local function card(ctx)
  ctx:reply({ card = {
    title = ctx:t("card.title"),
    text = ctx:t("card.text"),
    image = "/help.svg",
    buttons = {
      { label = ctx:t("faq.hours.label"), postback = "faq:hours" },
      { label = ctx:t("faq.refund.label"), postback = "faq:refund" },
      { label = ctx:t("card.docs"), url = "https://example.com/help" },
    },
  } })
end

local function find_any(text, patterns)
  for _, p in ipairs(patterns) do
    if text:find(p) then return true end
  end
  return false
end

bot:on_open(function(ctx)
  card(ctx)
end)

bot:on_postback("faq:([%w_]+)", function(ctx, pb, caps)
  local key = caps[1]
  if cfg.questions[key] then
    ctx:reply(ctx:t("faq." .. key .. ".answer"))
    ctx:reply({ quick_replies = { text = ctx:t("more"), options = {
      { label = ctx:t("faq.hours.label"), payload = "faq:hours" },
      { label = ctx:t("faq.refund.label"), payload = "faq:refund" },
    } } })
  else
    card(ctx)
  end
end)

bot:on_message(function(ctx, msg)
  if ctx.state.handed_off then return end
  local text = msg.text:lower()
  if find_any(text, cfg.human) then
    ctx.state.handed_off = true
    ctx:reply(ctx:t("handing_off"))
    ctx:handoff(cfg.queue, ctx:t("note", { text = msg.text }))
    return
  end
  for key, patterns in pairs(cfg.questions) do
    if find_any(text, patterns) then
      ctx:reply(ctx:t("faq." .. key .. ".answer"))
      return
    end
  end
  ctx:reply("You said: " .. msg.text)
end)

bot:on_event("handed_back", function(ctx)
  ctx.state.handed_off = false
  ctx:reply(ctx:t("back"))
end)

return bot
