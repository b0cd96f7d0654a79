//! Cross-node pod routing, flannel's `host-gw`: a route to every other node's pod range
//! through that node's address, so pods reach pods on other nodes by their own addresses,
//! unmasqueraded. It needs the nodes on one L2 network (or routers that forward the pod
//! ranges); nodes behind NAT need an overlay (WireGuard), which is not here.
//!
//! The routes are tagged with their own protocol number ([`ROUTE_PROTO`]), so the ones
//! the agent made are told from everyone else's and a route to a node gone is removed.
//! One agent per network namespace owns them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use baton_proto::NodeRoute;

use super::command::ip;
use super::{Ipv4Net, NetError, Network};

/// The `proto` of the agent's routes (any number the kernel does not use itself).
pub(super) const ROUTE_PROTO: &str = "98";

/// The widest pod range a route is made for. A node reports its own pod range, so a
/// wider one (a default route, a /8) would let one node pull other nodes' traffic to it.
const WIDEST_POD_RANGE: u8 = 16;

impl Network {
    /// The nat chain that masquerades pod traffic leaving the node, except to other
    /// nodes' pods.
    pub fn masq_chain(&self) -> String {
        format!("{}-mq", self.cfg.bridge)
    }

    /// The routes of `table` to other nodes' pods: not this node's range or address, only
    /// well-formed ones, none wider than /16 and none overlapping this node's pod range or
    /// containing its address (docs/security.md, "Service table").
    pub fn remote_routes(
        &self,
        routes: &[NodeRoute],
        own_ip: Option<Ipv4Addr>,
    ) -> Vec<(Ipv4Net, Ipv4Addr)> {
        let mut out: Vec<(Ipv4Net, Ipv4Addr)> = routes
            .iter()
            .filter(|r| Some(r.via) != own_ip)
            .filter_map(|r| Some((r.cidr.parse::<Ipv4Net>().ok()?, r.via)))
            .filter(|(c, _)| {
                let own = self.cfg.pod_cidr;
                let ok = c.prefix() >= WIDEST_POD_RANGE
                    && !c.contains(own.addr())
                    && !own.contains(c.addr())
                    && !own_addr_in(c, own_ip);
                if !ok && *c != own {
                    tracing::warn!(cidr = %c, "node route refused: wider than /16 or overlapping this node");
                }
                ok
            })
            .collect();
        out.sort_by_key(|(c, v)| (c.to_string(), *v));
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    /// Makes the agent's routes exactly `routes`: replaced (idempotent), and the agent's
    /// routes not among them deleted. A route the kernel refuses (its node not on a local
    /// network) is logged and skipped; the others are still made.
    pub fn sync_routes(&self, routes: &[(Ipv4Net, Ipv4Addr)]) -> Result<(), NetError> {
        let want: BTreeSet<String> = routes.iter().map(|(c, _)| c.to_string()).collect();
        let shown = ip(&["-4", "route", "show", "proto", ROUTE_PROTO])?;
        for line in shown.lines() {
            let Some(dst) = line.split_whitespace().next() else {
                continue;
            };
            if !want.contains(dst) {
                ip(&["-4", "route", "del", dst, "proto", ROUTE_PROTO])?;
            }
        }
        for (cidr, via) in routes {
            let (c, v) = (cidr.to_string(), via.to_string());
            if let Err(e) = ip(&[
                "-4",
                "route",
                "replace",
                &c,
                "via",
                &v,
                "proto",
                ROUTE_PROTO,
            ]) {
                tracing::warn!(cidr = c, via = v, error = %e, "cannot route to a node's pods");
            }
        }
        Ok(())
    }
}

fn own_addr_in(c: &Ipv4Net, own: Option<Ipv4Addr>) -> bool {
    own.is_some_and(|a| c.contains(a))
}
