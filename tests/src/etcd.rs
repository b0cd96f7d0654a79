//! A real etcd (Debian's `etcd-server`) for the tests of the coordinator's etcd store:
//! one member or a cluster, its data in a test directory, started by the test and killed
//! with it.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::{wait_for, Broker, Lab, Proc};

/// The flags Baton's docs ask etcd to run with (docs/operations.md, "State in etcd"): a
/// store batch holds one entry per pod it creates.
pub const ETCD_FLAGS: &[&str] = &["--max-txn-ops", "16384", "--max-request-bytes", "33554432"];

pub struct Etcd {
    proc: Option<Proc>,
    /// `http://ip:port`, what `baton server --store` takes with `etcd://` for `http://`.
    pub url: String,
    start: Box<dyn Fn() -> Result<Proc> + Send + Sync>,
    /// A command for a program in etcd's network namespace.
    ns_cmd: Arc<dyn Fn(&str) -> Command + Send + Sync>,
}

impl Etcd {
    /// One member on 127.0.0.1 of this namespace, on ports free now, data under `dir`.
    pub fn on_loopback(dir: &Path) -> Result<Etcd> {
        Self::on_loopback_with(dir, &[])
    }

    /// [`Etcd::on_loopback`] with `extra` flags after (and so over) [`ETCD_FLAGS`].
    pub fn on_loopback_with(dir: &Path, extra: &[&str]) -> Result<Etcd> {
        let (client, peer) = (free_port()?, free_port()?);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::start(
            move |p| {
                let mut c = Command::new(p);
                if p == "etcd" {
                    c.args(ETCD_FLAGS).args(&extra);
                }
                c
            },
            "127.0.0.1",
            client,
            peer,
            dir,
        )
    }

    /// Starts one etcd member on `ip` with its data under `dir`, in the network namespace
    /// `ns_cmd(program)`'s command runs in (`Command::new`, or a lab namespace's `cmd`),
    /// and waits until it answers. `ns_cmd("etcd")` adds the etcd flags it wants
    /// ([`ETCD_FLAGS`] normally).
    pub fn start(
        ns_cmd: impl Fn(&str) -> Command + Send + Sync + 'static,
        ip: &str,
        client: u16,
        peer: u16,
        dir: &Path,
    ) -> Result<Etcd> {
        let peer_url = format!("http://{ip}:{peer}");
        let member = Member {
            name: "n0".into(),
            client_url: format!("http://{ip}:{client}"),
            peer_url: peer_url.clone(),
            initial_cluster: format!("n0={peer_url}"),
            token: "etcd-cluster".into(),
            dir: dir.to_path_buf(),
        };
        let mut etcd = Self::member(Arc::new(ns_cmd), member)?;
        etcd.restart()?;
        Ok(etcd)
    }

