//! The default seccomp profile every container gets (k8s `RuntimeDefault`), as plain data.
//!
//! The semantics are containerd's default profile (`contrib/seccomp`), which is what a
//! Kubernetes pod gets under `RuntimeDefault` on containerd: the default action is `EPERM`,
//! an allow-list of about 350 syscalls is let through, and a few rules depend on arguments,
//! the CPU architecture and the container's bounding capabilities:
//!
//! - `clone` only without namespace flags and `clone3` answers `ENOSYS` (so libc falls back to
//!   `clone`, whose flags a filter can see), unless the container has `CAP_SYS_ADMIN`;
//!   `unshare`, `setns`, `mount`, `bpf`, `keyctl`'s friends are not on the list at all.
//! - `personality` only with the values programs really use (Linux, `READ_IMPLIES_EXEC`,
//!   `ADDR_NO_RANDOMIZE`, and the query `0xffffffff`).
//! - syscalls a capability would permit anyway (`reboot` with `SYS_BOOT`, `ptrace` tools with
//!   `SYS_PTRACE`, `mount` with `SYS_ADMIN`, ...) are allowed with that capability.
//! - `ptrace` itself only on kernels 4.8 and newer (older ones let a tracer skip the filter).
//!
//! Where Baton is stricter than containerd 1.x, as Docker and containerd 2.x are:
//! - the `io_uring_*` calls are not allowed (a large kernel attack surface that bypasses
//!   syscall filtering for the operations it submits);
//! - `socket(AF_VSOCK, ...)` is refused (the VM host's sockets, for devices that are guests).
//!   `socketcall`, the 32-bit x86 multiplexer, stays allowed as in Docker: its arguments are
//!   in memory, out of a filter's reach.
//!
//! `add_key`, `keyctl` and `request_key` are refused: the kernel keyring is not namespaced, so
//! a container could read or fill keys of the host's users.
//!
//! This module holds data only (no libcontainer): `youki/spec.rs` turns a [`Profile`] into the OCI
//! `linux.seccomp` section. Names unknown to the kernel's architecture are skipped there.

/// `errno` values the profile returns.
pub const EPERM: u32 = 1;
pub const ENOSYS: u32 = 38;
/// `AF_VSOCK`, the first argument of `socket` that is refused.
pub const AF_VSOCK: u64 = 40;

/// The namespace flags `clone` may not carry without `CAP_SYS_ADMIN`.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x0002_0000 // CLONE_NEWNS
    | 0x0200_0000 // CLONE_NEWCGROUP
    | 0x0400_0000 // CLONE_NEWUTS
    | 0x0800_0000 // CLONE_NEWIPC
    | 0x1000_0000 // CLONE_NEWUSER
    | 0x2000_0000 // CLONE_NEWPID
    | 0x4000_0000; // CLONE_NEWNET

/// The `personality` values programs use: `PER_LINUX`, `PER_LINUX32` (0x0008), `UNAME26`
/// (0x20000) alone and with `PER_LINUX32`, and the query `0xffffffff`.
const PERSONALITIES: &[u64] = &[0x0, 0x0008, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// The CPU architecture the agent was built for; it decides the syscall ABIs a filter covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    X86_64,
    Aarch64,
    Arm,
}

impl Target {
    /// This build's architecture, if the profile knows it.
    pub fn native() -> Option<Self> {
        if cfg!(target_arch = "x86_64") {
            Some(Self::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Self::Aarch64)
        } else if cfg!(target_arch = "arm") {
            Some(Self::Arm)
        } else {
            None
        }
    }
}

/// A syscall ABI the filter applies to (libseccomp's architecture tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    X86,
    X32,
    Aarch64,
    Arm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Errno(u32),
}

/// A comparison of one syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq(u64),
    Ne(u64),
    /// `arg & mask == value`.
    MaskedEq {
        mask: u64,
        value: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arg {
    pub index: u32,
    pub cmp: Cmp,
}

/// The syscalls `names` get `action` when every one of `args` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub names: Vec<&'static str>,
    pub action: Action,
    pub args: Vec<Arg>,
}

