//! Transactions: each event's changes are marked as touched, settled, committed to the
//! store in one atomic `commit`, and only then sent; a failed commit reloads the committed
//! state (see the module docs of [`crate::core`]).

use std::collections::BTreeMap;

use tokio::time::Instant;

use crate::decide::controller;
use crate::model::api;
use crate::store::{Op, Store, Table};

use super::events::event_key;
use super::{ApiError, Core, CoreError, Tab, MAX_EVENTS};

/// How often a core holding uncommitted changes tries to reload from the store.
const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Why and since when the core holds changes the store does not have (see `finish`).
pub(super) struct Stale {
    error: String,
    tried: std::time::Instant,
}

impl Core {
    /// Replaces the in-memory state with what the store holds (at start, and to drop an
    /// uncommitted change).
    pub(super) fn load(&mut self) -> Result<(), CoreError> {
        let store = self.store.as_ref();
        self.deployments = load_table(store, Table::Deployments, "deployment")?;
        self.daemon_sets = load_table(store, Table::DaemonSets, "daemon set")?;
        self.jobs = load_table(store, Table::Jobs, "job")?;
        self.cron_jobs = load_table(store, Table::CronJobs, "cron job")?;
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
        self.agent_updates = load_table(store, Table::AgentUpdates, "agent update")?;
        self.config_maps = load_table(store, Table::ConfigMaps, "config map")?;
        self.services = load_table(store, Table::Services, "service")?;
        self.namespaces = load_table(store, Table::Namespaces, "namespace")?;
        let events: BTreeMap<String, api::Event> = load_table(store, Table::Events, "event")?;
        self.events = events
            .into_iter()
            .filter_map(|(k, e)| Some((k.parse::<u64>().ok()?, e)))
            .collect();
        self.next_event = self.events.back().map_or(1, |(s, _)| s + 1);
        let now = Instant::now();
        // A node known from the store gets a full heartbeat timeout to come back.
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            self.live_entry(&name, now);
        }
        // ...and a NotReady one a full eviction timeout.
        for n in self.nodes.values().filter(|n| !n.status.ready) {
            self.not_ready_since
                .entry(n.metadata.name.clone())
                .or_insert(now);
        }
        self.desired = self.desired_by_node().into_iter().collect();
        self.refresh_node_crons();
        self.desired_crons = self
            .nodes
            .keys()
            .map(|n| (n.clone(), self.desired_crons(n)))
            .collect();
        self.desired_secrets = self
            .nodes
            .keys()
            .map(|n| (n.clone(), self.desired_secret_list(n)))
            .collect();
        // What was queued is dropped: ConfigMaps are sent again.
        self.sent_config_maps.clear();
        self.sent_service_tables.clear();
        self.pod_cidrs_decided = false;
        self.dirty.clear();
        self.new_events.clear();
        self.pending_out.clear();
        self.rebuild_known();
        Ok(())
    }

    pub(super) fn touch(&mut self, tab: Tab, name: &str) {
        self.dirty.insert((tab, name.to_owned()));
    }

    /// Throws away uncommitted changes by reloading the committed state.
    pub(super) fn abort(&mut self) {
        if self.dirty.is_empty() && self.new_events.is_empty() && self.pending_out.is_empty() {
            return;
        }
        if let Err(e) = self.load() {
            tracing::error!(error = %e, "cannot reload state from the store; holding changes until it answers");
            self.stale = Some(Stale {
                error: e.to_string(),
                tried: std::time::Instant::now(),
            });
        }
    }

    /// Settles the state, commits it atomically, then sends what the change requires.
    pub(super) fn finish(&mut self) -> Result<(), ApiError> {
        if let Some(stale) = &self.stale {
            // The change just made was made on top of uncommitted ones: both go. A node's
            // report comes again with its next heartbeat; a client gets the error. Reloads
            // are tried at most every RELOAD_EVERY, so that while the store is away each
            // event fails at once instead of waiting on it (ticks would starve the API).
            if stale.tried.elapsed() < RELOAD_EVERY {
                return Err(ApiError::Internal(format!(
                    "the store is unavailable, nothing was saved: {}",
                    stale.error
                )));
            }
            if let Err(e) = self.load() {
                let error = e.to_string();
                self.stale = Some(Stale {
                    error: error.clone(),
                    tried: std::time::Instant::now(),
                });
                return Err(ApiError::Internal(format!(
                    "the store is unavailable, nothing was saved: {error}"
                )));
            }
            self.stale = None;
            tracing::info!("the store answers again; state reloaded");
            return Err(ApiError::Internal(
                "the store was unavailable; state reloaded, nothing was saved: retry".into(),
            ));
        }
        self.settle();
        if self.dirty.iter().any(|(t, _)| *t == Tab::AgentUpdate) {
            self.share_rollout_versions();
        }
        if !self.dirty.is_empty() || !self.new_events.is_empty() || self.expired_events() > 0 {
            let ops = self.ops();
            let started = std::time::Instant::now();
            let committed = self.store.commit(ops);
            self.metrics.committed(started.elapsed());
            if let Err(e) = committed {
                tracing::error!(error = %e, "store commit failed; reloading the committed state");
                self.abort();
                return Err(ApiError::Internal(format!("cannot save the change: {e}")));
            }
            let first_event = self.next_event;
            for e in std::mem::take(&mut self.new_events) {
                self.events.push_back((self.next_event, e));
                self.next_event += 1;
            }
            while self.events.len() > MAX_EVENTS {
                self.events.pop_front();
            }
            let expired = self.expired_events();
            self.events.drain(..expired);
            let changed = std::mem::take(&mut self.dirty);
            self.publish_changes(&changed, first_event);
        }
        for msg in std::mem::take(&mut self.pending_out) {
            // Never block the core on the bus: a message lost here is resent when the next
            // heartbeat shows the mismatch; a Service table, which no heartbeat checks, at the
            // end of the next window.
            if let Err(e) = self.outbound.try_send(msg) {
                tracing::warn!(error = %e, "outbound queue full; the next heartbeat will resend");
                let lost = e.into_inner();
                if matches!(lost.body, baton_proto::Body::ServiceTable(_)) {
                    self.service_table_lost(lost.node.as_str());
                }
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
                Tab::DaemonSet => (
                    Table::DaemonSets,
                    self.daemon_sets.get(name).map(serde_json::to_vec),
                ),
                Tab::Job => (Table::Jobs, self.jobs.get(name).map(serde_json::to_vec)),
                Tab::CronJob => (
                    Table::CronJobs,
                    self.cron_jobs.get(name).map(serde_json::to_vec),
                ),
                Tab::Pod => (Table::Pods, self.pods.get(name).map(serde_json::to_vec)),
                Tab::Node => (Table::Nodes, self.nodes.get(name).map(serde_json::to_vec)),
                Tab::Revision => (
                    Table::Revisions,
                    self.revisions.get(name).map(serde_json::to_vec),
                ),
                Tab::AgentUpdate => (
                    Table::AgentUpdates,
                    self.agent_updates.get(name).map(serde_json::to_vec),
                ),
                Tab::ConfigMap => (
                    Table::ConfigMaps,
                    self.config_maps.get(name).map(serde_json::to_vec),
                ),
                Tab::Service => (
                    Table::Services,
                    self.services.get(name).map(serde_json::to_vec),
                ),
                Tab::Namespace => (
                    Table::Namespaces,
                    self.namespaces.get(name).map(serde_json::to_vec),
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
        let over = total.saturating_sub(MAX_EVENTS).max(self.expired_events());
        for (old, _) in self.events.iter().take(over) {
            ops.push(Op::Delete(Table::Events, event_key(*old)));
        }
        // New events beyond the bound within one transaction (a huge apply) are
        // written and trimmed at the next commit.
        ops
    }
}

pub(super) fn load_table<T: serde::de::DeserializeOwned>(
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
