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
    let hash = template_hash(&d.spec.template);
    let newest = existing.iter().map(|r| r.revision).max().unwrap_or(0);
    let cause = d
        .metadata
        .annotations
        .get(api::CHANGE_CAUSE_ANNOTATION)
        .cloned();
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
                deployment: d.metadata.name.clone(),
                revision: newest + 1,
                template_hash: hash.clone(),
                template: d.spec.template.clone(),
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
        .skip(d.spec.revision_history_limit as usize)
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
    let hash = template_hash(&d.spec.template);
    let name = &d.metadata.name;
    let mut p = RolloutProgress {
        replicas: d.spec.replicas,
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
        |what: String| format!("Waiting for deployment {name:?} rollout to finish: {what}...");
    p.message = if p.updated < p.replicas {
        waiting(format!(
            "{} out of {} new replicas have been updated",
            p.updated, p.replicas
        ))
    } else if p.old > 0 {
        waiting(format!("{} old replicas are pending termination", p.old))
    } else if p.updated_ready < p.updated {
        waiting(format!(
            "{} of {} updated replicas are available",
            p.updated_ready, p.updated
        ))
    } else {
        p.done = true;
        p.failure = None;
        format!("deployment {name:?} successfully rolled out")
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
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn deployment(image: &str, limit: u32, cause: Option<&str>) -> api::Deployment {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let mut annotations = BTreeMap::new();
        if let Some(c) = cause {
            annotations.insert(api::CHANGE_CAUSE_ANNOTATION.to_string(), c.to_string());
        }
        api::Deployment {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            metadata: api::ObjectMeta {
                name: "web".into(),
                annotations,
                ..Default::default()
            },
            spec: api::DeploymentSpec {
                replicas: 2,
                selector: api::LabelSelector {
                    match_labels: labels.clone(),
                },
                template: api::PodTemplateSpec {
                    metadata: api::TemplateMeta {
                        labels,
                        annotations: BTreeMap::new(),
                    },
                    spec: api::PodSpec {
                        containers: vec![api::Container {
                            name: "app".into(),
                            image: image.into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                },
                strategy: Default::default(),
                revision_history_limit: limit,
            },
            status: Default::default(),
        }
    }

    /// Applies a plan to a revision list.
    fn apply(revs: &mut Vec<api::Revision>, plan: RevisionPlan) {
        revs.retain(|r| !plan.delete.contains(&r.revision));
        for p in plan.put {
            revs.retain(|r| r.revision != p.revision);
            revs.push(p);
        }
        revs.sort_by_key(|r| r.revision);
    }

    /// Applies `d` as a user would, syncing until the plan is empty (it must be after one
    /// step), and renders the history as `rev:image[:cause]`.
    fn step(revs: &mut Vec<api::Revision>, d: &api::Deployment, live: &[&str]) -> Vec<String> {
        let live: BTreeSet<String> = live
            .iter()
            .map(|img| template_hash(&deployment(img, 0, None).spec.template))
            .collect();
        let plan = sync_revisions(d, &revs.iter().collect::<Vec<_>>(), &live, "t");
        apply(revs, plan);
        let again = sync_revisions(d, &revs.iter().collect::<Vec<_>>(), &live, "t");
        assert!(again.is_empty(), "not idempotent: {again:?}");
        revs.iter()
            .map(|r| {
                let img = &r.template.spec.containers[0].image;
                match &r.change_cause {
                    Some(c) => format!("{}:{img}:{c}", r.revision),
                    None => format!("{}:{img}", r.revision),
                }
            })
            .collect()
    }

    #[test]
    fn revision_bookkeeping() {
        let mut revs = Vec::new();
        // (what, image, history limit, change-cause, images with live pods, history after)
        type Row<'a> = (
            &'a str,
            &'a str,
            u32,
            Option<&'a str>,
            &'a [&'a str],
            &'a [&'a str],
        );
        let rows: &[Row] = &[
            ("first apply", "v1", 10, None, &[], &["1:v1"]),
            ("same template again", "v1", 10, None, &["v1"], &["1:v1"]),
            (
                "new template, with a cause",
                "v2",
                10,
                Some("to v2"),
                &["v1"],
                &["1:v1", "2:v2:to v2"],
            ),
            (
                "cause changes alone",
                "v2",
                10,
                Some("v2 for real"),
                &["v2"],
                &["1:v1", "2:v2:v2 for real"],
            ),
            (
                "re-applying v1 renumbers it",
                "v1",
                10,
                None,
                &["v2"],
                &["2:v2:v2 for real", "3:v1"],
            ),
            (
                "v3",
                "v3",
                10,
                None,
                &["v1"],
                &["2:v2:v2 for real", "3:v1", "4:v3"],
            ),
            (
                "limit 1 prunes the oldest but keeps one with live pods",
                "v4",
                1,
                None,
                &["v2", "v3"],
                &["2:v2:v2 for real", "4:v3", "5:v4"],
            ),
            (
                "once its pods are gone it goes",
                "v4",
                1,
                None,
                &["v4"],
                &["4:v3", "5:v4"],
            ),
            (
                "limit 0 keeps only the current",
                "v4",
                0,
                None,
                &["v4"],
                &["5:v4"],
            ),
        ];
        for (what, img, limit, cause, live, want) in rows {
            let d = deployment(img, *limit, *cause);
            assert_eq!(step(&mut revs, &d, live), *want, "{what}");
        }
    }

    #[test]
    fn undo_targets() {
        let mut revs = Vec::new();
        for img in ["v1", "v2", "v3"] {
            step(&mut revs, &deployment(img, 10, None), &[]);
        }
        let all: Vec<&api::Revision> = revs.iter().collect();
        let current = template_hash(&deployment("v3", 10, None).spec.template);
        let img = |r: &api::Revision| r.template.spec.containers[0].image.clone();
        assert_eq!(img(undo_target("web", &all, &current, None).unwrap()), "v2");
        assert_eq!(
            img(undo_target("web", &all, &current, Some(0)).unwrap()),
            "v2"
        );
        assert_eq!(
            img(undo_target("web", &all, &current, Some(1)).unwrap()),
            "v1"
        );
        assert_eq!(
            undo_target("web", &all, &current, Some(7)).unwrap_err(),
            RolloutError::RevisionNotFound(7)
        );
        let only: Vec<&api::Revision> = revs[2..].iter().collect();
        assert_eq!(
            undo_target("web", &only, &current, None)
                .unwrap_err()
                .to_string(),
            "no rollout history found for deployment \"web\""
        );

        // Undo to v2 then reconciling revisions: v2 becomes revision 4, and undoing again
        // goes back to v3.
        let mut d = deployment("v3", 10, None);
        d.spec.template = undo_target("web", &all, &current, None)
            .unwrap()
            .template
            .clone();
        assert_eq!(step(&mut revs, &d, &[]), ["1:v1", "3:v3", "4:v2"]);
        let all: Vec<&api::Revision> = revs.iter().collect();
        let current = template_hash(&d.spec.template);
        assert_eq!(img(undo_target("web", &all, &current, None).unwrap()), "v3");
    }

    fn pod(d: &api::Deployment, name: &str, ready: bool, terminating: bool) -> api::Pod {
        let mut p = controller::new_pod(d, &template_hash(&d.spec.template), name);
        p.spec.node_name = Some("n1".into());
        if terminating {
            p.metadata.deletion_timestamp = Some("t".into());
        }
        if ready {
            p.status.phase = api::PodPhase::Running;
            p.status.container_statuses = vec![api::ContainerStatus {
                name: "app".into(),
                state: api::ContainerState::Running {
                    started_at: "t".into(),
                },
                ready: true,
                restart_count: 0,
                ..Default::default()
            }];
        }
        p
    }

    #[test]
    fn progress_messages() {
        let v1 = deployment("v1", 10, None);
        let v2 = deployment("v2", 10, None);
        let rows: Vec<(&str, Vec<api::Pod>, &str, bool)> = vec![
            (
                "nothing updated",
                vec![pod(&v1, "a", true, false), pod(&v1, "b", true, false)],
                "Waiting for deployment \"web\" rollout to finish: 0 out of 2 new replicas have been updated...",
                false,
            ),
            (
                "old pending termination",
                vec![
                    pod(&v1, "a", true, false),
                    pod(&v2, "b", true, false),
                    pod(&v2, "c", false, false),
                ],
                "Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination...",
                false,
            ),
            (
                "not all available",
                vec![
                    pod(&v1, "a", true, true),
                    pod(&v2, "b", true, false),
                    pod(&v2, "c", false, false),
                ],
                "Waiting for deployment \"web\" rollout to finish: 1 of 2 updated replicas are available...",
                false,
            ),
            (
                "done while old pods drain",
                vec![
                    pod(&v1, "a", true, true),
                    pod(&v2, "b", true, false),
                    pod(&v2, "c", true, false),
                ],
                "deployment \"web\" successfully rolled out",
                true,
            ),
        ];
        for (what, pods, msg, done) in rows {
            let owned: Vec<&api::Pod> = pods.iter().collect();
            let p = rollout_progress(&v2, &owned, 2);
            assert_eq!((p.message.as_str(), p.done), (msg, done), "{what}");
            assert_eq!(p.failure, None, "{what}");
        }

        let mut bad = pod(&v2, "b", false, false);
        bad.status.container_statuses = vec![api::ContainerStatus {
            name: "app".into(),
            state: api::ContainerState::Failed {
                reason: "ImagePullFailed: manifest unknown".into(),
            },
            ready: false,
            restart_count: 0,
            ..Default::default()
        }];
        let pods = [pod(&v1, "a", true, false), bad];
        let owned: Vec<&api::Pod> = pods.iter().collect();
        let p = rollout_progress(&v2, &owned, 2);
        let h = template_hash(&v2.spec.template);
        assert_eq!(
            p.failure,
            Some(format!(
                "pod web-{h}-b: container app: ImagePullFailed: manifest unknown"
            ))
        );
        assert_eq!(
            (p.updated, p.updated_ready, p.old, p.available),
            (1, 0, 1, 1)
        );
    }
}
