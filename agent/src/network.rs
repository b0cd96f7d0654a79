//! Pod networking: per-node bridge, per-pod netns + veth, NAT and hostPort forwarding.
//!
//! The model is the CNI bridge plugin's: one Linux bridge per node holding the gateway address
//! `.1` of the node's pod CIDR, one named network namespace per pod with a veth pair (host end
//! on the bridge, the peer as `eth0` inside), and a MASQUERADE rule for traffic leaving the pod
//! CIDR. It is driven through the `ip` and `iptables` commands: they are on every image we
//! target, their behaviour is well known, and shelling out keeps netlink code out of the agent.
//!
//! Several agents may run on one machine, even in one network namespace (the e2e tests do), so
//! every name here derives from the node name: the bridge `bt-<hash(node)>`, the iptables chains
//! `<bridge>-nat` / `<bridge>-fwd`, the pod netns `bt-<hash(node, pod)>` and its host veth
//! `bv<hash(node, pod)>`, and the address files `ipam-<bridge>/` under the state dir.
//!
//! hostPort is a userspace TCP forwarder ([`PortForward`]) rather than DNAT: it works for
//! connections to 127.0.0.1 as well, needs no `route_localnet`, and leaves no kernel state
//! behind when the agent dies.

use std::fmt;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Where `ip netns add` puts its namespace files.
const NETNS_DIR: &str = "/run/netns";
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
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("port forwarding needs a tokio runtime")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> NetError + '_ {
    move |source| NetError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An IPv4 network, e.g. `10.42.7.0/24`. The address is always the network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// `addr` is masked down to the network address. A pod network needs room for the gateway
    /// and at least one pod, so the prefix must be at most 30.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, NetError> {
        let cidr = || format!("{addr}/{prefix}");
        if prefix > 30 {
            return Err(NetError::InvalidCidr {
                cidr: cidr(),
                reason: "prefix must be at most 30",
            });
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix))
    }

    /// The `n`th address of the network (0 is the network address).
    fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + n)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip).wrapping_sub(u32::from(self.addr)) < self.size()
    }

    /// The bridge's address: the first host.
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1)
    }

    /// Addresses pods may get: every host but the gateway (no network or broadcast address).
    fn pod_addrs(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        (2..self.size() - 1).map(|n| self.nth(n))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| NetError::InvalidCidr {
            cidr: s.to_owned(),
            reason,
        };
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| bad("expected ADDR/PREFIX"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = p.parse().map_err(|_| bad("prefix is not a number"))?;
        Self::new(addr, prefix)
    }
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

    fn ipam_dir(&self) -> PathBuf {
        self.cfg.state_dir.join(format!("ipam-{}", self.cfg.bridge))
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
            netns: format!("bt-{h}"),
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
        enable_ip_forward()?;

        let cidr = self.cfg.pod_cidr.to_string();
        let nat = self.nat_chain();
        ensure_chain("nat", &nat)?;
        iptables(&["-t", "nat", "-F", &nat])?;
        iptables(&[
            "-t",
            "nat",
            "-A",
            &nat,
            "-s",
            &cidr,
            "!",
            "-o",
            br,
            "-j",
            "MASQUERADE",
        ])?;
        ensure_jump("nat", "POSTROUTING", &nat)?;

        let fwd = self.forward_chain();
        ensure_chain("filter", &fwd)?;
        iptables(&["-t", "filter", "-F", &fwd])?;
        iptables(&["-t", "filter", "-A", &fwd, "-i", br, "-j", "ACCEPT"])?;
        iptables(&["-t", "filter", "-A", &fwd, "-o", br, "-j", "ACCEPT"])?;
        ensure_jump("filter", "FORWARD", &fwd)?;
        tracing::info!(cidr = %self.cfg.pod_cidr, "node network ready");
        Ok(())
    }

    /// Removes everything [`Network::setup_node`] and [`Network::create_pod`] made: every pod
    /// with an address, the iptables chains and their jumps, and the bridge. Idempotent. For
    /// decommissioning a node and for tests; the agent does not call it on a normal restart.
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
        let _g = self.guard();
        for (table, parent, chain) in [
            ("nat", "POSTROUTING", self.nat_chain()),
            ("filter", "FORWARD", self.forward_chain()),
        ] {
            while iptables(&["-t", table, "-D", parent, "-j", &chain]).is_ok() {}
            note(chain_exists(table, &chain).and_then(|exists| {
                if exists {
                    iptables(&["-t", table, "-F", &chain])?;
                    iptables(&["-t", table, "-X", &chain])?;
                }
                Ok(())
            }));
        }
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

    /// The address of every pod that has one, from the address files.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>, NetError> {
        let dir = self.ipam_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err(&dir))?;
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue; // a temp file of an allocation in progress
            };
            let path = entry.path();
            let owner = fs::read_to_string(&path).map_err(io_err(&path))?;
            out.push((ip, owner));
        }
        out.sort();
        Ok(out)
    }

    /// Returns the pod's address, allocating a free one if it has none.
    ///
    /// One file per address, named by the address and holding the pod uid. A new file is
    /// written under a temporary name and hard-linked into place: `link` fails if the name
    /// exists, so two allocators (even in two processes) can never both get an address, and a
    /// crash never leaves a claimed address without its owner.
    fn allocate(&self, pod_uid: &str) -> Result<Ipv4Addr, NetError> {
        if let Some((ip, _)) = self.allocations()?.into_iter().find(|(_, o)| o == pod_uid) {
            return Ok(ip);
        }
        let dir = self.ipam_dir();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            short_hash(&[pod_uid], 12)
        ));
        // Durably, and the link below synced too: after a power cut an address is claimed
        // by its pod or not at all, never by an empty file that nobody would ever free.
        crate::durable::write(&tmp, pod_uid.as_bytes(), 0o644).map_err(io_err(&tmp))?;
        // Round robin from the last address handed out, like CNI's host-local IPAM: an
        // address just freed is reused last, so clients that still hold the old pod's MAC
        // for it in their neighbour cache are not sent to a dead port.
        let addrs: Vec<Ipv4Addr> = self.cfg.pod_cidr.pod_addrs().collect();
        let last_file = self
            .cfg
            .state_dir
            .join(format!("ipam-{}.last", self.cfg.bridge));
        let start = fs::read_to_string(&last_file)
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .and_then(|last| addrs.iter().position(|a| *a == last))
            .map_or(0, |i| i + 1);
        let result = (|| {
            for ip in addrs[start..].iter().chain(&addrs[..start]).copied() {
                let path = dir.join(ip.to_string());
                match fs::hard_link(&tmp, &path) {
                    Ok(()) => {
                        crate::durable::sync_parent(&path).map_err(io_err(&path))?;
                        // Best effort and unsynced on purpose: losing it only makes reuse
                        // come sooner. Atomic all the same, so a reader never sees half.
                        let _ = crate::durable::write_unsynced(
                            &last_file,
                            ip.to_string().as_bytes(),
                            0o644,
                        );
                        return Ok(ip);
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
            Err(NetError::Exhausted(self.cfg.pod_cidr))
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    fn free(&self, pod_uid: &str) -> Result<(), NetError> {
        let dir = self.ipam_dir();
        for (ip, owner) in self.allocations()? {
            if owner == pod_uid {
                let path = dir.join(ip.to_string());
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Runs a command, returning stdout; a non-zero exit becomes [`NetError::Command`] with the
/// command line and its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, NetError> {
    let command = || format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| NetError::Spawn {
            command: command(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError::Command {
            command: command(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn ip(args: &[&str]) -> Result<String, NetError> {
    run("ip", args)
}

/// iptables with `-w`: agents and tests change rules concurrently, and without it a second
/// writer fails at once on the xtables lock.
fn iptables(args: &[&str]) -> Result<String, NetError> {
    let mut all = vec!["-w"];
    all.extend_from_slice(args);
    run("iptables", &all)
}

/// Whether `name` exists, in netns `ns` or the agent's own.
fn link_exists(ns: Option<&str>, name: &str) -> Result<bool, NetError> {
    let mut args = Vec::new();
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    args.extend(["link", "show", "dev", name]);
    match ip(&args) {
        Ok(_) => Ok(true),
        Err(NetError::Command { stderr, .. }) if stderr.contains("does not exist") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `table` has `chain`. Read from the table's full listing rather than from the error of
/// listing one chain: iptables-nft 1.8.9 reports a missing chain as "incompatible".
fn chain_exists(table: &str, chain: &str) -> Result<bool, NetError> {
    let rules = iptables(&["-t", table, "-S"])?;
    Ok(rules
        .lines()
        .any(|l| l.strip_prefix("-N ").map(str::trim) == Some(chain)))
}

fn ensure_chain(table: &str, chain: &str) -> Result<(), NetError> {
    if !chain_exists(table, chain)? {
        if let Err(e) = iptables(&["-t", table, "-N", chain]) {
            if !chain_exists(table, chain)? {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Appends `-j chain` to `parent` unless it is there.
fn ensure_jump(table: &str, parent: &str, chain: &str) -> Result<(), NetError> {
    let rules = iptables(&["-t", table, "-S", parent])?;
    let jump = format!("-A {parent} -j {chain}");
    if !rules.lines().any(|l| l.trim() == jump) {
        iptables(&["-t", table, "-A", parent, "-j", chain])?;
    }
    Ok(())
}

/// Pods reach beyond the node only if the agent's namespace forwards. Written only when off,
/// so that a read-only `/proc/sys` with forwarding already on is not an error.
fn enable_ip_forward() -> Result<(), NetError> {
    let path = Path::new("/proc/sys/net/ipv4/ip_forward");
    let on = fs::read_to_string(path).map_err(io_err(path))?;
    if on.trim() != "1" {
        fs::write(path, "1").map_err(io_err(path))?;
    }
    Ok(())
}

/// Most connections one forwarder keeps open; more are refused, so that a flood cannot exhaust
/// the agent's file descriptors.
const MAX_FORWARDED_CONNECTIONS: usize = 512;
/// How long connecting to the pod may take before the client's connection is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A hostPort: listens on the agent's side and copies each connection to the pod.
///
/// Dropping it aborts its task, which closes the listener and every connection it forwards
/// (shortly after, on the runtime's next poll of the task).
pub struct PortForward {
    local: SocketAddr,
    target: SocketAddr,
    task: JoinHandle<()>,
}

impl PortForward {
    /// Listens on `0.0.0.0:host_port` in the agent's network namespace. Must be called within a
    /// tokio runtime. Binding happens before this returns, so a taken port is reported here.
    pub fn start(host_port: u16, target: SocketAddr) -> Result<Self, NetError> {
        Self::start_on(SocketAddr::from(([0, 0, 0, 0], host_port)), target)
    }

    /// Like [`PortForward::start`] on a chosen address; port 0 picks a free port (see
    /// [`PortForward::local_addr`]).
    pub fn start_on(bind: SocketAddr, target: SocketAddr) -> Result<Self, NetError> {
        let handle = tokio::runtime::Handle::try_current().map_err(NetError::NoRuntime)?;
        let listen_err = |source| NetError::Listen { addr: bind, source };
        let std_listener = std::net::TcpListener::bind(bind).map_err(listen_err)?;
        std_listener.set_nonblocking(true).map_err(listen_err)?;
        let local = std_listener.local_addr().map_err(listen_err)?;
        let listener = {
            let _enter = handle.enter();
            TcpListener::from_std(std_listener).map_err(listen_err)?
        };
        let task = handle.spawn(forward_loop(listener, target));
        tracing::info!(%local, %target, "port forward started");
        Ok(Self {
            local,
            target,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts until aborted. The connections live in a [`JoinSet`] owned by this future, so
/// aborting the forwarder also aborts (and closes) all of them.
async fn forward_loop(listener: TcpListener, target: SocketAddr) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    if conns.len() >= MAX_FORWARDED_CONNECTIONS {
                        tracing::warn!(%peer, %target, "too many forwarded connections; refusing");
                        continue;
                    }
                    conns.spawn(forward_one(client, target));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn forward_one(mut client: TcpStream, target: SocketAddr) {
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%target, error = %e, "cannot connect to pod");
            return;
        }
        Err(_) => {
            tracing::debug!(%target, "connecting to pod timed out");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%target, error = %e, "forwarded connection ended with an error");
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
