//! Agent update rollouts: `kind: AgentUpdate` applied, stepped every tick and after each
//! node report by the pure decider (`crate::decide::agent_update`), and paused, resumed
//! or aborted by the API.
//!
//! Orders go out retained on the node's `down/update` topic, so a node offline when its
//! wave starts finds its order when it comes back; `AgentUpdate(None)` withdraws an
//! order on abort or halt (for nodes that have not started) and clears it once the node
//! reported its last word (committed, rolled back, refused), so an agent that went back
//! to its old version is not handed the same order again. A Hello from a node with an
//! order not acted on republishes it: the embedded broker forgets retained messages
//! when the coordinator restarts.
//!
//! Releases are read from the registry's index (`Core::with_releases`) at each step,
//! never cached: an import or delete shows at the next step. Which version each rollout
//! installs is shared back, so the registry refuses to delete a release in use. Steps take
//! the wall clock because the rollout's times are stored and outlive the process.

use std::time::SystemTime;

use baton_proto::{Body, NodeName};

use crate::contract::{Applied, ApplyAction, ResourceKind};
use crate::decide::agent_update::{self as decide, AgentUpdateError};
use crate::model::api::{self, NodeUpdatePhase};
use crate::model::release::ReleaseRecord;
use crate::model::wire;

use super::{AgentRolloutAction, ApiError, ApiReply, Core, Outbound, Tab};

impl Core {
    /// The rollout still going (at most one is), if any.
    fn open_rollout(&self) -> Option<&api::AgentUpdate> {
        self.agent_updates
            .values()
            .find(|u| !u.status.phase.is_final())
    }

    /// Checked for every AgentUpdate of a manifest before anything is applied: one
    /// rollout at a time, and a rollout's spec does not change while it goes on.
    pub(super) fn check_agent_update(&self, u: &api::AgentUpdate) -> Result<(), ApiError> {
        let name = &u.metadata.name;
        if let Some(open) = self.open_rollout() {
            if open.metadata.name != *name {
                return Err(ApiError::Conflict(format!(
                    "agent update {:?} is still {:?}; abort it (baton agent rollout abort {}) \
                     or let it finish first",
                    open.metadata.name, open.status.phase, open.metadata.name
                )));
            }
            if open.spec != u.spec {
                return Err(ApiError::Conflict(format!(
                    "agent update {name:?} is {:?}; its spec cannot change while it goes on: \
                     abort it first",
                    open.status.phase
                )));
            }
        }
        Ok(())
    }

    /// Stores a rollout. A finished one of the same name is replaced by a new one with
    /// a fresh status; an open one with the same spec is unchanged.
    pub(super) fn apply_agent_update(&mut self, mut u: api::AgentUpdate) -> Applied {
        let name = u.metadata.name.clone();
        let action = match self.agent_updates.get(&name) {
            Some(old) if !old.status.phase.is_final() => ApplyAction::Unchanged,
            Some(old) => {
                u.metadata.uid = super::new_uid();
                u.metadata.generation = old.metadata.generation + 1;
                ApplyAction::Configured
            }
            None => {
                u.metadata.uid = super::new_uid();
                u.metadata.generation = 1;
                ApplyAction::Created
            }
        };
        if action != ApplyAction::Unchanged {
            u.metadata.creation_timestamp = api::now_rfc3339();
            u.status = api::AgentUpdateStatus::default();
            self.agent_updates.insert(name.clone(), u);
            self.touch(Tab::AgentUpdate, &name);
            self.record(
                format!("agentupdate/{name}"),
                "RolloutStarted",
                format!(
                    "Rolling out agent {}",
                    self.agent_updates[&name].spec.version
                ),
            );
            self.step_agent_update(&name, SystemTime::now());
        }
        Applied {
            kind: ResourceKind::AgentUpdate,
            name,
            action,
        }
    }

