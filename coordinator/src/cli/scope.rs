//! Which route a verb calls for an object of a kind, by `-n`/`-A`: a namespaced kind
//! through the namespaced routes (`/api/v1/namespaces/NS/...`), a cluster-scoped one
//! (nodes, namespaces, agent updates) through the plain ones.

use super::client::Client;
use super::CliError;
use crate::contract::body::{ApiObject, Deleted, Described};
use crate::contract::{routes, NoBody, ResourceKind};

/// Every object of `kind` in the namespace (every namespace with `-A`).
pub(super) async fn list(client: &Client, kind: ResourceKind) -> Result<Vec<ApiObject>, CliError> {
    let items = if !kind.is_namespaced() || client.all_namespaces() {
        client.call(&routes::ListObjects { kind }, &NoBody).await?
    } else {
        let route = routes::ListNamespaced {
            namespace: client.namespace().to_owned(),
            kind,
        };
        client.call(&route, &NoBody).await?
    };
    Ok(items.items)
}

/// Pods of every namespace (what runs on a node is not one namespace's).
pub(super) async fn all_pods(client: &Client) -> Result<Vec<ApiObject>, CliError> {
    let route = routes::ListObjects {
        kind: ResourceKind::Pod,
    };
    Ok(client.call(&route, &NoBody).await?.items)
}

pub(super) async fn get(
    client: &Client,
    kind: ResourceKind,
    name: &str,
) -> Result<ApiObject, CliError> {
    if kind.is_namespaced() {
        let route = routes::GetNamespaced {
            namespace: client.namespace().to_owned(),
            kind,
            name: name.to_owned(),
        };
        client.call(&route, &NoBody).await
    } else {
        let route = routes::GetObject {
            kind,
            name: name.to_owned(),
        };
        client.call(&route, &NoBody).await
    }
}

/// Deletes `name` in `namespace` (`None`: the verb's namespace).
pub(super) async fn delete(
    client: &Client,
    kind: ResourceKind,
    name: &str,
    namespace: Option<&str>,
) -> Result<Deleted, CliError> {
    if kind.is_namespaced() {
        let route = routes::DeleteNamespaced {
            namespace: namespace.unwrap_or(client.namespace()).to_owned(),
            kind,
            name: name.to_owned(),
        };
        client.call(&route, &NoBody).await
    } else {
        let route = routes::DeleteObject {
            kind,
            name: name.to_owned(),
        };
        client.call(&route, &NoBody).await
    }
}

pub(super) async fn describe(
    client: &Client,
    kind: ResourceKind,
    name: &str,
) -> Result<Described, CliError> {
    if kind.is_namespaced() {
        let route = routes::DescribeNamespaced {
            namespace: client.namespace().to_owned(),
            kind,
            name: name.to_owned(),
        };
        client.call(&route, &NoBody).await
    } else {
        let route = routes::Describe {
            kind,
            name: name.to_owned(),
        };
        client.call(&route, &NoBody).await
    }
}
