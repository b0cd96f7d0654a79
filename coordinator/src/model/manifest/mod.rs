//! `baton apply` input: Kubernetes YAML manifests to [`api::Object`]s.
//!
//! Baton accepts a strict subset of the Kubernetes schema, so a manifest written for
//! Kubernetes applies unchanged when it only uses that subset, and anything else is
//! refused with the full path of the first field Baton does not support. Silently
//! ignoring a `securityContext` or a `livenessProbe` would run a workload with weaker
//! guarantees than its author asked for.
//!
//! Parsing runs in three passes per document, all before anything is returned, so a
//! manifest is all-or-nothing:
//! 1. YAML to a [`Value`] (syntax errors carry line and column), here;
//! 2. a walk of the value against an allow-list (`shape`) that names unsupported
//!    fields, drops `status`, and treats `null` as absent as Kubernetes does;
//! 3. serde into private input structs that mirror the Kubernetes shape (`input`; type
//!    errors carry their path through `serde_path_to_error`), then validation into `api`
//!    types: one module a kind (`deployment`, `daemonset`, `job`, `cronjob`, `pod`, `secret`, `config_map`, `service`) or part of one
//!    (`container`, `probe`), over the field rules they share (`validate`).

mod agent_update;
mod config_map;
mod container;
mod cronjob;
mod daemonset;
mod deployment;
mod input;
mod job;
mod pod;
mod pod_dns;
mod probe;
mod secret;
mod service;
mod shape;
mod validate;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::model::api::{self, POD_NAME_SUFFIX_LEN, TEMPLATE_HASH_LEN};
use agent_update::{agent_update, InAgentUpdate};
use config_map::config_map;
use cronjob::cron_job;
use daemonset::daemon_set;
use deployment::deployment;
use input::{
    InConfigMap, InCronJob, InDaemonSet, InDeployment, InJob, InNamespace, InPod, InSecret,
    InService,
};
use job::job;
use pod::pod;
use secret::secret;
use service::service;
use shape::{
    walk, Shape, AGENT_UPDATE, CONFIG_MAP, CRON_JOB, DAEMON_SET, DEPLOYMENT, JOB, NAMESPACE, POD,
    SECRET, SERVICE,
};

pub use agent_update::check_version;
pub use secret::sealed_overhead;

/// Longest DNS-1123 label: pod and container names.
pub const MAX_NAME_LEN: usize = 63;
/// Longest Deployment name, so that `<name>-<hash>-<suffix>` pod names fit in 63.
pub const MAX_DEPLOYMENT_NAME_LEN: usize =
    MAX_NAME_LEN - 1 - TEMPLATE_HASH_LEN - 1 - POD_NAME_SUFFIX_LEN;
/// Longest DaemonSet name, so that `<name>-<suffix>` pod names fit in 63.
pub const MAX_DAEMON_SET_NAME_LEN: usize = MAX_NAME_LEN - 1 - POD_NAME_SUFFIX_LEN;
/// Longest Job name, so that `<name>-<suffix>` pod names fit in 63.
pub const MAX_JOB_NAME_LEN: usize = MAX_NAME_LEN - 1 - POD_NAME_SUFFIX_LEN;
/// Longest CronJob name, so that its Jobs' `<name>-<minutes since the epoch>` (10
/// digits for millennia) fit in [`MAX_JOB_NAME_LEN`].
pub const MAX_CRON_JOB_NAME_LEN: usize = MAX_JOB_NAME_LEN - 1 - 10;
/// More replicas than this is a typo, not a plan: one pod per node of the largest fleet
/// Baton is measured at (10,000 nodes, issue 17) fits five times over, while a stray
/// digit cannot make the coordinator create millions of pods.
pub const MAX_REPLICAS: i64 = 50_000;
/// The most keys one Secret holds (what one sealed secret carries on the wire).
pub const MAX_SECRET_KEYS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {doc}: invalid YAML: {source}")]
    Yaml {
        doc: usize,
        source: serde_yaml_ng::Error,
    },
    #[error("document {doc}: {path}: {message}")]
    Field {
        doc: usize,
        path: String,
        message: String,
    },
    #[error("document {doc}: {message}")]
    Document { doc: usize, message: String },
    /// Every field Baton does not support in the document, as `(path, message)`, in
    /// document order, so one round trip shows them all.
    #[error("document {doc}: {}", render_fields(fields))]
    Unsupported {
        doc: usize,
        fields: Vec<(String, String)>,
    },
    #[error("no objects in manifest")]
    Empty,
}

