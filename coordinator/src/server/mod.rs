//! `baton server`: wires the store, the core, the MQTT bridge (and optionally the
//! embedded broker) and the HTTP API together.
//!
//! [`Server::bind`] opens everything that can fail (store, broker, HTTP listener) and
//! reports the bound addresses, so tests can start it on port 0; [`Server::run`] serves
//! until the shutdown future completes. On shutdown the HTTP server stops accepting, the
//! bridge disconnects, and the core ends once every event sender is gone, which releases
//! the store (redb holds a file lock), so a test can start a new server on the same data
//! directory right away. The embedded broker cannot be stopped (see [`crate::edge::broker`]).

pub mod args;
pub mod leader;
mod standby;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::core::{Core, CoreError, Event};
use crate::edge::broker::{self, BrokerError};
use crate::edge::bus::{self as mqtt_bus, BrokerAddr, Bus, BusError, BusStats};
use crate::edge::http::{self, HttpError};
use crate::edge::tls::{self, BrokerTlsFiles, MqttClientFiles, TlsError};
use crate::registry::{Registry, RegistryError};
use crate::security::auth::{self, AuthError, Tokens};
use crate::store::{RedbStore, Store, StoreError};

pub use args::{BrokerCommand, ServerArgs};

/// Default address of the HTTP API.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7474";
/// Default address of the embedded MQTT broker.
pub const DEFAULT_MQTT_LISTEN: &str = "127.0.0.1:1883";
/// A node is NotReady after this long without a heartbeat (about 4 missed 5 s beats).
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttMode {
    /// Run rumqttd in this process, listening on `listen`.
    Embedded { listen: SocketAddr },
    /// Use an existing broker at `mqtt://host:port`.
    External { url: String },
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub http_listen: SocketAddr,
    /// Serve the API on a non-loopback address without TLS (tokens in clear text).
    pub insecure_allow_remote: bool,
    /// Serve the API over TLS with this certificate chain and key (PEM files).
    pub tls: Option<TlsFiles>,
    pub mqtt: MqttMode,
    pub heartbeat_timeout: Duration,
    /// How long a node is NotReady before its Deployment pods are evicted and replaced
    /// elsewhere (see `Core::with_pod_eviction_timeout`).
    pub pod_eviction_timeout: Duration,
    /// How long a deleted Ready pod drains before its node stops it
    /// (see `Core::with_pod_drain`).
    pub pod_drain: Duration,
    /// Where Services' ClusterIPs come from (see `Core::with_service_cidr`).
    pub service_cidr: crate::decide::service::ServiceCidr,
    /// The embedded broker's listener speaks TLS and requires client certificates signed
    /// by `client_ca` (see [`crate::edge::broker`]). Embedded mode only. Without it (and without
    /// `insecure_mqtt`) the broker gets a certificate from the coordinator's CA for its
    /// listen address, loopback and `tls_sans`, and requires node certificates from the
    /// same CA (`--mqtt-tls-auto`, the default).
    pub mqtt_tls: Option<BrokerTlsFiles>,
    /// Development mode (`--insecure-mqtt`): the embedded broker speaks plain MQTT to
    /// anyone, on any address. Logged as a warning at start. Whether unenrolled nodes are
    /// accepted unsigned is `security.require_signatures` (the CLI turns it off with this).
    pub insecure_mqtt: bool,
    /// The coordinator's CA and client identity for an `mqtts://` external broker. Without
    /// it the coordinator trusts its own CA for the broker and presents a client
    /// certificate it issues itself (CN `baton:coordinator`, `crate::security::pki`).
    pub broker_tls: Option<MqttClientFiles>,
    /// What pods may ask of their nodes beyond the defaults (`crate::decide::policy`).
    pub policy: crate::decide::policy::Policy,
    /// Signature and replay checks of node messages (`crate::security::gate`).
    pub security: crate::security::gate::SecurityConfig,
    /// Serve the API over TLS with a certificate from the coordinator's own CA
    /// (`crate::security::pki`), valid for the listen address, loopback, `localhost` and `tls_sans`.
    pub api_tls_auto: bool,
    /// A second listener, always TLS with a certificate from the coordinator's CA, that
    /// serves only enrollment, key rotation and node-signed release downloads
    /// (`http::enroll_router`), so devices can enroll and update while the API stays on
    /// loopback.
    pub enroll_listen: Option<SocketAddr>,
    /// Extra names or addresses for the CA-issued certificates (API and enrollment).
    pub tls_sans: Vec<String>,
    /// The release public key file (`crate::registry::read_public_key`): release imports
    /// are checked against it and enrolling devices pin it. None: imports are refused.
    pub release_public_key_file: Option<PathBuf>,
    /// Keep the state in etcd instead of `<data-dir>/baton.redb` (`crate::store::etcd`).
    /// The data directory still holds the PKI, the image registry and release files.
    pub etcd: Option<crate::store::etcd::EtcdOptions>,
    /// With etcd: the leader's lease, how long a dead leader keeps a standby waiting
    /// (`leader`).
    pub leader_lease: Duration,
}

