#!/usr/bin/env bash
# Builds the static, stripped binaries for every Raspberry Pi target on x86_64, without Docker,
# checks each is static and runs it under qemu-user, and prints their sizes (cross/README.md):
#
#   target/cross/aarch64-unknown-linux-musl/{baton-agent,baton}      Pi 3/4/5, Zero 2 (64-bit OS)
#   target/cross/armv7-unknown-linux-musleabihf/baton-agent          Pi 2/3/4 on a 32-bit OS
#   target/cross/arm-unknown-linux-musleabihf/baton-agent            Pi 1, Zero, Zero W (ARMv6)
#
#   cross/build.sh [TRIPLE...]      default: all three
#   BATON_CROSS_COORDINATOR32=1 cross/build.sh armv7-unknown-linux-musleabihf
#                                   also the armv7 coordinator (not built by CI)
#
# Every agent has the `seccomp` feature, with a libseccomp built for musl (cross/libseccomp.sh),
# and is built by cross/agent.sh (std from source, abort on panic: sized for small boards).
# aarch64 links with Debian's cross gcc (the coordinator with rustup's std); the 32-bit
# targets have no std on rustup's mirror, so std is compiled from rust-src (-Z build-std)
# and zig links them (cargo-zigbuild). A target whose inputs (sources, Cargo.lock, these scripts, toolchain) did
# not change since its last build is not rebuilt, only checked again.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ALL=(aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf arm-unknown-linux-musleabihf)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${ALL[@]}"); fi
PROFILE=device # Cargo.toml: size-tuned release, stripped
tdir=${CARGO_TARGET_DIR:-$root/target}

# The coordinator (baton) is for boards that host a site: a Pi 3/4/5 on a 64-bit OS. The
# armv7 one is opt-in: with std compiled from source it was most of the 32-bit builds'
# 52 min, on CI's critical path (the armhf board waits for them), for a binary that was
# only ever smoke-run.
bins_for() {
  case "$1" in
    arm-unknown-linux-musleabihf) echo "baton-agent" ;;
    armv7-unknown-linux-musleabihf)
      if [ "${BATON_CROSS_COORDINATOR32:-0}" = 1 ]; then echo "baton-agent baton"; else echo "baton-agent"; fi ;;
    aarch64-unknown-linux-musl) echo "baton-agent baton" ;;
    *) echo "cross/build: unknown target $1 (known: ${ALL[*]})" >&2; return 1 ;;
  esac
}
all_present() { local d=$1; shift; for b; do [ -f "$d/$b" ] || return 1; done; }
qemu_for() { case "$1" in aarch64-*) echo qemu-aarch64-static ;; *) echo qemu-arm-static ;; esac; }

# System packages (cross gcc, musl headers, qemu-user, gperf for libseccomp, pip for zig).
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in gcc-aarch64-linux-gnu qemu-user-static linux-libc-dev-arm64-cross musl-dev:arm64 gperf \
         make python3-pip binutils; do
  have_pkg "$p" || { echo "cross/build: $p is missing, running scripts/install-deps.sh"; \
                     "$root/scripts/install-deps.sh"; break; }
done
rustup target list --installed | grep -qx aarch64-unknown-linux-musl ||
  rustup target add aarch64-unknown-linux-musl
rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src
# shellcheck source=cross/tools.sh
. "$root/cross/tools.sh"
# shellcheck source=cross/link-extras.sh
. "$root/cross/link-extras.sh"
# shellcheck source=cross/agent.sh
. "$root/cross/agent.sh"

# What a build depends on; a change to any of it rebuilds every target. Docs (*.md) are not.
inputs_hash() {
  {
    rustc -vV; zig version; cargo-zigbuild --version
    git ls-files -co --exclude-standard -- Cargo.toml Cargo.lock .cargo proto link agent \
      coordinator third_party cross | grep -v '^cross/libcontainer-32bit/' | grep -v '\.md$' | sort |
      while read -r f; do [ -f "$f" ] && sha256sum "$f"; done
  } | sha256sum | cut -c1-16
}
hash=$(inputs_hash)

