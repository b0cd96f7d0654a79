//! Secrets in nodes' desired states: what the core decides, and the keeper it is given.
//!
//! The core decides which secrets each node is sent (exactly those its sent pods
//! reference) and withholds a pod whose secrets cannot be sent yet: one that does not
//! exist or lacks a referenced key, or a node with no enrolled key to seal to. Such a pod
//! shows [`CONFIG_ERROR`] with the reason, and is sent as soon as that is fixed (checked on
//! every change and every tick, which also notices enrollments and key rotations).
//!
//! The cryptography is a [`Keeper`]'s: encryption at rest, content versions, node keys and
//! sealing. `crate::security::secrets` implements it (see there for the formats); until
//! [`Core::with_secrets`] gives the core one, [`Unkept`] stores plain JSON and knows no
//! node keys, so no secret ever leaves the core.

use std::collections::{BTreeMap, BTreeSet};

use baton_proto as proto;
use baton_proto::seal;
use baton_proto::sign::VerifyingKey;

use crate::decide::controller;
use crate::model::api;
use crate::model::secrets::references;
use crate::model::wire::{self, encode_data};
use crate::store::Table;

use super::{Core, CoreError, Tab};

/// The `reason` of a pod withheld for a secret, as in Kubernetes.
pub const CONFIG_ERROR: &str = "CreateContainerConfigError";

/// How every entry a keeper encrypts at rest begins; any other entry in the secrets table
/// is plain JSON. [`Unkept`] skips such entries: they load once a keeper is given.
pub const ENCRYPTED_PREFIX: &[u8] = b"baton-secret-v1\0";

/// A keeper's failure, reported as [`CoreError::Secrets`].
pub type KeeperError = Box<dyn std::error::Error + Send + Sync>;

/// One secret as a node's desired state refers to it: what decides whether the node must
/// be sent a new desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentSecret {
    pub name: String,
    pub version: u64,
    /// The node key it is sealed to: a rotated key needs a new seal.
    pub key: [u8; 32],
}

/// The cryptography behind secrets, injected into the core ([`Core::with_secrets`]) and
/// implemented by `crate::security::secrets::SecretKeeper`. Sealing happens while
/// building messages from `&Core`, so a keeper caches behind `&self`.
pub trait Keeper: Send + Sync {
    /// What goes into the store for `secret`.
    fn to_store(&self, name: &str, secret: &api::Secret) -> Result<Vec<u8>, KeeperError>;

    /// Reads one store entry: the secret, and whether it must be rewritten (it is in an
    /// older format). `None` for an entry this keeper cannot read.
    fn read_store(
        &self,
        name: &str,
        bytes: &[u8],
    ) -> Result<Option<(api::Secret, bool)>, KeeperError>;

    /// The content version of `secret`: it changes when the content does.
    fn version(&self, secret: &api::Secret) -> u64;

    /// The key `node`'s secrets are sealed to, `None` if it has none (or is revoked).
    fn node_key(&self, node: &str) -> Option<VerifyingKey>;

    /// Seals `secret` (as `sent` describes it) to `node`.
    fn seal(
        &self,
        node: &str,
        sent: &SentSecret,
        secret: &api::Secret,
    ) -> Result<proto::SealedSecret, KeeperError>;

    /// Forgets cached seals of (node, secret) pairs other than `keep`.
    fn forget_except(&self, keep: &BTreeSet<(String, String)>);
}

/// What [`Unkept`] fails with.
#[derive(Debug, thiserror::Error)]
enum UnkeptError {
    #[error("secret {name:?}: {source}")]
    Json {
        name: String,
        source: serde_json::Error,
    },
    #[error("secret {name:?} cannot be sealed: the core has no keeper")]
    NoKeeper { name: String },
}

/// The keeper of a core that was given none: plain JSON at rest and no node keys, so pods
/// that use secrets are withheld. What a core has before [`Core::with_secrets`].
#[derive(Debug, Default)]
pub struct Unkept;

impl Keeper for Unkept {
    fn to_store(&self, name: &str, secret: &api::Secret) -> Result<Vec<u8>, KeeperError> {
        serde_json::to_vec(secret).map_err(|source| {
            UnkeptError::Json {
                name: name.to_owned(),
                source,
            }
            .into()
        })
    }

