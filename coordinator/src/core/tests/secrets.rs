//! Secrets: storage, views, and pods withheld for them.

use super::*;
use crate::core::secrets::blocker;
use crate::security::secrets::{DataKey, SecretKeeper};
use baton_proto::sign::SigningKey;

#[tokio::test(start_paused = true)]
async fn secrets_are_stored_and_shown_without_values() {
    let mut h = two_nodes();
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {password: hunter2, user: admin}\n";
    let applied = h.apply(secret).unwrap();
    assert_eq!(
        applied,
        vec![Applied {
            kind: ResourceKind::Secret,
            name: "db".into(),
            action: ApplyAction::Created
        }]
    );
    assert_eq!(h.apply(secret).unwrap()[0].action, ApplyAction::Unchanged);
    let changed = secret.replace("hunter2", "hunter3");
    assert_eq!(
        h.apply(&changed).unwrap()[0].action,
        ApplyAction::Configured
    );
    for op in [
        ApiOp::Get {
            kind: ResourceKind::Secret,
            name: Some("db".into()),
        },
        ApiOp::Get {
            kind: ResourceKind::Secret,
            name: None,
        },
        ApiOp::Describe {
            kind: ResourceKind::Secret,
            name: "db".into(),
        },
    ] {
        let reply = format!("{:?}", h.api(op).unwrap());
        assert!(!reply.contains("hunter"), "{reply}");
        assert!(!reply.contains(&api::base64::encode(b"hunter3")), "{reply}");
        assert!(reply.contains("\"password\": 7"), "{reply}");
    }
    // It survives a restart, and delete removes it.
    let store = h.store.clone();
    drop(h);
    let mut h = Harness::new(store);
    assert!(h
        .api(ApiOp::Get {
            kind: ResourceKind::Secret,
            name: Some("db".into())
        })
        .is_ok());
    h.api(ApiOp::Delete {
        kind: ResourceKind::Secret,
        name: "db".into(),
    })
    .unwrap();
    assert!(matches!(
        h.api(ApiOp::Get {
            kind: ResourceKind::Secret,
            name: Some("db".into())
        }),
        Err(ApiError::NotFound(_))
    ));
}

fn secret(name: &str, data: &[(&str, &[u8])]) -> api::Secret {
    api::Secret {
        api_version: "v1".into(),
        kind: "Secret".into(),
        metadata: api::ObjectMeta {
            name: name.into(),
            ..Default::default()
        },
        type_: api::SecretType::Opaque,
        data: data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect(),
    }
}

fn pod_spec(yaml: &str) -> api::PodSpec {
    serde_yaml_ng::from_str(yaml).unwrap()
}

const USES_DB: &str = r#"
containers:
- name: c
  image: busybox
  env:
  - name: PW
    valueFrom: {secretKeyRef: {name: db, key: password}}
volumes:
- name: v
  secret: {secretName: files}
imagePullSecrets: [{name: regcred}]
"#;

/// The reasons a pod is withheld, with the real keeper (only pi-1 has an enrolled key).
#[test]
fn blockers_name_the_missing_piece() {
    let node_key = SigningKey::from_bytes(&[7; 32]).verifying_key();
    let keys = move |node: &str| (node == "pi-1").then_some(node_key);
    let keeper = SecretKeeper::new(DataKey::ephemeral(), Arc::new(keys));
    let spec = pod_spec(USES_DB);
    let mut secrets = BTreeMap::new();
    assert_eq!(
        blocker(&keeper, &spec, "pi-1", &secrets).as_deref(),
        Some(r#"secret "db" not found"#)
    );
    secrets.insert("db".into(), secret("db", &[("user", b"u")]));
    secrets.insert("files".into(), secret("files", &[("f", b"x")]));
    secrets.insert(
        "regcred".into(),
        secret("regcred", &[(".dockerconfigjson", b"{}")]),
    );
    assert_eq!(
        blocker(&keeper, &spec, "pi-1", &secrets).as_deref(),
        Some("couldn't find key password in Secret db")
    );
    secrets.insert("db".into(), secret("db", &[("password", b"p")]));
    assert_eq!(blocker(&keeper, &spec, "pi-1", &secrets), None);
    assert_eq!(
        blocker(&keeper, &spec, "pi-2", &secrets).as_deref(),
        Some(r#"node pi-2 has no enrolled key to seal secret "db" to"#)
    );
    assert_eq!(
        blocker(&keeper, &pod_spec("containers: []"), "pi-2", &secrets),
        None
    );
}
