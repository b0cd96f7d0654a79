//! The flags of the two commands that run on the coordinator's host: `baton server`
//! ([`ServerArgs`], which become a [`ServerConfig`]) and `baton broker` (files for an
//! external Mosquitto, written from the coordinator's CA). Every flag can also be set
//! from the environment (`BATON_*`), which is how systemd units and containers configure
//! it. The `baton` parser (`crate::cli::Cli`) names these types; the binary hands them
//! here, so the client verbs never see the server's config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{MqttMode, ServerConfig};

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
    /// or mqtt://host:port in clear text. The nodes of a broker cluster, comma-separated
    /// (mqtt://10.0.0.1:1883,mqtt://10.0.0.2:1883), are tried in turn: the next one after
    /// every failed or lost connection.
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
    /// The IPv4 network Services get their ClusterIPs from (the first address is kept
    /// back, as Kubernetes does for its API's own Service). Changing it later leaves the
    /// stored Services' addresses as they are.
    #[arg(long, env = "BATON_SERVICE_CIDR", default_value = crate::decide::service::DEFAULT_SERVICE_CIDR)]
    pub service_cidr: crate::decide::service::ServiceCidr,
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
    /// Also serve enrollment, key rotation and node-signed release downloads (only those)
    /// over TLS on this address, with a certificate from the coordinator's CA: devices
    /// enroll and update here while the API stays on loopback (e.g. 0.0.0.0:7475).
    #[arg(long, env = "BATON_ENROLL_LISTEN")]
    pub enroll_listen: Option<SocketAddr>,
    /// The release public key (`release.pub` from `baton release keygen`): agent releases
    /// are imported only if it verifies their signature, and enrolling devices pin it.
    /// Without it `baton release import` is refused.
    #[arg(long, env = "BATON_RELEASE_PUBLIC_KEY_FILE")]
    pub release_public_key_file: Option<PathBuf>,
    /// Where the state lives: `redb` (<data-dir>/baton.redb, one machine) or
    /// `etcd://host:2379,host2:2379,...` (the members of one etcd cluster, shared by
    /// coordinators that elect a leader).
    #[arg(long, env = "BATON_STORE", default_value = "redb", value_parser = store_choice)]
    pub store: StoreChoice,
    /// The etcd key prefix of this fleet's state.
    #[arg(long, env = "BATON_ETCD_PREFIX", default_value = "/baton")]
    pub etcd_prefix: String,
    /// The --max-txn-ops the etcd cluster runs with: the most entries one atomic store
    /// batch may write (etcd's default, 128, is too few for a large Deployment).
    #[arg(long, env = "BATON_ETCD_MAX_TXN_OPS", default_value_t = crate::store::etcd::DEFAULT_MAX_TXN_OPS)]
    pub etcd_max_txn_ops: usize,
    /// With etcd: the leader's lease. A standby coordinator takes over this long after
    /// the leader dies (e.g. 10s).
    #[arg(long, env = "BATON_LEADER_LEASE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub leader_lease: Duration,
}

/// `--store`: the embedded redb file, or an etcd cluster's client URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    Redb,
    Etcd(Vec<String>),
}

fn store_choice(s: &str) -> Result<StoreChoice, String> {
    if s == "redb" {
        return Ok(StoreChoice::Redb);
    }
    let Some(members) = s.strip_prefix("etcd://") else {
        return Err(format!(
            "expected `redb` or `etcd://host:port[,host:port...]`, got {s:?}"
        ));
    };
    let mut endpoints = Vec::new();
    for m in members.split(',') {
        let m = m.trim();
        // Each member as host:port, the port checked here rather than by a timeout later.
        let port = m
            .rsplit_once(':')
            .and_then(|(h, p)| (!h.is_empty()).then_some(p));
        match port.map(str::parse::<u16>) {
            Some(Ok(p)) if p != 0 => endpoints.push(format!("http://{m}")),
            _ => return Err(format!("etcd member {m:?} is not host:port")),
        }
    }
    Ok(StoreChoice::Etcd(endpoints))
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
            etcd: match &self.store {
                StoreChoice::Redb => None,
                StoreChoice::Etcd(endpoints) => Some(crate::store::etcd::EtcdOptions {
                    endpoints: endpoints.clone(),
                    prefix: self.etcd_prefix.trim_end_matches('/').to_string(),
                    max_txn_ops: self.etcd_max_txn_ops,
                }),
            },
            leader_lease: self.leader_lease,
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
            service_cidr: self.service_cidr,
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
            release_public_key_file: self.release_public_key_file.clone(),
        }
    }
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `baton server FLAGS...` as the binary parses it.
    #[derive(Debug, Parser)]
    struct Baton {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Command {
        Server(Box<ServerArgs>),
    }

    fn parse(args: &[&str]) -> Result<ServerArgs, clap::Error> {
        let mut argv = vec!["baton", "server"];
        argv.extend_from_slice(args);
        Baton::try_parse_from(argv).map(|b| match b.command {
            Command::Server(s) => *s,
        })
    }

    #[test]
    fn service_cidr_defaults_to_k3s_and_refuses_nonsense() {
        let cidr = |args: &[&str]| {
            parse(args)
                .map(|s| s.config().service_cidr.to_string())
                .map_err(|e| e.to_string())
        };
        assert_eq!(cidr(&[]).unwrap(), "10.43.0.0/16");
        assert_eq!(
            cidr(&["--service-cidr", "10.96.0.0/12"]).unwrap(),
            "10.96.0.0/12"
        );
        let err = cidr(&["--service-cidr", "10.96.0.0"]).unwrap_err();
        assert!(err.contains("invalid service CIDR \"10.96.0.0\""), "{err}");
    }

    #[test]
    fn allow_host_port_replaces_the_default_and_repeats() {
        let policy = |args: &[&str]| {
            parse(args)
                .map(|s| s.config().policy.allow_host_ports)
                .map_err(|e| e.to_string())
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
    fn server_flags_become_its_config() {
        let cfg = parse(&[
            "--broker",
            "mqtt://127.0.0.1:1884",
            "--heartbeat-timeout",
            "1m",
        ])
        .unwrap()
        .config();
        assert_eq!(
            cfg.mqtt,
            MqttMode::External {
                url: "mqtt://127.0.0.1:1884".into()
            }
        );
        assert_eq!(cfg.heartbeat_timeout, Duration::from_secs(60));
    }

    #[test]
    fn store_is_redb_or_an_etcd_member_list() {
        assert_eq!(store_choice("redb"), Ok(StoreChoice::Redb));
        assert_eq!(
            store_choice("etcd://10.0.0.1:2379,etcd2:2379"),
            Ok(StoreChoice::Etcd(vec![
                "http://10.0.0.1:2379".into(),
                "http://etcd2:2379".into()
            ]))
        );
        for bad in [
            "etcd://",
            "etcd://host",
            "etcd://host:0",
            "etcd://:2379",
            "sqlite://x",
            "etcd://a:2379,",
        ] {
            assert!(store_choice(bad).is_err(), "{bad}");
        }
    }
}
