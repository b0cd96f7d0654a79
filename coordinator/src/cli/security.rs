//! `baton security rejections`: the refused MQTT messages, per reason and node.

use clap::Subcommand;

use super::client::Client;
use super::render::table;
use super::{CliError, Output};

/// `baton security ...`.
#[derive(Debug, Subcommand)]
pub enum SecurityCommand {
    /// Refused MQTT messages, per reason and per node, since the coordinator started.
    Rejections {
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<Output>,
    },
}

pub(super) async fn security_command(
    client: &Client,
    action: &SecurityCommand,
) -> Result<String, CliError> {
    match action {
        SecurityCommand::Rejections { output } => {
            let v = client
                .send(
                    client
                        .http
                        .get(format!("{}/api/v1/security/rejections", client.base)),
                )
                .await?;
            if matches!(output, Some(Output::Json)) {
                return Ok(format!(
                    "{}\n",
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                ));
            }
            let mut rows: Vec<Vec<String>> = Vec::new();
            if let Some(nodes) = v["nodes"].as_object() {
                for (node, reasons) in nodes {
                    for (reason, n) in reasons.as_object().into_iter().flatten() {
                        rows.push(vec![node.clone(), reason.clone(), n.to_string()]);
                    }
                }
            }
            let mut out = format!(
                "require signatures: {}, window: {}s, duplicates dropped: {}\n",
                v["requireSignatures"], v["windowSeconds"], v["duplicates"]
            );
            out.push_str(&table(&["NODE", "REASON", "COUNT"], &rows));
            Ok(out)
        }
    }
}
