//! [`Runtime`] on youki's libcontainer, in-process.
//!
//! Architecture invariant: this is the only module that imports libcontainer and libcgroups.
//!
//! Layout under `state_dir`:
//! - `containers/<id>/`: libcontainer's own state (what `list` reads, what `Container::load`
//!   finds again after an agent restart);
//! - `bundles/<id>/config.json`: the OCI spec we generated. The agent puts bundles on a tmpfs
//!   instead ([`YoukiRuntime::with_bundles_dir`], [`super::tmpfs_bundles_dir`]): they hold
//!   the containers' environment, secret values included.
//!
//! Reaping: libcontainer clones the container's init with `CLONE_PARENT`, so the init is *our*
//! child and nobody else will reap it. Each container gets a small thread that blocks in
//! `waitpid(pid)`, then reads the cgroup's OOM counter (before `delete` can remove the cgroup),
//! settles the log, and sends the [`ExitEvent`]. A thread per container costs a few KiB of
//! stack; a single `waitpid(-1)` loop would instead steal the exit statuses of other children of
//! the agent (e.g. `ip` commands run by the network module).
//!
//! Adoption: after an agent restart the containers an earlier agent started still run, but
//! their inits are no longer our children (they were reparented to init or a subreaper), so
//! `waitpid` cannot watch them. [`Runtime::adopt`] starts a thread that polls the init once a
//! second instead: it is gone when `/proc/<pid>/stat` disappears, shows a zombie, or shows
//! another start time (the pid was reused). The exit code is then unknown (`-1`) unless the
//! cgroup's OOM counter blames the OOM killer. Why polling and not a pidfd: nix 0.29 and tokio
//! offer no safe `pidfd_open` (and `unsafe_code` is denied), and `pidfd_open` needs Linux 5.3,
//! newer than some ARM vendor kernels, so a polling fallback would be needed anyway. The cost is
//! one small `/proc` read per adopted container per second and up to a second of latency in
//! noticing the exit. The agent stays the only supervisor: there is no shim per container.
//!
//! Logs: the container's stdout and stderr are its log file (see `logs`), so the container
//! never depends on the agent to write its output.
//!
//! Caveat: libcontainer forks from a multi-threaded process, and a lock held by another thread
//! at fork time stays locked forever in the child. glibc makes `malloc` fork-safe. The lock that
//! bit us is Rust's environment lock: `Command::spawn` holds it (read) while forking, and
//! libcontainer's default executor clears and sets the environment (write) in the child, so an
//! `ip` command spawned during a container create hung the container's init for good. The
//! [`ExplicitEnvExecutor`] below never touches the process environment. What remains is narrow
//! (e.g. a logging writer's lock, taken only when the child logs); a single-threaded shim process
//! per container, as containerd does, would close it entirely.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Duration;

use libcgroups::common::{get_cgroup_setup, CgroupSetup, DEFAULT_CGROUP_ROOT};
use libcgroups::v1::util::{get_subsystem_mount_point, list_supported_mount_points};
use libcgroups::v1::ControllerType;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::oci_spec::runtime::{
    Arch as OciArch, Capabilities, Capability, LinuxCapabilities, LinuxCpuBuilder, LinuxDevice,
    LinuxDeviceCgroup, LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResources, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscallBuilder, Mount as OciMount, Root, Spec,
    User,
};
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::mpsc::UnboundedSender;

use super::{logs, seccomp};
use super::{
    Adopted, ContainerId, ExecOutcome, ExitEvent, ExitReason, Operation, RunSpec, Runtime,
    RuntimeError, Seccomp, Security, DEFAULT_CAPABILITIES,
};

/// CFS period used for CPU limits, as kubelet does.
const CPU_PERIOD_US: u64 = 100_000;
/// How long `delete` waits for the reaper after SIGKILL before removing state anyway.
const REAP_WAIT: Duration = Duration::from_secs(10);
/// How long [`retry_transient`] keeps retrying (1 + 2 + ... + 128 ms, about 0.25 s).
const RETRY_CAP: Duration = Duration::from_millis(200);
/// How long the processes of a failed create may take to exit before they are killed.
const FAILED_BUILD_WAIT: Duration = Duration::from_secs(2);
/// How often the watcher of an adopted container checks that its init still runs.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Where this host's cgroup directories are, to read OOM counters and to prune empty parents.
#[derive(Debug, Clone)]
enum CgroupLayout {
    /// Legacy or hybrid: one hierarchy per controller (libcgroups uses v1 then).
    V1 {
        memory: Option<PathBuf>,
        mounts: Vec<PathBuf>,
    },
    Unified {
        root: PathBuf,
    },
}

impl CgroupLayout {
    fn detect() -> Self {
        match get_cgroup_setup() {
            Ok(CgroupSetup::Unified) => Self::Unified {
                root: PathBuf::from(DEFAULT_CGROUP_ROOT),
            },
            other => {
                if let Err(e) = &other {
                    tracing::warn!(error = %e, "cannot detect cgroup setup; assuming v1");
                }
                let mut mounts: Vec<PathBuf> = list_supported_mount_points()
                    .map(|m| m.into_values().collect())
                    .unwrap_or_default();
                mounts.sort();
                mounts.dedup();
                Self::V1 {
                    memory: get_subsystem_mount_point(&ControllerType::Memory).ok(),
                    mounts,
                }
            }
        }
    }

