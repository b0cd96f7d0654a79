use super::*;

fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(name)).collect()
}

#[test]
fn messages_and_bytes_are_counted_by_direction_and_type() {
    let m = Metrics::default();
    m.message(Direction::In, "Heartbeat", 40);
    m.message(Direction::In, "Heartbeat", 42);
    m.message(Direction::Out, "Desired", 900);
    m.message(Direction::In, "rejected", 7);
    let text = m.render(&Fleet::default(), &BTreeMap::new());
    let msgs = series(&text, "baton_mqtt_messages_total");
    assert!(
        msgs.contains(&"baton_mqtt_messages_total{direction=\"in\",type=\"Heartbeat\"} 2"),
        "{text}"
    );
    assert!(
        msgs.contains(&"baton_mqtt_messages_total{direction=\"out\",type=\"Desired\"} 1"),
        "{text}"
    );
    assert!(
        msgs.contains(&"baton_mqtt_messages_total{direction=\"in\",type=\"rejected\"} 1"),
        "{text}"
    );
    let bytes = series(&text, "baton_mqtt_payload_bytes_total");
    assert!(
        bytes.contains(&"baton_mqtt_payload_bytes_total{direction=\"in\",type=\"Heartbeat\"} 82"),
        "{text}"
    );
    // Base units and the counter suffix, as Prometheus names them.
    assert!(
        text.contains("# UNIT baton_mqtt_payload_bytes bytes"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE baton_store_commit_duration_seconds histogram"),
        "{text}"
    );
}

#[test]
fn latencies_land_in_their_buckets() {
    let m = Metrics::default();
    m.pod_started(Duration::from_millis(1_500));
    m.pod_started(Duration::from_secs(70));
    m.committed(Duration::from_micros(300));
    let text = m.render(&Fleet::default(), &BTreeMap::new());
    assert!(
        text.contains("baton_pod_start_duration_seconds_bucket{le=\"2.0\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("baton_pod_start_duration_seconds_bucket{le=\"128.0\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("baton_pod_start_duration_seconds_sum 71.5"),
        "{text}"
    );
    assert!(
        text.contains("baton_store_commit_duration_seconds_bucket{le=\"0.0005\"} 1"),
        "{text}"
    );
}
