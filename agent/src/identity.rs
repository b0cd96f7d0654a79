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
//! It is made once by [`enroll()`] (`baton-agent --join-token` or `--join-token-file`);
//! later starts read it and ignore the token. The private key never leaves the device.
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
//! **Exactly once, never giving up.** The device key is made and durably written
//! ([`PENDING_KEY_FILE`], `enroll.key`) before the first enrollment request, and reused by
//! every retry until the identity file holds it; then `enroll.key` is removed. A device that
//! lost power after the coordinator accepted its request, before it saved the answer, so
//! asks again with the same token and the same key, and the coordinator (which remembers
//! which key spent each use of a token) answers again without spending another use.
//! [`enroll_with_retry`] retries every failure (refused, expired, unreachable, a CA that
//! does not match) with capped exponential backoff and jitter, logging each one with the
//! coordinator's reason; nothing in the data directory is ever removed on a failure. A token
//! given in a file (`--join-token-file`) is read again at each attempt, so an operator fixes
//! a wrong or expired token by replacing the file (a changed file is tried at once), and the
//! file is removed once the identity is written.
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

mod enroll;
mod join;
pub mod release_key;
mod security;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use baton_proto::sign::{self, SigningKey, VerifyingKey};
use baton_proto::NodeName;
use serde::{Deserialize, Serialize};

pub use enroll::{
    check_api_url, check_enroll_args, enroll, forget_pending_key, pending_key, rotate,
};
pub use join::{enroll_with_retry, Backoff, Enrollment, TokenSource};
pub use security::{AgentSecurity, Refusal};

