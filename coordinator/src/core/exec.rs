//! `baton exec`'s check and record: whether the command may start (pod running on a
//! ready v5 node, container known) and the event that says who ran what. The session
//! itself never passes through the core (`crate::edge::exec`).

use crate::contract::ResourceKind;
use crate::model::api;

use super::{ApiError, Core};

/// Where an exec goes, as the core allowed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecTarget {
    pub node: String,
    pub pod_uid: String,
    pub container: String,
}

/// The oldest protocol that has exec sessions.
const EXEC_PROTOCOL: u16 = 5;

impl Core {
    /// Checks `by`'s exec of `command` in `pod` (its first container unless `container`)
    /// and records it as an event on the pod: every exec is in `get events`.
    pub(super) fn exec(
        &mut self,
        pod: &str,
        container: Option<&str>,
        command: &[String],
        by: &str,
    ) -> Result<ExecTarget, ApiError> {
        let p = self
            .pods
            .get(pod)
            .ok_or_else(|| Self::not_found(ResourceKind::Pod, pod))?;
        if command.is_empty() {
            return Err(ApiError::BadRequest("exec needs a command".into()));
        }
        let names: Vec<&str> = p.spec.containers.iter().map(|c| c.name.as_str()).collect();
        let container = match container {
            Some(c) if names.contains(&c) => c.to_owned(),
            Some(c) => {
                return Err(ApiError::BadRequest(format!(
                    "container {c} is not valid for pod {pod}: choose one of [{}]",
                    names.join(" ")
                )))
            }
            None => names
                .first()
                .map(|c| (*c).to_owned())
                .ok_or_else(|| ApiError::Internal(format!("pod {pod} has no container")))?,
        };
        let node_name = p
            .spec
            .node_name
            .clone()
            .ok_or_else(|| ApiError::Conflict(format!("pod {pod} is not on a node")))?;
        let node = self
            .nodes
            .get(&node_name)
            .ok_or_else(|| ApiError::Conflict(format!("node {node_name} is unknown")))?;
        if !node.status.ready {
            return Err(ApiError::Conflict(format!(
                "node {node_name} is offline (NotReady): cannot exec into pod {pod}"
            )));
        }
        if node.status.protocol_version < EXEC_PROTOCOL {
            return Err(ApiError::Conflict(format!(
                "agent too old for exec: node {node_name} speaks protocol v{}, exec needs v{EXEC_PROTOCOL} (Baton 0.2); upgrade its agent",
                node.status.protocol_version
            )));
        }
        if p.status.phase != api::PodPhase::Running || p.metadata.deletion_timestamp.is_some() {
            return Err(ApiError::Conflict(format!(
                "pod {pod} is not running (phase {:?}): cannot exec into it",
                p.status.phase
            )));
        }
        let target = ExecTarget {
            node: node_name,
            pod_uid: p.metadata.uid.clone(),
            container,
        };
        self.record(
            format!("pod/{pod}"),
            "Exec",
            format!(
                "token {by} ran {command:?} in container {}",
                target.container
            ),
        );
        Ok(target)
    }
}
