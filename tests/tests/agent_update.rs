//! Agent updates over MQTT (issue 13), on a fleet of supervised agents in network namespaces
//! (tests/src/ota.rs: each runs `baton-agent launch` under tests/ota/supervise.sh, systemd's
//! service contract), from this build (0.2.0) to a test-built 0.2.1 of the same source:
//! - normal rollout, 3 waves of 2 on 6 nodes: all commit, the same container pids, a hostPort
//!   answering on every node throughout, VERSION 0.2.1 in `get nodes` (figures: bytes on each
//!   node's link against the binary's size, time from `upgrade` to all committed, downtime);
//! - crash at start: rolled back on the canary with the exit in the reason, no second wave;
//! - no connection: rolled back on the canary;
//! - bad artifact (corrupted in the store, or signed by a key the devices do not trust):
//!   refused before it ever runs, the node stays, the rollout halts;
//! - kill -9 of the agent at each step of the switch: every node ends on a version that
//!   runs, no pod lost;
//! - kill -9 of a supervised agent outside any update: its pods' hostPorts answer throughout
//!   (from another host and from the node's 127.0.0.1), the pids stay the same;
//! - an offline node gets the update when it returns, or is `unreachable` past the deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use baton_e2e::fleet::{exactly, init_pid, is_running, node_of, uid};
use baton_e2e::ota::{downtime, host_port_deployment, HostPortProbe, OtaLab, OtaOptions, FROM, TO};
use baton_e2e::skew::node_version;
use baton_e2e::{sh, wait_for};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(180);
const ROLLOUT: Duration = Duration::from_secs(600);
const PORT: u16 = 18080;

/// Runs `f` on a started lab; its logs on failure.
fn with_lab(
    tag: &str,
    agents: usize,
    opts: OtaOptions,
    f: impl FnOnce(&mut OtaLab) -> Result<()>,
) -> Result<()> {
    let mut ota = OtaLab::start(tag, agents, &opts)?;
    let result = f(&mut ota);
    if result.is_err() {
        ota.lab.dump_logs();
    }
    result
}

/// One pod a node (hostPort), running; returns the pods.
fn deploy(ota: &OtaLab) -> Result<Vec<Value>> {
    let n = ota.lab.agents.len();
    ota.lab
        .apply(&host_port_deployment(&ota.lab.registry(), n, PORT))?;
    let pods = wait_for(&format!("{n} running pods"), LONG, || {
        exactly(&ota.lab, "web", n, is_running)
    })?;
    let nodes: BTreeSet<String> = pods.iter().map(node_of).collect();
    ensure!(nodes.len() == n, "not one pod a node: {nodes:?}");
    Ok(pods)
}

/// Each pod's container init pid, by pod uid.
fn pids(ota: &OtaLab, pods: &[Value]) -> Result<BTreeMap<String, u32>> {
    pods.iter()
        .map(|p| Ok((uid(p), init_pid(&ota.lab, &node_of(p), &uid(p), "echo")?)))
        .collect()
}

