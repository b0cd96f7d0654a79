//! CronJobs in a lab: an every-minute CronJob's manifest, fired by the coordinator or by
//! its nodes (`baton.io/schedule-on: node`), and the Jobs and pods it started.

use anyhow::Result;
use serde_json::Value;

use crate::{items, Lab};

/// Who fires a CronJob's runs.
#[derive(Debug, Clone, Copy)]
pub enum FiredBy<'a> {
    /// The coordinator, as Kubernetes does.
    Coordinator,
    /// The nodes its template selects (`baton.io/schedule-on: node`): this one by its
    /// hostname label, or every node.
    Node(Option<&'a str>),
}

/// A CronJob every minute whose one container, of the lab's busybox, runs `script`.
#[derive(Debug, Clone, Copy)]
pub struct EveryMinute<'a> {
    pub name: &'a str,
    pub fired_by: FiredBy<'a>,
    /// `Allow`, `Forbid` or `Replace`.
    pub policy: &'a str,
    /// `Never` or `OnFailure`.
    pub restart: &'a str,
    pub script: &'a str,
    /// `successfulJobsHistoryLimit` (Kubernetes' default, 3, without).
    pub successful_history: Option<u32>,
    /// A ConfigMap mounted at `/cfg` in the container.
    pub config_map: Option<&'a str>,
}

impl<'a> EveryMinute<'a> {
    /// `name` running `script`, fired by the coordinator, `Allow`, `OnFailure`.
    pub fn new(name: &'a str, script: &'a str) -> Self {
        Self {
            name,
            fired_by: FiredBy::Coordinator,
            policy: "Allow",
            restart: "OnFailure",
            script,
            successful_history: None,
            config_map: None,
        }
    }

    /// The manifest, with the image from `registry` (`Lab::registry`).
    pub fn yaml(&self, registry: &str) -> String {
        let Self {
            name,
            policy,
            restart,
            script,
            ..
        } = self;
        let (annotations, selector) = match self.fired_by {
            FiredBy::Coordinator => (String::new(), String::new()),
            FiredBy::Node(node) => (
                "  annotations:\n    baton.io/schedule-on: node\n".to_owned(),
                node.map(|n| {
                    format!("          nodeSelector:\n            kubernetes.io/hostname: {n}\n")
                })
                .unwrap_or_default(),
            ),
        };
        let (mounts, volumes) = match self.config_map {
            Some(cm) => (
                "            volumeMounts: [{name: cfg, mountPath: /cfg}]\n".to_owned(),
                format!("          volumes: [{{name: cfg, configMap: {{name: {cm}}}}}]\n"),
            ),
            None => (String::new(), String::new()),
        };
        let history = self
            .successful_history
            .map(|n| format!("  successfulJobsHistoryLimit: {n}\n"))
            .unwrap_or_default();
        format!(
            r#"apiVersion: batch/v1
kind: CronJob
metadata:
  name: {name}
{annotations}spec:
  schedule: "* * * * *"
  concurrencyPolicy: {policy}
{history}  jobTemplate:
    spec:
      template:
        spec:
{selector}          restartPolicy: {restart}
          terminationGracePeriodSeconds: 1
          containers:
          - name: work
            image: {registry}/baton/busybox:1
            command: [sh, -c, "{script}"]
{mounts}{volumes}"#
        )
    }
}

/// The Jobs a CronJob started (or its nodes reported), as the API shows them.
pub fn jobs_of(lab: &Lab, cron: &str) -> Result<Vec<Value>> {
    Ok(items(&lab.get_json(&["get", "jobs"])?)
        .into_iter()
        .filter(|j| j["metadata"]["cronJob"] == cron)
        .collect())
}

/// The node that ran a node-fired run's Job (`baton.io/node`).
pub fn run_node(job: &Value) -> &str {
    job["metadata"]["annotations"]["baton.io/node"]
        .as_str()
        .unwrap_or_default()
}

/// The pod of a Job (`metadata.job`), as `get pods` shows it, if there is one.
pub fn pod_of(lab: &Lab, job: &str) -> Result<Option<Value>> {
    Ok(lab
        .pods()?
        .into_iter()
        .find(|p| p["metadata"]["job"] == job))
}

/// `baton logs POD`'s output, or the error.
pub fn logs(lab: &Lab, pod: &str) -> Result<String> {
    let out = lab.baton_raw(&["logs", pod], None)?;
    anyhow::ensure!(
        out.status.success(),
        "baton logs {pod}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
