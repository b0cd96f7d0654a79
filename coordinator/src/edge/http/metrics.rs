//! `GET /metrics`: the core's state counts and the gate's rejections, rendered with the
//! event metrics (`crate::metrics`).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{ask, Failure, FromReply, SecState};
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
