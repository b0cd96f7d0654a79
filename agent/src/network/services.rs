//! The Service proxy's rules, kube-proxy's iptables mode: the [`ServiceTable`] the
//! coordinator sends, turned into nat rules written whole in one `iptables-restore
//! --noflush` commit (the hostPort pattern).
//!
//! - `<bridge>-svc` (nat, jumped from PREROUTING and OUTPUT) sends each Service port's
//!   ClusterIP, its NodePort on any local address and, for a LoadBalancer, its port on the
//!   node's own address (k3s's ServiceLB on bare metal) to the port's chain `<bridge>-p<h>`.
//!   NodePort and LoadBalancer traffic is masqueraded (marked with [`MASQ_MARK`]), as
//!   kube-proxy does for `externalTrafficPolicy: Cluster`; ClusterIP traffic keeps the
//!   client's source address.
//! - `<bridge>-p<h>` picks one endpoint chain at random (`-m statistic --mode random`, the
//!   i-th of n with probability 1/(n-i)); under `sessionAffinity: ClientIP` a client seen
//!   within the timeout (`-m recent`) goes back to the endpoint it had.
//! - `<bridge>-e<h>` DNATs to `podIP:targetPort`; a pod reaching itself through its Service
//!   (hairpin) and loopback sources are masqueraded, or the reply would skip the DNAT.
//! - `<bridge>-svr` (filter, jumped from INPUT, OUTPUT and first in FORWARD) rejects a
//!   Service port without endpoints (TCP reset, ICMP port unreachable), so a client fails
//!   at once instead of hanging.
//!
//! - `<bridge>-mq` (nat) masquerades pod traffic leaving the node, except to other nodes'
//!   pod ranges, which the same sync routes through their nodes (`routes`, host-gw).
//!
//! Chains of Services gone are flushed and deleted in the same commit. The rules belong to
//! the kernel: established connections keep their conntrack entries across a rewrite and
//! an agent restart, which writes the persisted table back before anything else.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use baton_proto::{Protocol, ServiceEntry, ServiceTable};

use super::command::{chains_with_prefix, iptables_restore};
use super::hostport::MASQ_MARK;
use super::{short_hash, Ipv4Net, NetError, Network};

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn reject_with(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp-reset",
        Protocol::Udp => "icmp-port-unreachable",
    }
}

/// The rule sets of one table (`nat` or `filter`) being written.
#[derive(Default)]
struct Script {
    chains: BTreeSet<String>,
    rules: String,
}

impl Script {
    fn chain(&mut self, name: &str) {
        self.chains.insert(name.to_owned());
    }
    fn rule(&mut self, chain: &str, rest: &str) {
        let _ = writeln!(self.rules, "-A {chain} {rest}");
    }
    /// The table's section: its chains declared (hence flushed), then `stale` ones
    /// flushed and deleted, then the rules.
    fn render(&self, table: &str, stale: &[String]) -> String {
        let mut s = format!("*{table}\n");
        for c in self.chains.iter().chain(stale) {
            let _ = writeln!(s, ":{c} - [0:0]");
        }
        for c in stale {
            let _ = writeln!(s, "-X {c}");
        }
        s.push_str(&self.rules);
        s.push_str("COMMIT\n");
        s
    }
}

impl Network {
    /// The nat chain every Service address goes through.
    pub fn service_chain(&self) -> String {
        format!("{}-svc", self.cfg.bridge)
    }

    /// The filter chain rejecting Service ports without endpoints.
    pub fn service_reject_chain(&self) -> String {
        format!("{}-svr", self.cfg.bridge)
    }

    /// The prefixes of the per-port and per-endpoint chains.
    pub(super) fn service_port_prefix(&self) -> String {
        format!("{}-p", self.cfg.bridge)
    }
    pub(super) fn endpoint_prefix(&self) -> String {
        format!("{}-e", self.cfg.bridge)
    }

    /// The chain of a Service's `i`-th port, and of one endpoint of it: names derived from
    /// the Service, port and endpoint, so an unchanged one keeps its name (and its
    /// `-m recent` list) across rewrites.
    fn port_chain(&self, s: &ServiceEntry, i: usize) -> String {
        let p = &s.ports[i];
        let key = format!("{}:{}/{}", s.name, p.port, proto_name(p.protocol));
        format!("{}{}", self.service_port_prefix(), short_hash(&[&key], 12))
    }
    fn endpoint_chain(&self, s: &ServiceEntry, i: usize, ip: Ipv4Addr) -> String {
        let p = &s.ports[i];
        let key = format!("{}:{}/{}", s.name, p.port, proto_name(p.protocol));
        format!(
            "{}{}",
            self.endpoint_prefix(),
            short_hash(&[&key, &ip.to_string()], 12)
        )
    }

