//! A `Service` (`v1`) as the API server validates it: types ClusterIP (default),
//! NodePort, LoadBalancer and headless (`clusterIP: None`), ports with names unique when
//! there are several, nodePorts in 30000-32767 and only where the type has them, TCP or
//! UDP. Addresses are not allocated here: the core does that against the stored Services.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_yaml_ng::Value;

use super::input::{InService, InServicePort};
use super::validate::{dns_label, invalid, labels, object_meta, port, port_name, Invalid};
use super::MAX_NAME_LEN;
use crate::model::api::{self, Protocol, ServiceType, SessionAffinity, TargetPort};

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours), and its
/// bound (a day).
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
const MAX_AFFINITY_TIMEOUT: i64 = 86400;

pub(super) fn service(input: InService) -> Result<api::Service, Invalid> {
    let metadata = object_meta(input.metadata, MAX_NAME_LEN)?;
    // Service names are DNS-1035 labels: they become DNS names, so no leading digit.
    if !metadata.name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return invalid(
            "metadata.name",
            format!(
                "{:?} must start with a lowercase letter (a Service name is a DNS-1035 label)",
                metadata.name
            ),
        );
    }
    let spec = input.spec;
    let type_ = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIP,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => {
            return invalid(
                "spec.type",
                "ExternalName Services are not supported by Baton",
            )
        }
        Some(t) => {
            return invalid(
                "spec.type",
                format!("unsupported value {t:?}: ClusterIP, NodePort or LoadBalancer"),
            )
        }
    };
    // `clusterIPs` (what `kubectl get -o yaml` prints) must agree with `clusterIP`.
    if spec.cluster_ips.len() > 1
        || spec
            .cluster_ips
            .first()
            .zip(spec.cluster_ip.as_ref())
            .is_some_and(|(a, b)| a != b)
    {
        return invalid(
            "spec.clusterIPs",
            "must be one address equal to spec.clusterIP (Baton is IPv4 single stack)",
        );
    }
    let given = spec
        .cluster_ip
        .as_deref()
        .or(spec.cluster_ips.first().map(String::as_str));
    let cluster_ip = match given {
        None | Some("") => String::new(),
        Some(api::CLUSTER_IP_NONE) => api::CLUSTER_IP_NONE.to_owned(),
        Some(ip) => match ip.parse::<Ipv4Addr>() {
            Ok(a) => a.to_string(),
            Err(_) => {
                return invalid(
                    "spec.clusterIP",
                    format!("{ip:?} must be an IPv4 address or \"None\" (Baton is IPv4 only)"),
                )
            }
        },
    };
    if cluster_ip == api::CLUSTER_IP_NONE && type_ != ServiceType::ClusterIP {
        return invalid(
            "spec.clusterIP",
            format!("a headless Service (None) must be of type ClusterIP, not {type_:?}"),
        );
    }
    only(
        "spec.ipFamilyPolicy",
        spec.ip_family_policy.as_deref(),
        &["SingleStack", "PreferDualStack"],
    )?;
    for (i, f) in spec.ip_families.iter().enumerate() {
        only(&format!("spec.ipFamilies[{i}]"), Some(f), &["IPv4"])?;
    }
    only(
        "spec.externalTrafficPolicy",
        spec.external_traffic_policy.as_deref(),
        &["Cluster"],
    )?;
    only(
        "spec.internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
        &["Cluster"],
    )?;
    labels("spec.selector", &spec.selector)?;

    if spec.ports.is_empty() && cluster_ip != api::CLUSTER_IP_NONE {
        return invalid(
            "spec.ports",
            "required (only a headless Service may have none)",
        );
    }
    let several = spec.ports.len() > 1;
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut ports = Vec::new();
    for (i, p) in spec.ports.into_iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let sp = service_port(&path, p, type_, several)?;
        if let Some(n) = &sp.name {
            if !names.insert(n.clone()) {
                return invalid(format!("{path}.name"), format!("duplicate port name {n:?}"));
            }
        }
        if !seen.insert((sp.port, sp.protocol)) {
            return invalid(
                format!("{path}.port"),
                format!("duplicate port {}/{:?}", sp.port, sp.protocol),
            );
        }
        ports.push(sp);
    }

    let session_affinity = match spec.session_affinity.as_deref() {
        None | Some("None") => SessionAffinity::None,
        Some("ClientIP") => SessionAffinity::ClientIP,
        Some(v) => {
            return invalid(
                "spec.sessionAffinity",
                format!("unsupported value {v:?}: ClientIP or None"),
            )
        }
    };
    let timeout = spec
        .session_affinity_config
        .and_then(|c| c.client_ip)
        .and_then(|c| c.timeout_seconds);
    let session_affinity_config = match (session_affinity, timeout) {
        (SessionAffinity::None, Some(_)) => {
            return invalid(
                "spec.sessionAffinityConfig",
                "must not be set when sessionAffinity is None",
            )
        }
        (SessionAffinity::None, None) => None,
        (SessionAffinity::ClientIP, t) => {
            let t = t.unwrap_or(i64::from(DEFAULT_AFFINITY_TIMEOUT));
            if !(1..=MAX_AFFINITY_TIMEOUT).contains(&t) {
                return invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("must be between 1 and {MAX_AFFINITY_TIMEOUT}, got {t}"),
                );
            }
            Some(api::SessionAffinityConfig {
                client_ip: api::ClientIpConfig {
                    timeout_seconds: t as u32,
                },
            })
        }
    };
    let allocate = spec.allocate_load_balancer_node_ports.unwrap_or(true);
    if !allocate && type_ != ServiceType::LoadBalancer {
        return invalid(
            "spec.allocateLoadBalancerNodePorts",
            "may only be set on a LoadBalancer Service",
        );
    }
    Ok(api::Service {
        api_version: "v1".into(),
        kind: "Service".into(),
        metadata,
        spec: api::ServiceSpec {
            type_,
            cluster_ip,
            ports,
            selector: spec.selector,
            session_affinity,
            session_affinity_config,
            allocate_load_balancer_node_ports: allocate,
        },
        status: api::ServiceStatus::default(),
    })
}