pub const IDENTITY_FILE: &str = "identity.json";
pub const SEQ_FILE: &str = "seq.json";
/// The PEM copies of the node certificate, key and CA (see the module docs).
pub const CERT_PEM_FILE: &str = "node.crt";
pub const KEY_PEM_FILE: &str = "node.key";
pub const CA_PEM_FILE: &str = "ca.crt";
/// The device key between its creation and the identity file that then holds it (see
/// "Enrollment" in the module docs): base64 of the 32-byte Ed25519 seed, mode 0600.
pub const PENDING_KEY_FILE: &str = "enroll.key";
/// Present when the coordinator said at enrollment (or the last rotation) that its broker
/// sits behind its own MQTT TLS front ([`baton_proto::enroll::EnrollResponse::broker_front`]):
/// `--link-liveness auto` then asks the front for TCP probes (see [`crate::link_profile`]).
/// A file of its own, not a field of [`IDENTITY_FILE`]: older agents (a rollback) read that
/// one with `deny_unknown_fields`.
pub const BROKER_FRONT_FILE: &str = "broker-front";
pub const FORMAT_VERSION: u32 = 1;
/// 2026-01-01T00:00:00Z. A clock before this is unset (see the module docs). Bump it with
/// releases; it only has to be before any real "now" the binary will see.
pub const CLOCK_FLOOR_MS: u64 = 1_767_225_600_000;
/// The default bound on how far a coordinator message's time may be from ours.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid identity file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// A malformed join token, in proto's words ("invalid join token: expected ...").
    #[error(transparent)]
    Token(#[from] baton_proto::enroll::JoinTokenError),
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
    #[error("no join token in {}: waiting for one (`baton token create`)", path.display())]
    NoTokenFile { path: PathBuf },
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

    /// The headers of a node-signed download of `path` (a release binary): the node, the
    /// time, and the device key's signature over both (`baton_proto::enroll`). They let an
    /// enrolled device that holds no API token download its updates.
    pub fn download_headers(
        &self,
        path: &str,
    ) -> Result<[(&'static str, String); 3], IdentityError> {
        use baton_proto::enroll::{
            download_signing_bytes, NODE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
        };
        use ed25519_dalek::Signer;
        let ts = wall_ms();
        let sig = self
            .signing_key()?
            .sign(&download_signing_bytes(&self.node_name, path, ts));
        Ok([
            (NODE_HEADER, self.node_name.clone()),
            (TIMESTAMP_HEADER, ts.to_string()),
            (SIGNATURE_HEADER, b64(&sig.to_bytes())),
        ])
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
/// clock is behind ([`baton_proto::sign::SeqCounter`]).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    crate::durable::write(path, bytes, crate::datadir::PRIVATE_FILE).map_err(io(path))
}

/// The API the node enrolled at, from its identity file (`None` without a readable one).
pub fn enrolled_at(path: &Path) -> Option<String> {
    IdentityFile::load(path).ok().flatten()?.coordinator_api
}

/// Records what the coordinator said about its broker (see [`BROKER_FRONT_FILE`]).
pub fn set_broker_front(dir: &Path, front: bool) -> Result<(), IdentityError> {
    let path = dir.join(BROKER_FRONT_FILE);
    if front {
        return write_private(
            &path,
            b"the coordinator's broker is behind its MQTT TLS front\n",
        );
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
        _ => Ok(()),
    }
}

/// Whether the coordinator said its broker is behind its front (see [`BROKER_FRONT_FILE`]).
pub fn broker_front(dir: &Path) -> bool {
    dir.join(BROKER_FRONT_FILE).exists()
}

/// The local clock, if it is past [`CLOCK_FLOOR_MS`] (set by an RTC or NTP): the only
/// trusted time of a node without an identity, which learns none from the coordinator.
pub fn local_trusted_ms() -> Option<u64> {
    Some(wall_ms()).filter(|t| *t >= CLOCK_FLOOR_MS)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{Body, Envelope, Sender};

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
    fn the_broker_front_mark_is_set_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!broker_front(dir.path()));
        set_broker_front(dir.path(), true).unwrap();
        assert!(broker_front(dir.path()));
        set_broker_front(dir.path(), true).unwrap();
        set_broker_front(dir.path(), false).unwrap();
        assert!(!broker_front(dir.path()));
        set_broker_front(dir.path(), false).unwrap();
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
        // The parser is the device contract's (baton_proto::enroll); the agent's message
        // for a bad token stays as it was.
        use baton_proto::enroll::JoinToken;
        let t = format!(
            "bjt1.{}.{}.{}",
            "a".repeat(16),
            "b".repeat(32),
            "C".repeat(64)
        );
        assert_eq!(JoinToken::parse(&t).unwrap().ca_sha256, "c".repeat(64));
        check_enroll_args("https://c:7474", &t).unwrap();
        for bad in ["", "bjt1.a.b.c", &t[1..], &format!("{t}.d")] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
            assert_eq!(
                check_enroll_args("https://c:7474", bad)
                    .unwrap_err()
                    .to_string(),
                "invalid join token: expected bjt1.<id>.<secret>.<ca sha256>",
                "{bad}"
            );
        }
    }

    #[test]
    fn a_retained_desired_state_redelivered_after_a_control_message_is_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let coord = SigningKey::from_bytes(&[1; 32]);
        let sec = AgentSecurity::new(dir.path(), &identity(&coord), DEFAULT_WINDOW).unwrap();
        let now = wall_ms();
        let signed = |topic: &str, seq: u64| {
            let mut e = Envelope::new(Sender::Coordinator, seq, Body::StatusRequest);
            e.sent_at_ms = now;
            sign::sign(&mut e, topic, &coord).unwrap();
            e
        };
        let desired = "baton/v1/nodes/pi-1/down/desired";
        let control = "baton/v1/nodes/pi-1/down/control";
        assert_eq!(sec.check(desired, &signed(desired, 10)), Ok(true));
        // A Service table after it moves the one sequence past the desired state.
        assert_eq!(sec.check(control, &signed(control, 11)), Ok(true));
        // The broker redelivers the retained desired state on a reconnect: quiet.
        assert_eq!(sec.check(desired, &signed(desired, 10)), Ok(false));
        // An older desired state than the last one on its topic is still a replay.
        assert_eq!(
            sec.check(desired, &signed(desired, 9)),
            Err(Refusal::Replay)
        );
        let (counts, dups) = sec.counters();
        assert_eq!((counts.get("replay").copied(), dups), (Some(1), 1));
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
