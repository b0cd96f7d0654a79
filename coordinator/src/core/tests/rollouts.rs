//! Rollouts: capacity bounds, drain, revisions.

use super::*;
use crate::decide::controller;

/// Reports every pod in each node's desired state: those in `ready` as running (and
/// so ready), the others as still pending.
fn report(h: &mut Harness, ready: &BTreeSet<String>) {
    for node in ["pi-1", "pi-2"] {
        let desired = h.core.desired.get(node).cloned().unwrap_or_default();
        let pods = desired
            .iter()
            .map(|p| PodStatus {
                name: p.name.clone(),
                uid: p.uid.clone(),
                pod_ip: Some("10.42.1.5".parse().unwrap()),
                containers: BVec::from_vec(vec![ContainerStatus {
                    name: BString::new("main").unwrap(),
                    state: if ready.contains(p.name.as_str()) {
                        ContainerState::Running {
                            started_at_ms: 1_700_000_000_000,
                        }
                    } else {
                        ContainerState::Pending
                    },
                    restart_count: 0,
                    last_termination: None,
                    ready: true,
                }])
                .unwrap(),
                init_containers: BVec::new(),
                evicted: None,
            })
            .collect();
        let generation = h.node(node).status.desired_generation;
        h.send(
            node,
            Body::Status(NodeStatus {
                applied_generation: generation,
                pods: BVec::from_vec(pods).unwrap(),
            }),
        );
    }
}

fn progress(h: &mut Harness, name: &str) -> rollout::RolloutProgress {
    match h
        .api(ApiOp::RolloutStatus {
            kind: ResourceKind::Deployment,
            name: name.into(),
        })
        .unwrap()
    {
        ApiReply::Rollout(p) => p,
        other => panic!("unexpected {other:?}"),
    }
}

fn in_desired(h: &Harness, pod: &str) -> bool {
    h.core
        .desired
        .values()
        .any(|d| d.iter().any(|p| p.name.as_str() == pod))
}

fn rolling_deployment(image: &str) -> String {
    deployment("web", 4, "100m")
        .replace(
            "  replicas: 4\n",
            "  replicas: 4\n  strategy:\n    rollingUpdate: {maxSurge: 1, maxUnavailable: 1}\n",
        )
        .replace("busybox:1.36", image)
}

/// Drives a rollout with status reports, one new pod becoming ready at a time, and
/// returns how many steps it took. At every step: at most replicas + maxSurge pods
/// that are not terminating, at least replicas - maxUnavailable ready; terminating
/// pods stay in their node's desired state until the drain period is over.
async fn drive_rollout(h: &mut Harness, ready: &mut BTreeSet<String>, image: &str) -> usize {
    let want =
        controller::template_hash(&match manifest::parse_manifests(&rolling_deployment(image))
            .unwrap()
            .remove(0)
        {
            api::Object::Deployment(d) => d.spec.template,
            _ => unreachable!(),
        });
    for step in 0..50 {
        report(h, ready);
        let pods = h.pods();
        let live: Vec<&api::Pod> = pods
            .iter()
            .filter(|p| !controller::is_terminating(p))
            .collect();
        let ready_now = live.iter().filter(|p| controller::is_ready(p)).count();
        assert!(live.len() <= 5, "step {step}: {} pods", live.len());
        assert!(ready_now >= 3, "step {step}: only {ready_now} ready");
        for p in pods.iter().filter(|p| controller::is_terminating(p)) {
            assert!(
                in_desired(h, &p.metadata.name),
                "step {step}: drained too early"
            );
            assert!(!controller::is_ready(p));
        }
        let p = progress(h, "web");
        if p.done {
            assert_eq!((p.updated, p.updated_ready, p.old), (4, 4, 0));
            return step;
        }
        // One new pod becomes ready; a second passes, and drains may end.
        if let Some(n) = live.iter().find(|p| {
            controller::hash_of(p) == Some(want.as_str()) && !ready.contains(&p.metadata.name)
        }) {
            ready.insert(n.metadata.name.clone());
        }
        tokio::time::advance(Duration::from_millis(700)).await;
        h.core.handle(Event::Tick);
    }
    panic!("the rollout did not finish");
}