    fn read_store(
        &self,
        name: &str,
        bytes: &[u8],
    ) -> Result<Option<(api::Secret, bool)>, KeeperError> {
        if bytes.starts_with(ENCRYPTED_PREFIX) {
            return Ok(None);
        }
        let s = serde_json::from_slice(bytes).map_err(|source| UnkeptError::Json {
            name: name.to_owned(),
            source,
        })?;
        Ok(Some((s, false)))
    }

    /// Never asked for: with no node key, nothing is sent.
    fn version(&self, _: &api::Secret) -> u64 {
        0
    }

    fn node_key(&self, _: &str) -> Option<VerifyingKey> {
        None
    }

    fn seal(
        &self,
        _: &str,
        sent: &SentSecret,
        _: &api::Secret,
    ) -> Result<proto::SealedSecret, KeeperError> {
        Err(UnkeptError::NoKeeper {
            name: sent.name.clone(),
        }
        .into())
    }

    fn forget_except(&self, _: &BTreeSet<(String, String)>) {}
}

/// Loads the whole secrets table; the second value names entries to rewrite.
pub(crate) fn load(
    keeper: &dyn Keeper,
    entries: Vec<(String, Vec<u8>)>,
) -> Result<(BTreeMap<String, api::Secret>, Vec<String>), KeeperError> {
    let mut out = BTreeMap::new();
    let mut rewrite = Vec::new();
    for (name, bytes) in entries {
        if let Some((s, legacy)) = keeper.read_store(&name, &bytes)? {
            if legacy {
                rewrite.push(name.clone());
            }
            out.insert(name, s);
        }
    }
    Ok((out, rewrite))
}

/// Why `spec` cannot be sent to `node` yet, as the pod's status message; `None` when
/// every secret it references can be sealed to the node.
pub(crate) fn blocker(
    keeper: &dyn Keeper,
    spec: &api::PodSpec,
    node: &str,
    secrets: &BTreeMap<String, api::Secret>,
) -> Option<String> {
    let refs = references(spec);
    if refs.is_empty() {
        return None;
    }
    if let Some(msg) = missing(&refs, secrets) {
        return Some(msg);
    }
    if keeper.node_key(node).is_none() {
        let first = refs.keys().next().map(String::as_str).unwrap_or_default();
        return Some(format!(
            "node {node} has no enrolled key to seal secret {first:?} to"
        ));
    }
    None
}

/// What `node` is sent for the secrets `names`, in name order (missing ones skipped:
/// their pods are withheld).
pub(crate) fn sent(
    keeper: &dyn Keeper,
    node: &str,
    names: &BTreeSet<String>,
    secrets: &BTreeMap<String, api::Secret>,
) -> Vec<SentSecret> {
    let Some(key) = keeper.node_key(node) else {
        return Vec::new();
    };
    names
        .iter()
        .filter_map(|n| {
            secrets.get(n).map(|s| SentSecret {
                name: n.clone(),
                version: keeper.version(s),
                key: key.to_bytes(),
            })
        })
        .collect()
}

/// The first missing secret or key, as Kubernetes words it.
fn missing(
    refs: &BTreeMap<String, BTreeSet<String>>,
    secrets: &BTreeMap<String, api::Secret>,
) -> Option<String> {
    for (name, keys) in refs {
        let Some(s) = secrets.get(name) else {
            return Some(format!("secret {name:?} not found"));
        };
        if let Some(k) = keys.iter().find(|k| !s.data.contains_key(*k)) {
            return Some(format!("couldn't find key {k} in Secret {name}"));
        }
        match encode_data(s) {
            Err(e) => return Some(format!("secret {name:?} cannot be sent to a node: {e}")),
            Ok(bytes) if bytes.len() > seal::MAX_PLAINTEXT_BYTES => {
                return Some(format!(
                    "secret {name:?} is {} bytes encoded, over the {} bytes a node accepts",
                    bytes.len(),
                    seal::MAX_PLAINTEXT_BYTES
                ))
            }
            Ok(_) => {}
        }
    }
    None
}

