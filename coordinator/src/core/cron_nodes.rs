//! Node-scheduled CronJobs (`baton.io/schedule-on: node`, `crate::decide::cron_node`):
//! what each node is sent in its desired state, and the runs nodes report, recorded as
//! Jobs of the CronJob with a pod each (`metadata.cronJob` set: a pod of the node's own,
//! never sent to it, evicted or drained; its status comes in the node's `Status`). The
//! coordinator never fires them.

use std::collections::BTreeMap;
use std::time::SystemTime;

use baton_proto as proto;

use crate::decide::{cron_node, cronjob, job};
use crate::model::{api, wire};

use super::{new_uid, ApiError, Core, Tab};

/// The oldest agent protocol that fires CronJobs itself.
pub(super) const NODE_CRON_PROTO: u16 = 5;

/// A node-scheduled CronJob as its nodes are sent it, for the incarnation, spec and
/// horizon it was made from (expanding a horizon is a thousand schedule steps: done
/// once per change, not once per node and commit).
pub(super) struct Sent {
    key: (String, u64, Option<String>, bool),
    pub(super) cron: proto::NodeCron,
    /// When its horizon is half over (Unix seconds): until then the horizon stays.
    pub(super) renew_at: u64,
}

impl Core {
    /// Makes again the [`Sent`] form of every node-scheduled CronJob whose spec or
    /// horizon changed; forgets those gone.
    pub(super) fn refresh_node_crons(&mut self) {
        let mut next = BTreeMap::new();
        for (name, cj) in self.cron_jobs.iter().filter(|(_, c)| c.on_node()) {
            let key = (
                cj.metadata.uid.clone(),
                cj.metadata.generation,
                cj.status.node_horizon_start.clone(),
                cj.spec.suspend,
            );
            if let Some(s) = self.node_crons.remove(name).filter(|s| s.key == key) {
                next.insert(name.clone(), s);
                continue;
            }
            let start = cj
                .status
                .node_horizon_start
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .unwrap_or_else(SystemTime::now);
            let mut pod = job::new_pod(&cronjob::new_job(cj, SystemTime::UNIX_EPOCH), "run");
            pod.metadata.uid = cj.metadata.uid.clone();
            let made = wire::pod_spec(&pod)
                .map_err(|e| e.to_string())
                .and_then(|pod| cron_node::node_cron(cj, pod, start).map_err(|e| e.to_string()));
            match made {
                Ok(cron) => {
                    let start = start
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs();
                    // Suspended (no instants): looked at again after half the days limit.
                    let renew_at = cron_node::renew_at(start, cron.first, &cron.deltas);
                    next.insert(
                        name.clone(),
                        Sent {
                            key,
                            cron,
                            renew_at,
                        },
                    );
                }
                // Checked on apply; only a store written by another version gets here.
                Err(e) => tracing::warn!(cronjob = %name, error = %e, "cannot send to nodes"),
            }
        }
        self.node_crons = next;
    }

    /// Whether `cj`'s horizon, as sent, may stay at `now` (nothing to expand this tick).
    pub(super) fn horizon_holds(&self, cj: &api::CronJob, now: SystemTime) -> bool {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.node_crons.get(&cj.metadata.name).is_some_and(|s| {
            s.key.0 == cj.metadata.uid
                && s.key.1 == cj.metadata.generation
                && s.key.2 == cj.status.node_horizon_start
                && now < s.renew_at
        })
    }

    /// The node-scheduled CronJobs `node` fires: those its pod templates select, for an
    /// agent that can (protocol v5), unless the node is revoked.
    pub(super) fn desired_crons(&self, node: &str) -> Vec<proto::NodeCron> {
        let Some(n) = self.nodes.get(node) else {
            return Vec::new();
        };
        if self.revoked.contains(node) || n.status.protocol_version < NODE_CRON_PROTO {
            return Vec::new();
        }
        self.node_crons
            .iter()
            .filter(|(name, _)| {
                self.cron_jobs
                    .get(*name)
                    .is_some_and(|cj| cron_node::node_wants(cj, n))
            })
            .map(|(_, s)| s.cron.clone())
            .take(proto::MAX_NODE_CRONS)
            .collect()
    }

    /// Says once, on the CronJob, which selected nodes cannot fire it: their agent speaks
    /// protocol v4 (Baton 0.1), which has no node-scheduled CronJobs, so it is withheld.
    pub(super) fn note_old_cron_nodes(&mut self, name: &str) {
        let Some(cj) = self.cron_jobs.get(name).filter(|c| c.on_node()) else {
            return;
        };
        let old: Vec<(String, u16)> = self
            .nodes
            .values()
            .filter(|n| n.status.protocol_version < NODE_CRON_PROTO)
            .filter(|n| cron_node::node_wants(cj, n))
            .map(|n| (n.metadata.name.clone(), n.status.protocol_version))
            .collect();
        let key = format!("cronjob/{name}");
        for (node, version) in old {
            let message = format!(
                "node {node} runs an agent of protocol v{version}, which cannot fire CronJobs \
                 itself; not sent to it (upgrade its agent to protocol v{NODE_CRON_PROTO})"
            );
            if !self
                .events_of(Some(&key))
                .iter()
                .any(|e| e.message == message)
            {
                self.record(key.clone(), "NodeProtocolTooOld", message);
            }
        }
    }

