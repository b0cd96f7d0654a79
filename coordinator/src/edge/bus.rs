//! The MQTT bridge between the broker and the core.
//!
//! The core never sees MQTT: it reads [`crate::core::Event`]s from one channel and writes
//! [`Outbound`] messages to another. This module is one producer of events and the one
//! consumer of outbound messages, so a test can replace it with an in-memory bus (two
//! channels) and the server can point it at the embedded broker or an external one alike.
//!
//! Everything that arrives passes the one inbound gate, [`Security::admit`], before the
//! core sees it: the layout checks of [`crate::security::envelope`] (topic, kind, sender),
//! then the signature and replay checks, in signed and development mode alike. The gate
//! counts and logs what it refuses, the bridge drops it; nothing an agent sends can stop
//! the bridge. Everything that leaves is sealed by the same gate ([`Security::seal`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_link::{link_fault, LinkFault, Repeats, Side};
use baton_proto::topics::{self, Kind};
use rumqttc::{
    AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::contract::health::MqttStatus;
use crate::core::{Event, Outbound};
use crate::edge::logs::LogHub;
use crate::edge::mqtt::MqttLogin;
use crate::metrics::{Direction, Metrics};
use crate::security::gate::Security;
use crate::security::pki::{common_name, COORDINATOR_CN};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid broker url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("the broker {host}:{port} is mqtts:// but no --broker-ca, --broker-cert and --broker-key were given")]
    TlsMissing { host: String, port: u16 },
    #[error("--broker-ca, --broker-cert and --broker-key were given but the broker {host}:{port} is not mqtts://")]
    TlsUnused { host: String, port: u16 },
}

/// Counters for `/healthz` and for tests.
#[derive(Debug, Default)]
pub struct BusStats {
    /// Connected and subscribed to the nodes' topics.
    pub connected: AtomicBool,
    pub received: AtomicU64,
    pub dropped: AtomicU64,
    pub published: AtomicU64,
    /// Why the link is not usable now (a failed connect, a denied subscription), with
    /// advice; `None` while it works or before the first attempt ended.
    pub error: Mutex<Option<String>>,
    /// A configuration that makes the broker drop everything without telling us (see
    /// [`identity_problem`]); it stands until a node's message arrives, which disproves it.
    pub suspect: Mutex<Option<String>>,
    /// The coordinator's Prometheus metrics; the bus counts messages and bytes there.
    pub metrics: Arc<Metrics>,
}

impl BusStats {
    /// The link's state and counters as `/healthz` shows them.
    pub fn snapshot(&self) -> MqttStatus {
        MqttStatus {
            connected: self.connected.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            error: self.error(),
            suspect: self
                .suspect
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Why the link cannot carry the nodes' messages now, if it is known: `/healthz`
    /// answers 503 with it.
    pub fn problem(&self) -> Option<String> {
        let s = self.snapshot();
        match (s.error, s.suspect) {
            (Some(e), _) if !s.connected => Some(e),
            (_, Some(w)) if s.received == 0 => Some(w),
            _ => None,
        }
    }

    /// See [`BusStats::error`].
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_error(&self, e: Option<String>) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }
}

/// Where the bridge hands what it receives.
pub struct Inbound {
    /// Everything that is state, for the core.
    pub events: mpsc::Sender<Event>,
    /// Log chunks, for their sessions (`baton logs`); they never reach the core.
    pub logs: Arc<LogHub>,
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    /// `mqtts://`: connect over TLS.
    pub tls: bool,
    /// MQTT username and password (the embedded broker's loopback listener, see
    /// [`crate::edge::broker`]).
    pub login: Option<MqttLogin>,
}

impl BrokerAddr {
    /// Parses `mqtt://host[:port]` (port 1883 by default), `mqtts://host[:port]` (8883) or
    /// a bare `host:port`.
    pub fn parse(url: &str) -> Result<Self, BusError> {
        let u = baton_proto::broker::BrokerUrl::parse(url).map_err(|e| BusError::Url {
            url: url.to_owned(),
            reason: match e {
                baton_proto::ProtoError::BrokerUrl { reason, .. } => reason,
                other => other.to_string(),
            },
        })?;
        Ok(Self {
            host: u.host,
            port: u.port,
            tls: u.tls,
            login: None,
        })
    }

