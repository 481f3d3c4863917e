-- FAQ bot: pattern -> answer, a greeting with the top questions as quick
-- replies, a person when asked for one, and a menu when nothing matched.
local bot = parley.bot()
local cfg = parley.config.settings

local known = {}
for _, q in ipairs(cfg.questions) do known[q.key] = true end

-- The top questions as quick-reply options, labelled in the customer's locale.
local function top_options(ctx)
  local options = {}
  for _, key in ipairs(cfg.top) do
    options[#options + 1] = { label = ctx:t("faq." .. key .. ".label"), payload = "faq:" .. key }
  end
  return options
end

local function menu(ctx, text)
  ctx:reply({ quick_replies = { text = text, options = top_options(ctx) } })
end

local function answer(ctx, key)
  ctx.state.answered = (ctx.state.answered or 0) + 1
  ctx.state.last = key
  ctx:reply(ctx:t("faq." .. key .. ".answer"))
end

bot:on_open(function(ctx)
  menu(ctx, ctx:t("greeting"))
end)

bot:command("/help", function(ctx)
  menu(ctx, ctx:t("help"))
end)

-- Asking for a person: the conversation goes to the agents' queue, with
-- what the customer wrote as the note the agent reads first.
for _, pattern in ipairs(cfg.human) do
  bot:match(pattern, function(ctx, msg)
    ctx:reply(ctx:t("handoff"))
    ctx:handoff(cfg.queue, "Asked for a person: " .. msg.text)
  end)
end

-- Patterns in the order bot.yaml lists them: the first question that
-- matches answers.
for _, q in ipairs(cfg.questions) do
  for _, pattern in ipairs(q.patterns) do
    bot:match(pattern, function(ctx) answer(ctx, q.key) end)
  end
end

-- A tapped quick reply.
bot:on_postback("faq:([%w_]+)", function(ctx, pb, caps)
  if known[caps[1]] then
    answer(ctx, caps[1])
  else
    menu(ctx, ctx:t("fallback"))
  end
end)

bot:fallback(function(ctx)
  ctx.state.misses = (ctx.state.misses or 0) + 1
  menu(ctx, ctx:t("fallback"))
end)

return bot
