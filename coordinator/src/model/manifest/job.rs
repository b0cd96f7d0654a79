//! A `Job` (`batch/v1`): counts, limits and a pod template with restartPolicy `Never` or
//! `OnFailure`.

use super::input::{InJob, InTemplate};
use super::pod::pod_spec;
use super::validate::{annotations, invalid, labels, object_meta, Invalid};
use super::{MAX_JOB_NAME_LEN, MAX_REPLICAS};
use crate::model::api::{self, RestartPolicy};

pub(super) fn job(input: InJob) -> Result<api::Job, Invalid> {
    let metadata = object_meta(input.metadata, MAX_JOB_NAME_LEN)?;
    Ok(api::Job {
        api_version: "batch/v1".to_string(),
        kind: "Job".to_string(),
        metadata,
        spec: job_spec("spec", input.spec)?,
        status: api::JobStatus::default(),
    })
}

/// A Job's spec at `path` (`spec`, or a CronJob's `spec.jobTemplate.spec`).
pub(super) fn job_spec(path: &str, spec: super::input::InJobSpec) -> Result<api::JobSpec, Invalid> {
    let count = |field: &str, v: Option<i64>, max: i64| -> Result<Option<u32>, Invalid> {
        match v {
            None => Ok(None),
            Some(n) if (0..=max).contains(&n) => Ok(Some(n as u32)), // within u32, checked
            Some(n) => invalid(
                format!("{path}.{field}"),
                format!("must be between 0 and {max}, got {n}"),
            ),
        }
    };
    let completions = count("completions", spec.completions, MAX_REPLICAS)?;
    let parallelism = count("parallelism", spec.parallelism, MAX_REPLICAS)?;
    let backoff_limit = count("backoffLimit", spec.backoff_limit, i64::from(i32::MAX))?;
    let ttl = count(
        "ttlSecondsAfterFinished",
        spec.ttl_seconds_after_finished,
        i64::from(i32::MAX),
    )?;
    let deadline = match spec.active_deadline_seconds {
        None => None,
        Some(n) if n >= 1 => Some(n as u64),
        Some(n) => {
            return invalid(
                format!("{path}.activeDeadlineSeconds"),
                format!("must be greater than 0, got {n}"),
            )
        }
    };
    // Kubernetes' defaults: neither count given is one pod; parallelism alone is a work
    // queue (no completion count).
    let (completions, parallelism) = match (completions, parallelism) {
        (None, None) => (Some(1), 1),
        (c, p) => (c, p.unwrap_or(1)),
    };
    if completions == Some(0) {
        return invalid(format!("{path}.completions"), "must be at least 1");
    }
    let template = template(&format!("{path}.template"), spec.template)?;
    match template.spec.restart_policy {
        RestartPolicy::Never | RestartPolicy::OnFailure => {}
        RestartPolicy::Always => {
            return invalid(
                format!("{path}.template.spec.restartPolicy"),
                "must be Never or OnFailure for a Job, got Always (the default for a pod: \
                 set it explicitly)",
            )
        }
    }
    if template.spec.node_name.is_some() {
        return invalid(
            format!("{path}.template.spec.nodeName"),
            "not supported for a Job: its pods go wherever the scheduler finds room",
        );
    }
    Ok(api::JobSpec {
        completions,
        parallelism,
        backoff_limit: backoff_limit.unwrap_or(api::DEFAULT_BACKOFF_LIMIT),
        active_deadline_seconds: deadline,
        ttl_seconds_after_finished: ttl,
        template,
    })
}

fn template(path: &str, t: InTemplate) -> Result<api::PodTemplateSpec, Invalid> {
    labels(&format!("{path}.metadata.labels"), &t.metadata.labels)?;
    annotations(
        &format!("{path}.metadata.annotations"),
        &t.metadata.annotations,
    )?;
    for key in [api::JOB_NAME_LABEL, api::LEGACY_JOB_NAME_LABEL] {
        if t.metadata.labels.contains_key(key) {
            return invalid(
                format!("{path}.metadata.labels"),
                format!("{key:?} is set by Baton"),
            );
        }
    }
    Ok(api::PodTemplateSpec {
        metadata: api::TemplateMeta {
            labels: t.metadata.labels,
            annotations: t.metadata.annotations,
        },
        spec: pod_spec(&format!("{path}.spec"), t.spec)?,
    })
}
