local bot = parley.bot()
bot:on_open(function(ctx) ctx:reply(ctx:t("hello")) end)
bot:on_message(function(ctx, msg) ctx:after(2, "later", { text = msg.text }) end)
bot:on_timer("later", function(ctx, data) ctx:reply(ctx:t("later", data)) end)
return bot
