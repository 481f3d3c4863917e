-- Triage bot: topic and urgency tags on every customer message; urgent
-- conversations are handed to the urgent queue with a note for the agent.
local bot = parley.bot()
local cfg = parley.config.settings

-- Topic names in a fixed order, so tags and replies do not depend on
-- table iteration order.
local topic_names = {}
for name in pairs(cfg.topics) do topic_names[#topic_names + 1] = name end
table.sort(topic_names)

local function matches_any(text, patterns)
  for _, p in ipairs(patterns) do
    if text:find(p) then return true end
  end
  return false
end

local function topics_of(text)
  local found = {}
  for _, name in ipairs(topic_names) do
    if matches_any(text, cfg.topics[name]) then found[#found + 1] = name end
  end
  return found
end

-- Shouting counts too: three exclamation marks, or a long message in capitals.
local function is_urgent(raw, lowered)
  if matches_any(lowered, cfg.urgent) then return true end
  if raw:find("!!!", 1, true) then return true end
  local letters, upper = 0, 0
  for ch in raw:gmatch("%a") do
    letters = letters + 1
    if ch:match("%u") then upper = upper + 1 end
  end
  return letters >= 12 and upper / letters > 0.8
end

bot:on_open(function(ctx)
  ctx:tag("triage:new")
end)

bot:on_message(function(ctx, msg)
  local lowered = msg.text:lower()
  local st = ctx.state
  st.seen = st.seen or {}
  local new = {}
  for _, name in ipairs(topics_of(lowered)) do
    ctx:tag("topic:" .. name)
    if not st.seen[name] then
      st.seen[name] = true
      new[#new + 1] = ctx:t("topic." .. name)
    end
  end
  ctx:untag("triage:new")

  if is_urgent(msg.text, lowered) and not st.urgent then
    st.urgent = true
    ctx:tag("urgent", "priority:high")
    ctx:untag("priority:normal")
    ctx:reply(ctx:t("urgent"))
    local topics = {}
    for name in pairs(st.seen) do topics[#topics + 1] = name end
    table.sort(topics)
    ctx:handoff(cfg.urgent_queue, ctx:t("note", {
      topics = #topics > 0 and table.concat(topics, ", ") or "-",
      text = msg.text,
    }))
    return
  end

  if not st.urgent and not ctx:has_tag("priority:normal") then ctx:tag("priority:normal") end
  if #new > 0 then
    ctx:reply(ctx:t("noted", { topics = table.concat(new, ", ") }))
  elseif not st.greeted then
    ctx:reply(ctx:t("ack"))
  end
  st.greeted = true
end)

return bot
