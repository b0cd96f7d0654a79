//! Pure pod placement: filter the nodes a pod can run on, then score the rest.
//!
//! Filters, in the order Kubernetes reports them: the node is ready, not cordoned, has no
//! taint the pod does not tolerate (`decide::taints`), its labels (with the implicit
//! `kubernetes.io/{arch,os,hostname}`) satisfy the pod's nodeSelector and required node
//! affinity, it has room for one more pod, and the pod's cpu and memory requests fit what
//! is left of its allocatable resources. Scoring ranks by the summed weights of the
//! preferred node-affinity terms a node matches, then spreads a Deployment's pods (fewest
//! pods of the same owner first), then prefers the least requested node, then the node
//! name, so the same inputs always give the same answer.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::api;
use crate::model::quantity;

pub const LABEL_ARCH: &str = "kubernetes.io/arch";
pub const LABEL_OS: &str = "kubernetes.io/os";
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";
/// Deprecated in Kubernetes but still in old manifests; Baton sets them too.
pub const LABEL_BETA_ARCH: &str = "beta.kubernetes.io/arch";
pub const LABEL_BETA_OS: &str = "beta.kubernetes.io/os";

#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub node: &'a api::Node,
    /// Sum of the requests of the pods already placed on the node.
    pub used: Usage,
    /// Pods of the same owner (Deployment) as the pod being placed already on the node.
    pub pods_of_same_owner: u32,
    /// Host ports already taken on the node by the pods placed there.
    pub host_ports: BTreeSet<HostPort>,
}

/// A port on the node itself: a `hostPort`, or any port of a `hostNetwork` pod.
pub type HostPort = (api::Protocol, u16);

/// The node ports a pod needs. Kubernetes counts every container port of a hostNetwork
/// pod as a host port, since the pod listens on the node's own interfaces.
pub fn host_ports(pod: &api::PodSpec) -> BTreeSet<HostPort> {
    pod.containers
        .iter()
        .flat_map(|c| c.ports.iter())
        .filter_map(|p| match (pod.host_network, p.host_port) {
            (true, _) => Some((p.protocol, p.host_port.unwrap_or(p.container_port))),
            (false, Some(h)) => Some((p.protocol, h)),
            (false, None) => None,
        })
        .collect()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pods: u32,
}

impl Usage {
    pub fn add(&mut self, other: Usage) {
        self.cpu_millis = self.cpu_millis.saturating_add(other.cpu_millis);
        self.memory_bytes = self.memory_bytes.saturating_add(other.memory_bytes);
        self.pods = self.pods.saturating_add(other.pods);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unschedulable {
    /// kubectl-style, e.g. "0/3 nodes are available: 1 node(s) not ready, ...".
    pub reason: String,
}

/// A node's labels as the scheduler sees them: its own plus the well-known ones derived
/// from its status and name, which win over user labels of the same key as the kubelet's
/// do.
pub fn node_labels(node: &api::Node) -> BTreeMap<String, String> {
    let mut labels = node.metadata.labels.clone();
    let s = &node.status;
    for (k, v) in [
        (LABEL_ARCH, &s.arch),
        (LABEL_BETA_ARCH, &s.arch),
        (LABEL_OS, &s.os),
        (LABEL_BETA_OS, &s.os),
        (LABEL_HOSTNAME, &node.metadata.name),
    ] {
        labels.insert(k.to_string(), v.clone());
    }
    labels
}

/// The resources a pod asks for: the sum over its containers of each request, or of the
/// limit where only a limit is given (Kubernetes defaults the request to the limit).
pub fn pod_requests(spec: &api::PodSpec) -> Result<Usage, quantity::QuantityError> {
    let mut total = Usage {
        pods: 1,
        ..Usage::default()
    };
    for c in &spec.containers {
        let r = &c.resources;
        if let Some(cpu) = r.requests.cpu.as_deref().or(r.limits.cpu.as_deref()) {
            total.cpu_millis += u64::from(quantity::parse_cpu_millis(cpu)?);
        }
        if let Some(mem) = r.requests.memory.as_deref().or(r.limits.memory.as_deref()) {
            total.memory_bytes = total
                .memory_bytes
                .saturating_add(quantity::parse_memory_bytes(mem)?);
        }
    }
    Ok(total)
}

/// Why a node was filtered out; the order is the order of the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reject {
    NotReady,
    Unschedulable,
    Taint,
    Selector,
    TooManyPods,
    Cpu,
    Memory,
    Ports,
}

impl Reject {
    fn message(self) -> &'static str {
        match self {
            Reject::NotReady => "node(s) not ready",
            Reject::Unschedulable => "node(s) were unschedulable",
            Reject::Taint => "node(s) had untolerated taint(s)",
            Reject::Selector => "node(s) didn't match Pod's node affinity/selector",
            Reject::TooManyPods => "node(s) had too many pods",
            Reject::Cpu => "node(s) had insufficient cpu",
            Reject::Memory => "node(s) had insufficient memory",
            Reject::Ports => "node(s) didn't have free ports for the requested pod ports",
        }
    }
}

