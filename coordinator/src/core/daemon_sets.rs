//! DaemonSets: applying them, their controller's plans (`crate::decide::daemonset`) and
//! their status, rollouts and deletion. Their pods are bound to their nodes at creation,
//! so the scheduler and the node-loss eviction pass them by.

use std::collections::BTreeMap;

use crate::contract::{Applied, ApplyAction, ResourceKind};
use crate::decide::controller::{self, Action};
use crate::decide::daemonset;
use crate::decide::rollout;
use crate::model::api;

use super::{new_uid, random_suffix, ApiError, Core, Tab};

impl Core {
    pub(super) fn daemon_set_pods<'a>(
        pods: &'a BTreeMap<String, api::Pod>,
        name: &str,
    ) -> Vec<&'a api::Pod> {
        pods.values()
            .filter(|p| p.metadata.daemon_set.as_deref() == Some(name))
            .collect()
    }

    /// Runs each DaemonSet's plan; whether any pod was created or deleted.
    pub(super) fn run_daemon_sets(&mut self) -> bool {
        let mut changed = false;
        let names: Vec<String> = self.daemon_sets.keys().cloned().collect();
        for name in names {
            let Some(ds) = self.daemon_sets.get(&name) else {
                continue;
            };
            let (plan, actions) = {
                let owned = Self::daemon_set_pods(&self.pods, &name);
                let nodes: Vec<&api::Node> = self.nodes.values().collect();
                let plan = self.revision_plan(rollout::Versioned::from(ds), &owned);
                let mut suffix = random_suffix;
                let actions = daemonset::reconcile_daemon_set(ds, &nodes, &owned, &mut suffix);
                (plan, actions)
            };
            self.apply_revision_plan(&api::daemon_set_revision_owner(&name), plan);
            changed |= !actions.is_empty();
            for action in actions {
                match action {
                    Action::CreatePod(mut pod) => {
                        let pod_name = pod.metadata.name.clone();
                        if self.pods.contains_key(&pod_name) {
                            tracing::warn!(pod = %pod_name, "pod name taken; retrying at the next change");
                            continue;
                        }
                        let node = pod.spec.node_name.clone().unwrap_or_default();
                        pod.metadata.uid = new_uid();
                        pod.metadata.creation_timestamp = api::now_rfc3339();
                        pod.status.host_ip =
                            self.nodes.get(&node).and_then(|n| n.status.address.clone());
                        self.pods.insert(pod_name.clone(), pod);
                        self.touch(Tab::Pod, &pod_name);
                        self.record(
                            format!("daemonset/{name}"),
                            "SuccessfulCreate",
                            format!("Created pod: {pod_name}"),
                        );
                        self.record(
                            format!("pod/{pod_name}"),
                            "Scheduled",
                            format!("Successfully assigned {pod_name} to {node}"),
                        );
                    }
                    Action::DeletePod(pod_name) => {
                        if self.terminate_pod(&pod_name, &format!("Deleted by daemonset {name}")) {
                            self.record(
                                format!("daemonset/{name}"),
                                "SuccessfulDelete",
                                format!("Deleted pod: {pod_name}"),
                            );
                        }
                    }
                }
            }
        }
        changed
    }

    pub(super) fn update_daemon_set_statuses(&mut self) {
        let nodes: Vec<&api::Node> = self.nodes.values().collect();
        let changed: Vec<(String, api::DaemonSetStatus)> = self
            .daemon_sets
            .iter()
            .filter_map(|(name, ds)| {
                let owned = Self::daemon_set_pods(&self.pods, name);
                let status = daemonset::daemon_set_status(ds, &nodes, &owned);
                (status != ds.status).then(|| (name.clone(), status))
            })
            .collect();
        for (name, status) in changed {
            if let Some(ds) = self.daemon_sets.get_mut(&name) {
                ds.status = status;
                self.touch(Tab::DaemonSet, &name);
            }
        }
    }

    pub(super) fn apply_daemon_set(&mut self, mut d: api::DaemonSet) -> Applied {
        let name = d.metadata.name.clone();
        let action = match self.daemon_sets.get(&name) {
            None => {
                d.metadata.uid = new_uid();
                d.metadata.creation_timestamp = api::now_rfc3339();
                d.metadata.generation = 1;
                d.metadata.owner = None;
                d.metadata.daemon_set = None;
                d.status = api::DaemonSetStatus::default();
                self.daemon_sets.insert(name.clone(), d);
                ApplyAction::Created
            }
            Some(old) => {
                match super::requests::reapplied((&old.metadata, &old.spec), (d.metadata, d.spec)) {
                    None => ApplyAction::Unchanged,
                    Some((metadata, spec)) => {
                        let mut new = old.clone();
                        (new.metadata, new.spec) = (metadata, spec);
                        self.daemon_sets.insert(name.clone(), new);
                        ApplyAction::Configured
                    }
                }
            }
        };
        if action != ApplyAction::Unchanged {
            self.touch(Tab::DaemonSet, &name);
        }
        Applied {
            kind: ResourceKind::DaemonSet,
            name,
            action,
        }
    }

    /// Deletes a DaemonSet, its pods (drained like any deleted pod) and its revisions.
    pub(super) fn delete_daemon_set(&mut self, name: &str) -> Result<(), ApiError> {
        if self.daemon_sets.remove(name).is_none() {
            return Err(Self::not_found(ResourceKind::DaemonSet, name));
        }
        self.touch(Tab::DaemonSet, name);
        let owned: Vec<String> = Self::daemon_set_pods(&self.pods, name)
            .into_iter()
            .map(|p| p.metadata.name.clone())
            .collect();
        for pod in owned {
            self.terminate_pod(&pod, &format!("DaemonSet {name} deleted"));
        }
        let owner = api::daemon_set_revision_owner(name);
        let revs: Vec<String> = self
            .revisions_of(&owner)
            .into_iter()
            .map(|r| rollout::revision_key(&owner, r.revision))
            .collect();
        for key in revs {
            self.revisions.remove(&key);
            self.touch(Tab::Revision, &key);
        }
        self.record(
            format!("daemonset/{name}"),
            "Deleted",
            "Deleted by the user".into(),
        );
        Ok(())
    }

    /// `rollout status daemonset/NAME`, in the Deployment's terms: replicas are the nodes
    /// that want the pod.
    pub(super) fn daemon_set_rollout(
        &self,
        name: &str,
    ) -> Result<rollout::RolloutProgress, ApiError> {
        let ds = self
            .daemon_sets
            .get(name)
            .ok_or_else(|| Self::not_found(ResourceKind::DaemonSet, name))?;
        let owner = api::daemon_set_revision_owner(name);
        let revision = self.revisions_of(&owner).last().map_or(0, |r| r.revision);
        let owned = Self::daemon_set_pods(&self.pods, name);
        let desired = self
            .nodes
            .values()
            .filter(|n| daemonset::node_wants(ds, n))
            .count() as u32;
        Ok(rollout::daemon_set_progress(ds, desired, &owned, revision))
    }

    /// `rollout undo daemonset/NAME`: the revision's template back, rolled out by the
    /// controller like any change.
    pub(super) fn undo_daemon_set(
        &mut self,
        name: &str,
        to: Option<u64>,
    ) -> Result<crate::contract::body::UndoResult, ApiError> {
        let ds = self
            .daemon_sets
            .get(name)
            .ok_or_else(|| Self::not_found(ResourceKind::DaemonSet, name))?;
        let current = controller::template_hash(&ds.spec.template);
        let owner = api::daemon_set_revision_owner(name);
        let (revision, hash, template) = {
            let revs = self.revisions_of(&owner);
            let target = rollout::undo_target(name, &revs, &current, to).map_err(|e| match e {
                rollout::RolloutError::RevisionNotFound(_) => ApiError::NotFound(e.to_string()),
                rollout::RolloutError::NoHistory(_) => {
                    ApiError::BadRequest(format!("no rollout history found for daemonset {name:?}"))
                }
            })?;
            (
                target.revision,
                target.template_hash.clone(),
                target.template.clone(),
            )
        };
        let rolled_back = hash != current;
        if rolled_back {
            if let Some(ds) = self.daemon_sets.get_mut(name) {
                ds.spec.template = template;
                ds.metadata.generation += 1;
            }
            self.touch(Tab::DaemonSet, name);
            self.record(
                format!("daemonset/{name}"),
                "DaemonSetRollback",
                format!("Rolled back daemonset {name} to revision {revision}"),
            );
        }
        Ok(crate::contract::body::UndoResult {
            rolled_back,
            revision,
        })
    }
}
