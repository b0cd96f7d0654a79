use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::*;
use crate::model::api::{Canary, IntOrPercent, RolloutPhase};

const TARGET: &str = "aarch64-unknown-linux-musl";

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn node(name: &str, version: &str, proto: u16) -> api::Node {
    let mut labels = BTreeMap::new();
    labels.insert(
        baton_proto::release::LABEL_AGENT_TARGET.to_owned(),
        TARGET.to_owned(),
    );
    labels.insert("fleet".to_owned(), "a".to_owned());
    api::Node {
        api_version: "v1".into(),
        kind: "Node".into(),
        metadata: api::ObjectMeta {
            name: name.into(),
            labels,
            ..Default::default()
        },
        spec: Default::default(),
        status: api::NodeStatus {
            ready: true,
            arch: "arm64".into(),
            agent_version: version.into(),
            protocol_version: proto,
            ..Default::default()
        },
    }
}

fn release(version: &str, target: &str) -> ReleaseRecord {
    ReleaseRecord {
        version: version.into(),
        target: target.into(),
        protocol: 5,
        size: 1000,
        sha256: format!("{:0>64}", version.replace('.', "")),
        signature: String::new(),
        imported_at: String::new(),
    }
}

fn rollout(version: &str, canary: u32, max_unavailable: u32) -> AgentUpdate {
    AgentUpdate {
        api_version: api::AGENT_UPDATE_API_VERSION.into(),
        kind: "AgentUpdate".into(),
        metadata: api::ObjectMeta {
            name: "up".into(),
            ..Default::default()
        },
        spec: api::AgentUpdateSpec {
            version: version.into(),
            selector: Default::default(),
            canary: Canary {
                nodes: canary,
                pause: false,
                soak_seconds: 0,
            },
            max_unavailable: IntOrPercent::Int(max_unavailable),
            failure_budget_percent: 0,
            health_window_seconds: 60,
            deadline_seconds: 300,
            allow_downgrade: false,
        },
        status: Default::default(),
    }
}

/// A rollout over nodes with the releases, stepped and fed reports like the core does.
struct Sim {
    u: AgentUpdate,
    nodes: Vec<api::Node>,
    releases: Vec<ReleaseRecord>,
    /// Every order and withdrawal so far, in order.
    orders: Vec<String>,
    withdrawn: Vec<String>,
}

