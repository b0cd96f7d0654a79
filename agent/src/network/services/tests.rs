use std::net::Ipv4Addr;

use baton_proto::{
    BString, BVec, Protocol, ServiceEndpoint, ServiceEntry, ServicePortEntry, ServiceTable,
};

use crate::network::{NetConfig, Network};

fn net() -> Network {
    Network::new(NetConfig::derive("n", "/s".into(), Some("10.42.3.0/24")).unwrap())
}

fn ep(last: u8, ports: &[u16]) -> ServiceEndpoint {
    ServiceEndpoint {
        ip: Ipv4Addr::new(10, 42, 3, last),
        target_ports: BVec::from_vec(ports.to_vec()).unwrap(),
    }
}

fn service(name: &str, ports: Vec<ServicePortEntry>, eps: Vec<ServiceEndpoint>) -> ServiceEntry {
    ServiceEntry {
        name: BString::new(name).unwrap(),
        vip: Ipv4Addr::new(10, 43, 0, 10),
        load_balancer: false,
        affinity_secs: 0,
        ports: BVec::from_vec(ports).unwrap(),
        endpoints: BVec::from_vec(eps).unwrap(),
    }
}

fn port(port: u16, protocol: Protocol, node_port: Option<u16>) -> ServicePortEntry {
    ServicePortEntry {
        port,
        protocol,
        node_port,
        name: None,
    }
}

fn table(services: Vec<ServiceEntry>) -> ServiceTable {
    ServiceTable::new(BVec::from_vec(services).unwrap(), BVec::new()).unwrap()
}

/// The script with chain names replaced by readable ones (`P0`, `E0`, ... in the order
/// the rules first name them), so the expectation reads like kube-proxy's rules.
fn readable(net: &Network, script: &str) -> String {
    let (p, e) = (net.service_port_prefix(), net.endpoint_prefix());
    let mut out = script
        .replace(&net.service_chain(), "SVC")
        .replace(&net.service_reject_chain(), "SVR")
        .replace(&net.masq_chain(), "MQ");
    for (prefix, letter) in [(p, 'P'), (e, 'E')] {
        let mut n = 0;
        loop {
            let rules: String = out
                .lines()
                .filter(|l| l.starts_with("-A"))
                .collect::<Vec<_>>()
                .join("\n");
            let Some(at) = rules.find(&prefix) else {
                break;
            };
            let name = rules[at..at + prefix.len() + 12].to_owned();
            out = out.replace(&name, &format!("{letter}{n}"));
            n += 1;
        }
    }
    out
}

#[test]
fn endpoints_are_chosen_at_random_with_hairpin_masquerade() {
    let net = net();
    let t = table(vec![service(
        "web",
        vec![port(80, Protocol::Tcp, None)],
        vec![ep(2, &[8080]), ep(3, &[8080]), ep(4, &[8080])],
    )]);
    let want =
        "*nat\n:E0 - [0:0]\n:E1 - [0:0]\n:E2 - [0:0]\n:MQ - [0:0]\n:P0 - [0:0]\n:SVC - [0:0]\n\
        -A MQ -j MASQUERADE\n\
        -A SVC -d 10.43.0.10/32 -p tcp -m tcp --dport 80 -j P0\n\
        -A P0 -m statistic --mode random --probability 0.3333333333 -j E0\n\
        -A E0 -s 10.42.3.2/32 -j MARK --set-xmark 0x2000/0x2000\n\
        -A E0 -s 127.0.0.0/8 -j MARK --set-xmark 0x2000/0x2000\n\
        -A E0 -p tcp -m tcp -j DNAT --to-destination 10.42.3.2:8080\n\
        -A P0 -m statistic --mode random --probability 0.5000000000 -j E1\n\
        -A E1 -s 10.42.3.3/32 -j MARK --set-xmark 0x2000/0x2000\n\
        -A E1 -s 127.0.0.0/8 -j MARK --set-xmark 0x2000/0x2000\n\
        -A E1 -p tcp -m tcp -j DNAT --to-destination 10.42.3.3:8080\n\
        -A P0 -j E2\n\
        -A E2 -s 10.42.3.4/32 -j MARK --set-xmark 0x2000/0x2000\n\
        -A E2 -s 127.0.0.0/8 -j MARK --set-xmark 0x2000/0x2000\n\
        -A E2 -p tcp -m tcp -j DNAT --to-destination 10.42.3.4:8080\n\
        COMMIT\n*filter\n:SVR - [0:0]\nCOMMIT\n";
    let got = net.service_script(&t, None, &[]);
    // Declarations sort by name; compare rules in order and declarations as a set.
    let (got_r, want_r) = (readable(&net, &got), want.to_owned());
    let decls = |s: &str| {
        let mut d: Vec<String> = s
            .lines()
            .filter(|l| l.starts_with(':'))
            .map(str::to_owned)
            .collect();
        d.sort();
        d
    };
    let rules = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.starts_with(':'))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(rules(&got_r), rules(&want_r), "{got}");
    assert_eq!(decls(&got_r).len(), decls(&want_r).len(), "{got}");
}

