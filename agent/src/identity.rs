//! The device's identity: its Ed25519 key, its node certificate, and the coordinator key
//! it trusts; plus signing, verifying and replay state for the bus.
//!
//! **The identity file**, `<data-dir>/identity.json` (mode 0600, written atomically), is
//! one small JSON document so that a flasher can write it too (docs/security.md):
//!
//! ```json
//! { "version": 1, "nodeName": "pi-7",
//!   "privateKey": "<base64 of the 32-byte Ed25519 seed>",
//!   "certificate": "-----BEGIN CERTIFICATE-----...", "notAfter": 1830000000,
//!   "coordinatorPublicKey": "<base64 of 32 bytes>", "caCertificate": "-----BEGIN...",
//!   "labels": {"zone": "a"}, "coordinatorApi": "https://10.0.0.1:7474" }
//! ```
//!
//! It is made once by [`enroll`] (`baton-agent --join-token`); later starts read it and
//! ignore the token. The private key never leaves the device.
//!
//! **MQTT over mutual TLS** needs nothing else: the node certificate (CN = node name) is
//! the agent's client certificate, the CA the broker's, and the key the device key
//! ([`IdentityFile::mqtt_tls`]). For other tools (`mosquitto_sub`, `openssl`) the same
//! three are written beside the file as PEM, rewritten on every save: `node.crt`,
//! `node.key` (PKCS#8 v1, which OpenSSL 3.0 reads; mode 0600) and `ca.crt`.
//!
//! **Enrollment** pins the coordinator before trusting it: the join token carries the
//! SHA-256 of the coordinator's CA certificate. The agent fetches the CA (`GET
//! /api/v1/enroll/ca`, unauthenticated, so the TLS certificate is not checked for that
//! one request), refuses it unless its hash matches, then talks to the API over TLS
//! verified against that CA only, and checks that the coordinator key it is given is the
//! CA's own key.
//!
//! **Replay state**, `<data-dir>/seq.json`: the seq reservation for this agent's own
//! messages ([`baton_proto::sign::SeqCounter`]) and the last seq accepted from the
//! coordinator. The retained desired state comes back after every reconnect with the seq
//! already accepted: it is a duplicate, dropped quietly, not an error. An agent that
//! crashed between accepting a message and persisting what it said heals through the
//! protocol: its heartbeat reports the old generation and the coordinator republishes.
//!
//! **Clock.** A device without a real-time clock (a Raspberry Pi) boots in 1970 or at
//! the last saved time until NTP answers. A clock before [`CLOCK_FLOOR_MS`] is taken as
//! unset: coordinator messages are then judged by seq alone (not by the time window), and
//! the agent stamps its own messages with the coordinator's time, learned from the
//! `sent_at_ms` of the last verified coordinator message. The coordinator answers a
//! message refused as stale with a signed `StatusRequest`, which teaches the time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use baton_proto::sign::{self, Freshness, SeqCounter, SigningKey, VerifyingKey};
use baton_proto::{Body, Envelope, NodeName, Sender};
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

