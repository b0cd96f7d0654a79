//! `baton`: parses flags, sets up logging, and hands over to the library.
//!
//! One parser holds the three kinds of subcommand: `server` and `broker` run on the
//! coordinator's host (their flags are `server::args`'s), the rest are the client verbs
//! (`cli`), which reach a server only over HTTP. Only this file names both rooms.

use std::process::ExitCode;

use anyhow::Context;
use baton_coordinator::cli::{self, ClientArgs};
use baton_coordinator::server::{self, BrokerCommand, ServerArgs};
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "baton",
    version,
    about = "Baton: an embedded-first edge orchestrator",
    propagate_version = true
)]
struct Baton {
    #[command(flatten)]
    client: ClientArgs,
    /// Log format (RUST_LOG sets the level).
    #[arg(long, global = true, env = "BATON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the coordinator: API server, scheduler, controllers, store and MQTT broker.
    Server(Box<ServerArgs>),
    #[command(flatten)]
    Client(cli::Command),
    /// Certificates and configuration for an external MQTT broker, issued by the
    /// coordinator's CA (run on the coordinator's host).
    Broker {
        #[command(subcommand)]
        action: BrokerCommand,
    },
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn serve(args: &ServerArgs) -> anyhow::Result<()> {
    let cfg = args.config();
    server::run(cfg, shutdown_signal())
        .await
        .context("baton server failed")
}

fn main() -> ExitCode {
    let cli = Baton::parse();
    let is_server = matches!(cli.command, Command::Server(_));
    // Without RUST_LOG: rumqttd logs every connect at INFO and every disconnect (and our
    // readiness probe) at ERROR in its broker module; bind failures it would log there are
    // reported by `broker::start` itself. rustls warns about every OpenSSL client that sends
    // an IP address as SNI (mosquitto_pub -h IP): harmless, so only its errors are kept.
    let default_filter = if is_server {
        "info,rumqttd=warn,rumqttd::server::broker=off,rustls=error"
    } else {
        "warn"
    };
    init_logging(cli.log_format, default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Server(args) => serve(args).await,
            Command::Broker { action } => {
                server::args::run_broker(action).map_err(anyhow::Error::from)
            }
            Command::Client(command) => cli::run(&cli.client, command)
                .await
                .map_err(anyhow::Error::from),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `baton exec`: the remote command's status, as kubectl passes it on.
            match e.downcast_ref::<cli::CliError>() {
                Some(cli::CliError::Exited(code)) => {
                    return ExitCode::from(u8::try_from(*code).unwrap_or(1));
                }
                Some(cli::CliError::ReaderGone) => return ExitCode::SUCCESS,
                _ => {}
            }
            // One line: the error and its causes.
            eprintln!("{}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn one_parser_for_the_server_and_the_client() {
        use clap::CommandFactory;
        Baton::command().debug_assert();
        let cli = Baton::try_parse_from([
            "baton",
            "server",
            "--broker",
            "mqtt://127.0.0.1:1884",
            "--heartbeat-timeout",
            "1m",
        ])
        .unwrap();
        // What the server makes of its flags: `server::args`'s tests.
        let Command::Server(args) = cli.command else {
            panic!("not server")
        };
        assert_eq!(args.broker.as_deref(), Some("mqtt://127.0.0.1:1884"));
        assert_eq!(args.heartbeat_timeout, Duration::from_secs(60));
        let cli = Baton::try_parse_from(["baton", "--server", "http://127.0.0.1:9", "get", "po"])
            .unwrap();
        assert_eq!(cli.client.server.as_deref(), Some("http://127.0.0.1:9"));
        assert!(matches!(
            cli.command,
            Command::Client(cli::Command::Get { .. })
        ));
        assert!(matches!(
            Baton::try_parse_from(["baton", "broker", "mosquitto-config", "--san", "h"])
                .unwrap()
                .command,
            Command::Broker { .. }
        ));
    }
}
