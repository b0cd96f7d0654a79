//! The bodies the API answers with. The server's handlers serialize these and the CLI
//! deserializes the same types, so a field renamed on one side is renamed on both.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::payload::{json_bodies, JsonBody};
use super::resource::{Applied, ResourceKind};
use crate::model::api;

pub use crate::decide::rollout::RolloutProgress;

/// One object as `get` and `describe` show it.
///
/// Untagged: each variant serializes as the object itself, so the JSON is what kubectl
/// users expect. Reading one back goes by its `kind` field rather than by trying each
/// variant in turn, which could take a Pod for a Node whose fields all defaulted.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)]
pub enum ApiObject {
    Node(api::Node),
    Deployment(api::Deployment),
    DaemonSet(api::DaemonSet),
    Job(api::Job),
    CronJob(api::CronJob),
    Pod(api::Pod),
    Secret(SecretView),
    AgentUpdate(api::AgentUpdate),
    ConfigMap(api::ConfigMap),
    Service(api::Service),
    Endpoints(api::Endpoints),
    Namespace(api::Namespace),
}

impl ApiObject {
    /// The object's `metadata.name`.
    pub fn name(&self) -> &str {
        match self {
            ApiObject::Node(o) => &o.metadata.name,
            ApiObject::Deployment(o) => &o.metadata.name,
            ApiObject::DaemonSet(o) => &o.metadata.name,
            ApiObject::Pod(o) => &o.metadata.name,
            ApiObject::Secret(o) => &o.metadata.name,
            ApiObject::AgentUpdate(o) => &o.metadata.name,
            ApiObject::Job(o) => &o.metadata.name,
            ApiObject::CronJob(o) => &o.metadata.name,
            ApiObject::ConfigMap(o) => &o.metadata.name,
            ApiObject::Service(o) => &o.metadata.name,
            ApiObject::Endpoints(o) => &o.metadata.name,
            ApiObject::Namespace(o) => &o.metadata.name,
        }
    }

    /// The object's `metadata.namespace` (`None` for cluster-scoped objects).
    pub fn namespace(&self) -> Option<&str> {
        let meta = match self {
            ApiObject::Node(_) | ApiObject::AgentUpdate(_) | ApiObject::Namespace(_) => {
                return None
            }
            ApiObject::Deployment(o) => &o.metadata,
            ApiObject::DaemonSet(o) => &o.metadata,
            ApiObject::Pod(o) => &o.metadata,
            ApiObject::Secret(o) => &o.metadata,
            ApiObject::Job(o) => &o.metadata,
            ApiObject::CronJob(o) => &o.metadata,
            ApiObject::ConfigMap(o) => &o.metadata,
            ApiObject::Service(o) => &o.metadata,
            ApiObject::Endpoints(o) => &o.metadata,
        };
        Some(meta.namespace.as_deref().unwrap_or(api::DEFAULT_NAMESPACE))
    }
}

impl<'de> Deserialize<'de> for ApiObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        let kind = v.get("kind").and_then(serde_json::Value::as_str);
        let object = match kind.and_then(ResourceKind::parse) {
            Some(ResourceKind::Node) => serde_json::from_value(v).map(ApiObject::Node),
            Some(ResourceKind::Deployment) => serde_json::from_value(v).map(ApiObject::Deployment),
            Some(ResourceKind::DaemonSet) => serde_json::from_value(v).map(ApiObject::DaemonSet),
            Some(ResourceKind::Job) => serde_json::from_value(v).map(ApiObject::Job),
            Some(ResourceKind::CronJob) => serde_json::from_value(v).map(ApiObject::CronJob),
            Some(ResourceKind::Pod) => serde_json::from_value(v).map(ApiObject::Pod),
            Some(ResourceKind::Secret) => serde_json::from_value(v).map(ApiObject::Secret),
            Some(ResourceKind::ConfigMap) => serde_json::from_value(v).map(ApiObject::ConfigMap),
            Some(ResourceKind::Service) => serde_json::from_value(v).map(ApiObject::Service),
            Some(ResourceKind::Endpoints) => serde_json::from_value(v).map(ApiObject::Endpoints),
            Some(ResourceKind::Namespace) => serde_json::from_value(v).map(ApiObject::Namespace),
            Some(ResourceKind::AgentUpdate) => {
                serde_json::from_value(v).map(ApiObject::AgentUpdate)
            }
            None => return Err(D::Error::custom(format!("unknown object kind {kind:?}"))),
        };
        object.map_err(D::Error::custom)
    }
}

/// A Secret as the API shows it: metadata, type and each key's size in bytes
/// (`dataSizes`), never a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretView {
    pub api_version: String,
    pub kind: String,
    pub metadata: api::ObjectMeta,
    #[serde(rename = "type")]
    pub type_: String,
    pub data_sizes: BTreeMap<String, usize>,
}

/// `{"items": [...]}`: every list the API returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct List<T> {
    pub items: Vec<T>,
}

/// What `apply` did, one entry per object in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyResults {
    pub results: Vec<Applied>,
}

/// `{"deleted": {"kind": K, "name": N}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deleted {
    pub deleted: DeletedRef,
}

/// What was deleted. `kind` is a string because tokens and images are deleted too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeletedRef {
    pub kind: String,
    pub name: String,
}

impl Deleted {
    pub fn resource(kind: ResourceKind, name: String) -> Self {
        Self::other(kind.as_str(), name)
    }
    pub fn other(kind: &str, name: String) -> Self {
        Self {
            deleted: DeletedRef {
                kind: kind.to_owned(),
                name,
            },
        }
    }
}

/// `describe`: the object and the events about it, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Described {
    pub object: ApiObject,
    pub events: Vec<api::Event>,
}

/// The answer to `rollout undo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UndoResult {
    /// False when the target revision is the current template already.
    pub rolled_back: bool,
    pub revision: u64,
}

/// The answer to revoking a node or taking it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub node: String,
    pub revoked: bool,
}

/// Every error answer of the API: `{"error": "..."}`, with a 4xx or 5xx status. Defined
/// with the device's bodies, which read it too.
pub use baton_proto::enroll::ErrorBody;

/// `scale`'s request: the Deployment's new replica count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub replicas: u32,
}

/// `rollout undo`'s request: the revision to go back to, or (none, or an empty body)
/// the one before the current.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UndoRequest {
    #[serde(default)]
    pub to_revision: Option<u64>,
}

impl<T: Serialize + serde::de::DeserializeOwned> JsonBody for List<T> {}

json_bodies!(
    ApiObject,
    ApplyResults,
    Deleted,
    Described,
    UndoResult,
    Revocation,
    RolloutProgress,
    ErrorBody,
    ScaleRequest,
    UndoRequest,
);
