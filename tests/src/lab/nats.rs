//! A real 3-node NATS cluster (Debian's `nats-server`) as a lab's MQTT broker
//! ([`crate::Broker::Nats`]): every node in the hub namespace on the hub address, MQTT on
//! ports 1883, 1884 and 1885, each with its own JetStream store under the lab directory.
//! NATS's MQTT gateway keeps sessions and retained messages in JetStream streams, which a
//! 3-node cluster replicates 3 times, so any one node may die.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{wait_for, Netns, Proc};

/// Nodes in the cluster.
pub const NODES: usize = 3;

/// How long a restarted node's cluster must stay healthy before it counts as recovered.
const SETTLE: Duration = Duration::from_secs(10);

/// The MQTT port of node `i`.
pub fn mqtt_port(i: usize) -> u16 {
    1883 + i as u16
}

pub struct Nats {
    hub: String,
    ip: String,
    dir: PathBuf,
    /// One per node; `None` while it is down.
    pub nodes: Vec<Option<Proc>>,
}

impl Nats {
    /// Writes the nodes' configurations and starts them all, then waits until each answers
    /// `/healthz` (JetStream current: its MQTT gateway works).
    pub fn start(hub: &Netns, ip: &str, dir: PathBuf) -> Result<Nats> {
        let routes: Vec<String> = (0..NODES)
            .map(|i| format!("nats-route://{ip}:{}", 6222 + i))
            .collect();
        for i in 0..NODES {
            let store = dir.join(format!("nats{i}"));
            fs::create_dir_all(&store)?;
            // `server_name` and JetStream are what the MQTT gateway needs; the streams it
            // makes get as many replicas as the cluster has nodes (at most 3). Consumers
            // get one, as docs/operations.md says: a clean session's live only as long as
            // its connection, and replicated ones stalled 2.9.10 ("NO quorum") when a
            // second node died after the first came back.
            let conf = format!(
                "server_name: baton-nats-{i}\n\
                 listen: {ip}:{client}\n\
                 http: {ip}:{http}\n\
                 jetstream {{ store_dir: \"{store}\", max_memory_store: 64MB, max_file_store: 512MB }}\n\
                 cluster {{ name: baton-lab, listen: {ip}:{route}, routes: [{routes}] }}\n\
                 mqtt {{ listen: {ip}:{mqtt}, consumer_replicas: 1 }}\n",
                client = 4222 + i,
                http = 8222 + i,
                route = 6222 + i,
                mqtt = mqtt_port(i),
                store = store.display(),
                routes = routes.join(", "),
            );
            fs::write(dir.join(format!("nats{i}.conf")), conf)?;
        }
        let mut nats = Nats {
            hub: hub.0.clone(),
            ip: ip.to_owned(),
            dir,
            nodes: (0..NODES).map(|_| None).collect(),
        };
        // All start before any is waited for: JetStream needs a quorum to be current.
        for i in 0..NODES {
            nats.spawn(i)?;
        }
        for i in 0..NODES {
            nats.wait_healthy(i)?;
        }
        Ok(nats)
    }

    /// `mqtt://ip:1883,mqtt://ip:1884,mqtt://ip:1885`: every node, as `--broker` and
    /// `--coordinator` take them.
    pub fn url(&self) -> String {
        (0..NODES)
            .map(|i| format!("mqtt://{}:{}", self.ip, mqtt_port(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let conf = self.dir.join(format!("nats{i}.conf"));
        let log = self.dir.join(format!("nats{i}.log"));
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.hub))
            .arg("nats-server")
            .arg("-c")
            .arg(&conf);
        // Appended to, so a restarted node's earlier life stays readable.
        self.nodes[i] = Some(Proc::spawn_appending(&format!("nats{i}"), &mut cmd, log)?);
        Ok(())
    }

    /// Whether node `i` says it is healthy: up, and its JetStream current with the cluster.
    pub fn healthy(&self, i: usize) -> bool {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.hub))
            .args(["curl", "-sf", "-m", "2"])
            .arg(format!("http://{}:{}/healthz", self.ip, 8222 + i))
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn wait_healthy(&mut self, i: usize) -> Result<()> {
        wait_for(
            &format!("NATS node {i} to be healthy"),
            Duration::from_secs(60),
            || {
                let node = self.nodes[i].as_mut().context("node not started")?;
                if !node.is_running() {
                    bail!("nats-server {i} exited: {}", node.log());
                }
                Ok(self.healthy(i).then_some(()))
            },
        )
    }

    /// Kills node `i` with SIGKILL, as a crash or a power cut would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].take() {
            p.kill();
        }
    }

    /// Starts node `i` again with its store and waits until it caught up: every running
    /// node healthy for [`SETTLE`] on end. One `/healthz` that passes is not enough: right
    /// after a restart it can pass before the node has taken up the JetStream consumers
    /// made while it was down, and losing another node then leaves them without a quorum
    /// ("has NO quorum, stalled": the retained desired states stop flowing).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_healthy(i)?;
        let mut since = std::time::Instant::now();
        wait_for(
            "the NATS cluster to settle",
            Duration::from_secs(120),
            || {
                let live: Vec<usize> = (0..NODES).filter(|&n| self.nodes[n].is_some()).collect();
                if !live.iter().all(|&n| self.healthy(n)) {
                    since = std::time::Instant::now();
                }
                Ok((since.elapsed() >= SETTLE).then_some(()))
            },
        )
    }

    /// Everything node `i` logged, across its restarts.
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(self.dir.join(format!("nats{i}.log"))).unwrap_or_default()
    }
}
