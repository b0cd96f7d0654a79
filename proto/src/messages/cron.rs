//! CronJobs a node fires itself (`baton.io/schedule-on: node`), also while its link is
//! down: [`NodeCron`] in its desired state, [`CronReport`] back.
//!
//! The device carries no cron parser and no time-zone database: the coordinator expands
//! the schedule into the instants the node fires at, over a bounded horizon, and sends
//! them delta-encoded (postcard varints: an every-minute schedule costs one byte a run).
//! The agent fires at those instants on its own clock, only while that clock is trusted.

use serde::{Deserialize, Serialize};

use crate::{BString, BVec, PodSpec};

/// The most node-scheduled CronJobs one node is sent.
pub const MAX_NODE_CRONS: usize = 16;
/// The most fire instants of one [`NodeCron`] (a day of an every-minute schedule).
pub const MAX_CRON_FIRES: usize = 1440;
/// The most runs one [`CronReport`] carries.
pub const MAX_CRON_RUNS: usize = 128;

/// Kubernetes' `concurrencyPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CronPolicy {
    Allow,
    Forbid,
    Replace,
}

/// One CronJob for the node to fire at [`NodeCron::fires`]. Suspended CronJobs are sent
/// with no instants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeCron {
    /// The CronJob's name; a run's pod is `<name>-<scheduled minute since the epoch>`.
    pub name: BString<52>,
    /// The CronJob's uid: a CronJob deleted and made again starts a fresh history.
    pub uid: BString<64>,
    /// The pod each run starts (its name and uid are the run's, set by the agent).
    pub pod: PodSpec,
    pub policy: CronPolicy,
    /// A run not started within this many seconds of its instant is skipped.
    pub starting_deadline_secs: Option<u32>,
    /// Container restarts (under `OnFailure`) tolerated before a run has failed.
    pub backoff_limit: u32,
    /// Ended runs kept (and reported) per outcome: Kubernetes' history limits.
    pub successful_history: u8,
    pub failed_history: u8,
    /// The first instant of the horizon, Unix seconds (0 with no instants).
    pub first: u64,
    /// Each further instant, in seconds after the one before.
    pub deltas: BVec<u32, MAX_CRON_FIRES>,
}

impl NodeCron {
    /// The fire instants, Unix seconds, ascending.
    pub fn fires(&self) -> impl Iterator<Item = u64> + '_ {
        let first = (self.first != 0).then_some(self.first);
        first
            .into_iter()
            .chain(self.deltas.iter().scan(self.first, |t, d| {
                *t += u64::from(*d);
                Some(*t)
            }))
    }
}

/// Agent -> coordinator on `up/status`: runs of node-scheduled CronJobs. After a connect
/// it carries every run the node keeps (its history limits, and the active ones); while
/// connected, only the runs that changed. The coordinator records each as a Job, by name,
/// so a run reported twice is recorded once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronReport {
    /// The node's clock is not trusted (no RTC, and no time learned from a verified
    /// coordinator message yet): it fires nothing.
    pub clock_untrusted: bool,
    pub runs: BVec<CronRun, MAX_CRON_RUNS>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronRun {
    pub cron: BString<52>,
    /// The instant it ran for, in minutes since the epoch (a cron schedule's resolution).
    pub minute: u32,
    /// Unix milliseconds, the agent's trusted clock.
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub outcome: CronOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CronOutcome {
    Active,
    Succeeded,
    /// Why, in Kubernetes' words where it has some (`BackoffLimitExceeded`).
    Failed(BString<128>),
}
