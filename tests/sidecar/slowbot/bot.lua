-- Every customer message: one call to the slow service, then a reply with
-- what it answered.
local bot = parley.bot()
local base = parley.config.settings.base_url

bot:on_message(function(ctx, msg)
  local resp, err = http.get(base .. "/slow", { timeout = 20 })
  if not resp then
    ctx:reply("service failed: " .. tostring(err))
    return
  end
  ctx:reply("slow says " .. resp.body .. " to " .. (msg.text or ""))
end)
