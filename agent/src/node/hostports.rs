//! The node's hostPort DNAT rules follow the pods the loop holds.
//!
//! After every turn the loop computes the rules of its pods (running or starting, with an
//! address; a stopping pod's go at once) and hands them to one task that writes them with
//! [`crate::network::Network::sync_host_ports`], a whole-chain rewrite in one transaction. A
//! watch channel keeps only the newest set, so writes never run out of order and a burst of
//! changes costs one write. The first write is made by [`first_sync`] after adoption, before
//! the loop runs: the previous agent's rules answer until then, and then the same rules do.
//! Nothing removes the rules when the agent exits: the pods keep running.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info};

use super::pods::Pod;
use crate::network::HostPortRule;
use crate::pod::{self, Deps};
use crate::reconcile::Lifecycle;

/// How long a failed write waits before it is tried again (with the newest rules).
const RETRY: Duration = Duration::from_secs(2);

/// The rules of every pod that is not stopping.
pub(super) fn rules(pods: &BTreeMap<String, Pod>) -> Vec<HostPortRule> {
    let mut rules: Vec<HostPortRule> = pods
        .values()
        .filter(|p| p.lifecycle != Lifecycle::Stopping)
        .flat_map(|p| pod::host_port_rules(&p.spec, p.pod_ip))
        .collect();
    rules.sort();
    rules
}

/// Writes `rules` now, blocking: at start, right after adoption.
pub(super) fn first_sync(
    deps: &Deps,
    rules: &[HostPortRule],
) -> Result<(), crate::network::NetError> {
    deps.network.sync_host_ports(rules)?;
    info!(rules = rules.len(), "hostPort rules written");
    Ok(())
}

/// Starts the writer; the loop sends each new set of rules into the returned sender.
pub(super) fn spawn_writer(
    deps: Arc<Deps>,
    initial: Vec<HostPortRule>,
) -> watch::Sender<Vec<HostPortRule>> {
    let (tx, mut rx) = watch::channel(initial);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            loop {
                let rules = rx.borrow_and_update().clone();
                let d = deps.clone();
                let n = rules.len();
                match tokio::task::spawn_blocking(move || d.network.sync_host_ports(&rules)).await {
                    Ok(Ok(())) => {
                        info!(rules = n, "hostPort rules written");
                        break;
                    }
                    Ok(Err(e)) => error!(error = %e, "cannot write hostPort rules; retrying"),
                    Err(e) => error!(error = %e, "hostPort writer failed; retrying"),
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use baton_proto::{BString, BVec, ContainerSpec, PodSpec, Port, Protocol, PullPolicy};

    use crate::network::{HostPortRule, L4};
    use crate::pod::host_port_rules;

    fn spec(host_network: bool, ports: Vec<Port>) -> PodSpec {
        let c = ContainerSpec {
            name: BString::new("web").unwrap(),
            image: BString::new("busybox").unwrap(),
            image_pull_policy: PullPolicy::IfNotPresent,
            command: BVec::new(),
            args: BVec::new(),
            env: BVec::new(),
            working_dir: None,
            ports: BVec::from_vec(ports).unwrap(),
            resources: Default::default(),
            volume_mounts: BVec::new(),
            liveness_probe: None,
            readiness_probe: None,
            startup_probe: None,
            security: Default::default(),
        };
        PodSpec {
            name: BString::new("p").unwrap(),
            uid: BString::new("u").unwrap(),
            host_network,
            restart_policy: baton_proto::RestartPolicy::Always,
            termination_grace_secs: 0,
            containers: BVec::from_vec(vec![c]).unwrap(),
            init_containers: BVec::new(),
            volumes: BVec::new(),
            image_pull_secrets: BVec::new(),
            priority: 0,
            dns: None,
        }
    }

    #[test]
    fn a_pod_has_a_rule_per_host_port_with_its_transport() {
        let ports = vec![
            Port {
                container_port: 80,
                host_port: Some(8080),
                protocol: Protocol::Tcp,
            },
            Port {
                container_port: 53,
                host_port: Some(5353),
                protocol: Protocol::Udp,
            },
            // No hostPort: reached on the pod's address only.
            Port {
                container_port: 9000,
                host_port: None,
                protocol: Protocol::Tcp,
            },
        ];
        let ip = Ipv4Addr::new(10, 42, 1, 7);
        let rule = |host_port, proto, container_port| HostPortRule {
            host_port,
            proto,
            pod_ip: ip,
            container_port,
        };
        assert_eq!(
            host_port_rules(&spec(false, ports.clone()), Some(IpAddr::V4(ip))),
            vec![rule(8080, L4::Tcp, 80), rule(5353, L4::Udp, 53)]
        );
        // Not prepared yet (no address), or on the node's network: nothing to DNAT.
        assert!(host_port_rules(&spec(false, ports.clone()), None).is_empty());
        assert!(host_port_rules(&spec(true, ports), Some(IpAddr::V4(ip))).is_empty());
    }
}
