#!/usr/bin/env bash
# `parley new bot NAME` writes a bot that passes lint, test (also under
# --faults --cut) and whose sidecar.yaml passes config check; an existing
# folder is refused and left alone, a bad name is a usage error.
# `parley test --watch` runs again after a change: a template edited to
# break the spec turns the second run's result to a failure.
# Usage: newbot_watch.sh <parley binary>
set -uo pipefail
PARLEY=$1
dir=$(mktemp -d)
trap 'kill "${watch_pid:-}" 2>/dev/null; rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

cd "$dir" || exit 1
"$PARLEY" new bot shop-helper >new.out 2>&1 || { cat new.out; fail "parley new bot"; }
for f in bot.yaml bot.lua templates/en.yaml spec/start.yaml sidecar.yaml; do
  [ -s "shop-helper/$f" ] || fail "shop-helper/$f was not written"
done
"$PARLEY" lint shop-helper --strict || fail "lint --strict of the new bot"
"$PARLEY" test shop-helper >t1.out 2>&1 || { cat t1.out; fail "parley test of the new bot"; }
grep -q "^2 passed, 0 failed" t1.out || { cat t1.out; fail "the new bot's spec"; }
"$PARLEY" test --faults --cut --seed 5 shop-helper >t2.out 2>&1 || { cat t2.out; fail "--faults --cut"; }
SHOP_HELPER_TOKEN=t "$PARLEY" config check --kind sidecar shop-helper/sidecar.yaml \
  || fail "the new bot's sidecar.yaml"

cp shop-helper/bot.lua before.lua
"$PARLEY" new bot shop-helper >again.out 2>&1
[ $? -eq 1 ] || fail "an existing folder must be refused with 1"
grep -q "File exists (nothing was changed)" again.out || { cat again.out; fail "message"; }
cmp -s before.lua shop-helper/bot.lua || fail "an existing bot was changed"
"$PARLEY" new bot 'Bad Name' >/dev/null 2>&1
[ $? -eq 2 ] || fail "a bad name must be a usage error (2)"

# --watch: the first run passes; an edit that breaks the spec runs it
# again, and that run fails. --runs 2 bounds the loop.
"$PARLEY" test shop-helper --watch --runs 2 >watch.out 2>&1 &
watch_pid=$!
for _ in $(seq 1 150); do grep -q "^watching" watch.out && break; sleep 0.2; done
grep -q "^watching shop-helper for changes" watch.out || { cat watch.out; fail "no watching line"; }
sed -i 's/We answer from {hours}./Open {hours}./' shop-helper/templates/en.yaml
for _ in $(seq 1 300); do kill -0 $watch_pid 2>/dev/null || break; sleep 0.2; done
kill -0 $watch_pid 2>/dev/null && fail "--watch --runs 2 did not stop"
wait $watch_pid
rc=$?
[ $rc -eq 1 ] || { cat watch.out; fail "the second run failed, exit must be 1, got $rc"; }
grep -q "^change in shop-helper: running the specs again" watch.out || { cat watch.out; fail "no rerun"; }
grep -q "^1 passed, 1 failed" watch.out || { cat watch.out; fail "the second run's result"; }
echo "ok: new bot passes lint, test, --faults --cut, config check; --watch reran on a change"