    /// The directories that hold `rel` in every hierarchy.
    fn dirs(&self, rel: &Path) -> Vec<PathBuf> {
        match self {
            Self::V1 { mounts, .. } => mounts.iter().map(|m| m.join(rel)).collect(),
            Self::Unified { root } => vec![root.join(rel)],
        }
    }

    /// Number of OOM kills recorded in the cgroup at `rel`; `None` when unreadable.
    fn oom_kills(&self, rel: &Path) -> Option<u64> {
        let (file, key) = match self {
            Self::V1 { memory, .. } => (
                memory.as_ref()?.join(rel).join("memory.oom_control"),
                "oom_kill",
            ),
            Self::Unified { root } => (root.join(rel).join("memory.events"), "oom_kill"),
        };
        let text = fs::read_to_string(file).ok()?;
        text.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(key))
                .then(|| it.next().and_then(|v| v.parse().ok()))
                .flatten()
        })
    }
}

pub struct YoukiRuntime {
    containers_dir: PathBuf,
    bundles_dir: PathBuf,
    exits: UnboundedSender<ExitEvent>,
    layout: CgroupLayout,
    /// Per container we started or adopted: fires once its reaper (or watcher) has sent the
    /// exit event.
    reaped: Mutex<HashMap<ContainerId, mpsc::Receiver<()>>>,
    /// Bounds the log files of running containers.
    logs: Arc<logs::Rotator>,
    /// The threads that wait for containers' inits (reapers and watchers).
    watchers: Watchers,
}

/// Serialises libcontainer's create, start and delete across the whole process (every
/// `YoukiRuntime` instance). libcontainer `chdir`s into the container's state dir to bind and
/// connect its `notify.sock` by a short relative name, and the working directory is per
/// process: two concurrent creates bound each other's socket (`EADDRINUSE`) or started the
/// wrong container. The same lock orders cgroup creation (in `run`) before pruning of empty
/// parents (in `delete`), so a prune never removes a parent that a concurrent create just made.
/// Other agent code must not rely on the working directory (use absolute paths).
static LIBCONTAINER: Mutex<()> = Mutex::new(());

