//! The Job controller's plans: counts, parallelism, backoff, deadline and ttl.

use std::time::{Duration, SystemTime};

use super::*;
use crate::model::manifest::parse_manifests;

fn job(extra: &str, policy: &str) -> api::Job {
    let yaml = format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: pi}}\nspec:\n{extra}  template:\n    spec:\n      restartPolicy: {policy}\n      containers: [{{name: c, image: busybox:1}}]\n"
    );
    match parse_manifests(&yaml).expect("job parses").remove(0) {
        api::Object::Job(j) => j,
        _ => unreachable!(),
    }
}

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

/// Runs the controller at `now`, applies its plan to `pods` and the Job, and returns the
/// plan. Names are `pi-0`, `pi-1`, ... in creation order.
fn step(j: &mut api::Job, pods: &mut Vec<api::Pod>, now: SystemTime) -> JobPlan {
    let mut n = pods.len();
    let mut suffix = || {
        n += 1;
        format!("{}", n - 1)
    };
    let refs: Vec<&api::Pod> = pods.iter().collect();
    let plan = reconcile_job(j, &refs, now, &mut suffix);
    for a in &plan.actions {
        match a {
            Action::CreatePod(p) => pods.push(p.clone()),
            Action::DeletePod(name) => {
                let p = pods.iter_mut().find(|p| &p.metadata.name == name).unwrap();
                p.metadata.deletion_timestamp = Some("x".into());
            }
        }
    }
    for name in &plan.counted {
        let p = pods.iter_mut().find(|p| &p.metadata.name == name).unwrap();
        p.metadata
            .annotations
            .insert(api::JOB_COUNTED_ANNOTATION.into(), counted_value(now));
    }
    j.status = plan.status.clone();
    plan
}

fn set_phase(pods: &mut [api::Pod], name: &str, phase: api::PodPhase) {
    pods.iter_mut()
        .find(|p| p.metadata.name == name)
        .unwrap()
        .status
        .phase = phase;
}

fn live(pods: &[api::Pod]) -> usize {
    pods.iter()
        .filter(|p| {
            !matches!(
                p.status.phase,
                api::PodPhase::Succeeded | api::PodPhase::Failed
            )
        })
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count()
}

#[test]
fn completions_with_parallelism_never_run_more_than_parallelism() {
    let mut j = job("  completions: 3\n  parallelism: 2\n", "Never");
    let mut pods = Vec::new();
    let plan = step(&mut j, &mut pods, t(0));
    assert_eq!(plan.actions.len(), 2);
    assert_eq!(j.status.active, 2);
    assert_eq!(j.status.start_time.as_deref(), Some("2027-01-15T08:00:00Z"));
    let p = &pods[0];
    assert_eq!(p.metadata.job.as_deref(), Some("pi"));
    assert_eq!(
        p.metadata.labels.get("job-name").map(String::as_str),
        Some("pi")
    );
    assert!(p.metadata.owner.is_none() && p.metadata.daemon_set.is_none());
    // Idempotent: nothing more while both run.
    assert!(step(&mut j, &mut pods, t(1)).actions.is_empty());
    set_phase(&mut pods, "pi-0", api::PodPhase::Succeeded);
    let plan = step(&mut j, &mut pods, t(2));
    assert_eq!(plan.actions.len(), 1, "one more for the third completion");
    assert_eq!(live(&pods), 2);
    set_phase(&mut pods, "pi-1", api::PodPhase::Succeeded);
    assert!(
        step(&mut j, &mut pods, t(3)).actions.is_empty(),
        "2 done, 1 runs: the last is running"
    );
    assert_eq!((j.status.active, j.status.succeeded), (1, 2));
    set_phase(&mut pods, "pi-2", api::PodPhase::Succeeded);
    let plan = step(&mut j, &mut pods, t(4));
    assert!(plan.actions.is_empty());
    let c = plan.finished_now.expect("complete");
    assert_eq!(c.type_, api::JobConditionType::Complete);
    assert_eq!(j.status.succeeded, 3);
    assert_eq!(
        j.status.completion_time.as_deref(),
        Some("2027-01-15T08:00:04Z")
    );
    // Finished: nothing again, whatever happens to the pods; a counted pod deleted
    // (drained, `delete pod`) keeps its count.
    pods.retain(|p| p.metadata.name != "pi-0");
    let plan = step(&mut j, &mut pods, t(5));
    assert!(plan.actions.is_empty() && plan.finished_now.is_none());
    assert_eq!(j.status.succeeded, 3);
}

