//! `baton apply -f FILE`: sends a manifest (`-` reads stdin) and prints kubectl's
//! `deployment.apps/web created` line for each object.

use std::io::Read;

use super::client::Client;
use super::{qualified, CliError};
use crate::contract::payload::Manifest;
use crate::contract::routes;
use crate::contract::ApplyAction;

pub(super) async fn apply(client: &Client, file: &str) -> Result<String, CliError> {
    let yaml = read_manifest(file)?;
    let applied = client.call(&routes::Apply {}, &Manifest(yaml)).await?;
    let mut out = String::new();
    for r in applied.results {
        let action = match r.action {
            ApplyAction::Created => "created",
            ApplyAction::Configured => "configured",
            ApplyAction::Unchanged => "unchanged",
        };
        out.push_str(&format!("{}/{} {action}\n", qualified(r.kind), r.name));
    }
    Ok(out)
}

fn read_manifest(file: &str) -> Result<String, CliError> {
    let mut s = String::new();
    if file == "-" {
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|source| CliError::Read {
                path: "stdin".into(),
                source,
            })?;
    } else {
        s = std::fs::read_to_string(file).map_err(|source| CliError::Read {
            path: file.into(),
            source,
        })?;
    }
    Ok(s)
}