/// Every reason `node` cannot take a pod with `req`, empty when it fits. Not-ready, taints
/// and selector mismatches end the check; the resource checks all report, as in Kubernetes.
fn filter(
    pod: &api::PodSpec,
    req: Usage,
    c: &Candidate<'_>,
    labels: &BTreeMap<String, String>,
) -> Vec<Reject> {
    let status = &c.node.status;
    if !status.ready {
        return vec![Reject::NotReady];
    }
    if c.node.spec.unschedulable {
        return vec![Reject::Unschedulable];
    }
    if super::taints::untolerated(&c.node.spec.taints, &pod.tolerations).is_some() {
        return vec![Reject::Taint];
    }
    if !selects(pod, labels) {
        return vec![Reject::Selector];
    }
    let alloc = status.allocatable;
    let mut rejects = Vec::new();
    if c.used.pods.saturating_add(1) > u32::from(alloc.pods) {
        rejects.push(Reject::TooManyPods);
    }
    if c.used.cpu_millis.saturating_add(req.cpu_millis) > u64::from(alloc.cpu_millis) {
        rejects.push(Reject::Cpu);
    }
    if c.used.memory_bytes.saturating_add(req.memory_bytes) > alloc.memory_bytes {
        rejects.push(Reject::Memory);
    }
    if host_ports(pod).iter().any(|p| c.host_ports.contains(p)) {
        rejects.push(Reject::Ports);
    }
    rejects
}

/// Whether a node with `labels` matches the pod's `nodeSelector` and its required node
/// affinity (any one term).
pub fn selects(pod: &api::PodSpec, labels: &BTreeMap<String, String>) -> bool {
    let required = pod
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required.as_ref());
    pod.node_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && required.is_none_or(|r| {
            r.node_selector_terms
                .iter()
                .any(|t| term_matches(t, labels))
        })
}

/// Whether every expression of `term` matches `labels` (an empty term matches nothing, as
/// in Kubernetes).
pub fn term_matches(term: &api::NodeSelectorTerm, labels: &BTreeMap<String, String>) -> bool {
    use api::NodeSelectorOperator as Op;
    !term.match_expressions.is_empty()
        && term.match_expressions.iter().all(|e| {
            let v = labels.get(&e.key);
            let int = |s: &str| s.parse::<i64>().ok();
            match e.operator {
                Op::In => v.is_some_and(|v| e.values.contains(v)),
                Op::NotIn => v.is_none_or(|v| !e.values.contains(v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
                Op::Gt | Op::Lt => {
                    let (Some(have), Some(bound)) = (
                        v.and_then(|v| int(v)),
                        e.values.first().and_then(|b| int(b)),
                    ) else {
                        return false;
                    };
                    if e.operator == Op::Gt {
                        have > bound
                    } else {
                        have < bound
                    }
                }
            }
        })
}

/// The summed weights of the pod's preferred node-affinity terms that `labels` match.
fn preferred_score(pod: &api::PodSpec, labels: &BTreeMap<String, String>) -> u32 {
    pod.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .map_or(0, |n| {
            n.preferred
                .iter()
                .filter(|p| term_matches(&p.preference, labels))
                .map(|p| p.weight)
                .sum()
        })
}

/// How full the node would be with the pod, in millionths: the mean of the cpu and
/// memory fractions (Kubernetes' LeastAllocated). Integer maths keeps it deterministic.
fn requested_fraction(c: &Candidate<'_>, req: Usage) -> u64 {
    let alloc = c.node.status.allocatable;
    let frac = |used: u64, total: u64| -> u128 {
        if total == 0 {
            return 0;
        }
        u128::from(used) * 1_000_000 / u128::from(total)
    };
    let cpu = frac(
        c.used.cpu_millis.saturating_add(req.cpu_millis),
        u64::from(alloc.cpu_millis),
    );
    let mem = frac(
        c.used.memory_bytes.saturating_add(req.memory_bytes),
        alloc.memory_bytes,
    );
    u64::try_from((cpu + mem) / 2).unwrap_or(u64::MAX)
}

/// Picks the node for `pod` among `candidates`, or says why none fits.
pub fn schedule(pod: &api::PodSpec, candidates: &[Candidate<'_>]) -> Result<String, Unschedulable> {
    let req = pod_requests(pod).map_err(|e| Unschedulable {
        reason: format!("invalid resource request: {e}"),
    })?;
    let mut counts: BTreeMap<Reject, usize> = BTreeMap::new();
    type Key<'a> = (std::cmp::Reverse<u32>, u32, u64, &'a str);
    let mut best: Option<(Key<'_>, &Candidate<'_>)> = None;
    for c in candidates {
        let labels = node_labels(c.node);
        let rejects = filter(pod, req, c, &labels);
        if !rejects.is_empty() {
            for r in rejects {
                *counts.entry(r).or_default() += 1;
            }
            continue;
        }
        let key = (
            std::cmp::Reverse(preferred_score(pod, &labels)),
            c.pods_of_same_owner,
            requested_fraction(c, req),
            c.node.metadata.name.as_str(),
        );
        if best.as_ref().is_none_or(|(k, _)| key < *k) {
            best = Some((key, c));
        }
    }
    if let Some((_, c)) = best {
        return Ok(c.node.metadata.name.clone());
    }
    let reason = if candidates.is_empty() {
        "0/0 nodes are available: no nodes registered".to_string()
    } else {
        let parts: Vec<String> = counts
            .iter()
            .map(|(r, n)| format!("{n} {}", r.message()))
            .collect();
        format!(
            "0/{} nodes are available: {}",
            candidates.len(),
            parts.join(", ")
        )
    };
    Err(Unschedulable { reason })
}

#[cfg(test)]
mod tests;
