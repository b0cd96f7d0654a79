//! Node messages, liveness, loss and eviction.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_revoked_node_stays_not_ready_whatever_reaches_the_core() {
    let mut h = two_nodes();
    assert!(h.node("pi-1").status.ready);
    h.api(ApiOp::SetRevoked {
        name: "pi-1".into(),
        revoked: true,
    })
    .unwrap();
    assert!(!h.node("pi-1").status.ready);
    // A message verified just before the revocation, still queued for the core.
    h.send(
        "pi-1",
        Body::Heartbeat(Heartbeat {
            applied_generation: 1,
            status_digest: 0,
            ..Default::default()
        }),
    );
    h.send("pi-1", hello(4000));
    assert!(!h.node("pi-1").status.ready, "a revoked node became Ready");
    assert!(h.node("pi-2").status.ready);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_heal_lost_messages() {
    let mut h = two_nodes();
    h.apply(&deployment("web", 2, "100m")).unwrap();
    let msgs = h.drain();
    let d = desired_for(&msgs, "pi-1").unwrap();

    // A heartbeat with a stale generation makes the core republish.
    h.send(
        "pi-1",
        Body::Heartbeat(Heartbeat {
            applied_generation: d.generation - 1,
            status_digest: 0,
            ..Default::default()
        }),
    );
    let msgs = h.drain();
    assert_eq!(desired_for(&msgs, "pi-1"), Some(d.clone()));
    // No status yet, so any digest differs: ask for a status.
    assert_eq!(status_requests(&msgs, "pi-1"), 1);

    // After a full status, a matching heartbeat costs nothing...
    let st = running_status(&d, d.generation);
    h.send("pi-1", Body::Status(st.clone()));
    h.drain();
    h.send(
        "pi-1",
        Body::Heartbeat(Heartbeat {
            applied_generation: d.generation,
            status_digest: st.digest(),
            ..Default::default()
        }),
    );
    assert!(h.drain().is_empty());
    // ...and a heartbeat with another digest asks for the status again.
    h.send(
        "pi-1",
        Body::Heartbeat(Heartbeat {
            applied_generation: d.generation,
            status_digest: st.digest() ^ 1,
            ..Default::default()
        }),
    );
    let msgs = h.drain();
    assert_eq!(status_requests(&msgs, "pi-1"), 1);
    assert!(desired_for(&msgs, "pi-1").is_none());
}

#[tokio::test(start_paused = true)]
async fn status_updates_pods_and_the_deployment() {
    let mut h = two_nodes();
    h.apply(&deployment("web", 2, "100m")).unwrap();
    let msgs = h.drain();
    for n in ["pi-1", "pi-2"] {
        let d = desired_for(&msgs, n).unwrap();
        h.send(n, Body::Status(running_status(&d, d.generation)));
    }
    let pods = h.pods();
    assert!(
        pods.iter()
            .all(|p| p.status.phase == api::PodPhase::Running),
        "{pods:?}"
    );
    assert!(pods
        .iter()
        .all(|p| p.status.pod_ip.as_deref() == Some("10.42.1.5")));
    let ApiReply::Object(d) = h
        .api(ApiOp::Get {
            kind: ResourceKind::Deployment,
            name: Some("web".into()),
        })
        .unwrap()
    else {
        panic!()
    };
    let ApiObject::Deployment(d) = d else {
        panic!("not a deployment: {d:?}")
    };
    assert_eq!(d.status.ready_replicas, 2);

    // A status for a pod with another uid (an older incarnation) is ignored.
    let mut stale = running_status(&desired_for(&msgs, "pi-1").unwrap(), 1);
    let name = stale.pods[0].name.to_string();
    let mut pods = stale.pods.into_vec();
    pods[0].uid = BString::new("other").unwrap();
    pods[0].containers = BVec::from_vec(vec![ContainerStatus {
        name: BString::new("main").unwrap(),
        state: ContainerState::OomKilled,
        restart_count: 1,
        last_termination: None,
        ready: true,
    }])
    .unwrap();
    stale.pods = BVec::from_vec(pods).unwrap();
    h.send("pi-1", Body::Status(stale));
    let p = h
        .pods()
        .into_iter()
        .find(|p| p.metadata.name == name)
        .unwrap();
    assert_eq!(p.status.phase, api::PodPhase::Running);
}

