//! `GET /metrics`: the core's state counts and the gate's rejections, rendered with the
//! event metrics (`crate::metrics`); and `baton top`'s usage, from the same core state.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{ask, AppState, Failure, FromReply, Reply, SecState};
use crate::contract::body::List;
use crate::contract::usage::{NodeUsageView, PodUsageView};
use crate::core::{ApiOp, ApiReply};
use crate::metrics::Fleet;

impl FromReply for Box<Fleet> {
    fn from_reply(reply: ApiReply) -> Option<Self> {
        match reply {
            ApiReply::Fleet(f) => Some(f),
            _ => None,
        }
    }
}

/// The OpenMetrics text format's content type, which Prometheus asks for first.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(super) async fn metrics(State(state): State<SecState>) -> Result<Response, Failure> {
    let fleet = ask::<Box<Fleet>>(&state.core, ApiOp::Fleet).await?.0;
    let rejections = state.security.report().total;
    let text = state.metrics.render(&fleet, &rejections);
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

impl FromReply for List<NodeUsageView> {
    fn from_reply(reply: ApiReply) -> Option<Self> {
        match reply {
            ApiReply::NodeUsage(items) => Some(List { items }),
            _ => None,
        }
    }
}

impl FromReply for List<PodUsageView> {
    fn from_reply(reply: ApiReply) -> Option<Self> {
        match reply {
            ApiReply::PodUsage(items) => Some(List { items }),
            _ => None,
        }
    }
}

/// `baton top nodes`.
pub(super) async fn top_nodes(State(state): State<AppState>) -> Reply<List<NodeUsageView>> {
    ask(&state.core, ApiOp::Top { pods: false }).await
}

/// `baton top pods`.
pub(super) async fn top_pods(State(state): State<AppState>) -> Reply<List<PodUsageView>> {
    ask(&state.core, ApiOp::Top { pods: true }).await
}
