local bot = parley.bot()
bot:on_message(function(ctx, msg) ctx:reply(ctx:t("items", { count = 2 })) end)
return bot
