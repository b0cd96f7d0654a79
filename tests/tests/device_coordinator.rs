//! The coordinator on an emulated Raspberry Pi 4 (issue 12): the aarch64 `baton` (from
//! `$BATON_CROSS_DIR/aarch64-unknown-linux-musl/baton`, default `target/cross`) runs as a
//! systemd service on the arm64 board (`images/device/build.sh arm64`, under
//! `qemu-system-aarch64 -M virt -cpu cortex-a72`), set up as docs/devices.md's "A Pi as the
//! coordinator" says, with its store on the card's ext4 root. A real agent on the host (a
//! lab agent in its own network namespace) joins it. Asserted:
//! - the service is the aarch64 binary on the ARM kernel (`uname -m` and the process's
//!   executable, from the board), and its API answers over TLS from its own CA;
//! - the host agent enrolls with a join token minted through the board's API by the host's
//!   `baton` CLI, over the board's mTLS broker, and is Ready;
//! - a Deployment of http-echo (lab registry on the host) runs there, and its hostPort
//!   answers;
//! - after a power cut of the board (QEMU killed), the pod answers at every check while the
//!   board is off and booting, and the coordinator comes back with its store: the
//!   Deployment, the node with the same identity, Ready after a fresh heartbeat, the same
//!   pod never restarted.
//!
//! `BATON_E2E_SKIP_DEVICES=1` (or a list holding `arm64`) skips it.

use anyhow::Result;
use baton_e2e::device::skipped;
use baton_e2e::device_coordinator::scenario;

#[test]
fn an_arm64_board_runs_the_coordinator_and_keeps_its_store_across_a_power_cut() -> Result<()> {
    if skipped("device_coordinator", "arm64") {
        return Ok(());
    }
    scenario()?;
    Ok(())
}
