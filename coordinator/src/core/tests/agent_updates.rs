//! Agent update rollouts through the core: orders out, reports in, halts, aborts, and
//! what `describe node` shows.

use std::time::SystemTime;

use baton_proto::{Label, UpdatePhase, UpdateReport};

use super::*;
use crate::model::release::ReleaseRecord;

const TARGET: &str = "aarch64-unknown-linux-musl";

fn hello_v(version: &str) -> Body {
    let Body::Hello(mut h) = hello(4000) else {
        unreachable!()
    };
    h.agent_version = version.try_into().unwrap();
    h.labels = BVec::from_vec(vec![Label {
        key: BString::new(baton_proto::release::LABEL_AGENT_TARGET).unwrap(),
        value: BString::new(TARGET).unwrap(),
    }])
    .unwrap();
    Body::Hello(h)
}

fn release_row(h: &Harness, version: &str) -> ReleaseRecord {
    let r = ReleaseRecord {
        version: version.into(),
        target: TARGET.into(),
        protocol: 5,
        size: 4096,
        sha256: "ab".repeat(32),
        signature: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 64]),
        imported_at: "2026-12-06T10:00:00Z".into(),
    };
    h.releases.0.lock().unwrap().push(r.clone());
    r
}

fn rollout_yaml(extra: &str) -> String {
    format!(
        "apiVersion: baton.io/v1alpha1
kind: AgentUpdate
metadata:
  name: up
spec:
  version: 0.2.1
  canary: {{nodes: 1}}
  maxUnavailable: 2
{extra}"
    )
}

/// Five v5 nodes at 0.2.0 and a 0.2.1 release in the store.
fn fleet() -> Harness {
    let mut h = Harness::new(Arc::new(MemStore::new()));
    for i in 1..=5 {
        h.send(&format!("pi-{i}"), hello_v("0.2.0"));
    }
    release_row(&h, "0.2.1");
    h.drain();
    h
}

/// The nodes `msgs` order (`Some`) and withdraw (`None`), in order.
fn updates(msgs: &[Outbound]) -> (Vec<String>, Vec<String>) {
    let (mut ordered, mut withdrawn) = (Vec::new(), Vec::new());
    for m in msgs {
        if let Body::AgentUpdate(u) = &m.body {
            assert!(m.retain, "update orders are retained");
            match u {
                Some(o) => {
                    assert_eq!(o.rollout.as_str(), "up");
                    assert_eq!(o.release.version.as_str(), "0.2.1");
                    assert_eq!(o.release.target.as_str(), TARGET);
                    assert_eq!(o.release.sha256, [0xab; 32]);
                    ordered.push(m.node.to_string());
                }
                None => withdrawn.push(m.node.to_string()),
            }
        }
    }
    (ordered, withdrawn)
}

fn report(h: &mut Harness, node: &str, phase: UpdatePhase, reason: Option<&str>) {
    h.send(
        node,
        Body::UpdateReport(UpdateReport {
            rollout: BString::new("up").unwrap(),
            version: BString::new("0.2.1").unwrap(),
            phase,
            reason: reason.map(|r| BString::new(r).unwrap()),
            downloaded: 4096,
        }),
    );
}

