//! The Job controller's decision, pure like the Deployment's: the Job, its pods and the
//! time in, the pods to create or delete and the Job's status out.
//!
//! Counting follows Kubernetes' non-indexed Jobs: pods that `Succeeded` count toward
//! `completions`; pods that `Failed` (and, under `restartPolicy: OnFailure`, every
//! container restart of a pod still there) count toward `backoffLimit`. An ended pod is
//! counted once into the Job's status and marked so in the same commit (Kubernetes'
//! job-tracking finalizer, turned around), so the counts survive a restart and the pod's
//! deletion (drain, `delete pod`). Ended pods are kept until the Job goes, for `logs`.
//! A Job's pods are not bound to a node: the core's node-loss eviction deletes the live
//! ones of a lost node and this controller replaces them elsewhere.
//!
//! A failed pod's replacement waits, as in Kubernetes: 10 s after the first failure, doubling
//! with each one, at most 6 min ([`retry_delay`]). A failure's time is when it was counted
//! (the annotation's value), so the wait survives a coordinator restart.
//!
//! Once finished (a `Complete` or `Failed` condition) a Job creates nothing again and
//! its live pods are deleted; `ttlSecondsAfterFinished` later the core deletes the Job.
//! No clock is read here: `now` is an argument.

use std::time::{Duration, SystemTime};

use crate::decide::controller::{is_ready, is_terminating, Action};
use crate::model::api;

/// What the core does for one Job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPlan {
    pub actions: Vec<Action>,
    pub status: api::JobStatus,
    /// Ended pods counted into `status` by this call: the core marks them
    /// ([`api::JOB_COUNTED_ANNOTATION`]) in the same commit.
    pub counted: Vec<String>,
    /// The condition reached by this call, for the Job's event.
    pub finished_now: Option<api::JobCondition>,
    /// Finished `ttlSecondsAfterFinished` ago or more: delete the Job and its pods.
    pub expired: bool,
}

pub const REASON_BACKOFF: &str = "BackoffLimitExceeded";
/// Kubernetes' pod failure back-off: the first retry's wait, and the most it grows to.
pub const RETRY_DELAY_FIRST: Duration = Duration::from_secs(10);
pub const RETRY_DELAY_MAX: Duration = Duration::from_secs(6 * 60);
pub const REASON_DEADLINE: &str = "DeadlineExceeded";

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn parse(t: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(t).ok()
}

/// How long a Job waits after its `failures`-th failed pod before creating another:
/// 10 s, 20 s, 40 s, ... at most 6 min. No wait before any failure.
pub fn retry_delay(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => RETRY_DELAY_FIRST
            .saturating_mul(1u32.checked_shl(n - 1).unwrap_or(u32::MAX))
            .min(RETRY_DELAY_MAX),
    }
}

/// The value of [`api::JOB_COUNTED_ANNOTATION`] on a pod counted at `now`.
pub fn counted_value(now: SystemTime) -> String {
    rfc3339(now)
}

/// When a counted pod was counted (`None` for pods counted before the value was a time).
fn counted_at(p: &api::Pod) -> Option<SystemTime> {
    p.metadata
        .annotations
        .get(api::JOB_COUNTED_ANNOTATION)
        .and_then(|v| parse(v))
}

fn is_counted(p: &api::Pod) -> bool {
    p.metadata
        .annotations
        .contains_key(api::JOB_COUNTED_ANNOTATION)
}

fn is_ended(p: &api::Pod) -> bool {
    matches!(
        p.status.phase,
        api::PodPhase::Succeeded | api::PodPhase::Failed
    )
}

/// The pod the Job wants next, `<job>-<suffix>` as in Kubernetes.
pub fn new_pod(job: &api::Job, suffix: &str) -> api::Pod {
    let template = &job.spec.template;
    let mut labels = template.metadata.labels.clone();
    for key in [api::JOB_NAME_LABEL, api::LEGACY_JOB_NAME_LABEL] {
        labels.insert(key.to_string(), job.metadata.name.clone());
    }
    let mut spec = template.spec.clone();
    spec.node_name = None;
    api::Pod {
        api_version: "v1".to_string(),
        kind: "Pod".to_string(),
        metadata: api::ObjectMeta {
            name: format!("{}-{suffix}", job.metadata.name),
            labels,
            annotations: template.metadata.annotations.clone(),
            job: Some(job.metadata.name.clone()),
            ..Default::default()
        },
        spec,
        status: api::PodStatus::default(),
    }
}

/// Container restarts of a pod, init containers included: under `OnFailure` each one
/// is a failure, as Kubernetes counts them against `backoffLimit`.
fn restarts(p: &api::Pod) -> u32 {
    p.status
        .container_statuses
        .iter()
        .chain(&p.status.init_container_statuses)
        .map(|c| c.restart_count)
        .sum()
}

/// When a finished Job finished: its completion time, or its failure's.
pub fn finished_at(status: &api::JobStatus) -> Option<SystemTime> {
    let c = status.finished()?;
    match c.type_ {
        api::JobConditionType::Complete => status
            .completion_time
            .as_deref()
            .or(Some(c.last_transition_time.as_str())),
        api::JobConditionType::Failed => Some(c.last_transition_time.as_str()),
    }
    .and_then(parse)
}