    /// A comma-separated list of broker addresses, the members of one broker cluster
    /// (see [`baton_proto::broker::parse_broker_list`]): the first is tried first, and
    /// every failed or lost connection moves to the next.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, BusError> {
        let urls = baton_proto::broker::parse_broker_list(list).map_err(|e| BusError::Url {
            url: list.to_owned(),
            reason: match e {
                baton_proto::ProtoError::BrokerUrl { reason, .. } => reason,
                other => other.to_string(),
            },
        })?;
        Ok(urls
            .into_iter()
            .map(|u| Self {
                host: u.host,
                port: u.port,
                tls: u.tls,
                login: None,
            })
            .collect())
    }

    /// `mqtt://host:port` or `mqtts://host:port`, for logs.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        match self.host.contains(':') {
            true => format!("{scheme}://[{}]:{}", self.host, self.port),
            false => format!("{scheme}://{}:{}", self.host, self.port),
        }
    }
}

/// A plain-MQTT address (the embedded broker's local listener).
impl From<SocketAddr> for BrokerAddr {
    fn from(sa: SocketAddr) -> Self {
        Self {
            host: sa.ip().to_string(),
            port: sa.port(),
            tls: false,
            login: None,
        }
    }
}

/// The coordinator's MQTT connection settings: session, limits, and the transport.
/// `tls` is the client config for an `mqtts://` broker; it is required there and refused
/// for `mqtt://`, so certificates are never silently ignored and a TLS address never
/// falls back to clear text.
pub fn mqtt_options(
    broker: &BrokerAddr,
    client_id: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<MqttOptions, BusError> {
    let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    opts.set_keep_alive(Duration::from_secs(15));
    opts.set_clean_session(true);
    // Accept somewhat oversized packets so that they reach the decoder, which counts
    // and drops them, instead of tearing down the connection.
    opts.set_max_packet_size(
        2 * baton_proto::MAX_MESSAGE_BYTES + 4096,
        baton_proto::MAX_MESSAGE_BYTES + 4096,
    );
    opts.set_inflight(100);
    if let Some(l) = &broker.login {
        opts.set_credentials(l.username.clone(), l.password.clone());
    }
    let (host, port) = (broker.host.clone(), broker.port);
    match (broker.tls, tls) {
        (true, Some(cfg)) => {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(cfg)));
        }
        (true, None) => return Err(BusError::TlsMissing { host, port }),
        (false, Some(_)) => return Err(BusError::TlsUnused { host, port }),
        (false, None) => {}
    }
    Ok(opts)
}

/// Stops the bridge's tasks where they stand: no DISCONNECT, and what is queued is never
/// sent. A leader that learns it lost its lease halts its bridge first, so that from then
/// on it publishes nothing (`crate::server`); the agents' term check covers the moments
/// before it learned it.
#[derive(Clone)]
pub struct Halt(Vec<tokio::task::AbortHandle>);

