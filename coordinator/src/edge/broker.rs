//! The embedded MQTT broker (rumqttd), for installations without a broker of their own.
//!
//! rumqttd's `Broker::start()` blocks for ever and has no shutdown, and it makes its own
//! threads and runtimes, so it runs on a dedicated OS thread that lives as long as the
//! process. A process that starts the broker twice (tests) keeps the first one listening.
//!
//! The configuration is built in code rather than read from a file, so that nothing
//! listens where we did not ask:
//! - one MQTT 3.1.1 (v4) TCP listener on the given address, and no console or prometheus
//!   listener (rumqttd's sample config binds those to 0.0.0.0);
//! - `max_payload_size` fits the largest envelope ([`baton_proto::MAX_MESSAGE_BYTES`]) plus
//!   slack for the MQTT header;
//! - router memory is bounded: rumqttd keeps each topic's messages in an in-memory
//!   commit log. With its default segments (100 MB x 10) it grew to 400 MB after 1.3M
//!   messages; with small segments it stays in the tens of MB. The price is that a
//!   subscriber that falls far behind can lose QoS1 messages. Baton's protocol is
//!   level-triggered (a heartbeat carries the applied generation and a status digest, and
//!   the coordinator republishes or asks again on a mismatch), so a lost message is
//!   healed at the next heartbeat.
//!
//! **TLS** ([`start_with`] with [`BrokerTlsFiles`]): Baton's own TLS front
//! ([`crate::edge::mqtt_front`]) listens on the given address, requires a client certificate
//! that chains to the client CA, checks that the MQTT client id belongs to the
//! certificate's CN, and splices each connection to rumqttd's plain listener on
//! `127.0.0.1` (an ephemeral port), which the coordinator's own bridge uses directly.
//! That listener requires a username and password made at each start and known only to
//! this process (the front writes them into every CONNECT it forwards, the bridge sends
//! them itself), so a local user who finds the port cannot connect around the front:
//! rumqttd 0.20 has no Unix socket listener, and a loopback port is open to every user.
//! rumqttd's own TLS listener is not used: it handshakes inside its accept loop with no
//! deadline (one silent client stalls every new connection), refuses an IP address as
//! SNI, and ignores the CN (see the front's docs). What rumqttd still does not do, read
//! from its 0.20 source: there is **no per-topic ACL**: any client with a valid
//! certificate may subscribe to and publish on every node's topics. Envelope signatures
//! hold that line (see docs/security.md, "Transport").

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::edge::mqtt::{MqttLogin, MAX_CONNECTIONS};
use crate::edge::mqtt_front::{self, Front, MqttFrontError, RefuseCn};
use crate::edge::tls::{broker_server_config, TlsError};

pub use crate::edge::tls::BrokerTlsFiles;

/// Bytes per router log segment.
pub const MAX_SEGMENT_SIZE: usize = 1024 * 1024;
/// Segments kept per topic.
pub const MAX_SEGMENT_COUNT: usize = 4;
/// Largest MQTT payload accepted: one envelope plus slack.
pub const MAX_PAYLOAD_SIZE: usize = baton_proto::MAX_MESSAGE_BYTES + 4 * 1024;
/// Unacknowledged QoS1 messages per connection.
pub const MAX_INFLIGHT_COUNT: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the MQTT broker thread: {0}")]
    Thread(std::io::Error),
    #[error("the embedded MQTT broker on {addr} stopped while starting: {reason}")]
    Stopped { addr: SocketAddr, reason: String },
    #[error("the embedded MQTT broker on {addr} did not accept connections within {secs}s")]
    Timeout { addr: SocketAddr, secs: u64 },
    #[error("refusing to run the MQTT broker on the non-loopback address {0} without TLS: give --mqtt-tls-cert, --mqtt-tls-key and --mqtt-client-ca, or --insecure-mqtt to accept anyone who can reach it")]
    NotLoopback(SocketAddr),
    #[error("the embedded broker's TLS files: {0}")]
    Tls(#[from] TlsError),
    #[error("the embedded broker's TLS front: {0}")]
    Front(#[from] MqttFrontError),
}

/// The embedded broker may listen beyond loopback only with TLS and client certificates,
/// unless `insecure` (`--insecure-mqtt`), like the HTTP API's rule in `http::check_listen`.
pub fn check_listen(listen: SocketAddr, tls: bool, insecure: bool) -> Result<(), BrokerError> {
    if listen.ip().is_loopback() || tls {
        return Ok(());
    }
    if !insecure {
        return Err(BrokerError::NotLoopback(listen));
    }
    tracing::warn!(%listen, "running the MQTT broker on a non-loopback address WITHOUT TLS: anyone who can reach it can connect");
    Ok(())
}

/// Where a started broker accepts connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    /// The address asked for (TLS if configured).
    pub addr: SocketAddr,
    /// Where the coordinator's own bridge connects: `addr` itself without TLS, or a plain
    /// listener on loopback with TLS.
    pub local: SocketAddr,
    /// With TLS: the login `local` requires.
    pub login: Option<MqttLogin>,
}

