//! The CronJob controller's decision, pure: the CronJob, its Jobs and the time in, the
//! Job to start, the Jobs to delete and the CronJob's status out. The clock is an
//! argument, so schedules, deadlines and restarts are tested without waiting.
//!
//! As Kubernetes' controller: the run due is the latest scheduled time after the last one
//! started (or the CronJob's creation), and after `now - startingDeadlineSeconds`; so a
//! coordinator that was down for several runs starts at most one on its return, and none
//! if the deadline has passed. `Forbid` skips a run while one is active; `Replace`
//! deletes the active ones first. Ended Jobs beyond the history limits are deleted,
//! oldest first. A Job is named `<cronjob>-<scheduled time in minutes since the epoch>`,
//! so planning the same run twice (say, across a restart) creates it once.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, TimeZone, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

use crate::model::api;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CronError {
    #[error("invalid schedule {0:?}: {1}")]
    Schedule(String, String),
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
}

/// What the core does for one CronJob.
#[derive(Debug, Clone, PartialEq)]
pub struct CronPlan {
    pub create: Option<api::Job>,
    /// Jobs to delete (with their pods): replaced, or beyond the history limits.
    pub delete: Vec<String>,
    pub status: api::CronJobStatus,
    /// A run was due but skipped (`Forbid` with one active), for an event.
    pub skipped: Option<String>,
}

/// A schedule in its zone, parsed once per call.
pub struct Schedule {
    cron: Cron,
    tz: chrono_tz::Tz,
}

