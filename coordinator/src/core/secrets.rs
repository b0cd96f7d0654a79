//! Secrets in nodes' desired states: pods whose secrets cannot be sent are withheld and
//! marked `CreateContainerConfigError` (see `crate::security::secrets` for the rules).

use std::collections::{BTreeMap, BTreeSet};

use baton_proto as proto;

use crate::decide::controller;
use crate::model::api;
use crate::store::Table;

use super::{Core, CoreError, Tab};

impl Core {
    pub(super) fn load_secrets(
        &self,
    ) -> Result<(BTreeMap<String, api::Secret>, Vec<String>), CoreError> {
        Ok(self.secret_keeper.load(self.store.list(Table::Secrets)?)?)
    }

    /// Why `p` cannot be sent to its node yet (a `CreateContainerConfigError` message).
    pub(super) fn secret_blocker(&self, p: &api::Pod) -> Option<String> {
        let node = p.spec.node_name.as_deref()?;
        self.secret_keeper.blocker(&p.spec, node, &self.secrets)
    }

    /// The secrets `pods` (a node's desired pods) reference, as sent to `node`.
    pub(super) fn desired_secret_list_for(
        &self,
        node: &str,
        pods: &[proto::PodSpec],
    ) -> Vec<crate::security::secrets::SentSecret> {
        let mut names = BTreeSet::new();
        for p in pods {
            for c in p.init_containers.iter().chain(p.containers.iter()) {
                for e in c.env.iter() {
                    if let proto::EnvValue::SecretKey { secret, .. } = &e.value {
                        names.insert(secret.as_str().to_owned());
                    }
                }
            }
            for v in p.volumes.iter() {
                if let proto::VolumeSource::Secret { secret_name } = &v.source {
                    names.insert(secret_name.as_str().to_owned());
                }
            }
            names.extend(p.image_pull_secrets.iter().map(|n| n.as_str().to_owned()));
        }
        if names.is_empty() {
            return Vec::new();
        }
        self.secret_keeper.sent(node, &names, &self.secrets)
    }

    pub(super) fn desired_secret_list(
        &self,
        node: &str,
    ) -> Vec<crate::security::secrets::SentSecret> {
        let pods = self
            .desired
            .get(node)
            .map(Vec::as_slice)
            .unwrap_or_default();
        self.desired_secret_list_for(node, pods)
    }

    /// The node's secrets, sealed to its key (cached seals are reused).
    pub(super) fn sealed_secrets(
        &self,
        node: &str,
    ) -> proto::BVec<proto::SealedSecret, { proto::MAX_SECRETS_PER_NODE }> {
        let mut out = Vec::new();
        for sent in self.desired_secrets.get(node).into_iter().flatten() {
            let Some(secret) = self.secrets.get(&sent.name) else {
                continue;
            };
            match self.secret_keeper.seal(node, sent, secret) {
                Ok(s) => out.push(s),
                Err(e) => tracing::error!(node, error = %e, "secret cannot be sealed; left out"),
            }
        }
        if out.len() > proto::MAX_SECRETS_PER_NODE {
            tracing::error!(
                node,
                secrets = out.len(),
                "more secrets than a node can be sent; truncated"
            );
            out.truncate(proto::MAX_SECRETS_PER_NODE);
        }
        proto::BVec::from_vec(out).unwrap_or_default()
    }

    /// Marks pods withheld for a secret `CreateContainerConfigError`, and clears that
    /// once they can be sent (only if it was ours: the pod is not in its node's last
    /// desired state, so an agent's own report of the same reason is left alone).
    pub(super) fn update_secret_blocks(&mut self) {
        let mut changes = Vec::new();
        for p in self.pods.values() {
            let Some(node) = p.spec.node_name.as_deref() else {
                continue;
            };
            if controller::is_terminating(p) {
                continue;
            }
            let ours = p.status.reason.as_deref() == Some(crate::security::secrets::CONFIG_ERROR);
            match self.secret_blocker(p) {
                Some(msg) => {
                    if !ours || p.status.message.as_deref() != Some(msg.as_str()) {
                        changes.push((p.metadata.name.clone(), Some(msg)));
                    }
                }
                None => {
                    let sent = self.desired.get(node).is_some_and(|d| {
                        d.iter().any(|s| {
                            s.name.as_str() == p.metadata.name && s.uid.as_str() == p.metadata.uid
                        })
                    });
                    if ours && !sent {
                        changes.push((p.metadata.name.clone(), None));
                    }
                }
            }
        }
        for (name, msg) in changes {
            let Some(pod) = self.pods.get_mut(&name) else {
                continue;
            };
            match msg {
                Some(msg) => {
                    pod.status.phase = api::PodPhase::Pending;
                    pod.status.reason = Some(crate::security::secrets::CONFIG_ERROR.into());
                    pod.status.message = Some(msg.clone());
                    self.touch(Tab::Pod, &name);
                    self.record(format!("pod/{name}"), "Failed", format!("Error: {msg}"));
                }
                None => {
                    pod.status.reason = None;
                    pod.status.message = None;
                    self.touch(Tab::Pod, &name);
                    self.record(
                        format!("pod/{name}"),
                        "SecretsReady",
                        "Its secrets can be sent to its node now".into(),
                    );
                }
            }
        }
    }

    /// Node keys change outside the core (enrollment, rotation, revocation): once a tick,
    /// nodes whose pods use secrets get their desired state recomputed if that changed it.
    pub(super) fn recheck_secrets(&mut self) {
        let nodes: BTreeSet<String> = self
            .pods
            .values()
            .filter(|p| !crate::security::secrets::references(&p.spec).is_empty())
            .filter_map(|p| p.spec.node_name.clone())
            .collect();
        let mut keep = BTreeSet::new();
        for node in nodes {
            let pods = self.desired_pods(&node);
            let secrets = self.desired_secret_list_for(&node, &pods);
            keep.extend(secrets.iter().map(|s| (node.clone(), s.name.clone())));
            let stale = self.desired.get(&node) != Some(&pods)
                || self.desired_secrets.get(&node) != Some(&secrets);
            // A pod that is still withheld but lost its status (an agent's last report)
            // needs settling too.
            let unmarked = self.pods.values().any(|p| {
                p.spec.node_name.as_deref() == Some(node.as_str())
                    && !controller::is_terminating(p)
                    && p.status.reason.as_deref() != Some(crate::security::secrets::CONFIG_ERROR)
                    && self.secret_blocker(p).is_some()
            });
            if (stale || unmarked) && self.nodes.contains_key(&node) {
                self.touch(Tab::Node, &node);
            }
        }
        self.secret_keeper.forget_except(&keep);
    }
}
