//! The one place that converts between domain types ([`crate::api`]) and wire types
//! ([`baton_proto`]).
//!
//! Architecture invariant: no other module builds a `baton_proto` message body out of an
//! `api` object or the other way round. Keeping the mapping here means a change to either
//! side is a change to exactly one file, and the defaults Kubernetes users expect
//! (requests default to limits, `imagePullPolicy` depends on the tag) live in one place.

use std::time::{Duration, UNIX_EPOCH};

use baton_proto as proto;
use baton_proto::{BString, BVec};

use crate::api;
use crate::quantity;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("pod {pod:?}: {field}: {reason}")]
    Field {
        pod: String,
        field: String,
        reason: String,
    },
    #[error("pod {pod:?} has {got} containers; at most {max} are supported")]
    TooManyContainers { pod: String, got: usize, max: usize },
}

fn field_err(pod: &str, field: impl Into<String>, reason: impl ToString) -> WireError {
    WireError::Field {
        pod: pod.to_owned(),
        field: field.into(),
        reason: reason.to_string(),
    }
}

/// Resolved requests and limits of one container. As in Kubernetes, a request left out
/// defaults to the limit when a limit is given, and to zero otherwise.
fn container_resources(
    pod: &str,
    i: usize,
    c: &api::Container,
) -> Result<proto::Resources, WireError> {
    let path = |what: &str| format!("spec.containers[{i}].resources.{what}");
    let cpu = |s: &Option<String>, what: &str| {
        s.as_deref()
            .map(quantity::parse_cpu_millis)
            .transpose()
            .map_err(|e| field_err(pod, path(what), e))
    };
    let mem = |s: &Option<String>, what: &str| {
        s.as_deref()
            .map(quantity::parse_memory_bytes)
            .transpose()
            .map_err(|e| field_err(pod, path(what), e))
    };
    let cpu_limit = cpu(&c.resources.limits.cpu, "limits.cpu")?;
    let mem_limit = mem(&c.resources.limits.memory, "limits.memory")?;
    let cpu_request = cpu(&c.resources.requests.cpu, "requests.cpu")?
        .or(cpu_limit)
        .unwrap_or(0);
    let mem_request = mem(&c.resources.requests.memory, "requests.memory")?
        .or(mem_limit)
        .unwrap_or(0);
    Ok(proto::Resources {
        cpu_request_millis: cpu_request,
        cpu_limit_millis: cpu_limit,
        memory_request_bytes: mem_request,
        memory_limit_bytes: mem_limit,
    })
}

/// Kubernetes' default: `Always` for `:latest` or an untagged image, `IfNotPresent`
/// otherwise. A digest reference (`@sha256:...`) is immutable, so `IfNotPresent`.
pub fn default_pull_policy(image: &str) -> api::PullPolicy {
    if image.contains('@') {
        return api::PullPolicy::IfNotPresent;
    }
    // The tag is after the last ':' that comes after the last '/' (a registry port
    // such as `host:5000/app` is not a tag).
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, "latest")) | None => api::PullPolicy::Always,
        Some(_) => api::PullPolicy::IfNotPresent,
    }
}

fn bstr<const N: usize>(
    pod: &str,
    field: impl Into<String>,
    s: &str,
) -> Result<BString<N>, WireError> {
    BString::new(s).map_err(|e| field_err(pod, field, e))
}

fn bvec<T, const N: usize>(
    pod: &str,
    field: impl Into<String>,
    v: Vec<T>,
) -> Result<BVec<T, N>, WireError> {
    BVec::from_vec(v).map_err(|e| field_err(pod, field, e))
}

