//! Exercises what third_party/libcontainer/32bit.patch changed, through libcontainer's public API:
//! `Syscall::set_rlimit` (OCI's u64 limits into a possibly 32-bit `rlim_t`) and
//! `tty::setup_console` (the devpts `f_type` and ptmx inode checks). The third changed spot,
//! the clone stack size from `RLIMIT_STACK`, is private and runs on every container start.
//! Prints one line per check and exits 1 if any failed.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::ExitCode;

use libcontainer::oci_spec::runtime::{PosixRlimitBuilder, PosixRlimitType};
use libcontainer::syscall::syscall::create_syscall;
use nix::sys::resource::{getrlimit, Resource};
use nix::sys::socket::{self, ControlMessageOwned, MsgFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

/// OCI's spelling of a kernel limit: u64, with u64::MAX for unlimited.
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

fn check_rlimits(fail: &mut u32) {
    let (_, hard) = getrlimit(Resource::RLIMIT_CORE).expect("getrlimit");
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
        return;
    }
    expect("u64::MAX is RLIM_INFINITY", u64::MAX, libc::RLIM_INFINITY);
    // Exact where rlim_t is 64-bit (musl everywhere, 64-bit glibc); unlimited where it is
    // 32-bit (32-bit glibc), instead of a truncated 1.
    let big = (1u64 << 32) + 1;
    expect(
        "above 4 GiB",
        big,
        libc::rlim_t::try_from(big).unwrap_or(libc::RLIM_INFINITY),
    );
}

/// setup_console opens a pty, checks both ends are real devpts nodes (the patched checks),
/// then sends the master over the socket and takes over stdio, so it runs in a child.
fn check_console(fail: &mut u32) {
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
            let fd: RawFd = child.as_raw_fd();
            std::mem::forget(child); // setup_console closes it
            let code = match libcontainer::tty::setup_console(&*create_syscall(), fd, false) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("FAIL console: setup_console: {e}");
                    1
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child: pid } => {
            drop(child);
            let got_master = recv_fd(&parent).is_some();
            let status = waitpid(pid, None).expect("waitpid");
            if got_master && status == WaitStatus::Exited(pid, 0) {
                println!("ok   console: ptmx and slave verified, master received");
            } else {
                println!("FAIL console: master received: {got_master}, child: {status:?}");
                *fail += 1;
            }
        }
    }
}

fn recv_fd(sock: &OwnedFd) -> Option<RawFd> {
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
    });
    fd
}

fn main() -> ExitCode {
    println!(
        "libcontainer 32-bit patch test: usize {} bits, rlim_t {} bits",
        usize::BITS,
        std::mem::size_of::<libc::rlim_t>() * 8
    );
    let mut fail = 0;
    check_rlimits(&mut fail);
    check_console(&mut fail);
    if fail == 0 {
        println!("all ok");
        ExitCode::SUCCESS
    } else {
        println!("{fail} failed");
        ExitCode::FAILURE
    }
}