/// The username of rumqttd's loopback listener (the password is random per start).
pub const LOCAL_USERNAME: &str = "baton-local";

/// The rumqttd configuration Baton uses; see the module docs for why each limit is set.
pub fn config(listen: SocketAddr) -> Config {
    let mut c = base_config();
    c.v4 = Some(HashMap::from([(
        "1".to_owned(),
        server("baton-v4", listen),
    )]));
    c
}

/// The rumqttd side of a TLS broker: only the plain listener on `local` (loopback), which
/// the TLS front and the coordinator's bridge connect to with `login`.
pub fn local_config(local: SocketAddr, login: &MqttLogin) -> Config {
    let mut c = base_config();
    let mut s = server("baton-v4-local", local);
    s.connections.auth = Some(HashMap::from([(
        login.username.clone(),
        login.password.clone(),
    )]));
    c.v4 = Some(HashMap::from([("1".to_owned(), s)]));
    c
}

fn server(name: &str, listen: SocketAddr) -> ServerSettings {
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: MAX_PAYLOAD_SIZE,
        max_inflight_count: MAX_INFLIGHT_COUNT,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    ServerSettings {
        name: name.into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    }
}

fn base_config() -> Config {
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: MAX_CONNECTIONS,
            max_outgoing_packet_count: 200,
            max_segment_size: MAX_SEGMENT_SIZE,
            max_segment_count: MAX_SEGMENT_COUNT,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: None,
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

/// Starts the broker on `listen` and returns the address it accepts connections on,
/// once it does.
///
/// Port 0 picks a free port. rumqttd cannot report the port it bound, so we find a free
/// one first by binding it ourselves; the short window in which another process could
/// take it ends in a clear [`BrokerError`], not a silent failure. Binding first also
/// turns "address in use" into an error here instead of a log line on rumqttd's thread.
pub fn start(listen: SocketAddr) -> Result<SocketAddr, BrokerError> {
    start_with(listen, None).map(|l| l.addr)
}

/// [`start`], with Baton's TLS front requiring client certificates on `listen` if `tls`
/// is given (see the module docs), whose files are checked first.
pub fn start_with(
    listen: SocketAddr,
    tls: Option<&BrokerTlsFiles>,
) -> Result<Listening, BrokerError> {
    start_guarded(listen, tls, None)
}

/// [`start_with`], with the TLS front also refusing the certificate CNs `refused` names
/// (revoked nodes, see [`crate::edge::mqtt_front::Front::refused`]).
pub fn start_guarded(
    listen: SocketAddr,
    tls: Option<&BrokerTlsFiles>,
    refused: Option<RefuseCn>,
) -> Result<Listening, BrokerError> {
    let Some(files) = tls else {
        let addr = free_addr(listen)?;
        start_rumqttd(config(addr), addr)?;
        tracing::info!(%addr, tls = false, "embedded MQTT broker listening");
        return Ok(Listening {
            addr,
            local: addr,
            login: None,
        });
    };
    let server_cfg = broker_server_config(files)?;
    // The front's listener is bound now and kept: no window for another process.
    let public = TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    let addr = public.local_addr().map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    let local = free_addr(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let login = MqttLogin {
        username: LOCAL_USERNAME.to_owned(),
        password: hex::encode(rand::random::<[u8; 32]>()),
    };
    start_rumqttd(local_config(local, &login), local)?;
    let mut front = Front::new(server_cfg, local);
    front.login = Some(login.clone());
    front.refused = refused;
    mqtt_front::spawn_thread(public, front)?;
    tracing::info!(%addr, %local, tls = true, "embedded MQTT broker listening behind the TLS front");
    Ok(Listening {
        addr,
        local,
        login: Some(login),
    })
}

/// Starts rumqttd on its thread and waits until `probe` accepts connections.
fn start_rumqttd(cfg: Config, probe: SocketAddr) -> Result<(), BrokerError> {
    let addr = probe;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<String>();
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(cfg);
            // `start` only returns when its listener threads end, e.g. when the bind
            // failed (rumqttd logs that and returns Ok).
            let reason = match broker.start() {
                Ok(()) => "its listener ended (see the log for the cause)".to_owned(),
                Err(e) => e.to_string(),
            };
            let _ = done_tx.send(reason);
        })
        .map_err(BrokerError::Thread)?;

    let timeout = Duration::from_secs(10);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(reason) = done_rx.try_recv() {
            return Err(BrokerError::Stopped { addr, reason });
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BrokerError::Timeout {
                addr,
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Binds `listen` and lets go of it, for its resolved port (see [`start`]).
fn free_addr(listen: SocketAddr) -> Result<SocketAddr, BrokerError> {
    let probe = TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    probe.local_addr().map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_no_extra_listeners_and_bounded_memory() {
        let c = config("127.0.0.1:1883".parse().unwrap());
        assert!(c.console.is_none() && c.prometheus.is_none() && c.v5.is_none() && c.ws.is_none());
        assert_eq!(c.v4.as_ref().map(|v| v.len()), Some(1));
        assert!(c.router.max_segment_size * c.router.max_segment_count <= 8 * 1024 * 1024);
        const { assert!(MAX_PAYLOAD_SIZE > baton_proto::MAX_MESSAGE_BYTES) };
        assert!(c.router.max_segment_size >= MAX_PAYLOAD_SIZE);
    }

    #[test]
    fn local_config_is_one_plain_listener_on_loopback() {
        let login = MqttLogin {
            username: LOCAL_USERNAME.into(),
            password: "p".into(),
        };
        let c = local_config("127.0.0.1:4000".parse().unwrap(), &login);
        let v4 = c.v4.unwrap();
        assert_eq!(v4.len(), 1);
        for s in v4.values() {
            assert!(s.tls.is_none() && s.listen.ip().is_loopback());
            let auth = s.connections.auth.as_ref().expect("a login is required");
            assert_eq!(auth.get(LOCAL_USERNAME).map(String::as_str), Some("p"));
        }
    }

    #[test]
    fn plain_mqtt_beyond_loopback_only_when_forced() {
        let lo: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:1883".parse().unwrap();
        let lan: SocketAddr = "10.1.2.3:1883".parse().unwrap();
        assert!(check_listen(lo, false, false).is_ok());
        for a in [any, lan] {
            let err = check_listen(a, false, false).unwrap_err();
            assert!(err.to_string().contains("--insecure-mqtt"), "{err}");
            assert!(check_listen(a, true, false).is_ok());
            assert!(check_listen(a, false, true).is_ok());
        }
    }

    #[test]
    fn bad_tls_files_fail_before_the_broker_starts() {
        let files = BrokerTlsFiles {
            cert: "/nonexistent/c.pem".into(),
            key: "/nonexistent/k.pem".into(),
            client_ca: "/nonexistent/ca.pem".into(),
        };
        let err = start_with("127.0.0.1:0".parse().unwrap(), Some(&files)).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn starts_on_a_free_port_and_refuses_a_taken_one() {
        let addr = start("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(addr.port(), 0);
        let err = start(addr).unwrap_err();
        assert!(matches!(err, BrokerError::Bind { .. }), "{err}");
        assert!(err.to_string().contains("cannot listen for MQTT"), "{err}");
    }
}
