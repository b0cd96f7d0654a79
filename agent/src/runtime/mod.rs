//! Container runtime: the trait, the libcontainer implementation and a recording fake.
//!
//! The trait is synchronous on purpose: creating a container forks and blocks on pipes inside
//! libcontainer, so the node core calls it from `spawn_blocking`. Exits are not returned by any
//! call; they arrive later as [`ExitEvent`]s on the channel handed to the implementation's
//! constructor, which lets the core treat "a container stopped" like any other event.
//!
//! Architecture invariant: only [`youki`] imports libcontainer (and libcgroups); everything else
//! in the agent sees the types in this module.

pub mod fake;
mod logs;
pub mod seccomp;
pub mod youki;

use std::fmt;
use std::path::{Path, PathBuf};

pub use fake::FakeRuntime;
pub use youki::YoukiRuntime;

/// The rotator's copy-truncate, for the tests of [`crate::logs`] that follow a log across it.
#[cfg(test)]
pub(crate) fn rotate_if_needed_for_tests(
    path: &std::path::Path,
    max_bytes: u64,
) -> std::io::Result<bool> {
    logs::rotate_if_needed(path, max_bytes)
}

/// Boxed cause kept in [`RuntimeError::Backend`], so that the backend's error type does not leak
/// into this module while the cause chain survives.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A container id: 1..=128 characters of `[A-Za-z0-9_.-]`, neither `.` nor `..`.
///
/// The id names a directory under the runtime's state dir, so the check keeps it a single,
/// harmless path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

impl ContainerId {
    pub const MAX_LEN: usize = 128;

    pub fn new(id: &str) -> Result<Self, RuntimeError> {
        let invalid = |reason| RuntimeError::InvalidId {
            id: id.chars().take(Self::MAX_LEN + 8).collect(),
            reason,
        };
        if id.is_empty() {
            return Err(invalid("empty"));
        }
        if id.len() > Self::MAX_LEN {
            return Err(invalid("longer than 128 characters"));
        }
        if id == "." || id == ".." {
            return Err(invalid("not a file name"));
        }
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(invalid("only [A-Za-z0-9_.-] allowed"));
        }
        Ok(Self(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything needed to start one container. The caller resolves images, entrypoints and names;
/// the runtime only turns this into an OCI spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    pub id: ContainerId,
    /// Already prepared root filesystem (the image store's overlay mount), absolute.
    pub rootfs: PathBuf,
    /// argv, non-empty: entrypoint and cmd already resolved by the caller.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Absolute working directory inside the container.
    pub cwd: String,
    pub hostname: String,
    /// `Some`: join this network namespace file (e.g. `/run/netns/x`); `None`: share the agent's
    /// network namespace (hostNetwork).
    pub netns: Option<PathBuf>,
    /// Relative cgroup path, e.g. `baton/<node>/<pod-uid>/<container>`. The caller derives it per
    /// agent so that agents sharing a machine never collide.
    pub cgroup_path: PathBuf,
    /// Memory limit; swap is limited to the same total so the limit cannot be escaped by swapping.
    pub memory_limit_bytes: Option<u64>,
    /// CPU limit as a CFS quota over a 100 ms period.
    pub cpu_limit_millis: Option<u32>,
    /// CPU request, turned into shares (v1) or weight (v2) like kubelet does.
    pub cpu_request_millis: u32,
    /// Maximum number of tasks in the container's cgroup.
    pub pids_limit: i64,
    /// stdout and stderr both go here (the file itself, opened for appending: see `logs`).
    pub log_path: PathBuf,
    /// The log is copy-truncated to `<log_path>.1` once a periodic check finds it past this;
    /// one rotated file is kept.
    pub log_max_bytes: u64,
    /// Bind mounts (the pod's volumes), applied in order after the default mounts.
    pub mounts: Vec<Mount>,
    pub security: Security,
}

/// A bind mount of a host path (a prepared pod volume) into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute path inside the container; created if missing.
    pub destination: String,
    pub read_only: bool,
}

/// The process's privileges: k8s `securityContext`, already checked by the coordinator.
///
/// The base capability set is containerd's (and Docker's) default, so images behave as they
/// do under Kubernetes; `add` and `drop` apply on top (`ALL` is understood in both, drop
/// first). Capabilities are set as bounding, effective and permitted, never inheritable or
/// ambient, so a non-root user ends up with none after `execve`, as in Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// Every capability, host devices, no masked or read-only kernel paths.
    pub privileged: bool,
    /// Names with or without the `CAP_` prefix, any case (`NET_ADMIN`, `cap_net_admin`).
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
    pub run_as_user: Option<u32>,
    /// Defaults to 0 when only the user is given.
    pub run_as_group: Option<u32>,
    pub read_only_root_filesystem: bool,
    /// Ignored for privileged containers, which run without a filter (as in Kubernetes).
    pub seccomp: Seccomp,
}

