//! `baton delete KIND NAME` and `baton scale deployment NAME --replicas N`: the verbs
//! that change one named object.

use super::client::Client;
use super::{named, qualified, CliError};
use crate::contract::body::ScaleRequest;
use crate::contract::{routes, ResourceKind};

pub(super) async fn delete(
    client: &Client,
    resource: &str,
    name: Option<&str>,
) -> Result<String, CliError> {
    let (kind, name) = named(resource, name, "delete")?;
    super::scope::delete(client, kind, &name, None).await?;
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
    let scale = routes::ScaleNamespaced {
        namespace: client.namespace().to_owned(),
        name: name.clone(),
    };
    client.call(&scale, &ScaleRequest { replicas }).await?;
    Ok(format!("deployment.apps/{name} scaled\n"))
}
