//! Join tokens and enrollment: how a device gets its identity.
//!
//! `baton token create --ttl 1h` makes a join token: a random id and secret, of which the
//! store keeps only the id, the secret's SHA-256, the expiry, the remaining uses and the
//! labels to give the node. The printed token also carries the SHA-256 of the
//! coordinator's CA certificate, so the agent can check whom it talks to before it trusts
//! anything it is sent (kubeadm's discovery hash):
//!
//! ```text
//! bjt1.<id: 16 hex>.<secret: 32 hex>.<sha256 of ca.crt DER: 64 hex>
//! ```
//!
//! That format, the device routes and their bodies are the device's contract, shared
//! with the agent: [`baton_proto::enroll`].
//!
//! An agent enrolls with `POST /api/v1/enroll` (no API token: the join token authorizes)
//! sending its node name, its own public key (the private key never leaves the device),
//! labels and arch. [`Enroller::enroll`] checks the token, issues an X.509 node
//! certificate and, in ONE store commit, consumes one use of the token and records the
//! identity: a failed enrollment consumes nothing, and two enrollments racing for the
//! last use cannot both win (the token table's mutex is held across the commit).
//! Enrolling a name that is already enrolled with another key is refused unless the
//! token was made for that node name (`--node-name`), which is how a replaced device or
//! a revoked node comes back.
//!
//! Key rotation ([`Enroller::rotate`], `POST /api/v1/nodes/<name>/rotate`) needs no
//! token: the request is signed by the node's current key, and the old key stays valid
//! for a short overlap so that nothing in flight is refused.
//!
//! Both handlers are pure functions of (state, request bytes, now), so they can be
//! fuzzed: hostile input gets a 4xx error, never a panic.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use baton_proto::enroll::{
    rotate_signing_bytes, EnrollRequest, EnrollResponse, JoinToken, RotateRequest,
};
use baton_proto::sign;
use baton_proto::NodeName;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::contract::tokens::{JoinTokenInfo, JoinTokenRequest};
use crate::security::encoding::{b64, now_ms, unb64};
use crate::security::gate::{IdentityRecord, Security, SecurityError};
use crate::security::pki::{Pki, PkiError};
use crate::store::{self, Op, Store, StoreError, Table};

/// Largest accepted enrollment or rotation request.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Default life of a node certificate.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(365 * 86400);
const MAX_LABELS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("request of {0} bytes is over the limit of {MAX_REQUEST_BYTES}")]
    TooLarge(usize),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("invalid join token")]
    InvalidToken,
    #[error("join token expired")]
    Expired,
    #[error("join token was already used (each use enrolls one device): make a new one with `baton token create`")]
    UsedUp,
    #[error("join token is for node {allowed:?}, not {requested:?}")]
    WrongNode { allowed: String, requested: String },
    #[error("node {0:?} is already enrolled with another key; use a join token made with --node-name {0}")]
    NameTaken(String),
    #[error("node {0:?} is not enrolled")]
    NotEnrolled(String),
    #[error("node {0:?} is revoked")]
    Revoked(String),
    #[error("bad rotation signature")]
    BadSignature,
    #[error("rotation request is stale or from the future")]
    Stale,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

impl EnrollError {
    /// The HTTP status: 4xx for anything the client did, 500 for our own failures.
    pub fn status(&self) -> u16 {
        match self {
            EnrollError::TooLarge(_) => 413,
            EnrollError::BadRequest(_) => 400,
            EnrollError::InvalidToken
            | EnrollError::Expired
            | EnrollError::UsedUp
            | EnrollError::BadSignature
            | EnrollError::Stale => 401,
            EnrollError::WrongNode { .. } | EnrollError::Revoked(_) => 403,
            EnrollError::NotEnrolled(_) => 404,
            EnrollError::NameTaken(_) => 409,
            EnrollError::Store(_) | EnrollError::Security(_) | EnrollError::Pki(_) => 500,
        }
    }
}

/// A stored join token: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenRecord {
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
    /// Unix seconds.
    pub expires: u64,
    pub uses_left: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The only node name this token may enroll (and may re-enroll with a new key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    pub creation_timestamp: String,
}

