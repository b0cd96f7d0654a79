//! Nodes, as their agents announce and report them.

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub status: NodeStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub ready: bool,
    pub arch: String,
    #[serde(default)]
    pub arch_variant: String,
    pub os: String,
    pub agent_version: String,
    pub allocatable: NodeCapacity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default)]
    pub pod_cidr: String,
    #[serde(default)]
    pub last_heartbeat: String,
    /// The generation the agent last reported as applied.
    #[serde(default)]
    pub applied_generation: u64,
    /// The generation of the desired state the coordinator last published to it.
    #[serde(default)]
    pub desired_generation: u64,
    /// Why the agent's attempts to reach the broker failed before it last got through,
    /// as it reported in its Hello; kept until it reports another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_connect_error: Option<ConnectError>,
}

/// An agent's report of its failed connection attempts (see [`NodeStatus`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectError {
    pub message: String,
    /// When the coordinator received the report (RFC 3339).
    pub reported_at: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCapacity {
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub pods: u16,
}
