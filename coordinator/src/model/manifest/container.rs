//! One container of a pod (init or main): image, env, ports, resources, mounts, probes
//! (see [`super::probe`]) and its security context.

use std::collections::BTreeSet;

use super::input::{InContainer, InResources, InSeccompProfile, InSecurityContext};
use super::probe::probe;
use super::validate::{
    absolute_path, dns_label, id, invalid, port, port_name, required, secret_key, secret_name,
    Invalid,
};
use super::MAX_NAME_LEN;
use crate::model::{api, quantity};

/// Whether a container runs to completion before the others (an init container) or
/// alongside them: init containers may not have probes, as in Kubernetes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ContainerKind {
    Init,
    Main,
}

/// The runtime (OCI `process.cwd`) needs an absolute directory, resolved inside the
/// container's root: a relative one was accepted and then crash-looped on the node.
/// `..` is harmless there, so unlike a mount path it is allowed; empty means unset, as
/// in Kubernetes.
fn working_dir(path: &str, w: String) -> Result<String, Invalid> {
    if !w.starts_with('/') {
        return invalid(path, format!("{w:?} must be an absolute path"));
    }
    if w.contains('\0') {
        return invalid(path, "must not contain NUL");
    }
    Ok(w)
}

pub(super) fn container(
    path: &str,
    c: InContainer,
    host_network: bool,
    volume_names: &BTreeSet<&str>,
    kind: ContainerKind,
) -> Result<api::Container, Invalid> {
    let Some(name) = c.name else {
        return invalid(format!("{path}.name"), "required");
    };
    dns_label(&format!("{path}.name"), &name, MAX_NAME_LEN)?;
    let image = c.image.unwrap_or_default();
    if image.is_empty() {
        return invalid(format!("{path}.image"), "required");
    }
    if image.chars().any(|ch| ch.is_whitespace()) {
        return invalid(format!("{path}.image"), "must not contain whitespace");
    }
    let mut env = Vec::with_capacity(c.env.len());
    for (i, e) in c.env.into_iter().enumerate() {
        // Kubernetes 1.34 relaxed env names from C identifiers to any printable ASCII
        // except '='; Baton follows the current rule.
        if e.name.is_empty()
            || !e
                .name
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'=')
        {
            return invalid(
                format!("{path}.env[{i}].name"),
                format!("{:?} must be non-empty printable ASCII without '='", e.name),
            );
        }
        let value_from = match e.value_from {
            None => None,
            Some(from) => {
                let fpath = format!("{path}.env[{i}].valueFrom");
                if !e.value.is_empty() {
                    return invalid(fpath, "may not be specified when `value` is not empty");
                }
                match (from.secret_key_ref, from.config_map_key_ref) {
                    (Some(r), None) => {
                        let rpath = format!("{fpath}.secretKeyRef");
                        let secret = required(&format!("{rpath}.name"), r.name)?;
                        secret_name(&format!("{rpath}.name"), &secret)?;
                        let key = required(&format!("{rpath}.key"), r.key)?;
                        secret_key(&format!("{rpath}.key"), &key)?;
                        Some(api::EnvVarSource {
                            secret_key_ref: Some(api::SecretKeySelector { name: secret, key }),
                            ..Default::default()
                        })
                    }
                    (None, Some(r)) => {
                        let rpath = format!("{fpath}.configMapKeyRef");
                        let cm = required(&format!("{rpath}.name"), r.name)?;
                        secret_name(&format!("{rpath}.name"), &cm)?;
                        let key = required(&format!("{rpath}.key"), r.key)?;
                        secret_key(&format!("{rpath}.key"), &key)?;
                        Some(api::EnvVarSource {
                            config_map_key_ref: Some(api::ConfigMapKeySelector {
                                name: cm,
                                key,
                                optional: r.optional,
                            }),
                            ..Default::default()
                        })
                    }
                    (None, None) => {
                        return invalid(fpath, "must specify secretKeyRef or configMapKeyRef")
                    }
                    (Some(_), Some(_)) => {
                        return invalid(fpath, "may not have more than one field specified")
                    }
                }
            }
        };
        env.push(api::EnvVar {
            name: e.name,
            value: e.value,
            value_from,
        });
    }
    let mut env_from = Vec::with_capacity(c.env_from.len());
    for (i, f) in c.env_from.into_iter().enumerate() {
        let fpath = format!("{path}.envFrom[{i}]");
        let Some(r) = f.config_map_ref else {
            return invalid(fpath, "must specify configMapRef");
        };
        if f.prefix
            .bytes()
            .any(|b| !(0x20..0x7f).contains(&b) || b == b'=')
        {
            return invalid(
                format!("{fpath}.prefix"),
                format!("{:?} must be printable ASCII without '='", f.prefix),
            );
        }
        let npath = format!("{fpath}.configMapRef.name");
        let name = required(&npath, r.name)?;
        secret_name(&npath, &name)?;
        env_from.push(api::EnvFromSource {
            prefix: f.prefix,
            config_map_ref: api::ConfigMapEnvSource {
                name,
                optional: r.optional,
            },
        });
    }
    let mut ports = Vec::with_capacity(c.ports.len());
    let mut port_names = BTreeSet::new();
    for (i, p) in c.ports.into_iter().enumerate() {
        let ppath = format!("{path}.ports[{i}]");
        let container_port = port(&format!("{ppath}.containerPort"), p.container_port)?;
        let host_port = match p.host_port {
            None => None,
            Some(hp) => Some(port(&format!("{ppath}.hostPort"), hp)?),
        };
        if host_network && host_port.is_some_and(|hp| hp != container_port) {
            return invalid(
                format!("{ppath}.hostPort"),
                "must match containerPort when hostNetwork is true",
            );
        }
        if let Some(n) = &p.name {
            port_name(&format!("{ppath}.name"), n)?;
            if !port_names.insert(n.clone()) {
                return invalid(
                    format!("{ppath}.name"),
                    format!("duplicate port name {n:?}"),
                );
            }
        }
        ports.push(api::ContainerPort {
            name: p.name,
            container_port,
            host_port,
            protocol: p.protocol.unwrap_or_default(),
        });
    }
    let resources = resources(&format!("{path}.resources"), c.resources)?;
    let mut volume_mounts: Vec<api::VolumeMount> = Vec::with_capacity(c.volume_mounts.len());
    for (i, m) in c.volume_mounts.into_iter().enumerate() {
        let mpath = format!("{path}.volumeMounts[{i}]");
        let vname = required(&format!("{mpath}.name"), m.name)?;
        if !volume_names.contains(vname.as_str()) {
            return invalid(
                format!("{mpath}.name"),
                format!("no volume named {vname:?} in the pod's volumes"),
            );
        }
        let mount_path = required(&format!("{mpath}.mountPath"), m.mount_path)?;
        absolute_path(&format!("{mpath}.mountPath"), &mount_path)?;
        if volume_mounts.iter().any(|o| o.mount_path == mount_path) {
            return invalid(
                format!("{mpath}.mountPath"),
                format!("{mount_path:?} must be unique"),
            );
        }
        volume_mounts.push(api::VolumeMount {
            name: vname,
            mount_path,
            read_only: m.read_only,
        });
    }
    let mut probes = [
        ("livenessProbe", c.liveness_probe, true),
        ("readinessProbe", c.readiness_probe, false),
        ("startupProbe", c.startup_probe, true),
    ]
    .into_iter()
    .map(|(field, p, single_success)| {
        let ppath = format!("{path}.{field}");
        match p {
            None => Ok(None),
            Some(_) if kind == ContainerKind::Init => {
                invalid(ppath, "must not be set for init containers")
            }
            Some(p) => probe(&ppath, p, &ports, single_success).map(Some),
        }
    })
    .collect::<Result<Vec<_>, Invalid>>()?
    .into_iter();
    let (liveness_probe, readiness_probe, startup_probe) = (
        probes.next().flatten(),
        probes.next().flatten(),
        probes.next().flatten(),
    );
    let security_context = c
        .security_context
        .map(|sc| security_context(&format!("{path}.securityContext"), sc))
        .transpose()?;
    Ok(api::Container {
        name,
        image,
        image_pull_policy: c.image_pull_policy,
        command: c.command,
        args: c.args,
        env_from,
        env,
        working_dir: c
            .working_dir
            .filter(|w| !w.is_empty())
            .map(|w| working_dir(&format!("{path}.workingDir"), w))
            .transpose()?,
        ports,
        resources,
        volume_mounts,
        liveness_probe,
        readiness_probe,
        startup_probe,
        security_context,
    })
}

