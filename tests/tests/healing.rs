//! Self-healing, end to end on real processes: agent crashes that must not restart
//! containers, node loss with rescheduling and return, and an offline agent restart.
//!
//! Figures (crash-to-restarted latency, node-loss-to-rescheduled time) are printed, not
//! asserted. `BATON_HEAL_DEFAULTS=1` runs the node-loss test with the coordinator's default
//! heartbeat and eviction timeouts, to measure them as shipped.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use baton_e2e::fleet::{
    self, container_running, http_info, node_of as node, owned_pods, pod_ip, uid, uids,
    wait_cleaned_up, wait_pods, EchoDeployment,
};
use baton_e2e::{container_pids, wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

fn web(registry: &str, replicas: usize) -> String {
    EchoDeployment::new(replicas)
        .metadata("  labels: {app: web}\n")
        .yaml(registry)
}

fn restarts(p: &Value) -> u64 {
    p["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

fn web_pods(lab: &Lab) -> Result<Vec<Value>> {
    owned_pods(lab, "web")
}

/// Waits for exactly `n` web pods, all Running.
fn wait_running(lab: &Lab, n: usize, timeout: Duration) -> Result<Vec<Value>> {
    wait_pods(
        lab,
        "web",
        n,
        timeout,
        &format!("{n} running web pods"),
        container_running,
    )
}

/// The init pid of a pod's container, from the runtime's state on the agent.
fn init_pid(lab: &Lab, p: &Value, container: &str) -> Result<u32> {
    fleet::init_pid(lab, &node(p), &uid(p), container)
}

/// Fetches the http-echo info page at `ip` from inside agent `i`'s namespace.
fn http(lab: &Lab, i: usize, ip: &str) -> Result<String> {
    http_info(lab, &lab.agents[i].name, ip, Duration::from_secs(5))
}

fn node_ready(lab: &Lab, name: &str) -> Result<bool> {
    let n = lab.get_json(&["get", "node", name])?;
    Ok(n["status"]["ready"] == true)
}

fn on_failure<T>(lab: &Lab, r: Result<T>) -> Result<T> {
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

#[test]
fn agent_kill_9_and_restart_keeps_containers_running() -> Result<()> {
    let mut lab = Lab::start("healk", 1, Broker::Embedded)?;
    let r = agent_kill_9(&mut lab);
    on_failure(&lab, r)
}

fn agent_kill_9(lab: &mut Lab) -> Result<()> {
    lab.apply(&web(&lab.registry(), 2))?;
    let pods = wait_running(lab, 2, LONG)?;
    let mut before = BTreeMap::new();
    for p in &pods {
        let pid = init_pid(lab, p, "echo")?;
        let procs = container_pids(&node(p), &uid(p), "echo");
        ensure!(
            procs.contains(&pid),
            "init {pid} not in its cgroup {procs:?}"
        );
        before.insert(uid(p), (pid, procs, pod_ip(p)));
    }

    lab.kill_agent(0);
    // The containers keep serving while the agent is gone.
    for (_, _, ip) in before.values() {
        let page = http(lab, 0, ip)?;
        ensure!(!page.is_empty(), "empty page from {ip}");
    }
    std::thread::sleep(Duration::from_secs(2));
    for (_, _, ip) in before.values() {
        http(lab, 0, ip)?;
    }

    lab.start_agent(0)?;
    let pods = wait_pods(
        lab,
        "web",
        2,
        LONG,
        "both pods reported Running again",
        container_running,
    )?;
    ensure!(
        lab.agents[0]
            .proc
            .as_ref()
            .is_some_and(|p| p.log().contains("pod adopted")),
        "the agent did not adopt its pods"
    );
    for p in &pods {
        let (pid, procs, ip) = before.get(&uid(p)).context("the same pods")?;
        ensure!(restarts(p) == 0, "restarted: {p}");
        ensure!(
            init_pid(lab, p, "echo")? == *pid,
            "the init of {} changed",
            uid(p)
        );
        let now = container_pids(&node(p), &uid(p), "echo");
        ensure!(
            now.contains(pid) && now == *procs,
            "processes changed: {procs:?} -> {now:?}"
        );
        ensure!(pod_ip(p) == *ip, "pod IP changed");
        http(lab, 0, ip)?;
    }

    // The restarted agent watches what it adopted: a killed init is noticed and the
    // container restarts under restartPolicy Always.
    let victim = pods[0].clone();
    let (pid, _, _) = before[&uid(&victim)].clone();
    let killed = Instant::now();
    baton_e2e::sh(std::process::Command::new("kill").args(["-9", &pid.to_string()]))?;
    let new_pid = wait_for("a new init in the container's cgroup", LONG, || {
        let now = container_pids(&node(&victim), &uid(&victim), "echo");
        Ok(now
            .first()
            .copied()
            .filter(|_| !now.contains(&pid))
            .map(|_| now))
    })?;
    let in_cgroup = killed.elapsed();
    let p = wait_for("the pod Running with 1 restart", LONG, || {
        let pods = web_pods(lab)?;
        Ok(pods
            .into_iter()
            .find(|p| uid(p) == uid(&victim) && restarts(p) == 1 && container_running(p)))
    })?;
    let reported = killed.elapsed();
    println!(
        "FIGURE crash-to-restarted (adopted container, kill -9 of its init): new process after {:.2}s, reported Running with restartCount 1 after {:.2}s",
        in_cgroup.as_secs_f64(),
        reported.as_secs_f64()
    );
    ensure!(init_pid(lab, &p, "echo")? != pid);
    ensure!(!new_pid.is_empty());
    http(lab, 0, &pod_ip(&p))?;
    // The other pod was not touched.
    let other = pods
        .iter()
        .find(|q| uid(q) != uid(&victim))
        .context("2 pods")?;
    ensure!(init_pid(lab, other, "echo")? == before[&uid(other)].0);
    Ok(())
}

#[test]
fn node_loss_reschedules_and_the_returning_node_drops_its_evicted_pods() -> Result<()> {
    let defaults = std::env::var("BATON_HEAL_DEFAULTS").is_ok_and(|v| v == "1");
    let args: &[&str] = if defaults {
        &[]
    } else {
        &["--heartbeat-timeout", "3s", "--pod-eviction-timeout", "5s"]
    };
    let mut lab = Lab::start_with("heall", 2, Broker::Embedded, args)?;
    let r = node_loss(&mut lab, defaults);
    on_failure(&lab, r)
}

fn node_loss(lab: &mut Lab, defaults: bool) -> Result<()> {
    lab.apply(&web(&lab.registry(), 3))?;
    let pods = wait_running(lab, 3, LONG)?;
    let mut per_node: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for p in &pods {
        per_node.entry(node(p)).or_default().push(p.clone());
    }
    ensure!(
        per_node.len() == 2,
        "3 replicas spread over 2 nodes: {per_node:?}"
    );
    let lost_name = lab.agents[0].name.clone();
    let kept_name = lab.agents[1].name.clone();
    let evicted: Vec<String> = per_node[&lost_name].iter().map(uid).collect();
    let kept_before: BTreeMap<String, u32> = per_node[&kept_name]
        .iter()
        .map(|p| Ok((uid(p), init_pid(lab, p, "echo")?)))
        .collect::<Result<_>>()?;
    let lost_agent_pid = lab.agents[0].proc.as_ref().and_then(|p| p.pid());

    lab.set_link(0, false)?;
    let cut = Instant::now();
    wait_for("the lost node to be NotReady", LONG, || {
        Ok((!node_ready(lab, &lost_name)?).then_some(()))
    })?;
    let not_ready = cut.elapsed();
    let timeout = if defaults {
        Duration::from_secs(180)
    } else {
        LONG
    };
    let pods = wait_for("all 3 replicas Running on the other node", timeout, || {
        let pods = web_pods(lab)?;
        Ok((pods.len() == 3
            && pods
                .iter()
                .all(|p| node(p) == kept_name && container_running(p)))
        .then_some(pods))
    })?;
    let rescheduled = cut.elapsed();
    println!(
        "FIGURE node-loss-to-rescheduled ({}): NotReady after {:.1}s, all replicas Running elsewhere after {:.1}s",
        if defaults {
            "default timeouts"
        } else {
            "heartbeat timeout 3s, eviction timeout 5s"
        },
        not_ready.as_secs_f64(),
        rescheduled.as_secs_f64()
    );
    for u in &evicted {
        ensure!(
            pods.iter().all(|p| uid(p) != *u),
            "evicted pod {u} still listed"
        );
    }
    // The lost node still runs its stale pods while cut off (it keeps what it was given).
    for u in &evicted {
        ensure!(
            !container_pids(&lost_name, u, "echo").is_empty(),
            "the cut-off node stopped {u} on its own"
        );
    }

    lab.set_link(0, true)?;
    let back = Instant::now();
    wait_for("the node to be Ready again", LONG, || {
        Ok(node_ready(lab, &lost_name)?.then_some(()))
    })?;
    for u in &evicted {
        wait_cleaned_up(lab, &lost_name, u, LONG).context("an evicted pod")?;
    }
    println!(
        "FIGURE returning node stopped its evicted pods {:.1}s after its link came back",
        back.elapsed().as_secs_f64()
    );
    let pods = wait_running(lab, 3, LONG)?;
    ensure!(pods.iter().all(|p| node(p) == kept_name));
    // The same agent process all along, and the other node's containers never restarted.
    ensure!(lab.agents[0].proc.as_ref().and_then(|p| p.pid()) == lost_agent_pid);
    ensure!(lab.agents[0].proc.as_mut().is_some_and(|p| p.is_running()));
    for p in &pods {
        if let Some(pid) = kept_before.get(&uid(p)) {
            ensure!(init_pid(lab, p, "echo")? == *pid, "{} restarted", uid(p));
            ensure!(restarts(p) == 0);
        }
    }
    Ok(())
}

#[test]
fn an_offline_agent_restart_runs_its_pods_from_the_persisted_state() -> Result<()> {
    // A long eviction timeout: this node is offline on purpose and must keep its pods.
    let mut lab = Lab::start_with(
        "healo",
        1,
        Broker::Embedded,
        &["--pod-eviction-timeout", "10m"],
    )?;
    let r = offline_reboot(&mut lab);
    on_failure(&lab, r)
}

/// Pod addresses allocated on agent `i`, from its IPAM files.
fn allocated_ips(lab: &Lab, i: usize) -> Vec<String> {
    let net = lab.agents[i].data_dir.join("net");
    let mut ips = Vec::new();
    for d in std::fs::read_dir(net).into_iter().flatten().flatten() {
        if !d.file_name().to_string_lossy().starts_with("ipam-") {
            continue;
        }
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.parse::<std::net::Ipv4Addr>().is_ok() {
                ips.push(name);
            }
        }
    }
    ips.sort();
    ips
}

fn offline_reboot(lab: &mut Lab) -> Result<()> {
    lab.apply(&web(&lab.registry(), 2))?;
    let pods = wait_running(lab, 2, LONG)?;
    let uids = uids(&pods);
    let name = lab.agents[0].name.clone();
    let old: BTreeMap<String, Vec<u32>> = uids
        .iter()
        .map(|u| (u.clone(), container_pids(&name, u, "echo")))
        .collect();

    // A power cut, as far as the pods go: the agent and every container process die.
    lab.kill_agent(0);
    for pids in old.values() {
        for pid in pids {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
    wait_for("the containers to die", LONG, || {
        Ok(uids
            .iter()
            .all(|u| container_pids(&name, u, "echo").is_empty())
            .then_some(()))
    })?;

    // Back up with no network: the pods start from the persisted desired state.
    lab.set_link(0, false)?;
    lab.spawn_agent(0)?;
    wait_for("both pods serving again, offline", LONG, || {
        let fresh = uids.iter().all(|u| {
            let now = container_pids(&name, u, "echo");
            !now.is_empty() && now.iter().all(|p| !old[u].contains(p))
        });
        if !fresh {
            bail!("containers not restarted yet");
        }
        let ips = allocated_ips(lab, 0);
        ensure!(ips.len() == 2, "addresses: {ips:?}");
        for ip in &ips {
            http(lab, 0, ip)?;
        }
        Ok(Some(()))
    })?;

    lab.set_link(0, true)?;
    let pods = wait_for("the coordinator to see both pods Running", LONG, || {
        let pods = web_pods(lab)?;
        Ok((pods.len() == 2
            && pods.iter().all(container_running)
            && pods.iter().all(|p| uids.contains(&uid(p))))
        .then_some(pods))
    })?;
    ensure!(node_ready(lab, &name)?);
    let ips: BTreeSet<String> = pods.iter().map(pod_ip).collect();
    ensure!(ips == allocated_ips(lab, 0).into_iter().collect::<BTreeSet<_>>());
    Ok(())
}

#[test]
fn local_restarts_and_liveness_keep_working_offline() -> Result<()> {
    // A long eviction timeout: the node is cut off on purpose and must keep its pod.
    let mut lab = Lab::start_with(
        "healv",
        1,
        Broker::Embedded,
        &["--pod-eviction-timeout", "10m"],
    )?;
    let r = offline_liveness(&mut lab);
    on_failure(&lab, r)
}

/// With its link down, the agent alone restarts a crashed container (backoff included) and
/// one whose liveness probe fails; once the link is back, the coordinator sees both restarts
/// and the last one's reason.
fn offline_liveness(lab: &mut Lab) -> Result<()> {
    let reg = lab.registry();
    lab.apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: live}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: live}}}}
  template:
    metadata: {{labels: {{app: live}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: {reg}/baton/busybox:1
        command: [sh, -c, "mkdir -p /www && echo ok > /www/alive && exec httpd -f -p 8080 -h /www"]
        livenessProbe:
          httpGet: {{path: /alive, port: 8080}}
          periodSeconds: 1
          failureThreshold: 2
"#
    ))?;
    let p = wait_pods(
        lab,
        "live",
        1,
        LONG,
        "the live pod running",
        container_running,
    )?
    .remove(0);
    let (node, pod_uid) = (node(&p), uid(&p));
    let first = fleet::init_pid(lab, &node, &pod_uid, "web")?;

    lab.set_link(0, false)?;
    // A crash while offline: the agent restarts it by itself (first restart: no backoff).
    let _ = std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status();
    let second = wait_for("a restart after the crash, offline", LONG, || {
        Ok(fleet::init_pid(lab, &node, &pod_uid, "web")
            .ok()
            .filter(|p| *p != first))
    })?;
    // A failing liveness probe while offline: /alive gone, the probe gets 404 twice, the
    // agent kills and restarts the container (after the backoff of a second restart). The
    // new container writes the file first thing: removing it before would fail.
    wait_for("the restarted container's /www/alive", LONG, || {
        let st = std::process::Command::new("nsenter")
            .args([
                "-t",
                &second.to_string(),
                "-m",
                "sh",
                "-c",
                "test -e /www/alive",
            ])
            .status()?;
        Ok(st.success().then_some(()))
    })?;
    let out = std::process::Command::new("nsenter")
        .args(["-t", &second.to_string(), "-m", "rm", "/www/alive"])
        .output()?;
    ensure!(out.status.success(), "nsenter rm: {out:?}");
    let third = wait_for(
        "a restart after the liveness failure, offline",
        LONG,
        || {
            Ok(fleet::init_pid(lab, &node, &pod_uid, "web")
                .ok()
                .filter(|p| *p != second && *p != first))
        },
    )?;
    // Nothing of this reached the coordinator: it was the agent alone.
    let seen = owned_pods(lab, "live")?;
    ensure!(
        seen.len() == 1 && restarts(&seen[0]) == 0,
        "the coordinator saw restarts while the node was cut off: {seen:?}"
    );

    lab.set_link(0, true)?;
    let p = wait_for("the coordinator to see 2 restarts", LONG, || {
        let pods = owned_pods(lab, "live")?;
        Ok(pods
            .into_iter()
            .find(|p| uid(p) == pod_uid && restarts(p) == 2 && container_running(p)))
    })?;
    let last = &p["status"]["containerStatuses"][0]["lastState"]["terminated"];
    ensure!(last["reason"] == "LivenessProbeFailed", "last state {last}");
    ensure!(
        fleet::init_pid(lab, &node, &pod_uid, "web")? == third,
        "restarted again after the link returned"
    );
    Ok(())
}

#[test]
fn a_pod_deleted_after_a_reconnect_keeps_its_grace_period() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("baton-e2e-grace-")
        .tempdir()?;
    let host = dir.path().to_string_lossy().into_owned();
    let mut lab = Lab::start_with("healg", 1, Broker::Mosquitto, &["--allow-host-path", &host])?;
    let r = grace_after_reconnect(&mut lab, &host, dir.path());
    on_failure(&lab, r)
}