/// The pod templates of node-fired CronJobs, whose Secrets and ConfigMaps their nodes
/// are sent like those of their pods.
pub(super) fn cron_templates(crons: &[proto::NodeCron]) -> impl Iterator<Item = &proto::PodSpec> {
    crons.iter().map(|c| &c.pod)
}

impl Core {
    pub(super) fn load_secrets(
        &self,
    ) -> Result<(BTreeMap<String, api::Secret>, Vec<String>), CoreError> {
        Ok(load(
            self.secret_keeper.as_ref(),
            self.store.list(Table::Secrets)?,
        )?)
    }

    /// Why `p` cannot be sent to its node yet (a `CreateContainerConfigError` message).
    /// Also a pod using ConfigMaps on an agent too old for them ([`Core::config_map_blocker`]),
    /// a pod of a namespace but `default` on one ([`Core::namespace_blocker`]), and a pod
    /// with DNS settings on one ([`Core::dns_blocker`]).
    pub(super) fn secret_blocker(&self, p: &api::Pod) -> Option<String> {
        let node = p.spec.node_name.as_deref()?;
        blocker(self.secret_keeper.as_ref(), &p.spec, node, &self.secrets)
            .or_else(|| self.config_map_blocker(p))
            .or_else(|| self.namespace_blocker(p))
            .or_else(|| self.dns_blocker(p))
    }

    /// The secrets `pods` (a node's desired pods) and `crons` (the CronJobs it fires
    /// itself) reference, as sent to `node`: a run fired offline finds them on the device.
    pub(super) fn desired_secret_list_for(
        &self,
        node: &str,
        pods: &[proto::PodSpec],
        crons: &[proto::NodeCron],
    ) -> Vec<SentSecret> {
        let mut names = wire::secret_names(pods);
        names.extend(wire::secret_names(cron_templates(crons)));
        if names.is_empty() {
            return Vec::new();
        }
        sent(self.secret_keeper.as_ref(), node, &names, &self.secrets)
    }

    pub(super) fn desired_secret_list(&self, node: &str) -> Vec<SentSecret> {
        let pods = self
            .desired
            .get(node)
            .map(Vec::as_slice)
            .unwrap_or_default();
        self.desired_secret_list_for(node, pods, self.sent_crons(node))
    }

    /// The node-fired CronJobs `node` was last sent.
    pub(super) fn sent_crons(&self, node: &str) -> &[proto::NodeCron] {
        self.desired_crons
            .get(node)
            .map(Vec::as_slice)
            .unwrap_or_default()
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
            // A node-scheduled CronJob's run: its node has its secrets with its `crons`.
            if controller::is_terminating(p) || p.node_run() {
                continue;
            }
            let ours = p.status.reason.as_deref() == Some(CONFIG_ERROR);
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
                    pod.status.reason = Some(CONFIG_ERROR.into());
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
        let mut nodes: BTreeSet<String> = self
            .pods
            .values()
            .filter(|p| {
                !references(&p.spec).is_empty()
                    || !crate::model::secrets::config_map_references(&p.spec).is_empty()
            })
            .filter_map(|p| p.spec.node_name.clone())
            .collect();
        nodes.extend(
            self.desired_crons
                .iter()
                .filter(|(_, crons)| !wire::secret_names(cron_templates(crons)).is_empty())
                .map(|(node, _)| node.clone()),
        );
        let mut keep = BTreeSet::new();
        for node in nodes {
            let pods = self.desired_pods(&node);
            let secrets = self.desired_secret_list_for(&node, &pods, self.sent_crons(&node));
            keep.extend(secrets.iter().map(|s| (node.clone(), s.name.clone())));
            let stale = self.desired.get(&node) != Some(&pods)
                || self.desired_secrets.get(&node) != Some(&secrets);
            // A pod that is still withheld but lost its status (an agent's last report)
            // needs settling too.
            let unmarked = self.pods.values().any(|p| {
                p.spec.node_name.as_deref() == Some(node.as_str())
                    && !controller::is_terminating(p)
                    && p.status.reason.as_deref() != Some(CONFIG_ERROR)
                    && self.secret_blocker(p).is_some()
            });
            if (stale || unmarked) && self.nodes.contains_key(&node) {
                self.touch(Tab::Node, &node);
            }
        }
        self.secret_keeper.forget_except(&keep);
    }
}
