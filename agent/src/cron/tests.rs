//! The firing rules with the time given: due runs, missed instants, deadlines, the
//! concurrency policies, outcomes and the bounded history.

use baton_proto::{
    BString, BVec, ContainerState, CronOutcome, CronPolicy, NodeCron, PodSpec, RestartPolicy,
};

use super::*;

/// 2027-01-15T08:00:00Z.
const T0: u64 = 1_800_000_000;

fn cron(policy: CronPolicy, deadline: Option<u32>, n: usize) -> NodeCron {
    NodeCron {
        name: BString::new("tick").unwrap(),
        uid: BString::new("u1").unwrap(),
        pod: PodSpec {
            name: BString::new("tick-0-run").unwrap(),
            uid: BString::new("u1").unwrap(),
            host_network: false,
            restart_policy: RestartPolicy::Never,
            termination_grace_secs: 30,
            containers: BVec::new(),
            init_containers: BVec::new(),
            volumes: BVec::new(),
            image_pull_secrets: BVec::new(),
            priority: 0,
            dns: None,
        },
        policy,
        starting_deadline_secs: deadline,
        backoff_limit: 2,
        successful_history: 2,
        failed_history: 1,
        // Every minute from 08:01.
        first: T0 + 60,
        deltas: BVec::from_vec(vec![60; n - 1]).unwrap(),
    }
}

fn minute(secs: u64) -> u32 {
    (secs / 60) as u32
}

#[test]
fn fires_each_instant_once_and_wakes_for_the_next() {
    let c = [cron(CronPolicy::Allow, None, 5)];
    let mut runs = Runs::default();
    runs.sync(&c);
    let p = plan(&c, &runs, T0 + 30);
    assert!(p.fire.is_empty(), "nothing due before the first instant");
    assert_eq!(p.wake_secs, Some(T0 + 60));
    let p = plan(&c, &runs, T0 + 61);
    assert_eq!(p.fire, vec![("tick".to_string(), minute(T0 + 60))]);
    assert_eq!(p.wake_secs, Some(T0 + 120));
    runs.fire("tick", minute(T0 + 60), 0);
    assert!(plan(&c, &runs, T0 + 90).fire.is_empty(), "fired once");
    // Allow: the next runs beside the active one.
    assert_eq!(plan(&c, &runs, T0 + 120).fire.len(), 1);
    // Past the horizon nothing fires and nothing wakes.
    let mut done = runs.clone();
    done.fire("tick", minute(T0 + 300), 0);
    let p = plan(&c, &done, T0 + 10_000);
    assert!(p.fire.is_empty() && p.wake_secs.is_none());
}

#[test]
fn after_missed_instants_only_the_latest_runs_within_the_deadline() {
    let c = [cron(CronPolicy::Allow, None, 10)];
    let mut runs = Runs::default();
    runs.sync(&c);
    // Off from 08:00 to 08:05:30: one run, for 08:05.
    assert_eq!(
        plan(&c, &runs, T0 + 330).fire,
        vec![("tick".to_string(), minute(T0 + 300))]
    );
    let c = [cron(CronPolicy::Allow, Some(20), 10)];
    assert!(
        plan(&c, &runs, T0 + 330).fire.is_empty(),
        "08:05 is 30 s late, over its 20 s deadline"
    );
    assert_eq!(plan(&c, &runs, T0 + 315).fire.len(), 1);
}

#[test]
fn forbid_skips_while_active_and_replace_stops_the_active_run() {
    let c = [cron(CronPolicy::Forbid, None, 10)];
    let mut runs = Runs::default();
    runs.sync(&c);
    runs.fire("tick", minute(T0 + 60), 1);
    assert!(plan(&c, &runs, T0 + 125).fire.is_empty(), "one is active");
    runs.finish(&c[0], minute(T0 + 60), CronOutcome::Succeeded, 2);
    assert_eq!(
        plan(&c, &runs, T0 + 130).fire,
        vec![("tick".to_string(), minute(T0 + 120))],
        "the skipped instant runs once the active one ended"
    );
    let c = [cron(CronPolicy::Replace, None, 10)];
    let mut runs = Runs::default();
    runs.sync(&c);
    runs.fire("tick", minute(T0 + 60), 1);
    let p = plan(&c, &runs, T0 + 125);
    assert_eq!(p.replace, vec![("tick".to_string(), minute(T0 + 60))]);
    assert_eq!(p.fire, vec![("tick".to_string(), minute(T0 + 120))]);
}

#[test]
fn history_keeps_the_limits_and_a_new_incarnation_starts_afresh() {
    let c = [cron(CronPolicy::Allow, None, 10)];
    let mut runs = Runs::default();
    runs.sync(&c);
    for i in 1..=4u64 {
        runs.fire("tick", minute(T0 + 60 * i), i);
        runs.finish(&c[0], minute(T0 + 60 * i), CronOutcome::Succeeded, i);
    }
    runs.fire("tick", minute(T0 + 300), 5);
    runs.finish(
        &c[0],
        minute(T0 + 300),
        CronOutcome::Failed(BString::new("exit code 1").unwrap()),
        5,
    );
    runs.fire("tick", minute(T0 + 360), 6);
    let kept: Vec<u32> = runs.report(None).iter().map(|r| r.minute).collect();
    assert_eq!(
        kept,
        vec![
            minute(T0 + 180),
            minute(T0 + 240),
            minute(T0 + 300),
            minute(T0 + 360)
        ],
        "two succeeded, one failed, the active one"
    );
    assert_eq!(
        runs.active().collect::<Vec<_>>(),
        vec![("tick", minute(T0 + 360))]
    );
    // The file round trip keeps all of it.
    let dir = tempfile::tempdir().unwrap();
    runs.store(dir.path()).unwrap();
    assert_eq!(Runs::load(dir.path()), runs);
    // The CronJob made again: its runs and last instant are forgotten.
    let mut again = cron(CronPolicy::Allow, None, 10);
    again.uid = BString::new("u2").unwrap();
    assert!(runs.sync(&[again]));
    assert!(runs.is_empty());
    assert!(runs.sync(&[]), "a CronJob no longer sent is forgotten");
}

