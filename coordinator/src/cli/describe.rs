//! `baton describe KIND NAME`: one object in detail with the events about it; a node
//! also with its pods and its enrolled identity.

use std::time::SystemTime;

use serde_json::Value;

use super::client::{items, parse_objects, Client};
use super::render::describe::{describe_deployment, describe_node, describe_pod, describe_secret};
use super::{named, CliError};
use crate::contract::ResourceKind;
use crate::model::api;

pub(super) async fn describe(
    client: &Client,
    resource: &str,
    name: Option<&str>,
) -> Result<String, CliError> {
    let (kind, name) = named(resource, name, "describe")?;
    let v = client
        .get(&format!("/api/v1/describe/{}/{}", kind.plural(), name))
        .await?;
    let object = v.get("object").cloned().unwrap_or(Value::Null);
    let events: Vec<api::Event> = parse_objects(
        v.get("events")
            .and_then(Value::as_array)
            .map_or(&[][..], |a| a),
    )?;
    let now = SystemTime::now();
    Ok(match kind {
        ResourceKind::Pod => describe_pod(&parse_objects(&[object])?.remove(0), &events, now),
        ResourceKind::Deployment => {
            describe_deployment(&parse_objects(&[object])?.remove(0), &events, now)
        }
        ResourceKind::Node => {
            let node: api::Node = parse_objects(&[object])?.remove(0);
            let pods: Vec<api::Pod> = parse_objects(&items(&client.get("/api/v1/pods").await?))?;
            let on_node: Vec<&api::Pod> = pods
                .iter()
                .filter(|p| p.spec.node_name.as_deref() == Some(node.metadata.name.as_str()))
                .collect();
            // 404: not enrolled (a fleet without identities); shown as such.
            let identity = client
                .get(&format!("/api/v1/nodes/{}/identity", node.metadata.name))
                .await
                .ok();
            describe_node(&node, identity.as_ref(), &on_node, &events, now)
        }
        ResourceKind::Secret => describe_secret(&object, &events, now),
    })
}
