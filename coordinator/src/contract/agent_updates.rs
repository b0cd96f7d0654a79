//! The bodies of `baton agent rollout ...`: a rollout (`kind: AgentUpdate`) with its
//! status per node. `baton agent upgrade` is an `apply` of a manifest (`Apply`), so a
//! rollout has one way in.

use super::payload::json_bodies;
use crate::model::api;

pub use api::AgentUpdate;

json_bodies!(AgentUpdate);
