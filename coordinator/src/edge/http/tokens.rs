//! API tokens (`crate::security::auth`) and the join tokens that enroll devices
//! (`crate::security::enroll`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::{AppState, Failure, Reply, SecState};
use crate::contract::body::{Deleted, List};
use crate::contract::routes;
use crate::contract::tokens::{
    CreatedJoinToken, CreatedToken, JoinTokenInfo, JoinTokenRequest, TokenInfo, TokenRequest,
};

pub(super) fn unix_now() -> u64 {
    crate::security::encoding::now_ms() / 1000
}

/// `WhoAmI`: the caller's own record, named by the token check (`middleware`).
pub(super) async fn whoami(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<super::exec::TokenName>,
) -> Reply<TokenInfo> {
    state
        .tokens
        .list()
        .into_iter()
        .find(|t| t.name == caller.0)
        .map(Json)
        .ok_or_else(|| Failure(StatusCode::UNAUTHORIZED, "unknown or deleted token".into()))
}

pub(super) async fn list_tokens(State(state): State<AppState>) -> Reply<List<TokenInfo>> {
    Ok(Json(List {
        items: state.tokens.list(),
    }))
}

pub(super) async fn create_token(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Reply<CreatedToken> {
    let TokenRequest {
        name,
        role,
        namespaces,
    } = serde_json::from_slice(&body).map_err(|e| {
        Failure(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"name\": N, \"role\": \"admin\"|\"read-only\"}}: {e}"),
        )
    })?;
    let token = state
        .tokens
        .create_scoped(&name, role, namespaces.clone())?;
    tracing::info!(token = %name, role = role.as_str(), ?namespaces, "token created");
    Ok(Json(CreatedToken { name, role, token }))
}

pub(super) async fn delete_token(
    State(state): State<AppState>,
    Path(routes::DeleteToken { name }): Path<routes::DeleteToken>,
) -> Reply<Deleted> {
    state.tokens.delete(&name)?;
    tracing::info!(token = %name, "token deleted");
    Ok(Json(Deleted::other("token", name)))
}

pub(super) async fn list_join(State(state): State<SecState>) -> Reply<List<JoinTokenInfo>> {
    Ok(Json(List {
        items: state.enroller.list_tokens(),
    }))
}

pub(super) async fn create_join(
    State(state): State<SecState>,
    body: axum::body::Bytes,
) -> Reply<CreatedJoinToken> {
    let req: JoinTokenRequest = serde_json::from_slice(&body).map_err(|e| {
        Failure(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"ttlSeconds\": N, \"uses\": N, \"labels\": {{}}, \"nodeName\": N}}: {e}"),
        )
    })?;
    let (token, info) = state.enroller.create_token(&req, unix_now())?;
    tracing::info!(id = %info.id, uses = info.uses_left, "join token created");
    Ok(Json(CreatedJoinToken { token, info }))
}

pub(super) async fn delete_join(
    State(state): State<SecState>,
    Path(routes::DeleteJoinToken { id }): Path<routes::DeleteJoinToken>,
) -> Reply<Deleted> {
    if !state.enroller.delete_token(&id)? {
        return Err(Failure(
            StatusCode::NOT_FOUND,
            format!("join token {id:?} not found"),
        ));
    }
    Ok(Json(Deleted::other("jointoken", id)))
}
