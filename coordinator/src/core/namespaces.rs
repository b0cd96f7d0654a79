//! Namespaces: where applied objects go, which exist, deleting one with everything in it,
//! and how the API shows qualified names.
//!
//! Inside the core a namespaced object is keyed by its qualified name (`api::qualify`:
//! `ns_name`, or `name` in `default`), and its pod templates' Secret and ConfigMap
//! references are qualified the same way, so a pod can only ever reach its own
//! namespace's. Everything derived from a name (pods, Jobs, revisions, events, what a node
//! is sent) inherits the prefix. Names are made qualified once, on apply ([`Core::place`]),
//! and shown unqualified with `metadata.namespace` once, on the way out
//! ([`external_reply`]); the edge qualifies the names a request gives.
//!
//! `default` always exists and is never stored. Deleting another namespace marks it
//! `Terminating` (it takes no new objects), deletes its objects as their own deletes do
//! (pods drain off their nodes), and removes it at the first tick nothing is left.

use std::collections::BTreeSet;

use crate::contract::body::ApiObject;
use crate::contract::{Applied, ApplyAction, ResourceKind};
use crate::model::api;
use crate::model::secrets::map_references;

use super::{new_uid, ApiError, ApiReply, Core, Tab};

/// The oldest protocol whose agents are sent pods of namespaces but `default`.
const NAMESPACE_PROTO: u16 = 5;

/// The kinds a namespace holds, owners first: deleting in this order, no controller
/// replaces the pods going.
const NAMESPACED_KINDS: [ResourceKind; 8] = [
    ResourceKind::CronJob,
    ResourceKind::Job,
    ResourceKind::DaemonSet,
    ResourceKind::Deployment,
    ResourceKind::Service,
    ResourceKind::Pod,
    ResourceKind::Secret,
    ResourceKind::ConfigMap,
];

/// Where a caller may write: everywhere (`None`), or only in these namespaces, and then
/// never a cluster-scoped object (a token limited to namespaces, `security::auth`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub namespaces: Option<BTreeSet<String>>,
}

impl Access {
    pub fn everywhere() -> Self {
        Self::default()
    }

    pub fn only(namespaces: impl IntoIterator<Item = String>) -> Self {
        Self {
            namespaces: Some(namespaces.into_iter().collect()),
        }
    }

    fn allows(&self, namespace: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|set| set.contains(namespace))
    }
}

impl Core {
    /// Puts every object of a manifest into its namespace, all before anything changes:
    /// an object's own `metadata.namespace` wins, else `namespace` (`-n`), else `default`;
    /// the two disagreeing is refused, as kubectl does, and so is a namespace that does
    /// not exist (unless the manifest creates it), that is terminating, or that `access`
    /// does not allow.
    pub(super) fn place(
        &self,
        mut objects: Vec<api::Object>,
        namespace: Option<&str>,
        access: &Access,
    ) -> Result<Vec<api::Object>, ApiError> {
        let created: BTreeSet<String> = objects
            .iter()
            .filter_map(|o| match o {
                api::Object::Namespace(n) => Some(n.metadata.name.clone()),
                _ => None,
            })
            .collect();
        for o in &mut objects {
            let (kind, meta) = o.kind_and_meta();
            let what = format!("{kind} {:?}", meta.name);
            if !o.is_namespaced() {
                if access.namespaces.is_some() {
                    return Err(ApiError::Forbidden(format!(
                        "{what}: the token is limited to namespaces and may not write \
                         cluster-scoped objects"
                    )));
                }
                o.meta_mut().namespace = None;
                continue;
            }
            let ns = match (meta.namespace.as_deref(), namespace) {
                (Some(own), Some(given)) if own != given => {
                    return Err(ApiError::BadRequest(format!(
                        "{what}: metadata.namespace: the namespace from the provided object \
                         {own:?} does not match the namespace {given:?}. You must pass \
                         '--namespace={own}' to perform this operation."
                    )))
                }
                (Some(own), _) => own.to_owned(),
                (None, Some(given)) => given.to_owned(),
                (None, None) => api::DEFAULT_NAMESPACE.to_owned(),
            };
            if !access.allows(&ns) {
                return Err(ApiError::Forbidden(format!(
                    "{what}: the token may not write in namespace {ns:?}"
                )));
            }
            if ns != api::DEFAULT_NAMESPACE && !created.contains(&ns) {
                match self.namespaces.get(&ns) {
                    None => {
                        return Err(ApiError::BadRequest(format!(
                            "{what}: metadata.namespace: namespace {ns:?} not found \
                             (apply a Namespace first)"
                        )))
                    }
                    Some(n) if n.status.phase == api::NamespacePhase::Terminating => {
                        return Err(ApiError::Conflict(format!(
                            "{what}: metadata.namespace: namespace {ns:?} is being \
                             terminated: it takes no new objects"
                        )))
                    }
                    Some(_) => {}
                }
            }
            qualify_object(o, &ns);
        }
        Ok(objects)
    }

