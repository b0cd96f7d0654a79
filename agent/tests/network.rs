//! Real pod networking (root): bridge, netns + veth, addresses, pod-to-pod traffic, hostPort
//! DNAT and host network. Each test uses its own node name and CIDR, so tests can run in
//! parallel, and tears its node down on drop.

mod rt_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use baton_agent::network::{HostPortRule, NetConfig, NetError, Network, PortReservation, L4};
use baton_agent::runtime::{ExitReason, Runtime};
use rt_support::{poll, Fixture};

/// A node network that is torn down (pods, chains, bridge) on drop.
struct NodeNet {
    net: Network,
    _state: tempfile::TempDir,
}

impl NodeNet {
    fn new(test: &str, cidr: &str) -> Self {
        let state = tempfile::tempdir().unwrap();
        let node = format!("nt-{test}-{}", std::process::id());
        let cfg = NetConfig::derive(&node, state.path().into(), Some(cidr)).unwrap();
        Self {
            net: Network::new(cfg),
            _state: state,
        }
    }
}

impl Drop for NodeNet {
    fn drop(&mut self) {
        if let Err(e) = self.net.teardown_node() {
            eprintln!("teardown failed: {e}");
        }
    }
}

fn link_exists(ns: Option<&str>, name: &str) -> bool {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["link", "show", "dev", name])
        .output()
        .unwrap()
        .status
        .success()
}

fn iptables_has(table: &str, chain: &str) -> bool {
    Command::new("iptables")
        .args(["-w", "-t", table, "-S", chain])
        .output()
        .unwrap()
        .status
        .success()
}

/// `iptables -S chain` of `table`.
fn rules(table: &str, chain: &str) -> String {
    let out = Command::new("iptables")
        .args(["-w", "-t", table, "-S", chain])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP port nothing on the node listens on (as far as the kernel says now).
fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.0 GET; `None` while nothing answers yet.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    (!body.is_empty()).then_some(body)
}

#[test]
fn setup_node_is_idempotent_and_teardown_removes_everything() {
    let node = NodeNet::new("setup", "10.231.1.0/24");
    let net = &node.net;
    net.setup_node().unwrap();
    net.setup_node().unwrap();
    let br = &net.config().bridge;
    assert!(link_exists(None, br));
    let addrs = Command::new("ip")
        .args(["-o", "addr", "show", "dev", br])
        .output()
        .unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert_eq!(addrs.matches("inet ").count(), 1, "{addrs}");
    assert!(addrs.contains("10.231.1.1/24"), "{addrs}");
    assert_eq!(net.gateway(), Ipv4Addr::new(10, 231, 1, 1));
    let nat = Command::new("iptables")
        .args(["-w", "-t", "nat", "-S", &net.nat_chain()])
        .output()
        .unwrap();
    let nat = String::from_utf8_lossy(&nat.stdout);
    // The marked hostPort and Service packets (from loopback, hairpin), and egress of the
    // pod CIDR through the chain that leaves other nodes' pods out (masquerading all until
    // a Service table says which those are).
    assert_eq!(nat.matches("MASQUERADE").count(), 1, "{nat}");
    let mq = net.masq_chain();
    assert!(nat.contains(&format!("! -o {br} -j {mq}")), "{nat}");
    assert_eq!(
        rules("nat", &mq)
            .lines()
            .filter(|l| l.starts_with("-A"))
            .collect::<Vec<_>>(),
        [format!("-A {mq} -j MASQUERADE")]
    );
    // The Service proxy's chains, each jumped to once.
    let (svc, svr) = (net.service_chain(), net.service_reject_chain());
    for parent in ["PREROUTING", "OUTPUT"] {
        let jump = format!("-A {parent} -j {svc}");
        assert_eq!(rules("nat", parent).matches(&jump).count(), 1, "{jump}");
    }
    for parent in ["INPUT", "OUTPUT", "FORWARD"] {
        let jump = format!("-A {parent} -j {svr}");
        assert_eq!(rules("filter", parent).matches(&jump).count(), 1, "{jump}");
    }
    // Before the node's forward chain accepts the bridge's packets.
    let fwd = rules("filter", "FORWARD");
    let at = |chain: &str| {
        fwd.lines()
            .position(|l| l.ends_with(&format!("-j {chain}")))
    };
    assert!(at(&svr) < at(&net.forward_chain()), "{fwd}");
    let post = Command::new("iptables")
        .args(["-w", "-t", "nat", "-S", "POSTROUTING"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&post.stdout)
            .matches(&net.nat_chain())
            .count(),
        1
    );
    assert!(iptables_has("filter", &net.forward_chain()));
    let hp = net.host_port_chain();
    assert!(iptables_has("nat", &hp));
    for parent in ["PREROUTING", "OUTPUT"] {
        let jump = format!("-A {parent} -m addrtype --dst-type LOCAL -j {hp}");
        assert_eq!(rules("nat", parent).matches(&jump).count(), 1, "{jump}");
    }
    assert_eq!(
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{br}/route_localnet"))
            .unwrap()
            .trim(),
        "1"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );

    let pod = net.create_pod("p1").unwrap();
    net.teardown_node().unwrap();
    assert!(!link_exists(None, br));
    assert!(!iptables_has("nat", &net.nat_chain()));
    assert!(!iptables_has("filter", &net.forward_chain()));
    assert!(!iptables_has("nat", &hp));
    for parent in ["PREROUTING", "OUTPUT"] {
        assert!(
            !rules("nat", parent).contains(&hp),
            "{parent} still jumps to {hp}"
        );
        assert!(!rules("nat", parent).contains(&svc));
    }
    for parent in ["INPUT", "OUTPUT", "FORWARD"] {
        assert!(!rules("filter", parent).contains(&svr));
    }
    assert!(!iptables_has("nat", &svc) && !iptables_has("filter", &svr));
    assert!(!iptables_has("nat", &mq));
    assert!(!pod.netns_path.exists());
    assert!(net.allocations().unwrap().is_empty());
}

