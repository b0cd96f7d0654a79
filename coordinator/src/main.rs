//! `baton`: parses flags, sets up logging, and hands over to the library.

use std::process::ExitCode;

use anyhow::Context;
use baton_coordinator::cli::{self, Cli, Command, LogFormat};
use baton_coordinator::server;
use clap::Parser;
use tracing_subscriber::EnvFilter;

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

async fn serve(args: &server::ServerArgs) -> anyhow::Result<()> {
    let cfg = args.config();
    server::run(cfg, shutdown_signal())
        .await
        .context("baton server failed")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            Command::Broker { action } => server::args::run_broker(action).map_err(anyhow::Error::from),
            _ => cli::run(&cli).await.map_err(anyhow::Error::from),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("{}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
