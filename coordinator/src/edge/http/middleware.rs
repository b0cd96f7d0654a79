//! What runs before the handlers: the token check of the API routes, and the body
//! deadline of the token-less device routes.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Failure;
use crate::contract::routes::{Healthz, Route};
use crate::security::auth::{self, Tokens};
use crate::security::enroll::{EnrollError, Enroller};
use baton_proto::enroll::{NODE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// What the token check needs: the API tokens, and the enroller when enrolled nodes may
/// also sign their release downloads on this listener instead of sending a token.
#[derive(Clone)]
pub(super) struct Gate {
    pub tokens: Arc<Tokens>,
    pub nodes: Option<Arc<Enroller>>,
}

/// 401 unless the request carries a known bearer token, 403 unless its role may call
/// the route. `/healthz` stays open for probes.
pub(super) async fn require_token(State(gate): State<Gate>, req: Request, next: Next) -> Response {
    if req.uri().path() == Healthz::PATH {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let (None, Some(nodes)) = (bearer, &gate.nodes) {
        if req.headers().contains_key(NODE_HEADER) {
            return node_signed_download(nodes, req, next).await;
        }
    }
    let tokens = &gate.tokens;
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
    let namespaces = tokens.namespaces_of(&name);
    if !auth::authorize_scoped(role, &namespaces, &method, &path) {
        tracing::info!(token = %name, role = role.as_str(), ?namespaces, %method, %path, "forbidden");
        let role = if namespaces.is_empty() {
            role.as_str().to_owned()
        } else {
            format!("{} in namespaces {}", role.as_str(), namespaces.join(","))
        };
        let denied = auth::Denied {
            name,
            role,
            method,
            path,
        };
        return Failure(StatusCode::FORBIDDEN, denied.to_string()).into_response();
    }
    // Who called, for the handlers that record it (`baton exec`'s event).
    let mut req = req;
    req.extensions_mut()
        .insert(super::exec::TokenName(name.to_string()));
    if !namespaces.is_empty() {
        req.extensions_mut()
            .insert(super::api::TokenScope(namespaces));
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

/// Serves a release binary to an enrolled node that signed the request with its device
/// key (the `baton-node`, `baton-timestamp-ms` and `baton-signature` headers of
/// `baton_proto::enroll`) instead of sending an API token: a device enrolled through
/// `--enroll-listen` holds no token. Anything but `GET|HEAD` of a release binary is
/// refused (403) however well signed.
pub(super) async fn require_node_signature(
    State(nodes): State<Arc<Enroller>>,
    req: Request,
    next: Next,
) -> Response {
    node_signed_download(&nodes, req, next).await
}

async fn node_signed_download(nodes: &Enroller, req: Request, next: Next) -> Response {
    match check_node_signature(nodes, &req) {
        Ok(()) => next.run(req).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// The checks of [`require_node_signature`], synchronous so no borrow lives across an await.
fn check_node_signature(nodes: &Enroller, req: &Request) -> Result<(), Failure> {
    let path = req.uri().path();
    let is_download = matches!(req.method().as_str(), "GET" | "HEAD")
        && baton_proto::release::is_download_path(path)
        && req.uri().query().is_none();
    if !is_download {
        return Err(Failure(
            StatusCode::FORBIDDEN,
            format!("a node signature authorizes release downloads only, not {path}"),
        ));
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let (Some(node), Some(ts), Some(sig)) = (
        header(NODE_HEADER),
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
    ) else {
        return Err(Failure(
            StatusCode::UNAUTHORIZED,
            format!("unauthorized: sign the request ({NODE_HEADER}, {TIMESTAMP_HEADER}, {SIGNATURE_HEADER})"),
        ));
    };
    let refused = |e: EnrollError| {
        tracing::info!(node, path, error = %e, "node-signed download refused");
        let code = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        Failure(code, e.to_string())
    };
    let Ok(ts) = ts.parse::<u64>() else {
        let e = EnrollError::BadRequest(format!("{TIMESTAMP_HEADER} is not a number: {ts:?}"));
        return Err(refused(e));
    };
    let now = crate::security::encoding::now_ms();
    nodes
        .authorize_download(node, path, ts, sig, now)
        .map_err(refused)?;
    tracing::debug!(node, path, "node-signed download");
    Ok(())
}

/// How long an unauthenticated device request (enroll, rotate) may take to send its
/// body: a client trickling a body would otherwise hold its connection for as long as
/// it likes.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the body of the token-less device routes within [`BODY_READ_TIMEOUT`] (and
/// `enroll::MAX_REQUEST_BYTES`) before the handler sees it.
pub(super) async fn read_body_in_time(req: Request, next: Next) -> Response {
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
