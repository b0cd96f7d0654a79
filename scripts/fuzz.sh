#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for a bounded time each, with libFuzzer via
# cargo-fuzz, and fails if any target finds a crash. cargo-fuzz is installed into .tools/
# in the repo (nothing cached outside it). libFuzzer needs nightly-only compiler flags;
# RUSTC_BOOTSTRAP=1 lets the one stable toolchain here accept them.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     # build, then run each target; default 30 s
#   scripts/fuzz.sh --build-only              # scripts/test.sh starts this in the background
set -euo pipefail
cd "$(dirname "$0")/.."
build_only=0
[ "${1:-}" = --build-only ] && { build_only=1; shift; }
secs=${1:-${BATON_FUZZ_SECONDS:-30}}
tools="$PWD/.tools"
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  cargo install --locked --quiet cargo-fuzz@0.13.2 --root "$tools"
fi
export PATH="$tools/bin:$PATH" RUSTC_BOOTSTRAP=1
cd fuzz
targets=$(cargo fuzz list)
# Seeds: the committed ones (golden messages, enrollment bodies) and every example
# manifest. A fresh clone has no directory for a target without committed seeds.
for t in $targets; do mkdir -p "corpus/$t"; done
for f in ../examples/*.yaml; do cp "$f" "corpus/manifest_parse/$(basename "$f")"; done
# No sanitizer: the code under test has no unsafe (denied workspace-wide), so ASan adds
# build time and little else; panics and aborts are what libFuzzer reports. 16 codegen
# units, not cargo-fuzz's 1: the build is the whole coordinator and agent, and one unit made
# it the longest serial step of the suite; runs are bounded by time, not by a count. `run`
# gets the same flags, or it would build again.
flags=(--sanitizer none --release --codegen-units 16)
cargo fuzz build "${flags[@]}"
[ "$build_only" = 1 ] && exit 0
for t in $targets; do
  echo "== fuzz $t for ${secs}s"
  log=$(mktemp)
  if ! cargo fuzz run "${flags[@]}" "$t" "corpus/$t" -- \
      -max_total_time="$secs" -max_len=65536 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "scripts/fuzz.sh: $t failed; the input is under fuzz/artifacts/$t" >&2
    exit 1
  fi
  grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "$log" | tail -2
  rm -f "$log"
done
