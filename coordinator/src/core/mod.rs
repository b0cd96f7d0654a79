//! The coordinator's state machine.
//!
//! One task owns all state and handles one [`Event`] at a time: an API request, a message
//! from a node, a once-a-second tick, or news of the broker link. Nothing else touches the state, so there are no
//! locks, and the MQTT bridge and the HTTP server are mere producers of events (tests
//! drive the core with events directly, see `core/tests/`).
//!
//! Each event is handled as a transaction: the handler changes the in-memory state and
//! marks what it touched; then `Core::finish` (in `txn`) runs the pure deployment
//! controller and scheduler over the result, recomputes each node's desired state, and
//! writes every touched object plus new events to the store in ONE atomic `commit`. Only
//! after the commit succeeds are messages sent to nodes. If it fails, the state is
//! reloaded from the store, so memory never runs ahead of disk.
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
//!
//! The files split the core by concern: `txn` (load, commit, abort), `events`, `schedule`
//! (settling: controller, scheduler, drains, each node's desired state), `nodes` (node
//! messages, liveness, eviction), `requests` (the API operations), `secrets` (pods
//! withheld until their secrets can be sent) and `agent_updates` (rollouts of the agent
//! itself: orders, reports, pause/resume/abort).

mod agent_updates;
mod config_maps;
mod cron_jobs;
mod cron_nodes;
mod daemon_sets;
mod events;
mod exec;
pub use exec::ExecTarget;
mod jobs;
mod namespaces;
pub use namespaces::Access;
mod node_spec;
mod nodes;
mod pod_cidrs;
mod pod_dns;
mod requests;
mod schedule;
pub mod secrets;
mod services;
#[cfg(test)]
mod tests;
mod txn;
mod usage;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use baton_proto::{self as proto, Body, NodeName};
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::contract::body::{ApiObject, Revocation, RolloutProgress, UndoResult};
use crate::contract::{Applied, ResourceKind};
use crate::decide::policy::Policy;
use crate::model::api;
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
    /// `proto`: the protocol version of the envelope, what the node can read.
    Inbound {
        node: NodeName,
        body: Body,
        proto: u16,
    },
    Tick,
    /// Open a watch (`watch`); answered on the request's own channel.
    Watch(watch::WatchRequest),
    /// The coordinator's own broker link went down (`false`), or is up again: connected
    /// and subscribed to the nodes' topics (`true`). While it is down the nodes' silence
    /// says nothing about them, so it does not count (`nodes::bus_link`).
    BusLink {
        up: bool,
    },
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
    /// `namespace`: where objects naming none go (`-n`; `default` when `None`).
    /// `access`: the namespaces the caller may write in.
    Apply {
        yaml: String,
        namespace: Option<String>,
        access: Access,
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
    /// `baton cordon|uncordon|taint node`.
    UpdateNode {
        name: String,
        change: crate::contract::nodes::NodeSpecChange,
    },
    Describe {
        kind: ResourceKind,
        name: String,
    },
    /// Events, optionally of one object (`pod/NAME`), oldest first.
    Events {
        object: Option<String>,
    },
    /// The state's counts for `/metrics` (`crate::metrics::Fleet`).
    Fleet,
    /// `baton top nodes` (`false`) or `baton top pods` (`true`).
    Top {
        pods: bool,
    },
    /// A Deployment's or DaemonSet's rollout progress (`rollout::RolloutProgress`).
    RolloutStatus {
        kind: ResourceKind,
        name: String,
    },
    /// A Deployment's or DaemonSet's revisions, oldest first (`api::Revision`).
    RolloutHistory {
        kind: ResourceKind,
        name: String,
    },
    /// Rolls a Deployment or DaemonSet back to `to_revision`, or to the previous revision.
    RolloutUndo {
        kind: ResourceKind,
        name: String,
        to_revision: Option<u64>,
    },
    /// Shuts a node out after its identity was revoked (`crate::security::gate`), or takes it
    /// back after it re-enrolled: see [`Core::with_revoked`].
    SetRevoked {
        name: String,
        revoked: bool,
    },
    /// `baton agent rollout status|pause|resume|abort`; only `Status` may go without a
    /// name (the open rollout, else the newest).
    AgentRollout {
        name: Option<String>,
        action: AgentRolloutAction,
    },
    /// `baton exec`: may `by` (a token's name) run `command` in `pod`? Recorded as an
    /// event when it may; answers [`ApiReply::Exec`].
    Exec {
        pod: String,
        container: Option<String>,
        command: Vec<String>,
        by: String,
    },
}

