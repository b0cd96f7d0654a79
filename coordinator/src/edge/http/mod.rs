//! The HTTP API: JSON over HTTP/1.1 under `/api/v1/`.
//!
//! The routes, their methods and bodies are defined once, in [`crate::contract::routes`];
//! this module serves each at its contract path with the contract's method
//! (`Serve::serve`), and its handlers answer the contract's reply types.
//!
//! The HTTP layer holds no state of its own. Each object handler turns its request into
//! an [`ApiOp`], sends it to the core as [`Event::Api`] and awaits the answer, so the API
//! sees exactly what the core has committed. Errors are [`ErrorBody`]
//! (`{"error": "..."}`) with 400, 404, 409, 500 or 503.
//!
//! Every route but `/healthz` and the device routes needs `Authorization: Bearer <token>`
//! (see [`crate::security::auth`]): 401 without a known token, 403 when the token's role
//! may not call the route. Off loopback the API must also be served over TLS (see
//! [`check_listen`]).
//!
//! The handlers by concern: `api` (objects, rollouts, events, health), `agent_updates`
//! (agent rollouts), `tokens` (API
//! and join tokens), `device` (enrollment, identities, rejections); the token check
//! and the device routes' body deadline are in `middleware`. `/api/v1/images` and the
//! read-only registry's `/v2/` are [`crate::registry::routes`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::handler::Handler;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodFilter;
use axum::{Json, Router};
use tokio::sync::mpsc;

use crate::contract::body::ErrorBody;
use crate::contract::routes::{self, Method, Route};
use crate::core::{ApiError, ApiOp, ApiReply, ApiRequest, Event};
use crate::edge::bus::BusStats;
use crate::edge::logs::LogHub;
use crate::metrics::Metrics;
use crate::security::auth::{AuthError, Tokens};
use crate::security::enroll::{EnrollError, Enroller};
use crate::security::gate::Security;

mod agent_updates;
mod api;
mod device;
mod exec;
mod logs;
mod metrics;
mod middleware;
mod tokens;
mod watch;

pub use middleware::BODY_READ_TIMEOUT;

/// Largest accepted request body (a manifest): kube-apiserver's 3 MiB, so a manifest with a
/// ConfigMap at its 1 MiB bound (a third more as base64 `binaryData`) reaches the parser and
/// its clear error rather than a bare 413. Only authenticated callers get this far.
pub const MAX_BODY_BYTES: usize = crate::contract::payload::MAX_REQUEST_BYTES;

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

/// Serving a contract route: its path and method come from [`crate::contract::routes`],
/// so the handler is reachable exactly where the clients call it.
trait Serve<S> {
    fn serve<R: Route, T: 'static>(self, handler: impl Handler<T, S>) -> Self;
}

impl<S: Clone + Send + Sync + 'static> Serve<S> for Router<S> {
    fn serve<R: Route, T: 'static>(self, handler: impl Handler<T, S>) -> Self {
        let filter = match R::METHOD {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
            Method::Delete => MethodFilter::DELETE,
        };
        self.route(R::PATH, axum::routing::on(filter, handler))
    }
}

/// What the object and token routes share.
#[derive(Clone)]
struct AppState {
    core: mpsc::Sender<Event>,
    bus: Arc<BusStats>,
    tokens: Arc<Tokens>,
    /// Log sessions to the nodes; `None` where no bus runs (some tests).
    logs: Option<Arc<LogHub>>,
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
    api_router(core, bus, tokens, images, None, None)
}

