//! Node-scheduled CronJobs on the device (`baton.io/schedule-on: node`), pure: the
//! instants and history in, the runs to start and stop out, with the time an argument.
//!
//! The coordinator sends each CronJob's instants ([`NodeCron::fires`]): no cron parser
//! or time-zone database here. At a turn, the run due is the latest instant at or before
//! now and after the last run started, as Kubernetes' controller picks it, so a node
//! that was off for several instants starts one run on its return, and none past
//! `startingDeadlineSeconds`. `Forbid` skips while a run is active (it starts once that
//! ends, deadline permitting); `Replace` stops the active ones first.
//!
//! [`Runs`] is the history, persisted in `<data>/cron.bin` once per run, when it ends
//! (the outcome and the newest instant started, both at once: an SD card is written once
//! a run). A run whose containers outlive an agent restart is taken back from them
//! ([`Runs::resume`]): adopted, not started again, and its end recorded as any run's. A
//! run interrupted by a power cut is not on disk and starts again after the restart,
//! deadline permitting: as in Kubernetes, runs are at least once.

use std::collections::BTreeMap;
use std::path::Path;

use baton_proto::{
    BString, ContainerState, CronOutcome, CronPolicy, CronRun, NodeCron, PodSpec, RestartPolicy,
};
use serde::{Deserialize, Serialize};

/// The file the history lives in, under the data dir.
pub const FILE: &str = "cron.bin";
const MAGIC: &[u8; 4] = b"BTC1";

/// The runs of every node-scheduled CronJob this node fires.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runs(BTreeMap<String, History>);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The CronJob's uid: a CronJob made again under the same name starts afresh.
    pub uid: String,
    /// The newest instant a run was started for, minutes since the epoch.
    pub last_minute: u32,
    /// Oldest first: the active runs and the ended ones within the history limits.
    pub runs: Vec<Run>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub minute: u32,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub outcome: CronOutcome,
}

/// What a turn does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Runs to start: (CronJob, minute).
    pub fire: Vec<(String, u32)>,
    /// Active runs to stop, replaced (`Replace`).
    pub replace: Vec<(String, u32)>,
    /// The next instant of any CronJob, Unix seconds.
    pub wake_secs: Option<u64>,
}

/// The pod of `cron`'s run for `minute`: named as the coordinator names a CronJob's Job.
pub fn run_pod(cron: &NodeCron, minute: u32) -> PodSpec {
    let mut pod = cron.pod.clone();
    pod.name = BString::truncated(&format!("{}-{minute}", cron.name));
    pod.uid = BString::truncated(&run_uid(cron.uid.as_str(), minute));
    pod
}

pub fn run_uid(cron_uid: &str, minute: u32) -> String {
    format!("{cron_uid}-{minute}")
}

/// Which runs are due at `now_secs`.
pub fn plan(crons: &[NodeCron], runs: &Runs, now_secs: u64) -> Plan {
    let mut out = Plan::default();
    for c in crons {
        let h = runs.0.get(c.name.as_str());
        let last = h.map_or(0, |h| h.last_minute);
        let mut due = None;
        for t in c.fires() {
            if t > now_secs {
                out.wake_secs = Some(out.wake_secs.map_or(t, |w| w.min(t)));
                break;
            }
            if t / 60 > u64::from(last) {
                due = Some(t);
            }
        }
        let Some(t) = due else { continue };
        if c.starting_deadline_secs
            .is_some_and(|d| now_secs.saturating_sub(t) > u64::from(d))
        {
            continue;
        }
        let active: Vec<u32> = h
            .into_iter()
            .flat_map(|h| &h.runs)
            .filter(|r| r.outcome == CronOutcome::Active)
            .map(|r| r.minute)
            .collect();
        match c.policy {
            CronPolicy::Forbid if !active.is_empty() => continue,
            CronPolicy::Replace => out
                .replace
                .extend(active.into_iter().map(|m| (c.name.to_string(), m))),
            _ => {}
        }
        out.fire.push((c.name.to_string(), (t / 60) as u32));
    }
    out
}

