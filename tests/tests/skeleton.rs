//! The walking skeleton, end to end on real processes: a coordinator and two agents, each
//! agent in its own network namespace, a real registry, real containers.
//!
//! One scenario, run against the embedded broker and against a real Mosquitto.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Result};
use baton_e2e::fleet::{
    exactly, identity, is_running, node_of, pod_info, pod_name as name, uid, wait_cleaned_up,
    EchoDeployment,
};
use baton_e2e::{items, wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

fn web(registry: &str, replicas: usize) -> String {
    EchoDeployment::new(replicas)
        .metadata("  labels: {app: web}\n")
        .env("MESSAGE", "hello-from-baton")
        .yaml(registry)
}

fn oom_pod(registry: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: hog
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: {registry}/baton/busybox:1
    command: ["dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"]
    resources:
      limits: {{memory: 32Mi}}
"#
    )
}

fn running_web_pods(lab: &Lab, n: usize) -> Result<Option<Vec<Value>>> {
    exactly(lab, "web", n, is_running)
}

/// Fetches the http-echo info page of a pod from inside its node's namespace.
fn http_info(lab: &Lab, pod: &Value) -> Result<String> {
    pod_info(lab, pod, Duration::from_secs(5))
}

fn scenario(broker: Broker, tag: &str) -> Result<()> {
    let mut lab = Lab::start(tag, 2, broker)?;
    let result = steps(&mut lab);
    if result.is_err() {
        lab.dump_logs();
    }
    result
}

fn steps(lab: &mut Lab) -> Result<()> {
    let reg = lab.registry();

    // A 3-replica Deployment spreads over both agents and answers HTTP from its containers.
    let out = lab.apply(&web(&reg, 3))?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("deployment.apps/web created"),
        "apply output: {out:?}"
    );
    let pods = wait_for("3 running web pods", LONG, || running_web_pods(lab, 3))?;
    let nodes: BTreeSet<&str> = pods
        .iter()
        .filter_map(|p| p["spec"]["nodeName"].as_str())
        .collect();
    ensure!(
        nodes.len() == 2,
        "replicas not spread over both nodes: {nodes:?}"
    );
    for p in &pods {
        let body = http_info(lab, p)?;
        ensure!(
            body.contains(&format!("hostname={}", name(p))),
            "pod {} answered {body:?}",
            name(p)
        );
        ensure!(
            body.contains("message=hello-from-baton"),
            "env did not reach the container: {body:?}"
        );
    }
    // A settled fleet only heartbeats: no Hello, Status or desired state goes back and
    // forth (a Hello/StatusRequest ping-pong once sent ~30 Hellos a second per agent).
    let topics = lab.watch_topics("baton/v1/nodes/#", Duration::from_secs(4))?;
    let count = |suffix: &str| topics.iter().filter(|t| t.ends_with(suffix)).count();
    ensure!(
        count("/up/heartbeat") >= 2,
        "no heartbeats seen: {topics:?}"
    );
    ensure!(
        count("/up/hello") + count("/down/control") + count("/down/desired") <= 2,
        "chatter in a settled fleet: {topics:?}"
    );
    let table = String::from_utf8_lossy(&lab.baton(&["get", "pods"])?.stdout).into_owned();
    for col in ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "NODE"] {
        ensure!(table.contains(col), "no {col} column in:\n{table}");
    }
    ensure!(table.matches("Running").count() >= 3, "get pods:\n{table}");

    // A pod over its 32Mi limit is OOM-killed by its cgroup.
    lab.apply(&oom_pod(&reg))?;
    wait_for("the hog pod to be OOMKilled", LONG, || {
        let pod = lab.get_json(&["get", "pod", "hog"])?;
        Ok((pod["status"]["containerStatuses"][0]["state"] == "oomKilled").then_some(()))
    })?;
    let table = String::from_utf8_lossy(&lab.baton(&["get", "pods"])?.stdout).into_owned();
    ensure!(
        table
            .lines()
            .any(|l| l.starts_with("hog") && l.contains("OOMKilled")),
        "get pods:\n{table}"
    );

    // Scale to 1: the extra containers, their cgroups and rootfs are gone.
    lab.baton(&["scale", "deployment", "web", "--replicas", "1"])?;
    let kept = wait_for("1 web pod", LONG, || running_web_pods(lab, 1))?;
    for p in pods.iter().filter(|p| name(p) != name(&kept[0])) {
        wait_cleaned_up(lab, &node_of(p), &uid(p), LONG)?;
    }
    ensure!(
        http_info(lab, &kept[0])?.contains("hostname="),
        "the kept replica stopped answering"
    );

    // An invalid manifest gets a clear error, and the store is unchanged.
    let before = (
        identity(&lab.pods()?),
        items(&lab.get_json(&["get", "deployments"])?),
    );
    let bad = web(&reg, 5).replace(
        "      containers:",
        "      affinity:\n        podAntiAffinity: {}\n      containers:",
    );
    let out = lab.baton_raw(&["apply", "-f", "-"], Some(&bad))?;
    ensure!(!out.status.success(), "invalid manifest accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("spec.template.spec.affinity.podAntiAffinity"),
        "error does not name the field: {err}"
    );
    let out = lab.baton_raw(&["apply", "-f", "-"], Some("kind: [unclosed"))?;
    ensure!(
        !out.status.success() && !out.stderr.is_empty(),
        "malformed YAML accepted: {out:?}"
    );
    let after = (
        identity(&lab.pods()?),
        items(&lab.get_json(&["get", "deployments"])?),
    );
    ensure!(before.0 == after.0, "pods changed by a rejected apply");
    ensure!(
        before.1.len() == after.1.len() && after.1[0]["spec"]["replicas"] == 1,
        "deployments changed by a rejected apply"
    );

    // A restarted coordinator shows the same state.
    let deployments = lab.get_json(&["get", "deployments"])?;
    let pods_before = identity(&lab.pods()?);
    lab.coordinator.take(); // SIGTERM
    lab.start_coordinator()?;
    ensure!(
        identity(&lab.pods()?) == pods_before,
        "pods differ after a coordinator restart"
    );
    let again = lab.get_json(&["get", "deployments"])?;
    ensure!(
        items(&again).len() == items(&deployments).len(),
        "deployments differ after restart"
    );
    ensure!(
        items(&again)[0]["metadata"]["uid"] == items(&deployments)[0]["metadata"]["uid"],
        "deployment uid changed"
    );
    wait_for("the kept pod to report Running again", LONG, || {
        running_web_pods(lab, 1)
    })?;

    // Delete: everything is gone.
    let all: Vec<(String, String)> = lab.pods()?.iter().map(|p| (node_of(p), uid(p))).collect();
    lab.baton(&["delete", "deployment", "web"])?;
    lab.baton(&["delete", "pod", "hog"])?;
    wait_for("no pods left", LONG, || {
        Ok(lab.pods()?.is_empty().then_some(()))
    })?;
    for (node, uid) in &all {
        wait_cleaned_up(lab, node, uid, LONG)?;
    }
    Ok(())
}

#[test]
fn walking_skeleton_on_the_embedded_broker() -> Result<()> {
    scenario(Broker::Embedded, "emb")
}

#[test]
fn walking_skeleton_on_mosquitto() -> Result<()> {
    scenario(Broker::Mosquitto, "mos")
}
