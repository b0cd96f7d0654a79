#!/usr/bin/env bash
# The root file system of the emulated board's card (see build.sh, which calls it and
# caches its result): Debian 12 for ARCH from mmdebstrap, with rootfs/ laid over it, as a
# tarball.
#
#   images/device/rootfs.sh arm64|armhf OUT.tar
#
# Root runs it (mmdebstrap's root mode keeps ownership, and foreign maintainer scripts run
# through qemu-user via binfmt_misc, which build.sh sets up).
set -euo pipefail

arch=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
case "$arch" in
  arm64) kernel_pkg=linux-image-arm64 ;;
  # armmp-lpae: QEMU's virt board with a Cortex-A15 has LPAE.
  armhf) kernel_pkg=linux-image-armmp-lpae ;;
  *) echo "usage: $0 arm64|armhf OUT.tar" >&2; exit 2 ;;
esac

# The packages: systemd as init, udev (it loads the NIC's driver), and what the agent runs
# (ip, iptables, modprobe); the kernel with its modules (overlay, veth, bridge, netfilter:
# all loadable in Debian's kernels) and initramfs-tools. ca-certificates as on Raspberry Pi
# OS: the agent's registry client will not start without a system CA store, even for a
# plain-HTTP registry.
pkgs=systemd,systemd-sysv,udev,kmod,iproute2,iptables,ca-certificates,initramfs-tools,$kernel_pkg
# Docs, man pages and locales are most of a minimal root's files and nobody reads them here.
nodocs=(--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
        --dpkgopt='path-include=/usr/share/doc/*/copyright'
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*')
# Modules no emulated board loads (graphics, sound, media, wireless, InfiniBand, staging):
# about half of the kernel's modules, and of the image.
prune='k=$(ls "$1/lib/modules" | head -1); m="$1/lib/modules/$k/kernel";
  rm -rf "$m/sound" "$m/drivers/gpu" "$m/drivers/media" "$m/drivers/infiniband" \
    "$m/drivers/staging" "$m/drivers/iio" "$m/drivers/isdn" "$m/drivers/bluetooth" \
    "$m/drivers/net/wireless" "$m/net/bluetooth" "$m/net/wireless" "$m/net/mac80211";
  chroot "$1" depmod "$k"'
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
    --customize-hook="$prune" \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
    bookworm "$out" http://deb.debian.org/debian; do
  if [ "$attempt" -ge 3 ]; then
    echo "device-rootfs: mmdebstrap failed $attempt times" >&2
    exit 1
  fi
  attempt=$((attempt + 1))
  echo "device-rootfs: mmdebstrap failed, retrying in 20 s (attempt $attempt)" >&2
  rm -f "$out"
  sleep 20
done

