#!/bin/sh
# Tests of the bot author's workbench: `parley test`, `parley chat` and
# `parley config check`, run as a user runs them.
# usage: workbench.sh MODE PARLEY_BIN SOURCE_DIR
set -u
mode=$1
P=$2
SRC=$3
HERE=$SRC/tests/workbench
TMP=$(mktemp -d /tmp/parley-wb-XXXXXX)
pids=""
cleanup() {
  for p in $pids; do kill "$p" 2>/dev/null; done
  for p in $pids; do wait "$p" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
fail() { echo "FAIL: $*"; exit 1; }

# Starts `parley gateway` on an ephemeral port with the handoff bot, a
# customer and an agent, and `parley run bots/handoff` against it.
start_system() {
  cat > "$TMP/gw.yaml" <<YAML
listen: 127.0.0.1
port: 0
data_dir: $TMP/data
bot: handoff
principals:
  - {name: handoff, role: bot, token: bot-token}
  - {name: alice, role: customer, token: cust-token}
  - {name: agent-1, role: agent, token: agent-token, queues: [support]}
YAML
  "$P" gateway --config "$TMP/gw.yaml" > "$TMP/gw.out" 2> "$TMP/gw.err" &
  pids="$pids $!"
  i=0
  while ! grep -q "listening on" "$TMP/gw.out" 2>/dev/null; do
    i=$((i + 1)); [ $i -gt 100 ] && fail "gateway did not start: $(cat "$TMP/gw.err")"
    sleep 0.1
  done
  PORT=$(sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$TMP/gw.out" | head -1)
  URL=ws://127.0.0.1:$PORT/
  "$P" run "$SRC/bots/handoff" --url "$URL" --token bot-token > "$TMP/bot.out" 2> "$TMP/bot.err" &
  pids="$pids $!"
}

case $mode in
test-pass)
  out=$("$P" test "$SRC/bots/faq" 2>&1); rc=$?
  echo "$out"
  [ $rc -eq 0 ] || fail "exit $rc"
  echo "$out" | tail -1 | grep -Eq '^[1-9][0-9]* passed, 0 failed$' || fail "summary"
  [ "$(echo "$out" | grep -c '^PASS ')" -eq "$(echo "$out" | tail -1 | cut -d' ' -f1)" ] || fail "count"
  ;;
test-fail)
  out=$("$P" test "$HERE/failing-bot" 2>&1); rc=$?
  echo "$out"
  [ $rc -eq 1 ] || fail "exit $rc, expected 1"
  [ "$(echo "$out" | tail -1)" = "1 passed, 1 failed" ] || fail "summary"
  echo "$out" | grep -q '^FAIL .*echo.yaml:9: greets back: step 1 (line 11): no reply equal to "Hello to you too"' || fail "failure line"
  echo "$out" | grep -Eq '^ +expected +\| actual$' || fail "no side-by-side header"
  echo "$out" | grep -Eq '^ +>> send: "hello" +\| >> send: "hello"$' || fail "failing step not marked"
  echo "$out" | grep -Eq '^ +reply: "Hello to you too" +\| ' || fail "expected column"
  echo "$out" | grep -Eq '\| bot: "You said: hello"$' || fail "actual column"
  # One file given on the command line runs only that file.
  out=$("$P" test "$HERE/failing-bot" "$HERE/failing-bot/spec/echo.yaml" 2>&1)
  [ "$(echo "$out" | tail -1)" = "1 passed, 1 failed" ] || fail "explicit file"
  ;;
test-faults)
  out=$("$P" test "$SRC/bots/faq" --faults --seed 7 2>&1); rc=$?
  echo "$out"
  [ $rc -eq 0 ] || fail "exit $rc"
  echo "$out" | grep -q '\[faults\]' || fail "no fault round"
  echo "$out" | grep -Eq '^-- faults: [1-9][0-9]* bot kills' || fail "no bot was killed"
  echo "$out" | tail -1 | grep -Eq '^[1-9][0-9]* passed, 0 failed$' || fail "summary"
  ;;
