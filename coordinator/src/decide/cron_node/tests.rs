//! Node-scheduled CronJobs: the horizon (count and days), DST in a time zone, when the
//! horizon moves, node selection, and runs recorded once.

use std::time::{Duration, SystemTime};

use super::*;
use crate::model::manifest::parse_manifests;

fn cron(annotations: &str, extra: &str) -> api::CronJob {
    let yaml = format!(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: tick\n{annotations}spec:\n{extra}  jobTemplate:\n    spec:\n      template:\n        spec:\n          nodeSelector: {{site: a}}\n          restartPolicy: Never\n          containers: [{{name: c, image: busybox:1}}]\n"
    );
    match parse_manifests(&yaml).expect("cronjob parses").remove(0) {
        api::Object::CronJob(mut c) => {
            c.metadata.uid = "u1".into();
            c.metadata.creation_timestamp = "2027-01-15T08:00:00Z".into();
            c
        }
        _ => unreachable!(),
    }
}

fn on_node(extra: &str) -> api::CronJob {
    cron("  annotations: {baton.io/schedule-on: node}\n", extra)
}

/// 2027-01-15T08:00:00Z plus `secs`.
fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn sched(s: &str, tz: Option<&str>) -> Schedule {
    Schedule::parse(s, tz).unwrap()
}

#[test]
fn every_minute_is_a_day_of_one_byte_deltas() {
    let (first, deltas) = expand(&sched("* * * * *", None), t(0));
    assert_eq!(first, 1_800_000_060, "strictly after the start: 08:01");
    assert_eq!(deltas.len() + 1, HORIZON_FIRES);
    assert!(deltas.iter().all(|d| *d == 60));
    // Postcard varints: one byte per instant.
    let bytes = postcard::to_allocvec(&deltas).unwrap();
    assert_eq!(
        bytes.len(),
        2 + deltas.len(),
        "length prefix, then 1 byte each"
    );
}

#[test]
fn a_sparse_schedule_ends_at_the_days_limit() {
    let (first, deltas) = expand(&sched("0 * * * *", None), t(0));
    assert_eq!(first, 1_800_003_600);
    assert_eq!(deltas.len() + 1, (HORIZON_DAYS * 24) as usize);
    let (first, deltas) = expand(&sched("0 0 1 1 *", None), t(0));
    assert_eq!(
        (first, deltas.len()),
        (0, 0),
        "a yearly run is not within 14 days"
    );
}

