//! The object routes (apply, get, delete, describe, events, scale, rollouts) and
//! `/healthz`. Each object handler asks the core and answers what it committed.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::{ask, AppState, Failure, FromReply, Reply};
use crate::contract::body::{
    ApiObject, ApplyResults, Deleted, Described, List, RolloutProgress, ScaleRequest, UndoRequest,
    UndoResult,
};
use crate::contract::health::{Health, HealthStatus};
use crate::contract::{routes, ResourceKind};
use crate::core::{Access, ApiOp, ApiReply};
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

/// An object route's path parameters, with or without a namespace (the namespaced twins
/// of [`routes`] name one; without, `default` is meant for one object).
#[derive(Debug, Deserialize)]
pub(super) struct Target {
    namespace: Option<String>,
    kind: Option<String>,
    name: Option<String>,
}

impl Target {
    fn kind(&self) -> Result<ResourceKind, Failure> {
        let k = kind(self.kind.as_deref().unwrap_or_default())?;
        if self.namespace.is_some() && !k.is_namespaced() {
            return Err(Failure(
                StatusCode::BAD_REQUEST,
                format!(
                    "{} are cluster-scoped: they are in no namespace",
                    k.plural()
                ),
            ));
        }
        Ok(k)
    }

    /// The name the core keys the object by (`api::qualify`).
    pub(super) fn key(&self, kind: ResourceKind) -> String {
        let name = self.name.as_deref().unwrap_or_default();
        if kind.is_namespaced() {
            api::qualify(self.namespace(), name)
        } else {
            name.to_owned()
        }
    }

    pub(super) fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(api::DEFAULT_NAMESPACE)
    }

    /// The name as the caller gave it, for messages (never the qualified key).
    pub(super) fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
}

/// The namespaces a token limited to some (`security::auth`) may write in, put on the
/// request by the token check.
#[derive(Debug, Clone)]
pub(super) struct TokenScope(pub Vec<String>);

pub(super) async fn apply(
    State(state): State<AppState>,
    Query(routes::Apply { namespace }): Query<routes::Apply>,
    scope: Option<axum::Extension<TokenScope>>,
    body: String,
) -> Reply<ApplyResults> {
    let access = match scope {
        Some(axum::Extension(TokenScope(namespaces))) => Access::only(namespaces),
        None => Access::everywhere(),
    };
    let op = ApiOp::Apply {
        yaml: body,
        namespace,
        access,
    };
    ask(&state.core, op).await
}

pub(super) async fn list(
    State(state): State<AppState>,
    Path(t): Path<Target>,
) -> Reply<List<ApiObject>> {
    let op = ApiOp::Get {
        kind: t.kind()?,
        name: None,
    };
    let Json(mut list) = ask::<List<ApiObject>>(&state.core, op).await?;
    if let Some(ns) = &t.namespace {
        list.items.retain(|o| o.namespace() == Some(ns.as_str()));
    }
    Ok(Json(list))
}

pub(super) async fn get_one(
    State(state): State<AppState>,
    Path(t): Path<Target>,
) -> Reply<ApiObject> {
    let kind = t.kind()?;
    let op = ApiOp::Get {
        kind,
        name: Some(t.key(kind)),
    };
    ask(&state.core, op).await
}

pub(super) async fn delete(State(state): State<AppState>, Path(t): Path<Target>) -> Reply<Deleted> {
    let kind = t.kind()?;
    let op = ApiOp::Delete {
        kind,
        name: t.key(kind),
    };
    ask(&state.core, op).await
}

pub(super) async fn describe(
    State(state): State<AppState>,
    Path(t): Path<Target>,
) -> Reply<Described> {
    let kind = t.kind()?;
    let op = ApiOp::Describe {
        kind,
        name: t.key(kind),
    };
    ask(&state.core, op).await
}

pub(super) async fn scale(
    State(state): State<AppState>,
    Path(t): Path<Target>,
    body: axum::body::Bytes,
) -> Reply<ApiObject> {
    let ScaleRequest { replicas } = serde_json::from_slice(&body).map_err(|e| {
        Failure(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"replicas\": N}}: {e}"),
        )
    })?;
    let name = t.key(ResourceKind::Deployment);
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
    Path(t): Path<Target>,
) -> Reply<RolloutProgress> {
    let kind = ResourceKind::Deployment;
    let name = t.key(kind);
    ask(&state.core, ApiOp::RolloutStatus { kind, name }).await
}

pub(super) async fn rollout_history(
    State(state): State<AppState>,
    Path(t): Path<Target>,
) -> Reply<List<api::Revision>> {
    let kind = ResourceKind::Deployment;
    let name = t.key(kind);
    ask(&state.core, ApiOp::RolloutHistory { kind, name }).await
}

pub(super) async fn rollout_undo(
    State(state): State<AppState>,
    Path(t): Path<Target>,
    body: axum::body::Bytes,
) -> Reply<UndoResult> {
    let kind = ResourceKind::Deployment;
    undo(state, kind, t.key(kind), body).await
}

pub(super) async fn daemon_set_rollout_status(
    State(state): State<AppState>,
    Path(t): Path<Target>,
) -> Reply<RolloutProgress> {
    let kind = ResourceKind::DaemonSet;
    let name = t.key(kind);
    ask(&state.core, ApiOp::RolloutStatus { kind, name }).await
}

pub(super) async fn daemon_set_rollout_history(
    State(state): State<AppState>,
    Path(t): Path<Target>,
) -> Reply<List<api::Revision>> {
    let kind = ResourceKind::DaemonSet;
    let name = t.key(kind);
    ask(&state.core, ApiOp::RolloutHistory { kind, name }).await
}

pub(super) async fn daemon_set_rollout_undo(
    State(state): State<AppState>,
    Path(t): Path<Target>,
    body: axum::body::Bytes,
) -> Reply<UndoResult> {
    let kind = ResourceKind::DaemonSet;
    undo(state, kind, t.key(kind), body).await
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

/// Events, of every namespace (cluster-scoped objects' too) or of one; `object`
/// (`pod/NAME`) is in that namespace.
pub(super) async fn events(
    State(state): State<AppState>,
    Query(routes::Events { object }): Query<routes::Events>,
) -> Reply<List<api::Event>> {
    events_of(state, None, object).await
}

/// One namespace's events.
pub(super) async fn events_in(
    State(state): State<AppState>,
    Path(namespace): Path<String>,
    Query(routes::Events { object }): Query<routes::Events>,
) -> Reply<List<api::Event>> {
    events_of(state, Some(namespace), object).await
}

async fn events_of(
    state: AppState,
    namespace: Option<String>,
    object: Option<String>,
) -> Reply<List<api::Event>> {
    let ns = namespace.as_deref().unwrap_or(api::DEFAULT_NAMESPACE);
    let object = object.map(|o| match o.split_once('/') {
        Some((k, name)) if ResourceKind::parse(k).is_some_and(ResourceKind::is_namespaced) => {
            format!("{k}/{}", api::qualify(ns, name))
        }
        _ => o,
    });
    let Json(mut list) = ask::<List<api::Event>>(&state.core, ApiOp::Events { object }).await?;
    if let Some(ns) = &namespace {
        // Events about cluster-scoped objects (nodes) are `default`'s, as in Kubernetes.
        list.items
            .retain(|e| e.namespace.as_deref().unwrap_or(api::DEFAULT_NAMESPACE) == ns);
    }
    Ok(Json(list))
}
