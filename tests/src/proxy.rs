//! A byte-counting TCP proxy for the image tests: it sits between an agent and a registry,
//! logs every HTTP/1.1 request (method, path, Range header, status, bytes relayed back), and
//! can slow down or cut the responses to requests whose path matches a rule.
//!
//! It works at the TCP level, so TLS passes through untouched (then only connections and
//! their first bytes are recorded, which is enough to tell TLS from plain HTTP). The
//! listener and the upstream connections can live in a network namespace (`/run/netns/NAME`):
//! the thread that creates them enters it first; a socket stays in the namespace it was
//! created in, whatever thread uses it later.
//!
//! Responses are attributed to the last request seen on their connection: the agent's HTTP
//! client does not pipeline, and a request is recorded before its bytes are forwarded, so its
//! response cannot arrive first.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// One HTTP request seen by the proxy.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub conn: usize,
    pub method: String,
    pub path: String,
    /// The `Range` header, if any (`bytes=123-`).
    pub range: Option<String>,
    /// The response's status code, if its first bytes were seen.
    pub status: Option<u16>,
    /// Response bytes relayed to the client (headers included).
    pub bytes_down: u64,
}

/// One TCP connection through the proxy.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// The first bytes the client sent (up to 8): `0x16 0x03` is a TLS handshake.
    pub first_bytes: Vec<u8>,
}

impl Connection {
    pub fn is_tls(&self) -> bool {
        self.first_bytes.first() == Some(&0x16)
    }
}

/// What to do to responses of requests whose path contains `path_contains`.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    pub path_contains: String,
    /// Relay at most this many bytes per second.
    pub bytes_per_sec: Option<u64>,
    /// Cut the connection once this many response bytes were relayed.
    pub cut_after: Option<u64>,
    /// Invert the response byte at this offset (headers included): content damaged in
    /// transit or on the server, with the length unchanged.
    pub flip_byte_at: Option<u64>,
}

#[derive(Default)]
struct State {
    requests: Vec<Request>,
    conns: Vec<Connection>,
    /// Index into `requests` of each connection's current request.
    current: Vec<Option<usize>>,
    rules: Vec<Rule>,
    /// Clones of live sockets, to cut them.
    live: Vec<(usize, TcpStream, TcpStream)>,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running proxy; stopped (listener closed, connections cut) on drop.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

fn enter_netns(netns: Option<&str>) -> Result<()> {
    if let Some(ns) = netns {
        let f = std::fs::File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("open netns {ns}"))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("enter netns {ns}"))?;
    }
    Ok(())
}

