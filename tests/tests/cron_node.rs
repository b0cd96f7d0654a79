//! Node-scheduled CronJobs on real agents (issue 18): `baton.io/schedule-on: node` with a
//! node selector. The selected node fires an every-minute CronJob on its own clock while
//! its link to the broker is cut (no coordinator, no broker), its runs appear in
//! `get jobs` once the link is back, each once; a `concurrencyPolicy: Forbid` CronJob whose
//! run outlasts the minute never has two runs at once; the node the selector leaves out
//! never runs either; a CronJob every node fires keeps its history limit per node; an
//! agent restarted while a run is active adopts it (the same process, fired once, its end
//! reported, with its exit code unknown). Each run's pod is in `get pods` on its node,
//! owned by its Job and the CronJob, Running then Succeeded, and `baton logs` reads it
//! while it runs and after it ended, the runs fired offline too; the pods go with their
//! CronJob.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Context, Result};
use baton_e2e::cron::{jobs_of, logs, pod_of, run_node, EveryMinute, FiredBy};
use baton_e2e::fleet::text;
use baton_e2e::lines::{read_until, spawn_lines};
use baton_e2e::{container_pids, wait_for, Broker, Lab};
use serde_json::Value;

fn time(v: &Value) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(v.as_str()?).ok()
}

