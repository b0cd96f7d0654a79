//! The [`Lab`]: a fleet on one machine, its hub namespace (coordinator, broker, OCI
//! registry) and one namespace per agent. Built on the process and namespace helpers of
//! the crate root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::*;

mod enroll;
pub mod nats;

pub enum Broker {
    /// The coordinator's embedded broker.
    Embedded,
    /// A real Mosquitto in the hub namespace; the coordinator uses `--broker`.
    Mosquitto,
    /// A real 3-node NATS cluster in the hub namespace ([`nats::Nats`]); the coordinator
    /// and the agents get all three addresses.
    Nats,
}

pub struct Agent {
    pub name: String,
    pub ns: Netns,
    pub addr: String,
    pub data_dir: PathBuf,
    pub proc: Option<Proc>,
    /// What starts this agent instead of this build's `baton-agent` (the previous release's
    /// binary, or a supervisor and its arguments); the lab's flags follow it.
    pub program: Option<Vec<std::ffi::OsString>>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How long a lab agent holds a pressure condition after its last threshold (kubelet's
/// 5 min would keep a node tainted for minutes after a moment of pressure in a test not
/// about it; pressure tests pass their own).
pub const LAB_TRANSITION_PERIOD: &str = "1s";

/// The agents' eviction thresholds in a lab (set by [`crate::Netns::cmd`]): kubelet's, with
/// an absolute level for nodefs, the host's disk that every lab shares. imagefs keeps
/// kubelet's 15%: it is only measured apart when a test mounts a small image disk of its own
/// (tests/tests/images.rs), where 1 GiB could never be free.
pub const LAB_EVICTION_HARD: &str = "memory.available<50Mi,nodefs.available<1Gi,\
nodefs.inodesFree<5%,imagefs.available<15%,imagefs.inodesFree<5%,pid.available<5%";

/// A fleet: hub (coordinator, broker, registry) plus agents, each in its own namespace.
pub struct Lab {
    pub id: String,
    pub dir: tempfile::TempDir,
    pub subnet: u32,
    pub hub: Netns,
    pub agents: Vec<Agent>,
    pub coordinator: Option<Proc>,
    pub mosquitto: Option<Proc>,
    /// With [`Broker::Nats`].
    pub nats: Option<nats::Nats>,
    broker: Broker,
    registry_dir: PathBuf,
    coordinator_starts: u32,
    /// Extra flags for every `baton server` this lab starts (see [`Lab::start_with`]).
    pub coordinator_args: Vec<String>,
    /// With [`Lab::start_mtls`]: the fleet's certificates; MQTT is mTLS only.
    pub mtls: Option<LabPki>,
    /// Extra flags for every agent this lab starts from now on (e.g. `--join-token`, or a
    /// `--pod-cidr` instead of the lab's `10.42.<i + 1>.0/24`).
    pub agent_args: Vec<String>,
    /// Agents started from now on get `--data-dir agentN`, relative to the lab directory
    /// they are started in, as a user typing a short path would.
    pub relative_data_dirs: bool,
    /// A coordinator that is not this lab's process (see [`Remote`]).
    pub remote: Option<Remote>,
    /// With [`Lab::start_on_etcd`]: the etcd the coordinator keeps its state in.
    pub etcd: Option<crate::etcd::Etcd>,
}

/// Where a coordinator runs that the lab did not start (one on an emulated board,
/// tests/src/device_coordinator.rs): the CLI ([`Lab::baton`]) and agents started from now on
/// use these addresses, and the CLI config at [`Lab::admin_conf`] is the test's to write.
pub struct Remote {
    /// The API as the hub reaches it (`https://...`).
    pub api: String,
    /// The broker as the agents reach it (`mqtts://...`).
    pub mqtt: String,
}

/// The certificates of an mTLS lab (see [`Lab::start_mtls`]), under `<lab dir>/pki`.
pub struct LabPki {
    pub ca: certs::Pki,
    /// The broker's certificate (IP SAN: the hub address).
    pub server: certs::CertPair,
    /// CN = [`certs::COORDINATOR_CN`].
    pub coordinator: certs::CertPair,
    /// CN = [`certs::OBSERVER_CN`]: Mosquitto's ACL lets it read every up/ topic.
    pub observer: certs::CertPair,
    /// One per agent, CN = its node name.
    pub agents: Vec<certs::CertPair>,
}

/// The MQTT port of a lab: 8883 with mTLS, else 1883.
fn mqtt_port(mtls: bool) -> u16 {
    if mtls {
        8883
    } else {
        1883
    }
}

impl Lab {
    pub fn hub_ip(&self) -> String {
        format!("10.213.{}.1", self.subnet)
    }

    pub fn registry(&self) -> String {
        format!("{}:5000", self.hub_ip())
    }

    pub fn mqtt_url(&self) -> String {
        if let Some(r) = &self.remote {
            return r.mqtt.clone();
        }
        if let Some(n) = &self.nats {
            return n.url();
        }
        match self.mtls {
            Some(_) => format!("mqtts://{}:8883", self.hub_ip()),
            None => format!("mqtt://{}:1883", self.hub_ip()),
        }
    }

    /// The topics of the messages published on the (plain) broker under `filter` during
    /// `window`, in order, seen by a `mosquitto_sub` in the hub.
    pub fn watch_topics(&self, filter: &str, window: Duration) -> Result<Vec<String>> {
        ensure!(self.mtls.is_none(), "watch_topics needs the plain listener");
        let secs = window.as_secs().max(1).to_string();
        let out = self
            .hub
            .cmd("mosquitto_sub")
            .args(["-h", &self.hub_ip(), "-p", "1883", "-i"])
            .arg(format!("baton-e2e-watch-{}", std::process::id()))
            .args(["-t", filter, "-F", "%t", "-W", &secs])
            .output()
            .context("mosquitto_sub")?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !err.contains("Error") && !err.contains("refused"),
            "mosquitto_sub: {err}"
        );
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// [`Lab::start`] with MQTT over mutual TLS only: Mosquitto runs the shipped
    /// deploy/mosquitto config and ACL (with this lab's paths), the embedded broker runs
    /// its TLS listener; every agent and the coordinator present their own certificate.
    pub fn start_mtls(tag: &str, agents: usize, broker: Broker) -> Result<Lab> {
        Self::start_inner(tag, agents, broker, &[], true, true)
    }

    /// The namespaces, bridge and device links of a lab, and nothing running in them (no
    /// registry, broker, coordinator or agent): for a test that starts them its own way.
    /// The agents' `data_dir` and names are set, so dropping the lab still resets them.
    pub fn start_bare(tag: &str, agents: usize) -> Result<Lab> {
        Self::build(tag, agents, Broker::Embedded, &[])
    }

    /// Builds the namespaces and links, starts the registry with the example images, the
    /// broker if external, the coordinator, and `agents` agents.
    pub fn start(tag: &str, agents: usize, broker: Broker) -> Result<Lab> {
        Self::start_with(tag, agents, broker, &[])
    }

    /// [`Lab::start`] without starting the agents: the test sets each one's
    /// [`Agent::program`] or flags first, then calls [`Lab::start_agent`].
    pub fn start_without_agents(tag: &str, agents: usize, broker: Broker) -> Result<Lab> {
        Self::start_without_agents_with(tag, agents, broker, &[])
    }

    /// [`Lab::start_without_agents`], with extra `baton server` flags.
    pub fn start_without_agents_with(
        tag: &str,
        agents: usize,
        broker: Broker,
        coordinator_args: &[&str],
    ) -> Result<Lab> {
        Self::start_inner(tag, agents, broker, coordinator_args, false, false)
    }

    /// [`Lab::start`], with extra `baton server` flags (e.g. a short `--pod-eviction-timeout`).
    pub fn start_with(
        tag: &str,
        agents: usize,
        broker: Broker,
        coordinator_args: &[&str],
    ) -> Result<Lab> {
        Self::start_inner(tag, agents, broker, coordinator_args, false, true)
    }

    fn start_inner(
        tag: &str,
        agents: usize,
        broker: Broker,
        coordinator_args: &[&str],
        mtls: bool,
        start_agents: bool,
    ) -> Result<Lab> {
        let mut lab = Self::build(tag, agents, broker, coordinator_args)?;
        ensure!(
            !(mtls && matches!(lab.broker, Broker::Nats)),
            "the NATS lab speaks plain MQTT only"
        );
        if mtls {
            lab.mtls = Some(lab.make_pki()?);
        }
        let started = (|| {
            lab.start_registry()?;
            lab.start_broker()?;
            lab.start_coordinator()?;
            for i in (0..agents).filter(|_| start_agents) {
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

    /// The namespaces and links (see [`Lab::start_bare`]).
    pub(crate) fn build(
        tag: &str,
        agents: usize,
        broker: Broker,
        coordinator_args: &[&str],
    ) -> Result<Lab> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let subnet = (pid.wrapping_mul(7).wrapping_add(n * 13)) % 200 + 20;
        let id = format!("{tag}{}-{n}", pid % 10000);
        let dir = tempfile::Builder::new()
            .prefix(&format!("baton-e2e-{id}-"))
            // BATON_E2E_KEEP=1 keeps the logs and state of every lab for a post-mortem.
            .disable_cleanup(std::env::var_os("BATON_E2E_KEEP").is_some())
            .tempdir()?;
        let hub = Netns::new(&format!("bt-{id}-hub"))?;
        let br = "br-lab";
        ip(&["-n", &hub.0, "link", "add", br, "type", "bridge"])?;
        let hub_ip = format!("10.213.{subnet}.1");
        ip(&[
            "-n",
            &hub.0,
            "addr",
            "add",
            &format!("{hub_ip}/24"),
            "dev",
            br,
        ])?;
        ip(&["-n", &hub.0, "link", "set", br, "up"])?;
        let registry_dir = dir.path().join("registry");
        let mut lab = Lab {
            id: id.clone(),
            dir,
            subnet,
            hub,
            agents: Vec::new(),
            coordinator: None,
            mosquitto: None,
            nats: None,
            broker,
            registry_dir,
            coordinator_starts: 0,
            coordinator_args: coordinator_args.iter().map(|a| a.to_string()).collect(),
            mtls: None,
            agent_args: Vec::new(),
            relative_data_dirs: false,
            remote: None,
            etcd: None,
        };
        for i in 1..=agents {
            let name = format!("{id}-n{i}");
            let ns = Netns::new(&format!("bt-{name}"))?;
            // Veths are made in the host's namespace before they move, and the suite runs many test
            // processes at once: the whole pid (hex, <= 6 digits) keeps the names apart.
            let (a, b) = (format!("v{pid:x}x{n}a{i}"), format!("v{pid:x}x{n}b{i}"));
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
            ip(&["link", "set", &a, "netns", &lab.hub.0])?;
            ip(&["link", "set", &b, "netns", &ns.0])?;
            ip(&["-n", &lab.hub.0, "link", "set", &a, "master", br, "up"])?;
            ip(&["-n", &ns.0, "link", "set", &b, "name", "eth0"])?;
            let addr = format!("10.213.{subnet}.{}", 10 + i);
            ip(&[
                "-n",
                &ns.0,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns.0, "link", "set", "eth0", "up"])?;
            let data_dir = lab.dir.path().join(format!("agent{i}"));
            lab.agents.push(Agent {
                name,
                ns,
                addr,
                data_dir,
                proc: None,
                program: None,
            });
        }
        Ok(lab)
    }

    /// Prints the tail of every process log, for a failing test.
    pub fn dump_logs(&self) {
        let procs = self
            .coordinator
            .iter()
            .chain(self.mosquitto.iter())
            .chain(self.nats.iter().flat_map(|n| n.nodes.iter().flatten()))
            .chain(self.agents.iter().filter_map(|a| a.proc.as_ref()));
        for p in procs {
            let log = p.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("----- last lines of {} ({}) -----", p.name, p.log.display());
            for l in &lines[lines.len().saturating_sub(80)..] {
                eprintln!("{l}");
            }
        }
    }

    /// Starts the hub's OCI registry and pushes the example images to it (every lab but a
    /// bare one does at start).
    pub fn start_registry(&self) -> Result<()> {
        let root = repo_root();
        sh(self
            .hub
            .cmd(root.join("images/registry.sh"))
            .args(["start", &self.registry()])
            .arg(&self.registry_dir))?;
        // A private output dir: labs start in parallel, and one lab's build must not
        // rewrite the layout another is pushing from.
        sh(self
            .hub
            .cmd(root.join("images/build.sh"))
            .arg("--out")
            .arg(self.dir.path().join("images"))
            .args(["--push", &self.registry()]))?;
        Ok(())
    }

    fn make_pki(&self) -> Result<LabPki> {
        let ca = certs::Pki::new(&self.dir.path().join("pki"), "baton-ca")?;
        let server = ca.server("broker", &[&self.hub_ip(), "127.0.0.1"])?;
        let coordinator = ca.client("coordinator", certs::COORDINATOR_CN)?;
        let observer = ca.client("observer", certs::OBSERVER_CN)?;
        let agents = self
            .agents
            .iter()
            .map(|a| ca.client(&a.name, &a.name))
            .collect::<Result<Vec<_>>>()?;
        Ok(LabPki {
            ca,
            server,
            coordinator,
            observer,
            agents,
        })
    }

    /// The shipped deploy/mosquitto config and ACL, pointed at this lab's certificates and
    /// hub address. Two test-only additions: `user root` (Mosquitto started as root drops
    /// to the `mosquitto` user, which cannot read the lab's 0700 temp dir) and an observer
    /// identity with read access to every node's up/ topics.
    fn mosquitto_mtls_conf(&self, pki: &LabPki) -> Result<String> {
        let deploy = repo_root().join("deploy/mosquitto");
        let acl = self.dir.path().join("mosquitto.acl");
        fs::write(
            &acl,
            fs::read_to_string(deploy.join("acl"))?
                + &format!(
                    "\n# test only\nuser {}\ntopic read baton/v1/nodes/+/up/#\n",
                    certs::OBSERVER_CN
                ),
        )?;
        let path = |p: &Path| p.display().to_string();
        let conf = fs::read_to_string(deploy.join("mosquitto.conf"))?
            .replace(
                "listener 8883\n",
                &format!("listener 8883 {}\n", self.hub_ip()),
            )
            .replace("/etc/baton/mqtt/server.crt", &path(&pki.server.cert))
            .replace("/etc/baton/mqtt/server.key", &path(&pki.server.key))
            .replace("/etc/baton/mqtt/ca.crt", &path(&pki.ca.ca))
            .replace("/etc/baton/mqtt/acl", &path(&acl));
        if conf.contains("/etc/baton") || !conf.contains(&self.hub_ip()) {
            bail!("deploy/mosquitto/mosquitto.conf no longer has the paths this lab replaces");
        }
        Ok(conf + "\n# test only\nuser root\n")
    }

    /// Starts the lab's broker, unless the coordinator embeds it.
    pub(crate) fn start_broker(&mut self) -> Result<()> {
        match self.broker {
            Broker::Mosquitto => self.start_mosquitto()?,
            Broker::Nats => {
                let dir = self.dir.path().to_owned();
                self.nats = Some(nats::Nats::start(&self.hub, &self.hub_ip(), dir)?);
            }
            Broker::Embedded => {}
        }
        Ok(())
    }

    pub(crate) fn start_mosquitto(&mut self) -> Result<()> {
        let conf = self.dir.path().join("mosquitto.conf");
        let text = match &self.mtls {
            Some(pki) => self.mosquitto_mtls_conf(pki)?,
            None => format!(
                "listener 1883 {}\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 10000\npersistence false\n",
                self.hub_ip()
            ),
        };
        fs::write(&conf, text)?;
        let log = self.dir.path().join("mosquitto.log");
        let mut p = Proc::spawn(
            "mosquitto",
            self.hub.cmd("/usr/sbin/mosquitto").arg("-c").arg(&conf),
            log,
        )?;
        let hub = self.hub.0.clone();
        let port_open = format!("{}:{}", self.hub_ip(), mqtt_port(self.mtls.is_some()));
        wait_for("mosquitto to listen", Duration::from_secs(20), || {
            if !p.is_running() {
                bail!("mosquitto exited: {}", p.log());
            }
            let out = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{hub}"))
                .args(["ss", "-ltn"])
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout)
                .contains(&port_open)
                .then_some(()))
        })?;
        self.mosquitto = Some(p);
        Ok(())
    }

    pub fn start_coordinator(&mut self) -> Result<()> {
        let mut cmd = self.coordinator_command(&self.dir.path().join("coordinator"));
        self.coordinator_starts += 1;
        let log = self
            .dir
            .path()
            .join(format!("coordinator-{}.log", self.coordinator_starts));
        let p = Proc::spawn("coordinator", &mut cmd, log)?;
        self.coordinator = Some(p);
        wait_for("the coordinator API", Duration::from_secs(30), || {
            Ok(self.baton(&["get", "nodes"]).ok().map(|_| ()))
        })
    }

    /// `baton server` as this lab runs it, with its state in `data_dir`.
    pub fn coordinator_command(&self, data_dir: &Path) -> Command {
        self.coordinator_command_in(&self.hub, data_dir)
    }

    /// [`Lab::coordinator_command`], run in network namespace `ns` (an HA site's hosts).
    pub fn coordinator_command_in(&self, ns: &Netns, data_dir: &Path) -> Command {
        let mut cmd = ns.cmd(bin("baton"));
        cmd.arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", log_filter());
        let listen = format!("{}:{}", self.hub_ip(), mqtt_port(self.mtls.is_some()));
        // Development mode: plain MQTT (unless the lab has its own certificates) and
        // unenrolled nodes accepted unsigned.
        cmd.args(DEV_COORDINATOR_FLAGS);
        match (&self.broker, &self.mtls) {
            (Broker::Embedded, None) => cmd.args(["--mqtt-listen", &listen]),
            (Broker::Mosquitto | Broker::Nats, None) => cmd.args(["--broker", &self.mqtt_url()]),
            (Broker::Embedded, Some(pki)) => cmd
                .args(["--mqtt-listen", &listen])
                .arg("--mqtt-tls-cert")
                .arg(&pki.server.cert)
                .arg("--mqtt-tls-key")
                .arg(&pki.server.key)
                .arg("--mqtt-client-ca")
                .arg(&pki.ca.ca),
            (Broker::Mosquitto | Broker::Nats, Some(pki)) => cmd
                .args(["--broker", &self.mqtt_url()])
                .arg("--broker-ca")
                .arg(&pki.ca.ca)
                .arg("--broker-cert")
                .arg(&pki.coordinator.cert)
                .arg("--broker-key")
                .arg(&pki.coordinator.key),
        };
        cmd.args(&self.coordinator_args);
        cmd
    }

    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        // Ready by a heartbeat of this agent: right after a kill the coordinator may not
        // have seen the old one's last will yet, and still shows the node Ready. The time
        // has whole seconds, so only a heartbeat in a later second than the spawn counts.
        let spawned = std::time::SystemTime::now();
        self.spawn_agent(i)?;
        let name = self.agents[i].name.clone();
        wait_for(
            &format!("node {name} to be Ready"),
            Duration::from_secs(60),
            || {
                let nodes = self.get_json(&["get", "nodes"])?;
                Ok(items(&nodes)
                    .iter()
                    .any(|n| {
                        n["metadata"]["name"] == name.as_str()
                            && n["status"]["ready"] == true
                            && n["status"]["lastHeartbeat"]
                                .as_str()
                                .and_then(|t| humantime::parse_rfc3339(t).ok())
                                .is_some_and(|t| t >= spawned)
                    })
                    .then_some(()))
            },
        )
    }

    /// Starts agent `i` without waiting for it to be Ready (e.g. with its link down). Its
    /// log is appended to, so the logs of earlier runs stay readable.
    pub fn spawn_agent(&mut self, i: usize) -> Result<()> {
        let mqtt = self.mqtt_url();
        let registry = self.registry();
        let tls_args: Vec<std::ffi::OsString> = match &self.mtls {
            Some(pki) => vec![
                "--mqtt-ca".into(),
                pki.ca.ca.clone().into(),
                "--mqtt-cert".into(),
                pki.agents[i].cert.clone().into(),
                "--mqtt-key".into(),
                pki.agents[i].key.clone().into(),
            ],
            None => Vec::new(),
        };
        let extra = self.agent_args.clone();
        let a = &mut self.agents[i];
        let mut cmd = match &a.program {
            Some(p) => {
                let mut c = a.ns.cmd(&p[0]);
                c.args(&p[1..]);
                c
            }
            None => a.ns.cmd(bin("baton-agent")),
        };
        cmd.args([
            "--coordinator",
            &mqtt,
            "--node-name",
            &a.name,
            "--insecure-registry",
            &registry,
        ])
        .args(["--heartbeat-secs", "1"])
        .env("RUST_LOG", log_filter())
        // Every heartbeat goes out, as before link profiles: tests watch them (Ready after
        // a restart, refused forgeries). A test of quiet links passes the flag, which wins.
        // (The eviction levels come with the namespace's command: `Netns::cmd`.)
        .env("BATON_HEARTBEAT_MAX_SECS", "1");
        match a.data_dir.strip_prefix(self.dir.path()) {
            Ok(rel) if self.relative_data_dirs => {
                cmd.current_dir(self.dir.path()).arg("--data-dir").arg(rel)
            }
            _ => cmd.arg("--data-dir").arg(&a.data_dir),
        };
        // A test's own `--pod-cidr` (in `agent_args`) wins: the flag may be given once.
        if !extra.iter().any(|a| a == "--pod-cidr") {
            cmd.args(["--pod-cidr", &format!("10.42.{}.0/24", i + 1)]);
        }
        cmd.args(tls_args).args(DEV_AGENT_FLAGS).args(extra);
        let log = a.data_dir.with_extension("log");
        a.proc = Some(Proc::spawn_appending(&a.name.clone(), &mut cmd, log)?);
        Ok(())
    }

    /// The CLI config with the admin token that the coordinator writes on first start.
    pub fn admin_conf(&self) -> PathBuf {
        self.dir.path().join("coordinator").join("admin.conf")
    }

    /// The coordinator's API as the CLI in the hub reaches it.
    pub fn api_url(&self) -> String {
        match &self.remote {
            Some(r) => r.api.clone(),
            None => "http://127.0.0.1:7474".to_owned(),
        }
    }

    /// The `baton` CLI in the hub namespace, as admin, against the coordinator at `api`:
    /// the one place the CLI's environment in a lab is set.
    pub fn baton_cmd_at(&self, api: &str) -> Command {
        let mut cmd = self.hub.cmd(bin("baton"));
        cmd.env("BATON_CONFIG", self.admin_conf())
            .env_remove("BATON_TOKEN")
            .env("BATON_SERVER", api);
        cmd
    }

    /// [`Lab::baton_cmd_at`] the lab's coordinator.
    pub fn baton_cmd(&self) -> Command {
        self.baton_cmd_at(&self.api_url())
    }

    /// Runs the `baton` CLI in the hub namespace against the coordinator, as admin.
    pub fn baton(&self, args: &[&str]) -> Result<Output> {
        sh(self.baton_cmd().args(args))
    }

    /// The CLI's result without failing on a non-zero exit.
    pub fn baton_raw(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut cmd = self.baton_cmd();
        cmd.args(args);
        if let Some(input) = stdin {
            use std::io::Write;
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(input.as_bytes())?;
            return Ok(child.wait_with_output()?);
        }
        Ok(cmd.output()?)
    }

    pub fn apply(&self, yaml: &str) -> Result<Output> {
        let out = self.baton_raw(&["apply", "-f", "-"], Some(yaml))?;
        if !out.status.success() {
            bail!("apply failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out)
    }

    pub fn get_json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.baton(&a)?;
        serde_json::from_slice(&out.stdout).with_context(|| format!("baton {a:?} printed no JSON"))
    }

    pub fn pods(&self) -> Result<Vec<Value>> {
        Ok(items(&self.get_json(&["get", "pods"])?))
    }

    pub fn agent_by_node(&self, node: &str) -> Option<&Agent> {
        self.agents.iter().find(|a| a.name == node)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Agents first (they stop their pods on SIGTERM), then a reset for anything left.
        for i in 0..self.agents.len() {
            if let Some(mut p) = self.agents[i].proc.take() {
                p.stop(Duration::from_secs(40));
                drop(p);
            }
            let _ = self.reset_command(i).output();
        }
        self.coordinator.take();
        self.etcd.take();
        self.mosquitto.take();
        self.nats.take();
        let _ = self
            .hub
            .cmd(repo_root().join("images/registry.sh"))
            .args(["stop", &self.registry()])
            .arg(&self.registry_dir)
            .output();
    }
}

/// The objects of a `get -o json` answer, whether it printed a list or one object.
pub fn items(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Object(o) if o.contains_key("items") => {
            o["items"].as_array().cloned().unwrap_or_default()
        }
        other => vec![other.clone()],
    }
}

impl Lab {
    /// Kills agent `i` with SIGKILL (a crash): its containers keep running.
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut p) = self.agents[i].proc.take() {
            p.kill();
        }
    }