fn security_context(path: &str, sc: InSecurityContext) -> Result<api::SecurityContext, Invalid> {
    let capabilities = match sc.capabilities {
        None => None,
        Some(caps) => {
            let list = |which: &str, v: Vec<String>| -> Result<Vec<String>, Invalid> {
                v.into_iter()
                    .enumerate()
                    .map(|(i, cap)| capability(&format!("{path}.capabilities.{which}[{i}]"), &cap))
                    .collect()
            };
            Some(api::Capabilities {
                add: list("add", caps.add)?,
                drop: list("drop", caps.drop)?,
            })
        }
    };
    Ok(api::SecurityContext {
        privileged: sc.privileged,
        capabilities,
        run_as_user: id(&format!("{path}.runAsUser"), sc.run_as_user)?,
        run_as_group: id(&format!("{path}.runAsGroup"), sc.run_as_group)?,
        read_only_root_filesystem: sc.read_only_root_filesystem,
        seccomp_profile: seccomp_profile(&format!("{path}.seccompProfile"), sc.seccomp_profile)?,
    })
}

/// `seccompProfile` at `path`. Only `RuntimeDefault` and `Unconfined` are supported: a
/// `Localhost` profile is a file on the node the coordinator cannot check, refused by name
/// rather than run with some other filter.
pub(super) fn seccomp_profile(
    path: &str,
    p: Option<InSeccompProfile>,
) -> Result<Option<api::SeccompProfile>, Invalid> {
    let Some(p) = p else {
        return Ok(None);
    };
    let tpath = format!("{path}.type");
    let typ = match required(&tpath, p.typ)?.as_str() {
        "RuntimeDefault" => api::SeccompProfileType::RuntimeDefault,
        "Unconfined" => api::SeccompProfileType::Unconfined,
        "Localhost" => {
            return invalid(
                tpath,
                "Localhost seccomp profiles are not supported by Baton (use RuntimeDefault, or Unconfined where the coordinator's policy allows it)",
            )
        }
        other => {
            return invalid(
                tpath,
                format!("{other:?} must be RuntimeDefault, Unconfined or Localhost"),
            )
        }
    };
    if p.localhost_profile.is_some() {
        return invalid(
            format!("{path}.localhostProfile"),
            "may only be set with type Localhost",
        );
    }
    Ok(Some(api::SeccompProfile { typ }))
}

