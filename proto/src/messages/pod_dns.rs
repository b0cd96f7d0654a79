//! A pod's name resolution where it differs from Kubernetes' default: `dnsPolicy`,
//! `dnsConfig` and `hostAliases`. The default (`ClusterFirst`, neither of the others) is
//! [`crate::PodSpec::dns`] `None`, one byte on the wire.

use core::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{BString, BVec};

/// `dnsConfig.nameservers`: Kubernetes' limit, the most a resolver reads.
pub const MAX_DNS_NAMESERVERS: usize = 3;
/// `dnsConfig.searches`: Kubernetes' limits, 32 domains of 2048 characters in all.
pub const MAX_DNS_SEARCHES: usize = 32;
pub const MAX_DNS_SEARCH_CHARS: usize = 2048;
/// `dnsConfig.options` (Kubernetes sets no limit; glibc reads a line of them).
pub const MAX_DNS_OPTIONS: usize = 16;
/// `hostAliases` entries, and the hostnames of one (Kubernetes sets no limit).
pub const MAX_HOST_ALIASES: usize = 32;
pub const MAX_HOST_ALIAS_NAMES: usize = 16;

/// Kubernetes' `dnsPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DnsPolicy {
    /// Cluster DNS, except for a `hostNetwork` pod, which gets the node's resolv.conf.
    #[default]
    ClusterFirst,
    /// Cluster DNS, also for a `hostNetwork` pod.
    ClusterFirstWithHostNet,
    /// The node's resolv.conf (the agent's `--resolv-conf`).
    Default,
    /// Only what `dnsConfig` says.
    None,
}

/// `dnsPolicy`, `dnsConfig` (merged into the policy's resolv.conf as kubelet merges it) and
/// `hostAliases` (lines appended to the pod's `/etc/hosts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodDns {
    pub policy: DnsPolicy,
    pub nameservers: BVec<IpAddr, MAX_DNS_NAMESERVERS>,
    /// Domains, a trailing dot allowed.
    pub searches: BVec<BString<254>, MAX_DNS_SEARCHES>,
    pub options: BVec<DnsOption, MAX_DNS_OPTIONS>,
    pub host_aliases: BVec<HostAlias, MAX_HOST_ALIASES>,
}

/// One resolv.conf option: `name` or `name:value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsOption {
    pub name: BString<64>,
    pub value: Option<BString<64>>,
}

/// One `/etc/hosts` line the pod gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostAlias {
    pub ip: IpAddr,
    pub hostnames: BVec<BString<253>, MAX_HOST_ALIAS_NAMES>,
}
