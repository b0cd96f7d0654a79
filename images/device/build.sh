#!/usr/bin/env bash
# Builds a Raspberry-Pi-shaped SD card image of Debian 12 for an emulated board (QEMU's
# `virt` machine), for the device e2e tests (tests/tests/device_*.rs):
#
#   images/device/build.sh arm64|armhf     # prints the image's path on its last line
#
# The card is laid out like Raspberry Pi OS Bookworm's: an MBR with a FAT32 boot partition
# (mounted at /boot/firmware) holding the kernel, the initramfs, config.txt and cmdline.txt,
# and an ext4 root. QEMU cannot run a Pi's firmware, so the test plays its part: it loads
# the kernel and initramfs from the boot partition and passes cmdline.txt to the kernel,
# at every power-on, which is what makes `baton flash`'s firstrun.sh hook run as on a Pi.
#
# Root runs it (mmdebstrap's root mode keeps ownership, and foreign maintainer scripts run
# through qemu-user via binfmt_misc). No loop mount: mkfs.ext4 -d fills the root file
# system from a directory, mcopy the FAT one. The result is cached under
# images/.cache/device/<arch>-<hash>.img, keyed by this script and rootfs/; delete it to
# rebuild with newer Debian packages.
set -euo pipefail

arch=${1:-}
case "$arch" in
  arm64)
    kernel_pkg=linux-image-arm64; kernel_name=kernel8.img; initrd_name=initramfs8
    config="arm_64bit=1"
    ;;
  armhf)
    # armmp-lpae: QEMU's virt board with a Cortex-A15 has LPAE (and more than 1 GiB of
    # address space would need it).
    kernel_pkg=linux-image-armmp-lpae; kernel_name=kernel7l.img; initrd_name=initramfs7l
    config="arm_64bit=0"
    ;;
  *) echo "usage: $0 arm64|armhf" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache="$root/images/.cache/device"
# Inputs of the recipe: this script and the overlay (names, modes, contents, link targets).
hash=$(
  cd "$here"
  {
    sha256sum build.sh
    find rootfs -printf '%p %m %y %l\n' | LC_ALL=C sort
    find rootfs -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
)
out="$cache/$arch-$hash.img"
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

# The packages: systemd as init, udev (it loads the NIC's driver), and what the agent runs
# (ip, iptables, modprobe); the kernel with its modules (overlay, veth, bridge, netfilter:
# all loadable in Debian's kernels) and initramfs-tools.
pkgs=systemd,systemd-sysv,udev,kmod,iproute2,iptables,initramfs-tools,$kernel_pkg
# Docs, man pages and locales are most of a minimal root's files and nobody reads them here.
nodocs=(--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
        --dpkgopt='path-include=/usr/share/doc/*/copyright'
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*')
attempt=1
# Debian's mirrors are sometimes mid-sync (a Packages file that does not match its Release):
# a later attempt gets a consistent set.
until mmdebstrap --mode=root --variant=minbase --arch="$arch" --include="$pkgs" \
    --aptopt='Acquire::Retries "5"' "${nodocs[@]}" \
    --essential-hook='mkdir -p "$1/etc/initramfs-tools"' \
    --essential-hook="sync-in '$here/rootfs/etc/initramfs-tools' /etc/initramfs-tools" \
    --customize-hook="sync-in '$here/rootfs' /" \
    --customize-hook='mkdir -p "$1/boot/firmware"' \
    --customize-hook='chroot "$1" systemctl enable systemd-networkd' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
    bookworm "$rootdir" http://deb.debian.org/debian; do
  if [ "$attempt" -ge 3 ]; then
    echo "device-image: mmdebstrap failed $attempt times" >&2
    exit 1
  fi
  attempt=$((attempt + 1))
  echo "device-image: mmdebstrap failed, retrying in 20 s (attempt $attempt)" >&2
  rm -rf "$rootdir"
  sleep 20
done

# Modules no emulated board loads (graphics, sound, media, wireless, InfiniBand, staging):
# about half of the kernel's modules, and of the image.
kver=$(basename "$(ls -d "$rootdir"/lib/modules/* | head -1)")
mods="$rootdir/lib/modules/$kver/kernel"
rm -rf "$mods"/sound "$mods"/drivers/{gpu,media,infiniband,staging,iio,isdn,bluetooth} \
  "$mods"/drivers/net/wireless "$mods"/net/{bluetooth,wireless,mac80211}
chroot "$rootdir" depmod "$kver"

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
mkfs.fat -F 32 -n BOOTFS --offset 8192 "$img" $((boot_mib * 1024)) >/dev/null
for f in "$boot"/*; do
  MTOOLS_SKIP_CHECK=1 mcopy -i "$img@@4M" "$f" "::$(basename "$f")"
done
mkfs.ext4 -q -F -L rootfs -d "$rootdir" -E offset=$(((4 + boot_mib) * 1024 * 1024)) "$img" "${root_mib}M"

mv "$img" "$out"
# Older builds of this arch are stale.
find "$cache" -maxdepth 1 -name "$arch-*.img" ! -name "$(basename "$out")" -delete
echo "device-image: built $out in $(($(date +%s) - started)) s (root $used_mib MiB used, kernel $kver)"
echo "$out"
