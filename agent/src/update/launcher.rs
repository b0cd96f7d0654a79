//! `baton-agent launch`: the service's entry point, the installed binary, never replaced by
//! an update. It reads the update state, decides which agent binary runs, records the
//! start, arms the watchdog and execs it, with the same arguments and environment.
//!
//! It rolls back on its own, so that no fault of a new binary can keep a device on it:
//! - a crash loop: [`MAX_CRASHES`] failed runs of the new binary in one boot;
//! - a hang, no broker connection, no commit: `alarm()` is set before the exec (an alarm
//!   survives `execve`) and kills a new agent that has not committed (and cancelled it)
//!   within the state's deadline; its next start is a rollback, with the reason the new
//!   agent last wrote of what it waited for (`pending`);
//! - a power cut or a reboot during probation is not a failure: a start in another boot
//!   (`/proc/sys/kernel/random/boot_id`) counts as unclean, capped at [`MAX_UNCLEAN`] so
//!   that a device rebooting in a loop still ends on the old version.
//!
//! Exit statuses come from the service manager (`baton-agent launch --record-exit` in
//! `ExecStopPost=`, see `install/files.rs`); without them a restart in the same boot still
//! counts as a crash, only the reason lacks its exit code.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tracing::{error, info, warn};

use super::layout::{verifies, Layout};
use super::state::{boot_id, uptime, ExitRecord, Phase, StateError, UpdateState, MAX_EXITS};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot exec {path}: {source}")]
    Exec {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// Failed runs of a new binary in one boot before the device goes back.
pub const MAX_CRASHES: u32 = 3;
/// Starts of a new binary that were no failure (reboots, clean stops) before it goes back.
pub const MAX_UNCLEAN: u32 = 5;

/// The environment variable the launcher sets for the agent it starts: the launcher's path.
/// An agent without it was not started by the launcher and refuses updates, since nothing
/// would roll it back.
pub const LAUNCHER_ENV: &str = "BATON_AGENT_LAUNCHER";

/// What the launcher knows of the moment.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub boot_id: &'a str,
    /// Seconds since boot.
    pub uptime: u64,
}

/// Which binary runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The launcher itself: no update ever ran, or nothing else verifies.
    Installed,
    From,
    To,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub pick: Pick,
    /// The state to persist before the exec (`None`: unchanged).
    pub state: Option<UpdateState>,
    /// The watchdog, in seconds from the exec.
    pub alarm: Option<u64>,
}

/// The launcher's decision: pure, from the state and the moment.
pub fn decide(state: Option<&UpdateState>, f: &Facts) -> Decision {
    let keep = |pick| Decision {
        pick,
        state: None,
        alarm: None,
    };
    let Some(s) = state else {
        return keep(Pick::Installed);
    };
    match s.phase {
        Phase::Committed => keep(Pick::To),
        Phase::RolledBack => keep(Pick::From),
        Phase::RollingBack => {
            let reason = s.reason.clone().unwrap_or_else(|| "rolled back".into());
            roll_back(s.clone(), reason)
        }
        Phase::Switching | Phase::Probation => probation_start(s, f),
    }
}

fn roll_back(mut s: UpdateState, reason: String) -> Decision {
    s.phase = Phase::RolledBack;
    s.reason = Some(reason);
    s.reported = false;
    Decision {
        pick: Pick::From,
        state: Some(s),
        alarm: None,
    }
}

/// A start of the new binary during probation: the previous run's fate decides whether it
/// is started again or the device goes back.
fn probation_start(s: &UpdateState, f: &Facts) -> Decision {
    let mut n = s.clone();
    n.phase = Phase::Probation;
    let same_boot = s.boot_id.as_deref() == Some(f.boot_id);
    if s.phase == Phase::Switching || s.starts == 0 {
        // The first start: the switch finished (or is finished now).
    } else if !same_boot {
        n.unclean += 1;
        if n.unclean > MAX_UNCLEAN {
            let reason = format!(
                "started {} times during probation across reboots or power cuts without committing",
                s.starts
            );
            return roll_back(n, reason);
        }
    } else {
        // Same boot: the last run of the new binary ended.
        let exit = s
            .exits
            .iter()
            .rev()
            .find(|e| e.boot_id == f.boot_id && e.uptime >= s.last_start);
        let ran = f.uptime.saturating_sub(s.last_start);
        let watchdog = match exit {
            Some(e) => e.is_watchdog(),
            None => ran >= s.deadline_secs,
        };
        if watchdog {
            let reason = s
                .pending
                .clone()
                .unwrap_or_else(|| format!("not committed within {} s", s.deadline_secs));
            return roll_back(n, reason);
        }
        if exit.is_some_and(ExitRecord::is_clean) {
            n.unclean += 1;
            if n.unclean > MAX_UNCLEAN {
                let reason = format!("stopped {} times during probation", n.unclean);
                return roll_back(n, reason);
            }
        } else {
            n.crashes += 1;
            if n.crashes >= MAX_CRASHES {
                let how =
                    exit.map_or_else(|| "exit status not recorded".into(), ExitRecord::describe);
                let reason = format!(
                    "crashed {} times in {} s: {how}",
                    n.crashes,
                    f.uptime.saturating_sub(s.first_start)
                );
                return roll_back(n, reason);
            }
        }
    }
    if !same_boot || s.starts == 0 {
        n.first_start = f.uptime;
        n.crashes = if same_boot { n.crashes } else { 0 };
    }
    n.boot_id = Some(f.boot_id.to_owned());
    n.last_start = f.uptime;
    n.starts += 1;
    Decision {
        pick: Pick::To,
        alarm: Some(n.deadline_secs),
        state: Some(n),
    }
}

