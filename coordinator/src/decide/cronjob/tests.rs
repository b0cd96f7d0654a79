//! The CronJob controller's plans: schedules and zones, concurrency policies, missed
//! runs after downtime, starting deadlines, suspend and history limits.

use std::time::{Duration, SystemTime};

use super::*;
use crate::model::manifest::parse_manifests;

fn cron(extra: &str) -> api::CronJob {
    let yaml = format!(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: hello}}\nspec:\n{extra}  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: OnFailure\n          containers: [{{name: c, image: busybox:1}}]\n"
    );
    match parse_manifests(&yaml).expect("cronjob parses").remove(0) {
        api::Object::CronJob(mut c) => {
            c.metadata.creation_timestamp = "2027-01-15T08:00:00Z".into();
            c
        }
        _ => unreachable!(),
    }
}

/// 2027-01-15T08:00:00Z plus `secs`.
fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn at(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).unwrap()
}

fn finished(mut j: api::Job, ok: bool, when: &str) -> api::Job {
    j.metadata.creation_timestamp = when.into();
    j.status.conditions.push(api::JobCondition {
        type_: if ok {
            api::JobConditionType::Complete
        } else {
            api::JobConditionType::Failed
        },
        status: "True".into(),
        reason: None,
        message: None,
        last_transition_time: when.into(),
    });
    if ok {
        j.status.completion_time = Some(when.into());
    }
    j
}

/// Runs the controller, applies the plan to `jobs` and the status, returns the plan.
fn step(c: &mut api::CronJob, jobs: &mut Vec<api::Job>, now: SystemTime) -> CronPlan {
    let refs: Vec<&api::Job> = jobs.iter().collect();
    let plan = reconcile_cron_job(c, &refs, now).unwrap();
    jobs.retain(|j| !plan.delete.contains(&j.metadata.name));
    jobs.extend(plan.create.clone());
    c.status = plan.status.clone();
    plan
}

#[test]
fn every_minute_runs_once_per_minute_named_by_its_time() {
    let mut c = cron("  schedule: \"* * * * *\"\n");
    let mut jobs = Vec::new();
    assert!(
        step(&mut c, &mut jobs, t(30)).create.is_none(),
        "none due since creation"
    );
    let plan = step(&mut c, &mut jobs, t(60));
    let j = plan.create.expect("due at 08:01");
    assert_eq!(j.metadata.name, "hello-30000001");
    assert_eq!(j.metadata.cron_job.as_deref(), Some("hello"));
    assert_eq!(
        j.metadata.annotations[api::SCHEDULED_TIMESTAMP_ANNOTATION],
        "2027-01-15T08:01:00Z"
    );
    assert_eq!(
        j.spec.template.spec.restart_policy,
        api::RestartPolicy::OnFailure
    );
    assert_eq!(c.status.active, vec!["hello-30000001".to_string()]);
    assert_eq!(
        c.status.last_schedule_time.as_deref(),
        Some("2027-01-15T08:01:00Z")
    );
    assert!(
        step(&mut c, &mut jobs, t(90)).create.is_none(),
        "idempotent"
    );
    // Allow: the next minute runs beside the active one.
    assert!(step(&mut c, &mut jobs, t(120)).create.is_some());
    assert_eq!(c.status.active.len(), 2);
}

#[test]
fn forbid_skips_while_one_is_active_and_replace_replaces() {
    let mut c = cron("  schedule: \"* * * * *\"\n  concurrencyPolicy: Forbid\n");
    let mut jobs = Vec::new();
    step(&mut c, &mut jobs, t(60));
    let plan = step(&mut c, &mut jobs, t(120));
    assert!(plan.create.is_none());
    assert_eq!(plan.skipped.as_deref(), Some("2027-01-15T08:02:00Z"));
    assert_eq!(jobs.len(), 1);
    let mut c = cron("  schedule: \"* * * * *\"\n  concurrencyPolicy: Replace\n");
    let mut jobs = Vec::new();
    step(&mut c, &mut jobs, t(60));
    let plan = step(&mut c, &mut jobs, t(120));
    assert_eq!(plan.delete, vec!["hello-30000001".to_string()]);
    assert_eq!(plan.create.unwrap().metadata.name, "hello-30000002");
    assert_eq!(c.status.active, vec!["hello-30000002".to_string()]);
}

#[test]
fn missed_runs_after_downtime_start_once_within_the_deadline() {
    // Down from 08:01:30 to 08:10:20: nine runs missed, one started (the latest).
    let mut c = cron("  schedule: \"* * * * *\"\n");
    let mut jobs = Vec::new();
    step(&mut c, &mut jobs, t(60));
    let plan = step(&mut c, &mut jobs, t(620));
    assert_eq!(plan.create.unwrap().metadata.name, "hello-30000010");
    assert!(step(&mut c, &mut jobs, t(621)).create.is_none());
    // With a 15 s starting deadline, 08:10 is too late at 08:10:20: nothing runs.
    let mut c = cron("  schedule: \"* * * * *\"\n  startingDeadlineSeconds: 15\n");
    let mut jobs = Vec::new();
    step(&mut c, &mut jobs, t(60));
    assert!(step(&mut c, &mut jobs, t(620)).create.is_none());
    assert!(step(&mut c, &mut jobs, t(659)).create.is_none());
    assert!(
        step(&mut c, &mut jobs, t(670)).create.is_some(),
        "08:11 on time"
    );
}

