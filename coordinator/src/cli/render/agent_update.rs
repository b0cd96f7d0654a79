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
        out.push_str(if u.status.scoped {
            "No nodes in scope\n"
        } else {
            "No nodes in scope yet\n"
        });
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
    kv(&mut out, "MaxUnavailable", s.max_unavailable.to_string());
    kv(
        &mut out,
        "FailureBudget",
        format!("{}%", s.failure_budget_percent),
    );
    kv(
        &mut out,
        "HealthWindow",
        format!("{}s", s.health_window_seconds),
    );
    kv(&mut out, "Deadline", format!("{}s", s.deadline_seconds));
    kv(&mut out, "AllowDowngrade", s.allow_downgrade.to_string());
    kv(&mut out, "Committed", counts(u));
    out.push('\n');
    out.push_str(&rollout_status(u));
    out.push_str(&events_section(events, now));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::render::describe::describe_node;
    use crate::cli::render::nodes_table;

    fn ts(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    fn rollout() -> api::AgentUpdate {
        let node = |name: &str, phase, reason: Option<&str>, wave| api::NodeUpdate {
            node: name.into(),
            phase,
            reason: reason.map(str::to_owned),
            from: "0.2.0".into(),
            to: "0.2.1".into(),
            wave,
            ..Default::default()
        };
        api::AgentUpdate {
            api_version: api::AGENT_UPDATE_API_VERSION.into(),
            kind: "AgentUpdate".into(),
            metadata: api::ObjectMeta {
                name: "up".into(),
                creation_timestamp: "2026-12-06T10:00:00Z".into(),
                ..Default::default()
            },
            spec: api::AgentUpdateSpec {
                version: "0.2.1".into(),
                selector: Default::default(),
                canary: api::Canary {
                    nodes: 1,
                    pause: true,
                    soak_seconds: 0,
                },
                max_unavailable: api::IntOrPercent::Percent(25),
                failure_budget_percent: 20,
                health_window_seconds: 60,
                deadline_seconds: 600,
                allow_downgrade: false,
            },
            status: api::AgentUpdateStatus {
                phase: api::RolloutPhase::Halted,
                reason: Some("canary failed: pi-1 rolled-back: crashed 3 times".into()),
                scoped: true,
                nodes: vec![
                    node(
                        "pi-1",
                        api::NodeUpdatePhase::RolledBack,
                        Some("crashed 3 times in 40 s: exit 101"),
                        Some(0),
                    ),
                    node("pi-2", api::NodeUpdatePhase::Committed, None, Some(1)),
                    node("pi-3", api::NodeUpdatePhase::Pending, None, Some(1)),
                    node(
                        "old",
                        api::NodeUpdatePhase::Skipped,
                        Some("agent 0.1.0 speaks protocol v4"),
                        None,
                    ),
                ],
                ..Default::default()
            },
        }
    }

    #[test]
    fn rollout_status_is_one_line_then_a_row_per_node() {
        assert_eq!(
            rollout_status(&rollout()),
            "agentupdate/up to 0.2.1: Halted: canary failed: pi-1 rolled-back: crashed 3 times
NODE   FROM    TO      PHASE         REASON
pi-1   0.2.0   0.2.1   rolled-back   crashed 3 times in 40 s: exit 101
pi-2   0.2.0   0.2.1   committed     <none>
pi-3   0.2.0   0.2.1   pending       <none>
old    0.2.0   0.2.1   skipped       agent 0.1.0 speaks protocol v4
"
        );
        let mut fresh = rollout();
        fresh.status = Default::default();
        assert_eq!(
            rollout_status(&fresh),
            "agentupdate/up to 0.2.1: Progressing\nNo nodes in scope yet\n"
        );
    }

    #[test]
    fn get_and_describe_agent_updates() {
        let now = ts("2026-12-06T10:05:00Z");
        assert_eq!(
            agent_updates_table(&[rollout()], now),
            "NAME   VERSION   PHASE    COMMITTED   AGE\nup     0.2.1     Halted   1/3         5m\n"
        );
        let out = describe_agent_update(&rollout(), &[], now);
        for line in [
            "Canary:",
            "1 nodes, then pause",
            "MaxUnavailable: 25%",
            "FailureBudget:  20%",
            "Committed:",
            "1/3",
            "pi-1   0.2.0   0.2.1   rolled-back",
            "Events:  <none>",
        ] {
            assert!(out.contains(line), "{line:?} in\n{out}");
        }
    }

    #[test]
    fn nodes_show_their_version_and_last_update() {
        let now = ts("2026-12-06T10:05:00Z");
        let mut n = api::Node {
            api_version: "v1".into(),
            kind: "Node".into(),
            metadata: api::ObjectMeta {
                name: "pi-1".into(),
                creation_timestamp: "2026-12-06T10:00:00Z".into(),
                ..Default::default()
            },
            spec: Default::default(),
            status: api::NodeStatus {
                ready: true,
                agent_version: "0.2.0".into(),
                ..Default::default()
            },
        };
        let table = nodes_table(std::slice::from_ref(&n), false, now);
        assert!(table.starts_with("NAME   STATUS   ARCH"), "{table}");
        assert!(table.lines().nth(1).unwrap().ends_with("0.2.0"), "{table}");
        assert!(!describe_node(&n, None, &[], &[], now).contains("Last Update"));
        n.status.last_update = Some(api::LastUpdate {
            rollout: "up".into(),
            version: "0.2.1".into(),
            phase: api::NodeUpdatePhase::RolledBack,
            reason: Some("no broker connection within 120 s".into()),
            at: "2026-12-06T10:04:00Z".into(),
        });
        let out = describe_node(&n, None, &[], &[], now);
        assert!(
            out.contains(
                "0.2.1 rolled-back (up, 2026-12-06T10:04:00Z): no broker connection within 120 s"
            ),
            "{out}"
        );
    }
}
