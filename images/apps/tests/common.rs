//! Helpers shared by the integration tests: servers on 127.0.0.1:0 that shut down on drop,
//! a polling wait, and a raw HTTP/1.1 client.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use baton_todo::kv::server::{Config, Role, Server};

/// A kv server that is shut down (closing every connection) when dropped, even on failure.
pub struct Kv(pub Server);

impl Kv {
    pub fn addr(&self) -> String {
        self.0.local_addr().to_string()
    }
}

impl Drop for Kv {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

pub fn kv_on(addr: &str, role: Role, data_dir: Option<PathBuf>) -> Kv {
    let l = TcpListener::bind(addr).expect("bind loopback");
    Kv(Server::start(l, Config { role, data_dir }).expect("start kv"))
}

pub fn primary() -> Kv {
    kv_on("127.0.0.1:0", Role::Primary, None)
}

pub fn replica_of(p: &str) -> Kv {
    kv_on(
        "127.0.0.1:0",
        Role::Replica {
            primary: p.to_owned(),
        },
        None,
    )
}

/// Polls `f` until it returns Some, for up to 20 s (generous: CI machines are busy).
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request on a fresh connection; returns (status, headers, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(b) = body {
        raw.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ));
    } else {
        raw.push_str("\r\n");
    }
    http_raw(addr, raw.as_bytes())
}

pub fn http_raw(addr: SocketAddr, raw: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect todo-app");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer (and close) before reading an oversized body: ignore EPIPE.
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}
