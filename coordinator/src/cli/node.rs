//! `baton node revoke|rotate|identity`: a node's enrolled identity.

use std::time::SystemTime;

use clap::Subcommand;

use super::client::Client;
use super::render::not_after_str;
use super::{to_value, CliError, Output};
use crate::contract::nodes::IdentitySummary;
use crate::contract::{routes, NoBody};

/// `baton node ...`: a node's identity (see [`crate::security::gate`]).
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Revoke a node's identity: its messages are refused from now on, its desired state
    /// is emptied and its Deployment pods are rescheduled elsewhere.
    Revoke { name: String },
    /// Rotate a node's device key without downtime: the coordinator asks the running
    /// agent (a signed RotateKey), which makes a new key and has it certified; both keys
    /// are accepted for --rotation-overlap. Waits until the node's key changed.
    Rotate {
        name: String,
        /// How long to wait for the node to rotate.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// A node's enrolled identity: current and previous key, expiry, revocation.
    Identity {
        name: String,
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<Output>,
    },
}

pub(super) async fn node_command(
    client: &Client,
    action: &NodeCommand,
) -> Result<String, CliError> {
    match action {
        NodeCommand::Revoke { name } => {
            let revoke = routes::Revoke { name: name.clone() };
            client.call(&revoke, &NoBody).await?;
            Ok(format!("node/{name} revoked\n"))
        }
        NodeCommand::Rotate { name, timeout } => rotate_node(client, name, *timeout).await,
        NodeCommand::Identity { name, output } => {
            let id = node_identity(client, name).await?;
            Ok(match output {
                Some(Output::Json) => format!("{:#}\n", to_value(&id)?),
                _ => format!(
                    "node:        {name}\npublic key:  {}\nprevious:    {}\nnot after:   {}\nfingerprint: {}\nserial:      {}\nrevoked:     {}\n",
                    id.public_key,
                    id.previous_key.as_deref().unwrap_or("-"),
                    not_after_str(Some(id.not_after), SystemTime::now()),
                    id.fingerprint,
                    id.serial,
                    id.revoked,
                ),
            })
        }
    }
}

async fn node_identity(client: &Client, name: &str) -> Result<IdentitySummary, CliError> {
    let identity = routes::Identity {
        name: name.to_owned(),
    };
    client.call(&identity, &NoBody).await
}

/// `baton node rotate`: asks, then polls the node's identity until its key changed.
async fn rotate_node(
    client: &Client,
    name: &str,
    timeout: std::time::Duration,
) -> Result<String, CliError> {
    let rotate = routes::RotateKey {
        name: name.to_owned(),
    };
    let old = client.call(&rotate, &NoBody).await?.public_key;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let new = node_identity(client, name).await?.public_key;
        if new != old {
            return Ok(format!("node/{name} key rotated: {old} -> {new}\n"));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::Usage(format!(
                "node/{name} asked to rotate its key, but it has not within {timeout:?} (is it online?)"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}