/// libcontainer rewrites `state.json` in place (truncate, then write) on every kill and
/// delete, and `Container::load` reads `/proc/<pid>/stat` after opening `/proc/<pid>`. So a
/// load racing a kill on another thread can read a half-written file, and one racing the
/// init's exit fails to stat it. Both pass within milliseconds; a failed load in `delete`
/// used to leave a stopped pod's container and cgroup behind.
fn load(dir: &Path, id: &ContainerId) -> Result<Container, RuntimeError> {
    retry_transient(dir, || Container::load(dir.to_owned())).map_err(backend(Operation::Load, id))
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
struct Watchers {
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
            super::spawn_started("watch", move || {
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
        Ok(Self {
            containers_dir,
            bundles_dir,
            exits,
            layout: CgroupLayout::detect(),
            reaped: Mutex::new(HashMap::new()),
            logs: {
                let _clones = lock(&LIBCONTAINER);
                logs::Rotator::start().map_err(io_err(Path::new("/proc/self/task")))?
            },
            watchers: Watchers::default(),
        })
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

    /// Watches an init that is not our child (see the module docs) and reports its exit.
    fn start_watcher(
        &self,
        id: ContainerId,
        pid: u32,
        start_time: u64,
        cgroup_path: Option<PathBuf>,
    ) -> Result<(), RuntimeError> {
        let (done_tx, done_rx) = mpsc::channel();
        let exits = self.exits.clone();
        let layout = self.layout.clone();
        let rotator = self.logs.clone();
        let key = id.clone();
        self.watchers
            .run(Box::new(move || {
                while proc_info(pid).is_some_and(|p| !p.zombie && p.start_time == start_time) {
                    std::thread::sleep(WATCH_EVERY);
                }
                let oom = cgroup_path
                    .as_deref()
                    .and_then(|cg| layout.oom_kills(cg))
                    .unwrap_or(0)
                    > 0;
                let reason = if oom {
                    ExitReason::OomKilled
                } else {
                    ExitReason::Exited(-1)
                };
                rotator.finish(id.as_str());
                tracing::debug!(container = %id, ?reason, "adopted container exited");
                let _ = exits.send(ExitEvent { id, reason });
                let _ = done_tx.send(());
            }))
            .map_err(io_err(Path::new("/proc/self/task")))?;
        lock(&self.reaped).insert(key, done_rx);
        Ok(())
    }

    fn build_spec(spec: &RunSpec) -> Result<Spec, RuntimeError> {
        let spec_err = backend(Operation::Create, &spec.id);
        let cap_names = capability_names(&spec.id, &spec.security)?;
        let mut oci = Spec::default();
        oci.set_hostname(Some(spec.hostname.clone()));

        let mut root = Root::default();
        root.set_path(spec.rootfs.clone())
            .set_readonly(Some(spec.security.read_only_root_filesystem));
        oci.set_root(Some(root));

        let mut process = oci.process().clone().unwrap_or_default();
        process
            .set_args(Some(spec.args.clone()))
            .set_env(Some(spec.env.clone()))
            .set_cwd(PathBuf::from(&spec.cwd))
            // k8s's allowPrivilegeEscalation is implied true for privileged containers.
            .set_no_new_privileges(Some(!spec.security.privileged))
            .set_capabilities(Some(capabilities(&spec.id, &cap_names)?));
        if spec.security.run_as_user.is_some() || spec.security.run_as_group.is_some() {
            let mut user = User::default();
            user.set_uid(spec.security.run_as_user.unwrap_or(0))
                .set_gid(spec.security.run_as_group.unwrap_or(0));
            process.set_user(user);
        }
        oci.set_process(Some(process));

        let mut mounts = oci.mounts().clone().unwrap_or_default();
        if spec.security.privileged {
            // Writable /sys and cgroupfs, as runc gives privileged containers.
            for m in mounts.iter_mut() {
                let d = m.destination().clone();
                if d == Path::new("/sys") || d == Path::new("/sys/fs/cgroup") {
                    let opts: Vec<String> = m
                        .options()
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|o| o != "ro")
                        .collect();
                    m.set_options(Some(opts));
                }
            }
        }
        for m in &spec.mounts {
            let mut opts = vec!["rbind".to_owned(), "rprivate".to_owned()];
            if m.read_only {
                opts.push("ro".to_owned());
            }
            let mut mount = OciMount::default();
            mount
                .set_destination(PathBuf::from(&m.destination))
                .set_typ(Some("bind".to_owned()))
                .set_source(Some(m.source.clone()))
                .set_options(Some(opts));
            mounts.push(mount);
        }
        oci.set_mounts(Some(mounts));

        let mut linux = oci.linux().clone().unwrap_or_default();
        // Absolute: relative to the cgroup roots, whichever process creates it.
        linux.set_cgroups_path(Some(Path::new("/").join(&spec.cgroup_path)));

        let mut namespaces = linux.namespaces().clone().unwrap_or_default();
        namespaces.retain(|ns| ns.typ() != LinuxNamespaceType::Network);
        if let Some(netns) = &spec.netns {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(LinuxNamespaceType::Network)
                .set_path(Some(netns.clone()));
            namespaces.push(ns);
        }
        linux.set_namespaces(Some(namespaces));

        let mut resources = linux
            .resources()
            .clone()
            .unwrap_or_else(LinuxResources::default);
        if let Some(limit) = spec.memory_limit_bytes {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            resources.set_memory(Some(
                LinuxMemoryBuilder::default()
                    .limit(limit)
                    .swap(limit)
                    .build()
                    .map_err(spec_err)?,
            ));
        }
        let mut cpu = LinuxCpuBuilder::default();
        cpu = cpu.shares(cpu_shares(spec.cpu_request_millis));
        if let Some(millis) = spec.cpu_limit_millis {
            cpu = cpu.quota(cpu_quota_us(millis)).period(CPU_PERIOD_US);
        }
        resources.set_cpu(Some(
            cpu.build().map_err(backend(Operation::Create, &spec.id))?,
        ));
        resources.set_pids(Some(
            LinuxPidsBuilder::default()
                .limit(spec.pids_limit)
                .build()
                .map_err(backend(Operation::Create, &spec.id))?,
        ));
        if spec.security.privileged {
            // Every device of the host, as runc does for privileged containers: each is
            // created in the container's own /dev (never a bind of the host's /dev, where
            // libcontainer's device setup would write), and the device cgroup allows all.
            let mut allow_all = LinuxDeviceCgroup::default();
            allow_all.set_allow(true).set_access(Some("rwm".to_owned()));
            resources.set_devices(Some(vec![allow_all]));
            linux.set_devices(Some(host_devices()));
            linux.set_masked_paths(Some(Vec::new()));
            linux.set_readonly_paths(Some(Vec::new()));
        }
        linux.set_resources(Some(resources));
        let target = seccomp::Target::native().filter(|_| super::seccomp_available());
        linux.set_seccomp(seccomp_filter(
            &spec.id,
            &spec.security,
            &cap_names,
            target,
        )?);
        oci.set_linux(Some(linux));
        Ok(oci)
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

    fn start_reaper(
        &self,
        id: ContainerId,
        pid: Pid,
        cgroup_path: PathBuf,
    ) -> Result<(), RuntimeError> {
        let (done_tx, done_rx) = mpsc::channel();
        let exits = self.exits.clone();
        let layout = self.layout.clone();
        let rotator = self.logs.clone();
        let key = id.clone();
        self.watchers
            .run(Box::new(move || {
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
                        tracing::error!(container = %id, status = ?other, "cannot collect container exit status");
                        ExitReason::Exited(-1)
                    }
                };
                // Anything but a clean exit after an OOM kill in the cgroup is blamed on the OOM,
                // as kubelet does (a shell whose child was OOM-killed exits 137, not SIGKILL).
                let oom = layout.oom_kills(&cgroup_path).unwrap_or(0) > 0;
                let reason = match reason {
                    ExitReason::Exited(0) => reason,
                    _ if oom => ExitReason::OomKilled,
                    _ => reason,
                };
                rotator.finish(id.as_str());
                tracing::debug!(container = %id, ?reason, "container exited");
                let _ = exits.send(ExitEvent { id, reason });
                let _ = done_tx.send(());
            }))
            .map_err(io_err(Path::new("/proc/self/task")))?;
        lock(&self.reaped).insert(key, done_rx);
        Ok(())
    }

    fn create_and_start(&self, spec: &RunSpec, bundle: &Path) -> Result<u32, RuntimeError> {
        let id = &spec.id;
        let out: OwnedFd = logs::open_for_container(&spec.log_path)
            .map_err(io_err(&spec.log_path))?
            .into();
        let err: OwnedFd = out.try_clone().map_err(io_err(&spec.log_path))?;

        // As for exec: nothing may log in libcontainer's forked children (see `exec`), so
        // creating and starting run under a scoped no-op subscriber; failures come back as
        // errors, which the caller logs.
        let quiet = || tracing::subscriber::NoSubscriber::default();
        let mut container = {
            let _tree = lock(&LIBCONTAINER);
            let before = thread_children();
            let built = tracing::subscriber::with_default(quiet(), || {
                ContainerBuilder::new(id.to_string(), SyscallType::default())
                    .with_root_path(&self.containers_dir)
                    .and_then(|b| b.validate_id())
                    .map(|b| {
                        b.with_executor(ExplicitEnvExecutor::default())
                            .with_stdout(out)
                            .with_stderr(err)
                            .as_init(bundle)
                            .with_systemd(false)
                            .with_detach(true)
                    })
                    .and_then(|b| b.build())
            });
            if built.is_err() {
                reap_failed_build(&before);
            }
            built.map_err(backend(Operation::Create, id))?
        };
        let pid = container.pid().ok_or_else(|| RuntimeError::Backend {
            op: Operation::Create,
            id: id.clone(),
            source: "created container has no pid".into(),
        })?;
        // Reap from now on: even if start fails, the init must not stay a zombie.
        self.logs
            .watch(id.as_str(), spec.log_path.clone(), spec.log_max_bytes);
        self.start_reaper(id.clone(), pid, spec.cgroup_path.clone())?;
        let started = {
            let _lc = lock(&LIBCONTAINER);
            tracing::subscriber::with_default(quiet(), || container.start())
        };
        if let Err(e) = started {
            let err = backend(Operation::Start, id)(e);
            if let Err(del) = self.delete(id) {
                tracing::warn!(container = %id, error = %del, "cleanup after failed start failed");
            }
            return Err(err);
        }
        u32::try_from(pid.as_raw()).map_err(|e| RuntimeError::Backend {
            op: Operation::Create,
            id: id.clone(),
            source: Box::new(e),
        })
    }
}

/// Removes the `tenant-notify-*.sock` files libcontainer's tenant builder leaves.
fn remove_tenant_sockets(container_dir: &Path) {
    let Ok(rd) = fs::read_dir(container_dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with("tenant-notify-")
        {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// The children of the calling thread, from `/proc/thread-self/children` (empty where the
/// kernel lacks `CONFIG_PROC_CHILDREN`).
fn thread_children() -> Vec<Pid> {
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
fn reap_failed_build(before: &[Pid]) {
    for pid in thread_children() {
        if !before.contains(&pid) {
            let outcome = wait_with_timeout(pid, FAILED_BUILD_WAIT);
            tracing::debug!(%pid, ?outcome, "reaped a process of a failed create");
        }
    }
}

/// Waits for our child `pid` until `timeout`, then kills and reaps it.
fn wait_with_timeout(pid: Pid, timeout: Duration) -> Result<ExecOutcome, Errno> {
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
struct ProcInfo {
    /// Start time in clock ticks after boot (field 22 of `/proc/<pid>/stat`).
    start_time: u64,
    zombie: bool,
}

/// Reads `/proc/<pid>/stat`; `None` if there is no such process.
fn proc_info(pid: u32) -> Option<ProcInfo> {
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

/// Whether the process `pid` is a member of the cgroup at `rel` (in any hierarchy). This is
/// what tells a container's init from an unrelated process that got its pid after a reboot.
fn in_cgroup(pid: u32, rel: &Path) -> bool {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    let want = format!("/{}", rel.display());
    fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| {
        text.lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|path| path == want)
    })
}

/// What `state` found, plus what `adopt` needs to watch the container.
struct Inspected {
    adopted: Adopted,
    cgroup_path: Option<PathBuf>,
    proc: Option<ProcInfo>,
}

/// Removes a cgroup directory that has no child cgroups and no tasks; `true` once it is gone.
///
/// Right after a child cgroup is removed, the kernel may still answer EBUSY for its parent
/// for a few milliseconds (the child is torn down asynchronously), so EBUSY on an otherwise
/// empty directory is retried briefly.
fn remove_empty_cgroup(dir: &Path) -> bool {
    for attempt in 0..8u32 {
        match fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(_) => {
                let has_children = fs::read_dir(dir).is_ok_and(|rd| {
                    rd.flatten()
                        .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                });
                let has_tasks = fs::read_to_string(dir.join("cgroup.procs"))
                    .is_ok_and(|p| !p.trim().is_empty());
                if has_children || has_tasks {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(5 << attempt.min(5)));
            }
        }
    }
    false
}

/// libcontainer's default executor, minus its use of the process environment: `setup_envs` keeps
/// the container's environment aside and `exec` passes it to `execve` explicitly. See the module
/// docs for why (`std::env::set_var` in a forked child can deadlock).
#[derive(Clone, Default)]
struct ExplicitEnvExecutor {
    /// Filled by `setup_envs` in the container's init, read by `exec` in the same process. `Rc`
    /// because executors are cloned into the child, which is single-threaded.
    envs: Rc<RefCell<Vec<CString>>>,
    /// For a process exec'd into a running container: the container's seccomp filter, which
    /// libcontainer's tenant builder leaves out of the spec. `None` for inits, whose filter
    /// libcontainer loads itself. Loading needs `no_new_privs`, which the tenant has by then.
    seccomp: Option<Rc<LinuxSeccomp>>,
}

impl ExplicitEnvExecutor {
    fn for_tenant(seccomp: Option<LinuxSeccomp>) -> Self {
        Self {
            envs: Rc::default(),
            seccomp: seccomp.map(Rc::new),
        }
    }

    /// Loads the tenant's filter; without seccomp support there is never one to load (the
    /// spec of a container gets none, see [`seccomp_filter`]), so a filter here is an error.
    fn load_seccomp(&self) -> Result<(), ExecutorError> {
        let Some(filter) = &self.seccomp else {
            return Ok(());
        };
        #[cfg(feature = "seccomp")]
        return libcontainer::seccomp::initialize_seccomp(filter)
            .map(drop)
            .map_err(|e| ExecutorError::Other(format!("cannot load the seccomp filter: {e}")));
        #[cfg(not(feature = "seccomp"))]
        {
            let _ = filter;
            Err(ExecutorError::Other(
                "the container has a seccomp filter, but this agent has no seccomp support".into(),
            ))
        }
    }

    fn path_var(&self) -> String {
        self.envs
            .borrow()
            .iter()
            .find_map(|e| e.to_str().ok()?.strip_prefix("PATH=").map(str::to_owned))
            .unwrap_or_else(|| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            })
    }
}

/// `execvp`'s lookup, over the container's PATH (we are already inside the rootfs).
fn find_executable(name: &str, path_var: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    path_var
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

impl Executor for ExplicitEnvExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let args = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().as_ref())
            .filter(|a| !a.is_empty())
            .ok_or(ExecutorError::InvalidArg)?;
        let path = find_executable(&args[0], &self.path_var()).ok_or_else(|| {
            ExecutorError::Other(format!("executable {:?} not found in PATH", args[0]))
        })?;
        let path = CString::new(path.into_os_string().into_encoded_bytes())
            .map_err(|_| ExecutorError::InvalidArg)?;
        let argv = args
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ExecutorError::InvalidArg)?;
        let envs = self.envs.borrow();
        // Last, so the child makes as few syscalls as possible under the filter.
        self.load_seccomp()?;
        let err = match nix::unistd::execve(&path, &argv, &envs) {
            Err(e) => e,
            Ok(never) => match never {},
        };
        Err(ExecutorError::Execution(
            format!("cannot execute {path:?}: {err}").into(),
        ))
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        let mut list = envs
            .into_iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ExecutorSetEnvsError::SetEnvs(Box::new(e)))?;
        list.sort();
        *self.envs.borrow_mut() = list;
        Ok(())
    }
}

