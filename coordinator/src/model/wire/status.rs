//! Up from the agent: what it reports about its pods, in domain terms, with the phase and
//! the reasons kubelet would derive.

use std::time::{Duration, UNIX_EPOCH};

use baton_proto as proto;

use crate::model::api;

fn rfc3339_from_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn container_state(s: &proto::ContainerState) -> api::ContainerState {
    match s {
        proto::ContainerState::Pending => api::ContainerState::Pending,
        proto::ContainerState::Pulling => api::ContainerState::Pulling,
        proto::ContainerState::Running { started_at_ms } => api::ContainerState::Running {
            started_at: rfc3339_from_ms(*started_at_ms),
        },
        proto::ContainerState::Exited { code } => api::ContainerState::Exited { exit_code: *code },
        proto::ContainerState::OomKilled => api::ContainerState::OOMKilled,
        proto::ContainerState::Failed { reason } => api::ContainerState::Failed {
            reason: reason.to_string(),
        },
    }
}

/// A run that ended badly: OOM-killed, failed to start, or a non-zero exit.
fn is_failure(st: &api::ContainerState) -> bool {
    matches!(
        st,
        api::ContainerState::OOMKilled | api::ContainerState::Failed { .. }
    ) || matches!(st, api::ContainerState::Exited { exit_code } if *exit_code != 0)
}

/// Whether the agent will start a container again that is in state `st`: the pod's
/// `restartPolicy` for main containers; init containers are retried on failure unless
/// the policy is `Never`, and are done once they exit 0.
fn will_restart(st: &api::ContainerState, policy: api::RestartPolicy, init: bool) -> bool {
    let exited = matches!(
        st,
        api::ContainerState::Exited { .. } | api::ContainerState::OOMKilled
    );
    if !exited {
        return false;
    }
    match (init, policy) {
        (_, api::RestartPolicy::Never) => false,
        (true, _) | (false, api::RestartPolicy::OnFailure) => is_failure(st),
        (false, api::RestartPolicy::Always) => true,
    }
}

/// Kubelet's word for a container's state (`state.waiting.reason` or
/// `state.terminated.reason`). A terminated container that will be started again and has
/// been restarted before is in `CrashLoopBackOff`, as kubelet reports it between restarts.
fn container_reason(
    st: &api::ContainerState,
    restart_count: u32,
    policy: api::RestartPolicy,
    init: bool,
    initializing: bool,
) -> Option<String> {
    if restart_count > 0 && will_restart(st, policy, init) {
        return Some("CrashLoopBackOff".into());
    }
    let word = match st {
        api::ContainerState::Running { .. } => return None,
        api::ContainerState::Pending | api::ContainerState::Pulling if initializing => {
            "PodInitializing"
        }
        api::ContainerState::Pending => "ContainerCreating",
        api::ContainerState::Pulling => "Pulling",
        api::ContainerState::Exited { exit_code: 0 } => "Completed",
        api::ContainerState::Exited { .. } => "Error",
        api::ContainerState::OOMKilled => "OOMKilled",
        api::ContainerState::Failed { reason } => reason
            .split(|c: char| c.is_whitespace() || c == ':')
            .find(|w| !w.is_empty())
            .unwrap_or("Failed"),
    };
    Some(word.to_owned())
}

/// `initializing`: the pod's init containers have not all completed (always true for an
/// init container itself), so a container not yet started waits with `PodInitializing`.
fn container_status(
    c: &proto::ContainerStatus,
    policy: api::RestartPolicy,
    init: bool,
    initializing: bool,
) -> api::ContainerStatus {
    let state = container_state(&c.state);
    api::ContainerStatus {
        name: c.name.to_string(),
        reason: container_reason(&state, c.restart_count, policy, init, initializing),
        // The agent's word: running and passing the readiness probe (if any). A
        // container that is not running is never ready, whatever an agent says.
        ready: c.ready && matches!(state, api::ContainerState::Running { .. }),
        state,
        restart_count: c.restart_count,
        last_state: c.last_termination.as_ref().map(|t| api::LastState {
            terminated: api::TerminatedState {
                exit_code: t.exit_code,
                reason: t.reason.to_string(),
                finished_at: rfc3339_from_ms(t.finished_at_ms),
            },
        }),
    }
}

/// What an agent reports about one pod, in domain terms.
///
/// Phase: `Failed` if any container (or init container) failed (OOM-killed, failed to
/// start, non-zero exit) under `restartPolicy: Never`; `Pending` while an init container
/// has not yet exited 0; `Running` if every container runs; `Succeeded` if every
/// container exited 0 and the policy will not restart them; `Pending` otherwise. Under
/// `Always` a container that exited 0 is about to restart, so the pod is never
/// `Succeeded` (as in Kubernetes).
pub fn pod_status(
    s: &proto::PodStatus,
    spec: &api::PodSpec,
    host_ip: Option<String>,
) -> api::PodStatus {
    let policy = spec.restart_policy;
    let init_container_statuses: Vec<api::ContainerStatus> = s
        .init_containers
        .iter()
        .map(|c| container_status(c, policy, true, true))
        .collect();
    let initializing = init_container_statuses
        .iter()
        .any(|c| !matches!(c.state, api::ContainerState::Exited { exit_code: 0 }));
    let container_statuses: Vec<api::ContainerStatus> = s
        .containers
        .iter()
        .map(|c| container_status(c, policy, false, initializing))
        .collect();
    let all = |f: &dyn Fn(&api::ContainerState) -> bool| {
        !container_statuses.is_empty() && container_statuses.iter().all(|c| f(&c.state))
    };
    let any_failed = |list: &[api::ContainerStatus]| list.iter().any(|c| is_failure(&c.state));
    let phase = if policy == api::RestartPolicy::Never
        && (any_failed(&container_statuses) || any_failed(&init_container_statuses))
    {
        api::PodPhase::Failed
    } else if initializing {
        api::PodPhase::Pending
    } else if all(&|st| matches!(st, api::ContainerState::Running { .. })) {
        api::PodPhase::Running
    } else if policy != api::RestartPolicy::Always
        && all(&|st| matches!(st, api::ContainerState::Exited { exit_code: 0 }))
    {
        api::PodPhase::Succeeded
    } else {
        api::PodPhase::Pending
    };
    // Evicted under node pressure: Failed for good, as kubelet reports it; a Deployment
    // replaces it.
    let (phase, reason, message) = match &s.evicted {
        Some(why) => (
            api::PodPhase::Failed,
            Some("Evicted".to_owned()),
            Some(why.chars().filter(|c| !c.is_control()).collect()),
        ),
        None => (phase, None, None),
    };
    api::PodStatus {
        phase,
        reason,
        message,
        pod_ip: s.pod_ip.map(|ip| ip.to_string()),
        host_ip,
        container_statuses,
        init_container_statuses,
    }
}
