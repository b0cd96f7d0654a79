//! Device identity: enrollment, certificate rotation, revocation, and the refused MQTT
//! messages (`baton node ...`, `baton security ...`, and the agent's enrollment).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::payload::json_bodies;
// The device's bodies are the device's contract, which the agent shares.
pub use baton_proto::enroll::{EnrollRequest, EnrollResponse, RotateRequest};

/// What `baton node identity` shows of an enrolled node: its keys and their validity,
/// never the certificate or anything secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySummary {
    pub node: String,
    /// Base64 of the node's current Ed25519 public key.
    pub public_key: String,
    /// The key it had before its last rotation, accepted until `previousValidUntilMs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key: Option<String>,
    pub previous_valid_until_ms: u64,
    /// The certificate's notAfter, Unix seconds.
    pub not_after: u64,
    pub enrolled_at: String,
    pub revoked: bool,
    /// `SHA256:<hex>` of the node certificate's DER, to compare with the device's copy
    /// (`openssl x509 -noout -fingerprint -sha256`); empty if it cannot be read.
    pub fingerprint: String,
    /// The node certificate's serial number, colon-separated hex.
    pub serial: String,
}

/// `GET /api/v1/security/rejections`: MQTT messages refused since the coordinator
/// started. Reasons are the gate's (`malformed`, `bad-signature`, `replay`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectionReport {
    pub require_signatures: bool,
    pub window_seconds: u64,
    /// Rejections per reason.
    pub total: BTreeMap<String, u64>,
    /// Rejections per node (as named by the topic) and reason.
    pub nodes: BTreeMap<String, BTreeMap<String, u64>>,
    /// Exact duplicates (QoS 1 redelivery) dropped quietly; not rejections.
    pub duplicates: u64,
    /// Enrolled nodes and whether they are revoked.
    pub enrolled: BTreeMap<String, bool>,
}

/// `baton cordon|uncordon|taint|label node`: what changes in a node's spec (`api::NodeSpec`)
/// and labels.
/// Taints are added (or replaced, by key and effect) and removed by key, with an effect or
/// every effect; the pressure taints follow the node's conditions and cannot be set here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpecChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unschedulable: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_taints: Vec<crate::model::api::Taint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_taints: Vec<TaintRemoval>,
    /// `baton label node`: a label to set (a value) or remove (`null`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, Option<String>>,
    /// kubectl's `--overwrite`: without it, a label that has another value is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overwrite: bool,
}

/// A taint to remove: `key` with `effect`, or with every effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaintRemoval {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<crate::model::api::TaintEffect>,
}

json_bodies!(
    NodeSpecChange,
    EnrollRequest,
    EnrollResponse,
    RotateRequest,
    IdentitySummary,
    RejectionReport,
);