#[test]
fn backoff_limit_fails_the_job_and_stops_its_pods() {
    let mut j = job(
        "  backoffLimit: 1\n  parallelism: 2\n  completions: 4\n",
        "Never",
    );
    let mut pods = Vec::new();
    step(&mut j, &mut pods, t(0));
    set_phase(&mut pods, "pi-0", api::PodPhase::Failed);
    let plan = step(&mut j, &mut pods, t(1));
    assert!(plan.actions.is_empty(), "the replacement waits 10 s");
    assert_eq!(j.status.failed, 1);
    let plan = step(&mut j, &mut pods, t(11));
    assert_eq!(
        plan.actions.len(),
        1,
        "one failure within the limit is replaced"
    );
    set_phase(&mut pods, "pi-2", api::PodPhase::Failed);
    let plan = step(&mut j, &mut pods, t(12));
    let c = plan.finished_now.expect("failed");
    assert_eq!(c.type_, api::JobConditionType::Failed);
    assert_eq!(c.reason.as_deref(), Some(REASON_BACKOFF));
    assert_eq!(plan.actions, vec![Action::DeletePod("pi-1".into())]);
    assert_eq!((j.status.active, j.status.failed), (0, 2));
    assert!(j.status.completion_time.is_none());
    assert!(step(&mut j, &mut pods, t(13)).actions.is_empty());
}

#[test]
fn on_failure_counts_container_restarts() {
    let mut j = job("  backoffLimit: 2\n", "OnFailure");
    let mut pods = Vec::new();
    step(&mut j, &mut pods, t(0));
    pods[0].status.phase = api::PodPhase::Running;
    pods[0].status.container_statuses = vec![api::ContainerStatus {
        name: "c".into(),
        restart_count: 2,
        ..Default::default()
    }];
    assert!(step(&mut j, &mut pods, t(1)).finished_now.is_none());
    pods[0].status.container_statuses[0].restart_count = 3;
    let plan = step(&mut j, &mut pods, t(2));
    assert_eq!(
        plan.finished_now.and_then(|c| c.reason).as_deref(),
        Some(REASON_BACKOFF)
    );
    assert_eq!(plan.actions, vec![Action::DeletePod("pi-0".into())]);
}

#[test]
fn active_deadline_counts_from_the_start() {
    let mut j = job("  activeDeadlineSeconds: 30\n", "Never");
    let mut pods = Vec::new();
    step(&mut j, &mut pods, t(0));
    assert!(step(&mut j, &mut pods, t(29)).finished_now.is_none());
    let plan = step(&mut j, &mut pods, t(30));
    let c = plan.finished_now.expect("deadline");
    assert_eq!(c.reason.as_deref(), Some(REASON_DEADLINE));
    assert_eq!(plan.actions, vec![Action::DeletePod("pi-0".into())]);
}

#[test]
fn ttl_after_finished_expires_the_job() {
    let mut j = job("  ttlSecondsAfterFinished: 100\n", "Never");
    let mut pods = Vec::new();
    step(&mut j, &mut pods, t(0));
    set_phase(&mut pods, "pi-0", api::PodPhase::Succeeded);
    let plan = step(&mut j, &mut pods, t(10));
    assert!(plan.finished_now.is_some() && !plan.expired);
    assert!(!step(&mut j, &mut pods, t(109)).expired);
    assert!(step(&mut j, &mut pods, t(110)).expired);
    // Without a ttl a finished Job stays.
    let mut k = job("", "Never");
    let mut pods = Vec::new();
    step(&mut k, &mut pods, t(0));
    set_phase(&mut pods, "pi-0", api::PodPhase::Failed);
    step(&mut k, &mut pods, t(1));
    assert!(!step(&mut k, &mut pods, t(1_000_000)).expired);
}

#[test]
fn work_queue_completes_when_one_succeeded_and_none_runs() {
    let mut j = job("  parallelism: 3\n", "Never");
    assert_eq!(j.spec.completions, None);
    let mut pods = Vec::new();
    assert_eq!(step(&mut j, &mut pods, t(0)).actions.len(), 3);
    set_phase(&mut pods, "pi-1", api::PodPhase::Succeeded);
    let plan = step(&mut j, &mut pods, t(1));
    assert!(plan.actions.is_empty() && plan.finished_now.is_none());
    set_phase(&mut pods, "pi-0", api::PodPhase::Succeeded);
    set_phase(&mut pods, "pi-2", api::PodPhase::Succeeded);
    let plan = step(&mut j, &mut pods, t(2));
    assert_eq!(
        plan.finished_now.map(|c| c.type_),
        Some(api::JobConditionType::Complete)
    );
}

