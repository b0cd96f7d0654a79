use super::*;
use crate::security::gate::SecurityConfig;
use crate::store::MemStore;
use baton_proto::enroll::JoinTokenError;
use baton_proto::sign::SigningKey;
use ed25519_dalek::Signer;

const NOW: u64 = 1_800_000_000;

fn setup() -> (Enroller, Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Arc::new(Pki::load_or_create(dir.path()).unwrap());
    let store: Arc<dyn Store> = Arc::new(MemStore::default());
    let sec = Arc::new(Security::load(store.clone(), pki, SecurityConfig::default()).unwrap());
    (Enroller::load(store.clone(), sec).unwrap(), store, dir)
}

fn token(e: &Enroller, uses: u32, node: Option<&str>) -> String {
    e.create_token(
        &JoinTokenRequest {
            ttl_seconds: 3600,
            uses,
            labels: [("zone".to_string(), "a".to_string())].into(),
            node_name: node.map(str::to_owned),
        },
        NOW,
    )
    .unwrap()
    .0
}

fn req(token: &str, node: &str, key: &SigningKey) -> Vec<u8> {
    serde_json::to_vec(&EnrollRequest {
        token: token.into(),
        node_name: node.into(),
        public_key: b64(key.verifying_key().as_bytes()),
        labels: [
            ("zone".to_string(), "b".to_string()),
            ("x".to_string(), "y".to_string()),
        ]
        .into(),
        arch: "arm64".into(),
    })
    .unwrap()
}

#[test]
fn token_strings_round_trip_and_carry_the_ca_hash() {
    let (e, store, _d) = setup();
    let t = token(&e, 1, None);
    let parsed = JoinToken::parse(&t).unwrap();
    assert_eq!(parsed.render(), t);
    assert_eq!(parsed.ca_sha256, e.pki().ca_sha256());
    // Only the hash is stored.
    let raw =
        String::from_utf8(store.get(Table::JoinTokens, &parsed.id).unwrap().unwrap()).unwrap();
    assert!(!raw.contains(&parsed.secret));
    for bad in [
        "",
        "bjt1",
        "bjt2.0011223344556677.00112233445566778899aabbccddeeff.",
        &t[..t.len() - 1],
        &format!("{t}.x"),
    ] {
        assert_eq!(
            JoinToken::parse(bad),
            Err(JoinTokenError::Malformed),
            "{bad}"
        );
    }
    assert_eq!(e.list_tokens().len(), 1);
    assert!(e.delete_token(&parsed.id).unwrap());
    assert!(!e.delete_token(&parsed.id).unwrap());
    assert!(e.list_tokens().is_empty());
}

#[test]
fn single_use_token_enrolls_once() {
    let (e, _s, _d) = setup();
    let t = token(&e, 1, None);
    let k = SigningKey::from_bytes(&[1; 32]);
    let ok = e.enroll(&req(&t, "pi-1", &k), NOW).unwrap();
    assert_eq!(ok.response.node_name, "pi-1");
    assert!(ok
        .response
        .certificate
        .starts_with("-----BEGIN CERTIFICATE-----"));
    // The token's labels win; the device's other labels stay.
    assert_eq!(ok.response.labels["zone"], "a");
    assert_eq!(ok.response.labels["x"], "y");
    assert_eq!(ok.response.not_after, NOW + DEFAULT_CERT_TTL.as_secs());
    // A used token is told apart from a wrong one.
    let again = e.enroll(&req(&t, "pi-2", &SigningKey::from_bytes(&[2; 32])), NOW);
    assert!(matches!(again, Err(EnrollError::UsedUp)), "{again:?}");
    assert!(again.unwrap_err().to_string().contains("already used"));
    let parts: Vec<&str> = t.split('.').collect();
    let wrong = format!("{}.{}.{}.{}", parts[0], parts[1], "f".repeat(32), parts[3]);
    assert_ne!(wrong, t);
    let r = e.enroll(&req(&wrong, "pi-2", &SigningKey::from_bytes(&[2; 32])), NOW);
    assert!(matches!(r, Err(EnrollError::InvalidToken)), "{r:?}");
    assert!(e.list_tokens().is_empty());
}

