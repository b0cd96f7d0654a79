//! DaemonSets on three real agents (issue 18): a node selector follows node labels (a
//! node labelled gets its pod, one unlabelled loses it), a rolling update with
//! `maxUnavailable: 1` never leaves more than one node without a ready pod, a node
//! offline past the eviction timeout keeps its pod, still running when it returns, drain
//! leaves it in place, and deleting the DaemonSet stops its pods.
//!
//! Labelling a node here restarts its agent with other flags (`baton-agent --labels`, like
//! kubelet's `--node-labels`); `baton label node` is tests/tests/node_labels.rs.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Result};
use baton_e2e::fleet::{container_running, init_pid, is_ready, node_of, text, uid};
use baton_e2e::{bin, container_pids, wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

fn cam(registry: &str, tag: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: cam
spec:
  selector:
    matchLabels: {{app: cam}}
  updateStrategy:
    type: RollingUpdate
    rollingUpdate: {{maxUnavailable: 1}}
  template:
    metadata:
      labels: {{app: cam}}
    spec:
      nodeSelector: {{camera: "yes"}}
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: {registry}/baton/http-echo:{tag}
        ports:
        - containerPort: 8080
"#
    )
}

/// The pods of the DaemonSet `cam`, as the API shows them.
fn cam_pods(lab: &Lab) -> Result<Vec<Value>> {
    Ok(lab
        .pods()?
        .into_iter()
        .filter(|p| p["metadata"]["daemonSet"] == "cam")
        .collect())
}

