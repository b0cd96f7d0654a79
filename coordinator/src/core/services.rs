//! Services in the core: apply (ClusterIP and nodePorts allocated against the stored
//! Services, in the same commit as the object), the API's view (a LoadBalancer's addresses
//! from the Ready nodes) and Endpoints.
//!
//! Endpoints are not stored and not cached: `endpoints_of` derives them from the pods and
//! nodes at each read with the pure `decide::service::endpoints`, so they can never be
//! stale and a restart needs nothing to rebuild. Nothing is sent to nodes yet; the agent
//! proxy (issue 15 part 2) will need the last endpoints sent to each node to send only
//! changes, and that is when they will be kept.

use crate::contract::{Applied, ApplyAction, ResourceKind};
use crate::decide::service::{self as decide, Taken};
use crate::model::api;

use super::{new_uid, ApiError, Core, Tab};

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

    /// A Service as the API shows it: a LoadBalancer lists the Ready nodes' addresses
    /// (every node serves it, as k3s's ServiceLB does); none known shows `<pending>`.
    pub(super) fn service_view(&self, s: &api::Service) -> api::Service {
        let mut s = s.clone();
        if s.spec.type_ == api::ServiceType::LoadBalancer {
            s.status.load_balancer.ingress = self
                .nodes
                .values()
                .filter(|n| n.status.ready)
                .filter_map(|n| n.status.address.clone())
                .map(|ip| api::LoadBalancerIngress { ip })
                .collect();
        }
        s
    }

    /// The Service's endpoints now (see the module docs).
    pub(super) fn endpoints_of(&self, s: &api::Service) -> api::Endpoints {
        decide::endpoints(s, self.pods.values(), |node| {
            self.nodes.get(node).is_some_and(|n| n.status.ready)
        })
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