#[tokio::test(start_paused = true)]
async fn oom_kill_is_an_event() {
    let mut h = two_nodes();
    h.apply(&deployment("web", 1, "100m")).unwrap();
    let msgs = h.drain();
    let (node, d) = ["pi-1", "pi-2"]
        .iter()
        .find_map(|n| {
            desired_for(&msgs, n)
                .filter(|d| !d.pods.is_empty())
                .map(|d| (*n, d))
        })
        .unwrap();
    let mut st = running_status(&d, d.generation);
    let mut pods = st.pods.into_vec();
    pods[0].containers = BVec::from_vec(vec![ContainerStatus {
        name: BString::new("main").unwrap(),
        state: ContainerState::OomKilled,
        restart_count: 1,
        last_termination: None,
        ready: true,
    }])
    .unwrap();
    st.pods = BVec::from_vec(pods).unwrap();
    h.send(node, Body::Status(st));
    let name = d.pods[0].name.to_string();
    let ApiReply::Described { events, .. } = h
        .api(ApiOp::Describe {
            kind: ResourceKind::Pod,
            name,
        })
        .unwrap()
    else {
        panic!()
    };
    let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons, ["Created", "Scheduled", "OOMKilled"]);
}

#[tokio::test(start_paused = true)]
async fn lost_nodes_become_not_ready() {
    let mut h = two_nodes();
    h.apply(&deployment("web", 2, "100m")).unwrap();
    h.send("pi-1", Body::Offline);
    assert!(!h.node("pi-1").status.ready);
    let on_1: Vec<api::Pod> = h
        .pods()
        .into_iter()
        .filter(|p| p.spec.node_name.as_deref() == Some("pi-1"))
        .collect();
    assert!(
        !on_1.is_empty()
            && on_1
                .iter()
                .all(|p| p.status.phase == api::PodPhase::Unknown)
    );

    // pi-2 keeps beating for a while, then stops.
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(5)).await;
        h.send("pi-2", Body::Heartbeat(Heartbeat::default()));
        h.core.handle(Event::Tick);
        assert!(h.node("pi-2").status.ready);
    }
    tokio::time::advance(TIMEOUT - Duration::from_secs(1)).await;
    h.core.handle(Event::Tick);
    assert!(h.node("pi-2").status.ready, "not yet timed out");
    tokio::time::advance(Duration::from_secs(2)).await;
    h.core.handle(Event::Tick);
    assert!(!h.node("pi-2").status.ready);
    let ApiReply::Events(ev) = h
        .api(ApiOp::Events {
            object: Some("node/pi-2".into()),
        })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(ev.last().map(|e| e.reason.as_str()), Some("NodeNotReady"));

    // A heartbeat brings it back.
    h.send("pi-2", Body::Heartbeat(Heartbeat::default()));
    assert!(h.node("pi-2").status.ready);
}

