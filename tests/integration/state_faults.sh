#!/usr/bin/env bash
# Multi-turn state under faults: the clinic bot's spec, where every step
# reads what the steps before it committed, under `parley test --faults
# --cut` (the bot killed mid-handler, its connection and the customer's cut)
# over many seeds. A commit that loses or rewinds ctx.state fails a step.
# Usage: state_faults.sh <parley binary> <source dir> [seeds] [parallel] [bot]
# (bot: a folder of bots/, clinic by default; appointments is the same
# booking as a dialog).
set -uo pipefail
PARLEY=$1
SRC=$2
SEEDS=${3:-12}
PAR=${4:-4}
BOT=${5:-clinic}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run_seed() {
  if "$PARLEY" test --faults --cut --seed "$1" "$SRC/bots/$BOT" >"$out/$1.log" 2>&1; then
    echo "ok   seed $1: $(tail -1 "$out/$1.log")"
  else
    echo "FAIL seed $1"
    sed 's/^/    | /' "$out/$1.log"
    return 1
  fi
}
export -f run_seed
export PARLEY SRC BOT out
fail=0
seq 1 "$SEEDS" | xargs -P "$PAR" -I{} bash -c 'run_seed {}' || fail=1
passed=$(grep -l "^[1-9][0-9]* passed, 0 failed" "$out"/*.log 2>/dev/null | wc -l)
echo "$passed passed, $((SEEDS - passed)) failed"
[ "$fail" -eq 0 ] && [ "$passed" -eq "$SEEDS" ]