    /// A node's report of its runs: each recorded as a Job of its CronJob (by name, so a
    /// run reported again is not recorded twice), and an untrusted clock said on the node.
    pub(super) fn record_node_runs(&mut self, node: &str, report: proto::CronReport) {
        if report.clock_untrusted {
            let key = format!("node/{node}");
            let message = "The node's clock is not trusted (no RTC, and no time learned from \
                           the coordinator yet): it fires no CronJobs"
                .to_string();
            let last = self.events_of(Some(&key)).into_iter().last();
            if last.is_none_or(|e| e.message != message) {
                self.record(key, "CronClockUntrusted", message);
            }
        }
        for run in report.runs.iter() {
            let Some(cj) = self
                .cron_jobs
                .get(run.cron.as_str())
                .filter(|c| c.on_node())
            else {
                continue;
            };
            let cj_name = cj.metadata.name.clone();
            let job_name = cron_node::run_job(cj, node, run).metadata.name;
            let Some(mut job) = cron_node::record_run(cj, node, run, self.jobs.get(&job_name))
            else {
                continue;
            };
            let new_pod = (!self.jobs.contains_key(&job_name))
                .then(|| cron_node::run_pod(cj, &job, node, run));
            if let Some(pod) = new_pod {
                job.metadata.uid = new_uid();
                job.metadata.creation_timestamp = api::now_rfc3339();
                job.metadata.generation = 1;
                self.record(
                    format!("cronjob/{cj_name}"),
                    "SuccessfulCreate",
                    format!("Node {node} ran job {job_name}"),
                );
                // Its pod, once, with the Job: the node's `Status` (sent after this
                // report) fills in its containers.
                let pod_name = pod.metadata.name.clone();
                if !self.pods.contains_key(&pod_name) {
                    self.pods.insert(pod_name.clone(), pod);
                    self.touch(Tab::Pod, &pod_name);
                }
            } else {
                self.end_run_pod(&cj_name, node, run);
            }
            let ended = job.status.finished().map(|c| c.type_);
            self.jobs.insert(job_name.clone(), job);
            self.touch(Tab::Job, &job_name);
            match ended {
                Some(api::JobConditionType::Complete) => self.record(
                    format!("job/{job_name}"),
                    "Completed",
                    format!("Job completed on node {node}"),
                ),
                Some(api::JobConditionType::Failed) => self.record(
                    format!("job/{job_name}"),
                    "Failed",
                    format!("Job failed on node {node}: {}", run_reason(run)),
                ),
                None => {}
            }
            if let Some(cj) = self.cron_jobs.get_mut(&cj_name) {
                let newest = cj.status.node_runs.entry(node.to_owned()).or_default();
                if run.minute > *newest {
                    *newest = run.minute;
                    self.touch(Tab::CronJob, &cj_name);
                }
            }
        }
    }

    /// A run that ended leaves its pod in its phase, whatever the node said last: a pod
    /// the node stops at the end (replaced, past its backoff limit) is not reported again.
    fn end_run_pod(&mut self, cj: &str, node: &str, run: &proto::CronRun) {
        let Some((phase, why)) = cron_node::ended_phase(run) else {
            return;
        };
        let name = cron_node::run_pod_name(cj, run.minute, node);
        let Some(p) = self.pods.get_mut(&name) else {
            return;
        };
        if p.ended() {
            return;
        }
        p.status.phase = phase;
        if why.is_some() {
            p.status.message = why;
        }
        self.touch(Tab::Pod, &name);
    }

    /// The name under which the coordinator keeps the pod `ps` that `node` reports, when
    /// it is the pod of one of its node-scheduled CronJob runs (the device names it
    /// `<cronjob>-<minute>`, the coordinator per node: `cron_node::run_pod_name`).
    pub(super) fn run_pod_key(&self, node: &str, ps: &proto::PodStatus) -> Option<String> {
        let (cj, cj_uid, minute) = cron_node::parse_run_pod(ps.name.as_str(), ps.uid.as_str())?;
        self.cron_jobs
            .get(cj)
            .filter(|c| c.on_node() && c.metadata.uid == cj_uid)?;
        Some(cron_node::run_pod_name(cj, minute, node))
    }

    /// What `apply` checks of a node-scheduled CronJob beyond any CronJob's: the opt-in's
    /// value and what a device can do alone (`cron_node::check`). Its Secrets and
    /// ConfigMaps go to its nodes with their desired state, as their pods' do.
    pub(super) fn check_node_cron_job(&self, c: &api::CronJob) -> Result<(), ApiError> {
        let what = format!("cronjob {:?}", c.metadata.name);
        let Some(v) = c.metadata.annotations.get(api::SCHEDULE_ON_ANNOTATION) else {
            return Ok(());
        };
        if v != "node" {
            return Err(ApiError::BadRequest(format!(
                "{what}: metadata.annotations[\"{}\"]: must be \"node\", got {v:?}",
                api::SCHEDULE_ON_ANNOTATION
            )));
        }
        cron_node::check(c)
            .map_err(|(path, why)| ApiError::BadRequest(format!("{what}: {path}: {why}")))?;
        Ok(())
    }
}

/// Why a run failed, as its node said.
fn run_reason(run: &proto::CronRun) -> &str {
    match &run.outcome {
        proto::CronOutcome::Failed(why) => why.as_str(),
        _ => "",
    }
}
