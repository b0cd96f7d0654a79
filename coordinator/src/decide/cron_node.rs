//! Node-scheduled CronJobs (`baton.io/schedule-on: node`), pure: the instants a node is
//! sent, when that horizon moves, which nodes fire the CronJob, and the Job and the pod
//! that record a node's run.
//!
//! The device has no cron parser and no time-zone database (both stay here, out of the
//! agent's size budget): the schedule is expanded into its instants, in UTC seconds, from
//! the horizon's start for at most [`HORIZON_FIRES`] instants or [`HORIZON_DAYS`] days,
//! whichever ends first, and sent delta-encoded. The horizon moves to the present once
//! half of it has passed, so a connected node always holds at least half a horizon ahead,
//! and a node cut off keeps firing until its horizon ends.

use std::time::{Duration, SystemTime};

use baton_proto as proto;

use super::cronjob::{CronError, Schedule};
use crate::model::api;

/// The most instants sent per CronJob (a day of an every-minute schedule).
pub const HORIZON_FIRES: usize = proto::MAX_CRON_FIRES;
/// The longest horizon, in days.
pub const HORIZON_DAYS: u64 = 14;

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// The instants of `schedule` after `start`, within the horizon: the first
/// (Unix seconds; 0 when none) and each further one's distance from the one before.
pub fn expand(schedule: &Schedule, start: SystemTime) -> (u64, Vec<u32>) {
    let end = start + Duration::from_secs(HORIZON_DAYS * 86_400);
    let mut prev: Option<u64> = None;
    let mut first = 0;
    let mut deltas = Vec::new();
    let mut t = start;
    while deltas.len() + 1 < HORIZON_FIRES || prev.is_none() {
        let Some(next) = schedule.next_after(t) else {
            break;
        };
        if next > end {
            break;
        }
        let s = secs(next);
        match prev {
            None => first = s,
            Some(p) => deltas.push(u32::try_from(s - p).unwrap_or(u32::MAX)),
        }
        prev = Some(s);
        t = next;
    }
    (first, deltas)
}

/// The CronJob's status with its horizon at `now` ([`horizon_start`]).
pub fn with_horizon(
    cj: &api::CronJob,
    mut status: api::CronJobStatus,
    now: SystemTime,
) -> Result<api::CronJobStatus, CronError> {
    let schedule = Schedule::parse(&cj.spec.schedule, cj.spec.time_zone.as_deref())?;
    let prev = status
        .node_horizon_start
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
    let start = horizon_start(&schedule, prev, now);
    status.node_horizon_start = Some(humantime::format_rfc3339_seconds(start).to_string());
    Ok(status)
}

/// Where the horizon starts at `now`: kept while less than half of it has passed, else
/// moved to `now` (whole minutes, so the instants do not change within one).
pub fn horizon_start(schedule: &Schedule, prev: Option<SystemTime>, now: SystemTime) -> SystemTime {
    let fresh = at(secs(now) / 60 * 60);
    let Some(prev) = prev.filter(|p| *p <= now) else {
        return fresh;
    };
    let (first, deltas) = expand(schedule, prev);
    if secs(now) >= renew_at(secs(prev), first, &deltas) {
        fresh
    } else {
        prev
    }
}

/// When a horizon from `start` (Unix seconds) with these instants is half over: it ends
/// with its last instant when the count ran out first, else after [`HORIZON_DAYS`] (also
/// when it has no instant at all, say a yearly schedule, looked at again then).
pub fn renew_at(start: u64, first: u64, deltas: &[u32]) -> u64 {
    let end = if first != 0 && deltas.len() + 1 >= HORIZON_FIRES {
        first + deltas.iter().map(|d| u64::from(*d)).sum::<u64>()
    } else {
        start + HORIZON_DAYS * 86_400
    };
    start + end.saturating_sub(start) / 2
}

