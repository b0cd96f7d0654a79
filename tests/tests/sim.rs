//! `baton-sim` against a real coordinator and its embedded broker: 60 hollow nodes join, a
//! Deployment with one pod per node runs on all of them, 10% of them vanish (connections
//! dropped without a DISCONNECT, so the broker publishes their last wills) and their pods
//! move to the others, and the lost nodes come back Ready. What the scale benchmark
//! (tests/bench/scale.sh) relies on, checked at a size CI can afford.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::{bin, items, wait_for, Broker, Lab};

const NODES: usize = 60;
const LONG: Duration = Duration::from_secs(120);

struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Sim {
    fn say(&mut self, line: &str) -> Result<()> {
        let stdin = self.0.stdin.as_mut().context("sim stdin")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }
}

fn ready_nodes(lab: &Lab) -> Result<Vec<String>> {
    Ok(items(&lab.get_json(&["get", "nodes"])?)
        .iter()
        .filter(|n| n["status"]["ready"] == true)
        .map(|n| {
            n["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect())
}

/// The fleet's Running, ready pods per node, for nodes in `on`.
fn running_on(lab: &Lab, on: &[String]) -> Result<BTreeMap<String, usize>> {
    let mut per = BTreeMap::new();
    for p in lab.pods()? {
        let node = p["spec"]["nodeName"].as_str().unwrap_or_default();
        let ready = p["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["ready"] == true));
        if p["status"]["phase"] == "Running" && ready && on.iter().any(|n| n == node) {
            *per.entry(node.to_owned()).or_default() += 1;
        }
    }
    Ok(per)
}

#[test]
fn simulated_fleet_joins_runs_a_pod_per_node_and_heals_after_losing_a_tenth() -> Result<()> {
    let lab = Lab::start_without_agents_with(
        "sim",
        0,
        Broker::Embedded,
        &["--pod-eviction-timeout", "5s"],
    )?;
    let r = scenario(&lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn scenario(lab: &Lab) -> Result<()> {
    let child = lab
        .hub
        .cmd(bin("baton-sim"))
        .args(["--coordinator", &lab.mqtt_url(), "--prefix", "hollow"])
        .args(["--nodes", &NODES.to_string(), "--start-delay-ms", "200"])
        .args(["--stats-secs", "3600"])
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("baton-sim")?;
    let mut sim = Sim(child);

    let all = wait_for("every simulated node Ready", LONG, || {
        let ready = ready_nodes(lab)?;
        Ok((ready.len() == NODES).then_some(ready))
    })?;
    let node = lab.get_json(&["get", "node", &all[0]])?;
    ensure!(
        node["metadata"]["labels"]["baton.io/simulated"] == "true",
        "{node}"
    );

    lab.apply(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: fleet}}\nspec:\n  replicas: {NODES}\n  selector: {{matchLabels: {{app: fleet}}}}\n  template:\n    metadata: {{labels: {{app: fleet}}}}\n    spec:\n      containers: [{{name: app, image: sim.invalid/app:1}}]\n"
    ))?;
    let per = wait_for("one Running pod on every node", LONG, || {
        let per = running_on(lab, &all)?;
        Ok((per.values().sum::<usize>() == NODES).then_some(per))
    })?;
    ensure!(
        per.len() == NODES && per.values().all(|n| *n == 1),
        "spread over every node, one each: {per:?}"
    );

    // A tenth of the fleet vanishes: noticed through the last wills, their pods evicted
    // after the 5 s timeout and run on the others.
    sim.say("lose 10")?;
    let lost = NODES / 10;
    let ready = wait_for("the lost nodes NotReady", LONG, || {
        let ready = ready_nodes(lab)?;
        Ok((ready.len() == NODES - lost).then_some(ready))
    })?;
    wait_for("every pod Running on a Ready node again", LONG, || {
        let per = running_on(lab, &ready)?;
        Ok((per.values().sum::<usize>() == NODES).then_some(()))
    })?;
    let pods = lab.pods()?.len();
    ensure!(
        pods == NODES,
        "the lost nodes' pods are gone, not kept beside their replacements: {pods} pods"
    );

    sim.say("restore")?;
    wait_for("the lost nodes Ready again", LONG, || {
        Ok((ready_nodes(lab)?.len() == NODES).then_some(()))
    })?;
    Ok(())
}
