//! The HTTP API: JSON over HTTP/1.1 under `/api/v1/`.
//!
//! The HTTP layer holds no state of its own. Each handler turns its request into an
//! [`ApiOp`], sends it to the core as [`Event::Api`] and awaits the answer, so the API
//! sees exactly what the core has committed. Errors are `{"error": "..."}` with 400, 404,
//! 409, 500 or 503.
//!
//! Every route but `/healthz` needs `Authorization: Bearer <token>` (see [`crate::security::auth`]):
//! 401 without a known token, 403 when the token's role may not call the route. Off
//! loopback the API must also be served over TLS (see [`check_listen`]).
//!
//! Routes:
//! ```text
//! GET    /healthz                          (no token needed)
//! GET    /api/v1/tokens                    {"items": [auth::TokenInfo, ...]}  (admin)
//! POST   /api/v1/tokens                    body: {"name": N, "role": R} -> {"name", "role", "token"}
//! DELETE /api/v1/tokens/NAME
//! POST   /api/v1/apply                     body: YAML text
//! GET    /api/v1/{nodes|deployments|pods}[/NAME]
//! DELETE /api/v1/{deployments|pods}/NAME
//! POST   /api/v1/deployments/NAME/scale    body: {"replicas": N}
//! GET    /api/v1/deployments/NAME/rollout/status    rollout::RolloutProgress
//! GET    /api/v1/deployments/NAME/rollout/history   {"items": [api::Revision, ...]}
//! POST   /api/v1/deployments/NAME/rollout/undo      body: {"toRevision": N} or empty
//! GET    /api/v1/describe/{kind}/NAME      {"object": ..., "events": [...]}
//! GET    /api/v1/events[?object=pod/NAME]
//! GET|POST|DELETE /api/v1/images...  and GET /v2/...  (see crate::registry::routes)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete as delete_route, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::contract::{body, ResourceKind};
use crate::core::{ApiError, ApiOp, ApiReply, ApiRequest, Event};
use crate::edge::bus::BusStats;
use crate::security::auth::{self, AuthError, Role, Tokens};

/// Largest accepted request body (a manifest).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "refusing to serve the API on non-loopback address {0} without TLS: pass --tls-cert and --tls-key, or --insecure-allow-remote to do it anyway"
    )]
    NotLoopback(SocketAddr),
}

/// Refuses a non-loopback listen address without TLS unless `insecure_allow_remote`:
/// tokens would cross the network in clear text. Loopback may stay plain HTTP.
pub fn check_listen(
    addr: SocketAddr,
    tls: bool,
    insecure_allow_remote: bool,
) -> Result<(), HttpError> {
    if addr.ip().is_loopback() || tls {
        return Ok(());
    }
    if !insecure_allow_remote {
        return Err(HttpError::NotLoopback(addr));
    }
    tracing::warn!(%addr, "serving the API on a non-loopback address WITHOUT TLS: tokens cross the network in clear text");
    Ok(())
}

#[derive(Clone)]
struct AppState {
    core: mpsc::Sender<Event>,
    bus: Arc<BusStats>,
    tokens: Arc<Tokens>,
}

/// The API's routes, behind token authentication.
pub fn router(core: mpsc::Sender<Event>, bus: Arc<BusStats>, tokens: Arc<Tokens>) -> Router {
    router_with_images(core, bus, tokens, None)
}

