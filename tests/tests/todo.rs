//! The seed's todo app on a real fleet: `examples/todo-app-deploy.yaml` (kv primary and
//! replica behind ClusterIP Services, found by name through cluster DNS, three frontends
//! with a readiness probe behind a LoadBalancer Service, nothing pinned to a node), then
//! `examples/todo-app-deploy-v2.yaml` while a client keeps using the app. Not one request
//! may fail, the todo written before the rollout must still be there after it, and every
//! frontend must end on version 2. The LoadBalancer port answers on every node.
//!
//! The manifests are used as shipped, with one substitution only: the lab registry's
//! address for `127.0.0.1:5000`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use baton_e2e::fleet::{is_ready, is_terminating, owned_pods, wait_pods};
use baton_e2e::{repo_root, wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(240);

fn manifest(lab: &Lab, file: &str) -> Result<String> {
    let text = std::fs::read_to_string(repo_root().join("examples").join(file))
        .with_context(|| format!("reading examples/{file}"))?;
    ensure!(
        text.contains("127.0.0.1:5000/"),
        "examples/{file} no longer has the registry address this test substitutes"
    );
    ensure!(
        !text.contains("host-gateway") && !text.contains("nodeSelector"),
        "examples/{file} pins the app to a node again"
    );
    Ok(text.replace("127.0.0.1:5000/", &format!("{}/", lab.registry())))
}

/// One HTTP request to a frontend pod from inside its node's namespace.
fn call(lab: &Lab, pod: &Value, method: &str, path: &str, body: Option<&str>) -> Result<String> {
    let node = pod["spec"]["nodeName"].as_str().context("pod has a node")?;
    let ip = pod["status"]["podIP"].as_str().context("pod has an IP")?;
    let agent = lab.agent_by_node(node).context("node is a lab agent")?;
    let mut cmd = agent.ns.cmd("curl");
    cmd.args(["-sS", "--fail-with-body", "--max-time", "3", "-X", method]);
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "--data", b]);
    }
    let out = cmd.arg(format!("http://{ip}:3000{path}")).output()?;
    ensure!(
        out.status.success(),
        "{method} {path} on {} ({ip}): {}{}",
        pod["metadata"]["name"],
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn version_of(lab: &Lab, pod: &Value) -> Result<String> {
    let v: Value = serde_json::from_str(&call(lab, pod, "GET", "/api/version", None)?)?;
    v["version"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no version in {v}"))
}

fn titles(lab: &Lab, pod: &Value) -> Result<Vec<String>> {
    let v: Value = serde_json::from_str(&call(lab, pod, "GET", "/api/todos", None)?)?;
    let list = v
        .as_array()
        .or_else(|| v["todos"].as_array())
        .with_context(|| format!("todo list in {v}"))?;
    Ok(list
        .iter()
        .filter_map(|t| t["title"].as_str().map(str::to_owned))
        .collect())
}

#[derive(Debug, Default)]
struct Stats {
    ok: usize,
    failed: Vec<String>,
    versions: BTreeMap<String, usize>,
    max_live: usize,
}

/// Until `stop`: asks a Ready, non-terminating frontend (round robin over a list re-read
/// every 200 ms) for its version and the todo list, which must hold `title`.
fn load(lab: &Lab, title: &str, stop: &AtomicBool) -> Stats {
    let mut stats = Stats::default();
    let mut ready: Vec<Value> = Vec::new();
    let mut listed: Option<Instant> = None;
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) {
        if listed.is_none_or(|t| t.elapsed() >= Duration::from_millis(200)) {
            // A failed list keeps the previous one: that is the API, not the app.
            if let Ok(pods) = owned_pods(lab, "todo-app") {
                let live = pods.iter().filter(|p| !is_terminating(p)).count();
                stats.max_live = stats.max_live.max(live);
                ready = pods.into_iter().filter(is_ready).collect();
            }
            listed = Some(Instant::now());
        }
        if ready.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        i = i.wrapping_add(1);
        let pod = &ready[i % ready.len()];
        let result = version_of(lab, pod).and_then(|v| {
            let t = titles(lab, pod)?;
            ensure!(
                t.iter().any(|x| x == title),
                "todo list {t:?} lost {title:?}"
            );
            Ok(v)
        });
        match result {
            Ok(v) => {
                stats.ok += 1;
                *stats.versions.entry(v).or_default() += 1;
            }
            Err(e) => stats.failed.push(format!("{e:#}")),
        }
    }
    stats
}

fn steps(lab: &Lab) -> Result<()> {
    let start = Instant::now();
    lab.apply(&manifest(lab, "todo-app-deploy.yaml")?)?;
    for (owner, n) in [("kv-primary", 1), ("kv-replica", 1), ("todo-app", 3)] {
        wait_pods(lab, owner, n, LONG, &format!("{n} ready {owner}"), is_ready)?;
    }
    eprintln!(
        "FIGURE todo app cold (3 images pulled, 5 pods) apply -> all Ready: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let frontends = owned_pods(lab, "todo-app")?;
    let mut placed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for owner in ["kv-primary", "kv-replica", "todo-app"] {
        for p in owned_pods(lab, owner)? {
            placed
                .entry(p["spec"]["nodeName"].as_str().unwrap_or("?").to_owned())
                .or_default()
                .push(owner.to_owned());
        }
    }
    eprintln!("todo app placement: {placed:?}");
    // Nothing pins it: the pods spread, so some frontend finds kv-primary on another node
    // by name (cluster DNS, then the ClusterIP's cross-node route) to become Ready.
    ensure!(
        placed.len() == lab.agents.len(),
        "all on one node: {placed:?}"
    );

    // The LoadBalancer Service: port 80 on every node's address, from the hub.
    for a in &lab.agents {
        let url = format!("http://{}/api/version", a.addr);
        let out = lab
            .hub
            .cmd("curl")
            .args(["-sS", "--max-time", "5", &url])
            .output()?;
        let body = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && body.contains("\"version\""),
            "{url}: {body}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Write through one frontend; every frontend reads it back (from the replica).
    let title = format!("buy milk {}", std::process::id());
    call(
        lab,
        &frontends[0],
        "POST",
        "/api/todos",
        Some(&serde_json::json!({ "title": title }).to_string()),
    )?;
    for p in &frontends {
        wait_for(
            "the todo on every frontend",
            Duration::from_secs(30),
            || Ok(titles(lab, p)?.contains(&title).then_some(())),
        )?;
        ensure!(version_of(lab, p)? == "1", "a v1 frontend says otherwise");
    }

    let stop = AtomicBool::new(false);
    let stats = std::thread::scope(|s| -> Result<Stats> {
        let client = s.spawn(|| load(lab, &title, &stop));
        std::thread::sleep(Duration::from_secs(1));
        let rolled = (|| -> Result<()> {
            let begun = Instant::now();
            lab.apply(&manifest(lab, "todo-app-deploy-v2.yaml")?)?;
            let out = lab.baton_raw(
                &[
                    "rollout",
                    "status",
                    "deployment/todo-app",
                    "--timeout",
                    "240s",
                ],
                None,
            )?;
            ensure!(
                out.status.success(),
                "rollout status: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!(
                "FIGURE todo-app v1 -> v2 rollout (3 replicas, maxSurge 1, maxUnavailable 0, image pulled during it): {:.1} s",
                begun.elapsed().as_secs_f64()
            );
            Ok(())
        })();
        // Keep the client going through the old pods' drains.
        if rolled.is_ok() {
            std::thread::sleep(Duration::from_secs(4));
        }
        stop.store(true, Ordering::SeqCst);
        let stats = client
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
        rolled.map(|()| stats)
    })?;
    eprintln!(
        "todo rollout: {} requests ok, {} failed, versions {:?}, at most {} live frontends",
        stats.ok,
        stats.failed.len(),
        stats.versions,
        stats.max_live
    );
    ensure!(
        stats.failed.is_empty(),
        "{} failed requests during the rollout, e.g. {:?}",
        stats.failed.len(),
        &stats.failed[..stats.failed.len().min(5)]
    );
    ensure!(stats.ok >= 20, "only {} requests made", stats.ok);
    ensure!(
        stats.versions.contains_key("2"),
        "version 2 never answered: {:?}",
        stats.versions
    );
    ensure!(
        stats.max_live <= 3 + 1,
        "{} frontends at once, more than replicas + maxSurge",
        stats.max_live
    );
    let after = wait_pods(lab, "todo-app", 3, LONG, "3 ready v2 frontends", |p| {
        is_ready(p)
            && p["spec"]["containers"][0]["image"]
                .as_str()
                .is_some_and(|i| i.ends_with("todo-app:2"))
    })?;
    for p in &after {
        ensure!(
            version_of(lab, p)? == "2",
            "{} is not on v2",
            p["metadata"]["name"]
        );
        ensure!(
            titles(lab, p)?.contains(&title),
            "the todo is gone after the rollout"
        );
    }
    // The stores were not touched by the frontend's rollout.
    for owner in ["kv-primary", "kv-replica"] {
        let pods = owned_pods(lab, owner)?;
        ensure!(
            pods.len() == 1 && pods[0]["status"]["containerStatuses"][0]["restartCount"] == 0,
            "{owner} changed during the frontend rollout: {pods:?}"
        );
    }
    Ok(())
}

#[test]
fn todo_app_rolls_to_v2_without_a_failed_request() -> Result<()> {
    let lab = Lab::start("todo", 2, Broker::Embedded)?;
    let result = steps(&lab);
    if result.is_err() {
        lab.dump_logs();
    }
    result
}