    pub(super) fn apply_namespace(&mut self, mut n: api::Namespace) -> Result<Applied, ApiError> {
        let name = n.metadata.name.clone();
        if name == api::DEFAULT_NAMESPACE {
            return Ok(applied(&name, ApplyAction::Unchanged));
        }
        let action = match self.namespaces.get(&name) {
            None => {
                n.metadata.uid = new_uid();
                n.metadata.creation_timestamp = api::now_rfc3339();
                ApplyAction::Created
            }
            Some(old) if old.status.phase == api::NamespacePhase::Terminating => {
                return Err(ApiError::Conflict(format!(
                    "namespace {name:?} is being terminated: apply it again once it is gone"
                )));
            }
            Some(old)
                if old.metadata.labels == n.metadata.labels
                    && old.metadata.annotations == n.metadata.annotations =>
            {
                return Ok(applied(&name, ApplyAction::Unchanged));
            }
            Some(old) => {
                n.metadata.uid = old.metadata.uid.clone();
                n.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
                ApplyAction::Configured
            }
        };
        self.namespaces.insert(name.clone(), n);
        self.touch(Tab::Namespace, &name);
        Ok(applied(&name, action))
    }

    /// Deletes namespace `name` and everything in it (see the module docs).
    pub(super) fn delete_namespace(&mut self, name: &str) -> Result<(), ApiError> {
        if name == api::DEFAULT_NAMESPACE {
            return Err(ApiError::Forbidden(
                "namespace \"default\" may not be deleted".into(),
            ));
        }
        let Some(n) = self.namespaces.get_mut(name) else {
            return Err(Self::not_found(ResourceKind::Namespace, name));
        };
        if n.status.phase != api::NamespacePhase::Terminating {
            n.status.phase = api::NamespacePhase::Terminating;
            n.metadata.deletion_timestamp = Some(api::now_rfc3339());
            self.touch(Tab::Namespace, name);
            self.record(
                format!("namespace/{name}"),
                "Terminating",
                format!("Deleting every object in namespace {name}"),
            );
        }
        for kind in NAMESPACED_KINDS {
            for key in self.keys_in(kind, name) {
                // Gone already with its owner, or a pod already terminating: both fine.
                if let Err(e) = self.delete(kind, &key) {
                    tracing::debug!(%key, error = %e, "not deleted with its namespace");
                }
            }
        }
        self.end_terminated_namespaces();
        Ok(())
    }

    /// Removes each terminating namespace nothing is left in (its pods drained).
    pub(super) fn end_terminated_namespaces(&mut self) {
        let done: Vec<String> = self
            .namespaces
            .values()
            .filter(|n| n.status.phase == api::NamespacePhase::Terminating)
            .map(|n| n.metadata.name.clone())
            .filter(|ns| {
                NAMESPACED_KINDS
                    .iter()
                    .all(|k| self.keys_in(*k, ns).is_empty())
            })
            .collect();
        for ns in done {
            self.namespaces.remove(&ns);
            self.touch(Tab::Namespace, &ns);
            self.record(
                format!("namespace/{ns}"),
                "Deleted",
                format!("Namespace {ns} is empty and deleted"),
            );
        }
    }

    /// The qualified names of the objects of `kind` in namespace `ns`.
    fn keys_in(&self, kind: ResourceKind, ns: &str) -> Vec<String> {
        fn of<T>(m: &std::collections::BTreeMap<String, T>, ns: &str) -> Vec<String> {
            m.keys()
                .filter(|k| api::namespace_of(k) == ns)
                .cloned()
                .collect()
        }
        match kind {
            ResourceKind::CronJob => of(&self.cron_jobs, ns),
            ResourceKind::Job => of(&self.jobs, ns),
            ResourceKind::DaemonSet => of(&self.daemon_sets, ns),
            ResourceKind::Deployment => of(&self.deployments, ns),
            ResourceKind::Service => of(&self.services, ns),
            ResourceKind::Pod => of(&self.pods, ns),
            ResourceKind::Secret => of(&self.secrets, ns),
            ResourceKind::ConfigMap => of(&self.config_maps, ns),
            _ => Vec::new(),
        }
    }

