//! [`Runtime`] on youki's libcontainer, in-process.
//!
//! Architecture invariant: this module and its children (`youki/`) are the only code that
//! imports libcontainer and libcgroups.
//!
//! Layout under `state_dir`:
//! - `containers/<id>/`: libcontainer's own state (what `list` reads, what `Container::load`
//!   finds again after an agent restart);
//! - `bundles/<id>/config.json`: the OCI spec we generated. The agent puts bundles on a tmpfs
//!   instead ([`YoukiRuntime::with_bundles_dir`], [`super::tmpfs_bundles_dir`]): they hold
//!   the containers' environment, secret values included.
//!
//! Processes: the libcontainer calls that clone (create + start, and exec for probes) run
//! in the runtime helper, a fresh single-threaded process per operation: this binary run
//! again as `<binary> runtime-op` ([`op`]). Below, "Why a helper". The others (load, kill,
//! delete, list) clone nothing and run on the caller's thread (in `baton-agent`, its tokio
//! blocking pool); [`CGROUP_TREE`] orders creates before the pruning of empty cgroups.
//!
//! Threads: one [`Reaper`] thread waits for every container (no thread per container), and
//! one more, `logs::Rotator`'s, bounds every container's log. Both end with the runtime.
//!
//! Reaping: libcontainer clones the container's init with `CLONE_PARENT`, so the init is the
//! helper's child; when the helper exits, the init is reparented to the agent, which makes
//! itself a child subreaper for this (`PR_SET_CHILD_SUBREAPER`). So once the helper's reply
//! is in, the init is *our* child and nobody else will reap it. The reaper thread wakes on
//! SIGCHLD and tries `waitpid(pid, WNOHANG)` for each init it watches, then reads the
//! cgroup's OOM counter (before `delete` can remove the cgroup), settles the log, and sends
//! the [`ExitEvent`]. Waiting by pid matters: a `waitpid(-1)` loop would steal the exit
//! statuses of other children of the agent (`ip` commands run by the network module, the
//! helpers themselves). Why SIGCHLD and not a pidfd per container: it needs no `unsafe` and
//! no Linux 5.3 (nix 0.29 and tokio offer no safe `pidfd_open`, and some ARM vendor kernels
//! are older), and it costs one `waitpid` per watched init per SIGCHLD of the agent.
//!
//! Adoption: after an agent restart the containers an earlier agent started still run, but
//! their inits are no longer our children (they were reparented to init or a subreaper), so
//! `waitpid` cannot watch them. [`Runtime::adopt`] hands each to the reaper, which polls the
//! init once a second instead: it is gone when `/proc/<pid>/stat` disappears, shows a zombie,
//! or shows another start time (the pid was reused). The exit code is then unknown (`-1`)
//! unless the cgroup's OOM counter blames the OOM killer. The cost is one small `/proc` read
//! per adopted container per second and up to a second of latency in noticing the exit. The
//! agent stays the only supervisor: there is no shim per container.
//!
//! Logs: the container's stdout and stderr are its log file (see `logs`), so the container
//! never depends on the agent to write its output.
//!
//! Why a helper: libcontainer starts the container's processes with a raw `clone3` syscall
//! (or libc's `clone` where the kernel lacks it), not `fork`, and the child runs Rust code (it
//! allocates, may log, sets up the environment) until it execs. Only the cloning thread
//! exists in the child: a lock another thread held at the clone stays locked there forever,
//! and no `pthread_atfork` handler or libc fork hook runs to release it. Cloned off the
//! multi-threaded agent, children hung on glibc's malloc arena lock, Rust's environment lock,
//! Rust's thread registry lock (a thread starting or ending) and the log writer's lock, and
//! each workaround (mimalloc, threads that never end, no logging in builds, a process-wide
//! clone lock) left the next lazy lock to hang a create again. The helper has one thread, so
//! no lock can be held at the clone. Spawning it is `fork` + `exec` by std, which is safe from
//! any thread. [`ExplicitEnvExecutor`] stays: it also loads an exec'd process's seccomp filter.

mod attach;
mod cgroup;
mod executor;
pub mod op;
mod reap;
mod spec;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, RwLock, RwLockWriteGuard};
use std::time::Duration;

use libcontainer::container::{Container, ContainerStatus};
use libcontainer::error::LibcontainerError;
use libcontainer::signal::Signal;
use tokio::sync::mpsc::UnboundedSender;