impl Rule {
    fn allow(names: &[&'static str]) -> Self {
        Self {
            names: names.to_vec(),
            action: Action::Allow,
            args: Vec::new(),
        }
    }

    fn allow_if(name: &'static str, index: u32, cmp: Cmp) -> Self {
        Self {
            names: vec![name],
            action: Action::Allow,
            args: vec![Arg { index, cmp }],
        }
    }
}

/// A whole filter: anything no rule matches fails with `default_errno`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub default_errno: u32,
    pub architectures: Vec<Arch>,
    pub rules: Vec<Rule>,
}

impl Profile {
    /// The rules that apply to `name` (tests and docs).
    pub fn rules_for<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.names.contains(&name))
    }

    /// Allowed whatever its arguments?
    pub fn allows_unconditionally(&self, name: &str) -> bool {
        self.rules_for(name)
            .any(|r| r.action == Action::Allow && r.args.is_empty())
    }
}

/// Allowed for every container, whatever its capabilities (sorted): containerd's list, less
/// `io_uring_*` and `socket` (see the module docs), plus the newer harmless calls Docker's
/// list has (`fchmodat2`, `pkey_*`). 32-bit names
/// (`chown32`, `_llseek`, `*_time64`) matter for the compat ABIs (x86 and x32 on x86_64,
/// arm on aarch64).
const ALLOWED: &[&str] = &[
    "_llseek",
    "_newselect",
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls that exist on one architecture only.
fn arch_allowed(target: Target) -> &'static [&'static str] {
    match target {
        Target::X86_64 => &["arch_prctl", "modify_ldt"],
        Target::Aarch64 | Target::Arm => &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "breakpoint",
            "cacheflush",
            "set_tls",
            "sync_file_range2",
        ],
    }
}

/// The ABIs a filter covers: the native one and the compat ones its kernel runs.
fn architectures(target: Target) -> Vec<Arch> {
    match target {
        Target::X86_64 => vec![Arch::X86_64, Arch::X86, Arch::X32],
        Target::Aarch64 => vec![Arch::Aarch64, Arch::Arm],
        Target::Arm => vec![Arch::Arm],
    }
}

/// What a bounding capability (name without `CAP_`) adds to the allow-list.
fn capability_allowed(cap: &str) -> &'static [&'static str] {
    match cap {
        "DAC_READ_SEARCH" => &["open_by_handle_at"],
        "SYS_ADMIN" => &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
        "SYS_BOOT" => &["reboot"],
        "SYS_CHROOT" => &["chroot"],
        "SYS_MODULE" => &["delete_module", "init_module", "finit_module"],
        "SYS_PACCT" => &["acct"],
        "SYS_PTRACE" => &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
        "SYS_RAWIO" => &["iopl", "ioperm"],
        "SYS_TIME" => &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        "SYS_TTY_CONFIG" => &["vhangup"],
        "SYSLOG" => &["syslog"],
        "BPF" => &["bpf"],
        "PERFMON" => &["perf_event_open"],
        _ => &[],
    }
}

