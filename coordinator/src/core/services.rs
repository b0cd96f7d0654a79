//! Services in the core: apply (ClusterIP and nodePorts allocated against the stored
//! Services, in the same commit as the object), the API's view (a LoadBalancer's addresses
//! from the Ready nodes) and Endpoints.
//!
//! Endpoints are not stored and not cached: `endpoints_of` derives them from the pods and
//! nodes at each read with the pure `decide::service::endpoints`, so they can never be
//! stale and a restart needs nothing to rebuild.
//!
//! Nodes' proxies follow one [`proto::ServiceTable`] (every Service's ClusterIP, ports and
//! endpoints, and the route of every node holding its pod range, `pod_cidrs.rs`), rebuilt
//! after each settle; only its digest is kept per node, and a node is sent the table when
//! that differs (a Hello forgets it, so a reconnecting agent gets the table again). v4
//! agents are never sent it. A table over the message limit is not sent at all (refused,
//! not truncated: a partial table would drop Services silently): nodes keep the last one,
//! and a `ServiceTableTooLarge` event says so.
//!
//! **Coalescing.** Every node's route is in the one table, so each node joining (or
//! moving) changes it for all: sent at once, a cold start of N nodes would cost about N²
//! messages. A new table therefore goes out at once only if the last new one went out
//! more than [`SERVICE_TABLE_WINDOW`] ago; otherwise it is held until that window ends
//! (the core's run loop wakes for it) and then the table as it is by then goes out, once
//! per node. An isolated change (a pod becoming Ready) is not delayed; a burst costs one
//! table per node per window, and any change reaches nodes within the window.

use std::time::Duration;

use baton_proto::{self as proto, NodeName};
use tokio::time::Instant;

use crate::contract::{Applied, ApplyAction, ResourceKind};
use crate::decide::service::{self as decide, Taken};
use crate::model::{api, wire};

use super::{new_uid, ApiError, Core, Outbound, Tab};

/// Node labels that, set to `true` on any node, restrict LoadBalancer ports to the nodes
/// carrying them: Baton's own, and k3s's ServiceLB label, so k3s habits carry over.
pub const LB_NODE_LABELS: [&str; 2] = ["baton.io/enablelb", "svccontroller.k3s.cattle.io/enablelb"];

/// The oldest agent protocol that has [`proto::Body::ServiceTable`].
const SERVICE_TABLE_PROTO: u16 = 5;

/// Room left in a message for the envelope around a table (header and signature).
const ENVELOPE_ROOM: usize = 1024;

/// At most one new Service table per this long (module docs). Half the 1 s issue 15 allows
/// for an endpoint change to reach every node, leaving the other half to the LAN.
pub const SERVICE_TABLE_WINDOW: Duration = Duration::from_millis(500);

impl Core {
    /// Allocates every Service of one manifest in order, each against the stored Services
    /// and those before it, so an apply is refused whole when two collide.
    pub(super) fn allocate_services(
        &self,
        objects: Vec<api::Object>,
    ) -> Result<Vec<api::Object>, ApiError> {
        let applied: Vec<&str> = objects
            .iter()
            .filter_map(|o| match o {
                api::Object::Service(s) => Some(s.metadata.name.as_str()),
                _ => None,
            })
            .collect();
        let mut taken = Taken::of(
            self.services
                .values()
                .filter(|s| !applied.contains(&s.metadata.name.as_str())),
            "",
        );
        let mut out = Vec::with_capacity(objects.len());
        for o in objects {
            let api::Object::Service(s) = o else {
                out.push(o);
                continue;
            };
            let name = s.metadata.name.clone();
            let old = self.services.get(&name);
            if let Some(old) = old {
                check_immutable(old, &s)?;
            }
            let s = decide::allocate(s, old, &taken, self.service_cidr)
                .map_err(|e| ApiError::BadRequest(format!("service {name:?}: {e}")))?;
            taken.add(&s);
            out.push(api::Object::Service(s));
        }
        Ok(out)
    }

