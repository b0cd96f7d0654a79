//! Waiting for containers' processes (see the module docs of [`super`]): one [`Reaper`]
//! thread for all of them (`waitpid` on the inits that are our children, polling `/proc`
//! for the adopted ones); and reaping what a failed create or exec cloned.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::mpsc::UnboundedSender;

use super::cgroup::CgroupLayout;
use super::{io_err, lock, YoukiRuntime};
use crate::runtime::logs::Rotator;
use crate::runtime::{ContainerId, ExecOutcome, ExitEvent, ExitReason, RuntimeError};

/// How long the processes of a failed create may take to exit before they are killed.
const FAILED_BUILD_WAIT: Duration = Duration::from_secs(2);
/// How often the reaper checks that adopted inits still run (and, as a safety net, looks
/// at its own children without waiting for a SIGCHLD).
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// One container's init to wait for.
struct Watch {
    id: ContainerId,
    pid: u32,
    /// `None`: our child (reaped on SIGCHLD); `Some(start time)`: an adopted init, not our
    /// child, polled in `/proc` (see the module docs of [`super`]).
    adopted: Option<u64>,
    cgroup_path: Option<PathBuf>,
    done: mpsc::Sender<()>,
}

/// What the reaper thread needs to report an exit.
struct Reporter {
    exits: UnboundedSender<ExitEvent>,
    layout: CgroupLayout,
    logs: Arc<Rotator>,
}

/// The one thread that waits for every container's init: woken by SIGCHLD, it reaps the
/// inits that are our children *by pid* (never `waitpid(-1)`, which would steal the exit
/// statuses of the agent's other children: `ip` commands, runtime helpers), and once a
/// second it polls the adopted ones in `/proc`. It ends when the runtime is dropped.
pub(super) struct Reaper {
    jobs: tokio::sync::mpsc::UnboundedSender<Watch>,
}

impl Reaper {
    pub(super) fn start(
        exits: UnboundedSender<ExitEvent>,
        layout: CgroupLayout,
        logs: Arc<Rotator>,
    ) -> io::Result<Self> {
        let (jobs, rx) = tokio::sync::mpsc::unbounded_channel();
        // A runtime of its own: tokio's SIGCHLD listener is the safe way to be woken, and
        // the runtime may be made outside of any (tests, benches).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let sigchld = {
            let _in = rt.enter();
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?
        };
        let reporter = Reporter {
            exits,
            layout,
            logs,
        };
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || rt.block_on(reap_loop(rx, sigchld, reporter)))?;
        Ok(Self { jobs })
    }

    fn watch(&self, w: Watch) -> io::Result<()> {
        self.jobs
            .send(w)
            .map_err(|_| io::Error::other("the reaper thread is gone"))
    }
}

async fn reap_loop(
    mut jobs: tokio::sync::mpsc::UnboundedReceiver<Watch>,
    mut sigchld: tokio::signal::unix::Signal,
    reporter: Reporter,
) {
    let mut watched: Vec<Watch> = Vec::new();
    let mut tick = tokio::time::interval(WATCH_EVERY);
    loop {
        let poll_adopted = tokio::select! {
            _ = sigchld.recv() => false,
            _ = tick.tick() => true,
            job = jobs.recv() => match job {
                Some(w) => { watched.push(w); false }
                None => return,
            },
        };
        while let Ok(w) = jobs.try_recv() {
            watched.push(w);
        }
        let mut i = 0;
        while i < watched.len() {
            match check(&mut watched[i], poll_adopted) {
                Some(reason) => reporter.report(watched.swap_remove(i), reason),
                None => i += 1,
            }
        }
    }
}

