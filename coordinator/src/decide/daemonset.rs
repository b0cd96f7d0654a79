//! The DaemonSet controller's decision, pure like the Deployment's: the DaemonSet, the
//! nodes and its pods in, a plan of [`Action`]s out.
//!
//! A DaemonSet pod is created bound to its node (`spec.nodeName` set), so the scheduler
//! never moves it and the node-loss eviction leaves it alone (it has no `owner`): a device
//! offline for days finds its pod in its retained desired state when it is back. A node
//! wants the pod when it matches the template's `nodeSelector` and required node affinity
//! and its taints are tolerated; whether the node is Ready does not matter. As Kubernetes'
//! DaemonSet controller does, its pods tolerate cordoning and the pressure taints
//! (`crate::decide::taints`), so a collector keeps running on a node that is full or
//! being drained.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use crate::decide::controller::{hash_of, is_ready, is_terminating, template_hash, Action};
use crate::decide::scheduler::{node_labels, selects};
use crate::decide::taints::{
    no_execute, untolerated, NoExecute, DISK_PRESSURE, MEMORY_PRESSURE, PID_PRESSURE,
};
use crate::model::api::{self, POD_TEMPLATE_HASH_LABEL};

/// Whether `node` should get the DaemonSet's pod.
pub fn node_wants(ds: &api::DaemonSet, node: &api::Node) -> bool {
    placement(ds, node).0
}

/// Whether `node` should get the pod, and whether a pod already on it may stay (the
/// taint manager ends it when its `tolerationSeconds` run out).
///
/// A `NoExecute` taint tolerated only for a while lets a running pod stay that long but
/// gets the node no new one: otherwise the taint manager's eviction and this controller
/// would replace the pod every `tolerationSeconds`.
fn placement(ds: &api::DaemonSet, node: &api::Node) -> (bool, bool) {
    template_placement(&ds.spec.template.spec, node)
}

/// [`placement`] of a pod template: also which nodes fire a node-scheduled CronJob.
pub fn template_placement(spec: &api::PodSpec, node: &api::Node) -> (bool, bool) {
    let no_schedule: Vec<api::Taint> = node
        .spec
        .taints
        .iter()
        .filter(|t| t.effect == api::TaintEffect::NoSchedule)
        .filter(|t| ![DISK_PRESSURE, MEMORY_PRESSURE, PID_PRESSURE].contains(&t.key.as_str()))
        .cloned()
        .collect();
    if !selects(spec, &node_labels(node)) || untolerated(&no_schedule, &spec.tolerations).is_some()
    {
        return (false, false);
    }
    // At the epoch, a limited toleration has not run out yet: the verdict is `EvictAt`
    // for a limited one and `Evict` only for an untolerated taint, whatever the clock.
    match no_execute(&node.spec.taints, &spec.tolerations, SystemTime::UNIX_EPOCH) {
        NoExecute::Stay => (true, true),
        NoExecute::EvictAt(..) => (false, true),
        NoExecute::Evict(_) => (false, false),
    }
}

/// The pods a DaemonSet owns, from all pods.
pub fn owned_pods<'a>(ds: &api::DaemonSet, pods: &'a [api::Pod]) -> Vec<&'a api::Pod> {
    pods.iter()
        .filter(|p| p.metadata.daemon_set.as_deref() == Some(ds.metadata.name.as_str()))
        .collect()
}

/// The pod the DaemonSet wants on `node`, `<daemonset>-<suffix>` as in Kubernetes.
pub fn new_pod(ds: &api::DaemonSet, hash: &str, node: &str, suffix: &str) -> api::Pod {
    let template = &ds.spec.template;
    let mut labels = template.metadata.labels.clone();
    labels.insert(POD_TEMPLATE_HASH_LABEL.to_string(), hash.to_string());
    let mut spec = template.spec.clone();
    spec.node_name = Some(node.to_string());
    api::Pod {
        api_version: "v1".to_string(),
        kind: "Pod".to_string(),
        metadata: api::ObjectMeta {
            name: format!("{}-{suffix}", ds.metadata.name),
            labels,
            annotations: template.metadata.annotations.clone(),
            daemon_set: Some(ds.metadata.name.clone()),
            ..Default::default()
        },
        spec,
        status: api::PodStatus::default(),
    }
}

fn is_terminal(p: &api::Pod) -> bool {
    matches!(
        p.status.phase,
        api::PodPhase::Succeeded | api::PodPhase::Failed
    )
}

/// The live pods of one node, split by template.
#[derive(Default)]
struct OnNode<'a> {
    new: Vec<&'a api::Pod>,
    old: Vec<&'a api::Pod>,
    /// A pod of this DaemonSet is still draining here.
    terminating: bool,
}

impl OnNode<'_> {
    fn has_ready(&self) -> bool {
        self.new.iter().chain(&self.old).any(|p| is_ready(p))
    }
}