/// A scheduled pod as its agent receives it.
pub fn pod_spec(pod: &api::Pod) -> Result<proto::PodSpec, WireError> {
    let name = pod.metadata.name.as_str();
    let spec = &pod.spec;
    if spec.containers.len() > proto::MAX_CONTAINERS_PER_POD {
        return Err(WireError::TooManyContainers {
            pod: name.to_owned(),
            got: spec.containers.len(),
            max: proto::MAX_CONTAINERS_PER_POD,
        });
    }
    let mut containers = Vec::with_capacity(spec.containers.len());
    for (i, c) in spec.containers.iter().enumerate() {
        let p = |f: &str| format!("spec.containers[{i}].{f}");
        let policy = c
            .image_pull_policy
            .unwrap_or_else(|| default_pull_policy(&c.image));
        let strings = |f: &str, v: &[String]| -> Result<Vec<BString<4096>>, WireError> {
            v.iter().map(|s| bstr(name, p(f), s)).collect()
        };
        let env = c
            .env
            .iter()
            .map(|e| {
                Ok(proto::EnvVar {
                    name: bstr(name, p("env.name"), &e.name)?,
                    value: proto::EnvValue::Literal(bstr(name, p("env.value"), &e.value)?),
                })
            })
            .collect::<Result<Vec<_>, WireError>>()?;
        let ports = c
            .ports
            .iter()
            .map(|port| proto::Port {
                container_port: port.container_port,
                host_port: port.host_port,
                protocol: match port.protocol {
                    api::Protocol::TCP => proto::Protocol::Tcp,
                    api::Protocol::UDP => proto::Protocol::Udp,
                },
            })
            .collect();
        containers.push(proto::ContainerSpec {
            name: bstr(name, p("name"), &c.name)?,
            image: bstr(name, p("image"), &c.image)?,
            image_pull_policy: match policy {
                api::PullPolicy::Always => proto::PullPolicy::Always,
                api::PullPolicy::IfNotPresent => proto::PullPolicy::IfNotPresent,
                api::PullPolicy::Never => proto::PullPolicy::Never,
            },
            command: bvec(name, p("command"), strings("command", &c.command)?)?,
            args: bvec(name, p("args"), strings("args", &c.args)?)?,
            env: bvec(name, p("env"), env)?,
            working_dir: c
                .working_dir
                .as_deref()
                .map(|w| bstr(name, p("workingDir"), w))
                .transpose()?,
            ports: bvec(name, p("ports"), ports)?,
            resources: container_resources(name, i, c)?,
            volume_mounts: BVec::new(),
            liveness_probe: None,
            readiness_probe: None,
            startup_probe: None,
            security: proto::SecurityContext::default(),
        });
    }
    Ok(proto::PodSpec {
        name: bstr(name, "metadata.name", name)?,
        uid: bstr(name, "metadata.uid", &pod.metadata.uid)?,
        host_network: spec.host_network,
        restart_policy: match spec.restart_policy {
            api::RestartPolicy::Always => proto::RestartPolicy::Always,
            api::RestartPolicy::OnFailure => proto::RestartPolicy::OnFailure,
            api::RestartPolicy::Never => proto::RestartPolicy::Never,
        },
        termination_grace_secs: spec.termination_grace_period_seconds.unwrap_or(30),
        containers: bvec(name, "spec.containers", containers)?,
        init_containers: BVec::new(),
        volumes: BVec::new(),
        image_pull_secrets: BVec::new(),
    })
}