    /// Deletes a rollout; an open one is aborted first, so its unstarted orders go.
    pub(super) fn delete_agent_update(&mut self, name: &str) -> Result<(), ApiError> {
        let Some(mut u) = self.agent_updates.remove(name) else {
            return Err(ApiError::NotFound(format!(
                "agentupdate {name:?} not found"
            )));
        };
        if let Ok(withdraw) = decide::abort(&mut u) {
            self.withdraw(&withdraw);
        }
        self.touch(Tab::AgentUpdate, name);
        Ok(())
    }

    pub(super) fn agent_rollout(
        &mut self,
        name: Option<String>,
        action: AgentRolloutAction,
    ) -> Result<ApiReply, ApiError> {
        let name = match (name, action) {
            (Some(n), _) => n,
            (None, AgentRolloutAction::Status) => self
                .open_rollout()
                .or_else(|| {
                    self.agent_updates.values().max_by(|a, b| {
                        (&a.metadata.creation_timestamp, &a.metadata.name)
                            .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
                    })
                })
                .map(|u| u.metadata.name.clone())
                .ok_or_else(|| ApiError::NotFound("no agent update rollout yet".into()))?,
            (None, _) => return Err(ApiError::BadRequest("a rollout name is required".into())),
        };
        let u = self
            .agent_updates
            .get_mut(&name)
            .ok_or_else(|| ApiError::NotFound(format!("agentupdate {name:?} not found")))?;
        let conflict = |e: AgentUpdateError| ApiError::Conflict(e.to_string());
        let (reason, withdraw) = match action {
            AgentRolloutAction::Status => return Ok(ApiReply::AgentUpdate(u.clone())),
            AgentRolloutAction::Pause => {
                decide::pause(u).map_err(conflict)?;
                ("RolloutPaused", Vec::new())
            }
            AgentRolloutAction::Resume => {
                decide::resume(u).map_err(conflict)?;
                ("RolloutResumed", Vec::new())
            }
            AgentRolloutAction::Abort => ("RolloutAborted", decide::abort(u).map_err(conflict)?),
        };
        self.touch(Tab::AgentUpdate, &name);
        self.record(
            format!("agentupdate/{name}"),
            reason,
            format!("{reason} by the user"),
        );
        self.withdraw(&withdraw);
        self.step_agent_update(&name, SystemTime::now());
        Ok(ApiReply::AgentUpdate(self.agent_updates[&name].clone()))
    }

    fn releases(&self) -> Vec<ReleaseRecord> {
        self.release_index.releases()
    }

    /// Publishes which version each rollout installs to the registry's view.
    pub(super) fn share_rollout_versions(&self) {
        self.rollout_versions.set(
            self.agent_updates
                .iter()
                .map(|(name, u)| (u.spec.version.clone(), name.clone()))
                .collect(),
        );
    }

    /// Steps every open rollout (each tick).
    pub(super) fn step_agent_updates(&mut self, now: SystemTime) {
        let open: Vec<String> = self
            .agent_updates
            .values()
            .filter(|u| !u.status.phase.is_final())
            .map(|u| u.metadata.name.clone())
            .collect();
        for name in open {
            self.step_agent_update(&name, now);
        }
    }

    fn step_agent_update(&mut self, name: &str, now: SystemTime) {
        let Some(u) = self.agent_updates.get(name) else {
            return;
        };
        if u.status.phase.is_final() {
            return;
        }
        let releases = self.releases();
        let nodes: Vec<&api::Node> = self.nodes.values().collect();
        let step = decide::step(u, &nodes, &releases, now);
        let old_phase = u.status.phase;
        if step.status == u.status {
            return;
        }
        let mut u = u.clone();
        u.status = step.status;
        for order in &step.orders {
            match wire::agent_update_order(&u, &order.release) {
                Ok(o) => self.send_update(&order.node, Some(o)),
                Err(e) => {
                    tracing::error!(node = %order.node, error = %e, "cannot build an update order")
                }
            }
        }
        self.withdraw(&step.withdraw);
        if u.status.phase != old_phase {
            let reason = match u.status.phase {
                api::RolloutPhase::Halted => "RolloutHalted",
                api::RolloutPhase::Complete => "RolloutComplete",
                api::RolloutPhase::Paused => "RolloutPaused",
                api::RolloutPhase::Aborted => "RolloutAborted",
                api::RolloutPhase::Progressing => "RolloutProgressing",
            };
            let message = u.status.reason.clone().unwrap_or_default();
            self.record(format!("agentupdate/{name}"), reason, message);
        }
        self.agent_updates.insert(name.to_owned(), u);
        self.touch(Tab::AgentUpdate, name);
    }

