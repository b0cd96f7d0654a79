//! ConfigMaps in the core: apply (with `immutable` kept), and delivery to nodes.
//!
//! The object is stored as applied. A node is sent the ConfigMaps its desired pods
//! reference, and only those, in [`baton_proto::Body::ConfigMapPart`]s on its control
//! topic: apart from the desired state, whose 256 KiB a 1 MiB ConfigMap would not fit, and
//! so that a changed ConfigMap reaches the nodes that use it without a new desired state
//! (pods are not restarted for it). After every commit, each node is sent what differs
//! from what it was sent since its last Hello (content digests); a Hello clears that, so
//! a reconnecting agent is sent them again. The agent persists what it gets.
//!
//! A v4 agent cannot decode pods that use ConfigMaps: such a pod is withheld from it with
//! `CreateContainerConfigError` and the reason ([`Core::config_map_blocker`]).

use std::collections::BTreeSet;

use baton_proto::{self as proto, NodeName};

use crate::contract::{Applied, ApplyAction, ResourceKind};
use crate::model::api;
use crate::model::secrets::config_map_references;
use crate::model::wire;

use super::{new_uid, ApiError, Core, Outbound, Tab};

/// The parts one ConfigMap version travels in.
#[derive(Debug, Clone)]
pub(super) struct Parts {
    uid: String,
    generation: u64,
    digest: u64,
    parts: Vec<proto::ConfigMapPart>,
}

/// The oldest agent protocol that has ConfigMaps in pod specs.
const CONFIG_MAP_PROTO: u16 = 5;

impl Core {
    /// Refuses a change to the content of an immutable ConfigMap, as Kubernetes does.
    pub(super) fn check_config_map(&self, c: &api::ConfigMap) -> Result<(), ApiError> {
        let Some(old) = self.config_maps.get(&c.metadata.name) else {
            return Ok(());
        };
        if old.immutable && (old.data != c.data || old.binary_data != c.binary_data || !c.immutable)
        {
            return Err(ApiError::Conflict(format!(
                "configmap {:?} is immutable: its data cannot be changed; delete it and apply \
                 again",
                c.metadata.name
            )));
        }
        Ok(())
    }

    /// Stores a ConfigMap as given (its content replaces the old one).
    pub(super) fn apply_config_map(&mut self, mut c: api::ConfigMap) -> Applied {
        let name = c.metadata.name.clone();
        let action = match self.config_maps.get(&name) {
            None => {
                c.metadata.uid = new_uid();
                c.metadata.creation_timestamp = api::now_rfc3339();
                c.metadata.generation = 1;
                ApplyAction::Created
            }
            Some(old) => {
                if old.data == c.data
                    && old.binary_data == c.binary_data
                    && old.immutable == c.immutable
                    && old.metadata.labels == c.metadata.labels
                    && old.metadata.annotations == c.metadata.annotations
                {
                    return Applied {
                        kind: ResourceKind::ConfigMap,
                        name,
                        action: ApplyAction::Unchanged,
                    };
                }
                c.metadata.uid = old.metadata.uid.clone();
                c.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
                c.metadata.generation = old.metadata.generation + 1;
                ApplyAction::Configured
            }
        };
        self.config_maps.insert(name.clone(), c);
        self.touch(Tab::ConfigMap, &name);
        Applied {
            kind: ResourceKind::ConfigMap,
            name,
            action,
        }
    }
}

impl Core {
    /// Why `p` cannot go to its node: the node's agent speaks a protocol without
    /// ConfigMaps (v4, Baton 0.1).
    pub(super) fn config_map_blocker(&self, p: &api::Pod) -> Option<String> {
        let node = p.spec.node_name.as_deref()?;
        let version = self.nodes.get(node)?.status.protocol_version;
        if version >= CONFIG_MAP_PROTO {
            return None;
        }
        let first = config_map_references(&p.spec).into_iter().next()?;
        Some(format!(
            "node {node} runs an agent of protocol v{version}, which cannot use ConfigMaps \
             (configmap {first:?}); upgrade its agent to protocol v{CONFIG_MAP_PROTO}"
        ))
    }

    /// The parts of ConfigMap `name` as it is now (cached per uid and generation).
    fn config_map_parts(&mut self, name: &str) -> Option<(u64, Vec<proto::ConfigMapPart>)> {
        let cm = self.config_maps.get(name)?;
        if let Some(p) = self.config_map_parts.get(name) {
            if p.uid == cm.metadata.uid && p.generation == cm.metadata.generation {
                return Some((p.digest, p.parts.clone()));
            }
        }
        let made = wire::config_map_data(cm).and_then(|d| {
            let n =
                proto::BString::new(name).map_err(|e| crate::model::wire::WireError::Field {
                    pod: name.to_owned(),
                    field: "metadata.name".into(),
                    reason: e.to_string(),
                })?;
            d.parts(&n)
                .map_err(|e| crate::model::wire::WireError::Field {
                    pod: name.to_owned(),
                    field: "data".into(),
                    reason: e.to_string(),
                })
        });
        let parts = match made {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(configmap = name, error = %e, "configmap cannot be sent to nodes");
                return None;
            }
        };
        let digest = parts.first().map(|p| p.digest).unwrap_or_default();
        self.config_map_parts.insert(
            name.to_owned(),
            Parts {
                uid: cm.metadata.uid.clone(),
                generation: cm.metadata.generation,
                digest,
                parts: parts.clone(),
            },
        );
        Some((digest, parts))
    }

    /// Sends every node the ConfigMaps its desired pods reference that it was not sent in
    /// their current version (see the module docs).
    pub(super) fn send_config_maps(&mut self) {
        let nodes: BTreeSet<String> = self
            .desired
            .keys()
            .chain(self.desired_crons.keys())
            .cloned()
            .collect();
        for node in nodes {
            // Its pods' and the templates' of the CronJobs it fires itself.
            let mut names = self
                .desired
                .get(&node)
                .map(wire::config_map_names)
                .unwrap_or_default();
            names.extend(wire::config_map_names(super::secrets::cron_templates(
                self.sent_crons(&node),
            )));
            let sent = self.sent_config_maps.entry(node.clone()).or_default();
            sent.retain(|n, _| names.contains(n));
            if names.is_empty() {
                continue;
            }
            let Ok(node_name) = NodeName::new(&node) else {
                continue;
            };
            for name in names {
                let Some((digest, parts)) = self.config_map_parts(&name) else {
                    continue;
                };
                let sent = self.sent_config_maps.entry(node.clone()).or_default();
                if sent.get(&name) == Some(&digest) {
                    continue;
                }
                sent.insert(name.clone(), digest);
                tracing::debug!(%node, configmap = name, digest, parts = parts.len(), "sending configmap");
                for part in parts {
                    self.pending_out.push(Outbound {
                        node: node_name.clone(),
                        body: proto::Body::ConfigMapPart(part),
                        retain: false,
                    });
                }
            }
        }
        self.config_map_parts
            .retain(|name, _| self.config_maps.contains_key(name));
    }
}
