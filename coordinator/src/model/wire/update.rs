//! Agent updates: the order down to a node, its reports up.

use baton_proto::{self as proto, BString, UpdatePhase};

use crate::model::api::{self, NodeUpdatePhase};
use crate::model::release::{ReleaseRecord, ReleaseRecordError};

/// The order for `release` in rollout `u`.
pub fn agent_update_order(
    u: &api::AgentUpdate,
    release: &ReleaseRecord,
) -> Result<proto::AgentUpdate, ReleaseRecordError> {
    Ok(proto::AgentUpdate {
        rollout: BString::new(u.metadata.name.clone())?,
        release: release.to_wire()?,
        allow_downgrade: u.spec.allow_downgrade,
        health_window_secs: u.spec.health_window_seconds,
        // Stamped by the security gate as it seals (`Body::set_term`).
        term: 0,
    })
}

pub fn update_phase(p: UpdatePhase) -> NodeUpdatePhase {
    match p {
        UpdatePhase::Downloading => NodeUpdatePhase::Downloading,
        UpdatePhase::Staged => NodeUpdatePhase::Staged,
        UpdatePhase::Switching => NodeUpdatePhase::Switching,
        UpdatePhase::Probation => NodeUpdatePhase::Probation,
        UpdatePhase::Committed => NodeUpdatePhase::Committed,
        UpdatePhase::RolledBack => NodeUpdatePhase::RolledBack,
        UpdatePhase::Refused => NodeUpdatePhase::Refused,
    }
}

pub fn update_report(r: &proto::UpdateReport) -> api::UpdateReport {
    api::UpdateReport {
        rollout: r.rollout.as_str().to_owned(),
        version: r.version.as_str().to_owned(),
        phase: update_phase(r.phase),
        reason: r.reason.as_ref().map(|s| s.as_str().to_owned()),
        downloaded: r.downloaded,
    }
}