/// The container's syscall filter (k8s `seccompProfile`, resolved by the coordinator).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Seccomp {
    /// Nothing asked: [`seccomp::default_profile`] if this agent was built with seccomp
    /// support, else none (the agent warns about that once at start).
    #[default]
    Default,
    /// Asked for explicitly: an agent without seccomp support refuses the container.
    RuntimeDefault,
    Unconfined,
}

/// Whether this agent can apply seccomp filters: built with the `seccomp` feature (which
/// links libseccomp; the static musl builds leave it out for now) for an architecture the
/// default profile knows.
pub fn seccomp_available() -> bool {
    cfg!(feature = "seccomp") && seccomp::Target::native().is_some()
}

/// The capabilities a container gets by default: containerd's and Docker's set.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// How a command run with [`Runtime::exec`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutcome {
    /// Exit status (128 + n when killed by signal n).
    Exited(i32),
    /// Still running at the deadline; it was killed.
    TimedOut,
}

/// The stdio of a command run with [`Runtime::exec_attached`].
pub enum ExecIo {
    /// The container's ends of three pipes: the command's stdin, stdout and stderr.
    Pipes {
        stdin: std::os::fd::OwnedFd,
        stdout: std::os::fd::OwnedFd,
        stderr: std::os::fd::OwnedFd,
    },
    /// A terminal of this size, made in the container's own devpts (so `tty` names it
    /// there), as the command's controlling terminal and stdio.
    Tty { rows: u16, cols: u16 },
}

/// A command started by [`Runtime::exec_attached`].
pub struct Attached {
    /// The terminal's master side, with [`ExecIo::Tty`]: read the output, write the input,
    /// set the window size.
    pub pty: Option<std::os::fd::OwnedFd>,
    /// Blocks until the command exits and answers its status (128 + n when killed by
    /// signal n).
    pub wait: Box<dyn FnOnce() -> Result<i32, RuntimeError> + Send>,
    /// Kills the command (SIGKILL); `wait` then returns. Idempotent.
    pub kill: std::sync::Arc<dyn Fn() + Send + Sync>,
}

/// Why a container's init process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Exit status. `-1` means the status could not be collected (someone else reaped the init).
    Exited(i32),
    /// Terminated by this signal number.
    Signaled(i32),
    /// The cgroup's memory limit was hit and the kernel OOM killer fired.
    OomKilled,
}

/// What the runtime knows about a container it has state for, e.g. one a previous agent
/// process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    /// Pid of the container's init (in the agent's pid namespace).
    pub pid: u32,
    /// The init still runs *and* is still the container's process (not a reused pid).
    pub running: bool,
    /// When the container was created, in milliseconds since the Unix epoch, if known.
    pub created_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitEvent {
    pub id: ContainerId,
    pub reason: ExitReason,
}

/// The operation that a backend failure happened in, for [`RuntimeError::Backend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Start,
    Kill,
    Delete,
    Load,
    Exec,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Create => "create",
            Self::Start => "start",
            Self::Kill => "kill",
            Self::Delete => "delete",
            Self::Load => "load",
            Self::Exec => "exec",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid container id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("invalid run spec for container {id}: {reason}")]
    InvalidSpec { id: ContainerId, reason: String },
    #[error("container {0} already exists")]
    AlreadyExists(ContainerId),
    #[error("container {0} not found")]
    NotFound(ContainerId),
    /// The runtime has state for the container but its init has exited.
    #[error("container {0} is not running")]
    NotRunning(ContainerId),
    #[error("i/o error on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to {op} container {id}")]
    Backend {
        op: Operation,
        id: ContainerId,
        #[source]
        source: BoxError,
    },
    /// Only produced by [`FakeRuntime`], for tests of the callers' error handling.
    #[error("injected failure: {0}")]
    Injected(String),
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
}

