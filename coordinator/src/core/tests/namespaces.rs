//! Namespaces: the same names side by side, unknown and terminating namespaces refused,
//! `-n` against a manifest's own namespace, limited callers, references kept inside a
//! namespace, deletion with everything in it, and stores from before namespaces.

use super::*;

const TEAM_A: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n";

fn in_ns(yaml: &str, ns: &str) -> String {
    yaml.replacen(
        "metadata:\n  name:",
        &format!("metadata:\n  namespace: {ns}\n  name:"),
        1,
    )
}

/// Every pod of the harness as (namespace, name).
fn pod_names(h: &mut Harness) -> Vec<(String, String)> {
    let mut v: Vec<_> = h
        .pods()
        .into_iter()
        .map(|p| (p.metadata.namespace.unwrap_or_default(), p.metadata.name))
        .collect();
    v.sort();
    v
}

#[tokio::test(start_paused = true)]
async fn the_same_name_lives_in_two_namespaces_and_the_api_shows_it_unqualified() {
    let mut h = two_nodes();
    h.apply(TEAM_A).unwrap();
    let web = deployment("web", 1, "100m");
    h.apply(&web).unwrap();
    let applied = h.apply(&in_ns(&web, "team-a")).unwrap();
    assert_eq!(applied[0].name, "web", "apply answers the name as given");
    assert_eq!(applied[0].action, ApplyAction::Created);
    // `-n` puts an object naming no namespace there, as its own namespace would.
    assert_eq!(
        h.apply_as(&web, Some("team-a"), Access::everywhere())
            .unwrap()[0]
            .action,
        ApplyAction::Unchanged
    );
    let pods = pod_names(&mut h);
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert_eq!(pods[0].0, "default");
    assert_eq!(pods[1].0, "team-a");
    assert!(pods.iter().all(|(_, n)| n.starts_with("web-")), "{pods:?}");
    // Inside, and to the node, the team's pod is `team-a_web-...`: distinct from default's.
    let keys: Vec<&String> = h.core.pods.keys().collect();
    assert!(
        keys.iter().any(|k| k.starts_with("team-a_web-")),
        "{keys:?}"
    );
    let get = |name: &str| ApiOp::Get {
        kind: ResourceKind::Deployment,
        name: Some(name.into()),
    };
    let ApiReply::Object(ApiObject::Deployment(d)) = h.api(get("team-a_web")).unwrap() else {
        panic!("not a deployment")
    };
    assert_eq!(d.metadata.name, "web");
    assert_eq!(d.metadata.namespace.as_deref(), Some("team-a"));
    let ApiReply::Object(ApiObject::Deployment(d)) = h.api(get("web")).unwrap() else {
        panic!("not a deployment")
    };
    assert_eq!(d.metadata.namespace.as_deref(), Some("default"));
    // Events carry their namespace.
    let ApiReply::Events(events) = h.api(ApiOp::Events { object: None }).unwrap() else {
        panic!("not events")
    };
    assert!(
        events
            .iter()
            .any(|e| e.namespace.as_deref() == Some("team-a") && e.object.starts_with("pod/web-")),
        "{events:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_and_disagreeing_namespaces_are_refused_with_the_path() {
    let mut h = two_nodes();
    let web = deployment("web", 1, "100m");
    match h.apply(&in_ns(&web, "nope")) {
        Err(ApiError::BadRequest(m)) => assert!(
            m.contains("metadata.namespace") && m.contains("namespace \"nope\" not found"),
            "{m}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match h.apply_as(&web, Some("nope"), Access::everywhere()) {
        Err(ApiError::BadRequest(m)) => assert!(m.contains("\"nope\" not found"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A manifest that makes the namespace first is fine, as with kubectl.
    h.apply(&format!("{TEAM_A}---\n{}", in_ns(&web, "team-a")))
        .unwrap();
    match h.apply_as(&in_ns(&web, "team-a"), Some("default"), Access::everywhere()) {
        Err(ApiError::BadRequest(m)) => assert!(
            m.contains("the namespace from the provided object \"team-a\" does not match the namespace \"default\""),
            "{m}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        h.core.deployments.len(),
        1,
        "nothing of a refused apply stays"
    );
}

#[tokio::test(start_paused = true)]
async fn a_caller_limited_to_a_namespace_writes_only_there() {
    let mut h = two_nodes();
    h.apply(TEAM_A).unwrap();
    h.apply(&TEAM_A.replace("team-a", "team-b")).unwrap();
    let web = deployment("web", 1, "100m");
    let a = || Access::only(["team-a".to_owned()]);
    h.apply_as(&web, Some("team-a"), a()).unwrap();
    for (yaml, ns) in [
        (web.clone(), None),
        (web.clone(), Some("team-b")),
        (in_ns(&web, "team-b"), None),
        (TEAM_A.replace("team-a", "team-c"), None),
    ] {
        match h.apply_as(&yaml, ns, a()) {
            Err(ApiError::Forbidden(m)) => assert!(
                m.contains("may not write") || m.contains("cluster-scoped"),
                "{m}"
            ),
            other => panic!("expected 403 for {ns:?}, got {other:?}"),
        }
    }
    assert_eq!(h.core.deployments.len(), 1);
    assert_eq!(h.core.namespaces.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_pods_secrets_and_config_maps_are_its_namespaces() {
    let mut h = two_nodes();
    h.apply(TEAM_A).unwrap();
    let pod = "apiVersion: v1
kind: Pod
metadata:
  name: reader
spec:
  containers:
  - name: main
    image: busybox:1.36
    env:
    - name: PW
      valueFrom: {secretKeyRef: {name: creds, key: pw}}
    - name: LIVES
      valueFrom: {configMapKeyRef: {name: game, key: lives}}
";
    h.apply_as(pod, Some("team-a"), Access::everywhere())
        .unwrap();
    let stored = &h.core.pods["team-a_reader"];
    let refs = crate::model::secrets::references(&stored.spec);
    assert_eq!(refs.keys().collect::<Vec<_>>(), ["team-a_creds"]);
    let cms = crate::model::secrets::config_map_references(&stored.spec);
    assert_eq!(cms.into_iter().collect::<Vec<_>>(), ["team-a_game"]);
    // The API shows them as written.
    let pods = h.pods();
    let shown = crate::model::secrets::references(&pods[0].spec);
    assert_eq!(shown.keys().collect::<Vec<_>>(), ["creds"]);
}

#[tokio::test(start_paused = true)]
async fn deleting_a_namespace_deletes_what_is_in_it_and_ends_when_it_is_empty() {
    let mut h = two_nodes();
    h.apply(TEAM_A).unwrap();
    let web = deployment("web", 2, "100m");
    h.apply(&web).unwrap();
    h.apply_as(&web, Some("team-a"), Access::everywhere())
        .unwrap();
    h.apply_as(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: game}\ndata: {lives: \"3\"}\n",
        Some("team-a"),
        Access::everywhere(),
    )
    .unwrap();
    assert_eq!(pod_names(&mut h).len(), 4);
    let del = |name: &str| ApiOp::Delete {
        kind: ResourceKind::Namespace,
        name: name.into(),
    };
    assert!(matches!(h.api(del("default")), Err(ApiError::Forbidden(_))));
    h.api(del("team-a")).unwrap();
    let pods = pod_names(&mut h);
    assert!(pods.iter().all(|(ns, _)| ns == "default"), "{pods:?}");
    assert_eq!(pods.len(), 2);
    assert!(h.core.config_maps.is_empty());
    assert!(h.core.namespaces.is_empty(), "gone once empty");
    let msgs = h.drain();
    for node in ["pi-1", "pi-2"] {
        if let Some(d) = desired_for(&msgs, node) {
            assert!(
                d.pods
                    .iter()
                    .all(|p| !p.name.as_str().starts_with("team-a_")),
                "{node}: {d:?}"
            );
        }
    }
    match h.apply_as(&web, Some("team-a"), Access::everywhere()) {
        Err(ApiError::BadRequest(m)) => assert!(m.contains("not found"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_namespace_whose_pods_drain_is_terminating_meanwhile() {
    let mut h = two_nodes();
    h.apply(TEAM_A).unwrap();
    h.apply_as(
        &deployment("web", 1, "100m"),
        Some("team-a"),
        Access::everywhere(),
    )
    .unwrap();
    // The pod runs and is ready, so its deletion drains it first.
    let msgs = h.drain();
    for node in ["pi-1", "pi-2"] {
        if let Some(d) = desired_for(&msgs, node) {
            h.send(node, Body::Status(running_status(&d, d.generation)));
        }
    }
    h.api(ApiOp::Delete {
        kind: ResourceKind::Namespace,
        name: "team-a".into(),
    })
    .unwrap();
    let get = ApiOp::Get {
        kind: ResourceKind::Namespace,
        name: Some("team-a".into()),
    };
    let ApiReply::Object(ApiObject::Namespace(n)) = h.api(get.clone()).unwrap() else {
        panic!("not a namespace")
    };
    assert_eq!(n.status.phase, api::NamespacePhase::Terminating);
    match h.apply_as(
        &deployment("db", 1, "100m"),
        Some("team-a"),
        Access::everywhere(),
    ) {
        Err(ApiError::Conflict(m)) => assert!(m.contains("being terminated"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    tokio::time::advance(DEFAULT_POD_DRAIN + Duration::from_secs(1)).await;
    h.core.handle(Event::Tick);
    h.core.handle(Event::Tick);
    assert!(matches!(h.api(get), Err(ApiError::NotFound(_))));
    // `default` is always there, and listed.
    let ApiReply::Objects(all) = h
        .api(ApiOp::Get {
            kind: ResourceKind::Namespace,
            name: None,
        })
        .unwrap()
    else {
        panic!("not a list")
    };
    assert_eq!(
        all.iter().map(ApiObject::name).collect::<Vec<_>>(),
        ["default"]
    );
}

/// A store written before namespaces existed (the same tables, objects keyed by name,
/// JSON without `namespace`) opens with every object in `default`.
#[tokio::test(start_paused = true)]
async fn a_store_from_before_namespaces_is_all_defaults() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What the previous schema wrote: this very core on the same redb file, with no
        // namespace anywhere.
        let store: Arc<dyn Store> = Arc::new(crate::store::RedbStore::open(dir.path()).unwrap());
        let (tx, _out) = mpsc::channel(1024);
        let mut core = Core::new(store.clone(), tx, TIMEOUT).unwrap();
        let (req, _rx) = ApiRequest::new(ApiOp::Apply {
            yaml: format!(
                "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: game}}\ndata: {{a: b}}\n",
                deployment("web", 2, "100m")
            ),
            namespace: None,
            access: Access::everywhere(),
        });
        core.handle(Event::Api(req));
        let raw = store.list(Table::Deployments).unwrap();
        assert_eq!(raw.len(), 1);
        assert_eq!(raw[0].0, "web", "keyed by name alone");
        let json = String::from_utf8(raw[0].1.clone()).unwrap();
        assert!(!json.contains("namespace"), "{json}");
    }
    let store: Arc<dyn Store> = Arc::new(crate::store::RedbStore::open(dir.path()).unwrap());
    let (tx, _out) = mpsc::channel(1024);
    let mut core = Core::new(store, tx, TIMEOUT).unwrap();
    for kind in [
        ResourceKind::Deployment,
        ResourceKind::Pod,
        ResourceKind::ConfigMap,
    ] {
        let (req, mut rx) = ApiRequest::new(ApiOp::Get { kind, name: None });
        core.handle(Event::Api(req));
        let Ok(Ok(ApiReply::Objects(objects))) = rx.try_recv() else {
            panic!("a list")
        };
        assert!(!objects.is_empty(), "{kind:?}");
        for o in objects {
            assert_eq!(o.namespace(), Some("default"), "{o:?}");
            assert!(!o.name().contains('_'));
        }
    }
}

/// A v4 agent (Baton 0.1) keeps its `default` pods and is not sent another namespace's:
/// they wait with a reason naming its protocol.
#[tokio::test(start_paused = true)]
async fn a_v4_agent_is_not_sent_pods_of_other_namespaces() {
    let mut h = Harness::new(Arc::new(MemStore::new()));
    h.core.handle(Event::Inbound {
        node: nn("old"),
        body: hello(4000),
        proto: 4,
    });
    h.drain();
    h.apply(TEAM_A).unwrap();
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeSelector: {{kubernetes.io/hostname: old}}\n  containers:\n  - name: main\n    image: busybox:1.36\n"
        )
    };
    h.apply(&pod("mine")).unwrap();
    h.apply_as(&pod("theirs"), Some("team-a"), Access::everywhere())
        .unwrap();
    let msgs = h.drain();
    let sent: Vec<String> = desired_for(&msgs, "old")
        .map(|d| d.pods.iter().map(|p| p.name.to_string()).collect())
        .unwrap_or_default();
    assert_eq!(sent, ["mine"]);
    let theirs = h
        .pods()
        .into_iter()
        .find(|p| p.metadata.namespace.as_deref() == Some("team-a"))
        .unwrap();
    assert_eq!(
        theirs.status.message.as_deref(),
        Some("node old runs an agent of protocol v4, which predates namespaces (the pod is in namespace \"team-a\"); upgrade its agent to protocol v5")
    );
}

/// A namespaced object's rollout history and the errors about it name it as the caller
/// did: the revision's owner and its template's references unqualified, and a missing
/// object's name without the namespace's prefix.
#[tokio::test(start_paused = true)]
async fn revisions_and_errors_name_objects_unqualified() {
    let mut h = two_nodes();
    h.apply(TEAM_A).unwrap();
    let web = deployment("web", 1, "100m").replace(
        "        resources:",
        "        env:\n        - name: PW\n          valueFrom: {secretKeyRef: {name: creds, key: pw}}\n        resources:",
    );
    h.apply(&in_ns(&web, "team-a")).unwrap();
    let history = h
        .api(ApiOp::RolloutHistory {
            kind: ResourceKind::Deployment,
            name: "team-a_web".into(),
        })
        .unwrap();
    let ApiReply::Revisions(revisions) = history else {
        panic!("not revisions")
    };
    assert!(!revisions.is_empty());
    for r in &revisions {
        assert_eq!(r.deployment, "web");
        let refs = crate::model::secrets::references(&r.template.spec);
        assert_eq!(refs.keys().collect::<Vec<_>>(), ["creds"]);
    }
    for op in [
        ApiOp::Get {
            kind: ResourceKind::Deployment,
            name: Some("team-a_nope".into()),
        },
        ApiOp::RolloutHistory {
            kind: ResourceKind::DaemonSet,
            name: "team-a_nope".into(),
        },
        ApiOp::Scale {
            name: "team-a_nope".into(),
            replicas: 2,
        },
    ] {
        let err = h.api(op).unwrap_err().to_string();
        assert!(err.contains("\"nope\""), "{err}");
        assert!(!err.contains("team-a_"), "{err}");
    }
}
