//! Secrets: storage, views, and pods withheld for them.

use super::*;

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
