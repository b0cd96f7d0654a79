//! ConfigMaps and a 0.1.0 agent (issue 18): the real previous release's agent (protocol v4,
//! tests/skew/build-previous.sh) cannot decode a pod that uses a ConfigMap, so such a pod
//! assigned to its node waits with `CreateContainerConfigError` and a reason naming the
//! agent's protocol, while the node stays Ready and keeps running its other pods; a change
//! to the ConfigMap reaches nobody and breaks nothing. A pod with DNS settings
//! (`hostAliases`, `dnsPolicy`, `dnsConfig`: v5's `PodSpec.dns`) waits the same way.
//! Neither side refuses or drops a message, and neither process dies.
//!
//! Apart from tests/tests/skew.rs (an enrolled fleet on Mosquitto, a minute or more) so
//! that this check costs one agent on the embedded broker.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::skew::{node_version, previous_agent, PREVIOUS_VERSION};
use baton_e2e::{wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

const CONFIG: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\n\
                      data: {mode: fast}\n";

/// A pod that uses `settings` as env and as a volume.
fn user_pod(registry: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: uses-config}}\nspec:\n  containers:\n  \
         - name: c\n    image: {registry}/baton/busybox:1\n    command: [sleep, '3600']\n    \
         env:\n    - name: MODE\n      valueFrom: {{configMapKeyRef: {{name: settings, key: \
         mode}}}}\n    volumeMounts: [{{name: cfg, mountPath: /cfg}}]\n  volumes:\n  - name: \
         cfg\n    configMap: {{name: settings}}\n"
    )
}

fn plain_pod(registry: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: plain}}\nspec:\n  containers:\n  - name: \
         c\n    image: {registry}/baton/busybox:1\n    command: [sleep, '3600']\n"
    )
}

/// A pod with DNS settings a v4 agent cannot carry.
fn dns_pod(registry: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: uses-dns}}\nspec:\n  dnsPolicy: Default\n  \
         hostAliases: [{{ip: 10.1.2.3, hostnames: [db.lab]}}]\n  containers:\n  - name: c\n    \
         image: {registry}/baton/busybox:1\n    command: [sleep, '3600']\n"
    )
}

fn running(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["status"]["containerStatuses"][0]["state"]["running"].is_object()
}

#[test]
fn a_0_1_0_agent_is_not_sent_pods_that_use_config_maps() -> Result<()> {
    let old = previous_agent()?;
    let mut lab = Lab::start_without_agents("cm4", 1, Broker::Embedded)?;
    lab.agents[0].program = Some(vec![old.into()]);
    let result = scenario(&mut lab);
    if result.is_err() {
        lab.dump_logs();
    }
    result
}

fn scenario(lab: &mut Lab) -> Result<()> {
    lab.start_agent(0)?;
    let node = lab.agents[0].name.clone();
    ensure!(
        node_version(lab, &node)? == PREVIOUS_VERSION,
        "{node} is not the 0.1.0 agent: {:?}",
        node_version(lab, &node)
    );
    let registry = lab.registry();
    lab.apply(CONFIG)?;
    lab.apply(&user_pod(&registry))?;
    lab.apply(&plain_pod(&registry))?;
    lab.apply(&dns_pod(&registry))?;

    // The pod is bound to the node but withheld from it, with kubelet's reason word and a
    // message that names the node, its protocol and the way out.
    let waiting = wait_for("uses-config to wait for a newer agent", LONG, || {
        let p = lab.get_json(&["get", "pod", "uses-config"])?;
        let text = p["status"].to_string();
        let ok = p["spec"]["nodeName"] == node.as_str()
            && text.contains("CreateContainerConfigError")
            && text.contains("protocol v4");
        Ok(ok.then_some(p))
    })?;
    let status = waiting["status"].to_string();
    ensure!(
        status.contains(&node) && status.contains("upgrade its agent to protocol v5"),
        "{status}"
    );
    let described =
        String::from_utf8_lossy(&lab.baton(&["describe", "pod", "uses-config"])?.stdout)
            .into_owned();
    ensure!(
        described.contains("CreateContainerConfigError") && described.contains("protocol v4"),
        "{described}"
    );
    eprintln!("FIGURE describe pod on a v4 node:\n{described}");

    let dns = wait_for("uses-dns to wait for a newer agent", LONG, || {
        let p = lab.get_json(&["get", "pod", "uses-dns"])?;
        let ok = p["spec"]["nodeName"] == node.as_str()
            && p["status"]["reason"] == "CreateContainerConfigError";
        Ok(ok.then_some(p))
    })?;
    let message = dns["status"]["message"].as_str().unwrap_or_default();
    ensure!(
        message
            == format!(
                "node {node} runs an agent of protocol v4, which cannot set a pod's dnsPolicy, \
                 dnsConfig or hostAliases; upgrade its agent to protocol v5"
            ),
        "{message}"
    );

    // The node goes on running what it can: the plain pod runs there.
    wait_for("plain to run on the 0.1.0 node", LONG, || {
        let p = lab.get_json(&["get", "pod", "plain"])?;
        Ok(running(&p).then_some(()))
    })?;

    // A new version of the ConfigMap is sent to nobody; the pod still waits, the node is
    // still Ready a few heartbeats later.
    lab.apply(&CONFIG.replace("fast", "slow"))?;
    std::thread::sleep(Duration::from_secs(3));
    let p = lab.get_json(&["get", "pod", "uses-config"])?;
    ensure!(
        !running(&p) && p["status"].to_string().contains("protocol v4"),
        "{}",
        p["status"]
    );
    let nodes = lab.get_json(&["get", "node", &node])?;
    ensure!(nodes["status"]["ready"] == true, "{nodes}");

    // Nothing crashed, refused or dropped on either side.
    let agent_alive = lab.agents[0]
        .proc
        .as_mut()
        .context("the agent's process")?
        .is_running();
    ensure!(agent_alive, "the 0.1.0 agent exited:\n{}", lab.agent_log(0));
    let coordinator_alive = lab
        .coordinator
        .as_mut()
        .context("the coordinator's process")?
        .is_running();
    ensure!(coordinator_alive, "the coordinator exited");
    let coordinator = lab
        .coordinator
        .as_ref()
        .map(|p| p.log())
        .unwrap_or_default();
    let bad: Vec<&str> = coordinator
        .lines()
        .filter(|l| {
            l.contains("panicked")
                || l.contains("rejected an inbound message")
                || l.contains("cannot encode an outbound message")
                || l.contains("configmap cannot be sent")
        })
        .collect();
    ensure!(bad.is_empty(), "the coordinator: {bad:#?}");
    let agent = lab.agent_log(0);
    let bad: Vec<&str> = agent
        .lines()
        .filter(|l| l.contains("panicked") || l.contains("rejected message"))
        .collect();
    ensure!(bad.is_empty(), "the 0.1.0 agent: {bad:#?}");
    Ok(())
}
