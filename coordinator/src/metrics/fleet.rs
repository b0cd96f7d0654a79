//! What the state says, as numbers for `/metrics`: a pure snapshot of the core's objects.

use std::collections::BTreeMap;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::AtomicU64;

use prometheus_client::registry::{Registry, Unit};

use crate::model::api;

/// Counts taken from the core's state at one scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fleet {
    /// Nodes by `Ready` / `NotReady`; both present, maybe 0.
    pub nodes: BTreeMap<String, u64>,
    /// Cordoned nodes (unschedulable), whatever their readiness.
    pub cordoned: u64,
    /// Pods by phase; every phase present, maybe 0.
    pub pods: BTreeMap<String, u64>,
    /// Container restarts as the agents report them: `(pod, container, node)` -> count.
    pub restarts: BTreeMap<(String, String, String), u64>,
    /// Rollout progress: `(kind, name, state)` -> replicas, where state is `desired`,
    /// `updated`, `ready` or `available`.
    pub rollouts: BTreeMap<(String, String, String), u64>,
    /// The nodes' last usage reports (filled by the core, not by [`snapshot`]).
    pub usage: Vec<crate::contract::usage::NodeUsageView>,
}

/// The snapshot of the given objects.
pub fn snapshot<'a>(
    nodes: impl IntoIterator<Item = &'a api::Node>,
    pods: impl IntoIterator<Item = &'a api::Pod>,
    deployments: impl IntoIterator<Item = &'a api::Deployment>,
    daemon_sets: impl IntoIterator<Item = &'a api::DaemonSet>,
) -> Fleet {
    let mut f = Fleet::default();
    for state in ["Ready", "NotReady"] {
        f.nodes.insert(state.into(), 0);
    }
    for n in nodes {
        let state = if n.status.ready { "Ready" } else { "NotReady" };
        *f.nodes.entry(state.into()).or_default() += 1;
        f.cordoned += u64::from(n.spec.unschedulable);
    }
    for phase in [
        api::PodPhase::Pending,
        api::PodPhase::Running,
        api::PodPhase::Succeeded,
        api::PodPhase::Failed,
        api::PodPhase::Unknown,
    ] {
        f.pods.insert(format!("{phase:?}"), 0);
    }
    for p in pods {
        *f.pods.entry(format!("{:?}", p.status.phase)).or_default() += 1;
        let node = p.spec.node_name.clone().unwrap_or_default();
        for c in p
            .status
            .init_container_statuses
            .iter()
            .chain(&p.status.container_statuses)
        {
            f.restarts.insert(
                (p.metadata.name.clone(), c.name.clone(), node.clone()),
                u64::from(c.restart_count),
            );
        }
    }
    let mut rollout = |kind: &str, name: &str, counts: [u32; 4]| {
        for (state, n) in ["desired", "updated", "ready", "available"]
            .into_iter()
            .zip(counts)
        {
            f.rollouts
                .insert((kind.into(), name.into(), state.into()), u64::from(n));
        }
    };
    for d in deployments {
        let s = &d.status;
        rollout(
            "Deployment",
            &d.metadata.name,
            [
                d.spec.replicas,
                s.updated_replicas,
                s.ready_replicas,
                s.available_replicas,
            ],
        );
    }
    for ds in daemon_sets {
        let s = &ds.status;
        rollout(
            "DaemonSet",
            &ds.metadata.name,
            [
                s.desired_number_scheduled,
                s.updated_number_scheduled,
                s.number_ready,
                s.number_available,
            ],
        );
    }
    f
}

type Labels3 = [(&'static str, String); 3];

impl Fleet {
    /// Registers the snapshot's families in `reg` (one scrape's registry).
    pub(super) fn register(&self, reg: &mut Registry) {
        reg.register(
            "nodes",
            "Nodes by readiness",
            super::gauges("state", &self.nodes),
        );
        let cordoned = Gauge::<i64>::default();
        cordoned.set(i64::try_from(self.cordoned).unwrap_or(i64::MAX));
        reg.register("nodes_cordoned", "Nodes cordoned (unschedulable)", cordoned);
        reg.register("pods", "Pods by phase", super::gauges("phase", &self.pods));

        let restarts = Family::<Labels3, Counter>::default();
        for ((pod, container, node), n) in &self.restarts {
            restarts
                .get_or_create(&[
                    ("pod", pod.clone()),
                    ("container", container.clone()),
                    ("node", node.clone()),
                ])
                .inc_by(*n);
        }
        reg.register(
            "container_restarts",
            "Container restarts as the nodes report them",
            restarts,
        );

        let rollouts = Family::<Labels3, Gauge>::default();
        for ((kind, name, state), n) in &self.rollouts {
            rollouts
                .get_or_create(&[
                    ("kind", kind.clone()),
                    ("name", name.clone()),
                    ("state", state.clone()),
                ])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        let gauge = |f: fn(&crate::contract::usage::NodeUsageView) -> Option<f64>| {
            let family = Family::<[(&'static str, String); 1], Gauge<f64, AtomicU64>>::default();
            for u in &self.usage {
                if let Some(v) = f(u) {
                    family.get_or_create(&[("node", u.name.clone())]).set(v);
                }
            }
            family
        };
        reg.register_with_unit(
            "node_cpu_usage",
            "CPU the node uses, as its agent last reported it",
            Unit::Other("cores".into()),
            gauge(|u| Some(f64::from(u.cpu_millis) / 1000.0)),
        );
        reg.register_with_unit(
            "node_memory_usage",
            "Memory in use on the node (MemTotal - MemAvailable), as last reported",
            Unit::Bytes,
            gauge(|u| Some(u.memory_bytes as f64)),
        );
        reg.register_with_unit(
            "node_disk_usage",
            "Bytes in use on the node's data disk, as last reported",
            Unit::Bytes,
            gauge(|u| Some(u.disk_used_bytes as f64)),
        );
        reg.register_with_unit(
            "node_temperature",
            "The node's hottest thermal zone, as last reported",
            Unit::Celsius,
            gauge(|u| u.temperature_millicelsius.map(|t| f64::from(t) / 1000.0)),
        );
        reg.register(
            "rollout_replicas",
            "Replicas of each Deployment and DaemonSet: desired, updated, ready, available",
            rollouts,
        );
    }
}
