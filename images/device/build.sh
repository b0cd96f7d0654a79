#!/usr/bin/env bash
# Builds a Raspberry-Pi-shaped SD card image of Debian 12 for an emulated board (QEMU's
# `virt` machine), for the device e2e tests (tests/tests/device_*.rs):
#
#   images/device/build.sh arm64|armhf     # prints the image's path on its last line
#
# arm64 is what tests/tests/device_arm64.rs boots, armhf (Debian's armmp-lpae kernel, for
# qemu-system-arm -M virt -cpu cortex-a15 with 1 GiB) what tests/tests/device_armhf.rs does.
#
# The card is laid out like Raspberry Pi OS Bookworm's: an MBR with a FAT32 boot partition
# (mounted at /boot/firmware) holding the kernel, the initramfs, config.txt and cmdline.txt,
# and an ext4 root. QEMU cannot run a Pi's firmware, so the test plays its part: it loads
# the kernel and initramfs from the boot partition and passes cmdline.txt to the kernel,
# at every power-on, which is what makes `baton flash`'s firstrun.sh hook run as on a Pi.
#
# Root runs it: rootfs.sh builds the root with mmdebstrap (root mode keeps ownership;
# foreign maintainer scripts run through qemu-user via binfmt_misc). No loop mount:
# mkfs.ext4 -d fills the root file system from a directory, mcopy the FAT one. The result
# is cached under images/.cache/device/<arch>-<hash>.img (and the root as
# <arch>-root-<hash>.tar), keyed by these scripts and rootfs/; delete them to rebuild with
# newer Debian packages.
set -euo pipefail

arch=${1:-}
case "$arch" in
  arm64)
    kernel_name=kernel8.img; initrd_name=initramfs8
    config="arm_64bit=1"
    ;;
  armhf)
    kernel_name=kernel7l.img; initrd_name=initramfs7l
    config="arm_64bit=0"
    ;;
  *) echo "usage: $0 arm64|armhf" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache="$root/images/.cache/device"
# Inputs of the recipe: the root's (rootfs.sh and the overlay: names, modes, contents,
# link targets), then this script for the card.
root_hash=$(
  cd "$here"
  {
    sha256sum rootfs.sh
    find rootfs -printf '%p %m %y %l\n' | LC_ALL=C sort
    find rootfs -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
)
hash=$({ echo "$root_hash"; sha256sum "$here/build.sh"; } | sha256sum | cut -c1-16)
out="$cache/$arch-$hash.img"
# The root file system alone, cached too: assembling the card is seconds, the root minutes.
root_tar="$cache/$arch-root-$root_hash.tar"
# One build of an arch at a time: scripts/test.sh builds the cards in the background while a
# device test may ask for one; the second caller waits, then finds it cached.
mkdir -p "$cache"
exec 9>"$cache/.$arch.lock"
flock 9
if [ -f "$out" ]; then
  echo "device-image: cached"
  echo "$out"
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "device-image: run as root (mmdebstrap's root mode)" >&2; exit 1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in mmdebstrap arch-test binfmt-support qemu-user-static e2fsprogs dosfstools mtools fdisk; do
  have_pkg "$p" || { "$root/scripts/install-deps.sh"; break; }
done
# Foreign maintainer scripts run through qemu-user: binfmt_misc must be mounted (it is not
# in every container) and qemu's handler enabled.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
case "$arch" in arm64) qemu=qemu-aarch64 ;; armhf) qemu=qemu-arm ;; esac
[ -e "/proc/sys/fs/binfmt_misc/$qemu" ] || update-binfmts --enable "$qemu"
arch-test "$arch" >/dev/null || {
  echo "device-image: this machine cannot run $arch binaries (binfmt_misc + qemu-user-static)" >&2
  exit 1
}

started=$(date +%s)
mkdir -p "$cache"
work=$(mktemp -d "$cache/.build-$arch-XXXXXX")
trap 'rm -rf "$work"' EXIT
rootdir="$work/root"

if [ ! -f "$root_tar" ]; then
  "$here/rootfs.sh" "$arch" "$work/root.tar"
  mv "$work/root.tar" "$root_tar"
  find "$cache" -maxdepth 1 -name "$arch-root-*.tar" ! -name "$(basename "$root_tar")" -delete
fi
echo "device-image: root file system ready after $(($(date +%s) - started)) s"
mkdir "$rootdir"
tar -C "$rootdir" --numeric-owner --xattrs --xattrs-include='*' -xpf "$root_tar"
kver=$(ls "$rootdir/lib/modules" | head -1)
boot="$work/boot"
mkdir -p "$boot"
cp "$rootdir/boot/vmlinuz-$kver" "$boot/$kernel_name"
cp "$rootdir/boot/initrd.img-$kver" "$boot/$initrd_name"
# QEMU's virt board has no Pi firmware: console on its PL011, root on the virtio disk.
echo "console=ttyAMA0,115200 root=/dev/vda2 rootfstype=ext4 fsck.repair=yes rootwait" > "$boot/cmdline.txt"
printf '# The emulated board ignores this file; `baton flash` reads arm_64bit.\n[all]\n%s\n' "$config" \
  > "$boot/config.txt"

# Sizes: a 128 MiB boot partition from 4 MiB (Pi OS: 512 MiB from 4 MiB), and a root with
# 1 GiB free for images and containers. The image file is sparse.
boot_mib=128
used_mib=$(du -sm "$rootdir" | cut -f1)
root_mib=$((used_mib + used_mib / 5 + 1024))
img="$work/card.img"
truncate -s $(((4 + boot_mib + root_mib) * 1024 * 1024)) "$img"
printf 'label: dos\nlabel-id: 0xba70de01\nstart=8192, size=%d, type=c\nstart=%d, type=83\n' \
  $((boot_mib * 2048)) $(((4 + boot_mib) * 2048)) | sfdisk -q "$img"
mkfs.fat -F 32 -s 1 -n BOOTFS --offset 8192 "$img" $((boot_mib * 1024)) >/dev/null
for f in "$boot"/*; do
  MTOOLS_SKIP_CHECK=1 mcopy -i "$img@@4M" "$f" "::$(basename "$f")"
done
mkfs.ext4 -q -F -L rootfs -d "$rootdir" -E offset=$(((4 + boot_mib) * 1024 * 1024)) "$img" "${root_mib}M"

mv "$img" "$out"
# Older builds of this arch are stale.
find "$cache" -maxdepth 1 -name "$arch-*.img" ! -name "$(basename "$out")" -delete
echo "device-image: built $out in $(($(date +%s) - started)) s (root $used_mib MiB used, kernel $kver)"
echo "$out"
