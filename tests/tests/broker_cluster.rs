//! A clustered broker (issue 17): a real 3-node NATS cluster as the MQTT broker, with the
//! coordinator and the agents given all three addresses. Killing the node they are
//! connected to (kill -9) moves them to another, restarts no pod, and loses no desired
//! state: a scale change made after the kill reaches the agents through the cluster. An
//! agent, and a coordinator, whose first broker is dead connect to another. The node comes
//! back, another dies, and the same holds.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::fleet::{init_pid, is_running, node_of, uid, uids, wait_pods, EchoDeployment};
use baton_e2e::{items, nats, wait_for, Broker, Lab};

const LONG: Duration = Duration::from_secs(180);

/// The address of NATS node `i` as the lab's agents and coordinator are given it.
fn node_url(lab: &Lab, i: usize) -> String {
    format!("mqtt://{}:{}", lab.hub_ip(), nats::mqtt_port(i))
}

/// The NATS node the last connection logged in `log` went to (`phrase` starts the line
/// that says so).
fn on_node(lab: &Lab, log: &str, phrase: &str) -> Option<usize> {
    let line = log.lines().rev().find(|l| l.contains(phrase))?;
    (0..nats::NODES).find(|&i| line.contains(&node_url(lab, i)))
}

/// Waits until the coordinator and every agent in `agents` is connected to a NATS node
/// other than `dead`; returns the nodes they are on, the coordinator's first.
fn wait_off(lab: &Lab, dead: usize, agents: &[usize]) -> Result<Vec<usize>> {
    wait_for(
        &format!("the agents and the coordinator to leave NATS node {dead}"),
        Duration::from_secs(60),
        || {
            let log = lab.coordinator.as_ref().context("coordinator")?.log();
            let mut on = vec![on_node(lab, &log, "connected to the MQTT broker")];
            on.extend(
                agents
                    .iter()
                    .map(|&a| on_node(lab, &lab.agent_log(a), "connected to broker at")),
            );
            Ok(on
                .iter()
                .all(|n| n.is_some_and(|n| n != dead))
                .then(|| on.into_iter().flatten().collect()))
        },
    )
}

fn all_ready(lab: &Lab, n: usize) -> Result<Option<()>> {
    let nodes = items(&lab.get_json(&["get", "nodes"])?);
    Ok((nodes.len() == n && nodes.iter().all(|n| n["status"]["ready"] == true)).then_some(()))
}

#[test]
fn agents_and_coordinator_fail_over_between_nats_nodes_without_restarting_pods() -> Result<()> {
    let mut lab = Lab::start_without_agents("bc", 3, Broker::Nats)?;
    let result = (|| {
        lab.start_agent(0)?;
        lab.start_agent(1)?;
        // Everyone starts on the first address of the list.
        let on = wait_off(&lab, usize::MAX, &[0, 1])?;
        ensure!(on == [0, 0, 0], "not all on the first NATS node: {on:?}");
        lab.apply(&EchoDeployment::new(2).yaml(&lab.registry()))?;
        let pods = wait_pods(&lab, "web", 2, LONG, "2 pods Running", is_running)?;
        let pids: Vec<u32> = pods
            .iter()
            .map(|p| init_pid(&lab, &node_of(p), &uid(p), "echo"))
            .collect::<Result<_>>()?;
        let unrestarted = |lab: &Lab, when: &str| -> Result<()> {
            for (p, pid) in pods.iter().zip(&pids) {
                ensure!(
                    init_pid(lab, &node_of(p), &uid(p), "echo")? == *pid,
                    "a container restarted {when}"
                );
            }
            Ok(())
        };

        // The node everyone is on dies: they move on to the others.
        lab.nats.as_mut().context("nats")?.kill(0);
        let on = wait_off(&lab, 0, &[0, 1])?;
        eprintln!("FIGURE after NATS node 0 died, coordinator and agents on nodes {on:?}");
        // A coordinator that starts while the first address of its list is dead connects
        // to another, and takes the fleet over where it was.
        lab.kill_coordinator();
        lab.start_coordinator()?;
        wait_off(&lab, 0, &[0, 1])?;
        let log = lab.coordinator.as_ref().context("coordinator")?.log();
        ensure!(
            log.contains(&format!(
                "cannot connect to the MQTT broker at {}",
                node_url(&lab, 0)
            )),
            "the coordinator did not try the dead first broker: {log}"
        );
        // A change made now reaches the agents through the surviving nodes.
        lab.baton(&["scale", "deployment/web", "--replicas", "4"])?;
        let four = wait_pods(&lab, "web", 4, LONG, "4 pods Running", is_running)?;
        ensure!(
            uids(&pods).is_subset(&uids(&four)),
            "the first pods were replaced: {four:?}"
        );
        unrestarted(&lab, "when the first NATS node died")?;
        wait_for("both nodes Ready", LONG, || all_ready(&lab, 2))?;

        // An agent whose first address is the dead node connects to another.
        lab.start_agent(2)?;
        let log = lab.agent_log(2);
        ensure!(
            log.contains(&format!(
                "cannot connect to the MQTT broker at {}",
                node_url(&lab, 0)
            )) && on_node(&lab, &log, "connected to broker at").is_some_and(|n| n != 0),
            "agent 2 did not pass over the dead first broker: {log}"
        );

        // The third agent's pods too: the desired states of all three come through the
        // two surviving nodes.
        lab.baton(&["scale", "deployment/web", "--replicas", "6"])?;
        let six = wait_pods(&lab, "web", 6, LONG, "6 pods Running", is_running)?;
        ensure!(
            uids(&four).is_subset(&uids(&six)),
            "pods were replaced: {six:?}"
        );
        ensure!(
            six.iter().any(|p| node_of(p) == lab.agents[2].name),
            "the agent that joined after the first kill got no pod: {six:?}"
        );
        unrestarted(&lab, "while a NATS node was down")?;
        wait_for("all three nodes Ready", LONG, || all_ready(&lab, 3))?;

        // The first node returns and catches up, then the one most are on dies: they move
        // again, and a change still reaches every agent.
        lab.nats.as_mut().context("nats")?.restart(0)?;
        let on = wait_off(&lab, 0, &[0, 1, 2])?;
        let busiest = (1..nats::NODES)
            .max_by_key(|n| on.iter().filter(|o| *o == n).count())
            .context("nodes")?;
        lab.nats.as_mut().context("nats")?.kill(busiest);
        let on = wait_off(&lab, busiest, &[0, 1, 2])?;
        eprintln!("FIGURE after NATS node {busiest} died, coordinator and agents on nodes {on:?}");
        lab.baton(&["scale", "deployment/web", "--replicas", "3"])?;
        let three = wait_pods(&lab, "web", 3, LONG, "3 pods Running", is_running)?;
        ensure!(
            uids(&three).is_subset(&uids(&six)),
            "pods were replaced: {three:?}"
        );
        for (p, pid) in pods.iter().zip(&pids) {
            if uids(&three).contains(&uid(p)) {
                ensure!(
                    init_pid(&lab, &node_of(p), &uid(p), "echo")? == *pid,
                    "a container restarted when the second NATS node died"
                );
            }
        }
        wait_for("all three nodes Ready", LONG, || all_ready(&lab, 3))
    })();
    if result.is_err() {
        lab.dump_logs();
    }
    result
}