    /// The `iptables-restore --noflush` input that makes the Service chains hold exactly
    /// `table` (module docs). `node_addr` is where LoadBalancer ports answer; `stale` the
    /// per-port and per-endpoint chains that exist now, of which those not needed any more
    /// are deleted.
    pub fn service_script(
        &self,
        table: &ServiceTable,
        node_addr: Option<Ipv4Addr>,
        stale_nat: &[String],
    ) -> String {
        let (svc, svr, mq) = (
            self.service_chain(),
            self.service_reject_chain(),
            self.masq_chain(),
        );
        let mut nat = Script::default();
        let mut filter = Script::default();
        nat.chain(&svc);
        filter.chain(&svr);
        // Pod to pod across nodes keeps its source (host-gw); the rest is masqueraded.
        nat.chain(&mq);
        for (cidr, _) in self.remote_routes(&table.routes, node_addr) {
            nat.rule(&mq, &format!("-d {cidr} -j RETURN"));
        }
        nat.rule(&mq, "-j MASQUERADE");
        // NodePorts come after every ClusterIP rule, as kube-proxy's KUBE-NODEPORTS does.
        let mut node_ports = Vec::new();
        // Where LoadBalancer ports answer: this node's address, unless only other nodes
        // serve them (labelled ones, `ServiceTable::lb_nodes`).
        let lb_addr = node_addr.filter(|a| table.serves_load_balancers(*a));
        // A headless Service (no ClusterIP) is only a DNS name.
        for s in table.services.iter().filter(|s| !s.vip.is_unspecified()) {
            for (i, p) in s.ports.iter().enumerate() {
                let proto = proto_name(p.protocol);
                let m = format!("-p {proto} -m {proto} --dport {}", p.port);
                let eps: Vec<(Ipv4Addr, u16)> = s
                    .endpoints
                    .iter()
                    .filter_map(|e| {
                        let port = e.target_ports.get(i).copied().unwrap_or(0);
                        (port != 0).then_some((e.ip, port))
                    })
                    .collect();
                let vip = format!("-d {}/32 {m}", s.vip);
                let mut entries = vec![(vip, false)];
                if let (true, Some(a)) = (s.load_balancer, lb_addr) {
                    entries.push((format!("-d {a}/32 {m}"), true));
                }
                let np = p.node_port.map(|n| {
                    format!("-p {proto} -m {proto} --dport {n} -m addrtype --dst-type LOCAL")
                });
                if eps.is_empty() {
                    let reject = format!("-j REJECT --reject-with {}", reject_with(p.protocol));
                    for e in entries.iter().map(|(e, _)| e).chain(&np) {
                        filter.rule(&svr, &format!("{e} {reject}"));
                    }
                    continue;
                }
                let chain = self.port_chain(s, i);
                nat.chain(&chain);
                for (e, masq) in entries {
                    if masq {
                        nat.rule(&svc, &format!("{e} -j MARK --set-xmark {MASQ_MARK}"));
                    }
                    nat.rule(&svc, &format!("{e} -j {chain}"));
                }
                if let Some(n) = np {
                    node_ports.push((n, chain.clone()));
                }
                let ep_chains: Vec<String> = eps
                    .iter()
                    .map(|(ip, _)| self.endpoint_chain(s, i, *ip))
                    .collect();
                if s.affinity_secs > 0 {
                    for c in &ep_chains {
                        nat.rule(
                            &chain,
                            &format!(
                                "-m recent --name {c} --mask 255.255.255.255 --rsource --rcheck \
                                 --seconds {} --reap -j {c}",
                                s.affinity_secs
                            ),
                        );
                    }
                }
                let n = eps.len();
                for (k, ((ip, port), c)) in eps.iter().zip(&ep_chains).enumerate() {
                    if k + 1 < n {
                        let prob = 1.0 / (n - k) as f64;
                        nat.rule(
                            &chain,
                            &format!("-m statistic --mode random --probability {prob:.10} -j {c}"),
                        );
                    } else {
                        nat.rule(&chain, &format!("-j {c}"));
                    }
                    nat.chain(c);
                    for src in [format!("{ip}/32"), "127.0.0.0/8".to_owned()] {
                        nat.rule(c, &format!("-s {src} -j MARK --set-xmark {MASQ_MARK}"));
                    }
                    let recent = if s.affinity_secs > 0 {
                        format!("-m recent --name {c} --mask 255.255.255.255 --rsource --set ")
                    } else {
                        String::new()
                    };
                    nat.rule(
                        c,
                        &format!(
                            "-p {proto} {recent}-m {proto} -j DNAT --to-destination {ip}:{port}"
                        ),
                    );
                }
            }
        }
        for (n, chain) in node_ports {
            nat.rule(&svc, &format!("{n} -j MARK --set-xmark {MASQ_MARK}"));
            nat.rule(&svc, &format!("{n} -j {chain}"));
        }
        let stale: Vec<String> = stale_nat
            .iter()
            .filter(|c| !nat.chains.contains(*c))
            .cloned()
            .collect();
        nat.render("nat", &stale) + &filter.render("filter", &[])
    }

    /// Makes the Service chains hold exactly `table`, in one `iptables-restore` run. The
    /// chains must exist and be jumped to ([`Network::setup_node`]).
    #[tracing::instrument(skip_all, fields(node = %self.cfg.node, services = table.services.len()))]
    pub fn sync_services(
        &self,
        table: &ServiceTable,
        node_addr: Option<Ipv4Addr>,
    ) -> Result<(), NetError> {
        let _g = self.guard();
        let mut existing = chains_with_prefix("nat", &self.service_port_prefix())?;
        existing.extend(chains_with_prefix("nat", &self.endpoint_prefix())?);
        let script = self.service_script(table, node_addr, &existing);
        iptables_restore(&script)?;
        let routes: Vec<(Ipv4Net, Ipv4Addr)> = self.remote_routes(&table.routes, node_addr);
        self.sync_routes(&routes)?;
        tracing::debug!(
            routes = routes.len(),
            "service rules and node routes written"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests;
