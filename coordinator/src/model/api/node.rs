//! Nodes, as their agents announce and report them.

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NodeSpec,
    pub status: NodeStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// Kubernetes' node taints. The pressure ones (`node.kubernetes.io/disk-pressure`, ...)
    /// follow the node's conditions (`crate::decide::taints`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// Cordoned (`baton cordon`): no new pod is scheduled here; the pods on it stay.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unschedulable: bool,
    /// Labels set (a value) or removed (`null`) by `baton label node`. They win over the
    /// agent's own `--labels` at every Hello, as kubectl's labels outlive a kubelet restart.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label_overrides: BTreeMap<String, Option<String>>,
}

impl NodeSpec {
    /// `labels` (what the agent registered) with the operator's overrides applied.
    pub fn apply_label_overrides(&self, labels: &mut BTreeMap<String, String>) {
        for (k, v) in &self.label_overrides {
            match v {
                Some(v) => labels.insert(k.clone(), v.clone()),
                None => labels.remove(k),
            };
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    pub effect: TaintEffect,
    /// When a `NoExecute` taint was added: a toleration's `tolerationSeconds` count from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_added: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl std::fmt::Display for Taint {
    /// kubectl's spelling: `key=value:Effect`, or `key:Effect`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{:?}", self.key, self.effect)
        } else {
            write!(f, "{}={}:{:?}", self.key, self.value, self.effect)
        }
    }
}

/// A node condition other than Ready (which is `NodeStatus::ready`): kubelet's
/// `DiskPressure`, `MemoryPressure`, `PIDPressure`, present only while true.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCondition {
    /// `DiskPressure`, `ImageDiskPressure`, `MemoryPressure` or `PIDPressure`.
    #[serde(rename = "type")]
    pub type_: String,
    /// kubelet's reason word, e.g. `KubeletHasDiskPressure`.
    pub reason: String,
    /// What the agent measured against which threshold.
    pub message: String,
    /// When it became true (RFC 3339).
    pub last_transition_time: String,
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
    /// The protocol version of the agent's messages (what it can read); 0 if unknown.
    #[serde(default)]
    pub protocol_version: u16,
    pub allocatable: NodeCapacity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default)]
    pub pod_cidr: String,
    /// The coordinator granted the node its `pod_cidr` at the last decision
    /// (`decide::pod_cidr`): it is routed and its pods may be endpoints. Stored, so the
    /// first holder stays first across restarts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pod_cidr_held: bool,
    /// Why the coordinator refused the node's `pod_cidr` (e.g. which node holds the range):
    /// no route to it, and its pods are not endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_refused: Option<String>,
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
    /// The node's conditions under pressure; empty when there is none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<NodeCondition>,
    /// Why the agent could not apply its last desired state whole (with the cause), as it
    /// reported in its last heartbeat; `None` once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_error: Option<String>,
    /// The last agent update result the node reported (committed, rolled back or
    /// refused, with its reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<LastUpdate>,
    /// The leader's term the node's desired states carry: the serving coordinator's, as
    /// agents do not report the term they last accepted (docs/protocol.md, "The leader's
    /// term"). Filled in for the API (`get`, `describe`), never stored; 0: unknown.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub leader_term: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
