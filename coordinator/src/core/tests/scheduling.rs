//! Spreading, scaling and scheduling pods onto nodes.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_deployment_is_spread_over_nodes_and_published() {
    let mut h = two_nodes();
    let applied = h.apply(&deployment("web", 3, "100m")).unwrap();
    assert_eq!(
        applied,
        vec![Applied {
            kind: ResourceKind::Deployment,
            name: "web".into(),
            action: ApplyAction::Created
        }]
    );
    let msgs = h.drain();
    let d1 = desired_for(&msgs, "pi-1").unwrap();
    let d2 = desired_for(&msgs, "pi-2").unwrap();
    let mut counts = [d1.pods.len(), d2.pods.len()];
    counts.sort();
    assert_eq!(counts, [1, 2], "3 replicas spread over 2 nodes");
    assert!(d1.generation >= 2 && d2.generation >= 2);
    // Requests default to limits, and the pods in the store agree with what was sent.
    assert_eq!(d1.pods[0].containers[0].resources.cpu_request_millis, 100);
    let pods = h.pods();
    assert_eq!(pods.len(), 3);
    for p in &pods {
        let node = p.spec.node_name.as_deref().unwrap();
        let d = if node == "pi-1" { &d1 } else { &d2 };
        assert!(d
            .pods
            .iter()
            .any(|s| s.name.as_str() == p.metadata.name && s.uid.as_str() == p.metadata.uid));
    }
    // Applying the same manifest again changes nothing and sends nothing.
    let again = h.apply(&deployment("web", 3, "100m")).unwrap();
    assert_eq!(again[0].action, ApplyAction::Unchanged);
    assert!(h.drain().is_empty());
    assert_eq!(h.node("pi-1").status.desired_generation, d1.generation);
}

#[tokio::test(start_paused = true)]
async fn scaling_down_removes_pods_from_desired_state() {
    let mut h = two_nodes();
    h.apply(&deployment("web", 3, "100m")).unwrap();
    h.drain();
    let ApiReply::Object(_) = h
        .api(ApiOp::Scale {
            name: "web".into(),
            replicas: 1,
        })
        .unwrap()
    else {
        panic!()
    };
    let msgs = h.drain();
    let total: usize = ["pi-1", "pi-2"]
        .iter()
        .map(|n| desired_for(&msgs, n).map_or_else(|| h.core.desired[*n].len(), |d| d.pods.len()))
        .sum();
    assert_eq!(total, 1);
    assert_eq!(h.pods().len(), 1);
    assert!(matches!(
        h.api(ApiOp::Scale {
            name: "nope".into(),
            replicas: 1
        }),
        Err(ApiError::NotFound(_))
    ));

    // Deleting the deployment empties both nodes.
    h.api(ApiOp::Delete {
        kind: ResourceKind::Deployment,
        name: "web".into(),
    })
    .unwrap();
    assert!(h.pods().is_empty());
    assert!(h.core.desired.values().all(Vec::is_empty));
}

#[tokio::test(start_paused = true)]
async fn a_deleted_deployment_pod_is_replaced() {
    let mut h = two_nodes();
    h.apply(&deployment("web", 2, "100m")).unwrap();
    let before: Vec<String> = h.pods().into_iter().map(|p| p.metadata.name).collect();
    h.api(ApiOp::Delete {
        kind: ResourceKind::Pod,
        name: before[0].clone(),
    })
    .unwrap();
    let after: Vec<String> = h.pods().into_iter().map(|p| p.metadata.name).collect();
    assert_eq!(after.len(), 2);
    assert!(!after.contains(&before[0]) && after.contains(&before[1]));
}

#[tokio::test(start_paused = true)]
async fn a_pod_that_fits_nowhere_stays_pending_with_the_reason() {
    let mut h = two_nodes();
    h.apply(&deployment("big", 1, "64")).unwrap();
    let pods = h.pods();
    assert_eq!(pods.len(), 1);
    let p = &pods[0];
    assert_eq!(p.spec.node_name, None);
    assert_eq!(p.status.phase, api::PodPhase::Pending);
    assert_eq!(p.status.reason.as_deref(), Some("Unschedulable"));
    assert!(p.status.message.as_deref().is_some_and(|m| !m.is_empty()));
    assert!(h
        .drain()
        .iter()
        .all(|m| !matches!(&m.body, Body::Desired(d) if !d.pods.is_empty())));

    // A big enough node arriving gets it.
    h.send("big-1", hello(128_000));
    assert_eq!(h.pods()[0].spec.node_name.as_deref(), Some("big-1"));
    let d = desired_for(&h.drain(), "big-1").unwrap();
    assert_eq!(d.pods.len(), 1);
}
