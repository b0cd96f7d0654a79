//! `baton get KIND [NAME] [-o wide|json|yaml]`: kubectl's tables, or the objects as a
//! `List` document.

use std::time::SystemTime;

use serde_json::Value;

use super::client::{items, parse_objects, Client};
use super::render::{deployments_table, nodes_table, pods_table, secrets_table};
use super::{target, CliError, Output};
use crate::contract::ResourceKind;

pub(super) async fn get(
    client: &Client,
    resource: &str,
    name: Option<&str>,
    output: Option<Output>,
) -> Result<String, CliError> {
    let (kind, name) = target(resource, name)?;
    let path = match &name {
        Some(n) => format!("/api/v1/{}/{}", kind.plural(), n),
        None => format!("/api/v1/{}", kind.plural()),
    };
    let v = client.get(&path).await?;
    let objects = if name.is_some() {
        vec![v.clone()]
    } else {
        items(&v)
    };
    Ok(match output {
        Some(Output::Json) => {
            let doc = if name.is_some() { v } else { list_doc(objects) };
            serde_json::to_string_pretty(&doc).map_err(|e| CliError::Protocol(e.to_string()))?
                + "\n"
        }
        Some(Output::Yaml) => {
            let doc = if name.is_some() { v } else { list_doc(objects) };
            serde_yaml_ng::to_string(&doc).map_err(|e| CliError::Protocol(e.to_string()))?
        }
        Some(Output::Wide) | None => {
            let wide = output == Some(Output::Wide);
            let now = SystemTime::now();
            if objects.is_empty() && name.is_none() {
                eprintln!("No resources found");
                String::new()
            } else {
                match kind {
                    ResourceKind::Pod => pods_table(&parse_objects(&objects)?, wide, now),
                    ResourceKind::Deployment => {
                        deployments_table(&parse_objects(&objects)?, wide, now)
                    }
                    ResourceKind::Node => nodes_table(&parse_objects(&objects)?, wide, now),
                    ResourceKind::Secret => secrets_table(&objects, now),
                }
            }
        }
    })
}

fn list_doc(items: Vec<Value>) -> Value {
    serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": items })
}