/// A node on a quiet link told its profile after its Hello: it stays Ready while silent for
/// longer than the coordinator's heartbeat timeout, its last will still makes it NotReady
/// at once, and it is lost without one after its own bound. A node that heartbeats often,
/// or says no profile (v4), keeps the coordinator's timeout.
#[tokio::test(start_paused = true)]
async fn a_quiet_node_is_timed_by_its_link_profile() {
    let mut h = two_nodes();
    let metered = LinkProfile {
        keepalive_secs: 180,
        heartbeat_max_secs: 6 * 3600,
    };
    h.send("pi-1", Body::Link(metered));
    h.send(
        "pi-2",
        Body::Link(LinkProfile {
            keepalive_secs: 12,
            heartbeat_max_secs: 1,
        }),
    );
    tokio::time::advance(TIMEOUT * 3).await;
    h.core.handle(Event::Tick);
    assert!(h.node("pi-1").status.ready, "a quiet node timed out");
    assert!(
        !h.node("pi-2").status.ready,
        "a beating node kept its timeout"
    );

    // The last will (a dropped connection, a lapsed keepalive) needs no timeout.
    h.send("pi-1", Body::Offline);
    assert!(!h.node("pi-1").status.ready);

    // Back, as v4 (a rolled-back agent): the Hello forgets the profile.
    h.send("pi-1", hello(4000));
    assert!(h.node("pi-1").status.ready);
    tokio::time::advance(TIMEOUT + Duration::from_secs(1)).await;
    h.core.handle(Event::Tick);
    assert!(
        !h.node("pi-1").status.ready,
        "a v4 node kept a quiet timeout"
    );

    // Quiet again, and silent past its own bound: lost even with its will lost.
    h.send("pi-1", hello(4000));
    h.send("pi-1", Body::Link(metered));
    tokio::time::advance(Duration::from_secs(6 * 3600)).await;
    h.core.handle(Event::Tick);
    assert!(h.node("pi-1").status.ready);
    tokio::time::advance(TIMEOUT).await;
    h.core.handle(Event::Tick);
    assert!(!h.node("pi-1").status.ready);
    let ApiReply::Events(ev) = h
        .api(ApiOp::Events {
            object: Some("node/pi-1".into()),
        })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        ev.last().map(|e| e.message.as_str()),
        Some("No heartbeat for 21620s")
    );
}

/// While the coordinator's own broker link is down, the nodes' silence says nothing about
/// them: none is timed out, and a NotReady one is not evicted. Once the link is back each
/// gets a fresh window (a full heartbeat timeout, a full eviction timeout), as under a new
/// leader, and the one that stays silent is lost then, and only then.
#[tokio::test(start_paused = true)]
async fn silence_while_the_coordinators_broker_link_is_down_does_not_count() {
    let eviction = Duration::from_secs(60);
    let mut h = Harness::evicting_after(Arc::new(MemStore::new()), eviction);
    for n in ["pi-1", "pi-2", "pi-3"] {
        h.send(n, hello(4000));
    }
    h.apply(&deployment("web", 3, "100m")).unwrap();
    // pi-3 went away before the link did: NotReady, its pods due for eviction.
    h.send("pi-3", Body::Offline);
    let on_3 = on_node(&h.pods(), "pi-3").len();
    assert!(on_3 > 0, "pi-3 runs a web pod");

    // The link is down for longer than both timeouts, ticking all along.
    h.core.handle(Event::BusLink { up: false });
    for _ in 0..eviction.as_secs() + TIMEOUT.as_secs() {
        tokio::time::advance(Duration::from_secs(1)).await;
        h.core.handle(Event::Tick);
    }
    assert!(
        h.node("pi-1").status.ready,
        "timed out while we could not hear it"
    );
    assert!(h.node("pi-2").status.ready);
    assert_eq!(on_node(&h.pods(), "pi-3").len(), on_3, "evicted while deaf");

    // Back: pi-1 beats, pi-2 stays silent. A full heartbeat timeout passes before pi-2 is
    // NotReady, and a full eviction timeout before pi-3's pods go.
    h.core.handle(Event::BusLink { up: true });
    pass(&mut h, TIMEOUT.as_secs() - 1, "pi-1").await;
    assert!(
        h.node("pi-2").status.ready,
        "no fresh window after the link came back"
    );
    pass(&mut h, 2, "pi-1").await;
    assert!(!h.node("pi-2").status.ready);
    assert!(h.node("pi-1").status.ready);
    pass(&mut h, eviction.as_secs() - TIMEOUT.as_secs() - 3, "pi-1").await;
    assert_eq!(
        on_node(&h.pods(), "pi-3").len(),
        on_3,
        "no fresh eviction window"
    );
    pass(&mut h, TIMEOUT.as_secs() + 3, "pi-1").await;
    assert!(on_node(&h.pods(), "pi-3").is_empty(), "never evicted");
}