/// [`router_with_images`]; with `logs`, pod logs are served (`PodLogs`); with `nodes`, an
/// enrolled node may also sign its release downloads instead of sending a token
/// (`middleware::require_token`).
fn api_router(
    core: mpsc::Sender<Event>,
    bus: Arc<BusStats>,
    tokens: Arc<Tokens>,
    images: Option<Arc<crate::registry::Registry>>,
    logs: Option<Arc<LogHub>>,
    nodes: Option<Arc<Enroller>>,
) -> Router {
    let gate = middleware::Gate {
        tokens: tokens.clone(),
        nodes,
    };
    let mut app = Router::new()
        .serve::<routes::Healthz, _>(api::healthz)
        .serve::<routes::WhoAmI, _>(tokens::whoami)
        .serve::<routes::ListTokens, _>(tokens::list_tokens)
        .serve::<routes::CreateToken, _>(tokens::create_token)
        .serve::<routes::DeleteToken, _>(tokens::delete_token)
        .serve::<routes::Apply, _>(api::apply)
        .serve::<routes::Events, _>(api::events)
        .serve::<routes::PodLogs, _>(logs::pod_logs)
        .serve::<routes::PodExec, _>(exec::pod_exec)
        .serve::<routes::Watch, _>(watch::watch)
        .serve::<routes::TopNodes, _>(metrics::top_nodes)
        .serve::<routes::TopPods, _>(metrics::top_pods)
        .serve::<routes::Describe, _>(api::describe)
        .serve::<routes::ListObjects, _>(api::list)
        .serve::<routes::GetObject, _>(api::get_one)
        .serve::<routes::DeleteObject, _>(api::delete)
        .serve::<routes::Scale, _>(api::scale)
        .serve::<routes::UpdateNode, _>(api::update_node)
        .serve::<routes::RolloutStatus, _>(api::rollout_status)
        .serve::<routes::RolloutHistory, _>(api::rollout_history)
        .serve::<routes::RolloutUndo, _>(api::rollout_undo)
        .serve::<routes::DaemonSetRolloutStatus, _>(api::daemon_set_rollout_status)
        .serve::<routes::DaemonSetRolloutHistory, _>(api::daemon_set_rollout_history)
        .serve::<routes::DaemonSetRolloutUndo, _>(api::daemon_set_rollout_undo)
        .serve::<routes::ListNamespaced, _>(api::list)
        .serve::<routes::GetNamespaced, _>(api::get_one)
        .serve::<routes::DeleteNamespaced, _>(api::delete)
        .serve::<routes::DescribeNamespaced, _>(api::describe)
        .serve::<routes::EventsNamespaced, _>(api::events_in)
        .serve::<routes::PodLogsNamespaced, _>(logs::pod_logs)
        .serve::<routes::PodExecNamespaced, _>(exec::pod_exec)
        .serve::<routes::WatchNamespaced, _>(watch::watch_in)
        .serve::<routes::ScaleNamespaced, _>(api::scale)
        .serve::<routes::RolloutStatusNamespaced, _>(api::rollout_status)
        .serve::<routes::RolloutHistoryNamespaced, _>(api::rollout_history)
        .serve::<routes::RolloutUndoNamespaced, _>(api::rollout_undo)
        .serve::<routes::DaemonSetRolloutStatusNamespaced, _>(api::daemon_set_rollout_status)
        .serve::<routes::DaemonSetRolloutHistoryNamespaced, _>(api::daemon_set_rollout_history)
        .serve::<routes::DaemonSetRolloutUndoNamespaced, _>(api::daemon_set_rollout_undo)
        .serve::<routes::AgentRolloutStatus, _>(agent_updates::status)
        .serve::<routes::AgentRolloutPause, _>(agent_updates::pause)
        .serve::<routes::AgentRolloutResume, _>(agent_updates::resume)
        .serve::<routes::AgentRolloutAbort, _>(agent_updates::abort);
    if let Some(images) = images {
        app = app.merge(crate::registry::routes(images));
    }
    app.layer(axum::middleware::from_fn_with_state(
        gate,
        middleware::require_token,
    ))
    .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
    .with_state(AppState {
        core,
        bus,
        tokens,
        logs,
    })
}

/// The whole API as the server serves it on its main listener: [`router_with_images`]
/// and [`security_router`] side by side, and the web dashboard's page and assets
/// ([`crate::dashboard`], no token).
pub fn app(
    core: mpsc::Sender<Event>,
    bus: Arc<BusStats>,
    tokens: Arc<Tokens>,
    images: Arc<crate::registry::Registry>,
    security: Arc<Security>,
    enroller: Arc<Enroller>,
    logs: Arc<LogHub>,
) -> Router {
    let sec_routes = security_router(
        core.clone(),
        tokens.clone(),
        security,
        enroller.clone(),
        bus.metrics.clone(),
    );
    api_router(core, bus, tokens, Some(images), Some(logs), Some(enroller))
        .merge(sec_routes)
        .merge(crate::dashboard::router())
}

/// What the device and identity routes share.
#[derive(Clone)]
struct SecState {
    core: mpsc::Sender<Event>,
    security: Arc<Security>,
    enroller: Arc<Enroller>,
    metrics: Arc<Metrics>,
}

