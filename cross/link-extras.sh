# Sourced by cross/build.sh and cross/test-libcontainer.sh (after cross/tools.sh): link-time
# extras for the 32-bit ARM musl targets built with -Z build-std and zig; see cross/build.sh.
# shellcheck shell=bash
link_extras() { # $1 triple, $2 directory
  local t=$1 d=$2 o cc
  [ -f "$d/crtn.o" ] && [ -f "$d/libatomic.a" ] && return 0
  mkdir -p "$d"
  read -r -a cc <<<"$(zig_cc_args "$t")"
  zig ar rcs "$d/libatomic.a"
  echo > "$d/empty.c"
  for o in crt1 crti crtbegin crtend crtn; do zig cc "${cc[@]}" -c "$d/empty.c" -o "$d/$o.o"; done
}