// ----- node loss: eviction and return ----------------------------------------

fn beat(h: &mut Harness, node: &str) {
    h.send(node, Body::Heartbeat(Heartbeat::default()));
}

/// Lets `secs` pass in 1 s steps, `alive` beating and the core ticking every second.
async fn pass(h: &mut Harness, secs: u64, alive: &str) {
    for _ in 0..secs {
        tokio::time::advance(Duration::from_secs(1)).await;
        beat(h, alive);
        h.core.handle(Event::Tick);
    }
}

fn on_node(pods: &[api::Pod], node: &str) -> Vec<api::Pod> {
    pods.iter()
        .filter(|p| p.spec.node_name.as_deref() == Some(node))
        .cloned()
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_silent_node_loses_its_deployment_pods_after_the_eviction_timeout() {
    let eviction = Duration::from_secs(60);
    let mut h = two_nodes();
    let bare = "apiVersion: v1\nkind: Pod\nmetadata: {name: solo}\nspec:\n  containers: [{name: c, image: busybox:1.36}]\n";
    h.apply(bare).unwrap();
    let lost = h.pods()[0].spec.node_name.clone().unwrap();
    let alive = if lost == "pi-1" { "pi-2" } else { "pi-1" };
    h.apply(&deployment("web", 3, "100m")).unwrap();
    let before = on_node(&h.pods(), &lost);
    let evicted: Vec<api::Pod> = before
        .iter()
        .filter(|p| p.metadata.owner.is_some())
        .cloned()
        .collect();
    assert!(
        !evicted.is_empty(),
        "the lost node runs web pods: {before:?}"
    );
    h.drain();

    // The heartbeat timeout makes it NotReady; its pods stay (Unknown) until eviction.
    pass(&mut h, TIMEOUT.as_secs() + 1, alive).await;
    assert!(!h.node(&lost).status.ready);
    pass(&mut h, eviction.as_secs() - 2, alive).await;
    assert_eq!(
        on_node(&h.pods(), &lost).len(),
        before.len(),
        "evicted too early"
    );
    assert!(on_node(&h.pods(), &lost)
        .iter()
        .all(|p| p.status.phase == api::PodPhase::Unknown));
    pass(&mut h, 3, alive).await;

    // Its deployment pods are gone and replaced on the Ready node; the bare pod stays.
    let pods = h.pods();
    let left = on_node(&pods, &lost);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].metadata.name, "solo");
    assert_eq!(left[0].status.phase, api::PodPhase::Unknown);
    let web: Vec<&api::Pod> = pods
        .iter()
        .filter(|p| p.metadata.owner.as_deref() == Some("web"))
        .collect();
    assert_eq!(web.len(), 3);
    assert!(web
        .iter()
        .all(|p| p.spec.node_name.as_deref() == Some(alive)));
    assert!(h
        .reasons(&format!("node/{lost}"))
        .contains(&"NodeLost".to_string()));
    for p in &evicted {
        let r = h.reasons(&format!("pod/{}", p.metadata.name));
        assert_eq!(r.last().map(String::as_str), Some("Evicted"), "{r:?}");
    }
    let msgs = h.drain();
    let to_alive = desired_for(&msgs, alive).expect("replacements are published");
    assert_eq!(to_alive.pods.len(), 3);
    // The lost node's retained desired state no longer lists the evicted pods.
    let to_lost = desired_for(&msgs, &lost).expect("the lost node's state is republished");
    let names: Vec<&str> = to_lost.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["solo"]);

    // Another eviction period changes nothing more.
    pass(&mut h, eviction.as_secs() + 1, alive).await;
    assert_eq!(h.pods().len(), 4);

    // The node returns: it is Ready again, is sent the state without the evicted pods,
    // and its report about them is ignored.
    h.send(&lost, hello(4000));
    assert!(h.node(&lost).status.ready);
    let msgs = h.drain();
    let back = desired_for(&msgs, &lost).unwrap();
    assert_eq!(back, to_lost);
    let old = DesiredState {
        generation: back.generation,
        pods: BVec::from_vec(
            evicted
                .iter()
                .map(|p| crate::model::wire::pod_spec(p).unwrap())
                .collect(),
        )
        .unwrap(),
        secrets: BVec::new(),
        term: 0,
        crons: Default::default(),
    };
    h.send(&lost, Body::Status(running_status(&old, back.generation)));
    let pods = h.pods();
    assert_eq!(pods.len(), 4);
    assert!(evicted
        .iter()
        .all(|e| pods.iter().all(|p| p.metadata.name != e.metadata.name)));
    // A heartbeat with the generation it had before the loss gets the state again.
    h.send(
        &lost,
        Body::Heartbeat(Heartbeat {
            applied_generation: back.generation - 1,
            status_digest: 0,
            ..Default::default()
        }),
    );
    assert_eq!(desired_for(&h.drain(), &lost), Some(back));
}