chat-customer)
  start_system
  out=$(printf 'hello\nwhen are you open?\n' |
        "$P" chat --url "$URL" --token cust-token --principal alice --conversation wb-c1 2>"$TMP/chat.err"); rc=$?
  echo "$out"; cat "$TMP/chat.err"
  [ $rc -eq 0 ] || fail "exit $rc"
  echo "$out" | grep -qx "handoff: Hi! I'm the support bot. How can I help?" || fail "greeting"
  echo "$out" | grep -qx "handoff: We're open Monday to Friday, 9:00 to 18:00." || fail "answer"
  # Each reply once.
  [ "$(echo "$out" | grep -c "We're open")" -eq 1 ] || fail "reply not exactly once"
  # An event of the customer's other conversation reaches this console too:
  # it is shown under its conversation's name, not acknowledged unseen.
  (sleep 1; printf 'when are you open?\n' | "$P" chat --url "$URL" --token cust-token --principal alice \
     --conversation wb-other > /dev/null 2>&1) &
  out=$(printf 'hello\n' | "$P" chat --url "$URL" --token cust-token --principal alice \
        --conversation wb-c1b --replies 3 --wait 10000 2>&1)
  wait $!
  echo "$out"
  echo "$out" | grep -qx "\[wb-other\] handoff: We're open Monday to Friday, 9:00 to 18:00." ||
    fail "other conversation's reply not shown"
  # A customer that may not write to the conversation fails.
  printf 'hi\n' | "$P" chat --url "$URL" --token agent-token --principal agent-1 --conversation wb-c1 --wait 1500 \
    > /dev/null 2>&1 && fail "wrong role accepted"
  ;;
chat-agent)
  start_system
  printf 'hello\ncan I talk to a human please\n' |
    "$P" chat --url "$URL" --token cust-token --principal alice --conversation wb-c2 > "$TMP/c1.out" 2>&1 ||
    fail "customer: $(cat "$TMP/c1.out")"
  grep -q "connecting you with a member of our team" "$TMP/c1.out" || fail "no handoff: $(cat "$TMP/c1.out")"
  out=$(printf '/queue\n/take wb-c2\n/reply Hi, this is Agent One. How can I help?\n/quote 3 You said hello\n/tag vip\n/close solved\n' |
        "$P" chat --as agent --url "$URL" --token agent-token --principal agent-1 --queue support 2>"$TMP/agent.err"); rc=$?
  echo "$out"; cat "$TMP/agent.err"
  [ $rc -eq 0 ] || fail "agent exit $rc"
  echo "$out" | grep -Eq '^ +wb-c2 +queue=support customer=alice' || fail "queue listing"
  echo "$out" | grep -Eq '^#[0-9]+ alice: can I talk to a human please$' || fail "history"
  echo "$out" | grep -q 'assigned to agent-1' || fail "take"
  echo "$out" | grep -q 'tags: .*vip' || fail "tag"
  # The transcript has the agent's own messages, the quote on its own line
  # just above the quoting message's numbered line, and no empty tags line.
  echo "$out" | grep -Eq '^#[0-9]+ agent-1: Hi, this is Agent One. How can I help\?$' || fail "own reply not shown"
  echo "$out" | grep -B1 -E '^#[0-9]+ agent-1: You said hello$' | head -1 | grep -Eq '^ +> \(#3\) hello$' ||
    fail "quote misplaced"
  echo "$out" | grep -Eq -- '-- #[0-9]+ tags --' && fail "empty tags line"
  # The customer sees the agent's reply (its history comes again: new device).
  out=$(printf '' | "$P" chat --url "$URL" --token cust-token --principal alice --conversation wb-c2 2>&1)
  echo "$out" | grep -qx "agent-1: Hi, this is Agent One. How can I help?" || fail "customer did not see the reply: $out"
  echo "$out" | grep -Eq '^ +> \(#3\) hello$' || fail "quote excerpt: $out"
  # After the close the customer's send is refused: exit 1.
  printf 'anyone?\n' | "$P" chat --url "$URL" --token cust-token --principal alice --conversation wb-c2 \
    > "$TMP/c3.out" 2>&1 && fail "send to a closed conversation succeeded"
  # An agent command on a conversation it has not taken fails.
  printf '/switch nope\n/reply hi\n' | "$P" chat --as agent --url "$URL" --token agent-token --principal agent-1 \
    > /dev/null 2>&1 && fail "reply without take succeeded"
  ;;
