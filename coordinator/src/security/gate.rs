//! Message authentication on the coordinator: the broker is not trusted.
//!
//! Every inbound MQTT message passes this one gate, [`Security::admit`], before the core
//! sees it, whatever the mode: the layout checks of
//! [`crate::security::envelope::check_envelope`] (topic, kind, sender), then, for a
//! node with an enrolled identity, its Ed25519 signature over `signing_bytes(topic)`
//! against the node's key (or, during a rotation, its previous key), then the replay
//! rule (`seq` above the last accepted one, `sent_at_ms` within the window). A revoked
//! node's messages are refused outright. Rejections are counted per reason and per node,
//! logged with the reason, and dropped: they never reach the core.
//!
//! **Modes.** Nodes without an enrolled identity are refused (reason `unknown-node`), so
//! every node must enroll; only development mode (`baton server --insecure-mqtt`, logged
//! as a warning at start) accepts them unsigned, and `--require-signatures` refuses them
//! even then. An enrolled node is always verified, so its unsigned message is always
//! refused.
//!
//! **The last will.** `Offline` is published by the broker when the agent vanishes, so
//! the agent signs it when it connects, with the seq and time of that moment. It is
//! therefore exempt from the time window and from the per-node seq (later messages have
//! higher ones), and checked only against the seq of the last will accepted before. A
//! replayed will is still signed by the node; the worst it can do is mark the node
//! NotReady until its next heartbeat.
//!
//! **Persistence.** The last accepted seq per node lives in memory and is written to the
//! store lazily ([`Security::flush`], every few seconds and at shutdown), not once per
//! heartbeat, to spare SD cards. After a crash the coordinator may have lost the last
//! few seconds of updates; a message from those seconds could then be replayed once, in
//! order, and only within the time window: a genuine, recent report from the node itself,
//! which the level-triggered protocol treats as idempotent.
//!
//! Outbound messages are sealed here too ([`Security::seal`]): a persisted,
//! clock-following sequence number, the send time, the coordinator's signature, and on
//! the messages that change what a node keeps ([`Body::term`]) the leader's term.
//!
//! **The leader's term** grows with every new leadership, so that agents refuse a deposed
//! leader's late messages (docs/protocol.md, "The leader's term"). It lives in the store
//! ([`Table::Meta`], `leader_term`), so it moves with the state: a coordinator on etcd takes
//! the create revision of its election key, or the stored term plus one if that is higher
//! (a store brought over from elsewhere), and stores it before anything is sent
//! ([`Security::lead`]); a single coordinator (redb) keeps the stored term (0 if none), so
//! it costs no write per start and never goes below what an etcd leader of the same state
//! used.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use baton_proto::sign::{self, Freshness, SeqCounter, SignError, VerifyingKey};
use baton_proto::{Body, Envelope, NodeName, ProtoError, Sender};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::contract::nodes::{IdentitySummary, RejectionReport};
use crate::core::Outbound;
use crate::security::encoding::{now_ms, unb64};
use crate::security::envelope::{check_envelope, Rejected};
use crate::security::pki::{self, Pki};
use crate::store::{self, Op, Store, StoreError, Table};

