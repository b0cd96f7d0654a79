//! Cordon, drain and taints on real agents (issue 18): `baton drain` moves a node's
//! Deployment pods to another node and stops their containers there, refuses bare pods
//! without `--force`, and a `NoExecute` taint evicts a pod that does not tolerate it while
//! one that does keeps running.

use std::time::Duration;

use anyhow::{ensure, Result};
use baton_e2e::fleet::{container_running, node_of, owned_pods, uid, wait_pods, EchoDeployment};
use baton_e2e::{container_pids, wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

/// A bare pod (no controller) pinned to `node`.
fn bare_pod(registry: &str, node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: lonely}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {registry}/baton/busybox:1
    command: [sleep, "3600"]
"#
    )
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn status_of(lab: &Lab, node: &str) -> Result<String> {
    let out = lab.baton(&["get", "nodes"])?;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(node))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_owned())
}

#[test]
fn drain_moves_pods_off_a_node_and_no_execute_evicts_the_untolerant() -> Result<()> {
    let lab = Lab::start("drain", 2, Broker::Embedded)?;
    let r = drain_and_taint(&lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn drain_and_taint(lab: &Lab) -> Result<()> {
    let (a, b) = (lab.agents[0].name.clone(), lab.agents[1].name.clone());
    lab.apply(&EchoDeployment::new(4).yaml(&lab.registry()))?;
    let pods = wait_pods(lab, "web", 4, LONG, "4 running web pods", container_running)?;
    let on_a: Vec<&Value> = pods.iter().filter(|p| node_of(p) == a).collect();
    ensure!(!on_a.is_empty(), "no web pod on {a}: {pods:#?}");
    let pids_a: Vec<(String, Vec<u32>)> = on_a
        .iter()
        .map(|p| (uid(p), container_pids(&a, &uid(p), "echo")))
        .collect();
    lab.apply(&bare_pod(&lab.registry(), &a))?;
    wait_for("the bare pod running", LONG, || {
        let p = lab.get_json(&["get", "pod", "lonely"])?;
        Ok(container_running(&p).then_some(()))
    })?;

    // Without --force: cordoned, nothing deleted, the bare pod named.
    let out = lab.baton_raw(&["drain", &a], None)?;
    ensure!(
        !out.status.success(),
        "drain with a bare pod succeeded: {}",
        text(&out)
    );
    ensure!(
        text(&out).contains("lonely") && text(&out).contains("--force"),
        "{}",
        text(&out)
    );
    ensure!(
        status_of(lab, &a)? == "Ready,SchedulingDisabled",
        "{}",
        status_of(lab, &a)?
    );
    ensure!(
        owned_pods(lab, "web")?
            .iter()
            .filter(|p| node_of(p) == a)
            .count()
            == on_a.len()
    );

    // With it: every pod leaves, the Deployment's come back on b, the containers on a stop.
    let out = lab.baton(&["drain", &a, "--force", "--timeout", "90s"])?;
    ensure!(
        text(&out).contains(&format!("node/{a} drained")),
        "{}",
        text(&out)
    );
    ensure!(
        lab.pods()?.iter().all(|p| node_of(p) != a),
        "pods left on {a}"
    );
    let moved = wait_pods(lab, "web", 4, LONG, "4 running web pods on b", |p| {
        container_running(p) && node_of(p) == b
    })?;
    ensure!(moved.len() == 4);
    wait_for("the drained containers stopped", LONG, || {
        Ok(pids_a
            .iter()
            .all(|(u, _)| container_pids(&a, u, "echo").is_empty())
            .then_some(()))
    })?;
    ensure!(
        pids_a.iter().all(|(_, p)| !p.is_empty()),
        "pids were read: {pids_a:?}"
    );

    // Uncordon a, then a NoExecute taint on b: the web pods (no toleration) move to a; a
    // tolerant Deployment's pod stays on b.
    lab.baton(&["uncordon", &a])?;
    ensure!(status_of(lab, &a)? == "Ready");
    let tolerant = EchoDeployment::new(1)
        .name("cam")
        .yaml(&lab.registry())
        .replace(
            "      containers:",
            "      nodeSelector: {kubernetes.io/hostname: NODE}\n      tolerations:\n      - {key: maintenance, operator: Exists, effect: NoExecute}\n      containers:",
        )
        .replace("NODE", &b);
    lab.apply(&tolerant)?;
    let cam = wait_pods(
        lab,
        "cam",
        1,
        LONG,
        "the cam pod running",
        container_running,
    )?;
    let cam_pid = container_pids(&b, &uid(&cam[0]), "echo");
    lab.baton(&["taint", "node", &b, "maintenance=now:NoExecute"])?;
    wait_pods(lab, "web", 4, LONG, "4 running web pods on a", |p| {
        container_running(p) && node_of(p) == a
    })?;
    let cam_now = owned_pods(lab, "cam")?;
    ensure!(
        cam_now.len() == 1 && uid(&cam_now[0]) == uid(&cam[0]),
        "the tolerant pod was evicted: {cam_now:#?}"
    );
    ensure!(container_pids(&b, &uid(&cam[0]), "echo") == cam_pid);
    let describe = lab.baton(&["describe", "node", &b])?;
    ensure!(
        text(&describe).contains("maintenance=now:NoExecute"),
        "{}",
        text(&describe)
    );
    lab.baton(&["taint", "node", &b, "maintenance-"])?;
    let describe = text(&lab.baton(&["describe", "node", &b])?);
    let taints = describe.lines().find(|l| l.starts_with("Taints:"));
    ensure!(taints.is_some_and(|l| l.ends_with("<none>")), "{describe}");
    Ok(())
}
