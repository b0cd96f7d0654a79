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
        .map(|p| proto::ServicePortEntry {
            port: p.port,
            protocol: protocol(p.protocol),
            node_port: p.node_port,
        })
        .collect();
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