/// The default profile for a container on `target` whose bounding set is `capabilities`
/// (`NET_ADMIN` or `CAP_NET_ADMIN`, any case), on a kernel of version `kernel` (major, minor).
pub fn default_profile(target: Target, capabilities: &[String], kernel: (u32, u32)) -> Profile {
    let caps: Vec<String> = capabilities
        .iter()
        .map(|c| {
            let up = c.trim().to_ascii_uppercase();
            up.strip_prefix("CAP_").map(str::to_owned).unwrap_or(up)
        })
        .collect();
    let mut rules = vec![Rule::allow(ALLOWED), Rule::allow(arch_allowed(target))];
    rules.extend(
        PERSONALITIES
            .iter()
            .map(|&p| Rule::allow_if("personality", 0, Cmp::Eq(p))),
    );
    rules.push(Rule::allow_if("socket", 0, Cmp::Ne(AF_VSOCK)));
    if kernel >= (4, 8) {
        rules.push(Rule::allow(&["ptrace"]));
    }
    for cap in &caps {
        let names = capability_allowed(cap);
        if !names.is_empty() {
            rules.push(Rule::allow(names));
        }
    }
    if !caps.iter().any(|c| c == "SYS_ADMIN") {
        rules.push(Rule::allow_if(
            "clone",
            0,
            Cmp::MaskedEq {
                mask: CLONE_NAMESPACE_FLAGS,
                value: 0,
            },
        ));
        // clone3 passes its flags in memory, where a filter cannot look: ENOSYS makes libc
        // fall back to clone, whose flags the rule above checks (EPERM would be final).
        rules.push(Rule {
            names: vec!["clone3"],
            action: Action::Errno(ENOSYS),
            args: Vec::new(),
        });
    }
    Profile {
        default_errno: EPERM,
        architectures: architectures(target),
        rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// containerd's default capability set, as the runtime hands it on.
    fn default_caps() -> Vec<String> {
        caps(super::super::DEFAULT_CAPABILITIES)
    }

    #[test]
    fn the_allow_list_is_sorted_and_has_no_duplicates() {
        let mut sorted = ALLOWED.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, ALLOWED, "keep ALLOWED sorted, each name once");
    }

    #[test]
    fn what_escapes_the_container_is_not_allowed() {
        let p = default_profile(Target::X86_64, &default_caps(), (6, 1));
        assert_eq!(p.default_errno, EPERM);
        for denied in [
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "init_module",
            "finit_module",
            "kexec_load",
            "reboot",
            "swapon",
            "open_by_handle_at",
            "io_uring_setup",
            "io_uring_enter",
            "userfaultfd",
            "name_to_handle_at",
        ] {
            assert!(
                p.rules_for(denied).next().is_none(),
                "{denied} must fall to the default action"
            );
        }
        // The default capabilities include SYS_CHROOT, so chroot is allowed as in containerd.
        assert!(p.allows_unconditionally("chroot"));
        for allowed in ["read", "execve", "futex", "arch_prctl", "clock_gettime"] {
            assert!(p.allows_unconditionally(allowed), "{allowed}");
        }
        assert_eq!(p.architectures, vec![Arch::X86_64, Arch::X86, Arch::X32]);
    }

    #[test]
    fn clone_is_conditional_without_sys_admin() {
        let p = default_profile(Target::Aarch64, &default_caps(), (5, 10));
        let clone: Vec<_> = p.rules_for("clone").collect();
        assert_eq!(
            clone,
            vec![&Rule::allow_if(
                "clone",
                0,
                Cmp::MaskedEq {
                    mask: CLONE_NAMESPACE_FLAGS,
                    value: 0
                }
            )]
        );
        let clone3: Vec<_> = p.rules_for("clone3").map(|r| r.action).collect();
        assert_eq!(clone3, vec![Action::Errno(ENOSYS)]);
        assert!(!p.allows_unconditionally("unshare"));
        assert!(p.allows_unconditionally("set_tls") && !p.allows_unconditionally("arch_prctl"));
        assert_eq!(p.architectures, vec![Arch::Aarch64, Arch::Arm]);
        // CLONE_NEWUSER is one of the masked flags (what `unshare -U` via clone would use).
        assert_ne!(CLONE_NAMESPACE_FLAGS & 0x1000_0000, 0);
    }

    #[test]
    fn capabilities_widen_the_list_as_in_containerd() {
        let admin = default_profile(
            Target::X86_64,
            &caps(&["CAP_SYS_ADMIN", "sys_ptrace", "SYS_TIME"]),
            (6, 1),
        );
        for name in [
            "clone",
            "clone3",
            "unshare",
            "setns",
            "mount",
            "kcmp",
            "clock_settime",
        ] {
            assert!(admin.allows_unconditionally(name), "{name}");
        }
        assert!(
            admin.rules_for("clone3").all(|r| r.action == Action::Allow),
            "no ENOSYS rule with SYS_ADMIN"
        );
        // Without SYS_CHROOT (dropped), chroot is refused.
        let none = default_profile(Target::X86_64, &[], (6, 1));
        assert!(!none.allows_unconditionally("chroot"));
    }

    #[test]
    fn argument_rules() {
        let p = default_profile(Target::Arm, &default_caps(), (4, 4));
        let personality: Vec<_> = p.rules_for("personality").map(|r| r.args.clone()).collect();
        assert_eq!(personality.len(), PERSONALITIES.len());
        assert!(personality.iter().all(|a| a.len() == 1 && a[0].index == 0));
        let socket: Vec<_> = p.rules_for("socket").collect();
        assert_eq!(socket.len(), 1);
        assert_eq!(socket[0].args[0].cmp, Cmp::Ne(AF_VSOCK));
        // ptrace only from kernel 4.8 on.
        assert!(!p.allows_unconditionally("ptrace"));
        assert!(default_profile(Target::Arm, &[], (4, 8)).allows_unconditionally("ptrace"));
        assert_eq!(p.architectures, vec![Arch::Arm]);
    }
}
