//! The libcontainer calls that clone processes (create + start, exec), each run in a fresh
//! single-threaded process: the agent's own binary, re-executed as `baton-agent runtime-op`
//! (see the module docs of [`super`] for why). The request goes in on stdin and the reply
//! comes back on stdout (a socket, see [`call`]), one JSON document each.
//!
//! Why an exec per operation and not a long-lived helper (a zygote): it measured cheap
//! enough (docs/benchmarks.md, issue 14), it is far less code (no protocol state, no helper
//! to restart, nothing shared between operations) and each operation starts from a clean
//! process, so a libcontainer bug that leaks or hangs costs one operation, not the node.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::executor::{handle_sigpipe, ExplicitEnvExecutor};
use super::reap::{reap_failed_build, thread_children, wait_with_timeout};
use super::remove_tenant_sockets;
use crate::runtime::{logs, ExecOutcome, Operation};

/// The first argument that makes a binary linking this library serve one operation.
pub const OP_ARG: &str = "runtime-op";

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Request {
    /// Create and start the container of the bundle; its output goes to `log_path`.
    Run {
        id: String,
        containers_dir: PathBuf,
        bundle: PathBuf,
        log_path: PathBuf,
    },
    /// Run `args` in the running container, as its user, under its seccomp filter.
    Exec {
        id: String,
        containers_dir: PathBuf,
        config: PathBuf,
        args: Vec<String>,
        timeout_ms: u64,
    },
    /// Run `args` in the running container with stdio attached to the agent: pipes the
    /// agent sends, or a terminal of `tty` (rows, cols); see [`super::attach`].
    Attach {
        id: String,
        containers_dir: PathBuf,
        config: PathBuf,
        args: Vec<String>,
        tty: Option<(u16, u16)>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Reply {
    Started {
        pid: i32,
    },
    /// `None`: still running at the deadline, so it was killed.
    Exec {
        exit: Option<i32>,
    },
    Failed {
        op: Op,
        error: String,
    },
}

/// [`Operation`] on the wire.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) enum Op {
    Create,
    Start,
    Exec,
}

impl From<Op> for Operation {
    fn from(op: Op) -> Self {
        match op {
            Op::Create => Self::Create,
            Op::Start => Self::Start,
            Op::Exec => Self::Exec,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum OpError {
    #[error("cannot run the runtime helper {}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("runtime helper i/o")]
    Io(#[from] io::Error),
    #[error("the runtime helper took longer than {0:?} and was killed")]
    Hung(Duration),
    #[error("the runtime helper ended without a valid reply ({status}): {reply:?}")]
    NoReply {
        status: std::process::ExitStatus,
        reply: String,
    },
}

/// Runs `req` in a new process of `helper` and returns its reply. A helper that has not
/// replied by `deadline` is killed: an operation never blocks its caller forever.
///
/// The reply comes over a socket, not a pipe: the helper shuts it down after writing, which
/// ends the stream for every holder at once (a container process it cloned may still hold a
/// copy until it execs), and a socket's read timeout bounds the wait without polling.
pub(super) fn call(helper: &Path, req: &Request, deadline: Duration) -> Result<Reply, OpError> {
    let (mine, theirs) = UnixStream::pair()?;
    let mut child = Command::new(helper)
        .arg(OP_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(OwnedFd::from(theirs)))
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| OpError::Spawn {
            path: helper.to_owned(),
            source,
        })?;
    let sent = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(&serde_json::to_vec(req).unwrap_or_default()));
    let mut reply = Vec::new();
    let read = mine
        .set_read_timeout(Some(deadline.max(Duration::from_millis(1))))
        .and_then(|()| (&mine).read_to_end(&mut reply));
    if let Err(e) = read {
        let _ = child.kill();
        let _ = child.wait();
        return Err(match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => OpError::Hung(deadline),
            _ => e.into(),
        });
    }
    let status = child.wait()?;
    if let Some(Err(e)) = sent {
        return Err(e.into());
    }
    serde_json::from_slice(&reply).map_err(|_| OpError::NoReply {
        status,
        reply: String::from_utf8_lossy(&reply).into_owned(),
    })
}

/// The helper's side: reads one request from stdin, runs it, writes the reply to stdout.
/// Returns the process's exit code. The process has a single thread throughout, so the
/// processes libcontainer clones off it inherit no lock another thread held.
pub fn serve() -> i32 {
    let mut input = Vec::new();
    if let Err(e) = io::stdin().read_to_end(&mut input) {
        eprintln!("runtime-op: cannot read the request: {e}");
        return 2;
    }
    // The reply goes to a close-on-exec copy of stdout, and stdin and stdout become
    // /dev/null, so the container processes cloned from here never hold the agent's pipes.
    let reply_to = match detach_stdio() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("runtime-op: cannot set up stdio: {e}");
            return 2;
        }
    };
    let out = UnixStream::from(reply_to);
    let reply = match serde_json::from_slice::<Request>(&input) {
        Ok(Request::Attach {
            id,
            containers_dir,
            config,
            args,
            tty,
        }) => match handle_sigpipe() {
            Ok(()) => super::attach::serve(&id, &containers_dir, &config, args, tty, &out),
            Err(e) => failed(Op::Exec, &e),
        },
        Ok(req) => handle(req),
        Err(e) => {
            eprintln!("runtime-op: bad request: {e}");
            return 2;
        }
    };
    let written = serde_json::to_vec(&reply).map(|bytes| (&out).write_all(&bytes));
    // Ends the reply for the agent, even while a cloned process still holds the socket.
    let _ = out.shutdown(std::net::Shutdown::Write);
    match written {
        Ok(Ok(())) => 0,
        _ => 2,
    }
}