/// Waits until `cam` has exactly one non-terminating pod on each of `nodes` and no
/// other, each passing `ok`.
fn wait_cam_on(
    lab: &Lab,
    nodes: &[&str],
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Result<Vec<Value>> {
    let want: BTreeSet<&str> = nodes.iter().copied().collect();
    wait_for(what, LONG, || {
        let pods = cam_pods(lab)?;
        let on: Vec<String> = pods.iter().map(node_of).collect();
        let distinct: BTreeSet<&str> = on.iter().map(String::as_str).collect();
        Ok((pods.len() == nodes.len() && distinct == want && pods.iter().all(&ok)).then_some(pods))
    })
}

/// Restarts agent `i` with `labels` (`k=v,...`, or none).
fn relabel(lab: &mut Lab, i: usize, labels: Option<&str>) -> Result<()> {
    lab.kill_agent(i);
    lab.agents[i].program =
        labels.map(|l| vec![bin("baton-agent").into(), "--labels".into(), l.into()]);
    lab.start_agent(i)
}

fn node_ready(lab: &Lab, name: &str) -> Result<bool> {
    Ok(lab.get_json(&["get", "node", name])?["status"]["ready"] == true)
}

#[test]
fn daemon_set_follows_labels_rolls_one_node_at_a_time_and_stays_on_a_lost_node() -> Result<()> {
    let args = ["--heartbeat-timeout", "3s", "--pod-eviction-timeout", "5s"];
    let mut lab = Lab::start_without_agents_with("ds", 3, Broker::Embedded, &args)?;
    let r = scenario(&mut lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn scenario(lab: &mut Lab) -> Result<()> {
    let names: Vec<String> = lab.agents.iter().map(|a| a.name.clone()).collect();
    let (a, b, c) = (names[0].as_str(), names[1].as_str(), names[2].as_str());
    for i in 0..3 {
        let labels = (i < 2).then_some("camera=yes");
        lab.agents[i].program =
            labels.map(|l| vec![bin("baton-agent").into(), "--labels".into(), l.into()]);
        lab.start_agent(i)?;
    }

    // Only the labelled nodes run it, one pod each.
    lab.apply(&cam(&lab.registry(), 1))?;
    wait_cam_on(
        lab,
        &[a, b],
        "cam running on the two camera nodes",
        container_running,
    )?;
    let out = lab.baton(&["get", "ds"])?;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split("  ")
        .collect();
    ensure!(
        table.starts_with("NAME")
            && [
                "DESIRED",
                "CURRENT",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "NODE SELECTOR",
                "AGE"
            ]
            .iter()
            .all(|h| header.iter().any(|c| c.trim() == *h)),
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("cam "))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(
        row.get(1..7) == Some(&["2", "2", "2", "2", "2", "camera=yes"][..]),
        "{table}"
    );

    // Label the third node: it gets its pod; the others keep theirs.
    let before: BTreeSet<String> = cam_pods(lab)?.iter().map(uid).collect();
    relabel(lab, 2, Some("camera=yes"))?;
    let pods = wait_cam_on(lab, &[a, b, c], "cam on all three nodes", container_running)?;
    ensure!(
        before.iter().all(|u| pods.iter().any(|p| uid(p) == *u)),
        "labelling a node replaced the other nodes' pods"
    );

    // A rolling update with maxUnavailable 1: never two nodes without a ready pod.
    lab.apply(&cam(&lab.registry(), 2))?;
    let mut worst = 0;
    let mut samples = 0;
    let updated = wait_for("the rolling update to finish", LONG, || {
        let pods = cam_pods(lab)?;
        let ready: BTreeSet<String> = pods.iter().filter(|p| is_ready(p)).map(node_of).collect();
        let without = names.iter().filter(|n| !ready.contains(*n)).count();
        worst = worst.max(without);
        samples += 1;
        let done = pods.len() == 3
            && pods
                .iter()
                .all(|p| is_ready(p) && text(&p["spec"]["containers"][0]["image"]).ends_with(":2"));
        Ok(done.then_some(pods))
    })?;
    println!("FIGURE daemonset rolling update: at most {worst} of 3 nodes without a ready pod over {samples} samples");
    ensure!(worst <= 1, "{worst} nodes were without a ready pod at once");
    ensure!(
        worst == 1,
        "the update never took a pod down: {samples} samples"
    );
    ensure!(updated.iter().map(node_of).collect::<BTreeSet<_>>().len() == 3);
    let out = lab.baton(&["rollout", "status", "daemonset/cam", "--timeout", "30s"])?;
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        status.contains("daemon set \"cam\" successfully rolled out"),
        "{status}"
    );
    let out = lab.baton(&["rollout", "history", "ds/cam"])?;
    let history = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        history.starts_with("daemonset.apps/cam\n")
            && history
                .lines()
                .filter(|l| l.starts_with(['1', '2']))
                .count()
                == 2,
        "{history}"
    );

    // Unlabel the first node: its pod goes and its container stops.
    let gone = updated
        .iter()
        .find(|p| node_of(p) == a)
        .map(uid)
        .unwrap_or_default();
    relabel(lab, 0, None)?;
    wait_cam_on(
        lab,
        &[b, c],
        "cam off the unlabelled node",
        container_running,
    )?;
    wait_for("the unlabelled node's container to stop", LONG, || {
        Ok(container_pids(a, &gone, "echo").is_empty().then_some(()))
    })?;

    // The second node goes offline past the eviction timeout: its pod is neither
    // evicted nor recreated elsewhere, and keeps running there.
    let kept = updated
        .iter()
        .find(|p| node_of(p) == b)
        .cloned()
        .unwrap_or_default();
    let pid = init_pid(lab, b, &uid(&kept), "echo")?;
    lab.set_link(1, false)?;
    wait_for("the offline node to be NotReady", LONG, || {
        Ok((!node_ready(lab, b)?).then_some(()))
    })?;
    std::thread::sleep(Duration::from_secs(8)); // past the 5 s eviction timeout
    let pods = cam_pods(lab)?;
    ensure!(pods.len() == 2, "{pods:#?}");
    ensure!(
        pods.iter().any(|p| uid(p) == uid(&kept) && node_of(p) == b),
        "the offline node's pod was evicted: {pods:#?}"
    );
    ensure!(
        init_pid(lab, b, &uid(&kept), "echo")? == pid,
        "the offline node's container stopped"
    );

    lab.set_link(1, true)?;
    wait_for("the node to be Ready again", LONG, || {
        Ok(node_ready(lab, b)?.then_some(()))
    })?;
    let pods = wait_cam_on(lab, &[b, c], "cam running again on both", is_ready)?;
    ensure!(pods.iter().any(|p| uid(p) == uid(&kept)));
    ensure!(
        init_pid(lab, b, &uid(&kept), "echo")? == pid,
        "the returning node restarted its pod"
    );

    // describe shows the node counts; drain leaves the DaemonSet's pod and says so.
    let out = lab.baton(&["describe", "ds", "cam"])?;
    let described = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        described.contains("Desired Number of Nodes Scheduled:")
            && described.contains("RollingUpdate (1 max unavailable, 0 max surge)"),
        "{described}"
    );
    let on_c = pods
        .iter()
        .find(|p| node_of(p) == c)
        .map(uid)
        .unwrap_or_default();
    let out = lab.baton(&["drain", c, "--timeout", "60s"])?;
    let drained = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        drained.contains("ignoring DaemonSet-managed pods")
            && drained.contains(&format!("node/{c} drained")),
        "{drained}"
    );
    ensure!(
        cam_pods(lab)?
            .iter()
            .any(|p| uid(p) == on_c && node_of(p) == c && is_ready(p)),
        "drain took the DaemonSet's pod"
    );

    // Deleting the DaemonSet stops its pods.
    lab.baton(&["delete", "daemonset", "cam"])?;
    wait_for("the DaemonSet's pods to go", LONG, || {
        Ok(cam_pods(lab)?.is_empty().then_some(()))
    })?;
    wait_for("its containers to stop", LONG, || {
        Ok((container_pids(b, &uid(&kept), "echo").is_empty()
            && container_pids(c, &on_c, "echo").is_empty())
        .then_some(()))
    })?;
    Ok(())
}
