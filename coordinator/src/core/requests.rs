//! The API operations: apply, get, delete, scale, describe, events and rollouts.

use crate::contract::body::{ApiObject, SecretView, UndoResult};
use crate::contract::{Applied, ApplyAction, ResourceKind};
use crate::decide::controller;
use crate::decide::daemonset;
use crate::decide::policy;
use crate::decide::rollout::{self, RolloutError};
use crate::model::api;
use crate::model::manifest;
use crate::model::wire;

use super::{new_uid, ApiError, ApiOp, ApiReply, Core, Tab};

/// The namespace of the namespaced object `op` names, if it names one.
fn named_namespace(op: &ApiOp) -> Option<String> {
    let name = match op {
        ApiOp::Get {
            kind,
            name: Some(name),
        }
        | ApiOp::Delete { kind, name }
        | ApiOp::Describe { kind, name }
        | ApiOp::RolloutStatus { kind, name }
        | ApiOp::RolloutHistory { kind, name }
        | ApiOp::RolloutUndo { kind, name, .. }
            if kind.is_namespaced() =>
        {
            name
        }
        ApiOp::Scale { name, .. } | ApiOp::Exec { pod: name, .. } => name,
        _ => return None,
    };
    Some(api::namespace_of(name).to_owned())
}

impl Core {
    /// Answers `op` as the API shows it: names unqualified, with their namespaces
    /// (`namespaces::external_reply`).
    pub(super) fn api(&mut self, op: ApiOp) -> Result<ApiReply, ApiError> {
        // What the core says about a namespaced object (a rollout's messages, its
        // revisions, an error) names it as the caller did: in its namespace, unqualified.
        let ns = named_namespace(&op);
        let reply = self.api_internal(op).map(super::namespaces::external_reply);
        let Some(ns) = ns else { return reply };
        let text = |t: &str| super::namespaces::unqualify_text(t, &ns);
        match reply {
            Ok(ApiReply::Rollout(mut p)) => {
                p.message = text(&p.message);
                p.failure = p.failure.map(|f| text(&f));
                Ok(ApiReply::Rollout(p))
            }
            Ok(ApiReply::Revisions(revisions)) => Ok(ApiReply::Revisions(
                revisions
                    .into_iter()
                    .map(super::namespaces::external_revision)
                    .collect(),
            )),
            Err(e) => Err(e.map_message(text)),
            reply => reply,
        }
    }

