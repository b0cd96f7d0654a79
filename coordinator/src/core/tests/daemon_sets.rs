//! DaemonSets through the core: one bound pod per matching node, kept through node loss,
//! taken off by an untolerated taint, revisions and deletion.

use super::*;
use crate::contract::nodes::NodeSpecChange;

fn daemon_set(image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels: {{app: agent}}
  template:
    metadata:
      labels: {{app: agent}}
    spec:
      containers:
      - name: main
        image: {image}
"
    )
}

fn daemon_set_status(h: &mut Harness) -> api::DaemonSetStatus {
    match h
        .api(ApiOp::Get {
            kind: ResourceKind::DaemonSet,
            name: Some("agent".into()),
        })
        .unwrap()
    {
        ApiReply::Object(ApiObject::DaemonSet(d)) => d.status,
        other => panic!("unexpected {other:?}"),
    }
}

fn nodes_of(pods: &[api::Pod]) -> Vec<String> {
    let mut v: Vec<String> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.spec.node_name.clone())
        .collect();
    v.sort();
    v
}

/// Reports every pod the node was last sent as running and ready.
fn report_running(h: &mut Harness, msgs: &[Outbound], node: &str) {
    let desired = desired_for(msgs, node).expect("a desired state for the node");
    h.send(
        node,
        Body::Status(running_status(&desired, desired.generation)),
    );
}

