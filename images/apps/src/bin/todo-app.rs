//! `todo-app`: the todo web frontend (see images/README.md).

use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;

use baton_todo::todo::{App, Config, Server};
use baton_todo::{args, net};

const USAGE: &str = "\
usage: todo-app [--port PORT] [--bind ADDR] [--kv-primary HOST:PORT] [--kv-replica HOST:PORT]

Serves the todo web page on / and its JSON API on /api/todos, /api/version and /healthz.
  --port        port to listen on (env PORT, default 3000)
  --bind        address to listen on (env BIND, default 0.0.0.0)
  --kv-primary  the kv primary, for writes (env KV_PRIMARY, default 127.0.0.1:6379)
  --kv-replica  a kv replica, for reads (env KV_REPLICA, default the primary)
HOST may be host-gateway: the pod's default gateway, i.e. its node.
The version /api/version reports comes from APP_VERSION (the images set it).";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("todo-app: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let flags = args::parse(
        std::env::args().skip(1),
        &["port", "bind", "kv-primary", "kv-replica"],
        &["help", "version"],
    )?;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let version = env("APP_VERSION").unwrap_or_else(|| "dev".into());
    if flags.contains_key("help") {
        println!("{USAGE}");
        return Ok(());
    }
    if flags.contains_key("version") {
        println!("todo-app {version}");
        return Ok(());
    }
    let get = |name: &str, var: &str| flags.get(name).cloned().or_else(|| env(var));
    let port: u16 = get("port", "PORT")
        .as_deref()
        .unwrap_or("3000")
        .parse()
        .map_err(|_| "--port must be a port number")?;
    let bind = get("bind", "BIND").unwrap_or_else(|| "0.0.0.0".into());
    let config = Config {
        kv_primary: get("kv-primary", "KV_PRIMARY").unwrap_or_else(|| "127.0.0.1:6379".into()),
        kv_replica: get("kv-replica", "KV_REPLICA"),
        version,
        hostname: net::hostname(),
    };
    let listener = TcpListener::bind((bind.as_str(), port))
        .map_err(|e| format!("listen on {bind}:{port}: {e}"))?;
    eprintln!(
        "todo-app: version {} on {}; kv primary {}, replica {}",
        config.version,
        listener.local_addr().map_err(|e| e.to_string())?,
        config.kv_primary,
        config.kv_replica.as_deref().unwrap_or("(the primary)")
    );
    let server = Server::start(listener, Arc::new(App::new(config))).map_err(|e| e.to_string())?;
    server.wait();
    Ok(())
}
