//! A pod's `/etc/resolv.conf` and `/etc/hosts`, as kubelet writes them: files under the
//! pod's directory, bind-mounted read-only over whatever the image has.
//!
//! - resolv.conf by the pod's `dnsPolicy` ([`baton_proto::PodDns`]), as kubelet writes it:
//!   `ClusterFirst` (the default) is the node's DNS server ([`super::server`]) and the
//!   search path of the pod's namespace followed by the node's own search domains,
//!   `ndots:5`, except for a `hostNetwork` pod, which
//!   gets the node's file (the agent's `--resolv-conf`), as with `Default`;
//!   `ClusterFirstWithHostNet` is cluster DNS for every pod; `None` is empty. Then
//!   `dnsConfig` is merged in as kubelet merges it: its nameservers and searches appended
//!   (duplicates dropped), its options replacing those of the same name.
//! - hosts: the localhost lines and `<pod IP> <hostname>`; a `hostNetwork` pod gets the
//!   node's. `hostAliases` are appended to either, as kubelet does.
//!
//! They are written at each pod start (not fsynced: a pod started again after a reboot
//! gets them anew).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use baton_proto::{DnsPolicy, PodDns};

use super::{DnsError, CLUSTER_DOMAIN};
use crate::runtime::Mount;

/// The node's hosts file, which a `hostNetwork` pod sees.
const NODE_HOSTS: &str = "/etc/hosts";

