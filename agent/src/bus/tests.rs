use super::*;

use rumqttc::StateError;
use std::io::{Error as IoError, ErrorKind};

/// The CN of certificates made like enrollment makes them, and like `openssl req
/// -subj` does (the issuer's CN comes first in the DER and must not be taken).
#[test]
fn the_subject_cn_is_read_and_checked_against_the_node() {
    // CN=pi-1 under CN=fixture-ca, Ed25519.
    let pem = crate::mqtt_tls::fixtures::NODE_CERT.as_bytes();
    let pi1 = NodeName::new("pi-1").unwrap();
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem).unwrap();
    assert_eq!(subject_cn(&der).as_deref(), Some("pi-1"));
    assert_eq!(identity_problem(pem, &pi1), None);
    let other = identity_problem(pem, &NodeName::new("pi-2").unwrap()).unwrap();
    assert!(
        other.contains(r#"has CN "pi-1", not the node name "pi-2""#),
        "{other}"
    );
    assert_eq!(subject_cn(&der[..der.len() / 2]), None, "truncated");
    assert_eq!(subject_cn(b""), None);
}

/// Against a broker that refuses for over a minute: the first failure is logged, the
/// next ones are held, one more line comes a minute later with the count, a new cause
/// is logged at once, and the success says how long it took; the Hello then carries
/// the last failure, and only once.
#[tokio::test(start_paused = true)]
async fn repeats_are_rate_limited_and_the_recovery_is_told() {
    let node = NodeName::new("pi-1").unwrap();
    let mut link = LinkLog::new("mqtt://b:1883".into(), false);
    let refused = ConnectionError::Io(IoError::from(ErrorKind::ConnectionRefused));
    assert_eq!(
        link.failed(&refused).as_deref(),
        Some("cannot connect to the MQTT broker at mqtt://b:1883: connection refused (nothing listens there: is the broker running, and is the port right?)")
    );
    for _ in 0..7 {
        tokio::time::advance(RECONNECT_CAP).await;
        assert_eq!(link.failed(&refused), None);
    }
    tokio::time::advance(RECONNECT_CAP).await;
    let again = link.failed(&refused).unwrap();
    assert!(
        again.ends_with("; still failing after 9 attempts in 64s (7 not logged)"),
        "{again}"
    );
    tokio::time::advance(RECONNECT_CAP).await;
    assert_eq!(link.failed(&refused), None);
    let hangup = ConnectionError::MqttState(StateError::ConnectionAborted);
    let changed = link.failed(&hangup).unwrap();
    assert!(
        changed.contains("the server hung up without answering CONNECT (is this a TLS port? use mqtts://); still failing after 11 attempts in 72s (1 not logged)"),
        "{changed}"
    );
    tokio::time::advance(Duration::from_secs(3)).await;
    let (line, report) = link.connected(&node);
    assert_eq!(
        line,
        "connected to broker at mqtt://b:1883 after 11 failed attempts in 75s"
    );
    assert!(report
        .unwrap()
        .starts_with("the server did not answer as MQTT"));
    let (line, report) = link.connected(&node);
    assert_eq!(line, "connected to broker at mqtt://b:1883");
    assert_eq!(report, None);
}

/// A bus that never connects, to call `accept` on.
fn offline_bus(security: Option<AgentSecurity>) -> Bus {
    let node = NodeName::new("pi-1").unwrap();
    let (client, _) = AsyncClient::new(
        mqtt_options("mqtt://127.0.0.1:9", &node, None, Duration::from_secs(10)).unwrap(),
        1,
    );
    Bus {
        client,
        node,
        send: Arc::new(Mutex::new(1)),
        connected: Arc::new(AtomicBool::new(false)),
        security,
        last_connect_error: Arc::new(Mutex::new(None)),
        logs: Arc::new(std::sync::OnceLock::new()),
        exec: Arc::new(std::sync::OnceLock::new()),
        close: Arc::new(tokio::sync::Notify::new()),
        term: Arc::new(LeaderTerm::new(0)),
    }
}

/// `body` from the coordinator on pi-1's control topic, signed by `key` if given.
fn control(body: Body, seq: u64, key: Option<&baton_proto::sign::SigningKey>) -> (String, Vec<u8>) {
    let node = NodeName::new("pi-1").unwrap();
    let topic = topics::topic(&node, Kind::of(&body));
    let mut env = Envelope::new(Sender::Coordinator, seq, body);
    env.sent_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    if let Some(k) = key {
        baton_proto::sign::sign(&mut env, &topic, k).unwrap();
    }
    (topic, env.encode().unwrap())
}

