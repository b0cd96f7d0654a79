//! Version skew (issue 13, as Kubernetes' kubelet skew policy puts it): a 0.2.0 coordinator
//! keeps serving an agent one minor version older. The old agent is the real previous
//! release, built from tag `v0.1.0` of this repository (tests/skew/build-previous.sh), not a
//! simulated one. On a real Mosquitto, both devices enrolled (signed messages, sealed by the
//! coordinator in each node's own protocol version):
//! - the 0.1.0 and the 0.2.0 agent are both Ready, `get nodes` shows their versions and the
//!   API their protocol versions (4 and 5);
//! - a Deployment runs real containers on both;
//! - the old agent's status reports arrive: a container killed on it is restarted, and the
//!   restart is reported;
//! - `baton agent upgrade` skips the 0.1.0 node with the protocol-v4 reason and never sends
//!   it an order (no retained message on its update topic);
//! - `baton logs` of a pod on the old node says "agent too old for logs";
//! - a node-scheduled CronJob selecting both nodes is withheld from the 0.1.0 node, with a
//!   reason naming protocol v4 on the CronJob, while the 0.2.0 node fires it;
//! - neither the coordinator nor the old agent refused a single message.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::cron::{jobs_of, run_node, EveryMinute, FiredBy};
use baton_e2e::fleet::{exactly, init_pid, is_running, node_of, uid, EchoDeployment};
use baton_e2e::ota::{releases_dir, wait_rollout, TO};
use baton_e2e::skew::{node_version, previous_agent, PREVIOUS_VERSION};
use baton_e2e::{bin, items, sh, wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

fn restart_count(p: &Value) -> u64 {
    p["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_0_1_0_agent_keeps_running_and_reporting_under_a_0_2_0_coordinator() -> Result<()> {
    let old = previous_agent()?;
    let mut lab = Lab::start_without_agents("skw", 2, Broker::Mosquitto)?;
    let result = scenario(&mut lab, old);
    if result.is_err() {
        lab.dump_logs();
    }
    result
}

fn scenario(lab: &mut Lab, old: std::path::PathBuf) -> Result<()> {
    // Enrolled devices: every message signed, and the coordinator answers each node in the
    // protocol version it last spoke. A release key, for the upgrade at the end.
    let keys = lab.dir.path().join("keys");
    sh(Command::new(bin("baton"))
        .args(["release", "keygen", "--out"])
        .arg(&keys))?;
    let public = keys.join("release.pub").to_string_lossy().into_owned();
    lab.restart_coordinator_enrolling(&["--release-public-key-file", &public])?;
    lab.agents[0].program = Some(vec![old.into()]);
    for i in 0..2 {
        lab.start_enrolled_agent(i)?;
        ensure!(
            lab.agents[i].data_dir.join("identity.json").exists(),
            "agent {i} is Ready without having enrolled"
        );
    }
    let (old_node, new_node) = (lab.agents[0].name.clone(), lab.agents[1].name.clone());

    // The versions each node reports, in the table and in the API.
    ensure!(
        node_version(lab, &old_node)? == PREVIOUS_VERSION,
        "{old_node}: {:?}",
        node_version(lab, &old_node)
    );
    ensure!(
        node_version(lab, &new_node)? == env!("CARGO_PKG_VERSION"),
        "{new_node}: {:?}",
        node_version(lab, &new_node)
    );
    let nodes = items(&lab.get_json(&["get", "nodes"])?);
    let proto = |name: &str| {
        nodes
            .iter()
            .find(|n| n["metadata"]["name"] == name)
            .map(|n| n["status"]["protocolVersion"].clone())
    };
    ensure!(
        proto(&old_node) == Some(4.into()) && proto(&new_node) == Some(5.into()),
        "protocol versions: old {:?}, new {:?}",
        proto(&old_node),
        proto(&new_node)
    );
    eprintln!(
        "FIGURE get nodes (skew):\n{}",
        String::from_utf8_lossy(&lab.baton(&["get", "nodes"])?.stdout)
    );

    // A Deployment with pods on both nodes, real containers.
    lab.apply(&EchoDeployment::new(4).yaml(&lab.registry()))?;
    let pods = wait_for("4 running web pods", LONG, || {
        exactly(lab, "web", 4, is_running)
    })?;
    let on: BTreeSet<String> = pods.iter().map(node_of).collect();
    ensure!(on.len() == 2, "pods not on both nodes: {on:?}");

    // The old agent's reports arrive: kill -9 a container's init there; it is restarted
    // and the restart is reported.
    let victim = pods
        .iter()
        .find(|p| node_of(p) == old_node)
        .context("a pod on the old node")?
        .clone();
    let pid = init_pid(lab, &old_node, &uid(&victim), "echo")?;
    ensure!(
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()?
            .success(),
        "kill {pid}"
    );
    let name = victim["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    wait_for(
        "the killed container to be reported restarted",
        LONG,
        || {
            let p = lab.get_json(&["get", "pod", &name])?;
            Ok((is_running(&p) && restart_count(&p) >= 1).then_some(()))
        },
    )?;
    let again = init_pid(lab, &old_node, &uid(&victim), "echo")?;
    ensure!(again != pid, "the same init pid {pid} after the kill");

    // `baton logs` needs protocol v5: a pod on the 0.1.0 node gets a clear refusal, never
    // a request its agent could not read (which it would refuse as too new); a pod on the
    // 0.2.0 node has its log.
    let out = lab.baton_raw(&["logs", &name], None)?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("agent too old for logs") && err.contains(&old_node),
        "logs of a pod on the 0.1.0 node: {err}"
    );
    let fresh = pods
        .iter()
        .find(|p| node_of(p) == new_node)
        .and_then(|p| p["metadata"]["name"].as_str())
        .context("a pod on the new node")?;
    let out = lab.baton_raw(&["logs", fresh], None)?;
    ensure!(
        out.status.success(),
        "logs of a pod on the 0.2.0 node: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    a_node_cron_job_is_withheld_from_the_old_agent(lab, &old_node, &new_node)?;

    // An upgrade to a release of this source: the 0.1.0 node is skipped (protocol v4 has no
    // AgentUpdate) and never ordered; the 0.2.0 node is in scope.
    let built = releases_dir()?;
    let release = std::fs::read_dir(&built)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("baton-agent-{TO}-")))
        })
        .context("no test release built")?;
    let copy = lab
        .dir
        .path()
        .join(release.file_name().context("release name")?);
    std::fs::copy(&release, &copy)?;
    sh(Command::new(bin("baton"))
        .args(["release", "sign", "--key"])
        .arg(keys.join("release.key"))
        .arg(&copy))?;
    lab.baton(&["release", "import", &copy.to_string_lossy()])?;
    lab.baton(&[
        "agent", "upgrade", "--to", TO, "--name", "skew", "--canary", "0",
    ])?;
    let status = wait_rollout(lab, "skew", LONG, |r| {
        r.phase_of(&old_node) == "skipped" && !r.phase_of(&new_node).is_empty()
    })?;
    let old_row = status.node(&old_node).context("the old node's row")?;
    ensure!(
        old_row.reason.contains("protocol v4") && !old_row.ordered,
        "{old_row:#?}"
    );
    eprintln!("FIGURE skipped: {old_node}: {}", old_row.reason);
    // Orders are retained: a subscriber now would get one at once.
    let sent = lab.watch_topics(
        &format!("baton/v1/nodes/{old_node}/down/update"),
        Duration::from_secs(3),
    )?;
    ensure!(sent.is_empty(), "the 0.1.0 node was sent {sent:?}");
    ensure!(
        node_version(lab, &old_node)? == PREVIOUS_VERSION,
        "the old node changed version"
    );

    // Nothing refused either way: the coordinator's gate admitted every message of the v4
    // agent, and the v4 agent every message sealed for it.
    let coordinator = lab
        .coordinator
        .as_ref()
        .map(|p| p.log())
        .unwrap_or_default();
    let refused: Vec<&str> = coordinator
        .lines()
        .filter(|l| l.contains("rejected an inbound message"))
        .collect();
    ensure!(refused.is_empty(), "the coordinator refused: {refused:#?}");
    let agent = lab.agent_log(0);
    let refused: Vec<&str> = agent
        .lines()
        .filter(|l| l.contains("rejected message"))
        .collect();
    ensure!(refused.is_empty(), "the 0.1.0 agent refused: {refused:#?}");
    Ok(())
}

