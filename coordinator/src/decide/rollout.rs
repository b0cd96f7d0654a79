//! Deployment revisions and rollout progress, kept pure like the controller.
//!
//! Kubernetes numbers each distinct pod template of a Deployment (on its ReplicaSets, as
//! `deployment.kubernetes.io/revision`); Baton has no ReplicaSets, so it keeps one
//! [`api::Revision`] per template, keyed `<deployment>/<revision>`, and pods point at
//! theirs through the `pod-template-hash` label. The rules follow Kubernetes:
//! - a new template gets the next number;
//! - re-applying an older template (or `rollout undo`) moves that revision to the next
//!   number, so the newest number is always the current template;
//! - beyond `revisionHistoryLimit` old revisions, the oldest are pruned, except the
//!   current one and any that still has live pods (a rollout in progress needs them).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::decide::controller::{self, template_hash};
use crate::model::api;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    #[error("no rollout history found for deployment {0:?}")]
    NoHistory(String),
    #[error("unable to find specified revision {0} in history")]
    RevisionNotFound(u64),
}

/// The store key of a revision.
pub fn revision_key(deployment: &str, revision: u64) -> String {
    format!("{deployment}/{revision}")
}

/// What [`sync_revisions`] wants changed: revisions to write, revision numbers to delete.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RevisionPlan {
    pub put: Vec<api::Revision>,
    pub delete: Vec<u64>,
}

impl RevisionPlan {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.delete.is_empty()
    }
}

/// Brings a Deployment's revisions in line with its current template.
///
/// `existing` are its stored revisions; `live_hashes` the template hashes its
/// non-terminating pods carry; `now` the timestamp for a new revision. Idempotent:
/// applying the plan and calling again yields an empty plan.
pub fn sync_revisions(
    d: &api::Deployment,
    existing: &[&api::Revision],
    live_hashes: &BTreeSet<String>,
    now: &str,
) -> RevisionPlan {
    sync_template_revisions(&Versioned::from(d), existing, live_hashes, now)
}

/// What revision bookkeeping needs of a controller, a Deployment or a DaemonSet.
pub struct Versioned<'a> {
    /// The name revisions are kept under: a Deployment's name, or
    /// [`api::daemon_set_revision_owner`].
    pub owner: String,
    pub template: &'a api::PodTemplateSpec,
    pub annotations: &'a std::collections::BTreeMap<String, String>,
    pub revision_history_limit: u32,
}

impl<'a> From<&'a api::Deployment> for Versioned<'a> {
    fn from(d: &'a api::Deployment) -> Self {
        Self {
            owner: d.metadata.name.clone(),
            template: &d.spec.template,
            annotations: &d.metadata.annotations,
            revision_history_limit: d.spec.revision_history_limit,
        }
    }
}

impl<'a> From<&'a api::DaemonSet> for Versioned<'a> {
    fn from(d: &'a api::DaemonSet) -> Self {
        Self {
            owner: api::daemon_set_revision_owner(&d.metadata.name),
            template: &d.spec.template,
            annotations: &d.metadata.annotations,
            revision_history_limit: d.spec.revision_history_limit,
        }
    }
}

/// [`sync_revisions`] for any [`Versioned`] controller.
pub fn sync_template_revisions(
    d: &Versioned<'_>,
    existing: &[&api::Revision],
    live_hashes: &BTreeSet<String>,
    now: &str,
) -> RevisionPlan {
    let hash = template_hash(d.template);
    let newest = existing.iter().map(|r| r.revision).max().unwrap_or(0);
    let cause = d.annotations.get(api::CHANGE_CAUSE_ANNOTATION).cloned();
    let mut plan = RevisionPlan::default();
    let current = match existing.iter().find(|r| r.template_hash == hash) {
        Some(r) if r.revision == newest => {
            if cause.is_some() && r.change_cause != cause {
                let mut r = (*r).clone();
                r.change_cause = cause;
                plan.put.push(r);
            }
            newest
        }
        found => {
            if let Some(r) = found {
                plan.delete.push(r.revision);
            }
            plan.put.push(api::Revision {
                deployment: d.owner.clone(),
                revision: newest + 1,
                template_hash: hash.clone(),
                template: d.template.clone(),
                change_cause: cause.or_else(|| found.and_then(|r| r.change_cause.clone())),
                creation_timestamp: now.to_owned(),
            });
            newest + 1
        }
    };
    let mut old: Vec<&api::Revision> = existing
        .iter()
        .copied()
        .filter(|r| r.revision != current && !plan.delete.contains(&r.revision))
        .collect();
    old.sort_by_key(|r| std::cmp::Reverse(r.revision));
    for r in old
        .iter()
        .skip(d.revision_history_limit as usize)
        .filter(|r| !live_hashes.contains(&r.template_hash))
    {
        plan.delete.push(r.revision);
    }
    plan
}

