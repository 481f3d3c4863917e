-- Typed settings: fills in bot.yaml's settings_schema defaults and gives
-- each declared setting its declared type. The C side (lua/src/settings.c)
-- has already checked every value, so the conversions here cannot fail; a
-- value set from the environment arrives as text ("8", "true") and leaves
-- as a number or a boolean, the same as if bot.yaml had said it.
--
-- Called once by runtime.lua with the config table, before bot code runs.
local config = ...
local schema = config.settings_schema
if type(schema) ~= "table" then return end

local settings = config.settings
if type(settings) ~= "table" then
  settings = {}
  config.settings = settings
end

local function convert(t, v)
  if t == "string" then
    if type(v) == "boolean" then return v and "true" or "false" end
    if math.type(v) == "float" and v == math.floor(v) then return tostring(math.tointeger(v)) end
    return tostring(v)
  elseif t == "integer" then
    return math.tointeger(tonumber(v)) or tonumber(v)
  elseif t == "number" then
    return tonumber(v)
  elseif t == "boolean" then
    if type(v) == "boolean" then return v end
    return v == "true"
  end
  return v
end

for name, entry in pairs(schema) do
  local v = settings[name]
  if v == nil then v = entry.default end
  if v ~= nil then settings[name] = convert(entry.type, v) end
end
