//! Exercises what third_party/libcontainer/32bit.patch changed, through libcontainer's public API:
//! `Syscall::set_rlimit` (OCI's u64 limits into a possibly 32-bit `rlim_t`) and
//! `tty::setup_console` (the devpts `f_type` and ptmx inode checks). The third changed spot,
//! the clone stack size from `RLIMIT_STACK`, is private and runs on every container start.
//! Prints one line per check and exits 1 if any failed; `all ok` only when none was skipped.
//!
//! setup_console runs inside a container, after pivot_root, where /dev/ptmx is the
//! container's own devpts instance's ptmx. So the console checks run in a child that builds
//! that /dev first, whatever the caller's /dev is (a devtmpfs node on a host, a device node
//! copied into a privileged container's tmpfs): a private mount namespace, a new devpts
//! instance on /dev/pts and its ptmx bound over /dev/ptmx. Needs root (CAP_SYS_ADMIN), and
//! in a container an unconfined (privileged) one.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::ExitCode;

use libcontainer::oci_spec::runtime::{PosixRlimitBuilder, PosixRlimitType};
use libcontainer::syscall::syscall::create_syscall;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::socket::{self, ControlMessageOwned, MsgFlags};
use nix::sys::stat::{fstat, makedev, mknod, Mode, SFlag};
use nix::sys::statfs::{fstatfs, DEVPTS_SUPER_MAGIC};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, mkdir, symlinkat, ForkResult};

/// OCI's spelling of a kernel limit: u64, with u64::MAX for unlimited.
#[allow(clippy::unnecessary_cast)] // rlim_t is u32 on 32-bit glibc
fn oci(v: libc::rlim_t) -> u64 {
    if v == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        v as u64
    }
}

fn set_core(soft: u64, hard: u64) -> Result<(libc::rlim_t, libc::rlim_t), String> {
    let rl = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitCore)
        .soft(soft)
        .hard(hard)
        .build()
        .map_err(|e| e.to_string())?;
    create_syscall()
        .set_rlimit(&rl)
        .map_err(|e| e.to_string())?;
    getrlimit(Resource::RLIMIT_CORE).map_err(|e| e.to_string())
}

fn check_rlimits(fail: &mut u32, skipped: &mut u32) {
    let (soft, hard) = getrlimit(Resource::RLIMIT_CORE).expect("getrlimit");
    // The unlimited and above-4-GiB cases need an unlimited hard limit: raise it where
    // allowed (CAP_SYS_RESOURCE), so that a caller's finite limit does not skip them.
    let hard = if hard != libc::RLIM_INFINITY
        && setrlimit(Resource::RLIMIT_CORE, soft, libc::RLIM_INFINITY).is_ok()
    {
        libc::RLIM_INFINITY
    } else {
        hard
    };
    let mut expect = |what: &str, soft: u64, want: libc::rlim_t| match set_core(soft, oci(hard)) {
        Ok((got, got_hard)) if got == want && got_hard == hard => {
            println!("ok   rlimit {what}: {got}")
        }
        other => {
            println!("FAIL rlimit {what}: set soft={soft}, want ({want}, {hard}), got {other:?}");
            *fail += 1;
        }
    };
    expect("small value, exact", 4096.min(oci(hard)), 4096.min(hard));
    if hard != libc::RLIM_INFINITY {
        println!("skip rlimit unlimited/above 4 GiB: RLIMIT_CORE's hard limit is {hard}");
        *skipped += 1;
        return;
    }
    expect("u64::MAX is RLIM_INFINITY", u64::MAX, libc::RLIM_INFINITY);
    // Above 4 GiB, the reference is the libc call itself with the value converted without
    // truncation (a 32-bit rlim_t, 32-bit glibc's, cannot hold it: unlimited), read back
    // on this kernel: a 64-bit kernel keeps it exact, a 32-bit one (its rlimits are
    // unsigned long) makes it unlimited, as it does any value above its ULONG_MAX. The
    // unpatched code would set a truncated 1.
    let big = (1u64 << 32) + 1;
    let converted = libc::rlim_t::try_from(big).unwrap_or(libc::RLIM_INFINITY);
    let kernel = setrlimit(Resource::RLIMIT_CORE, converted, hard)
        .and_then(|()| getrlimit(Resource::RLIMIT_CORE))
        .map(|(soft, _)| soft);
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, hard);
    match kernel {
        Ok(want) => {
            if want != converted {
                println!("note rlimit above 4 GiB: this kernel keeps {converted} as {want}");
            }
            expect("above 4 GiB", big, want);
        }
        Err(e) => {
            println!("FAIL rlimit above 4 GiB: the reference setrlimit failed: {e}");
            *fail += 1;
        }
    }
}

/// What /dev/ptmx is in the console child's /dev.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ptmx {
    /// A symlink to pts/ptmx, the devpts instance's own, as container runtimes make it:
    /// setup_console must accept it.
    Devpts,
    /// A 5:2 character device on the /dev tmpfs (it opens, through the pts directory next
    /// to it), the attack CVE-2025-52565's checks stop: setup_console must refuse it, so
    /// the patched f_type comparison is not vacuous.
    NodeOnTmpfs,
}

