//! An HA site on the lab (issue 17): three "machines" (network namespaces on the lab's
//! bridge), each running one etcd member and one coordinator on that etcd cluster, a
//! broker in the hub, and real agents. The coordinators elect a leader through etcd; the
//! CLI may talk to any of them (a standby redirects to the leader).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::etcd::Etcd;
use crate::{bin, sh, wait_for, Broker, Lab, Proc, Remote};

/// The coordinators' lease: a standby leads this long after the leader stops renewing.
pub const LEASE: &str = "6s";

/// The label of the site's real agents (hollow nodes do not carry it).
pub const REAL: (&str, &str) = ("ha.baton.io/real", "true");

pub struct HaSite {
    pub lab: Lab,
    /// `baton-sim`'s hollow nodes, if any.
    hollow: Option<Hollow>,
    pub hollow_nodes: usize,
    pub etcd: Vec<Etcd>,
    /// One per machine; `None` once killed.
    pub coordinators: Vec<Option<Proc>>,
    /// The lab namespaces (agent slots) used as the site's machines.
    machines: Vec<usize>,
    starts: u32,
}

impl HaSite {
    /// `agents` real agents (labelled [`REAL`]) and `hollow` simulated ones (`baton-sim`,
    /// in the hub) plus three machines, each with an etcd member and a coordinator; waits
    /// until one leads and every node is Ready.
    pub fn start(tag: &str, agents: usize, hollow: usize, broker: Broker) -> Result<HaSite> {
        Self::start_with(tag, agents, hollow, broker, &[])
    }

    /// [`HaSite::start`], with extra `baton server` flags for every coordinator.
    pub fn start_with(
        tag: &str,
        agents: usize,
        hollow: usize,
        broker: Broker,
        coordinator_args: &[&str],
    ) -> Result<HaSite> {
        let mut lab = Lab::build(tag, agents + 3, broker, coordinator_args)?;
        let machines: Vec<usize> = (agents..agents + 3).collect();
        lab.start_registry()?;
        lab.start_broker()?;
        let hosts: Vec<(String, String)> = machines
            .iter()
            .map(|&i| (lab.agents[i].ns.0.clone(), lab.agents[i].addr.clone()))
            .collect();
        let etcd = Etcd::cluster_in(&hosts, &lab.dir.path().join("etcd"), "site")?;
        let members: Vec<String> = hosts.iter().map(|(_, ip)| format!("{ip}:2379")).collect();
        lab.coordinator_args.extend([
            "--store".to_owned(),
            format!("etcd://{}", members.join(",")),
            "--leader-lease".to_owned(),
            LEASE.to_owned(),
        ]);
        let mqtt = lab.mqtt_url();
        let mut site = HaSite {
            lab,
            hollow: None,
            hollow_nodes: hollow,
            etcd,
            coordinators: Vec::new(),
            machines,
            starts: 0,
        };
        // The first creates the site's PKI and admin token; the others share its PKI
        // (docs/operations.md) and find the token in etcd.
        site.coordinators.push(None);
        site.start_coordinator(0)?;
        site.lab.remote = Some(Remote {
            api: site.api(0),
            mqtt,
        });
        wait_for("the first coordinator to lead", LONG, || {
            Ok((site.leaders() == vec![0]).then_some(()))
        })?;
        for k in 1..3 {
            sh(Command::new("cp")
                .arg("-a")
                .arg(site.data_dir(0).join("pki"))
                .arg(site.data_dir(k)))?;
            site.coordinators.push(None);
            site.start_coordinator(k)?;
        }
        site.lab.agent_args = vec!["--labels".into(), format!("{}={}", REAL.0, REAL.1)];
        for i in 0..agents {
            site.lab.start_agent(i)?;
        }
        if hollow > 0 {
            let mut cmd = site.lab.hub.cmd(bin("baton-sim"));
            cmd.args(["--coordinator", &site.lab.mqtt_url(), "--prefix", "hollow"])
                .args(["--nodes", &hollow.to_string(), "--stats-secs", "3600"])
                .env("RUST_LOG", "error");
            let log = std::fs::File::create(site.lab.dir.path().join("sim.log"))?;
            // Its commands come on stdin, and it ends at EOF: kept open while the site is.
            let child = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("baton-sim")?;
            site.hollow = Some(Hollow(child));
            wait_for("every node Ready", LONG, || {
                Ok((site.ready_nodes()? == agents + hollow).then_some(()))
            })?;
        }
        Ok(site)
    }

    /// How many nodes the leader shows Ready.
    pub fn ready_nodes(&self) -> Result<usize> {
        let nodes = self.lab.get_json(&["get", "nodes"])?;
        Ok(crate::items(&nodes)
            .iter()
            .filter(|n| n["status"]["ready"] == true)
            .count())
    }

    /// Machine `k`'s coordinator data dir; the first is the lab's own, so that the
    /// lab's admin config is the site's.
    fn data_dir(&self, k: usize) -> PathBuf {
        match k {
            0 => self.lab.dir.path().join("coordinator"),
            k => self.lab.dir.path().join(format!("coordinator{k}")),
        }
    }

    /// Machine `k`'s address.
    pub fn addr(&self, k: usize) -> &str {
        &self.lab.agents[self.machines[k]].addr
    }

    /// Coordinator `k`'s API, as the hub reaches it.
    pub fn api(&self, k: usize) -> String {
        format!("http://{}:7474", self.addr(k))
    }

