//! The chaos suite (issue 4): faults an edge fleet meets, each injected into a real fleet
//! (coordinator, broker and registry in a hub namespace, every agent a separate process in
//! its own namespace, real containers), then one shared check of what must hold afterwards
//! ([`check_invariants`]):
//! - the desired state is intact: the Deployment as applied (`get -o json`);
//! - the replica count is right: exactly `replicas` pods, all Running, serving HTTP;
//! - no container is orphaned: every process under `pids/baton/<node>/` belongs to a pod
//!   the coordinator has on that node (and descends from its container's init), and no pod
//!   directory, rootfs mount, runtime state, address or cgroup is left of any other pod;
//! - no container was restarted that should not have been: init pids recorded before the
//!   fault are unchanged and every RESTARTS count is 0.
//!
//! Each scenario is its own `#[test]` with its own lab, so they run in parallel. Nothing is
//! timed by assertion: conditions are polled with generous deadlines and the figures
//! (time to converge, restarts, ...) are printed. When every scenario of this file has
//! finished, the table of outcomes is printed (`--nocapture` shows it); docs/reliability.md
//! holds a copy.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use baton_e2e::fleet::{
    self, cgroup_dir, cgroup_procs, container_state, http_info, is_ready, is_terminating, node_of,
    owned_pods, text as s, uid, uids, wait_pods, EchoDeployment,
};
use baton_e2e::{items, wait_for, Broker, Lab};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(150);
/// Every lab agent runs with `--heartbeat-secs 1`.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The Deployment's name and its container's name in every scenario.
const DEPLOYMENT: &str = "web";
const CONTAINER: &str = "echo";

fn web(registry: &str, replicas: usize, version: u32) -> String {
    EchoDeployment::new(replicas)
        .name(DEPLOYMENT)
        .container(CONTAINER)
        .tag(version)
        .cpu_request("20m")
        .yaml(registry)
}

fn image(registry: &str, version: u32) -> String {
    format!("{registry}/baton/http-echo:{version}")
}

// ----- small readers -------------------------------------------------------------------

