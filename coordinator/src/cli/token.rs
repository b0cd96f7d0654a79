//! `baton token create|list|delete`: API tokens and join tokens (admin only).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use clap::Subcommand;

use super::client::Client;
use super::render::{age, table};
use super::CliError;
use crate::contract::tokens::{JoinTokenRequest, Role, TokenRequest};
use crate::contract::{routes, NoBody};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it; it is shown only this once. With --role: an API token.
    /// Without: a join token that enrolls devices (`baton-agent --join-token`).
    Create {
        /// admin (everything) or read-only (GET routes only). With `-n NS` (or
        /// `-n NS1,NS2`) the token is limited to those namespaces: their objects by this
        /// role, no cluster-scoped ones.
        #[arg(long, value_parser = ["admin", "read-only"], conflicts_with_all = ["ttl", "uses", "labels", "node_name"])]
        role: Option<String>,
        /// A name to list and delete it by (default: a random one).
        #[arg(long, requires = "role")]
        name: Option<String>,
        /// Join token: how long it can be used (default 1h).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Join token: how many devices it can enroll (default 1).
        #[arg(long)]
        uses: Option<u32>,
        /// Join token: labels the enrolled nodes get (k=v,...).
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// Join token: the only node name it may enroll; it may also replace that node's
        /// key (a new device for the same name, or a revoked node coming back).
        #[arg(long)]
        node_name: Option<String>,
    },
    /// List tokens (names, roles and ages; never secrets).
    List,
    /// Delete an API token by its NAME, or a join token by its ID (the JOIN TOKEN column
    /// of `token list`): it stops working at once.
    Delete {
        #[arg(value_name = "NAME|ID")]
        name: String,
    },
}

/// The namespaces `-n` limits a token to: one, or several separated by commas (the
/// server checks each name).
fn token_namespaces(flag: Option<&str>) -> Vec<String> {
    flag.into_iter()
        .flat_map(|f| f.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(super) async fn token(client: &Client, action: &TokenCommand) -> Result<String, CliError> {
    match action {
        TokenCommand::Create {
            role: None,
            ttl,
            uses,
            labels,
            node_name,
            ..
        } => {
            let mut map = BTreeMap::new();
            for l in labels.iter().filter(|l| !l.is_empty()) {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| CliError::Usage(format!("label {l:?} is not KEY=VALUE")))?;
                map.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            let request = JoinTokenRequest {
                ttl_seconds: ttl.unwrap_or(Duration::from_secs(3600)).as_secs(),
                uses: uses.unwrap_or(1),
                labels: map,
                node_name: node_name.clone(),
            };
            let created = client.call(&routes::CreateJoinToken {}, &request).await?;
            let id = created.info.id;
            eprintln!("join token {id} created; it is shown only this once:");
            Ok(format!("{}\n", created.token))
        }
        TokenCommand::Create {
            role: Some(role),
            name,
            ..
        } => {
            let name = name
                .clone()
                .unwrap_or_else(|| format!("token-{:08x}", rand::random::<u32>()));
            // clap admits only the roles' names.
            let namespaces = token_namespaces(client.namespace_flag());
            let request = TokenRequest {
                name: name.clone(),
                role: Role::parse(role)
                    .ok_or_else(|| CliError::Usage(format!("error: no role {role:?}")))?,
                namespaces: namespaces.clone(),
            };
            let created = client.call(&routes::CreateToken {}, &request).await?;
            let scope = if namespaces.is_empty() {
                String::new()
            } else {
                let s = if namespaces.len() > 1 { "s" } else { "" };
                format!(" in namespace{s} {}", namespaces.join(","))
            };
            eprintln!("token/{name} created ({role}{scope}); it is shown only this once:");
            Ok(format!("{}\n", created.token))
        }
        TokenCommand::List => {
            let list = client.call(&routes::ListTokens {}, &NoBody).await?.items;
            let now = SystemTime::now();
            // NAMESPACES only once a token is limited to some.
            let scoped = list.iter().any(|t| !t.namespaces.is_empty());
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|t| {
                    let mut row = vec![t.name.clone(), t.role.as_str().to_owned()];
                    if scoped {
                        row.push(match t.namespaces.is_empty() {
                            true => "<all>".to_owned(),
                            false => t.namespaces.join(","),
                        });
                    }
                    row.push(age(&t.creation_timestamp, now));
                    row
                })
                .collect();
            let header: &[&str] = if scoped {
                &["NAME", "ROLE", "NAMESPACES", "AGE"]
            } else {
                &["NAME", "ROLE", "AGE"]
            };
            let mut out = table(header, &rows);
            let joins = client
                .call(&routes::ListJoinTokens {}, &NoBody)
                .await?
                .items;
            if !joins.is_empty() {
                let now_s = now
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let rows: Vec<Vec<String>> = joins
                    .iter()
                    .map(|t| {
                        let left = t.expires.saturating_sub(now_s);
                        vec![
                            t.id.clone(),
                            t.uses_left.to_string(),
                            if left == 0 {
                                "expired".into()
                            } else {
                                humantime::format_duration(Duration::from_secs(left)).to_string()
                            },
                            t.node_name.clone().unwrap_or_else(|| "<any>".into()),
                            t.labels
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(","),
                        ]
                    })
                    .collect();
                out.push('\n');
                out.push_str(&table(
                    &["JOIN TOKEN", "USES LEFT", "EXPIRES IN", "NODE", "LABELS"],
                    &rows,
                ));
            }
            Ok(out)
        }
        TokenCommand::Delete { name } => {
            let api_token = routes::DeleteToken { name: name.clone() };
            match client.call(&api_token, &NoBody).await {
                Ok(_) => Ok(format!("token \"{name}\" deleted\n")),
                Err(CliError::Server { status, .. }) if status == "NotFound" => {
                    let join_token = routes::DeleteJoinToken { id: name.clone() };
                    client.call(&join_token, &NoBody).await?;
                    Ok(format!("join token \"{name}\" deleted\n"))
                }
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_token_may_be_limited_to_several_namespaces() {
        assert!(super::token_namespaces(None).is_empty());
        assert_eq!(super::token_namespaces(Some("team-a")), ["team-a"]);
        assert_eq!(
            super::token_namespaces(Some("team-a,team-b")),
            ["team-a", "team-b"]
        );
    }
}