/// The files under `pod_dir`, and where they go in a container.
fn paths(pod_dir: &Path) -> [(PathBuf, &'static str); 2] {
    let etc = pod_dir.join("etc");
    [
        (etc.join("resolv.conf"), "/etc/resolv.conf"),
        (etc.join("hosts"), "/etc/hosts"),
    ]
}

/// A pod's namespace: the coordinator names a pod of a namespace other than `default`
/// `<namespace>_<name>`.
pub fn namespace_of(pod_name: &str) -> &str {
    pod_name.split_once('_').map_or("default", |(ns, _)| ns)
}

/// The most search domains a pod's resolv.conf gets, as kubelet's `MaxDNSSearchPaths`.
const MAX_SEARCHES: usize = 32;

/// resolv.conf for `dnsPolicy: ClusterFirst` in `namespace`: the cluster's search path,
/// then the node's own search domains (`node_searches`, from its resolv.conf), as kubelet
/// appends them, so that a pod resolves the site's short names as the node does.
pub fn cluster_first(namespace: &str, nameserver: Ipv4Addr, node_searches: &[String]) -> String {
    let d = CLUSTER_DOMAIN;
    let mut search = vec![
        format!("{namespace}.svc.{d}"),
        format!("svc.{d}"),
        d.to_owned(),
    ];
    for s in node_searches {
        let s = s.trim_end_matches('.');
        if !s.is_empty() && !search.iter().any(|x| x == s) && search.len() < MAX_SEARCHES {
            search.push(s.to_owned());
        }
    }
    format!(
        "nameserver {nameserver}\nsearch {}\noptions ndots:5\n",
        search.join(" ")
    )
}

/// The settings of a resolv.conf (kubelet's `DNSConfig`).
#[derive(Debug, Default, PartialEq, Eq)]
struct Resolv {
    nameservers: Vec<String>,
    searches: Vec<String>,
    options: Vec<String>,
}

/// What a resolver reads of a resolv.conf (later `search` and `domain` lines win).
fn parse(text: &str) -> Resolv {
    let mut r = Resolv::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => r.nameservers.extend(words.next().map(str::to_owned)),
            Some("search" | "domain") => r.searches = words.map(str::to_owned).collect(),
            Some("options") => r.options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    r
}

impl Resolv {
    /// kubelet's `appendDNSConfig`: nameservers and searches appended without duplicates,
    /// an option replacing the one of the same name (in place) or appended.
    fn merge(&mut self, dns: &PodDns) {
        for n in dns.nameservers.iter().map(|n| n.to_string()) {
            if !self.nameservers.contains(&n) {
                self.nameservers.push(n);
            }
        }
        for s in dns.searches.iter() {
            if !self.searches.iter().any(|x| x == s.as_str()) {
                self.searches.push(s.to_string());
            }
        }
        for o in dns.options.iter() {
            let text = match &o.value {
                Some(v) => format!("{}:{v}", o.name.as_str()),
                None => o.name.to_string(),
            };
            let name = |opt: &str| opt.split(':').next() == Some(o.name.as_str());
            match self.options.iter_mut().find(|x| name(x)) {
                Some(x) => *x = text,
                None => self.options.push(text),
            }
        }
    }

    /// The file; as kubelet, at most 3 nameservers (a resolver reads no more) and 32
    /// search domains.
    fn render(&self) -> String {
        let mut out = String::new();
        for n in self.nameservers.iter().take(3) {
            out.push_str(&format!("nameserver {n}\n"));
        }
        let lines = [("search", &self.searches), ("options", &self.options)];
        for (key, words) in lines {
            if !words.is_empty() {
                let n = words.len().min(32);
                out.push_str(&format!("{key} {}\n", words[..n].join(" ")));
            }
        }
        out
    }
}

/// The pod's resolv.conf: by `dns`'s policy (ClusterFirst without), from the cluster's
/// settings in `namespace`, or `node` (the node's file), then `dns`'s config merged in.
pub fn resolv_conf(
    dns: Option<&PodDns>,
    host_network: bool,
    namespace: &str,
    nameserver: Ipv4Addr,
    node: &str,
) -> String {
    let policy = dns.map_or(DnsPolicy::ClusterFirst, |d| d.policy);
    let base = if node_file(policy, host_network) {
        node.to_owned()
    } else if policy == DnsPolicy::None {
        String::new()
    } else {
        cluster_first(namespace, nameserver, &parse(node).searches)
    };
    match dns {
        Some(d) if !(d.nameservers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            let mut r = parse(&base);
            r.merge(d);
            r.render()
        }
        // Nothing to merge: the file as it is (the node's with its comments).
        _ => base,
    }
}

/// Whether the pod's resolv.conf starts from the node's.
fn node_file(policy: DnsPolicy, host_network: bool) -> bool {
    match policy {
        DnsPolicy::Default => true,
        DnsPolicy::ClusterFirst => host_network,
        DnsPolicy::ClusterFirstWithHostNet | DnsPolicy::None => false,
    }
}

/// `hosts` with the pod's `hostAliases` appended, as kubelet appends them.
pub fn with_aliases(mut hosts: String, dns: Option<&PodDns>) -> String {
    let Some(aliases) = dns.map(|d| &d.host_aliases).filter(|a| !a.is_empty()) else {
        return hosts;
    };
    hosts.push_str("\n# Entries added by HostAliases.\n");
    for a in aliases.iter() {
        let names: Vec<&str> = a.hostnames.iter().map(|h| h.as_str()).collect();
        hosts.push_str(&format!("{}\t{}\n", a.ip, names.join("\t")));
    }
    hosts
}

/// kubelet's hosts file of a pod.
pub fn hosts(ip: Ipv4Addr, hostname: &str) -> String {
    format!(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n\
         {ip}\t{hostname}\n"
    )
}

/// Writes the files of pod `pod_name`: `pod_ip` is `None` for a `hostNetwork` pod, which
/// gets the node's hosts file (and, by its policy, its resolv.conf: `node_resolv`, the
/// agent's `--resolv-conf`); `dns` is the pod's DNS settings.
pub fn write(
    pod_dir: &Path,
    pod_name: &str,
    hostname: &str,
    pod_ip: Option<Ipv4Addr>,
    dns: Option<&PodDns>,
    gateway: Ipv4Addr,
    node_resolv: &Path,
) -> Result<(), DnsError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| DnsError::File {
            path: p.to_owned(),
            source,
        })
    };
    let host_network = pod_ip.is_none();
    let policy = dns.map_or(DnsPolicy::ClusterFirst, |d| d.policy);
    let node = if node_file(policy, host_network) {
        read(node_resolv)?
    } else if policy == DnsPolicy::None {
        String::new()
    } else {
        // Only its search domains are used here; the DNS server, which forwards to its
        // nameservers, reports a file it cannot read.
        std::fs::read_to_string(node_resolv).unwrap_or_default()
    };
    let resolv = resolv_conf(dns, host_network, namespace_of(pod_name), gateway, &node);
    let hosts = match pod_ip {
        Some(ip) => hosts(ip, hostname),
        None => read(Path::new(NODE_HOSTS))?,
    };
    let hosts = with_aliases(hosts, dns);
    let [(rp, _), (hp, _)] = paths(pod_dir);
    let write = |p: &Path, text: &str| {
        let dir = p.parent().unwrap_or(pod_dir);
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(p, text))
            .map_err(|source| DnsError::File {
                path: p.to_owned(),
                source,
            })
    };
    write(&rp, &resolv)?;
    write(&hp, &hosts)
}

