//! The walking skeleton, end to end on real processes: a coordinator and two agents, each
//! agent in its own network namespace, a real registry, real containers.
//!
//! One scenario, run against the embedded broker and against a real Mosquitto.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::{items, wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

fn web(registry: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {{app: web}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: echo
        image: {registry}/baton/http-echo:1
        env:
        - name: MESSAGE
          value: hello-from-baton
        ports:
        - containerPort: 8080
        resources:
          requests: {{cpu: 50m, memory: 16Mi}}
          limits: {{cpu: 500m, memory: 64Mi}}
"#
    )
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

fn name(p: &Value) -> String {
    p["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn running_web_pods(lab: &Lab, n: usize) -> Result<Option<Vec<Value>>> {
    let pods: Vec<Value> = lab
        .pods()?
        .into_iter()
        .filter(|p| p["metadata"]["owner"] == "web")
        .collect();
    let running = pods
        .iter()
        .filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
        .count();
    Ok((pods.len() == n && running == n).then_some(pods))
}

/// Everything an agent made for a pod: its directory (rootfs, logs), its mounts and its
/// cgroups. Returns what is still there.
fn leftovers(lab: &Lab, node: &str, uid: &str) -> Vec<String> {
    let mut left = Vec::new();
    let agent = lab.agent_by_node(node).expect("pod on a lab node");
    let dir = agent.data_dir.join("pods").join(uid);
    if dir.exists() {
        left.push(dir.display().to_string());
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains(uid))
            .map(|l| format!("mount {l}")),
    );
    for ctrl in ["memory", "pids", "cpu"] {
        let cg = Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join("baton")
            .join(node)
            .join(uid);
        if cg.exists() {
            left.push(cg.display().to_string());
        }
    }
    left
}

fn wait_cleaned_up(lab: &Lab, node: &str, uid: &str) -> Result<()> {
    wait_for(
        &format!("pod {uid} on {node} to be cleaned up"),
        LONG,
        || {
            let left = leftovers(lab, node, uid);
            if left.is_empty() {
                Ok(Some(()))
            } else {
                anyhow::bail!("still there: {left:?}")
            }
        },
    )
}

/// Fetches the http-echo info page of a pod from inside its node's namespace.
fn http_info(lab: &Lab, pod: &Value) -> Result<String> {
    let node = pod["spec"]["nodeName"].as_str().context("pod has a node")?;
    let ip = pod["status"]["podIP"].as_str().context("pod has an IP")?;
    let agent = lab.agent_by_node(node).context("node is a lab agent")?;
    let out = agent
        .ns
        .cmd("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://{ip}:8080/cgi-bin/info"),
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "curl {ip}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn identity(objs: &[Value]) -> BTreeSet<(String, String, String)> {
    objs.iter()
        .map(|o| {
            (
                name(o),
                o["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
                o["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
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
        let (node, uid) = (
            p["spec"]["nodeName"].as_str().unwrap_or(""),
            p["metadata"]["uid"].as_str().unwrap_or(""),
        );
        wait_cleaned_up(lab, node, uid)?;
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
        "      volumes:\n      - name: data\n        emptyDir: {}\n      containers:",
    );
    let out = lab.baton_raw(&["apply", "-f", "-"], Some(&bad))?;
    ensure!(!out.status.success(), "invalid manifest accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("spec.template.spec.volumes"),
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
    let all: Vec<(String, String)> = lab
        .pods()?
        .iter()
        .map(|p| {
            (
                p["spec"]["nodeName"].as_str().unwrap_or("").to_owned(),
                p["metadata"]["uid"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    lab.baton(&["delete", "deployment", "web"])?;
    lab.baton(&["delete", "pod", "hog"])?;
    wait_for("no pods left", LONG, || {
        Ok(lab.pods()?.is_empty().then_some(()))
    })?;
    for (node, uid) in &all {
        wait_cleaned_up(lab, node, uid)?;
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
