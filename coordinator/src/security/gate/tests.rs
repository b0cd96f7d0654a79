//! The gate's checks, with the clock as a parameter.

use super::*;
use crate::security::encoding::b64;
use crate::store::MemStore;
use baton_proto::sign::SigningKey;
use baton_proto::Heartbeat;

const NOW: u64 = 1_800_000_000_000;

fn setup(require: bool) -> (Security, SigningKey, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Arc::new(Pki::load_or_create(dir.path()).unwrap());
    let store: Arc<dyn Store> = Arc::new(MemStore::default());
    let sec = Security::load(
        store,
        pki,
        SecurityConfig {
            require_signatures: require,
            ..Default::default()
        },
    )
    .unwrap();
    let key = SigningKey::from_bytes(&[9; 32]);
    sec.install(record("pi-1", &key.verifying_key()), vec![])
        .unwrap();
    (sec, key, dir)
}

fn record(node: &str, k: &VerifyingKey) -> IdentityRecord {
    IdentityRecord {
        node: node.into(),
        public_key: b64(k.as_bytes()),
        previous_key: None,
        previous_valid_until_ms: 0,
        labels: BTreeMap::new(),
        arch: "amd64".into(),
        not_after: 0,
        certificate: String::new(),
        enrolled_at: String::new(),
        revoked: false,
        revoked_at: None,
    }
}

fn msg(
    node: &str,
    kind: &str,
    body: Body,
    seq: u64,
    at: u64,
    key: Option<&SigningKey>,
) -> (String, Vec<u8>) {
    let topic = format!("baton/v1/nodes/{node}/up/{kind}");
    let mut env = Envelope::new(Sender::Node(NodeName::new(node).unwrap()), seq, body);
    env.sent_at_ms = at;
    if let Some(k) = key {
        sign::sign(&mut env, &topic, k).unwrap();
    }
    (topic, env.encode().unwrap())
}

fn hb() -> Body {
    Body::Heartbeat(Heartbeat {
        applied_generation: 1,
        status_digest: 2,
        ..Default::default()
    })
}

fn reason(r: Result<Option<(NodeName, Body)>, Rejection>) -> Option<Reason> {
    r.err().map(|e| e.reason)
}

#[test]
fn enrolled_nodes_must_sign_fresh_messages_with_their_key() {
    let (sec, key, _d) = setup(false);
    let other = SigningKey::from_bytes(&[1; 32]);
    let (t, p) = msg("pi-1", "heartbeat", hb(), 10, NOW, Some(&key));
    assert!(sec.verify(&t, &p, NOW).unwrap().is_some());
    // The very same bytes again: a duplicate, dropped quietly.
    assert_eq!(sec.verify(&t, &p, NOW), Ok(None));
    let cases = [
        (
            msg("pi-1", "heartbeat", hb(), 9, NOW, Some(&key)),
            Reason::Replay,
        ),
        (
            msg("pi-1", "heartbeat", hb(), 11, NOW, None),
            Reason::Unsigned,
        ),
        (
            msg("pi-1", "heartbeat", hb(), 11, NOW, Some(&other)),
            Reason::BadSignature,
        ),
        (
            msg("pi-1", "heartbeat", hb(), 11, NOW - 600_001, Some(&key)),
            Reason::Stale,
        ),
        (
            msg("pi-1", "status", hb(), 11, NOW, Some(&key)),
            Reason::TopicMismatch,
        ),
    ];
    for ((t, p), want) in cases {
        assert_eq!(reason(sec.verify(&t, &p, NOW)), Some(want), "{want:?}");
    }
    // Signed for another node's topic and moved: the signature covers the topic.
    let (_, p) = msg("pi-1", "heartbeat", hb(), 12, NOW, Some(&key));
    assert_eq!(
        reason(sec.verify("baton/v1/nodes/pi-2/up/heartbeat", &p, NOW)),
        Some(Reason::TopicMismatch)
    );
    assert_eq!(
        reason(sec.verify("baton/v1/nodes/pi-1/up/heartbeat", &[1, 2, 3], NOW)),
        Some(Reason::Malformed)
    );
    // Rejected messages did not move the seq: 11 is still fresh.
    let (t, p) = msg("pi-1", "heartbeat", hb(), 11, NOW, Some(&key));
    assert!(sec.verify(&t, &p, NOW).unwrap().is_some());
}

