//! The launcher's decisions, from a state, a boot id and an uptime (the fake clock).

use std::path::PathBuf;

use super::*;
use crate::update::state::{deadline_secs, Binary};

fn bin(v: &str) -> Binary {
    Binary {
        version: v.into(),
        path: PathBuf::from(format!("/d/agent/versions/{v}/baton-agent")),
        sha256: format!("sha-{v}"),
    }
}

fn switching() -> UpdateState {
    UpdateState::switching("r1", bin("0.2.0"), bin("0.2.1"), 30)
}

fn at<'a>(boot: &'a str, uptime: u64) -> Facts<'a> {
    Facts {
        boot_id: boot,
        uptime,
    }
}

fn exit(boot: &str, uptime: u64, code: &str, status: &str) -> ExitRecord {
    ExitRecord {
        boot_id: boot.into(),
        uptime,
        code: code.into(),
        status: status.into(),
    }
}

/// Runs `d`'s state forward as the launcher would persist it.
fn next(d: &Decision) -> UpdateState {
    d.state.clone().expect("a state to persist")
}

#[test]
fn without_an_update_the_installed_binary_runs_unwatched() {
    let d = decide(None, &at("b1", 10));
    assert_eq!(d.pick, Pick::Installed);
    assert_eq!(d.alarm, None);
    assert_eq!(d.state, None);
}

#[test]
fn the_first_start_runs_the_new_binary_under_the_watchdog() {
    let d = decide(Some(&switching()), &at("b1", 100));
    assert_eq!(d.pick, Pick::To);
    assert_eq!(d.alarm, Some(deadline_secs(30)));
    let s = next(&d);
    assert_eq!(s.phase, Phase::Probation);
    assert_eq!((s.starts, s.crashes, s.unclean), (1, 0, 0));
    assert_eq!(s.boot_id.as_deref(), Some("b1"));
    assert_eq!((s.first_start, s.last_start), (100, 100));
}

#[test]
fn a_crash_loop_rolls_back_on_the_third_crash_with_the_exit_status() {
    let mut s = next(&decide(Some(&switching()), &at("b1", 100)));
    for (i, t) in [(1, 102), (2, 104)] {
        s.exits.push(exit("b1", t - 1, "exited", "101"));
        let d = decide(Some(&s), &at("b1", t));
        assert_eq!(d.pick, Pick::To, "crash {i} is retried");
        s = next(&d);
        assert_eq!(s.crashes, i);
    }
    s.exits.push(exit("b1", 139, "exited", "101"));
    let d = decide(Some(&s), &at("b1", 140));
    assert_eq!(d.pick, Pick::From);
    assert_eq!(d.alarm, None);
    let s = next(&d);
    assert_eq!(s.phase, Phase::RolledBack);
    assert_eq!(
        s.reason.as_deref(),
        Some("crashed 3 times in 40 s: exit 101")
    );
    assert!(!s.reported);
    // And it stays there.
    assert_eq!(decide(Some(&s), &at("b1", 200)).pick, Pick::From);
    assert_eq!(decide(Some(&s), &at("b2", 5)).pick, Pick::From);
}

#[test]
fn restarts_without_exit_records_still_count_as_crashes() {
    let mut s = next(&decide(Some(&switching()), &at("b1", 100)));
    for t in [101, 102] {
        s = next(&decide(Some(&s), &at("b1", t)));
    }
    let s = next(&decide(Some(&s), &at("b1", 103)));
    assert_eq!(
        s.reason.as_deref(),
        Some("crashed 3 times in 3 s: exit status not recorded")
    );
}

#[test]
fn a_power_cut_during_probation_is_no_failure_but_a_boot_loop_ends() {
    let mut s = next(&decide(Some(&switching()), &at("b1", 100)));
    // Power cuts at any moment: each next start is in a new boot, with no exit recorded.
    for i in 1..=MAX_UNCLEAN {
        let boot = format!("b{}", i + 1);
        let d = decide(Some(&s), &at(&boot, 20));
        assert_eq!(d.pick, Pick::To, "reboot {i} is not a failure");
        assert_eq!(d.alarm, Some(s.deadline_secs));
        s = next(&d);
        assert_eq!((s.crashes, s.unclean), (0, i));
        assert_eq!(s.first_start, 20, "crashes are timed within the boot");
    }
    let d = decide(Some(&s), &at("b-last", 20));
    assert_eq!(d.pick, Pick::From);
    assert!(next(&d)
        .reason
        .unwrap()
        .contains("across reboots or power cuts without committing"));
}

