//! Jobs on three real agents (issue 18): a Job with `completions: 3` and `parallelism: 2`
//! finishes with never more than two containers alive at once (observed in the agents'
//! cgroups, not only in the API), a failing Job stops at its `backoffLimit` with the
//! reason in `get jobs` and `describe`, both Jobs' status survives a coordinator restart
//! (no pod re-run, the same times), and deleting a Job removes its pods.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
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
    ensure!(job_pods(lab, "fails")?.len() == 2, "no third pod");

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