/// [`router`], plus the image import API and the read-only registry (see
/// [`crate::registry::routes`]) behind the same token middleware: `/v2/` reads need any
/// token, import and delete an admin one.
pub fn router_with_images(
    core: mpsc::Sender<Event>,
    bus: Arc<BusStats>,
    tokens: Arc<Tokens>,
    images: Option<Arc<crate::registry::Registry>>,
) -> Router {
    let mut routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{name}", delete_route(delete_token))
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
        );
    if let Some(images) = images {
        routes = routes.merge(crate::registry::routes(images));
    }
    routes
        .layer(axum::middleware::from_fn_with_state(
            tokens.clone(),
            require_token,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(AppState { core, bus, tokens })
}

/// 401 unless the request carries a known bearer token, 403 unless its role may call
/// the route. `/healthz` stays open for probes.
async fn require_token(State(tokens): State<Arc<Tokens>>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let unauthorized = |msg: &str| {
        let mut r = Failure(StatusCode::UNAUTHORIZED, msg.to_owned()).into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        r
    };
    let Some(secret) = bearer else {
        return unauthorized("unauthorized: send an API token as `Authorization: Bearer TOKEN`");
    };
    let Some((name, role)) = tokens.authenticate(secret) else {
        return unauthorized("unauthorized: unknown or deleted token");
    };
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    if !auth::authorize(role, &method, &path) {
        tracing::info!(token = %name, role = role.as_str(), %method, %path, "forbidden");
        let denied = auth::Denied {
            name,
            role: role.as_str(),
            method,
            path,
        };
        return Failure(StatusCode::FORBIDDEN, denied.to_string()).into_response();
    }
    // An authenticated request keeps its connection from being closed to make room for
    // others until its response is sent (see crate::edge::serve).
    let hold = crate::edge::serve::Hold::of(&req);
    let resp = next.run(req).await;
    match hold {
        Some(h) => h.until_sent(resp),
        None => resp,
    }
}

/// How long an unauthenticated device request (enroll, rotate) may take to send its
/// body: a client trickling a body would otherwise hold its connection for as long as
/// it likes.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the body of the token-less device routes within [`BODY_READ_TIMEOUT`] (and
/// `enroll::MAX_REQUEST_BYTES`) before the handler sees it.
async fn read_body_in_time(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let limit = crate::security::enroll::MAX_REQUEST_BYTES;
    let bytes =
        match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, limit)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                return Failure(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("cannot read a request body of at most {limit} bytes: {e}"),
                )
                .into_response()
            }
            Err(_) => {
                return Failure(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the request body did not arrive within {BODY_READ_TIMEOUT:?}"),
                )
                .into_response()
            }
        };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