impl Sim {
    fn new(u: AgentUpdate, n: usize) -> Self {
        let nodes = (1..=n)
            .map(|i| node(&format!("pi-{i}"), "0.2.0", 5))
            .collect();
        Self {
            u,
            nodes,
            releases: vec![release("0.2.1", TARGET), release("0.2.0", TARGET)],
            orders: Vec::new(),
            withdrawn: Vec::new(),
        }
    }
    /// Steps at `now`; answers the nodes ordered in this step.
    fn step(&mut self, now: SystemTime) -> Vec<String> {
        let refs: Vec<&api::Node> = self.nodes.iter().collect();
        let s = super::step(&self.u, &refs, &self.releases, now);
        self.u.status = s.status;
        let ordered: Vec<String> = s.orders.iter().map(|o| o.node.clone()).collect();
        for o in &s.orders {
            assert_eq!(o.release.version, self.u.spec.version);
        }
        self.orders.extend(ordered.clone());
        self.withdrawn.extend(s.withdraw);
        ordered
    }
    fn report(
        &mut self,
        node: &str,
        phase: NodeUpdatePhase,
        reason: Option<&str>,
        now: SystemTime,
    ) {
        let r = api::UpdateReport {
            rollout: "up".into(),
            version: self.u.spec.version.clone(),
            phase,
            reason: reason.map(str::to_owned),
            downloaded: 1000,
        };
        assert!(apply_report(&mut self.u, node, &r, now), "{node} {phase:?}");
    }
    fn commit(&mut self, nodes: &[String], now: SystemTime) {
        for n in nodes {
            self.report(n, NodeUpdatePhase::Downloading, None, now);
            self.report(n, NodeUpdatePhase::Committed, None, now);
        }
    }
    fn phase_of(&self, node: &str) -> NodeUpdatePhase {
        self.nodes_status(node).phase
    }
    fn nodes_status(&self, node: &str) -> &NodeUpdate {
        self.u.status.nodes.iter().find(|n| n.node == node).unwrap()
    }
    fn set_ready(&mut self, node: &str, ready: bool) {
        self.nodes
            .iter_mut()
            .find(|n| n.metadata.name == node)
            .unwrap()
            .status
            .ready = ready;
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn six_nodes_go_in_three_waves_of_two_each_after_the_last() {
    let mut s = Sim::new(rollout("0.2.1", 2, 2), 6);
    let w0 = s.step(t(0));
    assert_eq!(w0, names(&["pi-1", "pi-2"]));
    assert_eq!(s.step(t(1)), Vec::<String>::new(), "a step is idempotent");
    // Half the canary done: the next wave waits.
    s.commit(&w0[..1], t(2));
    assert!(s.step(t(3)).is_empty());
    s.commit(&w0[1..], t(4));
    let w1 = s.step(t(5));
    assert_eq!(w1, names(&["pi-3", "pi-4"]));
    s.commit(&w1, t(6));
    let w2 = s.step(t(7));
    assert_eq!(w2, names(&["pi-5", "pi-6"]));
    assert_eq!(s.u.status.phase, RolloutPhase::Progressing);
    s.commit(&w2, t(8));
    assert!(s.step(t(9)).is_empty());
    assert_eq!(s.u.status.phase, RolloutPhase::Complete);
    assert_eq!(
        s.u.status.reason.as_deref(),
        Some("6 committed, 0 failed, 0 unreachable, 0 skipped")
    );
    let waves: Vec<Option<u32>> = s.u.status.nodes.iter().map(|n| n.wave).collect();
    assert_eq!(
        waves,
        [0, 0, 1, 1, 2, 2].map(Some).to_vec(),
        "waves follow name order"
    );
    assert!(s.withdrawn.is_empty());
    let n = s.nodes_status("pi-4");
    assert_eq!((n.from.as_str(), n.to.as_str()), ("0.2.0", "0.2.1"));
}

#[test]
fn a_canary_failure_halts_before_the_next_wave_and_withdraws_unstarted_orders() {
    let mut s = Sim::new(rollout("0.2.1", 2, 2), 6);
    assert_eq!(s.step(t(0)), names(&["pi-1", "pi-2"]));
    s.report(
        "pi-1",
        NodeUpdatePhase::RolledBack,
        Some("crashed 3 times in 40 s: exit 101"),
        t(10),
    );
    // pi-2 has not acted on its order yet.
    assert!(s.step(t(11)).is_empty());
    assert_eq!(s.u.status.phase, RolloutPhase::Halted);
    let reason = s.u.status.reason.clone().unwrap();
    assert!(
        reason.contains("canary failed") && reason.contains("exit 101"),
        "{reason}"
    );
    assert_eq!(s.withdrawn, names(&["pi-2"]));
    // Nothing more, ever: later steps and the rest of the canary's news order nobody.
    s.report("pi-2", NodeUpdatePhase::Committed, None, t(20));
    assert!(s.step(t(1000)).is_empty());
    assert_eq!(s.orders.len(), 2);
    assert_eq!(s.phase_of("pi-3"), NodeUpdatePhase::Pending);
}

#[test]
fn a_refused_canary_halts_too() {
    let mut s = Sim::new(rollout("0.2.1", 1, 2), 3);
    assert_eq!(s.step(t(0)), names(&["pi-1"]));
    s.report(
        "pi-1",
        NodeUpdatePhase::Refused,
        Some("signature does not verify"),
        t(1),
    );
    s.step(t(2));
    assert_eq!(s.u.status.phase, RolloutPhase::Halted);
    assert_eq!(s.orders.len(), 1);
}

#[test]
fn the_failure_budget_halts_a_wave_only_beyond_its_share() {
    // 1 canary, then waves of 5; a budget of 20% lets one failure of five pass.
    let mut u = rollout("0.2.1", 1, 5);
    u.spec.failure_budget_percent = 20;
    let mut s = Sim::new(u, 11);
    let c = s.step(t(0));
    s.commit(&c, t(1));
    let w1 = s.step(t(2));
    assert_eq!(w1.len(), 5);
    s.report(
        &w1[0],
        NodeUpdatePhase::RolledBack,
        Some("pods unhealthy: 2/5 not ready"),
        t(3),
    );
    s.commit(&w1[1..], t(4));
    let w2 = s.step(t(5));
    assert_eq!(w2.len(), 5, "one failure in five is within 20%");
    assert_eq!(s.u.status.phase, RolloutPhase::Progressing);
    s.report(&w2[0], NodeUpdatePhase::RolledBack, Some("a"), t(6));
    s.report(&w2[1], NodeUpdatePhase::Downloading, None, t(6));
    assert!(s.step(t(7)).is_empty());
    assert_eq!(s.u.status.phase, RolloutPhase::Progressing);
    s.report(&w2[2], NodeUpdatePhase::Refused, Some("b"), t(8));
    s.step(t(9));
    assert_eq!(s.u.status.phase, RolloutPhase::Halted, "two of five is 40%");
    let reason = s.u.status.reason.clone().unwrap();
    assert!(
        reason.starts_with("wave 2: 2 of 5 nodes failed"),
        "{reason}"
    );
    // Halted at once, not at the wave's end; the orders of the nodes that have not staged
    // the release are withdrawn, the downloading one's too.
    let mut withdrawn = s.withdrawn.clone();
    withdrawn.sort();
    let mut expect = w2[3..].to_vec();
    expect.push(w2[1].clone());
    expect.sort();
    assert_eq!(withdrawn, expect);
    assert_eq!(s.phase_of(&w2[1]), NodeUpdatePhase::Pending);
    // Its progress sent before the withdrawal arrived changes nothing.
    let late = api::UpdateReport {
        rollout: "up".into(),
        version: s.u.spec.version.clone(),
        phase: NodeUpdatePhase::Downloading,
        reason: None,
        downloaded: 2000,
    };
    assert!(!apply_report(&mut s.u, &w2[1], &late, t(10)));
    assert_eq!(s.phase_of(&w2[1]), NodeUpdatePhase::Pending);
}

#[test]
fn a_budget_of_zero_halts_on_the_first_failure_of_a_wave() {
    let mut s = Sim::new(rollout("0.2.1", 0, 3), 3);
    let w = s.step(t(0));
    assert_eq!(w.len(), 3, "no canary: the first wave starts at once");
    assert!(s.u.status.nodes.iter().all(|n| n.wave == Some(1)));
    s.report(&w[0], NodeUpdatePhase::RolledBack, None, t(1));
    s.step(t(2));
    assert_eq!(s.u.status.phase, RolloutPhase::Halted);
}

#[test]
fn a_canary_pause_waits_for_resume() {
    let mut u = rollout("0.2.1", 1, 2);
    u.spec.canary.pause = true;
    let mut s = Sim::new(u, 3);
    let c = s.step(t(0));
    s.commit(&c, t(1));
    assert!(s.step(t(2)).is_empty());
    assert_eq!(s.u.status.phase, RolloutPhase::Paused);
    assert!(s.u.status.reason.as_deref().unwrap().contains("resume up"));
    assert!(s.step(t(5000)).is_empty(), "no time ends a pause");
    resume(&mut s.u).unwrap();
    assert_eq!(s.step(t(5001)), names(&["pi-2", "pi-3"]));
    assert_eq!(
        resume(&mut s.u),
        Err(AgentUpdateError::NotPaused("up".into()))
    );
}

#[test]
fn a_canary_soak_waits_its_time() {
    let mut u = rollout("0.2.1", 1, 2);
    u.spec.canary.soak_seconds = 100;
    let mut s = Sim::new(u, 3);
    let c = s.step(t(0));
    s.commit(&c, t(1));
    assert!(s.step(t(10)).is_empty());
    assert!(s.step(t(109)).is_empty());
    assert_eq!(s.u.status.phase, RolloutPhase::Progressing);
    assert_eq!(s.step(t(110)), names(&["pi-2", "pi-3"]));
}

#[test]
fn pause_stops_new_waves_and_resume_goes_on() {
    let mut s = Sim::new(rollout("0.2.1", 1, 1), 3);
    let c = s.step(t(0));
    pause(&mut s.u).unwrap();
    // The canary's order in flight goes on.
    s.commit(&c, t(1));
    assert!(s.step(t(2)).is_empty());
    assert_eq!(s.u.status.phase, RolloutPhase::Paused);
    resume(&mut s.u).unwrap();
    assert_eq!(s.step(t(3)), names(&["pi-2"]));
}

#[test]
fn abort_withdraws_unstarted_orders_and_ends_the_rollout() {
    let mut s = Sim::new(rollout("0.2.1", 0, 3), 3);
    let w = s.step(t(0));
    s.report(&w[0], NodeUpdatePhase::Probation, None, t(1));
    let withdraw = abort(&mut s.u).unwrap();
    assert_eq!(withdraw, names(&["pi-2", "pi-3"]));
    assert_eq!(s.u.status.phase, RolloutPhase::Aborted);
    assert!(s.step(t(2)).is_empty());
    assert!(matches!(
        abort(&mut s.u),
        Err(AgentUpdateError::Final { .. })
    ));
    assert!(pause(&mut s.u).is_err());
}

#[test]
fn an_offline_node_becomes_unreachable_after_the_deadline_and_the_rollout_goes_on() {
    let mut s = Sim::new(rollout("0.2.1", 1, 2), 3);
    s.set_ready("pi-1", false);
    assert_eq!(
        s.step(t(0)),
        names(&["pi-1"]),
        "ordered anyway: it is retained"
    );
    assert!(s.step(t(299)).is_empty());
    assert_eq!(s.phase_of("pi-1"), NodeUpdatePhase::Pending);
    assert_eq!(s.step(t(300)), names(&["pi-2", "pi-3"]));
    let n = s.nodes_status("pi-1");
    assert_eq!(n.phase, NodeUpdatePhase::Unreachable);
    assert_eq!(n.reason.as_deref(), Some("offline for more than 300s"));
    // Its order stays: when it comes back it updates, and its reports count.
    assert!(s.withdrawn.is_empty());
    s.set_ready("pi-1", true);
    s.commit(&names(&["pi-1", "pi-2", "pi-3"]), t(400));
    s.step(t(401));
    assert_eq!(s.u.status.phase, RolloutPhase::Complete);
}

#[test]
fn a_node_back_before_the_deadline_is_not_unreachable() {
    let mut s = Sim::new(rollout("0.2.1", 1, 2), 2);
    s.step(t(0));
    s.report("pi-1", NodeUpdatePhase::Switching, None, t(1));
    s.set_ready("pi-1", false);
    s.step(t(2));
    s.set_ready("pi-1", true);
    s.step(t(200));
    s.set_ready("pi-1", false);
    s.step(t(400));
    assert_eq!(s.phase_of("pi-1"), NodeUpdatePhase::Switching);
    s.step(t(699));
    assert_eq!(s.phase_of("pi-1"), NodeUpdatePhase::Switching);
    s.step(t(700));
    assert_eq!(s.phase_of("pi-1"), NodeUpdatePhase::Unreachable);
}

#[test]
fn an_online_node_that_never_answers_its_order_is_unreachable_too() {
    let mut s = Sim::new(rollout("0.2.1", 1, 2), 2);
    s.step(t(0));
    s.step(t(300));
    let n = s.nodes_status("pi-1");
    assert_eq!(n.phase, NodeUpdatePhase::Unreachable);
    assert_eq!(
        n.reason.as_deref(),
        Some("no report within 300s of its order")
    );
}

#[test]
fn nodes_that_cannot_take_it_are_skipped_with_the_reason() {
    let mut s = Sim::new(rollout("0.2.1", 1, 5), 0);
    s.nodes = vec![
        node("a-old", "0.1.0", 4),
        node("b-there", "0.2.1", 5),
        node("c-newer", "0.3.0", 5),
        node("d-ok", "0.2.0", 5),
        node("e-other", "0.2.0", 5),
        node("f-unlabelled", "0.2.0", 5),
    ];
    s.nodes[4].metadata.labels.insert(
        baton_proto::release::LABEL_AGENT_TARGET.into(),
        "riscv64gc-unknown-linux-gnu".into(),
    );
    s.nodes[5]
        .metadata
        .labels
        .remove(baton_proto::release::LABEL_AGENT_TARGET);
    assert_eq!(s.step(t(0)), names(&["d-ok"]));
    let reason = |n: &str| s.nodes_status(n).reason.clone().unwrap_or_default();
    for n in ["a-old", "b-there", "c-newer", "e-other", "f-unlabelled"] {
        assert_eq!(s.phase_of(n), NodeUpdatePhase::Skipped, "{n}");
    }
    assert_eq!(
        reason("a-old"),
        "agent 0.1.0 speaks protocol v4 and cannot update itself; upgrade it by hand or with baton-agent install"
    );
    assert_eq!(reason("b-there"), "already at 0.2.1");
    assert_eq!(
        reason("c-newer"),
        "0.2.1 is older than 0.3.0: a downgrade needs allowDowngrade"
    );
    assert!(
        reason("e-other").starts_with("no release 0.2.1 for riscv64gc"),
        "{}",
        reason("e-other")
    );
    assert!(reason("f-unlabelled").contains("does not report its target"));
    let d = s.orders.clone();
    s.commit(&d, t(1));
    s.step(t(2));
    assert_eq!(s.u.status.phase, RolloutPhase::Complete);
    assert_eq!(
        s.u.status.reason.as_deref(),
        Some("1 committed, 0 failed, 0 unreachable, 5 skipped")
    );
}

#[test]
fn a_downgrade_goes_when_allowed() {
    let mut u = rollout("0.2.0", 1, 1);
    u.spec.allow_downgrade = true;
    let mut s = Sim::new(u, 0);
    s.nodes = vec![node("pi-1", "0.2.1", 5)];
    assert_eq!(s.step(t(0)), names(&["pi-1"]));
    assert_eq!(s.orders.len(), 1);
}

#[test]
fn the_selector_picks_nodes_by_labels_and_arch() {
    let mut u = rollout("0.2.1", 0, 10);
    u.spec
        .selector
        .match_labels
        .insert("fleet".into(), "a".into());
    u.spec.selector.arch = Some("arm64".into());
    let mut s = Sim::new(u, 0);
    s.nodes = vec![
        node("pi-1", "0.2.0", 5),
        node("pi-2", "0.2.0", 5),
        node("x86", "0.2.0", 5),
    ];
    s.nodes[1]
        .metadata
        .labels
        .insert("fleet".into(), "b".into());
    s.nodes[2].status.arch = "amd64".into();
    assert_eq!(s.step(t(0)), names(&["pi-1"]));
    assert_eq!(
        s.u.status.nodes.len(),
        1,
        "unselected nodes are not in the status"
    );
}

#[test]
fn no_node_in_scope_completes_with_a_reason() {
    let mut s = Sim::new(rollout("0.2.1", 1, 1), 0);
    s.step(t(0));
    assert_eq!(s.u.status.phase, RolloutPhase::Complete);
    assert_eq!(
        s.u.status.reason.as_deref(),
        Some("no node matches the selector")
    );
}

#[test]
fn max_unavailable_as_a_share_rounds_down_to_at_least_one() {
    let mut u = rollout("0.2.1", 1, 1);
    u.spec.max_unavailable = IntOrPercent::Percent(25);
    let mut s = Sim::new(u, 9);
    s.step(t(0));
    let waves: Vec<u32> = s.u.status.nodes.iter().filter_map(|n| n.wave).collect();
    // 8 after the canary, 25% is 2 a wave.
    assert_eq!(waves, vec![0, 1, 1, 2, 2, 3, 3, 4, 4]);
    assert_eq!(api::wave_size(IntOrPercent::Percent(10), 3), 1);
    assert_eq!(
        api::parse_int_or_percent("25%"),
        Some(IntOrPercent::Percent(25))
    );
    assert_eq!(api::parse_int_or_percent("3"), Some(IntOrPercent::Int(3)));
    assert_eq!(api::parse_int_or_percent("150%"), None);
}

#[test]
fn reports_for_another_version_or_node_are_ignored() {
    let mut s = Sim::new(rollout("0.2.1", 1, 1), 1);
    s.step(t(0));
    let stale = api::UpdateReport {
        rollout: "up".into(),
        version: "0.2.0".into(),
        phase: NodeUpdatePhase::Committed,
        reason: None,
        downloaded: 0,
    };
    assert!(!apply_report(&mut s.u, "pi-1", &stale, t(1)));
    let other = api::UpdateReport {
        version: "0.2.1".into(),
        ..stale
    };
    assert!(!apply_report(&mut s.u, "nobody", &other, t(1)));
    assert!(apply_report(&mut s.u, "pi-1", &other, t(1)));
    assert!(
        !apply_report(&mut s.u, "pi-1", &other, t(2)),
        "a repeat changes nothing"
    );
}

#[test]
fn versions_compare_numerically_with_pre_releases_first() {
    assert_eq!(cmp_versions("0.10.0", "0.9.9"), Ordering::Greater);
    assert_eq!(cmp_versions("0.2.1-rc1", "0.2.1"), Ordering::Less);
    assert_eq!(cmp_versions("1.0.0", "1.0.0"), Ordering::Equal);
}

#[test]
fn a_release_deleted_before_its_wave_skips_the_node_with_the_reason() {
    let mut s = Sim::new(rollout("0.2.1", 1, 1), 2);
    let c = s.step(t(0));
    s.commit(&c, t(1));
    s.releases.retain(|r| r.version != "0.2.1");
    assert!(s.step(t(2)).is_empty());
    let n = s.nodes_status("pi-2");
    assert_eq!(n.phase, NodeUpdatePhase::Skipped);
    assert!(
        n.reason
            .as_deref()
            .unwrap()
            .contains("was deleted before its wave"),
        "{n:?}"
    );
    s.step(t(3));
    assert_eq!(s.u.status.phase, RolloutPhase::Complete);
}

#[test]
fn nodes_in_flight_when_a_rollout_halts_still_report() {
    let mut s = Sim::new(rollout("0.2.1", 2, 2), 4);
    s.step(t(0));
    s.report("pi-2", NodeUpdatePhase::Probation, None, t(1));
    s.report("pi-1", NodeUpdatePhase::RolledBack, Some("exit 101"), t(2));
    s.step(t(3));
    assert_eq!(s.u.status.phase, RolloutPhase::Halted);
    assert!(s.withdrawn.is_empty(), "pi-2 had started: its order stays");
    s.report("pi-2", NodeUpdatePhase::Committed, None, t(4));
    assert_eq!(s.phase_of("pi-2"), NodeUpdatePhase::Committed);
    assert!(s.step(t(5)).is_empty());
}
