//! `baton agent rollout status|pause|resume|abort`: each asks the core and answers the
//! rollout as committed. (`baton agent upgrade` is an `apply`.)

use axum::extract::{Path, Query, State};

use super::{ask, AppState, FromReply, Reply};
use crate::contract::agent_updates::AgentUpdate;
use crate::contract::routes;
use crate::core::{AgentRolloutAction, ApiOp, ApiReply};

impl FromReply for AgentUpdate {
    fn from_reply(reply: ApiReply) -> Option<Self> {
        match reply {
            ApiReply::AgentUpdate(u) => Some(u),
            _ => None,
        }
    }
}

async fn act(
    state: &AppState,
    name: Option<String>,
    action: AgentRolloutAction,
) -> Reply<AgentUpdate> {
    ask(&state.core, ApiOp::AgentRollout { name, action }).await
}

pub(super) async fn status(
    State(state): State<AppState>,
    Query(routes::AgentRolloutStatus { name }): Query<routes::AgentRolloutStatus>,
) -> Reply<AgentUpdate> {
    act(&state, name, AgentRolloutAction::Status).await
}

pub(super) async fn pause(
    State(state): State<AppState>,
    Path(routes::AgentRolloutPause { name }): Path<routes::AgentRolloutPause>,
) -> Reply<AgentUpdate> {
    act(&state, Some(name), AgentRolloutAction::Pause).await
}

pub(super) async fn resume(
    State(state): State<AppState>,
    Path(routes::AgentRolloutResume { name }): Path<routes::AgentRolloutResume>,
) -> Reply<AgentUpdate> {
    act(&state, Some(name), AgentRolloutAction::Resume).await
}

pub(super) async fn abort(
    State(state): State<AppState>,
    Path(routes::AgentRolloutAbort { name }): Path<routes::AgentRolloutAbort>,
) -> Reply<AgentUpdate> {
    act(&state, Some(name), AgentRolloutAction::Abort).await
}
