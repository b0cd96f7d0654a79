//! `baton exec` end to end, on a real agent, container and broker: both output streams
//! and the exit status, stdin (with a large input) round-tripping through `cat`, a
//! terminal with its window size (driven through `script`, which gives the CLI a pty), a
//! read-only token refused, and the exec recorded as an event. Then, on an enrolled node
//! (every message signed), an exec, and a session whose coordinator went silent: the agent
//! kills its command after the idle timeout.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use baton_e2e::fleet::uid;
use baton_e2e::{bin, container_pids, pause_process, sh, wait_for, Broker, Lab};

const LONG: Duration = Duration::from_secs(120);

fn on_failure<T>(lab: &Lab, r: Result<T>) -> Result<T> {
    if r.is_err() {
        lab.dump_logs();
    }
    r
}

#[test]
fn exec_streams_stdin_tty_exit_status_roles_and_events() -> Result<()> {
    let lab = Lab::start("exe", 1, Broker::Embedded)?;
    let r = scenario(&lab);
    on_failure(&lab, r)
}

/// `baton ARGS` as admin, with `stdin` piped in: its output, whatever the status.
fn baton(lab: &Lab, args: &[&str], stdin: &[u8]) -> Result<std::process::Output> {
    use std::io::Write;
    let mut child = lab
        .baton_cmd()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut input = child.stdin.take().context("stdin")?;
    let data = stdin.to_vec();
    // Written from a thread: the output is read meanwhile, or a large input deadlocks.
    let writer = std::thread::spawn(move || input.write_all(&data));
    let out = child.wait_with_output()?;
    writer.join().ok().context("stdin writer")??;
    Ok(out)
}

fn scenario(lab: &Lab) -> Result<()> {
    lab.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: box\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}/baton/busybox:1\n    command: [\"sleep\", \"3600\"]\n",
        lab.registry()
    ))?;
    wait_for("box to run", LONG, || {
        let p = lab.get_json(&["get", "pod", "box"])?;
        Ok((p["status"]["phase"] == "Running").then_some(()))
    })?;

    // Both streams, apart, and the command's status as baton's.
    let out = baton(
        lab,
        &[
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        b"",
    )?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    ensure!(
        out.status.code() == Some(3),
        "exit status {:?}: {stdout:?} {stderr:?}",
        out.status
    );
    ensure!(
        stdout == "out\n" && stderr == "err\n",
        "{stdout:?} {stderr:?}"
    );

    // -i: stdin through cat and back, byte for byte, a small and a large input.
    let out = baton(lab, &["exec", "-i", "box", "--", "cat"], b"a\nb\n")?;
    ensure!(out.status.success() && out.stdout == b"a\nb\n", "{out:?}");
    let big: Vec<u8> = (0..(3 << 19)).map(|i: u32| (i % 251) as u8).collect();
    let out = baton(lab, &["exec", "-i", "box", "--", "cat"], &big)?;
    ensure!(
        out.status.success(),
        "cat of 1.5 MiB: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.stdout.len() == big.len() && out.stdout == big,
        "1.5 MiB in, {} bytes out, {}",
        out.stdout.len(),
        if out.stdout.len() == big.len() {
            "different"
        } else {
            "short"
        }
    );
    // Without -i the command's stdin is empty.
    let out = baton(lab, &["exec", "box", "--", "cat"], b"ignored")?;
    ensure!(out.status.success() && out.stdout.is_empty(), "{out:?}");

    // -t: a terminal made in the container, of the CLI's window size. `script` runs the
    // CLI on a pty of its own, sized by `stty` first.
    let cli = format!(
        "stty rows 31 cols 101; BATON_CONFIG={} BATON_SERVER={} {} exec -t box -- sh -c 'tty; stty size; exit 5'",
        lab.admin_conf().display(),
        lab.api_url(),
        bin("baton").display()
    );
    let out = lab
        .hub
        .cmd("script")
        .args(["-qec", &cli, "/dev/null"])
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("/dev/pts/") && text.contains("31 101"),
        "tty and stty size in the container: {text:?}"
    );
    ensure!(out.status.code() == Some(5), "{:?}: {text:?}", out.status);
    // -t when stdin is no terminal: a warning, as kubectl, and no terminal.
    let out = baton(lab, &["exec", "-t", "box", "--", "tty"], b"")?;
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("Unable to use a TTY")
            && out.stdout.starts_with(b"not a tty"),
        "{out:?}"
    );

    // A read-only token may not exec.
    let made = lab.baton(&["token", "create", "--role", "read-only", "--name", "viewer"])?;
    let token = String::from_utf8(made.stdout)?.trim().to_owned();
    let out = lab
        .hub
        .cmd(bin("baton"))
        .args(["exec", "box", "--", "touch", "/tmp/owned"])
        .env_remove("BATON_CONFIG")
        .env("HOME", lab.dir.path())
        .env("BATON_SERVER", lab.api_url())
        .env("BATON_TOKEN", &token)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("Forbidden"),
        "read-only exec: {err}"
    );
    let out = baton(lab, &["exec", "box", "--", "ls", "/tmp/owned"], b"")?;
    ensure!(!out.status.success(), "the refused exec ran: {out:?}");

    // Refused clearly: an unknown container.
    let out = baton(lab, &["exec", "box", "-c", "nope", "--", "true"], b"")?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("not valid for pod box"), "{err}");

    // Every exec is an event: who, which pod, which command.
    let events = lab.baton(&["get", "events"])?;
    let events = String::from_utf8_lossy(&events.stdout);
    ensure!(
        events.contains("Exec") && events.contains("token admin ran [\"sh\", \"-c\", \"echo out;"),
        "{events}"
    );
    ensure!(
        !events.contains("touch"),
        "a refused exec is no event: {events}"
    );
    Ok(())
}

