//! The open request/stream sessions between HTTP clients and agents, shared by
//! [`super::logs::LogHub`] and [`super::exec::ExecHub`]: session ids, the routing of a
//! verified message to its session, and the sends to the node.
//!
//! Invariants: an id is never reused while a restarted coordinator's agents may still run
//! the old sessions (ids start at a random point); a message reaches a session only from
//! the node the session was opened with; a session's channel is bounded by its credit, so
//! an agent sending past it loses the message (the session sees the gap) instead of
//! growing this process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use baton_proto::{Body, NodeName};
use tokio::sync::mpsc;

use crate::core::Outbound;

/// The coordinator is shutting down: its outbound channel is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

struct Open<T> {
    node: NodeName,
    tx: mpsc::Sender<T>,
}

/// The open sessions of one kind, each delivering `T`s to its stream.
pub struct Sessions<T> {
    outbound: mpsc::Sender<Outbound>,
    open: Mutex<HashMap<u64, Open<T>>>,
    next: AtomicU64,
    /// `log`, `exec`: for the warnings.
    what: &'static str,
}

impl<T> Sessions<T> {
    pub fn new(outbound: mpsc::Sender<Outbound>, what: &'static str) -> Self {
        let start = u64::from(rand::random::<u32>()) << 16;
        Self {
            outbound,
            open: Mutex::new(HashMap::new()),
            next: AtomicU64::new(start),
            what,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Open<T>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session with `node`, delivering to `tx`: its id.
    pub fn open(&self, node: &NodeName, tx: mpsc::Sender<T>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Open {
                node: node.clone(),
                tx,
            },
        );
        id
    }

    /// Forgets a session: later messages for it are dropped.
    pub fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A verified message from `node` for session `id`: to it, if open and `node`'s.
    pub fn deliver(&self, node: &NodeName, id: u64, item: T) {
        let s = self.lock();
        match s.get(&id) {
            Some(open) if &open.node == node => {
                // Full only if the agent sent past its credit: the session sees the gap.
                if open.tx.try_send(item).is_err() {
                    tracing::warn!(%node, kind = self.what, "a session message beyond its credit; dropped");
                }
            }
            Some(_) => {
                tracing::warn!(%node, kind = self.what, "a message for another node's session; dropped")
            }
            None => {
                tracing::debug!(%node, kind = self.what, session = id, "a message for a closed session")
            }
        }
    }

    /// Sends `body` to `node`, waiting for room in the outbound channel.
    pub async fn send(&self, node: &NodeName, body: Body) -> Result<(), Closed> {
        self.outbound
            .send(Outbound {
                node: node.clone(),
                body,
                retain: false,
            })
            .await
            .map_err(|_| Closed)
    }

    /// Sends `body` to `node` if there is room now: for a drop, which cannot wait (the
    /// agent ends a session it no longer hears from anyway).
    pub fn try_send(&self, node: &NodeName, body: Body) {
        let _ = self.outbound.try_send(Outbound {
            node: node.clone(),
            body,
            retain: false,
        });
    }
}
