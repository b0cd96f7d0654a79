#!/usr/bin/env bash
# Runs every test Baton has, on a fresh Debian 12 machine, as root:
# installs what the tests need, checks formatting and lints, builds the binaries and the
# example images, runs unit, integration and end-to-end tests (real broker, registry,
# containers, namespaces, emulated ARM boards under qemu-system), every fuzz target for a
# bounded time, and the static ARM builds (cross/build.sh) with their qemu smoke tests and sizes.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: run as root (containers, cgroups and namespaces need it)" >&2; exit 1; }
scripts/install-deps.sh
# Disk is finite on CI machines (a link once died of SIGBUS on a full disk): show what each
# phase leaves, so the next such failure names its phase.
space() { echo "== $(date +%T) disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free, target/ $(du -sh target 2>/dev/null | cut -f1)"; }

# Emulated Pis (tests/tests/device_*.rs) boot SD card images built by mmdebstrap, mostly
# downloads and foreign maintainer scripts under qemu-user: built in the background while the
# host compiles, cached by their inputs (images/.cache/device). A test that asks for a card
# still being built waits for it (build.sh takes a lock per arch).
skip_devices=${BATON_E2E_SKIP_DEVICES:-0}
boards=()
for b in arm64 armhf; do
  [ "$skip_devices" = 1 ] || [[ ",$skip_devices," == *",$b,"* ]] || boards+=("$b")
done
mkdir -p target/ci-logs
# Background builds die with the script, whichever way it ends.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
cards_pid=""
if [ "${#boards[@]}" -gt 0 ]; then
  ( for b in "${boards[@]}"; do nice -n 10 images/device/build.sh "$b" || exit 1; done ) \
    >target/ci-logs/device-images.log 2>&1 &
  cards_pid=$!
fi
# Waits for a background job; prints its log if it failed.
await() { # pid log what
  [ -n "$1" ] || return 0
  if wait "$1"; then echo "== $3: done"; else
    echo "== $3 FAILED; its log ($2):"; cat "$2"; return 1; fi
}

echo "== fmt and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The example images' programs are their own small workspace (images/apps).
(cd images/apps && cargo fmt --all -- --check && cargo clippy --all-targets --locked -- -D warnings)

space
echo "== build"
cargo build --workspace --bins --locked
images/build.sh >/dev/null
# The previous release's agent (tag v0.1.0) for the version-skew e2e, cached by commit: built
# in target/ itself, where the old tree finds every registry crate already compiled (~1 min; a
# cold build of its own took 9-30 min on 2 cores), then target/debug/baton-agent is this
# source's again; so here, before any test runs.
tests/skew/build-previous.sh --shared-target >/dev/null
# The agent releases the update e2e rolls out (0.2.1 of this source, cached by its tree):
# rebuilds target/debug/baton-agent, so before any test runs.
tests/ota/build-releases.sh

space
# The static ARM builds for every Pi (cross/README.md), checked, smoke-run under qemu-user and
# sized. The aarch64 pair first: the arm64 board and the coordinator-on-a-Pi test boot them.
# The 32-bit ones (std compiled from source: the longest builds) go on in the background
# during the tests that do not need them; the armhf board's test waits for them.
echo "== ARM cross builds"
cross_targets=${BATON_CROSS_TARGETS:-all}
[ "$cross_targets" = all ] &&
  cross_targets="aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf arm-unknown-linux-musleabihf"
read -r -a cross_targets <<<"$cross_targets"
first=() rest=()
for t in "${cross_targets[@]}"; do
  if [ "$t" = aarch64-unknown-linux-musl ]; then first+=("$t"); else rest+=("$t"); fi
done
if [ "${#first[@]}" -gt 0 ]; then
  cross/build.sh "${first[@]}"
  # The aarch64 0.2.1 the arm64 board's update rolls out (tests/src/device_ota.rs): the same
  # cargo invocation but for the version, right after it, so only the agent recompiles.
  tests/ota/build-releases.sh aarch64-unknown-linux-musl >/dev/null
fi
cross_pid=""
if [ "${#rest[@]}" -gt 0 ]; then
  # Niced: the e2e tests beside it have deadlines, the build has none. Then the 32-bit
  # libcontainer patch's own test (third_party/libcontainer), on x86_64 and under qemu-arm;
  # the armhf board runs its armv7 build again, on a real 32-bit ARM kernel.
  ( nice -n 10 cross/build.sh "${rest[@]}" && nice -n 10 cross/test-libcontainer.sh ) \
    >target/ci-logs/cross-32bit.log 2>&1 &
  cross_pid=$!
fi

# The fuzz targets build (release, the whole coordinator and agent again, instrumented) in
# the background too; they run after the tests.
( nice -n 10 scripts/fuzz.sh --build-only ) >target/ci-logs/fuzz-build.log 2>&1 &
fuzz_pid=$!

space
echo "== tests"
# cargo-nextest (.config/nextest.toml): one build of every test, each test in its own process,
# independent e2e files side by side, the emulated boards one at a time and first. The armhf
# board needs the 32-bit agents: it runs after them, in a second pass.
export BATON_E2E_SKIP_DEVICES=$skip_devices
failed=0
second='binary(device_armhf)'
nt=(cargo nextest run --workspace --locked --no-fail-fast --test-threads "${BATON_TEST_THREADS:-4}")
"${nt[@]}" -E "not ($second)" || failed=1
space
await "$cards_pid" target/ci-logs/device-images.log "device card images" || failed=1
await "$cross_pid" target/ci-logs/cross-32bit.log "32-bit ARM cross builds and the patch test" || failed=1
[ -z "$cross_pid" ] || grep -A3 -E '^cross/build: static|^== ' target/ci-logs/cross-32bit.log
tests/bench/sizes.sh || failed=1
# The armhf board alone, after the fuzz targets' release build (longer since the
# coordinator has an etcd client): emulated boards have deadlines, that build has none. In
# one CI run the board's first boot took 2.4x its usual time and its second never came
# online within 6 min, while that build may still have been running beside it.
fuzz_built=0
await "$fuzz_pid" target/ci-logs/fuzz-build.log "fuzz build" && fuzz_built=1
"${nt[@]}" -E "$second" --no-tests=pass || failed=1
[ "$failed" = 0 ]

space
echo "== fuzz (bounded)"
[ "$fuzz_built" = 1 ]
scripts/fuzz.sh "${BATON_FUZZ_SECONDS:-20}"

space
echo "== image recipes"
images/test.sh

space