/// The routes of device identity, merged beside [`router`]'s. Enrollment, its CA and
/// certificate rotation authenticate themselves (join token, node signature) and are
/// capped at `enroll::MAX_REQUEST_BYTES`; join tokens, revocation, key rotation,
/// identities, rejections and `/metrics` sit behind the same token check as everything
/// else.
pub fn security_router(
    core: mpsc::Sender<Event>,
    tokens: Arc<Tokens>,
    security: Arc<Security>,
    enroller: Arc<Enroller>,
    metrics: Arc<Metrics>,
) -> Router {
    let public = enroll_routes();
    let authed = Router::new()
        .serve::<routes::ListJoinTokens, _>(tokens::list_join)
        .serve::<routes::CreateJoinToken, _>(tokens::create_join)
        .serve::<routes::DeleteJoinToken, _>(tokens::delete_join)
        .serve::<routes::Revoke, _>(device::revoke)
        .serve::<routes::RotateKey, _>(device::rotate_key)
        .serve::<routes::Identity, _>(device::node_identity)
        .serve::<routes::Rejections, _>(device::rejections)
        .serve::<routes::Metrics, _>(metrics::metrics)
        .layer(axum::middleware::from_fn_with_state(
            middleware::Gate {
                tokens,
                nodes: None,
            },
            middleware::require_token,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES));
    public.merge(authed).with_state(SecState {
        core,
        security,
        enroller,
        metrics,
    })
}

fn enroll_routes() -> Router<SecState> {
    Router::new()
        .serve::<routes::EnrollCa, _>(device::enroll_ca)
        .serve::<routes::Enroll, _>(device::enroll)
        .serve::<routes::RotateCertificate, _>(device::rotate)
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::security::enroll::MAX_REQUEST_BYTES,
        ))
        .layer(axum::middleware::from_fn(middleware::read_body_in_time))
}

/// Only the routes devices use, for the separate `--enroll-listen` TLS listener: devices
/// on the network can enroll while the API itself stays on loopback. Enroll, its CA and
/// rotate; and release binaries for enrolled, non-revoked nodes that sign the request
/// with their device key (they hold no API token), so agent updates reach them.
pub fn enroll_router(
    core: mpsc::Sender<Event>,
    security: Arc<Security>,
    enroller: Arc<Enroller>,
    releases: Arc<crate::registry::Releases>,
) -> Router {
    // route_layer: a path the listener does not serve stays a plain 404.
    let downloads = crate::registry::release_download_routes(releases).route_layer(
        axum::middleware::from_fn_with_state(enroller.clone(), middleware::require_node_signature),
    );
    enroll_routes()
        .with_state(SecState {
            core,
            security,
            enroller,
            // The enroll listener serves no metrics; these count nothing.
            metrics: Arc::default(),
        })
        .merge(downloads)
}

/// An error answer: its status and the [`ErrorBody`] message.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        let code = match &e {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        Failure(code, e.to_string())
    }
}

impl From<AuthError> for Failure {
    fn from(e: AuthError) -> Self {
        let code = match &e {
            AuthError::Exists(_) => StatusCode::CONFLICT,
            AuthError::NotFound(_) => StatusCode::NOT_FOUND,
            AuthError::InvalidName(_) | AuthError::InvalidNamespace(_) => StatusCode::BAD_REQUEST,
            AuthError::Store(_) | AuthError::WriteConf { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(code, e.to_string())
    }
}

impl From<EnrollError> for Failure {
    fn from(e: EnrollError) -> Self {
        let code = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if code.is_server_error() {
            tracing::error!(error = %e, "enrollment failed");
        } else {
            tracing::info!(error = %e, "enrollment refused");
        }
        Failure(code, e.to_string())
    }
}

/// A handler's answer: the route's reply body, or an error.
type Reply<T> = Result<Json<T>, Failure>;

/// A reply body the core answers an [`ApiOp`] with.
trait FromReply: Sized {
    fn from_reply(reply: ApiReply) -> Option<Self>;
}

/// Sends `op` to the core and awaits its answer, which must be a `T`.
async fn ask<T: FromReply>(core: &mpsc::Sender<Event>, op: ApiOp) -> Reply<T> {
    let (req, rx) = ApiRequest::new(op);
    core.send(Event::Api(req))
        .await
        .map_err(|_| Failure::from(ApiError::Unavailable))?;
    let reply = rx
        .await
        .map_err(|_| Failure::from(ApiError::Unavailable))??;
    T::from_reply(reply).map(Json).ok_or_else(|| {
        Failure::from(ApiError::Internal(format!(
            "the core did not answer with a {}",
            std::any::type_name::<T>()
        )))
    })
}

#[cfg(test)]
mod tests;
