//! `Watch`: a core watch (`crate::core::watch`) streamed as JSON lines, chunked: the
//! backlog first, then each change as the core commits it. The stream ends when the core
//! drops the watcher (too slow) or shuts down; the client resumes from the last
//! `resourceVersion` it read.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::oneshot;

use super::{AppState, Failure};
use crate::contract::watch::WatchEvent;
use crate::contract::ResourceKind;
use crate::core::watch::{WatchRequest, Watched};
use crate::core::{ApiError, Event};

/// The query of [`crate::contract::routes::Watch`] (its path holds the kind).
#[derive(Debug, Deserialize)]
pub(super) struct WatchParams {
    resource_version: Option<String>,
}

fn line(ev: &WatchEvent) -> Vec<u8> {
    let mut v = serde_json::to_vec(ev).unwrap_or_default();
    v.push(b'\n');
    v
}

pub(super) async fn watch(
    State(state): State<AppState>,
    Path(kind): Path<String>,
    Query(p): Query<WatchParams>,
) -> Result<Response, Failure> {
    open(state, kind, None, p).await
}

/// [`crate::contract::routes::WatchNamespaced`]: the core sends only the namespace's
/// changes.
pub(super) async fn watch_in(
    State(state): State<AppState>,
    Path((namespace, kind)): Path<(String, String)>,
    Query(p): Query<WatchParams>,
) -> Result<Response, Failure> {
    open(state, kind, Some(namespace), p).await
}

async fn open(
    state: AppState,
    kind: String,
    namespace: Option<String>,
    p: WatchParams,
) -> Result<Response, Failure> {
    let what = match kind.to_ascii_lowercase().as_str() {
        "events" | "event" | "ev" => Watched::Events,
        k => Watched::Kind(ResourceKind::parse(k).ok_or_else(|| {
            ApiError::BadRequest(format!("cannot watch {kind:?}: not a resource kind"))
        })?),
    };
    if let (Watched::Kind(k), Some(_)) = (what, &namespace) {
        if !k.is_namespaced() {
            return Err(ApiError::BadRequest(format!(
                "{} are cluster-scoped: they are in no namespace",
                k.plural()
            ))
            .into());
        }
    }
    let since = match p.resource_version.as_deref() {
        None | Some("") => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!("resourceVersion must be a number, not {v:?}"))
        })?),
    };
    let (reply, rx) = oneshot::channel();
    state
        .core
        .send(Event::Watch(WatchRequest {
            what,
            namespace,
            since,
            reply,
        }))
        .await
        .map_err(|_| Failure::from(ApiError::Unavailable))?;
    let start = rx
        .await
        .map_err(|_| Failure::from(ApiError::Unavailable))??;
    let backlog: Vec<Vec<u8>> = start.backlog.iter().map(line).collect();
    let first = futures::stream::iter(backlog.into_iter().map(Ok::<_, std::io::Error>));
    let live = futures::stream::unfold(start.live, |mut rx| async move {
        let ev = rx.recv().await?;
        Some((Ok(line(&ev)), rx))
    });
    use futures::StreamExt;
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(first.chain(live)),
    )
        .into_response())
}
