#!/usr/bin/env bash
# Behaviour test of third_party/libcontainer/32bit.patch (see its README.md): builds
# cross/libcontainer-32bit for this machine and for armv7-unknown-linux-musleabihf, and runs both
# (the ARM one under qemu-arm-static, or natively on a 32-bit ARM machine).
#
#   cross/test-libcontainer.sh            build and run both
#   cross/test-libcontainer.sh --build    build only; prints the armv7 binary's path (to copy
#                                         into a 32-bit VM and run there)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build_only=0
[ "${1:-}" = --build ] && build_only=1
t=armv7-unknown-linux-musleabihf
crate="$root/cross/libcontainer-32bit"
export CARGO_TARGET_DIR="$root/target/libcontainer-32bit"

rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src
# shellcheck source=cross/tools.sh
. "$root/cross/tools.sh"
# shellcheck source=cross/link-extras.sh
. "$root/cross/link-extras.sh"
extras="$root/target/cross-deps/$t/empty-libatomic"
link_extras "$t" "$extras"
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_RUSTFLAGS="-L native=$extras"

(cd "$crate" && cargo build --locked)
# No rustup std for this target (cross/README.md): std from rust-src, zig links.
(cd "$crate" && RUSTC_BOOTSTRAP=1 cargo zigbuild --locked -Z build-std=std,panic_abort --target "$t")
host_bin="$CARGO_TARGET_DIR/debug/libcontainer-32bit-test"
arm_bin="$CARGO_TARGET_DIR/$t/debug/libcontainer-32bit-test"
if [ "$build_only" = 1 ]; then
  echo "$arm_bin"
  exit 0
fi

echo "== $(uname -m), native"
"$host_bin"
echo "== $t, qemu-arm-static"
if [ "$(uname -m)" = armv7l ]; then "$arm_bin"; else qemu-arm-static "$arm_bin"; fi
