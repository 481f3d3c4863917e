-- Echo bot: replies "echo: <text>" to each customer message. No logging,
-- no state: the smallest handler the runtime can run.
local bot = parley.bot()

bot:on_message(function(ctx, msg)
  ctx:reply("echo: " .. msg.text)
end)

return bot
