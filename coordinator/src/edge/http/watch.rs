//! `Watch`: a core watch (`crate::core::watch`) streamed as JSON lines, chunked: the
//! backlog first, then each change as the core commits it. The stream ends when the core
//! drops the watcher (too slow) or shuts down; the client resumes from the last
//! `resourceVersion` it read. `WatchNamespaced` is the same stream with only one
//! namespace's changes: resource versions stay the global ones, so resuming works alike.

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
    stream(state, &kind, p, None).await
}

pub(super) async fn watch_namespaced(
    State(state): State<AppState>,
    Path((namespace, kind)): Path<(String, String)>,
    Query(p): Query<WatchParams>,
) -> Result<Response, Failure> {
    stream(state, &kind, p, Some(namespace)).await
}

/// Is the change about an object (or an event) in `ns`?
fn in_namespace(ev: &WatchEvent, ns: &str) -> bool {
    let of = match &ev.event {
        Some(e) => e.namespace.as_deref(),
        None => ev.namespace.as_deref(),
    };
    of == Some(ns)
}

async fn stream(
    state: AppState,
    kind: &str,
    p: WatchParams,
    namespace: Option<String>,
) -> Result<Response, Failure> {
    let what = match kind.to_ascii_lowercase().as_str() {
        "events" | "event" | "ev" => Watched::Events,
        k => Watched::Kind(ResourceKind::parse(k).ok_or_else(|| {
            ApiError::BadRequest(format!("cannot watch {kind:?}: not a resource kind"))
        })?),
    };
    if let (Watched::Kind(k), Some(ns)) = (&what, &namespace) {
        if !k.is_namespaced() {
            return Err(ApiError::BadRequest(format!(
                "cannot watch {} in namespace {ns:?}: the kind is cluster-scoped",
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
        .send(Event::Watch(WatchRequest { what, since, reply }))
        .await
        .map_err(|_| Failure::from(ApiError::Unavailable))?;
    let start = rx
        .await
        .map_err(|_| Failure::from(ApiError::Unavailable))??;
    let wanted = move |ev: &WatchEvent| namespace.as_deref().is_none_or(|ns| in_namespace(ev, ns));
    let backlog: Vec<Vec<u8>> = start
        .backlog
        .iter()
        .filter(|ev| wanted(ev))
        .map(line)
        .collect();
    let first = futures::stream::iter(backlog.into_iter().map(Ok::<_, std::io::Error>));
    let live = futures::stream::unfold((start.live, wanted), |(mut rx, wanted)| async move {
        loop {
            let ev = rx.recv().await?;
            if wanted(&ev) {
                return Some((Ok(line(&ev)), (rx, wanted)));
            }
        }
    });
    use futures::StreamExt;
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(first.chain(live)),
    )
        .into_response())
}
