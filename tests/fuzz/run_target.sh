#!/bin/sh
# Runs one libFuzzer target for ctest and scripts/fuzz.sh.
#
#   run_target.sh regress BINARY CORPUS_DIR REGRESSION_DIR 0 [libFuzzer flags...]
#       Runs every seed and every saved regression input once. Fails when
#       any of them crashes, leaks, times out or exceeds the memory limit.
#   run_target.sh fuzz BINARY CORPUS_DIR REGRESSION_DIR SECONDS [flags...]
#       Fuzzes for SECONDS, starting from a copy of the corpus in a
#       temporary directory, so the source tree is never written to. (The
#       regression inputs are not used as seeds: some are deliberately big
#       boundary cases that would slow every run down.) A crash input is
#       copied to $FUZZ_ARTIFACT_DIR (default: the current directory) and
#       its path printed.
#
# Exit status: 0 when nothing was found, non-zero otherwise.
set -u

mode=$1 bin=$2 corpus=$3 regress=$4 secs=$5
shift 5
name=$(basename "$bin")
limits="-rss_limit_mb=512 -timeout=5"

if [ ! -x "$bin" ]; then
  echo "run_target.sh: $bin is not built" >&2
  exit 2
fi

# Targets that need scratch files (fuzz_templates) make them under TMPDIR:
# a private folder removed on exit, even after a crash.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/parley-fuzz.XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT INT TERM
mkdir "$tmp/scratch"
export TMPDIR="$tmp/scratch"

case $mode in
regress)
  # Individual files, not directories: with a directory libFuzzer would
  # start fuzzing instead of running the inputs once.
  files=$(find "$corpus" "$regress" -type f ! -name '*.md' ! -name '.*' 2>/dev/null | sort)
  if [ -z "$files" ]; then
    echo "run_target.sh: no inputs for $name" >&2
    exit 2
  fi
  n=$(echo "$files" | wc -l)
  echo "$name: running $n inputs once"
  # shellcheck disable=SC2086 # word splitting of the flag and file lists is wanted
  "$bin" $limits "$@" $files
  exit $?
  ;;
fuzz)
  mkdir "$tmp/corpus" "$tmp/artifacts"
  cp -R "$corpus/." "$tmp/corpus/" 2>/dev/null
  # A fixed seed makes a run follow the same mutations on every machine: a
  # shorter run explores a prefix of a longer one, so a test run does not
  # fail on something a longer run with the same seed did not find.
  # PARLEY_FUZZ_SEED=0 lets libFuzzer pick one (for exploratory runs).
  seed=${PARLEY_FUZZ_SEED:-1}
  echo "$name: fuzzing for ${secs}s (seed $seed)"
  # shellcheck disable=SC2086
  "$bin" $limits -seed="$seed" -max_total_time="$secs" -print_final_stats=1 \
    -artifact_prefix="$tmp/artifacts/" "$@" "$tmp/corpus"
  rc=$?
  if [ $rc -ne 0 ]; then
    dest=${FUZZ_ARTIFACT_DIR:-$PWD}
    mkdir -p "$dest"
    for f in "$tmp"/artifacts/*; do
      [ -e "$f" ] || continue
      cp "$f" "$dest/$name-$(basename "$f")"
      echo "$name: crash input saved as $dest/$name-$(basename "$f")" >&2
      echo "$name: reproduce with: $bin $dest/$name-$(basename "$f")" >&2
    done
  fi
  exit $rc
  ;;
*)
  echo "usage: run_target.sh regress|fuzz BINARY CORPUS REGRESSIONS SECONDS [flags...]" >&2
  exit 2
  ;;
esac