fn render_fields(fields: &[(String, String)]) -> String {
    fields
        .iter()
        .map(|(path, message)| format!("{path}: {message}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Parses one or more `---`-separated documents. Empty documents are skipped; any
/// error in any document fails the whole manifest.
pub fn parse_manifests(yaml: &str) -> Result<Vec<api::Object>, ManifestError> {
    let mut objects = Vec::new();
    // (kind, name) -> document that defined it, to refuse duplicates within one apply.
    let mut seen: BTreeMap<(&'static str, String), usize> = BTreeMap::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let doc = i + 1;
        let mut value =
            Value::deserialize(de).map_err(|source| ManifestError::Yaml { doc, source })?;
        if value.is_null() {
            continue;
        }
        value
            .apply_merge()
            .map_err(|source| ManifestError::Yaml { doc, source })?;
        let object = parse_document(doc, value)?;
        let (kind, meta) = object.kind_and_meta();
        // Names are unique per kind and namespace; `-n` is not known here, so an object
        // naming none counts as `default`'s (the core checks again with `-n`).
        let ns = meta.namespace.as_deref().unwrap_or(api::DEFAULT_NAMESPACE);
        let key = (kind, api::qualify(ns, &meta.name));
        if let Some(first) = seen.get(&key) {
            return Err(ManifestError::Document {
                doc,
                message: format!("{}/{} is already defined in document {first}", key.0, key.1),
            });
        }
        seen.insert(key, doc);
        objects.push(object);
    }
    if objects.is_empty() {
        return Err(ManifestError::Empty);
    }
    Ok(objects)
}

fn parse_document(doc: usize, mut value: Value) -> Result<api::Object, ManifestError> {
    let document_error = |message: String| ManifestError::Document { doc, message };
    let Some(map) = value.as_mapping() else {
        return Err(document_error(
            "expected a mapping with apiVersion and kind".to_string(),
        ));
    };
    let field = |name: &str| -> Result<String, ManifestError> {
        match map.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(ManifestError::Field {
                doc,
                path: name.to_string(),
                message: "expected a string".to_string(),
            }),
            None => Err(ManifestError::Field {
                doc,
                path: name.to_string(),
                message: "required".to_string(),
            }),
        }
    };
    let api_version = field("apiVersion")?;
    let kind = field("kind")?;
    let field_error =
        |(path, message): (String, String)| ManifestError::Field { doc, path, message };
    let check = |value: &mut Value, shape: &Shape| -> Result<(), ManifestError> {
        let mut unsupported = Vec::new();
        walk(value, shape, &mut String::new(), &mut unsupported).map_err(field_error)?;
        if unsupported.is_empty() {
            Ok(())
        } else {
            Err(ManifestError::Unsupported {
                doc,
                fields: unsupported,
            })
        }
    };
    match (api_version.as_str(), kind.as_str()) {
        ("apps/v1", "Deployment") => {
            check(&mut value, &DEPLOYMENT)?;
            let input: InDeployment = from_value(doc, value)?;
            deployment(input)
                .map(api::Object::Deployment)
                .map_err(field_error)
        }
        ("apps/v1", "DaemonSet") => {
            check(&mut value, &DAEMON_SET)?;
            let input: InDaemonSet = from_value(doc, value)?;
            daemon_set(input)
                .map(api::Object::DaemonSet)
                .map_err(field_error)
        }
        ("batch/v1", "Job") => {
            check(&mut value, &JOB)?;
            let input: InJob = from_value(doc, value)?;
            job(input).map(api::Object::Job).map_err(field_error)
        }
        ("batch/v1", "CronJob") => {
            check(&mut value, &CRON_JOB)?;
            let input: InCronJob = from_value(doc, value)?;
            cron_job(input).map(api::Object::CronJob).map_err(field_error)
        }
        ("v1", "Pod") => {
            check(&mut value, &POD)?;
            let input: InPod = from_value(doc, value)?;
            pod(input).map(api::Object::Pod).map_err(field_error)
        }
        ("v1", "Secret") => {
            check(&mut value, &SECRET)?;
            let input: InSecret = from_value(doc, value)?;
            secret(input).map(api::Object::Secret).map_err(field_error)
        }
        ("v1", "ConfigMap") => {
            check(&mut value, &CONFIG_MAP)?;
            let input: InConfigMap = from_value(doc, value)?;
            config_map(input)
                .map(api::Object::ConfigMap)
                .map_err(field_error)
        }
        ("v1", "Service") => {
            check(&mut value, &SERVICE)?;
            let input: InService = from_value(doc, value)?;
            service(input).map(api::Object::Service).map_err(field_error)
        }
        ("v1", "Namespace") => {
            check(&mut value, &NAMESPACE)?;
            let input: InNamespace = from_value(doc, value)?;
            namespace(input)
                .map(api::Object::Namespace)
                .map_err(field_error)
        }
        (api::AGENT_UPDATE_API_VERSION, "AgentUpdate") => {
            check(&mut value, &AGENT_UPDATE)?;
            let input: InAgentUpdate = from_value(doc, value)?;
            agent_update(input)
                .map(api::Object::AgentUpdate)
                .map_err(field_error)
        }
        _ => Err(document_error(format!(
            "kind {kind} (apiVersion {api_version}) is not supported by Baton; \
             supported: Deployment (apps/v1), DaemonSet (apps/v1), Job (batch/v1), CronJob (batch/v1), Pod (v1), Secret (v1), ConfigMap (v1), Service (v1), Namespace (v1), AgentUpdate ({})",
            api::AGENT_UPDATE_API_VERSION
        ))),
    }
}

/// A `Namespace` (`v1`): its name is an RFC 1123 label, and it is in no namespace.
fn namespace(input: InNamespace) -> Result<api::Namespace, validate::Invalid> {
    let metadata = validate::object_meta(input.metadata, validate::MAX_NAMESPACE_LEN)?;
    if metadata.namespace.is_some() {
        return validate::invalid(
            "metadata.namespace",
            "a Namespace is cluster-scoped: it is in no namespace",
        );
    }
    Ok(api::Namespace {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        metadata,
        status: api::NamespaceStatus::default(),
    })
}

/// A label key and value by the rules manifests follow (`baton label node`), the error as
/// `labels.KEY: message`.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    validate::qualified_name("labels", key)
        .and_then(|()| validate::label_value(&format!("labels.{key}"), value))
        .map_err(|(path, message)| format!("{path}: {message}"))
}

fn from_value<T: serde::de::DeserializeOwned>(
    doc: usize,
    value: Value,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // serde_path_to_error spells the document root ".".
        if path == "." {
            ManifestError::Document { doc, message }
        } else {
            ManifestError::Field { doc, path, message }
        }
    })
}

#[cfg(test)]
mod tests;