/// A container runtime. Implementations must be usable from several threads at once.
pub trait Runtime: Send + Sync + 'static {
    /// Creates and starts the container; returns the init pid. Its exit is reported later as an
    /// [`ExitEvent`] on the channel given to the implementation's constructor.
    fn run(&self, spec: &RunSpec) -> Result<u32, RuntimeError>;
    /// Signals every process of the container (e.g. SIGTERM, then SIGKILL after a grace period
    /// chosen by the caller). Like kill(2), signal 0 sends nothing and only checks: it is `Ok`
    /// while the container runs. Errors with [`RuntimeError::NotFound`] for an unknown id and
    /// [`RuntimeError::NotRunning`] once the container's init has exited.
    fn kill(&self, id: &ContainerId, signal: i32) -> Result<(), RuntimeError>;
    /// Force-removes: kills what is left, waits, removes runtime state and the container's
    /// cgroups. Idempotent: deleting an unknown id is Ok.
    fn delete(&self, id: &ContainerId) -> Result<(), RuntimeError>;
    /// Ids of the containers this runtime has state for (to find leftovers after an agent restart).
    fn list(&self) -> Result<Vec<ContainerId>, RuntimeError>;
    /// What the runtime knows about `id`; `None` if it has no state for it.
    fn state(&self, id: &ContainerId) -> Result<Option<Adopted>, RuntimeError>;
    /// Takes over a running container that another process (an earlier agent) started: from
    /// now on its exit is reported as an [`ExitEvent`] like for [`Runtime::run`], and its log
    /// at `log_path` is bounded again. Errors with [`RuntimeError::NotRunning`] if it is not
    /// running and [`RuntimeError::NotFound`] if there is no state for it.
    fn adopt(
        &self,
        id: &ContainerId,
        log_path: &Path,
        log_max_bytes: u64,
    ) -> Result<Adopted, RuntimeError>;
    /// Runs `args` inside the running container `id`: in its namespaces, cgroup and root, as
    /// its user, with its environment, output discarded. Blocks until the command exits or
    /// `timeout` passes; then the command is killed (SIGKILL) and reaped, and the result is
    /// [`ExecOutcome::TimedOut`]. Children it left behind stay in the container. Errors with
    /// [`RuntimeError::NotRunning`] if the container is not running.
    fn exec(
        &self,
        id: &ContainerId,
        args: &[String],
        timeout: std::time::Duration,
    ) -> Result<ExecOutcome, RuntimeError>;
    /// Starts `args` inside the running container `id` as [`Runtime::exec`] does, but with
    /// its stdio given by `io` and no deadline: `baton exec`. Returns once it runs.
    fn exec_attached(
        &self,
        id: &ContainerId,
        args: &[String],
        io: ExecIo,
    ) -> Result<Attached, RuntimeError>;
    /// Removes the cgroup directory `rel` (e.g. `baton/<node>`) and every empty one below it,
    /// in every hierarchy (`baton-agent reset`, once its containers are deleted). Returns the
    /// directories left because a process is still in them. A runtime without cgroups has
    /// nothing to remove.
    fn remove_cgroup_tree(&self, _rel: &Path) -> Vec<PathBuf> {
        Vec::new()
    }
    /// The memory working set of the cgroup `rel` (a pod's, or the node's with all its
    /// pods), as kubelet counts it for memory eviction; `None` where there is no such
    /// cgroup or no way to read it.
    fn memory_working_set(&self, _rel: &Path) -> Option<u64> {
        None
    }

    /// CPU time used by the cgroup `rel` and below (a pod's), in nanoseconds, for usage
    /// reports; `None` where unreadable.
    fn cpu_usage_ns(&self, _rel: &Path) -> Option<u64> {
        None
    }

    /// Processes in the cgroup `rel` and below (a pod's), for ranking pods under
    /// PIDPressure; `None` where unreadable.
    fn pids_current(&self, _rel: &Path) -> Option<u64> {
        None
    }
}