impl From<AuthError> for Failure {
    fn from(e: AuthError) -> Self {
        let code = match &e {
            AuthError::Exists(_) => StatusCode::CONFLICT,
            AuthError::NotFound(_) => StatusCode::NOT_FOUND,
            AuthError::InvalidName(_) => StatusCode::BAD_REQUEST,
            AuthError::Store(_) | AuthError::WriteConf { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(code, e.to_string())
    }
}

async fn list_tokens(State(state): State<AppState>) -> Reply {
    Ok(Json(json!({ "items": state.tokens.list() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    role: Role,
}

async fn create_token(State(state): State<AppState>, body: axum::body::Bytes) -> Reply {
    let CreateToken { name, role } = serde_json::from_slice(&body).map_err(|e| {
        Failure(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"name\": N, \"role\": \"admin\"|\"read-only\"}}: {e}"),
        )
    })?;
    let token = state.tokens.create(&name, role)?;
    tracing::info!(token = %name, role = role.as_str(), "token created");
    Ok(Json(json!({ "name": name, "role": role, "token": token })))
}

async fn delete_token(State(state): State<AppState>, Path(name): Path<String>) -> Reply {
    state.tokens.delete(&name)?;
    tracing::info!(token = %name, "token deleted");
    Ok(Json(
        json!({ "deleted": { "kind": "token", "name": name } }),
    ))
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
    fn value<T: serde::Serialize>(body: T) -> serde_json::Value {
        serde_json::to_value(body).unwrap_or(serde_json::Value::Null)
    }
    match reply {
        ApiReply::Applied(results) => value(body::ApplyResults { results }),
        ApiReply::Objects(items) => value(body::List { items }),
        ApiReply::Object(o) => value(o),
        ApiReply::Deleted { kind, name } => value(body::Deleted::resource(kind, name)),
        ApiReply::Described { object, events } => value(body::Described { object, events }),
        ApiReply::Events(items) => value(body::List { items }),
        ApiReply::Rollout(p) => value(p),
        ApiReply::Revisions(items) => value(body::List { items }),
        ApiReply::RolledBack(r) => value(r),
        ApiReply::Revocation(r) => value(r),
    }
}

/// 200 while the broker link works; 503 with the reason while it is known to be broken
/// (connecting failed, the broker denied the subscription, or a certificate the broker's
/// ACL will silently ignore and no node heard from), so a probe or a person sees a
/// coordinator that can reach no node. Before the first attempt has ended it is
/// still 200: nothing is known to be wrong yet.
async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let mqtt = state.bus.snapshot();
    match state.bus.problem() {
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({ "status": "unavailable", "reason": format!("mqtt: {reason}"), "mqtt": mqtt }),
            ),
        ),
        None => (
            StatusCode::OK,
            Json(json!({ "status": "ok", "mqtt": mqtt })),
        ),
    }
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

// ----- enrollment, identities and rejections (crate::security::enroll, crate::security::gate) ---------

#[derive(Clone)]
struct SecState {
    core: mpsc::Sender<Event>,
    security: Arc<crate::security::gate::Security>,
    enroller: Arc<crate::security::enroll::Enroller>,
}

/// Routes of device identity, merged beside [`router`]'s:
/// ```text
/// GET    /api/v1/enroll/ca                  the CA certificate, PEM (no token; pinned by hash)
/// POST   /api/v1/enroll                     enroll::EnrollRequest -> EnrollResponse (no token)
/// POST   /api/v1/nodes/NAME/rotate          enroll::RotateRequest, signed by the node key (no token)
/// GET    /api/v1/tokens/join                {"items": [enroll::JoinTokenInfo]}       (admin)
/// POST   /api/v1/tokens/join                enroll::CreateJoinToken -> {"token", ...} (admin)
/// DELETE /api/v1/tokens/join/ID                                                      (admin)
/// POST   /api/v1/nodes/NAME/revoke                                                   (admin)
/// POST   /api/v1/nodes/NAME/rotate-key      -> security::IdentitySummary (before)    (admin)
/// GET    /api/v1/nodes/NAME/identity        security::IdentitySummary                (read-only)
/// GET    /api/v1/security/rejections        security::RejectionReport                (read-only)
/// ```
/// The first three authenticate themselves (join token, node signature) and are capped
/// at `enroll::MAX_REQUEST_BYTES`; the others sit behind the same token check as
/// everything else.
pub fn security_router(
    core: mpsc::Sender<Event>,
    tokens: Arc<Tokens>,
    security: Arc<crate::security::gate::Security>,
    enroller: Arc<crate::security::enroll::Enroller>,
) -> Router {
    let public = enroll_routes();
    let authed = Router::new()
        .route("/api/v1/tokens/join", get(list_join).post(create_join))
        .route("/api/v1/tokens/join/{id}", delete_route(delete_join))
        .route("/api/v1/nodes/{name}/revoke", post(revoke))
        .route("/api/v1/nodes/{name}/rotate-key", post(rotate_key))
        .route("/api/v1/nodes/{name}/identity", get(node_identity))
        .route("/api/v1/security/rejections", get(rejections))
        .layer(axum::middleware::from_fn_with_state(tokens, require_token))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES));
    public.merge(authed).with_state(SecState {
        core,
        security,
        enroller,
    })
}

fn enroll_routes() -> Router<SecState> {
    Router::new()
        .route("/api/v1/enroll/ca", get(enroll_ca))
        .route("/api/v1/enroll", post(enroll))
        .route("/api/v1/nodes/{name}/rotate", post(rotate))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::security::enroll::MAX_REQUEST_BYTES,
        ))
        .layer(axum::middleware::from_fn(read_body_in_time))
}

/// Only the three routes devices use (enroll, its CA, rotate), for the separate
/// `--enroll-listen` TLS listener: devices on the network can enroll while the API
/// itself stays on loopback.
pub fn enroll_router(
    core: mpsc::Sender<Event>,
    security: Arc<crate::security::gate::Security>,
    enroller: Arc<crate::security::enroll::Enroller>,
) -> Router {
    enroll_routes().with_state(SecState {
        core,
        security,
        enroller,
    })
}

fn unix_now() -> u64 {
    crate::security::encoding::now_ms() / 1000
}

impl From<crate::security::enroll::EnrollError> for Failure {
    fn from(e: crate::security::enroll::EnrollError) -> Self {
        let code = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if code.is_server_error() {
            tracing::error!(error = %e, "enrollment failed");
        } else {
            tracing::info!(error = %e, "enrollment refused");
        }
        Failure(code, e.to_string())
    }
}

async fn sec_call(state: &SecState, op: ApiOp) -> Result<ApiReply, Failure> {
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

async fn enroll_ca(State(state): State<SecState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.security.pki().ca_pem().to_owned(),
    )
        .into_response()
}