impl Halt {
    pub fn now(&self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The running bridge: two tasks, aborted on drop of [`Bus::shutdown`].
pub struct Bus {
    tasks: Vec<JoinHandle<()>>,
    client: AsyncClient,
}

impl Bus {
    /// Starts the bridge with `tls` for an `mqtts://` broker (see [`mqtt_options`]). It
    /// connects (and reconnects for ever, with capped backoff) in the background, so this
    /// does not wait for the broker. With several `brokers` (one cluster) it connects to
    /// the first, and moves to the next after every failed or lost connection. Every
    /// message in passes `gate`, every message out is sealed by it. What passes goes to
    /// `to`: state to the core, log chunks to their sessions.
    pub fn start(
        brokers: Vec<BrokerAddr>,
        tls: Option<Arc<rustls::ClientConfig>>,
        client_id: &str,
        to: Inbound,
        outbound: mpsc::Receiver<Outbound>,
        stats: Arc<BusStats>,
        gate: Arc<Security>,
    ) -> Result<Self, BusError> {
        let brokers = brokers
            .into_iter()
            .map(|b| Ok((mqtt_options(&b, client_id, tls.clone())?, b)))
            .collect::<Result<Vec<_>, BusError>>()?;
        Ok(Self::start_with_options(
            brokers, to.events, outbound, stats, gate, to.logs,
        ))
    }

    fn start_with_options(
        brokers: Vec<(MqttOptions, BrokerAddr)>,
        events: mpsc::Sender<Event>,
        outbound: mpsc::Receiver<Outbound>,
        stats: Arc<BusStats>,
        gate: Arc<Security>,
        logs: Arc<LogHub>,
    ) -> Self {
        let (client, mut eventloop) = AsyncClient::new(brokers[0].0.clone(), 256);
        eventloop
            .network_options
            .set_connection_timeout(baton_proto::broker::CONNECT_TIMEOUT_SECS);
        let recv = tokio::spawn(receive_loop(
            brokers,
            client.clone(),
            eventloop,
            events,
            stats.clone(),
            gate.clone(),
            logs,
        ));
        let send = tokio::spawn(send_loop(client.clone(), outbound, stats, gate));
        Self {
            tasks: vec![recv, send],
            client,
        }
    }

    /// What stops the bridge at once (see [`Halt`]).
    pub fn halt(&self) -> Halt {
        Halt(self.tasks.iter().map(JoinHandle::abort_handle).collect())
    }

    /// Disconnects politely (best effort) and stops both tasks.
    pub async fn shutdown(self) {
        let _ = tokio::time::timeout(Duration::from_millis(500), self.client.disconnect()).await;
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn receive_loop(
    brokers: Vec<(MqttOptions, BrokerAddr)>,
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    events: mpsc::Sender<Event>,
    stats: Arc<BusStats>,
    gate: Arc<Security>,
    logs: Arc<LogHub>,
) {
    const MIN_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = MIN_BACKOFF;
    let mut rotation = baton_proto::broker::Rotation::new(brokers.len());
    // A list's brokers share their scheme (`parse_broker_list`).
    let tls = brokers[0].1.tls;
    let mut addr = brokers[0].1.url();
    let mut repeats = Repeats::new(WARN_EVERY);
    let mut up = false;
    let mut resubscribe = MIN_BACKOFF;
    // What the core was last told of the link (`Event::BusLink`): down until subscribed,
    // so that nodes are not timed out while nothing they send can reach us.
    let mut told_up = true;
    if !tell_link(&events, &mut told_up, false).await {
        return;
    }
    loop {
        match eventloop.poll().await {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                up = true;
                match repeats.succeeded(tokio::time::Instant::now().into_std()) {
                    Some(r) => tracing::info!(
                        broker = %addr, attempts = r.attempts,
                        "connected to the MQTT broker at {addr} after {} failed attempts in {}s",
                        r.attempts, r.after.as_secs()
                    ),
                    None => tracing::info!(broker = %addr, "connected to the MQTT broker"),
                }
                backoff = MIN_BACKOFF;
                resubscribe = MIN_BACKOFF;
                // Clean session: the subscription is gone after every reconnect. `try_`
                // because awaiting here, in the loop that drains the request queue, could
                // deadlock if the queue were full.
                if let Err(e) = client.try_subscribe(topics::COORDINATOR_FILTER, QoS::AtLeastOnce) {
                    tracing::error!(error = %e, "cannot subscribe to node topics");
                }
            }
            Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => {
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                    // The broker's ACL refused us (Mosquitto answers 0x80 and would drop
                    // our publishes silently): no node can ever appear, so say why.
                    let why = LinkFault::SubscribeDenied(topics::COORDINATOR_FILTER.into())
                        .explain(Side::Coordinator, tls);
                    // Said once a connection, and asked again: a clustered broker (NATS)
                    // also refuses while it cannot set the subscription up.
                    if resubscribe == MIN_BACKOFF {
                        tracing::warn!(broker = %addr, "the MQTT broker at {addr}: {why}");
                    }
                    stats.set_error(Some(why));
                    let client = client.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(resubscribe).await;
                        let _ = client.try_subscribe(topics::COORDINATOR_FILTER, QoS::AtLeastOnce);
                    });
                    resubscribe = (resubscribe * 2).min(MAX_BACKOFF);
                    continue;
                }
                // Only now can nodes' messages reach us: "connected" means subscribed.
                stats.set_error(None);
                stats.connected.store(true, Ordering::Relaxed);
                if !tell_link(&events, &mut told_up, true).await {
                    return;
                }
            }
            Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                stats.received.fetch_add(1, Ordering::Relaxed);
                // Layout, signature and replay checks; the gate counts and logs rejections.
                let admitted = gate.admit(&p.topic, &p.payload);
                let body_type = admitted.as_ref().map_or("rejected", |(_, b)| b.name());
                stats
                    .metrics
                    .message(Direction::In, body_type, p.payload.len());
                match admitted {
                    // Logs are not state: they go to their session, not to the core.
                    Some((node, baton_proto::Body::LogChunk(c))) => logs.deliver(&node, c),
                    // So is an exec session's output.
                    Some((
                        node,
                        b @ (baton_proto::Body::ExecOutput(_) | baton_proto::Body::ExecExit(_)),
                    )) => logs.exec().deliver(&node, b),
                    Some((node, body)) => {
                        let proto = gate
                            .peer_version(&node)
                            .unwrap_or(baton_proto::MIN_PROTO_VERSION);
                        if events
                            .send(Event::Inbound { node, body, proto })
                            .await
                            .is_err()
                        {
                            return; // the core has stopped
                        }
                    }
                    None => {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                stats.connected.store(false, Ordering::Relaxed);
                if !tell_link(&events, &mut told_up, false).await {
                    return;
                }
                let fault = link_fault(&e, up);
                let why = fault.explain(Side::Coordinator, tls);
                if std::mem::take(&mut up) {
                    tracing::warn!(error = %e, broker = %addr, "lost the MQTT broker connection; reconnecting");
                    repeats.failed(tokio::time::Instant::now().into_std(), &fault.to_string());
                } else {
                    tracing::debug!(error = %e, ?backoff, "cannot reach the MQTT broker; retrying");
                    if let Some(w) =
                        repeats.failed(tokio::time::Instant::now().into_std(), &fault.to_string())
                    {
                        if w.attempts == 1 {
                            tracing::warn!(broker = %addr, "cannot connect to the MQTT broker at {addr}: {why}");
                        } else {
                            tracing::warn!(
                                broker = %addr, attempts = w.attempts,
                                "cannot connect to the MQTT broker at {addr}: {why}; still failing after {} attempts in {}s ({} not logged)",
                                w.attempts, w.failing_for.as_secs(), w.held
                            );
                        }
                    }
                }
                stats.set_error(Some(why));
                // The next attempt goes to the next broker of the list, if any.
                if brokers.len() > 1 {
                    let (opts, next) = &brokers[rotation.advance()];
                    eventloop.mqtt_options = opts.clone();
                    addr = next.url();
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Tells the core the link is `up` (or down) if that is news (`told`: what it was told
/// last); `false` if the core has stopped.
async fn tell_link(events: &mpsc::Sender<Event>, told: &mut bool, up: bool) -> bool {
    if *told == up {
        return true;
    }
    *told = up;
    events.send(Event::BusLink { up }).await.is_ok()
}

/// What is wrong with the coordinator's MQTT client certificate `cert_pem`, if its CN is
/// not [`COORDINATOR_CN`] (the CN the shipped Mosquitto ACL, deploy/mosquitto/acl, grants
/// the coordinator's topics to). Checked from the certificate because the wire does not tell:
/// Mosquitto (2.0.11, tests/tests/diagnostics.rs) grants a SUBSCRIBE its ACL denies
/// (SUBACK 0, not 0x80) and acknowledges denied publishes, then drops them all.
pub fn identity_problem(cert_pem: &[u8]) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem).ok()?;
    let cn = common_name(&der).unwrap_or_default();
    (cn != COORDINATOR_CN).then(|| {
        format!(
            "the coordinator's MQTT client certificate (--broker-cert) has CN {cn:?}, but deploy/mosquitto's ACL grants the coordinator's topics only to CN {COORDINATOR_CN}, and Mosquitto drops what its ACL denies without an error: no node will appear (issue the certificate with CN {COORDINATOR_CN})"
        )
    })
}

/// How often a link that keeps failing for the same reason is logged again.
const WARN_EVERY: Duration = Duration::from_secs(60);

async fn send_loop(
    client: AsyncClient,
    mut outbound: mpsc::Receiver<Outbound>,
    stats: Arc<BusStats>,
    gate: Arc<Security>,
) {
    while let Some(msg) = outbound.recv().await {
        let kind = Kind::of(&msg.body);
        let body_type = msg.body.name();
        // Signed, with a persisted sequence number and the send time.
        let (topic, payload) = match gate.seal(&msg.node, msg.body) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(node = %msg.node, ?kind, error = %e, "cannot encode an outbound message; dropped");
                continue;
            }
        };
        let len = payload.len();
        // Publishing only queues the request for the event loop, which sends it once
        // connected; if it cannot, the next heartbeat's mismatch makes the core resend.
        match client
            .publish(topic, QoS::AtLeastOnce, msg.retain, payload)
            .await
        {
            Ok(()) => {
                stats.published.fetch_add(1, Ordering::Relaxed);
                stats.metrics.message(Direction::Out, body_type, len);
            }
            Err(e) => {
                tracing::warn!(node = %msg.node, error = %e, "cannot queue an outbound message")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_exactly_when_the_url_asks_for_it() {
        let tls = BrokerAddr::parse("mqtts://b").unwrap();
        let plain = BrokerAddr::parse("mqtt://b").unwrap();
        let cfg = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        );
        assert!(matches!(
            mqtt_options(&tls, "c", None),
            Err(BusError::TlsMissing { .. })
        ));
        assert!(matches!(
            mqtt_options(&plain, "c", Some(cfg.clone())),
            Err(BusError::TlsUnused { .. })
        ));
        let o = mqtt_options(&tls, "c", Some(cfg)).unwrap();
        assert!(matches!(o.transport(), Transport::Tls(_)));
        let o = mqtt_options(&plain, "c", None).unwrap();
        assert!(matches!(o.transport(), Transport::Tcp));
    }

    #[test]
    fn broker_urls() {
        let ok = |u: &str, h: &str, p: u16| {
            assert_eq!(
                BrokerAddr::parse(u).unwrap(),
                BrokerAddr {
                    host: h.into(),
                    port: p,
                    tls: u.starts_with("mqtts://"),
                    login: None,
                },
                "{u}"
            )
        };
        ok("mqtt://127.0.0.1:1884", "127.0.0.1", 1884);
        ok("mqtt://broker.local", "broker.local", 1883);
        ok("tcp://[::1]:1885", "::1", 1885);
        ok("localhost:9", "localhost", 9);
        ok("mqtts://broker.lan", "broker.lan", 8883);
        for bad in ["http://x:1", "mqtt://", "mqtt://h:notaport", "mqtt://u@h:1"] {
            assert!(BrokerAddr::parse(bad).is_err(), "{bad}");
        }
        // A broker cluster's members, in order; a bad one named by position.
        let list = BrokerAddr::parse_list("mqtt://a:1,mqtt://[::1]:2, b").unwrap();
        let urls: Vec<String> = list.iter().map(BrokerAddr::url).collect();
        assert_eq!(urls, ["mqtt://a:1", "mqtt://[::1]:2", "mqtt://b:1883"]);
        assert_eq!(
            BrokerAddr::parse_list("mqtts://b").unwrap(),
            [BrokerAddr::parse("mqtts://b").unwrap()]
        );
        let e = BrokerAddr::parse_list("mqtt://a:1,mqtt://b:x").unwrap_err();
        assert!(e.to_string().contains("entry 2 of 2"), "{e}");
    }

    /// The coordinator's certificate is checked for the CN the shipped ACL expects, and
    /// `/healthz`'s problem stands until a node's message disproves it.
    #[test]
    fn a_certificate_the_acl_ignores_is_a_problem_until_a_node_is_heard() {
        // Self-signed Ed25519 certificates (openssl req -x509 -subj /CN=...).
        const RIGHT: &str = "-----BEGIN CERTIFICATE-----
MIIBTzCCAQGgAwIBAgIUclDS1Jy6YhPlPLoKI46btiwp7TcwBQYDK2VwMBwxGjAY
BgNVBAMMEWJhdG9uOmNvb3JkaW5hdG9yMCAXDTI2MTIwNTE4MDExNloYDzIxMjYx
MTExMTgwMTE2WjAcMRowGAYDVQQDDBFiYXRvbjpjb29yZGluYXRvcjAqMAUGAytl
cAMhAJmEsM7ywAS3vwf9HbDlM3VI/Ift/KlIOGPGNOHCWyvLo1MwUTAdBgNVHQ4E
FgQU0CoyCqakBt0O3hp6hH/foGlVXdQwHwYDVR0jBBgwFoAU0CoyCqakBt0O3hp6
hH/foGlVXdQwDwYDVR0TAQH/BAUwAwEB/zAFBgMrZXADQQAs6i9hv/g+fas6i8g7
exPsb2TJ03DS9L4Te9eOt5E5WGwI352coOR9rmaa5+JvkMlIfvp2BVVge7wbqmE7
1KMM
-----END CERTIFICATE-----
";
        const WRONG: &str = "-----BEGIN CERTIFICATE-----
MIIBTzCCAQGgAwIBAgIUT+YiFJBNbtLiQMHlGwOmSZki2/YwBQYDK2VwMBwxGjAY
BgNVBAMMEWJhdG9uLWNvb3JkaW5hdG9yMCAXDTI2MTIwNTE4MDExNloYDzIxMjYx
MTExMTgwMTE2WjAcMRowGAYDVQQDDBFiYXRvbi1jb29yZGluYXRvcjAqMAUGAytl
cAMhAFhHgfGt0gmVLLwssr73SUx50fKKCw4QHcPT4IJwLR6vo1MwUTAdBgNVHQ4E
FgQUhgZ7w5cD/ykI3zshx7Jt+fBC3gQwHwYDVR0jBBgwFoAUhgZ7w5cD/ykI3zsh
x7Jt+fBC3gQwDwYDVR0TAQH/BAUwAwEB/zAFBgMrZXADQQB9BWrWTfdolIQKRDB+
VbNWYP8PhZ0Woq5DjzDeLekWAYTF0LyPHF2kyHxX1pVHqPHZ6KcF93f/Yd+AI+M6
v38J
-----END CERTIFICATE-----
";
        assert_eq!(identity_problem(RIGHT.as_bytes()), None);
        let p = identity_problem(WRONG.as_bytes()).unwrap();
        assert!(p.contains(r#"has CN "baton-coordinator""#), "{p}");

        let stats = BusStats::default();
        assert_eq!(stats.problem(), None, "nothing known yet");
        *stats.suspect.lock().unwrap() = Some(p.clone());
        stats.connected.store(true, Ordering::Relaxed);
        assert_eq!(stats.problem(), Some(p));
        stats.received.fetch_add(1, Ordering::Relaxed);
        assert_eq!(stats.problem(), None, "a node's message got through");
        stats.set_error(Some("connection refused".into()));
        assert_eq!(stats.problem(), None, "connected: a stale error");
        stats.connected.store(false, Ordering::Relaxed);
        assert_eq!(stats.problem(), Some("connection refused".into()));
    }
}