/// The CronJob as its nodes are sent it, but for the pod (converted by `model::wire`) and
/// the instants from `start`; `None` when `schedule` cannot be parsed.
pub fn node_cron(
    cj: &api::CronJob,
    pod: proto::PodSpec,
    start: SystemTime,
) -> Result<proto::NodeCron, CronError> {
    let spec = &cj.spec;
    let (first, deltas) = if spec.suspend {
        (0, Vec::new())
    } else {
        let schedule = Schedule::parse(&spec.schedule, spec.time_zone.as_deref())?;
        expand(&schedule, start)
    };
    let history = |n: u32| u8::try_from(n).unwrap_or(u8::MAX);
    Ok(proto::NodeCron {
        name: proto::BString::truncated(&cj.metadata.name),
        uid: proto::BString::truncated(&cj.metadata.uid),
        pod,
        policy: match spec.concurrency_policy {
            api::ConcurrencyPolicy::Allow => proto::CronPolicy::Allow,
            api::ConcurrencyPolicy::Forbid => proto::CronPolicy::Forbid,
            api::ConcurrencyPolicy::Replace => proto::CronPolicy::Replace,
        },
        starting_deadline_secs: spec
            .starting_deadline_seconds
            .map(|s| u32::try_from(s).unwrap_or(u32::MAX)),
        backoff_limit: spec.job_template.spec.backoff_limit,
        successful_history: history(spec.successful_jobs_history_limit),
        failed_history: history(spec.failed_jobs_history_limit),
        first,
        deltas: proto::BVec::from_vec(deltas).unwrap_or_default(),
    })
}

/// The Job recording `node`'s run of `cj`: named `<cronjob>-<scheduled minute>-<node>`
/// (the coordinator's own name for the run, and the node, since every selected node runs
/// it), its status from the node's report.
pub fn run_job(cj: &api::CronJob, node: &str, run: &proto::CronRun) -> api::Job {
    let scheduled = at(u64::from(run.minute) * 60);
    let mut job = super::cronjob::new_job(cj, scheduled);
    job.metadata.name = format!("{}-{node}", job.metadata.name);
    for (k, v) in [
        (api::SCHEDULE_ON_ANNOTATION, "node"),
        (api::RUN_NODE_ANNOTATION, node),
    ] {
        job.metadata.annotations.insert(k.into(), v.into());
    }
    job.status = run_status(run);
    job
}

/// The pod of `node`'s run `minute` of CronJob `cj` as the coordinator keeps it: its Job's
/// name (`<cronjob>-<minute>-<node>`) and `-run`, one name per node, where the device
/// calls it `<cronjob>-<minute>` ([`run_pod_uid`] ties the two).
pub fn run_pod_name(cj: &str, minute: u32, node: &str) -> String {
    format!("{cj}-{minute}-{node}-run")
}

/// The uid of a run's pod, the device's own (`<cronjob uid>-<minute>`): the one the
/// node's `Status` reports it under and `logs` asks for.
pub fn run_pod_uid(cj_uid: &str, minute: u32) -> String {
    format!("{cj_uid}-{minute}")
}

/// The CronJob and minute of a run's pod as its node reports it (`<cronjob>-<minute>`,
/// uid `<cronjob uid>-<minute>`); `None` for any other pod.
pub fn parse_run_pod<'a>(name: &'a str, uid: &'a str) -> Option<(&'a str, &'a str, u32)> {
    let (cj_uid, minute) = uid.rsplit_once('-')?;
    let cj = name.strip_suffix(minute)?.strip_suffix('-')?;
    Some((cj, cj_uid, minute.parse().ok()?))
}

