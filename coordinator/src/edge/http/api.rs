//! The object routes (apply, get, delete, describe, events, scale, rollouts) and
//! `/healthz`. Each object handler asks the core and answers what it committed.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;

use super::{ask, AppState, Failure, FromReply, Reply};
use crate::contract::body::{
    ApiObject, ApplyResults, Deleted, Described, List, RolloutProgress, ScaleRequest, UndoRequest,
    UndoResult,
};
use crate::contract::health::{Health, HealthStatus};
use crate::contract::{routes, ResourceKind};
use crate::core::{ApiOp, ApiReply};
use crate::model::api;

impl FromReply for ApplyResults {
    fn from_reply(reply: ApiReply) -> Option<Self> {
        match reply {
            ApiReply::Applied(results) => Some(ApplyResults { results }),
            _ => None,
        }
    }
}

impl FromReply for List<ApiObject> {
    fn from_reply(reply: ApiReply) -> Option<Self> {
        match reply {
            ApiReply::Objects(items) => Some(List { items }),
            _ => None,
        }
    }
}

impl FromReply for ApiObject {
    fn from_reply(reply: ApiReply) -> Option<Self> {
        match reply {
            ApiReply::Object(o) => Some(o),
            _ => None,
        }
    }
}

impl FromReply for Deleted {
    fn from_reply(reply: ApiReply) -> Option<Self> {
        match reply {
            ApiReply::Deleted { kind, name } => Some(Deleted::resource(kind, name)),
            _ => None,
        }
    }
}

impl FromReply for Described {
    fn from_reply(reply: ApiReply) -> Option<Self> {
        match reply {
            ApiReply::Described { object, events } => Some(Described { object, events }),
            _ => None,
        }
    }
}

impl FromReply for List<api::Event> {
    fn from_reply(reply: ApiReply) -> Option<Self> {
        match reply {
            ApiReply::Events(items) => Some(List { items }),
            _ => None,
        }
    }
}

impl FromReply for RolloutProgress {
    fn from_reply(reply: ApiReply) -> Option<Self> {
        match reply {
            ApiReply::Rollout(p) => Some(p),
            _ => None,
        }
    }
}

impl FromReply for List<api::Revision> {
    fn from_reply(reply: ApiReply) -> Option<Self> {
        match reply {
            ApiReply::Revisions(items) => Some(List { items }),
            _ => None,
        }
    }
}

impl FromReply for UndoResult {
    fn from_reply(reply: ApiReply) -> Option<Self> {
        match reply {
            ApiReply::RolledBack(r) => Some(r),
            _ => None,
        }
    }
}

fn kind(s: &str) -> Result<ResourceKind, Failure> {
    ResourceKind::parse(s).ok_or_else(|| {
        Failure(
            StatusCode::NOT_FOUND,
            format!("unknown resource type {s:?}: use nodes, deployments or pods"),
        )
    })
}

/// 200 while the broker link works; 503 with the reason while it is known to be broken
/// (connecting failed, the broker denied the subscription, or a certificate the broker's
/// ACL will silently ignore and no node heard from), so a probe or a person sees a
/// coordinator that can reach no node. Before the first attempt has ended it is
/// still 200: nothing is known to be wrong yet.
pub(super) async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let mqtt = state.bus.snapshot();
    match state.bus.problem() {
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: HealthStatus::Unavailable,
                reason: Some(format!("mqtt: {reason}")),
                mqtt,
            }),
        ),
        None => (
            StatusCode::OK,
            Json(Health {
                status: HealthStatus::Ok,
                reason: None,
                mqtt,
            }),
        ),
    }
}

pub(super) async fn apply(State(state): State<AppState>, body: String) -> Reply<ApplyResults> {
    ask(&state.core, ApiOp::Apply { yaml: body }).await
}

pub(super) async fn list(
    State(state): State<AppState>,
    Path(k): Path<String>,
) -> Reply<List<ApiObject>> {
    let op = ApiOp::Get {
        kind: kind(&k)?,
        name: None,
    };
    ask(&state.core, op).await
}

pub(super) async fn get_one(
    State(state): State<AppState>,
    Path((k, name)): Path<(String, String)>,
) -> Reply<ApiObject> {
    let op = ApiOp::Get {
        kind: kind(&k)?,
        name: Some(name),
    };
    ask(&state.core, op).await
}

