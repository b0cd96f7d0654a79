//! `baton top`: what nodes and pods use, from the agents' last usage reports
//! (`baton_proto::NodeUsage`), which the coordinator keeps in memory only.

use serde::{Deserialize, Serialize};

use super::payload::json_bodies;

/// One node's usage against its allocatable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeUsageView {
    pub name: String,
    pub cpu_millis: u32,
    pub allocatable_cpu_millis: u32,
    pub memory_bytes: u64,
    pub allocatable_memory_bytes: u64,
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_millicelsius: Option<i32>,
    /// Seconds since the report came: a node sends one only when its usage moved.
    pub reported_seconds_ago: u64,
}

/// One pod's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodUsageView {
    pub name: String,
    pub node: String,
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    /// The pod's namespace (absent from coordinators before namespaces: `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

json_bodies!(NodeUsageView, PodUsageView);
