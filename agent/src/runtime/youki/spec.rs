//! The OCI runtime spec of a container, from our [`RunSpec`]: namespaces, mounts, cgroup
//! limits (kubelet's CPU conversions), capabilities, devices and the seccomp filter.

use std::fs;
use std::path::{Path, PathBuf};

use libcontainer::oci_spec::runtime::{
    Arch as OciArch, Capabilities, Capability, LinuxCapabilities, LinuxCpuBuilder, LinuxDevice,
    LinuxDeviceCgroup, LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResources, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscallBuilder, Mount as OciMount, Root, Spec,
    User,
};

use super::{backend, YoukiRuntime};
use crate::runtime::{
    seccomp, ContainerId, Operation, RunSpec, RuntimeError, Seccomp, Security, DEFAULT_CAPABILITIES,
};

/// CFS period used for CPU limits, as kubelet does.
const CPU_PERIOD_US: u64 = 100_000;

impl YoukiRuntime {
    pub(super) fn build_spec(spec: &RunSpec) -> Result<Spec, RuntimeError> {
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
        let target = seccomp::Target::native().filter(|_| crate::runtime::seccomp_available());
        linux.set_seccomp(seccomp_filter(
            &spec.id,
            &spec.security,
            &cap_names,
            target,
        )?);
        oci.set_linux(Some(linux));
        Ok(oci)
    }
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
/// seccomp support (see [`crate::runtime::seccomp_available`]) runs `Default` containers
/// unconfined, having warned at start, and refuses an explicit `RuntimeDefault`: running a
/// container that asked for the filter without it would be a silent downgrade, as
/// containerd's CRI plugin also refuses ("seccomp is not supported"). `target` is `None` on
/// such an agent.
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
pub(super) fn warn_without_seccomp() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if !crate::runtime::seccomp_available() {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent links libcontainer without its net-devices feature (third_party/libcontainer:
    /// netlink code the agent never uses, ~0.5 MB): a spec asking to move a host device in is
    /// refused up front, by name, not half set up.
    #[test]
    fn libcontainer_refuses_net_devices_it_was_built_without() {
        use libcontainer::oci_spec::runtime::{
            LinuxBuilder, LinuxNamespaceBuilder, LinuxNetDeviceBuilder, SpecBuilder,
        };
        use libcontainer::utils::{validate_spec_for_net_devices, NetDevicesError};
        let linux = |devices: bool| {
            let mut b = LinuxBuilder::default().namespaces(vec![LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .build()
                .unwrap()]);
            if devices {
                let dev = LinuxNetDeviceBuilder::default()
                    .name("eth1")
                    .build()
                    .unwrap();
                b = b.net_devices(std::collections::HashMap::from([(
                    "dummy0".to_string(),
                    dev,
                )]));
            }
            SpecBuilder::default()
                .linux(b.build().unwrap())
                .build()
                .unwrap()
        };
        let syscall = libcontainer::syscall::syscall::create_syscall();
        assert!(validate_spec_for_net_devices(&linux(false), &*syscall).is_ok());
        let err = validate_spec_for_net_devices(&linux(true), &*syscall).unwrap_err();
        assert!(matches!(err, NetDevicesError::Unsupported), "{err:?}");
        assert!(err.to_string().contains("net-devices feature"), "{err}");
    }

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
