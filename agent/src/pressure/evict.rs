//! Which pod to evict under node pressure, as kubelet ranks them (its eviction manager's
//! `rankMemoryPressure` / `rankDiskPressureFunc` / `rankPIDPressure`): pods whose use
//! exceeds their request first, then lower priority, then by how far the use exceeds the
//! request, largest first. A BestEffort pod requests nothing, so any use exceeds it. Baton
//! has no ephemeral-storage requests yet, so for disk the request is 0; pods ask for no
//! pids either. A critical pod (priority at least `system-cluster-critical`'s) is never a
//! candidate: the node's own function depends on it. Pure; the node loop measures and acts.

use baton_proto::PodSpec;

/// A running pod as the ranking sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub uid: String,
    pub priority: i32,
    /// What the pod uses of the resource under pressure (bytes on the data disk, working
    /// set bytes, or processes).
    pub usage: u64,
    /// What it asked for of that resource.
    pub request: u64,
}

impl Candidate {
    /// The candidate for `spec`'s pod.
    pub fn of(uid: String, spec: &PodSpec, usage: u64, request: u64) -> Self {
        Self {
            uid,
            priority: spec.priority,
            usage,
            request,
        }
    }

    fn exceeds(&self) -> bool {
        self.usage > self.request
    }
}

/// The candidates in eviction order, the first evicted first, critical pods left out. Ties
/// go by uid, so the same inputs always give the same answer.
pub fn rank(mut pods: Vec<Candidate>) -> Vec<Candidate> {
    pods.retain(|p| p.priority < baton_proto::SYSTEM_CRITICAL_PRIORITY);
    pods.sort_by(|a, b| {
        b.exceeds()
            .cmp(&a.exceeds())
            .then_with(|| a.priority.cmp(&b.priority))
            .then_with(|| {
                b.usage
                    .saturating_sub(b.request)
                    .cmp(&a.usage.saturating_sub(a.request))
            })
            .then_with(|| b.usage.cmp(&a.usage))
            .then_with(|| a.uid.cmp(&b.uid))
    });
    pods
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(uid: &str, priority: i32, usage: u64, request: u64) -> Candidate {
        Candidate {
            uid: uid.into(),
            priority,
            usage,
            request,
        }
    }

    fn order(pods: Vec<Candidate>) -> Vec<String> {
        rank(pods).into_iter().map(|c| c.uid).collect()
    }

    #[test]
    fn above_requests_first_then_priority_then_usage_above_requests() {
        assert_eq!(
            order(vec![
                c("within-request", 0, 1000, 1000),
                c("besteffort-small", 0, 10, 0),
                c("over-request", 0, 300, 100),
                c("besteffort-big", 0, 500, 0),
                c("important-big", 1000, 5000, 0),
                c("important-within", 1000, 10, 100),
            ]),
            [
                "besteffort-big",
                "over-request",
                "besteffort-small",
                "important-big",
                "within-request",
                "important-within",
            ]
        );
        assert_eq!(order(vec![c("b", 0, 1, 0), c("a", 0, 1, 0)]), ["a", "b"]);
        assert!(rank(vec![]).is_empty());
    }

    #[test]
    fn critical_pods_are_never_candidates() {
        use baton_proto::{SYSTEM_CRITICAL_PRIORITY, SYSTEM_NODE_CRITICAL_PRIORITY};
        assert_eq!(
            order(vec![
                c("node-critical", SYSTEM_NODE_CRITICAL_PRIORITY, 1 << 30, 0),
                c("cluster-critical", SYSTEM_CRITICAL_PRIORITY, 1 << 30, 0),
                c("almost", SYSTEM_CRITICAL_PRIORITY - 1, 1, 0),
                c("small", 0, 1, 10),
            ]),
            ["almost", "small"]
        );
        assert!(rank(vec![c("only", SYSTEM_NODE_CRITICAL_PRIORITY, 9, 0)]).is_empty());
    }
}