impl Schedule {
    /// Parses a standard 5-field schedule (or `@hourly`-style macro) and an IANA zone.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, CronError> {
        if schedule.contains("TZ=") {
            return Err(CronError::Schedule(
                schedule.into(),
                "TZ= is not supported; use timeZone".into(),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .build()
            .parse(schedule)
            .map_err(|e| CronError::Schedule(schedule.into(), e.to_string()))?;
        let tz = match time_zone {
            None => chrono_tz::UTC,
            Some(z) => chrono_tz::Tz::from_str(z).map_err(|_| CronError::TimeZone(z.into()))?,
        };
        Ok(Self { cron, tz })
    }

    /// The latest scheduled time at or before `now`.
    pub fn latest(&self, now: SystemTime) -> Option<SystemTime> {
        let at = DateTime::<Utc>::from(now).with_timezone(&self.tz);
        let t = self.cron.find_previous_occurrence(&at, true).ok()?;
        Some(SystemTime::from(t.with_timezone(&Utc)))
    }

    /// The first scheduled time after `t`.
    pub fn next_after(&self, t: SystemTime) -> Option<SystemTime> {
        let at = self
            .tz
            .from_utc_datetime(&DateTime::<Utc>::from(t).naive_utc());
        let n = self.cron.find_next_occurrence(&at, false).ok()?;
        Some(SystemTime::from(n.with_timezone(&Utc)))
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn parse(t: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(t).ok()
}

fn minutes(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 60
}

/// The Job a CronJob starts for its run scheduled at `scheduled`.
pub fn new_job(cj: &api::CronJob, scheduled: SystemTime) -> api::Job {
    let t = &cj.spec.job_template;
    let mut annotations = t.metadata.annotations.clone();
    annotations.insert(
        api::SCHEDULED_TIMESTAMP_ANNOTATION.to_string(),
        rfc3339(scheduled),
    );
    api::Job {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        metadata: api::ObjectMeta {
            name: format!("{}-{}", cj.metadata.name, minutes(scheduled)),
            labels: t.metadata.labels.clone(),
            annotations,
            cron_job: Some(cj.metadata.name.clone()),
            ..Default::default()
        },
        spec: t.spec.clone(),
        status: api::JobStatus::default(),
    }
}

/// One step of the CronJob controller at `now`, given its Jobs.
pub fn reconcile_cron_job(
    cj: &api::CronJob,
    jobs: &[&api::Job],
    now: SystemTime,
) -> Result<CronPlan, CronError> {
    let spec = &cj.spec;
    let schedule = Schedule::parse(&spec.schedule, spec.time_zone.as_deref())?;
    let mut status = cj.status.clone();
    let mut delete = Vec::new();
    let (mut active, mut ended): (Vec<&api::Job>, Vec<&api::Job>) =
        jobs.iter().partition(|j| j.status.finished().is_none());
    status.last_successful_time = jobs
        .iter()
        .filter_map(|j| j.status.completion_time.clone())
        .max()
        .or(status.last_successful_time);

    // History: the newest ended Jobs of each outcome stay, per node for a CronJob its
    // nodes fire (each keeps its own history: a fleet of 100 must not keep 3 runs in
    // all), else over all.
    ended.sort_by(|a, b| {
        (&a.metadata.creation_timestamp, &a.metadata.name)
            .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
    });
    let run_node = |j: &api::Job| {
        j.metadata
            .annotations
            .get(api::RUN_NODE_ANNOTATION)
            .cloned()
    };
    let nodes: std::collections::BTreeSet<Option<String>> =
        ended.iter().map(|j| run_node(j)).collect();
    for ((kind, limit), node) in [
        (
            api::JobConditionType::Complete,
            spec.successful_jobs_history_limit,
        ),
        (
            api::JobConditionType::Failed,
            spec.failed_jobs_history_limit,
        ),
    ]
    .into_iter()
    .flat_map(|k| nodes.iter().map(move |n| (k, n)))
    {
        let of_kind: Vec<&&api::Job> = ended
            .iter()
            .filter(|j| j.status.finished().map(|c| c.type_) == Some(kind))
            .filter(|j| run_node(j) == *node)
            .collect();
        let extra = of_kind.len().saturating_sub(limit as usize);
        delete.extend(of_kind[..extra].iter().map(|j| j.metadata.name.clone()));
    }

    let mut create = None;
    let mut skipped = None;
    let created = parse(&cj.metadata.creation_timestamp).unwrap_or(now);
    let mut earliest = status
        .last_schedule_time
        .as_deref()
        .and_then(parse)
        .unwrap_or(created);
    if let Some(d) = spec.starting_deadline_seconds {
        if let Some(floor) = now.checked_sub(Duration::from_secs(d)) {
            earliest = earliest.max(floor);
        }
    }
    let due = schedule.latest(now).filter(|t| *t > earliest);
    if cj.on_node() {
        // The nodes fire it (`super::cron_node`); here only what they report is recorded.
        status.last_schedule_time = jobs
            .iter()
            .filter_map(|j| {
                j.metadata
                    .annotations
                    .get(api::SCHEDULED_TIMESTAMP_ANNOTATION)
            })
            .filter_map(|t| parse(t))
            .max()
            .map(rfc3339)
            .or(status.last_schedule_time);
        // Its horizon moves in `super::cron_node::horizon_start`.
    } else if let (Some(t), false) = (due, spec.suspend) {
        let job = new_job(cj, t);
        if jobs.iter().any(|j| j.metadata.name == job.metadata.name) {
            status.last_schedule_time = Some(rfc3339(t));
        } else if spec.concurrency_policy == api::ConcurrencyPolicy::Forbid && !active.is_empty() {
            // Not recorded as scheduled: as in Kubernetes, it runs once the active one
            // ends if the starting deadline still allows.
            skipped = Some(rfc3339(t));
        } else {
            if spec.concurrency_policy == api::ConcurrencyPolicy::Replace {
                delete.extend(active.drain(..).map(|j| j.metadata.name.clone()));
            }
            status.last_schedule_time = Some(rfc3339(t));
            create = Some(job);
        }
    }
    status.active = active
        .iter()
        .map(|j| j.metadata.name.clone())
        .chain(create.iter().map(|j| j.metadata.name.clone()))
        .collect();
    status.active.sort();
    Ok(CronPlan {
        create,
        delete,
        status,
        skipped,
    })
}

#[cfg(test)]
mod tests;
