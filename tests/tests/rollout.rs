//! Rolling updates end to end: a coordinator, two agents in their own network namespaces,
//! a real registry and real containers. While a client keeps sending requests to Ready,
//! non-terminating pods, the Deployment rolls from `http-echo:1` to `:2` and back with
//! `rollout undo`; not one request may fail, and the rollout must never run more pods
//! than `replicas + maxSurge`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use baton_e2e::fleet::{is_ready, is_terminating, owned_pods, pod_info, wait_pods, EchoDeployment};
use baton_e2e::{Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(180);
/// 4 replicas with the default 25% surge: ceil(1) = 1.
const MAX_SURGE: usize = 1;

fn web(registry: &str, replicas: usize, version: u32) -> String {
    EchoDeployment::new(replicas)
        .tag(version)
        .metadata(&format!(
            "  annotations:\n    kubernetes.io/change-cause: \"http-echo {version}\"\n"
        ))
        .yaml(registry)
}

fn web_pods(lab: &Lab) -> Result<Vec<Value>> {
    owned_pods(lab, "web")
}

/// Fetches a pod's info page from inside its node's namespace; returns its version.
fn version_of(lab: &Lab, pod: &Value) -> Result<String> {
    let body = pod_info(lab, pod, Duration::from_secs(3))?;
    body.lines()
        .find_map(|l| l.strip_prefix("version="))
        .map(str::to_owned)
        .with_context(|| format!("no version in {body:?}"))
}

#[derive(Debug, Default)]
struct Stats {
    ok: usize,
    failed: Vec<String>,
    versions: BTreeMap<String, usize>,
    /// The most non-terminating web pods seen at once.
    max_live: usize,
}

/// Sends requests until `stop`: each to a random Ready, non-terminating pod from a list
/// re-read about every 200 ms (the same list also tracks the number of live pods).
fn load(lab: &Lab, stop: &AtomicBool) -> Stats {
    let mut stats = Stats::default();
    let mut ready: Vec<Value> = Vec::new();
    let mut refreshed: Option<Instant> = None;
    let mut listed = Instant::now();
    let mut last_list_error = String::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    while !stop.load(Ordering::SeqCst) {
        if refreshed.is_none_or(|t| t.elapsed() >= Duration::from_millis(200)) {
            // A failed read keeps the previous list; it is not a failed request.
            match web_pods(lab) {
                Ok(pods) => {
                    let live = pods.iter().filter(|p| !is_terminating(p)).count();
                    stats.max_live = stats.max_live.max(live);
                    ready = pods.into_iter().filter(is_ready).collect();
                    listed = Instant::now();
                }
                Err(e) => last_list_error = format!("{e:#}"),
            }
            refreshed = Some(Instant::now());
        }
        if ready.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        // xorshift64: enough randomness to spread requests, no dependency.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let pod = &ready[(seed % ready.len() as u64) as usize];
        match version_of(lab, pod) {
            Ok(v) => {
                stats.ok += 1;
                *stats.versions.entry(v).or_default() += 1;
            }
            Err(e) => stats.failed.push(format!(
                "{e:#} (pod list {} ms old; last list error: {last_list_error:?})",
                listed.elapsed().as_millis()
            )),
        }
    }
    stats
}

/// Runs `during` while a load thread sends requests; returns its result and the stats.
fn under_load<T>(lab: &Lab, during: impl FnOnce() -> Result<T>) -> Result<(T, Stats)> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let client = s.spawn(|| load(lab, &stop));
        // Some requests before the change, and the drains after it.
        std::thread::sleep(Duration::from_secs(1));
        let result = during();
        if result.is_ok() {
            std::thread::sleep(Duration::from_secs(4));
        }
        stop.store(true, Ordering::SeqCst);
        let stats = client
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
        Ok((result?, stats))
    })
}

/// Waits until exactly `n` web pods exist, none terminating, all ready; returns them.
fn settled(lab: &Lab, n: usize) -> Result<Vec<Value>> {
    wait_pods(
        lab,
        "web",
        n,
        LONG,
        &format!("{n} ready web pods"),
        is_ready,
    )
}

fn all_on_version(lab: &Lab, n: usize, version: &str) -> Result<()> {
    for p in settled(lab, n)? {
        let v = version_of(lab, &p)?;
        ensure!(
            v == version,
            "pod {} answers version {v}",
            p["metadata"]["name"]
        );
    }
    Ok(())
}

