local bot = parley.bot()

local profile = bot:dialog("profile", {
  steps = {
    { save = "age", ask = "ask_age", tries = 2,
      check = function(text)
        local n = tonumber(text)
        if not n then return nil, "not_number" end
        if n < 18 then return nil, "too_young" end
        return n
      end },
    { save = "city", ask = "ask_city" },
  },
  cancel = { "stop", "quit" }, back = "undo", gave_up = "gave_up",
  done = function(ctx, d)
    if d.city == "boom" then error("done failed") end
    ctx:reply(ctx:t("done", d))
  end,
})

local survey = bot:dialog("survey", {
  steps = { { save = "color", ask = function(ctx, d) return { card = { title = "Color?" } } end } },
  done = function(ctx, d) ctx:reply(ctx:t("survey_done", d)) end,
  on_cancel = function(ctx, d, step) ctx.state.cancelled_at = step end,
})

bot:command("/profile", function(ctx, msg, args) profile:start(ctx, { who = args[1] or "you" }) end)
bot:command("/survey", function(ctx) survey:start(ctx) end)
bot:command("/ghost", function(ctx)
  ctx.state._dialog = { name = "removed", step = 1, tries = 0, turn = 0, data = {} }
end)
bot:on_message(function(ctx) ctx:reply(ctx:t("idle")) end)
return bot
