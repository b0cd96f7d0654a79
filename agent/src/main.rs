//! `baton-agent`: parses flags, prepares the node ([`baton_agent::node::Node`]), starts its
//! MQTT bus and runs the node loop over it. Nothing else lives here.

use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

mod launch;
mod setup;
use baton_agent::bus::Bus;
use baton_agent::identity::{self, Backoff, IdentityFile, TokenSource};
use baton_agent::node::{self, AgentConfig, AgentError};
use baton_agent::update::fault::Fault;
use baton_proto::{Capacity, NodeName};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use launch::{launch, update_config};
use setup::{install, uninstall};

#[derive(Parser)]
#[command(
    name = "baton-agent",
    version = baton_agent::build_info::VERSION,
    // `baton-agent --data-dir X reset` must not reset the default data dir: the subcommands
    // take their flags after their name, and flags before it are refused.
    args_conflicts_with_subcommands = true,
    about = "Runs the pods the Baton coordinator assigns to this node"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Remove every container, rootfs mount and pod network this agent's data dir owns.
    Reset(Box<RunArgs>),
    /// Rotate this device's key: a new key pair, a request signed by the current key, and
    /// a new identity file, which a running agent picks up (nothing restarts).
    Rotate(Box<RunArgs>),
    /// Install this binary as the systemd service baton-agent: /usr/local/bin/baton-agent,
    /// /etc/baton-agent/agent.env (every flag given here, and every BATON_* variable of
    /// the agent's set in this environment, with the join token), the unit, the kernel
    /// modules to load and the data dir; then enable and (re)start it. Run it again to
    /// update: the identity is kept.
    Install(Box<InstallArgs>),
    /// Start the agent as the service does (the unit's ExecStart): exec the agent binary
    /// the update state names (the new one on probation, with a watchdog, or the old one
    /// after a rollback), or this binary when no update ran, with the same flags and
    /// environment. It rolls back by itself when a new agent crashes, hangs or never
    /// commits (docs/updates.md, "On the device").
    Launch(Box<LaunchArgs>),
    /// Undo `install`: stop and disable the service, remove every pod (containers, cgroups,
    /// pod networks, mounts) as `reset` does, then the unit, agent.env, the binary and,
    /// unless --keep-data, the data dir.
    Uninstall(UninstallArgs),
}

#[derive(clap::Args)]
struct InstallArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Write and enable everything, but do not start (or restart) the service.
    #[arg(long, env = "BATON_INSTALL_NO_START")]
    no_start: bool,
    /// The root of the system to install into (an image being prepared, a test).
    #[arg(long, env = "BATON_INSTALL_ROOT", default_value = "/")]
    root: PathBuf,
}

#[derive(clap::Args)]
struct LaunchArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Record the agent's exit status instead of starting it: the unit's `ExecStopPost=`,
    /// which gets it from systemd in EXIT_CODE and EXIT_STATUS.
    #[arg(long, env = "BATON_LAUNCH_RECORD_EXIT")]
    record_exit: bool,
}