use super::logs;
use super::{
    Adopted, Attached, ContainerId, ExecIo, ExecOutcome, ExitEvent, Operation, RunSpec, Runtime,
    RuntimeError,
};
use cgroup::{in_cgroup, remove_empty_cgroup, CgroupLayout};
use executor::handle_sigpipe;
use op::{Reply, Request};
use reap::{proc_info, ProcInfo, Reaper};
use spec::warn_without_seccomp;

/// How long `delete` waits for the reaper after SIGKILL before removing state anyway.
const REAP_WAIT: Duration = Duration::from_secs(10);
/// How long [`retry_transient`] keeps retrying (1 + 2 + ... + 128 ms, about 0.25 s).
const RETRY_CAP: Duration = Duration::from_millis(200);
/// How long a create + start in the runtime helper may take before it counts as hung.
const RUN_DEADLINE: Duration = Duration::from_secs(120);
/// How much longer than its timeout an exec in the runtime helper may take.
const EXEC_SLACK: Duration = Duration::from_secs(60);

pub struct YoukiRuntime {
    containers_dir: PathBuf,
    bundles_dir: PathBuf,
    layout: CgroupLayout,
    /// Per container we started or adopted: fires once its reaper (or watcher) has sent the
    /// exit event.
    reaped: Mutex<HashMap<ContainerId, mpsc::Receiver<()>>>,
    /// Bounds the log files of running containers.
    logs: Arc<logs::Rotator>,
    /// The thread that waits for every container's init.
    reaper: Reaper,
    /// The binary run as the runtime helper (`<helper> runtime-op`, see [`op`]).
    helper: PathBuf,
}

/// Orders cgroup creation (a create in the runtime helper) before pruning of empty parents
/// (in `delete`), across every `YoukiRuntime` of the process, so a prune never removes a
/// parent that a concurrent create just made.
static CGROUP_TREE: Mutex<()> = Mutex::new(());

/// libcontainer rewrites `state.json` in place (truncate, then write) on every kill and
/// delete, and `Container::load` reads `/proc/<pid>/stat` after opening `/proc/<pid>`. So a
/// load racing a kill on another thread can read a half-written file, and one racing the
/// init's exit fails to stat it. Both pass within milliseconds; a failed load in `delete`
/// used to leave a stopped pod's container and cgroup behind.
fn load(dir: &Path, id: &ContainerId) -> Result<Container, RuntimeError> {
    retry_transient(dir, || load_once(dir)).map_err(backend(Operation::Load, id))
}

fn load_once(dir: &Path) -> Result<Container, LibcontainerError> {
    let _reading = STATE_FILES.read().unwrap_or_else(|e| e.into_inner());
    Container::load(dir.to_owned())
}

/// Orders this process's own rewrites of `state.json` (a kill saves the state) before and
/// after loads, so a load never reads a kill's half-written file. The retries above cover
/// what is not ours to lock (an init's exit); they alone were not enough when the disk
/// stalled the writer between truncate and write for longer than they wait (CI under load).
static STATE_FILES: RwLock<()> = RwLock::new(());

/// The lock a rewrite of a container's `state.json` holds (see [`STATE_FILES`]).
fn writing_state() -> RwLockWriteGuard<'static, ()> {
    STATE_FILES.write().unwrap_or_else(|e| e.into_inner())
}

/// Runs `op` again after 1, 2, 4, ... ms (at most [`RETRY_CAP`] in all) while it fails and
/// the container's state directory `dir` still exists; the last error otherwise.
fn retry_transient<T, E>(dir: &Path, mut op: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let mut pause = Duration::from_millis(1);
    loop {
        match op() {
            Err(_) if pause < RETRY_CAP && dir.exists() => {
                std::thread::sleep(pause);
                pause *= 2;
            }
            done => return done,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.to_owned(),
        source,
    }
}

fn backend<E>(op: Operation, id: &ContainerId) -> impl FnOnce(E) -> RuntimeError + '_
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| RuntimeError::Backend {
        op,
        id: id.clone(),
        source: Box::new(e),
    }
}

