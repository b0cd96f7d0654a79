//! Allocation (lowest free, kept on re-apply, collisions and exhaustion refused) and the
//! endpoints decider (readiness, selector, node, named targetPort, terminating pods).

use super::*;
use crate::model::api::{ContainerStatus, Pod, PodPhase, ServicePort};

fn svc(name: &str, type_: api::ServiceType, ports: Vec<ServicePort>) -> api::Service {
    api::Service {
        api_version: "v1".into(),
        kind: "Service".into(),
        metadata: api::ObjectMeta {
            name: name.into(),
            ..Default::default()
        },
        spec: api::ServiceSpec {
            type_,
            ports,
            selector: [("app".to_string(), "web".to_string())].into(),
            allocate_load_balancer_node_ports: true,
            ..Default::default()
        },
        status: Default::default(),
    }
}

fn port(name: Option<&str>, port: u16, target: TargetPort) -> ServicePort {
    ServicePort {
        name: name.map(Into::into),
        protocol: Protocol::TCP,
        port,
        target_port: target,
        node_port: None,
    }
}

fn http() -> Vec<ServicePort> {
    vec![port(None, 80, TargetPort::Number(8080))]
}

fn cidr(s: &str) -> ServiceCidr {
    s.parse().unwrap()
}

#[test]
fn cidrs_parse_and_refuse() {
    assert_eq!(ServiceCidr::default().to_string(), "10.43.0.0/16");
    assert_eq!(cidr("10.43.7.9/16").to_string(), "10.43.0.0/16");
    for bad in ["10.43.0.0", "10.43.0.0/33", "nope/16", "fd00::/64"] {
        assert!(
            matches!(bad.parse::<ServiceCidr>(), Err(ServiceError::Cidr(_))),
            "{bad}"
        );
    }
    assert!(matches!(
        "10.0.0.0/31".parse::<ServiceCidr>(),
        Err(ServiceError::CidrTooSmall(_))
    ));
}

#[test]
fn cluster_ips_are_the_lowest_free_past_the_reserved_first() {
    let c = ServiceCidr::default();
    let a = allocate(
        svc("a", api::ServiceType::ClusterIP, http()),
        None,
        &Taken::default(),
        c,
    )
    .unwrap();
    assert_eq!(a.spec.cluster_ip, "10.43.0.2");
    let taken = Taken::of([&a], "");
    let b = allocate(
        svc("b", api::ServiceType::ClusterIP, http()),
        None,
        &taken,
        c,
    )
    .unwrap();
    assert_eq!(b.spec.cluster_ip, "10.43.0.3");
    // Re-applied without a clusterIP, a Service keeps the one it has.
    let again = allocate(
        svc("a", api::ServiceType::ClusterIP, http()),
        Some(&a),
        &Taken::of([&a, &b], "a"),
        c,
    )
    .unwrap();
    assert_eq!(again.spec.cluster_ip, "10.43.0.2");
    // ...even after the service CIDR changed.
    let moved = allocate(
        svc("a", api::ServiceType::ClusterIP, http()),
        Some(&a),
        &Taken::default(),
        cidr("10.96.0.0/12"),
    )
    .unwrap();
    assert_eq!(moved.spec.cluster_ip, "10.43.0.2");
    // A headless Service gets none.
    let mut h = svc("h", api::ServiceType::ClusterIP, vec![]);
    h.spec.cluster_ip = api::CLUSTER_IP_NONE.into();
    assert_eq!(
        allocate(h, None, &taken, c).unwrap().spec.cluster_ip,
        "None"
    );
}

#[test]
fn a_requested_cluster_ip_is_honoured_only_if_free_and_inside() {
    let c = ServiceCidr::default();
    let with = |ip: &str| {
        let mut s = svc("x", api::ServiceType::ClusterIP, http());
        s.spec.cluster_ip = ip.into();
        s
    };
    let a = allocate(with("10.43.9.9"), None, &Taken::default(), c).unwrap();
    assert_eq!(a.spec.cluster_ip, "10.43.9.9");
    let taken = Taken::of([&a], "");
    let other = |ip| {
        let mut s = with(ip);
        s.metadata.name = "y".into();
        allocate(s, None, &taken, c).unwrap_err().to_string()
    };
    assert_eq!(
        other("10.43.9.9"),
        "spec.clusterIP: 10.43.9.9 is already allocated to service \"x\""
    );
    assert!(other("10.44.0.5").contains("not in the service CIDR 10.43.0.0/16"));
    for reserved in ["10.43.0.0", "10.43.0.1", "10.43.255.255"] {
        assert!(other(reserved).contains("reserved"), "{reserved}");
    }
}