#[tokio::test(start_paused = true)]
async fn a_rolling_update_keeps_capacity_and_drains_old_pods() {
    let mut h = two_nodes();
    h.apply(&rolling_deployment("busybox:1.36")).unwrap();
    let mut ready: BTreeSet<String> = h.pods().into_iter().map(|p| p.metadata.name).collect();
    report(&mut h, &ready);
    assert!(progress(&mut h, "web").done);
    let v1: BTreeSet<String> = ready.clone();

    assert_eq!(
        h.apply(&rolling_deployment("busybox:1.37")).unwrap()[0].action,
        ApplyAction::Configured
    );
    let steps = drive_rollout(&mut h, &mut ready, "busybox:1.37").await;
    assert!(
        steps >= 3,
        "a rolling update takes several steps, took {steps}"
    );
    // Old pods drain, then leave the pod list and their nodes' desired state.
    tokio::time::advance(DEFAULT_POD_DRAIN + Duration::from_secs(1)).await;
    h.core.handle(Event::Tick);
    let pods = h.pods();
    assert_eq!(pods.len(), 4);
    assert!(pods.iter().all(|p| !v1.contains(&p.metadata.name)));
    assert!(v1.iter().all(|n| !in_desired(&h, n)));
    let ApiReply::Object(d) = h
        .api(ApiOp::Get {
            kind: ResourceKind::Deployment,
            name: Some("web".into()),
        })
        .unwrap()
    else {
        panic!()
    };
    let ApiObject::Deployment(d) = d else {
        panic!("not a deployment: {d:?}")
    };
    assert_eq!(
        (
            d.status.replicas,
            d.status.updated_replicas,
            d.status.ready_replicas,
            d.status.available_replicas
        ),
        (4, 4, 4, 4)
    );

    // Two revisions; undo goes back to the first, which becomes revision 3.
    let history = |h: &mut Harness| -> Vec<(u64, String)> {
        match h
            .api(ApiOp::RolloutHistory {
                kind: ResourceKind::Deployment,
                name: "web".into(),
            })
            .unwrap()
        {
            ApiReply::Revisions(o) => o
                .into_iter()
                .map(|r| (r.revision, r.template.spec.containers[0].image.clone()))
                .collect(),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(
        history(&mut h),
        [(1, "busybox:1.36".into()), (2, "busybox:1.37".into())]
    );
    assert!(matches!(
        h.api(ApiOp::RolloutUndo {
            kind: ResourceKind::Deployment,
            name: "web".into(),
            to_revision: Some(9)
        }),
        Err(ApiError::NotFound(_))
    ));
    h.api(ApiOp::RolloutUndo {
        kind: ResourceKind::Deployment,
        name: "web".into(),
        to_revision: None,
    })
    .unwrap();
    assert_eq!(
        history(&mut h),
        [(2, "busybox:1.37".into()), (3, "busybox:1.36".into())]
    );
    drive_rollout(&mut h, &mut ready, "busybox:1.36").await;
}

#[tokio::test(start_paused = true)]
async fn a_deleted_ready_pod_drains_before_it_leaves_its_node() {
    let mut h = two_nodes();
    h.apply(&deployment("web", 1, "100m")).unwrap();
    let name = h.pods()[0].metadata.name.clone();
    report(&mut h, &BTreeSet::from([name.clone()]));
    h.api(ApiOp::Delete {
        kind: ResourceKind::Pod,
        name: name.clone(),
    })
    .unwrap();
    let pods = h.pods();
    let old = pods.iter().find(|p| p.metadata.name == name).unwrap();
    assert!(old.metadata.deletion_timestamp.is_some());
    assert!(in_desired(&h, &name), "kept on its node while draining");
    assert_eq!(pods.len(), 2, "the deployment already made a replacement");
    // Deleting it again is fine and changes nothing.
    h.api(ApiOp::Delete {
        kind: ResourceKind::Pod,
        name: name.clone(),
    })
    .unwrap();
    tokio::time::advance(DEFAULT_POD_DRAIN - Duration::from_millis(500)).await;
    h.core.handle(Event::Tick);
    assert!(in_desired(&h, &name), "still draining");
    tokio::time::advance(Duration::from_secs(1)).await;
    h.core.handle(Event::Tick);
    assert!(!in_desired(&h, &name));
    assert_eq!(h.pods().len(), 1);

    // A pod that is not ready serves no one and goes at once; so does a deployment's.
    let other = h.pods()[0].metadata.name.clone();
    h.api(ApiOp::Delete {
        kind: ResourceKind::Deployment,
        name: "web".into(),
    })
    .unwrap();
    assert!(!in_desired(&h, &other));
    assert!(h.pods().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_restarted_core_keeps_draining_and_revisions() {
    let mut h = two_nodes();
    h.apply(&rolling_deployment("busybox:1.36")).unwrap();
    let ready: BTreeSet<String> = h.pods().into_iter().map(|p| p.metadata.name).collect();
    report(&mut h, &ready);
    h.apply(&rolling_deployment("busybox:1.37")).unwrap();
    let terminating: Vec<String> = h
        .pods()
        .into_iter()
        .filter(controller::is_terminating)
        .map(|p| p.metadata.name)
        .collect();
    assert_eq!(
        terminating.len(),
        1,
        "maxUnavailable 1 lets one ready pod go at once"
    );
    let mut h2 = Harness::new(h.store.clone());
    assert_eq!(h2.core.revisions.len(), 2);
    assert!(in_desired(&h2, &terminating[0]));
    tokio::time::advance(DEFAULT_POD_DRAIN).await;
    h2.core.handle(Event::Tick);
    assert!(!in_desired(&h2, &terminating[0]));
}
