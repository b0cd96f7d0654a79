//! Agent update rollouts: `baton agent rollout status`, `get agentupdates` and
//! `describe agentupdate`.

use std::time::SystemTime;

use super::{age, events_section, kv, table};
use crate::model::api;

fn or_none(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("<none>").to_owned()
}

fn counts(u: &api::AgentUpdate) -> String {
    let done = u
        .status
        .nodes
        .iter()
        .filter(|n| n.phase == api::NodeUpdatePhase::Committed)
        .count();
    let total = u
        .status
        .nodes
        .iter()
        .filter(|n| n.phase != api::NodeUpdatePhase::Skipped)
        .count();
    format!("{done}/{total}")
}

/// One line about the rollout, then NODE FROM TO PHASE REASON per node.
pub fn rollout_status(u: &api::AgentUpdate) -> String {
    let mut out = format!(
        "agentupdate/{} to {}: {:?}",
        u.metadata.name, u.spec.version, u.status.phase
    );
    if let Some(r) = &u.status.reason {
        out.push_str(": ");
        out.push_str(r);
    }
    out.push('\n');
    if u.status.nodes.is_empty() {
        out.push_str("No nodes in scope yet\n");
        return out;
    }
    let rows: Vec<Vec<String>> = u
        .status
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                n.from.clone(),
                n.to.clone(),
                n.phase.as_str().to_owned(),
                or_none(n.reason.as_deref()),
            ]
        })
        .collect();
    out.push_str(&table(&["NODE", "FROM", "TO", "PHASE", "REASON"], &rows));
    out
}

/// `get agentupdates`: NAME VERSION PHASE COMMITTED AGE.
pub fn agent_updates_table(us: &[api::AgentUpdate], now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = us
        .iter()
        .map(|u| {
            vec![
                u.metadata.name.clone(),
                u.spec.version.clone(),
                format!("{:?}", u.status.phase),
                counts(u),
                age(&u.metadata.creation_timestamp, now),
            ]
        })
        .collect();
    table(&["NAME", "VERSION", "PHASE", "COMMITTED", "AGE"], &rows)
}

pub fn describe_agent_update(
    u: &api::AgentUpdate,
    events: &[api::Event],
    now: SystemTime,
) -> String {
    let s = &u.spec;
    let mut out = String::new();
    kv(&mut out, "Name", &u.metadata.name);
    kv(&mut out, "Created", &u.metadata.creation_timestamp);
    kv(&mut out, "Version", &s.version);
    let mut selector: Vec<String> = s
        .selector
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if let Some(a) = &s.selector.arch {
        selector.push(format!("arch={a}"));
    }
    kv(
        &mut out,
        "Selector",
        if selector.is_empty() {
            "<all nodes>".to_owned()
        } else {
            selector.join(",")
        },
    );
    let gate = if s.canary.pause {
        ", then pause".to_owned()
    } else if s.canary.soak_seconds > 0 {
        format!(", then soak {}s", s.canary.soak_seconds)
    } else {
        String::new()
    };
    kv(
        &mut out,
        "Canary",
        format!("{} nodes{gate}", s.canary.nodes),
    );
    kv(&mut out, "Max Unavailable", s.max_unavailable.to_string());
    kv(
        &mut out,
        "Failure Budget",
        format!("{}%", s.failure_budget_percent),
    );
    kv(
        &mut out,
        "Health Window",
        format!("{}s", s.health_window_seconds),
    );
    kv(&mut out, "Deadline", format!("{}s", s.deadline_seconds));
    kv(&mut out, "Allow Downgrade", s.allow_downgrade.to_string());
    kv(&mut out, "Committed", counts(u));
    out.push('\n');
    out.push_str(&rollout_status(u));
    out.push_str(&events_section(events, now));
    out
}
