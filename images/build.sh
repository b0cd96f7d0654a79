#!/usr/bin/env bash
# Builds Baton's example images (baton/busybox:1, baton/http-echo:1 and :2, and the todo
# app's baton/todo-app:1 and :2 and baton/kv:1), each a linux/amd64 + linux/arm64 image
# index (busybox and http-echo also linux/arm/v7), as OCI layouts under images/out/ (or --out DIR), reproducibly, without Docker.
# With --push HOST:PORT it also pushes them to a plain-HTTP registry (see
# images/registry.sh). Prints every image's index digest.
#
# The todo app's binaries are built here from images/apps (static musl, both targets,
# cached in images/apps/target); the aarch64 one through .cargo/config.toml's cross setup.
#
#   images/build.sh [--out DIR] [--push HOST:PORT]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out="$here/out"
cache="$here/.cache"
push=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --push) push=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

amd64_bin=/bin/busybox
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed"; then
  echo "build.sh: busybox-static is not installed; run scripts/install-deps.sh" >&2
  exit 1
fi
version=$(dpkg-query -W -f='${Version}' busybox-static)

# The arm64 busybox comes from the same Debian version's arm64 package, kept in a cache
# inside the repo so rebuilds are offline and give the same bytes.
mkdir -p "$cache"
# Parallel builds (tests) share the cache: serialize the download, extract privately.
exec 9>"$cache/.lock"
flock 9
deb=""
for f in "$cache"/busybox-static_*_arm64.deb; do
  [ -e "$f" ] && [ "$(dpkg-deb -f "$f" Version)" = "$version" ] && deb=$f
done
if [ -z "$deb" ]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    echo "build.sh: dpkg has no arm64 architecture; run scripts/install-deps.sh" >&2
    exit 1
  fi
  # apt-get download writes into the current directory; run it as _apt can't write here.
  (cd "$cache" && apt-get download -q -o APT::Sandbox::User=root "busybox-static:arm64=$version" >/dev/null)
  for f in "$cache"/busybox-static_*_arm64.deb; do
    [ -e "$f" ] && [ "$(dpkg-deb -f "$f" Version)" = "$version" ] && deb=$f
  done
  [ -n "$deb" ] || { echo "build.sh: could not download busybox-static:arm64=$version" >&2; exit 1; }
fi
# The armhf one (linux/arm/v7, Pi 2/3/4 on a 32-bit OS) the same way, but through a private
# apt (its own sources, lists and cache under $cache/apt-armhf): dpkg gets no armhf
# architecture, since adding a foreign architecture to the host once broke apt for the
# whole suite (every source must then carry its indexes).
find_deb() { # ARCH: the cached busybox-static_*_ARCH.deb of $version, or nothing
  local f
  for f in "$cache"/busybox-static_*_"$1".deb; do
    [ -e "$f" ] && [ "$(dpkg-deb -f "$f" Version)" = "$version" ] && echo "$f"
  done
  true
}
armhf_deb=$(find_deb armhf)
if [ -z "$armhf_deb" ]; then
  apt_dir="$cache/apt-armhf"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/empty"
  : >"$apt_dir/status"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" \
    >"$apt_dir/sources.list"
  apt_opts=(-q -o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts="$apt_dir/empty"
            -o Dir::Etc::Preferences="$apt_dir/empty/p" -o Dir::Etc::PreferencesParts="$apt_dir/empty"
            -o Dir::State::Lists="$apt_dir/lists" -o Dir::State::status="$apt_dir/status"
            -o Dir::Cache="$apt_dir/cache" -o APT::Architecture=armhf -o APT::Architectures=armhf
            -o APT::Sandbox::User=root -o Acquire::Retries=5)
  apt-get "${apt_opts[@]}" update >/dev/null ||
    { echo "build.sh: apt-get update (private, armhf) failed" >&2; exit 1; }
  (cd "$cache" && apt-get "${apt_opts[@]}" download "busybox-static:armhf=$version" >/dev/null) ||
    { echo "build.sh: could not download busybox-static:armhf=$version" >&2; exit 1; }
  rm -rf "$apt_dir"
  armhf_deb=$(find_deb armhf)
  [ -n "$armhf_deb" ] || { echo "build.sh: busybox-static:armhf=$version is not in the cache" >&2; exit 1; }
fi
flock -u 9
scratch=$(mktemp -d "$cache/run.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
dpkg-deb -x "$deb" "$scratch/arm64"
arm64_bin="$scratch/arm64/bin/busybox"
dpkg-deb -x "$armhf_deb" "$scratch/armhf"
armhf_bin="$scratch/armhf/bin/busybox"

# Both binaries come from the same source version and Debian config, so they share one
# applet list; take it from the one we can run.
"$amd64_bin" --list-full > "$scratch/applets"

# The todo app: std-only Rust, so an offline build; cargo's own lock serializes parallel
# runs. The path remap keeps this checkout's location out of the binaries, so other
# checkouts with the same toolchain get the same bytes.
apps="$here/apps"
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  if ! rustup target list --installed 2>/dev/null | grep -qx "$t"; then
    echo "build.sh: Rust target $t is missing; run scripts/install-deps.sh (or rustup target add $t)" >&2
    exit 1
  fi
done
command -v aarch64-linux-gnu-gcc >/dev/null || {
  echo "build.sh: aarch64-linux-gnu-gcc (the aarch64 linker) is missing; run scripts/install-deps.sh" >&2
  exit 1
}
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  (cd "$apps" && CARGO_TARGET_DIR="$apps/target" CARGO_ENCODED_RUSTFLAGS="--remap-path-prefix=$apps=/baton-apps" \
    cargo build --quiet --release --locked --offline --target "$t") \
    || { echo "build.sh: building images/apps for $t failed" >&2; exit 1; }
done

rm -rf "$out"
mkdir -p "$out"
python3 "$here/oci.py" build --out "$out" \
  --busybox-amd64 "$amd64_bin" --busybox-arm64 "$arm64_bin" --busybox-armhf "$armhf_bin" --applets "$scratch/applets" \
  --apps-amd64 "$apps/target/x86_64-unknown-linux-musl/release" \
  --apps-arm64 "$apps/target/aarch64-unknown-linux-musl/release"

if [ -n "$push" ]; then
  python3 "$here/oci.py" push --out "$out" --registry "$push"
fi
