//! `baton logs` end to end, on real agents, containers and broker: a running pod's log,
//! `--tail`, `-f` seeing new lines and a restart, `--previous` after a crash, a slow reader
//! that must not grow the agent's memory, and the enrolled (signed) mode.
//!
//! Every wait is a poll with a deadline; the memory check samples the agent's RSS.

use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use baton_e2e::fleet::node_of;
use baton_e2e::lines::spawn_lines;
use baton_e2e::{bin, wait_for, Broker, Lab};

const LONG: Duration = Duration::from_secs(120);

fn on_failure<T>(lab: &Lab, r: Result<T>) -> Result<T> {
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

/// A bare pod running `script` in busybox with `sh -c`.
fn pod(lab: &Lab, name: &str, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}/baton/busybox:1\n    command: [\"sh\", \"-c\", {script:?}]\n",
        lab.registry()
    )
}

/// `baton logs ARGS`: stdout, or the error.
fn logs(lab: &Lab, args: &[&str]) -> Result<String> {
    let mut a = vec!["logs"];
    a.extend_from_slice(args);
    let out = lab.baton_raw(&a, None)?;
    ensure!(
        out.status.success(),
        "baton {a:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_running(lab: &Lab, name: &str) -> Result<()> {
    wait_for(&format!("{name} to run"), LONG, || {
        let p = lab.get_json(&["get", "pod", name])?;
        Ok((p["status"]["phase"] == "Running").then_some(()))
    })
}

/// `baton logs -f ARGS` in the hub: its lines as they come.
fn follow(lab: &Lab, args: &[&str]) -> Result<(Child, mpsc::Receiver<String>)> {
    let mut a = vec!["logs", "-f"];
    a.extend_from_slice(args);
    spawn_lines(lab, &a)
}

fn read_until(
    rx: &mpsc::Receiver<String>,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> Result<Vec<String>> {
    baton_e2e::lines::read_until(rx, LONG, &format!("logs -f showing {what}"), done)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

// ----- a running pod, --tail, -f across a restart, --previous -------------------------

/// Each instance says hello with its own token, counts 8 lines, then crashes: `-f` sees
/// the next instance start, and `--previous` is the instance before it.
const CRASHER: &str = "echo hello $(cat /proc/sys/kernel/random/uuid); i=0; while [ $i -lt 8 ]; do i=$((i+1)); echo line $i; sleep 0.5; done; echo bye; exit 3";

#[test]
fn logs_tail_follow_across_a_restart_and_previous() -> Result<()> {
    let lab = Lab::start("lgs", 1, Broker::Embedded)?;
    let r = tail_follow_previous(&lab);
    on_failure(&lab, r)
}

fn tail_follow_previous(lab: &Lab) -> Result<()> {
    lab.apply(&pod(lab, "crasher", CRASHER))?;
    wait_running(lab, "crasher")?;
    // The log of the running pod, as it grows.
    let first = wait_for("the log to show line 3", LONG, || {
        let out = logs(lab, &["crasher"])?;
        Ok(out.contains("line 3\n").then_some(out))
    })?;
    let hello = first.lines().next().context("a first line")?.to_owned();
    ensure!(hello.starts_with("hello "), "{first}");
    // --tail: the last lines only.
    let tail = logs(lab, &["crasher", "--tail", "2", "-c", "main"])?;
    ensure!(tail.lines().count() == 2, "--tail 2 printed {tail:?}");
    ensure!(
        !tail.contains(&hello),
        "--tail 2 printed the first line: {tail:?}"
    );
    ensure!(tail.ends_with('\n'), "{tail:?}");

    // -f: everything so far, then new lines, the crash, and the next instance.
    let (mut child, rx) = follow(lab, &["crasher"])?;
    let seen = read_until(&rx, "the next instance", |l| {
        l.starts_with("hello ") && l != hello
    })?;
    let _ = child.kill();
    let _ = child.wait();
    ensure!(seen.first() == Some(&hello), "{seen:?}");
    let bye = seen
        .iter()
        .position(|l| l == "bye")
        .context("no bye before the restart")?;
    let lines: Vec<&str> = seen[1..bye].iter().map(String::as_str).collect();
    let want: Vec<String> = (1..=8).map(|i| format!("line {i}")).collect();
    ensure!(
        lines == want,
        "the first instance's lines, each once, in order: {seen:?}"
    );
    let next = seen.last().cloned().context("next hello")?;

    // --previous: the instance that crashed, whole, and nothing of the current one. The
    // next instance runs 4 s, and restarts only after a backoff of 10 s or more: until
    // then the one we watched stays the previous one.
    let prev = logs(lab, &["crasher", "--previous"])?;
    let current = logs(lab, &["crasher"])?;
    let mut whole = vec![hello.clone()];
    whole.extend(want);
    whole.push("bye".into());
    ensure!(
        prev.lines().collect::<Vec<_>>() == whole,
        "--previous is the crashed instance, whole: {prev:?}"
    );
    ensure!(
        current.starts_with(&format!("{next}\n")) && !current.contains(&hello),
        "the current log is the new instance's: {current:?}"
    );
    Ok(())
}

// ----- a slow reader -------------------------------------------------------------------

/// 12 MB of log (the lab's agent keeps up to 16 MiB), then silence.
const BIG: &str = "yes 'a line of the log that fills it up quickly, again and again' | head -c 12000000; sleep 100000";

/// `baton logs -f` whose output nobody reads: the agent sends only what the reader's
/// credit allows, so its memory does not grow with the log (an agent that read the log
/// ahead of the reader would hold most of its 12 MB).
#[test]
fn a_slow_reader_does_not_grow_the_agents_memory() -> Result<()> {
    let mut lab = Lab::start_without_agents("lgm", 1, Broker::Embedded)?;
    lab.agent_args = vec!["--log-max-bytes".into(), (16u64 << 20).to_string()];
    let r = lab.start_agent(0).and_then(|_| slow_reader(&lab));
    on_failure(&lab, r)
}

fn slow_reader(lab: &Lab) -> Result<()> {
    lab.apply(&pod(lab, "big", BIG))?;
    wait_running(lab, "big")?;
    let p = lab.get_json(&["get", "pod", "big"])?;
    let agent = lab.agent_by_node(&node_of(&p)).context("the pod's agent")?;
    let pid = agent
        .proc
        .as_ref()
        .and_then(|p| p.pid())
        .context("agent pid")?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
    ensure!(comm.trim() == "baton-agent", "pid {pid} is {comm:?}");
    let log = agent.data_dir.join("pods");
    // The whole log is written (and the agent has settled) before the baseline.
    wait_for("12 MB of log", LONG, || {
        let size: u64 = walk(&log)?
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        Ok((size >= 12_000_000).then_some(()))
    })?;
    // One whole read first: the agent's code paths for a session are warm.
    let tail = logs(lab, &["big", "--tail", "1"])?;
    ensure!(tail.starts_with("a line of the log"), "{tail:?}");
    std::thread::sleep(Duration::from_secs(2));
    let base = rss_kib(pid)?;
    let mut child = lab
        .hub
        .cmd(bin("baton"))
        .args(["logs", "-f", "big"])
        .env("BATON_CONFIG", lab.admin_conf())
        .env_remove("BATON_TOKEN")
        .env("BATON_SERVER", lab.api_url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    // Never read: the pipe, the CLI, the coordinator's socket fill up, then the agent
    // runs out of credit.
    let mut peak = base;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(250));
        peak = peak.max(rss_kib(pid)?);
    }
    let session_open = lab.agent_log(0).contains("log session opened");
    let _ = child.kill();
    let _ = child.wait();
    ensure!(session_open, "the slow reader's session never opened");
    eprintln!("agent RSS with a slow reader: {base} KiB before, {peak} KiB at most");
    ensure!(
        peak < base + 1024,
        "the agent's RSS grew from {base} KiB to {peak} KiB with a slow reader"
    );
    // The reader went away: its session ends at the agent (cancelled by the coordinator,
    // or at the latest by the idle timeout).
    let ended = wait_for(
        "the slow reader's session to end",
        Duration::from_secs(60),
        || {
            let log = lab.agent_log(0);
            Ok(log
                .lines()
                .filter(|l| l.contains("log session ended"))
                .nth(1)
                .map(str::to_owned))
        },
    )?;
    // And the reader held it back: the agent sent only part of the log (what the pipe and
    // sockets on the way took), not all 12 MB.
    let plain = strip_ansi(&ended);
    let sent: u64 = plain
        .split(" bytes=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .with_context(|| format!("no byte count in {plain:?}"))?;
    eprintln!("the slow reader's session sent {sent} bytes of 12000000");
    ensure!(
        sent < 12_000_000,
        "the agent sent the whole log to a reader that read none: {ended}"
    );
    Ok(())
}

/// `line` without its terminal colour codes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn walk(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

// ----- enrolled mode ---------------------------------------------------------------------

/// With enrolled identities every message is signed and checked: the request reaches the
/// agent only signed by the coordinator, the chunks reach the user only signed by the node
/// on the session's own topic. The external Mosquitto carries them as any client's.
#[test]
fn logs_in_enrolled_mode() -> Result<()> {
    let mut lab = Lab::start_without_agents("lge", 1, Broker::Mosquitto)?;
    let r = enrolled(&mut lab);
    on_failure(&lab, r)
}

fn enrolled(lab: &mut Lab) -> Result<()> {
    lab.restart_coordinator_enrolling(&[])?;
    let token = lab.join_token(&[])?;
    lab.agent_args = vec![
        "--join-token".into(),
        token,
        "--coordinator-api".into(),
        lab.enroll_api(),
    ];
    lab.start_agent(0)?;
    // Enrolled: the node has an identity, so unsigned messages would be refused.
    let name = lab.agents[0].name.clone();
    lab.baton(&["node", "identity", &name])?;
    lab.apply(&pod(
        lab,
        "talker",
        "i=0; while true; do i=$((i+1)); echo said $i; sleep 0.2; done",
    ))?;
    wait_running(lab, "talker")?;
    let out = wait_for("the enrolled node's log", LONG, || {
        let out = logs(lab, &["talker"])?;
        Ok(out.contains("said 3\n").then_some(out))
    })?;
    ensure!(out.starts_with("said 1\n"), "{out:?}");
    let (mut child, rx) = follow(lab, &["talker", "--tail", "1"])?;
    let seen = read_until(&rx, "new lines", |l| {
        l.strip_prefix("said ")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n > 40)
    });
    let _ = child.kill();
    let _ = child.wait();
    let seen = seen?;
    // --tail 1, then every line once, in order.
    let nums: Vec<u32> = seen
        .iter()
        .filter_map(|l| l.strip_prefix("said ")?.parse().ok())
        .collect();
    ensure!(nums.len() == seen.len(), "{seen:?}");
    ensure!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
    // Nothing was refused on the agent's side either.
    ensure!(
        !lab.agent_log(0).contains("refused a coordinator message"),
        "the agent refused a message"
    );
    Ok(())
}