#[test]
fn crashes_in_an_earlier_boot_do_not_add_up_with_a_power_cut() {
    let mut s = next(&decide(Some(&switching()), &at("b1", 100)));
    s.exits.push(exit("b1", 101, "exited", "101"));
    s = next(&decide(Some(&s), &at("b1", 102)));
    s.exits.push(exit("b1", 103, "exited", "101"));
    s = next(&decide(Some(&s), &at("b1", 104)));
    assert_eq!(s.crashes, 2);
    let d = decide(Some(&s), &at("b2", 10));
    assert_eq!(d.pick, Pick::To);
    assert_eq!(next(&d).crashes, 0);
}

#[test]
fn the_watchdog_rolls_back_with_what_the_new_agent_waited_for() {
    let mut s = switching();
    s.pending = Some("no broker connection within 120 s".into());
    let mut s = next(&decide(Some(&s), &at("b1", 100)));
    s.exits.push(exit("b1", 220, "killed", "ALRM"));
    let d = decide(Some(&s), &at("b1", 221));
    assert_eq!(d.pick, Pick::From);
    assert_eq!(
        next(&d).reason.as_deref(),
        Some("no broker connection within 120 s")
    );
    // Without the exit record, having run past the deadline says the same.
    let mut s = next(&decide(Some(&switching()), &at("b1", 100)));
    s.pending = Some("pods unhealthy: 2/5 not ready".into());
    let d = decide(Some(&s), &at("b1", 100 + s.deadline_secs + 1));
    assert_eq!(
        next(&d).reason.as_deref(),
        Some("pods unhealthy: 2/5 not ready")
    );
}

#[test]
fn clean_stops_are_no_crash_but_are_capped() {
    let mut s = next(&decide(Some(&switching()), &at("b1", 100)));
    for i in 1..=MAX_UNCLEAN {
        s.exits
            .push(exit("b1", 100 + u64::from(i), "killed", "TERM"));
        let d = decide(Some(&s), &at("b1", 101 + u64::from(i)));
        assert_eq!(d.pick, Pick::To);
        s = next(&d);
        assert_eq!(s.crashes, 0);
    }
    s.exits.push(exit("b1", 150, "exited", "0"));
    assert_eq!(decide(Some(&s), &at("b1", 151)).pick, Pick::From);
}

#[test]
fn the_new_agents_own_rollback_is_finished_by_the_launcher() {
    let mut s = next(&decide(Some(&switching()), &at("b1", 100)));
    s.phase = Phase::RollingBack;
    s.reason = Some("pods unhealthy: 2/5 not ready".into());
    let d = decide(Some(&s), &at("b1", 190));
    assert_eq!(d.pick, Pick::From);
    let s = next(&d);
    assert_eq!(s.phase, Phase::RolledBack);
    assert_eq!(s.reason.as_deref(), Some("pods unhealthy: 2/5 not ready"));
}

#[test]
fn a_committed_update_runs_the_new_binary_unwatched() {
    let mut s = next(&decide(Some(&switching()), &at("b1", 100)));
    s.phase = Phase::Committed;
    let d = decide(Some(&s), &at("b9", 3));
    assert_eq!((d.pick, d.alarm, d.state), (Pick::To, None, None));
}

#[test]
fn a_binary_that_does_not_verify_is_never_picked() {
    let s = switching();
    let d = decide(Some(&s), &at("b1", 100));
    // The new binary is damaged: back to the old one, with the reason.
    let bad_to = verified(d.clone(), Some(&s), |p, _| {
        !p.ends_with("0.2.1/baton-agent")
    });
    assert_eq!(bad_to.pick, Pick::From);
    assert!(next(&bad_to)
        .reason
        .unwrap()
        .contains("is missing or does not match its sha256"));
    // Both damaged: the installed binary.
    let none = verified(d, Some(&s), |_, _| false);
    assert_eq!(none.pick, Pick::Installed);
    // A rolled-back device whose old binary is gone runs the installed one.
    let mut rolled = s.clone();
    rolled.phase = Phase::RolledBack;
    let d = verified(
        decide(Some(&rolled), &at("b1", 1)),
        Some(&rolled),
        |_, _| false,
    );
    assert_eq!(d.pick, Pick::Installed);
}