#[test]
fn suspend_starts_nothing() {
    let mut c = cron("  schedule: \"* * * * *\"\n  suspend: true\n");
    let mut jobs = Vec::new();
    assert!(step(&mut c, &mut jobs, t(600)).create.is_none());
}

#[test]
fn time_zone_moves_the_schedule() {
    // 09:00 in Berlin (UTC+1 in January) is 08:00 UTC; in UTC it is an hour later.
    let berlin = Schedule::parse("0 9 * * *", Some("Europe/Berlin")).unwrap();
    assert_eq!(berlin.latest(t(10)), Some(at("2027-01-15T08:00:00Z")));
    assert_eq!(berlin.next_after(t(10)), Some(at("2027-01-16T08:00:00Z")));
    let utc = Schedule::parse("0 9 * * *", None).unwrap();
    assert_eq!(utc.next_after(t(10)), Some(at("2027-01-15T09:00:00Z")));
    // Summer time: 09:00 in Berlin is 07:00 UTC in July.
    let july = at("2027-07-01T12:00:00Z");
    assert_eq!(berlin.latest(july), Some(at("2027-07-01T07:00:00Z")));
    assert!(matches!(
        Schedule::parse("0 9 * * *", Some("Mars/Olympus")),
        Err(CronError::TimeZone(_))
    ));
    assert!(matches!(
        Schedule::parse("61 * * * *", None),
        Err(CronError::Schedule(..))
    ));
    assert!(
        matches!(
            Schedule::parse("0 0 9 * * *", None),
            Err(CronError::Schedule(..))
        ),
        "six fields (seconds) are not standard cron"
    );
    assert!(Schedule::parse("@hourly", None).is_ok());
    assert!(Schedule::parse("*/5 1-3 * * MON-FRI", None).is_ok());
}

#[test]
fn history_limits_keep_the_newest_of_each_outcome() {
    let mut c = cron(
        "  schedule: \"0 0 1 1 *\"\n  successfulJobsHistoryLimit: 1\n  failedJobsHistoryLimit: 0\n",
    );
    let base = new_job(&c, t(0));
    let named = |n: &str| {
        let mut j = base.clone();
        j.metadata.name = n.into();
        j
    };
    let mut jobs = vec![
        finished(named("a"), true, "2027-01-15T08:00:01Z"),
        finished(named("b"), true, "2027-01-15T08:00:02Z"),
        finished(named("c"), false, "2027-01-15T08:00:03Z"),
        named("d"),
    ];
    let plan = step(&mut c, &mut jobs, t(10));
    assert_eq!(plan.delete, vec!["a".to_string(), "c".to_string()]);
    assert_eq!(c.status.active, vec!["d".to_string()]);
    assert_eq!(
        c.status.last_successful_time.as_deref(),
        Some("2027-01-15T08:00:02Z")
    );
}

/// A CronJob its nodes fire keeps its history limits per node: each node's newest runs
/// stay, whatever the other nodes ran.
#[test]
fn node_fired_history_limits_count_per_node() {
    let mut c = cron(
        "  schedule: \"0 0 1 1 *\"\n  successfulJobsHistoryLimit: 1\n  failedJobsHistoryLimit: 1\n",
    );
    c.metadata
        .annotations
        .insert(api::SCHEDULE_ON_ANNOTATION.into(), "node".into());
    let base = new_job(&c, t(0));
    let run = |n: &str, node: &str, ok: bool, when: &str| {
        let mut j = base.clone();
        j.metadata.name = n.into();
        j.metadata
            .annotations
            .insert(api::RUN_NODE_ANNOTATION.into(), node.into());
        finished(j, ok, when)
    };
    let mut jobs = vec![
        run("a1", "pi-1", true, "2027-01-15T08:00:01Z"),
        run("b1", "pi-2", true, "2027-01-15T08:00:02Z"),
        run("a2", "pi-1", true, "2027-01-15T08:00:03Z"),
        run("b2", "pi-2", false, "2027-01-15T08:00:04Z"),
        run("c1", "pi-3", true, "2027-01-15T08:00:05Z"),
        run("b3", "pi-2", false, "2027-01-15T08:00:06Z"),
    ];
    let plan = step(&mut c, &mut jobs, t(10));
    let mut deleted = plan.delete.clone();
    deleted.sort();
    assert_eq!(deleted, ["a1", "b2"]);
    let mut kept: Vec<&str> = jobs.iter().map(|j| j.metadata.name.as_str()).collect();
    kept.sort();
    assert_eq!(kept, ["a2", "b1", "b3", "c1"]);
}
