//! The Deployment controller's decision, kept pure: desired Deployment plus observed pods
//! in, a plan of [`Action`]s out, no IO. The server's driver applies the plan and calls
//! again on the next change; because it may call any number of times with the same
//! inputs, `reconcile_deployment` must be idempotent (applying its plan and reconciling
//! again yields nothing), which the tests check.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use crate::model::api::{self, POD_TEMPLATE_HASH_LABEL, TEMPLATE_HASH_LEN};
// The naming constants live in the model, which the manifest parser shares; re-exported
// because the core and the CLI name them by this path.

/// One step of a plan. Plans are short-lived and a few entries long, so the size gap
/// between the variants costs nothing worth a `Box` in every caller's pattern.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    CreatePod(api::Pod),
    DeletePod(String),
}

/// A stable short hash of a pod template: the first 10 hex digits of the SHA-256 of its
/// JSON form.
///
/// The JSON is canonical because structs serialize in declaration order and every map in
/// the template is a `BTreeMap`. Adding an `api` field that is skipped when empty keeps
/// existing hashes; adding one that always serializes would change every hash and so
/// replace every pod on upgrade.
pub fn template_hash(t: &api::PodTemplateSpec) -> String {
    // Serializing these plain structs to JSON cannot fail: no map has non-string keys.
    let json = serde_json::to_vec(t).unwrap_or_default();
    let digest = Sha256::digest(&json);
    let mut hex = hex::encode(digest);
    hex.truncate(TEMPLATE_HASH_LEN);
    hex
}

/// The pods a Deployment owns, from all pods.
pub fn owned_pods<'a>(d: &api::Deployment, pods: &'a [api::Pod]) -> Vec<&'a api::Pod> {
    pods.iter()
        .filter(|p| p.metadata.owner.as_deref() == Some(d.metadata.name.as_str()))
        .collect()
}

fn is_terminal(p: &api::Pod) -> bool {
    matches!(
        p.status.phase,
        api::PodPhase::Succeeded | api::PodPhase::Failed
    )
}

