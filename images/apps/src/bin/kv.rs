//! `kv`: the key-value store standing in for redis (see images/README.md).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;

use baton_todo::args;
use baton_todo::kv::server::{Config, Role, Server};

const USAGE: &str = "\
usage: kv [--role primary|replica] [--primary HOST:PORT] [--port PORT] [--bind ADDR] [--data DIR]

A small key-value store with a line protocol (PING, GET, SET, DEL, INCR, KEYS, SCAN, INFO).
  --role     primary (default) takes writes; replica follows --primary and refuses writes
  --primary  HOST:PORT of the primary, for a replica; HOST may be host-gateway (the
             pod's default gateway, i.e. its node)
  --port     port to listen on (default 6379)
  --bind     address to listen on (default 0.0.0.0)
  --data     directory for an fsync'd append-only file (primary only; default: memory only)
Every flag can also come from the environment: KV_ROLE, KV_PRIMARY, KV_PORT, KV_BIND, KV_DATA.";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let flags = args::parse(
        std::env::args().skip(1),
        &["role", "primary", "port", "bind", "data"],
        &["help", "version"],
    )?;
    if flags.contains_key("help") {
        println!("{USAGE}");
        return Ok(());
    }
    if flags.contains_key("version") {
        println!("kv {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let get = |name: &str, env: &str| {
        flags
            .get(name)
            .cloned()
            .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
    };
    let role = match get("role", "KV_ROLE").as_deref().unwrap_or("primary") {
        "primary" => Role::Primary,
        "replica" => Role::Replica {
            primary: get("primary", "KV_PRIMARY")
                .ok_or("a replica needs --primary HOST:PORT (or KV_PRIMARY)")?,
        },
        other => return Err(format!("--role must be primary or replica, not {other:?}")),
    };
    let port: u16 = get("port", "KV_PORT")
        .as_deref()
        .unwrap_or("6379")
        .parse()
        .map_err(|_| "--port must be a port number")?;
    let bind = get("bind", "KV_BIND").unwrap_or_else(|| "0.0.0.0".into());
    let data_dir = get("data", "KV_DATA").map(PathBuf::from);
    let listener = TcpListener::bind((bind.as_str(), port))
        .map_err(|e| format!("listen on {bind}:{port}: {e}"))?;
    let what = match &role {
        Role::Primary => "primary".to_owned(),
        Role::Replica { primary } => format!("replica of {primary}"),
    };
    let server = Server::start(listener, Config { role, data_dir }).map_err(|e| e.to_string())?;
    eprintln!("kv: {what} listening on {}", server.local_addr());
    server.wait();
    Ok(())
}