#[test]
fn unenrolled_nodes_depend_on_the_mode() {
    let (open, _, _d) = setup(false);
    let (t, p) = msg("pi-9", "heartbeat", hb(), 1, 0, None);
    assert!(open.verify(&t, &p, NOW).unwrap().is_some());
    let (strict, _, _d2) = setup(true);
    assert_eq!(
        reason(strict.verify(&t, &p, NOW)),
        Some(Reason::UnknownNode)
    );
}

#[test]
fn last_will_is_exempt_from_seq_and_time_but_not_replayable() {
    let (sec, key, _d) = setup(false);
    let (t, p) = msg("pi-1", "heartbeat", hb(), 100, NOW, Some(&key));
    sec.verify(&t, &p, NOW).unwrap();
    // Signed at connect, hours ago, with a lower seq.
    let (wt, wp) = msg(
        "pi-1",
        "offline",
        Body::Offline,
        50,
        NOW - 7_200_000,
        Some(&key),
    );
    assert!(sec.verify(&wt, &wp, NOW).unwrap().is_some());
    assert_eq!(sec.verify(&wt, &wp, NOW), Ok(None));
    let (ot, op) = msg("pi-1", "offline", Body::Offline, 40, NOW, Some(&key));
    assert_eq!(reason(sec.verify(&ot, &op, NOW)), Some(Reason::Replay));
    let (ft, fp) = msg("pi-1", "offline", Body::Offline, 60, NOW, None);
    assert_eq!(reason(sec.verify(&ft, &fp, NOW)), Some(Reason::Unsigned));
}

#[test]
fn revocation_rotation_and_persistence() {
    let (sec, key, _d) = setup(false);
    let (t, p) = msg("pi-1", "heartbeat", hb(), 10, NOW, Some(&key));
    sec.verify(&t, &p, NOW).unwrap();
    sec.flush().unwrap();
    // A restarted coordinator remembers the seq.
    let again = Security::load(
        sec.store.clone(),
        sec.pki.clone(),
        SecurityConfig::default(),
    )
    .unwrap();
    assert_eq!(again.verify(&t, &p, NOW), Ok(None));
    let (t9, p9) = msg("pi-1", "heartbeat", hb(), 9, NOW, Some(&key));
    assert_eq!(reason(again.verify(&t9, &p9, NOW)), Some(Reason::Replay));
    // Rotation: both keys during the overlap, only the new one after it.
    let new = SigningKey::from_bytes(&[10; 32]);
    let mut rec = record("pi-1", &new.verifying_key());
    rec.previous_key = Some(b64(key.verifying_key().as_bytes()));
    rec.previous_valid_until_ms = NOW + 1000;
    sec.install(rec, vec![]).unwrap();
    let (t, p) = msg("pi-1", "heartbeat", hb(), 11, NOW, Some(&key));
    assert!(sec.verify(&t, &p, NOW).unwrap().is_some());
    let (t, p) = msg("pi-1", "heartbeat", hb(), 12, NOW + 2000, Some(&key));
    assert_eq!(
        reason(sec.verify(&t, &p, NOW + 2000)),
        Some(Reason::BadSignature)
    );
    let (t, p) = msg("pi-1", "heartbeat", hb(), 13, NOW + 2000, Some(&new));
    assert!(sec.verify(&t, &p, NOW + 2000).unwrap().is_some());
    // Revoked: refused whatever it signs, and that survives a restart.
    sec.revoke("pi-1").unwrap();
    let (t, p) = msg("pi-1", "heartbeat", hb(), 14, NOW, Some(&new));
    assert_eq!(reason(sec.verify(&t, &p, NOW)), Some(Reason::Revoked));
    let again = Security::load(
        sec.store.clone(),
        sec.pki.clone(),
        SecurityConfig::default(),
    )
    .unwrap();
    assert_eq!(again.revoked().into_iter().collect::<Vec<_>>(), ["pi-1"]);
    assert!(matches!(
        sec.revoke("nope"),
        Err(SecurityError::NotEnrolled(_))
    ));
}

#[test]
fn messages_of_an_expired_certificate_are_refused() {
    let (sec, _ck, _dir) = setup(false);
    let key = SigningKey::from_bytes(&[9; 32]);
    let mut rec = record("pi-9", &key.verifying_key());
    let now = 1_800_000_000_000u64;
    rec.not_after = now / 1000 + 60;
    sec.install(rec, vec![]).unwrap();
    let (t, p) = msg("pi-9", "heartbeat", hb(), 1, now, Some(&key));
    assert!(sec.verify(&t, &p, now).is_ok());
    // A minute later the certificate has expired: refused, however well signed.
    let later = now + 60_000;
    let (t, p) = msg("pi-9", "heartbeat", hb(), 2, later, Some(&key));
    assert_eq!(reason(sec.verify(&t, &p, later)), Some(Reason::Expired));
    assert_eq!(Reason::Expired.as_str(), "expired");
}

