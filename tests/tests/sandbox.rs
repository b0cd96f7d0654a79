//! A pod whose sandbox vanished gets a new one (issue 10), as kubelet recreates a dead pod
//! sandbox: whatever removed its network namespace (another process, an administrator, a
//! crash), the next start of its container makes the namespace, veth and address again
//! instead of failing `CreateContainerError` forever.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use baton_e2e::fleet::{self, container_running, http_info, pod_ip, uid};
use baton_e2e::{sh, wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

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

/// `restartCount` of container `name` of pod `p`.
fn restarts_of(p: &Value, name: &str) -> u64 {
    p["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .and_then(|c| c["restartCount"].as_u64())
        .unwrap_or(0)
}

fn sandbox(lab: &mut Lab) -> Result<()> {
    let (node, registry) = (lab.agents[0].name.clone(), lab.registry());
    // http-echo serves; a sidecar shares its network namespace.
    lab.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: sb
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: {registry}/baton/http-echo:1
  - name: side
    image: {registry}/baton/busybox:1
    command: [sleep, '3600']
"#
    ))?;
    let pod = wait_for("pod sb running", LONG, || {
        Ok(lab
            .pods()?
            .into_iter()
            .find(|p| fleet::pod_name(p) == "sb" && container_running(p)))
    })?;
    let (pod_uid, ip) = (uid(&pod), pod_ip(&pod));
    let init = fleet::init_pid(lab, &node, &pod_uid, "echo")?;
    let side = fleet::init_pid(lab, &node, &pod_uid, "side")?;
    let netns = netns_of(init);
    ensure!(netns.starts_with("bt-"), "pod netns {netns:?}");
    ensure!(
        netns_of(side) == netns,
        "the sidecar is not in the pod's netns"
    );

    // Removed from outside, then the container dies.
    sh(Command::new("ip").args(["netns", "delete", &netns]))?;
    sh(Command::new("kill").args(["-9", &init.to_string()]))?;

    let again = wait_for("both containers running again, restarted", LONG, || {
        let pods = lab.pods()?;
        let Some(p) = pods.into_iter().find(|p| uid(p) == pod_uid) else {
            return Ok(None);
        };
        let all_running = p["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| {
                cs.len() == 2 && cs.iter().all(|c| c["state"]["running"].is_object())
            });
        let ok = container_running(&p)
            && all_running
            && restarts_of(&p, "echo") >= 1
            && restarts_of(&p, "side") >= 1;
        Ok(ok.then_some(p))
    })?;
    let init2 = fleet::init_pid(lab, &node, &pod_uid, "echo")?;
    let side2 = fleet::init_pid(lab, &node, &pod_uid, "side")?;
    ensure!(init2 != init && side2 != side, "the same processes run");
    // Both in the one new namespace, under the old name.
    ensure!(
        netns_of(init2) == netns && netns_of(side2) == netns,
        "not in a new {netns}: echo in {:?}, side in {:?}",
        netns_of(init2),
        netns_of(side2)
    );
    ensure!(
        pod_ip(&again) == ip,
        "address {} became {}",
        ip,
        pod_ip(&again)
    );
    // Reachable again through its new veth on the node's bridge.
    let page = http_info(lab, &node, &ip, Duration::from_secs(5))?;
    ensure!(page.contains("version=1"), "page: {page}");
    Ok(())
}