/// Checks the pick against the disk: a binary that is missing or does not match its digest
/// is never exec'd. A bad new binary is a rollback; a bad old one leaves the installed one.
pub fn verified(
    mut d: Decision,
    current: Option<&UpdateState>,
    ok: impl Fn(&Path, &str) -> bool,
) -> Decision {
    let Some(s) = d.state.as_ref().or(current).cloned() else {
        return d;
    };
    if d.pick == Pick::To && !ok(&s.to.path, &s.to.sha256) {
        let reason = format!(
            "the new binary {} is missing or does not match its sha256",
            s.to.path.display()
        );
        d = roll_back(s.clone(), reason);
    }
    if d.pick == Pick::From && !ok(&s.from.path, &s.from.sha256) {
        d.pick = Pick::Installed;
    }
    d
}

/// Runs the launcher: decides, records, arms the watchdog and execs. Returns only on error.
pub fn launch(data_dir: &Path, installed: &Path, args: Vec<OsString>) -> LaunchError {
    let layout = Layout::new(data_dir);
    let path = layout.state_file();
    let state = match UpdateState::load(&path) {
        Ok(s) => s,
        Err(e) => {
            // Only a damaged disk gets here (the file is written atomically): the installed
            // binary always starts.
            error!(error = %e, "unreadable update state: starting the installed agent");
            None
        }
    };
    let facts = Facts {
        boot_id: &boot_id(),
        uptime: uptime(),
    };
    let mut d = verified(decide(state.as_ref(), &facts), state.as_ref(), verifies);
    if let Some(next) = &d.state {
        if let Err(e) = next.store(&path) {
            // Without the record of this start the crash counter cannot work: never run the
            // new binary unrecorded.
            error!(error = %e, "cannot record the start");
            if d.pick == Pick::To {
                d.pick = if verifies(&next.from.path, &next.from.sha256) {
                    Pick::From
                } else {
                    Pick::Installed
                };
                d.alarm = None;
            }
        }
        if next.phase == Phase::RolledBack {
            warn!(reason = next.reason.as_deref().unwrap_or(""), to = %next.from.version, "rolled back");
        }
    }
    let s = d.state.as_ref().or(state.as_ref());
    let target = match (d.pick, s) {
        (Pick::To, Some(s)) => s.to.path.clone(),
        (Pick::From, Some(s)) => s.from.path.clone(),
        _ => installed.to_owned(),
    };
    if let Some(s) = s {
        // For people and tools; the state file is what the launcher trusts.
        let other = if d.pick == Pick::To {
            &s.from.path
        } else {
            &s.to.path
        };
        for (link, t) in [(layout.current(), &target), (layout.previous(), other)] {
            if let Err(e) = layout.point(&link, t) {
                warn!(error = %e, "cannot update {}", link.display());
            }
        }
    }
    info!(binary = %target.display(), pick = ?d.pick, watchdog_secs = ?d.alarm, "starting the agent");
    if let Some(secs) = d.alarm {
        nix::unistd::alarm::set(u32::try_from(secs).unwrap_or(u32::MAX));
    }
    use std::os::unix::process::CommandExt;
    let e = std::process::Command::new(&target)
        .args(args)
        .env(LAUNCHER_ENV, installed)
        .exec();
    nix::unistd::alarm::cancel();
    LaunchError::Exec {
        path: target,
        source: e,
    }
}

/// `baton-agent launch --record-exit`, run by the service manager after each exit of the
/// agent (`ExecStopPost=`): appends `EXIT_CODE`/`EXIT_STATUS` to the state during probation.
pub fn record_exit(data_dir: &Path) -> Result<(), LaunchError> {
    let path = Layout::new(data_dir).state_file();
    let Some(mut s) = UpdateState::load(&path)? else {
        return Ok(());
    };
    // `starts == 0`: the exit of the old agent that just switched, not of the new one.
    if s.phase != Phase::Probation || s.starts == 0 {
        return Ok(());
    }
    let var = |k| std::env::var(k).unwrap_or_default();
    let rec = ExitRecord {
        boot_id: boot_id(),
        uptime: uptime(),
        code: var("EXIT_CODE"),
        status: var("EXIT_STATUS"),
    };
    info!(exit = %rec.describe(), "the agent on probation exited");
    s.exits.push(rec);
    let excess = s.exits.len().saturating_sub(MAX_EXITS);
    s.exits.drain(..excess);
    s.store(&path)?;
    Ok(())
}

#[cfg(test)]
#[path = "launcher_tests.rs"]
mod tests;
