//! Nodes' pod ranges in the core: who holds which (the pure `decide::pod_cidr`), kept on
//! each node (`pod_cidr_held`, `pod_cidr_refused`, stored), an event when a node is refused
//! or later granted its range, and the check of each pod IP a node reports against the
//! range it holds. The Service table routes only held ranges, and endpoints take only pods
//! inside their node's held range (`services.rs`), so one node cannot claim another's
//! range or pose as its pods.

use std::net::Ipv4Addr;

use crate::decide::pod_cidr::{self, Claim, Ipv4Range, Verdict};

use super::{Core, Tab};

impl Core {
    /// Decides every node's range again if a node changed since the last decision (or
    /// none was made since the state was loaded), and records what changed.
    pub(super) fn check_pod_cidrs(&mut self) {
        let node_changed = self
            .dirty
            .range((Tab::Node, String::new())..)
            .next()
            .is_some_and(|(t, _)| *t == Tab::Node);
        if self.pod_cidrs_decided && !node_changed {
            return;
        }
        self.pod_cidrs_decided = true;
        let verdicts = {
            let claims: Vec<Claim<'_>> = self
                .nodes
                .values()
                .map(|n| Claim {
                    node: &n.metadata.name,
                    cidr: &n.status.pod_cidr,
                    address: n.status.address.as_deref().and_then(|a| a.parse().ok()),
                    held: n.status.pod_cidr_held,
                    registered: &n.metadata.creation_timestamp,
                })
                .collect();
            pod_cidr::decide(&claims, self.service_cidr.range())
        };
        for (name, verdict) in verdicts {
            let Some(n) = self.nodes.get_mut(&name) else {
                continue;
            };
            let (held, refused) = match &verdict {
                Verdict::NoRange => (false, None),
                Verdict::Holds(_) => (true, None),
                Verdict::Refused(r) => (false, Some(r.to_string())),
            };
            if n.status.pod_cidr_held == held && n.status.pod_cidr_refused == refused {
                continue;
            }
            let was_refused = n.status.pod_cidr_refused.is_some();
            n.status.pod_cidr_held = held;
            n.status.pod_cidr_refused = refused.clone();
            self.touch(Tab::Node, &name);
            match (refused, verdict) {
                (Some(why), _) => {
                    tracing::warn!(node = %name, reason = %why, "pod CIDR refused");
                    self.record(
                        format!("node/{name}"),
                        "PodCIDRRefused",
                        format!(
                            "{why}: no route to this node's pods, and they are not Service \
                             endpoints"
                        ),
                    );
                }
                (None, Verdict::Holds(cidr)) if was_refused => self.record(
                    format!("node/{name}"),
                    "PodCIDRGranted",
                    format!("pod CIDR {cidr} is routed to this node now"),
                ),
                _ => {}
            }
        }
    }

    /// The pod range `node` holds, if any.
    pub(super) fn held_range(&self, node: &str) -> Option<Ipv4Range> {
        self.nodes
            .get(node)
            .filter(|n| n.status.pod_cidr_held)
            .and_then(|n| n.status.pod_cidr.parse().ok())
    }

    /// Said once per address a pod reports (the pod's status is stored, and only a change
    /// of it is looked at): `pod` on `node` reported `ip` outside the range the node holds,
    /// so it is not an endpoint. Nothing is said for a node refused its range: its own
    /// event covers all its pods.
    pub(super) fn check_pod_ip(
        &mut self,
        node: &str,
        pod: &str,
        old_ip: Option<&str>,
        new_ip: Option<&str>,
    ) {
        let Some(ip) = new_ip.filter(|ip| Some(*ip) != old_ip && !ip.is_empty()) else {
            return;
        };
        let Some(range) = self.held_range(node) else {
            return;
        };
        if ip.parse::<Ipv4Addr>().is_ok_and(|a| range.contains(a)) {
            return;
        }
        tracing::warn!(%node, %pod, %ip, %range, "pod IP outside its node's pod CIDR");
        self.record(
            format!("pod/{pod}"),
            "PodIPOutsideNodeCIDR",
            format!(
                "pod IP {ip} is outside node {node}'s pod CIDR {range}: not a Service endpoint"
            ),
        );
    }
}
