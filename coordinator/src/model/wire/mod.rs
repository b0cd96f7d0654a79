//! The one place that converts between domain types ([`crate::model::api`]) and wire types
//! ([`baton_proto`]).
//!
//! Architecture invariant: no other module builds a `baton_proto` message body out of an
//! `api` object or the other way round. Keeping the mapping here means a change to either
//! side is a change to exactly one module, and the defaults Kubernetes users expect
//! (requests default to limits, `imagePullPolicy` depends on the tag) live in one place.
//! Down to agents: `spec`, `secret`, `config_map` and `service_table`; up from them: `status` and `node`; both ways:
//! `update` (agent update orders and reports).

mod config_map;
mod node;
mod secret;
mod service_table;
mod spec;
mod status;
mod update;

use baton_proto::{BString, BVec};

pub use config_map::{config_map_data, config_map_names};
pub use node::{apply_error, node_conditions, node_from_hello};
pub use secret::{encode_data, secret_names};
pub use service_table::{node_route, service_entry};
pub use spec::{default_pull_policy, pod_spec};
pub use status::pod_status;
pub use update::{agent_update_order, update_phase, update_report};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("pod {pod:?}: {field}: {reason}")]
    Field {
        pod: String,
        field: String,
        reason: String,
    },
    #[error("pod {pod:?} has {got} containers; at most {max} are supported")]
    TooManyContainers { pod: String, got: usize, max: usize },
}

pub(super) fn field_err(pod: &str, field: impl Into<String>, reason: impl ToString) -> WireError {
    WireError::Field {
        pod: pod.to_owned(),
        field: field.into(),
        reason: reason.to_string(),
    }
}

pub(super) fn bstr<const N: usize>(
    pod: &str,
    field: impl Into<String>,
    s: &str,
) -> Result<BString<N>, WireError> {
    BString::new(s).map_err(|e| field_err(pod, field, e))
}

pub(super) fn bvec<T, const N: usize>(
    pod: &str,
    field: impl Into<String>,
    v: Vec<T>,
) -> Result<BVec<T, N>, WireError> {
    BVec::from_vec(v).map_err(|e| field_err(pod, field, e))
}

#[cfg(test)]
mod tests;