impl ServerConfig {
    /// The defaults, with data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7474)),
            insecure_allow_remote: false,
            tls: None,
            mqtt: MqttMode::Embedded {
                listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            },
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            pod_eviction_timeout: crate::core::DEFAULT_POD_EVICTION_TIMEOUT,
            pod_drain: crate::core::DEFAULT_POD_DRAIN,
            service_cidr: Default::default(),
            mqtt_tls: None,
            insecure_mqtt: false,
            broker_tls: None,
            policy: crate::decide::policy::Policy::default(),
            security: crate::security::gate::SecurityConfig::default(),
            api_tls_auto: false,
            enroll_listen: None,
            tls_sans: Vec::new(),
            release_public_key_file: None,
            etcd: None,
            leader_lease: leader::DEFAULT_LEASE,
        }
    }
}

/// The API's TLS certificate chain and private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Leader(#[from] leader::LeaderError),
    #[error("this coordinator lost its leadership: {0}")]
    LostLeadership(String),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the store in {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error("cannot load the state: {0}")]
    Core(#[from] CoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot set up API tokens: {0}")]
    Auth(#[from] AuthError),
    #[error("cannot open the image registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    MqttConfig(&'static str),
    #[error("cannot set up the coordinator's key and CA: {0}")]
    Pki(#[from] crate::security::pki::PkiError),
    #[error("cannot load node identities: {0}")]
    Security(#[from] crate::security::gate::SecurityError),
    #[error("cannot load join tokens: {0}")]
    Enroll(#[from] crate::security::enroll::EnrollError),
}

/// A bound, not yet serving, coordinator.
pub struct Server {
    /// With etcd: this coordinator leads until this says otherwise (`leader`).
    leadership: Option<leader::Leadership>,
    http_addr: SocketAddr,
    /// Where the bridge connects: one broker, or the members of one cluster in turn.
    broker: Vec<BrokerAddr>,
    embedded_mqtt: Option<SocketAddr>,
    /// TLS for the bridge's own connection (an `mqtts://` external broker).
    broker_tls: Option<Arc<rustls::ClientConfig>>,
    /// What is wrong with the bridge's client certificate (see [`crate::edge::bus::identity_problem`]).
    broker_identity: Option<String>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    tokens: Arc<Tokens>,
    /// Imported images, served on `/v2/` (see [`crate::registry`]).
    registry: Arc<Registry>,
    core: Core,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    outbound_rx: mpsc::Receiver<crate::core::Outbound>,
    security: Arc<crate::security::gate::Security>,
    enroller: Arc<crate::security::enroll::Enroller>,
    /// The `--enroll-listen` listener and its TLS config.
    enroll: Option<(tokio::net::TcpListener, Arc<rustls::ServerConfig>)>,
    /// The open HTTP connections of both listeners, and their bound (`crate::edge::serve`).
    conns: Arc<crate::edge::serve::Conns>,
    /// `baton logs` sessions (see [`crate::edge::logs`]).
    logs: Arc<crate::edge::logs::LogHub>,
    /// The Prometheus metrics the core, the bus and `/metrics` share.
    metrics: Arc<crate::metrics::Metrics>,
}

impl Server {
    /// Opens the store, loads the state, starts the embedded broker if asked, and binds
    /// the HTTP listener.
    pub async fn bind(cfg: ServerConfig) -> Result<Self, ServerError> {
        http::check_listen(
            cfg.http_listen,
            cfg.tls.is_some() || cfg.api_tls_auto,
            cfg.insecure_allow_remote,
        )?;
        let limits = crate::edge::serve::Limits::for_process();
        tracing::info!(
            max_connections = limits.max_connections,
            "HTTP connections bounded by the open-files limit"
        );
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| ServerError::DataDir {
            path: cfg.data_dir.clone(),
            source,
        })?;
        let pki = Arc::new(crate::security::pki::Pki::load_or_create(
            &cfg.data_dir.join("pki"),
        )?);
        warn_insecure(&cfg);
        let (tls, api_ca) = match (&cfg.tls, cfg.api_tls_auto) {
            (Some(f), _) => (
                Some(tls::server_config(&f.cert, &f.key)?),
                Some(f.cert.clone()),
            ),
            (None, true) => {
                let (cert, key) = pki.api_tls(&api_sans(cfg.http_listen, &cfg.tls_sans))?;
                (
                    Some(tls::server_config(&cert, &key)?),
                    Some(cfg.data_dir.join("pki").join(crate::security::pki::CA_FILE)),
                )
            }
            (None, false) => (None, None),
        };
        let conns = crate::edge::serve::Conns::new(limits);
        let mut leadership = None;
        let store: Arc<dyn Store> = match &cfg.etcd {
            None => {
                Arc::new(
                    RedbStore::open(&cfg.data_dir).map_err(|source| ServerError::Store {
                        path: cfg.data_dir.clone(),
                        source,
                    })?,
                )
            }
            Some(opts) => {
                let store = leader::open_etcd(opts)
                    .await
                    .map_err(|source| ServerError::Store {
                        path: opts.endpoints.join(",").into(),
                        source,
                    })?;
                tracing::info!(endpoints = %opts.endpoints.join(","), prefix = %opts.prefix, "state in etcd");
                // Nothing is loaded before this coordinator leads. Meanwhile its API
                // address redirects to the leader (`standby`).
                let listener = crate::edge::serve::bind(cfg.http_listen).map_err(|source| {
                    ServerError::Bind {
                        addr: cfg.http_listen,
                        source,
                    }
                })?;
                let standby = standby::Standby::start(
                    listener,
                    tls.clone(),
                    conns.clone(),
                    opts.endpoints.clone(),
                    leader::election(opts),
                );
                let me = server_url(cfg.http_listen, cfg.tls.is_some() || cfg.api_tls_auto);
                leadership = Some(leader::lead_retrying(&store, &me, cfg.leader_lease).await?);
                standby.stop().await;
                Arc::new(store)
            }
        };
        let tokens = Arc::new(Tokens::load(store.clone())?);
        let release_key = match &cfg.release_public_key_file {
            Some(path) => {
                Some(crate::registry::read_public_key(path).map_err(RegistryError::from)?)
            }
            None => {
                tracing::info!("no release public key (--release-public-key-file): agent releases cannot be imported");
                None
            }
        };
        let registry =
            Arc::new(Registry::open(&cfg.data_dir, store.clone())?.with_release_key(release_key));
        let security = Arc::new(crate::security::gate::Security::load(
            store.clone(),
            pki.clone(),
            cfg.security.clone(),
        )?);
        // A new leader's term, stored before anything goes out with it; a single
        // coordinator keeps the stored one.
        let term = match &leadership {
            Some(l) => security.lead(l.revision)?,
            None => security.term(),
        };
        tracing::info!(term, "sending with the leader's term {term}");
        let enroller = Arc::new(
            crate::security::enroll::Enroller::load(store.clone(), security.clone())?
                .with_release_key(release_key.as_ref())
                // The embedded broker over TLS is reached through our front (start_mqtt),
                // which probes `lan` agents that ask; an external broker does not.
                .with_broker_front(
                    matches!(cfg.mqtt, MqttMode::Embedded { .. })
                        && (cfg.mqtt_tls.is_some() || !cfg.insecure_mqtt),
                ),
        );
        let (outbound_tx, outbound_rx) = mpsc::channel(4096);
        security.set_nudge(outbound_tx.clone());
        let logs = crate::edge::logs::LogHub::new(outbound_tx.clone());
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let core = Core::new(store, outbound_tx, cfg.heartbeat_timeout)?
            .with_leader_term(term)
            .with_metrics(metrics.clone())
            .with_revoked(security.revoked())
            .with_releases(registry.releases(), registry.releases().rollout_versions())
            .with_pod_drain(cfg.pod_drain)
            .with_service_cidr(cfg.service_cidr)
            .with_pod_eviction_timeout(cfg.pod_eviction_timeout)
            .with_policy(cfg.policy.clone())
            .with_secrets(crate::security::secrets::SecretKeeper::new(
                crate::security::secrets::DataKey::load_or_create(&cfg.data_dir.join("pki"))
                    .map_err(crate::core::CoreError::from)?,
                {
                    // Secrets are sealed to enrolled, unrevoked identities only.
                    let security = security.clone();
                    Arc::new(move |node: &str| {
                        let rec = security.identity(node).filter(|r| !r.revoked)?;
                        crate::security::secrets::decode_public_key(&rec.public_key)
                    })
                },
            ))?;
        security.know_versions(core.protocol_versions());

        let (broker, embedded_mqtt, broker_tls) = start_mqtt(&cfg, &pki, &security).await?;
        let broker_identity = cfg
            .broker_tls
            .as_ref()
            .and_then(|f| std::fs::read(&f.cert).ok())
            .and_then(|pem| crate::edge::bus::identity_problem(&pem));

        let listener =
            crate::edge::serve::bind(cfg.http_listen).map_err(|source| ServerError::Bind {
                addr: cfg.http_listen,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: cfg.http_listen,
            source,
        })?;
        auth::bootstrap(
            &tokens,
            &cfg.data_dir,
            &server_url(http_addr, tls.is_some()),
            api_ca.as_deref(),
        )?;
        let enroll = match cfg.enroll_listen {
            None => None,
            Some(addr) => {
                let l = crate::edge::serve::bind(addr)
                    .map_err(|source| ServerError::Bind { addr, source })?;
                let pki = security.pki();
                let (cert, key) = pki.api_tls(&api_sans(addr, &cfg.tls_sans))?;
                Some((l, tls::server_config(&cert, &key)?))
            }
        };
        let (events_tx, events_rx) = mpsc::channel(1024);
        Ok(Self {
            leadership,
            http_addr,
            broker,
            embedded_mqtt,
            broker_tls,
            broker_identity,
            listener,
            tls,
            tokens,
            registry,
            core,
            events_tx,
            events_rx,
            outbound_rx,
            security,
            enroller,
            enroll,
            conns,
            logs,
            metrics,
        })
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the embedded broker listens, if this server runs one.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.embedded_mqtt
    }

    /// Serves until `shutdown` completes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Server {
            leadership,
            http_addr,
            broker,
            broker_tls,
            broker_identity,
            listener,
            tls,
            tokens,
            registry,
            core,
            events_tx,
            events_rx,
            outbound_rx,
            security,
            enroller,
            enroll,
            conns,
            logs,
            metrics,
            ..
        } = self;
        let stats = Arc::new(BusStats {
            metrics,
            ..BusStats::default()
        });
        if let Some(problem) = broker_identity {
            tracing::warn!("{problem}");
            *stats.suspect.lock().unwrap_or_else(|e| e.into_inner()) = Some(problem);
        }
        let core_task = tokio::spawn(core.run(events_rx));

        let client_id = format!("baton-coordinator-{}", std::process::id());
        let bus = match Bus::start(
            broker.clone(),
            broker_tls,
            &client_id,
            crate::edge::bus::Inbound {
                events: events_tx.clone(),
                logs: logs.clone(),
            },
            outbound_rx,
            stats.clone(),
            security.clone(),
        ) {
            Ok(bus) => bus,
            Err(e) => {
                // Not reached: `bind` built the same options.
                core_task.abort();
                return Err(e.into());
            }
        };

        let ticker_tx = events_tx.clone();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                if ticker_tx.send(Event::Tick).await.is_err() {
                    return;
                }
            }
        });

        // Per-node seqs are written lazily (see `crate::security::gate`).
        let flusher = {
            let security = security.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    if let Err(e) = security.flush() {
                        tracing::warn!(error = %e, "cannot persist node sequence numbers");
                    }
                }
            })
        };

        tracing::info!(
            api = %server_url(http_addr, tls.is_some()),
            broker = %broker.iter().map(BrokerAddr::url).collect::<Vec<_>>().join(","),
            "coordinator serving"
        );
        // Both listeners share one connection bound: together they stay within the fds.
        let enroll_server = enroll.map(|(l, cfg)| {
            let app = http::enroll_router(
                events_tx.clone(),
                security.clone(),
                enroller.clone(),
                registry.releases(),
            );
            let addr = l.local_addr().ok();
            tracing::info!(?addr, "serving enrollment over TLS");
            tokio::spawn(crate::edge::serve::serve(
                l,
                Some(cfg),
                app,
                conns.clone(),
                std::future::pending(),
            ))
        });
        let app = http::app(
            events_tx,
            stats,
            tokens,
            registry,
            security.clone(),
            enroller,
            logs,
        );
        // Losing the leadership stops the coordinator as a shutdown would, then fails it.
        // The bridge stops first, at once: a deposed leader publishes nothing more.
        let (lost_tx, mut lost_rx) = tokio::sync::oneshot::channel::<String>();
        let halt = bus.halt();
        let shutdown = async move {
            match leadership {
                Some(l) => tokio::select! {
                    () = shutdown => {}
                    why = l.lost => {
                        halt.now();
                        let why = why.unwrap_or_else(|_| "the lease keeper stopped".into());
                        tracing::error!(reason = %why, "lost the leadership; stopping");
                        let _ = lost_tx.send(why);
                    }
                },
                None => shutdown.await,
            }
        };
        crate::edge::serve::serve(listener, tls, app, conns, shutdown).await;

        tracing::info!("shutting down");
        ticker.abort();
        let _ = ticker.await;
        bus.shutdown().await;
        flusher.abort();
        let _ = flusher.await;
        if let Some(t) = enroll_server {
            t.abort();
            let _ = t.await;
        }
        if let Err(e) = security.flush() {
            tracing::warn!(error = %e, "cannot persist node sequence numbers");
        }
        // The core stops when the last event sender (held by the router, the bus and the
        // ticker, all gone now) is dropped; waiting for it releases the store.
        let _ = core_task.await;
        match lost_rx.try_recv() {
            Ok(why) => Err(ServerError::LostLeadership(why)),
            Err(_) => Ok(()),
        }
    }
}

