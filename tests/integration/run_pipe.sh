#!/usr/bin/env bash
# The main command without a terminal: lines on stdin are customer messages,
# replies go to stdout, and the run ends with exit 0 once everything is
# acknowledged and answered.
set -euo pipefail
PARLEY=$1
SRC=$2

out=$(printf 'how do I reset my password\n' | timeout 60 "$PARLEY" run "$SRC/bots/faq")
echo "$out"
grep -qi "reset your password" <<<"$out" || { echo "FAIL: no password answer"; exit 1; }

# Several lines: one answer each, in order, and nothing after end of input.
out=$(printf 'hello\nhow do I reset my password\n' | timeout 60 "$PARLEY" run "$SRC/bots/faq")
echo "$out"
n=$(grep -ci "reset your password" <<<"$out" || true)
[ "$n" -eq 1 ] || { echo "FAIL: expected exactly one password answer, got $n"; exit 1; }

# The README's ten-line bot.
out=$(printf 'good morning\n' | timeout 60 "$PARLEY" run "$SRC/examples/hello-bot")
echo "$out"
grep -q "You said: good morning" <<<"$out" || { echo "FAIL: README bot did not answer"; exit 1; }

# Empty input: nothing to do, exit 0.
timeout 60 "$PARLEY" run "$SRC/bots/faq" </dev/null
echo "run_pipe: ok"
