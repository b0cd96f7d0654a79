//! hostPort by kernel DNAT, as CNI's portmap plugin does it: one nat chain per node
//! (`<bridge>-hp`), jumped to from PREROUTING and OUTPUT for local destinations, holding a
//! DNAT rule per (pod, hostPort). The rules are the kernel's, not the agent process's: they
//! keep answering while the agent is replaced (an OTA switch, a crash, a restart), as the
//! pods keep running. Only a change of the set of pods rewrites them, and `reset` removes them.
//!
//! A port is also reserved by a socket bound on it while the agent runs ([`PortReservation`]),
//! as kube-proxy's port opener did: DNAT would otherwise take a port from a host process
//! listening on it without a word. The socket never sees a packet (DNAT happens before
//! delivery); it only makes a second bind fail, and a pod whose port is taken fails to start
//! with a clear reason.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use super::command::iptables_restore;
use super::{NetError, Network};

/// The mark of hostPort packets that need their source rewritten (from the node's loopback,
/// or from a pod: hairpin), masqueraded in POSTROUTING by the node's nat chain. The bit
/// portmap uses for the same purpose, so that both agreeing on one host is harmless; clear of
/// kube-proxy's 0x4000 (masquerade) and 0x8000 (drop).
pub(super) const MASQ_MARK: &str = "0x2000/0x2000";

/// Transport of a hostPort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4 {
    Tcp,
    Udp,
}

impl L4 {
    fn as_str(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        }
    }
}

/// One hostPort of one pod: `host_port` on the node's local addresses goes to
/// `pod_ip:container_port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPortRule {
    pub host_port: u16,
    pub proto: L4,
    pub pod_ip: Ipv4Addr,
    pub container_port: u16,
}

impl Network {
    /// The nat chain holding this node's hostPort DNAT rules.
    pub fn host_port_chain(&self) -> String {
        format!("{}-hp", self.cfg.bridge)
    }

    /// The `iptables-restore --noflush` input that makes the hostPort chain hold exactly
    /// `rules`. Declaring the chain flushes it (and only it) inside the same commit, so the
    /// old rules are replaced by the new ones atomically: there is no moment without them.
    pub fn host_port_script(&self, rules: &[HostPortRule]) -> String {
        let chain = self.host_port_chain();
        let cidr = self.cfg.pod_cidr.to_string();
        let mut s = format!("*nat\n:{chain} - [0:0]\n");
        let mut sorted = rules.to_vec();
        sorted.sort();
        sorted.dedup();
        for r in &sorted {
            let m = format!(
                "-p {p} -m {p} --dport {}",
                r.host_port,
                p = r.proto.as_str()
            );
            // From the node's loopback (needs route_localnet on the bridge) and from pods
            // (hairpin): the pod must answer through the node, so the source is rewritten.
            for src in ["127.0.0.0/8", cidr.as_str()] {
                let _ = writeln!(s, "-A {chain} -s {src} {m} -j MARK --set-xmark {MASQ_MARK}");
            }
            let _ = writeln!(
                s,
                "-A {chain} {m} -j DNAT --to-destination {}:{}",
                r.pod_ip, r.container_port
            );
        }
        s.push_str("COMMIT\n");
        s
    }

    /// Makes the hostPort chain hold exactly `rules`, in one `iptables-restore` transaction.
    /// The chain must exist ([`Network::setup_node`]).
    #[tracing::instrument(skip_all, fields(node = %self.cfg.node, rules = rules.len()))]
    pub fn sync_host_ports(&self, rules: &[HostPortRule]) -> Result<(), NetError> {
        let script = self.host_port_script(rules);
        let _g = self.guard();
        iptables_restore(&script)?;
        tracing::debug!("hostPort rules written");
        Ok(())
    }
}

/// A hostPort held by a socket on `0.0.0.0:port` while the agent runs (see the module docs).
/// Dropping it frees the port; the DNAT rules do not depend on it.
#[derive(Debug)]
pub struct PortReservation {
    _tcp: Option<TcpListener>,
    _udp: Option<UdpSocket>,
}

impl PortReservation {
    /// Binds `port`: fails if anything else on the node (a host process, another pod's
    /// hostPort of another agent in this network namespace) holds it.
    pub fn take(port: u16, proto: L4) -> Result<Self, NetError> {
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        let err = |source| NetError::PortTaken {
            port,
            proto: proto.as_str(),
            source,
        };
        Ok(match proto {
            L4::Tcp => Self {
                _tcp: Some(TcpListener::bind(addr).map_err(err)?),
                _udp: None,
            },
            L4::Udp => Self {
                _tcp: None,
                _udp: Some(UdpSocket::bind(addr).map_err(err)?),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetConfig;

    #[test]
    fn the_script_rewrites_the_whole_chain_with_one_dnat_per_port() {
        let cfg = NetConfig::derive("n", "/s".into(), Some("10.42.3.0/24")).unwrap();
        let net = Network::new(cfg);
        let hp = net.host_port_chain();
        let rule = |host_port, proto, last, container_port| HostPortRule {
            host_port,
            proto,
            pod_ip: Ipv4Addr::new(10, 42, 3, last),
            container_port,
        };
        // Out of order and twice: the script is sorted and each rule appears once.
        let rules = [
            rule(9000, L4::Udp, 3, 53),
            rule(8080, L4::Tcp, 2, 80),
            rule(8080, L4::Tcp, 2, 80),
        ];
        let want = format!(
            "*nat\n:{hp} - [0:0]\n\
             -A {hp} -s 127.0.0.0/8 -p tcp -m tcp --dport 8080 -j MARK --set-xmark 0x2000/0x2000\n\
             -A {hp} -s 10.42.3.0/24 -p tcp -m tcp --dport 8080 -j MARK --set-xmark 0x2000/0x2000\n\
             -A {hp} -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.42.3.2:80\n\
             -A {hp} -s 127.0.0.0/8 -p udp -m udp --dport 9000 -j MARK --set-xmark 0x2000/0x2000\n\
             -A {hp} -s 10.42.3.0/24 -p udp -m udp --dport 9000 -j MARK --set-xmark 0x2000/0x2000\n\
             -A {hp} -p udp -m udp --dport 9000 -j DNAT --to-destination 10.42.3.3:53\n\
             COMMIT\n"
        );
        assert_eq!(net.host_port_script(&rules), want);
        // No pods: the chain is declared, hence emptied, in the same commit.
        assert_eq!(
            net.host_port_script(&[]),
            format!("*nat\n:{hp} - [0:0]\nCOMMIT\n")
        );
        assert!(hp.starts_with(&net.config().bridge) && hp.len() <= 28);
    }
}