/// Enrolled: the exec request reaches the agent only signed by the coordinator, and its
/// output and exit reach the user only signed by the node (on an external Mosquitto, which
/// carries them as any client's). Then the coordinator is paused mid-session, as a crashed
/// or partitioned one would be: nothing cancels the command, so the agent must end it
/// itself once it has heard nothing for its idle timeout (30 s; keep-alives every 10 s).
#[test]
fn exec_when_enrolled_and_a_silent_session_is_ended_by_the_agent() -> Result<()> {
    let mut lab = Lab::start_without_agents("exn", 1, Broker::Mosquitto)?;
    let r = enrolled(&mut lab);
    // A paused coordinator would outlive a failed test otherwise (SIGKILL on drop works
    // on a stopped process, but its log would end mid-pause).
    if let Some(pid) = lab.coordinator.as_ref().and_then(|p| p.pid()) {
        let _ = sh(std::process::Command::new("kill").args(["-CONT", &pid.to_string()]));
    }
    on_failure(&lab, r)
}

fn enrolled(lab: &mut Lab) -> Result<()> {
    lab.restart_coordinator_enrolling(&[])?;
    lab.start_enrolled_agent(0)?;
    let node = lab.agents[0].name.clone();
    // Enrolled: the node has an identity, so unsigned messages would be refused.
    lab.baton(&["node", "identity", &node])?;
    lab.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: box\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}/baton/busybox:1\n    command: [\"sleep\", \"3600\"]\n",
        lab.registry()
    ))?;
    let pod = wait_for("box to run", LONG, || {
        let p = lab.get_json(&["get", "pod", "box"])?;
        Ok((p["status"]["phase"] == "Running").then_some(p))
    })?;

    let out = baton(
        lab,
        &["exec", "box", "--", "sh", "-c", "echo signed; exit 4"],
        b"",
    )?;
    ensure!(
        out.status.code() == Some(4) && out.stdout == b"signed\n",
        "enrolled exec: {out:?}"
    );
    ensure!(
        !lab.agent_log(0).contains("refused a coordinator message"),
        "the agent refused a message"
    );

    // A long command, then silence from the coordinator's side.
    let procs = || container_pids(&node, &uid(&pod), "main").len();
    ensure!(procs() == 1, "box's container runs {} processes", procs());
    let mut cli = lab
        .baton_cmd()
        .args(["exec", "box", "--", "sleep", "3601"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_for("the exec'd command to start", LONG, || {
        Ok((procs() == 2).then_some(()))
    })?;
    let coordinator = lab
        .coordinator
        .as_ref()
        .and_then(|p| p.pid())
        .context("coordinator pid")?;
    pause_process(coordinator)?;
    let paused = Instant::now();
    let _ = cli.kill();
    let _ = cli.wait();
    wait_for("the agent to end the silent session", LONG, || {
        Ok((procs() == 1).then_some(()))
    })?;
    let ended = paused.elapsed();
    println!(
        "FIGURE exec: a silent session's command ended {ended:?} after the coordinator paused"
    );
    // Nothing else could have ended it: the CLI had only the paused coordinator to tell.
    // The last keep-alive was at most 10 s before the pause, so the 30 s idle timeout
    // fires 20-30 s after it (plus the agent's check interval).
    ensure!(
        ended >= Duration::from_secs(15) && ended <= Duration::from_secs(60),
        "ended {ended:?} after the pause: not the agent's 30 s idle timeout"
    );
    ensure!(
        lab.agent_log(0).contains("requester gone"),
        "the agent did not end the session for silence"
    );

    // The coordinator resumes and execs again.
    sh(std::process::Command::new("kill").args(["-CONT", &coordinator.to_string()]))?;
    wait_for("an exec after the pause", LONG, || {
        let out = baton(lab, &["exec", "box", "--", "true"], b"")?;
        Ok(out.status.success().then_some(()))
    })?;
    Ok(())
}
