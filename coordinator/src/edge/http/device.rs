//! Device identity: enrollment and certificate rotation (which authenticate themselves),
//! revocation, key rotation, identities and the gate's rejections
//! (`crate::security::enroll`, `crate::security::gate`).

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{ask, Failure, FromReply, Reply, SecState};
use crate::contract::body::Revocation;
use crate::contract::nodes::{EnrollResponse, IdentitySummary, RejectionReport};
use crate::contract::routes;
use crate::core::{ApiOp, ApiReply};
use crate::security::gate::SecurityError;

impl FromReply for Revocation {
    fn from_reply(reply: ApiReply) -> Option<Self> {
        match reply {
            ApiReply::Revocation(r) => Some(r),
            _ => None,
        }
    }
}

fn security_failure(e: SecurityError) -> Failure {
    match e {
        SecurityError::NotEnrolled(_) => Failure(StatusCode::NOT_FOUND, e.to_string()),
        SecurityError::Revoked(_) => Failure(StatusCode::CONFLICT, e.to_string()),
        SecurityError::NotQueued(_) => Failure(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        other => Failure(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

pub(super) async fn enroll_ca(State(state): State<SecState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.security.pki().ca_pem().to_owned(),
    )
        .into_response()
}

pub(super) async fn enroll(
    State(state): State<SecState>,
    body: axum::body::Bytes,
) -> Reply<EnrollResponse> {
    let done = state.enroller.enroll(&body, super::tokens::unix_now())?;
    if done.was_revoked {
        let op = ApiOp::SetRevoked {
            name: done.response.node_name.clone(),
            revoked: false,
        };
        // The core takes the node back; its answer says nothing the device needs.
        let _: Json<Revocation> = ask(&state.core, op).await?;
    }
    Ok(Json(done.response))
}

pub(super) async fn rotate(
    State(state): State<SecState>,
    Path(routes::RotateCertificate { name }): Path<routes::RotateCertificate>,
    body: axum::body::Bytes,
) -> Reply<EnrollResponse> {
    let resp = state
        .enroller
        .rotate(&name, &body, crate::security::encoding::now_ms())?;
    Ok(Json(resp))
}

pub(super) async fn revoke(
    State(state): State<SecState>,
    Path(routes::Revoke { name }): Path<routes::Revoke>,
) -> Reply<Revocation> {
    state.security.revoke(&name).map_err(|e| match e {
        SecurityError::NotEnrolled(_) => Failure(StatusCode::NOT_FOUND, e.to_string()),
        other => Failure(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    })?;
    let op = ApiOp::SetRevoked {
        name,
        revoked: true,
    };
    ask(&state.core, op).await
}

pub(super) async fn rotate_key(
    State(state): State<SecState>,
    Path(routes::RotateKey { name }): Path<routes::RotateKey>,
) -> Reply<IdentitySummary> {
    let before = state
        .security
        .request_rotation(&name)
        .map_err(security_failure)?;
    Ok(Json(before))
}

pub(super) async fn node_identity(
    State(state): State<SecState>,
    Path(routes::Identity { name }): Path<routes::Identity>,
) -> Reply<IdentitySummary> {
    let rec = state
        .security
        .identity(&name)
        .ok_or_else(|| security_failure(SecurityError::NotEnrolled(name.clone())))?;
    Ok(Json(IdentitySummary::from(&rec)))
}

pub(super) async fn rejections(State(state): State<SecState>) -> Reply<RejectionReport> {
    Ok(Json(state.security.report()))
}
