//! Which pod to evict under disk pressure, as kubelet ranks them: BestEffort pods first
//! (no container asks for or is limited in cpu or memory), then by how far the pod's disk
//! use exceeds its request (Baton has no ephemeral-storage requests yet, so the use
//! itself), largest first. Pure; the node loop measures and acts.

use baton_proto::PodSpec;

/// A running pod as the ranking sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub uid: String,
    pub best_effort: bool,
    /// Bytes the pod uses on the data disk (logs, writable layers, emptyDirs).
    pub usage: u64,
    /// Bytes it asked for on that disk.
    pub request: u64,
}

/// Kubernetes' BestEffort QoS class: no container (init ones included) has a cpu or memory
/// request or limit.
pub fn is_best_effort(spec: &PodSpec) -> bool {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter())
        .all(|c| {
            let r = &c.resources;
            r.cpu_request_millis == 0
                && r.cpu_limit_millis.is_none()
                && r.memory_request_bytes == 0
                && r.memory_limit_bytes.is_none()
        })
}

/// The candidates in eviction order: the first is evicted first. Ties go by uid, so the
/// same inputs always give the same answer.
pub fn rank(mut pods: Vec<Candidate>) -> Vec<Candidate> {
    pods.sort_by(|a, b| {
        b.best_effort
            .cmp(&a.best_effort)
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

    fn c(uid: &str, best_effort: bool, usage: u64, request: u64) -> Candidate {
        Candidate {
            uid: uid.into(),
            best_effort,
            usage,
            request,
        }
    }

    fn order(pods: Vec<Candidate>) -> Vec<String> {
        rank(pods).into_iter().map(|c| c.uid).collect()
    }

    #[test]
    fn best_effort_first_then_usage_above_requests() {
        assert_eq!(
            order(vec![
                c("burstable-big", false, 900, 0),
                c("besteffort-small", true, 10, 0),
                c("besteffort-big", true, 500, 0),
                c("within-request", false, 1000, 1000),
                c("over-request", false, 300, 100),
            ]),
            [
                "besteffort-big",
                "besteffort-small",
                "burstable-big",
                "over-request",
                "within-request"
            ]
        );
        assert_eq!(
            order(vec![c("b", true, 1, 0), c("a", true, 1, 0)]),
            ["a", "b"]
        );
        assert!(rank(vec![]).is_empty());
    }

    #[test]
    fn best_effort_means_no_request_or_limit_anywhere() {
        use baton_proto::{BString, BVec, ContainerSpec, PullPolicy, Resources, RestartPolicy};
        let ctr = |resources: Resources| ContainerSpec {
            name: BString::new("c").unwrap(),
            image: BString::new("i").unwrap(),
            image_pull_policy: PullPolicy::IfNotPresent,
            command: BVec::new(),
            args: BVec::new(),
            env: BVec::new(),
            working_dir: None,
            ports: BVec::new(),
            resources,
            volume_mounts: BVec::new(),
            liveness_probe: None,
            readiness_probe: None,
            startup_probe: None,
            security: Default::default(),
        };
        let none = Resources {
            cpu_request_millis: 0,
            cpu_limit_millis: None,
            memory_request_bytes: 0,
            memory_limit_bytes: None,
        };
        let pod = |init: Resources| PodSpec {
            name: BString::new("p").unwrap(),
            uid: BString::new("u").unwrap(),
            host_network: false,
            restart_policy: RestartPolicy::Always,
            termination_grace_secs: 1,
            containers: BVec::from_vec(vec![ctr(none)]).unwrap(),
            init_containers: BVec::from_vec(vec![ctr(init)]).unwrap(),
            volumes: BVec::new(),
            image_pull_secrets: BVec::new(),
        };
        assert!(is_best_effort(&pod(none)));
        assert!(!is_best_effort(&pod(Resources {
            memory_limit_bytes: Some(1 << 20),
            ..none
        })));
    }
}