declare -A took
for t in "${targets[@]}"; do
  read -r -a bins <<<"$(bins_for "$t")"
  out="$root/target/cross/$t"
  stamp="$out/.inputs"
  # One build of a target at a time: a board test asking for its binaries while CI's
  # background build makes them waits here, then finds them cached.
  mkdir -p "$root/target/cross"
  exec {lock}>"$root/target/cross/.lock-$t"
  flock "$lock"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ] && all_present "$out" "${bins[@]}"; then
    echo "cross/build: $t: inputs unchanged ($hash), not rebuilt"
    took[$t]="cached"
  else
    libdir=$("$root/cross/libseccomp.sh" "$t")
    pkgs=(baton-agent)
    [ "${#bins[@]}" -gt 1 ] && pkgs+=(baton-coordinator)
    start=$(date +%s)
    # One cargo invocation per package, in one target dir: built together, cargo unifies
    # their features, and the coordinator's (hyper's HTTP/2 for the etcd client, its
    # server) went into the agent, 0.6-1 MB over its size bound. Shared dependencies with
    # the same features are still built once.
    for pkg in "${pkgs[@]}"; do
    if [ "$pkg" = baton-agent ]; then
      agent_build "$t" "$libdir"
      continue
    fi
    args=(--profile "$PROFILE" --locked --target "$t" -p "$pkg" --bins)
    case "$t" in
      aarch64-unknown-linux-musl)
        echo "cross/build: cargo build ${args[*]}"
        LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH="$libdir" cargo build "${args[@]}"
        ;;
      *)
        # The opt-in armv7 coordinator: std from source and zig, as the agent (cross/agent.sh),
        # but unwinding.
        atomic="$root/target/cross-deps/$t/empty-libatomic"
        link_extras "$t" "$atomic"
        tvar=$(echo "$t" | tr 'a-z-' 'A-Z_')
        lto=(--config 'profile.device.lto=false' --config 'profile.device.codegen-units=16')
        echo "cross/build: cargo zigbuild -Z build-std=std,panic_abort ${lto[*]} ${args[*]}"
        env "CARGO_TARGET_${tvar}_RUSTFLAGS=-L native=$atomic" RUSTC_BOOTSTRAP=1 \
          LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH="$libdir" \
          cargo zigbuild -Z build-std=std,panic_abort "${lto[@]}" "${args[@]}"
        ;;
    esac
    done
    took[$t]="$(($(date +%s) - start)) s"
    mkdir -p "$out"
    rm -f "$stamp"
    for b in "${bins[@]}"; do cp "$tdir/$t/$PROFILE/$b" "$out/$b.tmp" && mv "$out/$b.tmp" "$out/$b"; done
    echo "$hash" >"$stamp"
  fi
  exec {lock}>&-
done

# Checks: static (no program interpreter) and runs: `--version` prints "<name> <semver>".
fail=0
summary=()
for t in "${targets[@]}"; do
  read -r -a bins <<<"$(bins_for "$t")"
  for b in "${bins[@]}"; do
    f="$root/target/cross/$t/$b"
    if readelf -lW "$f" | grep -q "Requesting program interpreter"; then
      echo "cross/build: FAIL: $f is dynamically linked" >&2; fail=1; continue
    fi
    if readelf -SW "$f" | grep -q '\.debug_\|\.symtab'; then
      echo "cross/build: FAIL: $f is not stripped" >&2; fail=1; continue
    fi
    set +e
    v=$("$(qemu_for "$t")" "$f" --version 2>&1)
    rc=$?
    set -e
    if [ "$rc" -ne 0 ] || ! printf '%s\n' "$v" |
        grep -Eq "^$b [0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]*)?$"; then
      echo "cross/build: FAIL: $(qemu_for "$t") $f --version exited $rc: $v" >&2; fail=1; continue
    fi
    summary+=("$(printf '%-32s %-12s %10s B  %-22s build %s' "$t" "$b" "$(stat -c %s "$f")" "$v" "${took[$t]}")")
  done
done
echo "cross/build: static, stripped, ran under qemu-user:"
for l in "${summary[@]}"; do echo "  $l"; done
exit "$fail"
