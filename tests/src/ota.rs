//! The agent-update lab (issue 13, tests/tests/agent_update.rs): a [`Lab`] whose agents run
//! as a service would, each under tests/ota/supervise.sh (systemd's `Restart=always` and
//! `ExecStopPost=` environment), starting `baton-agent launch` from its own installed copy of
//! this build (0.2.0); a release key made by `baton release keygen`, and the test release
//! (0.2.1 of this source, tests/ota/build-releases.sh) signed by `baton release sign` and
//! imported with `baton release import`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::proxy::{Proxy, Rule};
use crate::{bin, repo_root, sh, Broker, Lab};

/// The version the lab's agents run at first, and the one the test release carries.
pub const FROM: &str = env!("CARGO_PKG_VERSION");
pub const TO: &str = "0.2.1";

/// How a lab is set up.
#[derive(Clone, Debug, Default)]
pub struct OtaOptions {
    /// `BATON_TEST_UPDATE_FAULT` of every supervisor (e.g. `0.2.1:crash`).
    pub fault: Option<String>,
    /// The agents pin another release key than the one the coordinator imports with (a
    /// release signed by a key the devices do not trust).
    pub agents_trust_another_key: bool,
    /// The agents reach the coordinator's API through a proxy that flips one byte in the
    /// middle of every release download: a binary damaged in transit, same length.
    pub corrupt_downloads: bool,
    /// The agents enroll through the coordinator's `--enroll-listen` listener (as flashed
    /// devices do) and hold no API token: they download releases there, on their device
    /// key's signature.
    pub enrolled: bool,
}

pub struct OtaLab {
    pub lab: Lab,
    /// The signed test release as imported (the binary; its `.release.json` beside it).
    pub release: PathBuf,
    pub target: String,
    /// The proxy of [`OtaOptions::corrupt_downloads`].
    pub proxy: Option<Proxy>,
}

