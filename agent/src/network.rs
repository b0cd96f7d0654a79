//! Pod networking: per-node bridge, per-pod netns + veth, NAT and hostPorts.
//!
//! The model is the CNI bridge plugin's: one Linux bridge per node holding the gateway address
//! `.1` of the node's pod CIDR, one named network namespace per pod with a veth pair (host end
//! on the bridge, the peer as `eth0` inside), and a MASQUERADE rule for traffic leaving the pod
//! CIDR. It is driven through the `ip` and `iptables` commands: they are on every image we
//! target, their behaviour is well known, and shelling out keeps netlink code out of the agent.
//!
//! Several agents may run on one machine, even in one network namespace (the e2e tests do), so
//! every name here derives from the node name: the bridge `bt-<hash(node)>`, the iptables chains
//! `<bridge>-nat` / `<bridge>-fwd` / `<bridge>-hp`, the pod netns `bt-<hash(node, pod)>` and its
//! host veth `bv<hash(node, pod)>`, and the address files `ipam-<bridge>/` under the state dir.
//!
//! hostPort is kernel DNAT ([`hostport`]) rather than a forwarder in the agent process. A
//! userspace forwarder (what this was until session 10) dies with the agent, so every agent
//! switch, crash or restart refused the port for ~5 s although the pod kept running (issue
//! 13 wants 0). DNAT rules belong to the kernel like the pods belong to it: they outlive the
//! agent, are rewritten whole and atomically whenever the set of pods changes, and go only
//! when a pod does (or with `baton-agent reset`). Connections to 127.0.0.1 work through
//! `route_localnet` on the bridge plus a MASQUERADE of marked packets, as in CNI's portmap.

mod cidr;
mod command;
mod hostport;
mod ipam;
mod routes;
mod services;

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest, Sha256};

pub use cidr::Ipv4Net;
use command::{
    chain_exists, chains_with_prefix, enable_sysctl, ensure_chain, ensure_jump, ensure_jump_first,
    ip, iptables, iptables_restore, link_exists,
};
pub use hostport::{HostPortRule, PortReservation, L4};

/// Where `ip netns add` puts its namespace files.
const NETNS_DIR: &str = "/run/netns";
/// How the hostPort chain is jumped to: packets for one of the node's own addresses.
const LOCAL_DST: &[&str] = &["-m", "addrtype", "--dst-type", "LOCAL"];
/// Interface name limit of the kernel (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid node name {0:?}")]
    InvalidNode(String),
    #[error("invalid pod uid {0:?}")]
    InvalidPodUid(String),
    #[error("invalid pod cidr {cidr:?}: {reason}")]
    InvalidCidr { cidr: String, reason: &'static str },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("i/o error on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no free address left in {0}")]
    Exhausted(Ipv4Net),
    #[error("hostPort {port}/{proto} is already in use on the node")]
    PortTaken {
        port: u16,
        proto: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> NetError + '_ {
    move |source| NetError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The network namespace (under `/run/netns`) of pod `uid` on `node`.
pub fn pod_netns_name(node: &str, uid: &str) -> String {
    format!("bt-{}", short_hash(&[node, uid], 12))
}

/// First `n` hex characters of the SHA-256 of `parts`, joined by NUL so that ("ab","c") and
/// ("a","bc") differ.
fn short_hash(parts: &[&str], n: usize) -> String {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(p.as_bytes());
    }
    let mut s = hex::encode(h.finalize());
    s.truncate(n);
    s
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub node: String,
    pub bridge: String,
    pub pod_cidr: Ipv4Net,
    pub state_dir: PathBuf,
}

impl NetConfig {
    /// Derives the node's names: bridge `bt-` plus 8 hex characters of the node name's hash,
    /// and, when `pod_cidr` is `None`, the CIDR `10.42.<hash % 250 + 1>.0/24`.
    pub fn derive(
        node: &str,
        state_dir: PathBuf,
        pod_cidr: Option<&str>,
    ) -> Result<Self, NetError> {
        if node.is_empty() || node.len() > 253 || node.chars().any(|c| c.is_control()) {
            return Err(NetError::InvalidNode(node.to_owned()));
        }
        let hash = short_hash(&[node], 8);
        let pod_cidr = match pod_cidr {
            Some(c) => c.parse()?,
            None => {
                let n = u32::from_str_radix(&hash, 16).unwrap_or(0);
                let third = u8::try_from(n % 250 + 1).unwrap_or(1);
                Ipv4Net::new(Ipv4Addr::new(10, 42, third, 0), 24)?
            }
        };
        Ok(Self {
            node: node.to_owned(),
            bridge: format!("bt-{hash}"),
            pod_cidr,
            state_dir,
        })
    }
}

/// A pod's network as the runtime needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNet {
    pub netns_path: PathBuf,
    pub ip: Ipv4Addr,
}