    /// Why `p` cannot go to its node: it is in a namespace other than `default` and the
    /// node's agent speaks protocol v4 (Baton 0.1), which predates namespaces: it would
    /// run the pod with its qualified name as hostname. `default`'s pods are what they
    /// were, so a v4 agent keeps running them.
    pub(super) fn namespace_blocker(&self, p: &api::Pod) -> Option<String> {
        let ns = api::namespace_of(&p.metadata.name);
        if ns == api::DEFAULT_NAMESPACE {
            return None;
        }
        let node = p.spec.node_name.as_deref()?;
        let version = self.nodes.get(node)?.status.protocol_version;
        (version < NAMESPACE_PROTO).then(|| {
            format!(
                "node {node} runs an agent of protocol v{version}, which predates namespaces \
                 (the pod is in namespace {ns:?}); upgrade its agent to protocol \
                 v{NAMESPACE_PROTO}"
            )
        })
    }

    pub(super) fn get_namespace(&self, name: &str) -> Option<ApiObject> {
        if name == api::DEFAULT_NAMESPACE {
            return Some(ApiObject::Namespace(api::Namespace::default_namespace()));
        }
        self.namespaces.get(name).cloned().map(ApiObject::Namespace)
    }

    pub(super) fn all_namespaces(&self) -> Vec<ApiObject> {
        let mut all = vec![api::Namespace::default_namespace()];
        all.extend(self.namespaces.values().cloned());
        all.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        all.into_iter().map(ApiObject::Namespace).collect()
    }
}

fn applied(name: &str, action: ApplyAction) -> Applied {
    Applied {
        kind: ResourceKind::Namespace,
        name: name.to_owned(),
        action,
    }
}

/// Keys `o` by its qualified name in `ns`, with its pod templates' references qualified.
fn qualify_object(o: &mut api::Object, ns: &str) {
    let q = |name: &str| api::qualify(ns, name);
    match o {
        api::Object::Deployment(d) => map_references(&mut d.spec.template.spec, q),
        api::Object::DaemonSet(d) => map_references(&mut d.spec.template.spec, q),
        api::Object::Job(j) => map_references(&mut j.spec.template.spec, q),
        api::Object::CronJob(c) => map_references(&mut c.spec.job_template.spec.template.spec, q),
        api::Object::Pod(p) => map_references(&mut p.spec, q),
        _ => {}
    }
    let meta = o.meta_mut();
    meta.name = api::qualify(ns, &meta.name);
    meta.namespace = None;
}

/// `name` without its namespace's prefix.
fn unqualify(name: &str) -> String {
    api::split_qualified(name).1.to_owned()
}

/// The metadata of an object as the API shows it: its name unqualified, its namespace
/// set, and the names of its owners unqualified.
fn external_meta(meta: &mut api::ObjectMeta) {
    let (ns, name) = api::split_qualified(&meta.name);
    meta.namespace = Some(ns.to_owned());
    meta.name = name.to_owned();
    for owner in [
        &mut meta.owner,
        &mut meta.daemon_set,
        &mut meta.job,
        &mut meta.cron_job,
    ]
    .into_iter()
    .flatten()
    {
        *owner = unqualify(owner);
    }
}

/// An object as the API shows it (see the module docs).
pub(super) fn external_object(o: ApiObject) -> ApiObject {
    match o {
        ApiObject::Node(_) | ApiObject::AgentUpdate(_) | ApiObject::Namespace(_) => o,
        ApiObject::Deployment(mut d) => {
            external_meta(&mut d.metadata);
            map_references(&mut d.spec.template.spec, unqualify);
            ApiObject::Deployment(d)
        }
        ApiObject::DaemonSet(mut d) => {
            external_meta(&mut d.metadata);
            map_references(&mut d.spec.template.spec, unqualify);
            ApiObject::DaemonSet(d)
        }
        ApiObject::Job(mut j) => {
            external_meta(&mut j.metadata);
            map_references(&mut j.spec.template.spec, unqualify);
            ApiObject::Job(j)
        }
        ApiObject::CronJob(mut c) => {
            external_meta(&mut c.metadata);
            map_references(&mut c.spec.job_template.spec.template.spec, unqualify);
            ApiObject::CronJob(c)
        }
        ApiObject::Pod(mut p) => {
            // Why it waits names its Secrets and ConfigMaps (`secret "NS_x" not found`).
            let ns = api::namespace_of(&p.metadata.name).to_owned();
            p.status.message = p.status.message.map(|m| unqualify_text(&m, &ns));
            let statuses = p.status.container_statuses.iter_mut();
            for c in statuses.chain(p.status.init_container_statuses.iter_mut()) {
                if let api::ContainerState::Failed { reason } = &mut c.state {
                    *reason = unqualify_text(reason, &ns);
                }
            }
            external_meta(&mut p.metadata);
            map_references(&mut p.spec, unqualify);
            ApiObject::Pod(p)
        }
        ApiObject::Secret(mut s) => {
            external_meta(&mut s.metadata);
            ApiObject::Secret(s)
        }
        ApiObject::ConfigMap(mut c) => {
            external_meta(&mut c.metadata);
            ApiObject::ConfigMap(c)
        }
        ApiObject::Service(mut s) => {
            external_meta(&mut s.metadata);
            ApiObject::Service(s)
        }
        ApiObject::Endpoints(mut e) => {
            external_meta(&mut e.metadata);
            for a in e.subsets.iter_mut().flat_map(|s| s.addresses.iter_mut()) {
                a.pod = unqualify(&a.pod);
            }
            ApiObject::Endpoints(e)
        }
    }
}

