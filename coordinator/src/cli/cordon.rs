//! `baton cordon|uncordon|drain NODE`, `baton taint node NODE TAINT...` and `baton label
//! node NODE LABEL...`: scheduling on a node, as kubectl does it.

use std::time::{Duration, Instant};

use super::client::Client;
use super::CliError;
use crate::contract::body::ApiObject;
use crate::contract::nodes::{NodeSpecChange, TaintRemoval};
use crate::contract::{routes, NoBody, ResourceKind};
use crate::model::api::{Taint, TaintEffect};

async fn update(client: &Client, node: &str, change: &NodeSpecChange) -> Result<(), CliError> {
    let route = routes::UpdateNode {
        name: node.to_owned(),
    };
    client.call(&route, change).await?;
    Ok(())
}

/// `cordon` (true) or `uncordon` (false).
pub(super) async fn cordon(client: &Client, node: &str, on: bool) -> Result<String, CliError> {
    let change = NodeSpecChange {
        unschedulable: Some(on),
        ..Default::default()
    };
    update(client, node, &change).await?;
    Ok(format!(
        "node/{node} {}\n",
        if on { "cordoned" } else { "uncordoned" }
    ))
}

/// `taint node NODE key=value:Effect ... key:Effect- ...`.
pub(super) async fn taint(
    client: &Client,
    resource: &str,
    node: &str,
    args: &[String],
) -> Result<String, CliError> {
    if !matches!(resource, "node" | "nodes" | "no") {
        return Err(CliError::Usage(format!(
            "taint: only nodes have taints, not {resource:?} (baton taint node NAME KEY[=VALUE]:EFFECT[-])"
        )));
    }
    if args.is_empty() {
        return Err(CliError::Usage(
            "taint: at least one taint is required (KEY[=VALUE]:EFFECT, or KEY[:EFFECT]- to remove)"
                .into(),
        ));
    }
    let mut change = NodeSpecChange::default();
    for a in args {
        let (t, effect, remove) = parse_taint_arg(a).map_err(CliError::Usage)?;
        if remove {
            change
                .remove_taints
                .push(TaintRemoval { key: t.key, effect });
        } else {
            change.add_taints.push(t);
        }
    }
    update(client, node, &change).await?;
    Ok(format!("node/{node} tainted\n"))
}

/// `label node NODE key=value ... key- ...`, with kubectl's `--overwrite`.
pub(super) async fn label(
    client: &Client,
    resource: &str,
    node: &str,
    args: &[String],
    overwrite: bool,
) -> Result<String, CliError> {
    if !matches!(resource, "node" | "nodes" | "no") {
        return Err(CliError::Usage(format!(
            "label: only nodes can be labeled here, not {resource:?} (baton label node NAME KEY=VALUE|KEY-)"
        )));
    }
    let mut change = NodeSpecChange {
        overwrite,
        ..Default::default()
    };
    for a in args {
        let (k, v) = parse_label_arg(a).map_err(CliError::Usage)?;
        change.labels.insert(k, v);
    }
    update(client, node, &change).await?;
    Ok(format!("node/{node} labeled\n"))
}

/// kubectl's label argument: `key=value` to set, `key-` to remove (`None`).
fn parse_label_arg(arg: &str) -> Result<(String, Option<String>), String> {
    if let Some((k, v)) = arg.split_once('=') {
        if k.is_empty() {
            return Err(format!("{arg}: the label has no key"));
        }
        return Ok((k.to_owned(), Some(v.to_owned())));
    }
    match arg.strip_suffix('-') {
        Some(k) if !k.is_empty() => Ok((k.to_owned(), None)),
        _ => Err(format!("{arg}: a label is key=value, or key- to remove it")),
    }
}

