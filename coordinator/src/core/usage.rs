//! `baton top` and the usage gauges of `/metrics`: the nodes' last usage reports (kept in
//! memory by `nodes.rs`), joined with the nodes' allocatable and the pods' names.

use std::time::SystemTime;

use crate::contract::usage::{NodeUsageView, PodUsageView};
use crate::model::api;

use super::Core;

impl Core {
    /// Every node that reported usage, by name.
    pub(super) fn node_usage(&self) -> Vec<NodeUsageView> {
        let now = SystemTime::now();
        self.nodes
            .iter()
            .filter_map(|(name, node)| {
                let (u, at) = self.usage.get(name)?;
                let alloc = &node.status.allocatable;
                Some(NodeUsageView {
                    name: name.clone(),
                    cpu_millis: u.cpu_millis,
                    allocatable_cpu_millis: alloc.cpu_millis,
                    memory_bytes: u.memory_bytes,
                    allocatable_memory_bytes: alloc.memory_bytes,
                    disk_used_bytes: u.disk_used_bytes,
                    disk_total_bytes: u.disk_total_bytes,
                    temperature_millicelsius: u.temperature_millicelsius,
                    reported_seconds_ago: now.duration_since(*at).map_or(0, |d| d.as_secs()),
                })
            })
            .collect()
    }

    /// Every pod its node reported usage for, by name.
    pub(super) fn pod_usage(&self) -> Vec<PodUsageView> {
        let mut v: Vec<PodUsageView> = self
            .pods
            .values()
            .filter_map(|p| {
                let node = p.spec.node_name.as_deref()?;
                let (u, _) = self.usage.get(node)?;
                let pu = u.pods.iter().find(|x| x.uid.as_str() == p.metadata.uid)?;
                let (namespace, name) = api::split_qualified(&p.metadata.name);
                Some(PodUsageView {
                    name: name.to_owned(),
                    node: node.to_owned(),
                    cpu_millis: pu.cpu_millis,
                    memory_bytes: pu.memory_bytes,
                    namespace: Some(namespace.to_owned()),
                })
            })
            .collect();
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        v
    }
}
