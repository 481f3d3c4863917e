#!/usr/bin/env bash
# Every shipped bot's spec, end to end over the real protocol and the real
# gateway (parley test), then again with faults: the bot runtime killed in
# the middle of handlers and the customer reconnecting, with two seeds, and
# once with --cut (connections cut at random moments too).
set -euo pipefail
PARLEY=$1
SRC=$2
fail=0
for bot in faq order-status triage handoff appointments; do
  for args in "" "--faults --seed 1" "--faults --seed 2" "--cut --seed 3"; do
    # shellcheck disable=SC2086 # the options are words
    if out=$("$PARLEY" test $args "$SRC/bots/$bot" 2>&1); then
      echo "ok   $bot $args: $(tail -1 <<<"$out")"
    else
      echo "FAIL $bot $args"
      echo "$out"
      fail=1
    fi
  done
done
exit $fail