#[derive(clap::Args)]
struct UninstallArgs {
    /// The root of the system to uninstall from.
    #[arg(long, env = "BATON_INSTALL_ROOT", default_value = "/")]
    root: PathBuf,
    /// Keep the data dir (the identity, images and logs) for a later install.
    #[arg(long, env = "BATON_UNINSTALL_KEEP_DATA")]
    keep_data: bool,
    /// Log format: text or json.
    #[arg(long, env = "BATON_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The MQTT broker the coordinator uses, e.g. mqtts://10.0.0.1:8883 (default: the local
    /// embedded broker, mqtts://127.0.0.1:1883, or mqtt:// with --insecure-unenrolled and
    /// no identity). Over mqtts:// the agent presents its enrolled node certificate. The
    /// nodes of a broker cluster, comma-separated, are tried in turn: the next one after
    /// every failed or lost connection.
    #[arg(long, env = "BATON_COORDINATOR")]
    coordinator: Option<String>,
    /// Override the identity's CA for an `mqtts://` broker: the PEM CA that signed the
    /// broker's certificate.
    #[arg(long, env = "BATON_MQTT_CA", requires_all = ["mqtt_cert", "mqtt_key"])]
    mqtt_ca: Option<PathBuf>,
    /// Override the identity's node certificate: a PEM client certificate (CN = node name).
    #[arg(long, env = "BATON_MQTT_CERT", requires_all = ["mqtt_ca", "mqtt_key"])]
    mqtt_cert: Option<PathBuf>,
    /// The PEM private key of --mqtt-cert (Ed25519, ECDSA or RSA).
    #[arg(long, env = "BATON_MQTT_KEY", requires_all = ["mqtt_ca", "mqtt_cert"])]
    mqtt_key: Option<PathBuf>,
    /// A join token (`baton token create`): enroll this device over the coordinator's API
    /// if it has no identity yet (<data-dir>/identity.json). Ignored once enrolled. Every
    /// other flag is checked before the token is spent.
    #[arg(long, env = "BATON_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// A file holding the join token (e.g. on the boot partition): read again at each
    /// enrollment attempt, so a new token can be dropped in its place, and removed once the
    /// identity is written. A missing or malformed token in it is waited for, not fatal.
    #[arg(long, env = "BATON_JOIN_TOKEN_FILE", conflicts_with = "join_token")]
    join_token_file: Option<PathBuf>,
    /// DEVELOPMENT ONLY (logged as a warning): run without an enrolled identity, taking
    /// unsigned desired states from anyone who can publish on the broker.
    #[arg(long, env = "BATON_INSECURE_UNENROLLED")]
    insecure_unenrolled: bool,
    /// The coordinator's HTTP API, for enrollment and key rotation
    /// (e.g. https://10.0.0.1:7474; plain http only on loopback).
    #[arg(long, env = "BATON_COORDINATOR_API")]
    coordinator_api: Option<String>,
    /// How far (in seconds) a coordinator message's send time may be from this clock.
    #[arg(long, env = "BATON_SIGNATURE_WINDOW_SECS", default_value_t = 600)]
    signature_window_secs: u64,
    /// This node's name (default: the host name).
    #[arg(long, env = "BATON_NODE_NAME")]
    node_name: Option<String>,
    #[arg(
        long,
        env = "BATON_AGENT_DATA_DIR",
        default_value = "/var/lib/baton-agent"
    )]
    data_dir: PathBuf,
    /// Runtime files that must not reach a disk (OCI bundles: they hold secret env values);
    /// a tmpfs is mounted here unless it is one already. Per node, so agents can share it.
    #[arg(long, env = "BATON_AGENT_RUN_DIR", default_value = "/run/baton")]
    run_dir: PathBuf,
    /// Node labels, e.g. `zone=lab,disk=ssd`.
    #[arg(long, env = "BATON_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
    /// Taints the node registers with, kubelet's `key=value:Effect,...`; `baton taint`
    /// changes them after the node first registered.
    #[arg(long, env = "BATON_REGISTER_WITH_TAINTS", value_delimiter = ',')]
    register_with_taints: Vec<String>,
    /// Pod address range, e.g. 10.42.7.0/24 (default: derived from the node name).
    #[arg(long, env = "BATON_POD_CIDR")]
    pod_cidr: Option<String>,
    /// The node's resolver file: the upstreams cluster DNS relays other names to, and what
    /// `hostNetwork` pods get as /etc/resolv.conf (kubelet's flag).
    #[arg(long, env = "BATON_RESOLV_CONF", default_value = baton_agent::dns::DEFAULT_RESOLV_CONF)]
    resolv_conf: PathBuf,
    /// The address this node advertises (default: the one that routes to the broker).
    #[arg(long, env = "BATON_NODE_IP")]
    node_ip: Option<IpAddr>,
    /// Registries (host:port) reached over plain HTTP.
    #[arg(
        long = "insecure-registry",
        env = "BATON_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
    /// Registry credentials: Docker's config.json (`auths`), plus optional `caFiles`
    /// (registry -> PEM file) for per-registry CAs.
    #[arg(long, env = "BATON_REGISTRY_CONFIG")]
    registry_config: Option<PathBuf>,
    /// A PEM CA bundle trusted for every registry, on top of the built-in roots.
    #[arg(long, env = "BATON_REGISTRY_CA")]
    registry_ca: Option<PathBuf>,
    /// A registry tried first for every image (http://HOST:PORT or https://HOST:PORT),
    /// e.g. the coordinator's own (`baton image import`); the image's registry is the
    /// fallback.
    #[arg(long, env = "BATON_REGISTRY_MIRROR")]
    registry_mirror: Option<String>,
    /// A file holding the bearer token sent to --registry-mirror (for the coordinator, a
    /// read-only API token).
    #[arg(
        long,
        env = "BATON_REGISTRY_MIRROR_TOKEN_FILE",
        requires = "registry_mirror"
    )]
    registry_mirror_token_file: Option<PathBuf>,
    /// The release public key (base64, `release.pub` of `baton release keygen`) agent
    /// updates must be signed by; overrides the key pinned at enrollment.
    #[arg(long, env = "BATON_RELEASE_PUBLIC_KEY", value_parser = baton_agent::identity::release_key::check_flag)]
    release_public_key: Option<String>,
    /// A PEM CA bundle for an https --registry-mirror.
    #[arg(long, env = "BATON_REGISTRY_MIRROR_CA", requires = "registry_mirror")]
    registry_mirror_ca: Option<PathBuf>,
    /// A directory of OCI image archives (*.tar) and OCI layouts imported into the image
    /// store at start, so pods using them run without any registry.
    #[arg(long, env = "BATON_PRELOAD_IMAGES")]
    preload_images: Option<PathBuf>,
    /// Most disk the image store may use: bytes (`2Gi`, `500M`) or a share of its
    /// filesystem (`20%`). Unused images are removed, least recently used first.
    #[arg(long, env = "BATON_IMAGE_DISK_BUDGET")]
    image_disk_budget: Option<baton_agent::image::DiskSize>,
    /// Free disk to keep on the image store's filesystem (default: 5% or 256Mi, whichever
    /// is smaller).
    #[arg(long, env = "BATON_IMAGE_MIN_FREE")]
    image_min_free: Option<baton_agent::image::DiskSize>,
    #[command(flatten)]
    link: baton_agent::link_profile::LinkArgs,
    /// CPU kept back from pods for the system and the agent.
    #[arg(long, env = "BATON_RESERVED_CPU_MILLIS", default_value_t = 100)]
    reserved_cpu_millis: u32,
    /// Memory kept back from pods, in MiB.
    #[arg(long, env = "BATON_RESERVED_MEMORY_MIB", default_value_t = 128)]
    reserved_memory_mib: u64,
    #[arg(long, env = "BATON_MAX_PODS", default_value_t = 110)]
    max_pods: u16,
    /// Cgroup path under which every pod's cgroups are created (then `<node>/<pod>/<ctr>`).
    #[arg(long, env = "BATON_CGROUP_ROOT", default_value = "baton")]
    cgroup_root: String,
    /// Bound on each container's log file, in bytes (one rotated file is kept).
    #[arg(long, env = "BATON_LOG_MAX_BYTES", default_value_t = 1 << 20)]
    log_max_bytes: u64,
    #[arg(long, env = "BATON_PIDS_LIMIT", default_value_t = 1024)]
    pids_limit: i64,
    /// kubelet's `--eviction-hard`: `signal<quantity` items (memory.available,
    /// nodefs.available, nodefs.inodesFree, imagefs.available, imagefs.inodesFree,
    /// pid.available), a quantity or a percentage each. Below one, the node reports
    /// DiskPressure, MemoryPressure or PIDPressure and takes no new pods. Empty: none.
    #[arg(long, env = "BATON_EVICTION_HARD", default_value = baton_agent::pressure::DEFAULT_EVICTION_HARD)]
    eviction_hard: String,
    /// kubelet's `--eviction-soft`, same shape: the node reports the condition at once, but
    /// evicts only after the signal stayed under the level for its grace period.
    #[arg(long, env = "BATON_EVICTION_SOFT", default_value = "")]
    eviction_soft: String,
    /// Grace period of each soft threshold, e.g. `memory.available=1m30s,nodefs.available=2m`;
    /// every soft threshold needs one.
    #[arg(long, env = "BATON_EVICTION_SOFT_GRACE_PERIOD", default_value = "")]
    eviction_soft_grace_period: String,
    /// How long a condition stays reported after its last threshold stopped being met, so a
    /// node hovering at a threshold does not flap (kubelet's default).
    #[arg(long, env = "BATON_EVICTION_PRESSURE_TRANSITION_PERIOD", default_value = "5m", value_parser = humantime::parse_duration)]
    eviction_pressure_transition_period: Duration,
    /// Under DiskPressure, once unused images and rotated logs are removed, evict pods
    /// (BestEffort first, then by disk use) until the pressure goes, as kubelet does.
    /// `false`: only report the pressure and taint the node.
    #[arg(long, env = "BATON_POD_EVICTION", default_value_t = true, action = clap::ArgAction::Set)]
    pod_eviction: bool,
    /// Stop every pod when the agent exits. By default pods keep running, so that an agent
    /// upgrade or restart does not disrupt them (the next agent adopts them); `reset` removes
    /// them for good.
    #[arg(long, env = "BATON_STOP_PODS_ON_EXIT")]
    stop_pods_on_exit: bool,
    /// Log format: text or json. Filter with RUST_LOG.
    #[arg(long, env = "BATON_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

