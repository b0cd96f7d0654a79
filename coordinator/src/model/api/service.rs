//! Services (`v1`): a stable virtual address in front of the Ready pods a selector picks,
//! and the Endpoints the coordinator derives for each (`crate::decide::service`).
//!
//! The allocated `clusterIP` and `nodePort`s live in the object itself, so they are stored
//! with it in the same commit and a restart reads back the same addresses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;

/// Where NodePorts come from, Kubernetes' default `--service-node-port-range`.
pub const NODE_PORT_MIN: u16 = 30000;
pub const NODE_PORT_MAX: u16 = 32767;
/// `clusterIP` of a headless Service.
pub const CLUSTER_IP_NONE: &str = "None";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ServiceSpec,
    /// Not stored: the API fills the LoadBalancer's addresses from the Ready nodes.
    #[serde(default, skip_serializing_if = "ServiceStatus::is_empty")]
    pub status: ServiceStatus,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionAffinity {
    #[default]
    None,
    ClientIP,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type", default)]
    pub type_: ServiceType,
    /// The virtual address, `None` (the string) for a headless Service; empty only
    /// before the core allocated one.
    #[serde(
        rename = "clusterIP",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cluster_ip: String,
    pub ports: Vec<ServicePort>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    /// `sessionAffinityConfig.clientIP.timeoutSeconds`, set (default 10800) only under
    /// `ClientIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    /// A LoadBalancer's ports get nodePorts too unless this is false (Kubernetes' field).
    #[serde(default = "yes", skip_serializing_if = "Clone::clone")]
    pub allocate_load_balancer_node_ports: bool,
}

fn yes() -> bool {
    true
}

impl ServiceSpec {
    pub fn is_headless(&self) -> bool {
        self.cluster_ip == CLUSTER_IP_NONE
    }
    /// Whether this Service's ports carry nodePorts.
    pub fn wants_node_ports(&self) -> bool {
        match self.type_ {
            ServiceType::ClusterIP => false,
            ServiceType::NodePort => true,
            ServiceType::LoadBalancer => self.allocate_load_balancer_node_ports,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinityConfig {
    #[serde(rename = "clientIP")]
    pub client_ip: ClientIpConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpConfig {
    pub timeout_seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: TargetPort,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

/// Kubernetes' IntOrString for `targetPort`: a number, or a container port's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

impl std::fmt::Display for TargetPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default, skip_serializing_if = "LoadBalancerStatus::is_empty")]
    pub load_balancer: LoadBalancerStatus,
}

impl ServiceStatus {
    pub fn is_empty(&self) -> bool {
        self.load_balancer.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<LoadBalancerIngress>,
}

impl LoadBalancerStatus {
    pub fn is_empty(&self) -> bool {
        self.ingress.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancerIngress {
    pub ip: String,
}

/// A Service's endpoints in Kubernetes' `Endpoints` (`v1`) shape: one subset per distinct
/// set of resolved ports (a named `targetPort` may resolve differently per pod).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<EndpointSubset>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSubset {
    pub addresses: Vec<EndpointAddress>,
    pub ports: Vec<EndpointPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAddress {
    pub ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The pod's name (Kubernetes' `targetRef.name`, flattened).
    pub pod: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

impl Endpoints {
    /// `ip:port` of every address for the service port named `name` (`None`: unnamed),
    /// as `describe service` and `get endpoints` print them.
    pub fn addresses_for(&self, name: Option<&str>) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.subsets {
            for p in s.ports.iter().filter(|p| p.name.as_deref() == name) {
                out.extend(s.addresses.iter().map(|a| format!("{}:{}", a.ip, p.port)));
            }
        }
        out
    }
}
