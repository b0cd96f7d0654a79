//! The coordinator's half of `baton logs`: log sessions between an HTTP response and an
//! agent.
//!
//! A session is opened by an HTTP request ([`LogHub::open`]): the hub picks a session id,
//! sends the node a [`LogRequest`] and hands the HTTP layer a [`LogStream`]. The bus
//! hands every verified [`LogChunk`] to [`LogHub::deliver`], which passes it to its
//! session, never to the core: logs are not state. Chunks are not kept: the stream grants
//! the agent credit only for what the HTTP response has taken, so with a slow reader the
//! agent stops reading its file and the hub holds at most [`CREDIT`] chunks per session.
//! The stream's drop (the client went away) cancels the session at the agent.

use std::sync::Arc;
use std::time::Duration;

use baton_proto::{BString, Body, LogChunk, LogCredit, LogRequest, NodeName};
use tokio::sync::mpsc;

use super::sessions::Sessions;
use crate::core::Outbound;

/// Chunks granted to the agent ahead of what the reader has taken.
pub const CREDIT: u32 = 8;
/// Credit is renewed, also as a keep-alive, at least this often (the agent ends a
/// session it does not hear from for 30 s).
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// A session that gets no chunk for this long while not following has failed.
pub const FIRST_CHUNK_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogError {
    #[error("agent too old for logs: node {node} speaks protocol v{version}, logs need v5 (Baton 0.2); upgrade its agent")]
    AgentTooOld { node: String, version: u16 },
    #[error("invalid log request: {0}")]
    Invalid(String),
    #[error("the coordinator is shutting down")]
    Unavailable,
}

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogQuery {
    pub node: NodeName,
    /// The node's protocol version, as last heard.
    pub node_version: u16,
    pub pod_uid: String,
    pub container: String,
    pub previous: bool,
    pub follow: bool,
    pub tail_lines: Option<u32>,
    pub since: Option<baton_proto::LogSince>,
    pub timestamps: bool,
}

/// The open sessions of this coordinator.
pub struct LogHub {
    /// The exec sessions, which travel the same way (same outbound channel, the bus hands
    /// their messages here, the HTTP API reaches them through this hub).
    exec: Arc<super::exec::ExecHub>,
    sessions: Sessions<LogChunk>,
}

impl LogHub {
    pub fn new(outbound: mpsc::Sender<Outbound>) -> Arc<Self> {
        Arc::new(Self {
            exec: super::exec::ExecHub::new(outbound.clone()),
            sessions: Sessions::new(outbound, "log"),
        })
    }

    /// Opens a session: sends the node its request and returns the stream of its log.
    pub async fn open(self: &Arc<Self>, q: LogQuery) -> Result<LogStream, LogError> {
        if q.node_version < 5 {
            return Err(LogError::AgentTooOld {
                node: q.node.to_string(),
                version: q.node_version,
            });
        }
        let bad =
            |what: &str, e: baton_proto::ProtoError| LogError::Invalid(format!("{what}: {e}"));
        let mut req = LogRequest {
            session: 0,
            pod_uid: BString::new(&q.pod_uid).map_err(|e| bad("pod uid", e))?,
            container: BString::new(&q.container).map_err(|e| bad("container", e))?,
            previous: q.previous,
            follow: q.follow,
            tail_lines: q.tail_lines,
            credit: CREDIT,
            since: q.since,
            timestamps: q.timestamps,
        };
        // Room for every chunk the agent may send before the next credit, and its end.
        let (tx, rx) = mpsc::channel(CREDIT as usize + 2);
        let session = self.sessions.open(&q.node, tx);
        req.session = session;
        let stream = LogStream {
            hub: self.clone(),
            node: q.node.clone(),
            session,
            chunks: rx,
            next: 0,
            granted_at: 0,
            follow: q.follow,
            ended: false,
            broken: false,
        };
        self.send(&q.node, Body::LogRequest(req)).await?;
        tracing::info!(node = %q.node, session, pod_uid = %q.pod_uid, container = %q.container, follow = q.follow, "log session opened");
        Ok(stream)
    }