pub const IDENTITY_FILE: &str = "identity.json";
pub const SEQ_FILE: &str = "seq.json";
/// The PEM copies of the node certificate, key and CA (see the module docs).
pub const CERT_PEM_FILE: &str = "node.crt";
pub const KEY_PEM_FILE: &str = "node.key";
pub const CA_PEM_FILE: &str = "ca.crt";
pub const FORMAT_VERSION: u32 = 1;
/// 2026-01-01T00:00:00Z. A clock before this is unset (see the module docs). Bump it with
/// releases; it only has to be before any real "now" the binary will see.
pub const CLOCK_FLOOR_MS: u64 = 1_767_225_600_000;
/// The default bound on how far a coordinator message's time may be from ours.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(600);
const ROTATE_CONTEXT: &[u8] = b"baton-rotate-v1\0";
const TOKEN_PREFIX: &str = "bjt1";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid identity file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("invalid join token: expected bjt1.<id>.<secret>.<ca sha256>")]
    Token,
    #[error("the coordinator's CA certificate does not match the join token's hash (got sha256 {got}): refusing to trust it")]
    CaMismatch { got: String },
    #[error("the coordinator's public key is not its CA's key")]
    KeyMismatch,
    #[error("enrolling over plain http is only allowed to a loopback address: use https")]
    PlainHttp,
    #[error("the identity file is for node {file:?}, not {flag:?}")]
    NodeMismatch { file: String, flag: String },
    #[error("enrollment request to {url} failed: {message}")]
    Http { url: String, message: String },
    #[error(
        "invalid coordinator API URL {url:?}: expected https://HOST:PORT (http only on loopback)"
    )]
    ApiUrl { url: String },
    #[error("the coordinator refused: {0}")]
    Refused(String),
    #[error("no coordinator API URL: pass --coordinator-api")]
    NoApi,
    #[error(transparent)]
    Sign(#[from] sign::SignError),
    #[error(transparent)]
    Proto(#[from] baton_proto::ProtoError),
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError {
    let path = path.to_owned();
    move |source| IdentityError::Io { path, source }
}

/// The identity file's contents (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityFile {
    pub version: u32,
    pub node_name: String,
    /// Base64 of the 32-byte Ed25519 seed.
    pub private_key: String,
    pub certificate: String,
    pub coordinator_public_key: String,
    pub ca_certificate: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The certificate's notAfter, Unix seconds.
    pub not_after: u64,
    /// Where enrollment happened; used by `baton-agent rotate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_api: Option<String>,
}

impl IdentityFile {
    /// Reads the identity file; `Ok(None)` if there is none.
    pub fn load(path: &Path) -> Result<Option<Self>, IdentityError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path)(e)),
        };
        let invalid = |message: String| IdentityError::Invalid {
            path: path.to_owned(),
            message,
        };
        let f: IdentityFile = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if f.version != FORMAT_VERSION {
            return Err(invalid(format!("unsupported version {}", f.version)));
        }
        NodeName::new(&f.node_name).map_err(|e| invalid(e.to_string()))?;
        f.signing_key().map_err(|e| invalid(e.to_string()))?;
        f.coordinator_key().map_err(|e| invalid(e.to_string()))?;
        Ok(Some(f))
    }

    /// Writes it with mode 0600, atomically and durably (see [`crate::durable`]),
    /// then its PEM copies beside it (see the module docs).
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| IdentityError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        write_private(path, &bytes)?;
        self.write_pem_files(path.parent().unwrap_or(Path::new(".")))
    }

    /// The PEM copies of the node certificate, key and CA in `dir` (see the module docs);
    /// also for an identity enrolled by a version that did not write them.
    pub fn write_pem_files(&self, dir: &Path) -> Result<(), IdentityError> {
        let tls = self.mqtt_tls()?;
        write_private(&dir.join(KEY_PEM_FILE), &tls.key_pem)?;
        write_private(&dir.join(CERT_PEM_FILE), &tls.cert_pem)?;
        write_private(&dir.join(CA_PEM_FILE), &tls.ca_pem)
    }

    /// The client side of mutual TLS to the broker: the node certificate, the device key
    /// as PKCS#8 v1 PEM, and the coordinator's CA as the broker's trust anchor.
    pub fn mqtt_tls(&self) -> Result<crate::mqtt_tls::MqttTls, IdentityError> {
        Ok(crate::mqtt_tls::MqttTls {
            ca_pem: self.ca_certificate.clone().into_bytes(),
            cert_pem: self.certificate.clone().into_bytes(),
            key_pem: ed25519_pem(&self.signing_key()?.to_bytes()).into_bytes(),
        })
    }

    pub fn signing_key(&self) -> Result<SigningKey, IdentityError> {
        let seed: [u8; 32] = unb64(&self.private_key)
            .and_then(|b| b.try_into().ok())
            .ok_or(sign::SignError::BadKey)?;
        Ok(SigningKey::from_bytes(&seed))
    }

    pub fn coordinator_key(&self) -> Result<VerifyingKey, IdentityError> {
        let b = unb64(&self.coordinator_public_key).ok_or(sign::SignError::BadKey)?;
        Ok(sign::verifying_key(&b)?)
    }
}