/// The directory of the test releases (`baton-agent-<version>-<target>`), built if missing.
/// scripts/test.sh builds it before the tests: the build rebuilds target/debug/baton-agent,
/// which a test running beside it would see change.
pub fn releases_dir() -> Result<PathBuf> {
    let out = sh(&mut Command::new(
        repo_root().join("tests/ota/build-releases.sh"),
    ))?;
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// The host's target triple, as `rustc -vV` prints it (and build-releases.sh names the
/// host's release).
fn host_triple() -> Result<String> {
    let out = sh(Command::new("rustc").arg("-vV"))?;
    String::from_utf8(out.stdout)?
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV printed no host")
}

fn read_trimmed(p: &Path) -> Result<String> {
    Ok(fs::read_to_string(p)
        .with_context(|| p.display().to_string())?
        .trim()
        .to_owned())
}

impl OtaLab {
    /// A lab of `agents` supervised agents, Ready, the test release imported.
    pub fn start(tag: &str, agents: usize, opts: &OtaOptions) -> Result<OtaLab> {
        let releases = releases_dir()?;
        // The directory also holds the arm64 board's release (tests/src/device_ota.rs): this
        // lab's agents run on the host, so the host's triple, as build-releases.sh names it.
        let target = host_triple()?;
        let file = format!("baton-agent-{TO}-{target}");
        let built = releases.join(&file);
        ensure!(built.is_file(), "no test release {}", built.display());
        let file = file.as_str();

        // The release key, made before the coordinator that trusts it starts.
        let keys = tempfile::Builder::new()
            .prefix("baton-e2e-keys-")
            .tempdir()?;
        let keygen = |dir: &Path| {
            sh(Command::new(bin("baton"))
                .args(["release", "keygen", "--out"])
                .arg(dir))
        };
        keygen(&keys.path().join("fleet"))?;
        let fleet_pub = keys.path().join("fleet/release.pub");
        let mut lab = Lab::start_without_agents_with(
            tag,
            agents,
            Broker::Embedded,
            &[
                "--listen",
                "0.0.0.0:7474",
                "--insecure-allow-remote",
                "--release-public-key-file",
                &fleet_pub.to_string_lossy(),
            ],
        )?;
        let mut proxy = None;
        let result = (|| -> Result<(PathBuf, String)> {
            let dir = lab.dir.path().join("releases");
            fs::create_dir_all(&dir)?;
            let keys_dir = lab.dir.path().join("keys");
            sh(Command::new("cp").arg("-a").arg(keys.path()).arg(&keys_dir))?;
            let release = dir.join(file);
            fs::copy(&built, &release)?;
            sh(Command::new(bin("baton"))
                .args(["release", "sign", "--key"])
                .arg(keys_dir.join("fleet/release.key"))
                .arg(&release))?;
            lab.baton(&["release", "import", &release.to_string_lossy()])?;

            let pinned = if opts.agents_trust_another_key {
                keygen(&keys_dir.join("other"))?;
                read_trimmed(&keys_dir.join("other/release.pub"))?
            } else {
                read_trimmed(&keys_dir.join("fleet/release.pub"))?
            };
            // Downloads use a read-only API token, the way image pulls from the
            // coordinator do (its registry mirror; images not there come from the lab's).
            let token = String::from_utf8(
                lab.baton(&["token", "create", "--role", "read-only", "--name", "ota"])?
                    .stdout,
            )?;
            let token_file = lab.dir.path().join("ota.token");
            fs::write(&token_file, token.trim().to_owned() + "\n")?;
            let mut api = format!("{}:7474", lab.hub_ip());
            if opts.corrupt_downloads {
                let p = Proxy::start(Some(&lab.hub.0), &format!("{}:0", lab.hub_ip()), &api)?;
                p.set_rules(vec![Rule {
                    path_contains: "/api/v1/releases/".into(),
                    flip_byte_at: Some(fs::metadata(&release)?.len() / 2),
                    ..Rule::default()
                }]);
                api = p.addr();
                proxy = Some(p);
            }
            lab.agent_args = vec![
                "--registry-mirror".into(),
                format!("http://{api}"),
                "--registry-mirror-token-file".into(),
                token_file.to_string_lossy().into_owned(),
            ];
            if opts.enrolled {
                lab.restart_coordinator_enrolling(&[])?;
                let join = lab.join_token(&["--ttl", "1h", "--uses", &agents.to_string()])?;
                lab.agent_args = vec![
                    "--join-token".into(),
                    join,
                    "--coordinator-api".into(),
                    lab.enroll_api(),
                ];
            }
            Ok((release, pinned))
        })();
        let (release, pinned) = match result {
            Ok(r) => r,
            Err(e) => {
                lab.dump_logs();
                return Err(e);
            }
        };
        let mut ota = OtaLab {
            lab,
            release,
            target,
            proxy,
        };
        for i in 0..agents {
            ota.install(i, opts, &pinned)?;
        }
        for i in 0..agents {
            if let Err(e) = ota.lab.start_agent(i) {
                ota.lab.dump_logs();
                return Err(e);
            }
        }
        Ok(ota)
    }

    /// Where agent `i`'s service binary is installed (`/usr/local/bin/baton-agent` on a
    /// device): a copy of this build, never replaced by an update.
    pub fn installed(&self, i: usize) -> PathBuf {
        self.lab.agents[i]
            .data_dir
            .with_extension("install")
            .join("baton-agent")
    }

    /// The pid file the supervisor of agent `i` keeps: the running agent's pid.
    pub fn pid_file(&self, i: usize) -> PathBuf {
        self.lab.agents[i].data_dir.with_extension("pid")
    }

    /// Installs agent `i` as a service: its binary, and the supervisor as its program.
    fn install(&mut self, i: usize, opts: &OtaOptions, release_key: &str) -> Result<()> {
        let installed = self.installed(i);
        fs::create_dir_all(installed.parent().context("install dir")?)?;
        fs::copy(bin("baton-agent"), &installed)?;
        let data_dir = self.lab.agents[i].data_dir.clone();
        let mut program: Vec<std::ffi::OsString> = vec!["env".into()];
        program.push(format!("BATON_SUPERVISE_PIDFILE={}", self.pid_file(i).display()).into());
        program.push(format!("BATON_SUPERVISE_POST={}", stop_post(&installed, &data_dir)).into());
        // The pinned release key (`--release-public-key`), from the environment as the
        // unit's environment file would give it.
        program.push(format!("BATON_RELEASE_PUBLIC_KEY={release_key}").into());
        if let Some(f) = &opts.fault {
            program.push(format!("BATON_TEST_UPDATE_FAULT={f}").into());
        }
        program.push(repo_root().join("tests/ota/supervise.sh").into());
        program.push(installed.into());
        program.push("launch".into());
        self.lab.agents[i].program = Some(program);
        Ok(())
    }

    /// The pid of agent `i`'s running agent process (the supervisor's child).
    pub fn agent_pid(&self, i: usize) -> Result<u32> {
        Ok(read_trimmed(&self.pid_file(i))?.parse()?)
    }

    /// SIGKILL to agent `i`'s agent process (a crash or a power cut of that process); its
    /// supervisor starts it again a second later.
    pub fn kill9(&self, i: usize) -> Result<u32> {
        let pid = self.agent_pid(i)?;
        sh(Command::new("kill").args(["-KILL", &pid.to_string()]))?;
        Ok(pid)
    }

    /// How many times agent `i`'s supervisor started it.
    pub fn starts(&self, i: usize) -> usize {
        self.lab.agent_log(i).matches("supervise: start ").count()
    }

    /// `baton agent rollout status NAME`, from its JSON.
    pub fn rollout(&self, name: &str) -> Result<Rollout> {
        rollout(&self.lab, name)
    }

    /// Waits until `done` holds for rollout `name`; returns its last status.
    pub fn wait_rollout(
        &self,
        name: &str,
        timeout: Duration,
        done: impl FnMut(&Rollout) -> bool,
    ) -> Result<Rollout> {
        wait_rollout(&self.lab, name, timeout, done)
    }
}

/// `baton agent rollout status NAME -o json` of any lab.
pub fn rollout(lab: &Lab, name: &str) -> Result<Rollout> {
    let v = lab.get_json(&["agent", "rollout", "status", name])?;
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let st = &v["status"];
    Ok(Rollout {
        phase: s(&st["phase"]),
        reason: s(&st["reason"]),
        nodes: st["nodes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|n| RolloutRow {
                node: s(&n["node"]),
                from: s(&n["from"]),
                to: s(&n["to"]),
                phase: s(&n["phase"]),
                reason: s(&n["reason"]),
                ordered: !n["orderedAt"].is_null(),
                wave: n["wave"].as_u64(),
                downloaded: n["downloaded"].as_u64().unwrap_or(0),
            })
            .collect(),
    })
}

