//! ConfigMaps: apply, get, immutability, persistence and delete.

use super::*;

#[tokio::test(start_paused = true)]
async fn config_maps_are_applied_stored_and_deleted() {
    let mut h = two_nodes();
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: game}\ndata: {lives: \"3\"}\n";
    let applied = h.apply(cm).unwrap();
    assert_eq!(
        applied,
        vec![Applied {
            kind: ResourceKind::ConfigMap,
            name: "game".into(),
            action: ApplyAction::Created
        }]
    );
    assert_eq!(h.apply(cm).unwrap()[0].action, ApplyAction::Unchanged);
    let changed = cm.replace("\"3\"", "\"5\"");
    assert_eq!(
        h.apply(&changed).unwrap()[0].action,
        ApplyAction::Configured
    );
    let get = ApiOp::Get {
        kind: ResourceKind::ConfigMap,
        name: Some("game".into()),
    };
    let ApiReply::Object(ApiObject::ConfigMap(got)) = h.api(get.clone()).unwrap() else {
        panic!("not a configmap")
    };
    assert_eq!(got.data["lives"], "5");
    assert_eq!(got.metadata.generation, 2);

    // It survives a restart, and delete removes it.
    let store = h.store.clone();
    drop(h);
    let mut h = Harness::new(store);
    assert!(h.api(get.clone()).is_ok());
    h.api(ApiOp::Delete {
        kind: ResourceKind::ConfigMap,
        name: "game".into(),
    })
    .unwrap();
    assert!(matches!(h.api(get), Err(ApiError::NotFound(_))));
}

#[tokio::test(start_paused = true)]
async fn an_immutable_config_map_keeps_its_data() {
    let mut h = two_nodes();
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fixed}\ndata: {a: \"1\"}\nimmutable: true\n";
    h.apply(cm).unwrap();
    // Labels may change; data may not, nor may `immutable` be lifted.
    let relabeled = cm.replace("{name: fixed}", "{name: fixed, labels: {x: y}}");
    assert_eq!(
        h.apply(&relabeled).unwrap()[0].action,
        ApplyAction::Configured
    );
    for refused in [
        cm.replace("\"1\"", "\"2\""),
        cm.replace("immutable: true", "immutable: false"),
    ] {
        match h.apply(&refused) {
            Err(ApiError::Conflict(m)) => assert!(m.contains("immutable"), "{m}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
}
