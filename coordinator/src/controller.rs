//! The Deployment controller's decision, kept pure: desired Deployment plus observed pods
//! in, a plan of [`Action`]s out, no IO. The server's driver applies the plan and calls
//! again on the next change; because it may call any number of times with the same
//! inputs, `reconcile_deployment` must be idempotent (applying its plan and reconciling
//! again yields nothing), which the tests check.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use crate::api;

/// The label that ties a pod to the template it was made from, as in Kubernetes.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// Hex characters of the template hash in pod names and the label.
pub const TEMPLATE_HASH_LEN: usize = 10;
/// Characters of the random suffix the caller supplies for pod names.
pub const POD_NAME_SUFFIX_LEN: usize = 5;

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

fn hash_of(p: &api::Pod) -> Option<&str> {
    p.metadata
        .labels
        .get(POD_TEMPLATE_HASH_LABEL)
        .map(String::as_str)
}

fn is_ready(p: &api::Pod) -> bool {
    p.status.phase == api::PodPhase::Running
        && p.status.container_statuses.len() == p.spec.containers.len()
        && p.status.container_statuses.iter().all(|c| c.ready)
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

/// Plans what it takes for `owned` to become exactly `replicas` live pods of the current
/// template.
///
/// - Pods of another template hash are deleted; their replacements are created in the
///   same plan (a rolling update comes later).
/// - Succeeded or Failed pods are deleted and do not count: with `restartPolicy: Always`
///   a pod only ends that way when it is lost for good, so it needs a replacement.
/// - Extra pods are deleted preferring unscheduled ones, then ones not running, then the
///   newest, so the plan disturbs as little running work as possible.
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
    let mut current: Vec<&api::Pod> = Vec::new();
    let mut stale: Vec<&str> = Vec::new();
    for p in owned {
        if hash_of(p) != Some(hash.as_str()) || is_terminal(p) {
            stale.push(&p.metadata.name);
        } else {
            current.push(p);
        }
    }
    stale.sort_unstable();
    actions.extend(stale.into_iter().map(|n| Action::DeletePod(n.to_string())));

    let want = d.spec.replicas as usize;
    if current.len() > want {
        current.sort_by_key(|p| {
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
        let extra = current.len() - want;
        actions.extend(
            current[..extra]
                .iter()
                .map(|p| Action::DeletePod(p.metadata.name.clone())),
        );
    } else {
        let mut taken: BTreeSet<String> = owned.iter().map(|p| p.metadata.name.clone()).collect();
        for _ in current.len()..want {
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
    }
    actions
}

/// The Deployment's status as `kubectl get deployments` shows it.
pub fn deployment_status(d: &api::Deployment, owned: &[&api::Pod]) -> api::DeploymentStatus {
    let hash = template_hash(&d.spec.template);
    let live = owned.iter().filter(|p| !is_terminal(p));
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
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn deployment(replicas: u32, image: &str) -> api::Deployment {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        api::Deployment {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            metadata: api::ObjectMeta {
                name: "web".into(),
                generation: 3,
                ..Default::default()
            },
            spec: api::DeploymentSpec {
                replicas,
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
            },
            status: Default::default(),
        }
    }

    /// A pod as the store would hold it: `state` is `p` (pending, unscheduled),
    /// `s` (scheduled, pending), `r` (running, ready), `f` (failed).
    fn pod(d: &api::Deployment, suffix: &str, ts: &str, state: char) -> api::Pod {
        let mut p = new_pod(d, &template_hash(&d.spec.template), suffix);
        p.metadata.creation_timestamp = ts.into();
        if state != 'p' {
            p.spec.node_name = Some("n1".into());
        }
        match state {
            'r' => {
                p.status.phase = api::PodPhase::Running;
                p.status.container_statuses = vec![api::ContainerStatus {
                    name: "app".into(),
                    state: api::ContainerState::Running {
                        started_at: ts.into(),
                    },
                    ready: true,
                    restart_count: 0,
                }];
            }
            'f' => p.status.phase = api::PodPhase::Failed,
            _ => {}
        }
        p
    }

    fn suffixes() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("x{n:04}")
        }
    }

    /// Renders a plan compactly: `+name` for a create, `-name` for a delete.
    fn render(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::CreatePod(p) => format!("+{}", p.metadata.name),
                Action::DeletePod(n) => format!("-{n}"),
            })
            .collect()
    }

    fn apply(pods: &mut Vec<api::Pod>, actions: &[Action]) {
        for a in actions {
            match a {
                Action::CreatePod(p) => pods.push(p.clone()),
                Action::DeletePod(n) => pods.retain(|p| &p.metadata.name != n),
            }
        }
    }

    #[test]
    fn template_hash_is_stable_and_tracks_the_template() {
        let a = deployment(1, "nginx:1.25");
        let h = template_hash(&a.spec.template);
        assert_eq!(h.len(), TEMPLATE_HASH_LEN);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(h, template_hash(&a.clone().spec.template));
        // Replicas are not part of the template.
        assert_eq!(h, template_hash(&deployment(5, "nginx:1.25").spec.template));
        assert_ne!(h, template_hash(&deployment(1, "nginx:1.26").spec.template));
        // Pinned: a change here replaces every running pod on upgrade.
        assert_eq!(h, "4e98794ccb");
    }

    #[test]
    fn plans() {
        let d1 = deployment(3, "nginx:1.25");
        let h1 = template_hash(&d1.spec.template);
        let d2 = deployment(2, "nginx:1.26");
        let h2 = template_hash(&d2.spec.template);
        let one = deployment(1, "nginx:1.25");
        let two = deployment(2, "nginx:1.25");
        let zero = deployment(0, "nginx:1.25");
        // (name, deployment, pods as (suffix, timestamp, state, made from d2?), expected plan)
        type Row<'a> = (
            &'a str,
            &'a api::Deployment,
            Vec<(&'a str, &'a str, char, bool)>,
            Vec<String>,
        );
        let rows: Vec<Row> = vec![
            (
                "scale up from zero",
                &d1,
                vec![],
                vec![
                    format!("+web-{h1}-x0001"),
                    format!("+web-{h1}-x0002"),
                    format!("+web-{h1}-x0003"),
                ],
            ),
            (
                "steady state",
                &d1,
                vec![
                    ("a", "t1", 'r', false),
                    ("b", "t1", 'r', false),
                    ("c", "t1", 's', false),
                ],
                vec![],
            ),
            (
                "scale up by one keeps the others",
                &d1,
                vec![("a", "t1", 'r', false), ("b", "t1", 'r', false)],
                vec![format!("+web-{h1}-x0001")],
            ),
            (
                "scale down prefers unscheduled, then not running, then newest",
                &one,
                vec![
                    ("old", "2026-01-01T00:00:00Z", 'r', false),
                    ("new", "2026-01-02T00:00:00Z", 'r', false),
                    ("pend", "2026-01-01T00:00:00Z", 's', false),
                    ("unsch", "2026-01-01T00:00:00Z", 'p', false),
                ],
                vec![
                    format!("-web-{h1}-unsch"),
                    format!("-web-{h1}-pend"),
                    format!("-web-{h1}-new"),
                ],
            ),
            (
                "scale to zero",
                &zero,
                vec![("a", "t1", 'r', false), ("b", "t2", 'r', false)],
                vec![format!("-web-{h1}-b"), format!("-web-{h1}-a")],
            ),
            (
                "template change replaces old pods in one plan",
                &d2,
                vec![("a", "t1", 'r', false), ("b", "t1", 'r', false)],
                vec![
                    format!("-web-{h1}-a"),
                    format!("-web-{h1}-b"),
                    format!("+web-{h2}-x0001"),
                    format!("+web-{h2}-x0002"),
                ],
            ),
            (
                "half-finished template change",
                &d2,
                vec![("a", "t1", 'r', false), ("n", "t2", 's', true)],
                vec![format!("-web-{h1}-a"), format!("+web-{h2}-x0001")],
            ),
            (
                "failed pods are replaced",
                &d1,
                vec![
                    ("a", "t1", 'r', false),
                    ("b", "t1", 'f', false),
                    ("c", "t1", 'r', false),
                ],
                vec![format!("-web-{h1}-b"), format!("+web-{h1}-x0001")],
            ),
            (
                "colliding suffix is drawn again",
                &two,
                vec![("x0001", "t1", 'r', false)],
                vec![format!("+web-{h1}-x0002")],
            ),
        ];
        for (name, d, pods, want) in rows {
            let pods: Vec<api::Pod> = pods
                .into_iter()
                .map(|(s, ts, st, new)| pod(if new { &d2 } else { &d1 }, s, ts, st))
                .collect();
            let owned: Vec<&api::Pod> = pods.iter().collect();
            let plan = reconcile_deployment(d, &owned, &mut suffixes());
            assert_eq!(render(&plan), want, "{name}");

            // Idempotence: reconciling the result of the plan asks for nothing more.
            let mut after = pods.clone();
            apply(&mut after, &plan);
            let owned: Vec<&api::Pod> = after.iter().collect();
            let again = reconcile_deployment(d, &owned, &mut suffixes());
            assert_eq!(render(&again), Vec::<String>::new(), "{name}: second pass");
            assert_eq!(after.len(), d.spec.replicas as usize, "{name}: pod count");
        }
    }

    #[test]
    fn created_pods_carry_template_labels_owner_and_spec() {
        let d = deployment(1, "nginx:1.25");
        let plan = reconcile_deployment(&d, &[], &mut || "abcde".to_string());
        let [Action::CreatePod(p)] = plan.as_slice() else {
            panic!("want one create, got {plan:?}");
        };
        let h = template_hash(&d.spec.template);
        assert_eq!(p.metadata.name, format!("web-{h}-abcde"));
        assert_eq!(p.metadata.owner.as_deref(), Some("web"));
        assert_eq!(
            p.metadata.labels.get("app").map(String::as_str),
            Some("web")
        );
        assert_eq!(p.metadata.labels.get(POD_TEMPLATE_HASH_LABEL), Some(&h));
        assert_eq!(p.spec, d.spec.template.spec);
        assert_eq!(p.status.phase, api::PodPhase::Pending);
        assert_eq!((p.api_version.as_str(), p.kind.as_str()), ("v1", "Pod"));
    }

    #[test]
    fn status_counts_live_updated_and_ready() {
        let d1 = deployment(3, "nginx:1.25");
        let d2 = deployment(3, "nginx:1.26");
        let pods = [
            pod(&d2, "a", "t", 'r'),
            pod(&d2, "b", "t", 's'),
            pod(&d1, "c", "t", 'r'),
            pod(&d2, "d", "t", 'f'),
        ];
        let owned: Vec<&api::Pod> = pods.iter().collect();
        let s = deployment_status(&d2, &owned);
        assert_eq!(
            s,
            api::DeploymentStatus {
                replicas: 3,
                ready_replicas: 2,
                updated_replicas: 2,
                observed_generation: 3,
            }
        );
    }

    #[test]
    fn owned_pods_filters_by_owner() {
        let d = deployment(1, "x");
        let mut other = pod(&d, "b", "t", 'r');
        other.metadata.owner = Some("other".into());
        let mine = pod(&d, "a", "t", 'r');
        let pods = vec![mine.clone(), other];
        let owned = owned_pods(&d, &pods);
        assert_eq!(owned, vec![&mine]);
    }
}