/// A pod the coordinator has decided to delete; it is draining and counts for nothing.
pub fn is_terminating(p: &api::Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

/// The pod-template-hash label of a pod.
pub fn hash_of(p: &api::Pod) -> Option<&str> {
    p.metadata
        .labels
        .get(POD_TEMPLATE_HASH_LABEL)
        .map(String::as_str)
}

/// Ready as clients (and later Services) see it: every container runs and is ready, and
/// the pod is not terminating.
pub fn is_ready(p: &api::Pod) -> bool {
    !is_terminating(p)
        && p.status.phase == api::PodPhase::Running
        && p.status.container_statuses.len() == p.spec.containers.len()
        && p.status.container_statuses.iter().all(|c| c.ready)
}

/// A rolling update's `(maxSurge, maxUnavailable)` as pod counts for the current
/// replicas: surge rounds up, unavailable rounds down, and if both come out zero,
/// unavailable becomes 1 so the rollout can make progress (as in Kubernetes).
pub fn fenceposts(d: &api::Deployment) -> (u32, u32) {
    let ru = d.spec.strategy.rolling_update.unwrap_or_default();
    let r = d.spec.replicas;
    let surge = ru.max_surge.resolve(r, true);
    let unavailable = ru.max_unavailable.resolve(r, false).min(r);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// Builds the pod a Deployment wants for its current template.
pub fn new_pod(d: &api::Deployment, hash: &str, suffix: &str) -> api::Pod {
    let template = &d.spec.template;
    let mut labels = template.metadata.labels.clone();
    labels.insert(POD_TEMPLATE_HASH_LABEL.to_string(), hash.to_string());
    let mut spec = template.spec.clone();
    spec.node_name = None;
    api::Pod {
        api_version: "v1".to_string(),
        kind: "Pod".to_string(),
        metadata: api::ObjectMeta {
            name: format!("{}-{hash}-{suffix}", d.metadata.name),
            labels,
            annotations: template.metadata.annotations.clone(),
            owner: Some(d.metadata.name.clone()),
            ..Default::default()
        },
        spec,
        status: api::PodStatus::default(),
    }
}

/// Deletion preference: unscheduled first, then not running, then not ready, then the
/// newest, so a plan disturbs as little serving work as possible.
fn deletion_order(pods: &mut [&api::Pod]) {
    pods.sort_by_key(|p| {
        let ts = &p.metadata.creation_timestamp;
        (
            p.spec.node_name.is_some(),
            p.status.phase == api::PodPhase::Running,
            is_ready(p),
            // A pod the server has not stamped yet is the newest of all.
            Reverse((ts.is_empty(), ts.clone())),
            p.metadata.name.clone(),
        )
    });
}

/// Plans the next step towards `replicas` ready pods of the current template.
///
/// Terminating pods are already on their way out and are ignored. Succeeded or Failed
/// pods are deleted and do not count: with `restartPolicy: Always` a pod only ends that
/// way when it is lost for good, so it needs a replacement.
///
/// When pods of another template remain, the strategy decides:
/// - `RollingUpdate` (Kubernetes' algorithm, one sync per call): create new pods while
///   the total stays within `replicas + maxSurge`; delete old pods only while
///   `total - minAvailable - unavailable new pods` allows it, not-ready old pods first,
///   then ready ones only down to `replicas - maxUnavailable` ready pods. The caller
///   reconciles again whenever a pod's readiness changes, which advances the rollout.
///   After a scale-down mid-rollout the total may exceed `replicas + maxSurge`; the
///   excess is deleted regardless of readiness, as Kubernetes' proportional scaling does.
/// - `Recreate`: delete every old pod, and create new ones only once no old pod is left,
///   not even a terminating one.
///
/// Applying a plan and reconciling again with unchanged readiness converges in a few
/// calls; with readiness unchanged a plan is never repeated (see the tests).
///
/// `name_suffix` supplies the random part of new pod names; a suffix that collides with
/// an existing pod is drawn again.
pub fn reconcile_deployment(
    d: &api::Deployment,
    owned: &[&api::Pod],
    name_suffix: &mut dyn FnMut() -> String,
) -> Vec<Action> {
    let hash = template_hash(&d.spec.template);
    let mut actions = Vec::new();
    let mut new: Vec<&api::Pod> = Vec::new();
    let mut old: Vec<&api::Pod> = Vec::new();
    let mut dead: Vec<&str> = Vec::new();
    for p in owned.iter().copied().filter(|p| !is_terminating(p)) {
        if is_terminal(p) {
            dead.push(&p.metadata.name);
        } else if hash_of(p) == Some(hash.as_str()) {
            new.push(p);
        } else {
            old.push(p);
        }
    }
    dead.sort_unstable();
    actions.extend(dead.into_iter().map(|n| Action::DeletePod(n.to_string())));
    deletion_order(&mut new);
    deletion_order(&mut old);
    let want = d.spec.replicas as usize;
    let mut taken: BTreeSet<String> = owned.iter().map(|p| p.metadata.name.clone()).collect();
    let mut create = |n: usize, actions: &mut Vec<Action>| {
        for _ in 0..n {
            let mut pod = new_pod(d, &hash, &name_suffix());
            // A handful of redraws makes a collision vanishingly unlikely with random
            // suffixes, and stays bounded should a caller's generator be constant.
            for _ in 0..16 {
                if !taken.contains(&pod.metadata.name) {
                    break;
                }
                pod = new_pod(d, &hash, &name_suffix());
            }
            taken.insert(pod.metadata.name.clone());
            actions.push(Action::CreatePod(pod));
        }
    };
    let delete = |pods: &[&api::Pod], actions: &mut Vec<Action>| {
        actions.extend(
            pods.iter()
                .map(|p| Action::DeletePod(p.metadata.name.clone())),
        );
    };

    if d.spec.strategy.type_ == api::StrategyType::Recreate {
        if !old.is_empty() {
            delete(&old, &mut actions);
            return actions;
        }
        if owned
            .iter()
            .any(|p| is_terminating(p) && hash_of(p) != Some(hash.as_str()))
        {
            return actions; // old pods still draining
        }
    }
    if old.is_empty() {
        if new.len() > want {
            delete(&new[..new.len() - want], &mut actions);
        } else {
            create(want - new.len(), &mut actions);
        }
        return actions;
    }

    // A rolling update is in progress.
    let (surge, unavailable) = fenceposts(d);
    let max_total = want + surge as usize;
    let min_available = want.saturating_sub(unavailable as usize);
    if new.len() > want {
        let extra = new.len() - want;
        delete(&new[..extra], &mut actions);
        new.drain(..extra);
    }
    let total = new.len() + old.len();
    let creates = max_total.saturating_sub(total).min(want - new.len());
    create(creates, &mut actions);
    let total = total + creates;
    let new_unavailable = new.iter().filter(|p| !is_ready(p)).count() + creates;
    let mut budget = total.saturating_sub(min_available + new_unavailable);
    let available = new.iter().chain(&old).filter(|p| is_ready(p)).count();
    let mut can_lose_ready = available.saturating_sub(min_available);
    let mut removed = 0;
    let mut kept: Vec<&api::Pod> = Vec::new();
    for p in &old {
        let ready = is_ready(p);
        if budget > 0 && (!ready || can_lose_ready > 0) {
            budget -= 1;
            if ready {
                can_lose_ready -= 1;
            }
            removed += 1;
            actions.push(Action::DeletePod(p.metadata.name.clone()));
        } else {
            kept.push(p);
        }
    }
    // After a scale-down mid-rollout: shed the excess, old pods first.
    let excess = (total - removed).saturating_sub(max_total);
    if excess > 0 {
        let mut rest: Vec<&api::Pod> = kept;
        rest.extend(new.iter().filter(|p| !is_ready(p)));
        delete(&rest[..excess.min(rest.len())], &mut actions);
    }
    actions
}

/// The Deployment's status as `kubectl get deployments` shows it.
pub fn deployment_status(d: &api::Deployment, owned: &[&api::Pod]) -> api::DeploymentStatus {
    let hash = template_hash(&d.spec.template);
    let live = owned
        .iter()
        .filter(|p| !is_terminal(p) && !is_terminating(p));
    let mut status = api::DeploymentStatus {
        observed_generation: d.metadata.generation,
        ..Default::default()
    };
    for p in live {
        status.replicas += 1;
        if hash_of(p) == Some(hash.as_str()) {
            status.updated_replicas += 1;
        }
        if is_ready(p) {
            status.ready_replicas += 1;
            status.available_replicas += 1;
        }
    }
    status
}

#[cfg(test)]
mod tests;
