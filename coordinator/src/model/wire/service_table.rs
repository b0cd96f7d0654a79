//! Services down to agents: the [`proto::ServiceTable`] every node's proxy follows.

use std::net::{IpAddr, Ipv4Addr};

use baton_proto as proto;

use super::{bstr, bvec, WireError};
use crate::model::api;

/// The table entry of Service `s` with endpoints `eps`; `None` for one without a ClusterIP
/// yet. A headless Service (`clusterIP: None`) goes with the address 0.0.0.0: nothing to
/// proxy, but its name resolves to its endpoints (cluster DNS).
pub fn service_entry(
    s: &api::Service,
    eps: &api::Endpoints,
) -> Option<Result<proto::ServiceEntry, WireError>> {
    let vip: Ipv4Addr = match s.spec.cluster_ip.as_str() {
        api::CLUSTER_IP_NONE => Ipv4Addr::UNSPECIFIED,
        ip => ip.parse().ok()?,
    };
    Some(entry(s, eps, vip))
}

fn entry(
    s: &api::Service,
    eps: &api::Endpoints,
    vip: Ipv4Addr,
) -> Result<proto::ServiceEntry, WireError> {
    let name = s.metadata.name.as_str();
    let ports = s
        .spec
        .ports
        .iter()
        .map(|p| {
            Ok(proto::ServicePortEntry {
                port: p.port,
                protocol: protocol(p.protocol),
                node_port: p.node_port,
                name: p
                    .name
                    .as_deref()
                    .map(|n| bstr(name, "spec.ports.name", n))
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    let mut endpoints = Vec::new();
    for subset in &eps.subsets {
        // The subset's port for each Service port, by name and protocol (names are
        // required, and unique, when a Service has more than one port).
        let target_ports: Vec<u16> = s
            .spec
            .ports
            .iter()
            .map(|p| {
                subset
                    .ports
                    .iter()
                    .find(|e| e.name == p.name && e.protocol == p.protocol)
                    .map_or(0, |e| e.port)
            })
            .collect();
        for a in &subset.addresses {
            let Ok(ip) = a.ip.parse::<Ipv4Addr>() else {
                continue;
            };
            endpoints.push(proto::ServiceEndpoint {
                ip,
                target_ports: bvec(name, "endpoints.ports", target_ports.clone())?,
            });
        }
    }
    endpoints.sort_by_key(|e| e.ip);
    let affinity_secs = match s.spec.session_affinity {
        api::SessionAffinity::None => 0,
        api::SessionAffinity::ClientIP => s
            .spec
            .session_affinity_config
            .as_ref()
            .map_or(10800, |c| c.client_ip.timeout_seconds)
            .max(1),
    };
    Ok(proto::ServiceEntry {
        name: bstr(name, "metadata.name", name)?,
        vip,
        load_balancer: s.spec.type_ == api::ServiceType::LoadBalancer,
        affinity_secs,
        ports: bvec(name, "spec.ports", ports)?,
        endpoints: bvec(name, "endpoints", endpoints)?,
    })
}

/// The route to `node`'s pods, if it reported an IPv4 address and a pod range.
pub fn node_route(node: &api::Node) -> Option<proto::NodeRoute> {
    let via = match node.status.address.as_deref()?.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => return None,
    };
    let cidr = proto::BString::new(&node.status.pod_cidr).ok()?;
    (!node.status.pod_cidr.is_empty()).then_some(proto::NodeRoute { cidr, via })
}

fn protocol(p: api::Protocol) -> proto::Protocol {
    match p {
        api::Protocol::TCP => proto::Protocol::Tcp,
        api::Protocol::UDP => proto::Protocol::Udp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(cluster_ip: &str) -> api::Service {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "shop_db"},
            "spec": {"clusterIP": cluster_ip, "selector": {"app": "db"},
                     "ports": [{"port": 5432, "targetPort": 5432}]}
        }))
        .unwrap()
    }

    fn endpoints(ips: &[&str]) -> api::Endpoints {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "shop_db"},
            "subsets": [{
                "addresses": ips.iter().map(|ip| serde_json::json!({"ip": ip, "pod": "p"}))
                    .collect::<Vec<_>>(),
                "ports": [{"port": 5432, "protocol": "TCP"}]
            }]
        }))
        .unwrap()
    }

    /// A headless Service goes with 0.0.0.0 and its endpoints (cluster DNS answers with
    /// them); one not yet given an address is left out.
    #[test]
    fn headless_services_are_sent_for_dns() {
        let eps = endpoints(&["10.42.2.9", "10.42.1.7"]);
        let e = service_entry(&service("None"), &eps).unwrap().unwrap();
        assert_eq!(e.vip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            e.name.as_str(),
            "shop_db",
            "the namespace travels in the name"
        );
        let ips: Vec<Ipv4Addr> = e.endpoints.iter().map(|e| e.ip).collect();
        assert_eq!(
            ips,
            [Ipv4Addr::new(10, 42, 1, 7), Ipv4Addr::new(10, 42, 2, 9)]
        );
        let e = service_entry(&service("10.43.0.5"), &eps).unwrap().unwrap();
        assert_eq!(e.vip, Ipv4Addr::new(10, 43, 0, 5));
        assert!(service_entry(&service(""), &eps).is_none());
    }

    /// A port's name travels, for cluster DNS's SRV records.
    #[test]
    fn port_names_are_sent() {
        let mut s = service("10.43.0.5");
        let e = service_entry(&s, &endpoints(&[])).unwrap().unwrap();
        assert_eq!(e.ports[0].name, None);
        s.spec.ports[0].name = Some("pg".into());
        let e = service_entry(&s, &endpoints(&[])).unwrap().unwrap();
        assert_eq!(e.ports[0].name.as_deref(), Some("pg"));
    }
}