impl From<&JoinTokenRecord> for JoinTokenInfo {
    fn from(r: &JoinTokenRecord) -> Self {
        Self {
            id: r.id.clone(),
            expires: r.expires,
            uses_left: r.uses_left,
            labels: r.labels.clone(),
            node_name: r.node_name.clone(),
            creation_timestamp: r.creation_timestamp.clone(),
        }
    }
}

/// The outcome of a successful enrollment, for the HTTP layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub response: EnrollResponse,
    /// The node was revoked before: the core must take it back.
    pub was_revoked: bool,
}

fn bad(msg: impl Into<String>) -> EnrollError {
    EnrollError::BadRequest(msg.into())
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, EnrollError> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(EnrollError::TooLarge(body.len()));
    }
    serde_json::from_slice(body).map_err(|e| bad(e.to_string()))
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Labels a node may be given: Kubernetes-like keys and values, bounded in number.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("more than {MAX_LABELS} labels"));
    }
    let ok = |s: &str, max: usize| {
        s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    };
    for (k, v) in labels {
        if k.is_empty() || !ok(k, 253) || !ok(v, 63) {
            return Err(format!("invalid label {k:?}={v:?}"));
        }
    }
    Ok(())
}

fn decode_key(s: &str) -> Result<sign::VerifyingKey, EnrollError> {
    unb64(s)
        .and_then(|b| sign::verifying_key(&b).ok())
        .ok_or_else(|| bad("publicKey is not a base64 Ed25519 public key"))
}

/// Join tokens (in memory, written through to the store) and the enrollment handlers.
pub struct Enroller {
    store: Arc<dyn Store>,
    security: Arc<Security>,
    cert_ttl: Duration,
    /// A std mutex, held across the commit that consumes a use: see the module docs.
    tokens: Mutex<HashMap<String, JoinTokenRecord>>,
}

impl Enroller {
    pub fn load(store: Arc<dyn Store>, security: Arc<Security>) -> Result<Self, EnrollError> {
        // A used-up token is kept until it expires, so that reusing it is told apart from
        // a wrong one; past that it is dropped here.
        let now = now_ms() / 1000;
        let (gone, tokens): (Vec<_>, Vec<_>) =
            store::list_json::<JoinTokenRecord>(store.as_ref(), Table::JoinTokens)?
                .into_iter()
                .partition(|r| r.uses_left == 0 && r.expires <= now);
        if !gone.is_empty() {
            store.commit(
                gone.into_iter()
                    .map(|r| Op::Delete(Table::JoinTokens, r.id))
                    .collect(),
            )?;
        }
        let tokens = tokens.into_iter().map(|r| (r.id.clone(), r)).collect();
        Ok(Self {
            store,
            security,
            cert_ttl: DEFAULT_CERT_TTL,
            tokens: Mutex::new(tokens),
        })
    }

    pub fn with_cert_ttl(mut self, ttl: Duration) -> Self {
        self.cert_ttl = ttl;
        self
    }

