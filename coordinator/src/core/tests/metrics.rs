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

#[tokio::test(start_paused = true)]
async fn usage_reports_are_joined_with_pod_names_and_allocatable() {
    let mut h = two_nodes();
    h.apply(&deployment("web", 1, "100m")).unwrap();
    let pod = h.pods().remove(0);
    let node = pod.spec.node_name.clone().unwrap();
    let report = baton_proto::NodeUsage {
        cpu_millis: 1200,
        memory_bytes: 300 << 20,
        disk_used_bytes: 1,
        disk_total_bytes: 2,
        temperature_millicelsius: Some(61_000),
        pods: BVec::from_vec(vec![baton_proto::PodUsage {
            uid: BString::new(pod.metadata.uid.as_str()).unwrap(),
            cpu_millis: 150,
            memory_bytes: 12 << 20,
        }])
        .unwrap(),
    };
    h.send(&node, Body::Usage(report.clone()));
    // A node the coordinator does not know is not remembered.
    h.send("stranger", Body::Usage(report));
    let ApiReply::PodUsage(pods) = h.api(ApiOp::Top { pods: true }).unwrap() else {
        panic!()
    };
    assert_eq!(pods.len(), 1);
    assert_eq!(
        (pods[0].name.as_str(), pods[0].cpu_millis),
        (pod.metadata.name.as_str(), 150)
    );
    assert_eq!(pods[0].node, node);
    let ApiReply::NodeUsage(nodes) = h.api(ApiOp::Top { pods: false }).unwrap() else {
        panic!()
    };
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(
        (nodes[0].cpu_millis, nodes[0].allocatable_cpu_millis),
        (1200, 4000)
    );
    let f = fleet(&mut h);
    assert_eq!(f.usage, nodes);
    let text = crate::metrics::Metrics::default().render(&f, &BTreeMap::new());
    assert!(
        text.contains(&format!(
            "baton_node_cpu_usage_cores{{node=\"{node}\"}} 1.2"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "baton_node_temperature_celsius{{node=\"{node}\"}} 61.0"
        )),
        "{text}"
    );
}
