//! Node pressure, end to end (issue 19): an agent whose data directory is a small tmpfs,
//! filled to the last block as a workload writing where it should not would, next to a
//! healthy node. Real agents, real containers, the real broker.
//!
//! What must hold: DiskPressure within a few heartbeats (1 s here), with its taint and an
//! event; new pods go elsewhere; a deletion and a scale-down take effect at once even when
//! the new desired state cannot be persisted; the agent survives kill -9 while full, keeps
//! the restart count its reserve let it write, and applies deletions after it; freeing the
//! space clears the condition and the taint; `reset` leaves no cgroup directory of the node.
//! Reclaim comes before eviction: unused images, then rotated and dead containers' logs;
//! an image store on its own filesystem is relieved by removing unused images. A critical
//! pod is never evicted. A fork bomb is held by the pod pid limit, and without one it puts the node under
//! PIDPressure (a soft threshold here, so its grace period is exercised too) and is evicted.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::fleet::{self, container_running, node_of, owned_pods, uid, EchoDeployment};
use baton_e2e::{container_pids, sh, wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(90);
/// A few of the lab's 1 s heartbeats, plus the CLI's round trip.
const HEARTBEATS: Duration = Duration::from_secs(6);
const DISK_PRESSURE_TAINT: &str = "node.kubernetes.io/disk-pressure";
/// The agent's own defaults (10% of a small tmpfs is what these tests fill past); a lab's
/// agents otherwise run with absolute disk levels (`baton_e2e::LAB_EVICTION_HARD`).
const DEFAULT_EVICTION_HARD: &str = baton_agent::pressure::DEFAULT_EVICTION_HARD;

/// Mounts a tmpfs of `size` on `dir` (created empty, 0700).
fn mount_tmpfs(dir: &Path, size: &str) -> Result<()> {
    fs::create_dir_all(dir)?;
    sh(std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
        .arg(dir))?;
    Ok(())
}

/// Writes `name` in `dir` until the filesystem is full; returns the bytes written.
fn fill(dir: &Path, name: &str) -> Result<u64> {
    let mut f = fs::File::create(dir.join(name))?;
    let chunk = vec![0x5au8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
            Err(e) => return Err(e.into()),
        }
    }
    // Partial pages: write byte by byte until nothing more fits.
    while f.write(&[0x5a]).is_ok_and(|n| n == 1) {
        written += 1;
    }
    Ok(written)
}

fn libc_enospc() -> i32 {
    28
}

fn node(lab: &Lab, name: &str) -> Result<Value> {
    lab.get_json(&["get", "node", name])
}

