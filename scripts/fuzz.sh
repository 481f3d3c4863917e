#!/bin/sh
# Builds the libFuzzer targets (tests/fuzz) with clang, ASan and UBSan in
# build-fuzz/, runs every saved regression input once, then fuzzes each
# target for N seconds (default 30).
#
#   scripts/fuzz.sh [SECONDS]
#
# Environment: PARLEY_FUZZ_BUILD (build directory, default build-fuzz),
# PARLEY_FUZZ_TARGETS (space-separated subset of target names).
#
# Exits non-zero when a target fails to build or any input crashes, leaks,
# hangs or runs out of memory; crash inputs are kept in
# $PARLEY_FUZZ_BUILD/fuzz-artifacts/ with the command that reproduces them.
# Total time is bounded: the build, plus about SECONDS + 10 per target.
set -u

secs=${1:-30}
case $secs in
'' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
build=${PARLEY_FUZZ_BUILD:-$root/build-fuzz}
artifacts=$build/fuzz-artifacts

if ! command -v clang >/dev/null 2>&1; then
  echo "fuzz.sh: clang is required (apt-get install clang libclang-rt-dev)" >&2
  exit 2
fi

mkdir -p "$build"
CC=clang cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
  -DPARLEY_FUZZ=ON >"$build/fuzz-configure.log" 2>&1 || {
  cat "$build/fuzz-configure.log" >&2
  echo "fuzz.sh: configure failed" >&2
  exit 2
}
manifest=$build/tests/fuzz/fuzz_targets.txt
if [ ! -f "$manifest" ]; then
  echo "fuzz.sh: $manifest missing: is tests/fuzz/CMakeLists.txt there?" >&2
  exit 2
fi

targets=${PARLEY_FUZZ_TARGETS:-$(cut -d'|' -f1 "$manifest" | tr '\n' ' ')}
# shellcheck disable=SC2086 # one word per target
cmake --build "$build" -j2 --target $targets || {
  echo "fuzz.sh: build failed" >&2
  exit 2
}

mkdir -p "$artifacts"
failed=""
for t in $targets; do
  line=$(grep "^$t|" "$manifest") || { echo "fuzz.sh: unknown target $t" >&2; exit 2; }
  bin=$(echo "$line" | cut -d'|' -f2)
  corpus=$(echo "$line" | cut -d'|' -f3)
  regress=$(echo "$line" | cut -d'|' -f4)
  flags=$(echo "$line" | cut -d'|' -f5)
  echo "=== $t: regression inputs"
  # shellcheck disable=SC2086 # flags are separate words
  if ! timeout 120 "$root/tests/fuzz/run_target.sh" regress "$bin" "$corpus" "$regress" 0 \
      $flags >"$artifacts/$t.regress.log" 2>&1; then
    tail -40 "$artifacts/$t.regress.log"
    echo "=== $t: REGRESSION FAILED (log: $artifacts/$t.regress.log)"
    failed="$failed $t(regressions)"
  fi
  echo "=== $t: fuzzing ${secs}s"
  # shellcheck disable=SC2086
  if ! FUZZ_ARTIFACT_DIR=$artifacts timeout $((secs + 60)) \
      "$root/tests/fuzz/run_target.sh" fuzz "$bin" "$corpus" "$regress" "$secs" $flags \
      >"$artifacts/$t.fuzz.log" 2>&1; then
    tail -60 "$artifacts/$t.fuzz.log"
    echo "=== $t: FUZZING FOUND A FAILURE (log: $artifacts/$t.fuzz.log)"
    failed="$failed $t(fuzzing)"
  else
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$artifacts/$t.fuzz.log"
  fi
done

if [ -n "$failed" ]; then
  echo "fuzz.sh: failures in:$failed"
  exit 1
fi
echo "fuzz.sh: all targets clean"