/// The default bound on how far `sent_at_ms` may be from the coordinator's clock.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(600);
/// The default time both keys are accepted after a rotation.
pub const DEFAULT_ROTATION_OVERLAP: Duration = Duration::from_secs(300);
/// The store key (in [`Table::Meta`]) of the coordinator's seq reservation.
const SEQ_RESERVATION_KEY: &str = "coordinator_seq_reserved";
/// The store key (in [`Table::Meta`]) of the last leader's term.
const TERM_KEY: &str = "leader_term";
/// A node with a wrong clock is sent a signed `StatusRequest` at most this often, so it
/// can learn the time from it (see docs/security.md, "devices without a clock").
const CLOCK_NUDGE_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no enrolled identity for node {0:?}")]
    NotEnrolled(String),
    #[error("cannot encode an outbound message: {0}")]
    Encode(#[from] ProtoError),
    #[error("cannot sign an outbound message: {0}")]
    Sign(#[from] SignError),
    #[error("node {0:?} is revoked")]
    Revoked(String),
    #[error("cannot queue the key rotation request for node {0:?}: the MQTT bridge is not running or is full")]
    NotQueued(String),
}

/// The wire form of an identity, for `baton node identity` (no certificate, nothing
/// secret), with the certificate's fingerprint and serial read from it.
impl From<&IdentityRecord> for IdentitySummary {
    fn from(r: &IdentityRecord) -> Self {
        use sha2::Digest as _;
        let der = pki::pem_to_der(&r.certificate).unwrap_or_default();
        let serial = x509_parser::parse_x509_certificate(&der)
            .map(|(_, c)| c.raw_serial_as_string())
            .unwrap_or_default();
        Self {
            fingerprint: if der.is_empty() {
                String::new()
            } else {
                format!("SHA256:{}", hex::encode(sha2::Sha256::digest(&der)))
            },
            serial,
            node: r.node.clone(),
            public_key: r.public_key.clone(),
            previous_key: r.previous_key.clone(),
            previous_valid_until_ms: r.previous_valid_until_ms,
            not_after: r.not_after,
            enrolled_at: r.enrolled_at.clone(),
            revoked: r.revoked,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// Refuse messages from nodes without an enrolled identity.
    pub require_signatures: bool,
    /// Bound on `|sent_at_ms - now|`.
    pub window: Duration,
    /// How long the previous key stays valid after a rotation.
    pub rotation_overlap: Duration,
}

impl Default for SecurityConfig {
    /// Signatures required: only `--insecure-mqtt` (development) accepts unenrolled nodes.
    fn default() -> Self {
        Self {
            require_signatures: true,
            window: DEFAULT_WINDOW,
            rotation_overlap: DEFAULT_ROTATION_OVERLAP,
        }
    }
}

/// An enrolled node, as stored in [`Table::Identities`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityRecord {
    pub node: String,
    /// Base64 of the 32-byte Ed25519 public key.
    pub public_key: String,
    /// The key before the last rotation, valid until `previous_valid_until_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key: Option<String>,
    #[serde(default)]
    pub previous_valid_until_ms: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub arch: String,
    /// The certificate's notAfter, Unix seconds.
    pub not_after: u64,
    /// The node certificate, PEM.
    pub certificate: String,
    pub enrolled_at: String,
    #[serde(default)]
    pub revoked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

impl IdentityRecord {
    /// The keys valid at `now_ms`: the current one, and the previous one during the
    /// rotation overlap.
    fn keys(&self, now_ms: u64) -> Vec<VerifyingKey> {
        let mut out = Vec::with_capacity(2);
        let decode = |s: &str| unb64(s).and_then(|b| sign::verifying_key(&b).ok());
        if let Some(k) = decode(&self.public_key) {
            out.push(k);
        }
        if now_ms <= self.previous_valid_until_ms {
            if let Some(k) = self.previous_key.as_deref().and_then(decode) {
                out.push(k);
            }
        }
        out
    }
}

/// Why a message was refused; named on the wire by [`Reason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Undecodable, oversized, unknown version, or not a node topic at all.
    Malformed,
    /// The body or sender does not belong on the topic (incl. a node writing as another).
    TopicMismatch,
    /// No signature, from an enrolled node or while signatures are required.
    Unsigned,
    BadSignature,
    /// Signed, or signatures required, but the node never enrolled.
    UnknownNode,
    Revoked,
    /// A sequence number at or below the last accepted one.
    Replay,
    /// `sent_at_ms` outside the window.
    Stale,
    /// The node's certificate is past its notAfter (rotate before it).
    Expired,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::TopicMismatch => "topic-mismatch",
            Reason::Unsigned => "unsigned",
            Reason::BadSignature => "bad-signature",
            Reason::UnknownNode => "unknown-node",
            Reason::Revoked => "revoked",
            Reason::Replay => "replay",
            Reason::Stale => "stale",
            Reason::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

fn reject(reason: Reason, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
    }
}

#[derive(Default)]
struct Inner {
    identities: HashMap<String, IdentityRecord>,
    last_seq: HashMap<String, u64>,
    /// Seq of the last accepted last will, per node (in memory only).
    last_will: HashMap<String, u64>,
    dirty: BTreeSet<String>,
    total: BTreeMap<Reason, u64>,
    per_node: BTreeMap<String, BTreeMap<Reason, u64>>,
    duplicates: u64,
    nudged: HashMap<String, Instant>,
    /// The protocol version of each node's last accepted message: what it can read.
    peer_version: HashMap<String, u16>,
}

/// Identities, replay state and rejection counters; shared by the bus and the API.
///
/// A std mutex: it is never held across an await, and the work under it is a hash lookup
/// and one signature check.
pub struct Security {
    store: Arc<dyn Store>,
    pki: Arc<Pki>,
    cfg: SecurityConfig,
    inner: Mutex<Inner>,
    seq: Mutex<SeqCounter>,
    nudge: Mutex<Option<mpsc::Sender<Outbound>>>,
    /// The term stamped on outbound messages (see the module docs).
    term: std::sync::atomic::AtomicU64,
}

impl Security {
    /// Loads identities, per-node seqs and the coordinator's seq reservation.
    pub fn load(
        store: Arc<dyn Store>,
        pki: Arc<Pki>,
        cfg: SecurityConfig,
    ) -> Result<Self, SecurityError> {
        let mut inner = Inner::default();
        for rec in store::list_json::<IdentityRecord>(store.as_ref(), Table::Identities)? {
            inner.identities.insert(rec.node.clone(), rec);
        }
        for (node, v) in store.list(Table::Seqs)? {
            if let Some(seq) = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()) {
                inner.last_seq.insert(node, seq);
            }
        }
        let meta = |key: &str| -> Result<u64, StoreError> {
            Ok(store
                .get(Table::Meta, key)?
                .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(0))
        };
        let reserved = meta(SEQ_RESERVATION_KEY)?;
        let term = meta(TERM_KEY)?;
        Ok(Self {
            store,
            pki,
            cfg,
            inner: Mutex::new(inner),
            seq: Mutex::new(SeqCounter::resume(reserved)),
            nudge: Mutex::new(None),
            term: term.into(),
        })
    }

    /// The leader's term this coordinator stamps on what it sends.
    pub fn term(&self) -> u64 {
        self.term.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes the term of a new leadership whose election key was created at `revision`:
    /// that revision, or the stored term plus one if it is higher, stored (through the
    /// leader's fenced store) before anything is sent with it.
    pub fn lead(&self, revision: u64) -> Result<u64, SecurityError> {
        let term = revision.max(self.term().saturating_add(1));
        self.store.commit(vec![Op::Put(
            Table::Meta,
            TERM_KEY.into(),
            term.to_string().into_bytes(),
        )])?;
        self.term.store(term, std::sync::atomic::Ordering::Relaxed);
        Ok(term)
    }

    /// What the store says each node speaks, for the nodes not heard since this process
    /// started: a new leader writes to them in their version, not in the oldest one that
    /// has the message, which would lack what came later (the term among it).
    pub fn know_versions(&self, versions: impl IntoIterator<Item = (String, u16)>) {
        let mut inner = self.inner();
        for (node, v) in versions {
            if v >= baton_proto::MIN_PROTO_VERSION {
                inner.peer_version.entry(node).or_insert(v);
            }
        }
    }

    /// Where to send a signed `StatusRequest` to a node whose clock is off.
    pub fn set_nudge(&self, outbound: mpsc::Sender<Outbound>) {
        *self.nudge.lock().unwrap_or_else(PoisonError::into_inner) = Some(outbound);
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn config(&self) -> &SecurityConfig {
        &self.cfg
    }

    pub fn pki(&self) -> &Arc<Pki> {
        &self.pki
    }

    /// The inbound gate: checks one MQTT message (see the module docs), counts and logs a
    /// rejection. `None` is a message to drop: refused, or an exact duplicate.
    pub fn admit(&self, topic: &str, payload: &[u8]) -> Option<(NodeName, Body)> {
        let node_hint = baton_proto::topics::parse(topic).map(|(n, _)| n.as_str().to_owned());
        match self.verify(topic, payload, now_ms()) {
            Ok(Some(accepted)) => {
                if let Some(v) = Envelope::peek_version(payload) {
                    self.inner()
                        .peer_version
                        .insert(accepted.0.as_str().to_owned(), v);
                }
                Some(accepted)
            }
            Ok(None) => None, // a duplicate
            Err(r) => {
                self.count(node_hint.as_deref(), &r);
                None
            }
        }
    }

    fn count(&self, node: Option<&str>, r: &Rejection) {
        tracing::warn!(node = node.unwrap_or("-"), reason = r.reason.as_str(), detail = %r.detail, "rejected an inbound message");
        let mut inner = self.inner();
        *inner.total.entry(r.reason).or_default() += 1;
        if let Some(n) = node {
            *inner
                .per_node
                .entry(n.to_owned())
                .or_default()
                .entry(r.reason)
                .or_default() += 1;
        }
        if r.reason == Reason::Stale {
            if let Some(n) = node {
                self.nudge_clock(&mut inner, n);
            }
        }
    }

    /// A node whose clock is off gets a signed StatusRequest now and then: it learns the
    /// time from the coordinator's `sent_at_ms` and answers with Hello and Status.
    fn nudge_clock(&self, inner: &mut Inner, node: &str) {
        if !inner.identities.contains_key(node) {
            return;
        }
        let now = Instant::now();
        if inner
            .nudged
            .get(node)
            .is_some_and(|t| now.duration_since(*t) < CLOCK_NUDGE_EVERY)
        {
            return;
        }
        inner.nudged.insert(node.to_owned(), now);
        let Ok(name) = NodeName::new(node) else {
            return;
        };
        if let Some(tx) = self
            .nudge
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = tx.try_send(Outbound {
                node: name,
                body: Body::StatusRequest,
                retain: false,
            });
        }
    }

    /// The checks, with the clock as a parameter. `Ok(None)` is an exact duplicate.
    pub fn verify(
        &self,
        topic: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Option<(NodeName, Body)>, Rejection> {
        let (node, env) = check_envelope(topic, payload).map_err(|e| match e {
            Rejected::KindMismatch | Rejected::SenderMismatch { .. } => {
                reject(Reason::TopicMismatch, e.to_string())
            }
            _ => reject(Reason::Malformed, e.to_string()),
        })?;
        let mut inner = self.inner();
        let Some(id) = inner.identities.get(node.as_str()) else {
            if self.cfg.require_signatures {
                return Err(reject(
                    Reason::UnknownNode,
                    "node is not enrolled and --require-signatures is on",
                ));
            }
            return Ok(Some((node, env.body)));
        };
        if id.revoked {
            return Err(reject(Reason::Revoked, "node's identity was revoked"));
        }
        // 0: a record without an expiry (none is issued so).
        if id.not_after != 0 && now_ms / 1000 >= id.not_after {
            return Err(reject(
                Reason::Expired,
                format!("node certificate expired at {} (Unix s)", id.not_after),
            ));
        }
        let keys = id.keys(now_ms);
        sign::verify_any(&env, topic, &keys).map_err(|e| match e {
            SignError::Unsigned => reject(Reason::Unsigned, "enrolled nodes must sign"),
            other => reject(Reason::BadSignature, other.to_string()),
        })?;
        let name = node.as_str().to_owned();
        if matches!(env.body, Body::Offline) {
            // Signed at connect time; see the module docs.
            let last = inner.last_will.get(&name).copied();
            return match sign::check_fresh(last, env.seq, env.sent_at_ms, None, 0) {
                Freshness::Fresh => {
                    inner.last_will.insert(name, env.seq);
                    Ok(Some((node, env.body)))
                }
                Freshness::Duplicate => {
                    inner.duplicates += 1;
                    Ok(None)
                }
                _ => Err(reject(Reason::Replay, "an old last will")),
            };
        }
        let window = self.cfg.window.as_millis() as u64;
        match sign::check_fresh(
            inner.last_seq.get(&name).copied(),
            env.seq,
            env.sent_at_ms,
            Some(now_ms),
            window,
        ) {
            Freshness::Fresh => {
                inner.last_seq.insert(name.clone(), env.seq);
                inner.dirty.insert(name);
                Ok(Some((node, env.body)))
            }
            Freshness::Duplicate => {
                inner.duplicates += 1;
                tracing::debug!(node = %node, seq = env.seq, "duplicate message dropped");
                Ok(None)
            }
            Freshness::Replayed { last } => Err(reject(
                Reason::Replay,
                format!("seq {} is not above {last}", env.seq),
            )),
            Freshness::Stale { skew_ms } => Err(reject(
                Reason::Stale,
                format!("sent_at is {skew_ms} ms off this clock (window {window} ms)"),
            )),
        }
    }

    /// The protocol version `node` last spoke, if it spoke since this process started.
    pub fn peer_version(&self, node: &NodeName) -> Option<u16> {
        self.inner().peer_version.get(node.as_str()).copied()
    }

    /// Encodes and signs one outbound message: returns the topic and the payload.
    ///
    /// Written in the version the node speaks (skew: an older agent reads only its own), or,
    /// before it spoke, in the oldest version that has the message, which every agent that
    /// can receive it reads. A message the node's version lacks is refused. One that
    /// carries a term ([`Body::term`]) gets this leader's.
    pub fn seal(
        &self,
        node: &NodeName,
        mut body: Body,
    ) -> Result<(String, Vec<u8>), SecurityError> {
        body.set_term(self.term());
        let topic = baton_proto::topics::topic_for(node, &body);
        let version = match self.peer_version(node) {
            Some(v) => v.min(baton_proto::PROTO_VERSION),
            None => body.min_version(),
        };
        let now = now_ms();
        let seq = {
            let mut c = self.seq.lock().unwrap_or_else(PoisonError::into_inner);
            let (seq, reserve) = c.next(now.saturating_mul(1000));
            if let Some(r) = reserve {
                // Rare (once per reservation): durable before the number is used.
                self.store.commit(vec![Op::Put(
                    Table::Meta,
                    SEQ_RESERVATION_KEY.into(),
                    r.to_string().into_bytes(),
                )])?;
            }
            seq
        };
        let mut env = Envelope::new(Sender::Coordinator, seq, body).at_version(version)?;
        env.sent_at_ms = now;
        sign::sign(&mut env, &topic, self.pki.signing_key())?;
        Ok((topic, env.encode()?))
    }

    /// Writes the per-node seqs that changed since the last flush, in one commit.
    pub fn flush(&self) -> Result<(), SecurityError> {
        let ops: Vec<Op> = {
            let mut inner = self.inner();
            let dirty = std::mem::take(&mut inner.dirty);
            dirty
                .into_iter()
                .filter_map(|n| {
                    let seq = inner.last_seq.get(&n)?;
                    Some(Op::Put(Table::Seqs, n, seq.to_string().into_bytes()))
                })
                .collect()
        };
        if !ops.is_empty() {
            self.store.commit(ops)?;
        }
        Ok(())
    }

    pub fn identity(&self, node: &str) -> Option<IdentityRecord> {
        self.inner().identities.get(node).cloned()
    }

    /// Commits `rec` (and `extra` ops, e.g. a join token's use) in one transaction, then
    /// makes it effective. A new key starts a new seq history.
    pub fn install(&self, rec: IdentityRecord, extra: Vec<Op>) -> Result<(), SecurityError> {
        let same_key = self
            .identity(&rec.node)
            .is_some_and(|old| old.public_key == rec.public_key || rec.previous_key.is_some());
        let mut ops = extra;
        ops.push(store::put_json(Table::Identities, &rec.node, &rec)?);
        if !same_key {
            ops.push(Op::Delete(Table::Seqs, rec.node.clone()));
        }
        self.store.commit(ops)?;
        let mut inner = self.inner();
        if !same_key {
            inner.last_seq.remove(&rec.node);
            inner.last_will.remove(&rec.node);
            inner.dirty.remove(&rec.node);
        }
        inner.identities.insert(rec.node.clone(), rec);
        Ok(())
    }

    /// Marks `node`'s identity revoked: from now on its messages are refused.
    pub fn revoke(&self, node: &str) -> Result<IdentityRecord, SecurityError> {
        let mut rec = self
            .identity(node)
            .ok_or_else(|| SecurityError::NotEnrolled(node.to_owned()))?;
        if !rec.revoked {
            rec.revoked = true;
            rec.revoked_at = Some(crate::model::api::now_rfc3339());
            self.store
                .commit(vec![store::put_json(Table::Identities, node, &rec)?])?;
            self.inner().identities.insert(node.to_owned(), rec.clone());
            tracing::warn!(node, "node identity revoked");
        }
        Ok(rec)
    }

    /// `baton node rotate`: queues a signed `RotateKey` on the node's control topic. The
    /// agent then rotates as `baton-agent rotate` does (a new key, a request signed by
    /// the current one to the rotate route), so the new key arrives through
    /// [`crate::security::enroll`] and both keys are accepted for the overlap. Not retained: a node
    /// that is offline now is not rotated later by surprise; ask again.
    pub fn request_rotation(&self, node: &str) -> Result<IdentitySummary, SecurityError> {
        let rec = self
            .identity(node)
            .ok_or_else(|| SecurityError::NotEnrolled(node.to_owned()))?;
        if rec.revoked {
            return Err(SecurityError::Revoked(node.to_owned()));
        }
        let name = NodeName::new(node).map_err(|_| SecurityError::NotEnrolled(node.to_owned()))?;
        let queued = self
            .nudge
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|tx| {
                tx.try_send(Outbound {
                    node: name,
                    body: Body::RotateKey,
                    retain: false,
                })
                .is_ok()
            });
        if !queued {
            return Err(SecurityError::NotQueued(node.to_owned()));
        }
        tracing::info!(node, "key rotation requested");
        Ok(IdentitySummary::from(&rec))
    }

    /// Names of revoked nodes (the core keeps them out of scheduling).
    pub fn revoked(&self) -> BTreeSet<String> {
        self.inner()
            .identities
            .values()
            .filter(|r| r.revoked)
            .map(|r| r.node.clone())
            .collect()
    }

    /// What `GET /api/v1/security/rejections` answers: reasons by their names.
    pub fn report(&self) -> RejectionReport {
        let inner = self.inner();
        let by_name = |counts: &BTreeMap<Reason, u64>| {
            counts
                .iter()
                .map(|(reason, n)| (reason.as_str().to_owned(), *n))
                .collect()
        };
        RejectionReport {
            require_signatures: self.cfg.require_signatures,
            window_seconds: self.cfg.window.as_secs(),
            total: by_name(&inner.total),
            nodes: inner
                .per_node
                .iter()
                .map(|(node, counts)| (node.clone(), by_name(counts)))
                .collect(),
            duplicates: inner.duplicates,
            enrolled: inner
                .identities
                .values()
                .map(|r| (r.node.clone(), r.revoked))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