/// The revision `rollout undo` goes back to: `to` if given (0 means "the previous"),
/// else the newest revision before the current one.
pub fn undo_target<'a>(
    deployment: &str,
    revisions: &[&'a api::Revision],
    current_hash: &str,
    to: Option<u64>,
) -> Result<&'a api::Revision, RolloutError> {
    match to.filter(|&n| n != 0) {
        Some(n) => revisions
            .iter()
            .copied()
            .find(|r| r.revision == n)
            .ok_or(RolloutError::RevisionNotFound(n)),
        None => revisions
            .iter()
            .copied()
            .filter(|r| r.template_hash != current_hash)
            .max_by_key(|r| r.revision)
            .ok_or_else(|| RolloutError::NoHistory(deployment.to_owned())),
    }
}

/// Where a rollout stands, as `baton rollout status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutProgress {
    /// Desired replicas.
    pub replicas: u32,
    /// Non-terminating pods of the current template.
    pub updated: u32,
    /// Of those, the ready ones.
    pub updated_ready: u32,
    /// Ready pods of any template.
    pub available: u32,
    /// Non-terminating pods of older templates.
    pub old: u32,
    /// Pods draining before they stop.
    pub terminating: u32,
    /// The current revision number (0 before the first settle).
    pub revision: u64,
    pub done: bool,
    /// kubectl's wording of the current state.
    pub message: String,
    /// Why the rollout cannot finish, if it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// Restarts after which a container of the new template counts as crash-looping.
pub const CRASH_LOOP_RESTARTS: u32 = 3;

/// Computes the rollout's progress from the Deployment and its pods.
///
/// kubectl's rules: done when every replica is updated, no old replica is left and every
/// updated replica is available. A rollout fails when a pod of the new template cannot
/// run: a container failed to be created (a bad image, say), or it keeps crashing (at
/// least [`CRASH_LOOP_RESTARTS`] restarts and not ready). Kubernetes would wait for
/// `progressDeadlineSeconds` instead; on an edge fleet a fast, named failure is worth
/// more than a ten-minute timer.
pub fn rollout_progress(
    d: &api::Deployment,
    owned: &[&api::Pod],
    revision: u64,
) -> RolloutProgress {
    progress(
        "deployment",
        "replicas",
        &d.metadata.name,
        d.spec.replicas,
        &template_hash(&d.spec.template),
        owned,
        revision,
    )
}

/// A DaemonSet's rollout by the same rules, with one replica per node that wants its pod
/// (`desired`), in kubectl's DaemonSet wording.
pub fn daemon_set_progress(
    ds: &api::DaemonSet,
    desired: u32,
    owned: &[&api::Pod],
    revision: u64,
) -> RolloutProgress {
    progress(
        "daemon set",
        "pods",
        &ds.metadata.name,
        desired,
        &template_hash(&ds.spec.template),
        owned,
        revision,
    )
}

fn progress(
    kind: &str,
    unit: &str,
    name: &str,
    replicas: u32,
    hash: &str,
    owned: &[&api::Pod],
    revision: u64,
) -> RolloutProgress {
    let hash = hash.to_owned();
    let mut p = RolloutProgress {
        replicas,
        revision,
        ..Default::default()
    };
    for pod in owned {
        if controller::is_terminating(pod) {
            p.terminating += 1;
            continue;
        }
        if matches!(
            pod.status.phase,
            api::PodPhase::Succeeded | api::PodPhase::Failed
        ) {
            continue;
        }
        let ready = controller::is_ready(pod);
        if ready {
            p.available += 1;
        }
        if controller::hash_of(pod) != Some(hash.as_str()) {
            p.old += 1;
            continue;
        }
        p.updated += 1;
        if ready {
            p.updated_ready += 1;
        }
        if p.failure.is_none() {
            p.failure = pod_failure(pod);
        }
    }
    let waiting =
        |what: String| format!("Waiting for {kind} {name:?} rollout to finish: {what}...");
    p.message = if p.updated < p.replicas {
        waiting(format!(
            "{} out of {} new {unit} have been updated",
            p.updated, p.replicas
        ))
    } else if p.old > 0 {
        waiting(format!("{} old {unit} are pending termination", p.old))
    } else if p.updated_ready < p.updated {
        waiting(format!(
            "{} of {} updated {unit} are available",
            p.updated_ready, p.updated
        ))
    } else {
        p.done = true;
        p.failure = None;
        format!("{kind} {name:?} successfully rolled out")
    };
    p
}

fn pod_failure(pod: &api::Pod) -> Option<String> {
    let name = &pod.metadata.name;
    pod.status
        .container_statuses
        .iter()
        .find_map(|c| match &c.state {
            api::ContainerState::Failed { reason } => {
                Some(format!("pod {name}: container {}: {reason}", c.name))
            }
            _ if !c.ready && c.restart_count >= CRASH_LOOP_RESTARTS => Some(format!(
                "pod {name}: container {} keeps crashing ({} restarts)",
                c.name, c.restart_count
            )),
            _ => None,
        })
}

#[cfg(test)]
mod tests;
