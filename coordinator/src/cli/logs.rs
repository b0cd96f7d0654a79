//! `baton logs POD [-c CONTAINER] [-f] [--previous] [--tail N]`, as kubectl has it: the
//! log streams to stdout as the coordinator relays it from the node.

use std::io::Write;

use super::client::Client;
use super::CliError;
use crate::contract::payload::LOG_ERROR_PREFIX;
use crate::contract::routes::PodLogs;

#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// The pod (`NAME` or `pod/NAME`).
    pub pod: String,
    /// The container; needed when the pod has more than one.
    #[arg(short = 'c', long, env = "BATON_LOGS_CONTAINER")]
    pub container: Option<String>,
    /// Keep streaming what the container writes, across log rotation and restarts.
    #[arg(short = 'f', long, env = "BATON_LOGS_FOLLOW")]
    pub follow: bool,
    /// The log of the last terminated instance of the container.
    #[arg(short = 'p', long, env = "BATON_LOGS_PREVIOUS")]
    pub previous: bool,
    /// Only the last N lines (-1: all).
    #[arg(long, env = "BATON_LOGS_TAIL", default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i64,
}

impl LogsArgs {
    pub(super) fn route(&self) -> Result<PodLogs, CliError> {
        let name = match self.pod.split_once('/') {
            Some(("pod" | "pods" | "po", n)) => n,
            Some((k, _)) => {
                return Err(CliError::Usage(format!(
                    "error: logs are for pods, not {k:?}"
                )))
            }
            None => self.pod.as_str(),
        };
        let on = |b: bool| b.then(|| "true".to_owned());
        Ok(PodLogs {
            name: name.to_owned(),
            container: self.container.clone(),
            follow: on(self.follow),
            previous: on(self.previous),
            tail: (self.tail >= 0).then(|| self.tail.to_string()),
        })
    }
}

/// Copies the log to stdout as it comes. A stream that ends with the server's error line
/// ([`LOG_ERROR_PREFIX`]) is an error: the status was sent before the failure.
pub(super) async fn logs(client: &Client, args: &LogsArgs) -> Result<String, CliError> {
    let mut resp = client.stream(&args.route()?).await?;
    let mut out = std::io::stdout().lock();
    // Held back until the next piece shows it is not the error line.
    let mut held: Vec<u8> = Vec::new();
    let prefix = LOG_ERROR_PREFIX.as_bytes();
    loop {
        let piece = resp
            .chunk()
            .await
            .map_err(|e| CliError::Protocol(format!("the log stream broke: {e}")))?;
        let Some(piece) = piece else { break };
        if !held.is_empty() {
            out.write_all(&held).map_err(stdout_gone)?;
            held.clear();
        }
        if piece.starts_with(prefix) {
            held = piece.to_vec();
            continue;
        }
        out.write_all(&piece).map_err(stdout_gone)?;
        out.flush().map_err(stdout_gone)?;
    }
    if let Some(why) = held.strip_prefix(prefix) {
        out.flush().map_err(stdout_gone)?;
        return Err(CliError::Server {
            status: "LogStream".into(),
            message: String::from_utf8_lossy(why).trim_end().to_owned(),
        });
    }
    Ok(String::new())
}

fn stdout_gone(e: std::io::Error) -> CliError {
    CliError::Protocol(format!("cannot write the log to stdout: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Route;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: LogsArgs,
    }

    #[test]
    fn flags_make_the_contract_path() {
        let p = |args: &[&str]| {
            T::try_parse_from(std::iter::once("logs").chain(args.iter().copied()))
                .unwrap()
                .a
                .route()
                .unwrap()
                .path()
        };
        assert_eq!(p(&["web-1"]), "/api/v1/pods/web-1/log");
        assert_eq!(
            p(&["pod/web-1", "-c", "app", "-f", "--tail", "5"]),
            "/api/v1/pods/web-1/log?container=app&follow=true&tail=5"
        );
        assert_eq!(
            p(&["web-1", "--previous", "--tail", "-1"]),
            "/api/v1/pods/web-1/log?previous=true"
        );
        let bad = T::try_parse_from(["logs", "deploy/web"]).unwrap().a.route();
        assert!(matches!(bad, Err(CliError::Usage(_))));
    }
}
