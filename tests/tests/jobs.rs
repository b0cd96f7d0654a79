//! Jobs on three real agents (issue 18): a Job with `completions: 3` and `parallelism: 2`
//! finishes with never more than two containers alive at once (observed in the agents'
//! cgroups, not only in the API), a failing Job stops at its `backoffLimit` with the
//! reason in `get jobs` and `describe`, both Jobs' status survives a coordinator restart
//! (no pod re-run, the same times), and deleting a Job removes its pods. Beside it, on
//! its own lab: a CronJob every minute starts its Jobs on the minute, and one with
//! `concurrencyPolicy: Forbid` whose run outlasts the minute never has two at once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use baton_e2e::cron::{jobs_of, EveryMinute};
use baton_e2e::fleet::{node_of, text, uid};
use baton_e2e::{container_pids, wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

fn job(registry: &str, name: &str, spec: &str, script: &str) -> String {
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
spec:
{spec}
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - name: work
        image: {registry}/baton/busybox:1
        command: [sh, -c, "{script}"]
"#
    )
}

fn job_pods(lab: &Lab, name: &str) -> Result<Vec<Value>> {
    Ok(lab
        .pods()?
        .into_iter()
        .filter(|p| p["metadata"]["job"] == name)
        .collect())
}

fn job_json(lab: &Lab, name: &str) -> Result<Value> {
    lab.get_json(&["get", "job", name])
}

fn condition(j: &Value) -> Option<(String, String)> {
    j["status"]["conditions"]
        .as_array()?
        .iter()
        .find_map(|c| (c["status"] == "True").then(|| (text(&c["type"]), text(&c["reason"]))))
}

