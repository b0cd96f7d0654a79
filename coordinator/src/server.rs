//! `baton server`: wires the store, the core, the MQTT bridge (and optionally the
//! embedded broker) and the HTTP API together.
//!
//! [`Server::bind`] opens everything that can fail (store, broker, HTTP listener) and
//! reports the bound addresses, so tests can start it on port 0; [`Server::run`] serves
//! until the shutdown future completes. On shutdown the HTTP server stops accepting, the
//! bridge disconnects, and the core ends once every event sender is gone, which releases
//! the store (redb holds a file lock), so a test can start a new server on the same data
//! directory right away. The embedded broker cannot be stopped (see [`crate::broker`]).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::auth::{self, AuthError, Tokens};
use crate::broker::{self, BrokerError};
use crate::bus::{self as mqtt_bus, BrokerAddr, Bus, BusError, BusStats};
use crate::core::{Core, CoreError, Event};
use crate::http::{self, HttpError};
use crate::registry::{Registry, RegistryError};
use crate::store::{RedbStore, Store, StoreError};
use crate::tls::{self, BrokerTlsFiles, MqttClientFiles, TlsError, TlsListener};

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
    /// The embedded broker's listener speaks TLS and requires client certificates signed
    /// by `client_ca` (see [`crate::broker`]). Embedded mode only.
    pub mqtt_tls: Option<BrokerTlsFiles>,
    /// Run the embedded broker on a non-loopback address without TLS.
    pub insecure_mqtt: bool,
    /// The coordinator's CA and client identity for an `mqtts://` external broker.
    pub broker_tls: Option<MqttClientFiles>,
    /// What pods may ask of their nodes beyond the defaults (`crate::policy`).
    pub policy: crate::policy::Policy,
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
            mqtt_tls: None,
            insecure_mqtt: false,
            broker_tls: None,
            policy: crate::policy::Policy::default(),
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
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// A bound, not yet serving, coordinator.
pub struct Server {
    http_addr: SocketAddr,
    broker: BrokerAddr,
    embedded_mqtt: Option<SocketAddr>,
    /// TLS for the bridge's own connection (an `mqtts://` external broker).
    broker_tls: Option<Arc<rustls::ClientConfig>>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    tokens: Arc<Tokens>,
    /// Imported images, served on `/v2/` (see [`crate::registry`]).
    registry: Arc<Registry>,
    core: Core,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    outbound_rx: mpsc::Receiver<crate::bus::Outbound>,
}

impl Server {
    /// Opens the store, loads the state, starts the embedded broker if asked, and binds
    /// the HTTP listener.
    pub async fn bind(cfg: ServerConfig) -> Result<Self, ServerError> {
        http::check_listen(
            cfg.http_listen,
            cfg.tls.is_some(),
            cfg.insecure_allow_remote,
        )?;
        let tls = match &cfg.tls {
            Some(f) => Some(tls::server_config(&f.cert, &f.key)?),
            None => None,
        };
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| ServerError::DataDir {
            path: cfg.data_dir.clone(),
            source,
        })?;
        let store: Arc<dyn Store> =
            Arc::new(
                RedbStore::open(&cfg.data_dir).map_err(|source| ServerError::Store {
                    path: cfg.data_dir.clone(),
                    source,
                })?,
            );
        let tokens = Arc::new(Tokens::load(store.clone())?);
        let registry = Arc::new(Registry::open(&cfg.data_dir, store.clone())?);
        let (outbound_tx, outbound_rx) = mpsc::channel(4096);
        let core = Core::new(store, outbound_tx, cfg.heartbeat_timeout)?
            .with_pod_drain(cfg.pod_drain)
            .with_pod_eviction_timeout(cfg.pod_eviction_timeout)
            .with_policy(cfg.policy.clone());

        let (broker, embedded_mqtt, broker_tls) = start_mqtt(&cfg).await?;

        let listener = tokio::net::TcpListener::bind(cfg.http_listen)
            .await
            .map_err(|source| ServerError::Bind {
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
            cfg.tls.as_ref().map(|f| f.cert.as_path()),
        )?;
        let (events_tx, events_rx) = mpsc::channel(1024);
        Ok(Self {
            http_addr,
            broker,
            embedded_mqtt,
            broker_tls,
            listener,
            tls,
            tokens,
            registry,
            core,
            events_tx,
            events_rx,
            outbound_rx,
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
            http_addr,
            broker,
            broker_tls,
            listener,
            tls,
            tokens,
            registry,
            core,
            events_tx,
            events_rx,
            outbound_rx,
            ..
        } = self;
        let stats = Arc::new(BusStats::default());
        let core_task = tokio::spawn(core.run(events_rx));

        let client_id = format!("baton-coordinator-{}", std::process::id());
        let bus = match Bus::start(
            broker.clone(),
            broker_tls,
            &client_id,
            events_tx.clone(),
            outbound_rx,
            stats.clone(),
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

        tracing::info!(%http_addr, broker = %format!("{}:{}", broker.host, broker.port), "coordinator serving");
        let app = http::router_with_images(events_tx, stats, tokens, Some(registry));
        let served = match tls {
            None => axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(ServerError::Serve),
            Some(cfg) => match TlsListener::new(listener, cfg) {
                Ok(listener) => axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
                    .map_err(ServerError::Serve),
                Err(e) => Err(ServerError::Serve(e)),
            },
        };

        tracing::info!("shutting down");
        ticker.abort();
        let _ = ticker.await;
        bus.shutdown().await;
        // The core stops when the last event sender (held by the router, the bus and the
        // ticker, all gone now) is dropped; waiting for it releases the store.
        let _ = core_task.await;
        served
    }
}

/// Starts the embedded broker, or checks the external one's address and TLS material.
/// Returns where the bridge connects, the embedded broker's public address, and the
/// bridge's TLS config.
async fn start_mqtt(
    cfg: &ServerConfig,
) -> Result<
    (
        BrokerAddr,
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
            broker::check_listen(listen, cfg.mqtt_tls.is_some(), cfg.insecure_mqtt)?;
            let files = cfg.mqtt_tls.clone();
            let l = tokio::task::spawn_blocking(move || broker::start_with(listen, files.as_ref()))
                .await
                .map_err(|e| BrokerError::Stopped {
                    addr: listen,
                    reason: e.to_string(),
                })??;
            // With TLS the bridge uses the broker's plain loopback listener.
            Ok((BrokerAddr::from(l.local), Some(l.addr), None))
        }
        MqttMode::External { url } => {
            if cfg.mqtt_tls.is_some() {
                return Err(ServerError::MqttConfig(
                    "--mqtt-tls-cert/--mqtt-tls-key/--mqtt-client-ca configure the embedded broker, not an external --broker",
                ));
            }
            let addr = BrokerAddr::parse(url)?;
            let tls = match &cfg.broker_tls {
                Some(files) => Some(tls::mqtt_client_config(files)?),
                None => None,
            };
            // Refuses mqtts:// without material and material without mqtts://, now
            // rather than in the background.
            mqtt_bus::mqtt_options(&addr, "check", tls.clone())?;
            if !addr.tls {
                tracing::warn!(host = %addr.host, port = addr.port, "the external MQTT broker is reached in clear text (mqtt://)");
            }
            Ok((addr, None, tls))
        }
    }
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