/// A last will may come late, for a connection its node already replaced (a broker
/// cluster closing a connect the client gave up on): the node is asked for its status,
/// and one that is connected answers with a Hello and is Ready again at once rather than
/// at its next heartbeat, minutes away on a quiet link.
#[tokio::test(start_paused = true)]
async fn a_last_will_asks_the_node_whether_it_is_still_there() {
    let mut h = two_nodes();
    h.send("pi-1", Body::Offline);
    assert!(!h.node("pi-1").status.ready);
    let msgs = h.drain();
    assert_eq!(status_requests(&msgs, "pi-1"), 1, "{msgs:?}");
    assert_eq!(status_requests(&msgs, "pi-2"), 0);
    h.send("pi-1", hello(4000));
    assert!(h.node("pi-1").status.ready);
    // A Hello asks nothing back (the two would ping-pong).
    assert_eq!(status_requests(&h.drain(), "pi-1"), 0);
    // An unknown node's will is not answered.
    h.send("pi-9", Body::Offline);
    assert_eq!(status_requests(&h.drain(), "pi-9"), 0);
}

/// A node that times out is asked once for its status: its silence may be a lost Link (a
/// broker cluster dropping messages while it moves its leaders), which leaves a quiet
/// node on the plain heartbeat timeout; connected, it answers with a Hello and its Link.
#[tokio::test(start_paused = true)]
async fn a_node_that_times_out_is_asked_once() {
    let mut h = two_nodes();
    h.send(
        "pi-2",
        Body::Link(LinkProfile {
            keepalive_secs: 13,
            heartbeat_max_secs: 600,
        }),
    );
    h.drain();
    tokio::time::advance(TIMEOUT + Duration::from_secs(1)).await;
    h.core.handle(Event::Tick);
    assert!(!h.node("pi-1").status.ready);
    assert!(h.node("pi-2").status.ready, "timed by its link profile");
    let msgs = h.drain();
    assert_eq!(status_requests(&msgs, "pi-1"), 1, "{msgs:?}");
    assert_eq!(status_requests(&msgs, "pi-2"), 0);
    // Once: the next ticks of a NotReady node ask nothing.
    tokio::time::advance(Duration::from_secs(1)).await;
    h.core.handle(Event::Tick);
    assert_eq!(status_requests(&h.drain(), "pi-1"), 0);
    h.send("pi-1", hello(4000));
    assert!(h.node("pi-1").status.ready);
}

