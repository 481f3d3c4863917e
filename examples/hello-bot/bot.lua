local bot = parley.bot()

bot:on_open(function(ctx) ctx:reply("Hi! Ask me anything, or type 'agent'.") end)

bot:match("agent", function(ctx, msg) ctx:handoff("support", "asked for a human") end)

bot:on_message(function(ctx, msg)
  ctx:reply({ quick_replies = { text = "You said: " .. msg.text,
              options = { { label = "Talk to an agent", payload = "agent" } } } })
end)

return bot