fn has_condition(n: &Value, t: &str) -> bool {
    n["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == t))
}

fn has_taint(n: &Value, key: &str) -> bool {
    n["spec"]["taints"].as_array().is_some_and(|ts| {
        ts.iter()
            .any(|t| t["key"] == key && t["effect"] == "NoSchedule")
    })
}

fn pod(lab: &Lab, name: &str) -> Result<Option<Value>> {
    Ok(lab
        .pods()?
        .into_iter()
        .find(|p| p["metadata"]["name"] == name))
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A busybox pod pinned to `node` by its hostname label.
fn pinned_pod(registry: &str, name: &str, node: &str, extra_spec: &str, command: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  nodeSelector: {{kubernetes.io/hostname: {node}}}\n{extra_spec}  containers:\n  - name: main\n    image: {registry}/baton/busybox:1\n    command: [sh, -c, \"{command}\"]\n{}",
        if extra_spec.contains("volumes") {
            "    volumeMounts: [{name: data, mountPath: /data}]\n"
        } else {
            ""
        }
    )
}

/// After an eviction: the Burstable `keeper` still runs as the same pod, never restarted, and
/// `node` loses the `condition` and its `taint`.
fn kept_and_relieved(
    lab: &Lab,
    keeper: &Value,
    node_name: &str,
    condition: &str,
    taint: &str,
) -> Result<()> {
    let k = running(lab, "keeper")?;
    ensure!(
        uid(&k) == uid(keeper) && k["status"]["containerStatuses"][0]["restartCount"] == 0,
        "keeper was replaced or restarted: {k}"
    );
    wait_for(&format!("{node_name} out of {condition}"), LONG, || {
        let n = node(lab, node_name)?;
        Ok((!has_condition(&n, condition) && !has_taint(&n, taint)).then_some(()))
    })
}

fn running(lab: &Lab, name: &str) -> Result<Value> {
    wait_for(&format!("{name} running"), LONG, || {
        Ok(pod(lab, name)?.filter(container_running))
    })
}

/// Waits until the first container of pod `name` runs no process on `node` any more.
fn wait_stopped(node: &str, uid: &str, what: &str, timeout: Duration) -> Result<()> {
    wait_for(what, timeout, || {
        Ok(container_pids(node, uid, "main").is_empty().then_some(()))
    })
}

#[test]
fn a_full_data_disk_is_reported_tainted_and_never_blocks_deletions() -> Result<()> {
    let mut lab = Lab::start("press", 2, Broker::Embedded)?;
    // Agent 0 moves onto a 24 MiB tmpfs data directory, as on a small SD card partition.
    lab.kill_agent(0);
    lab.reset_agent(0)?;
    let data = lab.agents[0].data_dir.clone();
    fs::remove_dir_all(&data)?;
    mount_tmpfs(&data, "24m")?;
    // The disk is filled from outside any pod here: evicting pods would not relieve it.
    lab.agent_args = vec![
        "--pod-eviction".into(),
        "false".into(),
        "--eviction-pressure-transition-period".into(),
        "1s".into(),
        "--eviction-hard".into(),
        DEFAULT_EVICTION_HARD.into(),
    ];
    let r = lab.start_agent(0).and_then(|()| full_disk(&mut lab, &data));
    if r.is_err() {
        lab.dump_logs();
    }
    // Whatever happened: no pod left on the tmpfs, then the tmpfs itself.
    lab.kill_agent(0);
    let reset = lab.reset_agent(0);
    let _ = sh(std::process::Command::new("umount").arg("-l").arg(&data));
    r?;
    reset?;
    let n1 = lab.agents[0].name.clone();
    let left: Vec<PathBuf> = fs::read_dir("/sys/fs/cgroup")?
        .flatten()
        .map(|c| c.path().join("baton").join(&n1))
        .filter(|d| d.exists())
        .collect();
    ensure!(left.is_empty(), "reset left the node's cgroups: {left:?}");
    Ok(())
}

fn full_disk(lab: &mut Lab, data: &Path) -> Result<()> {
    let reg = lab.registry();
    let (n1, n2) = (lab.agents[0].name.clone(), lab.agents[1].name.clone());
    lab.apply(&EchoDeployment::new(2).yaml(&reg))?;
    lab.apply(&pinned_pod(&reg, "victim", &n1, "", "exec sleep 3600"))?;
    // Exits once with 3 when told to (a file in its emptyDir), then runs.
    lab.apply(&pinned_pod(
        &reg,
        "once",
        &n1,
        "  volumes: [{name: data, emptyDir: {}}]\n",
        "while [ ! -f /data/go ]; do sleep 0.2; done; [ -f /data/ran ] || { touch /data/ran; exit 3; }; exec sleep 3600",
    ))?;
    let web = fleet::wait_pods(lab, "web", 2, LONG, "2 web pods running", container_running)?;
    ensure!(
        web.iter().any(|p| node_of(p) == n1) && web.iter().any(|p| node_of(p) == n2),
        "web spread over both nodes: {web:?}"
    );
    let victim = running(lab, "victim")?;
    let once = running(lab, "once")?;
    ensure!(node_of(&victim) == n1 && node_of(&once) == n1);

    // Full: DiskPressure, its taint and an event, within a few heartbeats.
    let hog1 = fill(data, "hog1")?;
    println!("filled the data disk with {hog1} bytes");
    wait_for("DiskPressure and its taint on n1", HEARTBEATS, || {
        let n = node(lab, &n1)?;
        Ok((has_condition(&n, "DiskPressure") && has_taint(&n, DISK_PRESSURE_TAINT)).then_some(()))
    })?;
    let table = text(&lab.baton(&["get", "nodes"])?);
    ensure!(
        table
            .lines()
            .any(|l| l.starts_with(&n1) && l.contains("Ready,DiskPressure")),
        "{table}"
    );
    let described = text(&lab.baton(&["describe", "node", &n1])?);
    for want in [
        "NodeHasDiskPressure",
        "nodefs.available",
        DISK_PRESSURE_TAINT,
    ] {
        ensure!(described.contains(want), "no {want:?} in:\n{described}");
    }
    ensure!(!has_taint(&node(lab, &n2)?, DISK_PRESSURE_TAINT));

    // New pods go to the other node; one that can only go to n1 says why it waits.
    lab.baton(&["scale", "deployment", "web", "--replicas", "3"])?;
    let web = fleet::wait_pods(lab, "web", 3, LONG, "3 web pods running", container_running)?;
    let on_n1 = web.iter().filter(|p| node_of(p) == n1).count();
    ensure!(on_n1 == 1, "a new replica went to the full node: {web:?}");
    lab.apply(&pinned_pod(&reg, "pinned", &n1, "", "exec sleep 3600"))?;
    wait_for("pinned to say why it is pending", HEARTBEATS, || {
        let p = pod(lab, "pinned")?.context("pinned exists")?;
        let msg = p["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok((p["status"]["phase"] == "Pending" && msg.contains("untolerated taint")).then_some(()))
    })?;

    // A container exits while the disk is full: its restart count still reaches the disk
    // (the agent's reserve), and a kill -9 of the agent, full as it is, keeps it.
    fs::File::create(data.join("pods").join(uid(&once)).join("volumes/data/go"))?;
    wait_for("once restarted", LONG, || {
        let p = pod(lab, "once")?.context("once exists")?;
        Ok((p["status"]["containerStatuses"][0]["restartCount"] == 1).then_some(()))
    })?;
    lab.kill_agent(0);
    lab.start_agent(0)?;
    let p = wait_for("once reported again after the restart", LONG, || {
        let p = pod(lab, "once")?.context("once exists")?;
        Ok(
            p["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"]
                .as_i64()
                .is_some()
                .then_some(p),
        )
    })?;
    let c = &p["status"]["containerStatuses"][0];
    ensure!(
        c["restartCount"] == 1 && c["lastState"]["terminated"]["exitCode"] == 3,
        "restart count or last state lost across the agent restart: {c}"
    );

    // A deletion takes effect at once.
    lab.baton(&["delete", "pod", "victim"])?;
    wait_stopped(
        &n1,
        &uid(&victim),
        "victim stopped on the full node",
        Duration::from_secs(15),
    )?;
    // Its directory (rootfs, log) is space given back: gone before the disk is filled again.
    fleet::wait_cleaned_up(lab, &n1, &uid(&victim), Duration::from_secs(15))?;

    // Now without any room, not even the reserve: the scale-down still stops n1's replica,
    // and the node says why its applied generation lags.
    let hog2 = fill(data, "hog2")?;
    println!("filled the last {hog2} bytes");
    let web_n1 = owned_pods(lab, "web")?
        .into_iter()
        .find(|p| node_of(p) == n1)
        .context("a web pod on n1")?;
    lab.baton(&["scale", "deployment", "web", "--replicas", "0"])?;
    wait_for("n1's web replica stopped", Duration::from_secs(20), || {
        Ok(container_pids(&n1, &uid(&web_n1), "echo")
            .is_empty()
            .then_some(()))
    })?;
    wait_for("n1's apply error reported", HEARTBEATS, || {
        let n = node(lab, &n1)?;
        let e = n["status"]["applyError"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(e.contains("No space left on device").then_some(()))
    })?;
    let described = text(&lab.baton(&["describe", "node", &n1])?);
    ensure!(
        described.contains("Apply Error:") && described.contains("desired.bin"),
        "{described}"
    );

    // kill -9 while full: the agent starts and applies a deletion made meanwhile.
    lab.kill_agent(0);
    lab.baton(&["delete", "pod", "once"])?;
    lab.start_agent(0)?;
    wait_stopped(
        &n1,
        &uid(&once),
        "once stopped after the restart",
        Duration::from_secs(20),
    )?;

    // Room again: the condition, the taint and the apply error go, and n1 takes pods.
    fs::remove_file(data.join("hog1"))?;
    fs::remove_file(data.join("hog2"))?;
    wait_for("n1 out of pressure", HEARTBEATS, || {
        let n = node(lab, &n1)?;
        Ok((!has_condition(&n, "DiskPressure")
            && !has_taint(&n, DISK_PRESSURE_TAINT)
            && n["status"]["applyError"].is_null())
        .then_some(()))
    })?;
    let table = text(&lab.baton(&["get", "nodes"])?);
    ensure!(
        table
            .lines()
            .any(|l| l.starts_with(&n1) && l.split_whitespace().nth(1) == Some("Ready")),
        "{table}"
    );
    let p = running(lab, "pinned")?;
    ensure!(node_of(&p) == n1);
    let described = text(&lab.baton(&["describe", "node", &n1])?);
    ensure!(described.contains("NodeHasNoDiskPressure"), "{described}");
    lab.baton(&["delete", "pod", "pinned"])?;
    wait_stopped(&n1, &uid(&p), "pinned stopped", Duration::from_secs(20))?;
    Ok(())
}

/// Reclaim, then eviction: a BestEffort pod writing more than the node's data disk holds is
/// evicted (after the unused image is removed) and its Deployment replaces it on the other
/// node, while the node's Burstable pod keeps running; then the pressure clears.
#[test]
fn a_pod_filling_the_disk_is_evicted_and_replaced_elsewhere() -> Result<()> {
    let mut lab = Lab::start("pressev", 2, Broker::Embedded)?;
    lab.kill_agent(0);
    lab.reset_agent(0)?;
    let data = lab.agents[0].data_dir.clone();
    fs::remove_dir_all(&data)?;
    mount_tmpfs(&data, "32m")?;
    lab.agent_args = vec![
        "--eviction-pressure-transition-period".into(),
        "1s".into(),
        "--eviction-hard".into(),
        DEFAULT_EVICTION_HARD.into(),
    ];
    let r = lab.start_agent(0).and_then(|()| eviction(&mut lab));
    if r.is_err() {
        lab.dump_logs();
    }
    lab.kill_agent(0);
    let reset = lab.reset_agent(0);
    let _ = sh(std::process::Command::new("umount").arg("-l").arg(&data));
    r?;
    reset
}

fn eviction(lab: &mut Lab) -> Result<()> {
    let reg = lab.registry();
    let (n1, n2) = (lab.agents[0].name.clone(), lab.agents[1].name.clone());
    // An image that is on n1 but that no pod uses any more: the first thing reclaimed.
    lab.apply(
        &pinned_pod(&reg, "old", &n1, "", "exec sleep 3600").replace("busybox:1", "http-echo:2"),
    )?;
    let old = running(lab, "old")?;
    lab.baton(&["delete", "pod", "old"])?;
    fleet::wait_cleaned_up(lab, &n1, &uid(&old), LONG)?;
    // BestEffort, writing 40 MiB into its emptyDir: more than n1's disk, harmless on n2's.
    lab.apply(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: logger\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: logger}}\n  template:\n    metadata:\n      labels: {{app: logger}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      volumes: [{{name: data, emptyDir: {{}}}}]\n      containers:\n      - name: main\n        image: {reg}/baton/busybox:1\n        command: [sh, -c, \"sleep 10; dd if=/dev/zero of=/data/big bs=1M count=40; exec sleep 3600\"]\n        volumeMounts: [{{name: data, mountPath: /data}}]\n"
    ))?;
    let first = wait_for("logger placed", LONG, || {
        Ok(owned_pods(lab, "logger")?
            .into_iter()
            .find(|p| !p["spec"]["nodeName"].is_null()))
    })?;
    ensure!(
        node_of(&first) == n1,
        "the logger should start on n1 (empty nodes tie, then go by name): {first}"
    );
    // Burstable (it asks for memory): kept.
    let keeper = pinned_pod(&reg, "keeper", &n1, "", "exec sleep 3600").replace(
        "    command:",
        "    resources: {requests: {memory: 16Mi}}\n    command:",
    );
    lab.apply(&keeper)?;
    let keeper = running(lab, "keeper")?;
    let replacement = fleet::wait_pods(
        lab,
        "logger",
        1,
        LONG,
        "the logger evicted and replaced on n2",
        |p| container_running(p) && node_of(p) == n2,
    )?;
    ensure!(uid(&replacement[0]) != uid(&first));
    let log = lab.agent_log(0);
    let (reclaimed, evicted) = (
        log.find("disk pressure: removed unused images"),
        log.find("evicting pod"),
    );
    ensure!(
        matches!((reclaimed, evicted), (Some(a), Some(b)) if a < b),
        "reclaim (unused images) must come before eviction:\n{log}"
    );
    ensure!(
        log.contains("http-echo:2"),
        "the unused image was not reclaimed:\n{log}"
    );
    let described = text(&lab.baton(&["describe", "node", &n1])?);
    ensure!(
        described.contains("Evicted") && described.contains("ephemeral-storage"),
        "{described}"
    );
    // The Burstable pod stayed; the pressure went with the evicted pod's data.
    kept_and_relieved(lab, &keeper, &n1, "DiskPressure", DISK_PRESSURE_TAINT)?;
    lab.baton(&["delete", "pod", "keeper"])?;
    lab.baton(&["delete", "deployment", "logger"])?;
    fleet::wait_cleaned_up(lab, &n1, &uid(&keeper), LONG)?;
    Ok(())
}

/// Bytes an unprivileged writer may still use on `dir`'s filesystem (kubelet's
/// `available`, as the agent measures it).
fn avail(dir: &Path) -> Result<u64> {
    let out = sh(std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir))?;
    text(&out)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .context("df avail")
}

/// Fills `dir`'s filesystem until only `free` bytes are left, with the file `name`.
fn fill_leaving(dir: &Path, name: &str, free: u64) -> Result<()> {
    let written = fill(dir, name)?;
    let f = fs::OpenOptions::new().write(true).open(dir.join(name))?;
    f.set_len(written.saturating_sub(free))?;
    Ok(())
}

/// kubelet reclaims before it evicts: unused images, then rotated logs and dead containers'
/// logs. A finished pod's log holding most of the disk is emptied, which relieves the
/// pressure: no pod is evicted, not even the BestEffort one that would go first.
#[test]
fn dead_containers_logs_are_reclaimed_before_any_eviction() -> Result<()> {
    let mut lab = Lab::start("pressdead", 1, Broker::Embedded)?;
    lab.kill_agent(0);
    lab.reset_agent(0)?;
    let data = lab.agents[0].data_dir.clone();
    fs::remove_dir_all(&data)?;
    mount_tmpfs(&data, "32m")?;
    lab.agent_args = vec![
        "--eviction-pressure-transition-period".into(),
        "1s".into(),
        "--eviction-hard".into(),
        DEFAULT_EVICTION_HARD.into(),
        // One 12 MiB log, never rotated: only the dead-log reclaim can free it.
        "--log-max-bytes".into(),
        (16u64 << 20).to_string(),
    ];
    let r = lab.start_agent(0).and_then(|()| dead_logs(&mut lab, &data));
    if r.is_err() {
        lab.dump_logs();
    }
    let _ = fs::remove_file(data.join("ballast"));
    lab.kill_agent(0);
    let reset = lab.reset_agent(0);
    let _ = sh(std::process::Command::new("umount").arg("-l").arg(&data));
    r?;
    reset
}

fn dead_logs(lab: &mut Lab, data: &Path) -> Result<()> {
    let reg = lab.registry();
    let n1 = lab.agents[0].name.clone();
    lab.apply(&pinned_pod(&reg, "idle", &n1, "", "exec sleep 3600"))?;
    let idle = running(lab, "idle")?;
    lab.apply(&pinned_pod(
        &reg,
        "chatty",
        &n1,
        "  restartPolicy: Never\n",
        "head -c 12582912 /dev/zero",
    ))?;
    let chatty = wait_for("chatty done", LONG, || {
        Ok(pod(lab, "chatty")?.filter(|p| p["status"]["phase"] == "Succeeded"))
    })?;
    let log = data.join("pods").join(uid(&chatty)).join("logs/main.log");
    ensure!(
        fs::metadata(&log)?.len() == 12 << 20,
        "chatty's whole output is in its log"
    );
    fill_leaving(data, "ballast", 1 << 20)?;
    wait_for("the dead log reclaimed", LONG, || {
        Ok((fs::metadata(&log)?.len() == 0).then_some(()))
    })?;
    wait_for(&format!("{n1} out of DiskPressure"), LONG, || {
        let n = node(lab, &n1)?;
        Ok(
            (!has_condition(&n, "DiskPressure") && !has_taint(&n, DISK_PRESSURE_TAINT))
                .then_some(()),
        )
    })?;
    std::thread::sleep(HEARTBEATS);
    let agent_log = lab.agent_log(0);
    let at = |what: &str| agent_log.find(what);
    ensure!(
        matches!(
            (
                at("node under pressure"),
                at("disk pressure: removed unused images"),
                at("reclaimed rotated and dead containers' logs")
            ),
            (Some(a), Some(b), Some(c)) if a < b && b < c
        ) && at("evicting pod").is_none(),
        "pressure, images, then logs reclaimed, and no eviction:\n{agent_log}"
    );
    let i = running(lab, "idle")?;
    ensure!(uid(&i) == uid(&idle), "idle was replaced: {i}");
    fs::remove_file(data.join("ballast"))?;
    for name in ["idle", "chatty"] {
        lab.baton(&["delete", "pod", name])?;
    }
    fleet::wait_cleaned_up(lab, &n1, &uid(&idle), LONG)?;
    Ok(())
}

/// The image store on a filesystem of its own (a small tmpfs here): filling it puts the
/// node under ImageDiskPressure, with the disk-pressure taint; the agent removes the image
/// no pod uses, which relieves it, and the condition and taint go. No pod is evicted.
#[test]
fn image_disk_pressure_on_its_own_filesystem_is_relieved_by_removing_unused_images() -> Result<()> {
    let mut lab = Lab::start("pressimg", 1, Broker::Embedded)?;
    lab.kill_agent(0);
    lab.reset_agent(0)?;
    let images = lab.agents[0].data_dir.join("images");
    let _ = fs::remove_dir_all(&images);
    mount_tmpfs(&images, "64m")?;
    lab.agent_args = vec![
        "--eviction-pressure-transition-period".into(),
        "1s".into(),
        "--eviction-hard".into(),
        format!("imagefs.available<{IMAGEFS_LEVEL}"),
    ];
    let r = lab
        .start_agent(0)
        .and_then(|()| image_disk(&mut lab, &images));
    if r.is_err() {
        lab.dump_logs();
    }
    let _ = fs::remove_file(images.join("ballast"));
    lab.kill_agent(0);
    let reset = lab.reset_agent(0);
    let _ = sh(std::process::Command::new("umount").arg("-l").arg(&images));
    r?;
    reset
}

/// The imagefs threshold of that test, in bytes and as its flag says it.
const IMAGEFS_LEVEL_BYTES: u64 = 4 << 20;
const IMAGEFS_LEVEL: &str = "4Mi";

fn image_disk(lab: &mut Lab, images: &Path) -> Result<()> {
    let reg = lab.registry();
    let n1 = lab.agents[0].name.clone();
    lab.apply(&pinned_pod(&reg, "keeper", &n1, "", "exec sleep 3600"))?;
    let keeper = running(lab, "keeper")?;
    // kv:1 shares no layer with busybox: what it takes comes back when it goes.
    let before = avail(images)?;
    lab.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: old\nspec:\n  terminationGracePeriodSeconds: 1\n  nodeSelector: {{kubernetes.io/hostname: {n1}}}\n  containers:\n  - name: main\n    image: {reg}/baton/kv:1\n"
    ))?;
    let old = running(lab, "old")?;
    let size = before.saturating_sub(avail(images)?);
    ensure!(
        size >= 256 << 10,
        "kv:1 took only {size} bytes of the image store"
    );
    lab.baton(&["delete", "pod", "old"])?;
    fleet::wait_cleaned_up(lab, &n1, &uid(&old), LONG)?;
    // Below the threshold by half of what kv:1 holds; above it once that is removed.
    fill_leaving(
        images,
        "ballast",
        IMAGEFS_LEVEL_BYTES - size.min(6 << 20) / 2,
    )?;
    wait_for(&format!("{n1} under ImageDiskPressure"), LONG, || {
        let described = text(&lab.baton(&["describe", "node", &n1])?);
        Ok(described.contains("NodeHasImageDiskPressure").then_some(()))
    })?;
    wait_for(&format!("{n1} out of ImageDiskPressure"), LONG, || {
        let n = node(lab, &n1)?;
        Ok(
            (!has_condition(&n, "ImageDiskPressure") && !has_taint(&n, DISK_PRESSURE_TAINT))
                .then_some(()),
        )
    })?;
    ensure!(
        avail(images)? >= IMAGEFS_LEVEL_BYTES,
        "the image store is still short"
    );
    let log = lab.agent_log(0);
    ensure!(
        log.contains("image disk pressure: removed unused images")
            && log.contains("kv:1")
            && !log.contains("evicting pod"),
        "the unused image removed, no pod evicted:\n{log}"
    );
    let k = running(lab, "keeper")?;
    ensure!(uid(&k) == uid(&keeper), "keeper was replaced: {k}");
    fs::remove_file(images.join("ballast"))?;
    lab.baton(&["delete", "pod", "keeper"])?;
    fleet::wait_cleaned_up(lab, &n1, &uid(&keeper), LONG)?;
    Ok(())
}