/// `drain`: cordons the node, then deletes its pods (gracefully, as `delete pod` does) so
/// that their Deployments replace them elsewhere, and waits until none is left. Pods no
/// controller replaces are refused unless `force`, as kubectl does. DaemonSet pods stay:
/// they belong to the node (and tolerate the cordon), as with kubectl's
/// `--ignore-daemonsets`, and the output names them; so do the pods of node-scheduled
/// CronJob runs, which the node fires itself.
pub(super) async fn drain(
    client: &Client,
    node: &str,
    force: bool,
    timeout: Duration,
) -> Result<String, CliError> {
    // The node must exist: cordoning answers 404 otherwise.
    let mut out = cordon(client, node, true).await?;
    let on_node = |objects: Vec<ApiObject>| -> Vec<crate::model::api::Pod> {
        objects
            .into_iter()
            .filter_map(|o| match o {
                ApiObject::Pod(p) if p.spec.node_name.as_deref() == Some(node) => Some(p),
                _ => None,
            })
            .collect()
    };
    let list = routes::ListObjects {
        kind: ResourceKind::Pod,
    };
    let (daemons, pods): (Vec<_>, Vec<_>) = on_node(client.call(&list, &NoBody).await?.items)
        .into_iter()
        // A node-scheduled CronJob's runs are the node's too: only the node stops them.
        .partition(|p| p.metadata.daemon_set.is_some() || p.node_run());
    for (what, node_own) in [
        ("DaemonSet-managed", true),
        ("node-scheduled CronJob", false),
    ] {
        let names: Vec<&str> = daemons
            .iter()
            .filter(|p| p.metadata.daemon_set.is_some() == node_own)
            .map(|p| p.metadata.name.as_str())
            .collect();
        if !names.is_empty() {
            out.push_str(&format!(
                "Warning: ignoring {what} pods: {}\n",
                names.join(", ")
            ));
        }
    }
    let bare: Vec<&str> = pods
        .iter()
        .filter(|p| p.metadata.owner.is_none() && p.metadata.job.is_none())
        .map(|p| p.metadata.name.as_str())
        .collect();
    if !bare.is_empty() && !force {
        return Err(CliError::Usage(format!(
            "{out}cannot delete pods that no controller replaces (use --force to delete them anyway): {}",
            bare.join(", ")
        )));
    }
    // Pods already terminating are on their way out.
    for p in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        // A node runs pods of every namespace.
        let ns = p.metadata.namespace.as_deref();
        super::scope::delete(client, ResourceKind::Pod, &p.metadata.name, ns).await?;
        out.push_str(&format!("evicting pod {}\n", p.metadata.name));
    }
    let end = Instant::now() + timeout;
    loop {
        let left: Vec<_> = on_node(client.call(&list, &NoBody).await?.items)
            .into_iter()
            .filter(|p| p.metadata.daemon_set.is_none() && !p.node_run())
            .collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() >= end {
            let names: Vec<&str> = left.iter().map(|p| p.metadata.name.as_str()).collect();
            return Err(CliError::Rollout(format!(
                "{out}drain of node/{node} timed out after {}; still on it: {}",
                humantime::format_duration(timeout),
                names.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    out.push_str(&format!("node/{node} drained\n"));
    Ok(out)
}

/// Parses kubectl's taint argument: `key=value:Effect`, `key:Effect`, or with a trailing
/// `-` (answered as `true`) a taint to remove, where the effect may be left out
/// (`key-`: every effect).
fn parse_taint_arg(arg: &str) -> Result<(Taint, Option<TaintEffect>, bool), String> {
    let (body, remove) = match arg.strip_suffix('-') {
        Some(b) => (b, true),
        None => (arg, false),
    };
    let (kv, effect) = match body.rsplit_once(':') {
        Some((kv, e)) => {
            let effect = match e {
                "NoSchedule" => TaintEffect::NoSchedule,
                "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
                "NoExecute" => TaintEffect::NoExecute,
                _ => {
                    return Err(format!(
                        "{arg}: unknown effect {e:?} (NoSchedule, PreferNoSchedule or NoExecute)"
                    ))
                }
            };
            (kv, Some(effect))
        }
        None if remove => (body, None),
        None => return Err(format!("{arg}: a taint is key[=value]:Effect")),
    };
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    if key.is_empty() {
        return Err(format!("{arg}: the taint has no key"));
    }
    let taint = Taint {
        key: key.to_owned(),
        value: value.to_owned(),
        effect: effect.unwrap_or(TaintEffect::NoSchedule),
        time_added: None,
    };
    Ok((taint, effect, remove))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_arguments_parse_as_kubectl_spells_them() {
        assert_eq!(
            parse_label_arg("zone=lab").unwrap(),
            ("zone".into(), Some("lab".into()))
        );
        assert_eq!(
            parse_label_arg("zone=").unwrap(),
            ("zone".into(), Some("".into()))
        );
        assert_eq!(parse_label_arg("zone-").unwrap(), ("zone".into(), None));
        assert!(parse_label_arg("zone").unwrap_err().contains("key=value"));
        assert!(parse_label_arg("=x").unwrap_err().contains("no key"));
        assert!(parse_label_arg("-").is_err());
    }

    #[test]
    fn taint_arguments_parse_as_kubectl_spells_them() {
        let (t, e, rm) = parse_taint_arg("dedicated=cams:NoExecute").unwrap();
        assert_eq!(
            (t.to_string(), e, rm),
            (
                "dedicated=cams:NoExecute".into(),
                Some(TaintEffect::NoExecute),
                false
            )
        );
        let (t, e, rm) = parse_taint_arg("gpu:NoSchedule-").unwrap();
        assert_eq!(
            (t.key.as_str(), e, rm),
            ("gpu", Some(TaintEffect::NoSchedule), true)
        );
        let (t, e, rm) = parse_taint_arg("gpu-").unwrap();
        assert_eq!((t.key.as_str(), e, rm), ("gpu", None, true));
        assert!(parse_taint_arg("gpu")
            .unwrap_err()
            .contains("key[=value]:Effect"));
        assert!(parse_taint_arg("gpu:Never")
            .unwrap_err()
            .contains("unknown effect"));
        assert!(parse_taint_arg("=x:NoSchedule")
            .unwrap_err()
            .contains("no key"));
    }
}