/// `s` without ANSI colour sequences (a log's field names may be styled).
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn finished(j: &Value) -> bool {
    j["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["status"] == "True"))
}

#[test]
fn a_node_fires_its_cron_job_while_cut_off_and_reports_the_runs_when_back() -> Result<()> {
    let mut lab = Lab::start("cronnode", 2, Broker::Embedded)?;
    let r = scenario(&mut lab);
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

fn scenario(lab: &mut Lab) -> Result<()> {
    let reg = lab.registry();
    let (fires, other) = (lab.agents[0].name.clone(), lab.agents[1].name.clone());
    let on_fires = |name, policy, script| EveryMinute {
        fired_by: FiredBy::Node(Some(&fires)),
        policy,
        restart: "Never",
        successful_history: Some(10),
        ..EveryMinute::new(name, script)
    };
    // tick succeeds only with its ConfigMap on the device: the runs it fires offline too.
    let tick = EveryMinute {
        config_map: Some("tick-conf"),
        ..on_fires("tick", "Allow", "test $(cat /cfg/word) = tock && echo tick")
    };
    let applied = lab.apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: tick-conf}}\ndata: {{word: tock}}\n---\n{}---\n{}",
        tick.yaml(&reg),
        on_fires("slow", "Forbid", "echo slow started && sleep 100").yaml(&reg),
    ))?;
    ensure!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );

    // Online first: a run of `tick`, recorded as a Job of the CronJob, of the node.
    let first = wait_for("a first run of tick", Duration::from_secs(150), || {
        Ok(jobs_of(lab, "tick")?.into_iter().find(finished))
    })?;
    ensure!(run_node(&first) == fires.as_str(), "{first}");
    ensure!(first["status"]["succeeded"] == 1, "{first}");
    // Its pod: on the node, owned by the Job and the CronJob, Succeeded, its log read.
    let first_job = text(&first["metadata"]["name"]);
    let pod = wait_for(
        "the first run's pod Succeeded",
        Duration::from_secs(30),
        || Ok(pod_of(lab, &first_job)?.filter(|p| p["status"]["phase"] == "Succeeded")),
    )?;
    let pod_name = text(&pod["metadata"]["name"]);
    ensure!(
        pod["spec"]["nodeName"] == fires.as_str() && pod["metadata"]["cronJob"] == "tick",
        "{pod}"
    );
    ensure!(
        pod["status"]["containerStatuses"][0]["state"]["exited"]["exitCode"] == 0,
        "{pod}"
    );
    let said = logs(lab, &pod_name)?;
    ensure!(said.trim() == "tick", "baton logs {pod_name}: {said:?}");
    let described =
        String::from_utf8_lossy(&lab.baton(&["describe", "pod", &pod_name])?.stdout).into_owned();
    ensure!(
        described.contains(&format!("Job/{first_job}")),
        "{described}"
    );

    // Cut the node off for two and a half minutes: it keeps firing.
    lab.set_link(0, false)?;
    let cut = SystemTime::now();
    let cut_at = Instant::now();
    // Meanwhile, how often the node writes its CronJob history (each write is a new file
    // renamed over the old one: a new inode).
    let history = lab.agents[0].data_dir.join("cron.bin");
    let inode = || std::fs::metadata(&history).map(|m| m.ino()).ok();
    let mut last = inode();
    let mut writes = 0;
    while cut_at.elapsed() < Duration::from_secs(150) {
        std::thread::sleep(Duration::from_millis(200));
        let now = inode();
        if now != last {
            writes += 1;
            last = now;
        }
    }
    let restored = SystemTime::now();
    lab.set_link(0, true)?;
    let back = Instant::now();
    // `both`, from now on (not to count in the history writes above): every node fires
    // it, and keeps one successful run, each its own.
    let both = EveryMinute {
        fired_by: FiredBy::Node(None),
        restart: "Never",
        successful_history: Some(1),
        ..EveryMinute::new("both", "true")
    };
    lab.apply(&both.yaml(&reg))?;
    eprintln!("link cut for {:.0}s", cut_at.elapsed().as_secs_f64());

    // Its runs of those minutes come back as Jobs, each once.
    let offline = wait_for(
        "the runs fired offline in get jobs",
        Duration::from_secs(90),
        || {
            let jobs = jobs_of(lab, "tick")?;
            let offline: Vec<Value> = jobs
                .into_iter()
                .filter(|j| {
                    time(&j["status"]["startTime"]).is_some_and(|t| t > cut && t < restored)
                })
                .filter(finished)
                .collect();
            Ok((offline.len() >= 2).then_some(offline))
        },
    )?;
    println!(
        "FIGURE {} runs fired while the link was cut were in get jobs {:.1}s after it returned",
        offline.len(),
        back.elapsed().as_secs_f64()
    );
    // Every run that ended while cut off, of both CronJobs.
    let ended_offline = ["tick", "slow"]
        .iter()
        .map(|cj| jobs_of(lab, cj))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .filter(|j| {
            time(&j["status"]["conditions"][0]["lastTransitionTime"])
                .is_some_and(|t| t > cut && t < restored)
        })
        .count();
    println!(
        "FIGURE SD writes of the CronJob history while cut off: {writes} for {ended_offline} runs ended"
    );
    ensure!(
        writes >= 1 && writes <= ended_offline,
        "one write a run at most: {writes} writes, {ended_offline} runs ended"
    );
    for j in &offline {
        ensure!(j["status"]["succeeded"] == 1, "{j}");
        // Its pod came back too, Succeeded, its log still on the device.
        let job = text(&j["metadata"]["name"]);
        let pod = wait_for(
            &format!("{job}'s pod, Succeeded"),
            Duration::from_secs(30),
            || Ok(pod_of(lab, &job)?.filter(|p| p["status"]["phase"] == "Succeeded")),
        )?;
        ensure!(pod["spec"]["nodeName"] == fires.as_str(), "{pod}");
        let said = logs(lab, &text(&pod["metadata"]["name"]))?;
        ensure!(said.trim() == "tick", "{job}'s pod's log: {said:?}");
        let scheduled =
            time(&j["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"])
                .context("a scheduled time")?;
        let started = time(&j["status"]["startTime"]).context("a start")?;
        let late = started.duration_since(scheduled).unwrap_or_default();
        ensure!(
            late < Duration::from_secs(5),
            "run for {scheduled:?} started {late:?} late: {j}"
        );
    }
    let names: Vec<String> = jobs_of(lab, "tick")?
        .iter()
        .map(|j| text(&j["metadata"]["name"]))
        .collect();
    // Each instant fired once on the node (its log), whatever was reported twice.
    let log = plain(&lab.agent_log(0));
    let mut fired: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CronJob fires") && l.contains("cronjob=tick"))
        .filter_map(|l| l.split("minute=").nth(1)?.split_whitespace().next())
        .collect();
    let all = fired.len();
    ensure!(
        all > offline.len(),
        "tick fired {all} times, {} of them offline: {log}",
        offline.len()
    );
    fired.sort();
    fired.dedup();
    ensure!(fired.len() == all, "an instant of tick fired twice: {log}");
    ensure!(
        names
            .iter()
            .all(|n| n.starts_with("tick-") && n.ends_with(&format!("-{fires}"))),
        "{names:?}"
    );
    let table = String::from_utf8_lossy(&lab.baton(&["get", "cronjobs"])?.stdout).into_owned();
    let tick_row = table
        .lines()
        .find(|l| l.starts_with("tick "))
        .with_context(|| table.clone())?;
    let cols: Vec<&str> = tick_row
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    ensure!(
        cols.len() == 7 && cols[5] != "<none>",
        "LAST SCHEDULE set: {table}"
    );

    // Forbid: the runs of `slow` (100 s each, every minute) never overlap.
    let mut slow: Vec<(SystemTime, Option<SystemTime>)> = jobs_of(lab, "slow")?
        .iter()
        .filter_map(|j| {
            Some((
                time(&j["status"]["startTime"])?,
                j["status"]["conditions"][0]["lastTransitionTime"]
                    .as_str()
                    .and_then(|t| humantime::parse_rfc3339_weak(t).ok()),
            ))
        })
        .collect();
    slow.sort();
    ensure!(slow.len() >= 2, "slow ran at least twice: {slow:?}");
    for w in slow.windows(2) {
        let end = w[0].1.context("an earlier run of slow still active")?;
        ensure!(w[1].0 >= end, "two runs of slow at once: {slow:?}");
    }

    // The node the selector leaves out ran nothing, and no run is recorded for it.
    for cj in ["tick", "slow"] {
        let theirs: Vec<Value> = jobs_of(lab, cj)?
            .into_iter()
            .filter(|j| run_node(j) != fires.as_str())
            .collect();
        ensure!(theirs.is_empty(), "{other} ran {cj}: {theirs:?}");
    }
    let other_log = plain(&lab.agent_log(1));
    ensure!(
        !other_log.lines().any(|l| l.contains("CronJob fires")
            && (l.contains("cronjob=tick") || l.contains("cronjob=slow"))),
        "{other} fired a CronJob it is not selected for"
    );

    // History limits count per node: each node keeps its newest successful run of `both`
    // (one limit across the fleet would keep one node's only).
    let kept = wait_for(
        "each node's one successful run of both",
        Duration::from_secs(150),
        || {
            let jobs = jobs_of(lab, "both")?;
            let done: Vec<String> = jobs
                .iter()
                .filter(|j| j["status"]["succeeded"] == 1)
                .map(|j| run_node(j).to_owned())
                .collect();
            let each_one = [&fires, &other]
                .iter()
                .all(|n| done.iter().filter(|d| d == n).count() == 1);
            Ok((each_one && done.len() == 2).then_some(done))
        },
    )?;
    println!("FIGURE both's kept runs, by node: {kept:?}");
    an_agent_restarted_mid_run_adopts_it(lab, &fires)?;
    ensure!(
        lab.agent_log(0).contains("CronJob fires"),
        "{fires}'s log says when it fires"
    );

    // Deleting a CronJob removes its runs' pods.
    lab.baton(&["delete", "cronjob", "tick"])?;
    wait_for("tick's pods gone", Duration::from_secs(30), || {
        let left = lab
            .pods()?
            .into_iter()
            .filter(|p| p["metadata"]["cronJob"] == "tick")
            .count();
        Ok((left == 0).then_some(()))
    })?;
    Ok(())
}