/// Starts the embedded broker, or checks the external one's address and TLS material.
/// Returns where the bridge connects, the embedded broker's public address, and the
/// bridge's TLS config.
async fn start_mqtt(
    cfg: &ServerConfig,
    pki: &crate::security::pki::Pki,
    security: &Arc<crate::security::gate::Security>,
) -> Result<
    (
        Vec<BrokerAddr>,
        Option<SocketAddr>,
        Option<Arc<rustls::ClientConfig>>,
    ),
    ServerError,
> {
    match &cfg.mqtt {
        MqttMode::Embedded { listen } => {
            if cfg.broker_tls.is_some() {
                return Err(ServerError::MqttConfig(
                    "--broker-ca/--broker-cert/--broker-key are for an external --broker; the embedded broker takes --mqtt-tls-cert/--mqtt-tls-key/--mqtt-client-ca",
                ));
            }
            let listen = *listen;
            let files = match (&cfg.mqtt_tls, cfg.insecure_mqtt) {
                (Some(files), _) => Some(files.clone()),
                (None, true) => None,
                // --mqtt-tls-auto: a certificate from our CA; node certificates from it
                // are the clients' (enrollment issues them).
                (None, false) => {
                    let (cert, key) = pki.broker_tls(&api_sans(listen, &cfg.tls_sans))?;
                    Some(BrokerTlsFiles {
                        cert,
                        key,
                        client_ca: cfg.data_dir.join("pki").join(crate::security::pki::CA_FILE),
                    })
                }
            };
            broker::check_listen(listen, files.is_some(), cfg.insecure_mqtt)?;
            // A revoked node's certificate still chains to the CA: refused by name.
            let refused: crate::edge::mqtt_front::RefuseCn = {
                let security = security.clone();
                Arc::new(move |cn: &str| security.identity(cn).is_some_and(|r| r.revoked))
            };
            let l = tokio::task::spawn_blocking(move || {
                broker::start_guarded(listen, files.as_ref(), Some(refused))
            })
            .await
            .map_err(|e| BrokerError::Stopped {
                addr: listen,
                reason: e.to_string(),
            })??;
            // With TLS the bridge uses the broker's plain loopback listener, with the
            // login only this process knows.
            let mut local = BrokerAddr::from(l.local);
            local.login = l.login;
            Ok((vec![local], Some(l.addr), None))
        }
        MqttMode::External { url } => {
            if cfg.mqtt_tls.is_some() {
                return Err(ServerError::MqttConfig(
                    "--mqtt-tls-cert/--mqtt-tls-key/--mqtt-client-ca configure the embedded broker, not an external --broker",
                ));
            }
            let brokers = BrokerAddr::parse_list(url)?;
            let addr = &brokers[0];
            let tls = match (&cfg.broker_tls, addr.tls) {
                (Some(files), _) => Some(tls::mqtt_client_config(files)?),
                // The broker's certificate is from our CA (`baton broker
                // mosquitto-config`), and so is our client certificate, issued now.
                (None, true) => {
                    let (cert, key) = pki.issue_client(crate::security::pki::COORDINATOR_CN)?;
                    Some(tls::mqtt_client_config_pem(
                        pki.ca_pem().as_bytes(),
                        cert.as_bytes(),
                        key.as_bytes(),
                    )?)
                }
                (None, false) => None,
            };
            // Refuses mqtts:// without material and material without mqtts://, now
            // rather than in the background.
            mqtt_bus::mqtt_options(addr, "check", tls.clone())?;
            if !addr.tls {
                tracing::warn!(broker = %url, "the external MQTT broker is reached in clear text (mqtt://)");
            }
            Ok((brokers, None, tls))
        }
    }
}

