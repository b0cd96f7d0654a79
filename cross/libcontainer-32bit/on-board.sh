#!/usr/bin/env bash
# The 32-bit libcontainer patch test on the emulated 32-bit board, without an agent: builds
# it (cross/test-libcontainer.sh --build), puts it on a copy of the armhf card's boot
# partition (images/device/build.sh armhf), boots the card under qemu-system-arm as
# tests/src/vm.rs does, with systemd.run= running the test as root on the board's own
# kernel, and prints its output. Exits 0 only if every check passed, none skipped, as a
# 32-bit program. (tests/tests/device_armhf.rs runs the same test from a pod under the
# armv7 agent; this is the quick way, about a minute of boot.)
#
#   cross/libcontainer-32bit/on-board.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$("$root/cross/test-libcontainer.sh" --build | tail -1)
base=$("$root/images/device/build.sh" armhf | tail -1)
work=$(mktemp -d /tmp/libcontainer-32bit-board.XXXXXX)
qemu_pid=""
trap '[ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null; rm -rf "$work"' EXIT

card="$work/card.img"
cp --sparse=always "$base" "$card"
off=$(python3 -c 'import sys,struct; m=open(sys.argv[1],"rb").read(512); print(struct.unpack("<I", m[454:458])[0]*512)' "$card")
img="$card@@$off"
m() { MTOOLS_SKIP_CHECK=1 "$@"; }
cat >"$work/run.sh" <<'EOF'
#!/bin/sh
/boot/firmware/libcontainer-32bit-test >/boot/firmware/libcontainer-32bit-test.out 2>&1
echo "exit $?" >>/boot/firmware/libcontainer-32bit-test.out
sync
EOF
m mcopy -i "$img" "$bin" ::libcontainer-32bit-test
m mcopy -i "$img" "$work/run.sh" ::libcontainer-32bit-run.sh
printf '%s systemd.run=/boot/firmware/libcontainer-32bit-run.sh systemd.run_success_action=poweroff systemd.run_failure_action=poweroff systemd.unit=kernel-command-line.target\n' \
  "$(m mtype -i "$img" ::cmdline.txt | head -1)" >"$work/cmdline.txt"
m mtype -i "$img" ::kernel7l.img >"$work/kernel"
m mtype -i "$img" ::initramfs7l >"$work/initrd"

qemu-system-arm -M virt,highmem=off -cpu cortex-a15 -smp 2 -m 1024 -nodefaults -no-user-config \
  -display none -no-reboot -chardev "file,id=s0,path=$work/serial.log" -serial chardev:s0 \
  -kernel "$work/kernel" -initrd "$work/initrd" -append "$(cat "$work/cmdline.txt")" \
  -drive "file=$card,format=raw,if=none,id=card,cache=writeback" -device virtio-blk-pci,drive=card \
  -device virtio-rng-pci >"$work/qemu.log" 2>&1 &
qemu_pid=$!
for _ in $(seq 1 3000); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.2; done
if kill -0 "$qemu_pid" 2>/dev/null; then
  echo "on-board: the board did not power off within 10 min" >&2; tail -30 "$work/serial.log" >&2; exit 1
fi
qemu_pid=""
out=$(m mtype -i "$img" ::libcontainer-32bit-test.out 2>&1 || true)
echo "== armhf board ($(grep -m1 -o 'Linux version [^ ]*' "$work/serial.log" || echo 'kernel ?')), from systemd.run="
printf '%s\n' "$out"
printf '%s\n' "$out" | grep -qx 'all ok' && printf '%s\n' "$out" | grep -q 'usize 32 bits' &&
  printf '%s\n' "$out" | grep -qx 'exit 0'