#[test]
fn client_ip_affinity_uses_recent_lists_per_endpoint() {
    let net = net();
    let mut s = service(
        "web",
        vec![port(80, Protocol::Tcp, None)],
        vec![ep(2, &[8080]), ep(3, &[8080])],
    );
    s.affinity_secs = 600;
    let got = readable(&net, &net.service_script(&table(vec![s]), None, &[]));
    for rule in [
        "-A P0 -m recent --name E0 --mask 255.255.255.255 --rsource --rcheck --seconds 600 --reap -j E0",
        "-A P0 -m recent --name E1 --mask 255.255.255.255 --rsource --rcheck --seconds 600 --reap -j E1",
        "-A E0 -p tcp -m recent --name E0 --mask 255.255.255.255 --rsource --set -m tcp -j DNAT --to-destination 10.42.3.2:8080",
    ] {
        assert!(got.contains(&format!("{rule}\n")), "{rule} missing from\n{got}");
    }
    // The affinity checks come before the random choice.
    let check = got.find("--rcheck").unwrap();
    assert!(check < got.find("statistic").unwrap(), "{got}");
}

#[test]
fn a_port_without_endpoints_is_rejected_not_dnatted() {
    let net = net();
    let s = service(
        "db",
        vec![
            port(5432, Protocol::Tcp, Some(30432)),
            port(53, Protocol::Udp, None),
        ],
        // The pod lacks the named port of the second: it serves only the first.
        vec![ep(2, &[5432, 0])],
    );
    let got = readable(&net, &net.service_script(&table(vec![s]), None, &[]));
    assert!(got.contains(
        "-A SVR -d 10.43.0.10/32 -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable\n"
    ), "{got}");
    assert!(!got.contains("--dport 53 -j P"), "{got}");
    let empty = service("none", vec![port(80, Protocol::Tcp, Some(30080))], vec![]);
    let got = readable(&net, &net.service_script(&table(vec![empty]), None, &[]));
    assert_eq!(
        got,
        "*nat\n:MQ - [0:0]\n:SVC - [0:0]\n-A MQ -j MASQUERADE\nCOMMIT\n*filter\n:SVR - [0:0]\n\
         -A SVR -d 10.43.0.10/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset\n\
         -A SVR -p tcp -m tcp --dport 30080 -m addrtype --dst-type LOCAL -j REJECT --reject-with tcp-reset\n\
         COMMIT\n"
    );
}

#[test]
fn node_ports_and_load_balancers_are_masqueraded_after_the_cluster_ips() {
    let net = net();
    let mut lb = service(
        "lb",
        vec![port(80, Protocol::Tcp, Some(30080))],
        vec![ep(2, &[8080])],
    );
    lb.load_balancer = true;
    let mut other = service("b", vec![port(81, Protocol::Tcp, None)], vec![ep(3, &[81])]);
    other.vip = Ipv4Addr::new(10, 43, 0, 11);
    let addr = Some(Ipv4Addr::new(192, 168, 1, 10));
    let got = readable(
        &net,
        &net.service_script(&table(vec![lb, other]), addr, &[]),
    );
    let svc: Vec<&str> = got.lines().filter(|l| l.starts_with("-A SVC")).collect();
    assert_eq!(
        svc,
        [
            "-A SVC -d 10.43.0.10/32 -p tcp -m tcp --dport 80 -j P0",
            "-A SVC -d 192.168.1.10/32 -p tcp -m tcp --dport 80 -j MARK --set-xmark 0x2000/0x2000",
            "-A SVC -d 192.168.1.10/32 -p tcp -m tcp --dport 80 -j P0",
            "-A SVC -d 10.43.0.11/32 -p tcp -m tcp --dport 81 -j P1",
            "-A SVC -p tcp -m tcp --dport 30080 -m addrtype --dst-type LOCAL -j MARK --set-xmark 0x2000/0x2000",
            "-A SVC -p tcp -m tcp --dport 30080 -m addrtype --dst-type LOCAL -j P0",
        ],
        "{got}"
    );
    // Without a node address a LoadBalancer is served on its NodePort only.
    let lb2 = {
        let mut s = service(
            "lb",
            vec![port(80, Protocol::Tcp, Some(30080))],
            vec![ep(2, &[8080])],
        );
        s.load_balancer = true;
        s
    };
    let got = net.service_script(&table(vec![lb2.clone()]), None, &[]);
    assert!(!got.contains("192.168"), "{got}");

    // When only labelled nodes serve LoadBalancers, the others keep the ClusterIP and the
    // NodePort but do not answer on their own address.
    let only = |addrs: Vec<Ipv4Addr>| {
        table(vec![lb2.clone()])
            .with_lb_nodes(Some(BVec::from_vec(addrs).unwrap()))
            .unwrap()
    };
    let elsewhere = net.service_script(&only(vec![Ipv4Addr::new(192, 168, 1, 11)]), addr, &[]);
    assert!(!elsewhere.contains("-d 192.168.1.10/32"), "{elsewhere}");
    assert!(elsewhere.contains("--dport 30080"), "{elsewhere}");
    let here = net.service_script(
        &only(vec![
            Ipv4Addr::new(192, 168, 1, 11),
            Ipv4Addr::new(192, 168, 1, 10),
        ]),
        addr,
        &[],
    );
    assert!(
        here.contains("-d 192.168.1.10/32 -p tcp -m tcp --dport 80"),
        "{here}"
    );
}

