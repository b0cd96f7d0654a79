//! The agent update rollout: which nodes an `AgentUpdate` covers, who gets an order now,
//! and when the rollout pauses, halts or completes.
//!
//! Pure: the rollout, the nodes, the imported releases and `now` in, the next status and
//! the messages to send out. The core (`core/agent_updates.rs`) stores the status and
//! publishes the orders; a node's reports come back through [`apply_report`].
//!
//! The nodes in scope are chosen once, at the first step, in name order, so the waves
//! are stable however nodes come and go. Those that cannot take the update are
//! `skipped` with the reason, never left out silently. The rest form the canary (wave 0,
//! `canary.nodes` of them) and waves of `maxUnavailable`. A wave is ordered when the one
//! before it is over (every node committed, failed or unreachable); after the canary,
//! the rollout waits for `resume` (`canary.pause`) or `soakSeconds`. Any canary failure,
//! or more than `failureBudget` of a later wave failing, halts the rollout at once, and
//! the orders of that wave's nodes that have not started are withdrawn. A node offline
//! (or silent after its order) for `deadlineSeconds` is `unreachable`: the rollout goes
//! on without it, but its order stays retained, so it still updates when it returns and
//! its reports are taken.

use std::cmp::Ordering;
use std::time::{Duration, SystemTime};

use crate::model::api::{self, AgentUpdate, AgentUpdateStatus, NodeUpdate, NodeUpdatePhase};
use crate::model::release::ReleaseRecord;

/// The oldest protocol whose agents can update themselves (v5 brought `AgentUpdate`).
pub const MIN_UPDATABLE_PROTOCOL: u16 = 5;

/// One order to publish: `release` to `node`.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub node: String,
    pub release: ReleaseRecord,
}

/// What one step decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    pub status: AgentUpdateStatus,
    pub orders: Vec<Order>,
    /// Nodes whose order is withdrawn (`AgentUpdate(None)`).
    pub withdraw: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentUpdateError {
    #[error("rollout {name} is {phase:?} already")]
    Final {
        name: String,
        phase: api::RolloutPhase,
    },
    #[error("rollout {0} is not paused")]
    NotPaused(String),
}

fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn since(at: &str, now: SystemTime) -> Duration {
    humantime::parse_rfc3339(at)
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .unwrap_or_default()
}

/// Orders `a` and `b` as versions: `MAJOR.MINOR.PATCH` numerically, a pre-release before
/// its release.
pub fn cmp_versions(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (Vec<u64>, Option<&str>) {
        let (core, pre) = match v.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (v, None),
        };
        (
            core.split('.').map(|p| p.parse().unwrap_or(0)).collect(),
            pre,
        )
    }
    let (ca, pa) = split(a);
    let (cb, pb) = split(b);
    ca.cmp(&cb).then_with(|| match (pa, pb) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => x.cmp(y),
    })
}

/// The node's target triple, from the label every v5 agent's Hello carries.
pub fn target_of(node: &api::Node) -> Option<&str> {
    node.metadata
        .labels
        .get(baton_proto::release::LABEL_AGENT_TARGET)
        .map(String::as_str)
}

fn selected(spec: &api::AgentUpdateSpec, node: &api::Node) -> bool {
    let labels = &node.metadata.labels;
    spec.selector
        .match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && spec
            .selector
            .arch
            .as_ref()
            .is_none_or(|a| *a == node.status.arch)
}

/// The release of `version` built for `target`.
pub fn release_for<'a>(
    releases: &'a [ReleaseRecord],
    version: &str,
    target: &str,
) -> Option<&'a ReleaseRecord> {
    releases
        .iter()
        .find(|r| r.version == version && r.target == target)
}

