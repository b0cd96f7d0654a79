//! Link profiles, end to end on a real broker and a real agent: a `metered` node says
//! nothing while idle and stays Ready past the coordinator's heartbeat timeout, a crash of
//! its pod is still reported at once, and its loss (a cut link, kill -9) is noticed through
//! its MQTT keepalive and last will within its bound.
//!
//! The profile's own durations are minutes; the agent gets short ones through the flags
//! that override the profile (a 4 s keepalive: a silent agent is dropped after 6 s).

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use baton_e2e::fleet::{
    container_running, node_of as node, owned_pods, uid, wait_pods, EchoDeployment,
};
use baton_e2e::{container_pids, wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);
/// The coordinator's heartbeat timeout here: what a `lan` node that stops heartbeating gets.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// The agent's MQTT keepalive here.
const KEEPALIVE: Duration = Duration::from_secs(4);

fn ready(lab: &Lab, name: &str) -> Result<bool> {
    Ok(lab.get_json(&["get", "node", name])?["status"]["ready"] == true)
}

fn restarts(p: &Value) -> u64 {
    p["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0)
}

/// Waits for the node to go NotReady and returns how long that took from `since`.
fn wait_not_ready(lab: &Lab, name: &str, since: Instant) -> Result<Duration> {
    wait_for(&format!("{name} NotReady"), LONG, || {
        Ok((!ready(lab, name)?).then(|| since.elapsed()))
    })
}

fn events(lab: &Lab, name: &str) -> Result<String> {
    Ok(String::from_utf8_lossy(&lab.baton(&["describe", "node", name])?.stdout).into_owned())
}

#[test]
fn a_metered_node_is_quiet_yet_its_crashes_and_its_loss_are_seen() -> Result<()> {
    let timeout = format!("{}s", HEARTBEAT_TIMEOUT.as_secs());
    let mut lab = Lab::start_without_agents_with(
        "link",
        1,
        Broker::Embedded,
        &[
            "--heartbeat-timeout",
            &timeout,
            "--pod-eviction-timeout",
            "600s",
        ],
    )?;
    let r = metered(&mut lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn metered(lab: &mut Lab) -> Result<()> {
    lab.agent_args = [
        "--link-profile",
        "metered",
        "--mqtt-keepalive-secs",
        &KEEPALIVE.as_secs().to_string(),
        "--heartbeat-max-secs",
        "3600",
    ]
    .map(str::to_owned)
    .to_vec();
    lab.start_agent(0)?;
    let name = lab.agents[0].name.clone();
    lab.apply(&EchoDeployment::new(1).yaml(&lab.registry()))?;
    let pods = wait_pods(lab, "web", 1, LONG, "a running web pod", container_running)?;
    let pod = pods[0].clone();
    ensure!(node(&pod) == name);

    // Idle: nothing goes up (no heartbeat, no status) for several heartbeat timeouts, yet
    // the node stays Ready: the coordinator times it by the profile it told.
    wait_for("the node's status to settle", LONG, || {
        let seen = lab.watch_topics(&format!("baton/v1/nodes/{name}/up/#"), KEEPALIVE)?;
        Ok(seen.is_empty().then_some(()))
    })?;
    let quiet = lab.watch_topics(
        &format!("baton/v1/nodes/{name}/up/#"),
        HEARTBEAT_TIMEOUT * 3,
    )?;
    ensure!(quiet.is_empty(), "an idle metered node sent {quiet:?}");
    ensure!(
        ready(lab, &name)?,
        "a quiet, connected metered node went NotReady: {}",
        events(lab, &name)?
    );

    // A crash of its pod is reported at once (the status goes out after the profile's
    // 1 s batch), not at the next heartbeat an hour away.
    let pid = *container_pids(&name, &uid(&pod), "echo")
        .first()
        .ok_or_else(|| anyhow::anyhow!("no process in the web container"))?;
    let crashed = Instant::now();
    baton_e2e::sh(std::process::Command::new("kill").args(["-9", &pid.to_string()]))?;
    let reported = wait_for("the crash reported", LONG, || {
        let pods = owned_pods(lab, "web")?;
        Ok(pods
            .iter()
            .any(|p| uid(p) == uid(&pod) && (restarts(p) >= 1 || !container_running(p)))
            .then(|| crashed.elapsed()))
    })?;
    println!(
        "FIGURE metered: pod crash reported after {:.2}s",
        reported.as_secs_f64()
    );
    ensure!(
        reported < KEEPALIVE * 2,
        "the crash took {reported:?} to be reported"
    );

    // A cut link: the broker hears no ping for 1.5 keepalives, drops the agent and
    // publishes its last will.
    lab.set_link(0, false)?;
    let cut = Instant::now();
    let noticed = wait_not_ready(lab, &name, cut)?;
    println!(
        "FIGURE metered (keepalive {}s): cut link noticed after {:.2}s",
        KEEPALIVE.as_secs(),
        noticed.as_secs_f64()
    );
    ensure!(
        noticed <= KEEPALIVE.mul_f64(1.5) + Duration::from_secs(3),
        "the cut link took {noticed:?} to be noticed"
    );
    ensure!(
        events(lab, &name)?.contains("last will"),
        "NotReady for another reason than the last will: {}",
        events(lab, &name)?
    );
    lab.set_link(0, true)?;
    wait_for("the node Ready again", LONG, || {
        Ok(ready(lab, &name)?.then_some(()))
    })?;

    // kill -9: the broker sees the connection close and publishes the will at once.
    lab.kill_agent(0);
    let killed = Instant::now();
    let noticed = wait_not_ready(lab, &name, killed)?;
    println!(
        "FIGURE metered: kill -9 noticed after {:.2}s",
        noticed.as_secs_f64()
    );
    ensure!(
        noticed <= KEEPALIVE.mul_f64(1.5) + Duration::from_secs(3),
        "the killed agent took {noticed:?} to be noticed"
    );
    Ok(())
}
