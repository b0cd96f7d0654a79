//! The default seccomp profile end to end: a pod applied with nothing about seccomp runs
//! filtered (`Seccomp: 2` in its init's `/proc/<pid>/status`), and `unshare -U -r`,
//! `add_key` and `keyctl` fail with EPERM inside it, while it can still fork; its exec
//! readiness probe runs under the same filter. A pod with `seccompProfile: Unconfined`
//! (admitted because this lab's coordinator runs with `--allow-privileged`; refused
//! without it, see pods.rs) runs with `Seccomp: 0`.
//!
//! busybox has no `keyctl`: `tests/fixtures/syscall-probe.c` is compiled static into a
//! hostPath directory the pods mount. Its exit code has a bit per call that worked but
//! must not in a confined container; the pods write its output into that directory.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::fleet::{init_pid, is_ready, node_of, uid};
use baton_e2e::{repo_root, wait_for, Broker, Lab};

const LONG: Duration = Duration::from_secs(120);

/// A busybox pod that records what it may do into `/host/<name>.txt`, then sleeps.
fn pod(registry: &str, name: &str, host: &str, spec: &str, container: &str) -> String {
    let script = format!(
        "grep Seccomp: /proc/self/status > /host/{name}.tmp; \
         unshare -U -r true 2>> /host/{name}.tmp; echo unshare=$? >> /host/{name}.tmp; \
         /host/syscall-probe >> /host/{name}.tmp; echo probe=$? >> /host/{name}.tmp; \
         echo a | cat | cat >> /host/{name}.tmp; \
         mv /host/{name}.tmp /host/{name}.txt; exec sleep 600"
    );
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  volumes: [{{name: host, hostPath: {{path: {host}}}}}]\n{spec}  containers:\n  - name: c\n    image: {registry}/baton/busybox:1\n    command: [sh, -c, \"{script}\"]\n    volumeMounts: [{{name: host, mountPath: /host}}]\n{container}"
    )
}

/// The `Seccomp:` value of a host process.
fn seccomp_mode(pid: u32) -> Result<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(|v| v.trim().to_owned())
        .context("no Seccomp line")
}

/// What pod `name` wrote, once it has.
fn report(dir: &Path, name: &str) -> Result<String> {
    let file = dir.join(format!("{name}.txt"));
    wait_for(&format!("{name} to write its report"), LONG, || {
        Ok(fs::read_to_string(&file).ok())
    })
}

#[test]
fn default_pods_are_confined_and_unconfined_ones_are_not() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("baton-e2e-seccomp-")
        .tempdir()?;
    let src = repo_root().join("tests/fixtures/syscall-probe.c");
    let out = Command::new("cc")
        .args(["-static", "-Os", "-o"])
        .arg(dir.path().join("syscall-probe"))
        .arg(&src)
        .output()
        .context("cc (a C compiler with static libc) is needed for the probe")?;
    ensure!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = dir.path().to_string_lossy().into_owned();
    let lab = Lab::start_with(
        "secc",
        1,
        Broker::Embedded,
        &["--allow-privileged", "--allow-host-path", &host],
    )?;
    let r = confined_and_unconfined(&lab, &host, dir.path());
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn confined_and_unconfined(lab: &Lab, host: &str, dir: &Path) -> Result<()> {
    let reg = lab.registry();
    let manifest = [
        // Nothing about seccomp; the readiness probe is the probe program, exec'd into the
        // container: the pod is Ready only if the exec'd process is confined as well.
        pod(
            &reg,
            "confined",
            host,
            "",
            "    readinessProbe:\n      exec: {command: [/host/syscall-probe]}\n      periodSeconds: 1\n",
        ),
        pod(
            &reg,
            "unconfined",
            host,
            "  securityContext: {seccompProfile: {type: Unconfined}}\n",
            "",
        ),
    ]
    .join("---\n");
    lab.apply(&manifest)?;

    let confined = report(dir, "confined")?;
    for want in [
        "Seccomp:\t2\n",
        "Operation not permitted",
        "unshare=1\n",
        "add_key=1\n",
        "keyctl=1\n",
        "clone_newuser=1\n",
        "unshare_user=1\n",
        "clone=0\n",
        "probe=0\n",
        "\na\n",
    ] {
        ensure!(
            confined.contains(want),
            "confined: no {want:?} in:\n{confined}"
        );
    }
    let p = wait_for("confined to be Ready", LONG, || {
        let p = lab.get_json(&["get", "pod", "confined"])?;
        Ok(is_ready(&p).then_some(p))
    })?;
    let pid = init_pid(lab, &node_of(&p), &uid(&p), "c")?;
    ensure!(seccomp_mode(pid)? == "2", "confined init {pid} unfiltered");

    let unconfined = report(dir, "unconfined")?;
    for want in [
        "Seccomp:\t0\n",
        "unshare=0\n",
        "add_key=0\n",
        "keyctl=0\n",
        "\na\n",
    ] {
        ensure!(
            unconfined.contains(want),
            "unconfined: no {want:?} in:\n{unconfined}"
        );
    }
    let p = lab.get_json(&["get", "pod", "unconfined"])?;
    let pid = init_pid(lab, &node_of(&p), &uid(&p), "c")?;
    ensure!(seccomp_mode(pid)? == "0", "unconfined init {pid} filtered");
    Ok(())
}