#[tokio::test(start_paused = true)]
async fn every_node_runs_one_pod_and_a_lost_node_keeps_it() {
    let mut h = Harness::evicting_after(Arc::new(MemStore::new()), Duration::from_secs(5));
    h.send("pi-1", hello(4000));
    h.send("pi-2", hello(4000));
    h.drain();
    let applied = h.apply(&daemon_set("busybox:1.36")).unwrap();
    assert_eq!(applied[0].kind, ResourceKind::DaemonSet);
    assert_eq!(applied[0].action, ApplyAction::Created);
    let pods = h.pods();
    assert_eq!(nodes_of(&pods), vec!["pi-1", "pi-2"]);
    assert!(pods
        .iter()
        .all(|p| p.metadata.daemon_set.as_deref() == Some("agent") && p.metadata.owner.is_none()));
    let msgs = h.drain();
    assert_eq!(desired_for(&msgs, "pi-1").unwrap().pods.len(), 1);
    report_running(&mut h, &msgs, "pi-1");
    report_running(&mut h, &msgs, "pi-2");
    let s = daemon_set_status(&mut h);
    assert_eq!(
        (
            s.desired_number_scheduled,
            s.current_number_scheduled,
            s.number_ready,
            s.updated_number_scheduled
        ),
        (2, 2, 2, 2)
    );

    // A node that joins gets its pod.
    h.send("pi-3", hello(4000));
    assert_eq!(nodes_of(&h.pods()), vec!["pi-1", "pi-2", "pi-3"]);

    // pi-2 goes silent past the heartbeat and eviction timeouts: its pod stays bound to
    // it, shown Unknown, and nothing replaces it elsewhere.
    let before: Vec<api::Pod> = h.pods();
    for _ in 0..(TIMEOUT.as_secs() + 10) {
        tokio::time::advance(Duration::from_secs(1)).await;
        for alive in ["pi-1", "pi-3"] {
            h.send(alive, Body::Heartbeat(Heartbeat::default()));
        }
        h.core.handle(Event::Tick);
    }
    assert!(!h.node("pi-2").status.ready);
    let after = h.pods();
    assert_eq!(
        after.iter().map(|p| &p.metadata.uid).collect::<Vec<_>>(),
        before.iter().map(|p| &p.metadata.uid).collect::<Vec<_>>(),
        "no DaemonSet pod evicted or recreated"
    );
    let on_lost = after
        .iter()
        .find(|p| p.spec.node_name.as_deref() == Some("pi-2"))
        .unwrap();
    assert_eq!(on_lost.status.phase, api::PodPhase::Unknown);
    assert!(!h.reasons("node/pi-2").contains(&"NodeLost".to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_taint_takes_the_pod_off_and_deletion_removes_pods_and_revisions() {
    let mut h = two_nodes();
    h.apply(&daemon_set("busybox:1.36")).unwrap();
    h.drain();
    h.api(ApiOp::UpdateNode {
        name: "pi-2".into(),
        change: NodeSpecChange {
            add_taints: vec![api::Taint {
                key: "maintenance".into(),
                value: String::new(),
                effect: api::TaintEffect::NoSchedule,
                time_added: None,
            }],
            ..Default::default()
        },
    })
    .unwrap();
    assert_eq!(nodes_of(&h.pods()), vec!["pi-1"]);
    assert_eq!(daemon_set_status(&mut h).desired_number_scheduled, 1);
    // Cordoning does not: a DaemonSet's pod tolerates it, as in Kubernetes.
    h.api(ApiOp::UpdateNode {
        name: "pi-1".into(),
        change: NodeSpecChange {
            unschedulable: Some(true),
            ..Default::default()
        },
    })
    .unwrap();
    assert_eq!(nodes_of(&h.pods()), vec!["pi-1"]);

    // A new template is a new revision; undo brings the first back as revision 3.
    h.apply(&daemon_set("busybox:1.37")).unwrap();
    let history = |h: &mut Harness| match h
        .api(ApiOp::RolloutHistory {
            kind: ResourceKind::DaemonSet,
            name: "agent".into(),
        })
        .unwrap()
    {
        ApiReply::Revisions(r) => r.iter().map(|r| r.revision).collect::<Vec<_>>(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(history(&mut h), vec![1, 2]);
    let ApiReply::RolledBack(undo) = h
        .api(ApiOp::RolloutUndo {
            kind: ResourceKind::DaemonSet,
            name: "agent".into(),
            to_revision: None,
        })
        .unwrap()
    else {
        panic!("not an undo")
    };
    assert!(undo.rolled_back);
    assert_eq!(history(&mut h), vec![2, 3]);
    let ApiReply::Rollout(progress) = h
        .api(ApiOp::RolloutStatus {
            kind: ResourceKind::DaemonSet,
            name: "agent".into(),
        })
        .unwrap()
    else {
        panic!("not a rollout")
    };
    assert_eq!((progress.replicas, progress.revision), (1, 3));
    assert!(
        progress.message.contains("daemon set \"agent\""),
        "{progress:?}"
    );

    // A restarted coordinator finds the DaemonSet, its pods and revisions as they were.
    let pods = h.pods();
    let mut again = Harness::new(h.store.clone());
    assert_eq!(again.pods(), pods);
    assert_eq!(daemon_set_status(&mut again), daemon_set_status(&mut h));
    assert_eq!(history(&mut again), vec![2, 3]);

    h.api(ApiOp::Delete {
        kind: ResourceKind::DaemonSet,
        name: "agent".into(),
    })
    .unwrap();
    assert!(nodes_of(&h.pods()).is_empty());
    assert!(h.core.revisions.is_empty());
    assert!(h.store.list(Table::DaemonSets).unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn old_pods_that_never_became_ready_are_replaced_in_one_step() {
    let mut h = two_nodes();
    h.apply(&daemon_set("busybox:1.36")).unwrap();
    let old: Vec<String> = h.pods().iter().map(|p| p.metadata.uid.clone()).collect();
    assert_eq!(old.len(), 2);
    // No node reported them running: they go at once, and new ones take their place in
    // the same change, not at some later event.
    h.apply(&daemon_set("busybox:1.37")).unwrap();
    let pods = h.pods();
    assert_eq!(nodes_of(&pods), vec!["pi-1", "pi-2"]);
    assert!(pods
        .iter()
        .all(|p| !old.contains(&p.metadata.uid) && p.spec.containers[0].image == "busybox:1.37"));
}
