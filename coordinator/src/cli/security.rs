//! `baton security rejections`: the refused MQTT messages, per reason and node.

use clap::Subcommand;

use super::client::Client;
use super::render::table;
use super::{to_value, CliError, Output};
use crate::contract::{routes, NoBody};

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
            let report = client.call(&routes::Rejections {}, &NoBody).await?;
            if matches!(output, Some(Output::Json)) {
                return Ok(format!(
                    "{}\n",
                    serde_json::to_string_pretty(&to_value(&report)?).unwrap_or_default()
                ));
            }
            let mut rows: Vec<Vec<String>> = Vec::new();
            for (node, reasons) in &report.nodes {
                for (reason, n) in reasons {
                    rows.push(vec![node.clone(), reason.clone(), n.to_string()]);
                }
            }
            let mut out = format!(
                "require signatures: {}, window: {}s, duplicates dropped: {}\n",
                report.require_signatures, report.window_seconds, report.duplicates
            );
            out.push_str(&table(&["NODE", "REASON", "COUNT"], &rows));
            Ok(out)
        }
    }
}
