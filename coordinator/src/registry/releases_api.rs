//! The release API, `/api/v1/releases...` (see [`crate::contract::routes`]): list, import
//! and delete (admin), and a release's bytes for any token, resumable by `Range`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path, Query};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};

use super::distribution::{file_stream, parse_range};
use super::releases::{ReleaseStoreError, Releases};
use crate::contract::body::{ErrorBody, List};
use crate::contract::releases::{InvalidRelease, ReleaseDeleted, ReleaseSummary, SignedRelease};
use crate::contract::routes::{DeleteRelease, ImportRelease, ListReleases, ReleaseBinary, Route};

/// The release API's routes. Their methods are the contract's: the contract test in
/// `crate::edge::http` calls each.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(ListReleases::PATH, get(list))
        .route(ImportRelease::PATH, post(import))
        .route(DeleteRelease::PATH, delete(remove))
        .route(ReleaseBinary::PATH, get(binary))
}

/// Only the binary's route (see [`super::release_download_routes`]).
pub(super) fn download_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route(ReleaseBinary::PATH, get(binary))
}

fn api_error(e: ReleaseStoreError) -> Response {
    (
        e.status(),
        Json(ErrorBody {
            error: e.to_string(),
        }),
    )
        .into_response()
}

type Reply<T> = Result<Json<T>, Response>;

async fn list(Extension(rel): Extension<Arc<Releases>>) -> Json<List<ReleaseSummary>> {
    Json(List { items: rel.list() })
}

/// The signed metadata, from the route's parameters.
fn metadata(q: ImportRelease) -> Result<SignedRelease, ReleaseStoreError> {
    let number = |field: &'static str, v: &str| {
        v.parse::<u64>().map_err(|e| InvalidRelease {
            field,
            reason: format!("{v:?}: {e}"),
        })
    };
    let protocol = number("protocol", &q.protocol)?;
    Ok(SignedRelease {
        protocol: u16::try_from(protocol).map_err(|e| InvalidRelease {
            field: "protocol",
            reason: e.to_string(),
        })?,
        size: number("size", &q.size)?,
        version: q.version,
        target: q.target,
        sha256: q.sha256,
        signature: q.signature,
    })
}

async fn import(
    Extension(rel): Extension<Arc<Releases>>,
    Query(q): Query<ImportRelease>,
    body: Body,
) -> Reply<ReleaseSummary> {
    let result = match metadata(q) {
        Ok(meta) => rel.import_stream(body.into_data_stream(), meta).await,
        Err(e) => Err(e),
    };
    result.map(Json).map_err(|e| {
        tracing::warn!(error = %e, "release import refused");
        api_error(e)
    })
}

async fn remove(
    Extension(rel): Extension<Arc<Releases>>,
    Path(DeleteRelease { digest }): Path<DeleteRelease>,
) -> Reply<ReleaseDeleted> {
    match tokio::task::spawn_blocking(move || rel.delete(&digest)).await {
        Ok(Ok(deleted)) => Ok(Json(ReleaseDeleted { deleted })),
        Ok(Err(e)) => Err(api_error(e)),
        Err(e) => Err(api_error(ReleaseStoreError::Upload(format!(
            "delete task failed: {e}"
        )))),
    }
}

/// The bytes, whole (200) or from a `Range: bytes=N-[M]` (206 with `Content-Range`; 416
/// for a range the file cannot serve).
async fn binary(
    Extension(rel): Extension<Arc<Releases>>,
    Path(ReleaseBinary { digest }): Path<ReleaseBinary>,
    headers: HeaderMap,
) -> Response {
    let d = digest.clone();
    let (path, len) = match tokio::task::spawn_blocking(move || rel.verified_file(&d)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return api_error(e),
        Err(e) => return api_error(ReleaseStoreError::Upload(e.to_string())),
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len));
    let (status, start, count) = match range {
        None => (StatusCode::OK, 0, len),
        Some(Ok((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        Some(Err(())) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response()
        }
    };
    let stream = match file_stream(&path, start, count).await {
        Ok(s) => s,
        Err(e) => {
            return api_error(ReleaseStoreError::Io {
                context: format!("read {}", path.display()),
                source: e,
            })
        }
    };
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, count)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{digest}\""));
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", start + count - 1),
        );
    }
    b.body(Body::from_stream(stream))
        .unwrap_or_else(|e| api_error(ReleaseStoreError::Upload(format!("cannot answer: {e}"))))
}