    /// Takes agent `i`'s link to the hub down or up (a network cut, not a crash).
    pub fn set_link(&self, i: usize, up: bool) -> Result<()> {
        ip(&[
            "-n",
            &self.agents[i].ns.0,
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ])
    }

    /// Runs `baton-agent reset` for agent `i` (which must be stopped): removes its
    /// containers, mounts and pod networks.
    pub fn reset_agent(&self, i: usize) -> Result<()> {
        sh(&mut self.reset_command(i)).map(|_| ())
    }

    /// `baton-agent reset` for agent `i`, with the node name, pod CIDR and data dir it
    /// runs with.
    fn reset_command(&self, i: usize) -> Command {
        let a = &self.agents[i];
        let mut cmd = a.ns.cmd(bin("baton-agent"));
        cmd.args([
            "reset",
            "--node-name",
            &a.name,
            "--pod-cidr",
            &format!("10.42.{}.0/24", i + 1),
        ])
        .arg("--data-dir")
        .arg(&a.data_dir);
        cmd
    }

    /// Index of the agent running node `node`.
    pub fn agent_index(&self, node: &str) -> Option<usize> {
        self.agents.iter().position(|a| a.name == node)
    }
}

/// The pids in a container's pids cgroup (`baton/<node>/<pod uid>/<container>`), sorted;
/// empty if the cgroup is gone.
pub fn container_pids(node: &str, uid: &str, container: &str) -> Vec<u32> {
    fleet::cgroup_procs(&fleet::cgroup_dir("pids", node).join(uid).join(container))
}

impl Lab {
    /// Kills the coordinator with SIGKILL, as a crash or a power cut of the hub would: no
    /// shutdown, no last words. With the embedded broker, the broker dies with it.
    pub fn kill_coordinator(&mut self) {
        if let Some(mut p) = self.coordinator.take() {
            p.kill();
        }
    }

    /// Kills the external Mosquitto with SIGKILL, waits `down_for`, and starts it again with
    /// the same configuration (no persistence: retained messages are lost, as after a crash).
    pub fn restart_mosquitto(&mut self, down_for: Duration) -> Result<()> {
        if let Some(mut p) = self.mosquitto.take() {
            p.kill();
        }
        std::thread::sleep(down_for);
        self.start_mosquitto()
    }

    /// Everything agent `i` has logged, across its restarts.
    pub fn agent_log(&self, i: usize) -> String {
        fs::read_to_string(self.agents[i].data_dir.with_extension("log")).unwrap_or_default()
    }
}
