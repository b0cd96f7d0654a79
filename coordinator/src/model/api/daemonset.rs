//! DaemonSets: one pod on every node that matches, its update strategy and status.

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSet {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: DaemonSetSpec,
    #[serde(default)]
    pub status: DaemonSetStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetSpec {
    pub selector: LabelSelector,
    pub template: PodTemplateSpec,
    #[serde(default)]
    pub update_strategy: DaemonSetUpdateStrategy,
    /// Old revisions kept for `rollout undo`, besides the current one.
    #[serde(default = "default_revision_history_limit")]
    pub revision_history_limit: u32,
}

fn default_revision_history_limit() -> u32 {
    DEFAULT_REVISION_HISTORY_LIMIT
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetUpdateStrategy {
    #[serde(rename = "type")]
    pub type_: DaemonSetStrategyType,
    /// Present (with defaults filled in) exactly when `type_` is `RollingUpdate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

impl Default for DaemonSetUpdateStrategy {
    /// Kubernetes' defaults for a DaemonSet: RollingUpdate, maxUnavailable 1, maxSurge 0.
    fn default() -> Self {
        Self {
            type_: DaemonSetStrategyType::RollingUpdate,
            rolling_update: Some(RollingUpdate {
                max_surge: IntOrPercent::Int(0),
                max_unavailable: IntOrPercent::Int(1),
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DaemonSetStrategyType {
    #[default]
    RollingUpdate,
    /// New pods only where the user deleted the old one (or where none runs).
    OnDelete,
}

/// What `kubectl get daemonsets` shows, counted in nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetStatus {
    /// Nodes that should run the pod (DESIRED).
    #[serde(default)]
    pub desired_number_scheduled: u32,
    /// Of those, nodes that run at least one of its pods (CURRENT).
    #[serde(default)]
    pub current_number_scheduled: u32,
    /// Nodes that run it but should not.
    #[serde(default)]
    pub number_misscheduled: u32,
    /// Nodes with a ready pod (READY).
    #[serde(default)]
    pub number_ready: u32,
    /// Nodes whose pod is of the current template (UP-TO-DATE).
    #[serde(default)]
    pub updated_number_scheduled: u32,
    /// Ready, and Baton has no `minReadySeconds` (AVAILABLE).
    #[serde(default)]
    pub number_available: u32,
    #[serde(default)]
    pub observed_generation: u64,
}

/// The revision owner of a DaemonSet in the shared revision table: Deployment names hold
/// no `/`, so the two kinds never share revisions.
pub fn daemon_set_revision_owner(name: &str) -> String {
    format!("daemonset/{name}")
}
