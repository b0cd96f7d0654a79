//! The real `baton-agent launch` against a temporary data dir, with small shell scripts as
//! the agent binaries it execs: the exec (same arguments, the launcher's variable), the
//! exit recording of `ExecStopPost=`, the rollback after a crash loop, and the watchdog
//! `alarm()` surviving the exec.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use baton_agent::update::layout::file_sha256;
use baton_agent::update::state::{Binary, Phase, UpdateState};

const LAUNCHER: &str = env!("CARGO_BIN_EXE_baton-agent");

/// A fake agent: appends its name, arguments and the launcher variable to `log`, then runs
/// `then` (e.g. `exit 101`).
fn script(dir: &Path, name: &str, log: &Path, then: &str) -> Binary {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"{name} $* launcher=$BATON_AGENT_LAUNCHER\" >> {}\n{then}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Binary {
        version: name.into(),
        sha256: file_sha256(&path).unwrap(),
        path,
    }
}

fn launch(data: &Path) -> std::process::ExitStatus {
    Command::new(LAUNCHER)
        .args(["launch", "--data-dir"])
        .arg(data)
        .args(["--node-name", "n1"])
        .env_remove("BATON_TEST_UPDATE_FAULT")
        .status()
        .unwrap()
}

/// systemd's `ExecStopPost=` after an exit with `status`.
fn record_exit(data: &Path, status: std::process::ExitStatus) {
    let (code, st) = match (status.code(), status.signal()) {
        (Some(c), _) => ("exited", c.to_string()),
        (None, Some(14)) => ("killed", "ALRM".to_string()),
        (None, s) => ("killed", format!("{s:?}")),
    };
    let ok = Command::new(LAUNCHER)
        .args(["launch", "--record-exit", "--data-dir"])
        .arg(data)
        .env("EXIT_CODE", code)
        .env("EXIT_STATUS", st)
        .status()
        .unwrap();
    assert!(ok.success());
}

fn setup(then_new: &str, window: u32) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("log");
    let old = script(tmp.path(), "old", &log, "exit 0");
    let new = script(tmp.path(), "new", &log, then_new);
    let mut s = UpdateState::switching("r1", old, new, window);
    s.pending = Some("no broker connection within 1 s".into());
    s.store(&data.join("agent").join("update.json")).unwrap();
    (tmp, data, log)
}

fn state(data: &Path) -> UpdateState {
    UpdateState::load(&data.join("agent").join("update.json"))
        .unwrap()
        .unwrap()
}

#[test]
fn a_crashing_new_agent_is_run_three_times_then_the_old_one_with_the_reason() {
    let (_tmp, data, log) = setup("exit 101", 30);
    let mut s = state(&data);
    s.phase = Phase::Probation;
    s.store(&data.join("agent").join("update.json")).unwrap();
    // The old agent's exit after its switch is not the new one's.
    record_exit(&data, Command::new("true").status().unwrap());
    assert!(state(&data).exits.is_empty());
    for _ in 0..3 {
        let st = launch(&data);
        assert_eq!(st.code(), Some(101));
        record_exit(&data, st);
    }
    assert!(launch(&data).success());
    let lines = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    let args = format!(
        "--data-dir {} --node-name n1 launcher={LAUNCHER}",
        data.display()
    );
    assert_eq!(
        lines,
        [
            format!("new {args}"),
            format!("new {args}"),
            format!("new {args}"),
            format!("old {args}"),
        ]
    );
    let s = state(&data);
    assert_eq!(s.phase, Phase::RolledBack);
    let reason = s.reason.unwrap();
    assert!(
        reason.starts_with("crashed 3 times in ") && reason.ends_with(" s: exit 101"),
        "{reason}"
    );
    assert_eq!(
        std::fs::read_link(data.join("agent/current")).unwrap(),
        s.from.path
    );
}

#[test]
fn the_watchdog_survives_the_exec_and_its_kill_rolls_back() {
    // A window of 0 s gives a watchdog of GRACE_SECS; shorten it for the test.
    let (_tmp, data, log) = setup("sleep 30", 0);
    let mut s = state(&data);
    s.deadline_secs = 1;
    s.store(&data.join("agent").join("update.json")).unwrap();
    let started = std::time::Instant::now();
    let st = launch(&data);
    assert_eq!(st.signal(), Some(14), "SIGALRM ended the new agent: {st:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    record_exit(&data, st);
    assert!(launch(&data).success());
    let s = state(&data);
    assert_eq!(s.phase, Phase::RolledBack);
    assert_eq!(s.reason.as_deref(), Some("no broker connection within 1 s"));
    let lines = std::fs::read_to_string(&log).unwrap();
    assert!(lines.lines().last().unwrap().starts_with("old "), "{lines}");
}

/// No update ran: the launcher execs itself as the agent, which then runs as usual (here it
/// stops at once: no identity, and no --insecure-unenrolled).
#[test]
fn without_an_update_state_the_launcher_runs_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(LAUNCHER)
        .args(["launch", "--data-dir"])
        .arg(tmp.path())
        .env_remove("BATON_JOIN_TOKEN")
        .env_remove("BATON_JOIN_TOKEN_FILE")
        .env_remove("BATON_INSECURE_UNENROLLED")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Installed"), "{err}");
    assert!(err.contains("this device has no identity"), "{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
}
