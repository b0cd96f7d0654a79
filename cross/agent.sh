# Sourced by cross/build.sh and tests/ota/build-releases.sh (after cross/tools.sh and
# cross/link-extras.sh): the agent's device build, one definition, so that a test release is
# the shipped agent but for its version. Builds target/<triple>/device/baton-agent.
# shellcheck shell=bash
#
# Sized for the smallest boards (issue 14; docs/benchmarks.md, "Agent diet: binary size"):
# - std is compiled from source with the agent (-Z build-std): size-optimised and trimmed by
#   the same LTO as the rest. The 32-bit targets need it anyway (no std on rustup's mirror).
# - panic = "abort", no unwind tables (and on aarch64 no .eh_frame_hdr): no landing pads or
#   tables, about 1.6 MB of the aarch64 agent. A panic prints its message and location, no
#   backtrace. It also made the 32-bit targets' fat LTO affordable: 390 s for the armv7
#   agent from scratch, where with unwinding its LTO had run past 30 min and CI built them
#   without LTO (10.7 MB). The agent survives a panic by design: systemd restarts it
#   (Restart=always), it re-adopts its running containers, and work on hostile input runs
#   under a guard that quarantines the input that panicked (agent/src/crash.rs), so one bad
#   layer cannot crash-loop a node.
# The coordinator keeps unwinding: a panic there fails one request, not the site.
agent_build() { # $1 triple, $2 libseccomp dir; extra cargo arguments follow
  local t=$1 libdir=$2
  shift 2
  local tvar flags args
  tvar=$(echo "$t" | tr 'a-z-' 'A-Z_')
  flags="-C force-unwind-tables=no"
  args=(-Z build-std=std,panic_abort --config 'profile.device.panic="abort"'
        --profile device --locked --target "$t" -p baton-agent --bins "$@")
  case "$t" in
    aarch64-unknown-linux-musl)
      flags+=" -C link-arg=-Wl,--no-eh-frame-hdr"
      echo "cross/agent: RUSTFLAGS=\"$flags\" cargo build ${args[*]}" >&2
      env "CARGO_TARGET_${tvar}_RUSTFLAGS=$flags" RUSTC_BOOTSTRAP=1 \
        LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH="$libdir" cargo build "${args[@]}"
      ;;
    *)
      # Link-time extras on a native search path, for rustc and zig to find:
      # - libatomic.a, empty: some C build scripts ask for -latomic on 32-bit ARM; zig has
      #   no libatomic (its compiler-rt has the __atomic_* functions).
      # - crt1.o, crti.o, crtbegin.o, crtend.o, crtn.o, empty: rustc links musl targets
      #   "self-contained" and names these objects, which rustup's (missing) std for these
      #   targets would have shipped; it looks them up on the native search paths. zig adds
      #   musl's real crt1/crti/crtn itself (two copies clash), and ARM EHABI unwinding needs
      #   no crtbegin/crtend frame registry.
      local atomic="$root/target/cross-deps/$t/empty-libatomic"
      link_extras "$t" "$atomic"
      flags+=" -L native=$atomic"
      echo "cross/agent: RUSTFLAGS=\"$flags\" cargo zigbuild ${args[*]}" >&2
      env "CARGO_TARGET_${tvar}_RUSTFLAGS=$flags" RUSTC_BOOTSTRAP=1 \
        LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH="$libdir" cargo zigbuild "${args[@]}"
      ;;
  esac
}
