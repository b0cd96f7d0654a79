//! A `Pod` (`v1`), and the pod spec a Deployment's template shares: containers, volumes,
//! pull secrets and the pod's security context.

use std::collections::BTreeSet;

use super::container::{container, seccomp_profile, ContainerKind};
use super::input::{
    InAffinity, InContainer, InPod, InPodSpec, InRequirement, InTerm, InToleration, InVolume,
};
use super::validate::{
    absolute_path, dns_label, grouped, id, invalid, label_value, object_meta, qualified_name,
    required, secret_key, secret_name, Invalid,
};
use super::MAX_NAME_LEN;
use crate::model::{api, quantity};

pub(super) fn pod(input: InPod) -> Result<api::Pod, Invalid> {
    Ok(api::Pod {
        api_version: "v1".to_string(),
        kind: "Pod".to_string(),
        metadata: object_meta(input.metadata, MAX_NAME_LEN)?,
        spec: pod_spec("spec", input.spec)?,
        status: api::PodStatus::default(),
    })
}

pub(super) fn pod_spec(path: &str, spec: InPodSpec) -> Result<api::PodSpec, Invalid> {
    if spec.containers.is_empty() {
        return invalid(
            format!("{path}.containers"),
            "at least one container is required",
        );
    }
    for (k, v) in &spec.node_selector {
        let p = format!("{path}.nodeSelector");
        qualified_name(&p, k)?;
        label_value(&format!("{p}.{k}"), v)?;
    }
    let (dns_policy, dns_config, host_aliases) =
        super::pod_dns::pod_dns(path, spec.dns_policy, spec.dns_config, spec.host_aliases)?;
    let grace = match spec.termination_grace_period_seconds {
        None => None,
        Some(s) => Some(u32::try_from(s).map_err(|_| {
            (
                format!("{path}.terminationGracePeriodSeconds"),
                format!("must be between 0 and {}, got {s}", u32::MAX),
            )
        })?),
    };
    let volumes = volumes(path, spec.volumes)?;
    let volume_names: BTreeSet<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    let mut names = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    let mut convert = |field: &str,
                       kind: ContainerKind,
                       input: Vec<InContainer>|
     -> Result<Vec<api::Container>, Invalid> {
        let mut out = Vec::with_capacity(input.len());
        for (i, c) in input.into_iter().enumerate() {
            let cpath = format!("{path}.{field}[{i}]");
            let c = container(&cpath, c, spec.host_network, &volume_names, kind)?;
            if !names.insert(c.name.clone()) {
                return invalid(
                    format!("{cpath}.name"),
                    format!("duplicate container name {:?}", c.name),
                );
            }
            for (j, p) in c.ports.iter().enumerate() {
                if let Some(hp) = p.host_port {
                    if !host_ports.insert((hp, p.protocol == api::Protocol::UDP)) {
                        return invalid(
                            format!("{cpath}.ports[{j}].hostPort"),
                            format!("duplicate host port {hp}/{:?} in the pod", p.protocol),
                        );
                    }
                }
            }
            out.push(c);
        }
        Ok(out)
    };
    let init_containers = convert("initContainers", ContainerKind::Init, spec.init_containers)?;
    let containers = convert("containers", ContainerKind::Main, spec.containers)?;
    let mut image_pull_secrets = Vec::with_capacity(spec.image_pull_secrets.len());
    for (i, r) in spec.image_pull_secrets.into_iter().enumerate() {
        let p = format!("{path}.imagePullSecrets[{i}].name");
        let name = required(&p, r.name)?;
        secret_name(&p, &name)?;
        image_pull_secrets.push(api::LocalObjectReference { name });
    }
    let sc = spec.security_context;
    let security_context = api::PodSecurityContext {
        run_as_user: id(&format!("{path}.securityContext.runAsUser"), sc.run_as_user)?,
        run_as_group: id(
            &format!("{path}.securityContext.runAsGroup"),
            sc.run_as_group,
        )?,
        seccomp_profile: seccomp_profile(
            &format!("{path}.securityContext.seccompProfile"),
            sc.seccomp_profile,
        )?,
    };
    Ok(api::PodSpec {
        containers,
        node_selector: spec.node_selector,
        host_network: spec.host_network,
        restart_policy: spec.restart_policy.unwrap_or_default(),
        termination_grace_period_seconds: grace,
        node_name: None,
        init_containers,
        volumes,
        image_pull_secrets,
        security_context,
        tolerations: tolerations(path, spec.tolerations)?,
        affinity: spec
            .affinity
            .map(|a| affinity(&format!("{path}.affinity"), a))
            .transpose()?,
        priority: priority(path, spec.priority_class_name.as_deref(), spec.priority)?,
        priority_class_name: spec.priority_class_name,
        dns_policy,
        dns_config,
        host_aliases,
    })
}

