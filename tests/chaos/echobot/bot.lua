-- Echo bot: replies "echo: <text>" to each message. The log line names the
-- message and whether the runtime flagged it redelivered; the chaos suite
-- reads these lines from the bot's log.
--
-- It also keeps what a multi-turn bot keeps: a count of the messages it
-- handled and the last one in ctx.state, and a tag for the count's tens.
-- Each handler reads what the one before it committed, so a commit that
-- went backwards or lost its state shows in the stored conversation, which
-- the suite compares with the stored messages.
local bot = parley.bot()

bot:on_message(function(ctx, msg)
  ctx:log("info", "handled text=" .. msg.text .. " redelivered=" .. tostring(msg.redelivered))
  local st = ctx.state
  st.count = (st.count or 0) + 1
  st.last = msg.text
  local tens = st.count // 10
  if st.count % 10 == 0 then ctx:untag("tens:" .. (tens - 1)) end
  ctx:tag("tens:" .. tens)
  ctx:reply("echo: " .. msg.text)
end)

return bot
