//! Node labels and registered taints on real agents (issue 18): a node started with
//! `baton-agent --register-with-taints` gets no pod that does not tolerate the taint, and
//! `baton label node` steers scheduling by `nodeSelector` at once, needs `--overwrite` to
//! change a value, and outlives an agent restart.

use std::time::Duration;

use anyhow::{ensure, Result};
use baton_e2e::fleet::{container_running, node_of, EchoDeployment};
use baton_e2e::{bin, wait_for, Broker, Lab};

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
    Ok(())
}