#[test]
fn a_tiny_cidr_runs_out_with_a_clear_error() {
    // A /30 has four addresses: network, the reserved first, one for a Service, broadcast.
    let c = cidr("10.0.0.0/30");
    let a = allocate(
        svc("a", api::ServiceType::ClusterIP, http()),
        None,
        &Taken::default(),
        c,
    )
    .unwrap();
    assert_eq!(a.spec.cluster_ip, "10.0.0.2");
    let err = allocate(
        svc("b", api::ServiceType::ClusterIP, http()),
        None,
        &Taken::of([&a], ""),
        c,
    )
    .unwrap_err();
    assert_eq!(err, ServiceError::IpsExhausted(c));
    assert!(err.to_string().contains("--service-cidr"), "{err}");
}

#[test]
fn node_ports_are_allocated_kept_and_never_shared() {
    let c = ServiceCidr::default();
    let two = vec![
        port(Some("http"), 80, TargetPort::Number(8080)),
        port(Some("admin"), 81, TargetPort::Number(8081)),
    ];
    let a = allocate(
        svc("a", api::ServiceType::NodePort, two.clone()),
        None,
        &Taken::default(),
        c,
    )
    .unwrap();
    let got: Vec<_> = a.spec.ports.iter().map(|p| p.node_port).collect();
    assert_eq!(got, [Some(30000), Some(30001)]);
    // ClusterIP Services carry none.
    let plain = allocate(
        svc("p", api::ServiceType::ClusterIP, http()),
        None,
        &Taken::default(),
        c,
    )
    .unwrap();
    assert_eq!(plain.spec.ports[0].node_port, None);
    // Re-applied with the ports reordered, each keeps its own by name.
    let reordered = vec![two[1].clone(), two[0].clone()];
    let again = allocate(
        svc("a", api::ServiceType::NodePort, reordered),
        Some(&a),
        &Taken::of([&a], "a"),
        c,
    )
    .unwrap();
    let got: Vec<_> = again.spec.ports.iter().map(|p| p.node_port).collect();
    assert_eq!(got, [Some(30001), Some(30000)]);
    // Another Service asking for a taken one is refused by path; UDP on the same number is
    // another port.
    let mut b = svc("b", api::ServiceType::NodePort, http());
    b.spec.ports[0].node_port = Some(30001);
    let err = allocate(b.clone(), None, &Taken::of([&a], ""), c).unwrap_err();
    assert_eq!(
        err.to_string(),
        "spec.ports[0].nodePort: provided port is already allocated to service \"a\""
    );
    b.spec.ports[0].protocol = Protocol::UDP;
    assert!(allocate(b, None, &Taken::of([&a], ""), c).is_ok());
    // Two ports of one Service asking for the same one.
    let mut d = svc("d", api::ServiceType::NodePort, two);
    d.spec.ports[0].node_port = Some(31000);
    d.spec.ports[1].node_port = Some(31000);
    assert!(allocate(d, None, &Taken::default(), c)
        .unwrap_err()
        .to_string()
        .starts_with("spec.ports[1].nodePort"));
    // A LoadBalancer gets them unless told not to.
    let mut lb = svc("lb", api::ServiceType::LoadBalancer, http());
    assert!(allocate(lb.clone(), None, &Taken::default(), c)
        .unwrap()
        .spec
        .ports[0]
        .node_port
        .is_some());
    lb.spec.allocate_load_balancer_node_ports = false;
    assert_eq!(
        allocate(lb, None, &Taken::default(), c).unwrap().spec.ports[0].node_port,
        None
    );
}

fn pod(name: &str, ip: &str, ready: bool) -> Pod {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: web}}}}\nspec:\n  \
         containers:\n  - name: main\n    image: busybox\n    ports: [{{name: http, containerPort: 8080}}]\n"
    );
    let Ok(mut objects) = crate::model::manifest::parse_manifests(&yaml) else {
        panic!("test pod parses");
    };
    let Some(api::Object::Pod(mut p)) = objects.pop() else {
        panic!("a pod");
    };
    p.spec.node_name = Some("pi-1".into());
    p.status.phase = PodPhase::Running;
    p.status.pod_ip = Some(ip.into());
    p.status.container_statuses = vec![ContainerStatus {
        name: "main".into(),
        ready,
        ..Default::default()
    }];
    p
}

fn ips(e: &api::Endpoints) -> Vec<String> {
    e.addresses_for(None)
}