#[test]
fn chains_of_services_gone_are_deleted_in_the_same_commit() {
    let net = net();
    let old = net.service_script(
        &table(vec![service(
            "old",
            vec![port(80, Protocol::Tcp, None)],
            vec![ep(9, &[80])],
        )]),
        None,
        &[],
    );
    let existing: Vec<String> = old
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .map(|l| l.trim_end_matches(" - [0:0]").to_owned())
        .filter(|c| {
            c.starts_with(&net.service_port_prefix()) || c.starts_with(&net.endpoint_prefix())
        })
        .collect();
    assert_eq!(existing.len(), 2);
    let got = net.service_script(&table(vec![]), None, &existing);
    for c in &existing {
        assert!(got.contains(&format!(":{c} - [0:0]\n")), "{got}");
        assert!(got.contains(&format!("-X {c}\n")), "{got}");
    }
    // An empty table still declares (hence empties) the main chains.
    assert!(got.contains(&format!(":{} - [0:0]\n", net.service_chain())));
    // A chain still in use is kept.
    let same = net.service_script(
        &table(vec![service(
            "old",
            vec![port(80, Protocol::Tcp, None)],
            vec![ep(9, &[80])],
        )]),
        None,
        &existing,
    );
    assert!(!same.contains("-X "), "{same}");
}

#[test]
fn pods_on_other_nodes_are_reached_unmasqueraded() {
    let net = net();
    let route = |cidr: &str, via: [u8; 4]| baton_proto::NodeRoute {
        cidr: BString::new(cidr).unwrap(),
        via: Ipv4Addr::from(via),
    };
    let routes = vec![
        route("10.42.1.0/24", [192, 168, 1, 11]),
        // This node's own range and address: no route, no exception.
        route("10.42.3.0/24", [192, 168, 1, 13]),
        route("10.42.2.0/24", [192, 168, 1, 12]),
        route("not a cidr", [192, 168, 1, 14]),
        // A node claiming more than a pod range, or this node's, is not routed to.
        route("0.0.0.0/0", [192, 168, 1, 15]),
        route("10.0.0.0/8", [192, 168, 1, 16]),
        route("10.42.3.128/25", [192, 168, 1, 17]),
        route("192.168.1.0/24", [192, 168, 1, 18]),
    ];
    let t = ServiceTable::new(BVec::new(), BVec::from_vec(routes).unwrap()).unwrap();
    let own = Some(Ipv4Addr::new(192, 168, 1, 13));
    let remote: Vec<String> = net
        .remote_routes(&t.routes, own)
        .iter()
        .map(|(c, v)| format!("{c} via {v}"))
        .collect();
    assert_eq!(
        remote,
        [
            "10.42.1.0/24 via 192.168.1.11",
            "10.42.2.0/24 via 192.168.1.12"
        ]
    );
    let got = readable(&net, &net.service_script(&t, own, &[]));
    let mq: Vec<&str> = got.lines().filter(|l| l.starts_with("-A MQ")).collect();
    assert_eq!(
        mq,
        [
            "-A MQ -d 10.42.1.0/24 -j RETURN",
            "-A MQ -d 10.42.2.0/24 -j RETURN",
            "-A MQ -j MASQUERADE"
        ]
    );
}

/// A headless Service (0.0.0.0) is only a DNS name: no rule at all, not even a reject.
#[test]
fn a_headless_service_gets_no_rules() {
    let net = net();
    let mut s = service(
        "db",
        vec![port(5432, Protocol::Tcp, None)],
        vec![ep(2, &[5432])],
    );
    s.vip = Ipv4Addr::UNSPECIFIED;
    let empty = net.service_script(&table(vec![]), None, &[]);
    assert_eq!(
        net.service_script(&table(vec![s.clone()]), None, &[]),
        empty
    );
    s.endpoints = BVec::new();
    assert_eq!(net.service_script(&table(vec![s]), None, &[]), empty);
}
