//! `baton cordon|uncordon|drain NODE` and `baton taint node NODE TAINT...`: scheduling on a
//! node, as kubectl does it.

use std::time::{Duration, Instant};

use super::client::Client;
use super::CliError;
use crate::contract::body::ApiObject;
use crate::contract::nodes::{NodeSpecChange, TaintRemoval};
use crate::contract::{routes, NoBody, ResourceKind};
use crate::decide::controller;
use crate::decide::taints::parse_taint_arg;

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

/// `drain`: cordons the node, then deletes its pods (gracefully, as `delete pod` does) so
/// that their Deployments replace them elsewhere, and waits until none is left. Pods no
/// controller replaces are refused unless `force`, as kubectl does.
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
    let pods = on_node(client.call(&list, &NoBody).await?.items);
    let bare: Vec<&str> = pods
        .iter()
        .filter(|p| p.metadata.owner.is_none())
        .map(|p| p.metadata.name.as_str())
        .collect();
    if !bare.is_empty() && !force {
        return Err(CliError::Usage(format!(
            "{out}cannot delete pods that no controller replaces (use --force to delete them anyway): {}",
            bare.join(", ")
        )));
    }
    for p in pods.iter().filter(|p| !controller::is_terminating(p)) {
        let del = routes::DeleteObject {
            kind: ResourceKind::Pod,
            name: p.metadata.name.clone(),
        };
        client.call(&del, &NoBody).await?;
        out.push_str(&format!("evicting pod {}\n", p.metadata.name));
    }
    let end = Instant::now() + timeout;
    loop {
        let left = on_node(client.call(&list, &NoBody).await?.items);
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