/// The pod's priority as Kubernetes' Priority admission resolves it: from the class (only the
/// two built-in ones exist here), and a `priority` given too must be the one it resolves to
/// (0 without a class, since no class is the global default).
fn priority(path: &str, class: Option<&str>, given: Option<i64>) -> Result<Option<i32>, Invalid> {
    let resolved = match class {
        None => None,
        Some("system-node-critical") => Some(baton_proto::SYSTEM_NODE_CRITICAL_PRIORITY),
        Some("system-cluster-critical") => Some(baton_proto::SYSTEM_CRITICAL_PRIORITY),
        Some(other) => {
            return invalid(
                format!("{path}.priorityClassName"),
                format!(
                    "no PriorityClass named {other:?}: only system-node-critical and \
                     system-cluster-critical exist"
                ),
            )
        }
    };
    match given {
        Some(p) if p != i64::from(resolved.unwrap_or(0)) => invalid(
            format!("{path}.priority"),
            format!(
                "must be {}, the priority of {}, got {p}",
                resolved.unwrap_or(0),
                class.map_or("no priorityClassName".to_string(), |c| format!("{c:?}"))
            ),
        ),
        Some(_) => Ok(Some(resolved.unwrap_or(0))),
        None => Ok(resolved),
    }
}

fn volumes(path: &str, input: Vec<InVolume>) -> Result<Vec<api::Volume>, Invalid> {
    let mut out: Vec<api::Volume> = Vec::with_capacity(input.len());
    for (i, v) in input.into_iter().enumerate() {
        let vpath = format!("{path}.volumes[{i}]");
        let name = required(&format!("{vpath}.name"), v.name)?;
        dns_label(&format!("{vpath}.name"), &name, MAX_NAME_LEN)?;
        if out.iter().any(|o| o.name == name) {
            return invalid(
                format!("{vpath}.name"),
                format!("duplicate volume name {name:?}"),
            );
        }
        let mut sources = Vec::new();
        if let Some(s) = v.secret {
            let p = format!("{vpath}.secret.secretName");
            let secret = required(&p, s.secret_name)?;
            secret_name(&p, &secret)?;
            sources.push(api::VolumeSource::Secret {
                secret_name: secret,
            });
        }
        if let Some(e) = v.empty_dir {
            if let Some(limit) = &e.size_limit {
                quantity::parse_memory_bytes(limit)
                    .map_err(|err| (format!("{vpath}.emptyDir.sizeLimit"), err.to_string()))?;
            }
            sources.push(api::VolumeSource::EmptyDir {
                size_limit: e.size_limit,
            });
        }
        if let Some(h) = v.host_path {
            let p = format!("{vpath}.hostPath.path");
            let hp = required(&p, h.path)?;
            absolute_path(&p, &hp)?;
            sources.push(api::VolumeSource::HostPath { path: hp });
        }
        if let Some(c) = v.config_map {
            sources.push(config_map_volume(&format!("{vpath}.configMap"), c)?);
        }
        let source = match sources.len() {
            0 => {
                return invalid(
                    vpath,
                    "must specify a volume type: secret, configMap, emptyDir or hostPath",
                )
            }
            1 => sources.remove(0),
            _ => return invalid(vpath, "may not specify more than 1 volume type"),
        };
        out.push(api::Volume { name, source });
    }
    Ok(out)
}

