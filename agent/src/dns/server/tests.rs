use super::*;
use baton_proto::{BString, BVec, ServiceEntry};
use hickory_proto::op::Message;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::Name;

fn table(vip: Ipv4Addr) -> ServiceTable {
    let web = ServiceEntry {
        name: BString::new("web").unwrap(),
        vip,
        load_balancer: false,
        affinity_secs: 0,
        ports: BVec::new(),
        endpoints: BVec::new(),
    };
    ServiceTable::new(BVec::from_vec(vec![web]).unwrap(), BVec::new()).unwrap()
}

fn query(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(0x4242).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

fn now(r: Reply) -> Message {
    match r {
        Reply::Now(b) => Message::from_vec(&b).unwrap(),
        _ => panic!("not answered here"),
    }
}

#[test]
fn cluster_names_answered_and_others_relayed() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("resolv.conf");
    std::fs::write(&conf, "nameserver 192.0.2.1\n").unwrap();
    let (tx, rx) = watch::channel(table(Ipv4Addr::new(10, 43, 0, 9)));
    let r = Resolver::new(rx, &conf, "10.42.1.1".parse().unwrap());

    let m = now(r.answer(
        &query("web.default.svc.cluster.local.", RecordType::A),
        true,
    ));
    assert_eq!(m.id(), 0x4242);
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.authoritative() && m.recursion_desired());
    let ips: Vec<_> = m.answers().iter().filter_map(|a| a.data().as_a()).collect();
    assert_eq!(ips, [&A(Ipv4Addr::new(10, 43, 0, 9))]);
    // AAAA of a known name: empty NOERROR, not NXDOMAIN.
    let m = now(r.answer(
        &query("web.default.svc.cluster.local.", RecordType::AAAA),
        true,
    ));
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.answers().is_empty());
    let m = now(r.answer(
        &query("nope.default.svc.cluster.local.", RecordType::A),
        true,
    ));
    assert_eq!(m.response_code(), ResponseCode::NXDomain);

    // A changed table is what the next query sees.
    tx.send(table(Ipv4Addr::new(10, 43, 0, 10))).unwrap();
    let m = now(r.answer(
        &query("WEB.default.svc.cluster.local.", RecordType::A),
        true,
    ));
    let ips: Vec<_> = m.answers().iter().filter_map(|a| a.data().as_a()).collect();
    assert_eq!(ips, [&A(Ipv4Addr::new(10, 43, 0, 10))]);

    match r.answer(&query("example.com.", RecordType::A), true) {
        Reply::Relay { servfail } => {
            let m = Message::from_vec(&servfail).unwrap();
            assert_eq!(
                (m.id(), m.response_code()),
                (0x4242, ResponseCode::ServFail)
            );
        }
        _ => panic!("example.com is upstream's"),
    }
    assert!(matches!(r.answer(b"junk", true), Reply::Drop));
}

#[tokio::test]
async fn relayed_to_the_first_upstream_that_answers() {
    let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let at = up.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        let (n, peer) = up.recv_from(&mut buf).await.unwrap();
        let req = Message::from_vec(&buf[..n]).unwrap();
        let mut resp = Message::error_msg(req.id(), OpCode::Query, ResponseCode::NoError);
        resp.add_queries(req.queries().iter().cloned());
        up.send_to(&resp.to_vec().unwrap(), peer).await.unwrap();
    });
    // A silent one first: the next is asked after its timeout.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ups = [silent.local_addr().unwrap(), at];
    let q = query("example.com.", RecordType::A);
    let started = std::time::Instant::now();
    let got = relay_udp(&ups, &q).await.expect("an answer");
    assert_eq!(Message::from_vec(&got).unwrap().id(), 0x4242);
    assert!(started.elapsed() >= crate::dns::upstream::UPSTREAM_TIMEOUT);
    assert!(relay_udp(&ups[..1], &q).await.is_none());
}