/// An Ed25519 seed as PKCS#8 v1 PEM (RFC 8410 without the public key): the form OpenSSL
/// 3.0, rustls and ring all read.
pub fn ed25519_pem(seed: &[u8; 32]) -> String {
    // PrivateKeyInfo { version 0, AlgorithmIdentifier { id-Ed25519 }, OCTET STRING {
    // OCTET STRING (32) } }: a fixed prefix and the seed.
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(seed);
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        b64(&der)
    )
}

/// Identity, PEM copies and replay state: mode 0600, and durable ([`crate::durable::write`]).
/// Lost to a power cut, a rotated key the coordinator has already certified would lock the
/// device out, and a lost seq reservation lets our seqs repeat (refused as replays) when the
/// clock is behind ([`SeqCounter`]).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    crate::durable::write(path, bytes, crate::datadir::PRIVATE_FILE).map_err(io(path))
}

/// The parts of a join token string that the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub raw: String,
    pub ca_sha256: String,
}

impl JoinToken {
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        let hex_of = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        match parts.as_slice() {
            [p, id, secret, ca]
                if *p == TOKEN_PREFIX && hex_of(id, 16) && hex_of(secret, 32) && hex_of(ca, 64) =>
            {
                Ok(Self {
                    raw: s.trim().to_owned(),
                    ca_sha256: ca.to_ascii_lowercase(),
                })
            }
            _ => Err(IdentityError::Token),
        }
    }
}

/// The DER bytes of the first certificate in a PEM text.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

/// The Ed25519 key inside a certificate's subject public key info.
fn ed25519_key_of(cert_der: &[u8]) -> Option<[u8; 32]> {
    let der = rustls_pki_types::CertificateDer::from(cert_der.to_vec());
    let anchor = webpki::anchor_from_trusted_cert(&der).ok()?;
    // SubjectPublicKeyInfo contents: AlgorithmIdentifier { id-Ed25519 }, BIT STRING (33).
    const PREFIX: &[u8] = &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    let spki: &[u8] = anchor.subject_public_key_info.as_ref();
    spki.strip_prefix(PREFIX)?.try_into().ok()
}

/// A client that trusts only the coordinator's CA (any http client for http URLs).
fn pinned_client(ca_pem: &str) -> Result<reqwest::Client, IdentityError> {
    let cert =
        reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(|e| IdentityError::Http {
            url: String::new(),
            message: e.to_string(),
        })?;
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| IdentityError::Http {
            url: String::new(),
            message: e.to_string(),
        })
}

fn http_err(url: &str) -> impl Fn(reqwest::Error) -> IdentityError + '_ {
    move |e| IdentityError::Http {
        url: url.to_owned(),
        message: describe(&e),
    }
}

/// What went wrong, in the words of what the peer did: nothing listening, something that
/// is not TLS or not HTTP (the MQTT port, say), or no answer; then the cause chain.
fn describe(e: &reqwest::Error) -> String {
    let mut chain = Vec::new();
    let mut refused = false;
    // reqwest's own text ("error sending request for url") says nothing: its causes do.
    let mut cur: Option<&(dyn std::error::Error + 'static)> =
        std::error::Error::source(e).or(Some(e));
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        let text = err.to_string();
        if !chain.iter().any(|c: &String| c.contains(&text)) {
            chain.push(text);
        }
        cur = err.source();
    }
    let peer = e
        .url()
        .map(|u| {
            format!(
                "{}:{}",
                u.host_str().unwrap_or("?"),
                u.port_or_known_default().unwrap_or(0)
            )
        })
        .unwrap_or_else(|| "the coordinator".into());
    let what = if refused {
        format!("nothing listens on {peer} (connection refused): is the coordinator running, and is this its API or --enroll-listen port?")
    } else if e.is_timeout() {
        format!("{peer} did not answer within 30 s")
    } else if e.is_connect() {
        format!("{peer} accepted the connection but the TLS handshake failed: it does not answer as the coordinator's HTTPS API (the MQTT port, or another service?)")
    } else {
        format!("{peer} answered, but not as the coordinator's API (the MQTT port, or another service?)")
    };
    format!("{what}: {}", chain.join(": "))
}