/// A verified RotateKey is the bus's own business: it starts the rotation (a signed
/// request to the coordinator's API, seen here by a listener standing in for it) and
/// gives the node loop no event, so no pod is touched.
#[tokio::test]
async fn a_verified_rotate_key_starts_a_rotation_and_gives_the_node_loop_nothing() {
    use base64::Engine as _;
    use tokio::io::AsyncReadExt;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let coordinator = baton_proto::sign::SigningKey::from_bytes(&[1; 32]);
    let id = crate::identity::IdentityFile {
        version: crate::identity::FORMAT_VERSION,
        node_name: "pi-1".into(),
        private_key: b64(&[5; 32]),
        certificate: crate::mqtt_tls::fixtures::NODE_CERT.into(),
        coordinator_public_key: b64(coordinator.verifying_key().as_bytes()),
        ca_certificate: crate::mqtt_tls::fixtures::CA.into(),
        labels: Default::default(),
        not_after: 0,
        coordinator_api: Some(format!("http://{}", api.local_addr().unwrap())),
    };
    id.save(&dir.path().join(crate::identity::IDENTITY_FILE))
        .unwrap();
    let sec = AgentSecurity::new(dir.path(), &id, crate::identity::DEFAULT_WINDOW).unwrap();
    let bus = offline_bus(Some(sec));

    let (topic, payload) = control(Body::StatusRequest, 10, Some(&coordinator));
    assert!(matches!(
        bus.accept(&topic, &payload),
        Some(BusEvent::StatusRequest)
    ));
    let (topic, payload) = control(Body::RotateKey, 11, Some(&coordinator));
    assert!(bus.accept(&topic, &payload).is_none());

    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), api.accept())
        .await
        .expect("no rotation request within 10 s")
        .unwrap();
    let mut request = vec![0; 4096];
    let n = conn.read(&mut request).await.unwrap();
    let request = String::from_utf8_lossy(&request[..n]);
    assert!(
        request.starts_with("POST /api/v1/nodes/pi-1/rotate "),
        "{request}"
    );
}

/// An enrolled node's security, with `coordinator` as the pinned coordinator key.
fn enrolled(dir: &std::path::Path, coordinator: &baton_proto::sign::SigningKey) -> AgentSecurity {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let id = crate::identity::IdentityFile {
        version: crate::identity::FORMAT_VERSION,
        node_name: "pi-1".into(),
        private_key: b64(&[5; 32]),
        certificate: crate::mqtt_tls::fixtures::NODE_CERT.into(),
        coordinator_public_key: b64(coordinator.verifying_key().as_bytes()),
        ca_certificate: crate::mqtt_tls::fixtures::CA.into(),
        labels: Default::default(),
        not_after: 0,
        coordinator_api: None,
    };
    id.save(&dir.join(crate::identity::IDENTITY_FILE)).unwrap();
    AgentSecurity::new(dir, &id, crate::identity::DEFAULT_WINDOW).unwrap()
}

fn desired(generation: u64, term: u64) -> Body {
    Body::Desired(DesiredState {
        generation,
        pods: baton_proto::BVec::new(),
        secrets: baton_proto::BVec::new(),
        term,
        crons: Default::default(),
    })
}

fn generation_of(ev: Option<BusEvent>) -> Option<(u64, u64)> {
    match ev {
        Some(BusEvent::Desired(d)) => Some((d.generation, d.term)),
        _ => None,
    }
}

/// A deposed leader's message, correctly signed and fresh, is refused for its term,
/// before the replay check records its seq: the leader's next message, numbered below
/// it, still passes. A later leader's term is taken whatever its generation, and the
/// other messages that carry a term are held to it too.
#[test]
fn a_deposed_leaders_message_is_refused_before_its_seq_counts() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = baton_proto::sign::SigningKey::from_bytes(&[1; 32]);
    let bus = offline_bus(Some(enrolled(dir.path(), &coordinator)));
    let accept = |body: Body, seq: u64| {
        let (topic, payload) = control(body, seq, Some(&coordinator));
        bus.accept(&topic, &payload)
    };
    assert_eq!(generation_of(accept(desired(5, 20), 100)), Some((5, 20)));
    assert_eq!(bus.leader_term().current(), 20);

    // The deposed leader, resumed: a later seq, a higher generation, an older term.
    assert!(accept(desired(9, 19), 500).is_none());
    assert_eq!(bus.leader_term().refused(), 1);
    // The leader's next message is numbered below the refused one: not a replay.
    assert_eq!(generation_of(accept(desired(6, 20), 101)), Some((6, 20)));
    // A new leader's word stands, with a lower generation.
    assert_eq!(generation_of(accept(desired(2, 31), 102)), Some((2, 31)));
    assert_eq!(bus.leader_term().current(), 31);
    assert!(
        accept(desired(7, 20), 103).is_none(),
        "the first leader now"
    );

    let mut table = baton_proto::ServiceTable {
        term: 30,
        ..Default::default()
    };
    assert!(accept(Body::ServiceTable(table.clone()), 104).is_none());
    table.term = 31;
    assert!(matches!(
        accept(Body::ServiceTable(table), 105),
        Some(BusEvent::ServiceTable(_))
    ));
    // A request changes nothing a leader owns, and carries no term.
    assert!(matches!(
        accept(Body::StatusRequest, 106),
        Some(BusEvent::StatusRequest)
    ));
    assert_eq!(bus.leader_term().refused(), 3);
    // A forged message with a higher term is refused for its signature, and does not
    // raise the term.
    let forger = baton_proto::sign::SigningKey::from_bytes(&[9; 32]);
    let (topic, payload) = control(desired(1, 99), 107, Some(&forger));
    assert!(bus.accept(&topic, &payload).is_none());
    assert_eq!(bus.leader_term().current(), 31);
}

