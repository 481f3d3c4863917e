-- Echo bot: replies "echo: <text>" to each message. The log line names the
-- message and whether the runtime flagged it redelivered; the chaos suite
-- reads these lines from the bot's log.
local bot = parley.bot()

bot:on_message(function(ctx, msg)
  ctx:log("info", "handled text=" .. msg.text .. " redelivered=" .. tostring(msg.redelivered))
  ctx:reply("echo: " .. msg.text)
end)

return bot