fn status(h: &mut Harness, name: Option<&str>) -> api::AgentUpdate {
    match h
        .api(ApiOp::AgentRollout {
            name: name.map(str::to_owned),
            action: AgentRolloutAction::Status,
        })
        .unwrap()
    {
        ApiReply::AgentUpdate(u) => u,
        other => panic!("{other:?}"),
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_rollout_orders_the_canary_then_waves_as_nodes_commit() {
    let mut h = fleet();
    let applied = h.apply(&rollout_yaml("")).unwrap();
    assert_eq!(applied[0].kind, ResourceKind::AgentUpdate);
    assert_eq!(applied[0].action, ApplyAction::Created);
    assert_eq!(updates(&h.drain()), (names(&["pi-1"]), vec![]));
    // Progress reports change the status, not the orders.
    report(&mut h, "pi-1", UpdatePhase::Downloading, None);
    report(&mut h, "pi-1", UpdatePhase::Probation, None);
    assert_eq!(updates(&h.drain()), (vec![], vec![]));
    let u = status(&mut h, None);
    assert_eq!(u.status.nodes[0].phase, api::NodeUpdatePhase::Probation);
    assert_eq!(u.status.nodes[0].downloaded, 4096);
    // The canary commits: its order is cleared and the first wave goes at once.
    report(&mut h, "pi-1", UpdatePhase::Committed, None);
    assert_eq!(
        updates(&h.drain()),
        (names(&["pi-2", "pi-3"]), names(&["pi-1"]))
    );
    report(&mut h, "pi-2", UpdatePhase::Committed, None);
    assert_eq!(
        updates(&h.drain()).0,
        Vec::<String>::new(),
        "pi-3 still goes"
    );
    report(&mut h, "pi-3", UpdatePhase::Committed, None);
    assert_eq!(updates(&h.drain()).0, names(&["pi-4", "pi-5"]));
    report(&mut h, "pi-4", UpdatePhase::Committed, None);
    report(&mut h, "pi-5", UpdatePhase::Committed, None);
    let u = status(&mut h, Some("up"));
    assert_eq!(u.status.phase, api::RolloutPhase::Complete);
    let last = h.node("pi-5").status.last_update.unwrap();
    assert_eq!(
        (last.version.as_str(), last.phase),
        ("0.2.1", api::NodeUpdatePhase::Committed)
    );
    // Stored: a restarted coordinator has the same rollout.
    let again = Harness::new(h.store.clone());
    assert_eq!(
        again.core.agent_updates.get("up").map(|u| u.status.phase),
        Some(api::RolloutPhase::Complete)
    );
}

#[tokio::test(start_paused = true)]
async fn a_rolled_back_canary_halts_the_rollout_with_its_reason_on_the_node() {
    let mut h = fleet();
    h.apply(&rollout_yaml("")).unwrap();
    h.drain();
    let why = "crashed 3 times in 40 s: exit 101";
    report(&mut h, "pi-1", UpdatePhase::RolledBack, Some(why));
    let (ordered, withdrawn) = updates(&h.drain());
    assert!(ordered.is_empty(), "no wave after a failed canary");
    assert_eq!(
        withdrawn,
        names(&["pi-1"]),
        "the rolled-back node's order is cleared"
    );
    let u = status(&mut h, None);
    assert_eq!(u.status.phase, api::RolloutPhase::Halted);
    assert!(u.status.reason.as_deref().unwrap().contains(why));
    let last = h.node("pi-1").status.last_update.unwrap();
    assert_eq!(last.phase, api::NodeUpdatePhase::RolledBack);
    assert_eq!(last.reason.as_deref(), Some(why));
    let ApiReply::Described { events, .. } = h
        .api(ApiOp::Describe {
            kind: ResourceKind::Node,
            name: "pi-1".into(),
        })
        .unwrap()
    else {
        panic!()
    };
    let e = events
        .iter()
        .find(|e| e.reason == "AgentUpdateRolledBack")
        .expect("an event says why");
    assert_eq!(
        e.message,
        format!("Agent update 0.2.0 -> 0.2.1 rolled back: {why}")
    );
    // The last update survives the node's next Hello.
    h.send("pi-1", hello_v("0.2.0"));
    assert!(h.node("pi-1").status.last_update.is_some());
    // Nothing more is ordered, ever.
    h.core
        .step_agent_updates_at(SystemTime::now() + Duration::from_secs(3600));
    assert_eq!(updates(&h.drain()), (vec![], vec![]));
}

#[tokio::test(start_paused = true)]
async fn abort_withdraws_orders_not_acted_on() {
    let mut h = fleet();
    h.apply(&rollout_yaml("  canary: {nodes: 3}\n").replace("  canary: {nodes: 1}\n", ""))
        .unwrap();
    assert_eq!(updates(&h.drain()).0, names(&["pi-1", "pi-2", "pi-3"]));
    report(&mut h, "pi-1", UpdatePhase::Switching, None);
    let reply = h
        .api(ApiOp::AgentRollout {
            name: Some("up".into()),
            action: AgentRolloutAction::Abort,
        })
        .unwrap();
    let ApiReply::AgentUpdate(u) = reply else {
        panic!()
    };
    assert_eq!(u.status.phase, api::RolloutPhase::Aborted);
    assert_eq!(updates(&h.drain()), (vec![], names(&["pi-2", "pi-3"])));
    // A second abort is a conflict; a new rollout may start now.
    assert!(matches!(
        h.api(ApiOp::AgentRollout {
            name: Some("up".into()),
            action: AgentRolloutAction::Abort,
        }),
        Err(ApiError::Conflict(_))
    ));
    let again = h.apply(&rollout_yaml("")).unwrap();
    assert_eq!(again[0].action, ApplyAction::Configured);
    assert_eq!(
        status(&mut h, None).status.phase,
        api::RolloutPhase::Progressing
    );
}

#[tokio::test(start_paused = true)]
async fn one_rollout_at_a_time_and_its_spec_is_fixed_while_it_goes() {
    let mut h = fleet();
    h.apply(&rollout_yaml("")).unwrap();
    assert_eq!(
        h.apply(&rollout_yaml("")).unwrap()[0].action,
        ApplyAction::Unchanged
    );
    let changed = h.apply(&rollout_yaml("  allowDowngrade: true\n"));
    assert!(matches!(changed, Err(ApiError::Conflict(_))), "{changed:?}");
    let other = h.apply(&rollout_yaml("").replace("name: up", "name: other"));
    assert!(matches!(other, Err(ApiError::Conflict(m)) if m.contains("abort")));
}

#[tokio::test(start_paused = true)]
async fn pause_holds_the_next_wave_until_resume() {
    let mut h = fleet();
    h.apply(&rollout_yaml("")).unwrap();
    h.drain();
    let act = |h: &mut Harness, action| {
        h.api(ApiOp::AgentRollout {
            name: Some("up".into()),
            action,
        })
    };
    act(&mut h, AgentRolloutAction::Pause).unwrap();
    report(&mut h, "pi-1", UpdatePhase::Committed, None);
    assert_eq!(updates(&h.drain()), (vec![], names(&["pi-1"])));
    assert_eq!(status(&mut h, None).status.phase, api::RolloutPhase::Paused);
    act(&mut h, AgentRolloutAction::Resume).unwrap();
    assert_eq!(updates(&h.drain()).0, names(&["pi-2", "pi-3"]));
}

#[tokio::test(start_paused = true)]
async fn a_protocol_v4_agent_is_skipped_and_never_sent_an_order() {
    let mut h = Harness::new(Arc::new(MemStore::new()));
    h.core.handle(Event::Inbound {
        node: nn("old"),
        body: hello(4000),
        proto: 4,
    });
    h.send("pi-1", hello_v("0.2.0"));
    release_row(&h, "0.2.1");
    h.drain();
    h.apply(&rollout_yaml("")).unwrap();
    assert_eq!(updates(&h.drain()).0, names(&["pi-1"]));
    let u = status(&mut h, None);
    let old = u.status.nodes.iter().find(|n| n.node == "old").unwrap();
    assert_eq!(old.phase, api::NodeUpdatePhase::Skipped);
    assert_eq!(
        old.reason.as_deref(),
        Some("agent 0.1.0 speaks protocol v4 and cannot update itself; upgrade it by hand or with baton-agent install")
    );
}

#[tokio::test(start_paused = true)]
async fn an_offline_node_is_unreachable_after_the_deadline_and_a_hello_republishes_its_order() {
    let mut h = fleet();
    h.send("pi-1", Body::Offline);
    h.apply(&rollout_yaml("  deadlineSeconds: 120\n")).unwrap();
    assert_eq!(updates(&h.drain()).0, names(&["pi-1"]));
    // A Hello before it acted on the order: the order again (the broker may have lost it).
    h.send("pi-1", hello_v("0.2.0"));
    assert_eq!(updates(&h.drain()).0, names(&["pi-1"]));
    h.send("pi-1", Body::Offline);
    h.core
        .step_agent_updates_at(SystemTime::now() + Duration::from_secs(60));
    assert_eq!(updates(&h.drain()).0, Vec::<String>::new());
    h.core
        .step_agent_updates_at(SystemTime::now() + Duration::from_secs(121));
    assert_eq!(updates(&h.drain()).0, names(&["pi-2", "pi-3"]));
    let u = status(&mut h, None);
    assert_eq!(u.status.nodes[0].phase, api::NodeUpdatePhase::Unreachable);
}

#[tokio::test(start_paused = true)]
async fn deleting_an_open_rollout_withdraws_its_orders() {
    let mut h = fleet();
    h.apply(&rollout_yaml("")).unwrap();
    h.drain();
    h.api(ApiOp::Delete {
        kind: ResourceKind::AgentUpdate,
        name: "up".into(),
    })
    .unwrap();
    assert_eq!(updates(&h.drain()), (vec![], names(&["pi-1"])));
    assert!(h.store.list(Table::AgentUpdates).unwrap().is_empty());
}