    fn api_internal(&mut self, op: ApiOp) -> Result<ApiReply, ApiError> {
        match op {
            ApiOp::Apply {
                yaml,
                namespace,
                access,
            } => self
                .apply(&yaml, namespace.as_deref(), &access)
                .map(ApiReply::Applied),
            ApiOp::Get {
                kind,
                name: Some(name),
            } => self.get_one(kind, &name).map(ApiReply::Object),
            ApiOp::Get { kind, name: None } => Ok(ApiReply::Objects(self.get_all(kind))),
            ApiOp::Delete { kind, name } => self.delete(kind, &name),
            ApiOp::Scale { name, replicas } => self.scale(&name, replicas),
            ApiOp::UpdateNode { name, change } => self.update_node(&name, change),
            ApiOp::Describe { kind, name } => {
                let object = self.get_one(kind, &name)?;
                let events = self.events_of(Some(&format!("{}/{name}", kind.as_str())));
                Ok(ApiReply::Described { object, events })
            }
            ApiOp::Events { object } => Ok(ApiReply::Events(self.events_of(object.as_deref()))),
            ApiOp::Fleet => {
                let mut fleet = crate::metrics::snapshot(
                    self.nodes.values(),
                    self.pods.values(),
                    self.deployments.values(),
                    self.daemon_sets.values(),
                );
                fleet.usage = self.node_usage();
                Ok(ApiReply::Fleet(Box::new(fleet)))
            }
            ApiOp::Top { pods: false } => Ok(ApiReply::NodeUsage(self.node_usage())),
            ApiOp::Top { pods: true } => Ok(ApiReply::PodUsage(self.pod_usage())),
            ApiOp::RolloutStatus {
                kind: ResourceKind::DaemonSet,
                name,
            } => self.daemon_set_rollout(&name).map(ApiReply::Rollout),
            ApiOp::RolloutHistory {
                kind: ResourceKind::DaemonSet,
                name,
            } => {
                if !self.daemon_sets.contains_key(&name) {
                    return Err(Self::not_found(ResourceKind::DaemonSet, &name));
                }
                let owner = api::daemon_set_revision_owner(&name);
                Ok(ApiReply::Revisions(
                    self.revisions_of(&owner).into_iter().cloned().collect(),
                ))
            }
            ApiOp::RolloutUndo {
                kind: ResourceKind::DaemonSet,
                name,
                to_revision,
            } => self
                .undo_daemon_set(&name, to_revision)
                .map(ApiReply::RolledBack),
            ApiOp::RolloutStatus { name, .. } => {
                let d = self
                    .deployments
                    .get(&name)
                    .ok_or_else(|| Self::not_found(ResourceKind::Deployment, &name))?;
                let revision = self.revisions_of(&name).last().map_or(0, |r| r.revision);
                let owned = Self::owned(&self.pods, &name);
                Ok(ApiReply::Rollout(rollout::rollout_progress(
                    d, &owned, revision,
                )))
            }
            ApiOp::RolloutHistory { name, .. } => {
                if !self.deployments.contains_key(&name) {
                    return Err(Self::not_found(ResourceKind::Deployment, &name));
                }
                Ok(ApiReply::Revisions(
                    self.revisions_of(&name).into_iter().cloned().collect(),
                ))
            }
            ApiOp::RolloutUndo {
                name, to_revision, ..
            } => self.undo(&name, to_revision),
            ApiOp::SetRevoked { name, revoked } => Ok(self.set_revoked(&name, revoked)),
            ApiOp::AgentRollout { name, action } => self.agent_rollout(name, action),
            ApiOp::Exec {
                pod,
                container,
                command,
                by,
            } => self
                .exec(&pod, container.as_deref(), &command, &by)
                .map(ApiReply::Exec),
        }
    }

    /// `rollout undo`: puts an earlier revision's template back; the controller then
    /// rolls it out like any template change, and revision bookkeeping renumbers it.
    fn undo(&mut self, name: &str, to: Option<u64>) -> Result<ApiReply, ApiError> {
        let d = self
            .deployments
            .get(name)
            .ok_or_else(|| Self::not_found(ResourceKind::Deployment, name))?;
        let current = controller::template_hash(&d.spec.template);
        let (revision, hash, template) = {
            let revs = self.revisions_of(name);
            let target = rollout::undo_target(name, &revs, &current, to).map_err(|e| match e {
                RolloutError::RevisionNotFound(_) => ApiError::NotFound(e.to_string()),
                RolloutError::NoHistory(_) => ApiError::BadRequest(e.to_string()),
            })?;
            (
                target.revision,
                target.template_hash.clone(),
                target.template.clone(),
            )
        };
        let rolled_back = hash != current;
        if rolled_back {
            if let Some(d) = self.deployments.get_mut(name) {
                d.spec.template = template;
                d.metadata.generation += 1;
            }
            self.touch(Tab::Deployment, name);
            self.record(
                format!("deployment/{name}"),
                "DeploymentRollback",
                format!("Rolled back deployment {name} to revision {revision}"),
            );
        }
        Ok(ApiReply::RolledBack(UndoResult {
            rolled_back,
            revision,
        }))
    }

    pub(super) fn not_found(kind: ResourceKind, name: &str) -> ApiError {
        ApiError::NotFound(format!("{} {name:?} not found", kind.as_str()))
    }

