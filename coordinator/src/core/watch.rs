//! Watches (`contract::watch`): every committed change to an object, and every new event,
//! gets the next resource version, goes into a bounded in-memory log, and to the watchers of
//! its kind.
//!
//! Resource versions are not stored: at start they begin at the wall clock in ms x 1000, so
//! they only grow across restarts (unless the clock steps back), and a version from before a
//! restart is older than the log: 410 Gone, and the client lists again, as with Kubernetes'
//! compacted revisions. A watcher that does not keep up (its channel full) is dropped: its
//! stream ends, and it resumes from the last version it read, losing nothing; the core
//! never waits for a watcher and never buffers without bound.

use std::collections::{BTreeSet, HashSet, VecDeque};

use tokio::sync::{mpsc, oneshot};

use crate::contract::watch::{Change, WatchEvent};
use crate::contract::ResourceKind;
use crate::model::api;

use super::{ApiError, Core, Tab};

/// Changes kept for watchers that resume.
pub const WATCH_LOG: usize = 1024;
/// Changes queued per watcher before it counts as too slow and is dropped.
pub const WATCH_BUFFER: usize = 256;

/// What a watch follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    Kind(ResourceKind),
    Events,
}

/// `Event::Watch`: open a watch.
#[derive(Debug)]
pub struct WatchRequest {
    pub what: Watched,
    /// Only this namespace's changes (`WatchEvent::in_namespace`); `None`: every one.
    pub namespace: Option<String>,
    /// Resume after this resource version; `None`: start with every current object.
    pub since: Option<u64>,
    pub reply: oneshot::Sender<Result<WatchStart, ApiError>>,
}

/// An open watch: what to send first, then what comes.
#[derive(Debug)]
pub struct WatchStart {
    pub backlog: Vec<WatchEvent>,
    pub live: mpsc::Receiver<WatchEvent>,
}

/// An open watch: what it follows, where, and its channel.
#[derive(Debug)]
struct Watcher {
    what: Watched,
    namespace: Option<String>,
    tx: mpsc::Sender<WatchEvent>,
}

/// Whether `ev` is in `namespace` (any, without one).
fn in_scope(ev: &WatchEvent, namespace: Option<&str>) -> bool {
    namespace.is_none_or(|ns| ev.in_namespace() == Some(ns))
}

/// The watch state of the core.
#[derive(Debug)]
pub(super) struct Watches {
    revision: u64,
    /// Every change after this version is in `log`.
    floor: u64,
    log: VecDeque<WatchEvent>,
    /// The objects that exist, to tell ADDED from MODIFIED.
    known: HashSet<(Tab, String)>,
    watchers: Vec<Watcher>,
}

impl Watches {
    pub(super) fn new() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let start = ms.saturating_mul(1000);
        Self {
            revision: start,
            floor: start,
            log: VecDeque::new(),
            known: HashSet::new(),
            watchers: Vec::new(),
        }
    }

    fn push(&mut self, what: Watched, mut ev: WatchEvent) {
        self.revision += 1;
        ev.resource_version = self.revision;
        // A full or closed channel drops the watcher (see the module docs); a watcher of
        // another namespace is not sent the change, so another team's traffic never
        // fills its channel.
        self.watchers.retain(|w| {
            w.what != what
                || !in_scope(&ev, w.namespace.as_deref())
                || w.tx.try_send(ev.clone()).is_ok()
        });
        self.log.push_back(ev);
        while self.log.len() > WATCH_LOG {
            if let Some(old) = self.log.pop_front() {
                self.floor = old.resource_version;
            }
        }
    }
}

/// The kind a table's objects are watched as; revisions are not watched.
fn watched_kind(tab: Tab) -> Option<ResourceKind> {
    match tab {
        Tab::Deployment => Some(ResourceKind::Deployment),
        Tab::DaemonSet => Some(ResourceKind::DaemonSet),
        Tab::Pod => Some(ResourceKind::Pod),
        Tab::Node => Some(ResourceKind::Node),
        Tab::Secret => Some(ResourceKind::Secret),
        Tab::AgentUpdate => Some(ResourceKind::AgentUpdate),
        Tab::Job => Some(ResourceKind::Job),
        Tab::CronJob => Some(ResourceKind::CronJob),
        Tab::ConfigMap => Some(ResourceKind::ConfigMap),
        Tab::Service => Some(ResourceKind::Service),
        Tab::Namespace => Some(ResourceKind::Namespace),
        Tab::Revision => None,
    }
}

fn watched_of(kind: &str) -> Watched {
    ResourceKind::parse(kind).map_or(Watched::Events, Watched::Kind)
}