/// A node-scheduled CronJob (`baton.io/schedule-on: node`) for every node: the 0.1.0 agent
/// (protocol v4) cannot fire CronJobs, so it is not sent it and the CronJob says why,
/// naming the node and protocol v4; the 0.2.0 node runs it, and the old one never does.
fn a_node_cron_job_is_withheld_from_the_old_agent(
    lab: &Lab,
    old_node: &str,
    new_node: &str,
) -> Result<()> {
    let tick = EveryMinute {
        fired_by: FiredBy::Node(None),
        restart: "Never",
        ..EveryMinute::new("tick", "true")
    };
    lab.apply(&tick.yaml(&lab.registry()))?;
    let reason = wait_for("the CronJob's reason for the old node", LONG, || {
        let out = lab.baton(&["describe", "cronjob", "tick"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(text
            .lines()
            .find(|l| l.contains("NodeProtocolTooOld"))
            .map(str::to_owned))
    })?;
    ensure!(
        reason.contains(old_node) && reason.contains("protocol v4"),
        "{reason}"
    );
    ensure!(!reason.contains(new_node), "{reason}");
    eprintln!("FIGURE withheld: {reason}");
    let ran = wait_for("a run on the 0.2.0 node", Duration::from_secs(150), || {
        let runs: Vec<String> = jobs_of(lab, "tick")?
            .iter()
            .map(|j| run_node(j).to_owned())
            .collect();
        Ok(runs.iter().any(|n| n == new_node).then_some(runs))
    })?;
    ensure!(!ran.iter().any(|n| n == old_node), "{ran:?}");
    lab.baton(&["delete", "cronjob", "tick"])?;
    Ok(())
}