fn upgrade(ota: &OtaLab, name: &str, extra: &[&str]) -> Result<()> {
    let mut args = vec!["agent", "upgrade", "--to", TO, "--name", name];
    args.extend_from_slice(extra);
    let out = ota.lab.baton(&args)?;
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

/// Phases a node is busy in (counted against maxUnavailable).
fn busy(phase: &str) -> bool {
    matches!(phase, "downloading" | "staged" | "switching" | "probation")
}

/// RX bytes of agent `i`'s link.
fn rx_bytes(ota: &OtaLab, i: usize) -> Result<u64> {
    let out = sh(Command::new("ip").args([
        "-n",
        &ota.lab.agents[i].ns.0,
        "-s",
        "-j",
        "link",
        "show",
        "eth0",
    ]))?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v[0]["stats64"]["rx"]["bytes"]
        .as_u64()
        .context("rx bytes in ip -s -j")
}

#[test]
fn a_rollout_in_three_waves_of_two_keeps_every_pod() -> Result<()> {
    with_lab("otan", 6, OtaOptions::default(), |ota| {
        let pods = deploy(ota)?;
        let before = pids(ota, &pods)?;
        let rx0: Vec<u64> = (0..6).map(|i| rx_bytes(ota, i)).collect::<Result<_>>()?;
        let probe = HostPortProbe::start(&ota.lab, PORT);
        let t0 = Instant::now();
        upgrade(
            ota,
            "up",
            &[
                "--canary",
                "2",
                "--max-unavailable",
                "2",
                "--health-window",
                "10s",
            ],
        )?;
        let mut most_busy = 0;
        let mut downloaded: BTreeMap<String, u64> = BTreeMap::new();
        let rows = ota.wait_rollout("up", ROLLOUT, |rows| {
            most_busy = most_busy.max(rows.nodes.iter().filter(|r| busy(&r.phase)).count());
            for r in &rows.nodes {
                let d = downloaded.entry(r.node.clone()).or_default();
                *d = (*d).max(r.downloaded);
            }
            rows.nodes.len() == 6 && rows.nodes.iter().all(|r| r.phase == "committed")
        })?;
        let took = t0.elapsed();
        let (asked, failures) = probe.finish();
        // The hostPorts are the kernel's DNAT rules, which outlive the agent process like
        // the pods do (agent/src/network/hostport.rs): not one request may fail.
        eprintln!(
            "FIGURE pod downtime during the switch: {} failed of {asked} hostPort requests (every ~0.2 s a node); per node (failed, seconds down): {:?}",
            failures.len(),
            downtime(&failures)
        );
        ensure!(
            failures.is_empty(),
            "hostPort requests failed during the rollout: {failures:#?}"
        );
        ensure!(asked >= 60, "only {asked} hostPort requests asked");
        ensure!(
            most_busy <= 2,
            "{most_busy} nodes updating at once (maxUnavailable 2)"
        );
        ensure!(
            rows.nodes.iter().all(|r| r.from == FROM && r.to == TO),
            "{rows:#?}"
        );
        ensure!(pids(ota, &pods)? == before, "container pids changed");
        for a in &ota.lab.agents {
            ensure!(
                node_version(&ota.lab, &a.name)? == TO,
                "{} not on {TO}",
                a.name
            );
        }
        for i in 0..6 {
            ensure!(
                ota.starts(i) >= 2,
                "agent {i} was never restarted into {TO}"
            );
        }
        let size = fs::metadata(&ota.release)?.len();
        let rx: Vec<u64> = (0..6)
            .map(|i| Ok(rx_bytes(ota, i)? - rx0[i]))
            .collect::<Result<_>>()?;
        for (i, b) in rx.iter().enumerate() {
            ensure!(
                *b >= size,
                "agent {i} received {b} bytes, less than the {size}-byte binary"
            );
        }
        // One whole download a node: what its link received is the binary, once (plus the
        // MQTT and probe traffic, a few hundred kB), and what it reported downloading.
        for (i, b) in rx.iter().enumerate() {
            ensure!(
                *b < 2 * size,
                "agent {i} received {b} bytes for a {size}-byte binary"
            );
        }
        // Three waves of two.
        let mut waves: BTreeMap<Option<u64>, usize> = BTreeMap::new();
        for r in &rows.nodes {
            *waves.entry(r.wave).or_default() += 1;
        }
        ensure!(
            waves.len() == 3 && waves.values().all(|n| *n == 2) && !waves.contains_key(&None),
            "waves {waves:?}"
        );
        eprintln!(
            "FIGURE bytes downloaded per node (the most each reported while polled) {:?} for a {size}-byte binary; received on each node's link during the update {rx:?} ({:.3}x the binary at most)",
            downloaded.values().collect::<Vec<_>>(),
            rx.iter().copied().max().unwrap_or(0) as f64 / size as f64
        );
        eprintln!(
            "FIGURE 6-node rollout {FROM} -> {TO}, canary 2, maxUnavailable 2, health window 10s: all committed {:.1}s after `baton agent upgrade`",
            took.as_secs_f64()
        );
        Ok(())
    })
}

/// `reason` names one of `words` (case aside).
fn names_one_of(reason: &str, words: &[&str]) -> Result<()> {
    let lower = reason.to_lowercase();
    ensure!(
        words.iter().any(|w| lower.contains(&w.to_lowercase())),
        "reason {reason:?} names none of {words:?}"
    );
    Ok(())
}

/// After `wait`, the rollout is `Halted` and no node but the canary was ever ordered.
fn halted_after_the_canary(ota: &OtaLab, canary: &str, wait: Duration) -> Result<()> {
    std::thread::sleep(wait);
    let rows = ota.rollout("up")?;
    ensure!(
        rows.phase == "Halted",
        "the rollout did not halt: {rows:#?}"
    );
    for r in rows.nodes.iter().filter(|r| r.node != canary) {
        ensure!(
            r.phase == "pending" && !r.ordered,
            "the rollout went on past the canary: {rows:#?}"
        );
    }
    Ok(())
}

/// A release that fails on the canary: rolled back there with `reason`, the rest never
/// ordered, the canary's pods untouched.
fn fails_on_the_canary(ota: &mut OtaLab, reason: &[&str], within: Duration) -> Result<()> {
    let pods = deploy(ota)?;
    let before = pids(ota, &pods)?;
    upgrade(
        ota,
        "up",
        &[
            "--canary",
            "1",
            "--max-unavailable",
            "1",
            "--health-window",
            "10s",
        ],
    )?;
    let rows = ota.wait_rollout("up", within, |rows| {
        rows.nodes.iter().any(|r| r.phase == "rolled-back")
    })?;
    let canary = rows
        .nodes
        .iter()
        .find(|r| r.phase == "rolled-back")
        .context("a rolled-back node")?
        .clone();
    names_one_of(&canary.reason, reason)?;
    // Halted: no second wave, however long we wait.
    halted_after_the_canary(ota, &canary.node, Duration::from_secs(20))?;
    let i = ota.lab.agent_index(&canary.node).context("canary")?;
    wait_for("the canary back on its version", LONG, || {
        Ok((node_version(&ota.lab, &canary.node)? == FROM).then_some(()))
    })?;
    ensure!(ota.starts(i) >= 2, "the canary never ran {TO}");
    for (j, a) in ota.lab.agents.iter().enumerate().filter(|(j, _)| *j != i) {
        ensure!(ota.starts(j) == 1, "{} was restarted", a.name);
    }
    // The runtime's state of a replaced pod is gone: say so rather than "no such file".
    let after = pids(ota, &pods).map_err(|e| e.to_string());
    ensure!(
        after.as_ref() == Ok(&before),
        "container pids changed ({after:?}, were {before:?}): a node rolled back after the coordinator gave its pods away (heartbeat timeout + pod eviction timeout, 20 s + 60 s by default) loses them"
    );
    let describe =
        String::from_utf8_lossy(&ota.lab.baton(&["describe", "node", &canary.node])?.stdout)
            .into_owned();
    ensure!(
        describe.contains(&canary.reason),
        "describe node does not show the reason {:?}:\n{describe}",
        canary.reason
    );
    eprintln!("FIGURE rolled back on the canary: {}", canary.reason);
    Ok(())
}

#[test]
fn a_release_crashing_at_start_rolls_back_on_the_canary_and_halts() -> Result<()> {
    let opts = OtaOptions {
        fault: Some(format!("{TO}:crash")),
        ..OtaOptions::default()
    };
    with_lab("otac", 3, opts, |ota| {
        fails_on_the_canary(ota, &["exit 101", "exit code 101", "101"], LONG)
    })
}

#[test]
fn a_release_that_cannot_connect_rolls_back_on_the_canary() -> Result<()> {
    let opts = OtaOptions {
        fault: Some(format!("{TO}:no-connect")),
        ..OtaOptions::default()
    };
    with_lab("otanc", 3, opts, |ota| {
        fails_on_the_canary(ota, &["connect", "broker", "desired state"], ROLLOUT)
    })
}

/// A release the canary refuses before it ever runs: the node stays, the rollout halts.
fn refused_on_the_canary(ota: &mut OtaLab, reason: &[&str]) -> Result<()> {
    upgrade(ota, "up", &["--canary", "1", "--max-unavailable", "1"])?;
    let rows = ota.wait_rollout("up", LONG, |rows| {
        rows.nodes.iter().any(|r| r.phase == "refused")
    })?;
    let canary = rows
        .nodes
        .iter()
        .find(|r| r.phase == "refused")
        .context("refused")?
        .clone();
    names_one_of(&canary.reason, reason)?;
    halted_after_the_canary(ota, &canary.node, Duration::from_secs(15))?;
    for i in 0..ota.lab.agents.len() {
        // Never switched: the agent process was never ended.
        ensure!(ota.starts(i) == 1, "agent {i} was restarted");
        ensure!(node_version(&ota.lab, &ota.lab.agents[i].name)? == FROM);
    }
    let i = ota.lab.agent_index(&canary.node).context("canary")?;
    let versions = ota.lab.agents[i].data_dir.join("agent/versions");
    let kept: Vec<String> = fs::read_dir(&versions)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        kept.iter().all(|v| !v.starts_with(TO)),
        "a refused binary was kept as a version: {kept:?}"
    );
    eprintln!("FIGURE refused on the canary: {}", canary.reason);
    Ok(())
}

