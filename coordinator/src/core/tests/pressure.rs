//! Node pressure as the core takes it from heartbeats: conditions, taints, events,
//! scheduling around the node, the reason on pods it cannot start, and evicted pods.

use super::*;

fn beat(h: &mut Harness, node: &str, pressure: Vec<Pressure>, apply_error: Option<&str>) {
    h.send(
        node,
        Body::Heartbeat(Heartbeat {
            applied_generation: 1,
            status_digest: 0,
            pressure: BVec::from_vec(pressure).unwrap(),
            apply_error: apply_error.map(|e| BString::new(e).unwrap()),
        }),
    );
}

fn disk() -> Pressure {
    Pressure {
        kind: PressureKind::Disk,
        message: BString::new("nodefs.available 0 < 2.4Mi (10%)").unwrap(),
    }
}

#[tokio::test(start_paused = true)]
async fn disk_pressure_taints_the_node_and_new_pods_go_elsewhere_until_it_clears() {
    let mut h = two_nodes();
    beat(&mut h, "pi-1", vec![disk()], None);
    let n = h.node("pi-1");
    assert_eq!(n.status.conditions.len(), 1);
    assert_eq!(n.status.conditions[0].type_, "DiskPressure");
    assert_eq!(
        n.status.conditions[0].message,
        "nodefs.available 0 < 2.4Mi (10%)"
    );
    let since = n.status.conditions[0].last_transition_time.clone();
    assert_eq!(
        n.spec
            .taints
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>(),
        ["node.kubernetes.io/disk-pressure:NoSchedule"]
    );
    assert!(h
        .reasons("node/pi-1")
        .contains(&"NodeHasDiskPressure".to_string()));

    // Still under pressure: same condition, same transition time, no second event.
    tokio::time::advance(Duration::from_secs(2)).await;
    beat(&mut h, "pi-1", vec![disk()], None);
    assert_eq!(
        h.node("pi-1").status.conditions[0].last_transition_time,
        since
    );
    let count = |h: &mut Harness| {
        h.reasons("node/pi-1")
            .iter()
            .filter(|r| *r == "NodeHasDiskPressure")
            .count()
    };
    assert_eq!(count(&mut h), 1);

    // A Hello (the agent reconnected) keeps what heartbeats said.
    h.send("pi-1", hello(4000));
    assert_eq!(h.node("pi-1").spec.taints.len(), 1);

    h.apply(&deployment("web", 3, "100m")).unwrap();
    let pods = h.pods();
    assert_eq!(pods.len(), 3);
    assert!(
        pods.iter()
            .all(|p| p.spec.node_name.as_deref() == Some("pi-2")),
        "{pods:?}"
    );

    beat(&mut h, "pi-1", vec![], None);
    let n = h.node("pi-1");
    assert!(n.status.conditions.is_empty() && n.spec.taints.is_empty());
    assert!(h
        .reasons("node/pi-1")
        .contains(&"NodeHasNoDiskPressure".to_string()));
}

#[tokio::test(start_paused = true)]
async fn pods_a_node_cannot_start_say_why_until_it_can() {
    let mut h = two_nodes();
    h.apply(&deployment("web", 2, "100m")).unwrap();
    h.drain();
    let on_pi1 = |h: &mut Harness| {
        h.pods()
            .into_iter()
            .find(|p| p.spec.node_name.as_deref() == Some("pi-1"))
            .unwrap()
    };
    let err = "generation 3 not applied: cannot write desired state to /d/desired.bin: No space left on device (os error 28)";
    beat(&mut h, "pi-1", vec![disk()], Some(err));
    assert_eq!(h.node("pi-1").status.apply_error.as_deref(), Some(err));
    let p = on_pi1(&mut h);
    assert_eq!(p.status.reason.as_deref(), Some("NodeNotApplying"));
    assert!(p
        .status
        .message
        .unwrap()
        .contains("No space left on device"));

    beat(&mut h, "pi-1", vec![], None);
    assert_eq!(h.node("pi-1").status.apply_error, None);
    let p = on_pi1(&mut h);
    assert_eq!((p.status.reason, p.status.message), (None, None));
}

#[tokio::test(start_paused = true)]
async fn an_evicted_pod_fails_with_its_reason_and_is_replaced() {
    let mut h = two_nodes();
    h.apply(&deployment("web", 2, "100m")).unwrap();
    let msgs = h.drain();
    let d = desired_for(&msgs, "pi-1").unwrap();
    let st = running_status(&d, d.generation);
    let why = "The node was low on resource: ephemeral-storage.";
    let mut pods: Vec<PodStatus> = st.pods.iter().cloned().collect();
    pods[0].evicted = Some(BString::new(why).unwrap());
    let evicted = pods[0].name.to_string();
    let st = NodeStatus {
        pods: BVec::from_vec(pods).unwrap(),
        ..st
    };
    h.send("pi-1", Body::Status(st));
    assert!(h
        .reasons(&format!("pod/{evicted}"))
        .contains(&"Evicted".to_string()));
    assert!(h.reasons("node/pi-1").contains(&"Evicted".to_string()));
    let pods = h.pods();
    assert!(
        !pods.iter().any(|p| p.metadata.name == evicted),
        "a Failed pod of a Deployment is deleted and replaced"
    );
    assert_eq!(pods.len(), 2);
}
