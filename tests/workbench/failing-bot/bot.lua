local bot = parley.bot()

bot:on_message(function(ctx, msg)
  ctx.state.count = (ctx.state.count or 0) + 1
  ctx:reply(ctx:t("echo", { text = msg.text }))
end)

return bot