/// Gives this process a container's /dev, in a private mount namespace: a tmpfs with a new
/// devpts instance on pts/ and a ptmx as `ptmx` says.
fn make_dev(ptmx: Ptmx) -> Result<(), String> {
    let e = |what: &'static str| move |err: nix::Error| format!("{what}: {err}");
    let none: Option<&str> = None;
    unshare(CloneFlags::CLONE_NEWNS).map_err(e("unshare(CLONE_NEWNS)"))?;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(e("making / private"))?;
    mount(
        Some("tmpfs"),
        "/dev",
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=755"),
    )
    .map_err(e("mounting a tmpfs on /dev"))?;
    mkdir("/dev/pts", Mode::from_bits_truncate(0o755)).map_err(e("mkdir /dev/pts"))?;
    mount(
        Some("devpts"),
        "/dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(e("mounting a devpts instance on /dev/pts"))?;
    match ptmx {
        Ptmx::Devpts => symlinkat("pts/ptmx", None, "/dev/ptmx").map_err(e("symlink /dev/ptmx")),
        Ptmx::NodeOnTmpfs => mknod(
            "/dev/ptmx",
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(5, 2),
        )
        .map_err(e("mknod /dev/ptmx 5:2")),
    }
}

/// The console child's exit code when setup_console refused a ptmx for its filesystem type.
const REFUSED_NOT_DEVPTS: i32 = 3;

/// setup_console opens a pty, checks both ends are real devpts nodes (the patched checks),
/// then sends the master over the socket and takes over stdio, so it runs in a child.
/// Returns the received master, if any, and the child's exit code.
fn console_child(ptmx: Ptmx) -> (Option<OwnedFd>, Option<i32>) {
    let (parent, child) = socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::Stream,
        None,
        socket::SockFlag::empty(),
    )
    .expect("socketpair");
    // SAFETY: single-threaded here; the child only calls async-signal-safe-enough code and exits.
    #[allow(unsafe_code)]
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(parent);
            if let Err(e) = make_dev(ptmx) {
                eprintln!("console child: {e}");
                std::process::exit(2);
            }
            let fd: RawFd = child.as_raw_fd();
            std::mem::forget(child); // setup_console closes it
            let code = match libcontainer::tty::setup_console(&*create_syscall(), fd, false) {
                Ok(()) => 0,
                Err(e) => {
                    // stderr is still the caller's: setup_console failed before taking it.
                    eprintln!("console child: setup_console: {e}");
                    if e.to_string().contains("not on a real devpts mount") {
                        REFUSED_NOT_DEVPTS
                    } else {
                        1
                    }
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child: pid } => {
            drop(child);
            let master = recv_fd(&parent);
            let status = waitpid(pid, None).expect("waitpid");
            let code = match status {
                WaitStatus::Exited(_, c) => Some(c),
                _ => None,
            };
            (master, code)
        }
    }
}

fn check_console(fail: &mut u32) {
    // The real thing: accepted, and the master's inode and filesystem type, read back here
    // with the target's own (possibly 32-bit) types, are devpts's ptmx.
    match console_child(Ptmx::Devpts) {
        (Some(master), Some(0)) => {
            let st = fstat(master.as_raw_fd()).expect("fstat");
            let fs = fstatfs(&master).expect("fstatfs");
            #[allow(clippy::useless_conversion)] // ino_t is u32 on 32-bit glibc
            let (ino, magic) = (u64::from(st.st_ino), fs.filesystem_type());
            if ino == 2 && magic == DEVPTS_SUPER_MAGIC {
                println!(
                    "ok   console: devpts ptmx accepted, master received: ino {ino}, f_type {:#x}",
                    magic.0
                );
            } else {
                println!(
                    "FAIL console: master received with ino {ino}, f_type {:#x}",
                    magic.0
                );
                *fail += 1;
            }
        }
        (master, code) => {
            println!(
                "FAIL console: devpts ptmx: master received: {}, child exit code {code:?}",
                master.is_some()
            );
            *fail += 1;
        }
    }
    // A ptmx node that is not on devpts: refused, no master sent.
    match console_child(Ptmx::NodeOnTmpfs) {
        (None, Some(REFUSED_NOT_DEVPTS)) => {
            println!("ok   console: a 5:2 node on tmpfs refused: not on a devpts mount")
        }
        (master, code) => {
            println!(
                "FAIL console: a 5:2 node on tmpfs: master received: {}, child exit code {code:?}",
                master.is_some()
            );
            *fail += 1;
        }
    }
}

fn recv_fd(sock: &OwnedFd) -> Option<OwnedFd> {
    let mut buf = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .ok()?;
    let fd = msg.cmsgs().ok()?.find_map(|c| match c {
        ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
        _ => None,
    })?;
    // SAFETY: SCM_RIGHTS gave this process a new descriptor that nothing else owns.
    #[allow(unsafe_code)]
    Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

fn main() -> ExitCode {
    println!(
        "libcontainer 32-bit patch test: usize {} bits, rlim_t {} bits, ino_t {} bits",
        usize::BITS,
        std::mem::size_of::<libc::rlim_t>() * 8,
        std::mem::size_of::<libc::ino_t>() * 8
    );
    let (mut fail, mut skipped) = (0, 0);
    check_rlimits(&mut fail, &mut skipped);
    check_console(&mut fail);
    match (fail, skipped) {
        (0, 0) => {
            println!("all ok");
            ExitCode::SUCCESS
        }
        (0, s) => {
            println!("ok, {s} skipped");
            ExitCode::SUCCESS
        }
        (f, _) => {
            println!("{f} failed");
            ExitCode::FAILURE
        }
    }
}