#[test]
fn pods_reach_each_other_the_agent_reaches_pods_and_host_ports_forward() {
    let node = NodeNet::new("pods", "10.231.2.0/24");
    let net = &node.net;
    net.setup_node().unwrap();
    let a = net.create_pod("pod-a").unwrap();
    assert_eq!(
        net.create_pod("pod-a").unwrap(),
        a,
        "create_pod must be idempotent"
    );
    let b = net.create_pod("pod-b").unwrap();
    assert_ne!(a.ip, b.ip);
    assert_ne!(a.netns_path, b.netns_path);
    assert!(a.netns_path.exists());
    let a_ns = a
        .netns_path
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(link_exists(Some(&a_ns), "eth0"));

    let mut fx = Fixture::new("netpods");
    let mut httpd = fx.spec("httpd", &["httpd", "-f", "-p", "8080", "-h", "/www"]);
    httpd.netns = Some(a.netns_path.clone());
    fx.runtime.run(&httpd).unwrap();

    // The agent's side reaches the pod's address.
    let pod_addr = SocketAddr::from((a.ip, 8080));
    let body = poll("httpd in pod a", || http_get(pod_addr, "/index.html"));
    assert!(body.contains("hello from baton"), "{body}");

    // Another pod reaches it over the bridge.
    let url = format!("http://{}:8080/index.html", a.ip);
    let mut client = fx.spec("client", &["wget", "-q", "-O", "-", &url]);
    client.netns = Some(b.netns_path.clone());
    let (reason, log) = fx.run_to_end(&client);
    assert_eq!(reason, ExitReason::Exited(0), "{log}");
    assert!(log.contains("hello from baton"), "{log}");

    // hostPort: DNAT from the node's addresses to the pod, 127.0.0.1 included.
    let port = free_port();
    let rule = HostPortRule {
        host_port: port,
        proto: L4::Tcp,
        pod_ip: a.ip,
        container_port: 8080,
    };
    net.sync_host_ports(std::slice::from_ref(&rule)).unwrap();
    let hp = rules("nat", &net.host_port_chain());
    assert_eq!(
        hp.matches(&format!(
            "--dport {port} -j DNAT --to-destination {}:8080",
            a.ip
        ))
        .count(),
        1,
        "{hp}"
    );
    // The same set again changes nothing (an agent restart writes what it adopted).
    net.sync_host_ports(std::slice::from_ref(&rule)).unwrap();
    assert_eq!(rules("nat", &net.host_port_chain()), hp);
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    let body = poll("GET on 127.0.0.1:<hostPort>", || {
        http_get(local, "/index.html")
    });
    assert!(body.contains("hello from baton"), "{body}");
    // From a pod, and from the pod itself (hairpin), through the node's address.
    for (who, ns) in [("b", &b.netns_path), ("a", &a.netns_path)] {
        let url = format!("http://{}:{port}/index.html", net.gateway());
        let mut client = fx.spec(&format!("hp-{who}"), &["wget", "-q", "-O", "-", &url]);
        client.netns = Some(ns.clone());
        let (reason, log) = fx.run_to_end(&client);
        assert_eq!(reason, ExitReason::Exited(0), "pod {who}: {log}");
        assert!(log.contains("hello from baton"), "pod {who}: {log}");
    }
    // The reservation holds the port against any other listener.
    let held = PortReservation::take(port, L4::Tcp).unwrap();
    assert!(matches!(
        PortReservation::take(port, L4::Tcp),
        Err(NetError::PortTaken { port: p, .. }) if p == port
    ));
    drop(held);
    // The reservation never was what answered: the port answers without it, and stops
    // answering when the rules go.
    assert!(http_get(local, "/index.html").is_some());
    net.sync_host_ports(&[]).unwrap();
    assert!(!rules("nat", &net.host_port_chain()).contains("DNAT"));
    poll("hostPort to stop answering", || {
        TcpStream::connect_timeout(&local, Duration::from_secs(1))
            .is_err()
            .then_some(())
    });

    fx.runtime.delete(&httpd.id).unwrap();
    net.delete_pod("pod-a").unwrap();
    net.delete_pod("pod-a").unwrap();
    assert!(!a.netns_path.exists());
    assert!(!net
        .allocations()
        .unwrap()
        .iter()
        .any(|(_, uid)| uid == "pod-a"));
    // Addresses go round robin: neither the one in use nor the one just freed (the node
    // may still map it to the deleted pod's MAC) is handed out next.
    let c = net.create_pod("pod-c").unwrap();
    assert_ne!(c.ip, a.ip);
    assert_ne!(c.ip, b.ip);
}