    async fn send(&self, node: &NodeName, body: Body) -> Result<(), LogError> {
        self.sessions
            .send(node, body)
            .await
            .map_err(|_| LogError::Unavailable)
    }

    /// A verified chunk from `node`: to its session, if that is open and `node`'s.
    pub fn deliver(&self, node: &NodeName, chunk: LogChunk) {
        self.sessions.deliver(node, chunk.session, chunk);
    }

    /// The exec sessions (`baton exec`).
    pub fn exec(&self) -> &Arc<super::exec::ExecHub> {
        &self.exec
    }

    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }
}

/// One session's log as it arrives, in order. Dropping it ends the session.
pub struct LogStream {
    hub: Arc<LogHub>,
    node: NodeName,
    session: u64,
    chunks: mpsc::Receiver<LogChunk>,
    /// The next seq expected.
    next: u64,
    /// `next` when credit was last granted.
    granted_at: u64,
    follow: bool,
    /// The agent sent its last chunk: its session is over.
    ended: bool,
    /// Chunks were lost: the stream gives up (and cancels the agent's session).
    broken: bool,
}

impl LogStream {
    /// The next piece of the log; `Ok(None)` at its end. Grants credit for what was taken
    /// and keeps the session alive while waiting.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            if self.ended || self.broken {
                return Ok(None);
            }
            if self.next - self.granted_at >= u64::from(CREDIT / 2) {
                self.grant().await;
            }
            let wait = if self.follow || self.next > 0 {
                KEEP_ALIVE
            } else {
                FIRST_CHUNK_TIMEOUT
            };
            let chunk = match tokio::time::timeout(wait, self.chunks.recv()).await {
                Ok(Some(c)) => c,
                Ok(None) => return Err("the log session was closed".into()),
                Err(_) if self.follow || self.next > 0 => {
                    // Idle: renew the session so the agent keeps it.
                    self.grant().await;
                    continue;
                }
                Err(_) => {
                    return Err(format!(
                        "no answer from node {} within {}s (is it connected?)",
                        self.node,
                        wait.as_secs()
                    ))
                }
            };
            if chunk.seq < self.next {
                continue; // a duplicate (QoS 1 redelivery)
            }
            if chunk.seq > self.next {
                // The agent's session goes on: the drop cancels it.
                self.broken = true;
                return Err(format!(
                    "log chunks {}..{} were lost on the way; try again",
                    self.next, chunk.seq
                ));
            }
            self.next += 1;
            match chunk.end {
                None => return Ok(Some(chunk.data.to_vec())),
                Some(why) => {
                    self.ended = true;
                    if let Some(why) = why {
                        return Err(why.to_string());
                    }
                    if !chunk.data.is_empty() {
                        return Ok(Some(chunk.data.to_vec()));
                    }
                    return Ok(None);
                }
            }
        }
    }

    async fn grant(&mut self) {
        self.granted_at = self.next;
        let _ = self
            .hub
            .send(
                &self.node,
                Body::LogCredit(LogCredit {
                    session: self.session,
                    acked: self.next,
                    credit: CREDIT,
                    cancel: false,
                }),
            )
            .await;
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        self.hub.sessions.close(self.session);
        if !self.ended {
            // Best effort: without it the agent ends the session after its idle timeout.
            self.hub.sessions.try_send(
                &self.node,
                Body::LogCredit(LogCredit {
                    session: self.session,
                    acked: self.next,
                    credit: 0,
                    cancel: true,
                }),
            );
        }
        tracing::info!(node = %self.node, session = self.session, "log session closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::BVec;

    fn query(version: u16, follow: bool) -> LogQuery {
        LogQuery {
            node: NodeName::new("pi-1").unwrap(),
            node_version: version,
            pod_uid: "u1".into(),
            container: "app".into(),
            previous: false,
            follow,
            tail_lines: None,
            since: None,
            timestamps: false,
        }
    }

    fn chunk(session: u64, seq: u64, data: &[u8], end: Option<Option<&str>>) -> LogChunk {
        LogChunk {
            session,
            seq,
            data: BVec::from_vec(data.to_vec()).unwrap(),
            end: end.map(|e| e.map(|w| BString::new(w).unwrap())),
        }
    }

    #[tokio::test]
    async fn a_v4_agent_is_too_old_and_nothing_is_sent_to_it() {
        let (tx, mut rx) = mpsc::channel(8);
        let hub = LogHub::new(tx);
        let e = hub.open(query(4, false)).await.err().unwrap();
        assert!(e.to_string().starts_with("agent too old for logs"), "{e}");
        assert!(rx.try_recv().is_err());
        assert_eq!(hub.open_sessions(), 0);
    }

    #[tokio::test]
    async fn chunks_arrive_in_order_with_credit_and_the_stream_cancels_when_dropped() {
        let (tx, mut rx) = mpsc::channel(64);
        let hub = LogHub::new(tx);
        let mut s = hub.open(query(5, false)).await.unwrap();
        let Some(Outbound {
            body: Body::LogRequest(req),
            ..
        }) = rx.recv().await
        else {
            panic!("no request")
        };
        assert_eq!(req.credit, CREDIT);
        let node = NodeName::new("pi-1").unwrap();
        // Another node cannot write into the session.
        hub.deliver(
            &NodeName::new("pi-2").unwrap(),
            chunk(req.session, 0, b"forged", None),
        );
        for seq in 0..CREDIT as u64 {
            hub.deliver(&node, chunk(req.session, seq, b"x", None));
        }
        // A redelivered chunk is skipped.
        hub.deliver(&node, chunk(req.session, 0, b"x", None));
        for _ in 0..CREDIT {
            assert_eq!(s.next().await.unwrap(), Some(b"x".to_vec()));
        }
        // Credit was granted as chunks were taken, acknowledging them.
        let mut acked = 0;
        while let Ok(o) = rx.try_recv() {
            if let Body::LogCredit(c) = o.body {
                assert!(!c.cancel);
                acked = c.acked;
            }
        }
        assert_eq!(acked, u64::from(CREDIT / 2));
        // A gap is an error, not silently missing text.
        hub.deliver(&node, chunk(req.session, u64::from(CREDIT) + 1, b"y", None));
        let e = s.next().await.unwrap_err();
        assert!(e.contains("lost"), "{e}");
        drop(s);
        assert_eq!(hub.open_sessions(), 0);
        // The agent's session still runs: the dropped stream cancels it.
        let cancels = std::iter::from_fn(|| rx.try_recv().ok())
            .filter(|o| matches!(&o.body, Body::LogCredit(c) if c.cancel))
            .count();
        assert_eq!(cancels, 1);
    }

    #[tokio::test]
    async fn a_dropped_stream_cancels_the_session_at_the_agent() {
        let (tx, mut rx) = mpsc::channel(64);
        let hub = LogHub::new(tx);
        let s = hub.open(query(5, true)).await.unwrap();
        let _request = rx.recv().await.unwrap();
        drop(s);
        match rx.recv().await.unwrap().body {
            Body::LogCredit(c) => assert!(c.cancel),
            other => panic!("{other:?}"),
        }
        assert_eq!(hub.open_sessions(), 0);
    }

    #[tokio::test]
    async fn the_agents_reason_ends_the_stream() {
        let (tx, mut rx) = mpsc::channel(64);
        let hub = LogHub::new(tx);
        let mut s = hub.open(query(5, false)).await.unwrap();
        let Body::LogRequest(req) = rx.recv().await.unwrap().body else {
            panic!("no request")
        };
        let node = NodeName::new("pi-1").unwrap();
        hub.deliver(
            &node,
            chunk(
                req.session,
                0,
                b"",
                Some(Some("container \"app\" has no log")),
            ),
        );
        assert_eq!(s.next().await.unwrap_err(), "container \"app\" has no log");
        assert_eq!(s.next().await.unwrap(), None);
        // The agent ended it: nothing to cancel.
        drop(s);
        assert!(rx.try_recv().is_err());
    }
}
