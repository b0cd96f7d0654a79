//! A hollow node answers as an agent would: Hello and link profile on connect, pods Pending
//! then Running after the start delay, heartbeats only when changed or at `heartbeat_max`.

use super::*;

fn settings() -> Settings {
    baton_agent::link_profile::Profile::Lan.settings()
}

fn kinds(out: &[Body]) -> Vec<&'static str> {
    out.iter().map(|b| b.name()).collect()
}

fn wanted(generation: u64, uids: &[&str]) -> Wanted {
    Wanted {
        generation,
        pods: uids
            .iter()
            .map(|u| WantedPod {
                name: format!("web-{u}"),
                uid: u.to_string(),
                containers: vec!["app".into()],
            })
            .collect(),
    }
}

fn statuses(out: &[Body]) -> Vec<&NodeStatus> {
    out.iter()
        .filter_map(|b| match b {
            Body::Status(s) => Some(s),
            _ => None,
        })
        .collect()
}

#[test]
fn connect_says_hello_link_and_status() {
    let mut h = Hollow::new(300, settings(), Duration::from_secs(1));
    let out = h.on(Input::Connected, Instant::now());
    assert_eq!(kinds(&out), ["Hello", "Link", "Status"]);
    let Body::Hello(hello) = &out[0] else {
        unreachable!()
    };
    assert_eq!(hello.pod_cidr.as_str(), "10.129.44.0/24");
    assert_eq!(hello.address, Some("172.16.1.44".parse().unwrap()));
    assert!(hello.labels.iter().any(|l| l.key.as_str() == SIM_LABEL));
}

/// A new leader knows a node's link profile only from its Link: answered as the agent
/// answers, or a quiet hollow node goes NotReady under the default timeout.
#[test]
fn a_status_request_is_answered_as_the_agent_does() {
    let mut h = Hollow::new(1, settings(), Duration::from_secs(1));
    let now = Instant::now();
    h.on(Input::Connected, now);
    let out = h.on(Input::StatusRequest, now);
    assert_eq!(kinds(&out), ["Hello", "Link", "Status"]);
}

#[test]
fn pods_run_after_the_start_delay_with_addresses_from_the_node_range() {
    let t0 = Instant::now();
    let mut h = Hollow::new(1, settings(), Duration::from_millis(500));
    h.on(Input::Connected, t0);
    let out = h.on(Input::Desired(wanted(3, &["a", "b"])), t0);
    let s = statuses(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].applied_generation, 3);
    assert!(s[0]
        .pods
        .iter()
        .all(|p| p.containers[0].state == ContainerState::Pending));
    assert_eq!(h.running(), 0);
    // Nothing changed before the delay: no status again.
    let out = h.on(Input::Tick, t0 + Duration::from_millis(400));
    assert!(statuses(&out).is_empty(), "{:?}", kinds(&out));
    let out = h.on(Input::Tick, t0 + Duration::from_millis(500));
    let s = statuses(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(h.running(), 2);
    for p in s[0].pods.iter() {
        assert!(matches!(
            p.containers[0].state,
            ContainerState::Running { .. }
        ));
        assert!(p.containers[0].ready);
        let ip = p.pod_ip.unwrap().to_string();
        assert!(ip.starts_with("10.128.1."), "{ip}");
    }
    // A pod no longer desired is gone from the next status.
    let out = h.on(
        Input::Desired(wanted(4, &["b"])),
        t0 + Duration::from_secs(1),
    );
    assert_eq!(statuses(&out)[0].pods.len(), 1);
}

#[test]
fn heartbeats_go_when_changed_or_at_heartbeat_max() {
    let t0 = Instant::now();
    let s = settings();
    let max = s.heartbeat_max;
    let mut h = Hollow::new(0, s, Duration::ZERO);
    h.on(Input::Connected, t0);
    assert_eq!(kinds(&h.on(Input::Tick, t0)), ["Heartbeat"]);
    assert!(h.on(Input::Tick, t0 + Duration::from_secs(5)).is_empty());
    // A change (a pod) goes out at once, with a heartbeat carrying the new digest.
    let out = h.on(
        Input::Desired(wanted(1, &["a"])),
        t0 + Duration::from_secs(6),
    );
    assert_eq!(kinds(&out), ["Status"]);
    assert_eq!(
        kinds(&h.on(Input::Tick, t0 + Duration::from_secs(7))),
        ["Heartbeat"]
    );
    assert!(h.on(Input::Tick, t0 + Duration::from_secs(8)).is_empty());
    assert_eq!(
        kinds(&h.on(Input::Tick, t0 + Duration::from_secs(7) + max)),
        ["Heartbeat"]
    );
}

#[test]
fn a_crash_restarts_a_container_and_is_reported() {
    let t0 = Instant::now();
    let mut h = Hollow::new(0, settings(), Duration::ZERO);
    h.on(Input::Desired(wanted(1, &["a"])), t0);
    let out = h.on(Input::CrashOne, t0);
    let s = statuses(&out);
    let c = &s[0].pods[0].containers[0];
    assert_eq!(c.restart_count, 1);
    assert_eq!(c.last_termination.as_ref().unwrap().exit_code, 1);
}
