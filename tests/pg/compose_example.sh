#!/usr/bin/env bash
# examples/compose/compose.yaml, checked and run: its gateway and sidecar
# configurations are extracted and, against the real PostgreSQL that
# with_pg started (PARLEY_TEST_PG_URL), two `parley gateway` processes run
# the gateway configuration and the echo bot runs under the sidecar
# configuration with both node URLs. A customer (`parley chat` with both
# URLs) gets its answer through node A; node A is killed with SIGKILL; the
# next message is answered through node B, from the same conversation.
# Only the host names of the Compose network are replaced (an environment
# override for the database, the node URLs in the sidecar's list).
set -euo pipefail
PARLEY=$1
SRC=$2
: "${PARLEY_TEST_PG_URL:?run through with_pg}"
dir=$(mktemp -d /tmp/parley-compose-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

extract() { # the block literal under configs.$1.content
  sed -n "/^  $1:\$/,/^  [a-z]*:\$\|^[a-z]/p" "$SRC/examples/compose/compose.yaml" |
    sed -n '/^    content: |$/,$p' | sed -e '1d' -e '/^  [a-z]*:$/d' -e '/^[a-z]/d' -e 's/^      //'
}
extract gateway > "$dir/gateway.yaml"
extract sidecar > "$dir/sidecar.yaml"
grep -q 'kind: postgres' "$dir/gateway.yaml" || { echo "FAIL: extract gateway"; exit 1; }
grep -q 'gateway-b' "$dir/sidecar.yaml" || { echo "FAIL: extract sidecar"; exit 1; }

export PARLEY_PG_PASSWORD=unused-the-test-server-trusts-loopback
export FAQBOT_TOKEN=faq-token-0123456789
export CUSTOMER_SECRET=customer-secret-0123456789abcdef
"$PARLEY" config check --kind gateway "$dir/gateway.yaml" | grep -qx ok ||
  { echo "FAIL: the Compose example's gateway.yaml"; exit 1; }
"$PARLEY" config check --kind sidecar "$dir/sidecar.yaml" | grep -qx ok ||
  { echo "FAIL: the Compose example's sidecar.yaml"; exit 1; }

# The Compose network's host names become the test server and loopback.
export PARLEY_GATEWAY_STORAGE__URL="$PARLEY_TEST_PG_URL"
export PARLEY_GATEWAY_LISTEN=127.0.0.1
start_gateway() { # $1 name; prints the port
  mkdir -p "$dir/$1"
  "$PARLEY" gateway --config "$dir/gateway.yaml" --data-dir "$dir/$1" --port 0 \
    > "$dir/$1.out" 2> "$dir/$1.err" &
  pids+=($!)
  echo $! > "$dir/$1.pid"
  for _ in $(seq 150); do
    port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$dir/$1.out")
    [ -n "$port" ] && { echo "$port"; return; }
    sleep 0.1
  done
  cat "$dir/$1.err" >&2
  echo "FAIL: gateway $1 did not start" >&2
  exit 1
}
port_a=$(start_gateway a)
port_b=$(start_gateway b)
url_a="ws://127.0.0.1:$port_a/"
url_b="ws://127.0.0.1:$port_b/"

sed -i -e "s#ws://gateway-a:7800/#$url_a#" -e "s#ws://gateway-b:7800/#$url_b#" "$dir/sidecar.yaml"
"$PARLEY" run "$SRC/tests/chaos/echobot" --config "$dir/sidecar.yaml" --ops-port 0 \
  > "$dir/bot.out" 2> "$dir/bot.err" &
pids+=($!)
token=$("$PARLEY" gateway token --secret "$CUSTOMER_SECRET" --principal carol)

chat() { # $1 message; the answer must come within the wait
  echo "$1" | "$PARLEY" chat --url "$url_a" --url "$url_b" --token "$token" --principal carol \
    --conversation compose-1 --wait 15000 > "$dir/chat.out" 2> "$dir/chat.err" || true
  grep -q "echo: $1" "$dir/chat.out" ||
    { cat "$dir/chat.out" "$dir/chat.err" "$dir/bot.err"; echo "FAIL: no answer to '$1'"; exit 1; }
}
sleep 1 # the bot connects
chat first
# Node A dies; the bot and the customer move to node B.
kill -9 "$(cat "$dir/a.pid")"
chat second
echo "compose example: ok"
