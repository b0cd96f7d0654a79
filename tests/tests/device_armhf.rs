//! An emulated 32-bit Raspberry Pi (a Pi 2/3/4 on a 32-bit OS) end to end (issue 12): the
//! arm64 scenario (tests/tests/device_arm64.rs, code in tests/src/device.rs) on a Debian 12
//! armhf card (`images/device/build.sh armhf`) booted under `qemu-system-arm -M virt -cpu
//! cortex-a15` with Debian's armmp-lpae kernel (LPAE: 1 GiB of RAM on `virt`; cgroup v2 with
//! the memory controller), the kernel, initramfs and cmdline.txt read from the card's boot
//! partition at every power-on. The agent is the ARMv7 build
//! (`armv7-unknown-linux-musleabihf`, with seccomp), flashed with `baton flash --arch armv7`
//! (a 32-bit card defaults to the ARMv6 build). Asserted as on arm64: first boot through
//! firstrun.sh, enrolled once and Ready with ARCH arm/v7, the http-echo Deployment (the
//! index's linux/arm/v7 entry) answering on its hostPort from the host, a 32Mi pod
//! OOMKilled, seccomp's EPERM, and the pods back after a power cut with the coordinator
//! down.
//!
//! Also: the 32-bit libcontainer patch's own test (cross/libcontainer-32bit) passes on this
//! board's kernel, run from a privileged pod; power lost during first boot, as on arm64.
//!
//! And: the ARMv6 agent (`arm-unknown-linux-musleabihf`, a Pi Zero's) runs its
//! `--version` on this board from a pod (an ARMv7 CPU runs ARMv6 code); QEMU has no Pi Zero
//! that Debian's kernels boot.
//!
//! The agents are under `$BATON_CROSS_DIR` (default `target/cross`);
//! `BATON_E2E_SKIP_DEVICES=1` skips the test.

use anyhow::Result;
use baton_e2e::device::{scenario, skipped, Device};
use baton_e2e::vm::Board;

#[test]
fn a_flashed_armhf_card_boots_joins_runs_containers_and_survives_a_power_cut() -> Result<()> {
    if skipped("device_armhf", "armhf") {
        return Ok(());
    }
    scenario(Device {
        board: Board::Armhf,
        triple: "armv7-unknown-linux-musleabihf",
        flash_arch: Some("armv7"),
        arch: "arm/v7",
        also_runs: Some("arm-unknown-linux-musleabihf"),
        power_cut_in_first_boot: true,
        libcontainer_patch_test: true,
        ota: false,
    })?;
    Ok(())
}