#[tokio::test(start_paused = true)]
async fn an_offline_node_is_not_ready_at_once_and_evicted_after_the_timeout() {
    let mut h = Harness::evicting_after(Arc::new(MemStore::new()), Duration::from_secs(5));
    h.send("pi-1", hello(4000));
    h.send("pi-2", hello(4000));
    h.apply(&deployment("web", 2, "100m")).unwrap();
    assert_eq!(on_node(&h.pods(), "pi-1").len(), 1);
    h.send("pi-1", Body::Offline);
    assert!(
        !h.node("pi-1").status.ready,
        "the last will is NotReady at once"
    );
    pass(&mut h, 4, "pi-2").await;
    assert_eq!(on_node(&h.pods(), "pi-1").len(), 1);
    pass(&mut h, 2, "pi-2").await;
    assert!(on_node(&h.pods(), "pi-1").is_empty());
    assert_eq!(on_node(&h.pods(), "pi-2").len(), 2);
    // A restarted coordinator keeps the outcome.
    let again = Harness::new(h.store.clone());
    assert_eq!(again.core.pods.len(), 2);
}

/// The agent's report of why it could not connect is shown on the node, survives the
/// Hellos that carry none (it got through at once since) and keeps the time of its
/// first report while repeated within one connection.
#[test]
fn a_nodes_last_connect_error_is_kept_until_replaced() {
    let mut h = Harness::new(Arc::new(MemStore::default()));
    let with_error = |msg: &str| match hello(1000) {
        Body::Hello(mut hl) => {
            hl.last_connect_error = Some(BString::new(msg).unwrap());
            Body::Hello(hl)
        }
        _ => unreachable!(),
    };
    h.send("pi-1", hello(1000));
    assert_eq!(h.node("pi-1").status.last_connect_error, None);
    h.send("pi-1", with_error("connection refused"));
    let first = h.node("pi-1").status.last_connect_error.unwrap();
    assert_eq!(first.message, "connection refused");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    h.send("pi-1", with_error("connection refused"));
    assert_eq!(
        h.node("pi-1").status.last_connect_error,
        Some(first.clone())
    );
    h.send("pi-1", hello(1000));
    assert_eq!(h.node("pi-1").status.last_connect_error, Some(first));
    h.send("pi-1", with_error("timed out"));
    assert_eq!(
        h.node("pi-1").status.last_connect_error.unwrap().message,
        "timed out"
    );
}

/// A restarted coordinator asks every node it knows for its status once: a quiet node
/// (a link profile with rare heartbeats) that stayed connected to an external broker
/// answers with a Hello and its Link, so its own liveness timeout applies again instead of
/// the plain heartbeat timeout.
#[tokio::test(start_paused = true)]
async fn a_started_core_asks_every_known_node_for_its_status() {
    let mut h = two_nodes();
    h.drain();
    h.core.ask_known_nodes();
    let msgs = h.drain();
    assert_eq!(status_requests(&msgs, "pi-1"), 1, "{msgs:?}");
    assert_eq!(status_requests(&msgs, "pi-2"), 1, "{msgs:?}");
}

/// `get` and `describe node` show the leader's term the node's desired states carry (the
/// serving coordinator's: agents do not report theirs); it is never stored.
#[tokio::test(start_paused = true)]
async fn a_node_shows_the_leaders_term_unstored() {
    let mut h = two_nodes();
    h.core.leader_term = 7;
    assert_eq!(h.node("pi-1").status.leader_term, 7);
    let ApiReply::Described {
        object: ApiObject::Node(n),
        ..
    } = h
        .api(ApiOp::Describe {
            kind: ResourceKind::Node,
            name: "pi-1".into(),
        })
        .unwrap()
    else {
        panic!("not a node")
    };
    assert_eq!(n.status.leader_term, 7);
    let ApiReply::Objects(all) = h
        .api(ApiOp::Get {
            kind: ResourceKind::Node,
            name: None,
        })
        .unwrap()
    else {
        panic!("not a list")
    };
    assert!(all
        .iter()
        .all(|o| matches!(o, ApiObject::Node(n) if n.status.leader_term == 7)));
    let stored = h.store.list(Table::Nodes).unwrap();
    assert!(!stored.is_empty());
    for (name, bytes) in stored {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("leaderTerm"),
            "{name} stored its term: {text}"
        );
    }
}