#[test]
fn a_corrupted_artifact_is_refused_before_it_runs() -> Result<()> {
    // One byte of the binary flipped on its way to the nodes (same length): the node's own
    // sha256 check refuses it, before the file is ever executable.
    let opts = OtaOptions {
        corrupt_downloads: true,
        ..OtaOptions::default()
    };
    with_lab("otab", 3, opts, |ota| {
        refused_on_the_canary(ota, &["sha256 is"])?;
        let proxy = ota.proxy.as_ref().context("the proxy")?;
        ensure!(
            !proxy.requests_to("/api/v1/releases/").is_empty(),
            "the download did not go through the proxy"
        );
        Ok(())
    })
}

#[test]
fn a_release_signed_by_another_key_is_refused_before_it_runs() -> Result<()> {
    let opts = OtaOptions {
        agents_trust_another_key: true,
        ..OtaOptions::default()
    };
    with_lab("otak", 3, opts, |ota| {
        refused_on_the_canary(ota, &["signature", "signed"])
    })
}

/// A device enrolled through `--enroll-listen` (what `baton flash --api` points a card at)
/// holds no API token and knows only that listener: it downloads the release there on its
/// device key's signature, and the update commits (refusals of bad, stale, foreign and
/// revoked signatures: the coordinator's HTTP tests).
#[test]
fn an_enrolled_node_without_a_token_updates_through_the_enroll_listener() -> Result<()> {
    let opts = OtaOptions {
        enrolled: true,
        ..OtaOptions::default()
    };
    with_lab("otae", 1, opts, |ota| {
        let node = ota.lab.agents[0].name.clone();
        let args = ota.lab.agent_args.join(" ");
        ensure!(
            !args.contains("token-file") && args.contains(&ota.lab.enroll_api()),
            "the node must know only the enroll listener, without a token: {args}"
        );
        upgrade(ota, "enrolled", &["--canary", "0", "--health-window", "3s"])?;
        let mut downloaded = 0;
        let r = ota.wait_rollout("enrolled", ROLLOUT, |r| {
            downloaded = r
                .node(&node)
                .map_or(downloaded, |n| n.downloaded.max(downloaded));
            matches!(r.phase_of(&node), "committed" | "rolled-back" | "refused")
                || matches!(r.phase.as_str(), "Halted" | "Aborted")
        })?;
        let row = r.node(&node).context("the node is not in the rollout")?;
        ensure!(
            row.phase == "committed" && r.phase == "Complete",
            "the enrolled node did not update through the enroll listener: {r:#?}"
        );
        let size = fs::metadata(&ota.release)?.len();
        ensure!(
            downloaded == size,
            "downloaded {downloaded} of {size}: {row:?}"
        );
        ensure!(
            node_version(&ota.lab, &node)? == TO,
            "get nodes does not show {TO}"
        );
        Ok(())
    })
}