#[test]
fn failures_consume_nothing() {
    let (e, _s, _d) = setup();
    let t = token(&e, 2, None);
    let k = SigningKey::from_bytes(&[1; 32]);
    e.enroll(&req(&t, "pi-1", &k), NOW).unwrap();
    // Another key for an enrolled name: refused, and the token keeps its last use.
    let other = SigningKey::from_bytes(&[2; 32]);
    let r = e.enroll(&req(&t, "pi-1", &other), NOW);
    assert!(matches!(r, Err(EnrollError::NameTaken(_))), "{r:?}");
    assert_eq!(r.unwrap_err().status(), 409);
    assert_eq!(e.list_tokens()[0].uses_left, 1);
    // Expired.
    let r = e.enroll(&req(&t, "pi-3", &other), NOW + 3600);
    assert!(matches!(r, Err(EnrollError::Expired)), "{r:?}");
    assert_eq!(e.list_tokens()[0].uses_left, 1);
    // The same device enrolling again is fine (idempotent retry).
    e.enroll(&req(&t, "pi-1", &k), NOW).unwrap();
}

#[test]
fn a_node_token_replaces_a_device_and_lifts_a_revocation() {
    let (e, _s, _d) = setup();
    let k = SigningKey::from_bytes(&[1; 32]);
    e.enroll(&req(&token(&e, 1, None), "pi-1", &k), NOW)
        .unwrap();
    e.security.revoke("pi-1").unwrap();
    let r = e.enroll(&req(&token(&e, 1, None), "pi-1", &k), NOW);
    assert!(matches!(r, Err(EnrollError::NameTaken(_))), "{r:?}");
    let wrong = e.enroll(&req(&token(&e, 1, Some("pi-2")), "pi-1", &k), NOW);
    assert!(
        matches!(wrong, Err(EnrollError::WrongNode { .. })),
        "{wrong:?}"
    );
    let new = SigningKey::from_bytes(&[3; 32]);
    let ok = e
        .enroll(&req(&token(&e, 1, Some("pi-1")), "pi-1", &new), NOW)
        .unwrap();
    assert!(ok.was_revoked);
    let id = e.security.identity("pi-1").unwrap();
    assert!(!id.revoked);
    assert_eq!(id.public_key, b64(new.verifying_key().as_bytes()));
}

#[test]
fn hostile_input_gets_a_client_error() {
    let (e, _s, _d) = setup();
    let t = token(&e, 1, None);
    let k = SigningKey::from_bytes(&[1; 32]);
    let good: serde_json::Value = serde_json::from_slice(&req(&t, "pi-1", &k)).unwrap();
    let with = |f: &str, v: serde_json::Value| {
        let mut g = good.clone();
        g[f] = v;
        serde_json::to_vec(&g).unwrap()
    };
    let long_labels: BTreeMap<String, String> =
        (0..100).map(|i| (format!("k{i}"), "v".into())).collect();
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        b"{".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        vec![0xff; 100],
        vec![b' '; MAX_REQUEST_BYTES + 1],
        with("nodeName", "../etc".into()),
        with("nodeName", "".into()),
        with("nodeName", "a".repeat(64).into()),
        with("publicKey", "not base64!".into()),
        with("publicKey", b64(&[0; 31]).into()),
        with("token", "bjt1.zz".into()),
        with("token", 5.into()),
        with("labels", serde_json::json!({"bad key": "v"})),
        with("labels", serde_json::to_value(&long_labels).unwrap()),
        with("arch", "x".repeat(100).into()),
        with("extra", 1.into()),
    ];
    for body in cases {
        let r = e.enroll(&body, NOW);
        let status = r.as_ref().map(|_| 200).unwrap_or_else(|e| e.status());
        assert!(
            (400..500).contains(&status),
            "{:?}: {r:?}",
            String::from_utf8_lossy(&body[..body.len().min(60)])
        );
    }
    // Nothing was consumed.
    assert_eq!(e.list_tokens()[0].uses_left, 1);
}

