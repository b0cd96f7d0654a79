//! The coordinator's half of `baton exec`: exec sessions between an upgraded HTTP
//! connection and an agent, as [`super::logs`] does for logs.
//!
//! [`ExecHub::open`] picks a session id, sends the node an [`ExecRequest`] and gives the
//! HTTP layer the two halves of the session: [`ExecRx`] yields the agent's output and
//! exit in seq order; [`ExecTx`] sends stdin, resizes and credit. The bus hands every
//! verified [`ExecOutput`]/[`ExecExit`] to [`ExecHub::deliver`], never to the core.
//!
//! Flow control: the agent may send [`CREDIT`] outputs beyond what this side has taken
//! (credit is granted as they are taken, so a slow client stops the command's output at
//! the agent), and this side sends at most [`MAX_EXEC_CREDIT`] stdin inputs beyond what the
//! agent has written (`stdin_acked`). Dropping [`ExecTx`] cancels the session at the
//! agent, which kills the command.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_proto::{
    BString, BVec, Body, ExecAction, ExecInput, ExecRequest, ExecStream, NodeName, MAX_EXEC_CREDIT,
};
use tokio::sync::mpsc;

use super::sessions::Sessions;
use crate::core::Outbound;

/// Outputs granted to the agent ahead of what the client has taken.
pub const CREDIT: u32 = 8;
/// Credit is renewed, also as a keep-alive, at least this often (the agent ends a
/// session it does not hear from for 30 s).
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// The agent answers a started command with an empty output at once; no answer in this
/// long means the node did not get the request or could not answer.
pub const FIRST_ANSWER: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExecError {
    #[error("invalid exec request: {0}")]
    Invalid(String),
    #[error("the coordinator is shutting down")]
    Unavailable,
}

/// What to run, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecQuery {
    pub node: NodeName,
    pub pod_uid: String,
    pub container: String,
    pub command: Vec<String>,
    pub stdin: bool,
    pub tty: bool,
    pub rows: u16,
    pub cols: u16,
}

/// The open exec sessions of this coordinator.
pub struct ExecHub {
    sessions: Sessions<Body>,
}

/// What the agent said, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Output(ExecStream, Vec<u8>),
    /// An output with no bytes (the start, or a stdin acknowledgement): taken, so credit
    /// may be due, and stdin may have room again.
    Progress,
    Exit(i32),
    /// The command could not run, or the session broke.
    Failed(String),
}