/// Why `node` cannot take `spec`'s version, or the release it gets.
fn eligibility<'a>(
    spec: &api::AgentUpdateSpec,
    node: &api::Node,
    releases: &'a [ReleaseRecord],
) -> Result<&'a ReleaseRecord, String> {
    let from = &node.status.agent_version;
    let to = &spec.version;
    let proto = node.status.protocol_version;
    if proto < MIN_UPDATABLE_PROTOCOL {
        return Err(format!(
            "agent {from} speaks protocol v{proto} and cannot update itself; upgrade it by hand \
             or with baton-agent install"
        ));
    }
    let Some(target) = target_of(node) else {
        return Err(format!(
            "the agent does not report its target ({})",
            baton_proto::release::LABEL_AGENT_TARGET
        ));
    };
    match cmp_versions(to, from) {
        Ordering::Equal => return Err(format!("already at {to}")),
        Ordering::Less if !spec.allow_downgrade => {
            return Err(format!(
                "{to} is older than {from}: a downgrade needs allowDowngrade"
            ))
        }
        _ => {}
    }
    release_for(releases, to, target).ok_or_else(|| {
        format!("no release {to} for {target}; import one with baton release import")
    })
}

/// Chooses the nodes in scope and their waves (see the module docs).
fn scope(
    u: &AgentUpdate,
    nodes: &[&api::Node],
    releases: &[ReleaseRecord],
    now: &str,
) -> Vec<NodeUpdate> {
    let spec = &u.spec;
    let mut chosen: Vec<&api::Node> = nodes
        .iter()
        .copied()
        .filter(|n| selected(spec, n))
        .collect();
    chosen.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let eligible = chosen
        .iter()
        .filter(|n| eligibility(spec, n, releases).is_ok())
        .count();
    let canary = (spec.canary.nodes as usize).min(eligible);
    let wave_size = api::wave_size(spec.max_unavailable, eligible - canary);
    let mut index = 0usize;
    chosen
        .into_iter()
        .map(|n| {
            let mut nu = NodeUpdate {
                node: n.metadata.name.clone(),
                from: n.status.agent_version.clone(),
                to: spec.version.clone(),
                updated_at: Some(now.to_owned()),
                ..Default::default()
            };
            match eligibility(spec, n, releases) {
                Ok(r) => {
                    let wave = if index < canary {
                        0
                    } else {
                        1 + (index - canary) / wave_size
                    };
                    index += 1;
                    nu.wave = Some(wave as u32);
                    nu.release = Some(r.digest());
                }
                Err(reason) => {
                    nu.phase = NodeUpdatePhase::Skipped;
                    nu.reason = Some(reason);
                }
            }
            nu
        })
        .collect()
}

/// Stops ordering: withdraws the orders of the nodes that have not staged the release yet
/// (not started, or still downloading: the agent stops the download and removes it, as
/// Mender aborts its downloading devices); nodes past that finish on their own.
fn stop(st: &mut AgentUpdateStatus, phase: api::RolloutPhase, reason: String) -> Vec<String> {
    st.phase = phase;
    st.reason = Some(reason);
    let mut withdraw = Vec::new();
    for nu in st.nodes.iter_mut() {
        let unstaged = match nu.phase {
            NodeUpdatePhase::Pending => nu.ordered_at.is_some(),
            NodeUpdatePhase::Downloading => true,
            _ => false,
        };
        if unstaged {
            nu.phase = NodeUpdatePhase::Pending;
            nu.reason = Some(format!("order withdrawn: rollout {phase:?}").to_lowercase());
            withdraw.push(nu.node.clone());
        }
    }
    withdraw
}

fn failure_text(nu: &NodeUpdate) -> String {
    match &nu.reason {
        Some(r) => format!("{} {}: {r}", nu.node, nu.phase.as_str()),
        None => format!("{} {}", nu.node, nu.phase.as_str()),
    }
}

