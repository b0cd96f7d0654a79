//! Down to the agent: a scheduled pod as its agent receives it, with the defaults
//! Kubernetes users expect filled in (requests default to limits, `imagePullPolicy`
//! depends on the tag, a container's user and seccomp profile default to the pod's).

use baton_proto as proto;
use baton_proto::{BString, BVec};

use super::{bstr, bvec, field_err, WireError};
use crate::model::{api, quantity};

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
    // `envFrom` first, so that `env` entries win over it, as in Kubernetes.
    let env_from = c.env_from.iter().map(|f| {
        Ok(proto::EnvVar {
            name: bstr(name, p("envFrom.prefix"), &f.prefix)?,
            value: proto::EnvValue::ConfigMapAll {
                config_map: bstr(name, p("envFrom.configMapRef.name"), &f.config_map_ref.name)?,
                optional: f.config_map_ref.optional,
            },
        })
    });
    let env = env_from
        .chain(c.env.iter().map(|e| {
            let from = e.value_from.as_ref();
            let value = match (
                from.and_then(|f| f.secret_key_ref.as_ref()),
                from.and_then(|f| f.config_map_key_ref.as_ref()),
            ) {
                (Some(r), _) => proto::EnvValue::SecretKey {
                    secret: bstr(name, p("env.valueFrom.secretKeyRef.name"), &r.name)?,
                    key: bstr(name, p("env.valueFrom.secretKeyRef.key"), &r.key)?,
                },
                (None, Some(r)) => proto::EnvValue::ConfigMapKey {
                    config_map: bstr(name, p("env.valueFrom.configMapKeyRef.name"), &r.name)?,
                    key: bstr(name, p("env.valueFrom.configMapKeyRef.key"), &r.key)?,
                    optional: r.optional,
                },
                (None, None) => proto::EnvValue::Literal(bstr(name, p("env.value"), &e.value)?),
            };
            Ok(proto::EnvVar {
                name: bstr(name, p("env.name"), &e.name)?,
                value,
            })
        }))
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
                api::VolumeSource::ConfigMap {
                    name: cm,
                    items,
                    default_mode,
                    optional,
                } => proto::VolumeSource::ConfigMap {
                    name: bstr(name, p("configMap.name"), cm)?,
                    items: bvec(
                        name,
                        p("configMap.items"),
                        items
                            .iter()
                            .map(|it| {
                                Ok(proto::KeyToPath {
                                    key: bstr(name, p("configMap.items.key"), &it.key)?,
                                    path: bstr(name, p("configMap.items.path"), &it.path)?,
                                    mode: it.mode,
                                })
                            })
                            .collect::<Result<Vec<_>, WireError>>()?,
                    )?,
                    // Kubernetes' default, 0644.
                    default_mode: default_mode.unwrap_or(0o644),
                    optional: *optional,
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
        priority: spec.priority.unwrap_or(0),
        dns: pod_dns(name, spec)?,
    })
}

/// `dnsPolicy`, `dnsConfig` and `hostAliases`; `None` for the default, so that a pod
/// without them costs one byte.
fn pod_dns(pod: &str, spec: &api::PodSpec) -> Result<Option<proto::PodDns>, WireError> {
    if !spec.has_dns_settings() {
        return Ok(None);
    }
    let ip = |path: String, s: &str| {
        s.parse::<std::net::IpAddr>()
            .map_err(|e| field_err(pod, path, e))
    };
    let c = spec.dns_config.clone().unwrap_or_default();
    let nameservers = c
        .nameservers
        .iter()
        .enumerate()
        .map(|(i, n)| ip(format!("spec.dnsConfig.nameservers[{i}]"), n))
        .collect::<Result<Vec<_>, _>>()?;
    let searches = c
        .searches
        .iter()
        .map(|s| bstr(pod, "spec.dnsConfig.searches", s))
        .collect::<Result<Vec<_>, _>>()?;
    let options = c
        .options
        .iter()
        .map(|o| {
            Ok(proto::DnsOption {
                name: bstr(pod, "spec.dnsConfig.options.name", &o.name)?,
                value: o
                    .value
                    .as_deref()
                    .map(|v| bstr(pod, "spec.dnsConfig.options.value", v))
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    let host_aliases = spec
        .host_aliases
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let hostnames = a
                .hostnames
                .iter()
                .map(|h| bstr(pod, format!("spec.hostAliases[{i}].hostnames"), h))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(proto::HostAlias {
                ip: ip(format!("spec.hostAliases[{i}].ip"), &a.ip)?,
                hostnames: bvec(pod, format!("spec.hostAliases[{i}].hostnames"), hostnames)?,
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    Ok(Some(proto::PodDns {
        policy: match spec.dns_policy {
            None | Some(api::DnsPolicy::ClusterFirst) => proto::DnsPolicy::ClusterFirst,
            Some(api::DnsPolicy::ClusterFirstWithHostNet) => {
                proto::DnsPolicy::ClusterFirstWithHostNet
            }
            Some(api::DnsPolicy::Default) => proto::DnsPolicy::Default,
            Some(api::DnsPolicy::None) => proto::DnsPolicy::None,
        },
        nameservers: bvec(pod, "spec.dnsConfig.nameservers", nameservers)?,
        searches: bvec(pod, "spec.dnsConfig.searches", searches)?,
        options: bvec(pod, "spec.dnsConfig.options", options)?,
        host_aliases: bvec(pod, "spec.hostAliases", host_aliases)?,
    }))
}