fn rfc3339_from_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// What an agent reports about one pod, in domain terms.
///
/// Phase: `Failed` if any container failed (OOM-killed, failed to start, non-zero exit)
/// under `restartPolicy: Never`; `Running` if every container runs; `Succeeded` if every
/// container exited 0 and the policy will not restart them; `Pending` otherwise. Under
/// `Always` a container that exited 0 is about to restart, so the pod is never
/// `Succeeded` (as in Kubernetes).
pub fn pod_status(
    s: &proto::PodStatus,
    spec: &api::PodSpec,
    host_ip: Option<String>,
) -> api::PodStatus {
    let container_statuses: Vec<api::ContainerStatus> = s
        .containers
        .iter()
        .map(|c| {
            let state = match &c.state {
                proto::ContainerState::Pending => api::ContainerState::Pending,
                proto::ContainerState::Pulling => api::ContainerState::Pulling,
                proto::ContainerState::Running { started_at_ms } => api::ContainerState::Running {
                    started_at: rfc3339_from_ms(*started_at_ms),
                },
                proto::ContainerState::Exited { code } => {
                    api::ContainerState::Exited { exit_code: *code }
                }
                proto::ContainerState::OomKilled => api::ContainerState::OOMKilled,
                proto::ContainerState::Failed { reason } => api::ContainerState::Failed {
                    reason: reason.to_string(),
                },
            };
            api::ContainerStatus {
                name: c.name.to_string(),
                ready: matches!(state, api::ContainerState::Running { .. }),
                state,
                restart_count: c.restart_count,
            }
        })
        .collect();
    let failed = |st: &api::ContainerState| {
        matches!(
            st,
            api::ContainerState::OOMKilled | api::ContainerState::Failed { .. }
        ) || matches!(st, api::ContainerState::Exited { exit_code } if *exit_code != 0)
    };
    let all = |f: &dyn Fn(&api::ContainerState) -> bool| {
        !container_statuses.is_empty() && container_statuses.iter().all(|c| f(&c.state))
    };
    let phase = if spec.restart_policy == api::RestartPolicy::Never
        && container_statuses.iter().any(|c| failed(&c.state))
    {
        api::PodPhase::Failed
    } else if all(&|st| matches!(st, api::ContainerState::Running { .. })) {
        api::PodPhase::Running
    } else if spec.restart_policy != api::RestartPolicy::Always
        && all(&|st| matches!(st, api::ContainerState::Exited { exit_code: 0 }))
    {
        api::PodPhase::Succeeded
    } else {
        api::PodPhase::Pending
    };
    api::PodStatus {
        phase,
        reason: None,
        message: None,
        pod_ip: s.pod_ip.map(|ip| ip.to_string()),
        host_ip,
        container_statuses,
    }
}

