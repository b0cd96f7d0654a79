//! Services, decided purely: where a Service's addresses come from (a ClusterIP from the
//! service CIDR, nodePorts from 30000-32767) and which pods are its endpoints.
//!
//! Allocation takes the addresses the other Services hold and returns the lowest free one,
//! so it is deterministic and testable; a freed address is the first reused, which is
//! harmless while nothing caches a ClusterIP outside the cluster (the agent proxy, issue 15
//! part 2, follows the current Services).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::decide::controller;
use crate::decide::pod_cidr::Ipv4Range;
use crate::model::api::{self, Protocol, TargetPort};

/// The default service CIDR, as k3s's.
pub const DEFAULT_SERVICE_CIDR: &str = "10.43.0.0/16";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid service CIDR {0:?}: expected an IPv4 network such as 10.43.0.0/16")]
    Cidr(String),
    #[error("service CIDR {0:?} leaves no address for Services (at most /30)")]
    CidrTooSmall(String),
    #[error("spec.clusterIP: {ip} is not in the service CIDR {cidr}")]
    OutsideCidr { ip: Ipv4Addr, cidr: ServiceCidr },
    #[error(
        "spec.clusterIP: {ip} is reserved (the service CIDR's network, first or broadcast address)"
    )]
    Reserved { ip: Ipv4Addr },
    #[error("spec.clusterIP: {ip} is already allocated to service {owner:?}")]
    IpTaken { ip: Ipv4Addr, owner: String },
    #[error(
        "no free ClusterIP left in the service CIDR {0}: delete a Service or widen --service-cidr"
    )]
    IpsExhausted(ServiceCidr),
    #[error("{path}: provided port is already allocated to service {owner:?}")]
    NodePortTaken { path: String, owner: String },
    #[error(
        "no free nodePort left in {}-{}",
        api::NODE_PORT_MIN,
        api::NODE_PORT_MAX
    )]
    NodePortsExhausted,
}

/// An IPv4 network Services take their ClusterIPs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidr {
    network: u32,
    prefix: u8,
}

impl Default for ServiceCidr {
    fn default() -> Self {
        DEFAULT_SERVICE_CIDR
            .parse()
            .expect("the default service CIDR parses")
    }
}

impl FromStr for ServiceCidr {
    type Err = ServiceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ServiceError::Cidr(s.to_owned());
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        if prefix > 30 {
            return Err(ServiceError::CidrTooSmall(s.to_owned()));
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Ok(Self {
            network: u32::from(ip) & mask,
            prefix,
        })
    }
}

impl std::fmt::Display for ServiceCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

impl ServiceCidr {
    /// The network as a plain range, to check nodes' pod ranges against it.
    pub fn range(self) -> crate::decide::pod_cidr::Ipv4Range {
        crate::decide::pod_cidr::Ipv4Range::new(Ipv4Addr::from(self.network), self.prefix)
            .expect("a service CIDR's prefix is at most 30")
    }
    fn size(self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }
    fn contains(self, ip: Ipv4Addr) -> bool {
        u64::from(u32::from(ip).wrapping_sub(self.network)) < self.size()
            && u32::from(ip) >= self.network
    }
    /// The addresses a Service may get: not the network, not the first host (kept for
    /// the API's own Service, as Kubernetes does), not the broadcast address.
    fn usable(self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u64::from(self.network) + 2;
        let end = u64::from(self.network) + self.size() - 1;
        (first..end).map(|a| Ipv4Addr::from(a as u32))
    }
}

/// The addresses the stored Services hold, by owner, for [`allocate`].
#[derive(Debug, Default)]
pub struct Taken {
    ips: BTreeMap<Ipv4Addr, String>,
    node_ports: BTreeMap<(u16, Protocol), String>,
}

impl Taken {
    /// What `services` hold, leaving out `except` (the one being applied again).
    pub fn of<'a>(services: impl IntoIterator<Item = &'a api::Service>, except: &str) -> Self {
        let mut t = Self::default();
        for s in services.into_iter().filter(|s| s.metadata.name != except) {
            t.add(s);
        }
        t
    }
    pub fn add(&mut self, s: &api::Service) {
        if let Ok(ip) = s.spec.cluster_ip.parse() {
            self.ips.insert(ip, s.metadata.name.clone());
        }
        for p in &s.spec.ports {
            if let Some(n) = p.node_port {
                self.node_ports
                    .insert((n, p.protocol), s.metadata.name.clone());
            }
        }
    }
}

