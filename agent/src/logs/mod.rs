//! Serving container logs to `baton logs`, on request only.
//!
//! Nothing flows while nobody asks. A [`LogRequest`] (on `down/control`, signed like every
//! coordinator message) opens a session; the agent answers on the session's own topic
//! (`up/logs/<session>`, under the node's own prefix, so a broker ACL that grants a node
//! `baton/v1/nodes/<node>/#` covers it and nothing else) with [`LogChunk`]s numbered from
//! 0, each at most [`MAX_LOG_CHUNK`] bytes, the last one marked `end`.
//!
//! Flow control is by credit, as in HTTP/2: the agent sends chunk `seq` only while
//! `seq < acked + credit` of the last [`LogCredit`] (or `seq < credit` of the request),
//! and reads the file only for a chunk it may send. So a slow reader makes the agent hold
//! nothing but an open file; what is in flight is at most [`MAX_LOG_CREDIT`] chunks. Credit
//! doubles as the requester's keep-alive: a session that hears nothing for [`IDLE`] ends,
//! so a vanished requester costs nothing after that.

mod follow;
#[cfg(test)]
mod tests;
pub mod times;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_proto::{
    BString, BVec, Body, LogChunk, LogCredit, LogRequest, LogSince, MAX_LOG_CHUNK, MAX_LOG_CREDIT,
};
use tokio::sync::mpsc;
use tracing::{debug, info};

pub use follow::{keep_previous, previous, rotated, Follower, Select};

/// A session that hears no credit for this long ends (the requester went away).
pub const IDLE: Duration = Duration::from_secs(30);
/// How often a following session looks for new lines.
pub const POLL: Duration = Duration::from_millis(200);
/// The most sessions open at once on one node.
pub const MAX_SESSIONS: usize = 8;

/// Where chunks go: the bus, or a test's recorder.
pub trait ChunkSink: Send + Sync + 'static {
    /// `Err(true)`: try again shortly (the client queue is full); `Err(false)`: give up.
    fn send(&self, body: Body) -> Result<(), bool>;
}

/// The open sessions of one agent.
pub struct LogServer {
    pods_dir: PathBuf,
    sessions: Mutex<HashMap<u64, mpsc::Sender<LogCredit>>>,
    /// Bytes sent and not yet acknowledged, over all sessions: what a slow reader can make
    /// the agent (or its MQTT client) hold.
    in_flight: Arc<AtomicU64>,
}