#[test]
fn dst_in_a_time_zone_moves_the_utc_instants() {
    // 09:00 in Berlin every day across the spring change (2027-03-28): 08:00 UTC before,
    // 07:00 UTC after, so one day is 23 h long.
    let start = humantime::parse_rfc3339("2027-03-25T00:00:00Z").unwrap();
    let s = sched("0 9 * * *", Some("Europe/Berlin"));
    let (first, deltas) = expand(&s, start);
    assert_eq!(
        first,
        humantime::parse_rfc3339("2027-03-25T08:00:00Z")
            .unwrap()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    );
    assert_eq!(&deltas[..4], &[86_400, 86_400, 86_400 - 3_600, 86_400]);
    // The node fires exactly at the coordinator's own instants.
    let mut at = start;
    let mut expected = Vec::new();
    for _ in 0..14 {
        at = s.next_after(at).unwrap();
        expected.push(at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs());
    }
    let got: Vec<u64> = std::iter::once(first)
        .chain(deltas.iter().scan(first, |t, d| {
            *t += u64::from(*d);
            Some(*t)
        }))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn the_horizon_moves_once_half_of_it_has_passed() {
    let s = sched("* * * * *", None);
    assert_eq!(horizon_start(&s, None, t(90)), t(60), "whole minutes");
    // A day of instants: kept for the first half, moved after.
    assert_eq!(horizon_start(&s, Some(t(0)), t(11 * 3600)), t(0));
    assert_eq!(
        horizon_start(&s, Some(t(0)), t(12 * 3600 + 60)),
        t(12 * 3600 + 60)
    );
    // Hourly: 14 days of instants, moved after 7.
    let h = sched("0 * * * *", None);
    assert_eq!(horizon_start(&h, Some(t(0)), t(6 * 86_400)), t(0));
    assert_eq!(horizon_start(&h, Some(t(0)), t(7 * 86_400)), t(7 * 86_400));
    // The horizon sent follows: every instant is still ahead of a node that got it.
    let (first, _) = expand(&s, horizon_start(&s, Some(t(0)), t(12 * 3600 + 60)));
    assert_eq!(first, 1_800_000_000 + 12 * 3600 + 120);
}

#[test]
fn the_coordinator_never_fires_it_but_keeps_its_horizon() {
    let mut c = on_node("  schedule: \"* * * * *\"\n");
    let plan = super::super::cronjob::reconcile_cron_job(&c, &[], t(600)).unwrap();
    assert!(plan.create.is_none() && plan.skipped.is_none());
    let status = with_horizon(&c, plan.status, t(630)).unwrap();
    assert_eq!(
        status.node_horizon_start.as_deref(),
        Some("2027-01-15T08:10:00Z")
    );
    c.status = status;
    let n = node_cron(&c, wire_pod(&c), t(600)).unwrap();
    assert_eq!(n.first, 1_800_000_660);
    assert_eq!(n.policy, proto::CronPolicy::Allow);
    assert_eq!((n.successful_history, n.failed_history), (3, 1));
    // Suspended: sent with no instants.
    c.spec.suspend = true;
    let n = node_cron(&c, wire_pod(&c), t(600)).unwrap();
    assert_eq!((n.first, n.deltas.len()), (0, 0));
}

fn wire_pod(c: &api::CronJob) -> proto::PodSpec {
    let mut pod = super::super::job::new_pod(
        &super::super::cronjob::new_job(c, SystemTime::UNIX_EPOCH),
        "run",
    );
    pod.metadata.uid = "u1".into();
    crate::model::wire::pod_spec(&pod).unwrap()
}

fn node(name: &str, site: &str) -> api::Node {
    api::Node {
        api_version: "v1".into(),
        kind: "Node".into(),
        metadata: api::ObjectMeta {
            name: name.into(),
            labels: [("site".to_string(), site.to_string())].into(),
            ..Default::default()
        },
        spec: Default::default(),
        status: api::NodeStatus {
            ready: false,
            ..Default::default()
        },
    }
}

#[test]
fn the_template_selects_nodes_ready_or_not() {
    let c = on_node("  schedule: \"* * * * *\"\n");
    assert!(node_wants(&c, &node("a", "a")), "offline nodes fire too");
    assert!(!node_wants(&c, &node("b", "b")));
}

fn run(minute: u32, outcome: proto::CronOutcome) -> proto::CronRun {
    proto::CronRun {
        cron: proto::BString::new("tick").unwrap(),
        minute,
        started_at_ms: u64::from(minute) * 60_000 + 500,
        finished_at_ms: (outcome != proto::CronOutcome::Active)
            .then_some(u64::from(minute) * 60_000 + 3_000),
        outcome,
    }
}

#[test]
fn a_run_is_recorded_once_as_a_job_of_its_node() {
    let mut c = on_node("  schedule: \"* * * * *\"\n");
    let active = run(30_000_001, proto::CronOutcome::Active);
    let j = record_run(&c, "pi-1", &active, None).expect("new run recorded");
    assert_eq!(j.metadata.name, "tick-30000001-pi-1");
    assert_eq!(j.metadata.cron_job.as_deref(), Some("tick"));
    assert_eq!(j.run_node(), Some("pi-1"));
    assert_eq!(
        j.metadata.annotations[api::SCHEDULED_TIMESTAMP_ANNOTATION],
        "2027-01-15T08:01:00Z"
    );
    assert_eq!((j.status.active, j.status.finished()), (1, None));
    assert!(
        record_run(&c, "pi-1", &active, Some(&j)).is_none(),
        "reported again"
    );
    let done = run(30_000_001, proto::CronOutcome::Succeeded);
    let j = record_run(&c, "pi-1", &done, Some(&j)).expect("it ended");
    assert_eq!(j.status.succeeded, 1);
    assert_eq!(
        j.status.completion_time.as_deref(),
        Some("2027-01-15T08:01:03Z")
    );
    // Once the Job left the history, the node's old report does not bring it back...
    c.status.node_runs.insert("pi-1".into(), 30_000_001);
    assert!(record_run(&c, "pi-1", &done, None).is_none());
    // ...but a newer run, or another node's, is recorded.
    assert!(record_run(
        &c,
        "pi-1",
        &run(30_000_002, proto::CronOutcome::Active),
        None
    )
    .is_some());
    assert!(record_run(&c, "pi-2", &done, None).is_some());
    let failed = run(
        30_000_003,
        proto::CronOutcome::Failed(proto::BString::new("exit code 2").unwrap()),
    );
    let j = record_run(&c, "pi-1", &failed, None).unwrap();
    let cond = j.status.finished().unwrap();
    assert_eq!(cond.type_, api::JobConditionType::Failed);
    assert_eq!(cond.reason.as_deref(), Some("exit code 2"));
}

/// A run's pod: per node on the coordinator, the device's uid, owned by its Job and the
/// CronJob, bound to the node, in its run's phase; and the device's name and uid of it
/// lead back to the CronJob and minute, in a namespace too, and only for a run's pod.
#[test]
fn a_runs_pod_is_the_nodes_under_the_devices_uid() {
    let c = on_node("  schedule: \"* * * * *\"\n");
    let failed = run(
        30_000_001,
        proto::CronOutcome::Failed(proto::BString::new("exit code 2").unwrap()),
    );
    let j = run_job(&c, "pi-1", &failed);
    let p = run_pod(&c, &j, "pi-1", &failed);
    assert_eq!(p.metadata.name, "tick-30000001-pi-1-run");
    assert_eq!(p.metadata.uid, "u1-30000001");
    assert_eq!(p.metadata.job.as_deref(), Some("tick-30000001-pi-1"));
    assert!(p.node_run() && p.metadata.owner.is_none());
    assert_eq!(p.spec.node_name.as_deref(), Some("pi-1"));
    assert_eq!(p.status.phase, api::PodPhase::Failed);
    assert_eq!(p.status.message.as_deref(), Some("exit code 2"));
    assert_eq!(p.metadata.creation_timestamp, "2027-01-15T08:01:00Z");
    let active = run_pod(&c, &j, "pi-1", &run(30_000_001, proto::CronOutcome::Active));
    assert_eq!(active.status.phase, api::PodPhase::Pending);

    assert_eq!(
        parse_run_pod("tick-30000001", "u1-30000001"),
        Some(("tick", "u1", 30_000_001))
    );
    assert_eq!(
        parse_run_pod("team_tick-30000001", "u2-30000001"),
        Some(("team_tick", "u2", 30_000_001))
    );
    for (name, uid) in [
        ("web-5d8f7", "7e176e7c-225d-aada-d214-7439dd3579e4"),
        ("tick-30000001", "u1-30000002"),
        ("tick-30000001", "u1"),
        ("30000001", "u1-30000001"),
    ] {
        assert_eq!(parse_run_pod(name, uid), None, "{name} {uid}");
    }
}

#[test]
fn what_a_device_cannot_do_is_refused() {
    let c = on_node("  schedule: \"* * * * *\"\n");
    assert!(check(&c).is_ok());
    let mut bad = c.clone();
    bad.spec.job_template.spec.parallelism = 2;
    assert_eq!(
        check(&bad).unwrap_err().0,
        "spec.jobTemplate.spec.parallelism"
    );
    let mut bad = c;
    bad.spec.job_template.spec.active_deadline_seconds = Some(5);
    assert_eq!(
        check(&bad).unwrap_err().0,
        "spec.jobTemplate.spec.activeDeadlineSeconds"
    );
}