/// A headless Service with more pod IPs than a 512-byte datagram holds: as many as fit,
/// and the TC bit, so the client asks again over TCP, where it gets them all.
#[test]
fn too_many_addresses_for_udp_are_truncated() {
    let eps: Vec<baton_proto::ServiceEndpoint> = (0..100u8)
        .map(|i| baton_proto::ServiceEndpoint {
            ip: Ipv4Addr::new(10, 42, 1, i),
            target_ports: BVec::new(),
        })
        .collect();
    let t = table(Ipv4Addr::UNSPECIFIED);
    let mut db = t.services[0].clone();
    db.endpoints = BVec::from_vec(eps).unwrap();
    let m = truncated_over_udp(db, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(m.answers().len(), 100);
}

/// A named port's SRV record: the port and the Service's name, with its address in the
/// additional section; an A query of the SRV name is an empty NOERROR.
#[test]
fn srv_records_of_named_ports() {
    let mut t = table(Ipv4Addr::new(10, 43, 0, 9));
    let mut web = t.services[0].clone();
    web.ports = BVec::from_vec(vec![baton_proto::ServicePortEntry {
        port: 8080,
        protocol: baton_proto::Protocol::Tcp,
        node_port: None,
        name: Some(BString::new("http").unwrap()),
    }])
    .unwrap();
    t = ServiceTable::new(BVec::from_vec(vec![web]).unwrap(), BVec::new()).unwrap();
    let (_tx, rx) = watch::channel(t);
    let r = Resolver::new(rx, Path::new("/nonexistent"), "10.42.1.1".parse().unwrap());
    let name = "_http._tcp.web.default.svc.cluster.local.";
    let m = now(r.answer(&query(name, RecordType::SRV), true));
    assert_eq!(m.response_code(), ResponseCode::NoError);
    let srv: Vec<_> = m
        .answers()
        .iter()
        .filter_map(|a| a.data().as_srv())
        .collect();
    assert_eq!(srv.len(), 1);
    assert_eq!(
        (srv[0].priority(), srv[0].weight(), srv[0].port()),
        (0, 100, 8080)
    );
    assert_eq!(srv[0].target().to_ascii(), "web.default.svc.cluster.local.");
    let extra: Vec<_> = m.additionals().iter().collect();
    assert_eq!(extra.len(), 1);
    assert_eq!(extra[0].name().to_ascii(), "web.default.svc.cluster.local.");
    assert_eq!(
        extra[0].data().as_a(),
        Some(&A(Ipv4Addr::new(10, 43, 0, 9)))
    );
    let m = now(r.answer(&query(name, RecordType::A), true));
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.answers().is_empty());
}

/// A headless Service with more pods than a 512-byte datagram holds SRV records for:
/// as many as fit and TC over UDP, all over TCP.
#[test]
fn too_many_srv_records_for_udp_are_truncated() {
    let eps: Vec<baton_proto::ServiceEndpoint> = (0..60u8)
        .map(|i| baton_proto::ServiceEndpoint {
            ip: Ipv4Addr::new(10, 42, 1, i),
            target_ports: BVec::from_vec(vec![5432]).unwrap(),
        })
        .collect();
    let mut db = table(Ipv4Addr::UNSPECIFIED).services[0].clone();
    db.endpoints = BVec::from_vec(eps).unwrap();
    db.ports = BVec::from_vec(vec![baton_proto::ServicePortEntry {
        port: 5432,
        protocol: baton_proto::Protocol::Tcp,
        node_port: None,
        name: Some(BString::new("pg").unwrap()),
    }])
    .unwrap();
    let m = truncated_over_udp(
        db,
        "_pg._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(m.answers().len(), 60);
    assert_eq!(m.additionals().len(), 60);
    let srv = m.answers()[7].data().as_srv().unwrap();
    assert_eq!(srv.port(), 5432);
    assert_eq!(
        srv.target().to_ascii(),
        "10-42-1-7.web.default.svc.cluster.local."
    );
}

/// `name`'s answer from a resolver serving `svc` alone: over UDP cut to 512 bytes with TC
/// set and some answers kept; returned whole, as over TCP.
fn truncated_over_udp(svc: ServiceEntry, name: &str, rtype: RecordType) -> Message {
    let t = ServiceTable::new(BVec::from_vec(vec![svc]).unwrap(), BVec::new()).unwrap();
    let (_tx, rx) = watch::channel(t);
    let r = Resolver::new(rx, Path::new("/nonexistent"), "10.42.1.1".parse().unwrap());
    let q = query(name, rtype);
    let Reply::Now(b) = r.answer(&q, true) else {
        panic!("answered here")
    };
    assert!(b.len() <= 512, "{}", b.len());
    let m = Message::from_vec(&b).unwrap();
    assert!(m.truncated());
    assert!(!m.answers().is_empty());
    let m = now(r.answer(&q, false));
    assert!(!m.truncated());
    m
}