/// Why the rollout must halt now, if it must.
fn halt_reason(u: &AgentUpdate, st: &AgentUpdateStatus) -> Option<String> {
    let has_canary = u.spec.canary.nodes > 0;
    let mut waves: Vec<u32> = st.nodes.iter().filter_map(|n| n.wave).collect();
    waves.sort_unstable();
    waves.dedup();
    for w in waves {
        let members: Vec<&NodeUpdate> = st.nodes.iter().filter(|n| n.wave == Some(w)).collect();
        let failed: Vec<&NodeUpdate> = members
            .iter()
            .copied()
            .filter(|n| n.phase.is_failure())
            .collect();
        let Some(first) = failed.first() else {
            continue;
        };
        if w == 0 && has_canary {
            return Some(format!("canary failed: {}", failure_text(first)));
        }
        let budget = u.spec.failure_budget_percent as usize;
        if failed.len() * 100 > budget * members.len() {
            return Some(format!(
                "wave {w}: {} of {} nodes failed, more than the failure budget of {budget}%: {}",
                failed.len(),
                members.len(),
                failure_text(first)
            ));
        }
    }
    None
}

fn summary(st: &AgentUpdateStatus) -> String {
    let count = |f: fn(NodeUpdatePhase) -> bool| st.nodes.iter().filter(|n| f(n.phase)).count();
    format!(
        "{} committed, {} failed, {} unreachable, {} skipped",
        count(|p| p == NodeUpdatePhase::Committed),
        count(NodeUpdatePhase::is_failure),
        count(|p| p == NodeUpdatePhase::Unreachable),
        count(|p| p == NodeUpdatePhase::Skipped),
    )
}

/// One step of the rollout at `now`: see the module docs. Idempotent: a second step at
/// the same instant over the result decides nothing new.
pub fn step(
    u: &AgentUpdate,
    nodes: &[&api::Node],
    releases: &[ReleaseRecord],
    now: SystemTime,
) -> Step {
    let mut st = u.status.clone();
    let mut out = Step::default();
    if st.phase.is_final() {
        out.status = st;
        return out;
    }
    let now_s = stamp(now);
    if !st.scoped {
        st.nodes = scope(u, nodes, releases, &now_s);
        st.scoped = true;
    }
    let deadline = Duration::from_secs(u.spec.deadline_seconds);
    for nu in st.nodes.iter_mut() {
        if nu.phase.is_final() || nu.ordered_at.is_none() {
            continue;
        }
        let ready = nodes
            .iter()
            .find(|n| n.metadata.name == nu.node)
            .is_some_and(|n| n.status.ready);
        if ready {
            nu.offline_since = None;
        } else if nu.offline_since.is_none() {
            nu.offline_since = Some(now_s.clone());
        }
        let why = match (&nu.offline_since, &nu.ordered_at) {
            (Some(off), _) if since(off, now) >= deadline => {
                format!("offline for more than {}s", deadline.as_secs())
            }
            (_, Some(at)) if nu.phase == NodeUpdatePhase::Pending && since(at, now) >= deadline => {
                format!("no report within {}s of its order", deadline.as_secs())
            }
            _ => continue,
        };
        nu.phase = NodeUpdatePhase::Unreachable;
        nu.reason = Some(why);
        nu.updated_at = Some(now_s.clone());
    }
    if let Some(reason) = halt_reason(u, &st) {
        out.withdraw = stop(&mut st, api::RolloutPhase::Halted, reason);
        out.status = st;
        return out;
    }
    if st.phase == api::RolloutPhase::Paused {
        out.status = st;
        return out;
    }
    let next = st
        .nodes
        .iter()
        .filter(|n| !n.phase.is_final())
        .filter_map(|n| n.wave)
        .min();
    let Some(wave) = next else {
        st.phase = api::RolloutPhase::Complete;
        st.reason = Some(if st.nodes.is_empty() {
            "no node matches the selector".to_owned()
        } else {
            summary(&st)
        });
        out.status = st;
        return out;
    };
    let after_canary = wave >= 1 && st.nodes.iter().any(|n| n.wave == Some(0));
    if after_canary {
        let finished = st
            .canary_finished_at
            .get_or_insert_with(|| now_s.clone())
            .clone();
        if u.spec.canary.pause && !st.canary_approved {
            st.phase = api::RolloutPhase::Paused;
            st.reason = Some(format!(
                "canary done; waiting for approval: baton agent rollout resume {}",
                u.metadata.name
            ));
            out.status = st;
            return out;
        }
        let soak = Duration::from_secs(u.spec.canary.soak_seconds);
        if since(&finished, now) < soak {
            st.reason = Some(format!(
                "canary done; soaking for {}s",
                u.spec.canary.soak_seconds
            ));
            out.status = st;
            return out;
        }
    }
    st.reason = None;
    for nu in st.nodes.iter_mut().filter(|n| n.wave == Some(wave)) {
        if nu.ordered_at.is_some() || nu.phase.is_final() {
            continue;
        }
        let release = nu
            .release
            .as_deref()
            .and_then(|d| releases.iter().find(|r| r.digest() == d));
        match release {
            Some(r) => {
                // Offline at its order: the deadline counts from now.
                if !nodes
                    .iter()
                    .any(|n| n.metadata.name == nu.node && n.status.ready)
                {
                    nu.offline_since = Some(now_s.clone());
                }
                nu.ordered_at = Some(now_s.clone());
                nu.updated_at = Some(now_s.clone());
                out.orders.push(Order {
                    node: nu.node.clone(),
                    release: r.clone(),
                });
            }
            None => {
                nu.phase = NodeUpdatePhase::Skipped;
                nu.reason = Some(format!(
                    "release {} was deleted before its wave",
                    nu.release.as_deref().unwrap_or("?")
                ));
                nu.updated_at = Some(now_s.clone());
            }
        }
    }
    out.status = st;
    out
}