/// A capability name as Kubernetes writes it (`NET_ADMIN`); a `CAP_` prefix is dropped
/// so `CAP_NET_ADMIN` and `NET_ADMIN` are one capability for the policy.
fn capability(path: &str, cap: &str) -> Result<String, Invalid> {
    let name = cap.strip_prefix("CAP_").unwrap_or(cap);
    let ok = !name.is_empty()
        && name.len() <= 28
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return invalid(
            path,
            format!("{cap:?} must be a capability name in upper case, e.g. NET_ADMIN"),
        );
    }
    Ok(name.to_owned())
}

fn resources(path: &str, r: InResources) -> Result<api::ResourceRequirements, Invalid> {
    let cpu = |which: &str, v: &Option<String>| -> Result<Option<u32>, Invalid> {
        v.as_deref()
            .map(|s| {
                quantity::parse_cpu_millis(s)
                    .map_err(|e| (format!("{path}.{which}.cpu"), e.to_string()))
            })
            .transpose()
    };
    let memory = |which: &str, v: &Option<String>| -> Result<Option<u64>, Invalid> {
        v.as_deref()
            .map(|s| {
                quantity::parse_memory_bytes(s)
                    .map_err(|e| (format!("{path}.{which}.memory"), e.to_string()))
            })
            .transpose()
    };
    if let (Some(req), Some(lim)) = (
        cpu("requests", &r.requests.cpu)?,
        cpu("limits", &r.limits.cpu)?,
    ) {
        if req > lim {
            return invalid(
                format!("{path}.requests.cpu"),
                format!(
                    "request {} must be less than or equal to the limit {}",
                    quantity::format_cpu(req.into()),
                    quantity::format_cpu(lim.into())
                ),
            );
        }
    }
    if let (Some(req), Some(lim)) = (
        memory("requests", &r.requests.memory)?,
        memory("limits", &r.limits.memory)?,
    ) {
        if req > lim {
            return invalid(
                format!("{path}.requests.memory"),
                format!(
                    "request {} must be less than or equal to the limit {}",
                    quantity::format_memory(req),
                    quantity::format_memory(lim)
                ),
            );
        }
    }
    Ok(api::ResourceRequirements {
        requests: api::ResourceList {
            cpu: r.requests.cpu,
            memory: r.requests.memory,
        },
        limits: api::ResourceList {
            cpu: r.limits.cpu,
            memory: r.limits.memory,
        },
    })
}