    /// Starts (again) coordinator `k` on its machine.
    pub fn start_coordinator(&mut self, k: usize) -> Result<()> {
        let dir = self.data_dir(k);
        std::fs::create_dir_all(&dir)?;
        let ns = &self.lab.agents[self.machines[k]].ns;
        let mut cmd = self.lab.coordinator_command_in(ns, &dir);
        // The hub reaches it over the lab bridge: plain HTTP, as the lab is.
        cmd.args(["--listen", &format!("{}:7474", self.addr(k))])
            .arg("--insecure-allow-remote");
        self.starts += 1;
        let log = self
            .lab
            .dir
            .path()
            .join(format!("coordinator{k}-{}.log", self.starts));
        self.coordinators[k] = Some(Proc::spawn(&format!("coordinator{k}"), &mut cmd, log)?);
        let api = self.api(k);
        wait_for(&format!("coordinator {k}'s API"), LONG, || {
            Ok(self.health(&api).is_some().then_some(()))
        })
    }

    /// What coordinator `api` says it is: `Some(true)` leading (`/healthz` 200, or 503 for
    /// a broker problem of its own: a leader still, say while a NATS cluster sets its
    /// subscription up), `Some(false)` a standby (503, saying so), `None` not answering.
    fn health(&self, api: &str) -> Option<bool> {
        let out = self
            .lab
            .hub
            .cmd("curl")
            .args(["-s", "--max-time", "2", "-w", "\n%{http_code}"])
            .arg(format!("{api}/healthz"))
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n')?;
        match code {
            "200" => Some(true),
            "503" => Some(!body.contains("is a standby")),
            _ => None,
        }
    }

    /// The coordinators that say they lead ([`HaSite::health`]).
    pub fn leaders(&self) -> Vec<usize> {
        (0..self.coordinators.len())
            .filter(|&k| self.coordinators[k].is_some())
            .filter(|&k| self.health(&self.api(k)) == Some(true))
            .collect()
    }

    /// Waits until exactly one coordinator leads (and stays so for a second, so that an
    /// old leader about to step down is not counted out too early); returns it and when
    /// that was first seen.
    pub fn single_leader(&self, within: Duration) -> Result<(usize, Instant)> {
        self.single_leader_but(None, within)
    }

    /// [`HaSite::single_leader`], where that one is not `old` (a leader just deposed).
    pub fn single_leader_but(
        &self,
        old: Option<usize>,
        within: Duration,
    ) -> Result<(usize, Instant)> {
        let deadline = Instant::now() + within;
        loop {
            let now = self.leaders();
            if now.len() == 1 && Some(now[0]) != old {
                let seen = Instant::now();
                std::thread::sleep(Duration::from_secs(1));
                if self.leaders() == now {
                    return Ok((now[0], seen));
                }
            }
            if Instant::now() > deadline {
                bail!("not a single leader within {within:?}: leading now {now:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Points the lab's CLI at coordinator `k` (e.g. when the one it used is gone).
    pub fn use_api(&mut self, k: usize) {
        let api = self.api(k);
        if let Some(r) = self.lab.remote.as_mut() {
            r.api = api;
        }
    }

    /// The CLI against coordinator `k`.
    pub fn baton_at(&self, k: usize, args: &[&str]) -> Result<Output> {
        Ok(self.lab.baton_cmd_at(&self.api(k)).args(args).output()?)
    }

    /// Sends `signal` (`-KILL`, `-STOP`, `-CONT`) to coordinator `k`, leaving it in the
    /// site: for a site shared with another thread, or a pause.
    pub fn signal(&self, k: usize, signal: &str) -> Result<()> {
        let pid = self.coordinators[k]
            .as_ref()
            .and_then(|p| p.pid())
            .context("no such coordinator running")?;
        if signal == "-STOP" {
            // Returns once it is really paused, not merely signalled.
            return crate::pause_process(pid);
        }
        sh(Command::new("kill").args([signal, &pid.to_string()]))?;
        Ok(())
    }

    /// Waits until coordinator `k` says it stepped down (`lost the leadership`).
    pub fn stepped_down(&self, k: usize) -> Result<()> {
        wait_for(&format!("coordinator {k} to step down"), LONG, || {
            Ok(self.log(k).contains("lost the leadership").then_some(()))
        })
    }

    /// Kills coordinator `k` with SIGKILL.
    pub fn kill_coordinator(&mut self, k: usize) {
        if let Some(mut p) = self.coordinators[k].take() {
            p.kill();
        }
    }

    /// Cuts (or, with `cut == false`, mends) machine `k`'s connections to every etcd
    /// member, its own included, and nothing else: its broker link and API stay up.
    pub fn cut_from_etcd(&self, k: usize, cut: bool) -> Result<()> {
        let ns = &self.lab.agents[self.machines[k]].ns;
        let flag = if cut { "-I" } else { "-D" };
        sh(ns
            .cmd("iptables")
            .args([flag, "OUTPUT", "-p", "tcp", "--dport", "2379", "-j", "DROP"]))?;
        Ok(())
    }

    /// The coordinator `k`'s log (of its current or last run).
    pub fn log(&self, k: usize) -> String {
        self.coordinators[k]
            .as_ref()
            .map(|p| p.log())
            .unwrap_or_default()
    }

    /// Prints the tails of every log, for a failing test.
    pub fn dump_logs(&self) {
        self.lab.dump_logs();
        for (k, c) in self.coordinators.iter().enumerate() {
            let Some(p) = c else { continue };
            let log = p.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "----- last lines of coordinator {k} ({}) -----",
                p.log.display()
            );
            for l in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{l}");
            }
        }
    }

    /// The etcd member on machine `k`.
    pub fn etcd_member(&mut self, k: usize) -> Result<&mut Etcd> {
        self.etcd.get_mut(k).context("no such etcd member")
    }
}

const LONG: Duration = Duration::from_secs(120);

/// The running `baton-sim`, killed with the site.
struct Hollow(std::process::Child);

impl Drop for Hollow {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