#[test]
fn counters_per_reason_and_node() {
    let (sec, _key, _d) = setup(false);
    let (t, p) = msg("pi-1", "heartbeat", hb(), 10, NOW, None);
    assert!(sec.admit(&t, &p).is_none());
    assert!(sec.admit(&t, &p).is_none());
    let r = sec.report();
    assert_eq!(r.total.get(Reason::Unsigned.as_str()), Some(&2));
    assert_eq!(r.nodes["pi-1"].get(Reason::Unsigned.as_str()), Some(&2));
    assert_eq!(r.enrolled.get("pi-1"), Some(&false));
}

#[test]
fn outbound_messages_are_signed_with_growing_seqs() {
    let (sec, _key, _d) = setup(false);
    let node = NodeName::new("pi-1").unwrap();
    let (t1, p1) = sec.seal(&node, Body::StatusRequest).unwrap();
    let (_, p2) = sec.seal(&node, Body::StatusRequest).unwrap();
    let (e1, e2) = (
        Envelope::decode(&p1).unwrap(),
        Envelope::decode(&p2).unwrap(),
    );
    assert!(e2.seq > e1.seq);
    assert_eq!(t1, "baton/v1/nodes/pi-1/down/control");
    sign::verify(&e1, &t1, &sec.pki.public_key()).unwrap();
    // A restart continues above the persisted reservation.
    let again = Security::load(
        sec.store.clone(),
        sec.pki.clone(),
        SecurityConfig::default(),
    )
    .unwrap();
    let (_, p3) = again.seal(&node, Body::StatusRequest).unwrap();
    assert!(Envelope::decode(&p3).unwrap().seq > e2.seq);
}

fn desired_body() -> Body {
    Body::Desired(baton_proto::DesiredState {
        generation: 3,
        pods: baton_proto::BVec::new(),
        secrets: baton_proto::BVec::new(),
        term: 0,
        crons: Default::default(),
    })
}

fn term_of(payload: &[u8]) -> Option<u64> {
    Envelope::decode(payload).unwrap().body.term()
}

/// The leader's term: a single coordinator keeps the stored one (0 on a new store), with
/// no write per start; a new etcd leader takes its election revision, or the stored term
/// plus one if that is higher (a store brought from another cluster), and stores it, so
/// that no later coordinator of this state goes below it. It is stamped on what changes a
/// node's state, in the node's version: a v4 node reads no term.
#[test]
fn the_leaders_term_grows_with_each_leadership_and_is_stamped_on_desired_states() {
    let (sec, _key, _d) = setup(false);
    let node = NodeName::new("pi-1").unwrap();
    sec.know_versions([("pi-1".to_string(), 5)]);
    assert_eq!(sec.term(), 0);
    let (_, p) = sec.seal(&node, desired_body()).unwrap();
    assert_eq!(term_of(&p), Some(0));

    assert_eq!(sec.lead(40).unwrap(), 40, "the election key's revision");
    let (_, p) = sec.seal(&node, desired_body()).unwrap();
    assert_eq!(term_of(&p), Some(40));
    let (_, p) = sec.seal(&node, Body::StatusRequest).unwrap();
    assert_eq!(term_of(&p), None, "a request carries none");

    // The next start of this state: redb keeps 40; an etcd leader whose revision is
    // lower (another etcd cluster) still goes above it.
    let load = || {
        Security::load(
            sec.store.clone(),
            sec.pki.clone(),
            SecurityConfig::default(),
        )
    };
    assert_eq!(load().unwrap().term(), 40);
    assert_eq!(load().unwrap().lead(7).unwrap(), 41);
    assert_eq!(load().unwrap().term(), 41);
    assert_eq!(load().unwrap().lead(900).unwrap(), 900);

    // A node known (from the store) to speak v4 is written to in v4, without a term; one
    // known to speak v5 in v5 before it spoke to this process.
    let again = load().unwrap();
    again.know_versions([("pi-1".to_string(), 4), ("pi-2".to_string(), 5)]);
    let (_, p) = again.seal(&node, desired_body()).unwrap();
    assert_eq!(Envelope::peek_version(&p), Some(4));
    assert_eq!(term_of(&p), Some(0), "v4 has no term");
    let (_, p) = again
        .seal(&NodeName::new("pi-2").unwrap(), desired_body())
        .unwrap();
    assert_eq!(Envelope::peek_version(&p), Some(5));
    assert_eq!(term_of(&p), Some(900));
}
