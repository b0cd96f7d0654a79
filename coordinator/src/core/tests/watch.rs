//! Watches: ADDED/MODIFIED/DELETED in commit order, resuming without loss or duplicates,
//! 410 for what is no longer known, slow watchers dropped, events bounded by age.

use super::*;
use crate::contract::watch::{Change, WatchEvent};
use crate::core::watch::{WatchRequest, WatchStart, Watched, WATCH_BUFFER, WATCH_LOG};

fn watch(h: &mut Harness, what: Watched, since: Option<u64>) -> Result<WatchStart, ApiError> {
    watch_in(h, what, since, None)
}

fn watch_in(
    h: &mut Harness,
    what: Watched,
    since: Option<u64>,
    namespace: Option<&str>,
) -> Result<WatchStart, ApiError> {
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    h.core.handle(Event::Watch(WatchRequest {
        what,
        namespace: namespace.map(str::to_owned),
        since,
        reply,
    }));
    rx.try_recv().expect("the core answers every watch")
}

fn drain(live: &mut tokio::sync::mpsc::Receiver<WatchEvent>) -> Vec<WatchEvent> {
    let mut v = Vec::new();
    while let Ok(e) = live.try_recv() {
        v.push(e);
    }
    v
}

const PODS: Watched = Watched::Kind(ResourceKind::Pod);

#[tokio::test(start_paused = true)]
async fn changes_arrive_in_order_and_a_resumed_watch_misses_nothing() {
    let mut h = two_nodes();
    let mut w = watch(&mut h, PODS, None).unwrap();
    assert!(w.backlog.is_empty(), "{:?}", w.backlog);

    h.apply(&deployment("web", 2, "100m")).unwrap();
    let added = drain(&mut w.live);
    assert_eq!(added.len(), 2, "{added:?}");
    assert!(added
        .iter()
        .all(|e| e.change == Change::Added && e.object.is_some()));
    let after_add = added[1].resource_version;
    assert!(added[0].resource_version < after_add);

    let msgs = h.drain();
    for n in ["pi-1", "pi-2"] {
        let d = desired_for(&msgs, n).unwrap();
        h.send(n, Body::Status(running_status(&d, d.generation)));
    }
    h.api(ApiOp::Delete {
        kind: ResourceKind::Deployment,
        name: "web".into(),
    })
    .unwrap();
    let later = drain(&mut w.live);
    assert!(later.iter().any(|e| e.change == Change::Modified));
    assert!(
        later
            .windows(2)
            .all(|p| p[0].resource_version < p[1].resource_version),
        "{later:?}"
    );

    // A second watcher that read up to `after_add` and reconnects gets exactly the rest.
    let resumed = watch(&mut h, PODS, Some(after_add)).unwrap();
    let got: Vec<u64> = resumed.backlog.iter().map(|e| e.resource_version).collect();
    let want: Vec<u64> = later.iter().map(|e| e.resource_version).collect();
    assert_eq!(got, want);

    // Only pods: the Deployment's own changes went to no pod watcher.
    assert!(later.iter().all(|e| e.kind == "pod"), "{later:?}");

    // A new watcher without a version sees the pods that exist now, as ADDED.
    let fresh = watch(&mut h, PODS, None).unwrap();
    let names: Vec<_> = fresh.backlog.iter().map(|e| e.name.clone()).collect();
    let pods: Vec<_> = h.pods().into_iter().map(|p| p.metadata.name).collect();
    assert_eq!(names, pods);
}

#[tokio::test(start_paused = true)]
async fn deletes_and_versions_out_of_reach() {
    let mut h = two_nodes();
    let mut w = watch(&mut h, Watched::Kind(ResourceKind::Deployment), None).unwrap();
    h.apply(&deployment("web", 1, "100m")).unwrap();
    h.api(ApiOp::Delete {
        kind: ResourceKind::Deployment,
        name: "web".into(),
    })
    .unwrap();
    let seen: Vec<Change> = drain(&mut w.live).iter().map(|e| e.change).collect();
    assert_eq!(seen.first(), Some(&Change::Added));
    assert_eq!(seen.last(), Some(&Change::Deleted));

    // From the future (a version from before a restart whose clock stepped back): 410.
    assert!(matches!(
        watch(&mut h, PODS, Some(u64::MAX)),
        Err(ApiError::Gone(_))
    ));
    // From before the log: 410 once the log has moved on.
    let old = seen_version(&mut h);
    assert!(watch(&mut h, PODS, Some(old)).is_ok());
    for i in 0..(WATCH_LOG + 10) {
        h.send(
            if i % 2 == 0 { "pi-1" } else { "pi-2" },
            hello(4000 + i as u32),
        );
    }
    assert!(matches!(
        watch(&mut h, PODS, Some(old)),
        Err(ApiError::Gone(_))
    ));
}

/// The newest version a fresh watcher of nodes starts from.
fn seen_version(h: &mut Harness) -> u64 {
    let w = watch(h, Watched::Kind(ResourceKind::Node), None).unwrap();
    w.backlog.last().expect("two nodes").resource_version
}