#[test]
fn rotation_is_signed_by_the_current_key() {
    let (e, _s, _d) = setup();
    let old = SigningKey::from_bytes(&[1; 32]);
    e.enroll(&req(&token(&e, 1, None), "pi-1", &old), NOW)
        .unwrap();
    let new = SigningKey::from_bytes(&[2; 32]);
    let new_b64 = b64(new.verifying_key().as_bytes());
    let now_ms = NOW * 1000;
    let body = |k: &SigningKey, ts: u64| {
        let sig = k.sign(&rotate_signing_bytes("pi-1", &new_b64, ts));
        serde_json::to_vec(&RotateRequest {
            new_public_key: new_b64.clone(),
            timestamp_ms: ts,
            signature: b64(&sig.to_bytes()),
        })
        .unwrap()
    };
    let r = e.rotate("pi-1", &body(&new, now_ms), now_ms);
    assert!(matches!(r, Err(EnrollError::BadSignature)), "{r:?}");
    let r = e.rotate("pi-1", &body(&old, now_ms - 3_600_000), now_ms);
    assert!(matches!(r, Err(EnrollError::Stale)), "{r:?}");
    let r = e.rotate("pi-9", &body(&old, now_ms), now_ms);
    assert!(matches!(r, Err(EnrollError::NotEnrolled(_))), "{r:?}");
    let ok = e.rotate("pi-1", &body(&old, now_ms), now_ms).unwrap();
    assert_eq!(ok.node_name, "pi-1");
    let id = e.security.identity("pi-1").unwrap();
    assert_eq!(id.public_key, new_b64);
    assert_eq!(id.previous_key, Some(b64(old.verifying_key().as_bytes())));
    // A retry answers the same and changes nothing.
    e.rotate("pi-1", &body(&old, now_ms), now_ms).unwrap();
    assert_eq!(
        e.security.identity("pi-1").unwrap().previous_key,
        id.previous_key
    );
}

/// The store's record of token `t`.
fn stored(s: &Arc<dyn Store>, t: &str) -> JoinTokenRecord {
    let id = JoinToken::parse(t).unwrap().id;
    serde_json::from_slice(&s.get(Table::JoinTokens, &id).unwrap().unwrap()).unwrap()
}

