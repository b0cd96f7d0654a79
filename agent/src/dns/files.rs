//! A pod's `/etc/resolv.conf` and `/etc/hosts`, as kubelet writes them: files under the
//! pod's directory, bind-mounted read-only over whatever the image has.
//!
//! - resolv.conf (`dnsPolicy: ClusterFirst`, the default): the node's DNS server
//!   ([`super::server`]) and the search path of the pod's namespace, `ndots:5`. A
//!   `hostNetwork` pod gets the node's own file instead, as in Kubernetes.
//! - hosts: the localhost lines and `<pod IP> <hostname>`; a `hostNetwork` pod gets the
//!   node's.
//!
//! They are written at each pod start (not fsynced: a pod started again after a reboot
//! gets them anew).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

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

/// resolv.conf for `dnsPolicy: ClusterFirst` in `namespace`.
pub fn cluster_first(namespace: &str, nameserver: Ipv4Addr) -> String {
    let d = CLUSTER_DOMAIN;
    format!("nameserver {nameserver}\nsearch {namespace}.svc.{d} svc.{d} {d}\noptions ndots:5\n")
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
/// gets the node's (`node_resolv`, the agent's `--resolv-conf`, and `/etc/hosts`).
pub fn write(
    pod_dir: &Path,
    pod_name: &str,
    hostname: &str,
    pod_ip: Option<Ipv4Addr>,
    gateway: Ipv4Addr,
    node_resolv: &Path,
) -> Result<(), DnsError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| DnsError::File {
            path: p.to_owned(),
            source,
        })
    };
    let (resolv, hosts) = match pod_ip {
        Some(ip) => (
            cluster_first(namespace_of(pod_name), gateway),
            hosts(ip, hostname),
        ),
        _ => (read(node_resolv)?, read(Path::new(NODE_HOSTS))?),
    };
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

    #[test]
    fn cluster_first_and_hosts() {
        assert_eq!(namespace_of("shop_web-1"), "shop");
        assert_eq!(namespace_of("web-1"), "default");
        assert_eq!(
            cluster_first("shop", Ipv4Addr::new(10, 42, 1, 1)),
            "nameserver 10.42.1.1\nsearch shop.svc.cluster.local svc.cluster.local \
             cluster.local\noptions ndots:5\n"
        );
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
        std::fs::write(&node, "nameserver 192.168.1.1\n").unwrap();
        let (pod, gw) = ("shop_web-1", Ipv4Addr::new(10, 42, 1, 1));
        write(
            dir.path(),
            pod,
            "web-1",
            Some(Ipv4Addr::new(10, 42, 1, 7)),
            gw,
            &node,
        )
        .unwrap();
        let m = mounts(dir.path());
        assert_eq!(m.len(), 2);
        assert!(m.iter().all(|m| m.read_only));
        assert_eq!(m[0].destination, "/etc/resolv.conf");
        let text = std::fs::read_to_string(&m[0].source).unwrap();
        assert!(text.contains("search shop.svc.cluster.local"), "{text}");
        // hostNetwork: the node's file.
        write(dir.path(), pod, "web-1", None, gw, &node).unwrap();
        assert_eq!(
            std::fs::read_to_string(&m[0].source).unwrap(),
            "nameserver 192.168.1.1\n"
        );
    }
}
