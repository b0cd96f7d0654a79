//! `baton exec`'s commands: an exec with its stdio attached to the agent, run like every
//! clone in the runtime helper ([`super::op`]), both sides of it.
//!
//! The helper cannot hand the command's stdio to the agent through its own stdio (the
//! request and reply use those), so file descriptors travel over the reply socket
//! (SCM_RIGHTS, through rustix, which gives them back as `OwnedFd` without unsafe code):
//! - pipes: the agent makes them and sends the container's ends to the helper before it
//!   builds the tenant;
//! - a terminal: libcontainer makes it in the container (its devpts, so `tty` and
//!   `stty` work there) and sends the master to the helper's console socket, which passes
//!   it on to the agent. The window size is set by the executor in the container before
//!   `execve`, so the command never sees 0x0.
//!
//! Then the helper stays, as the tenant's parent, until the command exits, and answers its
//! status. It also watches the socket: when the agent shuts its end (a `kill`, or the agent
//! died) the helper kills the command, then reaps it. Killing from the parent before the
//! reap means the pid cannot have been reused.

use std::fs;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use super::executor::ExplicitEnvExecutor;
use super::op::{exec_lock, failed, Op, OpError, Reply, Request, OP_ARG};
use super::reap::{reap_failed_build, thread_children};
use super::remove_tenant_sockets;

/// How long the helper may take to start the command.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// The byte that says "started" on the reply socket (a reply is JSON, so never 0).
const STARTED: u8 = 0;

/// A command running in a helper, as the agent holds it.
pub(super) struct Running {
    pub(super) pty: Option<OwnedFd>,
    pub(super) child: Child,
    pub(super) socket: Arc<UnixStream>,
}

/// The agent's side: starts `req` (a [`Request::Attach`]) in a new helper, giving it
/// `pipes` (the container's ends of stdin, stdout and stderr) unless it asks for a tty.
pub(super) fn start(
    helper: &Path,
    req: &Request,
    pipes: Option<[OwnedFd; 3]>,
) -> Result<Result<Running, Reply>, OpError> {
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
    let started = (|| -> io::Result<(u8, Option<OwnedFd>)> {
        if let Some(fds) = &pipes {
            send_fds(&mine, &[fds[0].as_fd(), fds[1].as_fd(), fds[2].as_fd()])?;
        }
        // Only the helper (and then the command) may hold the container's ends.
        drop(pipes);
        mine.set_read_timeout(Some(START_DEADLINE))?;
        recv_fd(&mine)
    })();
    let (first, pty) = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    OpError::Hung(START_DEADLINE)
                }
                _ => e.into(),
            });
        }
    };
    if let Some(Err(e)) = sent {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e.into());
    }
    if first == STARTED {
        mine.set_read_timeout(None)?;
        return Ok(Ok(Running {
            pty,
            child,
            socket: Arc::new(mine),
        }));
    }
    // Not started: the byte was the first of the helper's (failure) reply.
    let mut reply = vec![first];
    let _ = (&mine).read_to_end(&mut reply);
    let status = child.wait()?;
    serde_json::from_slice(&reply)
        .map(Err)
        .map_err(|_| OpError::NoReply {
            status,
            reply: String::from_utf8_lossy(&reply).into_owned(),
        })
}

impl Running {
    /// Blocks until the helper answers the command's status.
    pub(super) fn wait(mut self) -> Result<Reply, OpError> {
        let mut reply = Vec::new();
        (&*self.socket).read_to_end(&mut reply)?;
        let status = self.child.wait()?;
        serde_json::from_slice(&reply).map_err(|_| OpError::NoReply {
            status,
            reply: String::from_utf8_lossy(&reply).into_owned(),
        })
    }
}

/// Makes the helper kill the command: it sees the end of our side of the socket.
pub(super) fn kill(socket: &UnixStream) {
    let _ = socket.shutdown(std::net::Shutdown::Write);
}

fn send_fds(socket: &UnixStream, fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many file descriptors to send"));
    }
    loop {
        match rustix::net::sendmsg(
            socket,
            &[IoSlice::new(&[STARTED])],
            &mut cmsg,
            SendFlags::empty(),
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map(|_| ()).map_err(Into::into),
        }
    }
}

/// Reads one byte and the descriptors sent with it (the first, if any: the others are
/// closed). An end of stream is an error.
fn recv_fds(socket: &UnixStream) -> io::Result<(u8, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    // A receive on a socket with a read timeout is never restarted after a signal
    // handler ran (signal(7)), whatever SA_RESTART says: the agent's SIGCHLD (any child
    // of the agent ending, an iptables-restore say) would fail the exec.
    let got = loop {
        match rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(&mut byte)],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    if got.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the runtime helper ended without a reply",
        ));
    }
    let mut fds = Vec::new();
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    Ok((byte[0], fds))
}

fn recv_fd(socket: &UnixStream) -> io::Result<(u8, Option<OwnedFd>)> {
    let (b, fds) = recv_fds(socket)?;
    Ok((b, fds.into_iter().next()))
}