#[test]
fn a_retry_by_the_same_device_is_answered_again_and_spends_nothing() {
    let (e, store, dir) = setup();
    let t = token(&e, 1, None);
    let k = SigningKey::from_bytes(&[1; 32]);
    let first = e.enroll(&req(&t, "pi-1", &k), NOW).unwrap();
    // Who spent the use is a stored fact, committed with the identity.
    let key = b64(k.verifying_key().as_bytes());
    assert_eq!(
        stored(&store, &t).used_by,
        vec![TokenUse {
            node_name: "pi-1".into(),
            public_key: key.clone()
        }]
    );
    // Power lost before the device saved the answer: it retries, also after a coordinator
    // restart (state reloaded from the store), and gets its certificate again.
    let pki = Arc::new(Pki::load_or_create(dir.path()).unwrap());
    let sec = Arc::new(Security::load(store.clone(), pki, SecurityConfig::default()).unwrap());
    let restarted = Enroller::load(store.clone(), sec).unwrap();
    for en in [&e, &restarted] {
        let again = en.enroll(&req(&t, "pi-1", &k), NOW + 10).unwrap();
        assert_eq!(again.response, first.response);
        assert!(!again.was_revoked);
    }
    assert_eq!(stored(&store, &t).uses_left, 0);
    assert_eq!(stored(&store, &t).used_by.len(), 1);
    // The same token on a second device: refused, under its name or the first one's, and
    // the first device keeps its identity.
    let other = SigningKey::from_bytes(&[2; 32]);
    for name in ["pi-2", "pi-1"] {
        let r = restarted.enroll(&req(&t, name, &other), NOW + 10);
        assert!(matches!(r, Err(EnrollError::UsedUp)), "{name}: {r:?}");
    }
    // The same key under another name is another enrollment: refused too.
    let r = restarted.enroll(&req(&t, "pi-2", &k), NOW + 10);
    assert!(matches!(r, Err(EnrollError::UsedUp)), "{r:?}");
    let id = restarted.security.identity("pi-1").unwrap();
    assert_eq!(id.public_key, key);
    assert_eq!(id.certificate, first.response.certificate);
    assert!(restarted.security.identity("pi-2").is_none());
    // Only within the token's validity.
    let r = restarted.enroll(&req(&t, "pi-1", &k), NOW + 3600);
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn a_retry_does_not_undo_a_revocation_or_a_rotation() {
    let (e, _s, _d) = setup();
    let t = token(&e, 1, None);
    let k = SigningKey::from_bytes(&[1; 32]);
    e.enroll(&req(&t, "pi-1", &k), NOW).unwrap();
    e.security.revoke("pi-1").unwrap();
    let r = e.enroll(&req(&t, "pi-1", &k), NOW);
    assert!(matches!(r, Err(EnrollError::UsedUp)), "{r:?}");
    assert!(e.security.identity("pi-1").unwrap().revoked);

    let t = token(&e, 1, None);
    e.enroll(&req(&t, "pi-2", &k), NOW).unwrap();
    let new = SigningKey::from_bytes(&[2; 32]);
    let new_b64 = b64(new.verifying_key().as_bytes());
    let ts = NOW * 1000;
    let sig = k.sign(&rotate_signing_bytes("pi-2", &new_b64, ts));
    let body = serde_json::to_vec(&RotateRequest {
        new_public_key: new_b64.clone(),
        timestamp_ms: ts,
        signature: b64(&sig.to_bytes()),
    })
    .unwrap();
    e.rotate("pi-2", &body, ts).unwrap();
    // The old key's enrollment is history: it gets no certificate.
    let r = e.enroll(&req(&t, "pi-2", &k), NOW);
    assert!(matches!(r, Err(EnrollError::UsedUp)), "{r:?}");
    assert_eq!(e.security.identity("pi-2").unwrap().public_key, new_b64);
}

#[test]
fn many_use_tokens_spend_one_use_per_device() {
    let (e, store, _d) = setup();
    let t = token(&e, 2, None);
    let k = SigningKey::from_bytes(&[1; 32]);
    e.enroll(&req(&t, "pi-1", &k), NOW).unwrap();
    e.enroll(&req(&t, "pi-1", &k), NOW).unwrap();
    assert_eq!(e.list_tokens()[0].uses_left, 1);
    e.enroll(&req(&t, "pi-2", &SigningKey::from_bytes(&[2; 32])), NOW)
        .unwrap();
    assert!(e.list_tokens().is_empty());
    assert_eq!(stored(&store, &t).used_by.len(), 2);
    // Both retry: both answered.
    e.enroll(&req(&t, "pi-1", &k), NOW).unwrap();
    e.enroll(&req(&t, "pi-2", &SigningKey::from_bytes(&[2; 32])), NOW)
        .unwrap();
}

#[test]
fn a_token_remembers_its_most_recent_uses_only() {
    let (e, store, _d) = setup();
    let n = MAX_REMEMBERED_USES + 3;
    let t = token(&e, n as u32, None);
    for i in 0..n {
        let k = SigningKey::from_bytes(&[(i % 250) as u8 + 1; 32]);
        e.enroll(&req(&t, &format!("pi-{i}"), &k), NOW).unwrap();
    }
    let rec = stored(&store, &t);
    assert_eq!(rec.uses_left, 0);
    assert_eq!(rec.used_by.len(), MAX_REMEMBERED_USES);
    assert_eq!(rec.used_by[0].node_name, "pi-3");
    assert_eq!(
        rec.used_by.last().unwrap().node_name,
        format!("pi-{}", n - 1)
    );
}

#[test]
fn enrolled_devices_are_handed_the_release_key_to_pin() {
    let (e, _s, _d) = setup();
    let k = SigningKey::from_bytes(&[1; 32]);
    let t = token(&e, 2, None);
    // Without a release key the answer has none (and old agents see the old shape).
    let plain = e.enroll(&req(&t, "pi-1", &k), NOW).unwrap();
    assert_eq!(plain.response.release_public_key, None);
    let release = SigningKey::from_bytes(&[4; 32]).verifying_key();
    let e = e.with_release_key(Some(&release));
    let t = token(&e, 1, None);
    let ok = e
        .enroll(&req(&t, "pi-2", &SigningKey::from_bytes(&[2; 32])), NOW)
        .unwrap();
    assert_eq!(
        ok.response.release_public_key,
        Some(b64(release.as_bytes()))
    );
}