/// Makes SIGPIPE *handled* instead of ignored in this process, once.
///
/// Rust programs (and the test harness) start with SIGPIPE ignored, and an ignored signal stays
/// ignored across exec, so every container would inherit it: `yes | head` would then never end,
/// because `yes` gets EPIPE instead of dying. A handled signal is reset to the default by exec.
/// Registering a tokio listener installs such a handler (it only wakes tokio's signal driver),
/// without unsafe code; the handler outlives the small runtime used to install it, and writes to
/// closed sockets in the agent still just return EPIPE.
fn handle_sigpipe() -> io::Result<()> {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    // Inside a runtime (the agent) use it: creating and dropping a second runtime from
    // async context panics. Outside one (tests, benches) a throwaway runtime will do;
    // tokio keeps the handler installed after both are gone.
    if tokio::runtime::Handle::try_current().is_ok() {
        let _listener = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe())?;
    } else {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let _enter = rt.enter();
        let _listener = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe())?;
    }
    let _ = DONE.set(());
    Ok(())
}

/// Every capability with its number, to give privileged containers all that this kernel knows.
const ALL_CAPABILITIES: &[(&str, u32)] = &[
    ("CHOWN", 0),
    ("DAC_OVERRIDE", 1),
    ("DAC_READ_SEARCH", 2),
    ("FOWNER", 3),
    ("FSETID", 4),
    ("KILL", 5),
    ("SETGID", 6),
    ("SETUID", 7),
    ("SETPCAP", 8),
    ("LINUX_IMMUTABLE", 9),
    ("NET_BIND_SERVICE", 10),
    ("NET_BROADCAST", 11),
    ("NET_ADMIN", 12),
    ("NET_RAW", 13),
    ("IPC_LOCK", 14),
    ("IPC_OWNER", 15),
    ("SYS_MODULE", 16),
    ("SYS_RAWIO", 17),
    ("SYS_CHROOT", 18),
    ("SYS_PTRACE", 19),
    ("SYS_PACCT", 20),
    ("SYS_ADMIN", 21),
    ("SYS_BOOT", 22),
    ("SYS_NICE", 23),
    ("SYS_RESOURCE", 24),
    ("SYS_TIME", 25),
    ("SYS_TTY_CONFIG", 26),
    ("MKNOD", 27),
    ("LEASE", 28),
    ("AUDIT_WRITE", 29),
    ("AUDIT_CONTROL", 30),
    ("SETFCAP", 31),
    ("MAC_OVERRIDE", 32),
    ("MAC_ADMIN", 33),
    ("SYSLOG", 34),
    ("WAKE_ALARM", 35),
    ("BLOCK_SUSPEND", 36),
    ("AUDIT_READ", 37),
    ("PERFMON", 38),
    ("BPF", 39),
    ("CHECKPOINT_RESTORE", 40),
];

