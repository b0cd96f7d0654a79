//! The coordinator's state machine.
//!
//! One task owns all state and handles one [`Event`] at a time: an API request, a message
//! from a node, or a once-a-second tick. Nothing else touches the state, so there are no
//! locks, and the MQTT bridge and the HTTP server are mere producers of events (tests
//! drive the core with events directly, see the tests below).
//!
//! Each event is handled as a transaction: the handler changes the in-memory state and
//! marks what it touched; then [`Core::finish`] runs the pure deployment controller and
//! scheduler over the result, recomputes each node's desired state, and writes every
//! touched object plus new events to the store in ONE atomic `commit`. Only after the
//! commit succeeds are messages sent to nodes. If it fails, the state is reloaded from the
//! store, so memory never runs ahead of disk.
//!
//! **Level-triggered protocol.** Each node's desired state is published retained with a
//! generation that grows whenever its content changes. Agents report the generation they
//! applied and a digest of their status in every heartbeat; on a mismatch the core
//! republishes the desired state or asks for a full status. A lost message, a restarted
//! broker or a coordinator restart therefore heals at the next heartbeat.
//!
//! Store commits run inline on the core's task. A commit is a few milliseconds and the
//! core is the only writer, so a dedicated thread would buy nothing but complexity.
//!
//! What is persisted: deployments, pods (with their node assignment and last reported
//! status), nodes (with their desired generation) and the newest [`MAX_EVENTS`] events.
//! What is not: each node's last heartbeat instant and status digest, which are refreshed
//! by the next heartbeat. Heartbeats that change nothing write nothing, to spare the SD
//! cards edge coordinators run on.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use baton_proto::{self as proto, Body, NodeName};
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::contract::body::{ApiObject, Revocation, RolloutProgress, SecretView, UndoResult};
use crate::contract::{Applied, ApplyAction, ResourceKind};
use crate::decide::controller::{self, Action};
use crate::decide::policy::{self, Policy};
use crate::decide::rollout::{self, RolloutError};
use crate::decide::scheduler::{self, Candidate, Usage};
use crate::model::api;
use crate::model::manifest;
use crate::model::wire;
use crate::store::{Op, Store, StoreError, Table};

/// How many events the store keeps; older ones are deleted as new ones arrive.
pub const MAX_EVENTS: usize = 1000;
/// How long a node may be NotReady before its Deployment pods are evicted (see
/// [`Core::with_pod_eviction_timeout`]); Kubernetes' old default was five minutes, edge
/// fleets want their services back sooner.
pub const DEFAULT_POD_EVICTION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a deleted Ready pod stays in its node's desired state (see
/// [`Core::with_pod_drain`]).
pub const DEFAULT_POD_DRAIN: Duration = Duration::from_secs(2);

/// Everything the core reacts to. Closed on purpose: a new input is a new variant here.
///
/// `Inbound` is a few hundred bytes; events live briefly in one bounded channel, so boxing
/// it would only add an allocation per message.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Event {
    Api(ApiRequest),
    Inbound { node: NodeName, body: Body },
    Tick,
}

/// One message from the core to a node.
#[derive(Debug, Clone, PartialEq)]
pub struct Outbound {
    pub node: NodeName,
    pub body: Body,
    /// Retained messages are handed by the broker to an agent that (re)subscribes.
    pub retain: bool,
}

/// An API call and where its answer goes.
#[derive(Debug)]
pub struct ApiRequest {
    pub op: ApiOp,
    pub reply: oneshot::Sender<Result<ApiReply, ApiError>>,
}