/// A field accepted only with the values that mean what Baton does anyway.
fn only(path: &str, v: Option<&str>, allowed: &[&str]) -> Result<(), Invalid> {
    match v {
        Some(v) if !allowed.contains(&v) => invalid(
            path,
            format!(
                "{v:?} is not supported by Baton (supported: {})",
                allowed.join(", ")
            ),
        ),
        _ => Ok(()),
    }
}

fn service_port(
    path: &str,
    p: InServicePort,
    type_: ServiceType,
    several: bool,
) -> Result<api::ServicePort, Invalid> {
    if let Some(n) = &p.name {
        dns_label(&format!("{path}.name"), n, MAX_NAME_LEN)?;
    } else if several {
        return invalid(
            format!("{path}.name"),
            "required when a Service has more than one port",
        );
    }
    let protocol = match p.protocol.as_deref() {
        None | Some("TCP") => Protocol::TCP,
        Some("UDP") => Protocol::UDP,
        Some("SCTP") => {
            return invalid(
                format!("{path}.protocol"),
                "SCTP is not supported by Baton (TCP or UDP)",
            )
        }
        Some(v) => {
            return invalid(
                format!("{path}.protocol"),
                format!("unsupported value {v:?}: TCP or UDP"),
            )
        }
    };
    let Some(number) = p.port else {
        return invalid(format!("{path}.port"), "required");
    };
    let number = port(&format!("{path}.port"), number)?;
    let target_port = match p.target_port {
        None => TargetPort::Number(number),
        Some(Value::Number(n)) => {
            let n = n.as_i64().unwrap_or(-1);
            TargetPort::Number(port(&format!("{path}.targetPort"), n)?)
        }
        Some(Value::String(s)) => match s.parse::<i64>() {
            Ok(n) => TargetPort::Number(port(&format!("{path}.targetPort"), n)?),
            Err(_) => {
                port_name(&format!("{path}.targetPort"), &s)?;
                TargetPort::Name(s)
            }
        },
        Some(_) => {
            return invalid(
                format!("{path}.targetPort"),
                "must be a port number or a container port's name",
            )
        }
    };
    let node_port = match p.node_port {
        None => None,
        Some(n) => {
            if type_ == ServiceType::ClusterIP {
                return invalid(
                    format!("{path}.nodePort"),
                    "may not be used when type is ClusterIP",
                );
            }
            match u16::try_from(n) {
                Ok(n) if (api::NODE_PORT_MIN..=api::NODE_PORT_MAX).contains(&n) => Some(n),
                _ => {
                    return invalid(
                        format!("{path}.nodePort"),
                        format!(
                            "provided port is not in the valid range: {}-{}, got {n}",
                            api::NODE_PORT_MIN,
                            api::NODE_PORT_MAX
                        ),
                    )
                }
            }
        }
    };
    Ok(api::ServicePort {
        name: p.name,
        protocol,
        port: number,
        target_port,
        node_port,
    })
}