/// `RUST_LOG` as `target=level` pairs and a default level (`info,libcontainer=warn`): what
/// the docs and the lab use. `Targets` parses that without EnvFilter's regex engine, which
/// the agent binary would otherwise carry (issue 14); span and field filters are not taken.
fn init_logging(format: &str) {
    init_logging_to(format, std::io::stderr);
}

fn init_logging_to<W>(format: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    const DEFAULT: &str = "info,libcgroups=error,libcontainer=warn";
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| DEFAULT.parse().expect("the default filter parses"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let registry = tracing_subscriber::registry().with(filter);
    if format == "json" {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
}

fn host_capacity() -> (u32, u64) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    (cpus * 1000, mem)
}

/// The local address the kernel would use to reach the broker (the first of a list that
/// resolves). No packet is sent.
fn route_address(list: &str) -> Option<IpAddr> {
    let addr = baton_agent::bus::parse_list(list)
        .ok()?
        .iter()
        .find_map(|url| {
            let (host, port) = baton_agent::bus::parse_url(url).ok()?;
            (host.as_str(), port).to_socket_addrs().ok()?.next()
        })?;
    let sock = UdpSocket::bind(if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .ok()?;
    sock.connect(addr).ok()?;
    Some(sock.local_addr().ok()?.ip())
}

fn node_name(a: &RunArgs) -> Result<NodeName> {
    let name = match &a.node_name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .context("cannot read host name")?
            .to_string_lossy()
            .into_owned(),
    };
    NodeName::new(&name).with_context(|| "--node-name")
}

fn flag_labels(a: &RunArgs) -> Result<Vec<(String, String)>> {
    let mut labels = Vec::new();
    for l in a.labels.iter().filter(|l| !l.is_empty()) {
        let Some((k, v)) = l.split_once('=') else {
            bail!("label {l:?} is not KEY=VALUE")
        };
        labels.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    Ok(labels)
}

/// The broker: --coordinator, else the local embedded broker, over TLS unless the agent
/// runs unenrolled.
fn broker_url(a: &RunArgs, enrolled: bool) -> String {
    a.coordinator
        .as_deref()
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|| {
            let scheme = if enrolled { "mqtts" } else { "mqtt" };
            format!("{scheme}://127.0.0.1:1883")
        })
}

/// What the flags say, checked without an identity: before enrollment, so that a bad
/// flag never costs the single-use join token.
struct Checked {
    url: String,
    /// --mqtt-ca/--mqtt-cert/--mqtt-key, which override the identity's.
    flag_tls: Option<baton_agent::mqtt_tls::MqttTls>,
    labels: Vec<(String, String)>,
    register_taints: Vec<baton_proto::NodeTaint>,
    registry_mirror: Option<baton_agent::image::RegistryMirror>,
}

fn check_flags(a: &RunArgs, enrolled: bool) -> Result<Checked> {
    let url = broker_url(a, enrolled);
    // A list's entries share their scheme (`parse_list`): the first's is everyone's.
    let tls_url = baton_agent::bus::parse_list(&url)
        .map(|l| l[0].starts_with("mqtts://"))
        .context("--coordinator")?;
    let flag_tls = match (&a.mqtt_ca, &a.mqtt_cert, &a.mqtt_key) {
        (Some(ca), Some(cert), Some(key)) => {
            let t = baton_agent::mqtt_tls::MqttTls::from_files(ca, cert, key)
                .context("--mqtt-ca/--mqtt-cert/--mqtt-key")?;
            t.client_config()
                .context("--mqtt-ca/--mqtt-cert/--mqtt-key")?;
            Some(t)
        }
        _ => None,
    };
    if flag_tls.is_some() && !tls_url {
        bail!("--mqtt-ca/--mqtt-cert/--mqtt-key were given but the broker {url} is not mqtts://");
    }
    if tls_url && flag_tls.is_none() && !enrolled {
        bail!("the broker {url} is mqtts:// but this agent has no identity to present: enroll with --join-token or --join-token-file, or give --mqtt-ca/--mqtt-cert/--mqtt-key");
    }
    let registry_mirror = match a.registry_mirror.as_deref().filter(|u| !u.is_empty()) {
        Some(u) => Some(
            baton_agent::image::RegistryMirror::load(
                u,
                a.registry_mirror_token_file.as_deref(),
                a.registry_mirror_ca.as_deref(),
            )
            .context("--registry-mirror")?,
        ),
        None => None,
    };
    Ok(Checked {
        url,
        flag_tls,
        labels: flag_labels(a)?,
        register_taints: baton_agent::node::taints::parse_register_taints(&a.register_with_taints)
            .context("--register-with-taints")?,
        registry_mirror,
    })
}

/// Whether liveness comes from Baton's MQTT TLS front (`--link-liveness`, see
/// `baton_agent::link_profile`): asked for, or (`auto`) the enrollment said so
/// (`identity::BROKER_FRONT_FILE`), and only over `mqtts://`, where the front is.
fn link_front(a: &RunArgs, url: &str, identity: Option<&IdentityFile>) -> Result<bool> {
    use baton_agent::link_profile::Liveness;
    let tls = url.starts_with("mqtts://");
    Ok(match a.link.link_liveness {
        Liveness::Front if !tls => {
            bail!("--link-liveness front needs an mqtts:// broker (Baton's MQTT TLS front), not {url}")
        }
        Liveness::Front => true,
        Liveness::Keepalive => false,
        Liveness::Auto => tls && identity.is_some() && identity::broker_front(&a.data_dir),
    })
}

/// How the agent starts: with an identity, without one (development), or not at all (a
/// SIGTERM came while it was still enrolling).
enum Start {
    Enrolled(IdentityFile),
    Unenrolled,
    Stopped,
}

/// The identity file, made by enrolling with --join-token(-file) if there is none yet.
/// Without either, only --insecure-unenrolled (development) lets the agent run.
///
/// Whatever retrying cannot fix (a malformed --join-token, a bad API URL, a bad flag) fails
/// at once; everything else, including a missing or malformed token in --join-token-file
/// (a later file fixes it), is retried until it works (see `identity::enroll_with_retry`).
async fn load_or_enroll(a: &RunArgs) -> Result<Start> {
    let path = a.data_dir.join(identity::IDENTITY_FILE);
    if let Some(id) = IdentityFile::load(&path)? {
        if a.node_name.as_deref().is_some_and(|n| n != id.node_name) {
            bail!(
                "{} is the identity of node {:?}, not --node-name {:?}",
                path.display(),
                id.node_name,
                a.node_name.as_deref().unwrap_or_default()
            );
        }
        if !a.data_dir.join(identity::KEY_PEM_FILE).exists() {
            id.write_pem_files(&a.data_dir)?;
        }
        // Left by a stop between writing the identity and removing these.
        identity::forget_pending_key(&a.data_dir);
        if let Some(f) = &a.join_token_file {
            TokenSource::File(f.clone()).remove_spent();
        }
        return Ok(Start::Enrolled(id));
    }
    let token = match (&a.join_token, &a.join_token_file) {
        (Some(t), _) => TokenSource::Given(t.clone()),
        (None, Some(f)) => TokenSource::File(f.clone()),
        (None, None) if a.insecure_unenrolled => return Ok(Start::Unenrolled),
        (None, None) => bail!(
            "this device has no identity ({} is missing): enroll it with --join-token TOKEN or --join-token-file FILE (from `baton token create` on the coordinator) and --coordinator-api https://COORDINATOR:7474; --insecure-unenrolled runs without one, for development only",
            path.display()
        ),
    };
    let api = a
        .coordinator_api
        .as_deref()
        .context("--join-token needs --coordinator-api (the coordinator's https:// API or --enroll-listen address)")?;
    // Everything that could still fail after enrollment, checked before the token is spent.
    match &token {
        TokenSource::Given(t) => identity::check_enroll_args(api, t),
        TokenSource::File(_) => identity::check_api_url(api),
    }
    .context("cannot enroll")?;
    let node = node_name(a)?;
    check_flags(a, true)?;
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("cannot create {}", a.data_dir.display()))?;
    let enrollment = identity::Enrollment {
        identity_path: path,
        api: api.to_owned(),
        token,
        node,
        labels: flag_labels(a)?.into_iter().collect(),
        arch: baton_agent::image::Platform::host().arch,
    };
    let id = identity::enroll_with_retry(&enrollment, Backoff::default(), shutdown_signal()).await;
    Ok(id.map_or(Start::Stopped, Start::Enrolled))
}