/// `(maxSurge, maxUnavailable)` in nodes for `desired` nodes; both round up, as
/// Kubernetes' DaemonSet controller does, and the manifest keeps exactly one non-zero.
pub fn fenceposts(ds: &api::DaemonSet, desired: u32) -> (u32, u32) {
    let ru = ds.spec.update_strategy.rolling_update.unwrap_or_default();
    let surge = ru.max_surge.resolve(desired, true);
    let unavailable = ru.max_unavailable.resolve(desired, true);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// Plans the next step towards one ready pod of the current template on every node that
/// wants one, and none elsewhere.
///
/// - Pods on nodes that no longer want one (or are gone), ended pods and extra pods of a
///   node are deleted; a pod on a node whose `NoExecute` taint it tolerates for a while
///   is left to the taint manager.
/// - A node without a pod gets one, once its previous pod has finished draining (two
///   pods of a DaemonSet on one node would fight over its host ports), except while
///   surging, which is what `maxSurge` asks for.
/// - Old-template pods, with `RollingUpdate`: when `maxSurge` is 0, old pods that are not
///   ready go at once and ready ones only while fewer than `maxUnavailable` wanted nodes
///   are without a ready pod; otherwise a new pod starts beside the old one on at most
///   `maxSurge` nodes at a time, and the old one goes once the new one is ready. With
///   `OnDelete` they stay until the user deletes them.
///
/// Idempotent: applying the plan and reconciling again with unchanged readiness plans
/// nothing new (see the tests).
pub fn reconcile_daemon_set(
    ds: &api::DaemonSet,
    nodes: &[&api::Node],
    owned: &[&api::Pod],
    name_suffix: &mut dyn FnMut() -> String,
) -> Vec<Action> {
    let hash = template_hash(&ds.spec.template);
    let wanted: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| node_wants(ds, n))
        .map(|n| n.metadata.name.as_str())
        .collect();
    let tolerated_for_now: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| placement(ds, n) == (false, true))
        .map(|n| n.metadata.name.as_str())
        .collect();
    let mut actions = Vec::new();
    let delete = |p: &api::Pod, actions: &mut Vec<Action>| {
        actions.push(Action::DeletePod(p.metadata.name.clone()));
    };
    let mut by_node: BTreeMap<&str, OnNode<'_>> =
        wanted.iter().map(|n| (*n, OnNode::default())).collect();
    for p in owned {
        let node = p.spec.node_name.as_deref().unwrap_or_default();
        let Some(on) = by_node.get_mut(node) else {
            if !is_terminating(p) && !tolerated_for_now.contains(node) {
                delete(p, &mut actions);
            }
            continue;
        };
        if is_terminating(p) {
            on.terminating = true;
        } else if is_terminal(p) {
            delete(p, &mut actions);
        } else if hash_of(p) == Some(hash.as_str()) {
            on.new.push(p);
        } else {
            on.old.push(p);
        }
    }
    // One pod a template a node: keep the ready one, else the oldest.
    for on in by_node.values_mut() {
        for pods in [&mut on.new, &mut on.old] {
            pods.sort_by_key(|p| {
                (
                    !is_ready(p),
                    p.metadata.creation_timestamp.is_empty(),
                    p.metadata.creation_timestamp.clone(),
                    p.metadata.name.clone(),
                )
            });
            for extra in pods.drain(1.min(pods.len())..) {
                delete(extra, &mut actions);
            }
        }
    }

    let mut taken: BTreeSet<String> = owned.iter().map(|p| p.metadata.name.clone()).collect();
    let mut create = |node: &str, actions: &mut Vec<Action>| {
        let mut pod = new_pod(ds, &hash, node, &name_suffix());
        // Bounded redraws, should a caller's generator repeat itself.
        for _ in 0..16 {
            if !taken.contains(&pod.metadata.name) {
                break;
            }
            pod = new_pod(ds, &hash, node, &name_suffix());
        }
        taken.insert(pod.metadata.name.clone());
        actions.push(Action::CreatePod(pod));
    };

    let rolling = ds.spec.update_strategy.type_ == api::DaemonSetStrategyType::RollingUpdate;
    let (surge, max_unavailable) = fenceposts(ds, wanted.len() as u32);
    let mut unavailable = by_node.values().filter(|on| !on.has_ready()).count() as u32;
    let mut surging = by_node
        .values()
        .filter(|on| !on.new.is_empty() && !on.old.is_empty())
        .count() as u32;
    for (node, on) in &by_node {
        match (on.new.first(), on.old.first()) {
            (None, None) => {
                if !on.terminating {
                    create(node, &mut actions);
                }
            }
            (Some(_), None) => {}
            (Some(new), Some(old)) => {
                // A surge pod (or one the user's deletion let in under OnDelete).
                if is_ready(new) || !rolling {
                    delete(old, &mut actions);
                }
            }
            (None, Some(old)) if rolling => {
                if surge == 0 {
                    if !is_ready(old) {
                        delete(old, &mut actions);
                    } else if unavailable < max_unavailable {
                        unavailable += 1;
                        delete(old, &mut actions);
                    }
                } else if !is_ready(old) {
                    delete(old, &mut actions);
                    create(node, &mut actions);
                } else if surging < surge {
                    surging += 1;
                    create(node, &mut actions);
                }
            }
            (None, Some(_)) => {} // OnDelete: the user replaces it
        }
    }
    actions
}

/// The DaemonSet's status as `kubectl get daemonsets` shows it, counted in nodes.
pub fn daemon_set_status(
    ds: &api::DaemonSet,
    nodes: &[&api::Node],
    owned: &[&api::Pod],
) -> api::DaemonSetStatus {
    let hash = template_hash(&ds.spec.template);
    let mut status = api::DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        ..Default::default()
    };
    for n in nodes {
        let name = n.metadata.name.as_str();
        let live: Vec<&&api::Pod> = owned
            .iter()
            .filter(|p| p.spec.node_name.as_deref() == Some(name))
            .filter(|p| !is_terminating(p) && !is_terminal(p))
            .collect();
        if !node_wants(ds, n) {
            status.number_misscheduled += u32::from(!live.is_empty());
            continue;
        }
        status.desired_number_scheduled += 1;
        if live.is_empty() {
            continue;
        }
        status.current_number_scheduled += 1;
        if live.iter().any(|p| hash_of(p) == Some(hash.as_str())) {
            status.updated_number_scheduled += 1;
        }
        if live.iter().any(|p| is_ready(p)) {
            status.number_ready += 1;
            status.number_available += 1;
        }
    }
    status
}

#[cfg(test)]
mod tests;
