//! Jobs: applying them, their controller's plans (`crate::decide::job`), their status and
//! deletion. A Job's pods are scheduled like a Deployment's (not bound to a node), carry
//! `metadata.job`, and stay in the store once ended (for `logs`), marked counted in the
//! commit that counts them.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::contract::{Applied, ApplyAction, ResourceKind};
use crate::decide::controller::Action;
use crate::decide::job;
use crate::model::api;

use super::{new_uid, random_suffix, ApiError, Core, Tab};

impl Core {
    pub(super) fn job_pods<'a>(
        pods: &'a BTreeMap<String, api::Pod>,
        name: &str,
    ) -> Vec<&'a api::Pod> {
        pods.values()
            .filter(|p| p.metadata.job.as_deref() == Some(name))
            .collect()
    }

    /// Runs each Job's plan at `now`: pods created or deleted, status written, and Jobs
    /// whose `ttlSecondsAfterFinished` ran out deleted. Called when settling and at each
    /// tick (deadlines and ttls fall due with no other change).
    pub(super) fn run_jobs(&mut self, now: SystemTime) {
        let names: Vec<String> = self.jobs.keys().cloned().collect();
        for name in names {
            let Some(j) = self.jobs.get(&name) else {
                continue;
            };
            if j.run_node().is_some() {
                // A node's own run of a node-scheduled CronJob: recorded, never run here.
                continue;
            }
            let plan = {
                let owned = Self::job_pods(&self.pods, &name);
                let mut suffix = random_suffix;
                job::reconcile_job(j, &owned, now, &mut suffix)
            };
            if plan.expired {
                self.remove_job(&name, "TTL after finished ran out");
                continue;
            }
            for action in plan.actions {
                match action {
                    Action::CreatePod(mut pod) => {
                        let pod_name = pod.metadata.name.clone();
                        if self.pods.contains_key(&pod_name) {
                            tracing::warn!(pod = %pod_name, "pod name taken; retrying at the next change");
                            continue;
                        }
                        pod.metadata.uid = new_uid();
                        pod.metadata.creation_timestamp = api::now_rfc3339();
                        self.pods.insert(pod_name.clone(), pod);
                        self.touch(Tab::Pod, &pod_name);
                        self.record(
                            format!("job/{name}"),
                            "SuccessfulCreate",
                            format!("Created pod: {pod_name}"),
                        );
                    }
                    Action::DeletePod(pod_name) => {
                        if self.terminate_pod(&pod_name, &format!("Deleted by job {name}")) {
                            self.record(
                                format!("job/{name}"),
                                "SuccessfulDelete",
                                format!("Deleted pod: {pod_name}"),
                            );
                        }
                    }
                }
            }
            for pod_name in &plan.counted {
                if let Some(p) = self.pods.get_mut(pod_name) {
                    p.metadata
                        .annotations
                        .insert(api::JOB_COUNTED_ANNOTATION.into(), job::counted_value(now));
                    self.touch(Tab::Pod, pod_name);
                }
            }
            if let Some(c) = &plan.finished_now {
                let (reason, message) = match c.type_ {
                    api::JobConditionType::Complete => ("Completed", "Job completed".to_owned()),
                    api::JobConditionType::Failed => (
                        c.reason.as_deref().unwrap_or("Failed"),
                        c.message.clone().unwrap_or_default(),
                    ),
                };
                self.record(format!("job/{name}"), reason, message);
            }
            if let Some(j) = self.jobs.get_mut(&name) {
                if j.status != plan.status {
                    j.status = plan.status;
                    self.touch(Tab::Job, &name);
                }
            }
        }
    }

    pub(super) fn apply_job(&mut self, mut j: api::Job) -> Applied {
        let name = j.metadata.name.clone();
        let action = match self.jobs.get(&name) {
            None => {
                j.metadata.uid = new_uid();
                j.metadata.creation_timestamp = api::now_rfc3339();
                j.metadata.generation = 1;
                j.status = api::JobStatus::default();
                self.jobs.insert(name.clone(), j);
                ApplyAction::Created
            }
            Some(old) => {
                match super::requests::reapplied((&old.metadata, &old.spec), (j.metadata, j.spec)) {
                    None => ApplyAction::Unchanged,
                    Some((metadata, spec)) => {
                        let mut new = old.clone();
                        (new.metadata, new.spec) = (metadata, spec);
                        self.jobs.insert(name.clone(), new);
                        ApplyAction::Configured
                    }
                }
            }
        };
        if action != ApplyAction::Unchanged {
            self.touch(Tab::Job, &name);
        }
        Applied {
            kind: ResourceKind::Job,
            name,
            action,
        }
    }

    /// Kubernetes' rule: a Job's pod template and completions cannot change; its
    /// parallelism, deadline, backoff limit and ttl can.
    pub(super) fn check_job_change(&self, j: &api::Job) -> Result<(), ApiError> {
        let Some(old) = self.jobs.get(&j.metadata.name) else {
            return Ok(());
        };
        for (field, same) in [
            ("spec.template", old.spec.template == j.spec.template),
            (
                "spec.completions",
                old.spec.completions == j.spec.completions,
            ),
        ] {
            if !same {
                return Err(ApiError::Conflict(format!(
                    "job {:?}: {field} is immutable; delete the job and apply again",
                    j.metadata.name
                )));
            }
        }
        Ok(())
    }

    /// `delete job NAME`: the Job and all its pods, running or ended.
    pub(super) fn delete_job(&mut self, name: &str) -> Result<(), ApiError> {
        if !self.jobs.contains_key(name) {
            return Err(Self::not_found(ResourceKind::Job, name));
        }
        self.remove_job(name, "Deleted by the user");
        Ok(())
    }

    pub(super) fn remove_job(&mut self, name: &str, why: &str) {
        self.jobs.remove(name);
        self.touch(Tab::Job, name);
        let owned: Vec<String> = Self::job_pods(&self.pods, name)
            .into_iter()
            .map(|p| p.metadata.name.clone())
            .collect();
        for pod in owned {
            self.terminate_pod(&pod, &format!("Job {name} deleted"));
        }
        self.record(format!("job/{name}"), "Deleted", why.to_owned());
    }
}
