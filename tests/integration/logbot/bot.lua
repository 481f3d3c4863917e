local bot = parley.bot()
bot:on_message(function(ctx, msg)
  error(msg.text, 0)
end)
return bot
