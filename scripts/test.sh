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

echo "== fmt and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The example images' programs are their own small workspace (images/apps).
(cd images/apps && cargo fmt --all -- --check && cargo clippy --all-targets --locked -- -D warnings)

space
echo "== build"
cargo build --workspace --bins --locked
images/build.sh >/dev/null

space
# Before the tests: the emulated-Pi e2e tests (tests/tests/device_*.rs) boot these binaries.
# CI builds the aarch64 ones (agent and coordinator) and boots the arm64 board; the 32-bit
# builds and the armhf board are run by hand (every target:
# `BATON_CROSS_TARGETS=all BATON_E2E_SKIP_DEVICES=0 scripts/test.sh`) until their CI time is
# measured on a quiet machine.
echo "== ARM cross builds and their sizes"
cross_targets=${BATON_CROSS_TARGETS:-aarch64-unknown-linux-musl}
[ "$cross_targets" = all ] && cross_targets=""
# shellcheck disable=SC2086 # a list of target triples
cross/build.sh $cross_targets
tests/bench/sizes.sh
export BATON_E2E_SKIP_DEVICES=${BATON_E2E_SKIP_DEVICES:-armhf}

space
echo "== tests"
# Real-container and real-network tests use unique names, so they may run in parallel. The
# agent's own tests clone containers off the test process, whose threads must not start or
# end meanwhile (docs/architecture.md, the agent's clone-safety invariant): one at a time.
failed=0
cargo test --workspace --exclude baton-agent --locked --no-fail-fast -- --test-threads "${BATON_TEST_THREADS:-4}" || failed=1
cargo test -p baton-agent --locked --no-fail-fast -- --test-threads 1 || failed=1
[ "$failed" = 0 ]

space
echo "== fuzz (bounded)"
scripts/fuzz.sh "${BATON_FUZZ_SECONDS:-20}"

space
echo "== image recipes"
images/test.sh

space