/// Polls rollout `name` until `done` holds.
pub fn wait_rollout(
    lab: &Lab,
    name: &str,
    timeout: Duration,
    mut done: impl FnMut(&Rollout) -> bool,
) -> Result<Rollout> {
    let mut last = None;
    let got = crate::wait_for(&format!("rollout {name}"), timeout, || {
        let r = rollout(lab, name)?;
        let ok = done(&r);
        last = Some(r.clone());
        Ok(ok.then_some(r))
    });
    got.with_context(|| format!("last status: {last:#?}"))
}

/// The `ExecStopPost=` line of the agent's unit (agent/src/install/files.rs:
/// `ExecStopPost=/usr/local/bin/baton-agent launch --record-exit`, its flags from the
/// unit's environment file), as a shell command with this device's paths.
fn stop_post(installed: &Path, data_dir: &Path) -> String {
    format!(
        "exec {} launch --record-exit --data-dir {}",
        installed.display(),
        data_dir.display()
    )
}

/// A rollout's status, as `baton agent rollout status -o json` shows it.
#[derive(Clone, Debug, Default)]
pub struct Rollout {
    /// Progressing, Paused, Halted, Aborted, Complete.
    pub phase: String,
    pub reason: String,
    pub nodes: Vec<RolloutRow>,
}

