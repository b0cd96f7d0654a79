//! A pod whose sandbox vanished gets a new one (issue 10), as kubelet recreates a dead pod
//! sandbox: whatever removed its network namespace (another process, an administrator, a
//! crash), the next start of its container makes the namespace, veth and address again
//! instead of failing `CreateContainerError` forever.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use baton_e2e::fleet::{
    self, container_running, http_info, node_of, pod_ip, uid, wait_pods, EchoDeployment,
};
use baton_e2e::{sh, wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

fn restarts(p: &Value) -> u64 {
    p["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0)
}

/// The name of the network namespace process `pid` is in (empty if none has a name).
fn netns_of(pid: u32) -> String {
    Command::new("ip")
        .args(["netns", "identify", &pid.to_string()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[test]
fn a_pod_whose_netns_was_deleted_gets_a_new_sandbox_and_runs_again() -> Result<()> {
    let mut lab = Lab::start("sbox", 1, Broker::Embedded)?;
    let r = sandbox(&mut lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn sandbox(lab: &mut Lab) -> Result<()> {
    lab.apply(&EchoDeployment::new(1).grace_secs(1).yaml(&lab.registry()))?;
    let pods = wait_pods(
        lab,
        "web",
        1,
        LONG,
        "one running web pod",
        container_running,
    )?;
    let pod = pods[0].clone();
    let (node, pod_uid, ip) = (node_of(&pod), uid(&pod), pod_ip(&pod));
    let init = fleet::init_pid(lab, &node, &pod_uid, "echo")?;
    let netns = netns_of(init);
    ensure!(netns.starts_with("bt-"), "pod netns {netns:?}");

    // Removed from outside, then the container dies.
    sh(Command::new("ip").args(["netns", "delete", &netns]))?;
    sh(Command::new("kill").args(["-9", &init.to_string()]))?;

    let again = wait_for("the pod running again, restarted", LONG, || {
        let pods = lab.pods()?;
        let Some(p) = pods.into_iter().find(|p| uid(p) == pod_uid) else {
            return Ok(None);
        };
        let reason = p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if reason.contains("CreateContainerError") {
            eprintln!("waiting: {reason}");
        }
        Ok((container_running(&p) && restarts(&p) >= 1).then_some(p))
    })?;
    let init2 = fleet::init_pid(lab, &node, &pod_uid, "echo")?;
    ensure!(init2 != init, "the same init runs");
    ensure!(
        netns_of(init2) == netns,
        "the new container is not in a new {netns}: {:?}",
        netns_of(init2)
    );
    ensure!(
        pod_ip(&again) == ip,
        "address {} became {}",
        ip,
        pod_ip(&again)
    );
    // Reachable again through its new veth on the node's bridge.
    let page = http_info(lab, &lab.agents[0].name, &ip, Duration::from_secs(5))?;
    ensure!(page.contains("version=1"), "page: {page}");
    Ok(())
}