/// Checks the enrollment arguments before anything is sent: the token's form and the
/// API URL (https, or http to loopback only).
pub fn check_enroll_args(api: &str, token: &str) -> Result<(), IdentityError> {
    JoinToken::parse(token)?;
    let bad = || IdentityError::ApiUrl {
        url: api.to_owned(),
    };
    let u = reqwest::Url::parse(api.trim_end_matches('/')).map_err(|_| bad())?;
    let host = u.host_str().ok_or_else(bad)?.to_owned();
    match u.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = host == "localhost"
                || host
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(IdentityError::PlainHttp)
            }
        }
        _ => Err(bad()),
    }
}

/// Fetches the coordinator's CA and checks it against the token's hash.
async fn pinned_ca(api: &str, ca_sha256: &str) -> Result<String, IdentityError> {
    let url = format!("{api}/api/v1/enroll/ca");
    let https = api.starts_with("https://");
    if !https {
        let host = reqwest::Url::parse(api)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let loopback = host == "localhost"
            || host
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(IdentityError::PlainHttp);
        }
    }
    // Not verified here: nothing is trusted until the hash matches.
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(http_err(&url))?;
    let resp = client.get(&url).send().await.map_err(http_err(&url))?;
    if !resp.status().is_success() {
        return Err(IdentityError::Refused(format!(
            "GET {url}: {}",
            resp.status()
        )));
    }
    let pem = resp.text().await.map_err(http_err(&url))?;
    let got = pem_der(&pem)
        .map(|d| hex::encode(Sha256::digest(d)))
        .unwrap_or_default();
    if got != ca_sha256 {
        return Err(IdentityError::CaMismatch { got });
    }
    Ok(pem)
}

async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, IdentityError> {
    let resp = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(http_err(url))?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.map_err(http_err(url))?;
    if !status.is_success() {
        let msg = v["error"].as_str().unwrap_or("no reason given");
        return Err(IdentityError::Refused(format!("{status}: {msg}")));
    }
    Ok(v)
}

/// Builds the identity file from an enrollment (or rotation) answer, after checking that
/// the coordinator key is the pinned CA's key.
fn identity_from(
    v: &serde_json::Value,
    seed: &[u8; 32],
    ca_pem: &str,
    api: &str,
) -> Result<IdentityFile, IdentityError> {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let ca_der = pem_der(ca_pem).ok_or(IdentityError::KeyMismatch)?;
    let ca_key = ed25519_key_of(&ca_der).ok_or(IdentityError::KeyMismatch)?;
    if unb64(&s("coordinatorPublicKey")).as_deref() != Some(&ca_key[..]) {
        return Err(IdentityError::KeyMismatch);
    }
    let labels = serde_json::from_value(v["labels"].clone()).unwrap_or_default();
    Ok(IdentityFile {
        version: FORMAT_VERSION,
        node_name: s("nodeName"),
        private_key: b64(seed),
        certificate: s("certificate"),
        coordinator_public_key: s("coordinatorPublicKey"),
        ca_certificate: ca_pem.to_owned(),
        labels,
        not_after: v["notAfter"].as_u64().unwrap_or(0),
        coordinator_api: Some(api.to_owned()),
    })
}

/// Enrolls this device: a new key pair, `POST /api/v1/enroll` with the join token, and
/// the identity file written to `path`.
pub async fn enroll(
    path: &Path,
    api: &str,
    token: &str,
    node: &NodeName,
    labels: &BTreeMap<String, String>,
    arch: &str,
) -> Result<IdentityFile, IdentityError> {
    check_enroll_args(api, token)?;
    let token = JoinToken::parse(token)?;
    let api = api.trim_end_matches('/');
    let ca_pem = pinned_ca(api, &token.ca_sha256).await?;
    let client = pinned_client(&ca_pem)?;
    let seed: [u8; 32] = rand::random();
    let key = SigningKey::from_bytes(&seed);
    let body = serde_json::json!({
        "token": token.raw,
        "nodeName": node.as_str(),
        "publicKey": b64(key.verifying_key().as_bytes()),
        "labels": labels,
        "arch": arch,
    });
    let v = post_json(&client, &format!("{api}/api/v1/enroll"), &body).await?;
    let id = identity_from(&v, &seed, &ca_pem, api)?;
    if id.node_name != node.as_str() {
        return Err(IdentityError::NodeMismatch {
            file: id.node_name,
            flag: node.as_str().to_owned(),
        });
    }
    id.save(path)?;
    info!(node = %node, path = %path.display(), not_after = id.not_after, "enrolled");
    Ok(id)
}

