//! API requests: validation, admission policy, pods.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_bad_manifest_changes_nothing() {
    let mut h = two_nodes();
    h.apply(&deployment("web", 2, "100m")).unwrap();
    h.drain();
    let before = h.snapshot();
    // The first document is fine, the second is not: all or nothing.
    let bad = format!("{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: x}}\nspec: {{containers: [{{name: c}}]}}\n", deployment("other", 1, "100m"));
    assert!(matches!(h.apply(&bad), Err(ApiError::BadRequest(_))));
    assert!(matches!(
        h.apply("not: [valid"),
        Err(ApiError::BadRequest(_))
    ));
    // Valid YAML whose pod would not fit the wire limits is refused too.
    let huge = deployment("huge", 1, "100m").replace(
        "        resources:",
        &format!(
            "        env: [{{name: X, value: {}}}]\n        resources:",
            "x".repeat(5000)
        ),
    );
    let err = h.apply(&huge).unwrap_err();
    assert!(
        matches!(&err, ApiError::BadRequest(m) if m.contains("env")),
        "{err:?}"
    );
    assert_eq!(h.snapshot(), before);
    assert!(h.drain().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_policy_refuses_on_apply_and_flags_admit() {
    let mut h = two_nodes();
    let privileged = deployment("priv", 1, "100m").replace(
        "        resources:",
        "        securityContext: {privileged: true}\n        resources:",
    );
    let before = h.snapshot();
    let err = h.apply(&privileged).unwrap_err();
    assert_eq!(
            err,
            ApiError::BadRequest(
                "deployment \"priv\": spec.template.spec.containers[0].securityContext.privileged: privileged containers are refused by the coordinator's policy (start `baton server` with --allow-privileged to allow them)".into()
            )
        );
    let host = "apiVersion: v1\nkind: Pod\nmetadata: {name: h}\nspec:\n  volumes: [{name: v, hostPath: {path: /srv/x}}]\n  containers: [{name: c, image: busybox:1}]\n";
    assert!(
        matches!(h.apply(host), Err(ApiError::BadRequest(m)) if m.contains("--allow-host-path"))
    );
    assert_eq!(h.snapshot(), before);
    // The same core with a policy that allows them admits both.
    let store = h.store.clone();
    drop(h);
    let mut h = Harness::new(store);
    h.core.policy = Policy {
        allow_privileged: true,
        allow_host_paths: vec!["/srv".into()],
        ..Default::default()
    };
    assert!(h.apply(&privileged).is_ok());
    assert!(h.apply(host).is_ok());
}

#[tokio::test(start_paused = true)]
async fn pods_apply_and_conflict() {
    let mut h = two_nodes();
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: solo}\nspec:\n  restartPolicy: Never\n  containers: [{name: c, image: busybox:1.36}]\n";
    assert_eq!(h.apply(pod).unwrap()[0].action, ApplyAction::Created);
    assert_eq!(h.apply(pod).unwrap()[0].action, ApplyAction::Unchanged);
    let changed = pod.replace("busybox:1.36", "busybox:1.37");
    assert!(matches!(h.apply(&changed), Err(ApiError::Conflict(_))));
    assert!(h.pods()[0].spec.node_name.is_some());
    assert!(matches!(
        h.api(ApiOp::Delete {
            kind: ResourceKind::Node,
            name: "pi-1".into()
        }),
        Err(ApiError::BadRequest(_))
    ));
    assert!(matches!(
        h.api(ApiOp::Get {
            kind: ResourceKind::Pod,
            name: Some("nope".into())
        }),
        Err(ApiError::NotFound(_))
    ));
}
