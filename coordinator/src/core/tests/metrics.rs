//! What `/metrics` reads from the core: the fleet snapshot and the latencies it records.

use super::*;
use crate::metrics::{Fleet, Metrics};

fn fleet(h: &mut Harness) -> Fleet {
    match h.api(ApiOp::Fleet).unwrap() {
        ApiReply::Fleet(f) => *f,
        other => panic!("unexpected {other:?}"),
    }
}

fn count(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test(start_paused = true)]
async fn the_snapshot_follows_nodes_pods_and_rollouts() {
    let mut h = two_nodes();
    let metrics = Arc::new(Metrics::default());
    h.core.metrics = metrics.clone();
    h.apply(&deployment("web", 2, "100m")).unwrap();
    let f = fleet(&mut h);
    assert_eq!(f.nodes["Ready"], 2, "{f:?}");
    assert_eq!(f.nodes["NotReady"], 0);
    assert_eq!(f.pods["Pending"], 2);
    assert_eq!(f.pods["Running"], 0);
    let key = |s: &str| ("Deployment".to_owned(), "web".to_owned(), s.to_owned());
    assert_eq!(f.rollouts[&key("desired")], 2);
    assert_eq!(f.rollouts[&key("ready")], 0);

    let msgs = h.drain();
    for n in ["pi-1", "pi-2"] {
        let d = desired_for(&msgs, n).unwrap();
        let mut st = running_status(&d, d.generation);
        if n == "pi-2" {
            let mut pods = st.pods.into_vec();
            let mut containers = pods[0].containers.clone().into_vec();
            containers[0].restart_count = 3;
            pods[0].containers = BVec::from_vec(containers).unwrap();
            st.pods = BVec::from_vec(pods).unwrap();
        }
        h.send(n, Body::Status(st));
    }
    let f = fleet(&mut h);
    assert_eq!(f.pods["Running"], 2, "{f:?}");
    assert_eq!(f.pods["Pending"], 0);
    assert_eq!(f.rollouts[&key("ready")], 2);
    assert_eq!(f.rollouts[&key("available")], 2);
    let restarts: Vec<_> = f
        .restarts
        .iter()
        .map(|((_, c, n), r)| (c.as_str(), n.as_str(), *r))
        .collect();
    assert!(restarts.contains(&("main", "pi-2", 3)), "{restarts:?}");
    assert!(restarts.contains(&("main", "pi-1", 0)), "{restarts:?}");

    let text = metrics.render(&f, &BTreeMap::from([("Replay".to_owned(), 4)]));
    // Two pods went Pending -> Running once each: two start latencies; commits were timed.
    assert_eq!(count(&text, "baton_pod_start_duration_seconds_count"), 2.0);
    assert!(count(&text, "baton_store_commit_duration_seconds_count") >= 2.0);
    assert_eq!(count(&text, "baton_pods{phase=\"Running\"}"), 2.0);
    assert_eq!(count(&text, "baton_nodes{state=\"Ready\"}"), 2.0);
    assert_eq!(
        count(&text, "baton_security_rejections_total{reason=\"Replay\"}"),
        4.0
    );
    assert!(
        text.contains("# TYPE baton_container_restarts counter"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");

    // A node going quiet is NotReady in the next snapshot.
    tokio::time::advance(TIMEOUT * 2).await;
    h.core.handle(Event::Tick);
    let f = fleet(&mut h);
    assert_eq!(f.nodes["NotReady"], 2, "{f:?}");
}
