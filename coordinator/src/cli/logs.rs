//! `baton logs POD [-c CONTAINER] [-f] [--previous] [--tail N] [--since 10m | --since-time
//! RFC3339] [--timestamps]`, as kubectl has it: the log streams to stdout as the
//! coordinator relays it from the node.

use std::io::Write;

use super::client::Client;
use super::CliError;
use crate::contract::payload::LOG_ERROR_PREFIX;
use crate::contract::routes::PodLogsNamespaced;

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
    /// Only lines written in the last DURATION (`10s`, `5m`, `1h30m`), by the node's clock;
    /// `--tail` then counts from there.
    #[arg(long, env = "BATON_LOGS_SINCE", conflicts_with = "since_time")]
    pub since: Option<String>,
    /// Only lines written at or after this RFC 3339 time (`2026-12-07T01:00:00Z`).
    #[arg(long, env = "BATON_LOGS_SINCE_TIME")]
    pub since_time: Option<String>,
    /// Each line prefixed with when it was written (RFC 3339, nanoseconds, UTC).
    #[arg(long, env = "BATON_LOGS_TIMESTAMPS")]
    pub timestamps: bool,
}

impl LogsArgs {
    /// The route for the pod in `namespace`.
    pub(super) fn route(&self, namespace: &str) -> Result<PodLogsNamespaced, CliError> {
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
        // Checked here too, so a typo fails before any call.
        crate::contract::since::window(self.since.as_deref(), self.since_time.as_deref())
            .map_err(|e| CliError::Usage(format!("error: {e}")))?;
        Ok(PodLogsNamespaced {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            container: self.container.clone(),
            follow: on(self.follow),
            previous: on(self.previous),
            tail: (self.tail >= 0).then(|| self.tail.to_string()),
            since: self.since.clone(),
            since_time: self.since_time.clone(),
            timestamps: on(self.timestamps),
        })
    }
}

/// Copies the log to stdout as it comes. A stream that ends with the server's error line
/// ([`LOG_ERROR_PREFIX`]) is an error: the status was sent before the failure.
pub(super) async fn logs(client: &Client, args: &LogsArgs) -> Result<String, CliError> {
    let mut resp = client.stream(&args.route(client.namespace())?).await?;
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
            out.write_all(&held).map_err(super::stdout_error)?;
            held.clear();
        }
        if piece.starts_with(prefix) {
            held = piece.to_vec();
            continue;
        }
        out.write_all(&piece).map_err(super::stdout_error)?;
        out.flush().map_err(super::stdout_error)?;
    }
    if let Some(why) = held.strip_prefix(prefix) {
        out.flush().map_err(super::stdout_error)?;
        return Err(CliError::Server {
            status: "LogStream".into(),
            message: String::from_utf8_lossy(why).trim_end().to_owned(),
        });
    }
    Ok(String::new())
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
                .route("default")
                .unwrap()
                .path()
        };
        assert_eq!(p(&["web-1"]), "/api/v1/namespaces/default/pods/web-1/log");
        assert_eq!(
            p(&["pod/web-1", "-c", "app", "-f", "--tail", "5"]),
            "/api/v1/namespaces/default/pods/web-1/log?container=app&follow=true&tail=5"
        );
        assert_eq!(
            p(&["web-1", "--previous", "--tail", "-1"]),
            "/api/v1/namespaces/default/pods/web-1/log?previous=true"
        );
        let bad = T::try_parse_from(["logs", "deploy/web"])
            .unwrap()
            .a
            .route("default");
        assert!(matches!(bad, Err(CliError::Usage(_))));
        assert_eq!(
            p(&["web-1", "--since", "1h30m", "--timestamps", "--tail", "3"]),
            "/api/v1/namespaces/default/pods/web-1/log?tail=3&since=1h30m&timestamps=true"
        );
        assert_eq!(
            p(&["web-1", "--since-time", "2026-12-07T01:00:00Z"]),
            "/api/v1/namespaces/default/pods/web-1/log?since_time=2026-12-07T01%3A00%3A00Z"
        );
        let typo = T::try_parse_from(["logs", "web-1", "--since", "5 min"])
            .unwrap()
            .a
            .route("default");
        assert!(matches!(typo, Err(CliError::Usage(_))));
        assert!(T::try_parse_from(["logs", "w", "--since", "1s", "--since-time", "x"]).is_err());
    }
}
