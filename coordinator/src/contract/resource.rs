//! The resource vocabulary of the API: which kinds exist, and what `apply` did to each.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    Node,
    Deployment,
    DaemonSet,
    Job,
    CronJob,
    Pod,
    Secret,
    AgentUpdate,
    ConfigMap,
    Service,
    /// Derived from a Service and the pods; read only.
    Endpoints,
    Namespace,
}

impl ResourceKind {
    /// Accepts kubectl's spellings: plural, singular and short forms.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "nodes" | "node" | "no" => Some(Self::Node),
            "deployments" | "deployment" | "deploy" | "deployments.apps" | "deployment.apps" => {
                Some(Self::Deployment)
            }
            "daemonsets" | "daemonset" | "ds" | "daemonsets.apps" | "daemonset.apps" => {
                Some(Self::DaemonSet)
            }
            "jobs" | "job" | "jobs.batch" | "job.batch" => Some(Self::Job),
            "cronjobs" | "cronjob" | "cj" | "cronjobs.batch" | "cronjob.batch" => {
                Some(Self::CronJob)
            }
            "pods" | "pod" | "po" => Some(Self::Pod),
            "secrets" | "secret" => Some(Self::Secret),
            "configmaps" | "configmap" | "cm" => Some(Self::ConfigMap),
            "services" | "service" | "svc" => Some(Self::Service),
            "endpoints" | "ep" => Some(Self::Endpoints),
            "namespaces" | "namespace" | "ns" => Some(Self::Namespace),
            "agentupdates" | "agentupdate" | "agentupdates.baton.io" | "agentupdate.baton.io" => {
                Some(Self::AgentUpdate)
            }
            _ => None,
        }
    }
    /// The singular lowercase name used in event object references (`pod/NAME`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Node => "node",
            Self::Deployment => "deployment",
            Self::DaemonSet => "daemonset",
            Self::Job => "job",
            Self::CronJob => "cronjob",
            Self::Pod => "pod",
            Self::Secret => "secret",
            Self::AgentUpdate => "agentupdate",
            Self::ConfigMap => "configmap",
            Self::Service => "service",
            Self::Endpoints => "endpoints",
            Self::Namespace => "namespace",
        }
    }
    pub fn plural(self) -> &'static str {
        match self {
            Self::Node => "nodes",
            Self::Deployment => "deployments",
            Self::DaemonSet => "daemonsets",
            Self::Job => "jobs",
            Self::CronJob => "cronjobs",
            Self::Pod => "pods",
            Self::Secret => "secrets",
            Self::AgentUpdate => "agentupdates",
            Self::ConfigMap => "configmaps",
            Self::Service => "services",
            Self::Endpoints => "endpoints",
            Self::Namespace => "namespaces",
        }
    }

    /// Whether objects of this kind live in a namespace (Nodes, Namespaces and agent
    /// updates are cluster-scoped, as in Kubernetes).
    pub fn is_namespaced(self) -> bool {
        !matches!(self, Self::Node | Self::AgentUpdate | Self::Namespace)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyAction {
    Created,
    Configured,
    Unchanged,
}

/// One line of `baton apply` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub kind: ResourceKind,
    pub name: String,
    pub action: ApplyAction,
}
