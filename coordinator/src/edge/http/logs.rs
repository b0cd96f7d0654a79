//! `PodLogs`: a container's log, streamed from its node through a log session
//! ([`crate::edge::logs`]). The pod and its node are looked up in the core as for `get`;
//! the log itself never passes through the core.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ask, AppState, Failure};
use crate::contract::body::ApiObject;
use crate::contract::payload::LOG_ERROR_PREFIX;
use crate::contract::ResourceKind;
use crate::core::{ApiError, ApiOp};
use crate::edge::logs::{LogError, LogQuery};

/// The query of [`crate::contract::routes::PodLogs`] (its path holds the name).
#[derive(Debug, Deserialize)]
pub(super) struct LogParams {
    container: Option<String>,
    follow: Option<String>,
    previous: Option<String>,
    tail: Option<String>,
    /// A Go-style duration (`10m`), or `since_time` RFC 3339: see [`crate::contract::since`].
    since: Option<String>,
    since_time: Option<String>,
    timestamps: Option<String>,
}

fn flag(v: &Option<String>, name: &str) -> Result<bool, Failure> {
    match v.as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(Failure::from(ApiError::BadRequest(format!(
            "{name} must be true or false, not {other:?}"
        )))),
    }
}

impl From<LogError> for Failure {
    fn from(e: LogError) -> Self {
        let code = match &e {
            LogError::AgentTooOld { .. } => StatusCode::CONFLICT,
            LogError::Invalid(_) => StatusCode::BAD_REQUEST,
            LogError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        Failure(code, e.to_string())
    }
}

pub(super) async fn pod_logs(
    State(state): State<AppState>,
    Path(t): Path<super::api::Target>,
    Query(p): Query<LogParams>,
) -> Result<Response, Failure> {
    let name = t.key(ResourceKind::Pod);
    // Messages name the pod as the caller did, not by its qualified key.
    let shown = t.name();
    let (follow, previous) = (flag(&p.follow, "follow")?, flag(&p.previous, "previous")?);
    let timestamps = flag(&p.timestamps, "timestamps")?;
    let since = crate::contract::since::window(p.since.as_deref(), p.since_time.as_deref())
        .map_err(|e| Failure::from(ApiError::BadRequest(e)))?;
    let tail_lines = match p.tail.as_deref() {
        None => None,
        // kubectl's default -1: all.
        Some(t) if t.starts_with('-') => None,
        Some(t) => Some(t.parse::<u32>().map_err(|_| {
            Failure::from(ApiError::BadRequest(format!(
                "tail must be a number of lines, not {t:?}"
            )))
        })?),
    };
    let get = |kind, name: &str| ApiOp::Get {
        kind,
        name: Some(name.to_owned()),
    };
    let pod = match ask::<ApiObject>(&state.core, get(ResourceKind::Pod, &name))
        .await?
        .0
    {
        ApiObject::Pod(p) => p,
        _ => return Err(ApiError::Internal("the core did not answer with a pod".into()).into()),
    };
    let Some(node) = pod.spec.node_name.clone() else {
        return Err(
            ApiError::Conflict(format!("pod {shown} is not scheduled to a node yet")).into(),
        );
    };
    let container = match p.container {
        Some(c) => {
            let known = pod.spec.containers.iter().chain(&pod.spec.init_containers);
            if !known.clone().any(|k| k.name == c) {
                let names: Vec<&str> = known.map(|k| k.name.as_str()).collect();
                return Err(ApiError::BadRequest(format!(
                    "container {c} is not valid for pod {shown}: choose one of [{}]",
                    names.join(" ")
                ))
                .into());
            }
            c
        }
        None if pod.spec.containers.len() == 1 => pod.spec.containers[0].name.clone(),
        None => {
            let names: Vec<&str> = pod
                .spec
                .containers
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            return Err(ApiError::BadRequest(format!(
                "a container name must be given for pod {shown}: choose one of [{}]",
                names.join(" ")
            ))
            .into());
        }
    };
    let node_version = match ask::<ApiObject>(&state.core, get(ResourceKind::Node, &node))
        .await?
        .0
    {
        ApiObject::Node(n) => n.status.protocol_version,
        _ => return Err(ApiError::Internal("the core did not answer with a node".into()).into()),
    };
    let Some(hub) = state.logs.clone() else {
        return Err(ApiError::Unavailable.into());
    };
    let q = LogQuery {
        node: baton_proto::NodeName::new(&node)
            .map_err(|e| Failure::from(ApiError::Internal(e.to_string())))?,
        node_version,
        pod_uid: pod.metadata.uid.clone(),
        container,
        previous,
        follow,
        tail_lines,
        since,
        timestamps,
    };
    let stream = hub.open(q).await?;
    // Chunked: each piece goes out as it arrives; the stream (and with it the session)
    // is dropped when the client goes away.
    let body = futures::stream::unfold((stream, false), |(mut s, done)| async move {
        if done {
            return None;
        }
        match s.next().await {
            Ok(Some(data)) => Some((Ok::<_, std::io::Error>(data), (s, false))),
            Ok(None) => None,
            // The status is sent already: say why in the text, on a line of its own.
            Err(why) => Some((
                Ok(format!("{LOG_ERROR_PREFIX}{why}\n").into_bytes()),
                (s, true),
            )),
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response())
}