#[test]
fn addresses_survive_an_agent_restart() {
    let node = NodeNet::new("restart", "10.231.3.0/24");
    node.net.setup_node().unwrap();
    let a = node.net.create_pod("a").unwrap();
    let again = Network::new(node.net.config().clone());
    assert_eq!(again.create_pod("a").unwrap(), a);
    let b = again.create_pod("b").unwrap();
    assert_ne!(b.ip, a.ip);
}

#[test]
fn host_network_container_sees_the_agents_interfaces() {
    let node = NodeNet::new("hostnet", "10.231.4.0/24");
    node.net.setup_node().unwrap();
    let mut fx = Fixture::new("hostnet");
    let spec = fx.spec("c", &["cat", "/proc/net/dev"]);
    assert!(spec.netns.is_none());
    let (reason, log) = fx.run_to_end(&spec);
    assert_eq!(reason, ExitReason::Exited(0), "{log}");
    assert!(
        log.contains(&format!("{}:", node.net.config().bridge)),
        "{log}"
    );

    // And a pod container does not.
    let pod = node.net.create_pod("p").unwrap();
    let mut spec = fx.spec("d", &["cat", "/proc/net/dev"]);
    spec.netns = Some(pod.netns_path.clone());
    let (reason, log) = fx.run_to_end(&spec);
    assert_eq!(reason, ExitReason::Exited(0), "{log}");
    assert!(!log.contains(&node.net.config().bridge), "{log}");
    assert!(log.contains("eth0:"), "{log}");
    assert!(Path::new(&pod.netns_path).exists());
}