/// How the node reaches the coordinator: the broker, the TLS material to present, and
/// the identity that signs and verifies messages.
struct Link {
    url: String,
    mqtt_tls: Option<baton_agent::mqtt_tls::MqttTls>,
    /// `None` on fleets without enrollment.
    security: Option<identity::AgentSecurity>,
}

fn config(a: RunArgs, identity: Option<IdentityFile>) -> Result<(AgentConfig, Link)> {
    let node = match &identity {
        Some(id) => NodeName::new(&id.node_name).context("identity file")?,
        None => node_name(&a)?,
    };
    // Checked with the other flags, before the agent creates anything on the host.
    let Checked {
        url,
        flag_tls,
        mut labels,
        register_taints,
        registry_mirror,
    } = check_flags(&a, identity.is_some())?;
    let mqtt_tls = match (flag_tls, &identity) {
        (Some(t), _) => Some(t),
        (None, Some(id)) if url.starts_with("mqtts://") => {
            Some(id.mqtt_tls().context("the identity's MQTT certificate")?)
        }
        _ => None,
    };
    let front = link_front(&a, &url, identity.as_ref())?;
    let link_settings = a.link.settings(front);
    baton_agent::bus::list_options(&url, &node, mqtt_tls.as_ref(), &link_settings)
        .context("--coordinator")?;
    let security = match &identity {
        Some(id) => {
            if !url.starts_with("mqtts://") {
                tracing::warn!(broker = %url, "the broker is reached in clear text: messages stay signed, but anyone on the path reads the desired states");
            }
            // The labels the coordinator gave at enrollment win over the flags.
            labels.retain(|(k, _)| !id.labels.contains_key(k));
            labels.extend(id.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
            Some(
                identity::AgentSecurity::new(
                    &a.data_dir,
                    id,
                    Duration::from_secs(a.signature_window_secs),
                )
                .context("identity")?,
            )
        }
        None => None,
    };
    let (cpu, mem) = host_capacity();
    let allocatable = Capacity {
        cpu_millis: cpu.saturating_sub(a.reserved_cpu_millis),
        memory_bytes: mem.saturating_sub(a.reserved_memory_mib << 20),
        pods: a.max_pods.min(baton_proto::MAX_PODS_PER_NODE as u16),
    };
    let eviction_soft = baton_agent::pressure::Thresholds::parse(&a.eviction_soft)?;
    let eviction_soft_grace =
        baton_agent::pressure::debounce::GracePeriods::parse(&a.eviction_soft_grace_period)?;
    eviction_soft_grace.check_covers(&eviction_soft)?;
    let cfg = AgentConfig {
        address: a.node_ip.or_else(|| route_address(&url)),
        node,
        data_dir: a.data_dir,
        run_dir: a.run_dir,
        labels,
        register_taints,
        allocatable,
        pod_cidr: a.pod_cidr,
        resolv_conf: a.resolv_conf,
        insecure_registries: a
            .insecure_registries
            .into_iter()
            .filter(|r| !r.is_empty())
            .collect(),
        registry_config: a.registry_config,
        registry_ca: a.registry_ca,
        registry_mirror,
        preload_images: a.preload_images,
        image_limits: baton_agent::image::DiskLimits {
            budget: a.image_disk_budget,
            min_free: a.image_min_free,
        },
        link: link_settings,
        cgroup_root: a.cgroup_root,
        log_max_bytes: a.log_max_bytes,
        pids_limit: a.pids_limit,
        eviction_hard: baton_agent::pressure::Thresholds::parse(&a.eviction_hard)?,
        eviction_soft,
        eviction_soft_grace,
        pressure_transition: a.eviction_pressure_transition_period,
        pod_eviction: a.pod_eviction,
        stop_pods_on_exit: a.stop_pods_on_exit,
        release_public_key: a.release_public_key,
    };
    Ok((
        cfg,
        Link {
            url,
            mqtt_tls,
            security,
        },
    ))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// At most this many blocking threads (container operations, unpacking, cleanup; more
/// queue). Idle ones end after tokio's default 10 s, so threads come back to the baseline
/// after pods come and go.
const BLOCKING_THREADS: usize = 16;

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
}

/// Pins `--data-dir` and `--run-dir` to the start directory: a relative data dir once made
/// every container fail (libcontainer wants an absolute rootfs) and the pods crash-loop.
fn absolute_dirs(run: &mut RunArgs) -> Result<()> {
    for dir in [&mut run.data_dir, &mut run.run_dir] {
        *dir = std::path::absolute(&*dir)
            .with_context(|| format!("cannot resolve {} to an absolute path", dir.display()))?;
    }
    Ok(())
}

fn main() -> Result<()> {
    // Before anything else, and before any thread starts: `baton-agent runtime-op` is the
    // runtime's single-threaded helper (runtime/youki/op.rs), not a command for people.
    baton_agent::runtime::serve_op_if_asked(|log| {
        let format = std::env::var("BATON_LOG_FORMAT").unwrap_or_default();
        init_logging_to(&format, std::sync::Mutex::new(log));
    });
    // A panic on hostile input leaves a marker, so the restart refuses that input (crash.rs).
    baton_agent::crash::install_hook();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let (args, reset, rotate) = match cli.command {
        Some(Command::Reset(args)) => (*args, true, false),
        Some(Command::Rotate(args)) => (*args, false, true),
        Some(Command::Install(args)) => {
            // Not made absolute here: install refuses a relative --data-dir, since the unit
            // it writes runs from / (install/files.rs).
            init_logging(&args.run.log_format);
            let sub = matches.subcommand_matches("install").context("install")?;
            return install(*args, sub);
        }
        Some(Command::Uninstall(args)) => {
            init_logging(&args.log_format);
            return uninstall(args);
        }
        Some(Command::Launch(args)) => return launch(*args),
        None => (cli.run, false, false),
    };
    init_logging(&args.log_format);
    let fault = baton_agent::update::fault::from_env();
    if !reset && !rotate && fault == Some(Fault::Crash) {
        std::process::exit(101);
    }
    let mut args = args;
    absolute_dirs(&mut args)?;
    // Before anything touches the data dir; `rotate` works beside a running agent.
    let _data_dir_lock = (!rotate)
        .then(|| baton_agent::datadir::lock(&args.data_dir))
        .transpose()?;
    let rt = runtime().context("cannot start the async runtime")?;
    if rotate {
        let path = args.data_dir.join(identity::IDENTITY_FILE);
        let id = rt
            .block_on(identity::rotate(&path, args.coordinator_api.as_deref()))
            .context("key rotation failed")?;
        println!("rotated the key of node {}", id.node_name);
        return Ok(());
    }
    let identity = if reset {
        IdentityFile::load(&args.data_dir.join(identity::IDENTITY_FILE))?
    } else {
        match rt.block_on(load_or_enroll(&args))? {
            Start::Enrolled(id) => Some(id),
            Start::Unenrolled => None,
            Start::Stopped => {
                tracing::info!("stopped before enrollment completed; nothing was removed");
                return Ok(());
            }
        }
    };
    if reset {
        // Reset needs no broker: an unenrolled data dir is reset like any other, also when
        // the flags (or the environment) name an mqtts:// broker it could not present to.
        args.insecure_unenrolled = true;
        args.coordinator = None;
    }
    let updates = update_config(&args);
    let (cfg, mut link) = config(args, identity)?;
    if fault == Some(Fault::NoConnect) {
        link.url = baton_agent::update::fault::unreachable_broker(&link.url);
    }
    if link.security.is_none() && !reset {
        tracing::warn!("--insecure-unenrolled: DEVELOPMENT ONLY. This agent has no identity and runs unsigned desired states from anyone who can publish on the broker, as root");
    }
    if reset {
        return reset_node(&rt, &cfg);
    }
    let ran = rt.block_on(run(cfg, link, updates));
    // Dropping the runtime would wait for every blocking task: waits on container processes
    // and the like, which held an exiting agent ~15 s (its pods' hostPorts down, and during
    // an update the node silent that much longer). Everything is persisted by now; the next
    // agent adopts what they watched.
    rt.shutdown_timeout(Duration::from_millis(500));
    ran.context("agent failed")
}

/// `baton-agent reset` (and the reset in `uninstall`): every container, rootfs mount, pod
/// network and cgroup of the node, and its bundle directory.
fn reset_node(rt: &tokio::runtime::Runtime, cfg: &AgentConfig) -> Result<()> {
    let _guard = rt.enter();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let deps = node::build_deps(cfg, tx)?;
    node::clean_leftovers(&deps);
    // The node's own cgroup directory under every controller, not only the pods' below it.
    let cgroups = std::path::Path::new(&cfg.cgroup_root).join(cfg.node.as_str());
    let left = deps.runtime.remove_cgroup_tree(&cgroups);
    if !left.is_empty() {
        anyhow::bail!("cgroups still in use, not removed: {left:?}");
    }
    deps.network.teardown_node()?;
    // The node's part of the run-dir tmpfs: its (now empty) bundle and container state dirs.
    let run = cfg.run_dir.join(cfg.node.as_str());
    match std::fs::remove_dir_all(&run) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", run.display()));
        }
        _ => {}
    }
    println!(
        "reset {}: no pods, containers or pod networks left",
        cfg.data_dir.display()
    );
    Ok(())
}

