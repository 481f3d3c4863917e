-- Order-status bot: asks for the order number, fetches the order from the
-- order service (non-blocking: the handler waits, the bot does not) and
-- answers with a card. An invalid number is answered quoting the message.
local bot = parley.bot()
local cfg = parley.config.settings
local base = cfg.base_url:gsub("/+$", "")

local STATUSES = { placed = true, packed = true, shipped = true, delivered = true, cancelled = true }

local function ask(ctx, key)
  ctx.state.awaiting = true
  ctx:reply(ctx:t(key or "ask"))
end

-- Fetches an order; returns the decoded order, or nil and a template key.
local function fetch(ctx, number)
  local resp, err = http.get(base .. "/orders/" .. number, {
    timeout = cfg.timeout,
    headers = { Accept = "application/json", ["Idempotency-Key"] = ctx.idempotency_key },
  })
  if not resp then
    ctx:log("warn", "order service unreachable: " .. err)
    return nil, "unavailable"
  end
  if resp.status == 404 then return nil, "not_found" end
  if resp.status ~= 200 then
    ctx:log("warn", "order service answered " .. resp.status)
    return nil, "unavailable"
  end
  local order = json.decode(resp.body)
  if type(order) ~= "table" or not STATUSES[order.status] then
    ctx:log("warn", "order service sent an unexpected body")
    return nil, "unavailable"
  end
  return order
end

local function show(ctx, order, number)
  local items = type(order.items) == "table" and #order.items or 0
  local lines = { ctx:t("status." .. order.status, { eta = order.eta or "?" }) }
  if items > 0 then lines[#lines + 1] = ctx:t("items", { count = items }) end
  local buttons = {}
  if type(order.tracking_url) == "string" and order.tracking_url ~= "" then
    buttons[#buttons + 1] = { label = ctx:t("track"), url = order.tracking_url }
  end
  buttons[#buttons + 1] = { label = ctx:t("refresh"), postback = "order:" .. number }
  buttons[#buttons + 1] = { label = ctx:t("another"), postback = "order:another" }
  ctx:reply({ card = {
    title = ctx:t("card_title", { number = number }),
    text = table.concat(lines, "\n"),
    buttons = buttons,
  } })
end

local function lookup(ctx, number, msg)
  ctx.state.awaiting = false
  ctx.state.lookups = (ctx.state.lookups or 0) + 1
  local order, why = fetch(ctx, number)
  if not order then
    if why == "not_found" and msg then
      ctx:reply(ctx:t("not_found", { number = number }), { quote = msg })
    else
      ctx:reply(ctx:t(why, { number = number }))
    end
    return
  end
  ctx.state.last_order = number
  show(ctx, order, number)
end

bot:on_open(function(ctx) ask(ctx, "greeting") end)

bot:command("/help", function(ctx) ask(ctx, "ask") end)

bot:on_message(function(ctx, msg)
  local digits = msg.text:match("#?%s*(%d[%d%- ]*%d)") or msg.text:match("%d+")
  if not digits then
    ask(ctx, "ask")
    return
  end
  local number = digits:gsub("[%- ]", "")
  if #number < cfg.min_digits or #number > cfg.max_digits then
    -- Quote what the customer wrote so they see which number we mean.
    ctx:reply(ctx:t("invalid", { number = number, min = cfg.min_digits, max = cfg.max_digits }),
              { quote = msg })
    ctx.state.awaiting = true
    return
  end
  lookup(ctx, number, msg)
end)

bot:on_postback("order:another", function(ctx) ask(ctx, "ask") end)
bot:on_postback("order:(%d+)", function(ctx, pb, caps) lookup(ctx, caps[1], nil) end)

return bot