async fn enroll(State(state): State<SecState>, body: axum::body::Bytes) -> Reply {
    let done = state.enroller.enroll(&body, unix_now())?;
    if done.was_revoked {
        sec_call(
            &state,
            ApiOp::SetRevoked {
                name: done.response.node_name.clone(),
                revoked: false,
            },
        )
        .await?;
    }
    Ok(Json(json!(done.response)))
}

async fn rotate(
    State(state): State<SecState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Reply {
    let resp = state
        .enroller
        .rotate(&name, &body, crate::security::encoding::now_ms())?;
    Ok(Json(json!(resp)))
}

async fn list_join(State(state): State<SecState>) -> Reply {
    Ok(Json(json!({ "items": state.enroller.list_tokens() })))
}

async fn create_join(State(state): State<SecState>, body: axum::body::Bytes) -> Reply {
    let req: crate::security::enroll::CreateJoinToken = serde_json::from_slice(&body).map_err(|e| {
        Failure(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"ttlSeconds\": N, \"uses\": N, \"labels\": {{}}, \"nodeName\": N}}: {e}"),
        )
    })?;
    let (token, info) = state.enroller.create_token(&req, unix_now())?;
    tracing::info!(id = %info.id, uses = info.uses_left, "join token created");
    Ok(Json(json!({ "token": token, "info": info })))
}

async fn delete_join(State(state): State<SecState>, Path(id): Path<String>) -> Reply {
    if !state.enroller.delete_token(&id)? {
        return Err(Failure(
            StatusCode::NOT_FOUND,
            format!("join token {id:?} not found"),
        ));
    }
    Ok(Json(
        json!({ "deleted": { "kind": "jointoken", "name": id } }),
    ))
}