/// `baton-agent reset` after the agent was killed with a pod running leaves nothing of the
/// node: no cgroup directory under any controller (v1 and the v2 mount), no mount below its
/// data or run directory, no pod netns, bridge or iptables chain, and no pod, run or address
/// file. The data directory itself (identity, images, desired state) stays: removing it is
/// `baton-agent uninstall`'s.
#[test]
fn reset_leaves_nothing_of_the_node() -> Result<()> {
    let mut lab = Lab::start("pressreset", 1, Broker::Embedded)?;
    let r = reset_everything(&mut lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

/// Everything of node `i` found on the machine, one line each.
fn traces(lab: &Lab, i: usize, pod_uids: &[String]) -> Result<Vec<String>> {
    let a = &lab.agents[i];
    let node = a.name.as_str();
    let mut out = Vec::new();
    for c in fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let d = c.path().join("baton").join(node);
        if d.exists() {
            out.push(format!("cgroup {}", d.display()));
        }
    }
    let run = Path::new("/run/baton").join(node);
    let data = a.data_dir.to_string_lossy().into_owned();
    for line in fs::read_to_string("/proc/self/mountinfo")?.lines() {
        let at = line.split(' ').nth(4).unwrap_or_default();
        if at.starts_with(&data) || Path::new(at).starts_with(&run) {
            out.push(format!("mount {at}"));
        }
    }
    for uid in pod_uids {
        let ns = Path::new("/run/netns").join(baton_agent::network::pod_netns_name(node, uid));
        if ns.exists() {
            out.push(format!("netns {}", ns.display()));
        }
    }
    let bridge = baton_agent::network::NetConfig::derive(node, PathBuf::new(), None)?.bridge;
    if a.ns
        .cmd("ip")
        .args(["link", "show", &bridge])
        .output()?
        .status
        .success()
    {
        out.push(format!("bridge {bridge}"));
    }
    let rules = a.ns.cmd("iptables-save").output()?;
    for l in text(&rules).lines().filter(|l| l.contains(&bridge)) {
        out.push(format!("iptables {l}"));
    }
    if run.exists() {
        out.push(format!("dir {}", run.display()));
    }
    for dir in [a.data_dir.join("pods"), a.data_dir.join("net")] {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type()?.is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(format!("file {}", e.path().display()));
                }
            }
        }
    }
    Ok(out)
}

