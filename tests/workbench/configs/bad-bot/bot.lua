local bot = parley.bot()
return bot