#[tokio::test(start_paused = true)]
async fn a_watcher_that_does_not_read_is_dropped_and_resumes() {
    let mut h = two_nodes();
    let mut w = watch(&mut h, Watched::Kind(ResourceKind::Node), None).unwrap();
    let mut last = w.backlog.last().map_or(0, |e| e.resource_version);
    // Node changes (hellos with other capacities) beyond what its channel holds.
    for i in 0..(WATCH_BUFFER + 20) {
        h.send("pi-1", hello(5000 + i as u32));
    }
    let got = drain(&mut w.live);
    assert_eq!(
        got.len(),
        WATCH_BUFFER,
        "buffered up to the bound, then dropped"
    );
    assert!(w.live.recv().await.is_none(), "the stream ended");
    last = got.last().map_or(last, |e| e.resource_version);
    // Resuming from the last version read: the rest, nothing twice.
    let resumed = watch(&mut h, Watched::Kind(ResourceKind::Node), Some(last)).unwrap();
    assert!(resumed.backlog.len() >= 20, "{}", resumed.backlog.len());
    assert!(resumed.backlog.iter().all(|e| e.resource_version > last));
}

#[tokio::test(start_paused = true)]
async fn events_are_watched_and_expire_after_their_ttl() {
    let mut h = two_nodes();
    let mut w = watch(&mut h, Watched::Events, None).unwrap();
    let before = w.backlog.len();
    h.apply(&deployment("web", 1, "100m")).unwrap();
    let evs = drain(&mut w.live);
    assert!(!evs.is_empty());
    assert!(evs.iter().all(|e| e.kind == "event" && e.event.is_some()));

    // An event older than the TTL, as a store from hours ago holds it, goes at the next tick.
    h.core.events.push_front((
        0,
        api::Event {
            object: "pod/old".into(),
            reason: "Old".into(),
            message: "from yesterday".into(),
            timestamp: "2000-01-01T00:00:00Z".into(),
            namespace: None,
        },
    ));
    h.core.handle(Event::Tick);
    let ApiReply::Events(all) = h.api(ApiOp::Events { object: None }).unwrap() else {
        panic!()
    };
    assert!(all.iter().all(|e| e.reason != "Old"), "{all:?}");
    assert_eq!(all.len(), before + evs.len());
}

#[tokio::test(start_paused = true)]
async fn a_deletion_names_its_namespace() {
    let mut h = two_nodes();
    h.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n")
        .unwrap();
    let web = deployment("web", 1, "100m");
    h.apply(&web).unwrap();
    let team_web = web.replacen(
        "metadata:\n  name:",
        "metadata:\n  namespace: team-a\n  name:",
        1,
    );
    h.apply(&team_web).unwrap();
    let mut w = watch(&mut h, Watched::Kind(ResourceKind::Deployment), None).unwrap();
    let mut listed: Vec<_> = w.backlog.iter().map(|e| e.namespace.clone()).collect();
    listed.sort();
    assert_eq!(listed, [Some("default".into()), Some("team-a".into())]);
    h.api(ApiOp::Delete {
        kind: ResourceKind::Deployment,
        name: "team-a_web".into(),
    })
    .unwrap();
    let deleted: Vec<_> = drain(&mut w.live)
        .into_iter()
        .filter(|e| e.change == Change::Deleted)
        .collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0].name, "web");
    assert_eq!(deleted[0].namespace.as_deref(), Some("team-a"));
    assert!(deleted[0].object.is_none());
}

/// A watch limited to a namespace (what a token limited to it may open) gets that
/// namespace's objects and changes, a deletion included, and events about them; never
/// another namespace's, listed, live or resumed.
#[tokio::test(start_paused = true)]
async fn a_namespaced_watch_sees_only_its_namespace() {
    let mut h = two_nodes();
    h.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n")
        .unwrap();
    let cm = |ns: &str, v: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\n  namespace: {ns}\ndata:\n  v: {v}\n"
        )
    };
    h.apply(&cm("default", "x")).unwrap();
    h.apply(&cm("team-a", "x")).unwrap();
    let maps = Watched::Kind(ResourceKind::ConfigMap);
    let mut w = watch_in(&mut h, maps, None, Some("team-a")).unwrap();
    assert_eq!(w.backlog.len(), 1, "{:?}", w.backlog);
    assert_eq!(w.backlog[0].in_namespace(), Some("team-a"));
    let from = w.backlog[0].resource_version;
    let mut events = watch_in(&mut h, Watched::Events, None, Some("team-a")).unwrap();

    h.apply(&cm("default", "y")).unwrap();
    h.api(ApiOp::Delete {
        kind: ResourceKind::ConfigMap,
        name: "probe".into(),
    })
    .unwrap();
    h.apply(&cm("team-a", "y")).unwrap();
    h.api(ApiOp::Delete {
        kind: ResourceKind::ConfigMap,
        name: "team-a_probe".into(),
    })
    .unwrap();
    h.apply(&deployment("web", 1, "100m")).unwrap();
    h.apply(&deployment("web", 1, "100m").replacen(
        "metadata:\n  name:",
        "metadata:\n  namespace: team-a\n  name:",
        1,
    ))
    .unwrap();
    let seen = drain(&mut w.live);
    let changes: Vec<_> = seen.iter().map(|e| (e.change, e.in_namespace())).collect();
    assert_eq!(
        changes,
        [
            (Change::Modified, Some("team-a")),
            (Change::Deleted, Some("team-a"))
        ],
        "{seen:?}"
    );
    // Resumed: the same two, default's changes between them left out.
    let resumed = watch_in(&mut h, maps, Some(from), Some("team-a")).unwrap();
    assert_eq!(resumed.backlog, seen);
    let events = drain(&mut events.live);
    assert!(!events.is_empty());
    assert!(
        events.iter().all(|e| e.in_namespace() == Some("team-a")),
        "{events:?}"
    );
    // Unlimited, the same changes are all there.
    let all = watch(&mut h, maps, Some(from)).unwrap();
    assert_eq!(all.backlog.len(), 4, "{:?}", all.backlog);
}