/// A file mode of a projected volume: 0 to 0777, as the API server checks it. `0400` is
/// octal, as in the YAML 1.1 Kubernetes reads.
fn file_mode(path: &str, mode: super::input::InMode) -> Result<u16, Invalid> {
    use super::input::InMode;
    let mode = match mode {
        InMode::Number(n) => n,
        InMode::Text(t) => {
            let digits = t.strip_prefix("0o").or_else(|| t.strip_prefix('0'));
            match digits.and_then(|d| i64::from_str_radix(d, 8).ok()) {
                Some(n) => n,
                None => return invalid(path, format!("{t:?} is not a file mode")),
            }
        }
    };
    if !(0..=0o777).contains(&mode) {
        return invalid(
            path,
            format!("{mode} must be a number between 0 and 0777 (octal), both inclusive"),
        );
    }
    Ok(mode as u16)
}

/// A `configMap` volume: name, `items` (relative paths, never through `..`), modes.
fn config_map_volume(
    path: &str,
    c: super::input::InConfigMapVolume,
) -> Result<api::VolumeSource, Invalid> {
    let name = required(&format!("{path}.name"), c.name)?;
    secret_name(&format!("{path}.name"), &name)?;
    let default_mode = match c.default_mode {
        Some(m) => Some(file_mode(&format!("{path}.defaultMode"), m)?),
        None => None,
    };
    // The agent takes as many items as a ConfigMap has keys, at most.
    if c.items.len() > baton_proto::MAX_CONFIG_MAP_KEYS {
        return invalid(
            format!("{path}.items"),
            format!(
                "{} items, at most {} (the agent's limit)",
                grouped(c.items.len()),
                grouped(baton_proto::MAX_CONFIG_MAP_KEYS)
            ),
        );
    }
    let mut items = Vec::with_capacity(c.items.len());
    for (i, it) in c.items.into_iter().enumerate() {
        let ipath = format!("{path}.items[{i}]");
        let key = required(&format!("{ipath}.key"), it.key)?;
        secret_key(&format!("{ipath}.key"), &key)?;
        let p = required(&format!("{ipath}.path"), it.path)?;
        let escapes = p.starts_with('/')
            || p.starts_with("..")
            || p.split('/').any(|e| e == "..")
            || p.len() > 4096;
        if p.is_empty() || escapes {
            return invalid(
                format!("{ipath}.path"),
                format!("{p:?} must be a relative path without '..' that does not start with '..'"),
            );
        }
        let mode = match it.mode {
            Some(m) => Some(file_mode(&format!("{ipath}.mode"), m)?),
            None => None,
        };
        items.push(api::KeyToPath { key, path: p, mode });
    }
    Ok(api::VolumeSource::ConfigMap {
        name,
        items,
        default_mode,
        optional: c.optional,
    })
}

/// Tolerations, checked as the API server validates them.
fn tolerations(path: &str, input: Vec<InToleration>) -> Result<Vec<api::Toleration>, Invalid> {
    let mut out = Vec::with_capacity(input.len());
    for (i, t) in input.into_iter().enumerate() {
        let p = format!("{path}.tolerations[{i}]");
        let operator = match t.operator.as_deref() {
            None | Some("Equal") => api::TolerationOperator::Equal,
            Some("Exists") => api::TolerationOperator::Exists,
            Some(o) => {
                return invalid(
                    format!("{p}.operator"),
                    format!("must be Equal or Exists, got {o:?}"),
                )
            }
        };
        if !t.key.is_empty() {
            qualified_name(&format!("{p}.key"), &t.key)?;
        } else if operator != api::TolerationOperator::Exists {
            return invalid(
                format!("{p}.operator"),
                "must be Exists when `key` is empty (it then tolerates every taint)",
            );
        }
        if operator == api::TolerationOperator::Exists && !t.value.is_empty() {
            return invalid(
                format!("{p}.value"),
                "must be empty when `operator` is Exists",
            );
        }
        let effect = match t.effect.as_deref() {
            None | Some("") => None,
            Some("NoSchedule") => Some(api::TaintEffect::NoSchedule),
            Some("PreferNoSchedule") => Some(api::TaintEffect::PreferNoSchedule),
            Some("NoExecute") => Some(api::TaintEffect::NoExecute),
            Some(e) => {
                return invalid(
                    format!("{p}.effect"),
                    format!("must be NoSchedule, PreferNoSchedule or NoExecute, got {e:?}"),
                )
            }
        };
        let toleration_seconds = match t.toleration_seconds {
            None => None,
            Some(_) if effect != Some(api::TaintEffect::NoExecute) => {
                return invalid(
                    format!("{p}.tolerationSeconds"),
                    "only applies to `effect: NoExecute`",
                )
            }
            // Kubernetes evicts at once for zero and negative values.
            Some(s) => Some(u64::try_from(s).unwrap_or(0)),
        };
        out.push(api::Toleration {
            key: t.key,
            operator,
            value: t.value,
            effect,
            toleration_seconds,
        });
    }
    Ok(out)
}

