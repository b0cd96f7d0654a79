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

/// The ConfigMap parts each node was sent: (node, name, digest, index, count).
fn parts(msgs: &[Outbound]) -> Vec<(String, String, u16, u16)> {
    msgs.iter()
        .filter_map(|m| match &m.body {
            Body::ConfigMapPart(p) => Some((
                m.node.as_str().to_owned(),
                p.name.to_string(),
                p.index,
                p.count,
            )),
            _ => None,
        })
        .collect()
}

fn desireds(msgs: &[Outbound]) -> usize {
    msgs.iter()
        .filter(|m| matches!(m.body, Body::Desired(_)))
        .count()
}

fn pinned_pod(name: &str, node: &str, cm: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeSelector: {{kubernetes.io/hostname: {node}}}\n  containers:\n  - name: c\n    image: busybox\n    volumeMounts: [{{name: v, mountPath: /cfg}}]\n  volumes:\n  - name: v\n    configMap: {{name: {cm}}}\n"
    )
}

#[tokio::test(start_paused = true)]
async fn a_config_map_goes_to_the_nodes_that_use_it_and_again_only_when_it_changes() {
    let mut h = two_nodes();
    h.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: game}\ndata: {lives: \"3\"}\n")
        .unwrap();
    assert!(parts(&h.drain()).is_empty(), "no pod uses it yet");
    h.apply(&pinned_pod("p", "pi-1", "game")).unwrap();
    let msgs = h.drain();
    assert_eq!(parts(&msgs), vec![("pi-1".into(), "game".into(), 0, 1)]);
    // The pod spec names it; its content is not in the desired state.
    let d = desired_for(&msgs, "pi-1").unwrap();
    assert!(matches!(
        &d.pods[0].volumes[0].source,
        baton_proto::VolumeSource::ConfigMap { name, default_mode: 0o644, .. } if name.as_str() == "game"
    ));

    // A change: the content again, to pi-1 only, and no new desired state.
    h.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: game}\ndata: {lives: \"5\"}\n")
        .unwrap();
    let msgs = h.drain();
    assert_eq!(parts(&msgs), vec![("pi-1".into(), "game".into(), 0, 1)]);
    assert_eq!(
        desireds(&msgs),
        0,
        "pods are not resent for a ConfigMap change"
    );
    // A label change keeps the content: nothing is sent.
    h.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: game, labels: {a: b}}\ndata: {lives: \"5\"}\n")
        .unwrap();
    assert!(parts(&h.drain()).is_empty());
    // A reconnecting agent gets it again.
    h.send("pi-1", hello(4000));
    assert_eq!(
        parts(&h.drain()),
        vec![("pi-1".into(), "game".into(), 0, 1)]
    );

    // A 1 MiB one travels in parts that each fit a message.
    let big = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata:\n  blob: {}\n",
        "x".repeat(1024 * 1024 - 4)
    );
    h.apply(&big).unwrap();
    h.apply(&pinned_pod("q", "pi-2", "big")).unwrap();
    let msgs = h.drain();
    let sent = parts(&msgs);
    assert_eq!(sent.len(), 6, "{sent:?}");
    assert!(sent
        .iter()
        .all(|(n, c, _, count)| n == "pi-2" && c == "big" && *count == 6));
    for m in &msgs {
        let env = baton_proto::Envelope::new(baton_proto::Sender::Coordinator, 1, m.body.clone());
        assert!(env.encode().unwrap().len() <= baton_proto::MAX_MESSAGE_BYTES);
    }
}

#[tokio::test(start_paused = true)]
async fn a_v4_agent_is_not_sent_a_pod_that_uses_a_config_map() {
    let mut h = Harness::new(Arc::new(MemStore::new()));
    h.core.handle(Event::Inbound {
        node: nn("old"),
        body: hello(4000),
        proto: 4,
    });
    h.drain();
    h.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: game}\ndata: {lives: \"3\"}\n")
        .unwrap();
    h.apply(&pinned_pod("p", "old", "game")).unwrap();
    let msgs = h.drain();
    assert!(parts(&msgs).is_empty());
    assert!(desired_for(&msgs, "old").is_none_or(|d| d.pods.is_empty()));
    let p = h
        .pods()
        .into_iter()
        .find(|p| p.metadata.name == "p")
        .unwrap();
    assert_eq!(
        p.status.reason.as_deref(),
        Some("CreateContainerConfigError")
    );
    assert_eq!(
        p.status.message.as_deref(),
        Some("node old runs an agent of protocol v4, which cannot use ConfigMaps (configmap \"game\"); upgrade its agent to protocol v5")
    );
}