/// A pod's network made again by [`Network::ensure_pod`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub net: PodNet,
    /// The network namespace is a new one: containers still running in the old one are cut
    /// off and must be restarted into it.
    pub new_netns: bool,
}

/// Names derived for one pod.
struct PodNames {
    netns: String,
    host_veth: String,
}

pub struct Network {
    cfg: NetConfig,
    /// Serialises pod setup and teardown in this process. Address files are also safe between
    /// processes (see [`Network::allocate`]); this lock keeps the multi-step `ip` sequences of one
    /// pod from interleaving.
    lock: Mutex<()>,
}

impl Network {
    pub fn new(cfg: NetConfig) -> Self {
        Self {
            cfg,
            lock: Mutex::new(()),
        }
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.cfg.pod_cidr.gateway()
    }

    /// The nat chain holding this node's MASQUERADE rule.
    pub fn nat_chain(&self) -> String {
        format!("{}-nat", self.cfg.bridge)
    }

    /// The filter chain accepting forwarded traffic of this node's bridge.
    pub fn forward_chain(&self) -> String {
        format!("{}-fwd", self.cfg.bridge)
    }

    fn names(&self, pod_uid: &str) -> Result<PodNames, NetError> {
        if pod_uid.is_empty()
            || pod_uid.len() > 253
            || pod_uid.trim() != pod_uid
            || pod_uid.chars().any(|c| c.is_control())
        {
            return Err(NetError::InvalidPodUid(pod_uid.to_owned()));
        }
        let h = short_hash(&[&self.cfg.node, pod_uid], 12);
        let names = PodNames {
            netns: pod_netns_name(&self.cfg.node, pod_uid),
            host_veth: format!("bv{h}"),
        };
        debug_assert!(names.host_veth.len() <= MAX_IFNAME);
        Ok(names)
    }

