//! The one place that converts between domain types ([`crate::model::api`]) and wire types
//! ([`baton_proto`]).
//!
//! Architecture invariant: no other module builds a `baton_proto` message body out of an
//! `api` object or the other way round. Keeping the mapping here means a change to either
//! side is a change to exactly one file, and the defaults Kubernetes users expect
//! (requests default to limits, `imagePullPolicy` depends on the tag) live in one place.

use std::time::{Duration, UNIX_EPOCH};

use baton_proto as proto;
use baton_proto::{BString, BVec};

use crate::model::api;
use crate::model::quantity;

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
    cpath: &str,
    c: &api::Container,
) -> Result<proto::Resources, WireError> {
    let path = |what: &str| format!("{cpath}.resources.{what}");
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

fn pull_policy(p: api::PullPolicy) -> proto::PullPolicy {
    match p {
        api::PullPolicy::Always => proto::PullPolicy::Always,
        api::PullPolicy::IfNotPresent => proto::PullPolicy::IfNotPresent,
        api::PullPolicy::Never => proto::PullPolicy::Never,
    }
}

fn probe(pod: &str, path: &str, p: &api::Probe) -> Result<proto::Probe, WireError> {
    let handler = match &p.handler {
        api::ProbeHandler::Exec { command } => proto::ProbeHandler::Exec {
            command: bvec(
                pod,
                format!("{path}.exec.command"),
                command
                    .iter()
                    .map(|a| bstr(pod, format!("{path}.exec.command"), a))
                    .collect::<Result<Vec<_>, _>>()?,
            )?,
        },
        api::ProbeHandler::HttpGet {
            path: http_path,
            port,
            scheme,
            host,
            http_headers,
        } => proto::ProbeHandler::HttpGet {
            path: bstr(pod, format!("{path}.httpGet.path"), http_path)?,
            port: *port,
            https: *scheme == api::Scheme::HTTPS,
            host: host
                .as_deref()
                .map(|h| bstr(pod, format!("{path}.httpGet.host"), h))
                .transpose()?,
            headers: bvec(
                pod,
                format!("{path}.httpGet.httpHeaders"),
                http_headers
                    .iter()
                    .map(|h| {
                        Ok(proto::HttpHeader {
                            name: bstr(pod, format!("{path}.httpGet.httpHeaders.name"), &h.name)?,
                            value: bstr(
                                pod,
                                format!("{path}.httpGet.httpHeaders.value"),
                                &h.value,
                            )?,
                        })
                    })
                    .collect::<Result<Vec<_>, WireError>>()?,
            )?,
        },
        api::ProbeHandler::TcpSocket { port, host } => proto::ProbeHandler::TcpSocket {
            port: *port,
            host: host
                .as_deref()
                .map(|h| bstr(pod, format!("{path}.tcpSocket.host"), h))
                .transpose()?,
        },
    };
    Ok(proto::Probe {
        handler,
        initial_delay_secs: p.initial_delay_seconds,
        period_secs: p.period_seconds,
        timeout_secs: p.timeout_seconds,
        success_threshold: p.success_threshold,
        failure_threshold: p.failure_threshold,
    })
}

/// A container's security context with the pod's user and group as defaults: the
/// container's own values win, as in Kubernetes.
fn security(
    pod: &str,
    path: &str,
    c: &api::Container,
    pod_sc: &api::PodSecurityContext,
) -> Result<proto::SecurityContext, WireError> {
    let sc = c.security_context.clone().unwrap_or_default();
    let caps = sc.capabilities.unwrap_or_default();
    let list = |which: &str, v: &[String]| -> Result<BVec<BString<32>, 48>, WireError> {
        let field = format!("{path}.securityContext.capabilities.{which}");
        let v = v
            .iter()
            .map(|cap| bstr(pod, field.clone(), cap))
            .collect::<Result<Vec<_>, _>>()?;
        bvec(pod, field.clone(), v)
    };
    Ok(proto::SecurityContext {
        privileged: sc.privileged.unwrap_or(false),
        capabilities_add: list("add", &caps.add)?,
        capabilities_drop: list("drop", &caps.drop)?,
        run_as_user: sc.run_as_user.or(pod_sc.run_as_user),
        run_as_group: sc.run_as_group.or(pod_sc.run_as_group),
        read_only_root_filesystem: sc.read_only_root_filesystem.unwrap_or(false),
        seccomp: seccomp(sc.seccomp_profile.or(pod_sc.seccomp_profile)),
    })
}

/// The container's profile over the pod's; neither given is [`proto::SeccompProfile::Default`],
/// which an agent applies where it can, while an explicit `RuntimeDefault` is a demand.
fn seccomp(p: Option<api::SeccompProfile>) -> proto::SeccompProfile {
    match p.map(|p| p.typ) {
        None => proto::SeccompProfile::Default,
        Some(api::SeccompProfileType::RuntimeDefault) => proto::SeccompProfile::RuntimeDefault,
        Some(api::SeccompProfileType::Unconfined) => proto::SeccompProfile::Unconfined,
    }
}

/// One container (init or main) as its agent receives it; `path` is its manifest path,
/// e.g. `spec.initContainers[0]`.
fn container_spec(
    pod: &str,
    path: &str,
    c: &api::Container,
    pod_sc: &api::PodSecurityContext,
) -> Result<proto::ContainerSpec, WireError> {
    let name = pod;
    let p = |f: &str| format!("{path}.{f}");
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
            let value = match &e.value_from {
                Some(from) => proto::EnvValue::SecretKey {
                    secret: bstr(
                        name,
                        p("env.valueFrom.secretKeyRef.name"),
                        &from.secret_key_ref.name,
                    )?,
                    key: bstr(
                        name,
                        p("env.valueFrom.secretKeyRef.key"),
                        &from.secret_key_ref.key,
                    )?,
                },
                None => proto::EnvValue::Literal(bstr(name, p("env.value"), &e.value)?),
            };
            Ok(proto::EnvVar {
                name: bstr(name, p("env.name"), &e.name)?,
                value,
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
    let mounts = c
        .volume_mounts
        .iter()
        .map(|m| {
            Ok(proto::VolumeMount {
                name: bstr(name, p("volumeMounts.name"), &m.name)?,
                mount_path: bstr(name, p("volumeMounts.mountPath"), &m.mount_path)?,
                read_only: m.read_only,
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    let probe_of =
        |f: &str, pr: &Option<api::Probe>| pr.as_ref().map(|pr| probe(name, &p(f), pr)).transpose();
    Ok(proto::ContainerSpec {
        name: bstr(name, p("name"), &c.name)?,
        image: bstr(name, p("image"), &c.image)?,
        image_pull_policy: pull_policy(policy),
        command: bvec(name, p("command"), strings("command", &c.command)?)?,
        args: bvec(name, p("args"), strings("args", &c.args)?)?,
        env: bvec(name, p("env"), env)?,
        working_dir: c
            .working_dir
            .as_deref()
            .map(|w| bstr(name, p("workingDir"), w))
            .transpose()?,
        ports: bvec(name, p("ports"), ports)?,
        resources: container_resources(name, path, c)?,
        volume_mounts: bvec(name, p("volumeMounts"), mounts)?,
        liveness_probe: probe_of("livenessProbe", &c.liveness_probe)?,
        readiness_probe: probe_of("readinessProbe", &c.readiness_probe)?,
        startup_probe: probe_of("startupProbe", &c.startup_probe)?,
        security: security(name, path, c, pod_sc)?,
    })
}

/// A scheduled pod as its agent receives it. The pod must already have passed
/// `crate::decide::policy` (the core checks it on apply): this is a conversion, not a gate.
pub fn pod_spec(pod: &api::Pod) -> Result<proto::PodSpec, WireError> {
    let name = pod.metadata.name.as_str();
    let spec = &pod.spec;
    for list in [&spec.containers, &spec.init_containers] {
        if list.len() > proto::MAX_CONTAINERS_PER_POD {
            return Err(WireError::TooManyContainers {
                pod: name.to_owned(),
                got: list.len(),
                max: proto::MAX_CONTAINERS_PER_POD,
            });
        }
    }
    let convert = |field: &str, list: &[api::Container]| {
        list.iter()
            .enumerate()
            .map(|(i, c)| {
                container_spec(
                    name,
                    &format!("spec.{field}[{i}]"),
                    c,
                    &spec.security_context,
                )
            })
            .collect::<Result<Vec<_>, WireError>>()
    };
    let containers = convert("containers", &spec.containers)?;
    let init_containers = convert("initContainers", &spec.init_containers)?;
    let volumes = spec
        .volumes
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let p = |f: &str| format!("spec.volumes[{i}].{f}");
            let source = match &v.source {
                api::VolumeSource::Secret { secret_name } => proto::VolumeSource::Secret {
                    secret_name: bstr(name, p("secret.secretName"), secret_name)?,
                },
                api::VolumeSource::EmptyDir { size_limit } => proto::VolumeSource::EmptyDir {
                    size_limit_bytes: size_limit
                        .as_deref()
                        .map(quantity::parse_memory_bytes)
                        .transpose()
                        .map_err(|e| field_err(name, p("emptyDir.sizeLimit"), e))?,
                },
                api::VolumeSource::HostPath { path } => proto::VolumeSource::HostPath {
                    path: bstr(name, p("hostPath.path"), path)?,
                },
            };
            Ok(proto::Volume {
                name: bstr(name, p("name"), &v.name)?,
                source,
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    let pull_secrets = spec
        .image_pull_secrets
        .iter()
        .map(|r| bstr(name, "spec.imagePullSecrets.name", &r.name))
        .collect::<Result<Vec<_>, _>>()?;
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
        init_containers: bvec(name, "spec.initContainers", init_containers)?,
        volumes: bvec(name, "spec.volumes", volumes)?,
        image_pull_secrets: bvec(name, "spec.imagePullSecrets", pull_secrets)?,
    })
}

fn rfc3339_from_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn container_state(s: &proto::ContainerState) -> api::ContainerState {
    match s {
        proto::ContainerState::Pending => api::ContainerState::Pending,
        proto::ContainerState::Pulling => api::ContainerState::Pulling,
        proto::ContainerState::Running { started_at_ms } => api::ContainerState::Running {
            started_at: rfc3339_from_ms(*started_at_ms),
        },
        proto::ContainerState::Exited { code } => api::ContainerState::Exited { exit_code: *code },
        proto::ContainerState::OomKilled => api::ContainerState::OOMKilled,
        proto::ContainerState::Failed { reason } => api::ContainerState::Failed {
            reason: reason.to_string(),
        },
    }
}

/// A run that ended badly: OOM-killed, failed to start, or a non-zero exit.
fn is_failure(st: &api::ContainerState) -> bool {
    matches!(
        st,
        api::ContainerState::OOMKilled | api::ContainerState::Failed { .. }
    ) || matches!(st, api::ContainerState::Exited { exit_code } if *exit_code != 0)
}

/// Whether the agent will start a container again that is in state `st`: the pod's
/// `restartPolicy` for main containers; init containers are retried on failure unless
/// the policy is `Never`, and are done once they exit 0.
fn will_restart(st: &api::ContainerState, policy: api::RestartPolicy, init: bool) -> bool {
    let exited = matches!(
        st,
        api::ContainerState::Exited { .. } | api::ContainerState::OOMKilled
    );
    if !exited {
        return false;
    }
    match (init, policy) {
        (_, api::RestartPolicy::Never) => false,
        (true, _) | (false, api::RestartPolicy::OnFailure) => is_failure(st),
        (false, api::RestartPolicy::Always) => true,
    }
}

/// Kubelet's word for a container's state (`state.waiting.reason` or
/// `state.terminated.reason`). A terminated container that will be started again and has
/// been restarted before is in `CrashLoopBackOff`, as kubelet reports it between restarts.
fn container_reason(
    st: &api::ContainerState,
    restart_count: u32,
    policy: api::RestartPolicy,
    init: bool,
    initializing: bool,
) -> Option<String> {
    if restart_count > 0 && will_restart(st, policy, init) {
        return Some("CrashLoopBackOff".into());
    }
    let word = match st {
        api::ContainerState::Running { .. } => return None,
        api::ContainerState::Pending | api::ContainerState::Pulling if initializing => {
            "PodInitializing"
        }
        api::ContainerState::Pending => "ContainerCreating",
        api::ContainerState::Pulling => "Pulling",
        api::ContainerState::Exited { exit_code: 0 } => "Completed",
        api::ContainerState::Exited { .. } => "Error",
        api::ContainerState::OOMKilled => "OOMKilled",
        api::ContainerState::Failed { reason } => reason
            .split(|c: char| c.is_whitespace() || c == ':')
            .find(|w| !w.is_empty())
            .unwrap_or("Failed"),
    };
    Some(word.to_owned())
}

/// `initializing`: the pod's init containers have not all completed (always true for an
/// init container itself), so a container not yet started waits with `PodInitializing`.
fn container_status(
    c: &proto::ContainerStatus,
    policy: api::RestartPolicy,
    init: bool,
    initializing: bool,
) -> api::ContainerStatus {
    let state = container_state(&c.state);
    api::ContainerStatus {
        name: c.name.to_string(),
        reason: container_reason(&state, c.restart_count, policy, init, initializing),
        // The agent's word: running and passing the readiness probe (if any). A
        // container that is not running is never ready, whatever an agent says.
        ready: c.ready && matches!(state, api::ContainerState::Running { .. }),
        state,
        restart_count: c.restart_count,
        last_state: c.last_termination.as_ref().map(|t| api::LastState {
            terminated: api::TerminatedState {
                exit_code: t.exit_code,
                reason: t.reason.to_string(),
                finished_at: rfc3339_from_ms(t.finished_at_ms),
            },
        }),
    }
}

/// What an agent reports about one pod, in domain terms.
///
/// Phase: `Failed` if any container (or init container) failed (OOM-killed, failed to
/// start, non-zero exit) under `restartPolicy: Never`; `Pending` while an init container
/// has not yet exited 0; `Running` if every container runs; `Succeeded` if every
/// container exited 0 and the policy will not restart them; `Pending` otherwise. Under
/// `Always` a container that exited 0 is about to restart, so the pod is never
/// `Succeeded` (as in Kubernetes).
pub fn pod_status(
    s: &proto::PodStatus,
    spec: &api::PodSpec,
    host_ip: Option<String>,
) -> api::PodStatus {
    let policy = spec.restart_policy;
    let init_container_statuses: Vec<api::ContainerStatus> = s
        .init_containers
        .iter()
        .map(|c| container_status(c, policy, true, true))
        .collect();
    let initializing = init_container_statuses
        .iter()
        .any(|c| !matches!(c.state, api::ContainerState::Exited { exit_code: 0 }));
    let container_statuses: Vec<api::ContainerStatus> = s
        .containers
        .iter()
        .map(|c| container_status(c, policy, false, initializing))
        .collect();
    let all = |f: &dyn Fn(&api::ContainerState) -> bool| {
        !container_statuses.is_empty() && container_statuses.iter().all(|c| f(&c.state))
    };
    let any_failed = |list: &[api::ContainerStatus]| list.iter().any(|c| is_failure(&c.state));
    let phase = if policy == api::RestartPolicy::Never
        && (any_failed(&container_statuses) || any_failed(&init_container_statuses))
    {
        api::PodPhase::Failed
    } else if initializing {
        api::PodPhase::Pending
    } else if all(&|st| matches!(st, api::ContainerState::Running { .. })) {
        api::PodPhase::Running
    } else if policy != api::RestartPolicy::Always
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
        init_container_statuses,
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
            last_connect_error: h.last_connect_error.as_ref().map(|m| api::ConnectError {
                // Text from the device, shown on a terminal: no control characters.
                message: m.chars().filter(|c| !c.is_control()).collect(),
                reported_at: api::now_rfc3339(),
            }),
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
            value_from: None,
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

    fn parse_pod(yaml: &str) -> api::Pod {
        match crate::model::manifest::parse_manifests(yaml)
            .unwrap()
            .remove(0)
        {
            api::Object::Pod(mut p) => {
                p.metadata.uid = "u1".into();
                p
            }
            _ => panic!("not a pod"),
        }
    }

    #[test]
    fn pod_features_reach_the_wire() {
        let p = parse_pod(
            "\
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  securityContext: {runAsUser: 1000, runAsGroup: 2000}
  imagePullSecrets: [{name: regcred}]
  volumes:
  - {name: work, emptyDir: {sizeLimit: 16Mi}}
  - {name: creds, secret: {secretName: db}}
  - {name: host, hostPath: {path: /srv/data}}
  initContainers:
  - name: fetch
    image: busybox:1
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: web
    image: busybox:1
    ports: [{name: http, containerPort: 8080}]
    env:
    - {name: A, value: b}
    - name: PW
      valueFrom: {secretKeyRef: {name: db, key: pw}}
    volumeMounts: [{name: work, mountPath: /work, readOnly: true}]
    livenessProbe: {httpGet: {path: /healthz, port: http, scheme: HTTPS, httpHeaders: [{name: X, value: y}]}}
    readinessProbe: {tcpSocket: {port: 8080, host: 127.0.0.1}, periodSeconds: 2}
    startupProbe: {exec: {command: [cat, /work/x]}, failureThreshold: 30}
    securityContext:
      runAsUser: 0
      privileged: true
      readOnlyRootFilesystem: true
      capabilities: {add: [NET_ADMIN], drop: [ALL]}
",
        );
        let spec = pod_spec(&p).unwrap();
        assert_eq!(spec.init_containers.len(), 1);
        assert_eq!(spec.init_containers[0].name.as_str(), "fetch");
        assert_eq!(
            spec.init_containers[0].security.run_as_user,
            Some(1000),
            "the pod's user is the default"
        );
        assert_eq!(spec.image_pull_secrets[0].as_str(), "regcred");
        assert_eq!(
            spec.volumes
                .iter()
                .map(|v| v.source.clone())
                .collect::<Vec<_>>(),
            vec![
                proto::VolumeSource::EmptyDir {
                    size_limit_bytes: Some(16 << 20)
                },
                proto::VolumeSource::Secret {
                    secret_name: BString::new("db").unwrap()
                },
                proto::VolumeSource::HostPath {
                    path: BString::new("/srv/data").unwrap()
                },
            ]
        );
        let c = &spec.containers[0];
        assert_eq!(
            c.env[1].value,
            proto::EnvValue::SecretKey {
                secret: BString::new("db").unwrap(),
                key: BString::new("pw").unwrap(),
            }
        );
        assert_eq!(
            c.volume_mounts[0],
            proto::VolumeMount {
                name: BString::new("work").unwrap(),
                mount_path: BString::new("/work").unwrap(),
                read_only: true,
            }
        );
        let live = c.liveness_probe.as_ref().unwrap();
        assert_eq!(
            live.handler,
            proto::ProbeHandler::HttpGet {
                path: BString::new("/healthz").unwrap(),
                port: 8080,
                https: true,
                host: None,
                headers: BVec::from_vec(vec![proto::HttpHeader {
                    name: BString::new("X").unwrap(),
                    value: BString::new("y").unwrap(),
                }])
                .unwrap(),
            }
        );
        assert_eq!(
            (live.period_secs, live.timeout_secs, live.failure_threshold),
            (10, 1, 3)
        );
        let ready = c.readiness_probe.as_ref().unwrap();
        assert_eq!(ready.period_secs, 2);
        assert!(matches!(
            &ready.handler,
            proto::ProbeHandler::TcpSocket { port: 8080, host: Some(h) } if h.as_str() == "127.0.0.1"
        ));
        assert_eq!(c.startup_probe.as_ref().unwrap().failure_threshold, 30);
        let sec = &c.security;
        assert!(sec.privileged && sec.read_only_root_filesystem);
        assert_eq!(
            sec.run_as_user,
            Some(0),
            "the container's user wins over the pod's"
        );
        assert_eq!(sec.run_as_group, Some(2000));
        assert_eq!(sec.capabilities_add[0].as_str(), "NET_ADMIN");
        assert_eq!(sec.capabilities_drop[0].as_str(), "ALL");
    }

    #[test]
    fn seccomp_profiles_resolve_container_over_pod() {
        let yaml = |pod_sc: &str, c_sc: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n{pod_sc}  initContainers:\n  - {{name: i, image: busybox:1}}\n  containers:\n  - name: c\n    image: busybox:1\n{c_sc}"
            )
        };
        let profiles = |pod_sc: &str, c_sc: &str| {
            let spec = pod_spec(&parse_pod(&yaml(pod_sc, c_sc))).unwrap();
            (
                spec.init_containers[0].security.seccomp,
                spec.containers[0].security.seccomp,
            )
        };
        use proto::SeccompProfile::{Default, RuntimeDefault, Unconfined};
        assert_eq!(profiles("", ""), (Default, Default));
        assert_eq!(
            profiles(
                "  securityContext: {seccompProfile: {type: RuntimeDefault}}\n",
                ""
            ),
            (RuntimeDefault, RuntimeDefault)
        );
        assert_eq!(
            profiles(
                "  securityContext: {seccompProfile: {type: Unconfined}}\n",
                "    securityContext: {seccompProfile: {type: RuntimeDefault}}\n"
            ),
            (Unconfined, RuntimeDefault)
        );
        assert_eq!(
            profiles(
                "",
                "    securityContext: {seccompProfile: {type: Unconfined}}\n"
            ),
            (Default, Unconfined)
        );
    }

    fn cstatus(
        name: &str,
        state: proto::ContainerState,
        restarts: u32,
        ready: bool,
    ) -> proto::ContainerStatus {
        proto::ContainerStatus {
            name: BString::new(name).unwrap(),
            state,
            restart_count: restarts,
            ready,
            last_termination: None,
        }
    }

    fn report(
        inits: Vec<proto::ContainerStatus>,
        main: Vec<proto::ContainerStatus>,
    ) -> proto::PodStatus {
        proto::PodStatus {
            name: BString::new("web-abcde").unwrap(),
            uid: BString::new("u1").unwrap(),
            pod_ip: None,
            containers: BVec::from_vec(main).unwrap(),
            init_containers: BVec::from_vec(inits).unwrap(),
        }
    }

    #[test]
    fn readiness_comes_from_the_agent() {
        use proto::ContainerState as S;
        let run = S::Running {
            started_at_ms: 1_700_000_000_000,
        };
        let st = pod_status(
            &report(
                vec![],
                vec![
                    cstatus("a", run.clone(), 0, false),
                    cstatus("b", run, 0, true),
                    // A stopped container is never ready, whatever the report says.
                    cstatus("c", S::Exited { code: 0 }, 0, true),
                ],
            ),
            &api::PodSpec::default(),
            None,
        );
        let ready: Vec<bool> = st.container_statuses.iter().map(|c| c.ready).collect();
        assert_eq!(ready, [false, true, false]);
    }

    #[test]
    fn init_containers_reasons_and_last_termination() {
        use api::RestartPolicy::*;
        use proto::ContainerState as S;
        let run = || S::Running {
            started_at_ms: 1_700_000_000_000,
        };
        let done = || cstatus("i", S::Exited { code: 0 }, 0, false);
        let waiting = || vec![cstatus("m", S::Pending, 0, false)];
        let spec = |policy| api::PodSpec {
            restart_policy: policy,
            ..Default::default()
        };
        let reasons = |st: &api::PodStatus| -> (Vec<Option<String>>, Vec<Option<String>>) {
            (
                st.init_container_statuses
                    .iter()
                    .map(|c| c.reason.clone())
                    .collect(),
                st.container_statuses
                    .iter()
                    .map(|c| c.reason.clone())
                    .collect(),
            )
        };
        let s = |v: &str| Some(v.to_string());
        // Init container running: the pod is Pending and its main container initializing.
        let st = pod_status(
            &report(vec![cstatus("i", run(), 0, false)], waiting()),
            &spec(Always),
            None,
        );
        assert_eq!(st.phase, api::PodPhase::Pending);
        assert_eq!(reasons(&st), (vec![None], vec![s("PodInitializing")]));
        // The first failure is an Error; after a restart it is a crash loop.
        let st = pod_status(
            &report(
                vec![cstatus("i", S::Exited { code: 1 }, 0, false)],
                waiting(),
            ),
            &spec(Always),
            None,
        );
        assert_eq!(reasons(&st).0, vec![s("Error")]);
        let st = pod_status(
            &report(
                vec![cstatus("i", S::Exited { code: 1 }, 2, false)],
                waiting(),
            ),
            &spec(Always),
            None,
        );
        assert_eq!(reasons(&st).0, vec![s("CrashLoopBackOff")]);
        assert_eq!(st.phase, api::PodPhase::Pending);
        // Under Never a failed init container fails the pod and is not retried.
        let st = pod_status(
            &report(
                vec![cstatus("i", S::Exited { code: 1 }, 0, false)],
                waiting(),
            ),
            &spec(Never),
            None,
        );
        assert_eq!(st.phase, api::PodPhase::Failed);
        assert_eq!(reasons(&st).0, vec![s("Error")]);
        // All init containers done: the main containers decide.
        let st = pod_status(
            &report(vec![done(), done()], vec![cstatus("m", run(), 0, true)]),
            &spec(Always),
            None,
        );
        assert_eq!(st.phase, api::PodPhase::Running);
        assert_eq!(
            reasons(&st),
            (vec![s("Completed"), s("Completed")], vec![None])
        );
        // Main containers: OOM-killed after restarts is a crash loop under Always, and
        // a plain OOMKilled where nothing restarts it.
        let mut oom = cstatus("m", S::OomKilled, 3, false);
        oom.last_termination = Some(proto::Termination {
            exit_code: 137,
            reason: BString::new("OOMKilled").unwrap(),
            finished_at_ms: 1_700_000_000_000,
        });
        // An init container not yet started waits on the pod's initialization, which
        // kubectl shows as `Init:0/1`.
        let st = pod_status(
            &report(vec![cstatus("i", S::Pulling, 0, false)], waiting()),
            &spec(Always),
            None,
        );
        assert_eq!(
            reasons(&st),
            (vec![s("PodInitializing")], vec![s("PodInitializing")])
        );
        let st = pod_status(&report(vec![], vec![oom.clone()]), &spec(Always), None);
        assert_eq!(reasons(&st).1, vec![s("CrashLoopBackOff")]);
        let last = st.container_statuses[0]
            .last_state
            .clone()
            .unwrap()
            .terminated;
        assert_eq!(
            (
                last.exit_code,
                last.reason.as_str(),
                last.finished_at.as_str()
            ),
            (137, "OOMKilled", "2023-11-14T22:13:20Z")
        );
        let st = pod_status(&report(vec![], vec![oom]), &spec(Never), None);
        assert_eq!(reasons(&st).1, vec![s("OOMKilled")]);
        // OnFailure restarts failures only: exit 0 is Completed even after restarts.
        let st = pod_status(
            &report(vec![], vec![cstatus("m", S::Exited { code: 0 }, 2, false)]),
            &spec(OnFailure),
            None,
        );
        assert_eq!(
            (st.phase, reasons(&st).1),
            (api::PodPhase::Succeeded, vec![s("Completed")])
        );
        let st = pod_status(
            &report(vec![], vec![cstatus("m", S::Exited { code: 2 }, 2, false)]),
            &spec(OnFailure),
            None,
        );
        assert_eq!(reasons(&st).1, vec![s("CrashLoopBackOff")]);
        // JSON carries the reasons and the last state in k8s's shape.
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["containerStatuses"][0]["reason"], "CrashLoopBackOff");
    }

    /// The agent's connection report reaches the node's status without the control
    /// characters a hostile device could use to rewrite an operator's terminal.
    #[test]
    fn a_hellos_connect_error_is_kept_without_control_characters() {
        let h = proto::Hello {
            arch: "arm64".try_into().unwrap(),
            arch_variant: Default::default(),
            os: "linux".try_into().unwrap(),
            agent_version: "0.1.0".try_into().unwrap(),
            allocatable: proto::Capacity {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
                pods: 110,
            },
            labels: proto::BVec::new(),
            address: None,
            pod_cidr: proto::BString::new("10.42.1.0/24").unwrap(),
            applied_generation: 0,
            last_connect_error: Some(
                proto::BString::new("connection refused\u{1b}[2J\r\n(advice)").unwrap(),
            ),
        };
        let n = node_from_hello(&proto::NodeName::new("pi-1").unwrap(), &h);
        let e = n.status.last_connect_error.unwrap();
        assert_eq!(e.message, "connection refused[2J(advice)");
        assert!(!e.reported_at.is_empty());
    }
}