/// The read-only mounts of the pod's files that exist (a pod started by an agent before
/// these files has none, and keeps its image's).
pub fn mounts(pod_dir: &Path) -> Vec<Mount> {
    paths(pod_dir)
        .into_iter()
        .filter(|(p, _)| p.is_file())
        .map(|(source, dest)| Mount {
            source,
            destination: dest.to_owned(),
            read_only: true,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{BString, BVec, DnsOption, HostAlias};

    #[test]
    fn cluster_first_and_hosts() {
        assert_eq!(namespace_of("shop_web-1"), "shop");
        assert_eq!(namespace_of("web-1"), "default");
        assert_eq!(
            cluster_first("shop", Ipv4Addr::new(10, 42, 1, 1), &[]),
            "nameserver 10.42.1.1\nsearch shop.svc.cluster.local svc.cluster.local \
             cluster.local\noptions ndots:5\n"
        );
        // The node's search domains follow the cluster's, once each, at most 32 in all.
        let node: Vec<String> = ["home.arpa.", "cluster.local", "lab.example"]
            .into_iter()
            .map(str::to_owned)
            .chain((0..40).map(|i| format!("d{i}.example")))
            .collect();
        let conf = cluster_first("shop", Ipv4Addr::new(10, 42, 1, 1), &node);
        let search: Vec<&str> = conf
            .lines()
            .find_map(|l| l.strip_prefix("search "))
            .unwrap()
            .split(' ')
            .collect();
        assert_eq!(
            search[..6],
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "home.arpa",
                "lab.example",
                "d0.example"
            ]
        );
        assert_eq!(search.len(), 32);
        let h = hosts(Ipv4Addr::new(10, 42, 1, 7), "web-1");
        assert!(h.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("\n10.42.1.7\tweb-1\n"));
    }

    #[test]
    fn written_and_mounted() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            mounts(dir.path()).is_empty(),
            "none before they are written"
        );
        let node = dir.path().join("node-resolv.conf");
        std::fs::write(&node, "nameserver 192.168.1.1\nsearch home.arpa\n").unwrap();
        let (pod, gw) = ("shop_web-1", Ipv4Addr::new(10, 42, 1, 1));
        write(
            dir.path(),
            pod,
            "web-1",
            Some(Ipv4Addr::new(10, 42, 1, 7)),
            None,
            gw,
            &node,
        )
        .unwrap();
        let m = mounts(dir.path());
        assert_eq!(m.len(), 2);
        assert!(m.iter().all(|m| m.read_only));
        assert_eq!(m[0].destination, "/etc/resolv.conf");
        let text = std::fs::read_to_string(&m[0].source).unwrap();
        assert!(
            text.contains(
                "search shop.svc.cluster.local svc.cluster.local cluster.local home.arpa\n"
            ),
            "{text}"
        );
        // hostNetwork: the node's file.
        write(dir.path(), pod, "web-1", None, None, gw, &node).unwrap();
        assert_eq!(
            std::fs::read_to_string(&m[0].source).unwrap(),
            "nameserver 192.168.1.1\nsearch home.arpa\n"
        );
    }

    fn dns(policy: DnsPolicy) -> PodDns {
        PodDns {
            policy,
            ..PodDns::default()
        }
    }

    const NODE: &str = "# from DHCP\nnameserver 192.168.1.1\nsearch home.arpa\noptions edns0\n";
    const GW: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 1);

    /// kubelet's policies: which file a pod starts from, with and without hostNetwork.
    #[test]
    fn policies() {
        let cluster = cluster_first("shop", GW, &["home.arpa".to_owned()]);
        assert!(cluster
            .contains("search shop.svc.cluster.local svc.cluster.local cluster.local home.arpa\n"));
        let conf = |d: Option<&PodDns>, host| resolv_conf(d, host, "shop", GW, NODE);
        assert_eq!(conf(None, false), cluster);
        assert_eq!(
            conf(None, true),
            NODE,
            "hostNetwork with ClusterFirst: the node's"
        );
        let with_host_net = dns(DnsPolicy::ClusterFirstWithHostNet);
        assert_eq!(conf(Some(&with_host_net), true), cluster);
        assert_eq!(conf(Some(&with_host_net), false), cluster);
        let default = dns(DnsPolicy::Default);
        assert_eq!(conf(Some(&default), false), NODE);
        assert_eq!(conf(Some(&default), true), NODE);
        assert_eq!(conf(Some(&dns(DnsPolicy::None)), false), "");
    }

    /// dnsConfig merged as kubelet merges it: appended without duplicates, options by name.
    #[test]
    fn dns_config_merged() {
        let mut d = dns(DnsPolicy::None);
        d.nameservers = BVec::from_vec(vec!["192.0.2.53".parse().unwrap()]).unwrap();
        d.searches = BVec::from_vec(vec![BString::new("lab.example").unwrap()]).unwrap();
        d.options = BVec::from_vec(vec![
            DnsOption {
                name: BString::new("ndots").unwrap(),
                value: Some(BString::new("2").unwrap()),
            },
            DnsOption {
                name: BString::new("edns0").unwrap(),
                value: None,
            },
        ])
        .unwrap();
        assert_eq!(
            resolv_conf(Some(&d), false, "shop", GW, NODE),
            "nameserver 192.0.2.53\nsearch lab.example\noptions ndots:2 edns0\n"
        );
        d.policy = DnsPolicy::ClusterFirst;
        d.searches = BVec::from_vec(vec![
            BString::new("svc.cluster.local").unwrap(),
            BString::new("lab.example").unwrap(),
        ])
        .unwrap();
        assert_eq!(
            resolv_conf(Some(&d), false, "shop", GW, NODE),
            "nameserver 10.42.1.1\nnameserver 192.0.2.53\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local home.arpa lab.example\n\
             options ndots:2 edns0\n"
        );
        d.policy = DnsPolicy::Default;
        d.nameservers = BVec::from_vec(vec!["192.168.1.1".parse().unwrap()]).unwrap();
        assert_eq!(
            resolv_conf(Some(&d), false, "shop", GW, NODE),
            "nameserver 192.168.1.1\nsearch home.arpa svc.cluster.local lab.example\n\
             options edns0 ndots:2\n"
        );
    }

    #[test]
    fn host_aliases_appended() {
        let mut d = dns(DnsPolicy::ClusterFirst);
        let base = hosts(Ipv4Addr::new(10, 42, 1, 7), "web-1");
        assert_eq!(with_aliases(base.clone(), Some(&d)), base);
        assert_eq!(with_aliases(base.clone(), None), base);
        d.host_aliases = BVec::from_vec(vec![HostAlias {
            ip: "10.1.2.3".parse().unwrap(),
            hostnames: BVec::from_vec(vec![
                BString::new("db.lab").unwrap(),
                BString::new("db").unwrap(),
            ])
            .unwrap(),
        }])
        .unwrap();
        assert_eq!(
            with_aliases(base.clone(), Some(&d)),
            format!("{base}\n# Entries added by HostAliases.\n10.1.2.3\tdb.lab\tdb\n")
        );
    }
}