    fn send_update(&mut self, node: &str, order: Option<baton_proto::AgentUpdate>) {
        let Ok(node) = NodeName::new(node) else {
            return;
        };
        self.pending_out.push(Outbound {
            node,
            body: Body::AgentUpdate(order),
            retain: true,
        });
    }

    fn withdraw(&mut self, nodes: &[String]) {
        for n in nodes {
            self.send_update(n, None);
        }
    }

    /// A node's `UpdateReport`: into its rollout's status, onto the node
    /// (`status.lastUpdate`, for `describe node`) with an event when it is the last word,
    /// then a step, so the next wave need not wait for the tick.
    pub(super) fn update_report(&mut self, node: &str, report: &baton_proto::UpdateReport) {
        let r = wire::update_report(report);
        let now = SystemTime::now();
        let Some(u) = self.agent_updates.get_mut(&r.rollout) else {
            tracing::info!(node, rollout = %r.rollout, "update report for an unknown rollout");
            return;
        };
        let from = u
            .status
            .nodes
            .iter()
            .find(|n| n.node == node)
            .map(|n| n.from.clone())
            .unwrap_or_default();
        if !decide::apply_report(u, node, &r, now) {
            return;
        }
        self.touch(Tab::AgentUpdate, &r.rollout);
        if r.phase.is_final() {
            let (reason, verb) = match r.phase {
                NodeUpdatePhase::Committed => ("AgentUpdateCommitted", "committed"),
                NodeUpdatePhase::RolledBack => ("AgentUpdateRolledBack", "rolled back"),
                _ => ("AgentUpdateRefused", "refused"),
            };
            let mut message = format!("Agent update {from} -> {} {verb}", r.version);
            if let Some(why) = &r.reason {
                message.push_str(": ");
                message.push_str(why);
            }
            self.record(format!("node/{node}"), reason, message);
            if let Some(n) = self.nodes.get_mut(node) {
                n.status.last_update = Some(api::LastUpdate {
                    rollout: r.rollout.clone(),
                    version: r.version.clone(),
                    phase: r.phase,
                    reason: r.reason.clone(),
                    at: api::now_rfc3339(),
                });
                self.touch(Tab::Node, node);
            }
            // The node has said its last word: clear its retained order.
            self.send_update(node, None);
        }
        self.step_agent_update(&r.rollout, now);
    }

    /// After a Hello: republishes the order of a node that has not acted on it.
    pub(super) fn republish_update_order(&mut self, node: &str) {
        let Some(u) = self.open_rollout() else {
            return;
        };
        let Some(nu) = u.status.nodes.iter().find(|n| {
            n.node == node && n.phase == NodeUpdatePhase::Pending && n.ordered_at.is_some()
        }) else {
            return;
        };
        let release = nu
            .release
            .as_deref()
            .and_then(|d| self.releases().into_iter().find(|r| r.digest() == d));
        if let Some(order) = release.and_then(|r| wire::agent_update_order(u, &r).ok()) {
            self.send_update(node, Some(order));
        }
    }

    /// Steps the open rollout at `now` (tests: time moved on).
    #[cfg(test)]
    pub(super) fn step_agent_updates_at(&mut self, now: SystemTime) {
        self.step_agent_updates(now);
        let _ = self.finish();
    }
}
