//! Services on their way to nodes: [`ServiceTable`], everything a node's proxy needs.
//!
//! One table for the whole cluster, the same for every node: each Service's virtual
//! address, ports and endpoints (kube-proxy's view), and the route to every node's pod
//! range (flannel's `host-gw`). It is small next to the desired state (a Service with ten
//! endpoints is about 80 bytes) and travels apart from it, so an endpoint change never
//! resends pod specs. `digest` names the content: the coordinator sends a node a table
//! only when its digest differs from the last one sent, and the agent refuses a table
//! whose content does not match its digest.

use core::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{BString, BVec, ProtoError, Protocol};

/// The most Services one table carries.
pub const MAX_SERVICES: usize = 1024;
/// The most ports of one Service.
pub const MAX_SERVICE_PORTS: usize = 32;
/// The most endpoints of one Service.
pub const MAX_SERVICE_ENDPOINTS: usize = 1024;
/// The most node routes (nodes with a pod range) one table carries.
pub const MAX_NODE_ROUTES: usize = 5000;

/// The cluster's Services and pod routes, as every node's proxy needs them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTable {
    /// [`ServiceTable::content_digest`] of the rest.
    pub digest: u64,
    pub services: BVec<ServiceEntry, MAX_SERVICES>,
    pub routes: BVec<NodeRoute, MAX_NODE_ROUTES>,
    /// The term of the leader that sent it ([`crate::DesiredState::term`]); not part of the
    /// content (`digest`). A deposed leader's late table would otherwise stand until the
    /// next change, since a leader sends a node only tables that differ from its last.
    pub term: u64,
    /// The nodes (by address) that serve LoadBalancer ports, when only some do (k3s's
    /// ServiceLB with `enablelb` node labels); `None`: every node.
    pub lb_nodes: Option<BVec<Ipv4Addr, MAX_NODE_ROUTES>>,
}

/// One Service: its virtual address, or for a headless Service (`clusterIP: None`)
/// 0.0.0.0, which the proxy skips and cluster DNS answers with the endpoints' addresses.
/// `name` is `<namespace>_<name>` outside the `default` namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub name: BString<63>,
    /// The ClusterIP.
    pub vip: Ipv4Addr,
    /// `type: LoadBalancer`: every node (or those in [`ServiceTable::lb_nodes`]) also serves
    /// the ports on its own address.
    pub load_balancer: bool,
    /// `sessionAffinity: ClientIP`'s timeout in seconds; 0 without affinity.
    pub affinity_secs: u32,
    pub ports: BVec<ServicePortEntry, MAX_SERVICE_PORTS>,
    pub endpoints: BVec<ServiceEndpoint, MAX_SERVICE_ENDPOINTS>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePortEntry {
    pub port: u16,
    pub protocol: Protocol,
    pub node_port: Option<u16>,
    /// The port's name, for cluster DNS's SRV records (`_<name>._<proto>.<svc>...`);
    /// `None` for an unnamed port.
    pub name: Option<BString<63>>,
}

/// A Ready pod behind a Service: its address and, for each of the Service's ports in
/// order, the pod's port (`targetPort` resolved; 0 where the pod lacks a named one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoint {
    pub ip: Ipv4Addr,
    pub target_ports: BVec<u16, MAX_SERVICE_PORTS>,
}

/// Pods in `cidr` live on the node at `via`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeRoute {
    pub cidr: BString<43>,
    pub via: Ipv4Addr,
}

impl ServiceTable {
    /// A table of `services` and `routes` with its digest.
    pub fn new(
        services: BVec<ServiceEntry, MAX_SERVICES>,
        routes: BVec<NodeRoute, MAX_NODE_ROUTES>,
    ) -> Result<Self, ProtoError> {
        let mut t = Self {
            digest: 0,
            services,
            routes,
            term: 0,
            lb_nodes: None,
        };
        t.digest = t.content_digest()?;
        Ok(t)
    }

    /// The table with LoadBalancer ports served only on `lb_nodes` (`None`: every node).
    pub fn with_lb_nodes(
        mut self,
        lb_nodes: Option<BVec<Ipv4Addr, MAX_NODE_ROUTES>>,
    ) -> Result<Self, ProtoError> {
        self.lb_nodes = lb_nodes;
        self.digest = self.content_digest()?;
        Ok(self)
    }

    /// Whether the node at `addr` serves LoadBalancer ports.
    pub fn serves_load_balancers(&self, addr: Ipv4Addr) -> bool {
        self.lb_nodes.as_ref().is_none_or(|n| n.contains(&addr))
    }

    /// SHA-256 of the encoding of `services`, `routes` and, when set, `lb_nodes`, first 8
    /// bytes, big-endian.
    pub fn content_digest(&self) -> Result<u64, ProtoError> {
        let encoded = match &self.lb_nodes {
            None => postcard::to_allocvec(&(&self.services, &self.routes)),
            Some(lb) => postcard::to_allocvec(&(&self.services, &self.routes, lb)),
        }
        .map_err(ProtoError::Encode)?;
        Ok(crate::config_map_digest(&encoded))
    }

    /// Whether the content is what `digest` names: a table altered on the way (or built
    /// without [`ServiceTable::new`]) is refused.
    pub fn check(&self) -> Result<(), ProtoError> {
        if self.content_digest()? != self.digest {
            return Err(ProtoError::Decode(postcard::Error::DeserializeBadEncoding));
        }
        Ok(())
    }
}
