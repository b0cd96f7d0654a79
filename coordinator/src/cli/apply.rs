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
    check_size(file, yaml.len())?;
    let route = routes::Apply {
        namespace: client.namespace_flag().map(str::to_owned),
    };
    let applied = client.call(&route, &Manifest(yaml)).await?;
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

/// Refuses a manifest the server would refuse (413) before sending it: the server closes
/// the connection on an oversized body, which the client would see as an unreachable
/// server instead of the real cause.
fn check_size(file: &str, len: usize) -> Result<(), CliError> {
    let limit = crate::contract::payload::MAX_REQUEST_BYTES;
    if len <= limit {
        return Ok(());
    }
    let mib = |n: usize| n as f64 / (1024.0 * 1024.0);
    let file = if file == "-" { "stdin" } else { file };
    Err(CliError::Usage(format!(
        "error: manifest too large: {file} is {:.1} MiB, the limit is {:.0} MiB (split it into several files)",
        mib(len),
        mib(limit)
    )))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_manifest_names_its_size_and_the_limit() {
        assert!(check_size("ok.yaml", crate::contract::payload::MAX_REQUEST_BYTES).is_ok());
        let e = check_size("big.yaml", 20 * 1024 * 1024)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("manifest too large: big.yaml is 20.0 MiB, the limit is 3 MiB"),
            "{e}"
        );
    }
}