/// `net_admin`, `CAP_NET_ADMIN` -> `NET_ADMIN`.
fn cap_name(name: &str) -> String {
    let up = name.trim().to_ascii_uppercase();
    up.strip_prefix("CAP_").map(str::to_owned).unwrap_or(up)
}

fn parse_cap(id: &ContainerId, name: &str) -> Result<Capability, RuntimeError> {
    use std::str::FromStr;
    Capability::from_str(&cap_name(name)).map_err(|_| RuntimeError::InvalidSpec {
        id: id.clone(),
        reason: format!("unknown capability {name:?}"),
    })
}

/// The capabilities this process may hand on: its own bounding set (a container can never
/// get more; an agent in a restricted sandbox may lack some), or every capability up to
/// `cap_last_cap` when that cannot be read.
fn grantable_capabilities() -> Vec<&'static str> {
    let bounding = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    });
    let last = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    ALL_CAPABILITIES
        .iter()
        .filter(|(_, n)| match bounding {
            Some(b) => *n < 64 && b & (1u64 << n) != 0,
            None => *n <= last,
        })
        .map(|(name, _)| *name)
        .collect()
}

/// The default set (or every grantable capability for a privileged container), minus `drop`,
/// plus `add`, as bounding, effective and permitted; never inheritable or ambient (see
/// [`Security`]). Asking to add a capability the agent does not have itself is an error
/// (the container could not start with it anyway, and would fail less clearly).
fn capability_names(id: &ContainerId, sec: &Security) -> Result<Vec<String>, RuntimeError> {
    let grantable = grantable_capabilities();
    let all = || grantable.iter().map(|c| c.to_string());
    let mut names: Vec<String> = if sec.privileged {
        all().collect()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .map(|c| cap_name(c))
            .filter(|c| grantable.contains(&c.as_str()))
            .collect()
    };
    if !sec.privileged {
        for d in &sec.capabilities_drop {
            let d = cap_name(d);
            if d == "ALL" {
                names.clear();
            } else {
                parse_cap(id, &d)?;
                names.retain(|n| *n != d);
            }
        }
        for a in &sec.capabilities_add {
            let a = cap_name(a);
            if a == "ALL" {
                names = all().collect();
            } else if !names.contains(&a) {
                parse_cap(id, &a)?;
                if !grantable.contains(&a.as_str()) {
                    return Err(RuntimeError::InvalidSpec {
                        id: id.clone(),
                        reason: format!("capability {a} is not in the agent's own bounding set"),
                    });
                }
                names.push(a);
            }
        }
    }
    Ok(names)
}