#[test]
fn endpoints_are_the_ready_matching_pods_on_ready_nodes() {
    let s = svc("web", api::ServiceType::ClusterIP, http());
    let mut other = pod("db-1", "10.42.1.9", true);
    other.metadata.labels.insert("app".into(), "db".into());
    let mut terminating = pod("web-3", "10.42.1.4", true);
    terminating.metadata.deletion_timestamp = Some("2026-12-07T00:00:00Z".into());
    let mut elsewhere = pod("web-4", "10.42.2.4", true);
    elsewhere.spec.node_name = Some("pi-2".into());
    let mut no_ip = pod("web-5", "", true);
    no_ip.status.pod_ip = None;
    let pods = [
        pod("web-2", "10.42.1.3", true),
        pod("web-1", "10.42.1.2", true),
        pod("web-6", "10.42.1.6", false),
        other,
        terminating,
        elsewhere,
        no_ip,
    ];
    let e = endpoints(&s, &pods, |n| (n == "pi-1").then(|| range("10.42.1.0/24")));
    assert_eq!(ips(&e), ["10.42.1.2:8080", "10.42.1.3:8080"]);
    assert_eq!(e.subsets[0].addresses[0].node_name.as_deref(), Some("pi-1"));
    assert_eq!(e.subsets[0].addresses[0].pod, "web-1");
    // pi-2 Ready too: its pod joins.
    assert_eq!(ips(&endpoints(&s, &pods, any_range)).len(), 3);
    // No selector: no endpoints (they would be managed by hand in Kubernetes).
    let mut manual = s.clone();
    manual.spec.selector.clear();
    assert!(endpoints(&manual, &pods, any_range).subsets.is_empty());
}

#[test]
fn a_service_selects_only_pods_of_its_own_namespace() {
    let s = svc("web", api::ServiceType::ClusterIP, http());
    let mut elsewhere = pod("web-9", "10.42.1.9", true);
    elsewhere.metadata.name = api::qualify("team-b", "web-9");
    let pods = [pod("web-1", "10.42.1.2", true), elsewhere];
    assert_eq!(ips(&endpoints(&s, &pods, any_range)), ["10.42.1.2:8080"]);
    let mut in_b = s.clone();
    in_b.metadata.name = api::qualify("team-b", "web");
    assert_eq!(ips(&endpoints(&in_b, &pods, any_range)), ["10.42.1.9:8080"]);
}

fn range(s: &str) -> Ipv4Range {
    s.parse().unwrap()
}

/// Every node Ready, holding 10.42.0.0/16.
fn any_range(_: &str) -> Option<Ipv4Range> {
    Some(range("10.42.0.0/16"))
}

#[test]
fn a_pod_outside_its_nodes_range_or_on_a_node_holding_none_is_no_endpoint() {
    let s = svc("web", api::ServiceType::ClusterIP, http());
    let mut elsewhere = pod("web-2", "10.42.2.7", true);
    elsewhere.spec.node_name = Some("pi-2".into());
    // pi-1 claims an address of pi-2's range for its pod.
    let pods = [
        pod("web-1", "10.42.2.9", true),
        pod("web-3", "10.42.1.3", true),
        elsewhere,
    ];
    let nodes = |n: &str| match n {
        "pi-1" => Some(range("10.42.1.0/24")),
        "pi-2" => Some(range("10.42.2.0/24")),
        _ => None,
    };
    let mut got = ips(&endpoints(&s, &pods, nodes));
    got.sort();
    assert_eq!(got, ["10.42.1.3:8080", "10.42.2.7:8080"]);
    // pi-2's range refused (or pi-2 NotReady): its pod goes too.
    let only_pi1 = |n: &str| (n == "pi-1").then(|| range("10.42.1.0/24"));
    assert_eq!(ips(&endpoints(&s, &pods, only_pi1)), ["10.42.1.3:8080"]);
}

#[test]
fn a_named_target_port_resolves_per_pod_and_excludes_pods_without_it() {
    let s = svc(
        "web",
        api::ServiceType::ClusterIP,
        vec![port(None, 80, TargetPort::Name("http".into()))],
    );
    let mut moved = pod("web-2", "10.42.1.3", true);
    moved.spec.containers[0].ports[0].container_port = 9090;
    let mut unnamed = pod("web-3", "10.42.1.4", true);
    unnamed.spec.containers[0].ports[0].name = None;
    let pods = [pod("web-1", "10.42.1.2", true), moved, unnamed];
    let e = endpoints(&s, &pods, any_range);
    let mut got = ips(&e);
    got.sort();
    assert_eq!(got, ["10.42.1.2:8080", "10.42.1.3:9090"]);
    assert_eq!(e.subsets.len(), 2, "one subset per resolved port set");
}
