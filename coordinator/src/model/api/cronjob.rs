//! CronJobs (`batch/v1`): a Job template run on a cron schedule by the coordinator.

use serde::{Deserialize, Serialize};

use super::*;

/// Kubernetes' defaults for the history limits.
pub const DEFAULT_SUCCESSFUL_JOBS_HISTORY_LIMIT: u32 = 3;
pub const DEFAULT_FAILED_JOBS_HISTORY_LIMIT: u32 = 1;
/// The annotation on a CronJob's Job: the scheduled time it runs for (RFC 3339).
pub const SCHEDULED_TIMESTAMP_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// The opt-in on a CronJob (value `node`): every node its pod template selects fires it
/// on its own clock, also offline; the coordinator never fires it.
pub const SCHEDULE_ON_ANNOTATION: &str = "baton.io/schedule-on";
/// On a Job recorded from a node's run of a node-scheduled CronJob: the node.
pub const RUN_NODE_ANNOTATION: &str = "baton.io/node";

impl CronJob {
    /// Fired by the nodes themselves (`baton.io/schedule-on: node`).
    pub fn on_node(&self) -> bool {
        self.metadata
            .annotations
            .get(SCHEDULE_ON_ANNOTATION)
            .is_some_and(|v| v == "node")
    }
}

impl Job {
    /// The node whose own run of a node-scheduled CronJob this Job records: the Job
    /// controller leaves it alone (it has no pods here).
    pub fn run_node(&self) -> Option<&str> {
        self.metadata
            .annotations
            .get(RUN_NODE_ANNOTATION)
            .map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CronJob {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: CronJobSpec,
    #[serde(default)]
    pub status: CronJobStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CronJobSpec {
    /// Standard 5-field cron, or a macro such as `@hourly`; checked on apply.
    pub schedule: String,
    /// An IANA zone name; `None`: UTC (the coordinator's clock is read as UTC, so a
    /// schedule means the same on every hub).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// A run later than this after its scheduled time is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline_seconds: Option<u64>,
    #[serde(default)]
    pub suspend: bool,
    pub successful_jobs_history_limit: u32,
    pub failed_jobs_history_limit: u32,
    pub job_template: JobTemplateSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobTemplateSpec {
    #[serde(default)]
    pub metadata: TemplateMeta,
    pub spec: JobSpec,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConcurrencyPolicy {
    /// Runs overlap freely.
    #[default]
    Allow,
    /// A run due while one is active is skipped.
    Forbid,
    /// A run due while one is active replaces it.
    Replace,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CronJobStatus {
    /// The Jobs of this CronJob that have not finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<String>,
    /// The scheduled time of the last run started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<String>,
    /// Node-scheduled: where the instants sent to the nodes start (RFC 3339); moved to
    /// the present once half the horizon has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_horizon_start: Option<String>,
    /// Node-scheduled: per node, the newest run recorded (minutes since the epoch), so a
    /// run reported again after its Job left the history is not recorded twice.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_runs: BTreeMap<String, u32>,
}
