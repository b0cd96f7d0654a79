//! An agent update on the emulated arm64 board (issue 13's last test), run at the end of its
//! scenario ([`crate::device::Device::ota`]) so no extra card is booted: the aarch64 0.2.1
//! of this source (tests/ota/build-releases.sh aarch64-unknown-linux-musl), signed with a
//! release key the lab's coordinator had before the board enrolled (so the board pinned it
//! at enrollment), rolled out with `baton agent upgrade`; while the board is on probation
//! its power is cut, and after it boots again the update must commit: the reboot is not a
//! failed start (the launcher's boot_id logic, on the real ARM kernel).
//!
//! The board is flashed as a user would (`baton flash --api` at the coordinator's
//! `--enroll-listen`): it holds no API token and knows only that listener, which serves it
//! the release on its device key's signature.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::ota::{self, TO};
use crate::skew::node_version;
use crate::vm::{self, Vm};
use crate::{bin, repo_root, sh, Lab};

/// The node's probation before it commits: short, and long enough that the test sees
/// `probation` before the commit. The watchdog is 2 x this + 60 s after each start, room
/// for a TCG board to bring its pods back after the reboot.
const HEALTH_WINDOW: &str = "45s";
/// From `upgrade` to the node on probation (download over QEMU's user network, switch).
const TO_PROBATION: Duration = Duration::from_secs(420);
/// From power-on after the cut to committed.
const TO_COMMIT: Duration = Duration::from_secs(480);
const ROLLOUT: &str = "board";
/// The device's paths (`baton-agent install`'s defaults).
const DATA_DIR: &str = "/var/lib/baton-agent";

/// What the update measured.
#[derive(Debug, Default, Clone)]
pub struct OtaFigures {
    /// The most the node reported downloading, and the release's size.
    pub downloaded: u64,
    pub size: u64,
    /// `upgrade` to the node on probation, and to committed (power cut and boot included).
    pub to_probation: Duration,
    pub to_committed: Duration,
    /// Power-on after the cut to committed.
    pub boot_to_committed: Duration,
}

/// The release key, made before the enrolling coordinator starts, and the release.
pub struct BoardOta {
    keys: PathBuf,
    key_pub: PathBuf,
    releases: PathBuf,
    /// tests/ota/build-releases.sh, run while the board boots (scripts/test.sh has built
    /// the release already; a run on its own pays the agent's rebuild, minutes, beside the
    /// scenario instead of before it): its cache directory.
    build: Option<JoinHandle<Result<PathBuf>>>,
    triple: String,
}

impl BoardOta {
    /// Makes a release key in the lab's directory and starts finding (or building) the
    /// release for `triple`.
    pub fn prepare(lab: &Lab, triple: &str) -> Result<BoardOta> {
        let keys = lab.dir.path().join("release-key");
        sh(Command::new(bin("baton"))
            .args(["release", "keygen", "--out"])
            .arg(&keys))?;
        let t = triple.to_owned();
        let build = std::thread::spawn(move || {
            let out = sh(Command::new(repo_root().join("tests/ota/build-releases.sh")).arg(&t))
                .context("building the test release (tests/ota/build-releases.sh)")?;
            Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
        });
        Ok(BoardOta {
            key_pub: keys.join("release.pub"),
            keys,
            releases: lab.dir.path().join("releases"),
            build: Some(build),
            triple: triple.to_owned(),
        })
    }

    /// The release, built, copied into the lab and signed as a release machine would.
    fn signed_release(&mut self) -> Result<PathBuf> {
        let build = self.build.take().context("the release was taken already")?;
        let dir = build
            .join()
            .map_err(|_| anyhow::anyhow!("the release build thread panicked"))??;
        let name = format!("baton-agent-{TO}-{}", self.triple);
        fs::create_dir_all(&self.releases)?;
        let release = self.releases.join(&name);
        fs::copy(dir.join(&name), &release)?;
        sh(Command::new(bin("baton"))
            .args(["release", "sign", "--key"])
            .arg(self.keys.join("release.key"))
            .arg(&release))?;
        Ok(release)
    }