/// Fills in `svc`'s ClusterIP and nodePorts: kept from `old` (the stored Service of the
/// same name) where the manifest leaves them out, honoured where given and free, the
/// lowest free otherwise. Errors name the field.
pub fn allocate(
    mut svc: api::Service,
    old: Option<&api::Service>,
    taken: &Taken,
    cidr: ServiceCidr,
) -> Result<api::Service, ServiceError> {
    let spec = &mut svc.spec;
    if spec.cluster_ip.is_empty() {
        if let Some(old) = old.filter(|o| !o.spec.is_headless()) {
            spec.cluster_ip = old.spec.cluster_ip.clone();
        }
    }
    if !spec.is_headless() {
        let ip = match spec.cluster_ip.parse::<Ipv4Addr>() {
            // A Service keeps the address it has even if --service-cidr changed since.
            Ok(ip) if old.is_some_and(|o| o.spec.cluster_ip == spec.cluster_ip) => ip,
            Ok(ip) => {
                if !cidr.contains(ip) {
                    return Err(ServiceError::OutsideCidr { ip, cidr });
                }
                if !cidr.usable().any(|u| u == ip) {
                    return Err(ServiceError::Reserved { ip });
                }
                if let Some(owner) = taken.ips.get(&ip) {
                    return Err(ServiceError::IpTaken {
                        ip,
                        owner: owner.clone(),
                    });
                }
                ip
            }
            Err(_) => cidr
                .usable()
                .find(|ip| !taken.ips.contains_key(ip))
                .ok_or(ServiceError::IpsExhausted(cidr))?,
        };
        spec.cluster_ip = ip.to_string();
    }
    let wants = spec.wants_node_ports();
    let mut mine: BTreeSet<(u16, Protocol)> = BTreeSet::new();
    for (i, p) in spec.ports.iter_mut().enumerate() {
        if !wants {
            p.node_port = None;
            continue;
        }
        if p.node_port.is_none() {
            // The same port (by name, else by number and protocol) keeps its nodePort.
            p.node_port = old
                .into_iter()
                .flat_map(|o| &o.spec.ports)
                .find(|q| {
                    q.protocol == p.protocol
                        && match (&q.name, &p.name) {
                            (Some(a), Some(b)) => a == b,
                            _ => q.port == p.port,
                        }
                })
                .and_then(|q| q.node_port)
                .filter(|n| !mine.contains(&(*n, p.protocol)));
        }
        let n = match p.node_port {
            Some(n) => {
                let owner = taken.node_ports.get(&(n, p.protocol)).cloned().or_else(|| {
                    mine.contains(&(n, p.protocol))
                        .then(|| svc.metadata.name.clone())
                });
                if let Some(owner) = owner {
                    return Err(ServiceError::NodePortTaken {
                        path: format!("spec.ports[{i}].nodePort"),
                        owner,
                    });
                }
                n
            }
            None => (api::NODE_PORT_MIN..=api::NODE_PORT_MAX)
                .find(|n| {
                    !taken.node_ports.contains_key(&(*n, p.protocol))
                        && !mine.contains(&(*n, p.protocol))
                })
                .ok_or(ServiceError::NodePortsExhausted)?,
        };
        mine.insert((n, p.protocol));
        p.node_port = Some(n);
    }
    Ok(svc)
}

/// A Service's endpoints: the Ready, non-terminating pods matching its selector, on a
/// node that is Ready, with a pod IP inside that node's pod range, and each service port
/// resolved against the pod's container ports (a named `targetPort` the pod lacks leaves
/// that port out for that pod, and a pod with no port left is not an endpoint). A Service
/// without a selector has none.
///
/// `node_range` gives the pod range of a node that is Ready and holds one
/// ([`crate::decide::pod_cidr`]): a pod reporting an address outside it would draw another
/// node's traffic (or pose as its pod), so it is left out.
pub fn endpoints<'a>(
    svc: &api::Service,
    pods: impl IntoIterator<Item = &'a api::Pod>,
    node_range: impl Fn(&str) -> Option<Ipv4Range>,
) -> api::Endpoints {
    let mut groups: BTreeMap<Vec<api::EndpointPort>, Vec<api::EndpointAddress>> = BTreeMap::new();
    if !svc.spec.selector.is_empty() {
        // A Service selects only pods of its own namespace (qualified names, `api::qualify`).
        let namespace = api::namespace_of(&svc.metadata.name);
        for pod in pods {
            let matches = api::namespace_of(&pod.metadata.name) == namespace
                && svc
                    .spec
                    .selector
                    .iter()
                    .all(|(k, v)| pod.metadata.labels.get(k) == Some(v));
            let Some(ip) = pod.status.pod_ip.as_ref().filter(|ip| !ip.is_empty()) else {
                continue;
            };
            let in_node_range = pod
                .spec
                .node_name
                .as_deref()
                .and_then(&node_range)
                .zip(ip.parse::<Ipv4Addr>().ok())
                .is_some_and(|(range, ip)| range.contains(ip));
            if !matches || !controller::is_ready(pod) || !in_node_range {
                continue;
            }
            let ports: Vec<api::EndpointPort> = svc
                .spec
                .ports
                .iter()
                .filter_map(|p| {
                    let port = match &p.target_port {
                        TargetPort::Number(n) => *n,
                        TargetPort::Name(name) => named_port(pod, name, p.protocol)?,
                    };
                    Some(api::EndpointPort {
                        name: p.name.clone(),
                        port,
                        protocol: p.protocol,
                    })
                })
                .collect();
            if ports.is_empty() && !svc.spec.ports.is_empty() {
                continue;
            }
            groups.entry(ports).or_default().push(api::EndpointAddress {
                ip: ip.clone(),
                node_name: pod.spec.node_name.clone(),
                pod: pod.metadata.name.clone(),
            });
        }
    }
    api::Endpoints {
        api_version: "v1".into(),
        kind: "Endpoints".into(),
        metadata: api::ObjectMeta {
            name: svc.metadata.name.clone(),
            labels: svc.metadata.labels.clone(),
            creation_timestamp: svc.metadata.creation_timestamp.clone(),
            ..Default::default()
        },
        subsets: groups
            .into_iter()
            .map(|(ports, mut addresses)| {
                addresses.sort();
                api::EndpointSubset { addresses, ports }
            })
            .collect(),
    }
}

/// The number of the container port named `name` with `protocol`, in any container.
fn named_port(pod: &api::Pod, name: &str, protocol: Protocol) -> Option<u16> {
    pod.spec
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
        .map(|p| p.container_port)
}

#[cfg(test)]
mod tests;