/// The helper's side of [`Request::Attach`]: answers through `out` (also the channel of
/// the descriptors and of the agent's kill).
pub(super) fn serve(
    id: &str,
    containers_dir: &Path,
    config: &Path,
    args: Vec<String>,
    tty: Option<(u16, u16)>,
    out: &UnixStream,
) -> Reply {
    let pipes = if tty.is_none() {
        match recv_fds(out) {
            Ok((_, fds)) if fds.len() == 3 => Some(fds),
            Ok(_) => return failed(Op::Exec, &io::Error::other("expected 3 stdio pipes")),
            Err(e) => return failed(Op::Exec, &e),
        }
    } else {
        None
    };
    let bundle_spec = match Spec::load(config) {
        Ok(s) => s,
        Err(e) => return failed(Op::Exec, &e),
    };
    let executor = ExplicitEnvExecutor::for_tenant(
        bundle_spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().clone()),
    )
    .with_winsize(tty);
    let container_dir = containers_dir.join(id);
    let lock = match exec_lock(&container_dir) {
        Ok(l) => l,
        Err(e) => return failed(Op::Exec, &e),
    };
    let console = match tty {
        Some(_) => match Console::open(&container_dir, &bundle_spec, &args) {
            Ok(c) => Some(c),
            Err(e) => return failed(Op::Exec, &e),
        },
        None => None,
    };
    let user = bundle_spec.process().as_ref().map(|p| p.user().clone());
    let before = thread_children();
    let built = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(containers_dir)
        .map(|b| {
            let b = b.with_executor(executor);
            match (pipes, &console) {
                (Some(fds), _) => {
                    let [i, o, e]: [OwnedFd; 3] = match fds.try_into() {
                        Ok(a) => a,
                        Err(_) => unreachable!("three descriptors were checked"),
                    };
                    b.with_stdin(i)
                        .with_stdout(o)
                        .with_stderr(e)
                        .as_tenant()
                        .with_container_args(args)
                        .with_user(user.as_ref().map(|u| u.uid()))
                        .with_group(user.as_ref().map(|u| u.gid()))
                }
                (None, Some(c)) => b
                    .with_console_socket(Some(&c.socket_path))
                    .as_tenant()
                    .with_process(Some(&c.process_path)),
                (None, None) => unreachable!("a tty or pipes"),
            }
            .with_detach(true)
        })
        .and_then(|b| b.build());
    if built.is_err() {
        reap_failed_build(&before);
    }
    remove_tenant_sockets(&container_dir);
    drop(lock);
    let pid = match built {
        Ok(pid) => pid,
        Err(e) => {
            drop(console);
            return failed(Op::Exec, &e);
        }
    };
    let pty = match console.map(|c| c.master()).transpose() {
        Ok(p) => p,
        Err(e) => {
            kill_and_reap(pid);
            return failed(Op::Exec, &e);
        }
    };
    let sent = match &pty {
        Some(m) => send_fds(out, &[m.as_fd()]),
        None => rustix::net::send(out, &[STARTED], SendFlags::empty())
            .map(drop)
            .map_err(io::Error::from),
    };
    drop(pty);
    if sent.is_err() {
        return Reply::Exec {
            exit: Some(kill_and_reap(pid)),
        };
    }
    Reply::Exec {
        exit: Some(wait_or_kill(pid, out)),
    }
}

/// Waits for `pid`; kills it when the agent's side of `socket` ends.
fn wait_or_kill(pid: Pid, socket: &UnixStream) -> i32 {
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return -1,
        }
        let mut fds = [rustix::event::PollFd::new(
            socket,
            rustix::event::PollFlags::IN,
        )];
        let nap = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        if let Ok(n) = rustix::event::poll(&mut fds, Some(&nap)) {
            if n > 0 {
                return kill_and_reap(pid);
            }
        }
    }
}

fn kill_and_reap(pid: Pid) -> i32 {
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    loop {
        match waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            _ => return 137,
        }
    }
}

/// What a tenant with a terminal needs: libcontainer takes a terminal only from a process
/// file (`terminal: true`), and sends the master to a console socket.
struct Console {
    listener: UnixListener,
    socket_path: PathBuf,
    process_path: PathBuf,
}

impl Console {
    fn open(container_dir: &Path, spec: &Spec, args: &[String]) -> io::Result<Self> {
        let mut process = spec
            .process()
            .clone()
            .ok_or_else(|| io::Error::other("the container's spec has no process"))?;
        process.set_args(Some(args.to_vec()));
        process.set_terminal(Some(true));
        let me = std::process::id();
        let process_path = container_dir.join(format!("exec-{me}.json"));
        fs::write(
            &process_path,
            serde_json::to_vec(&process).map_err(io::Error::other)?,
        )?;
        // A socket path is at most 107 bytes: bind by a name relative to the container's
        // directory (this process is single-threaded, so changing its directory is safe).
        let name = format!("exec-tty-{me}.sock");
        let here = std::env::current_dir()?;
        std::env::set_current_dir(container_dir)?;
        let bound = UnixListener::bind(&name);
        std::env::set_current_dir(here)?;
        Ok(Self {
            listener: bound?,
            socket_path: container_dir.join(name),
            process_path,
        })
    }

    /// The master libcontainer sent (it did before `build` returned).
    fn master(&self) -> io::Result<OwnedFd> {
        self.listener.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let conn = loop {
            match self.listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(e),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let mut buf = [0u8; 256];
        loop {
            // Never restarted after a signal with a read timeout set (see `recv_fds`).
            match rustix::net::recvmsg(
                &conn,
                &mut [IoSliceMut::new(&mut buf)],
                &mut cmsg,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Err(rustix::io::Errno::INTR) => continue,
                other => break other.map(|_| ())?,
            };
        }
        let fd = cmsg.drain().find_map(|m| match m {
            RecvAncillaryMessage::ScmRights(mut r) => r.next(),
            _ => None,
        });
        fd.ok_or_else(|| io::Error::other("no terminal came from the container"))
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.socket_path);
        let _ = fs::remove_file(&self.process_path);
    }
}