/// Kills agent `i` (kill -9) once `ready` holds, polling fast; says what it hit.
fn kill_when(ota: &OtaLab, i: usize, step: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    wait_for(&format!("agent {i} at {step}"), LONG, || {
        Ok(ready().then_some(()))
    })?;
    let pid = ota.kill9(i)?;
    eprintln!("killed agent {i} (pid {pid}) at {step}");
    Ok(())
}

#[test]
fn kill_9_at_each_step_of_the_switch_ends_on_a_working_version() -> Result<()> {
    with_lab("otak9", 4, OtaOptions::default(), |ota| {
        let pods = deploy(ota)?;
        let before = pids(ota, &pods)?;
        // A slow link for agent 0, so that its download is under way when it dies.
        sh(Command::new("tc").args([
            "-n",
            &ota.lab.agents[0].ns.0,
            "qdisc",
            "add",
            "dev",
            "eth0",
            "root",
            "tbf",
            "rate",
            "40mbit",
            "burst",
            "64kb",
            "latency",
            "400ms",
        ]))?;
        upgrade(
            ota,
            "up",
            &[
                "--canary",
                "0",
                "--max-unavailable",
                "4",
                "--health-window",
                "10s",
            ],
        )?;
        let dir = |i: usize| ota.lab.agents[i].data_dir.join("agent");
        let has_part = |i: usize| {
            fs::read_dir(dir(i).join("downloads"))
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        };
        kill_when(ota, 0, "download", || has_part(0))?;
        kill_when(ota, 1, "stage", || {
            ota.lab
                .agent_log(1)
                .contains("staged a verified agent release")
        })?;
        kill_when(ota, 2, "switch", || {
            ota.lab.agent_log(2).contains("switched; exiting")
        })?;
        kill_when(ota, 3, "probation", || {
            ota.starts(3) >= 2
                && fs::read_to_string(dir(3).join("update.json"))
                    .is_ok_and(|s| s.to_lowercase().contains("probation"))
        })?;
        let _ = sh(Command::new("tc").args([
            "-n",
            &ota.lab.agents[0].ns.0,
            "qdisc",
            "del",
            "dev",
            "eth0",
            "root",
        ]));
        let rows = ota.wait_rollout("up", ROLLOUT, |rows| {
            rows.nodes
                .iter()
                .all(|r| matches!(r.phase.as_str(), "committed" | "rolled-back"))
        })?;
        eprintln!("FIGURE kill -9 at download/stage/switch/probation: {rows:#?}");
        for (i, a) in ota.lab.agents.iter().enumerate() {
            let v = node_version(&ota.lab, &a.name)?;
            let want = if rows.phase_of(&a.name) == "committed" {
                TO
            } else {
                FROM
            };
            ensure!(
                v == want,
                "agent {i}: {v}, rollout says {}",
                rows.phase_of(&a.name)
            );
        }
        ensure!(pids(ota, &pods)? == before, "a pod was lost or restarted");
        Ok(())
    })
}