impl RunSpec {
    /// Checks what the runtime relies on before touching the system.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let bad = |reason: &str| RuntimeError::InvalidSpec {
            id: self.id.clone(),
            reason: reason.to_owned(),
        };
        if self.args.is_empty() {
            return Err(bad("args must not be empty"));
        }
        if !self.rootfs.is_absolute() {
            return Err(bad("rootfs must be an absolute path"));
        }
        if !self.cwd.starts_with('/') {
            return Err(bad("cwd must be absolute"));
        }
        if let Some(netns) = &self.netns {
            if !netns.is_absolute() {
                return Err(bad("netns must be an absolute path"));
            }
        }
        let mut components = 0;
        for c in self.cgroup_path.components() {
            match c {
                std::path::Component::Normal(_) => components += 1,
                _ => return Err(bad("cgroup_path must be relative, without '.' or '..'")),
            }
        }
        if components == 0 {
            return Err(bad("cgroup_path must not be empty"));
        }
        if self.env.iter().any(|e| !e.contains('=')) {
            return Err(bad("env entries must be KEY=VALUE"));
        }
        if self.pids_limit <= 0 {
            return Err(bad("pids_limit must be positive"));
        }
        if self.log_max_bytes == 0 {
            return Err(bad("log_max_bytes must be positive"));
        }
        for m in &self.mounts {
            if !m.source.is_absolute() || !m.destination.starts_with('/') {
                return Err(bad("mount source and destination must be absolute"));
            }
            if m.destination.split('/').any(|c| c == "..") {
                return Err(bad("mount destination must not contain '..'"));
            }
        }
        Ok(())
    }
}

/// Where this node's OCI bundles go: `<run_dir>/<node>/bundles`, on a tmpfs.
///
/// A bundle's `config.json` holds the container's environment, secret values included, so
/// it must never reach a disk (runc and containerd keep bundles on `/run` for the same
/// reason). If `run_dir` is not a tmpfs already (systemd makes `/run` one, but not every
/// image or container host does), a small tmpfs is mounted on it, under a lock so agents
/// of several nodes on one machine never stack mounts and hide each other's bundles.
/// Bundles vanish with a reboot, exactly like the containers they describe.
pub fn tmpfs_bundles_dir(run_dir: &Path, node: &str) -> Result<PathBuf, RuntimeError> {
    use nix::fcntl::{Flock, FlockArg};
    use nix::mount::{mount, MsFlags};
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

    let io = |path: &Path| {
        let path = path.to_owned();
        move |source: std::io::Error| RuntimeError::Io { path, source }
    };
    let nix_io = |path: &Path| {
        let path = path.to_owned();
        move |e: nix::errno::Errno| RuntimeError::Io {
            path,
            source: std::io::Error::from(e),
        }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(run_dir)
        .map_err(io(run_dir))?;
    let is_tmpfs = |p: &Path| {
        nix::sys::statfs::statfs(p).map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
    };
    if !is_tmpfs(run_dir).map_err(nix_io(run_dir))? {
        // The lock file sits beside the mount point, not under it: a mount would hide it.
        let lock_path = run_dir.with_extension("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let _guard =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| nix_io(&lock_path)(e))?;
        if !is_tmpfs(run_dir).map_err(nix_io(run_dir))? {
            mount(
                Some("tmpfs"),
                run_dir,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=0700,size=64m"),
            )
            .map_err(nix_io(run_dir))?;
        }
    }
    let dir = run_dir.join(node).join("bundles");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(&dir))?;
    // Also when they were there already with other modes (an older agent, an admin): the
    // run dir itself may be a shared one such as `/run`, this node's part of it is not.
    for d in [run_dir.join(node), dir.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).map_err(io(&d))?;
    }
    Ok(dir)
}