fn reset_everything(lab: &mut Lab) -> Result<()> {
    let reg = lab.registry();
    let n1 = lab.agents[0].name.clone();
    // Everything a node makes for a pod: cgroups, a netns with its veth, a hostPort's DNAT
    // rules, an emptyDir, the bundle on the run tmpfs, logs and records.
    lab.apply(
        &pinned_pod(
            &reg,
            "web",
            &n1,
            "  volumes: [{name: data, emptyDir: {}}]\n",
            "exec sleep 3600",
        )
        .replace(
            "    command:",
            "    ports: [{containerPort: 8080, hostPort: 18080}]\n    command:",
        ),
    )?;
    let web = running(lab, "web")?;
    let uids = [uid(&web)];
    let before = traces(lab, 0, &uids)?;
    for kind in ["cgroup", "netns", "bridge", "iptables", "dir", "file"] {
        ensure!(
            before.iter().any(|t| t.starts_with(kind)),
            "a running node has a {kind}, or this check sees nothing: {before:#?}"
        );
    }
    lab.kill_agent(0);
    lab.reset_agent(0)?;
    let after = traces(lab, 0, &uids)?;
    ensure!(after.is_empty(), "reset left: {after:#?}");
    Ok(())
}

/// MemoryPressure against the node's allocatable: on a node offering pods 400 MiB, a
/// BestEffort pod that takes 300 MiB (a tmpfs emptyDir it fills, charged to its memory
/// cgroup, bounded by its size limit so the host is never at risk) is evicted at once and
/// replaced on the other node; the Burstable pod beside it is kept.
#[test]
fn a_pod_taking_the_nodes_memory_is_evicted_and_the_others_kept() -> Result<()> {
    let mut lab = Lab::start("pressmem", 2, Broker::Embedded)?;
    let r = memory(&mut lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

/// Restarts agent `i` offering pods 400 MiB of the host's memory (the rest reserved), with
/// MemoryPressure under 150 MiB available and a 1 s transition period.
fn offer_pods_400_mib(lab: &mut Lab, i: usize) -> Result<()> {
    let total_mib: u64 = fs::read_to_string("/proc/meminfo")?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("MemTotal")?
        / 1024;
    lab.kill_agent(i);
    lab.agent_args = vec![
        "--reserved-memory-mib".into(),
        (total_mib - 400).to_string(),
        "--eviction-hard".into(),
        "memory.available<150Mi".into(),
        "--eviction-pressure-transition-period".into(),
        "1s".into(),
    ];
    lab.start_agent(i)
}

fn memory(lab: &mut Lab) -> Result<()> {
    offer_pods_400_mib(lab, 0)?;
    let reg = lab.registry();
    let (n1, n2) = (lab.agents[0].name.clone(), lab.agents[1].name.clone());
    lab.apply(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: hog\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: hog}}\n  template:\n    metadata:\n      labels: {{app: hog}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      volumes: [{{name: mem, emptyDir: {{sizeLimit: 300Mi}}}}]\n      containers:\n      - name: main\n        image: {reg}/baton/busybox:1\n        command: [sh, -c, \"sleep 8; dd if=/dev/zero of=/mem/fill bs=1M count=280; exec sleep 3600\"]\n        volumeMounts: [{{name: mem, mountPath: /mem}}]\n"
    ))?;
    let first = wait_for("hog placed", LONG, || {
        Ok(owned_pods(lab, "hog")?
            .into_iter()
            .find(|p| !p["spec"]["nodeName"].is_null()))
    })?;
    ensure!(node_of(&first) == n1, "the hog should start on n1: {first}");
    let keeper = pinned_pod(&reg, "keeper", &n1, "", "exec sleep 3600").replace(
        "    command:",
        "    resources: {requests: {memory: 16Mi}}\n    command:",
    );
    lab.apply(&keeper)?;
    let keeper = running(lab, "keeper")?;
    fleet::wait_pods(
        lab,
        "hog",
        1,
        LONG,
        "the hog evicted and replaced on n2",
        |p| container_running(p) && node_of(p) == n2,
    )?;
    let log = lab.agent_log(0);
    ensure!(
        log.contains("evicting pod") && log.contains("low on resource: memory"),
        "{log}"
    );
    let described = text(&lab.baton(&["describe", "node", &n1])?);
    ensure!(
        described.contains("NodeHasInsufficientMemory") && described.contains("Evicted"),
        "{described}"
    );
    kept_and_relieved(
        lab,
        &keeper,
        &n1,
        "MemoryPressure",
        "node.kubernetes.io/memory-pressure",
    )?;
    lab.baton(&["delete", "deployment", "hog"])?;
    lab.baton(&["delete", "pod", "keeper"])?;
    Ok(())
}

/// A critical pod is never evicted (kubelet's rule for pods the node's own function depends
/// on): a `system-node-critical` pod takes the node's memory, and the agent evicts the
/// others in kubelet's order (the BestEffort one, whose use exceeds its request of
/// nothing, before the Burstable one within its request), then keeps the critical pod
/// running under MemoryPressure, since nothing else may go.
#[test]
fn a_critical_pod_is_never_evicted() -> Result<()> {
    let mut lab = Lab::start("presscrit", 1, Broker::Embedded)?;
    let r = critical(&mut lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn critical(lab: &mut Lab) -> Result<()> {
    offer_pods_400_mib(lab, 0)?;
    let reg = lab.registry();
    let n1 = lab.agents[0].name.clone();
    lab.apply(&pinned_pod(&reg, "small", &n1, "", "exec sleep 3600"))?;
    let keeper = pinned_pod(&reg, "keeper", &n1, "", "exec sleep 3600").replace(
        "    command:",
        "    resources: {requests: {memory: 16Mi}}\n    command:",
    );
    lab.apply(&keeper)?;
    running(lab, "small")?;
    running(lab, "keeper")?;
    lab.apply(&pinned_pod(
        &reg,
        "hog",
        &n1,
        "  priorityClassName: system-node-critical\n  volumes: [{name: data, emptyDir: {sizeLimit: 300Mi}}]\n",
        "dd if=/dev/zero of=/data/fill bs=1M count=280; exec sleep 3600",
    ))?;
    let hog = running(lab, "hog")?;
    ensure!(
        hog["spec"]["priority"] == 2_000_001_000,
        "the class's priority is resolved at admission: {hog}"
    );
    for name in ["small", "keeper"] {
        wait_for(&format!("{name} evicted"), LONG, || {
            Ok(pod(lab, name)?
                .filter(|p| p["status"]["reason"] == "Evicted")
                .map(|_| ()))
        })?;
    }
    // A few heartbeats on, still under pressure, with nothing left that may go.
    std::thread::sleep(HEARTBEATS);
    ensure!(
        has_condition(&node(lab, &n1)?, "MemoryPressure"),
        "the critical pod still holds the memory"
    );
    let h = running(lab, "hog")?;
    ensure!(
        uid(&h) == uid(&hog) && h["status"]["containerStatuses"][0]["restartCount"] == 0,
        "the critical pod was evicted or restarted: {h}"
    );
    let log = lab.agent_log(0);
    let evictions: Vec<&str> = log.lines().filter(|l| l.contains("evicting pod")).collect();
    ensure!(
        evictions.len() == 2
            && evictions[0].contains("small")
            && evictions[1].contains("keeper"),
        "BestEffort above its request first, then Burstable, never the critical pod: {evictions:#?}"
    );
    lab.baton(&["delete", "pod", "hog"])?;
    wait_for("n1 out of MemoryPressure", LONG, || {
        let n = node(lab, &n1)?;
        Ok((!has_condition(&n, "MemoryPressure")).then_some(()))
    })?;
    for name in ["small", "keeper"] {
        let _ = lab.baton(&["delete", "pod", name]);
    }
    Ok(())
}

/// Processes left before `pid_max`, counted as the agent counts them.
fn pids_available() -> Result<u64> {
    let max: u64 = fs::read_to_string("/proc/sys/kernel/pid_max")?
        .trim()
        .parse()?;
    let used = fs::read_dir("/proc")?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count() as u64;
    Ok(max - used)
}

/// The most processes pod `uid`'s cgroup on `node` ever held (pids controller, v1;
/// hierarchical, so it outlives its containers' restarts).
fn pod_pids_peak(node: &str, uid: &str) -> u64 {
    let dir = fleet::cgroup_dir("pids", node).join(uid);
    fs::read_to_string(dir.join("pids.peak"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A bounded fork bomb: 600 `sleep`s as fast as the shell can fork them (a real one would
/// take this shared machine down with it when nothing holds it).
const BOMB: &str = "i=0; while [ $i -lt 600 ]; do sleep 3600 & i=$((i+1)); done; exec sleep 3600";

/// The agent's pod pid limit holds a fork bomb; without one, the bomb puts the node under
/// PIDPressure (a soft threshold, evicting only after its grace period) and is evicted
/// (BestEffort, the most processes), while the Burstable pod beside it is kept.
#[test]
fn a_fork_bomb_is_held_by_the_pid_limit_and_evicted_without_one() -> Result<()> {
    let mut lab = Lab::start("presspid", 2, Broker::Embedded)?;
    let r = fork_bomb(&mut lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn fork_bomb(lab: &mut Lab) -> Result<()> {
    let reg = lab.registry();
    let n1 = lab.agents[0].name.clone();
    // 1. With a pid limit (64 per container here, 1024 by default): the bomb stops there.
    lab.kill_agent(0);
    lab.agent_args = vec!["--pids-limit".into(), "64".into()];
    lab.start_agent(0)?;
    let keeper = pinned_pod(&reg, "keeper", &n1, "", "exec sleep 3600").replace(
        "    command:",
        "    resources: {requests: {memory: 16Mi}}\n    command:",
    );
    lab.apply(&keeper)?;
    let keeper = running(lab, "keeper")?;
    lab.apply(&pinned_pod(&reg, "bomb", &n1, "", BOMB))?;
    // The shell dies when a fork fails (busybox ash exits 2), so the container restarts,
    // as a real bomb's would under a limit.
    let bomb = wait_for("the bomb stopped by its pid limit", LONG, || {
        Ok(pod(lab, "bomb")?.filter(|p| {
            p["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .is_some_and(|r| r >= 1)
        }))
    })?;
    std::thread::sleep(HEARTBEATS);
    let peak = pod_pids_peak(&n1, &uid(&bomb));
    ensure!(
        (48..=64).contains(&peak),
        "the pod should have reached its limit of 64 processes and no more: peak {peak}"
    );
    ensure!(
        !has_condition(&node(lab, &n1)?, "PIDPressure"),
        "a held bomb must not put the node under pressure"
    );
    lab.baton(&["delete", "pod", "bomb"])?;
    fleet::wait_cleaned_up(lab, &n1, &uid(&bomb), LONG)?;

    // 2. Without one (a limit no bomb reaches), the soft threshold 300 processes below
    //    what is free now: the bomb's 600 cross it; other tests on this machine would
    //    need 300 more processes at once to.
    let threshold = pids_available()?.saturating_sub(300);
    lab.kill_agent(0);
    lab.agent_args = vec![
        "--pids-limit".into(),
        "100000".into(),
        "--eviction-hard".into(),
        "".into(),
        "--eviction-soft".into(),
        format!("pid.available<{threshold}"),
        "--eviction-soft-grace-period".into(),
        "pid.available=3s".into(),
        "--eviction-pressure-transition-period".into(),
        "2s".into(),
    ];
    lab.start_agent(0)?;
    lab.apply(&pinned_pod(&reg, "bomb", &n1, "", BOMB))?;
    let bomb = running(lab, "bomb")?;
    wait_for("n1 under PIDPressure", LONG, || {
        let n = node(lab, &n1)?;
        Ok(has_condition(&n, "PIDPressure").then_some(()))
    })?;
    wait_for("the bomb evicted", LONG, || {
        let p = pod(lab, "bomb")?;
        Ok(match p {
            None => Some(()),
            Some(p) if p["status"]["reason"] == "Evicted" => Some(()),
            Some(_) => None,
        })
    })?;
    wait_stopped(&n1, &uid(&bomb), "the bomb's processes gone", LONG)?;
    let log = lab.agent_log(0);
    let (met, evicted) = (log.find("node under pressure"), log.find("evicting pod"));
    ensure!(
        matches!((met, evicted), (Some(a), Some(b)) if a < b)
            && log.contains("low on resource: pids")
            && log.contains("processes"),
        "the condition must be reported before the eviction, which names pids:\n{log}"
    );
    kept_and_relieved(
        lab,
        &keeper,
        &n1,
        "PIDPressure",
        "node.kubernetes.io/pid-pressure",
    )?;
    lab.baton(&["delete", "pod", "keeper"])?;
    let _ = lab.baton(&["delete", "pod", "bomb"]);
    Ok(())
}