fn detach_stdio() -> io::Result<OwnedFd> {
    let reply = io::stdout().as_fd().try_clone_to_owned()?;
    let null = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in [0, 1] {
        nix::unistd::dup2(null.as_raw_fd(), fd).map_err(io::Error::from)?;
    }
    Ok(reply)
}

pub(super) fn failed(op: Op, e: &dyn std::error::Error) -> Reply {
    let mut error = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        error.push_str(": ");
        error.push_str(&c.to_string());
        cause = c.source();
    }
    Reply::Failed { op, error }
}

fn handle(req: Request) -> Reply {
    // The containers inherit SIGPIPE from here: handled (reset by exec), not ignored.
    if let Err(e) = handle_sigpipe() {
        return failed(Op::Create, &e);
    }
    match req {
        Request::Run {
            id,
            containers_dir,
            bundle,
            log_path,
        } => run(&id, &containers_dir, &bundle, &log_path),
        Request::Exec {
            id,
            containers_dir,
            config,
            args,
            timeout_ms,
        } => exec(
            &id,
            &containers_dir,
            &config,
            args,
            Duration::from_millis(timeout_ms),
        ),
        Request::Attach { .. } => failed(
            Op::Exec,
            &io::Error::other("an attached exec is served apart"),
        ),
    }
}

fn run(id: &str, containers_dir: &Path, bundle: &Path, log_path: &Path) -> Reply {
    let out: OwnedFd = match logs::open_for_container(log_path) {
        Ok(f) => f.into(),
        Err(e) => return failed(Op::Create, &e),
    };
    let err = match out.try_clone() {
        Ok(fd) => fd,
        Err(e) => return failed(Op::Create, &e),
    };
    let before = thread_children();
    let built = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(containers_dir)
        .and_then(|b| b.validate_id())
        .map(|b| {
            b.with_executor(ExplicitEnvExecutor::default())
                .with_stdout(out)
                .with_stderr(err)
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
        })
        .and_then(|b| b.build());
    let mut container = match built {
        Ok(c) => c,
        Err(e) => {
            reap_failed_build(&before);
            return failed(Op::Create, &e);
        }
    };
    let Some(pid) = container.pid() else {
        return failed(
            Op::Create,
            &io::Error::other("created container has no pid"),
        );
    };
    if let Err(e) = container.start() {
        // The init is this process's child: end and reap it here, the agent deletes the rest.
        kill_and_reap(&mut container, pid);
        return failed(Op::Start, &e);
    }
    Reply::Started { pid: pid.as_raw() }
}

fn kill_and_reap(container: &mut Container, pid: Pid) {
    let sigkill = Signal::from(nix::sys::signal::Signal::SIGKILL);
    if container.kill(sigkill, true).is_err() {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = waitpid(pid, None);
}

/// Through libcontainer's tenant builder, as `youki exec` does: see [`super::YoukiRuntime`]'s
/// `exec`. The tenant is cloned with `CLONE_PARENT`, so it is this process's child.
fn exec(
    id: &str,
    containers_dir: &Path,
    config: &Path,
    args: Vec<String>,
    timeout: Duration,
) -> Reply {
    // As the container's user (the tenant builder would otherwise run it as root) and
    // under its seccomp filter (the tenant builder drops `linux.seccomp`; the executor
    // loads it in the child, right before `execve`, as runc's exec does).
    let bundle_spec = match Spec::load(config) {
        Ok(s) => s,
        Err(e) => return failed(Op::Exec, &e),
    };
    let user = bundle_spec.process().as_ref().map(|p| p.user().clone());
    let executor = ExplicitEnvExecutor::for_tenant(
        bundle_spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().clone()),
    );
    let devnull = || -> io::Result<OwnedFd> {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
    };
    let (stdin, stdout, stderr) = match (devnull(), devnull(), devnull()) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => return failed(Op::Exec, &e),
    };
    let container_dir = containers_dir.join(id);
    // Execs into one container build one at a time (other helpers may exec into it now):
    // libcontainer leaves the tenant's notify socket behind, one file per exec, and only
    // while no build is under way are they all unused.
    let lock = match exec_lock(&container_dir) {
        Ok(l) => l,
        Err(e) => return failed(Op::Exec, &e),
    };
    let before = thread_children();
    let built = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(containers_dir)
        .map(|b| {
            b.with_executor(executor)
                .with_stdin(stdin)
                .with_stdout(stdout)
                .with_stderr(stderr)
                .as_tenant()
                .with_container_args(args)
                .with_detach(true)
                .with_user(user.as_ref().map(|u| u.uid()))
                .with_group(user.as_ref().map(|u| u.gid()))
        })
        .and_then(|b| b.build());
    if built.is_err() {
        reap_failed_build(&before);
    }
    remove_tenant_sockets(&container_dir);
    drop(lock);
    let pid = match built {
        Ok(pid) => pid,
        Err(e) => return failed(Op::Exec, &e),
    };
    match wait_with_timeout(pid, timeout) {
        Ok(ExecOutcome::Exited(code)) => Reply::Exec { exit: Some(code) },
        Ok(ExecOutcome::TimedOut) => Reply::Exec { exit: None },
        Err(e) => failed(Op::Exec, &e),
    }
}

/// An exclusive `flock` on a file in the container's state directory, held until dropped.
pub(super) fn exec_lock(container_dir: &Path) -> io::Result<nix::fcntl::Flock<fs::File>> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(container_dir.join(EXEC_LOCK))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io::Error::from(e))
}

/// The lock file of [`exec_lock`]; `list` and `load` only look at `state.json`.
const EXEC_LOCK: &str = "exec.lock";