/// Moves the container state an older agent kept on the data disk (`<data>/runtime`) to
/// `state` on the run tmpfs, so that an upgrade in the same boot adopts the containers that
/// run (their pods keep running), then removes the old directory. Best effort: what cannot
/// be moved is logged, and those containers' pods are started again.
pub fn move_old_state(old: &Path, state: &Path) {
    let old_containers = old.join("containers");
    let Ok(entries) = std::fs::read_dir(&old_containers) else {
        return;
    };
    for e in entries.flatten() {
        let to = state.join("containers").join(e.file_name());
        let from = e.path().join("state.json");
        // Only the state file matters to a load; the rest (notify.sock) served create/start.
        let moved = to.exists()
            || std::fs::create_dir_all(&to)
                .and_then(|()| std::fs::copy(&from, to.join("state.json")))
                .is_ok();
        if !moved {
            tracing::warn!(from = %from.display(), "cannot move a container's state to the run dir");
        }
    }
    match std::fs::remove_dir_all(old) {
        Ok(()) => {
            tracing::info!(from = %old.display(), to = %state.display(), "container state moved to the run dir")
        }
        Err(e) => {
            tracing::warn!(dir = %old.display(), error = %e, "cannot remove the old container state")
        }
    }
}

/// Serves one runtime operation and exits, if this process was started as the runtime
/// helper (`<binary> runtime-op`, see [`youki::op`]); returns otherwise. Every binary whose
/// [`YoukiRuntime`] runs its own executable as the helper calls this first thing in `main`,
/// before it starts any thread.
/// `init_logging` sets up its logs to the file it is given: a close-on-exec copy of stderr
/// (which it shares with its caller), never stderr itself, which the processes it clones
/// point at the container's log before they exec.
pub fn serve_op_if_asked(init_logging: impl FnOnce(std::fs::File)) {
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(youki::op::OP_ARG)) {
        use std::os::fd::AsFd;
        match std::io::stderr().as_fd().try_clone_to_owned() {
            Ok(fd) => init_logging(fd.into()),
            Err(e) => eprintln!("runtime-op: no logs: {e}"),
        }
        std::process::exit(youki::op::serve());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_id_rules() {
        assert!(ContainerId::new("web-1_a.b").is_ok());
        assert!(ContainerId::new(&"a".repeat(128)).is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "é", &"a".repeat(129)] {
            assert!(
                matches!(ContainerId::new(bad), Err(RuntimeError::InvalidId { .. })),
                "{bad:?} accepted"
            );
        }
    }

    fn spec() -> RunSpec {
        RunSpec {
            id: ContainerId::new("c").unwrap(),
            rootfs: "/r".into(),
            args: vec!["sh".into()],
            env: vec!["A=1".into()],
            cwd: "/".into(),
            hostname: "h".into(),
            netns: None,
            cgroup_path: "baton/n/p/c".into(),
            memory_limit_bytes: None,
            cpu_limit_millis: None,
            cpu_request_millis: 0,
            pids_limit: 10,
            log_path: "/l".into(),
            log_max_bytes: 1,
            mounts: vec![],
            security: Security::default(),
        }
    }

    #[test]
    fn spec_validation_rejects_what_the_runtime_cannot_use() {
        assert!(spec().validate().is_ok());
        let cases: &[fn(&mut RunSpec)] = &[
            |s| s.args.clear(),
            |s| s.rootfs = "r".into(),
            |s| s.cwd = "tmp".into(),
            |s| s.cgroup_path = "/abs".into(),
            |s| s.cgroup_path = "a/../b".into(),
            |s| s.cgroup_path = "".into(),
            |s| s.env.push("NOEQ".into()),
            |s| s.pids_limit = 0,
            |s| s.log_max_bytes = 0,
            |s| s.netns = Some("x".into()),
            |s| {
                s.mounts.push(Mount {
                    source: "rel".into(),
                    destination: "/d".into(),
                    read_only: false,
                })
            },
            |s| {
                s.mounts.push(Mount {
                    source: "/s".into(),
                    destination: "/d/../../etc".into(),
                    read_only: false,
                })
            },
        ];
        for (i, f) in cases.iter().enumerate() {
            let mut s = spec();
            f(&mut s);
            assert!(
                matches!(s.validate(), Err(RuntimeError::InvalidSpec { .. })),
                "case {i} accepted"
            );
        }
    }
}
