//! Settling after each change: the deployment controller and the scheduler run over the
//! state, pods drain, and each node's desired state is recomputed and published.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use baton_proto::{self as proto, Body, NodeName};
use tokio::time::Instant;

use crate::decide::controller::{self, Action};
use crate::decide::rollout;
use crate::decide::scheduler::{self, Candidate, Usage};
use crate::model::api;
use crate::model::wire;

use super::{new_uid, random_suffix, Core, Outbound, Tab};

impl Core {
    pub(super) fn settle(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        self.run_controllers();
        // A pod that was not Ready is deleted at once, not drained: nothing marks the
        // state dirty again when it is gone, so its replacement is planned right away.
        // The plans are idempotent, so the extra pass is a no-op when nothing is due.
        for _ in 0..3 {
            if !self.run_daemon_sets() {
                break;
            }
        }
        let now = std::time::SystemTime::now();
        self.run_cron_jobs(now);
        self.refresh_node_crons();
        self.run_jobs(now);
        self.schedule_pending();
        self.update_deployment_statuses();
        self.update_daemon_set_statuses();
        self.update_secret_blocks();
        self.update_desired();
        self.send_config_maps();
        self.send_service_tables();
    }

    pub(super) fn owned<'a>(
        pods: &'a BTreeMap<String, api::Pod>,
        deployment: &str,
    ) -> Vec<&'a api::Pod> {
        pods.values()
            .filter(|p| p.metadata.owner.as_deref() == Some(deployment))
            .collect()
    }

    fn run_controllers(&mut self) {
        let names: Vec<String> = self.deployments.keys().cloned().collect();
        for name in names {
            self.sync_revisions(&name);
            let Some(d) = self.deployments.get(&name) else {
                continue;
            };
            let actions = {
                let owned = Self::owned(&self.pods, &name);
                let mut suffix = random_suffix;
                controller::reconcile_deployment(d, &owned, &mut suffix)
            };
            let (mut created, mut deleted) = (0u32, 0u32);
            for action in actions {
                match action {
                    Action::CreatePod(mut pod) => {
                        let pod_name = pod.metadata.name.clone();
                        if self.pods.contains_key(&pod_name) {
                            tracing::warn!(pod = %pod_name, "pod name taken; retrying at the next change");
                            continue;
                        }
                        pod.metadata.uid = new_uid();
                        pod.metadata.creation_timestamp = api::now_rfc3339();
                        pod.metadata.owner = Some(name.clone());
                        self.pods.insert(pod_name.clone(), pod);
                        self.touch(Tab::Pod, &pod_name);
                        self.record(
                            format!("pod/{pod_name}"),
                            "Created",
                            format!("Created by deployment {name}"),
                        );
                        created += 1;
                    }
                    Action::DeletePod(pod_name) => {
                        if self.terminate_pod(&pod_name, "Deleted by its deployment") {
                            deleted += 1;
                        }
                    }
                }
            }
            if created > 0 || deleted > 0 {
                let live = Self::owned(&self.pods, &name)
                    .into_iter()
                    .filter(|p| !controller::is_terminating(p))
                    .count();
                let msg = match (created, deleted) {
                    (c, 0) => format!("Scaled up to {live} replicas (created {c} pods)"),
                    (0, d) => format!("Scaled down to {live} replicas (deleted {d} pods)"),
                    (c, d) => format!("Replaced pods: created {c}, deleted {d}; {live} replicas"),
                };
                self.record(format!("deployment/{name}"), "ScalingReplicaSet", msg);
            }
        }
    }

    /// Brings a Deployment's stored revisions in line with its template.
    fn sync_revisions(&mut self, name: &str) {
        let Some(d) = self.deployments.get(name) else {
            return;
        };
        let live = Self::owned(&self.pods, name);
        let plan = self.revision_plan(rollout::Versioned::from(d), &live);
        self.apply_revision_plan(name, plan);
    }

    /// What a controller's revisions need, given its pods.
    pub(super) fn revision_plan(
        &self,
        v: rollout::Versioned<'_>,
        pods: &[&api::Pod],
    ) -> rollout::RevisionPlan {
        let live: BTreeSet<String> = pods
            .iter()
            .filter(|p| !controller::is_terminating(p))
            .filter_map(|p| controller::hash_of(p).map(str::to_owned))
            .collect();
        let existing: Vec<&api::Revision> = self
            .revisions
            .values()
            .filter(|r| r.deployment == v.owner)
            .collect();
        rollout::sync_template_revisions(&v, &existing, &live, &api::now_rfc3339())
    }

    /// Writes a revision plan for the revisions kept under `name`.
    pub(super) fn apply_revision_plan(&mut self, name: &str, plan: rollout::RevisionPlan) {
        for rev in plan.delete {
            let key = rollout::revision_key(name, rev);
            self.revisions.remove(&key);
            self.touch(Tab::Revision, &key);
        }
        for r in plan.put {
            let key = rollout::revision_key(name, r.revision);
            self.revisions.insert(key.clone(), r);
            self.touch(Tab::Revision, &key);
        }
    }

    /// A Deployment's revisions, oldest first.
    pub(super) fn revisions_of(&self, name: &str) -> Vec<&api::Revision> {
        let mut revs: Vec<&api::Revision> = self
            .revisions
            .values()
            .filter(|r| r.deployment == name)
            .collect();
        revs.sort_by_key(|r| r.revision);
        revs
    }

    /// Starts deleting a pod; returns whether anything changed.
    ///
    /// A Ready pod may be serving, so it is marked terminating (`deletionTimestamp`) and
    /// stays in its node's desired state for the drain period (see
    /// [`Core::with_pod_drain`]); [`Core::expire_drains`] removes it afterwards. A pod
    /// that is not Ready serves no one and goes at once.
    pub(super) fn terminate_pod(&mut self, name: &str, why: &str) -> bool {
        let Some(pod) = self.pods.get_mut(name) else {
            return false;
        };
        if controller::is_terminating(pod) {
            return false;
        }
        if controller::is_ready(pod) && !self.pod_drain.is_zero() {
            pod.metadata.deletion_timestamp = Some(api::now_rfc3339());
            self.draining
                .insert(name.to_owned(), Instant::now() + self.pod_drain);
        } else {
            self.pods.remove(name);
        }
        self.touch(Tab::Pod, name);
        self.record(format!("pod/{name}"), "Killing", why.to_owned());
        true
    }

    /// Removes terminating pods whose drain period is over, which takes them out of
    /// their node's desired state.
    pub(super) fn expire_drains(&mut self) {
        let now = Instant::now();
        let done: Vec<String> = self
            .draining
            .iter()
            .filter(|(_, end)| **end <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in done {
            self.draining.remove(&name);
            if self.pods.remove(&name).is_some() {
                self.touch(Tab::Pod, &name);
            }
        }
    }

    /// What each node's pods already request (terminated pods release theirs), and how
    /// many pods of each owner each node runs, for spreading.
    fn usage_by_node(&self) -> (HashMap<String, Usage>, HashMap<(String, String), u32>) {
        let mut usage: HashMap<String, Usage> = HashMap::new();
        let mut by_owner: HashMap<(String, String), u32> = HashMap::new();
        for p in self.pods.values() {
            let Some(node) = &p.spec.node_name else {
                continue;
            };
            if matches!(
                p.status.phase,
                api::PodPhase::Succeeded | api::PodPhase::Failed
            ) {
                continue;
            }
            let req = scheduler::pod_requests(&p.spec).unwrap_or(Usage {
                pods: 1,
                ..Usage::default()
            });
            usage.entry(node.clone()).or_default().add(req);
            if let Some(owner) = spread_key(p) {
                *by_owner.entry((node.clone(), owner)).or_default() += 1;
            }
        }
        (usage, by_owner)
    }

    fn schedule_pending(&mut self) {
        let pending: Vec<String> = self
            .pods
            .values()
            .filter(|p| p.spec.node_name.is_none())
            .map(|p| p.metadata.name.clone())
            .collect();
        if pending.is_empty() {
            return;
        }
        let (mut usage, mut by_owner) = self.usage_by_node();
        // Host ports taken per node, so two pods never claim the same node port.
        let mut ports: HashMap<String, BTreeSet<scheduler::HostPort>> = HashMap::new();
        for p in self.pods.values() {
            let Some(node) = &p.spec.node_name else {
                continue;
            };
            if !matches!(
                p.status.phase,
                api::PodPhase::Succeeded | api::PodPhase::Failed
            ) {
                ports
                    .entry(node.clone())
                    .or_default()
                    .extend(scheduler::host_ports(&p.spec));
            }
        }
        for name in pending {
            let Some(pod) = self.pods.get(&name) else {
                continue;
            };
            let owner = spread_key(pod).unwrap_or_default();
            let wanted_ports = scheduler::host_ports(&pod.spec);
            let result = {
                // Not-ready nodes are candidates too: the scheduler filters them out and
                // counts them in its "0/N nodes are available" message.
                let candidates: Vec<Candidate<'_>> = self
                    .nodes
                    .values()
                    .map(|n| Candidate {
                        node: n,
                        host_ports: ports.get(&n.metadata.name).cloned().unwrap_or_default(),
                        used: usage.get(&n.metadata.name).copied().unwrap_or_default(),
                        pods_of_same_owner: if owner.is_empty() {
                            0
                        } else {
                            by_owner
                                .get(&(n.metadata.name.clone(), owner.clone()))
                                .copied()
                                .unwrap_or(0)
                        },
                    })
                    .collect();
                scheduler::schedule(&pod.spec, &candidates)
            };
            match result {
                Ok(node) => {
                    let req = scheduler::pod_requests(&pod.spec).unwrap_or(Usage {
                        pods: 1,
                        ..Usage::default()
                    });
                    let host_ip = self.nodes.get(&node).and_then(|n| n.status.address.clone());
                    if let Some(pod) = self.pods.get_mut(&name) {
                        pod.spec.node_name = Some(node.clone());
                        pod.status.reason = None;
                        pod.status.message = None;
                        pod.status.host_ip = host_ip;
                    }
                    usage.entry(node.clone()).or_default().add(req);
                    ports.entry(node.clone()).or_default().extend(wanted_ports);
                    if !owner.is_empty() {
                        *by_owner.entry((node.clone(), owner)).or_default() += 1;
                    }
                    self.touch(Tab::Pod, &name);
                    self.record(
                        format!("pod/{name}"),
                        "Scheduled",
                        format!("Successfully assigned {name} to {node}"),
                    );
                }
                Err(unschedulable) => {
                    let Some(pod) = self.pods.get_mut(&name) else {
                        continue;
                    };
                    let msg = unschedulable.reason;
                    if pod.status.reason.as_deref() != Some("Unschedulable")
                        || pod.status.message.as_deref() != Some(&msg)
                    {
                        pod.status.phase = api::PodPhase::Pending;
                        pod.status.reason = Some("Unschedulable".into());
                        pod.status.message = Some(msg.clone());
                        self.touch(Tab::Pod, &name);
                        self.record(format!("pod/{name}"), "FailedScheduling", msg);
                    }
                }
            }
        }
    }

    fn update_deployment_statuses(&mut self) {
        let mut changed = Vec::new();
        for (name, d) in &self.deployments {
            let status = controller::deployment_status(d, &Self::owned(&self.pods, name));
            if status != d.status {
                changed.push((name.clone(), status));
            }
        }
        for (name, status) in changed {
            if let Some(d) = self.deployments.get_mut(&name) {
                d.status = status;
                self.touch(Tab::Deployment, &name);
            }
        }
    }

    /// [`Core::desired_pods`] of every node, in one pass over the pods: asking node by node
    /// scanned every pod once per node, on every settle (a fleet's nodes times its pods,
    /// found with `baton-sim`: 1,000 of each made an apply crawl).
    pub(super) fn desired_by_node(&self) -> BTreeMap<String, Vec<proto::PodSpec>> {
        let mut out: BTreeMap<String, Vec<proto::PodSpec>> =
            self.nodes.keys().map(|n| (n.clone(), Vec::new())).collect();
        for p in self.pods.values() {
            let Some(node) = p.spec.node_name.as_deref() else {
                continue;
            };
            let Some(list) = out.get_mut(node) else {
                continue;
            };
            // A node-scheduled CronJob's runs: the node made them, from its `crons`.
            if self.revoked.contains(node) || p.node_run() || self.secret_blocker(p).is_some() {
                continue;
            }
            match wire::pod_spec(p) {
                Ok(spec) => list.push(spec),
                Err(e) => {
                    tracing::error!(node, error = %e, "pod cannot be sent to its node; left out")
                }
            }
        }
        out
    }

    /// The pods a node should run, sorted by name, in wire form.
    pub(super) fn desired_pods(&self, node: &str) -> Vec<proto::PodSpec> {
        let mut out = Vec::new();
        if self.revoked.contains(node) {
            return out;
        }
        for p in self
            .pods
            .values()
            .filter(|p| p.spec.node_name.as_deref() == Some(node))
            // A node-scheduled CronJob's runs: the node made them, from its `crons`.
            .filter(|p| !p.node_run())
            .filter(|p| self.secret_blocker(p).is_none())
        {
            match wire::pod_spec(p) {
                Ok(spec) => out.push(spec),
                Err(e) => {
                    tracing::error!(node, error = %e, "pod cannot be sent to its node; left out")
                }
            }
        }
        out
    }

    fn desired_message(&self, node: &str) -> Option<Outbound> {
        let n = self.nodes.get(node)?;
        let name = NodeName::new(node).ok()?;
        let mut pods = self.desired.get(node).cloned().unwrap_or_default();
        if pods.len() > proto::MAX_PODS_PER_NODE {
            tracing::error!(
                node,
                pods = pods.len(),
                "more pods than a node can be sent; truncated"
            );
            pods.truncate(proto::MAX_PODS_PER_NODE);
        }
        let pods = proto::BVec::from_vec(pods).ok()?;
        let secrets = self.sealed_secrets(node);
        let crons = self.desired_crons.get(node).cloned().unwrap_or_default();
        Some(Outbound {
            node: name,
            body: Body::Desired(proto::DesiredState {
                generation: n.status.desired_generation,
                pods,
                secrets,
                // Stamped by the security gate as it seals (`Body::set_term`).
                term: 0,
                crons: proto::BVec::from_vec(crons).ok()?,
            }),
            retain: true,
        })
    }

    pub(super) fn publish_desired(&mut self, node: &str) {
        if let Some(msg) = self.desired_message(node) {
            self.pending_out.push(msg);
        }
    }

    /// Bumps the generation of every node whose desired content changed, and publishes it.
    fn update_desired(&mut self) {
        for (node, pods) in self.desired_by_node() {
            let crons = self.desired_crons(&node);
            let secrets = self.desired_secret_list_for(&node, &pods, &crons);
            if self.desired.get(&node) == Some(&pods)
                && self.desired_secrets.get(&node) == Some(&secrets)
                && self
                    .desired_crons
                    .get(&node)
                    .map_or(crons.is_empty(), |c| *c == crons)
            {
                continue;
            }
            self.desired.insert(node.clone(), pods);
            self.desired_secrets.insert(node.clone(), secrets);
            self.desired_crons.insert(node.clone(), crons);
            if let Some(n) = self.nodes.get_mut(&node) {
                n.status.desired_generation += 1;
                tracing::debug!(%node, generation = n.status.desired_generation, "desired state changed");
            }
            self.touch(Tab::Node, &node);
            self.publish_desired(&node);
        }
    }
}

/// Whose pods the scheduler spreads over the nodes: a Deployment's, or a Job's (a Job
/// name is keyed `job/NAME`, which no Deployment name can be).
fn spread_key(p: &api::Pod) -> Option<String> {
    p.metadata
        .owner
        .clone()
        .or_else(|| p.metadata.job.as_ref().map(|j| format!("job/{j}")))
}
