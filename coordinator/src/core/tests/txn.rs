//! Persistence: restarts and the event bound.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_restarted_core_has_the_same_state() {
    let mut h = two_nodes();
    h.apply(&deployment("web", 3, "100m")).unwrap();
    h.apply(&deployment("big", 1, "64")).unwrap();
    let msgs = h.drain();
    let d = desired_for(&msgs, "pi-1").unwrap();
    h.send("pi-1", Body::Status(running_status(&d, d.generation)));
    h.send("pi-2", Body::Offline);

    let get_all = |h: &mut Harness| -> Vec<ApiReply> {
        let mut all: Vec<ApiReply> = [
            ResourceKind::Node,
            ResourceKind::Deployment,
            ResourceKind::Pod,
        ]
        .into_iter()
        .map(|kind| h.api(ApiOp::Get { kind, name: None }).unwrap())
        .collect();
        all.push(h.api(ApiOp::Events { object: None }).unwrap());
        all
    };
    let before = get_all(&mut h);
    let gen1 = h.node("pi-1").status.desired_generation;

    let mut h2 = Harness::new(h.store.clone());
    assert_eq!(get_all(&mut h2), before);
    assert!(h2.drain().is_empty(), "a restart alone sends nothing");
    // The returning agent gets the same generation: nothing changed for it.
    h2.send("pi-1", hello(4000));
    assert_eq!(
        desired_for(&h2.drain(), "pi-1").map(|d| (d.generation, d.pods.len())),
        Some((gen1, d.pods.len()))
    );
}

#[tokio::test(start_paused = true)]
async fn events_are_bounded() {
    let mut h = two_nodes();
    for i in 0..(MAX_EVENTS / 2 + 10) {
        h.send("pi-1", Body::Offline);
        h.send(
            "pi-1",
            Body::Heartbeat(Heartbeat {
                applied_generation: 0,
                status_digest: i as u64,
                ..Default::default()
            }),
        );
    }
    assert_eq!(h.store.list(Table::Events).unwrap().len(), MAX_EVENTS);
    assert_eq!(h.core.events.len(), MAX_EVENTS);
}