/// Takes a node's report into the status; `false` when it is not for this rollout's
/// version, or the node is not in it, or nothing changed.
pub fn apply_report(
    u: &mut AgentUpdate,
    node: &str,
    report: &api::UpdateReport,
    now: SystemTime,
) -> bool {
    if report.version != u.spec.version {
        return false;
    }
    // Progress sent before a withdrawal reached the node: its order is gone.
    let over = matches!(
        u.status.phase,
        api::RolloutPhase::Halted | api::RolloutPhase::Aborted
    );
    if over && report.phase == NodeUpdatePhase::Downloading {
        return false;
    }
    let Some(nu) = u
        .status
        .nodes
        .iter_mut()
        .find(|n| n.node == node && n.phase != NodeUpdatePhase::Skipped)
    else {
        return false;
    };
    if nu.phase == report.phase && nu.reason == report.reason && nu.downloaded == report.downloaded
    {
        return false;
    }
    nu.phase = report.phase;
    nu.reason = report.reason.clone();
    nu.downloaded = report.downloaded;
    nu.offline_since = None;
    nu.updated_at = Some(stamp(now));
    true
}

/// `rollout pause`: no new orders; those in flight go on.
pub fn pause(u: &mut AgentUpdate) -> Result<(), AgentUpdateError> {
    check_open(u)?;
    u.status.phase = api::RolloutPhase::Paused;
    u.status.reason = Some("paused by the user".into());
    Ok(())
}

/// `rollout resume`: goes on, and approves a finished canary.
pub fn resume(u: &mut AgentUpdate) -> Result<(), AgentUpdateError> {
    check_open(u)?;
    if u.status.phase != api::RolloutPhase::Paused {
        return Err(AgentUpdateError::NotPaused(u.metadata.name.clone()));
    }
    u.status.phase = api::RolloutPhase::Progressing;
    u.status.reason = None;
    if u.status.canary_finished_at.is_some() {
        u.status.canary_approved = true;
    }
    Ok(())
}

/// `rollout abort`: nothing more is ordered; answers the nodes whose orders to withdraw.
pub fn abort(u: &mut AgentUpdate) -> Result<Vec<String>, AgentUpdateError> {
    check_open(u)?;
    Ok(stop(
        &mut u.status,
        api::RolloutPhase::Aborted,
        "aborted by the user".into(),
    ))
}

fn check_open(u: &AgentUpdate) -> Result<(), AgentUpdateError> {
    if u.status.phase.is_final() {
        return Err(AgentUpdateError::Final {
            name: u.metadata.name.clone(),
            phase: u.status.phase,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
