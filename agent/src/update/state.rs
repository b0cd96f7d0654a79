//! The update state file, `<data-dir>/agent/update.json`: the one record the old agent,
//! the launcher and the new agent share about an update in progress.
//!
//! Written only through [`crate::durable::write`] (fsynced, renamed, directory fsynced), so
//! after a power cut it holds the last phase written or the one before, never half of one.
//! Writers never run at the same time: the agent writes it while it runs, the launcher and
//! the exit recorder (`ExecStopPost=`) only while no agent runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an update state: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where one update stands on the device. The launcher acts on every phase, so a kill or a
/// power cut after any write leaves a state it can finish from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// The old agent is re-pointing `current`/`previous`; the new binary is verified.
    Switching,
    /// The new agent runs (or is about to) and has not committed yet.
    Probation,
    /// A rollback was decided (`reason`); `current` may still name the new binary.
    RollingBack,
    /// The new agent proved healthy: it runs from now on.
    Committed,
    /// The device is back on `from`; `reason` says why.
    RolledBack,
}

/// One agent binary the launcher may exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binary {
    pub version: String,
    pub path: PathBuf,
    /// Lowercase hex sha256 of the file, checked by the launcher before every exec.
    pub sha256: String,
}

/// One exit of the agent during probation, as the service manager told it
/// (`EXIT_CODE`/`EXIT_STATUS` of systemd's `ExecStopPost=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub boot_id: String,
    /// Seconds since boot (`/proc/uptime`): a clock that a wall-clock jump at boot (no RTC,
    /// NTP later) cannot move.
    pub uptime: u64,
    /// `exited`, `killed` or `dumped`.
    pub code: String,
    /// The exit status (`101`) or the signal name (`ALRM`, `SEGV`).
    pub status: String,
}

impl ExitRecord {
    /// For a person: `exit 101`, `killed by SIGSEGV`.
    pub fn describe(&self) -> String {
        match self.code.as_str() {
            "exited" => format!("exit {}", self.status),
            "killed" => format!("killed by SIG{}", self.status),
            "dumped" => format!("dumped core on SIG{}", self.status),
            other => format!("{other} {}", self.status),
        }
    }

    /// An exit that is no failure: a clean exit or a stop asked of the service manager.
    pub fn is_clean(&self) -> bool {
        matches!(
            (self.code.as_str(), self.status.as_str()),
            ("exited", "0") | ("killed", "TERM") | ("killed", "INT")
        )
    }

    /// The launcher's own watchdog (`alarm()`) ended it.
    pub fn is_watchdog(&self) -> bool {
        self.code == "killed" && self.status == "ALRM"
    }
}

/// How many exit records are kept: enough for the crash counter and the reason.
pub const MAX_EXITS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateState {
    pub phase: Phase,
    pub rollout: String,
    pub from: Binary,
    pub to: Binary,
    pub health_window_secs: u32,
    /// How long one start of `to` may run without committing: the watchdog's alarm.
    pub deadline_secs: u64,
    /// The boot during which `to` was last started.
    pub boot_id: Option<String>,
    /// Uptime at the last start of `to` (in `boot_id`).
    pub last_start: u64,
    /// Uptime at the first start of `to` in `boot_id`: crash loops are timed from it.
    pub first_start: u64,
    /// Starts of `to` so far.
    pub starts: u32,
    /// Failed runs of `to` in `boot_id` (crashes).
    pub crashes: u32,
    /// Starts that were no failure: after a reboot or power cut, after a clean stop.
    /// Capped so that a device rebooting in a loop still ends on `from`.
    pub unclean: u32,
    pub exits: Vec<ExitRecord>,
    /// What the new agent still waits for, kept up to date by it: the reason given if the
    /// watchdog ends it (`no broker connection within 120 s`).
    pub pending: Option<String>,
    /// Why it rolled back.
    pub reason: Option<String>,
    /// The final phase (Committed, RolledBack) was sent to the coordinator.
    pub reported: bool,
}

impl UpdateState {
    /// A new update, about to switch from `from` to `to`.
    pub fn switching(
        rollout: &str,
        from: Binary,
        to: Binary,
        health_window_secs: u32,
    ) -> UpdateState {
        UpdateState {
            phase: Phase::Switching,
            rollout: rollout.to_owned(),
            from,
            to,
            health_window_secs,
            deadline_secs: deadline_secs(health_window_secs),
            boot_id: None,
            last_start: 0,
            first_start: 0,
            starts: 0,
            crashes: 0,
            unclean: 0,
            exits: Vec::new(),
            pending: None,
            reason: None,
            reported: false,
        }
    }

    /// The state, or `None` when no update ever ran on this device.
    pub fn load(path: &Path) -> Result<Option<UpdateState>, StateError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Parse {
                path: path.to_owned(),
                source,
            })
    }

    /// Persists it durably (see [`crate::durable::write`]).
    pub fn store(&self, path: &Path) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        crate::durable::write(path, &bytes, 0o600).map_err(|source| StateError::Write {
            path: path.to_owned(),
            source,
        })
    }
}

/// Time given to a new agent to connect and get its pods ready before its health window
/// starts counting.
pub const GRACE_SECS: u64 = 60;

/// The watchdog of one start: the health window, twice (pods may take a window to become
/// ready after a restart), plus [`GRACE_SECS`].
pub fn deadline_secs(health_window_secs: u32) -> u64 {
    2 * u64::from(health_window_secs) + GRACE_SECS
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): tells a restart from a reboot.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Whole seconds since boot, from `/proc/uptime`.
pub fn uptime() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split('.').next()?.trim().parse().ok())
        .unwrap_or(0)
}