/// An agent restarted (killed, started again) while a run of `slow` is active adopts it:
/// the same container process runs on, the instant is fired once, and the run's end is
/// reported (failed, its exit code unknown to the new process, saying so).
fn an_agent_restarted_mid_run_adopts_it(lab: &mut Lab, fires: &str) -> Result<()> {
    // A run with most of its 100 s ahead, so it cannot end while no agent runs.
    let run = wait_for(
        "a fresh active run of slow",
        Duration::from_secs(150),
        || {
            Ok(jobs_of(lab, "slow")?.into_iter().find(|j| {
                j["status"]["active"] == 1
                    && time(&j["status"]["startTime"])
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|e| e < Duration::from_secs(40))
            }))
        },
    )?;
    let job = text(&run["metadata"]["name"]);
    let minute = job
        .strip_prefix("slow-")
        .and_then(|r| r.split('-').next())
        .context("the run's minute")?
        .to_owned();
    let cron_uid = text(&lab.get_json(&["get", "cronjob", "slow"])?["metadata"]["uid"]);
    let uid = format!("{cron_uid}-{minute}");
    // Reported active when it fires: its container starts just after.
    let pids = wait_for(
        &format!("run {job}'s process ({uid})"),
        Duration::from_secs(30),
        || {
            let pids = container_pids(fires, &uid, "work");
            Ok((!pids.is_empty()).then_some(pids))
        },
    )?;
    // Its pod is Running in `get pods`, on the node, and `baton logs` (and `-f`) reads it
    // as it runs.
    let pod = wait_for(
        &format!("{job}'s pod Running"),
        Duration::from_secs(30),
        || Ok(pod_of(lab, &job)?.filter(|p| p["status"]["phase"] == "Running")),
    )?;
    let pod_name = text(&pod["metadata"]["name"]);
    ensure!(
        pod["spec"]["nodeName"] == fires && pod["metadata"]["uid"] == uid.as_str(),
        "{pod}"
    );
    let said = logs(lab, &pod_name)?;
    ensure!(
        said.contains("slow started"),
        "baton logs {pod_name}: {said:?}"
    );
    let (mut follower, rx) = spawn_lines(lab, &["logs", "-f", &pod_name])?;
    let seen = read_until(&rx, Duration::from_secs(30), "slow's line", |l| {
        l.contains("slow started")
    });
    let _ = follower.kill();
    let _ = follower.wait();
    seen?;
    lab.kill_agent(0);
    lab.start_agent(0)?;
    ensure!(
        container_pids(fires, &uid, "work") == pids,
        "the run's process was not kept: {pids:?}"
    );
    let done = wait_for("the adopted run's end", Duration::from_secs(150), || {
        let j = jobs_of(lab, "slow")?
            .into_iter()
            .find(|j| text(&j["metadata"]["name"]) == job);
        Ok(j.filter(finished))
    })?;
    // Its exit code is not known to the new agent process (the container is not its
    // child): the run ends Failed, saying so, never started again.
    ensure!(
        done["status"]["conditions"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("exit code unknown")),
        "{done}"
    );
    let log = plain(&lab.agent_log(0));
    ensure!(
        log.lines()
            .any(|l| l.contains("pod adopted") && l.contains(&uid)),
        "the run was not adopted: {log}"
    );
    let fired = log
        .lines()
        .filter(|l| {
            l.contains("CronJob fires")
                && l.contains("cronjob=slow")
                && l.contains(&format!("minute={minute}"))
        })
        .count();
    ensure!(fired == 1, "slow's run {minute} fired {fired} times");
    Ok(())
}