/// A node as it introduced itself. Its pod capacity is capped at what one desired-state
/// message can carry ([`proto::MAX_PODS_PER_NODE`]).
pub fn node_from_hello(name: &proto::NodeName, h: &proto::Hello) -> api::Node {
    let max_pods = u16::try_from(proto::MAX_PODS_PER_NODE).unwrap_or(u16::MAX);
    api::Node {
        api_version: "v1".into(),
        kind: "Node".into(),
        metadata: api::ObjectMeta {
            name: name.to_string(),
            labels: h
                .labels
                .iter()
                .map(|l| (l.key.to_string(), l.value.to_string()))
                .collect(),
            ..Default::default()
        },
        status: api::NodeStatus {
            ready: true,
            arch: h.arch.to_string(),
            arch_variant: h.arch_variant.to_string(),
            os: h.os.to_string(),
            agent_version: h.agent_version.to_string(),
            allocatable: api::NodeCapacity {
                cpu_millis: h.allocatable.cpu_millis,
                memory_bytes: h.allocatable.memory_bytes,
                pods: h.allocatable.pods.min(max_pods),
            },
            address: h.address.map(|a| a.to_string()),
            pod_cidr: h.pod_cidr.to_string(),
            last_heartbeat: api::now_rfc3339(),
            applied_generation: h.applied_generation,
            desired_generation: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: Vec<api::Container>, policy: api::RestartPolicy) -> api::Pod {
        api::Pod {
            api_version: "v1".into(),
            kind: "Pod".into(),
            metadata: api::ObjectMeta {
                name: "web-abcde".into(),
                uid: "u1".into(),
                ..Default::default()
            },
            spec: api::PodSpec {
                containers,
                restart_policy: policy,
                ..Default::default()
            },
            status: Default::default(),
        }
    }

    fn container(image: &str) -> api::Container {
        api::Container {
            name: "c".into(),
            image: image.into(),
            ..Default::default()
        }
    }

    #[test]
    fn pull_policy_defaults_like_kubernetes() {
        use api::PullPolicy::*;
        for (image, want) in [
            ("nginx", Always),
            ("nginx:latest", Always),
            ("nginx:1.25", IfNotPresent),
            ("127.0.0.1:5000/app", Always),
            ("127.0.0.1:5000/app:v1", IfNotPresent),
            ("busybox@sha256:abcd", IfNotPresent),
        ] {
            assert_eq!(default_pull_policy(image), want, "{image}");
        }
    }

    #[test]
    fn requests_default_to_limits() {
        let mut c = container("app:v1");
        c.resources.limits.cpu = Some("500m".into());
        c.resources.limits.memory = Some("64Mi".into());
        c.resources.requests.cpu = Some("100m".into());
        let p = pod(vec![c], api::RestartPolicy::Always);
        let spec = pod_spec(&p).unwrap();
        let r = spec.containers[0].resources;
        assert_eq!(r.cpu_request_millis, 100);
        assert_eq!(r.cpu_limit_millis, Some(500));
        assert_eq!(r.memory_request_bytes, 64 << 20);
        assert_eq!(r.memory_limit_bytes, Some(64 << 20));
        assert_eq!(
            spec.containers[0].image_pull_policy,
            proto::PullPolicy::IfNotPresent
        );
    }

    #[test]
    fn oversized_fields_are_refused_not_truncated() {
        let mut c = container("app:v1");
        c.env.push(api::EnvVar {
            name: "X".into(),
            value: "x".repeat(5000),
        });
        let err = pod_spec(&pod(vec![c], api::RestartPolicy::Always)).unwrap_err();
        assert!(
            err.to_string().contains("spec.containers[0].env.value"),
            "{err}"
        );
    }

    fn status(states: Vec<proto::ContainerState>) -> proto::PodStatus {
        let containers = states
            .into_iter()
            .map(|state| proto::ContainerStatus {
                name: BString::new("c").unwrap(),
                state,
                restart_count: 0,
                last_termination: None,
                ready: true,
            })
            .collect();
        proto::PodStatus {
            name: BString::new("web-abcde").unwrap(),
            uid: BString::new("u1").unwrap(),
            pod_ip: Some("10.42.0.5".parse().unwrap()),
            containers: BVec::from_vec(containers).unwrap(),
            init_containers: BVec::new(),
        }
    }

    #[test]
    fn phases() {
        use api::RestartPolicy::*;
        use proto::ContainerState as S;
        let running = S::Running {
            started_at_ms: 1_700_000_000_000,
        };
        let cases = [
            (
                vec![running.clone(), running.clone()],
                Always,
                api::PodPhase::Running,
            ),
            (
                vec![running.clone(), S::Pulling],
                Always,
                api::PodPhase::Pending,
            ),
            (vec![S::OomKilled], Never, api::PodPhase::Failed),
            (vec![S::OomKilled], Always, api::PodPhase::Pending),
            (
                vec![S::Exited { code: 1 }, running.clone()],
                Never,
                api::PodPhase::Failed,
            ),
            (vec![S::Exited { code: 0 }], Never, api::PodPhase::Succeeded),
            (
                vec![S::Exited { code: 0 }],
                OnFailure,
                api::PodPhase::Succeeded,
            ),
            (vec![S::Exited { code: 0 }], Always, api::PodPhase::Pending),
            (vec![], Always, api::PodPhase::Pending),
        ];
        for (states, policy, want) in cases {
            let spec = api::PodSpec {
                restart_policy: policy,
                ..Default::default()
            };
            let got = pod_status(&status(states.clone()), &spec, None);
            assert_eq!(got.phase, want, "{states:?} {policy:?}");
        }
        let st = pod_status(
            &status(vec![running]),
            &api::PodSpec::default(),
            Some("192.168.1.9".into()),
        );
        assert_eq!(st.pod_ip.as_deref(), Some("10.42.0.5"));
        assert!(st.container_statuses[0].ready);
        assert!(
            matches!(&st.container_statuses[0].state, api::ContainerState::Running { started_at } if started_at.starts_with("2023-11-14"))
        );
    }
}