/// Development mode and unsigned nodes, said once at start (see docs/security.md, "Local
/// users and the broker").
fn warn_insecure(cfg: &ServerConfig) {
    if cfg.insecure_mqtt && matches!(cfg.mqtt, MqttMode::Embedded { .. }) && cfg.mqtt_tls.is_none()
    {
        tracing::warn!("--insecure-mqtt: DEVELOPMENT ONLY. The embedded MQTT broker speaks plain MQTT to anyone who can reach it, including every local user: they can read every desired state");
    }
    if !cfg.security.require_signatures {
        tracing::warn!("--insecure-mqtt: DEVELOPMENT ONLY. Nodes without an enrolled identity are accepted unsigned: whoever can publish on the broker can speak for them");
    }
}

/// The names the automatic API certificate is valid for: the listen address (unless a
/// wildcard), loopback, `localhost`, and `extra`.
fn api_sans(listen: SocketAddr, extra: &[String]) -> Vec<String> {
    let mut sans = vec![
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
        "localhost".to_owned(),
    ];
    if !listen.ip().is_unspecified() {
        sans.push(listen.ip().to_string());
    }
    for e in extra {
        if !sans.contains(e) {
            sans.push(e.clone());
        }
    }
    sans.dedup();
    sans
}

/// The URL the CLI should use for an API bound at `addr`: a wildcard address is
/// reached on loopback.
pub fn server_url(addr: SocketAddr, tls: bool) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("{}://{addr}", if tls { "https" } else { "http" })
}

/// Binds and serves until `shutdown` completes.
pub async fn run(
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    Server::bind(cfg).await?.run(shutdown).await
}
