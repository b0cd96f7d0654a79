//! What an operator sets on a node (`baton cordon|uncordon|taint|label node`), and Kubernetes'
//! taint manager: pods on a node with a `NoExecute` taint they do not tolerate are
//! evicted, at once or when their `tolerationSeconds` run out.

use std::time::SystemTime;

use crate::contract::nodes::NodeSpecChange;
use crate::contract::ResourceKind;
use crate::decide::taints::{self, NoExecute};
use crate::model::api::{self, TaintEffect};
use crate::model::manifest;

use super::{ApiError, ApiReply, Core, Tab};

/// The taints that follow a node's pressure conditions (`taints::with_condition_taints`).
pub(super) const MANAGED: [&str; 3] = [
    taints::DISK_PRESSURE,
    taints::MEMORY_PRESSURE,
    taints::PID_PRESSURE,
];

impl Core {
    /// Applies `change` to the node's spec. A taint added again with the same key and
    /// effect gets the new value; removing one the node does not have is an error, as
    /// with kubectl.
    pub(super) fn update_node(
        &mut self,
        name: &str,
        change: NodeSpecChange,
    ) -> Result<ApiReply, ApiError> {
        let keys = change
            .add_taints
            .iter()
            .map(|t| t.key.as_str())
            .chain(change.remove_taints.iter().map(|r| r.key.as_str()));
        for key in keys {
            if key.is_empty() {
                return Err(ApiError::BadRequest("a taint needs a key".into()));
            }
            if MANAGED.contains(&key) {
                return Err(ApiError::BadRequest(format!(
                    "taint {key}: set and cleared by the node's pressure conditions, not by hand"
                )));
            }
        }
        for (k, v) in &change.labels {
            manifest::check_label(k, v.as_deref().unwrap_or_default())
                .map_err(ApiError::BadRequest)?;
        }
        let node = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| Self::not_found(ResourceKind::Node, name))?;
        let mut spec = node.spec.clone();
        let mut labels = node.metadata.labels.clone();
        for (k, v) in &change.labels {
            if let (Some(new), Some(old)) = (v, labels.get(k)) {
                if new != old && !change.overwrite {
                    return Err(ApiError::Conflict(format!(
                        "'{k}' already has a value ({old}), and --overwrite is false"
                    )));
                }
            }
            match v {
                Some(v) => labels.insert(k.clone(), v.clone()),
                None => labels.remove(k),
            };
            spec.label_overrides.insert(k.clone(), v.clone());
        }
        let relabeled =
            labels != node.metadata.labels || spec.label_overrides != node.spec.label_overrides;
        node.metadata.labels = labels;
        if let Some(u) = change.unschedulable {
            spec.unschedulable = u;
        }
        for r in &change.remove_taints {
            let matches = |t: &api::Taint| t.key == r.key && r.effect.is_none_or(|e| e == t.effect);
            if !spec.taints.iter().any(matches) {
                let effect = r.effect.map(|e| format!(":{e:?}")).unwrap_or_default();
                return Err(ApiError::NotFound(format!(
                    "taint {}{effect} not found on node {name:?}",
                    r.key
                )));
            }
            spec.taints.retain(|t| !matches(t));
        }
        let now = api::now_rfc3339();
        for mut t in change.add_taints {
            match spec
                .taints
                .iter_mut()
                .find(|o| o.key == t.key && o.effect == t.effect)
            {
                Some(old) => old.value = t.value,
                None => {
                    // Kubernetes stamps NoExecute taints: tolerationSeconds count from it.
                    t.time_added = (t.effect == TaintEffect::NoExecute).then(|| now.clone());
                    spec.taints.push(t);
                }
            }
        }
        let cordoned =
            (spec.unschedulable != node.spec.unschedulable).then_some(spec.unschedulable);
        let tainted = spec.taints != node.spec.taints;
        node.spec = spec;
        let shown: Vec<String> = node.spec.taints.iter().map(|t| t.to_string()).collect();
        if cordoned.is_some() || tainted || relabeled {
            self.touch(Tab::Node, name);
        }
        if relabeled {
            self.record(
                format!("node/{name}"),
                "LabelsChanged",
                format!("Labels changed by the operator: {:?}", change.labels),
            );
        }
        match cordoned {
            Some(true) => self.record(
                format!("node/{name}"),
                "NodeNotSchedulable",
                format!("Node {name} status is now: NodeNotSchedulable"),
            ),
            Some(false) => self.record(
                format!("node/{name}"),
                "NodeSchedulable",
                format!("Node {name} status is now: NodeSchedulable"),
            ),
            None => {}
        }
        if tainted {
            let list = if shown.is_empty() {
                "<none>".to_owned()
            } else {
                shown.join(", ")
            };
            self.record(
                format!("node/{name}"),
                "TaintsChanged",
                format!("Taints: {list}"),
            );
            self.evict_untolerated(SystemTime::now());
        }
        self.get_one(ResourceKind::Node, name).map(ApiReply::Object)
    }

    /// The taint manager's pass: evicts each pod whose node has a `NoExecute` taint it does
    /// not tolerate, or no longer (its `tolerationSeconds` are over). Deployments replace
    /// their pods on nodes that take them.
    pub(super) fn evict_untolerated(&mut self, now: SystemTime) {
        let evict: Vec<(String, String, api::Taint)> = self
            .pods
            .values()
            // A node-scheduled CronJob's runs are the node's (not sent, nothing to stop).
            .filter(|p| !p.node_run())
            .filter_map(|p| {
                let node = p.spec.node_name.as_deref()?;
                let n = self.nodes.get(node)?;
                match taints::no_execute(&n.spec.taints, &p.spec.tolerations, now) {
                    NoExecute::Evict(t) => Some((p.metadata.name.clone(), node.to_owned(), t)),
                    NoExecute::Stay | NoExecute::EvictAt(..) => None,
                }
            })
            .collect();
        for (pod, node, taint) in evict {
            let why = format!("Marking for deletion: node {node} has taint {taint}, not tolerated");
            if self.terminate_pod(&pod, &why) {
                self.record(format!("pod/{pod}"), "TaintManagerEviction", why);
            }
        }
    }
}
