#!/bin/sh
# The embedded gateway of `parley run` and `parley test` takes any data
# directory and any valid principal name as they are: a path with a colon,
# quotes and a backslash, a principal starting with '@'. And a run that
# fails while it starts cleans up after itself: its temporary data
# directory is removed, and (under the sanitizer build's leak checker)
# nothing it set up is leaked.
# usage: run_embedded.sh PARLEY_BIN SOURCE_DIR
set -u
P=$1
SRC=$2
TMP=$(mktemp -d /tmp/parley-embedded-XXXXXX)
trap 'rm -rf "$TMP"' EXIT INT TERM
fail() { echo "FAIL: $*"; exit 1; }

# A data directory whose path would break a configuration written as YAML.
ODD="$TMP/a:b \"c\" d\\e"
mkdir -p "$ODD"
out=$(printf 'how do I reset my password\n' | timeout 60 "$P" run "$SRC/bots/faq" --data-dir "$ODD/data" 2> "$TMP/odd.err")
rc=$?
echo "$out"; cat "$TMP/odd.err"
[ $rc -eq 0 ] || fail "--data-dir with a colon and quotes: exit $rc"
echo "$out" | grep -qi "reset your password" || fail "no answer with an odd --data-dir"
[ -f "$ODD/data/gateway.db" ] || fail "the gateway's log is not in the odd --data-dir"

# A principal that YAML would read as a reserved indicator.
out=$(printf 'good morning\n' | timeout 60 "$P" run "$SRC/examples/hello-bot" --principal '@front:desk' 2> "$TMP/at.err")
rc=$?
echo "$out"; cat "$TMP/at.err"
[ $rc -eq 0 ] || fail "--principal @front:desk: exit $rc"
echo "$out" | grep -q "You said: good morning" || fail "no answer as @front:desk"

# parley test with TMPDIR (where its data directory goes) just as odd.
TMPDIR="$ODD" timeout 120 "$P" test "$SRC/bots/faq" > "$TMP/spec.out" 2>&1
rc=$?
cat "$TMP/spec.out"
[ $rc -eq 0 ] || fail "parley test under an odd TMPDIR: exit $rc"
[ -z "$(ls "$ODD" | grep parley-test)" ] || fail "parley test left its data directory"

# A temporary directory that cannot be made: a clear error, exit 1.
TMPDIR="$TMP/missing" timeout 20 "$P" run "$SRC/bots/faq" < /dev/null 2> "$TMP/missing.err"
rc=$?
cat "$TMP/missing.err"
[ $rc -eq 1 ] || fail "missing TMPDIR: exit $rc, expected 1"
grep -q "cannot create a data directory" "$TMP/missing.err" || fail "missing TMPDIR message"
grep -q "ERROR: LeakSanitizer" "$TMP/missing.err" && fail "a failed start leaked"

# A start that fails after the temporary directory was made removes it.
mkdir -p "$TMP/fresh"
TMPDIR="$TMP/fresh" timeout 20 "$P" run "$SRC/bots/faq" --principal 'not a name' < /dev/null 2> "$TMP/bad.err"
rc=$?
cat "$TMP/bad.err"
[ $rc -eq 1 ] || fail "invalid principal: exit $rc, expected 1"
grep -q "is not a principal name" "$TMP/bad.err" || fail "invalid principal message"
grep -q "ERROR: LeakSanitizer" "$TMP/bad.err" && fail "a failed start leaked"
[ -z "$(ls "$TMP/fresh")" ] || fail "the temporary data directory was left: $(ls "$TMP/fresh")"
echo "run_embedded: ok"