    /// A pod as the API shows it: on a node that is not ready, its phase is `Unknown`,
    /// unless it ended (Succeeded or Failed, as Kubernetes keeps it: nothing of it runs
    /// to be unknown, say a Job's, or a run its node fired while cut off).
    fn pod_view(&self, p: &api::Pod) -> ApiObject {
        let lost = p
            .spec
            .node_name
            .as_ref()
            .is_some_and(|n| self.nodes.get(n).is_some_and(|n| !n.status.ready))
            && !p.ended();
        if lost {
            let mut p = p.clone();
            p.status.phase = api::PodPhase::Unknown;
            p.status.reason = Some("NodeLost".into());
            ApiObject::Pod(p)
        } else {
            ApiObject::Pod(p.clone())
        }
    }

    pub(super) fn get_one(&self, kind: ResourceKind, name: &str) -> Result<ApiObject, ApiError> {
        let v = match kind {
            ResourceKind::Node => self
                .nodes
                .get(name)
                .map(|n| ApiObject::Node(self.node_view(n))),
            ResourceKind::Deployment => self
                .deployments
                .get(name)
                .cloned()
                .map(ApiObject::Deployment),
            ResourceKind::DaemonSet => self
                .daemon_sets
                .get(name)
                .cloned()
                .map(ApiObject::DaemonSet),
            ResourceKind::Job => self.jobs.get(name).cloned().map(ApiObject::Job),
            ResourceKind::CronJob => self.cron_jobs.get(name).cloned().map(ApiObject::CronJob),
            ResourceKind::Pod => self.pods.get(name).map(|p| self.pod_view(p)),
            ResourceKind::Secret => self.secrets.get(name).map(secret_view),
            ResourceKind::ConfigMap => self
                .config_maps
                .get(name)
                .cloned()
                .map(ApiObject::ConfigMap),
            ResourceKind::Service => self
                .services
                .get(name)
                .map(|s| ApiObject::Service(self.service_view(s))),
            ResourceKind::Endpoints => self
                .services
                .get(name)
                .map(|s| ApiObject::Endpoints(self.endpoints_of(s))),
            ResourceKind::AgentUpdate => self
                .agent_updates
                .get(name)
                .cloned()
                .map(ApiObject::AgentUpdate),
            ResourceKind::Namespace => self.get_namespace(name),
        };
        v.ok_or_else(|| Self::not_found(kind, name))
    }

    pub(super) fn get_all(&self, kind: ResourceKind) -> Vec<ApiObject> {
        match kind {
            ResourceKind::Node => self
                .nodes
                .values()
                .map(|n| ApiObject::Node(self.node_view(n)))
                .collect(),
            ResourceKind::Deployment => self
                .deployments
                .values()
                .cloned()
                .map(ApiObject::Deployment)
                .collect(),
            ResourceKind::DaemonSet => self
                .daemon_sets
                .values()
                .cloned()
                .map(ApiObject::DaemonSet)
                .collect(),
            ResourceKind::Job => self.jobs.values().cloned().map(ApiObject::Job).collect(),
            ResourceKind::CronJob => self
                .cron_jobs
                .values()
                .cloned()
                .map(ApiObject::CronJob)
                .collect(),
            ResourceKind::Pod => self.pods.values().map(|p| self.pod_view(p)).collect(),
            ResourceKind::Secret => self.secrets.values().map(secret_view).collect(),
            ResourceKind::ConfigMap => self
                .config_maps
                .values()
                .cloned()
                .map(ApiObject::ConfigMap)
                .collect(),
            ResourceKind::Service => self
                .services
                .values()
                .map(|s| ApiObject::Service(self.service_view(s)))
                .collect(),
            ResourceKind::Endpoints => self
                .services
                .values()
                .map(|s| ApiObject::Endpoints(self.endpoints_of(s)))
                .collect(),
            ResourceKind::AgentUpdate => self
                .agent_updates
                .values()
                .cloned()
                .map(ApiObject::AgentUpdate)
                .collect(),
            ResourceKind::Namespace => self.all_namespaces(),
        }
    }