/// The pod recording `node`'s `run` of `cj`, owned by `job` (its Job) and the CronJob,
/// bound to the node. Never sent to it: the node made it, and reports its status as any
/// pod's. Its phase until then is the run's.
pub fn run_pod(cj: &api::CronJob, job: &api::Job, node: &str, run: &proto::CronRun) -> api::Pod {
    let mut pod = super::job::new_pod(job, "run");
    pod.metadata.name = run_pod_name(&cj.metadata.name, run.minute, node);
    pod.metadata.uid = run_pod_uid(&cj.metadata.uid, run.minute);
    pod.metadata.cron_job = Some(cj.metadata.name.clone());
    pod.metadata.creation_timestamp = rfc3339_ms(run.started_at_ms);
    pod.spec.node_name = Some(node.to_owned());
    if let Some((phase, why)) = ended_phase(run) {
        pod.status.phase = phase;
        pod.status.message = why;
    }
    pod
}

/// The phase a run that ended leaves its pod in (and why it failed); `None` while active.
pub fn ended_phase(run: &proto::CronRun) -> Option<(api::PodPhase, Option<String>)> {
    match &run.outcome {
        proto::CronOutcome::Active => None,
        proto::CronOutcome::Succeeded => Some((api::PodPhase::Succeeded, None)),
        proto::CronOutcome::Failed(why) => Some((api::PodPhase::Failed, Some(why.to_string()))),
    }
}

fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
        .to_string()
}

/// A run's Job status, as the Job controller would have written it for one pod.
pub fn run_status(run: &proto::CronRun) -> api::JobStatus {
    let finished = run.finished_at_ms.map(rfc3339_ms);
    let mut st = api::JobStatus {
        start_time: Some(rfc3339_ms(run.started_at_ms)),
        ..Default::default()
    };
    let condition = |type_, reason: Option<String>| api::JobCondition {
        type_,
        status: "True".into(),
        message: reason.clone(),
        reason,
        last_transition_time: finished.clone().unwrap_or_default(),
    };
    match &run.outcome {
        proto::CronOutcome::Active => st.active = 1,
        proto::CronOutcome::Succeeded => {
            st.succeeded = 1;
            st.completion_time = finished.clone();
            st.conditions
                .push(condition(api::JobConditionType::Complete, None));
        }
        proto::CronOutcome::Failed(why) => {
            st.failed = 1;
            st.conditions.push(condition(
                api::JobConditionType::Failed,
                Some(why.to_string()),
            ));
        }
    }
    st
}

/// What to do with `node`'s report of `run` of `cj`, given the Job recorded for it, if
/// any: the Job to write (`None`: nothing new). A run older than the newest recorded for
/// the node and no longer recorded has left the history: it is not recorded again.
pub fn record_run(
    cj: &api::CronJob,
    node: &str,
    run: &proto::CronRun,
    recorded: Option<&api::Job>,
) -> Option<api::Job> {
    match recorded {
        Some(j) => {
            let status = run_status(run);
            (j.status != status).then(|| {
                let mut j = j.clone();
                j.status = status;
                j
            })
        }
        None => {
            let newest = cj.status.node_runs.get(node).copied();
            if newest.is_some_and(|m| run.minute <= m) {
                return None;
            }
            Some(run_job(cj, node, run))
        }
    }
}

/// Whether the CronJob's pod template selects `node` (a DaemonSet's rule).
pub fn node_wants(cj: &api::CronJob, node: &api::Node) -> bool {
    super::daemonset::template_placement(&cj.spec.job_template.spec.template.spec, node).0
}

/// What a node-scheduled CronJob may not have, as `apply` refuses it: one pod per run on
/// the device, with nothing the device would need the coordinator for.
pub fn check(cj: &api::CronJob) -> Result<(), (String, String)> {
    let job = &cj.spec.job_template.spec;
    let refuse = |path: &str, why: &str| Err((format!("spec.jobTemplate.spec.{path}"), why.into()));
    if job.completions.is_some_and(|c| c != 1) {
        return refuse("completions", "must be 1 with baton.io/schedule-on: node");
    }
    if job.parallelism != 1 {
        return refuse("parallelism", "must be 1 with baton.io/schedule-on: node");
    }
    if job.active_deadline_seconds.is_some() {
        return refuse(
            "activeDeadlineSeconds",
            "not supported with baton.io/schedule-on: node",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
