//! A TCP proxy on 127.0.0.1 in front of a registry that can cut a blob download short, as a
//! dropped link does, and counts what it forwards.
//!
//! Each connection gets two pump threads. The client-to-server pump logs the request bytes
//! and arms the connection when a request for the watched path goes through; from then on
//! the server-to-client pump counts the bytes it forwards and, if a cut is set, closes both
//! sides after that many bytes.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;

#[derive(Default)]
struct Shared {
    /// Substring of the request line that arms a connection, e.g. `/blobs/sha256:...`.
    watch: Mutex<String>,
    /// Close an armed connection after this many response bytes (0: never).
    cut_after: AtomicU64,
    /// Response bytes forwarded on armed connections.
    watched_bytes: AtomicU64,
    /// Every request byte seen, for asserting on headers.
    requests: Mutex<Vec<u8>>,
    stop: AtomicBool,
}

pub struct CutProxy {
    addr: String,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl CutProxy {
    pub fn start(upstream: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?.to_string();
        let shared = Arc::new(Shared::default());
        let (s, up) = (shared.clone(), upstream.to_owned());
        let acceptor = std::thread::spawn(move || {
            while !s.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(server) = TcpStream::connect(&up) {
                            spawn_pumps(client, server, s.clone());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(CutProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// `127.0.0.1:PORT`, to use as the registry in references.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Watches requests whose bytes contain `needle`; cuts them after `cut_after` response
    /// bytes (0: do not cut, only count).
    pub fn watch(&self, needle: &str, cut_after: u64) {
        *self.shared.watch.lock().unwrap() = needle.to_owned();
        self.shared.cut_after.store(cut_after, Ordering::SeqCst);
        self.shared.watched_bytes.store(0, Ordering::SeqCst);
        self.shared.requests.lock().unwrap().clear();
    }

    /// Response bytes (headers included) forwarded for watched requests since [`watch`].
    pub fn watched_bytes(&self) -> u64 {
        self.shared.watched_bytes.load(Ordering::SeqCst)
    }

    /// The request bytes seen since [`watch`], lowercased.
    pub fn requests(&self) -> String {
        String::from_utf8_lossy(&self.shared.requests.lock().unwrap()).to_lowercase()
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn spawn_pumps(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let armed = Arc::new(AtomicBool::new(false));
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    // Client -> server.
    {
        let (mut from, mut to, shared, armed) = (c2, s2, shared.clone(), armed.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                shared.requests.lock().unwrap().extend_from_slice(&buf[..n]);
                let watch = shared.watch.lock().unwrap().clone();
                if !watch.is_empty() && String::from_utf8_lossy(&buf[..n]).contains(&watch) {
                    armed.store(true, Ordering::SeqCst);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    }
    // Server -> client.
    std::thread::spawn(move || {
        let (mut from, mut to) = (server, client);
        let mut buf = [0u8; 16 * 1024];
        let mut sent_armed: u64 = 0;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut chunk = &buf[..n];
            let mut cut = false;
            if armed.load(Ordering::SeqCst) {
                let limit = shared.cut_after.load(Ordering::SeqCst);
                if limit > 0 && sent_armed + chunk.len() as u64 >= limit {
                    chunk = &chunk[..(limit - sent_armed) as usize];
                    cut = true;
                }
                sent_armed += chunk.len() as u64;
                shared
                    .watched_bytes
                    .fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            if to.write_all(chunk).is_err() {
                break;
            }
            if cut {
                // A dropped link: both directions gone mid-body.
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