pub(super) async fn delete(
    State(state): State<AppState>,
    Path((k, name)): Path<(String, String)>,
) -> Reply<Deleted> {
    let op = ApiOp::Delete {
        kind: kind(&k)?,
        name,
    };
    ask(&state.core, op).await
}

pub(super) async fn describe(
    State(state): State<AppState>,
    Path((k, name)): Path<(String, String)>,
) -> Reply<Described> {
    let op = ApiOp::Describe {
        kind: kind(&k)?,
        name,
    };
    ask(&state.core, op).await
}

pub(super) async fn scale(
    State(state): State<AppState>,
    Path(routes::Scale { name }): Path<routes::Scale>,
    body: axum::body::Bytes,
) -> Reply<ApiObject> {
    let ScaleRequest { replicas } = serde_json::from_slice(&body).map_err(|e| {
        Failure(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"replicas\": N}}: {e}"),
        )
    })?;
    ask(&state.core, ApiOp::Scale { name, replicas }).await
}

pub(super) async fn update_node(
    State(state): State<AppState>,
    Path(routes::UpdateNode { name }): Path<routes::UpdateNode>,
    body: axum::body::Bytes,
) -> Reply<ApiObject> {
    let change = serde_json::from_slice(&body).map_err(|e| {
        Failure(
            StatusCode::BAD_REQUEST,
            format!("expected a node spec change: {e}"),
        )
    })?;
    ask(&state.core, ApiOp::UpdateNode { name, change }).await
}

pub(super) async fn rollout_status(
    State(state): State<AppState>,
    Path(routes::RolloutStatus { name }): Path<routes::RolloutStatus>,
) -> Reply<RolloutProgress> {
    let kind = ResourceKind::Deployment;
    ask(&state.core, ApiOp::RolloutStatus { kind, name }).await
}

pub(super) async fn rollout_history(
    State(state): State<AppState>,
    Path(routes::RolloutHistory { name }): Path<routes::RolloutHistory>,
) -> Reply<List<api::Revision>> {
    let kind = ResourceKind::Deployment;
    ask(&state.core, ApiOp::RolloutHistory { kind, name }).await
}

pub(super) async fn rollout_undo(
    State(state): State<AppState>,
    Path(routes::RolloutUndo { name }): Path<routes::RolloutUndo>,
    body: axum::body::Bytes,
) -> Reply<UndoResult> {
    undo(state, ResourceKind::Deployment, name, body).await
}

pub(super) async fn daemon_set_rollout_status(
    State(state): State<AppState>,
    Path(routes::DaemonSetRolloutStatus { name }): Path<routes::DaemonSetRolloutStatus>,
) -> Reply<RolloutProgress> {
    let kind = ResourceKind::DaemonSet;
    ask(&state.core, ApiOp::RolloutStatus { kind, name }).await
}

pub(super) async fn daemon_set_rollout_history(
    State(state): State<AppState>,
    Path(routes::DaemonSetRolloutHistory { name }): Path<routes::DaemonSetRolloutHistory>,
) -> Reply<List<api::Revision>> {
    let kind = ResourceKind::DaemonSet;
    ask(&state.core, ApiOp::RolloutHistory { kind, name }).await
}

pub(super) async fn daemon_set_rollout_undo(
    State(state): State<AppState>,
    Path(routes::DaemonSetRolloutUndo { name }): Path<routes::DaemonSetRolloutUndo>,
    body: axum::body::Bytes,
) -> Reply<UndoResult> {
    undo(state, ResourceKind::DaemonSet, name, body).await
}

async fn undo(
    state: AppState,
    kind: ResourceKind,
    name: String,
    body: axum::body::Bytes,
) -> Reply<UndoResult> {
    let UndoRequest { to_revision } = if body.iter().all(u8::is_ascii_whitespace) {
        UndoRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Failure(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"toRevision\": N}} or an empty body: {e}"),
            )
        })?
    };
    ask(
        &state.core,
        ApiOp::RolloutUndo {
            kind,
            name,
            to_revision,
        },
    )
    .await
}

pub(super) async fn events(
    State(state): State<AppState>,
    Query(routes::Events { object }): Query<routes::Events>,
) -> Reply<List<api::Event>> {
    ask(&state.core, ApiOp::Events { object }).await
}
