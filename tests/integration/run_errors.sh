#!/bin/sh
# Errors a user can act on, from `parley run` against a real `parley
# gateway` process: a refused token stops the run naming the principal, an
# http:// URL says which scheme is expected, an unreachable gateway is named
# with its cause once (not ten lines a second), a gateway whose port is
# taken says so and frees what it opened, a server that is no gateway
# by the HTTP status of the upgrade, --log-format json prints
# only JSON, and customer text cannot forge a log record.
# usage: run_errors.sh PARLEY_BIN SOURCE_DIR
set -u
P=$1
SRC=$2
TMP=$(mktemp -d /tmp/parley-runerr-XXXXXX)
GW=""
cleanup() {
  [ -n "$GW" ] && kill "$GW" 2>/dev/null && wait "$GW" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
fail() { echo "FAIL: $*"; exit 1; }
BOT=$SRC/bots/faq

cat > "$TMP/gw.yaml" <<YAML
listen: 127.0.0.1
port: 0
data_dir: $TMP/data
bot: faq
principals:
  - {name: faq, role: bot, token: bot-token}
YAML
"$P" gateway --config "$TMP/gw.yaml" > "$TMP/gw.out" 2> "$TMP/gw.err" &
GW=$!
i=0
while ! grep -q "listening on" "$TMP/gw.out" 2>/dev/null; do
  i=$((i + 1)); [ $i -gt 100 ] && fail "gateway did not start: $(cat "$TMP/gw.err")"
  sleep 0.1
done
PORT=$(sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$TMP/gw.out" | head -1)
URL=ws://127.0.0.1:$PORT/

# A second gateway on the same port: which address is taken, exit 1, and
# (in the sanitizer build) nothing of the half-started gateway leaked.
sed "s/^port: 0/port: $PORT/; s|data_dir: .*|data_dir: $TMP/data2|" "$TMP/gw.yaml" > "$TMP/gw2.yaml"
timeout 20 "$P" gateway --config "$TMP/gw2.yaml" > /dev/null 2> "$TMP/gw2.err"
rc=$?
cat "$TMP/gw2.err"
[ $rc -eq 1 ] || fail "a port in use: exit $rc, expected 1"
grep -q "cannot listen on 127.0.0.1:$PORT" "$TMP/gw2.err" || fail "a port in use: message"
grep -q "ERROR: LeakSanitizer" "$TMP/gw2.err" && fail "a gateway that could not listen leaked"

# A wrong token: a clear message naming the principal, and exit 1 soon.
timeout 20 "$P" run "$BOT" --url "$URL" --token wrong-token 2> "$TMP/auth.err"
rc=$?
cat "$TMP/auth.err"
[ $rc -eq 1 ] || fail "bad token: exit $rc, expected 1"
grep -q "refused bot principal 'faq': authentication failed" "$TMP/auth.err" || fail "bad token message"
grep -q "wrong-token" "$TMP/auth.err" && fail "the token was logged"
# The gateway logs the refused login: the principal, never the token.
grep -q "refused login of principal 'faq' as bot" "$TMP/gw.err" || fail "gateway did not log the refused login"
grep -q "wrong-token" "$TMP/gw.err" && fail "the gateway logged the token"

# http:// instead of ws://: which scheme is expected.
timeout 10 "$P" run "$BOT" --url "http://127.0.0.1:$PORT/" --token bot-token 2> "$TMP/scheme.err"
rc=$?
cat "$TMP/scheme.err"
[ $rc -ne 0 ] || fail "http:// accepted"
grep -q "scheme must be ws:// or wss://" "$TMP/scheme.err" || fail "scheme message"
# With --log-format json even an error at start is a JSON record.
timeout 10 "$P" run "$BOT" --url "http://127.0.0.1:$PORT/" --token bot-token --log-format json 2> "$TMP/scheme.json"
python3 - "$TMP/scheme.json" <<'PY' || fail "a start error is not JSON: $(cat "$TMP/scheme.json")"
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert lines and all(json.loads(l)["level"] == "error" for l in lines)
PY

# Nothing listens on the port: the URL and the cause, once.
timeout 3 "$P" run "$BOT" --url ws://127.0.0.1:1/ --token bot-token 2> "$TMP/refused.err"
cat "$TMP/refused.err"
grep -q "cannot connect to ws://127.0.0.1:1/: connection refused" "$TMP/refused.err" || fail "refused message"
[ "$(grep -c 'cannot connect' "$TMP/refused.err")" -eq 1 ] || fail "the cause was repeated"

# Two nodes, neither up: each line names the node it is about (not the
# list), and each node's cause is said once however the client rotates.
timeout 4 "$P" run "$BOT" --url ws://127.0.0.1:1/ --url ws://127.0.0.1:2/ --token bot-token \
  2> "$TMP/refused2.err"
cat "$TMP/refused2.err"
grep -q "cannot connect to ws://127.0.0.1:1/: connection refused" "$TMP/refused2.err" ||
  fail "first node's refused message"
grep -q "cannot connect to ws://127.0.0.1:2/: connection refused" "$TMP/refused2.err" ||
  fail "second node's refused message"
grep 'cannot connect' "$TMP/refused2.err" | grep -q ',' && fail "a line names the URL list"
[ "$(grep -c 'cannot connect' "$TMP/refused2.err")" -eq 2 ] || fail "a node's cause was repeated"

# Something listens but is no gateway: the HTTP status of the upgrade.
mkdir -p "$TMP/www"
python3 -m http.server 0 --bind 127.0.0.1 --directory "$TMP/www" > "$TMP/http.out" 2>&1 &
HTTPD=$!
i=0
while ! grep -q "port" "$TMP/http.out" 2>/dev/null; do
  i=$((i + 1)); [ $i -gt 100 ] && { kill $HTTPD; fail "http.server did not start"; }
  sleep 0.1
done
HPORT=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$TMP/http.out" | head -1)
timeout 3 "$P" run "$BOT" --url "ws://127.0.0.1:$HPORT/nowhere" --token bot-token 2> "$TMP/http.err"
kill $HTTPD; wait $HTTPD 2>/dev/null
cat "$TMP/http.err"
grep -q "cannot connect to ws://127.0.0.1:$HPORT/nowhere: the server answered the WebSocket upgrade with HTTP 404" "$TMP/http.err" || fail "upgrade status message"

# --log-format json: every line on stderr is a JSON object, from the
# connection's line to the drain.
timeout 4 "$P" run "$BOT" --url "$URL" --token bot-token --log-format json --log-level debug 2> "$TMP/json.err"
cat "$TMP/json.err"
grep -q '"msg":"connected to ws://127.0.0.1:' "$TMP/json.err" || fail "no line when the bot connects"
python3 - "$TMP/json.err" <<'PY' || fail "a line that is not JSON"
import json, sys
for line in open(sys.argv[1]):
    json.loads(line)
PY

# SIGHUP under --log-format json: the reload is one JSON record, and a
# failed reload (bot.lua broken meanwhile) is logged once, not twice.
cp -r "$BOT" "$TMP/faq"
"$P" run "$TMP/faq" --url "$URL" --token bot-token --log-format json 2> "$TMP/reload.err" &
RUN=$!
i=0
while ! grep -q '"msg":"connected to' "$TMP/reload.err" 2>/dev/null; do
  i=$((i + 1)); [ $i -gt 100 ] && fail "bot did not connect: $(cat "$TMP/reload.err")"
  sleep 0.1
done
kill -HUP $RUN; sleep 1
echo 'this is not Lua (' >> "$TMP/faq/bot.lua"
kill -HUP $RUN; sleep 1
kill -TERM $RUN; wait $RUN
cat "$TMP/reload.err"
python3 - "$TMP/reload.err" <<'PY' || fail "reload lines"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
ok = [r for r in recs if r["msg"].startswith("reloaded")]
bad = [r for r in recs if "reload" in r["msg"] and "failed" in r["msg"]]
assert len(ok) == 1, ok
assert len(bad) == 1 and bad[0]["level"] == "error", bad
PY

# A newline in a customer's message, quoted back by a failing handler, is
# escaped: no line of the log starts with the forged record.
"$P" test "$SRC/tests/integration/logbot" > "$TMP/forge.out" 2> "$TMP/forge.err"
rc=$?
cat "$TMP/forge.out" "$TMP/forge.err"
[ $rc -eq 0 ] || fail "logbot spec: exit $rc"
grep -q 'handler failed' "$TMP/forge.err" || fail "the handler failure was not logged"
grep -Eq '^(2026-01-01T00:00:00.000Z|\{"level")' "$TMP/forge.err" && fail "customer text forged a log record"
echo "ok"
