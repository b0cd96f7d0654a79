//! The whole coordinator over real sockets: `server::run` with the embedded broker (and
//! with a real Mosquitto), a scripted fake agent speaking the wire protocol over MQTT,
//! the HTTP API through reqwest, and the `baton` binary as a subprocess.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baton_coordinator::server::{MqttMode, Server, ServerConfig};
use baton_proto::topics::{self, Kind, Up};
use baton_proto::{
    BString, BVec, Body, Capacity, ContainerState, ContainerStatus, DesiredState, Envelope,
    Heartbeat, Hello, NodeName, NodeStatus, PodStatus, Sender,
};
use rumqttc::{AsyncClient, Event as MqttEvent, LastWill, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct TestServer {
    http: SocketAddr,
    /// A client that sends the generated admin token.
    client: reqwest::Client,
    mqtt_port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), baton_coordinator::server::ServerError>>>,
}

impl TestServer {
    async fn start(data_dir: &Path, mqtt: MqttMode) -> Result<Self> {
        let external_port = match &mqtt {
            MqttMode::External { url } => Some(
                url.rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .context("port")?,
            ),
            MqttMode::Embedded { .. } => None,
        };
        let cfg = ServerConfig {
            data_dir: data_dir.to_owned(),
            http_listen: "127.0.0.1:0".parse()?,
            insecure_allow_remote: false,
            tls: None,
            mqtt,
            heartbeat_timeout: Duration::from_secs(20),
            pod_eviction_timeout: Duration::from_secs(60),
            pod_drain: Duration::from_secs(2),
            policy: Default::default(),
            // The fake agents below speak plain, unsigned MQTT: development mode.
            insecure_mqtt: true,
            security: baton_coordinator::security::gate::SecurityConfig {
                require_signatures: false,
                ..Default::default()
            },
            ..ServerConfig::new(data_dir)
        };
        let server = Server::bind(cfg).await?;
        let http = server.http_addr();
        let mqtt_port = server
            .mqtt_addr()
            .map(|a| a.port())
            .or(external_port)
            .context("mqtt port")?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let s = Self {
            http,
            client: admin_client(data_dir)?,
            mqtt_port,
            stop: Some(stop),
            task: Some(task),
        };
        // A node's message reaches the coordinator only once it has subscribed.
        poll_json(
            &s.client,
            &format!("{}/healthz", s.url()),
            "bridge subscribed",
            |v| v["mqtt"]["connected"] == true,
        )
        .await?;
        Ok(s)
    }

    fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    async fn stop(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(DEADLINE, t)
                .await
                .context("server did not stop")???;
        }
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A Mosquitto on a free loopback port, killed on drop.
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 10000\npersistence false\n"),
        )?;
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start /usr/sbin/mosquitto (scripts/install-deps.sh installs it)")?;
        let m = Self {
            child,
            port,
            _dir: dir,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > DEADLINE {
                bail!("mosquitto did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(m)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scripted agent: speaks the wire protocol as a real agent would, and lets the test
/// assert on exactly what the coordinator sends it.
struct FakeAgent {
    node: NodeName,
    client: AsyncClient,
    inbox: mpsc::UnboundedReceiver<Body>,
    seq: u64,
    task: JoinHandle<()>,
}

impl FakeAgent {
    async fn connect(port: u16, node: &str) -> Result<Self> {
        let node = NodeName::new(node)?;
        let mut opts = MqttOptions::new(format!("agent-{node}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(512 * 1024, 512 * 1024);
        let will = Envelope::new(Sender::Node(node.clone()), 0, Body::Offline).encode()?;
        opts.set_last_will(LastWill::new(
            topics::topic(&node, Kind::Up(Up::Offline)),
            will,
            QoS::AtLeastOnce,
            false,
        ));
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (tx, inbox) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed_rx) = oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let filter = topics::agent_filter(&node);
        let sub_client = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub_client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                        if let Some(s) = subscribed_tx.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        let env = Envelope::decode(&p.payload)
                            .expect("the coordinator sends valid envelopes");
                        assert_eq!(env.sender, Sender::Coordinator);
                        assert_eq!(
                            topics::parse(&p.topic).map(|(_, k)| k),
                            Some(Kind::of(&env.body))
                        );
                        let _ = tx.send(env.body);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(DEADLINE, subscribed_rx)
            .await
            .context("agent did not subscribe")??;
        Ok(Self {
            node,
            client,
            inbox,
            seq: 0,
            task,
        })
    }

    async fn send(&mut self, body: Body) -> Result<()> {
        self.seq += 1;
        let topic = topics::topic(&self.node, Kind::of(&body));
        let bytes = Envelope::new(Sender::Node(self.node.clone()), self.seq, body).encode()?;
        self.client
            .publish(topic, QoS::AtLeastOnce, false, bytes)
            .await?;
        Ok(())
    }

    async fn hello(&mut self, applied_generation: u64) -> Result<()> {
        self.send(Body::Hello(Hello {
            arch: "arm64".try_into().map_err(|_| anyhow::anyhow!("arch"))?,
            arch_variant: Default::default(),
            os: "linux".try_into().map_err(|_| anyhow::anyhow!("os"))?,
            agent_version: "0.1.0-test"
                .try_into()
                .map_err(|_| anyhow::anyhow!("version"))?,
            allocatable: Capacity {
                cpu_millis: 4000,
                memory_bytes: 2 << 30,
                pods: 110,
            },
            labels: BVec::new(),
            address: Some("127.0.0.1".parse()?),
            pod_cidr: BString::new("10.42.7.0/24")?,
            applied_generation,
            last_connect_error: None,
            taints: BVec::new(),
        }))
        .await
    }

    /// Waits for a message the predicate accepts, skipping others.
    async fn expect<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Body) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let body = tokio::time::timeout_at(deadline, self.inbox.recv())
                .await
                .with_context(|| format!("{}: timed out waiting for {what}", self.node))?
                .context("agent connection task ended")?;
            if let Some(t) = pick(&body) {
                return Ok(t);
            }
        }
    }

    async fn expect_desired(
        &mut self,
        mut ok: impl FnMut(&DesiredState) -> bool,
    ) -> Result<DesiredState> {
        self.expect("a matching desired state", |b| match b {
            Body::Desired(d) if ok(d) => Some(d.clone()),
            _ => None,
        })
        .await
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn running(d: &DesiredState) -> Result<NodeStatus> {
    let pods = d
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| -> Result<PodStatus> {
            Ok(PodStatus {
                name: p.name.clone(),
                uid: p.uid.clone(),
                pod_ip: Some(format!("10.42.7.{}", i + 2).parse()?),
                containers: BVec::from_vec(
                    p.containers
                        .iter()
                        .map(|c| ContainerStatus {
                            name: c.name.clone(),
                            state: ContainerState::Running {
                                started_at_ms: 1_800_000_000_000,
                            },
                            restart_count: 0,
                            ready: true,
                            last_termination: None,
                        })
                        .collect(),
                )?,
                init_containers: BVec::new(),
                evicted: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(NodeStatus {
        applied_generation: d.generation,
        pods: BVec::from_vec(pods)?,
    })
}

const WEB: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: echo
        image: 127.0.0.1:5000/http-echo:0.1
        resources:
          limits: {cpu: 100m, memory: 32Mi}
";

async fn http_json(req: reqwest::RequestBuilder) -> Result<(u16, Value)> {
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

/// Polls `GET url` until `ok` accepts the JSON, or fails after the deadline.
async fn poll_json(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let start = Instant::now();
    loop {
        let (_, v) = http_json(http.get(url)).await?;
        if ok(&v) {
            return Ok(v);
        }
        if start.elapsed() > DEADLINE {
            bail!("timed out waiting for {what}; last answer: {v}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pod_phases(v: &Value) -> Vec<(String, String, String)> {
    v["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        p["spec"]["nodeName"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        p["status"]["phase"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A reqwest client that sends the admin token from `<data_dir>/admin.conf`.
fn admin_client(data_dir: &Path) -> Result<reqwest::Client> {
    let conf = baton_coordinator::contract::client_config::ClientConfig::load(
        &data_dir.join("admin.conf"),
    )?;
    let token = conf.token.context("admin.conf has no token")?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

/// Runs the `baton` binary with the CLI config `conf` (the server's admin.conf, which
/// names its address and admin token).
fn baton(conf: &Path, args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .env("BATON_CONFIG", conf)
        .env_remove("BATON_SERVER")
        .env_remove("BATON_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Hello, desired state, status, and the API's view of it. Returns the pods as
/// (name, node, phase).
async fn scripted_agent_scenario(
    server: &TestServer,
    node: &str,
) -> Result<(FakeAgent, DesiredState)> {
    let mut agent = FakeAgent::connect(server.mqtt_port, node).await?;
    agent.hello(0).await?;
    let first = agent.expect_desired(|_| true).await?;
    assert!(
        first.generation >= 1,
        "a hello is answered with a generation >= 1"
    );
    assert!(first.pods.is_empty());
    // A heartbeat whose status digest the coordinator has not seen (no Status was sent)
    // makes it ask for the status. (It no longer asks after every Hello: a real agent
    // sends its status by itself, and answers a StatusRequest with a Hello.)
    agent
        .send(Body::Heartbeat(Heartbeat {
            applied_generation: first.generation,
            status_digest: 1,
            ..Default::default()
        }))
        .await?;
    agent
        .expect("a status request", |b| {
            (*b == Body::StatusRequest).then_some(())
        })
        .await?;

    let http = server.client.clone();
    let (code, v) = http_json(
        http.post(format!("{}/api/v1/apply", server.url()))
            .body(WEB),
    )
    .await?;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["results"][0]["action"], "created", "{v}");

    let desired = agent.expect_desired(|d| d.pods.len() == 2).await?;
    assert!(desired.generation > first.generation);
    for p in desired.pods.iter() {
        assert!(p.name.starts_with("web-"), "{p:?}");
        assert_eq!(
            p.containers[0].image.as_str(),
            "127.0.0.1:5000/http-echo:0.1"
        );
        assert_eq!(p.containers[0].resources.memory_limit_bytes, Some(32 << 20));
    }
    let status = running(&desired)?;
    agent.send(Body::Status(status.clone())).await?;
    agent
        .send(Body::Heartbeat(Heartbeat {
            applied_generation: desired.generation,
            status_digest: status.digest(),
            ..Default::default()
        }))
        .await?;
    let pods = poll_json(
        &server.client,
        &format!("{}/api/v1/pods", server.url()),
        "pods running",
        |v| {
            let p = pod_phases(v);
            p.len() == 2 && p.iter().all(|(_, n, ph)| n == node && ph == "Running")
        },
    )
    .await?;
    assert_eq!(
        pods["items"][0]["status"]["podIP"]
            .as_str()
            .map(|ip| ip.starts_with("10.42.7.")),
        Some(true)
    );
    Ok((agent, desired))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_end_to_end_and_restart() -> Result<()> {
    let data = tempfile::tempdir()?;
    let embedded = MqttMode::Embedded {
        listen: "127.0.0.1:0".parse()?,
    };
    let server = TestServer::start(data.path(), embedded.clone()).await?;
    let conf = data.path().join("admin.conf");
    let (mut agent, desired) = scripted_agent_scenario(&server, "pi-e2e-1").await?;
    let url = server.url();

    // The CLI sees the same, through the binary.
    let (code, out, err) = baton(&conf, &["get", "pods", "-o", "wide"])?;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("STATUS") && lines[0].ends_with("IP"),
        "{out}"
    );
    assert_eq!(lines.len(), 3, "{out}");
    for l in &lines[1..] {
        assert!(
            l.starts_with("web-")
                && l.contains("1/1")
                && l.contains("Running")
                && l.contains("pi-e2e-1"),
            "{out}"
        );
    }
    let (code, out, err) = baton(&conf, &["get", "deploy"])?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("web") && l.contains("2/2")),
        "{out}"
    );
    let (code, out, _) = baton(&conf, &["get", "no", "pi-e2e-1", "-o", "json"])?;
    assert_eq!(code, 0);
    let node: Value = serde_json::from_str(&out)?;
    assert_eq!(node["status"]["ready"], true);
    assert_eq!(node["status"]["appliedGeneration"], desired.generation);
    let (code, out, _) = baton(&conf, &["describe", "pod", desired.pods[0].name.as_str()])?;
    assert_eq!(code, 0);
    assert!(
        out.contains("Events:")
            && out.contains("Scheduled")
            && out.contains("Controlled By:  Deployment/web"),
        "{out}"
    );
    let (code, _, err) = baton(&conf, &["get", "pod", "nope"])?;
    assert_eq!(code, 1);
    assert!(err.contains("NotFound") && err.contains("nope"), "{err}");

    // Garbage on a node's up topic is dropped: the server goes on serving.
    let evil = FakeAgent::connect(server.mqtt_port, "evil").await?;
    let status_topic = topics::topic(&NodeName::new("pi-e2e-1")?, Kind::Up(Up::Status));
    evil.client
        .publish(
            status_topic.clone(),
            QoS::AtLeastOnce,
            false,
            vec![1u8, 0xff, 0xff, 0xff, 0x07],
        )
        .await?;
    // Well-formed, but claims to be another node than its topic says.
    let spoof = Envelope::new(
        Sender::Node(NodeName::new("evil")?),
        1,
        Body::Status(NodeStatus {
            applied_generation: 0,
            pods: BVec::new(),
        }),
    )
    .encode()?;
    evil.client
        .publish(status_topic.clone(), QoS::AtLeastOnce, false, spoof)
        .await?;
    // Larger than an envelope may be (the broker may also refuse it, which is fine).
    evil.client
        .publish(
            status_topic,
            QoS::AtLeastOnce,
            false,
            vec![0u8; baton_proto::MAX_MESSAGE_BYTES + 100],
        )
        .await?;
    let health = poll_json(
        &server.client,
        &format!("{url}/healthz"),
        "dropped messages counted",
        |v| v["mqtt"]["dropped"].as_u64().is_some_and(|d| d >= 2),
    )
    .await?;
    assert_eq!(health["status"], "ok");
    // The pods are untouched and the bridge still delivers: a heartbeat with a stale
    // generation is answered with the desired state.
    let v = poll_json(
        &server.client,
        &format!("{url}/api/v1/pods"),
        "pods",
        |_| true,
    )
    .await?;
    assert!(pod_phases(&v).iter().all(|(_, _, ph)| ph == "Running"));
    agent
        .send(Body::Heartbeat(Heartbeat {
            applied_generation: 0,
            status_digest: 0,
            ..Default::default()
        }))
        .await?;
    let again = agent
        .expect_desired(|d| d.generation == desired.generation)
        .await?;
    assert_eq!(again, desired);
    drop(evil);

    // Restart on the same data dir: everything is still there. (The first embedded
    // broker cannot be stopped, so the new server gets a new MQTT port.)
    let before = server
        .client
        .get(format!("{url}/api/v1/pods"))
        .send()
        .await?
        .json::<Value>()
        .await?;
    server.stop().await?;
    drop(agent); // only now: its last will must not reach the first server
    let (code, _, err) = baton(&conf, &["get", "pods"])?;
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach the coordinator") && err.contains("baton server"),
        "{err}"
    );

    let server = TestServer::start(data.path(), embedded).await?;
    let after = server
        .client
        .get(format!("{}/api/v1/pods", server.url()))
        .send()
        .await?
        .json::<Value>()
        .await?;
    assert_eq!(pod_phases(&after), pod_phases(&before));
    assert_eq!(after, before);
    let mut agent = FakeAgent::connect(server.mqtt_port, "pi-e2e-1").await?;
    agent.hello(desired.generation).await?;
    let back = agent.expect_desired(|_| true).await?;
    assert_eq!(
        back, desired,
        "a restarted coordinator sends the same desired state"
    );

    // Scaling to 1 reaches the agent as a new generation with one pod.
    let (code, out, err) = baton(&conf, &["scale", "deployment/web", "--replicas", "1"])?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "deployment.apps/web scaled");
    let scaled = agent.expect_desired(|d| d.pods.len() == 1).await?;
    assert!(scaled.generation > desired.generation);
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_real_mosquitto() -> Result<()> {
    let mosquitto = Mosquitto::start()?;
    let data = tempfile::tempdir()?;
    let server = TestServer::start(
        data.path(),
        MqttMode::External {
            url: format!("mqtt://127.0.0.1:{}", mosquitto.port),
        },
    )
    .await?;
    let conf = data.path().join("admin.conf");
    let (agent, desired) = scripted_agent_scenario(&server, "pi-mosq-1").await?;

    // The agent vanishing fires its last will: the node goes NotReady, its pods Unknown.
    agent.task.abort();
    drop(agent);
    let nodes = poll_json(
        &server.client,
        &format!("{}/api/v1/nodes/pi-mosq-1", server.url()),
        "node not ready",
        |v| v["status"]["ready"] == false,
    )
    .await?;
    assert_eq!(nodes["status"]["desiredGeneration"], desired.generation);
    let (code, out, err) = baton(&conf, &["get", "pods"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().skip(1).all(|l| l.contains("Unknown")), "{out}");
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_taken_port_and_a_remote_address() -> Result<()> {
    let data = tempfile::tempdir()?;
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let mut cfg = ServerConfig::new(data.path());
    cfg.http_listen = "127.0.0.1:0".parse()?;
    cfg.mqtt = MqttMode::Embedded {
        listen: taken.local_addr()?,
    };
    let err = Server::bind(cfg.clone())
        .await
        .err()
        .context("bound a taken port")?;
    assert!(err.to_string().contains("cannot listen for MQTT"), "{err}");

    cfg.http_listen = "0.0.0.0:0".parse()?;
    let err = Server::bind(cfg)
        .await
        .err()
        .context("served on 0.0.0.0 without TLS")?;
    assert!(err.to_string().contains("--tls-cert"), "{err}");
    assert!(err.to_string().contains("--insecure-allow-remote"), "{err}");
    Ok(())
}