#[test]
fn a_terminating_pod_holds_its_slot_and_a_vanished_one_is_replaced() {
    let mut j = job("  completions: 2\n  parallelism: 2\n", "Never");
    let mut pods = Vec::new();
    step(&mut j, &mut pods, t(0));
    pods[0].metadata.deletion_timestamp = Some("x".into());
    assert!(step(&mut j, &mut pods, t(1)).actions.is_empty());
    assert_eq!(j.status.active, 1);
    // Gone (drained, or evicted from a lost node): replaced.
    pods.remove(0);
    let plan = step(&mut j, &mut pods, t(2));
    assert_eq!(plan.actions.len(), 1);
}

#[test]
fn a_counted_pod_deleted_before_the_end_is_not_run_again() {
    let mut j = job("  completions: 2\n", "Never");
    let mut pods = Vec::new();
    step(&mut j, &mut pods, t(0));
    set_phase(&mut pods, "pi-0", api::PodPhase::Succeeded);
    let plan = step(&mut j, &mut pods, t(1));
    assert_eq!(plan.counted, vec!["pi-0".to_string()]);
    assert_eq!(plan.actions.len(), 1, "the second completion starts");
    pods.retain(|p| p.metadata.name != "pi-0");
    let plan = step(&mut j, &mut pods, t(2));
    assert!(plan.actions.is_empty() && plan.counted.is_empty());
    assert_eq!((j.status.succeeded, j.status.active), (1, 1));
    set_phase(&mut pods, "pi-1", api::PodPhase::Succeeded);
    let plan = step(&mut j, &mut pods, t(3));
    assert!(plan.finished_now.is_some());
    assert_eq!(j.status.succeeded, 2);
}

#[test]
fn lower_parallelism_deletes_the_newest() {
    let mut j = job("  completions: 5\n  parallelism: 3\n", "Never");
    let mut pods = Vec::new();
    step(&mut j, &mut pods, t(0));
    for (i, p) in pods.iter_mut().enumerate() {
        p.metadata.creation_timestamp = format!("2027-01-15T08:00:0{i}Z");
    }
    j.spec.parallelism = 1;
    let plan = step(&mut j, &mut pods, t(1));
    assert_eq!(
        plan.actions,
        vec![
            Action::DeletePod("pi-2".into()),
            Action::DeletePod("pi-1".into())
        ]
    );
}

#[test]
fn retry_delay_doubles_from_10_s_up_to_6_min() {
    let secs: Vec<u64> = (0..8).map(|n| retry_delay(n).as_secs()).collect();
    assert_eq!(secs, [0, 10, 20, 40, 80, 160, 320, 360]);
    assert_eq!(retry_delay(u32::MAX), RETRY_DELAY_MAX);
}

#[test]
fn each_failure_doubles_the_wait_before_the_next_pod_and_it_survives_a_restart() {
    let mut j = job("  backoffLimit: 5\n", "Never");
    let mut pods = Vec::new();
    step(&mut j, &mut pods, t(0));
    // Fail the live pod at `at`; the next one must not come before `at + wait`, and
    // comes at that moment.
    let mut at = 5;
    for (n, wait) in [(0, 10), (1, 20), (2, 40)] {
        set_phase(&mut pods, &format!("pi-{n}"), api::PodPhase::Failed);
        assert!(step(&mut j, &mut pods, t(at)).actions.is_empty());
        // A restarted coordinator sees the same pods and Job status (the counted time is
        // on the pod), and waits the same.
        let mut restarted = j.clone();
        let mut same = pods.clone();
        assert!(
            step(&mut restarted, &mut same, t(at + wait - 1))
                .actions
                .is_empty(),
            "failure {}: nothing before {wait} s",
            n + 1
        );
        let plan = step(&mut j, &mut pods, t(at + wait));
        assert_eq!(
            plan.actions.len(),
            1,
            "failure {}: retried after {wait} s",
            n + 1
        );
        assert_eq!(j.status.active, 1);
        at += wait + 3;
    }
    // A success does not wait.
    let mut j = job("  completions: 2\n", "Never");
    let mut pods = Vec::new();
    step(&mut j, &mut pods, t(0));
    set_phase(&mut pods, "pi-0", api::PodPhase::Succeeded);
    assert_eq!(step(&mut j, &mut pods, t(1)).actions.len(), 1);
}
