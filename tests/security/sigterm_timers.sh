#!/bin/sh
# A bot whose two timers re-arm themselves with ctx:after(0) must not hold
# the loop: `parley run` still answers other messages and stops on SIGTERM.
# Before zero-delay timers were armed one millisecond on, both timers ran
# forever inside one libuv pass: no I/O, SIGTERM ignored, memory growing.
# Usage: sigterm_timers.sh <parley binary>
set -u
PARLEY=$1
dir=$(mktemp -d "${TMPDIR:-/tmp}/parley-sigterm.XXXXXX") || exit 2
trap 'rm -rf "$dir"' EXIT INT TERM
mkdir -p "$dir/bot/templates"
cat >"$dir/bot/bot.yaml" <<'YAML'
name: spinner
default_locale: en
YAML
printf 'x: "x"\n' >"$dir/bot/templates/en.yaml"
cat >"$dir/bot/bot.lua" <<'LUA'
local bot = parley.bot()
local spins = 0
bot:on_message(function(ctx, msg)
  if msg.text == "spin" then
    ctx:after(0, "a")
    ctx:after(0, "b")
    ctx:reply("spinning")
  else
    ctx:reply("still here after " .. (spins > 0 and "some" or "no") .. " spins")
  end
end)
bot:on_timer("a", function(ctx) spins = spins + 1 ctx:after(0, "a") end)
bot:on_timer("b", function(ctx) spins = spins + 1 ctx:after(0, "b") end)
return bot
LUA
# The console reads a FIFO this script holds open: "spin", then, two
# seconds later, another message; only the signal can end the run.
mkfifo "$dir/in"
"$PARLEY" run "$dir/bot" --drain 1s --wait 60000 <"$dir/in" >"$dir/out" 2>&1 &
pid=$!
exec 3>"$dir/in"
printf 'spin\n' >&3
sleep 2
printf 'hello\n' >&3
sleep 2
kill -TERM "$pid" 2>/dev/null
for _ in $(seq 1 50); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
exec 3>&-
if kill -0 "$pid" 2>/dev/null; then
  echo "FAIL: parley run ignored SIGTERM for 5 s while two timers re-armed themselves"
  kill -KILL "$pid" 2>/dev/null
  sed 's/^/    | /' "$dir/out" | tail -20
  exit 1
fi
if ! grep -q "still here after some spins" "$dir/out"; then
  echo "FAIL: the bot did not answer while its timers spun"
  sed 's/^/    | /' "$dir/out" | tail -20
  exit 1
fi
echo "parley run answered and stopped on SIGTERM while its timers spun"
