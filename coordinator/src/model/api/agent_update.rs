//! `AgentUpdate` (`baton.io/v1alpha1`): a rollout of one agent version over a set of
//! nodes, in a canary and then waves (`crate::decide::agent_update` drives it).

use serde::{Deserialize, Serialize};

use super::*;

pub const AGENT_UPDATE_API_VERSION: &str = "baton.io/v1alpha1";
pub const DEFAULT_HEALTH_WINDOW_SECONDS: u32 = 60;
/// Long enough for a slow download plus a health window; a node offline (or silent after
/// its order) this long is `unreachable` and the rollout goes on without it.
pub const DEFAULT_DEADLINE_SECONDS: u64 = 600;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentUpdate {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: AgentUpdateSpec,
    #[serde(default)]
    pub status: AgentUpdateStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentUpdateSpec {
    /// The version every selected node should run, e.g. `0.2.1`.
    pub version: String,
    #[serde(default)]
    pub selector: NodeSelector,
    #[serde(default)]
    pub canary: Canary,
    /// How many nodes update at once after the canary: a number or a share of the
    /// nodes that take the update (rounded down, at least 1).
    pub max_unavailable: IntOrPercent,
    /// Halt the whole rollout when more than this share (percent) of a wave fails;
    /// spelled `failureBudget: 20%` as in the manifest.
    #[serde(default, rename = "failureBudget", with = "percent")]
    pub failure_budget_percent: u32,
    pub health_window_seconds: u32,
    pub deadline_seconds: u64,
    #[serde(default)]
    pub allow_downgrade: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// `arm64`, `amd64`, ... as the node reports it; `None` is any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Canary {
    /// The first this many nodes (by name) update alone; 0 is no canary.
    pub nodes: u32,
    /// After a successful canary, wait for `baton agent rollout resume`.
    #[serde(default)]
    pub pause: bool,
    /// After a successful canary, wait this long before the first wave.
    #[serde(default)]
    pub soak_seconds: u64,
}

impl Default for Canary {
    fn default() -> Self {
        Self {
            nodes: 1,
            pause: false,
            soak_seconds: 0,
        }
    }
}

/// A wave's size out of `total` nodes: `maxUnavailable` rounded down, at least 1.
pub fn wave_size(max_unavailable: IntOrPercent, total: usize) -> usize {
    let total = u32::try_from(total).unwrap_or(u32::MAX);
    max_unavailable.resolve(total, false).max(1) as usize
}

/// `2` or `25%` (at most 100%), as the CLI and manifests spell a count of nodes.
pub fn parse_int_or_percent(s: &str) -> Option<IntOrPercent> {
    let s = s.trim();
    if s.ends_with('%') {
        IntOrPercent::parse_percent(s)
            .filter(|p| !matches!(p, IntOrPercent::Percent(n) if *n > 100))
    } else {
        s.parse().ok().map(IntOrPercent::Int)
    }
}

/// Where the rollout as a whole stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutPhase {
    #[default]
    Progressing,
    /// By `pause`, or after the canary until `resume`; orders in flight go on.
    Paused,
    /// Too many nodes failed; nothing more is ordered.
    Halted,
    Aborted,
    Complete,
}

impl RolloutPhase {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Halted | Self::Aborted | Self::Complete)
    }
}

/// Where one node's update stands; the middle five come from the node's reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeUpdatePhase {
    /// Waiting for its wave, or ordered and not heard from yet (`orderedAt`).
    #[default]
    Pending,
    Downloading,
    Staged,
    Switching,
    Probation,
    Committed,
    RolledBack,
    Refused,
    /// Offline or silent for `deadlineSeconds`; the rollout went on without it.
    Unreachable,
    /// Not updated, for the reason given (protocol v4, no release, already there, ...).
    Skipped,
}

impl NodeUpdatePhase {
    /// Nothing more will happen to the node in this rollout (a report may still come).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Committed | Self::RolledBack | Self::Refused | Self::Unreachable | Self::Skipped
        )
    }

    pub fn is_failure(self) -> bool {
        matches!(self, Self::RolledBack | Self::Refused)
    }

    /// The node has acted on its order (downloading or later).
    pub fn started(self) -> bool {
        !matches!(self, Self::Pending | Self::Unreachable | Self::Skipped)
    }

    /// The kebab-case word `rollout status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Downloading => "downloading",
            Self::Staged => "staged",
            Self::Switching => "switching",
            Self::Probation => "probation",
            Self::Committed => "committed",
            Self::RolledBack => "rolled-back",
            Self::Refused => "refused",
            Self::Unreachable => "unreachable",
            Self::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentUpdateStatus {
    pub phase: RolloutPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the nodes in scope were chosen (once, at the first step).
    #[serde(default)]
    pub scoped: bool,
    /// `resume` after a canary pause.
    #[serde(default)]
    pub canary_approved: bool,
    /// When the canary wave finished (RFC 3339), for `soakSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_finished_at: Option<String>,
    /// The nodes in scope, by name order.
    #[serde(default)]
    pub nodes: Vec<NodeUpdate>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeUpdate {
    pub node: String,
    pub phase: NodeUpdatePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The agent version when the rollout chose it.
    pub from: String,
    pub to: String,
    /// 0 is the canary; skipped nodes have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,
    /// `sha256:<hex>` of the release ordered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered_at: Option<String>,
    /// When the phase last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// Since when the node has been seen offline while its update is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_since: Option<String>,
    #[serde(default)]
    pub downloaded: u64,
}

/// The last update result a node reported, for `describe node`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastUpdate {
    pub rollout: String,
    pub version: String,
    pub phase: NodeUpdatePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: String,
}

/// A node's report on its update, as the core takes it (`crate::model::wire` converts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateReport {
    pub rollout: String,
    pub version: String,
    pub phase: NodeUpdatePhase,
    pub reason: Option<String>,
    /// Bytes of the binary on the device so far.
    pub downloaded: u64,
}

/// A share as the manifest spells it: `20%`.
mod percent {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{p}%"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let s = String::deserialize(d)?;
        s.strip_suffix('%')
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a percentage")))
    }
}
