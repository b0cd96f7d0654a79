//! The default seccomp profile on real containers through `YoukiRuntime`: a container and
//! every command exec'd into it (what exec probes run) are filtered (`Seccomp: 2`), cannot
//! make user namespaces or touch the kernel keyring, and can still fork; `Unconfined` and
//! privileged containers run without a filter.
//!
//! The syscalls are tried by `tests/fixtures/syscall-probe.c`, compiled static here (busybox
//! has no `keyctl`); its exit code has a bit for each call that worked but must not. The
//! file needs the `seccomp` feature (on by default; the static musl build leaves it out).

#![cfg(feature = "seccomp")]

mod rt_support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use baton_agent::runtime::{ExecOutcome, ExitReason, Runtime, Seccomp};
use rt_support::{poll, Fixture};

const EXEC_TIMEOUT: Duration = Duration::from_secs(20);

/// Compiles the probe into `rootfs/bin/syscall-probe`.
fn install_probe(rootfs: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/syscall-probe.c");
    let out = Command::new("cc")
        .args(["-static", "-Os", "-o"])
        .arg(rootfs.join("bin/syscall-probe"))
        .arg(&src)
        .output()
        .expect("a C compiler (cc) with static libc (libc6-dev)");
    assert!(
        out.status.success(),
        "cc -static {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/unshare")).unwrap();
}

/// The `Seccomp:` line of a host process's status (`0` none, `2` filter).
fn seccomp_mode(pid: u32) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no Seccomp line in /proc/{pid}/status"))
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_default_container_can_fork_but_not_unshare() {
    let mut fx = Fixture::new("seccomp-run");
    install_probe(&fx.rootfs);
    let script = "grep Seccomp: /proc/self/status; \
                  unshare -U -r true; echo unshare=$?; \
                  syscall-probe; echo probe=$?; \
                  echo a | cat | cat; echo pipe=$?";
    let spec = fx.spec("c", &["sh", "-c", script]);
    assert_eq!(spec.security.seccomp, Seccomp::Default);
    let (reason, log) = fx.run_to_end(&spec);
    assert_eq!(reason, ExitReason::Exited(0), "{log}");
    for want in [
        "Seccomp:\t2\n",
        "Operation not permitted",
        "unshare=1\n",
        "add_key=1\n",
        "keyctl=1\n",
        "unshare_user=1\n",
        "clone_newuser=1\n",
        "clone=0\n",
        "probe=0\n",
        "a\npipe=0\n",
    ] {
        assert!(log.contains(want), "{want:?} missing from:\n{log}");
    }
}

#[test]
fn execs_into_a_default_container_are_filtered_too() {
    let fx = Fixture::new("seccomp-exec");
    install_probe(&fx.rootfs);
    let spec = fx.spec("c", &["sleep", "600"]);
    let pid = fx.runtime.run(&spec).unwrap();
    assert_eq!(seccomp_mode(pid), "2");
    let exec = |a: &[&str]| fx.runtime.exec(&spec.id, &args(a), EXEC_TIMEOUT).unwrap();
    assert_eq!(
        exec(&["sh", "-c", "grep -q '^Seccomp:.2$' /proc/self/status"]),
        ExecOutcome::Exited(0),
        "an exec'd process runs under the container's filter"
    );
    assert_eq!(exec(&["syscall-probe"]), ExecOutcome::Exited(0));
    assert_eq!(
        exec(&["unshare", "-U", "-r", "true"]),
        ExecOutcome::Exited(1)
    );
    fx.runtime.delete(&spec.id).unwrap();
}

#[test]
fn unconfined_and_privileged_containers_have_no_filter() {
    let fx = Fixture::new("seccomp-off");
    install_probe(&fx.rootfs);
    let mut unconfined = fx.spec("u", &["sleep", "600"]);
    unconfined.security.seccomp = Seccomp::Unconfined;
    let mut privileged = fx.spec("p", &["sleep", "600"]);
    privileged.security.privileged = true;
    for spec in [&unconfined, &privileged] {
        let pid = fx.runtime.run(spec).unwrap();
        assert_eq!(seccomp_mode(pid), "0", "{}", spec.id);
        // add_key and keyctl reach the kernel (bits 1 and 2 of the probe's exit code).
        let probe = fx
            .runtime
            .exec(&spec.id, &args(&["syscall-probe"]), EXEC_TIMEOUT)
            .unwrap();
        let ExecOutcome::Exited(code) = probe else {
            panic!("probe in {} timed out", spec.id)
        };
        assert_eq!(code & 3, 3, "{}: probe exited {code}", spec.id);
        fx.runtime.delete(&spec.id).unwrap();
        poll("the container's state to go", || {
            fx.runtime.state(&spec.id).unwrap().is_none().then_some(())
        });
    }
}
