//! Node labels and registered taints on real agents (issue 18): a node started with
//! `baton-agent --register-with-taints` gets no pod that does not tolerate the taint, and
//! `baton label node` steers scheduling by `nodeSelector` at once, needs `--overwrite` to
//! change a value, outlives an agent restart, and a DaemonSet with a `nodeSelector` gains
//! and loses the node's pod as the label comes and goes.

use std::time::Duration;

use anyhow::{ensure, Result};
use baton_e2e::fleet::{container_running, is_terminating, node_of, EchoDeployment};
use baton_e2e::{bin, wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

fn pinned(registry: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: pinned
spec:
  nodeSelector: {{role: edge}}
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: {registry}/baton/http-echo:1
"#
    )
}

fn edge_daemon_set(registry: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: edge
spec:
  selector:
    matchLabels: {{app: edge}}
  template:
    metadata:
      labels: {{app: edge}}
    spec:
      nodeSelector: {{role: edge}}
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: {registry}/baton/http-echo:1
"#
    )
}

/// The DaemonSet `edge`'s pods that are not terminating.
fn edge_pods(lab: &Lab) -> Result<Vec<Value>> {
    Ok(lab
        .pods()?
        .into_iter()
        .filter(|p| p["metadata"]["daemonSet"] == "edge" && !is_terminating(p))
        .collect())
}

#[test]
fn registered_taints_and_node_labels_steer_scheduling() -> Result<()> {
    let mut lab = Lab::start_without_agents_with("lbl", 2, Broker::Embedded, &[])?;
    let r = scenario(&mut lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn scenario(lab: &mut Lab) -> Result<()> {
    let (tainted, plain) = (lab.agents[0].name.clone(), lab.agents[1].name.clone());
    lab.agents[0].program = Some(vec![
        bin("baton-agent").into(),
        "--register-with-taints".into(),
        "dedicated=cams:NoSchedule".into(),
    ]);
    lab.start_agent(0)?;
    lab.start_agent(1)?;
    let node = lab.get_json(&["get", "node", &tainted])?;
    ensure!(
        node["spec"]["taints"][0]["key"] == "dedicated"
            && node["spec"]["taints"][0]["effect"] == "NoSchedule",
        "the registered taint is not on the node: {node}"
    );

    // Pods without the toleration all go to the other node.
    lab.apply(&EchoDeployment::new(3).yaml(&lab.registry()))?;
    let pods = wait_for("three web pods running", LONG, || {
        let pods = lab.pods()?;
        Ok((pods.len() == 3 && pods.iter().all(container_running)).then_some(pods))
    })?;
    ensure!(
        pods.iter().all(|p| node_of(p) == plain),
        "a pod landed on the tainted node: {pods:?}"
    );

    // A pod for `role=edge` waits for a node with that label, and runs once one has it.
    lab.apply(&pinned(&lab.registry()))?;
    std::thread::sleep(Duration::from_secs(2));
    let p = lab.get_json(&["get", "pod", "pinned"])?;
    ensure!(
        p["spec"]["nodeName"].is_null(),
        "scheduled before any node had the label: {p}"
    );
    let out = lab.baton(&["label", "node", &plain, "role=edge"])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("labeled"),
        "{out:?}"
    );
    wait_for("pinned running on the labelled node", LONG, || {
        let p = lab.get_json(&["get", "pod", "pinned"])?;
        Ok((container_running(&p) && node_of(&p) == plain).then_some(()))
    })?;

    // Another value needs --overwrite, as with kubectl.
    let refused = lab.baton_raw(&["label", "node", &plain, "role=core"], None)?;
    ensure!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("--overwrite is false"),
        "{refused:?}"
    );

    // The label outlives an agent restart (its flags do not have it).
    lab.kill_agent(1);
    lab.start_agent(1)?;
    let node = lab.get_json(&["get", "node", &plain])?;
    ensure!(
        node["metadata"]["labels"]["role"] == "edge",
        "label lost on restart: {node}"
    );

    // A DaemonSet selecting the label runs on that node only, and leaves with the label.
    lab.apply(&edge_daemon_set(&lab.registry()))?;
    wait_for(
        "the edge DaemonSet's pod running on the labelled node",
        LONG,
        || {
            let pods = edge_pods(lab)?;
            Ok(
                (pods.len() == 1 && node_of(&pods[0]) == plain && container_running(&pods[0]))
                    .then_some(()),
            )
        },
    )?;
    lab.baton(&["label", "node", &plain, "role-"])?;
    wait_for("the edge pod gone with the label", LONG, || {
        Ok(edge_pods(lab)?.is_empty().then_some(()))
    })?;
    let node = lab.get_json(&["get", "node", &plain])?;
    ensure!(
        node["metadata"]["labels"]["role"].is_null(),
        "label not removed: {node}"
    );
    Ok(())
}