fn restarts(p: &Value) -> u64 {
    p["status"]["containerStatuses"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| c["restartCount"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

fn web_pods(lab: &Lab) -> Result<Vec<Value>> {
    owned_pods(lab, DEPLOYMENT)
}

fn node_ready(lab: &Lab, name: &str) -> Result<bool> {
    Ok(lab.get_json(&["get", "node", name])?["status"]["ready"] == true)
}

/// The init pid of a pod's container, from the runtime state on its node.
fn init_pid(lab: &Lab, node: &str, uid: &str) -> Result<u32> {
    fleet::init_pid(lab, node, uid, CONTAINER)
}

/// Whether the runtime recorded the container of a pod as started (`running`).
fn recorded_started(lab: &Lab, node: &str, uid: &str) -> bool {
    container_state(lab, node, uid, CONTAINER).is_ok_and(|v| v["status"] == "running")
}

/// Init pids of every container that runs its command (started, init in its cgroup), by
/// pod uid, on `node`: what a restarted agent must adopt.
fn running_inits(lab: &Lab, node: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for uid in subdirs(&cgroup_dir("pids", node)) {
        let procs = cgroup_procs(&cgroup_dir("pids", node).join(&uid).join(CONTAINER));
        if let Ok(pid) = init_pid(lab, node, &uid) {
            if procs.contains(&pid)
                && exe_name(pid).is_some_and(|e| e != "baton-agent")
                && recorded_started(lab, node, &uid)
            {
                out.insert(uid, pid);
            }
        }
    }
    out
}

fn subdirs(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// Every process in any of `node`'s pod cgroups (pids controller), by pod uid.
fn node_procs(node: &str) -> BTreeMap<String, Vec<u32>> {
    let root = cgroup_dir("pids", node);
    let mut out = BTreeMap::new();
    for uid in subdirs(&root) {
        let mut pids = cgroup_procs(&root.join(&uid));
        for c in subdirs(&root.join(&uid)) {
            pids.extend(cgroup_procs(&root.join(&uid).join(c)));
        }
        if !pids.is_empty() {
            out.insert(uid, pids);
        }
    }
    out
}

fn exe_name(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Whether `pid` is `init` or one of its descendants; `None` if it vanished meanwhile.
fn descends_from(pid: u32, init: u32) -> Option<bool> {
    let mut cur = pid;
    for _ in 0..64 {
        if cur == init {
            return Some(true);
        }
        match parent_of(cur) {
            Some(0) | Some(1) => return Some(false),
            Some(p) => cur = p,
            None => return if cur == pid { None } else { Some(false) },
        }
    }
    Some(false)
}

// ----- the invariants ------------------------------------------------------------------

/// What a scenario expects once the fleet has converged.
#[derive(Clone, Debug, Default)]
struct Expected {
    replicas: usize,
    /// The container image of the Deployment's template, as last applied.
    image: String,
    /// Container init pids recorded before the fault, by pod uid: these pods must still
    /// exist with the very same process.
    pinned: BTreeMap<String, u32>,
    /// Pods deleted during the scenario (scaled away, rolled out, evicted): nothing of them
    /// may be left on any node.
    gone: BTreeSet<String>,
}

/// A violation that waiting cannot heal (a restarted container): stops polling at once.
#[derive(Debug)]
struct Broken(String);

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Broken {}

fn broken(msg: String) -> anyhow::Error {
    anyhow::Error::new(Broken(msg))
}

/// Checks every invariant once; returns the pods on success. Errors are either "not yet"
/// (converging) or [`Broken`].
fn check_invariants(lab: &Lab, exp: &Expected) -> Result<Vec<Value>> {
    // The desired state as applied.
    let deployments = items(&lab.get_json(&["get", "deployments"])?);
    ensure!(
        deployments.len() == 1 && deployments[0]["metadata"]["name"] == DEPLOYMENT,
        "deployments: {deployments:?}"
    );
    let d = &deployments[0];
    ensure!(
        d["spec"]["replicas"].as_u64() == Some(exp.replicas as u64),
        "deployment replicas {} != {}",
        d["spec"]["replicas"],
        exp.replicas
    );
    let tmpl_image = s(&d["spec"]["template"]["spec"]["containers"][0]["image"]);
    ensure!(
        tmpl_image == exp.image,
        "template image {tmpl_image} != {}",
        exp.image
    );
    for a in &lab.agents {
        ensure!(node_ready(lab, &a.name)?, "node {} not Ready", a.name);
    }

    // The replica count: exactly `replicas` pods of the template, Ready, never restarted.
    let pods = lab.pods()?;
    for p in &pods {
        if restarts(p) > 0 {
            return Err(broken(format!(
                "pod {} reports {} restart(s)",
                s(&p["metadata"]["name"]),
                restarts(p)
            )));
        }
    }
    ensure!(
        pods.iter().all(|p| p["metadata"]["owner"] == DEPLOYMENT),
        "pods not owned by the deployment: {pods:?}"
    );
    ensure!(
        pods.len() == exp.replicas,
        "{} pods, want {}",
        pods.len(),
        exp.replicas
    );
    let mut known: BTreeMap<String, &Value> = BTreeMap::new();
    for p in &pods {
        ensure!(
            is_ready(p),
            "pod {} not ready: {}",
            p["metadata"]["name"],
            p["status"]
        );
        ensure!(
            s(&p["spec"]["containers"][0]["image"]) == exp.image,
            "pod {} runs {}",
            p["metadata"]["name"],
            p["spec"]["containers"][0]["image"]
        );
        ensure!(
            lab.agent_by_node(&node_of(p)).is_some(),
            "pod {} on {:?}",
            p["metadata"]["name"],
            node_of(p)
        );
        ensure!(
            known.insert(uid(p), p).is_none(),
            "duplicate uid {}",
            uid(p)
        );
    }
    for u in &exp.gone {
        ensure!(!known.contains_key(u), "deleted pod {u} is listed again");
    }

    // No container restarted that should not have been.
    for (u, pid) in &exp.pinned {
        let Some(p) = known.get(u) else {
            return Err(broken(format!("pod {u} (init {pid}) is gone")));
        };
        let now = init_pid(lab, &node_of(p), u)?;
        if now != *pid {
            return Err(broken(format!(
                "pod {} restarted: init {pid} -> {now}",
                s(&p["metadata"]["name"])
            )));
        }
    }

    // Per node: what runs and what is on disk matches the coordinator's pods exactly.
    for a in &lab.agents {
        let here: BTreeMap<&String, &&Value> =
            known.iter().filter(|(_, p)| node_of(p) == a.name).collect();
        for ctrl in ["pids", "memory", "cpu"] {
            for u in subdirs(&cgroup_dir(ctrl, &a.name)) {
                if !here.contains_key(&u) {
                    bail!(
                        "orphan: cgroup {ctrl}/baton/{}/{u} of a pod the coordinator does not have there (processes {:?})",
                        a.name,
                        node_procs(&a.name).get(&u)
                    );
                }
            }
        }
        for (u, pids) in node_procs(&a.name) {
            ensure!(
                here.contains_key(&u),
                "orphan processes {pids:?} of pod {u} on {}",
                a.name
            );
        }
        for u in subdirs(&a.data_dir.join("pods")) {
            ensure!(
                here.contains_key(&u),
                "orphan pod directory {u} on {}",
                a.name
            );
        }
        for c in subdirs(&baton_e2e::fleet::runtime_containers(lab, &a.name)) {
            ensure!(
                here.keys().any(|u| c == format!("{u}-{CONTAINER}")),
                "orphan runtime state {c} on {}",
                a.name
            );
        }
        let pods_prefix = format!("{}/", a.data_dir.join("pods").display());
        let mounts = std::fs::read_to_string("/proc/mounts")?;
        for m in mounts.lines() {
            let Some(point) = m.split_whitespace().nth(1) else {
                continue;
            };
            if let Some(rest) = point.strip_prefix(&pods_prefix) {
                let u = rest.split('/').next().unwrap_or_default().to_owned();
                ensure!(here.contains_key(&u), "orphan mount {point} on {}", a.name);
            }
        }
        let mut addrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for dir in subdirs(&a.data_dir.join("net")) {
            let dir = a.data_dir.join("net").join(dir);
            for f in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let ip = f.file_name().to_string_lossy().into_owned();
                if ip.parse::<std::net::Ipv4Addr>().is_ok() {
                    let owner = std::fs::read_to_string(f.path()).unwrap_or_default();
                    addrs.entry(owner).or_default().push(ip);
                }
            }
        }
        for (owner, ips) in &addrs {
            ensure!(
                here.contains_key(owner),
                "orphan pod address {ips:?} of {owner} on {}",
                a.name
            );
        }

        // Each pod runs exactly once, here: its init is the container's process (exec'd,
        // not a half-created container), every process in its cgroup descends from it, and
        // it serves HTTP at the address the coordinator shows.
        for (u, p) in &here {
            let name = s(&p["metadata"]["name"]);
            let pid = init_pid(lab, &a.name, u)?;
            let cg = cgroup_dir("pids", &a.name).join(u).join(CONTAINER);
            let procs = cgroup_procs(&cg);
            ensure!(
                procs.contains(&pid),
                "pod {name}: init {pid} not in its cgroup {procs:?}"
            );
            ensure!(
                exe_name(pid).is_some_and(|e| e != "baton-agent"),
                "pod {name}: init {pid} never exec'd its command ({:?})",
                exe_name(pid)
            );
            for q in &procs {
                ensure!(
                    descends_from(*q, pid) != Some(false),
                    "pod {name}: process {q} in its cgroup is not under init {pid}"
                );
            }
            for other in lab.agents.iter().filter(|o| o.name != a.name) {
                ensure!(
                    !node_procs(&other.name).contains_key(*u),
                    "pod {name} also runs on {}",
                    other.name
                );
            }
            let ip = s(&p["status"]["podIP"]);
            ensure!(
                addrs.get(*u).is_some_and(|ips| ips == &vec![ip.clone()]),
                "pod {name}: address {ip} vs allocations {:?}",
                addrs.get(*u)
            );
            let body = http_info(lab, &a.name, &ip, Duration::from_secs(3))?;
            ensure!(
                body.contains(&format!("hostname={name}")),
                "pod {name} answered {body:?}"
            );
        }
    }
    Ok(pods)
}

/// Polls [`check_invariants`] until it holds (or is broken), then checks once more a few
/// heartbeats later: a late restart or orphan fails too. Returns the time it took to hold
/// first, and the pods.
fn converge(lab: &Lab, exp: &Expected) -> Result<(Duration, Vec<Value>)> {
    let start = Instant::now();
    let mut last;
    loop {
        match check_invariants(lab, exp) {
            Ok(_) => break,
            Err(e) if e.downcast_ref::<Broken>().is_some() => return Err(e),
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() > LONG {
            bail!("invariants do not hold after {LONG:?}: {last}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let took = start.elapsed();
    std::thread::sleep(3 * HEARTBEAT);
    let pods = check_invariants(lab, exp).context("invariants held, then broke")?;
    Ok((took, pods))
}

/// Waits for `n` Ready pods of the deployment; returns them.
fn settled(lab: &Lab, n: usize) -> Result<Vec<Value>> {
    wait_pods(
        lab,
        DEPLOYMENT,
        n,
        LONG,
        &format!("{n} ready pods"),
        is_ready,
    )
}

/// Init pids of the given pods, by uid.
fn pins(lab: &Lab, pods: &[Value]) -> Result<BTreeMap<String, u32>> {
    pods.iter()
        .map(|p| Ok((uid(p), init_pid(lab, &node_of(p), &uid(p))?)))
        .collect()
}

// ----- the outcome table ---------------------------------------------------------------

/// One row of the outcome table.
struct Row {
    scenario: &'static str,
    result: String,
    converge: String,
    restarts: String,
    figures: String,
}

/// What a scenario measured, for its row.
#[derive(Default)]
struct Figures {
    converge: Option<Duration>,
    restarts: u64,
    notes: Vec<String>,
}

impl Figures {
    fn note(&mut self, n: impl Into<String>) {
        let n = n.into();
        println!("FIGURE {n}");
        self.notes.push(n);
    }
}

static ROWS: Mutex<Vec<Row>> = Mutex::new(Vec::new());
/// How many `#[test]`s this file has: the last to finish prints the whole table.
const SCENARIOS: usize = 8;

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | result | converged after | restarts | key figures |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.scenario, r.result, r.converge, r.restarts, r.figures
        ));
    }
    out
}

fn record(row: Row) {
    let mut rows = ROWS.lock().unwrap_or_else(|e| e.into_inner());
    println!("{}", table(std::slice::from_ref(&row)));
    rows.push(row);
    if rows.len() == SCENARIOS {
        rows.sort_by_key(|r| r.scenario);
        println!("\nchaos suite outcome:\n\n{}", table(&rows));
    }
}

/// Starts a lab, runs a scenario in it, dumps the logs if it fails, records its row.
fn scenario(
    name: &'static str,
    start: impl FnOnce() -> Result<Lab>,
    body: impl FnOnce(&mut Lab, &mut Figures) -> Result<()>,
) -> Result<()> {
    let t = Instant::now();
    let mut fig = Figures::default();
    let result = start().and_then(|mut lab| {
        let r = body(&mut lab, &mut fig);
        if r.is_err() {
            lab.dump_logs();
        }
        r
    });
    let result_text = match &result {
        Ok(()) => format!("pass ({:.0} s)", t.elapsed().as_secs_f64()),
        Err(e) => {
            let msg = format!("{e:#}").replace('|', "/").replace('\n', " ");
            format!("FAIL: {}", msg.chars().take(200).collect::<String>())
        }
    };
    record(Row {
        scenario: name,
        result: result_text,
        converge: fig
            .converge
            .map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        restarts: fig.restarts.to_string(),
        figures: fig.notes.join("; "),
    });
    result
}

fn finish(fig: &mut Figures, took: Duration, pods: &[Value]) {
    fig.converge = Some(took);
    fig.restarts = pods.iter().map(restarts).sum();
}

/// [`converge`], then [`finish`]: the end of a scenario with nothing more to check.
fn converge_and_finish(lab: &Lab, fig: &mut Figures, exp: &Expected) -> Result<()> {
    let (took, pods) = converge(lab, exp)?;
    finish(fig, took, &pods);
    Ok(())
}

/// xorshift64: reproducible "random" fault points without a dependency.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()))
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

// ----- 1. agent kill -9 mid-deploy -----------------------------------------------------

#[test]
fn s1_agent_kill_9_mid_deploy() -> Result<()> {
    scenario(
        "1 agent kill -9 mid-deploy",
        || Lab::start("chk", 1, Broker::Embedded),
        agent_kill_mid_deploy,
    )
}

/// Polls every few milliseconds until `cond` holds, then kills agent `i`.
fn kill_when(lab: &mut Lab, i: usize, what: &str, cond: impl Fn(&Lab) -> bool) -> Result<()> {
    let start = Instant::now();
    while !cond(lab) {
        ensure!(start.elapsed() < LONG, "never saw {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    lab.kill_agent(i);
    Ok(())
}

fn agent_kill_mid_deploy(lab: &mut Lab, fig: &mut Figures) -> Result<()> {
    let reg = lab.registry();
    let node = lab.agents[0].name.clone();
    let desired = lab.agents[0].data_dir.join("desired.bin");
    lab.apply(&web(&reg, 4, 1))?;

    // First kill: the agent has persisted its new desired state and is pulling.
    kill_when(lab, 0, "the desired state persisted", |_| desired.exists())?;
    let up = running_inits(lab, &node).len();
    fig.note(format!("kill 1 with {up}/4 containers up"));

    // Second kill: the restarted agent is starting pods, some already run.
    lab.spawn_agent(0)?;
    kill_when(lab, 0, "two pod cgroups populated", |_| {
        node_procs(&node).len() >= 2
    })?;
    let partial = node_procs(&node).len();
    // Fully running containers must be adopted by the next agent, not restarted.
    let pinned = running_inits(lab, &node);
    fig.note(format!(
        "kill 2 with {partial}/4 pod cgroups populated, {} containers running",
        pinned.len()
    ));

    // Third kill: during the next agent's start-up (adoption and clean-up).
    let mut rng = Rng::new();
    lab.spawn_agent(0)?;
    std::thread::sleep(Duration::from_millis(rng.below(300)));
    lab.kill_agent(0);
    let pinned: BTreeMap<String, u32> = running_inits(lab, &node)
        .into_iter()
        .filter(|(u, pid)| pinned.get(u) == Some(pid))
        .collect();
    fig.note(format!(
        "kill 3 during start-up, {} adoptable containers pinned",
        pinned.len()
    ));

    lab.start_agent(0)?;
    let exp = Expected {
        replicas: 4,
        image: image(&reg, 1),
        pinned,
        ..Expected::default()
    };
    converge_and_finish(lab, fig, &exp)
}

// ----- 2. coordinator restart mid-rollout ----------------------------------------------

#[test]
fn s2_coordinator_restart_mid_rollout() -> Result<()> {
    scenario(
        "2 coordinator kill -9 mid-rollout",
        || Lab::start("chr", 2, Broker::Embedded),
        coordinator_restart_mid_rollout,
    )
}

#[derive(Default, Debug)]
struct RolloutWatch {
    /// Most non-terminating pods seen at once (the API's view).
    max_live: usize,
    /// Fewest Ready non-terminating pods seen at once.
    min_ready: usize,
    /// Most pods with running processes seen at once, on all nodes.
    max_containers: usize,
    polls: usize,
    api_errors: usize,
}

/// The deployment's pods as the API shows them, read from the hub namespace directly (the
/// watcher thread cannot borrow the lab while the test restarts the coordinator).
fn api_pods(hub: &str, admin_conf: &Path) -> Result<Vec<Value>> {
    let out = baton_e2e::sh(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{hub}"))
            .arg("--")
            .arg(baton_e2e::bin("baton"))
            .args(["get", "pods", "-o", "json"])
            .env("BATON_CONFIG", admin_conf)
            .env_remove("BATON_TOKEN")
            .env("BATON_SERVER", "http://127.0.0.1:7474"),
    )?;
    Ok(items(&serde_json::from_slice(&out.stdout)?)
        .into_iter()
        .filter(|p| p["metadata"]["owner"] == DEPLOYMENT)
        .collect())
}

fn watch_rollout(hub: &str, conf: &Path, nodes: &[String], stop: &AtomicBool) -> RolloutWatch {
    let mut w = RolloutWatch {
        min_ready: usize::MAX,
        ..Default::default()
    };
    while !stop.load(Ordering::SeqCst) {
        match api_pods(hub, conf) {
            Ok(pods) => {
                w.polls += 1;
                w.max_live = w
                    .max_live
                    .max(pods.iter().filter(|p| !is_terminating(p)).count());
                w.min_ready = w.min_ready.min(pods.iter().filter(|p| is_ready(p)).count());
            }
            Err(_) => w.api_errors += 1,
        }
        let containers: usize = nodes.iter().map(|n| node_procs(n).len()).sum();
        w.max_containers = w.max_containers.max(containers);
        std::thread::sleep(Duration::from_millis(150));
    }
    w
}

/// `baton rollout status` to completion; fails if it exits non-zero.
fn rollout_status(lab: &Lab) -> Result<()> {
    let out = lab.baton_raw(
        &["rollout", "status", "deployment/web", "--timeout", "150s"],
        None,
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success() && stdout.contains("successfully rolled out"),
        "rollout status ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn coordinator_restart_mid_rollout(lab: &mut Lab, fig: &mut Figures) -> Result<()> {
    let reg = lab.registry();
    // 25% of 4: maxSurge rounds up to 1, maxUnavailable down to 1.
    let (replicas, max_surge, max_unavailable) = (4, 1, 1);
    lab.apply(&web(&reg, replicas, 1))?;
    let v1 = uids(&settled(lab, replicas)?);

    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let watcher = {
        let (hub, conf, stop) = (lab.hub.0.clone(), lab.admin_conf(), stop.clone());
        let nodes: Vec<String> = lab.agents.iter().map(|a| a.name.clone()).collect();
        std::thread::spawn(move || watch_rollout(&hub, &conf, &nodes, &stop))
    };
    let result = (|| -> Result<(Duration, Vec<Value>)> {
        lab.apply(&web(&reg, replicas, 2))?;
        let started = Instant::now();
        // Mid-way: the first new pod exists and the old ones still run. A rollout of
        // pulled images takes about a second, so poll without pause, then kill at a
        // random point in the next 300 ms.
        let deadline = Instant::now() + LONG;
        while web_pods(lab)?.iter().all(|p| v1.contains(&uid(p))) {
            ensure!(Instant::now() < deadline, "the rollout never began");
        }
        std::thread::sleep(Duration::from_millis(Rng::new().below(300)));
        let pods = web_pods(lab)?;
        let new = pods.iter().filter(|p| !v1.contains(&uid(p))).count();
        let old = pods
            .iter()
            .filter(|p| v1.contains(&uid(p)) && !is_terminating(p))
            .count();
        lab.kill_coordinator();
        fig.note(format!(
            "coordinator killed {:.1} s into the rollout ({new} new, {old} old live pods)",
            started.elapsed().as_secs_f64()
        ));
        std::thread::sleep(Duration::from_secs(1));
        lab.start_coordinator()?;
        rollout_status(lab)?;
        fig.note(format!(
            "rollout complete {:.1} s after it began",
            started.elapsed().as_secs_f64()
        ));
        let exp = Expected {
            replicas,
            image: image(&reg, 2),
            gone: v1.clone(),
            ..Expected::default()
        };
        converge(lab, &exp)
    })();
    stop.store(true, Ordering::SeqCst);
    let w = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("watcher panicked"))?;
    let (took, pods) = result?;
    fig.note(format!(
        "at most {} live pods (bound {}), at least {} ready (bound {}), at most {} pods with processes, {} polls",
        w.max_live,
        replicas + max_surge,
        w.min_ready,
        replicas - max_unavailable,
        w.max_containers,
        w.polls
    ));
    ensure!(w.polls >= 5, "the watcher saw too little: {w:?}");
    ensure!(
        w.max_live <= replicas + max_surge,
        "{} live pods at once, more than replicas + maxSurge: {w:?}",
        w.max_live
    );
    ensure!(
        w.min_ready >= replicas - max_unavailable,
        "only {} ready pods at once, fewer than replicas - maxUnavailable: {w:?}",
        w.min_ready
    );
    finish(fig, took, &pods);
    Ok(())
}

// ----- 3. broker restarts --------------------------------------------------------------

#[test]
fn s3a_mosquitto_restart() -> Result<()> {
    scenario(
        "3a Mosquitto kill -9, scale while down, restart",
        || Lab::start("chm", 2, Broker::Mosquitto),
        |lab, fig| broker_restart(lab, fig, true),
    )
}

#[test]
fn s3b_embedded_broker_restart() -> Result<()> {
    scenario(
        "3b embedded broker (coordinator) kill -9 and restart",
        || Lab::start("che", 2, Broker::Embedded),
        |lab, fig| broker_restart(lab, fig, false),
    )
}

fn connects(lab: &Lab, i: usize) -> usize {
    lab.agent_log(i).matches("connected to broker").count()
}

fn broker_restart(lab: &mut Lab, fig: &mut Figures, mosquitto: bool) -> Result<()> {
    let reg = lab.registry();
    lab.apply(&web(&reg, 2, 1))?;
    let pods = settled(lab, 2)?;
    let pinned = pins(lab, &pods)?;
    let agent_pids: Vec<Option<u32>> = lab
        .agents
        .iter()
        .map(|a| a.proc.as_ref().and_then(|p| p.pid()))
        .collect();
    let before: Vec<usize> = (0..lab.agents.len()).map(|i| connects(lab, i)).collect();

    if mosquitto {
        // The coordinator outlives the broker: a change made while the broker is down must
        // still reach the node once it is back.
        if let Some(mut p) = lab.mosquitto.take() {
            p.kill();
        }
        lab.baton(&["scale", "deployment", DEPLOYMENT, "--replicas", "3"])?;
        std::thread::sleep(Duration::from_secs(2));
        lab.restart_mosquitto(Duration::ZERO)?;
    } else {
        lab.kill_coordinator();
        std::thread::sleep(Duration::from_secs(2));
        lab.start_coordinator()?;
    }
    let back = Instant::now();
    // Nobody restarts the agents: they reconnect on their own.
    wait_for("every agent to reconnect", LONG, || {
        Ok((0..lab.agents.len())
            .all(|i| connects(lab, i) > before[i])
            .then_some(()))
    })?;
    fig.note(format!(
        "agents reconnected {:.1} s after the broker was back",
        back.elapsed().as_secs_f64()
    ));
    for (i, a) in lab.agents.iter_mut().enumerate() {
        ensure!(
            a.proc.as_mut().is_some_and(|p| p.is_running())
                && a.proc.as_ref().and_then(|p| p.pid()) == agent_pids[i],
            "agent {} is not the same process",
            a.name
        );
    }
    // The path works end to end again: a scale-up reaches a node and runs.
    if !mosquitto {
        lab.baton(&["scale", "deployment", DEPLOYMENT, "--replicas", "3"])?;
    }
    let exp = Expected {
        replicas: 3,
        image: image(&reg, 1),
        pinned,
        ..Expected::default()
    };
    converge_and_finish(lab, fig, &exp)
}

// ----- 4. a long partition of one node -------------------------------------------------

/// Scaled timers. With the defaults (heartbeat every 5 s, NotReady after 20 s, eviction
/// after 60 s NotReady) a 10-minute partition spans 120 heartbeats, 30 heartbeat timeouts
/// and 10 eviction timeouts. Here agents beat every 1 s, the coordinator runs with
/// `--heartbeat-timeout 3s --pod-eviction-timeout 4s`, and the partition lasts 40 s: 40
/// heartbeats, 13 heartbeat timeouts, 10 eviction timeouts (time scaled by 15).
const PARTITION: Duration = Duration::from_secs(40);

#[test]
fn s4_ten_minute_partition_scaled() -> Result<()> {
    scenario(
        "4 partition of one node (10 min, scaled to 40 s)",
        || {
            Lab::start_with(
                "chp",
                2,
                Broker::Embedded,
                &["--heartbeat-timeout", "3s", "--pod-eviction-timeout", "4s"],
            )
        },
        partition,
    )
}

fn partition(lab: &mut Lab, fig: &mut Figures) -> Result<()> {
    let reg = lab.registry();
    let (replicas, max_surge) = (4, 1);
    lab.apply(&web(&reg, replicas, 1))?;
    let pods = settled(lab, replicas)?;
    let (cut, kept) = (lab.agents[0].name.clone(), lab.agents[1].name.clone());
    let on = |n: &str| -> Vec<Value> { pods.iter().filter(|p| node_of(p) == n).cloned().collect() };
    let (cut_pods, kept_pods) = (on(&cut), on(&kept));
    ensure!(
        !cut_pods.is_empty() && !kept_pods.is_empty(),
        "replicas not spread over both nodes"
    );
    let kept_pins = pins(lab, &kept_pods)?;
    let cut_uids = uids(&cut_pods);
    let cut_procs = node_procs(&cut);
    let agent_pid = lab.agents[0].proc.as_ref().and_then(|p| p.pid());

    lab.set_link(0, false)?;
    let t0 = Instant::now();
    let (mut not_ready, mut rescheduled) = (None, None);
    while t0.elapsed() < PARTITION {
        // The cut-off agent keeps running exactly what it had, the same processes.
        ensure!(
            node_procs(&cut) == cut_procs,
            "the partitioned node's containers changed: {cut_procs:?} -> {:?}",
            node_procs(&cut)
        );
        ensure!(
            lab.agents[0].proc.as_mut().is_some_and(|p| p.is_running()),
            "the partitioned agent died"
        );
        if not_ready.is_none() && !node_ready(lab, &cut)? {
            not_ready = Some(t0.elapsed());
        }
        if rescheduled.is_none() {
            let now = web_pods(lab)?;
            if now.len() == replicas && now.iter().all(|p| node_of(p) == kept && is_ready(p)) {
                rescheduled = Some(t0.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let secs =
        |d: Option<Duration>| d.map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    fig.note(format!(
        "NotReady after {}, all replicas on the other node after {}",
        secs(not_ready),
        secs(rescheduled)
    ));
    ensure!(rescheduled.is_some(), "no replacement during the partition");

    // The link returns. The coordinator never shows more than replicas + maxSurge live
    // pods for longer than one heartbeat; the stale copies on the returning node go.
    lab.set_link(0, true)?;
    let t1 = Instant::now();
    let bound = replicas + max_surge;
    let (mut over_since, mut longest_over) = (None::<Instant>, Duration::ZERO);
    let (mut max_live, mut ready_again, mut stale_gone, mut physical_ok) = (0, None, None, None);
    loop {
        let live = web_pods(lab)?.iter().filter(|p| !is_terminating(p)).count();
        max_live = max_live.max(live);
        if live > bound {
            let since = *over_since.get_or_insert_with(Instant::now);
            longest_over = longest_over.max(since.elapsed());
        } else {
            over_since = None;
        }
        ensure!(
            longest_over <= HEARTBEAT,
            "{live} live pods, more than replicas + maxSurge = {bound}, for {longest_over:?}"
        );
        if ready_again.is_none() && node_ready(lab, &cut)? {
            ready_again = Some(t1.elapsed());
        }
        let containers: usize = lab.agents.iter().map(|a| node_procs(&a.name).len()).sum();
        if physical_ok.is_none() && containers <= bound {
            physical_ok = Some(t1.elapsed());
        }
        if stale_gone.is_none() && node_procs(&cut).is_empty() {
            stale_gone = Some(t1.elapsed());
        }
        if stale_gone.is_some() && ready_again.is_some() {
            break;
        }
        ensure!(t1.elapsed() < LONG, "the returning node did not settle");
        std::thread::sleep(Duration::from_millis(200));
    }
    fig.note(format!(
        "after the link returned: node Ready after {}, running copies <= replicas + maxSurge after {}, stale copies stopped after {}; API showed at most {max_live} live pods",
        secs(ready_again),
        secs(physical_ok),
        secs(stale_gone)
    ));
    ensure!(
        lab.agents[0].proc.as_ref().and_then(|p| p.pid()) == agent_pid,
        "the partitioned agent was restarted"
    );
    let exp = Expected {
        replicas,
        image: image(&reg, 1),
        pinned: kept_pins,
        gone: cut_uids,
    };
    converge_and_finish(lab, fig, &exp)
}

// ----- 5. a node rebooted offline ------------------------------------------------------

#[test]
fn s5_node_rebooted_offline() -> Result<()> {
    scenario(
        "5 node rebooted offline (scaled down meanwhile)",
        // This node is offline on purpose and must keep its pods: no eviction meanwhile.
        || {
            Lab::start_with(
                "cho",
                1,
                Broker::Embedded,
                &["--pod-eviction-timeout", "10m"],
            )
        },
        rebooted_offline,
    )
}

/// What a reboot takes away besides processes: rootfs mounts, pod network namespaces and
/// veths, the node bridge, empty cgroups. Files on disk (desired state, runtime state,
/// pod directories, addresses) stay, as they would.
fn wipe_volatile(lab: &Lab, i: usize) -> Result<()> {
    let a = &lab.agents[i];
    let pods_prefix = format!("{}/", a.data_dir.join("pods").display());
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    for m in mounts.lines() {
        if let Some(point) = m.split_whitespace().nth(1) {
            if point.starts_with(&pods_prefix) {
                baton_e2e::sh(Command::new("umount").args(["-l", point]))?;
            }
        }
    }
    let links = baton_e2e::sh(Command::new("ip").args(["-n", &a.ns.0, "-o", "link", "show"]))?;
    for l in String::from_utf8_lossy(&links.stdout).lines() {
        let Some(name) = l
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
        else {
            continue;
        };
        if let Some(h) = name.strip_prefix("bv") {
            let _ = Command::new("ip")
                .args(["netns", "del", &format!("bt-{h}")])
                .output();
            let _ = Command::new("ip")
                .args(["-n", &a.ns.0, "link", "del", name])
                .output();
        } else if name.starts_with("bt-") {
            let _ = Command::new("ip")
                .args(["-n", &a.ns.0, "link", "del", name])
                .output();
        }
    }
    for ctrl in ["pids", "memory", "cpu"] {
        let root = cgroup_dir(ctrl, &a.name);
        for u in subdirs(&root) {
            for c in subdirs(&root.join(&u)) {
                let _ = std::fs::remove_dir(root.join(&u).join(c));
            }
            let _ = std::fs::remove_dir(root.join(&u));
        }
    }
    Ok(())
}

fn rebooted_offline(lab: &mut Lab, fig: &mut Figures) -> Result<()> {
    let reg = lab.registry();
    lab.apply(&web(&reg, 2, 1))?;
    let pods = settled(lab, 2)?;
    let uids = uids(&pods);
    let name = lab.agents[0].name.clone();
    let old = node_procs(&name);

    // Power off: the agent and every container process die at once.
    lab.kill_agent(0);
    for pid in old.values().flatten() {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    wait_for("the containers to die", LONG, || {
        Ok(node_procs(&name).is_empty().then_some(()))
    })?;
    wipe_volatile(lab, 0)?;

    // Power on with no network: the pods come back from the persisted desired state.
    lab.set_link(0, false)?;
    let boot = Instant::now();
    lab.spawn_agent(0)?;
    wait_for("both pods serving again, offline", LONG, || {
        let now = node_procs(&name);
        if now.keys().cloned().collect::<BTreeSet<_>>() != uids {
            bail!("pods running: {:?}", now.keys());
        }
        for (u, pids) in &now {
            ensure!(
                pids.iter().all(|p| !old[u].contains(p)),
                "old processes of {u}"
            );
            let pid = init_pid(lab, &name, u)?;
            ensure!(
                exe_name(pid).is_some_and(|e| e != "baton-agent"),
                "{u} not exec'd"
            );
        }
        Ok(Some(()))
    })?;
    fig.note(format!(
        "pods running again {:.1} s after an offline boot",
        boot.elapsed().as_secs_f64()
    ));
    let offline_pins = running_inits(lab, &name);

    // While the node is still offline, the desired state changes: a scale-down the node can
    // only learn about when it is back, and must then obey over its persisted state.
    lab.baton(&["scale", "deployment", DEPLOYMENT, "--replicas", "1"])?;
    let kept = wait_for("the API to keep one pod", LONG, || {
        let pods = web_pods(lab)?;
        Ok((pods.len() == 1).then(|| uid(&pods[0])))
    })?;
    ensure!(uids.contains(&kept), "the kept pod {kept} is a new one");

    lab.set_link(0, true)?;
    let exp = Expected {
        replicas: 1,
        image: image(&reg, 1),
        // The container started offline is the one the coordinator then sees.
        pinned: offline_pins
            .into_iter()
            .filter(|(u, _)| *u == kept)
            .collect(),
        gone: uids.iter().filter(|u| **u != kept).cloned().collect(),
    };
    let (took, pods) = converge(lab, &exp)?;
    fig.note(format!(
        "after the link returned: the scale-down made offline applied and the kept pod seen after {:.1} s",
        took.as_secs_f64()
    ));
    finish(fig, took, &pods);
    Ok(())
}

// ----- 6. power loss during the state write --------------------------------------------

#[test]
fn s6_power_loss_during_state_writes() -> Result<()> {
    scenario(
        "6 agent kill -9 at random points while the desired state changes (10x)",
        || Lab::start("chw", 1, Broker::Embedded),
        power_loss,
    )
}

/// Checks the persisted desired state file the way the agent does (magic: `BTN5` as this
/// version writes it, `BTNS` as 0.1 did; length, FNV-1a checksum) and returns its generation
/// (the first postcard varint of the body, in both shapes).
fn state_file_generation(path: &Path) -> Result<u64> {
    let b = std::fs::read(path)?;
    ensure!(
        b.len() >= 12 && matches!(&b[..4], b"BTN5" | b"BTNS"),
        "bad header: {:?}",
        &b[..b.len().min(4)]
    );
    let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
    ensure!(
        b.len() == len + 12,
        "torn: {} bytes, header says {len}",
        b.len() - 12
    );
    let body = &b[8..8 + len];
    let sum = body.iter().fold(0x811c_9dc5u32, |h, x| {
        (h ^ u32::from(*x)).wrapping_mul(0x0100_0193)
    });
    ensure!(
        sum.to_le_bytes() == b[8 + len..],
        "checksum mismatch: torn or corrupt"
    );
    let mut gen = 0u64;
    for (i, x) in body.iter().take(10).enumerate() {
        gen |= u64::from(x & 0x7f) << (7 * i);
        if x & 0x80 == 0 {
            break;
        }
    }
    Ok(gen)
}

fn power_loss(lab: &mut Lab, fig: &mut Figures) -> Result<()> {
    let reg = lab.registry();
    let name = lab.agents[0].name.clone();
    let state = lab.agents[0].data_dir.join("desired.bin");
    lab.apply(&web(&reg, 1, 1))?;
    settled(lab, 1)?;
    let mut rng = Rng::new();
    // Pods the coordinator showed Running before a kill: if they survive the scenario,
    // they must be the same processes (adopted, never restarted).
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut replicas = 1;
    let mut generations = Vec::new();
    for round in 0..10 {
        replicas = 1 + (round * 3 + 1) % 4; // 2 4 3 1 2 4 3 1 2 4: every change, 1..4
        for p in web_pods(lab)?.iter().filter(|p| is_ready(p)) {
            if let Ok(pid) = init_pid(lab, &name, &uid(p)) {
                seen.entry(uid(p)).or_insert(pid);
            }
        }
        lab.baton(&[
            "scale",
            "deployment",
            DEPLOYMENT,
            "--replicas",
            &replicas.to_string(),
        ])?;
        // One kill in four lands within 100 ms of the change (while the new state is
        // written and acted on), the others anywhere in the next 1.5 s.
        let delay = if rng.below(4) == 0 {
            rng.below(100)
        } else {
            rng.below(1500)
        };
        std::thread::sleep(Duration::from_millis(delay));
        lab.kill_agent(0);
        generations.push(
            state_file_generation(&state)
                .with_context(|| format!("round {round}: the desired state file after kill -9"))?,
        );
        lab.start_agent(0)
            .with_context(|| format!("round {round}: the agent did not start again"))?;
    }
    ensure!(
        !lab.agent_log(0)
            .contains("ignoring unreadable desired state"),
        "the agent found its state file unreadable"
    );
    fig.note(format!(
        "10 kills, state file intact every time, generations {generations:?}"
    ));
    let exp = Expected {
        replicas,
        image: image(&reg, 1),
        ..Expected::default()
    };
    let (took, pods) = converge(lab, &exp)?;
    let mut kept = 0;
    for p in &pods {
        if let Some(pid) = seen.get(&uid(p)) {
            kept += 1;
            let now = init_pid(lab, &name, &uid(p))?;
            ensure!(now == *pid, "pod {} restarted: {pid} -> {now}", uid(p));
        }
    }
    fig.note(format!("{kept} surviving pods adopted unchanged"));
    finish(fig, took, &pods);
    Ok(())
}

// ----- 7. a flapping link --------------------------------------------------------------

#[test]
fn s7_flapping_link() -> Result<()> {
    scenario(
        "7 flapping link (down/up every 1-2 s for 20 s)",
        // NotReady after 3 s without a heartbeat, so the flaps show; eviction stays at its
        // default (60 s), which no single outage reaches.
        || Lab::start_with("chf", 1, Broker::Embedded, &["--heartbeat-timeout", "3s"]),
        flapping,
    )
}

fn flapping(lab: &mut Lab, fig: &mut Figures) -> Result<()> {
    let reg = lab.registry();
    lab.apply(&web(&reg, 2, 1))?;
    let pods = settled(lab, 2)?;
    let pinned = pins(lab, &pods)?;
    let agent_pid = lab.agents[0].proc.as_ref().and_then(|p| p.pid());
    let log_before = lab.agent_log(0).len();
    let mut rng = Rng::new();
    let start = Instant::now();
    let (mut flaps, mut scaled, mut not_ready_seen) = (0, false, 0);
    let node = lab.agents[0].name.clone();
    // Sleeps `ms`, sampling the node's readiness as the coordinator sees it.
    let mut hold = |lab: &Lab, ms: u64| -> Result<()> {
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until {
            if !node_ready(lab, &node)? {
                not_ready_seen += 1;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    };
    while start.elapsed() < Duration::from_secs(20) {
        lab.set_link(0, false)?;
        hold(lab, 1000 + rng.below(1000))?;
        lab.set_link(0, true)?;
        flaps += 1;
        // Halfway, the desired state changes while the link flaps.
        if !scaled && start.elapsed() > Duration::from_secs(10) {
            lab.baton(&["scale", "deployment", DEPLOYMENT, "--replicas", "3"])?;
            scaled = true;
        }
        hold(lab, 1000 + rng.below(1000))?;
    }
    ensure!(scaled);
    let exp = Expected {
        replicas: 3,
        image: image(&reg, 1),
        pinned: pinned.clone(),
        ..Expected::default()
    };
    let (took, pods) = converge(lab, &exp)?;
    ensure!(
        lab.agents[0].proc.as_ref().and_then(|p| p.pid()) == agent_pid,
        "the agent was restarted"
    );
    let log = lab.agent_log(0);
    let since = &log[log_before.min(log.len())..];
    for line in since.lines() {
        ensure!(
            !line.contains("stopping pod"),
            "the agent stopped a pod: {line}"
        );
        for u in pinned.keys() {
            ensure!(
                !(line.contains("starting pod") && line.contains(u.as_str())),
                "the agent started a running pod again: {line}"
            );
        }
    }
    fig.note(format!(
        "{flaps} flaps, node NotReady in {not_ready_seen} samples (every 250 ms), {} broker reconnects",
        since.matches("connected to broker").count()
    ));
    finish(fig, took, &pods);
    Ok(())
}