    /// Stores an allocated Service (its spec replaces the old one).
    pub(super) fn apply_service(&mut self, mut s: api::Service) -> Applied {
        let name = s.metadata.name.clone();
        s.status = api::ServiceStatus::default();
        let action = match self.services.get(&name) {
            None => {
                s.metadata.uid = new_uid();
                s.metadata.creation_timestamp = api::now_rfc3339();
                s.metadata.generation = 1;
                ApplyAction::Created
            }
            Some(old) => {
                match super::requests::reapplied((&old.metadata, &old.spec), (s.metadata, s.spec)) {
                    None => {
                        return Applied {
                            kind: ResourceKind::Service,
                            name,
                            action: ApplyAction::Unchanged,
                        }
                    }
                    Some((metadata, spec)) => (s.metadata, s.spec) = (metadata, spec),
                }
                ApplyAction::Configured
            }
        };
        self.services.insert(name.clone(), s);
        self.touch(Tab::Service, &name);
        Applied {
            kind: ResourceKind::Service,
            name,
            action,
        }
    }

    /// Deleting a Service frees its ClusterIP and nodePorts: they are only ever held by
    /// the stored object.
    pub(super) fn delete_service(&mut self, name: &str) -> Result<(), ApiError> {
        if self.services.remove(name).is_none() {
            return Err(Self::not_found(ResourceKind::Service, name));
        }
        self.touch(Tab::Service, name);
        Ok(())
    }

    /// A Service as the API shows it: a LoadBalancer lists the addresses of the Ready nodes
    /// that serve it (every node, as k3s's ServiceLB does, or the labelled ones:
    /// [`Core::lb_nodes`]); none known shows `<pending>`.
    pub(super) fn service_view(&self, s: &api::Service) -> api::Service {
        let mut s = s.clone();
        if s.spec.type_ == api::ServiceType::LoadBalancer {
            let only = self.lb_nodes();
            s.status.load_balancer.ingress = self
                .nodes
                .values()
                .filter(|n| n.status.ready)
                .filter(|n| only.as_ref().is_none_or(|o| o.contains(&n.metadata.name)))
                .filter_map(|n| n.status.address.clone())
                .map(|ip| api::LoadBalancerIngress { ip })
                .collect();
        }
        s
    }

    /// The nodes that serve LoadBalancer ports when only some do: those with one of
    /// [`LB_NODE_LABELS`] set to `true`, if any node has it; `None`: every node.
    pub(super) fn lb_nodes(&self) -> Option<Vec<String>> {
        let labelled: Vec<String> = self
            .nodes
            .values()
            .filter(|n| {
                LB_NODE_LABELS
                    .iter()
                    .any(|l| n.metadata.labels.get(*l).is_some_and(|v| v == "true"))
            })
            .map(|n| n.metadata.name.clone())
            .collect();
        (!labelled.is_empty()).then_some(labelled)
    }

    /// The Service's endpoints now (see the module docs).
    pub(super) fn endpoints_of(&self, s: &api::Service) -> api::Endpoints {
        decide::endpoints(s, self.pods.values(), |node| {
            self.nodes
                .get(node)
                .filter(|n| n.status.ready)
                .and_then(|_| self.held_range(node))
        })
    }
}

impl Core {
    /// The Service table as the cluster is now.
    pub(super) fn service_table(&self) -> Result<proto::ServiceTable, String> {
        let mut services = Vec::new();
        for s in self.services.values() {
            let eps = self.endpoints_of(s);
            match wire::service_entry(s, &eps) {
                None => {}
                Some(Ok(e)) => services.push(e),
                Some(Err(e)) => tracing::error!(error = %e, "service left out of the table"),
            }
        }
        let mut routes: Vec<proto::NodeRoute> = self
            .nodes
            .values()
            .filter(|n| n.status.pod_cidr_held)
            .filter_map(wire::node_route)
            .collect();
        routes.sort();
        let n = services.len();
        let services = proto::BVec::from_vec(services)
            .map_err(|e| format!("{n} services with a ClusterIP: {e}"))?;
        let n = routes.len();
        let routes = proto::BVec::from_vec(routes).map_err(|e| format!("{n} node routes: {e}"))?;
        // Labelled LoadBalancer nodes by address, whether Ready or not: a node that is not
        // Ready gets no table anyway, and one coming back needs no new one.
        let lb_nodes = match self.lb_nodes() {
            None => None,
            Some(names) => {
                let mut addrs: Vec<std::net::Ipv4Addr> = names
                    .iter()
                    .filter_map(|n| self.nodes.get(n))
                    .filter_map(|n| n.status.address.as_deref()?.parse().ok())
                    .collect();
                addrs.sort();
                let n = addrs.len();
                Some(
                    proto::BVec::from_vec(addrs)
                        .map_err(|e| format!("{n} LoadBalancer nodes: {e}"))?,
                )
            }
        };
        let table = proto::ServiceTable::new(services, routes)
            .and_then(|t| t.with_lb_nodes(lb_nodes))
            .map_err(|e| e.to_string())?;
        let len = postcard::to_allocvec(&table)
            .map_err(|e| e.to_string())?
            .len();
        if len + ENVELOPE_ROOM > proto::MAX_MESSAGE_BYTES {
            return Err(format!(
                "the service table is {len} bytes, over the {} byte message limit",
                proto::MAX_MESSAGE_BYTES - ENVELOPE_ROOM
            ));
        }
        Ok(table)
    }

