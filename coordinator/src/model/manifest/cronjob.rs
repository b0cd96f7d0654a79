//! A `CronJob` (`batch/v1`): schedule, policies, history limits and a Job template. The
//! core checks the schedule and time zone on apply with the controller's own parser
//! (the model cannot import the deciders), so what is accepted is what runs.

use super::input::InCronJob;
use super::job::job_spec;
use super::validate::{annotations, invalid, labels, object_meta, Invalid};
use super::MAX_CRON_JOB_NAME_LEN;
use crate::model::api;

pub(super) fn cron_job(input: InCronJob) -> Result<api::CronJob, Invalid> {
    let metadata = object_meta(input.metadata, MAX_CRON_JOB_NAME_LEN)?;
    let spec = input.spec;
    let Some(schedule) = spec.schedule.filter(|s| !s.trim().is_empty()) else {
        return invalid("spec.schedule", "required");
    };
    let limit = |field: &str, v: Option<i64>, default: u32| -> Result<u32, Invalid> {
        match v {
            None => Ok(default),
            Some(n) if (0..=i64::from(i32::MAX)).contains(&n) => Ok(n as u32),
            Some(n) => invalid(
                format!("spec.{field}"),
                format!("must be between 0 and {}, got {n}", i32::MAX),
            ),
        }
    };
    let starting_deadline_seconds = match spec.starting_deadline_seconds {
        None => None,
        Some(n) if n >= 0 => Some(n as u64),
        Some(n) => {
            return invalid(
                "spec.startingDeadlineSeconds",
                format!("must be at least 0, got {n}"),
            )
        }
    };
    let t = spec.job_template;
    labels("spec.jobTemplate.metadata.labels", &t.metadata.labels)?;
    annotations(
        "spec.jobTemplate.metadata.annotations",
        &t.metadata.annotations,
    )?;
    Ok(api::CronJob {
        api_version: "batch/v1".into(),
        kind: "CronJob".into(),
        metadata,
        spec: api::CronJobSpec {
            schedule,
            time_zone: spec.time_zone,
            concurrency_policy: spec.concurrency_policy.unwrap_or_default(),
            starting_deadline_seconds,
            suspend: spec.suspend.unwrap_or(false),
            successful_jobs_history_limit: limit(
                "successfulJobsHistoryLimit",
                spec.successful_jobs_history_limit,
                api::DEFAULT_SUCCESSFUL_JOBS_HISTORY_LIMIT,
            )?,
            failed_jobs_history_limit: limit(
                "failedJobsHistoryLimit",
                spec.failed_jobs_history_limit,
                api::DEFAULT_FAILED_JOBS_HISTORY_LIMIT,
            )?,
            job_template: api::JobTemplateSpec {
                metadata: api::TemplateMeta {
                    labels: t.metadata.labels,
                    annotations: t.metadata.annotations,
                },
                spec: job_spec("spec.jobTemplate.spec", t.spec)?,
            },
        },
        status: api::CronJobStatus::default(),
    })
}