impl ExecHub {
    pub fn new(outbound: mpsc::Sender<Outbound>) -> Arc<Self> {
        Arc::new(Self {
            sessions: Sessions::new(outbound, "exec"),
        })
    }

    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Opens a session: sends the node its request.
    pub async fn open(self: &Arc<Self>, q: ExecQuery) -> Result<(ExecTx, ExecRx), ExecError> {
        let bad =
            |what: &str, e: baton_proto::ProtoError| ExecError::Invalid(format!("{what}: {e}"));
        let command = q
            .command
            .iter()
            .map(|a| BString::new(a.as_str()).map_err(|e| bad("command argument", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut req = ExecRequest {
            session: 0,
            pod_uid: BString::new(&q.pod_uid).map_err(|e| bad("pod uid", e))?,
            container: BString::new(&q.container).map_err(|e| bad("container", e))?,
            command: BVec::from_vec(command).map_err(|e| bad("command", e))?,
            tty: q.tty,
            stdin: q.stdin,
            rows: q.rows,
            cols: q.cols,
            credit: CREDIT,
        };
        // Room for every output the agent may send before the next credit, and its exit.
        let (tx, rx) = mpsc::channel(CREDIT as usize + 2);
        let session = self.sessions.open(&q.node, tx);
        req.session = session;
        let shared = Arc::new(Shared::default());
        let sender = ExecTx {
            hub: self.clone(),
            node: q.node.clone(),
            session,
            next_input: 0,
            stdin_sent: 0,
            granted_at: 0,
            shared: shared.clone(),
            ended: false,
        };
        self.send(&q.node, Body::ExecRequest(req)).await?;
        tracing::info!(node = %q.node, session, pod_uid = %q.pod_uid, container = %q.container, "exec session opened");
        Ok((
            sender,
            ExecRx {
                bodies: rx,
                shared,
                node: q.node,
                started: false,
                done: false,
            },
        ))
    }

    async fn send(&self, node: &NodeName, body: Body) -> Result<(), ExecError> {
        self.sessions
            .send(node, body)
            .await
            .map_err(|_| ExecError::Unavailable)
    }

    /// A verified output or exit from `node`: to its session, if open and `node`'s.
    pub fn deliver(&self, node: &NodeName, body: Body) {
        let session = match &body {
            Body::ExecOutput(o) => o.session,
            Body::ExecExit(e) => e.session,
            _ => return,
        };
        self.sessions.deliver(node, session, body);
    }
}

/// What both halves of a session share.
#[derive(Default)]
struct Shared {
    /// Outputs taken by the client (the next seq expected).
    taken: AtomicU64,
    /// Stdin inputs the agent has written.
    stdin_acked: AtomicU64,
}

/// The sending half. Dropping it ends the session (a cancel unless it ended).
pub struct ExecTx {
    hub: Arc<ExecHub>,
    node: NodeName,
    session: u64,
    next_input: u64,
    /// Stdin and Eof inputs sent.
    stdin_sent: u64,
    /// `taken` when credit was last granted.
    granted_at: u64,
    shared: Arc<Shared>,
    /// The agent's exit arrived: no cancel needed.
    ended: bool,
}

impl ExecTx {
    /// Whether stdin may be sent now: the agent has written all but a window of it.
    pub fn stdin_room(&self) -> bool {
        self.stdin_sent
            < self.shared.stdin_acked.load(Ordering::Relaxed) + u64::from(MAX_EXEC_CREDIT)
    }

    /// Whether enough output was taken that the agent should get more credit.
    pub fn credit_due(&self) -> bool {
        self.shared.taken.load(Ordering::Relaxed) - self.granted_at >= u64::from(CREDIT / 2)
    }

    /// Sends `action` with fresh credit. Stdin and Eof only while [`Self::stdin_room`].
    pub async fn send(&mut self, action: ExecAction) -> Result<(), ExecError> {
        if matches!(action, ExecAction::Stdin(_) | ExecAction::Eof) {
            self.stdin_sent += 1;
        }
        let acked = self.shared.taken.load(Ordering::Relaxed);
        self.granted_at = acked;
        let input = ExecInput {
            session: self.session,
            seq: self.next_input,
            acked,
            credit: CREDIT,
            action,
        };
        self.next_input += 1;
        self.hub.send(&self.node, Body::ExecInput(input)).await
    }

    /// The session is over at the agent (its exit arrived).
    pub fn ended(&mut self) {
        self.ended = true;
    }
}

impl Drop for ExecTx {
    fn drop(&mut self) {
        self.hub.sessions.close(self.session);
        if !self.ended {
            // Best effort: without it the agent ends the session after its idle timeout.
            self.hub.sessions.try_send(
                &self.node,
                Body::ExecInput(ExecInput {
                    session: self.session,
                    seq: self.next_input,
                    acked: self.shared.taken.load(Ordering::Relaxed),
                    credit: 0,
                    action: ExecAction::Cancel,
                }),
            );
        }
        tracing::info!(node = %self.node, session = self.session, "exec session closed");
    }
}

/// The receiving half.
pub struct ExecRx {
    bodies: mpsc::Receiver<Body>,
    shared: Arc<Shared>,
    node: NodeName,
    /// The agent's first answer arrived.
    started: bool,
    done: bool,
}

impl ExecRx {
    /// The next thing the agent said; after `Exit` or `Failed`, `None`.
    pub async fn next(&mut self) -> Option<ExecEvent> {
        loop {
            if self.done {
                return None;
            }
            let body = if self.started {
                self.bodies.recv().await
            } else {
                match tokio::time::timeout(FIRST_ANSWER, self.bodies.recv()).await {
                    Ok(b) => b,
                    Err(_) => {
                        self.done = true;
                        return Some(ExecEvent::Failed(format!(
                            "no answer from node {} within {}s (is it connected?)",
                            self.node,
                            FIRST_ANSWER.as_secs()
                        )));
                    }
                }
            };
            self.started = true;
            let next = self.shared.taken.load(Ordering::Relaxed);
            match body {
                None => {
                    self.done = true;
                    return Some(ExecEvent::Failed("the exec session was closed".into()));
                }
                Some(Body::ExecOutput(o)) => {
                    if o.seq < next {
                        continue; // a duplicate (QoS 1 redelivery)
                    }
                    if o.seq > next {
                        self.done = true;
                        return Some(ExecEvent::Failed(format!(
                            "exec output {next}..{} was lost on the way",
                            o.seq
                        )));
                    }
                    self.shared.taken.store(next + 1, Ordering::Relaxed);
                    self.shared
                        .stdin_acked
                        .fetch_max(o.stdin_acked, Ordering::Relaxed);
                    if o.data.is_empty() {
                        return Some(ExecEvent::Progress);
                    }
                    return Some(ExecEvent::Output(o.stream, o.data.into_vec()));
                }
                Some(Body::ExecExit(e)) => {
                    self.done = true;
                    return Some(match (e.code, e.error) {
                        (_, Some(why)) => ExecEvent::Failed(why.to_string()),
                        (Some(code), None) => ExecEvent::Exit(code),
                        (None, None) => ExecEvent::Failed("the command's end is unknown".into()),
                    });
                }
                Some(_) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{ExecExit, ExecOutput};

    fn query() -> ExecQuery {
        ExecQuery {
            node: NodeName::new("pi-1").unwrap(),
            pod_uid: "u1".into(),
            container: "app".into(),
            command: vec!["cat".into()],
            stdin: true,
            tty: false,
            rows: 0,
            cols: 0,
        }
    }

    fn output(session: u64, seq: u64, data: &[u8], stdin_acked: u64) -> Body {
        Body::ExecOutput(ExecOutput {
            session,
            seq,
            stream: ExecStream::Stdout,
            data: BVec::from_vec(data.to_vec()).unwrap(),
            stdin_acked,
        })
    }

    #[tokio::test]
    async fn a_session_orders_output_grants_credit_and_bounds_stdin() {
        let (out_tx, mut out) = mpsc::channel(64);
        let hub = ExecHub::new(out_tx);
        let (mut tx, mut rx) = hub.open(query()).await.unwrap();
        let Some(Outbound {
            body: Body::ExecRequest(req),
            ..
        }) = out.recv().await
        else {
            panic!("the request goes first")
        };
        assert_eq!(req.credit, CREDIT);
        let node = NodeName::new("pi-1").unwrap();
        let s = req.session;
        // Another node cannot speak for this session.
        hub.deliver(&NodeName::new("pi-2").unwrap(), output(s, 0, b"x", 0));
        hub.deliver(&node, output(s, 0, b"", 0)); // the start
        hub.deliver(&node, output(s, 1, b"a", 0));
        hub.deliver(&node, output(s, 1, b"a", 0)); // a duplicate
        hub.deliver(&node, output(s, 2, b"b", 0));
        hub.deliver(&node, output(s, 3, b"c", 0));
        assert_eq!(rx.next().await, Some(ExecEvent::Progress), "the start");
        for want in [b"a", b"b", b"c"] {
            assert_eq!(
                rx.next().await,
                Some(ExecEvent::Output(ExecStream::Stdout, want.to_vec()))
            );
        }
        assert!(tx.credit_due(), "four outputs taken of eight granted");
        // Stdin: at most MAX_EXEC_CREDIT beyond what the agent wrote.
        for _ in 0..MAX_EXEC_CREDIT {
            assert!(tx.stdin_room());
            tx.send(ExecAction::Stdin(BVec::from_vec(b"i".to_vec()).unwrap()))
                .await
                .unwrap();
        }
        assert!(!tx.stdin_room());
        let first = out.recv().await.unwrap();
        let Body::ExecInput(i) = first.body else {
            panic!("an input")
        };
        assert_eq!((i.seq, i.acked, i.credit), (0, 4, CREDIT));
        hub.deliver(&node, output(s, 4, b"", 3));
        assert_eq!(
            rx.next().await,
            Some(ExecEvent::Progress),
            "an acknowledgement"
        );
        hub.deliver(
            &node,
            Body::ExecExit(ExecExit {
                session: s,
                seq: 5,
                code: Some(3),
                error: None,
            }),
        );
        assert_eq!(rx.next().await, Some(ExecEvent::Exit(3)));
        assert!(tx.stdin_room(), "the agent wrote three");
        assert_eq!(rx.next().await, None);
        // Dropped before its end: cancelled at the agent.
        drop(tx);
        let last = std::iter::from_fn(|| out.try_recv().ok()).last().unwrap();
        assert!(matches!(
            last.body,
            Body::ExecInput(ExecInput {
                action: ExecAction::Cancel,
                ..
            })
        ));
        assert_eq!(hub.open_sessions(), 0);
    }

    #[tokio::test]
    async fn a_gap_or_an_error_ends_the_session() {
        let (out_tx, mut out) = mpsc::channel(64);
        let hub = ExecHub::new(out_tx);
        let node = NodeName::new("pi-1").unwrap();
        let (_tx, mut rx) = hub.open(query()).await.unwrap();
        let Some(Outbound {
            body: Body::ExecRequest(req),
            ..
        }) = out.recv().await
        else {
            panic!("no exec request sent")
        };
        let s = req.session;
        hub.deliver(&node, output(s, 1, b"late", 0));
        assert!(matches!(rx.next().await, Some(ExecEvent::Failed(w)) if w.contains("lost")));
        let (_tx, mut rx) = hub.open(query()).await.unwrap();
        let s = s + 1;
        hub.deliver(
            &node,
            Body::ExecExit(ExecExit {
                session: s,
                seq: 0,
                code: None,
                error: Some(BString::new("container app not found").unwrap()),
            }),
        );
        assert_eq!(
            rx.next().await,
            Some(ExecEvent::Failed("container app not found".into()))
        );
    }
}