/// Rotates the device key: a new key pair, a request signed by the current key, and the
/// identity file rewritten. A running agent picks the new key up from the file; the
/// coordinator accepts both keys for a short overlap, so nothing restarts.
pub async fn rotate(path: &Path, api: Option<&str>) -> Result<IdentityFile, IdentityError> {
    let cur = IdentityFile::load(path)?.ok_or_else(|| IdentityError::Invalid {
        path: path.to_owned(),
        message: "no identity: enroll first".into(),
    })?;
    let api = api
        .map(str::to_owned)
        .or(cur.coordinator_api.clone())
        .ok_or(IdentityError::NoApi)?;
    let api = api.trim_end_matches('/').to_owned();
    let client = pinned_client(&cur.ca_certificate)?;
    let seed: [u8; 32] = rand::random();
    let new_pub = b64(SigningKey::from_bytes(&seed).verifying_key().as_bytes());
    let ts = wall_ms();
    let mut msg = ROTATE_CONTEXT.to_vec();
    msg.extend_from_slice(cur.node_name.as_bytes());
    msg.push(0);
    msg.extend_from_slice(new_pub.as_bytes());
    msg.push(0);
    msg.extend_from_slice(ts.to_string().as_bytes());
    let sig = cur.signing_key()?.sign(&msg);
    let body = serde_json::json!({
        "newPublicKey": new_pub,
        "timestampMs": ts,
        "signature": b64(&sig.to_bytes()),
    });
    let url = format!("{api}/api/v1/nodes/{}/rotate", cur.node_name);
    let v = post_json(&client, &url, &body).await?;
    let id = identity_from(&v, &seed, &cur.ca_certificate, &api)?;
    id.save(path)?;
    info!(node = %id.node_name, "device key rotated");
    Ok(id)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SeqState {
    reserved: u64,
    coordinator_seq: Option<u64>,
}

/// Why the agent refused a coordinator message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unsigned,
    BadSignature,
    Replay,
    Stale,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::BadSignature => "bad-signature",
            Refusal::Replay => "replay",
            Refusal::Stale => "stale",
        }
    }
}

struct State {
    key: SigningKey,
    modified: Option<SystemTime>,
    seq: SeqCounter,
    persisted: SeqState,
    /// Coordinator time minus our clock, learned while our clock is unset.
    offset_ms: Option<i64>,
}

/// Signing, verification and replay state for the bus; cheap to clone.
#[derive(Clone)]
pub struct AgentSecurity {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeName,
    coordinator: VerifyingKey,
    identity_path: PathBuf,
    seq_path: PathBuf,
    window_ms: u64,
    /// A std mutex: never held across an await; the work under it is one signature and,
    /// rarely, one small file write.
    state: Mutex<State>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    duplicates: AtomicU64,
    /// A coordinator-requested rotation ([`AgentSecurity::rotate_in_background`]) runs.
    rotating: std::sync::atomic::AtomicBool,
}

