//! The coordinator's domain objects: the Kubernetes-shaped resources users apply, read
//! and the store keeps. They serialize as Kubernetes JSON/YAML (camelCase) for the HTTP
//! API, `-o json|yaml` and the store. They are deliberately *not* wire types: the
//! conversion to `baton_proto` happens in one place, `crate::model::wire`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod agent_update;
mod config_map;
mod cronjob;
mod daemonset;
mod deployment;
mod job;
mod namespace;
mod node;
mod pod;
mod pod_dns;
mod secret;
mod service;

pub use agent_update::*;
pub use config_map::*;
pub use cronjob::*;
pub use daemonset::*;
pub use deployment::*;
pub use job::*;
pub use namespace::*;
pub use node::*;
pub use pod::*;
pub use pod_dns::*;
pub use secret::*;
pub use service::*;

/// Current time as RFC 3339 with second precision, the format Kubernetes prints.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Set by the coordinator; unique per object incarnation.
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub creation_timestamp: String,
    /// Grows when the spec changes (Deployments).
    #[serde(default)]
    pub generation: u64,
    /// The Deployment that owns a Pod, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The DaemonSet that owns a Pod, if any (never together with `owner`). Its own field
    /// rather than a kind beside `owner`: every Deployment path reads `owner` as "a
    /// Deployment's, replaced elsewhere when lost", which a DaemonSet's pod must never be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_set: Option<String>,
    /// The Job that owns a Pod, if any (never together with `owner` or `daemon_set`): a
    /// Job's pods run to completion and are counted, never scaled or rolled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The CronJob that started a Job, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_job: Option<String>,
    /// Set when the coordinator has decided to delete a pod: it is `Terminating`, never
    /// counts as Ready, and stays on its node for the drain period (see `core`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    /// The object's namespace as the API shows it and manifests give it. Inside the core
    /// it is `None`: a namespaced object is keyed by its qualified name instead (see
    /// [`qualify`]), so objects stored before namespaces existed are `default`'s as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A `describe` event: what happened to an object, newest last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// `pod/NAME`, `deployment/NAME` or `node/NAME`.
    pub object: String,
    pub reason: String,
    pub message: String,
    pub timestamp: String,
    /// The namespace of a namespaced object, as the API shows it (the core records
    /// events about qualified names and leaves this `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// One object of a manifest, as `baton apply` takes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Deployment(Deployment),
    DaemonSet(DaemonSet),
    Job(Job),
    CronJob(CronJob),
    Pod(Pod),
    Secret(Secret),
    AgentUpdate(AgentUpdate),
    ConfigMap(ConfigMap),
    Service(Service),
    Namespace(Namespace),
}

impl Object {
    /// The kind's lowercase name (as in `pod/NAME`) and the object's metadata.
    pub fn kind_and_meta(&self) -> (&'static str, &ObjectMeta) {
        match self {
            Object::Deployment(d) => ("deployment", &d.metadata),
            Object::DaemonSet(d) => ("daemonset", &d.metadata),
            Object::Job(j) => ("job", &j.metadata),
            Object::CronJob(c) => ("cronjob", &c.metadata),
            Object::Pod(p) => ("pod", &p.metadata),
            Object::Secret(x) => ("secret", &x.metadata),
            Object::AgentUpdate(u) => ("agentupdate", &u.metadata),
            Object::ConfigMap(c) => ("configmap", &c.metadata),
            Object::Service(s) => ("service", &s.metadata),
            Object::Namespace(n) => ("namespace", &n.metadata),
        }
    }

    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Deployment(d) => &mut d.metadata,
            Object::DaemonSet(d) => &mut d.metadata,
            Object::Job(j) => &mut j.metadata,
            Object::CronJob(c) => &mut c.metadata,
            Object::Pod(p) => &mut p.metadata,
            Object::Secret(x) => &mut x.metadata,
            Object::AgentUpdate(u) => &mut u.metadata,
            Object::ConfigMap(c) => &mut c.metadata,
            Object::Service(s) => &mut s.metadata,
            Object::Namespace(n) => &mut n.metadata,
        }
    }

    /// Cluster-scoped kinds are in no namespace (Nodes are not applied).
    pub fn is_namespaced(&self) -> bool {
        !matches!(self, Object::AgentUpdate(_) | Object::Namespace(_))
    }
}
