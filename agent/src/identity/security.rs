//! Signing, verification and replay state for the bus (see the module docs of [`super`]):
//! [`AgentSecurity`] seals the agent's messages with the device key and checks the
//! coordinator's, persisting the seq state in `seq.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use baton_proto::sign::{self, Freshness, SeqCounter, SigningKey, VerifyingKey};
use baton_proto::{Body, Envelope, NodeName, Sender};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    io, rotate, wall_ms, write_private, IdentityError, IdentityFile, CLOCK_FLOOR_MS, IDENTITY_FILE,
    SEQ_FILE,
};

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
    /// The last message accepted on each topic. One sequence spans all of the
    /// coordinator's topics, so a retained desired state redelivered on a reconnect is
    /// older than a control message (a Service table, a ConfigMap part) accepted after
    /// it. Being exactly what this topic last carried, it is a duplicate, not a replay.
    last_on_topic: std::collections::HashMap<String, u64>,
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
                    last_on_topic: Default::default(),
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

    /// The time as this node may trust it, Unix milliseconds: its own clock once it is
    /// past [`CLOCK_FLOOR_MS`] (an RTC, NTP), else the coordinator's, learned from a
    /// verified message; `None` before either (a board without an RTC, just booted
    /// offline), when nothing that depends on the date may run.
    pub fn trusted_now_ms(&self) -> Option<u64> {
        let st = self.state();
        let local = wall_ms();
        if local >= CLOCK_FLOOR_MS {
            return Some(local);
        }
        st.offset_ms
            .map(|o| (local as i64).saturating_add(o).max(0) as u64)
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
        let topic = baton_proto::topics::topic_for(&self.inner.node, &body);
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
        self.check_admitting(topic, env, || true)
    }

    /// [`AgentSecurity::check`], asking `admit` between the signature and the replay
    /// check (the leader's term, `crate::term`): `Ok(false)` if it says no, and then the
    /// message's seq is not recorded, so a refused message does not make the next ones
    /// of the coordinator that leads now look like replays.
    pub fn check_admitting(
        &self,
        topic: &str,
        env: &Envelope,
        admit: impl FnOnce() -> bool,
    ) -> Result<bool, Refusal> {
        let r = self.check_inner(topic, env, admit);
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

    fn check_inner(
        &self,
        topic: &str,
        env: &Envelope,
        admit: impl FnOnce() -> bool,
    ) -> Result<bool, Refusal> {
        sign::verify(env, topic, &self.inner.coordinator).map_err(|e| match e {
            sign::SignError::Unsigned => Refusal::Unsigned,
            _ => Refusal::BadSignature,
        })?;
        if !admit() {
            return Ok(false);
        }
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
                st.last_on_topic.insert(topic.to_owned(), env.seq);
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
            Freshness::Replayed { .. } if st.last_on_topic.get(topic) == Some(&env.seq) => {
                self.inner.duplicates.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%topic, seq = env.seq, "last accepted on this topic; ignored");
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
