#!/usr/bin/env bash
# Builds a static libseccomp for a musl target with zig's C compiler, from Debian 12's source
# package (the version Debian links into the x86_64 agent), into git-ignored
# target/cross-deps/<triple>/libseccomp-<version>/lib/libseccomp.a. Debian's own libseccomp.a
# is built against glibc and does not link into a musl binary (`__fprintf_chk`).
#
#   cross/libseccomp.sh TRIPLE     prints the lib directory (for LIBSECCOMP_LIB_PATH)
#
# Cached: a rebuild happens only when the version, the triple or this script changes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
triple=${1:?usage: $0 TRIPLE}
# shellcheck source=cross/tools.sh
. "$root/cross/tools.sh"

VERSION=2.5.4
DEB_SRC=libseccomp=2.5.4-1+deb12u1
key=$( (echo "$VERSION $DEB_SRC $triple $ZIG_VERSION"; cat "$0" "$root/cross/tools.sh") | sha256sum | cut -c1-12)
out="$root/target/cross-deps/$triple/libseccomp-$VERSION-$key"
if [ -f "$out/lib/libseccomp.a" ]; then
  echo "$out/lib"
  exit 0
fi

# The source: Debian's source package, fetched with apt through a private deb-src list and
# state directory, so the system's apt configuration is not touched.
src="$root/target/cross-tools/src"
tarball="$src/libseccomp_$VERSION.orig.tar.gz"
if [ ! -f "$tarball" ]; then
  apt="$src/apt"
  mkdir -p "$apt/lists/partial"
  printf '%s\n' "deb-src http://deb.debian.org/debian bookworm main" \
    "deb-src http://deb.debian.org/debian-security bookworm-security main" >"$apt/sources.list"
  opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt/lists" -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  ok=0
  for attempt in 1 2 3; do # a mirror mid-sync can fail an index fetch; try again
    if apt-get "${opts[@]}" update -qq >&2 &&
       (cd "$src" && apt-get "${opts[@]}" source --download-only -qq "$DEB_SRC" >&2); then
      ok=1; break
    fi
    echo "libseccomp: apt-get source failed (attempt $attempt)" >&2; sleep 5
  done
  [ "$ok" = 1 ] || { echo "libseccomp: could not fetch Debian's source package" >&2; exit 1; }
fi

work="$root/target/cross-deps/$triple/build-libseccomp-$VERSION"
rm -rf "$work" && mkdir -p "$work"
tar -xzf "$tarball" -C "$work" --strip-components=1
read -r -a cc_args <<<"$(zig_cc_args "$triple")"
cc="zig cc ${cc_args[*]}"
echo "libseccomp: building $VERSION for $triple with $cc" >&2
(cd "$work" &&
  ./configure -q --host="${cc_args[1]}" --prefix="$out" --enable-static --disable-shared \
    CC="$cc" AR="zig ar" RANLIB="zig ranlib" CFLAGS="-Os" >&2 &&
  make -s -j"$(nproc)" -C src >&2 && make -s -C src install >/dev/null && make -s -C include install >/dev/null)
rm -rf "$work"
test -f "$out/lib/libseccomp.a"
echo "$out/lib"