    /// A cluster of `n` members on loopback ports free now, each with its data under
    /// `dir/<name>`, formed with `token` (`--initial-cluster-token`: two clusters formed
    /// with different tokens have different cluster ids). Waits until all answer.
    pub fn cluster_on_loopback(n: usize, dir: &Path, token: &str) -> Result<Vec<Etcd>> {
        let ns_cmd: Arc<dyn Fn(&str) -> Command + Send + Sync> = Arc::new(|p: &str| {
            let mut c = Command::new(p);
            if p == "etcd" {
                c.args(ETCD_FLAGS);
            }
            c
        });
        let hosts = (0..n)
            .map(|_| {
                Ok((
                    ns_cmd.clone(),
                    "127.0.0.1".to_owned(),
                    free_port()?,
                    free_port()?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::cluster(hosts, dir, token)
    }

    /// A cluster of one member per network namespace in `netns`, each on `ip:2379` (peers
    /// on 2380) of its namespace, as an HA site runs etcd on each coordinator's machine.
    pub fn cluster_in(netns: &[(String, String)], dir: &Path, token: &str) -> Result<Vec<Etcd>> {
        let hosts = netns
            .iter()
            .map(|(ns, ip)| {
                let ns = ns.clone();
                let ns_cmd: Arc<dyn Fn(&str) -> Command + Send + Sync> =
                    Arc::new(move |p: &str| {
                        let mut c = Command::new("nsenter");
                        c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(p);
                        if p == "etcd" {
                            c.args(ETCD_FLAGS);
                        }
                        c
                    });
                (ns_cmd, ip.clone(), 2379, 2380)
            })
            .collect();
        Self::cluster(hosts, dir, token)
    }

    /// Starts every member of `hosts` (a namespace's command, ip, client and peer ports),
    /// then waits until each answers.
    #[allow(clippy::type_complexity)]
    fn cluster(
        hosts: Vec<(Arc<dyn Fn(&str) -> Command + Send + Sync>, String, u16, u16)>,
        dir: &Path,
        token: &str,
    ) -> Result<Vec<Etcd>> {
        let initial_cluster = hosts
            .iter()
            .enumerate()
            .map(|(i, (_, ip, _, peer))| format!("{token}-{i}=http://{ip}:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (ns_cmd, ip, client, peer)) in hosts.into_iter().enumerate() {
            let name = format!("{token}-{i}");
            let mut m = Self::member(
                ns_cmd,
                Member {
                    client_url: format!("http://{ip}:{client}"),
                    peer_url: format!("http://{ip}:{peer}"),
                    initial_cluster: initial_cluster.clone(),
                    token: token.into(),
                    dir: dir.join(&name),
                    name,
                },
            )?;
            // All start before any is waited for: a member answers only with a quorum.
            m.proc = Some((m.start)()?);
            members.push(m);
        }
        for m in &members {
            wait_for("an etcd member", Duration::from_secs(60), || {
                Ok(m.healthy().then_some(()))
            })?;
        }
        Ok(members)
    }

    fn member(ns_cmd: Arc<dyn Fn(&str) -> Command + Send + Sync>, member: Member) -> Result<Etcd> {
        std::fs::create_dir_all(&member.dir)?;
        let url = member.client_url.clone();
        let start = {
            let ns_cmd = ns_cmd.clone();
            move || -> Result<Proc> {
                let m = &member;
                let mut cmd = ns_cmd("etcd");
                cmd.args(["--name", &m.name, "--data-dir"])
                    .arg(m.dir.join("data"))
                    .args(["--listen-client-urls", &m.client_url])
                    .args(["--advertise-client-urls", &m.client_url])
                    .args(["--listen-peer-urls", &m.peer_url])
                    .args(["--initial-advertise-peer-urls", &m.peer_url])
                    .args(["--initial-cluster", &m.initial_cluster])
                    .args(["--initial-cluster-token", &m.token])
                    .args(["--log-level", "warn"]);
                Proc::spawn_appending("etcd", &mut cmd, m.dir.join("etcd.log"))
            }
        };
        Ok(Etcd {
            proc: None,
            url,
            start: Box::new(start),
            ns_cmd,
        })
    }

    /// Kills etcd with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts etcd again on the same ports and data, and waits until it answers.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.proc = Some((self.start)()?);
        wait_for("etcd", Duration::from_secs(30), || {
            Ok(self.healthy().then_some(()))
        })
    }

    /// Whether etcd answers its `/health` with `"health":"true"`.
    fn healthy(&self) -> bool {
        let out = (self.ns_cmd)("curl")
            .args(["-sf", "--max-time", "2", &format!("{}/health", self.url)])
            .output();
        out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"health\":\"true\""))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How one member is started.
struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    initial_cluster: String,
    token: String,
    dir: std::path::PathBuf,
}

/// A port free on loopback right now (the kernel's pick; the tiny race with other tests
/// is the same every lab takes).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

impl Lab {
    /// A lab whose coordinator keeps its state in a real etcd on the hub (`--store etcd://`,
    /// docs/operations.md "State in etcd") instead of redb.
    pub fn start_on_etcd(tag: &str, agents: usize, broker: Broker) -> Result<Lab> {
        let mut lab = Self::build(tag, agents, broker, &[])?;
        let started = (|| {
            lab.start_registry()?;
            lab.start_broker()?;
            let hub = lab.hub.0.clone();
            let etcd = Etcd::start(
                move |program| {
                    let mut c = Command::new("nsenter");
                    c.arg(format!("--net=/run/netns/{hub}"))
                        .arg("--")
                        .arg(program);
                    if program == "etcd" {
                        c.args(ETCD_FLAGS);
                    }
                    c
                },
                &lab.hub_ip(),
                2379,
                2380,
                &lab.dir.path().join("etcd"),
            )?;
            lab.coordinator_args.extend([
                "--store".to_string(),
                etcd.url.replacen("http://", "etcd://", 1),
            ]);
            lab.etcd = Some(etcd);
            lab.start_coordinator()?;
            for i in 0..agents {
                lab.start_agent(i)?;
            }
            Ok(())
        })();
        if let Err(e) = started {
            lab.dump_logs();
            return Err(e);
        }
        Ok(lab)
    }
}
