//! Cluster DNS on the node (kube-dns's job, per node as k3s's NodeLocal DNSCache): a
//! server on port 53 (UDP and TCP) of the pod bridge's gateway address, which every pod of
//! the node reaches without a NAT rule, and the `/etc/resolv.conf` and `/etc/hosts` each pod
//! gets.
//!
//! - [`names`]: the names under `cluster.local`, from the [`baton_proto::ServiceTable`] the
//!   node already follows (persisted, so the node answers while offline too):
//!   `<svc>.<ns>.svc.cluster.local` is the ClusterIP, or a headless Service's ready pod IPs.
//! - [`server`]: answers those names itself (NXDOMAIN at once for one that does not exist,
//!   an empty NOERROR for a type other than A of a known name); relays every other query to
//!   the node's upstream resolvers ([`upstream`]), a bounded number at a time.
//! - [`files`]: a pod's resolv.conf (kubelet's `dnsPolicy` rules) and hosts file.
//!
//! The wire format is `hickory-proto`'s header, name and question codec (see
//! [`server::Resolver::answer`] for why no more of it). No thread of its own: tasks on the
//! agent's runtime.

pub mod files;
pub mod names;
pub mod server;
pub mod upstream;

/// The cluster's DNS domain (kubelet's `--cluster-domain` default).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Where the node's upstream resolvers are read from (kubelet's `--resolv-conf` default).
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot listen for DNS on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}
