#!/bin/sh
# End to end: each bot of bots/ runs in `parley run` against the embedded
# gateway (real WebSocket, real commits), fed by a piped console; the
# replies it prints must include the expected ones.
# Usage: e2e_bots.sh <parley binary> <source dir>
set -u
PARLEY=$1
SRC=$2
fails=0

# expect <bot> <locale> <input lines> <expected text>...
expect() {
  bot=$1 locale=$2 input=$3
  shift 3
  out=$(printf '%b' "$input" | PARLEY_BOT_SETTINGS__BASE_URL=http://127.0.0.1:9 \
        timeout 60 "$PARLEY" run "$SRC/bots/$bot" --locale "$locale" --wait 20000 2>&1)
  for want in "$@"; do
    if ! printf '%s\n' "$out" | grep -qF -- "$want"; then
      echo "FAIL $bot ($locale): missing: $want"
      printf '%s\n' "$out" | sed 's/^/    | /'
      fails=$((fails + 1))
    fi
  done
  echo "ran $bot ($locale)"
}

expect faq en 'how do I reset my password\n' \
  "Hi! I'm the help bot. Ask me a question, or pick one of these:" \
  "To reset your password, open Settings > Security > Reset password, and follow the link we email you."
expect faq es-MX 'olvidé mi contraseña\n' \
  "Para restablecer tu contraseña, abre Ajustes > Seguridad > Restablecer contraseña"
expect faq zh-CN '怎么重置密码\n' "要重置密码，请打开 设置 > 安全 > 重置密码"
expect order-status en 'my order is 123\nmy order is 12345678\n' \
  "Hmm, \"123\" doesn't look like an order number." \
  "Sorry, I can't reach the order system right now."
expect triage en 'I was charged twice\nURGENT fraud on my account\n' \
  "Thanks, I've noted that this is about billing." \
  "I understand this is urgent. I'm passing you to a member of our team right away."
expect handoff es 'quiero hablar con un humano\n' \
  "Te paso con una persona de nuestro equipo. Si nadie te responde en 2 minutos, te avisaré."

if [ "$fails" -ne 0 ]; then
  echo "$fails expectation(s) failed"
  exit 1
fi
echo "all bots answered as expected"