/// How a run's pod ended, if it has: `containers` are (init, state, restarts) of every
/// container. Under `Never` the run is that one pod; under `OnFailure` its containers are
/// restarted until they succeed, or until their restarts pass `backoff_limit`.
/// Why a run whose exit code is not known failed.
pub const UNKNOWN_EXIT: &str =
    "exit code unknown (its container outlived an agent restart, which cannot learn it)";

pub fn outcome(
    policy: RestartPolicy,
    backoff_limit: u32,
    containers: &[(bool, &ContainerState, u32)],
) -> Option<CronOutcome> {
    let failed = |why: &str| Some(CronOutcome::Failed(BString::truncated(why)));
    if let Some((_, ContainerState::Failed { reason }, _)) = containers
        .iter()
        .find(|(_, s, _)| matches!(s, ContainerState::Failed { .. }))
    {
        return failed(reason);
    }
    let restarts: u32 = containers.iter().map(|(_, _, r)| r).sum();
    if policy == RestartPolicy::OnFailure && restarts > backoff_limit {
        return failed("BackoffLimitExceeded");
    }
    let bad = containers.iter().find_map(|(_, s, _)| match s {
        // -1: not known, as for a container that outlived an agent restart (an adopted
        // run): said so, not taken for the program's own code.
        ContainerState::Exited { code: -1 } => Some(UNKNOWN_EXIT.to_owned()),
        ContainerState::Exited { code } if *code != 0 => Some(format!("exit code {code}")),
        ContainerState::OomKilled => Some("OOMKilled".into()),
        _ => None,
    });
    if policy == RestartPolicy::Never {
        if let Some(why) = bad {
            return failed(&why);
        }
    }
    let mains = containers.iter().filter(|(init, _, _)| !init);
    let mut any = false;
    for (_, s, _) in mains {
        any = true;
        if **s != (ContainerState::Exited { code: 0 }) {
            return None;
        }
    }
    any.then_some(CronOutcome::Succeeded)
}

impl Runs {
    /// Forgets the CronJobs no longer sent and those made again under their name; true
    /// when anything was forgotten.
    pub fn sync(&mut self, crons: &[NodeCron]) -> bool {
        let before = self.0.len();
        let mut changed = false;
        self.0
            .retain(|name, _| crons.iter().any(|c| c.name.as_str() == name));
        for c in crons {
            let h = self.0.entry(c.name.to_string()).or_default();
            if h.uid != c.uid.as_str() {
                changed |= !h.uid.is_empty();
                *h = History {
                    uid: c.uid.to_string(),
                    ..Default::default()
                };
            }
        }
        changed || self.0.len() < before
    }

    pub fn fire(&mut self, cron: &str, minute: u32, now_ms: u64) {
        if let Some(h) = self.0.get_mut(cron) {
            h.last_minute = h.last_minute.max(minute);
            h.runs.push(Run {
                minute,
                started_ms: now_ms,
                finished_ms: None,
                outcome: CronOutcome::Active,
            });
        }
    }

    /// Ends a run, and trims its CronJob's ended runs to the history limits, oldest first.
    pub fn finish(&mut self, cron: &NodeCron, minute: u32, outcome: CronOutcome, now_ms: u64) {
        let Some(h) = self.0.get_mut(cron.name.as_str()) else {
            return;
        };
        let Some(r) = h.runs.iter_mut().find(|r| r.minute == minute) else {
            return;
        };
        r.outcome = outcome;
        r.finished_ms = Some(now_ms);
        for (ok, limit) in [
            (true, cron.successful_history),
            (false, cron.failed_history),
        ] {
            let of = |r: &Run| match r.outcome {
                CronOutcome::Active => false,
                CronOutcome::Succeeded => ok,
                CronOutcome::Failed(_) => !ok,
            };
            let mut extra = h
                .runs
                .iter()
                .filter(|&r| of(r))
                .count()
                .saturating_sub(limit.into());
            h.runs.retain(|r| {
                let drop = extra > 0 && of(r);
                extra -= usize::from(drop);
                !drop
            });
        }
    }

