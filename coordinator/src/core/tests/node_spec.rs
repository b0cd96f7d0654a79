//! Cordon, taints and tolerations as the core applies them: scheduling around a cordoned
//! or tainted node, NoExecute evictions (at once, or after `tolerationSeconds`), and what
//! may not be set by hand.

use std::time::SystemTime;

use super::*;
use crate::contract::nodes::{NodeSpecChange, TaintRemoval};
use crate::model::api::{Taint, TaintEffect};

fn change(h: &mut Harness, node: &str, change: NodeSpecChange) -> Result<ApiReply, ApiError> {
    h.api(ApiOp::UpdateNode {
        name: node.into(),
        change,
    })
}

fn taint(key: &str, effect: TaintEffect) -> Taint {
    Taint {
        key: key.into(),
        value: String::new(),
        effect,
        time_added: None,
    }
}

fn on(h: &mut Harness, node: &str) -> usize {
    h.pods()
        .iter()
        .filter(|p| p.spec.node_name.as_deref() == Some(node))
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_cordoned_node_gets_no_new_pod_and_keeps_its_own() {
    let mut h = two_nodes();
    h.apply(&deployment("web", 2, "100m")).unwrap();
    assert_eq!(on(&mut h, "pi-1"), 1, "spread over both nodes");
    let cordon = NodeSpecChange {
        unschedulable: Some(true),
        ..Default::default()
    };
    change(&mut h, "pi-1", cordon).unwrap();
    assert!(h.node("pi-1").spec.unschedulable);
    assert!(h
        .reasons("node/pi-1")
        .contains(&"NodeNotSchedulable".to_string()));
    // Its pod stays; new ones go elsewhere.
    h.apply(&deployment("web", 5, "100m")).unwrap();
    assert_eq!(on(&mut h, "pi-1"), 1);
    assert_eq!(on(&mut h, "pi-2"), 4);
    // A Hello (the agent reconnected) keeps the cordon.
    h.send("pi-1", hello(4000));
    assert!(h.node("pi-1").spec.unschedulable);
    let uncordon = NodeSpecChange {
        unschedulable: Some(false),
        ..Default::default()
    };
    change(&mut h, "pi-1", uncordon).unwrap();
    h.apply(&deployment("web", 8, "100m")).unwrap();
    assert!(on(&mut h, "pi-1") > 1, "schedulable again");
}

#[tokio::test(start_paused = true)]
async fn no_execute_evicts_untolerated_pods_at_once_and_tolerated_ones_later() {
    let mut h = two_nodes();
    h.apply(&deployment("web", 2, "100m")).unwrap();
    let tolerant = deployment("cam", 2, "100m").replace(
        "      containers:",
        "      tolerations:\n      - {key: maintenance, operator: Exists, effect: NoExecute, tolerationSeconds: 30}\n      containers:",
    );
    h.apply(&tolerant).unwrap();
    let owner_on = |h: &mut Harness, owner: &str, node: &str| {
        h.pods()
            .iter()
            .filter(|p| p.spec.node_name.as_deref() == Some(node))
            .filter(|p| p.metadata.owner.as_ref().is_some_and(|o| o == owner))
            .count()
    };
    assert_eq!(owner_on(&mut h, "web", "pi-1"), 1);
    assert_eq!(owner_on(&mut h, "cam", "pi-1"), 1);
    let t0 = SystemTime::now();
    let add = NodeSpecChange {
        add_taints: vec![taint("maintenance", TaintEffect::NoExecute)],
        ..Default::default()
    };
    change(&mut h, "pi-1", add).unwrap();
    let stamped = h.node("pi-1").spec.taints[0].time_added.clone();
    assert!(stamped.is_some(), "NoExecute taints carry their time");
    // The web pod went at once and was replaced on pi-2; the camera pod stays 30 s.
    assert_eq!(owner_on(&mut h, "web", "pi-1"), 0);
    assert_eq!(owner_on(&mut h, "web", "pi-2"), 2);
    assert_eq!(owner_on(&mut h, "cam", "pi-1"), 1);
    assert!(h
        .reasons("node/pi-1")
        .contains(&"TaintsChanged".to_string()));
    h.core.evict_untolerated(t0 + Duration::from_secs(20));
    assert_eq!(owner_on(&mut h, "cam", "pi-1"), 1);
    h.core.evict_untolerated(t0 + Duration::from_secs(31));
    let _ = h.drain();
    assert_eq!(owner_on(&mut h, "cam", "pi-1"), 0);
    // The tolerant replacement may land on the tainted node again (it tolerates it), as in
    // Kubernetes; the untolerant never.
    assert_eq!(owner_on(&mut h, "web", "pi-1"), 0);
}

#[tokio::test(start_paused = true)]
async fn pressure_taints_are_not_set_by_hand_and_missing_taints_are_named() {
    let mut h = two_nodes();
    let managed = NodeSpecChange {
        add_taints: vec![taint(
            crate::decide::taints::DISK_PRESSURE,
            TaintEffect::NoSchedule,
        )],
        ..Default::default()
    };
    let err = change(&mut h, "pi-1", managed).unwrap_err();
    assert!(err.to_string().contains("pressure conditions"), "{err}");
    let remove = NodeSpecChange {
        remove_taints: vec![TaintRemoval {
            key: "gpu".into(),
            effect: None,
        }],
        ..Default::default()
    };
    let err = change(&mut h, "pi-1", remove).unwrap_err();
    assert!(err.to_string().contains("taint gpu not found"), "{err}");
    let err = change(&mut h, "pi-9", NodeSpecChange::default()).unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    // A NoSchedule taint keeps new pods off unless they tolerate it.
    let gpu = NodeSpecChange {
        add_taints: vec![taint("gpu", TaintEffect::NoSchedule)],
        ..Default::default()
    };
    change(&mut h, "pi-1", gpu).unwrap();
    h.apply(&deployment("web", 4, "100m")).unwrap();
    assert_eq!(on(&mut h, "pi-1"), 0);
}

fn labels(pairs: &[(&str, Option<&str>)], overwrite: bool) -> NodeSpecChange {
    NodeSpecChange {
        labels: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
            .collect(),
        overwrite,
        ..Default::default()
    }
}

/// `baton label node`: scheduling by nodeSelector follows the label, a value changes only
/// with `--overwrite`, and the label outlives the agent's Hello.
#[tokio::test(start_paused = true)]
async fn node_labels_steer_scheduling_and_outlive_a_hello() {
    let mut h = two_nodes();
    let pinned = "apiVersion: v1\nkind: Pod\nmetadata: {name: cam}\nspec:\n  nodeSelector: {role: camera}\n  containers:\n  - {name: c, image: busybox:1.36}\n";
    h.apply(pinned).unwrap();
    assert_eq!(
        h.pods()[0].spec.node_name,
        None,
        "no node has the label yet"
    );
    change(&mut h, "pi-2", labels(&[("role", Some("camera"))], false)).unwrap();
    assert_eq!(h.node("pi-2").metadata.labels["role"], "camera");
    assert_eq!(h.pods()[0].spec.node_name.as_deref(), Some("pi-2"));
    assert!(h
        .reasons("node/pi-2")
        .contains(&"LabelsChanged".to_string()));

    // Another value needs --overwrite, as with kubectl; the same value does not.
    match change(&mut h, "pi-2", labels(&[("role", Some("gw"))], false)) {
        Err(ApiError::Conflict(m)) => {
            assert_eq!(
                m,
                "'role' already has a value (camera), and --overwrite is false"
            )
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    change(&mut h, "pi-2", labels(&[("role", Some("camera"))], false)).unwrap();
    change(&mut h, "pi-2", labels(&[("role", Some("gw"))], true)).unwrap();
    assert_eq!(h.node("pi-2").metadata.labels["role"], "gw");

    // A Hello (agent restart, its flags without the label) keeps the operator's labels,
    // set and removed alike.
    change(&mut h, "pi-1", labels(&[("zone", Some("lab"))], false)).unwrap();
    h.send("pi-2", hello(4000));
    h.send("pi-1", hello(4000));
    assert_eq!(h.node("pi-2").metadata.labels["role"], "gw");
    change(&mut h, "pi-1", labels(&[("zone", None)], false)).unwrap();
    h.send("pi-1", hello(4000));
    assert!(!h.node("pi-1").metadata.labels.contains_key("zone"));

    // Invalid keys and values are refused before anything changes.
    for bad in [
        labels(&[("-x", Some("1"))], true),
        labels(&[("ok", Some("a b"))], true),
    ] {
        assert!(matches!(
            change(&mut h, "pi-1", bad),
            Err(ApiError::BadRequest(_))
        ));
    }
    assert!(matches!(
        change(&mut h, "nope", labels(&[("a", Some("b"))], false)),
        Err(ApiError::NotFound(_))
    ));
}

fn hello_with_taints(taints: &[(&str, &str, baton_proto::TaintEffect)]) -> Body {
    let Body::Hello(mut h) = hello(4000) else {
        unreachable!()
    };
    h.taints = BVec::from_vec(
        taints
            .iter()
            .map(|(k, v, e)| baton_proto::NodeTaint {
                key: BString::new(*k).unwrap(),
                value: BString::new(*v).unwrap(),
                effect: *e,
            })
            .collect(),
    )
    .unwrap();
    Body::Hello(h)
}

/// `baton-agent --register-with-taints`: taken when the node first registers (a pod
/// without the toleration goes elsewhere); after that `baton taint` owns them, and the
/// pressure taints cannot be registered.
#[tokio::test(start_paused = true)]
async fn registered_taints_are_taken_once_and_keep_pods_off() {
    use baton_proto::TaintEffect as E;
    let mut h = Harness::new(Arc::new(MemStore::new()));
    h.send(
        "cam-1",
        hello_with_taints(&[
            ("dedicated", "cams", E::NoSchedule),
            ("node.kubernetes.io/disk-pressure", "", E::NoSchedule),
        ]),
    );
    h.send("pi-1", hello(4000));
    let node = h.node("cam-1");
    let shown: Vec<String> = node.spec.taints.iter().map(|t| t.to_string()).collect();
    assert_eq!(shown, vec!["dedicated=cams:NoSchedule"]);
    h.apply(&deployment("web", 4, "100m")).unwrap();
    assert_eq!(on(&mut h, "cam-1"), 0, "no pod without the toleration");
    assert_eq!(on(&mut h, "pi-1"), 4);

    // `baton taint node cam-1 dedicated-` wins over the flag on the next Hellos.
    let removal = NodeSpecChange {
        remove_taints: vec![TaintRemoval {
            key: "dedicated".into(),
            effect: None,
        }],
        ..Default::default()
    };
    change(&mut h, "cam-1", removal).unwrap();
    h.send(
        "cam-1",
        hello_with_taints(&[("dedicated", "cams", E::NoSchedule)]),
    );
    assert!(h.node("cam-1").spec.taints.is_empty());
    h.apply(&deployment("web", 8, "100m")).unwrap();
    assert!(
        on(&mut h, "cam-1") > 0,
        "the node takes pods once untainted"
    );
}
