#!/usr/bin/env bash
# The C examples against a real gateway process: examples/minimal_client
# (libparley only) sends a message as a customer, examples/embed_lua (the
# Lua runtime embedded in a C program) answers it with the FAQ bot, and
# SIGTERM drains it to exit 0.
set -euo pipefail
PARLEY=$1
SRC=$2
EXAMPLES=$3
dir=$(mktemp -d /tmp/parley-examples-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

mkdir -p "$dir/data"
cat > "$dir/gateway.yaml" <<YAML
listen: 127.0.0.1
durability: normal
bot: faq
principals:
  - name: faq
    role: bot
    token_hash: "$("$PARLEY" gateway hash-token faq-token)"
  - name: alice
    role: customer
    token_hash: "$("$PARLEY" gateway hash-token alice-token)"
YAML
"$PARLEY" gateway --config "$dir/gateway.yaml" --data-dir "$dir/data" --port 0 \
  > "$dir/gw.out" 2> "$dir/gw.err" &
pids+=($!)
port=""
for _ in $(seq 100); do
  port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$dir/gw.out")
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { cat "$dir/gw.err"; echo "FAIL: gateway did not start"; exit 1; }
url="ws://127.0.0.1:$port/"

"$EXAMPLES/embed_lua" "$SRC/bots/faq" "$url" faq-token 2> "$dir/bot.err" &
bot=$!
pids+=($bot)

# The first message opens the conversation: the first reply is the greeting.
out=$(timeout 30 "$EXAMPLES/minimal_client" "$url" alice-token alice ex-1 hi 2>&1) ||
  { echo "$out"; echo "FAIL: minimal_client (open)"; exit 1; }
echo "$out"
out=$(timeout 30 "$EXAMPLES/minimal_client" "$url" alice-token alice ex-1 \
  "how do I reset my password" 2>&1) || { echo "$out"; echo "FAIL: minimal_client"; exit 1; }
echo "$out"
grep -q "reset your password" <<<"$out" || { echo "FAIL: no FAQ answer"; exit 1; }

kill -TERM "$bot"
rc=0
wait "$bot" || rc=$?
[ "$rc" -eq 0 ] || { cat "$dir/bot.err"; echo "FAIL: embed_lua exited $rc on SIGTERM"; exit 1; }
# The Kubernetes example's sidecar.yaml (inside its ConfigMap) is a valid
# sidecar config.
sed -n '/^  sidecar.yaml: |$/,/^---$/p' "$SRC/examples/kubernetes/parley-sidecar.yaml" |
  sed -e '1d' -e '/^---$/d' -e 's/^    //' > "$dir/k8s-sidecar.yaml"
grep -q 'token_env: PARLEY_BOT_TOKEN' "$dir/k8s-sidecar.yaml" || { echo "FAIL: extract"; exit 1; }
"$PARLEY" config check --kind sidecar "$dir/k8s-sidecar.yaml" | grep -qx ok ||
  { echo "FAIL: the Kubernetes example's sidecar.yaml"; exit 1; }
echo "examples: ok"
