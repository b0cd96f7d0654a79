//! Waiting for containers' processes (see the module docs of [`super`]): a reaper per
//! container we started (`waitpid` on its init), a watcher per container we adopted (polling
//! `/proc`), both on [`Watchers`] threads; and reaping what a failed create cloned.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::cgroup::CgroupLayout;
use super::{io_err, lock, YoukiRuntime, LIBCONTAINER};
use crate::runtime::{ContainerId, ExecOutcome, ExitEvent, ExitReason, RuntimeError};

/// How long the processes of a failed create may take to exit before they are killed.
const FAILED_BUILD_WAIT: Duration = Duration::from_secs(2);
/// How often the watcher of an adopted container checks that its init still runs.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// A job for a [`Watchers`] thread: wait for one container's init and report its exit.
type WatchJob = Box<dyn FnOnce() + Send>;

/// The threads that wait for containers' inits, reused and never ended. Rust's runtime takes
/// a process-wide lock whenever a thread starts or ends (its stack-guard registry), and a
/// child libcontainer clones off this process while another thread holds that lock hangs in
/// its `exit` forever (gdb: `youki:[1:INTER]` in `thread_info::delete_current_info`), and
/// the create with it. So no watcher thread ends, and a new one starts only under
/// [`LIBCONTAINER`], fully started before the lock is released. (`baton-agent` holds the
/// tokio blocking pool to the same rule: started up front, never shrinking.)
#[derive(Default, Clone)]
pub(super) struct Watchers {
    idle: Arc<Mutex<Vec<mpsc::Sender<WatchJob>>>>,
}

impl Watchers {
    fn run(&self, mut job: WatchJob) -> io::Result<()> {
        loop {
            let Some(worker) = lock(&self.idle).pop() else {
                break;
            };
            match worker.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(back)) => job = back, // that thread is gone (a panic)
            }
        }
        let (tx, rx) = mpsc::channel::<WatchJob>();
        let (idle, me) = (self.idle.clone(), tx.clone());
        {
            let _clones = lock(&LIBCONTAINER);
            crate::runtime::spawn_started("watch", move || {
                while let Ok(job) = rx.recv() {
                    job();
                    lock(&idle).push(me.clone());
                }
            })?;
        }
        tx.send(job)
            .map_err(|_| io::Error::other("a new watcher thread ended at once"))
    }
}

impl YoukiRuntime {
    /// Watches an init that is not our child (see the module docs of [`super`]) and reports
    /// its exit.
    pub(super) fn start_watcher(
        &self,
        id: ContainerId,
        pid: u32,
        start_time: u64,
        cgroup_path: Option<PathBuf>,
    ) -> Result<(), RuntimeError> {
        self.on_exit(id, "adopted container exited", move |layout| {
            while proc_info(pid).is_some_and(|p| !p.zombie && p.start_time == start_time) {
                std::thread::sleep(WATCH_EVERY);
            }
            let oom = cgroup_path
                .as_deref()
                .and_then(|cg| layout.oom_kills(cg))
                .unwrap_or(0)
                > 0;
            if oom {
                ExitReason::OomKilled
            } else {
                ExitReason::Exited(-1)
            }
        })
    }

    pub(super) fn start_reaper(
        &self,
        id: ContainerId,
        pid: Pid,
        cgroup_path: PathBuf,
    ) -> Result<(), RuntimeError> {
        let who = id.clone();
        self.on_exit(id, "container exited", move |layout| {
            let status = loop {
                match waitpid(pid, None) {
                    Err(Errno::EINTR) => continue,
                    other => break other,
                }
            };
            let reason = match status {
                Ok(WaitStatus::Exited(_, code)) => ExitReason::Exited(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => ExitReason::Signaled(sig as i32),
                other => {
                    tracing::error!(container = %who, status = ?other, "cannot collect container exit status");
                    ExitReason::Exited(-1)
                }
            };
            // Anything but a clean exit after an OOM kill in the cgroup is blamed on the OOM,
            // as kubelet does (a shell whose child was OOM-killed exits 137, not SIGKILL).
            let oom = layout.oom_kills(&cgroup_path).unwrap_or(0) > 0;
            match reason {
                ExitReason::Exited(0) => reason,
                _ if oom => ExitReason::OomKilled,
                _ => reason,
            }
        })
    }

    /// Runs `wait` on a watcher thread until the container is gone, then finishes its log
    /// and reports the exit; `delete` waits for that report through `reaped`.
    fn on_exit(
        &self,
        id: ContainerId,
        what: &'static str,
        wait: impl FnOnce(&CgroupLayout) -> ExitReason + Send + 'static,
    ) -> Result<(), RuntimeError> {
        let (done_tx, done_rx) = mpsc::channel();
        let exits = self.exits.clone();
        let layout = self.layout.clone();
        let rotator = self.logs.clone();
        let key = id.clone();
        self.watchers
            .run(Box::new(move || {
                let reason = wait(&layout);
                rotator.finish(id.as_str());
                tracing::debug!(container = %id, ?reason, "{what}");
                let _ = exits.send(ExitEvent { id, reason });
                let _ = done_tx.send(());
            }))
            .map_err(io_err(Path::new("/proc/self/task")))?;
        lock(&self.reaped).insert(key, done_rx);
        Ok(())
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
    use nix::sys::wait::WaitPidFlag;
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