/// `names` (from [`capability_names`]) as the OCI capability sets.
fn capabilities(id: &ContainerId, names: &[String]) -> Result<LinuxCapabilities, RuntimeError> {
    let set: Capabilities = names
        .iter()
        .map(|n| parse_cap(id, n))
        .collect::<Result<_, _>>()?;
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()))
        .set_effective(Some(set.clone()))
        .set_permitted(Some(set))
        .set_inheritable(None)
        .set_ambient(None);
    Ok(caps)
}

/// The host's character and block devices directly under `/dev` (not its subdirectories,
/// which hold pseudo-terminals and shared memory the container gets its own of).
fn host_devices() -> Vec<LinuxDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(rd) = fs::read_dir("/dev") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Ok(md) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        let ft = md.file_type();
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        // The container's own /dev/console and /dev/ptmx come from its devpts.
        if matches!(e.file_name().to_str(), Some("console" | "ptmx" | "tty")) {
            continue;
        }
        let rdev = md.rdev();
        let mut d = LinuxDevice::default();
        d.set_path(e.path())
            .set_typ(typ)
            .set_major(nix::sys::stat::major(rdev) as i64)
            .set_minor(nix::sys::stat::minor(rdev) as i64)
            .set_file_mode(Some(md.mode() & 0o7777))
            .set_uid(Some(md.uid()))
            .set_gid(Some(md.gid()));
        out.push(d);
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

/// The container's `linux.seccomp`: [`seccomp::default_profile`] unless it is privileged or
/// `Unconfined` (as in Kubernetes, privileged containers get no filter). An agent without
/// seccomp support (see [`super::seccomp_available`]) runs `Default` containers unconfined,
/// having warned at start, and refuses an explicit `RuntimeDefault`: running a container
/// that asked for the filter without it would be a silent downgrade, as containerd's CRI
/// plugin also refuses ("seccomp is not supported"). `target` is `None` on such an agent.
fn seccomp_filter(
    id: &ContainerId,
    sec: &Security,
    caps: &[String],
    target: Option<seccomp::Target>,
) -> Result<Option<LinuxSeccomp>, RuntimeError> {
    if sec.privileged || sec.seccomp == Seccomp::Unconfined {
        return Ok(None);
    }
    let Some(target) = target else {
        return match sec.seccomp {
            Seccomp::RuntimeDefault => Err(RuntimeError::InvalidSpec {
                id: id.clone(),
                reason: "seccomp profile RuntimeDefault asked for, but this agent was built \
                         without seccomp support"
                    .into(),
            }),
            _ => Ok(None),
        };
    };
    let profile = seccomp::default_profile(target, caps, kernel_version());
    oci_seccomp(&profile)
        .map(Some)
        .map_err(backend(Operation::Create, id))
}