#[test]
fn host_ports_answer_while_the_agent_is_killed_and_restarted() -> Result<()> {
    with_lab("otahp", 2, OtaOptions::default(), |ota| {
        let pods = deploy(ota)?;
        let before = pids(ota, &pods)?;
        // The node's own loopback reaches the pod too (route_localnet, masquerade).
        let local = |i: usize| -> Result<String> {
            let out = sh(ota.lab.agents[i].ns.cmd("curl").args([
                "-sS",
                "--max-time",
                "2",
                &format!("http://127.0.0.1:{PORT}/cgi-bin/info"),
            ]))?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        for i in 0..2 {
            ensure!(local(i)?.contains("hostname="), "agent {i}: 127.0.0.1");
        }
        let probe = HostPortProbe::start(&ota.lab, PORT);
        std::thread::sleep(Duration::from_secs(1));
        let writes = |i: usize| {
            ota.lab
                .agent_log(i)
                .matches("hostPort rules written")
                .count()
        };
        let written: Vec<usize> = (0..2).map(writes).collect();
        for i in 0..2 {
            let starts = ota.starts(i);
            let pid = ota.kill9(i)?;
            eprintln!("killed agent {i} (pid {pid})");
            wait_for(&format!("agent {i} restarted"), LONG, || {
                Ok((ota.starts(i) > starts).then_some(()))
            })?;
        }
        // The new agents adopt the pods and write the same rules again; keep probing
        // through that.
        for (i, w) in written.iter().enumerate() {
            wait_for(
                &format!("agent {i} to write its hostPort rules again"),
                LONG,
                || Ok((writes(i) > *w).then_some(())),
            )?;
        }
        wait_for("the pods reported running again", LONG, || {
            exactly(&ota.lab, "web", 2, is_running)
        })?;
        std::thread::sleep(Duration::from_secs(2));
        let (asked, failures) = probe.finish();
        eprintln!(
            "FIGURE hostPort across kill -9 and restart of the agent: {} failed of {asked} requests",
            failures.len()
        );
        ensure!(
            failures.is_empty(),
            "hostPort requests failed: {failures:#?}"
        );
        ensure!(asked >= 10, "only {asked} hostPort requests asked");
        ensure!(pids(ota, &pods)? == before, "a pod was restarted");
        for i in 0..2 {
            ensure!(
                local(i)?.contains("hostname="),
                "agent {i}: 127.0.0.1 after restart"
            );
        }
        Ok(())
    })
}

#[test]
fn an_offline_node_gets_the_update_on_return_or_is_unreachable_past_the_deadline() -> Result<()> {
    with_lab("otaoff", 4, OtaOptions::default(), |ota| {
        let (back, gone) = (
            ota.lab.agents[2].name.clone(),
            ota.lab.agents[3].name.clone(),
        );
        ota.lab.set_link(2, false)?;
        ota.lab.set_link(3, false)?;
        let t0 = Instant::now();
        upgrade(
            ota,
            "up",
            &[
                "--canary",
                "1",
                "--max-unavailable",
                "2",
                "--health-window",
                "5s",
                "--deadline",
                "150s",
            ],
        )?;
        ota.wait_rollout("up", ROLLOUT, |rows| {
            rows.nodes.iter().filter(|r| r.phase == "committed").count() >= 2
        })?;
        // Back before the deadline: it gets the update.
        ota.lab.set_link(2, true)?;
        let rows = ota.wait_rollout("up", ROLLOUT, |rows| {
            rows.phase_of(&back) == "committed" && rows.phase_of(&gone) == "unreachable"
        })?;
        ensure!(
            t0.elapsed() >= Duration::from_secs(150) || rows.phase_of(&gone) != "unreachable",
            "unreachable before the deadline"
        );
        ensure!(node_version(&ota.lab, &back)? == TO);
        eprintln!("FIGURE offline nodes: {rows:#?}");
        Ok(())
    })
}
