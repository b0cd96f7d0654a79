#!/usr/bin/env bash
# Installs every system package the fleet and the test suite need, on a fresh Debian 12
# machine. Idempotent: packages already present are skipped, so CI pays only for what is new.
set -euo pipefail

need_root() { [ "$(id -u)" = 0 ] || { echo "install-deps: run as root" >&2; exit 1; }; }
need_root

# Installs the named packages that are not installed yet (one apt-get update, only if needed).
install_missing() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  echo "install-deps: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Debian packages, by what needs them:
#   iproute2 iptables          pod networking (bridge, veth, netns, NAT)
#   libseccomp-dev             libcontainer's seccomp feature links -lseccomp
#   docker-registry            a real OCI registry on loopback for e2e tests
#   mosquitto mosquitto-clients the external-broker mode and its tests
#   runc                       the reference runtime the benchmarks compare against
#   busybox-static             the example images' userland (amd64; arm64 via apt-get download)
#   gcc-aarch64-linux-gnu qemu-user-static  the aarch64 cross build and its smoke test
#   gperf make python3-pip     the ARM builds (cross/build.sh): libseccomp for musl from source,
#                              zig and cargo-zigbuild from PyPI for the 32-bit targets
#   curl python3               image build/push script and health checks
#   apache2-utils openssl      htpasswd (bcrypt) and a test CA for the registry auth/TLS tests
#   prometheus                 a real Prometheus scraping /metrics (tests/tests/metrics.rs)
#   protobuf-compiler libprotobuf-dev  protoc, for the etcd client's gRPC code (coordinator
#                              build), and the well-known types it imports (descriptor.proto)
#   etcd-server                a real etcd for the coordinator's etcd store (tests/tests/etcd_store.rs, ha.rs)
#   nats-server                a real 3-node NATS cluster as a clustered MQTT broker (tests/tests/broker_cluster.rs)
#   chromium chromium-driver   the web dashboard in a real headless browser (tests/tests/dashboard.rs)
PKGS=(iproute2 iptables libseccomp-dev docker-registry mosquitto mosquitto-clients runc
      busybox-static gcc-aarch64-linux-gnu qemu-user-static curl python3 pkg-config
      linux-libc-dev-arm64-cross apache2-utils openssl gperf make python3-pip prometheus
      protobuf-compiler libprotobuf-dev etcd-server chromium chromium-driver nats-server)

install_missing "${PKGS[@]}"

# Debian starts these daemons on install; the tests start their own instances on
# loopback or inside their own namespaces, so the system-wide ones must not hold ports.
for svc in mosquitto docker-registry prometheus etcd nats-server; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
  pkill -x "$svc" 2>/dev/null || true
done
pkill -f '^/usr/bin/docker-registry' 2>/dev/null || true
pkill -f '^/usr/bin/prometheus' 2>/dev/null || true

# The arm64 busybox for the multi-arch example images.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get update -qq
fi
# musl's aarch64 headers for C code in the static aarch64-musl agent (cross/aarch64-linux-musl-gcc);
# a foreign-arch package, so it can only be installed once arm64 is added above.
if ! dpkg-query -W -f='${Status}' musl-dev:arm64 2>/dev/null | grep -q "install ok installed"; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-dev:arm64 >/dev/null
fi

# Rust targets for the ARM builds.
if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed | grep -qx aarch64-unknown-linux-musl || rustup target add aarch64-unknown-linux-musl
  # The todo app images' amd64 binaries (images/build.sh): static musl like the arm64 ones.
  rustup target list --installed | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
  # The 32-bit ARM targets have no rustup std here: cross/build.sh builds it from source.
  rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src
fi
# `baton flash` (coordinator/src/cli/flash): cloud-init's own schema check of the generated
# user-data (cloud-init 22.4, `cloud-init schema --config-file`) in the unit tests; and for the
# e2e test's Pi-like images and independent read-back: sfdisk (fdisk), mkfs.fat/fsck.fat
# (dosfstools) and mtools. --no-install-recommends: cloud-init's recommends are not needed to
# validate a file, and no cloud-init service runs here (no systemd).
FLASH_PKGS=(cloud-init fdisk dosfstools mtools)
install_missing "${FLASH_PKGS[@]}"

# The emulated ARM devices (images/device/build.sh, tests/tests/device_*.rs): QEMU's ARM
# system emulators and the NIC boot ROM virtio-net-pci loads (ipxe-qemu); mmdebstrap builds
# the card's Debian root, running foreign maintainer scripts through qemu-user-static via
# binfmt_misc (binfmt-support registers the handlers; arch-test checks they work);
# mkfs.ext4 -d (e2fsprogs) fills the root partition from a directory, mkfs.fat and mcopy
# the boot partition, without loop mounts.
DEVICE_PKGS=(qemu-system-arm ipxe-qemu mmdebstrap arch-test binfmt-support e2fsprogs dosfstools
             mtools fdisk)
install_missing "${DEVICE_PKGS[@]}"

echo "install-deps: ok"
