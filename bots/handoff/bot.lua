-- Handoff bot. The conversation's state remembers how many questions went
-- unanswered and whether it was handed off; the "no_agent" timer lives in
-- the state too, so it survives restarts and moves between replicas.
local bot = parley.bot()
local cfg = parley.config.settings

local answer_keys = {}
for key in pairs(cfg.answers) do answer_keys[#answer_keys + 1] = key end
table.sort(answer_keys)

local function find_any(text, patterns)
  for _, p in ipairs(patterns) do
    if text:find(p) then return true end
  end
  return false
end

local function hand_off(ctx, why, last)
  local st = ctx.state
  st.handed_off = true
  st.told_waiting = nil
  st.unanswered = 0
  ctx:tag("handoff:" .. why)
  local minutes = math.ceil(cfg.agent_wait / 60)
  ctx:reply(ctx:t("handing_off", { count = minutes, minutes = minutes }))
  ctx:after(cfg.agent_wait, "no_agent", { queue = cfg.queue })
  ctx:handoff(cfg.queue, ctx:t("note", { reason = ctx:t("reason." .. why), text = last }))
end

bot:on_open(function(ctx)
  ctx:reply(ctx:t("greeting"))
end)

bot:on_message(function(ctx, msg)
  local st = ctx.state
  -- Waiting in the queue the conversation is still ours: say once that a
  -- person is coming, then leave the floor to them.
  if st.handed_off then
    if not st.told_waiting then
      st.told_waiting = true
      ctx:reply(ctx:t("still_waiting"))
    end
    return
  end
  local text = msg.text:lower()
  if find_any(text, cfg.human) then
    hand_off(ctx, "asked", msg.text)
    return
  end
  for _, key in ipairs(answer_keys) do
    if find_any(text, cfg.answers[key]) then
      st.unanswered = 0
      ctx:reply(ctx:t("answer." .. key))
      return
    end
  end
  st.unanswered = (st.unanswered or 0) + 1
  if st.unanswered >= cfg.max_unanswered then
    hand_off(ctx, "unanswered", msg.text)
  else
    ctx:reply(ctx:t("not_sure"))
  end
end)

-- What the agent wrote while holding the conversation reaches the bot after
-- the hand back, as agent messages: on_message never sees them (it hears
-- the customer only), so the bot neither answers the agent nor hands off
-- again on the agent's words. A person has been answering: the "your
-- message is waiting" notice is not needed any more.
bot:on_agent_message(function(ctx, msg)
  ctx.state.told_waiting = true
end)

-- An agent took the conversation: the customer does not need the warning.
-- The bot sees this event just before the conversation is taken from it.
bot:on_event("assigned", function(ctx, ev)
  if ev.assignee and ev.assignee ~= parley.name and ev.assignee ~= "" then
    ctx:cancel("no_agent")
    ctx.state.agent = ev.assignee
  end
end)

-- Back with the bot, from an agent: say so.
bot:on_event("handed_back", function(ctx)
  local st = ctx.state
  ctx:cancel("no_agent")
  st.handed_off = false
  st.told_waiting = nil
  if st.agent then
    st.agent = nil
    ctx:reply(ctx:t("back"))
  end
end)

-- Still in the queue when the timer fires: nobody took it in time.
bot:on_timer("no_agent", function(ctx)
  if not ctx.state.handed_off or ctx.state.agent then return end
  local minutes = math.ceil(cfg.agent_wait / 60)
  ctx:reply(ctx:t("no_agent", { count = minutes, minutes = minutes }))
end)

return bot
