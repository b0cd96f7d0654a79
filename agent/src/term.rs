//! The leader's term: the agent refuses a deposed coordinator's late messages.
//!
//! Coordinators on etcd take turns leading, and each leadership has a higher term
//! ([`baton_proto::DesiredState::term`]). A leader paused past its lease (a `SIGSTOP`, a
//! stalled VM) may still send for a moment after it resumes, before it learns it was
//! deposed; its messages are signed with the same key as its successor's, and its
//! clock-following sequence numbers are as fresh. What tells them apart is the term: the
//! agent keeps the highest term it accepted and refuses a message of a lower one.
//!
//! The bus checks it ([`LeaderTerm::admits`]) before the replay check records the
//! message's sequence number, so a refused message does not push the successor's next ones
//! below it, and raises it ([`LeaderTerm::accepted`]) only for a message that also passed
//! the signature and replay checks. The highest term is persisted with what the agent
//! already persists: in `desired.bin` (a desired state of a new term differs from the one
//! on disk, so it is written once per leadership, and no more) and `services.bin`; at
//! start the agent resumes from them ([`crate::node::Node::leader_term`]).

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{info, warn};

/// The highest term accepted, and the refusals of lower ones. Shared by the bus's tasks.
#[derive(Debug)]
pub struct LeaderTerm {
    highest: AtomicU64,
    refused: AtomicU64,
}

impl LeaderTerm {
    /// Resumes from the term persisted with the desired state (0: none).
    pub fn new(persisted: u64) -> Self {
        Self {
            highest: AtomicU64::new(persisted),
            refused: AtomicU64::new(0),
        }
    }

    /// The highest term accepted.
    pub fn current(&self) -> u64 {
        self.highest.load(Ordering::SeqCst)
    }

    /// Messages refused for their term since the agent started.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Whether a message `what` of `term` may be acted on: not when a later leader's term
    /// was accepted already. A refusal is counted and logged, one line with both terms (a
    /// deposed leader stops within moments, and a stale retained copy comes once per
    /// reconnect).
    pub fn admits(&self, what: &str, term: u64) -> bool {
        let highest = self.current();
        if term >= highest {
            return true;
        }
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        warn!(
            body = what,
            term,
            leader_term = highest,
            refused_so_far = n,
            "refused a message of a deposed leader: its term {term} is below the term {highest} of a later leader"
        );
        false
    }

    /// `term` came on a message that passed every check: it is the term to beat now.
    pub fn accepted(&self, term: u64) {
        let before = self.highest.fetch_max(term, Ordering::SeqCst);
        if term > before {
            info!(
                term,
                previous = before,
                "following a new leader: term {term} (was {before})"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_terms_are_refused_and_counted_equal_and_higher_ones_admitted() {
        let t = LeaderTerm::new(7);
        assert_eq!(t.current(), 7);
        assert!(t.admits("Desired", 7), "the same leader again");
        assert!(t.admits("Desired", 9), "a later leader");
        assert!(!t.admits("Desired", 6));
        assert!(!t.admits("ServiceTable", 0), "a message without a term");
        assert_eq!(t.refused(), 2);
        // Admitting does not raise: only a message that passed every check does.
        assert_eq!(t.current(), 7);
        t.accepted(9);
        assert_eq!(t.current(), 9);
        assert!(!t.admits("Desired", 7), "the previous leader, now deposed");
        t.accepted(8);
        assert_eq!(t.current(), 9, "never goes back");
        assert_eq!(t.refused(), 3);
    }

    #[test]
    fn a_fresh_agent_admits_any_term() {
        let t = LeaderTerm::new(0);
        assert!(t.admits("Desired", 0));
        assert!(t.admits("Desired", 3));
        assert_eq!(t.refused(), 0);
    }
}