/// What `baton agent rollout` does to a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentRolloutAction {
    Status,
    Pause,
    Resume,
    Abort,
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
    AgentUpdate(api::AgentUpdate),
    Exec(exec::ExecTarget),
    Fleet(Box<crate::metrics::Fleet>),
    NodeUsage(Vec<crate::contract::usage::NodeUsageView>),
    PodUsage(Vec<crate::contract::usage::PodUsageView>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The caller's token may not do this (a namespace it is not limited to).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Internal(String),
    /// A watch asked to resume from a version the core no longer remembers.
    #[error("{0}")]
    Gone(String),
    #[error("the coordinator is shutting down")]
    Unavailable,
}

impl ApiError {
    /// The same error with its message rewritten by `f`.
    pub(super) fn map_message(self, f: impl FnOnce(&str) -> String) -> Self {
        match self {
            ApiError::BadRequest(m) => ApiError::BadRequest(f(&m)),
            ApiError::NotFound(m) => ApiError::NotFound(f(&m)),
            ApiError::Conflict(m) => ApiError::Conflict(f(&m)),
            ApiError::Forbidden(m) => ApiError::Forbidden(f(&m)),
            ApiError::Internal(m) => ApiError::Internal(f(&m)),
            ApiError::Gone(m) => ApiError::Gone(f(&m)),
            ApiError::Unavailable => ApiError::Unavailable,
        }
    }
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
    /// A [`secrets::Keeper`]'s failure.
    #[error(transparent)]
    Secrets(#[from] secrets::KeeperError),
}

/// What the core knows about a node beyond its stored object.
#[derive(Debug)]
struct Live {
    last_seen: Instant,
    /// Digest of the last full status received, `None` until one arrives.
    status_digest: Option<u64>,
    /// The node's own liveness timeout, from the link profile it told after its Hello
    /// (see [`nodes::liveness_timeout`]); `None`: the coordinator's heartbeat timeout.
    timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Tab {
    Deployment,
    DaemonSet,
    Job,
    CronJob,
    Pod,
    Node,
    /// Keyed by `rollout::revision_key`.
    Revision,
    Secret,
    AgentUpdate,
    ConfigMap,
    Service,
    Namespace,
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
    daemon_sets: BTreeMap<String, api::DaemonSet>,
    jobs: BTreeMap<String, api::Job>,
    cron_jobs: BTreeMap<String, api::CronJob>,
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
    /// ConfigMaps as applied.
    config_maps: BTreeMap<String, api::ConfigMap>,
    /// Services with their allocated ClusterIP and nodePorts (`services`).
    services: BTreeMap<String, api::Service>,
    /// Where ClusterIPs come from (`baton server --service-cidr`).
    service_cidr: crate::decide::service::ServiceCidr,
    /// Agent update rollouts by name (`agent_updates`).
    agent_updates: BTreeMap<String, api::AgentUpdate>,
    /// Namespaces but `default`, which always exists and is not stored (`namespaces`).
    namespaces: BTreeMap<String, api::Namespace>,
    /// The imported agent releases (the registry's).
    release_index: Arc<dyn crate::model::release::ReleaseIndex>,
    /// The versions rollouts install, shared with the registry.
    rollout_versions: crate::model::release::RolloutVersions,
    /// Encrypts secrets at rest and seals them per node ([`secrets::Keeper`]).
    secret_keeper: Box<dyn secrets::Keeper>,
    /// The secrets each node's desired state carries, as last published (or loaded).
    desired_secrets: HashMap<String, Vec<secrets::SentSecret>>,
    /// By node: the ConfigMaps (name to content digest) it was sent since its last Hello.
    sent_config_maps: HashMap<String, BTreeMap<String, u64>>,
    /// The parts each ConfigMap travels in, by name, for the uid and generation they were
    /// made from (a 1 MiB ConfigMap is encoded once, not once per node and commit).
    config_map_parts: HashMap<String, config_maps::Parts>,
    /// By node: the digest of the last Service table it was sent since its last Hello.
    sent_service_tables: HashMap<String, u64>,
    /// Why the Service table could not be sent, once its event is recorded.
    oversized_service_table: Option<String>,
    /// The digest of the last Service table broadcast, and when (`services.rs`: a new
    /// table goes out at most once per `SERVICE_TABLE_WINDOW`).
    service_table_sent: Option<(u64, Instant)>,
    /// When a table held back by that window is due.
    service_table_due: Option<Instant>,
    /// Nodes' pod ranges were decided since the state was loaded (`pod_cidrs.rs`).
    pod_cidrs_decided: bool,
    /// What pods may ask of their nodes; checked on apply (`crate::decide::policy`).
    policy: Policy,
    /// Nodes whose identity is revoked: never Ready, sent an empty desired state once.
    revoked: BTreeSet<String>,
    live: HashMap<String, Live>,
    /// The broker link is down ([`Event::BusLink`]): no node is timed out or evicted.
    bus_down: bool,
    /// The term this coordinator leads with ([`Core::with_leader_term`]), shown on nodes.
    leader_term: u64,
    /// Each node's desired content as last published (or loaded), to detect changes.
    desired: HashMap<String, Vec<proto::PodSpec>>,
    /// Each node's node-scheduled CronJobs as last published (or loaded).
    desired_crons: HashMap<String, Vec<proto::NodeCron>>,
    /// Node-scheduled CronJobs in their wire form, by name (`cron_nodes.rs`).
    node_crons: BTreeMap<String, cron_nodes::Sent>,
    events: VecDeque<(u64, api::Event)>,
    next_event: u64,

    dirty: BTreeSet<(Tab, String)>,
    new_events: Vec<api::Event>,
    pending_out: Vec<Outbound>,
    /// A failed commit could not be undone by reloading (the store was unreachable), so
    /// memory may hold changes the store does not: nothing is committed or sent until a
    /// reload succeeds (`txn.rs`).
    stale: Option<txn::Stale>,
    /// Pod start and store commit latencies for `/metrics`.
    metrics: Arc<crate::metrics::Metrics>,
    /// Resource versions, the change log and the open watches.
    watches: watch::Watches,
    /// Each node's last usage report and when it came (`baton top`, `/metrics`); not stored.
    usage: HashMap<String, (proto::NodeUsage, std::time::SystemTime)>,
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
    (0..api::POD_NAME_SUFFIX_LEN)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
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
            daemon_sets: BTreeMap::new(),
            jobs: BTreeMap::new(),
            cron_jobs: BTreeMap::new(),
            revisions: BTreeMap::new(),
            pods: BTreeMap::new(),
            draining: HashMap::new(),
            pod_drain: DEFAULT_POD_DRAIN,
            nodes: BTreeMap::new(),
            secrets: BTreeMap::new(),
            config_maps: BTreeMap::new(),
            services: BTreeMap::new(),
            service_cidr: Default::default(),
            agent_updates: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            release_index: Arc::new(crate::model::release::NoReleases),
            rollout_versions: Default::default(),
            secret_keeper: Box::new(secrets::Unkept),
            desired_secrets: HashMap::new(),
            sent_config_maps: HashMap::new(),
            config_map_parts: HashMap::new(),
            sent_service_tables: HashMap::new(),
            oversized_service_table: None,
            service_table_sent: None,
            service_table_due: None,
            pod_cidrs_decided: false,
            policy: Policy::default(),
            revoked: BTreeSet::new(),
            live: HashMap::new(),
            bus_down: false,
            leader_term: 0,
            desired: HashMap::new(),
            desired_crons: HashMap::new(),
            node_crons: BTreeMap::new(),
            events: VecDeque::new(),
            next_event: 1,
            dirty: BTreeSet::new(),
            new_events: Vec::new(),
            pending_out: Vec::new(),
            stale: None,
            metrics: Arc::default(),
            watches: watch::Watches::new(),
            usage: HashMap::new(),
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

    /// The leader's term the security gate stamps on what this coordinator sends (a
    /// single coordinator's stored one); `get` and `describe node` show it.
    pub fn with_leader_term(mut self, term: u64) -> Self {
        self.leader_term = term;
        self
    }

    /// Records latencies in `metrics` (the ones `/metrics` serves) instead of its own.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Sets the admission policy `apply` checks pods against (default: deny all).
    /// Sets the network ClusterIPs are allocated from. Services stored earlier keep theirs
    /// even outside it, also when applied again.
    pub fn with_service_cidr(mut self, cidr: crate::decide::service::ServiceCidr) -> Self {
        self.service_cidr = cidr;
        self
    }

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

    /// Reads agent releases from `index` (the registry owns them), and keeps `versions`
    /// (which version each rollout installs) for the registry to read.
    pub fn with_releases(
        mut self,
        index: Arc<dyn crate::model::release::ReleaseIndex>,
        versions: crate::model::release::RolloutVersions,
    ) -> Self {
        self.release_index = index;
        self.rollout_versions = versions;
        self.share_rollout_versions();
        self
    }

    /// Encrypts secrets at rest with `keeper`'s data key and seals them to nodes' keys.
    /// Reloads the state (encrypted secrets only load with the key) and rewrites secrets
    /// stored in plain JSON by older versions, encrypted.
    pub fn with_secrets(
        mut self,
        keeper: impl secrets::Keeper + 'static,
    ) -> Result<Self, CoreError> {
        self.secret_keeper = Box::new(keeper);
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

    /// Sets how long a node may be NotReady before the pods of Deployments on it are
    /// evicted (deleted, so that their Deployments replace them on Ready nodes). Bare pods
    /// stay, shown Unknown, as in Kubernetes: nothing else would ever run them again.
    pub fn with_pod_eviction_timeout(mut self, timeout: Duration) -> Self {
        self.pod_eviction_timeout = timeout;
        self
    }

    /// Handles events until every sender is gone.
    pub async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        self.ask_known_nodes();
        loop {
            // A Service table held back (`services.rs`) goes out when due, not at the next
            // tick, which could be a second later.
            let ev = match self.service_table_due {
                None => events.recv().await,
                Some(due) => tokio::select! {
                    ev = events.recv() => ev,
                    () = tokio::time::sleep_until(due) => {
                        self.send_due_service_tables();
                        let _ = self.finish();
                        continue;
                    }
                },
            };
            let Some(ev) = ev else { break };
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
            Event::Inbound { node, body, proto } => {
                // Security refuses a revoked node's messages, but one verified just before
                // the revocation can still be queued here: it must not make the node Ready.
                if self.revoked.contains(node.as_str()) {
                    tracing::debug!(node = %node, "message of a revoked node dropped");
                    return;
                }
                let span = tracing::debug_span!("inbound", node = %node);
                let _g = span.enter();
                self.inbound(&node, body, proto);
                let _ = self.finish();
            }
            Event::Watch(req) => self.watch(req),
            Event::BusLink { up } => {
                self.bus_link(up);
                let _ = self.finish();
            }
            Event::Tick => {
                self.tick();
                self.send_due_service_tables();
                self.evict_untolerated(std::time::SystemTime::now());
                self.recheck_secrets();
                self.expire_drains();
                self.step_agent_updates(std::time::SystemTime::now());
                self.run_cron_jobs(std::time::SystemTime::now());
                self.run_jobs(std::time::SystemTime::now());
                self.end_terminated_namespaces();
                let _ = self.finish();
            }
        }
    }
}
