//! `baton logs` end to end, on real agents, containers and broker: a running pod's log,
//! `--tail`, `-f` seeing new lines and a restart, `--previous` after a crash, a slow reader
//! that must not grow the agent's memory, and the enrolled (signed) mode.
//!
//! Every wait is a poll with a deadline; the memory check samples the agent's RSS.

use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    // --timestamps works on the previous instance's log too.
    let last = logs(
        lab,
        &["crasher", "--previous", "--timestamps", "--tail", "1"],
    )?;
    let (t, line) = stamped(last.trim_end())?;
    ensure!(line == "bye", "{last:?}");
    ensure!(t <= SystemTime::now(), "{last:?}");
    Ok(())
}

// ----- --since, --since-time, --timestamps ----------------------------------------------

/// One numbered line a second.
const TICKER: &str = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done";

/// A `--timestamps` line: its time (RFC 3339) and the line.
fn stamped(l: &str) -> Result<(SystemTime, &str)> {
    let (t, line) = l
        .split_once(' ')
        .with_context(|| format!("no time in {l:?}"))?;
    let t = humantime::parse_rfc3339(t).with_context(|| format!("not RFC 3339: {l:?}"))?;
    Ok((t, line))
}

/// The numbers of `tick N` lines, in order.
fn ticks<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Vec<u32>> {
    lines
        .map(|l| {
            l.strip_prefix("tick ")
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("not a tick: {l:?}"))
        })
        .collect()
}

fn consecutive(n: &[u32]) -> bool {
    n.windows(2).all(|w| w[1] == w[0] + 1)
}

#[test]
fn logs_since_and_timestamps() -> Result<()> {
    let lab = Lab::start("lgt", 1, Broker::Embedded)?;
    let r = since_and_timestamps(&lab);
    on_failure(&lab, r)
}

fn since_and_timestamps(lab: &Lab) -> Result<()> {
    lab.apply(&pod(lab, "ticker", TICKER))?;
    wait_running(lab, "ticker")?;
    wait_for("10 ticks", LONG, || {
        let out = logs(lab, &["ticker"])?;
        Ok(out.contains("tick 10\n").then_some(()))
    })?;

    // --timestamps: every line has its time, never going back, and a line's time is when
    // it was written: ticks a second apart are about a second apart.
    let all = logs(lab, &["ticker", "--timestamps"])?;
    let mut times = Vec::new();
    let mut lines = Vec::new();
    for l in all.lines() {
        let (t, line) = stamped(l)?;
        times.push(t);
        lines.push(line);
    }
    ensure!(ticks(lines.iter().copied())?[..3] == [1, 2, 3], "{all}");
    ensure!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "times go back: {all}"
    );
    let span = times[9].duration_since(times[4])?;
    ensure!(
        span >= Duration::from_secs(4) && span < Duration::from_secs(8),
        "ticks 5 to 10 are {span:?} apart: {all}"
    );

    // --since 3s: only the lines of the last 3 s (a line a second: 2 to 4 of them, the
    // newest included), each written in the window.
    let before = SystemTime::now();
    let recent = logs(lab, &["ticker", "--since", "3s", "--timestamps"])?;
    let after = SystemTime::now();
    let mut n = Vec::new();
    for l in recent.lines() {
        let (t, line) = stamped(l)?;
        ensure!(
            t >= before - Duration::from_secs(3) && t <= after,
            "{l:?} is not from the last 3 s (asked at {before:?}): {recent}"
        );
        n.extend(ticks(std::iter::once(line))?);
    }
    ensure!(
        (2..=4).contains(&n.len()) && consecutive(&n),
        "--since 3s: {recent}"
    );
    let newest = ticks(logs(lab, &["ticker", "--tail", "1"])?.lines())?;
    ensure!(
        n.last() <= newest.last() && n[0] > 5,
        "--since 3s: {recent}"
    );
    ensure!(
        *newest.last().context("a tick")? - n.last().context("a tick")? <= 1,
        "--since 3s missed the newest lines: {recent} (newest now {newest:?})"
    );

    // --tail after --since: the last 2 of the window; a larger tail stays in the window.
    let two = ticks(logs(lab, &["ticker", "--since", "3s", "--tail", "2"])?.lines())?;
    ensure!(
        two.len() == 2 && consecutive(&two),
        "--since 3s --tail 2: {two:?}"
    );
    let wide = ticks(logs(lab, &["ticker", "--since", "3s", "--tail", "100"])?.lines())?;
    ensure!(
        (2..=4).contains(&wide.len()) && consecutive(&wide),
        "--since 3s --tail 100 went past the window: {wide:?}"
    );

    // --since-time: from exactly the line with that time.
    let t7 = all
        .lines()
        .nth(6)
        .context("tick 7")?
        .split(' ')
        .next()
        .unwrap_or("");
    let from7 = ticks(logs(lab, &["ticker", "--since-time", t7])?.lines())?;
    ensure!(
        from7.first() == Some(&7) && consecutive(&from7),
        "--since-time {t7}: {from7:?}"
    );

    // -f with both: the recent lines, then new ones as they come, with their times.
    let (mut child, rx) = follow(lab, &["ticker", "--since", "2s", "--timestamps"])?;
    let last = *newest.last().context("a tick")?;
    let seen = read_until(&rx, "two new ticks", |l| {
        stamped(l)
            .ok()
            .and_then(|(_, line)| ticks(std::iter::once(line)).ok())
            .is_some_and(|n| n[0] >= last + 2)
    });
    let _ = child.kill();
    let _ = child.wait();
    let seen = seen?;
    let mut prev = UNIX_EPOCH;
    let mut n = Vec::new();
    for l in &seen {
        let (t, line) = stamped(l)?;
        ensure!(t >= prev, "times go back under -f: {seen:?}");
        prev = t;
        n.extend(ticks(std::iter::once(line))?);
    }
    ensure!(
        consecutive(&n) && n[0] + 6 > last,
        "-f --since 2s: {seen:?}"
    );

    // What the line times cost on the device's storage, per line of this ticker (CRI's
    // `time stream tag ` prefix would be 36-41 bytes a line).
    let p = lab.get_json(&["get", "pod", "ticker"])?;
    let agent = lab.agent_by_node(&node_of(&p)).context("the pod's agent")?;
    let files = walk(&agent.data_dir.join("pods"))?;
    let log = files
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == "main.log"))
        .context("the ticker's log")?;
    let marks = std::fs::metadata(log.with_file_name("main.log.times"))?.len();
    let lines = std::fs::read_to_string(log)?.lines().count() as u64;
    eprintln!(
        "line times: {marks} bytes for {lines} lines, {:.1} bytes a line",
        marks as f64 / lines as f64
    );
    ensure!(
        marks <= 17 + 4 * lines,
        "{marks} bytes of line times for {lines} lines"
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
    lab.start_enrolled_agent(0)?;
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
    // A reader that leaves (`logs -f | head -n 2`) ends the CLI quietly and successfully,
    // not with an error about the coordinator.
    let mut child = lab
        .baton_cmd()
        .args(["logs", "-f", "talker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        for _ in 0..2 {
            line.clear();
            out.read_line(&mut line)?;
            ensure!(line.starts_with("said "), "{line:?}");
        }
    } // the read end closes here
    wait_for("logs -f to end after its reader left", LONG, || {
        Ok(child.try_wait()?.map(|_| ()))
    })?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success() && out.stderr.is_empty(),
        "logs -f after its reader left: {:?} {:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing was refused on the agent's side either.
    ensure!(
        !lab.agent_log(0).contains("refused a coordinator message"),
        "the agent refused a message"
    );
    Ok(())
}