impl Rollout {
    pub fn node(&self, node: &str) -> Option<&RolloutRow> {
        self.nodes.iter().find(|r| r.node == node)
    }

    /// The phase of `node`, empty if it is not in the rollout.
    pub fn phase_of(&self, node: &str) -> &str {
        self.node(node).map_or("", |r| r.phase.as_str())
    }
}

/// One node in a rollout (NODE FROM TO PHASE REASON, and what the JSON adds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutRow {
    pub node: String,
    pub from: String,
    pub to: String,
    pub phase: String,
    pub reason: String,
    /// The coordinator sent it an order.
    pub ordered: bool,
    pub wave: Option<u64>,
    /// Bytes of the release it reported downloading.
    pub downloaded: u64,
}

/// Asks every node's hostPort from the hub, without pause, while a rollout runs: any
/// failed answer is pod downtime.
pub struct HostPortProbe {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    asked: Arc<Mutex<u64>>,
    threads: Vec<JoinHandle<()>>,
}

impl HostPortProbe {
    pub fn start(lab: &Lab, port: u16) -> HostPortProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let asked = Arc::new(Mutex::new(0));
        let hub = lab.hub.0.clone();
        let threads = lab
            .agents
            .iter()
            .map(|a| {
                let (stop, failures, asked) = (stop.clone(), failures.clone(), asked.clone());
                let (hub, url) = (
                    hub.clone(),
                    format!("http://{}:{port}/cgi-bin/info", a.addr),
                );
                std::thread::spawn(move || {
                    let start = Instant::now();
                    while !stop.load(Ordering::SeqCst) {
                        let out = Command::new("nsenter")
                            .arg(format!("--net=/run/netns/{hub}"))
                            .args(["curl", "-sS", "--max-time", "2", &url])
                            .output();
                        *asked.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                        let ok = out.as_ref().is_ok_and(|o| {
                            o.status.success()
                                && String::from_utf8_lossy(&o.stdout).contains("hostname=")
                        });
                        if !ok {
                            let why = out.map_or_else(
                                |e| e.to_string(),
                                |o| String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                            );
                            failures
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(format!(
                                    "{url} at {:.1}s: {why}",
                                    start.elapsed().as_secs_f64()
                                ));
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                })
            })
            .collect();
        HostPortProbe {
            stop,
            failures,
            asked,
            threads,
        }
    }

    /// Stops asking; returns how many answers were asked and the failed ones
    /// (`URL at Ts: why`).
    pub fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        let asked = *self.asked.lock().unwrap_or_else(|e| e.into_inner());
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (asked, failures)
    }
}

/// Per probed address: failed requests, and the seconds from the first failure to the last
/// (how long its hostPort was down, give or take one probe interval).
pub fn downtime(failures: &[String]) -> std::collections::BTreeMap<String, (usize, f64)> {
    let mut spans: std::collections::BTreeMap<String, (usize, f64, f64)> = Default::default();
    for f in failures {
        let Some((url, rest)) = f.split_once(" at ") else {
            continue;
        };
        let t: f64 = rest
            .split_once('s')
            .and_then(|(t, _)| t.parse().ok())
            .unwrap_or(0.0);
        let e = spans.entry(url.to_owned()).or_insert((0, t, t));
        e.0 += 1;
        e.1 = e.1.min(t);
        e.2 = e.2.max(t);
    }
    spans
        .into_iter()
        .map(|(u, (n, a, b))| (u, (n, b - a)))
        .collect()
}

/// A Deployment of http-echo with one pod per node (`hostPort` keeps two off one node),
/// answering on `port` of every node.
pub fn host_port_deployment(registry: &str, replicas: usize, port: u16) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: echo
        image: {registry}/baton/http-echo:1
        ports:
        - {{containerPort: 8080, hostPort: {port}}}
        resources:
          requests: {{cpu: 20m, memory: 16Mi}}
          limits: {{cpu: 500m, memory: 64Mi}}
"#
    )
}
