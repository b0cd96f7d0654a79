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
//! **Exactly once.** A device may lose power after this commit and before it saved the
//! answer; it then retries with the same token and the key it persisted before its first
//! request (`agent/src/identity/enroll.rs`). The token record remembers who spent each use
//! ([`JoinTokenRecord::used_by`]: node name and public key, in the same commit), so a
//! request by that key for that name, before the token expires, is answered again with the
//! identity's certificate and spends nothing. Any other key is refused as before ("already
//! used"), and the first device's identity is untouched: a token copied to a second device
//! enrolls nothing.
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
    download_signing_bytes, rotate_signing_bytes, EnrollRequest, EnrollResponse, JoinToken,
    RotateRequest,
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
/// Uses a token record remembers ([`JoinTokenRecord::used_by`]), the oldest forgotten first:
/// a many-use token's record stays small, and a retry comes within minutes of its use, not
/// after this many other devices.
pub const MAX_REMEMBERED_USES: usize = 256;

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
    #[error("bad node signature")]
    BadSignature,
    #[error("node-signed request is stale or from the future")]
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
    /// Who spent each use: committed with the identity it made, so that the same device
    /// retrying the same enrollment is answered again without spending another use (see
    /// the module docs). The most recent [`MAX_REMEMBERED_USES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<TokenUse>,
}

/// One use of a join token: the node it enrolled and the public key it enrolled with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenUse {
    pub node_name: String,
    /// Base64 of the 32-byte Ed25519 public key.
    pub public_key: String,
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
    /// The release public key (base64) handed to enrolling devices to pin
    /// (`baton server --release-public-key-file`).
    release_public_key: Option<String>,
    /// Told to enrolling devices: see [`EnrollResponse::broker_front`].
    broker_front: bool,
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
            release_public_key: None,
            broker_front: false,
        })
    }

    /// Whether devices are told that the broker is behind this coordinator's MQTT TLS
    /// front (`--link-liveness auto` on the agent).
    pub fn with_broker_front(mut self, front: bool) -> Self {
        self.broker_front = front;
        self
    }

    /// Hands `key` to every device that enrolls, which pins it to check agent releases.
    pub fn with_release_key(mut self, key: Option<&sign::VerifyingKey>) -> Self {
        self.release_public_key = key.map(|k| b64(k.as_bytes()));
        self
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
            used_by: Vec::new(),
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
        let public_key = b64(key.as_bytes());
        if let Some(again) = self.retried(&rec, name.as_str(), &public_key, now_unix) {
            drop(tokens);
            tracing::info!(node = %name, token = %rec.id, "enrollment retried by the device that made it; answered again, no use spent");
            return Ok(again);
        }
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
            public_key: public_key.clone(),
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
        used.used_by.push(TokenUse {
            node_name: name.as_str().to_owned(),
            public_key,
        });
        let forget = used.used_by.len().saturating_sub(MAX_REMEMBERED_USES);
        used.used_by.drain(..forget);
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

    /// The answer to a retried enrollment: `rec` was spent on `node` by `public_key`, that
    /// identity still stands (not revoked, its key not rotated since) and the token has not
    /// expired. The identity's certificate is sent again; nothing is written.
    fn retried(
        &self,
        rec: &JoinTokenRecord,
        node: &str,
        public_key: &str,
        now_unix: u64,
    ) -> Option<Enrolled> {
        if now_unix >= rec.expires
            || !rec
                .used_by
                .iter()
                .any(|u| u.node_name == node && u.public_key == public_key)
        {
            return None;
        }
        let id = self
            .security
            .identity(node)
            .filter(|id| id.public_key == public_key && !id.revoked)?;
        Some(Enrolled {
            response: self.response(node, id.certificate, id.labels, id.not_after),
            was_revoked: false,
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
            release_public_key: self.release_public_key.clone(),
            broker_front: self.broker_front,
        }
    }

    /// Authorizes a node-signed download of `path` (a release binary): the node is
    /// enrolled and not revoked, the time is within the window, and its current key (or
    /// the previous one during a rotation's overlap) signed
    /// [`download_signing_bytes`]. An unknown node gets the same answer as a bad
    /// signature, so the listener does not tell which names are enrolled.
    pub fn authorize_download(
        &self,
        node: &str,
        path: &str,
        timestamp_ms: u64,
        signature: &str,
        now_ms: u64,
    ) -> Result<(), EnrollError> {
        let rec = self
            .security
            .identity(node)
            .ok_or(EnrollError::BadSignature)?;
        if rec.revoked {
            return Err(EnrollError::Revoked(node.to_owned()));
        }
        let msg = download_signing_bytes(node, path, timestamp_ms);
        self.check_node_signature(&rec, &msg, timestamp_ms, signature, now_ms)
    }

    /// `signature` (base64) is the node's over `msg`, made within the window of `now_ms`.
    fn check_node_signature(
        &self,
        rec: &IdentityRecord,
        msg: &[u8],
        timestamp_ms: u64,
        signature: &str,
        now_ms: u64,
    ) -> Result<(), EnrollError> {
        let window = self.security.config().window.as_millis() as u64;
        if timestamp_ms.abs_diff(now_ms) > window {
            return Err(EnrollError::Stale);
        }
        let sig_bytes: [u8; 64] = unb64(signature)
            .and_then(|b| b.try_into().ok())
            .ok_or(EnrollError::BadSignature)?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig_bytes);
        // The current key, or the previous one during the overlap (a retried request).
        let mut keys = vec![rec.public_key.clone()];
        if now_ms <= rec.previous_valid_until_ms {
            keys.extend(rec.previous_key.clone());
        }
        let signed = keys
            .iter()
            .any(|k| decode_key(k).is_ok_and(|k| k.verify_strict(msg, &sig).is_ok()));
        if signed {
            Ok(())
        } else {
            Err(EnrollError::BadSignature)
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
        let msg = rotate_signing_bytes(node, &req.new_public_key, req.timestamp_ms);
        self.check_node_signature(&rec, &msg, req.timestamp_ms, &req.signature, now_ms)?;
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
mod tests;
