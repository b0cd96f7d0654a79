//! The `baton` command line: `baton server` and a kubectl-like client of the HTTP API.
//!
//! Every flag can also be set from the environment (`BATON_*`), which is how systemd
//! units and containers configure it. Output follows kubectl's habits (`get` tables,
//! `-o wide|json|yaml`, `describe` with an Events section, `deployment.apps/web created`)
//! so that muscle memory carries over. The table renderers are pure functions of the
//! API's JSON and the current time, tested below.

use std::io::{IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;

use crate::contract::client_config::{self, ConfigError, Overrides};
use crate::contract::{Applied, ApplyAction, ResourceKind};
use crate::decide::rollout::RolloutProgress;
use crate::model::api;
use crate::model::quantity;
use crate::server::{MqttMode, ServerConfig};

pub mod upload;

#[derive(Debug, Parser)]
#[command(
    name = "baton",
    version,
    about = "Baton: an embedded-first edge orchestrator",
    propagate_version = true
)]
pub struct Cli {
    /// The coordinator's API (overrides the config file's `server`; default
    /// http://127.0.0.1:7474).
    #[arg(long, global = true, env = "BATON_SERVER")]
    pub server: Option<String>,
    /// An API token (overrides the config file's `token`).
    #[arg(long, global = true, env = "BATON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The CLI config (server, token, certificate-authority); default ~/.baton/config,
    /// else /var/lib/baton/admin.conf if readable.
    #[arg(long, global = true, env = "BATON_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format (RUST_LOG sets the level).
    #[arg(long, global = true, env = "BATON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator: API server, scheduler, controllers, store and MQTT broker.
    Server(Box<ServerArgs>),
    /// Create or update objects from a manifest (`-f -` reads stdin).
    Apply {
        #[arg(short = 'f', long = "filename", env = "BATON_APPLY_FILE")]
        file: String,
    },
    /// List nodes, deployments or pods, or show one.
    Get {
        /// nodes|deployments|pods (also node/no, deployment/deploy, pod/po, or TYPE/NAME)
        resource: String,
        name: Option<String>,
        #[arg(short = 'o', long = "output", env = "BATON_OUTPUT", value_enum)]
        output: Option<Output>,
    },
    /// Delete a deployment (with its pods) or a pod.
    Delete {
        resource: String,
        name: Option<String>,
    },
    /// Set a deployment's replica count.
    Scale {
        /// `deployment NAME` or `deployment/NAME`
        resource: String,
        name: Option<String>,
        #[arg(long)]
        replicas: u32,
    },
    /// Show one object in detail, with its events.
    Describe {
        resource: String,
        name: Option<String>,
    },
    /// Manage a deployment's rollout: status, history, undo.
    Rollout {
        #[command(subcommand)]
        action: RolloutCommand,
    },
    /// Manage API tokens and join tokens (admin only).
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
    /// Manage node identities: revoke, rotate (the device key), identity (show it).
    Node {
        #[command(subcommand)]
        action: NodeCommand,
    },
    /// Security counters: refused messages per reason and node.
    Security {
        #[command(subcommand)]
        action: SecurityCommand,
    },
    /// Manage images the coordinator serves to its agents (air-gapped sites).
    Image {
        #[command(subcommand)]
        action: ImageCommand,
    },
    /// Certificates and configuration for an external MQTT broker, issued by the
    /// coordinator's CA (run on the coordinator's host).
    Broker {
        #[command(subcommand)]
        action: BrokerCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum BrokerCommand {
    /// Write Mosquitto's certificate and key, the coordinator's client certificate, the
    /// CA, the ACL and a ready mosquitto.conf into --out: then `mosquitto -c
    /// OUT/mosquitto.conf`.
    MosquittoConfig {
        /// The coordinator's data directory (its CA signs the certificates).
        #[arg(long, env = "BATON_DATA_DIR", default_value = "/var/lib/baton")]
        data_dir: PathBuf,
        /// Where to write the files.
        #[arg(long, env = "BATON_MOSQUITTO_DIR", default_value = "/etc/baton/mqtt")]
        out: PathBuf,
        /// A host name or address agents dial to reach the broker (repeatable;
        /// comma-separated in the environment). Loopback is always included.
        #[arg(
            long = "san",
            value_name = "NAME",
            env = "BATON_MOSQUITTO_SAN",
            value_delimiter = ',',
            required = true
        )]
        sans: Vec<String>,
        /// Mosquitto's TLS port.
        #[arg(long, env = "BATON_MOSQUITTO_PORT", default_value_t = 8883)]
        port: u16,
    },
}

