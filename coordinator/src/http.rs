//! The HTTP API: JSON over HTTP/1.1 under `/api/v1/`.
//!
//! The HTTP layer holds no state of its own. Each handler turns its request into an
//! [`ApiOp`], sends it to the core as [`Event::Api`] and awaits the answer, so the API
//! sees exactly what the core has committed. Errors are `{"error": "..."}` with 400, 404,
//! 409, 500 or 503.
//!
//! There is no TLS and no authentication yet, so the server listens on loopback unless
//! the operator explicitly allows a remote address (see [`check_listen`]).
//!
//! Routes:
//! ```text
//! GET    /healthz
//! POST   /api/v1/apply                     body: YAML text
//! GET    /api/v1/{nodes|deployments|pods}[/NAME]
//! DELETE /api/v1/{deployments|pods}/NAME
//! POST   /api/v1/deployments/NAME/scale    body: {"replicas": N}
//! GET    /api/v1/deployments/NAME/rollout/status    rollout::RolloutProgress
//! GET    /api/v1/deployments/NAME/rollout/history   {"items": [api::Revision, ...]}
//! POST   /api/v1/deployments/NAME/rollout/undo      body: {"toRevision": N} or empty
//! GET    /api/v1/describe/{kind}/NAME      {"object": ..., "events": [...]}
//! GET    /api/v1/events[?object=pod/NAME]
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::bus::BusStats;
use crate::core::{ApiError, ApiOp, ApiReply, ApiRequest, Event, ResourceKind};

/// Largest accepted request body (a manifest).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "refusing to serve the API on non-loopback address {0}: it has no authentication yet; pass --allow-remote to do it anyway"
    )]
    NotLoopback(SocketAddr),
}

/// Refuses a non-loopback listen address unless `allow_remote`.
pub fn check_listen(addr: SocketAddr, allow_remote: bool) -> Result<(), HttpError> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if !allow_remote {
        return Err(HttpError::NotLoopback(addr));
    }
    tracing::warn!(%addr, "serving the API on a non-loopback address WITHOUT authentication or TLS");
    Ok(())
}

#[derive(Clone)]
struct AppState {
    core: mpsc::Sender<Event>,
    bus: Arc<BusStats>,
}

/// The API's routes.
pub fn router(core: mpsc::Sender<Event>, bus: Arc<BusStats>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/apply", post(apply))
        .route("/api/v1/events", get(events))
        .route("/api/v1/describe/{kind}/{name}", get(describe))
        .route("/api/v1/{kind}", get(list))
        .route("/api/v1/{kind}/{name}", get(get_one).delete(delete))
        .route("/api/v1/deployments/{name}/scale", post(scale))
        .route(
            "/api/v1/deployments/{name}/rollout/status",
            get(rollout_status),
        )
        .route(
            "/api/v1/deployments/{name}/rollout/history",
            get(rollout_history),
        )
        .route(
            "/api/v1/deployments/{name}/rollout/undo",
            post(rollout_undo),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(AppState { core, bus })
}

struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        let code = match &e {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        Failure(code, e.to_string())
    }
}

type Reply = Result<Json<serde_json::Value>, Failure>;

async fn call(state: &AppState, op: ApiOp) -> Result<ApiReply, Failure> {
    let (req, rx) = ApiRequest::new(op);
    state
        .core
        .send(Event::Api(req))
        .await
        .map_err(|_| Failure::from(ApiError::Unavailable))?;
    Ok(rx
        .await
        .map_err(|_| Failure::from(ApiError::Unavailable))??)
}

fn kind(s: &str) -> Result<ResourceKind, Failure> {
    ResourceKind::parse(s).ok_or_else(|| {
        Failure(
            StatusCode::NOT_FOUND,
            format!("unknown resource type {s:?}: use nodes, deployments or pods"),
        )
    })
}

fn render(reply: ApiReply) -> serde_json::Value {
    match reply {
        ApiReply::Applied(results) => json!({ "results": results }),
        ApiReply::Objects(items) => json!({ "items": items }),
        ApiReply::Object(o) => o,
        ApiReply::Deleted { kind, name } => json!({ "deleted": { "kind": kind, "name": name } }),
        ApiReply::Described { object, events } => json!({ "object": object, "events": events }),
        ApiReply::Events(events) => json!({ "items": events }),
    }
}

async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "mqtt": state.bus.snapshot() }))
}

async fn apply(State(state): State<AppState>, body: String) -> Reply {
    Ok(Json(render(
        call(&state, ApiOp::Apply { yaml: body }).await?,
    )))
}

async fn list(State(state): State<AppState>, Path(k): Path<String>) -> Reply {
    Ok(Json(render(
        call(
            &state,
            ApiOp::Get {
                kind: kind(&k)?,
                name: None,
            },
        )
        .await?,
    )))
}

async fn get_one(State(state): State<AppState>, Path((k, name)): Path<(String, String)>) -> Reply {
    Ok(Json(render(
        call(
            &state,
            ApiOp::Get {
                kind: kind(&k)?,
                name: Some(name),
            },
        )
        .await?,
    )))
}

async fn delete(State(state): State<AppState>, Path((k, name)): Path<(String, String)>) -> Reply {
    Ok(Json(render(
        call(
            &state,
            ApiOp::Delete {
                kind: kind(&k)?,
                name,
            },
        )
        .await?,
    )))
}

async fn describe(State(state): State<AppState>, Path((k, name)): Path<(String, String)>) -> Reply {
    Ok(Json(render(
        call(
            &state,
            ApiOp::Describe {
                kind: kind(&k)?,
                name,
            },
        )
        .await?,
    )))
}

#[derive(Deserialize)]
struct ScaleBody {
    replicas: u32,
}

async fn scale(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Reply {
    let ScaleBody { replicas } = serde_json::from_slice(&body).map_err(|e| {
        Failure(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"replicas\": N}}: {e}"),
        )
    })?;
    Ok(Json(render(
        call(&state, ApiOp::Scale { name, replicas }).await?,
    )))
}

async fn rollout_status(State(state): State<AppState>, Path(name): Path<String>) -> Reply {
    Ok(Json(render(
        call(&state, ApiOp::RolloutStatus { name }).await?,
    )))
}

async fn rollout_history(State(state): State<AppState>, Path(name): Path<String>) -> Reply {
    Ok(Json(render(
        call(&state, ApiOp::RolloutHistory { name }).await?,
    )))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UndoBody {
    to_revision: Option<u64>,
}

async fn rollout_undo(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Reply {
    let UndoBody { to_revision } = if body.iter().all(u8::is_ascii_whitespace) {
        UndoBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Failure(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"toRevision\": N}} or an empty body: {e}"),
            )
        })?
    };
    Ok(Json(render(
        call(&state, ApiOp::RolloutUndo { name, to_revision }).await?,
    )))
}

#[derive(Deserialize)]
struct EventsQuery {
    object: Option<String>,
}

async fn events(State(state): State<AppState>, Query(q): Query<EventsQuery>) -> Reply {
    Ok(Json(render(
        call(&state, ApiOp::Events { object: q.object }).await?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_unless_allowed() {
        assert!(check_listen("127.0.0.1:7474".parse().unwrap(), false).is_ok());
        assert!(check_listen("[::1]:7474".parse().unwrap(), false).is_ok());
        let err = check_listen("0.0.0.0:7474".parse().unwrap(), false).unwrap_err();
        assert!(err.to_string().contains("--allow-remote"));
        assert!(check_listen("0.0.0.0:7474".parse().unwrap(), true).is_ok());
    }
}