impl ApiRequest {
    pub fn new(op: ApiOp) -> (Self, oneshot::Receiver<Result<ApiReply, ApiError>>) {
        let (reply, rx) = oneshot::channel();
        (Self { op, reply }, rx)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiOp {
    Apply {
        yaml: String,
    },
    Get {
        kind: ResourceKind,
        name: Option<String>,
    },
    Delete {
        kind: ResourceKind,
        name: String,
    },
    Scale {
        name: String,
        replicas: u32,
    },
    Describe {
        kind: ResourceKind,
        name: String,
    },
    /// Events, optionally of one object (`pod/NAME`), oldest first.
    Events {
        object: Option<String>,
    },
    /// A Deployment's rollout progress (`rollout::RolloutProgress`).
    RolloutStatus {
        name: String,
    },
    /// A Deployment's revisions, oldest first (`api::Revision`).
    RolloutHistory {
        name: String,
    },
    /// Rolls a Deployment back to `to_revision`, or to the previous revision.
    RolloutUndo {
        name: String,
        to_revision: Option<u64>,
    },
    /// Shuts a node out after its identity was revoked (`crate::security::gate`), or takes it
    /// back after it re-enrolled: see [`Core::with_revoked`].
    SetRevoked {
        name: String,
        revoked: bool,
    },
}

/// The core's answer to an [`ApiOp`], typed: the edge renders it with the bodies of
/// [`crate::contract::body`].
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum ApiReply {
    Applied(Vec<Applied>),
    Objects(Vec<ApiObject>),
    Object(ApiObject),
    Deleted {
        kind: ResourceKind,
        name: String,
    },
    Described {
        object: ApiObject,
        events: Vec<api::Event>,
    },
    Events(Vec<api::Event>),
    Rollout(RolloutProgress),
    Revisions(Vec<api::Revision>),
    RolledBack(UndoResult),
    Revocation(Revocation),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
    #[error("the coordinator is shutting down")]
    Unavailable,
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("corrupt {table} record {key:?} in the store: {source}")]
    Corrupt {
        table: &'static str,
        key: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Secrets(#[from] crate::security::secrets::SecretsError),
}

/// What the core knows about a node beyond its stored object.
#[derive(Debug)]
struct Live {
    last_seen: Instant,
    /// Digest of the last full status received, `None` until one arrives.
    status_digest: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tab {
    Deployment,
    Pod,
    Node,
    /// Keyed by `rollout::revision_key`.
    Revision,
    Secret,
}

/// The coordinator's state and its transaction bookkeeping; see the module docs.
pub struct Core {
    store: Arc<dyn Store>,
    outbound: mpsc::Sender<Outbound>,
    heartbeat_timeout: Duration,
    /// How long a node stays NotReady before its Deployment pods are evicted.
    pod_eviction_timeout: Duration,
    /// Since when each NotReady node has been NotReady (not persisted: a restarted
    /// coordinator gives every NotReady node a full eviction timeout again).
    not_ready_since: HashMap<String, Instant>,

    deployments: BTreeMap<String, api::Deployment>,
    /// Deployment revisions by `rollout::revision_key`.
    revisions: BTreeMap<String, api::Revision>,
    pods: BTreeMap<String, api::Pod>,
    /// Terminating pods and when their drain ends (rebuilt from `deletionTimestamp` on
    /// load, so a restart drains them once more rather than never).
    draining: HashMap<String, Instant>,
    pod_drain: Duration,
    nodes: BTreeMap<String, api::Node>,
    /// Secrets as applied. The API shows only their key names and sizes (`secret_view`).
    secrets: BTreeMap<String, api::Secret>,
    /// Encrypts secrets at rest and seals them per node (`crate::security::secrets`).
    secret_keeper: crate::security::secrets::SecretKeeper,
    /// The secrets each node's desired state carries, as last published (or loaded).
    desired_secrets: HashMap<String, Vec<crate::security::secrets::SentSecret>>,
    /// What pods may ask of their nodes; checked on apply (`crate::decide::policy`).
    policy: Policy,
    /// Nodes whose identity is revoked: never Ready, sent an empty desired state once.
    revoked: BTreeSet<String>,
    live: HashMap<String, Live>,
    /// Each node's desired content as last published (or loaded), to detect changes.
    desired: HashMap<String, Vec<proto::PodSpec>>,
    events: VecDeque<(u64, api::Event)>,
    next_event: u64,

    dirty: BTreeSet<(Tab, String)>,
    new_events: Vec<api::Event>,
    pending_out: Vec<Outbound>,
}

fn new_uid() -> String {
    let v: u128 = rand::thread_rng().gen();
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..controller::POD_NAME_SUFFIX_LEN)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn event_key(seq: u64) -> String {
    format!("{seq:020}")
}

fn load_table<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    table: Table,
    name: &'static str,
) -> Result<BTreeMap<String, T>, CoreError> {
    store
        .list(table)?
        .into_iter()
        .map(|(k, v)| match serde_json::from_slice(&v) {
            Ok(t) => Ok((k, t)),
            Err(source) => Err(CoreError::Corrupt {
                table: name,
                key: k,
                source,
            }),
        })
        .collect()
}

impl Core {
    /// Loads everything from `store`. A restarted coordinator continues exactly where
    /// the previous one committed last.
    pub fn new(
        store: Arc<dyn Store>,
        outbound: mpsc::Sender<Outbound>,
        heartbeat_timeout: Duration,
    ) -> Result<Self, CoreError> {
        let mut core = Self {
            store,
            outbound,
            heartbeat_timeout,
            pod_eviction_timeout: DEFAULT_POD_EVICTION_TIMEOUT,
            not_ready_since: HashMap::new(),
            deployments: BTreeMap::new(),
            revisions: BTreeMap::new(),
            pods: BTreeMap::new(),
            draining: HashMap::new(),
            pod_drain: DEFAULT_POD_DRAIN,
            nodes: BTreeMap::new(),
            secrets: BTreeMap::new(),
            secret_keeper: crate::security::secrets::SecretKeeper::default(),
            desired_secrets: HashMap::new(),
            policy: Policy::default(),
            revoked: BTreeSet::new(),
            live: HashMap::new(),
            desired: HashMap::new(),
            events: VecDeque::new(),
            next_event: 1,
            dirty: BTreeSet::new(),
            new_events: Vec::new(),
            pending_out: Vec::new(),
        };
        core.load()?;
        Ok(core)
    }

    /// Sets how long a deleted Ready pod is kept, marked terminating, in its node's
    /// desired state before it is removed (which makes the agent stop it).
    ///
    /// Clients select only Ready, non-terminating pods, so this is the time they have
    /// to notice the pod is going before it stops answering: a request in flight never
    /// hits a pod that was already told to stop. Zero removes pods at once.
    pub fn with_pod_drain(mut self, drain: Duration) -> Self {
        self.pod_drain = drain;
        self
    }

    /// Sets how long a node may be NotReady before the pods of Deployments on it are
    /// evicted (deleted, so that their Deployments replace them on Ready nodes). Bare pods
    /// stay, shown Unknown, as in Kubernetes: nothing else would ever run them again.
    /// Sets the admission policy `apply` checks pods against (default: deny all).
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Marks nodes whose identity is revoked (loaded by `crate::security::gate`, which owns
    /// that state). Their desired state is empty, so nothing is published to them again.
    pub fn with_revoked(mut self, revoked: BTreeSet<String>) -> Self {
        for n in &revoked {
            self.desired.insert(n.clone(), Vec::new());
        }
        self.revoked = revoked;
        self
    }

    /// Encrypts secrets at rest with `keeper`'s data key and seals them to nodes' keys.
    /// Reloads the state (encrypted secrets only load with the key) and rewrites secrets
    /// stored in plain JSON by older versions, encrypted.
    pub fn with_secrets(
        mut self,
        keeper: crate::security::secrets::SecretKeeper,
    ) -> Result<Self, CoreError> {
        self.secret_keeper = keeper;
        self.load()?;
        let rewrite = self.load_secrets()?.1;
        let ops = rewrite
            .iter()
            .filter_map(|n| {
                let s = self.secrets.get(n)?;
                let bytes = self.secret_keeper.to_store(n, s).ok()?;
                Some(Op::Put(Table::Secrets, n.clone(), bytes))
            })
            .collect::<Vec<_>>();
        if !ops.is_empty() {
            self.store.commit(ops)?;
            tracing::info!(
                count = rewrite.len(),
                "encrypted secrets stored in plain text"
            );
        }
        Ok(self)
    }

    fn load_secrets(&self) -> Result<(BTreeMap<String, api::Secret>, Vec<String>), CoreError> {
        Ok(self.secret_keeper.load(self.store.list(Table::Secrets)?)?)
    }

    pub fn with_pod_eviction_timeout(mut self, timeout: Duration) -> Self {
        self.pod_eviction_timeout = timeout;
        self
    }

    fn load(&mut self) -> Result<(), CoreError> {
        let store = self.store.as_ref();
        self.deployments = load_table(store, Table::Deployments, "deployment")?;
        self.pods = load_table(store, Table::Pods, "pod")?;
        self.revisions = load_table(store, Table::Revisions, "revision")?;
        let drain_end = Instant::now() + self.pod_drain;
        self.draining = self
            .pods
            .values()
            .filter(|p| controller::is_terminating(p))
            .map(|p| (p.metadata.name.clone(), drain_end))
            .collect();
        self.nodes = load_table(store, Table::Nodes, "node")?;
        self.secrets = self.load_secrets()?.0;
        let store = self.store.as_ref();
        let events: BTreeMap<String, api::Event> = load_table(store, Table::Events, "event")?;
        self.events = events
            .into_iter()
            .filter_map(|(k, e)| Some((k.parse::<u64>().ok()?, e)))
            .collect();
        self.next_event = self.events.back().map_or(1, |(s, _)| s + 1);
        let now = Instant::now();
        // A node known from the store gets a full heartbeat timeout to come back.
        for name in self.nodes.keys() {
            self.live.entry(name.clone()).or_insert(Live {
                last_seen: now,
                status_digest: None,
            });
        }
        // ...and a NotReady one a full eviction timeout.
        for n in self.nodes.values().filter(|n| !n.status.ready) {
            self.not_ready_since
                .entry(n.metadata.name.clone())
                .or_insert(now);
        }
        self.desired = self
            .nodes
            .keys()
            .map(|n| (n.clone(), self.desired_pods(n)))
            .collect();
        self.desired_secrets = self
            .nodes
            .keys()
            .map(|n| (n.clone(), self.desired_secret_list(n)))
            .collect();
        self.dirty.clear();
        self.new_events.clear();
        self.pending_out.clear();
        Ok(())
    }

    /// Handles events until every sender is gone.
    pub async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        while let Some(ev) = events.recv().await {
            self.handle(ev);
        }
        tracing::debug!("core stopped");
    }

    /// Handles one event as one transaction.
    pub fn handle(&mut self, ev: Event) {
        match ev {
            Event::Api(req) => {
                let span = tracing::debug_span!("api", op = ?std::mem::discriminant(&req.op));
                let _g = span.enter();
                let result = self
                    .api(req.op)
                    .and_then(|reply| self.finish().map(|()| reply));
                if result.is_err() {
                    self.abort();
                }
                let _ = req.reply.send(result);
            }
            Event::Inbound { node, body } => {
                // Security refuses a revoked node's messages, but one verified just before
                // the revocation can still be queued here: it must not make the node Ready.
                if self.revoked.contains(node.as_str()) {
                    tracing::debug!(node = %node, "message of a revoked node dropped");
                    return;
                }
                let span = tracing::debug_span!("inbound", node = %node);
                let _g = span.enter();
                self.inbound(&node, body);
                let _ = self.finish();
            }
            Event::Tick => {
                self.tick();
                self.recheck_secrets();
                self.expire_drains();
                let _ = self.finish();
            }
        }
    }

    // ----- transaction helpers -------------------------------------------------------

    fn touch(&mut self, tab: Tab, name: &str) {
        self.dirty.insert((tab, name.to_owned()));
    }

    fn record(&mut self, object: String, reason: &str, message: String) {
        tracing::info!(%object, reason, %message, "event");
        self.new_events.push(api::Event {
            object,
            reason: reason.to_owned(),
            message,
            timestamp: api::now_rfc3339(),
        });
    }

    /// Throws away uncommitted changes by reloading the committed state.
    fn abort(&mut self) {
        if self.dirty.is_empty() && self.new_events.is_empty() && self.pending_out.is_empty() {
            return;
        }
        if let Err(e) = self.load() {
            tracing::error!(error = %e, "cannot reload state from the store");
        }
    }

    /// Settles the state, commits it atomically, then sends what the change requires.
    fn finish(&mut self) -> Result<(), ApiError> {
        self.settle();
        if !self.dirty.is_empty() || !self.new_events.is_empty() {
            let ops = self.ops();
            if let Err(e) = self.store.commit(ops) {
                tracing::error!(error = %e, "store commit failed; reloading the committed state");
                self.abort();
                return Err(ApiError::Internal(format!("cannot save the change: {e}")));
            }
            for e in std::mem::take(&mut self.new_events) {
                self.events.push_back((self.next_event, e));
                self.next_event += 1;
            }
            while self.events.len() > MAX_EVENTS {
                self.events.pop_front();
            }
            self.dirty.clear();
        }
        for msg in std::mem::take(&mut self.pending_out) {
            // Never block the core on the bus: a message lost here is resent when the next
            // heartbeat shows the mismatch.
            if let Err(e) = self.outbound.try_send(msg) {
                tracing::warn!(error = %e, "outbound queue full; the next heartbeat will resend");
            }
        }
        Ok(())
    }

    fn ops(&self) -> Vec<Op> {
        let mut ops = Vec::new();
        for (tab, name) in &self.dirty {
            let (table, value) = match tab {
                Tab::Deployment => (
                    Table::Deployments,
                    self.deployments.get(name).map(serde_json::to_vec),
                ),
                Tab::Pod => (Table::Pods, self.pods.get(name).map(serde_json::to_vec)),
                Tab::Node => (Table::Nodes, self.nodes.get(name).map(serde_json::to_vec)),
                Tab::Revision => (
                    Table::Revisions,
                    self.revisions.get(name).map(serde_json::to_vec),
                ),
                Tab::Secret => (
                    Table::Secrets,
                    self.secrets.get(name).map(|s| {
                        self.secret_keeper
                            .to_store(name, s)
                            .map_err(serde::ser::Error::custom)
                    }),
                ),
            };
            match value {
                Some(Ok(bytes)) => ops.push(Op::Put(table, name.clone(), bytes)),
                Some(Err(e)) => tracing::error!(%name, error = %e, "cannot serialize an object"),
                None => ops.push(Op::Delete(table, name.clone())),
            }
        }
        for (seq, e) in (self.next_event..).zip(&self.new_events) {
            if let Ok(bytes) = serde_json::to_vec(e) {
                ops.push(Op::Put(Table::Events, event_key(seq), bytes));
            }
        }
        let total = self.events.len() + self.new_events.len();
        for (old, _) in self.events.iter().take(total.saturating_sub(MAX_EVENTS)) {
            ops.push(Op::Delete(Table::Events, event_key(*old)));
        }
        // New events beyond the bound within one transaction (a huge apply) are
        // written and trimmed at the next commit.
        ops
    }

    // ----- settling: controller, scheduler, desired state ---------------------------

    fn settle(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        self.run_controllers();
        self.schedule_pending();
        self.update_deployment_statuses();
        self.update_secret_blocks();
        self.update_desired();
    }

    fn owned<'a>(pods: &'a BTreeMap<String, api::Pod>, deployment: &str) -> Vec<&'a api::Pod> {
        pods.values()
            .filter(|p| p.metadata.owner.as_deref() == Some(deployment))
            .collect()
    }

    fn run_controllers(&mut self) {
        let names: Vec<String> = self.deployments.keys().cloned().collect();
        for name in names {
            self.sync_revisions(&name);
            let Some(d) = self.deployments.get(&name) else {
                continue;
            };
            let actions = {
                let owned = Self::owned(&self.pods, &name);
                let mut suffix = random_suffix;
                controller::reconcile_deployment(d, &owned, &mut suffix)
            };
            let (mut created, mut deleted) = (0u32, 0u32);
            for action in actions {
                match action {
                    Action::CreatePod(mut pod) => {
                        let pod_name = pod.metadata.name.clone();
                        if self.pods.contains_key(&pod_name) {
                            tracing::warn!(pod = %pod_name, "pod name taken; retrying at the next change");
                            continue;
                        }
                        pod.metadata.uid = new_uid();
                        pod.metadata.creation_timestamp = api::now_rfc3339();
                        pod.metadata.owner = Some(name.clone());
                        self.pods.insert(pod_name.clone(), pod);
                        self.touch(Tab::Pod, &pod_name);
                        self.record(
                            format!("pod/{pod_name}"),
                            "Created",
                            format!("Created by deployment {name}"),
                        );
                        created += 1;
                    }
                    Action::DeletePod(pod_name) => {
                        if self.terminate_pod(&pod_name, "Deleted by its deployment") {
                            deleted += 1;
                        }
                    }
                }
            }
            if created > 0 || deleted > 0 {
                let live = Self::owned(&self.pods, &name)
                    .into_iter()
                    .filter(|p| !controller::is_terminating(p))
                    .count();
                let msg = match (created, deleted) {
                    (c, 0) => format!("Scaled up to {live} replicas (created {c} pods)"),
                    (0, d) => format!("Scaled down to {live} replicas (deleted {d} pods)"),
                    (c, d) => format!("Replaced pods: created {c}, deleted {d}; {live} replicas"),
                };
                self.record(format!("deployment/{name}"), "ScalingReplicaSet", msg);
            }
        }
    }

    /// Brings a Deployment's stored revisions in line with its template.
    fn sync_revisions(&mut self, name: &str) {
        let Some(d) = self.deployments.get(name) else {
            return;
        };
        let plan = {
            let live: BTreeSet<String> = Self::owned(&self.pods, name)
                .into_iter()
                .filter(|p| !controller::is_terminating(p))
                .filter_map(|p| controller::hash_of(p).map(str::to_owned))
                .collect();
            let existing: Vec<&api::Revision> = self
                .revisions
                .values()
                .filter(|r| r.deployment == name)
                .collect();
            rollout::sync_revisions(d, &existing, &live, &api::now_rfc3339())
        };
        for rev in plan.delete {
            let key = rollout::revision_key(name, rev);
            self.revisions.remove(&key);
            self.touch(Tab::Revision, &key);
        }
        for r in plan.put {
            let key = rollout::revision_key(name, r.revision);
            self.revisions.insert(key.clone(), r);
            self.touch(Tab::Revision, &key);
        }
    }

    /// A Deployment's revisions, oldest first.
    fn revisions_of(&self, name: &str) -> Vec<&api::Revision> {
        let mut revs: Vec<&api::Revision> = self
            .revisions
            .values()
            .filter(|r| r.deployment == name)
            .collect();
        revs.sort_by_key(|r| r.revision);
        revs
    }

    /// Starts deleting a pod; returns whether anything changed.
    ///
    /// A Ready pod may be serving, so it is marked terminating (`deletionTimestamp`) and
    /// stays in its node's desired state for the drain period (see
    /// [`Core::with_pod_drain`]); [`Core::expire_drains`] removes it afterwards. A pod
    /// that is not Ready serves no one and goes at once.
    fn terminate_pod(&mut self, name: &str, why: &str) -> bool {
        let Some(pod) = self.pods.get_mut(name) else {
            return false;
        };
        if controller::is_terminating(pod) {
            return false;
        }
        if controller::is_ready(pod) && !self.pod_drain.is_zero() {
            pod.metadata.deletion_timestamp = Some(api::now_rfc3339());
            self.draining
                .insert(name.to_owned(), Instant::now() + self.pod_drain);
        } else {
            self.pods.remove(name);
        }
        self.touch(Tab::Pod, name);
        self.record(format!("pod/{name}"), "Killing", why.to_owned());
        true
    }

    /// Removes terminating pods whose drain period is over, which takes them out of
    /// their node's desired state.
    fn expire_drains(&mut self) {
        let now = Instant::now();
        let done: Vec<String> = self
            .draining
            .iter()
            .filter(|(_, end)| **end <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in done {
            self.draining.remove(&name);
            if self.pods.remove(&name).is_some() {
                self.touch(Tab::Pod, &name);
            }
        }
    }

    /// What each node's pods already request (terminated pods release theirs), and how
    /// many pods of each owner each node runs, for spreading.
    fn usage_by_node(&self) -> (HashMap<String, Usage>, HashMap<(String, String), u32>) {
        let mut usage: HashMap<String, Usage> = HashMap::new();
        let mut by_owner: HashMap<(String, String), u32> = HashMap::new();
        for p in self.pods.values() {
            let Some(node) = &p.spec.node_name else {
                continue;
            };
            if matches!(
                p.status.phase,
                api::PodPhase::Succeeded | api::PodPhase::Failed
            ) {
                continue;
            }
            let req = scheduler::pod_requests(&p.spec).unwrap_or(Usage {
                pods: 1,
                ..Usage::default()
            });
            usage.entry(node.clone()).or_default().add(req);
            if let Some(owner) = &p.metadata.owner {
                *by_owner.entry((node.clone(), owner.clone())).or_default() += 1;
            }
        }
        (usage, by_owner)
    }

    fn schedule_pending(&mut self) {
        let pending: Vec<String> = self
            .pods
            .values()
            .filter(|p| p.spec.node_name.is_none())
            .map(|p| p.metadata.name.clone())
            .collect();
        if pending.is_empty() {
            return;
        }
        let (mut usage, mut by_owner) = self.usage_by_node();
        // Host ports taken per node, so two pods never claim the same node port.
        let mut ports: HashMap<String, BTreeSet<scheduler::HostPort>> = HashMap::new();
        for p in self.pods.values() {
            let Some(node) = &p.spec.node_name else {
                continue;
            };
            if !matches!(
                p.status.phase,
                api::PodPhase::Succeeded | api::PodPhase::Failed
            ) {
                ports
                    .entry(node.clone())
                    .or_default()
                    .extend(scheduler::host_ports(&p.spec));
            }
        }
        for name in pending {
            let Some(pod) = self.pods.get(&name) else {
                continue;
            };
            let owner = pod.metadata.owner.clone().unwrap_or_default();
            let wanted_ports = scheduler::host_ports(&pod.spec);
            let result = {
                // Not-ready nodes are candidates too: the scheduler filters them out and
                // counts them in its "0/N nodes are available" message.
                let candidates: Vec<Candidate<'_>> = self
                    .nodes
                    .values()
                    .map(|n| Candidate {
                        node: n,
                        host_ports: ports.get(&n.metadata.name).cloned().unwrap_or_default(),
                        used: usage.get(&n.metadata.name).copied().unwrap_or_default(),
                        pods_of_same_owner: if owner.is_empty() {
                            0
                        } else {
                            by_owner
                                .get(&(n.metadata.name.clone(), owner.clone()))
                                .copied()
                                .unwrap_or(0)
                        },
                    })
                    .collect();
                scheduler::schedule(&pod.spec, &candidates)
            };
            match result {
                Ok(node) => {
                    let req = scheduler::pod_requests(&pod.spec).unwrap_or(Usage {
                        pods: 1,
                        ..Usage::default()
                    });
                    let host_ip = self.nodes.get(&node).and_then(|n| n.status.address.clone());
                    if let Some(pod) = self.pods.get_mut(&name) {
                        pod.spec.node_name = Some(node.clone());
                        pod.status.reason = None;
                        pod.status.message = None;
                        pod.status.host_ip = host_ip;
                    }
                    usage.entry(node.clone()).or_default().add(req);
                    ports.entry(node.clone()).or_default().extend(wanted_ports);
                    if !owner.is_empty() {
                        *by_owner.entry((node.clone(), owner)).or_default() += 1;
                    }
                    self.touch(Tab::Pod, &name);
                    self.record(
                        format!("pod/{name}"),
                        "Scheduled",
                        format!("Successfully assigned {name} to {node}"),
                    );
                }
                Err(unschedulable) => {
                    let Some(pod) = self.pods.get_mut(&name) else {
                        continue;
                    };
                    let msg = unschedulable.reason;
                    if pod.status.reason.as_deref() != Some("Unschedulable")
                        || pod.status.message.as_deref() != Some(&msg)
                    {
                        pod.status.phase = api::PodPhase::Pending;
                        pod.status.reason = Some("Unschedulable".into());
                        pod.status.message = Some(msg.clone());
                        self.touch(Tab::Pod, &name);
                        self.record(format!("pod/{name}"), "FailedScheduling", msg);
                    }
                }
            }
        }
    }

    fn update_deployment_statuses(&mut self) {
        let mut changed = Vec::new();
        for (name, d) in &self.deployments {
            let status = controller::deployment_status(d, &Self::owned(&self.pods, name));
            if status != d.status {
                changed.push((name.clone(), status));
            }
        }
        for (name, status) in changed {
            if let Some(d) = self.deployments.get_mut(&name) {
                d.status = status;
                self.touch(Tab::Deployment, &name);
            }
        }
    }

    /// The pods a node should run, sorted by name, in wire form.
    fn desired_pods(&self, node: &str) -> Vec<proto::PodSpec> {
        let mut out = Vec::new();
        if self.revoked.contains(node) {
            return out;
        }
        for p in self
            .pods
            .values()
            .filter(|p| p.spec.node_name.as_deref() == Some(node))
            .filter(|p| self.secret_blocker(p).is_none())
        {
            match wire::pod_spec(p) {
                Ok(spec) => out.push(spec),
                Err(e) => {
                    tracing::error!(node, error = %e, "pod cannot be sent to its node; left out")
                }
            }
        }
        out
    }

    fn desired_message(&self, node: &str) -> Option<Outbound> {
        let n = self.nodes.get(node)?;
        let name = NodeName::new(node).ok()?;
        let mut pods = self.desired.get(node).cloned().unwrap_or_default();
        if pods.len() > proto::MAX_PODS_PER_NODE {
            tracing::error!(
                node,
                pods = pods.len(),
                "more pods than a node can be sent; truncated"
            );
            pods.truncate(proto::MAX_PODS_PER_NODE);
        }
        let pods = proto::BVec::from_vec(pods).ok()?;
        let secrets = self.sealed_secrets(node);
        Some(Outbound {
            node: name,
            body: Body::Desired(proto::DesiredState {
                generation: n.status.desired_generation,
                pods,
                secrets,
            }),
            retain: true,
        })
    }

    /// Asks a node for a full status; also makes an agent whose Hello was lost say it again.
    fn request_status(&mut self, node: &NodeName) {
        self.pending_out.push(Outbound {
            node: node.clone(),
            body: Body::StatusRequest,
            retain: false,
        });
    }

    /// The node's liveness record, created as seen now if it has none yet.
    fn live_entry(&mut self, name: &str, now: Instant) -> &mut Live {
        self.live.entry(name.to_owned()).or_insert(Live {
            last_seen: now,
            status_digest: None,
        })
    }

    fn publish_desired(&mut self, node: &str) {
        if let Some(msg) = self.desired_message(node) {
            self.pending_out.push(msg);
        }
    }

    /// Bumps the generation of every node whose desired content changed, and publishes it.
    fn update_desired(&mut self) {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for node in names {
            let pods = self.desired_pods(&node);
            let secrets = self.desired_secret_list_for(&node, &pods);
            if self.desired.get(&node) == Some(&pods)
                && self.desired_secrets.get(&node) == Some(&secrets)
            {
                continue;
            }
            self.desired.insert(node.clone(), pods);
            self.desired_secrets.insert(node.clone(), secrets);
            if let Some(n) = self.nodes.get_mut(&node) {
                n.status.desired_generation += 1;
                tracing::debug!(%node, generation = n.status.desired_generation, "desired state changed");
            }
            self.touch(Tab::Node, &node);
            self.publish_desired(&node);
        }
    }

    // ----- node messages ---------------------------------------------------------

    fn set_ready(&mut self, node: &str, ready: bool, why: &str) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if n.status.ready == ready {
            return;
        }
        n.status.ready = ready;
        n.status.last_heartbeat = api::now_rfc3339();
        if ready {
            self.not_ready_since.remove(node);
        } else {
            self.not_ready_since.insert(node.to_owned(), Instant::now());
        }
        self.touch(Tab::Node, node);
        let reason = if ready { "NodeReady" } else { "NodeNotReady" };
        self.record(format!("node/{node}"), reason, why.to_owned());
    }

    /// Records the generation a node has applied. It changes only when the desired state
    /// does, so persisting it costs little and `get nodes` shows it across restarts.
    fn set_applied(&mut self, node: &str, generation: u64) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if n.status.applied_generation != generation {
            n.status.applied_generation = generation;
            self.touch(Tab::Node, node);
        }
    }

