#!/usr/bin/env bash
# Issue 12's device figures, each as a ratio to a reference measured in the same run
# (docs/benchmarks.md, "Device builds and emulated boards"):
#
#  (a) boot to Ready of the emulated arm64 board vs its boot to userspace without the agent,
#  (b) `baton flash` time per image, vs the same boot to userspace,
#      both from the arm64 device scenario (tests/tests/device_arm64.rs), whose figures line
#      this script parses;
#  (c) container lifecycle (create, start, wait for exit, delete of a busybox `true`) inside
#      the arm64 VM: Baton's runtime (agent/examples/bench_runtime.rs, cross-built for
#      aarch64, with and without the default seccomp filter) vs Debian's runc:arm64, on the
#      same bundle rootfs in the same VM boot. runc's .deb, the bench binary and busybox go
#      onto a copy of the card's boot partition and are unpacked there (dpkg -x): the card's
#      root is Debian's as built. The VM runs bench-guest.sh through systemd.run= and powers
#      off; the host reads the results back from the boot partition.
#
#   tests/bench/device.sh              # (a), (b) and (c); RUNS=20 containers per runtime
#   SKIP_SCENARIO=1 tests/bench/device.sh   # (c) only
#
# Needs root, what the device tests need (cross/build.sh aarch64-unknown-linux-musl,
# images/build.sh, the card: images/device/build.sh arm64), and qemu-system-arm.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
runs=${RUNS:-20}
t=aarch64-unknown-linux-musl
cache="$root/target/bench-cache"
work=$(mktemp -d /tmp/baton-bench-device.XXXXXX)
qemu_pid=""
cleanup() {
  set +e
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$cache"
log() { echo "bench/device: $*" >&2; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }
secs() { # a Rust Duration's Debug ("6.6s", "660.1ms") in seconds
  awk -v d="$1" 'BEGIN { if (d ~ /ms$/) { sub(/ms$/, "", d); print d / 1000 } else if (d ~ /µs$/) { sub(/µs$/, "", d); print d / 1e6 } else { sub(/s$/, "", d); print d + 0 } }'
}
rows=()
row() { rows+=("$(printf '%-58s %14s %8s  %s' "$1" "$2" "$3" "$4")"); }

# --- (a), (b): the device scenario's own figures --------------------------------------------------
if [ "${SKIP_SCENARIO:-0}" != 1 ]; then
  log "running the arm64 device scenario (cargo test -p baton-e2e --test device_arm64)"
  BATON_E2E_SKIP_DEVICES=0 cargo test -q -p baton-e2e --test device_arm64 -- --nocapture \
    >"$work/scenario.log" 2>&1 || { tail -40 "$work/scenario.log" >&2; log "the scenario failed"; exit 1; }
  line=$(grep -E '^device arm64: image ' "$work/scenario.log" | tail -1)
  log "the scenario's figures: $line"
  field() { printf '%s\n' "$line" | sed -nE "s/.*$1 ([0-9.]+(ms|s|µs)).*/\1/p"; }
  flash=$(secs "$(field 'flash')")
  userspace=$(secs "$(field 'first boot: userspace')")
  ready=$(secs "$(field 'second boot')")
  row "boot to userspace, no agent (reference)" "${userspace} s" "1.00" "power-on to systemd's greeting"
  row "boot to Ready, agent installed" "${ready} s" "$(ratio "$ready" "$userspace")" "power-on to Ready in \`baton get nodes\`"
  row "baton flash, one image" "${flash} s" "$(ratio "$flash" "$userspace")" "token minted through the API, FAT writes"
fi

# --- (c): container lifecycle in the arm64 VM ---------------------------------------------------
log "cross-building bench_runtime for $t"
libdir=$(cross/libseccomp.sh "$t")
LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH="$libdir" nice -n 10 \
  cargo build -q --profile device --locked --target "$t" -p baton-agent --example bench_runtime
bench_bin="$root/target/$t/device/examples/bench_runtime"

ver=$(dpkg-query -W -f='${Version}' runc)
runc_deb=$(ls "$cache"/runc_*_arm64.deb 2>/dev/null | head -1 || true)
if [ -z "$runc_deb" ]; then
  (cd "$cache" && apt-get download -qq -o APT::Sandbox::User=root "runc:arm64=$ver" >&2)
  runc_deb=$(ls "$cache"/runc_*_arm64.deb | head -1)
fi
busybox_deb=$(ls images/.cache/busybox-static_*_arm64.deb | head -1)
dpkg-deb -x "$busybox_deb" "$work/busybox"

# One bundle for both runtimes: `runc spec`'s defaults (new network namespace), no terminal,
# /bin/true, as tests/bench/run.sh makes it on x86_64.
mkdir -p "$work/bundle"
(cd "$work/bundle" && runc spec)
python3 - "$work/bundle/config.json" <<'EOF'
import json, sys
path = sys.argv[1]
spec = json.load(open(path))
spec["process"]["terminal"] = False
spec["process"]["args"] = ["/bin/true"]
json.dump(spec, open(path, "w"), indent=2)
EOF

base=$(images/device/build.sh arm64 | tail -1)
card="$work/card.img"
cp --sparse=always "$base" "$card"
off=$(python3 -c 'import sys,struct; m=open(sys.argv[1],"rb").read(512); print(struct.unpack("<I", m[454:458])[0]*512)' "$card")
m() { MTOOLS_SKIP_CHECK=1 "$@"; }
img="$card@@$off"
m mmd -i "$img" ::bench
m mcopy -i "$img" "$bench_bin" ::bench/bench_runtime
m mcopy -i "$img" "$runc_deb" ::bench/runc.deb
m mcopy -i "$img" "$work/busybox/bin/busybox" ::bench/busybox
m mcopy -i "$img" "$work/bundle/config.json" ::bench/config.json
m mcopy -i "$img" "$root/tests/bench/bench-guest.sh" ::bench/bench-guest.sh
echo "$runs" >"$work/runs"
m mcopy -i "$img" "$work/runs" ::bench/runs
cmdline=$(m mtype -i "$img" ::cmdline.txt | head -1)
printf '%s systemd.run=/boot/firmware/bench/bench-guest.sh systemd.run_success_action=poweroff systemd.run_failure_action=poweroff systemd.unit=kernel-command-line.target\n' \
  "$cmdline" >"$work/cmdline.txt"
m mcopy -o -i "$img" "$work/cmdline.txt" ::cmdline.txt
m mtype -i "$img" ::kernel8.img >"$work/kernel"
m mtype -i "$img" ::initramfs8 >"$work/initrd"

# The board as tests/src/vm.rs powers it on.
log "booting the arm64 board: $runs runs of runc, then of Baton's runtime with and without seccomp"
: >"$work/serial.log"
t0=$(date +%s%N)
qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 1024 -nodefaults -no-user-config \
  -display none -no-reboot -chardev "file,id=s0,path=$work/serial.log" -serial chardev:s0 \
  -kernel "$work/kernel" -initrd "$work/initrd" -append "$(cat "$work/cmdline.txt")" \
  -drive "file=$card,format=raw,if=none,id=card,cache=writeback" -device virtio-blk-pci,drive=card \
  -netdev user,id=n0 -device virtio-net-pci,netdev=n0 -device virtio-rng-pci \
  >"$work/qemu.log" 2>&1 &
qemu_pid=$!
userspace=""
while kill -0 "$qemu_pid" 2>/dev/null; do
  if [ -z "$userspace" ] && grep -q 'Welcome to ' "$work/serial.log"; then
    userspace=$(awk -v d=$(($(date +%s%N) - t0)) 'BEGIN { printf "%.1f", d / 1e9 }')
  fi
  if [ $(($(date +%s%N) - t0)) -gt $((1800 * 1000000000)) ]; then
    log "the VM did not power off within 30 min"; tail -30 "$work/serial.log" >&2; exit 1
  fi
  sleep 0.2
done
qemu_pid=""
m mtype -i "$img" ::bench/out.txt >"$work/out.txt" 2>/dev/null || true
grep -q '^done$' "$work/out.txt" || {
  log "the guest did not finish; its output:"; cat "$work/out.txt" >&2; tail -30 "$work/serial.log" >&2; exit 1
}
log "the guest's output:"
sed 's/^/  /' "$work/out.txt" >&2
median_of() { grep -E "^$1 " "$work/out.txt" | grep -Eo 'median=[0-9.]+' | cut -d= -f2; }
runc_ms=$(median_of runc)
seccomp_ms=$(median_of baton-seccomp)
unconfined_ms=$(median_of baton-unconfined)
row "arm64 VM boot to userspace, this boot" "${userspace:-?} s" "-" "the bench boot, for orientation"
row "runc:arm64 run /bin/true, median of $runs (reference)" "$runc_ms ms" "1.00" "Debian runc $ver, create+start+wait+delete"
row "Baton runtime /bin/true, default seccomp, median of $runs" "$seccomp_ms ms" "$(ratio "$seccomp_ms" "$runc_ms")" "bench_runtime, same rootfs, same boot"
row "Baton runtime /bin/true, unconfined, median of $runs" "$unconfined_ms ms" "$(ratio "$unconfined_ms" "$runc_ms")" "BATON_BENCH_SECCOMP=unconfined"

echo "== device figures ($(date -u +%F), load $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%-58s %14s %8s  %s\n' "figure" "value" "ratio" "note"
for r in "${rows[@]}"; do echo "$r"; done