impl Core {
    /// After a load: which objects exist.
    pub(super) fn rebuild_known(&mut self) {
        let tabs = [
            (Tab::Deployment, self.deployments.keys().collect::<Vec<_>>()),
            (Tab::DaemonSet, self.daemon_sets.keys().collect()),
            (Tab::Pod, self.pods.keys().collect()),
            (Tab::Node, self.nodes.keys().collect()),
            (Tab::Secret, self.secrets.keys().collect()),
            (Tab::AgentUpdate, self.agent_updates.keys().collect()),
            (Tab::Job, self.jobs.keys().collect()),
            (Tab::CronJob, self.cron_jobs.keys().collect()),
            (Tab::ConfigMap, self.config_maps.keys().collect()),
            (Tab::Service, self.services.keys().collect()),
            (Tab::Namespace, self.namespaces.keys().collect()),
        ];
        let known = tabs
            .into_iter()
            .flat_map(|(t, names)| names.into_iter().map(move |n| (t, n.clone())))
            .collect();
        self.watches.known = known;
    }

    /// After a commit: the changed objects and the events from sequence `first_event` on.
    pub(super) fn publish_changes(&mut self, changed: &BTreeSet<(Tab, String)>, first_event: u64) {
        for (tab, name) in changed {
            let Some(kind) = watched_kind(*tab) else {
                continue;
            };
            let object = self
                .get_one(kind, name)
                .ok()
                .map(super::namespaces::external_object);
            let key = (*tab, name.clone());
            let change = match object {
                Some(_) if self.watches.known.insert(key.clone()) => Change::Added,
                Some(_) => Change::Modified,
                None if self.watches.known.remove(&key) => Change::Deleted,
                None => continue, // made and removed in one transaction
            };
            let ev = WatchEvent {
                change,
                resource_version: 0,
                kind: kind.as_str().to_owned(),
                name: if kind.is_namespaced() {
                    api::split_qualified(name).1.to_owned()
                } else {
                    name.clone()
                },
                object,
                event: None,
                namespace: kind
                    .is_namespaced()
                    .then(|| api::namespace_of(name).to_owned()),
            };
            self.watches.push(Watched::Kind(kind), ev);
        }
        // Only the newest events can be new: walk back from the end, not over all of them.
        let mut new: Vec<_> = self
            .events
            .iter()
            .rev()
            .take_while(|(seq, _)| *seq >= first_event)
            .map(|(seq, e)| (*seq, e.clone()))
            .collect();
        new.reverse();
        for (seq, e) in new {
            let ev = WatchEvent {
                change: Change::Added,
                resource_version: 0,
                kind: "event".into(),
                name: seq.to_string(),
                object: None,
                event: Some(super::namespaces::external_event(e)),
                namespace: None,
            };
            self.watches.push(Watched::Events, ev);
        }
    }

    /// Opens a watch (see the module docs).
    pub(super) fn watch(&mut self, req: WatchRequest) {
        let w = &self.watches;
        let backlog = match req.since {
            Some(v) if v < w.floor || v > w.revision => Err(ApiError::Gone(format!(
                "resource version {v} is too old (the oldest known is {}): list again",
                w.floor
            ))),
            Some(v) => Ok(w
                .log
                .iter()
                .filter(|e| e.resource_version > v && watched_of(&e.kind) == req.what)
                .filter(|e| in_scope(e, req.namespace.as_deref()))
                .cloned()
                .collect()),
            None => Ok(self
                .current(req.what)
                .into_iter()
                .filter(|e| in_scope(e, req.namespace.as_deref()))
                .collect()),
        };
        let answer = backlog.map(|backlog| {
            let (tx, live) = mpsc::channel(WATCH_BUFFER);
            self.watches.watchers.push(Watcher {
                what: req.what,
                namespace: req.namespace,
                tx,
            });
            WatchStart { backlog, live }
        });
        let _ = req.reply.send(answer);
    }

    /// Every current object (or event) as ADDED at the current version.
    fn current(&self, what: Watched) -> Vec<WatchEvent> {
        let revision = self.watches.revision;
        match what {
            Watched::Kind(kind) => self
                .get_all(kind)
                .into_iter()
                .map(super::namespaces::external_object)
                .map(|o| WatchEvent {
                    change: Change::Added,
                    resource_version: revision,
                    kind: kind.as_str().to_owned(),
                    name: o.name().to_owned(),
                    namespace: o.namespace().map(str::to_owned),
                    object: Some(o),
                    event: None,
                })
                .collect(),
            Watched::Events => self
                .events
                .iter()
                .map(|(seq, e)| WatchEvent {
                    change: Change::Added,
                    resource_version: revision,
                    kind: "event".into(),
                    name: seq.to_string(),
                    object: None,
                    event: Some(super::namespaces::external_event(e.clone())),
                    namespace: None,
                })
                .collect(),
        }
    }
}