/// Without an identity (development fleets) the term is checked all the same.
#[test]
fn an_unenrolled_node_refuses_a_lower_term_too() {
    let bus = offline_bus(None);
    let (topic, payload) = control(desired(3, 8), 1, None);
    assert_eq!(generation_of(bus.accept(&topic, &payload)), Some((3, 8)));
    let (topic, payload) = control(desired(4, 7), 2, None);
    assert!(bus.accept(&topic, &payload).is_none());
    assert_eq!(bus.leader_term().refused(), 1);
}

/// Without an identity there is nothing to rotate: the request is refused, like any
/// unsigned message an enrolled node would refuse, and the node loop hears nothing.
#[test]
fn rotate_key_without_an_identity_is_refused() {
    let bus = offline_bus(None);
    let (topic, payload) = control(Body::StatusRequest, 1, None);
    assert!(matches!(
        bus.accept(&topic, &payload),
        Some(BusEvent::StatusRequest)
    ));
    let (topic, payload) = control(Body::RotateKey, 2, None);
    assert!(bus.accept(&topic, &payload).is_none());
}

#[test]
fn jitter_stays_within_a_quarter_below() {
    for _ in 0..1000 {
        let d = with_jitter(RECONNECT_CAP);
        assert!(
            d <= RECONNECT_CAP && d >= RECONNECT_CAP.mul_f64(0.75),
            "{d:?}"
        );
    }
}

#[test]
fn tls_is_used_exactly_when_the_url_asks_for_it() {
    let node = NodeName::new("pi-1").unwrap();
    let tls = MqttTls {
        ca_pem: b"junk".to_vec(),
        cert_pem: Vec::new(),
        key_pem: Vec::new(),
    };
    assert!(matches!(
        mqtt_options("mqtts://b:8883", &node, None, Duration::from_secs(10)),
        Err(BusError::TlsMissing(_))
    ));
    assert!(matches!(
        mqtt_options("mqtt://b:1883", &node, Some(&tls), Duration::from_secs(10)),
        Err(BusError::TlsUnused(_))
    ));
    // Bad material fails here, at start, not on every reconnect.
    assert!(matches!(
        mqtt_options("mqtts://b", &node, Some(&tls), Duration::from_secs(10)),
        Err(BusError::Tls(_))
    ));
    let mut plain = mqtt_options("mqtt://b", &node, None, Duration::from_secs(10)).unwrap();
    assert!(matches!(plain.transport(), Transport::Tcp));
    // No front on a plain listener: no liveness username (it would be a login there).
    ask_tcp_liveness(&mut plain, Some(Duration::from_secs(20)));
    assert!(plain.credentials().is_none());
}

#[test]
fn the_front_is_asked_for_probes_in_the_username() {
    let node = NodeName::new("pi-1").unwrap();
    let tls = MqttTls {
        ca_pem: crate::mqtt_tls::fixtures::CA.as_bytes().to_vec(),
        cert_pem: crate::mqtt_tls::fixtures::NODE_CERT.as_bytes().to_vec(),
        key_pem: crate::mqtt_tls::fixtures::NODE_KEY.as_bytes().to_vec(),
    };
    let opts = || mqtt_options("mqtts://b", &node, Some(&tls), Duration::from_secs(120)).unwrap();
    let mut front = opts();
    ask_tcp_liveness(&mut front, Some(Duration::from_secs(20)));
    let login = front.credentials().unwrap();
    assert_eq!(
        baton_proto::broker::parse_tcp_liveness(&login.username),
        Some(20)
    );
    assert_eq!(login.password, "");
    let mut metered = opts();
    ask_tcp_liveness(&mut metered, None);
    assert!(metered.credentials().is_none());
}