#[test]
fn outcomes_follow_the_restart_policy() {
    let ok = ContainerState::Exited { code: 0 };
    let bad = ContainerState::Exited { code: 3 };
    let running = ContainerState::Running { started_at_ms: 1 };
    use RestartPolicy::*;
    assert_eq!(outcome(Never, 0, &[(false, &running, 0)]), None);
    assert_eq!(
        outcome(Never, 0, &[(true, &ok, 0), (false, &ok, 0)]),
        Some(CronOutcome::Succeeded)
    );
    assert_eq!(
        outcome(Never, 5, &[(false, &bad, 0)]),
        Some(CronOutcome::Failed(BString::new("exit code 3").unwrap()))
    );
    // OnFailure: a failed container is restarted, until the restarts pass the limit.
    assert_eq!(outcome(OnFailure, 2, &[(false, &bad, 2)]), None);
    assert_eq!(
        outcome(OnFailure, 2, &[(false, &bad, 3)]),
        Some(CronOutcome::Failed(
            BString::new("BackoffLimitExceeded").unwrap()
        ))
    );
    assert_eq!(
        outcome(OnFailure, 2, &[(false, &ok, 1)]),
        Some(CronOutcome::Succeeded)
    );
    let pull = ContainerState::Failed {
        reason: BString::new("ErrImagePull").unwrap(),
    };
    assert_eq!(
        outcome(OnFailure, 2, &[(false, &pull, 0)]),
        Some(CronOutcome::Failed(BString::new("ErrImagePull").unwrap()))
    );
}

#[test]
fn a_run_pod_is_named_as_the_coordinator_names_the_job() {
    let c = cron(CronPolicy::Allow, None, 2);
    let p = run_pod(&c, 30_000_001);
    assert_eq!(p.name.as_str(), "tick-30000001");
    assert_eq!(p.uid.as_str(), "u1-30000001");
}

/// After an agent restart: a run whose containers all still run is taken back as active
/// (not fired again, its start the container's), one already known active is kept, an
/// ended one's or a partly gone one's are not adopted; containers of other pods are not
/// runs.
#[test]
fn runs_still_running_after_a_restart_are_taken_back() {
    let mut c = cron(CronPolicy::Allow, None, 10);
    c.pod.containers = BVec::from_vec(vec![baton_proto::ContainerSpec {
        name: BString::new("work").unwrap(),
        image: BString::new("busybox").unwrap(),
        image_pull_policy: baton_proto::PullPolicy::IfNotPresent,
        command: BVec::new(),
        args: BVec::new(),
        env: BVec::new(),
        working_dir: None,
        ports: BVec::new(),
        resources: Default::default(),
        liveness_probe: None,
        readiness_probe: None,
        security: Default::default(),
        volume_mounts: BVec::new(),
        startup_probe: None,
    }])
    .unwrap();
    let c = [c];
    let (m1, m2, m3) = (minute(T0 + 60), minute(T0 + 120), minute(T0 + 180));
    let mut runs = Runs::default();
    runs.sync(&c);
    runs.fire("tick", m1, 5);
    runs.finish(&c[0], m1, CronOutcome::Succeeded, 6);
    runs.fire("tick", m2, 7);
    let running: BTreeMap<String, Option<u64>> = [
        (format!("u1-{m1}-work"), Some(1)),
        (format!("u1-{m2}-work"), Some(2)),
        (format!("u1-{m3}-work"), Some(3_000)),
        ("other-work".to_owned(), None),
    ]
    .into_iter()
    .collect();
    let pods = runs.resume(&c, &running, 9_999);
    let uids: Vec<&str> = pods.iter().map(|p| p.uid.as_str()).collect();
    assert_eq!(uids, [run_uid("u1", m2), run_uid("u1", m3)]);
    let active: Vec<_> = runs.active().collect();
    assert_eq!(active, [("tick", m2), ("tick", m3)]);
    let started = runs.report(Some(&[("tick".to_string(), m3)]));
    assert_eq!(started[0].started_at_ms, 3_000);
    // Not fired again: m3 was the latest instant before now.
    assert!(plan(&c, &runs, T0 + 200).fire.is_empty());
    // An adopted run's exit code is not known: it fails, saying so.
    let unknown = ContainerState::Exited { code: -1 };
    assert_eq!(
        outcome(RestartPolicy::Never, 0, &[(false, &unknown, 0)]),
        Some(CronOutcome::Failed(BString::truncated(UNKNOWN_EXIT)))
    );
    // A run missing a container is not taken back (it starts afresh if still due).
    let mut fresh = Runs::default();
    assert!(fresh.resume(&c, &BTreeMap::new(), 1).is_empty());
    assert_eq!(fresh.active().count(), 0);
}
