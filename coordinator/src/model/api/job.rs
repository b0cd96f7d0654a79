//! Jobs (`batch/v1`): pods run to completion, counted, retried up to a limit.

use serde::{Deserialize, Serialize};

use super::*;

/// The label every pod of a Job carries, as Kubernetes sets it (and its older spelling,
/// which the docs' `kubectl get pods --selector=job-name=pi` uses).
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub const LEGACY_JOB_NAME_LABEL: &str = "job-name";
/// Set on a Job's pod once its end is counted in the Job's status (Kubernetes tracks the
/// same with a finalizer): deleting a counted pod loses nothing, and a pod is never
/// counted twice. Its value is when it was counted (RFC 3339): a failure's time, from which
/// the next pod's back-off counts.
pub const JOB_COUNTED_ANNOTATION: &str = "baton.io/job-counted";
/// Kubernetes' default `backoffLimit`.
pub const DEFAULT_BACKOFF_LIMIT: u32 = 6;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: JobSpec,
    #[serde(default)]
    pub status: JobStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// Successful pods wanted; `None`: a work queue, done when one pod succeeded and
    /// none runs any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completions: Option<u32>,
    /// Pods running at once at most.
    pub parallelism: u32,
    /// Failures (failed pods, and container restarts under `OnFailure`) tolerated.
    pub backoff_limit: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<u32>,
    pub template: PodTemplateSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// When the controller first saw the Job (RFC 3339); the deadline counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When it completed (never set for a failed Job, as in Kubernetes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    #[serde(default)]
    pub active: u32,
    #[serde(default)]
    pub ready: u32,
    #[serde(default)]
    pub succeeded: u32,
    #[serde(default)]
    pub failed: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<JobCondition>,
}

impl JobStatus {
    /// The terminal condition, if the Job has finished.
    pub fn finished(&self) -> Option<&JobCondition> {
        self.conditions.iter().find(|c| c.status == "True")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobCondition {
    #[serde(rename = "type")]
    pub type_: JobConditionType,
    /// `"True"`: Baton only records conditions that hold.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub last_transition_time: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobConditionType {
    Complete,
    Failed,
}