#[test]
fn urls() {
    assert_eq!(
        parse_url("mqtt://10.0.0.1:1884").unwrap(),
        ("10.0.0.1".into(), 1884)
    );
    assert_eq!(
        parse_url("broker.lan").unwrap(),
        ("broker.lan".into(), 1883)
    );
    assert_eq!(parse_url("tcp://[::1]:1883").unwrap(), ("::1".into(), 1883));
    assert_eq!(parse_url("mqtts://b").unwrap(), ("b".into(), 8883));
    for bad in ["", "mqtt://", "mqtt://h:x", "mqtt://h:1/x", ":1883"] {
        assert!(parse_url(bad).is_err(), "{bad:?}");
    }
}

/// Tasks publish concurrently (the node loop, log and exec sessions): whatever the
/// interleaving, messages are queued in the order they were numbered, or the
/// coordinator would refuse the one that arrives after a higher seq as a replay.
#[test]
fn concurrent_publishes_are_queued_in_seq_order() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = baton_proto::sign::SigningKey::from_bytes(&[1; 32]);
    let (tx, rx) = flume::unbounded();
    let mut bus = offline_bus(Some(enrolled(dir.path(), &coordinator)));
    bus.client = AsyncClient::from_senders(tx);
    bus.connected.store(true, Ordering::SeqCst);
    let per_thread = 500;
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..per_thread {
                    bus.publish(Body::StatusRequest).unwrap();
                }
            });
        }
    });
    let seqs: Vec<u64> = rx
        .drain()
        .map(|r| match r {
            rumqttc::Request::Publish(p) => Envelope::decode(&p.payload).unwrap().seq,
            other => panic!("not a publish: {other:?}"),
        })
        .collect();
    assert_eq!(seqs.len(), 4 * per_thread);
    let out_of_order = seqs.windows(2).filter(|w| w[1] <= w[0]).count();
    assert_eq!(out_of_order, 0, "messages queued out of seq order");
}

/// A broker that answers one CONNECT with a CONNACK and holds the connection until told
/// to drop it; it reports the client id of the CONNECT it got.
async fn one_connection_broker() -> (
    String,
    tokio::sync::oneshot::Receiver<Vec<u8>>,
    tokio::sync::oneshot::Sender<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("mqtt://{}", l.local_addr().unwrap());
    let (got, got_rx) = tokio::sync::oneshot::channel();
    let (drop_tx, drop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        s.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
        let _ = got.send(buf[..n].to_vec());
        let _ = drop_rx.await;
    });
    (url, got_rx, drop_tx)
}

/// A broker list: a dead first entry is passed over, and a lost connection moves on to
/// the next broker, not back to the one that went away.
#[tokio::test]
async fn a_broker_list_skips_the_dead_and_fails_over_to_the_next() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("mqtt://{}", dead.local_addr().unwrap());
    drop(dead);
    let (b, b_got, b_drop) = one_connection_broker().await;
    let (c, c_got, _c_hold) = one_connection_broker().await;
    let node = NodeName::new("pi-1").unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let bus = Bus::start(&format!("{dead_url}, {b},{c}"), node, tx).unwrap();
    async fn next(rx: &mut mpsc::Receiver<BusEvent>) -> BusEvent {
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv());
        ev.await.expect("no bus event").unwrap()
    }
    assert!(matches!(next(&mut rx).await, BusEvent::Connected));
    let connect = b_got.await.unwrap();
    assert!(
        connect.windows(16).any(|w| w == b"baton-agent-pi-1"),
        "the second entry got the CONNECT"
    );
    assert!(bus.is_connected());
    drop(b_drop);
    assert!(matches!(next(&mut rx).await, BusEvent::Disconnected));
    assert!(matches!(next(&mut rx).await, BusEvent::Connected));
    assert!(c_got.await.is_ok(), "the third entry took over");
    // A bad entry is refused by position, before anything connects.
    let (tx, _rx) = mpsc::channel(1);
    let err = Bus::start("mqtt://a,,mqtt://b", NodeName::new("pi-1").unwrap(), tx)
        .err()
        .unwrap();
    assert!(err.to_string().contains("entry 2 of 3: empty"), "{err}");
}

/// A broker slow to answer CONNECT (NATS while JetStream moves its leaders) is waited for
/// rather than given up on at rumqttc's default 5 s: a client that gave up would be
/// connected there all the same, and that broker would then publish its last will while
/// it is connected elsewhere (see [`baton_proto::broker::CONNECT_TIMEOUT_SECS`]).
#[tokio::test]
async fn a_broker_slow_to_answer_connect_is_waited_for() {
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("mqtt://{}", l.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            tokio::time::sleep(Duration::from_secs(6)).await;
            let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
            held.push(s);
        }
    });
    let (tx, mut rx) = mpsc::channel(16);
    let _bus = Bus::start(&url, NodeName::new("pi-1").unwrap(), tx).unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(15), rx.recv()).await;
    assert!(matches!(ev, Ok(Some(BusEvent::Connected))), "{ev:?}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "a connect was given up on"
    );
}
