//! The read-only Distribution API under `/v2/`, which agents pull from as a registry
//! mirror: manifests, blobs (with ranges) and tag lists of imported images.

use std::io;
use std::path::Path;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path as UrlPath};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::Stream;
use serde::Serialize;

use super::{ImageRecord, Registry, RegistryError};

/// The `/v2/` routes; the image store comes as an `Extension`.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/v2/", get(v2_root))
        .route("/v2", get(v2_root))
        .route("/v2/{*rest}", get(v2))
}

const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");

/// A Distribution error body: `{"errors": [{"code", "message", "detail"}]}`.
#[derive(Serialize)]
struct Errors<'a> {
    errors: [DistError<'a>; 1],
}

#[derive(Serialize)]
struct DistError<'a> {
    code: &'a str,
    message: String,
    /// Always `null`: the code and message say it all.
    detail: Option<()>,
}

/// The answer to `GET /v2/`: `{}`, which says "this is a registry".
#[derive(Serialize)]
struct Empty {}

/// `GET /v2/NAME/tags/list`.
#[derive(Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: Vec<&'a str>,
}

fn dist_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = Errors {
        errors: [DistError {
            code,
            message: message.into(),
            detail: None,
        }],
    };
    (status, [API_VERSION], Json(body)).into_response()
}

fn dist_failure(e: RegistryError, unknown: &str) -> Response {
    match e {
        RegistryError::NotFound(what) => {
            dist_error(StatusCode::NOT_FOUND, unknown, format!("{what} not found"))
        }
        other => dist_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            other.to_string(),
        ),
    }
}

async fn v2_root() -> Response {
    (StatusCode::OK, [API_VERSION], Json(Empty {})).into_response()
}

/// The Distribution routes whose repository name has slashes in it.
async fn v2(
    Extension(reg): Extension<Arc<Registry>>,
    method: Method,
    headers: HeaderMap,
    UrlPath(rest): UrlPath<String>,
) -> Response {
    let head = method == Method::HEAD;
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return tags_list(&reg, name);
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return manifest(reg, name, reference, head).await;
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        if digest.starts_with("uploads") {
            return dist_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "this registry is read-only: import images with `baton image import`",
            );
        }
        return blob(reg, name, digest, head, &headers).await;
    }
    dist_error(
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
        format!("no route for /v2/{rest}"),
    )
}

fn tags_list(reg: &Registry, name: &str) -> Response {
    let images = reg.repo_images(name);
    if images.is_empty() {
        return dist_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("repository {name} is not known"),
        );
    }
    let tags: Vec<&str> = images.iter().map(ImageRecord::tag).collect();
    (StatusCode::OK, [API_VERSION], Json(TagList { name, tags })).into_response()
}

fn digest_headers(
    status: StatusCode,
    content_type: &str,
    digest: &str,
    len: u64,
) -> axum::http::response::Builder {
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, len)
        .header("docker-content-digest", digest)
        .header(API_VERSION.0, API_VERSION.1);
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        b = b.header(header::ETAG, etag);
    }
    b
}

async fn manifest(reg: Arc<Registry>, name: &str, reference: &str, head: bool) -> Response {
    let images = reg.repo_images(name);
    let found = if reference.starts_with("sha256:") {
        images.iter().find_map(|r| {
            r.manifests
                .get(reference)
                .map(|mt| (reference.to_owned(), mt.clone()))
        })
    } else {
        images
            .iter()
            .find(|r| r.tag() == reference)
            .map(|r| (r.digest.clone(), r.media_type.clone()))
    };
    let Some((digest, media_type)) = found else {
        return dist_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("manifest {name}:{reference} is not known"),
        );
    };
    let d = digest.clone();
    let bytes = match tokio::task::spawn_blocking(move || reg.verified_manifest(&d)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return dist_failure(e, "MANIFEST_UNKNOWN"),
        Err(e) => return dist_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string()),
    };
    let len = bytes.len() as u64;
    let body = if head {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    digest_headers(StatusCode::OK, &media_type, &digest, len)
        .body(body)
        .unwrap_or_else(|e| dist_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string()))
}

/// A single `bytes=START-[END]` range, clamped to `len`; `Err(())` if it cannot be served.
pub(super) fn parse_range(value: &str, len: u64) -> Result<(u64, u64), ()> {
    let spec = value.trim().strip_prefix("bytes=").ok_or(())?;
    let (start, end) = spec.split_once('-').ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            // The last N bytes.
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len.saturating_sub(1))
        }
        (s, "") => (s.parse().map_err(|_| ())?, len.saturating_sub(1)),
        (s, e) => {
            let (s, e): (u64, u64) = (s.parse().map_err(|_| ())?, e.parse().map_err(|_| ())?);
            (s, e.min(len.saturating_sub(1)))
        }
    };
    if start >= len || end < start {
        return Err(());
    }
    Ok((start, end))
}

async fn blob(
    reg: Arc<Registry>,
    name: &str,
    digest: &str,
    head: bool,
    headers: &HeaderMap,
) -> Response {
    let known = reg
        .repo_images(name)
        .iter()
        .any(|r| r.blobs.contains_key(digest) || r.manifests.contains_key(digest));
    if !known {
        return dist_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("blob {digest} is not known in {name}"),
        );
    }
    let d = digest.to_owned();
    let (path, len) = match tokio::task::spawn_blocking(move || reg.verified_blob(&d)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return dist_failure(e, "BLOB_UNKNOWN"),
        Err(e) => return dist_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string()),
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len));
    let (status, start, count) = match range {
        None => (StatusCode::OK, 0, len),
        Some(Ok((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        Some(Err(())) => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .unwrap_or_else(|e| {
                    dist_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string())
                })
        }
    };
    let mut b = digest_headers(status, "application/octet-stream", digest, count)
        .header(header::ACCEPT_RANGES, "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", start + count - 1),
        );
    }
    let body = if head {
        Body::empty()
    } else {
        match file_stream(&path, start, count).await {
            Ok(s) => Body::from_stream(s),
            Err(e) => {
                return dist_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string())
            }
        }
    };
    b.body(body)
        .unwrap_or_else(|e| dist_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string()))
}

/// `count` bytes of `path` from `start`, as a stream of chunks.
pub(super) async fn file_stream(
    path: &Path,
    start: u64,
    count: u64,
) -> io::Result<impl Stream<Item = io::Result<Bytes>> + Send + 'static> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await?;
    f.seek(io::SeekFrom::Start(start)).await?;
    Ok(futures::stream::try_unfold(
        (f, count),
        |(mut f, left)| async move {
            if left == 0 {
                return Ok(None);
            }
            let mut buf = vec![0u8; left.min(256 * 1024) as usize];
            let n = f.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob file shrank",
                ));
            }
            buf.truncate(n);
            Ok(Some((Bytes::from(buf), (f, left - n as u64))))
        },
    ))
}