/// Node affinity, checked as the API server validates it.
fn affinity(path: &str, input: InAffinity) -> Result<api::Affinity, Invalid> {
    let Some(na) = input.node_affinity else {
        return Ok(api::Affinity::default());
    };
    let p = format!("{path}.nodeAffinity");
    let hard = match na.required {
        None => None,
        Some(sel) => {
            let rp =
                format!("{p}.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms");
            if sel.node_selector_terms.is_empty() {
                return invalid(rp, "at least one term is required");
            }
            let terms = sel
                .node_selector_terms
                .into_iter()
                .enumerate()
                .map(|(i, t)| term(&format!("{rp}[{i}]"), t))
                .collect::<Result<_, _>>()?;
            Some(api::RequiredNodeSelector {
                node_selector_terms: terms,
            })
        }
    };
    let mut preferred = Vec::new();
    for (i, pr) in na.preferred.into_iter().enumerate() {
        let pp = format!("{p}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
        let weight = required_weight(&format!("{pp}.weight"), pr.weight)?;
        let preference = term(
            &format!("{pp}.preference"),
            required(&format!("{pp}.preference"), pr.preference)?,
        )?;
        preferred.push(api::PreferredSchedulingTerm { weight, preference });
    }
    Ok(api::Affinity {
        node_affinity: Some(api::NodeAffinity {
            required: hard,
            preferred,
        }),
    })
}

fn required_weight(path: &str, w: Option<i64>) -> Result<u32, Invalid> {
    match required(path, w)? {
        w @ 1..=100 => Ok(w as u32),
        w => invalid(path, format!("must be between 1 and 100, got {w}")),
    }
}

fn term(path: &str, t: InTerm) -> Result<api::NodeSelectorTerm, Invalid> {
    let exprs = t
        .match_expressions
        .into_iter()
        .enumerate()
        .map(|(i, r)| requirement(&format!("{path}.matchExpressions[{i}]"), r))
        .collect::<Result<_, _>>()?;
    Ok(api::NodeSelectorTerm {
        match_expressions: exprs,
    })
}

fn requirement(path: &str, r: InRequirement) -> Result<api::NodeSelectorRequirement, Invalid> {
    use api::NodeSelectorOperator as Op;
    let key = required(&format!("{path}.key"), r.key)?;
    qualified_name(&format!("{path}.key"), &key)?;
    let op_path = format!("{path}.operator");
    let operator = match required(&op_path, r.operator)?.as_str() {
        "In" => Op::In,
        "NotIn" => Op::NotIn,
        "Exists" => Op::Exists,
        "DoesNotExist" => Op::DoesNotExist,
        "Gt" => Op::Gt,
        "Lt" => Op::Lt,
        o => {
            return invalid(
                op_path,
                format!("must be In, NotIn, Exists, DoesNotExist, Gt or Lt, got {o:?}"),
            )
        }
    };
    let vp = format!("{path}.values");
    match operator {
        Op::In | Op::NotIn if r.values.is_empty() => {
            return invalid(vp, "must be non-empty with In and NotIn")
        }
        Op::Exists | Op::DoesNotExist if !r.values.is_empty() => {
            return invalid(vp, "must be empty with Exists and DoesNotExist")
        }
        Op::Gt | Op::Lt if r.values.len() != 1 || r.values[0].parse::<i64>().is_err() => {
            return invalid(vp, "must be one integer with Gt and Lt")
        }
        _ => {}
    }
    for (i, v) in r.values.iter().enumerate() {
        label_value(&format!("{vp}[{i}]"), v)?;
    }
    Ok(api::NodeSelectorRequirement {
        key,
        operator,
        values: r.values,
    })
}