/// A poisoned lock only means a thread panicked while holding it; the guarded data is still
/// consistent (a map of receivers, or nothing at all).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl YoukiRuntime {
    pub fn new(
        state_dir: PathBuf,
        exits: UnboundedSender<ExitEvent>,
    ) -> Result<Self, RuntimeError> {
        let bundles_dir = state_dir.join("bundles");
        Self::with_bundles_dir(state_dir, bundles_dir, exits)
    }

    /// [`YoukiRuntime::new`], with the bundles somewhere else than the state directory.
    pub fn with_bundles_dir(
        state_dir: PathBuf,
        bundles_dir: PathBuf,
        exits: UnboundedSender<ExitEvent>,
    ) -> Result<Self, RuntimeError> {
        let containers_dir = state_dir.join("containers");
        for d in [&containers_dir, &bundles_dir] {
            fs::create_dir_all(d).map_err(io_err(d))?;
        }
        handle_sigpipe().map_err(io_err(Path::new("SIGPIPE")))?;
        warn_without_seccomp();
        // The inits are cloned by the runtime helper; when it exits they become ours.
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| io_err(Path::new("PR_SET_CHILD_SUBREAPER"))(e.into()))?;
        let layout = CgroupLayout::detect();
        let logs = logs::Rotator::start().map_err(io_err(Path::new("/proc/self/task")))?;
        let reaper = Reaper::start(exits, layout.clone(), logs.clone())
            .map_err(io_err(Path::new("/proc/self/task")))?;
        Ok(Self {
            containers_dir,
            bundles_dir,
            layout,
            reaped: Mutex::new(HashMap::new()),
            logs,
            reaper,
            helper: PathBuf::from("/proc/self/exe"),
        })
    }

    /// Runs `helper runtime-op` for the operations that clone (see [`op`]) instead of this
    /// process's own binary: for test and bench binaries, which cannot serve them.
    pub fn with_helper(mut self, helper: impl Into<PathBuf>) -> Self {
        self.helper = helper.into();
        self
    }

    fn call(
        &self,
        req: &Request,
        deadline: Duration,
        op: Operation,
        id: &ContainerId,
    ) -> Result<Reply, RuntimeError> {
        match op::call(&self.helper, req, deadline) {
            Ok(Reply::Failed { op, error }) => Err(RuntimeError::Backend {
                op: op.into(),
                id: id.clone(),
                source: error.into(),
            }),
            Ok(reply) => Ok(reply),
            Err(e) => Err(backend(op, id)(e)),
        }
    }

    /// The libcontainer state directory of `id` (exists while the runtime has state for it).
    pub fn container_dir(&self, id: &ContainerId) -> PathBuf {
        self.containers_dir.join(id.as_str())
    }

    /// Pid of the container's init, if the runtime has state for it and it is still running.
    pub fn pid(&self, id: &ContainerId) -> Result<Option<u32>, RuntimeError> {
        let dir = self.container_dir(id);
        if !dir.exists() {
            return Ok(None);
        }
        let mut c = load(&dir, id)?;
        c.refresh_status().map_err(backend(Operation::Load, id))?;
        Ok(match c.status() {
            ContainerStatus::Stopped => None,
            _ => c.pid().and_then(|p| u32::try_from(p.as_raw()).ok()),
        })
    }

    /// Loads the container's state and checks its init against `/proc` and its cgroup.
    fn inspect(&self, id: &ContainerId) -> Result<Option<Inspected>, RuntimeError> {
        let dir = self.container_dir(id);
        if !dir.exists() {
            return Ok(None);
        }
        // `load` refreshes the status from /proc already.
        let c = load(&dir, id)?;
        let cgroup_path = c.spec().ok().map(|cfg| cfg.cgroup_path);
        let pid = c
            .pid()
            .and_then(|p| u32::try_from(p.as_raw()).ok())
            .unwrap_or(0);
        let proc = (pid > 0).then(|| proc_info(pid)).flatten();
        // Only a started container runs its command. One left `Created` (the previous agent
        // died between create and start) has an init alive in its cgroup that still waits
        // to exec, forever: adopting it would report Running for a pod that serves nothing,
        // so it counts as not running and is removed and started afresh.
        let running = matches!(
            c.status(),
            ContainerStatus::Running | ContainerStatus::Paused
        ) && proc.is_some_and(|p| !p.zombie)
            && cgroup_path.as_deref().is_some_and(|cg| in_cgroup(pid, cg));
        let created_at_ms = c
            .created()
            .and_then(|t| u64::try_from(t.timestamp_millis()).ok());
        Ok(Some(Inspected {
            adopted: Adopted {
                pid,
                running,
                created_at_ms,
            },
            cgroup_path,
            proc,
        }))
    }

    /// Removes the now empty parents of a deleted container's cgroup, but never the first path
    /// component: that one is shared by every agent on the machine (e.g. `baton/`), and another
    /// agent process may be creating a child in it right now.
    fn prune_cgroup_parents(&self, cgroup_path: &Path) {
        let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
        let mut parent = rel.parent();
        while let Some(p) = parent {
            if p.components().count() < 2 {
                break;
            }
            for dir in self.layout.dirs(p) {
                if !remove_empty_cgroup(&dir) {
                    return; // a sibling container is still there
                }
            }
            parent = p.parent();
        }
    }

    /// Removes what a failed or finished container left of the bundle.
    fn remove_bundle(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        let dir = self.bundles_dir.join(id.as_str());
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&dir)(e)),
            _ => Ok(()),
        }
    }

    fn create_and_start(&self, spec: &RunSpec, bundle: &Path) -> Result<u32, RuntimeError> {
        let id = &spec.id;
        let req = Request::Run {
            id: id.to_string(),
            containers_dir: self.containers_dir.clone(),
            bundle: bundle.to_owned(),
            log_path: spec.log_path.clone(),
        };
        let reply = {
            let _tree = lock(&CGROUP_TREE);
            self.call(&req, RUN_DEADLINE, Operation::Create, id)
        };
        let pid = match reply {
            Ok(Reply::Started { pid }) => pid,
            Ok(other) => {
                return Err(RuntimeError::Backend {
                    op: Operation::Create,
                    id: id.clone(),
                    source: format!("unexpected reply {other:?}").into(),
                })
            }
            Err(e) => {
                // The helper reaped the init of a failed start; its state is left to remove.
                if matches!(
                    e,
                    RuntimeError::Backend {
                        op: Operation::Start,
                        ..
                    }
                ) {
                    if let Err(del) = self.delete(id) {
                        tracing::warn!(container = %id, error = %del, "cleanup after failed start failed");
                    }
                }
                return Err(e);
            }
        };
        let pid = u32::try_from(pid).map_err(|e| RuntimeError::Backend {
            op: Operation::Create,
            id: id.clone(),
            source: Box::new(e),
        })?;
        self.logs
            .watch(id.as_str(), spec.log_path.clone(), spec.log_max_bytes);
        // The helper has exited: the init is our child now (we are its subreaper).
        self.start_reaper(id.clone(), pid, spec.cgroup_path.clone())?;
        Ok(pid)
    }
}

