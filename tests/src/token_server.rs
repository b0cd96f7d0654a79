//! A registry token server for the bearer-token tests, speaking the protocol Docker Hub's
//! `auth.docker.io` and Distribution's token auth use
//! (<https://distribution.github.io/distribution/spec/auth/token/>):
//!
//! 1. the registry answers 401 with `WWW-Authenticate: Bearer realm=..,service=..,scope=..`;
//! 2. the client sends `GET <realm>?service=..&scope=repository:NAME:pull[,push]`, with
//!    HTTP basic credentials or none;
//! 3. this server answers `{"token": JWT, "access_token": JWT, "expires_in": ..}` where the
//!    JWT's `access` claim lists what was granted, or 401 for credentials it does not know.
//!
//! Policy: known users get every `pull`/`push` they ask for; anonymous clients get `pull` on
//! the repositories marked public and nothing else (a token with an empty `access`, which
//! the registry then refuses, as Docker Hub does for private repositories).
//!
//! The JWT is RS256, signed by a key generated with `openssl` at start, whose self-signed
//! certificate is the registry's `rootcertbundle`. Its header names the key with `kid`
//! computed as libtrust does (what Distribution 2.8 looks trusted keys up by): the SHA-256
//! of the key's DER SubjectPublicKeyInfo, first 30 bytes, base32 without padding, in
//! colon-separated groups of four. Signing shells out to `openssl dgst`, like the rest of
//! this crate's PKI, so no crypto crate is needed for a handful of tokens per test.
//!
//! Every request is recorded ([`TokenRequest`]) so tests can count how often a client came
//! back for a token. The server is plain std: one thread accepting, one per connection, one
//! request per connection (`Connection: close`). Like [`crate::proxy`], its listener can
//! live in a network namespace.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::sh;

/// How long issued tokens are valid (the `exp` claim and `expires_in`).
pub const TOKEN_TTL_SECS: u64 = 300;

/// What a token request carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// No `Authorization` header.
    Anonymous,
    /// Basic credentials of a known user with the right password.
    Valid(String),
    /// Basic credentials that did not match (the user name as sent).
    Invalid(String),
}

/// One request the token server answered.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub presented: Presented,
    /// The `service` query parameter.
    pub service: Option<String>,
    /// The `scope` query parameters, as sent (`repository:baton/x:pull`).
    pub scopes: Vec<String>,
    /// What the issued token grants, as scopes (`repository:baton/x:pull,push`); empty
    /// for a refusal or a token with no access.
    pub granted: Vec<String>,
    /// 200 with a token, 401 for bad credentials, 400 for a malformed request.
    pub status: u16,
}

#[derive(Default)]
struct Policy {
    users: Vec<(String, String)>,
    public: BTreeSet<String>,
}