/// `baton rollout status` to completion; fails if it exits non-zero.
fn rollout_status(lab: &Lab) -> Result<String> {
    let out = lab.baton_raw(
        &["rollout", "status", "deployment/web", "--timeout", "180s"],
        None,
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "rollout status failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ensure!(
        stdout.contains("deployment \"web\" successfully rolled out"),
        "rollout status said: {stdout}"
    );
    Ok(stdout)
}

fn check_load(what: &str, stats: &Stats, versions: &[&str]) -> Result<()> {
    eprintln!(
        "{what}: {} requests ok, {} failed, versions {:?}, at most {} live pods",
        stats.ok,
        stats.failed.len(),
        stats.versions,
        stats.max_live
    );
    ensure!(
        stats.failed.is_empty(),
        "{what}: {} failed requests, e.g. {:?}",
        stats.failed.len(),
        &stats.failed[..stats.failed.len().min(5)]
    );
    ensure!(stats.ok >= 30, "{what}: only {} requests made", stats.ok);
    for v in versions {
        ensure!(
            stats.versions.contains_key(*v),
            "{what}: version {v} never answered: {:?}",
            stats.versions
        );
    }
    ensure!(
        stats.max_live <= 4 + MAX_SURGE,
        "{what}: {} pods at once, more than replicas + maxSurge",
        stats.max_live
    );
    Ok(())
}

fn steps(lab: &mut Lab) -> Result<()> {
    let reg = lab.registry();
    lab.apply(&web(&reg, 4, 1))?;
    all_on_version(lab, 4, "1")?;

    // Roll forward to version 2 under load.
    let (status, stats) = under_load(lab, || {
        lab.apply(&web(&reg, 4, 2))?;
        rollout_status(lab)
    })?;
    eprintln!("rollout status printed:\n{status}");
    check_load("rollout to v2", &stats, &["1", "2"])?;
    all_on_version(lab, 4, "2")?;

    let history =
        String::from_utf8_lossy(&lab.baton(&["rollout", "history", "deployment/web"])?.stdout)
            .into_owned();
    let revisions: Vec<&str> = history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .collect();
    ensure!(
        revisions.len() == 2
            && revisions[0].starts_with("1 ")
            && revisions[1].starts_with("2 ")
            && revisions[1].contains("http-echo 2"),
        "rollout history:\n{history}"
    );
    let shown = String::from_utf8_lossy(
        &lab.baton(&["rollout", "history", "deployment", "web", "--revision", "1"])?
            .stdout,
    )
    .into_owned();
    ensure!(shown.contains("http-echo:1"), "revision 1:\n{shown}");
    let missing = lab.baton_raw(
        &["rollout", "undo", "deployment/web", "--to-revision", "9"],
        None,
    )?;
    ensure!(
        !missing.status.success()
            && String::from_utf8_lossy(&missing.stderr).contains("revision 9"),
        "undo to a missing revision: {missing:?}"
    );

    // Undo goes back to version 1, again without a failed request.
    let ((), stats) = under_load(lab, || {
        let out = lab.baton(&["rollout", "undo", "deployment/web"])?;
        ensure!(
            String::from_utf8_lossy(&out.stdout).contains("deployment.apps/web rolled back"),
            "undo said {out:?}"
        );
        rollout_status(lab).map(|_| ())
    })?;
    check_load("undo to v1", &stats, &["1", "2"])?;
    all_on_version(lab, 4, "1")?;

    // A figure, not an assertion: a rolling update of 6 replicas, images already pulled
    // on both nodes.
    lab.baton(&["scale", "deployment", "web", "--replicas", "6"])?;
    settled(lab, 6)?;
    let start = Instant::now();
    lab.apply(&web(&reg, 6, 2))?;
    rollout_status(lab)?;
    eprintln!(
        "FIGURE rolling update of 6 replicas (25% surge, 25% unavailable, 2 s drain): {:.1} s",
        start.elapsed().as_secs_f64()
    );
    all_on_version(lab, 6, "2")?;
    Ok(())
}

#[test]
fn rolling_updates_lose_no_requests() -> Result<()> {
    let mut lab = Lab::start("rol", 2, Broker::Embedded)?;
    let result = steps(&mut lab);
    if result.is_err() {
        lab.dump_logs();
    }
    result
}