fn out(lab: &Lab, args: &[&str]) -> Result<String> {
    let o = lab.baton(args)?;
    ensure!(
        o.status.success(),
        "baton {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The row of `name` in a `get` table, split on runs of two spaces.
fn row(table: &str, name: &str) -> Vec<String> {
    table
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_default()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn jobs_complete_within_parallelism_fail_at_backoff_limit_and_survive_a_restart() -> Result<()> {
    let mut lab = Lab::start("jobs", 3, Broker::Embedded)?;
    let r = scenario(&mut lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn scenario(lab: &mut Lab) -> Result<()> {
    let reg = lab.registry();
    lab.apply(&format!(
        "{}---\n{}",
        job(
            &reg,
            "count",
            "  completions: 3\n  parallelism: 2",
            "sleep 3"
        ),
        job(&reg, "fails", "  backoffLimit: 1", "exit 3"),
    ))?;

    // Watch the containers that are alive on the nodes until `count` is complete.
    let started = Instant::now();
    let mut most_alive = 0;
    let mut seen = BTreeSet::new();
    let done = wait_for("job count to complete", LONG, || {
        let pods = job_pods(lab, "count")?;
        let alive = pods
            .iter()
            .filter(|p| {
                let node = node_of(p);
                !node.is_empty() && !container_pids(&node, &uid(p), "work").is_empty()
            })
            .count();
        most_alive = most_alive.max(alive);
        seen.extend(pods.iter().map(uid));
        let j = job_json(lab, "count")?;
        Ok((condition(&j).is_some()).then_some(j))
    })?;
    ensure!(
        condition(&done) == Some(("Complete".into(), String::new())),
        "{done}"
    );
    ensure!(done["status"]["succeeded"] == 3, "{done}");
    ensure!(
        most_alive == 2,
        "parallelism 2: at most 2 containers alive at once, and 2 used; saw {most_alive}"
    );
    ensure!(
        seen.len() == 3,
        "3 pods for 3 completions, none re-run: {seen:?}"
    );
    eprintln!("count: complete in {:.1}s", started.elapsed().as_secs_f64());

    let fails = wait_for("job fails to fail", LONG, || {
        let j = job_json(lab, "fails")?;
        Ok(condition(&j).is_some().then_some(j))
    })?;
    ensure!(
        condition(&fails) == Some(("Failed".into(), "BackoffLimitExceeded".into())),
        "{fails}"
    );
    ensure!(
        fails["status"]["failed"] == 2,
        "backoffLimit 1: two failed pods: {fails}"
    );
    let mut failed = job_pods(lab, "fails")?;
    ensure!(failed.len() == 2, "no third pod");
    // Kubernetes' back-off: the second pod comes 10 s or more after the first one's
    // failure was counted (both times from the coordinator's clock, to the second).
    failed.sort_by_key(|p| {
        p["metadata"]["creationTimestamp"]
            .as_str()
            .map(str::to_owned)
    });
    let time = |v: &Value| -> Result<std::time::SystemTime> {
        let s = v.as_str().with_context(|| format!("no time: {v}"))?;
        Ok(humantime::parse_rfc3339_weak(s)?)
    };
    let first_failed = time(&failed[0]["metadata"]["annotations"]["baton.io/job-counted"])?;
    let second_created = time(&failed[1]["metadata"]["creationTimestamp"])?;
    let waited = second_created
        .duration_since(first_failed)
        .unwrap_or_default();
    ensure!(
        waited >= Duration::from_secs(10),
        "the retry came {waited:?} after the failure, not 10 s or more"
    );

    let table = out(lab, &["get", "jobs"])?;
    let header = row(&table, "NAME");
    ensure!(
        header == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
        "{table}"
    );
    let c = row(&table, "count");
    ensure!(c[1] == "Complete" && c[2] == "3/3", "{table}");
    let f = row(&table, "fails");
    ensure!(f[1] == "Failed" && f[2] == "0/1", "{table}");
    let described = out(lab, &["describe", "job", "fails"])?;
    ensure!(
        described.contains("Failed (BackoffLimitExceeded)")
            && described.contains("0 Succeeded / 2 Failed"),
        "{described}"
    );

    // A restarted coordinator reads the same status and runs nothing again.
    let before: Vec<Value> = vec![done.clone(), fails.clone()];
    let pods_before: BTreeSet<String> = lab.pods()?.iter().map(uid).collect();
    lab.kill_coordinator();
    lab.start_coordinator()?;
    std::thread::sleep(Duration::from_secs(3));
    for b in &before {
        let name = text(&b["metadata"]["name"]);
        let now = job_json(lab, &name)?;
        ensure!(
            now["status"] == b["status"],
            "{name}: {} then {}",
            b["status"],
            now["status"]
        );
    }
    let pods_after: BTreeSet<String> = lab.pods()?.iter().map(uid).collect();
    ensure!(
        pods_before == pods_after,
        "{pods_before:?} then {pods_after:?}"
    );

    // Deleting a Job deletes its pods.
    out(lab, &["delete", "job", "count"])?;
    wait_for("count's pods to go", LONG, || {
        Ok(job_pods(lab, "count")?.is_empty().then_some(()))
    })?;
    ensure!(!out(lab, &["get", "jobs"])?.contains("count "));
    Ok(())
}

#[test]
fn cron_jobs_run_every_minute_and_forbid_holds() -> Result<()> {
    let lab = Lab::start("cron", 2, Broker::Embedded)?;
    let r = cron_scenario(&lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn cron_scenario(lab: &Lab) -> Result<()> {
    let reg = lab.registry();
    let forbid = EveryMinute {
        policy: "Forbid",
        ..EveryMinute::new("slow", "sleep 150")
    };
    lab.apply(&format!(
        "{}---\n{}",
        EveryMinute::new("tick", "echo tick").yaml(&reg),
        forbid.yaml(&reg),
    ))?;
    let table = out(lab, &["get", "cj"])?;
    ensure!(
        row(&table, "NAME")
            == [
                "NAME",
                "SCHEDULE",
                "TIMEZONE",
                "SUSPEND",
                "ACTIVE",
                "LAST SCHEDULE",
                "AGE"
            ],
        "{table}"
    );
    ensure!(
        row(&table, "tick")[1..5] == ["* * * * *", "<none>", "false", "0"],
        "{table}"
    );

    // Two runs of `tick`, a minute apart, each started on its minute; meanwhile `slow`
    // never has two Jobs or two containers alive.
    let mut most_slow_jobs = 0;
    let mut most_slow_alive = 0;
    let ticks = wait_for("two runs of tick", Duration::from_secs(150), || {
        let slow = jobs_of(lab, "slow")?;
        let active = slow.iter().filter(|j| condition(j).is_none()).count();
        most_slow_jobs = most_slow_jobs.max(active);
        let alive = lab
            .pods()?
            .iter()
            .filter(|p| text(&p["metadata"]["job"]).starts_with("slow-"))
            .filter(|p| {
                let node = node_of(p);
                !node.is_empty() && !container_pids(&node, &uid(p), "work").is_empty()
            })
            .count();
        most_slow_alive = most_slow_alive.max(alive);
        let ticks = jobs_of(lab, "tick")?;
        Ok((ticks.len() >= 2).then_some(ticks))
    })?;
    let minute = |j: &Value| -> Result<u64> {
        let name = text(&j["metadata"]["name"]);
        Ok(name.trim_start_matches("tick-").parse()?)
    };
    let (first, second) = (minute(&ticks[0])?, minute(&ticks[1])?);
    ensure!(
        second == first + 1,
        "one run a minute: {first} then {second}"
    );
    for j in &ticks {
        let scheduled = humantime::parse_rfc3339(&text(
            &j["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"],
        ))?;
        let created = humantime::parse_rfc3339(&text(&j["metadata"]["creationTimestamp"]))?;
        let late = created.duration_since(scheduled)?;
        ensure!(
            late < Duration::from_secs(5),
            "started {late:?} after its minute: {j}"
        );
    }
    wait_for("tick's first run to complete", LONG, || {
        let j = job_json(lab, &text(&ticks[0]["metadata"]["name"]))?;
        Ok((condition(&j) == Some(("Complete".into(), String::new()))).then_some(()))
    })?;
    // `slow` ran at the first minute and its run at the second was skipped.
    std::thread::sleep(Duration::from_secs(3));
    ensure!(jobs_of(lab, "slow")?.len() == 1, "Forbid: one job of slow");
    ensure!(
        most_slow_jobs == 1 && most_slow_alive <= 1,
        "slow: {most_slow_jobs} jobs, {most_slow_alive} containers at once"
    );
    let described = out(lab, &["describe", "cronjob", "slow"])?;
    ensure!(described.contains("JobAlreadyActive"), "{described}");

    // Deleting a CronJob deletes its Jobs and their pods.
    out(lab, &["delete", "cronjob", "slow"])?;
    wait_for("slow's jobs and pods to go", LONG, || {
        let pods = lab
            .pods()?
            .into_iter()
            .filter(|p| text(&p["metadata"]["job"]).starts_with("slow-"))
            .count();
        Ok((jobs_of(lab, "slow")?.is_empty() && pods == 0).then_some(()))
    })?;
    Ok(())
}