    /// The runs a previous agent process started whose containers all still run
    /// (`running`: container id to its creation time, ms), for the agent to adopt as
    /// any pod: a run not in the history (it is written when a run ends) is taken back
    /// as active, in memory only, so it is neither started again nor left unreported.
    /// Their pods.
    pub fn resume(
        &mut self,
        crons: &[NodeCron],
        running: &BTreeMap<String, Option<u64>>,
        now_ms: u64,
    ) -> Vec<PodSpec> {
        self.sync(crons);
        let mut pods = Vec::new();
        for c in crons {
            // Container ids are `<pod uid>-<container>`, a run's pod uid
            // `<cronjob uid>-<minute>` (`run_uid`).
            let prefix = format!("{}-", c.uid.as_str());
            let minutes: std::collections::BTreeSet<u32> = running
                .keys()
                .filter_map(|id| id.strip_prefix(&prefix)?.split_once('-')?.0.parse().ok())
                .collect();
            for minute in minutes {
                let pod = run_pod(c, minute);
                let ids: Vec<String> = pod
                    .containers
                    .iter()
                    .map(|k| format!("{}-{}", pod.uid.as_str(), k.name.as_str()))
                    .collect();
                if ids.is_empty() || !ids.iter().all(|id| running.contains_key(id)) {
                    continue;
                }
                let known = self.0.get(c.name.as_str()).and_then(|h| {
                    h.runs
                        .iter()
                        .find(|r| r.minute == minute)
                        .map(|r| r.outcome == CronOutcome::Active)
                });
                match known {
                    // Ended: its leftovers go.
                    Some(false) => continue,
                    Some(true) => {}
                    None => {
                        let started = ids
                            .iter()
                            .filter_map(|id| running.get(id).copied().flatten())
                            .min()
                            .unwrap_or(now_ms);
                        self.fire(c.name.as_str(), minute, started);
                    }
                }
                pods.push(pod);
            }
        }
        pods
    }

    /// The active runs: (CronJob, minute).
    pub fn active(&self) -> impl Iterator<Item = (&str, u32)> {
        self.all()
            .filter(|(_, r)| r.outcome == CronOutcome::Active)
            .map(|(name, r)| (name, r.minute))
    }

    /// Every run kept, active or ended within the history limits: (CronJob, run).
    pub fn all(&self) -> impl Iterator<Item = (&str, &Run)> {
        self.0
            .iter()
            .flat_map(|(name, h)| h.runs.iter().map(move |r| (name.as_str(), r)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.values().all(|h| h.runs.is_empty())
    }

    /// The runs as reported: all of them, or only `which`.
    pub fn report(&self, which: Option<&[(String, u32)]>) -> Vec<CronRun> {
        self.0
            .iter()
            .flat_map(|(name, h)| h.runs.iter().map(move |r| (name, r)))
            .filter(|(name, r)| {
                which.is_none_or(|w| w.iter().any(|(n, m)| n == *name && *m == r.minute))
            })
            .map(|(name, r)| CronRun {
                cron: BString::truncated(name),
                minute: r.minute,
                started_at_ms: r.started_ms,
                finished_at_ms: r.finished_ms,
                outcome: r.outcome.clone(),
            })
            .collect()
    }

    /// The history in `dir`, or none (a file that cannot be read is said and ignored:
    /// at worst a run starts again).
    pub fn load(dir: &Path) -> Self {
        let path = dir.join(FILE);
        let Ok(bytes) = std::fs::read(&path) else {
            return Self::default();
        };
        match bytes.strip_prefix(MAGIC).map(postcard::from_bytes) {
            Some(Ok(runs)) => runs,
            _ => {
                tracing::warn!(path = %path.display(), "unreadable CronJob history; starting afresh");
                Self::default()
            }
        }
    }

    /// Durably: an outcome not yet reported must survive a power cut.
    pub fn store(&self, dir: &Path) -> std::io::Result<()> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend(postcard::to_allocvec(self).unwrap_or_default());
        crate::durable::write(&dir.join(FILE), &bytes, crate::datadir::PRIVATE_FILE)
    }
}

#[cfg(test)]
mod tests;