    fn inbound(&mut self, node: &NodeName, body: Body) {
        let name = node.as_str();
        let now = Instant::now();
        match body {
            Body::Hello(h) => {
                let mut n = wire::node_from_hello(node, &h);
                let is_new = !self.nodes.contains_key(name);
                if let Some(old) = self.nodes.get(name) {
                    n.metadata.uid = old.metadata.uid.clone();
                    n.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
                    n.status.desired_generation = old.status.desired_generation;
                    // An agent repeats its report in every Hello of one connection, and
                    // sends none after connecting at once: keep the first report's time,
                    // and the last report until there is a new one.
                    match (
                        &mut n.status.last_connect_error,
                        &old.status.last_connect_error,
                    ) {
                        (None, old_err) => n.status.last_connect_error = old_err.clone(),
                        (Some(new), Some(old_err))
                            if new.message == old_err.message && old.status.ready =>
                        {
                            new.reported_at = old_err.reported_at.clone();
                        }
                        _ => {}
                    }
                } else {
                    n.metadata.uid = new_uid();
                    n.metadata.creation_timestamp = api::now_rfc3339();
                }
                // Even an empty desired state gets a generation >= 1, so that a returning
                // agent learns it should run nothing and drops what it still has.
                n.status.desired_generation = n.status.desired_generation.max(1);
                let was_ready = self.nodes.get(name).is_some_and(|o| o.status.ready);
                self.nodes.insert(name.to_owned(), n);
                self.touch(Tab::Node, name);
                self.live.insert(
                    name.to_owned(),
                    Live {
                        last_seen: now,
                        status_digest: None,
                    },
                );
                if is_new {
                    self.record(
                        format!("node/{name}"),
                        "RegisteredNode",
                        format!("Node {name} joined"),
                    );
                }
                if !was_ready {
                    self.record(
                        format!("node/{name}"),
                        "NodeReady",
                        "Agent said hello".into(),
                    );
                }
                // Republish what the node should run (the broker may have lost the retained
                // copy). If scheduling in this transaction changes it, `update_desired`
                // follows with the next generation.
                if !self.desired.contains_key(name) {
                    let pods = self.desired_pods(name);
                    self.desired.insert(name.to_owned(), pods);
                }
                self.publish_desired(name);
                // No StatusRequest here: an agent sends its status right after every Hello,
                // and answers a StatusRequest with a Hello, so asking made the two ping-pong
                // (about 30 Hellos a second per agent, each a store commit). A lost status
                // still shows as a digest mismatch on the next heartbeat, which asks then.
            }
            Body::Heartbeat(hb) => {
                if !self.nodes.contains_key(name) {
                    // Its Hello was lost (sent before we subscribed): a StatusRequest makes
                    // the agent say Hello again.
                    tracing::debug!(node = name, "heartbeat from an unknown node; asking it");
                    self.request_status(node);
                    return;
                }
                let live = self.live_entry(name, now);
                live.last_seen = now;
                let digest_differs = live.status_digest != Some(hb.status_digest);
                self.set_ready(name, true, "Heartbeat received");
                self.set_applied(name, hb.applied_generation);
                let Some(n) = self.nodes.get_mut(name) else {
                    return;
                };
                n.status.last_heartbeat = api::now_rfc3339();
                if hb.applied_generation != n.status.desired_generation {
                    tracing::debug!(
                        node = name,
                        applied = hb.applied_generation,
                        desired = n.status.desired_generation,
                        "republishing desired state"
                    );
                    self.publish_desired(name);
                }
                if digest_differs {
                    self.request_status(node);
                }
            }
            Body::Status(st) => {
                if !self.nodes.contains_key(name) {
                    tracing::debug!(node = name, "status from an unknown node; ignored");
                    return;
                }
                let live = self.live_entry(name, now);
                live.last_seen = now;
                live.status_digest = Some(st.digest());
                self.set_applied(name, st.applied_generation);
                let host_ip = self.nodes.get(name).and_then(|n| n.status.address.clone());
                for ps in st.pods.iter() {
                    let Some(pod) = self.pods.get_mut(ps.name.as_str()) else {
                        continue;
                    };
                    if pod.metadata.uid != ps.uid.as_str()
                        || pod.spec.node_name.as_deref() != Some(name)
                    {
                        continue; // an older incarnation, or a pod moved away
                    }
                    let new = wire::pod_status(ps, &pod.spec, host_ip.clone());
                    if new == pod.status {
                        continue;
                    }
                    let old = std::mem::replace(&mut pod.status, new);
                    let pod_name = pod.metadata.name.clone();
                    let transitions = container_transitions(&old, &pod.status);
                    self.touch(Tab::Pod, &pod_name);
                    for (reason, msg) in transitions {
                        self.record(format!("pod/{pod_name}"), reason, msg);
                    }
                }
            }
            Body::Offline => {
                if let Some(live) = self.live.get_mut(name) {
                    live.status_digest = None;
                }
                self.set_ready(name, false, "Agent went offline (last will)");
            }
            Body::Desired(_) | Body::StatusRequest | Body::RotateKey => {
                tracing::warn!(node = name, "downward message on an upward topic; ignored");
            }
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let stale: Vec<String> = self
            .nodes
            .values()
            .filter(|n| n.status.ready)
            .filter(|n| {
                self.live
                    .get(&n.metadata.name)
                    .is_none_or(|l| now.duration_since(l.last_seen) >= self.heartbeat_timeout)
            })
            .map(|n| n.metadata.name.clone())
            .collect();
        for name in stale {
            if let Some(live) = self.live.get_mut(&name) {
                live.status_digest = None;
            }
            let why = format!("No heartbeat for {}s", self.heartbeat_timeout.as_secs());
            self.set_ready(&name, false, &why);
        }
        self.evict_from_lost_nodes(now);
    }

    /// Deletes the Deployment pods of nodes NotReady for longer than the eviction timeout.
    /// Settling then lets their Deployments create replacements, which the scheduler puts
    /// on Ready nodes, and removes them from the lost node's desired state, so that the
    /// node stops them as soon as it is back (it gets that state retained on reconnect,
    /// and again on Hello or a heartbeat with an older generation).
    fn evict_from_lost_nodes(&mut self, now: Instant) {
        let lost: Vec<String> = self
            .nodes
            .values()
            .filter(|n| !n.status.ready)
            .filter(|n| {
                self.not_ready_since
                    .get(&n.metadata.name)
                    .is_some_and(|since| now.duration_since(*since) >= self.pod_eviction_timeout)
            })
            .map(|n| n.metadata.name.clone())
            .collect();
        for node in lost {
            let why = format!("NotReady for {}s", self.pod_eviction_timeout.as_secs());
            self.evict_node(&node, &why);
        }
    }

    /// Deletes the Deployment pods on `node` (their Deployments replace them elsewhere).
    fn evict_node(&mut self, node: &str, why: &str) {
        {
            let evict: Vec<String> = self
                .pods
                .values()
                .filter(|p| p.spec.node_name.as_deref() == Some(node))
                .filter(|p| p.metadata.owner.is_some())
                .map(|p| p.metadata.name.clone())
                .collect();
            if evict.is_empty() {
                return;
            }
            self.record(
                format!("node/{node}"),
                "NodeLost",
                format!("{why}: evicting {} pod(s) of deployments", evict.len()),
            );
            for name in evict {
                self.pods.remove(&name);
                self.draining.remove(&name);
                self.touch(Tab::Pod, &name);
                self.record(
                    format!("pod/{name}"),
                    "Evicted",
                    format!("Node {node} was lost; its deployment replaces the pod elsewhere"),
                );
            }
        }
    }

    // ----- API ---------------------------------------------------------------------

    fn api(&mut self, op: ApiOp) -> Result<ApiReply, ApiError> {
        match op {
            ApiOp::Apply { yaml } => self.apply(&yaml).map(ApiReply::Applied),
            ApiOp::Get {
                kind,
                name: Some(name),
            } => self.get_one(kind, &name).map(ApiReply::Object),
            ApiOp::Get { kind, name: None } => Ok(ApiReply::Objects(self.get_all(kind))),
            ApiOp::Delete { kind, name } => self.delete(kind, &name),
            ApiOp::Scale { name, replicas } => self.scale(&name, replicas),
            ApiOp::Describe { kind, name } => {
                let object = self.get_one(kind, &name)?;
                let events = self.events_of(Some(&format!("{}/{name}", kind.as_str())));
                Ok(ApiReply::Described { object, events })
            }
            ApiOp::Events { object } => Ok(ApiReply::Events(self.events_of(object.as_deref()))),
            ApiOp::RolloutStatus { name } => {
                let d = self
                    .deployments
                    .get(&name)
                    .ok_or_else(|| Self::not_found(ResourceKind::Deployment, &name))?;
                let revision = self.revisions_of(&name).last().map_or(0, |r| r.revision);
                let owned = Self::owned(&self.pods, &name);
                Ok(ApiReply::Rollout(rollout::rollout_progress(
                    d, &owned, revision,
                )))
            }
            ApiOp::RolloutHistory { name } => {
                if !self.deployments.contains_key(&name) {
                    return Err(Self::not_found(ResourceKind::Deployment, &name));
                }
                Ok(ApiReply::Revisions(
                    self.revisions_of(&name).into_iter().cloned().collect(),
                ))
            }
            ApiOp::RolloutUndo { name, to_revision } => self.undo(&name, to_revision),
            ApiOp::SetRevoked { name, revoked } => Ok(self.set_revoked(&name, revoked)),
        }
    }

    /// A revoked node is shut out like a lost one, at once: NotReady (its messages are
    /// refused, so it never becomes Ready again), its Deployment pods evicted and
    /// replaced elsewhere, and its desired state emptied (published once, so an honest
    /// agent stops its pods). Re-enrolling takes it back.
    fn set_revoked(&mut self, node: &str, revoked: bool) -> ApiReply {
        if revoked {
            if self.revoked.insert(node.to_owned()) {
                self.set_ready(node, false, "Node identity revoked");
                self.record(
                    format!("node/{node}"),
                    "Revoked",
                    "Node identity revoked: its messages are refused".into(),
                );
                self.evict_node(node, "Node identity revoked");
            }
        } else if self.revoked.remove(node) {
            self.record(
                format!("node/{node}"),
                "Enrolled",
                "Node enrolled again with a new identity".into(),
            );
        }
        ApiReply::Revocation(Revocation {
            node: node.to_owned(),
            revoked,
        })
    }

    /// `rollout undo`: puts an earlier revision's template back; the controller then
    /// rolls it out like any template change, and revision bookkeeping renumbers it.
    fn undo(&mut self, name: &str, to: Option<u64>) -> Result<ApiReply, ApiError> {
        let d = self
            .deployments
            .get(name)
            .ok_or_else(|| Self::not_found(ResourceKind::Deployment, name))?;
        let current = controller::template_hash(&d.spec.template);
        let (revision, hash, template) = {
            let revs = self.revisions_of(name);
            let target = rollout::undo_target(name, &revs, &current, to).map_err(|e| match e {
                RolloutError::RevisionNotFound(_) => ApiError::NotFound(e.to_string()),
                RolloutError::NoHistory(_) => ApiError::BadRequest(e.to_string()),
            })?;
            (
                target.revision,
                target.template_hash.clone(),
                target.template.clone(),
            )
        };
        let rolled_back = hash != current;
        if rolled_back {
            if let Some(d) = self.deployments.get_mut(name) {
                d.spec.template = template;
                d.metadata.generation += 1;
            }
            self.touch(Tab::Deployment, name);
            self.record(
                format!("deployment/{name}"),
                "DeploymentRollback",
                format!("Rolled back deployment {name} to revision {revision}"),
            );
        }
        Ok(ApiReply::RolledBack(UndoResult {
            rolled_back,
            revision,
        }))
    }

    fn events_of(&self, object: Option<&str>) -> Vec<api::Event> {
        self.events
            .iter()
            .map(|(_, e)| e)
            .filter(|e| object.is_none_or(|o| e.object == o))
            .cloned()
            .collect()
    }

    fn not_found(kind: ResourceKind, name: &str) -> ApiError {
        ApiError::NotFound(format!("{} {name:?} not found", kind.as_str()))
    }

    /// A pod as the API shows it: on a node that is not ready, its phase is `Unknown`.
    fn pod_view(&self, p: &api::Pod) -> ApiObject {
        let lost = p
            .spec
            .node_name
            .as_ref()
            .is_some_and(|n| self.nodes.get(n).is_some_and(|n| !n.status.ready));
        if lost {
            let mut p = p.clone();
            p.status.phase = api::PodPhase::Unknown;
            p.status.reason = Some("NodeLost".into());
            ApiObject::Pod(p)
        } else {
            ApiObject::Pod(p.clone())
        }
    }

    fn get_one(&self, kind: ResourceKind, name: &str) -> Result<ApiObject, ApiError> {
        let v = match kind {
            ResourceKind::Node => self.nodes.get(name).cloned().map(ApiObject::Node),
            ResourceKind::Deployment => self
                .deployments
                .get(name)
                .cloned()
                .map(ApiObject::Deployment),
            ResourceKind::Pod => self.pods.get(name).map(|p| self.pod_view(p)),
            ResourceKind::Secret => self.secrets.get(name).map(secret_view),
        };
        v.ok_or_else(|| Self::not_found(kind, name))
    }

    fn get_all(&self, kind: ResourceKind) -> Vec<ApiObject> {
        match kind {
            ResourceKind::Node => self.nodes.values().cloned().map(ApiObject::Node).collect(),
            ResourceKind::Deployment => self
                .deployments
                .values()
                .cloned()
                .map(ApiObject::Deployment)
                .collect(),
            ResourceKind::Pod => self.pods.values().map(|p| self.pod_view(p)).collect(),
            ResourceKind::Secret => self.secrets.values().map(secret_view).collect(),
        }
    }

    fn apply(&mut self, yaml: &str) -> Result<Vec<Applied>, ApiError> {
        let objects =
            manifest::parse_manifests(yaml).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        // Validate everything before changing anything: all or nothing.
        for o in &objects {
            match o {
                api::Object::Deployment(d) => {
                    let probe = controller::new_pod(
                        d,
                        &controller::template_hash(&d.spec.template),
                        "xxxxx",
                    );
                    check_wire(&probe, &format!("deployment {:?}", d.metadata.name))?;
                    policy::check_pod(&d.spec.template.spec, "spec.template.spec", &self.policy)
                        .map_err(|e| {
                            ApiError::BadRequest(format!("deployment {:?}: {e}", d.metadata.name))
                        })?;
                }
                api::Object::Secret(_) => {}
                api::Object::Pod(p) => {
                    check_wire(p, &format!("pod {:?}", p.metadata.name))?;
                    policy::check_pod(&p.spec, "spec", &self.policy).map_err(|e| {
                        ApiError::BadRequest(format!("pod {:?}: {e}", p.metadata.name))
                    })?;
                    if let Some(old) = self.pods.get(&p.metadata.name) {
                        let mut old_spec = old.spec.clone();
                        old_spec.node_name = p.spec.node_name.clone();
                        if old_spec != p.spec {
                            return Err(ApiError::Conflict(format!(
                                "pod {:?}: a pod's spec cannot be changed; delete the pod and apply again",
                                p.metadata.name
                            )));
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        for o in objects {
            out.push(match o {
                api::Object::Deployment(d) => self.apply_deployment(d),
                api::Object::Pod(p) => self.apply_pod(p),
                api::Object::Secret(s) => self.apply_secret(s),
            });
        }
        Ok(out)
    }

    fn apply_deployment(&mut self, mut d: api::Deployment) -> Applied {
        let name = d.metadata.name.clone();
        let action = match self.deployments.get(&name) {
            None => {
                d.metadata.uid = new_uid();
                d.metadata.creation_timestamp = api::now_rfc3339();
                d.metadata.generation = 1;
                d.metadata.owner = None;
                d.status = api::DeploymentStatus::default();
                self.deployments.insert(name.clone(), d);
                ApplyAction::Created
            }
            Some(old) => {
                let spec_changed = old.spec != d.spec;
                let meta_changed = old.metadata.labels != d.metadata.labels
                    || old.metadata.annotations != d.metadata.annotations;
                if !spec_changed && !meta_changed {
                    ApplyAction::Unchanged
                } else {
                    let mut new = old.clone();
                    new.metadata.labels = d.metadata.labels;
                    new.metadata.annotations = d.metadata.annotations;
                    if spec_changed {
                        new.spec = d.spec;
                        new.metadata.generation += 1;
                    }
                    self.deployments.insert(name.clone(), new);
                    ApplyAction::Configured
                }
            }
        };
        if action != ApplyAction::Unchanged {
            self.touch(Tab::Deployment, &name);
        }
        Applied {
            kind: ResourceKind::Deployment,
            name,
            action,
        }
    }

    /// Stores a Secret as given (its content replaces the old one). Distributing secrets
    /// to the nodes whose pods use them is not done here.
    fn apply_secret(&mut self, mut s: api::Secret) -> Applied {
        let name = s.metadata.name.clone();
        let action = match self.secrets.get(&name) {
            None => {
                s.metadata.uid = new_uid();
                s.metadata.creation_timestamp = api::now_rfc3339();
                s.metadata.generation = 1;
                ApplyAction::Created
            }
            Some(old) => {
                if old.type_ == s.type_
                    && old.data == s.data
                    && old.metadata.labels == s.metadata.labels
                    && old.metadata.annotations == s.metadata.annotations
                {
                    return Applied {
                        kind: ResourceKind::Secret,
                        name,
                        action: ApplyAction::Unchanged,
                    };
                }
                s.metadata.uid = old.metadata.uid.clone();
                s.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
                s.metadata.generation = old.metadata.generation + 1;
                ApplyAction::Configured
            }
        };
        self.secrets.insert(name.clone(), s);
        self.touch(Tab::Secret, &name);
        Applied {
            kind: ResourceKind::Secret,
            name,
            action,
        }
    }

    fn apply_pod(&mut self, mut p: api::Pod) -> Applied {
        let name = p.metadata.name.clone();
        let action = match self.pods.get_mut(&name) {
            None => {
                p.metadata.uid = new_uid();
                p.metadata.creation_timestamp = api::now_rfc3339();
                p.metadata.generation = 1;
                p.metadata.owner = None;
                p.status = api::PodStatus::default();
                self.pods.insert(name.clone(), p);
                self.record(format!("pod/{name}"), "Created", "Created by apply".into());
                ApplyAction::Created
            }
            Some(old) => {
                if old.metadata.labels == p.metadata.labels
                    && old.metadata.annotations == p.metadata.annotations
                {
                    ApplyAction::Unchanged
                } else {
                    old.metadata.labels = p.metadata.labels;
                    old.metadata.annotations = p.metadata.annotations;
                    ApplyAction::Configured
                }
            }
        };
        if action != ApplyAction::Unchanged {
            self.touch(Tab::Pod, &name);
        }
        Applied {
            kind: ResourceKind::Pod,
            name,
            action,
        }
    }

    fn delete(&mut self, kind: ResourceKind, name: &str) -> Result<ApiReply, ApiError> {
        match kind {
            ResourceKind::Node => {
                return Err(ApiError::BadRequest(
                    "deleting nodes is not supported yet".into(),
                ));
            }
            ResourceKind::Deployment => {
                if self.deployments.remove(name).is_none() {
                    return Err(Self::not_found(kind, name));
                }
                self.touch(Tab::Deployment, name);
                let owned: Vec<String> = Self::owned(&self.pods, name)
                    .into_iter()
                    .map(|p| p.metadata.name.clone())
                    .collect();
                for pod in owned {
                    self.terminate_pod(&pod, &format!("Deployment {name} deleted"));
                }
                let revs: Vec<String> = self
                    .revisions_of(name)
                    .into_iter()
                    .map(|r| rollout::revision_key(name, r.revision))
                    .collect();
                for key in revs {
                    self.revisions.remove(&key);
                    self.touch(Tab::Revision, &key);
                }
                self.record(
                    format!("deployment/{name}"),
                    "Deleted",
                    "Deleted by the user".into(),
                );
            }
            ResourceKind::Secret => {
                if self.secrets.remove(name).is_none() {
                    return Err(Self::not_found(kind, name));
                }
                self.touch(Tab::Secret, name);
            }
            ResourceKind::Pod => {
                if !self.pods.contains_key(name) {
                    return Err(Self::not_found(kind, name));
                }
                // Deleting a pod that is already terminating is not an error.
                self.terminate_pod(name, "Deleted by the user");
            }
        }
        Ok(ApiReply::Deleted {
            kind,
            name: name.to_owned(),
        })
    }

    fn scale(&mut self, name: &str, replicas: u32) -> Result<ApiReply, ApiError> {
        if i64::from(replicas) > manifest::MAX_REPLICAS {
            return Err(ApiError::BadRequest(format!(
                "replicas: at most {} are allowed",
                manifest::MAX_REPLICAS
            )));
        }
        let d = self
            .deployments
            .get_mut(name)
            .ok_or_else(|| Self::not_found(ResourceKind::Deployment, name))?;
        if d.spec.replicas != replicas {
            d.spec.replicas = replicas;
            d.metadata.generation += 1;
            self.touch(Tab::Deployment, name);
        }
        self.get_one(ResourceKind::Deployment, name)
            .map(ApiReply::Object)
    }
}

/// Secrets in nodes' desired states (see `crate::security::secrets` for the rules).
impl Core {
    /// Why `p` cannot be sent to its node yet (a `CreateContainerConfigError` message).
    fn secret_blocker(&self, p: &api::Pod) -> Option<String> {
        let node = p.spec.node_name.as_deref()?;
        self.secret_keeper.blocker(&p.spec, node, &self.secrets)
    }

    /// The secrets `pods` (a node's desired pods) reference, as sent to `node`.
    fn desired_secret_list_for(
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

    fn desired_secret_list(&self, node: &str) -> Vec<crate::security::secrets::SentSecret> {
        let pods = self
            .desired
            .get(node)
            .map(Vec::as_slice)
            .unwrap_or_default();
        self.desired_secret_list_for(node, pods)
    }

    /// The node's secrets, sealed to its key (cached seals are reused).
    fn sealed_secrets(
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
    fn update_secret_blocks(&mut self) {
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
    fn recheck_secrets(&mut self) {
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

/// A Secret as the API shows it: metadata, type and each key's size in bytes
/// (`dataSizes`), never a value.
fn secret_view(s: &api::Secret) -> ApiObject {
    ApiObject::Secret(SecretView {
        api_version: s.api_version.clone(),
        kind: s.kind.clone(),
        metadata: s.metadata.clone(),
        type_: s.type_.as_str().to_owned(),
        data_sizes: s.data.iter().map(|(k, v)| (k.clone(), v.len())).collect(),
    })
}

fn check_wire(pod: &api::Pod, what: &str) -> Result<(), ApiError> {
    let mut probe = pod.clone();
    probe.metadata.uid = "00000000-0000-0000-0000-000000000000".into();
    wire::pod_spec(&probe)
        .map(|_| ())
        .map_err(|e| ApiError::BadRequest(format!("{what}: {e}")))
}

/// Events worth recording when a pod's container states change.
fn container_transitions(
    old: &api::PodStatus,
    new: &api::PodStatus,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for c in &new.container_statuses {
        let before = old.container_statuses.iter().find(|o| o.name == c.name);
        let same_state = before.is_some_and(|b| {
            std::mem::discriminant(&b.state) == std::mem::discriminant(&c.state)
                && b.restart_count == c.restart_count
        });
        if same_state {
            continue;
        }
        let n = &c.name;
        match &c.state {
            api::ContainerState::Pulling => {
                out.push(("Pulling", format!("Pulling image for container {n}")))
            }
            api::ContainerState::Running { .. } => {
                out.push(("Started", format!("Started container {n}")))
            }
            api::ContainerState::OOMKilled => out.push((
                "OOMKilled",
                format!("Container {n} was killed: out of memory"),
            )),
            api::ContainerState::Exited { exit_code: 0 } => {
                out.push(("Completed", format!("Container {n} exited with code 0")))
            }
            api::ContainerState::Exited { exit_code } => out.push((
                "Error",
                format!("Container {n} exited with code {exit_code}"),
            )),
            api::ContainerState::Failed { reason } => {
                out.push(("Failed", format!("Container {n}: {reason}")))
            }
            api::ContainerState::Pending => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use baton_proto::{
        BString, BVec, Capacity, ContainerState, ContainerStatus, DesiredState, Heartbeat, Hello,
        NodeStatus, PodStatus,
    };

    const TIMEOUT: Duration = Duration::from_secs(20);

    fn deployment(name: &str, replicas: u32, cpu: &str) -> String {
        format!(
            "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: main
        image: busybox:1.36
        resources:
          limits: {{cpu: {cpu}, memory: 32Mi}}
"
        )
    }

    struct Harness {
        core: Core,
        out: mpsc::Receiver<Outbound>,
        store: Arc<MemStore>,
    }

    fn nn(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    fn hello(cpu_millis: u32) -> Body {
        Body::Hello(Hello {
            arch: "arm64".try_into().unwrap(),
            arch_variant: Default::default(),
            os: "linux".try_into().unwrap(),
            agent_version: "0.1.0".try_into().unwrap(),
            allocatable: Capacity {
                cpu_millis,
                memory_bytes: 1 << 30,
                pods: 110,
            },
            labels: BVec::new(),
            address: Some("192.168.1.10".parse().unwrap()),
            pod_cidr: BString::new("10.42.1.0/24").unwrap(),
            applied_generation: 0,
            last_connect_error: None,
        })
    }

    impl Harness {
        fn new(store: Arc<MemStore>) -> Self {
            let (tx, out) = mpsc::channel(1024);
            let core = Core::new(store.clone(), tx, TIMEOUT).unwrap();
            Self { core, out, store }
        }
        fn api(&mut self, op: ApiOp) -> Result<ApiReply, ApiError> {
            let (req, mut rx) = ApiRequest::new(op);
            self.core.handle(Event::Api(req));
            rx.try_recv().expect("the core answers every request")
        }
        fn apply(&mut self, yaml: &str) -> Result<Vec<Applied>, ApiError> {
            match self.api(ApiOp::Apply { yaml: yaml.into() })? {
                ApiReply::Applied(a) => Ok(a),
                other => panic!("unexpected {other:?}"),
            }
        }
        fn send(&mut self, node: &str, body: Body) {
            self.core.handle(Event::Inbound {
                node: nn(node),
                body,
            });
        }
        fn drain(&mut self) -> Vec<Outbound> {
            let mut v = Vec::new();
            while let Ok(m) = self.out.try_recv() {
                v.push(m);
            }
            v
        }
        fn pods(&mut self) -> Vec<api::Pod> {
            match self
                .api(ApiOp::Get {
                    kind: ResourceKind::Pod,
                    name: None,
                })
                .unwrap()
            {
                ApiReply::Objects(o) => o
                    .into_iter()
                    .map(|v| match v {
                        ApiObject::Pod(p) => p,
                        other => panic!("not a pod: {other:?}"),
                    })
                    .collect(),
                other => panic!("unexpected {other:?}"),
            }
        }
        fn node(&mut self, name: &str) -> api::Node {
            match self
                .api(ApiOp::Get {
                    kind: ResourceKind::Node,
                    name: Some(name.into()),
                })
                .unwrap()
            {
                ApiReply::Object(ApiObject::Node(n)) => n,
                other => panic!("unexpected {other:?}"),
            }
        }
        fn snapshot(&self) -> Vec<Vec<(String, Vec<u8>)>> {
            [Table::Deployments, Table::Pods, Table::Nodes, Table::Events]
                .into_iter()
                .map(|t| self.store.list(t).unwrap())
                .collect()
        }
    }

    /// The last desired state sent to `node` among `msgs`.
    fn desired_for(msgs: &[Outbound], node: &str) -> Option<DesiredState> {
        msgs.iter().rev().find_map(|m| match &m.body {
            Body::Desired(d) if m.node.as_str() == node => {
                assert!(m.retain, "desired state is published retained");
                Some(d.clone())
            }
            _ => None,
        })
    }

    fn status_requests(msgs: &[Outbound], node: &str) -> usize {
        msgs.iter()
            .filter(|m| m.node.as_str() == node && m.body == Body::StatusRequest)
            .count()
    }

    fn running_status(desired: &DesiredState, applied: u64) -> NodeStatus {
        let pods = desired
            .pods
            .iter()
            .map(|p| PodStatus {
                name: p.name.clone(),
                uid: p.uid.clone(),
                pod_ip: Some("10.42.1.5".parse().unwrap()),
                containers: BVec::from_vec(vec![ContainerStatus {
                    name: BString::new("main").unwrap(),
                    state: ContainerState::Running {
                        started_at_ms: 1_700_000_000_000,
                    },
                    restart_count: 0,
                    last_termination: None,
                    ready: true,
                }])
                .unwrap(),
                init_containers: BVec::new(),
            })
            .collect();
        NodeStatus {
            applied_generation: applied,
            pods: BVec::from_vec(pods).unwrap(),
        }
    }

    fn two_nodes() -> Harness {
        let mut h = Harness::new(Arc::new(MemStore::new()));
        h.send("pi-1", hello(4000));
        h.send("pi-2", hello(4000));
        let msgs = h.drain();
        for n in ["pi-1", "pi-2"] {
            let d = desired_for(&msgs, n).expect("a hello gets a desired state");
            assert!(d.generation >= 1 && d.pods.is_empty(), "{d:?}");
            // The agent sends its status after every Hello by itself; asking here made it
            // say Hello again, and the two ping-ponged.
            assert_eq!(status_requests(&msgs, n), 0);
        }
        h
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_node_stays_not_ready_whatever_reaches_the_core() {
        let mut h = two_nodes();
        assert!(h.node("pi-1").status.ready);
        h.api(ApiOp::SetRevoked {
            name: "pi-1".into(),
            revoked: true,
        })
        .unwrap();
        assert!(!h.node("pi-1").status.ready);
        // A message verified just before the revocation, still queued for the core.
        h.send(
            "pi-1",
            Body::Heartbeat(Heartbeat {
                applied_generation: 1,
                status_digest: 0,
            }),
        );
        h.send("pi-1", hello(4000));
        assert!(!h.node("pi-1").status.ready, "a revoked node became Ready");
        assert!(h.node("pi-2").status.ready);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deployment_is_spread_over_nodes_and_published() {
        let mut h = two_nodes();
        let applied = h.apply(&deployment("web", 3, "100m")).unwrap();
        assert_eq!(
            applied,
            vec![Applied {
                kind: ResourceKind::Deployment,
                name: "web".into(),
                action: ApplyAction::Created
            }]
        );
        let msgs = h.drain();
        let d1 = desired_for(&msgs, "pi-1").unwrap();
        let d2 = desired_for(&msgs, "pi-2").unwrap();
        let mut counts = [d1.pods.len(), d2.pods.len()];
        counts.sort();
        assert_eq!(counts, [1, 2], "3 replicas spread over 2 nodes");
        assert!(d1.generation >= 2 && d2.generation >= 2);
        // Requests default to limits, and the pods in the store agree with what was sent.
        assert_eq!(d1.pods[0].containers[0].resources.cpu_request_millis, 100);
        let pods = h.pods();
        assert_eq!(pods.len(), 3);
        for p in &pods {
            let node = p.spec.node_name.as_deref().unwrap();
            let d = if node == "pi-1" { &d1 } else { &d2 };
            assert!(d
                .pods
                .iter()
                .any(|s| s.name.as_str() == p.metadata.name && s.uid.as_str() == p.metadata.uid));
        }
        // Applying the same manifest again changes nothing and sends nothing.
        let again = h.apply(&deployment("web", 3, "100m")).unwrap();
        assert_eq!(again[0].action, ApplyAction::Unchanged);
        assert!(h.drain().is_empty());
        assert_eq!(h.node("pi-1").status.desired_generation, d1.generation);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_heal_lost_messages() {
        let mut h = two_nodes();
        h.apply(&deployment("web", 2, "100m")).unwrap();
        let msgs = h.drain();
        let d = desired_for(&msgs, "pi-1").unwrap();

        // A heartbeat with a stale generation makes the core republish.
        h.send(
            "pi-1",
            Body::Heartbeat(Heartbeat {
                applied_generation: d.generation - 1,
                status_digest: 0,
            }),
        );
        let msgs = h.drain();
        assert_eq!(desired_for(&msgs, "pi-1"), Some(d.clone()));
        // No status yet, so any digest differs: ask for a status.
        assert_eq!(status_requests(&msgs, "pi-1"), 1);

        // After a full status, a matching heartbeat costs nothing...
        let st = running_status(&d, d.generation);
        h.send("pi-1", Body::Status(st.clone()));
        h.drain();
        h.send(
            "pi-1",
            Body::Heartbeat(Heartbeat {
                applied_generation: d.generation,
                status_digest: st.digest(),
            }),
        );
        assert!(h.drain().is_empty());
        // ...and a heartbeat with another digest asks for the status again.
        h.send(
            "pi-1",
            Body::Heartbeat(Heartbeat {
                applied_generation: d.generation,
                status_digest: st.digest() ^ 1,
            }),
        );
        let msgs = h.drain();
        assert_eq!(status_requests(&msgs, "pi-1"), 1);
        assert!(desired_for(&msgs, "pi-1").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn status_updates_pods_and_the_deployment() {
        let mut h = two_nodes();
        h.apply(&deployment("web", 2, "100m")).unwrap();
        let msgs = h.drain();
        for n in ["pi-1", "pi-2"] {
            let d = desired_for(&msgs, n).unwrap();
            h.send(n, Body::Status(running_status(&d, d.generation)));
        }
        let pods = h.pods();
        assert!(
            pods.iter()
                .all(|p| p.status.phase == api::PodPhase::Running),
            "{pods:?}"
        );
        assert!(pods
            .iter()
            .all(|p| p.status.pod_ip.as_deref() == Some("10.42.1.5")));
        let ApiReply::Object(d) = h
            .api(ApiOp::Get {
                kind: ResourceKind::Deployment,
                name: Some("web".into()),
            })
            .unwrap()
        else {
            panic!()
        };
        let ApiObject::Deployment(d) = d else {
            panic!("not a deployment: {d:?}")
        };
        assert_eq!(d.status.ready_replicas, 2);

        // A status for a pod with another uid (an older incarnation) is ignored.
        let mut stale = running_status(&desired_for(&msgs, "pi-1").unwrap(), 1);
        let name = stale.pods[0].name.to_string();
        let mut pods = stale.pods.into_vec();
        pods[0].uid = BString::new("other").unwrap();
        pods[0].containers = BVec::from_vec(vec![ContainerStatus {
            name: BString::new("main").unwrap(),
            state: ContainerState::OomKilled,
            restart_count: 1,
            last_termination: None,
            ready: true,
        }])
        .unwrap();
        stale.pods = BVec::from_vec(pods).unwrap();
        h.send("pi-1", Body::Status(stale));
        let p = h
            .pods()
            .into_iter()
            .find(|p| p.metadata.name == name)
            .unwrap();
        assert_eq!(p.status.phase, api::PodPhase::Running);
    }

    #[tokio::test(start_paused = true)]
    async fn oom_kill_is_an_event() {
        let mut h = two_nodes();
        h.apply(&deployment("web", 1, "100m")).unwrap();
        let msgs = h.drain();
        let (node, d) = ["pi-1", "pi-2"]
            .iter()
            .find_map(|n| {
                desired_for(&msgs, n)
                    .filter(|d| !d.pods.is_empty())
                    .map(|d| (*n, d))
            })
            .unwrap();
        let mut st = running_status(&d, d.generation);
        let mut pods = st.pods.into_vec();
        pods[0].containers = BVec::from_vec(vec![ContainerStatus {
            name: BString::new("main").unwrap(),
            state: ContainerState::OomKilled,
            restart_count: 1,
            last_termination: None,
            ready: true,
        }])
        .unwrap();
        st.pods = BVec::from_vec(pods).unwrap();
        h.send(node, Body::Status(st));
        let name = d.pods[0].name.to_string();
        let ApiReply::Described { events, .. } = h
            .api(ApiOp::Describe {
                kind: ResourceKind::Pod,
                name,
            })
            .unwrap()
        else {
            panic!()
        };
        let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["Created", "Scheduled", "OOMKilled"]);
    }

    #[tokio::test(start_paused = true)]
    async fn scaling_down_removes_pods_from_desired_state() {
        let mut h = two_nodes();
        h.apply(&deployment("web", 3, "100m")).unwrap();
        h.drain();
        let ApiReply::Object(_) = h
            .api(ApiOp::Scale {
                name: "web".into(),
                replicas: 1,
            })
            .unwrap()
        else {
            panic!()
        };
        let msgs = h.drain();
        let total: usize = ["pi-1", "pi-2"]
            .iter()
            .map(|n| {
                desired_for(&msgs, n).map_or_else(|| h.core.desired[*n].len(), |d| d.pods.len())
            })
            .sum();
        assert_eq!(total, 1);
        assert_eq!(h.pods().len(), 1);
        assert!(matches!(
            h.api(ApiOp::Scale {
                name: "nope".into(),
                replicas: 1
            }),
            Err(ApiError::NotFound(_))
        ));

        // Deleting the deployment empties both nodes.
        h.api(ApiOp::Delete {
            kind: ResourceKind::Deployment,
            name: "web".into(),
        })
        .unwrap();
        assert!(h.pods().is_empty());
        assert!(h.core.desired.values().all(Vec::is_empty));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_deployment_pod_is_replaced() {
        let mut h = two_nodes();
        h.apply(&deployment("web", 2, "100m")).unwrap();
        let before: Vec<String> = h.pods().into_iter().map(|p| p.metadata.name).collect();
        h.api(ApiOp::Delete {
            kind: ResourceKind::Pod,
            name: before[0].clone(),
        })
        .unwrap();
        let after: Vec<String> = h.pods().into_iter().map(|p| p.metadata.name).collect();
        assert_eq!(after.len(), 2);
        assert!(!after.contains(&before[0]) && after.contains(&before[1]));
    }

    #[tokio::test(start_paused = true)]
    async fn lost_nodes_become_not_ready() {
        let mut h = two_nodes();
        h.apply(&deployment("web", 2, "100m")).unwrap();
        h.send("pi-1", Body::Offline);
        assert!(!h.node("pi-1").status.ready);
        let on_1: Vec<api::Pod> = h
            .pods()
            .into_iter()
            .filter(|p| p.spec.node_name.as_deref() == Some("pi-1"))
            .collect();
        assert!(
            !on_1.is_empty()
                && on_1
                    .iter()
                    .all(|p| p.status.phase == api::PodPhase::Unknown)
        );

        // pi-2 keeps beating for a while, then stops.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(5)).await;
            h.send(
                "pi-2",
                Body::Heartbeat(Heartbeat {
                    applied_generation: 0,
                    status_digest: 0,
                }),
            );
            h.core.handle(Event::Tick);
            assert!(h.node("pi-2").status.ready);
        }
        tokio::time::advance(TIMEOUT - Duration::from_secs(1)).await;
        h.core.handle(Event::Tick);
        assert!(h.node("pi-2").status.ready, "not yet timed out");
        tokio::time::advance(Duration::from_secs(2)).await;
        h.core.handle(Event::Tick);
        assert!(!h.node("pi-2").status.ready);
        let ApiReply::Events(ev) = h
            .api(ApiOp::Events {
                object: Some("node/pi-2".into()),
            })
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(ev.last().map(|e| e.reason.as_str()), Some("NodeNotReady"));

        // A heartbeat brings it back.
        h.send(
            "pi-2",
            Body::Heartbeat(Heartbeat {
                applied_generation: 0,
                status_digest: 0,
            }),
        );
        assert!(h.node("pi-2").status.ready);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_that_fits_nowhere_stays_pending_with_the_reason() {
        let mut h = two_nodes();
        h.apply(&deployment("big", 1, "64")).unwrap();
        let pods = h.pods();
        assert_eq!(pods.len(), 1);
        let p = &pods[0];
        assert_eq!(p.spec.node_name, None);
        assert_eq!(p.status.phase, api::PodPhase::Pending);
        assert_eq!(p.status.reason.as_deref(), Some("Unschedulable"));
        assert!(p.status.message.as_deref().is_some_and(|m| !m.is_empty()));
        assert!(h
            .drain()
            .iter()
            .all(|m| !matches!(&m.body, Body::Desired(d) if !d.pods.is_empty())));

        // A big enough node arriving gets it.
        h.send("big-1", hello(128_000));
        assert_eq!(h.pods()[0].spec.node_name.as_deref(), Some("big-1"));
        let d = desired_for(&h.drain(), "big-1").unwrap();
        assert_eq!(d.pods.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bad_manifest_changes_nothing() {
        let mut h = two_nodes();
        h.apply(&deployment("web", 2, "100m")).unwrap();
        h.drain();
        let before = h.snapshot();
        // The first document is fine, the second is not: all or nothing.
        let bad = format!("{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: x}}\nspec: {{containers: [{{name: c}}]}}\n", deployment("other", 1, "100m"));
        assert!(matches!(h.apply(&bad), Err(ApiError::BadRequest(_))));
        assert!(matches!(
            h.apply("not: [valid"),
            Err(ApiError::BadRequest(_))
        ));
        // Valid YAML whose pod would not fit the wire limits is refused too.
        let huge = deployment("huge", 1, "100m").replace(
            "        resources:",
            &format!(
                "        env: [{{name: X, value: {}}}]\n        resources:",
                "x".repeat(5000)
            ),
        );
        let err = h.apply(&huge).unwrap_err();
        assert!(
            matches!(&err, ApiError::BadRequest(m) if m.contains("env")),
            "{err:?}"
        );
        assert_eq!(h.snapshot(), before);
        assert!(h.drain().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_policy_refuses_on_apply_and_flags_admit() {
        let mut h = two_nodes();
        let privileged = deployment("priv", 1, "100m").replace(
            "        resources:",
            "        securityContext: {privileged: true}\n        resources:",
        );
        let before = h.snapshot();
        let err = h.apply(&privileged).unwrap_err();
        assert_eq!(
            err,
            ApiError::BadRequest(
                "deployment \"priv\": spec.template.spec.containers[0].securityContext.privileged: privileged containers are refused by the coordinator's policy (start `baton server` with --allow-privileged to allow them)".into()
            )
        );
        let host = "apiVersion: v1\nkind: Pod\nmetadata: {name: h}\nspec:\n  volumes: [{name: v, hostPath: {path: /srv/x}}]\n  containers: [{name: c, image: busybox:1}]\n";
        assert!(
            matches!(h.apply(host), Err(ApiError::BadRequest(m)) if m.contains("--allow-host-path"))
        );
        assert_eq!(h.snapshot(), before);
        // The same core with a policy that allows them admits both.
        let store = h.store.clone();
        drop(h);
        let mut h = Harness::new(store);
        h.core.policy = Policy {
            allow_privileged: true,
            allow_host_paths: vec!["/srv".into()],
            ..Default::default()
        };
        assert!(h.apply(&privileged).is_ok());
        assert!(h.apply(host).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn secrets_are_stored_and_shown_without_values() {
        let mut h = two_nodes();
        let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {password: hunter2, user: admin}\n";
        let applied = h.apply(secret).unwrap();
        assert_eq!(
            applied,
            vec![Applied {
                kind: ResourceKind::Secret,
                name: "db".into(),
                action: ApplyAction::Created
            }]
        );
        assert_eq!(h.apply(secret).unwrap()[0].action, ApplyAction::Unchanged);
        let changed = secret.replace("hunter2", "hunter3");
        assert_eq!(
            h.apply(&changed).unwrap()[0].action,
            ApplyAction::Configured
        );
        for op in [
            ApiOp::Get {
                kind: ResourceKind::Secret,
                name: Some("db".into()),
            },
            ApiOp::Get {
                kind: ResourceKind::Secret,
                name: None,
            },
            ApiOp::Describe {
                kind: ResourceKind::Secret,
                name: "db".into(),
            },
        ] {
            let reply = format!("{:?}", h.api(op).unwrap());
            assert!(!reply.contains("hunter"), "{reply}");
            assert!(!reply.contains(&api::base64::encode(b"hunter3")), "{reply}");
            assert!(reply.contains("\"password\": 7"), "{reply}");
        }
        // It survives a restart, and delete removes it.
        let store = h.store.clone();
        drop(h);
        let mut h = Harness::new(store);
        assert!(h
            .api(ApiOp::Get {
                kind: ResourceKind::Secret,
                name: Some("db".into())
            })
            .is_ok());
        h.api(ApiOp::Delete {
            kind: ResourceKind::Secret,
            name: "db".into(),
        })
        .unwrap();
        assert!(matches!(
            h.api(ApiOp::Get {
                kind: ResourceKind::Secret,
                name: Some("db".into())
            }),
            Err(ApiError::NotFound(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_core_has_the_same_state() {
        let mut h = two_nodes();
        h.apply(&deployment("web", 3, "100m")).unwrap();
        h.apply(&deployment("big", 1, "64")).unwrap();
        let msgs = h.drain();
        let d = desired_for(&msgs, "pi-1").unwrap();
        h.send("pi-1", Body::Status(running_status(&d, d.generation)));
        h.send("pi-2", Body::Offline);

        let get_all = |h: &mut Harness| -> Vec<ApiReply> {
            let mut all: Vec<ApiReply> = [
                ResourceKind::Node,
                ResourceKind::Deployment,
                ResourceKind::Pod,
            ]
            .into_iter()
            .map(|kind| h.api(ApiOp::Get { kind, name: None }).unwrap())
            .collect();
            all.push(h.api(ApiOp::Events { object: None }).unwrap());
            all
        };
        let before = get_all(&mut h);
        let gen1 = h.node("pi-1").status.desired_generation;

        let mut h2 = Harness::new(h.store.clone());
        assert_eq!(get_all(&mut h2), before);
        assert!(h2.drain().is_empty(), "a restart alone sends nothing");
        // The returning agent gets the same generation: nothing changed for it.
        h2.send("pi-1", hello(4000));
        assert_eq!(
            desired_for(&h2.drain(), "pi-1").map(|d| (d.generation, d.pods.len())),
            Some((gen1, d.pods.len()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn events_are_bounded() {
        let mut h = two_nodes();
        for i in 0..(MAX_EVENTS / 2 + 10) {
            h.send("pi-1", Body::Offline);
            h.send(
                "pi-1",
                Body::Heartbeat(Heartbeat {
                    applied_generation: 0,
                    status_digest: i as u64,
                }),
            );
        }
        assert_eq!(h.store.list(Table::Events).unwrap().len(), MAX_EVENTS);
        assert_eq!(h.core.events.len(), MAX_EVENTS);
    }

    #[tokio::test(start_paused = true)]
    async fn pods_apply_and_conflict() {
        let mut h = two_nodes();
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: solo}\nspec:\n  restartPolicy: Never\n  containers: [{name: c, image: busybox:1.36}]\n";
        assert_eq!(h.apply(pod).unwrap()[0].action, ApplyAction::Created);
        assert_eq!(h.apply(pod).unwrap()[0].action, ApplyAction::Unchanged);
        let changed = pod.replace("busybox:1.36", "busybox:1.37");
        assert!(matches!(h.apply(&changed), Err(ApiError::Conflict(_))));
        assert!(h.pods()[0].spec.node_name.is_some());
        assert!(matches!(
            h.api(ApiOp::Delete {
                kind: ResourceKind::Node,
                name: "pi-1".into()
            }),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            h.api(ApiOp::Get {
                kind: ResourceKind::Pod,
                name: Some("nope".into())
            }),
            Err(ApiError::NotFound(_))
        ));
    }

    // ----- node loss: eviction and return ----------------------------------------

    fn beat(h: &mut Harness, node: &str) {
        h.send(
            node,
            Body::Heartbeat(Heartbeat {
                applied_generation: 0,
                status_digest: 0,
            }),
        );
    }

    /// Lets `secs` pass in 1 s steps, `alive` beating and the core ticking every second.
    async fn pass(h: &mut Harness, secs: u64, alive: &str) {
        for _ in 0..secs {
            tokio::time::advance(Duration::from_secs(1)).await;
            beat(h, alive);
            h.core.handle(Event::Tick);
        }
    }

    fn on_node(pods: &[api::Pod], node: &str) -> Vec<api::Pod> {
        pods.iter()
            .filter(|p| p.spec.node_name.as_deref() == Some(node))
            .cloned()
            .collect()
    }

    fn reasons(h: &mut Harness, object: &str) -> Vec<String> {
        let ApiReply::Events(ev) = h
            .api(ApiOp::Events {
                object: Some(object.into()),
            })
            .unwrap()
        else {
            panic!("not events")
        };
        ev.into_iter().map(|e| e.reason).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_node_loses_its_deployment_pods_after_the_eviction_timeout() {
        let eviction = Duration::from_secs(60);
        let mut h = two_nodes();
        let bare = "apiVersion: v1\nkind: Pod\nmetadata: {name: solo}\nspec:\n  containers: [{name: c, image: busybox:1.36}]\n";
        h.apply(bare).unwrap();
        let lost = h.pods()[0].spec.node_name.clone().unwrap();
        let alive = if lost == "pi-1" { "pi-2" } else { "pi-1" };
        h.apply(&deployment("web", 3, "100m")).unwrap();
        let before = on_node(&h.pods(), &lost);
        let evicted: Vec<api::Pod> = before
            .iter()
            .filter(|p| p.metadata.owner.is_some())
            .cloned()
            .collect();
        assert!(
            !evicted.is_empty(),
            "the lost node runs web pods: {before:?}"
        );
        h.drain();

        // The heartbeat timeout makes it NotReady; its pods stay (Unknown) until eviction.
        pass(&mut h, TIMEOUT.as_secs() + 1, alive).await;
        assert!(!h.node(&lost).status.ready);
        pass(&mut h, eviction.as_secs() - 2, alive).await;
        assert_eq!(
            on_node(&h.pods(), &lost).len(),
            before.len(),
            "evicted too early"
        );
        assert!(on_node(&h.pods(), &lost)
            .iter()
            .all(|p| p.status.phase == api::PodPhase::Unknown));
        pass(&mut h, 3, alive).await;

        // Its deployment pods are gone and replaced on the Ready node; the bare pod stays.
        let pods = h.pods();
        let left = on_node(&pods, &lost);
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].metadata.name, "solo");
        assert_eq!(left[0].status.phase, api::PodPhase::Unknown);
        let web: Vec<&api::Pod> = pods
            .iter()
            .filter(|p| p.metadata.owner.as_deref() == Some("web"))
            .collect();
        assert_eq!(web.len(), 3);
        assert!(web
            .iter()
            .all(|p| p.spec.node_name.as_deref() == Some(alive)));
        assert!(reasons(&mut h, &format!("node/{lost}")).contains(&"NodeLost".to_string()));
        for p in &evicted {
            let r = reasons(&mut h, &format!("pod/{}", p.metadata.name));
            assert_eq!(r.last().map(String::as_str), Some("Evicted"), "{r:?}");
        }
        let msgs = h.drain();
        let to_alive = desired_for(&msgs, alive).expect("replacements are published");
        assert_eq!(to_alive.pods.len(), 3);
        // The lost node's retained desired state no longer lists the evicted pods.
        let to_lost = desired_for(&msgs, &lost).expect("the lost node's state is republished");
        let names: Vec<&str> = to_lost.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["solo"]);

        // Another eviction period changes nothing more.
        pass(&mut h, eviction.as_secs() + 1, alive).await;
        assert_eq!(h.pods().len(), 4);

        // The node returns: it is Ready again, is sent the state without the evicted pods,
        // and its report about them is ignored.
        h.send(&lost, hello(4000));
        assert!(h.node(&lost).status.ready);
        let msgs = h.drain();
        let back = desired_for(&msgs, &lost).unwrap();
        assert_eq!(back, to_lost);
        let old = DesiredState {
            generation: back.generation,
            pods: BVec::from_vec(
                evicted
                    .iter()
                    .map(|p| crate::model::wire::pod_spec(p).unwrap())
                    .collect(),
            )
            .unwrap(),
            secrets: BVec::new(),
        };
        h.send(&lost, Body::Status(running_status(&old, back.generation)));
        let pods = h.pods();
        assert_eq!(pods.len(), 4);
        assert!(evicted
            .iter()
            .all(|e| pods.iter().all(|p| p.metadata.name != e.metadata.name)));
        // A heartbeat with the generation it had before the loss gets the state again.
        h.send(
            &lost,
            Body::Heartbeat(Heartbeat {
                applied_generation: back.generation - 1,
                status_digest: 0,
            }),
        );
        assert_eq!(desired_for(&h.drain(), &lost), Some(back));
    }

    #[tokio::test(start_paused = true)]
    async fn an_offline_node_is_not_ready_at_once_and_evicted_after_the_timeout() {
        let (tx, out) = mpsc::channel(1024);
        let store = Arc::new(MemStore::new());
        let core = Core::new(store.clone(), tx, TIMEOUT)
            .unwrap()
            .with_pod_eviction_timeout(Duration::from_secs(5));
        let mut h = Harness { core, out, store };
        h.send("pi-1", hello(4000));
        h.send("pi-2", hello(4000));
        h.apply(&deployment("web", 2, "100m")).unwrap();
        assert_eq!(on_node(&h.pods(), "pi-1").len(), 1);
        h.send("pi-1", Body::Offline);
        assert!(
            !h.node("pi-1").status.ready,
            "the last will is NotReady at once"
        );
        pass(&mut h, 4, "pi-2").await;
        assert_eq!(on_node(&h.pods(), "pi-1").len(), 1);
        pass(&mut h, 2, "pi-2").await;
        assert!(on_node(&h.pods(), "pi-1").is_empty());
        assert_eq!(on_node(&h.pods(), "pi-2").len(), 2);
        // A restarted coordinator keeps the outcome.
        let again = Harness::new(h.store.clone());
        assert_eq!(again.core.pods.len(), 2);
    }

    // ----- rollouts: capacity bounds, drain, revisions ---------------------------------

    /// Reports every pod in each node's desired state: those in `ready` as running (and
    /// so ready), the others as still pending.
    fn report(h: &mut Harness, ready: &BTreeSet<String>) {
        for node in ["pi-1", "pi-2"] {
            let desired = h.core.desired.get(node).cloned().unwrap_or_default();
            let pods = desired
                .iter()
                .map(|p| PodStatus {
                    name: p.name.clone(),
                    uid: p.uid.clone(),
                    pod_ip: Some("10.42.1.5".parse().unwrap()),
                    containers: BVec::from_vec(vec![ContainerStatus {
                        name: BString::new("main").unwrap(),
                        state: if ready.contains(p.name.as_str()) {
                            ContainerState::Running {
                                started_at_ms: 1_700_000_000_000,
                            }
                        } else {
                            ContainerState::Pending
                        },
                        restart_count: 0,
                        last_termination: None,
                        ready: true,
                    }])
                    .unwrap(),
                    init_containers: BVec::new(),
                })
                .collect();
            let generation = h.node(node).status.desired_generation;
            h.send(
                node,
                Body::Status(NodeStatus {
                    applied_generation: generation,
                    pods: BVec::from_vec(pods).unwrap(),
                }),
            );
        }
    }

    fn progress(h: &mut Harness, name: &str) -> rollout::RolloutProgress {
        match h.api(ApiOp::RolloutStatus { name: name.into() }).unwrap() {
            ApiReply::Rollout(p) => p,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn in_desired(h: &Harness, pod: &str) -> bool {
        h.core
            .desired
            .values()
            .any(|d| d.iter().any(|p| p.name.as_str() == pod))
    }

    fn rolling_deployment(image: &str) -> String {
        deployment("web", 4, "100m")
            .replace(
                "  replicas: 4\n",
                "  replicas: 4\n  strategy:\n    rollingUpdate: {maxSurge: 1, maxUnavailable: 1}\n",
            )
            .replace("busybox:1.36", image)
    }

    /// Drives a rollout with status reports, one new pod becoming ready at a time, and
    /// returns how many steps it took. At every step: at most replicas + maxSurge pods
    /// that are not terminating, at least replicas - maxUnavailable ready; terminating
    /// pods stay in their node's desired state until the drain period is over.
    async fn drive_rollout(h: &mut Harness, ready: &mut BTreeSet<String>, image: &str) -> usize {
        let want =
            controller::template_hash(&match manifest::parse_manifests(&rolling_deployment(image))
                .unwrap()
                .remove(0)
            {
                api::Object::Deployment(d) => d.spec.template,
                api::Object::Pod(_) | api::Object::Secret(_) => unreachable!(),
            });
        for step in 0..50 {
            report(h, ready);
            let pods = h.pods();
            let live: Vec<&api::Pod> = pods
                .iter()
                .filter(|p| !controller::is_terminating(p))
                .collect();
            let ready_now = live.iter().filter(|p| controller::is_ready(p)).count();
            assert!(live.len() <= 5, "step {step}: {} pods", live.len());
            assert!(ready_now >= 3, "step {step}: only {ready_now} ready");
            for p in pods.iter().filter(|p| controller::is_terminating(p)) {
                assert!(
                    in_desired(h, &p.metadata.name),
                    "step {step}: drained too early"
                );
                assert!(!controller::is_ready(p));
            }
            let p = progress(h, "web");
            if p.done {
                assert_eq!((p.updated, p.updated_ready, p.old), (4, 4, 0));
                return step;
            }
            // One new pod becomes ready; a second passes, and drains may end.
            if let Some(n) = live.iter().find(|p| {
                controller::hash_of(p) == Some(want.as_str()) && !ready.contains(&p.metadata.name)
            }) {
                ready.insert(n.metadata.name.clone());
            }
            tokio::time::advance(Duration::from_millis(700)).await;
            h.core.handle(Event::Tick);
        }
        panic!("the rollout did not finish");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rolling_update_keeps_capacity_and_drains_old_pods() {
        let mut h = two_nodes();
        h.apply(&rolling_deployment("busybox:1.36")).unwrap();
        let mut ready: BTreeSet<String> = h.pods().into_iter().map(|p| p.metadata.name).collect();
        report(&mut h, &ready);
        assert!(progress(&mut h, "web").done);
        let v1: BTreeSet<String> = ready.clone();

        assert_eq!(
            h.apply(&rolling_deployment("busybox:1.37")).unwrap()[0].action,
            ApplyAction::Configured
        );
        let steps = drive_rollout(&mut h, &mut ready, "busybox:1.37").await;
        assert!(
            steps >= 3,
            "a rolling update takes several steps, took {steps}"
        );
        // Old pods drain, then leave the pod list and their nodes' desired state.
        tokio::time::advance(DEFAULT_POD_DRAIN + Duration::from_secs(1)).await;
        h.core.handle(Event::Tick);
        let pods = h.pods();
        assert_eq!(pods.len(), 4);
        assert!(pods.iter().all(|p| !v1.contains(&p.metadata.name)));
        assert!(v1.iter().all(|n| !in_desired(&h, n)));
        let ApiReply::Object(d) = h
            .api(ApiOp::Get {
                kind: ResourceKind::Deployment,
                name: Some("web".into()),
            })
            .unwrap()
        else {
            panic!()
        };
        let ApiObject::Deployment(d) = d else {
            panic!("not a deployment: {d:?}")
        };
        assert_eq!(
            (
                d.status.replicas,
                d.status.updated_replicas,
                d.status.ready_replicas,
                d.status.available_replicas
            ),
            (4, 4, 4, 4)
        );

        // Two revisions; undo goes back to the first, which becomes revision 3.
        let history = |h: &mut Harness| -> Vec<(u64, String)> {
            match h.api(ApiOp::RolloutHistory { name: "web".into() }).unwrap() {
                ApiReply::Revisions(o) => o
                    .into_iter()
                    .map(|r| (r.revision, r.template.spec.containers[0].image.clone()))
                    .collect(),
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(
            history(&mut h),
            [(1, "busybox:1.36".into()), (2, "busybox:1.37".into())]
        );
        assert!(matches!(
            h.api(ApiOp::RolloutUndo {
                name: "web".into(),
                to_revision: Some(9)
            }),
            Err(ApiError::NotFound(_))
        ));
        h.api(ApiOp::RolloutUndo {
            name: "web".into(),
            to_revision: None,
        })
        .unwrap();
        assert_eq!(
            history(&mut h),
            [(2, "busybox:1.37".into()), (3, "busybox:1.36".into())]
        );
        drive_rollout(&mut h, &mut ready, "busybox:1.36").await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_ready_pod_drains_before_it_leaves_its_node() {
        let mut h = two_nodes();
        h.apply(&deployment("web", 1, "100m")).unwrap();
        let name = h.pods()[0].metadata.name.clone();
        report(&mut h, &BTreeSet::from([name.clone()]));
        h.api(ApiOp::Delete {
            kind: ResourceKind::Pod,
            name: name.clone(),
        })
        .unwrap();
        let pods = h.pods();
        let old = pods.iter().find(|p| p.metadata.name == name).unwrap();
        assert!(old.metadata.deletion_timestamp.is_some());
        assert!(in_desired(&h, &name), "kept on its node while draining");
        assert_eq!(pods.len(), 2, "the deployment already made a replacement");
        // Deleting it again is fine and changes nothing.
        h.api(ApiOp::Delete {
            kind: ResourceKind::Pod,
            name: name.clone(),
        })
        .unwrap();
        tokio::time::advance(DEFAULT_POD_DRAIN - Duration::from_millis(500)).await;
        h.core.handle(Event::Tick);
        assert!(in_desired(&h, &name), "still draining");
        tokio::time::advance(Duration::from_secs(1)).await;
        h.core.handle(Event::Tick);
        assert!(!in_desired(&h, &name));
        assert_eq!(h.pods().len(), 1);

        // A pod that is not ready serves no one and goes at once; so does a deployment's.
        let other = h.pods()[0].metadata.name.clone();
        h.api(ApiOp::Delete {
            kind: ResourceKind::Deployment,
            name: "web".into(),
        })
        .unwrap();
        assert!(!in_desired(&h, &other));
        assert!(h.pods().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_core_keeps_draining_and_revisions() {
        let mut h = two_nodes();
        h.apply(&rolling_deployment("busybox:1.36")).unwrap();
        let ready: BTreeSet<String> = h.pods().into_iter().map(|p| p.metadata.name).collect();
        report(&mut h, &ready);
        h.apply(&rolling_deployment("busybox:1.37")).unwrap();
        let terminating: Vec<String> = h
            .pods()
            .into_iter()
            .filter(controller::is_terminating)
            .map(|p| p.metadata.name)
            .collect();
        assert_eq!(
            terminating.len(),
            1,
            "maxUnavailable 1 lets one ready pod go at once"
        );
        let mut h2 = Harness::new(h.store.clone());
        assert_eq!(h2.core.revisions.len(), 2);
        assert!(in_desired(&h2, &terminating[0]));
        tokio::time::advance(DEFAULT_POD_DRAIN).await;
        h2.core.handle(Event::Tick);
        assert!(!in_desired(&h2, &terminating[0]));
    }

    /// The agent's report of why it could not connect is shown on the node, survives the
    /// Hellos that carry none (it got through at once since) and keeps the time of its
    /// first report while repeated within one connection.
    #[test]
    fn a_nodes_last_connect_error_is_kept_until_replaced() {
        let mut h = Harness::new(Arc::new(MemStore::default()));
        let with_error = |msg: &str| match hello(1000) {
            Body::Hello(mut hl) => {
                hl.last_connect_error = Some(BString::new(msg).unwrap());
                Body::Hello(hl)
            }
            _ => unreachable!(),
        };
        h.send("pi-1", hello(1000));
        assert_eq!(h.node("pi-1").status.last_connect_error, None);
        h.send("pi-1", with_error("connection refused"));
        let first = h.node("pi-1").status.last_connect_error.unwrap();
        assert_eq!(first.message, "connection refused");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        h.send("pi-1", with_error("connection refused"));
        assert_eq!(
            h.node("pi-1").status.last_connect_error,
            Some(first.clone())
        );
        h.send("pi-1", hello(1000));
        assert_eq!(h.node("pi-1").status.last_connect_error, Some(first));
        h.send("pi-1", with_error("timed out"));
        assert_eq!(
            h.node("pi-1").status.last_connect_error.unwrap().message,
            "timed out"
        );
    }
}