async fn revoke(State(state): State<SecState>, Path(name): Path<String>) -> Reply {
    state.security.revoke(&name).map_err(|e| match e {
        crate::security::gate::SecurityError::NotEnrolled(_) => {
            Failure(StatusCode::NOT_FOUND, e.to_string())
        }
        other => Failure(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    })?;
    Ok(Json(render(
        sec_call(
            &state,
            ApiOp::SetRevoked {
                name,
                revoked: true,
            },
        )
        .await?,
    )))
}

fn security_failure(e: crate::security::gate::SecurityError) -> Failure {
    use crate::security::gate::SecurityError as E;
    match e {
        E::NotEnrolled(_) => Failure(StatusCode::NOT_FOUND, e.to_string()),
        E::Revoked(_) => Failure(StatusCode::CONFLICT, e.to_string()),
        E::NotQueued(_) => Failure(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        other => Failure(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

async fn rotate_key(State(state): State<SecState>, Path(name): Path<String>) -> Reply {
    let before = state
        .security
        .request_rotation(&name)
        .map_err(security_failure)?;
    Ok(Json(json!(before)))
}

async fn node_identity(State(state): State<SecState>, Path(name): Path<String>) -> Reply {
    let rec = state.security.identity(&name).ok_or_else(|| {
        security_failure(crate::security::gate::SecurityError::NotEnrolled(
            name.clone(),
        ))
    })?;
    Ok(Json(json!(crate::security::gate::IdentitySummary::from(
        &rec
    ))))
}

async fn rejections(State(state): State<SecState>) -> Reply {
    Ok(Json(json!(state.security.report())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_needs_tls_unless_explicitly_insecure() {
        let lo = "127.0.0.1:7474".parse().unwrap();
        let any = "0.0.0.0:7474".parse().unwrap();
        assert!(check_listen(lo, false, false).is_ok());
        assert!(check_listen("[::1]:7474".parse().unwrap(), false, false).is_ok());
        let err = check_listen(any, false, false).unwrap_err();
        assert!(err.to_string().contains("--tls-cert"), "{err}");
        assert!(err.to_string().contains("--insecure-allow-remote"), "{err}");
        assert!(check_listen(any, true, false).is_ok());
        assert!(check_listen(any, false, true).is_ok());
    }

    /// A device route's body that never finishes is cut off at BODY_READ_TIMEOUT (408)
    /// rather than holding its connection; an oversized one is refused (413).
    #[tokio::test(start_paused = true)]
    async fn device_route_bodies_must_arrive_in_time() {
        use axum::body::Body;
        use tower::ServiceExt;

        let app = Router::new()
            .route(
                "/x",
                post(|b: axum::body::Bytes| async move { b.len().to_string() }),
            )
            .layer(axum::middleware::from_fn(read_body_in_time));
        let send = |body: Body| {
            let req = axum::http::Request::post("/x").body(body).unwrap();
            app.clone().oneshot(req)
        };
        let ok = send(Body::from("hello")).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        let started = tokio::time::Instant::now();
        let never = futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
        let slow = send(Body::from_stream(never)).await.unwrap();
        assert_eq!(slow.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(started.elapsed(), BODY_READ_TIMEOUT);
        let big = vec![b'x'; crate::security::enroll::MAX_REQUEST_BYTES + 1];
        let big = send(Body::from(big)).await.unwrap();
        assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    /// Route x role -> status, through the real router and middleware. The core is a
    /// task that answers every API call with an empty list, so allowed calls get 200
    /// (or 400 for a bad body) and denied ones never reach it.
    #[tokio::test]
    async fn status_per_route_and_role() {
        use axum::body::Body;
        use tower::ServiceExt;

        let (tx, mut rx) = mpsc::channel::<Event>(16);
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if let Event::Api(req) = ev {
                    let _ = req.reply.send(Ok(ApiReply::Objects(Vec::new())));
                }
            }
        });
        let store: Arc<dyn crate::store::Store> = Arc::new(crate::store::MemStore::default());
        let tokens = Arc::new(Tokens::load(store).unwrap());
        let admin = tokens.create("admin", Role::Admin).unwrap();
        let ro = tokens.create("viewer", Role::ReadOnly).unwrap();
        let app = router(tx, Arc::new(BusStats::default()), tokens.clone());

        let cases: &[(&str, &str, &str, Option<&str>, u16)] = &[
            ("GET", "/healthz", "", None, 200),
            ("GET", "/api/v1/pods", "", None, 401),
            ("GET", "/api/v1/pods", "", Some("wrong"), 401),
            ("GET", "/api/v1/pods", "", Some(&ro), 200),
            ("GET", "/api/v1/pods/x", "", Some(&ro), 200),
            ("GET", "/api/v1/events", "", Some(&ro), 200),
            ("POST", "/api/v1/apply", "", Some(&ro), 403),
            ("DELETE", "/api/v1/pods/x", "", Some(&ro), 403),
            (
                "POST",
                "/api/v1/deployments/x/scale",
                r#"{"replicas":1}"#,
                Some(&ro),
                403,
            ),
            (
                "POST",
                "/api/v1/deployments/x/rollout/undo",
                "",
                Some(&ro),
                403,
            ),
            ("GET", "/api/v1/tokens", "", Some(&ro), 403),
            (
                "POST",
                "/api/v1/tokens",
                r#"{"name":"x","role":"admin"}"#,
                Some(&ro),
                403,
            ),
            ("GET", "/api/v1/pods", "", Some(&admin), 200),
            ("POST", "/api/v1/apply", "", Some(&admin), 200),
            ("DELETE", "/api/v1/pods/x", "", Some(&admin), 200),
            (
                "POST",
                "/api/v1/deployments/x/scale",
                r#"{"replicas":1}"#,
                Some(&admin),
                200,
            ),
            ("GET", "/api/v1/tokens", "", Some(&admin), 200),
            (
                "POST",
                "/api/v1/tokens",
                r#"{"name":"x","role":"bogus"}"#,
                Some(&admin),
                400,
            ),
            (
                "POST",
                "/api/v1/tokens",
                r#"{"name":"x","role":"read-only"}"#,
                Some(&admin),
                200,
            ),
            (
                "POST",
                "/api/v1/tokens",
                r#"{"name":"x","role":"read-only"}"#,
                Some(&admin),
                409,
            ),
            ("DELETE", "/api/v1/tokens/x", "", Some(&admin), 200),
            ("DELETE", "/api/v1/tokens/x", "", Some(&admin), 404),
        ];
        for (method, path, body, token, want) in cases {
            let mut req = axum::http::Request::builder().method(*method).uri(*path);
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let resp = app
                .clone()
                .oneshot(req.body(Body::from(body.to_string())).unwrap())
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            assert_eq!(status, *want, "{method} {path} as {token:?}: {bytes:?}");
            if status == 403 {
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                let msg = v["error"].as_str().unwrap();
                assert!(msg.contains("read-only"), "{msg}");
            }
        }
    }
}