/// Only pods taken away *while* a node was unreachable are killed without a grace period
/// when it returns. A broker restart with nothing changed, then a delete, is an ordinary
/// delete: the container gets SIGTERM and its grace period. (The agent used to keep its
/// "back from offline" mark until the next *changed* desired state, however late, and
/// SIGKILLed whatever that removed.) The trap takes a second, so only a grace period lets it
/// write its file.
fn grace_after_reconnect(lab: &mut Lab, host: &str, dir: &std::path::Path) -> Result<()> {
    let reg = lab.registry();
    lab.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: graceful}}
spec:
  terminationGracePeriodSeconds: 30
  volumes: [{{name: out, hostPath: {{path: {host}}}}}]
  containers:
  - name: c
    image: {reg}/baton/busybox:1
    command: [sh, -c, "trap 'sleep 1; echo term > /out/term; exit 0' TERM; echo up > /out/up; while true; do sleep 0.2; done"]
    volumeMounts: [{{name: out, mountPath: /out}}]
"#
    ))?;
    wait_for("the pod's container to run its trap", LONG, || {
        Ok(dir.join("up").exists().then_some(()))
    })?;
    lab.restart_mosquitto(Duration::from_secs(1))?;
    wait_for(
        "the agent back with an unchanged desired state",
        LONG,
        || {
            Ok(lab
                .agent_log(0)
                .contains("back online; the desired state did not change meanwhile")
                .then_some(()))
        },
    )?;
    lab.baton(&["delete", "pod", "graceful"])?;
    wait_for("the container's SIGTERM handler to run", LONG, || {
        Ok(dir.join("term").exists().then_some(()))
    })?;
    ensure!(
        !lab.agent_log(0).contains("without a grace period"),
        "an ordinary delete was treated as an eviction while away"
    );
    wait_for("the pod to be gone", LONG, || {
        Ok(lab.pods()?.is_empty().then_some(()))
    })?;
    Ok(())
}