    fn apply(
        &mut self,
        yaml: &str,
        namespace: Option<&str>,
        access: &super::Access,
    ) -> Result<Vec<Applied>, ApiError> {
        let objects =
            manifest::parse_manifests(yaml).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let objects = self.place(objects, namespace, access)?;
        let objects = self.allocate_services(objects)?;
        // Validate everything before changing anything: all or nothing.
        for o in &objects {
            match o {
                api::Object::Deployment(d) => {
                    let probe = controller::new_pod(
                        d,
                        &controller::template_hash(&d.spec.template),
                        "xxxxx",
                    );
                    check_wire(&probe, &format!("deployment {:?}", d.metadata.name))?;
                    policy::check_pod(&d.spec.template.spec, "spec.template.spec", &self.policy)
                        .map_err(|e| {
                            ApiError::BadRequest(format!("deployment {:?}: {e}", d.metadata.name))
                        })?;
                }
                api::Object::DaemonSet(d) => {
                    let probe = daemonset::new_pod(
                        d,
                        &controller::template_hash(&d.spec.template),
                        "node",
                        "xxxxx",
                    );
                    check_wire(&probe, &format!("daemonset {:?}", d.metadata.name))?;
                    policy::check_pod(&d.spec.template.spec, "spec.template.spec", &self.policy)
                        .map_err(|e| {
                            ApiError::BadRequest(format!("daemonset {:?}: {e}", d.metadata.name))
                        })?;
                }
                api::Object::Job(j) => {
                    let probe = crate::decide::job::new_pod(j, "xxxxx");
                    check_wire(&probe, &format!("job {:?}", j.metadata.name))?;
                    policy::check_pod(&j.spec.template.spec, "spec.template.spec", &self.policy)
                        .map_err(|e| {
                            ApiError::BadRequest(format!("job {:?}: {e}", j.metadata.name))
                        })?;
                    self.check_job_change(j)?;
                }
                api::Object::CronJob(c) => self.check_cron_job(c)?,
                api::Object::Secret(_) => {}
                api::Object::ConfigMap(c) => self.check_config_map(c)?,
                api::Object::Service(_) | api::Object::Namespace(_) => {}
                api::Object::AgentUpdate(u) => self.check_agent_update(u)?,
                api::Object::Pod(p) => {
                    check_wire(p, &format!("pod {:?}", p.metadata.name))?;
                    policy::check_pod(&p.spec, "spec", &self.policy).map_err(|e| {
                        ApiError::BadRequest(format!("pod {:?}: {e}", p.metadata.name))
                    })?;
                    if let Some(old) = self.pods.get(&p.metadata.name) {
                        let mut old_spec = old.spec.clone();
                        old_spec.node_name = p.spec.node_name.clone();
                        if old_spec != p.spec {
                            return Err(ApiError::Conflict(format!(
                                "pod {:?}: a pod's spec cannot be changed; delete the pod and apply again",
                                p.metadata.name
                            )));
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        for o in objects {
            out.push(match o {
                api::Object::Deployment(d) => self.apply_deployment(d),
                api::Object::DaemonSet(d) => self.apply_daemon_set(d),
                api::Object::Job(j) => self.apply_job(j),
                api::Object::CronJob(c) => self.apply_cron_job(c),
                api::Object::Pod(p) => self.apply_pod(p),
                api::Object::Secret(s) => self.apply_secret(s),
                api::Object::ConfigMap(c) => self.apply_config_map(c),
                api::Object::Service(s) => self.apply_service(s),
                api::Object::AgentUpdate(u) => self.apply_agent_update(u),
                // Refused only while terminating; a failed apply is rolled back whole.
                api::Object::Namespace(n) => self.apply_namespace(n)?,
            });
        }
        Ok(out)
    }

    fn apply_deployment(&mut self, mut d: api::Deployment) -> Applied {
        let name = d.metadata.name.clone();
        let action = match self.deployments.get(&name) {
            None => {
                d.metadata.uid = new_uid();
                d.metadata.creation_timestamp = api::now_rfc3339();
                d.metadata.generation = 1;
                d.metadata.owner = None;
                d.status = api::DeploymentStatus::default();
                self.deployments.insert(name.clone(), d);
                ApplyAction::Created
            }
            Some(old) => match reapplied((&old.metadata, &old.spec), (d.metadata, d.spec)) {
                None => ApplyAction::Unchanged,
                Some((metadata, spec)) => {
                    let mut new = old.clone();
                    (new.metadata, new.spec) = (metadata, spec);
                    self.deployments.insert(name.clone(), new);
                    ApplyAction::Configured
                }
            },
        };
        if action != ApplyAction::Unchanged {
            self.touch(Tab::Deployment, &name);
        }
        Applied {
            kind: ResourceKind::Deployment,
            name,
            action,
        }
    }

    /// Stores a Secret as given (its content replaces the old one). Distributing secrets
    /// to the nodes whose pods use them is not done here.
    fn apply_secret(&mut self, mut s: api::Secret) -> Applied {
        let name = s.metadata.name.clone();
        let action = match self.secrets.get(&name) {
            None => {
                s.metadata.uid = new_uid();
                s.metadata.creation_timestamp = api::now_rfc3339();
                s.metadata.generation = 1;
                ApplyAction::Created
            }
            Some(old) => {
                if old.type_ == s.type_
                    && old.data == s.data
                    && old.metadata.labels == s.metadata.labels
                    && old.metadata.annotations == s.metadata.annotations
                {
                    return Applied {
                        kind: ResourceKind::Secret,
                        name,
                        action: ApplyAction::Unchanged,
                    };
                }
                s.metadata.uid = old.metadata.uid.clone();
                s.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
                s.metadata.generation = old.metadata.generation + 1;
                ApplyAction::Configured
            }
        };
        self.secrets.insert(name.clone(), s);
        self.touch(Tab::Secret, &name);
        Applied {
            kind: ResourceKind::Secret,
            name,
            action,
        }
    }

    fn apply_pod(&mut self, mut p: api::Pod) -> Applied {
        let name = p.metadata.name.clone();
        let action = match self.pods.get_mut(&name) {
            None => {
                p.metadata.uid = new_uid();
                p.metadata.creation_timestamp = api::now_rfc3339();
                p.metadata.generation = 1;
                p.metadata.owner = None;
                p.status = api::PodStatus::default();
                self.pods.insert(name.clone(), p);
                self.record(format!("pod/{name}"), "Created", "Created by apply".into());
                ApplyAction::Created
            }
            Some(old) => {
                if old.metadata.labels == p.metadata.labels
                    && old.metadata.annotations == p.metadata.annotations
                {
                    ApplyAction::Unchanged
                } else {
                    old.metadata.labels = p.metadata.labels;
                    old.metadata.annotations = p.metadata.annotations;
                    ApplyAction::Configured
                }
            }
        };
        if action != ApplyAction::Unchanged {
            self.touch(Tab::Pod, &name);
        }
        Applied {
            kind: ResourceKind::Pod,
            name,
            action,
        }
    }

    pub(super) fn delete(&mut self, kind: ResourceKind, name: &str) -> Result<ApiReply, ApiError> {
        match kind {
            ResourceKind::Node => {
                return Err(ApiError::BadRequest(
                    "deleting nodes is not supported yet".into(),
                ));
            }
            ResourceKind::Deployment => {
                if self.deployments.remove(name).is_none() {
                    return Err(Self::not_found(kind, name));
                }
                self.touch(Tab::Deployment, name);
                let owned: Vec<String> = Self::owned(&self.pods, name)
                    .into_iter()
                    .map(|p| p.metadata.name.clone())
                    .collect();
                for pod in owned {
                    self.terminate_pod(&pod, &format!("Deployment {name} deleted"));
                }
                let revs: Vec<String> = self
                    .revisions_of(name)
                    .into_iter()
                    .map(|r| rollout::revision_key(name, r.revision))
                    .collect();
                for key in revs {
                    self.revisions.remove(&key);
                    self.touch(Tab::Revision, &key);
                }
                self.record(
                    format!("deployment/{name}"),
                    "Deleted",
                    "Deleted by the user".into(),
                );
            }
            ResourceKind::DaemonSet => self.delete_daemon_set(name)?,
            ResourceKind::Job => self.delete_job(name)?,
            ResourceKind::CronJob => self.delete_cron_job(name)?,
            ResourceKind::Secret => {
                if self.secrets.remove(name).is_none() {
                    return Err(Self::not_found(kind, name));
                }
                self.touch(Tab::Secret, name);
            }
            ResourceKind::AgentUpdate => self.delete_agent_update(name)?,
            ResourceKind::ConfigMap => {
                if self.config_maps.remove(name).is_none() {
                    return Err(Self::not_found(kind, name));
                }
                self.touch(Tab::ConfigMap, name);
            }
            ResourceKind::Service => self.delete_service(name)?,
            ResourceKind::Endpoints => {
                return Err(ApiError::BadRequest(
                    "endpoints follow their service: delete the service".into(),
                ));
            }
            ResourceKind::Pod => {
                if !self.pods.contains_key(name) {
                    return Err(Self::not_found(kind, name));
                }
                // Deleting a pod that is already terminating is not an error.
                self.terminate_pod(name, "Deleted by the user");
            }
            ResourceKind::Namespace => self.delete_namespace(name)?,
        }
        Ok(ApiReply::Deleted {
            kind,
            name: name.to_owned(),
        })
    }

    fn scale(&mut self, name: &str, replicas: u32) -> Result<ApiReply, ApiError> {
        if i64::from(replicas) > manifest::MAX_REPLICAS {
            return Err(ApiError::BadRequest(format!(
                "replicas: at most {} are allowed",
                manifest::MAX_REPLICAS
            )));
        }
        let d = self
            .deployments
            .get_mut(name)
            .ok_or_else(|| Self::not_found(ResourceKind::Deployment, name))?;
        if d.spec.replicas != replicas {
            d.spec.replicas = replicas;
            d.metadata.generation += 1;
            self.touch(Tab::Deployment, name);
        }
        self.get_one(ResourceKind::Deployment, name)
            .map(ApiReply::Object)
    }
}

/// A Secret as the API shows it: metadata, type and each key's size in bytes
/// (`dataSizes`), never a value.
fn secret_view(s: &api::Secret) -> ApiObject {
    ApiObject::Secret(SecretView {
        api_version: s.api_version.clone(),
        kind: s.kind.clone(),
        metadata: s.metadata.clone(),
        type_: s.type_.as_str().to_owned(),
        data_sizes: s.data.iter().map(|(k, v)| (k.clone(), v.len())).collect(),
    })
}

pub(super) fn check_wire(pod: &api::Pod, what: &str) -> Result<(), ApiError> {
    let mut probe = pod.clone();
    probe.metadata.uid = "00000000-0000-0000-0000-000000000000".into();
    wire::pod_spec(&probe)
        .map(|_| ())
        .map_err(|e| ApiError::BadRequest(format!("{what}: {e}")))
}

/// `apply` of a workload (Deployment, DaemonSet) over the stored one: labels and
/// annotations follow the manifest, a changed spec replaces the old one and bumps the
/// generation. `None` when nothing changed.
pub(super) fn reapplied<S: PartialEq + Clone>(
    (old_meta, old_spec): (&api::ObjectMeta, &S),
    (meta, spec): (api::ObjectMeta, S),
) -> Option<(api::ObjectMeta, S)> {
    let spec_changed = *old_spec != spec;
    if !spec_changed && old_meta.labels == meta.labels && old_meta.annotations == meta.annotations {
        return None;
    }
    let mut next = old_meta.clone();
    next.labels = meta.labels;
    next.annotations = meta.annotations;
    if spec_changed {
        next.generation += 1;
        Some((next, spec))
    } else {
        Some((next, old_spec.clone()))
    }
}