impl Proxy {
    /// Listens on `listen` (e.g. `10.213.5.1:0`) inside `netns` (or the caller's namespace)
    /// and relays every connection to `upstream`, connected from the same namespace.
    pub fn start(netns: Option<&str>, listen: &str, upstream: &str) -> Result<Proxy> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            stop: AtomicBool::new(false),
        });
        let (tx, rx) = std::sync::mpsc::channel::<Result<SocketAddr>>();
        let (ns, listen, upstream) = (
            netns.map(str::to_owned),
            listen.to_owned(),
            upstream.to_owned(),
        );
        let sh = Arc::clone(&shared);
        let accept = std::thread::spawn(move || {
            let listener = (|| {
                enter_netns(ns.as_deref())?;
                let l = TcpListener::bind(&listen).with_context(|| format!("bind {listen}"))?;
                l.set_nonblocking(true)?;
                Ok::<_, anyhow::Error>(l)
            })();
            let listener = match listener {
                Ok(l) => {
                    let _ = tx.send(l.local_addr().map_err(Into::into));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !sh.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        match TcpStream::connect(&upstream) {
                            Ok(up) => spawn_relay(&sh, client, up),
                            Err(_) => drop(client),
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .context("proxy did not start")??;
        Ok(Proxy {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// `ip:port` to give clients.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    pub fn connections(&self) -> Vec<Connection> {
        self.shared.lock().conns.clone()
    }

    /// Requests whose path contains `s`.
    pub fn requests_to(&self, s: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.contains(s))
            .collect()
    }

    /// GET requests for the blob `digest`.
    pub fn blob_gets(&self, digest: &str) -> Vec<Request> {
        self.requests_to(&format!("/blobs/{digest}"))
            .into_iter()
            .filter(|r| r.method == "GET")
            .collect()
    }

    /// Response bytes relayed over all connections.
    pub fn total_bytes_down(&self) -> u64 {
        self.shared.lock().conns.iter().map(|c| c.bytes_down).sum()
    }

    /// Forgets what was recorded (rules stay).
    pub fn clear_log(&self) {
        let mut st = self.shared.lock();
        st.requests.clear();
        for c in st.current.iter_mut() {
            *c = None;
        }
    }

    pub fn set_rules(&self, rules: Vec<Rule>) {
        self.shared.lock().rules = rules;
    }

    /// Cuts every live connection.
    pub fn cut_all(&self) {
        let st = self.shared.lock();
        for (_, a, b) in &st.live {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut_all();
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn spawn_relay(sh: &Arc<Shared>, client: TcpStream, up: TcpStream) {
    let id = {
        let mut st = sh.lock();
        st.conns.push(Connection::default());
        st.current.push(None);
        let id = st.conns.len() - 1;
        if let (Ok(a), Ok(b)) = (client.try_clone(), up.try_clone()) {
            st.live.push((id, a, b));
        }
        id
    };
    let (c2, u2) = match (client.try_clone(), up.try_clone()) {
        (Ok(c), Ok(u)) => (c, u),
        _ => return,
    };
    let sh_up = Arc::clone(sh);
    std::thread::spawn(move || relay_up(&sh_up, id, client, up));
    let sh_down = Arc::clone(sh);
    std::thread::spawn(move || relay_down(&sh_down, id, u2, c2));
}

fn finish(sh: &Shared, id: usize, a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
    sh.lock().live.retain(|(i, _, _)| *i != id);
}

/// Client to upstream: parses request heads (bodies skipped by Content-Length).
fn relay_up(sh: &Shared, id: usize, mut client: TcpStream, mut up: TcpStream) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut body_left: u64 = 0;
    let mut plain = true;
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        {
            let mut st = sh.lock();
            let conn = &mut st.conns[id];
            if conn.bytes_up == 0 {
                conn.first_bytes = chunk[..chunk.len().min(8)].to_vec();
                plain = chunk.first() != Some(&0x16);
            }
            conn.bytes_up += n as u64;
        }
        if plain {
            pending.extend_from_slice(chunk);
            loop {
                if body_left > 0 {
                    let skip = (body_left as usize).min(pending.len());
                    pending.drain(..skip);
                    body_left -= skip as u64;
                    if body_left > 0 {
                        break;
                    }
                }
                let Some(end) = find(&pending, b"\r\n\r\n") else {
                    break;
                };
                let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                pending.drain(..end + 4);
                let mut lines = head.split("\r\n");
                let mut first = lines.next().unwrap_or_default().split(' ');
                let mut req = Request {
                    conn: id,
                    method: first.next().unwrap_or_default().to_owned(),
                    path: first.next().unwrap_or_default().to_owned(),
                    ..Request::default()
                };
                for l in lines {
                    if let Some((k, v)) = l.split_once(':') {
                        let k = k.trim().to_ascii_lowercase();
                        if k == "range" {
                            req.range = Some(v.trim().to_owned());
                        } else if k == "content-length" {
                            body_left = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut st = sh.lock();
                st.requests.push(req);
                let idx = st.requests.len() - 1;
                st.current[id] = Some(idx);
            }
        }
        if up.write_all(chunk).is_err() {
            break;
        }
    }
    finish(sh, id, &client, &up);
}

/// Upstream to client: counts, throttles and cuts per the rules.
fn relay_down(sh: &Shared, id: usize, mut up: TcpStream, mut client: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Small reads while a throttle applies, so the rate is smooth.
        let rule = {
            let st = sh.lock();
            st.current[id].and_then(|i| {
                let path = &st.requests[i].path;
                st.rules
                    .iter()
                    .find(|r| path.contains(&r.path_contains))
                    .cloned()
            })
        };
        let max = if rule.as_ref().and_then(|r| r.bytes_per_sec).is_some() {
            4096
        } else {
            buf.len()
        };
        let n = match up.read(&mut buf[..max]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut send = n;
        let mut cut = false;
        {
            let mut st = sh.lock();
            // The rule of the request this chunk belongs to (it may have started meanwhile).
            let cur = st.current[id];
            let rule = cur.and_then(|i| {
                let path = &st.requests[i].path;
                st.rules
                    .iter()
                    .find(|r| path.contains(&r.path_contains))
                    .cloned()
            });
            if let Some(i) = cur {
                let req = &mut st.requests[i];
                if req.bytes_down == 0 && buf[..n].starts_with(b"HTTP/1.") && n >= 12 {
                    req.status = std::str::from_utf8(&buf[9..12])
                        .ok()
                        .and_then(|s| s.parse().ok());
                }
                if let Some(limit) = rule.as_ref().and_then(|r| r.cut_after) {
                    if req.bytes_down + n as u64 >= limit {
                        send = limit.saturating_sub(req.bytes_down) as usize;
                        cut = true;
                    }
                }
                if let Some(at) = rule.as_ref().and_then(|r| r.flip_byte_at) {
                    if (req.bytes_down..req.bytes_down + send as u64).contains(&at) {
                        buf[(at - req.bytes_down) as usize] ^= 0xff;
                    }
                }
                req.bytes_down += send as u64;
            }
            st.conns[id].bytes_down += send as u64;
            if let Some(rate) = rule.and_then(|r| r.bytes_per_sec) {
                drop(st);
                std::thread::sleep(Duration::from_secs_f64(send as f64 / rate.max(1) as f64));
            }
        }
        if client.write_all(&buf[..send]).is_err() || cut {
            break;
        }
    }
    finish(sh, id, &up, &client);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot HTTP server on loopback answering `body` to every request.
    fn serve(body: &'static [u8]) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut seen = Vec::new();
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = find(&seen, b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let mut resp = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            resp.extend_from_slice(body);
                            let _ = s.write_all(&resp);
                        }
                    }
                });
            }
        });
        addr
    }

    fn get(addr: &str, paths: &[&str]) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        for p in paths {
            write!(s, "GET {p} HTTP/1.1\r\nHost: x\r\nRange: bytes=3-\r\n\r\n").unwrap();
            // Until the body's end, or the connection's (a cut).
            let mut buf = [0u8; 4096];
            let mut resp = Vec::new();
            while !resp.ends_with(b"9") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => resp.extend_from_slice(&buf[..n]),
                }
            }
            out.extend_from_slice(&resp);
        }
        out
    }

    #[test]
    fn counts_requests_and_bytes_per_keepalive_request() {
        let up = serve(b"0123456789");
        let proxy = Proxy::start(None, "127.0.0.1:0", &up).unwrap();
        let got = get(&proxy.addr(), &["/a", "/b/c"]);
        assert!(got.ends_with(b"0123456789"));
        let reqs = proxy.requests();
        assert_eq!(reqs.len(), 2, "{reqs:?}");
        assert_eq!(reqs[1].path, "/b/c");
        assert_eq!(reqs[0].range.as_deref(), Some("bytes=3-"));
        assert_eq!(reqs[0].status, Some(200));
        assert_eq!(reqs[0].conn, reqs[1].conn);
        assert!(reqs.iter().all(|r| r.bytes_down > 10));
        assert!(!proxy.connections()[0].is_tls());
    }

    #[test]
    fn cuts_matching_responses() {
        let up = serve(b"0123456789");
        let proxy = Proxy::start(None, "127.0.0.1:0", &up).unwrap();
        proxy.set_rules(vec![Rule {
            path_contains: "/cut".into(),
            cut_after: Some(20),
            ..Rule::default()
        }]);
        let got = get(&proxy.addr(), &["/cut"]);
        assert_eq!(got.len(), 20);
        assert_eq!(proxy.requests()[0].bytes_down, 20);
    }

    #[test]
    fn flips_one_byte_of_a_matching_response() {
        let up = serve(b"0123456789");
        let proxy = Proxy::start(None, "127.0.0.1:0", &up).unwrap();
        let plain = get(&proxy.addr(), &["/plain"]);
        proxy.set_rules(vec![Rule {
            path_contains: "/flip".into(),
            // The body's first byte, "0".
            flip_byte_at: Some(plain.len() as u64 - 10),
            ..Rule::default()
        }]);
        let flipped = get(&proxy.addr(), &["/flip"]);
        let at = plain.len() - 10;
        assert_eq!(flipped.len(), plain.len());
        assert_eq!(flipped[..at], plain[..at]);
        assert_eq!(flipped[at], b'0' ^ 0xff);
        assert_eq!(flipped[at + 1..], plain[at + 1..]);
    }
}