/// Prepares the node, then connects, in that order: a node that cannot start (its data
/// dir, runtime or network) never shows up on the broker.
///
/// An update's switch ends the agent like a SIGTERM does: pods keep running, and the
/// launcher, started again by the service manager, execs the next binary.
async fn run(
    cfg: AgentConfig,
    link: Link,
    updates: baton_agent::update::UpdateConfig,
) -> Result<(), AgentError> {
    let name = cfg.node.clone();
    let pods_dir = cfg.data_dir.join("pods");
    let cfg_link = cfg.link;
    let node = node::Node::prepare(cfg).await?;
    let (events, bus_events) = tokio::sync::mpsc::channel(64);
    let bus = Bus::start_secure(
        &link.url,
        name,
        link.mqtt_tls.as_ref(),
        link.security,
        &cfg_link,
        node.leader_term(),
        events,
    )?;
    bus.serve_logs(pods_dir);
    bus.serve_exec(node.runtime());
    let reports = bus.clone();
    let update = baton_agent::update::spawn(
        updates,
        std::sync::Arc::new(move |body| reports.publish(body).is_ok()),
    );
    let mut exit = update.exit.clone();
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = exit.wait_for(|e| *e) => tracing::info!("exiting for an agent update"),
        }
    };
    node.with_updates(update).run(&bus, bus_events, stop).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_before_a_subcommand_are_refused_not_dropped() {
        // Once, `--data-dir X launch` started the launcher on the default data dir; the same
        // with `reset` would reset the wrong node.
        for sub in ["reset", "launch", "rotate"] {
            let r = Cli::try_parse_from(["baton-agent", "--data-dir", "/srv/x", sub]);
            assert!(r.is_err(), "{sub} accepted a flag before it");
        }
        let cli = Cli::try_parse_from(["baton-agent", "reset", "--data-dir", "/srv/x"]).unwrap();
        match cli.command {
            Some(Command::Reset(a)) => assert_eq!(a.data_dir, PathBuf::from("/srv/x")),
            _ => panic!("not reset"),
        }
        let run = Cli::try_parse_from(["baton-agent", "--data-dir", "/srv/x"]).unwrap();
        assert!(run.command.is_none());
        assert_eq!(run.run.data_dir, PathBuf::from("/srv/x"));
    }
}