/// Removes the `tenant-notify-*.sock` files libcontainer's tenant builder leaves.
pub(super) fn remove_tenant_sockets(container_dir: &Path) {
    let Ok(rd) = fs::read_dir(container_dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with("tenant-") {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// What `state` found, plus what `adopt` needs to watch the container.
struct Inspected {
    adopted: Adopted,
    cgroup_path: Option<PathBuf>,
    proc: Option<ProcInfo>,
}

impl Runtime for YoukiRuntime {
    #[tracing::instrument(skip_all, fields(container = %spec.id))]
    fn run(&self, spec: &RunSpec) -> Result<u32, RuntimeError> {
        spec.validate()?;
        let id = &spec.id;
        if self.container_dir(id).exists() {
            return Err(RuntimeError::AlreadyExists(id.clone()));
        }
        let oci = Self::build_spec(spec)?;
        let bundle = self.bundles_dir.join(id.as_str());
        fs::create_dir_all(&bundle).map_err(io_err(&bundle))?;
        let config = bundle.join("config.json");
        if let Err(e) = oci.save(&config) {
            let _ = self.remove_bundle(id);
            return Err(backend(Operation::Create, id)(e));
        }
        match self.create_and_start(spec, &bundle) {
            Ok(pid) => {
                tracing::info!(pid, "container started");
                Ok(pid)
            }
            Err(e) => {
                // libcontainer already removed its own state after a failed build.
                let _ = self.remove_bundle(id);
                Err(e)
            }
        }
    }

    fn kill(&self, id: &ContainerId, signal: i32) -> Result<(), RuntimeError> {
        let dir = self.container_dir(id);
        if !dir.exists() {
            return Err(RuntimeError::NotFound(id.clone()));
        }
        let mut c = load(&dir, id)?;
        c.refresh_status().map_err(backend(Operation::Load, id))?;
        // The pid namespace dies with its init, so a stopped init means nothing is left to signal.
        if c.status() == ContainerStatus::Stopped {
            return Err(RuntimeError::NotRunning(id.clone()));
        }
        if signal == 0 {
            return Ok(());
        }
        let sig = Signal::try_from(signal).map_err(backend(Operation::Kill, id))?;
        let _writing = writing_state();
        c.kill(sig, true).map_err(backend(Operation::Kill, id))
    }

    #[tracing::instrument(skip_all, fields(container = %id))]
    fn delete(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        let dir = self.container_dir(id);
        let reaper = lock(&self.reaped).remove(id);
        if dir.exists() {
            let mut c = load(&dir, id)?;
            let cgroup_path = c.spec().ok().map(|cfg| cfg.cgroup_path);
            // Kill first and let our reaper report the exit (and read the OOM counter) before
            // the cgroup disappears. Errors are fine here: delete(force) kills again.
            let killed = {
                let _writing = writing_state();
                c.kill(Signal::from(nix::sys::signal::Signal::SIGKILL), true)
            };
            if let Err(e) = killed {
                tracing::debug!(error = %e, "kill before delete failed");
            }
            if let Some(rx) = &reaper {
                if rx.recv_timeout(REAP_WAIT).is_err() {
                    tracing::warn!("container init not reaped in time; deleting anyway");
                }
            }
            // `delete` refreshes the status from /proc first, which can race the init's exit
            // as `load` does: retry, on fresh state. Gone means deleted (it goes last).
            let deleted = retry_transient(&dir, || {
                let r = {
                    let _tree = lock(&CGROUP_TREE);
                    let _writing = writing_state();
                    c.delete(true)
                };
                if r.is_err() {
                    if let Ok(fresh) = load_once(&dir) {
                        c = fresh;
                    }
                }
                r
            });
            if let Err(e) = deleted {
                if dir.exists() {
                    return Err(backend(Operation::Delete, id)(e));
                }
            }
            if let Some(p) = cgroup_path {
                let _tree = lock(&CGROUP_TREE);
                self.prune_cgroup_parents(&p);
            }
            tracing::info!("container deleted");
        }
        self.logs.forget(id.as_str());
        self.remove_bundle(id)
    }

    fn state(&self, id: &ContainerId) -> Result<Option<Adopted>, RuntimeError> {
        Ok(self.inspect(id)?.map(|i| i.adopted))
    }

    #[tracing::instrument(skip_all, fields(container = %id))]
    fn adopt(
        &self,
        id: &ContainerId,
        log_path: &Path,
        log_max_bytes: u64,
    ) -> Result<Adopted, RuntimeError> {
        let Some(found) = self.inspect(id)? else {
            return Err(RuntimeError::NotFound(id.clone()));
        };
        let (true, Some(proc)) = (found.adopted.running, found.proc) else {
            return Err(RuntimeError::NotRunning(id.clone()));
        };
        if lock(&self.reaped).contains_key(id) {
            // Started or adopted by this process already: it is being watched.
            return Ok(found.adopted);
        }
        self.logs
            .watch(id.as_str(), log_path.to_owned(), log_max_bytes);
        self.start_watcher(
            id.clone(),
            found.adopted.pid,
            proc.start_time,
            found.cgroup_path,
        )?;
        tracing::info!(pid = found.adopted.pid, "container adopted");
        Ok(found.adopted)
    }

    /// Through libcontainer's tenant builder, as `youki exec` does: it joins the init's
    /// namespaces and cgroup, applies the container's capabilities and chroots to its root, so
    /// the command sees exactly what the container sees. Chosen over a hand-made setns+chroot
    /// child, which would need `unsafe` fork code and would miss the cgroup and capabilities.
    /// It runs in the runtime helper ([`op`]): the tenant is cloned with `CLONE_PARENT` like
    /// the init, so it is the helper's child, and the helper waits for it until `timeout`.
    #[tracing::instrument(skip_all, fields(container = %id))]
    fn exec(
        &self,
        id: &ContainerId,
        args: &[String],
        timeout: Duration,
    ) -> Result<ExecOutcome, RuntimeError> {
        if args.is_empty() {
            return Err(RuntimeError::InvalidSpec {
                id: id.clone(),
                reason: "exec needs a command".into(),
            });
        }
        let dir = self.container_dir(id);
        if !dir.exists() {
            return Err(RuntimeError::NotFound(id.clone()));
        }
        let c = load(&dir, id)?;
        if c.status() != ContainerStatus::Running {
            return Err(RuntimeError::NotRunning(id.clone()));
        }
        let req = Request::Exec {
            id: id.to_string(),
            containers_dir: self.containers_dir.clone(),
            config: self.bundles_dir.join(id.as_str()).join("config.json"),
            args: args.to_vec(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        match self.call(&req, timeout + EXEC_SLACK, Operation::Exec, id)? {
            Reply::Exec { exit: Some(code) } => Ok(ExecOutcome::Exited(code)),
            Reply::Exec { exit: None } => Ok(ExecOutcome::TimedOut),
            other => Err(RuntimeError::Backend {
                op: Operation::Exec,
                id: id.clone(),
                source: format!("unexpected reply {other:?}").into(),
            }),
        }
    }

    /// As `exec`, in a helper that stays until the command ends ([`attach`]).
    #[tracing::instrument(skip_all, fields(container = %id))]
    fn exec_attached(
        &self,
        id: &ContainerId,
        args: &[String],
        io: ExecIo,
    ) -> Result<Attached, RuntimeError> {
        if args.is_empty() {
            return Err(RuntimeError::InvalidSpec {
                id: id.clone(),
                reason: "exec needs a command".into(),
            });
        }
        let dir = self.container_dir(id);
        if !dir.exists() {
            return Err(RuntimeError::NotFound(id.clone()));
        }
        if load(&dir, id)?.status() != ContainerStatus::Running {
            return Err(RuntimeError::NotRunning(id.clone()));
        }
        let (tty, pipes) = match io {
            ExecIo::Pipes {
                stdin,
                stdout,
                stderr,
            } => (None, Some([stdin, stdout, stderr])),
            ExecIo::Tty { rows, cols } => (Some((rows, cols)), None),
        };
        let req = Request::Attach {
            id: id.to_string(),
            containers_dir: self.containers_dir.clone(),
            config: self.bundles_dir.join(id.as_str()).join("config.json"),
            args: args.to_vec(),
            tty,
        };
        let mut running = match attach::start(&self.helper, &req, pipes) {
            Ok(Ok(r)) => r,
            Ok(Err(Reply::Failed { op, error })) => {
                return Err(RuntimeError::Backend {
                    op: op.into(),
                    id: id.clone(),
                    source: error.into(),
                })
            }
            Ok(Err(other)) => {
                return Err(RuntimeError::Backend {
                    op: Operation::Exec,
                    id: id.clone(),
                    source: format!("unexpected reply {other:?}").into(),
                })
            }
            Err(e) => return Err(backend(Operation::Exec, id)(e)),
        };
        let socket = running.socket.clone();
        let pty = running.pty.take();
        let wait_id = id.clone();
        Ok(Attached {
            pty,
            wait: Box::new(move || match running.wait() {
                Ok(Reply::Exec { exit: Some(code) }) => Ok(code),
                Ok(Reply::Failed { op, error }) => Err(RuntimeError::Backend {
                    op: op.into(),
                    id: wait_id,
                    source: error.into(),
                }),
                Ok(other) => Err(RuntimeError::Backend {
                    op: Operation::Exec,
                    id: wait_id,
                    source: format!("unexpected reply {other:?}").into(),
                }),
                Err(e) => Err(backend(Operation::Exec, &wait_id)(e)),
            }),
            kill: Arc::new(move || attach::kill(&socket)),
        })
    }

    fn list(&self) -> Result<Vec<ContainerId>, RuntimeError> {
        let rd = fs::read_dir(&self.containers_dir).map_err(io_err(&self.containers_dir))?;
        let mut ids = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err(&self.containers_dir))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| ContainerId::new(n).ok())
            {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn memory_working_set(&self, rel: &Path) -> Option<u64> {
        self.layout
            .working_set(rel.strip_prefix("/").unwrap_or(rel))
    }

    fn cpu_usage_ns(&self, rel: &Path) -> Option<u64> {
        self.layout
            .cpu_usage_ns(rel.strip_prefix("/").unwrap_or(rel))
    }

    fn pids_current(&self, rel: &Path) -> Option<u64> {
        self.layout.pids(rel.strip_prefix("/").unwrap_or(rel))
    }

    fn remove_cgroup_tree(&self, rel: &Path) -> Vec<PathBuf> {
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        self.layout
            .dirs(rel)
            .iter()
            .flat_map(|d| cgroup::remove_cgroup_tree(d))
            .collect()
    }
}