/// Runs `baton broker ...`: local files only, no API.
pub fn run_broker(
    action: &BrokerCommand,
) -> Result<(), crate::edge::broker_config::BrokerConfigError> {
    match action {
        BrokerCommand::MosquittoConfig {
            data_dir,
            out,
            sans,
            port,
        } => {
            let files =
                crate::edge::broker_config::write(&crate::edge::broker_config::MosquittoConfig {
                    data_dir: data_dir.clone(),
                    out: out.clone(),
                    sans: sans.iter().filter(|s| !s.is_empty()).cloned().collect(),
                    port: *port,
                })?;
            for f in files {
                println!("wrote {}", f.display());
            }
            println!("run: mosquitto -c {}", out.join("mosquitto.conf").display());
            Ok(())
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Upload an OCI image archive (a tar of an OCI layout, e.g. from `skopeo copy ...
    /// oci-archive:FILE` or `docker save`) or an OCI layout directory (admin only).
    Import {
        file: PathBuf,
        /// REPOSITORY[:TAG] to store it as, when the archive names its images only by tag
        /// (or not at all); REPOSITORY alone keeps each image's tag.
        #[arg(long)]
        name: Option<String>,
    },
    /// List imported images.
    List {
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<Output>,
    },
    /// Delete an imported image (REPOSITORY:TAG); blobs no other image needs go with it.
    Delete { name: String },
}

/// `baton node ...`: a node's identity (see [`crate::security::gate`]).
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Revoke a node's identity: its messages are refused from now on, its desired state
    /// is emptied and its Deployment pods are rescheduled elsewhere.
    Revoke { name: String },
    /// Rotate a node's device key without downtime: the coordinator asks the running
    /// agent (a signed RotateKey), which makes a new key and has it certified; both keys
    /// are accepted for --rotation-overlap. Waits until the node's key changed.
    Rotate {
        name: String,
        /// How long to wait for the node to rotate.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// A node's enrolled identity: current and previous key, expiry, revocation.
    Identity {
        name: String,
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<Output>,
    },
}

/// `baton security ...`.
#[derive(Debug, Subcommand)]
pub enum SecurityCommand {
    /// Refused MQTT messages, per reason and per node, since the coordinator started.
    Rejections {
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<Output>,
    },
}

async fn node_command(client: &Client, action: &NodeCommand) -> Result<String, CliError> {
    match action {
        NodeCommand::Revoke { name } => {
            client
                .send(
                    client
                        .http
                        .post(format!("{}/api/v1/nodes/{name}/revoke", client.base)),
                )
                .await?;
            Ok(format!("node/{name} revoked\n"))
        }
        NodeCommand::Rotate { name, timeout } => rotate_node(client, name, *timeout).await,
        NodeCommand::Identity { name, output } => {
            let v = node_identity(client, name).await?;
            Ok(match output {
                Some(Output::Json) => format!("{v:#}\n"),
                _ => format!(
                    "node:        {name}\npublic key:  {}\nprevious:    {}\nnot after:   {}\nfingerprint: {}\nserial:      {}\nrevoked:     {}\n",
                    v["publicKey"].as_str().unwrap_or("-"),
                    v["previousKey"].as_str().unwrap_or("-"),
                    not_after_str(v["notAfter"].as_u64(), SystemTime::now()),
                    v["fingerprint"].as_str().unwrap_or("-"),
                    v["serial"].as_str().unwrap_or("-"),
                    v["revoked"],
                ),
            })
        }
    }
}

/// A certificate's notAfter (Unix seconds) as RFC 3339 UTC with what is left of it:
/// `2027-01-04T10:00:00Z (29d 23h left)`, or `(expired 2h ago)`.
pub fn not_after_str(not_after: Option<u64>, now: SystemTime) -> String {
    let Some(secs) = not_after else {
        return "-".into();
    };
    let at = std::time::UNIX_EPOCH + Duration::from_secs(secs);
    let when = humantime::format_rfc3339_seconds(at);
    let round = |d: Duration| {
        // Two units are enough to read: "29d 23h", "5m 3s".
        let s = humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
        s.split(' ').take(2).collect::<Vec<_>>().join(" ")
    };
    match at.duration_since(now) {
        Ok(left) => format!("{when} ({} left)", round(left)),
        Err(e) => format!("{when} (expired {} ago)", round(e.duration())),
    }
}

async fn node_identity(client: &Client, name: &str) -> Result<serde_json::Value, CliError> {
    client
        .send(
            client
                .http
                .get(format!("{}/api/v1/nodes/{name}/identity", client.base)),
        )
        .await
}

/// `baton node rotate`: asks, then polls the node's identity until its key changed.
async fn rotate_node(
    client: &Client,
    name: &str,
    timeout: std::time::Duration,
) -> Result<String, CliError> {
    let before = client
        .send(
            client
                .http
                .post(format!("{}/api/v1/nodes/{name}/rotate-key", client.base)),
        )
        .await?;
    let old = before["publicKey"].as_str().unwrap_or_default().to_owned();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let now = node_identity(client, name).await?;
        let new = now["publicKey"].as_str().unwrap_or_default();
        if new != old {
            return Ok(format!("node/{name} key rotated: {old} -> {new}\n"));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::Usage(format!(
                "node/{name} asked to rotate its key, but it has not within {timeout:?} (is it online?)"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

async fn security_command(client: &Client, action: &SecurityCommand) -> Result<String, CliError> {
    match action {
        SecurityCommand::Rejections { output } => {
            let v = client
                .send(
                    client
                        .http
                        .get(format!("{}/api/v1/security/rejections", client.base)),
                )
                .await?;
            if matches!(output, Some(Output::Json)) {
                return Ok(format!(
                    "{}\n",
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                ));
            }
            let mut rows: Vec<Vec<String>> = Vec::new();
            if let Some(nodes) = v["nodes"].as_object() {
                for (node, reasons) in nodes {
                    for (reason, n) in reasons.as_object().into_iter().flatten() {
                        rows.push(vec![node.clone(), reason.clone(), n.to_string()]);
                    }
                }
            }
            let mut out = format!(
                "require signatures: {}, window: {}s, duplicates dropped: {}\n",
                v["requireSignatures"], v["windowSeconds"], v["duplicates"]
            );
            out.push_str(&table(&["NODE", "REASON", "COUNT"], &rows));
            Ok(out)
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it; it is shown only this once. With --role: an API token.
    /// Without: a join token that enrolls devices (`baton-agent --join-token`).
    Create {
        /// admin (everything) or read-only (GET routes only).
        #[arg(long, value_parser = ["admin", "read-only"], conflicts_with_all = ["ttl", "uses", "labels", "node_name"])]
        role: Option<String>,
        /// A name to list and delete it by (default: a random one).
        #[arg(long, requires = "role")]
        name: Option<String>,
        /// Join token: how long it can be used (default 1h).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Join token: how many devices it can enroll (default 1).
        #[arg(long)]
        uses: Option<u32>,
        /// Join token: labels the enrolled nodes get (k=v,...).
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// Join token: the only node name it may enroll; it may also replace that node's
        /// key (a new device for the same name, or a revoked node coming back).
        #[arg(long)]
        node_name: Option<String>,
    },
    /// List tokens (names, roles and ages; never secrets).
    List,
    /// Delete an API token by its NAME, or a join token by its ID (the JOIN TOKEN column
    /// of `token list`): it stops working at once.
    Delete {
        #[arg(value_name = "NAME|ID")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Wait for a rollout to finish, showing its progress; fails if it cannot finish.
    Status {
        /// `deployment/NAME` or `deployment NAME`
        resource: String,
        name: Option<String>,
        /// Give up after this long (e.g. 90s, 5m); 0 waits forever.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// List a deployment's revisions, or show one template with --revision.
    History {
        resource: String,
        name: Option<String>,
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Roll back to the previous revision, or to --to-revision.
    Undo {
        resource: String,
        name: Option<String>,
        #[arg(long)]
        to_revision: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Wide,
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Where the coordinator keeps its state.
    #[arg(long, env = "BATON_DATA_DIR", default_value = "/var/lib/baton")]
    pub data_dir: PathBuf,
    /// Address of the HTTP API. Off loopback it needs --tls-cert/--tls-key.
    #[arg(long, env = "BATON_LISTEN", default_value = crate::server::DEFAULT_HTTP_LISTEN)]
    pub listen: SocketAddr,
    /// Serve the API over TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "BATON_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "BATON_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve the API on a non-loopback address WITHOUT TLS: tokens cross the network in
    /// clear text.
    #[arg(long, env = "BATON_INSECURE_ALLOW_REMOTE")]
    pub insecure_allow_remote: bool,
    /// Address of the embedded MQTT broker: mutual TLS with certificates from the
    /// coordinator's CA (--mqtt-tls-auto) unless --mqtt-tls-cert or --insecure-mqtt.
    #[arg(long, env = "BATON_MQTT_LISTEN", default_value = crate::server::DEFAULT_MQTT_LISTEN, conflicts_with = "broker")]
    pub mqtt_listen: SocketAddr,
    /// Use this MQTT broker instead of the embedded one: mqtts://host:port (its
    /// certificate from the coordinator's CA, `baton broker mosquitto-config`; the
    /// coordinator presents a client certificate it issues itself, CN baton:coordinator),
    /// or mqtt://host:port in clear text.
    #[arg(long, env = "BATON_BROKER")]
    pub broker: Option<String>,
    /// Override: the PEM CA that signed the external broker's certificate (mqtts://).
    #[arg(long, env = "BATON_BROKER_CA", requires_all = ["broker", "broker_cert", "broker_key"])]
    pub broker_ca: Option<PathBuf>,
    /// Override: the coordinator's PEM client certificate for the external broker.
    #[arg(long, env = "BATON_BROKER_CERT", requires_all = ["broker", "broker_ca", "broker_key"])]
    pub broker_cert: Option<PathBuf>,
    /// The PEM private key of --broker-cert.
    #[arg(long, env = "BATON_BROKER_KEY", requires_all = ["broker", "broker_ca", "broker_cert"])]
    pub broker_key: Option<PathBuf>,
    /// The embedded broker speaks TLS with this PEM certificate chain (instead of one from
    /// the coordinator's CA) and requires client certificates signed by --mqtt-client-ca.
    #[arg(long, env = "BATON_MQTT_TLS_CERT", requires_all = ["mqtt_tls_key", "mqtt_client_ca"], conflicts_with = "broker")]
    pub mqtt_tls_cert: Option<PathBuf>,
    /// The PEM private key of --mqtt-tls-cert.
    #[arg(long, env = "BATON_MQTT_TLS_KEY", requires_all = ["mqtt_tls_cert", "mqtt_client_ca"], conflicts_with = "broker")]
    pub mqtt_tls_key: Option<PathBuf>,
    /// The one PEM CA certificate whose certificates the embedded broker's clients must
    /// present.
    #[arg(long, env = "BATON_MQTT_CLIENT_CA", requires_all = ["mqtt_tls_cert", "mqtt_tls_key"], conflicts_with = "broker")]
    pub mqtt_client_ca: Option<PathBuf>,
    /// The embedded broker's TLS certificate comes from the coordinator's CA, for
    /// --mqtt-listen, loopback and --tls-san; clients present node certificates from the
    /// same CA (enrollment issues them). The default; the flag only states it.
    #[arg(long, env = "BATON_MQTT_TLS_AUTO", conflicts_with_all = ["mqtt_tls_cert", "insecure_mqtt", "broker"])]
    pub mqtt_tls_auto: bool,
    /// DEVELOPMENT ONLY (logged as a warning): the embedded broker speaks plain MQTT to
    /// anyone who can reach it, local users included, and nodes that never enrolled are
    /// accepted unsigned, so anyone who can publish can command them.
    #[arg(long, env = "BATON_INSECURE_MQTT")]
    pub insecure_mqtt: bool,
    /// A node without a heartbeat for this long is NotReady (e.g. 20s, 1m).
    #[arg(long, env = "BATON_HEARTBEAT_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Duration,
    /// A node NotReady for this long loses its Deployment pods to Ready nodes (e.g. 60s).
    #[arg(long, env = "BATON_POD_EVICTION_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub pod_eviction_timeout: Duration,
    /// A deleted Ready pod stays on its node, marked Terminating, for this many seconds
    /// before the node stops it, so clients stop sending it requests first.
    #[arg(long, env = "BATON_POD_DRAIN_SECONDS", default_value_t = 2)]
    pub pod_drain_seconds: u64,
    /// Admit privileged containers (`securityContext.privileged: true`).
    #[arg(long, env = "BATON_ALLOW_PRIVILEGED")]
    pub allow_privileged: bool,
    /// Admit hostPath volumes at or below this directory (repeatable; the environment
    /// variable takes a comma-separated list).
    #[arg(
        long = "allow-host-path",
        value_name = "PREFIX",
        env = "BATON_ALLOW_HOST_PATH",
        value_delimiter = ','
    )]
    pub allow_host_paths: Vec<String>,
    /// Admit adding this capability (e.g. NET_ADMIN; ALL for any), beyond the baseline set
    /// any pod may add (repeatable; comma-separated in the environment).
    #[arg(
        long = "allow-capability",
        value_name = "CAP",
        env = "BATON_ALLOW_CAPABILITY",
        value_delimiter = ','
    )]
    pub allow_capabilities: Vec<String>,
    /// Admit pods with `hostNetwork: true`.
    #[arg(long, env = "BATON_ALLOW_HOST_NETWORK")]
    pub allow_host_network: bool,
    /// Admit `hostPort`s in this range (PORT or FIRST-LAST; ALL or 0-65535 for any, none
    /// for no port; repeatable, comma-separated in the environment). Giving it replaces
    /// the default, the unprivileged 1024-65535: below 1024 live the node's own services
    /// (ssh, DNS, HTTP), which a pod could otherwise stand in for. hostIP plays no part.
    #[arg(
        long = "allow-host-port",
        value_name = "RANGE",
        env = "BATON_ALLOW_HOST_PORT",
        value_delimiter = ',',
        default_value = "1024-65535",
        value_parser = host_port_range
    )]
    pub allow_host_ports: Vec<crate::decide::policy::HostPorts>,
    /// Refuse messages from nodes that have not enrolled even with --insecure-mqtt
    /// (always so without it; enrolled nodes are always verified).
    #[arg(long, env = "BATON_REQUIRE_SIGNATURES")]
    pub require_signatures: bool,
    /// How far a message's send time may be from this clock before it is refused as
    /// stale (e.g. 10m).
    #[arg(long, env = "BATON_SIGNATURE_WINDOW", default_value = "10m", value_parser = humantime::parse_duration)]
    pub signature_window: Duration,
    /// How long a node's previous key stays valid after a key rotation.
    #[arg(long, env = "BATON_ROTATION_OVERLAP", default_value = "5m", value_parser = humantime::parse_duration)]
    pub rotation_overlap: Duration,
    /// Serve the API over TLS with a certificate from the coordinator's own CA
    /// (<data-dir>/pki/ca.crt, pinned by join tokens), so agents can enroll from other hosts.
    #[arg(long, env = "BATON_TLS_AUTO", conflicts_with = "tls_cert")]
    pub tls_auto: bool,
    /// Extra names or addresses for the --tls-auto and --enroll-listen certificates (repeatable;
    /// comma-separated in the environment).
    #[arg(
        long = "tls-san",
        value_name = "NAME",
        env = "BATON_TLS_SAN",
        value_delimiter = ','
    )]
    pub tls_sans: Vec<String>,
    /// Also serve enrollment and key rotation (only those) over TLS on this address, with
    /// a certificate from the coordinator's CA: devices enroll here while the API stays
    /// on loopback (e.g. 0.0.0.0:7475).
    #[arg(long, env = "BATON_ENROLL_LISTEN")]
    pub enroll_listen: Option<SocketAddr>,
}

/// One `--allow-host-port` value (see [`crate::decide::policy::HostPorts::parse`]).
fn host_port_range(
    s: &str,
) -> Result<crate::decide::policy::HostPorts, crate::decide::policy::HostPortRangeError> {
    crate::decide::policy::HostPorts::parse(&[s])
}

impl ServerArgs {
    pub fn config(&self) -> ServerConfig {
        ServerConfig {
            data_dir: self.data_dir.clone(),
            http_listen: self.listen,
            insecure_allow_remote: self.insecure_allow_remote,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(crate::server::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            mqtt: match &self.broker {
                Some(url) => MqttMode::External { url: url.clone() },
                None => MqttMode::Embedded {
                    listen: self.mqtt_listen,
                },
            },
            heartbeat_timeout: self.heartbeat_timeout,
            pod_eviction_timeout: self.pod_eviction_timeout,
            pod_drain: Duration::from_secs(self.pod_drain_seconds),
            mqtt_tls: match (
                &self.mqtt_tls_cert,
                &self.mqtt_tls_key,
                &self.mqtt_client_ca,
            ) {
                (Some(cert), Some(key), Some(ca)) => Some(crate::edge::tls::BrokerTlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: ca.clone(),
                }),
                _ => None,
            },
            insecure_mqtt: self.insecure_mqtt,
            broker_tls: match (&self.broker_ca, &self.broker_cert, &self.broker_key) {
                (Some(ca), Some(cert), Some(key)) => Some(crate::edge::tls::MqttClientFiles {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            policy: crate::decide::policy::Policy {
                allow_privileged: self.allow_privileged,
                allow_host_paths: self.allow_host_paths.clone(),
                allow_capabilities: self
                    .allow_capabilities
                    .iter()
                    .map(|c| {
                        let c = c.trim().to_ascii_uppercase();
                        c.strip_prefix("CAP_").map(str::to_owned).unwrap_or(c)
                    })
                    .collect(),
                allow_host_network: self.allow_host_network,
                allow_host_ports: self.allow_host_ports.iter().cloned().collect(),
            },
            security: crate::security::gate::SecurityConfig {
                require_signatures: self.require_signatures || !self.insecure_mqtt,
                window: self.signature_window,
                rotation_overlap: self.rotation_overlap,
            },
            api_tls_auto: self.tls_auto,
            enroll_listen: self.enroll_listen,
            tls_sans: self.tls_sans.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach the coordinator at {server}: is `baton server` running? ({reason})")]
    Unreachable { server: String, reason: String },
    #[error("cannot verify the TLS certificate of {server} ({reason}): set certificate-authority in the CLI config to the CA that signed it")]
    Tls { server: String, reason: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid certificate-authority: {0}")]
    Ca(String),
    #[error("Error from server ({status}): {message}")]
    Server { status: String, message: String },
    #[error("{0}")]
    Usage(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("unexpected answer from the coordinator: {0}")]
    Protocol(String),
    /// A rollout that cannot finish, or did not within `--timeout`.
    #[error("{0}")]
    Rollout(String),
}

/// A resource argument: `pods`, `pod NAME` or `pod/NAME`.
fn target(resource: &str, name: Option<&str>) -> Result<(ResourceKind, Option<String>), CliError> {
    let (kind, inline) = match resource.split_once('/') {
        Some((k, n)) => (k, Some(n.to_owned())),
        None => (resource, None),
    };
    let kind = ResourceKind::parse(kind).ok_or_else(|| {
        CliError::Usage(format!("error: the server doesn't have a resource type {kind:?} (use nodes, deployments or pods)"))
    })?;
    let name = match (inline, name) {
        (Some(_), Some(_)) => {
            return Err(CliError::Usage(
                "error: give the name either as TYPE/NAME or as TYPE NAME, not both".into(),
            ))
        }
        (Some(n), None) => Some(n),
        (None, n) => n.map(str::to_owned),
    };
    if name.as_deref() == Some("") {
        return Err(CliError::Usage("error: empty resource name".into()));
    }
    Ok((kind, name))
}

fn named(
    resource: &str,
    name: Option<&str>,
    verb: &str,
) -> Result<(ResourceKind, String), CliError> {
    match target(resource, name)? {
        (k, Some(n)) => Ok((k, n)),
        (_, None) => Err(CliError::Usage(format!(
            "error: resource name may not be empty for {verb}"
        ))),
    }
}

/// kubectl's name for a kind in messages: `deployment.apps/web`.
fn qualified(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Deployment => "deployment.apps",
        ResourceKind::Pod => "pod",
        ResourceKind::Node => "node",
        ResourceKind::Secret => "secret",
    }
}

struct Client {
    base: String,
    http: reqwest::Client,
    token: String,
}

impl Client {
    /// A client for the coordinator the flags and config name. With a
    /// `certificate-authority`, only that CA is trusted, as kubectl does.
    fn new(cli: &Cli) -> Result<Self, CliError> {
        let r = client_config::resolve(
            &Overrides {
                config: cli.config.clone(),
                server: cli.server.clone(),
                token: cli.token.clone(),
            },
            &client_config::default_paths(),
        )?;
        let mut b = reqwest::Client::builder();
        if let Some(pem) = &r.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| CliError::Ca(error_chain(&e)))?;
            if certs.is_empty() {
                return Err(CliError::Ca("no PEM certificate found".into()));
            }
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        Ok(Self {
            base: r.server.trim_end_matches('/').to_owned(),
            http: b.build().map_err(|e| CliError::Ca(error_chain(&e)))?,
            token: r.token,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, CliError> {
        self.send_with(req.timeout(Duration::from_secs(30))).await
    }

    /// [`Client::send`] with no overall timeout of its own (an upload may take long).
    async fn send_with(&self, req: reqwest::RequestBuilder) -> Result<Value, CliError> {
        let resp = req.bearer_auth(&self.token).send().await.map_err(|e| {
            let reason = error_chain(&e);
            if reason.contains("certificate") {
                CliError::Tls {
                    server: self.base.clone(),
                    reason,
                }
            } else {
                CliError::Unreachable {
                    server: self.base.clone(),
                    reason,
                }
            }
        })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| CliError::Protocol(e.to_string()))?;
        let value: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        if status.is_success() {
            return Ok(value);
        }
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string());
        let status = match status.as_u16() {
            400 => "BadRequest".to_owned(),
            401 => "Unauthorized".to_owned(),
            403 => "Forbidden".to_owned(),
            404 => "NotFound".to_owned(),
            409 => "Conflict".to_owned(),
            500 => "InternalError".to_owned(),
            503 => "ServiceUnavailable".to_owned(),
            s => s.to_string(),
        };
        Err(CliError::Server { status, message })
    }

    async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn items(v: &Value) -> Vec<Value> {
    v.get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn parse_objects<T: serde::de::DeserializeOwned>(values: &[Value]) -> Result<Vec<T>, CliError> {
    values
        .iter()
        .map(|v| serde_json::from_value(v.clone()).map_err(|e| CliError::Protocol(e.to_string())))
        .collect()
}

/// Runs a client subcommand, printing to stdout. `server` is handled by the binary.
pub async fn run(cli: &Cli) -> Result<(), CliError> {
    let client = Client::new(cli)?;
    let mut out = String::new();
    match &cli.command {
        Command::Server(_) | Command::Broker { .. } => {
            return Err(CliError::Usage(
                "internal: `server` and `broker` are run by the binary".into(),
            ))
        }
        Command::Apply { file } => {
            let yaml = read_manifest(file)?;
            let v = client
                .send(
                    client
                        .http
                        .post(format!("{}/api/v1/apply", client.base))
                        .body(yaml),
                )
                .await?;
            let results: Vec<Applied> = v
                .get("results")
                .map(|r| serde_json::from_value(r.clone()))
                .transpose()
                .map_err(|e| CliError::Protocol(e.to_string()))?
                .unwrap_or_default();
            for r in results {
                let action = match r.action {
                    ApplyAction::Created => "created",
                    ApplyAction::Configured => "configured",
                    ApplyAction::Unchanged => "unchanged",
                };
                out.push_str(&format!("{}/{} {action}\n", qualified(r.kind), r.name));
            }
        }
        Command::Get {
            resource,
            name,
            output,
        } => {
            let (kind, name) = target(resource, name.as_deref())?;
            let path = match &name {
                Some(n) => format!("/api/v1/{}/{}", kind.plural(), n),
                None => format!("/api/v1/{}", kind.plural()),
            };
            let v = client.get(&path).await?;
            let objects = if name.is_some() {
                vec![v.clone()]
            } else {
                items(&v)
            };
            out = match output {
                Some(Output::Json) => {
                    let doc = if name.is_some() { v } else { list_doc(objects) };
                    serde_json::to_string_pretty(&doc)
                        .map_err(|e| CliError::Protocol(e.to_string()))?
                        + "\n"
                }
                Some(Output::Yaml) => {
                    let doc = if name.is_some() { v } else { list_doc(objects) };
                    serde_yaml_ng::to_string(&doc).map_err(|e| CliError::Protocol(e.to_string()))?
                }
                Some(Output::Wide) | None => {
                    let wide = *output == Some(Output::Wide);
                    let now = SystemTime::now();
                    if objects.is_empty() && name.is_none() {
                        eprintln!("No resources found");
                        String::new()
                    } else {
                        match kind {
                            ResourceKind::Pod => pods_table(&parse_objects(&objects)?, wide, now),
                            ResourceKind::Deployment => {
                                deployments_table(&parse_objects(&objects)?, wide, now)
                            }
                            ResourceKind::Node => nodes_table(&parse_objects(&objects)?, wide, now),
                            ResourceKind::Secret => secrets_table(&objects, now),
                        }
                    }
                }
            };
        }
        Command::Delete { resource, name } => {
            let (kind, name) = named(resource, name.as_deref(), "delete")?;
            client
                .send(client.http.delete(format!(
                    "{}/api/v1/{}/{}",
                    client.base,
                    kind.plural(),
                    name
                )))
                .await?;
            out.push_str(&format!("{} \"{name}\" deleted\n", qualified(kind)));
        }
        Command::Scale {
            resource,
            name,
            replicas,
        } => {
            let (kind, name) = named(resource, name.as_deref(), "scale")?;
            if kind != ResourceKind::Deployment {
                return Err(CliError::Usage(format!(
                    "error: cannot scale a {}: only deployments scale",
                    kind.as_str()
                )));
            }
            let url = format!("{}/api/v1/deployments/{}/scale", client.base, name);
            client
                .send(
                    client
                        .http
                        .post(url)
                        .json(&serde_json::json!({ "replicas": replicas })),
                )
                .await?;
            out.push_str(&format!("deployment.apps/{name} scaled\n"));
        }
        Command::Rollout { action } => {
            out = rollout(&client, action).await?;
        }
        Command::Token { action } => {
            out = token(&client, action).await?;
        }
        Command::Node { action } => {
            out = node_command(&client, action).await?;
        }
        Command::Security { action } => {
            out = security_command(&client, action).await?;
        }
        Command::Image { action } => {
            out = image(&client, action).await?;
        }
        Command::Describe { resource, name } => {
            let (kind, name) = named(resource, name.as_deref(), "describe")?;
            let v = client
                .get(&format!("/api/v1/describe/{}/{}", kind.plural(), name))
                .await?;
            let object = v.get("object").cloned().unwrap_or(Value::Null);
            let events: Vec<api::Event> = parse_objects(
                v.get("events")
                    .and_then(Value::as_array)
                    .map_or(&[][..], |a| a),
            )?;
            let now = SystemTime::now();
            out = match kind {
                ResourceKind::Pod => {
                    describe_pod(&parse_objects(&[object])?.remove(0), &events, now)
                }
                ResourceKind::Deployment => {
                    describe_deployment(&parse_objects(&[object])?.remove(0), &events, now)
                }
                ResourceKind::Node => {
                    let node: api::Node = parse_objects(&[object])?.remove(0);
                    let pods: Vec<api::Pod> =
                        parse_objects(&items(&client.get("/api/v1/pods").await?))?;
                    let on_node: Vec<&api::Pod> = pods
                        .iter()
                        .filter(|p| {
                            p.spec.node_name.as_deref() == Some(node.metadata.name.as_str())
                        })
                        .collect();
                    // 404: not enrolled (a fleet without identities); shown as such.
                    let identity = client
                        .get(&format!("/api/v1/nodes/{}/identity", node.metadata.name))
                        .await
                        .ok();
                    describe_node(&node, identity.as_ref(), &on_node, &events, now)
                }
                ResourceKind::Secret => describe_secret(&object, &events, now),
            };
        }
    }
    print!("{out}");
    Ok(())
}

async fn token(client: &Client, action: &TokenCommand) -> Result<String, CliError> {
    let url = format!("{}/api/v1/tokens", client.base);
    match action {
        TokenCommand::Create {
            role: None,
            ttl,
            uses,
            labels,
            node_name,
            ..
        } => {
            let mut map = serde_json::Map::new();
            for l in labels.iter().filter(|l| !l.is_empty()) {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| CliError::Usage(format!("label {l:?} is not KEY=VALUE")))?;
                map.insert(k.trim().to_owned(), Value::from(v.trim()));
            }
            let v = client
                .send(
                    client
                        .http
                        .post(format!("{url}/join"))
                        .json(&serde_json::json!({
                            "ttlSeconds": ttl.unwrap_or(Duration::from_secs(3600)).as_secs(),
                            "uses": uses.unwrap_or(1),
                            "labels": map,
                            "nodeName": node_name,
                        })),
                )
                .await?;
            let token = v
                .get("token")
                .and_then(Value::as_str)
                .ok_or_else(|| CliError::Protocol("no token in the answer".into()))?;
            let id = v["info"]["id"].as_str().unwrap_or_default();
            eprintln!("join token {id} created; it is shown only this once:");
            Ok(format!("{token}\n"))
        }
        TokenCommand::Create {
            role: Some(role),
            name,
            ..
        } => {
            let name = name
                .clone()
                .unwrap_or_else(|| format!("token-{}", &crate::security::auth::new_secret()[..8]));
            let v = client
                .send(
                    client
                        .http
                        .post(url)
                        .json(&serde_json::json!({ "name": name, "role": role })),
                )
                .await?;
            let secret = v
                .get("token")
                .and_then(Value::as_str)
                .ok_or_else(|| CliError::Protocol("no token in the answer".into()))?;
            eprintln!("token/{name} created ({role}); it is shown only this once:");
            Ok(format!("{secret}\n"))
        }
        TokenCommand::List => {
            let v = client.send(client.http.get(&url)).await?;
            let list: Vec<crate::security::auth::TokenInfo> = parse_objects(&items(&v))?;
            let now = SystemTime::now();
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        t.role.as_str().to_owned(),
                        age(&t.creation_timestamp, now),
                    ]
                })
                .collect();
            let mut out = table(&["NAME", "ROLE", "AGE"], &rows);
            let v = client.send(client.http.get(format!("{url}/join"))).await?;
            let joins: Vec<crate::security::enroll::JoinTokenInfo> = parse_objects(&items(&v))?;
            if !joins.is_empty() {
                let now_s = now
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let rows: Vec<Vec<String>> = joins
                    .iter()
                    .map(|t| {
                        let left = t.expires.saturating_sub(now_s);
                        vec![
                            t.id.clone(),
                            t.uses_left.to_string(),
                            if left == 0 {
                                "expired".into()
                            } else {
                                humantime::format_duration(Duration::from_secs(left)).to_string()
                            },
                            t.node_name.clone().unwrap_or_else(|| "<any>".into()),
                            t.labels
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(","),
                        ]
                    })
                    .collect();
                out.push('\n');
                out.push_str(&table(
                    &["JOIN TOKEN", "USES LEFT", "EXPIRES IN", "NODE", "LABELS"],
                    &rows,
                ));
            }
            Ok(out)
        }
        TokenCommand::Delete { name } => {
            match client
                .send(client.http.delete(format!("{url}/{name}")))
                .await
            {
                Ok(_) => Ok(format!("token \"{name}\" deleted\n")),
                Err(CliError::Server { status, .. }) if status == "NotFound" => {
                    client
                        .send(client.http.delete(format!("{url}/join/{name}")))
                        .await?;
                    Ok(format!("join token \"{name}\" deleted\n"))
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// `baton image ...`: the coordinator's registry (see [`crate::registry`]).
async fn image(client: &Client, action: &ImageCommand) -> Result<String, CliError> {
    use crate::registry::ImageSummary;
    let base = format!("{}/api/v1/images", client.base);
    let platforms = |s: &ImageSummary| {
        if s.platforms.is_empty() {
            "-".to_owned()
        } else {
            s.platforms.join(",")
        }
    };
    match action {
        ImageCommand::Import { file, name } => {
            let started = std::time::Instant::now();
            let bytes = std::fs::metadata(file).map(|m| m.len()).ok();
            let body = crate::cli::upload::upload_body(file)
                .await
                .map_err(|e| CliError::Usage(format!("error: {e}")))?;
            let mut req = client.http.post(format!("{base}/import")).body(body);
            if let Some(n) = name {
                req = req.query(&[("name", n)]);
            }
            let v = client.send_with(req).await?;
            let list: Vec<ImageSummary> = parse_objects(&items(&v))?;
            let secs = started.elapsed().as_secs_f64();
            let mut out = String::new();
            for s in &list {
                out.push_str(&format!(
                    "image/{} imported ({}, {}, {})\n",
                    s.name,
                    s.digest,
                    platforms(s),
                    quantity::format_memory(s.size)
                ));
            }
            match bytes.filter(|_| file.is_file()) {
                Some(b) => eprintln!(
                    "uploaded {} in {secs:.2} s ({:.1} MB/s)",
                    quantity::format_memory(b),
                    b as f64 / 1e6 / secs.max(1e-6)
                ),
                None => eprintln!("uploaded in {secs:.2} s"),
            }
            Ok(out)
        }
        ImageCommand::List { output } => {
            let v = client.get("/api/v1/images").await?;
            let list: Vec<ImageSummary> = parse_objects(&items(&v))?;
            match output {
                Some(Output::Json) => Ok(serde_json::to_string_pretty(&v)
                    .map_err(|e| CliError::Protocol(e.to_string()))?
                    + "\n"),
                Some(Output::Yaml) => {
                    serde_yaml_ng::to_string(&v).map_err(|e| CliError::Protocol(e.to_string()))
                }
                Some(Output::Wide) | None => {
                    if list.is_empty() {
                        eprintln!("No images imported");
                        return Ok(String::new());
                    }
                    Ok(images_table(
                        &list,
                        *output == Some(Output::Wide),
                        SystemTime::now(),
                    ))
                }
            }
        }
        ImageCommand::Delete { name } => {
            client
                .send(client.http.delete(format!("{base}/{name}")))
                .await?;
            Ok(format!("image \"{name}\" deleted\n"))
        }
    }
}

/// `baton image list`: a digest's first 12 hex digits, as `docker images` shows them,
/// unless wide.
pub fn images_table(list: &[crate::registry::ImageSummary], wide: bool, now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let digest = if wide {
                s.digest.clone()
            } else {
                s.digest.chars().take("sha256:".len() + 12).collect()
            };
            vec![
                s.name.clone(),
                digest,
                if s.platforms.is_empty() {
                    "-".to_owned()
                } else {
                    s.platforms.join(",")
                },
                quantity::format_memory(s.size),
                age(&s.creation_timestamp, now),
            ]
        })
        .collect();
    table(&["NAME", "DIGEST", "PLATFORMS", "SIZE", "AGE"], &rows)
}

/// A rollout subcommand's argument must name a deployment.
fn deployment_name(resource: &str, name: Option<&str>, verb: &str) -> Result<String, CliError> {
    let (kind, name) = named(resource, name, verb)?;
    if kind != ResourceKind::Deployment {
        return Err(CliError::Usage(format!(
            "error: no rollout for a {}: only deployments have rollouts",
            kind.as_str()
        )));
    }
    Ok(name)
}

async fn rollout(client: &Client, action: &RolloutCommand) -> Result<String, CliError> {
    let base = |name: &str| format!("/api/v1/deployments/{name}/rollout");
    match action {
        RolloutCommand::Status {
            resource,
            name,
            timeout,
        } => {
            let name = deployment_name(resource, name.as_deref(), "rollout status")?;
            let timeout = timeout.filter(|t| !t.is_zero());
            watch_rollout(client, &name, timeout).await?;
            Ok(String::new())
        }
        RolloutCommand::History {
            resource,
            name,
            revision,
        } => {
            let name = deployment_name(resource, name.as_deref(), "rollout history")?;
            let v = client.get(&format!("{}/history", base(&name))).await?;
            let revisions: Vec<api::Revision> = parse_objects(&items(&v))?;
            match revision {
                None => Ok(history_table(&name, &revisions)),
                Some(n) => revisions
                    .iter()
                    .find(|r| r.revision == *n)
                    .map(|r| revision_details(&name, r))
                    .ok_or_else(|| {
                        CliError::Usage(format!("error: unable to find the specified revision {n}"))
                    }),
            }
        }
        RolloutCommand::Undo {
            resource,
            name,
            to_revision,
        } => {
            let name = deployment_name(resource, name.as_deref(), "rollout undo")?;
            let url = format!("{}{}/undo", client.base, base(&name));
            let v = client
                .send(
                    client
                        .http
                        .post(url)
                        .json(&serde_json::json!({ "toRevision": to_revision })),
                )
                .await?;
            if v.get("rolledBack").and_then(Value::as_bool) == Some(false) {
                let rev = v.get("revision").and_then(Value::as_u64).unwrap_or(0);
                Ok(format!(
                    "deployment.apps/{name} skipped rollback (current template already matches revision {rev})\n"
                ))
            } else {
                Ok(format!("deployment.apps/{name} rolled back\n"))
            }
        }
    }
}

/// Polls the rollout until it is done, it fails, or `timeout` passes. On a terminal the
/// progress is one line redrawn in place; otherwise a line is printed only when the
/// state changes, so logs stay short.
async fn watch_rollout(
    client: &Client,
    name: &str,
    timeout: Option<Duration>,
) -> Result<(), CliError> {
    let tty = std::io::stdout().is_terminal();
    let start = std::time::Instant::now();
    let mut last = String::new();
    let mut stdout = std::io::stdout();
    let clear = |stdout: &mut std::io::Stdout, drawn: bool| {
        if tty && drawn {
            let _ = write!(stdout, "\r\x1b[K");
        }
    };
    loop {
        let v = client
            .get(&format!("/api/v1/deployments/{name}/rollout/status"))
            .await?;
        let p: RolloutProgress =
            serde_json::from_value(v).map_err(|e| CliError::Protocol(e.to_string()))?;
        if p.done {
            clear(&mut stdout, !last.is_empty());
            let _ = writeln!(stdout, "{}", p.message);
            return Ok(());
        }
        if let Some(why) = &p.failure {
            clear(&mut stdout, !last.is_empty());
            return Err(CliError::Rollout(format!(
                "error: deployment {name:?} rollout failed: {why}"
            )));
        }
        let line = if tty {
            progress_bar(&p)
        } else {
            p.message.clone()
        };
        if line != last {
            if tty {
                let _ = write!(stdout, "\r{line}\x1b[K");
            } else {
                let _ = writeln!(stdout, "{line}");
            }
            let _ = stdout.flush();
            last = line;
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            clear(&mut stdout, !last.is_empty());
            return Err(CliError::Rollout(format!(
                "error: timed out waiting for deployment {name:?} to roll out: {}",
                p.message
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `[#####-----] 3/6 updated, 2 ready`, plus old and terminating pods when there are any.
pub fn progress_bar(p: &RolloutProgress) -> String {
    const WIDTH: usize = 10;
    let filled = if p.replicas == 0 {
        WIDTH
    } else {
        (p.updated.min(p.replicas) as usize * WIDTH) / p.replicas as usize
    };
    let mut line = format!(
        "[{}{}] {}/{} updated, {} ready",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        p.updated,
        p.replicas,
        p.updated_ready
    );
    if p.old > 0 {
        line.push_str(&format!(", {} old", p.old));
    }
    if p.terminating > 0 {
        line.push_str(&format!(", {} terminating", p.terminating));
    }
    line
}

/// `rollout history`: kubectl's REVISION / CHANGE-CAUSE table.
pub fn history_table(name: &str, revisions: &[api::Revision]) -> String {
    let rows: Vec<Vec<String>> = revisions
        .iter()
        .map(|r| {
            vec![
                r.revision.to_string(),
                r.change_cause.clone().unwrap_or_else(|| "<none>".into()),
            ]
        })
        .collect();
    format!(
        "deployment.apps/{name}\n{}",
        table(&["REVISION", "CHANGE-CAUSE"], &rows)
    )
}

/// `rollout history --revision N`: the template of one revision.
pub fn revision_details(name: &str, r: &api::Revision) -> String {
    let mut out = format!("deployment.apps/{name} with revision #{}\n", r.revision);
    let mut labels = r.template.metadata.labels.clone();
    labels.insert(
        crate::decide::controller::POD_TEMPLATE_HASH_LABEL.into(),
        r.template_hash.clone(),
    );
    out.push_str("Pod Template:\n");
    out.push_str(&format!("  Labels:       {}\n", selector(&labels)));
    if let Some(c) = &r.change_cause {
        out.push_str(&format!(
            "  Annotations:  {}={c}\n",
            api::CHANGE_CAUSE_ANNOTATION
        ));
    }
    out.push_str("  Containers:\n");
    for c in &r.template.spec.containers {
        out.push_str(&format!("   {}:\n    Image:      {}\n", c.name, c.image));
        for p in &c.ports {
            out.push_str(&format!(
                "    Port:       {}/{:?}\n",
                p.container_port, p.protocol
            ));
        }
        for e in &c.env {
            match &e.value_from {
                Some(from) => out.push_str(&format!(
                    "    Env:        {}=<set to the key '{}' in secret '{}'>\n",
                    e.name, from.secret_key_ref.key, from.secret_key_ref.name
                )),
                None => out.push_str(&format!("    Env:        {}={}\n", e.name, e.value)),
            }
        }
        resources_lines(&mut out, c);
    }
    out
}

fn list_doc(items: Vec<Value>) -> Value {
    serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": items })
}

fn read_manifest(file: &str) -> Result<String, CliError> {
    let mut s = String::new();
    if file == "-" {
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|source| CliError::Read {
                path: "stdin".into(),
                source,
            })?;
    } else {
        s = std::fs::read_to_string(file).map_err(|source| CliError::Read {
            path: file.into(),
            source,
        })?;
    }
    Ok(s)
}

// ----- rendering -----------------------------------------------------------------------

/// Left-aligned columns separated by three spaces, like kubectl's tabwriter.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            out.push_str(c);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - c.chars().count() + 3));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// kubectl-style age: `45s`, `5m`, `3h`, `2d`; `<unknown>` when there is no timestamp.
pub fn age(timestamp: &str, now: SystemTime) -> String {
    let Ok(t) = humantime::parse_rfc3339_weak(timestamp) else {
        return "<unknown>".into();
    };
    let s = now.duration_since(t).unwrap_or_default().as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A container's state in one word (kubelet's `waiting`/`terminated` reason): the one
/// the coordinator derived (`reason`), or, for statuses stored before it did, one derived
/// from the state alone. `None` while running.
fn state_word(c: &api::ContainerStatus) -> Option<String> {
    if c.reason.is_some() {
        return c.reason.clone();
    }
    let word = match &c.state {
        api::ContainerState::Running { .. } => return None,
        api::ContainerState::Pending => "Pending",
        api::ContainerState::Pulling => "Pulling",
        api::ContainerState::OOMKilled => "OOMKilled",
        api::ContainerState::Exited { exit_code: 0 } => "Completed",
        api::ContainerState::Exited { .. } => "Error",
        api::ContainerState::Failed { reason } => reason
            .split(|c: char| c.is_whitespace() || c == ':')
            .find(|w| !w.is_empty())
            .unwrap_or("Failed"),
    };
    Some(word.to_owned())
}

/// The STATUS column of `get pods`, derived as kubectl derives it: the first init
/// container that has not completed says `Init:Error`, `Init:CrashLoopBackOff` or
/// `Init:1/2`; otherwise the last main container that is not running and ready says why
/// (`CrashLoopBackOff`, `OOMKilled`, `Error`, `Completed`, `PodInitializing`).
pub fn pod_status_word(p: &api::Pod) -> String {
    if p.metadata.deletion_timestamp.is_some() {
        return "Terminating".into();
    }
    match p.status.phase {
        api::PodPhase::Unknown => return "Unknown".into(),
        api::PodPhase::Succeeded => return "Completed".into(),
        _ => {}
    }
    if p.spec.node_name.is_none() {
        return "Pending".into();
    }
    let inits = &p.status.init_container_statuses;
    for (i, c) in inits.iter().enumerate() {
        if matches!(c.state, api::ContainerState::Exited { exit_code: 0 }) {
            continue;
        }
        return match state_word(c) {
            Some(w) if w != "PodInitializing" => format!("Init:{w}"),
            _ => format!("Init:{i}/{}", p.spec.init_containers.len().max(inits.len())),
        };
    }
    let statuses = &p.status.container_statuses;
    if statuses.is_empty() {
        return "Pending".into();
    }
    let mut reason = None;
    let mut has_running = false;
    for c in statuses.iter().rev() {
        match state_word(c) {
            Some(w) => reason = Some(w),
            None => has_running |= c.ready,
        }
    }
    match reason {
        // One container completed while another still runs: the pod is running.
        Some(w) if w == "Completed" && has_running => "Running".into(),
        Some(w) => w,
        None => "Running".into(),
    }
}

/// The RESTARTS column: the sum of restarts, and how long ago the last one ended, as
/// kubectl shows it (`3 (42s ago)`). While init containers run, theirs count.
pub fn restarts_column(p: &api::Pod, now: SystemTime) -> String {
    let initializing = p
        .status
        .init_container_statuses
        .iter()
        .any(|c| !matches!(c.state, api::ContainerState::Exited { exit_code: 0 }));
    let counted = if initializing {
        &p.status.init_container_statuses
    } else {
        &p.status.container_statuses
    };
    let restarts: u32 = counted.iter().map(|c| c.restart_count).sum();
    let last = counted
        .iter()
        .filter_map(|c| c.last_state.as_ref())
        .filter_map(|l| humantime::parse_rfc3339_weak(&l.terminated.finished_at).ok())
        .max();
    match last {
        Some(t) if restarts > 0 => {
            let ago = age(&humantime::format_rfc3339_seconds(t).to_string(), now);
            format!("{restarts} ({ago} ago)")
        }
        _ => restarts.to_string(),
    }
}

pub fn pods_table(pods: &[api::Pod], wide: bool, now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = pods
        .iter()
        .map(|p| {
            let total = p.spec.containers.len();
            let ready = p
                .status
                .container_statuses
                .iter()
                .filter(|c| c.ready)
                .count();
            let mut row = vec![
                p.metadata.name.clone(),
                format!("{ready}/{total}"),
                pod_status_word(p),
                restarts_column(p, now),
                age(&p.metadata.creation_timestamp, now),
                p.spec.node_name.clone().unwrap_or_else(|| "<none>".into()),
            ];
            if wide {
                row.push(p.status.pod_ip.clone().unwrap_or_else(|| "<none>".into()));
            }
            row
        })
        .collect();
    let mut header = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE", "NODE"];
    if wide {
        header.push("IP");
    }
    table(&header, &rows)
}

/// `get secrets`: kubectl's NAME / TYPE / DATA / AGE, from the API's view of a secret
/// (which carries key sizes, never values).
pub fn secrets_table(secrets: &[Value], now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = secrets
        .iter()
        .map(|s| {
            let meta = s.get("metadata");
            let field = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_owned();
            vec![
                field(meta.and_then(|m| m.get("name"))),
                field(s.get("type")),
                s.get("dataSizes")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len())
                    .to_string(),
                age(&field(meta.and_then(|m| m.get("creationTimestamp"))), now),
            ]
        })
        .collect();
    table(&["NAME", "TYPE", "DATA", "AGE"], &rows)
}

/// `describe secret`: like kubectl, each key with its size in bytes, never its value.
pub fn describe_secret(s: &Value, events: &[api::Event], now: SystemTime) -> String {
    let mut out = String::new();
    let meta = s.get("metadata");
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_owned();
    kv(&mut out, "Name", text(meta.and_then(|m| m.get("name"))));
    let labels: std::collections::BTreeMap<String, String> = meta
        .and_then(|m| m.get("labels"))
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    kv(&mut out, "Labels", labels_str(&labels));
    kv(&mut out, "Type", text(s.get("type")));
    out.push_str("\nData\n====\n");
    if let Some(sizes) = s.get("dataSizes").and_then(Value::as_object) {
        let width = sizes.keys().map(|k| k.len() + 1).max().unwrap_or(0);
        for (k, v) in sizes {
            let key = format!("{k}:");
            out.push_str(&format!(
                "{key:<width$}  {} bytes\n",
                v.as_u64().unwrap_or(0)
            ));
        }
    }
    out.push_str(&events_section(events, now));
    out
}

pub fn deployments_table(ds: &[api::Deployment], wide: bool, now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = ds
        .iter()
        .map(|d| {
            let mut row = vec![
                d.metadata.name.clone(),
                format!("{}/{}", d.status.ready_replicas, d.spec.replicas),
                d.status.updated_replicas.to_string(),
                d.status.available_replicas.to_string(),
                age(&d.metadata.creation_timestamp, now),
            ];
            if wide {
                let images: Vec<&str> = d
                    .spec
                    .template
                    .spec
                    .containers
                    .iter()
                    .map(|c| c.image.as_str())
                    .collect();
                row.push(images.join(","));
                row.push(selector(&d.spec.selector.match_labels));
            }
            row
        })
        .collect();
    let mut header = vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"];
    if wide {
        header.extend(["IMAGES", "SELECTOR"]);
    }
    table(&header, &rows)
}

/// `k=v` pairs joined by `sep`, or `<none>` as kubectl prints an empty set.
fn join_labels(labels: &std::collections::BTreeMap<String, String>, sep: &str) -> String {
    if labels.is_empty() {
        return "<none>".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(sep)
}

/// One line, as in selectors and tables.
fn selector(labels: &std::collections::BTreeMap<String, String>) -> String {
    join_labels(labels, ",")
}

fn arch(n: &api::Node) -> String {
    if n.status.arch_variant.is_empty() {
        n.status.arch.clone()
    } else {
        format!("{}/{}", n.status.arch, n.status.arch_variant)
    }
}

pub fn nodes_table(nodes: &[api::Node], wide: bool, now: SystemTime) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let mut row = vec![
                n.metadata.name.clone(),
                if n.status.ready { "Ready" } else { "NotReady" }.into(),
                arch(n),
                age(&n.metadata.creation_timestamp, now),
                n.status.agent_version.clone(),
            ];
            if wide {
                row.push(n.status.address.clone().unwrap_or_else(|| "<none>".into()));
                row.push(if n.status.pod_cidr.is_empty() {
                    "<none>".into()
                } else {
                    n.status.pod_cidr.clone()
                });
                row.push(quantity::format_cpu(u64::from(
                    n.status.allocatable.cpu_millis,
                )));
                row.push(quantity::format_memory(n.status.allocatable.memory_bytes));
                // The cause without its advice (`describe node` has both).
                row.push(match &n.status.last_connect_error {
                    Some(e) => e.message.split(" (").next().unwrap_or_default().to_owned(),
                    None => "<none>".into(),
                });
            }
            row
        })
        .collect();
    let mut header = vec!["NAME", "STATUS", "ARCH", "AGE", "VERSION"];
    if wide {
        header.extend(["ADDRESS", "POD-CIDR", "CPU", "MEMORY", "LAST-CONNECT-ERROR"]);
    }
    table(&header, &rows)
}

fn event_type(reason: &str) -> &'static str {
    match reason {
        "FailedScheduling" | "OOMKilled" | "Error" | "Failed" | "NodeNotReady" | "BackOff" => {
            "Warning"
        }
        _ => "Normal",
    }
}

fn events_section(events: &[api::Event], now: SystemTime) -> String {
    if events.is_empty() {
        return "Events:  <none>\n".into();
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                event_type(&e.reason).into(),
                e.reason.clone(),
                age(&e.timestamp, now),
                e.message.clone(),
            ]
        })
        .collect();
    let t = table(&["Type", "Reason", "Age", "Message"], &rows);
    let mut out = String::from("Events:\n");
    for l in t.lines() {
        out.push_str("  ");
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn kv(out: &mut String, key: &str, value: impl AsRef<str>) {
    let key = format!("{key}:");
    out.push_str(&format!("{key:<16}{}\n", value.as_ref()));
}

/// One label a line, aligned under the value column of `describe`.
fn labels_str(labels: &std::collections::BTreeMap<String, String>) -> String {
    join_labels(labels, "\n                ")
}

fn resources_lines(out: &mut String, c: &api::Container) {
    for (what, list) in [
        ("Limits", &c.resources.limits),
        ("Requests", &c.resources.requests),
    ] {
        if list.is_empty() {
            continue;
        }
        out.push_str(&format!("    {what}:\n"));
        if let Some(cpu) = &list.cpu {
            out.push_str(&format!("      cpu:     {cpu}\n"));
        }
        if let Some(m) = &list.memory {
            out.push_str(&format!("      memory:  {m}\n"));
        }
    }
}

/// `describe pod`'s State / Last State lines for one container, as kubectl prints them.
fn state_lines(out: &mut String, s: Option<&api::ContainerStatus>) {
    let Some(s) = s else {
        out.push_str("    State:          Waiting\n");
        return;
    };
    let word = state_word(s);
    match &s.state {
        api::ContainerState::Running { started_at } => {
            out.push_str("    State:          Running\n");
            out.push_str(&format!("      Started:      {started_at}\n"));
        }
        api::ContainerState::Exited { .. } | api::ContainerState::OOMKilled
            if word.as_deref() != Some("CrashLoopBackOff") =>
        {
            let code = match s.state {
                api::ContainerState::Exited { exit_code } => exit_code,
                _ => 137,
            };
            out.push_str("    State:          Terminated\n");
            out.push_str(&format!(
                "      Reason:       {}\n",
                word.unwrap_or_else(|| "Error".into())
            ));
            out.push_str(&format!("      Exit Code:    {code}\n"));
        }
        other => {
            out.push_str("    State:          Waiting\n");
            if let Some(w) = word {
                out.push_str(&format!("      Reason:       {w}\n"));
            }
            if let api::ContainerState::Failed { reason } = other {
                out.push_str(&format!("      Message:      {reason}\n"));
            }
        }
    }
    if let Some(last) = &s.last_state {
        let t = &last.terminated;
        out.push_str("    Last State:     Terminated\n");
        out.push_str(&format!("      Reason:       {}\n", t.reason));
        out.push_str(&format!("      Exit Code:    {}\n", t.exit_code));
        out.push_str(&format!("      Finished:     {}\n", t.finished_at));
    }
}

/// kubectl's one-line probe summary:
/// `http-get http://:8080/healthz delay=0s timeout=1s period=10s #success=1 #failure=3`.
pub fn probe_line(p: &api::Probe) -> String {
    let what = match &p.handler {
        api::ProbeHandler::Exec { command } => format!("exec [{}]", command.join(" ")),
        api::ProbeHandler::HttpGet {
            path,
            port,
            scheme,
            host,
            ..
        } => {
            let scheme = match scheme {
                api::Scheme::HTTP => "http",
                api::Scheme::HTTPS => "https",
            };
            format!(
                "http-get {scheme}://{}:{port}{path}",
                host.as_deref().unwrap_or("")
            )
        }
        api::ProbeHandler::TcpSocket { port, host } => {
            format!("tcp-socket {}:{port}", host.as_deref().unwrap_or(""))
        }
    };
    format!(
        "{what} delay={}s timeout={}s period={}s #success={} #failure={}",
        p.initial_delay_seconds,
        p.timeout_seconds,
        p.period_seconds,
        p.success_threshold,
        p.failure_threshold
    )
}

/// One container of `describe pod`: image, ports, state, probes, environment, mounts.
/// Secret-backed variables show where the value comes from, never the value.
fn container_section(out: &mut String, c: &api::Container, status: Option<&api::ContainerStatus>) {
    out.push_str(&format!("  {}:\n", c.name));
    out.push_str(&format!("    Image:          {}\n", c.image));
    for p in &c.ports {
        out.push_str(&format!(
            "    Port:           {}/{:?}\n",
            p.container_port, p.protocol
        ));
    }
    if !c.command.is_empty() {
        out.push_str(&format!("    Command:        {}\n", c.command.join(" ")));
    }
    if !c.args.is_empty() {
        out.push_str(&format!("    Args:           {}\n", c.args.join(" ")));
    }
    state_lines(out, status);
    out.push_str(&format!(
        "    Ready:          {}\n",
        if status.is_some_and(|s| s.ready) {
            "True"
        } else {
            "False"
        }
    ));
    out.push_str(&format!(
        "    Restart Count:  {}\n",
        status.map_or(0, |s| s.restart_count)
    ));
    resources_lines(out, c);
    for (what, probe) in [
        ("Liveness", &c.liveness_probe),
        ("Readiness", &c.readiness_probe),
        ("Startup", &c.startup_probe),
    ] {
        if let Some(p) = probe {
            let key = format!("{what}:");
            out.push_str(&format!("    {key:<16}{}\n", probe_line(p)));
        }
    }
    if let Some(sc) = &c.security_context {
        let mut parts = Vec::new();
        if sc.privileged == Some(true) {
            parts.push("privileged".to_owned());
        }
        if let Some(u) = sc.run_as_user {
            parts.push(format!("runAsUser={u}"));
        }
        if let Some(g) = sc.run_as_group {
            parts.push(format!("runAsGroup={g}"));
        }
        if sc.read_only_root_filesystem == Some(true) {
            parts.push("readOnlyRootFilesystem".to_owned());
        }
        if let Some(caps) = &sc.capabilities {
            if !caps.add.is_empty() {
                parts.push(format!("add={}", caps.add.join(",")));
            }
            if !caps.drop.is_empty() {
                parts.push(format!("drop={}", caps.drop.join(",")));
            }
        }
        if !parts.is_empty() {
            out.push_str(&format!("    Security:       {}\n", parts.join(" ")));
        }
    }
    if c.env.is_empty() {
        out.push_str("    Environment:    <none>\n");
    } else {
        out.push_str("    Environment:\n");
        let width = c.env.iter().map(|e| e.name.len() + 1).max().unwrap_or(0);
        for e in &c.env {
            let value = match &e.value_from {
                Some(from) => format!(
                    "<set to the key '{}' in secret '{}'>",
                    from.secret_key_ref.key, from.secret_key_ref.name
                ),
                None => e.value.clone(),
            };
            let key = format!("{}:", e.name);
            out.push_str(&format!("      {key:<width$}  {value}\n"));
        }
    }
    if c.volume_mounts.is_empty() {
        out.push_str("    Mounts:         <none>\n");
    } else {
        out.push_str("    Mounts:\n");
        for m in &c.volume_mounts {
            out.push_str(&format!(
                "      {} from {} ({})\n",
                m.mount_path,
                m.name,
                if m.read_only { "ro" } else { "rw" }
            ));
        }
    }
}

pub fn describe_pod(p: &api::Pod, events: &[api::Event], now: SystemTime) -> String {
    let mut out = String::new();
    kv(&mut out, "Name", &p.metadata.name);
    let node = match (&p.spec.node_name, &p.status.host_ip) {
        (Some(n), Some(ip)) => format!("{n}/{ip}"),
        (Some(n), None) => n.clone(),
        (None, _) => "<none>".into(),
    };
    kv(&mut out, "Node", node);
    kv(&mut out, "Start Time", &p.metadata.creation_timestamp);
    kv(&mut out, "Labels", labels_str(&p.metadata.labels));
    kv(&mut out, "Status", format!("{:?}", p.status.phase));
    if let Some(r) = &p.status.reason {
        kv(&mut out, "Reason", r);
    }
    if let Some(m) = &p.status.message {
        kv(&mut out, "Message", m);
    }
    kv(
        &mut out,
        "IP",
        p.status.pod_ip.as_deref().unwrap_or("<none>"),
    );
    kv(&mut out, "UID", &p.metadata.uid);
    if let Some(owner) = &p.metadata.owner {
        kv(&mut out, "Controlled By", format!("Deployment/{owner}"));
    }
    if !p.spec.init_containers.is_empty() {
        out.push_str("Init Containers:\n");
        for (i, c) in p.spec.init_containers.iter().enumerate() {
            let status = p
                .status
                .init_container_statuses
                .get(i)
                .filter(|s| s.name == c.name);
            container_section(&mut out, c, status);
        }
    }
    out.push_str("Containers:\n");
    for c in &p.spec.containers {
        let status = p
            .status
            .container_statuses
            .iter()
            .find(|s| s.name == c.name);
        container_section(&mut out, c, status);
    }
    if !p.spec.volumes.is_empty() {
        out.push_str("Volumes:\n");
        for v in &p.spec.volumes {
            out.push_str(&format!("  {}:\n", v.name));
            match &v.source {
                api::VolumeSource::Secret { secret_name } => {
                    out.push_str("    Type:        Secret (a volume populated by a Secret)\n");
                    out.push_str(&format!("    SecretName:  {secret_name}\n"));
                }
                api::VolumeSource::EmptyDir { size_limit } => {
                    out.push_str(
                        "    Type:        EmptyDir (a temporary directory that shares a pod's lifetime)\n",
                    );
                    out.push_str(&format!(
                        "    SizeLimit:   {}\n",
                        size_limit.as_deref().unwrap_or("<unset>")
                    ));
                }
                api::VolumeSource::HostPath { path } => {
                    out.push_str("    Type:        HostPath (bare host directory volume)\n");
                    out.push_str(&format!("    Path:        {path}\n"));
                }
            }
        }
    }
    if !p.spec.image_pull_secrets.is_empty() {
        let names: Vec<&str> = p
            .spec
            .image_pull_secrets
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        kv(&mut out, "Pull Secrets", names.join(", "));
    }
    out.push_str(&events_section(events, now));
    out
}

pub fn describe_deployment(d: &api::Deployment, events: &[api::Event], now: SystemTime) -> String {
    let mut out = String::new();
    kv(&mut out, "Name", &d.metadata.name);
    kv(&mut out, "Created", &d.metadata.creation_timestamp);
    kv(&mut out, "Labels", labels_str(&d.metadata.labels));
    kv(
        &mut out,
        "Selector",
        selector(&d.spec.selector.match_labels),
    );
    kv(
        &mut out,
        "Replicas",
        format!(
            "{} desired | {} updated | {} total | {} available",
            d.spec.replicas,
            d.status.updated_replicas,
            d.status.replicas,
            d.status.available_replicas
        ),
    );
    let strategy = match &d.spec.strategy.rolling_update {
        Some(ru) => format!(
            "{:?} ({} max unavailable, {} max surge)",
            d.spec.strategy.type_, ru.max_unavailable, ru.max_surge
        ),
        None => format!("{:?}", d.spec.strategy.type_),
    };
    kv(&mut out, "Strategy", strategy);
    kv(
        &mut out,
        "Generation",
        format!(
            "{} (observed {})",
            d.metadata.generation, d.status.observed_generation
        ),
    );
    out.push_str("Pod Template:\n");
    out.push_str(&format!(
        "  Labels:  {}\n",
        selector(&d.spec.template.metadata.labels)
    ));
    out.push_str("  Containers:\n");
    for c in &d.spec.template.spec.containers {
        out.push_str(&format!("   {}:\n    Image:  {}\n", c.name, c.image));
        resources_lines(&mut out, c);
    }
    out.push_str(&events_section(events, now));
    out
}

/// `identity`: the node's `/identity` (an [`crate::security::gate::IdentitySummary`]), `None`
/// when it has not enrolled.
pub fn describe_node(
    n: &api::Node,
    identity: Option<&Value>,
    pods: &[&api::Pod],
    events: &[api::Event],
    now: SystemTime,
) -> String {
    let mut out = String::new();
    kv(&mut out, "Name", &n.metadata.name);
    kv(&mut out, "Labels", labels_str(&n.metadata.labels));
    kv(&mut out, "Created", &n.metadata.creation_timestamp);
    kv(&mut out, "Ready", n.status.ready.to_string());
    kv(&mut out, "Last Heartbeat", &n.status.last_heartbeat);
    kv(&mut out, "Architecture", arch(n));
    kv(&mut out, "OS", &n.status.os);
    kv(&mut out, "Agent Version", &n.status.agent_version);
    kv(
        &mut out,
        "Address",
        n.status.address.as_deref().unwrap_or("<none>"),
    );
    kv(&mut out, "PodCIDR", &n.status.pod_cidr);
    kv(
        &mut out,
        "Generation",
        format!(
            "desired {} / applied {}",
            n.status.desired_generation, n.status.applied_generation
        ),
    );
    match &n.status.last_connect_error {
        Some(e) => kv(
            &mut out,
            "Connect Error",
            format!("{} (reported {})", e.message, e.reported_at),
        ),
        None => kv(&mut out, "Connect Error", "<none>"),
    }
    match identity {
        Some(id) => {
            out.push_str("Enrollment:\n");
            out.push_str("  enrolled:     yes\n");
            let field = |k: &str| {
                id[k]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("-")
                    .to_owned()
            };
            out.push_str(&format!("  fingerprint:  {}\n", field("fingerprint")));
            out.push_str(&format!("  serial:       {}\n", field("serial")));
            out.push_str(&format!(
                "  not after:    {}\n",
                not_after_str(id["notAfter"].as_u64(), now)
            ));
            out.push_str(&format!(
                "  revoked:      {}\n",
                if id["revoked"] == true { "yes" } else { "no" }
            ));
        }
        None => out.push_str("Enrollment:\n  enrolled:     no\n"),
    }
    out.push_str("Allocatable:\n");
    out.push_str(&format!(
        "  cpu:     {}\n",
        quantity::format_cpu(u64::from(n.status.allocatable.cpu_millis))
    ));
    out.push_str(&format!(
        "  memory:  {}\n",
        quantity::format_memory(n.status.allocatable.memory_bytes)
    ));
    out.push_str(&format!("  pods:    {}\n", n.status.allocatable.pods));
    out.push_str(&format!("Pods:            ({} in total)\n", pods.len()));
    if !pods.is_empty() {
        let rows: Vec<Vec<String>> = pods
            .iter()
            .map(|p| {
                vec![
                    p.metadata.name.clone(),
                    pod_status_word(p),
                    age(&p.metadata.creation_timestamp, now),
                ]
            })
            .collect();
        for l in table(&["Name", "Status", "Age"], &rows).lines() {
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str(&events_section(events, now));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    fn pod(name: &str, node: Option<&str>, states: Vec<api::ContainerState>) -> api::Pod {
        api::Pod {
            api_version: "v1".into(),
            kind: "Pod".into(),
            metadata: api::ObjectMeta {
                name: name.into(),
                creation_timestamp: "2026-11-01T12:00:00Z".into(),
                ..Default::default()
            },
            spec: api::PodSpec {
                containers: (0..states.len().max(1))
                    .map(|i| api::Container {
                        name: format!("c{i}"),
                        image: "busybox".into(),
                        ..Default::default()
                    })
                    .collect(),
                node_name: node.map(str::to_owned),
                ..Default::default()
            },
            status: api::PodStatus {
                container_statuses: states
                    .into_iter()
                    .enumerate()
                    .map(|(i, state)| api::ContainerStatus {
                        name: format!("c{i}"),
                        ready: matches!(state, api::ContainerState::Running { .. }),
                        state,
                        restart_count: 1,
                        ..Default::default()
                    })
                    .collect(),
                pod_ip: Some("10.42.0.7".into()),
                ..Default::default()
            },
        }
    }

    #[test]
    fn status_words() {
        use api::ContainerState as S;
        let run = || S::Running {
            started_at: "x".into(),
        };
        let cases = [
            (pod("a", None, vec![]), "Pending"),
            (pod("b", Some("n"), vec![]), "Pending"),
            (pod("c", Some("n"), vec![run(), run()]), "Running"),
            (pod("d", Some("n"), vec![run(), S::Pulling]), "Pulling"),
            (pod("e", Some("n"), vec![S::OOMKilled]), "OOMKilled"),
            (
                pod("f", Some("n"), vec![S::Exited { exit_code: 2 }]),
                "Error",
            ),
            (
                pod("g", Some("n"), vec![S::Exited { exit_code: 0 }]),
                "Completed",
            ),
            (
                pod(
                    "h",
                    Some("n"),
                    vec![S::Failed {
                        reason: "ImagePullFailed: manifest unknown".into(),
                    }],
                ),
                "ImagePullFailed",
            ),
        ];
        for (p, want) in cases {
            assert_eq!(pod_status_word(&p), want, "{}", p.metadata.name);
        }
        let mut lost = pod("i", Some("n"), vec![run()]);
        lost.status.phase = api::PodPhase::Unknown;
        assert_eq!(pod_status_word(&lost), "Unknown");
    }

    fn status(
        name: &str,
        state: api::ContainerState,
        reason: Option<&str>,
    ) -> api::ContainerStatus {
        api::ContainerStatus {
            name: name.into(),
            ready: matches!(state, api::ContainerState::Running { .. }),
            state,
            reason: reason.map(str::to_owned),
            ..Default::default()
        }
    }

    /// A pod on a node with two init containers and one main container.
    fn init_pod(inits: Vec<api::ContainerStatus>, main: Vec<api::ContainerStatus>) -> api::Pod {
        let mut p = pod("i", Some("n"), vec![]);
        p.spec.init_containers = ["a", "b"]
            .iter()
            .map(|n| api::Container {
                name: (*n).into(),
                image: "busybox".into(),
                ..Default::default()
            })
            .collect();
        p.status.init_container_statuses = inits;
        p.status.container_statuses = main;
        p
    }

    #[test]
    fn status_words_follow_kubectl_for_init_containers_and_crash_loops() {
        use api::ContainerState as S;
        let done = || status("a", S::Exited { exit_code: 0 }, Some("Completed"));
        let run = || S::Running {
            started_at: "x".into(),
        };
        let waiting_main = || vec![status("c0", S::Pending, Some("PodInitializing"))];
        let cases = [
            (
                init_pod(
                    vec![
                        status("a", S::Pending, Some("PodInitializing")),
                        status("b", S::Pending, Some("PodInitializing")),
                    ],
                    waiting_main(),
                ),
                "Init:0/2",
            ),
            (
                init_pod(vec![done(), status("b", run(), None)], waiting_main()),
                "Init:1/2",
            ),
            (
                init_pod(
                    vec![status("a", S::Exited { exit_code: 1 }, Some("Error"))],
                    waiting_main(),
                ),
                "Init:Error",
            ),
            (
                init_pod(
                    vec![status(
                        "a",
                        S::Exited { exit_code: 1 },
                        Some("CrashLoopBackOff"),
                    )],
                    waiting_main(),
                ),
                "Init:CrashLoopBackOff",
            ),
            (
                init_pod(vec![done(), done()], waiting_main()),
                "PodInitializing",
            ),
            (
                init_pod(vec![done(), done()], vec![status("c0", run(), None)]),
                "Running",
            ),
            (
                init_pod(
                    vec![done(), done()],
                    vec![status("c0", S::OOMKilled, Some("CrashLoopBackOff"))],
                ),
                "CrashLoopBackOff",
            ),
        ];
        for (p, want) in cases {
            assert_eq!(pod_status_word(&p), want, "{:?}", p.status);
        }
        // One container done, one still running and ready: Running, as kubectl says.
        let mut p = pod("j", Some("n"), vec![]);
        p.status.container_statuses = vec![
            status("c0", S::Exited { exit_code: 0 }, Some("Completed")),
            status("c1", run(), None),
        ];
        assert_eq!(pod_status_word(&p), "Running");
        // Not ready although running: READY 0/1, STATUS Running.
        let mut p = pod("k", Some("n"), vec![run()]);
        p.status.container_statuses[0].ready = false;
        assert_eq!(pod_status_word(&p), "Running");
        let table = pods_table(&[p], false, ts("2026-11-01T12:05:00Z"));
        assert!(table.contains("k      0/1     Running"), "{table}");
    }

    #[test]
    fn restarts_show_when_the_last_one_ended() {
        use api::ContainerState as S;
        let mut p = pod(
            "r",
            Some("n"),
            vec![S::Running {
                started_at: "x".into(),
            }],
        );
        p.status.container_statuses[0].restart_count = 3;
        p.status.container_statuses[0].last_state = Some(api::LastState {
            terminated: api::TerminatedState {
                exit_code: 137,
                reason: "OOMKilled".into(),
                finished_at: "2026-11-01T12:04:18Z".into(),
            },
        });
        let now = ts("2026-11-01T12:05:00Z");
        assert_eq!(restarts_column(&p, now), "3 (42s ago)");
        p.status.container_statuses[0].last_state = None;
        assert_eq!(restarts_column(&p, now), "3");
        // While init containers run, theirs are the restarts that count.
        let mut i = init_pod(
            vec![status(
                "a",
                S::Exited { exit_code: 1 },
                Some("CrashLoopBackOff"),
            )],
            vec![],
        );
        i.status.init_container_statuses[0].restart_count = 4;
        assert_eq!(restarts_column(&i, now), "4");
    }

    #[test]
    fn describe_shows_probes_last_state_mounts_and_secret_refs() {
        let yaml = "\
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  volumes:
  - {name: data, emptyDir: {}}
  - {name: creds, secret: {secretName: db}}
  containers:
  - name: web
    image: busybox:1
    ports: [{name: http, containerPort: 8080}]
    env:
    - {name: MODE, value: prod}
    - name: PW
      valueFrom: {secretKeyRef: {name: db, key: pw}}
    volumeMounts:
    - {name: data, mountPath: /data}
    - {name: creds, mountPath: /creds, readOnly: true}
    livenessProbe:
      httpGet: {path: /healthz, port: http}
    readinessProbe:
      exec: {command: [cat, /tmp/ready]}
      periodSeconds: 5
    startupProbe:
      tcpSocket: {port: 8080}
      failureThreshold: 30
";
        let mut p = match crate::model::manifest::parse_manifests(yaml)
            .unwrap()
            .remove(0)
        {
            api::Object::Pod(p) => p,
            _ => unreachable!(),
        };
        p.spec.node_name = Some("pi-1".into());
        p.status.container_statuses = vec![api::ContainerStatus {
            name: "web".into(),
            state: api::ContainerState::Running {
                started_at: "2026-11-01T12:04:20Z".into(),
            },
            ready: true,
            restart_count: 2,
            reason: None,
            last_state: Some(api::LastState {
                terminated: api::TerminatedState {
                    exit_code: 137,
                    reason: "OOMKilled".into(),
                    finished_at: "2026-11-01T12:04:18Z".into(),
                },
            }),
        }];
        let out = describe_pod(&p, &[], ts("2026-11-01T12:05:00Z"));
        for want in [
            "    State:          Running\n      Started:      2026-11-01T12:04:20Z\n",
            "    Last State:     Terminated\n      Reason:       OOMKilled\n      Exit Code:    137\n      Finished:     2026-11-01T12:04:18Z\n",
            "    Ready:          True\n    Restart Count:  2\n",
            "    Liveness:       http-get http://:8080/healthz delay=0s timeout=1s period=10s #success=1 #failure=3\n",
            "    Readiness:      exec [cat /tmp/ready] delay=0s timeout=1s period=5s #success=1 #failure=3\n",
            "    Startup:        tcp-socket :8080 delay=0s timeout=1s period=10s #success=1 #failure=30\n",
            "      MODE:  prod\n      PW:    <set to the key 'pw' in secret 'db'>\n",
            "      /data from data (rw)\n      /creds from creds (ro)\n",
            "    SecretName:  db\n",
        ] {
            assert!(out.contains(want), "missing {want:?} in:\n{out}");
        }
    }

    #[test]
    fn secrets_show_key_sizes_never_values() {
        let view = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db", "creationTimestamp": "2026-11-01T12:00:00Z"},
            "type": "Opaque",
            "dataSizes": {"pw": 6, "user": 5},
        });
        let now = ts("2026-11-01T12:05:00Z");
        assert_eq!(
            secrets_table(std::slice::from_ref(&view), now),
            "NAME   TYPE     DATA   AGE\ndb     Opaque   2      5m\n"
        );
        let out = describe_secret(&view, &[], now);
        assert!(out.contains("Type:           Opaque\n"), "{out}");
        assert!(
            out.contains("\nData\n====\npw:    6 bytes\nuser:  5 bytes\n"),
            "{out}"
        );
    }

    #[test]
    fn rollout_rendering() {
        let mut p = RolloutProgress {
            replicas: 6,
            updated: 3,
            updated_ready: 2,
            ..Default::default()
        };
        assert_eq!(progress_bar(&p), "[#####-----] 3/6 updated, 2 ready");
        p.old = 4;
        p.terminating = 1;
        assert_eq!(
            progress_bar(&p),
            "[#####-----] 3/6 updated, 2 ready, 4 old, 1 terminating"
        );
        p = RolloutProgress {
            replicas: 0,
            ..Default::default()
        };
        assert_eq!(progress_bar(&p), "[##########] 0/0 updated, 0 ready");

        let rev = |n: u64, cause: Option<&str>| api::Revision {
            deployment: "web".into(),
            revision: n,
            template_hash: "abc".into(),
            template: api::PodTemplateSpec {
                metadata: Default::default(),
                spec: api::PodSpec {
                    containers: vec![api::Container {
                        name: "echo".into(),
                        image: "reg/http-echo:2".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            },
            change_cause: cause.map(str::to_owned),
            creation_timestamp: String::new(),
        };
        let revs = [rev(1, None), rev(2, Some("kubectl apply v2"))];
        assert_eq!(
            history_table("web", &revs),
            "deployment.apps/web\nREVISION   CHANGE-CAUSE\n1          <none>\n2          kubectl apply v2\n"
        );
        let details = revision_details("web", &revs[1]);
        assert!(
            details.starts_with("deployment.apps/web with revision #2\n"),
            "{details}"
        );
        assert!(details.contains("pod-template-hash=abc"), "{details}");
        assert!(details.contains("Image:      reg/http-echo:2"), "{details}");

        let cli = Cli::try_parse_from([
            "baton",
            "rollout",
            "status",
            "deployment/web",
            "--timeout",
            "90s",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Rollout {
                action: RolloutCommand::Status {
                    timeout: Some(t),
                    ..
                }
            } if t == Duration::from_secs(90)
        ));
        assert!(Cli::try_parse_from([
            "baton",
            "rollout",
            "undo",
            "deployment",
            "web",
            "--to-revision",
            "1"
        ])
        .is_ok());
        assert!(deployment_name("pod/x", None, "rollout status").is_err());
    }

    #[test]
    fn allow_host_port_replaces_the_default_and_repeats() {
        let policy = |args: &[&str]| {
            let mut argv = vec!["baton", "server"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Server(s)) => Ok(s.config().policy.allow_host_ports),
                Ok(_) => panic!("not the server command"),
                Err(e) => Err(e.to_string()),
            }
        };
        let default = policy(&[]).unwrap();
        assert!(default.allows(1024) && default.allows(8080) && !default.allows(22));
        let custom =
            policy(&["--allow-host-port", "8000-9000", "--allow-host-port", "22"]).unwrap();
        assert!(custom.allows(22) && custom.allows(8080) && !custom.allows(6379));
        assert!(policy(&["--allow-host-port", "ALL"]).unwrap().allows(1));
        assert!(!policy(&["--allow-host-port", "none"]).unwrap().allows(8080));
        let err = policy(&["--allow-host-port", "9000-8000"]).unwrap_err();
        assert!(
            err.contains("invalid host port range \"9000-8000\""),
            "{err}"
        );
    }

    #[test]
    fn terminating_pods_say_so() {
        let mut p = pod(
            "web-1",
            Some("pi-1"),
            vec![api::ContainerState::Running {
                started_at: "x".into(),
            }],
        );
        p.metadata.deletion_timestamp = Some("2026-11-01T12:00:00Z".into());
        assert_eq!(pod_status_word(&p), "Terminating");
    }

    #[test]
    fn pods_table_like_kubectl() {
        use api::ContainerState as S;
        let pods = [
            pod(
                "web-1",
                Some("pi-1"),
                vec![S::Running {
                    started_at: "x".into(),
                }],
            ),
            pod("web-22", None, vec![]),
        ];
        let got = pods_table(&pods, true, ts("2026-11-01T12:05:00Z"));
        let want = "\
NAME     READY   STATUS    RESTARTS   AGE   NODE     IP
web-1    1/1     Running   1          5m    pi-1     10.42.0.7
web-22   0/1     Pending   0          5m    <none>   10.42.0.7
";
        assert_eq!(got, want);
    }

    #[test]
    fn ages() {
        let now = ts("2026-11-03T12:00:00Z");
        for (t, want) in [
            ("2026-11-03T11:59:15Z", "45s"),
            ("2026-11-03T11:50:00Z", "10m"),
            ("2026-11-03T07:00:00Z", "5h"),
            ("2026-11-01T12:00:00Z", "2d"),
            ("", "<unknown>"),
        ] {
            assert_eq!(age(t, now), want, "{t}");
        }
    }

    #[test]
    fn resource_arguments() {
        assert_eq!(target("po", None).unwrap(), (ResourceKind::Pod, None));
        assert_eq!(
            target("deployment/web", None).unwrap(),
            (ResourceKind::Deployment, Some("web".into()))
        );
        assert_eq!(
            target("no", Some("pi-1")).unwrap(),
            (ResourceKind::Node, Some("pi-1".into()))
        );
        assert!(target("services", None).is_err());
        assert!(target("pod/a", Some("b")).is_err());
        assert!(named("deploy", None, "scale").is_err());
    }

    #[test]
    fn flags_come_from_the_environment_too() {
        let cli = Cli::try_parse_from([
            "baton",
            "--server",
            "http://127.0.0.1:9",
            "get",
            "po",
            "-o",
            "wide",
        ])
        .unwrap();
        assert_eq!(cli.server.as_deref(), Some("http://127.0.0.1:9"));
        assert!(matches!(
            cli.command,
            Command::Get {
                output: Some(Output::Wide),
                ..
            }
        ));
        let cli = Cli::try_parse_from([
            "baton",
            "server",
            "--broker",
            "mqtt://127.0.0.1:1884",
            "--heartbeat-timeout",
            "1m",
        ])
        .unwrap();
        let Command::Server(args) = cli.command else {
            panic!("not server")
        };
        let cfg = args.config();
        assert_eq!(
            cfg.mqtt,
            MqttMode::External {
                url: "mqtt://127.0.0.1:1884".into()
            }
        );
        assert_eq!(cfg.heartbeat_timeout, Duration::from_secs(60));
        assert!(
            Cli::try_parse_from(["baton", "scale", "deployment/web", "--replicas", "3"]).is_ok()
        );
    }

    #[test]
    fn not_after_is_rfc3339_with_what_is_left() {
        let now = ts("2026-12-05T12:00:00Z");
        let secs = |t: &str| {
            ts(t)
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(
            not_after_str(Some(secs("2027-01-04T13:30:00Z")), now),
            "2027-01-04T13:30:00Z (30days 1h left)"
        );
        assert_eq!(
            not_after_str(Some(secs("2026-12-05T10:00:00Z")), now),
            "2026-12-05T10:00:00Z (expired 2h ago)"
        );
        assert_eq!(not_after_str(None, now), "-");
    }

    #[test]
    fn describe_and_wide_show_the_last_connect_error_and_enrollment() {
        let now = ts("2026-12-05T12:00:00Z");
        let mut n = api::Node {
            api_version: "v1".into(),
            kind: "Node".into(),
            metadata: api::ObjectMeta {
                name: "pi-1".into(),
                creation_timestamp: "2026-12-05T11:00:00Z".into(),
                ..Default::default()
            },
            status: api::NodeStatus {
                ready: true,
                ..Default::default()
            },
        };
        let out = describe_node(&n, None, &[], &[], now);
        assert!(out.contains("Connect Error:  <none>"), "{out}");
        assert!(out.contains("Enrollment:\n  enrolled:     no\n"), "{out}");
        n.status.last_connect_error = Some(api::ConnectError {
            message: "connection refused (nothing listens there)".into(),
            reported_at: "2026-12-05T11:59:00Z".into(),
        });
        let identity = serde_json::json!({
            "notAfter": 1_796_515_200u64,
            "fingerprint": "SHA256:abcd",
            "serial": "01:02",
            "revoked": true,
        });
        let out = describe_node(&n, Some(&identity), &[], &[], now);
        assert!(
            out.contains(
                "connection refused (nothing listens there) (reported 2026-12-05T11:59:00Z)"
            ),
            "{out}"
        );
        for want in [
            "  enrolled:     yes\n",
            "  fingerprint:  SHA256:abcd\n",
            "  serial:       01:02\n",
            "  not after:    2026-12-06T00:00:00Z (12h left)\n",
            "  revoked:      yes\n",
        ] {
            assert!(out.contains(want), "{want:?} in\n{out}");
        }
        let wide = nodes_table(&[n], true, now);
        assert!(
            wide.lines().next().unwrap().ends_with("LAST-CONNECT-ERROR"),
            "{wide}"
        );
        assert!(
            wide.lines().nth(1).unwrap().ends_with("connection refused"),
            "{wide}"
        );
    }
}