config-check)
  "$P" config check "$HERE/configs/gateway-good.yaml" | grep -qx ok || fail "good gateway config"
  out=$("$P" config check "$HERE/configs/gateway-bad.yaml" 2>&1) && fail "bad gateway config passed"
  echo "$out"
  echo "$out" | grep -q 'gateway-bad.yaml:8: limits.max_frame_bytes: ' || fail "gateway error format"
  "$P" config check "$SRC/bots/faq/bot.yaml" | grep -qx ok || fail "good bot"
  "$P" config check --kind bot "$SRC/bots/faq" | grep -qx ok || fail "good bot folder"
  out=$("$P" config check "$HERE/configs/bad-bot/bot.yaml" 2>&1) && fail "bad bot passed"
  echo "$out"
  echo "$out" | grep -q 'bot.yaml:3: limts: ' || fail "bot error format"
  "$P" config check --kind gateway "$SRC/bots/faq/bot.yaml" > /dev/null 2>&1 && fail "bot.yaml as gateway passed"
  "$P" config check "$HERE/configs/sidecar-good.yaml" | grep -qx ok || fail "good sidecar config"
  out=$("$P" config check "$HERE/configs/sidecar-bad.yaml" 2>&1) && fail "bad sidecar config passed"
  echo "$out"
  echo "$out" | grep -q 'sidecar-bad.yaml:5: shutdown.drain: ' || fail "sidecar error format"
  "$P" config check --kind nonsense "$HERE/configs/gateway-good.yaml" > /dev/null 2>&1
  [ $? -eq 2 ] || fail "unknown kind"
  ;;
test-spec)
  # The clinic bot: deep multi-turn state, `wait: 5m`, replies in order, an
  # agent's quote and tags; over the gateway, then with faults and cuts.
  for args in "" "--faults --seed 1" "--faults --seed 2" "--faults --seed 3" "--cut --seed 4" "--cut --seed 5"; do
    # shellcheck disable=SC2086 # the options are words
    out=$("$P" test $args "$HERE/clinic-bot" 2>&1); rc=$?
    [ $rc -eq 0 ] || { echo "$out"; fail "clinic $args: exit $rc"; }
    echo "$out" | tail -1 | grep -Eq '^[1-9][0-9]* passed, 0 failed$' || { echo "$out"; fail "clinic $args"; }
    echo "ok clinic $args: $(echo "$out" | tail -1)"
  done
  # A misspelt key fails the run with the file, the line and a suggestion,
  # instead of running a different test than the one written.
  mkdir -p "$TMP/typo"
  printf -- '- name: typo\n  lcoale: fr\n  steps:\n    - send: code\n' > "$TMP/typo/t.yaml"
  out=$("$P" test "$HERE/clinic-bot" "$TMP/typo/t.yaml" 2>&1); rc=$?
  echo "$out"
  [ $rc -eq 1 ] || fail "typo: exit $rc"
  echo "$out" | grep -q "t.yaml:2: \[0\].lcoale: unknown key 'lcoale' (did you mean 'locale'?)" || fail "typo message"
  # A state expectation that does not hold names the path and both values.
  printf -- '- name: wrong state\n  steps:\n    - send: book\n      expect:\n        - state: {booking: {patient: {name: AnaSilva}}}\n' > "$TMP/typo/s.yaml"
  out=$("$P" test "$HERE/clinic-bot" "$TMP/typo/s.yaml" 2>&1)
  echo "$out"
  echo "$out" | grep -q 'state.booking.patient.name is "Ana Silva", expected AnaSilva' || fail "state message"
  ;;
chat-replies)
  # A bot that answers after 2 s: piped `parley chat --replies 2` waits for
  # the greeting and the late answer, whatever the pauses.
  cat > "$TMP/gw.yaml" <<YAML
listen: 127.0.0.1
port: 0
data_dir: $TMP/data
bot: slow
principals:
  - {name: slow, role: bot, token: bot-token}
  - {name: alice, role: customer, token: cust-token}
