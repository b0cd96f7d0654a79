# Sourced by cross/build.sh and cross/test-libcontainer.sh: puts zig and cargo-zigbuild (PyPI)
# on PATH, installed once into git-ignored target/cross-tools/, and defines zig_cc_args.
# shellcheck shell=bash
ZIG_VERSION=0.13.0
ZIGBUILD_VERSION=0.24.1
tools="$root/target/cross-tools"
py="$tools/py-zig$ZIG_VERSION-zb$ZIGBUILD_VERSION"
if [ ! -x "$py/ziglang/zig" ] || [ ! -x "$py/bin/cargo-zigbuild" ]; then
  command -v pip3 >/dev/null 2>&1 || python3 -m pip --version >/dev/null 2>&1 || "$root/scripts/install-deps.sh"
  rm -rf "$py.tmp"
  # --target: a private directory, so Debian's externally-managed Python is left alone.
  python3 -m pip install -q --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
    --target "$py.tmp" "ziglang==$ZIG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION"
  mv "$py.tmp" "$py"
fi
mkdir -p "$tools/bin"
ln -sf "$py/ziglang/zig" "$tools/bin/zig"
ln -sf "$py/bin/cargo-zigbuild" "$tools/bin/cargo-zigbuild"
export PATH="$tools/bin:$PATH"

# zig's C target and CPU for a Rust triple: the same baseline as Rust's target spec, so C code
# (libseccomp) runs wherever the Rust code does.
zig_cc_args() {
  case "$1" in
    aarch64-unknown-linux-musl) echo "-target aarch64-linux-musl -mcpu=generic" ;;
    armv7-unknown-linux-musleabihf) echo "-target arm-linux-musleabihf -mcpu=generic+v7a+vfp3d16+thumb2" ;;
    # ARM1176JZF-S: Pi 1 and Pi Zero (ARMv6, VFPv2, hard float).
    arm-unknown-linux-musleabihf) echo "-target arm-linux-musleabihf -mcpu=arm1176jzf_s" ;;
    *) echo "cross: no zig target for $1" >&2; return 1 ;;
  esac
}
