#!/usr/bin/env bash
# The include check must fail on a forbidden include, not only pass on a
# clean tree: copy the checked folders and the rules page to a temporary
# tree, add one include per kind of violation, and expect each to be named.
set -euo pipefail
SRC=$1
tmp=$(mktemp -d /tmp/parley-layers-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/docs"
cp "$SRC/docs/internals.md" "$tmp/docs/"
for d in sdk lua gateway cli examples proto; do cp -r "$SRC/$d" "$tmp/$d"; done
check() { python3 "$SRC/tests/layers/check_includes.py" "$tmp"; }

check >/dev/null  # the copy itself is clean

expect_fail() {  # file, line to add, text the report must contain
  cp "$tmp/$1" "$tmp/$1.orig"
  printf '%s\n' "$2" >> "$tmp/$1"
  out=$(check) && { echo "not caught: $2 in $1"; exit 1; }
  grep -qF -- "$3" <<<"$out" || { echo "wrong report for $2 in $1:"; echo "$out"; exit 1; }
  mv "$tmp/$1.orig" "$tmp/$1"
}
expect_fail sdk/src/core/engine.c '#include "transport/ws.h"' 'layer core may not include "transport/ws.h" of layer transport'
expect_fail sdk/src/core/inbox.c '#include <parley/client.h>' 'layer core may not include <parley/client.h> of layer public'
expect_fail sdk/src/core/engine.c '#include <uv.h>' 'layer core may not include the external header <uv.h>'
expect_fail gateway/src/router.c '#include "core/engine.h"' 'layer gateway may not include "core/engine.h" of layer core'
expect_fail cli/chat.c '#include "wire/wire.h"' 'layer cli may not include "wire/wire.h" of layer wire'
expect_fail examples/minimal_client.c '#include "util/clock.h"' 'layer examples may not include "util/clock.h" of layer util'
expect_fail lua/src/vm.c '#include "no/such.h"' '"no/such.h" resolves to no file of the tree'
echo "include check catches every forbidden include tried"
