//! Harness for end-to-end tests across real processes.
//!
//! A [`Lab`] is a small fleet on one machine: a "hub" network namespace holding the
//! coordinator, its broker and an OCI registry, and one namespace per agent, each a
//! separate "device" with its own address on a shared bridge. Every address used lives in
//! namespaces the lab created, and everything it starts is stopped and removed on drop,
//! also when a test fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub mod certs;
pub mod cron;
pub mod device;
pub mod device_coordinator;
pub mod device_ota;
pub mod etcd;
pub mod fleet;
pub mod forge;
pub mod ha;
mod lab;
pub mod lines;
pub mod ota;
pub mod proxy;
pub mod skew;
pub mod token_server;
pub mod vm;

pub use lab::*;

/// The coordinator's enrollment listener in a lab (each lab has its own hub address).
pub const ENROLL_PORT: u16 = 7475;

/// The development-mode flags every lab passes (docs/security.md, "Local users and the
/// broker"): labs run unenrolled agents unless a test enrolls them, which is cheaper than
/// enrolling every device of every lab. `tests/tests/production.rs` runs the secure
/// default, from docs/operations.md. An agent a test starts by hand needs
/// [`DEV_AGENT_FLAGS`] too unless it enrolls.
pub const DEV_COORDINATOR_FLAGS: &[&str] = &["--insecure-mqtt"];
pub const DEV_AGENT_FLAGS: &[&str] = &["--insecure-unenrolled"];

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `RUST_LOG` of the lab's processes; `BATON_E2E_LOG` overrides it for a post-mortem.
fn log_filter() -> String {
    std::env::var("BATON_E2E_LOG")
        .unwrap_or_else(|_| "info,libcgroups=error,libcontainer=warn,rumqttd=warn".into())
}

/// A workspace binary, built by `cargo build` before the tests run (scripts/test.sh does).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug/<name>
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .expect("target dir");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Runs a command, failing with its output if it fails.
pub fn sh(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<()> {
    sh(Command::new("ip").args(args)).map(|_| ())
}

/// Polls `f` until it returns `Ok(Some(v))`, or fails after `timeout` with the last error.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut last = String::from("condition not met");
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Pauses process `pid` with SIGSTOP and returns once every one of its threads is stopped.
///
/// kill(2) returns before a multi-threaded process has stopped: one thread takes the
/// signal and then stops the others, and on a loaded machine the rest keep running for
/// a while. A test that acts "while paused" right after kill(2) races them.
pub fn pause_process(pid: u32) -> Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .with_context(|| format!("SIGSTOP to {pid}"))?;
    let start = Instant::now();
    loop {
        let running: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("process {pid} is gone"))?
            .filter_map(|t| t.ok())
            .filter_map(|t| fs::read_to_string(t.path().join("stat")).ok())
            .filter(|stat| {
                // The state follows the command name, which may itself hold ") ".
                let state = stat.rsplit_once(") ").map(|(_, r)| r.as_bytes()[0]);
                !matches!(state, Some(b'T' | b't' | b'Z' | b'X') | None)
            })
            .collect();
        if running.is_empty() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("process {pid} not stopped 10 s after SIGSTOP: {running:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Result<Proc> {
        let f = fs::File::create(&log)?;
        Self::spawn_into(name, cmd, f, log)
    }

    /// Like [`Proc::spawn`], but appends to `log` instead of truncating it.
    pub fn spawn_appending(name: &str, cmd: &mut Command, log: PathBuf) -> Result<Proc> {
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        Self::spawn_into(name, cmd, f, log)
    }

    /// Starts `cmd` with stdout and stderr into `f`, the open `log`.
    fn spawn_into(name: &str, cmd: &mut Command, f: fs::File, log: PathBuf) -> Result<Proc> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.into(),
            child: Some(child),
            log,
        })
    }

    /// SIGKILL, as a crash would end it: no cleanup of any kind.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(30));
    }
}

/// A network namespace, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: &str) -> Result<Netns> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name])?;
        let ns = Netns(name.into());
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `program` inside the namespace. `nsenter --net` rather than `ip netns exec`:
    /// the latter also remounts /sys in a new mount namespace, which hides the cgroup
    /// hierarchy from the agent.
    ///
    /// Every agent a test starts in a namespace, whichever way (directly, under `timeout`,
    /// through a supervisor), gets the lab's eviction levels from its environment: with
    /// kubelet's `nodefs.available<10%` the host's disk decides whether a test's node is
    /// under DiskPressure (CI once failed ten image tests on a disk 91% used: the pressure
    /// collected a half-pulled layer). A test of pressure passes `--eviction-hard`, which wins.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.0))
            .arg("--")
            .arg(program)
            .env("BATON_EVICTION_HARD", lab::LAB_EVICTION_HARD)
            .env(
                "BATON_EVICTION_PRESSURE_TRANSITION_PERIOD",
                lab::LAB_TRANSITION_PERIOD,
            );
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Starts `cmd` (its output into `log`), waits until that output holds every one of
/// `needles` `times` times or more, then sends it SIGTERM and waits for it to end. For a
/// process that is not meant to end by itself, such as an agent that keeps retrying its
/// enrollment. Fails if it ended before, or the needles did not show within `timeout`.
/// Returns its output and whether it exited 0 on the SIGTERM.
pub fn until_logged(
    cmd: &mut Command,
    log: &Path,
    needles: &[&str],
    times: usize,
    timeout: Duration,
) -> Result<(String, bool)> {
    let f = fs::File::create(log)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let read = || fs::read_to_string(log).unwrap_or_default();
    let seen = wait_for(
        &format!("{needles:?} in {}", log.display()),
        timeout,
        || {
            let text = read();
            if let Some(status) = child.try_wait()? {
                bail!("it ended ({status}) before logging {needles:?}: {text}");
            }
            Ok(needles
                .iter()
                .all(|n| text.matches(n).count() >= times)
                .then_some(()))
        },
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    seen.with_context(read)?;
    Ok((read(), status.is_some_and(|s| s.success())))
}