impl LogServer {
    pub fn new(pods_dir: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            pods_dir,
            sessions: Mutex::new(HashMap::new()),
            in_flight: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<LogCredit>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The log file of `container` in pod `uid`, if both are plain names.
    fn log_path(&self, uid: &str, container: &str) -> Option<PathBuf> {
        let plain = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains('/');
        (plain(uid) && plain(container)).then(|| {
            self.pods_dir
                .join(uid)
                .join("logs")
                .join(format!("{container}.log"))
        })
    }

    /// Opens a session for `req`, answering through `sink`.
    pub fn open(self: &Arc<Self>, req: LogRequest, sink: Arc<dyn ChunkSink>) {
        let session = req.session;
        let end = |why: String| {
            let _ = sink.send(Body::LogChunk(LogChunk {
                session,
                seq: 0,
                data: BVec::default(),
                end: Some(Some(BString::truncated(&why))),
            }));
        };
        let Some(path) = self.log_path(&req.pod_uid, &req.container) else {
            return end("invalid pod uid or container name".into());
        };
        let since = req.since.map(|s| match s {
            LogSince::Ago { millis } => times::now_nanos().saturating_sub(
                i64::try_from(millis.saturating_mul(1_000_000)).unwrap_or(i64::MAX),
            ),
            LogSince::At { unix_nanos } => unix_nanos,
        });
        let sel = Select {
            since,
            timestamps: req.timestamps,
        };
        let follower =
            match Follower::open_with(&path, req.previous, req.follow, req.tail_lines, sel) {
                Ok(Some(f)) => f,
                Ok(None) if req.previous => {
                    return end(format!(
                        "previous terminated container {:?} not found",
                        req.container.as_str()
                    ))
                }
                Ok(None) => {
                    return end(format!(
                        "container {:?} has no log on this node (not started yet?)",
                        req.container.as_str()
                    ))
                }
                Err(e) => return end(format!("cannot read the log: {e}")),
            };
        let (tx, rx) = mpsc::channel(8);
        {
            let mut s = self.lock();
            if s.len() >= MAX_SESSIONS && !s.contains_key(&session) {
                drop(s);
                return end(format!(
                    "too many log sessions open on this node (at most {MAX_SESSIONS})"
                ));
            }
            s.insert(session, tx);
        }
        info!(session, pod = %req.pod_uid, container = %req.container, follow = req.follow, "log session opened");
        let me = self.clone();
        let credit = req.credit.min(MAX_LOG_CREDIT);
        tokio::spawn(async move {
            let mut s = Session {
                id: session,
                follower,
                sink,
                credits: rx,
                seq: 0,
                window: u64::from(credit),
                in_flight: me.in_flight.clone(),
                sizes: std::collections::VecDeque::new(),
                last_heard: tokio::time::Instant::now(),
                sent: 0,
            };
            let why = s.run().await;
            s.release_all();
            me.lock().remove(&session);
            info!(
                session,
                reason = why,
                chunks = s.seq,
                bytes = s.sent,
                "log session ended"
            );
        });
    }

    /// Credit (or a cancel) for an open session; unknown sessions are ignored.
    pub fn credit(&self, c: LogCredit) {
        let tx = self.lock().get(&c.session).cloned();
        match tx {
            Some(tx) => {
                // A full queue means the session is busy with earlier credit: the newest
                // will be sent again with the next keep-alive.
                let _ = tx.try_send(c);
            }
            None => debug!(session = c.session, "credit for an unknown log session"),
        }
    }

    pub fn open_sessions(&self) -> usize {
        self.lock().len()
    }

    pub fn pods_dir(&self) -> &Path {
        &self.pods_dir
    }
}

struct Session {
    id: u64,
    follower: Follower,
    sink: Arc<dyn ChunkSink>,
    credits: mpsc::Receiver<LogCredit>,
    /// The next chunk's seq.
    seq: u64,
    /// Chunks with a seq below this may be sent.
    window: u64,
    in_flight: Arc<AtomicU64>,
    /// Sizes of the chunks sent and not acknowledged, oldest first.
    sizes: std::collections::VecDeque<(u64, u64)>,
    /// When the requester was last heard from (the request, then each credit).
    last_heard: tokio::time::Instant,
    /// Log bytes sent in all.
    sent: u64,
}

impl Session {
    /// Runs until the log ends, the requester cancels or goes away; says why.
    async fn run(&mut self) -> &'static str {
        loop {
            if self.seq >= self.window {
                // Out of credit: wait for more, but not for ever.
                let left = IDLE.saturating_sub(self.last_heard.elapsed());
                match tokio::time::timeout(left, self.credits.recv()).await {
                    Ok(Some(c)) if self.take(&c) => return "cancelled",
                    Ok(Some(_)) => {}
                    Ok(None) => return "agent stopping",
                    Err(_) => return "requester gone (no credit)",
                }
                continue;
            }
            let data = match self.follower.next_chunk(MAX_LOG_CHUNK) {
                Ok(d) => d,
                Err(e) => {
                    let why = format!("cannot read the log: {e}");
                    self.send(Vec::new(), Some(Some(why))).await;
                    return "read error";
                }
            };
            if data.is_empty() {
                if !self.follower.follows() {
                    self.send(Vec::new(), Some(None)).await;
                    return "end of log";
                }
                // Following: wait for new lines, taking credit (and cancels) meanwhile.
                match tokio::time::timeout(POLL, self.credits.recv()).await {
                    Ok(Some(c)) if self.take(&c) => return "cancelled",
                    Ok(None) => return "agent stopping",
                    _ => {}
                }
                if self.last_heard.elapsed() > IDLE {
                    return "requester gone (no keep-alive)";
                }
                continue;
            }
            if !self.send(data, None).await {
                return "cannot publish";
            }
        }
    }

    /// Applies credit; true when it cancels the session.
    fn take(&mut self, c: &LogCredit) -> bool {
        self.last_heard = tokio::time::Instant::now();
        if c.cancel {
            return true;
        }
        self.window = self.window.max(
            c.acked
                .saturating_add(u64::from(c.credit.min(MAX_LOG_CREDIT))),
        );
        while let Some(&(seq, len)) = self.sizes.front() {
            if seq >= c.acked {
                break;
            }
            self.in_flight.fetch_sub(len, Ordering::Relaxed);
            self.sizes.pop_front();
        }
        false
    }

    fn release_all(&mut self) {
        for (_, len) in self.sizes.drain(..) {
            self.in_flight.fetch_sub(len, Ordering::Relaxed);
        }
    }

    /// Publishes one chunk, retrying while the client queue is full.
    async fn send(&mut self, data: Vec<u8>, end: Option<Option<String>>) -> bool {
        let len = data.len() as u64;
        let Ok(data) = BVec::from_vec(data) else {
            return false;
        };
        let body = Body::LogChunk(LogChunk {
            session: self.id,
            seq: self.seq,
            data,
            end: end.map(|e| e.map(|w| BString::truncated(&w))),
        });
        loop {
            match self.sink.send(body.clone()) {
                Ok(()) => break,
                Err(true) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(false) => return false,
            }
        }
        self.sizes.push_back((self.seq, len));
        self.in_flight.fetch_add(len, Ordering::Relaxed);
        self.sent += len;
        self.seq += 1;
        true
    }
}
