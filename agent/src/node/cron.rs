//! The node loop's side of node-scheduled CronJobs (`crate::cron`): at every turn, the
//! ended runs are recorded, the due ones started (their pods join what the reconciler
//! runs, and the node's `Status`) and the runs that changed reported; on the trusted
//! clock only.

use baton_proto::{BVec, Body, CronOutcome, CronReport, PodSpec, RestartPolicy};
use tracing::{info, warn};

use super::{Agent, Publish};
use crate::cron::{self, Runs};
use crate::reconcile::{ContainerObs, Lifecycle, Millis};

/// How often a node with CronJobs and an untrusted clock looks at it again (NTP may set it
/// without any event).
const UNTRUSTED_RECHECK_MS: Millis = 60_000;

/// The loop's CronJob state.
#[derive(Default)]
pub(super) struct CronState {
    pub(super) runs: Runs,
    /// Runs changed since the last report: (CronJob, minute).
    changed: Vec<(String, u32)>,
    /// Report every run (after a connect, or a report that could not go out).
    resend: bool,
    /// The clock was not trusted at the last turn.
    untrusted: bool,
}

impl CronState {
    pub(super) fn load(data_dir: &std::path::Path) -> Self {
        Self {
            runs: Runs::load(data_dir),
            ..Default::default()
        }
    }
}

impl Agent {
    /// The pods of the active runs, and of the ended ones the history keeps, as a Job's
    /// ended pods are kept (for `baton logs` and `get pods`): while the pod is still here
    /// and done, so that nothing in it runs again. A run the history drops, or whose pod
    /// is gone (an agent restart), or still runs (replaced, past its backoff limit), has
    /// its pod stopped and removed, its logs with it.
    pub(super) fn run_pods(&self) -> Vec<PodSpec> {
        self.cron
            .runs
            .all()
            .filter_map(|(name, run)| {
                let c = self
                    .desired
                    .crons
                    .iter()
                    .find(|c| c.name.as_str() == name)?;
                let pod = cron::run_pod(c, run.minute);
                let keep = run.outcome == CronOutcome::Active
                    || self.pods.get(pod.uid.as_str()).is_some_and(|p| {
                        p.lifecycle == Lifecycle::Running
                            && (p.spec.restart_policy == RestartPolicy::Never
                                || run.outcome == CronOutcome::Succeeded)
                            && p.ctrs.iter().all(|c| {
                                !matches!(
                                    c.obs,
                                    ContainerObs::Running { .. } | ContainerObs::Creating
                                )
                            })
                    });
                keep.then_some(pod)
            })
            .collect()
    }

    /// After a connect: every run is reported again.
    pub(super) fn cron_connected(&mut self) {
        self.cron.resend = true;
    }

    /// One turn of the CronJobs: ended runs recorded (and persisted), due runs started,
    /// changes reported. Returns when to look again.
    pub(super) fn cron_turn(&mut self, bus: &dyn Publish) -> Option<Millis> {
        let crons = self.desired.crons.clone();
        if crons.is_empty() && self.cron.runs.is_empty() {
            self.cron.runs.sync(&crons);
            return None;
        }
        let mut persist = self.cron.runs.sync(&crons);
        let now = bus.trusted_now_ms();
        let stamp = now.unwrap_or(0);
        // Ended runs.
        let active: Vec<(String, u32)> = self
            .cron
            .runs
            .active()
            .map(|(n, m)| (n.to_owned(), m))
            .collect();
        for (name, minute) in active {
            let Some(c) = crons.iter().find(|c| c.name.as_str() == name) else {
                continue;
            };
            let uid = cron::run_uid(c.uid.as_str(), minute);
            if let Some(reason) = self.evicted.get(&uid) {
                // Evicted under node pressure: the run failed, as a Job whose pod is
                // evicted does. Still active, it would wait for a pod that never comes
                // back (Forbid then blocks every later instant), or be started again
                // once the next desired state clears the eviction.
                let why = baton_proto::BString::truncated(&format!("Evicted: {reason}"));
                info!(cronjob = %name, minute, reason = %reason, "CronJob run evicted");
                self.cron
                    .runs
                    .finish(c, minute, CronOutcome::Failed(why), stamp);
                self.cron.changed.push((name, minute));
                persist = true;
                continue;
            }
            let Some(p) = self.pods.get(&uid) else {
                continue;
            };
            let ctrs: Vec<_> = p
                .ctrs
                .iter()
                .map(|c| (c.init, &c.report, c.restarts))
                .collect();
            if let Some(outcome) = cron::outcome(p.spec.restart_policy, c.backoff_limit, &ctrs) {
                info!(cronjob = %name, minute, ?outcome, "CronJob run ended");
                self.cron.runs.finish(c, minute, outcome, stamp);
                self.cron.changed.push((name, minute));
                persist = true;
            }
        }
        let wake;
        match now {
            None => {
                if !self.cron.untrusted {
                    warn!("this node's clock is not trusted yet (no RTC, no time from the coordinator): its CronJobs do not fire");
                    self.cron.untrusted = true;
                    self.cron.resend = true;
                }
                wake = Some(self.mono() + UNTRUSTED_RECHECK_MS);
            }
            Some(now_ms) => {
                if std::mem::take(&mut self.cron.untrusted) {
                    info!("this node's clock is trusted now: its CronJobs fire");
                    self.cron.resend = true;
                }
                let plan = cron::plan(&crons, &self.cron.runs, now_ms / 1000);
                for (name, minute) in plan.replace {
                    if let Some(c) = crons.iter().find(|c| c.name.as_str() == name) {
                        let why = baton_proto::BString::truncated("Replaced by a newer run");
                        self.cron
                            .runs
                            .finish(c, minute, CronOutcome::Failed(why), now_ms);
                        self.cron.changed.push((name, minute));
                        persist = true;
                    }
                }
                for (name, minute) in plan.fire {
                    info!(cronjob = %name, minute, "CronJob fires");
                    self.cron.runs.fire(&name, minute, now_ms);
                    self.cron.changed.push((name, minute));
                }
                wake = plan
                    .wake_secs
                    .map(|t| self.mono() + (t * 1000).saturating_sub(now_ms) as Millis);
            }
        }
        if persist {
            // Once a run, when it ends: see `crate::cron`.
            if let Err(e) = self
                .reserve
                .write(|| self.cron.runs.store(&self.cfg.data_dir))
            {
                warn!(error = %e, "cannot persist the CronJob history");
            }
        }
        self.report_runs(bus);
        wake
    }

    /// Sends the runs that changed (all of them after a connect), when connected.
    fn report_runs(&mut self, bus: &dyn Publish) {
        if !bus.is_connected() {
            // Every run is reported after the next connect: nothing to keep meanwhile.
            self.cron.changed.clear();
            return;
        }
        if !self.cron.resend && self.cron.changed.is_empty() {
            return;
        }
        let which = (!self.cron.resend).then_some(self.cron.changed.as_slice());
        let mut runs = self.cron.runs.report(which);
        runs.truncate(baton_proto::MAX_CRON_RUNS);
        let report = CronReport {
            clock_untrusted: self.cron.untrusted,
            runs: BVec::from_vec(runs).unwrap_or_default(),
        };
        if bus.publish(Body::CronRuns(report)).is_ok() {
            self.cron.changed.clear();
            self.cron.resend = false;
        } else {
            self.cron.resend = true;
        }
    }
}