impl AgentSecurity {
    /// Signing and verification for the identity `id` in `data_dir`, with the persisted
    /// replay state.
    pub fn new(
        data_dir: &Path,
        id: &IdentityFile,
        window: Duration,
    ) -> Result<Self, IdentityError> {
        let identity_path = data_dir.join(IDENTITY_FILE);
        let seq_path = data_dir.join(SEQ_FILE);
        let persisted: SeqState = match std::fs::read(&seq_path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                // Survivable: our seqs follow the clock, and so do the coordinator's.
                warn!(path = %seq_path.display(), error = %e, "unreadable replay state; starting afresh");
                SeqState::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SeqState::default(),
            Err(e) => return Err(io(&seq_path)(e)),
        };
        let node = NodeName::new(&id.node_name)?;
        let modified = std::fs::metadata(&identity_path)
            .and_then(|m| m.modified())
            .ok();
        Ok(Self {
            inner: Arc::new(Inner {
                node,
                coordinator: id.coordinator_key()?,
                identity_path,
                seq_path,
                window_ms: window.as_millis() as u64,
                state: Mutex::new(State {
                    key: id.signing_key()?,
                    modified,
                    seq: SeqCounter::resume(persisted.reserved),
                    persisted,
                    offset_ms: None,
                }),
                refused: Mutex::new(BTreeMap::new()),
                duplicates: AtomicU64::new(0),
                rotating: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    pub fn node(&self) -> &NodeName {
        &self.inner.node
    }

    /// On a verified `RotateKey` (`baton node rotate`): runs [`rotate`] in a task of its
    /// own, as `baton-agent rotate` would, so the bus keeps going and no container
    /// restarts; [`AgentSecurity::seal`] picks the new key up from the identity file. At
    /// most one rotation runs at a time; a request during one is ignored.
    pub fn rotate_in_background(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.rotating.swap(true, Ordering::SeqCst) {
            info!(node = %self.inner.node, "a key rotation is already running");
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            info!(node = %inner.node, "the coordinator asked for a key rotation");
            if let Err(e) = rotate(&inner.identity_path, None).await {
                warn!(node = %inner.node, error = %e, "key rotation failed; keeping the current key");
            }
            inner.rotating.store(false, Ordering::SeqCst);
        });
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Our send time, and the time to judge the window by (`None` while our clock is
    /// unset).
    fn clock(st: &State) -> (u64, Option<u64>) {
        let local = wall_ms();
        if local >= CLOCK_FLOOR_MS {
            return (local, Some(local));
        }
        let learned = st
            .offset_ms
            .map_or(local, |o| (local as i64).saturating_add(o).max(0) as u64);
        (learned, None)
    }

    fn persist(&self, st: &State) {
        let bytes = serde_json::to_vec(&st.persisted).unwrap_or_default();
        if let Err(e) = write_private(&self.inner.seq_path, &bytes) {
            warn!(error = %e, "cannot persist the replay state");
        }
    }

    /// Picks up a key rotated by `baton-agent rotate` (the identity file changed).
    fn reload_key(&self, st: &mut State) {
        let path = &self.inner.identity_path;
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified == st.modified {
            return;
        }
        st.modified = modified;
        match IdentityFile::load(path) {
            Ok(Some(id)) if id.node_name == self.inner.node.as_str() => match id.signing_key() {
                Ok(k) if k.verifying_key() != st.key.verifying_key() => {
                    info!(node = %self.inner.node, "signing with the rotated device key");
                    st.key = k;
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "rotated identity has no usable key; keeping the old one")
                }
            },
            Ok(_) => {
                warn!(path = %path.display(), "identity file changed to another node; ignored")
            }
            Err(e) => warn!(error = %e, "cannot reread the identity file; keeping the old key"),
        }
    }

    /// Encodes and signs one message for `body`'s topic: a fresh seq, the send time and
    /// the device's signature. Returns the topic and the payload.
    pub fn seal(&self, body: Body) -> Result<(String, Vec<u8>), IdentityError> {
        let topic =
            baton_proto::topics::topic(&self.inner.node, baton_proto::topics::Kind::of(&body));
        let mut st = self.state();
        self.reload_key(&mut st);
        let (sent_at, _) = Self::clock(&st);
        let (seq, reserve) = st.seq.next(wall_ms().max(sent_at).saturating_mul(1000));
        if let Some(r) = reserve {
            st.persisted.reserved = r;
            self.persist(&st);
        }
        let mut env = Envelope::new(Sender::Node(self.inner.node.clone()), seq, body);
        env.sent_at_ms = sent_at;
        sign::sign(&mut env, &topic, &st.key)?;
        Ok((topic, env.encode()?))
    }

    /// The last will, signed now (at connect time): see docs/security.md.
    pub fn last_will(&self) -> Result<(String, Vec<u8>), IdentityError> {
        self.seal(Body::Offline)
    }

    /// Verifies a coordinator message: signature by the pinned key, seq above the last
    /// accepted, time within the window (unless our clock is unset). `Ok(false)` is the
    /// last accepted message again (the retained desired state after a reconnect):
    /// drop it quietly.
    pub fn check(&self, topic: &str, env: &Envelope) -> Result<bool, Refusal> {
        let r = self.check_inner(topic, env);
        if let Err(why) = r {
            let n = {
                let mut m = self
                    .inner
                    .refused
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let c = m.entry(why.as_str()).or_default();
                *c += 1;
                *c
            };
            warn!(%topic, reason = why.as_str(), seq = env.seq, refused_so_far = n, "refused a coordinator message");
        }
        r
    }

    fn check_inner(&self, topic: &str, env: &Envelope) -> Result<bool, Refusal> {
        sign::verify(env, topic, &self.inner.coordinator).map_err(|e| match e {
            sign::SignError::Unsigned => Refusal::Unsigned,
            _ => Refusal::BadSignature,
        })?;
        let mut st = self.state();
        let (_, now) = Self::clock(&st);
        match sign::check_fresh(
            st.persisted.coordinator_seq,
            env.seq,
            env.sent_at_ms,
            now,
            self.inner.window_ms,
        ) {
            Freshness::Fresh => {
                st.persisted.coordinator_seq = Some(env.seq);
                if now.is_none() {
                    let offset = env.sent_at_ms as i64 - wall_ms() as i64;
                    if st.offset_ms.is_none() {
                        warn!(
                            offset_ms = offset,
                            "this clock is unset; using the coordinator's time"
                        );
                    }
                    st.offset_ms = Some(offset);
                }
                self.persist(&st);
                Ok(true)
            }
            Freshness::Duplicate => {
                self.inner.duplicates.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%topic, seq = env.seq, "already accepted; ignored");
                Ok(false)
            }
            Freshness::Replayed { .. } => Err(Refusal::Replay),
            Freshness::Stale { .. } => Err(Refusal::Stale),
        }
    }

    /// Refused coordinator messages per reason, and quiet duplicates.
    pub fn counters(&self) -> (BTreeMap<&'static str, u64>, u64) {
        (
            self.inner
                .refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            self.inner.duplicates.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(coordinator: &SigningKey) -> IdentityFile {
        IdentityFile {
            version: FORMAT_VERSION,
            node_name: "pi-1".into(),
            private_key: b64(&[5; 32]),
            certificate: String::new(),
            coordinator_public_key: b64(coordinator.verifying_key().as_bytes()),
            ca_certificate: String::new(),
            labels: BTreeMap::new(),
            not_after: 0,
            coordinator_api: None,
        }
    }

    fn from_coordinator(k: &SigningKey, seq: u64, at: u64) -> (String, Envelope) {
        let topic = "baton/v1/nodes/pi-1/down/control".to_owned();
        let mut e = Envelope::new(Sender::Coordinator, seq, Body::StatusRequest);
        e.sent_at_ms = at;
        sign::sign(&mut e, &topic, k).unwrap();
        (topic, e)
    }

    #[test]
    fn identity_file_round_trips_privately_and_rejects_junk() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        assert_eq!(IdentityFile::load(&path).unwrap(), None);
        let id = identity(&SigningKey::from_bytes(&[1; 32]));
        id.save(&path).unwrap();
        assert_eq!(IdentityFile::load(&path).unwrap(), Some(id.clone()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        for bad in [
            serde_json::json!({"version": 2}),
            serde_json::to_value(IdentityFile {
                private_key: "x".into(),
                ..id.clone()
            })
            .unwrap(),
            serde_json::to_value(IdentityFile {
                node_name: "a/b".into(),
                ..id.clone()
            })
            .unwrap(),
        ] {
            std::fs::write(&path, bad.to_string()).unwrap();
            assert!(IdentityFile::load(&path).is_err(), "{bad}");
        }
    }

    #[test]
    fn join_tokens() {
        let t = format!(
            "bjt1.{}.{}.{}",
            "a".repeat(16),
            "b".repeat(32),
            "C".repeat(64)
        );
        assert_eq!(JoinToken::parse(&t).unwrap().ca_sha256, "c".repeat(64));
        for bad in ["", "bjt1.a.b.c", &t[1..], &format!("{t}.d")] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn coordinator_messages_are_verified_and_replays_refused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let coord = SigningKey::from_bytes(&[1; 32]);
        let id = identity(&coord);
        let sec = AgentSecurity::new(dir.path(), &id, DEFAULT_WINDOW).unwrap();
        let now = wall_ms();
        let (t, e) = from_coordinator(&coord, 100, now);
        assert_eq!(sec.check(&t, &e), Ok(true));
        // The retained message again after a reconnect: a quiet duplicate.
        assert_eq!(sec.check(&t, &e), Ok(false));
        let (t2, old) = from_coordinator(&coord, 99, now);
        assert_eq!(sec.check(&t2, &old), Err(Refusal::Replay));
        let (t3, stale) = from_coordinator(&coord, 101, now - 3_600_000);
        assert_eq!(sec.check(&t3, &stale), Err(Refusal::Stale));
        let (t4, forged) = from_coordinator(&SigningKey::from_bytes(&[2; 32]), 102, now);
        assert_eq!(sec.check(&t4, &forged), Err(Refusal::BadSignature));
        let mut unsigned = forged.clone();
        unsigned.signature = baton_proto::BVec::new();
        assert_eq!(sec.check(&t4, &unsigned), Err(Refusal::Unsigned));
        // Moved to another topic: the signature covers the topic.
        assert_eq!(
            sec.check(
                "baton/v1/nodes/pi-1/down/desired",
                &from_coordinator(&coord, 103, now).1
            ),
            Err(Refusal::BadSignature)
        );
        let (counts, dups) = sec.counters();
        assert_eq!(
            (
                counts["replay"],
                counts["stale"],
                counts["bad-signature"],
                dups
            ),
            (1, 1, 2, 1)
        );
        // A restarted agent still knows seq 100.
        let again = AgentSecurity::new(dir.path(), &id, DEFAULT_WINDOW).unwrap();
        assert_eq!(again.check(&t, &e), Ok(false));
        assert_eq!(again.check(&t2, &old), Err(Refusal::Replay));
    }

    #[test]
    fn own_messages_are_signed_with_growing_seqs_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(&SigningKey::from_bytes(&[1; 32]));
        let device = id.signing_key().unwrap().verifying_key();
        let sec = AgentSecurity::new(dir.path(), &id, DEFAULT_WINDOW).unwrap();
        let (t, p) = sec.seal(Body::StatusRequest).unwrap();
        let e1 = Envelope::decode(&p).unwrap();
        sign::verify(&e1, &t, &device).unwrap();
        assert_eq!(e1.sender, Sender::Node(NodeName::new("pi-1").unwrap()));
        assert!(e1.sent_at_ms >= CLOCK_FLOOR_MS);
        let again = AgentSecurity::new(dir.path(), &id, DEFAULT_WINDOW).unwrap();
        let e2 = Envelope::decode(&again.seal(Body::StatusRequest).unwrap().1).unwrap();
        assert!(e2.seq > e1.seq);
    }

    #[test]
    fn a_rotated_key_in_the_file_is_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        let id = identity(&SigningKey::from_bytes(&[1; 32]));
        id.save(&path).unwrap();
        let sec = AgentSecurity::new(dir.path(), &id, DEFAULT_WINDOW).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let rotated = IdentityFile {
            private_key: b64(&[6; 32]),
            ..id
        };
        rotated.save(&path).unwrap();
        let (t, p) = sec.seal(Body::StatusRequest).unwrap();
        let new = rotated.signing_key().unwrap().verifying_key();
        sign::verify(&Envelope::decode(&p).unwrap(), &t, &new).unwrap();
    }
}