    fn guard(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bridge's MAC: locally administered, unicast, derived from the node name.
    fn bridge_mac(&self) -> String {
        let h = short_hash(&["bridge-mac", &self.cfg.node], 10);
        format!(
            "02:{}:{}:{}:{}:{}",
            &h[0..2],
            &h[2..4],
            &h[4..6],
            &h[6..8],
            &h[8..10]
        )
    }

    /// Brings up the node's bridge, forwarding and NAT. Idempotent.
    #[tracing::instrument(skip_all, fields(node = %self.cfg.node, bridge = %self.cfg.bridge))]
    pub fn setup_node(&self) -> Result<(), NetError> {
        let _g = self.guard();
        let br = self.cfg.bridge.as_str();
        if !link_exists(None, br)? {
            if let Err(e) = ip(&["link", "add", br, "type", "bridge"]) {
                // Lost a race with another setup of the same node: fine if it is there now.
                if !link_exists(None, br)? {
                    return Err(e);
                }
            }
        }
        // A fixed MAC: otherwise the bridge takes the lowest MAC of its ports and changes
        // it as pods come and go. Pods cache the gateway's MAC, and once the port whose MAC
        // the bridge had is deleted (a pod stopped), their replies to the node go nowhere
        // until the cache expires: a rollout e2e run saw requests hang for 10 s that way.
        ip(&["link", "set", br, "address", &self.bridge_mac()])?;
        let gw = format!("{}/{}", self.gateway(), self.cfg.pod_cidr.prefix());
        ip(&["addr", "replace", &gw, "dev", br])?;
        ip(&["link", "set", br, "up"])?;
        enable_sysctl("/proc/sys/net/ipv4/ip_forward")?;
        // `curl 127.0.0.1:<hostPort>` on the node: a DNATed packet from 127.0.0.1 may leave
        // through the bridge (and is then masqueraded, see `hostport`).
        enable_sysctl(&format!("/proc/sys/net/ipv4/conf/{br}/route_localnet"))?;

        // Both static chains in one transaction: declaring a chain flushes it in the same
        // commit, so a restarting agent never leaves a moment without them.
        let (nat, fwd, cidr) = (self.nat_chain(), self.forward_chain(), &self.cfg.pod_cidr);
        let mark = hostport::MASQ_MARK;
        // Pod traffic leaving the node is masqueraded in `<bridge>-mq`, except to other
        // nodes' pods (host-gw routes): the Service writer keeps it; a new one masquerades
        // everything until then, as before there were routes.
        let mq = self.masq_chain();
        if !chain_exists("nat", &mq)? {
            iptables_restore(&format!(
                "*nat\n:{mq} - [0:0]\n-A {mq} -j MASQUERADE\nCOMMIT\n"
            ))?;
        }
        iptables_restore(&format!(
            "*nat\n:{nat} - [0:0]\n\
             -A {nat} -m mark --mark {mark} -j MASQUERADE\n\
             -A {nat} -s {cidr} ! -o {br} -j {mq}\n\
             COMMIT\n\
             *filter\n:{fwd} - [0:0]\n\
             -A {fwd} -i {br} -j ACCEPT\n\
             -A {fwd} -o {br} -j ACCEPT\n\
             COMMIT\n"
        ))?;
        ensure_jump("nat", "POSTROUTING", &[], &nat)?;
        ensure_jump("filter", "FORWARD", &[], &fwd)?;
        // Never flushed here: the rules of the pods a previous agent left running keep
        // answering until this agent has adopted them and writes the same set again.
        let hp = self.host_port_chain();
        ensure_chain("nat", &hp)?;
        for parent in ["PREROUTING", "OUTPUT"] {
            ensure_jump("nat", parent, LOCAL_DST, &hp)?;
        }
        // The Service proxy's chains, likewise never flushed here: the node loop writes the
        // persisted table into them before it runs (`services`).
        let (svc, svr) = (self.service_chain(), self.service_reject_chain());
        ensure_chain("nat", &svc)?;
        for parent in ["PREROUTING", "OUTPUT"] {
            ensure_jump("nat", parent, &[], &svc)?;
        }
        ensure_chain("filter", &svr)?;
        for parent in ["INPUT", "OUTPUT"] {
            ensure_jump("filter", parent, &[], &svr)?;
        }
        ensure_jump_first("filter", "FORWARD", &svr)?;
        tracing::info!(cidr = %self.cfg.pod_cidr, "node network ready");
        Ok(())
    }

    /// Removes everything [`Network::setup_node`] and [`Network::create_pod`] made: every pod
    /// with an address, the iptables chains (hostPorts too) and their jumps, and the bridge.
    /// Idempotent. For decommissioning a node and for tests; the agent does not call it on a normal restart.
    #[tracing::instrument(skip_all, fields(node = %self.cfg.node, bridge = %self.cfg.bridge))]
    pub fn teardown_node(&self) -> Result<(), NetError> {
        // Best effort throughout: a failing step must not keep the later ones from running.
        let mut first_err = None;
        let mut note = |r: Result<(), NetError>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "node teardown step failed");
                first_err.get_or_insert(e);
            }
        };
        match self.allocations() {
            Ok(pods) => {
                for (_, uid) in pods {
                    note(self.delete_pod(&uid));
                }
            }
            Err(e) => note(Err(e)),
        }
        note(self.remove_state());
        let _g = self.guard();
        let hp = self.host_port_chain();
        for (table, parent, matches, chain) in [
            ("nat", "POSTROUTING", &[][..], self.nat_chain()),
            ("filter", "FORWARD", &[], self.forward_chain()),
            ("nat", "PREROUTING", LOCAL_DST, hp.clone()),
            ("nat", "OUTPUT", LOCAL_DST, hp.clone()),
            ("nat", "PREROUTING", &[], self.service_chain()),
            ("nat", "OUTPUT", &[], self.service_chain()),
            ("filter", "INPUT", &[], self.service_reject_chain()),
            ("filter", "FORWARD", &[], self.service_reject_chain()),
            ("filter", "OUTPUT", &[], self.service_reject_chain()),
        ] {
            let mut delete = vec!["-t", table, "-D", parent];
            delete.extend_from_slice(matches);
            delete.extend(["-j", &chain]);
            while iptables(&delete).is_ok() {}
        }
        let mut chains = vec![
            ("nat", self.nat_chain()),
            ("filter", self.forward_chain()),
            ("nat", hp),
            ("nat", self.service_chain()),
            ("filter", self.service_reject_chain()),
            ("nat", self.masq_chain()),
        ];
        // The per-port chains jump to the per-endpoint ones: flush all before deleting any.
        for prefix in [self.service_port_prefix(), self.endpoint_prefix()] {
            match chains_with_prefix("nat", &prefix) {
                Ok(found) => chains.extend(found.into_iter().map(|c| ("nat", c))),
                Err(e) => note(Err(e)),
            }
        }
        for (table, chain) in &chains {
            let _ = iptables(&["-t", table, "-F", chain]);
        }
        for (table, chain) in chains {
            note(chain_exists(table, &chain).and_then(|exists| {
                if exists {
                    iptables(&["-t", table, "-F", &chain])?;
                    iptables(&["-t", table, "-X", &chain])?;
                }
                Ok(())
            }));
        }
        note(self.sync_routes(&[]));
        note(link_exists(None, &self.cfg.bridge).and_then(|exists| {
            if exists {
                ip(&["link", "del", &self.cfg.bridge])?;
            }
            Ok(())
        }));
        first_err.map_or(Ok(()), Err)
    }

    /// Creates (or completes, or just returns) the pod's netns, veth pair and address.
    #[tracing::instrument(skip_all, fields(node = %self.cfg.node, pod = %pod_uid))]
    pub fn create_pod(&self, pod_uid: &str) -> Result<PodNet, NetError> {
        let names = self.names(pod_uid)?;
        let _g = self.guard();
        let netns_path = Path::new(NETNS_DIR).join(&names.netns);
        let fresh = !netns_path.exists();
        let result = self.create_pod_locked(pod_uid, &names, &netns_path, fresh);
        if result.is_err() && fresh {
            // Do not leave a half-made pod behind; an existing one is left for delete_pod.
            if let Err(e) = self.delete_pod_locked(pod_uid, &names) {
                tracing::warn!(error = %e, "cleanup after failed pod setup failed");
            }
        }
        result
    }

    fn create_pod_locked(
        &self,
        pod_uid: &str,
        n: &PodNames,
        netns_path: &Path,
        fresh: bool,
    ) -> Result<PodNet, NetError> {
        let ip_addr = self.allocate(pod_uid)?;
        if fresh && link_exists(None, &n.host_veth)? {
            // The netns file was removed while processes kept the namespace alive: this veth
            // leads into that orphan, not into the namespace made below.
            ip(&["link", "del", &n.host_veth])?;
        }
        if !netns_path.exists() {
            ip(&["netns", "add", &n.netns])?;
        }
        let ns = Some(n.netns.as_str());
        if !link_exists(None, &n.host_veth)? {
            if link_exists(ns, "eth0")? {
                ip(&["-n", &n.netns, "link", "del", "eth0"])?;
            }
            ip(&[
                "link",
                "add",
                &n.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &n.netns,
            ])?;
        }
        ip(&["link", "set", &n.host_veth, "master", &self.cfg.bridge])?;
        // A pod reaching its own hostPort (hairpin): with br_netfilter the DNATed frame goes
        // back out of the port it came in by, which a bridge refuses unless the port allows it
        // (CNI bridge's hairpinMode, kubenet's hairpin-veth).
        ip(&[
            "link",
            "set",
            &n.host_veth,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ])?;
        ip(&["link", "set", &n.host_veth, "up"])?;
        let addr = format!("{ip_addr}/{}", self.cfg.pod_cidr.prefix());
        ip(&["-n", &n.netns, "link", "set", "lo", "up"])?;
        ip(&["-n", &n.netns, "addr", "replace", &addr, "dev", "eth0"])?;
        ip(&["-n", &n.netns, "link", "set", "eth0", "up"])?;
        // The node may still map this address to a deleted pod's MAC.
        ip(&["neigh", "flush", "to", &ip_addr.to_string()])?;
        let gw = self.gateway().to_string();
        ip(&[
            "-n", &n.netns, "route", "replace", "default", "via", &gw, "dev", "eth0",
        ])?;
        tracing::info!(ip = %ip_addr, netns = %n.netns, "pod network ready");
        Ok(PodNet {
            netns_path: netns_path.to_owned(),
            ip: ip_addr,
        })
    }

    /// The network an earlier agent process made for the pod, if it is complete: an address
    /// allocated to it, its netns and its host veth. Changes nothing; for re-adopting pods
    /// after an agent restart.
    pub fn existing_pod(&self, pod_uid: &str) -> Result<Option<PodNet>, NetError> {
        let names = self.names(pod_uid)?;
        let _g = self.guard();
        let Some((ip, _)) = self
            .allocations()?
            .into_iter()
            .find(|(_, owner)| owner == pod_uid)
        else {
            return Ok(None);
        };
        let netns_path = Path::new(NETNS_DIR).join(&names.netns);
        if !netns_path.exists() || !link_exists(None, &names.host_veth)? {
            return Ok(None);
        }
        Ok(Some(PodNet { netns_path, ip }))
    }

    /// The pod's network, made again if any part of it is gone (kubelet recreates a dead
    /// sandbox the same way): its netns removed from outside (`ip netns delete`, a crash,
    /// another process), its host veth deleted, its address file lost. The address stays the
    /// same while its file is there. `None` when it is all there.
    pub fn ensure_pod(&self, pod_uid: &str) -> Result<Option<Sandbox>, NetError> {
        if self.existing_pod(pod_uid)?.is_some() {
            return Ok(None);
        }
        let names = self.names(pod_uid)?;
        let new_netns = !Path::new(NETNS_DIR).join(&names.netns).exists();
        tracing::warn!(pod = %pod_uid, new_netns, "pod sandbox incomplete; making it again");
        Ok(Some(Sandbox {
            net: self.create_pod(pod_uid)?,
            new_netns,
        }))
    }

    /// Removes the pod's veth and netns and frees its address. Idempotent.
    #[tracing::instrument(skip_all, fields(node = %self.cfg.node, pod = %pod_uid))]
    pub fn delete_pod(&self, pod_uid: &str) -> Result<(), NetError> {
        let names = self.names(pod_uid)?;
        let _g = self.guard();
        self.delete_pod_locked(pod_uid, &names)
    }

    fn delete_pod_locked(&self, pod_uid: &str, n: &PodNames) -> Result<(), NetError> {
        if link_exists(None, &n.host_veth)? {
            ip(&["link", "del", &n.host_veth])?;
        }
        if Path::new(NETNS_DIR).join(&n.netns).exists() {
            ip(&["netns", "del", &n.netns])?;
        }
        self.free(pod_uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_hosts() {
        let n: Ipv4Net = "10.42.7.9/24".parse().unwrap();
        assert_eq!(n.to_string(), "10.42.7.0/24");
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 42, 7, 1));
        let hosts: Vec<_> = n.pod_addrs().collect();
        assert_eq!(hosts.first(), Some(&Ipv4Addr::new(10, 42, 7, 2)));
        assert_eq!(hosts.last(), Some(&Ipv4Addr::new(10, 42, 7, 254)));
        assert_eq!(hosts.len(), 253);
        assert!(n.contains(Ipv4Addr::new(10, 42, 7, 255)));
        assert!(!n.contains(Ipv4Addr::new(10, 42, 8, 0)));
        let small: Ipv4Net = "192.168.0.4/30".parse().unwrap();
        assert_eq!(
            small.pod_addrs().collect::<Vec<_>>(),
            vec![Ipv4Addr::new(192, 168, 0, 6)]
        );
        for bad in ["10.0.0.0", "10.0.0.0/31", "10.0.0/24", "10.0.0.0/x", "x/8"] {
            assert!(
                matches!(bad.parse::<Ipv4Net>(), Err(NetError::InvalidCidr { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn names_derive_from_the_node_and_fit_the_kernel() {
        let a = NetConfig::derive("node-a", "/s".into(), None).unwrap();
        let b = NetConfig::derive("node-b", "/s".into(), None).unwrap();
        assert_ne!(a.bridge, b.bridge);
        assert!(a.bridge.len() <= MAX_IFNAME && a.bridge.starts_with("bt-"));
        assert_eq!(a, NetConfig::derive("node-a", "/s".into(), None).unwrap());
        assert_eq!(a.pod_cidr.prefix(), 24);
        let third = a.pod_cidr.addr().octets()[2];
        assert!((1..=250).contains(&third));
        let c = NetConfig::derive("node-a", "/s".into(), Some("10.9.0.0/16")).unwrap();
        assert_eq!(c.pod_cidr.to_string(), "10.9.0.0/16");
        assert!(NetConfig::derive("", "/s".into(), None).is_err());

        let na = Network::new(a).names("pod").unwrap();
        let nb = Network::new(b).names("pod").unwrap();
        assert_ne!(na.netns, nb.netns);
        assert!(na.host_veth.len() <= MAX_IFNAME && na.netns.len() <= MAX_IFNAME);
        assert!(Network::new(c).names(" x").is_err());
    }

    #[test]
    fn a_freed_address_is_reused_last() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NetConfig::derive("n", dir.path().into(), Some("10.1.2.0/29")).unwrap();
        let net = Network::new(cfg.clone());
        let x = net.allocate("x").unwrap();
        net.free("x").unwrap();
        let y = Network::new(cfg).allocate("y").unwrap();
        assert_ne!(x, y, "a just-freed address was handed out again at once");
    }

    #[test]
    fn allocation_is_persistent_unique_and_freed() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NetConfig::derive("n", dir.path().into(), Some("10.1.2.0/29")).unwrap();
        let net = Network::new(cfg.clone());
        let a = net.allocate("a").unwrap();
        let b = net.allocate("b").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 1, 2, 2));
        assert_eq!(b, Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(net.allocate("a").unwrap(), a);
        // A new instance (agent restart) sees the same allocations.
        let again = Network::new(cfg);
        assert_eq!(again.allocate("b").unwrap(), b);
        // A /29 has five pod addresses (.2 to .6).
        for uid in ["c", "d", "e"] {
            again.allocate(uid).unwrap();
        }
        assert!(matches!(again.allocate("g"), Err(NetError::Exhausted(_))));
        again.free("a").unwrap();
        assert_eq!(again.allocate("g").unwrap(), a);
        assert_eq!(again.allocations().unwrap().len(), 5);
    }
}
