//! Decoding hostile input: never a panic, never an unbounded allocation, always an error
//! that says what was wrong.

use baton_proto::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Envelope::decode(&bytes);
    }

    #[test]
    fn valid_prefix_then_garbage_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..512), body_tag in 0u8..8) {
        // A correct version and sender, then an arbitrary body: exercises every decoder.
        let mut bytes = vec![PROTO_VERSION as u8, 1, 4, b'p', b'i', b'-', b'1', 5, 0, body_tag];
        bytes.extend_from_slice(&tail);
        let _ = Envelope::decode(&bytes);
    }

    #[test]
    fn heartbeat_round_trips(seq in any::<u64>(), generation in any::<u64>(), digest in any::<u64>()) {
        let env = Envelope::new(
            Sender::Node(NodeName::new("n").unwrap()),
            seq,
            Body::Heartbeat(Heartbeat { applied_generation: generation, status_digest: digest, ..Default::default() }),
        );
        prop_assert_eq!(Envelope::decode(&env.encode().unwrap()).unwrap(), env);
    }
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let bytes = vec![1u8; MAX_MESSAGE_BYTES + 1];
    assert_eq!(
        Envelope::decode(&bytes),
        Err(ProtoError::TooLarge {
            len: MAX_MESSAGE_BYTES + 1,
            max: MAX_MESSAGE_BYTES
        })
    );
}

#[test]
fn unknown_version_is_named() {
    assert_eq!(
        Envelope::decode(&[1, 0, 0, 3]),
        Err(ProtoError::UnsupportedVersion { got: 1 })
    );
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = Envelope::new(Sender::Coordinator, 0, Body::StatusRequest)
        .encode()
        .unwrap();
    bytes.push(0);
    assert_eq!(
        Envelope::decode(&bytes),
        Err(ProtoError::TrailingBytes { trailing: 1 })
    );
}

#[test]
fn declared_lengths_over_the_bound_are_refused_without_allocating() {
    // Desired state claiming u32::MAX pods: the bounded decoder must refuse it from the
    // length prefix alone (a naive Vec decoder would try to reserve for it).
    let mut bytes = vec![PROTO_VERSION as u8, 0, 0, 0, 4, 1];
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(matches!(
        Envelope::decode(&bytes),
        Err(ProtoError::Decode(_))
    ));
    // One pod more than allowed, each pod empty-ish but present: refused by count.
    let pods: Vec<PodSpec> = (0..=MAX_PODS_PER_NODE)
        .map(|i| PodSpec {
            name: BString::new(format!("p{i}")).unwrap(),
            uid: BString::new("u").unwrap(),
            host_network: false,
            restart_policy: RestartPolicy::Never,
            termination_grace_secs: 0,
            containers: BVec::new(),
            init_containers: BVec::new(),
            volumes: BVec::new(),
            image_pull_secrets: BVec::new(),
            priority: 0,
            dns: None,
        })
        .collect();
    // Encoding through a plain Vec to bypass the constructor's own bound check.
    #[derive(serde::Serialize)]
    struct Raw<'a> {
        v: u16,
        s: Sender,
        seq: u64,
        sent_at_ms: u64,
        tag: u8,
        generation: u64,
        pods: &'a [PodSpec],
        secrets: &'a [SealedSecret],
        term: u64,
        crons: &'a [NodeCron],
        sig: &'a [u8],
    }
    let raw = |pods: &[PodSpec]| {
        postcard::to_allocvec(&Raw {
            v: PROTO_VERSION,
            s: Sender::Coordinator,
            seq: 0,
            sent_at_ms: 0,
            tag: 4,
            generation: 1,
            pods,
            secrets: &[],
            term: 0,
            crons: &[],
            sig: &[],
        })
        .unwrap()
    };
    assert!(matches!(
        Envelope::decode(&raw(&pods)),
        Err(ProtoError::Decode(_))
    ));
    assert!(Envelope::decode(&raw(&pods[..MAX_PODS_PER_NODE])).is_ok());
    assert!(BVec::<PodSpec, MAX_PODS_PER_NODE>::from_vec(pods).is_err());
}

#[test]
fn strings_over_their_bound_are_refused() {
    // A Status with one pod whose name is `n` bytes long (bound 253). The same layout
    // decodes at 253 and fails at 254, so the failure is the bound and nothing else.
    fn status_with_pod_name(n: usize) -> Vec<u8> {
        let mut bytes = vec![PROTO_VERSION as u8, 1, 1, b'n', 0, 0, 2, 0, 1];
        bytes.extend_from_slice(&[(n as u8) | 0x80, (n >> 7) as u8]);
        bytes.extend_from_slice("x".repeat(n).as_bytes());
        bytes.extend_from_slice(&[1, b'u', 0, 0, 0, 0, 0]);
        bytes
    }
    assert!(BString::<253>::new("x".repeat(254)).is_err());
    assert!(Envelope::decode(&status_with_pod_name(253)).is_ok());
    assert!(matches!(
        Envelope::decode(&status_with_pod_name(254)),
        Err(ProtoError::Decode(_))
    ));
}

#[test]
fn node_names_are_single_topic_levels() {
    for bad in ["", "a/b", "+", "#", "a b", "..", &"x".repeat(64)] {
        assert!(NodeName::new(bad).is_err(), "{bad:?} accepted");
    }
    for good in ["pi-1", "node_2.lab", "A9"] {
        assert!(NodeName::new(good).is_ok(), "{good:?} refused");
    }
    // The decoder applies the same rule: sender "a/b".
    assert!(Envelope::decode(&[PROTO_VERSION as u8, 1, 3, b'a', b'/', b'b', 0, 0, 3, 0]).is_err());
    assert!(Envelope::decode(&[PROTO_VERSION as u8, 1, 3, b'a', b'-', b'b', 0, 0, 3, 0]).is_ok());
}