/// `profile` as libcontainer reads an OCI seccomp section.
fn oci_seccomp(
    profile: &seccomp::Profile,
) -> Result<LinuxSeccomp, libcontainer::oci_spec::OciSpecError> {
    let action = |a: seccomp::Action| match a {
        seccomp::Action::Allow => (LinuxSeccompAction::ScmpActAllow, None),
        seccomp::Action::Errno(e) => (LinuxSeccompAction::ScmpActErrno, Some(e)),
    };
    let mut syscalls = Vec::with_capacity(profile.rules.len());
    for rule in &profile.rules {
        let mut args = Vec::with_capacity(rule.args.len());
        for a in &rule.args {
            let b = LinuxSeccompArgBuilder::default().index(a.index as usize);
            let b = match a.cmp {
                seccomp::Cmp::Eq(v) => b.op(LinuxSeccompOperator::ScmpCmpEq).value(v),
                seccomp::Cmp::Ne(v) => b.op(LinuxSeccompOperator::ScmpCmpNe).value(v),
                // libcontainer 0.7 reads `value` as the datum and `valueTwo` as the mask
                // (runc and the OCI spec: the other way round). The bundle is only ever
                // read by libcontainer, so it is written the way libcontainer applies it;
                // `a_default_container_can_fork_but_not_unshare` fails if that changes.
                seccomp::Cmp::MaskedEq { mask, value } => b
                    .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                    .value(value)
                    .value_two(mask),
            };
            args.push(b.build()?);
        }
        let (act, errno) = action(rule.action);
        let mut b = LinuxSyscallBuilder::default()
            .names(rule.names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .action(act);
        if let Some(e) = errno {
            b = b.errno_ret(e);
        }
        if !args.is_empty() {
            b = b.args(args);
        }
        syscalls.push(b.build()?);
    }
    let arch = |a: seccomp::Arch| match a {
        seccomp::Arch::X86_64 => OciArch::ScmpArchX86_64,
        seccomp::Arch::X86 => OciArch::ScmpArchX86,
        seccomp::Arch::X32 => OciArch::ScmpArchX32,
        seccomp::Arch::Aarch64 => OciArch::ScmpArchAarch64,
        seccomp::Arch::Arm => OciArch::ScmpArchArm,
    };
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(profile.default_errno)
        .architectures(
            profile
                .architectures
                .iter()
                .map(|&a| arch(a))
                .collect::<Vec<_>>(),
        )
        .syscalls(syscalls)
        .build()
}

/// The running kernel's (major, minor), read once; (0, 0) when unknown, which only withholds
/// `ptrace` (allowed from 4.8).
fn kernel_version() -> (u32, u32) {
    static VERSION: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *VERSION.get_or_init(|| {
        let Ok(uts) = nix::sys::utsname::uname() else {
            return (0, 0);
        };
        let release = uts.release().to_string_lossy().into_owned();
        let mut parts = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse::<u32>().ok());
        match (parts.next().flatten(), parts.next().flatten()) {
            (Some(major), Some(minor)) => (major, minor),
            _ => (0, 0),
        }
    })
}

/// Says once per process that containers will run without a syscall filter.
fn warn_without_seccomp() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if !super::seccomp_available() {
        ONCE.call_once(|| {
            tracing::warn!(
                "this agent was built without seccomp support: containers run without a \
                 syscall filter, and those asking for seccompProfile RuntimeDefault are refused"
            );
        });
    }
}

/// kubelet's milli-CPU to shares conversion: 1000m = 1024 shares, clamped to the kernel's range.
fn cpu_shares(millis: u32) -> u64 {
    (u64::from(millis) * 1024 / 1000).clamp(2, 262_144)
}