    /// A table for `node` was dropped on a full outbound queue: it is sent again when the
    /// window after now ends.
    pub(super) fn service_table_lost(&mut self, node: &str) {
        self.sent_service_tables.remove(node);
        let retry = Instant::now() + SERVICE_TABLE_WINDOW;
        self.service_table_due = Some(self.service_table_due.map_or(retry, |d| d.min(retry)));
    }

    /// Sends a table held back by the window once the window has passed.
    pub(super) fn send_due_service_tables(&mut self) {
        if self
            .service_table_due
            .is_some_and(|due| due <= Instant::now())
        {
            self.service_table_due = None;
            self.send_service_tables();
        }
    }

    /// Sends the Service table to every v5 node whose last one differs, a new table at
    /// most once per window (module docs).
    pub(super) fn send_service_tables(&mut self) {
        self.check_pod_cidrs();
        let table = match self.service_table() {
            Ok(t) => t,
            Err(reason) => {
                // Once per cause, not once per settle.
                if self.oversized_service_table.as_ref() != Some(&reason) {
                    self.oversized_service_table = Some(reason.clone());
                    self.record(
                        "service".into(),
                        "ServiceTableTooLarge",
                        format!("{reason}: not sent; nodes keep proxying the last table"),
                    );
                }
                return;
            }
        };
        self.oversized_service_table = None;
        let now = Instant::now();
        match self.service_table_sent {
            Some((digest, _)) if digest == table.digest => {}
            Some((_, at)) if now < at + SERVICE_TABLE_WINDOW => {
                // Held back; what is sent then is the table as it is then.
                self.service_table_due = Some(at + SERVICE_TABLE_WINDOW);
                return;
            }
            _ => {
                self.service_table_sent = Some((table.digest, now));
                self.service_table_due = None;
            }
        }
        let nodes: Vec<String> = self
            .nodes
            .values()
            .filter(|n| n.status.protocol_version >= SERVICE_TABLE_PROTO)
            .filter(|n| !self.revoked.contains(&n.metadata.name))
            .map(|n| n.metadata.name.clone())
            .collect();
        self.sent_service_tables
            .retain(|n, _| self.nodes.contains_key(n));
        for node in nodes {
            if self.sent_service_tables.get(&node) == Some(&table.digest) {
                continue;
            }
            let Ok(node_name) = NodeName::new(&node) else {
                continue;
            };
            self.sent_service_tables.insert(node.clone(), table.digest);
            tracing::debug!(%node, digest = table.digest, services = table.services.len(), "sending service table");
            self.pending_out.push(Outbound {
                node: node_name,
                body: proto::Body::ServiceTable(table.clone()),
                retain: false,
            });
        }
    }
}

/// What Kubernetes refuses to change on a Service: a given ClusterIP, and headless to
/// not (or back).
fn check_immutable(old: &api::Service, new: &api::Service) -> Result<(), ApiError> {
    let name = &new.metadata.name;
    if old.spec.is_headless() != new.spec.is_headless()
        || (!new.spec.cluster_ip.is_empty() && new.spec.cluster_ip != old.spec.cluster_ip)
    {
        return Err(ApiError::Conflict(format!(
            "service {name:?}: spec.clusterIP: field is immutable ({}); delete the service and \
             apply again",
            old.spec.cluster_ip
        )));
    }
    Ok(())
}