/// One step of the Job controller. Idempotent: applying the plan and calling again with
/// the result plans nothing more.
pub fn reconcile_job(
    job: &api::Job,
    pods: &[&api::Pod],
    now: SystemTime,
    suffix: &mut dyn FnMut() -> String,
) -> JobPlan {
    let spec = &job.spec;
    let mut status = job.status.clone();
    let now_s = rfc3339(now);
    let start = status
        .start_time
        .get_or_insert_with(|| now_s.clone())
        .clone();
    // Live pods hold a slot until they are gone, terminating or not, so that no more
    // than `parallelism` ever run at once.
    let live: Vec<&api::Pod> = pods.iter().copied().filter(|p| !is_ended(p)).collect();
    let mut active: Vec<&api::Pod> = live
        .iter()
        .copied()
        .filter(|p| !is_terminating(p))
        .collect();
    let uncounted: Vec<&api::Pod> = pods
        .iter()
        .copied()
        .filter(|p| is_ended(p) && !is_counted(p))
        .collect();
    let newly =
        |phase: api::PodPhase| uncounted.iter().filter(|p| p.status.phase == phase).count() as u32;
    let succeeded = status.succeeded + newly(api::PodPhase::Succeeded);
    let failed = status.failed + newly(api::PodPhase::Failed);
    let counted: Vec<String> = uncounted.iter().map(|p| p.metadata.name.clone()).collect();
    let restarted: u32 = if spec.template.spec.restart_policy == api::RestartPolicy::OnFailure {
        live.iter().map(|p| restarts(p)).sum()
    } else {
        0
    };
    status.succeeded = succeeded;
    status.failed = failed;
    let mut actions = Vec::new();
    let mut finished_now = None;
    if status.finished().is_none() {
        let deadline_passed = spec.active_deadline_seconds.is_some_and(|secs| {
            parse(&start).is_some_and(|t| now >= t + Duration::from_secs(secs))
        });
        let complete = match spec.completions {
            Some(c) => succeeded >= c,
            None => succeeded >= 1 && live.is_empty(),
        };
        let condition = if complete {
            Some((api::JobConditionType::Complete, None, None))
        } else if failed + restarted > spec.backoff_limit {
            Some((
                api::JobConditionType::Failed,
                Some(REASON_BACKOFF),
                Some("Job has reached the specified backoff limit"),
            ))
        } else if deadline_passed {
            Some((
                api::JobConditionType::Failed,
                Some(REASON_DEADLINE),
                Some("Job was active longer than specified deadline"),
            ))
        } else {
            None
        };
        if let Some((type_, reason, message)) = condition {
            let c = api::JobCondition {
                type_,
                status: "True".into(),
                reason: reason.map(str::to_owned),
                message: message.map(str::to_owned),
                last_transition_time: now_s.clone(),
            };
            if type_ == api::JobConditionType::Complete {
                status.completion_time = Some(now_s.clone());
            }
            status.conditions.push(c.clone());
            finished_now = Some(c);
        }
    }
    if status.finished().is_some() {
        // Nothing runs for a finished Job: what still runs is stopped.
        actions.extend(
            active
                .drain(..)
                .map(|p| Action::DeletePod(p.metadata.name.clone())),
        );
    } else {
        let want = match spec.completions {
            Some(c) => spec.parallelism.min(c - succeeded) as usize,
            // A work queue: once one pod succeeded, none starts and the others finish on
            // their own.
            None if succeeded > 0 => live.len(),
            None => spec.parallelism as usize,
        };
        // The newest failure: counted earlier (its annotation), or by this call (now).
        let last_failure = if newly(api::PodPhase::Failed) > 0 {
            Some(now)
        } else {
            pods.iter()
                .filter(|p| p.status.phase == api::PodPhase::Failed)
                .filter_map(|p| counted_at(p))
                .max()
        };
        let backing_off = last_failure.is_some_and(|t| now < t + retry_delay(failed));
        if live.len() < want && !backing_off {
            for _ in live.len()..want {
                actions.push(Action::CreatePod(new_pod(job, &suffix())));
            }
            // The new pods are active from now on: the next call's status is this one.
            status.active = (active.len() + want - live.len()) as u32;
        } else if active.len() > want {
            // Parallelism lowered: the newest go first.
            active.sort_by(|a, b| {
                (&b.metadata.creation_timestamp, &b.metadata.name)
                    .cmp(&(&a.metadata.creation_timestamp, &a.metadata.name))
            });
            let extra = active.len() - want;
            actions.extend(
                active
                    .drain(..extra)
                    .map(|p| Action::DeletePod(p.metadata.name.clone())),
            );
        }
    }
    if !actions.iter().any(|a| matches!(a, Action::CreatePod(_))) {
        status.active = active.len() as u32;
    }
    status.ready = active.iter().filter(|p| is_ready(p)).count() as u32;
    let expired = spec.ttl_seconds_after_finished.is_some_and(|ttl| {
        finished_at(&status).is_some_and(|t| now >= t + Duration::from_secs(u64::from(ttl)))
    });
    JobPlan {
        actions,
        status,
        counted,
        finished_now,
        expired,
    }
}

#[cfg(test)]
mod tests;
