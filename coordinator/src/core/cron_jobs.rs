//! CronJobs: applying them, their controller's plans (`crate::decide::cronjob`) at each
//! tick and change, and deletion with their Jobs. The Jobs they start are ordinary Jobs
//! (`core::jobs`) with `metadata.cronJob` set.

use std::time::SystemTime;

use crate::contract::{Applied, ApplyAction, ResourceKind};
use crate::decide::policy;
use crate::decide::{cron_node, cronjob};
use crate::model::api;

use super::requests::check_wire;
use super::{new_uid, ApiError, Core, Tab};

impl Core {
    fn cron_jobs_jobs<'a>(&'a self, name: &str) -> Vec<&'a api::Job> {
        self.jobs
            .values()
            .filter(|j| j.metadata.cron_job.as_deref() == Some(name))
            .collect()
    }

    /// Runs each CronJob's plan at `now`: a Job started when one is due, Jobs deleted
    /// (replaced, or beyond the history limits), status written.
    pub(super) fn run_cron_jobs(&mut self, now: SystemTime) {
        let names: Vec<String> = self.cron_jobs.keys().cloned().collect();
        for name in names {
            let Some(cj) = self.cron_jobs.get(&name) else {
                continue;
            };
            let plan = match cronjob::reconcile_cron_job(cj, &self.cron_jobs_jobs(&name), now)
                .and_then(|mut plan| {
                    if cj.on_node() && !self.horizon_holds(cj, now) {
                        plan.status = cron_node::with_horizon(cj, plan.status, now)?;
                    }
                    Ok(plan)
                }) {
                Ok(plan) => plan,
                Err(e) => {
                    // Checked on apply; only a store written by another version gets here.
                    tracing::warn!(cronjob = %name, error = %e, "cannot schedule");
                    continue;
                }
            };
            for job in &plan.delete {
                if self.jobs.contains_key(job) {
                    self.remove_job(job, &format!("Deleted by cronjob {name}"));
                    self.record(
                        format!("cronjob/{name}"),
                        "SuccessfulDelete",
                        format!("Deleted job {job}"),
                    );
                }
            }
            if let Some(mut job) = plan.create {
                let job_name = job.metadata.name.clone();
                job.metadata.uid = new_uid();
                job.metadata.creation_timestamp = api::now_rfc3339();
                job.metadata.generation = 1;
                self.jobs.insert(job_name.clone(), job);
                self.touch(Tab::Job, &job_name);
                self.record(
                    format!("cronjob/{name}"),
                    "SuccessfulCreate",
                    format!("Created job {job_name}"),
                );
            }
            if let Some(t) = &plan.skipped {
                let key = format!("cronjob/{name}");
                let message = format!("Run of {t} skipped: a job is still active (Forbid)");
                // One event per skipped run, not one per tick.
                if !self
                    .events_of(Some(&key))
                    .iter()
                    .any(|e| e.message == message)
                {
                    self.record(key, "JobAlreadyActive", message);
                }
            }
            self.note_old_cron_nodes(&name);
            if let Some(cj) = self.cron_jobs.get_mut(&name) {
                if cj.status != plan.status {
                    cj.status = plan.status;
                    self.touch(Tab::CronJob, &name);
                }
            }
        }
    }

    /// What `apply` checks of a CronJob before anything changes: its schedule and time
    /// zone (with the controller's parser), and its pod template as a Job's.
    pub(super) fn check_cron_job(&self, c: &api::CronJob) -> Result<(), ApiError> {
        let what = format!("cronjob {:?}", c.metadata.name);
        cronjob::Schedule::parse(&c.spec.schedule, c.spec.time_zone.as_deref()).map_err(|e| {
            let path = match e {
                cronjob::CronError::Schedule(..) => "spec.schedule",
                cronjob::CronError::TimeZone(_) => "spec.timeZone",
            };
            ApiError::BadRequest(format!("{what}: {path}: {e}"))
        })?;
        self.check_node_cron_job(c)?;
        let job = cronjob::new_job(c, SystemTime::UNIX_EPOCH);
        check_wire(&crate::decide::job::new_pod(&job, "xxxxx"), &what)?;
        policy::check_pod(
            &c.spec.job_template.spec.template.spec,
            "spec.jobTemplate.spec.template.spec",
            &self.policy,
        )
        .map_err(|e| ApiError::BadRequest(format!("{what}: {e}")))
    }

    pub(super) fn apply_cron_job(&mut self, mut c: api::CronJob) -> Applied {
        let name = c.metadata.name.clone();
        let action = match self.cron_jobs.get(&name) {
            None => {
                c.metadata.uid = new_uid();
                c.metadata.creation_timestamp = api::now_rfc3339();
                c.metadata.generation = 1;
                c.status = api::CronJobStatus::default();
                self.cron_jobs.insert(name.clone(), c);
                ApplyAction::Created
            }
            Some(old) => {
                match super::requests::reapplied((&old.metadata, &old.spec), (c.metadata, c.spec)) {
                    None => ApplyAction::Unchanged,
                    Some((metadata, spec)) => {
                        let mut new = old.clone();
                        (new.metadata, new.spec) = (metadata, spec);
                        self.cron_jobs.insert(name.clone(), new);
                        ApplyAction::Configured
                    }
                }
            }
        };
        if action != ApplyAction::Unchanged {
            self.touch(Tab::CronJob, &name);
        }
        Applied {
            kind: ResourceKind::CronJob,
            name,
            action,
        }
    }

    /// `delete cronjob NAME`: the CronJob and its Jobs with their pods.
    pub(super) fn delete_cron_job(&mut self, name: &str) -> Result<(), ApiError> {
        if self.cron_jobs.remove(name).is_none() {
            return Err(Self::not_found(ResourceKind::CronJob, name));
        }
        self.touch(Tab::CronJob, name);
        let jobs: Vec<String> = self
            .cron_jobs_jobs(name)
            .into_iter()
            .map(|j| j.metadata.name.clone())
            .collect();
        for job in jobs {
            self.remove_job(&job, &format!("CronJob {name} deleted"));
        }
        self.record(
            format!("cronjob/{name}"),
            "Deleted",
            "Deleted by the user".into(),
        );
        Ok(())
    }
}