struct Shared {
    policy: Mutex<Policy>,
    log: Mutex<Vec<TokenRequest>>,
    stop: AtomicBool,
    next_jti: AtomicU64,
    key: PathBuf,
    kid: String,
    service: String,
    issuer: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running token server; its listener closes on drop.
pub struct TokenServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cert: PathBuf,
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

impl TokenServer {
    /// Generates a signing key and certificate in `dir`, and listens on `listen` (e.g.
    /// `10.213.5.1:0`) inside `netns` (or the caller's namespace). Tokens name `service` as
    /// their audience and `issuer` as their issuer.
    pub fn start(
        netns: Option<&str>,
        listen: &str,
        dir: &Path,
        service: &str,
        issuer: &str,
    ) -> Result<TokenServer> {
        std::fs::create_dir_all(dir)?;
        let key = dir.join("token-signer.key");
        let cert = dir.join("token-signer.pem");
        sh(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=baton-test-token-signer", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert))?;
        let pubkey = sh(Command::new("openssl")
            .args(["x509", "-pubkey", "-noout", "-in"])
            .arg(&cert))?
        .stdout;
        let spki =
            pem_body(&String::from_utf8_lossy(&pubkey)).context("openssl printed no public key")?;
        let shared = Arc::new(Shared {
            policy: Mutex::new(Policy::default()),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            next_jti: AtomicU64::new(1),
            key,
            kid: libtrust_key_id(&spki),
            service: service.to_owned(),
            issuer: issuer.to_owned(),
        });
        let (tx, rx) = std::sync::mpsc::channel::<Result<SocketAddr>>();
        let (ns, listen) = (netns.map(str::to_owned), listen.to_owned());
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
                    Ok((conn, _)) => {
                        let sh = Arc::clone(&sh);
                        std::thread::spawn(move || {
                            let _ = serve(&sh, conn);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .context("token server did not start")??;
        Ok(TokenServer {
            addr,
            shared,
            cert,
            accept: Some(accept),
        })
    }

    /// `host:port` of the listener.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The realm URL to configure the registry with.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The signing key's certificate: the registry's `rootcertbundle`.
    pub fn cert_bundle(&self) -> &Path {
        &self.cert
    }

    pub fn service(&self) -> &str {
        &self.shared.service
    }

    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    /// The `kid` every token carries.
    pub fn key_id(&self) -> &str {
        &self.shared.kid
    }

    /// Accepts `user`/`password` from now on.
    pub fn add_user(&self, user: &str, password: &str) {
        lock(&self.shared.policy)
            .users
            .push((user.to_owned(), password.to_owned()));
    }

    /// Lets anonymous clients pull `repository`.
    pub fn make_public(&self, repository: &str) {
        lock(&self.shared.policy)
            .public
            .insert(repository.to_owned());
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        lock(&self.shared.log).clone()
    }

    /// Issues a token as a request with these credentials and scopes would get it (for
    /// the test's own calls to the registry, without going through HTTP).
    pub fn issue(&self, user: Option<(&str, &str)>, scopes: &[&str]) -> Result<String> {
        let presented = present(&self.shared, user);
        if matches!(presented, Presented::Invalid(_)) {
            bail!("unknown credentials");
        }
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let access = grant(&self.shared, &presented, &scopes);
        sign_token(&self.shared, &presented, &access)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// The DER inside the first PEM block of `pem`.
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64_decode(&b64)
}

/// libtrust's key id: base32 of the first 240 bits of SHA-256(SPKI DER), unpadded, in
/// groups of four joined by `:` (48 characters, 12 groups).
pub fn libtrust_key_id(spki_der: &[u8]) -> String {
    let digest = Sha256::digest(spki_der);
    let b32 = base32(&digest[..30]);
    b32.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u64, 0u32);
    for &b in data {
        acc = (acc << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64url without padding, as JWS wants it.
fn b64url(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() * 4 / 3 + 4);
    for chunk in data.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..=n {
            let c = B64[((v >> (18 - 6 * i)) & 63) as usize];
            out.push(match c {
                b'+' => '-',
                b'/' => '_',
                c => c as char,
            });
        }
    }
    out
}

/// Standard base64 (padding optional); also accepts the URL alphabet.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = s.trim().trim_end_matches('=').as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
                continue;
            }
            (b'+', _, _) => out.push(b' '),
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn present(sh: &Shared, basic: Option<(&str, &str)>) -> Presented {
    match basic {
        None => Presented::Anonymous,
        Some((u, p)) => {
            let ok = lock(&sh.policy)
                .users
                .iter()
                .any(|(uu, pp)| uu == u && pp == p);
            if ok {
                Presented::Valid(u.to_owned())
            } else {
                Presented::Invalid(u.to_owned())
            }
        }
    }
}

/// The access entries granted for `scopes`: `(type, name, actions)`.
fn grant(sh: &Shared, who: &Presented, scopes: &[String]) -> Vec<(String, String, Vec<String>)> {
    let policy = lock(&sh.policy);
    let mut out = Vec::new();
    for scope in scopes {
        // repository:NAME:ACTIONS; a name has no ':' but be lenient and split at the ends.
        let Some((kind, rest)) = scope.split_once(':') else {
            continue;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        if kind != "repository" {
            continue;
        }
        let granted: Vec<String> = actions
            .split(',')
            .filter(|a| match who {
                Presented::Valid(_) => *a == "pull" || *a == "push",
                Presented::Anonymous => *a == "pull" && policy.public.contains(name),
                Presented::Invalid(_) => false,
            })
            .map(str::to_owned)
            .collect();
        if !granted.is_empty() {
            out.push((kind.to_owned(), name.to_owned(), granted));
        }
    }
    out
}

fn sign_token(
    sh: &Shared,
    who: &Presented,
    access: &[(String, String, Vec<String>)],
) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": sh.kid});
    let subject = match who {
        Presented::Valid(u) => u.clone(),
        _ => String::new(),
    };
    let claims = json!({
        "iss": sh.issuer,
        "sub": subject,
        "aud": sh.service,
        "exp": now + TOKEN_TTL_SECS,
        "nbf": now.saturating_sub(1),
        "iat": now,
        "jti": format!("baton-test-{}", sh.next_jti.fetch_add(1, Ordering::SeqCst)),
        "access": access
            .iter()
            .map(|(t, n, a)| json!({"type": t, "name": n, "actions": a}))
            .collect::<Vec<_>>(),
    });
    let signing_input = format!(
        "{}.{}",
        b64url(&serde_json::to_vec(&header)?),
        b64url(&serde_json::to_vec(&claims)?)
    );
    // RS256 is RSASSA-PKCS1-v1_5 over SHA-256: exactly `openssl dgst -sha256 -sign`.
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&sh.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn openssl dgst")?;
    child
        .stdin
        .take()
        .context("openssl stdin")?
        .write_all(signing_input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!(
            "openssl dgst -sign failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(format!("{signing_input}.{}", b64url(&out.stdout)))
}

/// Reads one request head (the realm is only ever asked with GET and no body).
fn read_head(conn: &mut TcpStream) -> Result<String> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed mid-request");
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 * 1024 {
            bail!("request head too large");
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn respond(conn: &mut TcpStream, status: u16, extra: &str, body: &str) -> Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        500 => "Internal Server Error",
        _ => "Not Found",
    };
    write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    )?;
    conn.flush()?;
    Ok(())
}

fn serve(sh: &Shared, mut conn: TcpStream) -> Result<()> {
    let head = read_head(&mut conn)?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if method != "GET" || path != "/token" {
        return respond(&mut conn, 404, "", r#"{"error":"not found"}"#);
    }
    let mut service = None;
    let mut scopes = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "service" => service = Some(v),
            // Several scopes may come space-separated in one parameter too.
            "scope" => scopes.extend(v.split(' ').filter(|s| !s.is_empty()).map(str::to_owned)),
            _ => {}
        }
    }
    let basic = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if !k.trim().eq_ignore_ascii_case("authorization") {
            return None;
        }
        let v = v.trim();
        let b64 = v
            .strip_prefix("Basic ")
            .or_else(|| v.strip_prefix("basic "))?;
        let text = String::from_utf8(base64_decode(b64)?).ok()?;
        let (u, p) = text.split_once(':')?;
        Some((u.to_owned(), p.to_owned()))
    });
    let presented = present(sh, basic.as_ref().map(|(u, p)| (u.as_str(), p.as_str())));
    let mut record = TokenRequest {
        presented: presented.clone(),
        service: service.clone(),
        scopes: scopes.clone(),
        granted: Vec::new(),
        status: 0,
    };
    // (status, extra headers, body, an error to return after answering)
    let (status, extra, body, failure) = if service.as_deref() != Some(sh.service.as_str()) {
        (
            400,
            "",
            r#"{"errors":[{"code":"UNSUPPORTED","message":"unknown service"}]}"#.to_owned(),
            None,
        )
    } else if matches!(presented, Presented::Invalid(_)) {
        (
            401,
            "WWW-Authenticate: Basic realm=\"baton-test-token\"\r\n",
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
                .to_owned(),
            None,
        )
    } else {
        let access = grant(sh, &presented, &scopes);
        record.granted = access
            .iter()
            .map(|(t, n, a)| format!("{t}:{n}:{}", a.join(",")))
            .collect();
        match sign_token(sh, &presented, &access) {
            Ok(token) => {
                let body = json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": TOKEN_TTL_SECS,
                })
                .to_string();
                (200, "", body, None)
            }
            Err(e) => (500, "", r#"{"error":"signing failed"}"#.to_owned(), Some(e)),
        }
    };
    record.status = status;
    // Logged before answering: a client that has its answer must find its request here.
    lock(&sh.log).push(record);
    respond(&mut conn, status, extra, &body)?;
    failure.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_known_values() {
        assert_eq!(b64url(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64_decode("dXNlcjpwYXNz").unwrap(), b"user:pass");
        // RFC 4648 test vectors.
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(
            percent_decode("repository%3Abaton%2Fx%3Apull%2Cpush"),
            "repository:baton/x:pull,push"
        );
        let kid = libtrust_key_id(b"anything");
        assert_eq!(kid.len(), 48 + 11);
        assert_eq!(kid.split(':').count(), 12);
    }
}