    /// The coordinator's flag: devices enrolling pin this key.
    pub fn coordinator_flags(&self) -> Vec<String> {
        vec![
            "--release-public-key-file".into(),
            self.key_pub.display().to_string(),
        ]
    }

    /// The update, the board on and the node Ready with its pods; `pods_back` waits until
    /// its pods run and answer again after a boot.
    pub fn run(
        &mut self,
        lab: &Lab,
        vm: &mut Vm,
        node: &str,
        pods_back: &dyn Fn(&Lab) -> Result<()>,
    ) -> Result<OtaFigures> {
        let release = self.signed_release()?;
        let mut fig = OtaFigures {
            size: fs::metadata(&release)?.len(),
            ..OtaFigures::default()
        };
        lab.baton(&["release", "import", &release.to_string_lossy()])?;
        ensure!(
            node_version(lab, node)? == ota::FROM,
            "the board is not on {}",
            ota::FROM
        );

        // The update; the power is cut while the node is on probation.
        let t0 = Instant::now();
        lab.baton(&[
            "agent",
            "upgrade",
            "--to",
            TO,
            "--name",
            ROLLOUT,
            "--arch",
            "arm64",
            "--canary",
            "0",
            "--health-window",
            HEALTH_WINDOW,
        ])?;
        let r = ota::wait_rollout(lab, ROLLOUT, TO_PROBATION, |r| {
            fig.downloaded = fig.downloaded.max(r.node(node).map_or(0, |n| n.downloaded));
            matches!(
                r.phase_of(node),
                "probation" | "committed" | "rolled-back" | "refused"
            )
        })?;
        ensure!(
            r.phase_of(node) == "probation",
            "the board went {} before the power cut in probation: {r:#?}",
            r.phase_of(node)
        );
        fig.to_probation = t0.elapsed();
        vm.power_cut();
        vm.power_on()?;
        let r = ota::wait_rollout(lab, ROLLOUT, TO_COMMIT, |r| {
            fig.downloaded = fig.downloaded.max(r.node(node).map_or(0, |n| n.downloaded));
            matches!(r.phase_of(node), "committed" | "rolled-back" | "refused")
                || matches!(r.phase.as_str(), "Halted" | "Aborted")
        })?;
        fig.boot_to_committed = vm.since_power_on();
        fig.to_committed = t0.elapsed();
        let row = r.node(node).context("the node is not in the rollout")?;
        ensure!(
            row.phase == "committed" && r.phase == "Complete",
            "the update did not commit after a power cut in probation: {r:#?}"
        );
        ensure!(row.from == ota::FROM && row.to == TO, "{row:?}");
        ensure!(
            node_version(lab, node)? == TO,
            "get nodes does not show {TO}"
        );
        pods_back(lab)?;

        // Off again, the card says the same: committed, `current` is 0.2.1, and the cut
        // was an unclean start of another boot, not a crash; and the key it checked the
        // release with is the one it pinned at enrollment.
        vm.power_cut();
        vm::replay_root_journal(&vm.image)?;
        let pinned = String::from_utf8(vm::root_file(
            &vm.image,
            &format!("{DATA_DIR}/release.pub"),
        )?)?;
        ensure!(
            pinned.trim() == fs::read_to_string(&self.key_pub)?.trim(),
            "the board did not pin the coordinator's release key at enrollment: {pinned:?}"
        );
        let dir = format!("{DATA_DIR}/agent");
        let state: Value =
            serde_json::from_slice(&vm::root_file(&vm.image, &format!("{dir}/update.json"))?)?;
        ensure!(
            state["phase"] == "Committed" && state["to"]["version"] == TO,
            "update.json after the commit: {state}"
        );
        ensure!(
            state["crashes"] == 0 && state["unclean"] == 1 && state["starts"] == 2,
            "the power cut in probation was not counted as one unclean start in another boot \
             (want starts 2, unclean 1, crashes 0): {state}"
        );
        let current = vm::root_link(&vm.image, &format!("{dir}/current"))?;
        ensure!(
            current.contains(&format!("versions/{TO}-")) && current.ends_with("/baton-agent"),
            "current -> {current}, not {TO}"
        );
        Ok(fig)
    }
}
