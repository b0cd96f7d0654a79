//! `baton delete KIND NAME` and `baton scale deployment NAME --replicas N`: the verbs
//! that change one named object.

use super::client::Client;
use super::{named, qualified, CliError};
use crate::contract::ResourceKind;

pub(super) async fn delete(
    client: &Client,
    resource: &str,
    name: Option<&str>,
) -> Result<String, CliError> {
    let (kind, name) = named(resource, name, "delete")?;
    client
        .send(
            client
                .http
                .delete(format!("{}/api/v1/{}/{}", client.base, kind.plural(), name)),
        )
        .await?;
    Ok(format!("{} \"{name}\" deleted\n", qualified(kind)))
}

pub(super) async fn scale(
    client: &Client,
    resource: &str,
    name: Option<&str>,
    replicas: u32,
) -> Result<String, CliError> {
    let (kind, name) = named(resource, name, "scale")?;
    if kind != ResourceKind::Deployment {
        return Err(CliError::Usage(format!(
            "error: cannot scale a {}: only deployments scale",
            kind.as_str()
        )));
    }
    let url = format!("{}/api/v1/deployments/{}/scale", client.base, name);
    client
        .send(
            client
                .http
                .post(url)
                .json(&serde_json::json!({ "replicas": replicas })),
        )
        .await?;
    Ok(format!("deployment.apps/{name} scaled\n"))
}
