//! An emulated Raspberry Pi 4 end to end (issue 12): a Pi-shaped Debian 12 arm64 card
//! (`images/device/build.sh arm64`, built here on first use and cached) is flashed with the
//! real `baton flash` and booted under `qemu-system-aarch64 -M virt -cpu cortex-a72` with
//! Debian's arm64 kernel, the kernel, initramfs and cmdline.txt read from the card's boot
//! partition at every power-on as a Pi's firmware does. Asserted, on the ARM kernel:
//! - power lost during first boot (cut the moment install moved the join token off the
//!   boot partition, firstrun.sh not done), then powered on again: first boot still runs
//!   `baton flash`'s firstrun.sh through `systemd.run=`, which installs the agent, removes
//!   its hook and reboots;
//! - the device enrolls exactly once and is Ready with ARCH arm64;
//! - a Deployment of the multi-arch http-echo image runs (the arm64 manifest from the
//!   index: an amd64 busybox cannot run there), and its hostPort answers from the host
//!   through QEMU's hostfwd;
//! - a pod limited to 32Mi that allocates 100M is OOMKilled;
//! - a pod under the default seccomp profile is filtered and gets EPERM from
//!   `unshare(CLONE_NEWUSER)` (needs an agent built with the seccomp feature);
//! - after a power cut (QEMU killed) the board boots with the coordinator down and runs
//!   its pods again; with the coordinator back it is Ready without enrolling again;
//! - an agent update (issue 13, `tests/src/device_ota.rs`): the aarch64 0.2.1 rolled out
//!   with the release key the device pinned at enrollment, the power cut while the node is
//!   on probation; it must come back on 0.2.1 and commit, the cut not counted as a failure.
//!
//! The agent is `$BATON_CROSS_DIR/aarch64-unknown-linux-musl/baton-agent` (default
//! `target/cross`); the test fails if it is missing. `BATON_E2E_SKIP_DEVICES=1` skips it.

use anyhow::Result;
use baton_e2e::device::{scenario, skipped, Device};
use baton_e2e::vm::Board;

#[test]
fn a_flashed_arm64_card_boots_joins_runs_containers_and_survives_a_power_cut() -> Result<()> {
    if skipped("device_arm64", "arm64") {
        return Ok(());
    }
    scenario(Device {
        board: Board::Arm64,
        triple: "aarch64-unknown-linux-musl",
        // `baton flash` detects arm64 from the card (arm_64bit=1).
        flash_arch: None,
        arch: "arm64",
        also_runs: None,
        power_cut_in_first_boot: true,
        libcontainer_patch_test: false,
        ota: true,
    })?;
    Ok(())
}