    fn tokens(&self) -> MutexGuard<'_, HashMap<String, JoinTokenRecord>> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pki(&self) -> &Pki {
        self.security.pki()
    }

    /// Makes a join token; returns the token string (shown once) and its record.
    pub fn create_token(
        &self,
        req: &JoinTokenRequest,
        now_unix: u64,
    ) -> Result<(String, JoinTokenInfo), EnrollError> {
        if req.ttl_seconds == 0 || req.ttl_seconds > 365 * 86400 {
            return Err(bad("ttl must be between 1 s and 365 days"));
        }
        if req.uses == 0 {
            return Err(bad("uses must be at least 1"));
        }
        check_labels(&req.labels).map_err(bad)?;
        if let Some(n) = &req.node_name {
            NodeName::new(n).map_err(|e| bad(e.to_string()))?;
        }
        let token = JoinToken {
            id: hex::encode(rand::random::<[u8; 8]>()),
            secret: hex::encode(rand::random::<[u8; 16]>()),
            ca_sha256: self.pki().ca_sha256(),
        };
        let rec = JoinTokenRecord {
            id: token.id.clone(),
            sha256: hash(&token.secret),
            expires: now_unix.saturating_add(req.ttl_seconds),
            uses_left: req.uses,
            labels: req.labels.clone(),
            node_name: req.node_name.clone(),
            creation_timestamp: crate::model::api::now_rfc3339(),
        };
        let mut tokens = self.tokens();
        self.store
            .commit(vec![store::put_json(Table::JoinTokens, &rec.id, &rec)?])?;
        let info = JoinTokenInfo::from(&rec);
        tokens.insert(rec.id.clone(), rec);
        Ok((token.render(), info))
    }

    pub fn list_tokens(&self) -> Vec<JoinTokenInfo> {
        let mut v: Vec<JoinTokenInfo> = self
            .tokens()
            .values()
            .filter(|r| r.uses_left > 0)
            .map(JoinTokenInfo::from)
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Deletes a join token; `false` if there was none.
    pub fn delete_token(&self, id: &str) -> Result<bool, EnrollError> {
        let mut tokens = self.tokens();
        if !tokens.contains_key(id) {
            return Ok(false);
        }
        self.store
            .commit(vec![Op::Delete(Table::JoinTokens, id.to_owned())])?;
        tokens.remove(id);
        Ok(true)
    }

    /// The enrollment handler's core; see the module docs.
    pub fn enroll(&self, body: &[u8], now_unix: u64) -> Result<Enrolled, EnrollError> {
        let req: EnrollRequest = parse_body(body)?;
        let name = NodeName::new(&req.node_name).map_err(|e| bad(e.to_string()))?;
        let key = decode_key(&req.public_key)?;
        check_labels(&req.labels).map_err(bad)?;
        if req.arch.len() > 32 {
            return Err(bad("arch is too long"));
        }
        let token = JoinToken::parse(&req.token).map_err(|_| EnrollError::InvalidToken)?;

        let mut tokens = self.tokens();
        let rec = tokens
            .get(&token.id)
            .filter(|r| r.sha256 == hash(&token.secret))
            .ok_or(EnrollError::InvalidToken)?
            .clone();
        if rec.uses_left == 0 {
            return Err(EnrollError::UsedUp);
        }
        if now_unix >= rec.expires {
            return Err(EnrollError::Expired);
        }
        if let Some(allowed) = &rec.node_name {
            if allowed != name.as_str() {
                return Err(EnrollError::WrongNode {
                    allowed: allowed.clone(),
                    requested: name.as_str().to_owned(),
                });
            }
        }
        let public_key = b64(key.as_bytes());
        let existing = self.security.identity(name.as_str());
        let was_revoked = existing.as_ref().is_some_and(|e| e.revoked);
        if let Some(old) = &existing {
            let same = old.public_key == public_key && !old.revoked;
            if !same && rec.node_name.is_none() {
                return Err(EnrollError::NameTaken(name.as_str().to_owned()));
            }
        }
        // The token's labels win over the device's own claims.
        let mut labels = req.labels.clone();
        labels.extend(rec.labels.clone());
        let not_after = now_unix.saturating_add(self.cert_ttl.as_secs());
        let certificate = self.pki().issue_node_cert(name.as_str(), &key, not_after)?;
        let identity = IdentityRecord {
            node: name.as_str().to_owned(),
            public_key,
            previous_key: None,
            previous_valid_until_ms: 0,
            labels: labels.clone(),
            arch: req.arch.clone(),
            not_after,
            certificate: certificate.clone(),
            enrolled_at: crate::model::api::now_rfc3339(),
            revoked: false,
            revoked_at: None,
        };
        let mut used = rec.clone();
        used.uses_left -= 1;
        let token_op = store::put_json(Table::JoinTokens, &used.id, &used)?;
        // One commit: the identity and the token's use, or neither.
        self.security.install(identity, vec![token_op])?;
        tokens.insert(used.id.clone(), used);
        drop(tokens);
        tracing::info!(node = %name, token = %rec.id, "node enrolled");
        Ok(Enrolled {
            response: self.response(name.as_str(), certificate, labels, not_after),
            was_revoked,
        })
    }

    fn response(
        &self,
        node: &str,
        certificate: String,
        labels: BTreeMap<String, String>,
        not_after: u64,
    ) -> EnrollResponse {
        EnrollResponse {
            node_name: node.to_owned(),
            certificate,
            coordinator_public_key: b64(self.pki().public_key().as_bytes()),
            ca_certificate: self.pki().ca_pem().to_owned(),
            labels,
            not_after,
        }
    }

    /// The rotation handler's core: a new key and certificate for an enrolled node,
    /// authorized by a signature of its current key.
    pub fn rotate(
        &self,
        node: &str,
        body: &[u8],
        now_ms: u64,
    ) -> Result<EnrollResponse, EnrollError> {
        let req: RotateRequest = parse_body(body)?;
        let new_key = decode_key(&req.new_public_key)?;
        let mut rec = self
            .security
            .identity(node)
            .ok_or_else(|| EnrollError::NotEnrolled(node.to_owned()))?;
        if rec.revoked {
            return Err(EnrollError::Revoked(node.to_owned()));
        }
        let window = self.security.config().window.as_millis() as u64;
        if req.timestamp_ms.abs_diff(now_ms) > window {
            return Err(EnrollError::Stale);
        }
        let sig_bytes: [u8; 64] = unb64(&req.signature)
            .and_then(|b| b.try_into().ok())
            .ok_or(EnrollError::BadSignature)?;
        // The current key, or the previous one during the overlap (a retried request).
        let msg = rotate_signing_bytes(node, &req.new_public_key, req.timestamp_ms);
        let sig = ed25519_dalek::Signature::from_bytes(&sig_bytes);
        let mut keys = vec![rec.public_key.clone()];
        if now_ms <= rec.previous_valid_until_ms {
            keys.extend(rec.previous_key.clone());
        }
        let signed = keys
            .iter()
            .any(|k| decode_key(k).is_ok_and(|k| k.verify_strict(&msg, &sig).is_ok()));
        if !signed {
            return Err(EnrollError::BadSignature);
        }
        let new_b64 = b64(new_key.as_bytes());
        if new_b64 == rec.public_key {
            // A retried request: nothing to change, answer again.
            return Ok(self.response(
                node,
                rec.certificate.clone(),
                rec.labels.clone(),
                rec.not_after,
            ));
        }
        let not_after = (now_ms / 1000).saturating_add(self.cert_ttl.as_secs());
        let certificate = self.pki().issue_node_cert(node, &new_key, not_after)?;
        rec.previous_key = Some(std::mem::replace(&mut rec.public_key, new_b64));
        rec.previous_valid_until_ms =
            now_ms.saturating_add(self.security.config().rotation_overlap.as_millis() as u64);
        rec.certificate = certificate.clone();
        rec.not_after = not_after;
        let labels = rec.labels.clone();
        self.security.install(rec, vec![])?;
        tracing::info!(node, "node key rotated");
        Ok(self.response(node, certificate, labels, not_after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::gate::SecurityConfig;
    use crate::store::MemStore;
    use baton_proto::enroll::JoinTokenError;
    use baton_proto::sign::SigningKey;
    use ed25519_dalek::Signer;

    const NOW: u64 = 1_800_000_000;

    fn setup() -> (Enroller, Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let pki = Arc::new(Pki::load_or_create(dir.path()).unwrap());
        let store: Arc<dyn Store> = Arc::new(MemStore::default());
        let sec = Arc::new(Security::load(store.clone(), pki, SecurityConfig::default()).unwrap());
        (Enroller::load(store.clone(), sec).unwrap(), store, dir)
    }

    fn token(e: &Enroller, uses: u32, node: Option<&str>) -> String {
        e.create_token(
            &JoinTokenRequest {
                ttl_seconds: 3600,
                uses,
                labels: [("zone".to_string(), "a".to_string())].into(),
                node_name: node.map(str::to_owned),
            },
            NOW,
        )
        .unwrap()
        .0
    }

    fn req(token: &str, node: &str, key: &SigningKey) -> Vec<u8> {
        serde_json::to_vec(&EnrollRequest {
            token: token.into(),
            node_name: node.into(),
            public_key: b64(key.verifying_key().as_bytes()),
            labels: [
                ("zone".to_string(), "b".to_string()),
                ("x".to_string(), "y".to_string()),
            ]
            .into(),
            arch: "arm64".into(),
        })
        .unwrap()
    }

    #[test]
    fn token_strings_round_trip_and_carry_the_ca_hash() {
        let (e, store, _d) = setup();
        let t = token(&e, 1, None);
        let parsed = JoinToken::parse(&t).unwrap();
        assert_eq!(parsed.render(), t);
        assert_eq!(parsed.ca_sha256, e.pki().ca_sha256());
        // Only the hash is stored.
        let raw =
            String::from_utf8(store.get(Table::JoinTokens, &parsed.id).unwrap().unwrap()).unwrap();
        assert!(!raw.contains(&parsed.secret));
        for bad in [
            "",
            "bjt1",
            "bjt2.0011223344556677.00112233445566778899aabbccddeeff.",
            &t[..t.len() - 1],
            &format!("{t}.x"),
        ] {
            assert_eq!(
                JoinToken::parse(bad),
                Err(JoinTokenError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(e.list_tokens().len(), 1);
        assert!(e.delete_token(&parsed.id).unwrap());
        assert!(!e.delete_token(&parsed.id).unwrap());
        assert!(e.list_tokens().is_empty());
    }

    #[test]
    fn single_use_token_enrolls_once() {
        let (e, _s, _d) = setup();
        let t = token(&e, 1, None);
        let k = SigningKey::from_bytes(&[1; 32]);
        let ok = e.enroll(&req(&t, "pi-1", &k), NOW).unwrap();
        assert_eq!(ok.response.node_name, "pi-1");
        assert!(ok
            .response
            .certificate
            .starts_with("-----BEGIN CERTIFICATE-----"));
        // The token's labels win; the device's other labels stay.
        assert_eq!(ok.response.labels["zone"], "a");
        assert_eq!(ok.response.labels["x"], "y");
        assert_eq!(ok.response.not_after, NOW + DEFAULT_CERT_TTL.as_secs());
        // A used token is told apart from a wrong one.
        let again = e.enroll(&req(&t, "pi-2", &SigningKey::from_bytes(&[2; 32])), NOW);
        assert!(matches!(again, Err(EnrollError::UsedUp)), "{again:?}");
        assert!(again.unwrap_err().to_string().contains("already used"));
        let parts: Vec<&str> = t.split('.').collect();
        let wrong = format!("{}.{}.{}.{}", parts[0], parts[1], "f".repeat(32), parts[3]);
        assert_ne!(wrong, t);
        let r = e.enroll(&req(&wrong, "pi-2", &SigningKey::from_bytes(&[2; 32])), NOW);
        assert!(matches!(r, Err(EnrollError::InvalidToken)), "{r:?}");
        assert!(e.list_tokens().is_empty());
    }

    #[test]
    fn failures_consume_nothing() {
        let (e, _s, _d) = setup();
        let t = token(&e, 2, None);
        let k = SigningKey::from_bytes(&[1; 32]);
        e.enroll(&req(&t, "pi-1", &k), NOW).unwrap();
        // Another key for an enrolled name: refused, and the token keeps its last use.
        let other = SigningKey::from_bytes(&[2; 32]);
        let r = e.enroll(&req(&t, "pi-1", &other), NOW);
        assert!(matches!(r, Err(EnrollError::NameTaken(_))), "{r:?}");
        assert_eq!(r.unwrap_err().status(), 409);
        assert_eq!(e.list_tokens()[0].uses_left, 1);
        // Expired.
        let r = e.enroll(&req(&t, "pi-3", &other), NOW + 3600);
        assert!(matches!(r, Err(EnrollError::Expired)), "{r:?}");
        assert_eq!(e.list_tokens()[0].uses_left, 1);
        // The same device enrolling again is fine (idempotent retry).
        e.enroll(&req(&t, "pi-1", &k), NOW).unwrap();
    }

    #[test]
    fn a_node_token_replaces_a_device_and_lifts_a_revocation() {
        let (e, _s, _d) = setup();
        let k = SigningKey::from_bytes(&[1; 32]);
        e.enroll(&req(&token(&e, 1, None), "pi-1", &k), NOW)
            .unwrap();
        e.security.revoke("pi-1").unwrap();
        let r = e.enroll(&req(&token(&e, 1, None), "pi-1", &k), NOW);
        assert!(matches!(r, Err(EnrollError::NameTaken(_))), "{r:?}");
        let wrong = e.enroll(&req(&token(&e, 1, Some("pi-2")), "pi-1", &k), NOW);
        assert!(
            matches!(wrong, Err(EnrollError::WrongNode { .. })),
            "{wrong:?}"
        );
        let new = SigningKey::from_bytes(&[3; 32]);
        let ok = e
            .enroll(&req(&token(&e, 1, Some("pi-1")), "pi-1", &new), NOW)
            .unwrap();
        assert!(ok.was_revoked);
        let id = e.security.identity("pi-1").unwrap();
        assert!(!id.revoked);
        assert_eq!(id.public_key, b64(new.verifying_key().as_bytes()));
    }

    #[test]
    fn hostile_input_gets_a_client_error() {
        let (e, _s, _d) = setup();
        let t = token(&e, 1, None);
        let k = SigningKey::from_bytes(&[1; 32]);
        let good: serde_json::Value = serde_json::from_slice(&req(&t, "pi-1", &k)).unwrap();
        let with = |f: &str, v: serde_json::Value| {
            let mut g = good.clone();
            g[f] = v;
            serde_json::to_vec(&g).unwrap()
        };
        let long_labels: BTreeMap<String, String> =
            (0..100).map(|i| (format!("k{i}"), "v".into())).collect();
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            b"{".to_vec(),
            b"null".to_vec(),
            b"[]".to_vec(),
            vec![0xff; 100],
            vec![b' '; MAX_REQUEST_BYTES + 1],
            with("nodeName", "../etc".into()),
            with("nodeName", "".into()),
            with("nodeName", "a".repeat(64).into()),
            with("publicKey", "not base64!".into()),
            with("publicKey", b64(&[0; 31]).into()),
            with("token", "bjt1.zz".into()),
            with("token", 5.into()),
            with("labels", serde_json::json!({"bad key": "v"})),
            with("labels", serde_json::to_value(&long_labels).unwrap()),
            with("arch", "x".repeat(100).into()),
            with("extra", 1.into()),
        ];
        for body in cases {
            let r = e.enroll(&body, NOW);
            let status = r.as_ref().map(|_| 200).unwrap_or_else(|e| e.status());
            assert!(
                (400..500).contains(&status),
                "{:?}: {r:?}",
                String::from_utf8_lossy(&body[..body.len().min(60)])
            );
        }
        // Nothing was consumed.
        assert_eq!(e.list_tokens()[0].uses_left, 1);
    }

    #[test]
    fn rotation_is_signed_by_the_current_key() {
        let (e, _s, _d) = setup();
        let old = SigningKey::from_bytes(&[1; 32]);
        e.enroll(&req(&token(&e, 1, None), "pi-1", &old), NOW)
            .unwrap();
        let new = SigningKey::from_bytes(&[2; 32]);
        let new_b64 = b64(new.verifying_key().as_bytes());
        let now_ms = NOW * 1000;
        let body = |k: &SigningKey, ts: u64| {
            let sig = k.sign(&rotate_signing_bytes("pi-1", &new_b64, ts));
            serde_json::to_vec(&RotateRequest {
                new_public_key: new_b64.clone(),
                timestamp_ms: ts,
                signature: b64(&sig.to_bytes()),
            })
            .unwrap()
        };
        let r = e.rotate("pi-1", &body(&new, now_ms), now_ms);
        assert!(matches!(r, Err(EnrollError::BadSignature)), "{r:?}");
        let r = e.rotate("pi-1", &body(&old, now_ms - 3_600_000), now_ms);
        assert!(matches!(r, Err(EnrollError::Stale)), "{r:?}");
        let r = e.rotate("pi-9", &body(&old, now_ms), now_ms);
        assert!(matches!(r, Err(EnrollError::NotEnrolled(_))), "{r:?}");
        let ok = e.rotate("pi-1", &body(&old, now_ms), now_ms).unwrap();
        assert_eq!(ok.node_name, "pi-1");
        let id = e.security.identity("pi-1").unwrap();
        assert_eq!(id.public_key, new_b64);
        assert_eq!(id.previous_key, Some(b64(old.verifying_key().as_bytes())));
        // A retry answers the same and changes nothing.
        e.rotate("pi-1", &body(&old, now_ms), now_ms).unwrap();
        assert_eq!(
            e.security.identity("pi-1").unwrap().previous_key,
            id.previous_key
        );
    }
}
