#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for a bounded time each, with libFuzzer via
# cargo-fuzz, and fails if any target finds a crash. cargo-fuzz is installed into .tools/
# in the repo (nothing cached outside it). libFuzzer needs nightly-only compiler flags;
# RUSTC_BOOTSTRAP=1 lets the one stable toolchain here accept them.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     # default 30
set -euo pipefail
cd "$(dirname "$0")/.."
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
# build time and little else; panics and aborts are what libFuzzer reports.
cargo fuzz build --sanitizer none --release $targets >/dev/null 2>&1 || cargo fuzz build --sanitizer none --release
for t in $targets; do
  echo "== fuzz $t for ${secs}s"
  log=$(mktemp)
  if ! cargo fuzz run --sanitizer none --release "$t" "corpus/$t" -- \
      -max_total_time="$secs" -max_len=65536 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "scripts/fuzz.sh: $t failed; the input is under fuzz/artifacts/$t" >&2
    exit 1
  fi
  grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "$log" | tail -2
  rm -f "$log"
done
