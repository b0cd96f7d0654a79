//! The commit rule of a new agent on probation, pure with an explicit clock (milliseconds
//! since the agent started), so that its tests need no sleeping.
//!
//! It commits once it has connected to the broker, received and applied a desired state,
//! and every pod of that state has been ready (per the node's own observation) for the
//! whole health window. Past its deadline it rolls back, naming what it still waited for.
//! The deadline is a little shorter than the launcher's watchdog, so the reason comes from
//! here when the new agent can still act, and from the watchdog when it cannot.

/// What the node loop observes, sent to the update task as it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Health {
    pub connected: bool,
    /// A desired state was received (and persisted) since this agent started.
    pub desired: bool,
    pub ready: usize,
    pub total: usize,
}

/// Whether a pod counts as healthy for probation: every (non-init) container ready, or
/// every one ended for good under the pod's restart policy (a pod that ran to completion,
/// `restartPolicy: Never` or `OnFailure` after a success). A completed pod is never ready
/// again by design; counting it as not ready kept any node that ever ran one from
/// committing an update (`pods unhealthy: 2/3 not ready` on the arm64 board, whose OOM and
/// seccomp pods had ended). A container that failed to start (`Failed`) or waits to be
/// restarted is not healthy.
pub fn pod_healthy<'a>(
    policy: baton_proto::RestartPolicy,
    containers: impl IntoIterator<Item = (&'a baton_proto::ContainerState, bool)>,
) -> bool {
    use baton_proto::ContainerState as S;
    let (mut all_ready, mut all_done) = (true, true);
    for (state, ready) in containers {
        all_ready &= ready;
        all_done &= match state {
            S::Exited { code } => !crate::reconcile::should_restart(policy, *code, false),
            S::OomKilled => !crate::reconcile::should_restart(policy, 137, true),
            _ => false,
        };
    }
    all_ready || all_done
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not yet: `pending` is what it waits for, the reason if the watchdog ends it.
    Wait {
        pending: String,
    },
    Commit,
    RollBack(String),
}

#[derive(Debug, Clone)]
pub struct Probation {
    window_ms: u64,
    deadline_ms: u64,
    /// The deadline in whole seconds, for the reasons.
    deadline_secs: u64,
    started: u64,
    connected: bool,
    desired: bool,
    healthy_since: Option<u64>,
    last: Health,
}

/// How much earlier than the watchdog the agent gives up by itself.
pub const EARLY_SECS: u64 = 10;

/// How long a new agent may take to reach the broker before it gives up. The old agent
/// had a connection a moment ago (the order came over it), and the coordinator gives a
/// silent node's pods away after its heartbeat timeout plus pod eviction timeout (20 s +
/// 60 s by default): the old agent must be back, with the same pods, well before that.
pub const CONNECT_SECS: u64 = 30;

impl Probation {
    /// A probation started at `now` with the state's window and watchdog deadline.
    pub fn new(now: u64, window_secs: u32, watchdog_secs: u64) -> Probation {
        let deadline_secs = watchdog_secs.saturating_sub(EARLY_SECS).max(1);
        Probation {
            window_ms: u64::from(window_secs) * 1000,
            deadline_ms: deadline_secs * 1000,
            deadline_secs: watchdog_secs,
            started: now,
            connected: false,
            desired: false,
            healthy_since: None,
            last: Health::default(),
        }
    }

    /// Takes in what the node observes at `now` and says what to do.
    pub fn observe(&mut self, now: u64, h: Health) -> Verdict {
        self.connected |= h.connected;
        self.desired |= h.desired;
        self.last = h;
        let healthy = self.connected && self.desired && h.ready >= h.total;
        if !healthy {
            self.healthy_since = None;
        } else if self.healthy_since.is_none() {
            self.healthy_since = Some(now);
        }
        if self
            .healthy_since
            .is_some_and(|t| now.saturating_sub(t) >= self.window_ms)
        {
            return Verdict::Commit;
        }
        let pending = self.pending();
        let elapsed = now.saturating_sub(self.started);
        if !self.connected && elapsed >= CONNECT_SECS.min(self.deadline_secs) * 1000 {
            return Verdict::RollBack(format!("no broker connection within {CONNECT_SECS} s"));
        }
        if elapsed >= self.deadline_ms {
            return Verdict::RollBack(pending);
        }
        Verdict::Wait { pending }
    }