/// A Deployment's or DaemonSet's revision as the API shows it: its owner and its
/// template's Secret and ConfigMap references unqualified.
pub(super) fn external_revision(mut r: api::Revision) -> api::Revision {
    let ns = api::namespace_of(r.deployment.rsplit('/').next().unwrap_or_default()).to_owned();
    r.deployment = unqualify_text(&r.deployment, &ns);
    map_references(&mut r.template.spec, unqualify);
    r
}

/// An event as the API shows it: `pod/NAME` unqualified, with its namespace, and the
/// names its message gives unqualified too.
pub(super) fn external_event(mut e: api::Event) -> api::Event {
    if let Some((kind, key)) = e.object.split_once('/') {
        if ResourceKind::parse(kind).is_some_and(ResourceKind::is_namespaced) {
            let (ns, name) = api::split_qualified(key);
            let ns = ns.to_owned();
            e.object = format!("{kind}/{name}");
            e.message = unqualify_text(&e.message, &ns);
            e.namespace = Some(ns);
        }
    }
    e
}

/// `text` (a message the core wrote) with the names of namespace `ns` in it unqualified:
/// each `NS_` that starts a word (after a space, quote, `/`, `(` or `:`), which is where
/// the core's messages put names; `_` is in no name, so nothing else is taken for one.
pub(super) fn unqualify_text(text: &str, ns: &str) -> String {
    if ns == api::DEFAULT_NAMESPACE {
        return text.to_owned();
    }
    let prefix = format!("{ns}{}", api::NAMESPACE_SEPARATOR);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut at_word_start = true;
    while !rest.is_empty() {
        if at_word_start {
            if let Some(after) = rest.strip_prefix(prefix.as_str()) {
                rest = after;
                at_word_start = false;
                continue;
            }
        }
        let Some(c) = rest.chars().next() else { break };
        out.push(c);
        at_word_start = matches!(c, ' ' | '"' | '\'' | '/' | '(' | ':');
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A reply of the core as the API shows it.
pub(super) fn external_reply(reply: ApiReply) -> ApiReply {
    match reply {
        ApiReply::Applied(results) => ApiReply::Applied(
            results
                .into_iter()
                .map(|mut a| {
                    if a.kind.is_namespaced() {
                        a.name = unqualify(&a.name);
                    }
                    a
                })
                .collect(),
        ),
        ApiReply::Objects(items) => {
            ApiReply::Objects(items.into_iter().map(external_object).collect())
        }
        ApiReply::Object(o) => ApiReply::Object(external_object(o)),
        ApiReply::Deleted { kind, name } if kind.is_namespaced() => ApiReply::Deleted {
            kind,
            name: unqualify(&name),
        },
        ApiReply::Described { object, events } => ApiReply::Described {
            object: external_object(object),
            events: events.into_iter().map(external_event).collect(),
        },
        ApiReply::Events(items) => {
            ApiReply::Events(items.into_iter().map(external_event).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_show_names_unqualified() {
        let ns = "team-a";
        assert_eq!(
            unqualify_text("Created pod: team-a_web-5d9f-abcde", ns),
            "Created pod: web-5d9f-abcde"
        );
        assert_eq!(
            unqualify_text("deployment \"team-a_web\" successfully rolled out", ns),
            "deployment \"web\" successfully rolled out"
        );
        assert_eq!(unqualify_text("team-a_web deleted", ns), "web deleted");
        // Not at a word's start: left alone (a key such as `my_team-a_x`).
        assert_eq!(unqualify_text("key my_team-a_x", ns), "key my_team-a_x");
        assert_eq!(unqualify_text("team-a_web", "default"), "team-a_web");
    }
}