/// kubelet's milli-CPU to CFS quota over [`CPU_PERIOD_US`], at least the kernel's 1 ms minimum.
fn cpu_quota_us(millis: u32) -> i64 {
    (i64::from(millis) * CPU_PERIOD_US as i64 / 1000).max(1000)
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
            if let Err(e) = c.kill(Signal::from(nix::sys::signal::Signal::SIGKILL), true) {
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
                    let _tree = lock(&LIBCONTAINER);
                    c.delete(true)
                };
                if r.is_err() {
                    if let Ok(fresh) = Container::load(dir.clone()) {
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
                let _tree = lock(&LIBCONTAINER);
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
    /// The tenant is cloned with `CLONE_PARENT` like the init, so it is our child and we reap
    /// it (by pid, never stealing other children's statuses).
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
        // As the container's user (the tenant builder would otherwise run it as root) and
        // under its seccomp filter (the tenant builder drops `linux.seccomp`; the executor
        // loads it in the child, right before `execve`, as runc's exec does).
        let config = self.bundles_dir.join(id.as_str()).join("config.json");
        let bundle_spec = Spec::load(&config).map_err(backend(Operation::Exec, id))?;
        let user = bundle_spec.process().as_ref().map(|p| p.user().clone());
        let executor = ExplicitEnvExecutor::for_tenant(
            bundle_spec
                .linux()
                .as_ref()
                .and_then(|l| l.seccomp().clone()),
        );
        let devnull = |path: &Path| -> Result<OwnedFd, RuntimeError> {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map(OwnedFd::from)
                .map_err(io_err(path))
        };
        let null = Path::new("/dev/null");
        let (stdin, stdout, stderr) = (devnull(null)?, devnull(null)?, devnull(null)?);
        let pid = {
            let _lc = lock(&LIBCONTAINER);
            // No logging in the forked child: libcgroups logs a warning on every cgroup join
            // (e.g. perf_event missing on v1 hosts), and a child that logs takes the log
            // writer's lock, which another agent thread may have held at fork time: the
            // child then hangs forever, and this build with it (seen within minutes with
            // exec probes every 2 s). The child inherits this thread's scoped dispatcher.
            let quiet = tracing::subscriber::NoSubscriber::default();
            let before = thread_children();
            let pid = tracing::subscriber::with_default(quiet, || {
                ContainerBuilder::new(id.to_string(), SyscallType::default())
                    .with_root_path(&self.containers_dir)
                    .map(|b| {
                        b.with_executor(executor)
                            .with_stdin(stdin)
                            .with_stdout(stdout)
                            .with_stderr(stderr)
                            .as_tenant()
                            .with_container_args(args.to_vec())
                            .with_detach(true)
                            .with_user(user.as_ref().map(|u| u.uid()))
                            .with_group(user.as_ref().map(|u| u.gid()))
                    })
                    .and_then(|b| b.build())
            });
            if pid.is_err() {
                reap_failed_build(&before);
            }
            // libcontainer leaves the tenant's notify socket behind: one file per exec, every
            // probe period, forever. Builds are serialised by the lock, so none is in use now.
            remove_tenant_sockets(&self.container_dir(id));
            pid.map_err(backend(Operation::Exec, id))?
        };
        wait_with_timeout(pid, timeout).map_err(|e| RuntimeError::Backend {
            op: Operation::Exec,
            id: id.clone(),
            source: Box::new(e),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_conversions_follow_kubelet() {
        assert_eq!(cpu_shares(0), 2);
        assert_eq!(cpu_shares(1000), 1024);
        assert_eq!(cpu_shares(250), 256);
        assert_eq!(cpu_shares(u32::MAX), 262_144);
        assert_eq!(cpu_quota_us(500), 50_000);
        assert_eq!(cpu_quota_us(2000), 200_000);
        assert_eq!(cpu_quota_us(1), 1000);
    }

    #[test]
    fn seccomp_filter_follows_the_profile_and_the_agent() {
        let id = ContainerId::new("c").unwrap();
        let caps = vec!["CHOWN".to_string()];
        let with = |seccomp, privileged, target| {
            let sec = Security {
                seccomp,
                privileged,
                ..Security::default()
            };
            seccomp_filter(&id, &sec, &caps, target)
        };
        let x86 = Some(seccomp::Target::X86_64);
        for asked in [Seccomp::Default, Seccomp::RuntimeDefault] {
            let f = with(asked, false, x86).unwrap().expect("a filter");
            assert_eq!(f.default_action(), LinuxSeccompAction::ScmpActErrno);
            assert_eq!(f.default_errno_ret(), Some(seccomp::EPERM));
            let clone = f
                .syscalls()
                .iter()
                .flatten()
                .find(|s| s.names() == &["clone".to_string()])
                .expect("a clone rule");
            let arg = clone.args().as_ref().unwrap()[0];
            // libcontainer's reading: value = datum, valueTwo = mask.
            assert_eq!(
                (arg.value(), arg.value_two()),
                (0, Some(seccomp::CLONE_NAMESPACE_FLAGS))
            );
            assert_eq!(with(asked, true, x86).unwrap(), None, "privileged");
        }
        assert_eq!(with(Seccomp::Unconfined, false, x86).unwrap(), None);
        // An agent without seccomp support: unconfined unless the filter was asked for.
        assert_eq!(with(Seccomp::Default, false, None).unwrap(), None);
        assert_eq!(with(Seccomp::Unconfined, false, None).unwrap(), None);
        let refused = with(Seccomp::RuntimeDefault, false, None).unwrap_err();
        assert!(
            refused.to_string().contains("without seccomp support"),
            "{refused}"
        );
    }

    #[test]
    fn spec_maps_network_and_limits() {
        let mut s = RunSpec {
            id: ContainerId::new("c").unwrap(),
            rootfs: "/r".into(),
            args: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec!["A=1".into()],
            cwd: "/tmp".into(),
            hostname: "h".into(),
            netns: Some("/run/netns/x".into()),
            cgroup_path: "baton/n/p/c".into(),
            memory_limit_bytes: Some(32 << 20),
            cpu_limit_millis: Some(500),
            cpu_request_millis: 100,
            pids_limit: 64,
            log_path: "/l".into(),
            log_max_bytes: 1,
            mounts: vec![],
            security: Security::default(),
        };
        let oci = YoukiRuntime::build_spec(&s).unwrap();
        let linux = oci.linux().as_ref().unwrap();
        let nets: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|n| n.typ() == LinuxNamespaceType::Network)
            .collect();
        assert_eq!(nets.len(), 1);
        assert_eq!(nets[0].path().as_deref(), Some(Path::new("/run/netns/x")));
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/baton/n/p/c"))
        );
        let res = linux.resources().as_ref().unwrap();
        let mem = res.memory().unwrap();
        assert_eq!((mem.limit(), mem.swap()), (Some(32 << 20), Some(32 << 20)));
        let cpu = res.cpu().as_ref().unwrap();
        assert_eq!(
            (cpu.quota(), cpu.period(), cpu.shares()),
            (Some(50_000), Some(100_000), Some(102))
        );
        assert_eq!(res.pids().unwrap().limit(), 64);
        let p = oci.process().as_ref().unwrap();
        assert_eq!(p.cwd(), Path::new("/tmp"));
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(oci.root().as_ref().unwrap().readonly(), Some(false));

        s.netns = None;
        let oci = YoukiRuntime::build_spec(&s).unwrap();
        let linux = oci.linux().as_ref().unwrap();
        assert!(!linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Network));
    }
}