/// `Some` once the init has exited (and, if ours, was reaped).
fn check(w: &mut Watch, poll_adopted: bool) -> Option<ExitReason> {
    let Some(start_time) = w.adopted else {
        let pid = Pid::from_raw(i32::try_from(w.pid).ok()?);
        return match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Some(ExitReason::Exited(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => Some(ExitReason::Signaled(sig as i32)),
            Err(Errno::ECHILD) => {
                // Not our child after all (another process reaped it, or we are no
                // subreaper): watch it as an adopted one.
                match proc_info(w.pid).filter(|p| !p.zombie) {
                    Some(p) => {
                        tracing::warn!(container = %w.id, pid = w.pid, "container init is not our child; polling it");
                        w.adopted = Some(p.start_time);
                        None
                    }
                    None => Some(ExitReason::Exited(-1)),
                }
            }
            Err(Errno::EINTR) | Ok(_) => None,
            Err(e) => {
                tracing::error!(container = %w.id, error = %e, "cannot collect container exit status");
                Some(ExitReason::Exited(-1))
            }
        };
    };
    if !poll_adopted {
        return None;
    }
    let alive = proc_info(w.pid).is_some_and(|p| !p.zombie && p.start_time == start_time);
    (!alive).then_some(ExitReason::Exited(-1))
}

impl Reporter {
    /// Blames the OOM killer where the cgroup says so, settles the log, reports the exit;
    /// `delete` waits for that report through `reaped`.
    fn report(&self, w: Watch, reason: ExitReason) {
        let oom = w
            .cgroup_path
            .as_deref()
            .and_then(|cg| self.layout.oom_kills(cg))
            .unwrap_or(0)
            > 0;
        // Anything but a clean exit after an OOM kill in the cgroup is blamed on the OOM, as
        // kubelet does (a shell whose child was OOM-killed exits 137, not SIGKILL).
        let reason = match reason {
            ExitReason::Exited(0) => reason,
            _ if oom => ExitReason::OomKilled,
            _ => reason,
        };
        self.logs.finish(w.id.as_str());
        let what = if w.adopted.is_some() {
            "adopted container exited"
        } else {
            "container exited"
        };
        tracing::debug!(container = %w.id, ?reason, "{what}");
        let _ = self.exits.send(ExitEvent { id: w.id, reason });
        let _ = w.done.send(());
    }
}

impl YoukiRuntime {
    /// Reports the exit of an init that is not our child (see the module docs of [`super`]).
    pub(super) fn start_watcher(
        &self,
        id: ContainerId,
        pid: u32,
        start_time: u64,
        cgroup_path: Option<PathBuf>,
    ) -> Result<(), RuntimeError> {
        self.on_exit(id, pid, Some(start_time), cgroup_path)
    }

    /// Reports the exit of an init that is our child.
    pub(super) fn start_reaper(
        &self,
        id: ContainerId,
        pid: u32,
        cgroup_path: PathBuf,
    ) -> Result<(), RuntimeError> {
        self.on_exit(id, pid, None, Some(cgroup_path))
    }

    fn on_exit(
        &self,
        id: ContainerId,
        pid: u32,
        adopted: Option<u64>,
        cgroup_path: Option<PathBuf>,
    ) -> Result<(), RuntimeError> {
        let (done, done_rx) = mpsc::channel();
        lock(&self.reaped).insert(id.clone(), done_rx);
        self.reaper
            .watch(Watch {
                id,
                pid,
                adopted,
                cgroup_path,
                done,
            })
            .map_err(io_err(Path::new("/proc/self/task")))
    }
}

/// The children of the calling thread, from `/proc/thread-self/children` (empty where the
/// kernel lacks `CONFIG_PROC_CHILDREN`).
pub(super) fn thread_children() -> Vec<Pid> {
    fs::read_to_string("/proc/thread-self/children")
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .map(Pid::from_raw)
                .collect()
        })
        .unwrap_or_default()
}

/// Reaps what a failed libcontainer build cloned: its error paths return without waiting
/// for the intermediate process (and the init, cloned with `CLONE_PARENT`, is ours too), so
/// every failed create left two zombies, `youki:[1:INTER]` and `youki:[2:INIT]`, forever.
/// Both are children of the thread that ran the build (a clone's parent is the cloning
/// thread, `CLONE_PARENT` passes that on), so the children of this thread that were not
/// there before the build (`before`) are exactly that build's: no other container's init
/// (watched by its reaper) and no other thread's `ip` command is touched. They exit once
/// libcontainer drops its ends of their pipes; one still alive after [`FAILED_BUILD_WAIT`]
/// is killed.
pub(super) fn reap_failed_build(before: &[Pid]) {
    for pid in thread_children() {
        if !before.contains(&pid) {
            let outcome = wait_with_timeout(pid, FAILED_BUILD_WAIT);
            tracing::debug!(%pid, ?outcome, "reaped a process of a failed create");
        }
    }
}

/// Waits for our child `pid` until `timeout`, then kills and reaps it.
pub(super) fn wait_with_timeout(pid: Pid, timeout: Duration) -> Result<ExecOutcome, Errno> {
    let deadline = std::time::Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ExecOutcome::Exited(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return Ok(ExecOutcome::Exited(128 + sig as i32))
            }
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
        if std::time::Instant::now() >= deadline {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            loop {
                match waitpid(pid, None) {
                    Err(Errno::EINTR) => continue,
                    _ => return Ok(ExecOutcome::TimedOut),
                }
            }
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

/// A container's init as found in `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProcInfo {
    /// Start time in clock ticks after boot (field 22 of `/proc/<pid>/stat`).
    pub(super) start_time: u64,
    pub(super) zombie: bool,
}

/// Reads `/proc/<pid>/stat`; `None` if there is no such process.
pub(super) fn proc_info(pid: u32) -> Option<ProcInfo> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    // `rest` starts at field 3 (state); start time is field 22.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcInfo {
        start_time,
        zombie: matches!(state, "Z" | "X" | "x"),
    })
}