YAML
  "$P" gateway --config "$TMP/gw.yaml" > "$TMP/gw.out" 2> "$TMP/gw.err" &
  pids="$pids $!"
  i=0
  while ! grep -q "listening on" "$TMP/gw.out" 2>/dev/null; do
    i=$((i + 1)); [ $i -gt 100 ] && fail "gateway did not start"
    sleep 0.1
  done
  PORT=$(sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$TMP/gw.out" | head -1)
  URL=ws://127.0.0.1:$PORT/
  "$P" run "$HERE/slow-bot" --url "$URL" --token bot-token > "$TMP/bot.out" 2> "$TMP/bot.err" &
  pids="$pids $!"
  out=$(printf 'are you there\n' | "$P" chat --url "$URL" --token cust-token --principal alice \
        --conversation wb-slow --replies 2 --wait 15000 2>"$TMP/chat.err"); rc=$?
  echo "$out"; cat "$TMP/chat.err"
  [ $rc -eq 0 ] || fail "exit $rc"
  echo "$out" | grep -qx "slow: Later: are you there" || fail "the late reply was not waited for"
  # Out of patience before N replies: exit 1 and say so.
  printf 'again\n' | "$P" chat --url "$URL" --token cust-token --principal alice \
      --conversation wb-slow2 --replies 5 --wait 1000 > /dev/null 2> "$TMP/chat2.err" && fail "too few replies accepted"
  grep -q "of 5 replies after 1000 ms" "$TMP/chat2.err" || fail "no message: $(cat "$TMP/chat2.err")"
  ;;
lint)
  # Warnings for what loads but is likely a mistake; --strict fails on them.
  out=$("$P" lint "$HERE/configs/lint-bot" 2>&1); rc=$?
  echo "$out"
  [ $rc -eq 0 ] || fail "lint without --strict: exit $rc"
  echo "$out" | grep -q "en.yaml:3: items: plural category 'zero' is never selected in en" || fail "plural warning"
  echo "$out" | grep -q "fr.yaml:1: hello: missing in fr; its customers get the en text" || fail "missing key warning"
  echo "$out" | grep -q "jp.yaml:1: file name: 'jp' is not a language code.*did you mean ja.yaml" || fail "file name warning"
  echo "$out" | grep -q "ok, 3 warnings" || fail "summary"
  "$P" lint "$HERE/configs/lint-bot" --strict > /dev/null 2>&1 && fail "--strict passed with warnings"
  "$P" lint "$SRC/bots/faq" --strict | grep -qx "$SRC/bots/faq: ok" || fail "faq has warnings"
  # bot.yaml's template errors name its file, line and key.
  mkdir -p "$TMP/fb/templates"
  printf 'name: fb\ndefault_locale: en\nfallback_reply: oopz\n' > "$TMP/fb/bot.yaml"
  printf 'x: "x"\n' > "$TMP/fb/templates/en.yaml"
  printf 'local bot = parley.bot()\nreturn bot\n' > "$TMP/fb/bot.lua"
  out=$("$P" lint "$TMP/fb" 2>&1) && fail "bad fallback_reply passed"
  echo "$out"
  echo "$out" | grep -q "bot.yaml:3: fallback_reply: no template key 'oopz'" || fail "fallback_reply error"
  printf 'name: fb\ndefault_locale: de\n' > "$TMP/fb/bot.yaml"
  out=$("$P" lint "$TMP/fb" 2>&1) && fail "missing default locale passed"
  echo "$out"
  echo "$out" | grep -q "bot.yaml:2: default_locale: no template file templates/de.yaml" || fail "default locale error"
  ;;
help)
  # `--help` is a request, not a mistake: usage on stdout and exit 0, for
  # every subcommand; a usage error still exits 2 with usage on stderr.
  for cmd in "" run test lint chat config gateway; do
    # shellcheck disable=SC2086 # an empty command is no word
    out=$("$P" $cmd --help 2>/dev/null); rc=$?
    [ $rc -eq 0 ] || fail "parley $cmd --help exits $rc"
    echo "$out" | grep -qi 'usage' || fail "parley $cmd --help prints no usage on stdout"
  done
  for cmd in run test lint chat; do
    "$P" $cmd > /dev/null 2>&1
    [ $? -eq 2 ] || fail "parley $cmd without arguments does not exit 2"
  done
  ;;
*) fail "unknown mode $mode" ;;
esac
echo "ok: $mode"