    /// What it still waits for, as a rollback reason.
    pub fn pending(&self) -> String {
        let d = self.deadline_secs;
        if !self.connected {
            format!("no broker connection within {d} s")
        } else if !self.desired {
            format!("no desired state within {d} s")
        } else if self.last.ready < self.last.total {
            format!(
                "pods unhealthy: {}/{} not ready",
                self.last.total - self.last.ready,
                self.last.total
            )
        } else {
            format!(
                "not healthy for the {} s health window within {d} s",
                self.window_ms / 1000
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{ContainerState as C, RestartPolicy as R};

    #[test]
    fn a_pod_that_ran_to_completion_is_healthy_one_that_will_restart_is_not() {
        let run = C::Running { started_at_ms: 1 };
        // Ready containers, whatever the policy.
        assert!(pod_healthy(R::Always, [(&run, true), (&run, true)]));
        assert!(!pod_healthy(R::Always, [(&run, true), (&run, false)]));
        // Ended for good: an OOM kill or a failure under Never, a success under OnFailure.
        assert!(pod_healthy(R::Never, [(&C::OomKilled, false)]));
        assert!(pod_healthy(R::Never, [(&C::Exited { code: 1 }, false)]));
        assert!(pod_healthy(R::OnFailure, [(&C::Exited { code: 0 }, false)]));
        // Waiting to be restarted, failed to start, or not started.
        assert!(!pod_healthy(R::Always, [(&C::Exited { code: 0 }, false)]));
        assert!(!pod_healthy(
            R::OnFailure,
            [(&C::Exited { code: 2 }, false)]
        ));
        assert!(!pod_healthy(R::OnFailure, [(&C::OomKilled, false)]));
        let failed = C::Failed {
            reason: baton_proto::BString::new("image pull failed").unwrap(),
        };
        assert!(!pod_healthy(R::Never, [(&failed, false)]));
        assert!(!pod_healthy(R::Never, [(&C::Pending, false)]));
        assert!(!pod_healthy(
            R::Never,
            [(&C::Exited { code: 0 }, false), (&run, false)]
        ));
    }

    const S: u64 = 1000;

    fn h(connected: bool, desired: bool, ready: usize, total: usize) -> Health {
        Health {
            connected,
            desired,
            ready,
            total,
        }
    }

    #[test]
    fn commits_after_a_whole_window_of_health() {
        let mut p = Probation::new(0, 30, 130);
        assert_eq!(
            p.observe(0, h(false, false, 0, 2)),
            Verdict::Wait {
                pending: "no broker connection within 130 s".into()
            }
        );
        assert_eq!(
            p.observe(2 * S, h(true, false, 0, 2)),
            Verdict::Wait {
                pending: "no desired state within 130 s".into()
            }
        );
        assert_eq!(
            p.observe(3 * S, h(true, true, 1, 2)),
            Verdict::Wait {
                pending: "pods unhealthy: 1/2 not ready".into()
            }
        );
        assert!(matches!(
            p.observe(5 * S, h(true, true, 2, 2)),
            Verdict::Wait { .. }
        ));
        // A pod that is not ready for a moment restarts the window.
        assert!(matches!(
            p.observe(20 * S, h(true, true, 1, 2)),
            Verdict::Wait { .. }
        ));
        assert!(matches!(
            p.observe(21 * S, h(true, true, 2, 2)),
            Verdict::Wait { .. }
        ));
        assert!(matches!(
            p.observe(50 * S, h(true, true, 2, 2)),
            Verdict::Wait { .. }
        ));
        assert_eq!(p.observe(51 * S, h(true, true, 2, 2)), Verdict::Commit);
    }

    #[test]
    fn a_node_without_pods_commits_once_connected_and_given_its_state() {
        let mut p = Probation::new(0, 10, 80);
        assert!(matches!(
            p.observe(0, h(true, true, 0, 0)),
            Verdict::Wait { .. }
        ));
        // A broker outage after the connection does not undo it.
        assert_eq!(p.observe(10 * S, h(false, false, 0, 0)), Verdict::Commit);
    }

    #[test]
    fn without_a_broker_connection_it_gives_up_before_its_pods_are_given_away() {
        let mut p = Probation::new(5 * S, 10, 80);
        assert!(matches!(
            p.observe(34 * S, h(false, false, 0, 3)),
            Verdict::Wait { .. }
        ));
        assert_eq!(
            p.observe(35 * S, h(false, false, 0, 3)),
            Verdict::RollBack(format!("no broker connection within {CONNECT_SECS} s"))
        );
        // Once connected, the connection deadline no longer applies.
        let mut p = Probation::new(0, 10, 80);
        p.observe(20 * S, h(true, false, 0, 3));
        assert!(matches!(
            p.observe(40 * S, h(false, false, 0, 3)),
            Verdict::Wait { .. }
        ));
    }

    #[test]
    fn rolls_back_before_the_watchdog_naming_what_it_waited_for() {
        let mut p = Probation::new(5 * S, 10, 80);
        p.observe(S * 6, h(true, false, 0, 3));
        assert!(matches!(
            p.observe(74 * S, h(true, false, 0, 3)),
            Verdict::Wait { .. }
        ));
        assert_eq!(
            p.observe(75 * S, h(true, false, 0, 3)),
            Verdict::RollBack("no desired state within 80 s".into())
        );
        let mut p = Probation::new(0, 10, 80);
        p.observe(S, h(true, true, 3, 5));
        assert_eq!(
            p.observe(70 * S, h(true, true, 3, 5)),
            Verdict::RollBack("pods unhealthy: 2/5 not ready".into())
        );
    }
}
